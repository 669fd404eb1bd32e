// Per-ISA part of the integer-activation matmul (compiled once per ISA level, as
// kernels_isa.cpp). Only the 16 sub-block integer sums of a chunk differ between ISAs, and
// integers are exact; the float combination below is the same scalar-order code everywhere,
// so every ISA gives the same bits.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "qmatmul.h"
#include "quants/formats.h"
#include "quants/tables.h"

namespace moe {
namespace MOE_ISA_NS {

#include "quants/dequant_impl.h"
#include "quants/qact_impl.h"
#include "quants/unpack_impl.h"

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

constexpr int kTokenTile = 8;

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

// A row's 16 lane sums added up in a fixed tree, lane j with j + 8, then + 4, + 2, + 1: the
// order the AVX-512 Finisher's halving shuffles give, so every ISA has the same bits.
static inline float sum_lanes(const float *l) {
  float a[8];
  for (int j = 0; j < 8; ++j) a[j] = l[j] + l[j + 8];
  for (int j = 0; j < 4; ++j) a[j] = a[j] + a[j + 4];
  for (int j = 0; j < 2; ++j) a[j] = a[j] + a[j + 2];
  return a[0] + a[1];
}

static inline void finish(const float (*acc)[kSubQ], int64_t nt, float *y, int64_t ldy) {
  for (int64_t j = 0; j < nt; ++j) y[j * ldy] = sum_lanes(acc[j]);
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

// Q4_K's 16 sub-block scales (d * sc) and offsets (-(dmin * m)) straight into registers: the
// 12 packed bytes give 8 six-bit scales and 8 mins with a few 32-bit operations (bytes 0-3 and
// 4-7 hold scales/mins 0-3 in their low 6 bits and the top 2 bits of scales/mins 4-7, whose low
// 4 bits are the nibbles of bytes 8-11), each duplicated for the two 16-halves of its 32.
static inline __attribute__((always_inline)) void q4_k_scales(const uint8_t *b, __m512 *ws, __m512 *wo) {
  const uint32_t u0 = load_u32(b + 4), u1 = load_u32(b + 8), u2 = load_u32(b + 12);
  const uint64_t sc = (u0 & 0x3f3f3f3fu) | (uint64_t)((u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u)) << 32;
  const uint64_t mn = (u1 & 0x3f3f3f3fu) | (uint64_t)(((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u)) << 32;
  const __m128i s8 = _mm_cvtsi64_si128((long long)sc), m8 = _mm_cvtsi64_si128((long long)mn);
  const __m512 fs = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(s8, s8)));
  const __m512 fm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(m8, m8)));
  *ws = _mm512_mul_ps(_mm512_set1_ps(load_half(b)), fs);
  const __m512 dm = _mm512_mul_ps(_mm512_set1_ps(load_half(b + 2)), fm);
  *wo = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dm), _mm512_set1_epi32((int)0x80000000u)));
}

// sum_lanes for 16 accumulators at once: folded in halves, eight 256-bit halves added, then
// 128-bit quarters, pairs and single lanes, each level joining two vectors' folds into one (30
// shuffles and 15 adds for 16 sums). Accumulator i's sum ends in lane 4 (i % 4) + i / 4.
static inline __attribute__((always_inline)) __m512 fold16(const __m512 *v) {
  __m512 u[8], w[4], x[2];
  for (int i = 0; i < 8; ++i)  // lanes j and j + 8
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // + 4
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // + 2
    x[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], 0x88), _mm512_shuffle_ps(x[0], x[1], 0xDD));  // + 1
}

// Two rows by four tokens (acc[row * ld + token]) into y[token * ldy + row]: the same folds as
// fold16 on eight accumulators, so the same bits; token j's two sums end in quarter j.
static inline __attribute__((always_inline)) void finish_2x4(const __m512 *acc, int64_t ld, float *y, int64_t ldy) {
  __m512 u[4], w[2];
  for (int i = 0; i < 4; ++i) {  // lanes j and j + 8
    const __m512 a = acc[(i / 2) * ld + 2 * (i % 2)], b = acc[(i / 2) * ld + 2 * (i % 2) + 1];
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 2; ++i)  // + 4
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  const __m512 x = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x44), _mm512_shuffle_ps(w[0], w[1], 0xEE));  // + 2
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(x, x, 0x88), _mm512_shuffle_ps(x, x, 0xDD));       // + 1
  _mm_storel_pi((__m64 *)y, _mm512_castps512_ps128(sums));
  _mm_storel_pi((__m64 *)(y + ldy), _mm512_extractf32x4_ps(sums, 1));
  _mm_storel_pi((__m64 *)(y + 2 * ldy), _mm512_extractf32x4_ps(sums, 2));
  _mm_storel_pi((__m64 *)(y + 3 * ldy), _mm512_extractf32x4_ps(sums, 3));
}

// Accumulators in any order and places, 16 at a time through fold16. Whatever is pending is
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
    _mm512_store_ps(out, fold16(acc_));
    for (int i = 0; i < n_; ++i) {
      *dst_[i] = out[4 * (i % 4) + i / 4];
      __asm__("" ::: "memory");  // keeps the stores scalar: a vscatterqps of 16 is far slower
    }
    n_ = 0;
  }
};

// Register paths for few tokens: a type's chunk goes straight from its blocks into four
// vectors of unsigned bytes in the interleaved order (see interleave) plus 16-lane scale/offset
// vectors, never through the int8 buffer. dpbusd takes the unsigned bytes as they are; where the
// generic path's int8 is that byte minus a constant (Q8_0 stored with +128 here, Q5_0's 16),
// the constant times the activation's sub-block sum comes off: the same integers, the same
// float operations, the same bits.
enum class Offset { kNone = 0, k8 = 3, k16 = 4, k32 = 5, k128 = 7 };  // log2 of what each weight byte carries extra

template <Offset kOff, bool kOffsets, auto kLoad>  // kLoad a compile-time function: inlined into the loop
static void stream_regs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t nt, float *y,
                        int64_t ldy) {
  __m512 acc[kTokenTile];
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

// A loader of the natural order, then interleaved.
template <auto kLoad>
static inline __attribute__((always_inline)) void interleaved(const QActView &a, const uint8_t *row, int64_t c,
                                                             __m512 *ws, __m512 *wo, __m512i *q) {
  kLoad(a, row, c, ws, wo, q);
  interleave(q);
}

// K-quant nibbles (128 bytes at qs) in the interleaved order: sub-blocks 4G .. 4G + 3 are the
// low, then the high nibbles of qs[32G .. 32G + 31], so lane s of vector p is qs dword
// 8 (s / 4) + 4 (s % 2) + p, shifted down by 4 where s % 4 >= 2.
static inline __attribute__((always_inline)) void k_nibbles(const uint8_t *qs, __m512i *q) {
  const __m512i lo = _mm512_loadu_si512(qs), hi = _mm512_loadu_si512(qs + 64), mask = _mm512_set1_epi8(0x0F);
  const __m512i base = _mm512_setr_epi32(0, 4, 0, 4, 8, 12, 8, 12, 16, 20, 16, 20, 24, 28, 24, 28);
  const __m512i shift = _mm512_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4);
  for (int p = 0; p < 4; ++p) {
    const __m512i d = _mm512_permutex2var_epi32(lo, _mm512_add_epi32(base, _mm512_set1_epi32(p)), hi);
    q[p] = _mm512_and_si512(_mm512_srlv_epi32(d, shift), mask);
  }
}

static inline __attribute__((always_inline)) void load_q4_k(const QActView &, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 144;
  q4_k_scales(b, ws, wo);
  k_nibbles(b + 16, q);
}

// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d. Piece p is quarters
// 2 (p % 2) and 2 (p % 2) + 1 of half p / 2 (up_q6_k's order): the low or high nibbles of that
// half's 64 ql bytes, and bit pairs 0/2 or 4/6 of its 32 qh bytes, seen once per 256-bit lane,
// moved to bits 4-5 by a per-lane shift. The byte is the int8 + 32.
static inline __attribute__((always_inline)) void load_q6_k(const QActView &, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 210;
  const __m128i sc = _mm_loadu_si128((const __m128i *)(b + 192));
  *ws = _mm512_mul_ps(_mm512_set1_ps(load_half(b + 208)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
  *wo = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i up_01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);  // bits 0, 2 -> 4
  const __m512i down_23 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);  // bits 4, 6 -> 4
  for (int h = 0; h < 2; ++h) {
    const __m512i ql = _mm512_loadu_si512(b + 64 * h);
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    const __m512i hb = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
    q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(hb, up_01), m30));
    q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                   _mm512_and_si512(_mm512_srlv_epi16(hb, down_23), m30));
  }
}

// The fp16 field at `b` of each of a chunk's 8 blocks (`stride` bytes apart) into the two lanes
// of its block; zeros for blocks past the row's end (a K = 576 row has 2.25 chunks).
static inline __attribute__((always_inline)) __m512 halves_per_block(const uint8_t *b, int stride, int nblk) {
  uint16_t v[8];
  for (int i = 0; i < 8; ++i) v[i] = i < nblk ? load_u16(b + i * stride) : 0;
  const __m128i h = _mm_setr_epi16((short)v[0], (short)v[1], (short)v[2], (short)v[3], (short)v[4], (short)v[5],
                                   (short)v[6], (short)v[7]);
  return _mm512_cvtph_ps(_mm256_set_m128i(_mm_unpackhi_epi16(h, h), _mm_unpacklo_epi16(h, h)));
}

// Blocks 2p and 2p + 1 of a chunk, 32 bytes each, as piece p.
static inline __attribute__((always_inline)) __m512i two_blocks(__m256i first, __m256i second) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles, then high (the 32-blocks' order); zeros when
// the block lies past the row's end.
static inline __attribute__((always_inline)) __m256i nibbles_or_zero(const uint8_t *qs, bool valid) {
  return valid ? nibbles32(qs) : _mm256_setzero_si256();
}

// How many of a 32-block type's 8 blocks chunk c holds (fewer in a row's part-filled last chunk).
static inline int blocks_in_chunk(const QActView &a, int64_t c) {
  const int64_t left = a.k / 32 - c * 8;
  return (int)(left < 8 ? left : 8);
}

// Q4_1: d, m, 16 bytes of nibbles (unsigned).
static inline __attribute__((always_inline)) void load_q4_1(const QActView &a, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 20;
  const int nblk = blocks_in_chunk(a, c);
  *ws = halves_per_block(b, 20, nblk);
  *wo = halves_per_block(b + 2, 20, nblk);
  for (int p = 0; p < 4; ++p)
    q[p] = two_blocks(nibbles_or_zero(b + 40 * p + 4, 2 * p < nblk), nibbles_or_zero(b + 40 * p + 24, 2 * p + 1 < nblk));
}

// Q5_0: d, 32 high bits, 16 bytes of nibbles; the byte nibble | high << 4 is the int8 + 16.
static inline __attribute__((always_inline)) void load_q5_0(const QActView &a, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 22;
  const int nblk = blocks_in_chunk(a, c);
  *ws = halves_per_block(b, 22, nblk);
  *wo = _mm512_setzero_ps();
  __m256i v[2];
  for (int p = 0; p < 4; ++p) {
    for (int j = 0; j < 2; ++j) {
      const uint8_t *blk = b + 22 * (2 * p + j);
      v[j] = 2 * p + j < nblk ? _mm256_or_si256(nibbles32(blk + 6), q5_high_bits(load_u32(blk + 2)))
                              : _mm256_set1_epi8(16);  // + 16 of a zero weight: its bsum term cancels
    }
    q[p] = two_blocks(v[0], v[1]);
  }
}

// Q8_0: d and 32 int8, carried as int8 + 128 (xor 0x80).
static inline __attribute__((always_inline)) void load_q8_0(const QActView &a, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 34;
  const int nblk = blocks_in_chunk(a, c);
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  *ws = halves_per_block(b, 34, nblk);
  *wo = _mm512_setzero_ps();
  __m256i v[2];
  for (int p = 0; p < 4; ++p) {
    for (int j = 0; j < 2; ++j) {
      const uint8_t *blk = b + 34 * (2 * p + j);
      v[j] = 2 * p + j < nblk ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)), flip) : flip;
    }
    q[p] = two_blocks(v[0], v[1]);
  }
}

// The IQ4 codebook plus 128, for a byte shuffle: nibble -> unsigned (int8 + 128).
static inline __attribute__((always_inline)) __m256i iq4_table() {
  const __m128i t = _mm_xor_si128(_mm_loadu_si128((const __m128i *)kIq4nlValues), _mm_set1_epi8((char)0x80));
  return _mm256_broadcastsi128_si256(t);
}

// Q4_0 and IQ4_NL share their blocks: d and 16 bytes of nibbles. Q4_0's nibble is the int8 + 8;
// IQ4_NL's indexes the codebook (kCodebook), carried as int8 + 128. A block past the row's end
// holds the offset alone, so its bsum term cancels.
template <bool kCodebook>
static inline __attribute__((always_inline)) void load_nibble_blocks(const QActView &a, const uint8_t *row, int64_t c,
                                                                    __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 18;
  const int nblk = blocks_in_chunk(a, c);
  const __m256i table = iq4_table(), none = _mm256_set1_epi8((char)(kCodebook ? 0x80 : 8));
  auto block = [&](int i) {
    if (i >= nblk) return none;
    const __m256i v = nibbles32(b + 18 * i + 2);
    return kCodebook ? _mm256_shuffle_epi8(table, v) : v;
  };
  *ws = halves_per_block(b, 18, nblk);
  *wo = _mm512_setzero_ps();
  for (int p = 0; p < 4; ++p) q[p] = two_blocks(block(2 * p), block(2 * p + 1));
}

// IQ4_XS: d, 8 six-bit block scales (low nibbles in 4 bytes, high bit pairs in a u16), and
// codebook indices as IQ4_NL's; the scale of 32-block ib is d * (ls - 32), as up_iq4_xs has it.
static inline __attribute__((always_inline)) void load_iq4_xs(const QActView &, const uint8_t *row, int64_t c,
                                                             __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 136;
  const uint32_t lo = load_u32(b + 4), hi = load_u16(b + 2);
  alignas(64) int32_t ls[16];
  for (int ib = 0; ib < 8; ++ib)
    ls[2 * ib] = ls[2 * ib + 1] = (int)(((lo >> (4 * ib)) & 0xF) | (((hi >> (2 * ib)) & 3) << 4)) - 32;
  *ws = _mm512_mul_ps(_mm512_set1_ps(load_half(b)), _mm512_cvtepi32_ps(_mm512_load_si512(ls)));
  *wo = _mm512_setzero_ps();
  const __m256i table = iq4_table();
  for (int p = 0; p < 4; ++p)
    q[p] = two_blocks(_mm256_shuffle_epi8(table, nibbles32(b + 8 + 32 * p)),
                      _mm256_shuffle_epi8(table, nibbles32(b + 8 + 32 * p + 16)));
}

// Q5_K: Q4_K's header and nibbles, plus a fifth bit per weight: bit sb of qh[i] for weight i of
// 32-block sb, added as 16 under a byte mask. Lane s of vector p reads qh dword 4 (s % 2) + p,
// bit s / 2 of each byte.
static inline __attribute__((always_inline)) void load_q5_k(const QActView &, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 176;
  const __m512i qh = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + 16)));
  const __m512i bits = _mm512_setr_epi32(0x01010101, 0x01010101, 0x02020202, 0x02020202, 0x04040404, 0x04040404,
                                         0x08080808, 0x08080808, 0x10101010, 0x10101010, 0x20202020, 0x20202020,
                                         0x40404040, 0x40404040, (int)0x80808080, (int)0x80808080);
  const __m512i base = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i sixteen = _mm512_set1_epi8(16);
  q4_k_scales(b, ws, wo);
  k_nibbles(b + 48, q);
  for (int p = 0; p < 4; ++p) {
    const __m512i h = _mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(p)), qh);
    q[p] = _mm512_mask_add_epi8(q[p], _mm512_test_epi8_mask(h, bits), q[p], sixteen);
  }
}

// The grid types' codebooks as the bytes dpbusd takes (int8 + 128): IQ1_S's 8 g (g in
// {-1, 0, 1}, before its block's delta), IQ2_XXS's magnitudes (before their signs).
template <int kRows>
struct Grid8 {
  alignas(64) uint8_t v[kRows][8];
};
static constexpr Grid8<2048> iq1s_grid8() {
  Grid8<2048> g{};
  for (int i = 0; i < 2048; ++i)
    for (int j = 0; j < 8; ++j) g.v[i][j] = (uint8_t)(8 * kIq1sGrid[i][j] + 128);
  return g;
}
static constexpr Grid8<256> iq2xxs_grid8() {
  Grid8<256> g{};
  for (int i = 0; i < 256; ++i)
    for (int j = 0; j < 8; ++j) g.v[i][j] = (uint8_t)(kIq2xxsGrid[i][j] + 128);
  return g;
}
static constexpr Grid8<2048> kIq1sGrid8 = iq1s_grid8();
static constexpr Grid8<256> kIq2xxsGrid8 = iq2xxs_grid8();

// Codebook rows row(first), row(first + 2), ..., row(first + 14) (8-byte values at the
// addresses row() gives) as the qwords of one vector: pairs by a low and a high half load, then
// three inserts. A vpgatherdq of 8 takes 14 cycles on Zen 5; masked broadcasts need 7 mask
// registers refilled per chunk.
template <typename Row>
static inline __attribute__((always_inline)) __m512i rows8(Row row, int first) {
  auto pair = [&](int r) {
    const __m128d lo = _mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)row(r)));
    return _mm_castpd_si128(_mm_loadh_pd(lo, (const double *)row(r + 2)));
  };
  const __m256i lo = _mm256_set_m128i(pair(first + 4), pair(first)), hi = _mm256_set_m128i(pair(first + 12), pair(first + 8));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// A chunk of 32 codebook rows of 8 weights in the interleaved order. Sub-block s is rows 2s and
// 2s + 1, so g holds {rows 0, 2, .., 14}, {16, 18, .., 30}, {1, 3, .., 15}, {17, 19, .., 31}
// (see rows8), and vector p takes the 4-byte half p % 2 of rows 2s + p / 2.
static inline __attribute__((always_inline)) void deal_rows(const __m512i *g, __m512i *q) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int p = 0; p < 4; ++p) q[p] = _mm512_permutex2var_epi32(g[p & 2], p & 1 ? odd : even, g[(p & 2) + 1]);
}

// IQ1_S (the 1.58-bit DeepSeek-R1's experts): a weight is ws * (8 g + delta), its byte
// 8 g + delta + 128 (Offset::k128): 32 codebook rows from kIq1sGrid8 plus the block's delta of
// +-1. The same integers as up_iq1_s's.
static inline __attribute__((always_inline)) void load_iq1_s(const QActView &, const uint8_t *row, int64_t c,
                                                            __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 50;
  const __m128i qh8 = _mm_loadu_si128((const __m128i *)(b + 34));  // 8 x u16
  // The rows' 11-bit indices as u16: qs[r] | ((qh[r / 4] >> 3 (r % 4)) & 7) << 8, then four
  // per 64-bit word into general registers.
  const __m512i quarter = _mm512_set_epi16(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1,
                                           1, 0, 0, 0, 0);
  const __m512i shift = _mm512_set_epi16(9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3,
                                         0, 9, 6, 3, 0);
  const __m512i hi = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi16(quarter, _mm512_castsi128_si512(qh8)), shift),
                                      _mm512_set1_epi16(7));
  const __m512i idx = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2))),
                                      _mm512_slli_epi16(hi, 8));
  uint64_t x[8];
  for (int l = 0; l < 4; ++l) {
    const __m128i v = _mm512_extracti32x4_epi32(idx, l);
    x[2 * l] = (uint64_t)_mm_cvtsi128_si64(v);
    x[2 * l + 1] = (uint64_t)_mm_extract_epi64(v, 1);
  }
  const long long *grid = (const long long *)kIq1sGrid8.v;
  auto row_of = [&](int r) { return grid + ((x[r / 4] >> (16 * (r % 4))) & 0xFFFF); };
  const __m512i g[4] = {rows8(row_of, 0), rows8(row_of, 16), rows8(row_of, 1), rows8(row_of, 17)};
  deal_rows(g, q);
  const __mmask16 negative = (__mmask16)_mm_movemask_epi8(_mm_srai_epi16(qh8, 15));  // both lanes of a block
  const __m512i delta = _mm512_mask_mov_epi32(_mm512_set1_epi8(1), negative, _mm512_set1_epi8(-1));
  for (int p = 0; p < 4; ++p) q[p] = _mm512_add_epi8(q[p], delta);
  // ws = d * (2 s + 1) * 0.125 per block, as up_iq1_s's operations, two lanes each.
  const __m512i seven = _mm512_set1_epi32(7);
  const __m512i qh = _mm512_cvtepu16_epi32(_mm256_castsi128_si256(qh8));  // lanes 0-7
  const __m512i s21 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 12), seven), 1),
                                       _mm512_set1_epi32(1));
  const __m512 blk = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(load_half(b)), _mm512_cvtepi32_ps(s21)),
                                   _mm512_set1_ps(0.125f));
  *ws = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), blk);
  *wo = _mm512_setzero_ps();
}

// IQ2_XXS (the 1.58-bit R1's down projections): d, then per 32-block four codebook indices and
// a u32 of four 7-bit sign patterns and a 4-bit scale. A weight's byte is 128 +- g (Offset::k128):
// the magnitude row from kIq2xxsGrid8, negated in bytes (256 - (128 + g)) where its sign bit is
// set. A pattern's eighth sign makes the count of minus signs even (kSigns): the pattern's
// parity, computed here for all 32 rows at once. The same integers as up_iq2_xxs's.
static inline __attribute__((always_inline)) void load_iq2_xxs(const QActView &, const uint8_t *row, int64_t c,
                                                              __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 66;
  const __m512i aux = _mm512_srli_epi64(_mm512_loadu_si512(b + 2), 32);  // qword ib: block ib's u32
  // Row r's sign pattern (aux[r / 4] >> 7 (r % 4)) & 127 in 32-bit lane r % 16 of s[r / 16].
  const __m512i shift = _mm512_setr_epi32(0, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21);
  const __m512i deint = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  __mmask64 sign[4];  // the masks of g's four vectors (see deal_rows)
  for (int h = 0; h < 2; ++h) {
    const __m512i blocks = _mm512_setr_epi32(8 * h, 8 * h, 8 * h, 8 * h, 8 * h + 2, 8 * h + 2, 8 * h + 2, 8 * h + 2,
                                             8 * h + 4, 8 * h + 4, 8 * h + 4, 8 * h + 4, 8 * h + 6, 8 * h + 6, 8 * h + 6,
                                             8 * h + 6);  // the dword holding block 4h + r / 4's u32
    const __m512i f = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(blocks, aux), shift),
                                       _mm512_set1_epi32(127));
    __m512i par = _mm512_xor_si512(f, _mm512_srli_epi32(f, 4));
    par = _mm512_xor_si512(par, _mm512_srli_epi32(par, 2));
    par = _mm512_xor_si512(par, _mm512_srli_epi32(par, 1));
    const __m512i pattern = _mm512_or_si512(f, _mm512_slli_epi32(_mm512_and_si512(par, _mm512_set1_epi32(1)), 7));
    // 16 sign bytes in row order, even rows then odd rows.
    const __m128i bytes = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(pattern), _mm512_castsi512_si128(deint));
    sign[h] = _cvtu64_mask64((uint64_t)_mm_cvtsi128_si64(bytes));
    sign[2 + h] = _cvtu64_mask64((uint64_t)_mm_extract_epi64(bytes, 1));
  }
  const long long *grid = (const long long *)kIq2xxsGrid8.v;
  auto row_of = [&](int r) { return grid + b[2 + 8 * (r / 4) + r % 4]; };
  __m512i g[4] = {rows8(row_of, 0), rows8(row_of, 16), rows8(row_of, 1), rows8(row_of, 17)};
  for (int i = 0; i < 4; ++i) g[i] = _mm512_mask_sub_epi8(g[i], sign[i], _mm512_setzero_si512(), g[i]);
  deal_rows(g, q);
  // ws = d * (0.5 + s) * 0.25 per block (s = aux >> 28), as up_iq2_xxs's operations, two lanes each.
  const __m512i s = _mm512_srli_epi32(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10,
                                                                                  12, 12, 14, 14), aux), 28);
  *ws = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(load_half(b)), _mm512_add_ps(_mm512_set1_ps(0.5f), _mm512_cvtepi32_ps(s))),
                      _mm512_set1_ps(0.25f));
  *wo = _mm512_setzero_ps();
}
#endif

// A weight chunk as the integer path reads it: its 256 quants, prepared (on AVX-512 interleaved,
// see interleave, and offset by 128 for dpbusd's unsigned operand; elsewhere as unpacked), and
// its 16 sub-blocks' scales and offsets: six cache lines.
struct alignas(64) PreparedChunk {
  int8_t q[kChunkQ];
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

#endif

// Few tokens (decoding): a row is unpacked whole into L1, then used by every token. Unpacking
// the whole row first (not chunk by chunk) matters: the unpackers write quants and scales in
// small stores, and reading them back at once as 64-byte vectors stalls on store forwarding.
template <bool kOffsets>
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
    dots_block<kOffsets, 1, 0>(row, 1, a.packed, a.asum, a.chunks, nt, a.chunks, acc);
    for (int64_t j = 0; j < nt; ++j) finish.add(acc[j], y + j * ldy + r);
#else
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
// chunks overflow it. A row's accumulators wait in acc between blocks (float stores and loads:
// the same bits as registers).
constexpr int kGemmTokens = 4;
constexpr int64_t kChunkBlock = 16;

template <bool kOffsets>
static void gemm_tile(const PreparedChunk *tile, int64_t rows, const QActView &a, int64_t num_tokens, float *y,
                      int64_t ldy) {
  const int64_t chunks = a.chunks;
  __m512 *const acc = thread_vectors<__m512, 0>(rows * kTokenTile);  // [rows][kTokenTile]
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kGemmTokens) {
    const int64_t nt = num_tokens - t0 < kGemmTokens ? num_tokens - t0 : kGemmTokens;
    for (int64_t c0 = 0; c0 < chunks; c0 += kChunkBlock) {
      const int64_t c1 = chunks - c0 < kChunkBlock ? chunks : c0 + kChunkBlock;
      const PackedChunk *pk = a.packed + t0 * chunks + c0;
      const float *as16 = a.asum + (t0 * chunks + c0) * kSubQ;
      for (int64_t r = 0; r < rows; r += 2) {
        const PreparedChunk *w = tile + tile_index(r, c0, chunks);
        if (rows - r >= 2 && nt == kGemmTokens) {  // a full pass: finished from registers after the last block
          __m512 v[2 * kTokenTile];
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < kGemmTokens; ++j)
              v[i * kTokenTile + j] = c0 ? acc[(r + i) * kTokenTile + j] : _mm512_setzero_ps();
          dots_block<kOffsets, 2, kGemmTokens>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
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
          dots_block<kOffsets, 2, 0>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
        else
          dots_block<kOffsets, 1, 0>(w, 2, pk, as16, chunks, nt, c1 - c0, v);
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

template <bool kOffsets>
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
      row_dots<kOffsets>(tile + tile_index(r, 0, chunks), 2, a, t0, nt, y + t0 * ldy + r, ldy);
  }
#endif
}

template <bool kOffsets>
static void unpacked_matmul(const Unpacker &up, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                            int64_t num_tokens, float *y, int64_t ldy) {
  if (num_tokens <= kTokenTile) return stream_rows<kOffsets>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
  const int64_t tile = tile_rows_for(a.chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += tile)
    tile_rows<kOffsets>(up, w + r0 * row_bytes, row_bytes, rows - r0 < tile ? rows - r0 : tile, a, num_tokens,
                        y + r0, ldy);
}

#if defined(__AVX512VNNI__)
// A register type's GEMM: tiles of rows filled through its loader (prepared bytes: the loader's
// plus 128 - 2^kOff, so int8 + 128), far cheaper than the generic unpacker and prepare.
template <Offset kOff, bool kOffsets, auto kLoad>
static void tile_regs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                      float *y, int64_t ldy) {
  const int64_t chunks = a.chunks, tile = tile_rows_for(chunks), chunk_bytes = row_bytes / chunks;
  const __m512i shift = _mm512_set1_epi8((char)(kOff == Offset::kNone ? 128 : 128 - (1 << (int)kOff)));
  PreparedChunk *const buf = thread_vectors<PreparedChunk, 1>(tile_slots(tile, chunks));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t n = rows - r0 < tile ? rows - r0 : tile;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < chunks; ++c) {
        prefetch_ahead(w + (r0 + r) * row_bytes + c * chunk_bytes, chunk_bytes);
        PreparedChunk &p = buf[tile_index(r, c, chunks)];
        __m512 ws, wo;
        __m512i q[4];
        kLoad(a, w + (r0 + r) * row_bytes, c, &ws, &wo, q);
        for (int i = 0; i < 4; ++i)
          _mm512_store_si512(p.q + 64 * i, kOff == Offset::k128 ? q[i] : _mm512_add_epi8(q[i], shift));
        _mm512_store_ps(p.ws, ws);
        if (kOffsets) _mm512_store_ps(p.wo, wo);
      }
    gemm_tile<kOffsets>(buf, n, a, num_tokens, y + r0, ldy);
  }
}

// The types with a register loader: the few-token stream or the GEMM over loader-filled tiles.
template <int kType, Offset kOff, auto kLoad, bool kOffsets = has_offsets(kType)>
static void regs_matmul(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                        float *y, int64_t ldy) {
  if (num_tokens <= kTokenTile) return stream_regs<kOff, kOffsets, kLoad>(w, row_bytes, rows, a, num_tokens, y, ldy);
  tile_regs<kOff, kOffsets, kLoad>(w, row_bytes, rows, a, num_tokens, y, ldy);
}
#endif

void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                  int64_t num_tokens, float *y, int64_t ldy) {
  const Geometry g = geometry(type);
  const Unpacker up{unpack_fn(type), a.k / g.block_size, kChunkQ / g.block_size, g.type_size, has_offsets(type)};
#if defined(__AVX512VNNI__)
  switch (type) {
    case kQ4_K: return regs_matmul<kQ4_K, Offset::kNone, load_q4_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ6_K: return regs_matmul<kQ6_K, Offset::k32, interleaved<load_q6_k>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_K: return regs_matmul<kQ5_K, Offset::kNone, load_q5_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_0:
      return regs_matmul<kQ4_0, Offset::k8, interleaved<load_nibble_blocks<false>>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_NL:
      return regs_matmul<kIQ4_NL, Offset::k128, interleaved<load_nibble_blocks<true>>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_XS: return regs_matmul<kIQ4_XS, Offset::k128, interleaved<load_iq4_xs>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_1: return regs_matmul<kQ4_1, Offset::kNone, interleaved<load_q4_1>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_0: return regs_matmul<kQ5_0, Offset::k16, interleaved<load_q5_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ8_0: return regs_matmul<kQ8_0, Offset::k128, interleaved<load_q8_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ1_S: return regs_matmul<kIQ1_S, Offset::k128, load_iq1_s>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ2_XXS: return regs_matmul<kIQ2_XXS, Offset::k128, load_iq2_xxs>(w, row_bytes, rows, a, num_tokens, y, ldy);
  }
#endif
  if (up.offsets) return unpacked_matmul<true>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
  unpacked_matmul<false>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
}

}  // namespace MOE_ISA_NS
}  // namespace moe
