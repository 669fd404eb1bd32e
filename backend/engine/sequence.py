"""Per-request state: tokens, sampler, cache slot, text pipeline and timings."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from ..interface import GenerateRequest
from .sampling import Sampler

_ids = itertools.count(1)

# Ollama's llm/llama_server.go (openEndedGenerationContextMultiplier): an open-ended request
# (num_predict -1) may still generate for ever on a model that never emits EOS, the context
# shifting under it; Ollama gives it a budget of ten context windows.
OPEN_ENDED_CONTEXTS = 10


def bounded_num_predict(num_predict: int, num_ctx: int) -> int:
    """Ollama's boundedNumPredict: -1 (and any count past 10 x num_ctx) becomes 10 x num_ctx."""
    if num_ctx <= 0:
        return num_predict
    limit = OPEN_ENDED_CONTEXTS * num_ctx
    return limit if num_predict < 0 or num_predict > limit else num_predict


class StopMatcher:
    """Finds stop strings in streamed text without ever emitting any part of one.

    Text that could still become a stop string is held back until it either completes one
    (then everything from the stop on is dropped) or can no longer match.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.matched = ""  # the stop string found (the earliest in the text; the first listed on a tie)

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [(i, n) for n, i in enumerate(buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            at, which = min(hits)
            self.pending, self.matched = "", self.stops[which]
            return buf[:at], True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Timings:
    submitted: float = field(default_factory=time.perf_counter)
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    prompt_eval_count: int = 0  # prompt tokens actually computed (a reused prefix is not)


class Sequence:
    """One generation. `tokens` is prompt + generated; the first `num_cached` are in the cache."""

    def __init__(
        self,
        request: GenerateRequest,
        prompt_tokens: list[int],
        emit: Callable[[object], None],
    ):
        self.id = next(_ids)
        self.request = request
        self.params = request.sampling
        self.prompt_len = len(prompt_tokens)
        self.tokens = list(prompt_tokens)
        self.num_cached = 0
        self.sampler = Sampler(request.sampling)
        self.stop = StopMatcher(request.sampling.stop)
        self.emit = emit  # called with a Chunk, or an Exception; thread-safe
        self.status = Status.WAITING
        self.cancelled = False
        self.slot = None  # kv_cache.CacheSlot while running
        self.timings = Timings()
        self.output: list[int] = []  # generated token ids (survive a context shift)
        self.done_reason = ""

    @property
    def num_pending(self) -> int:
        return len(self.tokens) - self.num_cached

    @property
    def in_prefill(self) -> bool:
        """More than one token to feed: a prompt (or, after a context shift, a re-fill)."""
        return self.num_pending > 1
