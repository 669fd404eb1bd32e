"""Generated token ids -> whole-character content, thinking and tool-call deltas, minus stop strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.sequence import StopMatcher
from ..interface import GenerateRequest
from .thinking import ThinkingParser, ToolCallParser
from .tokenizer import IncrementalDetokenizer


@dataclass(frozen=True)
class Delta:
    content: str = ""
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    stopped: bool = False


class TextOutput:
    """Order matters: stop strings apply to the raw text (as in llama.cpp's server), then the
    reasoning is split off, then tool calls are taken out of what remains."""

    def __init__(self, tokenizer, request: GenerateRequest):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stop = StopMatcher(request.sampling.stop)
        self.thinking = ThinkingParser(opened=request.think) if request.think else None
        self.tools = ToolCallParser() if request.parse_tools else None

    @property
    def answering(self) -> bool:
        """Past the reasoning block (or there is none): what comes now is the answer."""
        return self.thinking is None or self.thinking.answering

    def push(self, token: int) -> Delta:
        raw, stopped = self.stop.push(self.detok.push(token))
        return self._split(raw, stopped, final=stopped)

    def finish(self) -> Delta:
        raw = self.detok.flush()
        raw, _ = self.stop.push(raw)
        return self._split(raw + self.stop.flush(), False, final=True)

    def _split(self, raw: str, stopped: bool, final: bool) -> Delta:
        thinking = ""
        content = raw
        if self.thinking is not None:
            thinking, content = self.thinking.push(raw)
            if final:
                t, c = self.thinking.flush()
                thinking, content = thinking + t, content + c
        calls: tuple[dict[str, Any], ...] = ()
        if self.tools is not None:
            content, found = self.tools.push(content)
            if final:
                c, more = self.tools.flush()
                content, found = content + c, list(found) + list(more)
            calls = tuple(found)
        return Delta(content, thinking, calls, stopped)
