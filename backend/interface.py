"""The engine's public surface, the only backend types the HTTP layer may use (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol, Sequence


class EngineError(Exception):
    """A request failed for a reason the user can act on; `status` is the HTTP status to use."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelNotFound(EngineError):
    status = 404


class InvalidRequest(EngineError):
    status = 400


class ServerBusy(EngineError):
    """The request queue is full (OLLAMA_MAX_QUEUE)."""

    status = 503


@dataclass(frozen=True)
class SamplingParams:
    """Predict-time options, with Ollama's defaults (api/types.go DefaultOptions)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None (or -1 on the wire): a fresh random seed per request
    stop: tuple[str, ...] = ()
    num_predict: int = -1  # -1: until EOS or context end; -2: fill the context
    num_keep: int = 4  # tokens kept at the start when the context shifts
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20


@dataclass(frozen=True)
class LoadOptions:
    """Load-time options: changing one of these reloads the model."""

    num_ctx: int = 4096
    num_batch: int = 512
    num_thread: int = 0  # 0: one per physical core
    num_gpu: int = -1  # -1: as many layers as fit; 0: CPU only
    main_gpu: int = 0
    use_mmap: bool | None = None


@dataclass(frozen=True)
class TensorSummary:
    """One tensor as /api/show lists it: its ggml type name and its shape in GGUF order (ne0 first)."""

    name: str
    type: str  # "Q4_K", "F32", ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What /api/tags and /api/show report about a model on disk; computed without loading weights."""

    name: str  # canonical "name:tag", e.g. "smollm2:135m"
    paths: tuple[str, ...]  # GGUF file(s); several for a split model
    size: int  # bytes on disk
    digest: str  # 64 hex, no "sha256:" prefix
    modified_at: float  # POSIX seconds
    architecture: str  # general.architecture, e.g. "deepseek2"
    family: str
    families: tuple[str, ...]
    parameter_size: str  # "135M", "15.7B"
    quantization_level: str  # "Q4_K_M"
    context_length: int
    embedding_length: int
    capabilities: tuple[str, ...]  # subset of completion, tools, thinking, embedding, insert
    template: str = ""  # the chat template (Jinja) from the GGUF or the Modelfile
    system: str = ""  # default system prompt from the Modelfile, if any
    parameters: dict[str, Any] = field(default_factory=dict)  # Modelfile PARAMETERs
    license: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values for model_info
    messages: tuple[dict[str, Any], ...] = ()  # Modelfile MESSAGEs, put before a chat's own
    tensors: tuple[TensorSummary, ...] = field(default=(), compare=False, repr=False)
    # `metadata` keeps long arrays (the vocabulary, merges) as []; this reads them whole from the
    # file for /api/show's verbose (blocking file work: call it from a thread; EngineError on failure).
    full_metadata: Callable[[], dict[str, Any]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RunningModel:
    """One loaded model, as /api/ps reports it."""

    info: ModelInfo
    size: int  # bytes resident (weights + cache)
    size_vram: int
    expires_at: float  # POSIX seconds; float("inf") for keep_alive < 0
    context_length: int


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str  # the full prompt text, already rendered through the chat template
    sampling: SamplingParams = SamplingParams()
    load: LoadOptions = LoadOptions()
    context: tuple[int, ...] = ()  # token ids that precede `prompt` (/api/generate "context")
    images: tuple[bytes, ...] = ()
    think: bool = False  # split reasoning (<think>...</think>) into Chunk.thinking
    parse_tools: bool = False  # parse tool calls out of the output into Chunk.tool_calls
    format: str | dict | None = None  # None, "json" or a JSON schema
    keep_alive: float | None = None  # seconds; None: server default; < 0: forever
    truncate: bool = True  # False: a prompt longer than num_ctx is an error, not truncated
    shift: bool = True  # False: a full context ends generation ("length") instead of shifting
    # Fill in the middle: the text after the hole, `prompt` being the text before it, both
    # unrendered (the model's template places them). Only models with the "insert" capability.
    suffix: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class Metrics:
    """Measured, never estimated. Durations in nanoseconds."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of a generation. Text fields are always whole UTF-8 characters."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()  # {"function": {"name", "arguments": {...}}}
    logprobs: tuple[TokenLogprob, ...] = ()
    done: bool = False
    done_reason: str = ""  # "stop" | "length" on the final chunk
    # Final chunk only: the stop string that ended the generation ("" for EOS, a length limit or a
    # finished format). Ollama's done_reason says "stop" for both; Anthropic's stop_reason tells them apart.
    stop_sequence: str = ""
    metrics: Metrics | None = None  # final chunk only
    context: tuple[int, ...] = ()  # final chunk only: prompt + generated token ids


@dataclass(frozen=True)
class EmbedResult:
    embeddings: list[list[float]]  # raw (not normalised) pooled vectors, one per input
    prompt_eval_count: int
    load_duration: int
    total_duration: int


class Engine(Protocol):
    """What the HTTP layer calls. All methods are safe to call from the event loop."""

    def list_models(self) -> list[ModelInfo]:
        """Every model on disk. Fast: never loads weights or hashes files on the request path."""

    def get_model(self, name: str) -> ModelInfo:
        """Resolve a name ("x", "x:latest", "library/x:latest", any case). Raises ModelNotFound."""

    def render_chat(
        self,
        name: str,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        think: bool | str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The model's chat template applied to Ollama-style messages (role, content, images, tool_calls).
        Blocking (call it from a worker thread). InvalidRequest when the template rejects the
        messages; EngineError when it is broken or runs past its time, memory or output limits."""

    def renders_inline(self, name: str) -> bool:
        """True when render_chat for this name is cheap and never blocks (a remote model's is a JSON
        dump of the messages), so the event loop may call it itself. Never raises."""

    async def load(self, name: str, load: LoadOptions, keep_alive: float | None) -> int:
        """Load (or keep) a model; returns the load duration in ns (0 when it was already loaded)."""

    async def unload(self, name: str) -> None:
        """Free a model now; running requests on it finish first."""

    def running(self) -> list[RunningModel]:
        """Loaded models, longest time to expiry first."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Stream a generation. Raises EngineError subclasses. Closing the iterator (aclose or
        garbage collection after a client disconnect) cancels the sequence within one step."""

    async def embed(
        self,
        name: str,
        inputs: Sequence[str],
        *,
        load: LoadOptions = LoadOptions(),
        keep_alive: float | None = None,
        truncate: bool = True,
    ) -> EmbedResult:
        """Pooled hidden states for each input (the HTTP layer normalises for /api/embed)."""

    def delete_model(self, name: str) -> None:
        """Remove a model from the store (unloading it first). Raises ModelNotFound."""

    # ---- model management (file work: call from a worker thread, never the event loop) ----

    def has_blob(self, digest: str) -> bool:
        """Whether blobs/ holds `digest` ("sha256:<hex>"). InvalidRequest for a malformed digest."""

    def blob_writer(self, digest: str) -> Any:
        """A writer with write(bytes), commit() (verifies the sha256) and abort()."""

    def create_model(self, name: str, **spec: Any) -> None:
        """Ollama's /api/create: spec has source, files, system, template, parameters, messages,
        license, status (a callback for progress lines)."""

    def copy_model(self, source: str, destination: str) -> None:
        """Another name for the same blobs."""

    def pull_model(self, name: str, progress: Any) -> None:
        """Fetch a model this server knows how to get; progress(dict) gets Ollama's statuses."""

