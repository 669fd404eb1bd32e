"""The server's log as a user reads it: `ollama-compat serve` in a subprocess, its stderr read back.
The access line is gin's (Ollama's) format; model loads, unloads, disconnects and error causes
appear; OLLAMA_DEBUG adds request detail; --log-format json gives one object per line."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import logging

import pytest
from aiohttp import web

from backend.testmodels import write_model
from ollama_compat.access_log import CLIENT_CLOSED, access_log, gin_line, go_duration
from ollama_compat.streaming import stream_ndjson

# gin's defaultLogFormatter, uncoloured: "[GIN] 2006/01/02 - 15:04:05 | 200 |  1.234ms | 127.0.0.1 | POST "/api/chat""
GIN = re.compile(r'^\[GIN\] \d{4}/\d\d/\d\d - \d\d:\d\d:\d\d \| (\d{3}) \| +[0-9.]+(ns|µs|ms|s) \| +([0-9.:a-f]+) \| '
                 r'(\w+) +"([^"]*)"$')  # fmt: skip


@pytest.mark.parametrize("ns, text", [
    (0, "0ns"), (512, "512ns"), (1_000, "1µs"), (1_234_567, "1.234567ms"), (2_500_000_000, "2.5s"),
    (90_250_000_000, "1m30.25s"), (3_723_000_000_000, "1h2m3s"),
])  # fmt: skip
def test_latency_reads_as_gos_duration(ns, text):
    assert go_duration(ns) == text  # Go's time.Duration.String() for the same values


async def test_a_stream_that_finds_its_client_gone_logs_a_disconnect(aiohttp_client, caplog):
    """A write that fails because the client left returns from the handler (aiohttp cancels it
    instead when it notices first): the access log reports both the same way, as a 499."""

    async def items():
        yield {"response": "a"}
        raise ConnectionResetError("the client went away")

    async def handler(request):
        return await stream_ndjson(request, items())

    app = web.Application(middlewares=[access_log])
    app.router.add_post("/api/generate", handler)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO):
        async with client.post("/api/generate") as r:
            await r.read()
    assert any(m.startswith("client disconnected: POST /api/generate") for m in caplog.messages)
    access = [rec for rec in caplog.records if hasattr(rec, "access")]
    assert [rec.access["status"] for rec in access] == [CLIENT_CLOSED]


def test_access_line_is_gins_format():
    line = gin_line(0, 200, 1_234_000, "127.0.0.1", "POST", "/api/chat")
    assert line.endswith('| 200 |       1.234ms |       127.0.0.1 | POST     "/api/chat"')
    assert GIN.match(line)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model("llama", root / "tiny.gguf", config={"max_position_embeddings": 256}, seed=1)
    return root


class Serve:
    """`python -m ollama_compat serve` with its stderr in a file, read as it grows."""

    def __init__(self, models_dir, tmp_path, *flags, env=None, preexec_fn=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = tmp_path / f"serve-{self.port}.log"
        environ = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{self.port}", **(env or {})}
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "ollama_compat", "serve", "--no-default-model",
                                      "--models", str(models_dir), *flags], env=environ,
                                     stdout=self.log_file, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)  # fmt: skip
        for _ in range(600):
            assert self.proc.poll() is None, self.text()
            try:
                self.request("GET", "/api/version")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.text())

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = re.search(pattern, self.text(), re.M)
            if found:
                return found.group(0)
            time.sleep(0.1)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.text()}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log_file.close()


def disconnect_mid_stream(port: int) -> None:
    """A raw client that reads the first streamed bytes of a long answer, then hangs up."""
    body = json.dumps({"model": "tiny", "prompt": "hello world", "raw": True,  # greedy: no EOS for 320 tokens
                       "options": {"num_predict": 5000, "temperature": 0, "repeat_penalty": 1}}).encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_the_text_log_has_access_lines_loads_unloads_disconnects_and_causes(models_dir, tmp_path):
    server = Serve(models_dir, tmp_path, env={"OLLAMA_DEBUG": "1"})
    try:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                "options": {"num_predict": 3, "temperature": 0}}  # fmt: skip
        assert server.request("POST", "/api/chat", chat)[0] == 200
        assert server.request("POST", "/api/chat", chat)[0] == 200  # the prompt comes from the cache
        assert server.request("POST", "/api/show", {"model": "missing"})[0] == 404
        disconnect_mid_stream(server.port)
        server.wait_for(r"client disconnected: POST /api/generate")
        assert server.request("POST", "/api/generate", {"model": "tiny", "keep_alive": 0})[0] == 200

        accesses = [GIN.match(line).groups() for line in server.text().splitlines() if GIN.match(line)]
        assert ("200", "POST", "/api/chat") in {(s, m, p) for s, _, _, m, p in accesses}
        assert ("404", "POST", "/api/show") in {(s, m, p) for s, _, _, m, p in accesses}
        assert all(client == "127.0.0.1" for _, _, client, _, _ in accesses)
        server.wait_for(r'^\[GIN\] .* \| 499 \| .* POST +"/api/generate"$')
        # slog's text lines: time=… level=… source=file:line msg="…"
        server.wait_for(r'^time=\S+ level=WARNING source=access_log\.py:\d+ msg="POST /api/show: 404 '
                        r"model 'missing' not found\"$")  # fmt: skip
        server.wait_for(r'level=INFO .*msg="model loaded: tiny:latest in [0-9.]+ s, size [0-9.]+ MiB')
        server.wait_for(r'level=INFO .*msg="model unloaded: tiny:latest \(unload requested\) in [0-9.]+ s')
        # OLLAMA_DEBUG=1: the request's sampler settings, and how much of the prompt the cache held.
        server.wait_for(r"level=DEBUG .*msg=\"chat request: model tiny:latest, 1 messages, .*temperature=0")
        done = re.findall(r"level=DEBUG .*done \(length\): prompt (\d+) tokens, (\d+) computed, (\d+) from the cache",
                          server.text())  # fmt: skip
        (first, _, none), (again, computed, cached) = [tuple(map(int, d)) for d in done[:2]]  # the two chats
        assert none == 0 and first == again == computed + cached and cached > 0
        assert "level=TRACE" not in server.text()
    finally:
        server.close()


def test_json_logs_are_one_object_per_line_and_debug_2_traces(models_dir, tmp_path):
    server = Serve(models_dir, tmp_path, "--log-format", "json", env={"OLLAMA_DEBUG": "2"})
    try:
        body = {"model": "tiny", "prompt": "hello", "stream": False, "options": {"num_predict": 2}}
        assert server.request("POST", "/api/generate", body)[0] == 200
        assert server.request("GET", "/api/nowhere")[0] == 404
        server.wait_for(r'"path": "/api/nowhere"')
    finally:
        server.close()
    entries = [json.loads(line) for line in server.text().splitlines() if line.strip()]
    assert all({"time", "level", "source", "msg"} <= e.keys() for e in entries)
    access = [e for e in entries if e["logger"] == "ollama_compat.access" and "status" in e]
    assert {(e["status"], e["method"], e["path"]) for e in access} >= {(200, "POST", "/api/generate"),
                                                                      (404, "GET", "/api/nowhere")}  # fmt: skip
    assert all(e["client"] == "127.0.0.1" and e["latency_ms"] >= 0 and GIN.match(e["msg"]) for e in access)
    assert any(e["level"] == "TRACE" and e["msg"].startswith("generate prompt") and "hello" in e["msg"] for e in entries)


def test_a_logging_config_file_replaces_ours(models_dir, tmp_path):
    """A user's dictConfig: its handler and format, its levels, nothing of ours."""
    out = tmp_path / "mine.log"
    config = {"version": 1, "formatters": {"mine": {"format": "MINE %(levelname)s %(name)s %(message)s"}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "mine"}},
              "root": {"level": "INFO", "handlers": ["file"]}}  # fmt: skip
    (tmp_path / "logging.json").write_text(json.dumps(config))
    server = Serve(models_dir, tmp_path, "--log-config", str(tmp_path / "logging.json"))
    try:
        assert server.request("GET", "/api/tags")[0] == 200
        deadline = time.time() + 30
        while "/api/tags" not in (out.read_text() if out.exists() else "") and time.time() < deadline:
            time.sleep(0.1)
    finally:
        server.close()
    assert re.search(r'^MINE INFO ollama_compat.access \[GIN\] .* \| 200 \| .* GET +"/api/tags"$', out.read_text(), re.M)
    assert "[GIN]" not in server.text() and "time=" not in server.text()
