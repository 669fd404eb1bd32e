"""The proxy's path to the first token: upstream connections kept alive from one request to the
next (a new one costs a TCP, and to an https upstream a TLS, setup), and a remote model's request
prepared on the event loop, without a worker thread's GIL hand-offs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import ollama
import orjson
import pytest
from aiohttp import web

from ollama_compat.upstream import translate

from .test_upstream_proxy import ASK, Proxy, upstreams_toml


def connections_to(port: int) -> set[int]:
    """Local ports of the loopback TCP connections to `port` the kernel lists, those closed and
    waiting out TIME_WAIT included: each new connection shows up here as one more."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.split(":")[1], 16) == port:
            ports.add(int(local.split(":")[1], 16))
    return ports


class SlowEndUpstream:
    """An OpenAI server whose body ends a moment after its [DONE], in a later packet, as it often
    does across a network (on loopback the two usually arrive together)."""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in ({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"}):
            await response.write(b"data: " + orjson.dumps({"choices": [{"index": 0, **event}]}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def __init__(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's connection table")
def test_request_after_request_reuses_one_upstream_connection():
    upstream = SlowEndUpstream()
    proxy = Proxy(upstreams_toml({"remote": ("m", [f"http://127.0.0.1:{upstream.port}/v1"])}))
    try:
        before = connections_to(upstream.port)
        client = ollama.Client(host=proxy.url)
        for stream in (True, False, True, False):
            answer = client.chat(model="remote", messages=ASK, stream=stream)
            parts = list(answer) if stream else [answer]
            assert "".join(p.message.content for p in parts) == "Hi" and parts[-1].done_reason == "stop"
        assert len(connections_to(upstream.port) - before) <= 1  # before: one per request (4)
    finally:
        proxy.close()
        upstream.close()



def test_a_remote_request_is_prepared_on_the_event_loop_a_local_one_in_a_worker(monkeypatch):
    upstream = SlowEndUpstream()
    proxy = Proxy(upstreams_toml({"remote": ("m", [f"http://127.0.0.1:{upstream.port}/v1"])}))
    threads = {}
    render_remote, render_local = translate.render_chat, proxy.local.render_chat

    def remote(*args, **kwargs):
        threads["remote"] = threading.current_thread()
        return render_remote(*args, **kwargs)

    def local(*args, **kwargs):
        threads["local"] = threading.current_thread()
        return render_local(*args, **kwargs)

    monkeypatch.setattr(translate, "render_chat", remote)
    monkeypatch.setattr(proxy.local, "render_chat", local)
    try:
        client = ollama.Client(host=proxy.url)
        assert client.chat(model="remote", messages=ASK).message.content == "Hi"
        assert client.generate(model="mymoe", prompt="Hi").done
        client.chat(model="mymoe", messages=ASK)
        assert threads["remote"] is proxy.server.thread  # the thread that runs the server's loop
        assert threads["local"] is not proxy.server.thread  # a render process behind it may block
    finally:
        proxy.close()
        upstream.close()
