// The native decode step (decode.h). Python's layers run the same kernel calls one by one; here
// they run back to back without the interpreter between them, which was most of a small
// model's step (SmolLM2-135M: about 10 kernel calls per block, each a few microseconds).
#include "decode.h"

#include <string.h>
#include <time.h>

#include <algorithm>

#include "quants/formats.h"
#include "routing.h"

namespace moe {

static int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

PartClock::PartClock(double *acc) : acc_(acc) {
  if (acc_) last_ns_ = monotonic_ns();
}

void PartClock::lap(StepPart part) {
  if (!acc_) return;
  const int64_t now = monotonic_ns();
  acc_[part] += (now - last_ns_) * 1e-9;
  last_ns_ = now;
}

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

// y [T, n] = the gated feed-forward of h [T, k]: gate/up from one quantization, act, down.
void feed_forward(ThreadPool &pool, int isa, const IsaKernels &kern, int planes, const MoeWeight &gate,
                  const MoeWeight &up, const MoeWeight &down, int act, int64_t hidden, int64_t dim, const float *h,
                  int64_t T, DecodeWorkspace &ws, float *y, QActBuffers *scratch) {
  ws.g.resize(T * hidden), ws.u.resize(T * hidden);
  const MoeWeight *w[2] = {&gate, &up};
  const int64_t n[2] = {hidden, hidden};
  float *const ys[2] = {ws.g.data(), ws.u.data()};
  project(pool, isa, kern, planes, 2, w, n, dim, h, T, ys, scratch);
  (act == MOE_ACT_GELU_TANH ? kern.geglu : kern.swiglu)(ws.g.data(), ws.u.data(), T * hidden);
  const MoeWeight *wd[1] = {&down};
  const int64_t nd[1] = {dim};
  float *const yd[1] = {y};
  project(pool, isa, kern, planes, 1, wd, nd, hidden, ws.g.data(), T, yd, scratch);
}

// ws.o [T, D] = the routed experts of ws.h [T, D] (and the shared ones when given): router
// logits, routing, the fused MoE (SparseMoE / DeepseekMoE's forward).
void routed_experts(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, int planes, int64_t E,
                    int64_t I, const MoeRouting &routing, const MoeWeight &router, const MoeWeight &gate,
                    const MoeWeight &up, const MoeWeight &down, const MoeWeight *const *shared, int64_t D, int64_t T,
                    DecodeWorkspace &ws, QActBuffers *scratch, MoeWorkspace &moe_ws, PartClock &clock,
                    int64_t shared_hidden = 0) {
  const int64_t A = routing.top_k;
  ws.logits.resize(T * E), ws.ids.resize(T * A), ws.rw.resize(T * A);
  const MoeWeight *w[1] = {&router};
  const int64_t n[1] = {E};
  float *const ys[1] = {ws.logits.data()};
  project(pool, isa, kern, planes, 1, w, n, D, ws.h.data(), T, ys, scratch);
  route(routing, ws.logits.data(), T, ws.ids.data(), ws.rw.data());
  clock.lap(kPartRouter);
  MoeArgs m{T, D, I, E, A, ws.h.data(), ws.ids.data(), ws.rw.data(), (const uint8_t *)gate.ptr,
            (const uint8_t *)up.ptr, (const uint8_t *)down.ptr, gate.type, up.type, down.type, ws.o.data(), planes};
  if (shared) {
    m.shared_gate = (const uint8_t *)shared[0]->ptr, m.shared_up = (const uint8_t *)shared[1]->ptr;
    m.shared_down = (const uint8_t *)shared[2]->ptr;
    m.shared_gate_type = shared[0]->type, m.shared_up_type = shared[1]->type, m.shared_down_type = shared[2]->type;
    m.shared_hidden = shared_hidden;
  }
  moe_forward(pool, kern, qk, m, moe_ws);
  clock.lap(kPartExperts);
}

// logits [T, vocab] = the LM head of the final norm of x [T, D]: Linear and RMSNorm's kernels,
// as the model's forward calls them after the blocks.
void lm_head(ThreadPool &pool, int isa, const IsaKernels &kern, int planes, const MoeHead *head, int64_t D,
             const float *x, int64_t T, DecodeWorkspace &ws, float *logits, QActBuffers *scratch, PartClock &clock) {
  if (!head) return;
  ws.h.resize(T * D);
  for (int64_t t = 0; t < T; ++t) kern.rms_norm(x + t * D, head->norm, D, head->eps, ws.h.data() + t * D);
  const MoeWeight *w[1] = {&head->weight};
  const int64_t n[1] = {head->vocab};
  float *const ys[1] = {logits};
  project(pool, isa, kern, planes, 1, w, n, D, ws.h.data(), T, ys, scratch);
  clock.lap(kPartHead);
}

}  // namespace

void decode_dense(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, const DecodeArgs &a,
                  QActBuffers *scratch, DecodeWorkspace &ws, MoeWorkspace &moe_ws) {
  const int64_t T = a.num_seqs, D = a.dim;
  PartClock clock(a.profile);
  for (int64_t l = 0; l < a.num_blocks; ++l) {
    const MoeDenseBlock &b = a.blocks[l];
    const int64_t H = b.heads, K = b.kv_heads, Dh = b.head_dim, I = b.hidden, half = Dh / 2;
    ws.h.resize(T * D), ws.q.resize(T * H * Dh), ws.k.resize(T * K * Dh), ws.v.resize(T * K * Dh);
    ws.qr.resize(T * H * Dh), ws.kr.resize(T * K * Dh), ws.att.resize(T * H * Dh), ws.o.resize(T * D);

    // Attention: norm, q/k/v from one quantization, biases, per-head norms, rope, cache write,
    // attention over the cached positions and this one, output projection, residual.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.attn_norm, D, b.eps, ws.h.data() + t * D);
    clock.lap(kPartNorms);
    {
      const MoeWeight *w[3] = {&b.q, &b.k, &b.v};
      const int64_t n[3] = {H * Dh, K * Dh, K * Dh};
      float *const ys[3] = {ws.q.data(), ws.k.data(), ws.v.data()};
      project(pool, isa, kern, a.planes, 3, w, n, D, ws.h.data(), T, ys, scratch);
    }
    clock.lap(kPartAttnProj);
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
    clock.lap(kPartAttention);
    {
      const MoeWeight *w[1] = {&b.o};
      const int64_t n[1] = {D};
      float *const ys[1] = {ws.o.data()};
      project(pool, isa, kern, a.planes, 1, w, n, H * Dh, ws.att.data(), T, ys, scratch);
    }
    clock.lap(kPartAttnProj);
    residual(kern, a.x, ws.o.data(), b.post_attn_norm, b.eps, T, D);

    // Feed-forward: norm, gate/up from one quantization, the gated activation, down, residual.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.ffn_norm, D, b.eps, ws.h.data() + t * D);
    clock.lap(kPartNorms);
    if (b.experts == 0) {
      feed_forward(pool, isa, kern, a.planes, b.gate, b.up, b.down, b.act, I, D, ws.h.data(), T, ws, ws.o.data(),
                   scratch);
      clock.lap(kPartFfn);
    } else {
      routed_experts(pool, isa, kern, qk, a.planes, b.experts, b.expert_hidden, b.routing, b.router, b.exp_gate,
                     b.exp_up, b.exp_down, nullptr, D, T, ws, scratch, moe_ws, clock);
    }
    residual(kern, a.x, ws.o.data(), b.post_ffn_norm, b.eps, T, D);
    clock.lap(kPartNorms);
  }
  lm_head(pool, isa, kern, a.planes, a.head, D, a.x, T, ws, a.logits, scratch, clock);
}

void decode_mla(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, const MlaArgs &a,
                QActBuffers *scratch, DecodeWorkspace &ws, MoeWorkspace &moe_ws) {
  const int64_t T = a.num_seqs, D = a.dim;
  PartClock clock(a.profile);
  for (int64_t l = 0; l < a.num_blocks; ++l) {
    const MoeMlaBlock &b = a.blocks[l];
    const int64_t H = b.heads, L = b.kv_lora, N = b.nope_dim, R = b.rope_dim, Vd = b.v_dim, QR = N + R, half = R / 2;
    const int64_t qa_n = b.q_b.ptr ? b.q_lora : H * QR;
    ws.h.resize(T * D), ws.qa.resize(T * qa_n), ws.q.resize(T * H * QR), ws.kv.resize(T * (L + R));
    ws.lat.resize(T * H * (L + R)), ws.att.resize(T * H * L), ws.qr.resize(T * H * Vd), ws.o.resize(T * D);

    // MLA, absorbed (MLAttention.forward's decode path): q (through its low-rank pair) and the
    // joint kv from one quantization, the latent's norm, rope on q_pe and k_pe, the cache row,
    // q_nope through k_b per head, one-key-head attention over [latent | k_pe], v_b per head, o.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.attn_norm, D, b.eps, ws.h.data() + t * D);
    clock.lap(kPartNorms);
    {
      const MoeWeight *w[2] = {&b.q, &b.kv_a};
      const int64_t n[2] = {qa_n, L + R};
      float *const ys[2] = {b.q_b.ptr ? ws.qa.data() : ws.q.data(), ws.kv.data()};
      project(pool, isa, kern, a.planes, 2, w, n, D, ws.h.data(), T, ys, scratch);
    }
    clock.lap(kPartAttnProj);
    if (b.q_b.ptr) {
      for (int64_t t = 0; t < T; ++t)
        kern.rms_norm(ws.qa.data() + t * qa_n, b.q_a_norm, qa_n, b.eps, ws.qa.data() + t * qa_n);
      clock.lap(kPartNorms);
      const MoeWeight *w[1] = {&b.q_b};
      const int64_t n[1] = {H * QR};
      float *const ys[1] = {ws.q.data()};
      project(pool, isa, kern, a.planes, 1, w, n, qa_n, ws.qa.data(), T, ys, scratch);
      clock.lap(kPartAttnProj);
    }
    // q_nope [T, H, N] gathered for the per-head map; rows [T, H, L + R] = [q_nope k_b | rope(q_pe)].
    ws.qr.resize(std::max(T * H * Vd, T * H * N));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        memcpy(ws.qr.data() + (t * H + h) * N, ws.q.data() + (t * H + h) * QR, sizeof(float) * N);
    ws.k.resize(T * H * L);
    qmatmul(pool, isa, a.planes, b.k_b.type, (const uint8_t *)b.k_b.ptr, H, L, N, ws.qr.data(), T, ws.k.data(), scratch);
    clock.lap(kPartMlaMaps);
    for (int64_t t = 0; t < T; ++t) {
      const float *cs = a.cos[b.rope_set] + t * half, *sn = a.sin[b.rope_set] + t * half;
      float *row = ws.lat.data() + t * H * (L + R);
      for (int64_t h = 0; h < H; ++h) {
        memcpy(row + h * (L + R), ws.k.data() + (t * H + h) * L, sizeof(float) * L);
        kern.rope(ws.q.data() + (t * H + h) * QR + N, cs, sn, half, 0, row + h * (L + R) + L);
      }
      float *kv = ws.kv.data() + t * (L + R);
      const int64_t past = a.lengths[t];
      float *cache = a.cache[t * a.num_blocks + l];
      kern.rms_norm(kv, b.kv_a_norm, L, b.eps, cache + past * (L + R));  // the latent row, normed
      kern.rope(kv + L, cs, sn, half, 0, cache + past * (L + R) + L);     // k_pe, one head for all
      attend_heads(pool, kern, row, H, L + R, cache, L + R, cache, L + R, past + 1, 1, L, b.softmax_scale,
                   ws.att.data() + t * H * L);
    }
    clock.lap(kPartAttention);
    ws.qr.resize(T * H * Vd);
    qmatmul(pool, isa, a.planes, b.v_b.type, (const uint8_t *)b.v_b.ptr, H, Vd, L, ws.att.data(), T, ws.qr.data(),
            scratch);
    clock.lap(kPartMlaMaps);
    {
      const MoeWeight *w[1] = {&b.o};
      const int64_t n[1] = {D};
      float *const ys[1] = {ws.o.data()};
      project(pool, isa, kern, a.planes, 1, w, n, H * Vd, ws.qr.data(), T, ys, scratch);
    }
    clock.lap(kPartAttnProj);
    residual(kern, a.x, ws.o.data(), nullptr, b.eps, T, D);

    // Feed-forward: dense, or router, routing and the fused experts with the shared ones.
    for (int64_t t = 0; t < T; ++t) kern.rms_norm(a.x + t * D, b.ffn_norm, D, b.eps, ws.h.data() + t * D);
    clock.lap(kPartNorms);
    if (b.experts == 0) {
      feed_forward(pool, isa, kern, a.planes, b.gate, b.up, b.down, MOE_ACT_SILU, b.hidden, D, ws.h.data(), T, ws,
                   ws.o.data(), scratch);
      clock.lap(kPartFfn);
    } else {
      const MoeWeight *shared[3] = {&b.sh_gate, &b.sh_up, &b.sh_down};
      routed_experts(pool, isa, kern, qk, a.planes, b.experts, b.expert_hidden, b.routing, b.router, b.exp_gate,
                     b.exp_up, b.exp_down, b.shared_hidden ? shared : nullptr, D, T, ws, scratch, moe_ws, clock,
                     b.shared_hidden);
    }
    residual(kern, a.x, ws.o.data(), nullptr, b.eps, T, D);
    clock.lap(kPartNorms);
  }
  lm_head(pool, isa, kern, a.planes, a.head, D, a.x, T, ws, a.logits, scratch, clock);
}

}  // namespace moe
