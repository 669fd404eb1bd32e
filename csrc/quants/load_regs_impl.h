// AVX-512 register loaders (included once, in the avx512 namespace, by qmatmul_isa.cpp): a GGUF
// type's 256-weight chunk straight from its blocks into four vectors of unsigned bytes in the
// interleaved order of PackedChunk::qi (see interleave) plus its scales, never through an int8
// buffer: 16-lane float scale and offset vectors for the legacy 32-blocks, the integer scales
// of SuperRegs for the super-block types. The few-token paths run them per row and chunk; the
// GEMMs fill their tiles with them.
#pragma once

// A super-block's scales in registers: lane s the integer scale and min of 16-weight sub-block s
// (a 32-weight sub-block's in both of its lanes; zero mins for the types without), the mins
// once more as int16 pairs of consecutive sub-blocks (per 32 weights for Q4_K/Q5_K: 4 pairs in
// the low half; per 16 for Q2_K: 8 pairs), and the block's float scales: unpack_impl.h's
// SuperScales.
struct SuperRegs {
  __m512i s, m;
  __m256i mp;
  float d, dmin;
};

static inline __attribute__((always_inline)) void no_mins(SuperRegs *sc) {
  sc->m = _mm512_setzero_si512();
  sc->mp = _mm256_setzero_si256();
  sc->dmin = 0.0f;
}

// dpbusd takes the unsigned bytes as they are; where the generic path's int8 is that byte minus
// a constant (Q8_0 stored with +128 here, Q5_0's 16), the constant times the activation's
// sub-block sum comes off: the same integers, the same float operations, the same bits.
enum class Offset { kNone = 0, k4 = 2, k8 = 3, k16 = 4, k32 = 5, k128 = 7 };  // log2 of what each weight byte carries extra

// Q4_K's 8 six-bit scales and 8 mins straight into registers: the 12 packed bytes give them
// with a few 32-bit operations (bytes 0-3 and 4-7 hold scales/mins 0-3 in their low 6 bits and
// the top 2 bits of scales/mins 4-7, whose low 4 bits are the nibbles of bytes 8-11), each in
// the two lanes of its 32.
static inline __attribute__((always_inline)) void q4_k_scales(const uint8_t *b, SuperRegs *r) {
  const uint32_t u0 = load_u32(b + 4), u1 = load_u32(b + 8), u2 = load_u32(b + 12);
  const uint64_t sc = (u0 & 0x3f3f3f3fu) | (uint64_t)((u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u)) << 32;
  const uint64_t mn = (u1 & 0x3f3f3f3fu) | (uint64_t)(((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u)) << 32;
  const __m128i s8 = _mm_cvtsi64_si128((long long)sc), m8 = _mm_cvtsi64_si128((long long)mn);
  r->s = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(s8, s8));
  r->m = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(m8, m8));
  r->mp = _mm256_zextsi128_si256(_mm_cvtepu8_epi16(m8));
  r->d = load_half(b);
  r->dmin = load_half(b + 2);
}

// A loader of the natural order, then interleaved (legacy 32-blocks, super-blocks).
template <auto kLoad>
static inline __attribute__((always_inline)) void interleaved(const QActView &a, const uint8_t *row, int64_t c,
                                                             __m512 *ws, __m512 *wo, __m512i *q) {
  kLoad(a, row, c, ws, wo, q);
  interleave(q);
}
template <auto kLoad>
static inline __attribute__((always_inline)) void interleaved_super(const uint8_t *row, int64_t c, SuperRegs *sc,
                                                                   __m512i *q) {
  kLoad(row, c, sc, q);
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

// Q2_K and Q3_K's 2-bit quants (64 bytes at qs): sub-block s is bytes 32 (s / 8) + 16 (s % 2)
// .. + 15, shifted down by 2 ((s / 2) % 4); lane s of vector p takes their dword p.
static inline __attribute__((always_inline)) void k_crumbs(const uint8_t *qs, __m512i *q) {
  const __m512i v = _mm512_loadu_si512(qs), m3 = _mm512_set1_epi8(3);
  const __m512i base = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 8, 12, 8, 12, 8, 12, 8, 12);
  const __m512i shift = _mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 0, 0, 2, 2, 4, 4, 6, 6);
  for (int p = 0; p < 4; ++p)
    q[p] = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(p)), v),
                                              shift), m3);
}

// Q2_K: 16 bytes of 4-bit scale and min per sub-block, 64 of 2-bit quants (unsigned), d, dmin.
// The same integers as up_q2_k's.
static inline __attribute__((always_inline)) void load_q2_k(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 84;
  const __m128i sc8 = _mm_loadu_si128((const __m128i *)b);
  const __m512i sc = _mm512_cvtepu8_epi32(sc8);
  r->s = _mm512_and_si512(sc, _mm512_set1_epi32(15));
  r->m = _mm512_srli_epi32(sc, 4);
  r->mp = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(15)));
  r->d = load_half(b + 80);
  r->dmin = load_half(b + 82);
  k_crumbs(b + 16, q);
}

// Q3_K: 32 bytes of high bits, 64 of 2-bit quants, 12 of packed 6-bit scales, d. A weight's byte
// is its 2-bit quant plus 4 times its high bit: the int8 (from -4) + 4 (Offset::k4). Lane s of
// vector p takes high-bit dword 4 (s % 2) + p, bit s / 2 of each byte. The scales unpack as
// llama.cpp's 32-bit masks do; the same integers as up_q3_k's.
static inline __attribute__((always_inline)) void load_q3_k(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 110;
  const uint32_t a0 = load_u32(b + 96), a1 = load_u32(b + 100), t = load_u32(b + 104);
  const uint32_t low = 0x0f0f0f0fu, two = 0x03030303u;
  const __m128i packed = _mm_setr_epi32((int)((a0 & low) | ((t & two) << 4)), (int)((a1 & low) | (((t >> 2) & two) << 4)),
                                        (int)(((a0 >> 4) & low) | (((t >> 4) & two) << 4)),
                                        (int)(((a1 >> 4) & low) | (((t >> 6) & two) << 4)));
  r->s = _mm512_sub_epi32(_mm512_cvtepu8_epi32(packed), _mm512_set1_epi32(32));
  r->d = load_half(b + 108);
  no_mins(r);
  k_crumbs(b + 32, q);
  const __m512i hm = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b)), one = _mm512_set1_epi8(1);
  const __m512i base = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i bit = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  for (int p = 0; p < 4; ++p) {
    const __m512i h = _mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(p)), hm), bit);
    q[p] = _mm512_or_si512(q[p], _mm512_slli_epi32(_mm512_and_si512(h, one), 2));
  }
}

static inline __attribute__((always_inline)) void load_q4_k(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 144;
  q4_k_scales(b, r);
  k_nibbles(b + 16, q);
}

// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d. Piece p is quarters
// 2 (p % 2) and 2 (p % 2) + 1 of half p / 2 (up_q6_k's order): the low or high nibbles of that
// half's 64 ql bytes, and bit pairs 0/2 or 4/6 of its 32 qh bytes, seen once per 256-bit lane,
// moved to bits 4-5 by a per-lane shift. The byte is the int8 + 32.
static inline __attribute__((always_inline)) void load_q6_k(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 210;
  r->s = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192)));
  r->d = load_half(b + 208);
  no_mins(r);
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

// How many of a 32-block type's 8 blocks chunk c holds (fewer in a row's part-filled last chunk).
static inline int blocks_in_chunk(const QActView &a, int64_t c) {
  const int64_t left = a.k / 32 - c * 8;
  return (int)(left < 8 ? left : 8);
}

// The `n` bytes at p that a chunk holds of the 64 there, zeros for the rest (no read past them).
static inline __attribute__((always_inline)) __m512i bytes_upto(const uint8_t *p, int64_t n) {
  const __mmask64 m = n >= 64 ? ~0ull : n <= 0 ? 0ull : (1ull << n) - 1;
  return _mm512_maskz_loadu_epi8(m, p);
}

// Q4_1: d, m, 16 bytes of nibbles (unsigned), straight into the interleaved order (a chunk of 8
// blocks is 160 bytes): lane s of vector p is dword p of block s / 2's nibbles (byte 20 (s / 2)
// + 4 + 4 p, word 10 (s / 2) + 2 + 2 p), its low nibbles for even s, high for odd; d and m are
// words 10 (s / 2) and + 1. Words 0-63 come from bytes 0-127 (w0, w1), words 64-79 from bytes
// 96-159 (w1, w2), where word w sits at index w - 16.
static inline __attribute__((always_inline)) __m512i q4_1_words(__m512i w0, __m512i w1, __m512i w2, __m512i idx) {
  const __mmask32 high = _mm512_cmpge_epu16_mask(idx, _mm512_set1_epi16(64));
  return _mm512_mask_mov_epi16(_mm512_permutex2var_epi16(w0, idx, w1), high,
                               _mm512_permutex2var_epi16(w1, _mm512_sub_epi16(idx, _mm512_set1_epi16(16)), w2));
}

// A row's part-filled last chunk (K = 576 has 2.25) reads as zeros past its blocks: zero
// quants, d and m.
static inline __attribute__((always_inline)) void load_q4_1_chunk(const QActView &a, const uint8_t *row, int64_t c,
                                                                 __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 20;
  const int64_t bytes = 20 * blocks_in_chunk(a, c);
  const __m512i w0 = bytes_upto(b, bytes), w1 = bytes_upto(b + 64, bytes - 64), w2 = bytes_upto(b + 96, bytes - 96);
  alignas(64) static constexpr int16_t kFirst[32] = {2,  3,  2,  3,  12, 13, 12, 13, 22, 23, 22, 23, 32, 33, 32, 33,
                                                       42, 43, 42, 43, 52, 53, 52, 53, 62, 63, 62, 63, 72, 73, 72, 73};
  alignas(64) static constexpr int16_t kScales[32] = {0,  0,  10, 10, 20, 20, 30, 30, 40, 40, 50, 50, 60, 60, 70, 70,
                                                        1,  1,  11, 11, 21, 21, 31, 31, 41, 41, 51, 51, 61, 61, 71, 71};
  const __m512i first = _mm512_load_si512(kFirst);
  const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4), m4 = _mm512_set1_epi8(0x0F);
  for (int p = 0; p < 4; ++p) {
    const __m512i v = q4_1_words(w0, w1, w2, _mm512_add_epi16(first, _mm512_set1_epi16((short)(2 * p))));
    q[p] = _mm512_and_si512(_mm512_srlv_epi32(v, shift), m4);
  }
  const __m512i dm = q4_1_words(w0, w1, w2, _mm512_load_si512(kScales));  // 16 d halves, then 16 m
  *ws = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
  *wo = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dm, 1));
}

// Two whole Q5 blocks (nibbles at qs0 and qs1, high-bit u32s at qh0 and qh1) as one piece: each
// block's 16 nibble bytes broadcast into two 128-bit lanes, the second shifted down by 4, and the
// two u32s one 64-bit mask adding 16 to its bytes (an or: the nibbles are below 16). The bytes of
// two_blocks(nibbles32 | q5_high_bits), in a third of the instructions.
static inline __attribute__((always_inline)) __m512i q5_pair(const uint8_t *qs0, const uint8_t *qs1,
                                                            const uint8_t *qh0, const uint8_t *qh1) {
  const __m512i v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)qs0)), 0xFF00,
                                                _mm_loadu_si128((const __m128i *)qs1));
  const __mmask64 high = _cvtu64_mask64((uint64_t)load_u32(qh0) | (uint64_t)load_u32(qh1) << 32);
  const __m512i nib = _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)),
                                       _mm512_set1_epi8(0x0F));
  return _mm512_mask_add_epi8(nib, high, nib, _mm512_set1_epi8(16));
}

// Q5_0: d, 32 high bits, 16 bytes of nibbles; the byte nibble | high << 4 is the int8 + 16.
static inline __attribute__((always_inline)) void load_q5_0(const QActView &a, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 22;
  const int nblk = blocks_in_chunk(a, c);
  *ws = halves_per_block(b, 22, nblk);
  *wo = _mm512_setzero_ps();
  for (int p = 0; p < 4; ++p) {
    const uint8_t *blk = b + 22 * (2 * p);
    if (2 * p + 2 <= nblk) {
      q[p] = q5_pair(blk + 6, blk + 28, blk + 2, blk + 24);
      continue;
    }
    __m256i v[2];  // a row's part-filled last chunk (K = 1408 has 5.5)
    for (int j = 0; j < 2; ++j) {
      const uint8_t *one = blk + 22 * j;
      v[j] = 2 * p + j < nblk ? _mm256_or_si256(nibbles32(one + 6), q5_high_bits(load_u32(one + 2)))
                              : _mm256_set1_epi8(16);  // + 16 of a zero weight: its bsum term cancels
    }
    q[p] = two_blocks(v[0], v[1]);
  }
}

// Q5_1: d, m, 32 high bits, 16 bytes of nibbles; unsigned 5-bit weights (Q5_0's without its
// offset) and Q4_1's m. The same integers and floats as up_q5_1's.
static inline __attribute__((always_inline)) void load_q5_1(const QActView &a, const uint8_t *row, int64_t c,
                                                           __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 24;
  const int nblk = blocks_in_chunk(a, c);
  *ws = halves_per_block(b, 24, nblk);
  *wo = halves_per_block(b + 2, 24, nblk);
  for (int p = 0; p < 4; ++p) {
    const uint8_t *blk = b + 24 * (2 * p);
    if (2 * p + 2 <= nblk) {
      q[p] = q5_pair(blk + 8, blk + 32, blk + 4, blk + 28);
      continue;
    }
    __m256i v[2];  // a row's part-filled last chunk
    for (int k = 0; k < 2; ++k) {
      const uint8_t *one = blk + 24 * k;
      v[k] = 2 * p + k < nblk ? _mm256_or_si256(nibbles32(one + 8), q5_high_bits(load_u32(one + 4))) : _mm256_setzero_si256();
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
// IQ4_NL's indexes the codebook (kCodebook), carried as int8 + 128. Straight into the
// interleaved order (a chunk of 8 blocks is 144 bytes): lane s of vector p is dword p of block
// s / 2's nibbles (2 + 18 (s / 2) + 4 p, word aligned), its low nibbles for even s (the block's
// weights 0-15) and high for odd s. Two word permutes gather a vector, block 7's words from a
// second window; the 8 d fields are words 9 i. A part-filled last chunk reads zeros past its
// blocks: their d is 0, and their sums are too, over the activations' zero padding.
template <bool kCodebook>
static inline __attribute__((always_inline)) void load_nibble_chunk(const QActView &a, const uint8_t *row, int64_t c,
                                                                   __m512 *ws, __m512 *wo, __m512i *q) {
  const uint8_t *b = row + c * 8 * 18;
  const int64_t bytes = 18 * blocks_in_chunk(a, c);
  const __m512i w0 = bytes_upto(b, bytes), w1 = bytes_upto(b + 64, bytes - 64), w2 = bytes_upto(b + 80, bytes - 80);
  // Word index of lane s's dword for p = 0 (even word: low half); + 2 p per vector. Words 0-63
  // come from (w0, w1); block 7's (64-71) from (w1, w2), where word w sits at index w - 8.
  alignas(64) static constexpr int16_t kFirst[32] = {1,  2,  1,  2,  10, 11, 10, 11, 19, 20, 19, 20, 28, 29, 28, 29,
                                                       37, 38, 37, 38, 46, 47, 46, 47, 55, 56, 55, 56, 56, 57, 56, 57};
  alignas(64) static constexpr int16_t kScales[32] = {0, 0, 9, 9, 18, 18, 27, 27, 36, 36, 45, 45, 54, 54, 63, 63};
  const __m512i first = _mm512_load_si512(kFirst);
  const __mmask32 block7 = 0xF0000000u;
  const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4), m4 = _mm512_set1_epi8(0x0F);
  const __m512i table = _mm512_broadcast_i32x4(_mm256_castsi256_si128(iq4_table()));
  for (int p = 0; p < 4; ++p) {
    const __m512i idx = _mm512_add_epi16(first, _mm512_set1_epi16((short)(2 * p)));
    const __m512i v = _mm512_mask_mov_epi16(_mm512_permutex2var_epi16(w0, idx, w1), block7,
                                            _mm512_permutex2var_epi16(w1, idx, w2));
    const __m512i nib = _mm512_and_si512(_mm512_srlv_epi32(v, shift), m4);
    q[p] = kCodebook ? _mm512_shuffle_epi8(table, nib) : nib;
  }
  const __m512i d = _mm512_permutex2var_epi16(w0, _mm512_load_si512(kScales), w1);
  *ws = _mm512_cvtph_ps(_mm512_castsi512_si256(d));
  *wo = _mm512_setzero_ps();
}

// IQ4_XS: d, 8 six-bit block scales (low nibbles in 4 bytes, high bit pairs in a u16), and
// codebook indices as IQ4_NL's; the scale of 32-block ib is ls - 32, as up_iq4_xs has it.
// Straight into the interleaved order: lane s of vector p is dword 4 (s / 2) + p of the 128
// index bytes, low nibbles for even s (the block's weights 0-15) and high for odd s; the scales
// lane by lane from the broadcast fields.
static inline __attribute__((always_inline)) void load_iq4_xs(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 136;
  const __m512i block = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);  // ib = s / 2
  const __m512i lo = _mm512_srlv_epi32(_mm512_set1_epi32((int)load_u32(b + 4)), _mm512_slli_epi32(block, 2));
  const __m512i hi = _mm512_srlv_epi32(_mm512_set1_epi32((int)load_u16(b + 2)), _mm512_slli_epi32(block, 1));
  const __m512i ls = _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xF)),
                                     _mm512_slli_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(3)), 4));
  r->s = _mm512_sub_epi32(ls, _mm512_set1_epi32(32));
  r->d = load_half(b);
  no_mins(r);
  const __m512i q0 = _mm512_loadu_si512(b + 8), q1 = _mm512_loadu_si512(b + 72);
  const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4), m4 = _mm512_set1_epi8(0x0F);
  const __m512i table = _mm512_broadcast_i32x4(_mm256_castsi256_si128(iq4_table()));
  for (int p = 0; p < 4; ++p) {
    const __m512i idx = _mm512_add_epi32(_mm512_slli_epi32(block, 2), _mm512_set1_epi32(p));
    const __m512i v = _mm512_permutex2var_epi32(q0, idx, q1);
    q[p] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srlv_epi32(v, shift), m4));
  }
}

// Q5_K: Q4_K's header and nibbles, plus a fifth bit per weight: bit sb of qh[i] for weight i of
// 32-block sb, added as 16 under a byte mask. Lane s of vector p reads qh dword 4 (s % 2) + p,
// bit s / 2 of each byte.
static inline __attribute__((always_inline)) void load_q5_k(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 176;
  const __m512i qh = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + 16)));
  const __m512i bits = _mm512_setr_epi32(0x01010101, 0x01010101, 0x02020202, 0x02020202, 0x04040404, 0x04040404,
                                         0x08080808, 0x08080808, 0x10101010, 0x10101010, 0x20202020, 0x20202020,
                                         0x40404040, 0x40404040, (int)0x80808080, (int)0x80808080);
  const __m512i base = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i sixteen = _mm512_set1_epi8(16);
  q4_k_scales(b, r);
  k_nibbles(b + 48, q);
  for (int p = 0; p < 4; ++p) {
    const __m512i h = _mm512_permutexvar_epi32(_mm512_add_epi32(base, _mm512_set1_epi32(p)), qh);
    q[p] = _mm512_mask_add_epi8(q[p], _mm512_test_epi8_mask(h, bits), q[p], sixteen);
  }
}

// The IQ2/IQ3/IQ1 sub-block scales 2 s + 1 (unpack_impl.h's odd_scale).
static inline __attribute__((always_inline)) __m512i odd_scales(__m512i s) {
  return _mm512_add_epi32(_mm512_slli_epi32(s, 1), _mm512_set1_epi32(1));
}

// The grid types' codebooks as the bytes dpbusd takes (int8 + 128): IQ1_S's 8 g (g in
// {-1, 0, 1}, before its block's delta), IQ2_XXS's and IQ2_XS's magnitudes (before their signs).
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
static constexpr Grid8<512> iq2xs_grid8() {
  Grid8<512> g{};
  for (int i = 0; i < 512; ++i)
    for (int j = 0; j < 8; ++j) g.v[i][j] = (uint8_t)(kIq2xsGrid[i][j] + 128);
  return g;
}
static constexpr Grid8<2048> kIq1sGrid8 = iq1s_grid8();
static constexpr Grid8<256> kIq2xxsGrid8 = iq2xxs_grid8();
static constexpr Grid8<512> kIq2xsGrid8 = iq2xs_grid8();
// IQ3_XXS's codebook entries of 4 magnitudes as 4 bytes (int8 + 128), a 32-bit value each.
struct Grid4 {
  alignas(64) uint32_t v[256];
};
static constexpr Grid4 iq3xxs_grid4() {
  Grid4 g{};
  for (int i = 0; i < 256; ++i)
    for (int j = 0; j < 4; ++j) g.v[i] |= (uint32_t)(uint8_t)(kIq3xxsGrid[i][j] + 128) << (8 * j);
  return g;
}
static constexpr Grid4 kIq3xxsGrid4 = iq3xxs_grid4();

// Codebook rows row(first), row(first + 2), ..., row(first + 14) (8-byte values at the
// addresses row() gives) as the qwords of one vector: pairs by a low and a high half load, then
// three inserts. Where gathers are fast (kGather, below) one vpgatherdq does it instead; on Zen 5
// one takes 14 cycles. Masked broadcasts need 7 mask registers refilled per chunk.
template <typename Row>
static inline __attribute__((always_inline)) __m512i rows8(Row row, int first) {
  auto pair = [&](int r) {
    const __m128d lo = _mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)row(r)));
    return _mm_castpd_si128(_mm_loadh_pd(lo, (const double *)row(r + 2)));
  };
  const __m256i lo = _mm256_set_m128i(pair(first + 4), pair(first)), hi = _mm256_set_m128i(pair(first + 12), pair(first + 8));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// f(std::true_type) where the codebook loaders gather their rows (api.h's moe_gather_active),
// else f(std::false_type): the kernels' switches pick load_x<decltype(g)::value> with it.
template <typename F>
static inline __attribute__((always_inline)) void with_gather(F &&f) {
  if (moe_gather_active()) return f(std::true_type{});
  f(std::false_type{});
}

// rows8's four groups {rows 0, 2, .., 14}, {16, 18, .., 30}, {1, 3, .., 15}, {17, 19, .., 31} of
// grid rows (row r's index in idx's u16 lane r), one vpgatherdq each: on Intel from Sapphire
// Rapids on, IQ1_S's one-token products ran 1.5x faster than by rows8 (IQ2_XXS 1.1-1.2x).
static inline __attribute__((always_inline)) void gather_groups(const long long *grid, __m512i idx, __m512i *g) {
  const __m512i order = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 30, 28, 26, 24, 22,
                                         20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i sorted = _mm512_permutexvar_epi16(order, idx);
  const __m512i even = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(sorted));
  const __m512i odd = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(sorted, 1));
  g[0] = _mm512_i32gather_epi64(_mm512_castsi512_si256(even), grid, 8);
  g[1] = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(even, 1), grid, 8);
  g[2] = _mm512_i32gather_epi64(_mm512_castsi512_si256(odd), grid, 8);
  g[3] = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(odd, 1), grid, 8);
}

// A chunk of 32 codebook rows of 8 weights in the interleaved order. Sub-block s is rows 2s and
// 2s + 1, so g holds {rows 0, 2, .., 14}, {16, 18, .., 30}, {1, 3, .., 15}, {17, 19, .., 31}
// (see rows8), and vector p takes the 4-byte half p % 2 of rows 2s + p / 2.
static inline __attribute__((always_inline)) void deal_rows(const __m512i *g, __m512i *q) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int p = 0; p < 4; ++p) q[p] = _mm512_permutex2var_epi32(g[p & 2], p & 1 ? odd : even, g[(p & 2) + 1]);
}

// The 32 codebook rows (8 g + 128, from kIq1sGrid8) of IQ1_S and IQ1_M, their 11-bit indices in
// idx's u16 lanes (row r in lane r), into the interleaved order: gathered, or the indices four
// per 64-bit word into general registers, then rows8; then deal_rows.
template <bool kGather>
static inline __attribute__((always_inline)) void iq1_rows(__m512i idx, __m512i *q) {
  const long long *grid = (const long long *)kIq1sGrid8.v;
  __m512i g[4];
  if constexpr (kGather) {
    gather_groups(grid, idx, g);
  } else {
    uint64_t x[8];
    for (int l = 0; l < 4; ++l) {
      const __m128i v = _mm512_extracti32x4_epi32(idx, l);
      x[2 * l] = (uint64_t)_mm_cvtsi128_si64(v);
      x[2 * l + 1] = (uint64_t)_mm_extract_epi64(v, 1);
    }
    auto row_of = [&](int r) { return grid + ((x[r / 4] >> (16 * (r % 4))) & 0xFFFF); };
    g[0] = rows8(row_of, 0), g[1] = rows8(row_of, 16), g[2] = rows8(row_of, 1), g[3] = rows8(row_of, 17);
  }
  deal_rows(g, q);
}

// IQ1_S (the 1.58-bit DeepSeek-R1's experts): a weight is ws * (8 g + delta), its byte
// 8 g + delta + 128 (Offset::k128): 32 codebook rows from kIq1sGrid8 plus the block's delta of
// +-1. The same integers as up_iq1_s's.
template <bool kGather>
static inline __attribute__((always_inline)) void load_iq1_s(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 50;
  const __m128i qh8 = _mm_loadu_si128((const __m128i *)(b + 34));  // 8 x u16
  // The rows' 11-bit indices as u16: qs[r] | ((qh[r / 4] >> 3 (r % 4)) & 7) << 8.
  const __m512i quarter = _mm512_set_epi16(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1,
                                           1, 0, 0, 0, 0);
  const __m512i shift = _mm512_set_epi16(9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3,
                                         0, 9, 6, 3, 0);
  const __m512i hi = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi16(quarter, _mm512_castsi128_si512(qh8)), shift),
                                      _mm512_set1_epi16(7));
  const __m512i idx = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2))),
                                      _mm512_slli_epi16(hi, 8));
  iq1_rows<kGather>(idx, q);
  const __mmask16 negative = (__mmask16)_mm_movemask_epi8(_mm_srai_epi16(qh8, 15));  // both lanes of a block
  const __m512i delta = _mm512_mask_mov_epi32(_mm512_set1_epi8(1), negative, _mm512_set1_epi8(-1));
  for (int p = 0; p < 4; ++p) q[p] = _mm512_add_epi8(q[p], delta);
  // Scale 2 s + 1 per block (two lanes each) with d / 8, as up_iq1_s's.
  const __m512i qh = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                                              _mm512_cvtepu16_epi32(_mm256_castsi128_si256(qh8)));
  r->s = _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 12), _mm512_set1_epi32(7)), 1),
                          _mm512_set1_epi32(1));
  r->d = load_half(b) * 0.125f;
  no_mins(r);
}

// The sign masks of rows8's four groups (see deal_rows) from per-block u32s whose bits 7 l ..
// 7 l + 6 are row 4 ib + l's sign pattern (IQ2_XXS, IQ3_XXS), block ib's in dword kStride * ib of
// aux. A pattern's eighth sign makes the count of minus signs even (kSigns): its parity,
// computed here for all 32 rows at once.
template <int kStride>
static inline __attribute__((always_inline)) void grid_signs(__m512i aux, __mmask64 *sign) {
  const __m512i shift = _mm512_setr_epi32(0, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21);
  const __m512i deint = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  for (int h = 0; h < 2; ++h) {  // rows 16 h .. 16 h + 15: row r's pattern in lane r % 16
    const int k = kStride;
    const __m512i blocks = _mm512_setr_epi32(k * 4 * h, k * 4 * h, k * 4 * h, k * 4 * h, k * (4 * h + 1), k * (4 * h + 1),
                                             k * (4 * h + 1), k * (4 * h + 1), k * (4 * h + 2), k * (4 * h + 2),
                                             k * (4 * h + 2), k * (4 * h + 2), k * (4 * h + 3), k * (4 * h + 3),
                                             k * (4 * h + 3), k * (4 * h + 3));
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
}

// IQ2_XXS (the 1.58-bit R1's down projections): d, then per 32-block four codebook indices and
// a u32 of four 7-bit sign patterns and a 4-bit scale. A weight's byte is 128 +- g (Offset::k128):
// the magnitude row from kIq2xxsGrid8, negated in bytes (256 - (128 + g)) where its sign bit is
// set (grid_signs). The same integers as up_iq2_xxs's.
template <bool kGather>
static inline __attribute__((always_inline)) void load_iq2_xxs(const uint8_t *row, int64_t c, SuperRegs *r,
                                                              __m512i *q) {
  const uint8_t *b = row + c * 66;
  const __m512i aux = _mm512_srli_epi64(_mm512_loadu_si512(b + 2), 32);  // qword ib: block ib's u32
  __mmask64 sign[4];
  grid_signs<2>(aux, sign);
  const long long *grid = (const long long *)kIq2xxsGrid8.v;
  __m512i g[4];
  if constexpr (kGather) {
    // Row r's index is byte r % 4 of block r / 4's qword: those bytes to the bottom of each
    // 128-bit lane, the lanes' bottom qwords together, widened to u16.
    const __m512i low4 = _mm512_shuffle_epi8(
        _mm512_loadu_si512(b + 2), _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 0, 0, 0, 0, 0, 0, 0, 0)));
    gather_groups(grid, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutexvar_epi64(
                            _mm512_setr_epi64(0, 2, 4, 6, 0, 0, 0, 0), low4))), g);
  } else {
    auto row_of = [&](int r) { return grid + b[2 + 8 * (r / 4) + r % 4]; };
    g[0] = rows8(row_of, 0), g[1] = rows8(row_of, 16), g[2] = rows8(row_of, 1), g[3] = rows8(row_of, 17);
  }
  for (int i = 0; i < 4; ++i) g[i] = _mm512_mask_sub_epi8(g[i], sign[i], _mm512_setzero_si512(), g[i]);
  deal_rows(g, q);
  // Scale 2 s + 1 per block (s = aux >> 28, two lanes each) with d / 8, as up_iq2_xxs's.
  const __m512i s = _mm512_srli_epi32(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10,
                                                                                  12, 12, 14, 14), aux), 28);
  r->s = odd_scales(s);
  r->d = load_half(b) * 0.125f;
  no_mins(r);
}

// IQ2_XS: d, 32 u16 (a row's 9-bit codebook index and 7-bit sign pattern), 8 bytes of 4-bit
// scales (one per 16 weights). As IQ2_XXS: magnitude rows from kIq2xsGrid8, negated in bytes
// where the pattern, its parity the eighth sign, says. The same integers as up_iq2_xs's.
template <bool kGather>
static inline __attribute__((always_inline)) void load_iq2_xs(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 74;
  const __m512i f = _mm512_srli_epi16(_mm512_loadu_si512(b + 2), 9);  // row r's pattern in word r
  __m512i par = _mm512_xor_si512(f, _mm512_srli_epi16(f, 4));
  par = _mm512_xor_si512(par, _mm512_srli_epi16(par, 2));
  par = _mm512_xor_si512(par, _mm512_srli_epi16(par, 1));
  const __m256i pattern = _mm512_cvtepi16_epi8(
      _mm512_or_si512(f, _mm512_slli_epi16(_mm512_and_si512(par, _mm512_set1_epi16(1)), 7)));
  // Per 16 rows, even rows then odd: qwords {0-14 even, 1-15 odd, 16-30 even, 17-31 odd}.
  const __m256i sorted = _mm256_shuffle_epi8(
      pattern, _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)));
  const __mmask64 sign[4] = {_cvtu64_mask64((uint64_t)_mm256_extract_epi64(sorted, 0)),
                             _cvtu64_mask64((uint64_t)_mm256_extract_epi64(sorted, 2)),
                             _cvtu64_mask64((uint64_t)_mm256_extract_epi64(sorted, 1)),
                             _cvtu64_mask64((uint64_t)_mm256_extract_epi64(sorted, 3))};  // rows8's groups
  const long long *grid = (const long long *)kIq2xsGrid8.v;
  __m512i g[4];
  if constexpr (kGather) {
    gather_groups(grid, _mm512_and_si512(_mm512_loadu_si512(b + 2), _mm512_set1_epi16(511)), g);
  } else {
    auto row_of = [&](int r) { return grid + (load_u16(b + 2 + 2 * r) & 511); };
    g[0] = rows8(row_of, 0), g[1] = rows8(row_of, 16), g[2] = rows8(row_of, 1), g[3] = rows8(row_of, 17);
  }
  for (int i = 0; i < 4; ++i) g[i] = _mm512_mask_sub_epi8(g[i], sign[i], _mm512_setzero_si512(), g[i]);
  deal_rows(g, q);
  // Scale 2 s + 1 per 16 weights (s the nibble s % 2 of byte s / 2) with d / 8, as up_iq2_xs's.
  const __m128i s8 = _mm_loadl_epi64((const __m128i *)(b + 66));
  const __m512i s = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(s8, s8)),
                                                       _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4)),
                                     _mm512_set1_epi32(15));
  r->s = odd_scales(s);
  r->d = load_half(b) * 0.125f;
  no_mins(r);
}

// IQ3_XXS: d, 64 codebook indices (row r of 8 weights is entries 2 r and 2 r + 1 of 4), then per
// 32-block a u32 of four 7-bit sign patterns and a 4-bit scale. As IQ2_XXS, the rows built from
// 32-bit table loads (a gather of 16 entries measured slower, 0.65 against 0.42 ms a 4096x4096
// token). The same integers as up_iq3_xxs's.
static inline __attribute__((always_inline)) void load_iq3_xxs(const uint8_t *row, int64_t c, SuperRegs *r,
                                                              __m512i *q) {
  const uint8_t *b = row + c * 98;
  const __m512i aux = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + 66)));  // dword ib: block ib's
  __mmask64 sign[4];
  grid_signs<1>(aux, sign);
  // rows8's groups (even rows 0-14, 16-30, odd 1-15, 17-31), a row's two entries in a qword:
  // 128-bit quarters of four entries, from 32-bit table loads.
  const uint32_t *t = kIq3xxsGrid4.v;
  const uint8_t *e = b + 2;  // row r's entries e[2 r], e[2 r + 1]
  auto quarter = [&](int r) {  // rows r and r + 2
    return _mm_setr_epi32((int)t[e[2 * r]], (int)t[e[2 * r + 1]], (int)t[e[2 * r + 4]], (int)t[e[2 * r + 5]]);
  };
  auto group = [&](int first) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(quarter(first + 4), quarter(first))),
                              _mm256_set_m128i(quarter(first + 12), quarter(first + 8)), 1);
  };
  __m512i g[4] = {group(0), group(16), group(1), group(17)};
  for (int i = 0; i < 4; ++i) g[i] = _mm512_mask_sub_epi8(g[i], sign[i], _mm512_setzero_si512(), g[i]);
  deal_rows(g, q);
  // Scale 2 s + 1 per block (s = aux >> 28, two lanes each) with d / 4, as up_iq3_xxs's.
  const __m512i s = _mm512_srli_epi32(
      _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), aux), 28);
  r->s = odd_scales(s);
  r->d = load_half(b) * 0.25f;
  no_mins(r);
}

// IQ1_M: 32 bytes of index low bits, 16 of a nibble per row (3 high index bits, and the sign of
// the row's delta), 4 u16 of 3-bit scales (one per 16 weights) whose top nibbles make d. As
// IQ1_S, with the delta per row of 8: lane s of vectors 0-1 holds row 2 s, of vectors 2-3 row
// 2 s + 1 (deal_rows). The same integers and d as up_iq1_m's.
template <bool kGather>
static inline __attribute__((always_inline)) void load_iq1_m(const uint8_t *row, int64_t c, SuperRegs *r, __m512i *q) {
  const uint8_t *b = row + c * 56;
  const __m128i qh8 = _mm_loadu_si128((const __m128i *)(b + 32));
  const __m512i nib = _mm512_and_si512(  // row r's nibble, qh[r / 2] >> 4 (r % 2), in u16 lane r
      _mm512_srlv_epi16(_mm512_cvtepu8_epi16(_mm256_set_m128i(_mm_unpackhi_epi8(qh8, qh8), _mm_unpacklo_epi8(qh8, qh8))),
                        _mm512_set1_epi32(4 << 16)),
      _mm512_set1_epi16(15));
  iq1_rows<kGather>(_mm512_or_si512(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)b)),
                           _mm512_slli_epi16(_mm512_and_si512(nib, _mm512_set1_epi16(7)), 8)),
           q);
  // Dword s of nib holds rows 2 s (low half) and 2 s + 1 (high half): their delta signs.
  const __m512i one = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  const __m512i even = _mm512_mask_mov_epi32(one, _mm512_test_epi32_mask(nib, _mm512_set1_epi32(8)), minus);
  const __m512i odd = _mm512_mask_mov_epi32(one, _mm512_test_epi32_mask(nib, _mm512_set1_epi32(8 << 16)), minus);
  for (int p = 0; p < 4; ++p) q[p] = _mm512_add_epi8(q[p], p < 2 ? even : odd);
  // Scale 2 s + 1 per 16 weights (s: bits 3 (i % 4) of u16 i / 4) with d / 8, as up_iq1_m's.
  uint16_t sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = load_u16(b + 48 + 2 * i);
  const float d = half_to_float((uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000)));
  const __m512i u = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                             _mm512_cvtepu16_epi32(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(b + 48)))));
  const __m512i s3 = _mm512_and_si512(_mm512_srlv_epi32(u, _mm512_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9)),
                                      _mm512_set1_epi32(7));
  r->s = odd_scales(s3);
  r->d = d * 0.125f;
  no_mins(r);
}
