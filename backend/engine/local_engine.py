"""The engine: one worker thread runs every model step; the event loop only submits and awaits."""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

from ..gguf_model import GGUFError
from ..interface import (
    Chunk,
    EmbedResult,
    EngineError,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    ModelInfo,
    RunningModel,
    ServerBusy,
)
from ..store import admin as store_admin
from ..store.model_store import ModelStore
from ..text.chat_template import ChatTemplateError, SecurityError, TemplateLimitError, TemplateSyntaxError
from ..text.renderer import ChatTemplateRenderer
from .model_text import ModelText, context_size

log = logging.getLogger(__name__)

# Go's time.Duration holds 2^63-1 ns (about 292 years): a keep_alive past it (1e10 s, "2600000h",
# inf) means forever, as a negative one does.
MAX_KEEP_ALIVE = (2**63 - 1) / 1e9
# threading's waits refuse timeouts past PY_TIMEOUT_MAX; the loop re-reads expiries when it wakes.
MAX_IDLE_WAIT = 3600.0


def expiry(keep_alive: float, now: float) -> float:
    """When a model idle since `now` unloads: inf for a negative, infinite or over-long keep_alive."""
    if keep_alive < 0 or not keep_alive < MAX_KEEP_ALIVE:
        return math.inf
    return now + keep_alive


@dataclass(frozen=True)
class EngineConfig:
    models_dir: str
    num_parallel: int = 4  # OLLAMA_NUM_PARALLEL: sequences decoding at once per model
    max_queue: int = 512  # OLLAMA_MAX_QUEUE: requests waiting beyond that get 503
    default_keep_alive: float = 300.0  # seconds; < 0 keeps models forever
    num_thread: int = 0  # 0: one per physical core
    accelerator: str | None = None  # MOE_ACCELERATOR's modes (backend.hybrid.accelerator); None: the env's
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
        self._texts: OrderedDict[str, ModelText] = OrderedDict()  # by digest, the latest few
        self._texts_lock = threading.Lock()
        self._texts_building: dict[str, threading.Lock] = {}  # digest -> held while it is read
        self._renderer = ChatTemplateRenderer()
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
        """Called from a worker thread (file work on a model's first render); the template itself
        runs in a render process, under a deadline and a memory cap."""
        info = self.store.resolve(name)
        template = self._model_text(info).template
        try:
            return self._renderer.render(
                template, messages, tools=tools, think=think, add_generation_prompt=add_generation_prompt
            )
        except (TemplateLimitError, TemplateSyntaxError) as e:  # the template's fault
            raise EngineError(f"{e} (model '{info.name}')") from None
        except SecurityError as e:
            raise EngineError(f"chat template refused: {e} (model '{info.name}')") from None
        except ChatTemplateError as e:  # raise_exception: the template rejected these messages
            raise InvalidRequest(f"{e} (model '{info.name}')") from None

    def renders_inline(self, name: str) -> bool:
        return False  # a render process, and a first render reads the GGUF

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

        def tokenize() -> list[list[int]]:
            text, num_ctx = self._model_text(info), context_size(load.num_ctx, info.context_length, warn=False)
            return [text.input_tokens(s, num_ctx, truncate) for s in inputs]

        token_lists = await asyncio.to_thread(tokenize)  # never on the engine thread

        def work():
            lm, load_ns = self._ensure_loaded(info, load, keep_alive)
            vectors, count = lm.embed(token_lists, truncate=truncate)
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

        try:
            # Tokenized in a thread with the GIL released, and only as much of the prompt as
            # num_ctx can hold: a 10 MB prompt on the engine thread made every stream wait 36 s.
            tokens = await asyncio.to_thread(self._prompt_tokens, info, request)
            self._submit(lambda: self._start(info, request, tokens, emit, ticket))
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
        self._renderer.close()

    def _model_text(self, info: ModelInfo) -> ModelText:
        """The model's tokenizer and template, read once per file and off the engine thread
        (a 262k-token vocabulary takes seconds). One lock per model: reading one model's
        vocabulary never holds up another's requests, nor the engine thread."""
        with self._texts_lock:
            text = self._texts.get(info.digest)
            if text is not None:
                self._texts.move_to_end(info.digest)
                return text
            building = self._texts_building.setdefault(info.digest, threading.Lock())
        with building:
            with self._texts_lock:
                text = self._texts.get(info.digest)
            if text is None:
                try:
                    text = ModelText.load(info)
                except (OSError, ValueError, GGUFError) as e:
                    raise EngineError(f"model '{info.name}' cannot be read: {e}") from None
                with self._texts_lock:
                    self._texts[info.digest] = text
                    self._texts_building.pop(info.digest, None)
                    while len(self._texts) > 8:
                        self._texts.popitem(last=False)
            return text

    def _prompt_tokens(self, info: ModelInfo, request: GenerateRequest) -> list[int]:
        num_ctx = context_size(request.load.num_ctx, info.context_length, warn=False)  # the load warns
        return self._model_text(info).prompt_tokens(request, num_ctx)

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
        # Nothing may end this thread but close(): every chat, generate and /api/ps waits on it.
        while not self._stopping:
            busy = False
            try:
                self._run_commands()
                busy = self._step_models()
                self._expire_idle()
                self._publish()
            except Exception:
                log.exception("engine loop failed; it goes on with the next iteration")
            if not busy:
                try:
                    self._wake.wait(timeout=self._next_expiry())
                except Exception:
                    log.exception("engine loop could not wait; retrying in 1 s")
                    time.sleep(1.0)
                self._wake.clear()
        for lm in list(self._loaded.values()):
            lm.fail_all(EngineError("server shutting down"))

    def _step_models(self) -> bool:
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
        return busy

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

    def _start(self, info: ModelInfo, request: GenerateRequest, tokens: list[int], emit, ticket: _Ticket) -> None:
        if ticket.cancelled:
            return
        try:
            lm, load_ns = self._ensure_loaded(info, request.load, request.keep_alive)
            ticket.seq = lm.submit(request, tokens, emit, load_ns)
        except EngineError as e:
            emit(e)
        except Exception as e:
            log.exception("could not start a request on %s", info.name)
            emit(EngineError(f"{type(e).__name__}: {e}"))

    def _ensure_loaded(self, info: ModelInfo, load: LoadOptions, keep_alive: float | None):
        from .loaded_model import LoadedModel, usable_cpus

        # A thread count past the CPUs is the same load as the CPUs themselves, and one below 1
        # the default: neither reloads the model.
        load = replace(load, num_thread=min(max(0, load.num_thread), usable_cpus()))
        lm = self._loaded.get(info.name)
        if lm is not None and (lm.info.digest != info.digest or (lm.load != load and lm.idle)):
            self._expire(info.name)  # the file changed, or load-time options did: reload
            lm = None
        if lm is not None:
            self._touch(lm, keep_alive)
            return lm, 0
        start = time.perf_counter_ns()
        lm = LoadedModel(info, load, self.config, self._model_text(info))
        self._loaded[info.name] = lm
        self._touch(lm, keep_alive)
        self._publish()
        took = time.perf_counter_ns() - start
        log.info("model loaded: %s in %.2f s, %s, num_ctx %d, %d parallel, %s", info.name, took / 1e9,
                 _memory(lm), lm.num_ctx, self.config.num_parallel, info.paths[0])  # fmt: skip
        return lm, took

    def _touch(self, lm, keep_alive: float | None) -> None:
        if keep_alive is not None:
            lm.keep_alive = keep_alive
        ka = lm.keep_alive
        if ka is None or math.isnan(ka):
            ka = self.config.default_keep_alive
        lm.expires_at = expiry(ka, time.time())

    def _expire(self, name: str) -> None:
        lm = self._loaded.get(name)
        if lm is None:
            return
        if lm.idle:
            del self._loaded[name]
            self._close(name, lm, "unload requested")
        else:
            lm.unload_requested = True  # unload as soon as its running requests finish
            lm.expires_at = 0.0
        self._publish()

    def _expire_idle(self) -> None:
        now = time.time()
        for name, lm in list(self._loaded.items()):
            if lm.idle and lm.expires_at <= now:
                del self._loaded[name]
                try:
                    self._close(name, lm, "keep_alive expired" if lm.expires_at else "unload requested")
                except Exception:
                    log.exception("closing %s failed", name)

    def _close(self, name: str, lm, why: str) -> None:
        held, start = _memory(lm), time.perf_counter()
        lm.close()
        log.info("model unloaded: %s (%s) in %.2f s, %s freed", name, why, time.perf_counter() - start, held)

    def _next_expiry(self) -> float:
        times = [lm.expires_at for lm in self._loaded.values() if lm.expires_at != math.inf]
        wait = min(times) - time.time() if times else MAX_IDLE_WAIT
        return min(MAX_IDLE_WAIT, max(0.01, wait))

    def _publish(self) -> None:
        # Reporting never fails the work it reports on: a load or an unload whose snapshot broke.
        try:
            models = [lm.running_model() for lm in self._loaded.values()]
            self._snapshot = sorted(models, key=lambda m: m.expires_at, reverse=True)
        except Exception:
            log.exception("could not list the running models; /api/ps keeps the last list")


def _memory(lm) -> str:
    """A loaded model's memory for the log (never fails the load or unload it reports on)."""
    try:
        m = lm.running_model()
    except Exception:
        return "size unknown"
    return f"size {m.size / 2**20:.1f} MiB ({m.size_vram / 2**20:.1f} MiB on the accelerator)"


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
    accelerator: str | None = None,
    prune: bool = True,
) -> LocalEngine:
    config = EngineConfig(models_dir, num_parallel, max_queue, default_keep_alive, num_thread, accelerator, prune)
    return LocalEngine(config)

