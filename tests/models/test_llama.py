"""Llama-family models (llama, tied embeddings, llama3 rope scaling, mixtral) against transformers."""

from __future__ import annotations

import pytest

QTYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "IQ2_XXS"]


@pytest.mark.parametrize("qtype", QTYPES)
def test_llama_matches_transformers(oracle, qtype):
    oracle("llama", qtype)


def test_llama_tied_embeddings_and_gqa_variants(oracle):
    # SmolLM-style: no output.weight, more kv sharing (4 query heads per kv head).
    config = {"tie_word_embeddings": True, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32}
    oracle("llama", "Q8_0", config)


def test_llama3_rope_scaling_via_rope_freqs(oracle):
    # A small original context so all three llama3 frequency bands (kept, scaled, blended) occur.
    rope_scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    oracle("llama", "F32", {"rope_scaling": rope_scaling, "rope_theta": 500000.0})


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K", "Q5_0", "IQ4_XS"])
def test_mixtral_matches_transformers(oracle, qtype):
    oracle("mixtral", qtype)


def test_mixtral_top1_of_8(oracle):
    oracle("mixtral", "Q8_0", {"num_local_experts": 8, "num_experts_per_tok": 1})


def test_mixtral_with_per_expert_tensors_of_early_files(oracle):
    oracle("mixtral", "Q4_0", {"legacy_split_experts": True})


def test_llama_chunked_prefill(oracle):
    # Later chunks attend to the cached positions before them (the bottom-right causal mask).
    oracle("llama", "Q8_0", prefill_chunks=(5, 11, 8))


def test_llama_linear_rope_scaling(oracle):
    oracle("llama", "F32", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}})
