"""The transformers oracle for a GGUF: dequantized weights under HF names, HF config and model.

A family module whose HF layout differs (deepseek2) may define hf_state_dict(f, cfg),
hf_config(cfg) and hf_model_class(); they take precedence over the tables here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants

from ..gguf_model import GGUFFile, open_gguf
from . import family, model_config
from .common import HF_DECODER_LAYER_NAMES

# HF name of each per-layer GGUF tensor, for the families transformers implements with the
# same module layout: the decoder's own names plus the MoE ones.
_LAYER_NAMES = {
    **HF_DECODER_LAYER_NAMES,
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
WRITER_OPTIONS = {"legacy_split_experts"}  # config keys that shape the file, not the HF model
_HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}


def reference_dequantize(f: GGUFFile, name: str) -> torch.Tensor:
    """gguf-py's own dequantizer, independent of backend/: the oracle must not share our code."""
    info = f.tensor(name)
    values = quants.dequantize(np.asarray(info.data), GGMLQuantizationType(info.ggml_type))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(info.shape))


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute (rows regrouped for NORM rope)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state_dict(arch: str, f: GGUFFile, cfg: dict) -> dict[str, torch.Tensor]:
    """All of f's tensors dequantized and renamed to the transformers model's state dict."""
    fam = family(arch)
    if hasattr(fam, "hf_state_dict"):  # families with their own layout (deepseek2) map themselves
        return fam.hf_state_dict(f, cfg)
    state: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], torch.Tensor | dict[int, torch.Tensor]] = {}
    for name in f.tensors:
        if name == "rope_freqs.weight":
            continue  # llama3 scaling lives in HF's rope_scaling config, not in weights
        w = reference_dequantize(f, name)
        if name in _GLOBAL_NAMES:
            state[_GLOBAL_NAMES[name]] = w
            continue
        parts = name.split(".")
        if len(parts) == 5:  # blk.{i}.ffn_{kind}.{e}.weight: one expert of an early Mixtral file
            experts.setdefault((int(parts[1]), f"{parts[2]}_exps"), {})[int(parts[3])] = w
            continue
        _, i, base, kind = parts
        if base.endswith("_exps"):
            experts[int(i), base] = w
            continue
        if arch in ("llama", "mixtral") and base in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads"] if base == "attn_q" else cfg["num_key_value_heads"]
            w = unpermute_qk(w, heads)
        if base == "ffn_gate_inp_shexp":
            w = w.reshape(1, -1)
        state[f"model.layers.{i}.{_LAYER_NAMES[base]}.{kind}"] = w
    for key, w in experts.items():
        if isinstance(w, dict):
            experts[key] = torch.stack([w[e] for e in sorted(w)])
    for (i, base), w in experts.items():
        if base == "ffn_gate_exps":  # transformers fuses gate and up: [E, 2I, D], gate first
            state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([w, experts[i, "ffn_up_exps"]], dim=1)
        elif base == "ffn_down_exps":
            state[f"model.layers.{i}.mlp.experts.down_proj"] = w
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def hf_config(arch: str, cfg: dict):
    """The transformers config for our tiny-model config (HF names already)."""
    import transformers

    fam = family(arch)
    if hasattr(fam, "hf_config"):
        return fam.hf_config(cfg)
    config_cls = getattr(transformers, _HF_CLASSES[arch][0])
    kwargs = {k: v for k, v in cfg.items() if v is not None and k not in WRITER_OPTIONS}
    if arch in ("qwen2moe", "qwen3moe"):
        kwargs.update(decoder_sparse_step=1, mlp_only_layers=[])  # every layer is MoE in GGUF
    # Eager attention: the oracle should not run the same sdpa kernel we do.
    return config_cls(**kwargs, attn_implementation="eager")


def hf_model(arch: str, path: str | Path, config: dict | None = None) -> torch.nn.Module:
    """transformers' model for a GGUF written by write_model(arch, path, config=config), in fp32."""
    import transformers

    cfg = model_config(arch, config)
    f = open_gguf(path)
    model_cls = getattr(transformers, _HF_CLASSES[arch][1]) if arch in _HF_CLASSES else family(arch).hf_model_class()
    model = model_cls(hf_config(arch, cfg)).float().eval()
    state = hf_state_dict(arch, f, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied models have lm_head aliasing the embeddings, which load_state_dict may report.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"{arch}: state dict mismatch, missing {missing}, unexpected {unexpected}")
    return model
