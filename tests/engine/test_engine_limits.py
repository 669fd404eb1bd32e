"""One request never stops the engine: keep_alive past the clock, absurd thread counts, bad token
ids, a failing sequence in a batch, huge prompts and contexts (issue 20, items 1-5)."""

import asyncio
import math
import time

import pytest

from backend import kernels
from backend.engine.loaded_model import usable_cpus
from backend.engine.local_engine import create_engine
from backend.interface import (
    EngineError,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    SamplingParams,
)

from .claimed_context import write_claiming_context

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=8)
LOAD = LoadOptions(num_ctx=256, num_batch=32)


def request(prompt, sampling=GREEDY, **kw):
    kw.setdefault("load", LOAD)
    return GenerateRequest(model="tiny", prompt=prompt, sampling=sampling, **kw)


async def collect(engine, req, timeout=120):
    async def run():
        return [c async for c in engine.generate(req)]

    chunks = await asyncio.wait_for(run(), timeout)
    assert chunks and chunks[-1].done
    return chunks


def generated(chunks):
    final = chunks[-1]
    return list(final.context[len(final.context) - final.metrics.eval_count :])


# ---- 1. keep_alive past what the clock holds --------------------------------------------


@pytest.mark.parametrize("keep_alive", [1e10, 2600000 * 3600.0, math.inf, 1e300])
async def test_keep_alive_past_the_clock_keeps_the_model_forever(engine, keep_alive):
    await asyncio.wait_for(engine.load("tiny", LOAD, keep_alive), 60)
    (running,) = engine.running()
    assert running.expires_at == math.inf
    # The engine thread lived through its expiry wait: requests still run, and it stays loaded.
    chunks = await collect(engine, request("hello world"))
    assert chunks[-1].metrics.eval_count > 0
    assert engine._thread.is_alive() and engine.running()[0].expires_at == math.inf


async def test_a_nan_keep_alive_is_the_default(engine):
    before = time.time()
    await asyncio.wait_for(engine.load("tiny", LOAD, float("nan")), 60)
    assert before + 59 <= engine.running()[0].expires_at <= time.time() + 61


async def test_an_error_in_the_loop_is_logged_and_the_loop_goes_on(engine, caplog):
    """Whatever escapes a part of the loop (here the expiry pass) must not end the thread."""
    real_expire, failures = engine._expire_idle, []

    def expire_idle():
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("expiry broke")
        real_expire()

    engine._expire_idle = expire_idle
    chunks = await collect(engine, request("hello world"))
    assert len(failures) == 3 and "expiry broke" in caplog.text
    assert engine._thread.is_alive() and chunks[-1].metrics.eval_count > 0
    assert [m.info.name for m in engine.running()] == ["tiny:latest"]


# ---- 2. num_thread ------------------------------------------------------------------------


@pytest.mark.parametrize("num_thread", [40000, 256, 2**31])
async def test_a_thread_count_past_the_cpus_is_clamped(engine, num_thread):
    load = LoadOptions(num_ctx=256, num_batch=32, num_thread=num_thread)
    start = time.perf_counter()
    chunks = await collect(engine, request("hello world", load=load))
    assert kernels.num_threads() == usable_cpus()
    assert chunks[-1].metrics.eval_count == 8
    # 256 threads on 2 cores took 53 s for 8 tokens; the tiny model needs well under a second.
    assert time.perf_counter() - start < 30
    # The same clamped count is the same load: no reload.
    again = await collect(engine, request("hello", load=LoadOptions(num_ctx=256, num_batch=32, num_thread=usable_cpus())))
    assert again[-1].metrics.load_duration == 0


async def test_a_negative_thread_count_is_the_default(engine):
    chunks = await collect(engine, request("hello world", load=LoadOptions(num_ctx=256, num_batch=32, num_thread=-1)))
    assert chunks[-1].metrics.eval_count == 8 and 1 <= kernels.num_threads() <= usable_cpus()


# ---- 3. token ids from the client; a sequence whose forward pass fails ----------------------

LONG = SamplingParams(temperature=0, repeat_penalty=1.0, num_predict=120)


def vocab_size(engine) -> int:
    return engine._model_text(engine.get_model("tiny")).tokenizer.vocab_size


async def test_bad_token_ids_are_refused_and_a_concurrent_stream_is_untouched(engine):
    alone = generated(await collect(engine, request("the quick brown fox", LONG)))
    stream = asyncio.create_task(collect(engine, request("the quick brown fox", LONG)))
    n = vocab_size(engine)
    for context in ([10**12], [-1], [n], [5, n + 7], [2**64]):
        with pytest.raises(InvalidRequest, match=f"invalid token id {context[-1]} in context: .* ids 0 to {n - 1}"):
            await collect(engine, request("x", context=tuple(context)))
    assert generated(await stream) == alone
    ok = await collect(engine, request("x", context=(1, 2, n - 1)))  # ids at the edges are fine
    assert ok[-1].context[:3] == (1, 2, n - 1)


def test_a_sequence_whose_pass_fails_ends_alone_and_the_batch_is_recomputed(models_dir, caplog):
    """LoadedModel itself, stepped by hand: a sequence carrying a token id past the embedding
    (what arrival checks stop; here it stands for any fault of one sequence) joins a batch
    mid-stream. It alone gets the error; the other's tokens are those of its solo run."""
    from backend.engine.loaded_model import LoadedModel
    from backend.engine.local_engine import EngineConfig
    from backend.engine.model_text import ModelText
    from backend.store.model_store import ModelStore

    info = ModelStore(str(models_dir)).resolve("tiny")
    text = ModelText.load(info)
    lm = LoadedModel(info, LOAD, EngineConfig(str(models_dir), num_parallel=4), text)

    def start(prompt, tokens=None):
        req = request(prompt, LONG)
        out = []
        seq = lm.submit(req, tokens or text.prompt_tokens(req, 256), out.append, 0)
        return seq, out

    def run_until_done(*streams):
        while any(not (out and (isinstance(out[-1], Exception) or out[-1].done)) for _, out in streams):
            assert lm.step()

    seq, out = start("the quick brown fox")
    run_until_done((seq, out))
    alone = generated(out)

    good, good_out = start("the quick brown fox")
    for _ in range(10):
        lm.step()
    assert 0 < len(good.output) < 120  # decoding when the poison arrives
    bad, bad_out = start("poison", tokens=[1, 2, 10**6])
    run_until_done((good, good_out), (bad, bad_out))
    assert isinstance(bad_out[-1], EngineError) and "forward pass failed" in bad_out[-1].message
    assert "running each alone" in caplog.text
    assert generated(good_out) == alone
    assert lm.idle and all(s is None or not s.busy for s in lm.pool.slots)


# ---- 4. prompts tokenized and templates rendered off the engine thread, bounded -----------


async def _stream_gaps(engine, during):
    """Largest pause between a long stream's chunks while `during()` runs beside it."""
    stamps = []

    async def stream():
        async for chunk in engine.generate(request("the quick brown fox", LONG)):
            stamps.append(time.perf_counter())
        return chunk

    task = asyncio.create_task(stream())
    while not stamps:
        await asyncio.sleep(0.01)
    result = await during()
    final = await task
    assert final.done and final.metrics.eval_count == 120
    return result, max(b - a for a, b in zip(stamps, stamps[1:]))


async def test_a_10_mb_prompt_does_not_stall_a_concurrent_stream(engine):
    words = "the quick brown fox jumps over the lazy dog. "
    huge = words * (10 * 2**20 // len(words))

    async def big():
        start = time.perf_counter()
        chunks = await collect(engine, request(huge, SamplingParams(temperature=0, num_predict=4)))
        return chunks, time.perf_counter() - start

    (chunks, elapsed), gap = await _stream_gaps(engine, big)
    # Only num_ctx - 1 tokens are kept (the first num_keep and the tail), and only what could
    # become them is tokenized: the request takes about what a short one does.
    assert chunks[-1].metrics.prompt_eval_count <= 255 and elapsed < 10
    assert gap < 1.0, f"the stream paused {gap:.2f} s"  # 36 s when the engine thread tokenized
    with pytest.raises(InvalidRequest, match="exceeds the context length"):
        await collect(engine, request(huge, truncate=False))


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("context", [(), (1, 2, 3, 4, 5, 6)])
def test_a_cut_prompt_keeps_the_tokens_a_whole_tokenization_keeps(request, model, context):
    """Only the head and tail of a prompt far past num_ctx are tokenized; the tokens kept are
    those Ollama's rule keeps from the whole prompt's (byte-level BPE and SentencePiece)."""
    import json
    from pathlib import Path

    from backend.engine.model_text import ModelText, truncated
    from backend.text.chat_template import TemplateSource

    tokenizer = request.getfixturevalue(f"{model}_tokenizer")
    text = ModelText(tokenizer, TemplateSource(""), False, max(len(t) for t in tokenizer.tokens))
    golden = Path(__file__).parent.parent / "data" / "golden" / "corpus.json"
    corpus = "\n".join(json.loads(golden.read_text(encoding="utf-8"))["texts"])
    prompt = "<|im_start|>system\n" + corpus * (2**20 // len(corpus))
    req = GenerateRequest(model="m", prompt=prompt, context=context, sampling=SamplingParams(num_keep=8))
    whole = list(context) + tokenizer.encode(prompt, add_special=not context)
    assert len(whole) > 50_000
    for num_ctx in (256, 4096):
        assert len(prompt) > 2 * (num_ctx + 64) * text.max_token_chars  # the cut is taken
        assert text.prompt_tokens(req, num_ctx) == truncated(whole, num_ctx - 1, 8, True)


ATTACKS = {
    "nested_loops": "{% for i in range(100000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    "silent_loops": "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    "huge_string": "{{ 'a'*4000000000 }}",
    "huge_filter": "{{ 'a' | center(4000000000) }}",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_runaway_template_fails_fast_and_alone(engine, attack):
    await asyncio.to_thread(engine.create_model, f"evil-{attack}", source="tiny", template=ATTACKS[attack])
    messages = [{"role": "user", "content": "hi"}]

    async def render():
        start = time.perf_counter()
        with pytest.raises(EngineError, match=f"chat template .*model 'evil-{attack}:latest'") as caught:
            await asyncio.to_thread(engine.render_chat, f"evil-{attack}", messages)
        return caught.value, time.perf_counter() - start

    (error, elapsed), gap = await _stream_gaps(engine, render)
    assert error.status == 500 and elapsed < 6  # 57 s and 8.6 GB before
    assert gap < 1.0, f"the stream paused {gap:.2f} s"
    # The next render of a sound template is served as usual.
    prompt = await asyncio.to_thread(engine.render_chat, "tiny", messages)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


async def test_a_template_that_rejects_the_messages_is_a_400(engine):
    await asyncio.to_thread(engine.create_model, "picky", source="tiny",
                            template="{{ raise_exception('roles must alternate') }}")  # fmt: skip
    with pytest.raises(InvalidRequest, match="roles must alternate .*model 'picky:latest'"):
        await asyncio.to_thread(engine.render_chat, "picky", [{"role": "user", "content": "hi"}])


# ---- 5. num_ctx within the model's limits and free memory ---------------------------------


async def test_num_ctx_is_bounded_by_the_model_and_free_memory(tmp_path, monkeypatch):
    from backend.engine import loaded_model

    write_claiming_context(tmp_path / "liar.gguf", 2**40)
    monkeypatch.setattr(loaded_model, "available_memory", lambda: 2 * 2**30)  # the same on any machine
    eng = create_engine(str(tmp_path), num_parallel=4)
    try:
        assert eng.get_model("liar").context_length == 2**40
        huge = GenerateRequest(model="liar", prompt="hi", sampling=GREEDY, load=LoadOptions(num_ctx=10**12))
        with pytest.raises(EngineError, match=r"num_ctx 10{12} \(this model's limit is 16777216\) needs 128.0 GiB of KV "
                                              r"cache for 4 parallel sequences.* use num_ctx \d+ or less"):  # fmt: skip
            await collect(eng, huge)
        assert eng.running() == []  # nothing was allocated
        fine = GenerateRequest(model="liar", prompt="hi", sampling=GREEDY, load=LoadOptions(num_ctx=2048))
        assert (await collect(eng, fine))[-1].metrics.eval_count > 0
        assert eng.running()[0].context_length == 2048
    finally:
        eng.close()


async def test_num_ctx_past_the_training_context_is_clamped(engine, caplog):
    chunks = await collect(engine, request("hello", load=LoadOptions(num_ctx=10**12, num_batch=32)))
    assert chunks[-1].metrics.eval_count > 0
    assert engine.running()[0].context_length == 256  # the GGUF's context_length
    assert "requested context size too large for model" in caplog.text
