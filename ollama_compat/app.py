"""create_app(engine, settings): the route table and middlewares, state in typed AppKeys."""

from __future__ import annotations

from aiohttp import web

from backend.interface import Engine

from . import management, openai, routes
from .appkeys import ENGINE, SETTINGS
from .cors import OriginPolicy, add_cors_headers, cors_middleware
from .errors import error_middleware
from .settings import Settings

MAX_BODY = 100 * 2**20  # base64 images run to megabytes; aiohttp's default is 1 MiB


def create_app(engine: Engine, settings: Settings) -> web.Application:
    policy = OriginPolicy(settings.origins, settings.host.host)
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            cors_middleware(policy),  # before routing, as gin's: a preflight works on any path
            web.normalize_path_middleware(append_slash=False, remove_slash=True, merge_slashes=True),
            error_middleware,
            openai.openai_errors,  # inner: /v1 errors in OpenAI's shape
        ],
    )
    app[ENGINE] = engine
    app[SETTINGS] = settings
    app.on_response_prepare.append(add_cors_headers)
    routes.add_routes(app)
    management.add_routes(app)
    openai.add_routes(app)
    return app
