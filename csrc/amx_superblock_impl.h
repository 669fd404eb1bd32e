// The super-block types (K and IQ quants) on AMX tiles, included by qmatmul_amx.cpp.
//
// A chunk gives, per row and token, the exact integers A = sum_s S_s <q, a>_s and
// B = sum_s M_s bsum_s and then the float term da * ((d * A) - (dmin * B)), added to the row's
// sum chunk by chunk in order (qmatmul_superblock_impl.h; backend/superblock_reference.py).
// A tile multiply sums 64 bytes of K at a time, across sub-blocks, so the scales go into the
// weights: w' = S_s * q, an integer of up to 13 bits (Q6_K: 128 x 32), is split into a low byte
// (unsigned) and a high byte (signed), w' = lo + 256 hi, each byte plane an A tile. Then
//     A = C_lo + 256 C_hi,   C_lo = sum lo * a (tdpbusd),   C_hi = sum hi * a (tdpbssd),
// exact (|C_lo| <= 256 x 255 x 127 < 2^23). Q2_K's w' (at most 15 x 3) needs no high plane.
// B, a 16 x 8 by 8 x 16 product per chunk, takes vpdpwssd on the mins' and the token sums'
// int16 pairs, as the VNNI GEMM does.
//
// A pass is one band of 16 rows against two blocks of 16 tokens: per 64-byte K-step two token
// tiles and two weight tiles feed four tile multiplies (8 tiles: 4 sums, 2 tokens, 2 weights),
// 8 multiplies of about 16 cycles per 16 x 16 x 256 against 1024 vpdpbusd on the VNNI path.
// The float work of a chunk runs while the tiles multiply the next (measured: a third faster
// than storing and converting each chunk before the next starts).

// A band of 16 rows over one chunk: the byte planes as A tiles by K-step p (the loader's
// interleaved vector p, 64 bytes a row), then per row the float scales and the mins in int16
// pairs (4 pairs of 32-weight sub-blocks, or Q2_K's 8 of 16). 8.7 KB.
struct alignas(64) SuperPanel {
  uint8_t lo[4][16][64];
  int8_t hi[4][16][64];
  int32_t mp[16][8];
  float d[16], dmin[16];
};

// Whether w' = S q can leave [0, 255], so that a high byte plane is needed.
constexpr bool has_high_plane(int type) { return type != kQ2_K; }

// Rows [0, n) (n <= 16; the rest zeros) of a band, chunks c0 .. c0 + nc - 1 into panel[0 ..],
// through the loader: its bytes are q + 2^kOff (unsigned; q itself for Offset::kNone) and its
// integer scales per 16-weight lane, so w' = S (byte - 2^kOff) in 16-bit lanes, even and odd
// bytes apart.
template <int kType, Offset kOff, auto kLoad>
static void fill_super_panel(const uint8_t *w, int64_t row_bytes, int64_t n, int64_t c0, int64_t nc,
                             SuperPanel *panel) {
  constexpr bool kHigh = has_high_plane(kType);
  const __m512i off = _mm512_set1_epi16(kOff == Offset::kNone ? 0 : (short)(1 << (int)kOff));
  const __m512i low_bytes = _mm512_set1_epi16(0x00FF), high_bytes = _mm512_set1_epi16((short)0xFF00);
  for (int64_t c = c0; c < c0 + nc; ++c) {
    SuperPanel &pc = panel[c - c0];
    for (int r = 0; r < 16; ++r) {
      SuperRegs sc{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm256_setzero_si256(), 0.0f, 0.0f};
      __m512i q[4] = {};
      if (r < n) kLoad(w + r * row_bytes, c, &sc, q);
      // S (|S| <= 128) in both 16-bit halves of its lane; rows past n have S = 0, so w' = 0.
      const __m512i s16 = _mm512_or_si512(_mm512_and_si512(sc.s, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(sc.s, 16));
      for (int p = 0; p < 4; ++p) {
        const __m512i even = _mm512_mullo_epi16(_mm512_sub_epi16(_mm512_and_si512(q[p], low_bytes), off), s16);
        const __m512i odd = _mm512_mullo_epi16(_mm512_sub_epi16(_mm512_srli_epi16(q[p], 8), off), s16);
        _mm512_store_si512(pc.lo[p][r], _mm512_or_si512(_mm512_and_si512(even, low_bytes), _mm512_slli_epi16(odd, 8)));
        if (kHigh)
          _mm512_store_si512(pc.hi[p][r], _mm512_or_si512(_mm512_srli_epi16(even, 8), _mm512_and_si512(odd, high_bytes)));
      }
      _mm256_store_si256((__m256i *)pc.mp[r], sc.mp);
      pc.d[r] = sc.d, pc.dmin[r] = sc.dmin;
    }
  }
}

// Tiles 0-3 the sums (block 0 low, high, block 1 low, high), 4-5 the two token blocks, 6-7 the
// weight planes.
static TileConfig super_tile_config() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) c.tile(i, 16, 64);
  return c;
}

// One chunk's float terms for rows [r0, r1) of kBlocks token blocks (block j's sums at
// sums[j], its scales at *ts[j]), added to acc[16 j + r] (lane t: row r's sum for token t) as
// band_dots adds them: acc + da * ((d * A) - (dmin * B)). A row's scales are loaded once for
// both blocks, the blocks' scales and sum pairs once for all rows.
template <int kType, int kBlocks>
static inline __attribute__((always_inline)) void super_chunk_floats(const SuperPanel &pc, const TokenScales *const *ts,
                                                                    const int32_t (*sums)[2][16][16], int r0, int r1,
                                                                    __m512 *acc) {
  constexpr bool kMins = has_mins(kType), kHigh = has_high_plane(kType);
  constexpr int kPairs = sub_block_size(kType) == 32 ? kPairs32 : kPairs16;
  __m512 da[kBlocks];
  __m512i bp[kBlocks][kMins ? kPairs : 1];
  for (int j = 0; j < kBlocks; ++j) {
    da[j] = _mm512_load_ps(ts[j]->scale);
    if (kMins)
      for (int i = 0; i < kPairs; ++i) bp[j][i] = _mm512_load_si512(kPairs == kPairs32 ? ts[j]->pairs32[i] : ts[j]->pairs16[i]);
  }
  for (int r = r0; r < r1; ++r) {
    const __m512 d = _mm512_set1_ps(pc.d[r]), dmin = _mm512_set1_ps(pc.dmin[r]);
    __m512i mp[kMins ? kPairs : 1];
    if (kMins)
      for (int i = 0; i < kPairs; ++i) mp[i] = _mm512_set1_epi32(pc.mp[r][i]);
    for (int j = 0; j < kBlocks; ++j) {
      __m512i A = _mm512_load_si512(sums[j][0][r]);
      if (kHigh) A = _mm512_add_epi32(A, _mm512_slli_epi32(_mm512_load_si512(sums[j][1][r]), 8));
      __m512 x = _mm512_mul_ps(d, _mm512_cvtepi32_ps(A));
      if (kMins) {
        __m512i B = _mm512_setzero_si512();
        for (int i = 0; i < kPairs; ++i) B = _mm512_dpwssd_epi32(B, mp[i], bp[j][i]);
        x = _mm512_sub_ps(x, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(B)));
      }
      acc[16 * j + r] = _mm512_add_ps(acc[16 * j + r], _mm512_mul_ps(da[j], x));
    }
  }
}

// One band (panel[i], chunk c0 + i) against kBlocks (1 or 2) blocks of 16 tokens (block j's
// chunk i at q[j + i * stride], sc[j + i * stride]) over nc chunks, added to acc[j * 16 + r].
// Tiles 0-3 hold the sums (block 0 low, high, block 1 low, high), 4-5 the token blocks, 6-7 the
// weight planes. Chunk i's floats run in four slices between chunk i + 1's K-steps, from the
// other half of `sums`: the reorder window then holds tile and vector work together (one
// chunk's floats in one piece, over 500 operations, filled it and stalled the tiles).
template <int kType, int kBlocks>
static void super_pass(const SuperPanel *panel, const TokenTiles *q, const TokenScales *sc, int64_t stride,
                       int64_t nc, __m512 *acc) {
  constexpr bool kHigh = has_high_plane(kType);
  alignas(64) int32_t sums[2][2][2][16][16];  // [chunk parity][block][plane][row][token]
  auto floats = [&](int64_t i, int slice) {  // rows 4 slice .. 4 slice + 3 of chunk i, every block
    const TokenScales *ts[2] = {sc + i * stride, sc + (kBlocks - 1) + i * stride};
    super_chunk_floats<kType, kBlocks>(panel[i], ts, sums[i & 1], 4 * slice, 4 * slice + 4, acc);
  };
  for (int64_t i = 0; i <= nc; ++i) {
    if (i == nc) {
      for (int slice = 0; slice < 4; ++slice) floats(i - 1, slice);
      break;
    }
    const SuperPanel &pc = panel[i];
    const TokenTiles *t0 = q + i * stride, *t1 = q + (kBlocks - 1) + i * stride;
    _tile_zero(0);
    if (kHigh) _tile_zero(1);
    if (kBlocks == 2) {
      _tile_zero(2);
      if (kHigh) _tile_zero(3);
    }
    for (int p = 0; p < 4; ++p) {
      _tile_loadd(4, t0->q[p], 64);
      if (kBlocks == 2) _tile_loadd(5, t1->q[p], 64);
      _tile_loadd(6, pc.lo[p], 64);
      _tile_dpbusd(0, 6, 4);
      if (kBlocks == 2) _tile_dpbusd(2, 6, 5);
      if (kHigh) {
        _tile_loadd(7, pc.hi[p], 64);
        _tile_dpbssd(1, 7, 4);
        if (kBlocks == 2) _tile_dpbssd(3, 7, 5);
      }
      if (i > 0) floats(i - 1, p);
    }
    int32_t(*s)[2][16][16] = sums[i & 1];
    _tile_stored(0, s[0][0], 64);
    if (kHigh) _tile_stored(1, s[0][1], 64);
    if (kBlocks == 2) {
      _tile_stored(2, s[1][0], 64);
      if (kHigh) _tile_stored(3, s[1][1], 64);
    }
  }
}

// Tokens from which the tiles beat the VNNI GEMM, measured (weights warm, one thread): from 8
// tokens (where the VNNI GEMM starts too) the K types and IQ4_XS took 0.7-0.87 of the VNNI
// time (Q4_K 4096 x 4096: 1.34 against 1.54 ms; 16 tokens 0.62-0.78), but the codebook types
// (IQ1_S, IQ2_XXS at 2048 x 7168), whose loaders gather grid rows, still took 1.1-1.5x as long
// at 16 tokens (one token block amortizes their fill over too little); at 64 all took 0.55-0.6.
constexpr int64_t amx_min_tokens(int type) {
  return type == kIQ1_S || type == kIQ1_M || type == kIQ2_XXS || type == kIQ2_XS || type == kIQ3_XXS ? 32 : 8;
}

// The blocking, for L2 (2 MB a core on Sapphire Rapids; its L3 gives a core only about 30 GB/s,
// measured here, so what a pass rereads must stay in L2): the tokens' tiles over kc chunks
// (about 512 KB) are read by every band of a row group, and the row group's running sums wait
// in `acc` (about 256 KB) between K tiles; a band's panel over the K tile (kc x 9 KB) stays in
// L1 while every token block passes over it. The sums go chunk by chunk in order whatever the
// blocking: 0 + f_0 + f_1 + ..., through stores and loads that keep their bits.
struct SuperBlocking {
  int64_t kc, group_bands;
  SuperBlocking(int64_t chunks, int64_t blocks) {
    const int64_t kc_ = 512 * 1024 / (blocks * (int64_t)sizeof(TokenTiles));
    kc = kc_ < 1 ? 1 : kc_ > chunks ? chunks : kc_;
    const int64_t g = 256 * 1024 / (blocks * 16 * (int64_t)sizeof(__m512));
    group_bands = g < 1 ? 1 : g > 16 ? 16 : g;
  }
};

template <int kType, Offset kOff, auto kLoad>
static void super_tiles(const uint8_t *w, int64_t row_bytes, int64_t rows, const QActView &a, int64_t num_tokens,
                        float *y, int64_t ldy) {
  const int64_t chunks = a.chunks, blocks = (num_tokens + kTileTokens - 1) / kTileTokens;
  TokenTiles *const q = thread_buffer<TokenTiles, 0>(chunks * blocks);  // [chunk][block]
  TokenScales *const sc = thread_buffer<TokenScales, 1>(chunks * blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t t0 = b * kTileTokens, nt = num_tokens - t0 < kTileTokens ? num_tokens - t0 : kTileTokens;
    token_tiles(a, t0, nt, has_mins(kType), q + b, sc + b, blocks);
  }
  const SuperBlocking blk(chunks, blocks);
  SuperPanel *const panel = thread_buffer<SuperPanel, 2>(blk.kc);
  __m512 *const acc = thread_buffer<__m512, 3>(blk.group_bands * blocks * 16);  // [band][block][row]
  const TileScope tiles(super_tile_config());
  for (int64_t g0 = 0; g0 < rows; g0 += 16 * blk.group_bands) {
    const int64_t group_rows = rows - g0 < 16 * blk.group_bands ? rows - g0 : 16 * blk.group_bands;
    for (int64_t c0 = 0; c0 < chunks; c0 += blk.kc) {
      const int64_t nc = chunks - c0 < blk.kc ? chunks - c0 : blk.kc;
      for (int64_t r0 = 0; r0 < group_rows; r0 += 16) {
        const int64_t n = group_rows - r0 < 16 ? group_rows - r0 : 16;
        fill_super_panel<kType, kOff, kLoad>(w + (g0 + r0) * row_bytes, row_bytes, n, c0, nc, panel);
        for (int64_t b = 0; b < blocks; b += 2) {
          const int kBlocksHere = blocks - b >= 2 ? 2 : 1;
          __m512 *const v = acc + (r0 / 16 * blocks + b) * 16;
          if (c0 == 0)
            for (int i = 0; i < 16 * kBlocksHere; ++i) v[i] = _mm512_setzero_ps();
          const int64_t at = c0 * blocks + b;
          if (kBlocksHere == 2)
            super_pass<kType, 2>(panel, q + at, sc + at, blocks, nc, v);
          else
            super_pass<kType, 1>(panel, q + at, sc + at, blocks, nc, v);
          if (c0 + nc == chunks)
            for (int j = 0; j < kBlocksHere; ++j) {
              const int64_t t0 = (b + j) * kTileTokens;
              store_block(v + 16 * j, n, num_tokens - t0 < kTileTokens ? num_tokens - t0 : kTileTokens,
                          y + t0 * ldy + g0 + r0, ldy);
            }
        }
      }
    }
  }
}
