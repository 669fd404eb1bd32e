"""Wire shapes of Ollama's api/types.go, built from the engine's types: timestamps, details, metrics."""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import string
import time
from typing import Any

from backend.interface import Chunk, Metrics, ModelInfo, RunningModel, TensorSummary, TokenLogprob

VERSION = "0.13.0"  # numeric X.Y.Z: Open WebUI int()s each part; Copilot BYOK needs >= 0.6.4
_FOREVER = 292 * 365.25 * 86400  # Ollama shows keep_alive < 0 as "now + 292 years" (max Duration)


def utc_timestamp(t: float | None = None) -> str:
    """created_at: RFC 3339 in UTC with a Z, as Ollama writes it (Go clients drop the whole
    object when the zone is missing)."""
    moment = dt.datetime.fromtimestamp(time.time() if t is None else t, dt.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_timestamp(t: float) -> str:
    """modified_at / expires_at: local time with its offset, as Ollama writes them."""
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="microseconds")


def details(info: ModelInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.family,
        "families": list(info.families) or [info.family],  # an array, never null
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }


def remote(info: ModelInfo) -> dict[str, str]:
    """remote_model and remote_host, only for a model an upstream serves (omitted otherwise, as Ollama)."""
    host = info.metadata.get("remote.host")
    return {"remote_model": str(info.metadata.get("remote.model", "")), "remote_host": str(host)} if host else {}


def tags_entry(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "model": info.name,
        **remote(info),
        "modified_at": local_timestamp(info.modified_at),
        "size": info.size,
        "digest": info.digest,
        "details": details(info),
        "capabilities": list(info.capabilities),
    }


def ps_entry(running: RunningModel) -> dict[str, Any]:
    info = running.info
    expires = running.expires_at if math.isfinite(running.expires_at) else time.time() + _FOREVER
    return {
        "name": info.name,
        "model": info.name,
        "size": running.size,
        "digest": info.digest,
        "details": details(info),
        "expires_at": local_timestamp(expires),
        "size_vram": running.size_vram,
        "context_length": running.context_length,
    }


# Ollama's ShowHandler deletes these from model_info: the name is the model's, and the template
# is already in "template".
_NOT_MODEL_INFO = ("general.name", "tokenizer.chat_template")


def model_info(metadata: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """/api/show's model_info: the GGUF's key/values; without verbose, arrays over 5 items as []."""
    return {k: [] if not verbose and isinstance(v, list) and len(v) > 5 else v
            for k, v in metadata.items() if k not in _NOT_MODEL_INFO}  # fmt: skip


def tensors(entries: tuple[TensorSummary, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in entries]


def metrics(m: Metrics | None) -> dict[str, int]:
    """Integer nanoseconds: the Go client decodes them into time.Duration (int64)."""
    if m is None:
        return {}
    return {
        "total_duration": int(m.total_duration),
        "load_duration": int(m.load_duration),
        "prompt_eval_count": int(m.prompt_eval_count),
        "prompt_eval_duration": int(m.prompt_eval_duration),
        "eval_count": int(m.eval_count),
        "eval_duration": int(m.eval_duration),
    }


def logprobs(entries: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    def one(e: TokenLogprob, nested: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes)}
        if nested and e.top_logprobs:  # omitempty in api.Logprob: absent unless top_logprobs > 0
            out["top_logprobs"] = [one(t, False) for t in e.top_logprobs]
        return out

    return [one(e, True) for e in entries]


_ID_ALPHABET = string.ascii_lowercase + string.digits
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")  # model and tag
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")


def valid_name(name: str) -> bool:
    """types/model/name.go's IsValid over `[host/][namespace/]model[:tag]` (defaults filled in)."""
    head, _, last = name.rpartition("/")
    model, colon, tag = last.partition(":")
    parts = head.split("/") if head else []
    if len(parts) > 2 or (parts and not (_NAMESPACE.fullmatch(parts[-1]) and _HOST.fullmatch(parts[0]))):
        return False
    return bool(_PART.fullmatch(model)) and (not colon or bool(_PART.fullmatch(tag)))


def tool_calls(calls: tuple[dict[str, Any], ...], first_index: int = 0) -> list[dict[str, Any]]:
    """`arguments` stays an object on the native API; ids are "call_" + 8 of [a-z0-9] as Ollama's."""
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", call)
        out.append(
            {
                "id": "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8)),
                "function": {"index": first_index + i, "name": fn.get("name", ""), "arguments": fn.get("arguments") or {}},
            }
        )
    return out


def chunk_fields(chunk: Chunk) -> dict[str, Any]:
    """The done-line extras: done_reason and the metrics (omitted on every other line)."""
    if not chunk.done:
        return {}
    return {"done_reason": chunk.done_reason or "stop", **metrics(chunk.metrics)}
