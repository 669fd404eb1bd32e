// Expert routing (api.h's moe_route): scores, group limits, top-k and weights of each token.
#pragma once
#include <stdint.h>

#include "api.h"

namespace moe {

void route(const MoeRouting &r, const float *logits, int64_t num_tokens, int32_t *ids, float *weights);

}  // namespace moe
