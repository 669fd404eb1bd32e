"""RMSNorm as llama.cpp and transformers compute it (in float32)."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        if x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.device.type == "cpu":
            return kernels.rms_norm(x, self.weight, self.eps)  # one call, not torch's five ops
        return kernels.rms_norm_reference(x, self.weight, self.eps)
