// The drivers of prompt attention: each kv head's keys packed into panels and its values into
// contiguous rows once per call (for MLA, expanded from the latents into them), then tasks of
// up to kRows query rows of one head on the pool.
#include "prompt_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "api.h"
#include "threadpool.h"

namespace moe {

namespace {

struct Kernels {
  void (*rows)(const PromptRows &, float *);
  void (*transpose)(const float *, int64_t, int64_t, int64_t, int64_t, float *, int64_t);
  void (*matmul)(const float *, int64_t, const float *, int64_t, int64_t, int64_t, int64_t, float *, int64_t);
};

Kernels kernels_for(int isa) {
  if (isa == MOE_ISA_SCALAR) return {scalar::attend_prompt_rows, scalar::transpose, scalar::fma_matmul};
  if (isa == MOE_ISA_AVX2) return {avx2::attend_prompt_rows, avx2::transpose, avx2::fma_matmul};
  return {avx512::attend_prompt_rows, avx512::transpose, avx512::fma_matmul};  // AMX: the AVX-512 kernels
}

// A thread's buffer, grown and kept between calls (a prompt-sized call then maps no fresh
// pages), up to kKeptFloats; a larger request gets `own`, the caller's, freed when it returns:
// a long context's packed keys and values run to hundreds of MB, which no idle thread should hold.
constexpr int64_t kKeptFloats = int64_t(16) << 20;  // 64 MB

template <int kSlot>
float *thread_scratch(int64_t n, std::vector<float> *own = nullptr) {
  if (own && n > kKeptFloats) {
    own->resize(n);
    return own->data();
  }
  thread_local std::vector<float> buf;
  if ((int64_t)buf.size() < n) buf.resize(n);
  return buf.data();
}

// The packed keys and values of every kv head: head g's key panels at keys + g * key_floats,
// its value rows (dv floats each, by position) at values + g * value_floats.
struct Packed {
  const float *keys, *values;
  int64_t key_floats, value_floats;
};

// The attention tasks, head by head (a head's keys and values stay in L2 while the threads work
// on it; ordered by query block alone, every head's came from L3 and MLA's 16 heads ran at half
// the speed), each head's longest first (later rows see more keys).
void run_rows(ThreadPool &pool, const Kernels &kern, const float *q, int64_t n, int64_t heads, int64_t dh, int64_t ldq,
              const Packed &kv, int64_t kv_heads, int64_t dv, int64_t past, int64_t window, float scale, float *out) {
  const int64_t blocks = (n + kRows - 1) / kRows, per_kv = heads / kv_heads, scratch = prompt_rows_scratch(dh, dv);
  pool.parallel_for(blocks * heads, [&](int64_t task) {
    const int64_t h = task / blocks, blk = blocks - 1 - task % blocks, g = h / per_kv, t0 = blk * kRows;
    PromptRows a;
    a.q = q + t0 * ldq + h * dh, a.ldq = ldq, a.rows = std::min<int64_t>(kRows, n - t0), a.pos0 = past + t0;
    a.window = window, a.kt = kv.keys + g * kv.key_floats, a.v = kv.values + g * kv.value_floats, a.ldv = dv;
    a.dh = dh, a.dv = dv, a.scale = scale, a.out = out + (t0 * heads + h) * dv, a.ldout = heads * dv;
    kern.rows(a, thread_scratch<1>(scratch));
  });
}

}  // namespace

void attend_prompt(ThreadPool &pool, int isa, const float *q, int64_t n, int64_t heads, int64_t dh, int64_t ldq,
                   const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t kv_heads, int64_t dv, int64_t past,
                   int64_t window, float scale, float *out) {
  const Kernels kern = kernels_for(isa);
  const int64_t keys = past + n, panels = (keys + kPanel - 1) / kPanel;
  // Values as contiguous rows: a cache row holds every head, and at MLA's 16 heads x 128 values
  // its stride (8 KB) put all of a panel's values in one L1 set (the kernel ran 1.6x slower).
  const int64_t key_floats = panels * dh * kPanel, value_floats = panels * kPanel * dv;
  // Panels from the first any query sees: a window leaves the ones before it unread.
  const int64_t first = window > 0 && past + 1 > window ? (past + 1 - window) / kPanel : 0, used = panels - first;
  std::vector<float> own;
  float *const kt = thread_scratch<0>(kv_heads * (key_floats + value_floats), &own);
  float *const vt = kt + kv_heads * key_floats;
  pool.parallel_for(kv_heads * used, [&](int64_t task) {
    const int64_t g = task / used, b = first + task % used, s0 = b * kPanel;
    const int64_t count = std::min<int64_t>(kPanel, keys - s0);
    kern.transpose(k + s0 * ldk + g * dh, ldk, count, kPanel, dh, kt + g * key_floats + b * dh * kPanel, kPanel);
    for (int64_t j = 0; j < count; ++j)
      std::memcpy(vt + g * value_floats + (s0 + j) * dv, v + (s0 + j) * ldv + g * dv, sizeof(float) * dv);
  });
  run_rows(pool, kern, q, n, heads, dh, ldq, {kt, vt, key_floats, value_floats}, kv_heads, dv, past, window, scale, out);
}

void attend_prompt_mla(ThreadPool &pool, int isa, const float *q, int64_t n, int64_t heads, int64_t ldq,
                       const float *cache, int64_t ldc, int64_t L, int64_t R, const float *w_uk, const float *w_uv,
                       int64_t N, int64_t Vd, int64_t past, float scale, float *out) {
  const Kernels kern = kernels_for(isa);
  const int64_t keys = past + n, panels = (keys + kPanel - 1) / kPanel, dh = N + R;
  const int64_t joint_floats = (L + R) * kPanel, key_floats = panels * dh * kPanel, value_floats = panels * kPanel * Vd;
  std::vector<float> own;
  float *const joint = thread_scratch<0>(panels * joint_floats + heads * (key_floats + value_floats), &own);
  float *const kt = joint + panels * joint_floats, *const vt = kt + heads * key_floats;
  // The cache rows [latent | k_pe] as panels [L + R][kPanel]: the right operand of both expansions.
  pool.parallel_for(panels, [&](int64_t b) {
    const int64_t s0 = b * kPanel;
    kern.transpose(cache + s0 * ldc, ldc, std::min<int64_t>(kPanel, keys - s0), kPanel, L + R, joint + b * joint_floats, kPanel);
  });
  // Head h's keys of panel b: w_uk[h] [N, L] times the latent panel, then k_pe's rows (shared by
  // all heads); its values: w_uv[h] [Vd, L] times the panel, transposed into rows. Head-major,
  // so a head's maps stay in L2.
  pool.parallel_for(heads * panels, [&](int64_t task) {
    const int64_t h = task / panels, b = task % panels, s0 = b * kPanel;
    const float *lat = joint + b * joint_floats;
    float *kp = kt + h * key_floats + b * dh * kPanel;
    kern.matmul(w_uk + h * N * L, L, lat, kPanel, N, L, kPanel, kp, kPanel);
    std::memcpy(kp + N * kPanel, lat + L * kPanel, sizeof(float) * R * kPanel);
    float *vtmp = thread_scratch<2>(Vd * kPanel);
    kern.matmul(w_uv + h * Vd * L, L, lat, kPanel, Vd, L, kPanel, vtmp, kPanel);
    kern.transpose(vtmp, kPanel, Vd, Vd, std::min<int64_t>(kPanel, keys - s0), vt + h * value_floats + s0 * Vd, Vd);
  });
  run_rows(pool, kern, q, n, heads, dh, ldq, {kt, vt, key_floats, value_floats}, heads, Vd, past, 0, scale, out);
}

}  // namespace moe
