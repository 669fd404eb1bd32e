"""Ollama's origin and host policy (gin-contrib/cors, then allowedHostsMiddleware), plus extension origins.

One deliberate deviation: browser-extension origins (chrome-extension://, moz-extension://,
safari-web-extension://) are allowed by default, so Page-Assist works even when its Origin
rewrite fails (the well-known Page-Assist 403). OLLAMA_ORIGINS still comes first.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web

DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)  # fmt: skip
EXTENSION_ORIGINS = ("chrome-extension://*", "moz-extension://*", "safari-web-extension://*")
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
ALLOW_HEADERS = ",".join(
    "Authorization Content-Type User-Agent Accept X-Requested-With Openai-Beta X-Stainless-Arch "
    "X-Stainless-Async X-Stainless-Custom-Poll-Interval X-Stainless-Helper-Method X-Stainless-Lang "
    "X-Stainless-Os X-Stainless-Package-Version X-Stainless-Poll-Helper X-Stainless-Retry-Count "
    "X-Stainless-Runtime X-Stainless-Runtime-Version X-Stainless-Timeout".split()
)
_CORS_HEADERS = web.RequestKey("cors_headers", dict)


class OriginPolicy:
    def __init__(self, extra: tuple[str, ...], bind_host: str, allow_extensions: bool = True):
        entries = [o.strip().lower() for o in extra if o.strip()]
        self.allow_all = "*" in entries
        self.patterns = tuple(entries) + DEFAULT_ORIGINS + (EXTENSION_ORIGINS if allow_extensions else ())
        self.check_host = _is_loopback(bind_host)

    def allows(self, origin: str) -> bool:
        if self.allow_all:
            return True
        return any(_match(p, origin) for p in self.patterns)


def _match(pattern: str, origin: str) -> bool:
    """gin-cors wildcards: one '*' per entry, a prefix and/or suffix around it; else exact."""
    if "*" not in pattern:
        return origin == pattern
    prefix, _, suffix = pattern.partition("*")
    return len(origin) >= len(prefix) + len(suffix) and origin.startswith(prefix) and origin.endswith(suffix)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_allowed(host_header: str) -> bool:
    """The DNS-rebinding guard: local names and local or private addresses only."""
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    if host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def _forbidden() -> web.Response:
    return web.Response(status=403, body=b"")  # gin's AbortWithStatus: no body at all


def cors_middleware(policy: OriginPolicy):
    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        host = request.headers.get("Host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            if not policy.allows(origin):
                return _forbidden()
            allowed = "*" if policy.allow_all else origin
            if request.method == "OPTIONS":
                return web.Response(
                    status=204,
                    headers={
                        "Access-Control-Allow-Origin": allowed,
                        "Access-Control-Allow-Methods": ALLOW_METHODS,
                        "Access-Control-Allow-Headers": ALLOW_HEADERS,
                        "Access-Control-Max-Age": "43200",
                        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                    },
                )
            # Streamed responses send their headers at prepare(): added by on_response_prepare.
            request[_CORS_HEADERS] = {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"}
        if policy.check_host:
            if not _host_allowed(host):
                return _forbidden()
            if request.method == "OPTIONS":
                return web.Response(status=204)
        return await handler(request)

    return middleware


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in request.get(_CORS_HEADERS, {}).items():
        response.headers[key] = value
