/* norm_row.cuh — a row's RMSNorm as the vectorized CUDA kernels compute it,
 * shared by fast.cu (rms_norm, add_rms_norm) and linalg.cu
 * (add_norm_linear's prologue), so that both give the same bits. */
#pragma once
#include "cuda_common.cuh"

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

/* One 16-byte vector: V values of storage type S, as floats. */
template <class T, int V>
__device__ __forceinline__ void norm_unpack(uint4 u, float *f) {
  if constexpr (V == 8) {
    uint32_t w4[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      f[2 * k] = T::ld((uint16_t)(w4[k] & 0xffffu));
      f[2 * k + 1] = T::ld((uint16_t)(w4[k] >> 16));
    }
  } else {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
  }
}

template <class T, int V>
__device__ __forceinline__ uint4 norm_pack(const float *f) {
  if constexpr (V == 8) {
    uint32_t w4[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
      w4[k] = (uint32_t)T::st(f[2 * k]) | ((uint32_t)T::st(f[2 * k + 1]) << 16);
    return make_uint4(w4[0], w4[1], w4[2], w4[3]);
  } else {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
}

/* One row of add_rms_norm: thread t < nv owns the t-th 16-byte vector of
 * x and r (rows of D = nv * V values, 16-byte aligned) and of the weight w;
 * h = x + r rounded to the dtype, then n = h / sqrt(mean(h^2) + eps) * w
 * rounded. Every thread of the block must call it (block sums); threads
 * t >= nv get zeros. blockDim: a multiple of 32, >= nv. */
template <class T, int V>
__device__ __forceinline__ void add_norm_row(const uint4 *__restrict__ x,
                                             const uint4 *__restrict__ r,
                                             const uint4 *__restrict__ w, int nv, float eps,
                                             float *sh, uint4 *hp, uint4 *np) {
  const int t = threadIdx.x;
  const bool in = t < nv;
  const float D = (float)nv * V;
  float v[V], rv[V], wv[V];
  const uint4 z = make_uint4(0, 0, 0, 0);
  norm_unpack<T, V>(in ? __ldg(x + t) : z, v);
  norm_unpack<T, V>(in ? __ldg(r + t) : z, rv);
  norm_unpack<T, V>(in ? __ldg(w + t) : z, wv);
#pragma unroll
  for (int i = 0; i < V; i++) v[i] = v[i] + rv[i];
  *hp = norm_pack<T, V>(v); /* h in the dtype, as mx_add stores it */
  norm_unpack<T, V>(*hp, v);
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < V; i++) ss += in ? v[i] * v[i] : 0.f;
  ss = block_sum<float>(ss, sh);
  float n = 1.f / sqrtf(ss / D + eps);
#pragma unroll
  for (int i = 0; i < V; i++) {
    v[i] *= n;
    v[i] *= wv[i];
  }
  *np = norm_pack<T, V>(v);
}

/* One row of add_norm_linear's strided fallbacks (any float dtype, rows
 * of any length): h = x + r rounded to the dtype (written to hout when
 * not NULL), then nrow = rms_norm(h) * w (stride ws) rounded, in the
 * compute type C, in shared memory. Every thread of the block calls it;
 * nrow is complete on return. sh: 32 values of C. */
template <class T>
__device__ __forceinline__ void add_norm_row_any(const typename T::S *__restrict__ x,
                                                 const typename T::S *__restrict__ r,
                                                 const typename T::S *__restrict__ w, int64_t ws,
                                                 int64_t D, double eps, typename T::S *hout,
                                                 typename T::C *nrow, typename T::C *sh) {
  typedef typename T::C X;
  X ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const typename T::S h = T::st(T::ld(x[i]) + T::ld(r[i]));
    if (hout) hout[i] = h;
    const X v = T::ld(h);
    nrow[i] = v;
    ss += v * v;
  }
  ss = block_sum<X>(ss, sh);
  const X nn = (X)1 / sqrt(ss / (X)D + (X)eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    nrow[i] = T::ld(T::st(nrow[i] * nn * T::ld(w[i * ws])));
  __syncthreads();
}
