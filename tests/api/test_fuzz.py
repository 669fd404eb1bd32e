"""Every endpoint fuzzed over its fields and types, on the fake engine for breadth and on SmolLM2 for engine crashes."""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from . import fuzz_harness as harness
from . import wire_strategies as ws
from .fake_engine import FakeEngine
from .fuzz_harness import FUZZ, dumps, send
from .live_server import Server

FAKE_EXAMPLES = {"chat": 400, "generate": 300, "v1_chat": 300}  # the widest bodies get the most
FAKE_DEFAULT = 150
REAL_EXAMPLES = {"chat": 50, "generate": 40, "v1_chat": 40}
REAL_DEFAULT = 20


def _messages(limits: ws.Limits):
    from .test_anthropic_fuzz import body  # there, with its own deeper fuzz

    return _on_models(body, limits)


def _responses(limits: ws.Limits):
    from .test_responses_fuzz import body

    return _on_models(body, limits)


def _on_models(bodies, limits: ws.Limits):
    """Those strategies name the fake engine's models: the target's own take their place."""
    names = {"mymoe": limits.models[0], "plain": limits.models[-1]}
    return st.tuples(bodies, st.sampled_from(limits.models)).map(
        lambda pair: {**pair[0], "model": names.get(pair[0].get("model"), pair[0].get("model"))}
        if isinstance(pair[0].get("model"), str) else pair[0])


# ws's table and Anthropic's /v1/messages and OpenAI's /v1/responses (Claude Code's and Codex's).
ENDPOINTS = {**ws.ENDPOINTS, "messages": ("POST", "/v1/messages", _messages), "responses": ("POST", "/v1/responses", _responses)}
INFERENCE = (*ws.INFERENCE, "messages", "responses")


# What streaming.py writes for an exception no layer expected: the 500 of a stream.
INTERNAL = re.compile(r"^[A-Z]\w*(Error|Exception)\b")
PROGRESS = ("/api/create", "/api/pull", "/api/push")  # Ollama reports a failure there as the stream's last line


def check(path: str, status: int, content_type: str, data: bytes, method: str = "POST") -> None:
    """Below 500; errors in the API's error shape; streams well framed, and free of error lines
    (but for the progress streams' last line, which must be an error a user can read)."""
    shown = data[:600]
    if status == 500 and path == "/api/pull":  # Ollama's PullHandler answers a failed pull so (stream false)
        assert json.loads(data)["error"].startswith("pull model manifest: model "), shown
        return
    assert status < 500, (status, shown)
    if method == "HEAD":
        assert data == b"", shown
    elif content_type.startswith("text/plain"):
        # "/", gin's texts for unknown routes and methods and its redirect of a path with a
        # trailing or doubled slash, and the HTTP parser's own 400 for a request it cannot read.
        assert status in (200, 308, 400, 404, 405), (status, shown)
    elif status >= 400:
        error = json.loads(data)["error"]
        assert isinstance(error["message"] if path.startswith("/v1/") else error, str), shown
    elif content_type == "application/x-ndjson":
        lines = [json.loads(line) for line in data.decode().split("\n") if line]
        assert data.endswith(b"\n") and b"\n\n" not in data, shown
        assert not any("error" in line for line in lines[:-1]), shown
        if path in PROGRESS and "error" in lines[-1]:
            assert isinstance(lines[-1]["error"], str) and not INTERNAL.match(lines[-1]["error"]), shown
        else:
            assert lines[-1].get("done") is True or lines[-1].get("status") == "success", shown
    elif content_type.startswith("text/event-stream") and path == "/v1/messages":
        harness.anthropic_stream(data)
    elif content_type.startswith("text/event-stream") and path == "/v1/responses":
        harness.responses_stream(data)
    elif content_type.startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in data.decode().split("\n\n") if e]
        assert events[-1] == "[DONE]" and not any('"error"' in e[:12] for e in events), shown
    elif status == 200 and data:
        json.loads(data)


def fuzz(server: Server, endpoint: str, limits: ws.Limits, examples: int, bound=lambda body: body, after=None):
    method, path, bodies = ENDPOINTS[endpoint]

    def check_reply(status: int, content_type: str, data: bytes) -> None:
        check(path, status, content_type, data)
        if after:
            after()

    harness.fuzz(server, method, path, bodies(limits).map(bound), examples, check_reply)


# ---- the fake engine: breadth --------------------------------------------------------------

@pytest.fixture(scope="module")
def fake():
    engine = FakeEngine()
    engine.add_embedding_model()
    srv = Server(engine=engine)
    yield srv
    srv.close()


FAKE_LIMITS = ws.Limits(models=("mymoe", "plain", "embedder", "MyMoE:latest"))


@pytest.mark.parametrize("endpoint", [*INFERENCE, "delete"])
def test_fuzz_fake_engine(fake, endpoint):
    models = dict(fake.engine.models)

    def restore():  # a fuzzed delete may hit a model the next examples need
        fake.engine.models = dict(models)

    fuzz(fake, endpoint, FAKE_LIMITS, FAKE_EXAMPLES.get(endpoint, FAKE_DEFAULT), after=restore)
    status, _, data = send(fake, "POST", "/api/chat", dumps({"model": "mymoe", "stream": False,
                                                             "messages": [{"role": "user", "content": "hi"}]}))
    assert status == 200 and json.loads(data)["message"]["content"] == "Hello wörld"


@settings(FUZZ, max_examples=300)
@given(path=st.sampled_from([ENDPOINTS[e][1] for e in INFERENCE] + ["/api/tags", "/api/ps", "/v1/models", "/"]),
       method=st.sampled_from(["GET", "POST", "DELETE", "HEAD", "PUT"]),
       body=st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"1e400", b'{"model": "mymoe"}',
                                                      b"\xff\xfe{}", b'{"model": "mymoe", "messages": [] }']),
       encoding=st.sampled_from([None, "gzip", "deflate", "br", "zstd", "identity", "x-junk", "gzip, gzip"]),
       content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]))  # fmt: skip
def test_fuzz_raw_bodies_methods_and_encodings(fake, path, method, body, encoding, content_type):
    """Bodies that are not JSON objects, under every method and Content-Encoding. (The store's
    routes have no fake store behind them: they are fuzzed against the real engine below.)"""
    headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
    status, content_type, data = send(fake, method, path, body if method != "HEAD" else None, headers)
    check(path, status, content_type, data, method)


# ---- the real engine on SmolLM2: fewer examples, short generations -------------------------

@pytest.fixture(scope="module")
def real(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-models")
    os.symlink(smollm2_gguf, root / "smollm2.gguf")
    srv = Server(root, num_parallel=2)
    yield srv
    srv.close()


REAL_LIMITS = ws.Limits(models=("smollm2", "SmolLM2:latest"), num_predict=st.integers(0, 4),
                        num_ctx=st.integers(-1, 2048) | st.sampled_from([10**12, 2**40]), num_batch=st.integers(-1, 1024),
                        number_junk=ws.not_numbers)  # fmt: skip


def short(body: Any) -> Any:
    """At most a few tokens per request: an unset num_predict (-1) would run to the context's end."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if body.get("options") is None:
        body["options"] = {"num_predict": 4}
    elif isinstance(body["options"], dict) and body["options"].get("num_predict") is None:
        body["options"] = {**body["options"], "num_predict": 4}
    if body.get("max_tokens") is None:
        body["max_tokens"] = 4
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:  # /v1/messages requires one
        body["max_tokens"] = 4
    if body.get("max_output_tokens") is None or (isinstance(body["max_output_tokens"], int) and body["max_output_tokens"] > 4):
        body["max_output_tokens"] = 4  # /v1/responses
    return body


@pytest.mark.parametrize("endpoint", [*INFERENCE, *ws.STORE])
def test_fuzz_real_engine(real, endpoint):
    fuzz(real, endpoint, REAL_LIMITS, REAL_EXAMPLES.get(endpoint, REAL_DEFAULT), bound=short)
    # The engine lives: the greedy answer is still llama.cpp's, and every listing answers.
    body = {"model": "smollm2", "stream": False, "options": {"temperature": 0, "num_predict": 16},
            "messages": [{"role": "user", "content": "What is 2+2?"}]}  # fmt: skip
    status, _, data = send(real, "POST", "/api/chat", dumps(body), timeout=60)
    assert status == 200 and json.loads(data)["message"]["content"] == "The answer to this classic math problem is 4."
    for path in ("/api/tags", "/api/ps", "/v1/models"):
        status, _, data = send(real, "GET", path, None)
        assert status == 200 and (path == "/api/ps" or "smollm2:latest" in data.decode()), (path, data[:300])


@settings(FUZZ, max_examples=40)
@given(digest=st.sampled_from(["sha256:" + "0" * 64, "sha256:" + "f" * 63, "sha256:" + "a" * 64 + "/x", "md5:00", ""])
       | st.text(max_size=80).map(lambda t: "sha256:" + t),
       method=st.sampled_from(["HEAD", "POST"]), body=st.binary(max_size=64) | st.just(b"GGUF\x03\x00\x00\x00"))  # fmt: skip
def test_fuzz_real_blobs(real, digest, method, body):
    """/api/blobs/:digest with any digest text (quoted into the path) and any bytes."""
    path = "/api/blobs/" + quote(digest, safe=":")
    status, content_type, data = send(real, method, path, body if method == "POST" else None,
                                      {"Content-Type": "application/octet-stream"})  # fmt: skip
    check(path, status, content_type, data, method)
