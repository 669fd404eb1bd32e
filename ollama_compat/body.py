"""Request bodies read within bounds: a size limit checked from Content-Length first, a read deadline, 400s for bad encodings."""

from __future__ import annotations

import asyncio
import zlib
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
    the limit is refused as soon as it does, a compressed one as soon as it decompresses past it."""
    settings = request.app[SETTINGS]
    declared = request.content_length
    if declared is not None and declared > settings.max_body:
        raise _too_large(declared, settings.max_body)
    try:
        raw = await asyncio.wait_for(request.read(), settings.body_timeout)
    except asyncio.TimeoutError:
        # The connection is closed after the answer: its body may still be trickling in.
        raise ApiError(408, f"request body not received within {settings.body_timeout:g}s", close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, settings.max_body) from None
    except web.RequestPayloadError as e:  # a broken chunked frame
        raise ApiError(400, f"invalid request body: {_first_line(e)}", close=True) from None
    encoding = request.headers.get("Content-Encoding", "").strip()
    if not encoding or encoding.lower() == "identity":
        return raw
    return await asyncio.to_thread(decode, raw, encoding, settings.max_body)


# aiohttp's own decoding is off (app.server_options): an incomplete deflate stream left its reader
# waiting forever, and an encoding it has no decoder for (br) was a text/plain 400.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` undone from its Content-Encoding (codings listed in the order applied, so undone
    last first), never past `limit` bytes however well it compresses."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip().lower() not in ("", "identity")]
    for coding in reversed(codings):
        if coding not in _WBITS:
            raise ApiError(415, f'unsupported Content-Encoding "{coding}": send the body as it is, or as gzip or deflate')
        decompressor = zlib.decompressobj(_WBITS[coding])
        try:
            out = decompressor.decompress(raw, limit + 1)
        except zlib.error as e:
            raise ApiError(400, f"invalid request body: not {coding} data ({e})") from None
        if len(out) > limit:
            raise _too_large(None, limit)
        if not decompressor.eof:
            raise ApiError(400, f"invalid request body: the {coding} data ends early")
        raw = out
    return raw


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
