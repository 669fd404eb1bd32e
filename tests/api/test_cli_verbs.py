"""The CLI's Modelfile parser, upload of a local GGUF through create, pull with its progress bar,
and the interactive commands, against a live server on a tiny generated model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend.testmodels import write_model
from ollama_compat.cli import _human_time, _processor
from ollama_compat.modelfile import ModelfileError, parse_modelfile

from .live_server import Server

MODELFILE = '''# a comment
FROM ./tiny.gguf
PARAMETER temperature 0
PARAMETER stop "<|end|>"
PARAMETER stop User:
PARAMETER num_predict 3
SYSTEM """You answer
in one line."""
TEMPLATE "{% for m in messages %}{{ m['content'] }}{% endfor %}"
MESSAGE user Who are you?
MESSAGE assistant A tiny model.
MESSAGE user """Two
lines."""
'''


def test_modelfile_parser(tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    spec = parse_modelfile(MODELFILE, tmp_path)
    assert spec["from"] == str(tmp_path / "tiny.gguf")
    assert spec["parameters"] == {"temperature": 0, "stop": ["<|end|>", "User:"], "num_predict": 3}
    assert spec["system"] == "You answer\nin one line."
    assert spec["template"] == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert spec["messages"] == [{"role": "user", "content": "Who are you?"},
                                {"role": "assistant", "content": "A tiny model."},
                                {"role": "user", "content": "Two\nlines."}]  # fmt: skip
    assert parse_modelfile("FROM smollm2:135m\n", tmp_path)["from"] == "smollm2:135m"  # a model, not a file
    with pytest.raises(ModelfileError, match="MESSAGE role must be one of system, user, assistant"):
        parse_modelfile("FROM x\nMESSAGE bot hi\n", tmp_path)
    with pytest.raises(ModelfileError, match="ADAPTER"):
        parse_modelfile("FROM x\nADAPTER ./lora.gguf\n", tmp_path)
    with pytest.raises(ModelfileError, match="no FROM"):
        parse_modelfile("SYSTEM hi\n", tmp_path)


def test_processor_column():
    assert _processor({"size": 100, "size_vram": 0}) == "100% CPU"
    assert _processor({"size": 100, "size_vram": 100}) == "100% GPU"
    assert _processor({"size": 100, "size_vram": 52}) == "48%/52% CPU/GPU"


def test_times_read_as_ollama_prints_them():
    now = 1_700_000_000.0
    assert _human_time("2023-11-14T22:10:19.923456789Z", now) == "3 minutes ago"
    assert _human_time("2023-11-14T23:13:20+01:00", now) == "Less than a second ago"
    assert _human_time("2023-11-14T23:13:20.5+00:00", now) == "About an hour from now"
    assert _human_time("2323-11-14T22:13:20+00:00", now) == "Forever"
    assert _human_time("2023-11-11T22:13:20+00:00", now) == "3 days ago"
    assert _human_time("yesterday", now) == "yesterday"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    srv = Server(root)
    yield srv
    srv.close()


def cli(server, *args, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": server.url}
    return subprocess.run([sys.executable, "-m", "ollama_compat", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)  # fmt: skip


def test_create_uploads_a_local_gguf_and_keeps_the_modelfile(server, tmp_path):
    write_model("llama", tmp_path / "tiny.gguf", config={"max_position_embeddings": 256}, seed=9)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    done = cli(server, "create", "tiny", cwd=tmp_path)  # -f defaults to ./Modelfile
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "success", done.stderr
    blobs = server.engine.store.root / "blobs"
    assert not [p for p in blobs.iterdir() if p.name.startswith(".upload-")]
    info = server.engine.get_model("tiny")
    assert info.system == "You answer\nin one line." and len(info.messages) == 3
    assert info.parameters["num_predict"] == 3 and "{% for m in messages %}" in info.template
    shown = cli(server, "show", "tiny", "--modelfile").stdout
    assert 'SYSTEM """You answer\nin one line."""' in shown and "PARAMETER num_predict 3" in shown
    assert shown.endswith('MESSAGE assistant A tiny model.\nMESSAGE user """Two\nlines."""\n')
    # What show writes, create reads back to the same model.
    (tmp_path / "Shown").write_text(shown.replace(shown.splitlines()[1], "FROM tiny"))
    assert cli(server, "create", "tiny2", "-f", "Shown", cwd=tmp_path).returncode == 0
    again = server.engine.get_model("tiny2")
    assert (again.messages, again.system, again.template, again.parameters) == (
        info.messages, info.system, info.template, info.parameters)
    assert cli(server, "rm", "tiny2").returncode == 0
    chat = cli(server, "run", "tiny", stdin="/?\n/set nothink\n/clear\nhello\n/bye\n")
    assert chat.returncode == 0, chat.stderr
    assert "Available Commands" in chat.stdout and "Cleared session context" in chat.stdout
    assert cli(server, "rm", "tiny").returncode == 0


def test_pull_shows_progress_and_unknown_models_fail_clearly(server, smollm2_gguf):
    done = cli(server, "pull", "smollm2:135m")
    assert done.returncode == 0, done.stderr
    assert "pulling manifest" in done.stdout and "100%" in done.stdout and done.stdout.rstrip().endswith("success")
    assert "smollm2:135m" in cli(server, "list").stdout
    failed = cli(server, "pull", "llama3:70b")
    assert failed.returncode == 1 and "not available here" in failed.stderr and "smollm2:135m" in failed.stderr


def test_run_shows_thinking(server, tmp_path):
    write_model("llama", tmp_path / "tiny.gguf", config={"max_position_embeddings": 256}, seed=9)
    template = "{% for m in messages %}{{ m['content'] }}\\n{% endfor %}<think>\\n"
    (tmp_path / "Modelfile").write_text(f'FROM ./tiny.gguf\nPARAMETER num_predict 4\nTEMPLATE """{template}"""\n')
    assert cli(server, "create", "thinker", cwd=tmp_path).returncode == 0
    done = cli(server, "run", "thinker", "hello")
    assert done.returncode == 0 and done.stdout.startswith("Thinking...\n") and len(done.stdout) > len("Thinking...\n")
    assert cli(server, "run", "tiny-missing", "hello").returncode == 1  # not pullable: a clear error
    assert cli(server, "rm", "thinker").returncode == 0
