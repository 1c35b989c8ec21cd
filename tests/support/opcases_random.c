/* opcases_random.c — op-parity cases for the random ops.
 *
 * The reference is an independent plain-C Threefry-2x32-20 and bit-stream
 * layout (JAX's threefry_random_bits), followed by the same float32
 * arithmetic as mlx/random.cpp, with every intermediate rounded to the
 * output dtype as the ops do. Input 0 is a template: its shape and dtype
 * are the output's (its values are not used), except for categorical,
 * where it is the logits.
 *
 * ip = {mode, seed low 32 bits, seed high 32 bits, axis, num_samples/num}
 * dp = mode parameters (bounds, loc/scale, p). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "array_impl.h"
#include "support/harness.h"

enum {
  R_KEY, R_SPLIT, R_BITS, R_BITS_VIEW_KEY, R_UNIFORM, R_NORMAL, R_TRUNC, R_RANDINT,
  R_BERNOULLI, R_GUMBEL, R_CATEGORICAL
};

static uint64_t seed_of(const mx_opcase *c) {
  return (uint64_t)(uint32_t)c->ip[1] | (uint64_t)(uint32_t)c->ip[2] << 32;
}

/* ---- builds ------------------------------------------------------------------------ */
static mx_array *b_random(const mx_opcase *c, mx_array **in) {
  mx_array *x = in[0];
  const int64_t *shape = mx_array_shape(x);
  int nd = mx_array_ndim(x);
  mx_dtype dt = mx_array_dtype(x);
  mx_array *key = mx_random_key(seed_of(c)), *r = NULL;
  switch (c->ip[0]) {
    case R_KEY: r = mx_array_retain(key); break;
    case R_SPLIT: r = mx_random_split(key, c->ip[4]); break;
    case R_BITS: r = mx_random_bits(shape, nd, key); break;
    case R_BITS_VIEW_KEY: { /* key = words 0 and 2 of split(key, 4): a strided view */
      mx_array *s = mx_random_split(key, 4);
      mx_array *f = mx_reshape(s, (const int64_t[]){8}, 1);
      mx_array *k = mx_slice_axis(f, 0, 0, 4, 2);
      r = mx_random_bits(shape, nd, k);
      mx_array_free(s);
      mx_array_free(f);
      mx_array_free(k);
      break;
    }
    case R_UNIFORM: r = mx_random_uniform(c->dp[0], c->dp[1], shape, nd, dt, key); break;
    case R_NORMAL: r = mx_random_normal(shape, nd, dt, c->dp[0], c->dp[1], key); break;
    case R_TRUNC: r = mx_random_truncated_normal(c->dp[0], c->dp[1], shape, nd, dt, key); break;
    case R_RANDINT:
      r = mx_random_randint((int64_t)c->dp[0], (int64_t)c->dp[1], shape, nd, dt, key);
      break;
    case R_BERNOULLI: r = mx_random_bernoulli(c->dp[0], shape, nd, key); break;
    case R_GUMBEL: r = mx_random_gumbel(shape, nd, dt, key); break;
    case R_CATEGORICAL: r = mx_random_categorical(x, c->ip[3], c->ip[4], key); break;
  }
  mx_array_free(key);
  return r;
}

/* ---- reference: Threefry-2x32, 20 rounds ---------------------------------------------- */
static uint32_t rotl(uint32_t v, unsigned r) { return (v << r) | (v >> (32u - r)); }

static void threefry(const uint32_t key[2], const uint32_t ctr[2], uint32_t out[2]) {
  static const unsigned R[20] = {13, 15, 26, 6, 17, 29, 16, 24, 13, 15,
                                 26, 6,  17, 29, 16, 24, 13, 15, 26, 6};
  uint32_t k[3] = {key[0], key[1], 0x1BD11BDAu ^ key[0] ^ key[1]};
  uint32_t a = ctr[0] + k[0], b = ctr[1] + k[1];
  for (int round = 0; round < 20; round++) {
    a += b;
    b = rotl(b, R[round]) ^ a;
    if (round % 4 == 3) { /* inject key s = round / 4 + 1 */
      unsigned s = (unsigned)round / 4 + 1;
      a += k[s % 3];
      b += k[(s + 1) % 3] + s;
    }
  }
  out[0] = a;
  out[1] = b;
}

/* n words of key's stream: counters 0..m-1 (m = n rounded up to even,
 * the padding counter is 0) split in halves x0 = [0, m/2), x1 = [m/2, m);
 * hash (x0[i], x1[i]) -> words i and m/2 + i; the padding word is dropped. */
static void stream(const uint32_t key[2], int64_t n, uint32_t *w) {
  int64_t m = n + (n & 1), h = m / 2;
  for (int64_t i = 0; i < h; i++) {
    uint32_t ctr[2] = {(uint32_t)i, (uint32_t)(h + i < n ? h + i : 0)}, o[2];
    threefry(key, ctr, o);
    w[i] = o[0];
    if (h + i < n) w[h + i] = o[1];
  }
}

static void key_of(uint64_t seed, uint32_t k[2]) {
  k[0] = (uint32_t)(seed >> 32);
  k[1] = (uint32_t)seed;
}

/* ---- reference: arithmetic in the output dtype ---------------------------------------- */
static double rnd(double x, mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT32: return (float)x;
    case MX_FLOAT16: return mx__f16_to_f32(mx__f32_to_f16((float)x));
    case MX_BFLOAT16: return mx__bf16_to_f32(mx__f32_to_bf16((float)x));
    default: return x;
  }
}

/* float32 in [0, 1) from a word, capped below one of dt (MLX's uniform) */
static float unit(uint32_t b, mx_dtype dt) {
  float upper = dt == MX_FLOAT16 ? 0.99951171875f : dt == MX_BFLOAT16 ? 0.99609375f
                                                                       : nextafterf(1.0f, 0.0f);
  float f = (float)b / (float)4294967295.0;
  return f < upper ? f : upper;
}

/* lo + (hi - lo) * u in dt (lo, hi already in dt) */
static double scale_unit(uint32_t b, double lo, double hi, mx_dtype dt) {
  double u = rnd(unit(b, dt), dt), range = rnd(hi - lo, dt);
  return rnd(rnd(range * u, dt) + lo, dt);
}

/* The largest value of dt below h > 0 (h normal, in dt): one unit in the
 * last place of dt's significand lower, half that at a power of two. */
static double prev_value(double h, mx_dtype dt) {
  int bits = dt == MX_FLOAT64 ? 53 : dt == MX_FLOAT32 ? 24 : dt == MX_FLOAT16 ? 11 : 8, e;
  double m = frexp(h, &e);
  return h - ldexp(1.0, m == 0.5 ? e - 1 - bits : e - bits);
}

/* erfinv by bisection on erf (monotone): independent of the library's. */
static double erfinv_ref(double y) {
  if (y <= -1) return -INFINITY;
  if (y >= 1) return INFINITY;
  double a = -7, b = 7;
  for (int i = 0; i < 200 && b - a > 0; i++) {
    double m = 0.5 * (a + b);
    if (m == a || m == b) break;
    if (erf(m) < y) a = m;
    else b = m;
  }
  return 0.5 * (a + b);
}

static double gumbel_of(uint32_t b, mx_dtype dt) {
  double u = scale_unit(b, 0.0, 1.0, dt);
  double l = rnd(-rnd(log(u), dt), dt);
  return rnd(-rnd(log(l), dt), dt);
}

static int f_random(const mx_opcase *c, const double *const *in, double *out, int64_t *s,
                    int *nd) {
  mx_dtype dt = c->dtypes[0];
  int64_t n = oc_size(c->shape[0], c->ndim[0]);
  uint32_t key[2];
  key_of(seed_of(c), key);
  *nd = c->ndim[0];
  memcpy(s, c->shape[0], sizeof(int64_t) * (size_t)*nd);
  int mode = c->ip[0];
  if (mode == R_KEY) {
    out[0] = key[0];
    out[1] = key[1];
    return 0;
  }
  if (mode == R_SPLIT) {
    n = 2 * (int64_t)c->ip[4];
    *nd = 2;
    s[0] = c->ip[4];
    s[1] = 2;
  }
  if (mode == R_CATEGORICAL) return -1; /* has its own reference */
  uint32_t *w = malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
  if (mode == R_BITS_VIEW_KEY) {
    uint32_t sp[8];
    stream(key, 8, sp);
    uint32_t k2[2] = {sp[0], sp[2]};
    stream(k2, n, w);
  } else {
    stream(key, n, w);
  }
  for (int64_t i = 0; i < n; i++) {
    double r = 0;
    switch (mode) {
      case R_SPLIT:
      case R_BITS:
      case R_BITS_VIEW_KEY: r = w[i]; break;
      case R_UNIFORM: {
        double hi = rnd(c->dp[1], dt);
        r = scale_unit(w[i], rnd(c->dp[0], dt), hi, dt);
        if (r >= hi) r = prev_value(hi, dt); /* [lo, hi) even where rounding reaches hi */
        break;
      }
      case R_NORMAL: {
        double u = scale_unit(w[i], nextafterf(-1.0f, 0.0f), 1.0, MX_FLOAT32);
        double e = rnd(rnd(erfinv_ref(u), MX_FLOAT32), dt);
        double sc = rnd(sqrt(2.0), dt);
        if (c->dp[1] != 1.0) sc = rnd(sc * rnd(c->dp[1], dt), dt);
        r = rnd(sc * e, dt);
        if (c->dp[0] != 0.0) r = rnd(rnd(c->dp[0], dt) + r, dt);
        break;
      }
      case R_TRUNC: {
        double sq = rnd(sqrt(2.0), dt), lo = rnd(c->dp[0], dt), hi = rnd(c->dp[1], dt);
        double a = rnd(erf(rnd(lo / sq, dt)), dt), b = rnd(erf(rnd(hi / sq, dt)), dt);
        double u = scale_unit(w[i], a, b, dt);
        r = rnd(sq * rnd(erfinv_ref(u), dt), dt);
        r = r > hi ? hi : r;
        r = r < lo ? lo : r;
        break;
      }
      case R_BERNOULLI: {
        float upper = nextafterf(4294967296.0f, FLT_MAX);
        r = (float)w[i] < (float)c->dp[0] * upper;
        break;
      }
      case R_GUMBEL: r = gumbel_of(w[i], dt); break;
    }
    out[i] = r;
  }
  free(w);
  return 0;
}

/* randint: low + word % range (int64: 64-bit words from the two halves of
 * split(key)), wrapped to the dtype. */
static int f_randint(const mx_opcase *c, const double *const *in, double *out, int64_t *s,
                     int *nd) {
  mx_dtype dt = c->dtypes[0];
  int64_t n = oc_size(c->shape[0], c->ndim[0]);
  int64_t low = (int64_t)c->dp[0], high = (int64_t)c->dp[1];
  uint64_t range = high <= low ? 1 : (uint64_t)high - (uint64_t)low;
  uint32_t key[2];
  key_of(seed_of(c), key);
  *nd = c->ndim[0];
  memcpy(s, c->shape[0], sizeof(int64_t) * (size_t)*nd);
  uint32_t *lo = malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
  uint32_t *hi = malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
  if (dt == MX_INT64) {
    uint32_t sp[4];
    stream(key, 4, sp);
    uint32_t k1[2] = {sp[0], sp[1]}, k2[2] = {sp[2], sp[3]};
    stream(k1, n, lo);
    stream(k2, n, hi);
  } else {
    stream(key, n, lo);
  }
  for (int64_t i = 0; i < n; i++) {
    uint64_t raw = dt == MX_INT64 ? ((uint64_t)hi[i] << 32 | lo[i]) : lo[i];
    uint64_t v = (uint64_t)low + raw % range;
    switch (dt) {
      case MX_BOOL: out[i] = v != 0; break;
      case MX_UINT8: out[i] = (uint8_t)v; break;
      case MX_UINT32: out[i] = (uint32_t)v; break;
      case MX_INT32: out[i] = (int32_t)(uint32_t)v; break;
      default: out[i] = (double)(int64_t)v; break;
    }
  }
  free(lo);
  free(hi);
  return 0;
}

/* categorical: argmax over axis of gumbel(float32, shape logits.shape [+ ns])
 * + logits; logits rounded to their dtype, sum in float32 (or float64). */
static int f_categorical(const mx_opcase *c, const double *const *in, double *out, int64_t *s,
                         int *nd) {
  int ndim = c->ndim[0], ax = c->ip[3] < 0 ? c->ip[3] + ndim : c->ip[3], ns = c->ip[4];
  const int64_t *ls = c->shape[0];
  int64_t V = ls[ax], outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= ls[d];
  for (int d = ax + 1; d < ndim; d++) inner *= ls[d];
  int64_t S = ns > 0 ? ns : 1;
  int64_t gn = outer * V * inner * S;
  uint32_t key[2];
  key_of(seed_of(c), key);
  uint32_t *w = malloc(sizeof(uint32_t) * (size_t)gn);
  stream(key, gn, w);
  mx_dtype sum_dt = c->dtypes[0] == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32;
  *nd = 0;
  for (int d = 0; d < ndim; d++)
    if (d != ax) s[(*nd)++] = ls[d];
  if (ns > 0) s[(*nd)++] = ns;
  int64_t o_i = 0;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++)
      for (int64_t smp = 0; smp < S; smp++) {
        double best = -INFINITY;
        int64_t arg = 0;
        for (int64_t v = 0; v < V; v++) {
          int64_t li = (o * V + v) * inner + i;
          double g = gumbel_of(w[li * S + smp], MX_FLOAT32);
          double x = rnd(g + in[0][li], sum_dt);
          if (v == 0 || x > best) { /* first maximum, as argmax */
            best = x;
            arg = v;
          }
        }
        out[o_i++] = (double)arg;
      }
  free(w);
  return 0;
}

/* ---- cases ------------------------------------------------------------------------------
 * One dtype per case: the references round to it step by step. */
#define RC(name, d, mode, seed, DT, p0, p1, ref_, nd_, ...)                                 \
  {.op = name, .desc = d, .nin = 1, .ndim = {nd_}, .shape = {{__VA_ARGS__}}, .lo = 0,      \
   .hi = 1, OC_DT(DT), .flags = OC_NO_GRAD, .ip = {mode, seed, 0, 0, 0}, .dp = {p0, p1},   \
   .build = b_random, .ref = ref_}
#define RCF(name, d, mode, seed, p0, p1, nd_, ...)                                            \
  RC(name, d, mode, seed, MX_FLOAT32, p0, p1, f_random, nd_, __VA_ARGS__),                    \
  RC(name, d, mode, seed, MX_FLOAT64, p0, p1, f_random, nd_, __VA_ARGS__),                    \
  RC(name, d, mode, seed, MX_FLOAT16, p0, p1, f_random, nd_, __VA_ARGS__),                    \
  RC(name, d, mode, seed, MX_BFLOAT16, p0, p1, f_random, nd_, __VA_ARGS__)
#define CAT(d, seed, DT, axis, ns, fl, nd_, ...)                                              \
  {.op = "random_categorical", .desc = d, .nin = 1, .ndim = {nd_}, .shape = {{__VA_ARGS__}}, \
   .lo = -2, .hi = 2, OC_DT(DT), .flags = OC_NO_GRAD | (fl),                                 \
   .ip = {R_CATEGORICAL, seed, 0, axis, ns}, .build = b_random, .ref = f_categorical}
#define U32 MX_UINT32

static const mx_opcase cases[] = {
    RC("random_key", "seed 42", R_KEY, 42, U32, 0, 0, f_random, 1, 2),
    {.op = "random_key", .desc = "seed above 2^32", .nin = 1, .ndim = {1}, .shape = {{2}},
     OC_DT(U32), .flags = OC_NO_GRAD, .ip = {R_KEY, 7, 3}, .build = b_random, .ref = f_random},
    {.op = "random_split", .desc = "3 keys", .nin = 1, .ndim = {2}, .shape = {{3, 2}},
     OC_DT(U32), .flags = OC_NO_GRAD, .ip = {R_SPLIT, 0, 0, 0, 3}, .build = b_random,
     .ref = f_random},
    {.op = "random_split", .desc = "0 keys", .nin = 1, .ndim = {2}, .shape = {{0, 2}},
     OC_DT(U32), .flags = OC_NO_GRAD, .ip = {R_SPLIT, 5, 0, 0, 0}, .build = b_random,
     .ref = f_random},
    RC("random_bits", "odd count", R_BITS, 0, U32, 0, 0, f_random, 2, 3, 5),
    RC("random_bits", "even count", R_BITS, 1234, U32, 0, 0, f_random, 2, 4, 8),
    RC("random_bits", "one word", R_BITS, 3, U32, 0, 0, f_random, 1, 1),
    RC("random_bits", "0-d", R_BITS, 9, U32, 0, 0, f_random, 0, 0),
    RC("random_bits", "empty", R_BITS, 9, U32, 0, 0, f_random, 2, 0, 4),
    RC("random_bits", "many words", R_BITS, 77, U32, 0, 0, f_random, 2, 257, 129),
    RC("random_bits", "strided key", R_BITS_VIEW_KEY, 11, U32, 0, 0, f_random, 1, 9),
    RCF("random_uniform", "[0, 1)", R_UNIFORM, 0, 0, 1, 2, 7, 9),
    RCF("random_uniform", "[-3, 5)", R_UNIFORM, 17, -3, 5, 3, 2, 3, 11),
    RCF("random_uniform", "0-d", R_UNIFORM, 5, 0, 1, 0, 0),
    RC("random_uniform", "empty", R_UNIFORM, 5, MX_FLOAT32, 0, 1, f_random, 2, 3, 0),
    RC("random_uniform", "rounding reaches high", R_UNIFORM, 19, MX_BFLOAT16, 10, 11, f_random, 1,
       300),
    RC("random_uniform", "rounding reaches high", R_UNIFORM, 19, MX_FLOAT16, 1000, 1001, f_random,
       1, 300),
    RCF("random_normal", "standard", R_NORMAL, 0, 0, 1, 2, 9, 13),
    RCF("random_normal", "loc 2, scale 0.5", R_NORMAL, 99, 2, 0.5, 1, 33),
    RCF("random_truncated_normal", "[-1, 2]", R_TRUNC, 4, -1, 2, 2, 6, 7),
    RC("random_truncated_normal", "[0.5, 3]", R_TRUNC, 8, MX_FLOAT32, 0.5, 3, f_random, 1, 21),
    RC("random_randint", "[0, 2)", R_RANDINT, 3, MX_BOOL, 0, 2, f_randint, 2, 5, 7),
    RC("random_randint", "[0, 2)", R_RANDINT, 3, MX_INT64, 0, 2, f_randint, 2, 5, 7),
    RC("random_randint", "[0, 200)", R_RANDINT, 6, MX_UINT8, 0, 200, f_randint, 2, 4, 9),
    RC("random_randint", "[0, 200)", R_RANDINT, 6, MX_UINT32, 0, 200, f_randint, 2, 4, 9),
    RC("random_randint", "[-1000, 1000)", R_RANDINT, 12, MX_INT32, -1000, 1000, f_randint, 1, 31),
    RC("random_randint", "[-1000, 1000)", R_RANDINT, 12, MX_INT64, -1000, 1000, f_randint, 1, 31),
    RC("random_randint", "wide int64", R_RANDINT, 13, MX_INT64, -1099511627776.0,
       1125899906842624.0, f_randint, 1, 17),
    RC("random_randint", "full uint32", R_RANDINT, 14, MX_UINT32, 0, 4294967296.0, f_randint, 1,
       17),
    RC("random_randint", "empty interval", R_RANDINT, 15, MX_INT32, 7, 7, f_randint, 1, 5),
    RC("random_bernoulli", "p 0.3", R_BERNOULLI, 21, MX_FLOAT32, 0.3, 0, f_random, 2, 8, 9),
    RC("random_bernoulli", "p 0", R_BERNOULLI, 22, MX_FLOAT32, 0, 0, f_random, 1, 10),
    RC("random_bernoulli", "p 1", R_BERNOULLI, 23, MX_FLOAT32, 1, 0, f_random, 1, 10),
    RCF("random_gumbel", "standard", R_GUMBEL, 31, 0, 0, 2, 5, 11),
    CAT("last axis", 41, MX_FLOAT32, -1, 0, OC_NONCONTIG, 2, 4, 6),
    CAT("last axis", 41, MX_BFLOAT16, -1, 0, OC_NONCONTIG, 2, 4, 6),
    CAT("axis 0, 5 samples", 42, MX_FLOAT64, 0, 5, OC_NONCONTIG, 2, 5, 3),
    CAT("axis 0, 5 samples", 42, MX_FLOAT16, 0, 5, OC_NONCONTIG, 2, 5, 3),
    CAT("middle axis, 3 samples", 43, MX_FLOAT32, 1, 3, 0, 3, 2, 4, 3),
};

const mx_opcase_table mx_opcases_random = {cases, (int)(sizeof cases / sizeof *cases)};
