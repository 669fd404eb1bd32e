"""Ollama's on-disk model layout: names, manifests under manifests/, content-addressed blobs/."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..interface import InvalidRequest
from .files import write_atomic

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

# Ollama's name parts: letters, digits, '_', '-', '.'; no part starts with '.' or '-', so no
# '..' component and no absolute path can ever be formed from a name.
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass(frozen=True)
class ModelRef:
    host: str
    namespace: str
    model: str
    tag: str

    def display(self) -> str:
        """DisplayShortest: host dropped when default, namespace dropped when `library`."""
        name = f"{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE or self.host != DEFAULT_HOST:
            name = f"{self.namespace}/{name}"
        if self.host != DEFAULT_HOST:
            name = f"{self.host}/{name}"
        return name.lower()

    def key(self) -> tuple[str, str, str, str]:
        """Names compare case-insensitively, as in Ollama."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())


def parse_name(name: str) -> ModelRef:
    """`x`, `x:tag`, `ns/x:tag`, `host/ns/x:tag`. Anything else (`../x`, `/etc/passwd`) is 400."""
    raw = name.strip()
    tag = DEFAULT_TAG
    head, sep, last = raw.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
    parts = [p for p in head.split("/")] if sep else []
    if len(parts) > 2 or any(p == "" for p in parts):
        raise InvalidRequest(f'name "{name}" is invalid')
    host = parts[0] if len(parts) == 2 else DEFAULT_HOST
    namespace = parts[-1] if parts else DEFAULT_NAMESPACE
    ok = _HOST.match(host) and _PART.match(namespace) and _PART.match(last) and _PART.match(tag)
    # `<tag>.partial` is how older versions named a manifest being written.
    if not ok or ".." in raw or tag.endswith(".partial"):
        raise InvalidRequest(f'name "{name}" is invalid')
    return ModelRef(host, namespace, last, tag)


def blob_path(root: Path, digest: str) -> Path:
    m = _DIGEST.match(digest)
    if not m:
        raise InvalidRequest(f'invalid digest "{digest}"')
    return root / "blobs" / f"sha256-{m[1]}"


def manifest_path(root: Path, ref: ModelRef) -> Path:
    return root / "manifests" / ref.host / ref.namespace / ref.model / ref.tag


class ManifestError(ValueError):
    """What is wrong with a manifest file, in one line."""


@dataclass(frozen=True)
class Manifest:
    ref: ModelRef
    path: Path
    digest: str  # sha256 hex of the manifest bytes: what /api/tags reports
    layers: tuple[dict[str, Any], ...]
    mtime: float

    def layer(self, media_type: str) -> dict[str, Any] | None:
        return next((layer for layer in self.layers if layer["mediaType"] == media_type), None)

    def size(self) -> int:
        return sum(layer["size"] for layer in self.layers)


def _check_layer(layer: Any, where: str) -> dict[str, Any]:
    """Ollama's Layer as its JSON decoder would take it: mediaType and digest strings, size an
    integer; anything else fails to decode there too."""
    if not isinstance(layer, dict):
        raise ManifestError(f"{where} is {type(layer).__name__}, not an object")
    media_type, digest, size = layer.get("mediaType", ""), layer.get("digest"), layer.get("size", 0)
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}: mediaType is {type(media_type).__name__}, not a string")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ManifestError(f"{where}: digest {digest!r} is not sha256:<64 hex digits>")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"{where}: size {size!r} is not a byte count")
    return {**layer, "mediaType": media_type, "size": size}


def parse_manifest(data: bytes) -> tuple[dict[str, Any], ...]:
    """The layers of a manifest, each checked; ManifestError says what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ManifestError(f"manifest is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest is a JSON {type(doc).__name__}, not an object")
    layers = doc.get("layers") or []
    if not isinstance(layers, list):
        raise ManifestError(f"manifest layers is {type(layers).__name__}, not a list")
    if doc.get("config") is not None:
        _check_layer(doc["config"], "manifest config")
    return tuple(_check_layer(layer, f"manifest layer {i}") for i, layer in enumerate(layers))


def referenced_digests(data: bytes) -> set[str] | None:
    """Every well-formed digest a manifest names, read leniently: a manifest too damaged to
    list still keeps the blobs it points at. None when it is not JSON at all."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return set()
    layers = doc.get("layers") if isinstance(doc.get("layers"), list) else []
    found = set()
    for layer in [doc.get("config"), *layers]:
        digest = layer.get("digest") if isinstance(layer, dict) else None
        if isinstance(digest, str) and _DIGEST.match(digest):
            found.add("sha256:" + digest[7:])
    return found



def digests_named_by(paths: list[Path]) -> set[str]:
    """Every digest the manifests at `paths` name (unreadable or non-JSON ones name none)."""
    found: set[str] = set()
    for path in paths:
        try:
            found |= referenced_digests(path.read_bytes()) or set()
        except OSError:
            pass
    return found

def read_manifest(root: Path, ref: ModelRef, path: Path | None = None) -> Manifest:
    path = path or manifest_path(root, ref)
    data = path.read_bytes()
    layers = parse_manifest(data)
    return Manifest(ref, path, hashlib.sha256(data).hexdigest(), layers, path.stat().st_mtime)


def is_manifest_name(name: str) -> bool:
    """Temp files (ours start with '.', older versions wrote `<tag>.partial`) are never models."""
    return not name.startswith(".") and not name.endswith(".partial")


def iter_manifests(root: Path) -> Iterator[tuple[ModelRef, Path]]:
    """manifests/<host>/<namespace>/<model>/<tag>; anything that is not a valid name is skipped."""
    for path in _walk(root / "manifests", 4):
        if not is_manifest_name(path.name) or not path.is_file():
            continue
        host, namespace, model, tag = path.relative_to(root / "manifests").parts
        try:
            ref = parse_name(f"{host}/{namespace}/{model}:{tag}")
        except InvalidRequest:
            continue
        yield ref, path


def _walk(directory: Path, depth: int) -> Iterator[Path]:
    """The entries `depth` levels below `directory`. A listing reads without the store's lock, so
    a delete may remove a directory it is about to read: that directory simply has nothing
    (pathlib's glob raised FileNotFoundError then, a 500 on /api/tags beside a delete)."""
    try:
        with os.scandir(directory) as entries:
            children = [Path(e.path) for e in entries if depth == 1 or e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return
    for child in children:
        if depth == 1:
            yield child
        else:
            yield from _walk(child, depth - 1)


def existing_manifests(root: Path, ref: ModelRef) -> list[Path]:
    """The manifest files that spell `ref` in any case (Ollama compares names case-insensitively;
    a store written by an older version may hold several spellings), newest first."""
    found = {path: _mtime_ns(path) for other, path in iter_manifests(root) if other.key() == ref.key()}
    return [path for path, mtime in sorted(found.items(), key=lambda item: item[1], reverse=True) if mtime >= 0]


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1  # gone since the directory was read


def read_text_layer(root: Path, manifest: Manifest, media_type: str) -> str:
    layer = manifest.layer(media_type)
    if layer is None:
        return ""
    return blob_path(root, layer["digest"]).read_text(encoding="utf-8", errors="replace")


def write_blob(root: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = blob_path(root, f"sha256:{digest}")
    if not path.exists():
        write_atomic(path, data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_manifest(root: Path, ref: ModelRef, layers: list[dict[str, Any]], path: Path | None = None) -> Manifest:
    """Writes the manifest for `ref` at `path` (default: the name as spelled); a unique temp
    file renamed into place, so concurrent writers of one name never share a file."""
    config = write_blob(root, json.dumps({"model_format": "gguf", "file_type": ""}).encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config},
        "layers": layers,
    }
    path = path or manifest_path(root, ref)
    write_atomic(path, json.dumps(doc, indent=None).encode())
    return read_manifest(root, ref, path)
