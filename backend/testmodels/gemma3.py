"""Tiny random Gemma 3 text GGUFs (sliding-window layers, QK norms, sandwich norms) and their HF oracle."""

from __future__ import annotations

import functools

import torch
from gguf import MODEL_TENSOR as MT
from gguf import GGUFWriter

from .common import HF_DECODER_LAYER_NAMES, TensorWriter, add_rope_scaling, tn

# Six layers so that layer 5 is global (every 6th, as llama.cpp and transformers place them);
# a window of 8 is crossed by the oracle's 24-token prompt.
GEMMA3_DEFAULTS = {
    "vocab_size": 320,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "sliding_window": 8,
    "query_pre_attn_scalar": 64,
    "final_logit_softcapping": None,
    "rope_scaling": None,
}
GGUF_ARCH = {"gemma3": "gemma3"}
DEFAULTS = {"gemma3": GEMMA3_DEFAULTS}
TOKENIZER_PRE = {"gemma3": "default"}

# GGUF name -> HF module name inside model.layers.{i}: the decoder's names plus Gemma's sandwich
# norms, where GGUF's ffn_norm is the pre-FFN norm.
_LAYER_NAMES = {
    **HF_DECODER_LAYER_NAMES,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def write(writer: GGUFWriter, cfg: dict, w: TensorWriter, arch: str) -> None:
    """convert_hf_to_gguf's Gemma3Model output: tied embeddings, Q/K unpermuted (NEOX rope), and
    every norm weight stored as 1 + w (Gemma's RMSNorm multiplies by 1 + w)."""
    d, n_head, n_kv, head_dim = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_sliding_window(cfg["sliding_window"])
    if cfg["final_logit_softcapping"] is not None:
        writer.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    add_rope_scaling(writer, cfg)

    w.matrix(tn(MT.TOKEN_EMBD), (cfg["vocab_size"], d), std=1.0 / d**0.5)  # x sqrt(D) at lookup
    w.norm(tn(MT.OUTPUT_NORM), d)
    for i in range(cfg["num_hidden_layers"]):
        blk = functools.partial(tn, bid=i)
        w.norm(blk(MT.ATTN_NORM), d)
        w.matrix(blk(MT.ATTN_Q), (n_head * head_dim, d))
        w.matrix(blk(MT.ATTN_K), (n_kv * head_dim, d))
        w.matrix(blk(MT.ATTN_V), (n_kv * head_dim, d))
        w.norm(blk(MT.ATTN_Q_NORM), head_dim)
        w.norm(blk(MT.ATTN_K_NORM), head_dim)
        w.matrix(blk(MT.ATTN_OUT), (d, n_head * head_dim))
        w.norm(blk(MT.ATTN_POST_NORM), d)
        w.norm(blk(MT.FFN_NORM), d)
        w.matrix(blk(MT.FFN_GATE), (cfg["intermediate_size"], d))
        w.matrix(blk(MT.FFN_UP), (cfg["intermediate_size"], d))
        w.matrix(blk(MT.FFN_DOWN), (d, cfg["intermediate_size"]))
        w.norm(blk(MT.FFN_POST_NORM), d)


def hf_state_dict(f, cfg: dict) -> dict[str, torch.Tensor]:
    from .hf_state import reference_dequantize

    state: dict[str, torch.Tensor] = {}
    for name in f.tensors:
        w = reference_dequantize(f, name)
        if name.endswith("norm.weight"):
            w = w - 1.0  # undo the converter's + 1: HF's Gemma3RMSNorm adds it back
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = state["lm_head.weight"] = w
        elif name == "output_norm.weight":
            state["model.norm.weight"] = w
        else:
            _, i, base, kind = name.split(".")
            state[f"model.layers.{i}.{_LAYER_NAMES[base]}.{kind}"] = w
    return state


def hf_config(cfg: dict):
    import transformers

    full = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg["rope_scaling"]:
        full = {**full, **cfg["rope_scaling"]}  # transformers applies linear scaling to global layers only
    skip = {"rope_theta", "rope_local_base_freq", "rope_scaling"}
    return transformers.Gemma3TextConfig(
        **{k: v for k, v in cfg.items() if k not in skip},
        rope_parameters={
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]},
        },
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attn_implementation="eager",  # the oracle should not run the same sdpa kernel we do
    )


def hf_model_class():
    import transformers

    return transformers.Gemma3ForCausalLM
