"""Qwen models (qwen2 dense, qwen2moe with shared expert, qwen3moe with q/k norms) against transformers."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("qtype", ["F32", "BF16", "Q8_0", "Q5_K"])
def test_qwen2_matches_transformers(oracle, qtype):
    oracle("qwen2", qtype)


def test_qwen2_tied_embeddings(oracle):
    oracle("qwen2", "Q8_0", {"tie_word_embeddings": True})


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_1", "Q3_K", "IQ3_XXS"])
def test_qwen2moe_matches_transformers(oracle, qtype):
    oracle("qwen2moe", qtype)


def test_qwen2moe_renormalized_top_k(oracle):
    oracle("qwen2moe", "Q8_0", {"norm_topk_prob": True, "num_experts": 8})


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q2_K", "Q4_K", "IQ1_M"])
def test_qwen3moe_matches_transformers(oracle, qtype):
    oracle("qwen3moe", qtype)


def test_qwen3moe_without_topk_renormalization(oracle):
    oracle("qwen3moe", "F32", {"norm_topk_prob": False, "num_experts_per_tok": 3})


def test_qwen3moe_chunked_prefill_other_seed(oracle):
    oracle("qwen3moe", "Q4_K", seed=3, prefill_chunks=(16, 1, 7))


def test_qwen2_linear_rope_scaling(oracle):
    oracle("qwen2", "Q8_0", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
