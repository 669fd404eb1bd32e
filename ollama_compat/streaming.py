"""NDJSON streaming: status before the first byte, an {"error"} line after it, cancel on disconnect."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from backend.interface import EngineError

from .errors import ApiError, json_response

log = logging.getLogger(__name__)

NDJSON_TYPE = "application/x-ndjson"


def line(obj: Any) -> bytes:
    """One compact JSON object and its newline, written in one write() (Page-Assist decodes each
    network chunk on its own, so a line must never be split across writes)."""
    return orjson.dumps(obj) + b"\n"


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
        log.info("client went away during %s", request.path)
        return response
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
