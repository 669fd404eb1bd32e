"""DeepSeek routing against transformers' gate modules, and YaRN frequencies/scales against its rope code."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from backend.gguf_model import GGUFError, open_gguf
from backend.layers.rope import yarn_inv_freq
from backend.layers.routing import route_grouped
from backend.models import load_model
from backend.models.deepseek2 import ModelArgs
from backend.testmodels import model_config, write_model
from backend.testmodels.deepseek2 import V2, V3, hf_config

T, D = 64, 32


def _sorted(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides pick the same set per token in any order (HF uses topk(sorted=False))."""
    order = ids.argsort(dim=-1)
    return weights.gather(1, order), ids.gather(1, order)


def _check_gate(gate: torch.nn.Module, cfg: dict, bias: torch.Tensor | None) -> None:
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, ref_weights, ref_ids = gate(x)
    weights, ids = route_grouped(
        logits, top_k=cfg["num_experts_per_tok"], scoring_func=cfg["scoring_func"], topk_method=cfg["topk_method"],
        n_group=cfg["n_group"], topk_group=cfg["topk_group"], norm_topk_prob=cfg["norm_topk_prob"],
        routed_scaling_factor=cfg["routed_scaling_factor"], e_score_correction_bias=bias,
    )
    w, i = _sorted(weights, ids)
    rw, ri = _sorted(ref_weights, ref_ids)
    assert torch.equal(i, ri)
    assert torch.allclose(w, rw, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_group,topk_group,norm", [(8, 3, True), (4, 1, True), (4, 2, False), (1, 1, True)])
def test_sigmoid_grouped_routing_matches_deepseek_v3_gate(n_group, topk_group, norm):
    cfg = model_config("deepseek2", {**V3, "hidden_size": D, "n_routed_experts": 32, "num_experts_per_tok": 6,
                                     "n_group": n_group, "topk_group": topk_group, "norm_topk_prob": norm})
    gate = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(hf_config(cfg))
    g = torch.Generator().manual_seed(n_group * 10 + topk_group)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(32, D, generator=g) / D**0.5)
        # A bias large enough to reorder experts, so selecting by the unbiased score would fail.
        gate.e_score_correction_bias.copy_(torch.randn(32, generator=g) * 0.3)
    _check_gate(gate, cfg, gate.e_score_correction_bias)


@pytest.mark.parametrize("topk_method,n_group,topk_group", [("greedy", 1, 1), ("group_limited_greedy", 8, 3), ("group_limited_greedy", 4, 1)])
def test_softmax_routing_matches_deepseek_v2_gate(topk_method, n_group, topk_group):
    cfg = model_config("deepseek2", {**V2, "hidden_size": D, "n_routed_experts": 32, "num_experts_per_tok": 6,
                                     "topk_method": topk_method, "n_group": n_group, "topk_group": topk_group})
    gate = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(hf_config(cfg))
    with torch.no_grad():
        gate.weight.copy_(torch.randn(32, D, generator=torch.Generator().manual_seed(n_group)) / D**0.5)
    _check_gate(gate, cfg, None)


def test_softmax_with_renormalization_sums_to_the_scaling_factor():
    # transformers' V2 gate ignores norm_topk_prob; llama.cpp honours expert_weights_norm for any
    # gating function, so check the renormalized softmax weights directly in float64.
    logits = torch.randn(T, 16, generator=torch.Generator().manual_seed(2))
    weights, ids = route_grouped(logits, top_k=4, scoring_func="softmax", topk_method="greedy", n_group=1,
                                 topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.0)
    probs = torch.softmax(logits.double(), dim=-1)
    want = probs.gather(1, ids) / probs.gather(1, ids).sum(-1, keepdim=True) * 2.0
    assert torch.allclose(weights.double(), want, atol=1e-6)
    assert torch.equal(ids.sort(-1).values, probs.topk(4, dim=-1).indices.sort(-1).values)


@pytest.mark.parametrize("dim,theta,factor,orig", [(64, 10000.0, 40.0, 4096), (32, 10000.0, 8.0, 256), (64, 1e6, 4.0, 32768)])
def test_yarn_inv_freq_matches_transformers(dim, theta, factor, orig):
    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": orig,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    config = transformers.DeepseekV3Config(qk_rope_head_dim=dim, rope_parameters=rope)
    ref, _ = ROPE_INIT_FUNCTIONS["yarn"](config)
    assert torch.allclose(yarn_inv_freq(dim, theta, factor, orig), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("config", [V3, V2, {**V3, "rope_scaling": None}], ids=["v3", "v2-mscale-0.707", "no-yarn"])
def test_attention_scales_match_transformers(tmp_path, config):
    args = ModelArgs.from_gguf(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=config)))
    inv_freq, rope_scale, softmax_scale = args.attention_scales()
    hf = hf_config(model_config("deepseek2", config))
    cls = transformers.DeepseekV3ForCausalLM if isinstance(hf, transformers.DeepseekV3Config) else transformers.DeepseekV2ForCausalLM
    model = cls(hf)
    assert torch.allclose(inv_freq, model.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)
    assert rope_scale == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-6)
    assert softmax_scale == pytest.approx(model.model.layers[0].self_attn.scaling, rel=1e-6)


def test_unsupported_features_and_missing_kv_b_are_clear_errors(tmp_path):
    path = write_model("deepseek2", tmp_path / "m.gguf")
    f = open_gguf(path)
    f.metadata["deepseek2.attention.temperature_scale"] = 0.1
    with pytest.raises(GGUFError, match="temperature tuning"):
        ModelArgs.from_gguf(f)
    f = open_gguf(path)
    f.metadata["deepseek2.expert_gating_func"] = 3
    with pytest.raises(GGUFError, match="expert_gating_func 3 is not supported"):
        ModelArgs.from_gguf(f)
    f = open_gguf(path)
    f.metadata["deepseek2.rope.scaling.type"] = "longrope"
    with pytest.raises(GGUFError, match="rope scaling 'longrope' is not supported for deepseek2"):
        ModelArgs.from_gguf(f)
    f = open_gguf(path)
    for name in ("blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight"):
        del f.tensors[name]
    with pytest.raises(GGUFError, match="blk.0 has neither attn_k_b/attn_v_b nor attn_kv_b"):
        load_model(f)


def test_multi_token_prediction_layers_are_not_part_of_the_trunk(tmp_path):
    f = open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=V3))
    f.metadata["deepseek2.nextn_predict_layers"] = 1
    assert ModelArgs.from_gguf(f).num_hidden_layers == V3["num_hidden_layers"] - 1
