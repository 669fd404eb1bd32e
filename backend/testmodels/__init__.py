"""Tiny random GGUF models written the way llama.cpp writes them, for tests and benchmarks."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from .common import add_tokenizer, finish, start_writer, SUPPORTED_QTYPES, TensorWriter

# arch -> module in this package. A family module defines GGUF_ARCH, DEFAULTS and
# TOKENIZER_PRE (dicts keyed by arch) and write(writer, cfg, tensor_writer, arch).
FAMILIES: dict[str, str] = {
    "llama": "llama",
    "mixtral": "llama",
    "qwen2": "qwen",
    "qwen2moe": "qwen",
    "qwen3moe": "qwen",
    "deepseek2": "deepseek2",
    "gemma3": "gemma3",
}


def family(arch: str):
    if arch not in FAMILIES:
        raise ValueError(f"unknown test architecture {arch!r}; choose from {sorted(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{FAMILIES[arch]}")


def model_config(arch: str, config: dict | None = None) -> dict:
    """The family's tiny defaults overridden by `config` (HF config names)."""
    return {**family(arch).DEFAULTS[arch], **(config or {})}


def write_model(
    arch: str,
    path: str | Path,
    *,
    config: dict | None = None,
    qtype: str = "F32",
    seed: int = 0,
    split_max_tensors: int = 0,
) -> Path:
    """Writes a tiny random `arch` model to `path` and returns it (the first shard if split).

    Matrices are in `qtype` (dims must be multiples of 256 for K/IQ types, the defaults are);
    norms, biases and routers stay F32 as in llama.cpp's files.
    """
    path = Path(path)
    fam = family(arch)
    cfg = model_config(arch, config)
    writer = start_writer(path, fam.GGUF_ARCH[arch], qtype, split_max_tensors)
    add_tokenizer(writer, cfg["vocab_size"], pre=fam.TOKENIZER_PRE[arch])
    fam.write(writer, cfg, TensorWriter(writer, qtype, np.random.default_rng(seed)), arch)
    shards = writer.format_shard_names(path)
    finish(writer)
    return shards[0]


__all__ = ["write_model", "model_config", "family", "FAMILIES", "SUPPORTED_QTYPES"]
