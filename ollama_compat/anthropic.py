"""/v1/messages: Anthropic's Messages API (what Claude Code calls) translated to a native chat
request and back, as Ollama's anthropic/anthropic.go does, so it shares the native generation."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from . import fields, inference
from . import options as opt
from .appkeys import ENGINE
from .errors import ApiError, shaped_errors
from .native_chat import fold_reply, function_tool
from .streaming import stream_sse_events

log = logging.getLogger(__name__)

# Anthropic's error types by HTTP status (its SDKs pick their exception class by status and show `message`).
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error"}  # fmt: skip
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "max", "xhigh": "high"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": _id("req")}  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=orjson.dumps(error_body(status, message)), status=status, content_type="application/json")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# Anthropic's error shape on /v1/messages (inside the OpenAI one, which owns the rest of /v1).
anthropic_errors = shaped_errors("/v1/messages", _error, unknown_routes=True)


# --- request: Anthropic -> native ----------------------------------------------------------------

_REQUEST = {"model": "string", "max_tokens": "integer", "messages": "array", "temperature": "number",
            "top_p": "number", "top_k": "integer", "stop_sequences": "array of strings", "tools": "array",
            "tool_choice": "object", "thinking": "object", "metadata": "object", "output_config": "object"}  # fmt: skip


def _text_blocks(value: Any, where: str) -> str:
    """`system` or a tool result's content: a string, or blocks whose text is concatenated (as Ollama)."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise ApiError(400, f'field "{where}" must be a string or an array of content blocks')
    return "".join(b.get("text") or "" for b in value if isinstance(b, dict) and b.get("type") == "text")


def _image(block: dict, where: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise ApiError(400, "invalid image source")
    if source.get("type") != "base64":
        raise ApiError(400, f"invalid image source type: {source.get('type')}. Only base64 images are supported.")
    if not isinstance(source.get("data"), str):
        raise ApiError(400, f'field "{where}.source.data" must be of type string')
    return source["data"]


def _tool_result(block: dict, where: str, names: dict[str, str]) -> dict[str, Any]:
    content = block.get("content")
    images = []
    if isinstance(content, list):
        images = [_image(b, f"{where}.content[{i}]") for i, b in enumerate(content)
                  if isinstance(b, dict) and b.get("type") == "image"]  # fmt: skip
    use_id = block.get("tool_use_id") or ""
    message = {"role": "tool", "content": _text_blocks(content, where + ".content"), "tool_call_id": use_id,
               "tool_name": names.get(use_id, "")}  # fmt: skip
    if images:
        message["images"] = images
    return message


def _message(m: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message -> native messages. A user turn's tool results come first, as their own
    "tool" messages (the order chat templates expect after an assistant's tool calls)."""
    if not isinstance(m, dict):
        raise ApiError(400, f'field "{where}" must be of type object')
    role = str(m.get("role") or "").lower()
    if role not in ("user", "assistant"):
        raise ApiError(400, f'{where}.role: must be "user" or "assistant", got {orjson.dumps(m.get("role")).decode()}')
    content = m.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise ApiError(400, f'field "{where}.content" must be a string or an array of content blocks')
    text, thinking, images, calls, results = "", "", [], [], []
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            fields.check(block, {"text": "string"}, at + ".")
            text += block.get("text") or ""
        elif kind == "image":
            images.append(_image(block, at))
        elif kind == "thinking":
            fields.check(block, {"thinking": "string"}, at + ".")
            thinking = block.get("thinking") or ""
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic for Anthropic's models: nothing here can read it
        elif kind == "tool_use":
            if not block.get("id"):
                raise ApiError(400, "tool_use block missing required 'id' field")
            if not block.get("name"):
                raise ApiError(400, "tool_use block missing required 'name' field")
            fields.check(block, {"id": "string", "name": "string", "input": "object"}, at + ".")
            names[block["id"]] = block["name"]
            calls.append({"id": block["id"], "function": {"name": block["name"], "arguments": block.get("input") or {}}})
        elif kind == "tool_result":
            fields.check(block, {"tool_use_id": "string"}, at + ".")
            results.append(_tool_result(block, at, names))
        else:
            raise ApiError(400, f"{at}: content blocks of type {orjson.dumps(kind).decode()} are not supported")
    own: list[dict[str, Any]] = []
    if text or images or calls or thinking:
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            message["images"] = images
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["thinking"] = thinking
        own.append(message)
    return results + own if role == "user" else own + results


def _tools(body: dict) -> list[dict[str, Any]] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    fields.check(choice, {"type": "string"}, "tool_choice.")
    if choice.get("type") == "none":  # the one choice a prompt can honour: no tools offered
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ApiError(400, f'field "tools[{i}]" must be of type object')
        kind = tool.get("type") or "custom"
        if kind != "custom":  # web_search_*, bash_*, text_editor_*: tools Anthropic's servers define or run
            raise ApiError(400, f"tools[{i}]: tool type {orjson.dumps(kind).decode()} is not supported, only custom tools")
        fields.check(tool, {"name": "string", "description": "string", "input_schema": "object"}, f"tools[{i}].")
        if not tool.get("name"):
            raise ApiError(400, f"tools[{i}].name: field required")
        out.append(function_tool(tool["name"], tool.get("description"), tool.get("input_schema")))
    if out and choice.get("type") in ("any", "tool"):
        log.info("/v1/messages: tool_choice %s cannot be enforced; the model decides", choice.get("type"))
    return out or None


def _think(body: dict) -> bool | str | None:
    """`thinking` on or off; without it, output_config.effort as a level (as Ollama). budget_tokens
    is accepted but not enforced (Ollama's partial support)."""
    thinking = body.get("thinking") or {}
    fields.check(thinking, {"type": "string", "budget_tokens": "integer"}, "thinking.")
    if thinking.get("type") == "enabled":
        return True
    if thinking.get("type") == "disabled":
        return False
    effort = (body.get("output_config") or {}).get("effort")
    return _EFFORTS.get(effort.strip().lower()) if isinstance(effort, str) else None


def _format(body: dict) -> dict | None:
    """output_config.format, Anthropic's structured output: a JSON schema the native path enforces."""
    config = body.get("output_config") or {}
    fields.check(config, {"format": "object", "effort": "string"}, "output_config.")
    fmt = config.get("format")
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ApiError(400, 'output_config.format: expected {"type": "json_schema", "schema": {...}}')
    return fmt["schema"]


def native_request(body: dict) -> dict[str, Any]:
    """The native /api/chat body for an Anthropic request; ApiError(400) for what Ollama refuses."""
    fields.check(body, _REQUEST)
    if opt.unset(body.get("model")):
        raise ApiError(400, "model is required")
    if body.get("max_tokens") is None or body["max_tokens"] <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    if not body.get("messages"):
        raise ApiError(400, "messages is required")
    messages = []
    system = _text_blocks(body.get("system"), "system")
    if system:
        messages.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer them
    for i, m in enumerate(body["messages"]):
        messages += _message(m, f"messages[{i}]", names)
    options: dict[str, Any] = {"num_predict": int(body["max_tokens"])}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            options[key] = body[key]
    if body.get("stop_sequences"):
        options["stop"] = body["stop_sequences"]
    return {"model": body["model"], "messages": messages, "options": options, "tools": _tools(body),
            "think": _think(body), "format": _format(body)}  # fmt: skip


# --- response: native -> Anthropic ---------------------------------------------------------------


def _stop_reason(line: dict, had_tool_calls: bool) -> str:
    """Anthropic's stop_reason. Ollama says end_turn for a matched stop string too (its done_reason
    is "stop" for both); our engine names the string, so a client gets Anthropic's stop_sequence."""
    if had_tool_calls:
        return "tool_use"
    if line.get("stop_sequence"):
        return "stop_sequence"
    return _STOP_REASONS.get(line.get("done_reason") or "stop", "end_turn")


def _stop(line: dict, had_tool_calls: bool) -> dict[str, Any]:
    """stop_reason and stop_sequence, the matched string or null (as Anthropic sends them)."""
    reason = _stop_reason(line, had_tool_calls)
    return {"stop_reason": reason, "stop_sequence": line["stop_sequence"] if reason == "stop_sequence" else None}


def _usage(line: dict) -> dict[str, int]:
    return {"input_tokens": line.get("prompt_eval_count", 0), "output_tokens": line.get("eval_count", 0)}


def _tool_use(call: dict) -> dict[str, Any]:
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": call["function"]["arguments"]}


async def _message_object(lines: AsyncIterator[dict], ident: str, model: str) -> dict[str, Any]:
    reply = await fold_reply(lines)
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": ""})
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    content += [_tool_use(c) for c in reply.tool_calls]
    return {"id": ident, "type": "message", "role": "assistant", "model": model, "content": content,
            **_stop(reply.last, bool(reply.tool_calls)), "usage": _usage(reply.last)}  # fmt: skip


async def _events(lines: AsyncIterator[dict], ident: str, model: str) -> AsyncIterator[tuple[str, dict]]:
    """Anthropic's event sequence: message_start and a ping, then content blocks (thinking and text
    open while their deltas arrive; each tool call one whole block), message_delta with the stop
    reason and usage, message_stop. Nothing is sent before the first native line, so a request the
    native path refuses still gets its HTTP status."""
    index, open_kind, had_calls = 0, None, False

    def close() -> list[tuple[str, dict]]:
        nonlocal index, open_kind
        if open_kind is None:
            return []
        open_kind, index = None, index + 1
        return [("content_block_stop", {"type": "content_block_stop", "index": index - 1})]

    def delta(kind: str, text: str) -> list[tuple[str, dict]]:
        nonlocal open_kind
        out = []
        if open_kind != kind:
            out += close()
            start = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
            open_kind = kind
        piece = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        out.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": piece}))
        return out

    started = False
    try:
        async for line in lines:
            if not started:
                started = True
                # Token counts are known only at the end: message_delta carries them (the SDKs merge it).
                start = {"id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
                         "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
                yield "message_start", {"type": "message_start", "message": start}
                yield "ping", {"type": "ping"}
            msg = line.get("message", {})
            events = []
            if msg.get("thinking"):
                events += delta("thinking", msg["thinking"])
            if msg.get("content"):
                events += delta("text", msg["content"])
            for call in msg.get("tool_calls", []):
                had_calls = True
                events += close()
                block = {**_tool_use(call), "input": {}}
                arguments = orjson.dumps(call["function"]["arguments"]).decode()
                events += [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
                           ("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": arguments}})]  # fmt: skip
                open_kind = "tool_use"
                events += close()
            if line.get("done"):
                events += close()
                events += [("message_delta", {"type": "message_delta", "usage": _usage(line),
                                              "delta": _stop(line, had_calls)}),
                           ("message_stop", {"type": "message_stop"})]  # fmt: skip
            for event in events:
                yield event
    finally:
        await lines.aclose()  # a client gone mid-stream cancels the generation behind it


def _error_event(message: str) -> tuple[str, dict]:
    return "error", {"type": "error", "error": {"type": "api_error", "message": message}}


async def messages(request: web.Request) -> web.StreamResponse:
    from .routes import read_json

    body = await read_json(request)
    native = native_request(body)
    if native["think"]:
        # As Ollama for Anthropic clients ("relax_thinking"): Claude Code asks every model to think,
        # so a model that cannot just answers instead of failing the request.
        info = await asyncio.to_thread(inference.resolve, request.app[ENGINE], native["model"])
        if "thinking" not in info.capabilities:
            native["think"] = None
    lines = inference.chat_responses(request.app, native)
    ident, model = _id("msg"), body["model"]
    if not opt.stream(body.get("stream"), default=False):
        try:
            message = await _message_object(lines, ident, model)
        finally:
            await lines.aclose()
        return web.Response(body=orjson.dumps(message), content_type="application/json")
    return await stream_sse_events(request, _events(lines, ident, model), _error_event)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
