// Expert-major MoE: a counting sort groups (token, slot) pairs by expert, so each expert's
// weights are read once per call however many tokens chose it. Phase A computes gate and up
// for all of an expert's tokens, phase B the down projection by output row block, experts in
// ascending order. Every output has one writer and one summation order: any thread count gives
// the same bits, and a token's result does not depend on the rest of the batch.
//
// With 8-bit activations each sorted pair's input (and later its SwiGLU output) is quantized
// once per activation format into its sorted slot, so an expert's tokens are one contiguous
// slice of quantized rows, handed to the integer row kernel as they are.
#include "moe.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "quants/formats.h"

namespace moe {

namespace {

// One projection's input over the sorted pairs: float rows, or (q8) their quantized slots.
struct ProjInput {
  const float *const *rows;
  const QActView *q;  // null: float activations
};

// Quantized copies of `rows` (count of width k) in the format `type` pairs with; null when the
// layer runs float activations or `type` is a float type.
std::unique_ptr<QActBuffers> quantize_slots(ThreadPool &pool, bool q8, int type, const float *const *rows,
                                            int64_t count, int64_t k) {
  const int kind = q8 ? act_kind_for(type) : -1;
  if (kind < 0) return nullptr;
  auto buf = std::make_unique<QActBuffers>(count, k);
  pool.parallel_for(count, [&](int64_t s) { quantize_act_row(kind, rows[s], s, buf->view); });
  return buf;
}

// rows x k weights against the n pairs from sorted slot s0: y[j * ldy + r].
void project(const IsaKernels &kern, QRowsFn qrows, int type, const uint8_t *w, int64_t row_bytes, int64_t rows,
             int64_t k, const ProjInput &in, int64_t s0, int64_t n, float *y, int64_t ldy) {
  if (in.q)
    qrows(type, w, row_bytes, rows, act_slots(*in.q, s0), n, y, ldy);
  else
    gemm_rows(kern, type, w, row_bytes, rows, k, in.rows + s0, n, y, ldy);
}

}  // namespace

void moe_forward(ThreadPool &pool, const IsaKernels &kern, QRowsFn qrows, const MoeArgs &a) {
  const int64_t T = a.num_tokens, D = a.dim, I = a.hidden, E = a.num_experts, A = a.top_k;
  const Geometry gg = geometry(a.gate_type), gu = geometry(a.up_type), gd = geometry(a.down_type);
  const int64_t gate_row = D / gg.block_size * gg.type_size, up_row = D / gu.block_size * gu.type_size;
  const int64_t down_row = I / gd.block_size * gd.type_size;

  // Counting sort of the T*A pairs by expert (stable: tokens stay in order within an expert).
  std::vector<int64_t> start(E + 1, 0);
  for (int64_t p = 0; p < T * A; ++p) ++start[a.ids[p] + 1];
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<int64_t> pair_of(T * A), fill(start.begin(), start.end() - 1);
  for (int64_t p = 0; p < T * A; ++p) pair_of[fill[a.ids[p]]++] = p;  // sorted slot -> t * A + slot
  std::vector<const float *> x_rows(T * A);
  for (int64_t s = 0; s < T * A; ++s) x_rows[s] = a.x + (pair_of[s] / A) * D;

  const auto xg = quantize_slots(pool, a.q8, a.gate_type, x_rows.data(), T * A, D);
  const bool share = xg && act_kind_for(a.up_type) == act_kind_for(a.gate_type);
  const auto xu = share ? nullptr : quantize_slots(pool, a.q8, a.up_type, x_rows.data(), T * A, D);
  const ProjInput gate_in{x_rows.data(), xg ? &xg->view : nullptr};
  const ProjInput up_in{x_rows.data(), share ? &xg->view : xu ? &xu->view : nullptr};

  // Phase A: tasks are (expert, block of kTileRows hidden rows) over the experts that were hit.
  std::vector<float> g(T * A * I), u(T * A * I);
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t e = 0; e < E; ++e)
    if (start[e + 1] > start[e])
      for (int64_t r = 0; r < I; r += kTileRows) tasks.emplace_back(e, r);
  pool.parallel_for((int64_t)tasks.size(), [&](int64_t i) {
    const auto [e, r0] = tasks[i];
    const int64_t rows = std::min(kTileRows, I - r0), n = start[e + 1] - start[e], s0 = start[e];
    project(kern, qrows, a.gate_type, a.gate + (e * I + r0) * gate_row, gate_row, rows, D, gate_in, s0, n,
            g.data() + s0 * I + r0, I);
    project(kern, qrows, a.up_type, a.up + (e * I + r0) * up_row, up_row, rows, D, up_in, s0, n,
            u.data() + s0 * I + r0, I);
  });
  // SwiGLU in place: h = silu(g) * u, one sorted pair per task.
  pool.parallel_for(T * A, [&](int64_t s) {
    float *gs = g.data() + s * I;
    const float *us = u.data() + s * I;
    for (int64_t j = 0; j < I; ++j) gs[j] = gs[j] / (1.0f + std::exp(-gs[j])) * us[j];
  });
  std::vector<const float *> h_rows(T * A);
  for (int64_t s = 0; s < T * A; ++s) h_rows[s] = g.data() + s * I;
  const auto hq = quantize_slots(pool, a.q8, a.down_type, h_rows.data(), T * A, I);
  const ProjInput down_in{h_rows.data(), hq ? &hq->view : nullptr};

  // Phase B: each task owns kTileRows output columns of every token and adds the experts'
  // contributions in ascending expert order.
  std::fill(a.out, a.out + T * D, 0.0f);
  const int64_t blocks = (D + kTileRows - 1) / kTileRows;
  pool.parallel_for(blocks, [&](int64_t b) {
    const int64_t d0 = b * kTileRows, rows = std::min(kTileRows, D - d0);
    thread_local std::vector<float> y;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = start[e + 1] - start[e], s0 = start[e];
      if (n == 0) continue;
      if ((int64_t)y.size() < n * kTileRows) y.resize(n * kTileRows);
      project(kern, qrows, a.down_type, a.down + (e * D + d0) * down_row, down_row, rows, I, down_in, s0, n,
              y.data(), kTileRows);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t p = pair_of[s0 + j], t = p / A;
        const float w = a.weights[p];
        float *o = a.out + t * D + d0;
        for (int64_t r = 0; r < rows; ++r) o[r] += y[j * kTileRows + r] * w;
      }
    }
  });
}

}  // namespace moe
