"""Several sequences in one ForwardBatch give the same logits as running each alone."""

from __future__ import annotations

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.engine.kv_cache import ForwardBatch
from backend.models import load_model
from backend.testmodels import write_model

RTOL = 1e-4


def run_alone(model, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    cache = model.allocate_cache(64)
    out = []
    for tokens in steps:
        batch = ForwardBatch.single(len(tokens), cache)
        out.append(model(tokens, batch))
        batch.advance()
    return out


@pytest.mark.parametrize("arch,qtype", [("llama", "Q8_0"), ("mixtral", "Q4_K"), ("qwen2", "F32"), ("qwen2moe", "Q8_0"), ("qwen3moe", "F32")])
def test_two_sequences_in_one_batch_match_separate_runs(tmp_path, arch, qtype):
    model = load_model(open_gguf(write_model(arch, tmp_path / "m.gguf", qtype=qtype)))
    g = torch.Generator().manual_seed(1)
    # Per sequence, the tokens of each step: a prefill of different lengths, then mixed steps
    # where one sequence decodes while the other takes a chunk of prompt.
    a = [torch.randint(0, 320, (n,), generator=g) for n in (7, 1, 5, 1)]
    b = [torch.randint(0, 320, (n,), generator=g) for n in (13, 4, 1, 1)]
    ref_a, ref_b = run_alone(model, a), run_alone(model, b)
    cache_a, cache_b = model.allocate_cache(64), model.allocate_cache(64)
    for step, (ta, tb) in enumerate(zip(a, b)):
        batch = ForwardBatch((len(ta), len(tb)), (cache_a, cache_b))
        logits = model(torch.cat([ta, tb]), batch)
        batch.advance()
        (sa, ea), (sb, eb) = batch.spans()
        for got, want, name in ((logits[sa:ea], ref_a[step], "a"), (logits[sb:eb], ref_b[step], "b")):
            err = (got - want).abs().max().item()
            assert err <= RTOL * want.abs().max().item(), f"{arch} step {step} sequence {name}: error {err:.3g}"
    assert (cache_a.length, cache_b.length) == (14, 19)


def test_forward_does_not_advance_and_rewrites_the_same_positions(tmp_path):
    # The scheduler may re-run a step (e.g. after prefix reuse): a forward must only write
    # positions length.., so running it twice before advance() gives identical logits.
    model = load_model(open_gguf(write_model("qwen3moe", tmp_path / "m.gguf")))
    cache = model.allocate_cache(16)
    tokens = torch.tensor([5, 17, 99, 3])
    batch = ForwardBatch.single(4, cache)
    first = model(tokens, batch)
    assert cache.length == 0
    second = model(tokens, batch)
    assert torch.equal(first, second)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen2moe"])
def test_logits_indices_and_hidden_states(tmp_path, arch):
    # The runner asks only for the rows that sample; the embeddings endpoint for hidden states.
    model = load_model(open_gguf(write_model(arch, tmp_path / "m.gguf", qtype="Q8_0")))
    tokens = torch.arange(11) * 13 % 320
    full = model(tokens, ForwardBatch.single(11, model.allocate_cache(16)))
    rows = torch.tensor([3, 10])
    some = model(tokens, ForwardBatch.single(11, model.allocate_cache(16)), logits_indices=rows)
    assert some.shape == (2, full.shape[1])
    assert torch.allclose(some, full[rows], rtol=0, atol=RTOL * full.abs().max().item())
    hidden = model.hidden_states(tokens, ForwardBatch.single(11, model.allocate_cache(16)))
    assert hidden.shape == (11, model.args.hidden_size)
    assert torch.allclose(model.output(hidden), full, rtol=0, atol=RTOL * full.abs().max().item())
