"""The Ollama API in front of OpenAI-compatible upstreams: a second ollama-compat on loopback is
the upstream, and the official clients are the oracle (the same call straight to the upstream's
native API must give what the proxy gives)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import anthropic
import httpx
import ollama
import openai
import pytest

from backend.interface import Chunk, Metrics
from ollama_compat.upstream import RouterEngine, UpstreamEngine
from ollama_compat.upstream.config import parse

from .fake_engine import FakeEngine
from .live_server import Server

ROOT = Path(__file__).resolve().parents[2]
METRICS = Metrics(total_duration=10**6, load_duration=0, prompt_eval_count=11, prompt_eval_duration=5,
                  eval_count=4, eval_duration=7)  # fmt: skip
WEATHER = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
SCRIPT = [
    Chunk(thinking="The user wants "),
    Chunk(thinking="the weather."),
    Chunk(content="Let me look "),
    Chunk(content="that up."),
    Chunk(tool_calls=(WEATHER,)),
    Chunk(done=True, done_reason="stop", metrics=METRICS),
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                         "required": ["city"]}}}]  # fmt: skip
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstreams_toml(models: dict[str, tuple[str, list[str]]], **timing: float) -> str:
    """{name: (upstream model id, [urls])} -> the upstreams file's text."""
    lines = [f"{k} = {v}" for k, v in timing.items()]
    for name, (model, urls) in models.items():
        lines += [f'[models."{name}"]', f'model = "{model}"', 'capabilities = ["completion", "tools", "thinking"]',
                  "upstreams = [" + ", ".join(f'"{u}"' for u in urls) + "]"]  # fmt: skip
    return "\n".join(lines) + "\n"


class Proxy:
    """Our server over a local fake engine and the upstreams in `toml`, on a real port; the
    health checks run as `serve` runs them."""

    def __init__(self, toml: str, max_queue: int = 512, health: bool = True):
        self.local = FakeEngine()
        self.upstream = UpstreamEngine(parse(toml), max_queue=max_queue)
        self.server = Server(engine=RouterEngine(self.local, self.upstream))
        self.url = self.server.url
        if health:
            self.call(self.upstream.start())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.server.loop).result(30)

    def close(self):
        self.call(self.upstream.aclose())
        self.server.close()


@pytest.fixture
def replica():
    """A second ollama-compat (fake engine, scripted answer with thinking and a tool call)."""
    engine = FakeEngine()
    engine.add_embedding_model()
    engine.script = SCRIPT
    server = Server(engine=engine)
    yield server
    server.close()


@pytest.fixture
def proxy(replica):
    toml = upstreams_toml({"remote-moe": ("mymoe", [replica.url]), "remote-embed": ("embedder", [replica.url])})
    proxy = Proxy(toml)
    yield proxy
    proxy.close()


def test_chat_streams_thinking_and_tool_calls_as_the_upstream_gives_them(proxy, replica):
    through, direct = ollama.Client(host=proxy.url), ollama.Client(host=replica.url)
    parts = list(through.chat(model="remote-moe", messages=ASK, tools=TOOLS, think=True, stream=True))
    want = list(direct.chat(model="mymoe", messages=ASK, tools=TOOLS, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "".join(w.message.thinking or "" for w in want)
    assert "".join(p.message.content for p in parts) == "".join(w.message.content for w in want)
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [c.function for c in calls] == [c.function for w in want for c in w.message.tool_calls or []]
    assert len(parts) > 3 and parts[-1].done and sum(p.done for p in parts) == 1  # streamed, not one object
    last, want_last = parts[-1], want[-1]
    assert (last.done_reason, last.prompt_eval_count, last.eval_count) == (
        want_last.done_reason, want_last.prompt_eval_count, want_last.eval_count)  # usage -> counts
    assert last.total_duration >= last.prompt_eval_duration > 0 and last.eval_duration > 0  # measured here
    # What the upstream was asked: the messages, tools and think of the client's request.
    sent = replica.engine.rendered[0]
    assert sent["messages"] == [{"role": "user", "content": "Weather in Paris?"}] and sent["think"] is not False
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_tool_results_go_back_linked_to_their_call(proxy, replica):
    client = ollama.Client(host=proxy.url)
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": [WEATHER]},
                     {"role": "tool", "content": "18 C", "tool_name": "get_weather"}]  # fmt: skip
    client.chat(model="remote-moe", messages=history, tools=TOOLS, think=False)
    sent = replica.engine.rendered[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == WEATHER["function"]["arguments"]
    assert sent[2]["tool_name"] == "get_weather" and sent[2]["content"] == "18 C"
    assert replica.engine.requests[-1].think is True  # think=False is a template switch, not honoured by Ollama's /v1


def test_generate_and_options_reach_the_upstream(proxy, replica):
    client = ollama.Client(host=proxy.url)
    options = {"temperature": 0.25, "top_p": 0.5, "num_predict": 9, "seed": 7, "stop": ["###"],
               "presence_penalty": 0.5, "frequency_penalty": 0.25}  # fmt: skip
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    parts = list(client.generate(model="remote-moe", prompt="Hi", think=True, options=options, format=schema, stream=True))
    got = replica.engine.requests[-1]
    want = list(ollama.Client(host=replica.url).generate(model="mymoe", prompt="Hi", think=True, stream=True))
    assert "".join(p.response for p in parts) == "".join(w.response for w in want)
    assert "".join(p.thinking or "" for p in parts) == "".join(w.thinking or "" for w in want)
    s = got.sampling
    assert (s.temperature, s.top_p, s.num_predict, s.seed, s.stop) == (0.25, 0.5, 9, 7, ("###",))
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, 0.25) and got.format == schema
    # raw: the prompt as it is, through /v1/completions
    raw = client.generate(model="remote-moe", prompt="<|raw|>", raw=True)
    assert replica.engine.requests[-1].prompt.endswith("<|raw|>") and raw.done


def test_embed_through_the_proxy_equals_the_upstream(proxy, replica):
    texts = ["Paris is in France.", "Berlin is in Germany."]
    got = ollama.Client(host=proxy.url).embed(model="remote-embed", input=texts)
    want = ollama.Client(host=replica.url).embed(model="embedder", input=texts)
    assert got.embeddings == want.embeddings and got.prompt_eval_count == want.prompt_eval_count


def test_remote_models_listed_shown_and_running_next_to_local_ones(proxy, replica):
    client = ollama.Client(host=proxy.url)
    names = {m.model for m in client.list().models}
    assert {"remote-moe:latest", "remote-embed:latest", "mymoe:latest", "plain:latest"} <= names
    shown = client.show("remote-moe")
    assert shown.details.family == "remote" and set(shown.capabilities) == {"completion", "tools", "thinking"}
    assert shown.modelinfo["remote.model"] == "mymoe" and shown.modelinfo["remote.host"] == replica.url + "/v1"
    assert shown.modelinfo["remote.owned_by"] == "library"  # from the upstream's /v1/models entry
    tags = {m["name"]: m for m in httpx.get(proxy.url + "/api/tags").json()["models"]}
    assert (tags["remote-moe:latest"]["remote_model"], tags["remote-moe:latest"]["remote_host"]) == (
        "mymoe", replica.url + "/v1")  # Ollama's fields for a remote model, omitted for local ones
    assert "remote_model" not in tags["mymoe:latest"]
    assert httpx.post(proxy.url + "/api/show", json={"model": "remote-moe"}).json()["remote_model"] == "mymoe"
    assert {"remote-moe:latest", "remote-embed:latest"} <= {m.model for m in client.ps().models}
    assert client.chat(model="mymoe", messages=ASK).message.content == "Hello wörld"  # the local one still answers
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("remote-moe")
    assert e.value.status_code == 400 and "upstream" in e.value.error


def test_show_follows_what_the_upstream_lists_after_each_health_check(replica):
    """The model's details are made once per /v1/models answer, not per request: a check that
    brings a new answer shows at once, and before any check the model is plainly remote."""
    proxy = Proxy(upstreams_toml({"remote-moe": ("mymoe", [replica.url])}), health=False)

    async def check():
        await proxy.upstream.pool.check_all(proxy.upstream.session(), 5)

    try:
        client = ollama.Client(host=proxy.url)
        assert "remote.owned_by" not in client.show("remote-moe").modelinfo
        assert client.show("remote-moe").modelinfo["remote.model"] == "mymoe"
        proxy.call(check())
        assert client.show("remote-moe").modelinfo["remote.owned_by"] == "library"
        replica.engine.models["mymoe:latest"] = replace(replica.engine.models["mymoe:latest"], modified_at=1234567)
        proxy.call(check())
        assert client.show("remote-moe").modelinfo["remote.created"] == 1234567
    finally:
        proxy.close()


def test_openai_client_through_the_proxy(proxy):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused")
    events = list(client.chat.completions.create(model="remote-moe", messages=ASK, tools=TOOLS, stream=True))
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    calls = [c for e in events if e.choices for c in e.choices[0].delta.tool_calls or []]
    assert text == "Let me look that up." and calls[0].function.name == "get_weather"
    assert events[-1].choices[0].finish_reason == "tool_calls"


def test_anthropic_messages_through_the_proxy(proxy):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused")
    tools = [{"name": "get_weather", "description": "Weather in a city",
              "input_schema": TOOLS[0]["function"]["parameters"]}]  # fmt: skip
    reply = client.messages.create(model="remote-moe", max_tokens=64, messages=ASK, tools=tools,
                                   thinking={"type": "enabled", "budget_tokens": 32})  # fmt: skip
    kinds = {block.type: block for block in reply.content}
    assert kinds["thinking"].thinking == "The user wants the weather."
    assert kinds["text"].text == "Let me look that up."
    assert kinds["tool_use"].name == "get_weather" and kinds["tool_use"].input == WEATHER["function"]["arguments"]
    assert reply.stop_reason == "tool_use" and reply.usage.input_tokens == METRICS.prompt_eval_count


def test_client_disconnect_closes_the_upstream_request(replica):
    replica.engine.script = [Chunk(content=f"{i} ") for i in range(200)] + [Chunk(done=True, metrics=METRICS)]
    replica.engine.delay = 0.05
    proxy = Proxy(upstreams_toml({"slow": ("mymoe", [replica.url])}))
    try:
        async def read_one_line():
            body = {"model": "slow", "messages": ASK}
            async with aiohttp.ClientSession() as session, session.post(proxy.url + "/api/chat", json=body) as r:
                assert b'"0 "' in await r.content.readline()
                assert replica.engine.cancelled == 0

        asyncio.run(read_one_line())
        deadline = time.monotonic() + 5
        while replica.engine.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert replica.engine.cancelled == 1 and len(replica.engine.requests) == 1
        assert proxy.upstream.pending == 0
    finally:
        proxy.close()


def _established_to(port: int) -> int:
    """Open TCP connections whose server side is `port` (Linux's /proc/net/tcp, state 01)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                count += state == "01" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def test_abandoned_streams_leave_nothing_behind(replica):
    """48 streams at once, every other one abandoned by its client after a few lines: each
    abandoned one stops its upstream generation and closes its connection; the finished ones
    keep theirs for the next request; nothing stays counted as in flight."""
    tokens = 40
    replica.engine.script = [Chunk(content=f"{i} ") for i in range(tokens)] + [Chunk(done=True, metrics=METRICS)]
    replica.engine.delay = 0.01
    proxy = Proxy(upstreams_toml({"slow": ("mymoe", [replica.url])}))
    try:
        async def one(session, i: int) -> int:
            body = {"model": "slow", "messages": ASK}
            async with session.post(proxy.url + "/api/chat", json=body) as r:
                lines = 0
                async for _ in r.content:
                    lines += 1
                    if i % 2 and lines == 1 + i % 5:
                        r.close()  # the client goes away mid-answer
                        return -1
                return lines

        async def run():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                return await asyncio.gather(*(one(session, i) for i in range(48)))

        read = asyncio.run(run())
        assert read.count(-1) == 24 and all(n == tokens + 1 for n in read if n != -1)
        deadline = time.monotonic() + 10
        while replica.engine.cancelled < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert replica.engine.cancelled == 24 and len(replica.engine.requests) == 48
        assert proxy.upstream.pending == 0 and all(s.pending == 0 for s in proxy.upstream.pool.states.values())
        assert 1 <= _established_to(replica.port) <= 24  # the finished streams' connections, kept alive
    finally:
        proxy.close()


def test_no_replica_answers_is_a_503_naming_them():
    port = free_port()  # nothing listens there
    proxy = Proxy(upstreams_toml({"gone": ("x", [f"http://127.0.0.1:{port}"])}, connect_timeout=2))
    try:
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=proxy.url).chat(model="gone", messages=ASK)
        assert e.value.status_code == 503
        assert "no upstream for model 'gone:latest' answers" in e.value.error and str(port) in e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=proxy.url).embed(model="gone", input="x")
        assert e.value.status_code == 503
        assert "gone:latest" not in {m.model for m in ollama.Client(host=proxy.url).ps().models}
    finally:
        proxy.close()


def test_max_queue_bounds_the_requests_in_flight(replica):
    replica.engine.delay = 0.2
    proxy = Proxy(upstreams_toml({"q": ("mymoe", [replica.url])}), max_queue=1)
    try:
        client = ollama.Client(host=proxy.url)
        first = threading.Thread(target=lambda: client.chat(model="q", messages=ASK))
        first.start()
        deadline = time.monotonic() + 5
        while proxy.upstream.pending == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ollama.ResponseError) as e:
            client.chat(model="q", messages=ASK)
        assert e.value.status_code == 503 and "maximum pending requests exceeded" in e.value.error
        first.join()
        assert client.chat(model="q", messages=ASK).done  # room again
    finally:
        proxy.close()


# A replica in its own process, so that it can be killed outright (SIGKILL: no graceful close).
REPLICA = """
import sys
from aiohttp import web
from backend.interface import Chunk, Metrics
from ollama_compat.app import create_app, server_options
from ollama_compat.settings import Settings
from tests.api.fake_engine import FakeEngine
engine = FakeEngine()
engine.script = [Chunk(content=f"{i} ") for i in range(10)] + [Chunk(done=True, done_reason="stop",
    metrics=Metrics(1, 0, 3, 1, 10, 1))]
engine.delay = float(sys.argv[2])
settings = Settings.from_env({})
web.run_app(create_app(engine, settings), host="127.0.0.1", port=int(sys.argv[1]), print=None,
            access_log=None, **server_options(settings))
"""
WHOLE = "".join(f"{i} " for i in range(10))


def start_replica(port: int, delay: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", REPLICA, str(port), str(delay)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("replica did not start")


def test_killing_a_replica_loses_no_request_that_had_not_started_streaming():
    ports = [free_port(), free_port()]
    # 10 tokens 0.1 s apart: a second's stream, long enough to kill a replica under it.
    replicas = [start_replica(port, 0.1) for port in ports]
    proxy = Proxy(upstreams_toml({"pair": ("mymoe", [f"http://127.0.0.1:{p}" for p in ports])},
                                 health_interval=0.5))  # fmt: skip
    try:
        replicas[0].send_signal(signal.SIGSTOP)  # the first replica hangs: its requests never start
        results: dict[int, str] = {}
        errors: dict[int, str] = {}

        def ask(i: int):
            try:
                parts = ollama.Client(host=proxy.url).chat(model="pair", messages=ASK, stream=True)
                results[i] = "".join(p.message.content for p in parts)
            except Exception as e:  # noqa: BLE001 - recorded for the assertion below
                errors[i] = repr(e)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum(s.pending for s in proxy.upstream.pool.states.values()) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        states = list(proxy.upstream.pool.states.values())
        stuck = states[0].pending
        assert stuck >= 1  # least-pending sent some to the hung replica
        replicas[0].kill()  # mid-run: its requests had not started streaming
        replicas[0].wait()
        for t in threads:
            t.join(30)
        assert errors == {} and results == {i: WHOLE for i in range(8)}
        # Marked down, so later requests skip it without a failed try; it comes back when it answers.
        assert not states[0].healthy
        assert proxy.upstream.pool.order(proxy.upstream.models["pair:latest"].replicas)[0] is states[1]
        assert ollama.Client(host=proxy.url).chat(model="pair", messages=ASK).message.content == WHOLE
        replicas[0] = start_replica(ports[0], 0.0)
        deadline = time.monotonic() + 10
        while not states[0].healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert states[0].healthy
    finally:
        proxy.close()
        for process in replicas:
            process.kill()
            process.wait()
