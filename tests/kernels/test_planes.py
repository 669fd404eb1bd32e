"""Two activation planes ("q8x2"): the 8-bit quants plus the 8-bit residual of their rounding.
The quants equal numpy's on every ISA, products equal their references (bit for bit for the
super-block types), the bits do not depend on ISA, threads or batch, and the result sits about
two orders of magnitude closer to the exact product than one plane where outliers share blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from backend import kernels
from backend.superblock_reference import superblock_matmul_q8_reference

from .conftest import AVAILABLE_ISAS, FP16_FIELDS
from .test_matmul_q8 import cols_for, weight

TWO = kernels.PLANES["q8x2"]


def with_outliers(tokens: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Activations with a massive value in every 64th column, as ffn_down's inputs have them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) * 0.1
    x[:, ::64] = 300 * torch.sign(torch.randn(tokens, cols // 64 + (cols % 64 > 0), generator=g))
    return x


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q4_K"])  # the Q8_0, Q8_1 and Q8_K formats
def test_quants_of_both_planes_equal_numpy(name, isa):
    x = with_outliers(6, 512) * torch.logspace(-3, 3, 6)[:, None]
    x[1, :256] = 0  # an all-zero block, and so a zero residual
    x[2, :64] = torch.arange(64) / 2 - 16  # exact halves: a residual of zero where they round exactly
    qtype = GGMLQuantizationType[name]
    got, ref = kernels.quantize_activations(x, qtype, TWO), kernels.quantize_activations_reference(x, qtype, TWO)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    q = got[0]
    assert q.shape == (12, 512) and (q[1::2] != 0).any()  # token t's residual plane in row 2 t + 1
    np.testing.assert_array_equal(q[0::2], kernels.quantize_activations(x, qtype)[0])  # plane 0 is q8


@pytest.mark.parametrize("name", list(FP16_FIELDS))
@pytest.mark.parametrize("tokens", [1, 3, 11])  # GEMV, a few columns, more than one token tile
def test_close_to_float64_over_the_same_quants(name, tokens, isa):
    w = weight(name, 37, cols_for(name))
    x = with_outliers(tokens, w.shape[1], seed=tokens)
    ours = kernels.matmul_q8(w, x, TWO).double()
    ref = kernels.matmul_q8_reference(w, x, TWO)
    wd = np.abs(kernels.dequantize_reference(w.raw, w.ggml_type, w.shape).astype(np.float64))
    bound = torch.from_numpy(x.abs().double().numpy() @ wd.T)  # float32 rounding of |w| |x| sums
    assert ((ours - ref).abs() <= 4e-6 * bound + 1e-30).all()


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "IQ4_XS"])
@pytest.mark.parametrize("tokens", [1, 3, 8, 40])  # the stream and the GEMM
def test_super_blocks_equal_their_integer_arithmetic(name, tokens, isa):
    w = weight(name, 21, 4352, seed=tokens)
    x = with_outliers(tokens, 4352, seed=tokens)
    assert torch.equal(kernels.matmul_q8(w, x, TWO), superblock_matmul_q8_reference(w, x, TWO))


@pytest.mark.parametrize("name", list(FP16_FIELDS))
def test_every_isa_thread_count_and_batch_gives_the_same_bits(name):
    w = weight(name, 70, cols_for(name), seed=1)
    x = with_outliers(11, w.shape[1], seed=2)
    results = []
    for level in AVAILABLE_ISAS:
        with kernels.use_isa(level):
            results.append(kernels.matmul_q8(w, x, TWO))
    assert all(torch.equal(results[0], r) for r in results[1:])
    try:
        kernels.set_num_threads(1)
        assert torch.equal(kernels.matmul_q8(w, x, TWO), results[0])
    finally:
        kernels.set_num_threads(0)
    for t in (0, 10):
        assert torch.equal(kernels.matmul_q8(w, x[t : t + 1], TWO)[0], results[0][t])


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ2_XXS"])
def test_two_planes_keep_what_outliers_take_from_one(name):
    """A block holding a massive value rounds the rest of its values to zero on one plane; the
    residual plane brings them back: two planes land >= 50x closer to the exact product."""
    w = weight(name, 64, 1024, seed=3)
    x = with_outliers(4, 1024, seed=4)
    exact = kernels.matmul_reference(w, x)
    err = [(kernels.matmul_q8(w, x, p).double() - exact).abs().max().item() for p in (1, TWO)]
    print(f"{name}: one plane {err[0] / exact.abs().max():.1e}, two {err[1] / exact.abs().max():.1e} x max|y|")
    assert err[1] * 50 <= err[0]


def test_many_weights_and_heads_equal_separate_calls():
    ws = [weight("Q4_K", 40, 512, seed=4), weight("Q8_0", 24, 512, seed=5), weight("Q4_1", 8, 512, seed=6)]
    x = with_outliers(5, 512)
    for w, y in zip(ws, kernels.matmul_q8_many(ws, x, TWO)):
        assert torch.equal(y, kernels.matmul_q8(w, x, TWO))
    H, n = 3, 20
    w = weight("Q5_0", H * n, 512, seed=7)
    xh = torch.stack([with_outliers(5, 512, seed=h) for h in range(H)], dim=1)
    y = kernels.matmul_q8_heads(w, xh, TWO)
    for h in range(H):
        assert torch.equal(y[:, h], kernels.matmul_q8(w.rows(h * n, (h + 1) * n), xh[:, h].contiguous(), TWO))


def test_plane_counts_other_than_one_or_two_are_refused():
    w = weight("Q4_0", 8, 64)
    for planes in (0, 3):
        with pytest.raises(kernels.KernelError, match="planes"):
            kernels.matmul_q8(w, torch.randn(1, 64), planes)
