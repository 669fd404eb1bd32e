"""Model management: /api/create, /api/copy, /api/blobs/:digest, /api/pull, /api/push."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from backend.interface import EngineError

from . import options as opt
from . import types as wire
from .appkeys import ENGINE
from .body import body_chunks
from .errors import ApiError, json_response
from .routes import read_json
from .streaming import stream_ndjson


async def _progress(work: Callable[[Callable[[dict], None]], None]) -> AsyncIterator[dict]:
    """Runs `work(progress)` in a thread (it touches gigabytes of files) and yields each status
    it reports, then {"status": "success"}. A failure before the first status raises, so the
    client gets an HTTP error; later, the stream carries an {"error"} line."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def report(status: dict) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, status)

    def run() -> None:
        try:
            work(report)
        except BaseException as e:  # delivered to the stream
            loop.call_soon_threadsafe(queue.put_nowait, e)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    task = loop.run_in_executor(None, run)
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        yield {"status": "success"}
    finally:
        await task


async def _respond(request: web.Request, body: dict, statuses: AsyncIterator[dict]) -> web.StreamResponse:
    if opt.stream(body.get("stream")):
        return await stream_ndjson(request, statuses)
    last: dict[str, Any] = {}
    async for status in statuses:
        last = status
    return json_response(last)


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    name = body.get("model") if not opt.unset(body.get("model")) else body.get("name")
    if opt.unset(name) or not isinstance(name, str):
        raise ApiError(400, "model is required")
    for unsupported in ("quantize", "quantization", "adapters"):
        if body.get(unsupported):  # silently storing unquantized weights or no LoRA would mislead
            raise ApiError(400, f"create: '{unsupported}' is not supported by this server")
    files = body.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ApiError(400, "files must map file names to sha256 digests")
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ApiError(400, "parameters must be an object")
    opt.merge_options(parameters)  # the same type rules as request options, checked now
    engine = request.app[ENGINE]
    # Values go through as sent ("" and [] as unset): the store checks their types, so a number
    # where a string belongs is a 400 naming the field, never a crash.
    spec = {key: None if _empty(body.get(field)) else body.get(field) for key, field in
            (("source", "from"), ("files", "files"), ("template", "template"), ("messages", "messages"),
             ("license", "license"))}  # fmt: skip
    spec.update(system=body.get("system"), parameters=parameters)

    def work(report: Callable[[dict], None]) -> None:
        engine.create_model(name, status=lambda s: report({"status": s}), **spec)

    return await _respond(request, body, _progress(work))


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


async def copy(request: web.Request) -> web.Response:
    body = await read_json(request)
    source, destination = body.get("source"), body.get("destination")
    if opt.unset(source) or opt.unset(destination):
        raise ApiError(400, "source and destination are required")
    if not isinstance(source, str) or not isinstance(destination, str):
        raise ApiError(400, "source and destination must be model names (strings)")
    await asyncio.to_thread(request.app[ENGINE].copy_model, source, destination)
    return web.Response(status=200)


def _digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ApiError(400, f'invalid digest "{digest}"')
    return digest


async def head_blob(request: web.Request) -> web.Response:
    digest = _digest(request)
    if not await asyncio.to_thread(request.app[ENGINE].has_blob, digest):
        raise ApiError(404, f'blob "{digest}" not found')
    return web.Response(status=200)


async def post_blob(request: web.Request) -> web.Response:
    """The raw body becomes the blob, hashed while it streams to disk (GGUFs are gigabytes:
    never held in memory); a wrong digest leaves nothing behind."""
    digest = _digest(request)
    engine = request.app[ENGINE]
    if await asyncio.to_thread(engine.has_blob, digest):
        return web.Response(status=200)
    writer = await asyncio.to_thread(engine.blob_writer, digest)
    try:
        async for chunk in body_chunks(request):
            await asyncio.to_thread(writer.write, chunk)
        await asyncio.to_thread(writer.commit)
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise
    return web.Response(status=201)


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    name = body.get("model") if not opt.unset(body.get("model")) else body.get("name")
    if opt.unset(name):
        raise ApiError(400, "model is required")
    if not isinstance(name, str) or not wire.valid_name(name):
        raise ApiError(400, "invalid model name")
    engine = request.app[ENGINE]
    statuses = _progress(lambda report: engine.pull_model(name, report))
    try:
        return await _respond(request, body, statuses)
    except EngineError as e:  # stream=false: Ollama answers a failed pull with 500
        raise ApiError(500 if e.status == 400 else e.status, e.message) from None


async def push(request: web.Request) -> web.Response:
    body = await read_json(request)
    if opt.unset(body.get("model")) and opt.unset(body.get("name")):
        raise ApiError(400, "model is required")
    raise ApiError(400, "push is not supported: this server has no registry to push to")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/create", create)
    app.router.add_post("/api/copy", copy)
    app.router.add_route("HEAD", "/api/blobs/{digest}", head_blob)
    app.router.add_post("/api/blobs/{digest}", post_blob)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
