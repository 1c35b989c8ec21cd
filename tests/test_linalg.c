/* test_linalg.c — matmul/addmm beyond the op-parity cases: VJPs against
 * finite differences, build-time errors, larger shapes on every CPU path
 * against a float64 reference (BLAS with views, batch folding, the widened
 * and the direct f16/bf16 kernels with both b layouts), thread-count
 * independence, and allocation failures during evaluation. */
#include "backend/cpu/gemm_bf16.h"
#include "mxc/mxc.h"
#include "test.h"

static uint64_t rng_state = 42;
static double urand(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2 - 1;
}
/* random array of dtype dt; also returns its values (rounded to dt) */
static mx_array *randa(const int64_t *shape, int nd, mx_dtype dt, double **vals) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  for (int64_t i = 0; i < n; i++) v[i] = urand();
  mx_array *d = mx_array_from_data(v, shape, nd, MX_FLOAT64);
  mx_array *a = mx_astype(d, dt);
  mx_array_free(d);
  if (vals) mx_array_copy_to(a, MX_FLOAT64, v, n);
  if (vals) *vals = v;
  else free(v);
  return a;
}

/* ---- VJPs ------------------------------------------------------------------------ */
typedef struct {
  int addmm;
  double alpha, beta;
} mm_payload;

static mx_array *apply(const mm_payload *p, mx_array **in) {
  return p->addmm ? mx_addmm(in[2], in[0], in[1], p->alpha, p->beta) : mx_matmul(in[0], in[1]);
}
static int call_mm(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  return mx_list_push(out, apply(payload, in));
}
static double dot_out(const mm_payload *p, mx_array **in, mx_array *cot) {
  mx_array *y = apply(p, in), *m = mx_multiply(y, cot), *s = mx_sum(m, NULL, 0, false);
  double v = NAN;
  if (mx_array_item(s, &v)) v = NAN;
  mx_array_free_n((mx_array *[]){y, m, s}, 3);
  return v;
}

static double fd_max_err(const mm_payload *p, mx_array **in, int nin) {
  mx_array *y = apply(p, in);
  if (!y) return INFINITY;
  mx_array *cot = randa(mx_array_shape(y), mx_array_ndim(y), MX_FLOAT64, NULL);
  mx_closure *cl = mx_closure_new(call_mm, (void *)p, NULL);
  mx_list vj = MX_LIST_INIT;
  double worst = 0;
  if (mx_vjp(cl, in, nin, &cot, 1, NULL, &vj)) worst = INFINITY;
  for (int i = 0; i < nin && worst < INFINITY; i++) {
    int64_t n = mx_array_size(in[i]);
    double *x = malloc(sizeof(double) * (size_t)(n ? n : 1));
    double *g = malloc(sizeof(double) * (size_t)(n ? n : 1));
    mx_array_copy_to(in[i], MX_FLOAT64, x, n);
    if (mx_array_copy_to(vj.items[i], MX_FLOAT64, g, n)) worst = INFINITY;
    for (int64_t e = 0; e < n && worst < INFINITY; e++) {
      const double h = 1e-6;
      double fx[2];
      for (int s = 0; s < 2; s++) {
        double saved = x[e];
        x[e] = saved + (s ? -h : h);
        mx_array *xi = mx_array_from_data(x, mx_array_shape(in[i]), mx_array_ndim(in[i]),
                                          MX_FLOAT64);
        mx_array *old = in[i];
        in[i] = xi;
        fx[s] = dot_out(p, in, cot);
        in[i] = old;
        mx_array_free(xi);
        x[e] = saved;
      }
      double err = fabs((fx[0] - fx[1]) / (2 * h) - g[e]);
      if (err > worst) worst = err;
    }
    free(x);
    free(g);
  }
  mx_list_clear(&vj);
  mx_closure_free(cl);
  mx_array_free_n((mx_array *[]){cot, y}, 2);
  return worst;
}

TEST(matmul_vjp_batched_broadcast_and_vectors) {
  const int64_t shapes[][2][4] = {
      {{2, 1, 3, 4}, {3, 4, 2}}, /* broadcast batch */
      {{3, 4}, {4}},             /* matrix @ vector */
      {{4}, {2, 4, 5}},          /* vector @ batched matrix */
  };
  const int nds[][2] = {{4, 3}, {2, 1}, {1, 3}};
  mm_payload p = {0, 1, 0};
  for (int c = 0; c < 3; c++) {
    mx_array *a = randa(shapes[c][0], nds[c][0], MX_FLOAT64, NULL);
    mx_array *b = randa(shapes[c][1], nds[c][1], MX_FLOAT64, NULL);
    double e = fd_max_err(&p, (mx_array *[]){a, b, NULL}, 2); /* in[2]: addmm only */
    ASSERT_MSG(e < 1e-7, "case %d: max error %g", c, e);
    mx_array_free_n((mx_array *[]){a, b}, 2);
  }
}

TEST(addmm_vjp) {
  mm_payload p = {1, 0.7, -1.3};
  mx_array *a = randa((int64_t[]){2, 3, 4}, 3, MX_FLOAT64, NULL);
  mx_array *b = randa((int64_t[]){4, 5}, 2, MX_FLOAT64, NULL);
  mx_array *c = randa((int64_t[]){3, 1}, 2, MX_FLOAT64, NULL); /* broadcast c */
  double e = fd_max_err(&p, (mx_array *[]){a, b, c}, 3);
  ASSERT_MSG(e < 1e-7, "max error %g", e);
  mx_array_free_n((mx_array *[]){a, b, c}, 3);
}

/* ---- errors ---------------------------------------------------------------------- */
TEST(errors_name_the_op_and_shapes) {
  mx_array *a = mx_zeros((int64_t[]){3, 4}, 2, MX_FLOAT32);
  mx_array *b = mx_zeros((int64_t[]){5, 2}, 2, MX_FLOAT32);
  mx_array *ai = mx_zeros((int64_t[]){3, 4}, 2, MX_INT32);
  mx_array *bi = mx_zeros((int64_t[]){4, 2}, 2, MX_INT32);
  mx_array *s = mx_array_scalar(1, MX_FLOAT32);
  ASSERT(!mx_matmul(a, b));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "matmul") && strstr(mx_last_error(), "[3,4]") &&
         strstr(mx_last_error(), "[5,2]"));
  ASSERT(!mx_matmul(ai, bi));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  ASSERT(strstr(mx_last_error(), "int32"));
  mx_array *bt = mx_zeros((int64_t[]){4, 2}, 2, MX_FLOAT16);
  mx_array *mixed = mx_matmul(ai, bt); /* int @ float16 promotes to float16 */
  ASSERT_NOT_NULL(mixed);
  ASSERT_EQ_INT(mx_array_dtype(mixed), MX_FLOAT16);
  ASSERT(!mx_matmul(s, b));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  mx_array *b3 = mx_zeros((int64_t[]){2, 4, 2}, 3, MX_FLOAT32);
  mx_array *a3 = mx_zeros((int64_t[]){3, 3, 4}, 3, MX_FLOAT32);
  ASSERT(!mx_matmul(a3, b3)); /* batch 3 vs 2 */
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  mx_array *c = mx_zeros((int64_t[]){3, 3}, 2, MX_FLOAT32);
  mx_array *bb = mx_zeros((int64_t[]){4, 2}, 2, MX_FLOAT32);
  ASSERT(!mx_addmm(c, a, bb, 1, 1)); /* c (3,3) vs out (3,2) */
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "addmm") && strstr(mx_last_error(), "[3,3]"));
  mx_array_free_n((mx_array *[]){a, b, ai, bi, s, bt, mixed, b3, a3, c, bb}, 11);
}

/* ---- larger shapes against a float64 reference ------------------------------------- */
/* a (M,K) @ b (K,N); b_t: b is a transposed view of a stored (N,K) array;
 * a_t likewise. Returns the max of |got - ref| / (sum_k |a||b| + 1). */
static double check_product(int64_t M, int64_t K, int64_t N, mx_dtype dt, bool a_t, bool b_t) {
  double *av, *bv;
  mx_array *as = a_t ? randa((int64_t[]){K, M}, 2, dt, &av) : randa((int64_t[]){M, K}, 2, dt, &av);
  mx_array *bs = b_t ? randa((int64_t[]){N, K}, 2, dt, &bv) : randa((int64_t[]){K, N}, 2, dt, &bv);
  mx_array *a = a_t ? mx_transpose(as, NULL, 0) : mx_array_retain(as);
  mx_array *b = b_t ? mx_transpose(bs, NULL, 0) : mx_array_retain(bs);
  mx_array *c = mx_matmul(a, b);
  double *got = malloc(sizeof(double) * (size_t)(M * N));
  double worst = INFINITY;
  if (c && !mx_array_copy_to(c, MX_FLOAT64, got, M * N)) {
    worst = 0;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0, mag = 0;
        for (int64_t k = 0; k < K; k++) {
          double x = a_t ? av[k * M + m] : av[m * K + k];
          double y = b_t ? bv[n * K + k] : bv[k * N + n];
          s += x * y;
          mag += fabs(x * y);
        }
        double e = fabs(got[m * N + n] - s) / (mag + 1);
        if (e > worst) worst = e;
      }
  }
  free(got);
  free(av);
  free(bv);
  mx_array_free_n((mx_array *[]){as, bs, a, b, c}, 5);
  return worst;
}

TEST(large_products_on_every_path) {
  struct {
    int64_t M, K, N;
    mx_dtype dt;
    double tol;
  } cases[] = {
      {65, 300, 129, MX_FLOAT32, 1e-6},   /* sgemm */
      {1, 1000, 300, MX_FLOAT32, 1e-6},   /* sgemv */
      {33, 70, 41, MX_FLOAT64, 1e-14},    /* dgemm */
      {40, 300, 70, MX_BFLOAT16, 8e-3},   /* bf16 dot kernel (or widened to f32) */
      {130, 601, 300, MX_BFLOAT16, 8e-3}, /* odd K, several k blocks, row/column tails */
      {16, 64, 9, MX_BFLOAT16, 8e-3},     /* the smallest M of the GEMM path */
      {1, 1000, 300, MX_BFLOAT16, 8e-3},  /* direct, decode shape */
      {5, 600, 130, MX_FLOAT16, 1e-3},    /* direct, several blocks */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int v = 0; v < 4; v++) {
      double e = check_product(cases[i].M, cases[i].K, cases[i].N, cases[i].dt, v & 1, v & 2);
      ASSERT_MSG(e <= cases[i].tol, "case %zu (%s, a_t %d, b_t %d): error %g", i,
                 mx_dtype_name(cases[i].dt), v & 1, (v & 2) != 0, e);
    }
}

/* ---- thread-count independence ------------------------------------------------------- */
TEST(direct_kernel_is_identical_for_any_thread_count) {
  int prev = mx_get_num_threads();
  mx_array *r[2];
  for (int t = 0; t < 2; t++) {
    rng_state = 99;
    mx_set_num_threads(t ? 4 : 1);
    mx_array *a = randa((int64_t[]){3, 777}, 2, MX_BFLOAT16, NULL);
    mx_array *w = randa((int64_t[]){1500, 777}, 2, MX_BFLOAT16, NULL);
    mx_array *wt = mx_transpose(w, NULL, 0);
    r[t] = mx_matmul(a, wt);
    ASSERT_OK(mx_array_eval(r[t]));
    mx_array_free_n((mx_array *[]){a, w, wt}, 3);
  }
  mx_set_num_threads(prev);
  ASSERT(!memcmp(mx_array_data(r[0]), mx_array_data(r[1]), 3 * 1500 * 2));
  mx_array_free_n(r, 2);
}

/* The bf16 GEMM (dot-product kernel where the CPU has it): there, the same
 * bits for any thread count; and addmm's alpha/beta applied once, in float. */
TEST(bf16_gemm_thread_independent_and_addmm) {
  int prev = mx_get_num_threads();
  mx_array *r[2];
  double *av, *bv, *cv;
  rng_state = 7;
  mx_array *a = randa((int64_t[]){70, 515}, 2, MX_BFLOAT16, &av);
  mx_array *w = randa((int64_t[]){301, 515}, 2, MX_BFLOAT16, &bv);
  mx_array *c = randa((int64_t[]){70, 301}, 2, MX_BFLOAT16, &cv);
  mx_array *wt = mx_transpose(w, NULL, 0);
  for (int t = 0; t < 2; t++) {
    mx_set_num_threads(t ? 3 : 1);
    r[t] = mx_addmm(c, a, wt, 0.5, -2.0);
    ASSERT_OK(mx_array_eval(r[t]));
  }
  mx_set_num_threads(prev);
  /* (OpenBLAS, the fallback, may split its sums by thread count) */
  if (mx__cpu_has_bf16_dot())
    ASSERT(!memcmp(mx_array_data(r[0]), mx_array_data(r[1]), 70 * 301 * 2));
  double *got = malloc(sizeof(double) * 70 * 301), worst = 0;
  ASSERT_OK(mx_array_copy_to(r[0], MX_FLOAT64, got, 70 * 301));
  for (int m = 0; m < 70; m++)
    for (int n = 0; n < 301; n++) {
      double s = 0, mag = 0;
      for (int k = 0; k < 515; k++) {
        s += av[m * 515 + k] * bv[n * 515 + k];
        mag += fabs(av[m * 515 + k] * bv[n * 515 + k]);
      }
      double want = 0.5 * s - 2.0 * cv[m * 301 + n];
      worst = fmax(worst, fabs(got[m * 301 + n] - want) / (0.5 * mag + 2 * fabs(cv[m * 301 + n]) + 1));
    }
  ASSERT_MSG(worst < 8e-3, "addmm bf16: error %g", worst);
  free(got);
  free(av);
  free(bv);
  free(cv);
  mx_array_free_n((mx_array *[]){a, w, c, wt, r[0], r[1]}, 6);
}

/* ---- allocation failures ----------------------------------------------------------- */
TEST(allocation_failures_are_statuses_and_leak_nothing) {
  mx_clear_cache();
  /* bf16, batch folds to M = 40: the widened path with its f32 scratch */
  mx_array *a = mx_ones((int64_t[]){2, 20, 8}, 3, MX_BFLOAT16);
  mx_array *b = mx_ones((int64_t[]){8, 6}, 2, MX_BFLOAT16);
  mx_array *c = mx_ones((int64_t[]){6}, 1, MX_BFLOAT16);
  ASSERT_OK(mx_eval((mx_array *[]){a, b, c}, 3));
  size_t base = mx_get_active_memory();
  for (size_t n = 1;; n++) {
    mx_array *y = mx_addmm(c, a, b, 2.0, 1.0);
    mx_debug_fail_nth_alloc(n);
    int st = mx_array_eval(y);
    mx_debug_fail_nth_alloc(0);
    if (st == MX_OK) {
      double v;
      mx_array *y32 = mx_astype(y, MX_FLOAT32);
      mx_array *s = mx_sum(y32, NULL, 0, false);
      ASSERT_OK(mx_array_item(s, &v));
      ASSERT_NEAR(v, 2 * 20 * 6 * (2.0 * 8 + 1), 0);
      mx_array_free_n((mx_array *[]){s, y32, y}, 3);
      ASSERT(n > 1);
      break;
    }
    ASSERT_EQ_INT(st, MX_ERR_OOM);
    mx_array_free(y);
    ASSERT_EQ_INT(mx_get_active_memory(), base);
  }
  mx_array_free_n((mx_array *[]){a, b, c}, 3);
}

TEST(float32_matmul_precision_setting) {
  mx_matmul_precision p0 = mx_get_float32_matmul_precision();
  ASSERT_EQ_INT(mx_set_float32_matmul_precision((mx_matmul_precision)7), MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "precision"));
  ASSERT_EQ_INT(mx_get_float32_matmul_precision(), p0);
  mx_array *a = mx_random_normal((int64_t[]){9, 33}, 2, MX_FLOAT32, 0, 1, NULL);
  mx_array *b = mx_random_normal((int64_t[]){33, 5}, 2, MX_FLOAT32, 0, 1, NULL);
  ASSERT_OK(mx_set_float32_matmul_precision(MX_MATMUL_HIGHEST));
  mx_array *c0 = mx_matmul(a, b);
  ASSERT_OK(mx_set_float32_matmul_precision(MX_MATMUL_HIGH));
  ASSERT_EQ_INT(mx_get_float32_matmul_precision(), MX_MATMUL_HIGH);
  mx_array *c1 = mx_matmul(a, b); /* the CPU ignores it: the same bits */
  ASSERT_OK(mx_set_float32_matmul_precision(p0));
  ASSERT_OK(mx_eval((mx_array *[]){c0, c1}, 2));
  ASSERT(!memcmp(mx_array_data(c0), mx_array_data(c1), sizeof(float) * 9 * 5));
  mx_array_free_n((mx_array *[]){a, b, c0, c1}, 4);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
