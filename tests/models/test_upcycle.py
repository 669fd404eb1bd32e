"""An MoE that speaks: SmolLM2 upcycled into 4 experts must write what the dense model writes
(llama.cpp's side of the check needs llama-cpp-python: bench/upcycle_llama_cpp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.gguf_model import open_gguf
from backend.layers.moe import SparseMoE
from backend.models import load_model
from backend.upcycle import UpcycleError, upcycle

from .test_golden_parity import STEPS, golden, greedy

CASES = golden("smollm2")["completions"]["raw"] + golden("smollm2")["completions"]["chat"]


@pytest.fixture(scope="module")
def moe_path(smollm2_gguf, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upcycle") / "smollm2-4x.gguf"
    upcycle(str(smollm2_gguf), str(path), experts=4)
    return path


def test_upcycled_model_writes_the_dense_models_text(smollm2_gguf, moe_path):
    dense = load_model(open_gguf(smollm2_gguf), activations="float")  # the experts run float activations too
    moe = load_model(open_gguf(moe_path), activations="float")
    assert all(isinstance(layer.ffn, SparseMoE) for layer in moe.layers)
    assert len(moe.layers[0].ffn.experts.gate) == 4
    for case in CASES:
        a, la = greedy(dense, case["prompt_tokens"], STEPS)
        b, lb = greedy(moe, case["prompt_tokens"], STEPS)
        assert a == b
        # Only the down projection's summation order changed: float32 noise, nothing more.
        assert max(float((x - y).abs().max()) for x, y in zip(la, lb)) < 1e-3


def test_refuses_what_it_cannot_make_exact(smollm2_gguf, moe_path, tmp_path):
    with pytest.raises(UpcycleError, match="power of two"):
        upcycle(str(smollm2_gguf), str(tmp_path / "x.gguf"), experts=3)
    with pytest.raises(UpcycleError, match="already a mixture"):
        upcycle(str(moe_path), str(tmp_path / "y.gguf"), experts=2)
