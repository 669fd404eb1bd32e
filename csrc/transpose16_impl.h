// A 16 x 16 matrix of 32-bit elements in 16 AVX-512 vectors, transposed in registers: the
// super-block GEMMs lay 16 rows into the lanes with it (qmatmul_superblock_impl.h), the AMX
// GEMMs 16 tokens (qmatmul_amx.cpp). Included inside an ISA namespace built with AVX-512.
#pragma once

// 16 vectors as a 16 x 16 dword matrix (row i in v[i]), transposed in place: pairs, quads, then
// 128-bit lanes (64 shuffles).
static inline __attribute__((always_inline)) void transpose16(__m512i *v) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // v[4 g + m]: lane k = rows 4 g .. 4 g + 3 of column 4 k + m
    v[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    v[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    v[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    v[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    t[m] = _mm512_shuffle_i32x4(v[m], v[4 + m], 0x44);  // lanes 0, 1 of groups 0, 1
    t[4 + m] = _mm512_shuffle_i32x4(v[m], v[4 + m], 0xEE);
    t[8 + m] = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0x44);
    t[12 + m] = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {  // column 4 k + m from lane k of each group
    v[m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0x88);
    v[4 + m] = _mm512_shuffle_i32x4(t[m], t[8 + m], 0xDD);
    v[8 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0x88);
    v[12 + m] = _mm512_shuffle_i32x4(t[4 + m], t[12 + m], 0xDD);
  }
}
