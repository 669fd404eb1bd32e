"""The CLI as a user drives it: subprocesses against a live server on SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .live_server import Server


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    os.symlink(smollm2_gguf, root / "smollm2.gguf")
    srv = Server(root)
    yield srv
    srv.close()


def cli(server, *args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    return subprocess.run([sys.executable, "-m", "ollama_compat", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)  # fmt: skip


def test_create_run_and_manage_a_model(server, tmp_path):
    (tmp_path / "Modelfile").write_text(
        'FROM smollm2\nPARAMETER temperature 0\nPARAMETER num_predict 24\n'
        'SYSTEM """You are a helpful geography assistant.\nAnswer in one sentence."""\n'
    )
    done = cli(server, "create", "geo", "-f", str(tmp_path / "Modelfile"))
    assert done.returncode == 0 and "success" in done.stdout, done.stderr
    listing = cli(server, "list").stdout
    assert listing.startswith("NAME") and "geo:latest" in listing and "smollm2:latest" in listing

    chat = cli(server, "run", "geo", stdin='What is the capital of France?\n"""Name the capital\nof Italy."""\n/bye\n')
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout and "Rome" in chat.stdout
    one_shot = cli(server, "run", "geo", "What", "is", "the", "capital", "of", "Germany?")
    assert "Berlin" in one_shot.stdout

    shown = cli(server, "show", "geo").stdout
    assert "llama" in shown and "temperature" in shown and "geography" in shown
    assert "geo:latest" in cli(server, "ps").stdout
    assert cli(server, "cp", "geo", "geo2").returncode == 0
    assert cli(server, "rm", "geo2").returncode == 0 and "geo2" not in cli(server, "list").stdout
    assert cli(server, "stop", "geo").returncode == 0
    assert "geo:latest" not in cli(server, "ps").stdout


def test_errors_are_one_line_and_nonzero(server):
    done = cli(server, "show", "missing")
    assert done.returncode == 1 and done.stderr.strip() == "Error: model 'missing' not found"
    env_less = subprocess.run([sys.executable, "-m", "ollama_compat", "list"], capture_output=True, text=True,
                              env={**os.environ, "OLLAMA_HOST": "127.0.0.1:1"}, timeout=60)  # fmt: skip
    assert env_less.returncode == 1 and "could not connect" in env_less.stderr
    assert "ollama-compat version is" in cli(server, "--version").stdout
