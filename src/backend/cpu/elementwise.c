/* elementwise.c — CPU kernels for unary, binary, where, astype, full,
 * arange and copy. Loops are generated per dtype from the macros in
 * types.h; f16/bf16 compute in f32. Inputs may be strided or broadcast;
 * outputs are row-contiguous. */
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "ops/fast_params.h"
#include "ops/optim_params.h"
#include "types.h"
#include "vmath.h"

/* abs/sign on unsigned types compare with 0 by design */
#pragma GCC diagnostic ignored "-Wtype-limits"

static mx__inner_fn unary_fns[MX__OP_COUNT][MX_DTYPE_COUNT];
static mx__inner_fn binary_fns[MX__OP_COUNT][MX_DTYPE_COUNT];
static mx__inner_fn astype_fns[MX_DTYPE_COUNT][MX_DTYPE_COUNT];

/* ---- unary ----------------------------------------------------------------- */
#define UNARY_LOOP(NAME, TI, TO, EXPR)                                             \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {        \
    MX_UNUSED(c_);                                                                 \
    T_##TO *o = (T_##TO *)p[0];                                                    \
    const T_##TI *a = (const T_##TI *)p[1];                                        \
    int64_t sa = s[1];                                                             \
    if (sa == 1) {                                                                 \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI x = LD_##TI(a[i]);                                                  \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    } else {                                                                       \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI x = LD_##TI(a[i * sa]);                                             \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    }                                                                              \
  }

/* math on float types: the generic functions pick float or double */
#define GEN(x, FN) _Generic((x), float: FN##f, default: FN)(x)
static inline float erfinvf_(float x) { return (float)mx__erfinv(x); }
static inline double erfinv_(double x) { return mx__erfinv(x); }
#define VEXP(x) _Generic((x), float: mx__vexpf, default: exp)(x)
#define ERFINV(x) _Generic((x), float: erfinvf_, default: erfinv_)(x)

#define DEF_UF(TAG, OP, EXPR) UNARY_LOOP(u_##OP##_##TAG, TAG, TAG, EXPR)
#define REG_UF(TAG, OP) unary_fns[MX_OP_##OP][DT_##TAG] = u_##OP##_##TAG;
#define FLOAT_UNARY(X)                                   \
  X(SQRT, GEN(x, sqrt))                                  \
  X(RSQRT, 1 / GEN(x, sqrt))                             \
  X(RECIPROCAL, 1 / x)                                   \
  X(EXP, VEXP(x))                                        \
  X(EXPM1, GEN(x, expm1))                                \
  X(LOG, GEN(x, log))                                    \
  X(LOG1P, GEN(x, log1p))                                \
  X(SIN, GEN(x, sin))                                    \
  X(COS, GEN(x, cos))                                    \
  X(TANH, GEN(x, tanh))                                  \
  X(SIGMOID, 1 / (1 + VEXP(-x)))                        \
  X(ERF, GEN(x, erf))                                    \
  X(ERFINV, ERFINV(x))                                   \
  X(FLOOR, GEN(x, floor))                                \
  X(CEIL, GEN(x, ceil))                                  \
  X(ROUND, GEN(x, rint))                                 \
  X(NEGATIVE, -x)                                        \
  X(ABS, GEN(x, fabs))                                   \
  X(SIGN, (x > 0) - (x < 0) + 0 * x)                     \
  X(SQUARE, x * x)
#define DEF_FLOAT_UNARY(OP, EXPR) MX_FLOAT_TAGS(DEF_UF, OP, EXPR)
FLOAT_UNARY(DEF_FLOAT_UNARY)

/* integer unary: wrapping, no UB */
static inline int64_t neg_i64(int64_t x) { return (int64_t)(0u - (uint64_t)x); }
static inline int64_t sq_i64(int64_t x) { return (int64_t)((uint64_t)x * (uint64_t)x); }
#define INT_UNARY(X)                                             \
  X(NEGATIVE, neg_i64((int64_t)x))                               \
  X(ABS, x < 0 ? neg_i64((int64_t)x) : (int64_t)x)               \
  X(SIGN, (x > 0) - (x < 0))                                     \
  X(SQUARE, sq_i64((int64_t)x))
#define DEF_INT_UNARY(OP, EXPR) MX_INT_TAGS(DEF_UF, OP, EXPR) DEF_UF(BOOL, OP, EXPR)
INT_UNARY(DEF_INT_UNARY)

/* predicates -> bool */
#define DEF_PRED(TAG, OP, EXPR) UNARY_LOOP(u_##OP##_##TAG, TAG, BOOL, EXPR)
#define PRED_FLOAT(X) X(ISNAN, x != x) X(ISINF, GEN(x, fabs) == INFINITY) X(LOGICAL_NOT, x == 0)
#define DEF_PRED_FLOAT(OP, EXPR) MX_FLOAT_TAGS(DEF_PRED, OP, EXPR)
PRED_FLOAT(DEF_PRED_FLOAT)
#define DEF_PRED_INT(OP, EXPR) MX_INT_TAGS(DEF_PRED, OP, EXPR) DEF_PRED(BOOL, OP, EXPR)
DEF_PRED_INT(ISNAN, 0 * x)
DEF_PRED_INT(ISINF, 0 * x)
DEF_PRED_INT(LOGICAL_NOT, x == 0)

/* ---- binary ------------------------------------------------------------------ */
#define BINARY_LOOP(NAME, TI, TO, EXPR)                                            \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {        \
    MX_UNUSED(c_);                                                                 \
    T_##TO *o = (T_##TO *)p[0];                                                    \
    const T_##TI *a = (const T_##TI *)p[1];                                        \
    const T_##TI *b = (const T_##TI *)p[2];                                        \
    int64_t sa = s[1], sb = s[2];                                                  \
    if (sa == 1 && sb == 1) {                                                      \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI x = LD_##TI(a[i]), y = LD_##TI(b[i]);                               \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    } else if (sa == 1 && sb == 0) {                                               \
      C_##TI y = LD_##TI(b[0]);                                                    \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI x = LD_##TI(a[i]);                                                  \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    } else if (sa == 0 && sb == 1) {                                               \
      C_##TI x = LD_##TI(a[0]);                                                    \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI y = LD_##TI(b[i]);                                                  \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    } else {                                                                       \
      for (int64_t i = 0; i < n; i++) {                                            \
        C_##TI x = LD_##TI(a[i * sa]), y = LD_##TI(b[i * sb]);                     \
        o[i] = ST_##TO(EXPR);                                                      \
      }                                                                            \
    }                                                                              \
  }

#define DEF_BF(TAG, OP, EXPR) BINARY_LOOP(b_##OP##_##TAG, TAG, TAG, EXPR)
#define DEF_BC(TAG, OP, EXPR) BINARY_LOOP(b_##OP##_##TAG, TAG, BOOL, EXPR)
#define REG_B(TAG, OP) binary_fns[MX_OP_##OP][DT_##TAG] = b_##OP##_##TAG;

/* NaN-propagating max/min as NumPy/MLX */
#define FMAX(x, y) ((x) != (x) ? (x) : (y) != (y) ? (y) : (x) > (y) ? (x) : (y))
#define FMIN(x, y) ((x) != (x) ? (x) : (y) != (y) ? (y) : (x) < (y) ? (x) : (y))
#define FLOAT_BINARY(X)                         \
  X(ADD, x + y)                                 \
  X(SUBTRACT, x - y)                            \
  X(MULTIPLY, x * y)                            \
  X(DIVIDE, x / y)                              \
  X(POWER, _Generic((x), float: powf, default: pow)(x, y)) \
  X(MAXIMUM, FMAX(x, y))                        \
  X(MINIMUM, FMIN(x, y))
#define DEF_FLOAT_BINARY(OP, EXPR) MX_FLOAT_TAGS(DEF_BF, OP, EXPR)
FLOAT_BINARY(DEF_FLOAT_BINARY)

static inline int64_t add_i64(int64_t x, int64_t y) { return (int64_t)((uint64_t)x + (uint64_t)y); }
static inline int64_t sub_i64(int64_t x, int64_t y) { return (int64_t)((uint64_t)x - (uint64_t)y); }
static inline int64_t mul_i64(int64_t x, int64_t y) { return (int64_t)((uint64_t)x * (uint64_t)y); }
static inline int64_t ipow(int64_t b, int64_t e) {
  if (e < 0) return b == 1 ? 1 : b == -1 ? ((e & 1) ? -1 : 1) : 0;
  int64_t r = 1;
  while (e) {
    if (e & 1) r = mul_i64(r, b);
    b = mul_i64(b, b);
    e >>= 1;
  }
  return r;
}
static inline uint64_t upow(uint64_t b, uint64_t e) {
  uint64_t r = 1;
  while (e) {
    if (e & 1) r *= b;
    b *= b;
    e >>= 1;
  }
  return r;
}
#define INT_BINARY_S(X)                             \
  X(ADD, add_i64(x, y))                             \
  X(SUBTRACT, sub_i64(x, y))                        \
  X(MULTIPLY, mul_i64(x, y))                        \
  X(POWER, ipow(x, y))                              \
  X(MAXIMUM, x > y ? x : y)                         \
  X(MINIMUM, x < y ? x : y)
#define INT_BINARY_U(X)                             \
  X(ADD, (uint64_t)x + (uint64_t)y)                 \
  X(SUBTRACT, (uint64_t)x - (uint64_t)y)            \
  X(MULTIPLY, (uint64_t)x * (uint64_t)y)            \
  X(POWER, upow(x, y))                              \
  X(MAXIMUM, x > y ? x : y)                         \
  X(MINIMUM, x < y ? x : y)
#define DEF_S_BINARY(OP, EXPR) DEF_BF(I32, OP, EXPR) DEF_BF(I64, OP, EXPR)
#define DEF_U_BINARY(OP, EXPR) DEF_BF(U8, OP, EXPR) DEF_BF(U32, OP, EXPR) DEF_BF(BOOL, OP, EXPR)
INT_BINARY_S(DEF_S_BINARY)
INT_BINARY_U(DEF_U_BINARY)

#define CMP_BINARY(X)          \
  X(EQUAL, x == y)             \
  X(NOT_EQUAL, x != y)         \
  X(LESS, x < y)               \
  X(LESS_EQUAL, x <= y)        \
  X(GREATER, x > y)            \
  X(GREATER_EQUAL, x >= y)     \
  X(LOGICAL_AND, (x != 0) && (y != 0)) \
  X(LOGICAL_OR, (x != 0) || (y != 0))
#define DEF_CMP(OP, EXPR) MX_ALL_TAGS(DEF_BC, OP, EXPR)
CMP_BINARY(DEF_CMP)

/* ---- astype -------------------------------------------------------------------- */
/* Conversions go through double for floats, int64 for integers; float to
 * integer saturates (NaN -> 0), as MLX's CPU backend does in practice. */
#define TOD_BOOL(v) ((double)(v))
#define CONV_TO_BOOL(x) ((x) != 0)
#define CONV_TO_U8(x) mx__d2u8((double)(x))
#define CONV_TO_U32(x) mx__d2u32((double)(x))
#define CONV_TO_I32(x) mx__d2i32((double)(x))
#define CONV_TO_I64(x) mx__d2i64((double)(x))
#define CONV_TO_F16(x) (x)
#define CONV_TO_BF16(x) (x)
#define CONV_TO_F32(x) (x)
#define CONV_TO_F64(x) (x)
/* int -> int keeps exactness by converting through int64 (wrapping as C). */
#define ICONV_TO_BOOL(x) ((x) != 0)
#define ICONV_TO_U8(x) ((uint8_t)(uint64_t)(x))
#define ICONV_TO_U32(x) ((uint32_t)(uint64_t)(x))
#define ICONV_TO_I32(x) ((int32_t)(int64_t)(x))
#define ICONV_TO_I64(x) ((int64_t)(x))
#define ICONV_TO_F16(x) ((float)(x))
#define ICONV_TO_BF16(x) ((float)(x))
#define ICONV_TO_F32(x) ((float)(x))
#define ICONV_TO_F64(x) ((double)(x))

#define DEF_AST_F(TO, FROM) UNARY_LOOP(a_##FROM##_##TO, FROM, TO, CONV_TO_##TO(x))
#define DEF_AST_I(TO, FROM) UNARY_LOOP(a_##FROM##_##TO, FROM, TO, ICONV_TO_##TO(x))
#define DEF_AST_FROM_F(FROM, _) MX_ALL_TAGS_INNER(DEF_AST_F, FROM)
#define DEF_AST_FROM_I(FROM, _) MX_ALL_TAGS_INNER(DEF_AST_I, FROM)
MX_FLOAT_TAGS(DEF_AST_FROM_F, 0)
MX_INT_TAGS(DEF_AST_FROM_I, 0)
DEF_AST_FROM_I(BOOL, 0)
#define REG_AST(TO, FROM) astype_fns[DT_##FROM][DT_##TO] = a_##FROM##_##TO;
#define REG_AST_FROM(FROM, _) MX_ALL_TAGS_INNER(REG_AST, FROM)

void mx__cpu_convert(const void *src, mx_dtype sdt, void *dst, mx_dtype ddt, int64_t n) {
  char *p[2] = {dst, (char *)src};
  int64_t s[2] = {1, 1};
  if (sdt == ddt) memcpy(dst, src, (size_t)n * mx_dtype_size(sdt));
  else astype_fns[sdt][ddt](p, s, n, NULL);
}

/* ---- kernels ---------------------------------------------------------------------- */
/* Strides that broadcast `in` over `shape` (right-aligned). */
static void bcast_strides(const mx_array *in, const int64_t *shape, int ndim, int64_t *st) {
  int off = ndim - in->ndim;
  for (int d = 0; d < ndim; d++) {
    int id = d - off;
    st[d] = (id < 0 || in->shape[id] == 1) ? 0 : in->strides[id];
  }
}

static int no_kernel(mx_array *out, mx_dtype dt) {
  return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CPU kernel for dtype %s",
                       mx__op_names[out->op->id], mx_dtype_name(dt));
}

/* f over a row-contiguous output at obase (dtype odt, shape/nd) and the
 * inputs broadcast to that shape. */
static void run_nary_into(char *obase, mx_dtype odt, const int64_t *shape, int nd, mx_array **in,
                          int nin, mx__inner_fn f) {
  char *base[MX__MAX_OPERANDS];
  size_t el[MX__MAX_OPERANDS];
  int64_t strides[MX__MAX_OPERANDS][MX_MAX_NDIM];
  const int64_t *sp[MX__MAX_OPERANDS];
  base[0] = obase;
  el[0] = mx_dtype_size(odt);
  sp[0] = NULL;
  for (int i = 0; i < nin; i++) {
    base[i + 1] = mx__data(in[i]);
    el[i + 1] = mx_dtype_size(in[i]->dtype);
    bcast_strides(in[i], shape, nd, strides[i + 1]);
    sp[i + 1] = strides[i + 1];
  }
  mx__nd_iter it;
  mx__iter_init(&it, shape, nd, nin + 1, base, el, sp);
  mx__iter_run(&it, f, NULL);
}

static int run_nary(mx_array *out, mx_array **in, int nin, mx__inner_fn f) {
  int st = mx__array_alloc_data(out);
  if (st) return st;
  run_nary_into(out->buf->ptr, out->dtype, out->shape, out->ndim, in, nin, f);
  return MX_OK;
}

static int k_unary(mx_array *out, mx_array **in) {
  mx__inner_fn f = unary_fns[out->op->id][in[0]->dtype];
  if (!f) return no_kernel(out, in[0]->dtype);
  return run_nary(out, in, 1, f);
}

static int k_binary(mx_array *out, mx_array **in) {
  mx__inner_fn f = binary_fns[out->op->id][in[0]->dtype];
  if (!f || in[0]->dtype != in[1]->dtype) return no_kernel(out, in[0]->dtype);
  return run_nary(out, in, 2, f);
}

static int k_astype(mx_array *out, mx_array **in) {
  mx__inner_fn f = astype_fns[in[0]->dtype][out->dtype];
  if (!f) return no_kernel(out, in[0]->dtype);
  return run_nary(out, in, 1, f);
}

/* swiglu: silu(g) * u, each step rounded to the dtype as the composition
 * multiply(multiply(g, sigmoid(g)), u) with the sigmoid above */
#define SWIGLU_LOOP(TAG, unused)                                                \
  static void swiglu_##TAG(char **p, const int64_t *s, int64_t n, const void *c_) { \
    MX_UNUSED(c_);                                                              \
    T_##TAG *o = (T_##TAG *)p[0];                                               \
    const T_##TAG *g = (const T_##TAG *)p[1], *u = (const T_##TAG *)p[2];       \
    for (int64_t i = 0; i < n; i++) {                                           \
      C_##TAG x = LD_##TAG(g[i * s[1]]);                                        \
      C_##TAG sg = LD_##TAG(ST_##TAG(1 / (1 + VEXP(-x))));                      \
      C_##TAG a = LD_##TAG(ST_##TAG(x * sg));                                   \
      o[i] = ST_##TAG(a * LD_##TAG(u[i * s[2]]));                               \
    }                                                                           \
  }
MX_FLOAT_TAGS(SWIGLU_LOOP, 0)

static int k_swiglu(mx_array *out, mx_array **in) {
  mx__inner_fn f = NULL;
  switch (out->dtype) {
    case MX_FLOAT16: f = swiglu_F16; break;
    case MX_BFLOAT16: f = swiglu_BF16; break;
    case MX_FLOAT32: f = swiglu_F32; break;
    case MX_FLOAT64: f = swiglu_F64; break;
    default: break;
  }
  if (!f || in[0]->dtype != out->dtype || in[1]->dtype != out->dtype)
    return no_kernel(out, in[0]->dtype);
  return run_nary(out, in, 2, f);
}

/* swiglu_backward (src/ops/fast_params.h): d gate = cot * up * silu'(g),
 * d up = cot * silu(g), in the compute type, rounded once */
#define SWIGLU_GRAD_LOOP(TAG, unused)                                                  \
  static void swiglu_dg_##TAG(char **p, const int64_t *s, int64_t n, const void *c_) { \
    MX_UNUSED(c_);                                                                     \
    T_##TAG *o = (T_##TAG *)p[0];                                                      \
    const T_##TAG *g = (const T_##TAG *)p[1], *u = (const T_##TAG *)p[2];              \
    const T_##TAG *c = (const T_##TAG *)p[3];                                          \
    for (int64_t i = 0; i < n; i++) {                                                  \
      C_##TAG x = LD_##TAG(g[i * s[1]]);                                               \
      C_##TAG sg = 1 / (1 + VEXP(-x));                                                 \
      C_##TAG d = sg * (1 + x * (1 - sg));                                             \
      o[i] = ST_##TAG(LD_##TAG(c[i * s[3]]) * LD_##TAG(u[i * s[2]]) * d);              \
    }                                                                                  \
  }                                                                                    \
  static void swiglu_du_##TAG(char **p, const int64_t *s, int64_t n, const void *c_) { \
    MX_UNUSED(c_);                                                                     \
    T_##TAG *o = (T_##TAG *)p[0];                                                      \
    const T_##TAG *g = (const T_##TAG *)p[1], *c = (const T_##TAG *)p[2];              \
    for (int64_t i = 0; i < n; i++) {                                                  \
      C_##TAG x = LD_##TAG(g[i * s[1]]);                                               \
      o[i] = ST_##TAG(LD_##TAG(c[i * s[2]]) * (x / (1 + VEXP(-x))));                   \
    }                                                                                  \
  }
MX_FLOAT_TAGS(SWIGLU_GRAD_LOOP, 0)

static int k_swiglu_grad(mx_array *out, mx_array **in) {
  int which = MX__PARAMS(out, mx__swiglu_grad_params)->which, nin = which == 1 ? 2 : 3;
  mx__inner_fn dg = NULL, du = NULL;
  switch (out->dtype) {
    case MX_FLOAT16: dg = swiglu_dg_F16, du = swiglu_du_F16; break;
    case MX_BFLOAT16: dg = swiglu_dg_BF16, du = swiglu_du_BF16; break;
    case MX_FLOAT32: dg = swiglu_dg_F32, du = swiglu_du_F32; break;
    case MX_FLOAT64: dg = swiglu_dg_F64, du = swiglu_du_F64; break;
    default: break;
  }
  for (int i = 0; i < nin; i++)
    if (in[i]->dtype != out->dtype) dg = du = NULL;
  if (!dg) return no_kernel(out, in[0]->dtype);
  if (which != 2) return run_nary(out, in, nin, which ? du : dg);
  /* both: d gate into the first half, d up (inputs gate, cot) the second */
  int st = mx__array_alloc_data(out);
  if (st) return st;
  char *o = out->buf->ptr;
  const size_t half = (size_t)(out->size / 2) * mx_dtype_size(out->dtype);
  mx_array *gc[2] = {in[0], in[2]};
  run_nary_into(o, out->dtype, out->shape + 1, out->ndim - 1, in, 3, dg);
  run_nary_into(o + half, out->dtype, out->shape + 1, out->ndim - 1, gc, 2, du);
  return MX_OK;
}

/* adam_update (src/ops/optim_params.h): float32 / float64 */
#define ADAM_LOOP(NAME, T)                                                                  \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {                 \
    const mx__adam_params *a = (const mx__adam_params *)c_;                                \
    T *o = (T *)p[0];                                                                       \
    const T *x = (const T *)p[1], *y = (const T *)p[2], *z = (const T *)p[3];               \
    if (a->which == MX__ADAM_M) {                                                           \
      const T b = (T)a->beta1, nb = (T)(1.0 - a->beta1);                                    \
      for (int64_t i = 0; i < n; i++) o[i] = b * x[i * s[1]] + nb * y[i * s[2]];            \
    } else if (a->which == MX__ADAM_V) {                                                    \
      const T b = (T)a->beta2, nb = (T)(1.0 - a->beta2);                                    \
      for (int64_t i = 0; i < n; i++) {                                                     \
        T g = y[i * s[2]];                                                                  \
        o[i] = b * x[i * s[1]] + nb * (g * g);                                              \
      }                                                                                     \
    } else {                                                                                \
      const T d = (T)a->decay, c1 = (T)a->c1, c2 = (T)a->c2, e = (T)a->eps;                 \
      for (int64_t i = 0; i < n; i++)                                                       \
        o[i] = d * x[i * s[1]] - (c1 * y[i * s[2]]) / (c2 * (T)sqrt((double)z[i * s[3]]) + e); \
    }                                                                                       \
  }
ADAM_LOOP(adam_f32, float)
ADAM_LOOP(adam_f64, double)

/* ADAM_ALL: operand 0 is m' (row-contiguous over the inputs' shape); v'
 * and p' follow at total and 2 total elements */
typedef struct {
  const mx__adam_params *a;
  int64_t total;
  bool has_s;
  double s; /* the gradient's scale (has_s) */
} adam_all_ctx;

#define ADAM_ALL_LOOP(NAME, T)                                                              \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {                 \
    const adam_all_ctx *c = (const adam_all_ctx *)c_;                                       \
    const mx__adam_params *a = c->a;                                                        \
    T *om = (T *)p[0], *ov = om + c->total, *op = ov + c->total;                            \
    const T *x = (const T *)p[1], *m = (const T *)p[2], *v = (const T *)p[3];               \
    const T *g = (const T *)p[4];                                                           \
    const T b1 = (T)a->beta1, nb1 = (T)(1.0 - a->beta1), b2 = (T)a->beta2;                  \
    const T nb2 = (T)(1.0 - a->beta2), d = (T)a->decay, c1 = (T)a->c1, c2 = (T)a->c2;       \
    const T e = (T)a->eps, sc = (T)c->s;                                                    \
    for (int64_t i = 0; i < n; i++) {                                                       \
      const T gi = c->has_s ? g[i * s[4]] * sc : g[i * s[4]];                               \
      const T mi = b1 * m[i * s[2]] + nb1 * gi, vi = b2 * v[i * s[3]] + nb2 * (gi * gi);    \
      om[i] = mi;                                                                           \
      ov[i] = vi;                                                                           \
      op[i] = d * x[i * s[1]] - (c1 * mi) / (c2 * (T)sqrt((double)vi) + e);                 \
    }                                                                                       \
  }
ADAM_ALL_LOOP(adam_all_f32, float)
ADAM_ALL_LOOP(adam_all_f64, double)

/* The ADAM_ALL loop for p, m, v, g = in4[0..3] and an output of dtype dt,
 * or NULL when the dtypes have none (f32 / f64; a 16-bit g for f32). */
static mx__inner_fn adam_all_fn(mx_dtype dt, mx_array *const *in4) {
  mx__inner_fn f = dt == MX_FLOAT32 ? adam_all_f32 : dt == MX_FLOAT64 ? adam_all_f64 : NULL;
  for (int i = 0; i < 3; i++)
    if (in4[i]->dtype != dt) f = NULL;
  const mx_dtype gt = in4[3]->dtype;
  if (gt != dt && (dt != MX_FLOAT32 || (gt != MX_BFLOAT16 && gt != MX_FLOAT16))) f = NULL;
  return f;
}

/* One parameter's step: in4 = (p, m, v, g) of one shape, m' written
 * row-contiguous at o, v' and p' c->total elements after it (ADAM_ALL: the
 * parameter's size; ADAM_MANY: the sum of every size, o at the
 * parameter's offset). Both forms run this loop: the same bits. */
static int adam_all_part(char *o, mx_dtype dt, mx_array *const *in4, mx__inner_fn f,
                         const adam_all_ctx *c) {
  const int64_t *shape = in4[0]->shape;
  const int nd = in4[0]->ndim;
  const int64_t n = in4[0]->size;
  if (n == 0) return MX_OK;
  float *g32 = NULL;
  if (in4[3]->dtype != dt) { /* a 16-bit gradient of a float32 parameter: read as float32 (exact) */
    mx_array *g = in4[3];
    const size_t es = mx_dtype_size(g->dtype);
    void *tmp = g->row_contiguous ? NULL : malloc(es * (size_t)n);
    g32 = malloc(sizeof(float) * (size_t)n);
    if (!g32 || (!g->row_contiguous && !tmp)) {
      free(tmp);
      free(g32);
      return mx__set_error(MX_ERR_OOM, "adam_update: out of memory (%zu bytes)",
                           sizeof(float) * (size_t)n);
    }
    if (tmp) mx__cpu_copy_to_contiguous(g, tmp);
    mx__cpu_convert(tmp ? tmp : mx__data(g), g->dtype, g32, MX_FLOAT32, n);
    free(tmp);
  }
  char *base[MX__MAX_OPERANDS];
  size_t el[MX__MAX_OPERANDS];
  int64_t strides[MX__MAX_OPERANDS][MX_MAX_NDIM];
  const int64_t *sp[MX__MAX_OPERANDS];
  base[0] = o;
  el[0] = mx_dtype_size(dt);
  sp[0] = NULL;
  for (int i = 0; i < 4; i++) {
    if (i == 3 && g32) {
      base[4] = (char *)g32;
      el[4] = sizeof(float);
      mx__compute_row_strides(shape, nd, strides[4]);
    } else {
      base[i + 1] = mx__data(in4[i]);
      el[i + 1] = mx_dtype_size(in4[i]->dtype);
      bcast_strides(in4[i], shape, nd, strides[i + 1]);
    }
    sp[i + 1] = strides[i + 1];
  }
  mx__nd_iter it;
  mx__iter_init(&it, shape, nd, 5, base, el, sp);
  mx__iter_run(&it, f, c);
  free(g32);
  return MX_OK;
}

/* The gradient scale of ADAM_ALL / ADAM_MANY (input sin, of dtype dt) */
static double adam_scale(mx_dtype dt, mx_array *sin) {
  return dt == MX_FLOAT32 ? (double)*(const float *)mx__data(sin) : *(const double *)mx__data(sin);
}

static int k_adam_all(mx_array *out, mx_array **in) {
  const mx__adam_params *a = MX__PARAMS(out, mx__adam_params);
  mx__inner_fn f = adam_all_fn(out->dtype, in);
  if (a->has_scale && (out->ninputs < 5 || in[4]->dtype != out->dtype)) f = NULL;
  if (!f) return no_kernel(out, in[0]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  adam_all_ctx c = {.a = a, .total = out->size / 3, .has_s = a->has_scale};
  if (a->has_scale) c.s = adam_scale(out->dtype, in[4]);
  return adam_all_part((char *)out->buf->ptr, out->dtype, in, f, &c);
}

/* ADAM_MANY: inputs [p.., m.., v.., g.., (s)]; parameter i's part at
 * off_i of each of the three rows */
static int k_adam_many(mx_array *out, mx_array **in) {
  const mx__adam_params *a = MX__PARAMS(out, mx__adam_params);
  const int n = a->count;
  if (n < 1 || out->ninputs != 4 * n + (a->has_scale ? 1 : 0))
    return mx__set_error(MX_ERR_INTERNAL, "adam_update: %d inputs for %d parameters",
                         out->ninputs, n);
  mx__inner_fn f = NULL; /* the dtype's loop (a 16-bit g goes through float32 first) */
  for (int i = 0; i < n; i++) {
    mx_array *q[4] = {in[i], in[n + i], in[2 * n + i], in[3 * n + i]};
    if (!(f = adam_all_fn(out->dtype, q)))
      return no_kernel(out, q[0]->dtype != out->dtype ? q[0]->dtype : q[3]->dtype);
  }
  if (a->has_scale && in[4 * n]->dtype != out->dtype) return no_kernel(out, in[4 * n]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  adam_all_ctx c = {.a = a, .total = out->size / 3, .has_s = a->has_scale};
  if (a->has_scale) c.s = adam_scale(out->dtype, in[4 * n]);
  const size_t es = mx_dtype_size(out->dtype);
  int64_t off = 0;
  for (int i = 0; i < n && !st; i++) {
    mx_array *q[4] = {in[i], in[n + i], in[2 * n + i], in[3 * n + i]};
    st = adam_all_part((char *)out->buf->ptr + (size_t)off * es, out->dtype, q, f, &c);
    off += q[0]->size;
  }
  return st;
}

/* a's values in row order: its data, or a contiguous copy in *tmp (the
 * caller frees it); NULL with the error set when the copy finds no memory */
static const char *row_data(mx_array *a, void **tmp, const char *what) {
  *tmp = NULL;
  if (a->row_contiguous) return mx__data(a);
  const size_t bytes = mx_dtype_size(a->dtype) * (size_t)a->size;
  if (!(*tmp = malloc(bytes))) {
    mx__set_error(MX_ERR_OOM, "%s: out of memory (%zu bytes)", what, bytes);
    return NULL;
  }
  mx__cpu_copy_to_contiguous(a, *tmp);
  return *tmp;
}

/* sum_squares (src/ops/optim_params.h): float64 sums, inputs in order */
static int k_sum_squares(mx_array *out, mx_array **in) {
  const int n = out->ninputs;
  for (int i = 0; i < n; i++)
    if (!mx_dtype_is_float(in[i]->dtype)) return no_kernel(out, in[i]->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  double acc = 0;
  enum { CH = 4096 };
  double buf[CH];
  for (int i = 0; i < n; i++) {
    mx_array *a = in[i];
    const size_t es = mx_dtype_size(a->dtype);
    if (a->size == 0) continue;
    void *tmp;
    const char *base = row_data(a, &tmp, "sum_squares");
    if (!base) return mx_last_status();
    for (int64_t j = 0; j < a->size; j += CH) {
      const int64_t m = MX_MIN((int64_t)CH, a->size - j);
      mx__cpu_convert(base + (size_t)j * es, a->dtype, buf, MX_FLOAT64, m);
      for (int64_t k = 0; k < m; k++) acc += buf[k] * buf[k];
    }
    free(tmp);
  }
  if (out->dtype == MX_FLOAT64) *(double *)out->buf->ptr = acc;
  else *(float *)out->buf->ptr = (float)acc;
  return MX_OK;
}

/* cast_concat (src/ops/optim_params.h): each input converted into its part */
static int k_cast_concat(mx_array *out, mx_array **in) {
  const int n = out->ninputs;
  for (int i = 0; i < n; i++)
    if (!mx_dtype_is_float(in[i]->dtype)) return no_kernel(out, in[i]->dtype);
  if (!mx_dtype_is_float(out->dtype)) return no_kernel(out, out->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  const size_t eo = mx_dtype_size(out->dtype);
  char *dst = out->buf->ptr;
  for (int i = 0; i < n; i++) {
    mx_array *a = in[i];
    if (a->size == 0) continue;
    void *tmp;
    const char *base = row_data(a, &tmp, "cast_concat");
    if (!base) return mx_last_status();
    mx__cpu_convert(base, a->dtype, dst, out->dtype, a->size);
    dst += eo * (size_t)a->size;
    free(tmp);
  }
  return MX_OK;
}

static int k_adam_update(mx_array *out, mx_array **in) {
  const mx__adam_params *a = MX__PARAMS(out, mx__adam_params);
  if (a->which == MX__ADAM_ALL) return k_adam_all(out, in);
  if (a->which == MX__ADAM_MANY) return k_adam_many(out, in);
  int nin = a->which == MX__ADAM_P ? 3 : 2;
  mx__inner_fn f = out->dtype == MX_FLOAT32 ? adam_f32 : out->dtype == MX_FLOAT64 ? adam_f64 : NULL;
  for (int i = 0; i < nin; i++)
    if (in[i]->dtype != out->dtype) f = NULL;
  if (!f) return no_kernel(out, in[0]->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  char *base[MX__MAX_OPERANDS];
  size_t el[MX__MAX_OPERANDS];
  int64_t strides[MX__MAX_OPERANDS][MX_MAX_NDIM];
  const int64_t *sp[MX__MAX_OPERANDS];
  base[0] = out->buf->ptr;
  el[0] = mx_dtype_size(out->dtype);
  sp[0] = NULL;
  for (int i = 0; i < 3; i++) { /* a 2-input form passes input 0 as an unused third */
    mx_array *x = in[i < nin ? i : 0];
    base[i + 1] = mx__data(x);
    el[i + 1] = mx_dtype_size(x->dtype);
    bcast_strides(x, out->shape, out->ndim, strides[i + 1]);
    sp[i + 1] = strides[i + 1];
  }
  mx__nd_iter it;
  mx__iter_init(&it, out->shape, out->ndim, 4, base, el, sp);
  mx__iter_run(&it, f, a);
  return MX_OK;
}

/* copy / identity kernels (floor/ceil/round of integers) */
#define WHERE_LOOP(NAME, T)                                                     \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {     \
    MX_UNUSED(c_);                                                              \
    T *o = (T *)p[0];                                                           \
    const uint8_t *c = (const uint8_t *)p[1];                                   \
    const T *a = (const T *)p[2], *b = (const T *)p[3];                         \
    for (int64_t i = 0; i < n; i++) o[i] = c[i * s[1]] ? a[i * s[2]] : b[i * s[3]]; \
  }
WHERE_LOOP(where1, uint8_t)
WHERE_LOOP(where2, uint16_t)
WHERE_LOOP(where4, uint32_t)
WHERE_LOOP(where8, uint64_t)

static int k_where(mx_array *out, mx_array **in) {
  size_t es = mx_dtype_size(out->dtype);
  mx__inner_fn f = es == 1 ? where1 : es == 2 ? where2 : es == 4 ? where4 : where8;
  return run_nary(out, in, 3, f);
}

#define COPYB_LOOP(NAME, T)                                                     \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {     \
    MX_UNUSED(c_);                                                              \
    T *o = (T *)p[0];                                                           \
    const T *a = (const T *)p[1];                                               \
    if (s[1] == 1) memcpy(o, a, sizeof(T) * (size_t)n);                         \
    else for (int64_t i = 0; i < n; i++) o[i] = a[i * s[1]];                    \
  }
COPYB_LOOP(copyb1, uint8_t)
COPYB_LOOP(copyb2, uint16_t)
COPYB_LOOP(copyb4, uint32_t)
COPYB_LOOP(copyb8, uint64_t)

/* Copy with broadcasting of in[0] to out's shape (COPY, FULL, identity). */
static int k_copy(mx_array *out, mx_array **in) {
  size_t es = mx_dtype_size(out->dtype);
  MX_ASSERT(in[0]->dtype == out->dtype);
  mx__inner_fn f = es == 1 ? copyb1 : es == 2 ? copyb2 : es == 4 ? copyb4 : copyb8;
  return run_nary(out, in, 1, f);
}

static int k_unary_or_copy(mx_array *out, mx_array **in) {
  if (!mx_dtype_is_float(in[0]->dtype)) return k_copy(out, in);
  return k_unary(out, in);
}

typedef struct {
  double start, step;
} arange_params;

static int k_arange(mx_array *out, mx_array **in) {
  MX_UNUSED(in);
  const arange_params *p = MX__PARAMS(out, arange_params);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  double *tmp = malloc(sizeof(double) * (size_t)(out->size ? out->size : 1));
  if (!tmp) return mx__set_error(MX_ERR_OOM, "arange: out of memory");
  for (int64_t i = 0; i < out->size; i++) tmp[i] = p->start + (double)i * p->step;
  mx__cpu_convert(tmp, MX_FLOAT64, out->buf->ptr, out->dtype, out->size);
  free(tmp);
  return MX_OK;
}

static int k_stop_gradient(mx_array *out, mx_array **in) {
  mx__array_set_same(out, in[0]);
  return MX_OK;
}

void mx__cpu_register_elementwise(mx__kernel_fn *k) {
#define REG_FLOAT_UNARY(OP, EXPR) MX_FLOAT_TAGS(REG_UF, OP)
  FLOAT_UNARY(REG_FLOAT_UNARY)
#define REG_INT_UNARY(OP, EXPR) MX_INT_TAGS(REG_UF, OP) REG_UF(BOOL, OP)
  INT_UNARY(REG_INT_UNARY)
  PRED_FLOAT(REG_FLOAT_UNARY)
#define REG_PRED_INT(OP) MX_INT_TAGS(REG_UF, OP) REG_UF(BOOL, OP)
  REG_PRED_INT(ISNAN)
  REG_PRED_INT(ISINF)
  REG_PRED_INT(LOGICAL_NOT)
#define REG_FLOAT_BINARY(OP, EXPR) MX_FLOAT_TAGS(REG_B, OP)
  FLOAT_BINARY(REG_FLOAT_BINARY)
#define REG_S_BINARY(OP, EXPR) REG_B(I32, OP) REG_B(I64, OP)
#define REG_U_BINARY(OP, EXPR) REG_B(U8, OP) REG_B(U32, OP) REG_B(BOOL, OP)
  INT_BINARY_S(REG_S_BINARY)
  INT_BINARY_U(REG_U_BINARY)
#define REG_CMP(OP, EXPR) MX_ALL_TAGS(REG_B, OP)
  CMP_BINARY(REG_CMP)
  MX_ALL_TAGS(REG_AST_FROM, 0)

  static const mx__op_id unary_ops[] = {
      MX_OP_NEGATIVE, MX_OP_ABS,   MX_OP_SIGN,    MX_OP_SQUARE, MX_OP_SQRT,    MX_OP_RSQRT,
      MX_OP_RECIPROCAL, MX_OP_EXP, MX_OP_EXPM1,   MX_OP_LOG,    MX_OP_LOG1P,   MX_OP_SIN,
      MX_OP_COS,      MX_OP_TANH,  MX_OP_SIGMOID, MX_OP_ERF,    MX_OP_ERFINV,  MX_OP_ISNAN,
      MX_OP_ISINF,    MX_OP_LOGICAL_NOT};
  for (size_t i = 0; i < sizeof unary_ops / sizeof *unary_ops; i++) k[unary_ops[i]] = k_unary;
  k[MX_OP_FLOOR] = k[MX_OP_CEIL] = k[MX_OP_ROUND] = k_unary_or_copy;
  static const mx__op_id binary_ops[] = {
      MX_OP_ADD,   MX_OP_SUBTRACT,  MX_OP_MULTIPLY,   MX_OP_DIVIDE,  MX_OP_POWER,
      MX_OP_MAXIMUM, MX_OP_MINIMUM, MX_OP_EQUAL,      MX_OP_NOT_EQUAL, MX_OP_LESS,
      MX_OP_LESS_EQUAL, MX_OP_GREATER, MX_OP_GREATER_EQUAL, MX_OP_LOGICAL_AND,
      MX_OP_LOGICAL_OR};
  for (size_t i = 0; i < sizeof binary_ops / sizeof *binary_ops; i++) k[binary_ops[i]] = k_binary;
  k[MX_OP_ASTYPE] = k_astype;
  k[MX_OP_WHERE] = k_where;
  k[MX_OP_SWIGLU] = k_swiglu;
  k[MX_OP_ADAM_UPDATE] = k_adam_update;
  k[MX_OP_SUM_SQUARES] = k_sum_squares;
  k[MX_OP_CAST_CONCAT] = k_cast_concat;
  k[MX_OP_SWIGLU_GRAD] = k_swiglu_grad;
  k[MX_OP_COPY] = k_copy;
  k[MX_OP_FULL] = k_copy;
  k[MX_OP_ARANGE] = k_arange;
  k[MX_OP_STOP_GRADIENT] = k_stop_gradient;
}
