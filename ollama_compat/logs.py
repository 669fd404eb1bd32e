"""The server's logging: Ollama's levels (OLLAMA_DEBUG 1 debug, 2 trace), its slog text lines or
one JSON object per line for log shippers, and a user's own logging config when one is given."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import sys
from pathlib import Path

TRACE = 5  # OLLAMA_DEBUG=2: Ollama's slog level -8, below debug
logging.addLevelName(TRACE, "TRACE")

FORMATS = ("text", "json")


def level_for(debug: int) -> int:
    """OLLAMA_DEBUG as Ollama's envconfig.LogLevel reads it: 1 (or true) debug, 2 or more trace."""
    return TRACE if debug >= 2 else logging.DEBUG if debug >= 1 else logging.INFO


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _source(record: logging.LogRecord) -> str:
    return f"{Path(record.pathname).name}:{record.lineno}"


class TextFormatter(logging.Formatter):
    """slog's text handler, as Ollama's server log reads: time=… level=… source=file:line msg="…".
    Access lines are printed bare, as gin prints them."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if getattr(record, "access", None) is not None:
            return message
        line = f"time={_time(record)} level={record.levelname} source={_source(record)} msg={json.dumps(message)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with slog's keys (time, level, source, msg); an access line adds
    status, latency_ms, client, method and path as fields of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _time(record), "level": record.levelname, "source": _source(record),
                 "logger": record.name, "msg": record.getMessage()}  # fmt: skip
        entry.update(getattr(record, "access", None) or {})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(debug: int, log_format: str = "text", config_file: str | None = None) -> None:
    """A config file (logging's JSON dictConfig, or its INI fileConfig) replaces ours entirely;
    handlers already on the root logger (an embedding application's) are kept, as basicConfig
    keeps them; otherwise one stderr handler in the chosen format."""
    if config_file:
        path = Path(config_file)
        if path.suffix == ".json":
            config = json.loads(path.read_text())
            config.setdefault("disable_existing_loggers", False)  # ours exist already: keep them logging
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
        return
    root = logging.getLogger()
    root.setLevel(logging.INFO)  # OLLAMA_DEBUG is about this server, not every library's chatter
    for ours in ("ollama_compat", "backend"):
        logging.getLogger(ours).setLevel(level_for(debug))
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
