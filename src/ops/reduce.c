/* reduce.c — reductions (sum, prod, max, min, all, any, argmax, argmin),
 * logsumexp, softmax, log_softmax, cumsum, and the compositions mean, var,
 * std. Reduction primitives keep reduced axes as size 1; builders reshape
 * when keepdims is false. softmax / log_softmax / logsumexp primitives work
 * on the last axis; other axes are moved there (views). */
#include <math.h>
#include <string.h>

#include "ops_internal.h"
#include "reduce_params.h"

int mx__axes_mask(const char *op, const int *axes, int naxes, int ndim, uint32_t *mask) {
  uint32_t m = 0;
  if (!axes) {
    for (int d = 0; d < ndim; d++) m |= 1u << d;
  } else {
    for (int i = 0; i < naxes; i++) {
      int ax;
      if (mx__norm_axis(op, axes[i], ndim, &ax)) return mx_last_status();
      if (m & (1u << ax)) return mx__set_error(MX_ERR_INVALID_ARG, "%s: repeated axis %d", op, axes[i]);
      m |= 1u << ax;
    }
  }
  *mask = m;
  return MX_OK;
}

static void kept_shape(const mx_array *a, uint32_t mask, bool keepdims, int64_t *shape, int *nd) {
  int n = 0;
  for (int d = 0; d < a->ndim; d++) {
    if (mask & (1u << d)) {
      if (keepdims) shape[n++] = 1;
    } else {
      shape[n++] = a->shape[d];
    }
  }
  *nd = n;
}

/* ---- VJPs ------------------------------------------------------------------- */
#define IN0 (out->inputs[0])
static int vjp_sum(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx_array *r = mx_broadcast_to(cot, IN0->shape, IN0->ndim); /* out keeps dims */
  g[0] = r;
  return r ? MX_OK : mx_last_status();
}
static int vjp_prod(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  /* d prod / dx_i = prod / x_i (inputs without zeros; zeros give NaN-free
   * but inexact results, as the simple rule in many frameworks) */
  mx__tmp t = {0};
  mx_array *q = mx__keep(&t, mx_divide(out, IN0));
  g[0] = mx_multiply(cot, q);
  mx__tmp_free(&t);
  return g[0] ? MX_OK : mx_last_status();
}
static int vjp_maxmin(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  /* gradient flows to the extremal elements, split evenly between ties */
  mx__tmp t = {0};
  mx_array *mask = mx__keep(&t, mx_equal(IN0, out));
  mx_array *mf = mx__keep(&t, mx_astype(mask, cot->dtype));
  const mx__reduce_params *p = MX__PARAMS(out, mx__reduce_params);
  int axes[MX_MAX_NDIM], n = 0;
  for (int d = 0; d < IN0->ndim; d++)
    if (p->mask & (1u << d)) axes[n++] = d;
  mx_array *cnt = mx__keep(&t, mx_sum(mf, axes, n, true));
  mx_array *share = mx__keep(&t, mx_divide(cot, cnt));
  g[0] = mx_multiply(mf, share);
  mx__tmp_free(&t);
  return g[0] ? MX_OK : mx_last_status();
}
static int vjp_zero(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(cot);
  for (int i = 0; i < out->ninputs; i++)
    if (need[i] && !(g[i] = mx_zeros_like(out->inputs[i]))) return mx_last_status();
  return MX_OK;
}
static int vjp_logsumexp(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *e = mx__keep(&t, mx_exp(mx__keep(&t, mx_subtract(IN0, out))));
  g[0] = mx_multiply(cot, e);
  mx__tmp_free(&t);
  return g[0] ? MX_OK : mx_last_status();
}
static int vjp_softmax(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  /* s * (c - sum(c * s)) */
  mx__tmp t = {0};
  int ax = -1;
  mx_array *cs = mx__keep(&t, mx_multiply(cot, out));
  mx_array *s = mx__keep(&t, mx_sum(cs, &ax, 1, true));
  mx_array *d = mx__keep(&t, mx_subtract(cot, s));
  g[0] = mx_multiply(out, d);
  mx__tmp_free(&t);
  return g[0] ? MX_OK : mx_last_status();
}
static int vjp_log_softmax(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  /* c - softmax * sum(c) */
  mx__tmp t = {0};
  int ax = -1;
  mx_array *sm = mx__keep(&t, mx_exp(out));
  mx_array *s = mx__keep(&t, mx_sum(cot, &ax, 1, true));
  g[0] = mx_subtract(cot, mx__keep(&t, mx_multiply(sm, s)));
  mx__tmp_free(&t);
  return g[0] ? MX_OK : mx_last_status();
}
static int vjp_cumsum(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  const mx__scan_params *p = MX__PARAMS(out, mx__scan_params);
  g[0] = mx_cumsum(cot, p->axis, !p->reverse, p->inclusive);
  return g[0] ? MX_OK : mx_last_status();
}

static const mx__op_def def_SUM = {.id = MX_OP_SUM, .vjp = vjp_sum};
static const mx__op_def def_PROD = {.id = MX_OP_PROD, .vjp = vjp_prod};
static const mx__op_def def_MAX = {.id = MX_OP_MAX, .vjp = vjp_maxmin};
static const mx__op_def def_MIN = {.id = MX_OP_MIN, .vjp = vjp_maxmin};
static const mx__op_def def_ALL = {.id = MX_OP_ALL, .vjp = vjp_zero, .zero_grad = true};
static const mx__op_def def_ANY = {.id = MX_OP_ANY, .vjp = vjp_zero, .zero_grad = true};
static const mx__op_def def_ARGMAX = {.id = MX_OP_ARGMAX, .vjp = vjp_zero, .zero_grad = true};
static const mx__op_def def_ARGMIN = {.id = MX_OP_ARGMIN, .vjp = vjp_zero, .zero_grad = true};
static const mx__op_def def_LOGSUMEXP = {.id = MX_OP_LOGSUMEXP, .vjp = vjp_logsumexp};
static const mx__op_def def_SOFTMAX = {.id = MX_OP_SOFTMAX, .vjp = vjp_softmax};
static const mx__op_def def_LOG_SOFTMAX = {.id = MX_OP_LOG_SOFTMAX, .vjp = vjp_log_softmax};
static const mx__op_def def_CUMSUM = {.id = MX_OP_CUMSUM, .vjp = vjp_cumsum};

/* ---- builders ------------------------------------------------------------------ */
static mx_array *reduce(const mx__op_def *def, const char *name, mx_array *a, const int *axes,
                        int naxes, bool keepdims, mx_dtype out_dt) {
  MX__CHECK_IN(name, a);
  uint32_t mask;
  if (mx__axes_mask(name, axes, naxes, a->ndim, &mask)) return NULL;
  if (mask == 0 && def->id != MX_OP_ALL && def->id != MX_OP_ANY) return mx_astype(a, out_dt);
  int64_t kshape[MX_MAX_NDIM], shape[MX_MAX_NDIM];
  int knd, nd;
  kept_shape(a, mask, true, kshape, &knd);
  kept_shape(a, mask, keepdims, shape, &nd);
  mx__reduce_params p = {mask};
  mx_array *r = mx__node_new(def, out_dt, kshape, knd, &a, 1, &p, sizeof p);
  if (!r || keepdims) return r;
  mx_array *s = mx_reshape(r, shape, nd);
  mx_array_free(r);
  return s;
}

static mx_dtype sum_dtype(mx_dtype dt) {
  if (dt == MX_BOOL) return MX_INT32;
  if (dt == MX_UINT8) return MX_UINT32;
  return dt;
}

mx_array *mx_sum(mx_array *a, const int *axes, int naxes, bool keepdims) {
  MX__CHECK_IN("sum", a);
  return reduce(&def_SUM, "sum", a, axes, naxes, keepdims, sum_dtype(a->dtype));
}
mx_array *mx_prod(mx_array *a, const int *axes, int naxes, bool keepdims) {
  MX__CHECK_IN("prod", a);
  return reduce(&def_PROD, "prod", a, axes, naxes, keepdims, sum_dtype(a->dtype));
}
static mx_array *maxmin(const mx__op_def *def, const char *name, mx_array *a, const int *axes,
                        int naxes, bool keepdims) {
  MX__CHECK_IN(name, a);
  uint32_t mask;
  if (mx__axes_mask(name, axes, naxes, a->ndim, &mask)) return NULL;
  for (int d = 0; d < a->ndim; d++)
    if ((mask & (1u << d)) && a->shape[d] == 0) {
      mx__set_error(MX_ERR_SHAPE, "%s: cannot reduce over the empty axis %d", name, d);
      return NULL;
    }
  return reduce(def, name, a, axes, naxes, keepdims, a->dtype);
}
mx_array *mx_max(mx_array *a, const int *axes, int naxes, bool keepdims) {
  return maxmin(&def_MAX, "max", a, axes, naxes, keepdims);
}
mx_array *mx_min(mx_array *a, const int *axes, int naxes, bool keepdims) {
  return maxmin(&def_MIN, "min", a, axes, naxes, keepdims);
}
mx_array *mx_all(mx_array *a, const int *axes, int naxes, bool keepdims) {
  MX__CHECK_IN("all", a);
  return reduce(&def_ALL, "all", a, axes, naxes, keepdims, MX_BOOL);
}
mx_array *mx_any(mx_array *a, const int *axes, int naxes, bool keepdims) {
  MX__CHECK_IN("any", a);
  return reduce(&def_ANY, "any", a, axes, naxes, keepdims, MX_BOOL);
}

static int64_t reduced_count(mx_array *a, const int *axes, int naxes) {
  uint32_t mask;
  if (mx__axes_mask("mean", axes, naxes, a->ndim, &mask)) return -1;
  int64_t n = 1;
  for (int d = 0; d < a->ndim; d++)
    if (mask & (1u << d)) n *= a->shape[d];
  return n;
}

mx_array *mx_mean(mx_array *a, const int *axes, int naxes, bool keepdims) {
  MX__CHECK_IN("mean", a);
  int64_t n = reduced_count(a, axes, naxes);
  if (n < 0) return NULL;
  mx__tmp t = {0};
  mx_array *x = mx_dtype_is_float(a->dtype) ? a : mx__keep(&t, mx_astype(a, MX_FLOAT32));
  mx_array *s = mx__keep(&t, mx_sum(x, axes, naxes, keepdims));
  mx_array *r = s ? mx_multiply_scalar(s, n ? 1.0 / (double)n : NAN) : NULL;
  mx__tmp_free(&t);
  return r;
}

mx_array *mx_var(mx_array *a, const int *axes, int naxes, bool keepdims, int ddof) {
  MX__CHECK_IN("var", a);
  int64_t n = reduced_count(a, axes, naxes);
  if (n < 0) return NULL;
  mx__tmp t = {0};
  mx_array *x = mx_dtype_is_float(a->dtype) ? a : mx__keep(&t, mx_astype(a, MX_FLOAT32));
  mx_array *m = mx__keep(&t, mx_mean(x, axes, naxes, true));
  mx_array *d = mx__keep(&t, mx_square(mx__keep(&t, mx_subtract(x, m))));
  mx_array *s = mx__keep(&t, mx_sum(d, axes, naxes, keepdims));
  double den = (double)(n - ddof);
  mx_array *r = s ? mx_multiply_scalar(s, den > 0 ? 1.0 / den : NAN) : NULL;
  mx__tmp_free(&t);
  return r;
}

mx_array *mx_std(mx_array *a, const int *axes, int naxes, bool keepdims, int ddof) {
  mx_array *v = mx_var(a, axes, naxes, keepdims, ddof);
  mx_array *r = mx_sqrt(v);
  mx_array_free(v);
  return r;
}

static mx_array *arg_reduce(const mx__op_def *def, const char *name, mx_array *a, int axis,
                            bool keepdims) {
  MX__CHECK_IN(name, a);
  int ax;
  if (a->ndim == 0) {
    mx__set_error(MX_ERR_SHAPE, "%s: needs at least one dimension", name);
    return NULL;
  }
  if (mx__norm_axis(name, axis, a->ndim, &ax)) return NULL;
  if (a->shape[ax] == 0) {
    mx__set_error(MX_ERR_SHAPE, "%s: axis %d is empty", name, axis);
    return NULL;
  }
  int64_t kshape[MX_MAX_NDIM], shape[MX_MAX_NDIM];
  int knd, nd;
  kept_shape(a, 1u << ax, true, kshape, &knd);
  kept_shape(a, 1u << ax, keepdims, shape, &nd);
  mx__axis_params p = {ax};
  mx_array *r = mx__node_new(def, MX_UINT32, kshape, knd, &a, 1, &p, sizeof p);
  if (!r || keepdims) return r;
  mx_array *s = mx_reshape(r, shape, nd);
  mx_array_free(r);
  return s;
}
mx_array *mx_argmax(mx_array *a, int axis, bool keepdims) {
  return arg_reduce(&def_ARGMAX, "argmax", a, axis, keepdims);
}
mx_array *mx_argmin(mx_array *a, int axis, bool keepdims) {
  return arg_reduce(&def_ARGMIN, "argmin", a, axis, keepdims);
}

/* Apply a last-axis primitive over `axes`: move them to the end, merge them
 * into one axis, apply, and undo. keep_last: the primitive keeps the axis
 * (softmax) or reduces it to 1 (logsumexp). */
static mx_array *over_axes(const mx__op_def *def, const char *name, mx_array *a,
                           const int *axes, int naxes, bool reduces, bool keepdims) {
  MX__CHECK_IN(name, a);
  uint32_t mask;
  if (mx__axes_mask(name, axes, naxes, a->ndim, &mask)) return NULL;
  mx__tmp t = {0};
  mx_array *x = mx_dtype_is_float(a->dtype) ? a : mx__keep(&t, mx_astype(a, MX_FLOAT32));
  if (a->ndim == 0) {
    int64_t one = 1;
    x = mx__keep(&t, mx_reshape(x, &one, 1));
    mask = 1;
  }
  int nd = x ? x->ndim : 0;
  int perm[MX_MAX_NDIM], np = 0, nred = 0;
  for (int d = 0; d < nd; d++)
    if (!(mask & (1u << d))) perm[np++] = d;
  for (int d = 0; d < nd; d++)
    if (mask & (1u << d)) {
      perm[np++] = d;
      nred++;
    }
  mx_array *xt = mx__keep(&t, mx_transpose(x, perm, nd));
  int64_t mshape[MX_MAX_NDIM];
  int64_t inner = 1;
  for (int i = 0; i < nd - nred; i++) mshape[i] = xt ? xt->shape[i] : 0;
  for (int i = nd - nred; i < nd; i++) inner *= xt ? xt->shape[i] : 0;
  mshape[nd - nred] = inner;
  mx_array *xm = nred == 1 ? xt : mx__keep(&t, mx_reshape(xt, mshape, nd - nred + 1));
  mx_array *r = NULL;
  if (xm) {
    int64_t oshape[MX_MAX_NDIM];
    memcpy(oshape, xm->shape, sizeof oshape);
    if (reduces) oshape[xm->ndim - 1] = 1;
    if (reduces && inner == 0) {
      r = mx_full(oshape, xm->ndim, -INFINITY, xm->dtype);
    } else {
      r = mx__node_new(def, xm->dtype, oshape, xm->ndim, &xm, 1, NULL, 0);
    }
  }
  mx__keep(&t, r);
  mx_array *res = NULL;
  if (r && reduces) {
    /* back to the input's layout: kept axes in order, reduced as 1 */
    int64_t kshape[MX_MAX_NDIM];
    int knd;
    kept_shape(x, mask, keepdims, kshape, &knd);
    res = mx_reshape(r, kshape, knd);
    if (res && a->ndim == 0 && !keepdims) {
      mx_array *s = mx_reshape(res, NULL, 0);
      mx_array_free(res);
      res = s;
    }
  } else if (r) {
    mx_array *un = nred == 1 ? mx_array_retain(r) : mx_reshape(r, xt->shape, nd);
    int inv[MX_MAX_NDIM];
    for (int i = 0; i < nd; i++) inv[perm[i]] = i;
    res = un ? mx_transpose(un, inv, nd) : NULL;
    mx_array_free(un);
    if (res && a->ndim == 0) {
      mx_array *s = mx_reshape(res, NULL, 0);
      mx_array_free(res);
      res = s;
    }
  }
  mx__tmp_free(&t);
  return res;
}

mx_array *mx_logsumexp(mx_array *a, const int *axes, int naxes, bool keepdims) {
  return over_axes(&def_LOGSUMEXP, "logsumexp", a, axes, naxes, true, keepdims);
}
mx_array *mx_softmax(mx_array *a, const int *axes, int naxes) {
  return over_axes(&def_SOFTMAX, "softmax", a, axes, naxes, false, false);
}
mx_array *mx_log_softmax(mx_array *a, const int *axes, int naxes) {
  return over_axes(&def_LOG_SOFTMAX, "log_softmax", a, axes, naxes, false, false);
}

mx_array *mx_cumsum(mx_array *a, int axis, bool reverse, bool inclusive) {
  MX__CHECK_IN("cumsum", a);
  int ax;
  if (a->ndim == 0) return mx_astype(a, sum_dtype(a->dtype));
  if (mx__norm_axis("cumsum", axis, a->ndim, &ax)) return NULL;
  mx_array *x = mx_astype(a, sum_dtype(a->dtype));
  if (!x) return NULL;
  mx__scan_params p = {ax, reverse, inclusive};
  mx_array *r = mx__node_new(&def_CUMSUM, x->dtype, x->shape, x->ndim, &x, 1, &p, sizeof p);
  mx_array_free(x);
  return r;
}
