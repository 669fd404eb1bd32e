"""/v1/* through the official `openai` client and raw HTTP, over the fake engine (shapes) and the
real one (a real answer)."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace

import openai
import orjson
import pytest

from backend.interface import Chunk

from .fake_engine import BASE, METRICS

R1 = replace(BASE, name="deepseek-r1:latest", digest="2" * 64)


@pytest.fixture
async def oai(client, engine):
    engine.models[R1.name] = R1
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="ignored")


async def test_chat_completion(oai, engine):
    reply = await oai.chat.completions.create(model="mymoe", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, seed=3, stop="x", temperature=0.2,
                                              presence_penalty=0.5, frequency_penalty=0.25)  # fmt: skip
    assert reply.object == "chat.completion" and reply.choices[0].message.content == "Hello wörld"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 2, 5)
    s = engine.requests[-1].sampling
    assert (s.num_predict, s.seed, s.stop, s.temperature, s.top_p) == (5, 3, ("x",), 0.2, 1.0)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, 0.25)
    await oai.chat.completions.create(model="mymoe", messages=[{"role": "user", "content": "hi"}],
                                      max_completion_tokens=7, stop=["a", "b"], top_p=0.5)  # fmt: skip
    s = engine.requests[-1].sampling
    assert (s.num_predict, s.stop, s.top_p, s.temperature) == (7, ("a", "b"), 0.5, 1.0)  # OpenAI's default 1.0


async def test_chat_completion_stream_with_usage(oai, engine):
    engine.script = [Chunk(thinking="hmm"), Chunk(content="Hel"), Chunk(content="lo"),
                     Chunk(done=True, done_reason="length", metrics=METRICS)]  # fmt: skip
    stream = await oai.chat.completions.create(model="mymoe", messages=[{"role": "user", "content": "hi"}],
                                               stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    # Reasoning only in `reasoning`, as Ollama's openai.go Delta (once, never also as reasoning_content).
    assert chunks[0].choices[0].delta.model_extra == {"reasoning": "hmm"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5
    assert len({c.created for c in chunks}) == 1 and len({c.id for c in chunks}) == 1


async def test_tool_calls_have_string_arguments(oai, engine):
    engine.script = [Chunk(tool_calls=({"function": {"name": "f", "arguments": {"a": 1}}},)),
                     Chunk(done=True, done_reason="stop", metrics=METRICS)]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    reply = await oai.chat.completions.create(model="mymoe", messages=[{"role": "user", "content": "x"}], tools=tools)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls" and orjson.loads(call.function.arguments) == {"a": 1}


async def test_completions_models_embeddings(oai, engine):
    reply = await oai.completions.create(model="mymoe", prompt="Once")
    assert reply.choices[0].text == "Hello wörld" and engine.requests[-1].prompt == "user:Once"
    chunks = [c async for c in await oai.completions.create(model="mymoe", prompt="Once", stream=True)]
    assert "".join(c.choices[0].text for c in chunks) == "Hello wörld" and chunks[-1].choices[0].finish_reason == "stop"
    ids = [m.id async for m in oai.models.list()]
    assert sorted(ids) == ["deepseek-r1:latest", "mymoe:latest", "plain:latest"]
    assert (await oai.models.retrieve("mymoe")).id == "mymoe"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")
    emb = await oai.embeddings.create(model="mymoe", input=["a", "b"])
    # The client asks for base64 (little-endian float32) and decodes it.
    assert [d.embedding for d in emb.data] == [pytest.approx([0.6, 0.8, 0.0])] * 2 and emb.usage.prompt_tokens == 4


async def test_logprobs_in_openai_shapes(oai, engine):
    """The native scores (the fake engine's, -0.5 for "x", alternatives as asked) in chat's
    shape, streamed and whole, and in completions' legacy shape, as the openai client reads them."""
    ask = [{"role": "user", "content": "hi"}]
    reply = await oai.chat.completions.create(model="mymoe", messages=ask, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert [(e.token, e.logprob, e.bytes, [(t.token, t.logprob) for t in e.top_logprobs]) for e in content] == \
           [("x", -0.5, [120], [("x", -0.5)] * 2)] * 2  # fmt: skip
    stream = await oai.chat.completions.create(model="mymoe", messages=ask, logprobs=True, top_logprobs=1, stream=True)
    scored = [e.token for c in [c async for c in stream] if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content]  # fmt: skip
    assert scored == ["x", "x"]
    plain = await oai.chat.completions.create(model="mymoe", messages=ask)
    assert plain.choices[0].logprobs is None  # only when asked
    done = await oai.completions.create(model="mymoe", prompt="Once", logprobs=2)
    legacy = done.choices[0].logprobs
    assert (legacy.tokens, legacy.token_logprobs, legacy.top_logprobs, legacy.text_offset) == (
        ["x", "x"], [-0.5, -0.5], [{"x": -0.5}] * 2, [0, 1])
    alone = (await oai.completions.create(model="mymoe", prompt="Once", logprobs=0)).choices[0].logprobs
    assert (alone.token_logprobs, alone.top_logprobs) == ([-0.5, -0.5], [{}, {}])  # 0: the sampled tokens' only
    assert (await oai.completions.create(model="mymoe", prompt="Once")).choices[0].logprobs is None
    chunks = [c async for c in await oai.completions.create(model="mymoe", prompt="Once", logprobs=1, stream=True)]
    offsets = [o for c in chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == [0, len("Hello")]  # where each scored piece starts in the streamed text


async def test_vllm_sampling_fields_and_raw_completions(oai, engine):
    """vLLM's (and llama.cpp's) extensions are honoured, unlike Ollama's /v1, so a front's options
    arrive; "raw": true sends a completion prompt untemplated."""
    await oai.chat.completions.create(model="mymoe", messages=[{"role": "user", "content": "hi"}],
                                      extra_body={"top_k": 7, "min_p": 0.1, "repetition_penalty": 1.3})  # fmt: skip
    s = engine.requests[-1].sampling
    assert (s.top_k, s.min_p, s.repeat_penalty) == (7, 0.1, 1.3)
    await oai.completions.create(model="mymoe", prompt="Once", extra_body={"repeat_penalty": 1.2, "raw": True})
    assert engine.requests[-1].prompt == "Once" and engine.requests[-1].sampling.repeat_penalty == 1.2


async def test_errors_have_openai_shape(client):
    r = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 404
    assert await r.json() == {"error": {"message": "model 'nope' not found", "type": "not_found_error",
                                        "param": None, "code": None}}  # fmt: skip
    r = await client.post("/v1/chat/completions", json={"model": "mymoe", "messages": []})
    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/embeddings", json={"model": "mymoe", "input": "a", "encoding_format": "hex"})
    assert r.status == 400
    for path, extra in [("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                        ("/v1/completions", {"prompt": "x"})]:  # fmt: skip
        r = await client.post(path, json={"model": "mymoe", "n": 2, **extra})
        assert r.status == 400 and "n > 1" in (await r.json())["error"]["message"]


async def test_base64_embeddings(client):
    r = await client.post("/v1/embeddings", json={"model": "mymoe", "input": "a", "encoding_format": "base64"})
    raw = base64.b64decode((await r.json())["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == pytest.approx((0.6, 0.8, 0.0))


@pytest.mark.parametrize("stream", [False, "false"])
async def test_reference_deployment_requests_verbatim(client, engine, stream):
    """Our reference deployment's curl and Slack bot send exactly this (the second with a string)."""
    engine.models[R1.name] = R1
    body = b'{"messages":[{"content":"Who are you?","role":"user"}],"model":"DeepSeek-R1","stream":' + (
        b"false" if stream is False else b'"false"') + b"}"
    r = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    reply = await r.json()
    assert reply["model"] == "DeepSeek-R1" and reply["choices"][0]["message"]["content"] == "Hello wörld"


def test_real_model_through_the_openai_client(smollm2_server):
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="none")
    question = [{"role": "user", "content": "What is 2+2?"}]  # a golden prompt: llama.cpp's answer
    reply = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=16)
    assert reply.choices[0].message.content == "The answer to this classic math problem is 4."
    assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=16,
                                            stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
