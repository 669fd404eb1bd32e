"""A created model's system, template, parameters and messages change what the real engine runs
(not only what /api/show reports), and a model created from it inherits them."""

from __future__ import annotations

import pytest

from backend.testmodels import write_model

from .store_server import store_client

BARE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no role markers at all


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    write_model("llama", root / "base.gguf", config={"max_position_embeddings": 256}, seed=5)
    async with store_client(aiohttp_client, root, num_parallel=1) as client:
        yield client


async def create(client, **body) -> None:
    r = await client.post("/api/create", json={**body, "stream": False})
    assert r.status == 200 and await r.json() == {"status": "success"}, await r.text()


async def chat(client, model: str, text: str = "hello there", messages=(), **options) -> dict:
    """keep_alive 0: every call starts cold, so prompt_eval_count counts the whole prompt (a
    reused prefix would not be counted)."""
    messages = [*messages, {"role": "user", "content": text}]
    body = {"model": model, "messages": messages, "stream": False, "keep_alive": 0,
            "options": {"temperature": 0, "num_predict": 2, **options}}  # fmt: skip
    r = await client.post("/api/chat", json=body)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_created_settings_apply_at_generation(client):
    base = (await chat(client, "base"))["prompt_eval_count"]

    await create(client, model="limited", **{"from": "base"}, parameters={"num_predict": 3})
    assert (await chat(client, "limited", num_predict=None))["eval_count"] <= 3
    assert (await chat(client, "limited", num_predict=1))["eval_count"] == 1  # the request still wins

    await create(client, model="sys", **{"from": "base"}, system="You are a very terse assistant today.")
    assert (await chat(client, "sys"))["prompt_eval_count"] > base
    own_system = [{"role": "system", "content": "x"}]
    replaced = await chat(client, "sys", messages=own_system)
    assert replaced["prompt_eval_count"] == (await chat(client, "base", messages=own_system))["prompt_eval_count"]

    history = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate."}]
    await create(client, model="primed", **{"from": "base"}, messages=history)
    primed = (await chat(client, "primed"))["prompt_eval_count"]
    assert primed > base
    shown = await (await client.post("/api/show", json={"model": "primed"})).json()
    assert shown["messages"] == history and "MESSAGE assistant A pirate." in shown["modelfile"]
    assert "messages" not in await (await client.post("/api/show", json={"model": "base"})).json()

    await create(client, model="bare", **{"from": "base"}, template=BARE)
    shown = await (await client.post("/api/show", json={"model": "bare"})).json()
    assert shown["template"] == BARE
    assert (await chat(client, "bare"))["prompt_eval_count"] < base  # no role markers rendered

    # A model made from a created one keeps its layers unless the request replaces them.
    await create(client, model="primed2", **{"from": "primed"})
    assert (await chat(client, "primed2"))["prompt_eval_count"] == primed
    await create(client, model="bare2", **{"from": "bare"}, system="Be brief.")
    shown = await (await client.post("/api/show", json={"model": "bare2"})).json()
    assert shown["template"] == BARE and shown["system"] == "Be brief."


async def test_a_go_template_is_shown_but_the_gguf_template_renders(client):
    """Every model Ollama itself pulled carries a Go template; we cannot run it, so rendering
    falls back to the GGUF's Jinja template instead of failing."""
    go = "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"
    await create(client, model="gotmpl", **{"from": "base"}, template=go)
    shown = await (await client.post("/api/show", json={"model": "gotmpl"})).json()
    assert shown["template"] == go
    assert (await chat(client, "gotmpl"))["prompt_eval_count"] == (await chat(client, "base"))["prompt_eval_count"]


THINKING = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: <think>\n{% endif %}")  # fmt: skip


async def test_a_jinja_template_decides_the_capabilities(client):
    shown = await (await client.post("/api/show", json={"model": "base"})).json()
    assert "thinking" not in shown["capabilities"]
    await create(client, model="thinker", **{"from": "base"}, template=THINKING)
    shown = await (await client.post("/api/show", json={"model": "thinker"})).json()
    assert "thinking" in shown["capabilities"]
    reply = await chat(client, "thinker", num_predict=4)  # a random model never closes </think>
    assert reply["message"]["thinking"] and reply["message"]["content"] == ""
    r = await client.post("/api/chat", json={"model": "base", "think": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 400 and "does not support thinking" in (await r.json())["error"]
