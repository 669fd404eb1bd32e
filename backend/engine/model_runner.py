"""A scheduled batch -> tensors -> forward -> last-position logits per sampling sequence."""

from __future__ import annotations

import torch

from .kv_cache import ForwardBatch
from .scheduler import ScheduledItem


class ModelRunner:
    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def run(self, items: list[ScheduledItem]) -> dict[int, torch.Tensor]:
        """Runs one step; returns {sequence id: logits [V]} for the sequences that sample."""
        tokens = torch.tensor(
            [t for i in items for t in i.seq.tokens[i.seq.num_cached : i.seq.num_cached + i.num_tokens]],
            dtype=torch.long,
        )  # [T]
        batch = ForwardBatch(
            tuple(i.num_tokens for i in items), tuple(i.seq.slot.cache for i in items)
        )
        ends, last = [], -1
        for i in items:
            last += i.num_tokens
            ends.append(last)
        want = [e for e, i in zip(ends, items) if i.sample]
        logits = self.model.forward(tokens, batch, logits_indices=torch.tensor(want, dtype=torch.long))
        sampled = [i for i in items if i.sample]
        out = {i.seq.id: logits[k].float() for k, i in enumerate(sampled)}
        # Lengths move last, once nothing can fail: a failed pass leaves every cache as it was
        # (its writes lie past the lengths), so the batch can be recomputed without the culprit.
        batch.advance()
        for i in items:
            i.seq.num_cached += i.num_tokens
        return out
