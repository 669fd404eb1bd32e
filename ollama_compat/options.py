"""Request fields -> engine parameters with Ollama's type rules: options, keep_alive, think, stream."""

from __future__ import annotations

import logging
import math
from typing import Any

from backend.interface import LoadOptions, SamplingParams

from .errors import ApiError
from .fields import INT64
from .settings import Settings, parse_duration

log = logging.getLogger(__name__)

# api.DefaultOptions, predict-time. repeat_penalty 1.0 as in current Ollama (§4.5).
_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    "stop": [],
    "num_predict": -1,
    "num_keep": 4,
}
_LOAD_DEFAULTS: dict[str, Any] = {
    "num_ctx": 4096,
    "num_batch": 512,
    "num_thread": 0,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": None,
}
_INT = {"top_k", "repeat_last_n", "seed", "num_predict", "num_keep", "num_ctx", "num_batch", "num_thread",
        "num_gpu", "main_gpu", "draft_num_predict"}  # fmt: skip
_FLOAT = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
_BOOL = {"use_mmap"}
# Accepted for compatibility, with no effect on this engine (no draft model, no NUMA pinning).
_ACCEPTED = {"draft_num_predict", "numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
             "embedding_only", "tfs_z", "mirostat", "mirostat_eta", "mirostat_tau", "penalize_newline",
             "num_gqa", "rope_frequency_base", "rope_frequency_scale"}  # fmt: skip
THINK_LEVELS = ("low", "medium", "high", "max")


def unset(value: Any) -> bool:
    """null and "" mean "not given" (the Go CLI sends "" for every unset string)."""
    return value is None or value == ""


def _typed(key: str, value: Any) -> Any:
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f'option "{key}" must be of type integer')
        number = int(value)  # any JSON number, truncated (FromMap)
        if not INT64[0] <= number <= INT64[1]:  # Go's int: Ollama would wrap seed 2^64 to a negative
            raise ApiError(400, f'option "{key}" must be between {INT64[0]} and {INT64[1]}')
        return number
    if key in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f'option "{key}" must be of type number')
        return float(value)
    if key in _BOOL:
        if not isinstance(value, bool):
            raise ApiError(400, f'option "{key}" must be of type boolean')
        return value
    if key == "stop":
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ApiError(400, 'option "stop" must be of type array')
        return value
    return value


def merge_options(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Later layers win (defaults < Modelfile PARAMETERs < request); nulls are skipped and
    unknown keys logged and dropped, as Ollama's FromMap does."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise ApiError(400, "options must be an object")
        for key, value in layer.items():
            if value is None:
                continue
            if key in _SAMPLING_DEFAULTS or key in _LOAD_DEFAULTS:
                merged[key] = _typed(key, value)
            elif key not in _ACCEPTED:
                log.warning("invalid option provided: %s", key)
    return merged


def sampling_params(options: dict[str, Any], logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
    o = {**_SAMPLING_DEFAULTS, **{k: v for k, v in options.items() if k in _SAMPLING_DEFAULTS}}
    seed = o["seed"]
    return SamplingParams(
        temperature=o["temperature"],
        top_k=o["top_k"],
        top_p=o["top_p"],
        min_p=o["min_p"],
        typical_p=o["typical_p"],
        repeat_penalty=o["repeat_penalty"],
        repeat_last_n=o["repeat_last_n"],
        presence_penalty=o["presence_penalty"],
        frequency_penalty=o["frequency_penalty"],
        seed=None if seed < 0 else seed,
        stop=tuple(o["stop"]),
        num_predict=o["num_predict"],
        num_keep=o["num_keep"],
        logprobs=logprobs or top_logprobs > 0,
        top_logprobs=top_logprobs,
    )


def load_options(options: dict[str, Any], settings: Settings) -> LoadOptions:
    defaults = dict(_LOAD_DEFAULTS)
    if settings.context_length:
        defaults["num_ctx"] = settings.context_length  # OLLAMA_CONTEXT_LENGTH
    if settings.num_thread:
        defaults["num_thread"] = settings.num_thread
    o = {**defaults, **{k: v for k, v in options.items() if k in _LOAD_DEFAULTS}}
    if o["num_ctx"] < 1 or o["num_batch"] < 1:
        raise ApiError(400, "num_ctx and num_batch must be positive")
    o["num_thread"] = _num_thread(o["num_thread"])
    # num_gpu and main_gpu go to the engine's placement (blocks on the accelerator, if there is one).
    if o["use_mmap"] is False:
        log.info("use_mmap=false ignored: GGUF weights are always memory-mapped (their quantized blocks are used in place)")
    return LoadOptions(o["num_ctx"], o["num_batch"], o["num_thread"], o["num_gpu"], o["main_gpu"], o["use_mmap"])


def _num_thread(value: int) -> int:
    """As Ollama: a positive count is passed on (the engine clamps it to the CPUs), 0 or less
    means the default. A count no integer type holds (2^64, 1e30) is nonsense: 400."""
    if not -(2**63) <= value < 2**63:
        raise ApiError(400, f'option "num_thread" must be a number of threads, got {value}')
    return max(0, value)


# Go's time.Duration holds 2^63-1 ns, about 292 years: anything longer is forever.
_MAX_DURATION = (2**63 - 1) / 1e9


def keep_alive(value: Any) -> float | None:
    """Seconds, None for the server default, -1 for forever. Numbers, Go durations and (a
    deliberate deviation, since Open WebUI and others send it) unit-less numeric strings such as
    "-1". Durations past what the clock holds (1e10, "2600000h", "inf") mean forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, int) and abs(value) >= _MAX_DURATION:
        return -1.0  # float() of a very long int would overflow
    try:
        seconds = parse_duration(value, default=0.0) if value != "" else None
    except (ValueError, OverflowError) as e:
        raise ApiError(400, str(e)) from None
    if seconds is None:
        return None
    if math.isnan(seconds):
        raise ApiError(400, f'time: invalid duration "{value}"')
    return -1.0 if seconds >= _MAX_DURATION else seconds


def think(value: Any) -> bool | str | None:
    """None (unset, also for ""), True/False, or a level; anything else is Ollama's 400."""
    if value == "":
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    raise ApiError(400, f'invalid think value: {shown} (must be "high", "medium", "low", "max", true, or false)')


def stream(value: Any, default: bool = True) -> bool:
    """Absent, null or "" gives `default` (native /api streams, OpenAI's /v1 does not);
    "false"/"true" as strings too (our reference Slack bot sends them)."""
    if unset(value) or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    if isinstance(value, (list, dict)):
        raise ApiError(400, 'field "stream" must be of type boolean')
    return bool(value)


def top_logprobs(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= int(value) <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    return int(value)
