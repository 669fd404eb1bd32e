"""create_app(engine, settings): the route table and middlewares, state in typed AppKeys."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from backend.interface import Engine

from . import anthropic, management, openai, responses, routes
from .access_log import access_log
from .appkeys import ENGINE, SETTINGS
from .cors import OriginPolicy, add_cors_headers, cors_middleware
from .errors import error_middleware
from .settings import Settings

def create_app(engine: Engine, settings: Settings) -> web.Application:
    policy = OriginPolicy(settings.origins, settings.host.host)
    app = web.Application(
        client_max_size=settings.max_body,  # aiohttp's default is 1 MiB
        middlewares=[
            access_log,  # outermost: one line per request, the CORS and host refusals included
            cors_middleware(policy),  # before routing, as gin's: a preflight works on any path
            web.normalize_path_middleware(append_slash=False, remove_slash=True, merge_slashes=True),
            error_middleware,
            openai.openai_errors,  # inner: /v1 errors in OpenAI's shape
            anthropic.anthropic_errors,  # innermost: /v1/messages errors in Anthropic's shape
        ],
    )
    app[ENGINE] = engine
    app[SETTINGS] = settings
    app.on_response_prepare.append(add_cors_headers)
    routes.add_routes(app)
    management.add_routes(app)
    openai.add_routes(app)
    anthropic.add_routes(app)
    responses.add_routes(app)
    return app


def server_options(settings: Settings) -> dict[str, Any]:
    """The connection handler's settings, for web.run_app and web.AppRunner alike.

    keepalive_timeout bounds both an idle connection and one whose headers never finish: aiohttp
    arms it when a connection opens and after each response, and closes the connection if no
    whole request head has arrived by then (a slowloris that sends a byte a second included).
    handler_cancellation: a client that disconnects cancels its handler, which closes the
    engine's stream and frees the sequence at the next step.
    auto_decompress off: body.read_body undoes a Content-Encoding itself, within the limits."""
    return {"keepalive_timeout": settings.header_timeout, "handler_cancellation": True, "auto_decompress": False}
