"""Tiny random Qwen-family GGUFs: qwen2 (dense, qkv bias), qwen2moe (shared expert), qwen3moe (q/k norm)."""

from __future__ import annotations

import functools
import math

from gguf import MODEL_TENSOR as MT
from gguf import GGUFWriter

from .common import TensorWriter, add_rope_scaling, tn

QWEN2_DEFAULTS = {
    "vocab_size": 320,
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
QWEN2MOE_DEFAULTS = {
    **QWEN2_DEFAULTS,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 256,
    "shared_expert_intermediate_size": 512,
    "norm_topk_prob": False,
}
QWEN3MOE_DEFAULTS = {
    **QWEN2_DEFAULTS,
    "head_dim": 128,  # Qwen3 decouples head_dim from hidden_size / heads
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 256,
    "norm_topk_prob": True,
}


def write(writer: GGUFWriter, cfg: dict, w: TensorWriter, arch: str) -> None:
    """llama.cpp's metadata and tensors for Qwen2 / Qwen2Moe / Qwen3Moe (NEOX rope, no Q/K permute)."""
    d, n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or d // n_head
    n_experts = cfg.get("num_experts", 0)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    add_rope_scaling(writer, cfg)
    if arch == "qwen3moe":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(cfg["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        writer.add_expert_weights_norm(bool(cfg["norm_topk_prob"]))
    if cfg.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])

    w.matrix(tn(MT.TOKEN_EMBD), (cfg["vocab_size"], d), std=1.0)
    w.norm(tn(MT.OUTPUT_NORM), d)
    if not cfg["tie_word_embeddings"]:
        w.matrix(tn(MT.OUTPUT), (cfg["vocab_size"], d))
    for i in range(n_layers):
        blk = functools.partial(tn, bid=i)
        w.norm(blk(MT.ATTN_NORM), d)
        w.matrix(blk(MT.ATTN_Q), (n_head * head_dim, d))
        w.matrix(blk(MT.ATTN_K), (n_kv * head_dim, d))
        w.matrix(blk(MT.ATTN_V), (n_kv * head_dim, d))
        if arch != "qwen3moe":  # Qwen2 and Qwen2-MoE have q/k/v biases
            w.f32(blk(MT.ATTN_Q, suffix="bias"), (n_head * head_dim,), std=0.5)
            w.f32(blk(MT.ATTN_K, suffix="bias"), (n_kv * head_dim,), std=0.5)
            w.f32(blk(MT.ATTN_V, suffix="bias"), (n_kv * head_dim,), std=0.5)
        else:
            w.norm(blk(MT.ATTN_Q_NORM), head_dim)
            w.norm(blk(MT.ATTN_K_NORM), head_dim)
        w.matrix(blk(MT.ATTN_OUT), (d, n_head * head_dim))
        w.norm(blk(MT.FFN_NORM), d)
        if not n_experts:
            ffn = cfg["intermediate_size"]
            w.matrix(blk(MT.FFN_GATE), (ffn, d))
            w.matrix(blk(MT.FFN_UP), (ffn, d))
            w.matrix(blk(MT.FFN_DOWN), (d, ffn))
            continue
        ffn = cfg["moe_intermediate_size"]
        w.f32(blk(MT.FFN_GATE_INP), (n_experts, d), std=1.0 / math.sqrt(d))
        w.matrix(blk(MT.FFN_GATE_EXP), (n_experts, ffn, d))
        w.matrix(blk(MT.FFN_UP_EXP), (n_experts, ffn, d))
        w.matrix(blk(MT.FFN_DOWN_EXP), (n_experts, d, ffn))
        shared = cfg.get("shared_expert_intermediate_size")
        if shared:
            # HF's shared_expert_gate is a [1, D] linear; llama.cpp keeps it F32 like the router.
            w.f32(blk(MT.FFN_GATE_INP_SHEXP), (1, d), std=1.0 / math.sqrt(d))
            w.matrix(blk(MT.FFN_GATE_SHEXP), (shared, d))
            w.matrix(blk(MT.FFN_UP_SHEXP), (shared, d))
            w.matrix(blk(MT.FFN_DOWN_SHEXP), (d, shared))


GGUF_ARCH = {"qwen2": "qwen2", "qwen2moe": "qwen2moe", "qwen3moe": "qwen3moe"}
DEFAULTS = {"qwen2": QWEN2_DEFAULTS, "qwen2moe": QWEN2MOE_DEFAULTS, "qwen3moe": QWEN3MOE_DEFAULTS}
TOKENIZER_PRE = {"qwen2": "qwen2", "qwen2moe": "qwen2", "qwen3moe": "qwen2"}
