"""The engine end to end on a generated model: batching, seeds, cancellation, reuse, faults."""

import asyncio
import logging
import re

import pytest

from backend.engine.local_engine import create_engine
from backend.interface import (
    EngineError,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    ModelNotFound,
    SamplingParams,
)
from backend.engine.sampling import Sampler
from backend.engine.sequence import bounded_num_predict
from backend.testmodels import write_model

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=12)
PROMPTS = ["hello world", "the quick brown fox", "a b c d e f g", "tiny"]


def request(prompt, sampling=GREEDY, **kw):
    kw.setdefault("load", LoadOptions(num_ctx=256, num_batch=32))
    return GenerateRequest(model="tiny", prompt=prompt, sampling=sampling, **kw)


async def collect(engine, req):
    chunks = [c async for c in engine.generate(req)]
    assert chunks and chunks[-1].done and sum(c.done for c in chunks) == 1
    return chunks


def generated(chunks):
    final = chunks[-1]
    return list(final.context[len(final.context) - final.metrics.eval_count:])


async def test_batched_decoding_equals_sequential(engine):
    alone = [generated(await collect(engine, request(p))) for p in PROMPTS]
    together = await asyncio.gather(*(collect(engine, request(p)) for p in PROMPTS))
    assert [generated(c) for c in together] == alone
    assert all(len(g) == 12 or c[-1].done_reason == "stop" for g, c in zip(alone, together))


async def test_seeded_sampling_is_reproducible_under_load(engine):
    seeded = SamplingParams(temperature=1.2, top_k=0, top_p=1.0, seed=1234, num_predict=10)
    alone = generated(await collect(engine, request("once upon", seeded)))
    noisy = [request(p, SamplingParams(temperature=1.0, num_predict=10)) for p in PROMPTS]
    results = await asyncio.gather(collect(engine, request("once upon", seeded)),
                                   *(collect(engine, r) for r in noisy))
    assert generated(results[0]) == alone


async def test_metrics_are_measured(engine):
    final = (await collect(engine, request("hello there")))[-1]
    m = final.metrics
    assert m.prompt_eval_count > 0 and m.eval_count > 0
    assert m.prompt_eval_duration > 0 and m.eval_duration > 0
    assert m.total_duration >= m.prompt_eval_duration + m.eval_duration
    assert final.done_reason in ("stop", "length")


async def test_eval_duration_includes_each_tokens_draw(engine, monkeypatch):
    """eval_duration is the time a token costs, its draw included (Ollama's runner times the
    whole generation): the CLI's eval rate once counted only the forward passes, and hid a
    sampler that took 4 ms a token on a 49k vocabulary."""
    import time

    real_call = Sampler.__call__

    def slow(self, logits, history):
        time.sleep(0.02)
        return real_call(self, logits, history)

    monkeypatch.setattr(Sampler, "__call__", slow)
    m = (await collect(engine, request("hello there")))[-1].metrics
    assert m.eval_count >= 2
    # The first draw ends the prompt's part; each later token's draw is generation time.
    assert m.eval_duration >= (m.eval_count - 1) * 20_000_000
    assert m.prompt_eval_duration >= 20_000_000


async def test_second_turn_reuses_the_cached_prefix(engine, caplog):
    """prompt_eval_count is the whole prompt, as Ollama reports it (its runner counts the inputs
    before trimming the cached prefix); the reuse shows in the debug log."""
    caplog.set_level(logging.DEBUG, logger="backend.engine.loaded_model")
    first_prompt = "the same long system prompt and a first question"
    first = (await collect(engine, request(first_prompt)))[-1]
    second = (await collect(engine, request(first_prompt + " and more")))[-1]
    whole = len(first.context) - first.metrics.eval_count
    assert first.metrics.prompt_eval_count == whole
    assert second.metrics.prompt_eval_count == len(second.context) - second.metrics.eval_count > whole
    done = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    computed, cached = re.search(r"(\d+) computed, (\d+) from the cache", done[-1]).groups()
    assert int(cached) >= whole - 1 and int(computed) + int(cached) == second.metrics.prompt_eval_count


async def test_cancel_frees_capacity(models_dir):
    eng = create_engine(str(models_dir), num_parallel=1, default_keep_alive=60)
    try:
        endless = request("go on forever", SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=-1))
        stream = eng.generate(endless)
        await stream.__anext__()
        await stream.aclose()  # what the HTTP layer does when the client disconnects
        chunks = await asyncio.wait_for(collect(eng, request("next")), timeout=60)
        assert chunks[-1].done
    finally:
        eng.close()


async def test_oversized_prompt_is_truncated_or_rejected(engine):
    long_prompt = " ".join(["word"] * 400)
    small = LoadOptions(num_ctx=64, num_batch=32)
    final = (await collect(engine, request(long_prompt, load=small)))[-1]
    assert final.metrics.prompt_eval_count <= 63
    with pytest.raises(InvalidRequest, match="exceeds the context length"):
        await collect(engine, request(long_prompt, load=small, truncate=False))


async def test_stop_string_ends_generation_without_emitting_it(engine):
    base = await collect(engine, request("hello world", SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=12)))
    text = "".join(c.content for c in base)
    if len(text) < 4:
        pytest.fail(f"model produced too little text to test stops: {text!r}")
    stop = text[2:4]
    stopped = await collect(engine, request("hello world", SamplingParams(
        temperature=0, repeat_penalty=1.0, num_predict=12, stop=(stop,))))
    out = "".join(c.content for c in stopped)
    assert out == text[: text.find(stop)]
    assert stopped[-1].done_reason == "stop"


async def test_a_poisoned_request_fails_alone(engine, monkeypatch):
    real_call = Sampler.__call__

    def poisoned(self, logits, history):
        if self.params.seed == 666:
            raise ValueError("poison")
        return real_call(self, logits, history)

    monkeypatch.setattr(Sampler, "__call__", poisoned)
    bad = request("x", SamplingParams(temperature=0, seed=666, num_predict=5))
    good = [request(p) for p in PROMPTS[:2]]
    results = await asyncio.gather(collect(engine, bad), *(collect(engine, r) for r in good),
                                   return_exceptions=True)
    assert isinstance(results[0], EngineError) and "poison" in str(results[0])
    assert all(isinstance(r, list) and r[-1].done for r in results[1:])


async def test_unknown_model_and_keep_alive(engine):
    with pytest.raises(ModelNotFound):
        await collect(engine, GenerateRequest(model="nope", prompt="x"))
    await engine.load("tiny", LoadOptions(num_ctx=256), keep_alive=60)
    assert [m.info.name for m in engine.running()] == ["tiny:latest"]
    await engine.unload("tiny")
    assert engine.running() == []


async def test_embeddings_are_mean_pooled_hidden_states(engine, models_dir):
    """Oracle: transformers' LlamaModel on the same weights, last (normed) hidden state, mean."""
    import torch

    from backend.testmodels.hf_state import hf_model

    texts = ["hello world", "another input"]
    result = await engine.embed("tiny", texts)
    tokenizer = _tokenizer(engine)
    ids = [tokenizer.encode(t) for t in texts]
    assert result.prompt_eval_count == sum(map(len, ids))
    hf = hf_model("llama", models_dir / "tiny.gguf", {"max_position_embeddings": 256})
    for vector, tokens in zip(result.embeddings, ids):
        with torch.no_grad():
            hidden = hf.model(torch.tensor([tokens])).last_hidden_state[0]
        expected = hidden.mean(dim=0)
        torch.testing.assert_close(torch.tensor(vector), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


async def test_requested_thinking_is_forced_open(engine):
    """R1 sometimes answers without "<think>": asked to think, the engine opens the block itself
    and everything up to "</think>" is reasoning, never content."""
    plain = await collect(engine, request("hello world"))
    forced = await collect(engine, request("hello world", think=True))
    n = prompt_len(plain)
    assert prompt_len(forced) == n + 2
    tokenizer = _tokenizer(engine)
    assert tokenizer.decode(forced[-1].context[n : n + 2]) == "<think>\n"
    text = "".join(c.content for c in forced)
    thinking = "".join(c.thinking for c in forced)
    generated_text = tokenizer.decode(generated(forced))
    if "</think>" not in generated_text:
        assert text == "" and thinking.strip()
    # A prompt that already opened the block is left alone.
    opened = await collect(engine, request("hello world<think>\n", think=True))
    assert prompt_len(opened) == n + 2


def prompt_len(chunks):
    final = chunks[-1]
    return len(final.context) - final.metrics.eval_count


def _tokenizer(engine):
    from backend.gguf_model import open_gguf
    from backend.text.tokenizer import Tokenizer

    return Tokenizer.from_metadata(open_gguf(engine.get_model("tiny").paths[0]).metadata)


def test_a_context_past_free_memory_is_refused_with_what_fits(monkeypatch):
    from backend.engine import loaded_model as model_loader

    monkeypatch.setattr(model_loader, "available_memory", lambda: 10 * 2**20)
    assert model_loader._fit_context(4096, 4, 100) == 4096  # 1.6 MB fits in 8 MB
    fits = int(0.8 * 10 * 2**20) // 4000
    with pytest.raises(EngineError, match=f"num_ctx 4096 needs 15.6 MiB .* use num_ctx {fits} or less"):
        model_loader._fit_context(4096, 4, 1000)
    with pytest.raises(EngineError, match="free some memory"):
        model_loader._fit_context(4096, 4, 100_000)



def test_grammar_mask_drives_random_logits_to_the_schema(tmp_path):
    """The mask alone turns noise into a document that parses and fits a finite schema; rows
    past the vocabulary (padded output heads) are never allowed."""
    import json

    import torch

    from backend.gguf_model import open_gguf
    from backend.text.grammar import GrammarCompiler
    from backend.text.tokenizer import Tokenizer

    write_model("llama", tmp_path / "t.gguf", seed=3)
    tokenizer = Tokenizer.from_metadata(open_gguf(tmp_path / "t.gguf").metadata)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    compiler = GrammarCompiler(tokenizer)
    for seed in range(5):
        mask, noise, out = compiler.compile(schema), torch.Generator().manual_seed(seed), []
        while not mask.finished:
            logits = mask.apply(torch.randn(tokenizer.vocab_size + 3, generator=noise))
            assert torch.isinf(logits[tokenizer.vocab_size :]).all()
            token = int(logits.argmax())
            mask.accept(token)
            out.append(token)
            assert len(out) < 64
        assert json.loads(tokenizer.decode(out)) in ({"ok": True}, {"ok": False})


async def test_a_full_context_shifts_unless_the_request_says_not_to(engine):
    """Ollama's context shift: generation past num_ctx drops old tokens and goes on; with
    `shift: false` (or num_predict -2) a full context ends the answer with done_reason length."""
    small = LoadOptions(num_ctx=32, num_batch=32)
    long = SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=48)
    shifted = (await collect(engine, request("hello world", long, load=small)))[-1]
    assert shifted.metrics.eval_count == 48 and shifted.done_reason == "length"
    unshifted = (await collect(engine, request("hello world", long, load=small, shift=False)))[-1]
    full = (await collect(engine, request("hello world", SamplingParams(
        temperature=0, repeat_penalty=1.0, num_predict=-2), load=small)))[-1]
    # Both stop at the wall: the prompt's tokens plus the answer fill the 32 positions.
    assert unshifted.done_reason == full.done_reason == "length"
    assert unshifted.metrics.prompt_eval_count + unshifted.metrics.eval_count == 32
    assert full.metrics.prompt_eval_count + full.metrics.eval_count == 32


@pytest.mark.parametrize("num_predict, num_ctx, want", [
    (-1, 2048, 20480), (100, 2048, 100), (30000, 2048, 20480), (-1, 0, -1),
])  # fmt: skip
def test_open_ended_generation_gets_ollamas_budget(num_predict, num_ctx, want):
    """Ollama's own table (llm/llama_server_test.go TestBoundedNumPredict)."""
    assert bounded_num_predict(num_predict, num_ctx) == want


async def test_a_request_without_num_predict_ends_after_ten_contexts(engine):
    """No num_predict on a model that never emits EOS: the context shifts, and the answer ends
    with done_reason "length" after 10 x num_ctx tokens, as Ollama's boundedNumPredict."""
    small = LoadOptions(num_ctx=32, num_batch=32)
    endless = SamplingParams(temperature=0, repeat_penalty=1.0)  # num_predict -1, the default
    final = (await collect(engine, request("hello world", endless, load=small)))[-1]
    assert final.done_reason == "length" and final.metrics.eval_count == 10 * 32
