"""The RMSNorm kernel (kernels.rms_norm) against torch's float32 formula and float64."""

from __future__ import annotations

import pytest
import torch

from backend import kernels

from .conftest import AVAILABLE_ISAS


@pytest.mark.parametrize("shape", [(1, 576), (3, 7, 64), (2, 1000), (4, 2048), (2, 5)])  # rows, per-head norms, tails
def test_close_to_torch_and_float64(shape, isa):
    x, w = torch.randn(*shape) * 3, torch.randn(shape[-1])
    ours = kernels.rms_norm(x, w, 1e-6)
    ref64 = w.double() * (x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
    assert ours.shape == x.shape
    assert (ours.double() - ref64).abs().max() <= 1e-6 * ref64.abs().max()
    torch_ref = kernels.rms_norm_reference(x, w, 1e-6)  # torch's own sum order: within an ulp or two
    assert (ours - torch_ref).abs().max() <= 4e-7 * torch_ref.abs().max()


def test_every_isa_gives_the_same_bits():
    x, w = torch.randn(6, 1000), torch.randn(1000)
    results = []
    for level in AVAILABLE_ISAS:
        with kernels.use_isa(level):
            results.append(kernels.rms_norm(x, w, 1e-5))
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_rows_are_independent_and_views_are_read():
    x, w = torch.randn(8, 300), torch.randn(300)
    whole = kernels.rms_norm(x, w, 1e-5)
    assert torch.equal(kernels.rms_norm(x[3:4], w, 1e-5)[0], whole[3])
    assert torch.equal(kernels.rms_norm(x.t().contiguous().t(), w, 1e-5), whole)  # a transposed copy's view


def test_bad_inputs_are_errors():
    with pytest.raises(kernels.KernelError):
        kernels.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(kernels.KernelError):
        kernels.rms_norm(torch.randn(2, 8).double(), torch.randn(8), 1e-5)
