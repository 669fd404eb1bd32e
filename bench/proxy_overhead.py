"""What the upstream proxy costs: time to first token and tokens/s of N concurrent streams through
our server (Ollama's /api/chat, translated to the upstream's /v1/chat/completions) against the
same streams straight to the upstream's /v1/chat/completions. Goal (issue 26): < 2 ms added to
the first token, < 2 % of tokens/s lost, at 32 streams.

    python bench/proxy_overhead.py                        # a paced fake upstream: 128 tokens, 20 ms apart
    python bench/proxy_overhead.py --streams 32 --tokens 256 --interval 0.01 --rounds 3
    python bench/proxy_overhead.py --pin                  # the proxy on a core of its own
    python bench/proxy_overhead.py --upstream http://node0:8000/v1 --model deepseek-ai/DeepSeek-R1

The fake upstream is our own server over tests/api/fake_engine.py (a fixed answer, one token per
`interval`), so the numbers are the proxy's alone, not a model's; the proxy and the upstream run
in their own processes. Rounds alternate direct and proxied; medians over rounds. On a machine
with few cores the three processes share them, which counts against the proxy: its CPU is then
taken from the upstream's. --pin gives the proxy the last core and the rest to the client and
the upstream, as where the proxy fronts servers on other hosts.

Two arrival patterns: a burst (every stream's request at the same instant: each request's
handling queues behind the others', the worst case for time to first token) and steady arrivals
(the streams' requests spread evenly over one answer's length, each stream's second request
measured, when all are in flight: what a server with that many users sees).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]

UPSTREAM = """
import sys
from aiohttp import web
from backend.interface import Chunk, Metrics
from ollama_compat.app import create_app, server_options
from ollama_compat.settings import Settings
from tests.api.fake_engine import FakeEngine
port, tokens, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
engine = FakeEngine()
engine.script = [Chunk(content=f" t{i}") for i in range(tokens)] + [
    Chunk(done=True, done_reason="stop", metrics=Metrics(1, 0, 8, 1, tokens, 1))]
engine.delay = interval
settings = Settings.from_env({"OLLAMA_MAX_QUEUE": "100000"})
web.run_app(create_app(engine, settings), host="127.0.0.1", port=port, print=None, access_log=None,
            **server_options(settings))
"""

PROXY = """
import sys
from aiohttp import web
from ollama_compat.app import create_app, server_options
from ollama_compat.settings import Settings
from ollama_compat.upstream import RouterEngine, UpstreamEngine
from ollama_compat.upstream.config import parse
from tests.api.fake_engine import FakeEngine
port, url, model = int(sys.argv[1]), sys.argv[2], sys.argv[3]
toml = f'[models.bench]\\nmodel = "{model}"\\nupstreams = ["{url}"]\\n'
upstream = UpstreamEngine(parse(toml), max_queue=100000)
settings = Settings.from_env({"OLLAMA_MAX_QUEUE": "100000"})
app = create_app(RouterEngine(FakeEngine(), upstream), settings)
app.cleanup_ctx.append(upstream.lifetime)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, **server_options(settings))
"""

MESSAGES = [{"role": "user", "content": "Count."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(code: str, *args: str, cpus: set[int] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, preexec_fn=pin)


def cpu_seconds(process: subprocess.Popen | None) -> float:
    """CPU time of a child so far, all its threads, to the nanosecond (Linux's schedstat; 0
    elsewhere, or for a remote upstream)."""
    try:
        tasks = Path(f"/proc/{process.pid}/task").iterdir()
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (AttributeError, OSError, ValueError):
        return 0.0


async def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.2)


async def direct_stream(session, base: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from first to last, tokens) over OpenAI SSE."""
    body = {"model": model, "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    began = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with session.post(base + "/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data: {"):
                choices = orjson.loads(line[6:]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    tokens += 1
    return first - began, last - first, tokens


async def proxied_stream(session, base: str, max_tokens: int) -> tuple[float, float, int]:
    """The same over Ollama's NDJSON /api/chat."""
    body = {"model": "bench", "messages": MESSAGES, "options": {"num_predict": max_tokens}}
    began = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with session.post(base + "/api/chat", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            item = orjson.loads(line)
            if item.get("message", {}).get("content"):
                last = time.perf_counter()
                first = first or last
                tokens += 1
    return first - began, last - first, tokens


async def round_of(streams: int, one, spread: float = 0.0) -> dict[str, float]:
    """`streams` concurrent streams. spread 0 (a burst): all start at once, one request each.
    spread > 0 (steady): stream i starts at i * spread / streams and sends two requests back to
    back, and only the second ones count: by then every stream is in flight, their arrivals
    spread evenly over `spread` seconds (one answer's length), each on a kept-alive connection."""

    async def stream(session, i: int) -> tuple[float, float, float, float, int]:
        await asyncio.sleep(i * spread / streams)
        for _ in range(2 if spread else 1):
            began = time.perf_counter()
            ttft, duration, tokens = await one(session)
        return began, time.perf_counter(), ttft, duration, tokens

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        results = await asyncio.gather(*(stream(session, i) for i in range(streams)))
    ttft = sorted(r[2] for r in results)
    tokens = sum(r[4] for r in results)
    return {
        "ttft_p50_ms": 1e3 * statistics.median(ttft),
        "ttft_p95_ms": 1e3 * ttft[int(0.95 * (len(ttft) - 1))],
        "stream_tok_s": statistics.median(r[4] / r[3] for r in results if r[3] > 0),
        "aggregate_tok_s": tokens / (max(r[1] for r in results) - min(r[0] for r in results)),
        "tokens": tokens,
    }


async def main_async(args) -> None:
    processes = []
    # --pin: the proxy on a core of its own, the client and the upstream on the others, as where
    # the proxy fronts remote servers; unpinned, the proxy's work also takes the upstream's CPU.
    everything = os.sched_getaffinity(0)
    proxy_cpus = {max(everything)} if args.pin else None
    others = everything - proxy_cpus if args.pin else None
    if others:
        os.sched_setaffinity(0, others)
    upstream_process = None
    try:
        base, model = args.upstream, args.model
        if base is None:
            port = free_port()
            upstream_process = spawn(UPSTREAM, str(port), str(args.tokens), str(args.interval), cpus=others)
            processes.append(upstream_process)
            base, model = f"http://127.0.0.1:{port}/v1", "mymoe"
            await wait_for(base + "/models")
        proxy_port = free_port()
        proxy_process = spawn(PROXY, str(proxy_port), base, model, cpus=proxy_cpus)
        processes.append(proxy_process)
        proxy = f"http://127.0.0.1:{proxy_port}"
        await wait_for(proxy + "/api/version")
        # A burst is the worst case (every request's handling queued at once on a few cores);
        # steady arrivals are what a server with that many users sees.
        spreads = {"burst": 0.0, "steady": args.tokens * args.interval}
        for mode in args.arrivals:
            rows: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            requests = args.streams * (2 if spreads[mode] else 1)
            for _ in range(args.rounds):
                # CPU per request: what the upstream spends on one (direct), what the proxy adds.
                began = cpu_seconds(upstream_process)
                row = await round_of(args.streams, lambda s: direct_stream(s, base, model, args.tokens), spreads[mode])
                rows["direct"].append({**row, "cpu_ms": 1e3 * (cpu_seconds(upstream_process) - began) / requests})
                began = cpu_seconds(proxy_process)
                row = await round_of(args.streams, lambda s: proxied_stream(s, proxy, args.tokens), spreads[mode])
                rows["proxy"].append({**row, "cpu_ms": 1e3 * (cpu_seconds(proxy_process) - began) / requests})
            report(mode, args, rows)
    finally:
        for process in processes:
            process.terminate()
            process.wait()


def report(mode: str, args, rows: dict[str, list[dict[str, float]]]) -> None:
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    print(f"{mode}: {args.streams} concurrent streams, {args.tokens} tokens each, {args.rounds} rounds (medians)")
    print(f"{'':8} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12} {'tok/s/stream':>13} {'tok/s total':>12} {'CPU ms/req':>11}")
    for k in ("direct", "proxy"):  # CPU: the upstream's per request when direct, the proxy's when proxied
        m = med[k]
        print(f"{k:8} {m['ttft_p50_ms']:12.2f} {m['ttft_p95_ms']:12.2f} {m['stream_tok_s']:13.1f} "
              f"{m['aggregate_tok_s']:12.1f} {m['cpu_ms']:11.2f}")  # fmt: skip
    d, p = med["direct"], med["proxy"]
    print(f"added TTFT: p50 {p['ttft_p50_ms'] - d['ttft_p50_ms']:+.2f} ms, p95 {p['ttft_p95_ms'] - d['ttft_p95_ms']:+.2f} ms;"
          f" tok/s lost: per stream {100 * (1 - p['stream_tok_s'] / d['stream_tok_s']):.2f} %,"
          f" total {100 * (1 - p['aggregate_tok_s'] / d['aggregate_tok_s']):.2f} %\n")  # fmt: skip
    if p["cpu_ms"] > 0:  # what one event loop (one core) could carry at these streams' pace
        print(f"capacity: one proxy process carries about {1e3 * args.tokens / p['cpu_ms']:,.0f} tok/s per core it is given"
              f" ({1e3 * p['cpu_ms'] / args.tokens:.0f} us of CPU a token, its request's share included)\n")  # fmt: skip
    if p["tokens"] != d["tokens"]:
        print(f"warning: {d['tokens']} tokens direct, {p['tokens']} through the proxy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--interval", type=float, default=0.02, help="fake upstream: seconds between tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arrivals", nargs="+", choices=["burst", "steady"], default=["burst", "steady"],
                        help="burst: every stream starts at once; steady: arrivals spread over one answer's length")
    parser.add_argument("--pin", action="store_true",
                        help="the proxy on the last core, the client and the fake upstream on the rest")
    parser.add_argument("--upstream", help="a real upstream's base URL (.../v1) instead of the fake one")
    parser.add_argument("--model", default="mymoe", help="the upstream's model id (with --upstream)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
