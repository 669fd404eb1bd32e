"""Multi-head latent attention (DeepSeek-V2/V3): the cache holds one compressed latent per token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFError, GGUFFile
from .linear import DEFAULT_ACTIVATIONS, Linear, load, project_many, quantized
from .norm import RMSNorm
from .rope import apply_rope, rope_cos_sin

# Shape alphabet: T tokens in the batch, n one sequence's new tokens, S its cached + new positions,
# H heads, D hidden, Q q_lora_rank, L kv_lora_rank, R qk_rope_head_dim, N qk_nope_head_dim,
# Vd v_head_dim.

# Scores materialized at once by the absorbed path (rows x keys, float32): 64 MiB.
_SCORE_BUDGET = 1 << 24


def load_kv_b(f: GGUFFile, prefix: str, H: int, L: int, N: int, Vd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent up-projections w_uk [H, N, L] (keys) and w_uv [H, Vd, L] (values).

    Current GGUFs hold attn_k_b [H, L, N] (convert_hf_to_gguf transposes each head's key block so
    llama.cpp can absorb it into q) and attn_v_b [H, Vd, L]; older ones hold HF's kv_b_proj as
    attn_kv_b [H * (N + Vd), L], each head's N key rows followed by its Vd value rows.
    """
    if f.has_tensor(f"{prefix}.attn_k_b.weight"):
        w_uk = load(f, f"{prefix}.attn_k_b.weight", (H, L, N)).transpose(1, 2).contiguous()
        return w_uk, load(f, f"{prefix}.attn_v_b.weight", (H, Vd, L))
    if not f.has_tensor(f"{prefix}.attn_kv_b.weight"):
        raise GGUFError(f"{f.name}: {prefix} has neither attn_k_b/attn_v_b nor attn_kv_b")
    kv_b = load(f, f"{prefix}.attn_kv_b.weight", (H * (N + Vd), L)).view(H, N + Vd, L)
    return kv_b[:, :N].contiguous(), kv_b[:, N:].contiguous()


def causal_mask(n: int, past: int, device: torch.device | None = None) -> tuple[torch.Tensor | None, bool]:
    """(mask [n, past + n] or None, is_causal) for n queries at positions past.. over all keys.

    A decode step sees every key and a fresh prefill is square, so neither needs a mask tensor.
    """
    if n == 1:
        return None, False
    if past == 0:
        return None, True
    return torch.ones(n, past + n, dtype=torch.bool, device=device).tril(diagonal=past), False


class MLAttention(nn.Module):
    """DeepSeek MLA over a ForwardBatch; each layer's cache is (latent [cap, L], k_pe [cap, R]).

    Two exact ways to attend, picked per sequence and step by counted multiply-adds:
    - absorbed (decode, short chunks): fold w_uk into the query (q_nope @ w_uk -> [H, L]) and
      attend straight over the cached latents as one-key-head MQA, then apply w_uv to the
      attended latent. Per step this reads the cache once and costs H*S*(2L+R) per query.
    - expanded (prefill): up-project all S latents to per-head keys/values (S*L*H*(N+Vd), paid
      once for the whole chunk) and run ordinary attention at H*S*(N+R+Vd) per query.
    With DeepSeek's L=512, R=64, N=Vd=128, absorbed wins below ~170 new tokens per sequence.
    Measured on one CPU thread at V2-Lite's H=16, S=1024: a decode step takes 1.0 ms absorbed
    against 62 ms expanded; a 512-token prefill 60 ms expanded against 141 ms absorbed.
    Both are the same sums in a different order, so they agree to float rounding.

    With integer activations (`activations`, as Linear's) the absorbed path applies attn_k_b and
    attn_v_b straight from their GGUF blocks, all heads in one integer-kernel call each, as
    llama.cpp does: a decode step then reads them quantized instead of as float32.
    """

    force_path: str | None = None  # "absorbed" or "expanded" pins the choice (tests, benchmarks)
    activations = DEFAULT_ACTIVATIONS

    def __init__(
        self,
        f: GGUFFile,
        prefix: str,
        *,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rms_norm_eps: float,
        inv_freq: torch.Tensor,
        rope_scale: float,
        softmax_scale: float,
    ):
        super().__init__()
        D, H, Q, L = hidden_size, num_heads, q_lora_rank, kv_lora_rank
        N, R, Vd = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.num_heads, self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim = H, L, N, R
        self.v_head_dim, self.rope_scale, self.softmax_scale = Vd, rope_scale, softmax_scale
        self.register_buffer("inv_freq", inv_freq)
        if Q:
            self.q_a = Linear.from_gguf(f, f"{prefix}.attn_q_a", Q, D)
            self.q_a_norm = RMSNorm(load(f, f"{prefix}.attn_q_a_norm.weight", (Q,)), rms_norm_eps)
            self.q_b = Linear.from_gguf(f, f"{prefix}.attn_q_b", H * (N + R), Q)
        else:  # V2-Lite: no query compression
            self.q = Linear.from_gguf(f, f"{prefix}.attn_q", H * (N + R), D)
        self.kv_a = Linear.from_gguf(f, f"{prefix}.attn_kv_a_mqa", L + R, D)
        self.kv_a_norm = RMSNorm(load(f, f"{prefix}.attn_kv_a_norm.weight", (L,)), rms_norm_eps)
        w_uk, w_uv = load_kv_b(f, prefix, H, L, N, Vd)
        self.register_buffer("w_uk", w_uk)  # [H, N, L]
        self.register_buffer("w_uv", w_uv)  # [H, Vd, L]
        self.k_b = self.v_b = None  # the same maps as GGUF blocks: [H * L, N] and [H * Vd, L]
        if f.has_tensor(f"{prefix}.attn_k_b.weight"):
            k_b, v_b = quantized(f, f"{prefix}.attn_k_b.weight", (H, L, N)), quantized(f, f"{prefix}.attn_v_b.weight", (H, Vd, L))
            if k_b.ggml_type not in kernels.FLOAT_TYPES and v_b.ggml_type not in kernels.FLOAT_TYPES:
                self.k_b, self.v_b = k_b, v_b
        self.o = Linear.from_gguf(f, f"{prefix}.attn_output", D, H * Vd)

    def allocate(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent [capacity, L], k_pe [capacity, R]): L + R values per token, nothing per head.

        Both are column views of one [capacity, L + R] buffer, so the absorbed path reads the
        joint key row [latent | k_pe] without concatenating the cache every step.
        """
        buf = torch.zeros(capacity, self.kv_lora_rank + self.qk_rope_head_dim, device=self.w_uk.device)
        return buf[:, : self.kv_lora_rank], buf[:, self.kv_lora_rank :]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, layer: int) -> torch.Tensor:
        T, H, L = x.shape[0], self.num_heads, self.kv_lora_rank
        N, R = self.qk_nope_head_dim, self.qk_rope_head_dim
        q_in, kv = project_many((self.q_a if hasattr(self, "q_b") else self.q, self.kv_a), x)  # kv: [T, L + R]
        q = (self.q_b(self.q_a_norm(q_in)) if hasattr(self, "q_b") else q_in).view(T, H, N + R)
        latent = self.kv_a_norm(kv[:, :L])  # [T, L]
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.rope_scale, batch.memo)  # [T, R/2]
        # Rotated in place (q is this step's own tensor), so [q_nope | q_pe] is the query as it is.
        q[..., N:] = apply_rope(q[..., N:], cos, sin, neox=False)
        q_nope, q_pe = q.split([N, R], dim=-1)  # [T, H, N], [T, H, R]
        k_pe = apply_rope(kv[:, None, L:], cos, sin, neox=False)[:, 0]  # [T, R], one head shared by all
        out = x.new_empty(T, H, self.v_head_dim)
        spans = [(start, end, cache) for (start, end), cache in zip(batch.spans(), batch.caches)]
        absorbed = [self._use_absorbed(end - start, cache.length + end - start) for start, end, cache in spans]
        # With 8-bit activations the per-head maps run from their GGUF blocks, once per step for
        # the tokens of every absorbed sequence together (each map read once, not per sequence).
        planes = kernels.PLANES.get(self.activations)
        quantized_maps = self.k_b is not None and planes and x.device.type == "cpu" and any(absorbed)
        if quantized_maps:
            idx = torch.cat([torch.arange(start, end) for (start, end, _), a in zip(spans, absorbed) if a])
            q_latent = kernels.matmul_q8_heads(self.k_b, q_nope[idx].float(), planes).to(x.dtype)  # [Ta, H, L]
            o_latent = x.new_empty(len(idx), H, L)
        offset = 0
        for (start, end, cache), use_absorbed in zip(spans, absorbed):
            latent_cache, pe_cache = cache.layers[layer]
            past, n = cache.length, end - start
            latent_cache[past : past + n] = latent[start:end]
            pe_cache[past : past + n] = k_pe[start:end]
            if not use_absorbed:
                o = self._expanded(q[start:end], latent_cache, pe_cache, past)
                if n == T:  # the batch is this one prompt chunk: no copy
                    out = o
                else:
                    out[start:end] = o
            elif quantized_maps:
                q_lat = q_latent[offset : offset + n]
                o_latent[offset : offset + n] = self._attend_latent(q_lat, q_pe[start:end], latent_cache, pe_cache, past)
                offset += n
            else:  # float maps, per sequence: w_uk folded into the query, w_uv applied after
                q_lat = torch.bmm(q_nope[start:end].transpose(0, 1), self.w_uk).transpose(0, 1)  # [n, H, L]
                o = self._attend_latent(q_lat, q_pe[start:end], latent_cache, pe_cache, past).transpose(0, 1)
                out[start:end] = torch.bmm(o, self.w_uv.transpose(1, 2)).transpose(0, 1)  # [n, H, Vd]
        if quantized_maps:
            out[idx] = kernels.matmul_q8_heads(self.v_b, o_latent.float(), planes).to(out.dtype)  # [Ta, H, Vd]
        return self.o(out.reshape(T, H * self.v_head_dim))

    def _use_absorbed(self, n: int, S: int) -> bool:
        if self.force_path is not None:
            return self.force_path == "absorbed"
        L, N, R, Vd = self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        absorbed = n * S * (2 * L + R) + n * L * (N + Vd)  # per head: scores+mix over latents, q/out folds
        expanded = S * L * (N + Vd) + n * S * (N + R + Vd)  # per head: up-project S latents, plain attention
        return absorbed <= expanded

    def _attend_latent(self, q_latent, q_pe, latent_cache, pe_cache, past: int) -> torch.Tensor:
        """q_latent [n, H, L] (w_uk folded in), q_pe [n, H, R] -> the attended latents [n, H, L]:
        one-key-head MQA straight over the cached latents."""
        n, H, L = q_latent.shape[0], self.num_heads, self.kv_lora_rank
        S = past + n
        # One key head for all H query heads: fold heads into rows, so scoring is a single GEMM.
        rows = torch.cat([q_latent, q_pe], dim=-1).reshape(n * H, L + self.qk_rope_head_dim)
        keys = self._joint_rows(latent_cache, pe_cache, S)  # [S, L+R]
        values = latent_cache[:S]  # [S, L]
        if rows.device.type == "cpu" and rows.dtype == torch.float32:  # MQA in our kernels
            if n == 1:  # decoding
                return kernels.attend(rows, keys[:, None, :], values[:, None, :], self.softmax_scale).view(1, H, L)
            return kernels.attend_prompt(rows.view(n, H, -1), keys[:, None, :], values[:, None, :], self.softmax_scale, past)
        o = rows.new_empty(n * H, L)
        step = max(1, _SCORE_BUDGET // (S * H)) * H  # whole tokens per block, bounded score memory
        for r0 in range(0, n * H, step):
            r1 = min(r0 + step, n * H)
            scores = (rows[r0:r1] @ keys.T) * self.softmax_scale  # [rows, S]
            if n > 1:  # row (t, h) is query t at position past + t: it sees keys 0 .. past + t
                t = torch.arange(r0, r1, device=rows.device) // H
                keys_pos = torch.arange(S, device=rows.device)
                scores = scores.masked_fill(keys_pos[None, :] > (past + t)[:, None], float("-inf"))
            o[r0:r1] = F.softmax(scores, dim=-1) @ values  # [rows, L]
        return o.view(n, H, L)

    def _joint_rows(self, latent_cache: torch.Tensor, pe_cache: torch.Tensor, S: int) -> torch.Tensor:
        """The first S cache rows [latent | k_pe] as one [S, L + R] tensor: a view of allocate()'s
        buffer, a copy for a cache allocated elsewhere as two tensors."""
        L, R = self.kv_lora_rank, self.qk_rope_head_dim
        if latent_cache.stride() == (L + R, 1) and pe_cache.data_ptr() == latent_cache.data_ptr() + L * latent_cache.element_size():
            return latent_cache.as_strided((S, L + R), latent_cache.stride())
        return torch.cat([latent_cache[:S], pe_cache[:S]], dim=-1)

    def _expanded(self, query, latent_cache, pe_cache, past: int) -> torch.Tensor:
        """query [n, H, N+R] ([q_nope | q_pe]) -> [n, H, Vd], with per-head keys/values rebuilt."""
        n, H, N, R = query.shape[0], self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        S = past + n
        if query.device.type == "cpu" and query.dtype == torch.float32:  # expanded panel by panel in our kernel
            joint = self._joint_rows(latent_cache, pe_cache, S)
            return kernels.attend_prompt_mla(query, joint, self.w_uk, self.w_uv, self.softmax_scale, past)
        latents = latent_cache[:S]  # [S, L]
        k_nope = (latents @ self.w_uk.reshape(H * N, -1).T).view(S, H, N)  # [S, H, N]
        values = (latents @ self.w_uv.reshape(H * self.v_head_dim, -1).T).view(S, H, self.v_head_dim)
        keys = torch.cat([k_nope, pe_cache[:S, None, :].expand(S, H, R)], dim=-1)  # [S, H, N+R]
        mask, causal = causal_mask(n, past, query.device)
        o = F.scaled_dot_product_attention(
            query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
            attn_mask=mask, is_causal=causal, scale=self.softmax_scale,
        )  # [H, n, Vd]
        return o.transpose(0, 1)
