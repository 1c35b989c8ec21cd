/* sort.cu — CUDA kernels of sort, argsort, partition and argpartition for
 * rows (along the axis) of up to 2048 elements.
 *
 * Values become unsigned 64-bit keys in NumPy's order (floats: -0.0 folded
 * onto +0.0, NaNs last; signed integers: sign bit flipped), paired with
 * their positions; one block sorts a row in shared memory with a bitonic
 * network on (key, position), which gives the stable order. Values are
 * gathered from the input by position, so their bits survive. partition /
 * argpartition find the kth key that way, then write the smaller, equal and
 * larger elements, each group in input order — the CPU kernel's layout.
 * Longer rows report a missing kernel (a segmented radix sort is to come). */
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

static int k_sort_family(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  int mode = out->op->id == MX_OP_SORT ? 0 : out->op->id == MX_OP_ARGSORT ? 1
             : out->op->id == MX_OP_PARTITION ? 2 : 3;
  int64_t len = a->ndim ? a->shape[p->axis] : 1;
  if (len > SORT_MAX)
    return mx__set_error(MX_ERR_NO_KERNEL,
                         "%s: no CUDA kernel for rows longer than %d (got %lld)",
                         mx__opname(out), SORT_MAX, (long long)len);
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
