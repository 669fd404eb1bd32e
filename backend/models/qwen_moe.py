"""Qwen MoE decoders: qwen2moe (sigmoid-gated shared expert, qkv bias) and qwen3moe (q/k norms)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFFile
from ..layers.attention import Attention
from ..layers.linear import Embedding, Linear, load
from ..layers.moe import SparseMoE
from ..layers.native_step import DenseBlockSpec
from ..layers.norm import RMSNorm
from ..layers.rope import linear_scaling_factor, rope_inv_freq
from .decoder import DecoderLM

# Shape alphabet: T tokens in the batch, D hidden, V vocab.


@dataclass(frozen=True)
class ModelArgs:
    architecture: str  # "qwen2moe" or "qwen3moe"
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling_factor: float  # linear scaling: positions / factor
    max_position_embeddings: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelArgs":
        hidden = f.arch_get("embedding_length")
        heads = f.arch_get("attention.head_count")
        qwen3 = f.architecture == "qwen3moe"
        return cls(
            architecture=f.architecture,
            vocab_size=f.tensor("token_embd.weight").shape[0],
            hidden_size=hidden,
            num_hidden_layers=f.arch_get("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=f.arch_get("attention.head_count_kv", heads),
            head_dim=f.arch_get("attention.key_length", hidden // heads),
            rms_norm_eps=f.arch_get("attention.layer_norm_rms_epsilon"),
            rope_theta=f.arch_get("rope.freq_base", 1000000.0),
            rope_scaling_factor=linear_scaling_factor(f),
            max_position_embeddings=f.arch_get("context_length", 32768),
            num_experts=f.arch_get("expert_count"),
            num_experts_per_tok=f.arch_get("expert_used_count"),
            moe_intermediate_size=f.arch_get("expert_feed_forward_length"),
            shared_expert_intermediate_size=0 if qwen3 else f.arch_get("expert_shared_feed_forward_length", 0),
            # llama.cpp hard-codes these per arch; files rarely carry expert_weights_norm.
            norm_topk_prob=f.arch_get("expert_weights_norm", qwen3),
        )


class Block(nn.Module):
    def __init__(self, f: GGUFFile, args: ModelArgs, i: int, inv_freq: torch.Tensor):
        super().__init__()
        p, D = f"blk.{i}", args.hidden_size
        qwen3 = args.architecture == "qwen3moe"
        self.attn_norm = RMSNorm(load(f, f"{p}.attn_norm.weight", (D,)), args.rms_norm_eps)
        self.attn = Attention(
            f, p, hidden_size=D, num_heads=args.num_attention_heads, num_kv_heads=args.num_key_value_heads,
            head_dim=args.head_dim, inv_freq=inv_freq, neox=True,
            qkv_bias=not qwen3, qk_norm_eps=args.rms_norm_eps if qwen3 else None,
        )
        self.ffn_norm = RMSNorm(load(f, f"{p}.ffn_norm.weight", (D,)), args.rms_norm_eps)
        self.ffn = SparseMoE(
            f, p, dim=D, num_experts=args.num_experts, top_k=args.num_experts_per_tok,
            expert_dim=args.moe_intermediate_size, norm_topk_prob=args.norm_topk_prob,
            shared_expert_dim=args.shared_expert_intermediate_size,
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, i: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, batch, i)  # [T, D]
        return x + self.ffn(self.ffn_norm(x))

    def native_spec(self) -> DenseBlockSpec:
        return DenseBlockSpec(self.attn, self.attn_norm, self.ffn_norm, self.ffn)


class Model(DecoderLM):
    args_class = ModelArgs

    def __init__(self, f: GGUFFile, args: ModelArgs):
        super().__init__()
        self.args = args
        V, D = args.vocab_size, args.hidden_size
        self.embed = Embedding.from_gguf(f, "token_embd", V, D)  # [V, D], quantized
        inv_freq = rope_inv_freq(args.head_dim, args.rope_theta) / args.rope_scaling_factor
        self.layers = nn.ModuleList(Block(f, args, i, inv_freq) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(load(f, "output_norm.weight", (D,)), args.rms_norm_eps)
        self.output = Linear.from_gguf(f, "output", V, D) if f.has_tensor("output.weight") else self.embed.tied_output()
