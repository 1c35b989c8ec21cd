/* fast.cu — CUDA kernels of rms_norm and layer_norm: one block per row
 * (..., D), f32 compute (f64 for f64) as the CPU kernel:
 *   mu = mean(x) (layer_norm; 0 for rms_norm),
 *   y  = (x - mu) / sqrt(mean((x - mu)^2) + eps) * w + b. */
#include "cuda_common.cuh"
#include "ops/fast_params.h"

/* Sum over the block (blockDim a multiple of 32, at most 32 warps): warp
 * shuffles, then the warp sums in order — a fixed order, deterministic. */
template <class C>
__device__ C block_sum(C v, C *sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  C r = 0;
  for (int i = 0; i < nw; i++) r += sh[i];
  __syncthreads();
  return r;
}

template <class T, class C>
__global__ void k_norm(const typename T::S *x, typename T::S *o, mx__nd<1> rows_nd, int64_t rows,
                       int64_t D, int64_t xs, const typename T::S *w, int64_t ws,
                       const typename T::S *b, int64_t bs, double eps, bool layer) {
  __shared__ C sh[MX_CUDA_THREADS];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t base;
    mx__nd_offsets<1>(rows_nd, row, &base);
    C mu = 0;
    if (layer) {
      C s = 0;
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += (C)T::ld(x[base + i * xs]);
      mu = block_sum<C>(s, sh) / (C)D;
    }
    C ss = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      C v = (C)T::ld(x[base + i * xs]) - mu;
      ss += v * v;
    }
    ss = block_sum<C>(ss, sh);
    C n = (C)1 / sqrt(ss / (C)D + (C)eps);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      C v = ((C)T::ld(x[base + i * xs]) - mu) * n;
      if (w) v *= (C)T::ld(w[i * ws]);
      if (b) v += (C)T::ld(b[i * bs]);
      o[row * D + i] = T::st(v);
    }
  }
}

static int norm(mx_array *out, mx_array **in, bool layer, double eps, mx_array *w, mx_array *b) {
  mx_array *x = in[0];
  if (!mx_dtype_is_float(x->dtype) || x->dtype != out->dtype) return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int nd = x->ndim;
  int64_t D = x->shape[nd - 1], rows = out->size / D;
  const int64_t *sp[1] = {x->strides};
  mx__nd<1> rnd = mx__nd_make<1>(x->shape, nd - 1, sp);
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  int64_t ws = w ? w->strides[w->ndim - 1] : 0, bs = b ? b->strides[b->ndim - 1] : 0;
  cudaStream_t s = mx__cuda_stream();
  switch (x->dtype) {
#define C(DT, TAG, CT)                                                                        \
  case DT:                                                                                    \
    k_norm<TAG, CT><<<g, MX_CUDA_THREADS, 0, s>>>(                                            \
        (const TAG::S *)mx__ddata(x), (TAG::S *)out->buf->dptr, rnd, rows, D,                 \
        x->strides[nd - 1], w ? (const TAG::S *)mx__ddata(w) : NULL, ws,                      \
        b ? (const TAG::S *)mx__ddata(b) : NULL, bs, eps, layer);                             \
    break;
    C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
    C(MX_FLOAT64, TF64, double)
#undef C
    default: return mx__cuda_no_dtype(out, x->dtype);
  }
  return mx__cuda_launched(mx__opname(out));
}

static int k_rms_norm(mx_array *out, mx_array **in) {
  const mx__rms_norm_params *p = MX__PARAMS(out, mx__rms_norm_params);
  return norm(out, in, false, p->eps, p->has_weight ? in[1] : NULL, NULL);
}

static int k_layer_norm(mx_array *out, mx_array **in) {
  const mx__layer_norm_params *p = MX__PARAMS(out, mx__layer_norm_params);
  mx_array *w = p->has_weight ? in[1] : NULL;
  mx_array *b = p->has_bias ? in[p->has_weight ? 2 : 1] : NULL;
  return norm(out, in, true, p->eps, w, b);
}

void mx__cuda_register_fast(mx__kernel_fn *k) {
  k[MX_OP_RMS_NORM] = k_rms_norm;
  k[MX_OP_LAYER_NORM] = k_layer_norm;
}
