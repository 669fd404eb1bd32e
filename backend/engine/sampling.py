"""The sampler: penalties, then top_k, typical_p, top_p, min_p, temperature, then a seeded draw."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

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
    logprob: float  # under the model's distribution (before sampling transforms)
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
        logprobs_full = torch.log_softmax(logits, dim=-1)
        logits = self._penalise(logits.clone(), history)
        # _penalise keeps every allowed token finite; a NaN or +inf from the model itself is never
        # drawn nor breaks the draw, and -inf (a token the grammar forbids) stays so.
        logits = torch.nan_to_num(logits, nan=-math.inf, posinf=torch.finfo(logits.dtype).max, neginf=-math.inf)
        if p.temperature < _TINY_TEMPERATURE:
            token = int(torch.argmax(logits))
        else:
            token = self._draw(logits)
        top = ()
        if p.top_logprobs > 0:
            values, ids = torch.topk(logprobs_full, p.top_logprobs)
            top = tuple((int(i), float(v)) for i, v in zip(ids, values))
        return Sample(token, float(logprobs_full[token]), top)

    def _penalise(self, logits: torch.Tensor, history: list[int]) -> torch.Tensor:
        p = self.params
        n = p.repeat_last_n
        if n == 0 or not history:
            return logits
        window = history[-n:] if n > 0 else history  # -1: the whole context
        counts = Counter(window)
        ids = torch.tensor(list(counts), dtype=torch.long)
        freq = torch.tensor(list(counts.values()), dtype=logits.dtype)
        picked = logits[ids]
        if p.repeat_penalty != 1.0:
            # llama.cpp's rule: shrink positive logits, grow negative ones.
            picked = torch.where(picked > 0, picked / p.repeat_penalty, picked * p.repeat_penalty)
        picked = picked - freq * p.frequency_penalty - (freq > 0).to(logits.dtype) * p.presence_penalty
        # A token the grammar forbids (-inf) stays forbidden: a negative repeat_penalty would turn
        # it into +inf, the sure pick. Any other token stays finite, however far past float32's
        # range the penalties push it (inf, or NaN where two infinite penalties meet), so there
        # is always an allowed token to draw.
        big = torch.finfo(logits.dtype).max
        allowed = logits[ids] != -math.inf
        logits[ids] = torch.where(allowed, torch.nan_to_num(picked, nan=-big, posinf=big, neginf=-big), logits[ids])
        return logits

    def _draw(self, logits: torch.Tensor) -> int:
        p = self.params
        values, ids = torch.sort(logits, descending=True)
        if p.top_k > 0:
            values, ids = values[: p.top_k], ids[: p.top_k]
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
