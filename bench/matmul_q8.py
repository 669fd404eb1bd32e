"""Matmul micro-benchmark: float activations (kernels.matmul) vs 8-bit activations with
integer dot products (kernels.matmul_q8, one plane: q8; two: q8x2), one weight shape, several
token counts and threads.
Weights rotate over 8 random tensors (> L3 for 4096x4096 at 4+ bits) so reads come from DRAM.

    python -m bench.matmul_q8 --types Q4_K,Q8_0,IQ1_S --tokens 1,8,64 --threads 1,2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gguf import GGMLQuantizationType

from backend import kernels
from tests.kernels.conftest import random_tensor


def best_time(fn, weights, x, reps: int = 5) -> float:
    fn(weights[0], x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in weights:
            fn(w, x)
        best = min(best, (time.perf_counter() - t0) / len(weights))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K,Q6_K,Q8_0,Q4_0,IQ1_S,IQ2_XXS")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--tokens", default="1,4,16,64")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    N, K = args.rows, args.cols
    print(f"isa {kernels.isa()}, {N}x{K}")
    for name in args.types.split(","):
        qtype = GGMLQuantizationType[name]
        weights = [kernels.QuantWeight(random_tensor(name, N, K, np.random.default_rng(i), small=True).reshape(-1),
                                       qtype, (N, K)) for i in range(8)]  # fmt: skip
        nbytes = weights[0].raw.nbytes
        for T in map(int, args.tokens.split(",")):
            x = torch.randn(T, K)
            for threads in map(int, args.threads.split(",")):
                kernels.set_num_threads(threads)
                cells = []
                q8x2 = lambda w, x: kernels.matmul_q8(w, x, kernels.PLANES["q8x2"])  # noqa: E731
                for label, fn in (("float", kernels.matmul), ("q8", kernels.matmul_q8), ("q8x2", q8x2)):
                    dt = best_time(fn, weights, x)
                    cells.append(f"{label:5s} {dt * 1e3:7.2f} ms {nbytes / dt / 1e9:5.1f} GB/s "
                                 f"{2 * N * K * T / dt / 1e9:6.1f} GFLOPS")  # fmt: skip
                print(f"{name:7s} T={T:<3d} threads={threads}  " + " | ".join(cells), flush=True)
    kernels.set_num_threads(0)


if __name__ == "__main__":
    main()
