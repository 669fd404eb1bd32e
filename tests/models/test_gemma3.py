"""Gemma 3 text model against transformers' Gemma3ForCausalLM: sliding and global layers, rope variants."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K"])
def test_gemma3_matches_transformers(oracle, qtype):
    oracle("gemma3", qtype)


def test_gemma3_linear_rope_scaling_on_global_layers(oracle):
    oracle("gemma3", "F32", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}})


def test_gemma3_final_logit_softcapping_chunked_prefill(oracle):
    oracle("gemma3", "Q8_0", {"final_logit_softcapping": 3.0}, seed=2, prefill_chunks=(5, 11, 8))
