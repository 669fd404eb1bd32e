// Activations quantized to 8 bits once per input, in the layout the integer dot products read.
//
// Pairing and arithmetic as llama.cpp's x86 code, so our logits follow its rounding: Q4_0, Q5_0,
// Q8_0 and IQ4_NL take Q8_0 activations (one scale per 32: q = rint(x * 127 / amax), scale
// stored as fp16 (amax / 127)); Q4_1 and Q5_1 take Q8_1 (the same, plus fp16(d * sum of the 32
// quants), which multiplies the weights' offset); the 256-weight K and IQ types take Q8_K (one
// float scale per 256, iscale = -127 / (the signed value of largest magnitude)). Rounding is to
// nearest, ties to even (numpy's rint and astype(float16)), so the numpy reference in
// backend/kernels.py reproduces every quant and scale exactly.
//
// Layout per token: K padded to chunks of 256 (zeros), quants in natural order, so weight
// unpacking stays contiguous and vectorizes; the AVX-512 quantizer adds a packed copy
// (PackedChunk) for its kernels, the only ones that read it.
#pragma once
#include <stdint.h>

#include <vector>

namespace moe {

constexpr int kChunkQ = 256;  // weights per chunk of the integer path
constexpr int kSubQ = 16;     // sub-blocks per chunk

enum ActKind : int { kActQ8_0 = 0, kActQ8_K = 1, kActQ8_1 = 2 };

// Which activation format a weight type pairs with; -1 for float weights.
int act_kind_for(int ggml_type);

// One token's activations over one chunk as the AVX-512 kernels read them, in one place (six
// cache lines): the quants with the chunk's 16 sub-blocks interleaved by 4 bytes (byte 64 p +
// 4 s + j is natural byte 16 s + 4 p + j: a 32-bit SIMD lane then holds one sub-block, and the
// four dot products of a chunk, p = 0..3, sum it whole with no horizontal reduction), -128 times
// each sub-block's sum (what weights carried as int8 + 128, dpbusd's unsigned operand, add to a
// sub-block's dot product), and the scales. Kept apart, these rows started at equal offsets
// modulo 4 KB, and the GEMM's loads crowded a few L1 sets out of their ways. The asums, read by
// the types with offsets alone, stay in their own array: eight tokens of a 4096-wide row then
// still fit L1 (48 KB) for the few-token path.
struct alignas(64) PackedChunk {
  int8_t qi[kChunkQ];
  int32_t bias[kSubQ];
  float scale[kSubQ];
};

// Per token and chunk, Q8_K alone: its sub-block sums in int16 pairs for the super-block
// kernels' pair multiplies (madd): (sums of 16-weight sub-blocks 2 i, 2 i + 1) for i < 8, and
// (sums of 32-weight sub-blocks 2 i, 2 i + 1) for i < 4 (|sum| <= 32 * 127 fits int16).
constexpr int kPairs16 = 8, kPairs32 = 4;

struct QActView {
  int64_t k = 0, chunks = 0;
  int8_t *q = nullptr;      // [T][chunks * 256], zero padded
  int32_t *bsum = nullptr;  // [T][chunks * 16]: integer sum of each sub-block's quants
  float *scale = nullptr;   // [T][chunks * 16]: the activation block scale of each sub-block
  // [T][chunks * 16]: what a legacy weight offset (w = ws * q + wo) multiplies: Q8_1's fp16
  // block sum in the block's first sub-block and 0 in the second; zeros for Q8_0 and Q8_K (the
  // super-block kernels take their mins against bsum, in integers).
  float *asum = nullptr;
  PackedChunk *packed = nullptr;  // [T][chunks]: filled by the AVX-512 quantizer alone
  int32_t *bpairs16 = nullptr;    // [T][chunks][kPairs16]: the AVX-512 quantizer, Q8_K alone
  int32_t *bpairs32 = nullptr;    // [T][chunks][kPairs32]: the same
};

// The activation buffers of T tokens of width k, owned. resize keeps the capacity, so a
// buffer reused from call to call maps no fresh pages.
struct QActBuffers {
  std::vector<int8_t> q;
  std::vector<int32_t> bsum;
  std::vector<float> scale, asum;
  std::vector<PackedChunk> packed;
  std::vector<int32_t> bpairs16, bpairs32;
  QActView view;
  QActBuffers() = default;
  QActBuffers(int64_t num_tokens, int64_t k) { resize(num_tokens, k); }
  QActBuffers(const QActBuffers &) = delete;  // view points into the vectors
  QActBuffers &operator=(const QActBuffers &) = delete;
  const QActView &resize(int64_t num_tokens, int64_t k);
  // Copies token slot `from` of `src` (the same width) into slot `to`.
  void copy_slot(const QActBuffers &src, int64_t from, int64_t to);
};

inline int64_t act_chunks(int64_t k) { return (k + kChunkQ - 1) / kChunkQ; }

// Natural position of interleaved byte i of a chunk (see PackedChunk::qi).
inline int interleaved_source(int i) { return 16 * ((i / 4) % 16) + 4 * (i / 64) + i % 4; }

// Quantizes one token row x[k] into token slot t of the view (one per ISA: qmatmul.h's
// QKernels::quantize).
using QuantizeRowFn = void (*)(int kind, const float *x, int64_t t, const QActView &v);

// Activation planes. One plane is llama.cpp's 8-bit activations. Two planes add the residual
// of the first, x - scale * q in float32, quantized the same way into the next slot: token t
// takes slots 2 t and 2 t + 1, so a slice of tokens stays one slice of slots, and the integer
// kernels run the planes as tokens, each weight row unpacked once for both. Their two float
// products are summed (qmatmul.h's qrows_planes); Q8_1's block sums stay float32 (not fp16,
// which would cap the precision at 11 bits). In outlier blocks the first plane rounds every small value
// to zero and the second keeps them; overall about 15 bits, at the price of twice the integer
// multiplies.
constexpr int kMaxPlanes = 2;

// Token t of x[k] into slots planes * t .. planes * t + planes - 1 of v.
void quantize_planes(QuantizeRowFn quantize, int kind, int planes, const float *x, int64_t t, const QActView &v);

}  // namespace moe
