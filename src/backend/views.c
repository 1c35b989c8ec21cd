/* views.c — kernels of the view ops, shared by every backend: they only
 * compute strides and an offset over the input's buffer, wherever it is. */
#include "array_impl.h"
#include "ops/shape_params.h"

bool mx__view_reshape(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  if (!a->row_contiguous) return false; /* the backend copies instead */
  int64_t st[MX_MAX_NDIM];
  mx__compute_row_strides(out->shape, out->ndim, st);
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
