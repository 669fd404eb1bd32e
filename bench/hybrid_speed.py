"""CPU-only against hybrid on one GGUF, same process, same threads: prompt (ppN), decode (tgN),
the accelerator's memory for weights against their GGUF bytes, and how far the logits move.

    python bench/hybrid_speed.py MODEL.gguf --accelerator cuda [--num-gpu -1] [--pp 512] [--tg 128]

Engine level (no HTTP, no sampling): a prefill of --pp tokens in one forward pass, then --tg
single-token steps feeding back the argmax. Both runs see the same tokens (the CPU run's), so
the teacher-forced logits compare: mean KL divergence and top-1 agreement of hybrid vs CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gguf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import kernels  # noqa: E402
from backend.engine.kv_cache import ForwardBatch  # noqa: E402
from backend.gguf_model import open_gguf  # noqa: E402
from backend.hybrid.accelerator import find_accelerator  # noqa: E402
from backend.hybrid.placement import place_model  # noqa: E402
from backend.models import load_model  # noqa: E402


def run(path: Path, accelerator: str, num_gpu: int, pp: int, tg: int, tokens: list[int] | None) -> dict:
    model = load_model(open_gguf(path))
    accel = find_accelerator(accelerator)
    placement = hybrid = None
    if accel is not None:
        placement, hybrid = place_model(model, accel, num_gpu, cache_tokens=pp + tg)
        weights_on_device = torch.cuda.memory_allocated(accel.device) if accel.kind == "cuda" else None
    vocab = model.embed.qweight.shape[0]
    prompt = tokens[:pp] if tokens else torch.randint(0, vocab, (pp,), generator=torch.Generator().manual_seed(0)).tolist()
    cache = model.allocate_cache(pp + tg)
    sync = accel.synchronize if accel is not None else (lambda: None)

    start = time.perf_counter()
    batch = ForwardBatch.single(pp, cache)
    logits = [model(torch.tensor(prompt), batch, logits_indices=torch.tensor([pp - 1]))[0]]
    batch.advance()
    sync()
    prefill = time.perf_counter() - start
    seq = list(prompt)
    start = time.perf_counter()
    for step in range(tg):
        nxt = tokens[pp + step] if tokens else int(logits[-1].argmax())
        seq.append(nxt)
        batch = ForwardBatch.single(1, cache)
        logits.append(model(torch.tensor([nxt]), batch)[0])
        batch.advance()
    sync()
    decode = time.perf_counter() - start
    out = {
        "accelerator": accel.name if accel else "none",
        "isa": kernels.isa(),
        "threads": kernels.num_threads(),
        f"pp{pp}_tok_s": pp / prefill,
        f"tg{tg}_tok_s": tg / decode,
        "tokens": seq,
        "logits": torch.stack(logits).float().cpu(),
    }
    if placement is not None:
        gguf_bytes = placed_gguf_bytes(path, placement.gpu_layers, placement.head_on_gpu)
        out.update(gpu_layers=len(placement.gpu_layers), head_on_gpu=placement.head_on_gpu,
                   planned_weight_bytes=placement.weights_bytes, placed_gguf_bytes=gguf_bytes)  # fmt: skip
        if weights_on_device is not None:
            out.update(weights_on_device=weights_on_device, weights_vs_gguf=weights_on_device / gguf_bytes,
                       cuda_max_allocated=torch.cuda.max_memory_allocated(accel.device))  # fmt: skip
        hybrid.close()
    return out


def placed_gguf_bytes(path: Path, gpu_layers: tuple[int, ...], head_on_gpu: bool) -> int:
    """GGUF bytes of the tensors the placement put on the accelerator (routed experts excluded)."""
    total = 0
    for t in gguf.GGUFReader(path).tensors:
        parts = t.name.split(".")
        in_block = parts[0] == "blk" and int(parts[1]) in gpu_layers and "_exps" not in t.name
        if in_block or (head_on_gpu and parts[0] in ("output", "output_norm")):
            total += int(t.n_bytes)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--accelerator", default="cuda", help="cuda, or standin to try the script without a GPU")
    ap.add_argument("--num-gpu", type=int, default=-1)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    cpu = run(args.model, "none", 0, args.pp, args.tg, None)
    hyb = run(args.model, args.accelerator, args.num_gpu, args.pp, args.tg, cpu["tokens"])
    lp, lq = torch.log_softmax(cpu.pop("logits"), -1), torch.log_softmax(hyb.pop("logits"), -1)
    kld = (lp.exp() * (lp - lq)).sum(-1)  # KL(cpu || hybrid) per position
    top1 = (lp.argmax(-1) == lq.argmax(-1)).float().mean().item()
    cpu.pop("tokens"), hyb.pop("tokens")
    result = {"model": str(args.model), "cpu": cpu, "hybrid": hyb, "mean_kld": kld.mean().item(), "top1_agreement": top1,
              "decode_ratio": hyb[f"tg{args.tg}_tok_s"] / cpu[f"tg{args.tg}_tok_s"],
              "prompt_ratio": hyb[f"pp{args.pp}_tok_s"] / cpu[f"pp{args.pp}_tok_s"]}  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
