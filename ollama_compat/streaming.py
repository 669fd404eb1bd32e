"""NDJSON streaming: status before the first byte, an {"error"} line after it, cancel on disconnect."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from backend.interface import EngineError

from .access_log import CLIENT_GONE
from .errors import ApiError, json_response

log = logging.getLogger(__name__)

NDJSON_TYPE = "application/x-ndjson"


def line(obj: Any) -> bytes:
    """One compact JSON object and its newline, written in one write() (Page-Assist decodes each
    network chunk on its own, so a line must never be split across writes)."""
    return orjson.dumps(obj) + b"\n"


def client_went_away(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """A write found the client gone: logged, and marked for the access log (a 499, as when
    aiohttp notices the disconnect first and cancels the handler)."""
    log.info("client went away during %s", request.path)
    request[CLIENT_GONE] = True
    return response


async def stream_ndjson(request: web.Request, items: AsyncIterator[dict]) -> web.StreamResponse:
    """Streams `items` as NDJSON. The first item is awaited before any byte goes out, so a bad
    request still gets its HTTP status; a failure later becomes a final {"error": ...} line.
    Leaving early (a client that went away, cancelling this handler) closes `items`, which
    cancels the generation behind it."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        first = None
    response = web.StreamResponse(headers={"Content-Type": NDJSON_TYPE})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(line(first))
            async for item in items:
                await response.write(line(item))
    except (ApiError, EngineError) as e:
        await response.write(line({"error": e.message}))
    except (ConnectionResetError, ConnectionError):
        return client_went_away(request, response)
    except Exception as e:
        log.exception("stream failed during %s", request.path)
        await response.write(line({"error": f"{type(e).__name__}: {e}"}))
    finally:
        await items.aclose()
    await response.write_eof()
    return response


async def collect(items: AsyncIterator[dict], merge) -> web.Response:
    """stream=false: one JSON object folded from every item by `merge(acc, item)`."""
    acc = None
    try:
        async for item in items:
            acc = item if acc is None else merge(acc, item)
    finally:
        await items.aclose()
    return json_response(acc if acc is not None else {})


async def stream_sse_events(request: web.Request, events: AsyncIterator[tuple[str, dict]], error_event) -> web.StreamResponse:
    """Named SSE events (`event: name` + `data: json`), as Anthropic's Messages and OpenAI's
    Responses streams are framed. Like stream_ndjson, the first event is awaited before any byte
    goes out, so a bad request still gets its HTTP status; a later failure becomes the event
    `error_event(message)` returns, the API's own error event."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    def frame(name: str, data: dict) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    try:
        if first is not None:
            await response.write(frame(*first))
            async for event in events:
                await response.write(frame(*event))
    except (ApiError, EngineError) as e:
        await response.write(frame(*error_event(e.message)))
    except (ConnectionResetError, ConnectionError):
        return client_went_away(request, response)
    except Exception as e:
        log.exception("stream failed during %s", request.path)
        await response.write(frame(*error_event(f"{type(e).__name__}: {e}")))
    finally:
        await events.aclose()
    await response.write_eof()
    return response
