/* fast.cu — CUDA kernels of rms_norm and layer_norm: one block per row
 * (..., D), f32 compute (f64 for f64) as the CPU kernel:
 *   mu = mean(x) (layer_norm; 0 for rms_norm),
 *   y  = (x - mu) / sqrt(mean((x - mu)^2) + eps) * w + b.
 *
 * Rows of f16/bf16/f32 that are contiguous, 16-byte aligned and at most
 * 1024 16-byte vectors long (8192 half values) take k_norm_vec: each thread
 * loads its vector of x (and of w and b) once, keeps it in registers over
 * the block sums, and stores 16 bytes — one pass over the row, every load
 * in flight at once. A decode step's norm (one row of 2048) was ~10 us with
 * the general kernel's dependent 2-byte loads, mostly DRAM latency. Many
 * rows of at most 128 vectors take k_norm_vec_warp (a warp a row, the same
 * bits). */
#include "cuda_common.cuh"
#include "norm_row.cuh"
#include "ops/fast_params.h"

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

/* Row `blockIdx.x` of contiguous rows of D = nv * V values; thread t owns
 * vector t (blockDim >= nv, a multiple of 32). */
template <class T, int V>
__global__ void __launch_bounds__(1024)
    k_norm_vec(const uint4 *__restrict__ x, uint4 *__restrict__ o, int nv, int64_t rows,
               const uint4 *__restrict__ w, const uint4 *__restrict__ b, float eps, bool layer) {
  __shared__ float sh[32];
  const int t = threadIdx.x;
  const bool on = t < nv;
  const float D = (float)nv * V;
  MX_PDL_ENTRY();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    float v[V], wv[V], bv[V];
    uint4 ux = on ? __ldg(x + row * nv + t) : make_uint4(0, 0, 0, 0);
    uint4 uw = on && w ? __ldg(w + t) : make_uint4(0, 0, 0, 0);
    uint4 ub = on && b ? __ldg(b + t) : make_uint4(0, 0, 0, 0);
    norm_unpack<T, V>(ux, v);
    norm_unpack<T, V>(uw, wv);
    norm_unpack<T, V>(ub, bv);
    float mu = 0.f;
    if (layer) {
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < V; i++) s += v[i];
      mu = block_sum<float>(s, sh) / D;
    }
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < V; i++) {
      v[i] -= mu;
      ss += on ? v[i] * v[i] : 0.f;
    }
    ss = block_sum<float>(ss, sh);
    float n = 1.f / sqrtf(ss / D + eps);
#pragma unroll
    for (int i = 0; i < V; i++) {
      v[i] *= n;
      if (w) v[i] *= wv[i];
      if (b) v[i] += bv[i];
    }
    if (on) o[row * nv + t] = norm_pack<T, V>(v);
  }
}

/* k_norm_vec for rows of at most 128 vectors (NV a lane): one warp a row,
 * 8 rows a block, no barriers. Lane l holds vectors l + 32 k, the ones
 * thread 32 k + l holds in k_norm_vec; each k's lane sums go through the
 * same butterfly as that kernel's warp k and the NV results are added in
 * order from 0, as block_sum adds its warps: the same bits. A block a row
 * of 96 threads (D = 768) kept ~32 KB in flight an SM and waited at two
 * barriers a row. */
template <class T, int V, int NV>
__global__ void __launch_bounds__(256)
    k_norm_vec_warp(const uint4 *__restrict__ x, uint4 *__restrict__ o, int nv, int64_t rows,
                    const uint4 *__restrict__ w, const uint4 *__restrict__ b, float eps,
                    bool layer) {
  const int lane = threadIdx.x & 31;
  const float D = (float)nv * V;
  MX_PDL_ENTRY();
  for (int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5); row < rows;
       row += (int64_t)gridDim.x * 8) {
    float v[NV][V];
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      norm_unpack<T, V>(i < nv ? __ldg(x + row * nv + i) : make_uint4(0, 0, 0, 0), v[k]);
    }
    float mu = 0.f;
    if (layer) {
      float tot = 0.f;
#pragma unroll
      for (int k = 0; k < NV; k++) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < V; i++) s += v[k][i];
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o2);
        tot += s;
      }
      mu = tot / D;
    }
    float tot = 0.f;
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const bool on = lane + 32 * k < nv;
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < V; i++) {
        v[k][i] -= mu;
        ss += on ? v[k][i] * v[k][i] : 0.f;
      }
#pragma unroll
      for (int o2 = 16; o2 > 0; o2 >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o2);
      tot += ss;
    }
    const float n = 1.f / sqrtf(tot / D + eps);
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      if (i >= nv) continue;
      float wv[V], bv[V];
      norm_unpack<T, V>(w ? __ldg(w + i) : make_uint4(0, 0, 0, 0), wv);
      norm_unpack<T, V>(b ? __ldg(b + i) : make_uint4(0, 0, 0, 0), bv);
#pragma unroll
      for (int j = 0; j < V; j++) {
        v[k][j] *= n;
        if (w) v[k][j] *= wv[j];
        if (b) v[k][j] += bv[j];
      }
      o[row * nv + i] = norm_pack<T, V>(v[k]);
    }
  }
}

/* MXC_NORM_WARP=0: rows of up to 128 vectors a block each (k_norm_vec),
 * for A/B */
static bool norm_warp_on(void) {
  static int on = -1;
  return mx__env_on("MXC_NORM_WARP", &on);
}

/* The vectorized case, or false. */
static bool norm_vec(mx_array *out, mx_array *x, bool layer, double eps, mx_array *w,
                     mx_array *b, int64_t D, int64_t rows, int *st) {
  mx_dtype dt = x->dtype;
  if (dt != MX_FLOAT16 && dt != MX_BFLOAT16 && dt != MX_FLOAT32) return false;
  int es = (int)mx_dtype_size(dt), V = 16 / es;
  if (D % V || D / V > 1024 || !x->row_contiguous || ((uintptr_t)mx__ddata(x) & 15))
    return false;
  mx_array *wb[2] = {w, b};
  for (int i = 0; i < 2; i++)
    if (wb[i] && (wb[i]->dtype != dt || wb[i]->strides[wb[i]->ndim - 1] != 1 ||
                  ((uintptr_t)mx__ddata(wb[i]) & 15)))
      return false;
  int nv = (int)(D / V), threads = (nv + 31) / 32 * 32;
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  const uint4 *xp = (const uint4 *)mx__ddata(x);
  uint4 *op = (uint4 *)out->buf->dptr;
  const uint4 *wp = w ? (const uint4 *)mx__ddata(w) : NULL, *bp = b ? (const uint4 *)mx__ddata(b) : NULL;
  if (nv <= 128 && rows > 1 && norm_warp_on()) {
    const unsigned gw = (unsigned)MX_MIN((rows + 7) / 8, (int64_t)65535 * 8);
#define NW(TAG, VV, K)                                                                        \
  mx__cuda_launch_pdl(k_norm_vec_warp<TAG, VV, K>, dim3(gw), dim3(256), 0, xp, op, nv, rows, wp, \
                      bp, (float)eps, layer)
#define NWD(TAG, VV)                                                                         \
  switch ((nv + 31) / 32) {                                                                  \
    case 1: NW(TAG, VV, 1); break;                                                           \
    case 2: NW(TAG, VV, 2); break;                                                           \
    case 3: NW(TAG, VV, 3); break;                                                           \
    default: NW(TAG, VV, 4); break;                                                          \
  }
    if (dt == MX_FLOAT16) NWD(TF16, 8)
    else if (dt == MX_BFLOAT16) NWD(TBF16, 8)
    else NWD(TF32, 4)
#undef NWD
#undef NW
    *st = mx__cuda_launched(mx__opname(out));
    return true;
  }
  if (dt == MX_FLOAT16)
    mx__cuda_launch_pdl(k_norm_vec<TF16, 8>, g, threads, 0, xp, op, nv, rows, wp, bp, (float)eps, layer);
  else if (dt == MX_BFLOAT16)
    mx__cuda_launch_pdl(k_norm_vec<TBF16, 8>, g, threads, 0, xp, op, nv, rows, wp, bp, (float)eps, layer);
  else
    mx__cuda_launch_pdl(k_norm_vec<TF32, 4>, g, threads, 0, xp, op, nv, rows, wp, bp, (float)eps, layer);
  *st = mx__cuda_launched(mx__opname(out));
  return true;
}

static int norm(mx_array *out, mx_array **in, bool layer, double eps, mx_array *w, mx_array *b) {
  mx_array *x = in[0];
  if (!mx_dtype_is_float(x->dtype) || x->dtype != out->dtype) return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int nd = x->ndim;
  int64_t D = x->shape[nd - 1], rows = out->size / D;
  if (norm_vec(out, x, layer, eps, w, b, D, rows, &st)) return st;
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

/* ---- rms_norm_backward (src/ops/fast_params.h): one block per row --------------------- */
template <class T, class C, class TO>
__global__ void k_rms_grad(const typename T::S *x, const typename T::S *g,
                           const typename T::S *w, typename TO::S *o, mx__nd<2> rnd,
                           int64_t rows, int64_t D, int64_t xs, int64_t gs, int64_t ws, C eps,
                           int which) {
  __shared__ C sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const typename T::S *xr = x + off[0], *gr = g + off[1];
    C ss = 0, m = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      C xi = (C)T::ld(xr[i * xs]), gi = (C)T::ld(gr[i * gs]);
      if (w) gi *= (C)T::ld(w[i * ws]);
      ss += xi * xi;
      m += gi * xi;
    }
    ss = block_sum<C>(ss, sh);
    m = block_sum<C>(m, sh) / (C)D;
    C n = (C)1 / sqrt(ss / (C)D + eps);
    C n3m = n * n * n * m;
    typename TO::S *orow = o + r * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      C xi = (C)T::ld(xr[i * xs]), gi = (C)T::ld(gr[i * gs]);
      if (which == 1) {
        orow[i] = TO::st(gi * xi * n);
      } else {
        if (w) gi *= (C)T::ld(w[i * ws]);
        orow[i] = TO::st(n * gi - xi * n3m);
      }
    }
  }
}

/* Rows of up to 1024 values: one warp a row (8 rows a block), shuffles only
 * — a block a row spent most of its time in barriers for D = 768. */
template <class T, class C, class TO>
__global__ void __launch_bounds__(256)
    k_rms_grad_warp(const typename T::S *x, const typename T::S *g, const typename T::S *w,
                    typename TO::S *o, mx__nd<2> rnd, int64_t rows, int64_t D, int64_t xs,
                    int64_t gs, int64_t ws, C eps, int which) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const typename T::S *xr = x + off[0], *gr = g + off[1];
    C ss = 0, m = 0;
    for (int64_t i = lane; i < D; i += 32) {
      C xi = (C)T::ld(xr[i * xs]), gi = (C)T::ld(gr[i * gs]);
      if (w) gi *= (C)T::ld(w[i * ws]);
      ss += xi * xi;
      m += gi * xi;
    }
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, o2);
      m += __shfl_xor_sync(0xffffffffu, m, o2);
    }
    m /= (C)D;
    C n = (C)1 / sqrt(ss / (C)D + eps);
    C n3m = n * n * n * m;
    typename TO::S *orow = o + r * D;
    for (int64_t i = lane; i < D; i += 32) {
      C xi = (C)T::ld(xr[i * xs]), gi = (C)T::ld(gr[i * gs]);
      if (which == 1) {
        orow[i] = TO::st(gi * xi * n);
      } else {
        if (w) gi *= (C)T::ld(w[i * ws]);
        orow[i] = TO::st(n * gi - xi * n3m);
      }
    }
  }
}

/* Whether a's rows can be read as 16-byte vectors of V values: a
 * contiguous last axis of a multiple of V values, element 0 aligned, and
 * every leading stride a multiple of V. */
static bool rows_vec_ok(const mx_array *a, int V) {
  const int nd = a->ndim;
  const int64_t D = a->shape[nd - 1];
  if (D % V || (D > 1 && a->strides[nd - 1] != 1) || ((uintptr_t)mx__ddata(a) & 15)) return false;
  for (int d = 0; d < nd - 1; d++)
    if (a->shape[d] > 1 && a->strides[d] % V) return false;
  return true;
}

/* which 0 for rows of up to 128 16-byte vectors (D <= 1024 for 16-bit
 * types, 512 for float32) read as vectors: a warp a row, each lane keeping
 * its NV packed vectors of x and g in registers between the two passes —
 * one read of each from memory. The same arithmetic as k_rms_grad_warp,
 * summed in another order. */
template <class T, int V, int NV, bool DW = false>
__global__ void __launch_bounds__(256, NV <= 3 ? 3 : 2) /* 3: 80 registers, no spills */
    k_rms_grad_vec(const typename T::S *x, const typename T::S *g, const uint4 *__restrict__ w,
                   uint4 *__restrict__ o, mx__nd<2> rnd, int64_t rows, int nv, float eps,
                   const uint4 *__restrict__ res, float *__restrict__ part = nullptr) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float D = (float)nv * V;
  /* DW (the packed form): each lane also adds g x n of its columns over
   * the warp's rows, in the warp's row of shared memory (dynamic, 8 x D
   * floats, value j of vector i at j nv + i: no bank conflicts) rather
   * than in registers (96 -> fewer a thread: more warps an SM); the
   * block's 8 warps are added in order into its partial row (part,
   * gridDim.x x D), summed over blocks by k_rms_dw_sum */
  extern __shared__ float red[];
  float *acc = red + (DW ? warp * nv * V : 0);
  if constexpr (DW) {
    for (int c = lane; c < nv * V; c += 32) acc[c] = 0.f;
  }
  MX_PDL_ENTRY();
  for (int64_t r = (int64_t)blockIdx.x * 8 + warp; r < rows; r += (int64_t)gridDim.x * 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const uint4 *xr = (const uint4 *)(x + off[0]), *gr = (const uint4 *)(g + off[1]);
    uint4 xv[NV], gv[NV], rv[NV];
    /* every load of the row in flight at once, the residual's too */
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      if (i < nv) {
        xv[k] = __ldg(xr + i), gv[k] = __ldg(gr + i);
        if (res) rv[k] = __ldg(res + r * nv + i);
      }
    }
    float ss = 0.f, m = 0.f;
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      if (i < nv) {
        float a[V], b[V], c[V];
        norm_unpack<T, V>(xv[k], a);
        norm_unpack<T, V>(gv[k], b);
        if (w) norm_unpack<T, V>(__ldg(w + i), c);
#pragma unroll
        for (int j = 0; j < V; j++) {
          const float gj = w ? b[j] * c[j] : b[j];
          ss += a[j] * a[j];
          m += gj * a[j];
        }
      }
    }
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, o2);
      m += __shfl_xor_sync(0xffffffffu, m, o2);
    }
    m /= D;
    const float n = 1.f / sqrtf(ss / D + eps), n3m = n * n * n * m;
    uint4 *orow = o + r * nv;
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      if (i < nv) {
        float a[V], b[V], c[V];
        norm_unpack<T, V>(xv[k], a);
        norm_unpack<T, V>(gv[k], b);
        if (w) norm_unpack<T, V>(__ldg(w + i), c);
#pragma unroll
        for (int j = 0; j < V; j++) {
          if constexpr (DW) acc[j * nv + i] += b[j] * a[j] * n;
          const float gj = w ? b[j] * c[j] : b[j];
          b[j] = n * gj - a[j] * n3m;
        }
        if (res) { /* the residual's gradient, added before the one rounding */
          norm_unpack<T, V>(rv[k], c);
#pragma unroll
          for (int j = 0; j < V; j++) b[j] += c[j];
        }
        orow[i] = norm_pack<T, V>(b);
      }
    }
  }
  if constexpr (DW) {
    const int W = nv * V;
    __syncthreads();
    for (int c = threadIdx.x; c < W; c += 256) {
      const int sc = (c % V) * nv + c / V; /* column c = i V + j */
      float t = red[sc];
#pragma unroll
      for (int q = 1; q < 8; q++) t += red[q * W + sc];
      part[(int64_t)blockIdx.x * W + c] = t;
    }
  }
}

/* k_rms_rown for rows read as 16-byte vectors (up to 4 a lane, all in
 * flight) */
template <class T, int V>
__global__ void __launch_bounds__(256)
    k_rms_rown_vec(const typename T::S *x, mx__nd<2> rnd, int64_t rows, int nv, float eps,
                   float *nout) {
  const int lane = threadIdx.x & 31;
  MX_PDL_ENTRY();
  for (int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const uint4 *xr = (const uint4 *)(x + off[0]);
    float ss = 0.f;
#pragma unroll 4
    for (int i = lane; i < nv; i += 32) {
      float a[V];
      norm_unpack<T, V>(__ldg(xr + i), a);
#pragma unroll
      for (int j = 0; j < V; j++) ss += a[j] * a[j];
    }
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o2);
    if (lane == 0) nout[r] = 1.f / sqrtf(ss / ((float)nv * V) + eps);
  }
}

/* k_rms_dw_part for rows read as 16-byte vectors: a thread a vector of V
 * columns, four rows in flight. */
template <class T, int V>
__global__ void __launch_bounds__(128)
    k_rms_dw_part_vec(const typename T::S *x, const typename T::S *g, mx__nd<2> rnd,
                      int64_t rows, int nv, const float *n, int64_t chunk, float *part) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  MX_PDL_ENTRY();
  if (i >= nv) return;
  const int64_t r0 = k * chunk, r1 = rows < (k + 1) * chunk ? rows : (k + 1) * chunk;
  float acc[V];
#pragma unroll
  for (int j = 0; j < V; j++) acc[j] = 0.f;
#pragma unroll 4
  for (int64_t r = r0; r < r1; r++) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    float a[V], b[V];
    norm_unpack<T, V>(__ldg((const uint4 *)(x + off[0]) + i), a);
    norm_unpack<T, V>(__ldg((const uint4 *)(g + off[1]) + i), b);
    const float nr = __ldg(n + r);
#pragma unroll
    for (int j = 0; j < V; j++) acc[j] += b[j] * a[j] * nr;
  }
  float *pk = part + k * (int64_t)nv * V + (int64_t)i * V;
#pragma unroll
  for (int j = 0; j < V; j++) pk[j] = acc[j];
}

/* k_rms_rown_vec and k_rms_dw_part_vec in one pass, for rows of up to 128
 * vectors (D <= 1024 16-bit values): block k takes the chunk k of rows, a
 * warp a row at a time (rows r0 + w, r0 + w + 8, ...), each lane keeping
 * its NV vectors of x and g in registers to compute the row's n and then
 * add g x n into its columns' sums; the 8 warps' sums are added in warp
 * order into the chunk's partial. x and g are read once (the two kernels
 * read x twice), and there is one launch fewer. Deterministic. */
template <class T, int V, int NV>
__global__ void __launch_bounds__(256)
    k_rms_dw_fused_vec(const typename T::S *x, const typename T::S *g, mx__nd<2> rnd,
                       int64_t rows, int nv, float eps, int64_t chunk, float *part) {
  __shared__ float red[8 * 1024];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = (int64_t)blockIdx.x * chunk, r1 = rows < r0 + chunk ? rows : r0 + chunk;
  const int W = nv * V;
  const float D = (float)W;
  float acc[NV][V];
#pragma unroll
  for (int k = 0; k < NV; k++)
#pragma unroll
    for (int j = 0; j < V; j++) acc[k][j] = 0.f;
  MX_PDL_ENTRY();
  for (int64_t r = r0 + warp; r < r1; r += 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const uint4 *xr = (const uint4 *)(x + off[0]), *gr = (const uint4 *)(g + off[1]);
    uint4 xv[NV], gv[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int i = lane + 32 * k;
      xv[k] = gv[k] = make_uint4(0, 0, 0, 0);
      if (i < nv) xv[k] = __ldg(xr + i), gv[k] = __ldg(gr + i);
    }
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < NV; k++) {
      if (lane + 32 * k < nv) {
        float a[V];
        norm_unpack<T, V>(xv[k], a);
#pragma unroll
        for (int j = 0; j < V; j++) ss += a[j] * a[j];
      }
    }
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o2);
    const float n = 1.f / sqrtf(ss / D + eps);
#pragma unroll
    for (int k = 0; k < NV; k++) {
      if (lane + 32 * k < nv) {
        float a[V], b[V];
        norm_unpack<T, V>(xv[k], a);
        norm_unpack<T, V>(gv[k], b);
#pragma unroll
        for (int j = 0; j < V; j++) acc[k][j] += b[j] * a[j] * n;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const int i = lane + 32 * k;
    if (i < nv) {
#pragma unroll
      for (int j = 0; j < V; j++) red[warp * W + i * V + j] = acc[k][j];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < W; c += 256) {
    float t = red[c];
#pragma unroll
    for (int w = 1; w < 8; w++) t += red[w * W + c];
    part[(int64_t)blockIdx.x * W + c] = t;
  }
}

/* MXC_RMS_DW_FUSED=0: the row norms and the partial sums in two kernels (A/B) */
static bool rms_dw_fused_on(void) {
  static int on = -1;
  return mx__env_on("MXC_RMS_DW_FUSED", &on);
}

/* which 2, the weight gradient sum(g x n) over the rows: each row's n (one
 * warp a row), then per fixed chunk of rows each column's partial sum (a
 * thread a column: coalesced across the row), then the chunks added in
 * order for each column — deterministic. */
template <class T, class C>
__global__ void k_rms_rown(const typename T::S *x, mx__nd<2> rnd, int64_t rows, int64_t D,
                           int64_t xs, C eps, C *nout) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const typename T::S *xr = x + off[0];
    C ss = 0;
    for (int64_t i = lane; i < D; i += 32) {
      C xi = (C)T::ld(xr[i * xs]);
      ss += xi * xi;
    }
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o2);
    if (lane == 0) nout[r] = (C)1 / sqrt(ss / (C)D + eps);
  }
}

template <class T, class C>
__global__ void k_rms_dw_part(const typename T::S *x, const typename T::S *g, mx__nd<2> rnd,
                              int64_t rows, int64_t D, int64_t xs, int64_t gs, const C *n,
                              int64_t chunk, C *part) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (i >= D) return;
  const int64_t r1 = rows < (k + 1) * chunk ? rows : (k + 1) * chunk;
  C acc = 0;
  for (int64_t r = k * chunk; r < r1; r++) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    acc += (C)T::ld(g[off[1] + i * gs]) * (C)T::ld(x[off[0] + i * xs]) * n[r];
  }
  part[k * D + i] = acc;
}

/* The chunks' partial sums added: a block of 256 threads takes 32
 * columns, lane l of warp w adds chunks w, w + 8, ... of column l (eight
 * independent chains of loads instead of one; 32 consecutive columns a
 * load), then the 8 sums are added in warp order — a fixed order,
 * deterministic. */
template <class C, class TO>
__global__ void __launch_bounds__(256)
    k_rms_dw_sum(const C *part, int64_t nk, int64_t D, typename TO::S *out) {
  __shared__ C red[8][33];
  const int l = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t i = (int64_t)blockIdx.x * 32 + l;
  C t = 0;
  if (i < D) {
#pragma unroll 4
    for (int64_t k = w; k < nk; k += 8) t += part[k * D + i];
  }
  red[w][l] = t;
  __syncthreads();
  if (w == 0 && i < D) {
    C r = red[0][l];
#pragma unroll
    for (int j = 1; j < 8; j++) r += red[j][l];
    out[i] = TO::st(r);
  }
}

template <class T>
static void rms_dw_part_vec(dim3 grid, cudaStream_t s, const mx_array *x, const mx_array *g,
                            mx__nd<2> rnd, int64_t rows, int nv, typename T::C *n,
                            int64_t chunk, typename T::C *part, double eps) {
  if constexpr (sizeof(typename T::C) == sizeof(float)) {
    constexpr int V = sizeof(typename T::S) == 2 ? 8 : 4;
    if (nv <= 128 && rms_dw_fused_on()) {
      const typename T::S *xp = (const typename T::S *)mx__ddata(x),
                          *gp = (const typename T::S *)mx__ddata(g);
      const float e = (float)eps;
      const unsigned nk = grid.y;
      if (nv <= 32)
        mx__cuda_launch_pdl(k_rms_dw_fused_vec<T, V, 1>, nk, 256, 0, xp, gp, rnd, rows, nv, e,
                            chunk, part);
      else if (nv <= 64)
        mx__cuda_launch_pdl(k_rms_dw_fused_vec<T, V, 2>, nk, 256, 0, xp, gp, rnd, rows, nv, e,
                            chunk, part);
      else if (nv <= 96)
        mx__cuda_launch_pdl(k_rms_dw_fused_vec<T, V, 3>, nk, 256, 0, xp, gp, rnd, rows, nv, e,
                            chunk, part);
      else
        mx__cuda_launch_pdl(k_rms_dw_fused_vec<T, V, 4>, nk, 256, 0, xp, gp, rnd, rows, nv, e,
                            chunk, part);
      return;
    }
    const unsigned gw = (unsigned)MX_MIN((rows + 7) / 8, (int64_t)65535 * 8);
    k_rms_rown_vec<T, sizeof(typename T::S) == 2 ? 8 : 4><<<gw, 256, 0, s>>>(
        (const typename T::S *)mx__ddata(x), rnd, rows, nv, (float)eps, n);
    k_rms_dw_part_vec<T, sizeof(typename T::S) == 2 ? 8 : 4><<<grid, 128, 0, s>>>(
        (const typename T::S *)mx__ddata(x), (const typename T::S *)mx__ddata(g), rnd, rows, nv,
        n, chunk, part);
  }
}

/* dw (D values of the compute type) at dst */
/* k_rms_dw_sum into dst of dtype odt: the compute type, or (float32
 * sums) a 16-bit dtype */
static void rms_dw_sum_to(const double *part, int64_t nk, int64_t D, void *dst, mx_dtype odt,
                          cudaStream_t s) {
  (void)odt;
  k_rms_dw_sum<double, TF64><<<(unsigned)((D + 31) / 32), 256, 0, s>>>(part, nk, D,
                                                                        (double *)dst);
}
static void rms_dw_sum_to(const float *part, int64_t nk, int64_t D, void *dst, mx_dtype odt,
                          cudaStream_t s) {
  const unsigned gs = (unsigned)((D + 31) / 32);
  if (odt == MX_BFLOAT16)
    k_rms_dw_sum<float, TBF16><<<gs, 256, 0, s>>>(part, nk, D, (TBF16::S *)dst);
  else if (odt == MX_FLOAT16)
    k_rms_dw_sum<float, TF16><<<gs, 256, 0, s>>>(part, nk, D, (TF16::S *)dst);
  else
    k_rms_dw_sum<float, TF32><<<gs, 256, 0, s>>>(part, nk, D, (float *)dst);
}

/* dw (D values) at dst in odt: the compute type, or a 16-bit dtype (the
 * float32 sums rounded once) */
static int rms_dw(void *dst, mx_dtype odt, int64_t D, mx_array *x, mx_array *g, double eps) {
  const int nd = x->ndim;
  const int64_t rows = x->size / D;
  const int64_t chunk = MX_MAX(32, (rows + 1023) / 1024), nk = (rows + chunk - 1) / chunk;
  const bool f64 = x->dtype == MX_FLOAT64;
  const size_t cs = f64 ? sizeof(double) : sizeof(float);
  if (rows == 0)
    return mx__cuda_check(cudaMemsetAsync(dst, 0, (size_t)D * mx_dtype_size(odt),
                                          mx__cuda_stream()),
                          "rms_norm_backward");
  mx__buffer *tb = mx__cuda_tmp(cs * (size_t)(rows + nk * D));
  if (!tb) return mx_last_status();
  int64_t xst[MX_MAX_NDIM], gst[MX_MAX_NDIM];
  for (int d = 0; d < nd; d++) xst[d] = x->strides[d], gst[d] = g->strides[d];
  const int64_t *sp[2] = {xst, gst};
  mx__nd<2> rnd = mx__nd_make<2>(x->shape, nd - 1, sp);
  cudaStream_t s = mx__cuda_stream();
  unsigned gw = (unsigned)MX_MIN((rows + 7) / 8, (int64_t)65535 * 8);
  dim3 gp((unsigned)((D + 255) / 256), (unsigned)nk);
  /* 16-bit or float32 rows read as 16-byte vectors (V values) */
  const int V = x->dtype == MX_FLOAT32 ? 4 : 8;
  const bool vec = x->dtype != MX_FLOAT64 && rows_vec_ok(x, V) && rows_vec_ok(g, V);
  dim3 gv((unsigned)((D / V + 127) / 128), (unsigned)nk);
  int st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_FLOAT(x->dtype, {
    typedef T::C CT;
    CT *nb = (CT *)tb->dptr, *part = nb + rows;
    if (vec) {
      rms_dw_part_vec<T>(gv, s, x, g, rnd, rows, (int)(D / V), nb, chunk, part, eps);
    } else {
      k_rms_rown<T, CT><<<gw, 256, 0, s>>>((const T::S *)mx__ddata(x), rnd, rows, D,
                                           x->strides[nd - 1], (CT)eps, nb);
      k_rms_dw_part<T, CT><<<gp, 256, 0, s>>>((const T::S *)mx__ddata(x),
                                              (const T::S *)mx__ddata(g), rnd, rows, D,
                                              x->strides[nd - 1], g->strides[nd - 1], nb, chunk,
                                              part);
    }
    rms_dw_sum_to(part, nk, D, dst, odt, s);
    st = mx__cuda_launched("rms_norm_backward");
  })
  mx__buffer_release(tb); /* reused only by later work of the stream */
  return st == MX_ERR_NO_KERNEL
             ? mx__set_error(MX_ERR_NO_KERNEL, "rms_norm_backward: no CUDA kernel for dtype %s",
                             mx_dtype_name(x->dtype))
             : st;
}

/* o += r elementwise (both contiguous, n values): the residual of
 * rms_norm_backward on the paths whose kernel does not add it */
template <class T>
__global__ void k_add_inplace(typename T::S *o, const typename T::S *r, int64_t n) {
  MX_CUDA_LOOP(i, n) o[i] = T::st((typename T::C)T::ld(o[i]) + (typename T::C)T::ld(r[i]));
}

static int rms_grad_rows(mx_array *out, mx_array **in, const mx__rms_norm_grad_params *p,
                         const void *res);

/* which 3's partial sums of dw behind dx: one row of D floats for each
 * block of its (fixed: deterministic) grid, from a 256-byte aligned
 * offset after dx */
/* At most 396 blocks: one wave of 3 blocks on each of an H100's or
 * H200's 132 SMs (training's 32,768 rows: 1,024 blocks ran in 2.6 waves,
 * 4,096 were 2% slower in training, 396 0.4% faster). A constant, not the
 * card's count, so that dw's order of sums is the same on every card.
 * MXC_RMS_BWD_BLOCKS=n sets another cap, for experiments. */
static unsigned rms_tail_blocks(int64_t rows) {
  static int cap = -1;
  int c = __atomic_load_n(&cap, __ATOMIC_RELAXED);
  if (c < 0) {
    const char *e = getenv("MXC_RMS_BWD_BLOCKS");
    c = e && atoi(e) > 0 ? atoi(e) : 396;
    __atomic_store_n(&cap, c, __ATOMIC_RELAXED);
  }
  return (unsigned)MX_MAX((int64_t)1, MX_MIN((rows + 7) / 8, (int64_t)c));
}
static size_t rms_tail_offset(const mx_array *dx) {
  return ((size_t)dx->size * mx_dtype_size(dx->dtype) + 255) & ~(size_t)255;
}
/* the partial sums a which-3 array left (NULL: none) */
static const float *rms_tail(const mx_array *dx, int64_t rows, int64_t D) {
  if (!dx->buf || !dx->buf->dptr || dx->offset != 0 || dx->dtype == MX_FLOAT64) return NULL;
  const size_t need = rms_tail_offset(dx) + sizeof(float) * rms_tail_blocks(rows) * (size_t)D;
  return dx->buf->size >= need ? (const float *)((const char *)dx->buf->dptr + rms_tail_offset(dx))
                               : NULL;
}

static int k_rms_norm_grad(mx_array *out, mx_array **in) {
  const mx__rms_norm_grad_params *p = MX__PARAMS(out, mx__rms_norm_grad_params);
  mx_array *x = in[0], *g = in[1], *w = p->has_weight ? in[2] : NULL;
  mx_array *rr = (p->which == 0 || p->which == 3) && p->has_resid ? in[p->has_weight ? 3 : 2]
                                                                    : NULL;
  mx_dtype dt = x->dtype;
  if (!mx_dtype_is_float(dt) || g->dtype != dt || (w && w->dtype != dt) || (rr && rr->dtype != dt))
    return mx__cuda_no_dtype(out, g->dtype);
  /* which 3 allocates in rms_grad_rows (room for the partial sums) */
  int st = p->which == 3 && out->size > 0 ? MX_OK : mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  if (p->which == 4) { /* the partial sums which 3 left, else from x and g */
    const int64_t D = out->size, rows = x->size / D;
    const float *part = rms_tail(in[2], rows, D);
    const unsigned gs = (unsigned)((D + 31) / 32), nb = rms_tail_blocks(rows);
    cudaStream_t s = mx__cuda_stream();
    if (part && out->dtype == MX_FLOAT32) {
      k_rms_dw_sum<float, TF32><<<gs, 256, 0, s>>>(part, nb, D, (float *)out->buf->dptr);
      return mx__cuda_launched(mx__opname(out));
    }
    if (part && out->dtype == MX_BFLOAT16) {
      k_rms_dw_sum<float, TBF16><<<gs, 256, 0, s>>>(part, nb, D, (TBF16::S *)out->buf->dptr);
      return mx__cuda_launched(mx__opname(out));
    }
    if (part && out->dtype == MX_FLOAT16) {
      k_rms_dw_sum<float, TF16><<<gs, 256, 0, s>>>(part, nb, D, (TF16::S *)out->buf->dptr);
      return mx__cuda_launched(mx__opname(out));
    }
  }
  if (p->which == 2 || p->which == 4)
    return rms_dw(out->buf->dptr, out->dtype, out->size, x, g, p->eps);
  if (!rr) return rms_grad_rows(out, in, p, NULL);
  /* the residual, row-contiguous like the output */
  mx__buffer *tb = NULL;
  const void *res = mx__ddata(rr);
  if (!rr->row_contiguous) {
    if (!(tb = mx__cuda_tmp(mx_dtype_size(dt) * (size_t)rr->size))) return mx_last_status();
    if ((st = mx__cuda_copy_to_contiguous(rr, tb->dptr))) {
      mx__buffer_release(tb);
      return st;
    }
    res = tb->dptr;
  }
  st = rms_grad_rows(out, in, p, res);
  if (tb) mx__buffer_release(tb); /* reused only by later work of the stream */
  return st;
}

/* which 0 / 1 over rows; res (which 0, contiguous, or NULL) added to dx:
 * in the vector kernel before its rounding, else by a second pass */
static int rms_grad_rows(mx_array *out, mx_array **in, const mx__rms_norm_grad_params *p,
                         const void *res) {
  mx_array *x = in[0], *g = in[1], *w = p->has_weight ? in[2] : NULL;
  mx_dtype dt = x->dtype;
  int nd = x->ndim;
  int64_t D = x->shape[nd - 1], rows = x->size / D;
  int64_t xst[MX_MAX_NDIM], gst[MX_MAX_NDIM];
  for (int d = 0; d < nd; d++) xst[d] = x->strides[d], gst[d] = g->strides[d];
  const int64_t *sp[2] = {xst, gst};
  mx__nd<2> rnd = mx__nd_make<2>(x->shape, nd - 1, sp);
  unsigned gr = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  int64_t ws = w ? w->strides[w->ndim - 1] : 0;
  cudaStream_t s = mx__cuda_stream();
  /* which 3: which 0, and dw's partial sums behind dx on the vector path */
  const bool packed = p->which == 3;
  const int which = packed ? 0 : p->which;
  const bool warp = D <= 1024;
  const unsigned gw = (unsigned)MX_MIN((rows + 7) / 8, (int64_t)65535 * 8);
  const int V = dt == MX_FLOAT32 ? 4 : 8;
  if (which == 0 && dt != MX_FLOAT64 && D <= 128 * V && rows_vec_ok(x, V) && rows_vec_ok(g, V) &&
      (!w || (w->ndim == 1 && rows_vec_ok(w, V))) && !((uintptr_t)res & 15)) {
    const int nv = (int)(D / V), NV = (nv + 31) / 32;
    const uint4 *wv = w ? (const uint4 *)mx__ddata(w) : NULL;
    const unsigned gp = rms_tail_blocks(rows);
    if (packed) {
      int a = mx__array_alloc_data_bytes(out, rms_tail_offset(out) +
                                                  sizeof(float) * (size_t)gp * (size_t)D);
      if (a) return a;
    }
    uint4 *o = (uint4 *)out->buf->dptr;
    float *part = packed ? (float *)((char *)out->buf->dptr + rms_tail_offset(out)) : NULL;
#define RV(TAG, VV, K)                                                                        \
  if (packed)                                                                                 \
    mx__cuda_launch_pdl(k_rms_grad_vec<TAG, VV, K, true>, dim3(gp), dim3(256),             \
                        sizeof(float) * 8 * (size_t)D,                                        \
                        (const TAG::S *)mx__ddata(x), (const TAG::S *)mx__ddata(g), wv, o,    \
                        rnd, rows, nv, (float)p->eps, (const uint4 *)res, part);              \
  else                                                                                        \
    mx__cuda_launch_pdl(k_rms_grad_vec<TAG, VV, K>, dim3(gw), dim3(256), 0,                   \
                        (const TAG::S *)mx__ddata(x), (const TAG::S *)mx__ddata(g), wv, o,    \
                        rnd, rows, nv, (float)p->eps, (const uint4 *)res, (float *)NULL)
#define RVD(TAG, VV)                                                                         \
  switch (NV) {                                                                              \
    case 1: RV(TAG, VV, 1); break;                                                           \
    case 2: RV(TAG, VV, 2); break;                                                           \
    case 3: RV(TAG, VV, 3); break;                                                           \
    default: RV(TAG, VV, 4); break;                                                          \
  }
    if (dt == MX_FLOAT16) RVD(TF16, 8)
    else if (dt == MX_BFLOAT16) RVD(TBF16, 8)
    else RVD(TF32, 4)
#undef RVD
#undef RV
    return mx__cuda_launched(mx__opname(out));
  }
  if (packed) { /* no partial sums: which 4 computes dw from x and g */
    int a = mx__array_alloc_data(out);
    if (a || out->size == 0) return a;
  }
#define RG(TAG, CT, TOUT)                                                                    \
  if (warp)                                                                                  \
    k_rms_grad_warp<TAG, CT, TOUT><<<gw, 256, 0, s>>>(                                       \
        (const TAG::S *)mx__ddata(x), (const TAG::S *)mx__ddata(g),                          \
        w ? (const TAG::S *)mx__ddata(w) : NULL, (TOUT::S *)out->buf->dptr, rnd, rows, D,    \
        x->strides[nd - 1], g->strides[nd - 1], ws, (CT)p->eps, which);                      \
  else                                                                                       \
  k_rms_grad<TAG, CT, TOUT><<<gr, MX_CUDA_THREADS, 0, s>>>(                                  \
      (const TAG::S *)mx__ddata(x), (const TAG::S *)mx__ddata(g),                            \
      w ? (const TAG::S *)mx__ddata(w) : NULL, (TOUT::S *)out->buf->dptr, rnd, rows, D,      \
      x->strides[nd - 1], g->strides[nd - 1], ws, (CT)p->eps, which)
  switch (dt) {
    case MX_FLOAT16:
      if (which) RG(TF16, float, TF32);
      else RG(TF16, float, TF16);
      break;
    case MX_BFLOAT16:
      if (which) RG(TBF16, float, TF32);
      else RG(TBF16, float, TBF16);
      break;
    case MX_FLOAT32: RG(TF32, float, TF32); break;
    case MX_FLOAT64: RG(TF64, double, TF64); break;
    default: return mx__cuda_no_dtype(out, dt);
  }
#undef RG
  if (res) {
    unsigned nb = mx__cuda_blocks(x->size);
    MX_CUDA_DISPATCH_FLOAT(dt, k_add_inplace<T><<<nb, MX_CUDA_THREADS, 0, s>>>(
                                   (T::S *)out->buf->dptr, (const T::S *)res, x->size))
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

/* ---- add_rms_norm (ops/fast_params.h): h = x + r rounded to the dtype, then
 * the rms_norm of h exactly as k_norm_vec / k_norm compute it ------------------ */
template <class T, int V>
__global__ void __launch_bounds__(1024)
    k_add_norm_vec(const uint4 *__restrict__ x, const uint4 *__restrict__ r, uint4 *__restrict__ oh,
                   uint4 *__restrict__ on, int nv, int64_t rows, const uint4 *__restrict__ w,
                   float eps) {
  __shared__ float sh[32];
  const int t = threadIdx.x;
  MX_PDL_ENTRY();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    uint4 hp, np;
    add_norm_row<T, V>(x + row * nv, r + row * nv, w, nv, eps, sh, &hp, &np);
    if (t < nv) {
      oh[row * nv + t] = hp;
      on[row * nv + t] = np;
    }
  }
}

/* Any float dtype and row length; contiguous rows of x and r (copied first
 * when not), w with stride ws. */
template <class T, class C>
__global__ void k_add_norm(const typename T::S *x, const typename T::S *r, typename T::S *oh,
                           typename T::S *on, int64_t rows, int64_t D, const typename T::S *w,
                           int64_t ws, double eps) {
  __shared__ C sh[MX_CUDA_THREADS];
  MX_PDL_ENTRY();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * D;
    C ss = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      typename T::S h = T::st((C)T::ld(x[base + i]) + (C)T::ld(r[base + i]));
      oh[base + i] = h;
      C v = (C)T::ld(h);
      ss += v * v;
    }
    ss = block_sum<C>(ss, sh);
    C n = (C)1 / sqrt(ss / (C)D + (C)eps);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      C v = (C)T::ld(T::st((C)T::ld(x[base + i]) + (C)T::ld(r[base + i]))) * n;
      on[base + i] = T::st(v * (C)T::ld(w[i * ws]));
    }
  }
}

static int k_add_rms_norm(mx_array *out, mx_array **in) {
  const mx__rms_norm_params *p = MX__PARAMS(out, mx__rms_norm_params);
  mx_array *x = in[0], *r = in[1], *w = in[2];
  mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || x->dtype != dt || r->dtype != dt || w->dtype != dt)
    return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t D = x->shape[x->ndim - 1], n = x->size, rows = n / D;
  const int es = (int)mx_dtype_size(dt);
  char *oh = (char *)out->buf->dptr, *on = oh + n * es;
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  const int V = 16 / es;
  if (dt != MX_FLOAT64 && D % V == 0 && D / V <= 1024 && x->row_contiguous &&
      r->row_contiguous && w->strides[0] == 1 && !((uintptr_t)mx__ddata(x) & 15) &&
      !((uintptr_t)mx__ddata(r) & 15) && !((uintptr_t)mx__ddata(w) & 15)) {
    int nv = (int)(D / V), threads = (nv + 31) / 32 * 32;
    const uint4 *xp = (const uint4 *)mx__ddata(x), *rp = (const uint4 *)mx__ddata(r);
    const uint4 *wp = (const uint4 *)mx__ddata(w);
    float eps = (float)p->eps;
    if (dt == MX_FLOAT16)
      mx__cuda_launch_pdl(k_add_norm_vec<TF16, 8>, g, threads, 0, xp, rp, (uint4 *)oh, (uint4 *)on, nv, rows, wp, eps);
    else if (dt == MX_BFLOAT16)
      mx__cuda_launch_pdl(k_add_norm_vec<TBF16, 8>, g, threads, 0, xp, rp, (uint4 *)oh, (uint4 *)on, nv, rows, wp, eps);
    else
      mx__cuda_launch_pdl(k_add_norm_vec<TF32, 4>, g, threads, 0, xp, rp, (uint4 *)oh, (uint4 *)on, nv, rows, wp, eps);
    return mx__cuda_launched("add_rms_norm");
  }
  mx__buffer *tb[2] = {NULL, NULL};
  const char *src[2];
  mx_array *xr[2] = {x, r};
  for (int i = 0; i < 2 && !st; i++) {
    if (xr[i]->row_contiguous) {
      src[i] = mx__ddata(xr[i]);
      continue;
    }
    if (!(tb[i] = mx__cuda_tmp((size_t)n * (size_t)es))) st = mx_last_status();
    else if (!(st = mx__cuda_copy_to_contiguous(xr[i], tb[i]->dptr))) src[i] = (const char *)tb[i]->dptr;
  }
  if (!st) {
    cudaStream_t s = mx__cuda_stream();
    switch (dt) {
#define C(DT, TAG, CT)                                                                        \
  case DT:                                                                                    \
    k_add_norm<TAG, CT><<<g, MX_CUDA_THREADS, 0, s>>>(                                        \
        (const TAG::S *)src[0], (const TAG::S *)src[1], (TAG::S *)oh, (TAG::S *)on, rows, D,  \
        (const TAG::S *)mx__ddata(w), w->strides[0], p->eps);                                 \
    break;
      C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
      C(MX_FLOAT64, TF64, double)
#undef C
      default: break;
    }
    st = mx__cuda_launched("add_rms_norm");
  }
  for (int i = 0; i < 2; i++)
    if (tb[i]) mx__buffer_release(tb[i]); /* reused only by later work of the stream */
  return st;
}

/* ---- softmax_cross_entropy and its backward (ops/fast_params.h) -----------
 * One block per row: an online maximum and sum of exp(x - max) per thread
 * over the row (one read), combined over the block in a fixed order (so
 * deterministic); lse = max + log(sum). The loss is lse - x[t]; the
 * backward reads the row a second time and writes cot (exp(x - lse) -
 * [j == t]) in the logits' dtype. f32 compute (f64 for f64). A target
 * outside [0, V) gives NaN. */
template <class C>
__device__ __forceinline__ void ce_merge(C &m, C &s, C m2, C s2) {
  C n = m > m2 ? m : m2;
  if (n == -(C)INFINITY) return; /* both empty */
  s = s * exp(m - n) + s2 * exp(m2 - n);
  m = n;
}

template <class T>
__global__ void __launch_bounds__(256)
    k_ce(const typename T::S *x, const int32_t *tg, const typename T::C *cot, void *out,
         mx__nd<1> xr, mx__nd<1> tr, mx__nd<1> cr, int64_t rows, int64_t V, int64_t xs) {
  typedef typename T::C C;
  __shared__ C shm[32], shs[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t xo, to, co = 0;
    mx__nd_offsets<1>(xr, r, &xo);
    mx__nd_offsets<1>(tr, r, &to);
    if (cot) mx__nd_offsets<1>(cr, r, &co);
    const typename T::S *row = x + xo;
    C m = -(C)INFINITY, sm = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      C v = T::ld(row[j * xs]);
      if (v > m) {
        sm = sm * exp(m - v) + (C)1;
        m = v;
      } else if (v > -(C)INFINITY) { /* a -inf logit adds nothing */
        sm += exp(v - m);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      C m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, sm, o);
      ce_merge(m, sm, m2, s2);
    }
    if (lane == 0) shm[warp] = m, shs[warp] = sm;
    __syncthreads();
    m = shm[0], sm = shs[0];
    for (int i = 1; i < nw; i++) ce_merge(m, sm, shm[i], shs[i]);
    __syncthreads(); /* shm/shs are rewritten by the next row */
    const C lse = m + log(sm);
    const int64_t t = tg[to];
    const bool ok = t >= 0 && t < V;
    if (!cot) {
      if (threadIdx.x == 0) ((C *)out)[r] = ok ? lse - (C)T::ld(row[t * xs]) : (C)NAN;
      continue;
    }
    const C g = cot[co];
    typename T::S *y = (typename T::S *)out + r * V;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
      y[j] = T::st(ok ? g * (exp((C)T::ld(row[j * xs]) - lse) - (j == t ? (C)1 : (C)0)) : (C)NAN);
  }
}

/* k_ce for float compute and rows of contiguous logits: Nsight Compute
 * showed the online form compute-bound (SM 85%, DRAM 15%, 0.8 ms for
 * 32768 x 8705 bf16 on an H200: a branch, a precise exp and 64-bit index
 * arithmetic a logit). Here a row is read in two passes (its maximum,
 * then the sum of 2^(x log2 e - max log2 e), one FFMA and one MUFU.EX2 a
 * logit; the second read hits the cache), 32-bit indices, and the block's
 * partial results are combined in a fixed order (deterministic). A +inf
 * maximum gives lse = +inf, a row of -inf gives -inf, NaN propagates, as
 * the online form does. Probabilities below 2^-126 of the row's maximum
 * round to zero (ex2.approx.ftz). */
__device__ __forceinline__ float ce_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <class T>
__global__ void __launch_bounds__(256)
    k_ce_rows(const typename T::S *x, const int32_t *tg, const float *cot, void *out,
              mx__nd<1> xr, mx__nd<1> tr, mx__nd<1> cr, int64_t rows, int V) {
  __shared__ float red[8];
  constexpr float L2E = 1.4426950408889634f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t xo, to, co = 0;
    mx__nd_offsets<1>(xr, r, &xo);
    mx__nd_offsets<1>(tr, r, &to);
    if (cot) mx__nd_offsets<1>(cr, r, &co);
    const typename T::S *row = x + xo;
    float m = -INFINITY;
#pragma unroll 8
    for (int j = threadIdx.x; j < V; j += 256) m = fmaxf(m, (float)T::ld(row[j]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
#pragma unroll
    for (int i = 1; i < 8; i++) m = fmaxf(m, red[i]);
    __syncthreads(); /* red is rewritten below */
    float lse;
    if (m == INFINITY || m == -INFINITY) {
      lse = m;
    } else {
      const float mb = m * L2E;
      float sm = 0.f;
#pragma unroll 8
      for (int j = threadIdx.x; j < V; j += 256) sm += ce_ex2(fmaf((float)T::ld(row[j]), L2E, -mb));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, o);
      if (lane == 0) red[warp] = sm;
      __syncthreads();
      sm = red[0];
#pragma unroll
      for (int i = 1; i < 8; i++) sm += red[i];
      __syncthreads(); /* red is rewritten by the next row */
      lse = m + logf(sm);
    }
    const int64_t t = tg[to];
    const bool ok = t >= 0 && t < V;
    if (!cot) {
      if (threadIdx.x == 0) ((float *)out)[r] = ok ? lse - (float)T::ld(row[t]) : NAN;
      continue;
    }
    const float g = cot[co], lb = lse * L2E;
    typename T::S *y = (typename T::S *)out + r * V;
    if (!ok || !(lse < INFINITY)) {
      for (int j = threadIdx.x; j < V; j += 256)
        y[j] = T::st(ok ? g * (expf((float)T::ld(row[j]) - lse) - (j == t ? 1.f : 0.f)) : NAN);
      continue;
    }
#pragma unroll 8
    for (int j = threadIdx.x; j < V; j += 256)
      y[j] = T::st(g * (ce_ex2(fmaf((float)T::ld(row[j]), L2E, -lb)) - (j == t ? 1.f : 0.f)));
  }
}

/* k_ce_rows for 16-bit logits whose rows are 16-byte aligned (V a multiple
 * of 8, as a padded vocabulary is) and fit NV 16-byte vectors a thread:
 * the row is read once into registers (one 16-byte load per 8 logits
 * instead of one 2-byte load per logit per pass), its maximum and sum of
 * 2^(x log2 e - max log2 e) come from the registers, and the backward
 * writes its row from them as 16-byte vectors. The same arithmetic per
 * logit as k_ce_rows; the sums run in another (fixed) order. */
template <class T, int NV>
__global__ void __launch_bounds__(256, NV <= 6 ? 4 : NV <= 8 ? 3 : 1) /* rows in flight */
    k_ce_vec(const uint16_t *x, const int32_t *tg, const float *cot, void *out, mx__nd<1> xr,
             mx__nd<1> tr, mx__nd<1> cr, int64_t rows, int V, const float *hint,
             mx__nd<1> hr) {
  __shared__ float red[8];
  constexpr float L2E = 1.4426950408889634f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nvec = V >> 3;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t xo, to, co = 0;
    mx__nd_offsets<1>(xr, r, &xo);
    mx__nd_offsets<1>(tr, r, &to);
    if (cot) mx__nd_offsets<1>(cr, r, &co);
    const uint4 *row = (const uint4 *)(x + xo);
    uint4 b[NV];
    float m = -INFINITY;
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int j = threadIdx.x + k * 256;
      b[k] = j < nvec ? __ldg(row + j) : make_uint4(0, 0, 0, 0);
      if (j < nvec) {
        const uint32_t w[4] = {b[k].x, b[k].y, b[k].z, b[k].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
          m = fmaxf(m, (float)T::ld((uint16_t)(w[i] & 0xffffu)));
          m = fmaxf(m, (float)T::ld((uint16_t)(w[i] >> 16)));
        }
      }
    }
    /* the backward given the forward's loss: lse = loss + x[target] when
     * both are finite (uniform over the block: one row a block), no
     * reductions */
    float lse = 0.f;
    bool have = false;
    if (hint) {
      int64_t ho;
      mx__nd_offsets<1>(hr, r, &ho);
      const float l = hint[ho];
      const int64_t t = tg[to];
      if (t >= 0 && t < V && isfinite(l)) {
        lse = l + (float)T::ld(x[xo + t]);
        have = isfinite(lse);
      }
    }
    if (!have) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      if (lane == 0) red[warp] = m;
      __syncthreads();
      m = red[0];
#pragma unroll
      for (int i = 1; i < 8; i++) m = fmaxf(m, red[i]);
      __syncthreads(); /* red is rewritten below */
      if (m == INFINITY || m == -INFINITY) {
        lse = m;
      } else {
        const float mb = m * L2E;
        float sm = 0.f;
#pragma unroll
        for (int k = 0; k < NV; k++) {
          if (threadIdx.x + k * 256 >= nvec) break;
          const uint32_t w[4] = {b[k].x, b[k].y, b[k].z, b[k].w};
#pragma unroll
          for (int i = 0; i < 4; i++) {
            sm += ce_ex2(fmaf((float)T::ld((uint16_t)(w[i] & 0xffffu)), L2E, -mb));
            sm += ce_ex2(fmaf((float)T::ld((uint16_t)(w[i] >> 16)), L2E, -mb));
          }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, o);
        if (lane == 0) red[warp] = sm;
        __syncthreads();
        sm = red[0];
#pragma unroll
        for (int i = 1; i < 8; i++) sm += red[i];
        __syncthreads(); /* red is rewritten by the next row */
        lse = m + logf(sm);
      }
    }
    const int64_t t = tg[to];
    const bool ok = t >= 0 && t < V;
    const uint16_t *xrow = x + xo;
    if (!cot) {
      if (threadIdx.x == 0) ((float *)out)[r] = ok ? lse - (float)T::ld(xrow[t]) : NAN;
      continue;
    }
    const float g = cot[co], lb = lse * L2E;
    const bool fast = ok && lse < INFINITY;
    uint4 *y = (uint4 *)((uint16_t *)out + r * (int64_t)V);
#pragma unroll
    for (int k = 0; k < NV; k++) {
      const int j = threadIdx.x + k * 256;
      if (j >= nvec) break;
      const uint32_t w[4] = {b[k].x, b[k].y, b[k].z, b[k].w};
      uint32_t o4[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        uint16_t h[2];
#pragma unroll
        for (int q = 0; q < 2; q++) {
          const float v = (float)T::ld((uint16_t)(q ? w[i] >> 16 : w[i] & 0xffffu));
          const int e = 8 * j + 2 * i + q;
          const float d = e == t ? 1.f : 0.f;
          h[q] = T::st(fast ? g * (ce_ex2(fmaf(v, L2E, -lb)) - d)
                            : ok ? g * (expf(v - lse) - d) : NAN);
        }
        o4[i] = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
      }
      y[j] = make_uint4(o4[0], o4[1], o4[2], o4[3]);
    }
  }
}

/* MXC_CE_VEC=0: 16-bit rows in two scalar passes (k_ce_rows), for A/B */
static bool ce_vec_on(void) {
  static int on = -1;
  return mx__env_on("MXC_CE_VEC", &on);
}

/* k_ce_vec when it applies; false (nothing launched) otherwise */
template <class T>
static bool ce_vec_launch(unsigned g, cudaStream_t s, const mx_array *x, const mx_array *t,
                          const mx_array *c, mx_array *out, mx__nd<1> xr, mx__nd<1> tr,
                          mx__nd<1> cr, int64_t rows, int64_t V, const mx_array *h) {
  if constexpr (sizeof(typename T::S) == 2) {
    if (!ce_vec_on() || V % 8 || V > 256 * 8 * 16 || ((uintptr_t)mx__ddata(x) & 15) ||
        (c && ((uintptr_t)out->buf->dptr & 15)))
      return false;
    /* every row 16-byte aligned: rows V apart (a multiple of 8) or strided
     * by a multiple of 8 elements */
    for (int d = 0; d < x->ndim - 1; d++)
      if (x->shape[d] > 1 && x->strides[d] % 8) return false;
    const int nvec = (int)(V / 8);
    const uint16_t *xp = (const uint16_t *)mx__ddata(x);
    const int32_t *tp = (const int32_t *)mx__ddata(t);
    const float *cp = c ? (const float *)mx__ddata(c) : NULL;
    void *op = out->buf->dptr;
    const float *hp = h ? (const float *)mx__ddata(h) : NULL;
    mx__nd<1> hr = tr;
    if (h) {
      const int64_t *hsp[1] = {h->strides};
      hr = mx__nd_make<1>(h->shape, h->ndim, hsp);
    }
#define CE_VEC(NV) k_ce_vec<T, NV><<<g, 256, 0, s>>>(xp, tp, cp, op, xr, tr, cr, rows, (int)V, hp, hr)
    /* as many vectors a thread as the row needs: registers for fewer
     * leave room for more rows an SM (vocabulary 9,024: 5, 64 registers,
     * 4 blocks an SM; 8 took 80, 3 blocks) */
    switch ((nvec + 255) / 256) {
      case 1:
      case 2: CE_VEC(2); break;
      case 3: CE_VEC(3); break;
      case 4: CE_VEC(4); break;
      case 5: CE_VEC(5); break;
      case 6: CE_VEC(6); break;
      case 7:
      case 8: CE_VEC(8); break;
      default: CE_VEC(16); break;
    }
#undef CE_VEC
    return true;
  } else {
    (void)g, (void)s, (void)x, (void)t, (void)c, (void)out, (void)xr, (void)tr, (void)cr;
    (void)rows, (void)V, (void)h;
    return false;
  }
}

/* k_ce_rows for float compute; false (nothing launched) otherwise */
template <class T>
static bool ce_rows_launch(unsigned g, cudaStream_t s, const mx_array *x, const mx_array *t,
                           const mx_array *c, mx_array *out, mx__nd<1> xr, mx__nd<1> tr,
                           mx__nd<1> cr, int64_t rows, int64_t V) {
  if constexpr (sizeof(typename T::C) == sizeof(float)) {
    k_ce_rows<T><<<g, 256, 0, s>>>((const typename T::S *)mx__ddata(x),
                                   (const int32_t *)mx__ddata(t),
                                   c ? (const float *)mx__ddata(c) : NULL, out->buf->dptr, xr, tr,
                                   cr, rows, (int)V);
    return true;
  } else {
    (void)g, (void)s, (void)x, (void)t, (void)c, (void)out, (void)xr, (void)tr, (void)cr;
    (void)rows, (void)V;
    return false;
  }
}

static int ce_launch(mx_array *out, mx_array **in, bool grad) {
  mx_array *x = in[0], *t = in[1], *c = grad ? in[2] : NULL;
  /* the forward's loss, given to the backward (fast_params.h) */
  mx_array *h = grad && out->ninputs > 3 ? in[3] : NULL;
  if (!mx_dtype_is_float(x->dtype)) return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int nd = x->ndim;
  const int64_t V = x->shape[nd - 1], rows = t->size;
  const int64_t *xsp[1] = {x->strides}, *tsp[1] = {t->strides};
  mx__nd<1> xr = mx__nd_make<1>(x->shape, nd - 1, xsp);
  mx__nd<1> tr = mx__nd_make<1>(t->shape, t->ndim, tsp);
  mx__nd<1> cr = tr;
  if (c) {
    const int64_t *csp[1] = {c->strides};
    cr = mx__nd_make<1>(c->shape, c->ndim, csp);
  }
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  cudaStream_t s = mx__cuda_stream();
  st = MX_ERR_NO_KERNEL;
  const char *e_ce_fast = getenv("MXC_CE_ROWS"); /* "0": the online kernel, for A/B */
  const bool fast = x->dtype != MX_FLOAT64 && x->strides[nd - 1] == 1 && V < INT32_MAX &&
                    !(e_ce_fast && !strcmp(e_ce_fast, "0"));
  MX_CUDA_DISPATCH_FLOAT(x->dtype, {
    if (!(fast && (ce_vec_launch<T>(g, s, x, t, c, out, xr, tr, cr, rows, V, h) ||
                   ce_rows_launch<T>(g, s, x, t, c, out, xr, tr, cr, rows, V))))
      k_ce<T><<<g, 256, 0, s>>>((const T::S *)mx__ddata(x), (const int32_t *)mx__ddata(t),
                                c ? (const T::C *)mx__ddata(c) : NULL, out->buf->dptr, xr, tr, cr,
                                rows, V, x->strides[nd - 1]);
    st = mx__cuda_launched(mx__opname(out));
  })
  return st == MX_ERR_NO_KERNEL ? mx__cuda_no_dtype(out, x->dtype) : st;
}

/* ---- row_dot (src/ops/fast_params.h): sum(a * b) over the last axis in
 * the compute type ---------------------------------------------------------------- */

/* TPR threads a row (TPR divides 32), each adding V-value vectors. */
template <class T, int V, int TPR>
__global__ void __launch_bounds__(256)
    k_row_dot_vec(const typename T::S *a, const typename T::S *b, float *o, mx__nd<2> rnd,
                  int64_t rows, int nv) {
  const int g = threadIdx.x % TPR;
  const int64_t per = blockDim.x / TPR;
  MX_PDL_ENTRY();
  for (int64_t r = (int64_t)blockIdx.x * per + threadIdx.x / TPR; r < rows;
       r += (int64_t)gridDim.x * per) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    const uint4 *av = (const uint4 *)(a + off[0]), *bv = (const uint4 *)(b + off[1]);
    float acc = 0.f;
    for (int i = g; i < nv; i += TPR) {
      float x[V], y[V];
      norm_unpack<T, V>(__ldg(av + i), x);
      norm_unpack<T, V>(__ldg(bv + i), y);
#pragma unroll
      for (int k = 0; k < V; k++) acc = fmaf(x[k], y[k], acc);
    }
#pragma unroll
    for (int m = TPR / 2; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (g == 0) o[r] = acc;
  }
}

/* Any strides and float dtype: a warp a row. */
template <class T>
__global__ void __launch_bounds__(256)
    k_row_dot(const typename T::S *a, const typename T::S *b, typename T::C *o, mx__nd<2> rnd,
              int64_t rows, int64_t D, int64_t as, int64_t bs) {
  typedef typename T::C C;
  const int lane = threadIdx.x & 31;
  MX_PDL_ENTRY();
  for (int64_t r = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * 8) {
    int64_t off[2];
    mx__nd_offsets<2>(rnd, r, off);
    C acc = 0;
    for (int64_t i = lane; i < D; i += 32)
      acc += (C)T::ld(a[off[0] + i * as]) * (C)T::ld(b[off[1] + i * bs]);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) o[r] = acc;
  }
}

static int k_row_dot_launch(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *b = in[1];
  if (!mx_dtype_is_float(a->dtype) || b->dtype != a->dtype) return mx__cuda_no_dtype(out, a->dtype);
  if (out->ninputs == 3 && out->dtype == MX_FLOAT32 && out->size > 0) {
    /* mx__fast_row_dot_of: the rows sdpa_backward_q kept after dq, shared */
    const mx_array *src = in[2];
    const size_t tail = mx__sdpa_delta_tail(src->size, mx_dtype_size(src->dtype));
    if (src->buf && src->buf->dptr && src->offset == 0 &&
        src->buf->size >= tail + sizeof(float) * (size_t)out->size) {
      int64_t st[MX_MAX_NDIM];
      mx__compute_row_strides(out->shape, out->ndim, st);
      mx__array_set_view(out, in[2], st, (int64_t)(tail / sizeof(float)));
      return MX_OK;
    }
  }
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int nd = a->ndim;
  const int64_t D = a->shape[nd - 1], rows = out->size;
  if (D == 0)
    return mx__cuda_check(cudaMemsetAsync(out->buf->dptr, 0,
                                          (size_t)rows * mx_dtype_size(out->dtype),
                                          mx__cuda_stream()), "row_dot");
  const int64_t *sp[2] = {a->strides, b->strides};
  mx__nd<2> rnd = mx__nd_make<2>(a->shape, nd - 1, sp);
  const dim3 blk(256);
  const int V = a->dtype == MX_FLOAT32 ? 4 : 8;
  if (a->dtype != MX_FLOAT64 && rows_vec_ok(a, V) && rows_vec_ok(b, V)) {
    /* leading strides counted in elements of S; the kernel steps by uint4 */
    const int nv = (int)(D / V), tpr = nv <= 8 ? 8 : 32;
    const dim3 grid((unsigned)MX_MIN((rows * tpr + 255) / 256, (int64_t)65535 * 8));
    float *o = (float *)out->buf->dptr;
#define RD(TAG, VV)                                                                          \
  if (tpr == 8)                                                                              \
    mx__cuda_launch_pdl(k_row_dot_vec<TAG, VV, 8>, grid, blk, 0, (const TAG::S *)mx__ddata(a), \
                        (const TAG::S *)mx__ddata(b), o, rnd, rows, nv);                     \
  else                                                                                       \
    mx__cuda_launch_pdl(k_row_dot_vec<TAG, VV, 32>, grid, blk, 0,                            \
                        (const TAG::S *)mx__ddata(a), (const TAG::S *)mx__ddata(b), o, rnd,  \
                        rows, nv)
    if (a->dtype == MX_FLOAT16) RD(TF16, 8);
    else if (a->dtype == MX_BFLOAT16) RD(TBF16, 8);
    else RD(TF32, 4);
#undef RD
    return mx__cuda_launched("row_dot");
  }
  const dim3 grid((unsigned)MX_MIN((rows + 7) / 8, (int64_t)65535 * 8));
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_FLOAT(a->dtype, {
    mx__cuda_launch_pdl(k_row_dot<T>, grid, blk, 0, (const T::S *)mx__ddata(a),
                        (const T::S *)mx__ddata(b), (T::C *)out->buf->dptr, rnd, rows, D,
                        a->strides[nd - 1], b->strides[nd - 1]);
    st = mx__cuda_launched("row_dot");
  })
  return st == MX_ERR_NO_KERNEL ? mx__cuda_no_dtype(out, a->dtype) : st;
}

static int k_softmax_ce(mx_array *out, mx_array **in) { return ce_launch(out, in, false); }
static int k_softmax_ce_grad(mx_array *out, mx_array **in) { return ce_launch(out, in, true); }

void mx__cuda_register_fast(mx__kernel_fn *k) {
  k[MX_OP_SOFTMAX_CE] = k_softmax_ce;
  k[MX_OP_SOFTMAX_CE_GRAD] = k_softmax_ce_grad;
  k[MX_OP_ROW_DOT] = k_row_dot_launch;
  k[MX_OP_ADD_RMS_NORM] = k_add_rms_norm;
  k[MX_OP_RMS_NORM] = k_rms_norm;
  k[MX_OP_RMS_NORM_GRAD] = k_rms_norm_grad;
  k[MX_OP_LAYER_NORM] = k_layer_norm;
}
