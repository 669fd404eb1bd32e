"""Native /api/* against the fake engine: shapes, statuses, content types and framing of OLLAMA_API.md."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from backend.interface import Chunk

from .conftest import ndjson
from .disconnects import assert_disconnect_cancels
from .fake_engine import METRICS

JSON = "application/json; charset=utf-8"
METRIC_KEYS = {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration"}  # fmt: skip
CHAT = {"model": "mymoe", "messages": [{"role": "user", "content": "hi"}]}


def assert_rfc3339(value: str) -> None:
    assert re.search(r"(Z|[+-]\d\d:\d\d)$", value), value  # Go clients need the zone
    dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_root_and_version(client):
    for method in ("GET", "HEAD"):
        r = await client.request(method, "/")
        assert r.status == 200 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await (await client.get("/")).text() == "Ollama is running"
    r = await client.get("/api/version")
    assert r.headers["Content-Type"] == JSON
    version = (await r.json())["version"]
    assert all(part.isdigit() for part in version.split("."))  # Open WebUI int()s each part
    assert (await client.head("/api/version")).status == 200


async def test_tags(client):
    r = await client.get("/api/tags")
    assert r.status == 200 and r.headers["Content-Type"] == JSON
    models = (await r.json())["models"]
    assert [m["name"] for m in models] == ["mymoe:latest", "plain:latest"]  # newest first
    entry = models[0]
    assert entry["model"] == entry["name"] and "expires_at" not in entry
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"]) and isinstance(entry["size"], int)
    assert entry["details"] == {"parent_model": "", "format": "gguf", "family": "qwen3moe", "families": ["qwen3moe"],
                                "parameter_size": "30.5B", "quantization_level": "Q4_K_M"}  # fmt: skip
    assert_rfc3339(entry["modified_at"])


async def test_empty_lists_are_arrays(client, engine):
    engine.models.clear()
    assert await (await client.get("/api/tags")).json() == {"models": []}
    assert await (await client.get("/api/ps")).json() == {"models": []}


async def test_show(client):
    r = await client.post("/api/show", json={"model": "MyMoE"})  # names match case-insensitively
    assert r.status == 200 and r.headers["Content-Type"] == JSON
    body = await r.json()
    assert body["model_info"]["qwen3moe.expert_count"] == 128
    assert body["model_info"]["tokenizer.ggml.tokens"] == []  # long arrays elided without verbose
    assert body["capabilities"] == ["completion", "tools", "thinking"]
    assert body["details"]["family"] == "qwen3moe" and "FROM " in body["modelfile"]
    verbose = await (await client.post("/api/show", json={"name": "mymoe", "verbose": True})).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 6
    r = await client.post("/api/show", json={"model": "nope"})
    assert r.status == 404 and await r.json() == {"error": "model 'nope' not found"}
    r = await client.post("/api/show", json={})
    assert r.status == 400 and await r.json() == {"error": "model is required"}
    r = await client.get("/api/show")
    assert r.status == 405


async def test_chat_stream_framing(client):
    r = await client.post("/api/chat", json={**CHAT, "model": "mymoe"})
    assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
    assert "Content-Encoding" not in r.headers
    lines = ndjson(await r.text())
    assert all(line["model"] == "mymoe" and line["message"]["role"] == "assistant" for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == "Hello wörld"
    for line in lines[:-1]:
        assert not METRIC_KEYS & line.keys() and line["done"] is False
        assert_rfc3339(line["created_at"])
    final = lines[-1]
    assert final["message"] == {"role": "assistant", "content": ""} and final["done_reason"] == "stop"
    assert {k: final[k] for k in METRIC_KEYS} == {k: getattr(METRICS, k) for k in METRIC_KEYS}
    assert all(isinstance(final[k], int) for k in METRIC_KEYS) and "context" not in final


@pytest.mark.parametrize("stream", [False, "false"])  # the string form comes from a Slack bot
async def test_chat_without_streaming(client, stream):
    r = await client.post("/api/chat", json={**CHAT, "stream": stream})
    assert r.status == 200 and r.headers["Content-Type"] == JSON
    body = await r.json()
    assert body["message"] == {"role": "assistant", "content": "Hello wörld"}
    assert body["done"] is True and body["done_reason"] == "stop" and body["eval_count"] == 2


async def test_generate_stream_and_context(client, engine):
    lines = ndjson(await (await client.post("/api/generate", json={"model": "mymoe", "prompt": "hi"})).text())
    assert "".join(line["response"] for line in lines) == "Hello wörld"
    assert lines[-1]["context"] == [1, 2, 3] and lines[-1]["response"] == ""
    assert engine.rendered[-1]["messages"] == [{"role": "user", "content": "hi"}]
    raw = await client.post("/api/generate", json={"model": "mymoe", "prompt": "verbatim", "raw": True, "stream": False})
    body = await raw.json()
    assert "context" not in body and engine.requests[-1].prompt == "verbatim"
    r = await client.post("/api/generate", json={"model": "mymoe", "prompt": "x", "raw": True, "system": "s"})
    assert r.status == 400 and (await r.json())["error"] == "raw mode does not support template, system, or context"
    await client.post("/api/generate", json={"model": "mymoe", "prompt": "x", "context": [7, 8], "system": "be brief"})
    assert engine.requests[-1].context == (7, 8)
    assert engine.rendered[-1]["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("path,empty", [("/api/chat", {"messages": []}), ("/api/generate", {"prompt": ""})])
async def test_load_and_unload_calls(client, engine, path, empty):
    r = await client.post(path, json={"model": "mymoe", **empty, "stream": True})
    assert r.status == 200 and r.headers["Content-Type"] == JSON  # one object even when streaming
    body = await r.json()
    assert body["done"] is True and body["done_reason"] == "load" and "mymoe:latest" in engine.loaded
    r = await client.post(path, json={"model": "mymoe", "keep_alive": 0})
    assert (await r.json())["done_reason"] == "unload" and engine.loaded == {}
    ps = await (await client.get("/api/ps")).json()
    assert ps == {"models": []}


async def test_ps_after_load(client):
    await client.post("/api/generate", json={"model": "mymoe", "keep_alive": "1h"})
    entry = (await (await client.get("/api/ps")).json())["models"][0]
    assert entry["model"] == "mymoe:latest" and entry["context_length"] == 4096 and entry["size_vram"] == 0
    assert_rfc3339(entry["expires_at"])


@pytest.mark.parametrize(
    "value,seconds",
    [(10, 10.0), (1.5, 1.5), ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("-1m", -60.0), ("-1", -1.0)],
)
async def test_keep_alive_forms(client, engine, value, seconds):
    await client.post("/api/generate", json={"model": "mymoe", "keep_alive": value})
    assert engine.loaded["mymoe:latest"] == pytest.approx(seconds)


async def test_options_reach_the_engine(client, engine):
    options = {"temperature": 0, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "typical_p": 0.9, "repeat_penalty": 1.2,
               "repeat_last_n": 32, "presence_penalty": 0.3, "frequency_penalty": 0.4, "seed": 42, "stop": ["\n\n"],
               "num_predict": 7, "num_keep": 2, "num_ctx": 1024.0, "num_batch": 64, "num_thread": 1, "num_gpu": 0,
               "main_gpu": 0, "use_mmap": True, "draft_num_predict": 4, "top_p_unknown": 1}  # fmt: skip
    await client.post("/api/chat", json={**CHAT, "options": options, "stream": False})
    s, load = engine.requests[-1].sampling, engine.requests[-1].load
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.typical_p) == (0, 5, 0.5, 0.1, 0.9)
    assert (s.repeat_penalty, s.repeat_last_n, s.presence_penalty, s.frequency_penalty) == (1.2, 32, 0.3, 0.4)
    assert (s.seed, s.stop, s.num_predict, s.num_keep) == (42, ("\n\n",), 7, 2)
    assert (load.num_ctx, load.num_batch, load.num_thread, load.num_gpu, load.use_mmap) == (1024, 64, 1, 0, True)


async def test_thinking_defaults_on_for_thinking_models(client, engine):
    await client.post("/api/chat", json={**CHAT, "stream": False})
    assert engine.requests[-1].think is True and engine.rendered[-1]["think"] is True
    await client.post("/api/chat", json={**CHAT, "think": False, "stream": False})
    assert engine.requests[-1].think is False and engine.rendered[-1]["think"] is False
    await client.post("/api/chat", json={**CHAT, "model": "plain", "think": False, "stream": False})
    assert engine.requests[-1].think is False  # think:false is fine on any model
    await client.post("/api/chat", json={**CHAT, "think": "high", "stream": False})
    assert engine.rendered[-1]["think"] == "high"


async def test_thinking_and_tool_call_stream_shape(client, engine):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
    engine.script = [
        Chunk(thinking="Let me"),
        Chunk(thinking=" look"),
        Chunk(tool_calls=(call,)),
        Chunk(content="tail", done=True, done_reason="stop", metrics=METRICS),
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    lines = ndjson(await (await client.post("/api/chat", json={**CHAT, "tools": tools})).text())
    assert engine.requests[-1].parse_tools is True and engine.rendered[-1]["tools"] == tools
    assert [line["message"].get("thinking") for line in lines[:2]] == ["Let me", " look"]
    calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert len(calls) == 1 and lines[2]["done"] is False and lines[2]["message"]["content"] == ""
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"])
    assert calls[0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    assert lines[3]["message"]["content"] == "tail" and lines[3]["done"] is False  # never on the done line
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    whole = await (await client.post("/api/chat", json={**CHAT, "tools": tools, "stream": False})).json()
    assert whole["message"]["thinking"] == "Let me look" and whole["message"]["content"] == "tail"
    assert whole["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Tokyo"}


async def test_stringified_tool_arguments_are_parsed(client, engine):
    messages = [{"role": "user", "content": "w?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "content": "11C", "tool_name": "f"}]  # fmt: skip
    r = await client.post("/api/chat", json={"model": "mymoe", "messages": messages, "stream": False})
    assert r.status == 200
    assert engine.rendered[-1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


async def test_logprobs_on_content_lines(client):
    lines = ndjson(await (await client.post("/api/generate", json={"model": "mymoe", "prompt": "x", "logprobs": True,
                                                                  "top_logprobs": 1})).text())  # fmt: skip
    assert lines[0]["logprobs"] == [{"token": "x", "logprob": -0.5, "bytes": [120],
                                     "top_logprobs": [{"token": "x", "logprob": -0.5, "bytes": [120]}]}]  # fmt: skip
    assert "logprobs" not in lines[-1]
    body = await (await client.post("/api/chat", json={**CHAT, "logprobs": True, "stream": False})).json()
    assert body["logprobs"] == [{"token": "x", "logprob": -0.5, "bytes": [120]}] * 2  # no top_logprobs key


async def test_error_after_the_first_byte_is_a_line(client, engine):
    engine.fail_after = 1
    r = await client.post("/api/chat", json=CHAT)
    assert r.status == 200
    lines = ndjson(await r.text())
    assert lines[-1] == {"error": "boom mid-stream"} and lines[0]["message"]["content"] == "Hello"


async def test_format_is_passed_through(client, engine):
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    await client.post("/api/chat", json={**CHAT, "format": schema, "stream": False})
    assert engine.requests[-1].format == schema
    await client.post("/api/generate", json={"model": "mymoe", "prompt": "x", "format": "json", "stream": False})
    assert engine.requests[-1].format == "json"


async def test_embed(client):
    r = await client.post("/api/embed", json={"model": "mymoe", "input": ["a", "b"]})
    assert r.status == 200 and r.headers["Content-Type"] == JSON
    body = await r.json()
    assert body["model"] == "mymoe" and body["embeddings"] == [[0.6, 0.8, 0.0]] * 2  # L2-normalised
    assert body["prompt_eval_count"] == 4 and isinstance(body["total_duration"], int)
    body = await (await client.post("/api/embed", json={"model": "mymoe", "input": "a", "dimensions": 1})).json()
    assert body["embeddings"] == [[1.0]]  # truncated, then renormalised
    body = await (await client.post("/api/embed", json={"model": "mymoe", "input": ""})).json()
    assert body["embeddings"] == []
    r = await client.post("/api/embed", json={"model": "mymoe", "input": [1, 2]})
    assert r.status == 400 and await r.json() == {"error": "invalid input type"}
    r = await client.post("/api/embed", json={"model": "x", "input": "a"})
    assert r.status == 404 and await r.json() == {"error": 'model "x" not found, try pulling it first'}


async def test_legacy_embeddings_are_raw(client):
    body = await (await client.post("/api/embeddings", json={"model": "mymoe", "prompt": "a"})).json()
    assert body == {"embedding": [3.0, 4.0, 0.0]}
    assert await (await client.post("/api/embeddings", json={"model": "mymoe", "prompt": ""})).json() == {"embedding": []}
    r = await client.post("/api/embeddings", json={"model": "", "prompt": "a"})
    assert r.status == 400 and await r.json() == {"error": "model is required"}


async def test_delete(client):
    r = await client.delete("/api/delete", json={"model": "", "name": "mymoe"})  # the Go CLI's shape
    assert r.status == 200 and await r.read() == b""
    r = await client.delete("/api/delete", json={"name": "mymoe"})
    assert r.status == 404 and await r.json() == {"error": "model 'mymoe' not found"}


async def test_trailing_and_double_slashes(client):
    assert (await client.get("/api/tags/")).status == 200
    base = str(client.make_url("/")).rstrip("/")
    async with client.session.get(base + "//api/tags") as r:  # a pasted base URL with a trailing /
        assert r.status == 200 and "models" in await r.json()


async def test_debug_render_only(client, engine):
    r = await client.post("/api/chat", json={**CHAT, "_debug_render_only": True})
    body = await r.json()
    assert r.headers["Content-Type"] == JSON and body["_debug_info"] == {"rendered_template": "user:hi"}
    assert body["message"]["content"] == "" and engine.requests == []  # nothing generated
    body = await (await client.post("/api/generate", json={"model": "mymoe", "prompt": "p", "system": "s",
                                                           "_debug_render_only": True})).json()  # fmt: skip
    assert body["_debug_info"]["rendered_template"] == "system:s|user:p" and body["response"] == ""


async def test_modelfile_messages_and_system(client, engine):
    engine.set_modelfile("mymoe", system="be terse", messages=({"role": "user", "content": "m1"},))
    await client.post("/api/chat", json={**CHAT, "stream": False})
    assert [m["content"] for m in engine.rendered[-1]["messages"]] == ["be terse", "m1", "hi"]
    await client.post("/api/generate", json={"model": "mymoe", "prompt": "p", "stream": False})
    assert [m["content"] for m in engine.rendered[-1]["messages"]] == ["be terse", "m1", "p"]
    await client.post("/api/generate", json={"model": "mymoe", "prompt": "p", "context": [1], "stream": False})
    assert [m["content"] for m in engine.rendered[-1]["messages"]] == ["be terse", "p"]  # context replaces them


async def test_show_echoes_request_options(client):
    body = await (await client.post("/api/show", json={"model": "mymoe", "options": {"temperature": 0.2}})).json()
    assert "temperature" in body["parameters"] and "PARAMETER temperature 0.2" in body["modelfile"]


async def test_large_bodies_and_head_listing(client, engine):
    big = "x" * (3 * 2**20)  # base64 images run to megabytes; aiohttp's default limit is 1 MiB
    r = await client.post("/api/chat", json={"model": "mymoe", "messages": [{"role": "user", "content": big}],
                                             "stream": False})  # fmt: skip
    assert r.status == 200 and engine.rendered[-1]["messages"][0]["content"] == big
    r = await client.head("/api/tags")
    assert r.status == 200 and r.headers["Content-Type"] == JSON


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_closes_the_engine_stream(client, engine, stream):
    """A client that goes away mid-generation cancels it (Page-Assist's abort()), streaming or not."""
    await assert_disconnect_cancels(client, engine, "/api/chat", CHAT, stream)
