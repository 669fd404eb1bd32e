"""Real models against llama.cpp's own outputs (tests/data/golden, written by tools/make_goldens.py):
the same greedy tokens and top-5 log-probabilities within a stated tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.engine.kv_cache import ForwardBatch
from backend.models import load_model

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
STEPS = 32  # greedy tokens compared with llama.cpp's
# llama.cpp quantizes activations to 8 bits inside its matmuls and keeps the KV cache in f16.
# We run both our arithmetics: "float" (float32 activations, the weights' exact values) and "q8"
# (the default: activations quantized as llama.cpp's x86 code does). Measured worst top-5
# deviation over the golden positions: float SmolLM2 (Q4_1) 0.25 nats, Gemma 3 270M (Q4_K_M mix)
# 0.65; q8 0.39 and 0.63. Gemma 3's worst is one position in both (raw-2, the second generated
# token), where q8 measured 0.42 until the kernels' lane sums changed from sequential to a
# halving tree: the same arithmetic in another order. The model math itself agrees: on F32-dequantized copies with an F32 KV
# cache (tools/parity_probe.py --f32) the teacher-forced deviation is 2.5e-5 nats (SmolLM2) and
# 1.2e-2 (Gemma 3). q8 does not get closer on SmolLM2 because these small models amplify which
# side of a rounding boundary single activations land on, and that depends on float summation
# order upstream (ours is not ggml's); our own q8 and float paths differ by up to 1.1 nats there.
TOLERANCE = {("smollm2", "float"): 0.3, ("gemma3", "float"): 0.75, ("smollm2", "q8"): 0.5, ("gemma3", "q8"): 0.75}
MODES = ("float", "q8")


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
def models(request):
    """(name, mode) -> the loaded model, each loaded once for the module."""
    loaded = {}

    def get(name: str, mode: str):
        if (name, mode) not in loaded:
            path = request.getfixturevalue(f"{name}_gguf")
            loaded[name, mode] = load_model(open_gguf(path), activations=mode)
        return loaded[name, mode]

    return get


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




@pytest.mark.parametrize(
    "model_name,case", [pytest.param(m, c, id=f"{m}-{i}") for m in ("smollm2", "gemma3") for i, c in cases(m)]
)
@pytest.mark.parametrize("mode", MODES)
def test_matches_llama_cpp(models, model_name, case, mode):
    model, tolerance = models(model_name, mode), TOLERANCE[model_name, mode]
    ours, logprobs = greedy(model, case["prompt_tokens"], STEPS)
    want = case["greedy_tokens"][:STEPS]  # shorter when llama.cpp reached end-of-generation
    agreed = agreeing_prefix(ours, want, logprobs, tolerance)
    for position, top in case["top_logprobs"].items():
        p = int(position)
        if p > agreed or p >= len(logprobs):
            continue  # past a split the two engines are continuing different texts
        for token, expected in top:
            assert abs(float(logprobs[p][token]) - expected) <= tolerance, (p, token)


@pytest.mark.parametrize("model_name", ["smollm2", "gemma3"])
@pytest.mark.parametrize("mode", MODES)
def test_most_prompts_agree_for_all_32_tokens(models, model_name, mode):
    """Measured, float: SmolLM2 4 of 5 (raw-0 splits at token 5 on a 0.22-nat tie); Gemma 3 3 of 5
    (raw-0 at token 15 on a 0.012-nat tie, raw-2 at token 3). q8: SmolLM2 3 of 5 (raw-1 and raw-2
    split at tokens 21 and 16, on 0.31 and 0.18-nat ties), Gemma 3 3 of 5 (raw-0 at 11, raw-2 at
    3, on 0.21 and 0.14). Every split is at a near-tie (checked by agreeing_prefix)."""
    model = models(model_name, mode)
    minimum = {("smollm2", "float"): 4, ("gemma3", "float"): 3, ("smollm2", "q8"): 2, ("gemma3", "q8"): 3}[model_name, mode]
    data = golden(model_name)["completions"]
    full = 0
    for case in data["raw"] + data["chat"]:
        ours, logprobs = greedy(model, case["prompt_tokens"], STEPS)
        want = case["greedy_tokens"][:STEPS]
        full += agreeing_prefix(ours, want, logprobs, TOLERANCE[model_name, mode]) == len(want)
    assert full >= minimum
