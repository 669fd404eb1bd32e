"""The sampler against plain numpy re-implementations of each transform."""

import numpy as np
import pytest
import torch

from backend.interface import InvalidRequest, SamplingParams
from backend.engine.sampling import Sampler


def np_penalise(logits, history, p):
    out = logits.astype(np.float64).copy()
    window = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history
    for tok in set(window):
        count = window.count(tok)
        v = out[tok]
        v = v / p.repeat_penalty if v > 0 else v * p.repeat_penalty
        out[tok] = v - count * p.frequency_penalty - p.presence_penalty
    return out


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_argmax_of_penalised_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=50).astype(np.float32) * 3
    history = rng.integers(0, 50, size=30).tolist()
    p = SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=16,
                       presence_penalty=0.5, frequency_penalty=0.2, logprobs=True)
    got = Sampler(p)(torch.from_numpy(logits), history)
    assert got.token == int(np.argmax(np_penalise(logits, history, p)))
    ref_lp = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    assert got.logprob == pytest.approx(ref_lp[got.token], abs=1e-5)


@pytest.mark.parametrize("penalties", [
    {"repeat_penalty": -1.0}, {"repeat_penalty": 0.0}, {"repeat_penalty": -1e30, "frequency_penalty": -1e30},
    {"presence_penalty": -1e308}, {"frequency_penalty": 1e308},
])  # fmt: skip
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tokens_the_grammar_forbids_stay_forbidden_under_any_penalty(penalties, temperature):
    """A structured output masks tokens to -inf before the sampler; penalties on those tokens
    (here every token in the history) must not bring them back: a negative repeat_penalty made
    -inf into +inf, the grammar then rejected the pick, and the request failed with a 500."""
    logits = torch.full((50,), -float("inf"))
    logits[[3, 7]] = torch.tensor([0.5, -2.0])  # the two tokens the grammar allows
    history = list(range(50)) * 2
    p = SamplingParams(temperature=temperature, repeat_last_n=-1, seed=0, **penalties)
    for _ in range(20):
        assert Sampler(p)(logits.clone(), history).token in (3, 7)


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=42, repeat_penalty=1.0)
    draws = lambda params: [Sampler(params)(logits, []).token for _ in range(1)] + \
        [s(logits, []).token for s in [Sampler(params)] for _ in range(30)]
    assert draws(p) == draws(p)
    other = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=7, repeat_penalty=1.0)
    assert draws(p) != draws(other)


def test_draws_stay_inside_top_k_top_p_min_p_support():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=200).astype(np.float32) * 2
    order = np.argsort(-logits)
    probs = np.exp(logits[order] - logits.max())
    probs /= probs.sum()
    # top_p = 0.6: the smallest prefix reaching 0.6 of the mass.
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs), 0.6)) + 1].tolist())
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.6, seed=3, repeat_penalty=1.0))
    seen = {s(torch.from_numpy(logits), []).token for _ in range(400)}
    assert seen <= nucleus and len(seen) > 1
    s = Sampler(SamplingParams(temperature=1.0, top_k=5, top_p=1.0, seed=3, repeat_penalty=1.0))
    seen = {s(torch.from_numpy(logits), []).token for _ in range(400)}
    assert seen <= set(order[:5].tolist())
    min_p_set = set(order[probs >= 0.2 * probs[0]].tolist())
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=3, repeat_penalty=1.0))
    seen = {s(torch.from_numpy(logits), []).token for _ in range(400)}
    assert seen <= min_p_set


@pytest.mark.parametrize("seed", range(3))
def test_top_k_draws_as_the_sorted_vocabulary_does(seed):
    """top_k takes torch.topk's k best instead of sorting the whole vocabulary (4 ms a token on
    49k entries): the same candidates in the same order, so a seeded draw picks the same token
    as a reference that sorts everything (penalties, then top_k, top_p, temperature)."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.permutation(5000).astype(np.float32) / 300)  # distinct values
    history = rng.integers(0, 5000, size=80).tolist()
    p = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, repeat_penalty=1.1, repeat_last_n=64, seed=seed)
    sampler = Sampler(p)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(20):
        got = sampler(logits, history).token
        values, ids = torch.sort(torch.from_numpy(np_penalise(logits.numpy(), history, p).astype(np.float32)),
                                 descending=True)  # fmt: skip
        values, ids = values[: p.top_k], ids[: p.top_k]
        keep = int(np.searchsorted(torch.cumsum(torch.softmax(values, -1), -1).numpy(), np.float32(p.top_p))) + 1
        values, ids = values[:keep], ids[:keep]
        probs = torch.softmax((values - values[0]) / p.temperature, dim=-1)
        assert got == int(ids[torch.multinomial(probs, 1, generator=generator)])


def test_logprobs_are_computed_only_when_asked():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    assert Sampler(SamplingParams(temperature=0))(logits, []).logprob is None
    got = Sampler(SamplingParams(temperature=0, logprobs=True))(logits, [])
    assert got.token == 1 and got.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[1]))


def test_top_logprobs_are_the_best_tokens():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    got = Sampler(SamplingParams(temperature=0, top_logprobs=3, repeat_penalty=1.0))(logits, [])
    assert [t for t, _ in got.top] == [1, 3, 2]
    ref = torch.log_softmax(logits, -1)
    assert [lp for _, lp in got.top] == pytest.approx(ref[[1, 3, 2]].tolist())


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=1.5), dict(top_logprobs=21)])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(InvalidRequest):
        Sampler(SamplingParams(**bad))
