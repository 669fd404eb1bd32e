"""Chat templates rendered in worker processes, so a runaway template is stopped and nobody else waits."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .chat_template import (
    ChatTemplateError,
    SecurityError,
    TemplateLimitError,
    TemplateSource,
    TemplateSyntaxError,
    _plain,
)
from .render_worker import HEADER, RESTART

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]  # where `backend` is importable from
_START_TIMEOUT = 60.0  # a fresh interpreter importing jinja2 on a busy machine
_GRACE = 2.0  # after its own alarm, how long a worker may take to answer before it is killed


class _Lost(Exception):
    """The worker did not answer in time, or exited."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class _Worker:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.text.render_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0, close_fds=True,
        )  # fmt: skip
        self._poll = select.poll()
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN)
        try:
            ready = self._frame(time.monotonic() + _START_TIMEOUT, 1 << 10)
            if ready.get("ready") is not True:
                raise _Lost(f"unexpected greeting {ready!r}")
        except (_Lost, ValueError):
            self.kill()
            raise

    def exchange(self, data: bytes, deadline: float, max_reply: int) -> dict[str, Any]:
        try:
            self.proc.stdin.write(HEADER.pack(len(data)))
            self.proc.stdin.write(data)
        except OSError as e:
            raise _Lost(f"exited ({e})") from None
        return self._frame(deadline, max_reply)

    def _frame(self, deadline: float, max_size: int) -> dict[str, Any]:
        (size,) = HEADER.unpack(self._read(HEADER.size, deadline))
        if size > max_size:
            raise _Lost(f"answered {size} bytes")
        return json.loads(self._read(size, deadline).decode("utf-8", "surrogatepass"))

    def _read(self, n: int, deadline: float) -> bytes:
        buf, fd = bytearray(), self.proc.stdout.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise _Lost("timed out", timed_out=True)
            chunk = os.read(fd, min(n - len(buf), 1 << 22))
            if not chunk:
                raise _Lost(f"exited with status {self.proc.wait()}")
            buf += chunk
        return bytes(buf)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class ChatTemplateRenderer:
    """render() as ChatTemplate.render, in one of up to `max_workers` processes (spawned when
    needed, kept while idle). Each render gets `timeout` seconds plus one per 8 MB of input,
    `memory` bytes plus eight times its input, and an output of 16 Mi characters plus twice its
    input; past any of them it raises TemplateLimitError, and a worker past its time or memory
    is replaced. Normal renders take well under 0.1 s (0.23 s for a 100 MB message)."""

    def __init__(self, *, timeout: float = 2.0, memory: int = 512 * 2**20, max_workers: int = 4):
        self.timeout, self.memory = timeout, memory
        self._slots = threading.BoundedSemaphore(max_workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def render(self, template: TemplateSource, messages: Sequence[Any], *, tools: Sequence[Any] | None = None,
               think: bool | str | None = None, add_generation_prompt: bool = True) -> str:  # fmt: skip
        request = {
            "source": template.source, "bos": template.bos_token, "eos": template.eos_token,
            "messages": [_plain(m) for m in messages], "tools": _plain(list(tools)) if tools else None,
            "think": think, "add_generation_prompt": add_generation_prompt,
        }  # fmt: skip
        data = json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass")
        # The worker runs niced: on a machine busy decoding, a big render may take several times its CPU time.
        timeout, memory, max_chars = self.timeout + len(data) / 2**23, self.memory + 8 * len(data), 16 * 2**20 + 2 * len(data)
        data = data[:-1] + b', "timeout": %r, "memory": %d, "max_chars": %d}' % (timeout, memory, max_chars)
        reply = self._call(data, timeout, max_reply=4 * max_chars + 2**16)
        if "text" in reply:
            return reply["text"]
        error = reply.get("error", "failed")
        if reply.get("limit") == "time":
            raise TemplateLimitError(f"chat template ran past its time limit ({timeout:.3g} s)")
        if reply.get("limit") == "memory":
            raise TemplateLimitError(f"chat template ran out of its memory ({memory / 2**20:.0f} MiB)")
        if reply.get("limit"):
            raise TemplateLimitError(error if error.startswith("chat template") else f"chat template {error}")
        if reply.get("security"):
            raise SecurityError(error)
        if reply.get("syntax"):
            raise TemplateSyntaxError(error)
        raise ChatTemplateError(error if error.startswith("chat template") else f"chat template rejected the messages: {error}")

    def _call(self, data: bytes, timeout: float, max_reply: int) -> dict[str, Any]:
        with self._slots:
            while True:
                worker, fresh = self._take()
                # The worker's own alarm starts after it has read and parsed the request (32 MB/s).
                deadline = time.monotonic() + timeout + _GRACE + len(data) / 2**25
                try:
                    reply = worker.exchange(data, deadline, max_reply)
                except _Lost as e:
                    log.warning("chat template worker %d stopped: %s", worker.proc.pid, e)
                    worker.kill()
                    if e.timed_out:
                        return {"limit": "time", "error": str(e)}
                    if not fresh:
                        continue  # it died while idle (the OOM killer, a signal): once more, anew
                    return {"limit": "crash", "error": f"chat template process stopped: {e}"}
                if reply.get("limit") in RESTART:
                    worker.kill()  # it exits by itself after such a limit; reap it
                else:
                    self._give(worker)
                return reply

    def _take(self) -> tuple[_Worker, bool]:
        """An idle worker, or a new one (True)."""
        with self._lock:
            if self._closed:
                raise ChatTemplateError("chat template renderer is closed")
            while self._idle:
                worker = self._idle.pop()
                if worker.proc.poll() is None:
                    return worker, False
                worker.kill()
        try:
            return _Worker(), True
        except (OSError, _Lost) as e:
            raise ChatTemplateError(f"chat template process could not start: {e}") from None

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
