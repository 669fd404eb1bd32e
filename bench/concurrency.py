"""Engine-level measurements for the batching goals: aggregate decode tokens/s with 1, 2, 4 and
8 concurrent streams, and time to first token of a first vs a second chat turn (prefix reuse).

    python bench/concurrency.py MODEL.gguf [--streams 1 2 4 8] [--history 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from backend.engine.local_engine import create_engine
from backend.interface import GenerateRequest, LoadOptions, SamplingParams


async def stream(engine, name, prompt, n, load) -> tuple[int, float]:
    first = None
    start = time.perf_counter()
    count = 0
    req = GenerateRequest(name, prompt, SamplingParams(temperature=0, num_predict=n, repeat_penalty=1.0), load=load)
    async for chunk in engine.generate(req):
        if first is None:
            first = time.perf_counter() - start
        if chunk.done:
            count = chunk.metrics.eval_count
    return count, first or 0.0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--history", type=int, default=2000, help="approximate tokens of chat history")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp())
    os.symlink(a.model.resolve(), root / "m.gguf")
    engine = create_engine(str(root), num_parallel=max(a.streams))
    load = LoadOptions(num_ctx=max(4096, 2 * a.history), num_batch=512)
    result = {"model": a.model.name, "aggregate_decode_tps": {}, "ttft_s": {}}
    # Warm-up as wide as the widest round: the weights are mapped, not read at load, so the first
    # steps that touch an expert pay its page faults; measure steady decoding, not first touches.
    await asyncio.gather(*(stream(engine, "m", f"Warm-up story {i}:", 8, load) for i in range(max(a.streams))))
    for n in a.streams:
        start = time.perf_counter()
        counts = await asyncio.gather(*(stream(engine, "m", f"Story number {i}:", a.tokens, load) for i in range(n)))
        elapsed = time.perf_counter() - start
        result["aggregate_decode_tps"][n] = sum(c for c, _ in counts) / elapsed
        print(n, "streams", round(result["aggregate_decode_tps"][n], 2), "tok/s", flush=True)
    history = [{"role": "user", "content": "Tell me about the history of Paris. " * (a.history // 8)}]
    first_prompt = engine.render_chat("m", history)
    _, ttft1 = await stream(engine, "m", first_prompt, 8, load)
    turn2 = history + [{"role": "assistant", "content": "Paris is old."}, {"role": "user", "content": "And Rome?"}]
    _, ttft2 = await stream(engine, "m", engine.render_chat("m", turn2), 8, load)
    result["ttft_s"] = {"first_turn": ttft1, "second_turn": ttft2, "speedup": ttft1 / ttft2}
    print(json.dumps(result, indent=1))
    engine.close()


if __name__ == "__main__":
    asyncio.run(main())
