"""The architecture parity tests again with the kernels forced onto each ISA path the CPU has
(dense projections, the fused MoE layer and MLA all run through the kernels)."""

from __future__ import annotations

import pytest
import torch

from backend import kernels

ISAS = kernels.ISAS[: kernels.ISAS.index(kernels.detected_isa()) + 1]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_K"), ("mixtral", "Q5_0"), ("qwen3moe", "IQ4_XS"),
                                        ("deepseek2", "Q4_K")])  # fmt: skip
def test_parity_on_every_isa(oracle, isa, arch, qtype):
    with kernels.use_isa(isa):
        assert kernels.isa() == isa
        oracle(arch, qtype)


@pytest.mark.skipif(kernels.detected_isa() != "amx", reason=f"no AMX: this CPU or OS lacks amx_tile/amx_int8 "
                    f"or tile permission (detected: {kernels.detected_isa()})")  # fmt: skip
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_K"), ("qwen3moe", "IQ4_XS"), ("deepseek2", "Q4_K"),
                                        ("deepseek2", "Q6_K")])  # fmt: skip
def test_q8_prefill_amx_equals_vnni(tmp_path, arch, qtype):
    """8-bit activations (the integer GEMMs) over a 48-token prompt, so dense projections and the
    busier experts take the AMX tiles: the same logits as AVX-512 VNNI, bit for bit."""
    from backend.engine.kv_cache import ForwardBatch
    from backend.gguf_model import open_gguf
    from backend.models import load_model
    from backend.testmodels import model_config, write_model

    path = write_model(arch, tmp_path / "m.gguf", qtype=qtype)
    model = load_model(open_gguf(path), activations="q8")
    prompt = torch.randint(0, model_config(arch, None)["vocab_size"], (48,), generator=torch.Generator().manual_seed(1))
    logits = []
    for isa in ("avx512", "amx"):
        with kernels.use_isa(isa):
            logits.append(model(prompt, ForwardBatch.single(48, model.allocate_cache(48))))
    assert torch.equal(logits[0], logits[1]), (logits[0] - logits[1]).abs().max().item()
