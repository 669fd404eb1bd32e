"""Where one decode step's time goes in our engine, against the bytes each part reads.

    python bench/profile_decode.py /work/bench-models/v2lite.gguf [--steps 32] [--threads 2]
    python bench/profile_decode.py MODEL.gguf --layers     # the Python layers' path, per module

By default the step runs natively (csrc/decode.cpp) and the library times its parts
(kernels.step_profile: norms, attention projections, MLA maps, attention, router, experts, dense
feed-forward, the final norm and LM head); what the step costs outside that call (embedding,
argmax, Python glue) is the difference to the step's wall time. Each part's weight bytes come from the GGUF's tensor table
(routed experts at expert_used_count of expert_count), so the table shows GB/s per part beside
the machine's measured read bandwidth. --layers instead times modules through forward hooks on
the Python layers (MOE_NATIVE_DECODE=0), layer numbers folded ("layers.*.ffn.experts").
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

# Which part of the step reads each weight (by the GGUF tensor name's kind).
PART_OF = {
    "attn_q": "attn_proj", "attn_q_a": "attn_proj", "attn_q_b": "attn_proj", "attn_kv_a_mqa": "attn_proj",
    "attn_k": "attn_proj", "attn_v": "attn_proj", "attn_qkv": "attn_proj", "attn_output": "attn_proj",
    "attn_k_b": "mla_maps", "attn_v_b": "mla_maps", "attn_kv_b": "mla_maps",
    "ffn_gate_inp": "router",
    "ffn_gate_exps": "experts", "ffn_up_exps": "experts", "ffn_down_exps": "experts",
    "ffn_gate_shexp": "experts", "ffn_up_shexp": "experts", "ffn_down_shexp": "experts",
    "ffn_gate": "ffn", "ffn_up": "ffn", "ffn_down": "ffn",
    "output": "head",
}  # fmt: skip


def bytes_per_part(path: str) -> dict[str, float]:
    """Weight bytes each part reads per decoded token (norm vectors and one embedding row left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    used_field = reader.fields.get(f"{arch}.expert_used_count")
    used = int(used_field.contents()) if used_field else 0
    experts = int(reader.fields[f"{arch}.expert_count"].contents()) if used else 1
    names = {t.name for t in reader.tensors}
    out: dict[str, float] = defaultdict(float)
    for t in reader.tensors:
        kind = re.sub(r"^blk\.\d+\.", "", t.name).removesuffix(".weight")
        if kind == "token_embd" and "output.weight" in names:
            continue  # one row
        part = "head" if kind == "token_embd" else PART_OF.get(kind)  # tied: the embeddings are the LM head
        if part:
            out[part] += int(t.n_bytes) * (used / experts if kind.endswith("_exps") else 1)
    return out


def native_profile(engine, token: int, steps: int) -> tuple[float, dict[str, float]]:
    from backend import kernels

    kernels.step_profile(True)
    start = time.perf_counter()
    for _ in range(steps):
        token = engine.step(token)
    step = (time.perf_counter() - start) / steps
    parts = {k: v / steps for k, v in kernels.step_profile(False).items()}
    if sum(parts.values()) == 0:
        raise SystemExit("the native step did not run (MOE_NATIVE_DECODE=0, or an architecture without one): use --layers")
    parts["outside"] = step - sum(parts.values())
    return step, parts


def layers_profile(engine, token: int, steps: int, depth: int) -> tuple[float, dict[str, float]]:
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(module, _):
        starts[id(module)] = time.perf_counter()

    def make_post(name):
        def post(module, _, __):
            totals[name] += time.perf_counter() - starts.pop(id(module))

        return post

    for name, module in engine.model.named_modules():
        if name and name.count(".") < depth:
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(make_post(re.sub(r"\.\d+(?=\.|$)", ".*", name)))
    start = time.perf_counter()
    for _ in range(steps):
        token = engine.step(token)
    step = (time.perf_counter() - start) / steps
    return step, {k: v / steps for k, v in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", action="store_true", help="profile the Python layers' path by module")
    p.add_argument("--depth", type=int, default=3, help="with --layers: deepest module path shown")
    a = p.parse_args()
    if a.layers:
        os.environ["MOE_NATIVE_DECODE"] = "0"
    from bandwidth import read_gbs
    from run import cpu_name
    from worker import Ours

    from backend import kernels

    bandwidth = read_gbs(a.threads)
    engine = Ours(a.model, a.threads)
    token = engine.prompt(list(range(100, 116)), 64 + 2 * a.steps)
    token = engine.step(token)  # warm-up: the first step maps its buffers
    print(f"{a.model}: {cpu_name()}, {a.threads} threads, isa {kernels.isa()}, "
          f"activations {os.environ.get('MOE_ACTIVATIONS', 'q8')}, read bandwidth {bandwidth:.1f} GB/s")
    if a.layers:
        step, parts = layers_profile(engine, token, a.steps, a.depth)
        print(f"{1e3 * step:.1f} ms per decode step ({1 / step:.2f} tok/s)\n")
        print("| module path (layers folded) | ms / step | % of step |\n|---|---|---|")
        for key, t in sorted(parts.items(), key=lambda kv: -kv[1]):
            if t > 0.005 * step:
                print(f"| {key} | {1e3 * t:.2f} | {100 * t / step:.0f} % |")
        return
    step, parts = native_profile(engine, token, a.steps)
    weights = bytes_per_part(a.model)
    total = sum(weights.values())
    print(f"{1e3 * step:.2f} ms per decode step ({1 / step:.2f} tok/s); {total / 1e6:.0f} MB of weights per token, "
          f"{total / step / 1e9:.1f} GB/s over the whole step ({100 * total / step / 1e9 / bandwidth:.0f} % of the "
          f"measured bandwidth)\n")
    print("| part | ms / step | % of step | MB read | GB/s | % of bandwidth |\n|---|---|---|---|---|---|")
    names = {"outside": "outside the native step (embedding, argmax, Python)", "head": "final norm and LM head"}
    for key, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        if t == 0 and not weights.get(key):
            continue  # a part this architecture does not have
        mb = weights.get(key, 0) / 1e6
        rate = f"{mb / 1e3 / t:.1f} | {100 * mb / 1e3 / t / bandwidth:.0f} %" if mb and t > 0 else "- | -"
        print(f"| {names.get(key, key)} | {1e3 * t:.2f} | {100 * t / step:.1f} % | {mb:.0f} | {rate} |")


if __name__ == "__main__":
    main()
