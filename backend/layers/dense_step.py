"""The native decode step of dense models: a decode batch (one new token per sequence) runs every
block in one kernel call (kernels.decode_dense), the same kernels in the same order as the
layers' forward, so the same bits; the Python layers still run prompts and mixed batches."""

from __future__ import annotations

import ctypes
import os

import torch

from .. import kernels
from ..engine.kv_cache import ForwardBatch, SequenceCache
from .attention import Attention
from .linear import Linear
from .norm import RMSNorm
from .rope import rope_cos_sin

# MOE_NATIVE_DECODE=0 keeps decode steps on the Python layers (for comparisons).
ENABLED = os.environ.get("MOE_NATIVE_DECODE", "1") != "0"


def _addr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _weight(lin: Linear) -> kernels.MoeWeight | None:
    """A Linear's GGUF tensor; None for what the kernels do not run as Linear does (a float
    weight through torch, a bias past the q/k/v, a weight on an accelerator)."""
    if lin.qweight is None or lin.gpu_weight is not None:
        return None
    return kernels.MoeWeight.of(lin.qweight)


class DenseBlockSpec:
    """One block's part of the step: the C struct and the tensors its addresses point into."""

    def __init__(self, attn: Attention, attn_norm: RMSNorm, ffn_norm: RMSNorm, gate: Linear, up: Linear, down: Linear,
                 act: str, post_attn_norm: RMSNorm | None = None, post_ffn_norm: RMSNorm | None = None):  # fmt: skip
        self.attn = attn
        self.linears = (attn.q, attn.k, attn.v, attn.o, gate, up, down)
        self.norms = (attn_norm, attn.q_norm, attn.k_norm, post_attn_norm, ffn_norm, post_ffn_norm)
        weights = [_weight(lin) for lin in self.linears]
        eps = {n.eps for n in self.norms if n is not None}
        self.supported = (
            all(w is not None for w in weights)
            and all(lin.bias is None for lin in self.linears[3:])
            and len(eps) == 1
            and all(n.weight.dtype == torch.float32 and n.weight.device.type == "cpu" for n in self.norms if n is not None)
        )  # fmt: skip
        if not self.supported:
            return
        self.struct = kernels.MoeDenseBlock(
            attn.num_heads, attn.num_kv_heads, attn.head_dim, gate.qweight.shape[0], eps.pop(), attn.scale,
            attn.sliding_window or 0, int(attn.neox), 0, kernels.GATED[act],
            *[_addr(None if n is None else n.weight) for n in self.norms],
            *[_addr(lin.bias) for lin in self.linears[:3]],
            *weights,
        )  # fmt: skip

    @property
    def activations(self) -> str:
        return self.attn.q.activations


class DenseStep:
    """All blocks of a model as one native call, for decode batches on the CPU."""

    def __init__(self, specs: list[DenseBlockSpec], dim: int):
        self.specs, self.dim = specs, dim
        # Blocks with the same rope frequencies share one cos/sin table per step.
        self.freqs: list[torch.Tensor] = []
        for spec in specs:
            found = [i for i, f in enumerate(self.freqs) if f is spec.attn.inv_freq]
            spec.struct.rope_set = found[0] if found else len(self.freqs)
            if not found:
                self.freqs.append(spec.attn.inv_freq)
        self.blocks = (kernels.MoeDenseBlock * len(specs))(*[s.struct for s in specs])

    @classmethod
    def build(cls, specs: list[DenseBlockSpec | None], dim: int) -> "DenseStep | None":
        if not ENABLED or not specs or any(s is None or not s.supported for s in specs):
            return None
        return cls(specs, dim)

    def applies(self, batch: ForwardBatch, x: torch.Tensor) -> bool:
        """A decode batch on the CPU with integer activations, every cache float32 in place."""
        return (
            all(n == 1 for n in batch.seq_lens)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.specs[0].activations in kernels.PLANES
            and all(s.activations == self.specs[0].activations for s in self.specs)
        )  # fmt: skip

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """x [S, D] -> the last block's output [S, D]; writes each cache's next position."""
        k_ptrs, v_ptrs = [], []
        for cache in batch.caches:
            k, v = self._addresses(cache)
            k_ptrs += k
            v_ptrs += v
        n = len(k_ptrs)
        cos_sin = [rope_cos_sin(positions, f, memo=batch.memo) for f in self.freqs]
        lengths = torch.tensor([c.length for c in batch.caches], dtype=torch.int64)
        return kernels.decode_dense(self.blocks, self.dim, x, (ctypes.c_void_p * n)(*k_ptrs), (ctypes.c_void_p * n)(*v_ptrs),
                                    lengths, [c for c, _ in cos_sin], [s for _, s in cos_sin],
                                    kernels.PLANES[self.specs[0].activations])  # fmt: skip

    def _addresses(self, cache: SequenceCache) -> tuple[list[int], list[int]]:
        """The cache's per-block key and value addresses, checked and kept on it once."""
        memo = cache.__dict__.get("_dense_step_addresses")
        if memo is None:
            for spec, (k, v) in zip(self.specs, cache.layers):
                shape = (cache.capacity, spec.attn.num_kv_heads, spec.attn.head_dim)
                for t in (k, v):
                    if t.shape != shape or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
                        raise ValueError(f"decode cache {tuple(t.shape)} {t.dtype} is not the blocks' {shape} float32")
            memo = ([k.data_ptr() for k, _ in cache.layers], [v.data_ptr() for _, v in cache.layers])
            cache.__dict__["_dense_step_addresses"] = memo
        return memo
