"""Mixture-of-experts FFN: softmax top-k routing, then a reference loop over stacked experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..gguf_model import GGUFError, GGUFFile
from .linear import DEFAULT_ACTIVATIONS, FeedForward, Linear, load, quantized

# Shape alphabet: T tokens, D hidden, E experts, A active experts per token, I expert FFN dim,
# n tokens routed to one expert.


def route(router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, keep the top-k: weights [T, A] float32, expert ids [T, A].

    Mixtral and Qwen3-MoE renormalize the kept weights to sum to 1 (llama.cpp's
    expert_weights_norm); Qwen2-MoE does not.
    """
    if router_logits.device.type == "cpu":  # the routing kernel: one float order, the same bits everywhere
        E = router_logits.shape[-1]
        return kernels.route(router_logits.float(), kernels.MoeRouting.make(E, top_k, norm_topk=norm_topk_prob))
    probs = F.softmax(router_logits.float(), dim=-1)  # [T, E]
    weights, ids = torch.topk(probs, top_k, dim=-1)  # [T, A]
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class Experts(nn.Module):
    """E SwiGLU experts (llama.cpp's ffn_{gate,up,down}_exps), each a Linear over its slice of
    the stacked GGUF tensor, so expert weights stay quantized in the mmap.

    This is the reference computation a fused C++ MoE kernel replaces: it sees only
    (x, weights, ids), never the router. `activations` as Linear's (set_activations).
    """

    activations = DEFAULT_ACTIVATIONS
    hybrid = None  # a backend.hybrid HybridExperts when the block around runs on an accelerator

    def __init__(self, gate: list[Linear], up: list[Linear], down: list[Linear],
                 stacked: tuple[kernels.QuantWeight, ...] | None = None):  # fmt: skip
        super().__init__()
        self.gate, self.up, self.down = nn.ModuleList(gate), nn.ModuleList(up), nn.ModuleList(down)
        self.stacked = stacked  # (gate [E*I, D], up [E*I, D], down [E*D, I]) for the fused kernel

    @classmethod
    def from_tensors(cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> "Experts":
        """From float stacks gate/up [E, I, D] and down [E, D, I]."""
        return cls([Linear(w) for w in gate], [Linear(w) for w in up], [Linear(w) for w in down])

    @classmethod
    def from_gguf(cls, f: GGUFFile, prefix: str, num_experts: int, dim: int, hidden_dim: int) -> "Experts":
        E, D, I = num_experts, dim, hidden_dim
        shapes = {"gate": (E, I, D), "up": (E, I, D), "down": (E, D, I)}
        names = [f"{prefix}.ffn_{kind}_exps.weight" for kind in shapes]
        stacked = None
        if all(f.has_tensor(n) for n in names):
            stacked = tuple(quantized(f, n, shape) for n, shape in zip(names, shapes.values()))
        return cls(*(_per_expert(f, prefix, kind, shape) for kind, shape in shapes.items()), stacked=stacked)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                shared: FeedForward | None = None) -> torch.Tensor:  # fmt: skip
        """The routed experts' weighted sum, plus `shared` (always-on experts) when given."""
        if self.hybrid is not None:
            return self.hybrid(self, x, weights, ids, shared)
        if self.stacked is not None and x.device.type == "cpu":
            # One fused call: experts in expert-major order, each one's weights read once, the
            # shared experts as one more expert every token visits.
            fused = shared.quantized() if shared is not None else None
            out = kernels.moe_experts(x, ids, weights, *self.stacked, len(self.gate), self.activations, shared=fused)
            out = out.to(x.dtype)
            return out if shared is None or fused is not None else out + shared(x)
        out = self.reference(x, weights, ids)
        return out if shared is None else out + shared(x)

    def routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The routed experts alone, on the CPU (x [T, D] there): what a hybrid step runs
        asynchronously; the same partial sums as forward() before it adds shared experts."""
        if self.stacked is not None:
            out = kernels.moe_experts(x, ids, weights, *self.stacked, len(self.gate), self.activations)
            return out.to(x.dtype)
        return self.reference(x, weights, ids)

    def reference(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The same layer as a loop of per-expert matmuls (float weights, other devices)."""
        out = torch.zeros_like(x)  # [T, D]
        # Loop over the experts that were hit, not over tokens: each expert's weights are read
        # once per batch, which is what bounds MoE speed (memory traffic, not flops).
        for e in ids.unique().tolist():
            tok, slot = (ids == e).nonzero(as_tuple=True)  # [n], [n]
            h = x[tok]  # [n, D]
            h = F.silu(self.gate[e](h)) * self.up[e](h)  # [n, I]
            out.index_add_(0, tok, self.down[e](h) * weights[tok, slot, None].to(x.dtype))  # [n, D]
        return out


def _per_expert(f: GGUFFile, prefix: str, kind: str, shape: tuple[int, int, int]) -> list[Linear]:
    """One Linear per expert: row slices of ffn_{kind}_exps [E, rows, cols] (no copy), or the
    per-expert ffn_{kind}.{e} tensors of early Mixtral GGUFs."""
    E, rows, cols = shape
    name = f"{prefix}.ffn_{kind}_exps.weight"
    if f.has_tensor(name) or not f.has_tensor(f"{prefix}.ffn_{kind}.0.weight"):
        stacked = quantized(f, name, shape)  # [E * rows, cols]
        return [Linear(qweight=stacked.rows(e * rows, (e + 1) * rows)) for e in range(E)]
    return [Linear.from_gguf(f, f"{prefix}.ffn_{kind}.{e}", rows, cols) for e in range(E)]


class SparseMoE(nn.Module):
    """Router + routed experts (+ an optional shared expert, sigmoid-gated in Qwen2-MoE)."""

    def __init__(
        self,
        f: GGUFFile,
        prefix: str,
        *,
        dim: int,
        num_experts: int,
        top_k: int,
        expert_dim: int,
        norm_topk_prob: bool,
        shared_expert_dim: int = 0,
    ):
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.router = Linear.from_gguf(f, f"{prefix}.ffn_gate_inp", num_experts, dim)  # [E, D]
        self.experts = Experts.from_gguf(f, prefix, num_experts, dim, expert_dim)
        self.shared_expert = self.shared_gate = None
        if shared_expert_dim:
            self.shared_expert = FeedForward(f, prefix, "_shexp", dim, shared_expert_dim)
            if f.has_tensor(f"{prefix}.ffn_gate_inp_shexp.weight"):
                # Stored as [D] or [1, D] depending on the converter; both are one gate logit.
                info = f.tensor(f"{prefix}.ffn_gate_inp_shexp.weight")
                if info.shape not in ((dim,), (1, dim)):
                    raise GGUFError(f"{f.name}: tensor {info.name} has shape {info.shape}, expected ({dim},)")
                self.shared_gate = Linear(load(f, info.name, info.shape).reshape(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        weights, ids = route(self.router(x), self.top_k, self.norm_topk_prob)  # [T, A], [T, A]
        out = self.experts(x, weights, ids)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared  # [T, 1] * [T, D]
            out = out + shared
        return out
