/* creation.c — full/zeros/ones, arange, linspace, eye, tri, tril/triu. */
#include <math.h>

#include "ops_internal.h"

typedef struct {
  double start, step;
} arange_params;

static int vjp_full(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx_array *v = out->inputs[0];
  mx_array *s = mx__sum_to_shape(cot, v->shape, v->ndim);
  if (!s) return mx_last_status();
  g[0] = mx_astype(s, v->dtype);
  mx_array_free(s);
  return g[0] ? MX_OK : mx_last_status();
}

static const mx__op_def def_FULL = {.id = MX_OP_FULL, .vjp = vjp_full};
static const mx__op_def def_ARANGE = {.id = MX_OP_ARANGE, .zero_grad = true};

mx_array *mx_full_array(const int64_t *shape, int ndim, mx_array *value, mx_dtype dt) {
  MX__CHECK_IN("full", value);
  if (mx__check_shape("full", shape, ndim)) return NULL;
  if ((unsigned)dt >= MX_DTYPE_COUNT) {
    mx__set_error(MX_ERR_DTYPE, "full: invalid dtype %d", (int)dt);
    return NULL;
  }
  int64_t bs[MX_MAX_NDIM];
  int bn;
  if (mx__broadcast_shapes("full", shape, ndim, value->shape, value->ndim, bs, &bn)) return NULL;
  if (bn != ndim) {
    mx__set_error(MX_ERR_SHAPE, "full: value has more dimensions than the shape");
    return NULL;
  }
  for (int i = 0; i < ndim; i++)
    if (bs[i] != shape[i]) {
      mx__set_error(MX_ERR_SHAPE, "full: value cannot be broadcast to the shape");
      return NULL;
    }
  mx_array *v = mx_astype(value, dt);
  if (!v) return NULL;
  mx_array *r = mx__node_new(&def_FULL, dt, shape, ndim, &v, 1, NULL, 0);
  mx_array_free(v);
  return r;
}

mx_array *mx_full(const int64_t *shape, int ndim, double value, mx_dtype dt) {
  if ((unsigned)dt >= MX_DTYPE_COUNT) {
    mx__set_error(MX_ERR_DTYPE, "full: invalid dtype %d", (int)dt);
    return NULL;
  }
  mx_array *v = mx_array_scalar(value, dt);
  if (!v) return NULL;
  mx_array *r = mx_full_array(shape, ndim, v, dt);
  mx_array_free(v);
  return r;
}
mx_array *mx_zeros(const int64_t *shape, int ndim, mx_dtype dt) { return mx_full(shape, ndim, 0, dt); }
mx_array *mx_ones(const int64_t *shape, int ndim, mx_dtype dt) { return mx_full(shape, ndim, 1, dt); }
mx_array *mx_zeros_like(mx_array *a) {
  MX__CHECK_IN("zeros_like", a);
  return mx_full(a->shape, a->ndim, 0, a->dtype);
}
mx_array *mx_ones_like(mx_array *a) {
  MX__CHECK_IN("ones_like", a);
  return mx_full(a->shape, a->ndim, 1, a->dtype);
}
mx_array *mx_full_like(mx_array *a, double value) {
  MX__CHECK_IN("full_like", a);
  return mx_full(a->shape, a->ndim, value, a->dtype);
}

mx_array *mx_arange(double start, double stop, double step, mx_dtype dt) {
  if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step)) {
    mx__set_error(MX_ERR_INVALID_ARG, "arange: invalid range start=%g stop=%g step=%g", start,
                  stop, step);
    return NULL;
  }
  if ((unsigned)dt >= MX_DTYPE_COUNT || dt == MX_BOOL) {
    mx__set_error(MX_ERR_DTYPE, "arange: unsupported dtype %s", mx_dtype_name(dt));
    return NULL;
  }
  double n = ceil((stop - start) / step);
  if (n < 0) n = 0;
  if (n > 1e15) {
    mx__set_error(MX_ERR_INVALID_ARG, "arange: %g elements is too many", n);
    return NULL;
  }
  int64_t shape[1] = {(int64_t)n};
  arange_params p = {start, step};
  return mx__node_new(&def_ARANGE, dt, shape, 1, NULL, 0, &p, sizeof p);
}

mx_array *mx_linspace(double start, double stop, int64_t num, mx_dtype dt) {
  if (num < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "linspace: num must be >= 0, got %lld", (long long)num);
    return NULL;
  }
  if (!mx_dtype_is_float(dt) && !mx_dtype_is_integer(dt)) {
    mx__set_error(MX_ERR_DTYPE, "linspace: unsupported dtype %s", mx_dtype_name(dt));
    return NULL;
  }
  double step = num > 1 ? (stop - start) / (double)(num - 1) : 0;
  mx__tmp t = {0};
  mx_array *i = mx__keep(&t, mx_arange(0, (double)num, 1, MX_FLOAT64));
  mx_array *v = mx__keep(&t, mx_add_scalar(mx__keep(&t, mx_multiply_scalar(i, step)), start));
  if (num > 1) { /* make the last element exactly `stop` */
    mx_array *last = mx__keep(&t, mx_equal(i, mx__keep(&t, mx_array_scalar((double)(num - 1), MX_FLOAT64))));
    v = mx__keep(&t, mx_where(last, mx__keep(&t, mx_array_scalar(stop, MX_FLOAT64)), v));
  }
  mx_array *r = mx_astype(v, dt);
  mx__tmp_free(&t);
  return r;
}

/* (n, m) bool mask: col - row <= k (lower) */
static mx_array *tri_mask(int64_t n, int64_t m, int64_t k, bool equal_only) {
  mx__tmp t = {0};
  mx_array *r = mx__keep(&t, mx_arange(0, (double)n, 1, MX_INT64));
  mx_array *c = mx__keep(&t, mx_arange(0, (double)m, 1, MX_INT64));
  mx_array *r2 = mx__keep(&t, mx_reshape(r, (int64_t[]){n, 1}, 2));
  mx_array *c2 = mx__keep(&t, mx_reshape(c, (int64_t[]){1, m}, 2));
  mx_array *d = mx__keep(&t, mx_subtract(c2, r2));
  mx_array *kk = mx__keep(&t, mx_array_scalar_int(k, MX_INT64));
  mx_array *out = equal_only ? mx_equal(d, kk) : mx_less_equal(d, kk);
  mx__tmp_free(&t);
  return out;
}

mx_array *mx_eye(int64_t n, int64_t m, int64_t k, mx_dtype dt) {
  if (n < 0 || m < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "eye: negative size");
    return NULL;
  }
  mx_array *mask = tri_mask(n, m, k, true);
  mx_array *r = mx_astype(mask, dt);
  mx_array_free(mask);
  return r;
}
mx_array *mx_identity(int64_t n, mx_dtype dt) { return mx_eye(n, n, 0, dt); }
mx_array *mx_tri(int64_t n, int64_t m, int64_t k, mx_dtype dt) {
  if (n < 0 || m < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "tri: negative size");
    return NULL;
  }
  mx_array *mask = tri_mask(n, m, k, false);
  mx_array *r = mx_astype(mask, dt);
  mx_array_free(mask);
  return r;
}

static mx_array *tri_select(mx_array *a, int64_t k, bool lower, const char *op) {
  MX__CHECK_IN(op, a);
  if (a->ndim < 2) {
    mx__set_error(MX_ERR_SHAPE, "%s: needs at least 2 dimensions, got %d", op, a->ndim);
    return NULL;
  }
  mx__tmp t = {0};
  int64_t n = a->shape[a->ndim - 2], m = a->shape[a->ndim - 1];
  mx_array *mask = mx__keep(&t, lower ? tri_mask(n, m, k, false) : tri_mask(n, m, k - 1, false));
  if (!lower) mask = mx__keep(&t, mx_logical_not(mask));
  mx_array *z = mx__keep(&t, mx__scalar_like(0, a));
  mx_array *r = mask && z ? mx_where(mask, a, z) : NULL;
  mx__tmp_free(&t);
  return r;
}
mx_array *mx_tril(mx_array *a, int64_t k) { return tri_select(a, k, true, "tril"); }
mx_array *mx_triu(mx_array *a, int64_t k) { return tri_select(a, k, false, "triu"); }
