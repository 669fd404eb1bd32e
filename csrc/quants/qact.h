// Activations quantized to 8 bits once per input, in the layout the integer dot products read.
//
// Pairing as llama.cpp: 32-weight block types (Q4_0..Q8_0, IQ4_NL) take Q8_0 activations (one
// scale per 32, round(x * 127 / amax)); the 256-weight K and IQ types take Q8_K (one scale per
// 256, iscale = -127 / (the signed value of largest magnitude)). Every block also keeps the
// integer sum of each 16 quants (Q8_K's bsums; for the 32-blocks this is Q8_1's sum, so Q4_1
// and Q5_1 use the same buffer). Rounding is to nearest, ties to even (numpy's rint), so the
// numpy reference in backend/kernels.py reproduces the quants exactly.
//
// Layout per token: K padded to chunks of 256 (zeros), quants in natural order, so weight
// unpacking stays contiguous and vectorizes; the SIMD dot products regroup lanes per 16.
#pragma once
#include <stdint.h>

namespace moe {

constexpr int kChunkQ = 256;  // weights per chunk of the integer path
constexpr int kSubQ = 16;     // sub-blocks per chunk

enum ActKind : int { kActQ8_0 = 0, kActQ8_K = 1 };

// Which activation format a weight type pairs with; -1 for float weights.
int act_kind_for(int ggml_type);

struct QActView {
  int64_t k = 0, chunks = 0;
  int8_t *q = nullptr;      // [T][chunks * 256], zero padded
  int32_t *bsum = nullptr;  // [T][chunks * 16]
  float *scale = nullptr;   // [T][chunks * 16]: the activation block scale of each sub-block
};

inline int64_t act_chunks(int64_t k) { return (k + kChunkQ - 1) / kChunkQ; }

// Quantizes one token row x[k] into token slot t of the view.
void quantize_act_row(int kind, const float *x, int64_t t, const QActView &v);

}  // namespace moe
