"""How many experts N concurrent sequences read per decode step, and what that allows N streams
at the memory wall (issue 23's four-stream goal).

    python bench/routing_spread.py /work/bench-models/v2lite.gguf [--streams 4] [--steps 8]

Each of N sequences (random prompts of 26 tokens) decodes --steps tokens greedily on the Python
layers, which call the same routing kernel as the native step; every router call's expert ids
are recorded. A sequence's tokens do not depend on the batch (the engine's exactness tests), so
decoding them one at a time routes as a batch would. Reported: the mean number of distinct routed
experts per MoE layer and step over the N sequences, the weight bytes a step of N tokens reads
(bench/roofline.py's count, the routed part scaled by that number over one token's top-k), and
N x one token's bytes / a step's bytes: the most N streams can decode over one where both read at
the same bytes per second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["MOE_NATIVE_DECODE"] = "0"  # the Python layers: their routing calls are visible here
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import numpy as np
    from roofline import bytes_per_token
    from worker import Ours

    from backend import kernels

    calls: list[np.ndarray] = []
    route = kernels.route

    def recording(logits, spec):
        weights, ids = route(logits, spec)
        calls.append(ids.numpy().copy())
        return weights, ids

    kernels.route = recording  # looked up at each call by the routing layers
    engine = Ours(a.model, a.threads)
    rng = np.random.default_rng(0)
    per_seq = []
    for _ in range(a.streams):
        token = engine.prompt([int(t) for t in rng.integers(1000, 40000, 26)], 26 + a.steps + 2)
        calls.clear()
        for _ in range(a.steps):
            token = engine.step(token)
        per_seq.append(list(calls))
    layers = len(per_seq[0]) // a.steps
    if layers == 0:
        raise SystemExit(f"{a.model}: no routed experts")
    top_k = per_seq[0][0].shape[-1]
    distinct = [len(set().union(*(set(s[i].ravel().tolist()) for s in per_seq))) for i in range(layers * a.steps)]
    mean = float(np.mean(distinct))
    b = bytes_per_token(a.model)
    step = b["other_bytes"] + b["routed_bytes"] * mean / top_k
    print(f"{a.model}: {a.streams} sequences x {a.steps} steps, {layers} MoE layers, top-{top_k}")
    print(f"distinct routed experts per MoE layer and step: {mean:.2f} (one token: {top_k})")
    print(f"bytes per step: one token {b['bytes_per_token'] / 1e9:.3f} GB, {a.streams} tokens {step / 1e9:.3f} GB")
    print(f"{a.streams} streams over one at the same bytes/s: at most {a.streams * b['bytes_per_token'] / step:.2f}x")


if __name__ == "__main__":
    main()
