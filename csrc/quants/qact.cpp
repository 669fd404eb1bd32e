// Activation formats and buffers (see qact.h); the row quantizer itself is compiled per ISA
// (qact_impl.h), so its rounding vectorizes.
#include "qact.h"

#include "formats.h"

namespace moe {

int act_kind_for(int type) {
  switch (type) {
    case kQ4_0: case kQ5_0: case kQ8_0: case kIQ4_NL: return kActQ8_0;
    case kQ4_1: case kQ5_1: return kActQ8_1;
    case kQ2_K: case kQ3_K: case kQ4_K: case kQ5_K: case kQ6_K: case kIQ2_XXS: case kIQ2_XS: case kIQ3_XXS:
    case kIQ1_S: case kIQ1_M: case kIQ4_XS: return kActQ8_K;
    default: return -1;
  }
}

QActBuffers::QActBuffers(int64_t num_tokens, int64_t k)
    : q(num_tokens * act_chunks(k) * kChunkQ), qi(q.size()), bsum(num_tokens * act_chunks(k) * kSubQ),
      bias(bsum.size()), scale(bsum.size()), asum(bsum.size()),
      view{k, act_chunks(k), q.data(), qi.data(), bsum.data(), bias.data(), scale.data(), asum.data()} {}

}  // namespace moe
