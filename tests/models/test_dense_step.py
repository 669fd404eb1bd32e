"""The native decode step (backend/layers/dense_step.py) against the Python layers it replaces:
the same logits bit for bit, for several sequences of different lengths at once, every dense
architecture, both integer arithmetics, quantized and float weight types, Gemma 3's sliding
window crossed; and the cases it must leave to the layers."""

from __future__ import annotations

import math

import pytest
import torch

from backend import kernels
from backend.engine.kv_cache import ForwardBatch
from backend.gguf_model import open_gguf
from backend.models import load_model
from backend.testmodels import model_config, write_model


def decode_logits(model, native: bool, steps: int = 12) -> torch.Tensor:
    """Two prompts (20 and 7 tokens, past Gemma's window of 8) prefilled apart, then `steps`
    greedy decode steps of both sequences in one batch: their logits [steps, 2, V]."""
    model.__dict__["_dense_step"] = model.__dict__.get("_dense_step_built") if native else None
    vocab = model.args.vocab_size
    caches = [model.allocate_cache(40), model.allocate_cache(40)]
    for seed, (cache, n) in enumerate(zip(caches, (20, 7))):
        batch = ForwardBatch.single(n, cache)
        model(torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)), batch)
        batch.advance()
    tokens, out = torch.tensor([3, 5]), []
    for _ in range(steps):
        batch = ForwardBatch((1, 1), tuple(caches))
        logits = model(tokens, batch)
        batch.advance()
        out.append(logits)
        tokens = logits.argmax(-1)
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])  # plain; q/k/v biases; QK and sandwich norms, GeGLU, windows
@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "F16"])  # super-block, legacy, float weights
@pytest.mark.parametrize("activations", ["q8", "q8x2"])
def test_the_same_bits_as_the_layers(arch, qtype, activations, tmp_path):
    model = load_model(open_gguf(write_model(arch, tmp_path / "m.gguf", qtype=qtype)), activations=activations)
    step = model.dense_step()
    assert step is not None
    model.__dict__["_dense_step_built"] = step
    calls = []
    original = kernels.decode_dense
    try:
        kernels.decode_dense = lambda *a, **k: calls.append(1) or original(*a, **k)
        native = decode_logits(model, native=True)
    finally:
        kernels.decode_dense = original
    assert len(calls) == 12  # every decode step went native, the prefills did not
    assert torch.equal(native, decode_logits(model, native=False))


def test_mixed_batches_and_float_activations_stay_on_the_layers(tmp_path):
    model = load_model(open_gguf(write_model("llama", tmp_path / "m.gguf", qtype="Q4_K")), activations="float")
    step = model.dense_step()
    cache = model.allocate_cache(8)
    x = torch.zeros(1, model.args.hidden_size)
    assert not step.applies(ForwardBatch.single(1, cache), x)  # float activations: the oracle path
    model.layers[0].attn.q.activations = "q8"
    assert not step.applies(ForwardBatch.single(1, cache), x)  # not one arithmetic for every block
    for module in model.modules():
        if hasattr(type(module), "activations"):
            module.activations = "q8"
    assert step.applies(ForwardBatch.single(1, cache), x)
    assert not step.applies(ForwardBatch((1, 2), (cache, model.allocate_cache(8))), torch.zeros(3, x.shape[1]))


def test_experts_have_no_dense_step(tmp_path):
    for arch in ("qwen3moe", "deepseek2"):
        model = load_model(open_gguf(write_model(arch, tmp_path / f"{arch}.gguf", qtype="Q4_K")), activations="q8")
        assert model.dense_step() is None


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_gated_activations_against_float64(act):
    g = torch.randn(4, 1000) * 6
    g[0, :4] = torch.tensor([-200.0, 200.0, 0.0, -0.0])  # past exp's clamp either way
    u = torch.randn(4, 1000)
    ours, ref = kernels.gated(g, u, act).double(), kernels.gated_reference(g, u, act)
    # exp's argument carries float32 rounding, relative to its size: 2 u for GeGLU, x for SwiGLU.
    x = g.double()
    arg = x.abs() if act == "silu" else (2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)).abs()
    # Past exp's clamp at -87 (x below -87) a value of |x| e^-87 stands for 0: below 1e-33 here.
    assert ((ours - ref).abs() <= 2e-7 * ref.abs() * (2 + arg) + 1e-33).all()
    assert torch.isfinite(ours).all()
