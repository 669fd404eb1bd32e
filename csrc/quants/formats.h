// GGUF tensor types: ids, block geometry, and exact half/bfloat conversions.
#pragma once
#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace moe {

// ggml_type ids as written in GGUF files.
enum GgmlType : int {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20,
  kIQ1_M = 29, kBF16 = 30, kIQ4_XS = 23,
};

constexpr int QK_K = 256;

struct Geometry {
  int block_size;  // weights per block
  int type_size;   // bytes per block
};

// {0, 0} for a type we do not support.
constexpr Geometry geometry(int type) {
  switch (type) {
    case kF32: return {1, 4};
    case kF16: return {1, 2};
    case kBF16: return {1, 2};
    case kQ4_0: return {32, 18};
    case kQ4_1: return {32, 20};
    case kQ5_0: return {32, 22};
    case kQ5_1: return {32, 24};
    case kQ8_0: return {32, 34};
    case kQ2_K: return {QK_K, 84};
    case kQ3_K: return {QK_K, 110};
    case kQ4_K: return {QK_K, 144};
    case kQ5_K: return {QK_K, 176};
    case kQ6_K: return {QK_K, 210};
    case kIQ2_XXS: return {QK_K, 66};
    case kIQ2_XS: return {QK_K, 74};
    case kIQ3_XXS: return {QK_K, 98};
    case kIQ1_S: return {QK_K, 50};
    case kIQ1_M: return {QK_K, 56};
    case kIQ4_NL: return {32, 18};
    case kIQ4_XS: return {QK_K, 136};
    default: return {0, 0};
  }
}

// The super-block types (K and IQ quants): one float scale (and a min scale) per 256 weights and
// small integer scales per sub-block, w = d * S_s * q - dmin * M_s with integers S, q, M. Their
// integer path keeps the sub-block scales in integers (qmatmul_superblock_impl.h).
constexpr bool superblock_type(int type) {
  return type == kQ2_K || type == kQ3_K || type == kQ4_K || type == kQ5_K || type == kQ6_K || type == kIQ2_XXS ||
         type == kIQ2_XS || type == kIQ3_XXS || type == kIQ1_S || type == kIQ1_M || type == kIQ4_XS;
}

// The super-block types whose sub-blocks have mins (M_s above).
constexpr bool has_mins(int type) { return type == kQ2_K || type == kQ4_K || type == kQ5_K; }

// Weights per sub-block of a super-block type (per scale).
constexpr int sub_block_size(int type) {
  return type == kQ4_K || type == kQ5_K || type == kIQ4_XS || type == kIQ2_XXS || type == kIQ3_XXS || type == kIQ1_S
             ? 32
             : 16;
}

// Whether a legacy 32-block type's weights carry an offset per block (w = ws * q + wo, wo != 0).
constexpr bool has_offsets(int type) { return type == kQ4_1 || type == kQ5_1; }

// IEEE half -> float, exact for every input (subnormals, inf, NaN payloads), as numpy's astype.
inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int shift = 0;
    while (!(mant & 0x400)) {
      mant <<= 1;
      ++shift;
    }
    bits = sign | ((uint32_t)(113 - shift) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// float -> IEEE half, rounded to nearest even as F16C and numpy's astype(float16): the
// exponent is rebiased and the dropped 13 bits rounded in integers; halves' subnormals are
// rounded by one float add of 0.5 (whose ulp is the half subnormal step, 2^-24).
inline uint16_t float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));  // inf, NaN
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // 65520 and up round to inf
  if (ax < 0x38800000u) {                                  // below 2^-14: a half subnormal or zero
    float v;
    memcpy(&v, &ax, 4);
    v += 0.5f;
    uint32_t r;
    memcpy(&r, &v, 4);
    return (uint16_t)(sign | (r - 0x3f000000u));
  }
  return (uint16_t)(sign | ((ax + 0xc8000fffu + ((ax >> 13) & 1)) >> 13));
}

inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

inline uint16_t load_u16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

inline uint32_t load_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

#if defined(__F16C__)
// The F16C conversion is exact too, and one instruction instead of a branchy bit dance.
inline float load_half(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }
#else
inline float load_half(const uint8_t *p) { return half_to_float(load_u16(p)); }
#endif

// -v when bit is set, exactly (a sign flip), without a data-dependent branch.
inline float flip_sign(float v, uint32_t bit) {
  uint32_t u;
  memcpy(&u, &v, 4);
  u ^= bit << 31;
  memcpy(&v, &u, 4);
  return v;
}

}  // namespace moe
