"""Matmul over quantized weights: against float64 with gguf-dequantized weights, across ISAs,
thread counts and batch shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from backend import kernels

from .conftest import AVAILABLE_ISAS, TYPES, random_tensor


def weight(name: str, rows: int, cols: int, seed: int = 0) -> kernels.QuantWeight:
    raw = random_tensor(name, rows, cols, np.random.default_rng(seed), small=True)
    return kernels.QuantWeight(raw.reshape(-1), GGMLQuantizationType[name], (rows, cols))


def cols_for(name: str) -> int:
    return 512 if GGML_QUANT_SIZES[GGMLQuantizationType[name]][0] > 1 else 200  # 200: a 16-lane tail


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("tokens", [1, 3, 9])  # one decode step, a few sequences, a prompt chunk
def test_close_to_float64(name, tokens, isa):
    w = weight(name, 37, cols_for(name))  # 37 rows: two full tiles and a ragged one
    x = torch.randn(tokens, w.shape[1], generator=torch.Generator().manual_seed(tokens))
    ours = kernels.matmul(w, x).double()
    ref = kernels.matmul_reference(w, x)
    # float32 accumulation of `cols` products: error ~ sqrt(cols) * eps * |w||x|.
    bound = (x.double().abs() @ torch.from_numpy(
        kernels.dequantize_reference(w.raw, w.ggml_type, w.shape)).double().abs().T)  # fmt: skip
    assert ((ours - ref).abs() <= 1e-5 * bound + 1e-30).all()


@pytest.mark.parametrize("name", ["Q4_K", "F32", "F16", "BF16"])
def test_each_token_is_independent_of_its_batch(name):
    """A sequence's output must not depend on who shares the step (batched == sequential). One
    token runs four rows side by side (37 rows: a ragged last group; float columns with a tail),
    a few tokens one row at a time, many the tiles: the same bits."""
    cols = 768 if name == "Q4_K" else 200
    w = weight(name, 37, cols)
    x = torch.randn(11, cols)
    together = kernels.matmul(w, x)
    few = kernels.matmul(w, x[:3])
    for t in range(11):
        assert torch.equal(kernels.matmul(w, x[t : t + 1])[0], together[t])
    assert torch.equal(few, together[:3])


@pytest.mark.skipif("avx2" not in AVAILABLE_ISAS or "avx512" not in AVAILABLE_ISAS, reason="needs both SIMD paths")
def test_simd_paths_agree_bit_for_bit():
    w = weight("Q6_K", 33, 512)
    x = torch.randn(6, 512)
    with kernels.use_isa("avx2"):
        a = kernels.matmul(w, x)
    with kernels.use_isa("avx512"):
        b = kernels.matmul(w, x)
    assert torch.equal(a, b)
    with kernels.use_isa("scalar"):  # no FMA on the scalar path: close (as test_close_to_float64), not identical
        scalar = kernels.matmul(w, x)
    bound = x.abs() @ torch.from_numpy(kernels.dequantize_reference(w.raw, w.ggml_type, w.shape)).abs().T
    assert ((scalar - b).abs() <= 2e-5 * bound).all()


def test_thread_count_does_not_change_results():
    w = weight("IQ2_XXS", 100, 512)
    x = torch.randn(5, 512)
    try:
        kernels.set_num_threads(1)
        one = kernels.matmul(w, x)
        kernels.set_num_threads(2)
        assert kernels.num_threads() == 2
        assert torch.equal(kernels.matmul(w, x), one)
    finally:
        kernels.set_num_threads(0)


def test_row_slices_are_views():
    w = weight("Q8_0", 12, 64)
    part = w.rows(4, 8)
    assert np.shares_memory(part.raw, w.raw)
    x = torch.randn(2, 64)
    assert torch.equal(kernels.matmul(part, x), kernels.matmul(w, x)[:, 4:8])


def test_bad_inputs_are_refused():
    w = weight("Q4_0", 4, 64)
    with pytest.raises(kernels.KernelError, match="float32"):
        kernels.matmul(w, torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(kernels.KernelError, match="CPU float32"):
        kernels.matmul(w, torch.randn(2, 32))
    with pytest.raises(kernels.KernelError, match="whole blocks"):
        kernels.QuantWeight(np.zeros(18, np.uint8), GGMLQuantizationType.Q4_0, (1, 30))
    with pytest.raises(kernels.KernelError, match="expected"):
        kernels.QuantWeight(np.zeros(17, np.uint8), GGMLQuantizationType.Q4_0, (1, 32))
