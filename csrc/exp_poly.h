// e^x in plain float operations, shared by the per-ISA kernels (SwiGLU, GeGLU, attention).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

// Cody-Waite reduction by ln 2 and Cephes's degree-6 polynomial (about 1 ulp), x clamped to
// [-87, 88] so 2^n stays a normal float. Plain float operations (the build has -ffp-contract=off)
// and round-to-nearest: a loop over it vectorizes to the same bits on every ISA, where libm's
// expf is a call per element (a tenth of a 512-token MoE layer's time).
constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpLn2Hi = 0.693359375f, kExpLn2Lo = -2.12194440e-4f;  // ln 2 = hi + lo
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};  // highest power first

static inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  const float n = nearbyintf(x * kExpLog2e);
  const float r = (x - n * kExpLn2Hi) - n * kExpLn2Lo;
  float p = kExpPoly[0];
  for (int i = 1; i < 6; ++i) p = p * r + kExpPoly[i];
  const int32_t bits = ((int32_t)n + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  return ((p * (r * r) + r) + 1.0f) * two_n;
}
