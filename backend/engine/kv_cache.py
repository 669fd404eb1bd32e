"""Per-sequence KV storage and the batch layout a forward pass runs over."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class SequenceCache:
    """One sequence's cache: for every layer a tuple of tensors shaped [capacity, ...].

    What the tuple holds is the architecture's business: (k, v) for multi-head attention,
    (compressed_kv, k_pe) for MLA. `length` counts the positions already written.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, ...]], capacity: int):
        self.layers = layers
        self.capacity = capacity
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)


@dataclass(frozen=True)
class ForwardBatch:
    """Several sequences' new tokens, concatenated along T.

    Sequence i contributes `seq_lens[i]` tokens at positions
    `caches[i].length .. caches[i].length + seq_lens[i] - 1`. A forward pass writes those
    positions into each cache; `advance()` then makes them visible to the next step.
    """

    seq_lens: tuple[int, ...]
    caches: tuple[SequenceCache, ...]
    # What every layer of one forward pass would otherwise recompute (rope's cos/sin).
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if len(self.seq_lens) != len(self.caches):
            raise ValueError("ForwardBatch: one cache per sequence")
        for n, cache in zip(self.seq_lens, self.caches):
            if cache.length + n > cache.capacity:
                raise ValueError(
                    f"sequence needs {cache.length + n} cache positions, capacity is {cache.capacity}"
                )

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)

    def positions(self) -> torch.Tensor:
        """Absolute position of every token in the batch, shape [T] (int64)."""
        return torch.cat(
            [torch.arange(c.length, c.length + n, dtype=torch.long) for n, c in zip(self.seq_lens, self.caches)]
        )

    def spans(self) -> list[tuple[int, int]]:
        """(start, end) of each sequence's tokens inside the concatenated batch."""
        out, start = [], 0
        for n in self.seq_lens:
            out.append((start, start + n))
            start += n
        return out

    def advance(self) -> None:
        for n, cache in zip(self.seq_lens, self.caches):
            cache.length += n

    @staticmethod
    def single(num_tokens: int, cache: SequenceCache) -> "ForwardBatch":
        return ForwardBatch((num_tokens,), (cache,))


class CacheSlot:
    """A reusable sequence cache plus the tokens it holds, so a later request can keep a prefix."""

    def __init__(self, index: int, cache: SequenceCache):
        self.index = index
        self.cache = cache
        self.tokens: list[int] = []  # tokens whose keys/values are in the cache
        self.last_used = 0
        self.busy = False


class CachePool:
    """`num_slots` caches of `capacity` positions, allocated on first use.

    Like llama.cpp's server slots: a new request takes the idle slot that shares the longest
    token prefix with its prompt (the next turn of a chat, a shared system prompt), and only
    the tokens after that prefix are computed.
    """

    def __init__(self, allocate, num_slots: int, capacity: int):
        self._allocate = allocate  # capacity -> SequenceCache
        self.capacity = capacity
        self.slots: list[CacheSlot | None] = [None] * num_slots
        self._clock = 0

    def has_free(self) -> bool:
        return any(s is None or not s.busy for s in self.slots)

    def acquire(self, prompt: list[int]) -> tuple[CacheSlot, int]:
        """Returns a slot and the number of leading prompt tokens already cached in it."""
        best, best_len = None, -1
        for i, slot in enumerate(self.slots):
            if slot is not None and not slot.busy:
                n = _common_prefix(slot.tokens, prompt)
                if n > best_len or (n == best_len and slot.last_used < best.last_used):
                    best, best_len = slot, n
        empty = next((i for i, s in enumerate(self.slots) if s is None), None)
        if empty is not None and best_len <= 0:
            best = self.slots[empty] = CacheSlot(empty, self._allocate(self.capacity))
            best_len = 0
        if best is None:
            raise RuntimeError("CachePool.acquire: no free slot")
        # Recompute at least the last prompt token: its logits start the generation.
        reuse = max(0, min(best_len, len(prompt) - 1))
        best.busy = True
        best.tokens = best.tokens[:reuse]
        best.cache.length = reuse
        return best, reuse

    def release(self, slot: CacheSlot, tokens: list[int]) -> None:
        """`tokens` are those now in the cache, kept for prefix reuse."""
        self._clock += 1
        slot.tokens = tokens[: slot.cache.length]
        slot.last_used = self._clock
        slot.busy = False

    def nbytes(self) -> int:
        return sum(s.cache.nbytes() for s in self.slots if s is not None)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
