"""Fixtures for model tests: one thread, and the transformers-oracle comparison."""

from __future__ import annotations

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.engine.kv_cache import ForwardBatch
from backend.models import load_model
from backend.testmodels import model_config, write_model
from backend.testmodels.hf_state import hf_model

PROMPT_LEN, DECODE_STEPS = 24, 10
RTOL = 1e-4  # max abs error allowed, relative to the largest |logit|


@pytest.fixture(autouse=True)
def _one_thread():
    # Several engineers share two cores: keep each test on one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    err = (ours - ref).abs().max().item()
    bound = RTOL * ref.abs().max().item()
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g} (1e-4 x max |logit|)"


def hf_greedy(hf, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation by full recomputation (no HF cache): tokens [P+steps], logits [P+steps, V]."""
    tokens = prompt
    with torch.no_grad():
        for _ in range(steps):
            next_token = hf(tokens[None]).logits[0, -1].argmax()
            tokens = torch.cat([tokens, next_token[None]])
        logits = hf(tokens[None]).logits[0].float()
    return tokens, logits


def check_against_transformers(
    arch: str, tmp_path, qtype: str, config: dict | None = None, seed: int = 0, prefill_chunks: tuple[int, ...] = (PROMPT_LEN,)
) -> None:
    """Prefill PROMPT_LEN tokens (in chunks, each attending to the cached ones before it), then
    DECODE_STEPS single-token steps through our cache, all against HF's logits."""
    path = write_model(arch, tmp_path / f"{arch}-{qtype}.gguf", config=config, qtype=qtype, seed=seed)
    model = load_model(open_gguf(path), activations="float")  # exact: the oracle's tolerance is 1e-4
    hf = hf_model(arch, path, config)
    vocab = model_config(arch, config)["vocab_size"]
    prompt = torch.randint(0, vocab, (PROMPT_LEN,), generator=torch.Generator().manual_seed(seed))
    tokens, ref = hf_greedy(hf, prompt, DECODE_STEPS)

    assert sum(prefill_chunks) == PROMPT_LEN
    cache = model.allocate_cache(PROMPT_LEN + DECODE_STEPS)
    for chunk in prefill_chunks:
        start = cache.length
        batch = ForwardBatch.single(chunk, cache)
        logits = model(prompt[start : start + chunk], batch)
        batch.advance()
        assert logits.shape == (chunk, vocab) and logits.dtype == torch.float32
        assert_close(logits, ref[start : start + chunk], f"{arch} {qtype} prefill [{start}:{start + chunk}]")
    for step in range(DECODE_STEPS):
        pos = PROMPT_LEN + step
        batch = ForwardBatch.single(1, cache)
        logits = model(tokens[pos : pos + 1], batch)
        batch.advance()
        assert_close(logits[0], ref[pos], f"{arch} {qtype} decode step {step}")
        # Greedy choice must agree wherever the oracle's top-2 gap exceeds the tolerance.
        top2 = ref[pos].topk(2).values
        if pos + 1 < len(tokens) and (top2[0] - top2[1]) > 2 * RTOL * ref[pos].abs().max():
            assert logits[0].argmax().item() == tokens[pos + 1].item(), f"{arch} {qtype} greedy step {step}"
    assert cache.length == PROMPT_LEN + DECODE_STEPS


@pytest.fixture
def oracle(tmp_path):
    """oracle(arch, qtype, config=None): our logits against transformers', prefill then decode."""
    def check(arch, qtype, config=None, seed=0, prefill_chunks=(PROMPT_LEN,)):
        check_against_transformers(arch, tmp_path, qtype, config, seed, prefill_chunks)

    return check
