"""One measurement in a fresh process (so load time and peak RSS are this engine's alone):
prints JSON with load seconds, prompt and decode tokens/s, and peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def ours(path: str, prompt: list[int], decode: int, threads: int) -> dict:
    import torch

    from backend import kernels
    from backend.gguf_model import open_gguf
    from backend.kv_cache import ForwardBatch
    from backend.models import load_model

    kernels.set_num_threads(threads)
    torch.set_num_threads(1)  # as the engine runs: the kernels' pool does the heavy work
    start = time.perf_counter()
    model = load_model(open_gguf(path))
    load = time.perf_counter() - start
    cache = model.allocate_cache(len(prompt) + decode + 1)
    start = time.perf_counter()
    batch = ForwardBatch.single(len(prompt), cache)
    logits = model(torch.tensor(prompt), batch, logits_indices=torch.tensor([len(prompt) - 1]))
    batch.advance()
    prompt_s = time.perf_counter() - start
    token = int(logits[-1].argmax())
    start = time.perf_counter()
    for _ in range(decode):
        batch = ForwardBatch.single(1, cache)
        token = int(model(torch.tensor([token]), batch)[-1].argmax())
        batch.advance()
    decode_s = time.perf_counter() - start
    return {"load_s": load, "prompt_tps": len(prompt) / prompt_s, "decode_tps": decode / decode_s}


def llama(path: str, prompt: list[int], decode: int, threads: int) -> dict:
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=len(prompt) + decode + 8, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False, logits_all=False)  # fmt: skip
    load = time.perf_counter() - start
    start = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(decode):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode_s = time.perf_counter() - start
    return {"load_s": load, "prompt_tps": len(prompt) / prompt_s, "decode_tps": decode / decode_s}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=["ours", "llama.cpp"])
    p.add_argument("model")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    a = p.parse_args()
    prompt = np.random.default_rng(0).integers(100, a.vocab, size=a.prompt).tolist()
    run = ours if a.engine == "ours" else llama
    result = run(a.model, prompt, a.decode, a.threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
