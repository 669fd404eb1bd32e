"""Create, copy, delete and pull against each other (issue 20, item 8 and "done when"), from
threads on the store and from concurrent HTTP requests on the app; then the store is checked:
every manifest's blobs exist, nothing is orphaned once pruned, and a fresh start lists it all."""

from __future__ import annotations

import asyncio
import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.engine.local_engine import create_engine
from backend.interface import InvalidRequest, ModelNotFound
from backend.store import admin
from backend.store import manifest as mf
from backend.store import prune
from backend.store.model_store import ModelStore
from backend.testmodels import write_model
from ollama_compat.app import create_app
from ollama_compat.settings import Settings

NAMES = ["alpha", "beta", "Gamma:v1", "gamma:V1", "team/delta:2"]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    return [write_model("llama", src / f"m{i}.gguf", config={"max_position_embeddings": 64}, seed=i).read_bytes()
            for i in range(2)]  # fmt: skip


def check_store(root, uploaded: set[str]) -> list[str]:
    """The store's invariants; returns the names its manifests give."""
    names, used = [], set()
    for ref, path in mf.iter_manifests(root):
        manifest = mf.read_manifest(root, ref, path)  # every manifest parses as Ollama's
        for digest in mf.referenced_digests(path.read_bytes()):
            assert mf.blob_path(root, digest).is_file(), f"{ref.display()} names missing blob {digest}"
            used.add(digest)
        assert manifest.layer(mf.MEDIA_MODEL) is not None
        names.append(ref.display())
    on_disk = {"sha256:" + p.name[7:] for p in (root / "blobs").iterdir() if p.name.startswith("sha256-")}
    assert on_disk - used <= uploaded  # only an upload whose create lost the race is unnamed
    temps = [p for p in root.rglob(".*") if p.name != ".lock"]
    assert temps == [], temps
    prune.prune_blobs(root, grace_s=0)
    assert {"sha256:" + p.name[7:] for p in (root / "blobs").iterdir()} == used
    assert len(names) == len(set(names)), names  # one manifest per name, whatever the case
    return sorted(names)


def test_threads_racing_on_the_store(tmp_path, ggufs, smollm2_gguf):
    root = tmp_path / "models"
    store = ModelStore(root)
    digests = ["sha256:" + hashlib.sha256(g).hexdigest() for g in ggufs]
    failures: list[BaseException] = []

    def upload(i: int) -> str:
        if not admin.has_blob(store, digests[i]):
            writer = admin.BlobWriter(store, digests[i])
            writer.write(ggufs[i])
            writer.commit()
        return digests[i]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for step in range(30):
            op, name, other = rng.random(), rng.choice(NAMES), rng.choice(NAMES)
            try:
                if op < 0.3:
                    admin.create(store, name, files={"m.gguf": upload(rng.randrange(2))}, system=f"s{seed}.{step}")
                elif op < 0.45:
                    admin.create(store, name, source=other, system=f"derived {seed}")
                elif op < 0.6:
                    admin.copy(store, other, name)
                elif op < 0.85:
                    store.delete(name)
                elif op < 0.88:
                    admin.pull(store, "smollm2:135m", lambda status: None)
                else:
                    for info in store.list():  # never raises, never lists a damaged model
                        store.resolve(info.name)
            except ModelNotFound:
                pass  # deleted by another thread first
            except InvalidRequest as e:
                if "not found: upload it" not in str(e):  # its blob went with a delete: upload again
                    failures.append(e)
            except BaseException as e:
                failures.append(e)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(6)))
    assert failures == []
    names = check_store(root, set(digests))
    assert sorted(m.name for m in ModelStore(root).list()) == names


async def test_concurrent_requests_on_the_app(aiohttp_client, tmp_path, ggufs, smollm2_gguf):
    root = tmp_path / "models"
    engine = create_engine(str(root), num_parallel=1)
    client = await aiohttp_client(create_app(engine, Settings.from_env({"OLLAMA_MODELS": str(root)})))
    digests = ["sha256:" + hashlib.sha256(g).hexdigest() for g in ggufs]
    rng = random.Random(7)

    async def create_from_file(name: str, i: int) -> tuple[int, str]:
        if (await client.head(f"/api/blobs/{digests[i]}")).status != 200:  # as the CLI uploads
            await client.post(f"/api/blobs/{digests[i]}", data=ggufs[i])
        return await status(client.post("/api/create", json={"model": name, "files": {"m.gguf": digests[i]},
                                                              "system": name, "stream": False}))  # fmt: skip

    def request(k: int):
        name, other = rng.choice(NAMES), rng.choice(NAMES)
        return [
            lambda: create_from_file(name, k % 2),
            lambda: status(client.post("/api/create", json={"model": name, "from": other, "stream": False})),
            lambda: status(client.post("/api/copy", json={"source": other, "destination": name})),
            lambda: status(client.delete("/api/delete", json={"model": name})),
            lambda: status(client.get("/api/tags")),
            lambda: status(client.post("/api/show", json={"model": other})),
        ][k % 6]()

    async def status(pending) -> tuple[int, str]:
        async with pending as r:
            return r.status, await r.text()

    statuses = await asyncio.gather(*(request(k) for k in range(60)),
                                    status(client.post("/api/pull", json={"model": "smollm2:135m", "stream": False})))
    for code, text in statuses:
        # 404: deleted by another request first; 400: its blob went with a delete (upload again).
        assert code == 200 or code == 404 or (code == 400 and "not found: upload it" in text), (code, text)
    assert [code for code, _ in statuses].count(200) > 20
    names = check_store(root, set(digests))
    listed = sorted(m["name"] for m in (await (await client.get("/api/tags")).json())["models"])
    assert listed == names
    engine.close()
    # A fresh server over the same directory starts and lists everything.
    again = create_engine(str(root), num_parallel=1)
    client = await aiohttp_client(create_app(again, Settings.from_env({"OLLAMA_MODELS": str(root)})))
    assert sorted(m["name"] for m in (await (await client.get("/api/tags")).json())["models"]) == names
    again.close()


@pytest.mark.parametrize("recreate", [False, True])
def test_a_model_deleted_between_scan_and_read_is_gone_not_damaged(tmp_path, ggufs, recreate):
    """The race the threads above hit: resolve scans a manifest, a delete removes it before it is
    read. That is a model not found (or, re-created meanwhile, the new one), never 'damaged'."""
    store = ModelStore(tmp_path / "models")
    digest = "sha256:" + hashlib.sha256(ggufs[0]).hexdigest()

    def upload() -> str:  # again after a delete: it takes the blob no other manifest uses
        writer = admin.BlobWriter(store, digest)
        writer.write(ggufs[0])
        writer.commit()
        return digest

    admin.create(store, "team/delta:2", files={"m.gguf": upload()})
    scan = store._scan

    def racing_scan():
        entries = scan()
        store._scan = scan  # once: the next scan sees the store as it is now
        store.delete("team/delta:2")
        if recreate:
            admin.create(store, "team/delta:2", files={"m.gguf": upload()}, system="again")
        return entries

    store._scan = racing_scan
    if recreate:
        assert store.resolve("team/delta:2").system == "again"
    else:
        with pytest.raises(ModelNotFound):
            store.resolve("team/delta:2")
