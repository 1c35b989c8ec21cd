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
 * the token ids broadcast over the model dimension): a block owns R
 * destination rows and every position (the count non-indexed elements).
 * It walks the index list in tiles, compacts the k that land in its rows
 * in order (a block-wide prefix sum), and adds those value rows into its
 * accumulators in shared memory — each destination element still sums in
 * index order (the bits of k_add), but the list is read once per block
 * instead of once per thread and share. Measured in a training step (H200,
 * 32,768 ids, 8,457 x 768): ~3.1 ms, about what the per-thread scan took —
 * a frequent token's rows collect thousands of hits in one block, each
 * waiting for its value row's load; loading several hits' rows before
 * adding them, or splitting a row's hits over warps with partial sums
 * added in a fixed order, is the next step. */
constexpr int AR_TILE = 1024, AR_THREADS = 256;

template <class T, class A, class TI>
__global__ void __launch_bounds__(AR_THREADS)
    k_add_rows(A *o, const TI *ix, const typename T::S *v, scat_geo g, int64_t count, int R) {
  extern __shared__ __align__(16) unsigned char arsm[];
  A *acc = (A *)arsm;                               /* R x count */
  int32_t *lk = (int32_t *)(acc + (int64_t)R * count); /* matches of a tile: k */
  int32_t *lj = lk + AR_TILE;                        /* and their row */
  __shared__ int32_t wsum[AR_THREADS / 32 + 1];
  const int64_t v0 = (int64_t)blockIdx.x * R;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  constexpr int PP = 8; /* positions a thread: count <= PP * AR_THREADS */
  int64_t oo[PP], vo[PP];
#pragma unroll
  for (int q = 0; q < PP; q++) {
    const int64_t p = t + (int64_t)q * AR_THREADS;
    int64_t off[3] = {0, 0, 0};
    if (p < count) mx__nd_offsets<3>(g.nd, p, off);
    oo[q] = off[0];
    vo[q] = off[2];
    for (int r = 0; r < R && p < count; r++)
      acc[r * count + p] = v0 + r < g.dim ? o[off[0] + (v0 + r) * g.ostride] : (A)0;
  }
  for (int64_t k0 = 0; k0 < g.n; k0 += AR_TILE) {
    /* thread t checks entries 4t .. 4t + 3 of the tile, in order */
    int32_t mk[4], mj[4];
    int c = 0;
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int64_t k = k0 + 4 * t + e;
      if (k < g.n) {
        const int64_t j = norm_index((int64_t)ix[k * g.istep], g.dim) - v0;
        if (j >= 0 && j < R) mk[c] = (int32_t)(k - k0), mj[c] = (int32_t)j, c++;
      }
    }
    int incl = c; /* the block's exclusive prefix of c */
#pragma unroll
    for (int o2 = 1; o2 < 32; o2 <<= 1) {
      int y = __shfl_up_sync(0xffffffffu, incl, o2);
      if (lane >= o2) incl += y;
    }
    __syncthreads(); /* the previous tile's list is consumed */
    if (lane == 31) wsum[warp] = incl;
    __syncthreads();
    int base = 0, total = 0;
    for (int w = 0; w < AR_THREADS / 32; w++) {
      if (w < warp) base += wsum[w];
      total += wsum[w];
    }
    base += incl - c;
    for (int e = 0; e < c; e++) lk[base + e] = mk[e], lj[base + e] = mj[e];
    __syncthreads();
    for (int m = 0; m < total; m++) {
      const int64_t k = k0 + lk[m];
      A *row = acc + (int64_t)lj[m] * count;
#pragma unroll
      for (int q = 0; q < PP; q++) {
        const int64_t p = t + (int64_t)q * AR_THREADS;
        if (p < count) acc_op<T, A>::add(row[p], v[vo[q] + k * g.vstep]);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < PP; q++) {
    const int64_t p = t + (int64_t)q * AR_THREADS;
    for (int r = 0; r < R && p < count && v0 + r < g.dim; r++)
      o[oo[q] + (v0 + r) * g.ostride] = acc[r * count + p];
  }
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
  /* the index depends on k only, a long list, few positions: k_add_rows */
  bool rows_only = g.n >= 256 && g.n <= INT32_MAX && count <= 8 * AR_THREADS &&
                   mx_dtype_is_float(out->dtype);
  for (int d = 0; d < g.nd.ndim && rows_only; d++)
    rows_only = g.nd.st[1][d] == 0 || g.nd.shape[d] == 1;
  if (rows_only) {
    const size_t as = out->dtype == MX_FLOAT64 ? sizeof(double) : sizeof(float);
    int R = (int)MX_MAX(1, MX_MIN(32, (int64_t)(32768 / as) / count));
    const size_t smem = (size_t)R * (size_t)count * as + 2 * sizeof(int32_t) * AR_TILE;
    const unsigned nbr = (unsigned)((g.dim + R - 1) / R);
    mx__buffer *acc = NULL;
    switch (out->dtype) {
#define ROWS(TAG, A, P)                                                                      \
  IDX_DISPATCH(idx->dtype, k_add_rows<TAG, A, TI><<<nbr, AR_THREADS, smem, s>>>(             \
                               (A *)(P), (const TI *)ip, (const TAG::S *)vp, g, count, R))
      case MX_FLOAT32: ROWS(TF32, float, op); break;
      case MX_FLOAT64: ROWS(TF64, double, op); break;
      case MX_FLOAT16:
      case MX_BFLOAT16: {
        if (!(acc = mx__cuda_tmp((size_t)n * sizeof(float)))) return mx_last_status();
        float *ap = (float *)acc->dptr;
        if (out->dtype == MX_FLOAT16) {
          k_to_f32<TF16><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>((const uint16_t *)op, ap, n);
          ROWS(TF16, float, ap);
          k_from_f32<TF16><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(ap, (uint16_t *)op, n);
        } else {
          k_to_f32<TBF16><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>((const uint16_t *)op, ap, n);
          ROWS(TBF16, float, ap);
          k_from_f32<TBF16><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(ap, (uint16_t *)op, n);
        }
        mx__buffer_release(acc);
        break;
      }
      default: break;
#undef ROWS
    }
    return mx__cuda_launched(mx__opname(out));
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
