"""End to end: the real engine on SmolLM2 behind the real server, driven by the official `ollama`
client and by raw HTTP for framing, disconnects and responsiveness."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import ollama
import orjson
import pytest

from .conftest import ndjson
from .live_server import Server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}
# A golden chat prompt and llama.cpp's own greedy answer to it (tests/data/golden/smollm2.json),
# on which our float and 8-bit-activation arithmetic both agree with llama.cpp to the last token.
SUM = [{"role": "user", "content": "What is 2+2?"}]
LLAMA_CPP_SUM = "The answer to this classic math problem is 4."


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    os.symlink(smollm2_gguf, root / "smollm2.gguf")
    os.symlink(smollm2_gguf, root / "scratch.gguf")  # deleted by a test (only the link goes)
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url)


def test_official_client_chat_and_generate(client):
    reply = client.chat(model="smollm2", messages=SUM, options=GREEDY)
    assert reply.message.content == LLAMA_CPP_SUM and reply.done_reason == "stop"
    assert reply.eval_count == 12 and reply.prompt_eval_count > 0 and reply.total_duration >= reply.eval_duration
    parts = list(client.chat(model="smollm2", messages=SUM, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content  # same greedy answer
    assert parts[-1].done and sum(p.done for p in parts) == 1
    gen = client.generate(model="smollm2", prompt="What is 2+2?", options=GREEDY)  # the same chat template
    assert gen.response == LLAMA_CPP_SUM and gen.context
    streamed = "".join(p.response for p in client.generate(model="smollm2", prompt="What is 2+2?", options=GREEDY,
                                                           stream=True))  # fmt: skip
    assert streamed == gen.response


def test_official_client_listing_show_ps_embed(client):
    names = [m.model for m in client.list().models]
    assert "smollm2:latest" in names
    shown = client.show("smollm2")
    assert shown.modelinfo["general.architecture"] == "llama" and shown.details.quantization_level == "Q4_1"
    assert "completion" in shown.capabilities
    client.chat(model="smollm2", messages=QUESTION, options={"num_predict": 1})
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]
    vectors = client.embed(model="smollm2", input=["Paris is in France.", "Berlin is in Germany."]).embeddings
    assert len(vectors) == 2 and abs(sum(v * v for v in vectors[0]) - 1) < 1e-5
    client.delete("scratch")
    assert "scratch:latest" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="does-not-exist", messages=QUESTION)
    assert e.value.status_code == 404


def test_format_schema_through_the_client(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    reply = client.chat(model="smollm2", messages=QUESTION, options={"temperature": 0, "num_predict": 40}, format=schema)
    assert "Paris" in orjson.loads(reply.message.content)["capital"]


async def test_curl_style_stream_is_framed_per_token(server):
    async with aiohttp.ClientSession() as session:
        body = orjson.dumps({"model": "smollm2", "messages": QUESTION, "options": GREEDY})
        async with session.post(f"{server.url}/api/chat", data=body,
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:  # fmt: skip
            assert r.headers["Content-Type"] == "application/x-ndjson"
            lines = ndjson((await r.read()).decode())
    # One line per token: the framing is the point here (test_official_client_chat_and_generate
    # checks what the model says).
    assert len(lines) > 3 and all(line["message"]["content"] for line in lines[:-1])


async def test_disconnect_frees_the_engine_and_listings_stay_instant(server):
    """One slot (num_parallel=1): if the abandoned stream kept running, the next request would
    wait for its 2,000 tokens."""
    async with aiohttp.ClientSession() as session:
        body = {"model": "smollm2", "messages": QUESTION, "options": {"num_predict": 2000, "temperature": 1}}
        async with session.post(f"{server.url}/api/chat", json=body) as r:
            await r.content.readline()
            started = time.perf_counter()
            async with session.get(f"{server.url}/api/tags") as tags:  # while it generates
                assert tags.status == 200
            assert time.perf_counter() - started < 2.0
        # The response is closed here, mid-stream: the server cancels the sequence.
        started = time.perf_counter()
        async with session.post(f"{server.url}/api/chat", json={**body, "options": GREEDY, "stream": False}) as r:
            reply = await r.json()
        assert reply["message"]["content"] and reply["eval_count"] > 0
        assert time.perf_counter() - started < 30


async def test_listings_answer_while_a_long_prompt_is_processed(server):
    """Prefill runs on the engine's thread: the event loop keeps answering /api/tags, /api/ps
    and / while a long prompt is being read."""
    prompt = " ".join(f"item {i} is a town;" for i in range(60)) + " Name one."
    body = {"model": "smollm2", "prompt": prompt, "stream": False, "options": {"num_predict": 1}}
    async with aiohttp.ClientSession() as session:
        warm = {**body, "prompt": "Hi"}  # the model loaded first: this test is about the prompt
        async with session.post(f"{server.url}/api/generate", json=warm) as r:
            assert r.status == 200
        pending = asyncio.ensure_future(session.post(f"{server.url}/api/generate", json=body))
        await asyncio.sleep(0.3)  # the prompt is in the engine now
        slowest = 0.0
        for path in ("/api/tags", "/api/ps", "/", "/api/version"):
            started = time.perf_counter()
            async with session.get(server.url + path) as r:
                assert r.status == 200
            slowest = max(slowest, time.perf_counter() - started)
        still_running = not pending.done()
        async with await pending as r:
            done = await r.json()
    assert still_running, "the prompt finished too soon to prove anything; make it longer"
    assert done["prompt_eval_count"] > 300 and slowest < 0.5, slowest


@pytest.mark.parametrize(
    "options",
    [{"temperature": 1e-300}, {"temperature": 1e-40}, {"repeat_penalty": 0}, {"repeat_penalty": 1e-300},
     {"presence_penalty": -1e308}, {"frequency_penalty": 1e308, "temperature": 1e300}],
)  # fmt: skip
def test_extreme_sampling_options_still_give_tokens(client, options):
    """Values Ollama accepts (its float32 holds 1e-300 as 0 and -1e308 as -inf) made NaN in
    sampling, a 500. Now they decode: a temperature that small is greedy, so its answer is the
    greedy one; penalties past float32's range still leave finite logits to draw from (a
    repeat_penalty of 0 sends every repeated token to the top, the end of turn among them, so
    such a reply may stop before its 6 tokens)."""
    reply = client.chat(model="smollm2", messages=SUM, options={"num_predict": 6, "seed": 1, **options})
    assert reply.message.content.strip()
    assert reply.eval_count == 6 or (reply.done_reason == "stop" and reply.eval_count >= 1), reply
    if options.get("temperature", 1) < 1e-38:
        greedy = client.chat(model="smollm2", messages=SUM, options={"num_predict": 6, "temperature": 0})
        assert reply.message.content == greedy.message.content


def test_keep_alive_expiry_unloads(client):
    """Last in this module: it leaves the model unloaded."""
    client.generate(model="smollm2", prompt="", keep_alive="1s")  # a load call
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]
    deadline = time.time() + 10
    while client.ps().models and time.time() < deadline:
        time.sleep(0.25)
    assert client.ps().models == []
