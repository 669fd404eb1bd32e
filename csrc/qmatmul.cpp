// Integer-activation matmul driver: quantize the activations once, then rows in tasks of
// rows_per_task on the pool (each task owns its outputs, so threads never change results).
#include "qmatmul.h"

#include <algorithm>
#include <vector>

#include "quants/formats.h"
#include "threadpool.h"

namespace moe {

QKernels q_kernels(int isa) {
  if (isa == 3) return {amx::qrows_matmul, avx512::quantize_act_row};
  if (isa == 2) return {avx512::qrows_matmul, avx512::quantize_act_row};
  if (isa == 1) return {avx2::qrows_matmul, avx2::quantize_act_row};
  return {scalar::qrows_matmul, scalar::quantize_act_row};
}

QActView act_slots(const QActView &v, int64_t s0) {
  const int64_t n16 = v.chunks * kSubQ;
  const int64_t nq = s0 * v.chunks * kChunkQ;
  return {v.k, v.chunks, v.q + nq, v.bsum + s0 * n16, v.scale + s0 * n16, v.asum + s0 * n16, v.packed + s0 * v.chunks,
          v.bpairs16 + s0 * v.chunks * kPairs16, v.bpairs32 + s0 * v.chunks * kPairs32};
}

void qrows_planes(QRowsFn rows_fn, int planes, int type, const uint8_t *w, int64_t row_bytes, int64_t rows,
                  const QActView &a, int64_t num_tokens, float *y, int64_t ldy) {
  if (planes == 1) return rows_fn(type, w, row_bytes, rows, a, num_tokens, y, ldy);
  thread_local std::vector<float> part;  // [planes * num_tokens, rows]
  part.resize((size_t)(planes * num_tokens * rows));
  rows_fn(type, w, row_bytes, rows, a, planes * num_tokens, part.data(), rows);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float *first = part.data() + planes * t * rows;
    for (int64_t r = 0; r < rows; ++r) {
      float sum = first[r];
      for (int p = 1; p < planes; ++p) sum += first[p * rows + r];
      y[t * ldy + r] = sum;
    }
  }
}

void qmatmul(ThreadPool &pool, int isa, int planes, int type, const uint8_t *w, int64_t heads, int64_t n, int64_t k,
             const float *x, int64_t num_tokens, float *y, QActBuffers *scratch) {
  const Geometry g = geometry(type);
  const int64_t row_bytes = k / g.block_size * g.type_size, T = num_tokens;
  // Token slot h * T + t holds token t's input to head h, so each head's tokens are contiguous.
  const int kind = act_kind_for(type);
  const QActView &a = scratch[kind].resize(planes * T * heads, k);
  const QKernels kern = q_kernels(isa);
  pool.parallel_for(T * heads, [&](int64_t s) {
    quantize_planes(kern.quantize, kind, planes, x + ((s % T) * heads + s / T) * k, s, a);
  });
  const QRowsFn rows_fn = kern.rows;
  const int64_t task_rows = rows_per_task(n * heads, pool.size()), per_head = (n + task_rows - 1) / task_rows;
  pool.parallel_for(heads * per_head, [&](int64_t task) {
    const int64_t h = task / per_head, row0 = task % per_head * task_rows, rows = std::min(task_rows, n - row0);
    qrows_planes(rows_fn, planes, type, w + (h * n + row0) * row_bytes, row_bytes, rows, act_slots(a, planes * h * T),
                 T, y + h * n + row0, heads * n);
  });
}

void qmatmul_many(ThreadPool &pool, int isa, int planes, int count, const int *types, const uint8_t *const *w, const int64_t *n,
                  int64_t k, const float *x, int64_t num_tokens, float *const *ys, QActBuffers *scratch) {
  const QKernels kern = q_kernels(isa);
  bool done[3] = {};  // one quantization per activation format
  for (int i = 0; i < count; ++i) {
    const int kind = act_kind_for(types[i]);
    if (done[kind]) continue;
    done[kind] = true;
    const QActView &a = scratch[kind].resize(planes * num_tokens, k);
    pool.parallel_for(num_tokens, [&](int64_t t) { quantize_planes(kern.quantize, kind, planes, x + t * k, t, a); });
  }
  int64_t total_rows = 0;
  for (int i = 0; i < count; ++i) total_rows += n[i];
  const int64_t task_rows = rows_per_task(total_rows, pool.size());
  struct Task { int weight; int64_t row0; };
  std::vector<Task> tasks;
  for (int i = 0; i < count; ++i)
    for (int64_t r = 0; r < n[i]; r += task_rows) tasks.push_back({i, r});
  const QRowsFn rows_fn = kern.rows;
  pool.parallel_for((int64_t)tasks.size(), [&](int64_t j) {
    const int i = tasks[j].weight;
    const Geometry g = geometry(types[i]);
    const int64_t row_bytes = k / g.block_size * g.type_size, row0 = tasks[j].row0, rows = std::min(task_rows, n[i] - row0);
    qrows_planes(rows_fn, planes, types[i], w[i] + row0 * row_bytes, row_bytes, rows,
                 scratch[act_kind_for(types[i])].view, num_tokens, ys[i] + row0, n[i]);
  });
}

}  // namespace moe
