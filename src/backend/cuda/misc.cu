/* misc.cu — CUDA kernels of the gathers (take, take_along_axis) and of
 * RANDOM_BITS (Threefry-2x32, the same words as the CPU kernel in
 * src/backend/cpu/random.c for every key and shape). */
#include "cuda_common.cuh"
#include "ops/indexing_params.h"
#include "ops/random_params.h"

/* ---- gathers ----------------------------------------------------------------------- */
__device__ __forceinline__ int64_t norm_index(int64_t i, int64_t dim) {
  if (i < 0) i += dim;
  return i < 0 ? 0 : i >= dim ? dim - 1 : i;
}

/* operands: 0 out, 1 indices, 2 source (its indexed axis through astride) */
template <class S, class TI>
__global__ void k_gather(S *o, const TI *ix, const S *a, mx__nd<3> nd, int64_t n, int64_t dim,
                         int64_t astride) {
  MX_CUDA_LOOP(i, n) {
    int64_t off[3];
    mx__nd_offsets<3>(nd, i, off);
    o[off[0]] = a[off[2] + norm_index((int64_t)ix[off[1]], dim) * astride];
  }
}

template <class S>
static int gather_es(mx_array *out, mx_array *src, mx_array *idx, const mx__nd<3> &nd,
                     int64_t dim, int64_t astride) {
  unsigned nb = mx__cuda_blocks(out->size);
  cudaStream_t s = mx__cuda_stream();
  S *o = (S *)out->buf->dptr;
  const S *a = (const S *)mx__ddata(src);
  const char *ix = mx__ddata(idx);
  switch (idx->dtype) {
#define C(DT, TI) \
  case DT: k_gather<S, TI><<<nb, MX_CUDA_THREADS, 0, s>>>(o, (const TI *)ix, a, nd, out->size, dim, astride); break;
    C(MX_UINT8, uint8_t) C(MX_UINT32, uint32_t) C(MX_INT32, int32_t) C(MX_INT64, int64_t)
#undef C
    default:
      return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel for indices of dtype %s",
                           mx__opname(out), mx_dtype_name(idx->dtype));
  }
  return mx__cuda_launched(mx__opname(out));
}

static int run_gather(mx_array *out, mx_array *src, mx_array *idx, const int64_t *istr,
                      const int64_t *astr, int64_t dim, int64_t astride) {
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t *sp[3] = {NULL, istr, astr};
  mx__nd<3> nd = mx__nd_make<3>(out->shape, out->ndim, sp);
  switch (mx_dtype_size(out->dtype)) {
    case 1: return gather_es<uint8_t>(out, src, idx, nd, dim, astride);
    case 2: return gather_es<uint16_t>(out, src, idx, nd, dim, astride);
    case 4: return gather_es<uint32_t>(out, src, idx, nd, dim, astride);
    default: return gather_es<uint64_t>(out, src, idx, nd, dim, astride);
  }
}

/* Rows of a table (take along axis 0 of a row-contiguous array whose rows
 * are whole 16-byte vectors: an embedding lookup): a warp a row, 16-byte
 * copies, the same index wrapping and clamping as k_gather. */
template <class TI>
__global__ void k_gather_rows(uint4 *o, const TI *ix, const uint4 *a, int64_t nrows, int64_t dim,
                              int64_t nv) {
  const int lane = threadIdx.x & 31;
  const int64_t nw = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < nrows; r += nw) {
    const uint4 *src = a + norm_index((int64_t)ix[r], dim) * nv;
    uint4 *dst = o + r * nv;
    for (int64_t v = lane; v < nv; v += 32) dst[v] = __ldg(src + v);
  }
}

/* k_gather_rows when it applies (MXC_TAKE_ROWS=0: never, for A/B) */
static bool take_rows(mx_array *out, mx_array *a, mx_array *idx, int ax, int *st) {
  static int on = -1;
  if (ax != 0 || a->ndim < 1 || !a->row_contiguous || !idx->row_contiguous || a->shape[0] < 1 ||
      !mx__env_on("MXC_TAKE_ROWS", &on))
    return false;
  const int64_t rowb = (a->shape[0] ? a->size / a->shape[0] : 0) * (int64_t)mx_dtype_size(a->dtype);
  if (rowb <= 0 || rowb % 16 || ((uintptr_t)mx__ddata(a) & 15)) return false;
  if (idx->dtype != MX_INT32 && idx->dtype != MX_INT64 && idx->dtype != MX_UINT32) return false;
  if ((*st = mx__array_alloc_data(out))) return true;
  if (out->size == 0) return true;
  const int64_t nrows = idx->size, nv = rowb / 16;
  const unsigned nb = (unsigned)MX_MIN((nrows + 7) / 8, (int64_t)65535 * 8);
  cudaStream_t s = mx__cuda_stream();
  uint4 *o = (uint4 *)out->buf->dptr;
  const uint4 *ap = (const uint4 *)mx__ddata(a);
  const char *ix = mx__ddata(idx);
  if (idx->dtype == MX_INT32)
    k_gather_rows<int32_t><<<nb, 256, 0, s>>>(o, (const int32_t *)ix, ap, nrows, a->shape[0], nv);
  else if (idx->dtype == MX_INT64)
    k_gather_rows<int64_t><<<nb, 256, 0, s>>>(o, (const int64_t *)ix, ap, nrows, a->shape[0], nv);
  else
    k_gather_rows<uint32_t><<<nb, 256, 0, s>>>(o, (const uint32_t *)ix, ap, nrows, a->shape[0], nv);
  *st = mx__cuda_launched(mx__opname(out));
  return true;
}

/* out (pre, I..., post) = a (pre, A, post)[.., idx[I...], ..] */
static int k_take(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int rst = MX_OK;
  if (take_rows(out, a, idx, ax, &rst)) return rst;
  int64_t istr[MX_MAX_NDIM] = {0}, astr[MX_MAX_NDIM] = {0};
  int d = 0;
  for (int i = 0; i < ax; i++, d++) astr[d] = a->strides[i];
  for (int i = 0; i < idx->ndim; i++, d++) istr[d] = idx->strides[i];
  for (int i = ax + 1; i < a->ndim; i++, d++) astr[d] = a->strides[i];
  MX_ASSERT(d == out->ndim);
  return run_gather(out, a, idx, istr, astr, a->shape[ax], a->strides[ax]);
}

/* out[..., j, ...] = a[..., idx[..., j, ...], ...] (a, idx already broadcast) */
static int k_take_along_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int64_t astr[MX_MAX_NDIM];
  for (int i = 0; i < a->ndim; i++) astr[i] = i == ax ? 0 : a->strides[i];
  return run_gather(out, a, idx, idx->strides, astr, a->shape[ax], a->strides[ax]);
}

/* ---- random bits ---------------------------------------------------------------------- */
__device__ __forceinline__ uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

__device__ __forceinline__ void threefry(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                         uint32_t *w0, uint32_t *w1) {
  const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
  uint32_t x0 = c0 + k0, x1 = c1 + k1;
#define MIX(R) x0 += x1; x1 = rotl32(x1, R); x1 ^= x0;
#define GA MIX(13) MIX(15) MIX(26) MIX(6)
#define GB MIX(17) MIX(29) MIX(16) MIX(24)
  GA x0 += k1; x1 += k2 + 1u;
  GB x0 += k2; x1 += k0 + 2u;
  GA x0 += k0; x1 += k1 + 3u;
  GB x0 += k1; x1 += k2 + 4u;
  GA x0 += k2; x1 += k0 + 5u;
#undef GA
#undef GB
#undef MIX
  *w0 = x0;
  *w1 = x1;
}

struct rb_args {
  int mode;
  int64_t low;
  uint64_t range;
  int64_t per, h; /* words per key, pairs per key */
  int64_t nk;
  mx__nd<1> kn[2]; /* key arrays (K..., 2): element 2j + t */
  const uint32_t *kp[2];
};

template <class S>
__device__ __forceinline__ void rb_store(S *o, int64_t i, uint64_t v) {
  o[i] = (S)v;
}
template <>
__device__ __forceinline__ void rb_store<uint8_t>(uint8_t *o, int64_t i, uint64_t v) {
  o[i] = (uint8_t)v;
}

template <class S, bool IS_BOOL>
__global__ void k_random_bits(S *out, rb_args a) {
  MX_CUDA_LOOP(t, a.nk * a.h) {
    int64_t j = t / a.h, q = t % a.h;
    uint32_t k[2][2];
    int nkeys = a.mode == MX__RANDOM_RANGE64 ? 2 : 1;
    for (int key = 0; key < nkeys; key++)
      for (int e = 0; e < 2; e++) {
        int64_t off;
        mx__nd_offsets<1>(a.kn[key], 2 * j + e, &off);
        k[key][e] = a.kp[key][off];
      }
    bool full = q < a.per / 2;
    uint32_t c1 = full ? (uint32_t)(q + a.h) : 0u;
    uint32_t w0, w1, v0 = 0, v1 = 0;
    threefry(k[0][0], k[0][1], (uint32_t)q, c1, &w0, &w1);
    if (nkeys == 2) threefry(k[1][0], k[1][1], (uint32_t)q, c1, &v0, &v1);
    S *o = out + j * a.per;
    uint64_t r0 = w0, r1 = w1;
    if (a.mode != MX__RANDOM_RAW) {
      if (nkeys == 2) {
        r0 = (uint64_t)v0 << 32 | w0;
        r1 = (uint64_t)v1 << 32 | w1;
      }
      r0 = (uint64_t)a.low + r0 % a.range;
      r1 = (uint64_t)a.low + r1 % a.range;
    }
    if (IS_BOOL) {
      o[q] = (S)(r0 != 0);
      if (full) o[q + a.h] = (S)(r1 != 0);
    } else {
      rb_store<S>(o, q, r0);
      if (full) rb_store<S>(o, q + a.h, r1);
    }
  }
}

static int k_random_bits_op(mx_array *out, mx_array **in) {
  const mx__random_params *p = MX__PARAMS(out, mx__random_params);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  int64_t nk = in[0]->size / 2;
  if (out->size == 0 || nk == 0) return MX_OK;
  rb_args a;
  a.mode = p->mode;
  a.low = p->low;
  a.range = p->range ? p->range : 1;
  a.per = out->size / nk;
  a.h = (a.per + 1) / 2;
  a.nk = nk;
  int nkeys = p->mode == MX__RANDOM_RANGE64 ? 2 : 1;
  for (int key = 0; key < 2; key++) {
    mx_array *k = in[key < nkeys ? key : 0];
    const int64_t *sp[1] = {k->strides};
    a.kn[key] = mx__nd_make<1>(k->shape, k->ndim, sp);
    a.kp[key] = (const uint32_t *)mx__ddata(k);
  }
  unsigned nb = mx__cuda_blocks(nk * a.h);
  cudaStream_t s = mx__cuda_stream();
  void *o = out->buf->dptr;
  switch (out->dtype) {
    case MX_BOOL: k_random_bits<uint8_t, true><<<nb, MX_CUDA_THREADS, 0, s>>>((uint8_t *)o, a); break;
    case MX_UINT8: k_random_bits<uint8_t, false><<<nb, MX_CUDA_THREADS, 0, s>>>((uint8_t *)o, a); break;
    case MX_UINT32: k_random_bits<uint32_t, false><<<nb, MX_CUDA_THREADS, 0, s>>>((uint32_t *)o, a); break;
    case MX_INT32: k_random_bits<int32_t, false><<<nb, MX_CUDA_THREADS, 0, s>>>((int32_t *)o, a); break;
    case MX_INT64: k_random_bits<int64_t, false><<<nb, MX_CUDA_THREADS, 0, s>>>((int64_t *)o, a); break;
    default: return mx__cuda_no_dtype(out, out->dtype);
  }
  return mx__cuda_launched("random_bits");
}

void mx__cuda_register_misc(mx__kernel_fn *k) {
  k[MX_OP_TAKE] = k_take;
  k[MX_OP_TAKE_ALONG_AXIS] = k_take_along_axis;
  k[MX_OP_RANDOM_BITS] = k_random_bits_op;
}
