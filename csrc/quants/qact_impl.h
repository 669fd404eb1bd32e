// The activation row quantizer (see qact.h), included once per ISA namespace: the same float
// operations on every ISA (max, multiply, round to nearest even, clamp are exact or correctly
// rounded in any vector width), so every ISA's quants are equal; the ISA flags let the rounding
// vectorize instead of calling nearbyintf per element, and AVX-512 has its own block quantizer.
#pragma once

#if defined(__AVX512F__)
// Natural quants (vector P: sub-blocks 4P .. 4P + 3, 16 bytes each) -> the interleaved order of
// PackedChunk::qi (vector p, 32-bit lane s: bytes 4p .. 4p + 3 of sub-block s). Round 1 gathers,
// for each pair of vectors and each pair of p, the lanes of sub-blocks 8a .. 8a + 7; round 2
// joins the halves of a and a + 1. The weight kernels put their quants in the same order.
static inline __attribute__((always_inline)) void interleave(__m512i *q) {
  const __m512i pick[2] = {_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29),
                           _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31)};
  __m512i x[2][2];
  for (int a = 0; a < 2; ++a)
    for (int h = 0; h < 2; ++h) x[a][h] = _mm512_permutex2var_epi32(q[2 * a], pick[h], q[2 * a + 1]);
  for (int h = 0; h < 2; ++h) {
    q[2 * h] = _mm512_shuffle_i64x2(x[0][h], x[1][h], 0x44);
    q[2 * h + 1] = _mm512_shuffle_i64x2(x[0][h], x[1][h], 0xEE);
  }
}

// One block of n (32 or 256) floats -> n quants in natural order and the block's float scale
// (before any fp16 rounding), 16 at a time: the portable version's operations, so its quants.
// max_ps(|x|, m) keeps m where |x| is NaN, as the scalar comparison does.
static inline float quantize_block(int kind, const float *x, int n, int8_t *q) {
  __m512 m = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
  const float amax = _mm512_reduce_max_ps(m);
  if (amax == 0.0f) {
    memset(q, 0, (size_t)n);
    return 0.0f;
  }
  float max = 0.0f;
  for (int i = 0; i < n; i += 16) {  // the first element of largest magnitude, as numpy's argmax
    const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + i)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
    if (hit) {
      max = x[i + __builtin_ctz(hit)];
      break;
    }
  }
  const bool k = kind == kActQ8_K;
  const float mul = k ? -127.0f / max : 127.0f / amax;
  for (int i = 0; i < n; i += 16) {
    __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_set1_ps(mul), _mm512_loadu_ps(x + i)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (k) v = _mm512_min_ps(v, _mm512_set1_ps(127.0f));
    _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  return k ? 1.0f / mul : amax / 127.0f;
}

static inline int32_t subblock_sum(const int8_t *q) {
  return _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}
#else
// One block of n (32 or 256) floats -> n quants in natural order and the block's float scale
// (before any fp16 rounding).
static inline float quantize_block(int kind, const float *x, int n, int8_t *q) {
  // The largest magnitude: 16 running maxima (exact and order-free, and NaNs are skipped as by
  // one running maximum), so the loop vectorizes without -ffast-math.
  float lane[16] = {};
  for (int i = 0; i < n; i += 16)
    for (int j = 0; j < 16; ++j) lane[j] = fabsf(x[i + j]) > lane[j] ? fabsf(x[i + j]) : lane[j];
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 16; ++j) amax = lane[j] > amax ? lane[j] : amax;
  for (int i = 0; i < n; i += 16) {  // the first element of largest magnitude, as numpy's argmax
    bool hit = false;
    for (int j = 0; j < 16; ++j) hit |= fabsf(x[i + j]) == amax;
    if (!hit) continue;
    for (int j = 0;; ++j)
      if (fabsf(x[i + j]) == amax) {
        max = x[i + j];
        break;
      }
    break;
  }
  if (amax == 0.0f) {
    memset(q, 0, (size_t)n);
    return 0.0f;
  }
  if (kind != kActQ8_K) {
    const float id = 127.0f / amax;
    for (int i = 0; i < n; ++i) q[i] = (int8_t)nearbyintf(x[i] * id);
    return amax / 127.0f;
  }
  const float iscale = -127.0f / max;
  for (int i = 0; i < n; ++i) {
    const float v = nearbyintf(iscale * x[i]);
    q[i] = (int8_t)(v > 127.0f ? 127.0f : v);
  }
  return 1.0f / iscale;
}

static inline int32_t subblock_sum(const int8_t *q) {
  int32_t sum = 0;
  for (int i = 0; i < 16; ++i) sum += q[i];
  return sum;
}
#endif

void quantize_act_row(int kind, const float *x, int64_t t, const QActView &v) {
  const int block = kind == kActQ8_K ? kChunkQ : 32;
  const int64_t n16 = v.chunks * kSubQ;  // sub-blocks of 16 in a token row
  int8_t *qrow = v.q + t * v.chunks * kChunkQ;
  int32_t *bsum = v.bsum + t * n16;
  float *scale = v.scale + t * n16, *asum = v.asum + t * n16;
  memset(qrow, 0, (size_t)(v.chunks * kChunkQ));
  memset(bsum, 0, sizeof(int32_t) * (size_t)n16);
  memset(scale, 0, sizeof(float) * (size_t)n16);
  memset(asum, 0, sizeof(float) * (size_t)n16);
  int8_t q[kChunkQ];
  for (int64_t b0 = 0; b0 < v.k; b0 += block) {
    const float d = quantize_block(kind, x + b0, block, q);
    const int64_t s0 = b0 / 16;  // first sub-block of this block
    memcpy(qrow + b0, q, (size_t)block);
    int32_t total = 0;
    for (int s = 0; s < block / 16; ++s) {
      const int32_t sum = subblock_sum(q + 16 * s);
      bsum[s0 + s] = sum;
      total += sum;
      scale[s0 + s] = kind == kActQ8_K ? d : round_to_half(d);
    }
    if (kind == kActQ8_1) asum[s0] = round_to_half(d * (float)total);
  }
#if defined(__AVX512VNNI__)  // the AVX-512 kernels alone read the packed copy
  for (int64_t c = 0; c < v.chunks; ++c) {
    PackedChunk &p = v.packed[t * v.chunks + c];
    __m512i qv[4];
    for (int i = 0; i < 4; ++i) qv[i] = _mm512_loadu_si512(qrow + c * kChunkQ + 64 * i);
    interleave(qv);
    for (int i = 0; i < 4; ++i) _mm512_store_si512(p.qi + 64 * i, qv[i]);
    _mm512_store_si512(p.bias, _mm512_mullo_epi32(_mm512_loadu_si512(bsum + c * kSubQ), _mm512_set1_epi32(-128)));
    _mm512_store_ps(p.scale, _mm512_loadu_ps(scale + c * kSubQ));
  }
  if (kind != kActQ8_K) return;
  for (int64_t c = 0; c < v.chunks; ++c) {  // the sub-block sums in int16 pairs (qact.h)
    const int32_t *s16 = bsum + c * kSubQ;
    int32_t *p16 = v.bpairs16 + (t * v.chunks + c) * kPairs16, *p32 = v.bpairs32 + (t * v.chunks + c) * kPairs32;
    auto pair = [](int32_t lo, int32_t hi) { return (int32_t)((uint32_t)(uint16_t)lo | (uint32_t)hi << 16); };
    for (int i = 0; i < kPairs16; ++i) p16[i] = pair(s16[2 * i], s16[2 * i + 1]);
    for (int i = 0; i < kPairs32; ++i) p32[i] = pair(s16[4 * i] + s16[4 * i + 1], s16[4 * i + 2] + s16[4 * i + 3]);
  }
#endif
}

