// Functions each ISA translation unit provides (kernels_isa.cpp compiled per level).
#pragma once
#include <stdint.h>

namespace moe {

#define MOE_DECLARE_ISA(ns)                                                                          \
  namespace ns {                                                                                     \
  void dequantize(int type, const uint8_t *src, float *dst, int64_t count);                          \
  void tile_matmul(const float *w_tile, int64_t rows, int64_t k, const float *x, int64_t num_tokens, \
                   int64_t ldx, float *y, int64_t ldy);                                              \
  void rows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k,           \
                   const float *x, int64_t num_tokens, int64_t ldx, float *y, int64_t ldy);          \
  }

MOE_DECLARE_ISA(scalar)
MOE_DECLARE_ISA(avx2)
MOE_DECLARE_ISA(avx512)
#undef MOE_DECLARE_ISA

// Up to this many tokens, rows are streamed through L1 (rows_matmul); beyond, a dequantized
// tile is shared by all tokens (tile_matmul). Both give identical bits.
constexpr int kMaxDecodeTokens = 8;

struct IsaKernels {
  void (*dequantize)(int type, const uint8_t *src, float *dst, int64_t count);
  void (*tile_matmul)(const float *w_tile, int64_t rows, int64_t k, const float *x, int64_t num_tokens,
                      int64_t ldx, float *y, int64_t ldy);
  void (*rows_matmul)(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k, const float *x,
                      int64_t num_tokens, int64_t ldx, float *y, int64_t ldy);
};

const IsaKernels &active_kernels();  // the table of the ISA dispatch.cpp selected

}  // namespace moe
