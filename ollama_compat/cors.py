"""Ollama's origin and host policy (gin-contrib/cors, then allowedHostsMiddleware), plus extension origins.

One deliberate deviation: browser-extension origins (chrome-extension://, moz-extension://,
safari-web-extension://) are allowed by default, so Page-Assist works even when its Origin
rewrite fails (the well-known Page-Assist 403). OLLAMA_ORIGINS still comes first.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web
from multidict import CIMultiDict

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
_CORS_HEADERS = web.RequestKey("cors_headers", CIMultiDict)


class OriginPolicy:
    def __init__(self, extra: tuple[str, ...], bind_host: str, allow_extensions: bool = True):
        # envconfig trims spaces and quotes off the whole OLLAMA_ORIGINS value, then gin-cors
        # trims and lower-cases each entry.
        joined = ",".join(extra).strip().strip("\"'")
        entries = [o.strip().lower() for o in joined.split(",") if o.strip()]
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


def _split_host(host_header: str) -> str:
    """net.SplitHostPort, falling back to the whole value (a bare name or a bare IPv6)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    if host_header.count(":") == 1:
        return host_header.split(":", 1)[0]
    return host_header


# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only (Python's is_private is much wider).
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def _is_local_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Ollama's isLocalIP (an address of one of this machine's interfaces): binding to it
    succeeds exactly when it is one, without listing interfaces."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError:
        return False


def _ip_allowed(host: str) -> bool | None:
    """None when `host` is not an IP address at all."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.is_loopback or ip.is_unspecified or any(ip in n for n in _PRIVATE if n.version == ip.version) \
        or _is_local_ip(ip)


def _name_allowed(host: str) -> bool:
    """Ollama's allowedHost: empty, localhost, this machine's name, *.localhost/.local/.internal."""
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _forbidden() -> web.Response:
    return web.Response(status=403, body=b"")  # gin's AbortWithStatus: no body at all


def cors_middleware(policy: OriginPolicy):
    @web.middleware
    async def middleware(request: web.Request, handler):
        origin = request.headers.get("Origin", "")  # gin-cors: an empty Origin is no Origin
        host = request.headers.get("Host", "")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not policy.allows(origin):
                return _forbidden()
            # gin-cors sends Vary only when it echoes the origin, not with allow-all's "*".
            cors = CIMultiDict({"Access-Control-Allow-Origin": "*" if policy.allow_all else origin})
            if request.method == "OPTIONS":
                cors.update({"Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": ALLOW_HEADERS,
                             "Access-Control-Max-Age": "43200"})  # fmt: skip
                if not policy.allow_all:
                    for name in ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"):
                        cors.add("Vary", name)
                return web.Response(status=204, headers=cors)
            if not policy.allow_all:
                cors["Vary"] = "Origin"
            # Streamed responses send their headers at prepare(): added by on_response_prepare.
            request[_CORS_HEADERS] = cors
        if policy.check_host:
            name = _split_host(host)
            ip_ok = _ip_allowed(name)
            if ip_ok:
                return await handler(request)
            if ip_ok is None and _name_allowed(name):
                if request.method == "OPTIONS":
                    return web.Response(status=204)  # allowedHostsMiddleware answers these itself
                return await handler(request)
            return _forbidden()
        return await handler(request)

    return middleware


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in request.get(_CORS_HEADERS, CIMultiDict()).items():
        response.headers.add(key, value)
