"""Triton kernels that read GGUF-quantized weights in their blocks: dequantize, fused GEMV, tile GEMM."""

from __future__ import annotations

import triton
import triton.language as tl

# ggml type ids (gguf.GGMLQuantizationType), the kernels' compile-time switch (a jit function
# reads only constexpr globals).
F32, F16, Q4_0, Q5_0, Q8_0 = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(6), tl.constexpr(8)
Q4_K, Q5_K, Q6_K, BF16 = tl.constexpr(12), tl.constexpr(13), tl.constexpr(14), tl.constexpr(30)

# Every supported quant type splits into sub-blocks of 32 weights whose quants are 32 (or 16,
# read twice for the two nibbles) consecutive bytes, so a tile is built as [rows, S, 32] with
# the last axis contiguous in memory (coalesced, vectorisable loads) and the per-sub-block
# scales loaded once as [rows, S, 1] and broadcast. The arithmetic order of every type is
# gguf-py's (fp16 d -> f32, d * sc first, then * q, then - dmin * m), so with fp contraction
# off the dequantized values are bit-identical to gguf.quants.dequantize.


@triton.jit
def _fp16(ptr, mask):
    """The little-endian fp16 at byte pointer `ptr` as f32 (every fp16 field is 2-byte aligned)."""
    return tl.load(ptr.to(tl.pointer_type(tl.float16)), mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _k4_scale_min(p, j, mask):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 bytes at p."""
    jj = j % 4
    b0 = tl.load(p + jj, mask=mask, other=0).to(tl.int32)
    b1 = tl.load(p + jj + 4, mask=mask, other=0).to(tl.int32)
    b2 = tl.load(p + jj + 8, mask=mask, other=0).to(tl.int32)
    low = j < 4
    sc = tl.where(low, b0 & 63, (b2 & 15) | ((b0 >> 6) << 4))
    mn = tl.where(low, b1 & 63, (b2 >> 4) | ((b1 >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _quant_tile(w_ptr, rows, row_mask, row_bytes, sb0, num_sub, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                S: tl.constexpr):  # fmt: skip
    """Rows `rows` [BLOCK_N], sub-blocks sb0 .. sb0+S of a quantized weight -> [BLOCK_N, S, 32] f32."""
    row = (rows.to(tl.int64) * row_bytes)[:, None, None]  # [BN, 1, 1] byte offset of each row
    s = sb0 + tl.arange(0, S)[None, :, None]  # [1, S, 1] sub-block index along the row
    i = tl.arange(0, 32)[None, None, :]  # [1, 1, 32] weight within the sub-block
    smask = row_mask[:, None, None] & (s < num_sub)  # [BN, S, 1]
    qmask = smask & (i < 32)  # [BN, S, 32]
    if QTYPE == Q8_0:  # 34 bytes: d, 32 x int8
        p = w_ptr + row + s * 34
        q = tl.load(p + 2 + i, mask=qmask, other=0).to(tl.int8, bitcast=True)
        w = q.to(tl.float32) * _fp16(p, smask)
    elif QTYPE == Q4_0:  # 18 bytes: d, 16 bytes (weight i < 16: low nibble of byte i, else high of i - 16)
        p = w_ptr + row + s * 18
        b = tl.load(p + 2 + i % 16, mask=qmask, other=0)
        q = ((b >> (4 * (i // 16))) & 15).to(tl.int8) - 8
        w = _fp16(p, smask) * q.to(tl.float32)
    elif QTYPE == Q5_0:  # 22 bytes: d, qh (32 high bits, little-endian), 16 bytes of low nibbles
        p = w_ptr + row + s * 22
        hi = (tl.load(p + 2 + i // 8, mask=qmask, other=0) >> (i % 8)) & 1
        lo = (tl.load(p + 6 + i % 16, mask=qmask, other=0) >> (4 * (i // 16))) & 15
        q = (lo | (hi << 4)).to(tl.int8) - 16
        w = _fp16(p, smask) * q.to(tl.float32)
    elif QTYPE == Q4_K:  # 144 bytes per 256: d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        j = s % 8  # sub-block within the super-block: its nibbles are half (j % 2) of bytes 32 * (j // 2) ...
        p = w_ptr + row + (s // 8) * 144
        sc, mn = _k4_scale_min(p + 4, j, smask)
        q = (tl.load(p + 16 + (j // 2) * 32 + i, mask=qmask, other=0) >> (4 * (j % 2))) & 15
        w = (_fp16(p, smask) * sc) * q.to(tl.float32) - _fp16(p + 2, smask) * mn
    elif QTYPE == Q5_K:  # 176 bytes per 256: d, dmin, scales, qh[32] (bit j of byte i), 128 bytes of nibbles
        j = s % 8
        p = w_ptr + row + (s // 8) * 176
        sc, mn = _k4_scale_min(p + 4, j, smask)
        hi = (tl.load(p + 16 + i, mask=qmask, other=0) >> j) & 1
        lo = (tl.load(p + 48 + (j // 2) * 32 + i, mask=qmask, other=0) >> (4 * (j % 2))) & 15
        w = (_fp16(p, smask) * sc) * (lo | (hi << 4)).to(tl.float32) - _fp16(p + 2, smask) * mn
    else:  # Q6_K, 210 bytes per 256: ql[128], qh[64], int8 scales[16] (one per 16 weights), d
        j = s % 8  # weights 32j..32j+31 of the block: half (j // 4) of 128, quarter r = j % 4 in it
        r = j % 4
        p = w_ptr + row + (s // 8) * 210
        lo = (tl.load(p + (j // 4) * 64 + (r % 2) * 32 + i, mask=qmask, other=0) >> (4 * (r // 2))) & 15
        hi = (tl.load(p + 128 + (j // 4) * 32 + i, mask=qmask, other=0) >> (2 * r)) & 3
        sc = tl.load(p + 192 + 2 * j + i // 16, mask=qmask, other=0).to(tl.int8, bitcast=True)
        q = (lo | (hi << 4)).to(tl.int8) - 32
        w = (_fp16(p + 208, smask) * sc.to(tl.float32)) * q.to(tl.float32)
    return w


@triton.jit
def _weight_tile(w_ptr, rows, row_mask, row_bytes, k0, K, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):  # fmt: skip
    """W[rows, k0:k0+BLOCK_K] as f32 [BLOCK_N, BLOCK_K]; zeros past N and K."""
    if QTYPE == F32 or QTYPE == F16 or QTYPE == BF16:
        k = k0 + tl.arange(0, BLOCK_K)
        mask = row_mask[:, None] & (k < K)[None, :]
        v = tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + k[None, :], mask=mask, other=0)
        if QTYPE == BF16:  # stored as int16 (numpy, so the interpreter, has no bf16): the high half of an f32
            w = (v.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            w = v.to(tl.float32)
    else:
        w = _quant_tile(w_ptr, rows, row_mask, row_bytes, k0 // 32, K // 32, QTYPE, BLOCK_N, BLOCK_K // 32)
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))
    return w


@triton.jit
def dequantize_kernel(w_ptr, index_ptr, out_ptr, R, K, row_bytes, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):  # fmt: skip
    """out[r, :] = W[index[r], :] as f32 for r < R (whole weight or an embedding lookup)."""
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_mask = r < R
    rows = tl.load(index_ptr + r, mask=r_mask, other=0)
    k0 = tl.program_id(1) * BLOCK_K
    w = _weight_tile(w_ptr, rows, r_mask, row_bytes, k0, K, QTYPE, BLOCK_N, BLOCK_K)
    k = k0 + tl.arange(0, BLOCK_K)
    out = out_ptr + r.to(tl.int64)[:, None] * K + k[None, :]
    tl.store(out, w, mask=r_mask[:, None] & (k < K)[None, :])


@triton.jit
def gemv_kernel(x_ptr, w_ptr, y_ptr, T, N, K, row_bytes, QTYPE: tl.constexpr, BLOCK_T: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """y[:T, rows] = x @ W[rows].T for a few tokens: each weight tile is read and dequantized once
    and dotted in f32 with all T tokens (x is T * K * 4 bytes, served from L2 to every program)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    t = tl.arange(0, BLOCK_T)
    t_mask = t < T
    acc = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = _weight_tile(w_ptr, rows, row_mask, row_bytes, k0, K, QTYPE, BLOCK_N, BLOCK_K)  # [BN, BK]
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + t[:, None] * K + k[None, :], mask=t_mask[:, None] & (k < K)[None, :], other=0.0)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)  # [BT, BN]
    y = y_ptr + t[:, None] * N + rows[None, :]
    tl.store(y, acc, mask=t_mask[:, None] & row_mask[None, :])


@triton.jit
def gemm_kernel(x_ptr, w_ptr, y_ptr, T, N, K, row_bytes, QTYPE: tl.constexpr, TILE_DTYPE: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """y = x @ W.T for prompts: dequantized TILE_DTYPE tiles into tl.dot (tensor cores), f32 accumulator.
    Axis 0 walks the tokens, so the programs sharing a weight tile run together and read it from L2."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t_mask = t < T
    row_mask = rows < N
    acc = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = _weight_tile(w_ptr, rows, row_mask, row_bytes, k0, K, QTYPE, BLOCK_N, BLOCK_K).to(TILE_DTYPE)
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + t.to(tl.int64)[:, None] * K + k[None, :], mask=t_mask[:, None] & (k < K)[None, :],
                    other=0.0)  # fmt: skip
        acc = tl.dot(x.to(TILE_DTYPE), tl.trans(w), acc)
    y = y_ptr + t.to(tl.int64)[:, None] * N + rows[None, :]
    tl.store(y, acc, mask=t_mask[:, None] & row_mask[None, :])
