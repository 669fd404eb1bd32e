"""Dequantization of every supported type, on every ISA path, bit-identical to gguf-py."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from backend import kernels

from .conftest import TYPES, random_tensor


@pytest.mark.parametrize("name", TYPES)
def test_bit_identical_to_gguf(name, isa):
    rng = np.random.default_rng(sum(map(ord, name)))
    qtype = GGMLQuantizationType[name]
    block = GGML_QUANT_SIZES[qtype][0]
    cols = 256 * 8 if block > 1 else 1000
    raw = random_tensor(name, 64, cols, rng)  # 512 blocks of random bits per type and ISA
    ours = kernels.dequantize(raw, qtype, (64, cols))
    ref = kernels.dequantize_reference(raw, qtype, (64, cols))
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name", ["Q4_K", "Q8_0", "Q6_K", "F16"])
def test_looked_up_rows_are_gguf_rows(name):
    """The embedding's lookup: rows in the order asked, repeats included, as gguf-py's rows."""
    rng = np.random.default_rng(7)
    qtype = GGMLQuantizationType[name]
    raw = random_tensor(name, 32, 512, rng)
    weight = kernels.QuantWeight(raw.reshape(-1), qtype, (32, 512))
    ids = [5, 0, 31, 5, 17]
    ref = kernels.dequantize_reference(raw, qtype, (32, 512))[ids]
    np.testing.assert_array_equal(kernels.dequantize_rows(weight, ids).view(np.uint32), ref.view(np.uint32))
    assert kernels.dequantize_rows(weight, []).shape == (0, 512)
    for bad in (32, -1):
        with pytest.raises(kernels.KernelError, match="rows"):
            kernels.dequantize_rows(weight, [1, bad])


def test_every_gguf_type_we_claim_is_supported():
    for name in TYPES:
        assert kernels.supports(GGMLQuantizationType[name]), name
    assert not kernels.supports(GGMLQuantizationType.TQ1_0)


def test_bad_arguments_are_refused():
    raw = np.zeros(10, np.uint8)
    with pytest.raises(kernels.KernelError, match="buffer too small"):
        kernels.dequantize(raw, GGMLQuantizationType.Q4_K, (256,))
    with pytest.raises(kernels.KernelError, match="bad shape"):
        kernels.dequantize(np.zeros(144, np.uint8), GGMLQuantizationType.Q4_K, (100,))
    with pytest.raises(kernels.KernelError, match="unsupported"):
        kernels.dequantize(raw, 99, (1,))


def test_isa_override():
    assert kernels.isa() in kernels.ISAS
    with kernels.use_isa("scalar"):
        assert kernels.isa() == "scalar"
    with pytest.raises(kernels.KernelError):
        kernels.set_isa("neon")
