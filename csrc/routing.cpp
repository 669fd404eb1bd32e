// Expert routing in one TU without ISA flags: libm's expf and plain float operations in one
// order, so the Python layers (through moe_route) and the native decode step pick the same
// experts with the same weights on every ISA.
#include "routing.h"

#include <math.h>

#include <vector>

namespace moe {

namespace {

// Index of the largest of v[0..n) not yet taken, the lower index on ties; -1 if none is left.
int64_t best_left(const float *v, const std::vector<bool> &taken, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i)
    if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
  return best;
}

}  // namespace

void route(const MoeRouting &r, const float *logits, int64_t num_tokens, int32_t *ids, float *weights) {
  const int64_t E = r.num_experts, A = r.top_k, G = r.n_group, per = G > 1 ? E / G : E;
  std::vector<float> scores(E), choice(E), group(G > 1 ? G : 1);
  std::vector<bool> taken(E), kept(G > 1 ? G : 1);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float *l = logits + t * E;
    if (r.scoring == MOE_SCORE_SOFTMAX) {
      float m = l[0], sum = 0.0f;
      for (int64_t i = 1; i < E; ++i) m = l[i] > m ? l[i] : m;
      for (int64_t i = 0; i < E; ++i) sum += (scores[i] = expf(l[i] - m));
      for (int64_t i = 0; i < E; ++i) scores[i] = scores[i] / sum;
    } else {
      for (int64_t i = 0; i < E; ++i) scores[i] = 1.0f / (1.0f + expf(-l[i]));
    }
    for (int64_t i = 0; i < E; ++i) choice[i] = r.bias ? scores[i] + r.bias[i] : scores[i];
    if (G > 1 && r.topk_group < G) {  // only the best topk_group groups compete
      for (int64_t g = 0; g < G; ++g) {
        const float *c = choice.data() + g * per;
        int64_t a = 0;
        for (int64_t i = 1; i < per; ++i) a = c[i] > c[a] ? i : a;
        if (!r.group_top2) {
          group[g] = c[a];
          continue;
        }
        int64_t b = a == 0 ? 1 : 0;
        for (int64_t i = 0; i < per; ++i) b = i != a && c[i] > c[b] ? i : b;
        group[g] = c[a] + c[b];
      }
      std::vector<bool> none(G, false);
      kept.assign(G, false);
      for (int64_t k = 0; k < r.topk_group; ++k) {
        const int64_t g = best_left(group.data(), none, G);
        kept[g] = none[g] = true;
      }
      for (int64_t i = 0; i < E; ++i)
        if (!kept[i / per]) choice[i] = -INFINITY;
    }
    taken.assign(E, false);
    float sum = 0.0f;
    for (int64_t k = 0; k < A; ++k) {
      const int64_t e = best_left(choice.data(), taken, E);
      taken[e] = true;
      ids[t * A + k] = (int32_t)e;
      weights[t * A + k] = scores[e];
      sum += scores[e];
    }
    for (int64_t k = 0; k < A; ++k) {
      float w = weights[t * A + k];
      if (r.norm_topk) w = w / (sum + r.norm_eps);
      weights[t * A + k] = w * r.scale;
    }
  }
}

}  // namespace moe
