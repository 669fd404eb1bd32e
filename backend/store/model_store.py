"""Models on disk: names (name:tag) -> GGUF files in OLLAMA_MODELS, described without loading weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf

from ..gguf_model import GGUFError, open_gguf
from ..interface import InvalidRequest, ModelInfo, ModelNotFound
from ..text.chat_template import _is_go_template
from . import manifest as mf
from .manifest import Manifest, parse_name

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)

# Metadata arrays longer than this are dropped from ModelInfo.metadata: /api/show elides them
# anyway, and keeping a 129k-entry vocabulary per model in memory helps nobody.
_MAX_ARRAY = 64


def canonical_name(name: str) -> str:
    """`Foo`, `foo:latest`, `library/foo:latest`, `registry.ollama.ai/library/foo:latest` -> `foo:latest`."""
    return parse_name(name).display()


def human_number(n: int) -> str:
    """Parameter counts the way Ollama prints them: 134.52M, 7.6B, 671.0B."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def quantization_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def capabilities(arch: str, template: str) -> tuple[str, ...]:
    caps = ["completion"]
    if "tools" in template:
        caps.append("tools")
    if "<think>" in template or "thinking" in template:
        caps.append("thinking")
    return tuple(caps)


def describe(paths: tuple[Path, ...], name: str) -> ModelInfo:
    """ModelInfo from GGUF headers alone (tensor data stays on disk)."""
    f = open_gguf(paths[0])
    meta = f.metadata
    arch = f.architecture
    stats = [p.stat() for p in f.paths]
    params = sum(int(_numel(t.shape)) for t in f.tensors.values())
    template = meta.get("tokenizer.chat_template", "") or ""
    # A loose file has no Ollama manifest; the digest identifies this exact version of the
    # files (paths, sizes, mtimes) without hashing gigabytes on the request path.
    version = "|".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in zip(f.paths, stats))
    shown = {k: v for k, v in meta.items() if not (isinstance(v, list) and len(v) > _MAX_ARRAY)}
    shown["general.parameter_count"] = params
    return ModelInfo(
        name=name,
        paths=tuple(str(p) for p in f.paths),
        size=sum(s.st_size for s in stats),
        digest=hashlib.sha256(version.encode()).hexdigest(),
        modified_at=max(s.st_mtime for s in stats),
        architecture=arch,
        family=arch,
        families=(arch,),
        parameter_size=human_number(params),
        quantization_level=quantization_name(meta.get("general.file_type")),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        embedding_length=int(meta.get(f"{arch}.embedding_length", 0) or 0),
        capabilities=capabilities(arch, template),
        template=template,
        license=str(meta.get("general.license", "") or ""),
        metadata=shown,
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class _Entry:
    """Where a model comes from: an Ollama manifest, or a loose GGUF (or split set)."""

    paths: tuple[Path, ...]
    manifest: Manifest | None = None


class ModelStore:
    """Ollama's layout under `root` (manifests/ + blobs/) plus loose `*.gguf` files in `root`
    itself, listed as `<stem>:latest`. Manifests win when both give the same name."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self._lock = threading.Lock()
        self._cache: dict[tuple, ModelInfo] = {}  # (name, identity of the files) -> info

    def _scan(self) -> dict[str, _Entry]:
        found: dict[str, _Entry] = {}
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*.gguf")):
            m = _SPLIT.match(path.name)
            if m and m["idx"] != "00001":
                continue  # later parts of a split set travel with the first
            try:
                found[canonical_name(m["stem"] if m else path.stem)] = _Entry((path,))
            except InvalidRequest:
                continue  # a file name that is no valid model name is not a model
        for ref, path in mf.iter_manifests(self.root):
            try:
                manifest = mf.read_manifest(self.root, ref, path)
            except (OSError, ValueError):
                continue
            layer = manifest.layer(mf.MEDIA_MODEL)
            if layer is None:
                continue
            found[ref.display()] = _Entry((mf.blob_path(self.root, layer["digest"]),), manifest)
        return found

    def _info(self, name: str, entry: _Entry) -> ModelInfo | None:
        try:
            st = entry.paths[0].stat()
        except OSError:
            return None
        digest = entry.manifest.digest if entry.manifest else ""
        key = (name, entry.paths, st.st_size, st.st_mtime_ns, digest)
        with self._lock:
            info = self._cache.get(key)
        if info is None:
            try:
                info = describe(entry.paths, name)
            except GGUFError:
                return None  # a broken file is reported when someone loads it, not in lists
            if entry.manifest is not None:
                info = self._with_manifest(info, entry.manifest)
            with self._lock:
                self._cache[key] = info
        return info

    def _with_manifest(self, info: ModelInfo, manifest: Manifest) -> ModelInfo:
        params = _json_layer(self.root, manifest, mf.MEDIA_PARAMS)
        messages = _json_layer(self.root, manifest, mf.MEDIA_MESSAGES)
        template = mf.read_text_layer(self.root, manifest, mf.MEDIA_TEMPLATE)
        # A Jinja template from the Modelfile is the one that renders, so it decides whether the
        # model takes tools or thinks; a Go one cannot run here and the GGUF's still decides.
        usable = bool(template) and not _is_go_template(template)
        return replace(
            info,
            size=manifest.size(),
            digest=manifest.digest,
            modified_at=manifest.mtime,
            # A Go template (every model Ollama itself pulled has one) is shown by /api/show;
            # the chat template loader falls back to the GGUF's Jinja one for rendering.
            template=template or info.template,
            capabilities=capabilities(info.architecture, template) if usable else info.capabilities,
            system=mf.read_text_layer(self.root, manifest, mf.MEDIA_SYSTEM),
            parameters=params if isinstance(params, dict) else {},
            license=mf.read_text_layer(self.root, manifest, mf.MEDIA_LICENSE) or info.license,
            messages=tuple(m for m in messages if isinstance(m, dict)) if isinstance(messages, list) else (),
        )

    def list(self) -> list[ModelInfo]:
        infos = [self._info(n, e) for n, e in self._scan().items()]
        return sorted((i for i in infos if i), key=lambda i: i.modified_at, reverse=True)

    def resolve(self, name: str) -> ModelInfo:
        try:
            key = canonical_name(name)
        except InvalidRequest:
            raise ModelNotFound(f"model '{name}' not found") from None
        entry = self._scan().get(key)
        if entry is None:
            raise ModelNotFound(f"model '{name}' not found")
        info = self._info(key, entry)
        if info is None:
            open_gguf(entry.paths[0])  # raises the precise GGUFError for a broken file
            raise ModelNotFound(f"model '{name}' not found")
        return info

    def delete(self, name: str) -> None:
        """Remove the manifest (blobs shared with other models stay) or the loose file(s)."""
        key = canonical_name(name)
        entry = self._scan().get(key)
        if entry is None:
            raise ModelNotFound(f"model '{name}' not found")
        if entry.manifest is not None:
            doc = json.loads(entry.manifest.path.read_bytes())
            entry.manifest.path.unlink(missing_ok=True)
            self._remove_unused(_digests(doc))
        else:
            info = self._info(key, entry)
            for p in info.paths if info else entry.paths:
                Path(p).unlink(missing_ok=True)

    def _remove_unused(self, candidates: set[str]) -> None:
        """Delete the removed model's blobs unless another manifest still uses them (Ollama's
        RemoveLayers); uploads waiting for a create are never touched."""
        for _, path in mf.iter_manifests(self.root):
            try:
                candidates -= _digests(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                return  # an unreadable manifest might reference anything: keep everything
        for digest in candidates:
            mf.blob_path(self.root, digest).unlink(missing_ok=True)


def _json_layer(root: Path, manifest: Manifest, media_type: str) -> Any:
    """A params or messages layer; a damaged one counts as absent rather than hiding the model."""
    text = mf.read_text_layer(root, manifest, media_type)
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def _digests(doc: dict) -> set[str]:
    return {layer["digest"] for layer in [doc.get("config") or {}, *(doc.get("layers") or ())] if "digest" in layer}
