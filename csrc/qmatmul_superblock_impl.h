// The super-block types' integer path (K and IQ quants, formats.h's superblock_type), included
// once per ISA namespace by qmatmul_isa.cpp after its shared helpers.
//
// A chunk is one super-block, w = d * S_s * q - dmin * M_s (unpack_impl.h's SuperScales, the
// loaders' SuperRegs). Against one token's Q8_K quants a (scale da, sub-block sums bsum_s) it
// gives two exact integers
//     A = sum_s S_s <q, a>_s,    B = sum_s M_s bsum_s,
// and one float term f = da * ((d * A) - (dmin * B)); a row's result is the running float sum
// of its chunks' terms in order, 0 + f_0 + f_1 + ... As in llama.cpp's super-block dot
// products, the sub-block scales stay integers and the float work is per chunk, not per
// sub-block. Each path computes A and B as suits its layout (integers are exact in any order),
// then these float operations in this order, so all give the same bits:
//  - the portable code: unpacked rows, one token at a time;
//  - the AVX-512 few-token stream: a chunk's 16 sub-blocks in the lanes of a vector (the
//    interleaved order of PackedChunk), summed across lanes for 16 chunks at once;
//  - the AVX-512 GEMM: 16 rows in the lanes of a vector against each token's 4 activation bytes
//    broadcast, so scales and sums stay in their lanes and nothing crosses lanes.
// Bounds: |A|, |B| and every partial sum below stay under 2^28 for every type (the largest, Q6_K
// and IQ4_XS: 16 x 128 x 16 x 32 x 127 and 8 x 32 x 32 x 127 x 127), so int32 is exact.

static inline float chunk_term(float da, float d, float dmin, int32_t A, int32_t B) {
  return da * ((d * (float)A) - (dmin * (float)B));
}

// Token t's Q8_K scale for chunk c (the view repeats it for the chunk's 16 sub-blocks).
static inline float act_scale(const QActView &a, int64_t t, int64_t c) { return a.scale[(t * a.chunks + c) * kSubQ]; }

#if !defined(__AVX512VNNI__)
// A super-block unpacked: its int8 weights and scales.
struct alignas(64) SuperChunk {
  int8_t q[kChunkQ];
  SuperScales sc;
};

#if defined(__AVX2__)
// Sum of the 8 lanes.
static inline int32_t hsum8(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1)));
}
#endif

// A and B of one unpacked chunk against one token's quants aq and sub-block sums bsum (see the
// top); B only for the types with mins. With AVX2 the sub-block sums stay in registers and the
// products are vector multiplies (the scalar loops took half the time of an AVX2 row), and the
// types with mins (Q2_K, Q4_K, Q5_K), whose quants are never negative, skip maddubs' sign transfer.
template <bool kMins>
static inline void chunk_ints(const SuperChunk &w, const int8_t *aq, const int32_t *bsum, int32_t *A, int32_t *B) {
#if defined(__AVX2__)
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {  // isums' arithmetic: sub-blocks 8 h .. 8 h + 7
    __m256i v[4];
    for (int i = 0; i < 4; ++i) {
      const __m256i wq = _mm256_loadu_si256((const __m256i *)(w.q + 128 * h + 32 * i));
      const __m256i q = _mm256_loadu_si256((const __m256i *)(aq + 128 * h + 32 * i));
      // |w| <= 128, |a| <= 127: maddubs's int16 pairs cannot saturate; w >= 0 needs no sign move
      const __m256i prod = kMins ? _mm256_maddubs_epi16(wq, q) : _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(q, wq));
      v[i] = _mm256_madd_epi16(prod, ones);
    }
    const __m256i is = _mm256_permutevar8x32_epi32(
        _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3])), order);
    a = _mm256_add_epi32(a, _mm256_mullo_epi32(is, _mm256_loadu_si256((const __m256i *)(w.sc.s + 8 * h))));
    if (kMins)
      b = _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(w.sc.m + 8 * h)),
                                                 _mm256_loadu_si256((const __m256i *)(bsum + 8 * h))));
  }
  *A = hsum8(a), *B = kMins ? hsum8(b) : 0;
#else
  alignas(64) int32_t is[kSubQ];
  isums(w.q, aq, is);
  int32_t sa = 0, sb = 0;
  for (int s = 0; s < kSubQ; ++s) sa += w.sc.s[s] * is[s], sb += kMins ? w.sc.m[s] * bsum[s] : 0;
  *A = sa, *B = sb;
#endif
}

// One unpacked row (chunk c at w[c]) against tokens t0 .. t0 + nt - 1: y[j * ldy] for token t0 + j.
template <bool kMins>
static void super_row_dots(const SuperChunk *w, const QActView &a, int64_t t0, int64_t nt, float *y, int64_t ldy) {
  for (int64_t j = 0; j < nt; ++j) {
    const int64_t t = t0 + j;
    float acc = 0.0f;
    for (int64_t c = 0; c < a.chunks; ++c) {
      const int64_t off = t * a.chunks + c;
      int32_t A, B;
      chunk_ints<kMins>(w[c], a.q + off * kChunkQ, a.bsum + off * kSubQ, &A, &B);
      acc += chunk_term(act_scale(a, t, c), w[c].sc.d, w[c].sc.dmin, A, B);
    }
    y[j * ldy] = acc;
  }
}

// Rows unpacked a tile at a time (about 256 KB, read back from L2 for every token tile), then
// every token against them.
template <bool kMins>
static void super_unpacked_matmul(SuperUnpackFn up, const uint8_t *w, int64_t row_bytes, int64_t rows,
                                  const QActView &a, int64_t num_tokens, float *y, int64_t ldy) {
  const int64_t chunks = a.chunks, chunk_bytes = row_bytes / chunks;
  int64_t tile = 256 * 1024 / (chunks * (int64_t)sizeof(SuperChunk));
  tile = tile < 1 ? 1 : tile > rows ? rows : tile;
  SuperChunk *const buf = thread_vectors<SuperChunk, 0>(tile * chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t n = rows - r0 < tile ? rows - r0 : tile;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < chunks; ++c) up(w + (r0 + r) * row_bytes + c * chunk_bytes, buf[r * chunks + c].q, &buf[r * chunks + c].sc);
    for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenTile) {
      const int64_t nt = num_tokens - t0 < kTokenTile ? num_tokens - t0 : kTokenTile;
      for (int64_t r = 0; r < n; ++r) super_row_dots<kMins>(buf + r * chunks, a, t0, nt, y + t0 * ldy + r0 + r, ldy);
    }
  }
}

#else

// ---- the few-token stream: a chunk's sub-blocks in lanes --------------------------------------

// B of 16 chunks (n of them) for one token, in order: the mins' int16 pairs (mins[c * kPairs ..],
// kPairs per chunk) against the token's sums in pairs (pairs[c * kPairs ..]), kPerVec chunks a
// vector; each chunk's kPairs lanes summed in place, so every lane of its group holds its B;
// then lane (group g, index j) of vector j picked, and fold's lane order undone.
template <int kSub>
static inline __attribute__((always_inline)) __m512i mins_sums16(const int32_t *mins, const int32_t *pairs, int n) {
  constexpr int kPairs = kSub == 32 ? kPairs32 : kPairs16, kPerVec = 16 / kPairs;
  __m512i b = _mm512_setzero_si512();
  for (int j = 0; j * kPerVec < n; ++j) {
    const int left = (n - j * kPerVec) * kPairs;
    const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    __m512i x = _mm512_madd_epi16(_mm512_maskz_loadu_epi32(m, mins + 16 * j), _mm512_maskz_loadu_epi32(m, pairs + 16 * j));
    x = _mm512_add_epi32(x, _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)0x4E));
    x = _mm512_add_epi32(x, _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)0xB1));
    if (kPairs == 8) x = _mm512_add_epi32(x, _mm512_shuffle_i32x4(x, x, 0xB1));
    b = _mm512_mask_mov_epi32(b, (__mmask16)((kPairs == 4 ? 0x1111 : 0x0101) << j), x);
  }
  const __m512i order = kPairs == 4 ? _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
                                    : _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  return _mm512_permutexvar_epi32(order, b);
}

// Lane i of the result: the sum of v[i]'s 16 lanes (v[i] for i < n, zeros past it), fold's
// halving tree on integers (which leaves v[i]'s sum in lane 4 (i % 4) + i / 4), back in order.
static inline __attribute__((always_inline)) __m512i lane_sums16(const __m512i *v, int n) {
  __m512 f[16];
  for (int i = 0; i < 16; ++i) f[i] = i < n ? _mm512_castsi512_ps(v[i]) : _mm512_setzero_ps();
  const __m512i folded = _mm512_castps_si512(fold<16>(f, AddEpi32{}));
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), folded);
}

// kTokens tokens (see with_token_count): each chunk of a row goes from its blocks into registers
// once and meets every token there, a token's sub-block sums times the scales in lanes. Slots of
// 16 (row, chunk) pairs are then summed across lanes at once into A (B from the mins' pairs,
// mins_sums16), and each row's terms added in order: 16 chunks of a row, or with fewer chunks
// (K = 2048 or 768 in MoE experts) as many whole rows as fit, so no lanes are summed for
// nothing. (Groups of 8 chunks kept in registers measured slower: the work per group then
// weighs twice as much.)
// kRows: groups of whole rows (chunks < 16); a compile-time case, as the general loops cost a
// cycle or two a chunk where a group is one row's chunks.
template <int kType, Offset kOff, auto kLoad, int kTokens, bool kRows>
static void stream_super(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, float *y, int64_t ldy) {
  constexpr bool kMins = has_mins(kType);
  constexpr int kSub = sub_block_size(kType), kPairs = kSub == 32 ? kPairs32 : kPairs16;
  constexpr int64_t kBlockBytes = geometry(kType).type_size;  // a constant, so prefetch_ahead unrolls
  const int32_t *const act_pairs = kSub == 32 ? a.bpairs32 : a.bpairs16;
  const int64_t chunks = a.chunks;
  const int64_t group_rows = kRows ? 16 / chunks : 1, group_chunks = kRows ? chunks : 16;
  // Per token, the activation scale and sums in pairs of each slot: the token's own arrays when a
  // group is chunks of one row; repeated for each row of a group of whole rows.
  thread_local std::vector<float> da_buf;
  thread_local std::vector<int32_t> pairs_buf;
  const int64_t da_len = kRows ? 16 : chunks;
  da_buf.resize(kTokens * da_len);
  float *const da = da_buf.data();
  if (kRows) pairs_buf.resize(kTokens * 16 * kPairs);
  for (int64_t t = 0; t < kTokens; ++t)
    for (int64_t slot = 0; slot < (kRows ? group_rows * chunks : chunks); ++slot) {
      const int64_t c = slot % chunks;
      da[t * da_len + slot] = act_scale(a, t, c);
      if (kRows)
        for (int j = 0; j < kPairs; ++j) pairs_buf[(t * 16 + slot) * kPairs + j] = act_pairs[(t * chunks + c) * kPairs + j];
    }
  __m512i *const va = thread_vectors<__m512i, 0>(kTokens * 16);
  alignas(64) int32_t mins[16 * kPairs];
  alignas(64) float d[16], dmin[16], f[16];
  for (int64_t r0 = 0; r0 < rows; r0 += group_rows) {
    const int64_t nr = rows - r0 < group_rows ? rows - r0 : group_rows;
    // Whole 16-float rows, zeroed and stored as vectors: loops over nr compiled to rep stos and
    // rep movs per token, whose microcode start-up took a fifth of a 4-token call (Xeon, perf).
    alignas(64) float acc[kTokens][16];
    for (int t = 0; t < kTokens; ++t) _mm512_store_ps(acc[t], _mm512_setzero_ps());
    for (int64_t c0 = 0; c0 < chunks; c0 += group_chunks) {
      const int nc = chunks - c0 < group_chunks ? (int)(chunks - c0) : (int)group_chunks, n = (int)nr * nc;
      for (int slot = 0, g = 0; g < nr; ++g)
        for (int i = 0; i < nc; ++i, ++slot) {
          const int64_t c = c0 + i;
          const uint8_t *row = w + (r0 + g) * row_bytes;
          prefetch_ahead(row + c * kBlockBytes, kBlockBytes);
          SuperRegs sc;
          __m512i q[4];
          kLoad(row, c, &sc, q);
          d[slot] = sc.d, dmin[slot] = sc.dmin;
          if (kMins) {
            if (kPairs == 4) _mm_storeu_si128((__m128i *)(mins + 4 * slot), _mm256_castsi256_si128(sc.mp));
            else _mm256_storeu_si256((__m256i *)(mins + 8 * slot), sc.mp);
          }
          for (int t = 0; t < kTokens; ++t) {
            const PackedChunk &pk = a.packed[t * chunks + c];
            // One chain of four dpbusd, not chain_dots' two of two: with the lane sums per token,
            // its latency hides, and the add and second init cost 1-8 % at 2-6 tokens (Zen 4).
            __m512i isum = offset_init<(int)kOff>(pk);
            for (int p = 0; p < 4; ++p) isum = _mm512_dpbusd_epi32(isum, q[p], _mm512_loadu_si512(pk.qi + 64 * p));
            va[t * 16 + slot] = _mm512_mullo_epi32(isum, sc.s);
          }
        }
      const __mmask16 m = (__mmask16)((1u << n) - 1);
      const __m512 vd = _mm512_maskz_loadu_ps(m, d), vdm = _mm512_maskz_loadu_ps(m, dmin);
      for (int t = 0; t < kTokens; ++t) {
        __m512 x = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(lane_sums16(va + t * 16, n)));
        if (kMins) {
          const int32_t *pairs = kRows ? pairs_buf.data() + t * 16 * kPairs : act_pairs + (t * chunks + c0) * kPairs;
          x = _mm512_sub_ps(x, _mm512_mul_ps(vdm, _mm512_cvtepi32_ps(mins_sums16<kSub>(mins, pairs, n))));
        }
        _mm512_store_ps(f, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, da + t * da_len + (kRows ? 0 : c0)), x));
        for (int64_t g = 0; g < nr; ++g)
          for (int i = 0; i < nc; ++i) acc[t][g] += f[g * nc + i];
      }
    }
    const __mmask16 rows_mask = (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < kTokens; ++t) _mm512_mask_storeu_ps(y + t * ldy + r0, rows_mask, _mm512_load_ps(acc[t]));
  }
}

// ---- the GEMM: 16 rows in lanes ---------------------------------------------------------------

// A band of 16 rows over one chunk as the GEMM reads it (about 5 KB): lane r of each vector is
// row r's. kSub is the type's sub-block size (16 or 32 weights).
template <int kSub>
struct alignas(64) BandChunk {
  static constexpr int kSubs = kChunkQ / kSub;
  __m512i q[64];         // group g: row r's weight bytes 4 g .. 4 g + 3, as the loader gives them
  __m512i s[kSubs];      // sub-block scales
  __m512i m[kSubs / 2];  // the mins in int16 pairs (sub-blocks 2 i, 2 i + 1): B = m . bsum pairs
  __m512 d, dmin;
};

// int16 pairs (lo, hi) lane by lane.
static inline __attribute__((always_inline)) __m512i pack_pairs(__m512i lo, __m512i hi) {
  return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(hi, 16));
}

// Rows [0, n) (n <= 16; the rest zeros) of a row band, each of its chunks into band[c], through
// the loader.
template <int kSub, Offset kOff, bool kMins, auto kLoad>
static void fill_band(const uint8_t *w, int64_t row_bytes, int64_t n, int64_t chunks, BandChunk<kSub> *band) {
  const int64_t chunk_bytes = row_bytes / chunks;
  constexpr int kSubs = kChunkQ / kSub;
  alignas(64) float d[16], dmin[16];
  __m512i q[4][16], s[16], m[16];
  for (int64_t c = 0; c < chunks; ++c) {
    for (int r = 0; r < 16; ++r) {
      SuperRegs sc{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm256_setzero_si256(), 0.0f, 0.0f};
      __m512i qr[4] = {};
      if (r < n) {
        prefetch_ahead(w + r * row_bytes + c * chunk_bytes, chunk_bytes);
        kLoad(w + r * row_bytes, c, &sc, qr);
      }
      for (int p = 0; p < 4; ++p) q[p][r] = qr[p];
      s[r] = sc.s, m[r] = sc.m, d[r] = sc.d, dmin[r] = sc.dmin;
    }
    BandChunk<kSub> &b = band[c];
    for (int p = 0; p < 4; ++p) {  // the loader's lane j of vector p is group 4 j + p
      transpose16(q[p]);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(&b.q[4 * j + p], q[p][j]);
    }
    transpose16(s);  // s[j]: lane r = row r's scale of 16-weight sub-block j
    constexpr int kStep = kSub / 16;
    for (int i = 0; i < kSubs; ++i) _mm512_store_si512(&b.s[i], s[kStep * i]);
    if (kMins) {
      transpose16(m);
      for (int i = 0; i < kSubs / 2; ++i) _mm512_store_si512(&b.m[i], pack_pairs(m[2 * kStep * i], m[2 * kStep * i + kStep]));
    }
    _mm512_store_ps(&b.d, _mm512_load_ps(d));
    _mm512_store_ps(&b.dmin, _mm512_load_ps(dmin));
  }
}

// Tokens per GEMM pass: 2 bands x 4 tokens keep 8 sums and 8 dot products in registers (6 tokens
// spilled and ran 3-6 % slower at 512 tokens on Zen 4).
constexpr int kSuperTokens = 4;

// kBands bands (band b's chunk c at band[b][c]) x kTokens tokens (t0 ..) over all chunks, added
// to acc[b * kTokens + t]. For the types with an offset in their weight bytes,
// each sub-block's dot products start from bias[(t * chunks + c) * kSubs + s], -offset times
// the token's sum over the sub-block, which takes off what the offset added.
template <int kSub, bool kMins, bool kBias, int kBands, int kTokens>
static inline __attribute__((always_inline)) void band_dots(const BandChunk<kSub> *const *band, const QActView &a,
                                                           const int32_t *bias, int64_t t0, __m512 *acc) {
  constexpr int kSubs = kChunkQ / kSub, kGroups = kSub / 4;
  for (int64_t c = 0; c < a.chunks; ++c) {
    const BandChunk<kSub> *bc_[kBands];
    for (int b = 0; b < kBands; ++b) bc_[b] = &band[b][c];
    const int8_t *aq[kTokens];
    for (int t = 0; t < kTokens; ++t) aq[t] = a.q + ((t0 + t) * a.chunks + c) * kChunkQ;
    __m512i sums[kBands][kTokens];
    for (int b = 0; b < kBands; ++b)
      for (int t = 0; t < kTokens; ++t) sums[b][t] = _mm512_setzero_si512();
    for (int s = 0; s < kSubs; ++s) {
      __m512i dots[kBands][kTokens];
      for (int t = 0; t < kTokens; ++t) {
        const __m512i init = kBias ? _mm512_set1_epi32(bias[((t0 + t) * a.chunks + c) * kSubs + s]) : _mm512_setzero_si512();
        for (int b = 0; b < kBands; ++b) dots[b][t] = init;
      }
#pragma GCC unroll 8
      for (int g = s * kGroups; g < (s + 1) * kGroups; ++g) {
        __m512i wv[kBands];
        for (int b = 0; b < kBands; ++b) wv[b] = _mm512_load_si512(&bc_[b]->q[g]);
        for (int t = 0; t < kTokens; ++t) {
          int32_t x;
          memcpy(&x, aq[t] + 4 * g, 4);
          const __m512i av = _mm512_set1_epi32(x);
          for (int b = 0; b < kBands; ++b) dots[b][t] = _mm512_dpbusd_epi32(dots[b][t], wv[b], av);
        }
      }
      for (int b = 0; b < kBands; ++b) {
        const __m512i scale = _mm512_load_si512(&bc_[b]->s[s]);
        for (int t = 0; t < kTokens; ++t) sums[b][t] = _mm512_add_epi32(sums[b][t], _mm512_mullo_epi32(dots[b][t], scale));
      }
    }
    for (int t = 0; t < kTokens; ++t) {
      const int64_t tc = (t0 + t) * a.chunks + c;
      const int32_t *bp = kSub == 32 ? a.bpairs32 + tc * kPairs32 : a.bpairs16 + tc * kPairs16;
      const __m512 da = _mm512_set1_ps(a.scale[tc * kSubQ]);
      for (int b = 0; b < kBands; ++b) {
        const BandChunk<kSub> &bc = *bc_[b];
        __m512 x = _mm512_mul_ps(bc.d, _mm512_cvtepi32_ps(sums[b][t]));
        if (kMins) {
          __m512i B = _mm512_setzero_si512();
          for (int i = 0; i < kSubs / 2; ++i) B = _mm512_add_epi32(B, _mm512_madd_epi16(bc.m[i], _mm512_set1_epi32(bp[i])));
          x = _mm512_sub_ps(x, _mm512_mul_ps(bc.dmin, _mm512_cvtepi32_ps(B)));
        }
        acc[b * kTokens + t] = _mm512_add_ps(acc[b * kTokens + t], _mm512_mul_ps(da, x));
      }
    }
  }
}

// Bands per tile: its chunks of all bands (about 5 KB a band and chunk) about 512 KB, in L2.
static int64_t super_tile_bands(int64_t chunks, int64_t bytes_per_band_chunk) {
  const int64_t b = 512 * 1024 / (chunks * bytes_per_band_chunk);
  return b < 2 ? 2 : b > 8 ? 8 : b / 2 * 2;
}

// The accumulators of one pass (kBands bands of rows r0 + 16 b.., kTokens tokens t0..) stored,
// the rows past nrows left out.
template <int kBands, int kTokens>
static inline void store_pass(const __m512 *acc, int64_t r0, int64_t nrows, int64_t t0, float *y, int64_t ldy) {
  for (int i = 0; i < kBands; ++i) {
    const int64_t left = nrows - 16 * i;
    const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    for (int t = 0; t < kTokens; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ldy + r0 + 16 * i, m, acc[i * kTokens + t]);
  }
}

// Many tokens: a tile of row bands filled once (in L2), then every kSuperTokens tokens against
// each pair of its bands over all chunks.
template <int kSub, Offset kOff, bool kMins, auto kLoad>
static void super_gemm(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                       float *y, int64_t ldy) {
  using Band = BandChunk<kSub>;
  constexpr int kSubs = kChunkQ / kSub;
  constexpr bool kBias = kOff != Offset::kNone;
  const int64_t chunks = a.chunks;
  // -offset times each token's sub-block sums (from PackedChunk's -128 x its 16-sums: exact shifts).
  thread_local std::vector<int32_t> bias_buf;
  if (kBias) {
    bias_buf.resize(num_tokens * chunks * kSubs);
    for (int64_t tc = 0; tc < num_tokens * chunks; ++tc)
      for (int i = 0; i < kSubs; ++i) {
        const int32_t *b128 = a.packed[tc].bias + i * (kSub / 16);
        bias_buf[tc * kSubs + i] = ((kSub == 32 ? b128[0] + b128[1] : b128[0]) >> (7 - (int)kOff));
      }
  }
  const int32_t *const bias = bias_buf.data();
  const int64_t tile_bands = super_tile_bands(chunks, sizeof(Band));
  Band *const tile = thread_vectors<Band, 0>(tile_bands * chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += 16 * tile_bands) {
    const int64_t nrows = rows - r0 < 16 * tile_bands ? rows - r0 : 16 * tile_bands, nb = (nrows + 15) / 16;
    for (int64_t b = 0; b < nb; ++b)
      fill_band<kSub, kOff, kMins, kLoad>(w + (r0 + 16 * b) * row_bytes, row_bytes,
                                          nrows - 16 * b < 16 ? nrows - 16 * b : 16, chunks, tile + b * chunks);
    for (int64_t t0 = 0; t0 < num_tokens; t0 += kSuperTokens) {
      const int64_t nt = num_tokens - t0 < kSuperTokens ? num_tokens - t0 : kSuperTokens;
      with_token_count<kSuperTokens>(nt, [&](auto n) {
        constexpr int kTokens = decltype(n)::value;
        for (int64_t b = 0; b < nb; b += 2) {
          __m512 acc[2 * kTokens];
          for (int i = 0; i < 2 * kTokens; ++i) acc[i] = _mm512_setzero_ps();
          const Band *bands[2] = {tile + b * chunks, tile + (b + 1) * chunks};
          if (nb - b >= 2) {
            band_dots<kSub, kMins, kBias, 2, kTokens>(bands, a, bias, t0, acc);
            store_pass<2, kTokens>(acc, r0 + 16 * b, nrows - 16 * b, t0, y, ldy);
          } else {
            band_dots<kSub, kMins, kBias, 1, kTokens>(bands, a, bias, t0, acc);
            store_pass<1, kTokens>(acc, r0 + 16 * b, nrows - 16 * b, t0, y, ldy);
          }
        }
      });
    }
  }
}

// Tokens up to which the stream beats the GEMM: past them, the stream's lane sums (about 3
// operations per token, chunk and vector) cost more than the GEMM's tile fill (about 45 cycles a
// row and chunk, transposes included). Measured on Zen 4 for Q4_K, Q6_K, IQ4_XS and IQ2_XXS,
// weights cold, 2 threads: at 7 tokens the stream took 0.82-1.0 of the GEMM's time, at 8 it
// took 0.95-1.1. Unlike the legacy stream, it needs no L1 bound on tokens x chunks: its
// activations are read once per row and chunk, and from L2 they still cost less than the GEMM's
// fill (IQ2_XXS 2048 x 7168, 4 tokens: 0.7 against 1.2 ms).
constexpr int kSuperStreamTokens = 7;

// The super-block types: the few-token stream or the GEMM.
template <int kType, Offset kOff, auto kLoad>
static void super_matmul(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                         float *y, int64_t ldy) {
  if (num_tokens <= kSuperStreamTokens)
    return with_token_count<kSuperStreamTokens>(num_tokens, [&](auto n) {
      if (a.chunks < 16)
        stream_super<kType, kOff, kLoad, decltype(n)::value, true>(w, row_bytes, rows, a, y, ldy);
      else
        stream_super<kType, kOff, kLoad, decltype(n)::value, false>(w, row_bytes, rows, a, y, ldy);
    });
  super_gemm<sub_block_size(kType), kOff, has_mins(kType), kLoad>(w, row_bytes, rows, a, num_tokens, y, ldy);
}

#endif
