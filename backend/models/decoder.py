"""What every decoder-only model here shares: a token embedding, a stack of blocks that each
own their attention cache, a final norm and an LM head. Architecture files define the blocks
and ModelArgs; this holds the cache allocation and the forward pass around them."""

from __future__ import annotations

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch, SequenceCache
from ..gguf_model import GGUFFile


class DecoderLM(nn.Module):
    """Subclasses set `args_class` and build `args`, `embed`, `layers` (blocks called as
    layer(x, positions, batch, i)), `norm` and `output` in __init__(f, args)."""

    args_class: type  # the architecture's ModelArgs, with from_gguf(f)

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "DecoderLM":
        return cls(f, cls.args_class.from_gguf(f))

    def allocate_cache(self, capacity: int) -> SequenceCache:
        return SequenceCache([layer.attn.allocate(capacity) for layer in self.layers], capacity)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [T] -> the first block's input [T, D] (Gemma scales it)."""
        return self.embed(tokens)

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 logits [L, V] as the LM head leaves them -> as the model defines them."""
        return logits

    @torch.inference_mode()
    def hidden_states(self, tokens: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """tokens [T] -> final-normed hidden states [T, D]; writes the batch's caches, no advance."""
        positions = batch.positions().to(self.embed.device)  # [T]
        x = self.embed_tokens(tokens)  # [T, D]
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, batch, i)
        return self.norm(x)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, batch: ForwardBatch, logits_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [T] -> logits [T, V] float32, or [L, V] for the rows in logits_indices [L].

        Only the rows that sample need the LM head: for a 2k-token prefill on a 150k vocab
        that skips 2k x 150k x D multiply-adds.
        """
        x = self.hidden_states(tokens, batch)  # [T, D]
        if logits_indices is not None:
            x = x[logits_indices]  # [L, D]
        return self.finish_logits(self.output(x).float())
