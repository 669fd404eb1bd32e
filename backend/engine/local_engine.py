"""The engine: one worker thread runs every model step; the event loop only submits and awaits."""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from ..interface import (
    Chunk,
    EmbedResult,
    EngineError,
    GenerateRequest,
    LoadOptions,
    ModelInfo,
    RunningModel,
    ServerBusy,
)
from ..store import admin as store_admin
from ..store.model_store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    models_dir: str
    num_parallel: int = 4  # OLLAMA_NUM_PARALLEL: sequences decoding at once per model
    max_queue: int = 512  # OLLAMA_MAX_QUEUE: requests waiting beyond that get 503
    default_keep_alive: float = 300.0  # seconds; < 0 keeps models forever
    num_thread: int = 0  # 0: one per physical core
    prune: bool = True  # OLLAMA_NOPRUNE unset: unused blobs go at start-up and after delete/re-create


class _Ticket:
    """Links an async consumer to its sequence; either side may end it first."""

    def __init__(self):
        self.cancelled = False
        self.seq = None


class LocalEngine:
    """Implements interface.Engine. Torch is imported lazily, inside the worker thread, so the
    HTTP layer can start and answer listings before any model code is loaded."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.store = ModelStore(config.models_dir, prune=config.prune)
        self._loaded: dict[str, Any] = {}  # name -> LoadedModel; mutated by the worker only
        self._snapshot: list[RunningModel] = []
        self._templates: dict[str, Any] = {}
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._pending = 0  # requests submitted and not yet finished (OLLAMA_MAX_QUEUE)
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return self.store.list()

    def get_model(self, name: str) -> ModelInfo:
        return self.store.resolve(name)

    def render_chat(self, name, messages, *, tools=None, think=None, add_generation_prompt=True) -> str:
        info = self.store.resolve(name)
        template = self._templates.get(info.digest)
        if template is None:
            from .loaded_model import chat_template_for

            template = self._templates[info.digest] = chat_template_for(info)
        return template.render(
            messages, tools=tools, think=think, add_generation_prompt=add_generation_prompt
        )

    def running(self) -> list[RunningModel]:
        return list(self._snapshot)

    async def load(self, name: str, load: LoadOptions, keep_alive: float | None) -> int:
        info = self.store.resolve(name)
        return await self._call(lambda: self._ensure_loaded(info, load, keep_alive)[1])

    async def unload(self, name: str) -> None:
        info = self.store.resolve(name)
        await self._call(lambda: self._expire(info.name))

    def delete_model(self, name: str) -> None:
        key = self.store.entry_name(name)  # not resolve(): a damaged model must be deletable too
        done = threading.Event()
        self._submit(lambda: (self._expire(key), done.set()))
        done.wait(timeout=60)
        self.store.delete(name)

    async def embed(self, name, inputs, *, load=LoadOptions(), keep_alive=None, truncate=True) -> EmbedResult:
        info = self.store.resolve(name)
        start = time.perf_counter_ns()

        def work():
            lm, load_ns = self._ensure_loaded(info, load, keep_alive)
            vectors, count = lm.embed(list(inputs), truncate=truncate)
            self._touch(lm, keep_alive)
            return EmbedResult(vectors, count, load_ns, time.perf_counter_ns() - start)

        return await self._call(work)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        info = self.store.resolve(request.model)
        with self._pending_lock:
            if self._pending >= self.config.max_queue:
                raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
            self._pending += 1
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        ticket = _Ticket()

        def emit(item) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        self._submit(lambda: self._start(info, request, emit, ticket))
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            # Reached on normal end, on error, and when the consumer goes away (aclose after a
            # client disconnect): the worker drops the sequence at its next step.
            ticket.cancelled = True
            if ticket.seq is not None:
                ticket.seq.cancelled = True
            with self._pending_lock:
                self._pending -= 1
            self._wake.set()

    # ---- model management: plain file work, run by the caller in a thread ----------------

    def has_blob(self, digest: str) -> bool:
        return store_admin.has_blob(self.store, digest)

    def blob_writer(self, digest: str) -> store_admin.BlobWriter:
        return store_admin.BlobWriter(self.store, digest)

    def create_model(self, name: str, **spec: Any) -> None:
        store_admin.create(self.store, name, **spec)

    def copy_model(self, source: str, destination: str) -> None:
        store_admin.copy(self.store, source, destination)

    def pull_model(self, name: str, progress: Callable[[dict], None]) -> None:
        store_admin.pull(self.store, name, progress)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)

    def _submit(self, fn: Callable[[], None]) -> None:
        self._commands.put(fn)
        self._wake.set()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def run():
            try:
                result = fn()
            except BaseException as e:  # delivered to the awaiting handler
                loop.call_soon_threadsafe(_settle, fut, None, e)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

        self._submit(run)
        return await fut

    # ---- worker side -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._run_commands()
            busy = False
            for lm in list(self._loaded.values()):
                try:
                    busy |= lm.step()
                except Exception as e:  # a broken model fails its requests, not the engine
                    log.exception("step failed for %s", lm.info.name)
                    lm.fail_all(EngineError(f"model runner failed: {e}"))
                if lm.became_idle:
                    # keep_alive counts from the end of the last request, as in Ollama.
                    lm.became_idle = False
                    if not lm.unload_requested:
                        self._touch(lm, None)
            self._expire_idle()
            self._publish()
            if not busy:
                self._wake.wait(timeout=self._next_expiry())
                self._wake.clear()
        for lm in list(self._loaded.values()):
            lm.fail_all(EngineError("server shutting down"))

    def _run_commands(self) -> None:
        while True:
            try:
                fn = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("engine command failed")

    def _start(self, info: ModelInfo, request: GenerateRequest, emit, ticket: _Ticket) -> None:
        if ticket.cancelled:
            return
        try:
            lm, load_ns = self._ensure_loaded(info, request.load, request.keep_alive)
            ticket.seq = lm.submit(request, emit, load_ns)
        except EngineError as e:
            emit(e)
        except Exception as e:
            log.exception("could not start a request on %s", info.name)
            emit(EngineError(f"{type(e).__name__}: {e}"))

    def _ensure_loaded(self, info: ModelInfo, load: LoadOptions, keep_alive: float | None):
        lm = self._loaded.get(info.name)
        if lm is not None and (lm.info.digest != info.digest or (lm.load != load and lm.idle)):
            self._expire(info.name)  # the file changed, or load-time options did: reload
            lm = None
        if lm is not None:
            self._touch(lm, keep_alive)
            return lm, 0
        from .loaded_model import LoadedModel

        start = time.perf_counter_ns()
        lm = LoadedModel(info, load, self.config)
        self._loaded[info.name] = lm
        self._touch(lm, keep_alive)
        self._publish()
        return lm, time.perf_counter_ns() - start

    def _touch(self, lm, keep_alive: float | None) -> None:
        if keep_alive is not None:
            lm.keep_alive = keep_alive
        ka = lm.keep_alive
        ka = self.config.default_keep_alive if ka is None else ka
        lm.expires_at = math.inf if ka < 0 else time.time() + ka

    def _expire(self, name: str) -> None:
        lm = self._loaded.get(name)
        if lm is None:
            return
        if lm.idle:
            del self._loaded[name]
            lm.close()
        else:
            lm.unload_requested = True  # unload as soon as its running requests finish
            lm.expires_at = 0.0
        self._publish()

    def _expire_idle(self) -> None:
        now = time.time()
        for name, lm in list(self._loaded.items()):
            if lm.idle and lm.expires_at <= now:
                del self._loaded[name]
                lm.close()

    def _next_expiry(self) -> float | None:
        times = [lm.expires_at for lm in self._loaded.values() if lm.expires_at != math.inf]
        return max(0.01, min(times) - time.time()) if times else None

    def _publish(self) -> None:
        models = [lm.running_model() for lm in self._loaded.values()]
        self._snapshot = sorted(models, key=lambda m: m.expires_at, reverse=True)


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def create_engine(
    models_dir: str,
    *,
    num_parallel: int = 4,
    max_queue: int = 512,
    default_keep_alive: float = 300.0,
    num_thread: int = 0,
    prune: bool = True,
) -> LocalEngine:
    config = EngineConfig(models_dir, num_parallel, max_queue, default_keep_alive, num_thread, prune=prune)
    return LocalEngine(config)

