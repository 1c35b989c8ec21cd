/* sort.cu — CUDA kernels of sort, argsort, partition and argpartition.
 *
 * Rows (along the axis) of up to 2048 elements:
 *
 * Values become unsigned 64-bit keys in NumPy's order (floats: -0.0 folded
 * onto +0.0, NaNs last; signed integers: sign bit flipped), paired with
 * their positions; one block sorts a row in shared memory with a bitonic
 * network on (key, position), which gives the stable order. Values are
 * gathered from the input by position, so their bits survive. partition /
 * argpartition find the kth key that way, then write the smaller, equal and
 * larger elements, each group in input order — the CPU kernel's layout.
 *
 * Longer rows: the same keys (32-bit for dtypes of up to 4 bytes, else
 * 64-bit) and positions are written to a temporary and sorted by CUB's
 * radix sort (device-wide for one row, segmented for several), which is
 * stable, so equal keys keep input order as on the CPU; values are then
 * gathered by position. partition / argpartition take the kth key from the
 * sorted row and distribute the row with one block per row: chunks of 256
 * elements, a block-wide exclusive scan of packed (less, equal, greater)
 * counts giving each element its place in its group. */
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <limits.h>

#include "cuda_common.cuh"
#include "ops/sort_params.h"

#define SORT_MAX 2048

__device__ __forceinline__ uint64_t key_f64(double v) {
  if (v != v) return ~(uint64_t)0;
  if (v == 0) v = 0; /* -0.0 -> +0.0 */
  uint64_t u = (uint64_t)__double_as_longlong(v);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}
template <class T>
__device__ __forceinline__ uint64_t key_of(typename T::S s) {
  if constexpr (T::is_float) return key_f64((double)T::ld(s));
  else if constexpr (T::dt == MX_INT32 || T::dt == MX_INT64)
    return (uint64_t)(int64_t)s ^ 0x8000000000000000ull;
  else return (uint64_t)s;
}

/* outer: operand 0 input strides, 1 output strides, over the non-axis dims */
template <class T>
__global__ void k_sort_rows(const typename T::S *x, char *out, mx__nd<2> outer, int64_t rows,
                            int64_t len, int64_t xs, int64_t os, int mode, int64_t kth, int npad) {
  __shared__ uint64_t key[SORT_MAX];
  __shared__ uint32_t pos[SORT_MAX];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t off[2];
    mx__nd_offsets<2>(outer, row, off);
    for (int i = threadIdx.x; i < npad; i += blockDim.x) {
      key[i] = i < len ? key_of<T>(x[off[0] + i * xs]) : ~(uint64_t)0;
      pos[i] = i < len ? (uint32_t)i : 0xffffffffu;
    }
    __syncthreads();
    for (int k = 2; k <= npad; k <<= 1)
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int i = threadIdx.x; i < npad; i += blockDim.x) {
          int l = i ^ j;
          if (l > i) {
            bool asc = (i & k) == 0;
            bool gt = key[i] > key[l] || (key[i] == key[l] && pos[i] > pos[l]);
            if (gt == asc) {
              uint64_t tk = key[i]; key[i] = key[l]; key[l] = tk;
              uint32_t tp = pos[i]; pos[i] = pos[l]; pos[l] = tp;
            }
          }
        }
        __syncthreads();
      }
    bool idx_out = mode == 1 || mode == 3;
    typename T::S *ov = (typename T::S *)out + off[1];
    uint32_t *oi = (uint32_t *)out + off[1];
    if (mode <= 1) { /* sort / argsort */
      for (int i = threadIdx.x; i < len; i += blockDim.x) {
        if (idx_out) oi[i * os] = pos[i];
        else ov[i * os] = x[off[0] + (int64_t)pos[i] * xs];
      }
    } else if (threadIdx.x == 0) { /* partition: <, ==, > the kth key, input order */
      uint64_t kk = key[kth];
      int64_t o = 0;
      for (int g = 0; g < 3; g++)
        for (int64_t i = 0; i < len; i++) {
          uint64_t ki = key_of<T>(x[off[0] + i * xs]);
          if ((g == 0 && ki < kk) || (g == 1 && ki == kk) || (g == 2 && ki > kk)) {
            if (idx_out) oi[o * os] = (uint32_t)i;
            else ov[o * os] = x[off[0] + i * xs];
            o++;
          }
        }
    }
    __syncthreads();
  }
}

/* ---- rows longer than SORT_MAX ------------------------------------------------- */
__device__ __forceinline__ uint32_t key_f32(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu; /* NaN: last */
  if (u == 0x80000000u) u = 0;                              /* -0.0 == 0.0 */
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
template <class T, class KT>
__device__ __forceinline__ KT lkey(typename T::S s) {
  if constexpr (sizeof(KT) == 8) return key_of<T>(s);
  else if constexpr (T::is_float) return key_f32((float)T::ld(s)); /* f16/bf16 widen exactly */
  else if constexpr (T::dt == MX_INT32) return (uint32_t)s ^ 0x80000000u;
  else if constexpr (T::dt == MX_BOOL) return s != 0;
  else return (uint32_t)s;
}

template <class T, class KT>
__global__ void k_long_keys(const typename T::S *x, mx__nd<2> outer, int64_t n, int64_t len,
                            int64_t xs, KT *keys, uint32_t *pos, int *offs, int64_t rows) {
  MX_CUDA_LOOP(i, n) {
    int64_t row = i / len, j = i - row * len;
    int64_t off[2];
    mx__nd_offsets<2>(outer, row, off);
    keys[i] = lkey<T, KT>(x[off[0] + j * xs]);
    pos[i] = (uint32_t)j;
    if (j == 0) offs[row] = (int)i;
    if (i == n - 1) offs[rows] = (int)n;
  }
}

template <class T>
__global__ void k_long_out(const typename T::S *x, char *out, mx__nd<2> outer, int64_t n,
                           int64_t len, int64_t xs, int64_t os, const uint32_t *pos, bool idx) {
  MX_CUDA_LOOP(i, n) {
    int64_t row = i / len, j = i - row * len;
    int64_t off[2];
    mx__nd_offsets<2>(outer, row, off);
    uint32_t p = pos[i];
    if (idx) ((uint32_t *)out)[off[1] + j * os] = p;
    else ((typename T::S *)out)[off[1] + j * os] = x[off[0] + (int64_t)p * xs];
  }
}

#define PART_THREADS 256
template <class T, class KT>
__global__ void __launch_bounds__(PART_THREADS)
    k_long_partition(const typename T::S *x, char *out, mx__nd<2> outer, int64_t rows,
                     int64_t len, int64_t xs, int64_t os, const KT *sorted, int64_t kth,
                     bool idx) {
  typedef cub::BlockScan<unsigned long long, PART_THREADS> scan_t;
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ unsigned long long tot[2];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t off[2];
    mx__nd_offsets<2>(outer, row, off);
    const KT kk = sorted[row * len + kth];
    /* group sizes: the number of keys below kk is the first position holding kk */
    if (threadIdx.x == 0) {
      int64_t lo = 0, hi = kth; /* first index in [0, kth] with key == kk */
      const KT *sr = sorted + row * len;
      while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (sr[mid] < kk) lo = mid + 1;
        else hi = mid;
      }
      int64_t l2 = kth, h2 = len; /* first index past the keys == kk */
      while (l2 < h2) {
        int64_t mid = (l2 + h2) / 2;
        if (sr[mid] <= kk) l2 = mid + 1;
        else h2 = mid;
      }
      tot[0] = (unsigned long long)lo;
      tot[1] = (unsigned long long)l2;
    }
    __syncthreads();
    const int64_t nless = (int64_t)tot[0], nle = (int64_t)tot[1];
    int64_t base[3] = {0, nless, nle};
    for (int64_t c0 = 0; c0 < len; c0 += PART_THREADS) {
      int64_t i = c0 + threadIdx.x;
      int cls = 3;
      if (i < len) {
        KT ki = lkey<T, KT>(x[off[0] + i * xs]);
        cls = ki < kk ? 0 : ki == kk ? 1 : 2;
      }
      unsigned long long flag = cls < 3 ? 1ull << (21 * cls) : 0ull, pre, agg;
      scan_t(tmp).ExclusiveSum(flag, pre, agg);
      if (i < len) {
        int64_t o = base[cls] + (int64_t)((pre >> (21 * cls)) & 0x1fffff);
        if (idx) ((uint32_t *)out)[off[1] + o * os] = (uint32_t)i;
        else ((typename T::S *)out)[off[1] + o * os] = x[off[0] + i * xs];
      }
      for (int g = 0; g < 3; g++) base[g] += (int64_t)((agg >> (21 * g)) & 0x1fffff);
      __syncthreads(); /* tmp reused */
    }
  }
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

template <class T, class KT>
static int sort_long(mx_array *out, const mx_array *a, mx__nd<2> outer, int64_t rows,
                     int64_t len, int64_t axs, int64_t aos, int mode, int64_t kth) {
  const int64_t n = rows * len;
  if (n > INT_MAX - 1)
    return mx__set_error(MX_ERR_UNSUPPORTED, "%s: more than 2^31 elements on CUDA",
                         mx__opname(out));
  cudaStream_t s = mx__cuda_stream();
  const int bits = sizeof(typename T::S) == 1 ? 8 : (int)(sizeof(KT) * 8); /* bool/u8: one pass */
  size_t cub_bytes = 0;
  cudaError_t e;
  if (rows == 1)
    e = cub::DeviceRadixSort::SortPairs(NULL, cub_bytes, (const KT *)NULL, (KT *)NULL,
                                        (const uint32_t *)NULL, (uint32_t *)NULL, (int)n, 0,
                                        bits, s);
  else
    e = cub::DeviceSegmentedRadixSort::SortPairs(
        NULL, cub_bytes, (const KT *)NULL, (KT *)NULL, (const uint32_t *)NULL, (uint32_t *)NULL,
        (int)n, (int)rows, (const int *)NULL, (const int *)NULL, 0, bits, s);
  int st = mx__cuda_check(e, mx__opname(out));
  if (st) return st;
  size_t kb = align256(sizeof(KT) * (size_t)n), pb = align256(sizeof(uint32_t) * (size_t)n);
  size_t ob = align256(sizeof(int) * (size_t)(rows + 1));
  mx__buffer *tb = mx__cuda_tmp(2 * kb + 2 * pb + ob + cub_bytes);
  if (!tb) return mx_last_status();
  char *base = (char *)tb->dptr;
  KT *k0 = (KT *)base, *k1 = (KT *)(base + kb);
  uint32_t *p0 = (uint32_t *)(base + 2 * kb), *p1 = (uint32_t *)(base + 2 * kb + pb);
  int *offs = (int *)(base + 2 * kb + 2 * pb);
  void *ct = base + 2 * kb + 2 * pb + ob;
  const typename T::S *x = (const typename T::S *)mx__ddata(a);
  k_long_keys<T, KT><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(x, outer, n, len, axs, k0,
                                                                     p0, offs, rows);
  st = mx__cuda_launched(mx__opname(out));
  if (!st) {
    if (rows == 1)
      e = cub::DeviceRadixSort::SortPairs(ct, cub_bytes, k0, k1, p0, p1, (int)n, 0,
                                          bits, s);
    else
      e = cub::DeviceSegmentedRadixSort::SortPairs(ct, cub_bytes, k0, k1, p0, p1, (int)n,
                                                   (int)rows, offs, offs + 1, 0,
                                                   bits, s);
    st = mx__cuda_check(e, mx__opname(out));
  }
  if (!st) {
    bool idx = mode == 1 || mode == 3;
    if (mode <= 1)
      k_long_out<T><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, s>>>(
          x, (char *)out->buf->dptr, outer, n, len, axs, aos, p1, idx);
    else
      k_long_partition<T, KT><<<(unsigned)(rows < 65535 * 8 ? rows : 65535 * 8), PART_THREADS,
                                 0, s>>>(x, (char *)out->buf->dptr, outer, rows, len, axs, aos,
                                         k1, kth, idx);
    st = mx__cuda_launched(mx__opname(out));
  }
  mx__buffer_release(tb); /* reused only by later work of the same stream */
  return st;
}

static int k_sort_family(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  int mode = out->op->id == MX_OP_SORT ? 0 : out->op->id == MX_OP_ARGSORT ? 1
             : out->op->id == MX_OP_PARTITION ? 2 : 3;
  int64_t len = a->ndim ? a->shape[p->axis] : 1;
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
  int64_t rows = out->size / len;
  int npad = 1;
  while (npad < len) npad <<= 1;
  int64_t axs = a->ndim ? a->strides[p->axis] : 1, aos = a->ndim ? out->strides[p->axis] : 1;
  if (len > SORT_MAX) {
    st = MX_ERR_NO_KERNEL;
    MX_CUDA_DISPATCH_ALL(a->dtype, {
      if (sizeof(T::S) <= 4)
        st = sort_long<T, uint32_t>(out, a, outer, rows, len, axs, aos, mode, p->kth);
      else st = sort_long<T, uint64_t>(out, a, outer, rows, len, axs, aos, mode, p->kth);
    })
    return st;
  }
  unsigned g = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
  int threads = npad < 256 ? 128 : 512;
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(a->dtype, {
    k_sort_rows<T><<<g, threads, 0, mx__cuda_stream()>>>(
        (const T::S *)mx__ddata(a), (char *)out->buf->dptr, outer, rows, len, axs, aos, mode,
        p->kth, npad);
    st = mx__cuda_launched(mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, a->dtype);
  return st;
}

void mx__cuda_register_sort(mx__kernel_fn *k) {
  k[MX_OP_SORT] = k[MX_OP_ARGSORT] = k[MX_OP_PARTITION] = k[MX_OP_ARGPARTITION] = k_sort_family;
}
