// The per-ISA kernels. This file is compiled once per ISA level with that level's flags and
// MOE_ISA_NS naming its namespace (CMakeLists.txt); dispatch.cpp picks a table at run time.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_isa.h"
#include "exp_poly.h"
#include "lane_tree.h"
#include "quants/formats.h"
#include "quants/tables.h"

namespace moe {
namespace MOE_ISA_NS {

#include "quants/dequant_impl.h"

// Every dot product below has one canonical order, whatever the ISA or batch shape: 16
// running partial sums (lane i takes elements i, i+16, ...), fused multiply-adds, the tail
// padded with zeros, then the 16 lanes summed left to right. So a token's output does not
// depend on what else is in the batch, and the AVX2 and AVX-512 paths agree bit for bit.
static inline float sum16(const float *lanes) {
  float s = lanes[0];
  for (int i = 1; i < 16; ++i) s += lanes[i];
  return s;
}

#if defined(__AVX512F__)
// rows x tokens dot products at once, sharing every load: y[t][r] = <w[r], x[t]>.
template <int R, int T>
static inline void dots(const float *const *w, const float *const *x, int64_t k, float out[R][T]) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w[r] + i);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_loadu_ps(x[t] + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (i < k) {
    const __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(m, w[r] + i);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x[t] + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  alignas(64) float lanes[16];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      _mm512_store_ps(lanes, acc[r][t]);
      out[r][t] = sum16(lanes);
    }
}
#elif defined(__AVX2__)
template <int R, int T>
static inline void dots(const float *const *w, const float *const *x, int64_t k, float out[R][T]) {
  __m256 lo[R][T], hi[R][T];  // lanes 0-7 and 8-15 of the canonical 16
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
  alignas(32) float wt[R][16], xt[T][16];
  int64_t i = 0;
  for (;; i += 16) {
    const float *wp[R], *xp[T];
    if (i + 16 <= k) {
      for (int r = 0; r < R; ++r) wp[r] = w[r] + i;
      for (int t = 0; t < T; ++t) xp[t] = x[t] + i;
    } else if (i < k) {  // zero-padded tail, as the AVX-512 masked loads
      for (int r = 0; r < R; ++r) {
        memset(wt[r], 0, sizeof wt[r]);
        memcpy(wt[r], w[r] + i, (size_t)(k - i) * 4);
        wp[r] = wt[r];
      }
      for (int t = 0; t < T; ++t) {
        memset(xt[t], 0, sizeof xt[t]);
        memcpy(xt[t], x[t] + i, (size_t)(k - i) * 4);
        xp[t] = xt[t];
      }
    } else {
      break;
    }
    for (int t = 0; t < T; ++t) {
      const __m256 x0 = _mm256_loadu_ps(xp[t]), x1 = _mm256_loadu_ps(xp[t] + 8);
      for (int r = 0; r < R; ++r) {
        lo[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(wp[r]), x0, lo[r][t]);
        hi[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(wp[r] + 8), x1, hi[r][t]);
      }
    }
    if (i + 16 > k) break;
  }
  alignas(32) float lanes[16];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      _mm256_store_ps(lanes, lo[r][t]);
      _mm256_store_ps(lanes + 8, hi[r][t]);
      out[r][t] = sum16(lanes);
    }
}
#else
template <int R, int T>
static inline void dots(const float *const *w, const float *const *x, int64_t k, float out[R][T]) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float lanes[16] = {0};
      for (int64_t i = 0; i < k; ++i) lanes[i % 16] += w[r][i] * x[t][i];  // no FMA here
      out[r][t] = sum16(lanes);
    }
}
#endif

#if defined(__AVX512F__)
constexpr int kRows = 2, kTokens = 4;
#elif defined(__AVX2__)
constexpr int kRows = 1, kTokens = 4;
#else
constexpr int kRows = 1, kTokens = 1;
#endif

template <int R>
static void tile_rows(const float *w_tile, int64_t k, const float *const *x, int64_t num_tokens, float *y,
                      int64_t ldy) {
  const float *w[R];
  for (int r = 0; r < R; ++r) w[r] = w_tile + r * k;
  int64_t t = 0;
  for (; t + kTokens <= num_tokens; t += kTokens) {
    const float *xs[kTokens];
    for (int j = 0; j < kTokens; ++j) xs[j] = x[t + j];
    float out[R][kTokens];
    dots<R, kTokens>(w, xs, k, out);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kTokens; ++j) y[(t + j) * ldy + r] = out[r][j];
  }
  for (; t < num_tokens; ++t) {
    const float *xs[1] = {x[t]};
    float out[R][1];
    dots<R, 1>(w, xs, k, out);
    for (int r = 0; r < R; ++r) y[t * ldy + r] = out[r][0];
  }
}

// Few tokens (decoding): each row is dequantized 256 weights at a time into an L1 buffer and
// consumed at once, never written out whole. The 16 lanes advance exactly as in dots(), so
// this path and the tile path give the same bits.
constexpr int kChunk = 256;

struct Acc16 {
#if defined(__AVX512F__)
  __m512 v;
  void zero() { v = _mm512_setzero_ps(); }
  void fma16(const float *w, const float *x) { v = _mm512_fmadd_ps(_mm512_loadu_ps(w), _mm512_loadu_ps(x), v); }
  void store(float *lanes) const { _mm512_storeu_ps(lanes, v); }
#elif defined(__AVX2__)
  __m256 lo, hi;
  void zero() { lo = hi = _mm256_setzero_ps(); }
  void fma16(const float *w, const float *x) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(x), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(w + 8), _mm256_loadu_ps(x + 8), hi);
  }
  void store(float *lanes) const {
    _mm256_storeu_ps(lanes, lo);
    _mm256_storeu_ps(lanes + 8, hi);
  }
#else
  float l[16];
  void zero() { memset(l, 0, sizeof l); }
  void fma16(const float *w, const float *x) {
    for (int i = 0; i < 16; ++i) l[i] += w[i] * x[i];
  }
  void store(float *lanes) const { memcpy(lanes, l, sizeof l); }
#endif
};

// One token against kRows rows at once: each row keeps its own accumulator and the order of its
// adds, so the bits are rows_matmul's, but the rows' fma chains run side by side (one chain's
// latency held a one-token router, 64 x 2048 float32, to 13 GB/s). float32 rows are read in
// place, not copied into the chunk buffer first.
template <int kRows>
static void rows_matmul_1(int type, const uint8_t *w, int64_t row_bytes, int64_t k, const float *x, float *y) {
  const Geometry g = geometry(type);
  const DequantFn dq = dequant_fn(type);
  alignas(64) float buf[kRows][kChunk];
  alignas(64) float xt[16];
  Acc16 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r].zero();
  for (int64_t c0 = 0; c0 < k; c0 += kChunk) {
    const int64_t n = k - c0 < kChunk ? k - c0 : kChunk;
    const float *wc[kRows];
    for (int r = 0; r < kRows; ++r) {
      const uint8_t *src = w + r * row_bytes + c0 / g.block_size * g.type_size;
      if (type == kF32 && n == kChunk) {
        wc[r] = (const float *)src;
      } else {
        dq(src, buf[r], g.block_size == 1 ? n : n / g.block_size);
        wc[r] = buf[r];
      }
    }
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int r = 0; r < kRows; ++r) acc[r].fma16(wc[r] + j, x + c0 + j);
    if (j < n) {  // zero-padded tail, as rows_matmul's
      const int64_t m = n - j;
      memset(xt, 0, sizeof xt);
      memcpy(xt, x + c0 + j, (size_t)m * 4);
      for (int r = 0; r < kRows; ++r) {
        for (int64_t i = m; i < 16; ++i) buf[r][j + i] = 0.0f;
        acc[r].fma16(buf[r] + j, xt);
      }
    }
  }
  alignas(64) float lanes[16];
  for (int r = 0; r < kRows; ++r) {
    acc[r].store(lanes);
    y[r] = sum16(lanes);
  }
}

void rows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k, const float *const *x,
                 int64_t num_tokens, float *y, int64_t ldy) {
  const Geometry g = geometry(type);
  const DequantFn dq = dequant_fn(type);
  if (num_tokens == 1) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) rows_matmul_1<4>(type, w + r * row_bytes, row_bytes, k, x[0], y + r);
    for (; r < rows; ++r) rows_matmul_1<1>(type, w + r * row_bytes, row_bytes, k, x[0], y + r);
    return;
  }
  alignas(64) float buf[kChunk];
  alignas(64) float xt[kMaxDecodeTokens][16];
  Acc16 acc[kMaxDecodeTokens];
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t *row = w + r * row_bytes;
    for (int64_t t = 0; t < num_tokens; ++t) acc[t].zero();
    for (int64_t c0 = 0; c0 < k; c0 += kChunk) {
      const int64_t n = k - c0 < kChunk ? k - c0 : kChunk;
      dq(row + c0 / g.block_size * g.type_size, buf, g.block_size == 1 ? n : n / g.block_size);
      int64_t j = 0;
      for (; j + 16 <= n; j += 16)
        for (int64_t t = 0; t < num_tokens; ++t) acc[t].fma16(buf + j, x[t] + c0 + j);
      if (j < n) {  // zero-padded tail, as in dots()
        const int64_t m = n - j;
        for (int64_t i = m; i < 16; ++i) buf[j + i] = 0.0f;
        for (int64_t t = 0; t < num_tokens; ++t) {
          memset(xt[t], 0, sizeof xt[t]);
          memcpy(xt[t], x[t] + c0 + j, (size_t)m * 4);
          acc[t].fma16(buf + j, xt[t]);
        }
      }
    }
    alignas(64) float lanes[16];
    for (int64_t t = 0; t < num_tokens; ++t) {
      acc[t].store(lanes);
      y[t * ldy + r] = sum16(lanes);
    }
  }
}

void dequantize(int type, const uint8_t *src, float *dst, int64_t count) { dequant_fn(type)(src, dst, count); }

void swiglu(float *g, const float *u, int64_t n) {
  for (int64_t j = 0; j < n; ++j) g[j] = g[j] / (1.0f + exp_poly(-g[j])) * u[j];
}

// 0.5 x (1 + tanh(c (x + 0.044715 x^3))) = x sigmoid(2 c (...)), c = sqrt(2 / pi).
void geglu(float *g, const float *u, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float x = g[j], inner = 1.5957691216057308f * (x + 0.044715f * (x * x * x));
    g[j] = x / (1.0f + exp_poly(-inner)) * u[j];
  }
}

void scale_add(float *o, const float *y, float w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] += y[j] * w;
}

// 16 floats as one value: GCC's vector extension, element-wise operations that stay in
// registers (a float[16] array the compiler would keep on the stack) and lower to one zmm, two
// ymm or sixteen scalars with the same bits.
typedef float F16x __attribute__((vector_size(64)));

// By reference: a 64-byte vector passed or returned by value changes the ABI below AVX-512.
static inline void load16(F16x &v, const float *p) { memcpy(&v, p, sizeof v); }

static inline float tree16(const F16x &v) {  // lane_tree.h's order
  float l[16];
  memcpy(l, &v, sizeof l);
  return tree_sum16(l);
}

// scale * q . k for kN keys (key r at k + r * ldk) of dh: each in 16 lanes (lane j takes
// elements j, j + 16, ..., the tail padded with zeros, as dots), then tree16. kN keys at once
// only to overlap their additions.
template <int kN>
static inline void key_scores(const float *q, const float *k, int64_t ldk, int64_t dh, float scale, float *out) {
  F16x lanes[kN] = {};
  int64_t i = 0;
  F16x qv, kv;
  for (; i + 16 <= dh; i += 16) {
    load16(qv, q + i);
    for (int r = 0; r < kN; ++r) {
      load16(kv, k + r * ldk + i);
      lanes[r] += qv * kv;
    }
  }
  if (i < dh) {
    float qt[16] = {}, kt[kN][16] = {};
    memcpy(qt, q + i, (size_t)(dh - i) * sizeof(float));
    for (int r = 0; r < kN; ++r) memcpy(kt[r], k + r * ldk + i, (size_t)(dh - i) * sizeof(float));
    load16(qv, qt);
    for (int r = 0; r < kN; ++r) {
      load16(kv, kt[r]);
      lanes[r] += qv * kv;
    }
  }
  for (int r = 0; r < kN; ++r) out[r] = tree16(lanes[r]) * scale;
}

// o[j] += p[s] * v[s * ldv + j] for s in [s0, s1) and j < 16 kW, position by position: the sums
// stay in registers over the positions.
template <int kW>
static inline void weighted_values(const float *p, const float *v, int64_t ldv, int64_t s0, int64_t s1, float *o) {
  F16x acc[kW], vv;
  memcpy(acc, o, sizeof acc);
  for (int64_t s = s0; s < s1; ++s)
    for (int j = 0; j < kW; ++j) {
      load16(vv, v + s * ldv + 16 * j);
      acc[j] += p[s] * vv;
    }
  memcpy(o, acc, sizeof acc);
}

static inline void weighted_value(const float *p, const float *v, int64_t ldv, int64_t s0, int64_t s1, float *o) {
  for (int64_t s = s0; s < s1; ++s) *o += p[s] * v[s * ldv];
}

// Plain lane loops the compiler vectorizes the same way on every ISA (no FMA, no reassociation):
// the q.k dots (key_scores), the exponentials' sum in 16 lanes by position, then each output
// the sum of its weighted values in position order. A head's operations do not depend on the
// others in its group, which only share the reads of each key and value.
void attend(const float *q, int64_t group, const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t n,
            int64_t dh, int64_t dv, float scale, float *scores, float *out) {
  int64_t s0 = 0;
  for (; s0 + 4 <= n; s0 += 4)
    for (int64_t h = 0; h < group; ++h) key_scores<4>(q + h * dh, k + s0 * ldk, ldk, dh, scale, scores + h * n + s0);
  for (; s0 < n; ++s0)
    for (int64_t h = 0; h < group; ++h) key_scores<1>(q + h * dh, k + s0 * ldk, ldk, dh, scale, scores + h * n + s0);
  for (int64_t h = 0; h < group; ++h) {  // softmax of each head's scores, in place
    float *p = scores + h * n, top = -INFINITY, lanes[16] = {0};
    for (int64_t s = 0; s < n; ++s) top = p[s] > top ? p[s] : top;
    int64_t s = 0;
    for (; s + 16 <= n; s += 16)
      for (int j = 0; j < 16; ++j) {
        p[s + j] = exp_poly(p[s + j] - top);
        lanes[j] += p[s + j];
      }
    for (; s < n; ++s) {
      p[s] = exp_poly(p[s] - top);
      lanes[s % 16] += p[s];
    }
    // Weights below 2^-64 are zero. Their products with the values would be subnormal, and each
    // subnormal multiply or add takes a microcode assist (about 100x slower): a peaked softmax
    // made the whole attention 20-30x slower (measured, 128 heads). Next to the largest weight
    // (at least 1/n) such a term is far below a float32 ulp of the sum.
    const float inv = 1.0f / tree_sum16(lanes);
    for (s = 0; s < n; ++s) {
      const float w = p[s] * inv;
      p[s] = w < 0x1p-64f ? 0.0f : w;
    }
  }
  for (int64_t i = 0; i < group * dv; ++i) out[i] = 0.0f;
  constexpr int64_t kPositions = 64;  // per pass over a head's outputs, whose values stay in L1
  for (int64_t s = 0; s < n; s += kPositions) {
    const int64_t s1 = n - s < kPositions ? n : s + kPositions;
    for (int64_t h = 0; h < group; ++h) {
      const float *p = scores + h * n;
      float *o = out + h * dv;
      int64_t d = 0;
      for (; d + 64 <= dv; d += 64) weighted_values<4>(p, v + d, ldv, s, s1, o + d);
      for (; d + 16 <= dv; d += 16) weighted_values<1>(p, v + d, ldv, s, s1, o + d);
      for (; d < dv; ++d) weighted_value(p, v + d, ldv, s, s1, o + d);
    }
  }
}

void rope(const float *x, const float *cos, const float *sin, int64_t half, int neox, float *out) {
  const int64_t second = neox ? half : 1, step = neox ? 1 : 2;  // where pair i's two values lie
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[step * i], b = x[step * i + second];
    out[step * i] = a * cos[i] - b * sin[i];
    out[step * i + second] = b * cos[i] + a * sin[i];
  }
}

// The squares summed in 16 lanes (the tail padded with zeros) and tree16, as the attention dots;
// then torch's operations: x * rsqrt(mean + eps), times the weight.
void rms_norm(const float *x, const float *w, int64_t d, float eps, float *out) {
  F16x lanes = {}, v;
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    load16(v, x + i);
    lanes += v * v;
  }
  if (i < d) {
    float tail[16] = {};
    memcpy(tail, x + i, (size_t)(d - i) * sizeof(float));
    load16(v, tail);
    lanes += v * v;
  }
  const float r = 1.0f / sqrtf(tree16(lanes) / (float)d + eps);
  for (i = 0; i < d; ++i) out[i] = w[i] * (x[i] * r);
}

void tile_matmul(const float *w_tile, int64_t rows, int64_t k, const float *const *x, int64_t num_tokens, float *y,
                 int64_t ldy) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) tile_rows<kRows>(w_tile + r * k, k, x, num_tokens, y + r, ldy);
  for (; r < rows; ++r) tile_rows<1>(w_tile + r * k, k, x, num_tokens, y + r, ldy);
}

}  // namespace MOE_ISA_NS
}  // namespace moe
