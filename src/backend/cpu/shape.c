/* shape.c (cpu) — kernels of the shape ops. reshape/transpose/broadcast/
 * slice are views (no copy) when the input's strides allow. */
#include <string.h>

#include "cpu.h"
#include "ops/shape_params.h"
#include "types.h"

static int k_reshape(mx_array *out, mx_array **in) {
  if (mx__view_reshape(out, in)) return MX_OK;
  int s = mx__array_alloc_data(out);
  if (s) return s;
  mx__cpu_copy_to_contiguous(in[0], out->buf->ptr);
  return MX_OK;
}

void mx__cpu_copy_inner(char **p, const int64_t *s, int64_t n, const void *c);

/* Copy `src` (broadcast to shape) into dst laid out with dst_strides. */
static void strided_copy(char *dst, const int64_t *dst_strides, const int64_t *shape, int ndim,
                         mx_array *src, size_t es) {
  int64_t sst[MX_MAX_NDIM];
  int off = ndim - src->ndim;
  for (int d = 0; d < ndim; d++) {
    int is = d - off;
    sst[d] = (is < 0 || (src->shape[is] == 1 && shape[d] != 1)) ? 0 : src->strides[is];
  }
  char *base[2] = {dst, mx__data(src)};
  size_t el[2] = {es, es};
  const int64_t *sp[2] = {dst_strides, sst};
  mx__nd_iter it;
  mx__iter_init(&it, shape, ndim, 2, base, el, sp);
  mx__iter_run(&it, mx__cpu_copy_inner, &es);
}

/* generic strided copy by element size (ctx: size_t *elsize) */
void mx__cpu_copy_inner(char **p, const int64_t *s, int64_t n, const void *c);
void mx__cpu_copy_inner(char **p, const int64_t *s, int64_t n, const void *c) {
  size_t es = *(const size_t *)c;
  if (s[0] == 1 && s[1] == 1) {
    memcpy(p[0], p[1], es * (size_t)n);
    return;
  }
  switch (es) {
#define CASE(N, T)                                                        \
  case N: {                                                               \
    T *o = (T *)p[0];                                                     \
    const T *a = (const T *)p[1];                                         \
    for (int64_t i = 0; i < n; i++) o[i * s[0]] = a[i * s[1]];            \
  } break;
    CASE(1, uint8_t)
    CASE(2, uint16_t)
    CASE(4, uint32_t)
    CASE(8, uint64_t)
#undef CASE
    default: MX_ASSERT(0);
  }
}

/* The input's buffer can become the output's (an in-place update) when
 * nothing else can see it: this node holds the only reference to the input
 * array, no view shares its buffer, and no transform keeps the graph. This
 * is what makes a KV-cache append O(new tokens) instead of O(cache). */
static bool can_donate(const mx_array *a, const mx_array *out) {
  return a->refcount == 1 && a->buf->refcount == 1 && !a->buf->foreign && a->buf->ptr &&
         a->row_contiguous && a->offset == 0 && a->dtype == out->dtype &&
         a->size == out->size && !mx__tracing();
}

static int k_slice_update(mx_array *out, mx_array **in) {
  const mx__slice_params *p = MX__PARAMS(out, mx__slice_params);
  mx_array *a = in[0], *u = in[1];
  size_t es = mx_dtype_size(out->dtype);
  if (can_donate(a, out)) {
    a->buf->valid = 1u << MX_CPU; /* written on the host below */
    int64_t st0[MX_MAX_NDIM];
    mx__compute_row_strides(out->shape, out->ndim, st0);
    mx__array_set_view(out, a, st0, 0);
  } else {
    int s = mx__array_alloc_data(out);
    if (s) return s;
    mx__cpu_copy_to_contiguous(a, out->buf->ptr);
  }
  int64_t row[MX_MAX_NDIM], st[MX_MAX_NDIM], off = 0;
  mx__compute_row_strides(out->shape, out->ndim, row);
  bool empty = false;
  for (int d = 0; d < out->ndim; d++) {
    st[d] = row[d] * p->step[d];
    off += p->start[d] * row[d];
    if (p->len[d] == 0) empty = true;
  }
  if (!empty)
    strided_copy((char *)out->buf->ptr + off * (int64_t)es, st, p->len, out->ndim, u, es);
  return MX_OK;
}

static int k_concatenate(mx_array *out, mx_array **in) {
  const mx__concat_params *p = MX__PARAMS(out, mx__concat_params);
  size_t es = mx_dtype_size(out->dtype);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  int64_t row[MX_MAX_NDIM];
  mx__compute_row_strides(out->shape, out->ndim, row);
  int64_t pos = 0;
  for (int i = 0; i < out->ninputs; i++) {
    mx_array *a = in[i];
    if (a->size)
      strided_copy((char *)out->buf->ptr + pos * row[p->axis] * (int64_t)es, row, a->shape,
                   a->ndim, a, es);
    pos += a->shape[p->axis];
  }
  return MX_OK;
}

static int k_pad(mx_array *out, mx_array **in) {
  const mx__pad_params *p = MX__PARAMS(out, mx__pad_params);
  size_t es = mx_dtype_size(out->dtype);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  /* fill with the value, then copy the input into the interior */
  uint64_t v = 0;
  mx__cpu_convert(&p->value, MX_FLOAT64, &v, out->dtype, 1);
  char *o = out->buf->ptr;
  if (es == 1) memset(o, (int)(uint8_t)v, (size_t)out->size);
  else
    for (int64_t i = 0; i < out->size; i++) memcpy(o + i * (int64_t)es, &v, es);
  int64_t row[MX_MAX_NDIM], off = 0;
  mx__compute_row_strides(out->shape, out->ndim, row);
  for (int d = 0; d < out->ndim; d++) off += p->before[d] * row[d];
  if (in[0]->size) strided_copy(o + off * (int64_t)es, row, in[0]->shape, out->ndim, in[0], es);
  return MX_OK;
}

/* In place into dst's buffer (see mx__store_at). */
static int k_store_at(mx_array *out, mx_array **in) {
  const mx__store_at_params *p = MX__PARAMS(out, mx__store_at_params);
  mx_array *dst = in[0], *src = in[1];
  size_t es = mx_dtype_size(out->dtype);
  int64_t pos = p->has_pos ? *(const int32_t *)mx__data(in[2]) : 0;
  dst->buf->valid = 1u << MX_CPU; /* written on the host below */
  int64_t row[MX_MAX_NDIM], shape[MX_MAX_NDIM];
  mx__compute_row_strides(dst->shape, dst->ndim, row);
  mx__array_set_view(out, dst, row, 0);
  int64_t room = dst->shape[p->axis] - pos, len = src->shape[p->axis];
  int64_t n = len < room ? len : room;
  if (pos < 0 || n <= 0 || src->size == 0) return MX_OK;
  memcpy(shape, src->shape, sizeof(int64_t) * (size_t)src->ndim);
  shape[p->axis] = n;
  strided_copy((char *)dst->buf->ptr + pos * row[p->axis] * (int64_t)es, row, shape, dst->ndim,
               src, es);
  return MX_OK;
}

void mx__cpu_register_shape(mx__kernel_fn *k) {
  k[MX_OP_STORE_AT] = k_store_at;
  k[MX_OP_RESHAPE] = k_reshape;
  k[MX_OP_TRANSPOSE] = mx__view_transpose;
  k[MX_OP_BROADCAST] = mx__view_broadcast;
  k[MX_OP_SLICE] = mx__view_slice;
  k[MX_OP_SLICE_UPDATE] = k_slice_update;
  k[MX_OP_CONCATENATE] = k_concatenate;
  k[MX_OP_PAD] = k_pad;
}
