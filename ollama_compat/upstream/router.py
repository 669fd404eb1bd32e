"""RouterEngine: the local engine and the upstream models behind one engine interface, so the
HTTP layer serves both without knowing which is which."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from backend.interface import (
    Chunk,
    EmbedResult,
    Engine,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    ModelInfo,
    RunningModel,
)

from .engine import UpstreamEngine


class RouterEngine:
    """A name in the upstreams file goes upstream (it hides a local model of the same name);
    everything else, model management included, is the local engine's."""

    def __init__(self, local: Engine, upstream: UpstreamEngine):
        self.local = local
        self.upstream = upstream

    def _for(self, name: str) -> Any:
        return self.upstream if self.upstream.has(name) else self.local

    def list_models(self) -> list[ModelInfo]:
        remote = self.upstream.list_models()
        names = {m.name for m in remote}
        return remote + [m for m in self.local.list_models() if m.name not in names]

    def get_model(self, name: str) -> ModelInfo:
        return self._for(name).get_model(name)

    def render_chat(self, name: str, messages: Sequence[dict[str, Any]], **kwargs: Any) -> str:
        return self._for(name).render_chat(name, messages, **kwargs)

    def renders_inline(self, name: str) -> bool:
        return self._for(name).renders_inline(name)

    async def load(self, name: str, load: LoadOptions, keep_alive: float | None) -> int:
        return await self._for(name).load(name, load, keep_alive)

    async def unload(self, name: str) -> None:
        await self._for(name).unload(name)

    def running(self) -> list[RunningModel]:
        return self.upstream.running() + self.local.running()

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._for(request.model).generate(request)

    async def embed(self, name: str, inputs: Sequence[str], **kwargs: Any) -> EmbedResult:
        return await self._for(name).embed(name, inputs, **kwargs)

    def delete_model(self, name: str) -> None:
        self._for(name).delete_model(name)

    def has_blob(self, digest: str) -> bool:
        return self.local.has_blob(digest)

    def blob_writer(self, digest: str) -> Any:
        return self.local.blob_writer(digest)

    def create_model(self, name: str, **spec: Any) -> None:
        self._local_name(name)
        self.local.create_model(name, **spec)

    def copy_model(self, source: str, destination: str) -> None:
        self._local_name(source)
        self._local_name(destination)
        self.local.copy_model(source, destination)

    def pull_model(self, name: str, progress: Any) -> None:
        self._local_name(name)
        self.local.pull_model(name, progress)

    def close(self) -> None:
        close = getattr(self.local, "close", None)
        if close is not None:
            close()

    def _local_name(self, name: str) -> None:
        if self.upstream.has(name):
            raise InvalidRequest(f"model '{name}' is served by an upstream: it cannot be changed here")
