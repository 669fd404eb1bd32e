"""A loaded model: weights, tokenizer, cache pool and scheduler, stepped by the engine thread."""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from .. import kernels
from ..gguf_model import open_gguf
from ..interface import (
    Chunk,
    EngineError,
    GenerateRequest,
    InvalidRequest,
    LoadOptions,
    Metrics,
    ModelInfo,
    RunningModel,
    TokenLogprob,
)
from ..models import load_model
from ..text.chat_template import ChatTemplate
from ..text.grammar import GrammarCompiler, TokenMask
from ..text.text_output import TextOutput
from ..text.thinking import prompt_opens_thinking
from ..text.tokenizer import Tokenizer
from .kv_cache import CachePool, ForwardBatch
from .model_runner import ModelRunner
from .scheduler import ScheduledItem, Scheduler
from .sequence import Sequence

THINK_OPEN = "<think>"

log = logging.getLogger(__name__)


def physical_cores() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            cores = {
                line.split(":")[1].strip()
                for line in f
                if line.startswith("core id")
            }
        return max(1, len(cores)) if cores else max(1, os.cpu_count() or 1)
    except OSError:
        return max(1, os.cpu_count() or 1)


def _pool(hidden: torch.Tensor, pooling: int) -> torch.Tensor:  # [T, D] -> [D]
    if pooling == 2:
        return hidden[0]  # CLS: the first token
    if pooling == 3:
        return hidden[-1]  # the last token
    return hidden.mean(dim=0)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (0 when unknown: no limit applied)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fit_context(num_ctx: int, num_slots: int, bytes_per_token: int) -> int:
    """num_ctx, lowered when every slot's full cache would not fit in 80 % of free memory
    (slots are allocated on first use, so an overcommit would only fail mid-request)."""
    free = available_memory()
    if not free or num_ctx * num_slots * bytes_per_token <= 0.8 * free:
        return num_ctx
    fitted = int(0.8 * free) // (num_slots * bytes_per_token)
    if fitted < 256:
        need = 256 * num_slots * bytes_per_token / 2**30
        raise EngineError(f"not enough memory for the KV cache: {need:.1f} GiB needed for 256 tokens per slot")
    log.warning("num_ctx %d lowered to %d: the KV cache of %d slots must fit in memory", num_ctx, fitted, num_slots)
    return fitted


def chat_template_for(info: ModelInfo) -> ChatTemplate:
    """The model's template with its own bos/eos strings (needs the full vocabulary once)."""
    f = open_gguf(info.paths[0])
    return ChatTemplate.from_metadata(f.metadata, override=info.template or None)


class LoadedModel:
    def __init__(self, info: ModelInfo, load: LoadOptions, config):
        threads = load.num_thread or config.num_thread or physical_cores()
        # Every projection and expert runs on the kernels' pool; torch's OpenMP threads would only
        # spin against it between ops (measured on SmolLM2, 2 cores: 92 -> 31 ms per token).
        kernels.set_num_threads(threads)
        torch.set_num_threads(1)
        f = open_gguf(info.paths[0])
        self.info = info
        self.load = load
        self.tokenizer = Tokenizer.from_metadata(f.metadata)
        self.model = load_model(f)
        # Embedding GGUFs declare how to pool (llama.cpp's pooling_type: 1 mean, 2 cls, 3 last);
        # a generative model has none and gets mean pooling, as Ollama does.
        self.pooling = int(f.metadata.get(f"{f.metadata.get('general.architecture')}.pooling_type", 1) or 1)
        train_ctx = info.context_length or load.num_ctx
        self.num_ctx = _fit_context(max(8, min(load.num_ctx, train_ctx)), config.num_parallel,
                                    self.model.allocate_cache(1).nbytes())
        self.pool = CachePool(self.model.allocate_cache, config.num_parallel, self.num_ctx)
        self.scheduler = Scheduler(self.pool, load.num_batch)
        self.runner = ModelRunner(self.model)
        # Quantized weights are read in place from the mapped file; float tensors are our own.
        self.weights_nbytes = info.size + sum(b.numel() * b.element_size() for b in self.model.buffers())
        self.keep_alive: float | None = None
        self.expires_at = math.inf
        self.became_idle = False
        self.unload_requested = False
        self._live: dict[int, Sequence] = {}
        self._texts: dict[int, TextOutput] = {}
        self._grammars: dict[int, TokenMask] = {}  # sequences with structured output
        self.grammar_compiler = GrammarCompiler(self.tokenizer)
        # R1-style models: "<think>" is one special token of the vocabulary.
        self.can_think = any(t == THINK_OPEN for t in self.tokenizer.tokens)

    # ---- requests ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._live

    def submit(self, request: GenerateRequest, emit, load_ns: int) -> Sequence:
        prompt = self._prompt_tokens(request)
        grammar = self.grammar_compiler.compile(request.format)
        seq = Sequence(request, prompt, emit)
        seq.timings.load_ns = load_ns
        self._texts[seq.id] = TextOutput(self.tokenizer, request)
        if grammar is not None:
            self._grammars[seq.id] = grammar
        self._live[seq.id] = seq
        self.scheduler.add(seq)
        return seq

    def _prompt_text(self, request: GenerateRequest) -> str:
        """The prompt, with reasoning forced open when thinking was asked for: DeepSeek-R1 skips
        "<think>" on some prompts and then answers without reasoning (KTransformers' force_think);
        the parser starts in reasoning either way (TextOutput builds it opened)."""
        if request.think and self.can_think and not prompt_opens_thinking(request.prompt):
            return request.prompt + THINK_OPEN + "\n"
        return request.prompt

    def _prompt_tokens(self, request: GenerateRequest) -> list[int]:
        tokens = list(request.context)
        # A rendered template usually spells out the BOS token itself; encode() adds one only
        # when the model asks for it and the text does not already start with it.
        text = self._prompt_text(request)
        tokens += self.tokenizer.encode(text, add_special=not request.context, parse_special=True)
        if not tokens:
            raise InvalidRequest("prompt is empty after tokenization")
        limit = self.num_ctx - 1  # leave room for at least one generated token
        if len(tokens) > limit:
            if not request.truncate:
                raise InvalidRequest("the input length exceeds the context length")
            # Ollama's rule: keep the first num_keep tokens (BOS, system start) and the tail.
            keep = min(max(0, request.sampling.num_keep), limit // 2)
            tokens = tokens[:keep] + tokens[len(tokens) - (limit - keep) :]
        return tokens

    def fail_all(self, error: EngineError) -> None:
        for seq in list(self._live.values()):
            seq.emit(error)
            self._retire(seq)

    # ---- one engine step ---------------------------------------------------------------

    def step(self) -> bool:
        for seq in self.scheduler.drop_cancelled():
            self._forget(seq)
        items = self.scheduler.schedule()
        if not items:
            return False
        start = time.perf_counter_ns()
        try:
            logits = self.runner.run(items)
        except Exception as e:
            log.exception("forward pass failed")
            for item in items:
                item.seq.emit(EngineError(f"forward pass failed: {e}"))
                self._retire(item.seq)
            return True
        elapsed = time.perf_counter_ns() - start
        for item in items:
            self._account(item, elapsed)
            if item.sample:
                try:
                    self._advance(item.seq, logits[item.seq.id])
                except Exception as e:  # a poisoned request fails alone
                    log.exception("sampling failed for sequence %d", item.seq.id)
                    item.seq.emit(EngineError(f"sampling failed: {e}"))
                    self._retire(item.seq)
        return True

    def _account(self, item: ScheduledItem, elapsed: int) -> None:
        t = item.seq.timings
        if item.seq.output:
            t.eval_ns += elapsed
        else:
            t.prompt_eval_ns += elapsed
            t.prompt_eval_count += item.num_tokens

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        text = self._texts[seq.id]
        # A format constrains the answer only: reasoning before it stays free, as in Ollama.
        grammar = self._grammars.get(seq.id) if text.answering else None
        if grammar is not None:
            logits = grammar.apply(logits)
        sample = seq.sampler(logits, seq.tokens)
        token = sample.token
        seq.tokens.append(token)
        seq.output.append(token)
        if self.tokenizer.is_eog(token):
            return self._finish(seq, "stop")
        if grammar is not None:
            grammar.accept(token)
        delta = text.push(token)
        logprobs = self._logprobs(seq, sample) if seq.params.logprobs else ()
        if delta.content or delta.thinking or delta.tool_calls or logprobs:
            seq.emit(Chunk(content=delta.content, thinking=delta.thinking, tool_calls=delta.tool_calls, logprobs=logprobs))
        if delta.stopped or (grammar is not None and grammar.finished):
            return self._finish(seq, "stop")
        limit = seq.params.num_predict
        if limit >= 0 and len(seq.output) >= limit:
            return self._finish(seq, "length")
        if len(seq.tokens) >= self.num_ctx:
            if limit == -2 or not seq.request.shift:
                return self._finish(seq, "length")
            self._shift(seq)

    def _shift(self, seq: Sequence) -> None:
        """Context full: drop half of what follows the first num_keep tokens and recompute."""
        keep = min(max(0, seq.params.num_keep), self.num_ctx // 2)
        discard = (len(seq.tokens) - keep) // 2
        seq.tokens = seq.tokens[:keep] + seq.tokens[keep + discard :]
        seq.num_cached = min(seq.num_cached, keep)
        seq.slot.cache.length = seq.num_cached

    def _logprobs(self, seq: Sequence, sample) -> tuple[TokenLogprob, ...]:
        def entry(tok: int, lp: float, top=()) -> TokenLogprob:
            raw = self.tokenizer.token_bytes(tok)
            return TokenLogprob(raw.decode("utf-8", "replace"), lp, tuple(raw), top)

        top = tuple(entry(t, lp) for t, lp in sample.top)
        return (entry(sample.token, sample.logprob, top),)

    def _finish(self, seq: Sequence, reason: str) -> None:
        tail = self._texts[seq.id].finish()
        t = seq.timings
        metrics = Metrics(
            total_duration=int((time.perf_counter() - t.submitted) * 1e9) + t.load_ns,  # load came first
            load_duration=t.load_ns,
            prompt_eval_count=t.prompt_eval_count,
            prompt_eval_duration=t.prompt_eval_ns,
            eval_count=len(seq.output),
            eval_duration=t.eval_ns,
        )
        seq.emit(
            Chunk(
                content=tail.content,
                thinking=tail.thinking,
                tool_calls=tail.tool_calls,
                done=True,
                done_reason=reason,
                metrics=metrics,
                context=tuple(seq.tokens),
            )
        )
        self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        self._live.pop(seq.id, None)
        self._texts.pop(seq.id, None)
        self._grammars.pop(seq.id, None)
        if not self._live:
            self.became_idle = True

    # ---- embeddings ----------------------------------------------------------------------

    @torch.inference_mode()
    def embed(self, inputs: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        vectors, count = [], 0
        for text in inputs:
            tokens = self.tokenizer.encode(text, add_special=True, parse_special=True)
            if len(tokens) > self.num_ctx:
                if not truncate:
                    raise InvalidRequest("the input length exceeds the context length")
                tokens = tokens[: self.num_ctx]
            if not tokens:
                raise InvalidRequest("input is empty after tokenization")
            cache = self.model.allocate_cache(len(tokens))
            batch = ForwardBatch.single(len(tokens), cache)
            hidden = self.model.hidden_states(torch.tensor(tokens, dtype=torch.long), batch)  # [T, D]
            vectors.append(_pool(hidden.float(), self.pooling).tolist())
            count += len(tokens)
        return vectors, count

    # ---- reporting -----------------------------------------------------------------------

    def running_model(self) -> RunningModel:
        size = self.weights_nbytes + self.pool.nbytes()
        return RunningModel(self.info, size, 0, self.expires_at, self.num_ctx)

    def close(self) -> None:
        self.fail_all(EngineError("model unloaded"))
        self.model = None
        self.pool = None
