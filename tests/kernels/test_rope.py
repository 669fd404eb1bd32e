"""The rotary embedding kernel (kernels.rope) against torch's operations: the same bits."""

from __future__ import annotations

import pytest
import torch

from backend import kernels
from backend.layers.rope import rope_cos_sin, rope_inv_freq


@pytest.mark.parametrize("neox", [False, True])
def test_same_bits_as_torch_on_strided_views(neox, isa):
    """Heads sliced out of a wider projection (MLA's q_pe, k_pe) are read in place."""
    base = torch.randn(5, 7, 3 * 64)
    x = base[:, 1:5, 64:128]  # token stride 448, head stride 192
    cos, sin = rope_cos_sin(torch.arange(10, 15), rope_inv_freq(64, 10000.0), scale=1.25)
    ours = kernels.rope(x, cos, sin, neox)
    assert ours.is_contiguous() and torch.equal(ours, kernels.rope_reference(x, cos, sin, neox))


def test_bad_shapes_are_errors():
    cos, sin = torch.randn(3, 8), torch.randn(3, 8)
    with pytest.raises(kernels.KernelError):
        kernels.rope(torch.randn(3, 2, 15), cos, sin, False)  # odd dim
    with pytest.raises(kernels.KernelError):
        kernels.rope(torch.randn(4, 2, 16), cos, sin, False)  # cos/sin for 3 tokens
    with pytest.raises(kernels.KernelError):
        kernels.rope(torch.randn(3, 2, 16).double(), cos, sin, False)


def test_cos_sin_memo_is_per_positions_and_frequencies():
    memo: dict = {}
    positions = torch.arange(4)
    a, b = rope_inv_freq(64, 10000.0), rope_inv_freq(64, 500000.0)
    first = rope_cos_sin(positions, a, memo=memo)
    assert rope_cos_sin(positions, a, memo=memo)[0] is first[0]  # the next layer reads it
    other = rope_cos_sin(positions, b, memo=memo)  # Gemma 3's local layers: their own frequencies
    assert not torch.equal(other[0], first[0])
    assert torch.equal(other[0], rope_cos_sin(positions, b)[0])
