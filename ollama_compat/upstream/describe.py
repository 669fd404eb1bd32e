"""ModelInfo for a model an upstream serves: from the upstreams file and the upstream's own
/v1/models entry (vLLM and SGLang give max_model_len, llama.cpp's server a `meta` block)."""

from __future__ import annotations

from typing import Any

from backend.interface import ModelInfo

from .config import UpstreamModel


def parameter_size(count: int) -> str:
    """As Ollama prints it: 135M, 7.6B, 671B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{unit}" if value >= 100 or value == int(value) else f"{value:.1f}{unit}"
    return str(count) if count else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def model_info(model: UpstreamModel, served: dict[str, Any], modified_at: float) -> ModelInfo:
    """`served` is {} until a replica has listed the model: then the model shows as remote only."""
    meta = served.get("meta") if isinstance(served.get("meta"), dict) else {}
    context = model.context_length or _int(served.get("max_model_len")) or _int(meta.get("n_ctx_train"))
    metadata: dict[str, Any] = {"general.architecture": "remote", "remote.host": model.replicas[0].url,
                                "remote.model": model.model, "remote.replicas": len(model.replicas)}  # fmt: skip
    if context:
        metadata["remote.context_length"] = context
    for key, value in served.items():  # what the upstream says of itself, under its own names
        if isinstance(value, (str, int, float, bool)) and key not in ("object", "id"):
            metadata[f"remote.{key}"] = value
    for key, value in meta.items():
        if isinstance(value, (str, int, float, bool)):
            metadata[f"remote.meta.{key}"] = value
    return ModelInfo(
        name=model.name,
        paths=tuple(r.url for r in model.replicas),
        size=_int(meta.get("size")),
        digest=model.digest,
        modified_at=modified_at,
        architecture="remote",
        family="remote",
        families=("remote",),
        parameter_size=parameter_size(_int(meta.get("n_params"))),
        quantization_level="",
        context_length=context,
        embedding_length=_int(meta.get("n_embd")),
        capabilities=model.capabilities,
        metadata=metadata,
    )
