"""Real models against llama.cpp's own outputs (tests/data/golden, written by tools/make_goldens.py):
the same greedy tokens and top-5 log-probabilities within a stated tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.kv_cache import ForwardBatch
from backend.models import load_model

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
STEPS = 32  # greedy tokens compared with llama.cpp's
# llama.cpp quantizes activations to 8 bits inside its matmuls and keeps the KV cache in f16; we
# multiply in float32 with the weights' exact values. On the 4-bit 135M SmolLM2 the two differ
# by up to 0.25 nats (measured over all golden positions), so the bound is 0.3.
LOGPROB_TOLERANCE = 0.3


def golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Our greedy continuation and the log-softmax before each generated token."""
    cache = model.allocate_cache(len(prompt) + steps + 1)
    batch = ForwardBatch.single(len(prompt), cache)
    logits = model(torch.tensor(prompt), batch)[-1]
    batch.advance()
    tokens, logprobs = [], []
    for _ in range(steps):
        logprobs.append(torch.log_softmax(logits.double(), dim=-1))
        tokens.append(int(logits.argmax()))
        batch = ForwardBatch.single(1, cache)
        logits = model(torch.tensor(tokens[-1:]), batch)[-1]
        batch.advance()
    return tokens, logprobs


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_model(open_gguf(smollm2_gguf))


def cases(name: str):
    data = golden(name)
    return [pytest.param(c, id=f"{kind}-{i}") for kind in ("raw", "chat") for i, c in enumerate(data["completions"][kind])]


def agreeing_prefix(ours: list[int], want: list[int], logprobs: list[torch.Tensor]) -> int:
    """How many greedy tokens agree. A disagreement is allowed only at a near-tie, where the
    two engines' rounding noise can pick either token (then the continuations part ways)."""
    for i, (a, b) in enumerate(zip(ours, want)):
        if a != b:
            margin = float(logprobs[i][a] - logprobs[i][b])
            assert margin <= LOGPROB_TOLERANCE, f"token {i}: {a} beat llama.cpp's {b} by {margin:.3f} nats"
            return i
    return min(len(ours), len(want))


@pytest.mark.parametrize("case", cases("smollm2"))
def test_smollm2_matches_llama_cpp(smollm2, case):
    ours, logprobs = greedy(smollm2, case["prompt_tokens"], STEPS)
    want = case["greedy_tokens"][:STEPS]  # shorter when llama.cpp reached end-of-generation
    agreed = agreeing_prefix(ours, want, logprobs)
    assert agreed >= 5
    for position, top in case["top_logprobs"].items():
        p = int(position)
        if p > agreed or p >= len(logprobs):
            continue  # past a split the two engines are continuing different texts
        for token, expected in top:
            assert abs(float(logprobs[p][token]) - expected) <= LOGPROB_TOLERANCE, (p, token)


def test_most_prompts_agree_for_all_32_tokens(smollm2):
    data = golden("smollm2")["completions"]
    full = 0
    for case in data["raw"] + data["chat"]:
        ours, logprobs = greedy(smollm2, case["prompt_tokens"], STEPS)
        want = case["greedy_tokens"][:STEPS]
        full += agreeing_prefix(ours, want, logprobs) == len(want)
    assert full >= 4  # measured: 4 of 5 (raw-0 splits at token 5 on a 0.22-nat tie)
