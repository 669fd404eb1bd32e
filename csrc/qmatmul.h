// Integer-activation matmul: activations quantized once (quants/qact.h), weights unpacked to
// int8 per 256-chunk (quants/unpack_impl.h), integer dot products per 16-weight sub-block.
#pragma once
#include <stdint.h>

#include "quants/qact.h"

namespace moe {

class ThreadPool;

// Rows per task when n rows are shared by `threads`: about four tasks per thread, each a long
// contiguous read. A thread that jumps to a far-off task restarts the hardware prefetcher: with
// 16-row tasks two threads reached only 60 % of the DRAM bandwidth they reach with a few big
// tasks. A multiple of 16, never below 16.
inline int64_t rows_per_task(int64_t n, int threads) {
  const int64_t target = n / (4 * (int64_t)threads);
  return target < 16 ? 16 : (target + 15) / 16 * 16;
}

#define MOE_DECLARE_QISA(ns)                                                                               \
  namespace ns {                                                                                           \
  void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,          \
                    int64_t num_tokens, float *y, int64_t ldy);                                            \
  void quantize_act_row(int kind, const float *x, int64_t t, const QActView &v);                             \
  }
MOE_DECLARE_QISA(scalar)
MOE_DECLARE_QISA(avx2)
MOE_DECLARE_QISA(avx512)
#undef MOE_DECLARE_QISA

// The AMX level's row kernel (qmatmul_amx.cpp): int8 tiles for enough tokens, else
// avx512::qrows_matmul; the same bits either way. Its activations are the avx512 quantizer's.
namespace amx {
void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                  float *y, int64_t ldy);
}

// The active ISA's row kernel: rows x k weights of `type` against num_tokens quantized
// activations (a view, token t at slot t), y[t * ldy + r]. Runs on the calling thread.
using QRowsFn = void (*)(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                         int64_t num_tokens, float *y, int64_t ldy);

// One ISA's integer-path kernels: the row kernel and the activation quantizer (the same quants
// on every ISA).
struct QKernels {
  QRowsFn rows;
  QuantizeRowFn quantize;
};
QKernels q_kernels(int isa);

// Slots s0.. of a view (tokens s0, s0 + 1, ...), without a copy.
QActView act_slots(const QActView &v, int64_t s0);

// rows_fn over num_tokens tokens of `planes` activation planes each (a holds planes *
// num_tokens slots, qact.h's quantize_planes): the planes run as tokens, so each weight row is
// unpacked once for all of them, and y[t * ldy + r] is the sum of token t's plane products in
// plane order. One plane is rows_fn itself.
void qrows_planes(QRowsFn rows_fn, int planes, int type, const uint8_t *w, int64_t row_bytes, int64_t rows,
                  const QActView &a, int64_t num_tokens, float *y, int64_t ldy);

// H independent matmuls in one call (H = 1: a plain matmul): W is [H, n, k] in GGUF blocks,
// x [T, H, k], y[t, h, r] = <W[h] row r, x[t, h]>, x quantized as act_kind_for(type) in
// `planes` planes (qact.h). Quantized weight types only. Same bits for every ISA, thread count
// and batch composition.
// scratch: activation buffers reused from call to call (one per activation format), so a
// prompt-sized call maps no fresh pages.
void qmatmul(ThreadPool &pool, int isa, int planes, int type, const uint8_t *w, int64_t heads, int64_t n, int64_t k,
             const float *x, int64_t num_tokens, float *y, QActBuffers *scratch);

// Several weights over the same input x [T, k] in one call: x is quantized once per activation
// format they need, and all their row blocks share the pool. ys[i] is [T, n[i]]. The same bits
// as one qmatmul per weight.
void qmatmul_many(ThreadPool &pool, int isa, int planes, int count, const int *types, const uint8_t *const *w, const int64_t *n,
                  int64_t k, const float *x, int64_t num_tokens, float *const *ys, QActBuffers *scratch);

}  // namespace moe
