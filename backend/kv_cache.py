"""Per-sequence KV storage and the batch layout a forward pass runs over."""

from __future__ import annotations

from dataclasses import dataclass

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
