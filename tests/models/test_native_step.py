"""The native decode step (backend/layers/native_step.py) against the Python layers it replaces:
the same logits bit for bit, for several sequences of different lengths at once, every dense
architecture, both integer arithmetics, quantized and float weight types, Gemma 3's sliding
window crossed; and the cases it must leave to the layers."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from backend import kernels
from backend.engine.kv_cache import ForwardBatch
from backend.gguf_model import open_gguf
from backend.layers.routing import route_grouped, route_reference
from backend.models import load_model
from backend.testmodels import write_model
from backend.testmodels.deepseek2 import V2, V3


def decode_logits(model, native: bool, steps: int = 12) -> torch.Tensor:
    """Two prompts (20 and 7 tokens, past Gemma's window of 8) prefilled apart, then `steps`
    greedy decode steps of both sequences in one batch: their logits [steps, 2, V]."""
    model.__dict__["_native_step"] = model.__dict__.get("_native_step_built") if native else None
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


@contextlib.contextmanager
def counting(monkeypatch, name: str):
    """The calls of kernels.<name> made inside the block (one per native decode step)."""
    calls, original = [], getattr(kernels, name)
    with monkeypatch.context() as m:
        m.setattr(kernels, name, lambda *a, **k: calls.append(1) or original(*a, **k))
        yield calls


def assert_the_layers_bits(model, step, monkeypatch, kernel: str) -> None:
    """With `step` in place, every decode step goes through kernels.<kernel> (the prefills do not)
    and gives the logits the layers give, bit for bit."""
    model.__dict__["_native_step_built"] = step
    head_calls = []
    with counting(monkeypatch, kernel) as calls, monkeypatch.context() as m:
        forward = model.output.forward
        m.setattr(model.output, "forward", lambda x: head_calls.append(x.shape[0]) or forward(x))
        native = decode_logits(model, native=True)
    assert len(calls) == 12  # every decode step went native, the prefills did not
    assert head_calls == [20, 7]  # the prefills only: every decode step ran its LM head in the native call
    assert torch.equal(native, decode_logits(model, native=False))


# plain; q/k/v biases; QK and sandwich norms, GeGLU, windows; routed experts (softmax top-k, renormalized)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "qwen3moe", "mixtral"])
@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "F16"])  # super-block, legacy, float weights
@pytest.mark.parametrize("activations", ["q8", "q8x2"])
def test_the_same_bits_as_the_layers(arch, qtype, activations, tmp_path, monkeypatch):
    model = load_model(open_gguf(write_model(arch, tmp_path / "m.gguf", qtype=qtype)), activations=activations)
    step = model.native_step()
    assert step is not None
    assert_the_layers_bits(model, step, monkeypatch, "decode_dense")


def test_mixed_batches_and_float_activations_stay_on_the_layers(tmp_path):
    model = load_model(open_gguf(write_model("llama", tmp_path / "m.gguf", qtype="Q4_K")), activations="float")
    step = model.native_step()
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


@pytest.mark.parametrize("config", [None, V2, V3], ids=["v2-lite", "v2", "v3"])  # q direct / low-rank; softmax / grouped / sigmoid+bias
@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
@pytest.mark.parametrize("activations", ["q8", "q8x2"])
def test_mla_and_routed_experts_the_same_bits_as_the_layers(config, qtype, activations, tmp_path, monkeypatch):
    path = write_model("deepseek2", tmp_path / "m.gguf", qtype=qtype, config=config)
    model = load_model(open_gguf(path), activations=activations)
    step = model.native_step()
    assert step is not None and step.mla
    assert_the_layers_bits(model, step, monkeypatch, "decode_mla")


def test_mla_without_quantized_head_maps_stays_on_the_layers(tmp_path):
    """A legacy file (kv_b only, no attn_k_b / attn_v_b) has no per-head maps in blocks."""
    path = write_model("deepseek2", tmp_path / "m.gguf", qtype="Q4_K", config={"mla_layout": "legacy"})
    assert load_model(open_gguf(path), activations="q8").native_step() is None


def test_a_gated_shared_expert_stays_on_the_layers(tmp_path):
    """Qwen2-MoE's sigmoid-gated shared expert is not in the kernel's fused MoE."""
    model = load_model(open_gguf(write_model("qwen2moe", tmp_path / "q.gguf", qtype="Q4_K")), activations="q8")
    assert model.native_step() is None


def test_routing_kernel_against_torch():
    """kernels.route against layers/routing.py's torch route_reference, every scoring and group
    rule: the same experts and weights to float rounding (ties are measure-zero here)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 32, generator=g) * 3
    bias = torch.randn(32, generator=g) * 0.1
    cases = [dict(scoring_func="softmax", topk_method="greedy", n_group=1, topk_group=1, norm_topk_prob=False),
             dict(scoring_func="softmax", topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=True),
             dict(scoring_func="sigmoid", topk_method="noaux_tc", n_group=8, topk_group=3, norm_topk_prob=True,
                  e_score_correction_bias=bias)]  # fmt: skip
    for case in cases:
        args = dict(top_k=6, routed_scaling_factor=2.5, **case)
        w, ids = route_grouped(logits, **args)
        w_ref, ids_ref = route_reference(logits, **args)
        assert torch.equal(ids, ids_ref)
        assert torch.allclose(w, w_ref, rtol=1e-6, atol=0)


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


@pytest.mark.parametrize("arch", ["deepseek2", "qwen3moe", "llama"])  # MLA, a dense first block; GQA + experts; dense
def test_step_profile_times_the_parts_each_architecture_has(arch, tmp_path):
    """kernels.step_profile: while on, native steps charge their parts (and only the parts the
    architecture has); reading resets, off stops the timing, and the logits are the same bits."""
    model = load_model(open_gguf(write_model(arch, tmp_path / "m.gguf", qtype="Q4_K")), activations="q8")
    model.__dict__["_native_step_built"] = model.native_step()
    plain = decode_logits(model, native=True, steps=4)
    kernels.step_profile(True)
    try:
        profiled = decode_logits(model, native=True, steps=4)
        parts = kernels.step_profile(True)
        assert sum(kernels.step_profile(False).values()) == 0  # read and reset: nothing ran since
        decode_logits(model, native=True, steps=2)
        assert sum(kernels.step_profile(False).values()) == 0  # off: nothing charged
    finally:
        kernels.step_profile(False)
    assert torch.equal(plain, profiled)
    has = {"norms", "attn_proj", "attention", "head"} | {
        "deepseek2": {"mla_maps", "router", "experts", "ffn"}, "qwen3moe": {"router", "experts"}, "llama": {"ffn"}}[arch]
    assert {k for k, v in parts.items() if v > 0} == has
