"""Matmul with 8-bit activations (llama.cpp's arithmetic): activation quants equal numpy's,
results within float rounding of float64 over the same quants, the same bits on every ISA,
thread count and batch composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from backend import kernels
from backend.superblock_reference import superblock_matmul_q8_reference

from .conftest import AVAILABLE_ISAS, FP16_FIELDS, random_tensor

QUANT_TYPES = list(FP16_FIELDS)


def weight(name: str, rows: int, cols: int, seed: int = 0) -> kernels.QuantWeight:
    raw = random_tensor(name, rows, cols, np.random.default_rng(seed), small=True)
    return kernels.QuantWeight(raw.reshape(-1), GGMLQuantizationType[name], (rows, cols))


def cols_for(name: str) -> int:  # 32-block types: 288 leaves a part-filled 256-chunk
    return 288 if kernels.activation_block(GGMLQuantizationType[name]) == 32 else 512


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q4_K"])  # the Q8_0, Q8_1 and Q8_K activation formats
def test_activation_quants_equal_numpy(name, isa):  # each ISA's quantizer
    x = torch.randn(7, 512) * torch.logspace(-3, 3, 7)[:, None]
    x[1, :256] = 0  # an all-zero block
    x[2, 7] = -50.0  # a negative extreme (Q8_K's scale sign)
    x[3, :64] = torch.arange(64) / 2 - 16  # exact halves: ties round to even
    x[4] *= 1e-6  # fp16 scales far below 2^-14: half subnormals (Q8_0 / Q8_1)
    x[5] *= 1e4  # fp16 block sums past 65504 round to inf (Q8_1), as llama.cpp's
    q, d, s = kernels.quantize_activations(x, GGMLQuantizationType[name])
    q_ref, d_ref, s_ref = kernels.quantize_activations_reference(x, GGMLQuantizationType[name])
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(s, s_ref)
    if name != "Q4_K":  # scales are stored as fp16, so some fall between fp32 and fp16 values
        assert (d != (x.abs().reshape(7, -1, 32).amax(-1) / 127).numpy()).any()
    if name == "Q4_1":
        assert np.isinf(s).any()


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("tokens", [1, 3, 11])  # GEMV, a few columns, more than one token tile
def test_close_to_float64_over_the_same_quants(name, tokens, isa):
    w = weight(name, 37, cols_for(name))
    x = torch.randn(tokens, w.shape[1], generator=torch.Generator().manual_seed(tokens))
    ours = kernels.matmul_q8(w, x).double()
    ref = kernels.matmul_q8_reference(w, x)
    # Integer sums are exact; what remains is float32 rounding of scales and 16-lane sums.
    q, d, _ = kernels.quantize_activations_reference(x, w.ggml_type)
    block = kernels.activation_block(w.ggml_type)
    xq = np.abs(q.astype(np.float64).reshape(tokens, -1, block) * d[..., None]).reshape(tokens, -1)
    wd = np.abs(kernels.dequantize_reference(w.raw, w.ggml_type, w.shape).astype(np.float64))
    bound = torch.from_numpy(xq @ wd.T)
    assert ((ours - ref).abs() <= 2e-6 * bound + 1e-30).all()


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "IQ4_XS"])  # mins; per-16 scales and an offset; a codebook
@pytest.mark.parametrize(("rows", "cols"), [(37, 512), (21, 4352), (40, 768)])  # 2, 17 and 3 chunks
@pytest.mark.parametrize("tokens", [1, 3, 8, 11, 40])  # the stream and the GEMM (one pass, several)
def test_super_blocks_equal_their_integer_arithmetic(name, rows, cols, tokens, isa):
    """K and IQ types: exact integer sums per super-block, then one float term per chunk added
    in order (backend/superblock_reference.py), bit for bit on every ISA and path."""
    w = weight(name, rows, cols, seed=rows + tokens)
    x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(cols + tokens))
    assert torch.equal(kernels.matmul_q8(w, x), superblock_matmul_q8_reference(w, x))


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("tokens", [5, 11])  # the few-token (register) path and the tile path
def test_every_isa_gives_the_same_bits(name, tokens):
    w = weight(name, 21, cols_for(name), seed=1)
    x = torch.randn(tokens, w.shape[1])
    results = []
    for level in AVAILABLE_ISAS:
        with kernels.use_isa(level):
            results.append(kernels.matmul_q8(w, x))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS"])
@pytest.mark.parametrize("tokens", [1, 3, 8, 11])  # the stream and the GEMM
def test_gathered_codebook_rows_give_the_same_bits(name, tokens):
    """The codebook types' rows by vector gathers (Intel's default from Sapphire Rapids on) or by
    scalar loads (which the other tests hold to the references): the same bytes, so the same
    bits, at every ISA level that has both."""
    w = weight(name, 37, 4352, seed=tokens)  # 17 chunks: the last pair has no odd chunk
    x = torch.randn(tokens, w.shape[1], generator=torch.Generator().manual_seed(tokens))
    with kernels.use_isa("scalar"):
        portable = kernels.matmul_q8(w, x)
    for level in [lv for lv in AVAILABLE_ISAS if lv in ("avx512", "amx")]:
        with kernels.use_isa(level):
            for on in (False, True):
                with kernels.use_gathers(on):
                    assert kernels.gathers() is on
                    assert torch.equal(kernels.matmul_q8(w, x), portable), (level, on)


# Loaders of each family (and AVX2's unpackers); Q4_K, Q5_K, IQ1_S and IQ2_XXS take their chunks
# in pairs, so 17 chunks also leave a last pair with a missing odd chunk.
@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "IQ1_S", "IQ2_XXS", "Q4_0", "Q2_K", "IQ1_M"])
def test_rows_longer_than_one_chunk_block(name):
    """The GEMM walks the chunks of a row in blocks (16 chunks of 256, or 8 pairs): 17 chunks, 12 tokens."""
    w = weight(name, 7, 4352, seed=10)
    x = torch.randn(12, 4352)
    results = []
    for level in AVAILABLE_ISAS:
        with kernels.use_isa(level):
            results.append(kernels.matmul_q8(w, x))
    assert all(torch.equal(results[0], r) for r in results[1:])
    ref = kernels.matmul_q8_reference(w, x)
    assert (results[0].double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    for t in (0, 5, 11):  # one token takes the stream path, twelve the GEMM: the same bits
        assert torch.equal(kernels.matmul_q8(w, x[t : t + 1])[0], results[0][t])
    assert torch.equal(kernels.matmul_q8(w, x[:6]), results[0][:6])  # 6 x 17 chunks: past the stream's share of L1


@pytest.mark.parametrize("name", ["Q4_K", "IQ1_S", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("rows", [70, 300])  # 300: tasks of more rows than one tile holds
def test_threads_and_batch_do_not_change_bits(name, rows):
    w = weight(name, rows, 512, seed=2)
    x = torch.randn(13, 512)
    try:
        kernels.set_num_threads(1)
        one = kernels.matmul_q8(w, x)
        kernels.set_num_threads(2)
        assert torch.equal(kernels.matmul_q8(w, x), one)
        for t in (0, 8, 12):
            assert torch.equal(kernels.matmul_q8(w, x[t : t + 1])[0], one[t])
    finally:
        kernels.set_num_threads(0)


def test_float_weights_take_the_float_path():
    w = weight("F16", 9, 64)
    x = torch.randn(2, 64)
    assert torch.equal(kernels.matmul_q8(w, x), kernels.matmul(w, x))
    with pytest.raises(kernels.KernelError, match="float activations"):
        kernels.quantize_activations(x, GGMLQuantizationType.F16)


def test_close_to_the_float_product():
    """8-bit activations cost about 1% of a dot product's scale, as in llama.cpp."""
    w = weight("Q6_K", 64, 1024)
    x = torch.randn(4, 1024)
    ours, exact = kernels.matmul_q8(w, x).double(), kernels.matmul_reference(w, x)
    assert (ours - exact).abs().max() <= 2e-2 * exact.abs().max()


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q5_0"])
@pytest.mark.parametrize("tokens", [1, 11])
def test_heads_are_independent_matmuls(name, tokens):
    """matmul_q8_heads = one matmul_q8 per head on its slice of rows, bit for bit."""
    H, n = 3, 20
    w = weight(name, H * n, cols_for(name), seed=3)
    x = torch.randn(tokens, H, w.shape[1])
    y = kernels.matmul_q8_heads(w, x)
    for h in range(H):
        assert torch.equal(y[:, h], kernels.matmul_q8(w.rows(h * n, (h + 1) * n), x[:, h].contiguous()))
    with pytest.raises(kernels.KernelError, match="H dividing"):
        kernels.matmul_q8_heads(w, torch.randn(tokens, 7, w.shape[1]))


def test_many_weights_over_one_input_equal_separate_calls():
    """One quantization of x shared by weights of different types (Q8_K and Q8_0 formats)."""
    ws = [weight("Q4_K", 40, 512, seed=4), weight("Q8_0", 24, 512, seed=5), weight("Q6_K", 8, 512, seed=6)]
    for tokens in (1, 11):
        x = torch.randn(tokens, 512)
        together = kernels.matmul_q8_many(ws, x)
        for w, y in zip(ws, together):
            assert torch.equal(y, kernels.matmul_q8(w, x))
    with pytest.raises(kernels.KernelError, match="quantized"):
        kernels.matmul_q8_many([weight("F16", 8, 512)], torch.randn(1, 512))


def test_a_result_does_not_depend_on_the_calls_before_it():
    """The runtime reuses its activation buffers from call to call: a bigger call (more tokens,
    wider rows, another activation format) in between leaves nothing behind."""
    w = weight("Q4_K", 24, 512, seed=7)
    x = torch.randn(3, 512)
    first = kernels.matmul_q8(w, x)
    kernels.matmul_q8(weight("Q4_K", 16, 2048, seed=8), torch.randn(40, 2048))
    kernels.matmul_q8(weight("Q8_0", 16, 288, seed=9), torch.randn(5, 288))
    assert torch.equal(kernels.matmul_q8(w, x), first)
