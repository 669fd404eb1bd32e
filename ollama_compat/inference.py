"""The cores of /api/chat, /api/generate and /api/embed: validate a body, run the engine, yield
Ollama's response objects. The native handlers and the OpenAI translation both use them."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from backend.interface import Chunk, Engine, GenerateRequest, ModelInfo, ModelNotFound

from . import fields
from . import options as opt
from . import types as wire
from .appkeys import ENGINE, SETTINGS
from .errors import ApiError
from .logs import TRACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A validated request: `request` is None for a load or unload call (`action`)."""

    model: str  # as the client sent it, echoed in every response
    info: ModelInfo
    request: GenerateRequest | None
    action: str = ""  # "load" | "unload" when there is nothing to generate
    raw: bool = False


def resolve(engine: Engine, name: Any) -> ModelInfo:
    if not isinstance(name, str) or not wire.valid_name(name):
        raise ApiError(400, "invalid model name")
    try:
        return engine.get_model(name)
    except ModelNotFound:
        raise ApiError(404, f"model '{name}' not found") from None


def _think(info: ModelInfo, model: str, body: dict) -> tuple[bool | str | None, bool]:
    """(value for the template, split reasoning?). Unset on a thinking model means on."""
    value = opt.think(body.get("think"))
    capable = "thinking" in info.capabilities
    if value not in (None, False) and not capable:
        raise ApiError(400, f'"{model}" does not support thinking')
    if value is None:
        return (True if capable else None), capable
    return value, bool(value)


def _format(value: Any) -> str | dict | None:
    if opt.unset(value):
        return None
    if value == "json" or isinstance(value, dict):
        return value
    shown = orjson.dumps(value).decode()
    raise ApiError(400, f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


def _images(values: Any, info: ModelInfo, model: str) -> tuple[bytes, ...]:
    if opt.unset(values) or values == []:
        return ()
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, "images must be an array of base64 strings")
    if "vision" not in info.capabilities:
        raise ApiError(400, f'"{model}" does not support images')
    out = []
    for item in values:
        text = item.split(",", 1)[1] if isinstance(item, str) and item.startswith("data:") else item
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise ApiError(400, "invalid image: not base64") from None
    return tuple(out)


# api.GenerateRequest / api.ChatRequest fields read as they are (the rest have their own readers).
_FLAGS = {"truncate": "boolean", "shift": "boolean", "logprobs": "boolean", "raw": "boolean"}
_GENERATE = {"prompt": "string", "suffix": "string", "system": "string", "template": "string", "context": "array"}


def _common(app: web.Application, body: dict, info: ModelInfo) -> dict[str, Any]:
    settings = app[SETTINGS]
    fields.check(body, _FLAGS)
    merged = opt.merge_options(info.parameters, body.get("options"))
    top = opt.top_logprobs(body.get("top_logprobs"))
    truncate, shift = body.get("truncate"), body.get("shift")
    return {
        "sampling": opt.sampling_params(merged, bool(body.get("logprobs")), top),
        "load": opt.load_options(merged, settings),
        "keep_alive": opt.keep_alive(body.get("keep_alive")),
        "format": _format(body.get("format")),
        "truncate": True if truncate is None else bool(truncate),
        "shift": True if shift is None else bool(shift),
    }


def _message(m: Any, where: str = "messages") -> dict[str, Any]:
    """Ollama's api.Message, made safe for the template: role lower-cased, content a string,
    tool-call arguments an object (stringified ones are parsed, a leniency Ollama lacks)."""
    fields.message(m, where)
    out = dict(m)
    out["role"] = str(m.get("role") or "").lower()
    out["content"] = m.get("content") if isinstance(m.get("content"), str) else ""
    calls = []
    for call in m.get("tool_calls") or []:
        fn = dict((call or {}).get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                fn["arguments"] = orjson.loads(args) if args.strip() else {}
            except orjson.JSONDecodeError:
                raise ApiError(400, f"tool call arguments are not JSON: {args[:80]}") from None
            if not isinstance(fn["arguments"], dict):
                raise ApiError(400, f"tool call arguments must be a JSON object: {args[:80]}")
        calls.append({**call, "function": fn})
    if calls:
        out["tool_calls"] = calls
    return out


def _completion(info: ModelInfo, model: str, endpoint: str) -> None:
    if "completion" not in info.capabilities:  # an embedding-only model
        raise ApiError(400, f'"{model}" does not support {endpoint}')


def _action(info: ModelInfo, model: str, body: dict, endpoint: str) -> Job:
    """A load or unload call. Unload comes first in Ollama's handlers; a load is checked like
    a generation (capability, think) before it happens."""
    if opt.keep_alive(body.get("keep_alive")) == 0:
        return Job(model, info, None, "unload")
    _completion(info, model, endpoint)
    _think(info, model, body)
    return Job(model, info, None, "load")


async def prepare(prepare_job, app: web.Application, body: dict) -> Job:
    """prepare_chat or prepare_generate, in a worker thread for a local model: its render runs in
    a render process, and its first one reads and compiles the template from the GGUF (2.8 s on
    the event loop before, every other client waiting). A remote model's "render" is a JSON dump
    of the messages, done right here: through a thread, each request of a burst of 32 waited
    about 5 ms for the GIL (its switch interval) before going upstream."""
    name = body.get("model")
    if isinstance(name, str) and app[ENGINE].renders_inline(name):
        return prepare_job(app, body)
    return await asyncio.to_thread(prepare_job, app, body)


def prepare_chat(app: web.Application, body: dict) -> Job:
    engine = app[ENGINE]
    model = body.get("model")
    if opt.unset(model):
        raise ApiError(400, "model is required")
    opt.top_logprobs(body.get("top_logprobs"))  # Ollama checks it before anything else
    info = resolve(engine, model)
    messages = body.get("messages")
    if opt.unset(messages) or messages == []:
        return _action(info, model, body, "chat")
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be an array")
    _completion(info, model, "chat")
    own = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    # As Ollama's ChatHandler: the model's Modelfile MESSAGEs come before the request's own.
    messages = [_message(m) for m in info.messages] + own
    tools = body.get("tools")
    fields.tools(tools)
    if not opt.unset(tools) and tools:
        if "tools" not in info.capabilities:
            raise ApiError(400, f"{info.name} does not support tools")
    else:
        tools = None
    images = tuple(img for m in messages for img in _images(m.get("images"), info, model))
    if info.system and own[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": info.system})
    think_value, split_thinking = _think(info, model, body)
    prompt = engine.render_chat(info.name, messages, tools=tools, think=think_value)
    request = GenerateRequest(
        model=info.name, prompt=prompt, images=images, think=split_thinking, parse_tools=bool(tools),
        **_common(app, body, info),
    )  # fmt: skip
    _log_request("chat", request, len(messages), len(tools or ()))
    return Job(model, info, request)


def _log_request(kind: str, request: GenerateRequest, num_messages: int, num_tools: int = 0) -> None:
    """OLLAMA_DEBUG=1: what the engine is asked for; 2 adds the rendered prompt itself."""
    log.debug("%s request: model %s, %d messages, %d tools, think %s, format %s, keep_alive %s, %s, %s", kind,
              request.model, num_messages, num_tools, request.think, request.format is not None, request.keep_alive,
              request.sampling, request.load)  # fmt: skip
    log.log(TRACE, "%s prompt for %s: %r", kind, request.model, request.prompt)


def prepare_generate(app: web.Application, body: dict) -> Job:
    engine = app[ENGINE]
    model = body.get("model")
    if opt.unset(model):
        raise ApiError(404, "model '' not found")  # generate differs from chat here, as Ollama
    opt.top_logprobs(body.get("top_logprobs"))
    info = resolve(engine, model)
    fields.check(body, _GENERATE)
    prompt = body.get("prompt")
    images = _images(body.get("images"), info, model)
    if opt.unset(prompt) and not images:
        return _action(info, model, body, "generate")
    _completion(info, model, "generate")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    fields.check(body, _FLAGS)
    raw = bool(body.get("raw"))
    system, template, context = body.get("system"), body.get("template"), body.get("context")
    if context is not None:  # ids past the vocabulary are the engine's to refuse
        context = [fields.integer(token, f"context[{i}]", low=0) for i, token in enumerate(context)]
    if raw and not (opt.unset(system) and opt.unset(template) and not context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    suffix = "" if opt.unset(body.get("suffix")) else body["suffix"]
    if suffix and "insert" not in info.capabilities:
        raise ApiError(400, f"{info.name} does not support insert")
    if not opt.unset(template):
        # Our templates are the GGUF's Jinja ones; a Go template from the request cannot run here.
        log.warning("generate: the request's Go template is ignored; the model's own template is used")
    think_value, split_thinking = _think(info, model, body)
    if raw or suffix:  # a hole to fill: the template around prompt and suffix is the model's to apply
        text = prompt
    else:
        messages = []
        system = info.system if opt.unset(system) else system
        if system:
            messages.append({"role": "system", "content": system})
        if context is None:  # as Ollama: the Modelfile MESSAGEs, unless continuing a context
            messages += [_message(m) for m in info.messages]
        messages.append({"role": "user", "content": prompt})
        text = engine.render_chat(info.name, messages, think=think_value)
    request = GenerateRequest(
        model=info.name, prompt=text, context=tuple(context or ()), images=images, think=split_thinking,
        suffix=suffix, **_common(app, body, info),
    )  # fmt: skip
    _log_request("generate", request, 1)
    return Job(model, info, request, raw=raw)


async def run_action(app: web.Application, job: Job, body: dict) -> None:
    engine = app[ENGINE]
    if job.action == "unload":
        await engine.unload(job.info.name)
    else:
        merged = opt.merge_options(job.info.parameters, body.get("options"))
        await engine.load(job.info.name, opt.load_options(merged, app[SETTINGS]), opt.keep_alive(body.get("keep_alive")))


async def chat_lines(app: web.Application, job: Job, stop_sequence: bool = False) -> AsyncIterator[dict]:
    """Native chat objects: deltas on done:false lines (tool calls once each), then a done line
    that always has `message` and never carries content (Page-Assist ignores it there).
    `stop_sequence` adds the stop string that ended it to the done line, for the compatibility
    layers (Anthropic's stop_reason); never on the native API, where Ollama has no such field."""
    index = 0
    async for chunk in app[ENGINE].generate(job.request):
        if chunk.content or chunk.thinking or chunk.tool_calls or chunk.logprobs:
            message: dict[str, Any] = {"role": "assistant", "content": chunk.content}
            if chunk.thinking:
                message["thinking"] = chunk.thinking
            if chunk.tool_calls:
                message["tool_calls"] = wire.tool_calls(chunk.tool_calls, index)
                index += len(chunk.tool_calls)
            yield _line(job, {"message": message}, chunk, done=False)
        if chunk.done:
            line = _line(job, {"message": {"role": "assistant", "content": ""}}, chunk, done=True)
            if stop_sequence and chunk.stop_sequence:
                line["stop_sequence"] = chunk.stop_sequence
            yield line


async def generate_lines(app: web.Application, job: Job) -> AsyncIterator[dict]:
    async for chunk in app[ENGINE].generate(job.request):
        if chunk.content or chunk.thinking or chunk.logprobs:
            fields: dict[str, Any] = {"response": chunk.content}
            if chunk.thinking:
                fields["thinking"] = chunk.thinking
            yield _line(job, fields, chunk, done=False)
        if chunk.done:
            fields = {"response": ""}
            line = _line(job, fields, chunk, done=True)
            if not job.raw:
                line["context"] = list(chunk.context)
            yield line


def _line(job: Job, fields: dict, chunk: Chunk, done: bool) -> dict[str, Any]:
    line = {"model": job.model, "created_at": wire.utc_timestamp(), **fields, "done": done}
    if done:
        line.update(wire.chunk_fields(chunk))
    elif chunk.logprobs:
        line["logprobs"] = wire.logprobs(chunk.logprobs)
    return line


def action_line(job: Job, kind: str) -> dict[str, Any]:
    body = {"message": {"role": "assistant", "content": ""}} if kind == "chat" else {"response": ""}
    return {"model": job.model, "created_at": wire.utc_timestamp(), **body, "done": True, "done_reason": job.action}


async def chat_responses(app: web.Application, body: dict) -> AsyncIterator[dict]:
    """Contract for the OpenAI and Anthropic layers: native chat objects (plus `stop_sequence`,
    see chat_lines), ApiError before the first one."""
    job = await prepare(prepare_chat, app, body)
    if job.request is None:
        await run_action(app, job, body)
        yield action_line(job, "chat")
        return
    async for line in chat_lines(app, job, stop_sequence=True):
        yield line


async def generate_responses(app: web.Application, body: dict) -> AsyncIterator[dict]:
    job = await prepare(prepare_generate, app, body)
    if job.request is None:
        await run_action(app, job, body)
        yield action_line(job, "generate")
        return
    async for line in generate_lines(app, job):
        yield line


def merge_chat(acc: dict, line: dict) -> dict:
    """stream=false: content, thinking, tool calls and logprobs concatenated; the rest from the
    done line."""
    message = dict(acc["message"])
    new = line["message"]
    message["content"] = message.get("content", "") + new.get("content", "")
    if new.get("thinking"):
        message["thinking"] = message.get("thinking", "") + new["thinking"]
    if new.get("tool_calls"):
        message["tool_calls"] = message.get("tool_calls", []) + new["tool_calls"]
    merged = {**line, "message": message}
    if acc.get("logprobs") or line.get("logprobs"):
        merged["logprobs"] = acc.get("logprobs", []) + line.get("logprobs", [])
    return merged


def merge_generate(acc: dict, line: dict) -> dict:
    merged = {**line, "response": acc.get("response", "") + line.get("response", "")}
    if acc.get("thinking") or line.get("thinking"):
        merged["thinking"] = acc.get("thinking", "") + line.get("thinking", "")
    if acc.get("logprobs") or line.get("logprobs"):
        merged["logprobs"] = acc.get("logprobs", []) + line.get("logprobs", [])
    return merged


def _normalise(vector: list[float], dimensions: int | None) -> list[float]:
    if dimensions:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else vector


async def embed_response(app: web.Application, body: dict) -> dict[str, Any]:
    """/api/embed: L2-normalised vectors (truncated to `dimensions` first, then renormalised)."""
    engine = app[ENGINE]
    model = body.get("model")
    if opt.unset(model):
        raise ApiError(404, "model '' not found")  # as Ollama's EmbedHandler for an empty name
    if not isinstance(model, str) or not wire.valid_name(model):
        raise ApiError(400, "invalid model name")
    try:
        info = engine.get_model(model)
    except ModelNotFound:
        raise ApiError(404, f'model "{model}" not found, try pulling it first') from None
    inputs = body.get("input")
    if inputs is None or inputs == "":
        inputs = []
    elif isinstance(inputs, str):
        inputs = [inputs]
    elif not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise ApiError(400, "invalid input type")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0):
        raise ApiError(400, "dimensions must be a positive integer")
    merged = opt.merge_options(info.parameters, body.get("options"))
    load = opt.load_options(merged, app[SETTINGS])
    keep_alive = opt.keep_alive(body.get("keep_alive"))
    fields.check(body, {"truncate": "boolean"})
    truncate = body.get("truncate")
    if not inputs:
        load_ns = await engine.load(info.name, load, keep_alive)
        return {"model": model, "embeddings": [], "total_duration": load_ns, "load_duration": load_ns, "prompt_eval_count": 0}
    result = await engine.embed(info.name, inputs, load=load, keep_alive=keep_alive,
                                truncate=True if truncate is None else bool(truncate))  # fmt: skip
    return {
        "model": model,
        "embeddings": [_normalise(v, dimensions) for v in result.embeddings],
        "total_duration": int(result.total_duration),
        "load_duration": int(result.load_duration),
        "prompt_eval_count": int(result.prompt_eval_count),
    }
