"""Waiting and running queues: admission by free cache slots, then one batch per step."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .kv_cache import CachePool
from .sequence import Sequence, Status


@dataclass(frozen=True)
class ScheduledItem:
    seq: Sequence
    num_tokens: int  # tokens of this sequence fed in this step
    sample: bool  # whether this step ends the sequence's pending tokens (so it samples)


class Scheduler:
    """Every step feeds one token for each decoding sequence and spends what is left of the
    `num_batch` token budget on prompt chunks, so a long prompt never stalls running streams."""

    def __init__(self, pool: CachePool, num_batch: int):
        self.pool = pool
        self.num_batch = max(1, num_batch)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledItem]:
        self._admit()
        decoding = [s for s in self.running if not s.in_prefill]
        prefilling = [s for s in self.running if s.in_prefill]
        items = [ScheduledItem(s, s.num_pending, True) for s in decoding]
        budget = self.num_batch - sum(i.num_tokens for i in items)
        for seq in prefilling:  # oldest first: finish one prompt before starting the next
            if budget <= 0:
                break
            n = min(seq.num_pending, budget)
            items.append(ScheduledItem(seq, n, n == seq.num_pending))
            budget -= n
        return items

    def _admit(self) -> None:
        while self.waiting and self.pool.has_free():
            seq = self.waiting.popleft()
            if seq.cancelled:
                continue
            seq.slot, seq.num_cached = self.pool.acquire(seq.tokens[: seq.prompt_len])
            seq.status = Status.RUNNING
            self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out of the batch and give its cache back for prefix reuse."""
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot is not None:
            self.pool.release(seq.slot, seq.tokens[: seq.num_cached])
            seq.slot = None
        if seq in self.waiting:
            self.waiting.remove(seq)

    def drop_cancelled(self) -> list[Sequence]:
        gone = [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]
        for seq in gone:
            self.finish(seq)
        return gone
