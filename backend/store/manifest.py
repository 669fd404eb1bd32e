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
    if not ok or ".." in raw:
        raise InvalidRequest(f'name "{name}" is invalid')
    return ModelRef(host, namespace, last, tag)


def blob_path(root: Path, digest: str) -> Path:
    m = _DIGEST.match(digest)
    if not m:
        raise InvalidRequest(f'invalid digest "{digest}"')
    return root / "blobs" / f"sha256-{m[1]}"


def manifest_path(root: Path, ref: ModelRef) -> Path:
    return root / "manifests" / ref.host / ref.namespace / ref.model / ref.tag


@dataclass(frozen=True)
class Manifest:
    ref: ModelRef
    path: Path
    digest: str  # sha256 hex of the manifest bytes: what /api/tags reports
    layers: tuple[dict[str, Any], ...]
    mtime: float

    def layer(self, media_type: str) -> dict[str, Any] | None:
        return next((layer for layer in self.layers if layer.get("mediaType") == media_type), None)

    def size(self) -> int:
        return sum(int(layer.get("size", 0)) for layer in self.layers)


def read_manifest(root: Path, ref: ModelRef, path: Path | None = None) -> Manifest:
    path = path or manifest_path(root, ref)
    data = path.read_bytes()
    doc = json.loads(data)
    layers = tuple(doc.get("layers") or ())
    return Manifest(ref, path, hashlib.sha256(data).hexdigest(), layers, path.stat().st_mtime)


def iter_manifests(root: Path) -> Iterator[tuple[ModelRef, Path]]:
    """manifests/<host>/<namespace>/<model>/<tag>; anything that is not a valid name is skipped."""
    base = root / "manifests"
    if not base.is_dir():
        return
    for path in base.glob("*/*/*/*"):
        if not path.is_file():
            continue
        host, namespace, model, tag = path.relative_to(base).parts
        try:
            ref = parse_name(f"{host}/{namespace}/{model}:{tag}")
        except InvalidRequest:
            continue
        yield ref, path


def read_text_layer(root: Path, manifest: Manifest, media_type: str) -> str:
    layer = manifest.layer(media_type)
    if layer is None:
        return ""
    return blob_path(root, layer["digest"]).read_text(encoding="utf-8", errors="replace")


def write_blob(root: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = blob_path(root, f"sha256:{digest}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_manifest(root: Path, ref: ModelRef, layers: list[dict[str, Any]]) -> Manifest:
    config = write_blob(root, json.dumps({"model_format": "gguf", "file_type": ""}).encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **config},
        "layers": layers,
    }
    path = manifest_path(root, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=None))
    os.replace(tmp, path)
    return read_manifest(root, ref)
