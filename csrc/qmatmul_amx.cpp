// The integer matmul on Intel AMX int8 tiles, for prompts and MoE experts with enough tokens.
// Compiled once, with the avx512 level's flags plus -mamx-tile -mamx-int8 (CMakeLists.txt), and
// run only where dispatch.cpp found AMX in cpuid and XCR0 and Linux granted the tile state.
//
// A tile multiply (tdpb*d) takes 16 rows of 64 bytes against 16 columns of 64 bytes in one
// instruction, 16 K MACs in about 16 cycles here: 1024 MACs a cycle against vpdpbusd's 64 (512
// bits, one a cycle). Weights are the 16-row A tiles, filled once per call from the GGUF blocks
// by the AVX-512 register loaders (quants/load_regs_impl.h); 16 tokens' activations, transposed
// once per call, are the B tiles; a C tile holds the int32 sums of 16 rows x 16 tokens.
//
// Exactness: the C tiles hold integers the VNNI path also computes (the super-block types' A),
// and the float operations that follow are the VNNI path's, element by element in its order,
// so the bits equal every other ISA's (backend/superblock_reference.py states that arithmetic;
// tests/kernels compare bit for bit).
//
// What runs on AVX-512 instead: fewer than 16 tokens (a tile multiply needs 16 to fill its
// columns), and the legacy 32-block types (Q4_0, Q8_0, Q5_0, ...). Their arithmetic combines in
// float per 16 weights (a convert, two multiplies and an add per row, token and 16 weights),
// so tiles could only save the VNNI path's 4 vpdpbusd per row, token and chunk, and a C tile per
// 16-weight sub-block costs a 1 KB tile store plus 256 float sums to keep per 16 x 16 block: a
// tile version measured 0.62-0.70x the VNNI GEMM here (Q8_0 and Q5_0, 16-512 tokens).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <vector>

#include "api.h"
#include "lane_tree.h"
#include "qmatmul.h"
#include "quants/formats.h"
#include "quants/tables.h"

namespace moe {
namespace amx {

#include "quants/dequant_impl.h"
#include "quants/qact_impl.h"
#include "quants/unpack_impl.h"
#include "quants/load_regs_impl.h"
#include "transpose16_impl.h"

// The tile shapes of one kernel, loaded by ldtilecfg (palette 1: 8 tiles of up to 16 rows of
// 64 bytes). Tile i is rows[i] x colsb[i] bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig &tile(int i, int r, int bytes) {
    rows[i] = (uint8_t)r, colsb[i] = (uint16_t)bytes;
    return *this;
  }
};

// The tile configuration for the lifetime of a kernel call; released after, so the kernel need
// not save 8 KB of tile data for this thread at every context switch.
class TileScope {
 public:
  explicit TileScope(const TileConfig &c) { _tile_loadconfig(&c); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope &) = delete;
  TileScope &operator=(const TileScope &) = delete;
};

// A thread's scratch of n objects of V (buffer `kSlot`), kept and grown between calls, whole
// cache lines, 64-byte aligned: the tile loads and stores below want aligned rows.
struct alignas(64) CacheLine {
  uint8_t bytes[64];
};
template <typename V, int kSlot>
static V *thread_buffer(int64_t n) {
  static_assert(sizeof(V) % sizeof(CacheLine) == 0 && alignof(V) <= 64, "whole cache lines");
  thread_local std::vector<CacheLine> lines;
  n *= (int64_t)(sizeof(V) / sizeof(CacheLine));
  if ((int64_t)lines.size() < n) lines.resize(n);
  return reinterpret_cast<V *>(lines.data());
}

constexpr int kTileTokens = 16;  // the columns of a B tile

// 16 tokens of one chunk as B tiles: K-step p (the 64 bytes of PackedChunk::qi's vector p) is
// 16 rows of 64 bytes, row j holding each token's 4 bytes of lane j (natural bytes 16 j + 4 p ..
// + 3, sub-block j of 16).
struct alignas(64) TokenTiles {
  int8_t q[4][16][64];
};

// A chunk's Q8_K scale (one per token) and, for the super-block types with mins, the token's
// sub-block sums in int16 pairs (qact.h), tokens in the lanes.
struct alignas(64) TokenScales {
  float scale[16];
  int32_t pairs16[kPairs16][16];
  int32_t pairs32[kPairs32][16];
};

// The transposed activations of tokens t0 .. t0 + nt - 1 (nt <= 16; the rest zeros), chunk c
// into q[c * stride] and sc[c * stride]: once per call and token block, shared by every row of
// the call.
static void token_tiles(const QActView &a, int64_t t0, int64_t nt, bool pairs, TokenTiles *q, TokenScales *sc,
                        int64_t stride) {
  for (int64_t c = 0; c < a.chunks; ++c) {
    TokenTiles &tt = q[c * stride];
    for (int p = 0; p < 4; ++p) {
      __m512i v[16];
      for (int n = 0; n < 16; ++n)
        v[n] = n < nt ? _mm512_load_si512(a.packed[(t0 + n) * a.chunks + c].qi + 64 * p) : _mm512_setzero_si512();
      transpose16(v);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(tt.q[p][j], v[j]);
    }
    TokenScales &ts = sc[c * stride];
    for (int n = 0; n < 16; ++n) ts.scale[n] = n < nt ? a.packed[(t0 + n) * a.chunks + c].scale[0] : 0.0f;
    if (!pairs) continue;
    __m512i v[16];  // token n: its pairs16 in lanes 0-7, pairs32 in 8-11
    for (int n = 0; n < 16; ++n) {
      const int64_t i = (t0 + n) * a.chunks + c;
      v[n] = n >= nt ? _mm512_setzero_si512()
                     : _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a.bpairs16 + i * kPairs16))),
                                          _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(a.bpairs32 + i * kPairs32))), 1);
    }
    transpose16(v);
    for (int j = 0; j < kPairs16; ++j) _mm512_store_si512(ts.pairs16[j], v[j]);
    for (int j = 0; j < kPairs32; ++j) _mm512_store_si512(ts.pairs32[j], v[kPairs16 + j]);
  }
}

// acc[r] (lane t: row r's result for token t) into y[(t0 + t) * ldy + r] for r < nrows, t < nt.
static void store_block(__m512 *acc, int64_t nrows, int64_t nt, float *y, int64_t ldy) {
  __m512i v[16];
  for (int r = 0; r < 16; ++r) v[r] = _mm512_castps_si512(acc[r]);
  transpose16(v);
  const __mmask16 m = nrows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nrows) - 1);
  for (int64_t t = 0; t < nt; ++t) _mm512_mask_storeu_ps(y + t * ldy, m, _mm512_castsi512_ps(v[t]));
}

#include "amx_superblock_impl.h"

void qrows_matmul(int type, const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                  float *y, int64_t ldy) {
  if (num_tokens >= amx_min_tokens(type)) switch (type) {
      case kQ2_K: return super_tiles<kQ2_K, Offset::kNone, load_q2_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kQ3_K: return super_tiles<kQ3_K, Offset::k4, load_q3_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kQ4_K: return super_tiles<kQ4_K, Offset::kNone, load_q4_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kQ5_K: return super_tiles<kQ5_K, Offset::kNone, load_q5_k>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kQ6_K:
        return super_tiles<kQ6_K, Offset::k32, interleaved_super<load_q6_k>>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kIQ4_XS: return super_tiles<kIQ4_XS, Offset::k128, load_iq4_xs>(w, row_bytes, rows, a, num_tokens, y, ldy);
      case kIQ1_S:
        return with_gather([&](auto g) {
          super_tiles<kIQ1_S, Offset::k128, load_iq1_s<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
        });
      case kIQ1_M:
        return with_gather([&](auto g) {
          super_tiles<kIQ1_M, Offset::k128, load_iq1_m<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
        });
      case kIQ2_XXS:
        return with_gather([&](auto g) {
          super_tiles<kIQ2_XXS, Offset::k128, load_iq2_xxs<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
        });
      case kIQ2_XS:
        return with_gather([&](auto g) {
          super_tiles<kIQ2_XS, Offset::k128, load_iq2_xs<decltype(g)::value>>(w, row_bytes, rows, a, num_tokens, y, ldy);
        });
      case kIQ3_XXS: return super_tiles<kIQ3_XXS, Offset::k128, load_iq3_xxs>(w, row_bytes, rows, a, num_tokens, y, ldy);
    }
  avx512::qrows_matmul(type, w, row_bytes, rows, a, num_tokens, y, ldy);
}

}  // namespace amx
}  // namespace moe
