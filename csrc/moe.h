// The fused MoE layer: routed experts (and shared ones, as experts every token visits).
#pragma once
#include <stdint.h>

#include <vector>

#include "kernels_isa.h"
#include "qmatmul.h"
#include "threadpool.h"

namespace moe {

struct MoeArgs {
  int64_t num_tokens, dim, hidden, num_experts, top_k;
  const float *x;         // [T, D]
  const int32_t *ids;     // [T, A] expert of each (token, slot)
  const float *weights;   // [T, A] its routing weight
  const uint8_t *gate;    // [E, I, D] GGUF blocks
  const uint8_t *up;      // [E, I, D]
  const uint8_t *down;    // [E, D, I]
  int gate_type, up_type, down_type;
  float *out;             // [T, D]
  int planes;             // 8-bit activation planes of the quantized projections (qact.h); 0: float
  // Shared experts (null when none): one SwiGLU of width shared_hidden every token adds.
  const uint8_t *shared_gate = nullptr, *shared_up = nullptr, *shared_down = nullptr;  // [Is, D], [Is, D], [D, Is]
  int shared_gate_type = 0, shared_up_type = 0, shared_down_type = 0;
  int64_t shared_hidden = 0;
};

// The buffers of one group of experts (routed, or shared), kept from call to call: a 512-token
// V2-Lite layer's gate/up outputs and quantized inputs are ~60 MB, and mapping them afresh each
// call cost 12 % of its time in page faults.
struct MoeBuffers {
  std::vector<int64_t> start, token;   // expert e's slots are [start[e], start[e + 1]); slot -> token
  std::vector<float> weight, g, u;     // slot -> routing weight; [slots, hidden] gate and up
  std::vector<const float *> x_rows, h_rows;
  QActBuffers xg, xu, hq, tokens;      // quantized gate / up / down inputs; tokens: x quantized once
};

// What moe_forward reuses between calls (one per runtime: calls run one at a time).
struct MoeWorkspace {
  MoeBuffers routed, shared;
};

void moe_forward(ThreadPool &pool, const IsaKernels &kern, const QKernels &qk, const MoeArgs &a, MoeWorkspace &ws);

}  // namespace moe
