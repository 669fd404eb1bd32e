"""Tiny random llama-family GGUFs: llama (dense, optional llama3 rope scaling) and mixtral (MoE)."""

from __future__ import annotations

import functools
import math

import numpy as np
from gguf import MODEL_TENSOR, GGUFWriter

from .common import TensorWriter, add_rope_scaling, tn

LLAMA_DEFAULTS = {
    "vocab_size": 320,
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "rope_scaling": None,
}
# legacy_split_experts is a writer option, not an HF key: one 2-D tensor per expert.
MIXTRAL_DEFAULTS = {**LLAMA_DEFAULTS, "num_local_experts": 4, "num_experts_per_tok": 2, "legacy_split_experts": False}


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """convert_hf_to_gguf's rope_freqs for rope_type llama3: per-frequency divisors, [head_dim/2]."""
    rs = cfg["rope_scaling"]
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (cfg["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write(writer: GGUFWriter, cfg: dict, w: TensorWriter, arch: str) -> None:
    """llama.cpp's metadata and tensors for LlamaForCausalLM / MixtralForCausalLM.

    Q and K are written in llama.cpp's permuted row order (its NORM rope pairs adjacent rows);
    the weights are random, so writing them permuted is writing them at all.
    """
    d, n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or d // n_head
    n_experts = cfg.get("num_local_experts", 0)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    add_rope_scaling(writer, cfg)
    if head_dim != d // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(cfg["num_experts_per_tok"])

    w.matrix(tn(MODEL_TENSOR.TOKEN_EMBD), (cfg["vocab_size"], d), std=1.0)
    w.norm(tn(MODEL_TENSOR.OUTPUT_NORM), d)
    if not cfg["tie_word_embeddings"]:
        w.matrix(tn(MODEL_TENSOR.OUTPUT), (cfg["vocab_size"], d))
    if (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        w.array(tn(MODEL_TENSOR.ROPE_FREQS), llama3_rope_factors(cfg))
    for i in range(n_layers):
        blk = functools.partial(tn, bid=i)
        w.norm(blk(MODEL_TENSOR.ATTN_NORM), d)
        w.matrix(blk(MODEL_TENSOR.ATTN_Q), (n_head * head_dim, d))
        w.matrix(blk(MODEL_TENSOR.ATTN_K), (n_kv * head_dim, d))
        w.matrix(blk(MODEL_TENSOR.ATTN_V), (n_kv * head_dim, d))
        w.matrix(blk(MODEL_TENSOR.ATTN_OUT), (d, n_head * head_dim))
        w.norm(blk(MODEL_TENSOR.FFN_NORM), d)
        ffn = cfg["intermediate_size"]
        if n_experts and cfg.get("legacy_split_experts"):
            # Files converted before llama.cpp stacked experts (early 2024): ffn_gate.{e}.weight.
            w.f32(blk(MODEL_TENSOR.FFN_GATE_INP), (n_experts, d), std=1.0 / math.sqrt(d))
            for e in range(n_experts):
                for kind, shape in (("gate", (ffn, d)), ("up", (ffn, d)), ("down", (d, ffn))):
                    w.matrix(f"blk.{i}.ffn_{kind}.{e}.weight", shape)
        elif n_experts:
            w.f32(blk(MODEL_TENSOR.FFN_GATE_INP), (n_experts, d), std=1.0 / math.sqrt(d))
            w.matrix(blk(MODEL_TENSOR.FFN_GATE_EXP), (n_experts, ffn, d))
            w.matrix(blk(MODEL_TENSOR.FFN_UP_EXP), (n_experts, ffn, d))
            w.matrix(blk(MODEL_TENSOR.FFN_DOWN_EXP), (n_experts, d, ffn))
        else:
            w.matrix(blk(MODEL_TENSOR.FFN_GATE), (ffn, d))
            w.matrix(blk(MODEL_TENSOR.FFN_UP), (ffn, d))
            w.matrix(blk(MODEL_TENSOR.FFN_DOWN), (d, ffn))


GGUF_ARCH = {"llama": "llama", "mixtral": "llama"}  # llama.cpp files Mixtral under the llama arch
DEFAULTS = {"llama": LLAMA_DEFAULTS, "mixtral": MIXTRAL_DEFAULTS}
TOKENIZER_PRE = {"llama": "llama-bpe", "mixtral": "llama-bpe"}
