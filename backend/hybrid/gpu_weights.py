"""Weights on the GPU in their GGUF blocks, and the dequantizing matmul that reads them there."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT

from .. import kernels

# Types the Triton kernels read in their blocks; any other quant type is dequantized to bf16 at
# load. Q4_K at 4.5 bits is 0.5625 bytes a weight against bf16's 2, so a layer stored as its
# blocks takes its file size on the GPU.
QUANT_TYPES = (GT.Q4_0, GT.Q5_0, GT.Q8_0, GT.Q4_K, GT.Q5_K, GT.Q6_K)
DENSE_DTYPES = {torch.float32: GT.F32, torch.float16: GT.F16, torch.bfloat16: GT.BF16}
_TL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}  # tile dtypes

# At most this many tokens take the fused GEMV (f32 FMAs, each weight block read once for all
# tokens); more take the tile GEMM (tensor cores). A guess: the GEMV's [T, rows, K-tile]
# products grow with T while the GEMM's cost is flat below its 16-token tile, so the crossing
# is somewhere in 4..16 tokens. Measure it on the GPU (tests/hybrid: the gpu timing test).
GEMV_MAX_TOKENS = 8

# Launch shapes, untuned (bench/gpu_weights_sweep.py measures the alternatives). GEMV: 16 rows x
# 256 columns a step is one super-block per row (16 x 144 bytes of Q4_K); the f32 product tile
# T x 16 x BLOCK_K is kept <= 8192 values, 64 a thread at 4 warps (ptxas for sm_90: 48-125
# registers, no spills below T = 8). GEMM: 64 x 64 output tiles, 64-column steps (two 32-weight
# sub-blocks); 160-250 registers for the quant types, so few CTAs an SM: the first thing to tune.
GEMV_BLOCK_N, GEMV_BLOCK_K, GEMV_PRODUCT_MAX = 16, 256, 8192
GEMM_BLOCK_T, GEMM_BLOCK_N, GEMM_BLOCK_K, GEMM_NUM_STAGES = 64, 64, 64, 3
DEQUANT_BLOCK_N, DEQUANT_BLOCK_K = 16, 256
NUM_WARPS = 4

# Host bytes staged per copy at load, so a large tensor never needs its whole float32 copy.
UPLOAD_CHUNK_BYTES = 256 << 20


class GpuWeightError(RuntimeError):
    pass


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes", "y")


def triton_available() -> bool:
    """True when Triton is installed and can run here: on CUDA, or interpreted on the CPU
    (TRITON_INTERPRET=1, set before triton is first imported). Imports nothing."""
    return importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or _interpret_requested())


def _kernels(device: torch.device) -> ModuleType:
    """The kernel module, imported on first use (so this module imports without Triton, and the
    interpreter setting is read then), after checking it can run on `device`."""
    if importlib.util.find_spec("triton") is None:
        raise GpuWeightError("the GPU weight kernels need Triton (it ships with torch's CUDA builds)")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from . import triton_dequant

    interpreted = isinstance(triton_dequant.gemv_kernel, InterpretedFunction)
    if interpreted != isinstance(tl.sum, InterpretedFunction):  # triton's own helpers were decorated earlier
        raise GpuWeightError("TRITON_INTERPRET changed after triton was imported: set it before the first import")
    if device.type == "cuda" and interpreted:
        raise GpuWeightError("TRITON_INTERPRET=1 was set when the kernels were loaded: unset it to run on CUDA")
    if device.type == "cpu" and not interpreted:
        raise GpuWeightError(
            "Triton kernels run on CUDA only; to run them on the CPU (slowly, for tests) set "
            "TRITON_INTERPRET=1 before their first use"
        )
    if device.type not in ("cuda", "cpu"):
        raise GpuWeightError(f"no Triton kernels for device {device}")
    return triton_dequant


def _copy_rows(rows: int, host_row_bytes: int, chunk, out: torch.Tensor) -> None:
    """Fill out[:rows] from chunk(start, stop) -> host tensor, UPLOAD_CHUNK_BYTES of host memory at a time."""
    step = max(1, UPLOAD_CHUNK_BYTES // max(host_row_bytes, 1))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        out[start:stop].copy_(chunk(start, stop))


@dataclass(frozen=True)
class GpuWeight:
    """A weight [N, K] (rows = outputs) on a torch device: its raw GGUF blocks (uint8 [N, row_bytes],
    ggml_type one of QUANT_TYPES) or a dense float32/float16/bfloat16 [N, K] tensor."""

    data: torch.Tensor = field(repr=False)
    ggml_type: int  # of `data`: a QUANT_TYPES member, or F32/F16/BF16 for a dense tensor
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def is_quantized(self) -> bool:
        return self.ggml_type in QUANT_TYPES

    @property
    def row_bytes(self) -> int:
        return self.data.shape[1] * self.data.element_size()

    @classmethod
    def upload(cls, qweight: kernels.QuantWeight, device: torch.device) -> GpuWeight:
        """A GGUF weight onto `device`: kernel types as their blocks, float types as they are,
        other quant types dequantized (bit-exact, on the CPU) and rounded to bf16."""
        rows, cols = qweight.shape
        qtype = int(qweight.ggml_type)
        rb = qweight.row_bytes
        raw = qweight.raw.reshape(rows, rb)
        if qtype in QUANT_TYPES or qtype in (GT.F32, GT.F16, GT.BF16):
            out = torch.empty((rows, rb), dtype=torch.uint8, device=device)
            # np.array copies a chunk of the (read-only) mmap into memory torch may own.
            _copy_rows(rows, rb, lambda a, b: torch.from_numpy(np.array(raw[a:b])), out)
            if qtype in QUANT_TYPES:
                return cls(out, qtype, (rows, cols))
            dtype = next(d for d, t in DENSE_DTYPES.items() if t == qtype)
            return cls(out.view(dtype), qtype, (rows, cols))
        if not kernels.supports(qtype):
            raise GpuWeightError(f"weight {qweight.shape}: unsupported quant type {kernels.type_name(qtype)}")
        out = torch.empty((rows, cols), dtype=torch.bfloat16, device=device)

        def dequantized(a: int, b: int) -> torch.Tensor:
            part = qweight.rows(a, b)
            return torch.from_numpy(kernels.dequantize(part.raw, qtype, part.shape)).to(torch.bfloat16)

        _copy_rows(rows, cols * 4, dequantized, out)
        return cls(out, GT.BF16, (rows, cols))

    @classmethod
    def from_dense(cls, t: torch.Tensor, device: torch.device) -> GpuWeight:
        """A float [N, K] tensor (float32, float16 or bfloat16, kept in its dtype) onto `device`."""
        if t.dim() != 2 or t.dtype not in DENSE_DTYPES:
            raise GpuWeightError(
                f"a dense weight must be a 2-D float32/float16/bfloat16 tensor, got {t.dtype} {tuple(t.shape)}"
            )
        data = t.detach().to(device).contiguous()
        return cls(data, DENSE_DTYPES[t.dtype], (t.shape[0], t.shape[1]))

    def kernel_data(self) -> torch.Tensor:
        """What the kernels read: the blocks, or the dense tensor (bf16 as int16: same bits, and
        a dtype the interpreter's numpy has)."""
        return self.data.view(torch.int16) if self.ggml_type == GT.BF16 else self.data


def default_tile_dtype(device: torch.device) -> torch.dtype:
    """bf16 tiles on GPUs with bf16 tensor cores (sm80+), fp16 on older ones; f32 under the
    interpreter, whose numpy has no bf16 (fp16 there too when a test asks for it)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _check_x(x: torch.Tensor, w: GpuWeight) -> torch.Tensor:
    if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] != w.shape[1] or x.device != w.device:
        raise GpuWeightError(
            f"x must be a float32 [T, {w.shape[1]}] tensor on {w.device}, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    return x.contiguous()


def gpu_linear(x: torch.Tensor, w: GpuWeight, tile_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [T, K] float32 -> x @ W.T [T, N] float32: the fused GEMV for up to GEMV_MAX_TOKENS
    tokens (f32 throughout), else the tile GEMM (tile_dtype operands, f32 accumulation)."""
    x = _check_x(x, w)
    if x.shape[0] <= GEMV_MAX_TOKENS:
        return gemv(x, w)
    return gemm(x, w, tile_dtype)


def gemv(x: torch.Tensor, w: GpuWeight, block_n: int = GEMV_BLOCK_N, block_k: int = GEMV_BLOCK_K,
         num_warps: int = NUM_WARPS) -> torch.Tensor:  # fmt: skip
    """The fused dequant-GEMV (any T, meant for few): one program per block_n rows."""
    x = _check_x(x, w)
    (T, K), N = x.shape, w.shape[0]
    y = torch.empty((T, N), dtype=torch.float32, device=x.device)
    if T == 0:
        return y
    block_t = _next_pow2(T)
    block_k = max(32, min(block_k, GEMV_PRODUCT_MAX // (block_t * block_n)))
    grid = (-(-N // block_n),)
    _kernels(w.device).gemv_kernel[grid](
        x, w.kernel_data(), y, T, N, K, w.row_bytes, QTYPE=int(w.ggml_type), BLOCK_T=block_t, BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=num_warps, enable_fp_fusion=True,
    )  # fmt: skip
    return y


def gemm(x: torch.Tensor, w: GpuWeight, tile_dtype: torch.dtype | None = None, block_t: int = GEMM_BLOCK_T,
         block_n: int = GEMM_BLOCK_N, block_k: int = GEMM_BLOCK_K, num_warps: int = NUM_WARPS,
         num_stages: int = GEMM_NUM_STAGES) -> torch.Tensor:  # fmt: skip
    """The tile GEMM: weight tiles dequantized to tile_dtype and fed to tl.dot."""
    x = _check_x(x, w)
    (T, K), N = x.shape, w.shape[0]
    y = torch.empty((T, N), dtype=torch.float32, device=x.device)
    if T == 0:
        return y
    kern = _kernels(w.device)
    dtype = _TL_DTYPES[tile_dtype or default_tile_dtype(x.device)]
    block_t = max(16, min(block_t, _next_pow2(T)))  # tl.dot needs 16 at least
    grid = (-(-T // block_t), -(-N // block_n))
    kern.gemm_kernel[grid](
        x, w.kernel_data(), y, T, N, K, w.row_bytes, QTYPE=int(w.ggml_type), TILE_DTYPE=getattr(kern.tl, dtype),
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
        enable_fp_fusion=True,
    )  # fmt: skip
    return y


def dequantize(w: GpuWeight, rows: torch.Tensor | None = None) -> torch.Tensor:
    """W (or W[rows], an embedding lookup) as float32 on w's device: for the block types,
    bit-identical to gguf.quants.dequantize (fp contraction off, gguf's operation order)."""
    index = torch.arange(w.shape[0], device=w.device) if rows is None else rows.to(w.device, torch.int64)
    if not w.is_quantized:
        return w.data[index].float()
    R, K = index.shape[0], w.shape[1]
    out = torch.empty((R, K), dtype=torch.float32, device=w.device)
    if R == 0:
        return out
    grid = (-(-R // DEQUANT_BLOCK_N), -(-K // DEQUANT_BLOCK_K))
    _kernels(w.device).dequantize_kernel[grid](
        w.data, index.contiguous(), out, R, K, w.row_bytes, QTYPE=int(w.ggml_type), BLOCK_N=DEQUANT_BLOCK_N,
        BLOCK_K=DEQUANT_BLOCK_K, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
