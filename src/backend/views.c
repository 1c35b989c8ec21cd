/* views.c — kernels of the view ops, shared by every backend: they only
 * compute strides and an offset over the input's buffer, wherever it is. */
#include "array_impl.h"
#include "ops/shape_params.h"

/* The strides of a's data seen in out's shape without moving it, as
 * NumPy's no-copy reshape finds them: out's axes are matched to a's in
 * groups of equal element counts; each group of a's axes (size-1 axes
 * dropped) must be contiguous among themselves, and then the group's new
 * axes get row-major strides from the group's innermost one. E.g. the
 * last axis of a view with spread-out rows split into heads. */
static bool nocopy_strides(const mx_array *a, const int64_t *shape, int ndim, int64_t *st) {
  int64_t os[MX_MAX_NDIM], ost[MX_MAX_NDIM];
  int on = 0;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != 1) os[on] = a->shape[d], ost[on++] = a->strides[d];
  int oi = 0, oj = 1, ni = 0, nj = 1;
  while (ni < ndim && oi < on) {
    int64_t np = shape[ni], op = os[oi];
    while (np != op) {
      if (np < op) {
        if (nj >= ndim) return false;
        np *= shape[nj++];
      } else {
        if (oj >= on) return false;
        op *= os[oj++];
      }
    }
    for (int k = oi; k < oj - 1; k++)
      if (ost[k] != os[k + 1] * ost[k + 1]) return false;
    st[nj - 1] = ost[oj - 1];
    for (int k = nj - 1; k > ni; k--) st[k - 1] = st[k] * shape[k];
    ni = nj++;
    oi = oj++;
  }
  for (int k = ni; k < ndim; k++) { /* trailing size-1 axes */
    if (shape[k] != 1) return false;
    st[k] = 1;
  }
  return oi >= on;
}

bool mx__view_reshape(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int64_t st[MX_MAX_NDIM];
  if (a->row_contiguous || out->size == 0) {
    mx__compute_row_strides(out->shape, out->ndim, st);
  } else if (!nocopy_strides(a, out->shape, out->ndim, st)) {
    return false; /* the backend copies instead */
  }
  mx__array_set_view(out, a, st, a->offset);
  return true;
}

int mx__view_transpose(mx_array *out, mx_array **in) {
  const mx__transpose_params *p = MX__PARAMS(out, mx__transpose_params);
  int64_t st[MX_MAX_NDIM];
  for (int i = 0; i < out->ndim; i++) st[i] = in[0]->strides[p->perm[i]];
  mx__array_set_view(out, in[0], st, in[0]->offset);
  return MX_OK;
}

int mx__view_broadcast(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int64_t st[MX_MAX_NDIM];
  int off = out->ndim - a->ndim;
  for (int d = 0; d < out->ndim; d++) {
    int ia = d - off;
    st[d] = (ia < 0 || (a->shape[ia] == 1 && out->shape[d] != 1)) ? 0 : a->strides[ia];
  }
  mx__array_set_view(out, a, st, a->offset);
  return MX_OK;
}

int mx__view_slice(mx_array *out, mx_array **in) {
  const mx__slice_params *p = MX__PARAMS(out, mx__slice_params);
  mx_array *a = in[0];
  int64_t st[MX_MAX_NDIM], off = a->offset;
  for (int d = 0; d < out->ndim; d++) {
    st[d] = a->strides[d] * p->step[d];
    if (out->shape[d] > 0) off += p->start[d] * a->strides[d];
  }
  if (out->size == 0) off = a->offset;
  mx__array_set_view(out, a, st, off);
  return MX_OK;
}
