/* vmath.h — branch-free float math that the compiler vectorises (libm's
 * expf is scalar). exp: range reduction x = n ln2 + r with a two-part ln2
 * (Cody-Waite), the degree-7 Taylor polynomial of e^r on [-ln2/2, ln2/2]
 * (truncation error < 1e-8 relative), and 2^n applied as two normal powers
 * of two so that subnormal results and overflow to +inf come out right.
 * NaN propagates. */
#ifndef MXC_VMATH_H
#define MXC_VMATH_H

#include <stdint.h>
#include <string.h>

static inline float mx__pow2i(int32_t n) { /* 2^n for -126 <= n <= 127 */
  uint32_t bits = (uint32_t)(n + 127) << 23;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline float mx__vexpf(float x) {
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  /* round to nearest with the 1.5*2^23 trick (vectorises, unlike roundf) */
  float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693145752f; /* ln2, high part (exact product) */
  r = r - n * 1.42860677e-06f;     /* ln2, low part */
  float p = 1.98412698e-04f;
  p = p * r + 1.38888889e-03f;
  p = p * r + 8.33333333e-03f;
  p = p * r + 4.16666667e-02f;
  p = p * r + 1.66666667e-01f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t ni = (int32_t)n;
  int32_t n1 = ni / 2, n2 = ni - n1;
  float y = p * mx__pow2i(n1) * mx__pow2i(n2);
  return x != x ? x : y;
}

#endif
