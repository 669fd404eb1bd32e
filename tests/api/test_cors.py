"""Origin and host policy: the test vectors of OLLAMA_API.md §2.5, plus the extension deviation."""

from __future__ import annotations

import pytest

from .conftest import make_app

LOCAL = {"Host": "127.0.0.1:11434"}


async def serve(aiohttp_client, engine, env=None):
    return await aiohttp_client(make_app(engine, env))


@pytest.mark.parametrize(
    "origin,allowed",
    [
        (None, None),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://127.0.0.1", "http://127.0.0.1"),  # Page-Assist's rewrite
        ("https://0.0.0.0:8080", "https://0.0.0.0:8080"),
        ("vscode-webview://abc", "vscode-webview://abc"),
        ("chrome-extension://abc", "chrome-extension://abc"),  # our deviation: extensions by default
        ("moz-extension://abc", "moz-extension://abc"),
        ("https://evil.com", 403),
        ("http://localhost.evil.com", 403),
        ("null", 403),  # file:// pages send "null"
    ],
)
async def test_origins(aiohttp_client, engine, origin, allowed):
    client = await serve(aiohttp_client, engine)
    headers = {**LOCAL, **({"Origin": origin} if origin else {})}
    r = await client.get("/api/tags", headers=headers)
    if allowed == 403:
        assert r.status == 403 and await r.read() == b""
        return
    assert r.status == 200
    assert r.headers.get("Access-Control-Allow-Origin") == allowed
    if allowed:
        assert r.headers["Vary"] == "Origin"


async def test_streamed_responses_carry_cors_headers(aiohttp_client, engine):
    client = await serve(aiohttp_client, engine)
    r = await client.post("/api/generate", json={"model": "mymoe", "prompt": "x"},
                          headers={**LOCAL, "Origin": "http://localhost:5173"})  # fmt: skip
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    await r.read()


async def test_preflight(aiohttp_client, engine):
    client = await serve(aiohttp_client, engine)
    headers = {**LOCAL, "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    r = await client.options("/api/chat", headers=headers)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert r.headers["Access-Control-Allow-Methods"] == "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["Access-Control-Max-Age"] == "43200"
    assert r.headers.getall("Vary") == ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]
    assert await r.read() == b""
    r = await client.options("/anything", headers={**headers, "Origin": "https://evil.com"})
    assert r.status == 403 and await r.read() == b""


async def test_configured_origins(aiohttp_client, engine):
    client = await serve(aiohttp_client, engine, {"OLLAMA_ORIGINS": "https://app.example.com, *.corp.example"})
    r = await client.get("/api/tags", headers={**LOCAL, "Origin": "https://app.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    r = await client.get("/api/tags", headers={**LOCAL, "Origin": "https://x.corp.example"})
    assert r.status == 200
    star = await serve(aiohttp_client, engine, {"OLLAMA_ORIGINS": "*"})
    r = await star.get("/api/tags", headers={**LOCAL, "Origin": "https://anything.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in r.headers  # gin-cors: no Vary with *
    r = await star.options("/api/chat", headers={**LOCAL, "Origin": "https://x.example",
                                                 "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in r.headers


async def test_quoted_origins_value(aiohttp_client, engine):
    """envconfig trims quotes off the whole OLLAMA_ORIGINS value (a common .env habit)."""
    client = await serve(aiohttp_client, engine, {"OLLAMA_ORIGINS": '"https://a.example,HTTPS://B.example"'})
    for origin in ("https://a.example", "https://b.example"):
        r = await client.get("/api/tags", headers={**LOCAL, "Origin": origin})
        assert r.headers["Access-Control-Allow-Origin"] == origin


async def test_empty_and_same_origin_are_not_cors(aiohttp_client, engine):
    client = await serve(aiohttp_client, engine)
    for origin in ("", "http://127.0.0.1:11434"):
        r = await client.get("/api/tags", headers={**LOCAL, "Origin": origin})
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_options_without_origin(aiohttp_client, engine):
    """allowedHostsMiddleware answers OPTIONS itself only for allowed names; an IP Host goes on
    to routing, where no route takes OPTIONS (gin: 405)."""
    client = await serve(aiohttp_client, engine)
    assert (await client.options("/api/chat", headers={"Host": "localhost:11434"})).status == 204
    assert (await client.options("/api/chat", headers=LOCAL)).status == 405


@pytest.mark.parametrize(
    "host,status",
    [("127.0.0.1:11434", 200), ("localhost:11434", 200), ("foo.localhost:11434", 200), ("10.0.0.5:11434", 200),
     ("printer.local", 200), ("[::1]:11434", 200), ("::1", 200), ("", 200), ("evil.example.com", 403),
     ("8.8.8.8:11434", 403), ("172.32.0.1", 403), ("100.64.0.1", 403)],  # Go's IsPrivate, not Python's
)  # fmt: skip
async def test_dns_rebinding_guard_on_loopback(aiohttp_client, engine, host, status):
    client = await serve(aiohttp_client, engine)
    r = await client.get("/api/version", headers={"Host": host})
    assert r.status == status


async def test_no_host_check_when_bound_to_all_interfaces(aiohttp_client, engine):
    client = await serve(aiohttp_client, engine, {"OLLAMA_HOST": "0.0.0.0:11434"})
    assert (await client.get("/api/version", headers={"Host": "evil.example.com"})).status == 200
