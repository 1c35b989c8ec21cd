/* elementwise.cu — CUDA kernels for unary, binary, where, astype, full,
 * arange, copy and stop_gradient. One grid-stride kernel per (op, dtype),
 * over the output's index space with each input's (broadcast) strides;
 * the arithmetic mirrors src/backend/cpu/elementwise.c (f16/bf16 compute in
 * f32, integer arithmetic wraps through 64 bits, float -> int saturates). */
#include <string.h>

#include "cuda_common.cuh"
#include "ops/fast_params.h"
#include "ops/optim_params.h"

/* ---- the generic strided map kernel ---------------------------------------------- */
template <int N, class F>
__global__ void k_map(mx__nd<N> ix, int64_t n, F f) {
  MX_PDL_ENTRY();
  if (ix.ndim == 1) {
    MX_CUDA_LOOP(i, n) {
      int64_t off[N];
#pragma unroll
      for (int o = 0; o < N; o++) off[o] = i * ix.st[o][0];
      f(off);
    }
  } else {
    MX_CUDA_LOOP(i, n) {
      int64_t off[N];
      mx__nd_offsets<N>(ix, i, off);
      f(off);
    }
  }
}

template <int N, class F>
static int launch_map(const mx__nd<N> &ix, int64_t n, F f, const char *what) {
  if (n == 0) return MX_OK;
  if (mx__cuda_pdl_small()) /* launched while the kernel before ends (it waits first) */
    mx__cuda_launch_pdl(k_map<N, F>, mx__cuda_blocks(n), MX_CUDA_THREADS, 0, ix, n, f);
  else
    k_map<N, F><<<mx__cuda_blocks(n), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(ix, n, f);
  return mx__cuda_launched(what);
}

/* ---- contiguous operands: 16-byte vectors ------------------------------------------
 * When the output and every input are row-contiguous with the output's
 * shape (no broadcast) and 16-byte aligned, float kernels load and store
 * 16 bytes per operand (8 f16/bf16 or 4 f32 values) and apply the same
 * per-element function as the strided path (the same bits); the tail past
 * the last whole vector is done element by element. */
template <class T>
__device__ __forceinline__ void vld(const typename T::S *p, int64_t e0, typename T::C *v) {
  constexpr int N = 16 / sizeof(typename T::S);
  uint4 u = __ldg((const uint4 *)(p + e0));
  const typename T::S *s = (const typename T::S *)&u;
#pragma unroll
  for (int i = 0; i < N; i++) v[i] = T::ld(s[i]);
}
template <class T>
__device__ __forceinline__ void vst(typename T::S *p, int64_t e0, const typename T::C *v) {
  constexpr int N = 16 / sizeof(typename T::S);
  uint4 u;
  typename T::S *s = (typename T::S *)&u;
#pragma unroll
  for (int i = 0; i < N; i++) s[i] = T::st(v[i]);
  *(uint4 *)(p + e0) = u;
}

/* F: __device__ C operator()(C a, C b, C c) (unused inputs ignored) */
template <class T, int NIN, class F>
__global__ void k_vec(typename T::S *o, const typename T::S *a, const typename T::S *b,
                      const typename T::S *c, int64_t n, F f) {
  typedef typename T::C X;
  constexpr int N = 16 / sizeof(typename T::S);
  const int64_t nv = n / N;
  MX_PDL_ENTRY();
  MX_CUDA_LOOP(i, nv) {
    X va[N], vb[N], vc[N], r[N];
    vld<T>(a, i * N, va);
    if (NIN > 1) vld<T>(b, i * N, vb);
    if (NIN > 2) vld<T>(c, i * N, vc);
#pragma unroll
    for (int e = 0; e < N; e++) r[e] = f(va[e], NIN > 1 ? vb[e] : X(0), NIN > 2 ? vc[e] : X(0));
    vst<T>(o, i * N, r);
  }
  for (int64_t e = nv * N + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x)
    o[e] = T::st(f(T::ld(a[e]), NIN > 1 ? T::ld(b[e]) : X(0), NIN > 2 ? T::ld(c[e]) : X(0)));
}

/* Inputs whose rows (the last axis contiguous) are spread out: the parts of
 * a stacked projection (gate and up of one GEMM's output). Row r of input
 * k starts at r * rs[k]; the output is contiguous. */
template <class T, int NIN, class F>
__global__ void k_vec_rows(typename T::S *o, const typename T::S *a, const typename T::S *b,
                           const typename T::S *c, int64_t rows, int64_t nvr, int64_t ra,
                           int64_t rb, int64_t rc, F f) {
  typedef typename T::C X;
  constexpr int N = 16 / sizeof(typename T::S);
  MX_PDL_ENTRY();
  auto one = [&](int64_t r, int64_t v) {
    const int64_t cv = v * N;
    X va[N], vb[N], vc[N], res[N];
    vld<T>(a, r * ra + cv, va);
    if (NIN > 1) vld<T>(b, r * rb + cv, vb);
    if (NIN > 2) vld<T>(c, r * rc + cv, vc);
#pragma unroll
    for (int e = 0; e < N; e++) res[e] = f(va[e], NIN > 1 ? vb[e] : X(0), NIN > 2 ? vc[e] : X(0));
    vst<T>(o, (r * nvr + v) * N, res);
  };
  if (gridDim.y > 1) { /* long rows: x over a row's vectors, y over rows (no divisions) */
    const int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (v < nvr)
      for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) one(r, v);
    return;
  }
  MX_CUDA_LOOP(i, rows * nvr) {
    const int64_t r = i / nvr;
    one(r, i - r * nvr);
  }
}

/* Element (r, c) of x (r over every axis but the last) at r * *rs + c? */
static bool rows_spaced(const mx_array *x, int64_t *rs) {
  const int nd = x->ndim;
  if (nd == 0 || (x->shape[nd - 1] > 1 && x->strides[nd - 1] != 1)) return false;
  int64_t st = -1, below = 1;
  for (int d = nd - 2; d >= 0; d--) {
    if (x->shape[d] == 1) continue;
    if (st < 0) st = x->strides[d];
    else if (x->strides[d] != st * below) return false;
    below *= x->shape[d];
  }
  *rs = st < 0 ? x->shape[nd - 1] : st;
  return true;
}

/* Whether out and in[0..nin) qualify for k_vec (*rows false) or k_vec_rows
 * (*rows true, input k's row stride rs[k]). */
static bool vec_ok(const mx_array *out, mx_array *const *in, int nin, bool *rows, int64_t *rs) {
  if (out->size < 64 || !out->row_contiguous || ((uintptr_t)out->buf->dptr & 15)) return false;
  const int N = 16 / (int)mx_dtype_size(out->dtype);
  const int64_t cols = out->shape[out->ndim - 1];
  *rows = false;
  for (int i = 0; i < nin; i++) {
    const mx_array *x = in[i];
    if (x->dtype != out->dtype || x->ndim != out->ndim ||
        memcmp(x->shape, out->shape, sizeof(int64_t) * (size_t)out->ndim) ||
        ((uintptr_t)mx__ddata(x) & 15))
      return false;
    rs[i] = cols;
    if (x->row_contiguous) continue;
    if (cols % N || !rows_spaced(x, &rs[i]) || rs[i] % N) return false;
    *rows = true;
  }
  return true;
}

template <class T, int NIN, class F>
static int launch_vec(mx_array *out, mx_array *const *in, bool rows, const int64_t *rs, F f) {
  constexpr int N = 16 / sizeof(typename T::S);
  const typename T::S *a = (const typename T::S *)mx__ddata(in[0]);
  const typename T::S *b = NIN > 1 ? (const typename T::S *)mx__ddata(in[1]) : a;
  const typename T::S *c = NIN > 2 ? (const typename T::S *)mx__ddata(in[2]) : a;
  if (rows) {
    const int64_t cols = out->shape[out->ndim - 1], nvr = cols / N, nr = out->size / cols;
    dim3 grid(mx__cuda_blocks(nr * nvr));
    if (nvr >= MX_CUDA_THREADS / 2 && nr > 1) /* see k_vec_rows */
      grid = dim3((unsigned)((nvr + MX_CUDA_THREADS - 1) / MX_CUDA_THREADS),
                  (unsigned)(nr < 65535 ? nr : 65535));
    mx__cuda_launch_pdl(k_vec_rows<T, NIN, F>, grid, MX_CUDA_THREADS, 0,
                        (typename T::S *)out->buf->dptr, a, b, c, nr, nvr, rs[0],
                        NIN > 1 ? rs[1] : 0, NIN > 2 ? rs[2] : 0, f);
    return mx__cuda_launched(mx__opname(out));
  }
  int64_t nv = out->size / N;
  mx__cuda_launch_pdl(k_vec<T, NIN, F>, mx__cuda_blocks(nv > 0 ? nv : 1), MX_CUDA_THREADS, 0,
                      (typename T::S *)out->buf->dptr, a, b, c, out->size, f);
  return mx__cuda_launched(mx__opname(out));
}

/* Output (row-contiguous) + inputs broadcast to its shape. */
template <int N>
static mx__nd<N> out_nd(mx_array *out, mx_array **in) {
  int64_t st[N][MX_MAX_NDIM];
  const int64_t *sp[N];
  sp[0] = NULL;
  for (int i = 1; i < N; i++) {
    mx__bcast_strides(in[i - 1], out->shape, out->ndim, st[i]);
    sp[i] = st[i];
  }
  return mx__nd_make<N>(out->shape, out->ndim, sp);
}

/* ---- math on float compute types ------------------------------------------------- */
#define MF(name, ff, df)                                                     \
  __device__ __forceinline__ float name(float x) { return ff(x); }          \
  __device__ __forceinline__ double name(double x) { return df(x); }
MF(m_sqrt, sqrtf, sqrt)
MF(m_exp, expf, exp)
MF(m_expm1, expm1f, expm1)
MF(m_log, logf, log)
MF(m_log1p, log1pf, log1p)
MF(m_sin, sinf, sin)
MF(m_cos, cosf, cos)
MF(m_tanh, tanhf, tanh)
MF(m_erf, erff, erf)
MF(m_floor, floorf, floor)
MF(m_ceil, ceilf, ceil)
MF(m_rint, rintf, rint)
MF(m_fabs, fabsf, fabs)
#undef MF
/* erfinv of f32 through f64, rounded once: as the CPU kernel, which the
 * random_normal reference follows bit for bit */
__device__ __forceinline__ float m_erfinv(float x) { return (float)erfinv((double)x); }
__device__ __forceinline__ double m_erfinv(double x) { return erfinv(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }

/* ---- unary ------------------------------------------------------------------------ */
/* Each functor: float expression (compute type X) and integer expression
 * (on int64). INT = false: float-only op. OUTB: output is bool. */
#define UOP(NAME, FEXPR, IEXPR, INT, OUTB)                                    \
  struct U_##NAME {                                                           \
    static const bool ints = INT, outb = OUTB;                                \
    template <class X> __device__ X f(X x) const { return FEXPR; }            \
    __device__ int64_t i(int64_t x) const { return IEXPR; }                   \
  };
__device__ __forceinline__ int64_t neg_i64(int64_t x) { return (int64_t)(0u - (uint64_t)x); }
__device__ __forceinline__ int64_t sq_i64(int64_t x) { return (int64_t)((uint64_t)x * (uint64_t)x); }
UOP(NEGATIVE, -x, neg_i64(x), true, false)
UOP(ABS, m_fabs(x), x < 0 ? neg_i64(x) : x, true, false)
UOP(SIGN, (X)((x > 0) - (x < 0)) + (X)0 * x, (x > 0) - (x < 0), true, false)
UOP(SQUARE, x *x, sq_i64(x), true, false)
UOP(SQRT, m_sqrt(x), 0, false, false)
UOP(RSQRT, (X)1 / m_sqrt(x), 0, false, false)
UOP(RECIPROCAL, (X)1 / x, 0, false, false)
UOP(EXP, m_exp(x), 0, false, false)
UOP(EXPM1, m_expm1(x), 0, false, false)
UOP(LOG, m_log(x), 0, false, false)
UOP(LOG1P, m_log1p(x), 0, false, false)
UOP(SIN, m_sin(x), 0, false, false)
UOP(COS, m_cos(x), 0, false, false)
UOP(TANH, m_tanh(x), 0, false, false)
UOP(SIGMOID, (X)1 / ((X)1 + m_exp(-x)), 0, false, false)
UOP(ERF, m_erf(x), 0, false, false)
UOP(ERFINV, m_erfinv(x), 0, false, false)
UOP(FLOOR, m_floor(x), x, true, false)
UOP(CEIL, m_ceil(x), x, true, false)
UOP(ROUND, m_rint(x), x, true, false)
UOP(ISNAN, (X)(x != x), 0, true, true)
UOP(ISINF, (X)(m_fabs(x) == (X)INFINITY), 0, true, true)
UOP(LOGICAL_NOT, (X)(x == 0), x == 0, true, true)
#undef UOP

template <class T, class OP>
struct UnaryF {
  typedef typename T::S S;
  char *o;
  const S *a;
  OP op;
  __device__ void operator()(const int64_t *off) const {
    typename T::C x = T::ld(a[off[1]]);
    if constexpr (T::is_float) {
      typename T::C r = op.f(x);
      if (OP::outb) ((uint8_t *)o)[off[0]] = r != 0;
      else ((S *)o)[off[0]] = T::st(r);
    } else {
      int64_t r = op.i((int64_t)x);
      if (OP::outb) ((uint8_t *)o)[off[0]] = r != 0;
      else ((S *)o)[off[0]] = T::st(r);
    }
  }
};

template <class OP>
static int run_unary(mx_array *out, mx_array **in) {
  mx_dtype dt = in[0]->dtype;
  if (!mx_dtype_is_float(dt) && !OP::ints) return mx__cuda_no_dtype(out, dt);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  mx__nd<2> ix = out_nd<2>(out, in);
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(dt, {
    UnaryF<T, OP> f = {(char *)out->buf->dptr, (const T::S *)mx__ddata(in[0]), OP()};
    st = launch_map<2>(ix, out->size, f, mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, dt);
  return st;
}

static int k_unary(mx_array *out, mx_array **in) {
  switch (out->op->id) {
#define C(NAME) \
  case MX_OP_##NAME: return run_unary<U_##NAME>(out, in);
    C(NEGATIVE) C(ABS) C(SIGN) C(SQUARE) C(SQRT) C(RSQRT) C(RECIPROCAL) C(EXP) C(EXPM1)
    C(LOG) C(LOG1P) C(SIN) C(COS) C(TANH) C(SIGMOID) C(ERF) C(ERFINV) C(FLOOR) C(CEIL)
    C(ROUND) C(ISNAN) C(ISINF) C(LOGICAL_NOT)
#undef C
    default: return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel", mx__opname(out));
  }
}

/* ---- binary ------------------------------------------------------------------------- */
__device__ __forceinline__ int64_t ipow(int64_t b, int64_t e) {
  if (e < 0) return b == 1 ? 1 : b == -1 ? ((e & 1) ? -1 : 1) : 0;
  int64_t r = 1;
  while (e) {
    if (e & 1) r = (int64_t)((uint64_t)r * (uint64_t)b);
    b = (int64_t)((uint64_t)b * (uint64_t)b);
    e >>= 1;
  }
  return r;
}
__device__ __forceinline__ uint64_t upow(uint64_t b, uint64_t e) {
  uint64_t r = 1;
  while (e) {
    if (e & 1) r *= b;
    b *= b;
    e >>= 1;
  }
  return r;
}
/* float expression, signed (int64) and unsigned (uint64) expressions;
 * INT: defined for integers; CMP: output bool. */
#define BOP(NAME, FEXPR, SEXPR, UEXPR, INT, CMP)                                      \
  struct B_##NAME {                                                                   \
    static const bool ints = INT, cmp = CMP;                                          \
    template <class X> __device__ X f(X x, X y) const { return FEXPR; }               \
    __device__ int64_t s(int64_t x, int64_t y) const { return SEXPR; }                \
    __device__ uint64_t u(uint64_t x, uint64_t y) const { return UEXPR; }             \
  };
#define FMAX(x, y) ((x) != (x) ? (x) : (y) != (y) ? (y) : (x) > (y) ? (x) : (y))
#define FMIN(x, y) ((x) != (x) ? (x) : (y) != (y) ? (y) : (x) < (y) ? (x) : (y))
BOP(ADD, x + y, (int64_t)((uint64_t)x + (uint64_t)y), x + y, true, false)
BOP(SUBTRACT, x - y, (int64_t)((uint64_t)x - (uint64_t)y), x - y, true, false)
BOP(MULTIPLY, x *y, (int64_t)((uint64_t)x * (uint64_t)y), x *y, true, false)
BOP(DIVIDE, x / y, 0, 0, false, false)
BOP(POWER, m_pow(x, y), ipow(x, y), upow(x, y), true, false)
BOP(MAXIMUM, FMAX(x, y), x > y ? x : y, x > y ? x : y, true, false)
BOP(MINIMUM, FMIN(x, y), x < y ? x : y, x < y ? x : y, true, false)
BOP(EQUAL, (X)(x == y), x == y, x == y, true, true)
BOP(NOT_EQUAL, (X)(x != y), x != y, x != y, true, true)
BOP(LESS, (X)(x < y), x < y, x < y, true, true)
BOP(LESS_EQUAL, (X)(x <= y), x <= y, x <= y, true, true)
BOP(GREATER, (X)(x > y), x > y, x > y, true, true)
BOP(GREATER_EQUAL, (X)(x >= y), x >= y, x >= y, true, true)
BOP(LOGICAL_AND, (X)((x != 0) && (y != 0)), (x != 0) && (y != 0), (x != 0) && (y != 0), true, true)
BOP(LOGICAL_OR, (X)((x != 0) || (y != 0)), (x != 0) || (y != 0), (x != 0) || (y != 0), true, true)
#undef BOP

/* swiglu's sigmoid: swiglu_sigmoid in cuda_common.cuh */
/* per-element functions of the vector path (k_vec) */
template <class T, class OP>
struct VBin {
  OP op;
  __device__ typename T::C operator()(typename T::C x, typename T::C y, typename T::C) const {
    return op.f(x, y);
  }
};
template <class T>
struct VSwiglu { /* the roundings of SwigluF */
  __device__ typename T::C operator()(typename T::C x, typename T::C u, typename T::C) const {
    typedef typename T::C X;
    X s = T::ld(T::st(swiglu_sigmoid<T>(x)));
    X a = T::ld(T::st(x * s));
    return a * u;
  }
};
template <class T>
struct VSwigluDG { /* as SwigluGradF, which 0 */
  __device__ typename T::C operator()(typename T::C x, typename T::C u, typename T::C c) const {
    typedef typename T::C X;
    X s = (X)1 / ((X)1 + m_exp(-x));
    return c * u * (s * ((X)1 + x * ((X)1 - s)));
  }
};
template <class T>
struct VSwigluDU { /* as SwigluGradF, which 1 */
  __device__ typename T::C operator()(typename T::C x, typename T::C c, typename T::C) const {
    typedef typename T::C X;
    return c * (x * ((X)1 / ((X)1 + m_exp(-x))));
  }
};

template <class T> struct is_signed_tag { static const bool value = false; };
template <> struct is_signed_tag<TI32> { static const bool value = true; };
template <> struct is_signed_tag<TI64> { static const bool value = true; };

template <class T, class OP>
struct BinaryF {
  typedef typename T::S S;
  char *o;
  const S *a, *b;
  OP op;
  __device__ void operator()(const int64_t *off) const {
    typename T::C x = T::ld(a[off[1]]), y = T::ld(b[off[2]]);
    if constexpr (OP::cmp) {
      /* comparisons in the compute type: exact for every dtype */
      ((uint8_t *)o)[off[0]] = op.f(x, y) != 0;
    } else if constexpr (T::is_float) {
      ((S *)o)[off[0]] = T::st(op.f(x, y));
    } else if constexpr (is_signed_tag<T>::value) {
      ((S *)o)[off[0]] = T::st(op.s((int64_t)x, (int64_t)y));
    } else {
      ((S *)o)[off[0]] = T::st(op.u((uint64_t)x, (uint64_t)y));
    }
  }
};

template <class OP>
static int run_binary(mx_array *out, mx_array **in) {
  mx_dtype dt = in[0]->dtype;
  if (in[1]->dtype != dt || (!mx_dtype_is_float(dt) && !OP::ints))
    return mx__cuda_no_dtype(out, dt);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  if constexpr (!OP::cmp) {
    bool rows;
    int64_t rs[3];
    if ((dt == MX_FLOAT16 || dt == MX_BFLOAT16 || dt == MX_FLOAT32) && vec_ok(out, in, 2, &rows, rs)) {
      if (dt == MX_FLOAT16) return launch_vec<TF16, 2>(out, in, rows, rs, VBin<TF16, OP>());
      if (dt == MX_BFLOAT16) return launch_vec<TBF16, 2>(out, in, rows, rs, VBin<TBF16, OP>());
      return launch_vec<TF32, 2>(out, in, rows, rs, VBin<TF32, OP>());
    }
  }
  mx__nd<3> ix = out_nd<3>(out, in);
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(dt, {
    BinaryF<T, OP> f = {(char *)out->buf->dptr, (const T::S *)mx__ddata(in[0]),
                        (const T::S *)mx__ddata(in[1]), OP()};
    st = launch_map<3>(ix, out->size, f, mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, dt);
  return st;
}

static int k_binary(mx_array *out, mx_array **in) {
  switch (out->op->id) {
#define C(NAME) \
  case MX_OP_##NAME: return run_binary<B_##NAME>(out, in);
    C(ADD) C(SUBTRACT) C(MULTIPLY) C(DIVIDE) C(POWER) C(MAXIMUM) C(MINIMUM) C(EQUAL)
    C(NOT_EQUAL) C(LESS) C(LESS_EQUAL) C(GREATER) C(GREATER_EQUAL) C(LOGICAL_AND) C(LOGICAL_OR)
#undef C
    default: return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel", mx__opname(out));
  }
}

/* ---- swiglu ------------------------------------------------------------------------- */
/* silu(g) * u with the roundings of multiply(multiply(g, sigmoid(g)), u)
 * and the sigmoid of U_SIGMOID: the same bits as the three kernels */
template <class T>
struct SwigluF {
  typedef typename T::S S;
  S *o;
  const S *g, *u;
  __device__ void operator()(const int64_t *off) const {
    typedef typename T::C X;
    X x = T::ld(g[off[1]]);
    X s = T::ld(T::st(swiglu_sigmoid<T>(x)));
    X a = T::ld(T::st(x * s));
    o[off[0]] = T::st(a * T::ld(u[off[2]]));
  }
};

static int k_swiglu(mx_array *out, mx_array **in) {
  mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || in[0]->dtype != dt || in[1]->dtype != dt)
    return mx__cuda_no_dtype(out, in[0]->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  bool rows;
  int64_t rs[3];
  if ((dt == MX_FLOAT16 || dt == MX_BFLOAT16 || dt == MX_FLOAT32) && vec_ok(out, in, 2, &rows, rs)) {
    if (dt == MX_FLOAT16) return launch_vec<TF16, 2>(out, in, rows, rs, VSwiglu<TF16>());
    if (dt == MX_BFLOAT16) return launch_vec<TBF16, 2>(out, in, rows, rs, VSwiglu<TBF16>());
    return launch_vec<TF32, 2>(out, in, rows, rs, VSwiglu<TF32>());
  }
  mx__nd<3> ix = out_nd<3>(out, in);
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_FLOAT(dt, {
    SwigluF<T> f = {(T::S *)out->buf->dptr, (const T::S *)mx__ddata(in[0]),
                    (const T::S *)mx__ddata(in[1])};
    st = launch_map<3>(ix, out->size, f, mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, dt);
  return st;
}

/* ---- swiglu_backward (src/ops/fast_params.h) ------------------------------------------- */
template <class T>
struct SwigluGradF {
  typedef typename T::S S;
  S *o;
  const S *g, *b, *c; /* (gate, up, cot) or (gate, cot) */
  int which;
  __device__ void operator()(const int64_t *off) const {
    typedef typename T::C X;
    X x = T::ld(g[off[1]]);
    X s = (X)1 / ((X)1 + m_exp(-x));
    if (which == 0)
      o[off[0]] = T::st(T::ld(c[off[3]]) * T::ld(b[off[2]]) * (s * ((X)1 + x * ((X)1 - s))));
    else
      o[off[0]] = T::st(T::ld(b[off[2]]) * (x * s));
  }
};

/* which 2: both gradients from one read of gate, up and cot (rows of row
 * stride rg / ru / rc, nvr 16-byte vectors a row; the outputs contiguous),
 * each with the functor of its own form (the same bits). */
template <class T>
__global__ void k_swiglu_grad2(typename T::S *o0, typename T::S *o1, const typename T::S *g,
                               const typename T::S *u, const typename T::S *c, int64_t rows,
                               int64_t nvr, int64_t rg, int64_t ru, int64_t rc) {
  typedef typename T::C X;
  constexpr int N = 16 / sizeof(typename T::S);
  MX_PDL_ENTRY();
  MX_CUDA_LOOP(i, rows * nvr) {
    const int64_t r = i / nvr, cv = (i - r * nvr) * N;
    X vg[N], vu[N], vc[N], d0[N], d1[N];
    vld<T>(g, r * rg + cv, vg);
    vld<T>(u, r * ru + cv, vu);
    vld<T>(c, r * rc + cv, vc);
#pragma unroll
    for (int e = 0; e < N; e++) {
      d0[e] = VSwigluDG<T>()(vg[e], vu[e], vc[e]);
      d1[e] = VSwigluDU<T>()(vg[e], vc[e], X(0));
    }
    vst<T>(o0, i * N, d0);
    vst<T>(o1, i * N, d1);
  }
}

static int swiglu_grad_both(mx_array *out, mx_array **in) {
  const mx_dtype dt = out->dtype;
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t half = out->size / 2;
  mx_array *h[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++) {
    if (!(h[k] = mx__array_alloc_struct(dt, out->shape + 1, out->ndim - 1))) {
      mx_array_free(h[0]);
      return mx_last_status();
    }
    h[k]->device = out->device;
    mx__array_set_view(h[k], out, out->strides + 1, out->offset + k * half);
  }
  mx_array *in3[3] = {in[0], in[1], in[2]}, *gc[3] = {in[0], in[2], in[2]};
  bool rows;
  int64_t rs[3];
  const int64_t cols = h[0]->shape[h[0]->ndim - 1];
  const int N = 16 / (int)mx_dtype_size(dt);
  if ((dt == MX_FLOAT16 || dt == MX_BFLOAT16 || dt == MX_FLOAT32) && cols % N == 0 &&
      vec_ok(h[0], in3, 3, &rows, rs) && !((uintptr_t)mx__ddata(h[0]) & 15) &&
      !((uintptr_t)mx__ddata(h[1]) & 15)) {
    const int64_t nr = half / cols, nvr = cols / N;
    unsigned nb = mx__cuda_blocks(nr * nvr);
#define SG2(TAG)                                                                             \
  mx__cuda_launch_pdl(k_swiglu_grad2<TAG>, nb, MX_CUDA_THREADS, 0, (TAG::S *)mx__ddata(h[0]), \
                      (TAG::S *)mx__ddata(h[1]), (const TAG::S *)mx__ddata(in[0]),           \
                      (const TAG::S *)mx__ddata(in[1]), (const TAG::S *)mx__ddata(in[2]), nr,  \
                      nvr, rs[0], rs[1], rs[2]);
    if (dt == MX_FLOAT16) SG2(TF16)
    else if (dt == MX_BFLOAT16) SG2(TBF16)
    else SG2(TF32)
#undef SG2
    st = mx__cuda_launched(mx__opname(out));
  } else {
    st = MX_ERR_NO_KERNEL;
    MX_CUDA_DISPATCH_FLOAT(dt, {
      SwigluGradF<T> f0 = {(T::S *)mx__ddata(h[0]), (const T::S *)mx__ddata(in[0]),
                           (const T::S *)mx__ddata(in[1]), (const T::S *)mx__ddata(in[2]), 0};
      SwigluGradF<T> f1 = {(T::S *)mx__ddata(h[1]), (const T::S *)mx__ddata(in[0]),
                           (const T::S *)mx__ddata(in[2]), (const T::S *)mx__ddata(in[2]), 1};
      st = launch_map<4>(out_nd<4>(h[0], in3), half, f0, mx__opname(out));
      if (!st) st = launch_map<4>(out_nd<4>(h[1], gc), half, f1, mx__opname(out));
    })
    if (st == MX_ERR_NO_KERNEL) st = mx__cuda_no_dtype(out, dt);
  }
  mx_array_free(h[0]);
  mx_array_free(h[1]);
  return st;
}

static int k_swiglu_grad(mx_array *out, mx_array **in) {
  int which = MX__PARAMS(out, mx__swiglu_grad_params)->which, nin = which == 1 ? 2 : 3;
  mx_dtype dt = out->dtype;
  for (int i = 0; i < nin; i++)
    if (in[i]->dtype != dt || !mx_dtype_is_float(dt)) return mx__cuda_no_dtype(out, in[i]->dtype);
  if (which == 2) return swiglu_grad_both(out, in);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  mx_array *in3[3] = {in[0], in[1], nin == 3 ? in[2] : in[1]};
  bool rows;
  int64_t rs[3];
  if ((dt == MX_FLOAT16 || dt == MX_BFLOAT16 || dt == MX_FLOAT32) &&
      vec_ok(out, in3, nin, &rows, rs)) {
#define SG(TAG)                                                                   \
  return which == 0 ? launch_vec<TAG, 3>(out, in3, rows, rs, VSwigluDG<TAG>())    \
                    : launch_vec<TAG, 2>(out, in3, rows, rs, VSwigluDU<TAG>());
    if (dt == MX_FLOAT16) SG(TF16)
    if (dt == MX_BFLOAT16) SG(TBF16)
    SG(TF32)
#undef SG
  }
  mx__nd<4> ix = out_nd<4>(out, in3);
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_FLOAT(dt, {
    SwigluGradF<T> f = {(T::S *)out->buf->dptr, (const T::S *)mx__ddata(in3[0]),
                        (const T::S *)mx__ddata(in3[1]), (const T::S *)mx__ddata(in3[2]), which};
    st = launch_map<4>(ix, out->size, f, mx__opname(out));
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, dt);
  return st;
}

/* ---- adam_update (src/ops/optim_params.h) -------------------------------------------- */
/* Each product, sum and quotient rounded on its own (no contraction into
 * FMAs), as the composition of separate ops rounds them. */
__device__ __forceinline__ float r_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double r_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float r_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double r_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float r_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double r_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float r_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double r_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float r_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double r_sqrt(double a) { return __dsqrt_rn(a); }

template <class X>
struct AdamF {
  X *o;
  const X *a, *b, *c;
  int which;
  X k0, k1, c1, c2, eps;
  __device__ void operator()(const int64_t *off) const {
    if (which == MX__ADAM_M) {
      o[off[0]] = r_add(r_mul(k0, a[off[1]]), r_mul(k1, b[off[2]]));
    } else if (which == MX__ADAM_V) {
      X g = b[off[2]];
      o[off[0]] = r_add(r_mul(k0, a[off[1]]), r_mul(k1, r_mul(g, g)));
    } else {
      X den = r_add(r_mul(c2, r_sqrt(c[off[3]])), eps);
      o[off[0]] = r_sub(r_mul(k0, a[off[1]]), r_div(r_mul(c1, b[off[2]]), den));
    }
  }
};

template <class X>
static int adam_launch(mx_array *out, mx_array **in3, const mx__adam_params *p) {
  mx__nd<4> ix = out_nd<4>(out, in3);
  AdamF<X> f;
  f.o = (X *)out->buf->dptr;
  f.a = (const X *)mx__ddata(in3[0]);
  f.b = (const X *)mx__ddata(in3[1]);
  f.c = (const X *)mx__ddata(in3[2]);
  f.which = p->which;
  f.k0 = (X)(p->which == MX__ADAM_M ? p->beta1 : p->which == MX__ADAM_V ? p->beta2 : p->decay);
  f.k1 = (X)(p->which == MX__ADAM_M ? 1.0 - p->beta1 : 1.0 - p->beta2);
  f.c1 = (X)p->c1;
  f.c2 = (X)p->c2;
  f.eps = (X)p->eps;
  return launch_map<4>(ix, out->size, f, mx__opname(out));
}

/* Gradient i as X: g of X, or (GK 1 / 2) bfloat16 / float16 (exact in float) */
template <class X, int GK>
__device__ __forceinline__ X adam_ldg(const void *g, int64_t i) {
  if constexpr (GK == 1) return (X)__bfloat162float(((const __nv_bfloat16 *)g)[i]);
  else if constexpr (GK == 2) return (X)__half2float(((const __half *)g)[i]);
  else return ((const X *)g)[i];
}

/* ADAM_ALL: [m', v', p'] at o, o + n, o + 2 n (off[0] over the inputs' shape).
 * g of X, or (GK 1 / 2) bfloat16 / float16 read as float; sc, when not
 * NULL, the gradient's scale (a device scalar), applied as its own
 * rounded multiply. */
template <class X, int GK>
struct AdamAll {
  X *o;
  int64_t n;
  const X *p, *m, *v, *sc;
  const void *g;
  X b1, nb1, b2, nb2, decay, c1, c2, eps;
  __device__ __forceinline__ X ldg(int64_t i) const { return adam_ldg<X, GK>(g, i); }
  __device__ __forceinline__ void step(X pi, X mi, X vi, X gi, X s, X &m2, X &v2, X &p2) const {
    if (sc) gi = r_mul(gi, s);
    m2 = r_add(r_mul(b1, mi), r_mul(nb1, gi));
    v2 = r_add(r_mul(b2, vi), r_mul(nb2, r_mul(gi, gi)));
    const X den = r_add(r_mul(c2, r_sqrt(v2)), eps);
    p2 = r_sub(r_mul(decay, pi), r_div(r_mul(c1, m2), den));
  }
  __device__ void operator()(const int64_t *off) const {
    X m2, v2, p2;
    step(p[off[1]], m[off[2]], v[off[3]], ldg(off[4]), sc ? *sc : (X)1, m2, v2, p2);
    o[off[0]] = m2, o[n + off[0]] = v2, o[2 * n + off[0]] = p2;
  }
};

/* 4 consecutive 16-bit gradients as floats */
template <int GK>
__device__ __forceinline__ float4 ld_g4(const void *g, int64_t i) {
  if constexpr (GK == 0) {
    return __ldg((const float4 *)g + i);
  } else {
    const uint2 u = __ldg((const uint2 *)g + i);
    const uint32_t w[2] = {u.x, u.y};
    float f[4];
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const uint16_t lo = (uint16_t)(w[j] & 0xffffu), hi = (uint16_t)(w[j] >> 16);
      if constexpr (GK == 1) {
        f[2 * j] = __uint_as_float((uint32_t)lo << 16);
        f[2 * j + 1] = __uint_as_float((uint32_t)hi << 16);
      } else {
        f[2 * j] = __half2float(__ushort_as_half(lo));
        f[2 * j + 1] = __half2float(__ushort_as_half(hi));
      }
    }
    return make_float4(f[0], f[1], f[2], f[3]);
  }
}

/* contiguous float32 operands, 16-byte aligned (8 for a 16-bit g), n a
 * multiple of 4 */
template <int GK>
__global__ void k_adam_all_vec(AdamAll<float, GK> f, int64_t n4) {
  MX_PDL_ENTRY();
  const float4 *p = (const float4 *)f.p, *m = (const float4 *)f.m, *v = (const float4 *)f.v;
  float4 *om = (float4 *)f.o, *ov = om + n4, *op = ov + n4;
  const float s = f.sc ? *f.sc : 1.f;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float4 a = __ldg(p + i), b = __ldg(m + i), c = __ldg(v + i), d = ld_g4<GK>(f.g, i);
    float4 m2, v2, p2;
    f.step(a.x, b.x, c.x, d.x, s, m2.x, v2.x, p2.x);
    f.step(a.y, b.y, c.y, d.y, s, m2.y, v2.y, p2.y);
    f.step(a.z, b.z, c.z, d.z, s, m2.z, v2.z, p2.z);
    f.step(a.w, b.w, c.w, d.w, s, m2.w, v2.w, p2.w);
    om[i] = m2, ov[i] = v2, op[i] = p2;
  }
}

template <class X, int GK>
static int adam_all_launch(mx_array *out, mx_array **in, const mx__adam_params *pp) {
  AdamAll<X, GK> f;
  f.o = (X *)out->buf->dptr;
  f.n = out->size / 3;
  f.p = (const X *)mx__ddata(in[0]);
  f.m = (const X *)mx__ddata(in[1]);
  f.v = (const X *)mx__ddata(in[2]);
  f.g = (const void *)mx__ddata(in[3]);
  f.sc = pp->has_scale ? (const X *)mx__ddata(in[4]) : NULL;
  f.b1 = (X)pp->beta1, f.nb1 = (X)(1.0 - pp->beta1);
  f.b2 = (X)pp->beta2, f.nb2 = (X)(1.0 - pp->beta2);
  f.decay = (X)pp->decay, f.c1 = (X)pp->c1, f.c2 = (X)pp->c2, f.eps = (X)pp->eps;
  if (f.n == 0) return MX_OK;
  bool vec = sizeof(X) == 4 && f.n % 4 == 0;
  for (int i = 0; i < 4 && vec; i++)
    vec = in[i]->row_contiguous && !((uintptr_t)mx__ddata(in[i]) & (i == 3 && GK ? 7 : 15));
  if (vec) {
    if constexpr (sizeof(X) == 4) {
      const int64_t n4 = f.n / 4;
      mx__cuda_launch_pdl(k_adam_all_vec<GK>, dim3(mx__cuda_blocks(n4)), dim3(MX_CUDA_THREADS),
                          0, f, n4);
    }
    return mx__cuda_launched(mx__opname(out));
  }
  const int nd = out->ndim - 1;
  const int64_t *sp[5] = {NULL, in[0]->strides, in[1]->strides, in[2]->strides, in[3]->strides};
  mx__nd<5> ix = mx__nd_make<5>(out->shape + 1, nd, sp);
  return launch_map<5>(ix, f.n, f, mx__opname(out));
}

/* ---- adam_update, ADAM_MANY ----------------------------------------------------------
 * Up to AM_TAB parameters a launch (the table is a kernel argument, ~3.3 KB);
 * block b updates AM_CH elements of one parameter (the one whose block
 * range holds b, found by a binary search) with AdamAll::step: the bits of
 * ADAM_ALL. A float32 parameter whose p, m, v, g and three destinations are
 * 16-byte aligned (8 for a 16-bit g) goes 4 elements a thread at a time
 * (float4 loads and stores, as k_adam_all_vec); the rest, the tail of each
 * chunk and float64 one element at a time. Strided inputs are copied
 * contiguous first. The gradient's kind (GK) is chosen per parameter. */
enum { AM_TAB = 64, AM_CH = 16384, AM_THREADS = 256 };
struct AmTab {
  const void *p[AM_TAB], *m[AM_TAB], *v[AM_TAB], *g[AM_TAB];
  int64_t off[AM_TAB + 1];  /* each parameter's place in the rows; its size: off[i + 1] - off[i] */
  int64_t blk0[AM_TAB + 1]; /* first block of each parameter in this launch */
  int8_t gk[AM_TAB];        /* the gradient: 0 of X, 1 bfloat16, 2 float16 */
  bool vec[AM_TAB];
  int cnt;
};
/* the kernel's arguments (the table and AdamAll) within the classic 4 KB */
static_assert(sizeof(AmTab) + sizeof(AdamAll<double, 0>) <= 4096,
              "adam_update: the ADAM_MANY table is too large");

/* Elements [j0, j1) of one parameter; o: its m' (v' and p' f.n and 2 f.n
 * further). f holds the coefficients and the scale (f.o, f.p, ... unused). */
template <class X, int GK>
__device__ __forceinline__ void am_part(const AdamAll<X, 0> &f, const X *__restrict__ p,
                                        const X *__restrict__ m, const X *__restrict__ v,
                                        const void *__restrict__ g, X *__restrict__ o,
                                        int64_t j0, int64_t j1, bool vec, X s) {
  int64_t j = j0;
  if constexpr (sizeof(X) == 4) {
    if (vec) { /* j0 is a multiple of 4 (AM_CH is) */
      const int64_t nv = (j1 - j0) / 4;
      const float4 *p4 = (const float4 *)(p + j0), *m4 = (const float4 *)(m + j0);
      const float4 *v4 = (const float4 *)(v + j0);
      float4 *om = (float4 *)(o + j0), *ov = (float4 *)(o + f.n + j0);
      float4 *op = (float4 *)(o + 2 * f.n + j0);
#pragma unroll 4
      for (int64_t k = threadIdx.x; k < nv; k += AM_THREADS) {
        const float4 a = __ldg(p4 + k), b = __ldg(m4 + k), c = __ldg(v4 + k);
        const float4 d = ld_g4<GK>(g, j0 / 4 + k);
        float4 m2, v2, p2;
        f.step(a.x, b.x, c.x, d.x, s, m2.x, v2.x, p2.x);
        f.step(a.y, b.y, c.y, d.y, s, m2.y, v2.y, p2.y);
        f.step(a.z, b.z, c.z, d.z, s, m2.z, v2.z, p2.z);
        f.step(a.w, b.w, c.w, d.w, s, m2.w, v2.w, p2.w);
        om[k] = m2, ov[k] = v2, op[k] = p2;
      }
      j = j0 + nv * 4;
    }
  }
  for (j += threadIdx.x; j < j1; j += AM_THREADS) {
    X m2, v2, p2;
    f.step(p[j], m[j], v[j], adam_ldg<X, GK>(g, j), s, m2, v2, p2);
    o[j] = m2, o[f.n + j] = v2, o[2 * f.n + j] = p2;
  }
}

template <class X>
__global__ void __launch_bounds__(AM_THREADS) k_adam_many(AmTab t, AdamAll<X, 0> f) {
  MX_PDL_ENTRY();
  const int64_t b = blockIdx.x;
  int lo = 0, hi = t.cnt - 1; /* the last parameter whose first block is <= b */
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t.blk0[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  const int i = lo;
  const int64_t j0 = (b - t.blk0[i]) * AM_CH, j1 = MX_MIN(j0 + AM_CH, t.off[i + 1] - t.off[i]);
  const X s = f.sc ? *f.sc : (X)1;
  const X *p = (const X *)t.p[i], *m = (const X *)t.m[i], *v = (const X *)t.v[i];
  X *o = f.o + t.off[i];
  if constexpr (sizeof(X) == 4) {
    if (t.gk[i] == 1) return am_part<X, 1>(f, p, m, v, t.g[i], o, j0, j1, t.vec[i], s);
    if (t.gk[i] == 2) return am_part<X, 2>(f, p, m, v, t.g[i], o, j0, j1, t.vec[i], s);
  }
  am_part<X, 0>(f, p, m, v, t.g[i], o, j0, j1, t.vec[i], s);
}

static size_t am_round(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

template <class X>
static int adam_many_launch(mx_array *out, mx_array **in, const mx__adam_params *pp,
                            char *scratch) {
  const int n = pp->count;
  AdamAll<X, 0> f = {};
  f.o = (X *)out->buf->dptr;
  f.n = out->size / 3;
  f.sc = pp->has_scale ? (const X *)mx__ddata(in[4 * n]) : NULL;
  f.b1 = (X)pp->beta1, f.nb1 = (X)(1.0 - pp->beta1);
  f.b2 = (X)pp->beta2, f.nb2 = (X)(1.0 - pp->beta2);
  f.decay = (X)pp->decay, f.c1 = (X)pp->c1, f.c2 = (X)pp->c2, f.eps = (X)pp->eps;
  AmTab t;
  t.cnt = 0;
  t.blk0[0] = 0;
  int64_t off = 0;
  int st = MX_OK;
  for (int i = 0; i < n && !st; i++) {
    mx_array *q[4] = {in[i], in[n + i], in[2 * n + i], in[3 * n + i]};
    const int64_t size = q[0]->size;
    if (size > 0) {
      const void *ptr[4];
      for (int k = 0; k < 4 && !st; k++) {
        ptr[k] = mx__ddata(q[k]);
        if (!q[k]->row_contiguous) { /* a contiguous copy in its own dtype first */
          int64_t row[MX_MAX_NDIM];
          mx__compute_row_strides(q[k]->shape, q[k]->ndim, row);
          st = mx__cuda_strided_copy(scratch, row, q[k]->shape, q[k]->ndim, q[k],
                                     mx__opname(out));
          ptr[k] = scratch;
          scratch += am_round((size_t)size * mx_dtype_size(q[k]->dtype));
        }
      }
      if (st) break;
      const mx_dtype gt = q[3]->dtype;
      const int k = t.cnt++;
      t.p[k] = ptr[0], t.m[k] = ptr[1], t.v[k] = ptr[2], t.g[k] = ptr[3];
      t.off[k] = off, t.off[k + 1] = off + size; /* zero-size parameters are left out */
      t.gk[k] = (int8_t)(gt == MX_BFLOAT16 ? 1 : gt == MX_FLOAT16 ? 2 : 0);
      bool vec = sizeof(X) == 4;
      for (int r = 0; r < 3; r++)
        vec = vec && !((uintptr_t)ptr[r] & 15) && !((uintptr_t)(f.o + r * f.n + off) & 15);
      t.vec[k] = vec && !((uintptr_t)ptr[3] & (t.gk[k] ? 7 : 15));
      t.blk0[k + 1] = t.blk0[k] + (size + AM_CH - 1) / AM_CH;
    }
    off += size;
    if (t.cnt && (t.cnt == AM_TAB || i == n - 1)) {
      mx__cuda_launch_pdl(k_adam_many<X>, dim3((unsigned)t.blk0[t.cnt]), dim3(AM_THREADS), 0,
                          t, f);
      st = mx__cuda_launched(mx__opname(out));
      t.cnt = 0;
    }
  }
  return st;
}

static int k_adam_many_op(mx_array *out, mx_array **in, const mx__adam_params *p) {
  const int n = p->count;
  if (n < 1 || out->ninputs != 4 * n + (p->has_scale ? 1 : 0))
    return mx__set_error(MX_ERR_INTERNAL, "adam_update: %d inputs for %d parameters",
                         out->ninputs, n);
  const mx_dtype dt = out->dtype;
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64) return mx__cuda_no_dtype(out, dt);
  size_t extra = 0; /* contiguous copies of strided inputs */
  for (int i = 0; i < 4 * n; i++) {
    const mx_dtype t = in[i]->dtype;
    const bool low_g = i >= 3 * n && dt == MX_FLOAT32 && (t == MX_BFLOAT16 || t == MX_FLOAT16);
    if (t != dt && !low_g) return mx__cuda_no_dtype(out, t);
    if (!in[i]->row_contiguous && in[i]->size > 0)
      extra += am_round((size_t)in[i]->size * mx_dtype_size(t));
  }
  if (p->has_scale && in[4 * n]->dtype != dt) return mx__cuda_no_dtype(out, in[4 * n]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  mx__buffer *tb = extra ? mx__cuda_tmp(extra) : NULL;
  if (extra && !tb) return mx_last_status();
  char *scratch = tb ? (char *)tb->dptr : NULL;
  st = dt == MX_FLOAT64 ? adam_many_launch<double>(out, in, p, scratch)
                        : adam_many_launch<float>(out, in, p, scratch);
  if (tb) mx__buffer_release(tb); /* reused only by later work of the stream */
  return st;
}

static int k_adam_update(mx_array *out, mx_array **in) {
  const mx__adam_params *p = MX__PARAMS(out, mx__adam_params);
  if (p->which == MX__ADAM_MANY) return k_adam_many_op(out, in, p);
  if (p->which == MX__ADAM_ALL) {
    mx_dtype dt = out->dtype, gt = in[3]->dtype;
    for (int i = 0; i < 3; i++)
      if (in[i]->dtype != dt) return mx__cuda_no_dtype(out, in[i]->dtype);
    if (dt != MX_FLOAT32 && dt != MX_FLOAT64) return mx__cuda_no_dtype(out, dt);
    if (gt != dt && (dt != MX_FLOAT32 || (gt != MX_BFLOAT16 && gt != MX_FLOAT16)))
      return mx__cuda_no_dtype(out, gt);
    if (p->has_scale && (out->ninputs < 5 || in[4]->dtype != dt))
      return mx__cuda_no_dtype(out, in[out->ninputs - 1]->dtype);
    int st = mx__array_alloc_data(out);
    if (st) return st;
    if (dt == MX_FLOAT64) return adam_all_launch<double, 0>(out, in, p);
    return gt == MX_BFLOAT16 ? adam_all_launch<float, 1>(out, in, p)
           : gt == MX_FLOAT16 ? adam_all_launch<float, 2>(out, in, p)
                              : adam_all_launch<float, 0>(out, in, p);
  }
  int nin = p->which == MX__ADAM_P ? 3 : 2;
  mx_dtype dt = out->dtype;
  for (int i = 0; i < nin; i++)
    if (in[i]->dtype != dt) return mx__cuda_no_dtype(out, in[i]->dtype);
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64) return mx__cuda_no_dtype(out, dt);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  mx_array *in3[3] = {in[0], in[1], nin == 3 ? in[2] : in[0]};
  return dt == MX_FLOAT32 ? adam_launch<float>(out, in3, p) : adam_launch<double>(out, in3, p);
}

/* ---- sum_squares (src/ops/optim_params.h) ------------------------------------------- */
/* Up to SQ_TAB contiguous inputs a launch; block b sums SQ_CH elements of
 * one input (the one whose block range holds b) in float64 and writes its
 * partial; a last one-block kernel adds the partials, both in a fixed
 * order: deterministic. */
enum { SQ_TAB = 24, SQ_CH = 8192, SQ_THREADS = 256 };
struct SqTab {
  const void *p[SQ_TAB];
  int64_t n[SQ_TAB];
  int64_t blk0[SQ_TAB + 1]; /* first block of each input (partial index) */
  int dt[SQ_TAB];
  bool vec[SQ_TAB]; /* 16-byte aligned: read as 16-byte vectors */
  int cnt;
};

/* x^2 summed over the values of one 16-byte vector, in order */
template <int DT>
__device__ __forceinline__ double sq_vec(uint4 v, double acc) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    if constexpr (DT == MX_FLOAT32) {
      const double x = (double)__uint_as_float(w[i]);
      acc += x * x;
    } else {
      const double lo = DT == MX_BFLOAT16 ? (double)TBF16::ld((uint16_t)(w[i] & 0xffffu))
                                          : (double)TF16::ld((uint16_t)(w[i] & 0xffffu));
      const double hi = DT == MX_BFLOAT16 ? (double)TBF16::ld((uint16_t)(w[i] >> 16))
                                          : (double)TF16::ld((uint16_t)(w[i] >> 16));
      acc += lo * lo;
      acc += hi * hi;
    }
  }
  return acc;
}

/* A chunk [j0, j1) of an aligned input as 16-byte vectors, four a thread
 * in flight (one 2-byte load at a time ran at ~0.2 TB/s: too few bytes in
 * flight), the tail past the last whole vector scalar. */
template <int DT, class S, class L>
__device__ __forceinline__ double sq_chunk_vec(const S *p, int64_t j0, int64_t j1, L ld) {
  constexpr int PER = 16 / sizeof(S), U = 4;
  const int64_t nv = (j1 - j0) / PER;
  const uint4 *vp = (const uint4 *)(p + j0);
  double acc = 0;
  for (int64_t v0 = threadIdx.x; v0 < nv; v0 += (int64_t)U * SQ_THREADS) {
    uint4 a[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t v = v0 + (int64_t)u * SQ_THREADS;
      a[u] = v < nv ? __ldg(vp + v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) acc = sq_vec<DT>(a[u], acc);
  }
  for (int64_t j = j0 + nv * PER + threadIdx.x; j < j1; j += SQ_THREADS) {
    const double x = (double)ld(p[j]);
    acc += x * x;
  }
  return acc;
}

template <class S, class L>
__device__ __forceinline__ double sq_chunk(const S *p, int64_t j0, int64_t j1, L ld) {
  double acc = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += SQ_THREADS) {
    const double x = (double)ld(p[j]);
    acc += x * x;
  }
  return acc;
}

__global__ void __launch_bounds__(SQ_THREADS) k_sumsq(SqTab t, double *part) {
  __shared__ double sh[SQ_THREADS / 32];
  MX_PDL_ENTRY();
  const int64_t b = t.blk0[0] + blockIdx.x;
  int i = 0;
  while (i + 1 < t.cnt && b >= t.blk0[i + 1]) i++;
  const int64_t j0 = (b - t.blk0[i]) * SQ_CH, j1 = MX_MIN(j0 + SQ_CH, t.n[i]);
  double acc = 0;
  const auto lh = [](uint16_t v) { return TF16::ld(v); };
  const auto lb = [](uint16_t v) { return TBF16::ld(v); };
  const auto lf = [](float v) { return v; };
  switch (t.dt[i]) {
    case MX_FLOAT16:
      acc = t.vec[i] ? sq_chunk_vec<MX_FLOAT16>((const uint16_t *)t.p[i], j0, j1, lh)
                     : sq_chunk((const uint16_t *)t.p[i], j0, j1, lh);
      break;
    case MX_BFLOAT16:
      acc = t.vec[i] ? sq_chunk_vec<MX_BFLOAT16>((const uint16_t *)t.p[i], j0, j1, lb)
                     : sq_chunk((const uint16_t *)t.p[i], j0, j1, lb);
      break;
    case MX_FLOAT32:
      acc = t.vec[i] ? sq_chunk_vec<MX_FLOAT32>((const float *)t.p[i], j0, j1, lf)
                     : sq_chunk((const float *)t.p[i], j0, j1, lf);
      break;
    default:
      acc = sq_chunk((const double *)t.p[i], j0, j1, [](double v) { return v; });
      break;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double r = 0;
    for (int w = 0; w < SQ_THREADS / 32; w++) r += sh[w];
    part[b] = r;
  }
}

__global__ void __launch_bounds__(1024) k_sumsq_final(const double *part, int64_t np, void *out,
                                                      bool f64) {
  __shared__ double sh[32];
  MX_PDL_ENTRY();
  double acc = 0;
  for (int64_t j = threadIdx.x; j < np; j += blockDim.x) acc += part[j];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double r = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) r += sh[w];
    if (f64) *(double *)out = r;
    else *(float *)out = (float)r;
  }
}

/* MXC_SUMSQ_VEC=0: one value a load (A/B) */
static bool mx__cuda_sumsq_vec(void) {
  static int on = -1;
  return mx__env_on("MXC_SUMSQ_VEC", &on);
}

static int k_sum_squares(mx_array *out, mx_array **in) {
  const int n = out->ninputs;
  for (int i = 0; i < n; i++)
    if (!mx_dtype_is_float(in[i]->dtype)) return mx__cuda_no_dtype(out, in[i]->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  int64_t nblk = 0;
  for (int i = 0; i < n; i++) nblk += (in[i]->size + SQ_CH - 1) / SQ_CH;
  /* the partials, then contiguous copies of strided inputs */
  size_t extra = 0;
  for (int i = 0; i < n; i++)
    if (!in[i]->row_contiguous && in[i]->size > 0)
      extra += ((size_t)in[i]->size * mx_dtype_size(in[i]->dtype) + 255) & ~(size_t)255;
  const size_t pbytes = ((size_t)MX_MAX(nblk, 1) * sizeof(double) + 255) & ~(size_t)255;
  mx__buffer *tb = mx__cuda_tmp(pbytes + extra);
  if (!tb) return mx_last_status();
  double *part = (double *)tb->dptr;
  char *cp = (char *)tb->dptr + pbytes;
  cudaStream_t s = mx__cuda_stream();
  SqTab t;
  t.cnt = 0;
  t.blk0[0] = 0;
  int64_t b0 = 0;
  for (int i = 0; i < n && !st; i++) {
    mx_array *a = in[i];
    if (a->size == 0) continue;
    const void *p = mx__ddata(a);
    if (!a->row_contiguous) {
      int64_t row[MX_MAX_NDIM];
      mx__compute_row_strides(a->shape, a->ndim, row);
      st = mx__cuda_strided_copy(cp, row, a->shape, a->ndim, a, "sum_squares");
      p = cp;
      cp += ((size_t)a->size * mx_dtype_size(a->dtype) + 255) & ~(size_t)255;
    }
    const int k = t.cnt++;
    t.p[k] = p, t.n[k] = a->size, t.dt[k] = (int)a->dtype;
    t.vec[k] = !((uintptr_t)p & 15) && mx__cuda_sumsq_vec();
    t.blk0[k + 1] = t.blk0[k] + (a->size + SQ_CH - 1) / SQ_CH;
    if (t.cnt == SQ_TAB || i == n - 1) {
      const int64_t nb = t.blk0[t.cnt] - t.blk0[0];
      k_sumsq<<<(unsigned)nb, SQ_THREADS, 0, s>>>(t, part);
      st = mx__cuda_launched("sum_squares");
      b0 = t.blk0[t.cnt];
      t.cnt = 0;
      t.blk0[0] = b0;
    }
  }
  if (!st && t.cnt) { /* trailing 0-size inputs ended the loop with a table left */
    k_sumsq<<<(unsigned)(t.blk0[t.cnt] - t.blk0[0]), SQ_THREADS, 0, s>>>(t, part);
    st = mx__cuda_launched("sum_squares");
  }
  if (!st) {
    k_sumsq_final<<<1, 1024, 0, s>>>(part, nblk, out->buf->dptr, out->dtype == MX_FLOAT64);
    st = mx__cuda_launched("sum_squares");
  }
  mx__buffer_release(tb); /* reused only by later work of the stream */
  return st;
}

/* ---- cast_concat (src/ops/optim_params.h) -------------------------------------------
 * Up to CC_TAB inputs a launch; block b converts CC_CH elements of one
 * input (the one whose block range holds b) into its part of the output.
 * Parts whose source and destination are 16-byte aligned go 8 elements at
 * a time (16-byte loads and stores); the rest one element at a time. Each
 * element as astype converts it (TO::st(TI::ld(x))). */
enum { CC_TAB = 32, CC_CH = 16384, CC_THREADS = 256 };
struct CcTab {
  const void *p[CC_TAB];
  int64_t off[CC_TAB], n[CC_TAB];
  int64_t blk0[CC_TAB + 1]; /* first block of each input in this launch */
  int dt[CC_TAB];
  bool vec[CC_TAB];
  int cnt;
};

template <class TI, class TO>
__device__ __forceinline__ void cc_part(const typename TI::S *__restrict__ a,
                                        typename TO::S *__restrict__ o, int64_t j0, int64_t j1,
                                        bool vec) {
  typedef typename TI::S SI;
  typedef typename TO::S SO;
  int64_t j = j0;
  if (vec) {
    struct alignas(16) VI { SI v[8]; };
    struct alignas(16) VO { SO v[8]; };
    const int64_t nv = (j1 - j0) / 8;
    const VI *vi = (const VI *)(a + j0);
    VO *vo = (VO *)(o + j0);
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < nv; v += CC_THREADS) {
      const VI x = vi[v];
      VO y;
#pragma unroll
      for (int e = 0; e < 8; e++) y.v[e] = TO::st(TI::ld(x.v[e]));
      vo[v] = y;
    }
    j = j0 + nv * 8;
  }
  for (j += threadIdx.x; j < j1; j += CC_THREADS) o[j] = TO::st(TI::ld(a[j]));
}

template <class TO>
__global__ void __launch_bounds__(CC_THREADS) k_cast_concat(CcTab t, typename TO::S *o) {
  MX_PDL_ENTRY();
  const int64_t b = blockIdx.x;
  int i = 0;
  while (i + 1 < t.cnt && b >= t.blk0[i + 1]) i++;
  const int64_t j0 = (b - t.blk0[i]) * CC_CH, j1 = MX_MIN(j0 + CC_CH, t.n[i]);
  typename TO::S *oi = o + t.off[i];
  switch (t.dt[i]) {
    case MX_FLOAT16: cc_part<TF16, TO>((const uint16_t *)t.p[i], oi, j0, j1, t.vec[i]); break;
    case MX_BFLOAT16: cc_part<TBF16, TO>((const uint16_t *)t.p[i], oi, j0, j1, t.vec[i]); break;
    case MX_FLOAT32: cc_part<TF32, TO>((const float *)t.p[i], oi, j0, j1, t.vec[i]); break;
    default: cc_part<TF64, TO>((const double *)t.p[i], oi, j0, j1, t.vec[i]); break;
  }
}

template <class TO>
static int cast_concat_launch(mx_array *out, mx_array **in, char *scratch) {
  const int n = out->ninputs;
  typename TO::S *o = (typename TO::S *)out->buf->dptr;
  cudaStream_t s = mx__cuda_stream();
  CcTab t;
  t.cnt = 0;
  t.blk0[0] = 0;
  int64_t off = 0;
  int st = MX_OK;
  for (int i = 0; i < n && !st; i++) {
    mx_array *a = in[i];
    const int64_t size = a->size;
    if (size > 0) {
      const void *p = mx__ddata(a);
      if (!a->row_contiguous) { /* a contiguous copy in its own dtype first */
        int64_t row[MX_MAX_NDIM];
        mx__compute_row_strides(a->shape, a->ndim, row);
        st = mx__cuda_strided_copy(scratch, row, a->shape, a->ndim, a, "cast_concat");
        p = scratch;
        scratch += ((size_t)size * mx_dtype_size(a->dtype) + 255) & ~(size_t)255;
      }
      const int k = t.cnt++;
      t.p[k] = p, t.off[k] = off, t.n[k] = size, t.dt[k] = (int)a->dtype;
      t.vec[k] = !((uintptr_t)p & 15) && !((uintptr_t)(o + off) & 15);
      t.blk0[k + 1] = t.blk0[k] + (size + CC_CH - 1) / CC_CH;
    }
    off += size;
    if (!st && t.cnt && (t.cnt == CC_TAB || i == n - 1)) {
      k_cast_concat<TO><<<(unsigned)t.blk0[t.cnt], CC_THREADS, 0, s>>>(t, o);
      st = mx__cuda_launched("cast_concat");
      t.cnt = 0;
    }
  }
  return st;
}

static int k_cast_concat_op(mx_array *out, mx_array **in) {
  const int n = out->ninputs;
  for (int i = 0; i < n; i++)
    if (!mx_dtype_is_float(in[i]->dtype)) return mx__cuda_no_dtype(out, in[i]->dtype);
  if (!mx_dtype_is_float(out->dtype)) return mx__cuda_no_dtype(out, out->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  size_t extra = 0;
  for (int i = 0; i < n; i++)
    if (!in[i]->row_contiguous && in[i]->size > 0)
      extra += ((size_t)in[i]->size * mx_dtype_size(in[i]->dtype) + 255) & ~(size_t)255;
  mx__buffer *tb = extra ? mx__cuda_tmp(extra) : NULL;
  if (extra && !tb) return mx_last_status();
  char *scratch = tb ? (char *)tb->dptr : NULL;
  switch (out->dtype) {
    case MX_FLOAT16: st = cast_concat_launch<TF16>(out, in, scratch); break;
    case MX_BFLOAT16: st = cast_concat_launch<TBF16>(out, in, scratch); break;
    case MX_FLOAT32: st = cast_concat_launch<TF32>(out, in, scratch); break;
    default: st = cast_concat_launch<TF64>(out, in, scratch); break;
  }
  if (tb) mx__buffer_release(tb); /* reused only by later work of the stream */
  return st;
}

/* ---- astype ------------------------------------------------------------------------- */
template <class TI, class TO>
struct AstypeF {
  typename TO::S *o;
  const typename TI::S *a;
  __device__ void operator()(const int64_t *off) const {
    o[off[0]] = TO::st(TI::ld(a[off[1]]));
  }
};

template <class TI>
static int astype_from(mx_array *out, mx_array **in, const mx__nd<2> &ix) {
  int st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(out->dtype, {
    AstypeF<TI, T> f = {(T::S *)out->buf->dptr, (const typename TI::S *)mx__ddata(in[0])};
    st = launch_map<2>(ix, out->size, f, "astype");
  })
  return st;
}

static int k_astype(mx_array *out, mx_array **in) {
  int st = mx__array_alloc_data(out);
  if (st) return st;
  mx__nd<2> ix = out_nd<2>(out, in);
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(in[0]->dtype, st = astype_from<T>(out, in, ix);)
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, in[0]->dtype);
  return st;
}

/* ---- where / copy --------------------------------------------------------------------- */
template <class S>
struct WhereF {
  S *o;
  const uint8_t *c;
  const S *a, *b;
  __device__ void operator()(const int64_t *off) const {
    o[off[0]] = c[off[1]] ? a[off[2]] : b[off[3]];
  }
};

static int k_where(mx_array *out, mx_array **in) {
  int st = mx__array_alloc_data(out);
  if (st) return st;
  mx__nd<4> ix = out_nd<4>(out, in);
  const uint8_t *c = (const uint8_t *)mx__ddata(in[0]);
  switch (mx_dtype_size(out->dtype)) {
#define C(N, S)                                                                          \
  case N: {                                                                              \
    WhereF<S> f = {(S *)out->buf->dptr, c, (const S *)mx__ddata(in[1]), (const S *)mx__ddata(in[2])}; \
    return launch_map<4>(ix, out->size, f, "where");                                     \
  }
    C(1, uint8_t) C(2, uint16_t) C(4, uint32_t) C(8, uint64_t)
#undef C
    default: return mx__cuda_no_dtype(out, out->dtype);
  }
}

template <class S>
struct CopyF {
  S *o;
  const S *a;
  __device__ void operator()(const int64_t *off) const { o[off[0]] = a[off[1]]; }
};

int mx__cuda_strided_copy(char *dst, const int64_t *dst_strides, const int64_t *shape, int ndim,
                          const mx_array *src, const char *what) {
  int64_t sst[MX_MAX_NDIM];
  mx__bcast_strides(src, shape, ndim, sst);
  const int64_t *sp[2] = {dst_strides, sst};
  mx__nd<2> ix = mx__nd_make<2>(shape, ndim, sp);
  int64_t n = mx__shape_size(shape, ndim);
  /* rows contiguous on both sides (a transpose of the leading axes, a
   * slice, a broadcast of rows): move 16-, 8- or 4-byte words, one index
   * computation per word instead of per element */
  const int64_t es = (int64_t)mx_dtype_size(src->dtype);
  const char *sp0 = mx__ddata(src);
  const int l = ix.ndim - 1;
  if (n > 0 && l >= 0 && ix.st[0][l] == 1 && ix.st[1][l] == 1) {
    for (int64_t V = 16; V > es && V >= 4; V /= 2) {
      bool ok = (ix.shape[l] * es) % V == 0 && ((uintptr_t)dst % V) == 0 &&
                ((uintptr_t)sp0 % V) == 0;
      for (int d = 0; d < l && ok; d++)
        ok = (ix.st[0][d] * es) % V == 0 && (ix.st[1][d] * es) % V == 0;
      if (!ok) continue;
      mx__nd<2> w = ix;
      const int64_t r = V / es;
      w.shape[l] /= r;
      for (int d = 0; d < l; d++) w.st[0][d] /= r, w.st[1][d] /= r;
      const int64_t nw = n / r;
      if (V == 16) {
        CopyF<uint4> f = {(uint4 *)dst, (const uint4 *)sp0};
        return launch_map<2>(w, nw, f, what);
      }
      if (V == 8) {
        CopyF<uint2> f = {(uint2 *)dst, (const uint2 *)sp0};
        return launch_map<2>(w, nw, f, what);
      }
      CopyF<uint32_t> f = {(uint32_t *)dst, (const uint32_t *)sp0};
      return launch_map<2>(w, nw, f, what);
    }
  }
  switch (mx_dtype_size(src->dtype)) {
#define C(N, S)                                                                 \
  case N: {                                                                     \
    CopyF<S> f = {(S *)dst, (const S *)mx__ddata(src)};                         \
    return launch_map<2>(ix, n, f, what);                                       \
  }
    C(1, uint8_t) C(2, uint16_t) C(4, uint32_t) C(8, uint64_t)
#undef C
    default: return mx__set_error(MX_ERR_INTERNAL, "%s: bad element size", what);
  }
}

int mx__cuda_copy_to_contiguous(const mx_array *in, void *dst) {
  int64_t row[MX_MAX_NDIM];
  mx__compute_row_strides(in->shape, in->ndim, row);
  return mx__cuda_strided_copy((char *)dst, row, in->shape, in->ndim, in, "copy");
}

/* COPY and FULL: in[0] broadcast to out's shape. */
static int k_copy(mx_array *out, mx_array **in) {
  int st = mx__array_alloc_data(out);
  if (st) return st;
  return mx__cuda_strided_copy((char *)out->buf->dptr, out->strides, out->shape, out->ndim, in[0],
                               mx__opname(out));
}

/* ---- arange ---------------------------------------------------------------------------- */
typedef struct {
  double start, step;
} arange_params; /* as src/ops/creation.c */

template <class T>
__global__ void k_arange_kernel(typename T::S *o, int64_t n, double start, double step) {
  MX_CUDA_LOOP(i, n) o[i] = T::st(start + (double)i * step);
}

static int k_arange(mx_array *out, mx_array **in) {
  MX_UNUSED(in);
  const arange_params *p = MX__PARAMS(out, arange_params);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  st = MX_ERR_NO_KERNEL;
  MX_CUDA_DISPATCH_ALL(out->dtype, {
    k_arange_kernel<T><<<mx__cuda_blocks(out->size), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
        (T::S *)out->buf->dptr, out->size, p->start, p->step);
    st = mx__cuda_launched("arange");
  })
  if (st == MX_ERR_NO_KERNEL) return mx__cuda_no_dtype(out, out->dtype);
  return st;
}

static int k_stop_gradient(mx_array *out, mx_array **in) {
  mx__array_set_same(out, in[0]);
  return MX_OK;
}

void mx__cuda_register_elementwise(mx__kernel_fn *k) {
  static const mx__op_id unary_ops[] = {
      MX_OP_NEGATIVE, MX_OP_ABS,   MX_OP_SIGN,    MX_OP_SQUARE, MX_OP_SQRT,   MX_OP_RSQRT,
      MX_OP_RECIPROCAL, MX_OP_EXP, MX_OP_EXPM1,   MX_OP_LOG,    MX_OP_LOG1P,  MX_OP_SIN,
      MX_OP_COS,      MX_OP_TANH,  MX_OP_SIGMOID, MX_OP_ERF,    MX_OP_ERFINV, MX_OP_ISNAN,
      MX_OP_ISINF,    MX_OP_LOGICAL_NOT, MX_OP_FLOOR, MX_OP_CEIL, MX_OP_ROUND};
  for (size_t i = 0; i < sizeof unary_ops / sizeof *unary_ops; i++) k[unary_ops[i]] = k_unary;
  static const mx__op_id binary_ops[] = {
      MX_OP_ADD,   MX_OP_SUBTRACT,  MX_OP_MULTIPLY,   MX_OP_DIVIDE,  MX_OP_POWER,
      MX_OP_MAXIMUM, MX_OP_MINIMUM, MX_OP_EQUAL,      MX_OP_NOT_EQUAL, MX_OP_LESS,
      MX_OP_LESS_EQUAL, MX_OP_GREATER, MX_OP_GREATER_EQUAL, MX_OP_LOGICAL_AND,
      MX_OP_LOGICAL_OR};
  for (size_t i = 0; i < sizeof binary_ops / sizeof *binary_ops; i++) k[binary_ops[i]] = k_binary;
  k[MX_OP_SWIGLU] = k_swiglu;
  k[MX_OP_CAST_CONCAT] = k_cast_concat_op;
  k[MX_OP_ADAM_UPDATE] = k_adam_update;
  k[MX_OP_SUM_SQUARES] = k_sum_squares;
  k[MX_OP_SWIGLU_GRAD] = k_swiglu_grad;
  k[MX_OP_ASTYPE] = k_astype;
  k[MX_OP_WHERE] = k_where;
  k[MX_OP_COPY] = k_copy;
  k[MX_OP_FULL] = k_copy;
  k[MX_OP_ARANGE] = k_arange;
  k[MX_OP_STOP_GRADIENT] = k_stop_gradient;
}
