/* random.c — splittable counter-based random numbers (MLX/JAX design).
 *
 * One primitive, RANDOM_BITS: uint32 words from Threefry-2x32 over counters
 * (layout in random_params.h), optionally reduced to integers low + word %
 * range in the kernel (randint). Everything else is built from it with
 * ordinary ops, following mlx/random.cpp step by step so that the same key
 * gives the same numbers as MLX where the arithmetic allows (docs/random.md
 * says exactly where). The global key is split eagerly under a mutex. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "ops_internal.h"
#include "random_params.h"

/* ---- the global key ---------------------------------------------------------- */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static bool g_seeded;
static uint32_t g_key[2];

static void key_of_seed(uint64_t seed, uint32_t k[2]) {
  k[0] = (uint32_t)(seed >> 32);
  k[1] = (uint32_t)seed;
}

void mx_random_seed(uint64_t seed) {
  pthread_mutex_lock(&g_mu);
  key_of_seed(seed, g_key);
  g_seeded = true;
  pthread_mutex_unlock(&g_mu);
}

/* MLX's KeySequence::next(): split the global key in two, keep the first
 * half as the new global key, hand out the second. Unseeded, the key starts
 * from the time in milliseconds (as MLX). */
static void next_global_key(uint32_t out[2]) {
  pthread_mutex_lock(&g_mu);
  if (!g_seeded) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    key_of_seed((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u, g_key);
    g_seeded = true;
  }
  /* split(key, 2) = bits of shape (2, 2): words 0..3 */
  uint32_t w[4], p[2];
  mx__random_pair(g_key[0], g_key[1], 4, 0, p);
  w[0] = p[0];
  w[2] = p[1];
  mx__random_pair(g_key[0], g_key[1], 4, 1, p);
  w[1] = p[0];
  w[3] = p[1];
  g_key[0] = w[0];
  g_key[1] = w[1];
  out[0] = w[2];
  out[1] = w[3];
  pthread_mutex_unlock(&g_mu);
}

/* A new reference to the key an op uses: `key` (checked) or, for NULL, a
 * fresh key split off the global one. */
static mx_array *use_key(const char *op, mx_array *key) {
  if (!key) {
    uint32_t k[2];
    next_global_key(k);
    return mx_array_from_data(k, (const int64_t[]){2}, 1, MX_UINT32);
  }
  if (key->dtype != MX_UINT32 || key->ndim != 1 || key->shape[0] != 2) {
    char d[128];
    mx__set_error(MX_ERR_INVALID_ARG, "%s: a key is a uint32 array of shape [2], got %s", op,
                  mx_array_describe(key, d, sizeof d));
    return NULL;
  }
  return mx_array_retain(key);
}

mx_array *mx_random_key(uint64_t seed) {
  uint32_t k[2];
  key_of_seed(seed, k);
  return mx_array_from_data(k, (const int64_t[]){2}, 1, MX_UINT32);
}

/* ---- the primitive ---------------------------------------------------------------- */
static int vjp_zero(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(cot);
  for (int i = 0; i < out->ninputs; i++) {
    if (!need[i]) continue;
    g[i] = mx_zeros_like(out->inputs[i]);
    if (!g[i]) return mx_last_status();
  }
  return MX_OK;
}
static int vmap_bits(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax);
static const mx__op_def def_RANDOM_BITS = {.id = MX_OP_RANDOM_BITS, .vjp = vjp_zero,
                                           .vmap = vmap_bits, .zero_grad = true};

/* Batching rule: the kernel takes key arrays of shape (K..., 2) and writes
 * K streams of params.shape each, so batched keys move to the front (an
 * unbatched second key is broadcast) and the output gets the batch axis
 * first. As MLX, each batch element draws from its own key. */
static int vmap_bits(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  const mx__random_params *p = MX__PARAMS(out, mx__random_params);
  int nk = out->ninputs;
  int64_t B = 1;
  for (int i = nk - 1; i >= 0; i--)
    if (ax[i] >= 0) B = in[i]->shape[ax[i]];
  if (out->ndim + 1 > MX_MAX_NDIM)
    return mx__set_error(MX_ERR_SHAPE, "vmap of 'random_bits': result would have %d dimensions",
                         out->ndim + 1);
  mx__tmp t = {0};
  mx_array *keys[2] = {NULL, NULL};
  for (int i = 0; i < nk; i++) {
    mx_array *k = in[i];
    if (ax[i] > 0) keys[i] = mx__keep(&t, mx_moveaxis(k, ax[i], 0));
    else if (ax[i] == 0) keys[i] = k;
    else {
      int64_t s[MX_MAX_NDIM];
      s[0] = B;
      memcpy(s + 1, k->shape, sizeof(int64_t) * (size_t)k->ndim);
      keys[i] = mx__keep(&t, mx_broadcast_to(k, s, k->ndim + 1));
    }
    if (!keys[i]) {
      mx__tmp_free(&t);
      return mx_last_status();
    }
  }
  int64_t shape[MX_MAX_NDIM];
  shape[0] = B;
  memcpy(shape + 1, out->shape, sizeof(int64_t) * (size_t)out->ndim);
  *res = mx__node_new(&def_RANDOM_BITS, out->dtype, shape, out->ndim + 1, keys, nk, p, sizeof *p);
  *oax = 0;
  mx__tmp_free(&t);
  return *res ? MX_OK : mx_last_status();
}

static int check_shape(const char *op, const int64_t *shape, int ndim) {
  if (ndim < 0 || ndim > MX_MAX_NDIM || (ndim > 0 && !shape))
    return mx__set_error(MX_ERR_SHAPE, "%s: invalid shape (%d dimensions%s)", op, ndim,
                         ndim > 0 && !shape ? ", NULL shape" : "");
  return mx__check_shape(op, shape, ndim);
}

static mx_array *bits_node(const char *op, const int64_t *shape, int ndim, mx_dtype dt,
                           mx_array **keys, int nkeys, int mode, int64_t low, uint64_t range) {
  if (check_shape(op, shape, ndim)) return NULL;
  mx__random_params p;
  memset(&p, 0, sizeof p);
  if (ndim) memcpy(p.shape, shape, sizeof(int64_t) * (size_t)ndim);
  p.ndim = ndim;
  p.mode = mode;
  p.low = low;
  p.range = range;
  return mx__node_new(&def_RANDOM_BITS, dt, shape, ndim, keys, nkeys, &p, sizeof p);
}

/* uint32 bits of `shape` from key (NULL: global), errors naming op. */
static mx_array *bits(const char *op, const int64_t *shape, int ndim, mx_array *key) {
  if (check_shape(op, shape, ndim)) return NULL;
  mx_array *k = use_key(op, key);
  if (!k) return NULL;
  mx_array *r = bits_node(op, shape, ndim, MX_UINT32, &k, 1, MX__RANDOM_RAW, 0, 0);
  mx_array_free(k);
  return r;
}

mx_array *mx_random_bits(const int64_t *shape, int ndim, mx_array *key) {
  return bits("random_bits", shape, ndim, key);
}

mx_array *mx_random_split(mx_array *key, int num) {
  if (num < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "random_split: number of keys %d is negative", num);
    return NULL;
  }
  return bits("random_split", (const int64_t[]){num, 2}, 2, key);
}

/* ---- uniform and what is built on it -------------------------------------------- */
static bool check_float(const char *op, mx_dtype dt) {
  if ((unsigned)dt < MX_DTYPE_COUNT && mx_dtype_is_float(dt)) return true;
  mx__set_error(MX_ERR_DTYPE, "%s: dtype %s is not a floating-point type", op,
                (unsigned)dt < MX_DTYPE_COUNT ? mx_dtype_name(dt) : "(invalid)");
  return false;
}

/* The largest value below 1 of dt, as float32 (MLX's below_one). float64
 * uses float32's: the samples carry float32's resolution (see docs). */
static float below_one(mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT16: return 0.99951171875f; /* 0x3bff */
    case MX_BFLOAT16: return 0.99609375f;   /* 0x3f7f */
    default: return nextafterf(1.0f, 0.0f);
  }
}

/* mlx::random::uniform: bits / UINT32_MAX in float32, capped below one,
 * cast to dt, then lo + (hi - lo) * u in dt. lo and hi are 0-d arrays. */
static mx_array *uniform_arrays(const char *op, mx_array *lo, mx_array *hi,
                                const int64_t *shape, int ndim, mx_dtype dt, mx_array *key) {
  if (!check_float(op, dt)) return NULL;
  MX__CHECK_IN(op, lo, hi);
  mx__tmp t = {0};
  mx_array *b = mx__keep(&t, bits(op, shape, ndim, key));
  mx_array *f = mx__keep(&t, mx_astype(b, MX_FLOAT32));
  mx_array *maxval = mx__keep(&t, mx_array_scalar(4294967295.0, MX_FLOAT32));
  f = mx__keep(&t, mx_divide(f, maxval));
  mx_array *upper = mx__keep(&t, mx_array_scalar(below_one(dt), MX_FLOAT32));
  f = mx__keep(&t, mx_minimum(f, upper));
  f = mx__keep(&t, mx_astype(f, dt));
  mx_array *l = mx__keep(&t, mx_astype(lo, dt));
  mx_array *h = mx__keep(&t, mx_astype(hi, dt));
  mx_array *range = mx__keep(&t, mx_subtract(h, l));
  mx_array *r = mx_add(mx__keep(&t, mx_multiply(range, f)), l);
  mx__tmp_free(&t);
  return r;
}

/* x rounded to dt (float64 holds every value of the float dtypes). */
static double round_to(double x, mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT32: return (float)x;
    case MX_FLOAT16: return mx__f16_to_f32(mx__f32_to_f16((float)x));
    case MX_BFLOAT16: return mx__bf16_to_f32(mx__f32_to_bf16((float)x));
    default: return x;
  }
}

/* The largest value of dt below x (x finite, in dt). */
static double below(double x, mx_dtype dt) {
  if (dt == MX_FLOAT64) return nextafter(x, -INFINITY);
  if (dt == MX_FLOAT32) return nextafterf((float)x, -INFINITY);
  bool f16 = dt == MX_FLOAT16;
  uint16_t h = f16 ? mx__f32_to_f16((float)x) : mx__f32_to_bf16((float)x);
  if ((h & 0x7fffu) == 0) h = 0x8001u; /* +-0 -> the negative smallest subnormal */
  else if (h & 0x8000u) h++;           /* negative: away from zero */
  else h--;
  return f16 ? mx__f16_to_f32(h) : mx__bf16_to_f32(h);
}

mx_array *mx_random_uniform(double low, double high, const int64_t *shape, int ndim,
                            mx_dtype dt, mx_array *key) {
  const char *op = "random_uniform";
  if (!check_float(op, dt)) return NULL;
  mx__tmp t = {0};
  mx_array *lo = mx__keep(&t, mx_array_scalar(low, dt));
  mx_array *hi = mx__keep(&t, mx_array_scalar(high, dt));
  mx_array *r = uniform_arrays(op, lo, hi, shape, ndim, dt, key);
  /* In a narrow dtype (hi - lo) * below_one + lo can round up to hi (e.g.
   * bfloat16 in [10, 11)). The largest sample is the one at below_one, so
   * check it here and clamp only when it reaches hi: values MLX would give
   * inside [lo, hi) are unchanged. */
  double l = round_to(low, dt), h = round_to(high, dt);
  if (r && isfinite(l) && isfinite(h) && l < h) {
    double top = round_to(round_to(round_to(h - l, dt) * round_to(below_one(dt), dt), dt) + l, dt);
    if (top >= h) {
      mx_array *x = r;
      r = mx_minimum(x, mx__keep(&t, mx_array_scalar(below(h, dt), dt)));
      mx_array_free(x);
    }
  }
  mx__tmp_free(&t);
  return r;
}

/* mlx::random::normal: u uniform in (-1, 1) (float32), sqrt(2) * erfinv(u)
 * cast to dt, then scale and loc in dt. */
mx_array *mx_random_normal(const int64_t *shape, int ndim, mx_dtype dt, double loc,
                           double scale, mx_array *key) {
  const char *op = "random_normal";
  if (!check_float(op, dt)) return NULL;
  mx__tmp t = {0};
  mx_array *lo = mx__keep(&t, mx_array_scalar(nextafterf(-1.0f, 0.0f), MX_FLOAT32));
  mx_array *hi = mx__keep(&t, mx_array_scalar(1.0, MX_FLOAT32));
  mx_array *u = mx__keep(&t, uniform_arrays(op, lo, hi, shape, ndim, MX_FLOAT32, key));
  mx_array *e = mx__keep(&t, mx_astype(mx__keep(&t, mx_erfinv(u)), dt));
  mx_array *s = mx__keep(&t, mx_array_scalar(sqrt(2.0), dt));
  if (scale != 1.0) s = mx__keep(&t, mx_multiply(s, mx__keep(&t, mx_array_scalar(scale, dt))));
  mx_array *r = mx_multiply(s, e);
  if (r && loc != 0.0) {
    mx_array *x = r;
    r = mx_add(mx__keep(&t, mx_array_scalar(loc, dt)), x);
    mx_array_free(x);
  }
  mx__tmp_free(&t);
  return r;
}

/* mlx::random::truncated_normal (JAX's): u uniform in [erf(lower/sqrt2),
 * erf(upper/sqrt2)) in dt, sqrt(2) * erfinv(u), clipped to [lower, upper]. */
mx_array *mx_random_truncated_normal(double lower, double upper, const int64_t *shape,
                                     int ndim, mx_dtype dt, mx_array *key) {
  const char *op = "random_truncated_normal";
  if (!check_float(op, dt)) return NULL;
  mx__tmp t = {0};
  mx_array *sqrt2 = mx__keep(&t, mx_array_scalar(sqrt(2.0), dt));
  mx_array *lo = mx__keep(&t, mx_array_scalar(lower, dt));
  mx_array *hi = mx__keep(&t, mx_array_scalar(upper, dt));
  mx_array *a = mx__keep(&t, mx_erf(mx__keep(&t, mx_divide(lo, sqrt2))));
  mx_array *b = mx__keep(&t, mx_erf(mx__keep(&t, mx_divide(hi, sqrt2))));
  mx_array *u = mx__keep(&t, uniform_arrays(op, a, b, shape, ndim, dt, key));
  mx_array *x = mx__keep(&t, mx_multiply(sqrt2, mx__keep(&t, mx_erfinv(u))));
  mx_array *r = mx_maximum(mx__keep(&t, mx_minimum(hi, x)), lo);
  mx__tmp_free(&t);
  return r;
}

/* -log(-log(u)), u uniform in [0, 1). */
mx_array *mx_random_gumbel(const int64_t *shape, int ndim, mx_dtype dt, mx_array *key) {
  const char *op = "random_gumbel";
  if (!check_float(op, dt)) return NULL;
  mx__tmp t = {0};
  mx_array *lo = mx__keep(&t, mx_array_scalar(0.0, dt));
  mx_array *hi = mx__keep(&t, mx_array_scalar(1.0, dt));
  mx_array *u = mx__keep(&t, uniform_arrays(op, lo, hi, shape, ndim, dt, key));
  mx_array *l = mx__keep(&t, mx_negative(mx__keep(&t, mx_log(u))));
  mx_array *r = mx_negative(mx__keep(&t, mx_log(l)));
  mx__tmp_free(&t);
  return r;
}

/* bits < p * nextafter(float(UINT32_MAX), inf), compared in float32 (MLX):
 * p <= 0 gives all false, p >= 1 all true. */
mx_array *mx_random_bernoulli(double p, const int64_t *shape, int ndim, mx_array *key) {
  const char *op = "random_bernoulli";
  float upper = nextafterf((float)UINT32_MAX, FLT_MAX);
  float threshold = (float)p * upper;
  mx__tmp t = {0};
  mx_array *b = mx__keep(&t, bits(op, shape, ndim, key));
  mx_array *f = mx__keep(&t, mx_astype(b, MX_FLOAT32));
  mx_array *r = mx_less(f, mx__keep(&t, mx_array_scalar(threshold, MX_FLOAT32)));
  mx__tmp_free(&t);
  return r;
}

/* ---- randint ------------------------------------------------------------------------ */
static void int_limits(mx_dtype dt, int64_t *mn, int64_t *mx) {
  switch (dt) {
    case MX_BOOL: *mn = 0; *mx = 1; break;
    case MX_UINT8: *mn = 0; *mx = UINT8_MAX; break;
    case MX_UINT32: *mn = 0; *mx = UINT32_MAX; break;
    case MX_INT32: *mn = INT32_MIN; *mx = INT32_MAX; break;
    default: *mn = INT64_MIN; *mx = INT64_MAX; break;
  }
}

/* As MLX: low + bits % (high - low) computed exactly in 64-bit integers
 * (int64 output: 64-bit words from two keys, split off `key`); an empty
 * interval (high <= low) gives low everywhere. */
mx_array *mx_random_randint(int64_t low, int64_t high, const int64_t *shape, int ndim,
                            mx_dtype dt, mx_array *key) {
  const char *op = "random_randint";
  if ((unsigned)dt >= MX_DTYPE_COUNT || mx_dtype_is_float(dt)) {
    mx__set_error(MX_ERR_DTYPE, "random_randint: dtype %s is not an integer or bool type",
                  (unsigned)dt < MX_DTYPE_COUNT ? mx_dtype_name(dt) : "(invalid)");
    return NULL;
  }
  int64_t mn, mx;
  int_limits(dt, &mn, &mx);
  bool empty = high <= low;
  if (low < mn || low > mx || (!empty && high - 1 > mx)) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "random_randint: interval [%lld, %lld) is outside the range of %s",
                  (long long)low, (long long)high, mx_dtype_name(dt));
    return NULL;
  }
  if (check_shape(op, shape, ndim)) return NULL;
  uint64_t range = empty ? 1 : (uint64_t)high - (uint64_t)low;
  mx__tmp t = {0};
  mx_array *r = NULL;
  if (dt == MX_INT64) {
    mx_array *k[2];
    if (key) {
      mx_array *kk = mx__keep(&t, use_key(op, key));
      mx_array *s = mx__keep(&t, mx_random_split(kk, 2));
      for (int i = 0; i < 2; i++)
        k[i] = mx__keep(&t, mx_reshape(mx__keep(&t, mx_slice_axis(s, 0, i, i + 1, 1)),
                                       (const int64_t[]){2}, 1));
    } else {
      k[0] = mx__keep(&t, use_key(op, NULL));
      k[1] = mx__keep(&t, use_key(op, NULL));
    }
    if (k[0] && k[1]) r = bits_node(op, shape, ndim, dt, k, 2, MX__RANDOM_RANGE64, low, range);
  } else {
    mx_array *k = mx__keep(&t, use_key(op, key));
    if (k) r = bits_node(op, shape, ndim, dt, &k, 1, MX__RANDOM_RANGE, low, range);
  }
  mx__tmp_free(&t);
  return r;
}

/* ---- categorical ----------------------------------------------------------------------- */
/* Gumbel-max: argmax(logits + gumbel) along axis. num_samples > 0 draws
 * that many per distribution into a new last axis (as MLX). */
mx_array *mx_random_categorical(mx_array *logits, int axis, int num_samples, mx_array *key) {
  const char *op = "random_categorical";
  MX__CHECK_IN(op, logits);
  int ax;
  if (logits->ndim == 0) {
    mx__set_error(MX_ERR_SHAPE, "%s: logits need at least one dimension", op);
    return NULL;
  }
  if (mx__norm_axis(op, axis, logits->ndim, &ax)) return NULL;
  if (num_samples < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: num_samples %d is negative", op, num_samples);
    return NULL;
  }
  if (logits->shape[ax] == 0) {
    char s[256];
    mx__set_error(MX_ERR_SHAPE, "%s: axis %d of logits %s is empty", op, axis,
                  mx__shape_str(logits->shape, logits->ndim, s, sizeof s));
    return NULL;
  }
  if (num_samples > 0 && logits->ndim + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "%s: logits with %d dimensions leave no room for samples", op,
                  logits->ndim);
    return NULL;
  }
  mx__tmp t = {0};
  int64_t gshape[MX_MAX_NDIM];
  int gnd = logits->ndim;
  memcpy(gshape, logits->shape, sizeof(int64_t) * (size_t)gnd);
  mx_array *l = logits;
  if (num_samples > 0) {
    gshape[gnd++] = num_samples;
    l = mx__keep(&t, mx_expand_dims(logits, (const int[]){-1}, 1));
  }
  mx_array *g = mx__keep(&t, mx_random_gumbel(gshape, gnd, MX_FLOAT32, key));
  mx_array *r = mx_argmax(mx__keep(&t, mx_add(g, l)), ax, false);
  mx__tmp_free(&t);
  return r;
}
