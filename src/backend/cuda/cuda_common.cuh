/* cuda_common.cuh — shared machinery of the CUDA backend's kernels.
 *
 * Every kernel family is a .cu file with a `mx__cuda_register_<family>`
 * function (called once from cuda_backend.cu). Kernels run on one stream
 * (mx__cuda_stream()); the host never waits for them except when data
 * must leave the GPU (a device-to-host copy synchronises the stream).
 *
 * Types: each dtype has a tag struct with its storage type S (f16/bf16 are
 * stored as raw uint16_t bits), its compute type C (f16/bf16 compute in
 * f32, as the CPU kernels do) and load/store functions that follow the CPU
 * backend's conversion rules (float -> int saturates through double, NaN
 * -> 0; int -> int wraps through int64). */
#ifndef MXC_CUDA_COMMON_CUH
#define MXC_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "array_impl.h"
}

/* ---- backend-wide state and errors ---------------------------------------- */
cudaStream_t mx__cuda_stream(void);
/* MX_ERR_INTERNAL naming `what` and the CUDA error, or MX_OK. */
int mx__cuda_check(cudaError_t e, const char *what);
/* Check the last kernel launch of op `what`. */
static inline int mx__cuda_launched(const char *what) {
  return mx__cuda_check(cudaGetLastError(), what);
}
/* Programmatic dependent launch (Hopper and later): a kernel launched with
 * mx__cuda_launch_pdl may start while the kernel before it on the stream
 * is still finishing, so its blocks are resident when that one ends (a
 * decode step is ~200 short kernels, and the gap between two of them is a
 * large share of each). Such a kernel MUST call mx__pdl_wait() before it
 * touches global memory: the wait returns once the previous kernel has
 * completed and its writes are visible. mx__pdl_trigger() lets the next
 * kernel launch early; both are no-ops for a kernel launched plainly.
 * MXC_PDL=0 turns it off (A/B); off on devices before compute 9.0. */
bool mx__cuda_pdl(void);
/* The generic strided map (copies) and rope's angle table launched with
 * PDL too (they wait at entry): MXC_PDL_SMALL=0 launches them plainly (A/B). */
bool mx__cuda_pdl_small(void);
__device__ __forceinline__ void mx__pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void mx__pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* rope's rotation of the pair (a, b) by the angle with cosine cs and sine
 * sn, with the roundings spelled out (no contraction left to the
 * compiler), so that every GPU rope kernel — rope, rope_kv, rope_sdpa —
 * gives the same bits: a cs - b sn and a sn + b cs. */
__device__ __forceinline__ float mx__rot_x(float a, float b, float cs, float sn) {
  return __fmaf_rn(a, cs, -__fmul_rn(b, sn));
}
__device__ __forceinline__ float mx__rot_y(float a, float b, float cs, float sn) {
  return __fmaf_rn(a, sn, __fmul_rn(b, cs));
}
__device__ __forceinline__ double mx__rot_x(double a, double b, double cs, double sn) {
  return __fma_rn(a, cs, -__dmul_rn(b, sn));
}
__device__ __forceinline__ double mx__rot_y(double a, double b, double cs, double sn) {
  return __fma_rn(a, sn, __dmul_rn(b, cs));
}

/* The kernel's entry: wait for the previous kernel, let the next one launch. */
#define MX_PDL_ENTRY()  \
  do {                  \
    mx__pdl_wait();     \
    mx__pdl_trigger();  \
  } while (0)
/* a's data was last written by a GPU kernel that has completed (or by no
 * kernel: uploaded): a PDL kernel may read it before mx__pdl_wait() — the
 * weights of a decode step's GEMVs, streamed while the kernel before ends. */
static inline bool mx__cuda_settled(const mx_array *a) {
  return a->buf && a->buf->wepoch < mx__gpu_epoch();
}
template <class... KArgs, class... Args>
static inline void mx__cuda_launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                       size_t smem, Args... args) {
  if (!mx__cuda_pdl()) {
    kernel<<<grid, block, smem, mx__cuda_stream()>>>(args...);
    return;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = mx__cuda_stream();
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  (void)cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...); /* errors: cudaGetLastError */
}
/* Allocate a temporary device buffer through the caching allocator. */
mx__buffer *mx__cuda_tmp(size_t nbytes);

/* Element 0 of an evaluated array's GPU copy. */
static inline char *mx__ddata(const mx_array *a) {
  return (char *)a->buf->dptr + a->offset * (int64_t)mx_dtype_size(a->dtype);
}
static inline const char *mx__opname(const mx_array *out) { return mx__op_names[out->op->id]; }
static inline int mx__cuda_no_dtype(const mx_array *out, mx_dtype dt) {
  return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel for dtype %s", mx__opname(out),
                       mx_dtype_name(dt));
}

/* Launch geometry for an n-element grid-stride loop. */
#define MX_CUDA_THREADS 256
static inline unsigned mx__cuda_blocks(int64_t n) {
  int64_t b = (n + MX_CUDA_THREADS - 1) / MX_CUDA_THREADS;
  if (b < 1) b = 1;
  if (b > 65535 * 8) b = 65535 * 8;
  return (unsigned)b;
}
#define MX_CUDA_LOOP(i, n)                                                            \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);           \
       i += (int64_t)gridDim.x * blockDim.x)

/* ---- strided n-d indexing ---------------------------------------------------
 * Operand 0 is usually the output. Size-1 dims are dropped and dims that are
 * contiguous for every operand merged (as the CPU iterator does), so the
 * common cases need one division per element. */
template <int N>
struct mx__nd {
  int ndim;
  int64_t shape[MX_MAX_NDIM];
  int64_t st[N][MX_MAX_NDIM];
};

/* strides[o] NULL: row-contiguous over shape. */
template <int N>
static inline mx__nd<N> mx__nd_make(const int64_t *shape, int ndim,
                                    const int64_t *const *strides) {
  mx__nd<N> r;
  int64_t row[MX_MAX_NDIM];
  mx__compute_row_strides(shape, ndim, row);
  int nd = 0;
  int64_t sh[MX_MAX_NDIM] = {0}, ms[N][MX_MAX_NDIM] = {{0}};
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    sh[nd] = shape[d];
    for (int o = 0; o < N; o++) ms[o][nd] = strides[o] ? strides[o][d] : row[d];
    nd++;
  }
  if (nd == 0) {
    sh[0] = 1;
    for (int o = 0; o < N; o++) ms[o][0] = 1;
    nd = 1;
  }
  int out = 0;
  r.shape[0] = sh[0];
  for (int o = 0; o < N; o++) r.st[o][0] = ms[o][0];
  for (int d = 1; d < nd; d++) {
    bool merge = true;
    for (int o = 0; o < N && merge; o++)
      if (r.st[o][out] != ms[o][d] * sh[d]) merge = false;
    if (merge) {
      r.shape[out] *= sh[d];
      for (int o = 0; o < N; o++) r.st[o][out] = ms[o][d];
    } else {
      out++;
      r.shape[out] = sh[d];
      for (int o = 0; o < N; o++) r.st[o][out] = ms[o][d];
    }
  }
  r.ndim = out + 1;
  return r;
}

template <int N>
__device__ __forceinline__ void mx__nd_offsets(const mx__nd<N> &ix, int64_t i, int64_t *off) {
#pragma unroll
  for (int o = 0; o < N; o++) off[o] = 0;
  for (int d = ix.ndim - 1; d >= 0; d--) {
    int64_t s = ix.shape[d];
    int64_t q = i % s;
    i /= s;
#pragma unroll
    for (int o = 0; o < N; o++) off[o] += q * ix.st[o][d];
  }
}

/* Strides of `in` broadcast (right-aligned) to shape/ndim. */
static inline void mx__bcast_strides(const mx_array *in, const int64_t *shape, int ndim,
                                     int64_t *st) {
  int off = ndim - in->ndim;
  for (int d = 0; d < ndim; d++) {
    int id = d - off;
    st[d] = (id < 0 || (in->shape[id] == 1 && shape[d] != 1)) ? 0 : in->strides[id];
  }
}

/* ---- dtype tags ---------------------------------------------------------------- */
__device__ __forceinline__ float mx__h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t mx__f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float mx__b2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ uint16_t mx__f2b(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)((u + rounding) >> 16);
}

/* saturating float -> integer (NaN -> 0), as the CPU backend */
__device__ __forceinline__ int64_t mx__d2i64(double x) {
  return x != x ? 0 : x <= -9223372036854775808.0 ? INT64_MIN
                    : x >= 9223372036854775807.0 ? INT64_MAX : (int64_t)x;
}
__device__ __forceinline__ int32_t mx__d2i32(double x) {
  return x != x ? 0 : x <= -2147483648.0 ? INT32_MIN : x >= 2147483647.0 ? INT32_MAX : (int32_t)x;
}
__device__ __forceinline__ uint32_t mx__d2u32(double x) {
  return x != x ? 0 : x <= 0 ? 0 : x >= 4294967295.0 ? UINT32_MAX : (uint32_t)x;
}
__device__ __forceinline__ uint8_t mx__d2u8(double x) {
  return x != x ? 0 : x <= 0 ? 0 : x >= 255.0 ? 255 : (uint8_t)x;
}

/* Conversion of a compute value v (any arithmetic type) to storage type of
 * a tag: floating sources saturate into integers; integer sources wrap. */
template <class V> struct mx__is_fp { static const bool value = false; };
template <> struct mx__is_fp<float> { static const bool value = true; };
template <> struct mx__is_fp<double> { static const bool value = true; };

struct TBool {
  typedef uint8_t S; typedef uint8_t C;
  static const mx_dtype dt = MX_BOOL;
  static const bool is_float = false;
  __device__ static C ld(S v) { return v != 0; }
  template <class V> __device__ static S st(V v) { return v != 0; }
};
struct TU8 {
  typedef uint8_t S; typedef uint8_t C;
  static const mx_dtype dt = MX_UINT8;
  static const bool is_float = false;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) {
    if (mx__is_fp<V>::value) return mx__d2u8((double)v);
    return (uint8_t)(uint64_t)(int64_t)v;
  }
};
struct TU32 {
  typedef uint32_t S; typedef uint32_t C;
  static const mx_dtype dt = MX_UINT32;
  static const bool is_float = false;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) {
    if (mx__is_fp<V>::value) return mx__d2u32((double)v);
    return (uint32_t)(uint64_t)(int64_t)v;
  }
};
struct TI32 {
  typedef int32_t S; typedef int32_t C;
  static const mx_dtype dt = MX_INT32;
  static const bool is_float = false;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) {
    if (mx__is_fp<V>::value) return mx__d2i32((double)v);
    return (int32_t)(int64_t)v;
  }
};
struct TI64 {
  typedef int64_t S; typedef int64_t C;
  static const mx_dtype dt = MX_INT64;
  static const bool is_float = false;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) {
    if (mx__is_fp<V>::value) return mx__d2i64((double)v);
    return (int64_t)v;
  }
};
struct TF16 {
  typedef uint16_t S; typedef float C;
  static const mx_dtype dt = MX_FLOAT16;
  static const bool is_float = true;
  __device__ static C ld(S v) { return mx__h2f(v); }
  template <class V> __device__ static S st(V v) { return mx__f2h((float)v); }
};
struct TBF16 {
  typedef uint16_t S; typedef float C;
  static const mx_dtype dt = MX_BFLOAT16;
  static const bool is_float = true;
  __device__ static C ld(S v) { return mx__b2f(v); }
  template <class V> __device__ static S st(V v) { return mx__f2b((float)v); }
};
struct TF32 {
  typedef float S; typedef float C;
  static const mx_dtype dt = MX_FLOAT32;
  static const bool is_float = true;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) { return (float)v; }
};
struct TF64 {
  typedef double S; typedef double C;
  static const mx_dtype dt = MX_FLOAT64;
  static const bool is_float = true;
  __device__ static C ld(S v) { return v; }
  template <class V> __device__ static S st(V v) { return (double)v; }
};

/* DISPATCH: run BODY with `T` bound to the tag of dt; `default:` otherwise. */
#define MX_CUDA_CASE(DT, TAG, ...) \
  case DT: {                       \
    typedef TAG T;                 \
    __VA_ARGS__;                   \
  } break;
#define MX_CUDA_DISPATCH_ALL(dt, ...)                   \
  switch (dt) {                                         \
    MX_CUDA_CASE(MX_BOOL, TBool, __VA_ARGS__)           \
    MX_CUDA_CASE(MX_UINT8, TU8, __VA_ARGS__)            \
    MX_CUDA_CASE(MX_UINT32, TU32, __VA_ARGS__)          \
    MX_CUDA_CASE(MX_INT32, TI32, __VA_ARGS__)           \
    MX_CUDA_CASE(MX_INT64, TI64, __VA_ARGS__)           \
    MX_CUDA_CASE(MX_FLOAT16, TF16, __VA_ARGS__)         \
    MX_CUDA_CASE(MX_BFLOAT16, TBF16, __VA_ARGS__)       \
    MX_CUDA_CASE(MX_FLOAT32, TF32, __VA_ARGS__)         \
    MX_CUDA_CASE(MX_FLOAT64, TF64, __VA_ARGS__)         \
    default: break;                                     \
  }

/* swiglu's sigmoid (swiglu, swiglu_linear). For 16-bit dtypes, whose
 * result is rounded to 8 or 11 bits, the fast exp and division (MUFU.EX2, MUFU.RCP: ~2 ulp of float32)
 * change the rounded value only next to a rounding boundary (a few
 * elements in 10^4 differ by one unit); float32 and float64 are exact.
 * The swiglu of a prompt's MLP is compute-bound otherwise. */
template <class T>
__device__ __forceinline__ typename T::C swiglu_sigmoid(typename T::C x) {
  typedef typename T::C X;
  if constexpr (sizeof(typename T::S) == 2) return __fdividef(1.f, 1.f + __expf(-x));
  else if constexpr (sizeof(X) == 4) return 1.f / (1.f + expf(-x));
  else return 1.0 / (1.0 + exp(-x));
}

/* silu(g) * u with the roundings of the swiglu kernel (g and u rounded
 * to the dtype first, as a GEMV writes them) */
template <class T>
__device__ __forceinline__ typename T::S swiglu_round(typename T::C g, typename T::C u) {
  typedef typename T::C X;
  X x = T::ld(T::st(g));
  X s = T::ld(T::st(swiglu_sigmoid<T>(x)));
  X a = T::ld(T::st(x * s));
  return T::st(a * T::ld(T::st(u)));
}

#define MX_CUDA_DISPATCH_FLOAT(dt, ...)                 \
  switch (dt) {                                         \
    MX_CUDA_CASE(MX_FLOAT16, TF16, __VA_ARGS__)         \
    MX_CUDA_CASE(MX_BFLOAT16, TBF16, __VA_ARGS__)       \
    MX_CUDA_CASE(MX_FLOAT32, TF32, __VA_ARGS__)         \
    MX_CUDA_CASE(MX_FLOAT64, TF64, __VA_ARGS__)         \
    default: break;                                     \
  }

/* ---- strided copy by element size (shared by shape ops) -------------------- */
/* dst (laid out with dst_strides over shape) <- src broadcast to shape. */
int mx__cuda_strided_copy(char *dst, const int64_t *dst_strides, const int64_t *shape, int ndim,
                          const mx_array *src, const char *what);
/* Row-contiguous copy of any evaluated GPU array into dst. */
int mx__cuda_copy_to_contiguous(const mx_array *in, void *dst);

/* ---- kernel families ------------------------------------------------------------ */
void mx__cuda_register_elementwise(mx__kernel_fn *k);
void mx__cuda_register_shape(mx__kernel_fn *k);
void mx__cuda_register_reduce(mx__kernel_fn *k);
void mx__cuda_register_linalg(mx__kernel_fn *k);
void mx__cuda_register_misc(mx__kernel_fn *k);
void mx__cuda_register_sort(mx__kernel_fn *k);
void mx__cuda_register_fast(mx__kernel_fn *k);
void mx__cuda_register_indexing(mx__kernel_fn *k);
void mx__cuda_register_rope_sdpa(mx__kernel_fn *k);
void mx__cuda_register_quantized(mx__kernel_fn *k);

/* From the CPU backend (host-side scalar conversion). */
extern "C" void mx__cpu_convert(const void *src, mx_dtype sdt, void *dst, mx_dtype ddt, int64_t n);

#endif
