// The activation row quantizer (see qact.h), included once per ISA namespace: the same float
// operations on every ISA (max, multiply, round to nearest even, clamp are exact or correctly
// rounded in any vector width), so every ISA's quants are equal; the ISA flags let the rounding
// vectorize instead of calling nearbyintf per element.
#pragma once

// One block of n (32 or 256) floats -> n quants in natural order and the block's float scale
// (before any fp16 rounding).
static inline float quantize_block(int kind, const float *x, int n, int8_t *q) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;  // a vectorizable max
  for (int i = 0; i < n; ++i)
    if (fabsf(x[i]) == amax) {  // the first element of largest magnitude, as numpy's argmax
      max = x[i];
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
      int32_t sum = 0;
      for (int i = 0; i < 16; ++i) sum += q[16 * s + i];
      bsum[s0 + s] = sum;
      total += sum;
      scale[s0 + s] = kind == kActQ8_K ? d : round_to_half(d);
      asum[s0 + s] = kind == kActQ8_K ? d * (float)sum : 0.0f;
    }
    if (kind == kActQ8_1) asum[s0] = round_to_half(d * (float)total);
  }
#if defined(__AVX512VNNI__)  // the AVX-512 kernels alone read the interleaved copy and the bias
  int32_t *bias = v.bias + t * n16;
  for (int64_t i = 0; i < n16; ++i) bias[i] = -128 * bsum[i];
  int8_t *qi = v.qi + t * v.chunks * kChunkQ;
  for (int64_t c = 0; c < v.chunks * kChunkQ; c += kChunkQ)
    for (int i = 0; i < kChunkQ; i += 4) memcpy(qi + c + i, qrow + c + interleaved_source(i), 4);
#endif
}

