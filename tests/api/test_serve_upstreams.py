"""`ollama-compat serve` with OLLAMA_UPSTREAMS, end to end: the real server process reads the
upstreams file, lists the remote model next to the local ones and streams a chat from it. The
upstream is a second ollama-compat (fake engine) on another port; the official ollama client,
straight to that upstream, is the oracle for what comes through."""

from __future__ import annotations

import httpx
import ollama

from backend.testmodels import write_model

from .fake_engine import FakeEngine
from .live_server import Server
from .test_logs import Serve
from .test_upstream_proxy import ASK, SCRIPT, TOOLS


def test_serve_lists_and_streams_an_upstream_model(tmp_path):
    engine = FakeEngine()
    engine.script = SCRIPT  # thinking, text, a tool call
    upstream = Server(engine=engine)
    models = tmp_path / "models"
    models.mkdir()
    write_model("llama", models / "tiny.gguf", config={"max_position_embeddings": 256}, seed=1)
    config = tmp_path / "upstreams.toml"
    config.write_text(f'[models."remote-moe:30b"]\nmodel = "mymoe"\ncapabilities = ["completion", "tools", "thinking"]\n'
                      f'upstreams = ["{upstream.url}"]\n')  # fmt: skip
    server = Serve(models, tmp_path, env={"OLLAMA_UPSTREAMS": str(config)})
    try:
        client = ollama.Client(host=f"http://127.0.0.1:{server.port}")
        listed = {m.model: m for m in client.list().models}
        assert {"remote-moe:30b", "tiny:latest"} <= set(listed)
        server.wait_for(r"GET +\"/api/tags\"")  # the access line: served by this process
        tags = {m["name"]: m for m in httpx.get(f"http://127.0.0.1:{server.port}/api/tags").json()["models"]}
        assert (tags["remote-moe:30b"]["remote_model"], tags["remote-moe:30b"]["remote_host"]) == (
            "mymoe", upstream.url + "/v1")
        assert client.show("remote-moe:30b").details.family == "remote"

        parts = list(client.chat(model="remote-moe:30b", messages=ASK, tools=TOOLS, think=True, stream=True))
        want = list(ollama.Client(host=upstream.url).chat(model="mymoe", messages=ASK, tools=TOOLS, think=True,
                                                          stream=True))  # fmt: skip
        assert len(parts) > 3 and [p.done for p in parts].count(True) == 1 and parts[-1].done  # streamed
        for field in ("content", "thinking"):
            assert "".join(getattr(p.message, field) or "" for p in parts) == \
                   "".join(getattr(w.message, field) or "" for w in want)  # fmt: skip
        calls = [c.function for p in parts for c in p.message.tool_calls or []]
        assert calls == [c.function for w in want for c in w.message.tool_calls or []] and calls
        assert (parts[-1].done_reason, parts[-1].prompt_eval_count) == (want[-1].done_reason, want[-1].prompt_eval_count)
        assert engine.rendered[-1]["messages"] == ASK  # the request reached the upstream as sent
    finally:
        server.close()
        upstream.close()
