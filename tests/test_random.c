/* test_random.c — the random family: Threefry known answers, key layout
 * (JAX/MLX compatible), determinism (same key, any thread count, global
 * key after seeding, concurrent use of the global key), statistics of
 * every sampler on 1e5 samples (tolerances are >= 5 standard errors), and
 * build-time errors. Bit-exactness against the float64 reference is in
 * the op-parity cases (tests/support/opcases_random.c). */
#include <math.h>
#include <pthread.h>

#include "mxc/mxc.h"
#include "ops/random_params.h"
#include "test.h"

#define N 100000

/* Reads a (float) array into a new double buffer. */
static double *read_f64(mx_array *a) {
  int64_t n = mx_array_size(a);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (mx_array_copy_to(a, MX_FLOAT64, v, n)) {
    free(v);
    return NULL;
  }
  return v;
}

static void moments(const double *v, int64_t n, double *mean, double *var) {
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; i++) s += v[i];
  *mean = s / (double)n;
  for (int64_t i = 0; i < n; i++) s2 += (v[i] - *mean) * (v[i] - *mean);
  *var = s2 / (double)n;
}

static uint32_t *read_u32(mx_array *a) {
  int64_t n = mx_array_size(a);
  uint32_t *v = malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
  if (mx_array_copy_to(a, MX_UINT32, v, n)) {
    free(v);
    return NULL;
  }
  return v;
}

/* ---- the generator ----------------------------------------------------------- */
TEST(threefry_known_answers) {
  /* Random123's known-answer vectors for threefry2x32_20 */
  static const uint32_t kat[3][6] = {
      {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x6b200159, 0x99ba4efe},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x1cb996fc, 0xbb002be7},
      {0x13198a2e, 0x03707344, 0x243f6a88, 0x85a308d3, 0xc4923a9c, 0x483df7a0},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t o[2];
    mx__threefry2x32(kat[i][0], kat[i][1], kat[i][2], kat[i][3], o);
    ASSERT_EQ_INT(o[0], kat[i][4]);
    ASSERT_EQ_INT(o[1], kat[i][5]);
  }
}

TEST(key_from_seed) {
  mx_array *k = mx_random_key(0x0000000300000007ull);
  uint32_t *v = read_u32(k);
  ASSERT_NOT_NULL(v);
  ASSERT_EQ_INT(mx_array_dtype(k), MX_UINT32);
  ASSERT_EQ_INT(mx_array_ndim(k), 1);
  ASSERT_EQ_INT(v[0], 3);
  ASSERT_EQ_INT(v[1], 7);
  free(v);
  mx_array_free(k);
}

TEST(split_matches_jax) {
  /* jax.random.split(jax.random.PRNGKey(0)) (and mx.random.split(mx.random.key(0))) */
  mx_array *k = mx_random_key(0);
  mx_array *s = mx_random_split(k, 2);
  uint32_t *v = read_u32(s);
  ASSERT_NOT_NULL(v);
  ASSERT_EQ_INT(mx_array_shape(s)[0], 2);
  ASSERT_EQ_INT(mx_array_shape(s)[1], 2);
  static const uint32_t expect[4] = {4146024105u, 967050713u, 2718843009u, 1272950319u};
  for (int i = 0; i < 4; i++) ASSERT_EQ_INT(v[i], expect[i]);
  free(v);
  mx_array_free(s);
  mx_array_free(k);
}

TEST(bits_layout_odd_count) {
  /* 3 words: (w0, w2) from counter (0, 2), w1 from counter (1, 0) */
  mx_array *k = mx_random_key(5);
  mx_array *b = mx_random_bits((int64_t[]){3}, 1, k);
  uint32_t *v = read_u32(b);
  ASSERT_NOT_NULL(v);
  uint32_t h[2];
  mx__threefry2x32(0, 5, 0, 2, h);
  ASSERT_EQ_INT(v[0], h[0]);
  ASSERT_EQ_INT(v[2], h[1]);
  mx__threefry2x32(0, 5, 1, 0, h);
  ASSERT_EQ_INT(v[1], h[0]);
  free(v);
  mx_array_free(b);
  mx_array_free(k);
}

/* ---- determinism ---------------------------------------------------------------- */
static int same_arrays(mx_array *a, mx_array *b) {
  int64_t n = mx_array_size(a);
  if (n != mx_array_size(b) || mx_array_nbytes(a) != mx_array_nbytes(b)) return 0;
  const void *pa = mx_array_data(a), *pb = mx_array_data(b);
  return pa && pb && !memcmp(pa, pb, mx_array_nbytes(a));
}

TEST(same_key_same_numbers_any_thread_count) {
  int64_t shape[] = {1001, 513};
  mx_array *k = mx_random_key(123);
  int prev = mx_get_num_threads();
  mx_array *r[3][4];
  int threads[3] = {1, 2, 7};
  for (int t = 0; t < 3; t++) {
    mx_set_num_threads(threads[t]);
    r[t][0] = mx_random_bits(shape, 2, k);
    r[t][1] = mx_random_normal(shape, 2, MX_FLOAT32, 0, 1, k);
    r[t][2] = mx_random_randint(-5, 1 << 20, shape, 2, MX_INT64, k);
    r[t][3] = mx_random_categorical(r[t][1], -1, 3, k);
    ASSERT_OK(mx_eval(r[t], 4));
  }
  mx_set_num_threads(prev);
  for (int t = 1; t < 3; t++)
    for (int j = 0; j < 4; j++)
      ASSERT_MSG(same_arrays(r[0][j], r[t][j]), "output %d differs with %d threads", j,
                 threads[t]);
  for (int t = 0; t < 3; t++) mx_array_free_n(r[t], 4);
  mx_array_free(k);
}

TEST(global_key_follows_seed) {
  int64_t shape[] = {16};
  mx_random_seed(7);
  mx_array *a = mx_random_uniform(0, 1, shape, 1, MX_FLOAT32, NULL);
  mx_array *b = mx_random_uniform(0, 1, shape, 1, MX_FLOAT32, NULL);
  mx_random_seed(7);
  mx_array *c = mx_random_uniform(0, 1, shape, 1, MX_FLOAT32, NULL);
  /* as MLX: the first draw after seed(s) uses split(key(s))[1] */
  mx_array *k = mx_random_key(7);
  mx_array *s = mx_random_split(k, 2);
  mx_array *s1 = mx_slice_axis(s, 0, 1, 2, 1);
  mx_array *k1 = mx_reshape(s1, (int64_t[]){2}, 1);
  mx_array *d = mx_random_uniform(0, 1, shape, 1, MX_FLOAT32, k1);
  ASSERT_OK(mx_eval((mx_array *[]){a, b, c, d}, 4));
  ASSERT(same_arrays(a, c));
  ASSERT(same_arrays(a, d));
  ASSERT(!same_arrays(a, b));
  mx_array_free_n((mx_array *[]){a, b, c, d, k, s, s1, k1}, 8);
}

/* Threads drawing from the global key get distinct keys: together, exactly
 * the keys a single thread gets after the same seed. */
#define DRAWS 64
#define NTH 4
static void *draw_words(void *arg) {
  uint32_t *w = arg;
  for (int i = 0; i < DRAWS; i++) {
    mx_array *b = mx_random_bits((int64_t[]){1}, 1, NULL);
    if (!b || mx_array_copy_to(b, MX_UINT32, &w[i], 1)) w[i] = 0;
    mx_array_free(b);
  }
  return NULL;
}
static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}
TEST(global_key_is_thread_safe) {
  static uint32_t seq[NTH * DRAWS], par[NTH * DRAWS];
  mx_random_seed(99);
  for (int t = 0; t < NTH; t++) draw_words(seq + t * DRAWS);
  mx_random_seed(99);
  pthread_t th[NTH];
  for (int t = 0; t < NTH; t++)
    ASSERT_EQ_INT(pthread_create(&th[t], NULL, draw_words, par + t * DRAWS), 0);
  for (int t = 0; t < NTH; t++) pthread_join(th[t], NULL);
  qsort(seq, NTH * DRAWS, sizeof *seq, cmp_u32);
  qsort(par, NTH * DRAWS, sizeof *par, cmp_u32);
  for (int i = 0; i < NTH * DRAWS; i++) ASSERT_EQ_INT(seq[i], par[i]);
  for (int i = 1; i < NTH * DRAWS; i++) ASSERT(seq[i] != seq[i - 1]);
}

TEST(split_keys_are_independent) {
  mx_array *k = mx_random_key(2024);
  mx_array *s = mx_random_split(k, 8);
  uint32_t *kv = read_u32(s);
  ASSERT_NOT_NULL(kv);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < i; j++) ASSERT(kv[2 * i] != kv[2 * j] || kv[2 * i + 1] != kv[2 * j + 1]);
  /* uniforms from two subkeys: correlation ~ N(0, 1/sqrt(N)) */
  mx_array *ka = mx_array_from_data(kv, (int64_t[]){2}, 1, MX_UINT32);
  mx_array *kb = mx_array_from_data(kv + 2, (int64_t[]){2}, 1, MX_UINT32);
  mx_array *ua = mx_random_uniform(0, 1, (int64_t[]){N}, 1, MX_FLOAT64, ka);
  mx_array *ub = mx_random_uniform(0, 1, (int64_t[]){N}, 1, MX_FLOAT64, kb);
  mx_array *up = mx_random_uniform(0, 1, (int64_t[]){N}, 1, MX_FLOAT64, k);
  double *a = read_f64(ua), *b = read_f64(ub), *p = read_f64(up);
  ASSERT(a && b && p);
  double ma, va, mb, vb, mp, vp, cab = 0, cap = 0;
  moments(a, N, &ma, &va);
  moments(b, N, &mb, &vb);
  moments(p, N, &mp, &vp);
  for (int i = 0; i < N; i++) {
    cab += (a[i] - ma) * (b[i] - mb);
    cap += (a[i] - ma) * (p[i] - mp);
  }
  cab /= N * sqrt(va * vb);
  cap /= N * sqrt(va * vp);
  ASSERT_NEAR(cab, 0, 5 / sqrt(N));
  ASSERT_NEAR(cap, 0, 5 / sqrt(N));
  free(a);
  free(b);
  free(p);
  free(kv);
  mx_array_free_n((mx_array *[]){k, s, ka, kb, ua, ub, up}, 7);
}

/* ---- statistics --------------------------------------------------------------------- */
static void check_uniform(double lo, double hi, mx_dtype dt, uint64_t seed) {
  mx_array *k = mx_random_key(seed);
  mx_array *u = mx_random_uniform(lo, hi, (int64_t[]){N}, 1, dt, k);
  ASSERT_NOT_NULL(u);
  ASSERT_EQ_INT(mx_array_dtype(u), dt);
  double *v = read_f64(u), m, var;
  ASSERT_NOT_NULL(v);
  double mn = INFINITY, mx = -INFINITY;
  for (int i = 0; i < N; i++) {
    mn = fmin(mn, v[i]);
    mx = fmax(mx, v[i]);
  }
  moments(v, N, &m, &var);
  double w = hi - lo;
  ASSERT(mn >= lo);
  ASSERT(mx < hi);
  double coarse = dt == MX_BFLOAT16 ? 0.004 : 0; /* bfloat16 rounding of the samples */
  ASSERT_NEAR(m, (lo + hi) / 2, 5 * w * 0.2887 / sqrt(N) + coarse * w);
  ASSERT_NEAR(var, w * w / 12, 5 * w * w * 0.0745 / sqrt(N) + coarse * w * w);
  free(v);
  mx_array_free(u);
  mx_array_free(k);
}
TEST(uniform_statistics) {
  check_uniform(0, 1, MX_FLOAT32, 1);
  check_uniform(-3, 5, MX_FLOAT32, 2);
  check_uniform(-3, 5, MX_FLOAT64, 3);
  check_uniform(0, 1, MX_FLOAT16, 4);
  check_uniform(10, 11, MX_BFLOAT16, 5);
}

TEST(normal_statistics) {
  mx_array *k = mx_random_key(11);
  mx_array *z = mx_random_normal((int64_t[]){N}, 1, MX_FLOAT32, 0, 1, k);
  mx_array *y = mx_random_normal((int64_t[]){100, N / 100}, 2, MX_FLOAT64, 3, 0.5, k);
  double *a = read_f64(z), *b = read_f64(y), m, v;
  ASSERT(a && b);
  moments(a, N, &m, &v);
  ASSERT_NEAR(m, 0, 5 / sqrt(N));
  ASSERT_NEAR(v, 1, 5 * sqrt(2.0 / N));
  int tail = 0;
  for (int i = 0; i < N; i++) tail += fabs(a[i]) > 1.959964;
  ASSERT_NEAR(tail / (double)N, 0.05, 5 * sqrt(0.05 * 0.95 / N));
  moments(b, N, &m, &v);
  ASSERT_NEAR(m, 3, 5 * 0.5 / sqrt(N));
  ASSERT_NEAR(v, 0.25, 5 * 0.25 * sqrt(2.0 / N));
  free(a);
  free(b);
  mx_array_free_n((mx_array *[]){k, z, y}, 3);
}

static double phi(double x) { return exp(-x * x / 2) / sqrt(2 * M_PI); }
static double Phi(double x) { return 0.5 * erfc(-x / sqrt(2)); }
TEST(truncated_normal_statistics) {
  double lo = -1, hi = 2;
  mx_array *k = mx_random_key(12);
  mx_array *t = mx_random_truncated_normal(lo, hi, (int64_t[]){N}, 1, MX_FLOAT32, k);
  double *v = read_f64(t), m, var;
  ASSERT_NOT_NULL(v);
  for (int i = 0; i < N; i++) ASSERT(v[i] >= lo && v[i] <= hi);
  moments(v, N, &m, &var);
  double Z = Phi(hi) - Phi(lo), mean = (phi(lo) - phi(hi)) / Z;
  double var_t = 1 + (lo * phi(lo) - hi * phi(hi)) / Z - mean * mean;
  ASSERT_NEAR(m, mean, 5 * sqrt(var_t / N));
  ASSERT_NEAR(var, var_t, 5 * var_t * sqrt(2.0 / N));
  free(v);
  mx_array_free(t);
  /* a one-sided tail far from 0 still respects its bounds */
  t = mx_random_truncated_normal(2.5, 4, (int64_t[]){1000}, 1, MX_FLOAT32, k);
  v = read_f64(t);
  ASSERT_NOT_NULL(v);
  for (int i = 0; i < 1000; i++) ASSERT(v[i] >= 2.5 && v[i] <= 4);
  free(v);
  mx_array_free(t);
  mx_array_free(k);
}

TEST(randint_range_and_frequencies) {
  mx_array *k = mx_random_key(13);
  mx_dtype dts[] = {MX_INT32, MX_INT64, MX_UINT8, MX_UINT32};
  for (int d = 0; d < 4; d++) {
    int64_t lo = dts[d] == MX_UINT8 || dts[d] == MX_UINT32 ? 3 : -7, hi = lo + 10;
    mx_array *r = mx_random_randint(lo, hi, (int64_t[]){N}, 1, dts[d], k);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_INT(mx_array_dtype(r), dts[d]);
    double *v = read_f64(r);
    ASSERT_NOT_NULL(v);
    int count[10] = {0};
    for (int i = 0; i < N; i++) {
      ASSERT(v[i] >= lo && v[i] < hi && v[i] == floor(v[i]));
      count[(int)(v[i] - lo)]++;
    }
    for (int j = 0; j < 10; j++) ASSERT_NEAR(count[j] / (double)N, 0.1, 5 * sqrt(0.09 / N));
    free(v);
    mx_array_free(r);
  }
  /* full byte range and a wide int64 range */
  mx_array *r = mx_random_randint(0, 256, (int64_t[]){N}, 1, MX_UINT8, k);
  double *v = read_f64(r);
  ASSERT_NOT_NULL(v);
  int seen[256] = {0}, distinct = 0;
  for (int i = 0; i < N; i++) distinct += !seen[(int)v[i]]++;
  ASSERT_EQ_INT(distinct, 256);
  free(v);
  mx_array_free(r);
  int64_t big_lo = -(1ll << 62), big_hi = (1ll << 62) + 12345;
  r = mx_random_randint(big_lo, big_hi, (int64_t[]){N}, 1, MX_INT64, k);
  int64_t *iv = malloc(sizeof(int64_t) * N);
  ASSERT_OK(mx_array_copy_to(r, MX_INT64, iv, N));
  int negative = 0;
  for (int i = 0; i < N; i++) {
    ASSERT(iv[i] >= big_lo && iv[i] < big_hi);
    negative += iv[i] < 0;
  }
  ASSERT_NEAR(negative / (double)N, 0.5, 5 * 0.5 / sqrt(N));
  free(iv);
  mx_array_free(r);
  mx_array_free(k);
}

TEST(bernoulli_rate) {
  mx_array *k = mx_random_key(14);
  double ps[] = {0.3, 0.0, 1.0, 0.999};
  for (int j = 0; j < 4; j++) {
    mx_array *b = mx_random_bernoulli(ps[j], (int64_t[]){N}, 1, k);
    ASSERT_NOT_NULL(b);
    ASSERT_EQ_INT(mx_array_dtype(b), MX_BOOL);
    double *v = read_f64(b), m, var;
    ASSERT_NOT_NULL(v);
    moments(v, N, &m, &var);
    ASSERT_NEAR(m, ps[j], 5 * sqrt(ps[j] * (1 - ps[j]) / N));
    free(v);
    mx_array_free(b);
  }
  mx_array_free(k);
}

TEST(categorical_frequencies) {
  double p[4] = {0.1, 0.2, 0.3, 0.4}, lp[4];
  for (int i = 0; i < 4; i++) lp[i] = log(p[i]) + 1.5; /* unnormalised */
  mx_array *logits = mx_array_from_data(lp, (int64_t[]){4}, 1, MX_FLOAT64);
  mx_array *l32 = mx_astype(logits, MX_FLOAT32);
  mx_array *k = mx_random_key(15);
  mx_array *c = mx_random_categorical(l32, 0, N, k);
  ASSERT_NOT_NULL(c);
  ASSERT_EQ_INT(mx_array_ndim(c), 1);
  ASSERT_EQ_INT(mx_array_shape(c)[0], N);
  ASSERT_EQ_INT(mx_array_dtype(c), MX_UINT32);
  uint32_t *v = read_u32(c);
  ASSERT_NOT_NULL(v);
  int count[4] = {0};
  for (int i = 0; i < N; i++) {
    ASSERT(v[i] < 4);
    count[v[i]]++;
  }
  for (int i = 0; i < 4; i++)
    ASSERT_NEAR(count[i] / (double)N, p[i], 5 * sqrt(p[i] * (1 - p[i]) / N));
  free(v);
  /* a batch of distributions along axis 0, one sample each: a certain row */
  double lb[6] = {0, -INFINITY, 0, -INFINITY, -INFINITY, 0};
  mx_array *lbatch = mx_array_from_data(lb, (int64_t[]){2, 3}, 2, MX_FLOAT64);
  mx_array *cb = mx_random_categorical(lbatch, 0, 0, k);
  ASSERT_NOT_NULL(cb);
  ASSERT_EQ_INT(mx_array_ndim(cb), 1);
  ASSERT_EQ_INT(mx_array_shape(cb)[0], 3);
  uint32_t *w = read_u32(cb);
  ASSERT_NOT_NULL(w);
  ASSERT_EQ_INT(w[0], 0);
  ASSERT_EQ_INT(w[1], 0);
  ASSERT_EQ_INT(w[2], 1);
  free(w);
  mx_array_free_n((mx_array *[]){logits, l32, k, c, lbatch, cb}, 6);
}

TEST(gumbel_statistics) {
  mx_array *k = mx_random_key(16);
  mx_array *g = mx_random_gumbel((int64_t[]){N}, 1, MX_FLOAT32, k);
  double *v = read_f64(g), m, var;
  ASSERT_NOT_NULL(v);
  moments(v, N, &m, &var);
  double var_g = M_PI * M_PI / 6;
  ASSERT_NEAR(m, 0.5772156649, 5 * sqrt(var_g / N));
  ASSERT_NEAR(var, var_g, 5 * sqrt(var_g * var_g * 4.4 / N)); /* kurtosis 5.4 */
  free(v);
  mx_array_free(g);
  mx_array_free(k);
}

/* ---- vmap over keys ---------------------------------------------------------------------- */
static int f_samplers(void *payload, mx_array **in, int n, mx_list *out) {
  (void)payload;
  (void)n;
  int64_t shape[] = {5};
  int st = mx_list_push(out, mx_random_uniform(-1, 1, shape, 1, MX_FLOAT32, in[0]));
  if (!st) st = mx_list_push(out, mx_random_normal(shape, 1, MX_BFLOAT16, 0, 1, in[0]));
  if (!st) st = mx_list_push(out, mx_random_randint(-9, 1ll << 40, shape, 1, MX_INT64, in[0]));
  return st;
}

/* vmap(f)(keys)[i] == f(keys[i]), batch axis first or last. */
TEST(vmap_over_keys) {
  mx_array *k = mx_random_key(77);
  mx_array *keys = mx_random_split(k, 4); /* (4, 2) */
  mx_closure *f = mx_closure_new(f_samplers, NULL, NULL);
  for (int variant = 0; variant < 2; variant++) {
    mx_closure *vf = mx_vmap(f, (int[]){variant}, 1, NULL, 0);
    mx_array *arg = variant ? mx_transpose(keys, NULL, 0) : mx_array_retain(keys);
    mx_list got = MX_LIST_INIT;
    ASSERT_OK(mx_closure_apply(vf, &arg, 1, &got));
    ASSERT_EQ_INT(got.size, 3);
    for (int i = 0; i < 4; i++) {
      mx_array *si = mx_slice_axis(keys, 0, i, i + 1, 1);
      mx_array *ki = mx_reshape(si, (int64_t[]){2}, 1);
      mx_array_free(si);
      mx_list want = MX_LIST_INIT;
      ASSERT_OK(mx_closure_apply(f, &ki, 1, &want));
      for (int j = 0; j < 3; j++) {
        mx_array *sl = mx_slice_axis(got.items[j], 0, i, i + 1, 1);
        mx_array *row = mx_squeeze(sl, (int[]){0}, 1);
        ASSERT_MSG(same_arrays(row, want.items[j]), "output %d, key %d, batch axis %d", j, i,
                   variant);
        mx_array_free(row);
        mx_array_free(sl);
      }
      mx_list_clear(&want);
      mx_array_free(ki);
    }
    mx_list_clear(&got);
    mx_array_free(arg);
    mx_closure_free(vf);
  }
  mx_closure_free(f);
  mx_array_free(keys);
  mx_array_free(k);
}

/* ---- laziness and errors ---------------------------------------------------------------- */
TEST(ops_are_lazy) {
  mx_array *k = mx_random_key(1);
  mx_array *u = mx_random_normal((int64_t[]){4, 4}, 2, MX_FLOAT32, 0, 1, k);
  ASSERT(!mx_array_is_evaluated(u));
  ASSERT_OK(mx_array_eval(u));
  ASSERT(mx_array_is_evaluated(u));
  mx_array_free(u);
  mx_array_free(k);
}

TEST(build_time_errors) {
  mx_array *k = mx_random_key(1);
  mx_array *badk = mx_zeros((int64_t[]){3}, 1, MX_UINT32);
  mx_array *fk = mx_zeros((int64_t[]){2}, 1, MX_FLOAT32);
  int64_t sh[] = {4};
  mx_clear_error();
  ASSERT(!mx_random_bits(sh, 1, badk));
  ASSERT(strstr(mx_last_error(), "random_bits") && strstr(mx_last_error(), "uint32[3]"));
  ASSERT(!mx_random_uniform(0, 1, sh, 1, MX_FLOAT32, fk));
  ASSERT(strstr(mx_last_error(), "random_uniform"));
  ASSERT(!mx_random_uniform(0, 1, sh, 1, MX_INT32, k));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  ASSERT(!mx_random_normal(sh, 1, MX_UINT8, 0, 1, k));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  ASSERT(!mx_random_randint(0, 10, sh, 1, MX_FLOAT32, k));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  ASSERT(!mx_random_randint(0, 300, sh, 1, MX_UINT8, k));
  ASSERT(strstr(mx_last_error(), "random_randint"));
  ASSERT(!mx_random_randint(-1, 3, sh, 1, MX_UINT32, k));
  ASSERT(!mx_random_split(k, -1));
  ASSERT(!mx_random_bits((int64_t[]){-2}, 1, k));
  ASSERT(!mx_random_bits(NULL, 2, k));
  ASSERT(!mx_random_categorical(NULL, 0, 1, k));
  mx_array *l = mx_zeros((int64_t[]){2, 3}, 2, MX_FLOAT32);
  ASSERT(!mx_random_categorical(l, 2, 1, k));
  ASSERT(!mx_random_categorical(l, -1, -1, k));
  mx_array *l0 = mx_zeros((int64_t[]){2, 0}, 2, MX_FLOAT32);
  ASSERT(!mx_random_categorical(l0, 1, 0, k));
  ASSERT(strstr(mx_last_error(), "random_categorical"));
  mx_clear_error();
  mx_array_free_n((mx_array *[]){k, badk, fk, l, l0}, 5);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
