"""Measured int8 dot-product peak of this machine (bench/vnni_peak.c, compiled on first use):
512-bit vpdpbusd throughput on registers, 2 operations per multiply-add, as GFLOPS counts them."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("vnni_peak.c")


def int8_gops(threads: int, reps: int = 3) -> float:
    binary = Path(tempfile.gettempdir()) / "ollama-compat-bench-vnni-peak"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        flags = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-pthread"]
        subprocess.run(["cc", *flags, str(SOURCE), "-o", str(binary)], check=True)
    out = subprocess.run([str(binary), str(threads), str(reps)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


if __name__ == "__main__":
    for n in (1, 2):
        print(f"{n} thread(s): {int8_gops(n):.0f} int8 GOPS")
