"""`ollama-compat run --think[=value]` as Ollama's CLI takes it, and no leading whitespace shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend.interface import Chunk

from .fake_engine import METRICS, FakeEngine
from .live_server import Server


@pytest.fixture(scope="module")
def served():
    engine = FakeEngine()
    # What a thinking model writes with thinking off: the blank lines after an empty <think></think>.
    engine.script = [Chunk(content="\n\n"), Chunk(content=" Hello"), Chunk(content=" world"),
                     Chunk(done=True, done_reason="stop", metrics=METRICS)]  # fmt: skip
    server = Server(engine=engine)
    yield server, engine
    server.close()


def run(server, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    return subprocess.run([sys.executable, "-m", "ollama_compat", "run", "mymoe", *args], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip


@pytest.mark.parametrize("flag, sent", [("--think=false", False), ("--think", True), ("--think=high", "high"),
                                        ("--nothink", False)])  # fmt: skip
def test_run_think_values_reach_the_server_and_the_answer_has_no_leading_space(served, flag, sent):
    server, engine = served
    done = run(server, flag, "hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello world\n"  # the whitespace before the answer is not shown
    assert engine.rendered[-1]["think"] == sent


def test_run_think_rejects_other_values(served):
    done = run(served[0], "--think=maybe", "hi")
    assert done.returncode == 2 and "invalid value for --think: 'maybe'" in done.stderr
