/* opcases_elementwise.c — op-parity cases for unary, binary, where, clip,
 * astype and creation ops. References are plain C on float64. */
#include <math.h>
#include <string.h>

#include "support/harness.h"
#include "array_impl.h"
#include "ops/optim_params.h"

/* ---- unary ---------------------------------------------------------------- */
typedef struct {
  const char *name;
  mx_array *(*fn)(mx_array *);
  double (*ref)(double);
} unary_entry;

static double r_neg(double x) { return -x; }
static double r_sign(double x) { return (x > 0) - (x < 0); }
static double r_square(double x) { return x * x; }
static double r_rsqrt(double x) { return 1 / sqrt(x); }
static double r_recip(double x) { return 1 / x; }
static double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_erfinv(double y) { /* bisection on erf: independent of the library's method */
  double lo = -6, hi = 6;
  for (int i = 0; i < 200; i++) {
    double m = 0.5 * (lo + hi);
    if (erf(m) < y) lo = m;
    else hi = m;
  }
  return 0.5 * (lo + hi);
}
static double r_round(double x) { return nearbyint(x); }
static double r_not(double x) { return x == 0; }
static double r_isnan(double x) { return isnan(x); }
static double r_isinf(double x) { return isinf(x); }
static double r_id(double x) { return x; }

static const unary_entry unary_ops[] = {
    {"negative", mx_negative, r_neg},   {"abs", mx_abs, fabs},
    {"sign", mx_sign, r_sign},          {"square", mx_square, r_square},
    {"sqrt", mx_sqrt, sqrt},            {"rsqrt", mx_rsqrt, r_rsqrt},
    {"reciprocal", mx_reciprocal, r_recip}, {"exp", mx_exp, exp},
    {"expm1", mx_expm1, expm1},         {"log", mx_log, log},
    {"log1p", mx_log1p, log1p},         {"sin", mx_sin, sin},
    {"cos", mx_cos, cos},               {"tanh", mx_tanh, tanh},
    {"sigmoid", mx_sigmoid, r_sigmoid}, {"erf", mx_erf, erf},
    {"erfinv", mx_erfinv, r_erfinv},    {"floor", mx_floor, floor},
    {"ceil", mx_ceil, ceil},            {"round", mx_round, r_round},
    {"logical_not", mx_logical_not, r_not}, {"isnan", mx_isnan, r_isnan},
    {"isinf", mx_isinf, r_isinf},       {"stop_gradient", mx_stop_gradient, r_id},
};

static mx_array *b_unary(const mx_opcase *c, mx_array **in) { return unary_ops[c->ip[0]].fn(in[0]); }
static int f_unary(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  int64_t n = oc_size(c->shape[0], c->ndim[0]);
  for (int64_t i = 0; i < n; i++) out[i] = unary_ops[c->ip[0]].ref(in[0][i]);
  memcpy(shape, c->shape[0], sizeof(int64_t) * (size_t)c->ndim[0]);
  *nd = c->ndim[0];
  return 0;
}

#define UNF(i, lo_, hi_, fl, ...)                                                           \
  {.op = NULL, .desc = "unary", .nin = 1, .ndim = {2}, .shape = {{7, 33}}, .lo = lo_,       \
   .hi = hi_, .flags = fl, .ip = {i}, .build = b_unary, .ref = f_unary, __VA_ARGS__}
#define UN(i, lo_, hi_, ...) UNF(i, lo_, hi_, OC_NONCONTIG, __VA_ARGS__)

/* ---- binary ------------------------------------------------------------------ */
typedef struct {
  const char *name;
  mx_array *(*fn)(mx_array *, mx_array *);
  double (*ref)(double, double);
} binary_entry;
static double r_add(double a, double b) { return a + b; }
static double r_sub(double a, double b) { return a - b; }
static double r_mul(double a, double b) { return a * b; }
static double r_div(double a, double b) { return a / b; }
static double r_max(double a, double b) { return a > b ? a : b; }
static double r_min(double a, double b) { return a < b ? a : b; }
static double r_eq(double a, double b) { return a == b; }
static double r_ne(double a, double b) { return a != b; }
static double r_lt(double a, double b) { return a < b; }
static double r_le(double a, double b) { return a <= b; }
static double r_gt(double a, double b) { return a > b; }
static double r_ge(double a, double b) { return a >= b; }
static double r_and(double a, double b) { return a != 0 && b != 0; }
static double r_or(double a, double b) { return a != 0 || b != 0; }
static const binary_entry binary_ops[] = {
    {"add", mx_add, r_add},           {"subtract", mx_subtract, r_sub},
    {"multiply", mx_multiply, r_mul}, {"divide", mx_divide, r_div},
    {"power", mx_power, pow},         {"maximum", mx_maximum, r_max},
    {"minimum", mx_minimum, r_min},   {"equal", mx_equal, r_eq},
    {"not_equal", mx_not_equal, r_ne}, {"less", mx_less, r_lt},
    {"less_equal", mx_less_equal, r_le}, {"greater", mx_greater, r_gt},
    {"greater_equal", mx_greater_equal, r_ge}, {"logical_and", mx_logical_and, r_and},
    {"logical_or", mx_logical_or, r_or},
};
static mx_array *b_binary(const mx_opcase *c, mx_array **in) {
  return binary_ops[c->ip[0]].fn(in[0], in[1]);
}
static int f_binary(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  oc_bcast_shape(c, 2, shape, nd);
  int64_t n = oc_size(shape, *nd), idx[8];
  for (int64_t i = 0; i < n; i++) {
    oc_unravel(i, shape, *nd, idx);
    double a = in[0][oc_bcast_offset(idx, *nd, c->shape[0], c->ndim[0])];
    double b = in[1][oc_bcast_offset(idx, *nd, c->shape[1], c->ndim[1])];
    out[i] = binary_ops[c->ip[0]].ref(a, b);
  }
  return 0;
}
#define BINF(i, lo_, hi_, fl, ...)                                                          \
  {.op = NULL, .desc = "broadcast (4,1,5) x (3,1)", .nin = 2, .ndim = {3, 2},               \
   .shape = {{4, 1, 5}, {3, 1}}, .lo = lo_, .hi = hi_, .flags = fl, .ip = {i},              \
   .build = b_binary, .ref = f_binary, __VA_ARGS__}
#define BIN(i, lo_, hi_, ...) BINF(i, lo_, hi_, OC_NONCONTIG, __VA_ARGS__)
#define BIN2F(i, lo_, hi_, fl, ...)                                                         \
  {.op = NULL, .desc = "same shape (6,40)", .nin = 2, .ndim = {2, 2},                       \
   .shape = {{6, 40}, {6, 40}}, .lo = lo_, .hi = hi_, .flags = fl, .ip = {i},               \
   .build = b_binary, .ref = f_binary, __VA_ARGS__}
#define BIN2(i, lo_, hi_, ...) BIN2F(i, lo_, hi_, OC_NONCONTIG, __VA_ARGS__)

/* ---- where / clip / astype ------------------------------------------------------- */
static mx_array *b_where(const mx_opcase *c, mx_array **in) { MX_UNUSED(c); return mx_where(in[0], in[1], in[2]); }
static int f_where(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  oc_bcast_shape(c, 3, shape, nd);
  int64_t n = oc_size(shape, *nd), idx[8];
  for (int64_t i = 0; i < n; i++) {
    oc_unravel(i, shape, *nd, idx);
    double cnd = in[0][oc_bcast_offset(idx, *nd, c->shape[0], c->ndim[0])];
    out[i] = cnd != 0 ? in[1][oc_bcast_offset(idx, *nd, c->shape[1], c->ndim[1])]
                      : in[2][oc_bcast_offset(idx, *nd, c->shape[2], c->ndim[2])];
  }
  return 0;
}
static mx_array *b_clip(const mx_opcase *c, mx_array **in) { return mx_clip_scalar(in[0], c->dp[0], c->dp[1]); }
static int f_clip(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  int64_t n = oc_size(c->shape[0], c->ndim[0]);
  for (int64_t i = 0; i < n; i++) out[i] = fmin(fmax(in[0][i], c->dp[0]), c->dp[1]);
  memcpy(shape, c->shape[0], sizeof(int64_t) * (size_t)c->ndim[0]);
  *nd = c->ndim[0];
  return 0;
}
static const mx_dtype astype_targets[] = {MX_BOOL, MX_UINT8, MX_UINT32, MX_INT32, MX_INT64,
                                          MX_FLOAT16, MX_BFLOAT16, MX_FLOAT32, MX_FLOAT64};
static mx_array *b_astype(const mx_opcase *c, mx_array **in) {
  mx_array *x = mx_astype(in[0], astype_targets[c->ip[0]]);
  mx_array *y = mx_astype(x, MX_FLOAT64);
  mx_array_free(x);
  return y;
}
static int f_astype(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  int64_t n = oc_size(c->shape[0], c->ndim[0]);
  mx_dtype t = astype_targets[c->ip[0]];
  for (int64_t i = 0; i < n; i++) {
    double x = in[0][i];
    switch (t) {
      case MX_BOOL: x = x != 0; break;
      case MX_UINT8: case MX_UINT32: case MX_INT32: case MX_INT64: x = trunc(x); break;
      case MX_FLOAT16: x = mx__f16_to_f32(mx__f32_to_f16((float)x)); break;
      case MX_BFLOAT16: x = mx__bf16_to_f32(mx__f32_to_bf16((float)x)); break;
      case MX_FLOAT32: x = (float)x; break;
      default: break;
    }
    out[i] = x;
  }
  memcpy(shape, c->shape[0], sizeof(int64_t) * (size_t)c->ndim[0]);
  *nd = c->ndim[0];
  return 0;
}

/* ---- creation ---------------------------------------------------------------------- */
static mx_array *b_create(const mx_opcase *c, mx_array **in) {
  int64_t s[2] = {3, 5};
  mx_dtype dt = MX_FLOAT32;
  mx_array *r = NULL;
  switch (c->ip[0]) {
    case 0: r = mx_zeros(s, 2, dt); break;
    case 1: r = mx_ones(s, 2, dt); break;
    case 2: r = mx_full(s, 2, 2.5, dt); break;
    case 3: r = mx_zeros_like(in[0]); break;
    case 4: r = mx_ones_like(in[0]); break;
    case 5: r = mx_full_like(in[0], -1.5); break;
    case 6: r = mx_arange(-2, 5, 0.5, MX_FLOAT32); break;
    case 7: r = mx_linspace(-1, 2, 7, MX_FLOAT64); break;
    case 8: r = mx_eye(3, 5, 1, MX_INT32); break;
    case 9: r = mx_identity(4, MX_FLOAT32); break;
    case 10: r = mx_tri(3, 5, 0, MX_FLOAT32); break;
    case 11: r = mx_tril(in[0], 0); break;
    case 12: r = mx_triu(in[0], 1); break;
    case 13: { /* from data (copy) */
      const double *d = mx_array_data(in[0]);
      r = d ? mx_array_from_data(d, mx_array_shape(in[0]), 2, MX_FLOAT64) : NULL;
      break;
    }
    case 14: { /* from data, no copy, Fortran-ordered strides */
      static double buf[15];
      const double *d = mx_array_data(in[0]);
      for (int i = 0; d && i < 3; i++)
        for (int j = 0; j < 5; j++) buf[j * 3 + i] = d[i * 5 + j];
      int64_t st[2] = {1, 3};
      r = mx_array_from_data_strided(buf, s, st, 2, MX_FLOAT64, NULL, NULL);
      break;
    }
  }
  return r;
}
static int f_create(const mx_opcase *c, const double *const *in, double *out, int64_t *shape, int *nd) {
  *nd = 2;
  shape[0] = 3;
  shape[1] = 5;
  switch (c->ip[0]) {
    case 0: case 1: case 2:
      for (int i = 0; i < 15; i++) out[i] = c->ip[0] == 0 ? 0 : c->ip[0] == 1 ? 1 : 2.5;
      break;
    case 3: case 4: case 5:
      for (int i = 0; i < 15; i++) out[i] = c->ip[0] == 3 ? 0 : c->ip[0] == 4 ? 1 : -1.5;
      break;
    case 6:
      *nd = 1;
      shape[0] = 14;
      for (int i = 0; i < 14; i++) out[i] = -2 + 0.5 * i;
      break;
    case 7:
      *nd = 1;
      shape[0] = 7;
      for (int i = 0; i < 7; i++) out[i] = -1 + 3.0 * i / 6;
      break;
    case 8:
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++) out[i * 5 + j] = (j - i == 1);
      break;
    case 9:
      shape[0] = shape[1] = 4;
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) out[i * 4 + j] = i == j;
      break;
    case 10:
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++) out[i * 5 + j] = j <= i;
      break;
    case 11: case 12:
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++) {
          bool keep = c->ip[0] == 11 ? j <= i : j >= i + 1;
          out[i * 5 + j] = keep ? in[0][i * 5 + j] : 0;
        }
      break;
    case 13: case 14:
      memcpy(out, in[0], sizeof(double) * 15);
      break;
  }
  return 0;
}
#define CR(name, i)                                                                          \
  {.op = name, .desc = "creation", .nin = 1, .ndim = {2}, .shape = {{3, 5}}, .lo = -2,       \
   .hi = 2, OC_DT(MX_FLOAT64), .flags = OC_NO_GRAD, .ip = {i},             \
   .build = b_create, .ref = f_create}

#define FL OC_FLOATS
#define NG (OC_NONCONTIG | OC_NO_GRAD)
/* ---- adam_update (internal: the fused optimizer step) ---------------------------- */
/* ip[0] = form; dp = {beta or decay, c1, c2, eps} */
/* ADAM_ALL (4 inputs p, m, v, g): beta1 0.9, beta2 0.999, dp[0] the decay */
#define ALL_B1 0.9
#define ALL_B2 0.999
/* ADAM_MANY: ip[1] = K, ip[2..2+K) = row bounds: the (R, C) inputs cut
 * into K + 1 parameters of rows [0, b_0), [b_0, b_1), ..., [b_{K-1}, R),
 * each a view: one row as (C), the last one, of an even number of rows r,
 * as (2, r / 2, C), any other as (r, C). Input 4 (nin 5): the gradient
 * scale. The packed rows hold the parts in order: the output is ADAM_ALL's
 * over the whole inputs, (3, R C). */
static mx_array *b_adam_many(const mx_opcase *c, mx_array **in) {
  enum { MAXP = 6 };
  mx_array *part[4][MAXP] = {{NULL}};
  const int np = c->ip[1] + 1;
  const int64_t R = c->shape[0][0], C = c->shape[0][1];
  int64_t r0 = 0;
  for (int j = 0; j < np && j < MAXP; j++) {
    const int64_t r1 = j + 1 < np ? c->ip[2 + j] : R, rows = r1 - r0;
    int64_t shape[3] = {rows, C, 0};
    int nd = 2;
    if (rows == 1) shape[0] = C, nd = 1;
    else if (j == np - 1 && rows >= 2 && rows % 2 == 0)
      shape[0] = 2, shape[1] = rows / 2, shape[2] = C, nd = 3;
    for (int k = 0; k < 4; k++) {
      mx_array *sl = mx_slice_axis(in[k], 0, r0, r1, 1);
      part[k][j] = mx_reshape(sl, shape, nd);
      mx_array_free(sl);
    }
    r0 = r1;
  }
  mx__adam_params p = {.which = MX__ADAM_MANY, .beta1 = ALL_B1, .beta2 = ALL_B2,
                       .decay = c->dp[0], .c1 = c->dp[1], .c2 = c->dp[2], .eps = c->dp[3]};
  mx_array *r = np <= MAXP ? mx__adam_update_many(&p, part[0], part[1], part[2], part[3], np,
                                                  c->nin == 5 ? in[4] : NULL)
                           : NULL;
  for (int k = 0; k < 4; k++) mx_array_free_n(part[k], MAXP);
  return r;
}

static mx_array *b_adam(const mx_opcase *c, mx_array **in) {
  if (c->ip[0] == MX__ADAM_MANY) return b_adam_many(c, in);
  mx__adam_params p = {.which = c->ip[0], .beta1 = c->dp[0], .beta2 = c->dp[0],
                       .decay = c->dp[0], .c1 = c->dp[1], .c2 = c->dp[2], .eps = c->dp[3]};
  if (c->ip[0] == MX__ADAM_ALL) p.beta1 = ALL_B1, p.beta2 = ALL_B2;
  return mx__adam_update(&p, in[0], in[1], c->nin > 2 ? in[2] : NULL, c->nin > 3 ? in[3] : NULL);
}

static int f_adam(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                  int *ond) {
  int nd = c->ndim[0];
  int64_t n = oc_size(c->shape[0], nd);
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd;
  const double k = c->dp[0];
  if (c->ip[0] == MX__ADAM_ALL || c->ip[0] == MX__ADAM_MANY) {
    oshape[0] = 3;
    memcpy(oshape + 1, c->shape[0], sizeof(int64_t) * (size_t)nd);
    *ond = nd + 1;
    if (c->ip[0] == MX__ADAM_MANY) oshape[1] = n, *ond = 2;
    const double sc = c->nin == 5 ? in[4][0] : 1;
    for (int64_t i = 0; i < n; i++) {
      const double g = in[3][i] * sc, m = ALL_B1 * in[1][i] + (1 - ALL_B1) * g;
      const double v = ALL_B2 * in[2][i] + (1 - ALL_B2) * g * g;
      out[i] = m, out[n + i] = v;
      out[2 * n + i] = k * in[0][i] - c->dp[1] * m / (c->dp[2] * sqrt(v) + c->dp[3]);
    }
    return 0;
  }
  for (int64_t i = 0; i < n; i++) {
    const double a = in[0][i], b = in[1][i];
    out[i] = c->ip[0] == MX__ADAM_M   ? k * a + (1 - k) * b
             : c->ip[0] == MX__ADAM_V ? k * a + (1 - k) * b * b
                                      : k * a - c->dp[1] * b / (c->dp[2] * sqrt(in[2][i]) + c->dp[3]);
  }
  return 0;
}

#define ADAM(d, form, nin_, nd_, k, c1, c2, eps, ...)                                        \
  {.op = "adam_update", .desc = d, .nin = nin_, .ndim = {nd_, nd_, nd_, nd_},                \
   .shape = {{__VA_ARGS__}, {__VA_ARGS__}, {__VA_ARGS__}, {__VA_ARGS__}}, .lo = 0, .hi = 2,  \
   OC_F32_F64,                                                                               \
   .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {form}, .dp = {k, c1, c2, eps}, .build = b_adam, \
   .ref = f_adam}

/* ADAM_MANY over (R, C) inputs cut into parts (see b_adam_many); nin 5: a scale */
#define ADAM_MANY(d, nin_, k, c1, c2, eps, R, C, ...)                                        \
  {.op = "adam_update", .desc = d, .nin = nin_, .ndim = {2, 2, 2, 2, 0},                     \
   .shape = {{R, C}, {R, C}, {R, C}, {R, C}}, .lo = 0, .hi = 2, OC_F32_F64,                  \
   .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {MX__ADAM_MANY, __VA_ARGS__},                   \
   .dp = {k, c1, c2, eps}, .build = b_adam, .ref = f_adam}

/* ---- sum_squares (internal: the gradient norm) ------------------------------------ */
static mx_array *b_sumsq(const mx_opcase *c, mx_array **in) { return mx__sum_squares(in, c->nin); }

static int f_sumsq(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                   int *ond) {
  (void)oshape;
  *ond = 0;
  double acc = 0;
  for (int i = 0; i < c->nin; i++) {
    int64_t n = oc_size(c->shape[i], c->ndim[i]);
    for (int64_t j = 0; j < n; j++) acc += in[i][j] * in[i][j];
  }
  out[0] = acc;
  return 0;
}

#define ARR4(...) {__VA_ARGS__}
#define ARR4S(...) {__VA_ARGS__}
#define SUMSQ(d, nin_, nds, shapes)                                                           \
  {.op = "sum_squares", .desc = d, .nin = nin_, .ndim = nds, .shape = shapes, .lo = -2,      \
   .hi = 2, FL, .flags = OC_NONCONTIG, .build = b_sumsq, .ref = f_sumsq}

/* ---- cast_concat (internal: a model's 16-bit weight copies in one launch) ---------- */
/* ip[0]: the target, an index into astype_targets (5-8: the float types) */
static mx_array *b_castcat(const mx_opcase *c, mx_array **in) {
  mx_array *x = mx__cast_concat(in, c->nin, astype_targets[c->ip[0]]);
  mx_array *y = x ? mx_astype(x, MX_FLOAT64) : NULL;
  mx_array_free(x);
  return y;
}

static int f_castcat(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                     int *ond) {
  const mx_dtype t = astype_targets[c->ip[0]];
  int64_t k = 0;
  for (int i = 0; i < c->nin; i++) {
    const int64_t n = oc_size(c->shape[i], c->ndim[i]);
    for (int64_t j = 0; j < n; j++) {
      double x = in[i][j];
      if (t == MX_FLOAT16) x = mx__f16_to_f32(mx__f32_to_f16((float)x));
      else if (t == MX_BFLOAT16) x = mx__bf16_to_f32(mx__f32_to_bf16((float)x));
      else if (t == MX_FLOAT32) x = (float)x;
      out[k++] = x;
    }
  }
  oshape[0] = k;
  *ond = 1;
  return 0;
}

#define CASTCAT(d, target, nin_, nds, shapes)                                                 \
  {.op = "cast_concat", .desc = d, .nin = nin_, .ndim = nds, .shape = shapes, .lo = -3,       \
   .hi = 3, FL, .flags = NG, .ip = {target}, .build = b_castcat, .ref = f_castcat}

static mx_opcase cases[] = {
    UN(0, -3, 3, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64)),
    UN(1, -3, 3, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_UINT8)),
    UNF(2, -3, 3, NG, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32)),
    UN(3, -3, 3, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT64)),
    UN(4, 0.1, 4, FL), UN(5, 0.1, 4, FL), UN(6, 0.2, 3, FL), UN(7, -3, 3, FL),
    UN(8, -2, 2, FL), UN(9, 0.1, 5, FL), UN(10, -0.5, 3, FL), UN(11, -4, 4, FL),
    UN(12, -4, 4, FL), UN(13, -3, 3, FL), UN(14, -6, 6, FL), UN(15, -2, 2, FL),
    UN(16, -0.9, 0.9, FL),
    UNF(17, -3, 3, NG, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32)),
    UNF(18, -3, 3, NG, OC_DT(MX_FLOAT32, MX_FLOAT64)),
    UNF(19, -3, 3, NG, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_BFLOAT16)),
    UNF(20, -2, 2, NG, OC_DT(MX_FLOAT32, MX_INT32, MX_BOOL)),
    UNF(21, -2, 2, NG, OC_DT(MX_FLOAT32, MX_INT32)),
    UNF(22, -2, 2, NG, OC_DT(MX_FLOAT32, MX_INT32)),
    UNF(23, -2, 2, NG, FL),
    BIN(0, -3, 3, OC_ALL_NUMERIC),
    BIN(1, -3, 3, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64)),
    BIN(2, -3, 3, OC_ALL_NUMERIC), BIN(3, 0.5, 3, FL), BIN(4, 0.5, 2, FL),
    BIN(5, -3, 3, OC_ALL_NUMERIC), BIN(6, -3, 3, OC_ALL_NUMERIC),
    BINF(7, -2, 2, NG, OC_DT(MX_INT32, MX_FLOAT32)),
    BINF(8, -2, 2, NG, OC_DT(MX_INT32, MX_FLOAT32)),
    BINF(9, -3, 3, NG, OC_ALL_NUMERIC),
    BINF(10, -3, 3, NG, OC_F32_F64),
    BINF(11, -3, 3, NG, OC_F32_F64),
    BINF(12, -3, 3, NG, OC_F32_F64),
    BINF(13, -1, 2, NG, OC_DT(MX_BOOL, MX_INT32)),
    BINF(14, -1, 2, NG, OC_DT(MX_BOOL, MX_INT32)),
    BIN2(0, -3, 3, OC_FLOATS), BIN2(2, -3, 3, OC_DT(MX_INT64, MX_UINT32)),
    BIN2F(4, 0, 4, NG, OC_DT(MX_INT32, MX_INT64)),
    {.op = "add", .desc = "empty dim", .nin = 2, .ndim = {2, 1}, .shape = {{0, 3}, {3}},
     .lo = -1, .hi = 1, OC_DT(MX_FLOAT32), .ip = {0}, .build = b_binary,
     .ref = f_binary, .flags = OC_NO_GRAD},
    {.op = "multiply", .desc = "0-d x 1-size", .nin = 2, .ndim = {0, 3}, .shape = {{0}, {1, 1, 1}},
     .lo = -1, .hi = 1, OC_F32_F64, .ip = {2}, .build = b_binary, .ref = f_binary},
    {.op = "where", .desc = "3-way broadcast", .nin = 3, .ndim = {2, 2, 1},
     .shape = {{4, 6}, {1, 6}, {1}}, .kind = {OC_IN_BOOL, 0, 0}, .lo = -3, .hi = 3,
     OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32, MX_FLOAT16), .flags = OC_NONCONTIG,
     .build = b_where, .ref = f_where},
    {.op = "clip", .desc = "scalar bounds", .nin = 1, .ndim = {2}, .shape = {{5, 9}}, .lo = -3,
     .hi = 3, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32), .flags = OC_NONCONTIG,
     .dp = {-1, 1.5}, .build = b_clip, .ref = f_clip},
#define AST(i) {.op = "astype", .desc = "to each dtype", .nin = 1, .ndim = {2}, .shape = {{4, 9}}, \
     .lo = -3, .hi = 300, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32), \
     .flags = NG, .ip = {i}, .build = b_astype, .ref = f_astype}
    AST(0), AST(3), AST(4), AST(5), AST(6), AST(7), AST(8),
    {.op = "astype", .desc = "to unsigned", .nin = 1, .ndim = {1}, .shape = {{17}}, .lo = 0,
     .hi = 250, OC_DT(MX_FLOAT32, MX_INT64), .flags = OC_NO_GRAD, .ip = {1},
     .build = b_astype, .ref = f_astype},
    {.op = "astype", .desc = "to uint32", .nin = 1, .ndim = {1}, .shape = {{17}}, .lo = 0,
     .hi = 1e6, OC_DT(MX_FLOAT64, MX_INT64), .flags = OC_NO_GRAD, .ip = {2},
     .build = b_astype, .ref = f_astype},
    CR("zeros", 0), CR("ones", 1), CR("full", 2), CR("zeros_like", 3), CR("ones_like", 4),
    CR("full_like", 5), CR("arange", 6), CR("linspace", 7), CR("eye", 8), CR("identity", 9),
    CR("tri", 10), CR("tril", 11), CR("triu", 12), CR("array_from_data", 13),
    CR("array_from_data_nocopy", 14),
    /* adam_update (internal) */
    ADAM("first moment", MX__ADAM_M, 2, 2, 0.9, 0, 0, 0, 37, 65),
    ADAM("second moment", MX__ADAM_V, 2, 3, 0.999, 0, 0, 0, 3, 5, 129),
    ADAM("update, AdamW decay, bias correction", MX__ADAM_P, 3, 2, 0.99997, 0.0031, 1.37, 1e-8,
         33, 70),
    ADAM("update, large eps", MX__ADAM_P, 3, 1, 1, 0.5, 1, 0.25, 1000),
    ADAM("0-size", MX__ADAM_M, 2, 2, 0.9, 0, 0, 0, 0, 8),
    /* sum_squares (internal) */
    SUMSQ("one array", 1, ARR4(2), ARR4S({37, 65})),
    SUMSQ("arrays of several shapes, a scalar", 4, ARR4(2, 1, 3, 0), ARR4S({5, 7}, {129}, {2, 3, 4}, {0})),
    SUMSQ("several blocks a launch (20000 values), a 0-size array", 2, ARR4(1, 2, 0, 0),
          ARR4S({20000}, {0, 3})),
    /* cast_concat (internal) */
    CASTCAT("to bfloat16: aligned parts, an odd one, a 3-d one", 6, 3, ARR4(2, 1, 3),
            ARR4S({33, 64}, {7}, {2, 3, 40})),
    CASTCAT("to float16, a 0-size part", 5, 3, ARR4(1, 2, 2), ARR4S({24}, {0, 5}, {9, 8})),
    CASTCAT("to float32", 7, 2, ARR4(2, 1), ARR4S({16, 16}, {5})),
    CASTCAT("to float64", 8, 2, ARR4(1, 2), ARR4S({3}, {8, 8})),
    CASTCAT("several blocks a part (40000 values), many parts", 6, 6, ARR4(1, 1, 2, 1, 1, 2),
            ARR4S({40000}, {1}, {64, 8}, {17}, {0}, {3, 5})),
    ADAM("one pass, packed [m', v', p'] (vectors of 4)", MX__ADAM_ALL, 4, 2, 0.99997, 0.0031,
         1.37, 1e-8, 33, 64),
    ADAM("one pass, odd size", MX__ADAM_ALL, 4, 3, 1, 0.01, 1, 1e-3, 3, 5, 7),
    ADAM("one pass, scalar parameter", MX__ADAM_ALL, 4, 0, 0.999, 0.1, 2, 1e-8, 0),
    ADAM("one pass, 0-size", MX__ADAM_ALL, 4, 2, 1, 0.1, 1, 1e-8, 0, 4),
    ADAM_MANY("many: 4 parameters (31, 0 x 31, 1290 x 31: several blocks, 2 x 23 x 31)", 4,
              0.99997, 0.0031, 1.37, 1e-8, 1337, 31, 3, 1, 1, 1291),
    ADAM_MANY("many, a gradient scale, parts of multiples of 4 (vectors)", 5, 0.999, 0.01, 1,
              1e-3, 1337, 32, 2, 1, 1291),
    ADAM_MANY("many, one parameter", 4, 1, 0.1, 2, 1e-8, 6, 7, 0),
};

static int fill_names(void) {
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    if (cases[i].op) continue;
    if (cases[i].build == b_unary) cases[i].op = unary_ops[cases[i].ip[0]].name;
    else if (cases[i].build == b_binary) cases[i].op = binary_ops[cases[i].ip[0]].name;
  }
  return 0;
}
__attribute__((constructor)) static void init_names(void) { fill_names(); }

const mx_opcase_table mx_opcases_elementwise = {cases, (int)(sizeof cases / sizeof *cases)};
