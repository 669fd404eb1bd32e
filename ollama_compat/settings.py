"""One frozen Settings, read once at start from the environment (as Ollama's envconfig) and CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 11434


@dataclass(frozen=True)
class Host:
    scheme: str
    host: str  # "" binds every interface
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host or '127.0.0.1'}:{self.port}"


def parse_host(value: str | None) -> Host:
    """OLLAMA_HOST as envconfig.Host reads it: bare host, :port, scheme://host[:port], [v6]."""
    value = (value or "").strip().strip("\"'").strip()
    if not value:
        return Host("http", "127.0.0.1", DEFAULT_PORT)
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    default_port = {"http": DEFAULT_PORT, "https": 443}.get(scheme, DEFAULT_PORT)
    if scheme == "http" and not sep and rest == "ollama.com":
        return Host("https", "ollama.com", 443)
    if sep:
        default_port = 80 if scheme == "http" else 443
    host_port = rest.split("/", 1)[0]
    if host_port.count(":") > 1 and not host_port.startswith("["):
        return Host(scheme, host_port, default_port)  # bare IPv6 such as ::1
    try:
        parts = urlsplit(f"//{host_port}")
        host, port = parts.hostname or "", parts.port
    except ValueError:  # out-of-range or non-numeric port: Ollama falls back to the default
        host, port = host_port.rsplit(":", 1)[0].strip("[]"), None
    if port is None and ":" in host_port.rsplit("]", 1)[-1]:
        port = DEFAULT_PORT
    return Host(scheme, host, port if port is not None else default_port)


def parse_duration(value: str | int | float | None, default: float) -> float:
    """Seconds from a Go duration ("5m", "1h30m", "-1s") or bare number; negative means forever."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    total, number, i = 0.0, "", 0
    if not body:
        raise ValueError(f'time: invalid duration "{value}"')
    while i < len(body):
        if body[i].isdigit() or body[i] == ".":
            number += body[i]
            i += 1
            continue
        unit = next((u for u in sorted(units, key=len, reverse=True) if body.startswith(u, i)), None)
        if unit is None or not number:
            raise ValueError(f'time: invalid duration "{value}"')
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f'time: missing unit in duration "{value}"')
    return sign * total


def _bool_env(env: dict, key: str) -> bool:
    """envconfig.Bool: strconv.ParseBool's spellings; any other non-empty value means true."""
    value = (env.get(key) or "").strip().strip("\"'").strip()
    if not value:
        return False
    return value not in ("0", "f", "F", "FALSE", "false", "False")


def _debug_env(env: dict) -> int:
    """OLLAMA_DEBUG as envconfig.LogLevel: a number is the level (2 traces), else a boolean."""
    value = (env.get("OLLAMA_DEBUG") or "").strip().strip("\"'").strip()
    try:
        return max(0, int(value))
    except ValueError:
        return int(_bool_env(env, "OLLAMA_DEBUG"))


def _int_env(env: dict, key: str, default: int) -> int:
    try:
        return int(env.get(key, "") or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class Settings:
    host: Host
    models_dir: Path
    origins: tuple[str, ...]  # extra allowed origins from OLLAMA_ORIGINS, before the defaults
    keep_alive: float  # seconds; negative keeps models loaded forever
    num_parallel: int
    max_queue: int
    context_length: int  # default num_ctx (0: the engine's default)
    num_thread: int  # 0: one per physical core
    debug: int  # OLLAMA_DEBUG: 0 info, 1 debug, 2 trace
    noprune: bool = False  # OLLAMA_NOPRUNE: keep blobs no manifest uses (start-up, delete, re-create)
    # Bounds on what one client may hold open. Ollama's http.Server sets no timeouts at all; these
    # are the usual values of Go services that set ReadHeaderTimeout and friends.
    header_timeout: float = 30.0  # seconds for a request's headers, and for an idle connection's next request
    body_timeout: float = 60.0  # seconds for a JSON body to arrive whole; for a blob upload, between two chunks
    max_body: int = 100 * 2**20  # bytes of a JSON body (base64 images run to megabytes); blob uploads are unbounded
    upstreams: str = ""  # OLLAMA_UPSTREAMS: a TOML file of models served by OpenAI-compatible servers

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        env = dict(os.environ if env is None else env)
        try:
            keep_alive = parse_duration(env.get("OLLAMA_KEEP_ALIVE"), 300.0)
        except ValueError:
            keep_alive = 300.0
        origins = tuple(o.strip() for o in env.get("OLLAMA_ORIGINS", "").split(",") if o.strip())
        settings = cls(
            host=parse_host(env.get("OLLAMA_HOST")),
            models_dir=Path(env.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser(),
            origins=origins,
            keep_alive=keep_alive,
            num_parallel=max(1, _int_env(env, "OLLAMA_NUM_PARALLEL", 4)),
            max_queue=max(1, _int_env(env, "OLLAMA_MAX_QUEUE", 512)),
            context_length=max(0, _int_env(env, "OLLAMA_CONTEXT_LENGTH", 0)),
            num_thread=max(0, _int_env(env, "OLLAMA_NUM_THREAD", 0)),
            debug=_debug_env(env),
            noprune=_bool_env(env, "OLLAMA_NOPRUNE"),
            upstreams=env.get("OLLAMA_UPSTREAMS", "").strip(),
        )
        return settings.replace(**overrides) if overrides else settings

    def replace(self, **changes) -> "Settings":
        return replace(self, **changes)
