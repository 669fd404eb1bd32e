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
# multiply in float32 with the weights' exact values. Measured worst top-5 deviation over the
# golden positions: SmolLM2 (Q4_1) 0.25 nats, Gemma 3 270M (Q4_K_M mix) 0.65 nats. The model math
# itself agrees: on F32-dequantized copies with an F32 KV cache (tools/parity_probe.py --f32) the
# teacher-forced deviation is 2.5e-5 nats (SmolLM2) and 1.2e-2 (Gemma 3); these small models
# amplify 8-bit activation noise (our own q8 vs float paths differ by up to 1.1 nats on SmolLM2).
TOLERANCE = {"smollm2": 0.3, "gemma3": 0.75}
LOGPROB_TOLERANCE = TOLERANCE["smollm2"]


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
    return load_model(open_gguf(smollm2_gguf), activations="float")  # tolerances measured on float activations


def cases(name: str) -> list[tuple[str, dict]]:
    data = golden(name)["completions"]
    return [(f"{kind}-{i}", c) for kind in ("raw", "chat") for i, c in enumerate(data[kind])]


def agreeing_prefix(ours: list[int], want: list[int], logprobs: list[torch.Tensor], tolerance: float) -> int:
    """How many greedy tokens agree. A disagreement is allowed only at a near-tie, where the
    two engines' rounding noise can pick either token (then the continuations part ways)."""
    for i, (a, b) in enumerate(zip(ours, want)):
        if a != b:
            margin = float(logprobs[i][a] - logprobs[i][b])
            assert margin <= tolerance, f"token {i}: {a} beat llama.cpp's {b} by {margin:.3f} nats"
            return i
    return min(len(ours), len(want))


@pytest.fixture(scope="module")
def gemma3(gemma3_gguf):
    return load_model(open_gguf(gemma3_gguf), activations="float")


@pytest.mark.parametrize(
    "model_name,case", [pytest.param(m, c, id=f"{m}-{i}") for m in TOLERANCE for i, c in cases(m)]
)
def test_matches_llama_cpp(request, model_name, case):
    model, tolerance = request.getfixturevalue(model_name), TOLERANCE[model_name]
    ours, logprobs = greedy(model, case["prompt_tokens"], STEPS)
    want = case["greedy_tokens"][:STEPS]  # shorter when llama.cpp reached end-of-generation
    agreed = agreeing_prefix(ours, want, logprobs, tolerance)
    for position, top in case["top_logprobs"].items():
        p = int(position)
        if p > agreed or p >= len(logprobs):
            continue  # past a split the two engines are continuing different texts
        for token, expected in top:
            assert abs(float(logprobs[p][token]) - expected) <= tolerance, (p, token)


@pytest.mark.parametrize("model_name,minimum", [("smollm2", 4), ("gemma3", 3)])
def test_most_prompts_agree_for_all_32_tokens(request, model_name, minimum):
    """Measured: SmolLM2 4 of 5 (raw-0 splits at token 5 on a 0.22-nat tie); Gemma 3 3 of 5
    (raw-0 at token 15 on a 0.012-nat tie, raw-2 at token 3)."""
    model = request.getfixturevalue(model_name)
    data = golden(model_name)["completions"]
    full = 0
    for case in data["raw"] + data["chat"]:
        ours, logprobs = greedy(model, case["prompt_tokens"], STEPS)
        want = case["greedy_tokens"][:STEPS]
        full += agreeing_prefix(ours, want, logprobs, TOLERANCE[model_name]) == len(want)
    assert full >= minimum
