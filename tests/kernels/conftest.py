"""Random GGUF blocks with finite scales, and ISA/thread fixtures for the kernel tests."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from backend import kernels

# Byte offsets of each block's fp16 scale fields (IQ1_M spreads its scale; handled apart).
FP16_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ3_XXS": (0,), "IQ1_S": (0,), "IQ4_XS": (0,), "IQ1_M": (),
}  # fmt: skip
TYPES = ["F32", "F16", "BF16", *FP16_FIELDS]
AVAILABLE_ISAS = kernels.ISAS[: kernels.ISAS.index(kernels.detected_isa()) + 1]


def finite_halves(rng: np.random.Generator, n: int, small: bool = False) -> np.ndarray:
    """Random fp16 bit patterns, any sign, subnormals included, never inf/NaN."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    if small:  # keep products of scales far from overflow when the values feed a matmul
        bits = (bits & 0x83FF) | (rng.integers(5, 16, size=n, dtype=np.uint16) << 10)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0xBFFF, bits)
    return bits.astype(np.uint16)


def random_tensor(name: str, rows: int, cols: int, rng: np.random.Generator, small: bool = False) -> np.ndarray:
    """[rows, row_bytes] uint8 of type `name`: random payload bits, finite scales."""
    qtype = GGMLQuantizationType[name]
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    if name == "F32":
        values = rng.standard_normal(rows * cols).astype(np.float32)
        return values.view(np.uint8).reshape(rows, -1)
    if name in ("F16", "BF16"):
        if name == "F16":
            halves = finite_halves(rng, rows * cols, small)
        else:
            halves = (rng.standard_normal(rows * cols).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return halves.view(np.uint8).reshape(rows, -1)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[name]:
        raw[:, offset : offset + 2] = finite_halves(rng, n_blocks, small).view(np.uint8).reshape(-1, 2)
    if name == "IQ1_M":  # the fp16 scale lives in the top nibbles of four uint16 words at 48..55
        words = raw[:, 48:56].copy().view("<u2")
        d = finite_halves(rng, n_blocks, small)
        for i in range(4):
            words[:, i] = (words[:, i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.fixture(params=AVAILABLE_ISAS)
def isa(request):
    with kernels.use_isa(request.param):
        yield request.param
