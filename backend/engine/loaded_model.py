"""A loaded model: weights, tokenizer, cache pool and scheduler, stepped by the engine thread."""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from .. import kernels
from ..gguf_model import open_gguf
from ..hybrid.accelerator import find_accelerator
from ..hybrid.placement import place_model
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
from ..text.grammar import GrammarCompiler, TokenMask
from ..text.text_output import TextOutput
from .kv_cache import CachePool, ForwardBatch
from .model_runner import ModelRunner
from .model_text import ModelText, context_size, truncated
from .scheduler import ScheduledItem, Scheduler
from .sequence import Sequence, Status, bounded_num_predict

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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def kernel_threads(requested: int) -> int:
    """Kernel threads for a num_thread: 0 or less is one per physical core; more than the usable
    CPUs is clamped to them, as Ollama accepts and clamps (256 threads on 2 cores made an 8-token
    chat take 53 s: every kernel call waits for all of them)."""
    usable = usable_cpus()
    if requested <= 0:
        return min(physical_cores(), usable)
    if requested > usable:
        log.warning("num_thread %d lowered to %d: this process may run on %d CPUs", requested, usable, usable)
        return usable
    return requested


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


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def _fit_context(num_ctx: int, num_slots: int, bytes_per_token: int, requested: int | None = None) -> int:
    """num_ctx, when every slot's full cache fits in 80 % of free memory (slots are allocated on
    first use, so an overcommit would only fail mid-request); otherwise an error naming the most
    that fits, as Ollama refuses a model that needs more memory than the system has."""
    free = available_memory()
    need = num_ctx * num_slots * bytes_per_token
    if not free or need <= 0.8 * free:
        return num_ctx
    fits = int(0.8 * free) // (num_slots * bytes_per_token)
    hint = f"use num_ctx {fits} or less" if fits >= 256 else "free some memory"
    asked = f"num_ctx {num_ctx}" if requested in (None, num_ctx) else f"num_ctx {requested} (this model's limit is {num_ctx})"
    raise EngineError(
        f"{asked} needs {_size(need)} of KV cache for {num_slots} parallel sequences, more than "
        f"the {_size(0.8 * free)} this server may use (80% of {_size(free)} free): {hint}"
        + (", or lower OLLAMA_NUM_PARALLEL" if num_slots > 1 else "")
    )


class LoadedModel:
    def __init__(self, info: ModelInfo, load: LoadOptions, config, text: ModelText):
        threads = kernel_threads(load.num_thread or config.num_thread)
        # Every projection and expert runs on the kernels' pool; torch's OpenMP threads would only
        # spin against it between ops (measured on SmolLM2, 2 cores: 92 -> 31 ms per token).
        kernels.set_num_threads(threads)
        torch.set_num_threads(1)
        f = open_gguf(info.paths[0])
        self.info = info
        self.load = load
        self.tokenizer = text.tokenizer  # shared with the prompt side, which tokenizes
        self.model = load_model(f)
        # Embedding GGUFs declare how to pool (llama.cpp's pooling_type: 1 mean, 2 cls, 3 last);
        # a generative model has none and gets mean pooling, as Ollama does.
        self.pooling = int(f.metadata.get(f"{f.metadata.get('general.architecture')}.pooling_type", 1) or 1)
        self.num_ctx = _fit_context(context_size(load.num_ctx, info.context_length), config.num_parallel,
                                    self.model.allocate_cache(1).nbytes(), requested=load.num_ctx)
        # Attention and dense parts of the top num_gpu blocks on the accelerator, if there is one.
        accel = find_accelerator(config.accelerator, load.main_gpu) if load.num_gpu != 0 else None
        self.placement, self.hybrid = (
            place_model(self.model, accel, load.num_gpu, self.num_ctx * config.num_parallel) if accel else (None, None)
        )
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

    # ---- requests ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._live

    def submit(self, request: GenerateRequest, tokens: list[int], emit, load_ns: int) -> Sequence:
        """`tokens`: the prompt as ModelText.prompt_tokens made it, off this thread; cut here
        only when this model was loaded with a smaller num_ctx than the request asked for."""
        prompt = truncated(tokens, self.num_ctx - 1, request.sampling.num_keep, request.truncate)
        grammar = self.grammar_compiler.compile(request.format)
        seq = Sequence(request, prompt, emit)
        seq.timings.load_ns = load_ns
        self._texts[seq.id] = TextOutput(self.tokenizer, request)
        if grammar is not None:
            self._grammars[seq.id] = grammar
        self._live[seq.id] = seq
        self.scheduler.add(seq)
        return seq

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
        logits, failed = self._forward(items)
        elapsed = time.perf_counter_ns() - start
        for item, error in failed:
            item.seq.emit(EngineError(f"forward pass failed: {error}"))
            self._retire(item.seq)
        for item in items:
            if item.seq.status is Status.FINISHED:
                continue  # its pass failed
            self._account(item, elapsed)
            if item.sample:
                try:
                    self._advance(item.seq, logits[item.seq.id])
                except Exception as e:  # a poisoned request fails alone
                    log.exception("sampling failed for sequence %d", item.seq.id)
                    item.seq.emit(EngineError(f"sampling failed: {e}"))
                    self._retire(item.seq)
        return True

    def _forward(self, items: list[ScheduledItem]) -> tuple[dict[int, torch.Tensor], list[tuple[ScheduledItem, Exception]]]:
        """Logits of one pass over the batch, and the items that failed. When the batch fails,
        every sequence runs alone, so only the one that breaks it ends: a failed pass has moved
        no cache length (it wrote only at positions past them), so the others recompute exactly."""
        try:
            return self.runner.run(items), []
        except Exception as e:
            if len(items) == 1:
                log.exception("forward pass failed for sequence %d", items[0].seq.id)
                return {}, [(items[0], e)]
            log.warning("forward pass of %d sequences failed (%s); running each alone", len(items), e)
        logits, failed = {}, []
        for item in items:
            try:
                logits.update(self.runner.run([item]))
            except Exception as e:
                log.exception("forward pass failed for sequence %d", item.seq.id)
                failed.append((item, e))
        return logits, failed

    def _account(self, item: ScheduledItem, elapsed: int) -> None:
        self._charge(item.seq, elapsed)
        if not item.seq.output:
            item.seq.timings.prompt_eval_count += item.num_tokens

    @staticmethod
    def _charge(seq: Sequence, elapsed: int) -> None:
        """Time spent on seq: generating once its first token is out, else on its prompt."""
        if seq.output:
            seq.timings.eval_ns += elapsed
        else:
            seq.timings.prompt_eval_ns += elapsed

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        text = self._texts[seq.id]
        # A format constrains the answer only: reasoning before it stays free, as in Ollama.
        grammar = self._grammars.get(seq.id) if text.answering else None
        start = time.perf_counter_ns()
        if grammar is not None:
            logits = grammar.apply(logits)
        sample = seq.sampler(logits, seq.tokens)
        self._charge(seq, time.perf_counter_ns() - start)  # a token's time includes its draw, as in Ollama
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
            return self._finish(seq, "stop", text.stop.matched)
        limit = seq.params.num_predict
        if len(seq.output) >= bounded_num_predict(limit, self.num_ctx):
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

    def _finish(self, seq: Sequence, reason: str, stop_sequence: str = "") -> None:
        tail = self._texts[seq.id].finish()
        t = seq.timings
        # prompt_eval_count is the whole prompt, as Ollama's runner counts it before trimming the
        # cached prefix (clients read it as the context in use); what ran shows in the debug log.
        metrics = Metrics(
            total_duration=int((time.perf_counter() - t.submitted) * 1e9) + t.load_ns,  # load came first
            load_duration=t.load_ns,
            prompt_eval_count=seq.prompt_len,
            prompt_eval_duration=t.prompt_eval_ns,
            eval_count=len(seq.output),
            eval_duration=t.eval_ns,
        )
        log.debug("sequence %d done (%s): prompt %d tokens, %d computed, %d from the cache; %d generated; %s",
                  seq.id, reason, seq.prompt_len, t.prompt_eval_count, seq.prompt_len - t.prompt_eval_count,
                  len(seq.output), seq.params)  # fmt: skip
        seq.emit(
            Chunk(
                content=tail.content,
                thinking=tail.thinking,
                tool_calls=tail.tool_calls,
                done=True,
                done_reason=reason,
                stop_sequence=stop_sequence,
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
    def embed(self, token_lists: list[list[int]], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Pooled hidden states of inputs tokenized off this thread (ModelText.input_tokens)."""
        vectors, count = [], 0
        for tokens in token_lists:
            if len(tokens) > self.num_ctx:
                if not truncate:
                    raise InvalidRequest("the input length exceeds the context length")
                tokens = tokens[: self.num_ctx]
            cache = self.model.allocate_cache(len(tokens))
            batch = ForwardBatch.single(len(tokens), cache)
            hidden = self.model.hidden_states(torch.tensor(tokens, dtype=torch.long), batch)  # [T, D]
            vectors.append(_pool(hidden.float(), self.pooling).tolist())
            count += len(tokens)
        return vectors, count

    # ---- reporting -----------------------------------------------------------------------

    def running_model(self) -> RunningModel:
        """size is host plus accelerator memory, size_vram the accelerator's part (Ollama's ps)."""
        cache = self.pool.nbytes()
        if self.placement is None:
            return RunningModel(self.info, self.weights_nbytes + cache, 0, self.expires_at, self.num_ctx)
        p = self.placement
        cache_vram = p.cache_bytes_per_token * sum(s.cache.capacity for s in self.pool.slots if s is not None)
        vram = p.weights_bytes + cache_vram
        host = max(0, self.weights_nbytes - p.weights_bytes) + max(0, cache - cache_vram)
        return RunningModel(self.info, host + vram, vram, self.expires_at, self.num_ctx)

    def close(self) -> None:
        self.fail_all(EngineError("model unloaded"))
        if self.hybrid is not None:
            self.hybrid.close()
        self.model = None
        self.pool = None
