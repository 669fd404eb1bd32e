"""The decode attention kernel (kernels.attend) against float64 softmax attention, across ISAs,
threads and head groupings, and in the attention layer against torch's sdpa."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend import kernels
from backend.engine.kv_cache import ForwardBatch, SequenceCache
from backend.layers.attention import causal_attention

from .conftest import AVAILABLE_ISAS

# (query heads, kv heads, head dim, value dim, positions): GQA groups of 3 and 4, MHA, MQA, a
# head dim that is not a multiple of 16, a value dim unlike the key's, one position, and a
# context long enough for the thread pool.
SHAPES = [(9, 3, 64, 64, 100), (8, 8, 128, 128, 1), (32, 8, 80, 80, 701), (4, 1, 72, 40, 33), (16, 2, 128, 96, 3000)]


def inputs(H, K, Dh, Dv, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, Dh, generator=g), torch.randn(n, K, Dh, generator=g), torch.randn(n, K, Dv, generator=g)


@pytest.mark.parametrize("shape", SHAPES)
def test_close_to_float64(shape, isa):
    q, k, v = inputs(*shape)
    scale = shape[2] ** -0.5
    ours, ref = kernels.attend(q, k, v, scale), kernels.attend_reference(q, k, v, scale)
    assert ours.shape == (shape[0], shape[3])
    assert (ours.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_weights_below_2_to_the_minus_64_are_zero(isa):
    """A peaked softmax: the positions after the first 40 score so far below the best that their
    weights fall under 2^-64, which the kernel zeroes (their products with the values would be
    subnormal, and slow). The answer is still attention over the first 40 positions alone, bit for
    bit, and float64's."""
    q, k, v = inputs(16, 2, 64, 48, 70, seed=3)
    k[40:] = -400 * q.view(2, 8, 64).mean(1)  # a logit gap of 55 nats and more (2^-64 is 44)
    scale = 64**-0.5
    ours = kernels.attend(q, k, v, scale)
    assert torch.equal(ours, kernels.attend(q, k[:40], v[:40], scale))
    ref = kernels.attend_reference(q, k, v, scale)
    assert (ours.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_isa_and_thread_count_gives_the_same_bits(shape):
    q, k, v = inputs(*shape, seed=1)
    results = []
    try:
        for level in AVAILABLE_ISAS:
            with kernels.use_isa(level):
                for threads in (1, 2, 3):  # 3 threads split MQA's 4 heads in groups of one, not two
                    kernels.set_num_threads(threads)
                    results.append(kernels.attend(q, k, v, 0.125))
    finally:
        kernels.set_num_threads(0)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_each_head_is_its_own_attention():
    """Head h of a GQA call equals that head alone against its kv head: grouping shares reads only."""
    q, k, v = inputs(8, 2, 64, 64, 257, seed=2)
    out = kernels.attend(q, k, v, 0.1)
    for h in range(8):
        alone = kernels.attend(q[h : h + 1], k[:, h // 4 : h // 4 + 1], v[:, h // 4 : h // 4 + 1], 0.1)
        assert torch.equal(out[h], alone[0])


def test_strided_rows_read_in_place():
    """MLA's keys are whole latent+rope cache rows and its values their first part (row stride
    576, not 512): the same bits as contiguous copies."""
    joint = torch.randn(300, 576)
    q = torch.randn(16, 576)
    strided = kernels.attend(q, joint[:, None, :], joint[:, None, :512], 0.05)
    copied = kernels.attend(q, joint[:, None, :].clone(), joint[:, None, :512].contiguous(), 0.05)
    assert torch.equal(strided, copied)


def test_bad_shapes_are_errors():
    q, k, v = inputs(6, 4, 32, 32, 10)
    with pytest.raises(kernels.KernelError):  # 6 query heads over 4 kv heads
        kernels.attend(q, k, v, 1.0)
    q, k, v = inputs(4, 2, 32, 32, 10)
    with pytest.raises(kernels.KernelError):
        kernels.attend(q, k[:, :, :16], v, 1.0)  # key dim differs from the query's
    with pytest.raises(kernels.KernelError):
        kernels.attend(q, k[:0], v[:0], 1.0)  # no position
    with pytest.raises(kernels.KernelError):
        kernels.attend(q.double(), k, v, 1.0)


@pytest.mark.parametrize("window", [None, 7])
def test_decode_step_matches_sdpa(window):
    """A decoding step in the attention layer (our kernel) against torch's sdpa over the same
    cache, with and without a sliding window."""
    H, K, Dh, past = 6, 2, 48, 20
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache = torch.zeros(32, K, Dh), torch.zeros(32, K, Dh)
    k_cache[:past], v_cache[:past] = torch.randn(past, K, Dh, generator=g), torch.randn(past, K, Dh, generator=g)
    q, k, v = torch.randn(1, H, Dh, generator=g), torch.randn(1, K, Dh, generator=g), torch.randn(1, K, Dh, generator=g)
    cache = SequenceCache([(k_cache, v_cache)], 32)
    cache.length = past
    batch = ForwardBatch.single(1, cache)
    out = causal_attention(q, k, v, batch, 0, Dh**-0.5, window)
    first = 0 if window is None else past + 1 - window
    ref = F.scaled_dot_product_attention(
        q.transpose(0, 1), k_cache[first : past + 1].transpose(0, 1), v_cache[first : past + 1].transpose(0, 1),
        scale=Dh**-0.5, enable_gqa=True,
    ).transpose(0, 1)  # fmt: skip
    assert torch.equal(k_cache[past], k[0]) and torch.equal(v_cache[past], v[0])  # the new key and value cached
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
