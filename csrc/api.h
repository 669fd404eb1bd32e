// C ABI of the kernel library. Every exported function validates its arguments here.
#pragma once
#include <stdint.h>

#define MOE_API extern "C" __attribute__((visibility("default")))

// ISA levels, in increasing order of capability. AMX is AVX-512 plus Intel's int8 tiles
// (Sapphire Rapids and later) for the prompt GEMMs; everything else runs AVX-512 there.
enum moe_isa { MOE_ISA_SCALAR = 0, MOE_ISA_AVX2 = 1, MOE_ISA_AVX512 = 2, MOE_ISA_AMX = 3 };

MOE_API int moe_isa_detected(void);          // best level this CPU and OS support
MOE_API int moe_isa_active(void);            // level in use (detected, or forced lower)
MOE_API int moe_isa_force(int isa);          // 0 on success, -1 if the CPU cannot run it
MOE_API const char *moe_isa_name(int isa);

// Codebook rows (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS) by vector gathers at the AVX-512 levels: on by
// default on Intel from Sapphire Rapids on (AVX512-FP16 in cpuid), where gathers are fast; off
// elsewhere (a gather of 8 takes 14 cycles on Zen 5). The same bits either way. MOE_GATHER=0|1
// overrides the default.
MOE_API int moe_gather_active(void);
MOE_API int moe_gather_force(int on);  // 0 or 1 (tests run both paths); 0 on success

// Errors returned by the kernels (0 is success).
enum moe_error { MOE_ERR_TYPE = -1, MOE_ERR_SHAPE = -2, MOE_ERR_SIZE = -3 };

MOE_API int moe_type_supported(int ggml_type);
MOE_API int moe_row_bytes(int ggml_type, int64_t k);  // bytes of one row of k weights, -1 if k is not whole blocks
MOE_API int moe_set_num_threads(int n);               // 0: one per hardware thread
MOE_API int moe_num_threads(void);

// n weights of a GGUF tensor (n a multiple of the block size) -> float32, bit-identical to gguf-py.
MOE_API int moe_dequantize(int ggml_type, const void *src, int64_t src_bytes, float *dst, int64_t n);

// y[t, :] = W x[t, :] for t < num_tokens: W is n rows of k weights in GGUF layout (raw blocks,
// never copied), x is [num_tokens, k] float32, y is [num_tokens, n] float32.
MOE_API int moe_matmul(int ggml_type, const void *weight, int64_t weight_bytes, int64_t n, int64_t k,
                       const float *x, int64_t num_tokens, float *y);

// The routed experts of one MoE layer for num_tokens tokens: out[t] = sum over slots a of
// weights[t, a] * down_e(silu(gate_e x[t]) * up_e x[t]) with e = ids[t, a]. gate/up are
// [E, hidden, dim] and down [E, dim, hidden] stacked GGUF tensors, read in place. planes 1 or 2:
// x and the SwiGLU output are quantized to 8-bit planes once per format and the projections of
// quantized weights run as moe_matmul_q8 with those planes; 0: float activations.
// shared_hidden > 0 adds the shared experts (gate/up [shared_hidden, dim], down [dim,
// shared_hidden]) to every token in the same call, after the routed ones.
MOE_API int moe_experts(int64_t num_tokens, int64_t dim, int64_t hidden, int64_t num_experts, int64_t top_k,
                        const float *x, const int32_t *ids, const float *weights, const void *gate, int gate_type,
                        int64_t gate_bytes, const void *up, int up_type, int64_t up_bytes, const void *down,
                        int down_type, int64_t down_bytes, float *out, int planes, int64_t shared_hidden,
                        const void *shared_gate, int shared_gate_type, int64_t shared_gate_bytes,
                        const void *shared_up, int shared_up_type, int64_t shared_up_bytes, const void *shared_down,
                        int shared_down_type, int64_t shared_down_bytes);


// As moe_matmul, with x quantized to 8 bits once (Q8_0 or Q8_1 blocks of 32 for the 32-weight
// types, Q8_K blocks of 256 for K/IQ types) and integer dot products. planes 1: llama.cpp's
// arithmetic, within ~1e-2 relative of the float product; 2: plus the 8-bit residual of the
// first quantization (quants/qact.h), about 15 bits. Float weights (F32/F16/BF16) run moe_matmul.
MOE_API int moe_matmul_q8(int ggml_type, const void *weight, int64_t weight_bytes, int64_t n, int64_t k,
                          const float *x, int64_t num_tokens, float *y, int planes);

// count weights over the same x [num_tokens, k] in one call, x quantized once per activation
// format: ys[i] [num_tokens, n[i]] = moe_matmul_q8(weights[i]) bit for bit (q/k/v, gate/up).
// Quantized weight types only.
MOE_API int moe_matmul_q8_many(int count, const int *ggml_types, const void *const *weights,
                               const int64_t *weight_bytes, const int64_t *n, int64_t k, const float *x,
                               int64_t num_tokens, float *const *ys, int planes);

// heads independent moe_matmul_q8 products in one call (multi-head projections such as MLA's
// per-head latent maps): weight [heads, n, k] GGUF blocks, x [num_tokens, heads, k], y
// [num_tokens, heads, n]. Quantized weight types only.
MOE_API int moe_matmul_q8_heads(int ggml_type, const void *weight, int64_t weight_bytes, int64_t heads, int64_t n,
                                int64_t k, const float *x, int64_t num_tokens, float *y, int planes);

// The activation quants moe_matmul_q8 uses for ggml_type: q [num_tokens * planes, k] int8 in
// natural order (token t's plane p in row planes * t + p), d [num_tokens * planes, k / block]
// scales (block 32 or 256), s the same shape, Q8_1's scaled block sums (0 for the other
// formats). For tests against numpy.
MOE_API int moe_quantize_activations(int ggml_type, const float *x, int64_t num_tokens, int64_t k, int8_t *q,
                                     float *d, float *s, int planes);

// Attention of one new token per sequence (decoding): q [heads, dh] against n cached positions,
// position s's key of kv head g at k + s * ldk + g * dh and its value at v + s * ldv + g * dv
// (query head h reads kv head h / (heads / kv_heads)); out [heads, dv] = softmax(scale * q . k)
// . v per head. Same bits on every ISA and thread count.
MOE_API int moe_attend(const float *q, int64_t heads, int64_t dh, const float *k, int64_t ldk, const float *v,
                       int64_t ldv, int64_t n, int64_t kv_heads, int64_t dv, float scale, float *out);

// Attention of n new tokens of one sequence (a prompt chunk) at positions past .. past + n - 1:
// q [n] rows of heads x dh (token t's head h at q + t * ldq + h * dh) against the keys and values
// of positions 0 .. past + n - 1 (laid out as moe_attend's), causal: token t sees positions up
// to past + t, and with window > 0 only those less than window behind it. out [n, heads, dv].
// Same bits on every ISA and thread count, and for a position whichever chunk it came in.
MOE_API int moe_attend_prompt(const float *q, int64_t n, int64_t heads, int64_t dh, int64_t ldq, const float *k,
                              int64_t ldk, const float *v, int64_t ldv, int64_t kv_heads, int64_t dv, int64_t past,
                              int64_t window, float scale, float *out);

// MLA's prompt attention straight from the cached latents (DeepSeek-V2/V3 prefill): n new
// tokens at positions past .. past + n - 1, q [n] rows of heads x (N + R) ([q_nope | q_pe], token
// stride ldq), cache rows [latent (L) | k_pe (R)] of positions 0 .. past + n - 1 at stride ldc,
// w_uk [heads, N, L] and w_uv [heads, Vd, L] (kv_b_proj's key and value maps). Head h attends
// with keys [w_uk[h] latent | k_pe] and values w_uv[h] latent, causal; out [n, heads, Vd]. The
// same bits on every ISA and thread count, and for a position whichever chunk it came in.
MOE_API int moe_attend_prompt_mla(const float *q, int64_t n, int64_t heads, int64_t ldq, const float *cache, int64_t ldc,
                                  int64_t L, int64_t R, const float *w_uk, const float *w_uv, int64_t N, int64_t Vd,
                                  int64_t past, float scale, float *out);

// Rotary embedding of x [tokens, heads, dim] (token t, head h at x + t * ld_token + h * ld_head,
// its dim values contiguous) by cos/sin [tokens, dim / 2] into out [tokens, heads, dim]: pairs
// (i, i + dim / 2) for neox, else (2 i, 2 i + 1). torch's float operations, so its bits.
MOE_API int moe_rope(const float *x, int64_t tokens, int64_t heads, int64_t dim, int64_t ld_token, int64_t ld_head,
                     const float *cos, const float *sin, int neox, float *out);

// Gated activations, in place: g[i] = act(g[i]) * u[i] for i < n; act MOE_ACT_SILU (SwiGLU) or
// MOE_ACT_GELU_TANH (GeGLU). The expression the MoE and decode kernels use, the same bits on
// every ISA.
enum { MOE_ACT_SILU = 0, MOE_ACT_GELU_TANH = 1 };
MOE_API int moe_gated(int act, float *g, const float *u, int64_t n);


// Expert routing of num_tokens tokens over num_experts (DeepSeek's and Qwen/Mixtral's): scores
// = softmax(logits) or sigmoid(logits); the choice scores + bias (bias may be null); with
// n_group > 1 only the topk_group best groups compete (a group scores by its best choice, or by
// the sum of its best two for group_top2); then the top_k choices, best first, ties to the lower
// index; weights = their scores, divided by (their sum + norm_eps) when norm_topk, times scale.
// Plain float operations in one order (libm's expf): the same bits on every ISA.
enum { MOE_SCORE_SOFTMAX = 0, MOE_SCORE_SIGMOID = 1 };
typedef struct {
  int64_t num_experts, top_k, n_group, topk_group;
  int scoring, group_top2, norm_topk;
  float norm_eps, scale;
  const float *bias;  // [num_experts] or null
} MoeRouting;
MOE_API int moe_route(const MoeRouting *routing, const float *logits, int64_t num_tokens, int32_t *ids, float *weights);

// A GGUF tensor in place.
typedef struct {
  const void *ptr;
  int type;
  int64_t bytes;
} MoeWeight;

// One GQA transformer block for moe_decode_dense: pre-norm attention (optional q/k/v biases,
// per-head q/k norms, rope, an optional sliding window) and a gated feed-forward or routed
// experts, each optionally post-normed (Gemma 3) before its residual add.
typedef struct {
  int64_t heads, kv_heads, head_dim, hidden;
  float eps, attn_scale;
  int64_t window;  // 0: every cached position; else query i sees keys j with i - j < window
  int neox, rope_set, act;  // rope layout; which of the step's cos/sin tables; MOE_ACT_*
  const float *attn_norm, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm;  // [dim] / [head_dim]; null: none
  const float *q_bias, *k_bias, *v_bias;  // null: none
  MoeWeight q, k, v, o, gate, up, down;
  // experts > 0: routed experts (Qwen-MoE, Mixtral) instead of gate/up/down: the router, the
  // routing and the stacked exp_* tensors [E, ...], as the fused MoE takes them.
  int64_t experts, expert_hidden;
  MoeRouting routing;
  MoeWeight router, exp_gate, exp_up, exp_down;
} MoeDenseBlock;

// A decode step of num_seqs sequences (one new token each) through num_blocks blocks: x [num_seqs,
// dim] in, the last block's output out (in place). k_cache / v_cache[s * num_blocks + l] is
// sequence s's cache of block l ([capacity, kv_heads, head_dim] float32); the token goes to
// position lengths[s] and attends to positions 0 .. lengths[s]. cos / sin[set] [num_seqs,
// head_dim / 2] for each block's rope_set. planes: integer activation planes (1 or 2). The same
// bits as the blocks' kernels called one by one (backend/layers). head (null: none) and logits:
// MoeHead's.
// The model's final norm and LM head, which a decode step runs after its last block when given
// one: logits [num_seqs, vocab] = weight times rms_norm(x) (x stays the last block's output).
typedef struct {
  const float *norm;  // [dim]
  float eps;
  MoeWeight weight;  // [vocab, dim]
  int64_t vocab;
} MoeHead;

MOE_API int moe_decode_dense(const MoeDenseBlock *blocks, int64_t num_blocks, int64_t dim, int64_t num_seqs, float *x,
                             float *const *k_cache, float *const *v_cache, const int64_t *lengths,
                             const float *const *cos, const float *const *sin, int planes, const MoeHead *head,
                             float *logits);

// One DeepSeek-2/3 block for moe_decode_mla: MLA attention (q through q_a, its norm and q_b when
// q_b.ptr is set, else q directly; kv_a; per-head maps k_b [heads, kv_lora, nope] and v_b
// [heads, v_dim, kv_lora] from their GGUF blocks; the absorbed attention over the cached latents)
// and a feed-forward that is dense (experts == 0: gate/up/down) or routed experts (router,
// routing, exp_* [E, ...] stacks, optional shared experts sh_*).
typedef struct {
  int64_t heads, kv_lora, nope_dim, rope_dim, v_dim, q_lora;
  float eps, softmax_scale;
  int rope_set;
  const float *attn_norm, *q_a_norm, *kv_a_norm, *ffn_norm;
  MoeWeight q, q_b, kv_a, k_b, v_b, o;
  int64_t hidden;  // dense feed-forward
  MoeWeight gate, up, down;
  int64_t experts, expert_hidden, shared_hidden;
  MoeRouting routing;
  MoeWeight router, exp_gate, exp_up, exp_down, sh_gate, sh_up, sh_down;
} MoeMlaBlock;

// As moe_decode_dense for MLA blocks: cache[s * num_blocks + l] is sequence s's joint latent
// cache of block l, [capacity, kv_lora + rope_dim] float32 (latent, then rotated k_pe).
MOE_API int moe_decode_mla(const MoeMlaBlock *blocks, int64_t num_blocks, int64_t dim, int64_t num_seqs, float *x,
                           float *const *cache, const int64_t *lengths, const float *const *cos,
                           const float *const *sin, int planes, const MoeHead *head, float *logits);

// Where the native steps' time goes: copies the seconds each part (decode.h's StepPart: norms,
// attention projections, MLA maps, attention, router, experts, dense feed-forward, LM head) took since the
// last call into out[0 .. n) when out is given, zeroes them, and turns the timing on or off.
// Returns the number of parts.
MOE_API int moe_step_profile(int on, double *out, int n);

// RMSNorm of rows x [rows, d] with weight w [d]: out[r, i] = w[i] * (x[r, i] / sqrt(mean_i(x[r,
// i]^2) + eps)), the sum of squares in one fixed order (the same bits on every ISA).
MOE_API int moe_rms_norm(const float *x, int64_t rows, int64_t d, const float *w, float eps, float *out);
