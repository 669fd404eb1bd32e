"""Linear and SwiGLU feed-forward layers whose weights come from GGUF tensors."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..gguf_model import GGUFError, GGUFFile, TensorInfo


def dequantize(info: TensorInfo) -> torch.Tensor:
    """float32 tensor of info.shape; the only place model code turns GGUF bytes into numbers."""
    if not kernels.supports(info.ggml_type):
        raise NotImplementedError(info.type_name)
    # Own the memory: a float32 view of the read-only memmap cannot back a torch tensor.
    return torch.from_numpy(kernels.dequantize(info.data, info.ggml_type, info.shape))


def load(f: GGUFFile, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Dequantized tensor `name` after checking it has `shape` (numpy order)."""
    info = f.expect_shape(name, shape)
    try:
        return dequantize(info)
    except NotImplementedError:
        raise GGUFError(f"{f.name}: tensor {name} has unsupported quant type {info.type_name}") from None


def quantized(f: GGUFFile, name: str, shape: tuple[int, ...]) -> kernels.QuantWeight:
    """Tensor `name` as its raw GGUF blocks (a view of the mmap), viewed as [rows, cols]."""
    info = f.expect_shape(name, shape)
    if not kernels.supports(info.ggml_type):
        raise GGUFError(f"{f.name}: tensor {name} has unsupported quant type {info.type_name}")
    rows = int(np.prod(shape[:-1]))
    return kernels.QuantWeight(info.data.reshape(-1), info.ggml_type, (rows, shape[-1]))


# How a quantized Linear treats its input on the CPU:
#   "q8"    x quantized to 8 bits once per call and integer dot products (kernels.matmul_q8):
#           llama.cpp's arithmetic (so Ollama's answers) and the fast path; results within
#           ~1e-2 relative of exact. The default.
#   "q8x2"  the same plus the 8-bit residual of x's quantization as a second plane (about 15
#           bits; kernels.PLANES): near-exact, twice the integer multiplies.
#   "float" x kept float32 (kernels.matmul): exact to float rounding, for oracle comparisons.
# MOE_ACTIVATIONS overrides the default (as MOE_ISA picks the ISA). On SmolLM2-135M the two
# differ where the model is on a knife's edge: asked for the capital of France, llama.cpp and q8
# both start "L'Étoile, la Marseillaise, la femme", float answers "Paris".
ACTIVATIONS = ("q8", "q8x2", "float")
DEFAULT_ACTIVATIONS = os.environ.get("MOE_ACTIVATIONS", "q8")
if DEFAULT_ACTIVATIONS not in ACTIVATIONS:
    raise ValueError(f"MOE_ACTIVATIONS must be one of {ACTIVATIONS}, got {DEFAULT_ACTIVATIONS!r}")


class Linear(nn.Module):
    """y = x @ W.T + b with W [N, K] from GGUF (rows = outputs, llama.cpp's ne = (K, N)).

    GGUF weights stay in their quantized blocks and run through the CPU kernels, so a model
    takes about its file size in memory; a float weight (tied embeddings, tensors a model
    splits or reshapes itself), or any weight on another device, runs through torch.
    `activations` (see ACTIVATIONS) is set for a whole model by set_activations.
    """

    activations = DEFAULT_ACTIVATIONS

    def __init__(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 qweight: kernels.QuantWeight | None = None):  # fmt: skip
        super().__init__()
        if (weight is None) == (qweight is None):
            raise ValueError("Linear needs exactly one of a float weight and a quantized one")
        self.qweight = qweight
        self.gpu_weight = None  # the weight on a CUDA device, once placed there (place())
        self.register_buffer("_weight", weight)
        self.register_buffer("bias", bias)

    @classmethod
    def from_gguf(cls, f: GGUFFile, name: str, out_features: int, in_features: int, bias: bool = False) -> "Linear":
        qweight = quantized(f, f"{name}.weight", (out_features, in_features))
        b = load(f, f"{name}.bias", (out_features,)) if bias else None
        return cls(bias=b, qweight=qweight)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight [N, K] (dequantized on demand for a quantized layer)."""
        if self._weight is not None:
            return self._weight
        q = self.qweight
        return torch.from_numpy(kernels.dequantize(q.raw, q.ggml_type, q.shape))

    def place(self, accel) -> None:
        """Readies this layer for `accel` (backend.hybrid's Accelerator; its buffers have moved
        already). On CUDA the GGUF blocks are uploaded as they are, for the dequantizing GPU
        kernels; the stand-in keeps the CPU kernels, which is what makes its bits the CPU's."""
        if accel.is_standin or self.qweight is None:
            return
        from ..hybrid.gpu_weights import GpuWeight

        self.gpu_weight = GpuWeight.upload(self.qweight, accel.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        if self.gpu_weight is not None and x.device.type == "cuda":
            from ..hybrid.gpu_weights import gpu_linear

            n, k = self.qweight.shape
            y = gpu_linear(x.reshape(-1, k).float(), self.gpu_weight).reshape(*x.shape[:-1], n).to(x.dtype)
            return y if self.bias is None else y + self.bias
        if self.qweight is None or x.device.type != "cpu":
            return F.linear(x, self.weight.to(x.device, x.dtype), self.bias)
        n, k = self.qweight.shape
        x2 = x.reshape(-1, k).float()
        planes = kernels.PLANES.get(self.activations)
        y = kernels.matmul_q8(self.qweight, x2, planes) if planes else kernels.matmul(self.qweight, x2)
        y = y.reshape(*x.shape[:-1], n).to(x.dtype)
        return y if self.bias is None else y + self.bias


def project_many(linears: tuple[Linear, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """[linear(x) for linear in linears]: with integer activations on the CPU and every weight
    quantized, one kernel call quantizes x once for all of them (q/k/v, gate/up), same bits."""
    planes = kernels.PLANES.get(linears[0].activations)
    if x.device.type != "cpu" or not planes or any(
        lin.qweight is None or lin.activations != linears[0].activations or lin.qweight.ggml_type in kernels.FLOAT_TYPES
        for lin in linears
    ):  # fmt: skip
        return [lin(x) for lin in linears]
    k = x.shape[-1]
    # The group's C layout, built once and kept on the first layer (its weights live as long).
    groups = linears[0].__dict__.setdefault("_weight_groups", {})
    key = tuple(id(lin.qweight) for lin in linears)
    if key not in groups:
        groups[key] = kernels.WeightGroup([lin.qweight for lin in linears])
    ys = kernels.matmul_q8_many(groups[key], x.reshape(-1, k).float(), planes)
    out = []
    for lin, y in zip(linears, ys):
        y = y.reshape(*x.shape[:-1], lin.qweight.shape[0]).to(x.dtype)
        out.append(y if lin.bias is None else y + lin.bias)
    return out


def gated(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up ("silu": SwiGLU, "gelu_tanh": GeGLU): on the CPU the kernels' expression
    (the fused experts' and the native decode step's, so their bits), written over gate (the
    callers' own projection output), elsewhere torch's."""
    if gate.device.type == "cpu" and gate.dtype == torch.float32:
        return kernels.gated(gate, up, act, in_place=True)
    return (F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")) * up


def set_activations(model: nn.Module, mode: str) -> nn.Module:
    """Every Linear of `model`, and every module that declares `activations` as Linear does
    (the fused experts), takes `mode` activations (ACTIVATIONS); returns the model."""
    if mode not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {mode!r}")
    for module in activation_modules(model).values():
        module.activations = mode
    return model


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of `model` that declare `activations` as Linear does, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(getattr(type(m), "activations", None), str)}


class FeedForward(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)); dense layers and shared experts."""

    def __init__(self, f: GGUFFile, prefix: str, suffix: str, dim: int, hidden_dim: int):
        super().__init__()
        self.gate = Linear.from_gguf(f, f"{prefix}.ffn_gate{suffix}", hidden_dim, dim)
        self.up = Linear.from_gguf(f, f"{prefix}.ffn_up{suffix}", hidden_dim, dim)
        self.down = Linear.from_gguf(f, f"{prefix}.ffn_down{suffix}", dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        gate, up = project_many((self.gate, self.up), x)
        return self.down(gated(gate, up, "silu"))

    def quantized(self) -> tuple[kernels.QuantWeight, kernels.QuantWeight, kernels.QuantWeight] | None:
        """(gate, up, down) blocks for the fused MoE kernel, or None if any is float or biased."""
        parts = (self.gate, self.up, self.down)
        if any(p.qweight is None or p.bias is not None for p in parts):
            return None
        return tuple(p.qweight for p in parts)


class Embedding(nn.Module):
    """Token embeddings kept in their GGUF blocks: a step dequantizes only the rows it looks up
    (DeepSeek-V3's table is 129k x 7168: 3.7 GB as float32, a quarter of that quantized)."""

    def __init__(self, qweight: kernels.QuantWeight):
        super().__init__()
        self.qweight = qweight
        self.register_buffer("_anchor", torch.empty(0))  # follows .to(device) for `device`

    @classmethod
    def from_gguf(cls, f: GGUFFile, name: str, vocab_size: int, dim: int) -> "Embedding":
        return cls(quantized(f, f"{name}.weight", (vocab_size, dim)))

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def tied_output(self) -> Linear:
        """The output head of models that reuse the embeddings (SmolLM, small Qwen2)."""
        return Linear(qweight=self.qweight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [T] -> [T, D]
        return torch.from_numpy(kernels.dequantize_rows(self.qweight, tokens.tolist())).to(self.device)
