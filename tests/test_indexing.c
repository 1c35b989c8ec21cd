/* test_indexing.c — indexing ops beyond the op-parity cases: VJPs against
 * finite differences (duplicates and clamped indices included), build-time
 * errors, thread-count independence of scatters, embedding lookups, and
 * allocation failures during evaluation. */
#include "mxc/mxc.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------------- */
static mx_array *f64(const double *v, const int64_t *shape, int nd) {
  return mx_array_from_data(v, shape, nd, MX_FLOAT64);
}
static mx_array *i32(const int32_t *v, const int64_t *shape, int nd) {
  return mx_array_from_data(v, shape, nd, MX_INT32);
}
static uint64_t rng_state = 42;
static double urand(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2 - 1;
}
static mx_array *randn64(const int64_t *shape, int nd) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  for (int64_t i = 0; i < n; i++) v[i] = urand();
  mx_array *a = f64(v, shape, nd);
  free(v);
  return a;
}

/* A function of the inputs whose VJP is checked: in[] are f64 or index arrays. */
typedef mx_array *(*op_fn)(mx_array **in, const int *ip);
typedef struct {
  op_fn f;
  const int *ip;
} fd_payload;

static int call_fn(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  const fd_payload *p = payload;
  return mx_list_push(out, p->f(in, p->ip));
}

/* sum(cot * f(in)) */
static double dot_out(const fd_payload *p, mx_array **in, mx_array *cot) {
  mx_array *y = p->f(in, p->ip);
  mx_array *m = mx_multiply(y, cot);
  mx_array *s = mx_sum(m, NULL, 0, false);
  double v = NAN;
  if (mx_array_item(s, &v)) v = NAN;
  mx_array_free_n((mx_array *[]){y, m, s}, 3);
  return v;
}

/* Max |vjp - central difference| over the float64 inputs. */
static double fd_max_err(op_fn f, const int *ip, mx_array **in, int nin) {
  fd_payload p = {f, ip};
  mx_array *y = f(in, ip);
  if (!y) return INFINITY;
  mx_array *cot = randn64(mx_array_shape(y), mx_array_ndim(y));
  mx_closure *cl = mx_closure_new(call_fn, &p, NULL);
  mx_list vj = MX_LIST_INIT;
  double worst = 0;
  if (mx_vjp(cl, in, nin, &cot, 1, NULL, &vj)) {
    worst = INFINITY;
    goto done;
  }
  for (int i = 0; i < nin; i++) {
    if (mx_array_dtype(in[i]) != MX_FLOAT64) continue;
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
        mx_array *xi = f64(x, mx_array_shape(in[i]), mx_array_ndim(in[i]));
        mx_array *old = in[i];
        in[i] = xi;
        fx[s] = dot_out(&p, in, cot);
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
done:
  mx_list_clear(&vj);
  mx_closure_free(cl);
  mx_array_free(cot);
  mx_array_free(y);
  return worst;
}

/* ---- VJPs -------------------------------------------------------------------- */
static mx_array *op_take(mx_array **in, const int *ip) { return mx_take(in[0], in[1], ip[0]); }
static mx_array *op_take_along(mx_array **in, const int *ip) {
  return mx_take_along_axis(in[0], in[1], ip[0]);
}
static mx_array *op_put(mx_array **in, const int *ip) {
  return mx_put_along_axis(in[0], in[1], in[2], ip[0]);
}
static mx_array *op_scatter(mx_array **in, const int *ip) {
  return mx_scatter_add_axis(in[0], in[1], in[2], ip[0]);
}
static mx_array *op_gather_rows(mx_array **in, const int *ip) {
  (void)ip;
  return mx_gather_rows(in[0], in[1]);
}
static mx_array *op_take_flat(mx_array **in, const int *ip) {
  (void)ip;
  return mx_take_flat(in[0], in[1]);
}

TEST(take_vjp_with_duplicates_wrap_and_clamp) {
  mx_array *a = randn64((int64_t[]){4, 5}, 2);
  /* dim 5: -1 wraps to 4, 7 clamps to 4, -9 clamps to 0; 2 appears twice */
  mx_array *idx = i32((int32_t[]){2, -1, 7, 2, -9, 0}, (int64_t[]){2, 3}, 2);
  for (int axis = 0; axis < 2; axis++) {
    mx_array *in[2] = {a, idx};
    double e = fd_max_err(op_take, (int[]){axis}, in, 2);
    ASSERT_MSG(e < 1e-7, "axis %d: max error %g", axis, e);
  }
  mx_array *in[2] = {a, idx};
  ASSERT(fd_max_err(op_gather_rows, (int[]){0}, in, 2) < 1e-7);
  ASSERT(fd_max_err(op_take_flat, (int[]){0}, in, 2) < 1e-7);
  mx_array_free_n((mx_array *[]){a, idx}, 2);
}

TEST(take_along_axis_vjp_broadcast) {
  mx_array *a = randn64((int64_t[]){3, 1, 4}, 3);
  mx_array *idx = i32((int32_t[]){0, 3, 3, -1, 1, 2}, (int64_t[]){1, 2, 3}, 3);
  mx_array *in[2] = {a, idx};
  double e = fd_max_err(op_take_along, (int[]){2}, in, 2);
  ASSERT_MSG(e < 1e-7, "max error %g", e);
  mx_array_free_n((mx_array *[]){a, idx}, 2);
}

TEST(put_along_axis_vjp_is_exact_with_duplicates) {
  mx_array *a = randn64((int64_t[]){2, 5}, 2);
  /* row 0 writes position 1 three times: only the last write gets gradient */
  mx_array *idx = i32((int32_t[]){1, 1, 3, 1, 0, 4, -1, 9}, (int64_t[]){2, 4}, 2);
  mx_array *v = randn64((int64_t[]){2, 4}, 2);
  mx_array *in[3] = {a, idx, v};
  double e = fd_max_err(op_put, (int[]){1}, in, 3);
  ASSERT_MSG(e < 1e-7, "max error %g", e);
  /* broadcast values: (1, 4) */
  mx_array *vb = randn64((int64_t[]){1, 4}, 2);
  in[2] = vb;
  e = fd_max_err(op_put, (int[]){1}, in, 3);
  ASSERT_MSG(e < 1e-7, "broadcast values: max error %g", e);
  mx_array_free_n((mx_array *[]){a, idx, v, vb}, 4);
}

TEST(scatter_add_axis_vjp) {
  mx_array *a = randn64((int64_t[]){4, 3}, 2);
  mx_array *idx = i32((int32_t[]){0, 0, 0, 3, 1, 2, -1, -1, 5, 2, 2, 2}, (int64_t[]){4, 3}, 2);
  mx_array *v = randn64((int64_t[]){4, 3}, 2);
  mx_array *in[3] = {a, idx, v};
  double e = fd_max_err(op_scatter, (int[]){0}, in, 3);
  ASSERT_MSG(e < 1e-7, "max error %g", e);
  mx_array_free_n((mx_array *[]){a, idx, v}, 3);
}

/* grad of sum(take(a, idx)^2) w.r.t. a, as a function of a: its VJP needs
 * the VJPs of scatter_add_axis and take_along_axis (differentiable again) */
static int sum_sq_take(void *payload, mx_array **in, int n, mx_list *out) {
  (void)payload, (void)n;
  mx_array *t = mx_take(in[0], in[1], 0);
  mx_array *sq = mx_square(t);
  int st = mx_list_push(out, mx_sum(sq, NULL, 0, false));
  mx_array_free_n((mx_array *[]){t, sq}, 2);
  return st;
}
static mx_array *op_grad_take(mx_array **in, const int *ip) {
  (void)ip;
  mx_closure *f = mx_closure_new(sum_sq_take, NULL, NULL);
  mx_closure *g = mx_grad(f, (int[]){0}, 1);
  mx_list res = MX_LIST_INIT;
  mx_array *r = NULL;
  if (!mx_closure_apply(g, in, 2, &res)) r = mx_array_retain(res.items[0]);
  mx_list_clear(&res);
  mx_closure_free(g);
  mx_closure_free(f);
  return r;
}

TEST(second_order_through_take) {
  mx_array *a = randn64((int64_t[]){6}, 1);
  mx_array *idx = i32((int32_t[]){1, 1, 4, -1}, (int64_t[]){4}, 1);
  mx_array *in[2] = {a, idx};
  double e = fd_max_err(op_grad_take, NULL, in, 2);
  ASSERT_MSG(e < 1e-6, "max error %g", e);
  mx_array_free_n((mx_array *[]){a, idx}, 2);
}

/* ---- build-time errors --------------------------------------------------------- */
TEST(errors_name_the_op_and_shapes) {
  mx_array *a = mx_zeros((int64_t[]){3, 4}, 2, MX_FLOAT32);
  mx_array *fi = mx_zeros((int64_t[]){2}, 1, MX_FLOAT32);
  mx_array *ii = mx_zeros((int64_t[]){2}, 1, MX_INT32);
  mx_array *i3 = mx_zeros((int64_t[]){1, 2, 2}, 3, MX_INT32);

  ASSERT(!mx_take(a, fi, 0));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  ASSERT(strstr(mx_last_error(), "take") && strstr(mx_last_error(), "float32"));

  ASSERT(!mx_take(a, ii, 2));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_INVALID_ARG);

  ASSERT(!mx_take_along_axis(a, ii, 0));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "take_along_axis") && strstr(mx_last_error(), "[3,4]") &&
         strstr(mx_last_error(), "[2]"));

  ASSERT(!mx_take_along_axis(a, i3, 1));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);

  mx_array *i22 = mx_zeros((int64_t[]){2, 2}, 2, MX_INT32);
  mx_array *vbad = mx_zeros((int64_t[]){3}, 1, MX_FLOAT32);
  ASSERT(!mx_put_along_axis(a, i22, vbad, 1)); /* i22 axis 0 is 2, a has 3 */
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "put_along_axis"));
  mx_array *i32r = mx_zeros((int64_t[]){3, 2}, 2, MX_INT32);
  ASSERT(!mx_scatter_add_axis(a, i32r, vbad, 1)); /* values (3,) vs (3,2) */
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "scatter_add_axis") && strstr(mx_last_error(), "[3,2]"));

  mx_array *empty = mx_zeros((int64_t[]){3, 0}, 2, MX_FLOAT32);
  ASSERT(!mx_take(empty, ii, 1));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_RANGE);
  mx_array *none = mx_zeros((int64_t[]){0}, 1, MX_INT32);
  mx_array *ok = mx_take(empty, none, 1); /* nothing taken: fine */
  ASSERT_NOT_NULL(ok);
  ASSERT_EQ_INT(mx_array_dim(ok, 1), 0);

  mx_array *s = mx_array_scalar(1, MX_FLOAT32);
  ASSERT(!mx_gather_rows(s, ii));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);

  /* NULL inputs keep the first error */
  mx_clear_error();
  ASSERT(!mx_take(NULL, ii, 0));
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_INVALID_ARG);
  mx_array_free_n((mx_array *[]){a, fi, ii, i3, i22, vbad, i32r, empty, none, ok, s}, 11);
}

/* ---- thread-count independence ---------------------------------------------------- */
static mx_array *scatter_many(void) {
  /* 20000 rows of 64 scattered into 100 rows: heavy duplication */
  int64_t n = 20000, d = 64;
  float *v = malloc(sizeof(float) * (size_t)(n * d));
  int32_t *ix = malloc(sizeof(int32_t) * (size_t)n);
  for (int64_t i = 0; i < n * d; i++) v[i] = (float)urand();
  for (int64_t i = 0; i < n; i++) ix[i] = (int32_t)((i * 7919) % 100);
  mx_array *vals = mx_array_from_data(v, (int64_t[]){n, d}, 2, MX_FLOAT32);
  mx_array *idx = mx_array_from_data(ix, (int64_t[]){n, 1}, 2, MX_INT32);
  mx_array *z = mx_zeros((int64_t[]){100, d}, 2, MX_FLOAT32);
  mx_array *r = mx_scatter_add_axis(z, idx, vals, 0);
  mx_array_free_n((mx_array *[]){vals, idx, z}, 3);
  free(v);
  free(ix);
  return r;
}

TEST(scatter_add_is_identical_for_any_thread_count) {
  int prev = mx_get_num_threads();
  rng_state = 7;
  mx_set_num_threads(1);
  mx_array *r1 = scatter_many();
  ASSERT_OK(mx_array_eval(r1));
  rng_state = 7;
  mx_set_num_threads(4);
  mx_array *r4 = scatter_many();
  ASSERT_OK(mx_array_eval(r4));
  mx_set_num_threads(prev);
  ASSERT(!memcmp(mx_array_data(r1), mx_array_data(r4), sizeof(float) * 100 * 64));
  mx_array_free_n((mx_array *[]){r1, r4}, 2);
}

/* ---- embedding lookup ------------------------------------------------------------- */
TEST(gather_rows_is_an_embedding_lookup) {
  int64_t V = 1000, D = 256;
  float *tab = malloc(sizeof(float) * (size_t)(V * D));
  for (int64_t i = 0; i < V * D; i++) tab[i] = (float)i;
  int32_t ids[4 * 64];
  for (int i = 0; i < 4 * 64; i++) ids[i] = (i * 37) % (int)V;
  mx_array *t = mx_array_from_data(tab, (int64_t[]){V, D}, 2, MX_FLOAT32);
  mx_array *ix = mx_array_from_data(ids, (int64_t[]){4, 64}, 2, MX_INT32);
  mx_array *e = mx_gather_rows(t, ix);
  ASSERT_NOT_NULL(e);
  ASSERT_EQ_INT(mx_array_ndim(e), 3);
  ASSERT_EQ_INT(mx_array_dim(e, 2), D);
  const float *p = mx_array_data(e);
  ASSERT_NOT_NULL(p);
  for (int i = 0; i < 4 * 64; i++)
    ASSERT_MSG(!memcmp(p + i * D, tab + ids[i] * D, sizeof(float) * (size_t)D), "row %d", i);
  mx_array_free_n((mx_array *[]){t, ix, e}, 3);
  free(tab);
}

/* ---- allocation failures ---------------------------------------------------------- */
TEST(allocation_failures_are_statuses_and_leak_nothing) {
  mx_clear_cache();
  mx_array *a = mx_ones((int64_t[]){64, 32}, 2, MX_BFLOAT16);
  mx_array *idx = mx_array_from_data((int32_t[]){3, 1, 3, 0}, (int64_t[]){4, 1}, 2, MX_INT32);
  mx_array *v = mx_ones((int64_t[]){4, 32}, 2, MX_BFLOAT16);
  ASSERT_OK(mx_eval((mx_array *[]){a, idx, v}, 3));
  size_t base = mx_get_active_memory();
  for (size_t n = 1;; n++) {
    mx_array *s = mx_scatter_add_axis(a, idx, v, 0); /* bf16: f32 scratch too */
    mx_array *t = mx_take(s, idx, 0);
    mx_debug_fail_nth_alloc(n);
    int st = mx_array_eval(t);
    mx_debug_fail_nth_alloc(0);
    if (st == MX_OK) {
      double x;
      mx_array *row = mx_slice_axis(t, 0, 0, 1, 1);
      mx_array *sm = mx_sum(row, NULL, 0, false);
      ASSERT_OK(mx_array_item(sm, &x));
      ASSERT_NEAR(x, 32 * 3.0, 0); /* row 3 got two ones added */
      mx_array_free_n((mx_array *[]){row, sm, s, t}, 4);
      ASSERT(n > 2);
      break;
    }
    ASSERT_EQ_INT(st, MX_ERR_OOM);
    mx_array_free_n((mx_array *[]){s, t}, 2);
    ASSERT_EQ_INT(mx_get_active_memory(), base);
  }
  mx_array_free_n((mx_array *[]){a, idx, v}, 3);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
