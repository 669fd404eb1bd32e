"""Streaming splitters for generated text: <think> reasoning vs content, and <tool_call> JSON calls."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ThinkingParser", "ToolCallParser", "prompt_opens_thinking"]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag (a tag split across
    deltas): that much must be held back until the next delta decides it."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def prompt_opens_thinking(prompt: str, open_tag: str = "<think>", close_tag: str = "</think>") -> bool:
    """True when the rendered prompt ends in an unclosed reasoning block (DeepSeek-R1 and Qwen3
    templates end the generation prompt with "<think>\n"): the output then starts as reasoning,
    so the parser must be built with opened=True. Qwen3 with thinking off closes the block."""
    at = prompt.rfind(open_tag)
    return at >= 0 and prompt[at + len(open_tag) :].strip() == ""


class ThinkingParser:
    """push(delta) -> (thinking, content); flush() -> the same for what is still held back.

    Reasoning is recognised only at the start of the output (after optional whitespace), as
    DeepSeek-R1 and Qwen3 emit it. `opened=True` is for prompts that already end in "<think>\\n"
    and for forced thinking: output is reasoning from the first byte until the closing tag,
    and a redundant opening tag the model still writes is dropped. Whitespace right after
    either tag is dropped, as Ollama does, so neither field starts with the template's newlines.
    """

    def __init__(self, opened: bool = False, open_tag: str = "<think>", close_tag: str = "</think>") -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.opened = opened
        self._state = "start"  # start -> thinking -> content
        self._buf = ""
        self._strip = False  # drop whitespace until the next non-space char of the current field

    @property
    def answering(self) -> bool:
        """The reasoning block is over (or was never there): the rest is content."""
        return self._state == "content"

    def push(self, text: str) -> tuple[str, str]:
        self._buf += text
        thinking, content = [], []
        while True:
            if self._state == "start":
                head = self._buf.lstrip()
                if head.startswith(self.open_tag):
                    self._buf = head[len(self.open_tag) :]
                    self._enter("thinking")
                elif head == "" or self.open_tag.startswith(head):
                    return "".join(thinking), "".join(content)  # cannot tell yet
                elif self.opened:
                    self._enter("thinking")
                else:
                    self._state = "content"  # no reasoning block: everything is content, as is
            elif self._state == "thinking":
                if self._strip:
                    self._buf = self._buf.lstrip()
                    self._strip = self._buf == ""
                end = self._buf.find(self.close_tag)
                if end < 0:
                    keep = _partial_suffix(self._buf, self.close_tag)
                    thinking.append(self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep :]
                    return "".join(thinking), "".join(content)
                thinking.append(self._buf[:end])
                self._buf = self._buf[end + len(self.close_tag) :]
                self._enter("content")
            else:
                if self._strip:
                    self._buf = self._buf.lstrip()
                    self._strip = self._buf == ""
                content.append(self._buf)
                self._buf = ""
                return "".join(thinking), "".join(content)

    def _enter(self, state: str) -> None:
        self._state = state
        self._strip = True

    def flush(self) -> tuple[str, str]:
        """End of generation: an unterminated reasoning block stays reasoning."""
        rest, self._buf = self._buf, ""
        if self._state == "start":
            if self.opened:
                head = rest.lstrip()
                return (head[len(self.open_tag) :] if head.startswith(self.open_tag) else head).lstrip(), ""
            return "", rest
        if self._state == "thinking":
            return (rest.lstrip() if self._strip else rest), ""
        return "", (rest.lstrip() if self._strip else rest)

    @property
    def in_thinking(self) -> bool:
        return self._state == "thinking"


class ToolCallParser:
    """push(delta) -> (content, calls); flush() likewise. Takes Qwen/Hermes-style
    <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks out of the content and
    returns each as {"function": {"name": str, "arguments": dict}}, Ollama's shape. A block
    whose JSON does not parse is given back as content, so no model output is ever lost."""

    def __init__(self, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>") -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self._buf = ""
        self._inside = False

    def push(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._buf += text
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        while True:
            tag = self.close_tag if self._inside else self.open_tag
            at = self._buf.find(tag)
            if at < 0:
                if not self._inside:
                    keep = _partial_suffix(self._buf, tag)
                    content.append(self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep :]
                return "".join(content), calls
            if self._inside:
                call = _parse_call(self._buf[:at])
                if call is None:
                    content.append(self.open_tag + self._buf[: at + len(tag)])
                else:
                    calls.append(call)
            else:
                content.append(self._buf[:at])
            self._buf = self._buf[at + len(tag) :]
            self._inside = not self._inside

    def flush(self) -> tuple[str, list[dict[str, Any]]]:
        """A call cut off before its closing tag (the model stopped at EOS) still counts if its
        JSON is complete."""
        rest, self._buf = self._buf, ""
        if self._inside:
            self._inside = False
            call = _parse_call(rest)
            return ("", [call]) if call is not None else (self.open_tag + rest, [])
        return rest, []


def _parse_call(body: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"function": {"name": obj["name"], "arguments": args}}
