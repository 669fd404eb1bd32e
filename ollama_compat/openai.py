"""/v1/*: OpenAI requests translated to native ones, native responses translated back (as Ollama's
openai/openai.go), so both APIs share one implementation of generation."""

from __future__ import annotations

import base64
import logging
import secrets
import struct
import time
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from backend.interface import EngineError, ModelNotFound

from . import fields, inference
from . import options as opt
from .appkeys import ENGINE
from .errors import ApiError, shaped_errors
from .native_chat import fold_reply

log = logging.getLogger(__name__)

EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
          "xhigh": "max", "ultra": "max"}  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error", 408: "invalid_request_error",
            413: "invalid_request_error"}.get(status, "api_error")  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# OpenAI's error shape on /v1 only; the status carries through.
openai_errors = shaped_errors("/v1/", _error)


async def _body(request: web.Request) -> dict[str, Any]:
    from .routes import read_json

    return await read_json(request)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields (and vLLM's top_k, min_p, repetition_penalty) -> Ollama options;
    OpenAI's defaults (temperature and top_p 1.0)."""
    options: dict[str, Any] = {
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
    }
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    for key in ("seed", "frequency_penalty", "presence_penalty", "top_k", "min_p"):
        if body.get(key) is not None:
            options[key] = body[key]
    # Not OpenAI's, but vLLM's, SGLang's and llama.cpp's: honoured, so answers through an
    # ollama-compat front equal our own (Ollama's /v1 ignores them).
    repeat = body.get("repetition_penalty", body.get("repeat_penalty"))
    if repeat is not None:
        options["repeat_penalty"] = repeat
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    return options


def native_format(fmt: Any, where: str, schema_holder: str | None = None) -> str | dict | None:
    """An OpenAI format object as the native format: "text" none, "json_object" "json", "json_schema"
    its schema (inside fmt[schema_holder] in chat completions' response_format, in fmt itself in the
    Responses API's text.format); anything else a 400 that names `where`."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    holder = fmt.get(schema_holder) if kind == "json_schema" and schema_holder else fmt
    if kind == "json_schema" and isinstance(holder, dict) and isinstance(holder.get("schema"), dict):
        return holder["schema"]
    raise ApiError(400, f"invalid {where}: {orjson.dumps(fmt).decode()}")


def _format(body: dict[str, Any]) -> str | dict | None:
    fmt = body.get("response_format")
    return native_format(fmt, "response_format", "json_schema") if fmt else None


def think_level(effort: Any) -> bool | str | None:
    """An OpenAI reasoning effort as the native think value: None when unset, a 400 for a level
    OpenAI does not name."""
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORT:
        raise ApiError(400, f"invalid reasoning value: '{effort}' (must be one of {', '.join(EFFORT)})")
    return EFFORT[effort]


def _think(body: dict[str, Any]) -> Any:
    fields.check(body, {"reasoning_effort": "string", "reasoning": "object"})
    return think_level(body.get("reasoning_effort") or (body.get("reasoning") or {}).get("effort"))


def data_uri_base64(url: Any) -> str | None:
    """The base64 data of a data: URI; None for anything else (a URL, a file id), which is never fetched."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return None
    return url.split(";base64,", 1)[1]


def _content(content: Any) -> tuple[str, list[str]]:
    """A string, or parts: text joined; images as base64 data URIs only (no fetching URLs)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise ApiError(400, "invalid message content")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text") or "", str):
                raise ApiError(400, "invalid message part: text must be a string")
            texts.append(part.get("text") or "")
        elif kind == "image_url":
            url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part.get("image_url")
            image = data_uri_base64(url)
            if image is None:
                raise ApiError(400, "image URLs are not currently supported, please use base64 encoded data instead")
            images.append(image)
        else:
            raise ApiError(400, f"invalid message part type: {kind}")
    return "\n".join(texts), images


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    names: dict[str, str] = {}  # tool_call_id -> function name, for the tool results
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, "invalid message")
        fields.check(m, {"role": "string", "tool_calls": "array", "tool_call_id": "string", "reasoning": "string",
                         "reasoning_content": "string"}, f"messages[{i}].")  # fmt: skip
        text, images = _content(m.get("content"))
        native: dict[str, Any] = {"role": m.get("role", ""), "content": text}
        if images:
            native["images"] = images
        if m.get("reasoning") or m.get("reasoning_content"):
            native["thinking"] = m.get("reasoning") or m.get("reasoning_content")
        calls = []
        for j, call in enumerate(m.get("tool_calls") or []):
            at = f"messages[{i}].tool_calls[{j}]"
            if not isinstance(call, dict):
                raise ApiError(400, f'field "{at}" must be of type object')
            fields.check(call, {"id": "string", "function": "object"}, at + ".")
            fn = call.get("function") or {}
            fields.check(fn, {"name": "string"}, at + ".function.")
            names[call.get("id", "")] = fn.get("name", "")
            calls.append({"function": {"name": fn.get("name", ""), "arguments": fn.get("arguments") or "{}"}})
        if calls:
            native["tool_calls"] = calls
        if m.get("tool_call_id"):
            native["tool_name"] = names.get(m["tool_call_id"], "")
        out.append(native)
    return out


def _usage(line: dict[str, Any]) -> dict[str, int]:
    prompt, completion = line.get("prompt_eval_count", 0), line.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native object arguments become OpenAI's JSON strings."""
    return [
        {"id": c["id"], "index": c["function"]["index"], "type": "function",
         "function": {"name": c["function"]["name"], "arguments": orjson.dumps(c["function"]["arguments"]).decode()}}
        for c in calls
    ]  # fmt: skip


def _chat_logprobs(native: list[dict[str, Any]]) -> dict[str, Any]:
    """Native logprob entries as a chat choice's `logprobs` ({"content": [...]}, each entry with
    its `top_logprobs`, empty unless asked for)."""
    def one(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": e["token"], "logprob": e["logprob"], "bytes": e.get("bytes")}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs", [])]} for e in native]}


def _completion_logprobs(native: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Native logprob entries as a completion choice's (legacy) `logprobs`: parallel lists, the
    alternatives as {token: logprob}, and each token's offset in the text from `offset` on."""
    offsets = []
    for e in native:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in native], "token_logprobs": [e["logprob"] for e in native],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in native],
            "text_offset": offsets}  # fmt: skip


async def _sse(request: web.Request, events: AsyncIterator[dict]) -> web.StreamResponse:
    """data: lines; the status is decided by the first event, as on the native API."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(b"data: " + orjson.dumps(first) + b"\n\n")
            async for event in events:
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
    except (ApiError, EngineError) as e:
        await response.write(b"data: " + orjson.dumps({"error": {"message": e.message}}) + b"\n\n")
    except ConnectionError:
        return response
    finally:
        await events.aclose()
    await response.write_eof()
    return response


def _include_usage(body: dict[str, Any]) -> bool:
    fields.check(body, {"stream_options": "object"})
    options = body.get("stream_options") or {}
    fields.check(options, {"include_usage": "boolean"}, "stream_options.")
    return bool(options.get("include_usage"))


def _one_choice(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise ApiError(400, "n > 1 is not supported: ask once per choice")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _one_choice(body)
    usage = _include_usage(body)
    native = {
        "model": body.get("model"),
        "messages": _messages(body.get("messages")),
        "options": _options(body),
        "format": _format(body),
        "tools": body.get("tools"),
        "think": _think(body),
        "logprobs": body.get("logprobs"),
        "top_logprobs": body.get("top_logprobs"),
        "keep_alive": body.get("keep_alive"),
    }
    lines = inference.chat_responses(request.app, native)
    ident, created, model = f"chatcmpl-{secrets.randbelow(10**9)}", int(time.time()), body.get("model")
    base = {"id": ident, "created": created, "model": model, "system_fingerprint": "fp_ollama"}
    if not opt.stream(body.get("stream"), default=False):
        return _json(await _chat_object(lines, base))
    return await _sse(request, _chat_chunks(lines, base, usage))


async def _chat_object(lines: AsyncIterator[dict], base: dict) -> dict[str, Any]:
    reply = await fold_reply(lines)
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.thinking:
        message["reasoning"] = reply.thinking  # Ollama's field; a second copy would double clients' transcripts
    if reply.tool_calls:
        message["tool_calls"] = _openai_calls(reply.tool_calls)
    finish = "tool_calls" if reply.tool_calls else reply.last.get("done_reason", "stop")
    choice = {"index": 0, "message": message, "finish_reason": finish}
    if reply.logprobs:
        choice["logprobs"] = _chat_logprobs(reply.logprobs)
    return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(reply.last)}


async def _chat_chunks(lines: AsyncIterator[dict], base: dict, include_usage: bool) -> AsyncIterator[dict]:
    chunk = {**base, "object": "chat.completion.chunk"}
    role_sent, had_calls = False, False

    def event(delta: dict[str, Any], finish: str | None = None, logprobs: list | None = None) -> dict[str, Any]:
        nonlocal role_sent
        if not role_sent:
            delta = {"role": "assistant", **delta}
            role_sent = True
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = _chat_logprobs(logprobs)
        return {**chunk, "choices": [choice]}

    async for line in lines:
        msg = line.get("message", {})
        logprobs = line.get("logprobs")  # with the content they scored, else with the reasoning
        if msg.get("thinking"):
            yield event({"reasoning": msg["thinking"]}, logprobs=None if msg.get("content") else logprobs)
        if msg.get("content") or (logprobs and not msg.get("thinking")):
            yield event({"content": msg.get("content", "")}, logprobs=logprobs)
        if msg.get("tool_calls"):
            had_calls = True
            yield event({"tool_calls": _openai_calls(msg["tool_calls"])})
        if line.get("done"):
            finish = "tool_calls" if had_calls else line.get("done_reason", "stop")
            yield event({}, finish)
            if include_usage:
                yield {**chunk, "choices": [], "usage": _usage(line)}


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _one_choice(body)
    usage = _include_usage(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    logprobs = body.get("logprobs")
    native = {"model": body.get("model"), "prompt": prompt, "options": _options(body), "suffix": body.get("suffix"),
              "raw": body.get("raw") is True,  # Ollama templates the prompt; "raw": true (a front's) does not
              "format": _format(body), "keep_alive": body.get("keep_alive"),
              # the legacy API's logprobs counts the alternatives: 0 asks for the sampled tokens' alone
              "logprobs": logprobs is True or (_is_count(logprobs) and logprobs >= 0),
              "top_logprobs": logprobs if _is_count(logprobs) and logprobs > 0 else None}  # fmt: skip
    if not prompt:
        raise ApiError(400, "prompt is required")
    lines = inference.generate_responses(request.app, native)
    base = {"id": f"cmpl-{secrets.randbelow(10**9)}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model"), "system_fingerprint": "fp_ollama"}  # fmt: skip
    if not opt.stream(body.get("stream"), default=False):
        text, last, scored = "", {}, []
        async for line in lines:
            text += line.get("response", "")
            scored += line.get("logprobs", [])
            last = line
        choice = {"text": text, "index": 0, "finish_reason": last.get("done_reason", "stop"),
                  "logprobs": _completion_logprobs(scored, 0) if scored else None}  # fmt: skip
        return _json({**base, "choices": [choice], "usage": _usage(last)})

    async def events() -> AsyncIterator[dict]:
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        offset = 0
        async for line in lines:
            if line.get("response") or line.get("done") or line.get("logprobs"):
                finish = line.get("done_reason") if line.get("done") else None
                choice = {"text": line.get("response", ""), "index": 0, "finish_reason": finish}
                if line.get("logprobs"):
                    choice["logprobs"] = _completion_logprobs(line["logprobs"], offset)
                offset += len(choice["text"])
                event = {**base, "choices": [choice]}
                yield {**event, "usage": zero} if usage else event
            if line.get("done") and usage:
                yield {**base, "choices": [], "usage": _usage(line)}

    return await _sse(request, events())


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model_entry(info, shown_id: str | None = None) -> dict[str, Any]:
    namespace = info.name.split("/")[-2] if "/" in info.name else "library"
    return {"id": shown_id or info.name, "object": "model", "created": int(info.modified_at), "owned_by": namespace}


async def models(request: web.Request) -> web.Response:
    infos = sorted(request.app[ENGINE].list_models(), key=lambda m: m.modified_at, reverse=True)
    return _json({"object": "list", "data": [_model_entry(m) for m in infos]})


async def model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    try:
        info = request.app[ENGINE].get_model(name)
    except ModelNotFound:
        raise ApiError(404, f"model '{name}' not found") from None
    return _json(_model_entry(info, name))


async def embeddings(request: web.Request) -> web.Response:
    body = await _body(request)
    inputs = body.get("input")
    if inputs == "":
        inputs = [""]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        raise ApiError(400, "invalid input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
    result = await inference.embed_response(
        request.app, {"model": body.get("model"), "input": inputs, "dimensions": body.get("dimensions")}
    )

    def encode(vector: list[float]):
        if encoding == "float":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    data = [{"object": "embedding", "embedding": encode(v), "index": i} for i, v in enumerate(result["embeddings"])]
    tokens = result["prompt_eval_count"]
    return _json({"object": "list", "data": data, "model": body.get("model"),
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
    app.router.add_post("/v1/embeddings", embeddings)
