"""A deterministic Engine for handler tests (Ollama's mockRunner idea): it echoes what it was asked."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, AsyncIterator

from backend.interface import (
    Chunk,
    EmbedResult,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    Metrics,
    ModelInfo,
    ModelNotFound,
    RunningModel,
    TokenLogprob,
)

BASE = ModelInfo(
    name="mymoe:latest",
    paths=("/models/mymoe.gguf",),
    size=4683075271,
    digest="0a8c266910232fd3291e71e5ba1e058cc5af9d411192cf88b6d30e92b6e73163",
    modified_at=1_750_000_000.0,
    architecture="qwen3moe",
    family="qwen3moe",
    families=("qwen3moe",),
    parameter_size="30.5B",
    quantization_level="Q4_K_M",
    context_length=32768,
    embedding_length=2048,
    capabilities=("completion", "tools", "thinking"),
    template="{{ messages }}",
    metadata={"general.architecture": "qwen3moe", "general.parameter_count": 30_500_000_000,
              "qwen3moe.context_length": 32768, "qwen3moe.embedding_length": 2048,
              "qwen3moe.expert_count": 128, "qwen3moe.expert_used_count": 8,
              "tokenizer.ggml.tokens": ["a", "b", "c", "d", "e", "f"]},  # fmt: skip
)
PLAIN = replace(BASE, name="plain:latest", capabilities=("completion",), digest="1" * 64, modified_at=1_700_000_000.0)
METRICS = Metrics(total_duration=1_000_000, load_duration=10, prompt_eval_count=3, prompt_eval_duration=20,
                  eval_count=2, eval_duration=30)  # fmt: skip


class FakeEngine:
    """Generation replies with fixed pieces; `script` overrides them per test. Every request
    is recorded so tests can check what the HTTP layer asked for."""

    def __init__(self):
        self.models = {BASE.name: BASE, PLAIN.name: PLAIN}
        self.requests: list[GenerateRequest] = []
        self.rendered: list[dict[str, Any]] = []
        self.loaded: dict[str, float | None] = {}
        self.script: list[Chunk] | None = None
        self.delay = 0.0
        self.cancelled = 0
        self.fail_after: int | None = None

    def add_embedding_model(self) -> None:
        """A model without the completion capability (as an embedding-only GGUF would be)."""
        self.models["embedder:latest"] = replace(PLAIN, name="embedder:latest", capabilities=("embedding",))

    def set_modelfile(self, name: str, **fields: Any) -> None:
        """What /api/create would have stored: system, messages, parameters..."""
        info = self.get_model(name)
        self.models[info.name] = replace(info, **fields)

    def list_models(self) -> list[ModelInfo]:
        return list(self.models.values())

    def get_model(self, name: str) -> ModelInfo:
        key = name.lower() if ":" in name else f"{name.lower()}:latest"
        key = key.removeprefix("registry.ollama.ai/").removeprefix("library/")
        if key not in self.models:
            raise ModelNotFound(f"model '{name}' not found")
        return self.models[key]

    def renders_inline(self, name: str) -> bool:
        return False  # as a local model: the worker-thread path stays under test

    def render_chat(self, name, messages, *, tools=None, think=None, add_generation_prompt=True) -> str:
        self.rendered.append({"messages": list(messages), "tools": tools, "think": think})
        return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    async def load(self, name: str, load: LoadOptions, keep_alive: float | None) -> int:
        self.loaded[self.get_model(name).name] = keep_alive
        return 5

    async def unload(self, name: str) -> None:
        self.loaded.pop(self.get_model(name).name, None)

    def running(self) -> list[RunningModel]:
        return [RunningModel(self.models[n], 100, 0, time.time() + (ka if ka and ka > 0 else 300), 4096)
                for n, ka in self.loaded.items()]  # fmt: skip

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.get_model(request.model)
        if request.format == "xml":
            raise InvalidRequest("invalid format")
        self.requests.append(request)
        chunks = self.script or [
            Chunk(content="Hello"),
            Chunk(content=" wörld"),
            Chunk(done=True, done_reason="stop", metrics=METRICS, context=(1, 2, 3)),
        ]
        if request.sampling.logprobs:
            top = (TokenLogprob("x", -0.5, (120,)),) * request.sampling.top_logprobs
            lp = TokenLogprob("x", -0.5, (120,), top)
            chunks = [replace(c, logprobs=(lp,)) if not c.done else c for c in chunks]
        try:
            for i, chunk in enumerate(chunks):
                if self.fail_after is not None and i == self.fail_after:
                    raise InvalidRequest("boom mid-stream")
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield chunk
        except GeneratorExit:
            self.cancelled += 1
            raise
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def embed(self, name, inputs, *, load=LoadOptions(), keep_alive=None, truncate=True) -> EmbedResult:
        self.get_model(name)
        return EmbedResult([[3.0, 4.0, 0.0] for _ in inputs], 2 * len(inputs), 7, 9)

    def delete_model(self, name: str) -> None:
        info = self.get_model(name)
        del self.models[info.name]
