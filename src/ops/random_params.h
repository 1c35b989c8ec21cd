/* random_params.h — the RANDOM_BITS primitive's params and the Threefry-2x32
 * hash, shared by src/ops/random.c (which splits the global key eagerly)
 * and the CPU kernel (src/backend/cpu/random.c).
 *
 * Bit stream of one key (as JAX's threefry_random_bits and MLX's
 * RandomBits): n uint32 words, h = ceil(n / 2). For p < floor(n / 2) the
 * counter pair (p, p + h) hashes to words p and p + h; when n is odd the
 * last word, p = n / 2, is the first half of the hash of (p, 0). */
#ifndef MXC_RANDOM_PARAMS_H
#define MXC_RANDOM_PARAMS_H
#include <stdint.h>

#include "mxc/array.h"

enum {
  MX__RANDOM_RAW = 0,   /* output: the uint32 words */
  MX__RANDOM_RANGE = 1, /* output: low + word % range, in the output dtype */
  MX__RANDOM_RANGE64 = 2 /* two keys: low + (word(k2) << 32 | word(k1)) % range */
};

typedef struct {
  int64_t shape[MX_MAX_NDIM]; /* output shape (also the array's shape) */
  int ndim;
  int mode;       /* MX__RANDOM_* */
  int64_t low;    /* RANGE modes: the first value */
  uint64_t range; /* RANGE modes: number of values, >= 1 */
} mx__random_params;

static inline uint32_t mx__rotl32(uint32_t x, int r) {
  return (x << r) | (x >> (32 - r));
}

/* Threefry-2x32 with 20 rounds (Salmon et al., SC'11; Random123's
 * threefry2x32_20): key (k0, k1), counter (c0, c1) -> out[0], out[1]. */
static inline void mx__threefry2x32(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                    uint32_t out[2]) {
  static const int rot[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  uint32_t x0 = c0 + ks[0], x1 = c1 + ks[1];
  for (int i = 0; i < 5; i++) {
    for (int j = 0; j < 4; j++) {
      x0 += x1;
      x1 = mx__rotl32(x1, rot[i & 1][j]);
      x1 ^= x0;
    }
    /* key injection after every 4 rounds */
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + (uint32_t)i + 1u;
  }
  out[0] = x0;
  out[1] = x1;
}

/* Pair p of the bit stream of n words (see the top of this file): writes
 * w[0] = word p and, when it exists, w[1] = word p + h; returns how many
 * words the pair yields (1 or 2). */
static inline int mx__random_pair(uint32_t k0, uint32_t k1, int64_t n, int64_t p,
                                  uint32_t w[2]) {
  int64_t h = (n + 1) / 2;
  if (p < n / 2) {
    mx__threefry2x32(k0, k1, (uint32_t)p, (uint32_t)(p + h), w);
    return 2;
  }
  mx__threefry2x32(k0, k1, (uint32_t)p, 0u, w);
  return 1;
}

#endif
