/* indexing.c — take, take_along_axis, put_along_axis, scatter_add_axis
 * (primitives) and take_flat, gather_rows (compositions): builders and
 * VJPs written with ops.
 *
 * Index semantics (all ops, all backends): indices are integer arrays
 * (uint8, uint32, int32, int64); negative indices count from the end and
 * out-of-range indices are clamped to the axis (MLX). Indexing into an empty
 * axis with a non-empty index array is an error at build time.
 *
 * The primitives receive inputs already broadcast to their final shapes
 * (broadcast_to views, no copies), so kernels and VJPs never broadcast:
 *   TAKE             a (pre, A, post), idx (I...)       -> (pre, I..., post)
 *   TAKE_ALONG_AXIS  a (S with A at axis), idx (S)       -> S
 *   PUT_ALONG_AXIS   a (S with A at axis), idx (S), v (S) -> a's shape
 *   SCATTER_ADD_AXIS same as PUT_ALONG_AXIS, duplicates add up.
 * For put_along_axis duplicate indices resolve to the last one in index
 * order along the axis. */
#include <string.h>

#include "indexing_params.h"
#include "ops_internal.h"

static int vjp_take(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_take_along_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_put_along_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_scatter_add_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need);

static const mx__op_def def_TAKE = {.id = MX_OP_TAKE, .vjp = vjp_take};
static const mx__op_def def_TAKE_ALONG_AXIS = {.id = MX_OP_TAKE_ALONG_AXIS,
                                               .vjp = vjp_take_along_axis};
static const mx__op_def def_PUT_ALONG_AXIS = {.id = MX_OP_PUT_ALONG_AXIS,
                                              .vjp = vjp_put_along_axis};
static const mx__op_def def_SCATTER_ADD_AXIS = {.id = MX_OP_SCATTER_ADD_AXIS,
                                                .vjp = vjp_scatter_add_axis};

/* ---- checks ---------------------------------------------------------------- */
static int check_indices(const char *op, mx_array *idx) {
  mx_dtype dt = idx->dtype;
  if (dt != MX_UINT8 && dt != MX_UINT32 && dt != MX_INT32 && dt != MX_INT64) {
    char s[256];
    return mx__set_error(MX_ERR_DTYPE, "%s: indices must be an integer array, got %s%s", op,
                         mx_dtype_name(dt), mx__shape_str(idx->shape, idx->ndim, s, sizeof s));
  }
  return MX_OK;
}

static int check_nonempty_axis(const char *op, mx_array *a, int axis, int64_t nidx) {
  if (a->shape[axis] == 0 && nidx > 0) {
    char s[256];
    return mx__set_error(MX_ERR_RANGE, "%s: cannot index axis %d of size 0 (array %s)", op,
                         axis, mx__shape_str(a->shape, a->ndim, s, sizeof s));
  }
  return MX_OK;
}

/* ---- take -------------------------------------------------------------------- */
mx_array *mx_take(mx_array *a, mx_array *indices, int axis) {
  MX__CHECK_IN("take", a, indices);
  int ax;
  if (check_indices("take", indices) || mx__norm_axis("take", axis, a->ndim, &ax)) return NULL;
  int nd = a->ndim - 1 + indices->ndim;
  if (nd > MX_MAX_NDIM) {
    char s1[256], s2[256];
    mx__set_error(MX_ERR_SHAPE, "take: result of taking %s from %s would have %d dimensions",
                  mx__shape_str(indices->shape, indices->ndim, s1, sizeof s1),
                  mx__shape_str(a->shape, a->ndim, s2, sizeof s2), nd);
    return NULL;
  }
  if (check_nonempty_axis("take", a, ax, indices->size)) return NULL;
  int64_t shape[MX_MAX_NDIM];
  int n = 0;
  for (int i = 0; i < ax; i++) shape[n++] = a->shape[i];
  for (int i = 0; i < indices->ndim; i++) shape[n++] = indices->shape[i];
  for (int i = ax + 1; i < a->ndim; i++) shape[n++] = a->shape[i];
  mx__index_params p = {ax};
  mx_array *ins[2] = {a, indices};
  return mx__node_new(&def_TAKE, a->dtype, shape, nd, ins, 2, &p, sizeof p);
}

mx_array *mx_take_flat(mx_array *a, mx_array *indices) {
  MX__CHECK_IN("take_flat", a, indices);
  if (check_indices("take_flat", indices)) return NULL;
  int64_t n = a->size;
  mx_array *flat = mx_reshape(a, &n, 1);
  mx_array *r = mx_take(flat, indices, 0);
  mx_array_free(flat);
  return r;
}

mx_array *mx_gather_rows(mx_array *a, mx_array *indices) {
  MX__CHECK_IN("gather_rows", a, indices);
  if (check_indices("gather_rows", indices)) return NULL;
  if (a->ndim < 1) {
    mx__set_error(MX_ERR_SHAPE, "gather_rows: the table must have at least 1 dimension, got 0");
    return NULL;
  }
  return mx_take(a, indices, 0);
}

/* ---- take_along_axis ------------------------------------------------------------ */
/* Broadcast shape of a and idx (same ndim) on every axis but `ax`. */
static int along_axis_shape(const char *op, mx_array *a, mx_array *idx, int ax, int64_t *shape) {
  bool ok = a->ndim == idx->ndim;
  for (int d = 0; ok && d < a->ndim; d++) {
    if (d == ax) continue;
    int64_t x = a->shape[d], y = idx->shape[d];
    if (x != y && x != 1 && y != 1) ok = false;
    shape[d] = x == 1 ? y : x;
  }
  if (!ok) {
    char s1[256], s2[256];
    return mx__set_error(MX_ERR_SHAPE,
                         "%s: indices of shape %s do not match array of shape %s (same number "
                         "of dimensions, broadcastable except along axis %d)",
                         op, mx__shape_str(idx->shape, idx->ndim, s1, sizeof s1),
                         mx__shape_str(a->shape, a->ndim, s2, sizeof s2), ax);
  }
  return MX_OK;
}

mx_array *mx_take_along_axis(mx_array *a, mx_array *indices, int axis) {
  MX__CHECK_IN("take_along_axis", a, indices);
  int ax;
  if (check_indices("take_along_axis", indices) ||
      mx__norm_axis("take_along_axis", axis, a->ndim, &ax))
    return NULL;
  int64_t shape[MX_MAX_NDIM];
  if (along_axis_shape("take_along_axis", a, indices, ax, shape)) return NULL;
  int64_t ashape[MX_MAX_NDIM];
  memcpy(ashape, shape, sizeof shape);
  ashape[ax] = a->shape[ax];
  shape[ax] = indices->shape[ax];
  if (check_nonempty_axis("take_along_axis", a, ax, mx__shape_size(shape, a->ndim))) return NULL;
  mx__tmp t = {0};
  mx_array *ab = mx__keep(&t, mx_broadcast_to(a, ashape, a->ndim));
  mx_array *ib = mx__keep(&t, mx_broadcast_to(indices, shape, a->ndim));
  mx_array *r = NULL;
  if (ab && ib) {
    mx__index_params p = {ax};
    mx_array *ins[2] = {ab, ib};
    r = mx__node_new(&def_TAKE_ALONG_AXIS, a->dtype, shape, a->ndim, ins, 2, &p, sizeof p);
  }
  mx__tmp_free(&t);
  return r;
}

/* ---- put_along_axis / scatter_add_axis ------------------------------------------ */
/* NumPy's put_along_axis: indices have a's ndim and each axis but `axis`
 * is 1 or a's size; the index shape T is a's shape with idx.shape[axis] at
 * axis; values broadcast to T and are cast to a's dtype. */
static mx_array *scatter_build(const mx__op_def *def, const char *op, mx_array *a,
                               mx_array *indices, mx_array *values, int axis) {
  MX__CHECK_IN(op, a, indices, values);
  int ax;
  if (check_indices(op, indices) || mx__norm_axis(op, axis, a->ndim, &ax)) return NULL;
  int64_t shape[MX_MAX_NDIM];
  bool ok = indices->ndim == a->ndim;
  for (int d = 0; ok && d < a->ndim; d++) {
    if (d != ax && indices->shape[d] != 1 && indices->shape[d] != a->shape[d]) ok = false;
    shape[d] = d == ax ? indices->shape[d] : a->shape[d];
  }
  if (!ok) {
    char s1[256], s2[256];
    mx__set_error(MX_ERR_SHAPE,
                  "%s: indices of shape %s do not fit array of shape %s (same number of "
                  "dimensions, each 1 or the array's size except along axis %d)",
                  op, mx__shape_str(indices->shape, indices->ndim, s1, sizeof s1),
                  mx__shape_str(a->shape, a->ndim, s2, sizeof s2), ax);
    return NULL;
  }
  int64_t bs[MX_MAX_NDIM];
  int bn;
  if (mx__broadcast_shapes(op, shape, a->ndim, values->shape, values->ndim, bs, &bn)) return NULL;
  if (bn != a->ndim || memcmp(bs, shape, sizeof(int64_t) * (size_t)bn)) {
    char s1[256], s2[256];
    mx__set_error(MX_ERR_SHAPE, "%s: values of shape %s cannot be broadcast to the indices' shape %s",
                  op, mx__shape_str(values->shape, values->ndim, s1, sizeof s1),
                  mx__shape_str(shape, a->ndim, s2, sizeof s2));
    return NULL;
  }
  if (check_nonempty_axis(op, a, ax, mx__shape_size(shape, a->ndim))) return NULL;
  mx__tmp t = {0};
  mx_array *ib = mx__keep(&t, mx_broadcast_to(indices, shape, a->ndim));
  mx_array *vc = mx__keep(&t, mx_astype(values, a->dtype));
  mx_array *vb = mx__keep(&t, mx_broadcast_to(vc, shape, a->ndim));
  mx_array *r = NULL;
  if (ib && vc && vb) {
    mx__index_params p = {ax};
    mx_array *ins[3] = {a, ib, vb};
    r = mx__node_new(def, a->dtype, a->shape, a->ndim, ins, 3, &p, sizeof p);
  }
  mx__tmp_free(&t);
  return r;
}

mx_array *mx_put_along_axis(mx_array *a, mx_array *indices, mx_array *values, int axis) {
  return scatter_build(&def_PUT_ALONG_AXIS, "put_along_axis", a, indices, values, axis);
}

mx_array *mx_scatter_add_axis(mx_array *a, mx_array *indices, mx_array *values, int axis) {
  return scatter_build(&def_SCATTER_ADD_AXIS, "scatter_add_axis", a, indices, values, axis);
}

/* ---- VJPs ---------------------------------------------------------------------- */
static int finish(mx_array **g, mx_array *v, mx__tmp *t) {
  mx__tmp_free(t);
  if (!v) return mx_last_status();
  *g = v;
  return MX_OK;
}

/* Indices get a zero cotangent. */
static int zero_index_grad(mx_array *out, int i, mx_array **g, const bool *need) {
  if (!need[i]) return MX_OK;
  g[i] = mx_zeros_like(out->inputs[i]);
  return g[i] ? MX_OK : mx_last_status();
}

/* d take(a, idx, axis) / da: scatter-add the cotangent back. With
 * P = prod(pre), n = idx.size, Q = prod(post):
 *   cot (pre, I..., post) -> (P, n, Q); idx -> (1, n, 1)
 *   ga = scatter_add_axis(zeros(P, A, Q), idx, cot, 1) -> a's shape */
static int vjp_take(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *a = out->inputs[0], *idx = out->inputs[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int st = zero_index_grad(out, 1, g, need);
  if (st || !need[0]) return st;
  int64_t P = mx__shape_size(a->shape, ax);
  int64_t Q = mx__shape_size(a->shape + ax + 1, a->ndim - ax - 1);
  mx__tmp t = {0};
  int64_t cs[3] = {P, idx->size, Q}, is[3] = {1, idx->size, 1}, zs[3] = {P, a->shape[ax], Q};
  mx_array *c3 = mx__keep(&t, mx_reshape(cot, cs, 3));
  mx_array *i3 = mx__keep(&t, mx_reshape(idx, is, 3));
  mx_array *z = mx__keep(&t, mx_zeros(zs, 3, a->dtype));
  mx_array *s = mx__keep(&t, mx_scatter_add_axis(z, i3, c3, 1));
  return finish(&g[0], mx_reshape(s, a->shape, a->ndim), &t);
}

static int vjp_take_along_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *a = out->inputs[0], *idx = out->inputs[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int st = zero_index_grad(out, 1, g, need);
  if (st || !need[0]) return st;
  mx__tmp t = {0};
  mx_array *z = mx__keep(&t, mx_zeros_like(a));
  return finish(&g[0], mx_scatter_add_axis(z, idx, cot, ax), &t);
}

/* put_along_axis: positions that were overwritten get no gradient in a;
 * a value gets the cotangent of its position only if it was the write that
 * survived (the last one in index order along the axis), so the VJP is
 * exact with duplicate indices too. */
static int vjp_put_along_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *idx = out->inputs[1], *v = out->inputs[2];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int st = zero_index_grad(out, 1, g, need);
  if (st) return st;
  mx__tmp t = {0};
  if (need[0]) {
    mx_array *zero = mx__keep(&t, mx_array_scalar(0, cot->dtype));
    st = finish(&g[0], mx_put_along_axis(cot, idx, zero, ax), &t);
    if (st) return st;
  }
  if (need[2]) {
    /* pos = 1..n along the axis; who[k] = pos of the last write to k */
    int64_t n = idx->shape[ax];
    int64_t ps[MX_MAX_NDIM];
    for (int d = 0; d < idx->ndim; d++) ps[d] = d == ax ? n : 1;
    mx_array *r = mx__keep(&t, mx_arange(1, (double)n + 1, 1, MX_INT32));
    mx_array *pos = mx__keep(&t, mx_reshape(r, ps, idx->ndim));
    mx_array *z = mx__keep(&t, mx_zeros(out->shape, out->ndim, MX_INT32));
    mx_array *who = mx__keep(&t, mx_put_along_axis(z, idx, pos, ax));
    mx_array *back = mx__keep(&t, mx_take_along_axis(who, idx, ax));
    mx_array *won = mx__keep(&t, mx_equal(back, pos));
    mx_array *gc = mx__keep(&t, mx_take_along_axis(cot, idx, ax));
    mx_array *zero = mx__keep(&t, mx_array_scalar(0, v->dtype));
    st = finish(&g[2], mx_where(won, gc, zero), &t);
  }
  return st;
}

static int vjp_scatter_add_axis(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *idx = out->inputs[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int st = zero_index_grad(out, 1, g, need);
  if (st) return st;
  mx__tmp t = {0};
  if (need[0] && (st = finish(&g[0], mx_array_retain(cot), &t))) return st;
  if (need[2]) st = finish(&g[2], mx_take_along_axis(cot, idx, ax), &t);
  return st;
}
