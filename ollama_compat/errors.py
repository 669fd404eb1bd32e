"""ApiError(status, message) and the one middleware that turns every failure into Ollama's error body."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from backend.interface import EngineError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"


class ApiError(Exception):
    """`close`: answer, then close the connection (a body that never finished arriving)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


def json_response(body, status: int = 200) -> web.Response:
    """application/json; charset=utf-8, as Ollama: Open WebUI's r.json() refuses anything else."""
    return web.Response(body=orjson.dumps(body), status=status, headers={"Content-Type": JSON_TYPE})


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


async def closing(request: web.Request, response: web.Response) -> web.Response:
    """Sends `response`, then closes the connection at once. Without this aiohttp would keep
    reading the unfinished body for its lingering time before closing (10 s)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport flushes the answer, then closes
    return response


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        response = error_response(e.status, e.message)
        return await closing(request, response) if e.close else response
    except EngineError as e:
        return error_response(e.status, e.message)
    except web.HTTPNotFound:
        return _plain(404, "404 page not found")  # gin's text for an unknown route
    except web.HTTPMethodNotAllowed:
        return _plain(405, "405 method not allowed")
    except web.HTTPException:
        raise
    except ConnectionError:  # the client went away mid-request: this answer reaches no one
        log.info("client went away during %s %s", request.method, request.path)
        return error_response(400, "client disconnected")
    except Exception as e:  # the server keeps serving everyone else
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"{type(e).__name__}: {e}")


def shaped_errors(prefix: str, error, *, unknown_routes: bool = False):
    """A middleware that answers every failure under `prefix` with error(status, message), the
    shape of the API served there (OpenAI's, Anthropic's); with unknown_routes, a 404 or 405
    from the router too. A streamed reply that already started is closed as is."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if not request.path.startswith(prefix):
            return await handler(request)
        try:
            return await handler(request)
        except ApiError as e:
            response = error(e.status, e.message)
            return await closing(request, response) if e.close else response
        except EngineError as e:
            return error(e.status, e.message)
        except web.HTTPNotFound:
            if not unknown_routes:
                raise
            return error(404, f"{request.method} {request.path} is not supported")
        except web.HTTPMethodNotAllowed:
            if not unknown_routes:
                raise
            return error(405, f"method {request.method} is not allowed on {request.path}")
        except (web.HTTPException, ConnectionError):
            raise
        except Exception as e:  # still the API's shape: its SDKs read the error's message
            log.exception("%s %s failed", request.method, request.path)
            return error(500, f"{type(e).__name__}: {e}")

    return middleware
