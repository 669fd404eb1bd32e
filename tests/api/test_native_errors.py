"""Native /api/* negative cases against the fake engine: OLLAMA_API.md §9's table, names,
capabilities, option types and the lenient parsing real clients need."""

from __future__ import annotations

import orjson
import pytest

from .conftest import ndjson

JSON = "application/json; charset=utf-8"
CHAT = {"model": "mymoe", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "path,body,status,error",
    [
        ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": "", "messages": []}, 400, "model is required"),
        ("/api/generate", {"model": "", "prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {**CHAT, "think": "extreme"}, 400,
         'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'),
        ("/api/chat", {**CHAT, "model": "plain", "think": True}, 400, '"plain" does not support thinking'),
        ("/api/chat", {**CHAT, "top_logprobs": 21}, 400, "top_logprobs must be between 0 and 20"),
        ("/api/chat", {**CHAT, "options": {"stop": "x"}}, 400, 'option "stop" must be of type array'),
        ("/api/chat", {**CHAT, "keep_alive": True}, 400, "Unsupported type: 'bool'"),
        ("/api/chat", {**CHAT, "keep_alive": "soon"}, 400, 'time: invalid duration "soon"'),
        ("/api/chat", {**CHAT, "format": "xml"}, 400,
         'invalid format: "xml"; expected "json" or a valid JSON Schema object'),
        ("/api/generate", {"model": "mymoe", "prompt": "x", "suffix": "y"}, 400, "mymoe:latest does not support insert"),
        ("/api/chat", {**CHAT, "model": "plain", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
         "plain:latest does not support tools"),
        ("/api/generate", {"model": "mymoe", "prompt": "x", "images": ["aGk="]}, 400, '"mymoe" does not support images'),
    ],
)  # fmt: skip
async def test_errors(client, path, body, status, error):
    r = await client.post(path, json=body)
    assert r.status == status and r.headers["Content-Type"] == JSON
    assert await r.json() == {"error": error}


async def test_body_errors_and_leniency(client, engine):
    r = await client.post("/api/chat", data=b"")
    assert r.status == 400 and await r.json() == {"error": "missing request body"}
    r = await client.post("/api/chat", data=b"{nope")
    assert r.status == 400 and "error" in await r.json()
    # curl -d: form-urlencoded content type, JSON body; null/""/[] as unset; unknown keys ignored.
    body = {"model": "mymoe", "messages": [{"role": "USER", "content": None, "images": []}], "options": None,
            "format": "", "system": "", "tool_choice": "auto", "stream": False}  # fmt: skip
    r = await client.post("/api/chat", data=orjson.dumps(body), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer "})  # fmt: skip
    assert r.status == 200
    assert engine.rendered[-1]["messages"] == [{"role": "user", "content": "", "images": []}]
    r = await client.post("/api/chat", json={**CHAT, "options": {"mirostat": 2, "num_gqa": 8, "bogus": 1}})
    assert r.status == 200  # obsolete and unknown option keys are ignored
    r = await client.get("/api/nothing")
    assert r.status == 404 and await r.text() == "404 page not found"
    r = await client.post("/api/chat", json=CHAT, headers={"Content-Type": "application/json"}, data=None)
    assert r.status == 200


@pytest.mark.parametrize(
    "options,error",
    [({"temperature": "hot"}, 'option "temperature" must be of type number'),
     ({"num_ctx": "4k"}, 'option "num_ctx" must be of type integer'),
     ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
     ({"stop": ["a", 1]}, 'option "stop" must be of type array'),
     ({"temperature": None, "seed": None}, None)],  # null values are skipped
)  # fmt: skip
async def test_option_types(client, engine, options, error):
    r = await client.post("/api/chat", json={**CHAT, "options": options, "stream": False})
    if error is None:
        assert r.status == 200 and engine.requests[-1].sampling.temperature == 0.8
    else:
        assert (r.status, await r.json()) == (400, {"error": error})


@pytest.mark.parametrize(
    "method,path,body,status,error",
    [
        ("POST", "/api/chat", {**CHAT, "model": "../etc/passwd"}, 400, "invalid model name"),
        ("POST", "/api/generate", {"model": "a b", "prompt": "x"}, 400, "invalid model name"),
        ("POST", "/api/show", {"model": "x:"}, 400, "invalid model name"),
        ("DELETE", "/api/delete", {"model": "../x"}, 400, 'name "../x" is invalid'),
        ("POST", "/api/embed", {"input": "a"}, 404, "model '' not found"),
        ("POST", "/api/generate", {"model": "mymoe", "top_logprobs": 21}, 400, "top_logprobs must be between 0 and 20"),
        ("POST", "/api/generate", {"model": "plain", "think": True}, 400, '"plain" does not support thinking'),
        ("POST", "/api/chat", {**CHAT, "model": "embedder"}, 400, '"embedder" does not support chat'),
        ("POST", "/api/generate", {"model": "embedder", "prompt": "x"}, 400, '"embedder" does not support generate'),
        ("POST", "/api/generate", {"model": "embedder"}, 400, '"embedder" does not support generate'),
    ],
)  # fmt: skip
async def test_name_and_capability_errors(client, engine, method, path, body, status, error):
    engine.add_embedding_model()
    r = await client.request(method, path, json=body)
    assert (r.status, await r.json()) == (status, {"error": error})


async def test_unload_needs_no_capability_check(client, engine):
    engine.add_embedding_model()
    r = await client.post("/api/generate", json={"model": "embedder", "keep_alive": 0})
    assert (await r.json())["done_reason"] == "unload"


async def test_empty_strings_mean_unset(client, engine):
    lines = ndjson(await (await client.post("/api/chat", json={**CHAT, "stream": "", "think": ""})).text())
    assert lines[-1]["done"] is True  # "" streams, as absent does
    assert engine.rendered[-1]["think"] is True  # "" think is unset: on for a thinking model
