// Integer-activation matmul driver: quantize the activations once, then rows in tasks of
// kQRows on the pool (each task owns its outputs, so threads never change results).
#include "qmatmul.h"

#include <algorithm>
#include <vector>

#include "quants/formats.h"
#include "threadpool.h"

namespace moe {

constexpr int64_t kQRows = 16;

QRowsFn qrows_kernel(int isa) {
  return isa == 2 ? avx512::qrows_matmul : isa == 1 ? avx2::qrows_matmul : scalar::qrows_matmul;
}

QActView act_slots(const QActView &v, int64_t s0) {
  const int64_t n16 = v.chunks * kSubQ;
  return {v.k, v.chunks, v.q + s0 * v.chunks * kChunkQ, v.bsum + s0 * n16, v.scale + s0 * n16, v.asum + s0 * n16};
}

void qmatmul(ThreadPool &pool, int isa, int type, const uint8_t *w, int64_t heads, int64_t n, int64_t k,
             const float *x, int64_t num_tokens, float *y) {
  const Geometry g = geometry(type);
  const int64_t row_bytes = k / g.block_size * g.type_size, T = num_tokens;
  // Slot h * T + t holds token t's input to head h, so each head's tokens are contiguous.
  const QActBuffers buffers(T * heads, k);
  const QActView &a = buffers.view;
  const int kind = act_kind_for(type);
  pool.parallel_for(T * heads, [&](int64_t s) { quantize_act_row(kind, x + ((s % T) * heads + s / T) * k, s, a); });
  const QRowsFn rows_fn = qrows_kernel(isa);
  const int64_t per_head = (n + kQRows - 1) / kQRows;
  pool.parallel_for(heads * per_head, [&](int64_t task) {
    const int64_t h = task / per_head, row0 = task % per_head * kQRows, rows = std::min(kQRows, n - row0);
    rows_fn(type, w + (h * n + row0) * row_bytes, row_bytes, rows, act_slots(a, h * T), T, y + h * n + row0,
            heads * n);
  });
}

}  // namespace moe
