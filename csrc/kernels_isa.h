// Functions each ISA translation unit provides (kernels_isa.cpp compiled per level).
#pragma once
#include <stdint.h>

namespace moe {

class ThreadPool;

#define MOE_DECLARE_ISA(ns)                                                                          \
  namespace ns {                                                                                     \
  void dequantize(int type, const uint8_t *src, float *dst, int64_t count);                          \
  void tile_matmul(const float *w_tile, int64_t rows, int64_t k, const float *const *x,            \
                   int64_t num_tokens, float *y, int64_t ldy);                                       \
  void rows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k,           \
                   const float *const *x, int64_t num_tokens, float *y, int64_t ldy);                \
  void swiglu(float *g, const float *u, int64_t n);                                                  \
  void geglu(float *g, const float *u, int64_t n);                                                   \
  void scale_add(float *o, const float *y, float w, int64_t n);                                      \
  void attend(const float *q, int64_t group, const float *k, int64_t ldk, const float *v, int64_t ldv, \
              int64_t n, int64_t dh, int64_t dv, float scale, float *scores, float *out);            \
  void rope(const float *x, const float *cos, const float *sin, int64_t half, int neox, float *out);   \
  void rms_norm(const float *x, const float *w, int64_t d, float eps, float *out);                     \
  }

MOE_DECLARE_ISA(scalar)
MOE_DECLARE_ISA(avx2)
MOE_DECLARE_ISA(avx512)
#undef MOE_DECLARE_ISA

// Up to this many tokens, rows are streamed through L1 (rows_matmul); beyond, a dequantized
// tile is shared by all tokens (tile_matmul). Both give identical bits.
constexpr int kMaxDecodeTokens = 8;
// Rows per parallel task: enough to amortise a tile's dequantization, few enough to balance threads.
constexpr int64_t kTileRows = 16;

struct IsaKernels {
  void (*dequantize)(int type, const uint8_t *src, float *dst, int64_t count);
  // x: one pointer per token row (a token gather costs nothing); y[t * ldy + r] for row r.
  void (*tile_matmul)(const float *w_tile, int64_t rows, int64_t k, const float *const *x, int64_t num_tokens,
                      float *y, int64_t ldy);
  void (*rows_matmul)(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k, const float *const *x,
                      int64_t num_tokens, float *y, int64_t ldy);
  // g[j] = silu(g[j]) * u[j], with an exp of plain float operations: the same bits on every ISA.
  void (*swiglu)(float *g, const float *u, int64_t n);
  // g[j] = gelu_tanh(g[j]) * u[j] (Gemma's GeGLU), as x * sigmoid(2 u) with the same exp.
  void (*geglu)(float *g, const float *u, int64_t n);
  void (*scale_add)(float *o, const float *y, float w, int64_t n);  // o[j] += y[j] * w
  // `group` query heads q[group][dh] sharing one kv head, against n positions (key s at k + s *
  // ldk, value s at v + s * ldv): out[h][dv] = softmax(scale * q_h . k_s) . v_s, with
  // scores[group][n] as scratch. Same bits on every ISA and for any grouping.
  void (*attend)(const float *q, int64_t group, const float *k, int64_t ldk, const float *v, int64_t ldv,
                 int64_t n, int64_t dh, int64_t dv, float scale, float *scores, float *out);
  // One head of 2 half values rotated by cos/sin[half]: pairs (i, i + half) for neox, else
  // (2 i, 2 i + 1); torch's multiplies and adds, so its bits.
  void (*rope)(const float *x, const float *cos, const float *sin, int64_t half, int neox, float *out);
  // out[i] = w[i] * (x[i] / sqrt(mean(x^2) + eps)) over one row of d; the same bits on every ISA.
  void (*rms_norm)(const float *x, const float *w, int64_t d, float eps, float *out);
};

// rows x k weights of `type` times num_tokens gathered rows: y[t * ldy + r], any number of rows.
// Picks the streaming or the tile path (identical bits); runs on the calling thread.
void gemm_rows(const IsaKernels &kern, int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k,
               const float *const *x, int64_t num_tokens, float *y, int64_t ldy);

// y [T, n] = x [T, k] times W's n rows in float (moe_matmul), tasks of rows on the pool.
void float_matmul(ThreadPool &pool, const IsaKernels &kern, int type, const uint8_t *w, int64_t n, int64_t k,
                  const float *x, int64_t num_tokens, float *y);

// One token's attention over n positions for all heads (moe_attend): tasks of query-head
// groups on the pool when the work is big enough to pay for waking it. Any grouping, same bits.
void attend_heads(ThreadPool &pool, const IsaKernels &kern, const float *q, int64_t heads, int64_t dh, const float *k,
                  int64_t ldk, const float *v, int64_t ldv, int64_t n, int64_t kv_heads, int64_t dv, float scale,
                  float *out);

const IsaKernels &active_kernels();  // the table of the ISA dispatch.cpp selected

}  // namespace moe
