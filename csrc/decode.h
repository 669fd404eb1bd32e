// A decode step through a stack of dense transformer blocks in one call: for each sequence's one
// new token, every block's norms, projections, rope, cache write, attention and feed-forward,
// with the kernels and in the order the Python layers call them, so the same bits.
#pragma once
#include <stdint.h>

#include <vector>

#include "api.h"
#include "kernels_isa.h"
#include "moe.h"
#include "qmatmul.h"
#include "threadpool.h"

namespace moe {

// Where a native step's time goes (moe_step_profile, bench/profile_decode.py): seconds per part,
// added to by every step while profiling is on. Parts follow the kernels, not the layers: a
// projection's time is its quantization plus its matmul.
enum StepPart {
  kPartNorms,      // the blocks' RMSNorms and residual adds
  kPartAttnProj,   // q, k, v (or MLA's q, q_b, kv_a) and the output projection
  kPartMlaMaps,    // MLA's per-head k_b and v_b maps
  kPartAttention,  // biases, q/k norms, rope, the cache write and attention over the cache
  kPartRouter,     // router logits and routing
  kPartExperts,    // the fused MoE: routed and shared experts
  kPartFfn,        // dense feed-forwards
  kPartHead,       // the final norm and the LM head
  kStepParts
};

// Lap times into acc[part] (nothing when acc is null): each lap() charges the time since the last.
class PartClock {
 public:
  explicit PartClock(double *acc);
  void lap(StepPart part);

 private:
  double *acc_;
  int64_t last_ns_ = 0;
};

struct DecodeArgs {
  const MoeDenseBlock *blocks;
  int64_t num_blocks, dim, num_seqs;
  float *x;                      // [num_seqs, dim]: the first block's input, then the last one's output
  float *const *k_cache;         // [num_seqs * num_blocks]: sequence s, block l at s * num_blocks + l
  float *const *v_cache;         //   each [capacity, kv_heads, head_dim]
  const int64_t *lengths;        // [num_seqs]: positions already cached; the new token's position
  const float *const *cos;       // per rope set: [num_seqs, head_dim / 2]
  const float *const *sin;
  int planes;                    // integer activation planes (1 or 2)
  double *profile = nullptr;     // [kStepParts] seconds, added to; null: not profiling
  const MoeHead *head = nullptr;  // with logits [num_seqs, head->vocab]: run after the last block
  float *logits = nullptr;
};

// Buffers a step reuses (one per runtime: calls run one at a time).
struct DecodeWorkspace {
  std::vector<float> h, q, k, v, qr, kr, att, o, g, u, qa, kv, lat, logits, rw;
  std::vector<int32_t> ids;
};

void decode_dense(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, const DecodeArgs &a,
                  QActBuffers *scratch, DecodeWorkspace &ws, MoeWorkspace &moe_ws);

// The MLA blocks' step (moe_decode_mla): a.k_cache holds each block's joint latent cache,
// a.v_cache is unused.
struct MlaArgs {
  const MoeMlaBlock *blocks;
  int64_t num_blocks, dim, num_seqs;
  float *x;
  float *const *cache;
  const int64_t *lengths;
  const float *const *cos, *const *sin;
  int planes;
  double *profile = nullptr;  // as DecodeArgs::profile
  const MoeHead *head = nullptr;  // as DecodeArgs::head
  float *logits = nullptr;
};

void decode_mla(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, const MlaArgs &a,
                QActBuffers *scratch, DecodeWorkspace &ws, MoeWorkspace &moe_ws);

}  // namespace moe
