// The fused MoE layer: routed experts (and shared ones, as experts every token visits).
#pragma once
#include <stdint.h>

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
  bool q8;                // 8-bit activations for the quantized projections (else float)
  // Shared experts (null when none): one SwiGLU of width shared_hidden every token adds.
  const uint8_t *shared_gate = nullptr, *shared_up = nullptr, *shared_down = nullptr;  // [Is, D], [Is, D], [D, Is]
  int shared_gate_type = 0, shared_up_type = 0, shared_down_type = 0;
  int64_t shared_hidden = 0;
};

void moe_forward(ThreadPool &pool, const IsaKernels &kern, const QKernels &qk, const MoeArgs &a);

}  // namespace moe
