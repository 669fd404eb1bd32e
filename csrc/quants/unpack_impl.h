// Weight blocks -> small integers and their scales, for the portable integer dot products.
// Legacy 32-blocks: per sub-block s of 16 weights, w = ws[s] * q + wo[s] with q an int8, so
// <w, a> over a chunk = sum_s ad[s] * (ws[s] * <q, aq>_s + wo[s] * bsum_s), the integer part
// exact. Super-blocks (K and IQ types, one per chunk): w = d * S_s * q - dmin * M_s with the
// integers q, S_s, M_s of SuperScales (superblock_impl.h has the arithmetic). IQ1_S/IQ1_M's
// +-1/8 shift is folded into q (8 g +- 1, d / 8: both exact), and the IQ types' (0.5 + s) * 2^-k
// scales become 2 s + 1 with d * 2^-(k+1), exactly. Included once per ISA namespace.
#pragma once

#define QP(i) q[i]

// Legacy 32-blocks: `nblk` (<= 8) blocks of this chunk, the rest left as the caller's zeros.
#if defined(__AVX2__)
// 16 bytes of nibbles -> 32 quants per block in two SSE stores (the scalar loop's interleaved
// byte stores do not vectorize).
static void up_q4_0(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  const __m128i m4 = _mm_set1_epi8(0x0F), k8 = _mm_set1_epi8(8);
  for (int k = 0; k < nblk; ++k, b += 18) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + 2));
    _mm_storeu_si128((__m128i *)(q + 32 * k), _mm_sub_epi8(_mm_and_si128(v, m4), k8));
    _mm_storeu_si128((__m128i *)(q + 32 * k + 16), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), k8));
  }
  (void)wo;
}
#else
static void up_q4_0(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 18) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    for (int j = 0; j < 16; ++j) QP(32 * k + j) = (int8_t)((b[2 + j] & 0xF) - 8), QP(32 * k + 16 + j) = (int8_t)((b[2 + j] >> 4) - 8);
  }
  (void)wo;
}
#endif

#if defined(__AVX2__)
// 32 bits of qh -> 32 bytes of 0x10 where bit i is set (byte i <- qh byte i / 8, tested
// against its own bit).
static inline __m256i q5_high_bits(uint32_t qh) {
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i t = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(t, bit), _mm256_set1_epi8(0x10));
}

// 16 bytes of nibbles -> 32 quants: low nibbles first, then high (the 32-blocks' order).
static inline __m256i nibbles32(const uint8_t *p) {
  const __m128i m4 = _mm_set1_epi8(0x0F), v = _mm_loadu_si128((const __m128i *)p);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
}

static void up_q4_1(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 20) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    wo[2 * k] = wo[2 * k + 1] = load_half(b + 2);
    _mm256_storeu_si256((__m256i *)(q + 32 * k), nibbles32(b + 4));
  }
}

static void up_q5_0(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 22) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    const __m256i v = _mm256_or_si256(nibbles32(b + 6), q5_high_bits(load_u32(b + 2)));
    _mm256_storeu_si256((__m256i *)(q + 32 * k), _mm256_sub_epi8(v, _mm256_set1_epi8(16)));
  }
  (void)wo;
}

static void up_q5_1(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 24) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    wo[2 * k] = wo[2 * k + 1] = load_half(b + 2);
    _mm256_storeu_si256((__m256i *)(q + 32 * k), _mm256_or_si256(nibbles32(b + 8), q5_high_bits(load_u32(b + 4))));
  }
}
#else
static void up_q4_1(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 20) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    wo[2 * k] = wo[2 * k + 1] = load_half(b + 2);
    for (int j = 0; j < 16; ++j) QP(32 * k + j) = (int8_t)(b[4 + j] & 0xF), QP(32 * k + 16 + j) = (int8_t)(b[4 + j] >> 4);
  }
}

static void up_q5_0(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 22) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    const uint32_t qh = load_u32(b + 2);
    for (int j = 0; j < 16; ++j) {
      QP(32 * k + j) = (int8_t)(((b[6 + j] & 0xF) | (((qh >> j) & 1) << 4)) - 16);
      QP(32 * k + 16 + j) = (int8_t)(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
  }
  (void)wo;
}

static void up_q5_1(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 24) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    wo[2 * k] = wo[2 * k + 1] = load_half(b + 2);
    const uint32_t qh = load_u32(b + 4);
    for (int j = 0; j < 16; ++j) {
      QP(32 * k + j) = (int8_t)((b[8 + j] & 0xF) | (((qh >> j) & 1) << 4));
      QP(32 * k + 16 + j) = (int8_t)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
  }
}

#endif

static void up_q8_0(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 34) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    for (int j = 0; j < 32; ++j) QP(32 * k + j) = (int8_t)b[2 + j];
  }
  (void)wo;
}

static void up_iq4_nl(const uint8_t *b, int nblk, int8_t *q, float *ws, float *wo) {
  for (int k = 0; k < nblk; ++k, b += 18) {
    ws[2 * k] = ws[2 * k + 1] = load_half(b);
    for (int j = 0; j < 16; ++j)
      QP(32 * k + j) = kIq4nlValues[b[2 + j] & 0xF], QP(32 * k + 16 + j) = kIq4nlValues[b[2 + j] >> 4];
  }
  (void)wo;
}

// A super-block's scales as the integer path reads them: per 16-weight sub-block s (a
// 32-weight sub-block's scale and min in both of its halves) the integer scale and min (zero
// for the types without mins), and the block's float scales.
struct SuperScales {
  int32_t s[16], m[16];
  float d, dmin;
};

static inline void no_mins(SuperScales *sc) { memset(sc->m, 0, sizeof sc->m), sc->dmin = 0.0f; }

// Both halves of 32-weight sub-block ib.
static inline void set_32(int32_t *v, int ib, int32_t x) { v[2 * ib] = v[2 * ib + 1] = x; }

static void up_q2_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *scales = b, *qs = b + 16;
  sc->d = load_half(b + 80), sc->dmin = load_half(b + 82);
  for (int sb = 0; sb < 16; ++sb) {
    const int c = sb / 8, s = (sb / 2) % 4, i0 = (sb % 2) * 16;
    sc->s[sb] = scales[sb] & 0xF;
    sc->m[sb] = scales[sb] >> 4;
    for (int i = 0; i < 16; ++i) QP(sb * 16 + i) = (int8_t)((qs[c * 32 + i0 + i] >> (2 * s)) & 3);
  }
}

static void up_q3_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
  sc->d = load_half(b + 108);
  no_mins(sc);
  for (int sb = 0; sb < 16; ++sb) {
    const int lo = (scales[sb % 8] >> (4 * (sb / 8))) & 0xF, hi = (scales[8 + sb % 4] >> (2 * (sb / 4))) & 3;
    sc->s[sb] = (lo | (hi << 4)) - 32;
    const int c = sb / 8, s = (sb / 2) % 4, i0 = (sb % 2) * 16, bit = sb / 2;
    for (int i = 0; i < 16; ++i) {
      const int ql = (qs[c * 32 + i0 + i] >> (2 * s)) & 3, qh = ((hmask[i0 + i] >> bit) & 1) ^ 1;
      QP(sb * 16 + i) = (int8_t)(ql - (qh << 2));
    }
  }
}

static void up_q4_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b + 16;
  sc->d = load_half(b), sc->dmin = load_half(b + 2);
  for (int sb = 0; sb < 8; ++sb) {
    int s, m;
    kq_scale_min(b + 4, sb, &s, &m);
    set_32(sc->s, sb, s), set_32(sc->m, sb, m);
    const int c = sb / 2, h = sb % 2;
    for (int i = 0; i < 32; ++i) QP(sb * 32 + i) = (int8_t)((qs[c * 32 + i] >> (4 * h)) & 0xF);
  }
}

static void up_q5_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qh = b + 16, *qs = b + 48;
  sc->d = load_half(b), sc->dmin = load_half(b + 2);
  for (int sb = 0; sb < 8; ++sb) {
    int s, m;
    kq_scale_min(b + 4, sb, &s, &m);
    set_32(sc->s, sb, s), set_32(sc->m, sb, m);
    const int c = sb / 2, h = sb % 2;
    for (int i = 0; i < 32; ++i) QP(sb * 32 + i) = (int8_t)(((qs[c * 32 + i] >> (4 * h)) & 0xF) | (((qh[i] >> sb) & 1) << 4));
  }
}

static void q6_k_scales(const uint8_t *b, SuperScales *sc) {
  const int8_t *scales = (const int8_t *)(b + 192);
  sc->d = load_half(b + 208);
  no_mins(sc);
  for (int sb = 0; sb < 16; ++sb) sc->s[sb] = scales[sb];
}

#if defined(__AVX2__)
// Q6_K with AVX2: quarter s of half c is 32 contiguous outputs, low 4 bits from one ql row
// (nibble s / 2) and high 2 bits from the qh row (bits 2s), as the scalar version below.
static void up_q6_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  q6_k_scales(b, sc);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03), k32 = _mm256_set1_epi8(32);
  for (int c = 0; c < 2; ++c) {
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + c * 32));
    for (int s = 0; s < 4; ++s) {
      __m256i lo = _mm256_loadu_si256((const __m256i *)(b + c * 64 + (s % 2) * 32));
      if (s / 2) lo = _mm256_srli_epi16(lo, 4);
      lo = _mm256_and_si256(lo, m4);
      const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * s)), m2), 4);
      _mm256_storeu_si256((__m256i *)(q + c * 128 + s * 32), _mm256_sub_epi8(_mm256_or_si256(lo, hi), k32));
    }
  }
}
#else
static void up_q6_k(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *ql = b, *qh = b + 128;
  q6_k_scales(b, sc);
  for (int c = 0; c < 2; ++c)
    for (int s = 0; s < 4; ++s)
      for (int h = 0; h < 2; ++h) {
        const int sb = c * 8 + s * 2 + h;  // the output position c*128 + s*32 + h*16 is sub-block sb
        const uint8_t *l = ql + c * 64 + (s % 2) * 32 + h * 16, *hb = qh + c * 32 + h * 16;
        for (int i = 0; i < 16; ++i)
          QP(sb * 16 + i) = (int8_t)((((l[i] >> (4 * (s / 2))) & 0xF) | (((hb[i] >> (2 * s)) & 3) << 4)) - 32);
      }
}
#endif

// v negated where bit j of signs is set, without a branch: (v ^ -b) + b.
static inline int8_t signed_by(int8_t v, uint8_t signs, int j) {
  const int b = (signs >> j) & 1;
  return (int8_t)((v ^ -b) + b);
}

// The IQ2/IQ3 sub-block scale: the dequantizers' d * (0.5 + s) * 2^-k is d 2^-(k+1) * (2 s + 1).
static inline int32_t odd_scale(uint32_t s) { return (int32_t)(2 * s + 1); }

#if defined(__AVX512BW__) && defined(__AVX512VL__)
// The grid types with AVX-512BW: four 8-byte (or eight 4-byte) codebook rows per 32 weights
// gathered into one register, the 32 sign bits applied as a byte mask. Same integers as below.
static inline uint64_t row8(const int8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

static inline uint32_t signs32(uint32_t aux) {
  return kSigns[aux & 127] | (uint32_t)kSigns[(aux >> 7) & 127] << 8 | (uint32_t)kSigns[(aux >> 14) & 127] << 16 |
         (uint32_t)kSigns[(aux >> 21) & 127] << 24;
}

static void up_iq2_xxs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  sc->d = load_half(b) * 0.125f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint8_t *ids = b + 2 + 8 * ib;
    const uint32_t aux = load_u32(b + 6 + 8 * ib);
    set_32(sc->s, ib, odd_scale(aux >> 28));
    __m256i g = _mm256_setr_epi64x((long long)row8(kIq2xxsGrid[ids[0]]), (long long)row8(kIq2xxsGrid[ids[1]]),
                                   (long long)row8(kIq2xxsGrid[ids[2]]), (long long)row8(kIq2xxsGrid[ids[3]]));
    g = _mm256_mask_sub_epi8(g, (__mmask32)signs32(aux), _mm256_setzero_si256(), g);
    _mm256_storeu_si256((__m256i *)(q + 32 * ib), g);
  }
}

static void up_iq3_xxs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b + 2;
  sc->d = load_half(b) * 0.25f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint32_t aux = load_u32(b + 66 + 4 * ib);
    set_32(sc->s, ib, odd_scale(aux >> 28));
    int32_t r[8];
    for (int j = 0; j < 8; ++j) memcpy(&r[j], kIq3xxsGrid[qs[8 * ib + j]], 4);
    __m256i g = _mm256_loadu_si256((const __m256i *)r);
    g = _mm256_mask_sub_epi8(g, (__mmask32)signs32(aux), _mm256_setzero_si256(), g);
    _mm256_storeu_si256((__m256i *)(q + 32 * ib), g);
  }
}

static void up_iq1_s(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b + 2;
  sc->d = load_half(b) * 0.125f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint16_t qh = load_u16(b + 34 + 2 * ib);
    set_32(sc->s, ib, odd_scale((qh >> 12) & 7));
    long long r[4];
    for (int l = 0; l < 4; ++l) r[l] = (long long)row8(kIq1sGrid[qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)]);
    __m256i g = _mm256_setr_epi64x(r[0], r[1], r[2], r[3]);
    g = _mm256_add_epi8(g, g);
    g = _mm256_add_epi8(g, g);
    g = _mm256_add_epi8(g, g);  // 8 g, exact in int8 (|g| <= 1)
    g = _mm256_add_epi8(g, _mm256_set1_epi8(qh & 0x8000 ? -1 : 1));
    _mm256_storeu_si256((__m256i *)(q + 32 * ib), g);
  }
}
#else
static void up_iq2_xxs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  sc->d = load_half(b) * 0.125f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint8_t *ids = b + 2 + 8 * ib;
    const uint32_t aux = load_u32(b + 6 + 8 * ib);
    set_32(sc->s, ib, odd_scale(aux >> 28));
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = kSigns[(aux >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j) QP(ib * 32 + l * 8 + j) = signed_by(kIq2xxsGrid[ids[l]][j], signs, j);
    }
  }
}

static void up_iq3_xxs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b + 2;
  sc->d = load_half(b) * 0.25f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint32_t aux = load_u32(b + 66 + 4 * ib);
    set_32(sc->s, ib, odd_scale(aux >> 28));
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = kSigns[(aux >> (7 * l)) & 127];
      for (int j = 0; j < 8; ++j)
        QP(ib * 32 + l * 8 + j) = signed_by(kIq3xxsGrid[qs[8 * ib + 2 * l + j / 4]][j % 4], signs, j);
    }
  }
}

static void up_iq1_s(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b + 2;
  sc->d = load_half(b) * 0.125f;
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const uint16_t qh = load_u16(b + 34 + 2 * ib);
    set_32(sc->s, ib, odd_scale((qh >> 12) & 7));
    const int delta = qh & 0x8000 ? -1 : 1;
    for (int l = 0; l < 4; ++l) {
      const int8_t *g = kIq1sGrid[qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)];
      for (int j = 0; j < 8; ++j) QP(ib * 32 + l * 8 + j) = (int8_t)(8 * g[j] + delta);
    }
  }
}
#endif

static void up_iq2_xs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *scales = b + 66;
  sc->d = load_half(b) * 0.125f;
  no_mins(sc);
  for (int k = 0; k < 32; ++k) {
    const uint16_t v = load_u16(b + 2 + 2 * k);
    sc->s[k / 2] = odd_scale((scales[k / 4] >> (4 * ((k / 2) % 2))) & 0xF);
    const uint8_t signs = kSigns[v >> 9];
    for (int j = 0; j < 8; ++j) QP(k * 8 + j) = signed_by(kIq2xsGrid[v & 511][j], signs, j);
  }
}

static void up_iq1_m(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint8_t *qs = b, *qh = b + 32;
  uint16_t s[4];
  for (int i = 0; i < 4; ++i) s[i] = load_u16(b + 48 + 2 * i);
  const uint16_t packed = (uint16_t)((s[0] >> 12) | ((s[1] >> 8) & 0xF0) | ((s[2] >> 4) & 0xF00) | (s[3] & 0xF000));
  sc->d = half_to_float(packed) * 0.125f;
  no_mins(sc);
  for (int k = 0; k < 32; ++k) {
    const int half = k / 2;
    sc->s[half] = odd_scale((s[half / 4] >> (3 * (half % 4))) & 7);
    const int nib = (qh[k / 2] >> (4 * (k % 2))) & 0xF, delta = nib & 8 ? -1 : 1;
    const int8_t *g = kIq1sGrid[qs[k] | ((nib & 7) << 8)];
    for (int j = 0; j < 8; ++j) QP(k * 8 + j) = (int8_t)(8 * g[j] + delta);
  }
}

static void up_iq4_xs(const uint8_t *b, int8_t *q, SuperScales *sc) {
  const uint16_t scales_h = load_u16(b + 2);
  const uint8_t *scales_l = b + 4, *qs = b + 8;
  sc->d = load_half(b);
  no_mins(sc);
  for (int ib = 0; ib < 8; ++ib) {
    const int lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF, hi = (scales_h >> (2 * ib)) & 3;
    set_32(sc->s, ib, (lo | (hi << 4)) - 32);
    for (int j = 0; j < 16; ++j)
      QP(ib * 32 + j) = kIq4nlValues[qs[ib * 16 + j] & 0xF], QP(ib * 32 + 16 + j) = kIq4nlValues[qs[ib * 16 + j] >> 4];
  }
}

#undef QP

typedef void (*UnpackFn)(const uint8_t *blocks, int nblk, int8_t *q, float *ws, float *wo);
typedef void (*SuperUnpackFn)(const uint8_t *block, int8_t *q, SuperScales *sc);

static UnpackFn unpack_fn(int type) {
  switch (type) {
    case kQ4_0: return up_q4_0;
    case kQ4_1: return up_q4_1;
    case kQ5_0: return up_q5_0;
    case kQ5_1: return up_q5_1;
    case kQ8_0: return up_q8_0;
    case kIQ4_NL: return up_iq4_nl;
    default: return nullptr;
  }
}

static SuperUnpackFn super_unpack_fn(int type) {
  switch (type) {
    case kQ2_K: return up_q2_k;
    case kQ3_K: return up_q3_k;
    case kQ4_K: return up_q4_k;
    case kQ5_K: return up_q5_k;
    case kQ6_K: return up_q6_k;
    case kIQ2_XXS: return up_iq2_xxs;
    case kIQ2_XS: return up_iq2_xs;
    case kIQ3_XXS: return up_iq3_xxs;
    case kIQ1_S: return up_iq1_s;
    case kIQ1_M: return up_iq1_m;
    case kIQ4_XS: return up_iq4_xs;
    default: return nullptr;
  }
}
