"""The upstreams file (TOML, path in OLLAMA_UPSTREAMS): model names -> OpenAI-compatible servers."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomllib

from ..types import valid_name

CAPABILITIES = ("completion", "tools", "thinking", "embedding", "vision", "insert")


class UpstreamsConfigError(ValueError):
    """What is wrong with the upstreams file, naming the entry."""


@dataclass(frozen=True)
class Replica:
    """One server: `url` is its OpenAI base URL (ends in /v1)."""

    url: str
    api_key: str = ""


@dataclass(frozen=True)
class UpstreamModel:
    name: str  # canonical "name:tag", as clients will ask for it
    model: str  # the id the upstream serves it under (its /v1/models id)
    replicas: tuple[Replica, ...]
    capabilities: tuple[str, ...]
    context_length: int = 0  # 0: from the upstream's /v1/models, where it says
    digest: str = ""  # sha256 of the entry: changes when the entry does


@dataclass(frozen=True)
class UpstreamsConfig:
    models: tuple[UpstreamModel, ...]
    modified_at: float = 0.0  # the file's mtime, shown as the models' modified_at
    connect_timeout: float = 5.0  # seconds to open a connection to a replica
    # Seconds without a byte from a replica before the request fails: DeepSeek-R1's prefill of a
    # long prompt on a busy cluster takes minutes, so this bounds silence, not the whole answer.
    read_timeout: float = 600.0
    health_interval: float = 10.0  # seconds between two checks of each replica's /models
    source: str = ""


@functools.lru_cache(maxsize=1024)  # a handful of names, looked up several times per request
def canonical(name: str) -> str:
    """`X`, `x:latest`, `library/x`, `registry.ollama.ai/library/x:latest` -> `x:latest` (as the store)."""
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name.removeprefix(prefix)
    last = name.rpartition("/")[2]
    return name if ":" in last else f"{name}:latest"


def base_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UpstreamsConfigError(f"{where}: url must be http(s)://host[:port][/v1], got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):  # vLLM, SGLang, llama.cpp and Ollama all serve the API under /v1
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _replica(item: Any, where: str, env: dict) -> Replica:
    if isinstance(item, str):
        return Replica(base_url(item, where))
    if not isinstance(item, dict) or not isinstance(item.get("url"), str):
        raise UpstreamsConfigError(f'{where}: an upstream is a URL or a table with "url"')
    unknown = set(item) - {"url", "api_key", "api_key_env"}
    if unknown:
        raise UpstreamsConfigError(f"{where}: unknown keys {sorted(unknown)}")
    key = item.get("api_key", "")
    if "api_key_env" in item:  # keeps secrets out of the file
        key = env.get(item["api_key_env"], "")
        if not key:
            raise UpstreamsConfigError(f"{where}: ${item['api_key_env']} is not set")
    return Replica(base_url(item["url"], where), str(key))


def _model(name: str, entry: Any, env: dict) -> UpstreamModel:
    where = f'models."{name}"'
    if not valid_name(name):
        raise UpstreamsConfigError(f"{where}: not a valid model name")
    if not isinstance(entry, dict):
        raise UpstreamsConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"model", "upstreams", "capabilities", "context_length"}
    if unknown:
        raise UpstreamsConfigError(f"{where}: unknown keys {sorted(unknown)}")
    items = entry.get("upstreams")
    if isinstance(items, (str, dict)):
        items = [items]
    if not isinstance(items, list) or not items:
        raise UpstreamsConfigError(f"{where}: upstreams must list at least one URL")
    replicas = tuple(_replica(item, f"{where}.upstreams[{i}]", env) for i, item in enumerate(items))
    capabilities = entry.get("capabilities", ["completion", "tools"])
    if not isinstance(capabilities, list) or not set(capabilities) <= set(CAPABILITIES):
        raise UpstreamsConfigError(f"{where}: capabilities must be a subset of {list(CAPABILITIES)}")
    model = entry.get("model", name)
    context_length = entry.get("context_length", 0)
    if not isinstance(model, str) or not model:
        raise UpstreamsConfigError(f"{where}: model must be the upstream's model id (a string)")
    if not isinstance(context_length, int) or context_length < 0:
        raise UpstreamsConfigError(f"{where}: context_length must be a positive integer")
    digest = hashlib.sha256(repr((name, model, [r.url for r in replicas], capabilities)).encode()).hexdigest()
    return UpstreamModel(canonical(name), model, replicas, tuple(capabilities), context_length, digest)


def parse(text: str, source: str = "", modified_at: float = 0.0, env: dict | None = None) -> UpstreamsConfig:
    """The file's text -> UpstreamsConfig; UpstreamsConfigError names the first bad entry."""
    env = dict(os.environ if env is None else env)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UpstreamsConfigError(f"{source or 'upstreams'}: {e}") from None
    unknown = set(data) - {"models", "connect_timeout", "read_timeout", "health_interval"}
    if unknown:
        raise UpstreamsConfigError(f"unknown top-level keys {sorted(unknown)}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise UpstreamsConfigError('"models" must be a table of model names')
    parsed = tuple(_model(name, entry, env) for name, entry in models.items())
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise UpstreamsConfigError(f"a model is named twice: {sorted(n for n in names if names.count(n) > 1)}")
    timing = {}
    for key in ("connect_timeout", "read_timeout", "health_interval"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UpstreamsConfigError(f"{key} must be a positive number of seconds")
            timing[key] = float(value)
    return UpstreamsConfig(parsed, modified_at, source=source, **timing)


def load(path: str | Path, env: dict | None = None) -> UpstreamsConfig:
    path = Path(path).expanduser()
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except OSError as e:
        raise UpstreamsConfigError(f"cannot read upstreams file {path}: {e.strerror}") from None
    return parse(text, str(path), mtime, env)
