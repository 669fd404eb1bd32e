"""The native chat pieces that the /v1 translations (OpenAI's chat completions and Responses,
Anthropic's Messages) build and read: a function tool, and a whole reply folded from its lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


def function_tool(name: str, description: Any, parameters: Any) -> dict[str, Any]:
    """A native function tool; without a description "", without a schema an object's with no properties."""
    return {"type": "function", "function": {"name": name, "description": description or "",
                                             "parameters": parameters or {"type": "object", "properties": {}}}}  # fmt: skip


@dataclass
class Reply:
    """A non-streamed reply: every line's content, thinking, tool calls and logprobs, and the last (done) line,
    which carries done_reason and the token counts."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


async def fold_reply(lines: AsyncIterator[dict]) -> Reply:
    reply = Reply()
    async for line in lines:
        msg = line.get("message", {})
        reply.content += msg.get("content", "")
        reply.thinking += msg.get("thinking", "")
        reply.tool_calls += msg.get("tool_calls", [])
        reply.logprobs += line.get("logprobs", [])
        reply.last = line
    return reply
