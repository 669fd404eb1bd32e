"""ApiError(status, message) and the one middleware that turns every failure into Ollama's error body."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from backend.interface import EngineError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(body, status: int = 200) -> web.Response:
    """application/json; charset=utf-8, as Ollama: Open WebUI's r.json() refuses anything else."""
    return web.Response(body=orjson.dumps(body), status=status, headers={"Content-Type": JSON_TYPE})


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message)
    except EngineError as e:
        return error_response(e.status, e.message)
    except web.HTTPNotFound:
        return _plain(404, "404 page not found")  # gin's text for an unknown route
    except web.HTTPMethodNotAllowed:
        return _plain(405, "405 method not allowed")
    except web.HTTPException:
        raise
    except Exception as e:  # the server keeps serving everyone else
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(e).__name__}: {e}")
