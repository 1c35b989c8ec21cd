/* test_transforms.c — closures, vjp/jvp/grad/value_and_grad, parameter
 * maps, higher-order gradients, custom VJPs, checkpointing (memory),
 * vmap, and golden gradients from PyTorch autograd
 * (tests/fixtures/autograd, written by tests/gen/gen_autograd_golden.py). */
#include <stdint.h>

#include "mxc/mxc.h"
#include "test.h"

#include "array_impl.h"
#include "ops/fast_params.h"
#include "ops/ops_internal.h"

#ifndef MXC_SOURCE_DIR
#define MXC_SOURCE_DIR "."
#endif

/* ---- helpers --------------------------------------------------------------- */
static mx_array *randn(const int64_t *shape, int nd, mx_dtype dt, uint64_t seed) {
  mx_array *k = mx_random_key(seed);
  mx_array *r = mx_random_normal(shape, nd, dt, 0, 1, k);
  mx_array_free(k);
  if (r) mx_array_eval(r);
  return r;
}

/* max |a-b| / (1 + |b|) over all elements (float64); -1 on shape mismatch. */
static double max_err(mx_array *a, mx_array *b) {
  if (!a || !b || mx_array_size(a) != mx_array_size(b) || mx_array_ndim(a) != mx_array_ndim(b))
    return -1;
  int64_t n = mx_array_size(a);
  double *x = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double *y = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double m = 0;
  if (mx_array_copy_to(a, MX_FLOAT64, x, n) || mx_array_copy_to(b, MX_FLOAT64, y, n)) m = -1;
  for (int64_t i = 0; m >= 0 && i < n; i++) {
    double e = fabs(x[i] - y[i]) / (1 + fabs(y[i]));
    if (!(e <= m)) m = isnan(e) ? INFINITY : e;
  }
  free(x);
  free(y);
  return m;
}

static double dot(mx_array *a, mx_array *b) {
  mx_array *p = mx_multiply(a, b);
  mx_array *s = mx_sum(p, NULL, 0, false);
  double v = NAN;
  if (s) mx_array_item(s, &v);
  mx_array_free(p);
  mx_array_free(s);
  return v;
}

static double item(mx_array *a) {
  double v = NAN;
  if (a) mx_array_item(a, &v);
  return v;
}

#define ASSERT_CLOSE(a, b, tol)                                                      \
  do {                                                                               \
    double e__ = max_err((a), (b));                                                  \
    if (!(e__ >= 0 && e__ <= (tol)))                                                 \
      TEST_FAIL("%s vs %s: max error %.3g > %g (%s)", #a, #b, e__, (double)(tol),      \
                mx_last_error());                                                    \
  } while (0)

/* ---- small closures ----------------------------------------------------------- */
/* f(x, y) = [sum(x * y + sin(x)), x * 2 (aux)] */
static int f_xy(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *m = mx_multiply(in[0], in[1]), *s = mx_sin(in[0]);
  mx_array *a = mx_add(m, s);
  int st = mx_list_push(out, mx_sum(a, NULL, 0, false));
  if (!st) st = mx_list_push(out, mx_multiply_scalar(in[0], 2));
  mx_array_free(m); mx_array_free(s); mx_array_free(a);
  return st;
}

static int f_sum_tanh(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *t = mx_tanh(in[0]);
  int st = mx_list_push(out, mx_sum(t, NULL, 0, false));
  mx_array_free(t);
  return st;
}

static int f_sum_exp(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *t = mx_exp(in[0]);
  int st = mx_list_push(out, mx_sum(t, NULL, 0, false));
  mx_array_free(t);
  return st;
}

/* h(x) = sum(g(x)) where g is the closure in the payload (a gradient). */
static int f_sum_of(void *p, mx_array **in, int n, mx_list *out) {
  mx_list r = MX_LIST_INIT;
  int st = mx_closure_apply((mx_closure *)p, in, n, &r);
  if (!st) st = mx_list_push(out, mx_sum(r.items[0], NULL, 0, false));
  mx_list_clear(&r);
  return st;
}

TEST(list_and_closure_basics) {
  mx_list l = MX_LIST_INIT;
  mx_clear_error();
  ASSERT(mx_list_push(&l, NULL) != MX_OK);
  ASSERT_EQ_INT(l.size, 0);
  ASSERT_OK(mx_list_push(&l, mx_array_scalar(1, MX_FLOAT32)));
  mx_array *a = mx_array_scalar(2, MX_FLOAT32);
  ASSERT_OK(mx_list_push_retain(&l, a));
  mx_array_free(a);
  ASSERT_EQ_INT(l.size, 2);
  ASSERT_NEAR(item(l.items[1]), 2, 0);
  mx_list_clear(&l);
  ASSERT_EQ_INT(l.size, 0);
  mx_list_clear(&l);
  ASSERT(mx_closure_new(NULL, NULL, NULL) == NULL);
  mx_closure_free(NULL);
}

TEST(vjp_and_value_and_grad) {
  double xv[] = {0.5, -1.0, 2.0}, yv[] = {3.0, 4.0, -2.0};
  mx_array *x = mx_array_from_data(xv, (int64_t[]){3}, 1, MX_FLOAT64);
  mx_array *y = mx_array_from_data(yv, (int64_t[]){3}, 1, MX_FLOAT64);
  mx_closure *f = mx_closure_new(f_xy, NULL, NULL);
  mx_closure *vg = mx_value_and_grad(f, (int[]){0, 1}, 2);
  ASSERT_NOT_NULL(vg);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vg, (mx_array *[]){x, y}, 2, &r));
  ASSERT_EQ_INT(r.size, 4); /* value, aux, dx, dy */
  ASSERT_OK(mx_eval(r.items, r.size));
  double want = 0;
  for (int i = 0; i < 3; i++) want += xv[i] * yv[i] + sin(xv[i]);
  ASSERT_NEAR(item(r.items[0]), want, 1e-12);
  double dx[3], dy[3];
  ASSERT_OK(mx_array_copy_to(r.items[2], MX_FLOAT64, dx, 3));
  ASSERT_OK(mx_array_copy_to(r.items[3], MX_FLOAT64, dy, 3));
  for (int i = 0; i < 3; i++) {
    ASSERT_NEAR(dx[i], yv[i] + cos(xv[i]), 1e-12);
    ASSERT_NEAR(dy[i], xv[i], 1e-12);
  }
  mx_list_clear(&r);

  /* vjp with both cotangents */
  mx_array *c0 = mx_array_scalar(2.0, MX_FLOAT64);
  mx_array *c1 = mx_ones((int64_t[]){3}, 1, MX_FLOAT64);
  mx_list outs = MX_LIST_INIT, vj = MX_LIST_INIT;
  ASSERT_OK(mx_vjp(f, (mx_array *[]){x, y}, 2, (mx_array *[]){c0, c1}, 2, &outs, &vj));
  ASSERT_EQ_INT(outs.size, 2);
  ASSERT_EQ_INT(vj.size, 2);
  ASSERT_OK(mx_array_copy_to(vj.items[0], MX_FLOAT64, dx, 3));
  for (int i = 0; i < 3; i++) ASSERT_NEAR(dx[i], 2 * (yv[i] + cos(xv[i])) + 2, 1e-12);
  mx_list_clear(&outs);
  mx_list_clear(&vj);

  /* wrong number of cotangents, wrong shape */
  mx_clear_error();
  ASSERT(mx_vjp(f, (mx_array *[]){x, y}, 2, (mx_array *[]){c0}, 1, NULL, &vj) != MX_OK);
  ASSERT(strstr(mx_last_error(), "cotangents") != NULL);
  ASSERT(mx_vjp(f, (mx_array *[]){x, y}, 2, (mx_array *[]){c1, c1}, 2, NULL, &vj) != MX_OK);
  ASSERT(strstr(mx_last_error(), "shape") != NULL);
  ASSERT_EQ_INT(vj.size, 0);

  /* grad of a non-scalar output is an error naming the shape */
  mx_closure *g2 = mx_grad(f, (int[]){0}, 1);
  ASSERT_OK(mx_closure_apply(g2, (mx_array *[]){x, y}, 2, &r));
  ASSERT_EQ_INT(r.size, 1);
  mx_list_clear(&r);
  mx_closure *bad = mx_grad(f, (int[]){5}, 1);
  ASSERT(mx_closure_apply(bad, (mx_array *[]){x, y}, 2, &r) != MX_OK);
  ASSERT(strstr(mx_last_error(), "argnum 5") != NULL);
  ASSERT(mx_grad(f, (int[]){0, 0}, 2) == NULL);
  mx_closure_free(bad);
  mx_closure_free(g2);
  mx_array_free(c0);
  mx_array_free(c1);
  mx_closure_free(vg);
  mx_closure_free(f);
  mx_array_free(x);
  mx_array_free(y);
}

static int f_vector_out(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  return mx_list_push(out, mx_exp(in[0]));
}

TEST(grad_errors_name_the_problem) {
  mx_array *x = mx_ones((int64_t[]){3}, 1, MX_FLOAT32);
  mx_closure *f = mx_closure_new(f_vector_out, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT(mx_closure_apply(g, &x, 1, &r) != MX_OK);
  ASSERT(strstr(mx_last_error(), "scalar") != NULL);
  ASSERT_EQ_INT(r.size, 0);
  mx_closure_free(g);
  mx_closure_free(f);

  mx_array_free(x);
}

static int f_novjp(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  const mx__op_def *d = p;
  mx_array *node = mx__node_new(d, in[0]->dtype, in[0]->shape, in[0]->ndim, in, 1, NULL, 0);
  mx_array *s = mx_sum(node, NULL, 0, false);
  mx_array_free(node);
  return mx_list_push(out, s);
}

TEST(missing_vjp_is_an_error_naming_the_op) {
  static const mx__op_def def_novjp = {.id = MX_OP_EXP};
  mx_array *x = mx_ones((int64_t[]){3}, 1, MX_FLOAT32);
  mx_closure *f = mx_closure_new(f_novjp, (void *)&def_novjp, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT(mx_closure_apply(g, &x, 1, &r) != MX_OK);
  ASSERT(strstr(mx_last_error(), "'exp'") != NULL);
  ASSERT(strstr(mx_last_error(), "not differentiable") != NULL);
  /* a zero_grad op gives zeros instead */
  static const mx__op_def def_zero = {.id = MX_OP_EXP, .zero_grad = true};
  mx_closure *f2 = mx_closure_new(f_novjp, (void *)&def_zero, NULL);
  mx_closure *g2 = mx_grad(f2, NULL, 0);
  ASSERT_OK(mx_closure_apply(g2, &x, 1, &r));
  mx_array *z = mx_zeros((int64_t[]){3}, 1, MX_FLOAT32);
  ASSERT_CLOSE(r.items[0], z, 0);
  mx_array_free(z);
  mx_list_clear(&r);
  mx_closure_free(g2);
  mx_closure_free(f2);
  mx_closure_free(g);
  mx_closure_free(f);
  mx_array_free(x);
}

/* ---- broadcasting and views ------------------------------------------------------ */
static int f_bcast(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  /* x (3, 4), b (4,), s () ; sum((x + b) * s) plus a slice and transpose */
  mx_array *a = mx_add(in[0], in[1]);
  mx_array *m = mx_multiply(a, in[2]);
  mx_array *t = mx_transpose(m, NULL, 0);
  mx_array *sl = mx_slice_axis(t, 0, 1, 4, 2); /* rows 1 and 3 of t */
  mx_array *sq = mx_square(sl);
  int st = mx_list_push(out, mx_sum(sq, NULL, 0, false));
  mx_array_free(a); mx_array_free(m); mx_array_free(t); mx_array_free(sl); mx_array_free(sq);
  return st;
}

TEST(gradients_reduce_broadcasts_and_scatter_views) {
  mx_array *x = randn((int64_t[]){3, 4}, 2, MX_FLOAT64, 1);
  mx_array *b = randn((int64_t[]){4}, 1, MX_FLOAT64, 2);
  mx_array *s = mx_array_scalar(1.5, MX_FLOAT64);
  mx_closure *f = mx_closure_new(f_bcast, NULL, NULL);
  mx_closure *g = mx_grad(f, (int[]){0, 1, 2}, 3);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(g, (mx_array *[]){x, b, s}, 3, &r));
  ASSERT_EQ_INT(mx_array_ndim(r.items[1]), 1);
  ASSERT_EQ_INT(mx_array_ndim(r.items[2]), 0);
  double xv[12], bv[4], gx[12], gb[4], gs;
  mx_array_copy_to(x, MX_FLOAT64, xv, 12);
  mx_array_copy_to(b, MX_FLOAT64, bv, 4);
  ASSERT_OK(mx_array_copy_to(r.items[0], MX_FLOAT64, gx, 12));
  ASSERT_OK(mx_array_copy_to(r.items[1], MX_FLOAT64, gb, 4));
  ASSERT_OK(mx_array_copy_to(r.items[2], MX_FLOAT64, &gs, 1));
  double wb[4] = {0}, ws = 0;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 4; j++) {
      double a = xv[i * 4 + j] + bv[j];
      bool used = j == 1 || j == 3;
      double want = used ? 2 * a * 1.5 * 1.5 : 0;
      ASSERT_NEAR(gx[i * 4 + j], want, 1e-12);
      wb[j] += want;
      if (used) ws += 2 * a * a * 1.5;
    }
  for (int j = 0; j < 4; j++) ASSERT_NEAR(gb[j], wb[j], 1e-12);
  ASSERT_NEAR(gs, ws, 1e-10);
  mx_list_clear(&r);
  mx_closure_free(g);
  mx_closure_free(f);
  mx_array_free(x); mx_array_free(b); mx_array_free(s);
}

/* Slices of one array x (4, 8), each used as sum(c_k * slice_k(x) * slice_k(w)), plus
 * sum(x * w): the cotangents of slices that tile one axis are gathered into
 * one concatenation (zeros in the gaps), other sets take the slice VJP. */
typedef struct {
  int n;
  int64_t start[4][2], stop[4][2], step[4][2];
  bool gathered; /* the gradient's graph concatenates (no slice_update) */
} slice_set;

static int f_slices(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  const slice_set *s = p;
  mx_array *acc = mx_multiply(in[0], in[1]);
  mx_array *tot = mx_sum(acc, NULL, 0, false);
  mx_array_free(acc);
  for (int k = 0; k < s->n; k++) {
    mx_array *a = mx_slice(in[0], s->start[k], s->stop[k], s->step[k], 2);
    mx_array *b = mx_slice(in[1], s->start[k], s->stop[k], s->step[k], 2);
    mx_array *m = mx_multiply(a, b);
    mx_array *ms = mx_multiply_scalar(m, (double)(k + 2));
    mx_array *t = mx_sum(ms, NULL, 0, false);
    mx_array *nt = mx_add(tot, t);
    mx_array *fr[] = {a, b, m, ms, t, tot};
    mx_array_free_n(fr, 6);
    tot = nt;
  }
  return mx_list_push(out, tot);
}

static bool has_op(const mx_array *a, int id, int depth) {
  if (!a || depth > 60) return false;
  if (a->op && (int)a->op->id == id) return true;
  for (int i = 0; a->op && i < a->ninputs; i++)
    if (has_op(a->inputs[i], id, depth + 1)) return true;
  return false;
}

TEST(slice_cotangents_are_gathered_when_they_tile_an_axis) {
  const slice_set sets[] = {
      /* columns 0-2, 5-7 and 3: disjoint, one axis, a gap at column 4 */
      {3, {{0, 0}, {0, 5}, {0, 3}}, {{4, 3}, {4, 8}, {4, 4}}, {{1, 1}, {1, 1}, {1, 1}}, true},
      /* rows 0-1 and 2-3: tile axis 0 exactly */
      {2, {{0, 0}, {2, 0}}, {{2, 8}, {4, 8}}, {{1, 1}, {1, 1}}, true},
      /* overlapping columns 0-3 and 2-5: the slice VJP */
      {2, {{0, 0}, {0, 2}}, {{4, 4}, {4, 6}}, {{1, 1}, {1, 1}}, false},
      /* two axes at once, and a step of 2: the slice VJP */
      {2, {{0, 1}, {0, 4}}, {{2, 3}, {4, 5}}, {{1, 1}, {1, 1}}, false},
      {2, {{0, 0}, {0, 1}}, {{4, 8}, {4, 8}}, {{1, 2}, {1, 2}}, false},
  };
  mx_array *x = randn((int64_t[]){4, 8}, 2, MX_FLOAT64, 31);
  mx_array *w = randn((int64_t[]){4, 8}, 2, MX_FLOAT64, 32);
  double wv[32];
  ASSERT_OK(mx_array_copy_to(w, MX_FLOAT64, wv, 32));
  for (size_t si = 0; si < sizeof sets / sizeof *sets; si++) {
    const slice_set *s = &sets[si];
    double want[32];
    for (int i = 0; i < 32; i++) want[i] = wv[i];
    for (int k = 0; k < s->n; k++)
      for (int64_t r = s->start[k][0]; r < s->stop[k][0]; r += s->step[k][0])
        for (int64_t c = s->start[k][1]; c < s->stop[k][1]; c += s->step[k][1])
          want[r * 8 + c] += (k + 2) * wv[r * 8 + c];
    mx_closure *f = mx_closure_new(f_slices, (void *)s, NULL);
    mx_array *one = mx_array_scalar(1.0, MX_FLOAT64);
    mx_list g = MX_LIST_INIT;
    ASSERT_OK(mx_vjp(f, (mx_array *[]){x, w}, 2, &one, 1, NULL, &g));
    ASSERT_MSG(has_op(g.items[0], MX_OP_CONCATENATE, 0) == s->gathered &&
                   has_op(g.items[0], MX_OP_SLICE_UPDATE, 0) == !s->gathered,
               "set %zu: gathered %d expected", si, s->gathered);
    double gx[32];
    ASSERT_OK(mx_array_copy_to(g.items[0], MX_FLOAT64, gx, 32));
    for (int i = 0; i < 32; i++)
      ASSERT_MSG(fabs(gx[i] - want[i]) <= 1e-12 * (1 + fabs(want[i])),
                 "set %zu: element %d %.17g != %.17g", si, i, gx[i], want[i]);
    mx_list_clear(&g);
    mx_array_free(one);
    mx_closure_free(f);
  }
  mx_array_free(x);
  mx_array_free(w);
}

/* f(x, A, B, C) = sum(sin(x A)) + sum(cos(x B)) + sum((x C)^2): x's
 * cotangent is the sum of three products */
static int f_three_products(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *xa = mx_matmul(in[0], in[1]), *xb = mx_matmul(in[0], in[2]);
  mx_array *xc = mx_matmul(in[0], in[3]);
  mx_array *s1 = mx_sin(xa), *c1 = mx_cos(xb), *q = mx_square(xc);
  mx_array *t1 = mx_sum(s1, NULL, 0, false), *t2 = mx_sum(c1, NULL, 0, false);
  mx_array *t3 = mx_sum(q, NULL, 0, false);
  mx_array *u = mx_add(t1, t2);
  int st = mx_list_push(out, mx_add(u, t3));
  mx_array *fr[] = {xa, xb, xc, s1, c1, q, t1, t2, t3, u};
  mx_array_free_n(fr, 10);
  return st;
}

static bool has_addmm(const mx_array *a, int depth) {
  if (!a || depth > 60) return false;
  if (a->op && a->op->id == MX_OP_MATMUL && a->ninputs == 3) return true;
  for (int i = 0; a->op && i < a->ninputs; i++)
    if (has_addmm(a->inputs[i], depth + 1)) return true;
  return false;
}

TEST(cotangent_sums_of_products_fold_into_addmm) {
  /* x (2, 3, 4): the products fold the batch into M (one 2-d GEMM each),
   * so the sweep adds them as addmm's c */
  mx_array *x = randn((int64_t[]){2, 3, 4}, 3, MX_FLOAT64, 41);
  mx_array *w[3];
  for (int i = 0; i < 3; i++) w[i] = randn((int64_t[]){4, 5}, 2, MX_FLOAT64, 42 + (uint64_t)i);
  double xv[24], av[20], bv[20], cv[20];
  ASSERT_OK(mx_array_copy_to(x, MX_FLOAT64, xv, 24));
  ASSERT_OK(mx_array_copy_to(w[0], MX_FLOAT64, av, 20));
  ASSERT_OK(mx_array_copy_to(w[1], MX_FLOAT64, bv, 20));
  ASSERT_OK(mx_array_copy_to(w[2], MX_FLOAT64, cv, 20));
  double want[24];
  for (int r = 0; r < 6; r++)
    for (int k = 0; k < 4; k++) {
      double g = 0;
      for (int j = 0; j < 5; j++) {
        double ya = 0, yb = 0, yc = 0;
        for (int i = 0; i < 4; i++) {
          ya += xv[r * 4 + i] * av[i * 5 + j];
          yb += xv[r * 4 + i] * bv[i * 5 + j];
          yc += xv[r * 4 + i] * cv[i * 5 + j];
        }
        g += cos(ya) * av[k * 5 + j] - sin(yb) * bv[k * 5 + j] + 2 * yc * cv[k * 5 + j];
      }
      want[r * 4 + k] = g;
    }
  mx_closure *f = mx_closure_new(f_three_products, NULL, NULL);
  mx_array *one = mx_array_scalar(1.0, MX_FLOAT64);
  mx_list g = MX_LIST_INIT;
  ASSERT_OK(mx_vjp(f, (mx_array *[]){x, w[0], w[1], w[2]}, 4, &one, 1, NULL, &g));
  const char *e = getenv("MXC_GRAD_ADDMM");
  if (!(e && !strcmp(e, "0"))) ASSERT_MSG(has_addmm(g.items[0], 0), "no addmm in x's gradient");
  double gx[24];
  ASSERT_OK(mx_array_copy_to(g.items[0], MX_FLOAT64, gx, 24));
  for (int i = 0; i < 24; i++)
    ASSERT_MSG(fabs(gx[i] - want[i]) <= 1e-12 * (1 + fabs(want[i])), "element %d %.17g != %.17g",
               i, gx[i], want[i]);
  mx_list_clear(&g);
  mx_array_free(one);
  mx_closure_free(f);
  mx_array_free(x);
  for (int i = 0; i < 3; i++) mx_array_free(w[i]);
}

/* f(x, w, a, b) = sum(rms_norm(x, w) * a) + sum(x * b): x's cotangent is
 * the norm's dx plus the skip path's b */
static int f_norm_skip(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *y = mx_fast_rms_norm(in[0], in[1], 1e-5), *ya = mx_multiply(y, in[2]);
  mx_array *xb = mx_multiply(in[0], in[3]);
  mx_array *t1 = mx_sum(ya, NULL, 0, false), *t2 = mx_sum(xb, NULL, 0, false);
  int st = mx_list_push(out, mx_add(t1, t2));
  mx_array_free_n((mx_array *[]){y, ya, xb, t1, t2}, 5);
  return st;
}

static bool has_norm_add(const mx_array *a, int depth) {
  if (!a || depth > 60) return false;
  if (a->op && a->op->id == MX_OP_RMS_NORM_GRAD &&
      MX__PARAMS(a, mx__rms_norm_grad_params)->has_resid)
    return true;
  for (int i = 0; a->op && i < a->ninputs; i++)
    if (has_norm_add(a->inputs[i], depth + 1)) return true;
  return false;
}

TEST(residual_gradient_folds_into_rms_norm_backward) {
  mx_array *x = randn((int64_t[]){3, 16}, 2, MX_FLOAT64, 51);
  mx_array *w = randn((int64_t[]){16}, 1, MX_FLOAT64, 52);
  mx_array *a = randn((int64_t[]){3, 16}, 2, MX_FLOAT64, 53);
  mx_array *b = randn((int64_t[]){3, 16}, 2, MX_FLOAT64, 54);
  mx_array *dx = mx__fast_rms_norm_grad(0, x, a, w, 1e-5), *want = mx_add(dx, b);
  mx_closure *f = mx_closure_new(f_norm_skip, NULL, NULL);
  mx_array *one = mx_array_scalar(1.0, MX_FLOAT64);
  mx_list g = MX_LIST_INIT;
  ASSERT_OK(mx_vjp(f, (mx_array *[]){x, w, a, b}, 4, &one, 1, NULL, &g));
  const char *e = getenv("MXC_GRAD_NORM_ADD");
  if (!(e && !strcmp(e, "0")))
    ASSERT_MSG(has_norm_add(g.items[0], 0), "no rms_norm_backward with a residual");
  double gv[48], wv[48];
  ASSERT_OK(mx_array_copy_to(g.items[0], MX_FLOAT64, gv, 48));
  ASSERT_OK(mx_array_copy_to(want, MX_FLOAT64, wv, 48));
  for (int i = 0; i < 48; i++)
    ASSERT_MSG(fabs(gv[i] - wv[i]) <= 1e-12 * (1 + fabs(wv[i])), "element %d %.17g != %.17g", i,
               gv[i], wv[i]);
  mx_list_clear(&g);
  mx_array_free_n((mx_array *[]){x, w, a, b, dx, want, one}, 7);
  mx_closure_free(f);
}

static int f_stop(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *sg = mx_stop_gradient(in[0]);
  mx_array *m = mx_multiply(sg, in[0]); /* d/dx = sg = x */
  int st = mx_list_push(out, mx_sum(m, NULL, 0, false));
  mx_array_free(sg); mx_array_free(m);
  return st;
}

TEST(stop_gradient_blocks_the_gradient) {
  mx_array *x = randn((int64_t[]){5}, 1, MX_FLOAT32, 3);
  mx_closure *f = mx_closure_new(f_stop, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(g, &x, 1, &r));
  ASSERT_CLOSE(r.items[0], x, 1e-6);
  mx_list_clear(&r);
  mx_closure_free(g);
  mx_closure_free(f);
  mx_array_free(x);
}

/* sum(astype(x, float32) * w) */
static int f_astype(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *c = mx_astype(in[0], MX_FLOAT32), *m = mx_multiply(c, in[1]);
  int st = mx_list_push(out, mx_sum(m, NULL, 0, false));
  mx_array_free(c); mx_array_free(m);
  return st;
}

TEST(astype_passes_the_gradient_back_in_the_input_dtype) {
  mx_array *x = randn((int64_t[]){5}, 1, MX_FLOAT64, 7);
  mx_array *w = randn((int64_t[]){5}, 1, MX_FLOAT32, 8);
  mx_closure *f = mx_closure_new(f_astype, NULL, NULL);
  mx_closure *g = mx_grad(f, (int[]){0}, 1);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(g, (mx_array *[]){x, w}, 2, &r));
  ASSERT_EQ_INT(mx_array_dtype(r.items[0]), MX_FLOAT64);
  ASSERT_CLOSE(r.items[0], w, 1e-7);
  mx_list_clear(&r);
  mx_closure_free(g);
  mx_closure_free(f);
  mx_array_free(x);
  mx_array_free(w);
}

/* ---- parameter maps ------------------------------------------------------------------- */
TEST(map_basics) {
  mx_map *m = mx_map_new();
  char key[32];
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof key, "layers.%d.weight", i);
    ASSERT_OK(mx_map_set_take(m, key, mx_array_scalar(i, MX_FLOAT32)));
  }
  ASSERT_EQ_INT(mx_map_size(m), 100);
  ASSERT_STR_EQ(mx_map_key(m, 37), "layers.37.weight");
  ASSERT_NEAR(item(mx_map_get(m, "layers.99.weight")), 99, 0);
  ASSERT_OK(mx_map_set_take(m, "layers.5.weight", mx_array_scalar(-5, MX_FLOAT32)));
  ASSERT_EQ_INT(mx_map_size(m), 100);
  ASSERT_NEAR(item(mx_map_value(m, 5)), -5, 0);
  ASSERT_OK(mx_map_remove(m, "layers.0.weight"));
  ASSERT_EQ_INT(mx_map_size(m), 99);
  ASSERT_STR_EQ(mx_map_key(m, 0), "layers.1.weight");
  ASSERT(mx_map_has(m, "layers.50.weight"));
  ASSERT(!mx_map_has(m, "layers.0.weight"));
  ASSERT(mx_map_get(m, "nope") == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_NOT_FOUND);
  ASSERT(strstr(mx_last_error(), "nope") != NULL);
  ASSERT(mx_map_set_take(m, "x", NULL) != MX_OK);
  mx_map *c = mx_map_copy(m);
  ASSERT_EQ_INT(mx_map_size(c), 99);
  ASSERT(mx_map_value(c, 3) == mx_map_value(m, 3));
  ASSERT_OK(mx_map_eval(c));
  mx_map_clear(m);
  ASSERT_EQ_INT(mx_map_size(m), 0);
  ASSERT(mx_map_get(m, "layers.1.weight") == NULL);
  mx_map_free(m);
  mx_map_free(c);
  mx_map_free(NULL);
}

/* loss(params, [x]) = sum(tanh(x @ w + b)) */
static int f_params(void *p, const mx_map *params, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *w = mx_map_get(params, "w"), *b = mx_map_get(params, "b");
  mx_array *y = mx_matmul(in[0], w);
  mx_array *z = mx_add(y, b);
  mx_array *t = mx_tanh(z);
  int st = mx_list_push(out, mx_sum(t, NULL, 0, false));
  mx_array_free(y); mx_array_free(z); mx_array_free(t);
  return st;
}

TEST(value_and_grad_over_a_parameter_map) {
  mx_array *x = randn((int64_t[]){4, 3}, 2, MX_FLOAT64, 4);
  mx_map *params = mx_map_new(), *grads = mx_map_new();
  mx_map_set_take(params, "w", randn((int64_t[]){3, 2}, 2, MX_FLOAT64, 5));
  mx_map_set_take(params, "b", randn((int64_t[]){2}, 1, MX_FLOAT64, 6));
  mx_list v = MX_LIST_INIT;
  ASSERT_OK(mx_value_and_grad_map(f_params, NULL, params, &x, 1, &v, grads));
  ASSERT_EQ_INT(v.size, 1);
  ASSERT_EQ_INT(mx_map_size(grads), 2);
  ASSERT_STR_EQ(mx_map_key(grads, 0), "w");
  ASSERT_STR_EQ(mx_map_key(grads, 1), "b");
  /* reference: d/db = sum_rows(1 - tanh^2), d/dw = x^T (1 - tanh^2) */
  mx_array *y = mx_matmul(x, mx_map_get(params, "w"));
  mx_array *z = mx_add(y, mx_map_get(params, "b"));
  mx_array *t = mx_tanh(z);
  mx_array *t2 = mx_square(t);
  mx_array *one = mx_array_scalar(1, MX_FLOAT64);
  mx_array *d = mx_subtract(one, t2);
  mx_array *db = mx_sum(d, (int[]){0}, 1, false);
  mx_array *xt = mx_transpose(x, NULL, 0);
  mx_array *dw = mx_matmul(xt, d);
  mx_array *loss = mx_sum(t, NULL, 0, false);
  ASSERT_CLOSE(v.items[0], loss, 1e-12);
  ASSERT_CLOSE(mx_map_get(grads, "b"), db, 1e-12);
  ASSERT_CLOSE(mx_map_get(grads, "w"), dw, 1e-12);
  mx_array *arrs[] = {y, z, t, t2, one, d, db, xt, dw, loss};
  mx_array_free_n(arrs, 10);
  mx_list_clear(&v);
  mx_map_free(params);
  mx_map_free(grads);
  mx_array_free(x);
}

/* ---- jvp ------------------------------------------------------------------------------- */
/* f(x, w) = [sin(x) * exp(x), tanh(x @ w), sum(x^2)] */
static int f_multi(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *s = mx_sin(in[0]), *e = mx_exp(in[0]);
  mx_array *mm = mx_matmul(in[0], in[1]);
  mx_array *sq = mx_square(in[0]);
  int st = mx_list_push(out, mx_multiply(s, e));
  if (!st) st = mx_list_push(out, mx_tanh(mm));
  if (!st) st = mx_list_push(out, mx_sum(sq, NULL, 0, false));
  mx_array_free(s); mx_array_free(e); mx_array_free(mm); mx_array_free(sq);
  return st;
}

TEST(jvp_is_the_transpose_of_vjp) {
  mx_array *x = randn((int64_t[]){3, 4}, 2, MX_FLOAT64, 10);
  mx_array *w = randn((int64_t[]){4, 5}, 2, MX_FLOAT64, 11);
  mx_array *tx = randn((int64_t[]){3, 4}, 2, MX_FLOAT64, 12);
  mx_array *tw = randn((int64_t[]){4, 5}, 2, MX_FLOAT64, 13);
  mx_array *c0 = randn((int64_t[]){3, 4}, 2, MX_FLOAT64, 14);
  mx_array *c1 = randn((int64_t[]){3, 5}, 2, MX_FLOAT64, 15);
  mx_array *c2 = randn(NULL, 0, MX_FLOAT64, 16);
  mx_closure *f = mx_closure_new(f_multi, NULL, NULL);
  mx_list o1 = MX_LIST_INIT, jv = MX_LIST_INIT, o2 = MX_LIST_INIT, vj = MX_LIST_INIT;
  ASSERT_OK(mx_jvp(f, (mx_array *[]){x, w}, 2, (mx_array *[]){tx, tw}, 2, &o1, &jv));
  ASSERT_OK(mx_vjp(f, (mx_array *[]){x, w}, 2, (mx_array *[]){c0, c1, c2}, 3, &o2, &vj));
  ASSERT_EQ_INT(jv.size, 3);
  ASSERT_EQ_INT(vj.size, 2);
  double lhs = dot(jv.items[0], c0) + dot(jv.items[1], c1) + dot(jv.items[2], c2);
  double rhs = dot(tx, vj.items[0]) + dot(tw, vj.items[1]);
  ASSERT_NEAR(lhs, rhs, 1e-10 * (1 + fabs(rhs)));
  /* and the first output's jvp is analytic: (cos x e^x + sin x e^x) tx */
  mx_array *cs = mx_cos(x), *sn = mx_sin(x), *ex = mx_exp(x);
  mx_array *a = mx_add(cs, sn), *b = mx_multiply(a, ex), *want = mx_multiply(b, tx);
  ASSERT_CLOSE(jv.items[0], want, 1e-12);
  mx_array *arrs[] = {cs, sn, ex, a, b, want, x, w, tx, tw, c0, c1, c2};
  mx_array_free_n(arrs, 13);
  mx_list_clear(&o1); mx_list_clear(&o2); mx_list_clear(&jv); mx_list_clear(&vj);
  mx_closure_free(f);
}

/* ---- higher order --------------------------------------------------------------------- */
TEST(grad_of_grad_tanh_and_exp) {
  mx_array *x = randn((int64_t[]){6}, 1, MX_FLOAT64, 20);
  /* tanh: d2/dx2 sum(tanh) = -2 tanh (1 - tanh^2) */
  mx_closure *f = mx_closure_new(f_sum_tanh, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_closure *h = mx_closure_new(f_sum_of, g, NULL);
  mx_closure *gg = mx_grad(h, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(gg, &x, 1, &r));
  double xv[6], got[6];
  mx_array_copy_to(x, MX_FLOAT64, xv, 6);
  ASSERT_OK(mx_array_copy_to(r.items[0], MX_FLOAT64, got, 6));
  for (int i = 0; i < 6; i++) {
    double t = tanh(xv[i]);
    ASSERT_NEAR(got[i], -2 * t * (1 - t * t), 1e-12);
  }
  mx_list_clear(&r);
  /* third order: d3/dx3 sum(tanh) = -2 (1 - t^2)(1 - 3 t^2) */
  mx_closure *h2 = mx_closure_new(f_sum_of, gg, NULL);
  mx_closure *ggg = mx_grad(h2, NULL, 0);
  ASSERT_OK(mx_closure_apply(ggg, &x, 1, &r));
  ASSERT_OK(mx_array_copy_to(r.items[0], MX_FLOAT64, got, 6));
  for (int i = 0; i < 6; i++) {
    double t = tanh(xv[i]);
    ASSERT_NEAR(got[i], -2 * (1 - t * t) * (1 - 3 * t * t), 1e-11);
  }
  mx_list_clear(&r);
  mx_closure_free(ggg); mx_closure_free(h2);
  mx_closure_free(gg); mx_closure_free(h); mx_closure_free(g); mx_closure_free(f);

  /* exp: every derivative is exp */
  f = mx_closure_new(f_sum_exp, NULL, NULL);
  g = mx_grad(f, NULL, 0);
  h = mx_closure_new(f_sum_of, g, NULL);
  gg = mx_grad(h, NULL, 0);
  ASSERT_OK(mx_closure_apply(gg, &x, 1, &r));
  mx_array *e = mx_exp(x);
  ASSERT_CLOSE(r.items[0], e, 1e-12);
  mx_array_free(e);
  mx_list_clear(&r);
  mx_closure_free(gg); mx_closure_free(h); mx_closure_free(g); mx_closure_free(f);
  mx_array_free(x);
}

/* f(W; X, V) = sum(tanh(tanh(X @ W) @ V)) */
static int f_chain(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *a = mx_matmul(in[1], in[0]), *b = mx_tanh(a);
  mx_array *c = mx_matmul(b, in[2]), *d = mx_tanh(c);
  int st = mx_list_push(out, mx_sum(d, NULL, 0, false));
  mx_array_free(a); mx_array_free(b); mx_array_free(c); mx_array_free(d);
  return st;
}
/* <grad f(W), U>: payload is grad(f_chain); inputs W, X, V, U */
static int f_grad_dot(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  mx_list r = MX_LIST_INIT;
  int st = mx_closure_apply((mx_closure *)p, in, 3, &r);
  if (!st) {
    mx_array *m = mx_multiply(r.items[0], in[3]);
    st = mx_list_push(out, mx_sum(m, NULL, 0, false));
    mx_array_free(m);
  }
  mx_list_clear(&r);
  return st;
}

TEST(grad_of_grad_matmul_chain_matches_finite_differences) {
  mx_array *W = randn((int64_t[]){4, 3}, 2, MX_FLOAT64, 30);
  mx_array *X = randn((int64_t[]){5, 4}, 2, MX_FLOAT64, 31);
  mx_array *V = randn((int64_t[]){3, 2}, 2, MX_FLOAT64, 32);
  mx_array *U = randn((int64_t[]){4, 3}, 2, MX_FLOAT64, 33);
  mx_closure *f = mx_closure_new(f_chain, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_closure *h = mx_closure_new(f_grad_dot, g, NULL);
  mx_closure *hv = mx_grad(h, NULL, 0); /* Hessian-vector product H U */
  mx_list r = MX_LIST_INIT, gp = MX_LIST_INIT, gm = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(hv, (mx_array *[]){W, X, V, U}, 4, &r));
  double eps = 1e-5;
  mx_array *eu = mx_multiply_scalar(U, eps);
  mx_array *wp = mx_add(W, eu), *wm = mx_subtract(W, eu);
  ASSERT_OK(mx_closure_apply(g, (mx_array *[]){wp, X, V}, 3, &gp));
  ASSERT_OK(mx_closure_apply(g, (mx_array *[]){wm, X, V}, 3, &gm));
  mx_array *diff = mx_subtract(gp.items[0], gm.items[0]);
  mx_array *fd = mx_multiply_scalar(diff, 1 / (2 * eps));
  ASSERT_CLOSE(r.items[0], fd, 1e-7);
  mx_array *arrs[] = {eu, wp, wm, diff, fd, W, X, V, U};
  mx_array_free_n(arrs, 9);
  mx_list_clear(&r); mx_list_clear(&gp); mx_list_clear(&gm);
  mx_closure_free(hv); mx_closure_free(h); mx_closure_free(g); mx_closure_free(f);
}

/* ---- custom VJP ------------------------------------------------------------------------ */
static int f_exp_only(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  return mx_list_push(out, mx_exp(in[0]));
}
/* vjp(primals, cotangents, outputs) = 3 * cot * out (deliberately not exp's) */
static int f_exp_vjp(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p);
  if (n != 3) return mx__set_error(MX_ERR_INVALID_ARG, "expected 3 inputs");
  mx_array *m = mx_multiply(in[1], in[2]);
  int st = mx_list_push(out, mx_multiply_scalar(m, 3));
  mx_array_free(m);
  return st;
}
static int f_sum_closure(void *p, mx_array **in, int n, mx_list *out) {
  return f_sum_of(p, in, n, out);
}

TEST(custom_vjp_replaces_the_gradient) {
  mx_array *x = randn((int64_t[]){2, 3}, 2, MX_FLOAT32, 40);
  mx_closure *f = mx_closure_new(f_exp_only, NULL, NULL);
  mx_closure *v = mx_closure_new(f_exp_vjp, NULL, NULL);
  mx_closure *cf = mx_custom_vjp(f, v);
  mx_closure_free(f);
  mx_closure_free(v); /* the transform keeps its own references */
  mx_closure *s = mx_closure_new(f_sum_closure, cf, NULL);
  mx_closure *vg = mx_value_and_grad(s, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vg, &x, 1, &r));
  mx_array *e = mx_exp(x), *e3 = mx_multiply_scalar(e, 3), *se = mx_sum(e, NULL, 0, false);
  ASSERT_CLOSE(r.items[0], se, 1e-6);
  ASSERT_CLOSE(r.items[1], e3, 1e-6);
  mx_list_clear(&r);
  /* the forward value of the custom function is f's */
  ASSERT_OK(mx_closure_apply(cf, &x, 1, &r));
  ASSERT_CLOSE(r.items[0], e, 1e-6);
  mx_list_clear(&r);
  mx_array_free(e); mx_array_free(e3); mx_array_free(se);
  mx_closure_free(vg); mx_closure_free(s); mx_closure_free(cf);
  mx_array_free(x);
}

/* ---- checkpointing ------------------------------------------------------------------------ */
#define NLAYERS 32
#define WIDTH 128
#define BATCH 1024

#define SEGMENT 4 /* layers per checkpointed segment */

/* SEGMENT layers h' = tanh(h @ W + b); inputs [h, w0, b0, w1, b1, ...] */
static int f_segment(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *h = mx_array_retain(in[0]);
  for (int l = 0; l < SEGMENT; l++) {
    mx_array *y = mx_matmul(h, in[1 + 2 * l]);
    mx_array *z = mx_add(y, in[2 + 2 * l]);
    mx_array_free(h);
    h = mx_tanh(z);
    mx_array_free(y); mx_array_free(z);
  }
  return mx_list_push(out, h);
}

static int f_mlp(void *payload, const mx_map *params, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  mx_closure *segment = payload; /* plain or checkpointed */
  mx_array *h = mx_array_retain(in[0]);
  char k[32];
  int st = MX_OK;
  for (int s = 0; s < NLAYERS / SEGMENT && !st; s++) {
    mx_array *args[1 + 2 * SEGMENT];
    args[0] = h;
    for (int l = 0; l < SEGMENT; l++) {
      snprintf(k, sizeof k, "w%d", s * SEGMENT + l);
      args[1 + 2 * l] = mx_map_get(params, k);
      snprintf(k, sizeof k, "b%d", s * SEGMENT + l);
      args[2 + 2 * l] = mx_map_get(params, k);
    }
    mx_list r = MX_LIST_INIT;
    st = mx_closure_apply(segment, args, 1 + 2 * SEGMENT, &r);
    mx_array_free(h);
    h = st ? NULL : mx_array_retain(r.items[0]);
    mx_list_clear(&r);
  }
  if (!st) {
    mx_array *sq = mx_square(h);
    st = mx_list_push(out, mx_mean(sq, NULL, 0, false));
    mx_array_free(sq);
  }
  mx_array_free(h);
  return st;
}

static size_t run_mlp(mx_closure *layer, mx_map *params, mx_array *x, mx_map *grads) {
  mx_list v = MX_LIST_INIT;
  size_t before = mx_get_active_memory();
  mx_reset_peak_memory();
  int st = mx_value_and_grad_map(f_mlp, layer, params, &x, 1, &v, grads);
  if (!st) {
    mx_list all = MX_LIST_INIT;
    /* gradients in parameter order: mx_eval visits roots last to first, so
     * the backward pass frees each layer's activations as soon as its
     * gradient is computed */
    mx_list_push_retain(&all, v.items[0]);
    for (int i = 0; i < mx_map_size(grads); i++) mx_list_push_retain(&all, mx_map_value(grads, i));
    st = mx_eval(all.items, all.size);
    mx_list_clear(&all);
  }
  size_t peak = mx_get_peak_memory();
  mx_list_clear(&v);
  return st ? 0 : peak - before;
}

TEST(checkpoint_lowers_peak_memory_with_equal_gradients) {
  mx_map *params = mx_map_new();
  char k[32];
  for (int l = 0; l < NLAYERS; l++) {
    snprintf(k, sizeof k, "w%d", l);
    mx_array *w = randn((int64_t[]){WIDTH, WIDTH}, 2, MX_FLOAT32, 100 + (uint64_t)l);
    mx_map_set_take(params, k, mx_multiply_scalar(w, 1.0 / sqrt(WIDTH)));
    mx_array_free(w);
    snprintf(k, sizeof k, "b%d", l);
    mx_map_set_take(params, k, mx_zeros((int64_t[]){WIDTH}, 1, MX_FLOAT32));
  }
  ASSERT_OK(mx_map_eval(params));
  mx_array *x = randn((int64_t[]){BATCH, WIDTH}, 2, MX_FLOAT32, 99);
  mx_closure *layer = mx_closure_new(f_segment, NULL, NULL);
  mx_closure *ck = mx_checkpoint(layer);
  mx_map *g_plain = mx_map_new(), *g_ck = mx_map_new();
  size_t peak_plain = run_mlp(layer, params, x, g_plain);
  ASSERT(peak_plain > 0);
  size_t peak_ck = run_mlp(ck, params, x, g_ck);
  ASSERT(peak_ck > 0);
  printf("    %d-layer MLP (%dx%d, batch %d, f32; checkpoint every %d layers): peak %.2f MiB "
         "plain, %.2f MiB checkpointed\n", NLAYERS, WIDTH, WIDTH, BATCH, SEGMENT,
         peak_plain / 1048576.0, peak_ck / 1048576.0);
  ASSERT(peak_ck < peak_plain);
  ASSERT_EQ_INT(mx_map_size(g_ck), 2 * NLAYERS);
  for (int i = 0; i < mx_map_size(g_plain); i++)
    ASSERT_CLOSE(mx_map_value(g_ck, i), mx_map_value(g_plain, i), 1e-6);
  mx_map_free(g_plain);
  mx_map_free(g_ck);
  mx_closure_free(ck);
  mx_closure_free(layer);
  mx_map_free(params);
  mx_array_free(x);
}

/* ---- vmap ----------------------------------------------------------------------------------- */
static int f_rowdot(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  /* x (D,), W (D, E): [tanh(x @ W), sum(x * x)] */
  mx_array *m = mx_matmul(in[0], in[1]), *sq = mx_square(in[0]);
  int st = mx_list_push(out, mx_tanh(m));
  if (!st) st = mx_list_push(out, mx_sum(sq, NULL, 0, false));
  mx_array_free(m); mx_array_free(sq);
  return st;
}

TEST(vmap_elementwise_reduction_matmul) {
  mx_array *x = randn((int64_t[]){7, 4}, 2, MX_FLOAT64, 50);
  mx_array *W = randn((int64_t[]){4, 3}, 2, MX_FLOAT64, 51);
  mx_closure *f = mx_closure_new(f_rowdot, NULL, NULL);
  mx_closure *vf = mx_vmap(f, (int[]){0, -1}, 2, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vf, (mx_array *[]){x, W}, 2, &r));
  mx_array *m = mx_matmul(x, W), *t = mx_tanh(m), *sq = mx_square(x);
  mx_array *s = mx_sum(sq, (int[]){1}, 1, false);
  ASSERT_CLOSE(r.items[0], t, 1e-12);
  ASSERT_CLOSE(r.items[1], s, 1e-12);
  mx_list_clear(&r);
  /* batch on axis 1 of x and output axis 1 */
  mx_array *xt = mx_transpose(x, NULL, 0); /* (4, 7) */
  mx_closure *vf2 = mx_vmap(f, (int[]){1, -1}, 2, (int[]){1, 0}, 2);
  ASSERT_OK(mx_closure_apply(vf2, (mx_array *[]){xt, W}, 2, &r));
  mx_array *tt = mx_transpose(t, NULL, 0);
  ASSERT_CLOSE(r.items[0], tt, 1e-12);
  mx_list_clear(&r);
  /* both batched: W per example (7, 4, 3) */
  mx_array *Wb = randn((int64_t[]){7, 4, 3}, 3, MX_FLOAT64, 52);
  mx_closure *vf3 = mx_vmap(f, (int[]){0, 0}, 2, NULL, 0);
  ASSERT_OK(mx_closure_apply(vf3, (mx_array *[]){x, Wb}, 2, &r));
  mx_array *x3 = mx_expand_dims(x, (int[]){1}, 1);
  mx_array *m3 = mx_matmul(x3, Wb), *m3s = mx_squeeze(m3, (int[]){1}, 1), *t3 = mx_tanh(m3s);
  ASSERT_CLOSE(r.items[0], t3, 1e-12);
  mx_list_clear(&r);
  /* mismatched batch sizes */
  mx_array *Wbad = randn((int64_t[]){6, 4, 3}, 3, MX_FLOAT64, 53);
  ASSERT(mx_closure_apply(vf3, (mx_array *[]){x, Wbad}, 2, &r) != MX_OK);
  ASSERT(strstr(mx_last_error(), "batch size") != NULL);
  mx_array *arrs[] = {x, W, m, t, sq, s, xt, tt, Wb, x3, m3, m3s, t3, Wbad};
  mx_array_free_n(arrs, 14);
  mx_closure_free(vf); mx_closure_free(vf2); mx_closure_free(vf3); mx_closure_free(f);
}

static int f_shapes(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  /* x (3, 4), idx (2,) int32 */
  mx__tmp t = {0};
  mx_array *tr = mx__keep(&t, mx_transpose(in[0], NULL, 0));           /* (4, 3) */
  mx_array *rs = mx__keep(&t, mx_reshape(tr, (int64_t[]){2, 6}, 2));  /* (2, 6) */
  mx_array *sl = mx__keep(&t, mx_slice_axis(rs, 1, 1, 6, 2));         /* (2, 3) */
  mx_array *cat = mx__keep(&t, mx_concatenate((mx_array *[]){sl, sl}, 2, 0)); /* (4, 3) */
  mx_array *pd = mx__keep(&t, mx_pad(cat, (int[]){1}, (int64_t[]){1}, (int64_t[]){0}, 1, 0.5));
  mx_array *tk = mx__keep(&t, mx_take(pd, in[1], 0));                 /* (2, 4) */
  mx_array *sm = mx__keep(&t, mx_softmax(tk, (int[]){-1}, 1));
  mx_array *bc = mx__keep(&t, mx_broadcast_to(sm, (int64_t[]){3, 2, 4}, 3));
  mx_array *cs = mx__keep(&t, mx_cumsum(bc, 2, false, true));
  int st = mx_list_push(out, mx_max(cs, (int[]){0}, 1, false));
  mx__tmp_free(&t);
  return st;
}

TEST(vmap_shape_and_indexing_ops_match_a_loop) {
  mx_array *x = randn((int64_t[]){5, 3, 4}, 3, MX_FLOAT64, 60);
  int32_t iv[] = {1, 3, 0, 2, 2, 2, 3, 3, 1, 0};
  mx_array *idx = mx_array_from_data(iv, (int64_t[]){5, 2}, 2, MX_INT32);
  mx_array *idx1 = mx_array_from_data(iv, (int64_t[]){2}, 1, MX_INT32);
  mx_closure *f = mx_closure_new(f_shapes, NULL, NULL);
  /* (x batched, idx batched) and (x batched, idx shared) */
  for (int mode = 0; mode < 2; mode++) {
    mx_closure *vf = mx_vmap(f, (int[]){0, mode == 0 ? 0 : -1}, 2, NULL, 0);
    mx_list r = MX_LIST_INIT;
    ASSERT_OK(mx_closure_apply(vf, (mx_array *[]){x, mode == 0 ? idx : idx1}, 2, &r));
    for (int b = 0; b < 5; b++) {
      mx_array *xb = mx_slice_axis(x, 0, b, b + 1, 1), *xs = mx_squeeze(xb, (int[]){0}, 1);
      mx_array *ib = mode == 0 ? mx_slice_axis(idx, 0, b, b + 1, 1) : mx_array_retain(idx1);
      mx_array *is = mode == 0 ? mx_squeeze(ib, (int[]){0}, 1) : mx_array_retain(ib);
      mx_list one = MX_LIST_INIT;
      ASSERT_OK(mx_closure_apply(f, (mx_array *[]){xs, is}, 2, &one));
      mx_array *rb = mx_slice_axis(r.items[0], 0, b, b + 1, 1), *rs = mx_squeeze(rb, (int[]){0}, 1);
      ASSERT_CLOSE(rs, one.items[0], 1e-12);
      mx_array *arrs[] = {xb, xs, ib, is, rb, rs};
      mx_array_free_n(arrs, 6);
      mx_list_clear(&one);
    }
    mx_list_clear(&r);
    mx_closure_free(vf);
  }
  /* only the indices batched */
  mx_array *x0 = mx_slice_axis(x, 0, 0, 1, 1), *x0s = mx_squeeze(x0, (int[]){0}, 1);
  mx_closure *vf = mx_vmap(f, (int[]){-1, 0}, 2, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vf, (mx_array *[]){x0s, idx}, 2, &r));
  for (int b = 0; b < 5; b++) {
    mx_array *ib = mx_slice_axis(idx, 0, b, b + 1, 1), *is = mx_squeeze(ib, (int[]){0}, 1);
    mx_list one = MX_LIST_INIT;
    ASSERT_OK(mx_closure_apply(f, (mx_array *[]){x0s, is}, 2, &one));
    mx_array *rb = mx_slice_axis(r.items[0], 0, b, b + 1, 1), *rs = mx_squeeze(rb, (int[]){0}, 1);
    ASSERT_CLOSE(rs, one.items[0], 1e-12);
    mx_array *arrs[] = {ib, is, rb, rs};
    mx_array_free_n(arrs, 4);
    mx_list_clear(&one);
  }
  mx_list_clear(&r);
  mx_closure_free(vf);
  mx_array_free(x0); mx_array_free(x0s);
  mx_closure_free(f);
  mx_array_free(x); mx_array_free(idx); mx_array_free(idx1);
}

/* per-example gradients: vmap(grad(f)) with f(w, x) = sum(tanh(x * w)) */
static int f_wx(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *m = mx_multiply(in[1], in[0]), *t = mx_tanh(m);
  int st = mx_list_push(out, mx_sum(t, NULL, 0, false));
  mx_array_free(m); mx_array_free(t);
  return st;
}

TEST(vmap_of_grad_gives_per_example_gradients) {
  mx_array *w = randn((int64_t[]){3}, 1, MX_FLOAT64, 70);
  mx_array *xs = randn((int64_t[]){4, 3}, 2, MX_FLOAT64, 71);
  mx_closure *f = mx_closure_new(f_wx, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_closure *vg = mx_vmap(g, (int[]){-1, 0}, 2, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vg, (mx_array *[]){w, xs}, 2, &r));
  /* d/dw sum(tanh(x w)) = x (1 - tanh^2(x w)) */
  mx_array *m = mx_multiply(xs, w), *t = mx_tanh(m), *t2 = mx_square(t);
  mx_array *one = mx_array_scalar(1, MX_FLOAT64), *d = mx_subtract(one, t2), *want = mx_multiply(xs, d);
  ASSERT_CLOSE(r.items[0], want, 1e-12);
  mx_array *arrs[] = {m, t, t2, one, d, want, w, xs};
  mx_array_free_n(arrs, 8);
  mx_list_clear(&r);
  mx_closure_free(vg); mx_closure_free(g); mx_closure_free(f);
}

static int f_custom_inside(void *p, mx_array **in, int n, mx_list *out) {
  return mx_closure_apply((mx_closure *)p, in, n, out);
}

TEST(vmap_without_a_rule_names_the_op) {
  mx_array *x = randn((int64_t[]){4, 3}, 2, MX_FLOAT32, 80);
  mx_closure *f = mx_closure_new(f_exp_only, NULL, NULL);
  mx_closure *v = mx_closure_new(f_exp_vjp, NULL, NULL);
  mx_closure *cf = mx_custom_vjp(f, v);
  mx_closure *w = mx_closure_new(f_custom_inside, cf, NULL);
  mx_closure *vf = mx_vmap(w, NULL, 0, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT(mx_closure_apply(vf, &x, 1, &r) != MX_OK);
  ASSERT(strstr(mx_last_error(), "no batching rule for op 'custom'") != NULL);
  ASSERT_EQ_INT(r.size, 0);
  mx_closure_free(vf); mx_closure_free(w); mx_closure_free(cf); mx_closure_free(v);
  mx_closure_free(f);
  mx_array_free(x);
}

/* vmap(f) against a loop over the batch (inputs batched along in_axes,
 * outputs compared at axis 0) */
static void check_vmap_loop(mx_closure *f, mx_array **in, const int *in_axes, int n, int64_t B) {
  mx_closure *vf = mx_vmap(f, in_axes, n, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(vf, in, n, &r));
  for (int64_t b = 0; b < B; b++) {
    mx_array *args[8];
    for (int i = 0; i < n; i++) {
      if (in_axes[i] < 0) {
        args[i] = mx_array_retain(in[i]);
        continue;
      }
      mx_array *s = mx_slice_axis(in[i], in_axes[i], b, b + 1, 1);
      args[i] = mx_squeeze(s, &in_axes[i], 1);
      mx_array_free(s);
    }
    mx_list one = MX_LIST_INIT;
    ASSERT_OK(mx_closure_apply(f, args, n, &one));
    ASSERT_EQ_INT(one.size, r.size);
    for (int j = 0; j < r.size; j++) {
      mx_array *s = mx_slice_axis(r.items[j], 0, b, b + 1, 1);
      mx_array *q = mx_squeeze(s, (int[]){0}, 1);
      ASSERT_CLOSE(q, one.items[j], 1e-12);
      mx_array_free(s);
      mx_array_free(q);
    }
    mx_list_clear(&one);
    mx_array_free_n(args, n);
  }
  mx_list_clear(&r);
  mx_closure_free(vf);
}

/* x (6, 5) float, i (6, 2) int32, u (2, 5) float */
static int f_more(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx__tmp t = {0};
  mx_array *x = in[0], *idx = in[1], *u = in[2];
  mx_array *su = mx__keep(&t, mx_slice_update(x, u, (int64_t[]){1, 0}, (int64_t[]){5, 5},
                                              (int64_t[]){2, 1}, 2));
  mx_array *tal = mx__keep(&t, mx_take_along_axis(su, idx, 1));
  mx_array *sca = mx__keep(&t, mx_scatter_add_axis(x, idx, tal, 1));
  mx_array *srt = mx__keep(&t, mx_sort(sca, 1));
  mx_array *am = mx__keep(&t, mx_argmax(srt, 0, false));
  mx_array *pos = mx__keep(&t, mx_greater(x, mx__keep(&t, mx_array_scalar(0, MX_FLOAT64))));
  mx_array *w = mx__keep(&t, mx_where(pos, srt, mx__keep(&t, mx_exp(x))));
  mx_array *nrm = mx__keep(&t, mx_fast_rms_norm(w, NULL, 1e-5));
  mx_array *lse = mx__keep(&t, mx_logsumexp(nrm, (int[]){0}, 1, true));
  int st = mx_list_push(out, mx_add(nrm, lse));
  if (!st) st = mx_list_push(out, mx_astype(am, MX_FLOAT64));
  if (!st) st = mx_list_push(out, mx_sum(mx__keep(&t, mx_take_flat(x, idx)), NULL, 0, false));
  mx__tmp_free(&t);
  return st;
}

TEST(vmap_more_rules_match_a_loop) {
  mx_array *x = randn((int64_t[]){3, 6, 5}, 3, MX_FLOAT64, 90);
  mx_array *u = randn((int64_t[]){2, 5, 3}, 3, MX_FLOAT64, 91); /* batch on axis 2 */
  int32_t iv[36];
  for (int i = 0; i < 36; i++) iv[i] = (i * 7 + 3) % 5;
  mx_array *idx = mx_array_from_data(iv, (int64_t[]){3, 6, 2}, 3, MX_INT32);
  mx_array *idx1 = mx_array_from_data(iv, (int64_t[]){6, 2}, 2, MX_INT32);
  mx_array *x1 = randn((int64_t[]){6, 5}, 2, MX_FLOAT64, 92);
  mx_closure *f = mx_closure_new(f_more, NULL, NULL);
  check_vmap_loop(f, (mx_array *[]){x, idx, u}, (int[]){0, 0, 2}, 3, 3);
  check_vmap_loop(f, (mx_array *[]){x, idx1, u}, (int[]){0, -1, 2}, 3, 3);
  check_vmap_loop(f, (mx_array *[]){x1, idx, u}, (int[]){-1, 0, 2}, 3, 3);
  mx_closure_free(f);
  mx_array *arrs[] = {x, u, idx, idx1, x1};
  mx_array_free_n(arrs, 5);
}

/* f evaluates an intermediate (a read inside the function) */
static int f_evals_inside(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx_array *t = mx_tanh(in[0]);
  mx_array_eval(t); /* evaluation while tracing keeps the graph */
  mx_array *s = mx_sum(t, NULL, 0, false);
  double v = 0;
  mx_array_item(s, &v); /* a read, as a logging loss would do */
  int st = mx_list_push(out, s);
  mx_array_free(t);
  return st;
}

static int f_const(void *p, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n); MX_UNUSED(in);
  return mx_list_push(out, mx_array_scalar(3.0, MX_FLOAT32));
}

TEST(evaluation_inside_the_traced_function_keeps_the_graph) {
  mx_array *x = randn((int64_t[]){4}, 1, MX_FLOAT64, 95);
  mx_closure *f = mx_closure_new(f_evals_inside, NULL, NULL);
  mx_closure *g = mx_grad(f, NULL, 0);
  mx_list r = MX_LIST_INIT;
  ASSERT_OK(mx_closure_apply(g, &x, 1, &r));
  mx_array *t = mx_tanh(x), *t2 = mx_square(t), *one = mx_array_scalar(1, MX_FLOAT64);
  mx_array *d = mx_subtract(one, t2);
  ASSERT_CLOSE(r.items[0], d, 1e-12);
  mx_list_clear(&r);
  /* a function that ignores its input has a zero gradient */
  mx_closure *fc = mx_closure_new(f_const, NULL, NULL);
  mx_closure *gc = mx_grad(fc, NULL, 0);
  ASSERT_OK(mx_closure_apply(gc, &x, 1, &r));
  mx_array *z = mx_zeros_like(x);
  ASSERT_CLOSE(r.items[0], z, 0);
  mx_list_clear(&r);
  mx_array *arrs[] = {t, t2, one, d, z, x};
  mx_array_free_n(arrs, 6);
  mx_closure_free(gc); mx_closure_free(fc); mx_closure_free(g); mx_closure_free(f);
}

/* ---- golden gradients from PyTorch ----------------------------------------------------------- */
static mx_map *read_golden(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/autograd/%s", MXC_SOURCE_DIR, name);
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  mx_map *m = mx_map_new();
  char magic[8];
  uint32_t n = 0;
  bool ok = fread(magic, 1, 8, f) == 8 && !memcmp(magic, "MXGOLD01", 8) && fread(&n, 4, 1, f) == 1;
  for (uint32_t i = 0; ok && i < n; i++) {
    uint32_t len, nd;
    char key[256];
    int64_t shape[8];
    ok = fread(&len, 4, 1, f) == 1 && len < sizeof key && fread(key, 1, len, f) == len &&
         fread(&nd, 4, 1, f) == 1 && nd <= 8 && fread(shape, 8, nd, f) == nd;
    if (!ok) break;
    key[len] = 0;
    int64_t cnt = 1;
    for (uint32_t d = 0; d < nd; d++) cnt *= shape[d];
    double *v = malloc(sizeof(double) * (size_t)(cnt ? cnt : 1));
    ok = fread(v, 8, (size_t)cnt, f) == (size_t)cnt;
    if (ok) ok = !mx_map_set_take(m, key, mx_array_from_data(v, shape, (int)nd, MX_FLOAT64));
    free(v);
  }
  fclose(f);
  if (!ok) {
    mx_map_free(m);
    return NULL;
  }
  return m;
}

/* params in the map; inputs [labels (int32)] */
static int f_golden_mlp(void *p, const mx_map *params, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(p); MX_UNUSED(n);
  mx__tmp t = {0};
  mx_array *x = mx_map_get(params, "x");
  mx_array *h = mx__keep(&t, mx_matmul(x, mx_map_get(params, "w1")));
  h = mx__keep(&t, mx_tanh(mx__keep(&t, mx_add(h, mx_map_get(params, "b1")))));
  mx_array *lg = mx__keep(&t, mx_matmul(h, mx_map_get(params, "w2")));
  lg = mx__keep(&t, mx_add(lg, mx_map_get(params, "b2")));
  mx_array *ls = mx__keep(&t, mx_log_softmax(lg, (int[]){-1}, 1));
  int64_t B = mx_array_dim(x, 0);
  mx_array *lab = mx__keep(&t, mx_reshape(in[0], (int64_t[]){B, 1}, 2));
  mx_array *picked = mx__keep(&t, mx_take_along_axis(ls, lab, 1));
  mx_array *mean = mx__keep(&t, mx_mean(picked, NULL, 0, false));
  int st = mx_list_push(out, mx_negative(mean));
  mx__tmp_free(&t);
  return st;
}

static int check_golden(mx_map *gold, mx_map *params, mx_list *values, mx_map *grads, double tol,
                        const char *what) {
  int bad = 0;
  double e = max_err(values->items[0], mx_map_get(gold, "loss"));
  printf("    %s: loss err %.2g", what, e);
  if (!(e >= 0 && e <= tol)) bad++;
  for (int i = 0; i < mx_map_size(params); i++) {
    char k[300];
    snprintf(k, sizeof k, "grad.%s", mx_map_key(params, i));
    mx_array *want = mx_map_get(gold, k);
    if (!want) continue;
    e = max_err(mx_map_value(grads, i), want);
    printf(", %s %.2g", k, e);
    if (!(e >= 0 && e <= tol)) bad++;
  }
  printf("\n");
  return bad;
}

/* params of dtype dt from the golden float64 values of the given keys */
static mx_map *golden_params(mx_map *gold, const char *const *keys, int n, mx_dtype dt) {
  mx_map *p = mx_map_new();
  for (int i = 0; i < n; i++) mx_map_set_take(p, keys[i], mx_astype(mx_map_get(gold, keys[i]), dt));
  mx_map_eval(p);
  return p;
}

TEST(golden_mlp_softmax_cross_entropy) {
  mx_map *gold = read_golden("mlp.bin");
  if (!gold) TEST_SKIP("tests/fixtures/autograd/mlp.bin missing (run tests/gen/gen_autograd_golden.py)");
  static const char *const keys[] = {"x", "w1", "b1", "w2", "b2"};
  mx_array *lab = mx_astype(mx_map_get(gold, "labels"), MX_INT32);
  mx_dtype dts[] = {MX_FLOAT64, MX_FLOAT32};
  double tols[] = {1e-12, 2e-5};
  for (int d = 0; d < 2; d++) {
    mx_map *params = golden_params(gold, keys, 5, dts[d]), *grads = mx_map_new();
    mx_list v = MX_LIST_INIT;
    ASSERT_OK(mx_value_and_grad_map(f_golden_mlp, NULL, params, &lab, 1, &v, grads));
    ASSERT_EQ_INT(check_golden(gold, params, &v, grads, tols[d], mx_dtype_name(dts[d])), 0);
    mx_list_clear(&v);
    mx_map_free(params);
    mx_map_free(grads);
  }
  mx_array_free(lab);
  mx_map_free(gold);
}

/* attention block; payload: (intptr_t) 1 = fused fast ops, 0 = composed */
static int f_golden_attn(void *p, const mx_map *params, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  bool fused = (intptr_t)p != 0;
  mx__tmp t = {0};
  mx_array *x = mx_map_get(params, "x");
  int64_t B = mx_array_dim(x, 0), T = mx_array_dim(x, 1), D = mx_array_dim(x, 2), H = 2, hd = D / H;
  mx_array *h = mx__keep(&t, fused ? mx_fast_rms_norm(x, mx_map_get(params, "gain"), 1e-5)
                                   : mx__fast_rms_norm_composed(x, mx_map_get(params, "gain"), 1e-5));
  const char *names[3] = {"wq", "wk", "wv"};
  mx_array *qkv[3];
  for (int i = 0; i < 3; i++) {
    mx_array *y = mx__keep(&t, mx_matmul(h, mx_map_get(params, names[i])));
    y = mx__keep(&t, mx_reshape(y, (int64_t[]){B, T, H, hd}, 4));
    y = mx__keep(&t, mx_transpose(y, (int[]){0, 2, 1, 3}, 4));
    if (i < 2)
      y = mx__keep(&t, fused ? mx_fast_rope(y, (int)hd, false, 10000, 1, 0, NULL)
                             : mx__fast_rope_composed(y, (int)hd, false, 10000, 1, 0, NULL));
    qkv[i] = y;
  }
  double scale = 1 / sqrt((double)hd);
  mx_array *o = mx__keep(&t, fused ? mx_fast_scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                                                          scale, NULL, true)
                                   : mx__fast_sdpa_composed(qkv[0], qkv[1], qkv[2], scale, NULL, true));
  o = mx__keep(&t, mx_transpose(o, (int[]){0, 2, 1, 3}, 4));
  o = mx__keep(&t, mx_reshape(o, (int64_t[]){B, T, D}, 3));
  o = mx__keep(&t, mx_matmul(o, mx_map_get(params, "wo")));
  mx_array *y = mx__keep(&t, mx_add(x, o));
  mx_array *yr = mx__keep(&t, mx_multiply(y, in[0]));
  int st = mx_list_push(out, mx_sum(yr, NULL, 0, false));
  mx__tmp_free(&t);
  return st;
}

TEST(golden_attention_rope_rmsnorm) {
  mx_map *gold = read_golden("attn.bin");
  if (!gold) TEST_SKIP("tests/fixtures/autograd/attn.bin missing (run tests/gen/gen_autograd_golden.py)");
  static const char *const keys[] = {"x", "gain", "wq", "wk", "wv", "wo"};
  mx_dtype dts[] = {MX_FLOAT64, MX_FLOAT32};
  double tols[] = {1e-10, 5e-5};
  int bad = 0;
  for (int fused = 0; fused < 2; fused++)
    for (int d = 0; d < 2; d++) {
      mx_map *params = golden_params(gold, keys, 6, dts[d]), *grads = mx_map_new();
      mx_array *r = mx_astype(mx_map_get(gold, "r"), dts[d]);
      mx_list v = MX_LIST_INIT;
      char what[64];
      snprintf(what, sizeof what, "%s %s", fused ? "fused" : "composed", mx_dtype_name(dts[d]));
      int st = mx_value_and_grad_map(f_golden_attn, (void *)(intptr_t)fused, params, &r, 1, &v, grads);
      if (st) {
        printf("    %s: FAILED: %s\n", what, mx_last_error());
        bad++;
      } else {
        bad += check_golden(gold, params, &v, grads, tols[d], what);
      }
      mx_list_clear(&v);
      mx_array_free(r);
      mx_map_free(params);
      mx_map_free(grads);
    }
  mx_map_free(gold);
  ASSERT_EQ_INT(bad, 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
