"""Native requests -> OpenAI request bodies, and OpenAI stream events -> Chunks."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from backend.interface import (
    EngineError,
    GenerateRequest,
    InvalidRequest,
    SamplingParams,
    TokenLogprob,
)

# The "rendered prompt" of an upstream model: what its chat template is to a local one, the
# OpenAI messages it will be sent. A marker no text prompt carries tells it from a raw
# /api/generate prompt, which goes to /v1/completions as it is.
CHAT_MARK = "\x00openai-chat\x00"


def render_chat(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                think: bool | str | None) -> str:  # fmt: skip
    return CHAT_MARK + orjson.dumps({"messages": openai_messages(messages), "tools": list(tools or []),
                                     "think": think}).decode()  # fmt: skip


def chat_of(prompt: str) -> dict[str, Any] | None:
    return orjson.loads(prompt[len(CHAT_MARK):]) if prompt.startswith(CHAT_MARK) else None


def _image_part(image: str) -> dict[str, Any]:
    """Ollama sends bare base64; OpenAI wants a data URI with the type, read from the magic."""
    try:
        head = base64.b64decode(image[:16] + "=" * (-len(image[:16]) % 4))
    except (binascii.Error, ValueError):
        head = b""
    mime = ("image/png" if head.startswith(b"\x89PNG") else "image/gif" if head.startswith(b"GIF8")
            else "image/webp" if head[8:12] == b"WEBP" else "image/jpeg")  # fmt: skip
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def openai_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: images as content parts, tool-call arguments as JSON
    strings with ids, and each tool result linked to the call it answers (by name, in order)."""
    out, unanswered, count = [], [], 0
    for m in messages:
        message: dict[str, Any] = {"role": m["role"], "content": m.get("content", "")}
        if m.get("images"):
            text = [{"type": "text", "text": message["content"]}] if message["content"] else []
            message["content"] = text + [_image_part(i) for i in m["images"]]
        if m.get("thinking"):
            message["reasoning_content"] = m["thinking"]
        calls = []
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            ident = call.get("id") or f"call_{count}"
            count += 1
            calls.append({"id": ident, "type": "function", "function": {
                "name": fn.get("name", ""), "arguments": orjson.dumps(fn.get("arguments") or {}).decode()}})
            unanswered.append((ident, fn.get("name", "")))
        if calls:
            message["tool_calls"] = calls
        if m["role"] == "tool":
            name = m.get("tool_name") or m.get("name") or ""
            match = next((c for c in unanswered if c[1] == name), unanswered[0] if unanswered else None)
            if match:
                unanswered.remove(match)
                message["tool_call_id"] = match[0]
        out.append(message)
    return out


def sampling_fields(s: SamplingParams) -> dict[str, Any]:
    """Ollama's options as the fields vLLM, SGLang and llama.cpp's server read. top_k and min_p
    are their extensions to OpenAI's request; the repeat penalty is repetition_penalty to vLLM and
    SGLang, repeat_penalty to llama.cpp (each ignores the other's name). Ollama's defaults are
    sent as values, so the upstream samples as Ollama would."""
    if s.typical_p != 1.0:
        raise InvalidRequest("typical_p is not supported by an OpenAI-compatible upstream")
    body: dict[str, Any] = {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repeat_penalty, "repeat_penalty": s.repeat_penalty,
    }  # fmt: skip
    if s.seed is not None and s.seed >= 0:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if s.num_predict > 0:
        body["max_tokens"] = s.num_predict
    if s.logprobs:
        body["logprobs"] = True
        if s.top_logprobs:
            body["top_logprobs"] = s.top_logprobs
    return body


def response_format(fmt: str | dict | None) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}


def _think_fields(think: bool | str | None) -> dict[str, Any]:
    """Ollama's think -> what the servers read: chat_template_kwargs for templates that switch
    thinking (Qwen3's enable_thinking, DeepSeek-V3.1's thinking) and reasoning_effort for a level."""
    if think is None:
        return {}
    on = think is not False
    body: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": on, "thinking": on}}
    if isinstance(think, str):
        body["reasoning_effort"] = "high" if think == "max" else think
    return body


def request_body(model_id: str, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body) for a generation; always streamed, usage included."""
    if request.context:
        raise InvalidRequest("context is not supported by a model served by an upstream; send the messages instead")
    body: dict[str, Any] = {"model": model_id, "stream": True, "stream_options": {"include_usage": True},
                            **sampling_fields(request.sampling)}  # fmt: skip
    fmt = response_format(request.format)
    if fmt:
        body["response_format"] = fmt
    chat = None if request.suffix else chat_of(request.prompt)
    if chat is None and request.images:
        raise InvalidRequest("images need a chat: a raw or fill-in-the-middle prompt to an upstream cannot carry them")
    if chat is None:
        # The prompt goes as it is: raw (vLLM, SGLang and llama.cpp never template
        # /v1/completions; Ollama does, and ollama-compat unless "raw"), or, with a suffix, for
        # the upstream's template to place around the hole.
        if "logprobs" in body:  # the legacy API's logprobs is the count of alternatives
            body["logprobs"] = body.pop("top_logprobs", 0)
        hole = {"suffix": request.suffix} if request.suffix else {"raw": True}
        return "/completions", {**body, "prompt": request.prompt, **hole}
    body["messages"] = _with_images(chat["messages"], request.images)
    if chat["tools"]:
        body["tools"] = chat["tools"]
    return "/chat/completions", {**body, **_think_fields(chat["think"])}


def _with_images(messages: list[dict[str, Any]], images: Sequence[bytes]) -> list[dict[str, Any]]:
    """/api/generate's images, which no message carries (/api/chat's are in theirs), as parts of
    the last user message: the prompt they came with."""
    if not images or any(isinstance(m.get("content"), list) for m in messages):
        return messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return messages
    text = messages[last]["content"]
    parts = ([{"type": "text", "text": text}] if text else []) + [_image_part(base64.b64encode(i).decode()) for i in images]
    return [*messages[:last], {**messages[last], "content": parts}, *messages[last + 1:]]


def _logprobs(choice: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    """A choice's logprobs: chat's {"content": [...]}, or /v1/completions' legacy parallel lists."""
    given = choice.get("logprobs") or {}
    if "tokens" in given and "content" not in given:
        given = {"content": _legacy_entries(given)}
    content = given.get("content") or []

    def one(item: dict[str, Any], top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        token = item.get("token", "")
        raw = item.get("bytes")
        return TokenLogprob(token, float(item.get("logprob", 0.0)), tuple(raw if raw is not None else token.encode()), top)

    return tuple(one(c, tuple(one(t) for t in c.get("top_logprobs") or [])) for c in content)


def whole_as_event(body: Any) -> dict[str, Any]:
    """A completion that came whole (`message` where a stream has `delta`) as the one stream
    event that says the same."""
    if not isinstance(body, dict):
        raise EngineError("upstream answered JSON that is not a completion")
    choices = [{**c, "delta": c["message"]} if isinstance(c, dict) and isinstance(c.get("message"), dict) else c
               for c in body.get("choices") or []]  # fmt: skip
    return {**body, "choices": choices}


def _legacy_entries(given: dict[str, Any]) -> list[dict[str, Any]]:
    """Completions' logprobs (tokens, token_logprobs, top_logprobs as {token: logprob}) as chat's
    entries; the legacy format carries no bytes, so they are the token's UTF-8."""
    tops = given.get("top_logprobs") or []
    return [{"token": token, "logprob": logprob if logprob is not None else 0.0,
             "top_logprobs": [{"token": t, "logprob": lp} for t, lp in (tops[i] or {}).items()] if i < len(tops) else []}
            for i, (token, logprob) in enumerate(zip(given.get("tokens") or [], given.get("token_logprobs") or []))]  # fmt: skip


@dataclass
class StreamState:
    """What a stream has said so far: tool calls arrive in fragments (name first, then pieces
    of the arguments' JSON) and are whole only at the end."""

    think: bool
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    pieces: int = 0  # deltas with text: the token count when the upstream sends no usage

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """One parsed event -> the fields of a Chunk ({} when it carries nothing to show)."""
        if event.get("error"):
            raise _stream_error(event["error"])
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        out: dict[str, Any] = {}
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            if delta is None:  # /v1/completions
                delta = {"content": choice.get("text")}
            content = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if content:
                out["content"] = out.get("content", "") + content
            if reasoning and self.think:
                out["thinking"] = out.get("thinking", "") + reasoning
            if content or reasoning:
                self.pieces += 1
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(call.get("index", len(self.calls))), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                arguments = fn.get("arguments") or ""
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            logprobs = _logprobs(choice)
            if logprobs:
                out["logprobs"] = logprobs
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def tool_calls(self) -> tuple[dict[str, Any], ...]:
        out = []
        for _, call in sorted(self.calls.items()):
            text = call["arguments"].strip()
            try:
                arguments = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                raise EngineError(f"upstream sent tool call arguments that are not JSON: {text[:80]}") from None
            if not isinstance(arguments, dict):
                raise EngineError(f"upstream sent tool call arguments that are not an object: {text[:80]}")
            out.append({"function": {"name": call["name"], "arguments": arguments}})
        return tuple(out)

    def done_reason(self) -> str:
        return "length" if self.finish == "length" else "stop"


def _stream_error(error: Any) -> EngineError:
    """An error event (vLLM and SGLang send {"error": {"message", "code"}} when a request fails
    after its 200): its message, and its status when it blames the request."""
    message = error.get("message") if isinstance(error, dict) else error
    out = EngineError(f"upstream error: {message}")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and 400 <= code < 500:
        out.status = code
    return out
