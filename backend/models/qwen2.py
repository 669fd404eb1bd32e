"""Qwen2 / Qwen2.5 dense decoder: q/k/v biases, NEOX rope, often tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFFile
from ..layers.attention import Attention
from ..layers.linear import Embedding, FeedForward, Linear, load
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

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelArgs":
        hidden = f.arch_get("embedding_length")
        heads = f.arch_get("attention.head_count")
        return cls(
            vocab_size=f.tensor("token_embd.weight").shape[0],
            hidden_size=hidden,
            num_hidden_layers=f.arch_get("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=f.arch_get("attention.head_count_kv", heads),
            head_dim=f.arch_get("attention.key_length", hidden // heads),
            intermediate_size=f.arch_get("feed_forward_length"),
            rms_norm_eps=f.arch_get("attention.layer_norm_rms_epsilon"),
            rope_theta=f.arch_get("rope.freq_base", 1000000.0),
            rope_scaling_factor=linear_scaling_factor(f),
            max_position_embeddings=f.arch_get("context_length", 32768),
        )


class Block(nn.Module):
    def __init__(self, f: GGUFFile, args: ModelArgs, i: int, inv_freq: torch.Tensor):
        super().__init__()
        p, D = f"blk.{i}", args.hidden_size
        self.attn_norm = RMSNorm(load(f, f"{p}.attn_norm.weight", (D,)), args.rms_norm_eps)
        self.attn = Attention(
            f, p, hidden_size=D, num_heads=args.num_attention_heads, num_kv_heads=args.num_key_value_heads,
            head_dim=args.head_dim, inv_freq=inv_freq, neox=True, qkv_bias=True,
        )
        self.ffn_norm = RMSNorm(load(f, f"{p}.ffn_norm.weight", (D,)), args.rms_norm_eps)
        self.ffn = FeedForward(f, p, "", D, args.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, i: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, batch, i)  # [T, D]
        return x + self.ffn(self.ffn_norm(x))

    def native_spec(self) -> DenseBlockSpec:
        return DenseBlockSpec(self.attn, self.attn_norm, self.ffn_norm, (self.ffn.gate, self.ffn.up, self.ffn.down))


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
        # The small Qwen2 models tie lm_head to the embeddings and ship no output.weight.
        self.output = Linear.from_gguf(f, "output", V, D) if f.has_tensor("output.weight") else self.embed.tied_output()
