"""Linear and SwiGLU feed-forward layers whose weights come from GGUF tensors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from torch import nn

from ..gguf_model import GGUFError, GGUFFile, TensorInfo


def _dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    return quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(shape)


def dequantize(info: TensorInfo) -> torch.Tensor:
    """float32 tensor of info.shape; the only place model code turns GGUF bytes into numbers."""
    values = _dequantize(info.data, info.ggml_type, info.shape)
    # Own the memory: a float32 view of the read-only memmap cannot back a torch tensor.
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


def load(f: GGUFFile, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Dequantized tensor `name` after checking it has `shape` (numpy order)."""
    info = f.expect_shape(name, shape)
    try:
        return dequantize(info)
    except NotImplementedError:
        raise GGUFError(f"{f.name}: tensor {name} has unsupported quant type {info.type_name}") from None


class Linear(nn.Module):
    """y = x @ W.T + b with W [N, K] from GGUF (rows = outputs, llama.cpp's ne = (K, N)).

    Weights are dequantized to float32 at load for now; quantized CPU matmuls replace this
    class's internals without touching the model files.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    @classmethod
    def from_gguf(cls, f: GGUFFile, name: str, out_features: int, in_features: int, bias: bool = False) -> "Linear":
        weight = load(f, f"{name}.weight", (out_features, in_features))
        b = load(f, f"{name}.bias", (out_features,)) if bias else None
        return cls(weight, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        return F.linear(x, self.weight, self.bias)


class FeedForward(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)); dense layers and shared experts."""

    def __init__(self, f: GGUFFile, prefix: str, suffix: str, dim: int, hidden_dim: int):
        super().__init__()
        self.gate = Linear.from_gguf(f, f"{prefix}.ffn_gate{suffix}", hidden_dim, dim)
        self.up = Linear.from_gguf(f, f"{prefix}.ffn_up{suffix}", hidden_dim, dim)
        self.down = Linear.from_gguf(f, f"{prefix}.ffn_down{suffix}", dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        return self.down(F.silu(self.gate(x)) * self.up(x))
