/* harness_grad.c — the op-parity harness's gradient mode (oc_run_grad,
 * see harness.h): checks an op's VJP against central differences in
 * float64.
 *
 * For a case, every OC_IN_DATA input is made float64 (other kinds keep
 * their dtype and are not differentiated). With y = build(inputs) and a
 * fixed random cotangent R of y's shape, the scalar L(x) = sum(y * R) has
 * gradient vjp(R) with respect to each input; each checked element's
 * partial derivative is compared with (L(x + h e) - L(x - h e)) / 2h,
 * where L is summed in plain C from the evaluated outputs. Large inputs
 * are checked on a sample of elements (always including the first and
 * last). Ops whose output is not floating point have no gradient to
 * check, nor have cases whose output holds NaN or inf: the result says
 * so (ok, msg starting with "skip:"). */
#include "support/harness.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "array_impl.h"

#define GRAD_MAX_CHECKS 24 /* elements checked per input */
#ifndef GRAD_TOL
#define GRAD_TOL 1e-5 /* |num - ana| / (1 + |ana|) */
#endif

/* ---- deterministic values (splitmix64) ---------------------------------------- */
static uint64_t g_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double g_uniform(uint64_t *s) { return (double)(g_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static mx_dtype kind_dtype(int kind) {
  switch (kind) {
    case OC_IN_INT: return MX_INT32;
    case OC_IN_BOOL: return MX_BOOL;
    case OC_IN_F32: return MX_FLOAT32;
    case OC_IN_U32: return MX_UINT32;
    default: return MX_FLOAT64;
  }
}

static double *gen_values(const mx_opcase *c, int i, uint64_t *rng) {
  int64_t n = oc_size(c->shape[i], c->ndim[i]);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!v) return NULL;
  for (int64_t j = 0; j < n; j++) {
    switch (c->kind[i]) {
      case OC_IN_INT:
      case OC_IN_U32: {
        int64_t lo = c->ilo, hi = c->ihi > c->ilo ? c->ihi : c->ilo + 1;
        v[j] = (double)(lo + (int64_t)(g_next(rng) % (uint64_t)(hi - lo)));
        break;
      }
      case OC_IN_BOOL: v[j] = (double)(g_next(rng) & 1); break;
      case OC_IN_F32: v[j] = (float)(c->lo + (c->hi - c->lo) * g_uniform(rng)); break;
      default: v[j] = c->lo + (c->hi - c->lo) * g_uniform(rng);
    }
  }
  return v;
}

/* An array holding v (row-major) of dtype dt, contiguous or as a strided
 * view (the transpose of a transposed copy; every other element for 1-d). */
static mx_array *make_array(const int64_t *shape, int ndim, const double *v, mx_dtype dt,
                            bool view) {
  mx_array *d = mx_array_from_data(v, shape, ndim, MX_FLOAT64);
  mx_array *a = mx_astype(d, dt);
  mx_array_free(d);
  if (!a || mx_array_eval(a)) {
    mx_array_free(a);
    return NULL;
  }
  int64_t n = oc_size(shape, ndim);
  if (!view || n <= 1) return a;
  mx_array *r = NULL;
  if (ndim >= 2) {
    mx_array *t = mx_swapaxes(a, -1, -2), *tc = mx_contiguous(t);
    if (tc && !mx_array_eval(tc)) r = mx_swapaxes(tc, -1, -2);
    mx_array_free(t);
    mx_array_free(tc);
  } else {
    int64_t big = 2 * n, st = 0, en = big, sp = 2;
    mx_array *z = mx_zeros(&big, 1, dt), *u = mx_slice_update(z, a, &st, &en, &sp, 1);
    if (u && !mx_array_eval(u)) r = mx_slice(u, &st, &en, &sp, 1);
    mx_array_free(z);
    mx_array_free(u);
  }
  mx_array_free(a);
  if (r && mx_array_eval(r)) {
    mx_array_free(r);
    r = NULL;
  }
  return r;
}

/* ---- the function of the differentiable inputs ------------------------------------ */
typedef struct {
  const mx_opcase *c;
  mx_array *full[OC_MAX_IN];
  int diff[OC_MAX_IN];
  int ndiff;
} grad_fn;

static int grad_apply(void *payload, mx_array **in, int n, mx_list *out) {
  grad_fn *g = payload;
  mx_array *args[OC_MAX_IN];
  memcpy(args, g->full, sizeof args);
  for (int k = 0; k < n; k++) args[g->diff[k]] = in[k];
  return mx_list_push(out, g->c->build(g->c, args));
}

/* L = sum(y * R) in float64, y evaluated from the given inputs. */
static int loss_at(grad_fn *g, mx_array **in, const double *R, int64_t n, double *L) {
  mx_list out = MX_LIST_INIT;
  int st = grad_apply(g, in, g->ndiff, &out);
  double *y = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!st && !y) st = MX_ERR_OOM;
  if (!st) st = mx_array_copy_to(out.items[0], MX_FLOAT64, y, n);
  if (!st) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += y[i] * R[i];
    *L = s;
  }
  free(y);
  mx_list_clear(&out);
  return st;
}

static oc_result run_grad(const mx_opcase *c, uint64_t seed, bool view) {
  oc_result res = {.ok = 0};
  uint64_t rng = seed;
  grad_fn g = {.c = c};
  double *vals[OC_MAX_IN] = {0};
  double *R = NULL, *ana = NULL, *work = NULL;
  mx_array *y = NULL, *Ra = NULL;
  mx_list vj = MX_LIST_INIT;
  for (int i = 0; i < c->nin; i++) {
    vals[i] = gen_values(c, i, &rng);
    g.full[i] = vals[i] ? make_array(c->shape[i], c->ndim[i], vals[i], kind_dtype(c->kind[i]), view)
                        : NULL;
    if (!g.full[i]) {
      snprintf(res.msg, sizeof res.msg, "making input %d failed: %s", i, mx_last_error());
      goto done;
    }
    if (c->kind[i] == OC_IN_DATA) g.diff[g.ndiff++] = i;
  }
  if (!g.ndiff) {
    res.ok = 1;
    snprintf(res.msg, sizeof res.msg, "skip: no float input");
    goto done;
  }
  y = c->build(c, g.full);
  if (!y) {
    snprintf(res.msg, sizeof res.msg, "build in float64 failed: %s", mx_last_error());
    goto done;
  }
  if (!mx_dtype_is_float(mx_array_dtype(y))) {
    res.ok = 1;
    snprintf(res.msg, sizeof res.msg, "skip: %s output", mx_dtype_name(mx_array_dtype(y)));
    goto done;
  }
  int64_t ny = mx_array_size(y);
  R = malloc(sizeof(double) * (size_t)(ny ? ny : 1));
  if (!R) goto done;
  for (int64_t i = 0; i < ny; i++) R[i] = 2 * g_uniform(&rng) - 1;
  Ra = mx_array_from_data(R, mx_array_shape(y), mx_array_ndim(y), MX_FLOAT64);
  mx_array *prim[OC_MAX_IN];
  for (int k = 0; k < g.ndiff; k++) prim[k] = g.full[g.diff[k]];
  double L0 = 0;
  if (loss_at(&g, prim, R, ny, &L0)) {
    snprintf(res.msg, sizeof res.msg, "forward failed: %s", mx_last_error());
    goto done;
  }
  if (!isfinite(L0)) { /* NaN/inf outputs (cases about NaN handling) */
    res.ok = 1;
    snprintf(res.msg, sizeof res.msg, "skip: non-finite output");
    goto done;
  }
  mx_closure *f = mx_closure_new(grad_apply, &g, NULL);
  int st = f ? mx_vjp(f, prim, g.ndiff, &Ra, 1, NULL, &vj) : mx_last_status();
  mx_closure_free(f);
  if (!st) st = mx_eval(vj.items, vj.size);
  if (st) {
    snprintf(res.msg, sizeof res.msg, "vjp failed: %s", mx_last_error());
    goto done;
  }
  for (int k = 0; k < g.ndiff && !res.msg[0]; k++) {
    int i = g.diff[k];
    int64_t n = oc_size(c->shape[i], c->ndim[i]);
    if (n == 0) continue;
    free(ana);
    free(work);
    ana = malloc(sizeof(double) * (size_t)n);
    work = malloc(sizeof(double) * (size_t)n);
    if (!ana || !work || mx_array_copy_to(vj.items[k], MX_FLOAT64, ana, n)) {
      snprintf(res.msg, sizeof res.msg, "reading the gradient of input %d failed", i);
      goto done;
    }
    int nchk = n < GRAD_MAX_CHECKS ? (int)n : GRAD_MAX_CHECKS;
    for (int q = 0; q < nchk; q++) {
      int64_t j = n <= GRAD_MAX_CHECKS ? q : q == 0 ? 0 : q == 1 ? n - 1
                : (int64_t)(g_next(&rng) % (uint64_t)n);
      double h = 1e-6 * fmax(1.0, fabs(vals[i][j])), Lp = 0, Lm = 0;
      mx_array *args[OC_MAX_IN];
      for (int s = 0; s < 2; s++) {
        memcpy(work, vals[i], sizeof(double) * (size_t)n);
        work[j] += s == 0 ? h : -h;
        for (int kk = 0; kk < g.ndiff; kk++) args[kk] = g.full[g.diff[kk]];
        mx_array *xp = make_array(c->shape[i], c->ndim[i], work, MX_FLOAT64, false);
        args[k] = xp;
        int lst = xp ? loss_at(&g, args, R, ny, s == 0 ? &Lp : &Lm) : mx_last_status();
        mx_array_free(xp);
        if (lst) {
          snprintf(res.msg, sizeof res.msg, "forward at a perturbed point failed: %s", mx_last_error());
          goto done;
        }
      }
      double num = (Lp - Lm) / (2 * h);
      double err = fabs(num - ana[j]) / (1 + fabs(ana[j]));
      if (err > res.max_err || isnan(err)) res.max_err = isnan(err) ? INFINITY : err;
      if (!(err <= GRAD_TOL)) {
        snprintf(res.msg, sizeof res.msg,
                 "input %d element %lld: vjp %.9g, finite differences %.9g (err %.2g)%s", i,
                 (long long)j, ana[j], num, err, view ? " (views)" : "");
        goto done;
      }
    }
  }
  res.ok = 1;
done:
  for (int i = 0; i < c->nin; i++) {
    free(vals[i]);
    mx_array_free(g.full[i]);
  }
  mx_list_clear(&vj);
  mx_array_free(y);
  mx_array_free(Ra);
  free(R);
  free(ana);
  free(work);
  return res;
}

oc_result oc_run_grad(const mx_opcase *c, uint64_t seed) {
  oc_result r = run_grad(c, seed, false);
  if (r.ok && !r.msg[0] && (c->flags & OC_NONCONTIG)) {
    oc_result v = run_grad(c, seed, true);
    v.max_err = fmax(v.max_err, r.max_err);
    return v;
  }
  return r;
}
