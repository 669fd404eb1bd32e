"""The store through the HTTP API (issue 20, items 7, 10, 11, 14 and 15): damaged entries never
break a listing or start-up, names compare in any case, non-GGUF uploads are refused and damaged
models still delete, ill-typed store requests are 400, and `from` never reads a server path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from backend.testmodels import write_model

from ..store.damaged import write_damaged
from .store_server import ollama_layout, store_client


@pytest.fixture
def root(tmp_path):
    gguf = write_model("llama", tmp_path / "src.gguf", config={"max_position_embeddings": 128}, seed=4)
    return ollama_layout(tmp_path / "models", "good", gguf)


@pytest.fixture
async def client(aiohttp_client, root):
    async with store_client(aiohttp_client, root, num_parallel=1) as client:
        yield client


async def names(client, path="/api/tags") -> list[str]:
    r = await client.get(path)
    assert r.status == 200
    body = await r.json()
    return sorted(m["name"] if "name" in m else m["id"] for m in body.get("models", body.get("data", [])))


def upload_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_damaged_entries_break_no_listing_and_are_explained(client, root, tmp_path):
    reasons = write_damaged(root, tmp_path / "src.gguf")
    assert await names(client) == ["good:latest"]
    assert await names(client, "/v1/models") == ["good:latest"]
    assert (await client.post("/api/show", json={"model": "good"})).status == 200
    for name, reason in reasons.items():
        r = await client.post("/api/show", json={"model": name})
        assert r.status == 500 and (await r.json())["error"].startswith(f"model '{name}' is damaged: ")
        assert reason in (await r.json())["error"]
        r = await client.post("/api/chat", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 500 and "is damaged" in (await r.json())["error"]
    assert (await client.delete("/api/delete", json={"model": "ctx-inf"})).status == 200
    assert (await client.delete("/api/delete", json={"model": "list-manifest"})).status == 200
    r = await client.post("/api/show", json={"model": "list-manifest"})
    assert r.status == 404


def test_a_damaged_store_does_not_stop_the_server_starting(root, tmp_path):
    write_damaged(root, tmp_path / "src.gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "ollama_compat", "serve", "--no-default-model"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tags", timeout=5) as r:
                    listed = [m["name"] for m in json.load(r)["models"]]
                break
            except OSError:
                time.sleep(0.1)
        assert listed == ["good:latest"]
    finally:
        proc.terminate()
        proc.wait(30)


async def test_names_in_any_case_are_one_model(client, root):
    for name, system in (("AdvCase", "first"), ("advcase", "second")):
        r = await client.post("/api/create", json={"model": name, "from": "good", "system": system, "stream": False})
        assert r.status == 200
    assert await names(client) == ["advcase:latest", "good:latest"]
    assert (await (await client.post("/api/show", json={"model": "ADVCASE"})).json())["system"] == "second"
    assert (await client.delete("/api/delete", json={"model": "advcase"})).status == 200
    assert await names(client) == ["good:latest"]
    assert not (root / "manifests" / "registry.ollama.ai" / "library" / "AdvCase").exists()


async def test_uploads_that_are_no_gguf_are_refused_and_damaged_models_delete(client, root, tmp_path):
    data = (tmp_path / "src.gguf").read_bytes()
    for bad in (b"GGUF" + np.random.default_rng(1).bytes(8192), data[: len(data) // 2]):
        digest = upload_digest(bad)
        assert (await client.post(f"/api/blobs/{digest}", data=bad)).status == 201
        r = await client.post("/api/create", json={"model": "bad", "files": {"m.gguf": digest}, "stream": False})
        assert r.status == 400 and "is not a usable GGUF model" in (await r.json())["error"]
        r = await client.post("/api/create", json={"model": "bad", "files": {"m.gguf": digest}})  # streamed
        assert r.status == 400
    assert await names(client) == ["good:latest"]
    # A truncated GGUF dropped beside the store lists nowhere, and deletes.
    (root / "cut.gguf").write_bytes(data[: len(data) // 2])
    assert await names(client) == ["good:latest"]
    assert (await client.delete("/api/delete", json={"model": "cut"})).status == 200
    assert not (root / "cut.gguf").exists()


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/copy", {"source": 5, "destination": "x"}, "source and destination must be model names"),
        ("/api/copy", {"source": "good", "destination": ["x"]}, "source and destination must be model names"),
        ("/api/copy", {"source": {"a": 1}, "destination": "x"}, "source and destination must be model names"),
        ("/api/create", {"model": "x", "from": "good", "system": 5}, "system must be a string, not int"),
        ("/api/create", {"model": "x", "from": "good", "template": 5}, "template must be a string, not int"),
        ("/api/create", {"model": "x", "from": "good", "license": 5}, "license must be a string or a list of strings"),
        ("/api/create", {"model": "x", "from": "good", "license": [1]}, "license must be a string or a list"),
        ("/api/create", {"model": "x", "from": 5}, "from must be a model name (a string), not int"),
        ("/api/create", {"model": "x", "from": ["good"]}, "from must be a model name (a string), not list"),
        ("/api/create", {"model": "x", "from": "good", "messages": "hi"}, "messages must be a list"),
        ("/api/create", {"model": "x", "from": "good", "messages": [5]}, "messages[0] must be an object"),
        ("/api/create", {"model": 5, "from": "good"}, "model is required"),
        ("/api/pull", {"model": "a b"}, "invalid model name"),
        ("/api/pull", {"model": "../x"}, "invalid model name"),
        ("/api/pull", {"model": 5}, "invalid model name"),
        ("/api/pull", {"model": "a b", "stream": False}, "invalid model name"),
    ],
)
async def test_ill_typed_store_requests_are_400(client, root, path, body, message):
    before = sorted(p.name for p in (root / "blobs").iterdir())
    r = await client.post(path, json=body)
    assert r.status == 400 and message in (await r.json())["error"]
    assert sorted(p.name for p in (root / "blobs").iterdir()) == before


@pytest.mark.parametrize("body", [{"model": 5}, {"model": ["x"]}, {"name": {"a": 1}}, {"model": "a b"}])
async def test_delete_with_an_invalid_name_is_400(client, body):
    r = await client.delete("/api/delete", json=body)
    assert r.status == 400 and "is invalid" in (await r.json())["error"]
    assert await names(client) == ["good:latest"]


async def test_from_never_reads_a_server_path(client, root, tmp_path, monkeypatch):
    """Ollama's server takes `from` as a model name only (its CLI uploads local files): a path
    is refused alike whether it exists, is missing or unreadable, and nothing is linked in."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    real = shutil.copy(tmp_path / "src.gguf", outside / "weights.gguf")
    unreadable = outside / "secret.gguf"
    unreadable.write_bytes(b"GGUF")
    unreadable.chmod(0)
    blobs_before = sorted(p.name for p in (root / "blobs").iterdir())
    answers = []
    for target in (real, outside / "missing.gguf", unreadable, outside, "/etc/passwd"):
        for headers in ({}, {"Origin": "chrome-extension://abc"}):
            r = await client.post("/api/create", json={"model": "x", "from": str(target), "stream": False},
                                  headers=headers)  # fmt: skip
            answers.append((r.status, (await r.json())["error"].replace(str(target), "PATH")))
    assert set(answers) == {(400, 'invalid model name "PATH" in from (to create from a file, upload it with '
                                  'POST /api/blobs/:digest and name it in "files")')}  # fmt: skip
    # A relative path is a valid model name, and is looked up as one, never opened.
    monkeypatch.chdir(outside)
    r = await client.post("/api/create", json={"model": "x", "from": "weights.gguf", "stream": False})
    assert r.status == 404 and (await r.json())["error"] == "model 'weights.gguf' not found"
    assert sorted(p.name for p in (root / "blobs").iterdir()) == blobs_before
    assert os.stat(real).st_nlink == 1 and await names(client) == ["good:latest"]
