// Activation formats and buffers (see qact.h); the row quantizer itself is compiled per ISA
// (qact_impl.h), so its rounding vectorizes.
#include "qact.h"

#include <string.h>

#include <vector>

#include "formats.h"

namespace moe {

int act_kind_for(int type) {
  switch (type) {
    case kQ4_0: case kQ5_0: case kQ8_0: case kIQ4_NL: return kActQ8_0;
    case kQ4_1: case kQ5_1: return kActQ8_1;
    case kQ2_K: case kQ3_K: case kQ4_K: case kQ5_K: case kQ6_K: case kIQ2_XXS: case kIQ2_XS: case kIQ3_XXS:
    case kIQ1_S: case kIQ1_M: case kIQ4_XS: return kActQ8_K;
    default: return -1;
  }
}

const QActView &QActBuffers::resize(int64_t num_tokens, int64_t k) {
  const int64_t chunks = act_chunks(k);
  q.resize(num_tokens * chunks * kChunkQ);
  bsum.resize(num_tokens * chunks * kSubQ);
  scale.resize(bsum.size());
  asum.resize(bsum.size());
  packed.resize(num_tokens * chunks);
  bpairs16.resize(num_tokens * chunks * kPairs16);
  bpairs32.resize(num_tokens * chunks * kPairs32);
  view = {k, chunks, q.data(), bsum.data(), scale.data(), asum.data(), packed.data(), bpairs16.data(), bpairs32.data()};
  return view;
}

void QActBuffers::copy_slot(const QActBuffers &src, int64_t from, int64_t to) {
  const int64_t nq = view.chunks * kChunkQ, n16 = view.chunks * kSubQ;
  memcpy(q.data() + to * nq, src.q.data() + from * nq, (size_t)nq);
  memcpy(bsum.data() + to * n16, src.bsum.data() + from * n16, sizeof(int32_t) * (size_t)n16);
  memcpy(scale.data() + to * n16, src.scale.data() + from * n16, sizeof(float) * (size_t)n16);
  memcpy(asum.data() + to * n16, src.asum.data() + from * n16, sizeof(float) * (size_t)n16);
  memcpy(packed.data() + to * view.chunks, src.packed.data() + from * view.chunks, sizeof(PackedChunk) * (size_t)view.chunks);
  const int64_t np16 = view.chunks * kPairs16, np32 = view.chunks * kPairs32;
  memcpy(bpairs16.data() + to * np16, src.bpairs16.data() + from * np16, sizeof(int32_t) * (size_t)np16);
  memcpy(bpairs32.data() + to * np32, src.bpairs32.data() + from * np32, sizeof(int32_t) * (size_t)np32);
}

void quantize_planes(QuantizeRowFn quantize, int kind, int planes, const float *x, int64_t t, const QActView &v) {
  quantize(kind, x, planes * t, v);
  for (int p = 1; p < planes; ++p) {
    // What plane p - 1 left: its float value is scale * q, the scale each sub-block's products
    // are multiplied by (fp16-rounded for Q8_0 / Q8_1). Multiply, then subtract: no FMA
    // (-ffp-contract=off), so numpy's float32 reference gives the same residual.
    const int64_t slot = planes * t + p - 1;
    const int8_t *q = v.q + slot * v.chunks * kChunkQ;
    const float *scale = v.scale + slot * v.chunks * kSubQ;
    thread_local std::vector<float> residual;
    residual.resize((size_t)v.k);
    const float *prev = p == 1 ? x : residual.data();
    for (int64_t i = 0; i < v.k; ++i) residual[i] = prev[i] - scale[i / 16] * (float)q[i];
    quantize(kind, residual.data(), slot + 1, v);
  }
  if (planes == 1 || kind != kActQ8_1) return;
  // Q8_1's block sum, which multiplies a weight's offset, rounded to fp16 would cap the planes
  // at 11 bits: with planes it is the sum of the plane's float values, d * (sum of the quants).
  for (int64_t slot = planes * t; slot < planes * (t + 1); ++slot) {
    const int64_t n16 = v.chunks * kSubQ;
    for (int64_t s = 0; 16 * s < v.k; s += 2)
      v.asum[slot * n16 + s] = v.scale[slot * n16 + s] * (float)(v.bsum[slot * n16 + s] + v.bsum[slot * n16 + s + 1]);
  }
}

}  // namespace moe
