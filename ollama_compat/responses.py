"""/v1/responses: OpenAI's Responses API (what the Codex CLI calls), the non-stateful flavour
Ollama implements (openai/responses.go), translated onto the native chat path."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from . import fields, inference
from . import options as opt
from .errors import ApiError
from .native_chat import function_tool
from .openai import data_uri_base64, native_format, think_level
from .streaming import stream_sse_events

log = logging.getLogger(__name__)

_REQUEST = {"model": "string", "instructions": "string", "tools": "array", "reasoning": "object",
            "max_output_tokens": "integer", "temperature": "number", "top_p": "number", "text": "object",
            "previous_response_id": "string", "background": "boolean", "truncation": "string",
            "metadata": "object", "parallel_tool_calls": "boolean", "store": "boolean"}  # fmt: skip
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- request: Responses -> native ----------------------------------------------------------------


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """A string, or parts: text of every kind concatenated (as Ollama), images as base64 data URIs."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or array")
    text, images = "", []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}[{i}]"
        if kind in ("input_text", "output_text"):
            fields.check(part, {"text": "string"}, at + ".")
            text += part.get("text") or ""
        elif kind == "refusal":
            fields.check(part, {"refusal": "string"}, at + ".")
            text += part.get("refusal") or ""
        elif kind == "input_image":
            image = data_uri_base64(part.get("image_url"))
            if image is None:
                raise ApiError(400, f"{at}: image URLs and file ids are not supported, please use base64 encoded data instead")
            images.append(image)
        elif kind == "input_file":
            raise ApiError(400, "file inputs are not currently supported")
        else:
            raise ApiError(400, f"{at}: unknown content type: {orjson.dumps(kind).decode()}")
    return text, images


def _arguments(text: Any, where: str) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"{where}: failed to parse function call arguments: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: function call arguments must be a JSON object")
    return value


def _items(items: list, messages: list[dict[str, Any]]) -> None:
    """Input items -> native messages. A reasoning item is the thinking of the assistant turn that
    follows it; function calls join the assistant message before them; each output is a "tool"
    message named after its call."""
    names: dict[str, str] = {}  # call_id -> function name
    thinking = ""
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f'field "{at}" must be of type object')
        kind = item.get("type") or ("message" if item.get("role") else None)
        if kind == "message":
            role = _ROLES.get(str(item.get("role") or "").lower())
            if role is None:
                raise ApiError(400, f'{at}.role: must be one of "user", "assistant", "system", "developer"')
            text, images = _content(item.get("content"), f"{at}.content")
            message: dict[str, Any] = {"role": role, "content": text}
            if images:
                message["images"] = images
            if role == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "function_call":
            fields.check(item, {"call_id": "string", "name": "string"}, at + ".")
            call_id, name = item.get("call_id") or "", item.get("name") or ""
            names[call_id] = name
            call = {"id": call_id, "function": {"name": name, "arguments": _arguments(item.get("arguments"), at)}}
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            last = messages[-1]
            last["tool_calls"] = last.get("tool_calls", []) + [call]
            if thinking:
                last["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            fields.check(item, {"call_id": "string"}, at + ".")
            text, images = _content(item.get("output"), f"{at}.output")
            call_id = item.get("call_id") or ""
            message = {"role": "tool", "content": text, "tool_call_id": call_id, "tool_name": names.get(call_id, "")}
            if images:
                message["images"] = images
            messages.append(message)
        elif kind == "reasoning":
            fields.check(item, {"summary": "array", "encrypted_content": "string"}, at + ".")
            # Our own reasoning items carry the thinking as plain text in encrypted_content.
            summary = "".join(s.get("text") or "" for s in item.get("summary") or [] if isinstance(s, dict))
            thinking = item.get("encrypted_content") or summary
        elif kind == "item_reference":
            raise ApiError(400, f"{at}: item references need stored responses, which are not supported: send the item itself")
        elif kind is None:
            raise ApiError(400, f"{at}: input item missing required 'type' field")
        else:
            raise ApiError(400, f"{at}: unknown input item type: {orjson.dumps(kind).decode()}")


def _tools(body: dict) -> list[dict[str, Any]] | None:
    choice = body.get("tool_choice")
    if choice == "none":  # the one choice a prompt can honour: no tools offered
        return None
    out, skipped = [], []
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict):
            raise ApiError(400, f'field "tools[{i}]" must be of type object')
        if tool.get("type") != "function":  # web_search, custom, local_shell...: nothing here runs them
            skipped.append(str(tool.get("type")))
            continue
        fields.check(tool, {"name": "string", "description": "string", "parameters": "object"}, f"tools[{i}].")
        out.append(function_tool(tool.get("name") or "", tool.get("description"), tool.get("parameters")))
    if skipped:
        log.info("/v1/responses: only function tools are offered to the model; skipped %s", ", ".join(skipped))
    return out or None


def _format(body: dict) -> str | dict | None:
    fmt = (body.get("text") or {}).get("format")
    return None if fmt is None else native_format(fmt, "text.format")


def native_request(body: dict) -> dict[str, Any]:
    fields.check(body, _REQUEST)
    if opt.unset(body.get("model")):
        raise ApiError(400, "model is required")
    if body.get("background") or body.get("conversation") is not None:
        raise ApiError(400, "background and conversation are not supported: send the whole conversation in input")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    inputs = body.get("input")
    if isinstance(inputs, str):
        messages.append({"role": "user", "content": inputs})
    elif isinstance(inputs, list):
        _items(inputs, messages)
    elif inputs is not None:
        raise ApiError(400, "input must be a string or array")
    if not any(m["role"] != "system" for m in messages):
        raise ApiError(400, "input is required")
    # As Ollama: OpenAI's default temperature (1.0); top_p only when given, else the model's own.
    options: dict[str, Any] = {"temperature": 1.0 if body.get("temperature") is None else body["temperature"]}
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    return {"model": body["model"], "messages": messages, "options": options, "tools": _tools(body),
            "think": think_level((body.get("reasoning") or {}).get("effort")), "format": _format(body)}  # fmt: skip


# --- response: native -> Responses --------------------------------------------------------------


class ResponseBuilder:
    """Folds native chat lines into Responses output items, in the order the model produced them
    (reasoning, message text, function calls), yielding the stream's events on the way; the
    non-streaming reply is the same fold's final response object."""

    def __init__(self, body: dict):
        self.body = body
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self.open: dict[str, Any] | None = None  # the reasoning or message item receiving deltas
        self.final: dict[str, Any] | None = None  # the response object, once the done line came

    def event(self, kind: str, **data: Any) -> tuple[str, dict]:
        self.sequence += 1
        return kind, {"type": kind, "sequence_number": self.sequence - 1, **data}

    def response(self, status: str, line: dict | None = None, error: dict | None = None) -> dict[str, Any]:
        body = self.body
        reasoning = body.get("reasoning") or {}
        fmt = (body.get("text") or {}).get("format") or {"type": "text"}
        usage = None
        if line is not None:
            prompt, completion = line.get("prompt_eval_count", 0), line.get("eval_count", 0)
            usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
                     "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
        finished = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None, "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": body.get("model"), "previous_response_id": None, "instructions": body.get("instructions"),
            "output": list(self.output) if finished else [], "error": error,
            "tools": body.get("tools") or [], "tool_choice": body.get("tool_choice") or "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "text": {"format": fmt},
            "temperature": 1.0 if body.get("temperature") is None else body["temperature"], "top_p": body.get("top_p"),
            "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")} if reasoning else None,
            "usage": usage, "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "store": False, "background": False, "service_tier": "default", "metadata": body.get("metadata") or {},
            "safety_identifier": None, "prompt_cache_key": body.get("prompt_cache_key"),
        }  # fmt: skip

    def start(self) -> list[tuple[str, dict]]:
        return [self.event("response.created", response=self.response("in_progress")),
                self.event("response.in_progress", response=self.response("in_progress"))]  # fmt: skip

    def _close(self) -> list[tuple[str, dict]]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.output)
        self.output.append(item)
        ref = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            part = item["summary"][0]
            return [self.event("response.reasoning_summary_text.done", **ref, summary_index=0, text=part["text"]),
                    self.event("response.reasoning_summary_part.done", **ref, summary_index=0, part=part),
                    self.event("response.output_item.done", output_index=index, item=item)]  # fmt: skip
        item["status"] = "completed"
        part = item["content"][0]
        return [self.event("response.output_text.done", **ref, content_index=0, text=part["text"], logprobs=[]),
                self.event("response.content_part.done", **ref, content_index=0, part=part),
                self.event("response.output_item.done", output_index=index, item=item)]  # fmt: skip

    def _delta(self, kind: str, text: str) -> list[tuple[str, dict]]:
        events = []
        if self.open is None or self.open["type"] != kind:
            events += self._close()
            index = len(self.output)  # an open item joins `output` when it closes
            if kind == "reasoning":
                self.open = {"id": _id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": ""}],
                             "encrypted_content": ""}  # fmt: skip
                added = {"id": self.open["id"], "type": "reasoning", "summary": []}
                events += [self.event("response.output_item.added", output_index=index, item=added),
                           self.event("response.reasoning_summary_part.added", item_id=added["id"], output_index=index,
                                      summary_index=0, part={"type": "summary_text", "text": ""})]  # fmt: skip
            else:
                self.open = {"id": _id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                             "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}  # fmt: skip
                added = {**self.open, "content": []}
                events += [self.event("response.output_item.added", output_index=index, item=added),
                           self.event("response.content_part.added", item_id=added["id"], output_index=index,
                                      content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                             "logprobs": []})]  # fmt: skip
        ref = {"item_id": self.open["id"], "output_index": len(self.output)}
        if kind == "reasoning":
            self.open["summary"][0]["text"] += text
            self.open["encrypted_content"] += text  # plain text, as Ollama: sent back, it is the turn's thinking
            return events + [self.event("response.reasoning_summary_text.delta", **ref, summary_index=0, delta=text)]
        self.open["content"][0]["text"] += text
        return events + [self.event("response.output_text.delta", **ref, content_index=0, delta=text, logprobs=[])]

    def _call(self, call: dict) -> list[tuple[str, dict]]:
        events = self._close()
        index = len(self.output)
        arguments = orjson.dumps(call["function"]["arguments"]).decode()
        item = {"id": _id("fc"), "type": "function_call", "status": "completed", "call_id": call["id"],
                "name": call["function"]["name"], "arguments": arguments}  # fmt: skip
        self.output.append(item)
        ref = {"item_id": item["id"], "output_index": index}
        return events + [
            self.event("response.output_item.added", output_index=index,
                       item={**item, "status": "in_progress", "arguments": ""}),
            self.event("response.function_call_arguments.delta", **ref, delta=arguments),
            self.event("response.function_call_arguments.done", **ref, name=item["name"], arguments=arguments),
            self.event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def add(self, line: dict) -> list[tuple[str, dict]]:
        msg = line.get("message", {})
        events = []
        if msg.get("thinking"):
            events += self._delta("reasoning", msg["thinking"])
        if msg.get("content"):
            events += self._delta("message", msg["content"])
        for call in msg.get("tool_calls", []):
            events += self._call(call)
        if line.get("done"):
            events += self._close()
            # A reply cut by max_output_tokens is "incomplete", as OpenAI reports it (Codex shows why).
            status = "incomplete" if line.get("done_reason") == "length" else "completed"
            self.final = self.response(status, line)
            events.append(self.event(f"response.{status}", response=self.final))
        return events

    def failed(self, message: str) -> tuple[str, dict]:
        """A failure after the first byte: response.failed, which the SDKs and Codex surface."""
        self.open = None
        return self.event("response.failed", response=self.response("failed", error={"code": "server_error",
                                                                                       "message": message}))  # fmt: skip


async def _events(lines: AsyncIterator[dict], builder: ResponseBuilder) -> AsyncIterator[tuple[str, dict]]:
    """Nothing before the first native line: a request the native path refuses keeps its status."""
    try:
        started = False
        async for line in lines:
            if not started:
                started = True
                for event in builder.start():
                    yield event
            for event in builder.add(line):
                yield event
    finally:
        await lines.aclose()  # a client gone mid-stream cancels the generation behind it


def _previous_not_found() -> web.Response:
    """Nothing is stored here, so every previous response is one Ollama's history would not find."""
    error = {"type": "invalid_request_error", "code": "previous_response_not_found", "param": "previous_response_id",
             "message": "previous_response_id was not found or has expired; resend the full conversation"}  # fmt: skip
    return web.Response(body=orjson.dumps({"error": error}), status=404, content_type="application/json")


async def create(request: web.Request) -> web.StreamResponse:
    from .routes import read_json

    body = await read_json(request)
    if body.get("previous_response_id") is not None:
        return _previous_not_found()
    native = native_request(body)
    lines = inference.chat_responses(request.app, native)
    builder = ResponseBuilder(body)
    if not opt.stream(body.get("stream"), default=False):
        async for _ in _events(lines, builder):
            pass
        return web.Response(body=orjson.dumps(builder.final), content_type="application/json")
    return await stream_sse_events(request, _events(lines, builder), builder.failed)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
