"""The prompt attention kernel (kernels.attend_prompt) against float64 masked softmax attention,
across ISAs and threads; a position's bits whatever chunk of the prompt it came in; and the
attention layers' prompt paths against torch's sdpa."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend import kernels
from backend.engine.kv_cache import ForwardBatch, SequenceCache
from backend.layers.attention import causal_attention

from .conftest import AVAILABLE_ISAS

# (new tokens, query heads, kv heads, head dim, value dim, past, window): GQA, MHA, MQA; head and
# value dims off the 16-lane grid; fewer tokens than a row block and not a multiple of one; keys
# across several 32-key panels and not a multiple of one; a cached past; sliding windows shorter
# and longer than a panel; MLA's shape (192 / 128, 16 heads).
SHAPES = [
    (37, 4, 2, 64, 48, 0, None),
    (100, 6, 3, 80, 80, 13, None),
    (64, 2, 1, 72, 40, 0, 7),
    (5, 3, 3, 16, 16, 40, None),
    (90, 4, 4, 32, 24, 200, 50),
    (3, 8, 1, 20, 36, 0, None),
    (130, 16, 16, 192, 128, 0, None),
]  # fmt: skip


def inputs(n, H, K, Dh, Dv, past, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = past + n
    return torch.randn(n, H, Dh, generator=g), torch.randn(S, K, Dh, generator=g), torch.randn(S, K, Dv, generator=g)


def on_every_isa_and_thread_count(run) -> list[torch.Tensor]:
    """run() on every ISA this machine has, each with 1, 2 and 3 threads."""
    results = []
    try:
        for level in AVAILABLE_ISAS:
            with kernels.use_isa(level):
                for threads in (1, 2, 3):
                    kernels.set_num_threads(threads)
                    results.append(run())
    finally:
        kernels.set_num_threads(0)
    return results


@pytest.mark.parametrize("shape", SHAPES)
def test_close_to_float64(shape, isa):
    n, H, K, Dh, Dv, past, window = shape
    q, k, v = inputs(n, H, K, Dh, Dv, past)
    ours = kernels.attend_prompt(q, k, v, Dh**-0.5, past, window)
    ref = kernels.attend_prompt_reference(q, k, v, Dh**-0.5, past, window)
    assert ours.shape == (n, H, Dv)
    assert (ours.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_isa_and_thread_count_gives_the_same_bits(shape):
    n, H, K, Dh, Dv, past, window = shape
    q, k, v = inputs(n, H, K, Dh, Dv, past, seed=1)
    results = on_every_isa_and_thread_count(lambda: kernels.attend_prompt(q, k, v, 0.125, past, window))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("window", [None, 20])
def test_a_position_has_the_same_bits_in_any_chunk(window):
    """A 100-token prompt in one call, in chunks of 37 and 63 (the second with 37 cached
    positions), and token by token: bit for bit the same (prefix reuse and chunked prefill
    change nothing)."""
    n, H, K, Dh, Dv = 100, 4, 2, 48, 40
    q, k, v = inputs(n, H, K, Dh, Dv, 0, seed=2)
    whole = kernels.attend_prompt(q, k, v, 0.2, 0, window)
    first = kernels.attend_prompt(q[:37], k[:37], v[:37], 0.2, 0, window)
    rest = kernels.attend_prompt(q[37:], k, v, 0.2, 37, window)
    assert torch.equal(whole, torch.cat([first, rest]))
    for t in (0, 8, 31, 32, 63, 99):
        assert torch.equal(whole[t], kernels.attend_prompt(q[t : t + 1], k[: t + 1], v[: t + 1], 0.2, t, window)[0])


def test_weights_below_2_to_the_minus_64_are_zero(isa):
    """A peaked softmax: keys from position 40 on score so far below the best that their weights
    fall under 2^-64, which the kernel zeroes (their products with the values would be subnormal,
    and slow). So their values cannot change a bit of the answer, which is still float64's."""
    n, past = 8, 62
    q, k, v = inputs(n, 16, 2, 64, 48, past, seed=3)
    q = q.abs()
    k[40:] = -12.0  # scores near -12 x 51 / 8 = -77 nats against about +-2: 2^-64 is 44
    ours = kernels.attend_prompt(q, k, v, 64**-0.5, past)
    v2 = v.clone()
    v2[40:] = 1e6
    assert torch.equal(ours, kernels.attend_prompt(q, k, v2, 64**-0.5, past))
    ref = kernels.attend_prompt_reference(q, k, v, 64**-0.5, past)
    assert (ours.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_strided_rows_read_in_place():
    """Keys and values as column slices of wider rows (as MLA's joint cache): the same bits as
    contiguous copies."""
    joint = torch.randn(70, 2, 100)
    q = torch.randn(30, 4, 64)
    strided = kernels.attend_prompt(q, joint[:, :, :64], joint[:, :, 64:], 0.1, 40)
    copied = kernels.attend_prompt(q, joint[:, :, :64].contiguous(), joint[:, :, 64:].contiguous(), 0.1, 40)
    assert torch.equal(strided, copied)


def test_bad_shapes_are_errors():
    q, k, v = inputs(10, 4, 2, 32, 32, 5)
    with pytest.raises(kernels.KernelError):  # keys for 15 positions, 10 queries after 4
        kernels.attend_prompt(q, k, v, 1.0, 4)
    with pytest.raises(kernels.KernelError):
        kernels.attend_prompt(q[:, :3], k, v, 1.0, 5)  # 3 query heads over 2 kv heads
    with pytest.raises(kernels.KernelError):
        kernels.attend_prompt(q, k[:, :, :16], v, 1.0, 5)  # key dim differs from the query's
    with pytest.raises(kernels.KernelError):
        kernels.attend_prompt(q, k, v, 1.0, 5, window=0)
    with pytest.raises(kernels.KernelError):
        kernels.attend_prompt(q.double(), k, v, 1.0, 5)


@pytest.mark.parametrize("past, window", [(0, None), (20, None), (0, 9), (20, 9)])
def test_prompt_chunk_in_the_layer_matches_sdpa(past, window):
    """A prompt chunk through the attention layer (our kernel, the cache written first) against
    torch's sdpa over the same cache with the causal (and window) mask."""
    H, K, Dh, n = 6, 2, 48, 30
    g = torch.Generator().manual_seed(4)
    k_cache, v_cache = torch.zeros(64, K, Dh), torch.zeros(64, K, Dh)
    k_cache[:past], v_cache[:past] = torch.randn(past, K, Dh, generator=g), torch.randn(past, K, Dh, generator=g)
    q, k, v = (torch.randn(n, H, Dh, generator=g), torch.randn(n, K, Dh, generator=g), torch.randn(n, K, Dh, generator=g))
    cache = SequenceCache([(k_cache, v_cache)], 64)
    cache.length = past
    out = causal_attention(q, k, v, ForwardBatch.single(n, cache), 0, Dh**-0.5, window)
    pos, key = torch.arange(past, past + n)[:, None], torch.arange(past + n)[None, :]
    mask = (key <= pos) & ((pos - key < window) if window else True)
    ref = F.scaled_dot_product_attention(
        q.transpose(0, 1), k_cache[: past + n].transpose(0, 1), v_cache[: past + n].transpose(0, 1),
        attn_mask=mask, scale=Dh**-0.5, enable_gqa=True,
    ).transpose(0, 1)  # fmt: skip
    assert torch.equal(k_cache[past : past + n], k) and torch.equal(v_cache[past : past + n], v)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


# (new tokens, heads, N, R, L, Vd, past): DeepSeek's proportions scaled down, dims off the 16-lane
# grid, a cached past, and V2-Lite's real shape.
MLA_SHAPES = [(37, 4, 16, 8, 40, 24, 0), (50, 3, 20, 6, 72, 36, 29), (9, 2, 32, 16, 64, 32, 100),
              (96, 16, 128, 64, 512, 128, 0)]  # fmt: skip


def mla_inputs(n, H, N, R, L, Vd, past, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = past + n
    return (torch.randn(n, H, N + R, generator=g), torch.randn(S, L + R, generator=g),
            0.1 * torch.randn(H, N, L, generator=g), 0.1 * torch.randn(H, Vd, L, generator=g))  # fmt: skip


@pytest.mark.parametrize("shape", MLA_SHAPES)
def test_mla_close_to_float64(shape, isa):
    """Keys [w_uk latent | k_pe] and values w_uv latent expanded inside the kernel, against
    float64 expanded attention."""
    *dims, past = shape
    q, cache, w_uk, w_uv = mla_inputs(*dims, past)
    ours = kernels.attend_prompt_mla(q, cache, w_uk, w_uv, 0.1, past)
    ref = kernels.attend_prompt_mla_reference(q, cache, w_uk, w_uv, 0.1, past)
    assert ours.shape == (shape[0], shape[1], shape[5])
    assert (ours.double() - ref).abs().max() <= 2e-5 * ref.abs().max()


@pytest.mark.parametrize("shape", MLA_SHAPES[:3])
def test_mla_every_isa_thread_count_and_chunking_gives_the_same_bits(shape):
    *dims, past = shape
    n = dims[0]
    q, cache, w_uk, w_uv = mla_inputs(*dims, past, seed=1)
    results = on_every_isa_and_thread_count(lambda: kernels.attend_prompt_mla(q, cache, w_uk, w_uv, 0.1, past))
    assert all(torch.equal(results[0], r) for r in results[1:])
    cut = n // 3  # the same positions in two chunks, the second after the first's cache rows
    first = kernels.attend_prompt_mla(q[:cut], cache[: past + cut], w_uk, w_uv, 0.1, past)
    rest = kernels.attend_prompt_mla(q[cut:], cache, w_uk, w_uv, 0.1, past + cut)
    assert torch.equal(results[0], torch.cat([first, rest]))


def test_mla_reads_the_joint_cache_rows_in_place():
    """The cache as allocate() makes it: rows [latent | k_pe] of a wider capacity, read as a view."""
    q, cache, w_uk, w_uv = mla_inputs(20, 2, 16, 8, 32, 16, 10, seed=2)
    wide = torch.zeros(64, 40)
    wide[:30] = cache
    assert torch.equal(kernels.attend_prompt_mla(q, wide[:30], w_uk, w_uv, 0.2, 10),
                       kernels.attend_prompt_mla(q, cache, w_uk, w_uv, 0.2, 10))  # fmt: skip


def test_mla_bad_shapes_are_errors():
    q, cache, w_uk, w_uv = mla_inputs(10, 2, 16, 8, 32, 16, 5)
    with pytest.raises(kernels.KernelError):  # 16 cache rows for 10 queries after 5
        kernels.attend_prompt_mla(q, torch.cat([cache, cache[:1]]), w_uk, w_uv, 1.0, 5)
    with pytest.raises(kernels.KernelError):  # latent widths disagree
        kernels.attend_prompt_mla(q, cache, w_uk[:, :, :16], w_uv, 1.0, 5)
    with pytest.raises(kernels.KernelError):  # the query's rope part is not the cache's
        kernels.attend_prompt_mla(q[:, :, :20], cache, w_uk, w_uv, 1.0, 5)
