"""The sampler: penalties, then top_k, typical_p, top_p, min_p, temperature, then a seeded draw."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..interface import InvalidRequest, SamplingParams


def validate(params: SamplingParams) -> None:
    """Reject values no sampler can honour, before a request enters the batch."""
    if params.temperature < 0:
        raise InvalidRequest("temperature must be >= 0")
    if not 0.0 <= params.top_p <= 1.0:
        raise InvalidRequest("top_p must be between 0 and 1")
    if not 0.0 <= params.min_p <= 1.0:
        raise InvalidRequest("min_p must be between 0 and 1")
    if not 0 <= params.top_logprobs <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")


# Temperatures below float32's smallest normal number divide as 0 (Ollama's float32 option holds
# 1e-300 as 0): their limit, greedy decoding, is what they get.
_TINY_TEMPERATURE = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Sample:
    token: int
    logprob: float | None  # under the model's distribution (before sampling transforms); when asked for
    top: tuple[tuple[int, float], ...]  # (token, logprob) best first, when requested


class Sampler:
    """One sequence's sampler. Its own generator makes a seeded request reproducible no matter
    what else shares the batch."""

    def __init__(self, params: SamplingParams):
        validate(params)
        self.params = params
        seed = params.seed if params.seed is not None and params.seed >= 0 else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, history: list[int]) -> Sample:  # logits [V] fp32
        p = self.params
        work = self._penalise(logits, history)
        # _penalise keeps every allowed token finite; a NaN or +inf from the model itself is never
        # drawn nor breaks the draw, and -inf (a token the grammar forbids) stays so.
        finite = dict(nan=-math.inf, posinf=torch.finfo(logits.dtype).max, neginf=-math.inf)
        work = work.nan_to_num_(**finite) if work is not logits else work.nan_to_num(**finite)
        if p.temperature < _TINY_TEMPERATURE:
            token = int(work.numpy().argmax())  # the first best, as torch.argmax, 10x faster on the CPU
        else:
            token = self._draw(work)
        if not (p.logprobs or p.top_logprobs):
            return Sample(token, None, ())
        # logit - logsumexp: one reduction, not a log_softmax over the whole vocabulary.
        lse = torch.logsumexp(logits, dim=-1)
        top = ()
        if p.top_logprobs > 0:
            values, ids = torch.topk(logits, min(p.top_logprobs, logits.shape[-1]))
            top = tuple((int(i), float(v)) for i, v in zip(ids, values - lse))
        return Sample(token, float(logits[token] - lse), top)

    def _penalise(self, logits: torch.Tensor, history: list[int]) -> torch.Tensor:
        p = self.params
        n = p.repeat_last_n
        if n == 0 or not history:
            return logits  # unchanged: the caller copies it before changing anything
        window = history[-n:] if n > 0 else history  # -1: the whole context
        # A window's few entries in numpy (float32, as the logits): torch's per-op overhead on
        # tensors of 64 made this a tenth of a millisecond per token.
        ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
        out = logits.clone()
        values = out.numpy()
        picked = values[ids]
        freq = counts.astype(np.float32)
        with np.errstate(all="ignore"):
            if p.repeat_penalty != 1.0:
                # llama.cpp's rule: shrink positive logits, grow negative ones.
                picked = np.where(picked > 0, picked / np.float32(p.repeat_penalty), picked * np.float32(p.repeat_penalty))
            picked = picked - freq * np.float32(p.frequency_penalty) - np.float32(p.presence_penalty)
            # A token the grammar forbids (-inf) stays forbidden: a negative repeat_penalty would
            # turn it into +inf, the sure pick. Any other token stays finite, however far past
            # float32's range the penalties push it (inf, or NaN where two infinite penalties
            # meet), so there is always an allowed token to draw.
            big = np.finfo(np.float32).max
            allowed = values[ids] != -np.inf
            values[ids] = np.where(allowed, np.nan_to_num(picked, nan=-big, posinf=big, neginf=-big), values[ids])
        return out

    def _draw(self, logits: torch.Tensor) -> int:
        p = self.params
        if 0 < p.top_k < logits.shape[-1]:
            values, ids = torch.topk(logits, p.top_k)  # best first, as the sort's prefix (4 ms less on 49k)
        else:
            values, ids = torch.sort(logits, descending=True)
        probs = torch.softmax(values, dim=-1)
        if 0 < p.typical_p < 1.0:
            values, ids = _locally_typical(values, ids, probs, p.typical_p)
            probs = torch.softmax(values, dim=-1)
        if p.top_p < 1.0:
            cum = torch.cumsum(probs, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = min(len(values), int(torch.searchsorted(cum, torch.tensor(p.top_p))) + 1)
            values, ids, probs = values[:keep], ids[:keep], probs[:keep]
        if p.min_p > 0.0:
            mask = probs >= p.min_p * probs[0]
            values, ids = values[mask], ids[mask]
        # The best logit subtracted first: a tiny temperature then sends the others to -inf, never inf - inf.
        scaled = torch.softmax((values - values[0]) / p.temperature, dim=-1)
        choice = torch.multinomial(scaled, 1, generator=self.generator)
        return int(ids[choice])


def _locally_typical(values, ids, probs, typical_p):
    """Keep the tokens whose surprise is closest to the entropy, up to typical_p of the mass."""
    logp = torch.log(probs.clamp_min(1e-30))
    entropy = -(probs * logp).sum()
    order = torch.argsort((-logp - entropy).abs())
    cum = torch.cumsum(probs[order], dim=-1)
    keep = max(1, int(torch.searchsorted(cum, torch.tensor(typical_p))) + 1)
    order = order[:keep].sort().values  # back to descending-logit order for top_p/min_p
    return values[order], ids[order]
