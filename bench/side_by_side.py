"""What the op-for-op benchmarks against llama.cpp share (matmul_vs_llama.py, moe_vs_llama.py,
ggml_ops.py): best-of timing after a warm-up pass, the agreement check, the results file."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np


def best_of(run: Callable[[], object], reps: int) -> float:
    """Best wall time of `reps` calls of run(), after one warm-up call (page faults, pool start)."""
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def warm_page_cache(path: str | Path, chunk: int = 64 << 20) -> None:
    """Reads the file once so both engines start from its pages in memory: the same start for
    each, and on machines that page out cold file pages (DAMON reclaim, a minute here) a model
    left alone between measurements would otherwise fault in from disk inside the timings."""
    with open(path, "rb", buffering=0) as f:
        while f.read(chunk):
            pass


def check_agreement(ours: np.ndarray, theirs: np.ndarray, tolerance: float, what: str) -> float:
    """max |ours - theirs| relative to llama.cpp's largest value; exits when above `tolerance`."""
    diff = float(np.abs(ours - theirs).max()) / float(np.abs(theirs).max())
    if diff > tolerance:
        raise SystemExit(f"{what}: ours and llama.cpp disagree by {diff:.2e} of the largest value")
    return diff


def lscpu() -> str:
    """The machine the numbers came from (model, cores, caches, flags such as amx_int8)."""
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def save(out: Path | None, threads: int, isa: str, bandwidth: float, rows: list[dict], **machine: float) -> None:
    """machine: further measured figures of this machine (int8_peak_gops) for the header."""
    if out:
        result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": threads, "isa": isa,
                  "bandwidth_gbs": bandwidth, **machine, "lscpu": lscpu(), "rows": rows}  # fmt: skip
        out.write_text(json.dumps(result, indent=1) + "\n")
