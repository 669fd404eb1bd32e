"""Llama-family decoder (llama, mistral, smollm; mixtral when ffn_*_exps are present)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFError, GGUFFile
from ..layers.attention import Attention
from ..layers.linear import Embedding, FeedForward, Linear, load
from ..layers.moe import SparseMoE
from ..layers.native_step import DenseBlockSpec
from ..layers.norm import RMSNorm
from ..layers.rope import linear_scaling_factor, rope_inv_freq
from .decoder import DecoderLM

# Shape alphabet: T tokens in the batch, D hidden, V vocab.


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
    rope_theta: float
    rope_scaling_factor: float  # linear scaling: positions / factor
    max_position_embeddings: int
    num_local_experts: int = 0
    num_experts_per_tok: int = 0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelArgs":
        hidden = f.arch_get("embedding_length")
        heads = f.arch_get("attention.head_count")
        head_dim = f.arch_get("attention.key_length", hidden // heads)
        rope_dim = f.arch_get("rope.dimension_count", head_dim)
        if rope_dim != head_dim:
            raise GGUFError(f"{f.name}: partial rotary embedding ({rope_dim} of {head_dim} dims) is not supported")
        return cls(
            vocab_size=f.tensor("token_embd.weight").shape[0],
            hidden_size=hidden,
            num_hidden_layers=f.arch_get("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=f.arch_get("attention.head_count_kv", heads),
            head_dim=head_dim,
            intermediate_size=f.arch_get("feed_forward_length"),
            rms_norm_eps=f.arch_get("attention.layer_norm_rms_epsilon"),
            rope_theta=f.arch_get("rope.freq_base", 10000.0),
            rope_scaling_factor=linear_scaling_factor(f),
            max_position_embeddings=f.arch_get("context_length", 4096),
            num_local_experts=f.arch_get("expert_count", 0),
            num_experts_per_tok=f.arch_get("expert_used_count", 0),
        )


class Block(nn.Module):
    def __init__(self, f: GGUFFile, args: ModelArgs, i: int, inv_freq: torch.Tensor):
        super().__init__()
        p, D = f"blk.{i}", args.hidden_size
        self.attn_norm = RMSNorm(load(f, f"{p}.attn_norm.weight", (D,)), args.rms_norm_eps)
        # llama.cpp stores llama Q/K rows permuted for its NORM (adjacent-pair) rope.
        self.attn = Attention(
            f, p, hidden_size=D, num_heads=args.num_attention_heads, num_kv_heads=args.num_key_value_heads,
            head_dim=args.head_dim, inv_freq=inv_freq, neox=False,
        )
        self.ffn_norm = RMSNorm(load(f, f"{p}.ffn_norm.weight", (D,)), args.rms_norm_eps)
        if args.num_local_experts:
            self.ffn = SparseMoE(
                f, p, dim=D, num_experts=args.num_local_experts, top_k=args.num_experts_per_tok,
                expert_dim=args.intermediate_size, norm_topk_prob=True,  # Mixtral renormalizes
            )
        else:
            self.ffn = FeedForward(f, p, "", D, args.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, i: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, batch, i)  # [T, D]
        return x + self.ffn(self.ffn_norm(x))

    def native_spec(self) -> DenseBlockSpec | None:
        ffn = self.ffn if not isinstance(self.ffn, FeedForward) else (self.ffn.gate, self.ffn.up, self.ffn.down)
        return DenseBlockSpec(self.attn, self.attn_norm, self.ffn_norm, ffn)  # Mixtral: its SparseMoE


class Model(DecoderLM):
    args_class = ModelArgs

    def __init__(self, f: GGUFFile, args: ModelArgs):
        super().__init__()
        self.args = args
        V, D = args.vocab_size, args.hidden_size
        self.embed = Embedding.from_gguf(f, "token_embd", V, D)  # [V, D], quantized
        # rope_freqs holds llama3-style per-frequency divisors when the model was trained with them.
        factors = load(f, "rope_freqs.weight", (args.head_dim // 2,)) if f.has_tensor("rope_freqs.weight") else None
        inv_freq = rope_inv_freq(args.head_dim, args.rope_theta, factors) / args.rope_scaling_factor
        self.layers = nn.ModuleList(Block(f, args, i, inv_freq) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(load(f, "output_norm.weight", (D,)), args.rms_norm_eps)
        # Tied embeddings (SmolLM, Llama 3.2 1B) have no output.weight.
        self.output = Linear.from_gguf(f, "output", V, D) if f.has_tensor("output.weight") else self.embed.tied_output()
