"""The super-block types' integer arithmetic in numpy, the oracle for matmul_q8 on them.

A K or IQ super-block of 256 weights is w = d * S_s * q - dmin * M_s with small integers q, S_s
(the scale of sub-block s) and M_s (its min, for Q2_K/Q4_K/Q5_K). Against a token's Q8_K quants
a (scale da, sub-block sums bsum_s) it gives the exact integers A = sum_s S_s <q, a>_s and
B = sum_s M_s bsum_s, and the float32 term da * ((d * A) - (dmin * B)); a row's result is the
float32 running sum of its chunks' terms in order. The kernels compute exactly this, on every
ISA, so the comparison is bit for bit. The decoders follow the GGUF block layouts (ggml's
block_q4_K, block_q6_K, block_iq4_xs) and are written here, not taken from the kernels.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

from .kernels import QuantWeight, quantize_activations_reference

IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int64)


def _halves(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[:, at : at + 2].copy().view(np.float16)[:, 0].astype(np.float32)


def _q4_k(raw: np.ndarray):
    """Blocks [n, 144] -> q [n, 256], S and M per 32 weights [n, 8], d, dmin [n]."""
    sc = raw[:, 4:16].astype(np.int64)
    s = np.empty((len(raw), 8), np.int64)
    m = np.empty_like(s)
    for j in range(8):
        if j < 4:
            s[:, j], m[:, j] = sc[:, j] & 63, sc[:, j + 4] & 63
        else:
            s[:, j] = (sc[:, j + 4] & 0xF) | ((sc[:, j - 4] >> 6) << 4)
            m[:, j] = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
    qs = raw[:, 16:144].astype(np.int64)
    q = np.empty((len(raw), 256), np.int64)
    for sb in range(8):
        q[:, 32 * sb : 32 * sb + 32] = (qs[:, 32 * (sb // 2) : 32 * (sb // 2) + 32] >> (4 * (sb % 2))) & 0xF
    return q, s, m, _halves(raw, 0), _halves(raw, 2)


def _q6_k(raw: np.ndarray):
    """Blocks [n, 210] -> q [n, 256] (-32..31), S per 16 weights [n, 16], no mins, d."""
    ql, qh = raw[:, :128].astype(np.int64), raw[:, 128:192].astype(np.int64)
    q = np.empty((len(raw), 256), np.int64)
    for h in range(2):
        lo, hi, o = ql[:, 64 * h : 64 * h + 64], qh[:, 32 * h : 32 * h + 32], 128 * h
        q[:, o : o + 32] = (lo[:, :32] & 0xF) | ((hi & 3) << 4)
        q[:, o + 32 : o + 64] = (lo[:, 32:] & 0xF) | (((hi >> 2) & 3) << 4)
        q[:, o + 64 : o + 96] = (lo[:, :32] >> 4) | (((hi >> 4) & 3) << 4)
        q[:, o + 96 : o + 128] = (lo[:, 32:] >> 4) | (((hi >> 6) & 3) << 4)
    s = raw[:, 192:208].view(np.int8).astype(np.int64)
    zero = np.zeros(len(raw), np.float32)
    return q - 32, s, np.zeros_like(s), _halves(raw, 208), zero


def _iq4_xs(raw: np.ndarray):
    """Blocks [n, 136] -> codebook values [n, 256], S per 32 weights [n, 8], no mins, d."""
    high = raw[:, 2:4].copy().view("<u2")[:, 0].astype(np.int64)
    low = raw[:, 4:8].astype(np.int64)
    s = np.stack([((low[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((high >> (2 * ib)) & 3) << 4) for ib in range(8)], 1)
    qs = raw[:, 8:136].astype(np.int64).reshape(-1, 8, 16)
    q = np.concatenate([IQ4_VALUES[qs & 0xF], IQ4_VALUES[qs >> 4]], axis=-1).reshape(-1, 256)
    zero = np.zeros(len(raw), np.float32)
    return q, s - 32, np.zeros_like(s), _halves(raw, 0), zero


DECODERS = {
    GGMLQuantizationType.Q4_K: (_q4_k, 144),
    GGMLQuantizationType.Q6_K: (_q6_k, 210),
    GGMLQuantizationType.IQ4_XS: (_iq4_xs, 136),
}


def superblock_matmul_q8_reference(weight: QuantWeight, x: torch.Tensor, planes: int = 1) -> torch.Tensor:
    """x [T, cols] -> [T, rows] float32, the super-block arithmetic above for Q4_K, Q6_K, IQ4_XS;
    with two activation planes, the float32 sum of the planes' results in plane order."""
    if planes > 1:
        q, d, _ = quantize_activations_reference(x, weight.ggml_type, planes)
        y = _superblock_product(weight, q[0::planes], d[0::planes])
        for p in range(1, planes):
            y = y + _superblock_product(weight, q[p::planes], d[p::planes])
        return torch.from_numpy(y)
    aq, da, _ = quantize_activations_reference(x, weight.ggml_type)
    return torch.from_numpy(_superblock_product(weight, aq, da))


def _superblock_product(weight: QuantWeight, aq: np.ndarray, da: np.ndarray) -> np.ndarray:
    """The float32 result for activations already quantized (quants aq, scales da)."""
    decode, size = DECODERS[weight.ggml_type]
    rows, cols = weight.shape
    chunks = cols // 256
    q, s, m, d, dmin = decode(weight.raw.reshape(-1, size))
    sub = 256 // s.shape[1]
    q = q.reshape(rows, chunks, s.shape[1], sub)
    s, m = s.reshape(rows, chunks, -1), m.reshape(rows, chunks, -1)
    d, dmin = d.reshape(rows, chunks), dmin.reshape(rows, chunks)
    aq = aq.astype(np.int64).reshape(len(aq), chunks, s.shape[2], sub)
    dots = np.einsum("rcsj,tcsj->trcs", q, aq)  # exact int64 sub-block sums
    A = np.einsum("rcs,trcs->trc", s, dots)
    B = np.einsum("rcs,tcs->trc", m, aq.sum(axis=-1))
    assert np.abs(A).max(initial=0) < 2**31 and np.abs(B).max(initial=0) < 2**31  # the kernels' int32 range
    f = da.astype(np.float32)[:, None, :] * ((d * A.astype(np.float32)) - (dmin * B.astype(np.float32)))
    y = np.zeros(f.shape[:2], np.float32)
    for c in range(chunks):  # the running float32 sum, chunk by chunk
        y = y + f[:, :, c]
    return y
