"""Causal grouped-query attention over a ForwardBatch, each sequence reading and writing its own cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFFile
from .linear import Linear, load, project_many
from .norm import RMSNorm
from .rope import apply_rope, rope_cos_sin

# Shape alphabet: T tokens in the batch, n one sequence's new tokens, S its cached + new
# positions, H query heads, K kv heads, Dh head dim, D hidden.


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch, layer: int, scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """q [T, H, Dh], k/v [T, K, Dh] -> [T, H, Dv]; writes k/v at each sequence's next positions.

    The cache tuple of `layer` is (keys [capacity, K, Dh], values [capacity, K, Dv]). Sequences
    run one by one: their lengths differ, and padding would cost more than the loop on CPU.
    `window` (sliding-window layers, Gemma 3): query i sees only keys j with i - j < window.
    """
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    for (start, end), cache in zip(batch.spans(), batch.caches):
        k_cache, v_cache = cache.layers[layer]
        past, n = cache.length, end - start
        k_cache[past : past + n] = k[start:end]
        v_cache[past : past + n] = v[start:end]
        if n == 1 and q.device.type == "cpu":  # decoding: our kernel, sdpa's overhead is most of a step's attention
            first = 0 if window is None else max(0, past + 1 - window)  # keys j with past - j < window
            out[start] = kernels.attend(q[start], k_cache[first : past + 1], v_cache[first : past + 1], scale)
            continue
        keys, values = k_cache[: past + n], v_cache[: past + n]  # [S, K, Dh]
        if q.device.type == "cpu" and q.dtype == torch.float32:  # a prompt chunk: our kernel, 2-3x sdpa's speed
            o = kernels.attend_prompt(q[start:end], keys, values, scale, past, window)
            if n == q.shape[0]:  # the batch is this one prompt chunk: no copy
                return o
            out[start:end] = o
            continue
        # Query i sits at position past + i and sees keys 0 .. past + i (bottom-right causal).
        # The two common cases need no mask, which keeps sdpa on its fused CPU kernel: a fresh
        # prefill is square (top-left causal is the same thing), a decode step sees every key.
        mask, causal = None, False
        if window is not None and past + n > window:
            pos = torch.arange(past, past + n, device=q.device)[:, None]  # [n, 1]
            key = torch.arange(past + n, device=q.device)[None, :]  # [1, S]
            mask = (key <= pos) & (pos - key < window)  # [n, S]
        elif n > 1 and past == 0:
            causal = True
        elif n > 1:
            mask = torch.ones(n, past + n, dtype=torch.bool, device=q.device).tril(diagonal=past)  # [n, S]
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),  # [H, n, Dh]
            keys.transpose(0, 1),  # [K, S, Dh]
            values.transpose(0, 1),
            attn_mask=mask,
            is_causal=causal,
            scale=scale,
            enable_gqa=True,  # query head h reads kv head h // (H / K), as transformers' repeat_kv
        )
        out[start:end] = o.transpose(0, 1)  # [n, H, Dv]
    return out


class Attention(nn.Module):
    """Multi-head attention with GQA, optional q/k/v biases (qwen2) and q/k RMSNorm (qwen3)."""

    def __init__(
        self,
        f: GGUFFile,
        prefix: str,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        inv_freq: torch.Tensor,
        neox: bool,
        qkv_bias: bool = False,
        qk_norm_eps: float | None = None,
        scale: float | None = None,
        sliding_window: int | None = None,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.sliding_window = sliding_window
        self.neox = neox
        self.register_buffer("inv_freq", inv_freq)
        self.q = Linear.from_gguf(f, f"{prefix}.attn_q", num_heads * head_dim, hidden_size, bias=qkv_bias)
        self.k = Linear.from_gguf(f, f"{prefix}.attn_k", num_kv_heads * head_dim, hidden_size, bias=qkv_bias)
        self.v = Linear.from_gguf(f, f"{prefix}.attn_v", num_kv_heads * head_dim, hidden_size, bias=qkv_bias)
        self.o = Linear.from_gguf(f, f"{prefix}.attn_output", hidden_size, num_heads * head_dim)
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(load(f, f"{prefix}.attn_q_norm.weight", (head_dim,)), qk_norm_eps)
            self.k_norm = RMSNorm(load(f, f"{prefix}.attn_k_norm.weight", (head_dim,)), qk_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, layer: int) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = project_many((self.q, self.k, self.v), x)  # x quantized once for all three
        q = q.view(T, self.num_heads, self.head_dim)  # [T, H, Dh]
        k = k.view(T, self.num_kv_heads, self.head_dim)  # [T, K, Dh]
        v = v.view(T, self.num_kv_heads, self.head_dim)  # [T, K, Dh]
        if self.q_norm is not None:  # per-head norm before rope (Qwen3, Gemma 3)
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_cos_sin(positions, self.inv_freq, memo=batch.memo)  # [T, Dh/2]
        q, k = apply_rope(q, cos, sin, self.neox), apply_rope(k, cos, sin, self.neox)
        o = causal_attention(q, k, v, batch, layer, self.scale, self.sliding_window)  # [T, H, Dh]
        return self.o(o.reshape(T, self.num_heads * self.head_dim))

    def allocate(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's (keys, values) cache, [capacity, K, Dh] each."""
        shape = (capacity, self.num_kv_heads, self.head_dim)
        device = self.inv_freq.device  # the accelerator's when the block was placed there
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)
