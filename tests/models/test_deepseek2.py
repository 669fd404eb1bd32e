"""deepseek2 (V2-Lite-, V2- and V3-like) logits against transformers, both MLA file layouts, many quant types."""

from __future__ import annotations

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.engine.kv_cache import ForwardBatch, SequenceCache
from backend.layers.mla import MLAttention
from backend.models import load_model
from backend.testmodels import write_model
from backend.testmodels.deepseek2 import V2, V3

from .conftest import assert_close

SPLIT, LEGACY = {"mla_layout": "split"}, {"mla_layout": "legacy"}


@pytest.mark.parametrize(
    "layout,qtype", [(SPLIT, "F32"), (LEGACY, "Q8_0"), (SPLIT, "Q4_K"), (LEGACY, "Q6_K"), (SPLIT, "IQ4_XS")]
)
def test_v2_lite_matches_transformers(oracle, layout, qtype):
    oracle("deepseek2", qtype, layout)


@pytest.mark.parametrize("layout,qtype", [(SPLIT, "F32"), (LEGACY, "F32"), (SPLIT, "Q8_0"), (SPLIT, "Q5_K"), (LEGACY, "Q3_K")])
def test_v3_matches_transformers(oracle, layout, qtype):
    oracle("deepseek2", qtype, {**V3, **layout})


@pytest.mark.parametrize("layout,qtype", [(SPLIT, "Q8_0"), (LEGACY, "F32"), (SPLIT, "Q4_K")])
def test_v2_group_limited_greedy_matches_transformers(oracle, layout, qtype):
    oracle("deepseek2", qtype, {**V2, **layout})


@pytest.mark.parametrize("path", ["absorbed", "expanded"])
@pytest.mark.parametrize("config", [V3, {**V2, **LEGACY}], ids=["v3", "v2-legacy"])
def test_each_attention_path_alone_matches_transformers(oracle, monkeypatch, path, config):
    # The automatic choice runs prefill expanded and decode absorbed; pin each for the whole run,
    # chunked prefill included, so both are checked on every kind of step.
    monkeypatch.setattr(MLAttention, "force_path", path)
    oracle("deepseek2", "F32", config, prefill_chunks=(9, 1, 14))


def test_v3_chunked_prefill_other_seed(oracle):
    oracle("deepseek2", "Q8_0", V3, seed=3, prefill_chunks=(16, 1, 7))


def test_yarn_without_mscale_all_dim_scales_the_rotation(oracle):
    # No mscale_all_dim (no yarn_log_multiplier in the GGUF): YaRN's 1 + 0.1 ln(factor) multiplies
    # cos/sin instead of the softmax scale.
    rope = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256}
    oracle("deepseek2", "F32", {**V3, "rope_scaling": rope})


def test_tied_embeddings_and_unnormalized_sigmoid_weights(oracle):
    oracle("deepseek2", "Q8_0", {**V3, "tie_word_embeddings": True, "norm_topk_prob": False, "n_group": 1, "topk_group": 1})


def test_args_from_gguf_use_hf_names(tmp_path):
    f = open_gguf(write_model("deepseek2", tmp_path / "v3.gguf", config=V3))
    args = load_model(f).args
    for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                "n_shared_experts", "first_k_dense_replace", "n_group", "topk_group", "routed_scaling_factor",
                "norm_topk_prob", "scoring_func", "topk_method"):
        assert getattr(args, key) == V3[key], key
    assert args.rope_scaling.factor == V3["rope_scaling"]["factor"]
    assert args.rope_scaling.mscale_all_dim == V3["rope_scaling"]["mscale_all_dim"]
    legacy = load_model(open_gguf(write_model("deepseek2", tmp_path / "lite.gguf", config=LEGACY))).args
    assert (legacy.q_lora_rank, legacy.qk_nope_head_dim, legacy.v_head_dim, legacy.topk_method) == (0, 64, 64, "greedy")


@pytest.mark.parametrize("config", [V3, {**V2, **LEGACY}], ids=["v3", "v2-legacy"])
def test_cache_holds_only_the_compressed_latent(tmp_path, config):
    model = load_model(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=config)))
    L, R = config["kv_lora_rank"], config["qk_rope_head_dim"]
    cache = model.allocate_cache(40)
    assert len(cache.layers) == config["num_hidden_layers"]
    for latent, k_pe in cache.layers:
        assert latent.shape == (40, L) and k_pe.shape == (40, R)
    assert cache.nbytes() == config["num_hidden_layers"] * 40 * (L + R) * 4
    # What is written is the normed latent and the roped k_pe of each token: recompute layer 0's.
    tokens = torch.arange(7) * 29 % config["vocab_size"]
    batch = ForwardBatch.single(7, cache)
    model(tokens, batch)
    attn = model.layers[0].attn
    with torch.inference_mode():
        x = model.layers[0].attn_norm(model.embed(tokens))
        kv = attn.kv_a(x)
    assert torch.allclose(cache.layers[0][0][:7], attn.kv_a_norm(kv[:, :L]), atol=1e-5)
    assert not cache.layers[0][0][7:].any() and not cache.layers[0][1][7:].any()


def test_cache_of_separate_tensors_gives_the_same_logits(tmp_path):
    # Another allocator may hand out the two halves as separate tensors: the absorbed path then
    # concatenates instead of reading the joint buffer, with the same result.
    model = load_model(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=V3)))
    L, R = V3["kv_lora_rank"], V3["qk_rope_head_dim"]
    joint = model.allocate_cache(16)
    separate = SequenceCache([(torch.zeros(16, L), torch.zeros(16, R)) for _ in model.layers], 16)
    steps = [torch.arange(6) * 7, torch.tensor([11]), torch.tensor([42, 5])]
    for tokens in steps:
        a_batch, b_batch = ForwardBatch.single(len(tokens), joint), ForwardBatch.single(len(tokens), separate)
        a, b = model(tokens, a_batch), model(tokens, b_batch)
        a_batch.advance()
        b_batch.advance()
        assert_close(a, b, "separate cache tensors")


@pytest.mark.parametrize("config,qtype", [(V3, "Q8_0"), ({**V2, **LEGACY}, "F32"), (SPLIT, "Q4_K")], ids=["v3", "v2-legacy", "v2-lite"])
def test_two_sequences_in_one_batch_match_separate_runs(tmp_path, config, qtype):
    model = load_model(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=config, qtype=qtype)))
    g = torch.Generator().manual_seed(1)
    # Per step: different prefill lengths, then one sequence decodes while the other prefills a chunk.
    a = [torch.randint(0, 320, (n,), generator=g) for n in (7, 1, 5, 1)]
    b = [torch.randint(0, 320, (n,), generator=g) for n in (13, 4, 1, 1)]
    alone = {}
    for name, steps in (("a", a), ("b", b)):
        cache, alone[name] = model.allocate_cache(32), []
        for tokens in steps:
            batch = ForwardBatch.single(len(tokens), cache)
            alone[name].append(model(tokens, batch))
            batch.advance()
    cache_a, cache_b = model.allocate_cache(32), model.allocate_cache(32)
    for step, (ta, tb) in enumerate(zip(a, b)):
        batch = ForwardBatch((len(ta), len(tb)), (cache_a, cache_b))
        logits = model(torch.cat([ta, tb]), batch)
        batch.advance()
        (sa, ea), (sb, eb) = batch.spans()
        assert_close(logits[sa:ea], alone["a"][step], f"step {step} sequence a")
        assert_close(logits[sb:eb], alone["b"][step], f"step {step} sequence b")
    assert (cache_a.length, cache_b.length) == (14, 19)


def test_logits_indices_and_hidden_states(tmp_path):
    model = load_model(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=V3, qtype="Q8_0")))
    tokens = torch.arange(11) * 13 % 320
    full = model(tokens, ForwardBatch.single(11, model.allocate_cache(16)))
    rows = torch.tensor([3, 10])
    some = model(tokens, ForwardBatch.single(11, model.allocate_cache(16)), logits_indices=rows)
    assert some.shape == (2, 320)
    assert_close(some, full[rows], "logits_indices rows")
    hidden = model.hidden_states(tokens, ForwardBatch.single(11, model.allocate_cache(16)))
    assert hidden.shape == (11, V3["hidden_size"])
    assert_close(model.output(hidden), full, "hidden_states through the LM head")


def test_automatic_path_expands_prefill_and_absorbs_decode(tmp_path, monkeypatch):
    model = load_model(open_gguf(write_model("deepseek2", tmp_path / "m.gguf", config=V3)))
    calls = []
    for path, method in (("absorbed", "_attend_latent"), ("expanded", "_expanded")):
        real = getattr(MLAttention, method)
        monkeypatch.setattr(MLAttention, method, lambda self, *a, _p=path, _f=real: calls.append(_p) or _f(self, *a))
    cache = model.allocate_cache(32)
    for n in (24, 1):
        batch = ForwardBatch.single(n, cache)
        model(torch.arange(n), batch)
        batch.advance()
        assert set(calls) == {"expanded" if n > 1 else "absorbed"}, n
        calls.clear()
