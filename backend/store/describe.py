"""A model's ModelInfo from its GGUF header alone, with the metadata /api/tags and /api/show need
checked for type (a string context length or an integer template is an error, not a crash)."""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import gguf

from ..gguf_model import GGUFError, open_gguf
from ..interface import EngineError, ModelInfo, TensorSummary

# Metadata arrays longer than this are kept as [] in ModelInfo.metadata: /api/show elides them
# anyway, and keeping a 129k-entry vocabulary per model in memory helps nobody (verbose reads
# them from the file again).
_MAX_ARRAY = 64


def human_number(n: int) -> str:
    """Parameter counts the way Ollama prints them: 134.52M, 7.6B, 671.0B."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def quantization_name(file_type: Any) -> str:
    if isinstance(file_type, bool) or not isinstance(file_type, int):
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


def _text(meta: dict[str, Any], key: str, file: str, required: bool = False) -> str:
    value = meta.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        shown = "missing" if value is None else f"{type(value).__name__} {value!r:.40}, not text"
        raise GGUFError(f"{file}: metadata {key} is {shown}")
    return value


def _count(meta: dict[str, Any], key: str, file: str) -> int:
    """A non-negative whole number (llama.cpp reads these as uint32); absent means 0."""
    value = meta.get(key, 0)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GGUFError(f"{file}: metadata {key} is {value!r:.40}, not a whole number >= 0")
    return value


def describe(paths: tuple[Path, ...], name: str) -> ModelInfo:
    """ModelInfo from GGUF headers alone (tensor data stays on disk). GGUFError says what is
    wrong with a file that cannot be described."""
    f = open_gguf(paths[0])
    meta = f.metadata
    file = f.name
    arch = _text(meta, "general.architecture", file, required=True)
    template = _text(meta, "tokenizer.chat_template", file)
    license_ = meta.get("general.license", "")
    stats = [p.stat() for p in f.paths]
    params = sum(math.prod(t.shape) for t in f.tensors.values())
    # A loose file has no Ollama manifest; the digest identifies this exact version of the
    # files (paths, sizes, mtimes) without hashing gigabytes on the request path.
    version = "|".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in zip(f.paths, stats))
    shown = {k: [] if isinstance(v, list) and len(v) > _MAX_ARRAY else v for k, v in meta.items()}
    shown["general.parameter_count"] = params
    tensors = tuple(TensorSummary(t.name, t.type_name, tuple(reversed(t.shape))) for t in f.tensors.values())
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
        context_length=_count(meta, f"{arch}.context_length", file),
        embedding_length=_count(meta, f"{arch}.embedding_length", file),
        capabilities=capabilities(arch, template),
        template=template,
        license="\n".join(map(str, license_)) if isinstance(license_, list) else str(license_ or ""),
        metadata=shown,
        tensors=tensors,
        full_metadata=functools.partial(full_metadata, paths[0], params),
    )


def full_metadata(path: Path, parameter_count: int) -> dict[str, Any]:
    """Every key/value of the GGUF with arrays whole, for /api/show verbose."""
    try:
        meta = dict(open_gguf(path).metadata)
    except (OSError, ValueError, GGUFError) as e:
        raise EngineError(f"{path.name} cannot be read: {e}") from None
    meta["general.parameter_count"] = parameter_count
    return meta
