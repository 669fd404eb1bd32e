"""Through our HTTP server: aggregate decode tokens/s at 1, 2, 4, 8 concurrent streams, and time
to first token of a first and a second chat turn over a ~2,000-token history (prefix reuse).

    python bench/serve_load.py /work/bench-models/v2lite.gguf [--streams 1 2 4 8] [--tokens 64]
    python bench/serve_load.py MODEL.gguf --url http://127.0.0.1:11434 --name mymodel   # a running server

Starts `ollama-compat serve` on a private port with a models directory holding only this file,
unless --url is given. Writes bench/results/<UTC time>-serve.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent
SENTENCES = ["The river bends {i} times before it reaches the old stone bridge.",
             "In year {i} the market square was paved again by the guild of masons.",
             "Letter {i} describes the harvest, the weather and a quarrel about the mill.",
             "Page {i} lists the ships that left the harbour before the winter storms."]  # fmt: skip


def history_text(tokens: int) -> str:
    """About `tokens` tokens of varied prose (about 14 tokens a sentence)."""
    return " ".join(SENTENCES[i % 4].format(i=i) for i in range(tokens // 14))


async def generate(session, url, model, prompt, n) -> dict:
    body = {"model": model, "prompt": prompt, "stream": False, "options": {"temperature": 0, "num_predict": n}}
    async with session.post(f"{url}/api/generate", json=body) as r:
        r.raise_for_status()
        return await r.json()


async def chat_ttft(session, url, model, messages, options) -> tuple[float, str, dict]:
    """Seconds to the first content chunk, the full answer, and the final chunk's metrics."""
    body = {"model": model, "messages": messages, "stream": True, "options": options}
    start = time.perf_counter()
    first, text, final = None, [], {}
    async with session.post(f"{url}/api/chat", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if first is None and (chunk.get("message", {}).get("content") or chunk.get("done")):
                first = time.perf_counter() - start
            text.append(chunk.get("message", {}).get("content", ""))
            if chunk.get("done"):
                final = chunk
    return first or 0.0, "".join(text), final


async def bench(url: str, model: str, a) -> dict:
    out: dict = {"aggregate_decode_tps": {}, "per_stream_decode_tps": {}}
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Loads the model, then touches as many experts as the widest round will: weights are mapped,
        # not read at load, so first touches must not land in one round's measurement.
        await generate(session, url, model, "Warm up.", 2)
        await asyncio.gather(*(generate(session, url, model, f"Warm-up story {i}:", 8) for i in range(max(a.streams))))
        for n in a.streams:
            start = time.perf_counter()
            rs = await asyncio.gather(*(generate(session, url, model, f"Story number {i}:", a.tokens) for i in range(n)))
            wall = time.perf_counter() - start
            out["aggregate_decode_tps"][n] = sum(r["eval_count"] for r in rs) / wall
            out["per_stream_decode_tps"][n] = [r["eval_count"] / (r["eval_duration"] / 1e9) for r in rs]
            # The server's own eval durations leave out queueing and prompt time.
            out.setdefault("aggregate_eval_tps", {})[n] = sum(r["eval_count"] for r in rs) / (
                max(r["eval_duration"] for r in rs) / 1e9
            )
            print(n, "streams:", round(out["aggregate_decode_tps"][n], 2), "tok/s aggregate", flush=True)
        options = {"temperature": 0, "num_predict": 8, "num_ctx": 4096}
        messages = [{"role": "user", "content": history_text(a.history) + "\nSummarize the letters."}]
        ttft1, answer, m1 = await chat_ttft(session, url, model, messages, options)
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the ships?"}]
        ttft2, _, m2 = await chat_ttft(session, url, model, messages, options)
    out["ttft_s"] = {"first_turn": ttft1, "second_turn": ttft2, "speedup": ttft1 / ttft2 if ttft2 else None,
                     "prompt_eval_count": [m1.get("prompt_eval_count"), m2.get("prompt_eval_count")]}  # fmt: skip
    print("TTFT", out["ttft_s"], flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str, proc: subprocess.Popen, seconds: float = 120, probe: str = "/api/version") -> None:
    """Until GET url + probe answers 200 (a server that exits or takes longer than `seconds` raises)."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with session.get(url + probe) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--tokens", type=int, default=64, help="decode tokens per stream")
    p.add_argument("--history", type=int, default=2000, help="approximate tokens of chat history")
    p.add_argument("--url", help="use a running server instead of starting one")
    p.add_argument("--name", help="model name on that server (default: the file's stem)")
    p.add_argument("--note", default="")
    a = p.parse_args()
    name = a.name or f"{a.model.stem.lower()}:latest"
    proc = None
    url = a.url
    if url is None:
        models = Path(tempfile.mkdtemp(prefix="bench-models-"))
        os.symlink(a.model.resolve(), models / a.model.name)
        url = f"http://127.0.0.1:{free_port()}"
        env = os.environ | {"OLLAMA_HOST": url, "OLLAMA_MODELS": str(models), "OLLAMA_NUM_PARALLEL": str(max(a.streams))}
        cmd = [sys.executable, "-m", "ollama_compat", "serve", "--no-default-model"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT.parent, stderr=subprocess.DEVNULL)
    try:
        if proc:
            asyncio.run(wait_up(url, proc))
        result = asyncio.run(bench(url, name, a))
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    now = dt.datetime.now(dt.timezone.utc)
    result |= {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "model": a.model.name, "tokens": a.tokens,
               "loadavg": os.getloadavg()[0], "note": a.note}  # fmt: skip
    stem = ROOT / "results" / f"{now.strftime('%Y-%m-%dT%H%M')}-serve"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    agg = result["aggregate_decode_tps"]
    t = result["ttft_s"]
    md = (f"{result['date']}, through `ollama-compat serve`, {a.model.name}, {a.tokens} tokens a stream, "
          f"load average {result['loadavg']:.1f}. {a.note}\n\n| streams | " + " | ".join(map(str, agg)) + " |\n|---|"
          + "---|" * len(agg) + "\n| aggregate tok/s (wall, incl. prompts) | " + " | ".join(f"{v:.2f}" for v in agg.values())
          + " |\n| aggregate tok/s (server eval durations) | "
          + " | ".join(f"{v:.2f}" for v in result["aggregate_eval_tps"].values()) + " |\n\n"
          f"TTFT over a {t['prompt_eval_count'][0]}-token history: first turn {t['first_turn']:.2f} s, second turn "
          f"{t['second_turn']:.3f} s ({t['speedup']:.1f}x; {t['prompt_eval_count'][1]} prompt tokens computed)\n")  # fmt: skip
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
