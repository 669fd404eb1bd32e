// The native decode step (decode.h). Python's layers run the same kernel calls one by one; here
// they run back to back without the interpreter between them, which was most of a small
// model's step (SmolLM2-135M: about 10 kernel calls per block, each a few microseconds).
#include "decode.h"

#include <string.h>

#include <algorithm>

#include "quants/formats.h"

namespace moe {

namespace {

bool is_float(const MoeWeight &w) { return geometry(w.type).block_size == 1; }

// ys[i] [T, n[i]] = x [T, k] times weights[i]: one quantization of x for all of them when every
// weight is quantized (project_many), else one call per weight (Linear), as the layers do.
void project(ThreadPool &pool, int isa, const IsaKernels &kern, int planes, int count, const MoeWeight *const *w,
             const int64_t *n, int64_t k, const float *x, int64_t T, float *const *ys, QActBuffers *scratch) {
  bool any_float = false;
  for (int i = 0; i < count; ++i) any_float |= is_float(*w[i]);
  if (!any_float && count > 1) {
    int types[3];
    const uint8_t *ptrs[3];
    for (int i = 0; i < count; ++i) types[i] = w[i]->type, ptrs[i] = (const uint8_t *)w[i]->ptr;
    qmatmul_many(pool, isa, planes, count, types, ptrs, n, k, x, T, ys, scratch);
    return;
  }
  for (int i = 0; i < count; ++i) {
    const uint8_t *p = (const uint8_t *)w[i]->ptr;
    if (is_float(*w[i]))
      float_matmul(pool, kern, w[i]->type, p, n[i], k, x, T, ys[i]);
    else
      qmatmul(pool, isa, planes, w[i]->type, p, 1, n[i], k, x, T, ys[i], scratch);
  }
}

void add_bias(float *y, const float *b, int64_t T, int64_t n) {
  if (!b) return;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < n; ++r) y[t * n + r] += b[r];
}

// x[t] += norm(y[t]) when a post-norm is given (Gemma 3), else x[t] += y[t].
void residual(const IsaKernels &kern, float *x, float *y, const float *post_norm, float eps, int64_t T, int64_t d) {
  for (int64_t t = 0; t < T; ++t) {
    float *yt = y + t * d;
    if (post_norm) kern.rms_norm(yt, post_norm, d, eps, yt);
    for (int64_t i = 0; i < d; ++i) x[t * d + i] += yt[i];
  }
}

}  // namespace

void decode_dense(ThreadPool &pool, int isa, const IsaKernels &kern, const DecodeArgs &a, QActBuffers *scratch,
                  DecodeWorkspace &ws) {
  const int64_t T = a.num_seqs, D = a.dim;
  for (int64_t l = 0; l < a.num_blocks; ++l) {
    const MoeDenseBlock &b = a.blocks[l];
    const int64_t H = b.heads, K = b.kv_heads, Dh = b.head_dim, I = b.hidden, half = Dh / 2;
    ws.h.resize(T * D), ws.q.resize(T * H * Dh), ws.k.resize(T * K * Dh), ws.v.resize(T * K * Dh);
    ws.qr.resize(T * H * Dh), ws.kr.resize(T * K * Dh), ws.att.resize(T * H * Dh), ws.o.resize(T * D);
    ws.g.resize(T * I), ws.u.resize(T * I);

    // Attention: norm, q/k/v from one quantization, biases, per-head norms, rope, cache write,
    // attention over the cached positions and this one, output projection, residual.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.attn_norm, D, b.eps, ws.h.data() + t * D);
    {
      const MoeWeight *w[3] = {&b.q, &b.k, &b.v};
      const int64_t n[3] = {H * Dh, K * Dh, K * Dh};
      float *const ys[3] = {ws.q.data(), ws.k.data(), ws.v.data()};
      project(pool, isa, kern, a.planes, 3, w, n, D, ws.h.data(), T, ys, scratch);
    }
    add_bias(ws.q.data(), b.q_bias, T, H * Dh);
    add_bias(ws.k.data(), b.k_bias, T, K * Dh);
    add_bias(ws.v.data(), b.v_bias, T, K * Dh);
    if (b.q_norm) {
      for (int64_t r = 0; r < T * H; ++r) kern.rms_norm(ws.q.data() + r * Dh, b.q_norm, Dh, b.eps, ws.q.data() + r * Dh);
      for (int64_t r = 0; r < T * K; ++r) kern.rms_norm(ws.k.data() + r * Dh, b.k_norm, Dh, b.eps, ws.k.data() + r * Dh);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float *cs = a.cos[b.rope_set] + t * half, *sn = a.sin[b.rope_set] + t * half;
      for (int64_t h = 0; h < H; ++h)
        kern.rope(ws.q.data() + (t * H + h) * Dh, cs, sn, half, b.neox, ws.qr.data() + (t * H + h) * Dh);
      for (int64_t h = 0; h < K; ++h)
        kern.rope(ws.k.data() + (t * K + h) * Dh, cs, sn, half, b.neox, ws.kr.data() + (t * K + h) * Dh);
      const int64_t past = a.lengths[t], row = K * Dh;
      float *kc = a.k_cache[t * a.num_blocks + l], *vc = a.v_cache[t * a.num_blocks + l];
      memcpy(kc + past * row, ws.kr.data() + t * row, sizeof(float) * row);
      memcpy(vc + past * row, ws.v.data() + t * row, sizeof(float) * row);
      const int64_t first = b.window > 0 ? std::max<int64_t>(0, past + 1 - b.window) : 0;  // past - j < window
      attend_heads(pool, kern, ws.qr.data() + t * H * Dh, H, Dh, kc + first * row, row, vc + first * row, row,
                   past + 1 - first, K, Dh, b.attn_scale, ws.att.data() + t * H * Dh);
    }
    {
      const MoeWeight *w[1] = {&b.o};
      const int64_t n[1] = {D};
      float *const ys[1] = {ws.o.data()};
      project(pool, isa, kern, a.planes, 1, w, n, H * Dh, ws.att.data(), T, ys, scratch);
    }
    residual(kern, a.x, ws.o.data(), b.post_attn_norm, b.eps, T, D);

    // Feed-forward: norm, gate/up from one quantization, the gated activation, down, residual.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.ffn_norm, D, b.eps, ws.h.data() + t * D);
    {
      const MoeWeight *w[2] = {&b.gate, &b.up};
      const int64_t n[2] = {I, I};
      float *const ys[2] = {ws.g.data(), ws.u.data()};
      project(pool, isa, kern, a.planes, 2, w, n, D, ws.h.data(), T, ys, scratch);
    }
    (b.act == MOE_ACT_GELU_TANH ? kern.geglu : kern.swiglu)(ws.g.data(), ws.u.data(), T * I);
    {
      const MoeWeight *w[1] = {&b.down};
      const int64_t n[1] = {D};
      float *const ys[1] = {ws.o.data()};
      project(pool, isa, kern, a.planes, 1, w, n, I, ws.g.data(), T, ys, scratch);
    }
    residual(kern, a.x, ws.o.data(), b.post_ffn_norm, b.eps, T, D);
  }
}

}  // namespace moe
