"""Store files (issue 20, items 9-12): concurrent writers of one name, names in any case, models
that are no GGUF, the leftovers of a killed process, and blobs pruned as Ollama prunes them."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np
import pytest

from backend.interface import InvalidRequest
from backend.store import admin, pypi_models
from backend.store import manifest as mf
from backend.store.files import TempFile
from backend.store.model_store import ModelStore
from backend.testmodels import write_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model("llama", tmp_path_factory.mktemp("src") / "tiny.gguf", seed=3)


def upload(store: ModelStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writer = admin.BlobWriter(store, digest)
    writer.write(data)
    writer.commit()
    return digest


def manifest_files(root) -> list[str]:
    return sorted(str(p.relative_to(root / "manifests")) for p in (root / "manifests").rglob("*") if p.is_file())


def blobs(root) -> set[str]:
    return {p.name for p in (root / "blobs").iterdir()}


def referenced(root) -> set[str]:
    found = set()
    for _, path in mf.iter_manifests(root):
        found |= {"sha256-" + d[7:] for d in mf.referenced_digests(path.read_bytes())}
    return found


def test_sixteen_concurrent_creates_of_one_name_all_succeed(tmp_path, tiny):
    store = ModelStore(tmp_path)
    digest = upload(store, tiny.read_bytes())

    def create(i: int) -> None:
        admin.create(store, "same", files={"m.gguf": digest}, system=f"system {i}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(16)))  # re-raises the first failure
    assert manifest_files(tmp_path) == ["registry.ollama.ai/library/same/latest"]
    assert store.resolve("same").system.startswith("system ")
    # Each create replaced the one before and dropped its system blob: only the survivor's remain.
    assert blobs(tmp_path) == referenced(tmp_path)


def test_a_leftover_partial_manifest_is_no_model_and_is_removed_at_start_up(tmp_path, tiny):
    store = ModelStore(tmp_path)
    admin.create(store, "m", files={"m.gguf": upload(store, tiny.read_bytes())})
    tag = mf.manifest_path(tmp_path, mf.parse_name("m"))
    leftover = tag.with_name("latest.partial")
    leftover.write_bytes(tag.read_bytes()[:30])  # what a killed writer of an older version left
    assert [m.name for m in store.list()] == ["m:latest"]
    ModelStore(tmp_path)
    assert not leftover.exists() and tag.exists()
    with pytest.raises(InvalidRequest):
        admin.create(store, "m:latest.partial", source="m")  # such a name would never list


def test_names_differing_in_case_are_one_model(tmp_path, tiny):
    store = ModelStore(tmp_path)
    digest = upload(store, tiny.read_bytes())
    admin.create(store, "AdvCase", files={"m.gguf": digest}, system="first")
    admin.create(store, "advcase", files={"m.gguf": digest}, system="second")
    assert manifest_files(tmp_path) == ["registry.ollama.ai/library/AdvCase/latest"]
    assert [(m.name, m.system) for m in store.list()] == [("advcase:latest", "second")]
    admin.copy(store, "advcase", "ADVCASE")  # onto itself, in another spelling
    assert manifest_files(tmp_path) == ["registry.ollama.ai/library/AdvCase/latest"]
    store.delete("ADVCASE")
    assert store.list() == [] and manifest_files(tmp_path) == []


def test_spellings_an_older_version_wrote_list_once_and_delete_together(tmp_path, tiny):
    store = ModelStore(tmp_path)
    digest = upload(store, tiny.read_bytes())
    admin.create(store, "dup", files={"m.gguf": digest}, system="old")
    newer = mf.manifest_path(tmp_path, mf.parse_name("DUP"))
    newer.parent.mkdir(parents=True)
    doc = json.loads(mf.manifest_path(tmp_path, mf.parse_name("dup")).read_bytes())
    doc["layers"][1] = {"mediaType": mf.MEDIA_SYSTEM, **mf.write_blob(tmp_path, b"new")}
    newer.write_text(json.dumps(doc))
    os.utime(newer, ns=(time.time_ns() + 10**9,) * 2)
    assert [(m.name, m.system) for m in store.list()] == [("dup:latest", "new")]
    store.delete("dup")
    assert store.list() == [] and manifest_files(tmp_path) == []
    assert blobs(tmp_path) == set()  # what either spelling named went with them


@pytest.mark.parametrize("kind, reason", [
    ("random bytes after the magic", "corrupt or truncated GGUF header"),
    ("truncated", "is truncated: expected"),
    ("split part", "part of a 3-file split model"),
    ("absurd shape", "is truncated: expected 73786976294838206464 bytes, file has 128"),  # 2^32 x 2^32 x 4
])  # fmt: skip
def test_a_blob_that_is_no_loadable_gguf_is_refused_at_create(tmp_path, tiny, kind, reason):
    data = tiny.read_bytes()
    if kind == "random bytes after the magic":
        data = b"GGUF" + (3).to_bytes(4, "little") + np.random.default_rng(0).bytes(4096)
    elif kind == "truncated":
        data = data[: len(data) - 100]
    elif kind == "split part":
        data = write_model("llama", tmp_path / "split.gguf", seed=1, split_max_tensors=8).read_bytes()
    else:
        writer = gguf.GGUFWriter(str(tmp_path / "absurd.gguf"), "llama")
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32), raw_shape=(2**32, 2**32))
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
        writer.close()
        data = (tmp_path / "absurd.gguf").read_bytes()
    store = ModelStore(tmp_path / "models")
    digest = upload(store, data)
    with pytest.raises(InvalidRequest, match=f"blob {digest} is not a usable GGUF model: .*{reason}"):
        admin.create(store, "bad", files={"m.gguf": digest})
    assert manifest_files(tmp_path / "models") == [] and store.list() == []


def test_start_up_removes_what_killed_writers_left_but_not_live_writes(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "models"
    store = ModelStore(root)
    admin.create(store, "m", files={"m.gguf": upload(store, tiny.read_bytes())})
    dead = [root / "blobs" / ("sha256-" + "1" * 64 + ".partial"), root / "blobs" / ".upload-x1y2",
            root / "blobs" / ".tmp-abc", root / "manifests" / "registry.ollama.ai" / "library" / "m" / ".tmp-q",
            root / "smollm2-135m.gguf.tmp"]  # fmt: skip
    for path in dead:
        path.write_bytes(b"\0" * 1000)
    live = TempFile(root / "blobs", prefix=".upload-")  # an upload in progress, as BlobWriter holds it
    live.write(b"half")
    model = pypi_models.MODELS["smollm2:135m"]
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / f".{model.filename}.lock").touch()
    interrupted = cache / "models" / f".{model.filename}.k2j3"
    interrupted.write_bytes(b"\0" * 1000)
    ModelStore(root)
    assert [p for p in dead if p.exists()] == [] and not interrupted.exists()
    assert live.path.exists()
    live.abort()
    # A fetch in progress holds its model's lock: its extraction stays.
    interrupted.write_bytes(b"\0")
    with open(cache / f".{model.filename}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        ModelStore(root)
        assert interrupted.exists()
    assert [m.name for m in ModelStore(root).list()] == ["m:latest"]


def _age(root, hours: float) -> None:
    for path in (root / "blobs").iterdir():
        os.utime(path, (time.time() - hours * 3600,) * 2)


def test_re_create_prunes_the_replaced_blobs_unless_noprune(tmp_path, tiny):
    root = tmp_path / "models"
    store = ModelStore(root)
    digest = upload(store, tiny.read_bytes())
    admin.create(store, "m", files={"m.gguf": digest}, system="one")
    old_system = mf.blob_path(root, "sha256:" + hashlib.sha256(b"one").hexdigest())
    admin.create(store, "m", files={"m.gguf": digest}, system="two")
    assert not old_system.exists() and blobs(root) == referenced(root)
    kept = ModelStore(root, prune=False)
    admin.create(kept, "m", files={"m.gguf": digest}, system="three")
    assert mf.blob_path(root, "sha256:" + hashlib.sha256(b"two").hexdigest()).exists()
    ModelStore(root, prune=False)
    assert len(blobs(root)) == len(referenced(root)) + 1  # OLLAMA_NOPRUNE: kept at start-up too
    ModelStore(root)
    assert len(blobs(root)) == len(referenced(root)) + 1  # younger than the hour's grace
    _age(root, 2)
    ModelStore(root)
    assert blobs(root) == referenced(root)


def test_start_up_prune_waits_while_a_manifest_cannot_be_read(tmp_path, tiny):
    root = tmp_path / "models"
    store = ModelStore(root)
    admin.create(store, "m", files={"m.gguf": upload(store, tiny.read_bytes())})
    orphan = mf.blob_path(root, mf.write_blob(root, b"orphan")["digest"])
    broken = mf.manifest_path(root, mf.parse_name("broken"))
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b'{"layers": [')
    _age(root, 2)
    ModelStore(root)
    assert orphan.exists()  # the broken manifest might name it
    store.delete("broken")
    ModelStore(root)
    assert not orphan.exists() and [m.name for m in store.list()] == ["m:latest"]
