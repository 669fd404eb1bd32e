// Exported kernels: argument checks, then the active ISA's kernels on the thread pool.
#include "api.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "decode.h"
#include "kernels_isa.h"
#include "moe.h"
#include "prompt_attention.h"
#include "qmatmul.h"
#include "quants/formats.h"
#include "routing.h"
#include "threadpool.h"

namespace moe {

const IsaKernels &active_kernels() {
  static const IsaKernels tables[] = {
      {scalar::dequantize, scalar::tile_matmul, scalar::rows_matmul, scalar::swiglu, scalar::geglu, scalar::scale_add,
       scalar::attend, scalar::rope, scalar::rms_norm},
      {avx2::dequantize, avx2::tile_matmul, avx2::rows_matmul, avx2::swiglu, avx2::geglu, avx2::scale_add,
       avx2::attend, avx2::rope, avx2::rms_norm},
      {avx512::dequantize, avx512::tile_matmul, avx512::rows_matmul, avx512::swiglu, avx512::geglu, avx512::scale_add,
       avx512::attend, avx512::rope, avx512::rms_norm},
  };
  const int isa = moe_isa_active();  // AMX runs the AVX-512 table (tiles serve the integer GEMMs alone)
  return tables[isa < MOE_ISA_AVX512 ? isa : MOE_ISA_AVX512];
}

namespace {

struct Runtime {
  std::mutex mutex;  // guards replacing the pool; kernels run under it (one caller at a time)
  std::unique_ptr<ThreadPool> pool;
  int num_threads = 0;
  MoeWorkspace moe;         // reused by every moe_experts call (under the mutex)
  QActBuffers activations[3];  // and by every integer matmul, one per activation format
  DecodeWorkspace decode;      // and by moe_decode_dense
  bool profiling = false;      // moe_step_profile
  double profile[kStepParts] = {};
};

Runtime &runtime() {
  static Runtime rt;  // built on first use: no thread starts at library load
  return rt;
}

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? (int)n : 1;
}

ThreadPool &pool_locked(Runtime &rt) {
  if (!rt.pool) {
    if (rt.num_threads <= 0) rt.num_threads = default_threads();
    rt.pool = std::make_unique<ThreadPool>(rt.num_threads);
  }
  return *rt.pool;
}

}  // namespace

void gemm_rows(const IsaKernels &kern, int type, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t k,
               const float *const *x, int64_t num_tokens, float *y, int64_t ldy) {
  if (num_tokens <= kMaxDecodeTokens) {
    kern.rows_matmul(type, w, row_bytes, rows, k, x, num_tokens, y, ldy);
    return;
  }
  // Many tokens: kTileRows rows at a time dequantized into this thread's tile (it stays in
  // cache) and shared among them.
  const Geometry g = geometry(type);
  const int64_t count_per_row = g.block_size == 1 ? k : k / g.block_size;
  thread_local std::vector<float> tile;
  if ((int64_t)tile.size() < kTileRows * k) tile.resize(kTileRows * k);
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const int64_t n = std::min(kTileRows, rows - r0);
    for (int64_t r = 0; r < n; ++r)
      kern.dequantize(type, w + (r0 + r) * row_bytes, tile.data() + r * k, count_per_row);
    kern.tile_matmul(tile.data(), n, k, x, num_tokens, y + r0, ldy);
  }
}

void float_matmul(ThreadPool &pool, const IsaKernels &kern, int type, const uint8_t *w, int64_t n, int64_t k,
                  const float *x, int64_t num_tokens, float *y) {
  const Geometry g = geometry(type);
  const int64_t row_bytes = k / g.block_size * g.type_size;
  std::vector<const float *> rows_of_x(num_tokens);
  for (int64_t t = 0; t < num_tokens; ++t) rows_of_x[t] = x + t * k;
  const int64_t task_rows = rows_per_task(n, pool.size());  // long contiguous reads
  pool.parallel_for((n + task_rows - 1) / task_rows, [&](int64_t task) {
    const int64_t row0 = task * task_rows;
    gemm_rows(kern, type, w + row0 * row_bytes, row_bytes, std::min(task_rows, n - row0), k, rows_of_x.data(),
              num_tokens, y + row0, n);
  });
}

void attend_heads(ThreadPool &pool, const IsaKernels &kern, const float *q, int64_t heads, int64_t dh, const float *k,
                  int64_t ldk, const float *v, int64_t ldv, int64_t n, int64_t kv_heads, int64_t dv, float scale,
                  float *out) {
  // A task is a group of query heads of one kv head, which reads each key and value once for
  // all of them: the whole group, halved while there are fewer tasks than threads. Any grouping
  // gives the same bits.
  const int64_t per_kv = heads / kv_heads;
  int64_t group = per_kv;
  while (kv_heads * (per_kv / group) < pool.size() && group % 2 == 0) group /= 2;
  auto task = [&](int64_t i) {
    thread_local std::vector<float> scores;
    if ((int64_t)scores.size() < group * n) scores.resize(group * n);
    const int64_t h = i * group, g = h / per_kv;  // query head h reads kv head h / (heads / kv_heads)
    kern.attend(q + h * dh, group, k + g * dh, ldk, v + g * dv, ldv, n, dh, dv, scale, scores.data(), out + h * dv);
  };
  // A short context is a few microseconds of work: waking the pool would cost more.
  if (heads * n * (dh + dv) < (int64_t)1 << 18) {
    for (int64_t i = 0; i < heads / group; ++i) task(i);
    return;
  }
  pool.parallel_for(heads / group, task);
}

}  // namespace moe

using namespace moe;

MOE_API int moe_type_supported(int type) { return geometry(type).block_size > 0; }

MOE_API int moe_row_bytes(int type, int64_t k) {
  const Geometry g = geometry(type);
  if (g.block_size == 0 || k % g.block_size) return -1;
  return (int)(k / g.block_size * g.type_size);
}

MOE_API int moe_set_num_threads(int n) {
  if (n < 0) return -1;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  rt.pool.reset();
  rt.num_threads = n;  // 0: the default
  return 0;
}

MOE_API int moe_num_threads(void) {
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  return pool_locked(rt).size();
}

MOE_API int moe_dequantize(int type, const void *src, int64_t src_bytes, float *dst, int64_t n) {
  const Geometry g = geometry(type);
  if (g.block_size == 0) return MOE_ERR_TYPE;
  if (!src || !dst || n < 0 || n % g.block_size) return MOE_ERR_SHAPE;
  const int64_t blocks = n / g.block_size;
  if (src_bytes < blocks * g.type_size) return MOE_ERR_SIZE;
  active_kernels().dequantize(type, (const uint8_t *)src, dst, g.block_size == 1 ? n : blocks);
  return 0;
}

MOE_API int moe_matmul(int type, const void *weight, int64_t weight_bytes, int64_t n, int64_t k, const float *x,
                       int64_t num_tokens, float *y) {
  const Geometry g = geometry(type);
  if (g.block_size == 0) return MOE_ERR_TYPE;
  if (!weight || !x || !y || n <= 0 || k <= 0 || num_tokens < 0 || k % g.block_size) return MOE_ERR_SHAPE;
  if (weight_bytes < n * (k / g.block_size * g.type_size)) return MOE_ERR_SIZE;
  if (num_tokens == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  float_matmul(pool_locked(rt), active_kernels(), type, (const uint8_t *)weight, n, k, x, num_tokens, y);
  return 0;
}

namespace {

// A stack of `count` matrices of rows x cols in `type`: a known type, whole blocks, enough bytes.
int check_stack(int type, int64_t count, int64_t rows, int64_t cols, int64_t bytes) {
  const Geometry g = geometry(type);
  if (!g.block_size) return MOE_ERR_TYPE;
  if (cols % g.block_size) return MOE_ERR_SHAPE;
  return bytes < count * rows * (cols / g.block_size * g.type_size) ? MOE_ERR_SIZE : 0;
}

}  // namespace

MOE_API int moe_experts(int64_t num_tokens, int64_t dim, int64_t hidden, int64_t num_experts, int64_t top_k,
                        const float *x, const int32_t *ids, const float *weights, const void *gate, int gate_type,
                        int64_t gate_bytes, const void *up, int up_type, int64_t up_bytes, const void *down,
                        int down_type, int64_t down_bytes, float *out, int planes, int64_t shared_hidden,
                        const void *shared_gate, int shared_gate_type, int64_t shared_gate_bytes,
                        const void *shared_up, int shared_up_type, int64_t shared_up_bytes, const void *shared_down,
                        int shared_down_type, int64_t shared_down_bytes) {
  if (num_tokens < 0 || dim <= 0 || hidden <= 0 || num_experts <= 0 || top_k <= 0 || shared_hidden < 0 || !x ||
      !ids || !weights || !gate || !up || !down || !out || planes < 0 || planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  const int checks[] = {
      check_stack(gate_type, num_experts, hidden, dim, gate_bytes),
      check_stack(up_type, num_experts, hidden, dim, up_bytes),
      check_stack(down_type, num_experts, dim, hidden, down_bytes),
      shared_hidden ? check_stack(shared_gate_type, 1, shared_hidden, dim, shared_gate_bytes) : 0,
      shared_hidden ? check_stack(shared_up_type, 1, shared_hidden, dim, shared_up_bytes) : 0,
      shared_hidden ? check_stack(shared_down_type, 1, dim, shared_hidden, shared_down_bytes) : 0,
  };
  for (int c : checks)
    if (c) return c;
  if (shared_hidden && (!shared_gate || !shared_up || !shared_down)) return MOE_ERR_SHAPE;
  for (int64_t p = 0; p < num_tokens * top_k; ++p)
    if (ids[p] < 0 || ids[p] >= num_experts) return MOE_ERR_SHAPE;
  if (num_tokens == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  MoeArgs args{num_tokens, dim, hidden, num_experts, top_k, x, ids, weights,
               (const uint8_t *)gate, (const uint8_t *)up, (const uint8_t *)down, gate_type, up_type, down_type, out,
               planes};
  if (shared_hidden) {
    args.shared_gate = (const uint8_t *)shared_gate;
    args.shared_up = (const uint8_t *)shared_up;
    args.shared_down = (const uint8_t *)shared_down;
    args.shared_gate_type = shared_gate_type;
    args.shared_up_type = shared_up_type;
    args.shared_down_type = shared_down_type;
    args.shared_hidden = shared_hidden;
  }
  moe_forward(pool_locked(rt), active_kernels(), q_kernels(moe_isa_active()), args, rt.moe);
  return 0;
}

MOE_API int moe_matmul_q8(int type, const void *weight, int64_t weight_bytes, int64_t n, int64_t k, const float *x,
                          int64_t num_tokens, float *y, int planes) {
  if (geometry(type).block_size == 1) return moe_matmul(type, weight, weight_bytes, n, k, x, num_tokens, y);
  return moe_matmul_q8_heads(type, weight, weight_bytes, 1, n, k, x, num_tokens, y, planes);
}

MOE_API int moe_matmul_q8_many(int count, const int *types, const void *const *weights,
                               const int64_t *weight_bytes, const int64_t *n, int64_t k, const float *x,
                               int64_t num_tokens, float *const *ys, int planes) {
  if (count <= 0 || !types || !weights || !weight_bytes || !n || !ys || !x || k <= 0 || num_tokens < 0 || planes < 1 ||
      planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  for (int i = 0; i < count; ++i) {
    const Geometry g = geometry(types[i]);
    if (g.block_size <= 1) return MOE_ERR_TYPE;
    if (!weights[i] || !ys[i] || n[i] <= 0 || k % g.block_size) return MOE_ERR_SHAPE;
    if (weight_bytes[i] < n[i] * (k / g.block_size * g.type_size)) return MOE_ERR_SIZE;
  }
  if (num_tokens == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  qmatmul_many(pool_locked(rt), moe_isa_active(), planes, count, types, (const uint8_t *const *)weights, n, k, x, num_tokens,
               ys, rt.activations);
  return 0;
}

MOE_API int moe_matmul_q8_heads(int type, const void *weight, int64_t weight_bytes, int64_t heads, int64_t n,
                                int64_t k, const float *x, int64_t num_tokens, float *y, int planes) {
  const Geometry g = geometry(type);
  if (g.block_size <= 1) return MOE_ERR_TYPE;
  if (!weight || !x || !y || heads <= 0 || n <= 0 || k <= 0 || num_tokens < 0 || k % g.block_size || planes < 1 ||
      planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  if (weight_bytes < heads * n * (k / g.block_size * g.type_size)) return MOE_ERR_SIZE;
  if (num_tokens == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  qmatmul(pool_locked(rt), moe_isa_active(), planes, type, (const uint8_t *)weight, heads, n, k, x, num_tokens, y,
          rt.activations);
  return 0;
}

MOE_API int moe_quantize_activations(int type, const float *x, int64_t num_tokens, int64_t k, int8_t *q, float *d,
                                     float *s, int planes) {
  const int kind = act_kind_for(type);
  if (kind < 0) return MOE_ERR_TYPE;
  const int block = kind == kActQ8_K ? kChunkQ : 32;
  if (!x || !q || !d || !s || num_tokens < 0 || k <= 0 || k % block || planes < 1 || planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  const QActBuffers one(planes, k);
  const QActView &v = one.view;
  for (int64_t t = 0; t < num_tokens; ++t) {
    quantize_planes(q_kernels(moe_isa_active()).quantize, kind, planes, x + t * k, 0, v);
    for (int p = 0; p < planes; ++p) {  // slot p -> output row planes * t + p
      const int64_t row = planes * t + p, n16 = v.chunks * kSubQ;
      memcpy(q + row * k, v.q + p * v.chunks * kChunkQ, (size_t)k);
      for (int64_t b = 0; b < k / block; ++b) {
        d[row * (k / block) + b] = v.scale[p * n16 + b * block / 16];
        s[row * (k / block) + b] = kind == kActQ8_1 ? v.asum[p * n16 + b * block / 16] : 0.0f;
      }
    }
  }
  return 0;
}

MOE_API int moe_attend(const float *q, int64_t heads, int64_t dh, const float *k, int64_t ldk, const float *v,
                       int64_t ldv, int64_t n, int64_t kv_heads, int64_t dv, float scale, float *out) {
  if (!q || !k || !v || !out || heads <= 0 || dh <= 0 || dv <= 0 || n <= 0 || kv_heads <= 0 || heads % kv_heads ||
      ldk < kv_heads * dh || ldv < kv_heads * dv)
    return MOE_ERR_SHAPE;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  attend_heads(pool_locked(rt), active_kernels(), q, heads, dh, k, ldk, v, ldv, n, kv_heads, dv, scale, out);
  return 0;
}

MOE_API int moe_attend_prompt(const float *q, int64_t n, int64_t heads, int64_t dh, int64_t ldq, const float *k,
                              int64_t ldk, const float *v, int64_t ldv, int64_t kv_heads, int64_t dv, int64_t past,
                              int64_t window, float scale, float *out) {
  if (!q || !k || !v || !out || n <= 0 || heads <= 0 || dh <= 0 || dv <= 0 || kv_heads <= 0 || heads % kv_heads ||
      past < 0 || window < 0 || ldq < heads * dh || ldk < kv_heads * dh || ldv < kv_heads * dv)
    return MOE_ERR_SHAPE;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  attend_prompt(pool_locked(rt), moe_isa_active(), q, n, heads, dh, ldq, k, ldk, v, ldv, kv_heads, dv, past, window,
                scale, out);
  return 0;
}

MOE_API int moe_attend_prompt_mla(const float *q, int64_t n, int64_t heads, int64_t ldq, const float *cache, int64_t ldc,
                                  int64_t L, int64_t R, const float *w_uk, const float *w_uv, int64_t N, int64_t Vd,
                                  int64_t past, float scale, float *out) {
  if (!q || !cache || !w_uk || !w_uv || !out || n <= 0 || heads <= 0 || L <= 0 || R < 0 || N <= 0 || Vd <= 0 ||
      past < 0 || ldq < heads * (N + R) || ldc < L + R)
    return MOE_ERR_SHAPE;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  attend_prompt_mla(pool_locked(rt), moe_isa_active(), q, n, heads, ldq, cache, ldc, L, R, w_uk, w_uv, N, Vd, past,
                    scale, out);
  return 0;
}

MOE_API int moe_rope(const float *x, int64_t tokens, int64_t heads, int64_t dim, int64_t ld_token, int64_t ld_head,
                     const float *cos, const float *sin, int neox, float *out) {
  if (!x || !cos || !sin || !out || tokens < 0 || heads <= 0 || dim <= 0 || dim % 2) return MOE_ERR_SHAPE;
  const IsaKernels &kern = active_kernels();
  const int64_t half = dim / 2;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      kern.rope(x + t * ld_token + h * ld_head, cos + t * half, sin + t * half, half, neox, out + (t * heads + h) * dim);
  return 0;
}

MOE_API int moe_rms_norm(const float *x, int64_t rows, int64_t d, const float *w, float eps, float *out) {
  if (!x || !w || !out || rows < 0 || d <= 0) return MOE_ERR_SHAPE;
  const IsaKernels &kern = active_kernels();
  for (int64_t r = 0; r < rows; ++r) kern.rms_norm(x + r * d, w, d, eps, out + r * d);
  return 0;
}

MOE_API int moe_gated(int act, float *g, const float *u, int64_t n) {
  if (!g || !u || n < 0 || (act != MOE_ACT_SILU && act != MOE_ACT_GELU_TANH)) return MOE_ERR_SHAPE;
  const IsaKernels &kern = active_kernels();
  (act == MOE_ACT_SILU ? kern.swiglu : kern.geglu)(g, u, n);
  return 0;
}

namespace {

int check_weight(const MoeWeight &w, int64_t rows, int64_t cols) {
  return w.ptr ? check_stack(w.type, 1, rows, cols, w.bytes) : MOE_ERR_SHAPE;
}

// A decode step's optional head: its norm, a [vocab, dim] weight and somewhere for the logits.
int check_head(const MoeHead *head, const float *logits, int64_t dim) {
  if (!head) return 0;
  if (!head->norm || head->vocab <= 0 || !logits) return MOE_ERR_SHAPE;
  return check_weight(head->weight, head->vocab, dim);
}

int check_routing(const MoeRouting &r) {
  const bool groups_ok = r.n_group <= 1 || (r.num_experts % r.n_group == 0 && r.topk_group >= 1 &&
                                            (!r.group_top2 || r.num_experts / r.n_group >= 2));
  if (r.num_experts <= 0 || r.top_k <= 0 || r.top_k > r.num_experts || !groups_ok ||
      (r.scoring != MOE_SCORE_SOFTMAX && r.scoring != MOE_SCORE_SIGMOID))
    return MOE_ERR_SHAPE;
  return 0;
}

}  // namespace

MOE_API int moe_decode_dense(const MoeDenseBlock *blocks, int64_t num_blocks, int64_t dim, int64_t num_seqs, float *x,
                             float *const *k_cache, float *const *v_cache, const int64_t *lengths,
                             const float *const *cos, const float *const *sin, int planes, const MoeHead *head,
                             float *logits) {
  if (!blocks || num_blocks <= 0 || dim <= 0 || num_seqs < 0 || !x || !k_cache || !v_cache || !lengths || !cos ||
      !sin || planes < 1 || planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  if (int c = check_head(head, logits, dim)) return c;
  for (int64_t l = 0; l < num_blocks; ++l) {
    const MoeDenseBlock &b = blocks[l];
    if (b.heads <= 0 || b.kv_heads <= 0 || b.heads % b.kv_heads || b.head_dim <= 0 || b.head_dim % 2 ||
        (b.experts == 0 && b.hidden <= 0) || b.experts < 0 || b.window < 0 || b.rope_set < 0 || !b.attn_norm || !b.ffn_norm || !b.q_norm != !b.k_norm ||
        (b.act != MOE_ACT_SILU && b.act != MOE_ACT_GELU_TANH) || !cos[b.rope_set] || !sin[b.rope_set])
      return MOE_ERR_SHAPE;
    const bool moe = b.experts > 0;
    const int64_t E = b.experts, I = b.expert_hidden;
    const int checks[] = {
        check_weight(b.q, b.heads * b.head_dim, dim),
        check_weight(b.k, b.kv_heads * b.head_dim, dim),
        check_weight(b.v, b.kv_heads * b.head_dim, dim),
        check_weight(b.o, dim, b.heads * b.head_dim),
        moe ? (b.routing.num_experts == E && I > 0 ? check_routing(b.routing) : MOE_ERR_SHAPE)
            : check_weight(b.gate, b.hidden, dim),
        moe ? check_weight(b.router, E, dim) : check_weight(b.up, b.hidden, dim),
        moe ? (b.exp_gate.ptr ? check_stack(b.exp_gate.type, E, I, dim, b.exp_gate.bytes) : MOE_ERR_SHAPE)
            : check_weight(b.down, dim, b.hidden),
        moe && !b.exp_up.ptr ? MOE_ERR_SHAPE : moe ? check_stack(b.exp_up.type, E, I, dim, b.exp_up.bytes) : 0,
        moe && !b.exp_down.ptr ? MOE_ERR_SHAPE : moe ? check_stack(b.exp_down.type, E, dim, I, b.exp_down.bytes) : 0,
    };
    for (int c : checks)
      if (c) return c;
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (lengths[s] < 0) return MOE_ERR_SHAPE;
    for (int64_t l = 0; l < num_blocks; ++l)
      if (!k_cache[s * num_blocks + l] || !v_cache[s * num_blocks + l]) return MOE_ERR_SHAPE;
  }
  if (num_seqs == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  const DecodeArgs args{blocks,  num_blocks, dim, num_seqs, x,      k_cache, v_cache, lengths,
                        cos,     sin,        planes, rt.profiling ? rt.profile : nullptr, head, logits};
  const int isa = moe_isa_active();
  decode_dense(pool_locked(rt), isa, active_kernels(), q_kernels(isa), args, rt.activations, rt.decode, rt.moe);
  return 0;
}

MOE_API int moe_route(const MoeRouting *routing, const float *logits, int64_t num_tokens, int32_t *ids, float *weights) {
  if (!routing || !logits || !ids || !weights || num_tokens < 0) return MOE_ERR_SHAPE;
  if (int c = check_routing(*routing)) return c;
  route(*routing, logits, num_tokens, ids, weights);
  return 0;
}

MOE_API int moe_decode_mla(const MoeMlaBlock *blocks, int64_t num_blocks, int64_t dim, int64_t num_seqs, float *x,
                           float *const *cache, const int64_t *lengths, const float *const *cos,
                           const float *const *sin, int planes, const MoeHead *head, float *logits) {
  if (!blocks || num_blocks <= 0 || dim <= 0 || num_seqs < 0 || !x || !cache || !lengths || !cos || !sin ||
      planes < 1 || planes > kMaxPlanes)
    return MOE_ERR_SHAPE;
  if (int c = check_head(head, logits, dim)) return c;
  for (int64_t l = 0; l < num_blocks; ++l) {
    const MoeMlaBlock &b = blocks[l];
    const int64_t H = b.heads, L = b.kv_lora, N = b.nope_dim, R = b.rope_dim, Vd = b.v_dim;
    if (H <= 0 || L <= 0 || N <= 0 || R <= 0 || R % 2 || Vd <= 0 || b.rope_set < 0 || !b.attn_norm || !b.kv_a_norm ||
        !b.ffn_norm || (b.q_b.ptr && (b.q_lora <= 0 || !b.q_a_norm)) || !cos[b.rope_set] || !sin[b.rope_set])
      return MOE_ERR_SHAPE;
    const int64_t qa_n = b.q_b.ptr ? b.q_lora : H * (N + R);
    int checks[] = {
        check_weight(b.q, qa_n, dim), b.q_b.ptr ? check_weight(b.q_b, H * (N + R), b.q_lora) : 0,
        check_weight(b.kv_a, L + R, dim), check_weight(b.k_b, H * L, N), check_weight(b.v_b, H * Vd, L),
        check_weight(b.o, dim, H * Vd), 0, 0, 0, 0, 0, 0, 0, 0};
    if (geometry(b.k_b.type).block_size <= 1 || geometry(b.v_b.type).block_size <= 1) return MOE_ERR_TYPE;
    if (b.experts == 0) {
      checks[6] = b.hidden > 0 ? check_weight(b.gate, b.hidden, dim) : MOE_ERR_SHAPE;
      checks[7] = check_weight(b.up, b.hidden, dim);
      checks[8] = check_weight(b.down, dim, b.hidden);
    } else {
      const int64_t E = b.experts, I = b.expert_hidden;
      checks[6] = b.routing.num_experts == E && I > 0 && b.shared_hidden >= 0 ? check_routing(b.routing) : MOE_ERR_SHAPE;
      checks[7] = check_weight(b.router, E, dim);
      checks[8] = b.exp_gate.ptr ? check_stack(b.exp_gate.type, E, I, dim, b.exp_gate.bytes) : MOE_ERR_SHAPE;
      checks[9] = b.exp_up.ptr ? check_stack(b.exp_up.type, E, I, dim, b.exp_up.bytes) : MOE_ERR_SHAPE;
      checks[10] = b.exp_down.ptr ? check_stack(b.exp_down.type, E, dim, I, b.exp_down.bytes) : MOE_ERR_SHAPE;
      if (b.shared_hidden) {
        checks[11] = check_weight(b.sh_gate, b.shared_hidden, dim);
        checks[12] = check_weight(b.sh_up, b.shared_hidden, dim);
        checks[13] = check_weight(b.sh_down, dim, b.shared_hidden);
      }
    }
    for (int c : checks)
      if (c) return c;
  }
  for (int64_t s = 0; s < num_seqs * num_blocks; ++s)
    if (!cache[s]) return MOE_ERR_SHAPE;
  for (int64_t s = 0; s < num_seqs; ++s)
    if (lengths[s] < 0) return MOE_ERR_SHAPE;
  if (num_seqs == 0) return 0;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  const MlaArgs args{blocks, num_blocks, dim, num_seqs, x, cache, lengths, cos, sin, planes,
                     rt.profiling ? rt.profile : nullptr, head, logits};
  const int isa = moe_isa_active();
  decode_mla(pool_locked(rt), isa, active_kernels(), q_kernels(isa), args, rt.activations, rt.decode, rt.moe);
  return 0;
}

MOE_API int moe_step_profile(int on, double *out, int n) {
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  for (int i = 0; i < kStepParts; ++i) {
    if (out && i < n) out[i] = rt.profile[i];
    rt.profile[i] = 0;
  }
  rt.profiling = on != 0;
  return kStepParts;
}
