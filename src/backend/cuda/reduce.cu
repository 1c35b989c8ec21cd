/* reduce.cu — CUDA reductions (sum/prod/max/min/all/any over any axes),
 * argmax/argmin, cumsum, and softmax/log_softmax/logsumexp over the last
 * axis.
 *
 * As on the CPU, reductions accumulate in double (float inputs) or int64
 * (integers, wrapping) and convert once to the output dtype. Each output
 * element is reduced by one block (long reductions) or one thread (short
 * ones) in a fixed order, so results are deterministic run to run. */
#include "cuda_common.cuh"
#include "ops/reduce_params.h"

typedef enum { R_SUM, R_PROD, R_MAX, R_MIN, R_ALL, R_ANY } rop;

static rop rop_of(mx__op_id id) {
  switch (id) {
    case MX_OP_SUM: return R_SUM;
    case MX_OP_PROD: return R_PROD;
    case MX_OP_MAX: return R_MAX;
    case MX_OP_MIN: return R_MIN;
    case MX_OP_ALL: return R_ALL;
    default: return R_ANY;
  }
}

__device__ __forceinline__ double comb(rop op, double a, double b) {
  switch (op) {
    case R_SUM: return a + b;
    case R_PROD: return a * b;
    case R_MAX: return (a != a || b != b) ? (double)NAN : a > b ? a : b;
    case R_MIN: return (a != a || b != b) ? (double)NAN : a < b ? a : b;
    case R_ALL: return (a != 0) && (b != 0);
    default: return (a != 0) || (b != 0);
  }
}
__device__ __forceinline__ int64_t comb(rop op, int64_t a, int64_t b) {
  switch (op) {
    case R_SUM: return (int64_t)((uint64_t)a + (uint64_t)b);
    case R_PROD: return (int64_t)((uint64_t)a * (uint64_t)b);
    case R_MAX: return a > b ? a : b;
    case R_MIN: return a < b ? a : b;
    case R_ALL: return (a != 0) && (b != 0);
    default: return (a != 0) || (b != 0);
  }
}
__device__ __forceinline__ void init_acc(rop op, double *v) {
  *v = op == R_SUM || op == R_ANY ? 0.0 : op == R_MAX ? -(double)INFINITY
       : op == R_MIN ? (double)INFINITY : 1.0;
}
__device__ __forceinline__ void init_acc(rop op, int64_t *v) {
  *v = op == R_SUM || op == R_ANY ? 0 : op == R_MAX ? INT64_MIN : op == R_MIN ? INT64_MAX : 1;
}

/* acc type per input tag */
template <class T> struct acc_of { typedef int64_t A; };
template <> struct acc_of<TF16> { typedef double A; };
template <> struct acc_of<TBF16> { typedef double A; };
template <> struct acc_of<TF32> { typedef double A; };
template <> struct acc_of<TF64> { typedef double A; };

/* outer: the kept dims (operand 0: input strides); inner: the reduced dims. */
template <class T>
__global__ void k_reduce_block(const typename T::S *x, mx__nd<1> outer, mx__nd<1> inner,
                               int64_t nout, int64_t r, rop op, typename acc_of<T>::A *acc) {
  typedef typename acc_of<T>::A A;
  __shared__ A sh[MX_CUDA_THREADS];
  for (int64_t o = blockIdx.x; o < nout; o += gridDim.x) {
    int64_t base;
    mx__nd_offsets<1>(outer, o, &base);
    A v;
    init_acc(op, &v);
    for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
      int64_t off;
      mx__nd_offsets<1>(inner, j, &off);
      v = comb(op, v, (A)T::ld(x[base + off]));
    }
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if ((int)threadIdx.x < s) sh[threadIdx.x] = comb(op, sh[threadIdx.x], sh[threadIdx.x + s]);
      __syncthreads();
    }
    if (threadIdx.x == 0) acc[o] = sh[0];
    __syncthreads();
  }
}

template <class T>
__global__ void k_reduce_thread(const typename T::S *x, mx__nd<1> outer, mx__nd<1> inner,
                                int64_t nout, int64_t r, rop op, typename acc_of<T>::A *acc) {
  typedef typename acc_of<T>::A A;
  MX_CUDA_LOOP(o, nout) {
    int64_t base;
    mx__nd_offsets<1>(outer, o, &base);
    A v;
    init_acc(op, &v);
    for (int64_t j = 0; j < r; j++) {
      int64_t off;
      mx__nd_offsets<1>(inner, j, &off);
      v = comb(op, v, (A)T::ld(x[base + off]));
    }
    acc[o] = v;
  }
}

/* Column reductions (the kept dims innermost in memory, e.g. the weight
 * gradient of a norm: sum over (rows, D) -> D): consecutive threads take
 * consecutive outputs, so every step of the reduced loop reads one
 * coalesced run; blockIdx.y takes a fixed share of the reduced range and
 * writes a partial, summed in split order by k_reduce_splits (the split
 * count depends on the shape only, so results are the same run to run). */
template <class T>
__global__ void k_reduce_cols(const typename T::S *x, mx__nd<1> outer, mx__nd<1> inner,
                              int64_t nout, int64_t r, int64_t chunk, rop op,
                              typename acc_of<T>::A *part) {
  typedef typename acc_of<T>::A A;
  int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= nout) return;
  int64_t base;
  mx__nd_offsets<1>(outer, o, &base);
  int64_t j0 = (int64_t)blockIdx.y * chunk, j1 = j0 + chunk < r ? j0 + chunk : r;
  A v;
  init_acc(op, &v);
  for (int64_t j = j0; j < j1; j++) {
    int64_t off;
    mx__nd_offsets<1>(inner, j, &off);
    v = comb(op, v, (A)T::ld(x[base + off]));
  }
  part[(int64_t)blockIdx.y * nout + o] = v;
}

/* Few outputs of long reductions (a sum of squares over a whole
 * gradient): block (s, o) reduces share s of output o's range into
 * part[s * nout + o]; k_reduce_splits adds the shares in order. */
template <class T>
__global__ void k_reduce_long(const typename T::S *x, mx__nd<1> outer, mx__nd<1> inner,
                              int64_t nout, int64_t r, int64_t chunk, rop op,
                              typename acc_of<T>::A *part) {
  typedef typename acc_of<T>::A A;
  __shared__ A sh[MX_CUDA_THREADS];
  const int64_t o = blockIdx.y, j0 = (int64_t)blockIdx.x * chunk;
  const int64_t j1 = j0 + chunk < r ? j0 + chunk : r;
  int64_t base;
  mx__nd_offsets<1>(outer, o, &base);
  A v;
  init_acc(op, &v);
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    int64_t off;
    mx__nd_offsets<1>(inner, j, &off);
    v = comb(op, v, (A)T::ld(x[base + off]));
  }
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int st = blockDim.x / 2; st > 0; st >>= 1) {
    if ((int)threadIdx.x < st) sh[threadIdx.x] = comb(op, sh[threadIdx.x], sh[threadIdx.x + st]);
    __syncthreads();
  }
  if (threadIdx.x == 0) part[(int64_t)blockIdx.x * nout + o] = sh[0];
}

template <class A>
__global__ void k_reduce_splits(const A *part, int64_t nout, int nsplit, rop op, A *acc) {
  MX_CUDA_LOOP(o, nout) {
    A v = part[o];
    for (int s = 1; s < nsplit; s++) v = comb(op, v, part[(int64_t)s * nout + o]);
    acc[o] = v;
  }
}

/* out[i] = TO(acc[i]) with the CPU's conversion rules */
template <class TO, class A>
__global__ void k_convert(typename TO::S *o, const A *acc, int64_t n, bool logical) {
  MX_CUDA_LOOP(i, n) {
    if (logical) o[i] = TO::st((int64_t)(acc[i] != 0));
    else o[i] = TO::st(acc[i]);
  }
}

template <class A>
static int convert_out(mx_array *out, const A *acc, bool logical) {
  int st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(out->dtype, {
    k_convert<T, A><<<mx__cuda_blocks(out->size), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
        (T::S *)out->buf->dptr, acc, out->size, logical);
    st = mx__cuda_launched(mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, out->dtype);
  return st;
}

static mx__nd<1> nd1(const int64_t *shape, int ndim, const int64_t *strides) {
  const int64_t *sp[1] = {strides};
  return mx__nd_make<1>(shape, ndim, sp);
}

template <class T>
static int reduce_typed(mx_array *out, mx_array *a, uint32_t mask, rop op) {
  typedef typename acc_of<T>::A A;
  int64_t osh[MX_MAX_NDIM] = {0}, ost[MX_MAX_NDIM] = {0}, ish[MX_MAX_NDIM] = {0}, ist[MX_MAX_NDIM] = {0};
  int on = 0, inn = 0;
  for (int d = 0; d < a->ndim; d++) {
    if ((mask >> d) & 1u) {
      ish[inn] = a->shape[d];
      ist[inn++] = a->strides[d];
    } else {
      osh[on] = a->shape[d];
      ost[on++] = a->strides[d];
    }
  }
  mx__nd<1> outer = nd1(osh, on, ost), inner = nd1(ish, inn, ist);
  int64_t nout = out->size, r = mx__shape_size(ish, inn);
  mx__buffer *tmp = mx__cuda_tmp(sizeof(A) * (size_t)(nout ? nout : 1));
  if (!tmp) return mx_last_status();
  A *acc = (A *)tmp->dptr;
  const typename T::S *x = (const typename T::S *)mx__ddata(a);
  cudaStream_t s = mx__cuda_stream();
  if (on >= 1 && ost[on - 1] == 1 && osh[on - 1] >= 32 && nout >= 64 && r >= 64 &&
      nout <= (int64_t)65535 * MX_CUDA_THREADS) {
    /* column reduction: ~256k threads in all, at least 32 steps each */
    int64_t want = (262144 + nout - 1) / nout, most = r / 32;
    int64_t nsplit = want < most ? want : most;
    if (nsplit < 1) nsplit = 1;
    if (nsplit > 65535) nsplit = 65535;
    int64_t chunk = (r + nsplit - 1) / nsplit;
    nsplit = (r + chunk - 1) / chunk;
    mx__buffer *pb = mx__cuda_tmp(sizeof(A) * (size_t)(nsplit * nout));
    if (!pb) {
      mx__buffer_release(tmp);
      return mx_last_status();
    }
    dim3 grid((unsigned)((nout + MX_CUDA_THREADS - 1) / MX_CUDA_THREADS), (unsigned)nsplit);
    k_reduce_cols<T><<<grid, MX_CUDA_THREADS, 0, s>>>(x, outer, inner, nout, r, chunk, op,
                                                       (A *)pb->dptr);
    k_reduce_splits<A><<<mx__cuda_blocks(nout), MX_CUDA_THREADS, 0, s>>>(
        (const A *)pb->dptr, nout, (int)nsplit, op, acc);
    mx__buffer_release(pb); /* reused only by later work of the same stream */
  } else if (r >= 65536 && nout <= 1024) {
    /* long reductions to few outputs: ~2048 blocks, >= 8192 elements each */
    int64_t want = (2048 + nout - 1) / nout, most = r / 8192;
    int64_t nsplit = want < most ? want : most;
    if (nsplit < 1) nsplit = 1;
    int64_t chunk = (r + nsplit - 1) / nsplit;
    nsplit = (r + chunk - 1) / chunk;
    mx__buffer *pb = mx__cuda_tmp(sizeof(A) * (size_t)(nsplit * nout));
    if (!pb) {
      mx__buffer_release(tmp);
      return mx_last_status();
    }
    dim3 grid((unsigned)nsplit, (unsigned)nout);
    k_reduce_long<T><<<grid, MX_CUDA_THREADS, 0, s>>>(x, outer, inner, nout, r, chunk, op,
                                                       (A *)pb->dptr);
    k_reduce_splits<A><<<mx__cuda_blocks(nout), MX_CUDA_THREADS, 0, s>>>(
        (const A *)pb->dptr, nout, (int)nsplit, op, acc);
    mx__buffer_release(pb); /* reused only by later work of the same stream */
  } else if (r >= 128) {
    unsigned g = (unsigned)(nout < 65535 * 8 ? nout : 65535 * 8);
    k_reduce_block<T><<<g, MX_CUDA_THREADS, 0, s>>>(x, outer, inner, nout, r, op, acc);
  } else {
    k_reduce_thread<T><<<mx__cuda_blocks(nout), MX_CUDA_THREADS, 0, s>>>(x, outer, inner, nout, r,
                                                                         op, acc);
  }
  int st = mx__cuda_launched(mx__opname(out));
  if (!st) st = convert_out<A>(out, acc, op == R_ALL || op == R_ANY);
  mx__buffer_release(tmp);
  return st;
}

static int k_reduce(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__reduce_params *p = MX__PARAMS(out, mx__reduce_params);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(a->dtype, st = reduce_typed<T>(out, a, p->mask, rop_of(out->op->id));)
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, a->dtype);
  return st;
}

/* ---- argmax / argmin ---------------------------------------------------------- */
template <class T>
__global__ void k_argreduce(const typename T::S *x, mx__nd<1> outer, int64_t nout, int64_t len,
                            int64_t stride, bool is_max, uint32_t *o) {
  MX_CUDA_LOOP(t, nout) {
    int64_t base;
    mx__nd_offsets<1>(outer, t, &base);
    int64_t best = 0;
    double bv = (double)T::ld(x[base]);
    if (bv == bv)
      for (int64_t r = 1; r < len; r++) {
        double v = (double)T::ld(x[base + r * stride]);
        if (v != v) { /* the first NaN wins */
          best = r;
          break;
        }
        if (is_max ? v > bv : v < bv) {
          bv = v;
          best = r;
        }
      }
    o[t] = (uint32_t)best;
  }
}

/* Long rows (e.g. argmax over a vocabulary): one block per output; each
 * thread scans a strided subset in increasing order, then the block keeps
 * the best candidate with the same rule as the serial scan: the first NaN,
 * else the extreme value, ties to the smallest index. */
#define ARG_THREADS 256
__device__ __forceinline__ bool arg_better(bool an, double av, int64_t ai, bool bn, double bv,
                                           int64_t bi, bool is_max) {
  if (an != bn) return an;
  if (an || av == bv) return ai < bi;
  return is_max ? av > bv : av < bv;
}

/* Very long rows are split over gridDim.x blocks of `chunk` elements each;
 * a block writes its candidate (value, index, NaN) to part, and
 * k_argreduce_pick keeps the best of a row's candidates by the same rule
 * (a total order, so the grouping does not change the answer). */
struct arg_part {
  double v;
  int64_t i;
  int n;
};

template <class T>
__global__ void k_argreduce_rows(const typename T::S *x, mx__nd<1> outer, int64_t len,
                                 int64_t stride, bool is_max, uint32_t *o, int64_t chunk,
                                 arg_part *part) {
  __shared__ double sv[ARG_THREADS];
  __shared__ int64_t si[ARG_THREADS];
  __shared__ bool sn[ARG_THREADS];
  int64_t base;
  const int64_t row = part ? blockIdx.y : blockIdx.x;
  mx__nd_offsets<1>(outer, row, &base);
  const int64_t r0 = part ? (int64_t)blockIdx.x * chunk : 0;
  const int64_t r1 = part && r0 + chunk < len ? r0 + chunk : len;
  bool bn = false;
  double bv = 0;
  int64_t bi = -1;
  for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
    double v = (double)T::ld(x[base + r * stride]);
    bool n = v != v;
    if (bi < 0 || arg_better(n, v, r, bn, bv, bi, is_max)) {
      bn = n;
      bv = v;
      bi = r;
    }
    if (n) break; /* later NaNs of this thread come after */
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  sn[threadIdx.x] = bn;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      int j = threadIdx.x + s;
      if (si[j] >= 0 && (si[threadIdx.x] < 0 || arg_better(sn[j], sv[j], si[j], sn[threadIdx.x],
                                                             sv[threadIdx.x], si[threadIdx.x],
                                                             is_max))) {
        sv[threadIdx.x] = sv[j];
        si[threadIdx.x] = si[j];
        sn[threadIdx.x] = sn[j];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (part) part[row * gridDim.x + blockIdx.x] = arg_part{sv[0], si[0], sn[0] ? 1 : 0};
    else o[row] = (uint32_t)(si[0] < 0 ? 0 : si[0]);
  }
}

/* One block per row: the candidates are read in parallel (a thread
 * walking them one after another waited on each load in turn). */
__global__ void k_argreduce_pick(const arg_part *part, int nsplit, int64_t rows, bool is_max,
                                 uint32_t *o) {
  __shared__ arg_part sp[ARG_THREADS];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    arg_part b = {0, -1, 0};
    for (int k = threadIdx.x; k < nsplit; k += blockDim.x) {
      arg_part c = part[row * nsplit + k];
      if (c.i >= 0 && (b.i < 0 || arg_better(c.n, c.v, c.i, b.n, b.v, b.i, is_max))) b = c;
    }
    sp[threadIdx.x] = b;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if ((int)threadIdx.x < s) {
        arg_part c = sp[threadIdx.x + s], d = sp[threadIdx.x];
        if (c.i >= 0 && (d.i < 0 || arg_better(c.n, c.v, c.i, d.n, d.v, d.i, is_max)))
          sp[threadIdx.x] = c;
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) o[row] = (uint32_t)(sp[0].i < 0 ? 0 : sp[0].i);
    __syncthreads();
  }
}

static int k_argreduce_op(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int ax = MX__PARAMS(out, mx__axis_params)->axis;
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int64_t osh[MX_MAX_NDIM] = {0}, ost[MX_MAX_NDIM] = {0};
  int on = 0;
  for (int d = 0; d < a->ndim; d++)
    if (d != ax) {
      osh[on] = a->shape[d];
      ost[on++] = a->strides[d];
    }
  mx__nd<1> outer = nd1(osh, on, ost);
  int64_t len = a->shape[ax], stride = a->strides[ax];
  bool is_max = out->op->id == MX_OP_ARGMAX;
  st = MX_ERR_NO_KERNEL;
  bool rows = len >= 1024 && out->size <= 2147483647LL;
  /* a few very long rows: split each over blocks of ARG_CHUNK elements
   * (4 a thread: a vocabulary of 128k is 126 blocks) */
  const int64_t ARG_CHUNK = 1024;
  int64_t nsplit = (len + ARG_CHUNK - 1) / ARG_CHUNK;
  mx__buffer *pb = NULL;
  if (rows && len >= 16 * ARG_CHUNK && out->size <= 65535 && nsplit <= 65535) {
    if (!(pb = mx__cuda_tmp(sizeof(arg_part) * (size_t)(nsplit * out->size))))
      return mx_last_status();
  }
  cudaStream_t cs = mx__cuda_stream();
  MX_CUDA_DISPATCH_ALL(a->dtype, {
    if (pb) {
      arg_part *part = (arg_part *)pb->dptr;
      k_argreduce_rows<T><<<dim3((unsigned)nsplit, (unsigned)out->size), ARG_THREADS, 0, cs>>>(
          (const T::S *)mx__ddata(a), outer, len, stride, is_max, NULL, ARG_CHUNK, part);
      k_argreduce_pick<<<(unsigned)out->size, ARG_THREADS, 0, cs>>>(
          part, (int)nsplit, out->size, is_max, (uint32_t *)out->buf->dptr);
    } else if (rows)
      k_argreduce_rows<T><<<(unsigned)out->size, ARG_THREADS, 0, cs>>>(
          (const T::S *)mx__ddata(a), outer, len, stride, is_max, (uint32_t *)out->buf->dptr,
          0, NULL);
    else
      k_argreduce<T><<<mx__cuda_blocks(out->size), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
          (const T::S *)mx__ddata(a), outer, out->size, len, stride, is_max,
          (uint32_t *)out->buf->dptr);
    st = mx__cuda_launched(mx__opname(out));
  })
  if (pb) mx__buffer_release(pb); /* reused only by later work of the same stream */
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, a->dtype);
  return st;
}

/* ---- cumsum -------------------------------------------------------------------------- */
/* One thread per line; outer: operand 0 = input strides, 1 = output (row). */
template <class T>
__global__ void k_cumsum(const typename T::S *x, typename T::S *o, mx__nd<2> outer, int64_t nlines,
                         int64_t len, int64_t xs, int64_t os, bool reverse, bool inclusive) {
  typedef typename acc_of<T>::A A;
  MX_CUDA_LOOP(t, nlines) {
    int64_t off[2];
    mx__nd_offsets<2>(outer, t, off);
    A s = 0;
    for (int64_t r0 = 0; r0 < len; r0++) {
      int64_t r = reverse ? len - 1 - r0 : r0;
      A v = (A)T::ld(x[off[0] + r * xs]);
      if (inclusive) s = comb(R_SUM, s, v);
      o[off[1] + r * os] = T::st(s);
      if (!inclusive) s = comb(R_SUM, s, v);
    }
  }
}

/* Long lines (a sampler's top-p over a whole vocabulary): one block per
 * line; thread i sums the i-th of CS_THREADS consecutive runs of the line,
 * thread 0 scans the run totals in order, then every thread rewalks its run
 * from its prefix.
 * Deterministic; float sums are grouped differently from the serial walk
 * (both in the accumulation type: double for floats). */
#define CS_THREADS 256
template <class T>
__global__ void __launch_bounds__(CS_THREADS)
    k_cumsum_long(const typename T::S *x, typename T::S *o, mx__nd<2> outer, int64_t len,
                  int64_t xs, int64_t os, bool reverse, bool inclusive) {
  typedef typename acc_of<T>::A A;
  __shared__ A pre[CS_THREADS];
  int64_t off[2];
  mx__nd_offsets<2>(outer, blockIdx.x, off);
  const int64_t run = (len + CS_THREADS - 1) / CS_THREADS;
  const int64_t a = threadIdx.x * run, b = a + run < len ? a + run : len;
  A s = 0;
  for (int64_t r0 = a; r0 < b; r0++) {
    int64_t r = reverse ? len - 1 - r0 : r0;
    s = comb(R_SUM, s, (A)T::ld(x[off[0] + r * xs]));
  }
  pre[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    A acc = 0;
    for (int i = 0; i < CS_THREADS; i++) {
      A v = pre[i];
      pre[i] = acc;
      acc = comb(R_SUM, acc, v);
    }
  }
  __syncthreads();
  s = pre[threadIdx.x];
  for (int64_t r0 = a; r0 < b; r0++) {
    int64_t r = reverse ? len - 1 - r0 : r0;
    A v = (A)T::ld(x[off[0] + r * xs]);
    if (inclusive) s = comb(R_SUM, s, v);
    o[off[1] + r * os] = T::st(s);
    if (!inclusive) s = comb(R_SUM, s, v);
  }
}

static int k_cumsum_op(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__scan_params *p = MX__PARAMS(out, mx__scan_params);
  if (a->dtype != out->dtype) return mx__cuda_no_dtype(out, a->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int64_t sh[MX_MAX_NDIM] = {0}, xs[MX_MAX_NDIM] = {0}, os[MX_MAX_NDIM] = {0};
  int n = 0;
  for (int d = 0; d < a->ndim; d++)
    if (d != p->axis) {
      sh[n] = a->shape[d];
      xs[n] = a->strides[d];
      os[n++] = out->strides[d];
    }
  const int64_t *sp[2] = {xs, os};
  mx__nd<2> outer = mx__nd_make<2>(sh, n, sp);
  int64_t len = a->shape[p->axis], nlines = out->size / (len ? len : 1);
  st = MX_ERR_NO_KERNEL;
  if (len >= 4 * CS_THREADS && nlines <= 65535 && nlines * 8 < len) {
    MX_CUDA_DISPATCH_ALL(a->dtype, {
      k_cumsum_long<T><<<(unsigned)nlines, CS_THREADS, 0, mx__cuda_stream()>>>(
          (const T::S *)mx__ddata(a), (T::S *)out->buf->dptr, outer, len, a->strides[p->axis],
          out->strides[p->axis], p->reverse != 0, p->inclusive != 0);
      st = mx__cuda_launched("cumsum");
    })
    if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, a->dtype);
    return st;
  }
  MX_CUDA_DISPATCH_ALL(a->dtype, {
    k_cumsum<T><<<mx__cuda_blocks(nlines), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
        (const T::S *)mx__ddata(a), (T::S *)out->buf->dptr, outer, nlines, len,
        a->strides[p->axis], out->strides[p->axis], p->reverse != 0, p->inclusive != 0);
    st = mx__cuda_launched("cumsum");
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, a->dtype);
  return st;
}

/* ---- softmax / log_softmax / logsumexp over the last axis ---------------------------- */
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }

/* One block per row; compute type C (f32, or f64 for f64). The max
 * ignores nothing: a NaN anywhere makes the shift 0 so NaN propagates
 * through the sum, as on the CPU. */
template <class T, class C>
__global__ void k_softmax(const typename T::S *x, typename T::S *o, mx__nd<1> rows_nd,
                          int64_t rows, int64_t len, int64_t xs, int mode) {
  __shared__ C sh[MX_CUDA_THREADS];
  __shared__ int nan_sh[MX_CUDA_THREADS];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t base;
    mx__nd_offsets<1>(rows_nd, row, &base);
    C m = -(C)INFINITY;
    int has_nan = 0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      C v = (C)T::ld(x[base + i * xs]);
      if (v != v) has_nan = 1;
      else if (v > m) m = v;
    }
    sh[threadIdx.x] = m;
    nan_sh[threadIdx.x] = has_nan;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if ((int)threadIdx.x < s) {
        C b = sh[threadIdx.x + s];
        if (b > sh[threadIdx.x]) sh[threadIdx.x] = b;
        nan_sh[threadIdx.x] |= nan_sh[threadIdx.x + s];
      }
      __syncthreads();
    }
    m = sh[0];
    if (nan_sh[0] || m == -(C)INFINITY) m = 0;
    __syncthreads();
    C s = 0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
      s += m_exp((C)T::ld(x[base + i * xs]) - m);
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
      if ((int)threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
      __syncthreads();
    }
    s = sh[0];
    __syncthreads();
    if (mode == 0) {
      C inv = (C)1 / s;
      for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
        o[row * len + i] = T::st(m_exp((C)T::ld(x[base + i * xs]) - m) * inv);
    } else {
      C lse = m + m_log(s);
      if (mode == 2) {
        if (threadIdx.x == 0) o[row] = T::st(lse);
      } else {
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
          o[row * len + i] = T::st((C)T::ld(x[base + i * xs]) - lse);
      }
    }
  }
}

static int k_softmax_family(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int mode = out->op->id == MX_OP_SOFTMAX ? 0 : out->op->id == MX_OP_LOG_SOFTMAX ? 1 : 2;
  if (a->dtype != out->dtype || !mx_dtype_is_float(a->dtype)) return mx__cuda_no_dtype(out, a->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int nd = a->ndim;
  int64_t len = nd ? a->shape[nd - 1] : 1, xs = nd ? a->strides[nd - 1] : 1;
  int64_t rows = len ? a->size / len : 0;
  if (rows == 0) return MX_OK;
  mx__nd<1> rnd = nd1(a->shape, nd ? nd - 1 : 0, a->strides);
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  cudaStream_t s = mx__cuda_stream();
  st = MX_ERR_NO_KERNEL;
  switch (a->dtype) {
#define C(DT, TAG, CT)                                                                  \
  case DT:                                                                              \
    k_softmax<TAG, CT><<<g, MX_CUDA_THREADS, 0, s>>>((const TAG::S *)mx__ddata(a),      \
                                                     (TAG::S *)out->buf->dptr, rnd, rows, len, xs, mode); \
    st = mx__cuda_launched(mx__opname(out));                                            \
    break;
    C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
    C(MX_FLOAT64, TF64, double)
#undef C
    default: return mx__cuda_no_dtype(out, a->dtype);
  }
  return st;
}

void mx__cuda_register_reduce(mx__kernel_fn *k) {
  k[MX_OP_SUM] = k[MX_OP_PROD] = k[MX_OP_MAX] = k[MX_OP_MIN] = k_reduce;
  k[MX_OP_ALL] = k[MX_OP_ANY] = k_reduce;
  k[MX_OP_ARGMAX] = k[MX_OP_ARGMIN] = k_argreduce_op;
  k[MX_OP_CUMSUM] = k_cumsum_op;
  k[MX_OP_SOFTMAX] = k[MX_OP_LOG_SOFTMAX] = k[MX_OP_LOGSUMEXP] = k_softmax_family;
}
