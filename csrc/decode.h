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
};

void decode_mla(ThreadPool &pool, int isa, const IsaKernels &kern, const QKernels &qk, const MlaArgs &a,
                QActBuffers *scratch, DecodeWorkspace &ws, MoeWorkspace &moe_ws);

}  // namespace moe
