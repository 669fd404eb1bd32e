"""The only module that loads the compiled kernels: typed wrappers that check every argument,
each beside the plain reference it is tested against."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

ISAS = ("scalar", "avx2", "avx512", "amx")


class KernelError(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    from . import __path__ as package_dirs

    for directory in package_dirs:
        for path in glob.glob(os.path.join(directory, "libmoe_kernels*.so")):
            lib = ctypes.CDLL(path)  # ctypes releases the GIL for the duration of each call
            break
        else:
            continue
        break
    else:
        raise KernelError("libmoe_kernels.so not found: build the package (pip install -e .)")
    # Pointers as c_void_p: a tensor's data_ptr() or an array's address passes as a plain int.
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    fp = vp
    signatures = {
        "moe_isa_detected": ([], ctypes.c_int),
        "moe_isa_active": ([], ctypes.c_int),
        "moe_isa_force": ([ctypes.c_int], ctypes.c_int),
        "moe_isa_name": ([ctypes.c_int], ctypes.c_char_p),
        "moe_gather_active": ([], ctypes.c_int),
        "moe_gather_force": ([ctypes.c_int], ctypes.c_int),
        "moe_type_supported": ([ctypes.c_int], ctypes.c_int),
        "moe_row_bytes": ([ctypes.c_int, i64], ctypes.c_int),
        "moe_set_num_threads": ([ctypes.c_int], ctypes.c_int),
        "moe_num_threads": ([], ctypes.c_int),
        "moe_dequantize": ([ctypes.c_int, vp, i64, fp, i64], ctypes.c_int),
        "moe_matmul": ([ctypes.c_int, vp, i64, i64, i64, fp, i64, fp], ctypes.c_int),
        "moe_matmul_q8": ([ctypes.c_int, vp, i64, i64, i64, fp, i64, fp, ctypes.c_int], ctypes.c_int),
        "moe_matmul_q8_many": ([ctypes.c_int, vp, vp, vp, vp, i64, fp, i64, vp, ctypes.c_int], ctypes.c_int),
        "moe_matmul_q8_heads": ([ctypes.c_int, vp, i64, i64, i64, i64, fp, i64, fp, ctypes.c_int], ctypes.c_int),
        "moe_quantize_activations": ([ctypes.c_int, fp, i64, i64, vp, fp, fp, ctypes.c_int], ctypes.c_int),
        "moe_rms_norm": ([vp, i64, i64, vp, ctypes.c_float, vp], ctypes.c_int),
        "moe_rope": ([vp, i64, i64, i64, i64, i64, vp, vp, ctypes.c_int, vp], ctypes.c_int),
        "moe_attend": ([vp, i64, i64, vp, i64, vp, i64, i64, i64, i64, ctypes.c_float, vp], ctypes.c_int),
        "moe_attend_prompt": ([vp, i64, i64, i64, i64, vp, i64, vp, i64, i64, i64, i64, i64, ctypes.c_float, vp],
                              ctypes.c_int),
        "moe_attend_prompt_mla": ([vp, i64, i64, i64, vp, i64, i64, i64, vp, vp, i64, i64, i64, ctypes.c_float, vp],
                                  ctypes.c_int),
        "moe_gated": ([ctypes.c_int, vp, vp, i64], ctypes.c_int),
        "moe_decode_dense": ([vp, i64, i64, i64, vp, vp, vp, vp, vp, vp, ctypes.c_int, vp, vp], ctypes.c_int),
        "moe_decode_mla": ([vp, i64, i64, i64, vp, vp, vp, vp, vp, ctypes.c_int, vp, vp], ctypes.c_int),
        "moe_route": ([vp, vp, i64, vp, vp], ctypes.c_int),
        "moe_step_profile": ([ctypes.c_int, vp, ctypes.c_int], ctypes.c_int),
        "moe_experts": ([i64, i64, i64, i64, i64, fp, vp, fp, vp, ctypes.c_int, i64, vp, ctypes.c_int, i64, vp,
                         ctypes.c_int, i64, fp, ctypes.c_int, i64, vp, ctypes.c_int, i64, vp, ctypes.c_int, i64, vp,
                         ctypes.c_int, i64], ctypes.c_int),  # fmt: skip
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


_lib = _load()
_ERRORS = {-1: "unsupported quant type", -2: "bad shape", -3: "buffer too small"}


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def _check(code: int, what: str) -> None:
    if code != 0:
        raise KernelError(f"{what}: {_ERRORS.get(code, f'error {code}')}")


# ---- runtime ---------------------------------------------------------------------------


def isa() -> str:
    """The ISA level in use: the best the CPU and OS support, or what MOE_ISA / set_isa forced."""
    return _lib.moe_isa_name(_lib.moe_isa_active()).decode()


def detected_isa() -> str:
    return _lib.moe_isa_name(_lib.moe_isa_detected()).decode()


def set_isa(name: str) -> None:
    if name not in ISAS or _lib.moe_isa_force(ISAS.index(name)) != 0:
        raise KernelError(f"ISA {name!r} is not available on this CPU (detected: {detected_isa()})")


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    previous = isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def gathers() -> bool:
    """Whether the codebook types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS) load their rows by vector
    gathers: the default on Intel from Sapphire Rapids on, or what MOE_GATHER / use_gathers set.
    The same bits either way."""
    return bool(_lib.moe_gather_active())


@contextlib.contextmanager
def use_gathers(on: bool) -> Iterator[None]:
    previous = gathers()
    _lib.moe_gather_force(int(on))
    try:
        yield
    finally:
        _lib.moe_gather_force(int(previous))


def set_num_threads(n: int) -> None:
    """Kernel threads (0: one per hardware thread). The caller's thread is one of them."""
    _check(_lib.moe_set_num_threads(int(n)), "set_num_threads")


def num_threads() -> int:
    return _lib.moe_num_threads()


def supports(ggml_type: int) -> bool:
    return bool(_lib.moe_type_supported(int(ggml_type)))


# ---- dequantization --------------------------------------------------------------------


def _raw(raw: np.ndarray) -> np.ndarray:
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    return raw if raw.flags.c_contiguous else np.ascontiguousarray(raw)


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """GGUF bytes -> float32 array of `shape`, bit-identical to gguf's dequantize."""
    raw = _raw(raw)
    n = int(np.prod(shape))
    out = np.empty(shape, dtype=np.float32)
    code = _lib.moe_dequantize(int(ggml_type), raw.ctypes.data, raw.nbytes, out.ctypes.data, n)
    _check(code, f"dequantize {type_name(ggml_type)} {shape}")
    return out


def dequantize_rows(weight: "QuantWeight", ids: list[int]) -> np.ndarray:
    """Rows `ids` of a quantized [rows, cols] weight as float32 [len(ids), cols]: the token
    embedding's lookup, one call per row into its place (torch.unique and a QuantWeight per row
    cost a decode step 0.2 ms)."""
    rows, cols = weight.shape
    rb = weight.row_bytes
    out = np.empty((len(ids), cols), dtype=np.float32)
    base, dst, row_out = weight.ptr, out.ctypes.data, 4 * cols
    for i, t in enumerate(ids):
        if not 0 <= t < rows:
            raise KernelError(f"row {t} of a weight with {rows} rows")
        _check(_lib.moe_dequantize(int(weight.ggml_type), base + t * rb, rb, dst + i * row_out, cols), "dequantize_rows")
    return out


def dequantize_reference(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    return quants.dequantize(_raw(raw), GGMLQuantizationType(ggml_type)).reshape(shape).astype(np.float32)


# ---- matmul ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantWeight:
    """A [rows, cols] weight as its GGUF bytes (usually a read-only view of the mmap: the
    kernels read blocks in place, so resident memory stays the file size)."""

    raw: np.ndarray  # uint8, rows * row_bytes
    ggml_type: int
    shape: tuple[int, int]  # (rows = outputs, cols = inputs)
    ptr: int = field(init=False, repr=False, compare=False)  # raw's address (numpy's lookup costs a microsecond)

    def __post_init__(self):
        rows, cols = self.shape
        row_bytes = _lib.moe_row_bytes(int(self.ggml_type), int(cols))
        if row_bytes < 0:
            raise KernelError(f"{type_name(self.ggml_type)}: {cols} columns are not whole blocks")
        if self.raw.dtype != np.uint8 or not self.raw.flags.c_contiguous or self.raw.nbytes != rows * row_bytes:
            raise KernelError(f"weight bytes: expected {rows * row_bytes} contiguous uint8, got {self.raw.nbytes}")
        object.__setattr__(self, "ptr", self.raw.ctypes.data)

    @property
    def row_bytes(self) -> int:
        return self.raw.nbytes // self.shape[0]

    def rows(self, start: int, stop: int) -> "QuantWeight":
        """Rows [start, stop) without a copy (one expert of a stacked [E * rows, cols] tensor)."""
        rb = self.row_bytes
        return QuantWeight(self.raw[start * rb : stop * rb], self.ggml_type, (stop - start, self.shape[1]))


def _check_x(x: torch.Tensor, cols: int, what: str) -> torch.Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or x.shape[1] != cols:
        raise KernelError(f"{what}: x must be a CPU float32 [T, {cols}] tensor, got {x.dtype} {tuple(x.shape)}")
    return x.contiguous()


def _matmul_call(fn, what: str, weight: QuantWeight, x: torch.Tensor, *extra: int) -> torch.Tensor:
    """The shared call of matmul and matmul_q8: checks, output allocation, the C entry point."""
    rows, cols = weight.shape
    x = _check_x(x, cols, what)
    y = torch.empty((x.shape[0], rows), dtype=torch.float32)
    if x.shape[0] == 0:
        return y
    code = fn(int(weight.ggml_type), weight.ptr, weight.raw.nbytes, rows, cols, x.data_ptr(), x.shape[0], y.data_ptr(),
              *extra)  # fmt: skip
    _check(code, f"{what} {type_name(weight.ggml_type)} {weight.shape}")
    return y


def matmul(weight: QuantWeight, x: torch.Tensor) -> torch.Tensor:
    """x [T, cols] float32 -> x @ W.T [T, rows] float32, W read in its quantized form."""
    return _matmul_call(_lib.moe_matmul, "matmul", weight, x)


def matmul_reference(weight: QuantWeight, x: torch.Tensor) -> torch.Tensor:
    """float64 product with gguf-dequantized weights: the oracle for matmul."""
    w = torch.from_numpy(dequantize_reference(weight.raw, weight.ggml_type, weight.shape)).double()
    return x.double() @ w.T


# Integer activations: how many 8-bit planes each mode quantizes x into. "q8" is llama.cpp's
# arithmetic; "q8x2" adds the 8-bit residual of the first plane (csrc/quants/qact.h), which
# keeps the small values that share a block with an outlier (KERNELS.md 8b), at about 15 bits.
PLANES = {"q8": 1, "q8x2": 2}


def _planes(planes: int) -> int:
    if planes not in PLANES.values():
        raise KernelError(f"planes must be one of {sorted(PLANES.values())}, got {planes!r}")
    return planes


FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
Q8_0_TYPES = tuple(GGMLQuantizationType[n] for n in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL"))
Q8_1_TYPES = (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1)  # weights with an offset m


def activation_block(ggml_type: int) -> int:
    """32 (Q8_0 / Q8_1 activations) for the 32-weight types, 256 (Q8_K) for K and IQ types."""
    if ggml_type in FLOAT_TYPES:
        raise KernelError(f"{type_name(ggml_type)} weights take float activations")
    return 32 if ggml_type in Q8_0_TYPES + Q8_1_TYPES else 256


def quantize_activations(x: torch.Tensor, ggml_type: int, planes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] -> (q int8 [P T, K], d float32 [P T, K / block], s float32 [P T, K / block]):
    the 8-bit activations that matmul_q8 pairs with `ggml_type` weights (see activation_block),
    token t's plane p in row P t + p (P = planes); s is Q8_1's scaled block sum (zeros for
    Q8_0 and Q8_K)."""
    block = activation_block(ggml_type)
    x = _check_x(x, x.shape[-1] if x.dim() == 2 else -1, "quantize_activations")
    T, K = x.shape
    if K % block:
        raise KernelError(f"quantize_activations: {K} is not a multiple of {block}")
    P = _planes(planes)
    q = np.empty((P * T, K), np.int8)
    d = np.empty((P * T, K // block), np.float32)
    s = np.empty((P * T, K // block), np.float32)
    code = _lib.moe_quantize_activations(int(ggml_type), x.data_ptr(), T, K, q.ctypes.data, d.ctypes.data, s.ctypes.data,
                                         P)  # fmt: skip
    _check(code, "quantize_activations")
    return q, d, s


def quantize_activations_reference(x: torch.Tensor, ggml_type: int, planes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy, as llama.cpp's x86 code: Q8_0 q = rint(x * (127 / amax)), d = fp16(amax / 127);
    Q8_1 also s = fp16(amax / 127 * sum q); Q8_K iscale = -127 / (signed value of the largest
    magnitude), q = min(127, rint(iscale * x)), d = 1 / iscale (float). Ties to even. A second
    plane quantizes the residual x - d q, in float32, the same way, and Q8_1's s are then float32
    d * sum q; rows as quantize_activations."""
    if _planes(planes) == 2:
        block = activation_block(ggml_type)
        q, d, _ = quantize_activations_reference(x, ggml_type)
        dq = q.astype(np.float32) * np.repeat(d, block, axis=1)
        q2, d2, _ = quantize_activations_reference(torch.from_numpy(x.numpy().astype(np.float32) - dq), ggml_type)
        # Q8_1's block sums in float32 (d times the sum of the quants), not fp16, with planes.
        sums = [dd * qq.astype(np.int32).reshape(len(qq), -1, block).sum(-1).astype(np.float32) for qq, dd in ((q, d), (q2, d2))]
        s, s2 = sums if ggml_type in Q8_1_TYPES else (np.zeros_like(d), np.zeros_like(d2))
        return tuple(np.stack(pair, axis=1).reshape(-1, pair[0].shape[1]) for pair in ((q, q2), (d, d2), (s, s2)))
    block = activation_block(ggml_type)
    xb = x.numpy().astype(np.float32).reshape(x.shape[0], -1, block)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    s = np.zeros(amax.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if block == 32:
            inv = np.where(amax == 0, np.float32(0), np.float32(127) / amax).astype(np.float32)
            q = np.rint(xb * inv)
            d32 = (amax / np.float32(127)).astype(np.float32)
            d = d32.astype(np.float16).astype(np.float32)
            if ggml_type in Q8_1_TYPES:
                s = (d32 * q.sum(axis=-1, keepdims=True).astype(np.float32)).astype(np.float16).astype(np.float32)
        else:
            mx = np.take_along_axis(xb, np.abs(xb).argmax(axis=-1)[..., None], axis=-1)
            iscale = np.where(amax == 0, np.float32(0), np.float32(-127) / mx).astype(np.float32)
            q = np.minimum(np.rint(iscale * xb), 127)
            d = np.where(amax == 0, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    return q.astype(np.int8).reshape(x.shape), d[..., 0].astype(np.float32), s[..., 0]


def matmul_q8(weight: QuantWeight, x: torch.Tensor, planes: int = 1) -> torch.Tensor:
    """x [T, cols] -> [T, rows] as llama.cpp computes it: x quantized once to 8 bits
    (quantize_activations), integer dot products, float scales (per 16 weights for the legacy
    32-blocks; per 256-weight super-block, its sub-block scales in integers, for the K and IQ
    types: superblock_reference.py). planes 2 (PLANES["q8x2"]) adds the residual plane's
    product, in float32. Same bits on every ISA, thread count and batch. Float weights
    (F32/F16/BF16) run matmul."""
    return _matmul_call(_lib.moe_matmul_q8, "matmul_q8", weight, x, _planes(planes))


class WeightGroup:
    """Weights that read the same input (q/k/v, gate/up), checked and laid out for the C call once,
    not on every step."""

    def __init__(self, weights: list[QuantWeight]):
        if not weights or any(w.shape[1] != weights[0].shape[1] or w.ggml_type in FLOAT_TYPES for w in weights):
            raise KernelError(f"matmul_q8_many: every weight must be quantized with the same columns, got "
                              f"{[(type_name(w.ggml_type), w.shape) for w in weights]}")  # fmt: skip
        self.weights = list(weights)  # held: the addresses below point into their bytes
        self.cols = weights[0].shape[1]
        arr = lambda ctype, values: (ctype * len(weights))(*values)  # noqa: E731
        self.types = arr(ctypes.c_int, [int(w.ggml_type) for w in weights])
        self.ptrs = arr(ctypes.c_void_p, [w.ptr for w in weights])
        self.nbytes = arr(ctypes.c_int64, [w.raw.nbytes for w in weights])
        self.rows = arr(ctypes.c_int64, [w.shape[0] for w in weights])


def matmul_q8_many(weights: list[QuantWeight] | WeightGroup, x: torch.Tensor, planes: int = 1) -> list[torch.Tensor]:
    """[matmul_q8(w, x) for w in weights] in one call, x quantized once per activation format:
    the same bits, one pass of the thread pool (q/k/v, gate/up). Quantized weight types only."""
    group = weights if isinstance(weights, WeightGroup) else WeightGroup(weights)
    x = _check_x(x, x.shape[-1] if x.dim() == 2 else -1, "matmul_q8_many")
    if x.shape[1] != group.cols:
        raise KernelError(f"matmul_q8_many: x has {x.shape[1]} columns, the weights {group.cols}")
    ys = [torch.empty((x.shape[0], w.shape[0]), dtype=torch.float32) for w in group.weights]
    if x.shape[0] == 0:
        return ys
    outs = (ctypes.c_void_p * len(ys))(*[y.data_ptr() for y in ys])
    code = _lib.moe_matmul_q8_many(len(ys), group.types, group.ptrs, group.nbytes, group.rows, group.cols,
                                   x.data_ptr(), x.shape[0], outs, _planes(planes))  # fmt: skip
    _check(code, "matmul_q8_many")
    return ys


def matmul_q8_heads(weight: QuantWeight, x: torch.Tensor, planes: int = 1) -> torch.Tensor:
    """x [T, H, cols] -> [T, H, n]: H independent matmul_q8 products in one call, head h
    against rows h * n .. (h + 1) * n of weight [H * n, cols] (a stack of per-head matrices)."""
    rows, cols = weight.shape
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3 or x.shape[2] != cols or rows % x.shape[1]:
        raise KernelError(f"matmul_q8_heads: x must be a CPU float32 [T, H, {cols}] tensor with H dividing {rows}, "
                          f"got {x.dtype} {tuple(x.shape)}")  # fmt: skip
    T, H = x.shape[:2]
    x = x.contiguous()
    y = torch.empty((T, H, rows // H), dtype=torch.float32)
    if T == 0:
        return y
    code = _lib.moe_matmul_q8_heads(int(weight.ggml_type), weight.ptr, weight.raw.nbytes, H, rows // H, cols,
                                    x.data_ptr(), T, y.data_ptr(), _planes(planes))  # fmt: skip
    _check(code, f"matmul_q8_heads {type_name(weight.ggml_type)} {weight.shape}")
    return y


def matmul_q8_reference(weight: QuantWeight, x: torch.Tensor, planes: int = 1) -> torch.Tensor:
    """float64 over gguf-dequantized weights and the reference-quantized activations, with
    llama.cpp's formula per 32-block for Q4_1/Q5_1 (d_w * d_a * sum q_w q_a + m_w * s_a, where
    s_a is rounded to fp16 rather than d_a * sum q_a); with two planes, the sum of both planes'
    products."""
    if weight.ggml_type in FLOAT_TYPES:
        return matmul_reference(weight, x)
    if _planes(planes) > 1:
        return sum(_q8_product_reference(weight, q, d, s)
                   for q, d, s in _by_plane(quantize_activations_reference(x, weight.ggml_type, planes), planes))
    return _q8_product_reference(weight, *quantize_activations_reference(x, weight.ggml_type))


def _by_plane(quants: tuple[np.ndarray, ...], planes: int) -> list[tuple[np.ndarray, ...]]:
    """(q, d, s) with token t's plane p in row planes * t + p -> one (q, d, s) per plane."""
    return [tuple(a[p::planes] for a in quants) for p in range(planes)]


def _q8_product_reference(weight: QuantWeight, q: np.ndarray, d: np.ndarray, s: np.ndarray) -> torch.Tensor:
    """matmul_q8_reference for activations already quantized."""
    block = activation_block(weight.ggml_type)
    qb = q.astype(np.float64).reshape(q.shape[0], -1, block)
    xq = torch.from_numpy((qb * d[..., None]).reshape(q.shape))
    w = torch.from_numpy(dequantize_reference(weight.raw, weight.ggml_type, weight.shape)).double()
    y = xq @ w.T
    if weight.ggml_type in Q8_1_TYPES:  # m_w * (s_a - d_a * sum q_a), per block
        rows, cols = weight.shape
        size = GGML_QUANT_SIZES[weight.ggml_type][1]
        m = weight.raw.reshape(rows, cols // 32, size)[:, :, 2:4].copy().view(np.float16)[..., 0]
        corr = s.astype(np.float64) - d.astype(np.float64) * qb.sum(axis=-1)
        y += torch.from_numpy(corr @ m.astype(np.float64).T)
    return y


# ---- gated activations and the native decode step ---------------------------------------------

GATED = {"silu": 0, "gelu_tanh": 1}  # csrc/api.h's MOE_ACT_*


def gated(gate: torch.Tensor, up: torch.Tensor, act: str, in_place: bool = False) -> torch.Tensor:
    """act(gate) * up (SwiGLU for "silu", GeGLU for "gelu_tanh", tanh-approximated gelu) as the
    MoE and decode kernels compute it: one fixed float expression, the same bits on every ISA.
    in_place: written over gate (when contiguous), for a caller that owns it: a prompt's gate is
    tens of MB, and a fresh copy's first touch costs more than the arithmetic."""
    if gate.shape != up.shape or gate.dtype != torch.float32 or up.dtype != torch.float32 or gate.device.type != "cpu":
        raise KernelError(f"gated: gate and up must be CPU float32 tensors of one shape, got {gate.dtype} "
                          f"{tuple(gate.shape)} and {up.dtype} {tuple(up.shape)}")  # fmt: skip
    out = gate if in_place and gate.is_contiguous() else gate.contiguous().clone()
    up = up.contiguous()
    _check(_lib.moe_gated(GATED[act], out.data_ptr(), up.data_ptr(), out.numel()), "gated")
    return out


def gated_reference(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """float64. gelu_tanh as x sigmoid(2 u), equal to 0.5 x (1 + tanh u): torch's tanh form
    cancels to zero (or to 1e-16 in float64) below x = -5, where the value is 1e-7 .. 1e-38."""
    g = gate.double()
    if act == "silu":
        return torch.nn.functional.silu(g) * up.double()
    inner = math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)
    return g * torch.sigmoid(2 * inner) * up.double()


class MoeWeight(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("type", ctypes.c_int), ("bytes", ctypes.c_int64)]

    @classmethod
    def of(cls, w: QuantWeight) -> "MoeWeight":
        return cls(w.ptr, int(w.ggml_type), w.raw.nbytes)


class MoeRouting(ctypes.Structure):
    """csrc/api.h's MoeRouting: how route() picks experts."""

    _fields_ = [
        *[(n, ctypes.c_int64) for n in ("num_experts", "top_k", "n_group", "topk_group")],
        *[(n, ctypes.c_int) for n in ("scoring", "group_top2", "norm_topk")],
        ("norm_eps", ctypes.c_float), ("scale", ctypes.c_float), ("bias", ctypes.c_void_p),
    ]  # fmt: skip

    @classmethod
    def make(cls, num_experts: int, top_k: int, *, scoring: str = "softmax", n_group: int = 1, topk_group: int = 1,
             group_top2: bool = False, norm_topk: bool = False, norm_eps: float = 0.0, scale: float = 1.0,
             bias: torch.Tensor | None = None) -> "MoeRouting":  # fmt: skip
        """bias (float32 [num_experts], kept alive by the caller) steers the choice only."""
        if bias is not None and (bias.dtype != torch.float32 or bias.shape != (num_experts,) or not bias.is_contiguous()):
            raise KernelError(f"route: bias must be a contiguous float32 [{num_experts}] tensor")
        return cls(num_experts, top_k, n_group, topk_group, {"softmax": 0, "sigmoid": 1}[scoring], int(group_top2),
                   int(norm_topk), norm_eps, scale, None if bias is None else bias.data_ptr())  # fmt: skip


class MoeDenseBlock(ctypes.Structure):
    """csrc/api.h's MoeDenseBlock: one block of a native decode step (decode_dense)."""

    _fields_ = [
        *[(n, ctypes.c_int64) for n in ("heads", "kv_heads", "head_dim", "hidden")],
        ("eps", ctypes.c_float), ("attn_scale", ctypes.c_float), ("window", ctypes.c_int64),
        ("neox", ctypes.c_int), ("rope_set", ctypes.c_int), ("act", ctypes.c_int),
        *[(n, ctypes.c_void_p) for n in ("attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm",
                                         "q_bias", "k_bias", "v_bias")],
        *[(n, MoeWeight) for n in ("q", "k", "v", "o", "gate", "up", "down")],
        ("experts", ctypes.c_int64), ("expert_hidden", ctypes.c_int64), ("routing", MoeRouting),
        *[(n, MoeWeight) for n in ("router", "exp_gate", "exp_up", "exp_down")],
    ]  # fmt: skip


def route(logits: torch.Tensor, routing: MoeRouting) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, A] float32, expert ids [T, A] int64), best first: the routing
    the layers and the native decode step share (libm's expf, one order: the same bits on every
    ISA). backend/layers/routing.py's route_reference is the same choice in torch."""
    logits = _check_x(logits, routing.num_experts, "route")
    T, A = logits.shape[0], routing.top_k
    ids = torch.empty((T, A), dtype=torch.int32)
    weights = torch.empty((T, A), dtype=torch.float32)
    _check(_lib.moe_route(ctypes.byref(routing), logits.data_ptr(), T, ids.data_ptr(), weights.data_ptr()), "route")
    return weights, ids.long()


def decode_mla(blocks: ctypes.Array, dim: int, x: torch.Tensor, caches: ctypes.Array, lengths: torch.Tensor,
               cos: list[torch.Tensor], sin: list[torch.Tensor], planes: int, head: "MoeHead | None" = None,
               logits: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """decode_dense for MoeMlaBlock blocks; caches[s * len(blocks) + l] is sequence s's joint
    latent cache [capacity, kv_lora + rope_dim] of block l."""
    x = _check_x(x, dim, "decode_mla").clone()
    head_ptr, logits_ptr = _head_args(head, logits, x.shape[0])
    S = x.shape[0]
    if lengths.dtype != torch.int64 or lengths.shape != (S,) or len(caches) != S * len(blocks):
        raise KernelError(f"decode_mla: {S} sequences need {S} lengths and {S * len(blocks)} caches")
    tables = [t.float().contiguous() for t in (*cos, *sin)]
    lengths = lengths.contiguous()
    ptrs = (ctypes.c_void_p * len(tables))(*[t.data_ptr() for t in tables])
    code = _lib.moe_decode_mla(ctypes.addressof(blocks), len(blocks), dim, S, x.data_ptr(), ctypes.addressof(caches),
                               lengths.data_ptr(), ptrs, ctypes.addressof(ptrs) + len(cos) * ctypes.sizeof(ctypes.c_void_p),
                               _planes(planes), head_ptr, logits_ptr)  # fmt: skip
    _check(code, "decode_mla")
    return x


class MoeMlaBlock(ctypes.Structure):
    """csrc/api.h's MoeMlaBlock: one DeepSeek block of a native decode step (decode_mla)."""

    _fields_ = [
        *[(n, ctypes.c_int64) for n in ("heads", "kv_lora", "nope_dim", "rope_dim", "v_dim", "q_lora")],
        ("eps", ctypes.c_float), ("softmax_scale", ctypes.c_float), ("rope_set", ctypes.c_int),
        *[(n, ctypes.c_void_p) for n in ("attn_norm", "q_a_norm", "kv_a_norm", "ffn_norm")],
        *[(n, MoeWeight) for n in ("q", "q_b", "kv_a", "k_b", "v_b", "o")],
        ("hidden", ctypes.c_int64),
        *[(n, MoeWeight) for n in ("gate", "up", "down")],
        *[(n, ctypes.c_int64) for n in ("experts", "expert_hidden", "shared_hidden")],
        ("routing", MoeRouting),
        *[(n, MoeWeight) for n in ("router", "exp_gate", "exp_up", "exp_down", "sh_gate", "sh_up", "sh_down")],
    ]  # fmt: skip


def decode_dense(blocks: ctypes.Array, dim: int, x: torch.Tensor, k_caches: ctypes.Array, v_caches: ctypes.Array,
                 lengths: torch.Tensor, cos: list[torch.Tensor], sin: list[torch.Tensor], planes: int,
                 head: "MoeHead | None" = None, logits: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """One decode step through `blocks` (MoeDenseBlock array) for x [S, dim] (one new token per
    sequence): returns the last block's output [S, dim]. k_caches / v_caches hold S * len(blocks)
    cache addresses (sequence-major), lengths [S] int64 their cached positions, cos / sin one
    [S, head_dim / 2] table per rope set. With a head (MoeHead), its logits of the final norm of
    that output go to `logits` [S, vocab] float32 in the same call. The caller keeps every tensor
    behind an address alive."""
    x = _check_x(x, dim, "decode_dense").clone()
    head_ptr, logits_ptr = _head_args(head, logits, x.shape[0])
    S = x.shape[0]
    if lengths.dtype != torch.int64 or lengths.shape != (S,) or len(k_caches) != S * len(blocks) or len(v_caches) != len(k_caches):
        raise KernelError(f"decode_dense: {S} sequences need {S} lengths and {S * len(blocks)} caches each")
    tables = [t.float().contiguous() for t in (*cos, *sin)]
    lengths = lengths.contiguous()
    ptrs = (ctypes.c_void_p * len(tables))(*[t.data_ptr() for t in tables])
    sets = len(cos)
    code = _lib.moe_decode_dense(ctypes.addressof(blocks), len(blocks), dim, S, x.data_ptr(), ctypes.addressof(k_caches),
                                 ctypes.addressof(v_caches), lengths.data_ptr(), ptrs,
                                 ctypes.addressof(ptrs) + sets * ctypes.sizeof(ctypes.c_void_p), _planes(planes),
                                 head_ptr, logits_ptr)  # fmt: skip
    _check(code, "decode_dense")
    return x


class MoeHead(ctypes.Structure):
    """csrc/api.h's MoeHead: the final norm and LM head a decode step runs after its blocks."""

    _fields_ = [("norm", ctypes.c_void_p), ("eps", ctypes.c_float), ("weight", MoeWeight), ("vocab", ctypes.c_int64)]


def _head_args(head: MoeHead | None, logits: torch.Tensor | None, rows: int) -> tuple[int | None, int | None]:
    """The head's and the logits' addresses for a decode call (None, None without a head)."""
    if head is None:
        return None, None
    if logits is None or logits.dtype != torch.float32 or not logits.is_contiguous() or logits.shape != (rows, head.vocab):
        raise KernelError(f"decode head: logits must be a contiguous float32 [{rows}, {head.vocab}] tensor")
    return ctypes.addressof(head), logits.data_ptr()


STEP_PARTS = ("norms", "attn_proj", "mla_maps", "attention", "router", "experts", "ffn", "head")  # csrc/decode.h StepPart


def step_profile(on: bool) -> dict[str, float]:
    """The seconds each part of the native decode steps took since the last call (zero unless
    profiling was on), then profiling turned on or off; bench/profile_decode.py reads it."""
    out = (ctypes.c_double * len(STEP_PARTS))()
    n = _lib.moe_step_profile(int(on), out, len(out))
    if n != len(STEP_PARTS):
        raise KernelError(f"step_profile: the library has {n} parts, this module names {len(STEP_PARTS)}")
    return dict(zip(STEP_PARTS, out))


# ---- attention ------------------------------------------------------------------------------


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token's attention (decoding): q [H, Dh] against n positions, keys [n, K, Dh],
    values [n, K, Dv] (query head h reads kv head h // (H / K), grouped-query attention) ->
    [H, Dv] = softmax(scale * q . k) . v per head. Plain float operations in one fixed order: the
    same bits on every ISA and thread count. keys and values may have any row stride (a slice
    of a wider cache row, as MLA's latents) as long as each row's heads lie contiguous."""
    # Checked in few Python operations: a decoding step calls this once per layer.
    if q.dim() != 2 or keys.dim() != 3 or values.dim() != 3:
        raise KernelError(f"attend: q [H, Dh], keys [n, K, Dh], values [n, K, Dv], got {tuple(q.shape)}, "
                          f"{tuple(keys.shape)}, {tuple(values.shape)}")  # fmt: skip
    (H, Dh), (n, K, Dk), (nv, Kv, Dv) = q.shape, keys.shape, values.shape
    if Dk != Dh or (nv, Kv) != (n, K) or n == 0 or H % K:
        raise KernelError(f"attend: {H} query heads of {Dh} against keys {tuple(keys.shape)}, values "
                          f"{tuple(values.shape)}")  # fmt: skip
    f32 = torch.float32
    if q.dtype != f32 or keys.dtype != f32 or values.dtype != f32 or q.device.type != "cpu" or keys.device.type != "cpu":
        raise KernelError(f"attend: CPU float32 tensors only, got {q.dtype}, {keys.dtype}, {values.dtype} on {q.device}")
    ks, vs = keys.stride(), values.stride()
    if ks[2] != 1 or ks[1] != Dh or (n > 1 and ks[0] < K * Dh):  # each row's heads contiguous, rows at a stride
        keys, ks = keys.contiguous(), (K * Dh,)
    if vs[2] != 1 or vs[1] != Dv or (n > 1 and vs[0] < K * Dv):
        values, vs = values.contiguous(), (K * Dv,)
    q = q.contiguous()
    out = torch.empty((H, Dv), dtype=f32)
    code = _lib.moe_attend(q.data_ptr(), H, Dh, keys.data_ptr(), ks[0] if n > 1 else K * Dh, values.data_ptr(),
                           vs[0] if n > 1 else K * Dv, n, K, Dv, float(scale), out.data_ptr())  # fmt: skip
    _check(code, "attend")
    return out


def attend_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """float64 softmax(scale * q k^T) v with each kv head repeated for its query heads (as
    transformers' repeat_kv): the oracle for attend."""
    H, K = q.shape[0], keys.shape[1]
    k = keys.double().repeat_interleave(H // K, dim=1).transpose(0, 1)  # [H, n, Dh]
    v = values.double().repeat_interleave(H // K, dim=1).transpose(0, 1)  # [H, n, Dv]
    p = torch.softmax(scale * (k @ q.double()[:, :, None])[..., 0], dim=-1)  # [H, n]
    return (p[:, None, :] @ v)[:, 0]


def _rows_in_place(t: torch.Tensor) -> torch.Tensor:
    """t [rows, heads, d] as the kernels read it (each row's heads contiguous, rows at a stride):
    t itself when it already is, else a contiguous copy."""
    st = t.stride()
    if st[2] == 1 and st[1] == t.shape[2] and st[0] >= t.shape[1] * t.shape[2]:
        return t
    return t.contiguous()


def attend_prompt(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, past: int = 0,
                  window: int | None = None) -> torch.Tensor:
    """A prompt chunk's causal attention: q [n, H, Dh], the n new tokens at positions past ..
    past + n - 1, against keys [past + n, K, Dh] and values [past + n, K, Dv] of every position
    (query head h reads kv head h // (H / K)) -> [n, H, Dv]. Token t sees positions up to past +
    t, and with `window` only those less than window behind it (Gemma's sliding layers). One
    fixed order of float operations: the same bits on every ISA and thread count, and a position
    gets the same bits whichever chunk of the prompt it came in (prefix reuse)."""
    if q.dim() != 3 or keys.dim() != 3 or values.dim() != 3:
        raise KernelError(f"attend_prompt: q [n, H, Dh], keys [S, K, Dh], values [S, K, Dv], got {tuple(q.shape)}, "
                          f"{tuple(keys.shape)}, {tuple(values.shape)}")  # fmt: skip
    (n, H, Dh), (S, K, Dk), (Sv, Kv, Dv) = q.shape, keys.shape, values.shape
    if n == 0 or Dk != Dh or (Sv, Kv) != (S, K) or S != past + n or H % K or past < 0 or (window is not None and window < 1):
        raise KernelError(f"attend_prompt: {n} queries of {H} heads x {Dh} after {past} positions against keys "
                          f"{tuple(keys.shape)}, values {tuple(values.shape)}, window {window}")  # fmt: skip
    f32 = torch.float32
    if any(t.dtype != f32 or t.device.type != "cpu" for t in (q, keys, values)):
        raise KernelError(f"attend_prompt: CPU float32 tensors only, got {q.dtype}, {keys.dtype}, {values.dtype}")
    q, keys, values = _rows_in_place(q), _rows_in_place(keys), _rows_in_place(values)
    out = torch.empty((n, H, Dv), dtype=f32)
    code = _lib.moe_attend_prompt(q.data_ptr(), n, H, Dh, q.stride(0), keys.data_ptr(), keys.stride(0),
                                  values.data_ptr(), values.stride(0), K, Dv, past, window or 0, float(scale),
                                  out.data_ptr())  # fmt: skip
    _check(code, "attend_prompt")
    return out


def attend_prompt_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, past: int = 0,
                            window: int | None = None) -> torch.Tensor:
    """float64 masked softmax attention, each kv head repeated for its query heads: the oracle
    for attend_prompt."""
    n, H, K = q.shape[0], q.shape[1], keys.shape[1]
    k = keys.double().repeat_interleave(H // K, dim=1).transpose(0, 1)  # [H, S, Dh]
    v = values.double().repeat_interleave(H // K, dim=1).transpose(0, 1)  # [H, S, Dv]
    pos = torch.arange(past, past + n)[:, None]
    key = torch.arange(past + n)[None, :]
    seen = (key <= pos) & ((pos - key < window) if window else True)  # [n, S]
    scores = scale * (q.double().transpose(0, 1) @ k.transpose(1, 2))  # [H, n, S]
    p = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)
    return (p @ v).transpose(0, 1)  # [n, H, Dv]


def attend_prompt_mla(q: torch.Tensor, cache: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor, scale: float,
                      past: int = 0) -> torch.Tensor:
    """MLA's prompt chunk straight from the latents: q [n, H, N + R] ([q_nope | q_pe]) at positions
    past .. past + n - 1, cache [past + n, L + R] (rows [latent | k_pe], any row stride), w_uk
    [H, N, L], w_uv [H, Vd, L] -> [n, H, Vd]. Head h's keys are [w_uk[h] latent | k_pe] and its
    values w_uv[h] latent, expanded panel by panel inside the kernel (never [S, H, N + R] in
    memory), each element one fused multiply-add chain over the latent. The guarantees of
    attend_prompt."""
    if q.dim() != 3 or cache.dim() != 2 or w_uk.dim() != 3 or w_uv.dim() != 3:
        raise KernelError(f"attend_prompt_mla: q [n, H, N + R], cache [S, L + R], w_uk [H, N, L], w_uv [H, Vd, L], got "
                          f"{tuple(q.shape)}, {tuple(cache.shape)}, {tuple(w_uk.shape)}, {tuple(w_uv.shape)}")  # fmt: skip
    (n, H, D), (S, LR), (Hk, N, L), (Hv, Vd, Lv) = q.shape, cache.shape, w_uk.shape, w_uv.shape
    R = D - N
    if n == 0 or S != past + n or past < 0 or Hk != H or Hv != H or Lv != L or R < 0 or LR != L + R:
        raise KernelError(f"attend_prompt_mla: {n} queries {tuple(q.shape)} after {past} positions against cache "
                          f"{tuple(cache.shape)}, w_uk {tuple(w_uk.shape)}, w_uv {tuple(w_uv.shape)}")  # fmt: skip
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, cache, w_uk, w_uv)):
        raise KernelError("attend_prompt_mla: CPU float32 tensors only")
    q, w_uk, w_uv = _rows_in_place(q), w_uk.contiguous(), w_uv.contiguous()
    if cache.stride(1) != 1:
        cache = cache.contiguous()
    out = torch.empty((n, H, Vd), dtype=torch.float32)
    code = _lib.moe_attend_prompt_mla(q.data_ptr(), n, H, q.stride(0), cache.data_ptr(), cache.stride(0), L, R,
                                      w_uk.data_ptr(), w_uv.data_ptr(), N, Vd, past, float(scale), out.data_ptr())  # fmt: skip
    _check(code, "attend_prompt_mla")
    return out


def attend_prompt_mla_reference(q: torch.Tensor, cache: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor,
                                scale: float, past: int = 0) -> torch.Tensor:
    """float64: the per-head keys and values expanded, then attend_prompt_reference."""
    H, N, L = w_uk.shape
    latent, k_pe = cache[:, :L].double(), cache[:, L:].double()
    keys = torch.cat([torch.einsum("sl,hnl->shn", latent, w_uk.double()), k_pe[:, None].expand(-1, H, -1)], dim=-1)
    values = torch.einsum("sl,hvl->shv", latent, w_uv.double())
    return attend_prompt_reference(q.double(), keys, values, scale, past)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of a CPU float32 x [..., D] with weight [D]: torch's
    formula (rms_norm_reference) with its sum of squares in one fixed order."""
    D = x.shape[-1]
    if x.dtype != torch.float32 or x.device.type != "cpu" or weight.shape != (D,) or weight.dtype != torch.float32:
        raise KernelError(f"rms_norm: x must be a CPU float32 [..., D] tensor and weight float32 [D], got x "
                          f"{x.dtype} {tuple(x.shape)}, weight {weight.dtype} {tuple(weight.shape)}")  # fmt: skip
    x, weight = x.contiguous(), weight.contiguous()  # no copy when they already are
    out = torch.empty_like(x)
    _check(_lib.moe_rms_norm(x.data_ptr(), x.numel() // D, D, weight.data_ptr(), float(eps), out.data_ptr()),
           "rms_norm")  # fmt: skip
    return out


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers computes it, in float32 (the oracle, and the path off the CPU)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """x [T, H, R] (any token and head strides, R contiguous) rotated by cos/sin [T, R/2]: pairs
    (i, i + R/2) for neox, else (2i, 2i + 1). A new contiguous tensor, bit for bit
    rope_reference's (the same float multiplies and adds)."""
    T, H, R = x.shape
    xs = x.stride()
    if x.dtype != torch.float32 or x.device.type != "cpu" or R % 2 or xs[2] != 1:
        raise KernelError(f"rope: x must be a CPU float32 [T, H, R] tensor, R even and contiguous, got {x.dtype} "
                          f"{tuple(x.shape)} strides {xs}")  # fmt: skip
    if cos.shape != (T, R // 2) or sin.shape != (T, R // 2) or cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise KernelError(f"rope: cos/sin must be float32 [{T}, {R // 2}], got {cos.dtype} {tuple(cos.shape)}, "
                          f"{sin.dtype} {tuple(sin.shape)}")  # fmt: skip
    cos, sin = cos.contiguous(), sin.contiguous()  # no copy when they already are
    out = torch.empty((T, H, R), dtype=torch.float32)
    _check(_lib.moe_rope(x.data_ptr(), T, H, R, xs[0], xs[1], cos.data_ptr(), sin.data_ptr(), int(neox),
                         out.data_ptr()), "rope")  # fmt: skip
    return out


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """rope in torch operations (the oracle, and the path off the CPU)."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, R/2]
    if neox:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


# ---- the MoE layer -------------------------------------------------------------------------


def moe_experts(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate: QuantWeight, up: QuantWeight,
    down: QuantWeight, num_experts: int, activations: str = "float",
    shared: tuple[QuantWeight, QuantWeight, QuantWeight] | None = None,
) -> torch.Tensor:  # fmt: skip
    """x [T, D], ids/weights [T, A] -> [T, D]: sum_a weights[t, a] * expert ids[t, a] (SwiGLU).

    gate/up are the stacked [E * I, D] tensors and down [E * D, I], as views of the mmap. Each
    expert's weights are read once per call, whatever the number of tokens that chose it.
    activations "q8" / "q8x2" (PLANES): x and the SwiGLU output quantized to 8-bit planes as
    matmul_q8 does; "float": not.
    shared: the shared experts' (gate [Is, D], up [Is, D], down [D, Is]), added to every token
    in the same call.
    """
    if activations != "float" and activations not in PLANES:
        raise KernelError(f"moe_experts: activations must be 'float' or one of {list(PLANES)}, got {activations!r}")
    T, D = x.shape
    I = gate.shape[0] // num_experts
    if (gate.shape != (num_experts * I, D) or up.shape != gate.shape or down.shape != (num_experts * D, I)
            or ids.shape != weights.shape or ids.shape[0] != T):  # fmt: skip
        raise KernelError(f"moe_experts: shapes x {tuple(x.shape)}, ids {tuple(ids.shape)}, gate {gate.shape}, "
                          f"up {up.shape}, down {down.shape} do not fit {num_experts} experts")  # fmt: skip
    shared_args: tuple = (0, None, 0, 0, None, 0, 0, None, 0, 0)
    if shared is not None:
        sg, su, sd = shared
        Is = sg.shape[0]
        if sg.shape != (Is, D) or su.shape != (Is, D) or sd.shape != (D, Is):
            raise KernelError(f"moe_experts: shared experts {sg.shape}, {su.shape}, {sd.shape} do not fit dim {D}")
        shared_args = (Is,) + tuple(v for w in (sg, su, sd) for v in (w.ptr, int(w.ggml_type), w.raw.nbytes))
    x = x.float().contiguous()
    ids32 = ids.to(torch.int32).contiguous()
    w32 = weights.float().contiguous()
    out = torch.empty((T, D), dtype=torch.float32)
    if T == 0:
        return out
    code = _lib.moe_experts(
        T, D, I, num_experts, ids.shape[1], x.data_ptr(), ids32.data_ptr(), w32.data_ptr(), gate.ptr,
        int(gate.ggml_type), gate.raw.nbytes, up.ptr, int(up.ggml_type), up.raw.nbytes, down.ptr, int(down.ggml_type),
        down.raw.nbytes, out.data_ptr(), PLANES.get(activations, 0), *shared_args,
    )  # fmt: skip
    _check(code, "moe_experts")
    return out


def moe_experts_reference(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate: QuantWeight, up: QuantWeight,
    down: QuantWeight, num_experts: int, activations: str = "float",
    shared: tuple[QuantWeight, QuantWeight, QuantWeight] | None = None,
) -> torch.Tensor:  # fmt: skip
    """float64 per token and slot, with gguf-dequantized weights: the oracle for moe_experts.
    With "q8" / "q8x2" each projection's input is first quantized as
    quantize_activations_reference does (the SwiGLU output rounded to float32 first, as the
    kernel holds it)."""
    planes = PLANES.get(activations, 0)
    T, D = x.shape
    I = gate.shape[0] // num_experts

    def project(w: QuantWeight, e: int, rows: int, v: torch.Tensor) -> torch.Tensor:
        block = w.rows(e * rows, (e + 1) * rows)  # expert e's rows, as their own weight
        if planes and w.ggml_type not in FLOAT_TYPES:
            return matmul_q8_reference(block, v[None].float(), planes)[0]
        return torch.from_numpy(dequantize_reference(block.raw, w.ggml_type, block.shape)).double() @ v.double()

    out = torch.zeros(T, D, dtype=torch.float64)
    for t in range(T):
        for a in range(ids.shape[1]):
            e = int(ids[t, a])
            h = torch.nn.functional.silu(project(gate, e, I, x[t])) * project(up, e, I, x[t])
            out[t] += float(weights[t, a]) * project(down, e, D, h.float() if planes else h)
        if shared is not None:
            sg, su, sd = shared
            Is = sg.shape[0]
            h = torch.nn.functional.silu(project(sg, 0, Is, x[t])) * project(su, 0, Is, x[t])
            out[t] += project(sd, 0, D, h.float() if planes else h)
    return out

