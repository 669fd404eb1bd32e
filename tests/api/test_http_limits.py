"""Slow, oversized and mis-encoded requests over raw sockets: cut off in time, answered in the {"error"} shape (issue 20, item 6)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time

import orjson
import pytest

from .fake_engine import FakeEngine
from .live_server import Server

TIMEOUT = 0.5  # header and body timeouts of the server under test
LIMIT = 4096  # its body limit in bytes
CHAT = orjson.dumps({"model": "mymoe", "messages": [{"role": "user", "content": "hi"}], "stream": False})


@pytest.fixture(scope="module")
def server():
    srv = Server(engine=FakeEngine(), header_timeout=TIMEOUT, body_timeout=TIMEOUT, max_body=LIMIT)
    yield srv
    srv.close()


async def connect(server):
    return await asyncio.open_connection("127.0.0.1", server.port)


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def response(reader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, as the server writes its JSON answers."""
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status_line.split()[1]), headers, body


async def closed_within(reader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails past `seconds`."""
    started = time.perf_counter()
    try:
        rest = await asyncio.wait_for(reader.read(), seconds)
    except ConnectionResetError:
        rest = b""
    assert rest == b""
    return time.perf_counter() - started


async def chat_works(server) -> None:
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=len(CHAT)) + CHAT)
    status, _, body = await response(reader)
    assert status == 200 and orjson.loads(body)["message"]["content"] == "Hello wörld"
    writer.close()


async def test_partial_headers_held_open_are_cut_off(server):
    """A slowloris: the request head one byte at a time, never finished. The server closes the
    connection at the header timeout, and answers everyone else meanwhile."""
    reader, writer = await connect(server)
    started = time.perf_counter()
    dripping = head("/api/chat", Content_Length=len(CHAT))[:-2]  # the blank line never comes

    async def drip():
        for byte in dripping:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripper = asyncio.ensure_future(drip())
    await chat_works(server)
    await closed_within(reader, 3 * TIMEOUT)
    assert TIMEOUT * 0.9 <= time.perf_counter() - started < 2 * TIMEOUT
    assert not dripper.done()  # cut off mid-head, not after it
    dripper.cancel()
    writer.close()


async def test_an_idle_connection_is_closed_after_the_same_timeout(server):
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=len(CHAT)) + CHAT)
    assert (await response(reader))[0] == 200
    assert await closed_within(reader, 3 * TIMEOUT) >= TIMEOUT * 0.9
    writer.close()


@pytest.mark.parametrize("drip", [False, True], ids=["held", "dripped"])
async def test_partial_body_held_open_gets_408_and_the_connection_closes(server, drip):
    """The head is complete and promises 100 bytes; one arrives (or one every 50 ms, which would
    take 5 s). The answer comes at the body timeout, then the connection closes."""
    reader, writer = await connect(server)
    started = time.perf_counter()
    writer.write(head("/api/chat", Content_Length=100) + b"{")

    async def trickle():
        while drip:
            await asyncio.sleep(0.05)
            writer.write(b" ")

    trickling = asyncio.ensure_future(trickle())
    status, headers, body = await response(reader)
    elapsed = time.perf_counter() - started
    assert (status, orjson.loads(body)) == (408, {"error": f"request body not received within {TIMEOUT:g}s"})
    assert headers["content-type"] == "application/json; charset=utf-8" and headers["connection"] == "close"
    assert TIMEOUT * 0.9 <= elapsed < 2 * TIMEOUT
    await closed_within(reader, TIMEOUT)
    trickling.cancel()
    writer.close()
    await chat_works(server)


@pytest.mark.parametrize(
    "path,error",
    [("/api/chat", {"error": f"request body too large: {10**12} bytes, the limit is {LIMIT} bytes"}),
     ("/v1/chat/completions", {"error": {"message": f"request body too large: {10**12} bytes, the limit is {LIMIT} bytes",
                                         "type": "invalid_request_error", "param": None, "code": None}})],
)  # fmt: skip
async def test_oversized_content_length_is_refused_before_the_body_is_read(server, path, error):
    """Not a byte of the terabyte is sent: the 413 comes from the header alone, at once."""
    reader, writer = await connect(server)
    started = time.perf_counter()
    writer.write(head(path, Content_Length=10**12, Content_Type="application/json"))
    status, headers, body = await asyncio.wait_for(response(reader), TIMEOUT / 2)
    assert (status, orjson.loads(body)) == (413, error)
    assert time.perf_counter() - started < TIMEOUT / 2
    writer.close()


async def test_oversized_chunked_body_is_refused_while_it_streams(server):
    """No Content-Length to judge by: the 413 comes once the chunks pass the limit, and the
    server does not wait for the rest."""
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Transfer_Encoding="chunked"))
    chunk = b"[" + b" " * 1022 + b"]"
    for _ in range(LIMIT // len(chunk) + 2):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    status, _, body = await asyncio.wait_for(response(reader), 2 * TIMEOUT)
    assert (status, orjson.loads(body)) == (413, {"error": f"request body too large: more, the limit is {LIMIT} bytes"})
    writer.close()


async def test_a_body_at_the_limit_is_accepted(server):
    padded = CHAT[:-1] + b" " * (LIMIT - len(CHAT)) + b"}"
    assert len(padded) == LIMIT
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=LIMIT) + padded)
    assert (await response(reader))[0] == 200
    writer.close()


async def test_content_encoding_gzip_with_a_plain_body_is_a_400(server):
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=len(CHAT), Content_Encoding="gzip") + CHAT)
    status, headers, body = await response(reader)
    assert (status, orjson.loads(body)) == (400, {"error": "invalid request body: not gzip data (Error -3 while "
                                                           "decompressing data: incorrect header check)"})
    writer.close()
    # A real gzip body is read as what it decompresses to.
    packed = gzip.compress(CHAT)
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=len(packed), Content_Encoding="gzip") + packed)
    status, _, body = await response(reader)
    assert status == 200 and orjson.loads(body)["done"] is True
    writer.close()


@pytest.mark.parametrize(
    "encoding,body,status,error",
    [("deflate", b"\x00", 400, "invalid request body: the deflate data ends early"),  # aiohttp waited forever
     ("gzip", gzip.compress(CHAT)[:-8], 400, "invalid request body: the gzip data ends early"),
     ("br", CHAT, 415, 'unsupported Content-Encoding "br": send the body as it is, or as gzip or deflate'),
     ("identity", CHAT, 200, None)],
)  # fmt: skip
async def test_truncated_and_unknown_encodings_are_answered_at_once(server, encoding, body, status, error):
    reader, writer = await connect(server)
    writer.write(head("/api/chat", Content_Length=len(body), Content_Encoding=encoding) + body)
    got, headers, data = await asyncio.wait_for(response(reader), TIMEOUT / 2)
    assert got == status and headers["content-type"] == "application/json; charset=utf-8"
    assert error is None or orjson.loads(data) == {"error": error}
    writer.close()


async def test_gzip_bomb_is_refused_at_the_decompressed_limit(server):
    packed = gzip.compress(b'{"model": "mymoe", "prompt": "' + b"a" * (50 * LIMIT) + b'"}')
    assert len(packed) < LIMIT
    reader, writer = await connect(server)
    writer.write(head("/api/generate", Content_Length=len(packed), Content_Encoding="gzip") + packed)
    status, _, body = await response(reader)
    assert (status, orjson.loads(body)) == (413, {"error": f"request body too large: more, the limit is {LIMIT} bytes"})
    writer.close()


async def test_stalled_blob_upload_is_cut_off(tmp_path):
    """Blob uploads have no size limit (GGUFs are gigabytes), so their bound is time between
    chunks: nothing for the body timeout and the upload ends with a 408, leaving no blob."""
    srv = Server(tmp_path, body_timeout=TIMEOUT)
    try:
        data = b"GGUF" + bytes(1000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        reader, writer = await connect(srv)
        writer.write(head(f"/api/blobs/{digest}", Content_Length=len(data)) + data[:500])
        status, _, body = await asyncio.wait_for(response(reader), 4 * TIMEOUT)
        assert (status, orjson.loads(body)) == (408, {"error": f"request body stalled: nothing received for {TIMEOUT:g}s"})
        await closed_within(reader, TIMEOUT)
        writer.close()
        assert not srv.engine.has_blob(digest)
    finally:
        srv.close()
