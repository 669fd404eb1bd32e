// 16 lane sums added in one fixed tree, lane j with j + 8, then + 4, + 2, + 1: the order of the
// AVX-512 halving shuffles, so the portable code and every ISA get the same bits, at a depth of
// four additions where a running sum is fifteen in a row. Included by the per-ISA kernels.
#pragma once

static inline float tree_sum16(const float *l) {
  float a[8];
  for (int j = 0; j < 8; ++j) a[j] = l[j] + l[j + 8];
  for (int j = 0; j < 4; ++j) a[j] = a[j] + a[j + 4];
  for (int j = 0; j < 2; ++j) a[j] = a[j] + a[j + 2];
  return a[0] + a[1];
}
