"""/v1/messages fuzzed over its fields and types on the fake engine: never a 500, errors always in
Anthropic's shape, streams always Anthropic's framing ending in message_stop."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .fake_engine import FakeEngine
from .live_server import Server
from .test_fuzz import FUZZ
from .wire_strategies import field, inner, json_values, obj, rarely, schema, words

text_block = st.builds(lambda t: {"type": "text", "text": t}, words)
blocks = st.lists(inner(st.one_of(
    text_block,
    st.sampled_from([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
                     {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}, {"type": "image"},
                     {"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "redacted_thinking", "data": "x"},
                     {"type": "document", "source": {}}, {"type": "tool_use", "name": "f"}]),
    obj({"id": inner(words), "name": inner(words), "input": inner(st.dictionaries(words, json_values, max_size=2))},
        required={"type": st.just("tool_use")}),
    obj({"tool_use_id": inner(words), "is_error": inner(st.booleans()),
         "content": inner(words | st.lists(text_block, max_size=2))}, required={"type": st.just("tool_result")}),
)), max_size=3)  # fmt: skip
message = obj({}, required={"role": inner(rarely(st.sampled_from(["system", "USER"]), st.sampled_from(["user", "assistant"]), 20)),
                            "content": inner(st.text(max_size=40) | blocks)})  # fmt: skip
tool = obj({"type": inner(rarely(st.sampled_from(["web_search_20250305", "bash_20250124"]), st.just("custom"), 20)),
            "description": inner(words), "input_schema": inner(schema)}, required={"name": inner(words)})  # fmt: skip
body = obj(
    {"system": field(words | st.lists(text_block, max_size=2)),
     "temperature": field(st.floats(0, 1)), "top_p": field(st.floats(0, 1)), "top_k": field(st.integers(-1, 100)),
     "stop_sequences": field(st.lists(words, max_size=2)), "tools": field(st.lists(tool, max_size=2)),
     "tool_choice": field(st.sampled_from([{"type": "auto"}, {"type": "none"}, {"type": "any"}, {"type": "tool", "name": "f"}])),
     "thinking": field(st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"},
                                        {"type": "adaptive"}, {"type": "enabled", "budget_tokens": "lots"}])),
     "metadata": field(st.just({"user_id": "u"})),
     "output_config": field(obj({"effort": field(st.sampled_from(["low", "xhigh", "max", "nope"])),
                                 "format": field(st.builds(lambda s: {"type": "json_schema", "schema": s}, schema))}))},
    required={"stream": field(st.sampled_from([True, False])), "model": inner(rarely(st.sampled_from(["nope", "", "a/b/c/d"]), st.sampled_from(["mymoe", "plain"]), 20)),
              "max_tokens": inner(rarely(st.integers(-2, 0), st.integers(1, 64), 20)),
              "messages": inner(rarely(st.just([]), st.lists(message, min_size=1, max_size=3), 20))},
)  # fmt: skip


@pytest.fixture(scope="module")
def server():
    srv = Server(engine=FakeEngine())
    yield srv
    srv.close()


def post(server: Server, payload: dict) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps(payload), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def test_fuzz_messages(server):
    @settings(FUZZ, max_examples=300)
    @given(payload=body)
    def run(payload):
        status, content_type, data = post(server, payload)
        assert status < 500, (status, data[:600])
        if status >= 400:
            reply = json.loads(data)
            assert reply["type"] == "error" and isinstance(reply["error"]["message"], str), data[:600]
        elif content_type.startswith("text/event-stream"):
            frames = data.decode().split("\n\n")
            names = [f.split("\n")[0].removeprefix("event: ") for f in frames[:-1]]
            assert frames[-1] == "" and names[0] == "message_start" and names[-1] == "message_stop", data[:600]
            assert "error" not in names, data[:600]
        else:
            assert json.loads(data)["type"] == "message", data[:600]

    run()
