"""One measurement in a fresh process, so load time and peak RSS are this engine's alone.

    python bench/worker.py ours|llama.cpp|llama.cpp-norepack MODEL.gguf [--threads 2]

Prints one JSON line: load_s, pp128_tps, pp512_tps (a fresh cache each), tg128_tps (greedy
decode after a 16-token prompt), peak_rss_mb. A short warm-up forward precedes the timings on
both sides (llama-bench does the same); tokenization and sampling are outside the timings.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


class Ours:
    def __init__(self, path: str, threads: int):
        import torch

        from backend import kernels
        from backend.gguf_model import open_gguf
        from backend.models import load_model

        kernels.set_num_threads(threads)
        torch.set_num_threads(1)  # as the engine runs: the kernels' pool does the heavy work
        self.torch = torch
        self.model = load_model(open_gguf(path))

    def prompt(self, tokens: list[int], cache_tokens: int) -> int:
        from backend.engine.kv_cache import ForwardBatch

        self.cache = self.model.allocate_cache(cache_tokens)
        batch = ForwardBatch.single(len(tokens), self.cache)
        t = self.torch.tensor(tokens)
        logits = self.model(t, batch, logits_indices=self.torch.tensor([len(tokens) - 1]))
        batch.advance()
        return int(logits[-1].argmax())

    def step(self, token: int) -> int:
        from backend.engine.kv_cache import ForwardBatch

        batch = ForwardBatch.single(1, self.cache)
        token = int(self.model(self.torch.tensor([token]), batch)[-1].argmax())
        batch.advance()
        return token


class LlamaCpp:
    def __init__(self, path: str, threads: int, repack: bool = True):
        import llama_cpp
        import llama_cpp.llama_cpp as lib

        default = lib.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = repack  # llama.cpp's weight repacking ("extra buffer types")
            return p

        lib.llama_model_default_params = params
        self.llm = llama_cpp.Llama(path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, flash_attn=False, verbose=False)  # fmt: skip
        self.n_vocab = self.llm.n_vocab()

    def _last(self) -> int:  # logits of the last token of the last decode (no copy into llm.scores)
        return int(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).argmax())

    def prompt(self, tokens: list[int], cache_tokens: int) -> int:
        self.llm.reset()  # the next eval drops the cached positions from 0 on
        self.llm.eval(tokens)
        return self._last()

    def step(self, token: int) -> int:
        self.llm.eval([token])
        return self._last()


def measure(engine, vocab: int, decode: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    engine.prompt(rng.integers(100, vocab, 8).tolist(), 64)  # warm-up, not timed
    for n in (128, 512):
        tokens = rng.integers(100, vocab, n).tolist()
        start = time.perf_counter()
        engine.prompt(tokens, 1024)
        out[f"pp{n}_tps"] = n / (time.perf_counter() - start)
    token = engine.prompt(rng.integers(100, vocab, 16).tolist(), 1024)
    start = time.perf_counter()
    for _ in range(decode):
        token = engine.step(token)
    out[f"tg{decode}_tps"] = decode / (time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=["ours", "llama.cpp", "llama.cpp-norepack"])
    p.add_argument("model")
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000, help="prompt token ids are drawn below this")
    a = p.parse_args()
    if a.engine == "ours":  # imports outside the load time: it is the model's load we compare
        import torch  # noqa: F401

        import backend.models  # noqa: F401
    else:
        import llama_cpp  # noqa: F401
    start = time.perf_counter()
    if a.engine == "ours":
        engine = Ours(a.model, a.threads)
    else:
        engine = LlamaCpp(a.model, a.threads, repack=a.engine == "llama.cpp")
    result = {"load_s": time.perf_counter() - start}
    result |= measure(engine, a.vocab, a.decode)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
