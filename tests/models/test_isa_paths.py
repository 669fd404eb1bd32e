"""The architecture parity tests again with the kernels forced onto each ISA path the CPU has
(dense projections, the fused MoE layer and MLA all run through the kernels)."""

from __future__ import annotations

import pytest

from backend import kernels

ISAS = kernels.ISAS[: kernels.ISAS.index(kernels.detected_isa()) + 1]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_K"), ("mixtral", "Q5_0"), ("qwen3moe", "IQ4_XS"),
                                        ("deepseek2", "Q4_K")])  # fmt: skip
def test_parity_on_every_isa(oracle, isa, arch, qtype):
    with kernels.use_isa(isa):
        assert kernels.isa() == isa
        oracle(arch, qtype)
