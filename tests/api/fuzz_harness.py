"""What the fuzz tests share: hypothesis's settings, one request on its own connection, the loop that
sends each drawn body, and the checks of the /v1 shapes (Anthropic's Messages, OpenAI's Responses)."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .fake_engine import FakeEngine
from .live_server import Server

# Deterministic in CI (the same examples each run); fresh examples on a developer's machine.
FUZZ = settings(deadline=None, database=None, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])  # fmt: skip

Check = Callable[[int, str, bytes], None]  # check(status, content_type, body)


def send(server: Server, method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None,
         timeout: float = 20.0) -> tuple[int, str, bytes]:  # fmt: skip
    """One request on its own connection; a server that does not answer within `timeout` fails it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()  # the stdlib writes integers past 2^64, as clients may


def fuzz(server: Server, method: str, path: str, bodies: st.SearchStrategy, examples: int, check: Check) -> None:
    """`examples` bodies drawn from `bodies`, each sent to `path` and its reply given to `check`."""

    @settings(FUZZ, max_examples=examples)
    @given(body=bodies)
    def run(body):
        status, content_type, data = send(server, method, path, dumps(body))
        event(f"{status}: {json.loads(data).get('error', '')}"[:70] if status >= 400 and content_type.startswith(
            "application/json") else f"{status} {content_type}")  # see pytest --hypothesis-show-statistics
        check(status, content_type, data)

    run()


def fuzz_fake_engine(path: str, bodies: st.SearchStrategy, examples: int, check: Check) -> None:
    """fuzz() on a server of its own over the fake engine."""
    server = Server(engine=FakeEngine())
    try:
        fuzz(server, "POST", path, bodies, examples, check)
    finally:
        server.close()


def anthropic_stream(data: bytes) -> None:
    """Anthropic's "event: name\\ndata: {...}" frames, from message_start to message_stop, no error event."""
    frames = data.decode().split("\n\n")
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames[:-1]]
    assert frames[-1] == "" and names[0] == "message_start" and names[-1] == "message_stop", data[:600]
    assert "error" not in names, data[:600]


def responses_stream(data: bytes) -> None:
    """The Responses API's events, numbered from 0, from response.created to a terminal response event."""
    frames = data.decode().split("\n\n")
    events = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames[:-1]]
    assert frames[-1] == "" and [e["sequence_number"] for e in events] == list(range(len(events))), data[:600]
    assert events[0]["type"] == "response.created", data[:600]
    assert events[-1]["type"] in ("response.completed", "response.incomplete"), data[:600]


def check_messages(status: int, content_type: str, data: bytes) -> None:
    """/v1/messages: never a 500, errors in Anthropic's shape, streams in its framing, replies messages."""
    assert status < 500, (status, data[:600])
    if status >= 400:
        reply = json.loads(data)
        assert reply["type"] == "error" and isinstance(reply["error"]["message"], str), data[:600]
    elif content_type.startswith("text/event-stream"):
        anthropic_stream(data)
    else:
        assert json.loads(data)["type"] == "message", data[:600]


def check_responses(status: int, content_type: str, data: bytes) -> None:
    """/v1/responses: never a 500, errors in OpenAI's shape, streams numbered, replies finished responses."""
    assert status < 500, (status, data[:600])
    if status >= 400:
        error = json.loads(data)["error"]
        assert isinstance(error["message"], str) and error["type"] == "invalid_request_error" or status == 404, data[:600]
    elif content_type.startswith("text/event-stream"):
        responses_stream(data)
    else:
        assert json.loads(data)["status"] in ("completed", "incomplete"), data[:600]
