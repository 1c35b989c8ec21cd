/* indexing.cu — CUDA kernels of put_along_axis and scatter_add_axis.
 *
 * As the CPU kernels: `a` is copied into the (row-contiguous) output, then
 * one thread per position on the non-indexed axes of the index array walks
 * the indexed axis in order, so writes never race and duplicates resolve as
 * on the CPU (last write wins for put; sums in index order for add). A put
 * along a long index axis (1024+) finds each element's last writer with
 * atomicMax first instead (k_put_win), so a row is not one thread's walk.
 * Indices are normalised with mx__norm_index. f16/bf16 scatter-adds
 * accumulate in an f32 copy of the output, rounded once at the end. */
#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.cuh"
#include "ops/indexing_params.h"

__device__ __forceinline__ int64_t norm_index(int64_t i, int64_t dim) {
  if (i < 0) i += dim;
  return i < 0 ? 0 : i >= dim ? dim - 1 : i;
}

/* Geometry of a scatter: nd over the non-indexed axes of the index shape,
 * operands 0 out (row strides), 1 indices, 2 values. */
struct scat_geo {
  mx__nd<3> nd;
  int64_t n, dim, ostride, istep, vstep;
};

static scat_geo make_geo(const mx_array *out, const mx_array *idx, const mx_array *v, int ax) {
  scat_geo g;
  int nd = 0;
  int64_t shape[MX_MAX_NDIM], ost[MX_MAX_NDIM], ist[MX_MAX_NDIM], vst[MX_MAX_NDIM];
  int64_t orow[MX_MAX_NDIM];
  mx__compute_row_strides(out->shape, out->ndim, orow);
  for (int d = 0; d < out->ndim; d++) {
    if (d == ax) continue;
    shape[nd] = idx->shape[d];
    ost[nd] = orow[d];
    ist[nd] = idx->strides[d];
    vst[nd] = v->strides[d];
    nd++;
  }
  const int64_t *sp[3] = {ost, ist, vst};
  g.nd = mx__nd_make<3>(shape, nd, sp);
  g.n = idx->shape[ax];
  g.dim = out->shape[ax];
  g.ostride = orow[ax];
  g.istep = idx->strides[ax];
  g.vstep = v->strides[ax];
  return g;
}

static int64_t geo_count(const mx_array *idx, int ax) {
  int64_t c = 1;
  for (int d = 0; d < idx->ndim; d++)
    if (d != ax) c *= idx->shape[d];
  return c;
}

template <class S, class TI>
__global__ void k_put(S *o, const TI *ix, const S *v, scat_geo g, int64_t count) {
  MX_CUDA_LOOP(i, count) {
    int64_t off[3];
    mx__nd_offsets<3>(g.nd, i, off);
    for (int64_t k = 0; k < g.n; k++) {
      int64_t j = norm_index((int64_t)ix[off[1] + k * g.istep], g.dim);
      o[off[0] + j * g.ostride] = v[off[2] + k * g.vstep];
    }
  }
}

/* Long index axes (a sampler's mask over a vocabulary): one thread per
 * (position, k); the last k writing an output element is found first with
 * atomicMax on a per-element winner (the output's offset indexes it), then
 * only the winners write — last write wins, as the serial walk. */
template <class TI>
__global__ void k_put_win(int32_t *win, const TI *ix, scat_geo g, int64_t total) {
  MX_CUDA_LOOP(i, total) {
    int64_t p = i / g.n, k = i % g.n, off[3];
    mx__nd_offsets<3>(g.nd, p, off);
    int64_t j = norm_index((int64_t)ix[off[1] + k * g.istep], g.dim);
    atomicMax(&win[off[0] + j * g.ostride], (int32_t)k);
  }
}

template <class S, class TI>
__global__ void k_put_wins(S *o, const int32_t *win, const TI *ix, const S *v, scat_geo g,
                           int64_t total) {
  MX_CUDA_LOOP(i, total) {
    int64_t p = i / g.n, k = i % g.n, off[3];
    mx__nd_offsets<3>(g.nd, p, off);
    int64_t j = norm_index((int64_t)ix[off[1] + k * g.istep], g.dim);
    int64_t at = off[0] + j * g.ostride;
    if (win[at] == (int32_t)k) o[at] = v[off[2] + k * g.vstep];
  }
}

/* accumulation: A is the accumulator storage type */
template <class T, class A> struct acc_op;
template <class T> struct acc_op<T, float> { /* f16/bf16 (in f32) and f32 */
  __device__ static void add(float &o, typename T::S v) { o += (float)T::ld(v); }
};
template <> struct acc_op<TF64, double> {
  __device__ static void add(double &o, double v) { o += v; }
};
template <> struct acc_op<TBool, uint8_t> {
  __device__ static void add(uint8_t &o, uint8_t v) { o = (uint8_t)(o | (v != 0)); }
};
template <> struct acc_op<TU8, uint8_t> {
  __device__ static void add(uint8_t &o, uint8_t v) { o = (uint8_t)(o + v); }
};
template <> struct acc_op<TU32, uint32_t> {
  __device__ static void add(uint32_t &o, uint32_t v) { o += v; }
};
template <> struct acc_op<TI32, int32_t> {
  __device__ static void add(int32_t &o, int32_t v) { o = (int32_t)((uint32_t)o + (uint32_t)v); }
};
template <> struct acc_op<TI64, int64_t> {
  __device__ static void add(int64_t &o, int64_t v) { o = (int64_t)((uint64_t)o + (uint64_t)v); }
};

/* Thread (i, r) of count x nr adds, in index order, the values whose
 * destination row j along the axis falls in its share [r * per, r * per +
 * per): every destination has one writer and sees its additions in index
 * order (deterministic, the CPU's order), and a long index list (the
 * embedding gradient: count = D, n = tokens) is spread over nr times more
 * threads, each scanning the indices but only chaining the read-modify-
 * writes of its own rows. */
template <class T, class A, class TI>
__global__ void k_add(A *o, const TI *ix, const typename T::S *v, scat_geo g, int64_t count,
                      int64_t nr, int64_t per) {
  MX_CUDA_LOOP(t, count * nr) {
    int64_t i = t % count, r = t / count;
    int64_t off[3];
    mx__nd_offsets<3>(g.nd, i, off);
    const int64_t lo = r * per, hi = lo + per; /* this thread's rows (nr > 1) */
    for (int64_t k = 0; k < g.n; k++) {
      int64_t j = norm_index((int64_t)ix[off[1] + k * g.istep], g.dim);
      if (nr > 1 && (j < lo || j >= hi)) continue;
      acc_op<T, A>::add(o[off[0] + j * g.ostride], v[off[2] + k * g.vstep]);
    }
  }
}

/* Row scatter-adds whose index depends on k only (the embedding gradient:
 * the token ids broadcast over the model dimension). The (index, k) pairs
 * are sorted by index with CUB's radix sort, which is stable, so each
 * destination row's hits lie together in index order; the block of the
 * run's first entry adds the run's value rows to its destination row in
 * that order, starting from the row's current value — the CPU's additions
 * in the CPU's order (float32 results are equal), f16/bf16 accumulated in
 * float32 and rounded once. Every block reads only its own run (the hits
 * of a frequent token are one block's sequence of loads, RS_U rows in
 * flight; the earlier form, a block per few rows scanning the whole list,
 * took 0.5 ms for uniform ids and 4.8 ms for a text's Zipf-like ids on an
 * H200, 32,768 ids into 8,519 x 768). */
constexpr int RS_THREADS = 256, RS_PP = 8, RS_U = 8;

template <class TI>
__global__ void k_rows_keys(const TI *ix, scat_geo g, int32_t *keys, int32_t *ks) {
  MX_CUDA_LOOP(k, g.n) {
    keys[k] = (int32_t)norm_index((int64_t)ix[k * g.istep], g.dim);
    ks[k] = (int32_t)k;
  }
}

template <class T, class A>
__global__ void __launch_bounds__(RS_THREADS)
    k_rows_run(typename T::S *o, const int32_t *keys, const int32_t *ks,
               const typename T::S *v, scat_geo g, int64_t count) {
  __shared__ int32_t sk[RS_THREADS];
  const int64_t e0 = blockIdx.x;
  const int32_t j = keys[e0];
  if (e0 > 0 && keys[e0 - 1] == j) return; /* not the first entry of its run */
  const int t = threadIdx.x;
  int64_t oo[RS_PP], vo[RS_PP];
  A acc[RS_PP];
#pragma unroll
  for (int q = 0; q < RS_PP; q++) {
    const int64_t p = t + (int64_t)q * RS_THREADS;
    int64_t off[3] = {0, 0, 0};
    if (p < count) mx__nd_offsets<3>(g.nd, p, off);
    oo[q] = off[0] + (int64_t)j * g.ostride;
    vo[q] = off[2];
    acc[q] = p < count ? (A)T::ld(o[oo[q]]) : (A)0;
  }
  for (int64_t base = e0; base < g.n; base += RS_THREADS) {
    __syncthreads(); /* the previous stage is consumed */
    const int64_t e = base + t;
    const bool in = e < g.n && keys[e] == j; /* the run is a prefix of the stage */
    sk[t] = in ? ks[e] : -1;
    const int len = __syncthreads_count(in);
    for (int m = 0; m < len; m += RS_U) {
      typename T::S val[RS_U][RS_PP];
#pragma unroll
      for (int u = 0; u < RS_U; u++) {
        const int32_t k = m + u < len ? sk[m + u] : -1;
#pragma unroll
        for (int q = 0; q < RS_PP; q++) {
          const int64_t p = t + (int64_t)q * RS_THREADS;
          val[u][q] = k >= 0 && p < count ? v[vo[q] + (int64_t)k * g.vstep] : (typename T::S)0;
        }
      }
#pragma unroll
      for (int u = 0; u < RS_U; u++) {
        if (m + u >= len) break;
#pragma unroll
        for (int q = 0; q < RS_PP; q++) {
          const int64_t p = t + (int64_t)q * RS_THREADS;
          if (p < count) acc_op<T, A>::add(acc[q], val[u][q]);
        }
      }
    }
    if (len < RS_THREADS) break; /* the run ended in this stage */
  }
#pragma unroll
  for (int q = 0; q < RS_PP; q++) {
    const int64_t p = t + (int64_t)q * RS_THREADS;
    if (p < count) o[oo[q]] = T::st(acc[q]);
  }
}

/* The same for rows of count contiguous elements, 16-byte aligned, read
 * as vectors of V (thread t: elements [t V, t V + V)): a block of
 * RV_THREADS threads per run, RV_U value rows in flight a thread. */
constexpr int RV_THREADS = 128, RV_U = 16;

template <class T, int V>
__device__ __forceinline__ void rv_unpack(uint4 u, float *f) {
  if constexpr (V == 8) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] = (float)T::ld((uint16_t)(w[i] & 0xffffu));
      f[2 * i + 1] = (float)T::ld((uint16_t)(w[i] >> 16));
    }
  } else {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
  }
}

template <class T, int V>
__global__ void __launch_bounds__(RV_THREADS)
    k_rows_run_vec(typename T::S *o, const int32_t *keys, const int32_t *ks,
                   const typename T::S *v, int64_t n, int64_t ostride, int64_t vstep, int nv) {
  __shared__ int32_t sk[RV_THREADS];
  const int64_t e0 = blockIdx.x;
  const int32_t j = keys[e0];
  if (e0 > 0 && keys[e0 - 1] == j) return; /* not the first entry of its run */
  const int t = threadIdx.x;
  const bool act = t < nv;
  typename T::S *orow = o + (int64_t)j * ostride;
  float acc[V];
  rv_unpack<T, V>(act ? *((const uint4 *)orow + t) : make_uint4(0, 0, 0, 0), acc);
  for (int64_t base = e0; base < n; base += RV_THREADS) {
    __syncthreads(); /* the previous stage is consumed */
    const int64_t e = base + t;
    const bool in = e < n && keys[e] == j; /* the run is a prefix of the stage */
    sk[t] = in ? ks[e] : -1;
    const int len = __syncthreads_count(in);
    for (int m = 0; m < len; m += RV_U) {
      uint4 val[RV_U];
#pragma unroll
      for (int u = 0; u < RV_U; u++) {
        const int32_t k = m + u < len ? sk[m + u] : -1;
        val[u] = k >= 0 && act ? __ldg((const uint4 *)(v + (int64_t)k * vstep) + t)
                               : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < RV_U; u++) {
        if (m + u >= len) break;
        float f[V];
        rv_unpack<T, V>(val[u], f);
#pragma unroll
        for (int i = 0; i < V; i++) acc[i] += f[i];
      }
    }
    if (len < RV_THREADS) break; /* the run ended in this stage */
  }
  if (!act) return;
  if constexpr (V == 8) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
      w[i] = (uint32_t)T::st(acc[2 * i]) | ((uint32_t)T::st(acc[2 * i + 1]) << 16);
    *((uint4 *)orow + t) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *((uint4 *)orow + t) = make_uint4(__float_as_uint(acc[0]), __float_as_uint(acc[1]),
                                      __float_as_uint(acc[2]), __float_as_uint(acc[3]));
  }
}

/* 16-bit rows: runs cut at every RV_SEG-th entry of the sorted list, so a
 * frequent token's hits (a text's most frequent id has ~10% of them) are
 * summed by several blocks at once instead of one block's ~200 dependent
 * batches. A run within one segment is k_rows_run_vec's (the same bits);
 * a run that crosses a segment boundary leaves float32 partials: its first
 * block's (the row's value and its first entries) in slot 1 of its
 * segment, the block of each boundary it crosses (from zero) in slot 0 of
 * the segment that starts there; k_rows_seg_combine then adds them in
 * entry order and rounds once. Deterministic (MXC_SCATTER_SEG=0: one block
 * a run, for A/B). */
constexpr int RV_SEG = 256;

template <class T>
__global__ void __launch_bounds__(RV_THREADS)
    k_rows_seg_vec(typename T::S *o, const int32_t *keys, const int32_t *ks,
                   const typename T::S *v, int64_t n, int64_t ostride, int64_t vstep, int nv,
                   float *part) {
  constexpr int V = 8;
  __shared__ int32_t sk[RV_THREADS];
  const int64_t e0 = blockIdx.x;
  const int32_t j = keys[e0];
  const bool start = e0 == 0 || keys[e0 - 1] != j;
  if (!start && e0 % RV_SEG) return; /* neither a run's first entry nor a boundary */
  const int64_t seg = e0 / RV_SEG, lim = MX_MIN(n, (seg + 1) * RV_SEG);
  const int t = threadIdx.x;
  const bool act = t < nv;
  typename T::S *orow = o + (int64_t)j * ostride;
  float acc[V];
  if (start) rv_unpack<T, V>(act ? *((const uint4 *)orow + t) : make_uint4(0, 0, 0, 0), acc);
  else
#pragma unroll
    for (int i = 0; i < V; i++) acc[i] = 0.f;
  for (int64_t base = e0; base < lim; base += RV_THREADS) {
    __syncthreads(); /* the previous stage is consumed */
    const int64_t e = base + t;
    const bool in = e < lim && keys[e] == j; /* the run is a prefix of the stage */
    sk[t] = in ? ks[e] : -1;
    const int len = __syncthreads_count(in);
    for (int m = 0; m < len; m += RV_U) {
      uint4 val[RV_U];
#pragma unroll
      for (int u = 0; u < RV_U; u++) {
        const int32_t k = m + u < len ? sk[m + u] : -1;
        val[u] = k >= 0 && act ? __ldg((const uint4 *)(v + (int64_t)k * vstep) + t)
                               : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < RV_U; u++) {
        if (m + u >= len) break;
        float f[V];
        rv_unpack<T, V>(val[u], f);
#pragma unroll
        for (int i = 0; i < V; i++) acc[i] += f[i];
      }
    }
    if (len < RV_THREADS) break; /* the run ended in this stage */
  }
  if (!act) return;
  const bool crosses = lim < n && keys[lim] == j && keys[lim - 1] == j;
  if (start && !crosses) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
      w[i] = (uint32_t)T::st(acc[2 * i]) | ((uint32_t)T::st(acc[2 * i + 1]) << 16);
    *((uint4 *)orow + t) = make_uint4(w[0], w[1], w[2], w[3]);
    return;
  }
  float4 *pp = (float4 *)(part + ((seg * 2 + (start ? 1 : 0)) * (int64_t)nv + t) * V);
  pp[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  pp[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
}

/* Block b (b >= 1): the run crossing boundary b * RV_SEG, if it began in
 * segment b - 1: its first block's partial, then each boundary's, in order. */
template <class T>
__global__ void __launch_bounds__(RV_THREADS)
    k_rows_seg_combine(typename T::S *o, const int32_t *keys, int64_t n, int64_t ostride,
                       int nv, const float *part) {
  constexpr int V = 8;
  const int64_t b = (int64_t)blockIdx.x + 1, e = b * RV_SEG;
  const int t = threadIdx.x;
  if (e >= n || t >= nv) return;
  const int32_t j = keys[e];
  if (keys[e - 1] != j) return;                                /* no run crosses here */
  if ((b - 1) * RV_SEG > 0 && keys[(b - 1) * RV_SEG - 1] == j) return; /* began earlier */
  const float4 *p1 = (const float4 *)(part + (((b - 1) * 2 + 1) * (int64_t)nv + t) * V);
  float4 lo = p1[0], hi = p1[1];
  for (int64_t c = b; c * RV_SEG < n && keys[c * RV_SEG - 1] == j && keys[c * RV_SEG] == j; c++) {
    const float4 *p0 = (const float4 *)(part + ((c * 2) * (int64_t)nv + t) * V);
    const float4 a = p0[0], d = p0[1];
    lo.x += a.x, lo.y += a.y, lo.z += a.z, lo.w += a.w;
    hi.x += d.x, hi.y += d.y, hi.z += d.z, hi.w += d.w;
  }
  const float acc[V] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; i++)
    w[i] = (uint32_t)T::st(acc[2 * i]) | ((uint32_t)T::st(acc[2 * i + 1]) << 16);
  *((uint4 *)(o + (int64_t)j * ostride) + t) = make_uint4(w[0], w[1], w[2], w[3]);
}

static bool scatter_seg_on(void) {
  static int on = -1;
  return mx__env_on("MXC_SCATTER_SEG", &on);
}

/* Whether rows_scatter may read the rows as 16-byte vectors: every
 * non-indexed axis but the last has size 1 (the positions are the last
 * axis, after the indexed one), contiguous in the values and 16-byte
 * aligned, at most RV_THREADS vectors a row. */
static bool rows_vec_ok(const mx_array *out, const mx_array *v, int ax, int64_t count) {
  const int nd = out->ndim;
  const size_t es = mx_dtype_size(out->dtype);
  if ((es != 2 && es != 4) || out->dtype == MX_FLOAT64 || ax != nd - 2) return false;
  for (int d = 0; d < ax; d++)
    if (out->shape[d] != 1) return false;
  const int64_t V = 16 / (int64_t)es;
  return v->strides[nd - 1] == 1 && count % V == 0 && count / V <= RV_THREADS &&
         ((uintptr_t)mx__ddata(v) & 15) == 0 && ((uintptr_t)out->buf->dptr & 15) == 0 &&
         (v->strides[ax] * (int64_t)es) % 16 == 0 && (count * (int64_t)es) % 16 == 0;
}

/* The sort and the runs (out holds a's copy). */
template <class T, class A, class TI>
static int rows_scatter(mx_array *out, const TI *ix, const typename T::S *v, scat_geo g,
                        int64_t count, bool vec) {
  cudaStream_t s = mx__cuda_stream();
  const int n = (int)g.n;
  int bits = 1;
  while (bits < 31 && ((int64_t)1 << bits) < g.dim) bits++;
  size_t cub_bytes = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, cub_bytes, (const int32_t *)NULL,
                                                  (int32_t *)NULL, (const int32_t *)NULL,
                                                  (int32_t *)NULL, n, 0, bits, s);
  int st = mx__cuda_check(e, mx__opname(out));
  if (st) return st;
  const size_t ab = ((size_t)n * sizeof(int32_t) + 255) & ~(size_t)255;
  const bool seg = vec && sizeof(typename T::S) == 2 && n > RV_SEG && scatter_seg_on();
  const int64_t nseg = ((int64_t)n + RV_SEG - 1) / RV_SEG;
  const size_t pb = seg ? (size_t)(2 * nseg * count) * sizeof(float) : 0;
  mx__buffer *tb = mx__cuda_tmp(4 * ab + pb + cub_bytes);
  if (!tb) return mx_last_status();
  char *b = (char *)tb->dptr;
  int32_t *k0 = (int32_t *)b, *k1 = (int32_t *)(b + ab), *p0 = (int32_t *)(b + 2 * ab),
          *p1 = (int32_t *)(b + 3 * ab);
  k_rows_keys<TI><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(ix, g, k0, p0);
  st = mx__cuda_launched(mx__opname(out));
  if (!st)
    st = mx__cuda_check(cub::DeviceRadixSort::SortPairs(b + 4 * ab + pb, cub_bytes, k0, k1, p0,
                                                        p1, n, 0, bits, s),
                        mx__opname(out));
  if (!st) {
    typename T::S *o = (typename T::S *)out->buf->dptr;
    constexpr int V = 16 / sizeof(typename T::S);
    bool done = false;
    if constexpr (sizeof(typename T::S) == 2) {
      if (seg) {
        float *part = (float *)(b + 4 * ab);
        const int nv = (int)(count / V);
        k_rows_seg_vec<T><<<(unsigned)n, RV_THREADS, 0, s>>>(o, k1, p1, v, g.n, g.ostride,
                                                             g.vstep, nv, part);
        k_rows_seg_combine<T><<<(unsigned)(nseg - 1), RV_THREADS, 0, s>>>(o, k1, g.n, g.ostride,
                                                                         nv, part);
        done = true;
      }
    }
    if (!done) {
      if constexpr (sizeof(typename T::S) == 2 || sizeof(typename T::S) == 4) {
        if (vec)
          k_rows_run_vec<T, V><<<(unsigned)n, RV_THREADS, 0, s>>>(o, k1, p1, v, g.n, g.ostride,
                                                                  g.vstep, (int)(count / V));
        else
          k_rows_run<T, A><<<(unsigned)n, RS_THREADS, 0, s>>>(o, k1, p1, v, g, count);
      } else {
        k_rows_run<T, A><<<(unsigned)n, RS_THREADS, 0, s>>>(o, k1, p1, v, g, count);
      }
    }
    st = mx__cuda_launched(mx__opname(out));
  }
  mx__buffer_release(tb); /* reused only by later work of the stream */
  return st;
}

template <class T>
__global__ void k_to_f32(const typename T::S *a, float *o, int64_t n) {
  MX_CUDA_LOOP(i, n) o[i] = (float)T::ld(a[i]);
}
template <class T>
__global__ void k_from_f32(const float *a, typename T::S *o, int64_t n) {
  MX_CUDA_LOOP(i, n) o[i] = T::st(a[i]);
}

static int bad_index(mx_array *out, mx_dtype dt) {
  return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel for index dtype %s", mx__opname(out),
                       mx_dtype_name(dt));
}

#define IDX_DISPATCH(dt, ...)                   \
  switch (dt) {                                 \
    case MX_UINT8: {                            \
      typedef uint8_t TI;                       \
      __VA_ARGS__;                              \
    } break;                                    \
    case MX_UINT32: {                           \
      typedef uint32_t TI;                      \
      __VA_ARGS__;                              \
    } break;                                    \
    case MX_INT32: {                            \
      typedef int32_t TI;                       \
      __VA_ARGS__;                              \
    } break;                                    \
    case MX_INT64: {                            \
      typedef int64_t TI;                       \
      __VA_ARGS__;                              \
    } break;                                    \
    default: break;                             \
  }

static bool idx_ok(mx_dtype dt) {
  return dt == MX_UINT8 || dt == MX_UINT32 || dt == MX_INT32 || dt == MX_INT64;
}

static int k_put_along_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1], *v = in[2];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  if (!idx_ok(idx->dtype)) return bad_index(out, idx->dtype);
  if (v->dtype != out->dtype) return mx__cuda_no_dtype(out, v->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  if ((st = mx__cuda_copy_to_contiguous(a, out->buf->dptr))) return st;
  int64_t count = geo_count(idx, ax);
  if (count == 0 || idx->shape[ax] == 0) return MX_OK;
  scat_geo g = make_geo(out, idx, v, ax);
  size_t es = mx_dtype_size(out->dtype);
  cudaStream_t s = mx__cuda_stream();
  unsigned nb = mx__cuda_blocks(count);
  const void *ip = mx__ddata(idx), *vp = mx__ddata(v);
  void *op = out->buf->dptr;
  if (g.n >= 1024 && g.n <= INT32_MAX && count <= g.n) {
    int64_t total = count * g.n;
    mx__buffer *wb = mx__cuda_tmp(sizeof(int32_t) * (size_t)out->size);
    if (!wb) return mx_last_status();
    int32_t *win = (int32_t *)wb->dptr;
    st = mx__cuda_check(cudaMemsetAsync(win, 0xff, sizeof(int32_t) * (size_t)out->size, s),
                        "put_along_axis"); /* -1: no writer */
    unsigned nt = mx__cuda_blocks(total);
    if (!st) {
      IDX_DISPATCH(idx->dtype, k_put_win<TI><<<nt, MX_CUDA_THREADS, 0, s>>>(win, (const TI *)ip,
                                                                             g, total))
#define PUT_ES(ES, SS)                                                                       \
  if (es == ES) {                                                                            \
    IDX_DISPATCH(idx->dtype, k_put_wins<SS, TI><<<nt, MX_CUDA_THREADS, 0, s>>>(              \
                                 (SS *)op, win, (const TI *)ip, (const SS *)vp, g, total))   \
  }
      PUT_ES(1, uint8_t)
      else PUT_ES(2, uint16_t) else PUT_ES(4, uint32_t) else PUT_ES(8, uint64_t)
#undef PUT_ES
    }
    mx__buffer_release(wb); /* reused only by later work of the same stream */
    return st ? st : mx__cuda_launched(mx__opname(out));
  }
#define PUT_ES(ES, SS)                                                                     \
  if (es == ES) {                                                                          \
    IDX_DISPATCH(idx->dtype, k_put<SS, TI><<<nb, MX_CUDA_THREADS, 0, s>>>(                 \
                                 (SS *)op, (const TI *)ip, (const SS *)vp, g, count))      \
  }
  PUT_ES(1, uint8_t)
  else PUT_ES(2, uint16_t) else PUT_ES(4, uint32_t) else PUT_ES(8, uint64_t)
#undef PUT_ES
  return mx__cuda_launched(mx__opname(out));
}

static int k_scatter_add_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1], *v = in[2];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  if (!idx_ok(idx->dtype)) return bad_index(out, idx->dtype);
  if (v->dtype != out->dtype) return mx__cuda_no_dtype(out, v->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  if ((st = mx__cuda_copy_to_contiguous(a, out->buf->dptr))) return st;
  int64_t count = geo_count(idx, ax);
  if (count == 0 || idx->shape[ax] == 0) return MX_OK;
  scat_geo g = make_geo(out, idx, v, ax);
  cudaStream_t s = mx__cuda_stream();
  /* shares of the destination rows: ~64k threads when the index lists are
   * long and few (each thread keeps >= 8 rows); every thread scans the
   * whole list, so more shares cost more scanning than they hide latency */
  int64_t nr = 1, per = g.dim;
  if (g.n >= 256 && count < 32768 && g.dim >= 16) {
    nr = (65536 + count - 1) / count;
    if (nr > g.dim / 8) nr = g.dim / 8;
    per = (g.dim + nr - 1) / nr;
    nr = (g.dim + per - 1) / per;
  }
  unsigned nb = mx__cuda_blocks(count * nr);
  const void *ip = mx__ddata(idx), *vp = mx__ddata(v);
  void *op = out->buf->dptr;
  int64_t n = out->size;
  /* the index depends on k only, a long list, few positions: the sorted runs */
  bool rows_only = g.n >= 256 && g.n <= INT32_MAX && count <= RS_PP * RS_THREADS &&
                   g.dim <= INT32_MAX && mx_dtype_is_float(out->dtype);
  for (int d = 0; d < g.nd.ndim && rows_only; d++)
    rows_only = g.nd.st[1][d] == 0 || g.nd.shape[d] == 1;
  if (rows_only) {
    int rs = MX_ERR_NO_KERNEL;
    const bool vec = rows_vec_ok(out, v, ax, count);
    switch (out->dtype) {
#define RUNS(TAG, A)                                                                       \
  IDX_DISPATCH(idx->dtype, rs = rows_scatter<TAG, A, TI>(out, (const TI *)ip,                \
                                                         (const TAG::S *)vp, g, count, vec))
      case MX_FLOAT32: RUNS(TF32, float); break;
      case MX_FLOAT64: RUNS(TF64, double); break;
      case MX_FLOAT16: RUNS(TF16, float); break;
      case MX_BFLOAT16: RUNS(TBF16, float); break;
      default: break;
#undef RUNS
    }
    return rs;
  }
  switch (out->dtype) {
#define PLAIN(DT, TAG, A)                                                                  \
  case DT:                                                                                 \
    IDX_DISPATCH(idx->dtype, k_add<TAG, A, TI><<<nb, MX_CUDA_THREADS, 0, s>>>(             \
                                 (A *)op, (const TI *)ip, (const TAG::S *)vp, g, count, nr, per)) \
    break;
    PLAIN(MX_BOOL, TBool, uint8_t)
    PLAIN(MX_UINT8, TU8, uint8_t)
    PLAIN(MX_UINT32, TU32, uint32_t)
    PLAIN(MX_INT32, TI32, int32_t)
    PLAIN(MX_INT64, TI64, int64_t)
    PLAIN(MX_FLOAT32, TF32, float)
    PLAIN(MX_FLOAT64, TF64, double)
#undef PLAIN
#define HALF(DT, TAG)                                                                      \
  case DT: {                                                                               \
    mx__buffer *acc = mx__cuda_tmp((size_t)n * sizeof(float));                             \
    if (!acc) return mx_last_status();                                                     \
    float *ap = (float *)acc->dptr;                                                        \
    k_to_f32<TAG><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>((const TAG::S *)op, ap, n); \
    IDX_DISPATCH(idx->dtype, k_add<TAG, float, TI><<<nb, MX_CUDA_THREADS, 0, s>>>(         \
                                 ap, (const TI *)ip, (const TAG::S *)vp, g, count, nr, per)) \
    k_from_f32<TAG><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(ap, (TAG::S *)op, n);   \
    mx__buffer_release(acc);                                                               \
    break;                                                                                 \
  }
    HALF(MX_FLOAT16, TF16)
    HALF(MX_BFLOAT16, TBF16)
#undef HALF
    default: return mx__cuda_no_dtype(out, out->dtype);
  }
  return mx__cuda_launched(mx__opname(out));
}

void mx__cuda_register_indexing(mx__kernel_fn *k) {
  k[MX_OP_PUT_ALONG_AXIS] = k_put_along_axis;
  k[MX_OP_SCATTER_ADD_AXIS] = k_scatter_add_axis;
}
