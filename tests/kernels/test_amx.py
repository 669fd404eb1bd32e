"""Intel AMX tiles (the 'amx' ISA level): the same bits as the AVX-512 VNNI path for every weight
type, token count (tails of 16-token blocks included), row count and the fused MoE layer, and
the numpy references. Skipped where the CPU or the OS lacks AMX."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from backend import kernels
from backend.superblock_reference import DECODERS, superblock_matmul_q8_reference

from .conftest import FP16_FIELDS, random_tensor
from .test_moe import E, D, layer, routing, shared_experts

HAS_AMX = kernels.detected_isa() == "amx"
needs_amx = pytest.mark.skipif(
    not HAS_AMX, reason=f"no AMX: this CPU or OS lacks amx_tile/amx_int8 or tile permission (detected: {kernels.detected_isa()})"
)


def weight(name: str, rows: int, cols: int, seed: int) -> kernels.QuantWeight:
    raw = random_tensor(name, rows, cols, np.random.default_rng(seed), small=True)
    return kernels.QuantWeight(raw.reshape(-1), GGMLQuantizationType[name], (rows, cols))


def on(isa: str, fn, *args):
    with kernels.use_isa(isa):
        return fn(*args)


@needs_amx
@pytest.mark.parametrize("name", list(FP16_FIELDS))
@pytest.mark.parametrize(("rows", "cols"), [(37, 512), (21, 4352), (40, 768), (70, 2048)])
def test_matmul_equals_vnni_bit_for_bit(name, rows, cols):
    """Token counts below, at and past the tiles' thresholds (8; 32 for the codebook types), with
    tails of 16-token blocks: the same bits as AVX-512."""
    if kernels.activation_block(GGMLQuantizationType[name]) == 32 and cols == 768:
        cols = 800  # a 32-block row that ends inside a chunk (3.125 chunks)
    w = weight(name, rows, cols, seed=rows)
    for tokens in (7, 8, 15, 16, 17, 31, 33, 48, 100):
        x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(tokens))
        vnni, amx = on("avx512", kernels.matmul_q8, w, x), on("amx", kernels.matmul_q8, w, x)
        assert torch.equal(vnni, amx), f"{name} {rows}x{cols}, {tokens} tokens"


@needs_amx
@pytest.mark.parametrize("name", [t.name for t in DECODERS])
@pytest.mark.parametrize("tokens", [16, 40, 129])
def test_super_blocks_equal_their_integer_arithmetic(name, tokens):
    """The tile GEMM against backend/superblock_reference.py, bit for bit."""
    w = weight(name, 50, 1024, seed=tokens)
    x = torch.randn(tokens, 1024, generator=torch.Generator().manual_seed(tokens))
    assert torch.equal(on("amx", kernels.matmul_q8, w, x), superblock_matmul_q8_reference(w, x))


@needs_amx
@pytest.mark.parametrize("name", list(FP16_FIELDS))
def test_close_to_float64_over_the_same_quants(name):
    w = weight(name, 33, 512, seed=5)
    x = torch.randn(40, 512, generator=torch.Generator().manual_seed(3))
    ours, ref = on("amx", kernels.matmul_q8, w, x).double(), kernels.matmul_q8_reference(w, x)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_amx
@pytest.mark.parametrize("gate_type,down_type", [("Q4_K", "Q5_0"), ("Q4_K", "Q8_0"), ("Q4_K", "Q6_K"),
                                                  ("IQ1_S", "IQ2_XXS"), ("IQ2_XXS", "Q4_K")])  # fmt: skip
@pytest.mark.parametrize("T", [40, 96])  # 10-24 tokens an expert (top-2 of 8): both sides of 16
def test_fused_moe_equals_vnni(gate_type, down_type, T):
    gate, up, down = layer(gate_type, down_type)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)) * 0.02
    ids, w = routing(T, 2, T)
    shared = shared_experts("Q4_K", "Q8_0" if down_type != "Q5_0" else "Q5_0")  # 384-wide rows: 32-blocks
    args = (x, ids, w, gate, up, down, E, "q8")
    vnni = on("avx512", lambda: kernels.moe_experts(*args, shared=shared))
    amx = on("amx", lambda: kernels.moe_experts(*args, shared=shared))
    assert torch.equal(vnni, amx)
    ref = kernels.moe_experts_reference(*args, shared=shared)
    assert (amx.double() - ref).abs().max() <= 1e-4 * ref.abs().max()


@needs_amx
def test_threads_do_not_change_bits():
    w = weight("Q4_K", 300, 1024, seed=9)
    x = torch.randn(70, 1024)
    try:
        with kernels.use_isa("amx"):
            kernels.set_num_threads(1)
            one = kernels.matmul_q8(w, x)
            kernels.set_num_threads(2)
            assert torch.equal(kernels.matmul_q8(w, x), one)
    finally:
        kernels.set_num_threads(0)


@needs_amx
def test_moe_isa_env_forces_vnni_for_comparison():
    """MOE_ISA=avx512 runs the VNNI GEMMs on an AMX machine; the default is amx."""
    code = "from backend import kernels; print(kernels.isa(), kernels.detected_isa())"
    for value, expected in (("avx512", "avx512 amx"), (None, "amx amx")):
        env = {k: v for k, v in os.environ.items() if k != "MOE_ISA"}
        if value:
            env["MOE_ISA"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == expected.split()


def test_amx_is_listed_only_where_detected():
    from .conftest import AVAILABLE_ISAS

    assert ("amx" in AVAILABLE_ISAS) == HAS_AMX
    if not HAS_AMX:
        with pytest.raises(kernels.KernelError, match="not available"):
            kernels.set_isa("amx")
