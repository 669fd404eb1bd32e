"""Launch-shape sweep of the GPU weight kernels (backend/hybrid/gpu_weights.py) on a CUDA device.

Prints, per type and shape, each GEMV / GEMM configuration's time and the best one, to set the
GEMV_* / GEMM_* constants and GEMV_MAX_TOKENS from measurements. About 40 kernel compiles.

    python bench/gpu_weights_sweep.py [--types Q4_K,Q6_K,Q8_0] [--rows 2816] [--cols 2048]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT
from gguf import quants
from triton.testing import do_bench

from backend import kernels
from backend.hybrid import gpu_weights as gw
from backend.testmodels.common import QUANTIZABLE, random_blocks

# (block_n, block_k, num_warps) for the GEMV; (block_t, block_n, block_k, num_warps, num_stages) for the GEMM.
GEMV_CONFIGS = [(4, 256, 2), (8, 256, 4), (16, 256, 4), (8, 512, 4), (32, 128, 4), (16, 512, 8)]
GEMM_CONFIGS = [(64, 64, 64, 4, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3),
                (128, 128, 32, 8, 4), (64, 64, 128, 4, 2)]  # fmt: skip


def weight(name: str, rows: int, cols: int) -> gw.GpuWeight:
    rng = np.random.default_rng(0)
    if name in QUANTIZABLE:
        raw = quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), GT[name])
    else:
        raw = random_blocks((rows, cols), name, 1.0, rng)
    q = kernels.QuantWeight(np.ascontiguousarray(raw).view(np.uint8).reshape(-1), GT[name], (rows, cols))
    return gw.GpuWeight.upload(q, torch.device("cuda"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default="Q4_K,Q6_K,Q8_0")
    p.add_argument("--rows", type=int, default=2816)
    p.add_argument("--cols", type=int, default=2048)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), f"[{args.rows}, {args.cols}]")
    for name in args.types.split(","):
        w = weight(name, args.rows, args.cols)
        for T in (1, 4, 8, 16):
            x = torch.randn(T, args.cols, device="cuda")
            times = {c: do_bench(lambda x=x, w=w, c=c: gw.gemv(x, w, *c)) * 1e3 for c in GEMV_CONFIGS}
            best = min(times, key=times.get)
            row = " ".join(f"{c}:{t:.1f}" for c, t in times.items())
            gbps = w.nbytes / times[best] / 1e3
            print(f"{name} gemv T={T:<3} best {best} {times[best]:.1f} us ({gbps:.0f} GB/s) | {row}")
        for T in (16, 64, 512):
            x = torch.randn(T, args.cols, device="cuda")
            times = {c: do_bench(lambda x=x, w=w, c=c: gw.gemm(x, w, None, *c)) * 1e3 for c in GEMM_CONFIGS}
            best = min(times, key=times.get)
            tflops = 2 * T * args.rows * args.cols / times[best] / 1e6
            row = " ".join(f"{c}:{t:.1f}" for c, t in times.items())
            print(f"{name} gemm T={T:<3} best {best} {times[best]:.1f} us ({tflops:.0f} TFLOP/s) | {row}")


if __name__ == "__main__":
    main()
