// Causal attention of a prompt chunk (prompt_attention.cpp drives, prompt_attention_isa.cpp
// holds the per-ISA kernel).
#pragma once
#include <stdint.h>

namespace moe {

class ThreadPool;
struct IsaKernels;

constexpr int kRows = 8;    // query rows of one head per kernel call
constexpr int kPanel = 32;  // keys per packed panel

// One kernel call: rows (<= kRows) query rows of one head, row r at q + r * ldq and at position
// pos0 + r, seeing keys j <= pos0 + r (and pos0 + r - j < window when window > 0). kt: the head's
// keys in panels from position 0, panel b at kt + b * dh * kPanel holding key 32 b + j's element d
// at [d * kPanel + j] (zeros past the last key). Value j at v + j * ldv. Row r's output at out + r * ldout.
struct PromptRows {
  const float *q;
  int64_t ldq, rows, pos0, window;
  const float *kt, *v;
  int64_t ldv, dh, dv;
  float scale;
  float *out;
  int64_t ldout;
};

// transpose: dst[c * ldd + r] = src[r * lds + c] for c < cols, r < rows_out, 0 for r >= rows (a
// panel of keys: rows keys of cols elements, rows_out = kPanel, ldd = kPanel).
// fma_matmul: c[r * ldc + j] = the fused multiply-add chain over k = 0 .. K - 1 of a[r * ar + k]
// b[k * ldb + j], for r < rows, j < cols (MLA's latent expansions).

// Floats of scratch one call needs.
inline int64_t prompt_rows_scratch(int64_t dh, int64_t dv) { return dh * kRows + kRows * ((dv + 15) / 16 * 16) + kRows * kPanel; }

#define MOE_DECLARE_PROMPT_ISA(ns) \
  namespace ns {                   \
  void attend_prompt_rows(const PromptRows &a, float *scratch); \
  void transpose(const float *src, int64_t lds, int64_t rows, int64_t rows_out, int64_t cols, float *dst, int64_t ldd); \
  void fma_matmul(const float *a, int64_t ar, const float *b, int64_t ldb, int64_t rows, int64_t K, int64_t cols, \
                  float *c, int64_t ldc); \
  }
MOE_DECLARE_PROMPT_ISA(scalar)
MOE_DECLARE_PROMPT_ISA(avx2)
MOE_DECLARE_PROMPT_ISA(avx512)
#undef MOE_DECLARE_PROMPT_ISA

// n new tokens of one sequence at positions past .. past + n - 1: q [n] rows of heads x dh (token
// t's head h at q + t * ldq + h * dh), keys and values of positions 0 .. past + n - 1 (position
// s's kv head g at k + s * ldk + g * dh, v + s * ldv + g * dv; query head h reads kv head
// h / (heads / kv_heads)), out [n, heads, dv]. Same bits on every ISA, for any thread count, and
// for a position whatever chunk of the prompt it came in.
void attend_prompt(ThreadPool &pool, int isa, const float *q, int64_t n, int64_t heads, int64_t dh, int64_t ldq,
                   const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t kv_heads, int64_t dv, int64_t past,
                   int64_t window, float scale, float *out);

// MLA's prompt attention with the keys and values expanded from the cached latents, without
// materializing them per head: q [n] rows of heads x (N + R) ([q_nope | q_pe], token stride ldq),
// cache rows [latent (L) | k_pe (R)] for positions 0 .. past + n - 1 at stride ldc, w_uk [heads,
// N, L], w_uv [heads, Vd, L]. Head h's key of position s is [w_uk[h] latent_s | k_pe_s], its value
// w_uv[h] latent_s, each element a fused multiply-add chain over the latent in order. out [n,
// heads, Vd]. The same guarantees as attend_prompt.
void attend_prompt_mla(ThreadPool &pool, int isa, const float *q, int64_t n, int64_t heads, int64_t ldq,
                       const float *cache, int64_t ldc, int64_t L, int64_t R, const float *w_uk, const float *w_uv,
                       int64_t N, int64_t Vd, int64_t past, float scale, float *out);

}  // namespace moe
