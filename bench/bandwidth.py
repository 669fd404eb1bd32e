"""Measured read bandwidth of this machine (bench/bandwidth.c, compiled on first use)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("bandwidth.c")


def read_gbs(threads: int, mib: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` streaming read GB/s over a `mib` MiB buffer (much larger than L3)."""
    binary = Path(tempfile.gettempdir()) / "ollama-compat-bench-bandwidth"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        subprocess.run(["cc", "-O3", "-march=native", "-pthread", str(SOURCE), "-o", str(binary)], check=True)
    out = subprocess.run([str(binary), str(threads), str(mib), str(reps)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


if __name__ == "__main__":
    for n in (1, 2):
        print(f"{n} thread(s): {read_gbs(n):.1f} GB/s")
