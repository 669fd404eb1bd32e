"""Where one decode step's time goes in our engine: inclusive wall time per module path (layer
numbers folded, so "layers.*.ffn.experts" sums every layer's routed experts), against the bytes
each part reads.

    python bench/profile_decode.py /work/bench-models/v2lite.gguf [--steps 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, default=3, help="deepest module path shown")
    a = p.parse_args()
    from worker import Ours

    engine = Ours(a.model, a.threads)
    token = engine.prompt(list(range(100, 116)), 64 + a.steps)
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(module, _):
        starts[id(module)] = time.perf_counter()

    def make_post(name):
        def post(module, _, __):
            totals[name] += time.perf_counter() - starts.pop(id(module))

        return post

    for name, module in engine.model.named_modules():
        if name and name.count(".") < a.depth:
            key = re.sub(r"\.\d+(?=\.|$)", ".*", name)
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(make_post(key))
    start = time.perf_counter()
    for _ in range(a.steps):
        token = engine.step(token)
    step = (time.perf_counter() - start) / a.steps
    print(f"{a.model}: {1e3 * step:.1f} ms per decode step ({1 / step:.2f} tok/s), {a.threads} threads")
    print("| module path (layers folded) | ms / step | % of step |\n|---|---|---|")
    for key, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        if t / a.steps > 0.0005 * step * 10:
            print(f"| {key} | {1e3 * t / a.steps:.2f} | {100 * t / a.steps / step:.0f} % |")


if __name__ == "__main__":
    main()
