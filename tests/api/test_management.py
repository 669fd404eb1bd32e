"""Model management on the real engine over a tmp store: an Ollama layout served as it is,
blob upload, create, copy, delete, pull, and names that try to escape the store."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from backend.testmodels import write_model

from .conftest import ndjson
from .store_server import ollama_layout, store_client


@pytest.fixture
def store(tmp_path):
    """An Ollama store by hand: blobs/sha256-* and manifests/registry.ollama.ai/library/..."""
    gguf = tmp_path / "src.gguf"
    write_model("llama", gguf, config={"max_position_embeddings": 256}, seed=4)
    return ollama_layout(tmp_path / "models", "mymoe:7b", gguf, system=b"You are terse."), gguf


@pytest.fixture
async def client(aiohttp_client, store):
    async with store_client(aiohttp_client, store[0], num_parallel=2) as client:
        yield client


async def names(client) -> list[str]:
    return [m["name"] for m in (await (await client.get("/api/tags")).json())["models"]]


async def test_an_ollama_store_is_listed_shown_and_served(client):
    assert await names(client) == ["mymoe:7b"]
    shown = await (await client.post("/api/show", json={"model": "mymoe:7b"})).json()
    assert shown["system"] == "You are terse." and shown["details"]["family"] == "llama"
    r = await client.post("/api/generate", json={"model": "mymoe:7b", "prompt": "hello", "stream": False,
                                                "options": {"num_predict": 4, "temperature": 0}})  # fmt: skip
    assert r.status == 200 and (await r.json())["eval_count"] == 4


async def test_blob_upload_checks_the_digest_and_leaves_nothing_on_mismatch(client, store):
    root, gguf = store
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs_before = sorted(os.listdir(root / "blobs"))
    wrong = "sha256:" + "0" * 64
    r = await client.post(f"/api/blobs/{wrong}", data=data)
    assert r.status == 400 and (await r.json())["error"].startswith("digest mismatch")
    assert sorted(os.listdir(root / "blobs")) == blobs_before  # no partial file left
    assert (await client.head(f"/api/blobs/{wrong}")).status == 404
    assert (await client.post("/api/blobs/sha256:xyz", data=b"x")).status == 400
    other = data + b"\0" * 32  # a new blob (the original is already stored)
    digest = "sha256:" + hashlib.sha256(other).hexdigest()
    assert (await client.post(f"/api/blobs/{digest}", data=other)).status == 201
    assert (await client.head(f"/api/blobs/{digest}")).status == 200
    assert (await client.post(f"/api/blobs/{digest}", data=other)).status == 200  # already there


async def test_create_copy_delete_round_trip(client, store):
    root, gguf = store
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    r = await client.post("/api/create", json={"model": "fromblob", "files": {"m.gguf": digest}})
    lines = ndjson(await r.text())
    assert lines[-1] == {"status": "success"}
    r = await client.post("/api/create", json={"model": "pirate", "from": "mymoe:7b", "system": "Talk like a pirate.",
                                              "parameters": {"temperature": 0.1, "stop": ["Arr"]}, "stream": False})  # fmt: skip
    assert r.status == 200 and await r.json() == {"status": "success"}
    shown = await (await client.post("/api/show", json={"model": "pirate"})).json()
    assert shown["system"] == "Talk like a pirate." and "temperature" in shown["parameters"]
    assert (await client.post("/api/copy", json={"source": "pirate", "destination": "pirate2"})).status == 200
    assert set(await names(client)) == {"mymoe:7b", "fromblob:latest", "pirate:latest", "pirate2:latest"}
    assert (await client.delete("/api/delete", json={"model": "pirate"})).status == 200
    shown = await (await client.post("/api/show", json={"model": "pirate2"})).json()
    assert shown["system"] == "Talk like a pirate."  # the copy's blobs survived the delete
    text = b"not a model"
    text_digest = "sha256:" + hashlib.sha256(text).hexdigest()
    assert (await client.post(f"/api/blobs/{text_digest}", data=text)).status == 201
    r = await client.post("/api/create", json={"model": "t", "files": {"t.gguf": text_digest}, "stream": False})
    assert r.status == 400 and (await r.json())["error"].endswith("not a GGUF file (bad magic)")
    for unsupported in ({"quantize": "q4_K_M"}, {"adapters": {"a.gguf": digest}}):
        r = await client.post("/api/create", json={"model": "q", "from": "mymoe:7b", **unsupported})
        assert r.status == 400 and "not supported" in (await r.json())["error"]
    r = await client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert r.status == 404 and (await r.json())["error"] == 'model "nope" not found'


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "x/y/z/w", "..", "ok:../../etc"])
async def test_names_that_escape_the_store_are_refused(client, store, bad):
    root, _ = store
    r = await client.post("/api/create", json={"model": bad, "from": "mymoe:7b"})
    assert r.status == 400
    r = await client.post("/api/copy", json={"source": "mymoe:7b", "destination": bad})
    assert r.status == 400
    r = await client.delete("/api/delete", json={"model": bad})
    assert r.status in (400, 404)
    assert not any(p.name == "passwd" for p in root.rglob("*"))


async def test_pull_of_an_unknown_model_is_a_clear_error_line(client):
    r = await client.post("/api/pull", json={"model": "llama3:70b"})
    lines = ndjson(await r.text())
    assert lines[0] == {"status": "pulling manifest"} and "not available here" in lines[-1]["error"]
    r = await client.post("/api/pull", json={"model": "llama3:70b", "stream": False})
    assert r.status == 500 and "smollm2:135m" in (await r.json())["error"]


async def test_pull_of_a_packaged_model(client, smollm2_gguf):
    r = await client.post("/api/pull", json={"model": "smollm2:135m"})
    lines = ndjson(await r.text())
    assert lines[0]["status"] == "pulling manifest" and lines[-1] == {"status": "success"}
    assert any(line.get("total") == line.get("completed") == smollm2_gguf.stat().st_size for line in lines)
    assert "smollm2:135m" in await names(client)
    r = await client.post("/api/push", json={"model": "smollm2:135m"})
    assert r.status == 400


async def test_an_upload_cut_off_midway_leaves_nothing(client, store):
    root, _ = store
    before = sorted(os.listdir(root / "blobs"))
    digest = "sha256:" + "1" * 64
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n"
    writer.write(head.encode() + b"G" * 1000)  # a thousandth of the announced body, then gone
    await writer.drain()
    for _ in range(300):  # until the handler has opened its temporary file
        if len(os.listdir(root / "blobs")) > len(before):
            break
        await asyncio.sleep(0.01)
    assert any(name.startswith(".upload-") for name in os.listdir(root / "blobs"))
    writer.close()
    for _ in range(200):
        if sorted(os.listdir(root / "blobs")) == before:
            break
        await asyncio.sleep(0.01)
    assert sorted(os.listdir(root / "blobs")) == before
