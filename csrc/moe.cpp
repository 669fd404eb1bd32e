// Expert-major MoE: a counting sort groups (token, slot) pairs by expert, so each expert's
// weights are read once per call however many tokens chose it; shared experts join as one more
// expert every token visits. Phase A computes gate and up for all of an expert's tokens, phase
// B the down projection by output row block, experts in ascending order, shared ones last.
// Every output has one writer and one summation order: any thread count gives the same bits,
// and a token's result does not depend on the rest of the batch.
//
// With 8-bit activations each sorted pair's input (and later its SwiGLU output) is quantized
// once per activation format into its sorted slot (its planes' slots, qact.h), so an expert's
// tokens are one contiguous slice of quantized rows, handed to the integer row kernel as they are.
#include "moe.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "quants/formats.h"

namespace moe {

namespace {

// One projection's input over the sorted pairs: float rows, or their quantized slots.
struct ProjInput {
  const float *const *rows;
  const QActView *q;  // null: float activations
  int planes;         // of q
};

// The quantized copies of `rows` (count of width k) in the format `type` pairs with, in buf;
// null when the layer runs float activations (planes 0) or `type` is a float type.
const QActView *quantize_rows(ThreadPool &pool, QuantizeRowFn quantize, int planes, int type,
                              const float *const *rows, int64_t count, int64_t k, QActBuffers &buf) {
  const int kind = planes ? act_kind_for(type) : -1;
  if (kind < 0) return nullptr;
  const QActView &v = buf.resize(planes * count, k);
  pool.parallel_for(count, [&](int64_t s) { quantize_planes(quantize, kind, planes, rows[s], s, v); });
  return &v;
}

// rows x k weights against the n pairs from sorted slot s0: y[j * ldy + r].
void project(const IsaKernels &kern, QRowsFn qrows, int type, const uint8_t *w, int64_t row_bytes, int64_t rows,
             int64_t k, const ProjInput &in, int64_t s0, int64_t n, float *y, int64_t ldy) {
  if (in.q)
    qrows_planes(qrows, in.planes, type, w, row_bytes, rows, act_slots(*in.q, in.planes * s0), n, y, ldy);
  else
    gemm_rows(kern, type, w, row_bytes, rows, k, in.rows + s0, n, y, ldy);
}

// SwiGLU experts of one shape with their (token, slot) pairs sorted into contiguous slots, so
// an expert's tokens are one slice: the routed experts (a counting sort by expert id), or the
// shared experts as one pseudo-expert that every token visits with weight 1.
struct Group {
  const uint8_t *gate, *up, *down;
  int gate_type, up_type, down_type;
  int64_t experts, hidden, gate_row, up_row, down_row;
  MoeBuffers &buf;
  std::vector<int64_t> &start = buf.start;  // expert e's slots are [start[e], start[e + 1])
  std::vector<int64_t> &token = buf.token;  // slot -> token
  std::vector<float> &weight = buf.weight;  // slot -> its routing weight
  std::vector<float> &g = buf.g, &u = buf.u;  // [slots, hidden]: gate, then h = silu(gate) * up in place
  ProjInput gate_in{}, up_in{}, down_in{};

  Group(const uint8_t *g_, const uint8_t *u_, const uint8_t *d_, int gt, int ut, int dt, int64_t E, int64_t I,
        int64_t D, MoeBuffers &b)
      : gate(g_), up(u_), down(d_), gate_type(gt), up_type(ut), down_type(dt), experts(E), hidden(I),
        gate_row(D / geometry(gt).block_size * geometry(gt).type_size),
        up_row(D / geometry(ut).block_size * geometry(ut).type_size),
        down_row(I / geometry(dt).block_size * geometry(dt).type_size), buf(b) {}

  int64_t slots() const { return (int64_t)token.size(); }

  // Inputs gathered in slot order and, for q8, quantized once per format: each of the
  // num_tokens rows once, then copied to its slots (a token has top_k of them).
  void gather(ThreadPool &pool, QuantizeRowFn quantize, int planes, const float *x, int64_t num_tokens, int64_t D) {
    buf.x_rows.resize(slots());
    for (int64_t s = 0; s < slots(); ++s) buf.x_rows[s] = x + token[s] * D;
    std::vector<const float *> rows(num_tokens);
    for (int64_t t = 0; t < num_tokens; ++t) rows[t] = x + t * D;
    auto slotted = [&](int type, QActBuffers &out) -> const QActView * {
      if (!quantize_rows(pool, quantize, planes, type, rows.data(), num_tokens, D, buf.tokens)) return nullptr;
      const QActView &v = out.resize(planes * slots(), D);
      pool.parallel_for(slots(), [&](int64_t s) {
        for (int p = 0; p < planes; ++p) out.copy_slot(buf.tokens, planes * token[s] + p, planes * s + p);
      });
      return &v;
    };
    const QActView *xg = slotted(gate_type, buf.xg);
    const bool same = xg && act_kind_for(up_type) == act_kind_for(gate_type);
    const QActView *xu = same ? xg : slotted(up_type, buf.xu);
    gate_in = {buf.x_rows.data(), xg, planes};
    up_in = {buf.x_rows.data(), xu, planes};
    g.resize(slots() * hidden);
    u.resize(slots() * hidden);
  }

  void gate_up(const IsaKernels &kern, QRowsFn qrows, int64_t e, int64_t r0, int64_t block, int64_t D) {
    const int64_t rows = std::min(block, hidden - r0), n = start[e + 1] - start[e], s0 = start[e];
    project(kern, qrows, gate_type, gate + (e * hidden + r0) * gate_row, gate_row, rows, D, gate_in, s0, n,
            g.data() + s0 * hidden + r0, hidden);
    project(kern, qrows, up_type, up + (e * hidden + r0) * up_row, up_row, rows, D, up_in, s0, n,
            u.data() + s0 * hidden + r0, hidden);
  }

  void swiglu(const IsaKernels &kern, int64_t s) { kern.swiglu(g.data() + s * hidden, u.data() + s * hidden, hidden); }

  void quantize_hidden(ThreadPool &pool, QuantizeRowFn quantize, int planes) {
    buf.h_rows.resize(slots());
    for (int64_t s = 0; s < slots(); ++s) buf.h_rows[s] = g.data() + s * hidden;
    down_in = {buf.h_rows.data(),
               quantize_rows(pool, quantize, planes, down_type, buf.h_rows.data(), slots(), hidden, buf.hq), planes};
  }

  // Output rows [d0, d0 + rows) of every expert, added to its tokens in ascending expert order.
  void down_block(const IsaKernels &kern, QRowsFn qrows, int64_t d0, int64_t rows, int64_t D, float *out,
                  std::vector<float> &y) const {
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t n = start[e + 1] - start[e], s0 = start[e];
      if (n == 0) continue;
      if ((int64_t)y.size() < n * rows) y.resize(n * rows);
      project(kern, qrows, down_type, down + (e * D + d0) * down_row, down_row, rows, hidden, down_in, s0, n,
              y.data(), rows);
      for (int64_t j = 0; j < n; ++j) {
        const float w = weight[s0 + j];
        float *o = out + token[s0 + j] * D + d0;
        kern.scale_add(o, y.data() + j * rows, w, rows);
      }
    }
  }
};

}  // namespace

void moe_forward(ThreadPool &pool, const IsaKernels &kern, const QKernels &qk, const MoeArgs &a, MoeWorkspace &ws) {
  const int64_t T = a.num_tokens, D = a.dim, E = a.num_experts, A = a.top_k;
  std::vector<Group> groups;
  groups.reserve(2);

  // Routed: a counting sort of the T*A pairs by expert (stable: tokens stay in order).
  Group &routed =
      groups.emplace_back(a.gate, a.up, a.down, a.gate_type, a.up_type, a.down_type, E, a.hidden, D, ws.routed);
  routed.start.assign(E + 1, 0);
  for (int64_t p = 0; p < T * A; ++p) ++routed.start[a.ids[p] + 1];
  for (int64_t e = 0; e < E; ++e) routed.start[e + 1] += routed.start[e];
  routed.token.resize(T * A);
  routed.weight.resize(T * A);
  std::vector<int64_t> fill(routed.start.begin(), routed.start.end() - 1);
  for (int64_t p = 0; p < T * A; ++p) {
    const int64_t s = fill[a.ids[p]]++;
    routed.token[s] = p / A;
    routed.weight[s] = a.weights[p];
  }
  // Shared: one pseudo-expert over all tokens in order, weight 1 (an exact multiply).
  if (a.shared_gate) {
    Group &shared = groups.emplace_back(a.shared_gate, a.shared_up, a.shared_down, a.shared_gate_type,
                                        a.shared_up_type, a.shared_down_type, 1, a.shared_hidden, D, ws.shared);
    shared.start = {0, T};
    shared.token.resize(T);
    for (int64_t t = 0; t < T; ++t) shared.token[t] = t;
    shared.weight.assign(T, 1.0f);
  }
  for (Group &g : groups) g.gather(pool, qk.quantize, a.planes, a.x, T, D);

  // Phase A: tasks are (group, expert, block of hidden rows) over the experts hit, the blocks
  // as long as rows_per_task makes them over all the rows to read.
  int64_t hit_rows = 0;
  for (const Group &g : groups)
    for (int64_t e = 0; e < g.experts; ++e) hit_rows += g.start[e + 1] > g.start[e] ? g.hidden : 0;
  const int64_t a_block = rows_per_task(hit_rows, pool.size());
  struct Task { int64_t group, expert, row; };
  std::vector<Task> tasks;
  for (int64_t gi = 0; gi < (int64_t)groups.size(); ++gi)
    for (int64_t e = 0; e < groups[gi].experts; ++e)
      if (groups[gi].start[e + 1] > groups[gi].start[e])
        for (int64_t r = 0; r < groups[gi].hidden; r += a_block) tasks.push_back({gi, e, r});
  pool.parallel_for((int64_t)tasks.size(), [&](int64_t i) {
    groups[tasks[i].group].gate_up(kern, qk.rows, tasks[i].expert, tasks[i].row, a_block, D);
  });
  for (Group &g : groups) {
    pool.parallel_for(g.slots(), [&](int64_t s) { g.swiglu(kern, s); });
    g.quantize_hidden(pool, qk.quantize, a.planes);
  }

  // Phase B: each task owns a block of output columns of every token and adds the routed
  // experts' contributions in ascending expert order, then the shared experts'.
  std::fill(a.out, a.out + T * D, 0.0f);
  const int64_t b_block = rows_per_task(D, pool.size());
  pool.parallel_for((D + b_block - 1) / b_block, [&](int64_t b) {
    const int64_t d0 = b * b_block, rows = std::min(b_block, D - d0);
    thread_local std::vector<float> y;
    for (const Group &g : groups) g.down_block(kern, qk.rows, d0, rows, D, a.out, y);
  });
}

}  // namespace moe
