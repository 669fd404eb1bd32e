"""Tiny random deepseek2 GGUFs (V2-Lite-, V2- and V3-like) and their transformers oracle mapping."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from gguf import MODEL_TENSOR as MT
from gguf import ExpertGatingFuncType, GGUFWriter, RopeScalingType

from .common import TensorWriter, add_tensor, block_size, tn

# V2-Lite's shape in miniature: plain attn_q, softmax greedy routing, 1 dense layer, 2 shared
# experts. Dims are multiples of 256 where K-quant rows need it (qk_nope_head_dim = 64 is not:
# attn_k_b then falls back to Q8_0, as llama.cpp's quantizer does for rows it cannot block).
V2_LITE = {
    "vocab_size": 320,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 2,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 256,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "v_head_dim": 64,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "mla_layout": "split",  # writer option: "split" (attn_k_b/attn_v_b) or "legacy" (attn_kv_b)
}
# V2 (236B) in miniature: compressed q, group-limited greedy routing, YaRN with mscale 0.707.
V2 = {
    **V2_LITE,
    "q_lora_rank": 256,
    "topk_method": "group_limited_greedy",
    "n_group": 4,
    "topk_group": 2,
    "num_experts_per_tok": 3,
    "routed_scaling_factor": 16.0,
    "rope_scaling": {
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707,
    },
    "max_position_embeddings": 163840,
}
# V3/R1 in miniature: sigmoid scores + correction bias, grouped top-2-sum routing, 2 dense layers.
V3 = {
    **V2_LITE,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 2,
    "q_lora_rank": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 3,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "n_group": 4,
    "topk_group": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "rope_scaling": {
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
    },
    "max_position_embeddings": 163840,
}
WRITER_OPTIONS = {"mla_layout", "scoring_func"}  # scoring_func picks the HF class, not a config field


def _tensor(w: TensorWriter, name: str, shape: tuple[int, ...], values: np.ndarray | None = None) -> None:
    """Like TensorWriter.matrix, but rows that cannot hold the file type's blocks fall back to Q8_0."""
    if values is None:
        values = w.rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])
    qtype = w.qtype if shape[-1] % block_size(w.qtype) == 0 else "Q8_0"
    add_tensor(w.writer, name, values, qtype, w.rng)


def write(writer: GGUFWriter, cfg: dict, w: TensorWriter, arch: str) -> None:
    """Metadata and tensors as convert_hf_to_gguf's DeepseekV2Model writes them."""
    D, H, n_layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    Q, L = cfg["q_lora_rank"] or 0, cfg["kv_lora_rank"]
    N, R, Vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, I = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    split = cfg["mla_layout"] == "split"
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(D)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(H)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_leading_dense_block_count(cfg["first_k_dense_replace"])
    if Q:
        writer.add_q_lora_rank(Q)
    writer.add_kv_lora_rank(L)
    if split:  # MLA seen as MQA with one L + R key head (the absorbed form), per-head sizes in *_mla
        writer.add_head_count_kv(1)
        writer.add_key_length(L + R)
        writer.add_value_length(L)
        writer.add_key_length_mla(N + R)
        writer.add_value_length_mla(Vd)
    else:  # files converted before llama.cpp's MLA split
        writer.add_head_count_kv(H)
        writer.add_key_length(N + R)
        writer.add_value_length(Vd)
    writer.add_expert_feed_forward_length(I)
    writer.add_expert_count(E)
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    writer.add_expert_shared_count(cfg["n_shared_experts"])
    writer.add_expert_weights_scale(cfg["routed_scaling_factor"])
    if cfg["norm_topk_prob"]:
        writer.add_expert_weights_norm(True)
    sigmoid = cfg["scoring_func"] == "sigmoid"
    writer.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if sigmoid else ExpertGatingFuncType.SOFTMAX)
    writer.add_expert_group_count(cfg["n_group"])
    writer.add_expert_group_used_count(cfg["topk_group"])
    writer.add_rope_dimension_count(R)
    rs = cfg["rope_scaling"]
    if rs:
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rs["factor"])
        writer.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        if rs.get("mscale_all_dim") is not None:  # stored times 0.1, as the converter does
            writer.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])

    _tensor(w, tn(MT.TOKEN_EMBD), (cfg["vocab_size"], D), w.rng.standard_normal((cfg["vocab_size"], D), dtype=np.float32))
    w.norm(tn(MT.OUTPUT_NORM), D)
    if not cfg["tie_word_embeddings"]:
        _tensor(w, tn(MT.OUTPUT), (cfg["vocab_size"], D))
    for i in range(n_layers):
        blk = functools.partial(tn, bid=i)
        w.norm(blk(MT.ATTN_NORM), D)
        if Q:
            _tensor(w, blk(MT.ATTN_Q_A), (Q, D))
            w.norm(blk(MT.ATTN_Q_A_NORM), Q)
            _tensor(w, blk(MT.ATTN_Q_B), (H * (N + R), Q))
        else:
            _tensor(w, blk(MT.ATTN_Q), (H * (N + R), D))
        _tensor(w, blk(MT.ATTN_KV_A_MQA), (L + R, D))
        w.norm(blk(MT.ATTN_KV_A_NORM), L)
        kv_b = w.rng.standard_normal((H * (N + Vd), L), dtype=np.float32) / np.sqrt(L)  # HF kv_b_proj
        if split:  # convert_hf_to_gguf: per head, k_b = key rows transposed to [L, N], v_b = value rows
            per_head = kv_b.reshape(H, N + Vd, L)
            _tensor(w, blk(MT.ATTN_K_B), (H, L, N), per_head[:, :N].transpose(0, 2, 1))
            _tensor(w, blk(MT.ATTN_V_B), (H, Vd, L), per_head[:, N:])
        else:
            _tensor(w, blk(MT.ATTN_KV_B), kv_b.shape, kv_b)
        _tensor(w, blk(MT.ATTN_OUT), (D, H * Vd))
        w.norm(blk(MT.FFN_NORM), D)
        if i < cfg["first_k_dense_replace"]:
            ffn = cfg["intermediate_size"]
            _tensor(w, blk(MT.FFN_GATE), (ffn, D))
            _tensor(w, blk(MT.FFN_UP), (ffn, D))
            _tensor(w, blk(MT.FFN_DOWN), (D, ffn))
            continue
        w.f32(blk(MT.FFN_GATE_INP), (E, D), std=1.0 / math.sqrt(D))
        if sigmoid:  # V3's e_score_correction_bias, kept F32 like every 1-D tensor
            w.f32(blk(MT.FFN_EXP_PROBS_B, suffix="bias"), (E,), std=0.1)
        _tensor(w, blk(MT.FFN_GATE_EXP), (E, I, D))
        _tensor(w, blk(MT.FFN_UP_EXP), (E, I, D))
        _tensor(w, blk(MT.FFN_DOWN_EXP), (E, D, I))
        shared = I * cfg["n_shared_experts"]
        _tensor(w, blk(MT.FFN_GATE_SHEXP), (shared, D))
        _tensor(w, blk(MT.FFN_UP_SHEXP), (shared, D))
        _tensor(w, blk(MT.FFN_DOWN_SHEXP), (D, shared))


# HF module path of each per-layer GGUF tensor ("blk.{i}." and ".weight"/".bias" stripped).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}


def hf_state_dict(f, cfg: dict) -> dict[str, torch.Tensor]:
    """f's tensors dequantized by gguf-py under transformers' DeepseekV2/V3 names, with the
    k_b/v_b split undone back into kv_b_proj (deepseek2 files carry no rope permutation)."""
    from .hf_state import reference_dequantize

    globals_ = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    state: dict[str, torch.Tensor] = {}
    for name in f.tensors:
        w = reference_dequantize(f, name)
        if name in globals_:
            state[globals_[name]] = w
            continue
        _, i, base, kind = name.split(".")
        prefix = f"model.layers.{i}"
        if base == "attn_k_b":  # [H, L, N] -> HF's kv_b_proj [H * (N + Vd), L], keys first per head
            v_b = reference_dequantize(f, f"blk.{i}.attn_v_b.weight")  # [H, Vd, L]
            state[f"{prefix}.self_attn.kv_b_proj.weight"] = torch.cat([w.transpose(1, 2), v_b], dim=1).reshape(-1, w.shape[1])
        elif base == "attn_v_b":
            continue
        elif base == "exp_probs_b":
            state[f"{prefix}.mlp.gate.e_score_correction_bias"] = w
        elif base == "ffn_gate_exps":  # transformers fuses gate and up: [E, 2I, D], gate first
            up = reference_dequantize(f, f"blk.{i}.ffn_up_exps.weight")
            state[f"{prefix}.mlp.experts.gate_up_proj"] = torch.cat([w, up], dim=1)
        elif base == "ffn_up_exps":
            continue
        elif base == "ffn_down_exps":
            state[f"{prefix}.mlp.experts.down_proj"] = w
        else:
            state[f"{prefix}.{_LAYER_NAMES[base]}.{kind}"] = w
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def hf_config(cfg: dict):
    """DeepseekV3Config for sigmoid routing, DeepseekV2Config for softmax (each HF class has one)."""
    import transformers

    kwargs = {k: v for k, v in cfg.items() if k not in WRITER_OPTIONS and k not in ("rope_theta", "rope_scaling", "topk_method")}
    rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg["rope_scaling"]:
        rope = {**cfg["rope_scaling"], "rope_theta": cfg["rope_theta"]}
    kwargs.update(num_key_value_heads=cfg["num_attention_heads"], rope_parameters=rope, attn_implementation="eager", experts_implementation="eager")
    if cfg["scoring_func"] == "sigmoid":
        return transformers.DeepseekV3Config(**kwargs, rope_interleave=True)
    return transformers.DeepseekV2Config(**kwargs, topk_method=cfg["topk_method"])


def hf_model_class():
    """A constructor taking the config from hf_config: V3's or V2's causal LM to match it."""
    import transformers

    def build(config):
        if isinstance(config, transformers.DeepseekV3Config):
            return transformers.DeepseekV3ForCausalLM(config)
        return transformers.DeepseekV2ForCausalLM(config)

    return build


GGUF_ARCH = {"deepseek2": "deepseek2"}
DEFAULTS = {"deepseek2": V2_LITE}
TOKENIZER_PRE = {"deepseek2": "deepseek-v3"}
