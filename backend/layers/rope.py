"""Rotary position embeddings: llama.cpp's NORM (adjacent pairs) and NEOX (halves) layouts."""

from __future__ import annotations

import math

import torch

from .. import kernels
from ..gguf_model import GGUFError, GGUFFile


def rope_inv_freq(rotary_dim: int, theta: float, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies [rotary_dim/2], computed as transformers does (float32 powers).

    `freq_factors` is llama.cpp's rope_freqs tensor (llama3 scaling, longrope): each frequency is
    divided by its factor, which is how llama.cpp applies it inside ggml_rope_ext.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.float()
    return inv_freq


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0, memo: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, rotary_dim/2] for absolute positions [T]; `scale` multiplies both (YaRN mscale).

    `memo` (a forward pass's ForwardBatch.memo) keeps them for the next layer with the same
    positions and frequencies: every layer but the first reads them instead.
    """
    key = ("rope", id(positions), inv_freq.data_ptr(), scale)
    if memo is not None and key in memo:
        return memo[key][1:]
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, R/2]
    cos_sin = angles.cos() * scale, angles.sin() * scale
    if memo is not None:
        memo[key] = (positions, *cos_sin)  # positions held: its id stays unique while the entry lives
    return cos_sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """Rotates x [T, H, R] by cos/sin [T, R/2].

    NORM rotates adjacent pairs (x0, x1), (x2, x3), ...: llama.cpp's llama files store Q/K rows
    permuted so that this equals transformers' rotate_half on the original rows. NEOX rotates
    (x_i, x_{i+R/2}) pairs, transformers' layout, used unpermuted by qwen2/qwen-moe. deepseek2
    is NORM without any permutation: DeepSeek's own checkpoints rotate interleaved pairs.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.stride(-1) == 1:
        return kernels.rope(x, cos, sin, neox)  # the same bits, without torch's six ops per call
    return kernels.rope_reference(x, cos, sin, neox)


def linear_scaling_factor(f: GGUFFile) -> float:
    """llama.cpp's linear ("position interpolation") factor: positions are divided by it.

    Returns 1.0 without scaling. Other scaling types change the math and are refused here
    rather than silently ignored; models that implement them (YaRN) read the keys themselves.
    """
    kind = f.arch_get("rope.scaling.type", "none")
    if kind == "none":
        return 1.0
    if kind != "linear":
        raise GGUFError(f"{f.name}: rope scaling '{kind}' is not supported for {f.architecture}")
    return float(f.arch_get("rope.scaling.factor", 1.0))


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 1 + 0.1 * mscale * ln(scale), 1 without scaling (DeepSeek's yarn_get_mscale)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(
    rotary_dim: int, theta: float, factor: float, original_max_position_embeddings: int,
    beta_fast: float = 32.0, beta_slow: float = 1.0,
) -> torch.Tensor:
    """YaRN inverse frequencies [rotary_dim/2] as ggml's rope_yarn and transformers compute them.

    Frequencies that turn fewer than beta_slow times over the original context are interpolated
    (divided by `factor`), those turning more than beta_fast times are kept, and a linear ramp
    over the (floored/ceiled) correction dims blends the two in between.
    """
    def correction_dim(num_rotations: float) -> float:
        return rotary_dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rotary_dim - 1)
    extrapolation = rope_inv_freq(rotary_dim, theta)  # [R/2]
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)
    return extrapolation / factor * ramp + extrapolation * (1 - ramp)
