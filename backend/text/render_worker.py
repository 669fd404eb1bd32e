"""The chat-template process: renders one request at a time under a deadline, a memory and an output cap."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import sys
from typing import Any, BinaryIO

from .chat_template import (
    ChatTemplate,
    ChatTemplateError,
    SecurityError,
    TemplateLimitError,
    TemplateSyntaxError,
)

HEADER = struct.Struct("<Q")  # the length of the JSON frame that follows
RESTART = frozenset({"time", "memory", "depth", "crash"})  # limits after which the process exits
_PAGE = os.sysconf("SC_PAGE_SIZE")


class RenderLimit(Exception):
    """The template ran past one of its limits; `kind` says which (time, memory, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def write_frame(out: BinaryIO, message: dict[str, Any]) -> None:
    data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
    out.write(HEADER.pack(len(data)) + data)
    out.flush()


def read_frame(inp: BinaryIO) -> dict[str, Any] | None:
    header = inp.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the server closed the pipe: exit
    (size,) = HEADER.unpack(header)
    data = inp.read(size)
    if len(data) < size:
        return None
    return json.loads(data.decode("utf-8", "surrogatepass"))


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * _PAGE


def _on_alarm(signum, frame) -> None:
    raise RenderLimit("time", "ran past its time limit")


class Renderer:
    """Compiled templates by source (a server renders a few), each render under the request's limits."""

    def __init__(self):
        self._templates: dict[tuple[str, str, str], ChatTemplate] = {}
        signal.signal(signal.SIGALRM, _on_alarm)

    def template(self, source: str, bos: str, eos: str) -> ChatTemplate:
        key = (source, bos, eos)
        if key not in self._templates:
            if len(self._templates) >= 16:
                self._templates.pop(next(iter(self._templates)))
            self._templates[key] = ChatTemplate(source, bos_token=bos, eos_token=eos)
        return self._templates[key]

    def render(self, req: dict[str, Any]) -> dict[str, Any]:
        # The address space the render may add: a template that builds 'a'*4000000000 or a
        # million-fold loop output gets MemoryError here instead of swapping the machine.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)  # a container may set one; stay under it
        soft = _address_space() + req["memory"]
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        signal.setitimer(signal.ITIMER_REAL, req["timeout"])
        try:
            template = self.template(req["source"], req["bos"], req["eos"])
            text = template.render(req["messages"], tools=req["tools"], think=req["think"],
                                   add_generation_prompt=req["add_generation_prompt"],
                                   max_chars=req["max_chars"])  # fmt: skip
            return {"text": text}
        except RenderLimit as e:
            return {"limit": e.kind, "error": str(e)}
        except MemoryError:
            return {"limit": "memory", "error": "ran out of its memory"}
        except RecursionError:
            return {"limit": "depth", "error": "recursed too deep"}
        except TemplateLimitError as e:  # refused before it was built: this process is fine
            return {"limit": "size", "error": str(e)}
        except SecurityError as e:
            return {"security": True, "error": str(e)}
        except TemplateSyntaxError as e:
            return {"syntax": True, "error": str(e)}
        except ChatTemplateError as e:
            return {"error": str(e)}
        except Exception as e:  # anything else: answered, and this process is replaced
            return {"limit": "crash", "error": f"failed: {type(e).__name__}: {e}"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    os.nice(10)  # a runaway template yields the CPU to the engine's kernels
    renderer = Renderer()
    write_frame(out, {"ready": True})
    while (req := read_frame(inp)) is not None:
        try:
            reply = renderer.render(req)
        except RenderLimit as e:  # the alarm rang on the way out of render()
            reply = {"limit": e.kind, "error": str(e)}
        write_frame(out, reply)
        if reply.get("limit") in RESTART:
            return  # the server starts a fresh process: nothing of this one is trusted further


if __name__ == "__main__":
    main()
