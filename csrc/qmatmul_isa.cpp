// Per-ISA part of the integer-activation matmul (compiled once per ISA level, as
// kernels_isa.cpp). Only how the integer sums are computed differs between ISAs, and integers
// are exact; the float combination and the final sums are the same operations in the same order
// everywhere, so every ISA gives the same bits. This file has the legacy 32-block types (a
// float combination per 16 weights); the super-block types have their own arithmetic
// (qmatmul_superblock_impl.h).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <vector>

#include "api.h"
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
#include "transpose16_impl.h"
#endif

// Software prefetch of the `bytes` that lie kPrefetchBytes past `p`: a task's rows are one
// contiguous stream, and the hardware prefetcher alone leaves DRAM latency exposed. 2 KB ahead:
// one-token products on a Sapphire Rapids-class Xeon (2 threads, 30 GB/s) read 25-31 GB/s for
// Q4_K, Q6_K and Q8_0 at 1.5-2.5 KB ahead and 20-21 at 4, 6 or 8 KB (600 MB of weights; with
// 1.2-2.3 GB, past its 480 MB L3, 27-30 at 2 KB); V2-Lite's routed experts at one token went
// from 17 to 23 GB/s (bench/moe_layer.py).
constexpr int64_t kPrefetchBytes = 2048;

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

// Few tokens take the stream paths, which re-read every token's activations for each row: while
// those stay well inside L1 (48 KB; 384 B a token and chunk), the stream wins; past about 36 KB
// the GEMM does (8 tokens of a 4096-wide row, 48 KB, ran 1.4-2x slower streamed, measured).
static inline bool stream_tokens(int64_t num_tokens, int64_t chunks) {
  return num_tokens <= kTokenTile && num_tokens * chunks <= 96;
}

// f(std::integral_constant<int, n>) for n = num_tokens (1 to kMax; more count as kMax): the
// few-token paths keep their accumulators in registers only with a compile-time count (a
// runtime one kept them on the stack, and each chunk's add waited on the last one's store: one
// token 15 % slower, two 15 %, four 8 %, measured).
template <int kMax = kTokenTile, typename F>
static inline void with_token_count(int64_t num_tokens, F &&f) {
  if constexpr (kMax > 1)
    if (num_tokens < kMax) return with_token_count<kMax - 1>(num_tokens, f);
  f(std::integral_constant<int, kMax>{});
}

// A legacy 32-block type's unpacker over the 8 blocks of a chunk.
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

// Lane adds for fold: float, or 32-bit integers carried in float vectors (the shuffles do not
// look at the bits).
struct AddPs {
  __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); }
};
struct AddEpi32 {
  __m512 operator()(__m512 a, __m512 b) const {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
};

// tree_sum16 (lane_tree.h) for kN (8 or 16) accumulators at once: folded in halves, 256-bit
// halves added, then 128-bit quarters, pairs and single lanes, each level joining two vectors'
// folds into one (30 shuffles and 15 adds for 16 sums). Accumulator i's sum ends in lane 4 (i % 4) + i / 4 (for 8,
// lanes 4 k + 2 and 4 k + 3 repeat 4 k and 4 k + 1).
template <int kN, typename Add = AddPs>
static inline __attribute__((always_inline)) __m512 fold(const __m512 *v, Add add = {}) {
  static_assert(kN == 8 || kN == 16, "8 or 16 accumulators");
  __m512 u[kN / 2], w[kN / 4], x[2];
  for (int i = 0; i < kN / 2; ++i)  // lanes j and j + 8
    u[i] = add(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < kN / 4; ++i)  // + 4
    w[i] = add(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  for (int i = 0; i < kN / 8; ++i)  // + 2
    x[i] = add(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  if (kN == 8) x[1] = x[0];
  return add(_mm512_shuffle_ps(x[0], x[1], 0x88), _mm512_shuffle_ps(x[0], x[1], 0xDD));  // + 1
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
template <bool kOffsets, int kTokens>  // kTokens: the AVX-512 path's count (with_token_count)
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
    row_dots<kOffsets>(row, 1, a, 0, nt, y + r, ldy);
#endif
  }
#if defined(__AVX512VNNI__)
  finish.flush();
#endif
}

#if defined(__AVX512VNNI__)
// The AVX-512 GEMM over a tile of prepared rows: tokens in tiles of kGemmTokens and chunks in
// blocks of kChunkBlock, so one token tile's packed activations over one block (4 x 8 x 384 B
// = 12 KB) stay in L1 (32 KB on Zen 4, 48 KB on Zen 5; blocks of 16 ran 4-7 % slower on Zen 4)
// while every row pair of the tile passes over them. A row's accumulators wait in acc between
// blocks (float stores and loads: the same bits as registers).
constexpr int kGemmTokens = 4;
constexpr int64_t kChunkBlock = 8;

template <bool kOffsets>
static void gemm_tile(const PreparedChunk *tile, int64_t rows, const QActView &a, int64_t num_tokens, float *y,
                      int64_t ldy) {
  const int64_t chunks = a.chunks, block = kChunkBlock;
  __m512 *const acc = thread_vectors<__m512, 0>(rows * kTokenTile);  // [rows][kTokenTile]
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kGemmTokens) {
    const int64_t nt = num_tokens - t0 < kGemmTokens ? num_tokens - t0 : kGemmTokens;
    for (int64_t c0 = 0; c0 < chunks; c0 += block) {
      const int64_t c1 = chunks - c0 < block ? chunks : c0 + block;
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
    for (int64_t r = 0; r < rows; ++r) row_dots<kOffsets>(tile + tile_index(r, 0, chunks), 2, a, t0, nt, y + t0 * ldy + r, ldy);
  }
#endif
}

template <bool kOffsets>
static void unpacked_matmul(const Unpacker &up, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                            int64_t num_tokens, float *y, int64_t ldy) {
  if (stream_tokens(num_tokens, a.chunks)) {
#if defined(__AVX512VNNI__)
    return with_token_count(num_tokens, [&](auto n) {
      stream_rows<kOffsets, decltype(n)::value>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
    });
#else
    return stream_rows<kOffsets, 0>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
#endif
  }
  const int64_t tile = tile_rows_for(a.chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += tile)
    tile_rows<kOffsets>(up, w + r0 * row_bytes, row_bytes, rows - r0 < tile ? rows - r0 : tile, a, num_tokens, y + r0,
                        ldy);
}

#if defined(__AVX512VNNI__)
// A register type's GEMM: tiles of rows filled through its loader (prepared bytes: the loader's
// plus 128 - 2^kOff, so int8 + 128), far cheaper than the generic unpacker and prepare.
template <Offset kOff, bool kOffsets, auto kLoad>
static void tile_regs(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                      float *y, int64_t ldy) {
  const int64_t chunks = a.chunks, chunk_bytes = row_bytes / chunks, tile = tile_rows_for(chunks);
  const __m512i shift = _mm512_set1_epi8((char)(kOff == Offset::kNone ? 128 : 128 - (1 << (int)kOff)));
  PreparedChunk *const buf = thread_vectors<PreparedChunk, 1>(tile_slots(tile, chunks));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t n = rows - r0 < tile ? rows - r0 : tile;
    for (int64_t r = 0; r < n; ++r) {
      const uint8_t *row = w + (r0 + r) * row_bytes;
      for (int64_t c = 0; c < chunks; ++c) {
        PreparedChunk &p = buf[tile_index(r, c, chunks)];
        __m512 ws, wo;
        __m512i q[4];
        prefetch_ahead(row + c * chunk_bytes, chunk_bytes);
        kLoad(a, row, c, &ws, &wo, q);
        for (int i = 0; i < 4; ++i) _mm512_store_si512(p.q + 64 * i, kOff == Offset::k128 ? q[i] : _mm512_add_epi8(q[i], shift));
        _mm512_store_ps(p.ws, ws);
        if (kOffsets) _mm512_store_ps(p.wo, wo);
      }
    }
    gemm_tile<kOffsets>(buf, n, a, num_tokens, y + r0, ldy);
  }
}

// The legacy types with a register loader: the few-token stream or the GEMM over loader-filled tiles.
template <int kType, Offset kOff, auto kLoad, bool kOffsets = has_offsets(kType)>
static void regs_matmul(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                        float *y, int64_t ldy) {
  if (stream_tokens(num_tokens, a.chunks))
    return with_token_count(num_tokens, [&](auto n) {
      stream_regs<kOff, kOffsets, kLoad, decltype(n)::value>(w, row_bytes, rows, a, y, ldy);
    });
  tile_regs<kOff, kOffsets, kLoad>(w, row_bytes, rows, a, num_tokens, y, ldy);
}
#endif

#include "qmatmul_superblock_impl.h"

void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a,
                  int64_t num_tokens, float *y, int64_t ldy) {
#if defined(__AVX512VNNI__)
  switch (type) {
    case kQ2_K: return super_matmul<kQ2_K, Offset::kNone, load_q2_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ3_K: return super_matmul<kQ3_K, Offset::k4, load_q3_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_K: return super_matmul<kQ4_K, Offset::kNone, load_q4_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_K: return super_matmul<kQ5_K, Offset::kNone, load_q5_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ6_K:
      return super_matmul<kQ6_K, Offset::k32, interleaved_super<load_q6_k>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_XS: return super_matmul<kIQ4_XS, Offset::k128, load_iq4_xs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ1_S:
      return with_gather([&](auto g) {
        super_matmul<kIQ1_S, Offset::k128, load_iq1_s<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
      });
    case kIQ1_M:
      return with_gather([&](auto g) {
        super_matmul<kIQ1_M, Offset::k128, load_iq1_m<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
      });
    case kIQ2_XXS:
      return with_gather([&](auto g) {
        super_matmul<kIQ2_XXS, Offset::k128, load_iq2_xxs<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
      });
    case kIQ2_XS:
      return with_gather([&](auto g) {
        super_matmul<kIQ2_XS, Offset::k128, load_iq2_xs<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
      });
    case kIQ3_XXS: return super_matmul<kIQ3_XXS, Offset::k128, load_iq3_xxs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_0:
      return regs_matmul<kQ4_0, Offset::k8, load_nibble_chunk<false>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kIQ4_NL:
      return regs_matmul<kIQ4_NL, Offset::k128, load_nibble_chunk<true>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ4_1: return regs_matmul<kQ4_1, Offset::kNone, load_q4_1_chunk>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_0: return regs_matmul<kQ5_0, Offset::k16, interleaved<load_q5_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ5_1: return regs_matmul<kQ5_1, Offset::kNone, interleaved<load_q5_1>>(w, row_bytes, rows, a, num_tokens, y, ldy);
    case kQ8_0: return regs_matmul<kQ8_0, Offset::k128, interleaved<load_q8_0>>(w, row_bytes, rows, a, num_tokens, y, ldy);
  }
#else
  if (superblock_type(type))
    return (has_mins(type) ? super_unpacked_matmul<true> : super_unpacked_matmul<false>)(super_unpack_fn(type), w, row_bytes,
                                                                                         rows, a, num_tokens, y, ldy);
#endif
  const Geometry g = geometry(type);
  const Unpacker up{unpack_fn(type), a.k / g.block_size, kChunkQ / g.block_size, g.type_size, has_offsets(type)};
  if (up.offsets) return unpacked_matmul<true>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
  unpacked_matmul<false>(up, w, row_bytes, rows, a, num_tokens, y, ldy);
}

}  // namespace MOE_ISA_NS
}  // namespace moe
