"""Request bodies read within bounds: a size limit checked from Content-Length first, a read deadline, 400s for bad encodings."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web

from .appkeys import SETTINGS
from .errors import ApiError


def _too_large(size: int | None, limit: int) -> ApiError:
    shown = f"{size} bytes" if size is not None else "more"
    return ApiError(413, f"request body too large: {shown}, the limit is {limit} bytes")


async def read_body(request: web.Request) -> bytes:
    """The whole body, which must arrive within `body_timeout` seconds of the headers. A declared
    length over the limit is refused before a byte of it is read; a chunked body that grows past
    the limit is refused as soon as it does (aiohttp counts decompressed bytes)."""
    settings = request.app[SETTINGS]
    declared = request.content_length
    if declared is not None and declared > settings.max_body:
        raise _too_large(declared, settings.max_body)
    try:
        return await asyncio.wait_for(request.read(), settings.body_timeout)
    except asyncio.TimeoutError:
        # The connection is closed after the answer: its body may still be trickling in.
        raise ApiError(408, f"request body not received within {settings.body_timeout:g}s", close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, settings.max_body) from None
    except web.RequestPayloadError as e:  # a Content-Encoding the body does not match, a broken chunked frame
        raise ApiError(400, f"invalid request body: {_first_line(e)}", close=True) from None


async def body_chunks(request: web.Request, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A body of any length (blob uploads run to gigabytes) in chunks of up to `size` bytes; a
    client that sends nothing for `body_timeout` seconds is cut off."""
    timeout = request.app[SETTINGS].body_timeout
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.read(size), timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"request body stalled: nothing received for {timeout:g}s", close=True) from None
        except web.RequestPayloadError as e:
            raise ApiError(400, f"invalid request body: {_first_line(e)}", close=True) from None
        if not chunk:
            return
        yield chunk


def _first_line(e: Exception) -> str:
    """aiohttp's messages read '400, message:\\n  Can not decode content-encoding: gzip'."""
    text = getattr(e, "message", None) or str(e)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
