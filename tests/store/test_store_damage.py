"""Damaged store entries (issue 20, item 7) are listed nowhere, explained by name and deletable,
and their parse is cached by file identity so a listing does not redo it (item 13)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from backend.store import model_store
from backend.store import manifest as mf
from backend.store.model_store import DamagedModel, ModelStore
from backend.testmodels import write_model

from .damaged import odd_gguf, write_damaged


@pytest.fixture
def damaged_store(tmp_path):
    good = write_model("llama", tmp_path / "src.gguf", seed=3)
    root = tmp_path / "models"
    root.mkdir()
    reasons = write_damaged(root, good)
    shutil.copy(good, root / "good.gguf")
    return root, reasons


def test_damaged_entries_are_skipped_explained_and_deletable(damaged_store, caplog):
    root, reasons = damaged_store
    with caplog.at_level(logging.WARNING, logger="backend.store.model_store"):
        store = ModelStore(root)
        assert [m.name for m in store.list()] == ["good:latest"]
    for name, reason in reasons.items():
        assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records), name
        with pytest.raises(DamagedModel, match=f"model '{name}' is damaged: .*{reason}".replace("(", r"\(")):
            store.resolve(name)
        assert store.entry_name(name) == name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="backend.store.model_store"):
        store.list()
    assert caplog.records == []  # logged once per file, not at every listing
    for name in reasons:
        store.delete(name)
    assert [m.name for m in store.list()] == ["good:latest"]
    assert list((root / "manifests").iterdir()) == [] and list((root / "blobs").iterdir()) == []
    assert not [p for p in root.glob("*.gguf") if p.name != "good.gguf"]


def test_a_listing_parses_each_file_once_until_it_changes(damaged_store, monkeypatch):
    root, reasons = damaged_store
    parsed: list[str] = []
    read: list[str] = []
    describe, read_manifest = model_store.describe, mf.read_manifest
    monkeypatch.setattr(model_store, "describe", lambda paths, name: (parsed.append(name), describe(paths, name))[1])
    monkeypatch.setattr(mf, "read_manifest", lambda *a: (read.append(a[1].model), read_manifest(*a))[1])
    store = ModelStore(root)
    store.list()
    first = (sorted(parsed), sorted(read))
    assert len(parsed) == 4  # three ill-typed loose GGUFs and the good one
    for _ in range(5):
        store.list()
    assert (sorted(parsed), sorted(read)) == first
    # A file replaced in place (new inode, size, mtime) is read again, and now it lists.
    odd_gguf(root / "ctx-string.gguf.new", llama__context_length=2048)
    os.replace(root / "ctx-string.gguf.new", root / "ctx-string.gguf")
    listed = [m.name for m in store.list()]
    assert parsed[len(first[0]):] == ["ctx-string:latest"] and "ctx-string:latest" in listed
    assert store.resolve("ctx-string").context_length == 2048
