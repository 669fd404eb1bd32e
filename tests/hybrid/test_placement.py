"""The placement plan: Ollama's num_gpu, the memory it must fit, and what each block costs."""

from __future__ import annotations

import asyncio

import gguf
import pytest

from backend.engine.local_engine import create_engine
from backend.gguf_model import open_gguf
from backend.hybrid.placement import LayerCost, model_costs, plan, usable_memory
from backend.interface import GenerateRequest, LoadOptions, SamplingParams
from backend.models import load_model
from backend.testmodels import write_model

GiB = 2**30
COSTS = [LayerCost(weights=100, cache_per_token=1)] * 4


def usable(total: int) -> int:
    """The least free memory that leaves `total` bytes after the reserve."""
    lo, hi = total, 2 * total + 2 * GiB
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if usable_memory(mid) < total else (lo, mid)
    return lo


def test_num_gpu_counts_blocks_from_the_top_and_one_more_takes_the_head():
    free = 64 * GiB
    assert plan(COSTS, 50, free, 0, 10).gpu_layers == ()
    assert plan(COSTS, 50, free, 1, 10).gpu_layers == (3,)
    p = plan(COSTS, 50, free, 4, 10)
    assert (p.gpu_layers, p.head_on_gpu) == ((0, 1, 2, 3), False)
    p = plan(COSTS, 50, free, 5, 10)
    assert (p.gpu_layers, p.head_on_gpu, p.weights_bytes, p.cache_bytes_per_token) == ((0, 1, 2, 3), True, 450, 4)
    assert plan(COSTS, 50, free, 99, 10) == p
    assert plan(COSTS, 50, free, -1, 10) == p


def test_what_does_not_fit_stays_on_the_cpu():
    # Each block needs 100 bytes of weights and 10 of cache (10 tokens): room for two blocks.
    p = plan(COSTS, 50, usable(220), -1, 10)
    assert (p.gpu_layers, p.head_on_gpu) == ((2, 3), False)
    assert plan(COSTS, 50, usable(220), 4, 10).gpu_layers == (2, 3)  # an explicit count is lowered
    assert plan(COSTS, 50, usable(219), -1, 10).gpu_layers == (3,)
    assert plan(COSTS, 50, usable(220), -1, 11).gpu_layers == (3,)  # longer caches, one block fewer
    assert plan(COSTS, 50, usable(100), -1, 10).gpu_layers == ()
    assert plan(COSTS, 50, usable(4 * 110 + 50), -1, 10).head_on_gpu


@pytest.mark.parametrize("arch,qtype", [("llama", "Q8_0"), ("mixtral", "Q4_K")])
def test_block_costs_are_the_files_tensors_without_the_routed_experts(tmp_path, arch, qtype):
    path = write_model(arch, tmp_path / "m.gguf", qtype=qtype)
    model = load_model(open_gguf(path))
    costs, head = model_costs(model)
    reader_tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    for i, cost in enumerate(costs):
        file_bytes = sum(n for name, n in reader_tensors.items() if name.startswith(f"blk.{i}.") and "_exps" not in name)
        rope = model.layers[i].attn.inv_freq
        assert cost.weights == file_bytes + rope.numel() * 4
        heads, dim = model.layers[i].attn.num_kv_heads, model.layers[i].attn.head_dim
        assert cost.cache_per_token == 2 * heads * dim * 4  # keys and values, float32
    output = reader_tensors.get("output.weight", reader_tensors["token_embd.weight"])
    assert head == reader_tensors["output_norm.weight"] + output


async def test_engine_on_the_standin_answers_as_on_the_cpu_and_reports_vram(tmp_path, monkeypatch):
    write_model("deepseek2", tmp_path / "tiny.gguf", qtype="Q4_K", config={"max_position_embeddings": 256}, seed=2)
    request = GenerateRequest(
        model="tiny", prompt="hello there", sampling=SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=8),
        load=LoadOptions(num_ctx=128, num_batch=32, num_gpu=2),
    )

    async def answer(accelerator: str):
        engine = create_engine(str(tmp_path), num_parallel=2, accelerator=accelerator)
        try:
            chunks = [c async for c in engine.generate(request)]
            return list(chunks[-1].context), engine.running()[0]
        finally:
            engine.close()

    (cpu_tokens, cpu), (hybrid_tokens, hybrid) = await asyncio.gather(answer("none"), answer("standin"))
    assert hybrid_tokens == cpu_tokens
    assert cpu.size_vram == 0
    costs, _ = model_costs(load_model(open_gguf(tmp_path / "tiny.gguf")))
    assert len(costs) > 2
    top_two = costs[-2:]
    cache = sum(c.cache_per_token for c in top_two) * 128  # one slot of num_ctx 128 in use
    assert hybrid.size_vram == sum(c.weights for c in top_two) + cache
    assert 0 < hybrid.size_vram < hybrid.size
