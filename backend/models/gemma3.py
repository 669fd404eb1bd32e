"""Gemma 3 text decoder: sliding-window and global layers, QK norms, sandwich norms, GELU FFN."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFFile
from ..layers.attention import Attention
from ..layers.linear import Embedding, Linear, gated, load, project_many
from ..layers.native_step import DenseBlockSpec
from ..layers.norm import RMSNorm
from ..layers.rope import linear_scaling_factor, rope_inv_freq
from .decoder import DecoderLM

# Shape alphabet: T tokens in the batch, D hidden, V vocab.

LOCAL_ROPE_THETA = 10000.0  # sliding layers' base (rope_local_base_freq); not in the GGUF
SLIDING_WINDOW_PATTERN = 6  # every 6th layer attends globally, as llama.cpp and transformers


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float  # global layers
    rope_scaling_factor: float  # linear, global layers only
    sliding_window: int
    query_pre_attn_scalar: float
    max_position_embeddings: int
    final_logit_softcapping: float | None = None  # Gemma 2 style tanh cap; absent in Gemma 3 files

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelArgs":
        hidden, heads = f.arch_get("embedding_length"), f.arch_get("attention.head_count")
        head_dim = f.arch_get("attention.key_length", hidden // heads)
        return cls(
            vocab_size=f.tensor("token_embd.weight").shape[0],
            hidden_size=hidden,
            num_hidden_layers=f.arch_get("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=f.arch_get("attention.head_count_kv", heads),
            head_dim=head_dim,
            intermediate_size=f.arch_get("feed_forward_length"),
            rms_norm_eps=f.arch_get("attention.layer_norm_rms_epsilon"),
            rope_theta=f.arch_get("rope.freq_base", 1_000_000.0),
            rope_scaling_factor=linear_scaling_factor(f),
            sliding_window=f.arch_get("attention.sliding_window", 4096),
            # llama.cpp scales queries by 1/sqrt(head_dim) for every size but 27B (hidden/heads).
            query_pre_attn_scalar=float(hidden // heads if head_dim * heads != hidden and heads == 32 else head_dim),
            max_position_embeddings=f.arch_get("context_length", 32768),
            final_logit_softcapping=f.arch_get("final_logit_softcapping", None),
        )

    def is_sliding(self, i: int) -> bool:
        return (i + 1) % SLIDING_WINDOW_PATTERN != 0


class Block(nn.Module):
    def __init__(self, f: GGUFFile, args: ModelArgs, i: int, inv_freq: torch.Tensor):
        super().__init__()
        p, D, eps = f"blk.{i}", args.hidden_size, args.rms_norm_eps
        sliding = args.is_sliding(i)
        # The GGUF converter stores Gemma's norm weights as 1 + w, so plain RMSNorm applies them.
        self.attn_norm = RMSNorm(load(f, f"{p}.attn_norm.weight", (D,)), eps)
        self.attn = Attention(
            f, p, hidden_size=D, num_heads=args.num_attention_heads, num_kv_heads=args.num_key_value_heads,
            head_dim=args.head_dim, inv_freq=inv_freq, neox=True, qk_norm_eps=eps,
            scale=args.query_pre_attn_scalar**-0.5, sliding_window=args.sliding_window if sliding else None,
        )  # fmt: skip
        self.post_attn_norm = RMSNorm(load(f, f"{p}.post_attention_norm.weight", (D,)), eps)
        self.ffn_norm = RMSNorm(load(f, f"{p}.ffn_norm.weight", (D,)), eps)
        self.gate = Linear.from_gguf(f, f"{p}.ffn_gate", args.intermediate_size, D)
        self.up = Linear.from_gguf(f, f"{p}.ffn_up", args.intermediate_size, D)
        self.down = Linear.from_gguf(f, f"{p}.ffn_down", D, args.intermediate_size)
        self.post_ffn_norm = RMSNorm(load(f, f"{p}.post_ffw_norm.weight", (D,)), eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, i: int) -> torch.Tensor:
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), positions, batch, i))  # [T, D]
        h = self.ffn_norm(x)
        gate, up = project_many((self.gate, self.up), h)
        h = self.down(gated(gate, up, "gelu_tanh"))
        return x + self.post_ffn_norm(h)

    def native_spec(self) -> DenseBlockSpec:
        return DenseBlockSpec(self.attn, self.attn_norm, self.ffn_norm, (self.gate, self.up, self.down), "gelu_tanh",
                              post_attn_norm=self.post_attn_norm, post_ffn_norm=self.post_ffn_norm)  # fmt: skip


class Model(DecoderLM):
    args_class = ModelArgs

    def __init__(self, f: GGUFFile, args: ModelArgs):
        super().__init__()
        self.args = args
        V, D = args.vocab_size, args.hidden_size
        self.embed = Embedding.from_gguf(f, "token_embd", V, D)  # [V, D], quantized
        self.embed_scale = math.sqrt(D)
        global_freq = rope_inv_freq(args.head_dim, args.rope_theta) / args.rope_scaling_factor
        local_freq = rope_inv_freq(args.head_dim, LOCAL_ROPE_THETA)
        self.layers = nn.ModuleList(
            Block(f, args, i, local_freq if args.is_sliding(i) else global_freq) for i in range(args.num_hidden_layers)
        )
        self.norm = RMSNorm(load(f, "output_norm.weight", (D,)), args.rms_norm_eps)
        self.output = Linear.from_gguf(f, "output", V, D) if f.has_tensor("output.weight") else self.embed.tied_output()

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens) * torch.tensor(self.embed_scale, dtype=torch.float32)  # Gemma scales by sqrt(D)

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if cap := self.args.final_logit_softcapping:
            logits = cap * torch.tanh(logits / cap)
        return logits
