"""An upstream's answer as the proxy reads it: events cut anywhere by the network, events far
longer than aiohttp's line limit (a whole file as one tool call's arguments), and the answers of
servers that are not quite OpenAI's (whole when asked to stream, a web page, an error event)."""

from __future__ import annotations

import asyncio
import base64
import random
import threading

import ollama
import orjson
import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol

from backend.interface import Chunk, Metrics
from ollama_compat.upstream import engine as upstream_engine

from .fake_engine import FakeEngine
from .live_server import Server
from .test_upstream_proxy import Proxy, free_port, upstreams_toml

BODY = (
    b": ping\n\n"
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b"event: message\r\n"
    b'data:{"choices":[{"delta":{"content":"lo \\n w\\u00f6rld"}}]}\r\n\r\n'
    b"data: [1, 2]\n\n"  # not an object: skipped
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def reference_events(body: bytes) -> list[dict]:
    """The same stream read whole, line by line."""
    out = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            value = orjson.loads(data)
            if isinstance(value, dict):
                out.append(value)
    return out


class _Response:
    """What _events reads of a ClientResponse: `content.readany()`, here over a real aiohttp
    StreamReader that gets the pieces one at a time, as the network would bring them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        protocol = BaseProtocol(loop)
        protocol.connection_made(asyncio.Transport())  # the reader waits only while "connected"
        self.reader = StreamReader(protocol, 2**16, loop=loop)
        self.content = self
        self.reads: list[bytes] = []

    async def readany(self) -> bytes:
        self.reads.append(await self.reader.readany())
        return self.reads[-1]


async def read_events(pieces: list[bytes]) -> list[dict]:
    response = _Response(asyncio.get_running_loop())
    done = asyncio.Event()  # the reader stopped (at [DONE], or on an error)

    async def network():
        for i, piece in enumerate(pieces):
            response.reader.feed_data(piece)
            while len(response.reads) <= i and not done.is_set():
                await asyncio.sleep(0)  # until the reader has taken it
        response.reader.feed_eof()

    feeding = asyncio.create_task(network())
    try:
        events = [event async for event in upstream_engine._events(response)]
    finally:
        done.set()
        await feeding
    return events, [r for r in response.reads if r]


@pytest.mark.parametrize("seed", range(40))
async def test_events_cut_anywhere_read_as_the_whole_stream(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(BODY)), rng.randint(1, 30)))
    pieces = [BODY[a:b] for a, b in zip([0, *cuts], [*cuts, len(BODY)])]
    events, reads = await read_events(pieces)
    assert events == reference_events(BODY) and len(events) == 3
    assert reads == pieces[: len(reads)]  # read as the pieces came, not all at once


async def test_a_last_line_without_its_newline_still_counts():
    body = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{"content":"b"}}]}'
    events, reads = await read_events([body[:30], body[30:]])
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["a", "b"] and len(reads) == 2


async def test_a_line_past_the_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(upstream_engine, "_MAX_EVENT", 1000)
    line = b'data: {"choices":[{"delta":{"content":"' + b"x" * 5000 + b'"}}]}\n\n'
    with pytest.raises(upstream_engine.EngineError, match="more than 1,000 bytes"):
        await read_events([line[i : i + 700] for i in range(0, len(line), 700)])


@pytest.fixture
def long_replica():
    """An upstream whose answer carries a 3 MB delta and a 3 MB tool call in one event each: past
    aiohttp's readline limit (512 KiB in 3.14, 128 KiB in 3.9)."""
    engine = FakeEngine()
    text = "".join(f"line {i}: wörld \"{i}\"\n" for i in range(150_000))  # 3.3 MB
    call = {"function": {"name": "write_file", "arguments": {"path": "big.txt", "content": text}}}
    engine.script = [Chunk(content="Writing it."), Chunk(content=text), Chunk(tool_calls=(call,)),
                     Chunk(done=True, done_reason="stop", metrics=Metrics(1, 0, 3, 1, 3, 1))]  # fmt: skip
    server = Server(engine=engine)
    yield server, text
    server.close()


def test_long_events_pass_the_proxy_whole(long_replica):
    replica, text = long_replica
    proxy = Proxy(upstreams_toml({"remote-moe": ("mymoe", [replica.url])}))
    try:
        ask = [{"role": "user", "content": "Write the file."}]
        parts = list(ollama.Client(host=proxy.url).chat(model="remote-moe", messages=ask, stream=True))
        assert "".join(p.message.content for p in parts) == "Writing it." + text
        calls = [c for p in parts for c in p.message.tool_calls or []]
        assert len(calls) == 1 and calls[0].function.arguments == {"path": "big.txt", "content": text}
        assert parts[-1].done and parts[-1].done_reason == "stop"
    finally:
        proxy.close()


def test_an_event_past_the_limit_ends_the_answer_with_the_reason(long_replica, monkeypatch):
    replica, _ = long_replica
    monkeypatch.setattr(upstream_engine, "_MAX_EVENT", 1 << 20)
    proxy = Proxy(upstreams_toml({"remote-moe": ("mymoe", [replica.url])}))
    try:
        stream = ollama.Client(host=proxy.url).chat(model="remote-moe", messages=[{"role": "user", "content": "Go."}],
                                                    stream=True)  # fmt: skip
        with pytest.raises(ollama.ResponseError, match="more than 1,048,576 bytes"):
            list(stream)
        assert ollama.Client(host=proxy.url).chat(model="mymoe", messages=[{"role": "user", "content": "Hi"}]).message.content
    finally:
        proxy.close()


class RawUpstream:
    """An OpenAI-like server on loopback whose /v1/chat/completions is `handler`: for answers our
    own server never gives."""

    def __init__(self, handler):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        app = web.Application()

        async def models(_request):
            return web.json_response({"object": "list", "data": [{"id": "m"}]})

        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", handler)
        app.router.add_post("/v1/completions", handler)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def behind_proxy():
    """(client, proxy) for a model "odd" served by the RawUpstream of `handler`."""
    opened = []

    def start(handler, host: str = "127.0.0.1", capabilities: tuple[str, ...] = ()):
        upstream = RawUpstream(handler)
        toml = upstreams_toml({"odd": ("m", [f"http://{host}:{upstream.port}/v1"])})
        if capabilities:
            toml = toml.replace('capabilities = ["completion", "tools", "thinking"]', f"capabilities = {list(capabilities)}")
        proxy = Proxy(toml)
        opened.extend([proxy, upstream])
        return ollama.Client(host=proxy.url)

    yield start
    for thing in opened:
        thing.close()


ODD = [{"role": "user", "content": "Weather in Paris?"}]


async def _whole_answer(request):
    """A server that answers whole even when asked to stream (arguments as an object, too)."""
    assert (await request.json())["stream"] is True
    message = {"role": "assistant", "content": "Looking.", "reasoning_content": "Paris, so celsius.",
               "tool_calls": [{"id": "c1", "type": "function",
                               "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}  # fmt: skip
    return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                              "usage": {"prompt_tokens": 9, "completion_tokens": 7}})  # fmt: skip


@pytest.mark.parametrize("stream", [True, False])
def test_a_whole_answer_where_a_stream_was_asked_for(behind_proxy, stream):
    client = behind_proxy(_whole_answer)
    parts = client.chat(model="odd", messages=ODD, stream=stream, think=True)
    parts = list(parts) if stream else [parts]
    assert "".join(p.message.content for p in parts) == "Looking."
    assert "".join(p.message.thinking or "" for p in parts) == "Paris, so celsius."
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert (parts[-1].done, parts[-1].prompt_eval_count, parts[-1].eval_count) == (True, 9, 7)


async def _web_page(request):
    return web.Response(text="<html>Sign in</html>", content_type="text/html")


def test_a_web_page_is_the_replicas_failure_said_plainly(behind_proxy):
    client = behind_proxy(_web_page)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="odd", messages=ODD)
    assert e.value.status_code == 503 and "web page (text/html)" in e.value.error


async def _error_event(request):
    """vLLM's way to fail a request after its 200."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"error": {"object": "error", "message": "maximum context length is 4096 tokens", '
                         b'"type": "BadRequestError", "code": 400}}\n\ndata: [DONE]\n\n')  # fmt: skip
    return response


def test_an_error_event_keeps_its_message_and_status(behind_proxy):
    client = behind_proxy(_error_event)
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as e:
            list(client.chat(model="odd", messages=ODD, stream=True)) if stream else client.chat(model="odd", messages=ODD)
        assert e.value.status_code == 400 and "maximum context length is 4096 tokens" in e.value.error


def test_a_cookie_one_answer_sets_rides_with_no_other_request(behind_proxy):
    """One session carries every user's requests: a load balancer's sticky cookie must not pin
    them all to one target, nor one user's cookie reach another's request."""
    seen = []

    async def sets_a_cookie(request):
        seen.append(request.headers.get("Cookie"))
        response = await _whole_answer(request)
        response.set_cookie("AWSALB", f"target-{len(seen)}")
        return response

    client = behind_proxy(sets_a_cookie, host="localhost")  # aiohttp's jar keeps no cookie of an IP address
    for _ in range(3):
        assert client.chat(model="odd", messages=ODD).message.content == "Looking."
    assert seen == [None, None, None]


def test_fill_in_the_middle_goes_to_completions_with_its_suffix(behind_proxy):
    """A code editor's completion (/api/generate with a suffix) on a model declared "insert":
    prompt and suffix reach the upstream's /v1/completions as they are, for its template to
    place around the hole; without "insert" it is refused, as Ollama refuses it."""
    seen = []

    async def completes(request):
        seen.append((request.path, await request.json()))
        return web.json_response({"choices": [{"index": 0, "text": "    c = a + b\n", "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 12, "completion_tokens": 6}})  # fmt: skip

    client = behind_proxy(completes, capabilities=("completion", "insert"))
    reply = client.generate(model="odd", prompt="def add(a, b):\n", suffix="    return c\n", options={"num_predict": 9})
    assert reply.response == "    c = a + b\n" and (reply.prompt_eval_count, reply.eval_count) == (12, 6)
    path, body = seen[-1]
    assert path == "/v1/completions" and (body["prompt"], body["suffix"]) == ("def add(a, b):\n", "    return c\n")
    assert body["max_tokens"] == 9 and "raw" not in body and "messages" not in body


def test_fill_in_the_middle_needs_the_insert_capability(behind_proxy):
    client = behind_proxy(_whole_answer)  # completion, tools, thinking: no insert
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="odd", prompt="def add(a, b):", suffix="    return c")
    assert e.value.status_code == 400 and "does not support insert" in e.value.error


def test_generate_images_reach_the_upstream_once(behind_proxy):
    """/api/generate's images go with its prompt (they were lost: only /api/chat's messages
    carried theirs), /api/chat's are not sent twice, and a raw prompt that cannot carry them is
    refused rather than sent without them."""
    seen = []

    async def capture(request):
        seen.append(await request.json())
        return await _whole_answer(request)

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()
    client = behind_proxy(capture, capabilities=("completion", "vision"))
    client.generate(model="odd", prompt="What is this?", images=[png])
    assert seen[-1]["messages"][-1]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    client.chat(model="odd", messages=[{"role": "user", "content": "And this?", "images": [png]}])
    assert [p["type"] for p in seen[-1]["messages"][-1]["content"]] == ["text", "image_url"]
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="odd", prompt="What is this?", images=[png], raw=True)
    assert e.value.status_code == 400 and "images need a chat" in e.value.error and len(seen) == 2
