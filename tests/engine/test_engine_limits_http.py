"""Issue 20's inputs for items 1-5 over HTTP, against the real engine: each is answered (200 or a
clear 4xx/5xx), and the server goes on serving."""

import time

import pytest

from backend.engine.local_engine import create_engine
from backend.testmodels import write_model
from ollama_compat.app import create_app
from ollama_compat.settings import Settings

from .claimed_context import write_claiming_context

OPTIONS = {"temperature": 0, "num_predict": 4, "num_ctx": 256}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "stream": False, "options": OPTIONS}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model("llama", root / "tiny.gguf", config={"max_position_embeddings": 256}, seed=1)
    write_claiming_context(root / "liar.gguf", 2**40)
    return root


@pytest.fixture
async def client(aiohttp_client, models_dir):
    engine = create_engine(str(models_dir), num_parallel=2, default_keep_alive=60)
    app = create_app(engine, Settings.from_env({"OLLAMA_MODELS": str(models_dir)}))
    yield await aiohttp_client(app)
    engine.close()


async def chat_works(client, **options):
    resp = await client.post("/api/chat", json={**CHAT, "options": {**OPTIONS, **options}})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["done"] and body["eval_count"] > 0
    return body


@pytest.mark.parametrize("keep_alive", [1e10, "2600000h", "inf", "1e400"])
async def test_keep_alive_past_the_clock(client, keep_alive):
    resp = await client.post("/api/generate", json={"model": "tiny", "keep_alive": keep_alive})
    assert resp.status == 200 and (await resp.json())["done_reason"] == "load"
    resp = await client.get("/api/ps")
    assert resp.status == 200
    (model,) = (await resp.json())["models"]
    assert int(model["expires_at"][:4]) > 2300  # forever: Ollama's now + 292 years
    await chat_works(client)


async def test_a_nan_keep_alive_is_a_400(client):
    resp = await client.post("/api/generate", json={"model": "tiny", "keep_alive": "nan"})
    assert resp.status == 400 and "invalid duration" in (await resp.json())["error"]


@pytest.mark.parametrize("num_thread", [40000, 256, 2**31, -1, 0, 1.5])
async def test_num_thread_is_clamped_or_the_default(client, num_thread):
    start = time.perf_counter()
    await chat_works(client, num_thread=num_thread)
    assert time.perf_counter() - start < 30  # 256 threads: 53 s for 8 tokens; 40000: the process aborted


@pytest.mark.parametrize("num_thread", [1e30, 2**64, "8", True])
async def test_nonsense_num_thread_is_a_400(client, num_thread):
    resp = await client.post("/api/chat", json={**CHAT, "options": {**OPTIONS, "num_thread": num_thread}})
    assert resp.status == 400 and '"num_thread"' in (await resp.json())["error"]
    await chat_works(client)


@pytest.mark.parametrize(("context", "error"), [
    ([1000000000000], "invalid token id 1000000000000 in context: this model's vocabulary has ids 0 to 319"),
    ([320], "invalid token id 320 in context"),  # the vocabulary's size
    ([3, 999999], "invalid token id 999999 in context"),
    ([-1], 'field "context[0]" must be between 0 and'),  # refused by the HTTP layer's field checks
])  # fmt: skip
async def test_invalid_token_ids_are_a_400(client, context, error):
    body = {"model": "tiny", "prompt": "hi", "context": context, "stream": False, "options": OPTIONS}
    resp = await client.post("/api/generate", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(error)
    await chat_works(client)


async def test_a_10_mb_prompt(client):
    words = "the quick brown fox jumps over the lazy dog. "
    body = {"model": "tiny", "prompt": words * (10 * 2**20 // len(words)), "stream": False, "options": OPTIONS}
    start = time.perf_counter()
    resp = await client.post("/api/generate", json=body)
    result = await resp.json()
    assert resp.status == 200 and result["done"] and result["prompt_eval_count"] <= 255
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    "{{ 'a'*4000000000 }}",
])  # fmt: skip
async def test_a_runaway_template_from_create(client, template):
    resp = await client.post("/api/create", json={"model": "evil", "from": "tiny", "template": template, "stream": False})
    assert resp.status == 200, await resp.text()
    start = time.perf_counter()
    resp = await client.post("/api/chat", json={**CHAT, "model": "evil"})
    error = (await resp.json())["error"]
    assert resp.status == 500 and error.startswith("chat template") and "evil:latest" in error
    assert time.perf_counter() - start < 6  # 57 s at 8.6 GB RSS before
    await chat_works(client)


async def test_num_ctx_on_a_gguf_claiming_2_40_tokens(client, monkeypatch):
    from backend.engine import loaded_model

    monkeypatch.setattr(loaded_model, "available_memory", lambda: 8 * 2**30)  # the same on any machine
    resp = await client.post("/api/chat", json={**CHAT, "model": "liar", "options": {**OPTIONS, "num_ctx": 1e12}})
    error = (await resp.json())["error"]
    assert resp.status == 500
    assert error.startswith("num_ctx 1000000000000 (this model's limit is 16777216) needs 64.0 GiB of KV cache for 2 parallel")
    assert (await (await client.get("/api/ps")).json())["models"] == []
    resp = await client.post("/api/chat", json={**CHAT, "model": "liar", "options": {**OPTIONS, "num_ctx": 4096}})
    assert resp.status == 200
