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
from .test_upstream_proxy import ASK, SCRIPT, TOOLS, Proxy, upstreams_toml


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


def test_a_real_engine_upstream_answers_through_the_proxy_as_it_answers_directly(tmp_path):
    """The upstream is a second ollama-compat running its real engine on a tiny generated model:
    greedy answers through the proxy (OpenAI wire in between) equal the upstream's own, token
    for token, for chat, raw generate and the token counts."""
    models = tmp_path / "models"
    models.mkdir()
    write_model("llama", models / "tiny.gguf", config={"max_position_embeddings": 256}, seed=3)
    upstream = Server(models_dir=models)
    proxy = Proxy(upstreams_toml({"remote-tiny": ("tiny", [upstream.url])}))
    try:
        options = {"temperature": 0, "num_predict": 12, "seed": 1}
        ask = [{"role": "user", "content": "hello world"}]
        via = ollama.Client(host=proxy.url)
        direct = ollama.Client(host=upstream.url)
        got = via.chat(model="remote-tiny", messages=ask, options=options)
        want = direct.chat(model="tiny", messages=ask, options=options)
        assert got.message.content == want.message.content and got.message.content
        assert (got.eval_count, got.prompt_eval_count, got.done_reason) == (
            want.eval_count, want.prompt_eval_count, want.done_reason)
        # Sampled, with every option the OpenAI wire carries only as vLLM's extensions.
        sampled = {"temperature": 0.9, "top_k": 5, "min_p": 0.02, "repeat_penalty": 1.3, "seed": 7, "num_predict": 16}
        answers = {via.chat(model="remote-tiny", messages=ask, options=sampled).message.content,
                   direct.chat(model="tiny", messages=ask, options=sampled).message.content}  # fmt: skip
        assert len(answers) == 1
        plain = direct.chat(model="tiny", messages=ask, options={**sampled, "repeat_penalty": 1.0, "top_k": 40})
        assert plain.message.content not in answers  # the options changed the answer: they did arrive
        streamed = list(via.chat(model="remote-tiny", messages=ask, options=options, stream=True))
        assert "".join(p.message.content for p in streamed) == want.message.content and len(streamed) > 2
        raw_got = via.generate(model="remote-tiny", prompt="hello world", raw=True, options=options)
        raw_want = direct.generate(model="tiny", prompt="hello world", raw=True, options=options)
        assert raw_got.response == raw_want.response and raw_got.eval_count == raw_want.eval_count
        # Log-probabilities, over chat's format and /v1/completions' legacy one. Each prompt is
        # asked once first: a prompt from the cache is scored with other kernels than a fresh one.
        def scored(reply, alternatives: bool):
            return [(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs] if alternatives else None)
                    for e in reply.logprobs]  # fmt: skip

        direct.chat(model="tiny", messages=ask, options=options, logprobs=True, top_logprobs=3)
        got, want = (c.chat(model=m, messages=ask, options=options, logprobs=True, top_logprobs=3)
                     for c, m in ((via, "remote-tiny"), (direct, "tiny")))  # fmt: skip
        assert len(want.logprobs) == 12 and len(want.logprobs[0].top_logprobs) == 3
        assert scored(got, True) == scored(want, True)
        direct.generate(model="tiny", prompt="hello", raw=True, options=options, logprobs=True, top_logprobs=3)
        got, want = (c.generate(model=m, prompt="hello", raw=True, options=options, logprobs=True, top_logprobs=3)
                     for c, m in ((via, "remote-tiny"), (direct, "tiny")))  # fmt: skip
        # The legacy format keys alternatives by their text: byte tokens that print alike collapse.
        assert scored(got, False) == scored(want, False) and len(got.logprobs) == 12
        alone = via.generate(model="remote-tiny", prompt="hello", raw=True, options=options, logprobs=True)
        assert scored(alone, False) == scored(want, False)  # without alternatives too (the legacy logprobs: 0)
        for g, w in zip(got.logprobs, want.logprobs):
            assert {(t.token, t.logprob) for t in g.top_logprobs} <= {(t.token, t.logprob) for t in w.top_logprobs}
            assert {t.token for t in g.top_logprobs} == {t.token for t in w.top_logprobs}
    finally:
        proxy.close()
        upstream.close()
