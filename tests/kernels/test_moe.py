"""The fused MoE layer against a float64 per-token reference built from gguf-dequantized weights."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from backend import kernels

from .conftest import random_tensor

E, D, I = 8, 256, 512


def stacked(name: str, rows: int, cols: int, seed: int) -> kernels.QuantWeight:
    raw = random_tensor(name, rows, cols, np.random.default_rng(seed), small=True)
    return kernels.QuantWeight(raw.reshape(-1), GGMLQuantizationType[name], (rows, cols))


def layer(gate_type: str, down_type: str):
    return stacked(gate_type, E * I, D, 1), stacked(gate_type, E * I, D, 2), stacked(down_type, E * D, I, 3)


def routing(T: int, A: int, seed: int, skewed: bool = False):
    g = torch.Generator().manual_seed(seed)
    if skewed:  # a hot expert every token picks, plus one other
        ids = torch.stack([torch.tensor([0, 1 + t % (E - 1)]) for t in range(T)])[:, :A]
    else:
        ids = torch.stack([torch.randperm(E, generator=g)[:A] for _ in range(T)])
    return ids, torch.rand(T, A, generator=g)


def assert_close(out: torch.Tensor, ref: torch.Tensor, activations: str = "float") -> None:
    # float: float32 sums of I and D products of O(|w||x|) terms, relative to the largest output.
    # q8: the same quants as the reference, except where the SwiGLU output's float32 rounding
    # (std::exp vs torch) moves an element across a rounding boundary of its 8-bit quantization.
    tolerance = 1e-5 if activations == "float" else 1e-4  # measured: 1.9e-5
    assert (out.double() - ref).abs().max() <= tolerance * ref.abs().max()


@pytest.mark.parametrize("gate_type,down_type", [("Q4_K", "Q5_0"), ("Q4_K", "Q8_0"), ("Q4_K", "Q6_K"),
                                                  ("IQ1_S", "IQ2_XXS"), ("IQ2_XXS", "Q4_K")])  # fmt: skip
@pytest.mark.parametrize("T", [1, 3, 20])  # one decode, a few sequences, a prompt chunk (tile path)
@pytest.mark.parametrize("activations", ["float", "q8", "q8x2"])
def test_close_to_float64(gate_type, down_type, T, activations, isa):
    gate, up, down = layer(gate_type, down_type)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)) * 0.02
    ids, w = routing(T, 2, T)
    out = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
    ref = kernels.moe_experts_reference(x, ids, w, gate, up, down, E, activations)
    print(f"{activations}: {((out.double() - ref).abs().max() / ref.abs().max()).item():.2e} x max|out|")
    assert_close(out, ref, activations)


IS = 384  # shared experts' width: not a multiple of 256, so K-quant down rows end mid-chunk


def shared_experts(gate_type: str, down_type: str):
    return stacked(gate_type, IS, D, 4), stacked(gate_type, IS, D, 5), stacked(down_type, D, IS, 6)


@pytest.mark.parametrize("gate_type,down_type", [("Q4_K", "Q8_0"), ("Q8_0", "Q5_0")])
@pytest.mark.parametrize("T", [1, 20])
@pytest.mark.parametrize("activations", ["float", "q8", "q8x2"])
def test_shared_experts_in_the_same_call(gate_type, down_type, T, activations, isa):
    """Shared experts join the fused call as one more expert every token visits with weight 1:
    the result is the routed sum plus the shared FFN, each token independent of the batch."""
    gate, up, down = layer("Q4_K", "Q6_K")
    shared = shared_experts(gate_type, down_type)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)) * 0.02
    ids, w = routing(T, 2, T)
    w = w * 1e-3  # the random Q6_K experts dwarf the shared FFN; keep both parts visible
    out = kernels.moe_experts(x, ids, w, gate, up, down, E, activations, shared=shared)
    ref = kernels.moe_experts_reference(x, ids, w, gate, up, down, E, activations, shared=shared)
    assert_close(out, ref, activations)
    routed_only = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
    assert (out - routed_only).abs().max() > 0.1 * out.abs().max()  # the shared part is really there
    alone = kernels.moe_experts(x[-1:], ids[-1:], w[-1:], gate, up, down, E, activations, shared=shared)
    assert torch.equal(alone[0], out[-1])


def test_shared_experts_of_the_wrong_shape_are_refused():
    gate, up, down = layer("Q4_K", "Q6_K")
    sg, su, sd = shared_experts("Q8_0", "Q8_0")
    x = torch.randn(2, D)
    ids, w = routing(2, 2, 0)
    with pytest.raises(kernels.KernelError, match="shared experts"):
        kernels.moe_experts(x, ids, w, gate, up, down, E, "q8", shared=(sg, su, sg))


def test_q8_is_llama_cpp_arithmetic_not_float():
    """The q8 layer differs from the float one by about 8-bit quantization noise (~1e-2), and
    mixed formats (a float down projection) take float activations where they must."""
    gate, up, down = layer("Q4_K", "Q5_0")
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(0)) * 0.02
    ids, w = routing(4, 2, 0)
    q8, flt = (kernels.moe_experts(x, ids, w, gate, up, down, E, mode) for mode in ("q8", "float"))
    rel = ((q8 - flt).abs().max() / flt.abs().max()).item()
    assert 1e-4 < rel < 5e-2
    f16_down = stacked("F16", E * D, I, 3)
    mixed = kernels.moe_experts(x, ids, w, gate, up, f16_down, E, "q8")
    assert_close(mixed, kernels.moe_experts_reference(x, ids, w, gate, up, f16_down, E, "q8"), "q8")
    with pytest.raises(kernels.KernelError, match="activations"):
        kernels.moe_experts(x, ids, w, gate, up, down, E, "int4")


@pytest.mark.parametrize("activations", ["float", "q8", "q8x2"])
def test_skewed_routing_and_batch_independence(activations):
    gate, up, down = layer("Q4_K", "Q6_K")
    x = torch.randn(12, D) * 0.02
    ids, w = routing(12, 2, 0, skewed=True)
    together = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
    assert_close(together, kernels.moe_experts_reference(x, ids, w, gate, up, down, E, activations), activations)
    for t in (0, 5, 11):  # a token's result does not depend on who else is in the batch
        alone = kernels.moe_experts(x[t : t + 1], ids[t : t + 1], w[t : t + 1], gate, up, down, E, activations)
        assert torch.equal(alone[0], together[t])


@pytest.mark.parametrize("activations", ["float", "q8", "q8x2"])
def test_a_decode_call_equals_its_token_in_a_prompt_sized_call(activations):
    """Shared experts included, more slots than a decode step has: each token alone equals its
    row of the 40-token batch."""
    gate, up, down = layer("Q4_K", "Q5_0")
    shared = (stacked("Q4_K", 96, D, 7), stacked("Q4_K", 96, D, 8), stacked("Q8_0", D, 96, 9))
    x = torch.randn(40, D) * 0.02
    ids, w = routing(40, 2, 3)
    together = kernels.moe_experts(x, ids, w, gate, up, down, E, activations, shared=shared)
    for t in (0, 17, 39):
        alone = kernels.moe_experts(x[t : t + 1], ids[t : t + 1], w[t : t + 1], gate, up, down, E, activations,
                                    shared=shared)  # fmt: skip
        assert torch.equal(alone[0], together[t])


@pytest.mark.parametrize("activations", ["float", "q8", "q8x2"])
def test_thread_count_and_concurrent_callers_change_nothing(activations):
    gate, up, down = layer("Q4_K", "Q8_0")
    x = torch.randn(9, D) * 0.02
    ids, w = routing(9, 3, 1)
    try:
        kernels.set_num_threads(1)
        one = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
        kernels.set_num_threads(2)
        two = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
    finally:
        kernels.set_num_threads(0)
    assert torch.equal(one, two)
    # The hybrid engine calls the kernels from a worker thread while the main thread may call
    # them too (the stand-in's shared experts): the library serialises them, results unchanged.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(kernels.moe_experts, x, ids, w, gate, up, down, E, activations) for _ in range(4)]
        here = kernels.moe_experts(x, ids, w, gate, up, down, E, activations)
        assert all(torch.equal(f.result(), one) for f in futures) and torch.equal(here, one)


def test_bad_routing_is_refused():
    gate, up, down = layer("Q8_0", "Q8_0")
    x = torch.randn(2, D)
    with pytest.raises(kernels.KernelError, match="bad shape"):
        kernels.moe_experts(x, torch.tensor([[0, E]]).expand(2, 2), torch.ones(2, 2), gate, up, down, E)
    with pytest.raises(kernels.KernelError, match="do not fit"):
        kernels.moe_experts(x, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2), gate, up, down, E + 1)
