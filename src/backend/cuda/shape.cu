/* shape.cu — CUDA kernels of the shape ops. reshape (of row-contiguous
 * data), transpose, broadcast_to and slice are views exactly as on the CPU
 * (no data is touched, so eval does not even move their input); the rest
 * are strided copies on the GPU. */
#include <string.h>

#include "cuda_common.cuh"
#include "ops/shape_params.h"

static int k_reshape(mx_array *out, mx_array **in) {
  if (mx__view_reshape(out, in)) return MX_OK;
  int s = mx__array_alloc_data(out);
  if (s) return s;
  return mx__cuda_copy_to_contiguous(in[0], out->buf->dptr);
}

static int k_slice_update(mx_array *out, mx_array **in) {
  const mx__slice_params *p = MX__PARAMS(out, mx__slice_params);
  mx_array *a = in[0], *u = in[1];
  size_t es = mx_dtype_size(out->dtype);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  if ((s = mx__cuda_copy_to_contiguous(a, out->buf->dptr))) return s;
  int64_t row[MX_MAX_NDIM], st[MX_MAX_NDIM], off = 0;
  mx__compute_row_strides(out->shape, out->ndim, row);
  bool empty = false;
  for (int d = 0; d < out->ndim; d++) {
    st[d] = row[d] * p->step[d];
    off += p->start[d] * row[d];
    if (p->len[d] == 0) empty = true;
  }
  if (empty) return MX_OK;
  return mx__cuda_strided_copy((char *)out->buf->dptr + off * (int64_t)es, st, p->len, out->ndim,
                               u, "slice_update");
}

static int k_concatenate(mx_array *out, mx_array **in) {
  const mx__concat_params *p = MX__PARAMS(out, mx__concat_params);
  size_t es = mx_dtype_size(out->dtype);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  int64_t row[MX_MAX_NDIM];
  mx__compute_row_strides(out->shape, out->ndim, row);
  int64_t pos = 0;
  for (int i = 0; i < out->ninputs && !s; i++) {
    mx_array *a = in[i];
    if (a->size)
      s = mx__cuda_strided_copy((char *)out->buf->dptr + pos * row[p->axis] * (int64_t)es, row,
                                a->shape, a->ndim, a, "concatenate");
    pos += a->shape[p->axis];
  }
  return s;
}

template <class S>
__global__ void k_fill(S *o, int64_t n, S v) {
  MX_CUDA_LOOP(i, n) o[i] = v;
}

static int fill(void *dst, int64_t n, size_t es, uint64_t v, const char *what) {
  if (n == 0) return MX_OK;
  unsigned nb = mx__cuda_blocks(n);
  cudaStream_t s = mx__cuda_stream();
  switch (es) {
    case 1: k_fill<uint8_t><<<nb, MX_CUDA_THREADS, 0, s>>>((uint8_t *)dst, n, (uint8_t)v); break;
    case 2: k_fill<uint16_t><<<nb, MX_CUDA_THREADS, 0, s>>>((uint16_t *)dst, n, (uint16_t)v); break;
    case 4: k_fill<uint32_t><<<nb, MX_CUDA_THREADS, 0, s>>>((uint32_t *)dst, n, (uint32_t)v); break;
    default: k_fill<uint64_t><<<nb, MX_CUDA_THREADS, 0, s>>>((uint64_t *)dst, n, v); break;
  }
  return mx__cuda_launched(what);
}

static int k_pad(mx_array *out, mx_array **in) {
  const mx__pad_params *p = MX__PARAMS(out, mx__pad_params);
  size_t es = mx_dtype_size(out->dtype);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  uint64_t v = 0; /* the value in out's dtype, converted as the CPU does */
  mx__cpu_convert(&p->value, MX_FLOAT64, &v, out->dtype, 1);
  if ((s = fill(out->buf->dptr, out->size, es, v, "pad"))) return s;
  int64_t row[MX_MAX_NDIM], off = 0;
  mx__compute_row_strides(out->shape, out->ndim, row);
  for (int d = 0; d < out->ndim; d++) off += p->before[d] * row[d];
  if (!in[0]->size) return MX_OK;
  return mx__cuda_strided_copy((char *)out->buf->dptr + off * (int64_t)es, row, in[0]->shape,
                               out->ndim, in[0], "pad");
}

/* store_at: one thread per element of src; the position is read on the
 * device, so a captured launch stays valid when it changes. */
struct store_geo {
  int ndim, axis;
  int64_t shape[MX_MAX_NDIM], sst[MX_MAX_NDIM], dst[MX_MAX_NDIM];
  int64_t dim; /* dst's length along axis */
};

template <class E>
__global__ void k_store(E *d, const E *s, store_geo g, int64_t n, const int32_t *posp) {
  MX_PDL_ENTRY();
  int64_t pos = posp ? *posp : 0;
  MX_CUDA_LOOP(i, n) {
    int64_t r = i, so = 0, dof = 0;
    bool ok = true;
    for (int k = g.ndim - 1; k >= 0; k--) {
      int64_t c = r % g.shape[k];
      r /= g.shape[k];
      so += c * g.sst[k];
      if (k == g.axis) {
        c += pos;
        ok = c >= 0 && c < g.dim;
      }
      dof += c * g.dst[k];
    }
    if (ok) d[dof] = s[so];
  }
}

static int k_store_at(mx_array *out, mx_array **in) {
  const mx__store_at_params *p = MX__PARAMS(out, mx__store_at_params);
  mx_array *dst = in[0], *src = in[1];
  size_t es = mx_dtype_size(out->dtype);
  dst->buf->valid = 1u << MX_GPU; /* written on the device below */
  store_geo g;
  g.ndim = dst->ndim;
  g.axis = p->axis;
  g.dim = dst->shape[p->axis];
  mx__compute_row_strides(dst->shape, dst->ndim, g.dst);
  mx__array_set_view(out, dst, g.dst, 0);
  for (int d = 0; d < g.ndim; d++) {
    g.shape[d] = src->shape[d];
    g.sst[d] = src->strides[d];
  }
  if (src->size == 0) return MX_OK;
  const int32_t *posp = p->has_pos ? (const int32_t *)mx__ddata(in[2]) : NULL;
  unsigned nb = mx__cuda_blocks(src->size);
  char *dp = (char *)dst->buf->dptr;
  const char *sp = mx__ddata(src);
  switch (es) {
#define C(N, E)                                                                                \
  case N:                                                                                      \
    mx__cuda_launch_pdl(k_store<E>, nb, MX_CUDA_THREADS, 0, (E *)dp, (const E *)sp, g,         \
                        src->size, posp);                                                      \
    break;
    C(1, uint8_t) C(2, uint16_t) C(4, uint32_t)
    default: C(8, uint64_t)
#undef C
  }
  return mx__cuda_launched("store_at");
}

void mx__cuda_register_shape(mx__kernel_fn *k) {
  k[MX_OP_STORE_AT] = k_store_at;
  k[MX_OP_RESHAPE] = k_reshape;
  k[MX_OP_TRANSPOSE] = mx__view_transpose;
  k[MX_OP_BROADCAST] = mx__view_broadcast;
  k[MX_OP_SLICE] = mx__view_slice;
  k[MX_OP_SLICE_UPDATE] = k_slice_update;
  k[MX_OP_CONCATENATE] = k_concatenate;
  k[MX_OP_PAD] = k_pad;
}
