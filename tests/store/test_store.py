"""The model store: loose GGUFs, Ollama manifests and blobs, names, deletion."""

import hashlib
import json
import shutil

import pytest

from backend.interface import InvalidRequest, ModelNotFound
from backend.store import manifest as mf
from backend.store.model_store import ModelStore, canonical_name
from backend.testmodels import write_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_model("llama", tmp_path_factory.mktemp("src") / "tiny.gguf", seed=3)


def ollama_layout(root, gguf_path, name="mymoe:7b", system="Be brief.", params=None):
    """Lay out a model the way `ollama create` does: blobs by digest, one manifest."""
    ref = mf.parse_name(name)
    model = mf.write_blob(root, gguf_path.read_bytes())
    layers = [{"mediaType": mf.MEDIA_MODEL, **model}]
    layers.append({"mediaType": mf.MEDIA_SYSTEM, **mf.write_blob(root, system.encode())})
    layers.append({"mediaType": mf.MEDIA_PARAMS, **mf.write_blob(root, json.dumps(params or {"temperature": 0.2}).encode())})
    return mf.write_manifest(root, ref, layers)


@pytest.mark.parametrize("name", ["Foo", "foo:latest", "library/foo:latest", "registry.ollama.ai/library/foo:latest"])
def test_name_forms_are_equivalent(name):
    assert canonical_name(name) == "foo:latest"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a/b/c/d", "x:..", ".hidden", ""])
def test_traversal_and_malformed_names_are_rejected(bad):
    with pytest.raises(InvalidRequest):
        mf.parse_name(bad)


def test_loose_files_are_listed_by_stem(tmp_path, tiny_gguf):
    shutil.copy(tiny_gguf, tmp_path / "My-Model.Q8_0.gguf")
    (tmp_path / "notes.txt").write_text("not a model")
    store = ModelStore(tmp_path)
    [info] = store.list()
    assert info.name == "my-model.q8_0:latest"
    assert info.architecture == "llama" and info.size == tiny_gguf.stat().st_size
    assert len(info.digest) == 64 and int(info.digest, 16) >= 0
    assert store.resolve("My-Model.Q8_0").name == info.name
    with pytest.raises(ModelNotFound):
        store.resolve("other")


def test_ollama_manifests_are_served_as_is(tmp_path, tiny_gguf):
    manifest = ollama_layout(tmp_path, tiny_gguf)
    store = ModelStore(tmp_path)
    [info] = store.list()
    assert info.name == "mymoe:7b"
    assert info.digest == hashlib.sha256(manifest.path.read_bytes()).hexdigest()
    assert info.system == "Be brief." and info.parameters == {"temperature": 0.2}
    assert info.paths[0].endswith("sha256-" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())
    assert store.resolve("library/MyMoE:7b").name == "mymoe:7b"


def test_delete_keeps_blobs_other_models_share(tmp_path, tiny_gguf):
    ollama_layout(tmp_path, tiny_gguf, "a:1", system="A")
    ollama_layout(tmp_path, tiny_gguf, "b:1", system="B")
    store = ModelStore(tmp_path)
    model_blob = mf.blob_path(tmp_path, "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())
    store.delete("a:1")
    assert [i.name for i in store.list()] == ["b:1"]
    assert model_blob.exists()  # b still needs it
    assert not mf.blob_path(tmp_path, "sha256:" + hashlib.sha256(b"A").hexdigest()).exists()
    store.delete("b:1")
    assert store.list() == [] and not model_blob.exists()


def test_broken_file_is_not_listed_but_reported_on_resolve(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    (tmp_path / "broken.gguf").write_bytes(data[: len(data) // 2])
    store = ModelStore(tmp_path)
    assert store.list() == []
    with pytest.raises(Exception, match="broken.gguf"):
        store.resolve("broken")


def test_a_listing_survives_directories_removed_while_it_reads(tmp_path):
    # A listing takes no lock: a delete may remove a model's directory between the listing
    # reading its parent and reading it (Python 3.11's glob raised FileNotFoundError there).
    names = ("alpha", "beta", "gamma")
    for name in names:
        path = mf.manifest_path(tmp_path, mf.parse_name(name))
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    listing = mf.iter_manifests(tmp_path)
    first, _ = next(listing)
    for name in names:
        if name != first.model:
            shutil.rmtree(mf.manifest_path(tmp_path, mf.parse_name(name)).parent)
    assert list(listing) == []
    assert [ref.model for ref, _ in mf.iter_manifests(tmp_path)] == [first.model]
