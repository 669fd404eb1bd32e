// Dequantization of every supported GGUF block type, written to match gguf-py bit for bit:
// the same float32 operations in the same order (no FMA: the build uses -ffp-contract=off).
// Included once per ISA translation unit, inside that ISA's namespace, so the compiler
// vectorizes the same source for each target; element-wise IEEE ops give identical bits.
#pragma once

static void dq_f32(const uint8_t *__restrict src, float *__restrict dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void dq_f16(const uint8_t *__restrict src, float *__restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(load_u16(src + 2 * i));
}

static void dq_bf16(const uint8_t *__restrict src, float *__restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = (uint32_t)load_u16(src + 2 * i) << 16;
    memcpy(dst + i, &bits, 4);
  }
}

static void dq_q4_0(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 18, dst += 32) {
    const float d = load_half(src);
    const uint8_t *qs = src + 2;
    // Two passes of 16 contiguous outputs vectorize; one interleaved pass does not.
    for (int j = 0; j < 16; ++j) dst[j] = d * (float)((int)(qs[j] & 0xF) - 8);
    for (int j = 0; j < 16; ++j) dst[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
  }
}

static void dq_q4_1(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 20, dst += 32) {
    const float d = load_half(src), m = load_half(src + 2);
    const uint8_t *qs = src + 4;
    for (int j = 0; j < 16; ++j) dst[j] = d * (float)(qs[j] & 0xF) + m;
    for (int j = 0; j < 16; ++j) dst[j + 16] = d * (float)(qs[j] >> 4) + m;
  }
}

static void dq_q5_0(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 22, dst += 32) {
    const float d = load_half(src);
    const uint32_t qh = load_u32(src + 2);
    const uint8_t *qs = src + 6;
    for (int j = 0; j < 16; ++j) dst[j] = d * (float)((int)((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16);
    for (int j = 0; j < 16; ++j) dst[j + 16] = d * (float)((int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
  }
}

static void dq_q5_1(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 24, dst += 32) {
    const float d = load_half(src), m = load_half(src + 2);
    const uint32_t qh = load_u32(src + 4);
    const uint8_t *qs = src + 8;
    for (int j = 0; j < 16; ++j) dst[j] = d * (float)((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) + m;
    for (int j = 0; j < 16; ++j) dst[j + 16] = d * (float)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m;
  }
}

static void dq_q8_0(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 34, dst += 32) {
    const float d = load_half(src);
    const int8_t *qs = (const int8_t *)(src + 2);
    for (int j = 0; j < 32; ++j) dst[j] = (float)qs[j] * d;
  }
}

static void dq_q2_k(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 84, dst += QK_K) {
    const uint8_t *scales = src, *qs = src + 16;
    const float d = load_half(src + 80), dmin = load_half(src + 82);
    for (int sb = 0; sb < 16; ++sb) {  // 16 groups of 16 weights
      const int c = sb / 8, s = (sb / 2) % 4, i0 = (sb % 2) * 16;
      const float dl = d * (float)(scales[sb] & 0xF), ml = dmin * (float)(scales[sb] >> 4);
      for (int i = 0; i < 16; ++i) dst[sb * 16 + i] = dl * (float)((qs[c * 32 + i0 + i] >> (2 * s)) & 3) - ml;
    }
  }
}

static void dq_q3_k(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 110, dst += QK_K) {
    const uint8_t *hmask = src, *qs = src + 32, *sc = src + 96;
    const float d = load_half(src + 108);
    float dl[16];
    for (int k = 0; k < 16; ++k) {
      const int lo = (sc[k % 8] >> (4 * (k / 8))) & 0xF, hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
      dl[k] = d * (float)((int8_t)(lo | (hi << 4)) - 32);
    }
    for (int sb = 0; sb < 16; ++sb) {
      const int c = sb / 8, s = (sb / 2) % 4, i0 = (sb % 2) * 16, bit = sb / 2;
      for (int i = 0; i < 16; ++i) {
        const int ql = (qs[c * 32 + i0 + i] >> (2 * s)) & 3;
        const int qh = ((hmask[i0 + i] >> bit) & 1) ^ 1;  // the offset applies when the bit is 0
        dst[sb * 16 + i] = dl[sb] * (float)(ql - (qh << 2));
      }
    }
  }
}

static inline void kq_scale_min(const uint8_t *s, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 0x3F;
    *m = s[j + 4] & 0x3F;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 2) & 0x30);
    *m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

static void dq_q4_k(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 144, dst += QK_K) {
    const float d = load_half(src), dmin = load_half(src + 2);
    const uint8_t *qs = src + 16;
    for (int sb = 0; sb < 8; ++sb) {
      int sc, m;
      kq_scale_min(src + 4, sb, &sc, &m);
      const float ds = d * (float)sc, dm = dmin * (float)m;
      const int c = sb / 2, h = sb % 2;
      for (int i = 0; i < 32; ++i) dst[sb * 32 + i] = ds * (float)((qs[c * 32 + i] >> (4 * h)) & 0xF) - dm;
    }
  }
}

static void dq_q5_k(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 176, dst += QK_K) {
    const float d = load_half(src), dmin = load_half(src + 2);
    const uint8_t *qh = src + 16, *qs = src + 48;
    for (int sb = 0; sb < 8; ++sb) {
      int sc, m;
      kq_scale_min(src + 4, sb, &sc, &m);
      const float ds = d * (float)sc, dm = dmin * (float)m;
      const int c = sb / 2, h = sb % 2;
      for (int i = 0; i < 32; ++i) {
        const int q = ((qs[c * 32 + i] >> (4 * h)) & 0xF) | (((qh[i] >> sb) & 1) << 4);
        dst[sb * 32 + i] = ds * (float)q - dm;
      }
    }
  }
}

static void dq_q6_k(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 210, dst += QK_K) {
    const uint8_t *ql = src, *qh = src + 128;
    const int8_t *scales = (const int8_t *)(src + 192);
    const float d = load_half(src + 208);
    for (int c = 0; c < 2; ++c) {       // halves of 128
      for (int s = 0; s < 4; ++s) {     // quarters of 32: low/high nibbles of ql, 2-bit fields of qh
        for (int h = 0; h < 2; ++h) {   // the two 16-wide scale groups of a quarter
          const float ds = d * (float)scales[c * 8 + s * 2 + h];
          const uint8_t *l = ql + c * 64 + (s % 2) * 32 + h * 16, *hb = qh + c * 32 + h * 16;
          float *out = dst + c * 128 + s * 32 + h * 16;
          for (int i = 0; i < 16; ++i) {
            const int q = ((l[i] >> (4 * (s / 2))) & 0xF) | (((hb[i] >> (2 * s)) & 3) << 4);
            out[i] = ds * (float)(q - 32);
          }
        }
      }
    }
  }
}

static void dq_iq2_xxs(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 66, dst += QK_K) {
    const float d = load_half(src);
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t *grid_ids = src + 2 + 8 * ib;
      const uint32_t aux = load_u32(src + 6 + 8 * ib);
      const float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
      for (int l = 0; l < 4; ++l) {
        const int8_t *g = kIq2xxsGrid[grid_ids[l]];
        const uint8_t signs = kSigns[(aux >> (7 * l)) & 127];
        for (int j = 0; j < 8; ++j) {
          const float v = db * (float)g[j];
          dst[ib * 32 + l * 8 + j] = flip_sign(v, (signs >> j) & 1);
        }
      }
    }
  }
}

static void dq_iq2_xs(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 74, dst += QK_K) {
    const float d = load_half(src);
    const uint8_t *scales = src + 66;
    for (int k = 0; k < 32; ++k) {  // groups of 8
      const uint16_t q = load_u16(src + 2 + 2 * k);
      const int s = (scales[k / 4] >> (4 * ((k / 2) % 2))) & 0xF;
      const float db = d * (0.5f + (float)s) * 0.25f;
      const int8_t *g = kIq2xsGrid[q & 511];
      const uint8_t signs = kSigns[q >> 9];
      for (int j = 0; j < 8; ++j) {
        const float v = db * (float)g[j];
        dst[k * 8 + j] = flip_sign(v, (signs >> j) & 1);
      }
    }
  }
}

static void dq_iq3_xxs(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 98, dst += QK_K) {
    const float d = load_half(src);
    const uint8_t *qs = src + 2;
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t aux = load_u32(src + 66 + 4 * ib);
      const float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
      for (int l = 0; l < 4; ++l) {
        const uint8_t signs = kSigns[(aux >> (7 * l)) & 127];
        for (int j = 0; j < 8; ++j) {
          const float v = db * (float)kIq3xxsGrid[qs[8 * ib + 2 * l + j / 4]][j % 4];
          dst[ib * 32 + l * 8 + j] = flip_sign(v, (signs >> j) & 1);
        }
      }
    }
  }
}

static void dq_iq1_s(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 50, dst += QK_K) {
    const float d = load_half(src);
    const uint8_t *qs = src + 2;
    for (int ib = 0; ib < 8; ++ib) {
      const uint16_t qh = load_u16(src + 34 + 2 * ib);
      const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
      const float delta = qh & 0x8000 ? -0.125f : 0.125f;
      for (int l = 0; l < 4; ++l) {
        const int8_t *g = kIq1sGrid[qs[4 * ib + l] | (((qh >> (3 * l)) & 7) << 8)];
        for (int j = 0; j < 8; ++j) dst[ib * 32 + l * 8 + j] = dl * ((float)g[j] + delta);
      }
    }
  }
}

static void dq_iq1_m(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 56, dst += QK_K) {
    const uint8_t *qs = src, *qh = src + 32;
    uint16_t sc[4];
    for (int i = 0; i < 4; ++i) sc[i] = load_u16(src + 48 + 2 * i);
    // The block's f16 scale is spread over the top nibbles of the four scale words.
    const uint16_t packed = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000));
    const float d = half_to_float(packed);
    for (int k = 0; k < 32; ++k) {  // groups of 8; two groups share a 3-bit scale
      const int half = k / 2;
      const float dl = d * (float)(2 * ((sc[half / 4] >> (3 * (half % 4))) & 7) + 1);
      const int nib = (qh[k / 2] >> (4 * (k % 2))) & 0xF;
      const float delta = nib & 8 ? -0.125f : 0.125f;
      const int8_t *g = kIq1sGrid[qs[k] | ((nib & 7) << 8)];
      for (int j = 0; j < 8; ++j) dst[k * 8 + j] = dl * ((float)g[j] + delta);
    }
  }
}

static void dq_iq4_nl(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 18, dst += 32) {
    const float d = load_half(src);
    const uint8_t *qs = src + 2;
    for (int j = 0; j < 16; ++j) dst[j] = d * (float)kIq4nlValues[qs[j] & 0xF];
    for (int j = 0; j < 16; ++j) dst[j + 16] = d * (float)kIq4nlValues[qs[j] >> 4];
  }
}

static void dq_iq4_xs(const uint8_t *__restrict src, float *__restrict dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 136, dst += QK_K) {
    const float d = load_half(src);
    const uint16_t scales_h = load_u16(src + 2);
    const uint8_t *scales_l = src + 4, *qs = src + 8;
    for (int ib = 0; ib < 8; ++ib) {
      const int lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF, hi = (scales_h >> (2 * ib)) & 3;
      const float dl = d * (float)((int8_t)(lo | (hi << 4)) - 32);
      for (int j = 0; j < 16; ++j) dst[ib * 32 + j] = dl * (float)kIq4nlValues[qs[ib * 16 + j] & 0xF];
      for (int j = 0; j < 16; ++j) dst[ib * 32 + j + 16] = dl * (float)kIq4nlValues[qs[ib * 16 + j] >> 4];
    }
  }
}

typedef void (*DequantFn)(const uint8_t *src, float *dst, int64_t count);

// count: blocks for quantized types, elements for F32/F16/BF16 (block size 1).
static DequantFn dequant_fn(int type) {
  switch (type) {
    case kF32: return dq_f32;
    case kF16: return dq_f16;
    case kBF16: return dq_bf16;
    case kQ4_0: return dq_q4_0;
    case kQ4_1: return dq_q4_1;
    case kQ5_0: return dq_q5_0;
    case kQ5_1: return dq_q5_1;
    case kQ8_0: return dq_q8_0;
    case kQ2_K: return dq_q2_k;
    case kQ3_K: return dq_q3_k;
    case kQ4_K: return dq_q4_k;
    case kQ5_K: return dq_q5_k;
    case kQ6_K: return dq_q6_k;
    case kIQ2_XXS: return dq_iq2_xxs;
    case kIQ2_XS: return dq_iq2_xs;
    case kIQ3_XXS: return dq_iq3_xxs;
    case kIQ1_S: return dq_iq1_s;
    case kIQ1_M: return dq_iq1_m;
    case kIQ4_NL: return dq_iq4_nl;
    case kIQ4_XS: return dq_iq4_xs;
    default: return nullptr;
  }
}
