"""An app over the fake engine, served by aiohttp's test server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import orjson
import pytest

from ollama_compat.app import create_app, server_options
from ollama_compat.settings import Settings

from .fake_engine import FakeEngine
from .live_server import Server


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def make_app(engine, env: dict | None = None):
    return create_app(engine, Settings.from_env(env or {}))


@pytest.fixture
async def client(aiohttp_client, engine):
    return await aiohttp_client(make_app(engine), server_kwargs=server_options(Settings.from_env({})))


def ndjson(text: str) -> list[dict]:
    """Parses a stream and checks Ollama's framing on the way: whole lines, no blank ones, a
    trailing newline on the last, exactly one done:true (or status success) and it comes last."""
    assert text.endswith("\n") and "\n\n" not in text
    lines = [orjson.loads(line) for line in text[:-1].split("\n")]
    done = [i for i, line in enumerate(lines) if line.get("done") or line.get("status") == "success"]
    assert done == [len(lines) - 1] or "error" in lines[-1]  # progress streams end in "success"
    return lines


@pytest.fixture
def smollm2_server(smollm2_gguf, tmp_path) -> Iterator[Server]:
    """A real server over SmolLM2 alone, the model of the golden prompts."""
    os.symlink(smollm2_gguf, tmp_path / "smollm2.gguf")
    server = Server(tmp_path)
    yield server
    server.close()
