"""The native decode step: a decode batch (one new token per sequence) runs every block in one
kernel call (kernels.decode_dense for GQA blocks with dense feed-forwards, kernels.decode_mla
for DeepSeek's MLA blocks with dense or routed experts), the same kernels in the same order as
the layers' forward, so the same bits. The Python layers still run prompts and mixed batches."""

from __future__ import annotations

import ctypes
import os

import torch

from .. import kernels
from ..engine.kv_cache import ForwardBatch, SequenceCache
from .attention import Attention
from .linear import FeedForward, Linear
from .norm import RMSNorm
from .rope import rope_cos_sin

# MOE_NATIVE_DECODE=0 keeps decode steps on the Python layers (for comparisons).
ENABLED = os.environ.get("MOE_NATIVE_DECODE", "1") != "0"


def _addr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _weight(lin: Linear | None) -> kernels.MoeWeight | None:
    """A Linear's GGUF tensor; None for what the kernels do not run as Linear does (a float
    weight through torch, a weight on an accelerator)."""
    if lin is None or lin.qweight is None or lin.gpu_weight is not None:
        return None
    return kernels.MoeWeight.of(lin.qweight)


def _cpu_norms(*norms: RMSNorm | None) -> bool:
    return all(n.weight.dtype == torch.float32 and n.weight.device.type == "cpu" for n in norms if n is not None)


class BlockSpec:
    """One block's part of the step: its C struct (`struct`, None when the kernels cannot run
    it), the rope frequencies and scale it reads, and what decides whether a step applies."""

    struct: ctypes.Structure | None = None
    inv_freq: torch.Tensor
    rope_scale: float = 1.0
    linears: tuple[Linear, ...] = ()

    @property
    def activations(self) -> str:
        return self.linears[0].activations

    def takes(self, cache: SequenceCache) -> bool:
        """Whether the layers would run this block's decode token the way the kernel does."""
        return True


class DenseBlockSpec(BlockSpec):
    """A GQA block (llama, qwen2, gemma3, qwen-moe, mixtral) with a gated feed-forward, given as
    (gate, up, down), or routed experts without shared ones (a SparseMoE)."""

    def __init__(self, attn: Attention, attn_norm: RMSNorm, ffn_norm: RMSNorm, ffn, act: str = "silu",
                 post_attn_norm: RMSNorm | None = None, post_ffn_norm: RMSNorm | None = None):  # fmt: skip
        from .moe import SparseMoE

        self.attn, self.inv_freq = attn, attn.inv_freq
        self.linears = (attn.q, attn.k, attn.v, attn.o)
        routed = isinstance(ffn, SparseMoE)
        if routed:
            if ffn.shared_expert is not None or ffn.experts.stacked is None:
                return  # Qwen2-MoE's sigmoid-gated shared expert; per-expert tensors
            self.experts = ffn.experts
            self.linears += (ffn.router,)
        else:
            self.linears += tuple(ffn)
        norms = (attn_norm, attn.q_norm, attn.k_norm, post_attn_norm, ffn_norm, post_ffn_norm)
        weights = [_weight(lin) for lin in self.linears]
        eps = {n.eps for n in norms if n is not None}
        if any(w is None for w in weights) or any(lin.bias is not None for lin in self.linears[3:]) or len(eps) != 1:
            return
        if not _cpu_norms(*norms):
            return
        block = kernels.MoeDenseBlock(
            attn.num_heads, attn.num_kv_heads, attn.head_dim, 0, eps.pop(), attn.scale,
            attn.sliding_window or 0, int(attn.neox), 0, kernels.GATED[act],
            *[_addr(None if n is None else n.weight) for n in norms],
            *[_addr(lin.bias) for lin in self.linears[:3]],
            *weights[:4],
        )  # fmt: skip
        if routed:
            E = len(ffn.experts.gate)
            block.experts, block.expert_hidden = E, ffn.experts.stacked[0].shape[0] // E
            block.routing = kernels.MoeRouting.make(E, ffn.top_k, norm_topk=ffn.norm_topk_prob)  # layers/moe.py's route
            block.router = weights[4]
            block.exp_gate, block.exp_up, block.exp_down = (kernels.MoeWeight.of(w) for w in ffn.experts.stacked)
        else:
            block.hidden = ffn[0].qweight.shape[0]
            block.gate, block.up, block.down = weights[4:]
        self.struct = block

    @property
    def activations(self) -> str:
        modes = {lin.activations for lin in self.linears}
        if hasattr(self, "experts"):
            modes.add(self.experts.activations)
        return modes.pop() if len(modes) == 1 else "mixed"

    def takes(self, cache: SequenceCache) -> bool:
        experts = getattr(self, "experts", None)
        return experts is None or experts.hybrid is None

    def cache_shapes(self, capacity: int) -> list[tuple[int, ...]]:
        shape = (capacity, self.attn.num_kv_heads, self.attn.head_dim)
        return [shape, shape]


class MlaBlockSpec(BlockSpec):
    """A DeepSeek-2/3 block: MLA attention with its per-head maps in GGUF blocks (the absorbed
    decode path), and a dense feed-forward or routed experts with shared ones."""

    def __init__(self, attn, attn_norm: RMSNorm, ffn_norm: RMSNorm, ffn):  # fmt: skip
        from .mla import MLAttention
        from .moe import Experts

        self.attn: MLAttention = attn
        self.inv_freq, self.rope_scale = attn.inv_freq, attn.rope_scale
        low_rank = hasattr(attn, "q_b")
        q = attn.q_a if low_rank else attn.q
        self.linears = (q, attn.kv_a, attn.o) + ((attn.q_b,) if low_rank else ())
        norms = (attn_norm, attn.kv_a_norm, ffn_norm, attn.q_a_norm if low_rank else None)
        if attn.k_b is None or not _cpu_norms(*norms) or len({n.eps for n in norms if n is not None}) != 1:
            return
        if any(_weight(lin) is None or lin.bias is not None for lin in self.linears):
            return
        block = kernels.MoeMlaBlock(
            heads=attn.num_heads, kv_lora=attn.kv_lora_rank, nope_dim=attn.qk_nope_head_dim,
            rope_dim=attn.qk_rope_head_dim, v_dim=attn.v_head_dim, q_lora=attn.q_b.qweight.shape[1] if low_rank else 0,
            eps=attn_norm.eps, softmax_scale=attn.softmax_scale, attn_norm=_addr(attn_norm.weight),
            q_a_norm=_addr(attn.q_a_norm.weight) if low_rank else None, kv_a_norm=_addr(attn.kv_a_norm.weight),
            ffn_norm=_addr(ffn_norm.weight), q=_weight(q), q_b=_weight(attn.q_b) if low_rank else kernels.MoeWeight(),
            kv_a=_weight(attn.kv_a), k_b=kernels.MoeWeight.of(attn.k_b), v_b=kernels.MoeWeight.of(attn.v_b),
            o=_weight(attn.o),
        )  # fmt: skip
        if isinstance(ffn, FeedForward):
            parts = (ffn.gate, ffn.up, ffn.down)
            if any(_weight(p) is None or p.bias is not None for p in parts):
                return
            block.hidden = ffn.gate.qweight.shape[0]
            block.gate, block.up, block.down = (_weight(p) for p in parts)
            self.linears += parts
        else:  # DeepseekMoE: its router, routing, stacked experts and fused shared experts
            experts: Experts = ffn.experts
            shared = ffn.shared_experts.quantized() if ffn.shared_experts is not None else None
            router = _weight(ffn.router)
            if experts.stacked is None or router is None or ffn.router.bias is not None:
                return
            if ffn.shared_experts is not None and shared is None:
                return
            self.routing_owner = ffn  # its bias tensor stays alive with it
            block.routing = ffn.routing()
            block.experts, block.router = len(experts.gate), router
            block.expert_hidden = experts.stacked[0].shape[0] // block.experts
            block.exp_gate, block.exp_up, block.exp_down = (kernels.MoeWeight.of(w) for w in experts.stacked)
            if shared is not None:
                block.shared_hidden = shared[0].shape[0]
                block.sh_gate, block.sh_up, block.sh_down = (kernels.MoeWeight.of(w) for w in shared)
            self.linears += (ffn.router,)
            self.experts = experts
        self.struct = block

    @property
    def activations(self) -> str:
        modes = {lin.activations for lin in self.linears} | {self.attn.activations}
        if hasattr(self, "experts"):
            modes.add(self.experts.activations)
        return modes.pop() if len(modes) == 1 else "mixed"

    def takes(self, cache: SequenceCache) -> bool:
        experts = getattr(self, "experts", None)
        return self.attn._use_absorbed(1, cache.length + 1) and (experts is None or experts.hybrid is None)

    def cache_shapes(self, capacity: int) -> list[tuple[int, ...]]:
        return [(capacity, self.attn.kv_lora_rank), (capacity, self.attn.qk_rope_head_dim)]


class NativeStep:
    """All blocks of a model as one native call, for decode batches on the CPU; with the model's
    final norm and LM head (`head`), its logits too."""

    def __init__(self, specs: list[BlockSpec], dim: int, head: tuple[RMSNorm, Linear] | None = None):
        self.specs, self.dim = specs, dim
        self.head = self.head_linear = None
        if head is not None:
            norm, output = head
            weight = _weight(output)
            if weight is not None and output.bias is None and _cpu_norms(norm):
                self.head = kernels.MoeHead(norm.weight.data_ptr(), norm.eps, weight, output.qweight.shape[0])
                self.head_norm, self.head_linear = norm, output  # held: the struct points into them
        self.mla = isinstance(specs[0], MlaBlockSpec)
        # Blocks with the same rope frequencies and scale share one cos/sin table per step.
        self.ropes: list[tuple[torch.Tensor, float]] = []
        for spec in specs:
            found = [i for i, (f, s) in enumerate(self.ropes) if f is spec.inv_freq and s == spec.rope_scale]
            spec.struct.rope_set = found[0] if found else len(self.ropes)
            if not found:
                self.ropes.append((spec.inv_freq, spec.rope_scale))
        struct = kernels.MoeMlaBlock if self.mla else kernels.MoeDenseBlock
        self.blocks = (struct * len(specs))(*[s.struct for s in specs])

    @classmethod
    def build(cls, specs: list[BlockSpec | None], dim: int,
              head: tuple[RMSNorm, Linear] | None = None) -> "NativeStep | None":  # fmt: skip
        if not ENABLED or not specs or any(s is None or s.struct is None for s in specs):
            return None
        if len({type(s) for s in specs}) != 1:
            return None
        return cls(specs, dim, head)

    def runs_head(self) -> bool:
        """Whether the step can end with the LM head as the model's forward would run it."""
        return self.head is not None and self.head_linear.activations == self.specs[0].activations

    def applies(self, batch: ForwardBatch, x: torch.Tensor) -> bool:
        """A decode batch on the CPU with integer activations, taken by every block as the layers would."""
        mode = self.specs[0].activations
        return (
            all(n == 1 for n in batch.seq_lens)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and mode in kernels.PLANES
            and all(s.activations == mode for s in self.specs)
            and all(s.takes(c) for s in self.specs for c in batch.caches)
        )  # fmt: skip

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                 logits: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """x [S, D] -> the last block's output [S, D]; writes each cache's next position. With
        `logits` [S, vocab] (and runs_head()), the LM head of the final norm of it goes there."""
        firsts, seconds = [], []
        for cache in batch.caches:
            a, b = self._addresses(cache)
            firsts += a
            seconds += b
        n = len(firsts)
        cos_sin = [rope_cos_sin(positions, f, s, memo=batch.memo) for f, s in self.ropes]
        lengths = torch.tensor([c.length for c in batch.caches], dtype=torch.int64)
        cos, sin = [c for c, _ in cos_sin], [s for _, s in cos_sin]
        planes = kernels.PLANES[self.specs[0].activations]
        head = self.head if logits is not None else None
        if self.mla:
            return kernels.decode_mla(self.blocks, self.dim, x, (ctypes.c_void_p * n)(*firsts), lengths, cos, sin, planes,
                                      head, logits)  # fmt: skip
        return kernels.decode_dense(self.blocks, self.dim, x, (ctypes.c_void_p * n)(*firsts),
                                    (ctypes.c_void_p * n)(*seconds), lengths, cos, sin, planes, head, logits)  # fmt: skip

    def _addresses(self, cache: SequenceCache) -> tuple[list[int], list[int]]:
        """The cache's per-block addresses (keys and values; MLA: the joint latent rows), checked
        and kept on it once."""
        memo = cache.__dict__.get("_native_step_addresses")
        if memo is None:
            for spec, tensors in zip(self.specs, cache.layers):
                for t, shape in zip(tensors, spec.cache_shapes(cache.capacity)):
                    if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device.type != "cpu":
                        raise ValueError(f"decode cache {tuple(t.shape)} {t.dtype} is not the block's {shape} float32")
                if self.mla:
                    latent, pe = tensors
                    L = latent.shape[1]
                    joint = (L + pe.shape[1], 1)
                    if latent.stride() != joint or pe.data_ptr() != latent.data_ptr() + 4 * L:
                        raise ValueError("MLA decode cache is not one joint [capacity, L + R] buffer")
                elif not all(t.is_contiguous() for t in tensors):
                    raise ValueError("decode cache is not contiguous")
            memo = ([t[0].data_ptr() for t in cache.layers], [t[1].data_ptr() for t in cache.layers])
            cache.__dict__["_native_step_addresses"] = memo
        return memo
