"""Where the 8-bit activations' error comes from, and what a cheaper near-exact default would keep.

    python bench/fidelity_ablation.py                      # smollm2:135m gemma3:270m
    python bench/fidelity_ablation.py gemma3:270m --new-tokens 32

Scored as bench/fidelity.py scores (the exact model is llama.cpp on the F32-dequantized GGUF,
teacher-forced on llama.cpp's greedy continuations). Rows, each against that reference:
- ours q8 and q8x2 over the whole model (fidelity.py's rows);
- q8x2 on one class of tensors only (attention inputs, attention output, feed-forward inputs,
  feed-forward down, LM head; MoE models add the routed experts and the MLA maps), q8 on the
  rest: if one class held most of the error, near-exact arithmetic there alone would cost a
  fraction of q8x2's extra multiplies;
- "q8 prompt, q8x2 decode": the prompt in one q8 forward, then each continuation token in its
  own q8x2 decode step over that cache, as an engine that kept prompts at q8 speed would run.

Writes bench/results/<UTC time>-fidelity-ablation.{json,md}. Never run in CI (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from fidelity import compare, machine_line, our_logits, run, scored, with_ratios  # noqa: E402

from backend.engine.kv_cache import ForwardBatch  # noqa: E402
from backend.layers.linear import activation_modules, set_activations  # noqa: E402
from backend.models import load_model  # noqa: E402

# Tensor classes by module name (layer numbers included); a model has the ones that match.
CLASSES = {
    "attention inputs (q, k, v)": r"\.attn\.(q|k|v|qkv|q_a|q_b|kv_a)$",
    "MLA maps (k_b, v_b)": r"\.attn$",
    "attention output": r"\.attn\.o$",
    "feed-forward inputs (gate, up)": r"(\.ffn|\.shared_experts|^layers\.\d+)\.(gate|up)$",
    "feed-forward down": r"(\.ffn|\.shared_experts|^layers\.\d+)\.down$",
    "routed experts": r"\.experts$",
    "LM head": r"^output$",
}


def only_on(model, pattern: str) -> int:
    """q8x2 on the modules whose name matches, q8 on the rest; how many matched."""
    hits = 0
    for name, module in activation_modules(model).items():
        on = re.search(pattern, name) is not None
        module.activations = "q8x2" if on else "q8"
        hits += on
    return hits


def prompt_then_decode(model, seqs, spans, prompt_mode: str, decode_mode: str) -> list[np.ndarray]:
    """Logits at the scored positions: the prompt (up to the first scored position) in one forward
    with prompt_mode, then one decode step per continuation token with decode_mode."""
    out = []
    with torch.inference_mode():
        for s, sp in zip(seqs, spans):
            cache = model.allocate_cache(len(s))
            set_activations(model, prompt_mode)
            batch = ForwardBatch.single(sp.start + 1, cache)
            rows = [model(torch.tensor(s[: sp.start + 1]), batch)[-1].float().numpy()]
            batch.advance()
            set_activations(model, decode_mode)
            for i in range(sp.start + 1, sp.stop):
                batch = ForwardBatch.single(1, cache)
                rows.append(model(torch.tensor(s[i : i + 1]), batch)[-1].float().numpy())
                batch.advance()
            out.append(np.stack(rows))
    return out


def ablate(name: str, a) -> dict:
    sc = scored(name, a)
    model = load_model(sc.f, activations="q8")
    rows = [{"engine": "llama.cpp", **compare(sc.refs, sc.llama_cpp)}]

    def forward_rows() -> list[np.ndarray]:
        return [our_logits(model, s)[sp] for s, sp in zip(sc.seqs, sc.spans)]

    for mode in ("q8", "q8x2"):
        set_activations(model, mode)
        rows.append({"engine": f"ours {mode}", **compare(sc.refs, forward_rows())})
    for label, pattern in CLASSES.items():
        if only_on(model, pattern):
            t0 = time.perf_counter()
            rows.append({"engine": f"q8x2 on {label} only", **compare(sc.refs, forward_rows())})
            print(f"#   {label}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    rows.append({"engine": "q8 prompt, q8x2 decode", **compare(sc.refs, prompt_then_decode(model, sc.seqs, sc.spans, "q8", "q8x2"))})
    with_ratios(rows)
    return {"model": name, "path": str(sc.path), "reference": str(sc.ref_path), "new_tokens": a.new_tokens, "rows": rows}


def markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# Fidelity ablation: where q8's error comes from ({meta['date']})", "", machine_line(meta),
             "Reference and scoring as bench/fidelity.py (llama.cpp on the F32-dequantized GGUF; "
             f"{meta['new_tokens']} greedy tokens a prompt, teacher-forced).", "",
             "| model | arithmetic | mean KLD | p99 KLD | top-1 % | KLD / llama.cpp |", "|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} | {r['engine']} | {r['mean_kld']:.3g} | {r['p99_kld']:.3g} | {r['top1_pct']:.1f} "
                         f"| {r['kld_vs_llama_cpp']:.3g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["smollm2:135m", "gemma3:270m"], help="PyPI model names or GGUF paths")
    p.add_argument("--cache-dir", type=Path, default=Path("/work/bench-models"), help="F32 copies")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    run(p.parse_args(), "fidelity-ablation", ablate, markdown)

if __name__ == "__main__":
    main()
