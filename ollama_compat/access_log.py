"""One access line per request in gin's format (Ollama's), and the cause of every 4xx/5xx, through
`logging` (logger "ollama_compat.access"), so a user's handlers and the JSON format get them too."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import orjson
from aiohttp import web

log = logging.getLogger("ollama_compat.access")

CLIENT_CLOSED = 499  # nginx's code for a client that went away; Ollama answers "request canceled" with it
# Set on a request by a stream whose write found the client gone: the handler then returns
# normally, where a disconnect aiohttp noticed first cancels it, and both must log alike.
CLIENT_GONE = web.RequestKey("client_gone", bool) if hasattr(web, "RequestKey") else "ollama_compat.client_gone"


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 512ns, 1.234567ms, 2.5s, 1m30.25s."""
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000_000:
        unit, scale = ("µs", 1_000) if ns < 1_000_000 else ("ms", 1_000_000)
        whole, frac = divmod(ns, scale)
        digits = f"{frac:0{len(str(scale)) - 1}d}".rstrip("0")
        return f"{whole}{'.' + digits if digits else ''}{unit}"
    seconds, frac = divmod(ns, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs}{'.' + digits if digits else ''}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def gin_line(when: float, status: int, latency_ns: int, client: str, method: str, path: str) -> str:
    """gin's defaultLogFormatter without colours (its "%-7s %s %#v" leaves two spaces after the padded
    method); latencies past a minute are cut to seconds."""
    if latency_ns > 60_000_000_000:
        latency_ns -= latency_ns % 1_000_000_000
    stamp = dt.datetime.fromtimestamp(when).strftime("%Y/%m/%d - %H:%M:%S")
    quoted = orjson.dumps(path).decode()  # Go's %#v of a string: a double-quoted literal
    return f"[GIN] {stamp} | {status:3d} | {go_duration(latency_ns):>13} | {client:>15} | {method:<7}  {quoted}"


def _cause(response: web.StreamResponse) -> str:
    """The message of an error answer: Ollama's {"error": "..."} or OpenAI's {"error": {"message"}}."""
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray)) or not body:
        return response.reason or ""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return bytes(body[:200]).decode("utf-8", "replace").strip()
    if isinstance(error, dict):
        error = error.get("message")
    return str(error if error is not None else "")


@web.middleware
async def access_log(request: web.Request, handler) -> web.StreamResponse:
    """Outermost: it sees the answers of the CORS and host checks too, and a stream's latency is
    its whole length, as gin's. A client that disconnects cancels the handler: logged as 499."""
    start, started_ns = time.time(), time.perf_counter_ns()
    client = request.remote or ""
    path = request.raw_path
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if request.get(CLIENT_GONE):
            status = CLIENT_CLOSED
            log.info("client disconnected: %s %s after %s", request.method, path,
                     go_duration(time.perf_counter_ns() - started_ns))  # fmt: skip
        elif status >= 400:
            level = logging.ERROR if status >= 500 else logging.WARNING
            log.log(level, "%s %s: %d %s", request.method, path, status, _cause(response))
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        log.info("client disconnected: %s %s after %s", request.method, path,
                 go_duration(time.perf_counter_ns() - started_ns))  # fmt: skip
        raise
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        latency = time.perf_counter_ns() - started_ns
        fields = {"status": status, "latency_ms": round(latency / 1e6, 3), "client": client,
                  "method": request.method, "path": path}  # fmt: skip
        log.info(gin_line(start, status, latency, client, request.method, path), extra={"access": fields})
