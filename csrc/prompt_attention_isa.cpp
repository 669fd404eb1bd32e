// Causal attention of a prompt's queries (many new tokens of one sequence) over its keys, per ISA
// level (compiled as kernels_isa.cpp). Laid out as a GEMM: a call takes up to kRows query rows
// of one head and walks the keys in panels of kPanel, packed transposed by the caller
// (prompt_attention.cpp), with an online softmax between the two products. Scores never leave
// L1, and each key panel is read once for all the rows.
//
// The arithmetic, in one order on every ISA and for any grouping of rows, so a position gets the
// same bits whether its prompt ran in one chunk or several (prefix reuse, chunked prefill):
//   - score s = scale * c, c the fused multiply-add chain q[0] k[0], then + q[d] k[d] for d = 1 ..;
//   - panels of keys 32 b .. 32 b + 31, numbered from position 0, in order; a row takes part in
//     those that hold a key it sees. There m' = max(m, the panel's best score), alpha = e^(m - m')
//     (0 at the row's first panel), p = e^(s - m') (0 for keys it does not see), with weights and
//     alpha below 2^-64 set to 0 (their products would be subnormal, each a microcode assist);
//     l (16 lanes) = l alpha + (p[0:16] + p[16:32]); o = o alpha + 0 (no negative zero, so the
//     zero-weight keys a wider block adds cannot change a bit), then o = fma(p_j, v_j, o) by key;
//   - out = o * (1 / tree_sum16(l)).
// e^x is exp_poly, lane by lane; the per-ISA vector types below only change how many lanes an
// instruction holds.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "exp_poly.h"
#include "lane_tree.h"
#include "prompt_attention.h"

namespace moe {
namespace MOE_ISA_NS {

#if defined(__AVX512F__)
#include "transpose16_impl.h"
#endif

namespace {

// 16 float lanes and the operations the kernel needs, each the same per-lane float operation on
// every ISA: one zmm, two ymm, or sixteen scalars.
#if defined(__AVX512F__)
struct F16 {
  __m512 v;
};
inline F16 load(const float *p) { return {_mm512_loadu_ps(p)}; }
inline F16 load_n(const float *p, int n) { return {_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p)}; }
inline void store(float *p, F16 a) { _mm512_storeu_ps(p, a.v); }
inline void store_n(float *p, F16 a, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), a.v); }
inline F16 splat(float x) { return {_mm512_set1_ps(x)}; }
inline F16 fma(F16 a, F16 b, F16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline F16 mul(F16 a, F16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline F16 add(F16 a, F16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline F16 sub(F16 a, F16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline F16 max(F16 a, F16 b) { return {_mm512_max_ps(a.v, b.v)}; }
inline float max_lane(F16 a) { return _mm512_reduce_max_ps(a.v); }
// Lanes j with lo <= j < hi keep a, the others become `fill`.
inline F16 within(F16 a, int lo, int hi, float fill) {
  lo = lo < 0 ? 0 : lo, hi = hi > 16 ? 16 : hi;
  const __mmask16 m = hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
  return {_mm512_mask_blend_ps(m, _mm512_set1_ps(fill), a.v)};
}
inline F16 zero_below(F16 a, float t) { return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a.v, _mm512_set1_ps(t), _CMP_GE_OQ), a.v)}; }
inline F16 min(F16 a, F16 b) { return {_mm512_min_ps(a.v, b.v)}; }
inline F16 round_even(F16 a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
// 2^n for whole-number lanes n in [-126, 127]: the exponent bits.
inline F16 pow2(F16 n) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23))};
}
constexpr int kQkRows = 8;  // score rows per pass: 16 accumulators of 32
constexpr int kMmRows = 8, kMmVecs = 2;  // fma_matmul's tile
constexpr int kPvRows = 4, kPvVecs = 4;  // output rows x vectors per pass: 16 accumulators, 8 loads
#elif defined(__AVX2__)
struct F16 {
  __m256 lo, hi;
};
inline F16 load(const float *p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline F16 load_n(const float *p, int n) {
  alignas(32) float t[16] = {};
  memcpy(t, p, (size_t)n * sizeof(float));
  return load(t);
}
inline void store(float *p, F16 a) { _mm256_storeu_ps(p, a.lo), _mm256_storeu_ps(p + 8, a.hi); }
inline void store_n(float *p, F16 a, int n) {
  alignas(32) float t[16];
  store(t, a);
  memcpy(p, t, (size_t)n * sizeof(float));
}
inline F16 splat(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline F16 fma(F16 a, F16 b, F16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline F16 mul(F16 a, F16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline F16 add(F16 a, F16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline F16 sub(F16 a, F16 b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
inline F16 max(F16 a, F16 b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
inline float max_lane(F16 a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_max_ps(a.lo, a.hi));
  float m = t[0];
  for (int i = 1; i < 8; ++i) m = t[i] > m ? t[i] : m;
  return m;
}
inline F16 within(F16 a, int lo, int hi, float fill) {
  const __m256i j0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), j1 = _mm256_add_epi32(j0, _mm256_set1_epi32(8));
  const __m256i l = _mm256_set1_epi32(lo - 1), h = _mm256_set1_epi32(hi);
  const __m256 k0 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(j0, l), _mm256_cmpgt_epi32(h, j0)));
  const __m256 k1 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(j1, l), _mm256_cmpgt_epi32(h, j1)));
  const __m256 f = _mm256_set1_ps(fill);
  return {_mm256_blendv_ps(f, a.lo, k0), _mm256_blendv_ps(f, a.hi, k1)};
}
inline F16 zero_below(F16 a, float t) {
  const __m256 tt = _mm256_set1_ps(t);
  return {_mm256_and_ps(a.lo, _mm256_cmp_ps(a.lo, tt, _CMP_GE_OQ)), _mm256_and_ps(a.hi, _mm256_cmp_ps(a.hi, tt, _CMP_GE_OQ))};
}
inline F16 min(F16 a, F16 b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
inline F16 round_even(F16 a) {
  constexpr int kMode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(a.lo, kMode), _mm256_round_ps(a.hi, kMode)};
}
inline __m256 pow2_8(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline F16 pow2(F16 n) { return {pow2_8(n.lo), pow2_8(n.hi)}; }
constexpr int kQkRows = 2;  // 16 ymm registers: 8 accumulators and the key panel row
constexpr int kPvRows = 2, kPvVecs = 2;
constexpr int kMmRows = 2, kMmVecs = 2;
#else
struct F16 {
  float l[16];
};
inline F16 load(const float *p) {
  F16 a;
  memcpy(a.l, p, sizeof a.l);
  return a;
}
inline F16 load_n(const float *p, int n) {
  F16 a = {};
  memcpy(a.l, p, (size_t)n * sizeof(float));
  return a;
}
inline void store(float *p, F16 a) { memcpy(p, a.l, sizeof a.l); }
inline void store_n(float *p, F16 a, int n) { memcpy(p, a.l, (size_t)n * sizeof(float)); }
inline F16 splat(float x) {
  F16 a;
  for (float &v : a.l) v = x;
  return a;
}
inline F16 fma(F16 a, F16 b, F16 c) {
  for (int i = 0; i < 16; ++i) c.l[i] = fmaf(a.l[i], b.l[i], c.l[i]);
  return c;
}
inline F16 mul(F16 a, F16 b) {
  for (int i = 0; i < 16; ++i) a.l[i] = a.l[i] * b.l[i];
  return a;
}
inline F16 add(F16 a, F16 b) {
  for (int i = 0; i < 16; ++i) a.l[i] = a.l[i] + b.l[i];
  return a;
}
inline F16 sub(F16 a, F16 b) {
  for (int i = 0; i < 16; ++i) a.l[i] = a.l[i] - b.l[i];
  return a;
}
inline F16 max(F16 a, F16 b) {  // maxps: a where a > b, else b
  for (int i = 0; i < 16; ++i) a.l[i] = a.l[i] > b.l[i] ? a.l[i] : b.l[i];
  return a;
}
inline float max_lane(F16 a) {
  float m = a.l[0];
  for (int i = 1; i < 16; ++i) m = a.l[i] > m ? a.l[i] : m;
  return m;
}
inline F16 within(F16 a, int lo, int hi, float fill) {
  for (int i = 0; i < 16; ++i) a.l[i] = i >= lo && i < hi ? a.l[i] : fill;
  return a;
}
inline F16 zero_below(F16 a, float t) {
  for (float &v : a.l) v = v >= t ? v : 0.0f;
  return a;
}
inline F16 min(F16 a, F16 b) {  // minps: a where a < b, else b
  for (int i = 0; i < 16; ++i) a.l[i] = a.l[i] < b.l[i] ? a.l[i] : b.l[i];
  return a;
}
inline F16 round_even(F16 a) {
  for (float &v : a.l) v = nearbyintf(v);
  return a;
}
inline F16 pow2(F16 n) {
  for (float &v : n.l) {
    const int32_t bits = ((int32_t)v + 127) << 23;
    memcpy(&v, &bits, sizeof v);
  }
  return n;
}
constexpr int kQkRows = 8;
constexpr int kPvRows = 1, kPvVecs = 8;
constexpr int kMmRows = 8, kMmVecs = 2;
#endif

constexpr float kTiny = 0x1p-64f;  // weights below are 0 (see the top of the file)

// exp_poly (exp_poly.h) on every lane: its operations in its order.
inline F16 exp16(F16 a) {
  const F16 x = min(max(a, splat(-87.0f)), splat(88.0f));
  const F16 n = round_even(mul(x, splat(kExpLog2e)));
  const F16 r = sub(sub(x, mul(n, splat(kExpLn2Hi))), mul(n, splat(kExpLn2Lo)));
  F16 p = splat(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = add(mul(p, r), splat(kExpPoly[i]));
  return mul(add(add(mul(p, mul(r, r)), r), splat(1.0f)), pow2(n));
}

// acc[r][w] += the fused multiply-add chains of a[r * ar + k * ak] * b[k * ldb + 16 w + j] over k
// in [k0, k1), for kR rows and kW vectors of columns, the last `tail` wide (16: whole): the
// scores (q rows against a key panel) and fma_matmul's tiles.
template <int kR, int kW>
inline __attribute__((always_inline)) void fma_chains(const float *a, int64_t ar, int64_t ak, const float *b, int64_t ldb,
                                                      int64_t k0, int64_t k1, int tail, F16 (*acc)[kW]) {
  for (int64_t k = k0; k < k1; ++k) {
    F16 bv[kW];
    for (int w = 0; w < kW; ++w) bv[w] = w + 1 < kW || tail == 16 ? load(b + k * ldb + 16 * w) : load_n(b + k * ldb + 16 * w, tail);
    for (int r = 0; r < kR; ++r) {
      const F16 x = splat(a[r * ar + k * ak]);
      for (int w = 0; w < kW; ++w) acc[r][w] = fma(x, bv[w], acc[r][w]);
    }
  }
}

// s[r] = the scores of kR query rows (qt[d * kRows + r]) against a panel's 32 keys (panel[d * 32 + j]).
template <int kR>
inline __attribute__((always_inline)) void panel_scores(const float *qt, const float *panel, int64_t dh, F16 (*s)[2]) {
  F16 acc[kR][2];
  for (int r = 0; r < kR; ++r) acc[r][0] = acc[r][1] = splat(0.0f);
  fma_chains<kR, 2>(qt, 1, kRows, panel, kPanel, 0, dh, 16, acc);
  for (int r = 0; r < kR; ++r) s[r][0] = acc[r][0], s[r][1] = acc[r][1];
}

// o[r][c0 ..] = o alpha_r + 0, then + p[r][j] v_j for keys j in [j0, j1) (value j at v + j * ldv),
// over kW vectors of 16 columns from c0, the last one `tail` columns wide (16 = whole).
template <int kR, int kW>
inline __attribute__((always_inline)) void panel_values(const float (*p)[kPanel], const float *alpha, const float *v,
                                                        int64_t ldv, int j0, int j1, int64_t c0, int tail, float *o,
                                                        int64_t ldo) {
  F16 acc[kR][kW];
  for (int r = 0; r < kR; ++r)
    for (int w = 0; w < kW; ++w) acc[r][w] = load(o + r * ldo + c0 + 16 * w);
  for (int r = 0; r < kR; ++r)
    if (alpha[r] != 1.0f)
      for (int w = 0; w < kW; ++w) acc[r][w] = add(mul(acc[r][w], splat(alpha[r])), splat(0.0f));
  for (int j = j0; j < j1; ++j) {
    F16 vv[kW];
    for (int w = 0; w < kW; ++w)
      vv[w] = w + 1 < kW || tail == 16 ? load(v + j * ldv + c0 + 16 * w) : load_n(v + j * ldv + c0 + 16 * w, tail);
    for (int r = 0; r < kR; ++r) {
      const F16 pj = splat(p[r][j]);
      for (int w = 0; w < kW; ++w) acc[r][w] = fma(pj, vv[w], acc[r][w]);
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int w = 0; w < kW; ++w) store(o + r * ldo + c0 + 16 * w, acc[r][w]);
}

// Rows [r0, r0 + kR) over every column: whole passes of kPvVecs vectors, then one vector at a time.
template <int kR>
inline void rows_values(const float (*p)[kPanel], const float *alpha, const float *v, int64_t ldv, int j0, int j1,
                        int64_t dv, float *o, int64_t ldo) {
  int64_t c = 0;
  for (; c + 16 * kPvVecs <= dv; c += 16 * kPvVecs) panel_values<kR, kPvVecs>(p, alpha, v, ldv, j0, j1, c, 16, o, ldo);
  for (; c < dv; c += 16) {
    const int tail = dv - c < 16 ? (int)(dv - c) : 16;
    panel_values<kR, 1>(p, alpha, v, ldv, j0, j1, c, tail, o, ldo);
  }
}

}  // namespace

void transpose(const float *src, int64_t lds, int64_t rows, int64_t rows_out, int64_t cols, float *dst, int64_t ldd) {
#if defined(__AVX512F__)
  // 16 x 16 blocks, transposed in registers.
  for (int64_t r0 = 0; r0 < rows_out; r0 += 16) {
    const int nr = rows_out - r0 < 16 ? (int)(rows_out - r0) : 16;
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int nc = cols - c0 < 16 ? (int)(cols - c0) : 16;
      __m512i v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = r0 + i < rows ? _mm512_castps_si512(_mm512_maskz_loadu_ps((__mmask16)((1u << nc) - 1), src + (r0 + i) * lds + c0))
                             : _mm512_setzero_si512();
      transpose16(v);
      for (int i = 0; i < nc; ++i) _mm512_mask_storeu_epi32(dst + (c0 + i) * ldd + r0, (__mmask16)((1u << nr) - 1), v[i]);
    }
  }
#else
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows_out; ++r) dst[c * ldd + r] = r < rows ? src[r * lds + c] : 0.0f;
#endif
}

namespace {

// c[r][j] for kR rows and kW vectors of columns from j = 0, the last `tail` wide (16: whole):
// the chains of a[r * ar + k] * b[k * ldb + j] over k in [k0, k1), continued from c (or from 0).
template <int kR, int kW>
inline __attribute__((always_inline)) void mm_tile(const float *a, int64_t ar, const float *b, int64_t ldb, int64_t k0,
                                                   int64_t k1, bool fresh, int tail, float *c, int64_t ldc) {
  F16 acc[kR][kW];
  for (int r = 0; r < kR; ++r)
    for (int w = 0; w < kW; ++w)
      acc[r][w] = fresh ? splat(0.0f) : w + 1 < kW || tail == 16 ? load(c + r * ldc + 16 * w) : load_n(c + r * ldc + 16 * w, tail);
  fma_chains<kR, kW>(a, ar, 1, b, ldb, k0, k1, tail, acc);
  for (int r = 0; r < kR; ++r)
    for (int w = 0; w < kW; ++w) {
      if (w + 1 < kW || tail == 16)
        store(c + r * ldc + 16 * w, acc[r][w]);
      else
        store_n(c + r * ldc + 16 * w, acc[r][w], tail);
    }
}

template <int kR>
inline void mm_rows(const float *a, int64_t ar, const float *b, int64_t ldb, int64_t k0, int64_t k1, int64_t cols,
                    float *c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 16 * kMmVecs <= cols; j += 16 * kMmVecs) mm_tile<kR, kMmVecs>(a, ar, b + j, ldb, k0, k1, k0 == 0, 16, c + j, ldc);
  for (; j < cols; j += 16)
    mm_tile<kR, 1>(a, ar, b + j, ldb, k0, k1, k0 == 0, cols - j < 16 ? (int)(cols - j) : 16, c + j, ldc);
}

}  // namespace

void fma_matmul(const float *a, int64_t ar, const float *b, int64_t ldb, int64_t rows, int64_t K, int64_t cols, float *c,
                int64_t ldc) {
  constexpr int64_t kKc = 128;  // rows of b per pass (16 KB at 32 columns): in L1 for every row tile
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t k1 = K - k0 < kKc ? K : k0 + kKc;
    int64_t r = 0;
    for (; r + kMmRows <= rows; r += kMmRows) mm_rows<kMmRows>(a + r * ar, ar, b, ldb, k0, k1, cols, c + r * ldc, ldc);
    for (; r < rows; ++r) mm_rows<1>(a + r * ar, ar, b, ldb, k0, k1, cols, c + r * ldc, ldc);
  }
}

void attend_prompt_rows(const PromptRows &a, float *scratch) {
  const int64_t dh = a.dh, dv = a.dv, ldo = (dv + 15) / 16 * 16;
  float *qt = scratch;                                      // [dh][kRows], rows past a.rows zero
  float *o = qt + dh * kRows;                               // [kRows][ldo]
  float(*p)[kPanel] = (float(*)[kPanel])(o + kRows * ldo);  // [kRows][kPanel]
  const int rows = (int)a.rows;
  for (int64_t d = 0; d < dh; ++d)
    for (int r = 0; r < kRows; ++r) qt[d * kRows + r] = r < rows ? a.q[r * a.ldq + d] : 0.0f;
  memset(o, 0, sizeof(float) * kRows * ldo);
  // Per row (one lane each, so the exponentials of all rows' rescales run as one vector): the
  // running maximum, the panel's best score, the rescale.
  alignas(64) float m[16], top[16], alpha[16];
  F16 l[kRows];
  int64_t lo[kRows], hi[kRows];  // row r sees keys lo[r] .. hi[r]
  for (int r = 0; r < 16; ++r) m[r] = -INFINITY;
  for (int r = 0; r < kRows; ++r) {
    l[r] = splat(0.0f);
    hi[r] = a.pos0 + r;
    lo[r] = a.window > 0 && hi[r] + 1 > a.window ? hi[r] + 1 - a.window : 0;
  }
  for (int64_t b = lo[0] / kPanel; b * kPanel <= hi[rows - 1]; ++b) {
    const int64_t k0 = b * kPanel;
    F16 s[kRows][2];
    for (int r = 0; r < kRows; r += kQkRows) panel_scores<kQkRows>(qt + r, a.kt + b * dh * kPanel, dh, s + r);
    int first[kRows], end[kRows], j0 = kPanel, j1 = 0;  // the keys of the panel row r sees; some row sees
    for (int r = 0; r < 16; ++r) top[r] = -INFINITY;
    for (int r = 0; r < rows; ++r) {
      first[r] = lo[r] > k0 ? (int)(lo[r] - k0) : 0;
      end[r] = hi[r] + 1 - k0 < kPanel ? (int)(hi[r] + 1 - k0) : kPanel;
      if (first[r] >= end[r]) continue;
      j0 = first[r] < j0 ? first[r] : j0, j1 = end[r] > j1 ? end[r] : j1;
      s[r][0] = within(mul(s[r][0], splat(a.scale)), first[r], end[r], -INFINITY);
      s[r][1] = within(mul(s[r][1], splat(a.scale)), first[r] - 16, end[r] - 16, -INFINITY);
      top[r] = max_lane(max(s[r][0], s[r][1]));
    }
    // The rows' rescales at once. A row's first panel: e^(-inf - m') clamps to e^-87, below
    // 2^-64, so alpha is 0.
    const F16 mv = load(m), next = max(mv, load(top));
    store(alpha, zero_below(exp16(sub(mv, next)), kTiny));
    store(m, next);
    for (int r = 0; r < rows; ++r) {
      if (first[r] >= end[r]) {  // no key of this panel for this row: its state stays as it is
        alpha[r] = 1.0f;  // its m is unchanged: max(m, -inf)
        memset(p[r], 0, sizeof p[r]);
        continue;
      }
      const F16 shift = splat(m[r]);
      const F16 p0 = within(zero_below(exp16(sub(s[r][0], shift)), kTiny), first[r], end[r], 0.0f);
      const F16 p1 = within(zero_below(exp16(sub(s[r][1], shift)), kTiny), first[r] - 16, end[r] - 16, 0.0f);
      store(p[r], p0), store(p[r] + 16, p1);
      l[r] = add(mul(l[r], splat(alpha[r])), add(p0, p1));
    }
    const float *v = a.v + k0 * a.ldv;
    int r = 0;
    for (; r + kPvRows <= rows; r += kPvRows) rows_values<kPvRows>(p + r, alpha + r, v, a.ldv, j0, j1, dv, o + r * ldo, ldo);
    for (; r < rows; ++r) rows_values<1>(p + r, alpha + r, v, a.ldv, j0, j1, dv, o + r * ldo, ldo);
  }
  for (int r = 0; r < rows; ++r) {
    alignas(64) float lanes[16];
    store(lanes, l[r]);
    const float inv = 1.0f / tree_sum16(lanes);
    for (int64_t c = 0; c < dv; ++c) a.out[r * a.ldout + c] = o[r * ldo + c] * inv;
  }
}

}  // namespace MOE_ISA_NS
}  // namespace moe
