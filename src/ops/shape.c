/* shape.c — reshape, transpose, broadcast, slice (views), slice_update,
 * concatenate, pad, copy, and the compositions built from them (flatten,
 * squeeze, expand_dims, swapaxes, moveaxis, stack, split, tile, repeat). */
#include <string.h>

#include "ops_internal.h"
#include "shape_params.h"

static int vjp_reshape(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_transpose(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_broadcast(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_slice(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_slice_update(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_concatenate(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_pad(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_copy(mx_array *out, mx_array *cot, mx_array **g, const bool *need);

static const mx__op_def def_RESHAPE = {.id = MX_OP_RESHAPE, .vjp = vjp_reshape};
static const mx__op_def def_TRANSPOSE = {.id = MX_OP_TRANSPOSE, .vjp = vjp_transpose};
static const mx__op_def def_BROADCAST = {.id = MX_OP_BROADCAST, .vjp = vjp_broadcast};
static const mx__op_def def_SLICE = {.id = MX_OP_SLICE, .vjp = vjp_slice};
static const mx__op_def def_SLICE_UPDATE = {.id = MX_OP_SLICE_UPDATE, .vjp = vjp_slice_update};
static const mx__op_def def_CONCATENATE = {.id = MX_OP_CONCATENATE, .vjp = vjp_concatenate};
static const mx__op_def def_PAD = {.id = MX_OP_PAD, .vjp = vjp_pad};
static const mx__op_def def_COPY = {.id = MX_OP_COPY, .vjp = vjp_copy};
static const mx__op_def def_STORE_AT = {.id = MX_OP_STORE_AT};

/* ---- reshape ---------------------------------------------------------------- */
mx_array *mx_reshape(mx_array *a, const int64_t *shape, int ndim) {
  MX__CHECK_IN("reshape", a);
  if (ndim < 0 || ndim > MX_MAX_NDIM || (ndim && !shape)) {
    mx__set_error(MX_ERR_SHAPE, "reshape: invalid number of dimensions %d", ndim);
    return NULL;
  }
  int64_t s[MX_MAX_NDIM];
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < ndim; i++) {
    s[i] = shape[i];
    if (shape[i] == -1) {
      if (infer >= 0) {
        mx__set_error(MX_ERR_SHAPE, "reshape: more than one dimension is -1");
        return NULL;
      }
      infer = i;
    } else if (shape[i] < 0) {
      mx__set_error(MX_ERR_SHAPE, "reshape: negative dimension %lld", (long long)shape[i]);
      return NULL;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || a->size % known) {
      char sa[256], sb[256];
      mx__set_error(MX_ERR_SHAPE, "reshape: cannot reshape array of shape %s into %s",
                    mx__shape_str(a->shape, a->ndim, sa, sizeof sa),
                    mx__shape_str(shape, ndim, sb, sizeof sb));
      return NULL;
    }
    s[infer] = a->size / known;
    known *= s[infer];
  }
  if (known != a->size) {
    char sa[256], sb[256];
    mx__set_error(MX_ERR_SHAPE, "reshape: cannot reshape array of shape %s (%lld elements) into %s",
                  mx__shape_str(a->shape, a->ndim, sa, sizeof sa), (long long)a->size,
                  mx__shape_str(shape, ndim, sb, sizeof sb));
    return NULL;
  }
  if (a->ndim == ndim && !memcmp(a->shape, s, sizeof(int64_t) * (size_t)ndim))
    return mx_array_retain(a);
  return mx__node_new(&def_RESHAPE, a->dtype, s, ndim, &a, 1, NULL, 0);
}

mx_array *mx__reshape_keep(mx_array *a, const int64_t *shape, int ndim) {
  return mx_reshape(a, shape, ndim);
}

mx_array *mx_flatten(mx_array *a, int start_axis, int end_axis) {
  MX__CHECK_IN("flatten", a);
  if (a->ndim == 0) return mx_reshape(a, (int64_t[]){1}, 1);
  int s, e;
  if (mx__norm_axis("flatten", start_axis, a->ndim, &s) ||
      mx__norm_axis("flatten", end_axis, a->ndim, &e))
    return NULL;
  if (s > e) {
    mx__set_error(MX_ERR_INVALID_ARG, "flatten: start axis %d is after end axis %d", start_axis,
                  end_axis);
    return NULL;
  }
  int64_t shape[MX_MAX_NDIM];
  int n = 0;
  for (int i = 0; i < s; i++) shape[n++] = a->shape[i];
  int64_t m = 1;
  for (int i = s; i <= e; i++) m *= a->shape[i];
  shape[n++] = m;
  for (int i = e + 1; i < a->ndim; i++) shape[n++] = a->shape[i];
  return mx_reshape(a, shape, n);
}

mx_array *mx_expand_dims(mx_array *a, const int *axes, int naxes) {
  MX__CHECK_IN("expand_dims", a);
  int nd = a->ndim + naxes;
  if (nd > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "expand_dims: result would have %d dimensions", nd);
    return NULL;
  }
  bool is_new[MX_MAX_NDIM] = {0};
  for (int i = 0; i < naxes; i++) {
    int ax;
    if (mx__norm_axis("expand_dims", axes[i], nd, &ax)) return NULL;
    if (is_new[ax]) {
      mx__set_error(MX_ERR_INVALID_ARG, "expand_dims: repeated axis %d", axes[i]);
      return NULL;
    }
    is_new[ax] = true;
  }
  int64_t shape[MX_MAX_NDIM];
  for (int i = 0, j = 0; i < nd; i++) shape[i] = is_new[i] ? 1 : a->shape[j++];
  return mx_reshape(a, shape, nd);
}

mx_array *mx_squeeze(mx_array *a, const int *axes, int naxes) {
  MX__CHECK_IN("squeeze", a);
  bool drop[MX_MAX_NDIM] = {0};
  if (!axes) {
    for (int i = 0; i < a->ndim; i++) drop[i] = a->shape[i] == 1;
  } else {
    for (int i = 0; i < naxes; i++) {
      int ax;
      if (mx__norm_axis("squeeze", axes[i], a->ndim, &ax)) return NULL;
      if (a->shape[ax] != 1) {
        mx__set_error(MX_ERR_SHAPE, "squeeze: axis %d has size %lld, not 1", axes[i],
                      (long long)a->shape[ax]);
        return NULL;
      }
      drop[ax] = true;
    }
  }
  int64_t shape[MX_MAX_NDIM];
  int n = 0;
  for (int i = 0; i < a->ndim; i++)
    if (!drop[i]) shape[n++] = a->shape[i];
  return mx_reshape(a, shape, n);
}

/* ---- transpose ---------------------------------------------------------------- */
mx_array *mx_transpose(mx_array *a, const int *perm, int nperm) {
  MX__CHECK_IN("transpose", a);
  mx__transpose_params p = {{0}};
  if (!perm) {
    for (int i = 0; i < a->ndim; i++) p.perm[i] = a->ndim - 1 - i;
  } else {
    if (nperm != a->ndim) {
      mx__set_error(MX_ERR_SHAPE, "transpose: %d axes given for an array of %d dimensions",
                    nperm, a->ndim);
      return NULL;
    }
    bool seen[MX_MAX_NDIM] = {0};
    for (int i = 0; i < nperm; i++) {
      int ax;
      if (mx__norm_axis("transpose", perm[i], a->ndim, &ax)) return NULL;
      if (seen[ax]) {
        mx__set_error(MX_ERR_INVALID_ARG, "transpose: repeated axis %d", perm[i]);
        return NULL;
      }
      seen[ax] = true;
      p.perm[i] = ax;
    }
  }
  bool identity = true;
  int64_t shape[MX_MAX_NDIM];
  for (int i = 0; i < a->ndim; i++) {
    shape[i] = a->shape[p.perm[i]];
    if (p.perm[i] != i) identity = false;
  }
  if (identity) return mx_array_retain(a);
  return mx__node_new(&def_TRANSPOSE, a->dtype, shape, a->ndim, &a, 1, &p, sizeof p);
}

mx_array *mx_swapaxes(mx_array *a, int axis1, int axis2) {
  MX__CHECK_IN("swapaxes", a);
  int x, y;
  if (mx__norm_axis("swapaxes", axis1, a->ndim, &x) || mx__norm_axis("swapaxes", axis2, a->ndim, &y))
    return NULL;
  int perm[MX_MAX_NDIM];
  for (int i = 0; i < a->ndim; i++) perm[i] = i;
  perm[x] = y;
  perm[y] = x;
  return mx_transpose(a, perm, a->ndim);
}

mx_array *mx_moveaxis(mx_array *a, int source, int destination) {
  MX__CHECK_IN("moveaxis", a);
  int s, d;
  if (mx__norm_axis("moveaxis", source, a->ndim, &s) ||
      mx__norm_axis("moveaxis", destination, a->ndim, &d))
    return NULL;
  int order[MX_MAX_NDIM], n = 0;
  for (int i = 0; i < a->ndim; i++)
    if (i != s) order[n++] = i;
  int perm[MX_MAX_NDIM];
  for (int i = 0, j = 0; i < a->ndim; i++) perm[i] = (i == d) ? s : order[j++];
  return mx_transpose(a, perm, a->ndim);
}

/* ---- broadcast ----------------------------------------------------------------- */
mx_array *mx_broadcast_to(mx_array *a, const int64_t *shape, int ndim) {
  MX__CHECK_IN("broadcast_to", a);
  if (mx__check_shape("broadcast_to", shape, ndim)) return NULL;
  if (ndim < a->ndim) goto bad;
  for (int i = 0; i < ndim; i++) {
    int ia = i - (ndim - a->ndim);
    if (ia >= 0 && a->shape[ia] != shape[i] && a->shape[ia] != 1) goto bad;
  }
  if (ndim == a->ndim && !memcmp(a->shape, shape, sizeof(int64_t) * (size_t)ndim))
    return mx_array_retain(a);
  return mx__node_new(&def_BROADCAST, a->dtype, shape, ndim, &a, 1, NULL, 0);
bad : {
  char sa[256], sb[256];
  mx__set_error(MX_ERR_SHAPE, "broadcast_to: cannot broadcast shape %s to %s",
                mx__shape_str(a->shape, a->ndim, sa, sizeof sa),
                mx__shape_str(shape, ndim, sb, sizeof sb));
  return NULL;
}
}

int mx_broadcast_arrays(mx_array **in, int n, mx_array **out) {
  int64_t shape[MX_MAX_NDIM] = {0};
  int nd = 0;
  for (int i = 0; i < n; i++) {
    if (!in[i]) return mx__set_error(MX_ERR_INVALID_ARG, "broadcast_arrays: input %d is NULL", i);
    int64_t t[MX_MAX_NDIM];
    int tn;
    if (mx__broadcast_shapes("broadcast_arrays", shape, nd, in[i]->shape, in[i]->ndim, t, &tn))
      return mx_last_status();
    memcpy(shape, t, sizeof t);
    nd = tn;
  }
  for (int i = 0; i < n; i++) {
    out[i] = mx_broadcast_to(in[i], shape, nd);
    if (!out[i]) {
      mx_array_free_n(out, i);
      return mx_last_status();
    }
  }
  return MX_OK;
}

/* ---- slice ---------------------------------------------------------------------- */
/* Python slice semantics with clamping. */
static void norm_slice(int64_t dim, const int64_t *start, const int64_t *stop, int64_t step,
                       int64_t *s_out, int64_t *len_out) {
  int64_t s, e;
  if (step > 0) {
    s = start ? *start : 0;
    e = stop ? *stop : dim;
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (s < 0) s = 0;
    if (s > dim) s = dim;
    if (e < 0) e = 0;
    if (e > dim) e = dim;
    *len_out = e > s ? (e - s + step - 1) / step : 0;
  } else {
    s = start ? *start : dim - 1;
    e = stop ? *stop : -dim - 1; /* one before the first element */
    if (s < 0) s += dim;
    if (e < -1) e += dim;
    if (s < -1) s = -1;
    if (s >= dim) s = dim - 1;
    if (e < -1) e = -1;
    if (e >= dim) e = dim - 1;
    *len_out = s > e ? (s - e + (-step) - 1) / (-step) : 0;
  }
  *s_out = s;
}

static int build_slice_params(const char *op, mx_array *a, const int64_t *start,
                              const int64_t *stop, const int64_t *steps, int n,
                              mx__slice_params *p, int64_t *shape) {
  if (n > a->ndim || n < 0)
    return mx__set_error(MX_ERR_SHAPE, "%s: %d axes given for an array of %d dimensions", op, n,
                         a->ndim);
  for (int i = 0; i < a->ndim; i++) {
    int64_t step = (steps && i < n) ? steps[i] : 1;
    if (step == 0) return mx__set_error(MX_ERR_INVALID_ARG, "%s: step is 0 at axis %d", op, i);
    int64_t s, len;
    norm_slice(a->shape[i], (start && i < n) ? &start[i] : NULL, (stop && i < n) ? &stop[i] : NULL,
               step, &s, &len);
    if (len == 0) s = 0;
    p->start[i] = s;
    p->step[i] = step;
    p->len[i] = len;
    shape[i] = len;
  }
  return MX_OK;
}

mx_array *mx_slice(mx_array *a, const int64_t *start, const int64_t *stop, const int64_t *steps,
                   int n) {
  MX__CHECK_IN("slice", a);
  mx__slice_params p;
  memset(&p, 0, sizeof p);
  int64_t shape[MX_MAX_NDIM];
  if (build_slice_params("slice", a, start, stop, steps, n, &p, shape)) return NULL;
  bool identity = true;
  for (int i = 0; i < a->ndim; i++)
    if (shape[i] != a->shape[i] || p.step[i] != 1) identity = false;
  if (identity) return mx_array_retain(a);
  return mx__node_new(&def_SLICE, a->dtype, shape, a->ndim, &a, 1, &p, sizeof p);
}

mx_array *mx_slice_axis(mx_array *a, int axis, int64_t start, int64_t stop, int64_t step) {
  MX__CHECK_IN("slice", a);
  int ax;
  if (mx__norm_axis("slice", axis, a->ndim, &ax)) return NULL;
  int64_t st[MX_MAX_NDIM], en[MX_MAX_NDIM], sp[MX_MAX_NDIM];
  for (int i = 0; i < a->ndim; i++) {
    st[i] = 0;
    en[i] = a->shape[i];
    sp[i] = 1;
  }
  st[ax] = start;
  en[ax] = stop;
  sp[ax] = step;
  return mx_slice(a, st, en, sp, a->ndim);
}

mx_array *mx_slice_update(mx_array *a, mx_array *update, const int64_t *start,
                          const int64_t *stop, const int64_t *steps, int n) {
  MX__CHECK_IN("slice_update", a, update);
  mx__slice_params p;
  memset(&p, 0, sizeof p);
  int64_t shape[MX_MAX_NDIM];
  if (build_slice_params("slice_update", a, start, stop, steps, n, &p, shape)) return NULL;
  int64_t bs[MX_MAX_NDIM];
  int bn;
  if (mx__broadcast_shapes("slice_update", shape, a->ndim, update->shape, update->ndim, bs, &bn))
    return NULL;
  if (bn != a->ndim || memcmp(bs, shape, sizeof(int64_t) * (size_t)bn)) {
    char s1[256], s2[256];
    mx__set_error(MX_ERR_SHAPE, "slice_update: update of shape %s does not fit the slice %s",
                  mx__shape_str(update->shape, update->ndim, s1, sizeof s1),
                  mx__shape_str(shape, a->ndim, s2, sizeof s2));
    return NULL;
  }
  mx_array *u = mx_astype(update, a->dtype);
  if (!u) return NULL;
  mx_array *ins[2] = {a, u};
  mx_array *r = mx__node_new(&def_SLICE_UPDATE, a->dtype, a->shape, a->ndim, ins, 2, &p, sizeof p);
  mx_array_free(u);
  return r;
}

/* ---- store_at (internal: in-place writes of replayable decode steps) -------------- */
mx_array *mx__store_at(mx_array *dst, mx_array *src, mx_array *pos, int axis) {
  MX__CHECK_IN("store_at", dst, src);
  char s1[256], s2[256];
  if (!dst->buf || !dst->row_contiguous || dst->offset || dst->op) {
    mx__set_error(MX_ERR_INVALID_ARG, "store_at: the destination must be evaluated, "
                  "row-contiguous data");
    return NULL;
  }
  int ax;
  if (mx__norm_axis("store_at", axis, dst->ndim, &ax)) return NULL;
  bool fits = src->ndim == dst->ndim && src->dtype == dst->dtype;
  for (int d = 0; fits && d < dst->ndim; d++)
    if (d != ax && src->shape[d] != dst->shape[d]) fits = false;
  if (!fits) {
    mx__set_error(MX_ERR_SHAPE, "store_at: source %s %s does not fit the destination %s %s",
                  mx_dtype_name(src->dtype), mx__shape_str(src->shape, src->ndim, s1, sizeof s1),
                  mx_dtype_name(dst->dtype), mx__shape_str(dst->shape, dst->ndim, s2, sizeof s2));
    return NULL;
  }
  if (pos && (pos->dtype != MX_INT32 || pos->size != 1)) {
    mx__set_error(MX_ERR_INVALID_ARG, "store_at: the position must be one int32");
    return NULL;
  }
  mx__store_at_params p = {.axis = ax, .has_pos = pos != NULL};
  mx_array *ins[3] = {dst, src, pos};
  return mx__node_new(&def_STORE_AT, dst->dtype, dst->shape, dst->ndim, ins, pos ? 3 : 2, &p,
                      sizeof p);
}

/* ---- concatenate / stack / split ----------------------------------------------- */
mx_array *mx_concatenate(mx_array **arrays, int n, int axis) {
  if (n <= 0 || !arrays) {
    mx__set_error(MX_ERR_INVALID_ARG, "concatenate: no arrays given");
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (!arrays[i]) {
      if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "concatenate: array %d is NULL", i);
      return NULL;
    }
  mx_array *a0 = arrays[0];
  int ax;
  if (mx__norm_axis("concatenate", axis, a0->ndim, &ax)) return NULL;
  int64_t shape[MX_MAX_NDIM];
  memcpy(shape, a0->shape, sizeof shape);
  mx_dtype dt = a0->dtype;
  for (int i = 1; i < n; i++) {
    mx_array *b = arrays[i];
    bool ok = b->ndim == a0->ndim;
    for (int d = 0; ok && d < a0->ndim; d++)
      if (d != ax && b->shape[d] != a0->shape[d]) ok = false;
    if (!ok) {
      char s1[256], s2[256];
      mx__set_error(MX_ERR_SHAPE,
                    "concatenate: array %d has shape %s, incompatible with %s along axis %d", i,
                    mx__shape_str(b->shape, b->ndim, s1, sizeof s1),
                    mx__shape_str(a0->shape, a0->ndim, s2, sizeof s2), axis);
      return NULL;
    }
    shape[ax] += b->shape[ax];
    dt = mx_promote_types(dt, b->dtype);
  }
  if (n == 1) return mx_array_retain(a0);
  mx_array **cast = calloc((size_t)n, sizeof *cast);
  if (!cast) {
    mx__set_error(MX_ERR_OOM, "concatenate: out of memory");
    return NULL;
  }
  mx_array *r = NULL;
  int i;
  for (i = 0; i < n; i++)
    if (!(cast[i] = mx_astype(arrays[i], dt))) break;
  if (i == n) {
    mx__concat_params p = {ax};
    r = mx__node_new(&def_CONCATENATE, dt, shape, a0->ndim, cast, n, &p, sizeof p);
  }
  mx_array_free_n(cast, n);
  free(cast);
  return r;
}

mx_array *mx_stack(mx_array **arrays, int n, int axis) {
  if (n <= 0 || !arrays) {
    mx__set_error(MX_ERR_INVALID_ARG, "stack: no arrays given");
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (!arrays[i]) {
      if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "stack: array %d is NULL", i);
      return NULL;
    }
  for (int i = 1; i < n; i++)
    if (arrays[i]->ndim != arrays[0]->ndim ||
        memcmp(arrays[i]->shape, arrays[0]->shape, sizeof(int64_t) * (size_t)arrays[0]->ndim)) {
      char s1[256], s2[256];
      mx__set_error(MX_ERR_SHAPE, "stack: array %d has shape %s, array 0 has %s", i,
                    mx__shape_str(arrays[i]->shape, arrays[i]->ndim, s1, sizeof s1),
                    mx__shape_str(arrays[0]->shape, arrays[0]->ndim, s2, sizeof s2));
      return NULL;
    }
  mx_array **ex = calloc((size_t)n, sizeof *ex);
  if (!ex) {
    mx__set_error(MX_ERR_OOM, "stack: out of memory");
    return NULL;
  }
  mx_array *r = NULL;
  int i;
  for (i = 0; i < n; i++)
    if (!(ex[i] = mx_expand_dims(arrays[i], &axis, 1))) break;
  if (i == n) r = mx_concatenate(ex, n, axis);
  mx_array_free_n(ex, n);
  free(ex);
  return r;
}

int mx_split_at(mx_array *a, const int64_t *indices, int nindices, int axis, mx_array **out) {
  if (!a) return mx__set_error(MX_ERR_INVALID_ARG, "split: input is NULL");
  int ax;
  if (mx__norm_axis("split", axis, a->ndim, &ax)) return mx_last_status();
  int64_t prev = 0;
  for (int i = 0; i <= nindices; i++) {
    int64_t end = i < nindices ? indices[i] : a->shape[ax];
    if (end < prev) end = prev;
    out[i] = mx_slice_axis(a, ax, prev, end, 1);
    if (!out[i]) {
      mx_array_free_n(out, i);
      return mx_last_status();
    }
    prev = end;
  }
  return MX_OK;
}

int mx_split(mx_array *a, int sections, int axis, mx_array **out) {
  if (!a) return mx__set_error(MX_ERR_INVALID_ARG, "split: input is NULL");
  int ax;
  if (mx__norm_axis("split", axis, a->ndim, &ax)) return mx_last_status();
  if (sections <= 0 || a->shape[ax] % sections)
    return mx__set_error(MX_ERR_SHAPE, "split: axis %d of size %lld cannot be split into %d equal parts",
                         axis, (long long)a->shape[ax], sections);
  if (sections > 4096) return mx__set_error(MX_ERR_INVALID_ARG, "split: too many sections");
  int64_t idx[4096];
  int64_t step = a->shape[ax] / sections;
  for (int i = 0; i < sections - 1; i++) idx[i] = step * (i + 1);
  return mx_split_at(a, idx, sections - 1, ax, out);
}

/* ---- pad / tile / repeat ------------------------------------------------------------ */
mx_array *mx_pad(mx_array *a, const int *axes, const int64_t *before, const int64_t *after, int n,
                 double value) {
  MX__CHECK_IN("pad", a);
  mx__pad_params p;
  memset(&p, 0, sizeof p);
  p.value = value;
  if (n > a->ndim || n < 0) {
    mx__set_error(MX_ERR_SHAPE, "pad: %d axes for an array of %d dimensions", n, a->ndim);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    int ax = i;
    if (axes && mx__norm_axis("pad", axes[i], a->ndim, &ax)) return NULL;
    if (before[i] < 0 || after[i] < 0) {
      mx__set_error(MX_ERR_INVALID_ARG, "pad: negative padding at axis %d", ax);
      return NULL;
    }
    p.before[ax] = before[i];
    p.after[ax] = after[i];
  }
  int64_t shape[MX_MAX_NDIM];
  bool any = false;
  for (int i = 0; i < a->ndim; i++) {
    shape[i] = a->shape[i] + p.before[i] + p.after[i];
    any = any || p.before[i] || p.after[i];
  }
  if (!any) return mx_array_retain(a);
  return mx__node_new(&def_PAD, a->dtype, shape, a->ndim, &a, 1, &p, sizeof p);
}

mx_array *mx_tile(mx_array *a, const int64_t *reps, int n) {
  MX__CHECK_IN("tile", a);
  int nd = n > a->ndim ? n : a->ndim;
  if (2 * nd > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "tile: too many dimensions (%d)", nd);
    return NULL;
  }
  int64_t shp[MX_MAX_NDIM], rp[MX_MAX_NDIM];
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - a->ndim), ir = i - (nd - n);
    shp[i] = ia >= 0 ? a->shape[ia] : 1;
    rp[i] = ir >= 0 ? reps[ir] : 1;
    if (rp[i] < 0) {
      mx__set_error(MX_ERR_INVALID_ARG, "tile: negative repetition");
      return NULL;
    }
  }
  /* reshape to (1, d0, 1, d1, ...), broadcast to (r0, d0, r1, d1, ...), merge */
  int64_t s1[MX_MAX_NDIM], s2[MX_MAX_NDIM], s3[MX_MAX_NDIM];
  for (int i = 0; i < nd; i++) {
    s1[2 * i] = 1;
    s1[2 * i + 1] = shp[i];
    s2[2 * i] = rp[i];
    s2[2 * i + 1] = shp[i];
    s3[i] = rp[i] * shp[i];
  }
  mx__tmp t = {0};
  mx_array *x = mx__keep(&t, mx_reshape(a, s1, 2 * nd));
  x = mx__keep(&t, mx_broadcast_to(x, s2, 2 * nd));
  mx_array *r = mx_reshape(x, s3, nd);
  mx__tmp_free(&t);
  return r;
}

mx_array *mx_repeat(mx_array *a, int64_t repeats, int axis) {
  MX__CHECK_IN("repeat", a);
  int ax;
  if (mx__norm_axis("repeat", axis, a->ndim, &ax)) return NULL;
  if (repeats < 0 || a->ndim + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_INVALID_ARG, "repeat: invalid repeats %lld", (long long)repeats);
    return NULL;
  }
  int64_t s1[MX_MAX_NDIM], s2[MX_MAX_NDIM];
  for (int i = 0, j = 0; i < a->ndim; i++) {
    s1[j] = a->shape[i];
    s2[j++] = i == ax ? a->shape[i] * repeats : a->shape[i];
  }
  int e = ax + 1;
  mx__tmp t = {0};
  mx_array *x = mx__keep(&t, mx_expand_dims(a, &e, 1));
  int64_t bs[MX_MAX_NDIM];
  for (int i = 0; i < x->ndim && x; i++) bs[i] = x->shape[i];
  bs[e] = repeats;
  x = mx__keep(&t, mx_broadcast_to(x, bs, a->ndim + 1));
  mx_array *r = mx_reshape(x, s2, a->ndim);
  mx__tmp_free(&t);
  MX_UNUSED(s1);
  return r;
}

mx_array *mx_contiguous(mx_array *a) {
  MX__CHECK_IN("contiguous", a);
  return mx__node_new(&def_COPY, a->dtype, a->shape, a->ndim, &a, 1, NULL, 0);
}
mx_array *mx_copy(mx_array *a) { return mx_contiguous(a); }

/* ---- VJPs ------------------------------------------------------------------------ */
#define IN0 (out->inputs[0])
static int ret(mx_array **g, mx_array *v) {
  *g = v;
  return v ? MX_OK : mx_last_status();
}
static int vjp_reshape(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  return ret(&g[0], mx_reshape(cot, IN0->shape, IN0->ndim));
}
static int vjp_transpose(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  const mx__transpose_params *p = MX__PARAMS(out, mx__transpose_params);
  int inv[MX_MAX_NDIM];
  for (int i = 0; i < out->ndim; i++) inv[p->perm[i]] = i;
  return ret(&g[0], mx_transpose(cot, inv, out->ndim));
}
static int vjp_broadcast(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  return ret(&g[0], mx__sum_to_shape(cot, IN0->shape, IN0->ndim));
}
/* start/stop/step arrays that select exactly the slice described by p. */
static void slice_bounds(const mx__slice_params *p, int nd, int64_t *st, int64_t *en,
                         int64_t *sp) {
  for (int i = 0; i < nd; i++) {
    st[i] = p->start[i];
    sp[i] = p->step[i];
    int64_t last = p->start[i] + (p->len[i] - 1) * p->step[i];
    en[i] = p->len[i] == 0 ? p->start[i] : last + (p->step[i] > 0 ? 1 : -1);
    if (en[i] < 0 && p->step[i] < 0) en[i] = INT64_MIN / 2; /* before index 0 */
  }
}
static int vjp_slice(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  const mx__slice_params *p = MX__PARAMS(out, mx__slice_params);
  int64_t st[MX_MAX_NDIM], en[MX_MAX_NDIM], sp[MX_MAX_NDIM];
  slice_bounds(p, out->ndim, st, en, sp);
  mx_array *z = mx_zeros_like(IN0);
  mx_array *r = mx_slice_update(z, cot, st, en, sp, out->ndim);
  mx_array_free(z);
  return ret(&g[0], r);
}
static int vjp_slice_update(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__slice_params *p = MX__PARAMS(out, mx__slice_params);
  int64_t st[MX_MAX_NDIM], en[MX_MAX_NDIM], sp[MX_MAX_NDIM];
  slice_bounds(p, out->ndim, st, en, sp);
  mx_array *u = out->inputs[1];
  if (need[0]) {
    mx_array *z = mx_zeros_like(u);
    g[0] = mx_slice_update(cot, z, st, en, sp, out->ndim);
    mx_array_free(z);
    if (!g[0]) return mx_last_status();
  }
  if (need[1]) {
    mx_array *s = mx_slice(cot, st, en, sp, out->ndim);
    g[1] = mx__sum_to_shape(s, u->shape, u->ndim);
    mx_array_free(s);
    if (!g[1]) return mx_last_status();
  }
  return MX_OK;
}
static int vjp_concatenate(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__concat_params *p = MX__PARAMS(out, mx__concat_params);
  int64_t pos = 0;
  for (int i = 0; i < out->ninputs; i++) {
    int64_t len = out->inputs[i]->shape[p->axis];
    if (need[i]) {
      g[i] = mx_slice_axis(cot, p->axis, pos, pos + len, 1);
      if (!g[i]) return mx_last_status();
    }
    pos += len;
  }
  return MX_OK;
}
static int vjp_pad(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  const mx__pad_params *p = MX__PARAMS(out, mx__pad_params);
  int64_t st[MX_MAX_NDIM], en[MX_MAX_NDIM];
  for (int i = 0; i < out->ndim; i++) {
    st[i] = p->before[i];
    en[i] = p->before[i] + IN0->shape[i];
  }
  return ret(&g[0], mx_slice(cot, st, en, NULL, out->ndim));
}
static int vjp_copy(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  MX_UNUSED(out);
  return ret(&g[0], mx_array_retain(cot));
}
