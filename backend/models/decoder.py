"""What every decoder-only model here shares: a token embedding, a stack of blocks that each
own their attention cache, a final norm and an LM head. Architecture files define the blocks
and ModelArgs; this holds the cache allocation and the forward pass around them."""

from __future__ import annotations

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch, SequenceCache
from ..gguf_model import GGUFFile
from ..layers.native_step import NativeStep


class DecoderLM(nn.Module):
    """Subclasses set `args_class` and build `args`, `embed`, `layers` (blocks called as
    layer(x, positions, batch, i)), `norm` and `output` in __init__(f, args)."""

    args_class: type  # the architecture's ModelArgs, with from_gguf(f)
    # Set by backend.hybrid.placement.apply: which blocks (and whether the LM head) run on the
    # accelerator; None runs everything on the CPU.
    placement = None
    accelerator = None

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
        positions = {False: batch.positions().to(self.embed.device)}  # [T] on each side, copied once
        x = self.embed_tokens(tokens)  # [T, D]
        if self.placement is None and (step := self.native_step()) is not None and step.applies(batch, x):
            return self.norm(step(x, positions[False], batch))  # every block in one native call
        on_accel = False
        for i, layer in enumerate(self.layers):
            x, on_accel = self._cross(x, on_accel, self.placement is not None and self.placement.on_gpu(i))
            if on_accel not in positions:
                positions[on_accel] = self.accelerator.to_device(positions[False])
            x = layer(x, positions[on_accel], batch, i)
        x, _ = self._cross(x, on_accel, self._head_on_accel)
        return self.norm(x)

    def _native_logits(self, tokens: torch.Tensor, batch: ForwardBatch,
                       logits_indices: torch.Tensor | None) -> torch.Tensor | None:  # fmt: skip
        """A decode batch's logits [S, V] from one native call (every block, the final norm and the
        LM head, no Python between them), when the step runs this batch and samples every row;
        else None, and nothing has run."""
        if self.placement is not None or any(n != 1 for n in batch.seq_lens):
            return None
        step = self.native_step()
        rows = len(batch.seq_lens)
        if step is None or not step.runs_head():
            return None
        if logits_indices is not None and logits_indices.tolist() != list(range(rows)):
            return None
        x = self.embed_tokens(tokens)
        if not step.applies(batch, x):
            return None
        logits = torch.empty((rows, step.head.vocab), dtype=torch.float32)
        step(x, batch.positions(), batch, logits)
        return logits

    def native_step(self) -> NativeStep | None:
        """The native decode step over all blocks, when every block describes itself for it
        (native_spec) and the kernels can run it; built once."""
        if "_native_step" not in self.__dict__:
            specs = [layer.native_spec() if hasattr(layer, "native_spec") else None for layer in self.layers]
            self.__dict__["_native_step"] = NativeStep.build(specs, self.args.hidden_size, (self.norm, self.output))
        return self.__dict__["_native_step"]

    @property
    def _head_on_accel(self) -> bool:
        return self.placement is not None and self.placement.head_on_gpu

    def _cross(self, x: torch.Tensor, on_accel: bool, want: bool) -> tuple[torch.Tensor, bool]:
        """x moved to the accelerator (want) or the host: only where consecutive blocks differ."""
        if on_accel == want:
            return x, on_accel
        return (self.accelerator.to_device(x) if want else self.accelerator.to_host(x)), want

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, batch: ForwardBatch, logits_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [T] -> logits [T, V] float32, or [L, V] for the rows in logits_indices [L].

        Only the rows that sample need the LM head: for a 2k-token prefill on a 150k vocab
        that skips 2k x 150k x D multiply-adds.
        """
        logits = self._native_logits(tokens, batch, logits_indices)
        if logits is not None:
            return self.finish_logits(logits)
        x = self.hidden_states(tokens, batch)  # [T, D]
        if logits_indices is not None:
            x = x[logits_indices.to(x.device)]  # [L, D]
        logits = self.finish_logits(self.output(x).float())
        return self.accelerator.to_host(logits) if self._head_on_accel else logits
