/* optim_ops.c — the fused optimizer op adam_update (see optim_params.h). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optim_params.h"
#include "ops_internal.h"

static const mx__op_def def_ADAM_UPDATE = {.id = MX_OP_ADAM_UPDATE};

mx_array *mx__adam_update(const mx__adam_params *p, mx_array *a, mx_array *b, mx_array *c,
                          mx_array *d) {
  if (p->which < MX__ADAM_M || p->which > MX__ADAM_ALL)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: unknown form %d", p->which), NULL;
  int n = p->which == MX__ADAM_ALL ? 4 : p->which == MX__ADAM_P ? 3 : 2;
  mx_array *in[4] = {a, b, c, d};
  for (int i = 0; i < n; i++) MX__CHECK_IN("adam_update", in[i]);
  mx_dtype dt = a->dtype;
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64)
    return mx__set_error(MX_ERR_DTYPE, "adam_update: float32 or float64 needed, not %s",
                         mx_dtype_name(dt)), NULL;
  for (int i = 1; i < n; i++) {
    if (in[i]->dtype != dt)
      return mx__set_error(MX_ERR_DTYPE, "adam_update: input %d is %s, not %s", i,
                           mx_dtype_name(in[i]->dtype), mx_dtype_name(dt)), NULL;
    if (in[i]->ndim != a->ndim ||
        memcmp(in[i]->shape, a->shape, sizeof(int64_t) * (size_t)a->ndim)) {
      char s1[96], s2[96];
      return mx__set_error(MX_ERR_SHAPE, "adam_update: input %d of shape %s, not %s", i,
                           mx__shape_str(in[i]->shape, in[i]->ndim, s1, sizeof s1),
                           mx__shape_str(a->shape, a->ndim, s2, sizeof s2)), NULL;
    }
  }
  if (p->which != MX__ADAM_ALL) {
    mx__adam_params q = *p;
    q.has_scale = false;
    q.count = 0;
    return mx__node_new(&def_ADAM_UPDATE, dt, a->shape, a->ndim, in, n, &q, sizeof q);
  }
  return mx__adam_update_all(p, a, b, c, d, NULL);
}

mx_array *mx__adam_update_all(const mx__adam_params *p, mx_array *pm, mx_array *m, mx_array *v,
                              mx_array *g, mx_array *s) {
  if (p->which != MX__ADAM_ALL)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: form %d is not the packed one",
                         p->which), NULL;
  mx_array *in[5] = {pm, m, v, g, s};
  const int n = s ? 5 : 4;
  for (int i = 0; i < n; i++) MX__CHECK_IN("adam_update", in[i]);
  mx_dtype dt = pm->dtype;
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64)
    return mx__set_error(MX_ERR_DTYPE, "adam_update: float32 or float64 needed, not %s",
                         mx_dtype_name(dt)), NULL;
  for (int i = 1; i < 4; i++) {
    const bool low_g = i == 3 && dt == MX_FLOAT32 &&
                       (g->dtype == MX_BFLOAT16 || g->dtype == MX_FLOAT16);
    if (in[i]->dtype != dt && !low_g)
      return mx__set_error(MX_ERR_DTYPE, "adam_update: input %d is %s, not %s", i,
                           mx_dtype_name(in[i]->dtype), mx_dtype_name(dt)), NULL;
    if (in[i]->ndim != pm->ndim ||
        memcmp(in[i]->shape, pm->shape, sizeof(int64_t) * (size_t)pm->ndim)) {
      char s1[96], s2[96];
      return mx__set_error(MX_ERR_SHAPE, "adam_update: input %d of shape %s, not %s", i,
                           mx__shape_str(in[i]->shape, in[i]->ndim, s1, sizeof s1),
                           mx__shape_str(pm->shape, pm->ndim, s2, sizeof s2)), NULL;
    }
  }
  if (s && (s->ndim != 0 || s->dtype != dt))
    return mx__set_error(MX_ERR_SHAPE, "adam_update: the gradient scale must be a 0-d %s array",
                         mx_dtype_name(dt)), NULL;
  if (pm->ndim + 1 > MX_MAX_NDIM)
    return mx__set_error(MX_ERR_SHAPE, "adam_update: %d axes leave no room for the packed "
                         "axis", pm->ndim), NULL;
  mx__adam_params q = *p;
  q.has_scale = s != NULL;
  q.count = 0;
  int64_t shape[MX_MAX_NDIM];
  shape[0] = 3;
  memcpy(shape + 1, pm->shape, sizeof(int64_t) * (size_t)pm->ndim);
  return mx__node_new(&def_ADAM_UPDATE, dt, shape, pm->ndim + 1, in, n, &q, sizeof q);
}

/* ADAM_MANY: ADAM_ALL's checks for each parameter, and one dtype for all */
mx_array *mx__adam_update_many(const mx__adam_params *p, mx_array **pm, mx_array **m,
                               mx_array **v, mx_array **g, int n, mx_array *s) {
  static const char *const role[4] = {"p", "m", "v", "g"};
  if (p->which != MX__ADAM_MANY)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: form %d is not the multi-tensor one",
                         p->which), NULL;
  if (n < 1 || !pm || !m || !v || !g)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: no parameters given (n = %d)", n),
           NULL;
  if (n > (INT_MAX - 1) / 4)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: too many parameters (%d)", n), NULL;
  mx_dtype dt = MX_FLOAT32;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    mx_array *x[4] = {pm[i], m[i], v[i], g[i]};
    for (int k = 0; k < 4; k++)
      if (!x[k]) {
        if (!mx_last_status())
          mx__set_error(MX_ERR_INVALID_ARG, "adam_update: parameter %d: %s is NULL", i, role[k]);
        return NULL;
      }
    if (i == 0) dt = pm[0]->dtype;
    if (dt != MX_FLOAT32 && dt != MX_FLOAT64)
      return mx__set_error(MX_ERR_DTYPE, "adam_update: float32 or float64 needed, not %s",
                           mx_dtype_name(dt)), NULL;
    for (int k = 0; k < 4; k++) {
      const mx_dtype t = x[k]->dtype;
      const bool low_g = k == 3 && dt == MX_FLOAT32 && (t == MX_BFLOAT16 || t == MX_FLOAT16);
      if (t != dt && !low_g)
        return mx__set_error(MX_ERR_DTYPE, "adam_update: parameter %d: %s is %s, not %s%s", i,
                             role[k], mx_dtype_name(t), mx_dtype_name(dt),
                             k == 0 ? " (one dtype for every parameter)" : ""), NULL;
      if (k && (x[k]->ndim != pm[i]->ndim ||
                memcmp(x[k]->shape, pm[i]->shape, sizeof(int64_t) * (size_t)pm[i]->ndim))) {
        char s1[96], s2[96];
        return mx__set_error(MX_ERR_SHAPE, "adam_update: parameter %d: %s of shape %s, not %s",
                             i, role[k], mx__shape_str(x[k]->shape, x[k]->ndim, s1, sizeof s1),
                             mx__shape_str(pm[i]->shape, pm[i]->ndim, s2, sizeof s2)), NULL;
      }
    }
    if (pm[i]->size > INT64_MAX / 3 - total)
      return mx__set_error(MX_ERR_SHAPE, "adam_update: the total size overflows"), NULL;
    total += pm[i]->size;
  }
  if (s && (s->ndim != 0 || s->dtype != dt))
    return mx__set_error(MX_ERR_SHAPE, "adam_update: the gradient scale must be a 0-d %s array",
                         mx_dtype_name(dt)), NULL;
  const int nin = 4 * n + (s != NULL);
  mx_array **in = malloc(sizeof *in * (size_t)nin);
  if (!in) return mx__set_error(MX_ERR_OOM, "adam_update: out of memory"), NULL;
  for (int i = 0; i < n; i++)
    in[i] = pm[i], in[n + i] = m[i], in[2 * n + i] = v[i], in[3 * n + i] = g[i];
  if (s) in[4 * n] = s;
  mx__adam_params q = *p;
  q.has_scale = s != NULL;
  q.count = n;
  const int64_t shape[2] = {3, total};
  mx_array *r = mx__node_new(&def_ADAM_UPDATE, dt, shape, 2, in, nin, &q, sizeof q);
  free(in);
  return r;
}

/* d a_i = 2 cot a_i (in the compute type, rounded to a_i's dtype) */
static int vjp_sum_squares(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *c2 = mx_multiply_scalar(cot, 2.0);
  if (!c2) return mx_last_status();
  int st = MX_OK;
  for (int i = 0; i < out->ninputs && !st; i++) {
    if (!need[i]) continue;
    mx_array *a = out->inputs[i];
    mx_array *af = mx_astype(a, out->dtype), *p = af ? mx_multiply(af, c2) : NULL;
    g[i] = p ? mx_astype(p, a->dtype) : NULL;
    if (!g[i]) st = mx_last_status();
    mx_array_free(af);
    mx_array_free(p);
  }
  mx_array_free(c2);
  return st;
}

static const mx__op_def def_SUM_SQUARES = {.id = MX_OP_SUM_SQUARES, .vjp = vjp_sum_squares};

mx_array *mx__sum_squares(mx_array **a, int n) {
  if (!a || n < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "sum_squares: no arrays given"), NULL;
  mx_dtype dt = MX_FLOAT32;
  for (int i = 0; i < n; i++) {
    MX__CHECK_IN("sum_squares", a[i]);
    if (!mx_dtype_is_float(a[i]->dtype))
      return mx__set_error(MX_ERR_DTYPE, "sum_squares: input %d is %s, not a float type", i,
                           mx_dtype_name(a[i]->dtype)), NULL;
    if (a[i]->dtype == MX_FLOAT64) dt = MX_FLOAT64;
  }
  const int64_t none[1] = {1};
  return mx__node_new(&def_SUM_SQUARES, dt, none, 0, a, n, NULL, 0);
}

/* input i's cotangent: its part of cot, reshaped, cast back to its dtype */
static int vjp_cast_concat(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int64_t off = 0;
  int st = MX_OK;
  for (int i = 0; i < out->ninputs && !st; i++) {
    mx_array *a = out->inputs[i];
    if (need[i]) {
      mx_array *s = mx_slice_axis(cot, 0, off, off + a->size, 1);
      mx_array *r = s ? mx_reshape(s, a->shape, a->ndim) : NULL;
      g[i] = r ? mx_astype(r, a->dtype) : NULL;
      if (!g[i]) st = mx_last_status();
      mx_array_free(r);
      mx_array_free(s);
    }
    off += a->size;
  }
  return st;
}

static const mx__op_def def_CAST_CONCAT = {.id = MX_OP_CAST_CONCAT, .vjp = vjp_cast_concat};

mx_array *mx__cast_concat(mx_array **a, int n, mx_dtype dt) {
  if (!a || n < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "cast_concat: no arrays given"), NULL;
  if (!mx_dtype_is_float(dt))
    return mx__set_error(MX_ERR_DTYPE, "cast_concat: the result must be a float type, not %s",
                         mx_dtype_name(dt)), NULL;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    MX__CHECK_IN("cast_concat", a[i]);
    if (!mx_dtype_is_float(a[i]->dtype))
      return mx__set_error(MX_ERR_DTYPE, "cast_concat: input %d is %s, not a float type", i,
                           mx_dtype_name(a[i]->dtype)), NULL;
    if (a[i]->size > INT64_MAX - total)
      return mx__set_error(MX_ERR_SHAPE, "cast_concat: the total size overflows"), NULL;
    total += a[i]->size;
  }
  return mx__node_new(&def_CAST_CONCAT, dt, &total, 1, a, n, NULL, 0);
}
