"""/v1/* on the real engine over an Ollama-layout store holding a tiny generated DeepSeek-V2 model
named deepseek-r1: the reference deployment's requests verbatim, and the openai client."""

from __future__ import annotations

import openai
import orjson
import pytest

from backend.testmodels import write_model

from .store_server import ollama_layout, store_client

QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    gguf = write_model("deepseek2", tmp / "r1.gguf", config={"max_position_embeddings": 128}, seed=7)
    return ollama_layout(tmp / "models", "deepseek-r1", gguf)


@pytest.fixture
async def client(aiohttp_client, store):
    async with store_client(aiohttp_client, store, num_parallel=2) as client:
        yield client


@pytest.fixture
def oai(client):
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="ignored")


@pytest.mark.parametrize("stream", [b"false", b'"false"'])
async def test_reference_deployment_requests_verbatim(client, stream):
    body = b'{"messages":[{"content":"Who are you?","role":"user"}],"model":"DeepSeek-R1","stream":' + stream + b"}"
    r = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    reply = orjson.loads(await r.read())
    assert reply["object"] == "chat.completion" and reply["model"] == "DeepSeek-R1"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_through_the_openai_client(oai):
    kwargs = {"model": "deepseek-r1", "messages": QUESTION, "max_tokens": 6, "temperature": 0}
    reply = await oai.chat.completions.create(**kwargs)
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    stream = await oai.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    # max_completion_tokens is the newer name for the same limit.
    newer = await oai.chat.completions.create(**{**kwargs, "max_tokens": None}, max_completion_tokens=2)
    assert newer.usage.completion_tokens == 2


async def test_a_seed_repeats_a_sampled_answer(oai):
    kwargs = {"model": "deepseek-r1", "messages": QUESTION, "max_tokens": 12, "temperature": 1.5,
              "presence_penalty": 0.5, "frequency_penalty": 0.5}  # fmt: skip
    first = await oai.chat.completions.create(**kwargs, seed=11)
    again = await oai.chat.completions.create(**kwargs, seed=11)
    assert first.choices[0].message.content == again.choices[0].message.content


async def test_completions_models_and_embeddings(oai):
    done = await oai.completions.create(model="deepseek-r1", prompt="Once upon", max_tokens=4, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens == 4
    chunks = [c async for c in await oai.completions.create(model="deepseek-r1", prompt="Once upon", max_tokens=4,
                                                            temperature=0, stream=True)]  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert [m.id async for m in oai.models.list()] == ["deepseek-r1:latest"]
    assert (await oai.models.retrieve("DeepSeek-R1")).id == "DeepSeek-R1"
    emb = await oai.embeddings.create(model="deepseek-r1", input=["a b c", "d"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 256
    assert sum(v * v for v in emb.data[0].embedding) == pytest.approx(1.0, rel=1e-4)


async def test_unknown_model_and_bad_response_format_are_openai_errors(oai):
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as e:
        await oai.chat.completions.create(model="deepseek-r1", messages=QUESTION, response_format={"type": "xml"})
    assert "response_format" in str(e.value)


async def test_reasoning_arrives_as_reasoning(client, oai):
    """A model whose template opens <think> reasons first; a random model never closes it, so
    everything it writes is reasoning and the answer stays empty."""
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}<think>\n"
    r = await client.post("/api/create", json={"model": "r1think", "from": "deepseek-r1", "template": template,
                                              "stream": False})  # fmt: skip
    assert r.status == 200
    reply = await oai.chat.completions.create(model="r1think", messages=QUESTION, max_tokens=5, temperature=0)
    message = reply.choices[0].message
    assert message.model_extra["reasoning"] and message.content == ""
    assert "reasoning_content" not in message.model_extra  # once, in Ollama's field
    assert reply.usage.completion_tokens == 5
    stream = await oai.chat.completions.create(model="r1think", messages=QUESTION, max_tokens=5, temperature=0,
                                               stream=True)  # fmt: skip
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    reasoning = "".join(d.model_extra.get("reasoning") or "" for d in deltas)
    assert reasoning == message.model_extra["reasoning"]
    assert not any("reasoning_content" in d.model_extra for d in deltas)
