"""UpstreamEngine: the engine interface over OpenAI-compatible servers, so every endpoint that
runs on a local model runs on a remote one unchanged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import orjson

from backend.interface import (
    Chunk,
    EmbedResult,
    EngineError,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    Metrics,
    ModelInfo,
    ModelNotFound,
    RunningModel,
    ServerBusy,
)

from . import translate
from .config import UpstreamModel, UpstreamsConfig, canonical
from .describe import model_info
from .replicas import ReplicaPool, ReplicaState, auth_headers, describe

log = logging.getLogger(__name__)

_UNLISTED: dict[str, Any] = {}  # the entry of a model no replica has listed yet (never written to)
_KEEPALIVE_S = 4.0  # idle upstream connections kept this long (uvicorn closes them after 5 s)
_DRAIN_S = 0.5  # how long the end of a body may lag its [DONE]
_MAX_EVENT = 64 << 20  # bytes in one server-sent event line: past this an upstream is broken
_DONE = object()  # the stream's "data: [DONE]"


class UpstreamUnavailable(EngineError):
    """No replica of the model answered."""

    status = 503


class _Retry(Exception):
    """This replica failed before answering anything: the next one may take the request."""

    def __init__(self, reason: str, down: bool):
        super().__init__(reason)
        self.reason, self.down = reason, down


class UpstreamEngine:
    """The models of an upstreams file. One HTTP session, opened on the event loop at first use;
    `start` also begins the health checks, `aclose` ends both."""

    def __init__(self, config: UpstreamsConfig, max_queue: int = 512):
        self.config = config
        self.models = {m.name: m for m in config.models}
        self.pool = ReplicaPool(list(dict.fromkeys(r for m in config.models for r in m.replicas)))
        self.max_queue = max_queue
        self.pending = 0
        self._session: aiohttp.ClientSession | None = None
        self._infos: dict[str, tuple[dict[str, Any], ModelInfo]] = {}  # by name, with the entry it was made of
        self._watcher: asyncio.Task | None = None

    # ---- lifetime ----

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                            sock_read=self.config.read_timeout)  # fmt: skip
            # limit=0: the number of streams open at once is OLLAMA_MAX_QUEUE's to bound, not the pool's.
            # Idle connections are kept for the next request (a new one costs the first token a TCP
            # setup on both sides), but under uvicorn's 5 s keep-alive (vLLM, SGLang, llama_cpp.server),
            # so the server rarely closes one just as it is reused.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S)
            # No cookie jar: one session carries every user's requests, so a cookie one answer set
            # would ride along with everyone's next (a load balancer's sticky cookie would pin the
            # whole front to one of its targets).
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                  cookie_jar=aiohttp.DummyCookieJar())  # fmt: skip
        return self._session

    async def start(self) -> None:
        if self._watcher is None:
            timeout = self.config.connect_timeout + 5
            await self.pool.check_all(self.session(), timeout)  # /api/show and /api/ps right from the start
            self._watcher = asyncio.create_task(self.pool.watch(self.session(), self.config.health_interval, timeout))

    async def lifetime(self, _app: object) -> AsyncIterator[None]:
        """For an aiohttp cleanup_ctx: health checks while the server runs."""
        await self.start()
        yield
        await self.aclose()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._session is not None:
            await self._session.close()

    # ---- models ----

    def has(self, name: str) -> bool:
        return canonical(name) in self.models

    def _model(self, name: str) -> UpstreamModel:
        model = self.models.get(canonical(name))
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        return model

    def _served(self, model: UpstreamModel) -> dict[str, Any]:
        """The model's /v1/models entry from the first replica that listed it."""
        for replica in model.replicas:
            served = self.pool.states[replica].models
            entry = served.get(model.model) or served.get(f"{model.model}:latest")  # Ollama lists "x:latest"
            if entry:
                return entry
        return _UNLISTED

    def list_models(self) -> list[ModelInfo]:
        return [self.get_model(name) for name in self.models]

    def get_model(self, name: str) -> ModelInfo:
        """Made again only when a health check brought a new /v1/models entry: every request asks."""
        model = self._model(name)
        served = self._served(model)
        made = self._infos.get(model.name)
        if made is None or made[0] is not served:
            made = self._infos[model.name] = (served, model_info(model, served, self.config.modified_at))
        return made[1]

    def running(self) -> list[RunningModel]:
        """Remote models are always loaded while a replica answers; their memory is not ours."""
        out = []
        for model in self.models.values():
            if any(self.pool.states[r].healthy for r in model.replicas):
                info = self.get_model(model.name)
                out.append(RunningModel(info, 0, 0, float("inf"), info.context_length))
        return out

    def render_chat(self, name: str, messages: Sequence[dict[str, Any]], *, tools=None, think=None,
                    add_generation_prompt: bool = True) -> str:  # fmt: skip
        self._model(name)
        return translate.render_chat(messages, tools, think)

    def renders_inline(self, name: str) -> bool:
        return self.has(name)

    async def load(self, name: str, load: LoadOptions, keep_alive: float | None) -> int:
        self._model(name)
        return 0

    async def unload(self, name: str) -> None:
        self._model(name)

    def delete_model(self, name: str) -> None:
        raise InvalidRequest(f"model '{name}' is served by an upstream: remove it from the upstreams file")

    # ---- requests ----

    def _admit(self) -> None:
        if self.pending >= self.max_queue:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
        self.pending += 1

    async def _post(self, state: ReplicaState, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The response once its status says it is an answer; _Retry when another replica should
        be asked; EngineError with the upstream's message for a request it refuses."""
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", **auth_headers(state.replica)}
        try:
            try:
                response = await self.session().post(state.replica.url + path, data=data, headers=headers)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A kept-alive connection the server closed as it was reused (aiohttp retries only
                # idempotent methods itself): once more, on a fresh one, before calling it down.
                response = await self.session().post(state.replica.url + path, data=data, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _Retry(describe(e), down=True) from None
        if response.status == 200:
            return response
        try:
            text = (await response.read()).decode(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _Retry(describe(e), down=True) from None
        finally:
            response.close()
        if response.status == 429 or response.status >= 500:  # busy or broken: not the request's fault
            raise _Retry(f"answered {response.status}: {_message(text)}", down=response.status >= 500 and response.status != 503)
        error = EngineError(f"upstream {state.replica.url}: {_message(text)}")
        error.status = response.status
        raise error

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        model = self._model(request.model)
        path, body = translate.request_body(model.model, request)
        self._admit()
        try:
            failures = []
            for state in self.pool.order(model.replicas):
                stream = self._stream(state, path, body, request)
                started = False
                try:
                    async for chunk in stream:
                        started = True
                        yield chunk
                    return
                except _Retry as e:
                    if e.down:
                        self.pool.mark_down(state, e.reason)
                    if started:  # the client has part of an answer: no one else can finish it
                        raise EngineError(f"upstream {state.replica.url} failed mid-answer: {e.reason}") from None
                    failures.append(f"{state.replica.url}: {e.reason}")
                finally:
                    await stream.aclose()
            raise UpstreamUnavailable(f"no upstream for model '{request.model}' answers ({'; '.join(failures)})")
        finally:
            self.pending -= 1

    async def _stream(self, state: ReplicaState, path: str, body: dict[str, Any],
                      request: GenerateRequest) -> AsyncIterator[Chunk]:  # fmt: skip
        began = time.perf_counter_ns()
        with self.pool.using(state):
            response = await self._post(state, path, body)
            parsed = translate.StreamState(think=request.think)
            first = last = 0
            reusable = False
            try:
                async for event in _answer(response):
                    fields = parsed.event(event)
                    if fields:
                        last = time.perf_counter_ns()
                        first = first or last
                        yield Chunk(**fields)
                reusable = await _body_ended(response)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise _Retry(describe(e), down=True) from None
            finally:
                if reusable:
                    response.release()  # read to its end: the connection goes back to the pool
                else:
                    response.close()  # unread: closes the connection, which stops the upstream's generation
            if not parsed.finish:
                # A whole answer names why it ended; llama_cpp.server, for one, ends a stream with a
                # bare [DONE] when another request interrupts it (--interrupt_requests).
                raise _Retry("the stream ended before the answer did (no finish_reason)", down=False)
            self.pool.mark_up(state)
            calls = parsed.tool_calls()
            if calls:
                last = time.perf_counter_ns()
                first = first or last
                yield Chunk(tool_calls=calls)
            end = time.perf_counter_ns()
            usage = parsed.usage
            metrics = Metrics(
                total_duration=end - began, load_duration=0,
                prompt_eval_count=int(usage.get("prompt_tokens") or 0),
                prompt_eval_duration=(first or end) - began,
                eval_count=int(usage.get("completion_tokens") or parsed.pieces),
                eval_duration=(last - first) if first else 0,
            )  # fmt: skip
            yield Chunk(done=True, done_reason=parsed.done_reason(), metrics=metrics)

    async def embed(self, name: str, inputs: Sequence[str], *, load: LoadOptions | None = None,
                    keep_alive: float | None = None, truncate: bool = True) -> EmbedResult:  # fmt: skip
        model = self._model(name)
        began = time.perf_counter_ns()
        self._admit()
        try:
            failures = []
            for state in self.pool.order(model.replicas):
                with self.pool.using(state):
                    try:
                        response = await self._post(state, "/embeddings", {"model": model.model, "input": list(inputs)})
                        try:
                            body = await response.json(content_type=None)
                        finally:
                            response.close()
                    except _Retry as e:
                        if e.down:
                            self.pool.mark_down(state, e.reason)
                        failures.append(f"{state.replica.url}: {e.reason}")
                        continue
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                        self.pool.mark_down(state, describe(e))
                        failures.append(f"{state.replica.url}: {describe(e)}")
                        continue
                data = sorted(body.get("data") or [], key=lambda d: d.get("index", 0))
                usage = body.get("usage") or {}
                return EmbedResult([list(d["embedding"]) for d in data], int(usage.get("prompt_tokens") or 0), 0,
                                   time.perf_counter_ns() - began)  # fmt: skip
            raise UpstreamUnavailable(f"no upstream for model '{name}' answers ({'; '.join(failures)})")
        finally:
            self.pending -= 1


def _answer(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of a 200 answer, by its type: a server that answers whole even when asked to
    stream gives one event that carries it all. A web page (a login portal, a URL that is not the
    API) is this replica's failure, said plainly."""
    if response.content_type == "application/json":
        return _whole(response)
    if response.content_type == "text/html":
        raise _Retry("answered a web page (text/html), not an event stream: is the URL the API's /v1?", down=True)
    return _events(response)  # text/event-stream, and whatever a lax server calls it


async def _whole(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    text = await response.read()
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise EngineError(f"upstream sent an answer that is not JSON: {text[:80]!r}") from None
    yield translate.whole_as_event(body)


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events' data lines as objects, until [DONE] or the end of the body. Read as
    they arrive, all the lines a read brings at once: nothing is held back waiting for more. A
    line may be long (a whole file as one tool call's arguments): aiohttp's readline stops at
    twice its read buffer, this at _MAX_EVENT."""
    held: list[bytes] = []  # the start of a line still without its newline
    held_size = 0
    while chunk := await response.content.readany():
        *lines, rest = chunk.split(b"\n")
        if lines and held:
            lines[0] = b"".join([*held, lines[0]])
            held, held_size = [], 0
        for line in lines:
            event = _event(line)
            if event is _DONE:
                return
            if event is not None:
                yield event
        if rest:
            held.append(rest)
            held_size += len(rest)
            if held_size > _MAX_EVENT:
                raise EngineError(f"upstream sent an event of more than {_MAX_EVENT:,} bytes")
    if held:
        event = _event(b"".join(held))
        if event is not None and event is not _DONE:
            yield event


def _event(line: bytes) -> dict[str, Any] | object | None:
    """One line of an event stream: its data as an object, _DONE, or None for everything else
    (comments such as ": ping", event names, blank separators, data that is not an object)."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise EngineError(f"upstream sent an event that is not JSON: {data[:80]!r}") from None
    return event if isinstance(event, dict) else None


async def _body_ended(response: aiohttp.ClientResponse) -> bool:
    """After [DONE]: whether the body then ended, so its connection can carry the next request.
    OpenAI servers end it right after [DONE]; one that holds it open past a moment loses the
    connection rather than delaying the answer's last line."""
    if response.content.at_eof():  # the usual case: the body's end came with [DONE]
        return True
    try:
        return not (await asyncio.wait_for(response.content.read(), _DRAIN_S)).strip()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def _message(text: str) -> str:
    """The error message out of an OpenAI ({"error": {"message"}}), Ollama ({"error"}) or
    FastAPI ({"detail"}) error body, else the text itself."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:300]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return str(error)
    return text.strip()[:300]
