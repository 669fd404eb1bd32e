"""Issue 6 side by side: our quantized matmul (kernels.matmul_q8, the engine's default arithmetic)
against llama.cpp's own MUL_MAT (bench/ggml_ops.py: ggml's CPU backend from llama-cpp-python,
on every weight buffer llama.cpp's loader could pick: AMX, CPU_REPACK, plain), same bytes, same
threads, one run; the ratio is against llama.cpp's fastest path. On a CPU with AMX, ours runs
twice, on the AMX tiles and forced onto AVX-512 VNNI (--isas), in the same run.

    python bench/matmul_vs_llama.py --types Q4_K,Q6_K,Q8_0,IQ1_S,IQ2_XXS --tokens 1,8,512

Weights rotate over enough random tensors (> 96 MB, three times the L3) that every pass reads
DRAM. Both sides also check each other: the outputs must agree to 1e-4 of their largest value.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bandwidth import read_gbs  # noqa: E402
from ggml_ops import Ggml  # noqa: E402
from side_by_side import best_of, check_agreement, save  # noqa: E402
from vnni_peak import int8_gops  # noqa: E402

from backend import kernels  # noqa: E402
from tests.kernels.conftest import random_tensor  # noqa: E402

# rows x cols per type: a 4096-square projection, and the R1 expert gate/up for the 1-2 bit types
SHAPES = {"IQ1_S": (2048, 7168), "IQ2_XXS": (2048, 7168), "IQ1_M": (2048, 7168)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="Q4_K,Q6_K,Q8_0,Q4_0,Q5_K,IQ4_XS,IQ1_S,IQ2_XXS")
    ap.add_argument("--tokens", default="1,8,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, help="JSON results file")
    ap.add_argument("--isas", default="amx,avx512" if kernels.detected_isa() == "amx" else kernels.isa(),
                    help="our ISA levels to measure, each against the same llama.cpp run")
    args = ap.parse_args()
    isas = args.isas.split(",")
    kernels.set_num_threads(args.threads)
    torch.set_num_threads(1)
    ggml = Ggml(args.threads)
    bandwidth, peak = read_gbs(args.threads), int8_gops(args.threads)
    print(f"{platform.processor() or platform.machine()}, isa {kernels.isa()}, {args.threads} threads, "
          f"measured read bandwidth {bandwidth:.1f} GB/s, int8 dot-product peak {peak:.0f} GOPS", flush=True)  # fmt: skip
    header = ("| type | rows x cols | T | ours (isa) ms | llama.cpp ms (path) | llama.cpp / ours | ours GB/s (% of bw) "
              "| ours GFLOPS (% of int8 peak) | llama.cpp GFLOPS (%) |")  # fmt: skip
    print(header + "\n" + "|---" * (header.count(" | ") + 1) + "|", flush=True)
    rows = []
    for name in args.types.split(","):
        qtype = GGMLQuantizationType[name]
        N, K = SHAPES.get(name, (4096, 4096))
        probe = random_tensor(name, N, K, np.random.default_rng(0), small=True)
        n_sets = max(8, math.ceil(96e6 / probe.nbytes))
        raws = [probe] + [random_tensor(name, N, K, np.random.default_rng(i), small=True) for i in range(1, n_sets)]
        weights = [kernels.QuantWeight(r.reshape(-1), qtype, (N, K)) for r in raws]
        for T in map(int, args.tokens.split(",")):
            x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
            xt = torch.from_numpy(x)
            def run():
                return [kernels.matmul_q8(w, xt) for w in weights]

            before, outputs = {}, []
            for isa in isas:
                with kernels.use_isa(isa):
                    before[isa] = best_of(run, args.reps)
                    outputs.append(kernels.matmul_q8(weights[-1], xt).numpy())
            ours_y = outputs[0]
            if not all(np.array_equal(ours_y, o) for o in outputs[1:]):
                raise SystemExit(f"{name} T={T}: our ISAs {isas} disagree (they must give the same bits)")
            paths, y = ggml.matmul(int(qtype), raws, N, K, x, reps=args.reps)
            check_agreement(ours_y, y, 1e-4, f"{name} T={T}")
            path, llama_dt = min(paths.items(), key=lambda kv: kv[1])
            flops = 2 * N * K * T
            for isa in isas:
                with kernels.use_isa(isa):  # before and after llama.cpp's (a burst lasts seconds)
                    ours_dt = min(before[isa], best_of(run, args.reps)) / len(weights)
                row = {"type": name, "rows": N, "cols": K, "tokens": T, "isa": isa, "ours_ms": ours_dt * 1e3,
                       "llama_ms": llama_dt * 1e3, "llama_path": path, "llama_paths_ms": {k: v * 1e3 for k, v in paths.items()},
                       "ratio": llama_dt / ours_dt, "ours_gbs": probe.nbytes / ours_dt / 1e9,
                       "ours_gflops": flops / ours_dt / 1e9, "llama_gflops": flops / llama_dt / 1e9}  # fmt: skip
                rows.append(row)
                print(f"| {name} | {N}x{K} | {T} | {row['ours_ms']:.3f} ({isa}) | {row['llama_ms']:.3f} ({path}) | "
                      f"**{row['ratio']:.2f}x** | {row['ours_gbs']:.1f} ({100 * row['ours_gbs'] / bandwidth:.0f}%) | "
                      f"{row['ours_gflops']:.0f} ({100 * row['ours_gflops'] / peak:.0f}%) | "
                      f"{row['llama_gflops']:.0f} ({100 * row['llama_gflops'] / peak:.0f}%) |", flush=True)  # fmt: skip
    save(args.out, args.threads, kernels.isa(), bandwidth, rows, int8_peak_gops=peak)


if __name__ == "__main__":
    main()
