// Per-ISA part of the integer-activation matmul (compiled once per ISA level, as
// kernels_isa.cpp). Only how the 16 sub-block integer sums of a chunk are computed differs
// between ISAs, and integers are exact; the float combination and the final lane sums are the
// same operations in the same order everywhere, so every ISA gives the same bits.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <vector>

#include "lane_tree.h"
#include "qmatmul.h"
#include "quants/formats.h"
#include "quants/tables.h"

namespace moe {
namespace MOE_ISA_NS {

#include "quants/dequant_impl.h"
#include "quants/qact_impl.h"
#include "quants/unpack_impl.h"
#if defined(__AVX512VNNI__)
#include "quants/load_regs_impl.h"
#endif

// Software prefetch of the `bytes` that lie kPrefetchBytes past `p`: a task's rows are one
// contiguous stream, and the hardware prefetcher alone leaves DRAM latency exposed.
constexpr int64_t kPrefetchBytes = 8192;

static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + kPrefetchBytes + o);
}

// isum[s] = sum over sub-block s (16 quants) of wq * aq, for the portable row_dots (the AVX-512
// kernels read the packed activations instead).
static inline __attribute__((always_inline)) void isums(const int8_t *wq, const int8_t *aq, int32_t *isum) {
#if defined(__AVX2__)
  // |w| * (a signed by w): |w| <= 128 and |a| <= 127, so maddubs's int16 pairs cannot saturate.
  // Vector i holds sub-blocks 2i (low half) and 2i+1; two hadds per four vectors, then a permute.
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int h = 0; h < 2; ++h) {
    __m256i v[4];
    for (int i = 0; i < 4; ++i) {
      const __m256i w = _mm256_loadu_si256((const __m256i *)(wq + 128 * h + 32 * i));
      const __m256i a = _mm256_loadu_si256((const __m256i *)(aq + 128 * h + 32 * i));
      v[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w)), ones);
    }
    const __m256i r = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i *)(isum + 8 * h), _mm256_permutevar8x32_epi32(r, order));
  }
#else
  for (int s = 0; s < 16; ++s) {
    int32_t sum = 0;
    for (int j = 0; j < 16; ++j) sum += (int32_t)wq[16 * s + j] * aq[16 * s + j];
    isum[s] = sum;
  }
#endif
}

// acc[s] += (ad[s] * ws[s]) * isum[s] + wo[s] * as[s], llama.cpp's (d_w * d_a) * sumi + m_w * s_a
// (the offset term only for types that have one): plain multiplies and adds (the build has
// -ffp-contract=off), lane by lane, identical on every ISA.
template <bool kOffsets>
static inline void combine(float *acc, const float *ad, const float *ws, const float *wo, const int32_t *isum,
                           const float *as) {
  for (int s = 0; s < 16; ++s) {
    const float x = (ad[s] * ws[s]) * (float)isum[s];
    acc[s] += kOffsets ? x + wo[s] * as[s] : x;
  }
}

// The types whose scales and offsets come per 32 weights and that take Q8_K activations: their
// chunks go in pairs (PackedPair), each 32-sub-block summed whole before one float combination,
// half the float work per dot product of the per-16 types (the GEMM is bound by that work).
constexpr bool pair_type(int type) { return type == kQ4_K || type == kQ5_K || type == kIQ2_XXS || type == kIQ1_S; }

// combine() for a pair of chunks (PackedPair's lanes), from their per-16 values: sums of the two
// halves of each 32 (integers exact; asums even half first, as the AVX-512 quantizer adds them),
// and the first half's scales. A missing odd chunk (is[1] null) adds exact zeros.
template <bool kOffsets>
static inline void combine_pair(float *acc, const float *const ad[2], const float *const ws[2], const float *const wo[2],
                                const int32_t *const is[2], const float *const as[2]) {
  alignas(64) float pad[kSubQ], pws[kSubQ], pwo[kSubQ], pas[kSubQ];
  alignas(64) int32_t pis[kSubQ];
  for (int L = 0; L < kSubQ; ++L) {
    const int h = pair_lane_chunk(L), s = pair_lane_sub16(L);
    const bool zero = is[h] == nullptr;
    pad[L] = zero ? 0.0f : ad[h][s];
    pws[L] = zero ? 0.0f : ws[h][s];
    pwo[L] = zero ? 0.0f : wo[h][s];
    pis[L] = zero ? 0 : is[h][s] + is[h][s + 1];
    pas[L] = zero ? 0.0f : as[h][s] + as[h][s + 1];
  }
  combine<kOffsets>(acc, pad, pws, pwo, pis, pas);
}

constexpr int kTokenTile = 8;

// Few tokens take the stream paths, which re-read every token's activations for each row: while
// those stay well inside L1 (48 KB; 384 B a token and chunk), the stream wins; past about 36 KB
// the GEMM does (8 tokens of a 4096-wide row, 48 KB, ran 1.4-2x slower streamed, measured).
static inline bool stream_tokens(int64_t num_tokens, int64_t chunks) {
  return num_tokens <= kTokenTile && num_tokens * chunks <= 96;
}

// f(std::integral_constant<int, n>) for n = num_tokens (1 to kTokenTile, as stream_tokens
// allows): the few-token paths keep their accumulators in registers only with a compile-time
// count (a runtime one kept them on the stack, and each chunk's add waited on the last one's
// store: one token 15 % slower, two 15 %, four 8 %, measured).
template <typename F>
static inline void with_token_count(int64_t num_tokens, F &&f) {
  static_assert(kTokenTile == 8, "a case per token count up to kTokenTile");
  switch (num_tokens) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

struct Unpacker {
  UnpackFn fn;
  int64_t blocks;
  int per_chunk, type_size;
  bool offsets;  // has_offsets(type)
  // Chunk c of a row into q[256] and ws/wo[16] (zeros past the row's last block).
  inline void operator()(const uint8_t *row, int64_t c, int8_t *q, float *ws, float *wo) const {
    const int64_t nblk = blocks - c * per_chunk < per_chunk ? blocks - c * per_chunk : per_chunk;
    memset(ws, 0, 2 * kSubQ * sizeof(float));
    if (nblk < per_chunk) memset(q, 0, kChunkQ);
    fn(row + c * per_chunk * type_size, (int)nblk, q, ws, wo);
  }
};

static inline void finish(const float (*acc)[kSubQ], int64_t nt, float *y, int64_t ldy) {
  for (int64_t j = 0; j < nt; ++j) y[j * ldy] = tree_sum16(acc[j]);  // as fold's shuffles
}

// A thread's scratch of n objects of V (buffer `kSlot`; whole cache lines, 64-byte aligned),
// kept and grown between calls; one thread-local lookup per call, not one per access. Cache-line
// structs, not std::vector<__m512>: a template argument drops the vector type's attributes.
struct alignas(64) CacheLine {
  uint8_t bytes[64];
};
template <typename V, int kSlot>
static V *thread_vectors(int64_t n) {
  static_assert(sizeof(V) % sizeof(CacheLine) == 0, "whole cache lines");
  thread_local std::vector<CacheLine> lines;
  n *= (int64_t)(sizeof(V) / sizeof(CacheLine));
  if ((int64_t)lines.size() < n) lines.resize(n);
  return reinterpret_cast<V *>(lines.data());  // __m512 and __m512i may alias anything
}

#if defined(__AVX512VNNI__)
// Sub-block sums of interleaved unsigned weights against one token's interleaved quants: the
// dpbusd of the four vectors leave sub-block s whole in lane s, added to `init` (where the caller
// takes off what an offset in the weight bytes added). Two chains of two, not one of four: half
// the latency, and the few-token paths are bound by it.
static inline __attribute__((always_inline)) __m512i chain_dots(const __m512i *q, const int8_t *aqi, __m512i init) {
  const __m512i a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, q[0], _mm512_loadu_si512(aqi)), q[1],
                                        _mm512_loadu_si512(aqi + 64));
  const __m512i b = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q[2], _mm512_loadu_si512(aqi + 128)),
                                        q[3], _mm512_loadu_si512(aqi + 192));
  return _mm512_add_epi32(a, b);
}

// -(bsum << kShift), the integer a weight offset of 2^kShift adds to each sub-block sum, from
// bias = -128 bsum: an arithmetic shift, exact since bias is a multiple of 128.
template <int kShift>
static inline __attribute__((always_inline)) __m512i offset_init(const PackedChunk &pk) {
  const __m512i bias = _mm512_load_si512(pk.bias);
  return kShift == 7 ? bias : kShift == 0 ? _mm512_setzero_si512() : _mm512_srai_epi32(bias, 7 - kShift);
}

// combine() on registers, the same operations in the same order per lane.
template <bool kOffsets>
static inline __attribute__((always_inline)) __m512 combine_regs(__m512 acc, __m512 ad, __m512 ws, __m512 wo,
                                                                __m512i isum, __m512 as) {
  const __m512 x = _mm512_mul_ps(_mm512_mul_ps(ad, ws), _mm512_cvtepi32_ps(isum));
  return _mm512_add_ps(acc, kOffsets ? _mm512_add_ps(x, _mm512_mul_ps(wo, as)) : x);
}

// The activation side of combine_regs for token t and chunk c: its scale and, for types with
// offsets, its asum.
struct TokenScales {
  __m512 ad, as;
  template <bool kOffsets>
  static inline __attribute__((always_inline)) TokenScales load(const QActView &a, int64_t t, int64_t c) {
    const int64_t i = t * a.chunks + c;
    return {_mm512_load_ps(a.packed[i].scale), kOffsets ? _mm512_loadu_ps(a.asum + i * kSubQ) : _mm512_setzero_ps()};
  }
};

// Keeps v in a register: the compiler would otherwise fold its load into every instruction that
// reads it, one load per use, and the GEMM is bound by loads.
template <typename V>
static inline __attribute__((always_inline)) void in_register(V &v) {
  __asm__("" : "+v"(v));
}

// tree_sum16 (lane_tree.h) for kN (8 or 16) accumulators at once: folded in halves, 256-bit
// halves added, then 128-bit quarters, pairs and single lanes, each level joining two vectors'
// folds into one (30 shuffles and 15 adds for 16 sums). Accumulator i's sum ends in lane 4 (i % 4) + i / 4 (for 8,
// lanes 4 k + 2 and 4 k + 3 repeat 4 k and 4 k + 1).
template <int kN>
static inline __attribute__((always_inline)) __m512 fold(const __m512 *v) {
  static_assert(kN == 8 || kN == 16, "8 or 16 accumulators");
  __m512 u[kN / 2], w[kN / 4], x[2];
  for (int i = 0; i < kN / 2; ++i)  // lanes j and j + 8
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < kN / 4; ++i)  // + 4
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  for (int i = 0; i < kN / 8; ++i)  // + 2
    x[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  if (kN == 8) x[1] = x[0];
  return _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], 0x88), _mm512_shuffle_ps(x[0], x[1], 0xDD));  // + 1
}

// Two rows by four tokens (acc[row * ld + token]) into y[token * ldy + row]: fold<8> leaves
// token j's two sums at the bottom of quarter j, one 8-byte store each.
static inline __attribute__((always_inline)) void finish_2x4(const __m512 *acc, int64_t ld, float *y, int64_t ldy) {
  const __m512 v[8] = {acc[0], acc[1], acc[2], acc[3], acc[ld], acc[ld + 1], acc[ld + 2], acc[ld + 3]};
  const __m512 sums = fold<8>(v);
  _mm_storel_pi((__m64 *)y, _mm512_castps512_ps128(sums));
  _mm_storel_pi((__m64 *)(y + ldy), _mm512_extractf32x4_ps(sums, 1));
  _mm_storel_pi((__m64 *)(y + 2 * ldy), _mm512_extractf32x4_ps(sums, 2));
  _mm_storel_pi((__m64 *)(y + 3 * ldy), _mm512_extractf32x4_ps(sums, 3));
}

// Accumulators in any order and places, 16 at a time through fold<16>. Whatever is pending is
// written by flush().
class Finisher {
  __m512 acc_[16];
  float *dst_[16];
  int n_ = 0;

 public:
  void add(__m512 acc, float *dst) {
    acc_[n_] = acc;
    dst_[n_] = dst;
    if (++n_ == 16) flush();
  }
  void flush() {
    if (n_ == 0) return;
    for (int i = n_; i < 16; ++i) acc_[i] = _mm512_setzero_ps();
    alignas(64) float out[16];
    _mm512_store_ps(out, fold<16>(acc_));
    for (int i = 0; i < n_; ++i) {
      *dst_[i] = out[4 * (i % 4) + i / 4];
      __asm__("" ::: "memory");  // keeps the stores scalar: a vscatterqps of 16 is far slower
    }
    n_ = 0;
  }
};

// Few tokens of a type with a register loader (quants/load_regs_impl.h): each chunk of a row
// goes from its blocks into registers once and meets every token there.
// kTokens tokens (see with_token_count).
template <Offset kOff, bool kOffsets, auto kLoad, int kTokens>  // kLoad a compile-time function: inlined
static void stream_regs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, float *y, int64_t ldy) {
  constexpr int64_t nt = kTokens;
  __m512 acc[kTokens];
  Finisher finish;
  const int64_t chunk_bytes = row_bytes / a.chunks;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < a.chunks; ++c) {
      prefetch_ahead(w + r * row_bytes + c * chunk_bytes, chunk_bytes);
      __m512 ws, wo;
      __m512i q[4];
      kLoad(a, w + r * row_bytes, c, &ws, &wo, q);
      for (int64_t t = 0; t < nt; ++t) {
        const PackedChunk &pk = a.packed[t * a.chunks + c];
        const __m512i isum = chain_dots(q, pk.qi, offset_init<(int)kOff>(pk));
        const TokenScales ts = TokenScales::load<kOffsets>(a, t, c);
        acc[t] = combine_regs<kOffsets>(acc[t], ts.ad, ws, wo, isum, ts.as);
      }
    }
    for (int64_t t = 0; t < nt; ++t) finish.add(acc[t], y + t * ldy + r);
  }
  finish.flush();
}

// stream_regs for a pair type: chunks 2 i and 2 i + 1 meet each token as two chains of dot
// products whose per-16 sums pair_sums joins (the same integers as PackedPair's eight dpbusd),
// then one combination with the pair's scales.
template <Offset kOff, bool kOffsets, auto kLoad, int kTokens>
static void stream_pairs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, float *y, int64_t ldy) {
  constexpr int64_t nt = kTokens;
  __m512 acc[kTokens];
  Finisher finish;
  const int64_t chunk_bytes = row_bytes / a.chunks, np = act_pairs(a.chunks);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; ++i) {
      const int64_t c = 2 * i;
      const bool odd = c + 1 < a.chunks;
      prefetch_ahead(w + r * row_bytes + c * chunk_bytes, 2 * chunk_bytes);
      __m512 ws[2] = {}, wo[2] = {};
      __m512i q[2][4];
      kLoad(a, w + r * row_bytes, c, &ws[0], &wo[0], q[0]);
      if (odd) kLoad(a, w + r * row_bytes, c + 1, &ws[1], &wo[1], q[1]);
      const __m512 pws = pair_pick<0x88>(ws[0], ws[1]), pwo = pair_pick<0x88>(wo[0], wo[1]);
      for (int64_t t = 0; t < nt; ++t) {
        const PackedChunk *pk = a.packed + t * a.chunks + c;
        const __m512i s0 = chain_dots(q[0], pk[0].qi, offset_init<(int)kOff>(pk[0]));
        const __m512i s1 = odd ? chain_dots(q[1], pk[1].qi, offset_init<(int)kOff>(pk[1])) : _mm512_setzero_si512();
        const PackedPair &pp = a.pairs[t * np + i];
        const __m512 as = kOffsets ? _mm512_load_ps(pp.asum) : _mm512_setzero_ps();
        acc[t] = combine_regs<kOffsets>(acc[t], _mm512_load_ps(pp.scale), pws, pwo, pair_sums(s0, s1), as);
      }
    }
    for (int64_t t = 0; t < nt; ++t) finish.add(acc[t], y + t * ldy + r);
  }
  finish.flush();
}

#endif

// A weight chunk as the integer path reads it: its 256 quants, prepared (on AVX-512 interleaved,
// see interleave, and offset by 128 for dpbusd's unsigned operand; elsewhere as unpacked), and
// its 16 sub-blocks' scales and offsets: six cache lines.
struct alignas(64) PreparedChunk {
  int8_t q[kChunkQ];
  float ws[kSubQ], wo[kSubQ];
};

// A pair of weight chunks as the pair GEMM reads them: the prepared quants of both in PackedPair's
// order, and the scales and offsets of its 16 lanes (each 32-sub-block's: its first half's).
struct alignas(64) PreparedPair {
  int8_t q[2 * kChunkQ];
  float ws[kSubQ], wo[kSubQ];
};

static inline void prepare(PreparedChunk *p) {
#if defined(__AVX512VNNI__)
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  __m512i v[4];
  for (int i = 0; i < 4; ++i) v[i] = _mm512_xor_si512(_mm512_load_si512(p->q + 64 * i), flip);
  interleave(v);
  for (int i = 0; i < 4; ++i) _mm512_store_si512(p->q + 64 * i, v[i]);
#else
  (void)p;
#endif
}

// Tiles of rows go in pairs, the GEMM's two rows per pass: [row pair][chunk][row of the pair],
// so the chunks a pass reads lie one after the other.
static inline int64_t tile_index(int64_t r, int64_t c, int64_t chunks) { return ((r / 2) * chunks + c) * 2 + r % 2; }
static inline int64_t tile_slots(int64_t rows, int64_t chunks) { return (rows + 1) / 2 * chunks * 2; }

#if defined(__AVX512VNNI__)
// kRows prepared rows (row i's chunk c at w[c * ldw + i]) over n chunks against packed tokens
// (token j's chunk c at pk[j * ldt + c], its asums at as16 + (j * ldt + c) * 16), into
// acc[i * kTokenTile + j]: the same integers and
// float operations as the portable row_dots, in registers. Each token's activations are loaded
// once for all kRows rows; kTokens > 0 makes the token count a compile-time constant, so the
// accumulators never go through memory.
template <bool kOffsets, int kRows, int kTokens>
static inline __attribute__((always_inline)) void dots_block(const PreparedChunk *w, int64_t ldw,
                                                            const PackedChunk *pk, const float *as16, int64_t ldt,
                                                            int64_t nt_, int64_t n, __m512 *acc_out) {
  const int64_t nt = kTokens ? kTokens : nt_;
  constexpr int kLocal = kTokens ? kRows * kTokenTile : 1;
  __m512 local[kLocal];  // the accumulators as locals, which the compiler keeps in registers
  if (kTokens)
    for (int i = 0; i < kLocal; ++i) local[i] = acc_out[i];
  __m512 *const acc = kTokens ? local : acc_out;
  for (int64_t c = 0; c < n; ++c, w += ldw, ++pk, as16 += kSubQ) {
    __m512i qv[kRows][4];
    __m512 ws[kRows], wo[kRows];
    for (int i = 0; i < kRows; ++i) {
      for (int p = 0; p < 4; ++p) qv[i][p] = _mm512_load_si512(w[i].q + 64 * p);
      ws[i] = _mm512_load_ps(w[i].ws);
      wo[i] = _mm512_load_ps(w[i].wo);
    }
    for (int64_t j = 0; j < nt; ++j) {
      const PackedChunk &t = pk[j * ldt];
      __m512i aq[4];
      for (int p = 0; p < 4; ++p) aq[p] = _mm512_load_si512(t.qi + 64 * p);
      __m512i bias = _mm512_load_si512(t.bias);
      __m512 ad = _mm512_load_ps(t.scale), as = kOffsets ? _mm512_loadu_ps(as16 + j * ldt * kSubQ) : _mm512_setzero_ps();
      if (kRows > 1) {
        for (int p = 0; p < 4; ++p) in_register(aq[p]);
        in_register(bias), in_register(ad);
        if (kOffsets) in_register(as);
      }
      for (int i = 0; i < kRows; ++i) {
        __m512i isum = bias;
        for (int p = 0; p < 4; ++p) isum = _mm512_dpbusd_epi32(isum, qv[i][p], aq[p]);
        acc[i * kTokenTile + j] = combine_regs<kOffsets>(acc[i * kTokenTile + j], ad, ws[i], wo[i], isum, as);
      }
    }
  }
  if (kTokens)
    for (int i = 0; i < kLocal; ++i) acc_out[i] = local[i];
}

// dots_block over prepared pairs (row i's pair p at w[p * ldw + i]) and packed pairs (token j's
// at pk[j * ldt + p]): the 32-sub-block sums of kRows rows x the tokens are built in registers
// over the pair's eight vectors (each weight and activation vector loaded once), then combined
// once. `as16` is unused (the pairs carry their asums).
template <bool kOffsets, int kRows, int kTokens>
static inline __attribute__((always_inline)) void pair_block(const PreparedPair *w, int64_t ldw, const PackedPair *pk,
                                                            const float *, int64_t ldt, int64_t nt_, int64_t n,
                                                            __m512 *acc_out) {
  const int64_t nt = kTokens ? kTokens : nt_;
  constexpr int kLocal = kTokens ? kRows * kTokenTile : 1;
  __m512 local[kLocal];
  if (kTokens)
    for (int i = 0; i < kLocal; ++i) local[i] = acc_out[i];
  __m512 *const acc = kTokens ? local : acc_out;
  for (int64_t p = 0; p < n; ++p, w += ldw, ++pk) {
    __m512i is[kRows][kTokenTile];
    for (int64_t j = 0; j < nt; ++j) {
      const __m512i bias = _mm512_load_si512(pk[j * ldt].bias);
      for (int i = 0; i < kRows; ++i) is[i][j] = bias;
    }
    for (int v = 0; v < 8; ++v) {
      __m512i wv[kRows];
      for (int i = 0; i < kRows; ++i) wv[i] = _mm512_load_si512(w[i].q + 64 * v);
      for (int64_t j = 0; j < nt; ++j) {
        const __m512i av = _mm512_load_si512(pk[j * ldt].qi + 64 * v);
        for (int i = 0; i < kRows; ++i) is[i][j] = _mm512_dpbusd_epi32(is[i][j], wv[i], av);
      }
    }
    for (int64_t j = 0; j < nt; ++j) {
      const PackedPair &t = pk[j * ldt];
      const __m512 ad = _mm512_load_ps(t.scale), as = kOffsets ? _mm512_load_ps(t.asum) : _mm512_setzero_ps();
      for (int i = 0; i < kRows; ++i)
        acc[i * kTokenTile + j] = combine_regs<kOffsets>(acc[i * kTokenTile + j], ad, _mm512_load_ps(w[i].ws),
                                                         _mm512_load_ps(w[i].wo), is[i][j], as);
    }
  }
  if (kTokens)
    for (int i = 0; i < kLocal; ++i) acc_out[i] = local[i];
}

#else
// One prepared row (its chunk c at w[c * ldw]) against tokens t0 .. t0 + nt - 1: y[j * ldy] for
// token t0 + j.
template <bool kOffsets>
static void row_dots(const PreparedChunk *w, int64_t ldw, const QActView &a, int64_t t0, int64_t nt, float *y,
                     int64_t ldy) {
  alignas(64) int32_t is[kSubQ];
  alignas(64) float acc[kTokenTile][kSubQ];
  memset(acc, 0, sizeof acc);
  for (int64_t c = 0; c < a.chunks; ++c, w += ldw) {
    for (int64_t j = 0; j < nt; ++j) {
      const int64_t off = (t0 + j) * a.chunks + c;
      isums(w->q, a.q + off * kChunkQ, is);
      combine<kOffsets>(acc[j], a.scale + off * kSubQ, w->ws, w->wo, is, a.asum + off * kSubQ);
    }
  }
  finish(acc, nt, y, ldy);
}

// row_dots for a pair type: chunks 2 i and 2 i + 1 into one combination (combine_pair).
template <bool kOffsets>
static void row_dots_pairs(const PreparedChunk *w, int64_t ldw, const QActView &a, int64_t t0, int64_t nt, float *y,
                           int64_t ldy) {
  alignas(64) int32_t is[2][kSubQ];
  alignas(64) float acc[kTokenTile][kSubQ];
  memset(acc, 0, sizeof acc);
  for (int64_t c = 0; c < a.chunks; c += 2, w += 2 * ldw) {
    const bool odd = c + 1 < a.chunks;
    const PreparedChunk *wc[2] = {w, odd ? w + ldw : w};
    for (int64_t j = 0; j < nt; ++j) {
      const int64_t off = (t0 + j) * a.chunks + c;
      for (int h = 0; h < 1 + odd; ++h) isums(wc[h]->q, a.q + (off + h) * kChunkQ, is[h]);
      const float *ad[2] = {a.scale + off * kSubQ, a.scale + (off + odd) * kSubQ};
      const float *as[2] = {a.asum + off * kSubQ, a.asum + (off + odd) * kSubQ};
      const float *ws[2] = {wc[0]->ws, wc[1]->ws}, *wo[2] = {wc[0]->wo, wc[1]->wo};
      const int32_t *isp[2] = {is[0], odd ? is[1] : nullptr};
      combine_pair<kOffsets>(acc[j], ad, ws, wo, isp, as);
    }
  }
  finish(acc, nt, y, ldy);
}

#endif

// Few tokens (decoding): a row is unpacked whole into L1, then used by every token. Unpacking
// the whole row first (not chunk by chunk) matters: the unpackers write quants and scales in
// small stores, and reading them back at once as 64-byte vectors stalls on store forwarding.
template <bool kOffsets, int kTokens, bool kPair = false>  // kTokens: the AVX-512 path's count (with_token_count)
static void stream_rows(const Unpacker &up, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                        int64_t nt, float *y, int64_t ldy) {
  PreparedChunk *const row = thread_vectors<PreparedChunk, 0>(a.chunks);
#if defined(__AVX512VNNI__)
  Finisher finish;
#endif
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < a.chunks; ++c) up(w + r * row_bytes, c, row[c].q, row[c].ws, row[c].wo);
    for (int64_t c = 0; c < a.chunks; ++c) prepare(&row[c]);
#if defined(__AVX512VNNI__)
    __m512 acc[kTokenTile];
    for (int64_t j = 0; j < nt; ++j) acc[j] = _mm512_setzero_ps();
    dots_block<kOffsets, 1, kTokens>(row, 1, a.packed, a.asum, a.chunks, nt, a.chunks, acc);
    for (int64_t j = 0; j < nt; ++j) finish.add(acc[j], y + j * ldy + r);
#else
    if (kPair)
      row_dots_pairs<kOffsets>(row, 1, a, 0, nt, y + r, ldy);
    else
      row_dots<kOffsets>(row, 1, a, 0, nt, y + r, ldy);
#endif
  }
#if defined(__AVX512VNNI__)
  finish.flush();
#endif
}

#if defined(__AVX512VNNI__)
// The AVX-512 GEMM over a tile of prepared rows: tokens in tiles of kGemmTokens and chunks in
// blocks of kChunkBlock, so one token tile's packed activations over one block (4 x 16 x 448 B
// = 28 KB of the 48 KB L1) stay in L1 while every row pair of the tile passes over them; 32
// chunks overflow it (pairs: blocks of 8, 4 x 8 x 704 B = 22 KB). A row's accumulators wait in
// acc between blocks (float stores and loads: the same bits as registers).
constexpr int kGemmTokens = 4;
constexpr int64_t kChunkBlock = 16;

// What a GEMM step reads: a chunk, or for the pair types (kPair) a pair of chunks, of weights
// and of activations; steps per token row; and the dot products of a block of steps.
template <bool kPair>
struct GemmStep {
  using Weights = std::conditional_t<kPair, PreparedPair, PreparedChunk>;
  using Acts = std::conditional_t<kPair, PackedPair, PackedChunk>;
  static int64_t steps(const QActView &a) { return kPair ? act_pairs(a.chunks) : a.chunks; }
  static const Acts *acts(const QActView &a) {
    if constexpr (kPair) return a.pairs;
    else return a.packed;
  }
  template <bool kOffsets, int kRows, int kTokens>
  static inline __attribute__((always_inline)) void dots(const Weights *w, int64_t ldw, const Acts *pk,
                                                        const float *as16, int64_t ldt, int64_t nt, int64_t n,
                                                        __m512 *acc) {
    if constexpr (kPair) pair_block<kOffsets, kRows, kTokens>(w, ldw, pk, as16, ldt, nt, n, acc);
    else dots_block<kOffsets, kRows, kTokens>(w, ldw, pk, as16, ldt, nt, n, acc);
  }
};

template <bool kOffsets, bool kPair = false>
static void gemm_tile(const typename GemmStep<kPair>::Weights *tile, int64_t rows, const QActView &a,
                      int64_t num_tokens, float *y, int64_t ldy) {
  using Step = GemmStep<kPair>;
  const int64_t chunks = Step::steps(a), block = kPair ? kChunkBlock / 2 : kChunkBlock;  // steps, and per block
  __m512 *const acc = thread_vectors<__m512, 0>(rows * kTokenTile);  // [rows][kTokenTile]
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kGemmTokens) {
    const int64_t nt = num_tokens - t0 < kGemmTokens ? num_tokens - t0 : kGemmTokens;
    for (int64_t c0 = 0; c0 < chunks; c0 += block) {
      const int64_t c1 = chunks - c0 < block ? chunks : c0 + block;
      const typename Step::Acts *pk = Step::acts(a) + t0 * chunks + c0;
      const float *as16 = a.asum + (t0 * a.chunks + c0) * kSubQ;  // (the chunk steps alone read it)
      for (int64_t r = 0; r < rows; r += 2) {
        const typename Step::Weights *w = tile + tile_index(r, c0, chunks);
        if (rows - r >= 2 && nt == kGemmTokens) {  // a full pass: finished from registers after the last block
          __m512 v[2 * kTokenTile];
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < kGemmTokens; ++j)
              v[i * kTokenTile + j] = c0 ? acc[(r + i) * kTokenTile + j] : _mm512_setzero_ps();
          Step::template dots<kOffsets, 2, kGemmTokens>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
          if (c1 == chunks) {
            finish_2x4(v, kTokenTile, y + t0 * ldy + r, ldy);
          } else {
            for (int i = 0; i < 2; ++i)
              for (int j = 0; j < kGemmTokens; ++j) acc[(r + i) * kTokenTile + j] = v[i * kTokenTile + j];
          }
          continue;
        }
        const int n = rows - r < 2 ? 1 : 2;  // a last odd row or a last partial token tile: in acc
        __m512 *const v = acc + r * kTokenTile;
        if (c0 == 0)
          for (int i = 0; i < n; ++i)
            for (int64_t j = 0; j < nt; ++j) v[i * kTokenTile + j] = _mm512_setzero_ps();
        if (n == 2)
          Step::template dots<kOffsets, 2, 0>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
        else
          Step::template dots<kOffsets, 1, 0>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
      }
    }
    Finisher finish;
    for (int64_t r = nt == kGemmTokens ? rows / 2 * 2 : 0; r < rows; ++r)
      for (int64_t j = 0; j < nt; ++j) finish.add(acc[r * kTokenTile + j], y + (t0 + j) * ldy + r);
    finish.flush();
  }
}
#endif

// Many tokens: a tile of rows prepared once into a buffer that stays in L2, shared by every
// token tile. Tile rows: about 512 KB of prepared chunks (384 B each).
static int64_t tile_rows_for(int64_t chunks) {
  const int64_t r = 512 * 1024 / (chunks * (int64_t)sizeof(PreparedChunk)) / 16 * 16;
  return r < 16 ? 16 : r > 64 ? 64 : r;
}

template <bool kOffsets, bool kPair = false>
static void tile_rows(const Unpacker &up, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                      int64_t num_tokens, float *y, int64_t ldy) {
  const int64_t chunks = a.chunks, chunk_bytes = row_bytes / chunks;
  PreparedChunk *const tile = thread_vectors<PreparedChunk, 1>(tile_slots(rows, chunks));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < chunks; ++c) {
      prefetch_ahead(w + r * row_bytes + c * chunk_bytes, chunk_bytes);
      PreparedChunk &p = tile[tile_index(r, c, chunks)];
      up(w + r * row_bytes, c, p.q, p.ws, p.wo);
    }
  for (int64_t r = 0; r < rows; ++r)  // a second pass, as in stream_rows
    for (int64_t c = 0; c < chunks; ++c) prepare(&tile[tile_index(r, c, chunks)]);
#if defined(__AVX512VNNI__)
  gemm_tile<kOffsets>(tile, rows, a, num_tokens, y, ldy);
#else
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenTile) {
    const int64_t nt = num_tokens - t0 < kTokenTile ? num_tokens - t0 : kTokenTile;
    for (int64_t r = 0; r < rows; ++r)
      (kPair ? row_dots_pairs<kOffsets> : row_dots<kOffsets>)(tile + tile_index(r, 0, chunks), 2, a, t0, nt,
                                                               y + t0 * ldy + r, ldy);
  }
#endif
}

template <bool kOffsets, bool kPair = false>
static void unpacked_matmul(const Unpacker &up, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                            int64_t num_tokens, float *y, int64_t ldy) {
  if (stream_tokens(num_tokens, a.chunks)) {
#if defined(__AVX512VNNI__)
    return with_token_count(num_tokens, [&](auto n) {
      stream_rows<kOffsets, decltype(n)::value>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
    });
#else
    return stream_rows<kOffsets, 0, kPair>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
#endif
  }
  const int64_t tile = tile_rows_for(a.chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += tile)
    tile_rows<kOffsets, kPair>(up, w + r0 * row_bytes, row_bytes, rows - r0 < tile ? rows - r0 : tile, a, num_tokens,
                        y + r0, ldy);
}

#if defined(__AVX512VNNI__)
// A register type's GEMM: tiles of rows filled through its loader (prepared bytes: the loader's
// plus 128 - 2^kOff, so int8 + 128), far cheaper than the generic unpacker and prepare; for the
// pair types, pairs of chunks in PackedPair's order (a missing odd chunk as zeros).
template <Offset kOff, bool kOffsets, auto kLoad, bool kPair>
static void tile_regs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                      float *y, int64_t ldy) {
  using Weights = typename GemmStep<kPair>::Weights;
  const int64_t chunks = a.chunks, steps = GemmStep<kPair>::steps(a), chunk_bytes = row_bytes / chunks;
  const int64_t tile = tile_rows_for(chunks);
  const __m512i shift = _mm512_set1_epi8((char)(kOff == Offset::kNone ? 128 : 128 - (1 << (int)kOff)));
  const auto prepared = [&](__m512i q) { return kOff == Offset::k128 ? q : _mm512_add_epi8(q, shift); };
  Weights *const buf = thread_vectors<Weights, 1>(tile_slots(tile, steps));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t n = rows - r0 < tile ? rows - r0 : tile;
    for (int64_t r = 0; r < n; ++r) {
      const uint8_t *row = w + (r0 + r) * row_bytes;
      for (int64_t c = 0; c < steps; ++c) {
        Weights &p = buf[tile_index(r, c, steps)];
        __m512 ws[2] = {}, wo[2] = {};
        __m512i q[2][4];
        const int per_step = kPair ? 2 : 1;
        for (int h = 0; h < per_step; ++h) {
          const int64_t cc = per_step * c + h;
          if (cc == chunks) {  // the missing odd chunk of a pair
            for (int i = 0; i < 4; ++i) q[h][i] = _mm512_setzero_si512();
            continue;
          }
          prefetch_ahead(row + cc * chunk_bytes, chunk_bytes);
          kLoad(a, row, cc, &ws[h], &wo[h], q[h]);
          for (int i = 0; i < 4; ++i) q[h][i] = prepared(q[h][i]);
        }
        if constexpr (kPair) {
          __m512i qp[8];
          pair_vectors(q[0], q[1], qp);
          for (int i = 0; i < 8; ++i) _mm512_store_si512(p.q + 64 * i, qp[i]);
          _mm512_store_ps(p.ws, pair_pick<0x88>(ws[0], ws[1]));
          if (kOffsets) _mm512_store_ps(p.wo, pair_pick<0x88>(wo[0], wo[1]));
        } else {
          for (int i = 0; i < 4; ++i) _mm512_store_si512(p.q + 64 * i, q[0][i]);
          _mm512_store_ps(p.ws, ws[0]);
          if (kOffsets) _mm512_store_ps(p.wo, wo[0]);
        }
      }
    }
    gemm_tile<kOffsets, kPair>(buf, n, a, num_tokens, y + r0, ldy);
  }
}

// The types with a register loader: the few-token stream or the GEMM over loader-filled tiles.
template <int kType, Offset kOff, auto kLoad, bool kOffsets = has_offsets(kType), bool kPair = pair_type(kType)>
static void regs_matmul(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                        float *y, int64_t ldy) {
  if (stream_tokens(num_tokens, a.chunks))
    return with_token_count(num_tokens, [&](auto n) {
      if constexpr (kPair)
        stream_pairs<kOff, kOffsets, kLoad, decltype(n)::value>(w, row_bytes, rows, a, y, ldy);
      else
        stream_regs<kOff, kOffsets, kLoad, decltype(n)::value>(w, row_bytes, rows, a, y, ldy);
    });
  tile_regs<kOff, kOffsets, kLoad, kPair>(w, row_bytes, rows, a, num_tokens, y, ldy);
}
#endif

void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                  int64_t num_tokens, float *y, int64_t ldy) {
  const Geometry g = geometry(type);
  const Unpacker up{unpack_fn(type), a.k / g.block_size, kChunkQ / g.block_size, g.type_size, has_offsets(type)};
#if defined(__AVX512VNNI__)
  switch (type) {
    case kQ2_K: return regs_matmul<kQ2_K, Offset::kNone, load_q2_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ3_K: return regs_matmul<kQ3_K, Offset::k4, load_q3_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_K: return regs_matmul<kQ4_K, Offset::kNone, load_q4_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ6_K: return regs_matmul<kQ6_K, Offset::k32, interleaved<load_q6_k>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_K: return regs_matmul<kQ5_K, Offset::kNone, load_q5_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_0:
      return regs_matmul<kQ4_0, Offset::k8, load_nibble_chunk<false>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_NL:
      return regs_matmul<kIQ4_NL, Offset::k128, load_nibble_chunk<true>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_XS: return regs_matmul<kIQ4_XS, Offset::k128, load_iq4_xs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_1: return regs_matmul<kQ4_1, Offset::kNone, load_q4_1_chunk>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_0: return regs_matmul<kQ5_0, Offset::k16, interleaved<load_q5_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_1: return regs_matmul<kQ5_1, Offset::kNone, interleaved<load_q5_1>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ8_0: return regs_matmul<kQ8_0, Offset::k128, interleaved<load_q8_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ1_S: return regs_matmul<kIQ1_S, Offset::k128, load_iq1_s>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ1_M: return regs_matmul<kIQ1_M, Offset::k128, load_iq1_m>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ2_XXS: return regs_matmul<kIQ2_XXS, Offset::k128, load_iq2_xxs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ2_XS: return regs_matmul<kIQ2_XS, Offset::k128, load_iq2_xs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ3_XXS: return regs_matmul<kIQ3_XXS, Offset::k128, load_iq3_xxs>(w, row_bytes, rows, a, num_tokens, y, ldy);
  }
#else
  if (pair_type(type)) {
    if (up.offsets) return unpacked_matmul<true, true>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
    return unpacked_matmul<false, true>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
  }
#endif
  if (up.offsets) return unpacked_matmul<true>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
  unpacked_matmul<false>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
}

}  // namespace MOE_ISA_NS
}  // namespace moe
