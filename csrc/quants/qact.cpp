// Activation quantization (see qact.h). Plain C++ compiled once: it touches T * K floats per
// call, negligible beside the weights, and one implementation keeps every ISA's quants equal.
#include "qact.h"

#include <math.h>
#include <string.h>

#include "formats.h"

namespace moe {

int act_kind_for(int type) {
  switch (type) {
    case kQ4_0: case kQ4_1: case kQ5_0: case kQ5_1: case kQ8_0: case kIQ4_NL: return kActQ8_0;
    case kQ2_K: case kQ3_K: case kQ4_K: case kQ5_K: case kQ6_K: case kIQ2_XXS: case kIQ2_XS: case kIQ3_XXS:
    case kIQ1_S: case kIQ1_M: case kIQ4_XS: return kActQ8_K;
    default: return -1;
  }
}

// One block of n (32 or 256) floats -> n quants in natural order and the block's scale.
static float quantize_block(int kind, const float *x, int n, int8_t *q) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = fabsf(x[i]);
    if (a > amax) {  // strict: the first element of largest magnitude, as numpy's argmax
      amax = a;
      max = x[i];
    }
  }
  if (amax == 0.0f) {
    memset(q, 0, (size_t)n);
    return 0.0f;
  }
  if (kind == kActQ8_0) {
    const float d = amax / 127.0f, id = 1.0f / d;
    for (int i = 0; i < n; ++i) q[i] = (int8_t)nearbyintf(x[i] * id);
    return d;
  }
  const float iscale = -127.0f / max;
  for (int i = 0; i < n; ++i) {
    const float v = nearbyintf(iscale * x[i]);
    q[i] = (int8_t)(v > 127.0f ? 127.0f : v);
  }
  return 1.0f / iscale;
}

void quantize_act_row(int kind, const float *x, int64_t t, const QActView &v) {
  const int block = kind == kActQ8_0 ? 32 : kChunkQ;
  int8_t *qrow = v.q + t * v.chunks * kChunkQ;
  int32_t *bsum = v.bsum + t * v.chunks * kSubQ;
  float *scale = v.scale + t * v.chunks * kSubQ;
  memset(qrow, 0, (size_t)(v.chunks * kChunkQ));
  memset(bsum, 0, sizeof(int32_t) * (size_t)(v.chunks * kSubQ));
  memset(scale, 0, sizeof(float) * (size_t)(v.chunks * kSubQ));
  int8_t q[kChunkQ];
  for (int64_t b0 = 0; b0 < v.k; b0 += block) {
    const float d = quantize_block(kind, x + b0, block, q);
    for (int i = 0; i < block; ++i) {
      const int64_t g = b0 + i, c = g / kChunkQ;
      const int in_chunk = (int)(g % kChunkQ);
      qrow[g] = q[i];
      bsum[c * kSubQ + in_chunk / 16] += q[i];
      scale[c * kSubQ + in_chunk / 16] = d;
    }
  }
}

}  // namespace moe
