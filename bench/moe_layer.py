"""Per-layer MoE micro-benchmark (issue 7): our routed-expert layer (backend/layers/moe.py
Experts, whatever it runs at the time: fused kernel or reference loop) over the real expert
tensors of a synthetic GGUF, T tokens, uniform and skewed routing; optionally llama.cpp's.

    python bench/moe_layer.py /work/bench-models/v2lite.gguf --tokens 1 8 64 512
    python bench/moe_layer.py /work/bench-models/v2lite.gguf --llama v2-lite --tokens 1 64 512

Ours: Experts.forward(x, weights, ids) called directly, rotating over --layers MoE layers so the
working set (V2-Lite: 0.33 GB a layer) is far beyond L3 and every pass reads DRAM.
llama.cpp's MoE op alone against ours: bench/moe_vs_llama.py. --llama here times whole layers
instead, a T-token forward of two small synthetic files, base (the dense layers, or one MoE
layer) and base + K MoE layers, on both engines:
(t_big - t_base) / K is one MoE layer *plus its attention* per engine, under the router's own
(near-uniform, random weights) routing. Same file, same threads; a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from backend import kernels  # noqa: E402
from backend.gguf_model import open_gguf  # noqa: E402
from backend.layers.moe import Experts  # noqa: E402

# Shape alphabet: T tokens, D hidden, E experts, A active experts, I expert FFN dim.


def routing(T: int, E: int, A: int, kind: str, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """weights [T, A] (softmax of random logits), ids [T, A] distinct per token.
    "zipf": expert e drawn with probability ~ 1 / (rank + 1), a real router's skew."""
    if kind == "uniform":
        probs = torch.ones(E)
    else:
        probs = 1.0 / (torch.randperm(E, generator=rng).float() + 1.0)
    ids = torch.multinomial(probs.expand(T, E), A, replacement=False, generator=rng)  # [T, A]
    weights = torch.softmax(torch.randn(T, A, generator=rng), dim=-1)  # [T, A]
    return weights, ids


def expert_bytes(f, prefix: str, E: int) -> int:
    """Bytes of one expert's gate + up + down rows."""
    return sum(int(f.tensor(f"{prefix}.ffn_{k}_exps.weight").nbytes) // E for k in ("gate", "up", "down"))


def ours(path: str, tokens: list[int], kinds: list[str], num_layers: int, reps: int, activations: str) -> list[dict]:
    f = open_gguf(path)
    E, A = f.arch_get("expert_count"), f.arch_get("expert_used_count")
    D, I = f.arch_get("embedding_length"), f.arch_get("expert_feed_forward_length")
    prefixes = [f"blk.{i}" for i in range(f.arch_get("block_count")) if f.has_tensor(f"blk.{i}.ffn_gate_exps.weight")]
    prefixes = prefixes[:num_layers]
    layers = [Experts.from_gguf(f, p, E, D, I) for p in prefixes]
    for layer in layers:
        layer.activations = activations
    per_expert = expert_bytes(f, prefixes[0], E)
    rng = torch.Generator().manual_seed(0)
    rows = []
    for kind in kinds:
        for T in tokens:
            x = torch.randn(T, D, generator=rng) * 0.1  # [T, D]
            routes = [routing(T, E, A, kind, rng) for _ in layers]
            for layer, (w, ids) in zip(layers, routes):  # warm-up pass (page faults, pool start)
                layer(x, w, ids)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                for layer, (w, ids) in zip(layers, routes):
                    layer(x, w, ids)
                times.append((time.perf_counter() - start) / len(layers))
            t = statistics.median(times)
            hit = statistics.mean(len(ids.unique()) for _, ids in routes)
            rows.append({"activations": activations, "routing": kind, "T": T, "us_per_layer": 1e6 * t, "experts_hit": hit,
                         "weight_gbs": hit * per_expert / t / 1e9, "gmacs": T * A * 3 * D * I / t / 1e9})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def differential(shape_name: str, tokens: list[int], extra: int, reps: int, threads: int, workdir: Path) -> list[dict]:
    """Both engines on base and base + `extra` MoE layers; per-layer ms from the difference."""
    from synth_gguf import SHAPES, write
    from worker import LlamaCpp, Ours

    from backend.store.pypi_models import fetch

    shape = SHAPES[shape_name]
    base = max(shape.first_dense, 1)
    files = {}
    for n in (base, base + extra):
        files[n] = workdir / f"moe-{shape_name}-{n}l.gguf"
        if not files[n].exists():
            write(replace(shape, layers=n), files[n], fetch("smollm2:135m"))
    rng = np.random.default_rng(0)
    result: dict[str, dict[int, dict[int, float]]] = {"ours": {}, "llama.cpp": {}}
    for n, path in files.items():
        for name in ("ours", "llama.cpp"):
            engine = Ours(str(path), threads) if name == "ours" else LlamaCpp(str(path), threads)
            # Warm-up long enough to route to every expert: our weights are mapped, not read at
            # load (llama.cpp populates its map while loading), so first touches must not land
            # in a measurement.
            engine.prompt(rng.integers(100, 32000, max(256, max(tokens))).tolist(), 1024)
            for T in tokens:
                prompt = rng.integers(100, 32000, T).tolist()
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    engine.prompt(prompt, 1024)
                    times.append(time.perf_counter() - start)
                result[name].setdefault(T, {})[n] = statistics.median(times)
            del engine
    rows = []
    for T in tokens:
        row = {"T": T}
        for name in result:
            t = result[name][T]
            row[f"{name}_ms_per_layer"] = 1e3 * (t[base + extra] - t[base]) / extra
        row["ratio"] = row["llama.cpp_ms_per_layer"] / row["ours_ms_per_layer"]  # >1: ours faster
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a synthetic GGUF (bench/synth_gguf.py) with stacked experts")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--routing", nargs="+", default=["uniform", "zipf"], choices=["uniform", "zipf"])
    p.add_argument("--layers", type=int, default=8, help="MoE layers to rotate over (defeats L3)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama", metavar="SHAPE", help="also the llama.cpp differential on this synth_gguf shape")
    p.add_argument("--extra-layers", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=Path("/work/bench-models"))
    p.add_argument("--out", type=Path, help="JSON results file")
    p.add_argument("--activations", nargs="+", default=["q8", "float"], choices=["q8", "float"])
    a = p.parse_args()
    kernels.set_num_threads(a.threads)
    torch.set_num_threads(1)
    rows = [r for act in a.activations for r in ours(a.model, a.tokens, a.routing, a.layers, a.reps, act)]
    result = {"model": a.model, "threads": a.threads, "ours": rows}
    if a.llama:
        result["differential"] = differential(a.llama, a.tokens, a.extra_layers, a.reps, a.threads, a.workdir)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
