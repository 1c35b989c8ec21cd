/* test_sort.c — sort, argsort, partition, argpartition, topk beyond the
 * op-parity cases: NumPy's order of special values (NaNs last, -0.0 ==
 * 0.0, infinities, integer extremes), stability, long rows (radix path),
 * adversarial inputs for the selection, determinism across thread counts,
 * gradients through mx_vjp, and build-time errors. */
#include <math.h>

#include "mxc/mxc.h"
#include "test.h"

static double *read_f64(mx_array *a) {
  int64_t n = mx_array_size(a);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (mx_array_copy_to(a, MX_FLOAT64, v, n)) {
    free(v);
    return NULL;
  }
  return v;
}

static int same_arrays(mx_array *a, mx_array *b) {
  if (mx_array_nbytes(a) != mx_array_nbytes(b)) return 0;
  const void *pa = mx_array_data(a), *pb = mx_array_data(b);
  return pa && pb && !memcmp(pa, pb, mx_array_nbytes(a));
}

/* ---- order of special values ------------------------------------------------------ */
TEST(special_floats_every_float_dtype) {
  /* NaN, inf, -inf, -0.0, 0.0, a tiny value, repeats */
  double x[] = {3, NAN, -INFINITY, -1, 2, 0, -0.0, INFINITY, 2, 1e-30, NAN, -2};
  /* stable order: -inf(2) -2(11) -1(3) 0(5) -0(6) tiny(9) 2(4) 2(8) 3(0) inf(7) NaN(1) NaN(10) */
  uint32_t expect[] = {2, 11, 3, 5, 6, 9, 4, 8, 0, 7, 1, 10};
  mx_dtype dts[] = {MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16};
  mx_array *x64 = mx_array_from_data(x, (int64_t[]){12}, 1, MX_FLOAT64);
  for (int d = 0; d < 4; d++) {
    mx_array *a = mx_astype(x64, dts[d]);
    mx_array *i = mx_argsort(a, 0), *s = mx_sort(a, -1);
    uint32_t got[12];
    ASSERT_OK(mx_array_copy_to(i, MX_UINT32, got, 12));
    /* in float16 1e-30 underflows to 0: it then ties with 0 and -0 (stable) */
    for (int j = 0; j < 12; j++)
      ASSERT_MSG(got[j] == expect[j], "%s: position %d: %u", mx_dtype_name(dts[d]), j, got[j]);
    double *v = read_f64(s);
    ASSERT_NOT_NULL(v);
    ASSERT(v[0] == -INFINITY && v[9] == INFINITY && isnan(v[10]) && isnan(v[11]));
    ASSERT(signbit(v[4])); /* -0.0 kept (values are gathered, not rebuilt) */
    free(v);
    mx_array_free_n((mx_array *[]){a, i, s}, 3);
  }
  mx_array_free(x64);
}

TEST(integer_extremes) {
  int64_t x[] = {0, INT64_MAX, -1, INT64_MIN, 5, INT64_MIN + 1, -1};
  int64_t want[] = {INT64_MIN, INT64_MIN + 1, -1, -1, 0, 5, INT64_MAX};
  mx_array *a = mx_array_from_data(x, (int64_t[]){7}, 1, MX_INT64);
  mx_array *s = mx_sort(a, 0);
  int64_t got[7];
  ASSERT_OK(mx_array_copy_to(s, MX_INT64, got, 7));
  for (int i = 0; i < 7; i++) ASSERT(got[i] == want[i]);
  int32_t y[] = {INT32_MAX, INT32_MIN, 0, -5};
  mx_array *b = mx_array_from_data(y, (int64_t[]){4}, 1, MX_INT32);
  mx_array *t = mx_sort(b, 0);
  int32_t g32[4];
  ASSERT_OK(mx_array_copy_to(t, MX_INT32, g32, 4));
  ASSERT(g32[0] == INT32_MIN && g32[1] == -5 && g32[2] == 0 && g32[3] == INT32_MAX);
  uint32_t u[] = {UINT32_MAX, 0, 1u << 31, 7};
  mx_array *c = mx_array_from_data(u, (int64_t[]){4}, 1, MX_UINT32);
  mx_array *v = mx_sort(c, 0);
  uint32_t gu[4];
  ASSERT_OK(mx_array_copy_to(v, MX_UINT32, gu, 4));
  ASSERT(gu[0] == 0 && gu[1] == 7 && gu[2] == 1u << 31 && gu[3] == UINT32_MAX);
  mx_array_free_n((mx_array *[]){a, s, b, t, c, v}, 6);
}

/* ---- long rows, selection, determinism ------------------------------------------------- */
TEST(long_rows_sorted_and_permutation) {
  int64_t n = 1 << 20;
  mx_array *k = mx_random_key(3);
  mx_array *x = mx_random_normal(&n, 1, MX_FLOAT32, 0, 1, k);
  mx_array *i = mx_argsort(x, 0), *s = mx_sort(x, 0);
  mx_array *g = mx_take_along_axis(x, i, 0);
  ASSERT_OK(mx_eval((mx_array *[]){i, s, g}, 3));
  ASSERT(same_arrays(s, g));
  const float *v = mx_array_data(s);
  for (int64_t j = 1; j < n; j++) ASSERT(v[j - 1] <= v[j]);
  const uint32_t *ix = mx_array_data(i);
  char *seen = calloc((size_t)n, 1);
  for (int64_t j = 0; j < n; j++) {
    ASSERT(ix[j] < n && !seen[ix[j]]);
    seen[ix[j]] = 1;
  }
  free(seen);
  mx_array_free_n((mx_array *[]){k, x, i, s, g}, 5);
}

/* The selection must stay correct (and fast) on inputs that defeat a
 * median-of-3 pivot: sorted, reversed, all equal, organ pipe. */
TEST(partition_adversarial_rows) {
  int n = 20000;
  float *x = malloc(sizeof(float) * 4 * (size_t)n);
  for (int j = 0; j < n; j++) {
    x[j] = (float)j;
    x[n + j] = (float)(n - j);
    x[2 * n + j] = 1.0f;
    x[3 * n + j] = (float)(j < n / 2 ? j : n - j);
  }
  mx_array *a = mx_array_from_data(x, (int64_t[]){4, n}, 2, MX_FLOAT32);
  int kths[] = {0, 1, n / 3, n / 2, n - 2, n - 1};
  mx_array *s = mx_sort(a, -1);
  const float *sv = mx_array_data(s);
  ASSERT_NOT_NULL(sv);
  for (int t = 0; t < 6; t++) {
    int kth = kths[t];
    mx_array *p = mx_partition(a, kth, -1);
    mx_array *ip = mx_argpartition(a, kth, -1);
    const float *pv = mx_array_data(p);
    const uint32_t *iv = mx_array_data(ip);
    ASSERT(pv && iv);
    for (int r = 0; r < 4; r++) {
      float piv = pv[r * n + kth];
      ASSERT(piv == sv[r * n + kth]);
      for (int j = 0; j < n; j++) {
        float v = pv[r * n + j];
        ASSERT(j < kth ? v <= piv : j > kth ? v >= piv : 1);
        ASSERT(x[r * n + iv[r * n + j]] == v); /* same permutation as partition */
      }
    }
    mx_array_free(p);
    mx_array_free(ip);
  }
  free(x);
  mx_array_free(a);
  mx_array_free(s);
}

TEST(same_results_any_thread_count) {
  int64_t shape[] = {64, 3001};
  mx_array *k = mx_random_key(5);
  mx_array *x = mx_random_randint(0, 50, shape, 2, MX_INT32, k); /* many ties */
  int prev = mx_get_num_threads();
  int threads[] = {1, 2, 5};
  mx_array *r[3][4];
  for (int t = 0; t < 3; t++) {
    mx_set_num_threads(threads[t]);
    r[t][0] = mx_argsort(x, -1);
    r[t][1] = mx_argpartition(x, 1500, -1);
    r[t][2] = mx_topk(x, 10, -1);
    r[t][3] = mx_argsort(x, 0);
    ASSERT_OK(mx_eval(r[t], 4));
  }
  mx_set_num_threads(prev);
  for (int t = 1; t < 3; t++)
    for (int j = 0; j < 4; j++) ASSERT(same_arrays(r[0][j], r[t][j]));
  for (int t = 0; t < 3; t++) mx_array_free_n(r[t], 4);
  mx_array_free(x);
  mx_array_free(k);
}

/* ---- gradients --------------------------------------------------------------------------- */
typedef struct {
  int op, arg;
} fn_args;

static int f_op(void *payload, mx_array **in, int n, mx_list *out) {
  const fn_args *a = payload;
  (void)n;
  switch (a->op) {
    case 0: return mx_list_push(out, mx_sort(in[0], -1));
    case 1: return mx_list_push(out, mx_partition(in[0], a->arg, 0));
    case 2: return mx_list_push(out, mx_topk(in[0], a->arg, -1));
    default: {
      mx_array *i = mx_argsort(in[0], -1);
      int st = mx_list_push(out, mx_astype(i, MX_FLOAT32));
      mx_array_free(i);
      return st;
    }
  }
}

/* vjp of f at x with cotangent c equals the finite-difference estimate
 * sum(c * (f(x + h e_i) - f(x - h e_i))) / 2h for every i. */
static void check_vjp(int op, int arg, const int64_t *shape, int nd, uint64_t seed) {
  fn_args fa = {op, arg};
  mx_closure *f = mx_closure_new(f_op, &fa, NULL);
  mx_array *k = mx_random_key(seed);
  mx_array *x = mx_random_normal(shape, nd, MX_FLOAT64, 0, 1, k);
  mx_list o = MX_LIST_INIT, g = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(f, &x, 1, &o));
  mx_array *k2 = mx_random_key(seed + 1000);
  mx_array *c = mx_random_normal(mx_array_shape(o.items[0]), mx_array_ndim(o.items[0]),
                                 MX_FLOAT64, 0, 1, k2);
  mx_array_free(k2);
  mx_list o2 = MX_LIST_INIT;
  ASSERT_OK(mx_vjp(f, &x, 1, &c, 1, &o2, &g));
  ASSERT_EQ_INT(g.size, 1);
  double *gv = read_f64(g.items[0]), *xv = read_f64(x), *cv = read_f64(c);
  ASSERT(gv && xv && cv);
  int64_t nx = mx_array_size(x), nc = mx_array_size(c);
  double h = 1e-6;
  for (int64_t i = 0; i < nx; i++) {
    double fd = 0;
    for (int sgn = -1; sgn <= 1; sgn += 2) {
      double *xp = malloc(sizeof(double) * (size_t)nx);
      memcpy(xp, xv, sizeof(double) * (size_t)nx);
      xp[i] += sgn * h;
      mx_array *xa = mx_array_from_data(xp, shape, nd, MX_FLOAT64);
      mx_list r = MX_LIST_INIT;
      ASSERT_OK(mx_closure_apply(f, &xa, 1, &r));
      double *rv = read_f64(r.items[0]);
      ASSERT_NOT_NULL(rv);
      for (int64_t j = 0; j < nc; j++) fd += sgn * cv[j] * rv[j];
      free(rv);
      free(xp);
      mx_list_clear(&r);
      mx_array_free(xa);
    }
    fd /= 2 * h;
    ASSERT_MSG(fabs(fd - gv[i]) < 1e-6, "op %d: d/dx[%lld]: vjp %.9g, finite differences %.9g", op,
               (long long)i, gv[i], fd);
  }
  free(gv);
  free(xv);
  free(cv);
  mx_list_clear(&o);
  mx_list_clear(&o2);
  mx_list_clear(&g);
  mx_array_free(c);
  mx_array_free(x);
  mx_array_free(k);
  mx_closure_free(f);
}

TEST(sort_gradient) { check_vjp(0, 0, (int64_t[]){3, 6}, 2, 1); }
TEST(partition_gradient) { check_vjp(1, 2, (int64_t[]){7, 3}, 2, 2); }
TEST(topk_gradient) { check_vjp(2, 3, (int64_t[]){2, 9}, 2, 3); }
TEST(argsort_has_zero_gradient) { check_vjp(3, 0, (int64_t[]){2, 5}, 2, 4); }

/* ---- errors ----------------------------------------------------------------------------- */
TEST(build_time_errors) {
  mx_array *s0 = mx_array_scalar(1.0, MX_FLOAT32);
  mx_array *a = mx_zeros((int64_t[]){2, 5}, 2, MX_FLOAT32);
  mx_clear_error();
  ASSERT(!mx_sort(s0, 0));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "sort"));
  ASSERT(!mx_argsort(a, 2));
  ASSERT(strstr(mx_last_error(), "argsort"));
  ASSERT(!mx_partition(a, 5, -1));
  ASSERT(strstr(mx_last_error(), "partition") && strstr(mx_last_error(), "[2,5]"));
  ASSERT(!mx_argpartition(a, -6, 1));
  mx_array *ok = mx_argpartition(a, -5, 1);
  ASSERT_NOT_NULL(ok);
  mx_array_free(ok);
  ASSERT(!mx_topk(a, 6, -1));
  ASSERT(strstr(mx_last_error(), "topk"));
  ASSERT(!mx_topk(a, -1, -1));
  ASSERT(!mx_sort(NULL, 0));
  mx_clear_error();
  /* k == n is the input itself; k == 0 is empty */
  mx_array *t = mx_topk(a, 5, -1), *z = mx_topk(a, 0, 1);
  ASSERT(t == a);
  ASSERT_EQ_INT(mx_array_shape(z)[1], 0);
  mx_array_free_n((mx_array *[]){s0, a, t, z}, 4);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
