"""The hybrid path on the stand-in accelerator: placement, copies and the asynchronous experts,
with the CPU path's bits (the stand-in runs the CPU kernels on its side)."""

from __future__ import annotations

import pytest
import torch

from backend.engine.kv_cache import ForwardBatch
from backend.gguf_model import open_gguf
from backend.hybrid.accelerator import find_accelerator
from backend.hybrid.placement import place_model
from backend.models import load_model
from backend.testmodels import model_config, write_model

# Two sequences through a prefill of different lengths, then steps where one decodes while the
# other takes a chunk of prompt: every path the engine's batches take.
STEPS = ((7, 13), (1, 4), (5, 1), (1, 1))


def run(model, vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    caches = (model.allocate_cache(64), model.allocate_cache(64))
    out = []
    for lens in STEPS:
        tokens = torch.randint(0, vocab, (sum(lens),), generator=g)
        batch = ForwardBatch(lens, caches)
        out.append(model(tokens, batch))
        batch.advance()
    return out


CASES = [
    ("llama", "Q8_0", "q8"), ("mixtral", "Q4_K", "q8"), ("mixtral", "Q4_K", "float"), ("qwen2moe", "Q8_0", "q8"),
    ("qwen3moe", "Q4_K", "q8"), ("deepseek2", "Q4_K", "q8"), ("deepseek2", "Q8_0", "float"), ("gemma3", "Q8_0", "q8"),
]  # fmt: skip


@pytest.mark.parametrize("arch,qtype,activations", CASES)
@pytest.mark.parametrize("num_gpu", [-1, 1, 100])
def test_standin_hybrid_gives_the_cpu_paths_bits(tmp_path, arch, qtype, activations, num_gpu):
    path = write_model(arch, tmp_path / "m.gguf", qtype=qtype)
    vocab = model_config(arch)["vocab_size"]
    reference = run(load_model(open_gguf(path), activations=activations), vocab)
    model = load_model(open_gguf(path), activations=activations)
    placement, hybrid = place_model(model, find_accelerator("standin"), num_gpu, cache_tokens=128)
    L = len(model.layers)
    assert placement.gpu_layers == tuple(range(L - min(L, 1 if num_gpu == 1 else L), L))
    assert placement.head_on_gpu == (num_gpu != 1)
    try:
        for step, (got, want) in enumerate(zip(run(model, vocab), reference)):
            assert torch.equal(got, want), f"{arch} {qtype} num_gpu={num_gpu}: step {step} differs from the CPU path"
    finally:
        if hybrid is not None:
            hybrid.close()


def test_placement_copies_the_top_blocks_tensors_and_leaves_the_rest(tmp_path):
    path = write_model("deepseek2", tmp_path / "m.gguf", qtype="Q4_K")
    model = load_model(open_gguf(path))
    before = {name: buf.data_ptr() for name, buf in model.named_buffers(remove_duplicate=False)}
    _, hybrid = place_model(model, find_accelerator("standin"), 1, cache_tokens=128)
    top = f"layers.{len(model.layers) - 1}."
    moved = {name for name, buf in model.named_buffers(remove_duplicate=False) if buf.data_ptr() != before[name]}
    assert moved and all(name.startswith(top) for name in moved), sorted(moved)
    assert f"{top}attn.w_uk" in moved and f"{top}attn_norm.weight" in moved
    # The routed experts stay in the CPU's map; the offloaded block's experts go through the hybrid.
    assert model.layers[-1].ffn.experts.hybrid is hybrid
    assert all(layer.ffn.experts.hybrid is None for layer in model.layers[:-1] if hasattr(layer.ffn, "experts"))
    hybrid.close()


def test_routed_experts_overlap_the_shared_ones_in_order(tmp_path):
    path = write_model("deepseek2", tmp_path / "m.gguf", qtype="Q4_K")
    model = load_model(open_gguf(path))
    _, hybrid = place_model(model, find_accelerator("standin"), -1, cache_tokens=128)
    hybrid.trace = []
    run(model, model_config("deepseek2")["vocab_size"])
    moe_layers = sum(1 for layer in model.layers if hasattr(layer.ffn, "experts"))
    # Every MoE layer of every step: the CPU experts are started before the shared experts run
    # on the device, and awaited only after them.
    assert hybrid.trace == ["submit routed", "shared start", "shared done", "routed done"] * moe_layers * len(STEPS)
    hybrid.close()
