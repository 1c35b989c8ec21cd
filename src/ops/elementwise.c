/* elementwise.c — unary, binary and ternary elementwise ops: builders
 * (dtype rules, broadcasting, errors) and VJPs written with ops. */
#include <math.h>
#include <string.h>

#include "ops_internal.h"

/* ---- shared helpers ---------------------------------------------------- */
int mx__broadcast_shapes(const char *op, const int64_t *a, int na, const int64_t *b, int nb,
                         int64_t *out, int *nout) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) {
      char sa[256], sb[256];
      return mx__set_error(MX_ERR_SHAPE, "%s: shapes %s and %s cannot be broadcast together",
                           op, mx__shape_str(a, na, sa, sizeof sa),
                           mx__shape_str(b, nb, sb, sizeof sb));
    }
    out[i] = da == 1 ? db : da;
  }
  *nout = n;
  return MX_OK;
}

mx_array *mx__scalar_like(double v, mx_array *like) {
  return mx_array_scalar(v, like->dtype);
}

mx_array *mx__sum_to_shape(mx_array *g, const int64_t *shape, int ndim) {
  if (!g) return NULL;
  if (g->ndim == ndim && !memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim))
    return mx_array_retain(g);
  int axes[MX_MAX_NDIM], n = 0;
  int lead = g->ndim - ndim;
  for (int d = 0; d < g->ndim; d++) {
    int sd = d - lead;
    if (sd < 0 || (shape[sd] == 1 && g->shape[d] != 1)) axes[n++] = d;
  }
  mx_array *s = mx_sum(g, axes, n, true);
  if (!s) return NULL;
  mx_array *r = mx_reshape(s, shape, ndim);
  mx_array_free(s);
  return r;
}

mx_array *mx__unary(const mx__op_def *def, mx_array *a, mx_dtype out_dt) {
  MX__CHECK_IN(mx__op_names[def->id], a);
  return mx__node_new(def, out_dt, a->shape, a->ndim, &a, 1, NULL, 0);
}

mx_array *mx__binary(const mx__op_def *def, mx_array *a, mx_array *b, mx_dtype in_dt,
                     mx_dtype out_dt) {
  const char *name = mx__op_names[def->id];
  MX__CHECK_IN(name, a, b);
  int64_t shape[MX_MAX_NDIM + 1];
  int nd = 0;
  if (a->ndim > MX_MAX_NDIM || b->ndim > MX_MAX_NDIM) return NULL;
  if (mx__broadcast_shapes(name, a->shape, a->ndim, b->shape, b->ndim, shape, &nd)) return NULL;
  mx_array *ca = a->dtype == in_dt ? mx_array_retain(a) : mx_astype(a, in_dt);
  mx_array *cb = b->dtype == in_dt ? mx_array_retain(b) : mx_astype(b, in_dt);
  mx_array *out = NULL;
  if (ca && cb) {
    mx_array *ins[2] = {ca, cb};
    out = mx__node_new(def, out_dt, shape, nd, ins, 2, NULL, 0);
  }
  mx_array_free(ca);
  mx_array_free(cb);
  return out;
}

/* ---- VJPs of unary ops ----------------------------------------------------- */
#define IN0 (out->inputs[0])

static int finish(mx_array **g, mx_array *v, mx__tmp *t) {
  mx__tmp_free(t);
  if (!v) return mx_last_status();
  *g = v;
  return MX_OK;
}

static int vjp_negative(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need); MX_UNUSED(out);
  mx__tmp t = {0};
  return finish(&g[0], mx_negative(cot), &t);
}
static int vjp_abs(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_multiply(cot, mx__keep(&t, mx_sign(IN0))), &t);
}
static int vjp_zero(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(cot);
  for (int i = 0; i < out->ninputs; i++) {
    if (!need[i]) continue;
    g[i] = mx_zeros_like(out->inputs[i]);
    if (!g[i]) return mx_last_status();
  }
  return MX_OK;
}
static int vjp_square(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *two_x = mx__keep(&t, mx_multiply_scalar(IN0, 2.0));
  return finish(&g[0], mx_multiply(cot, two_x), &t);
}
static int vjp_sqrt(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *den = mx__keep(&t, mx_multiply_scalar(out, 2.0));
  return finish(&g[0], mx_divide(cot, den), &t);
}
static int vjp_rsqrt(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *r = mx__keep(&t, mx_divide(out, IN0)); /* x^-3/2 */
  mx_array *h = mx__keep(&t, mx_multiply_scalar(r, -0.5));
  return finish(&g[0], mx_multiply(cot, h), &t);
}
static int vjp_reciprocal(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *sq = mx__keep(&t, mx_square(out));
  mx_array *n = mx__keep(&t, mx_negative(sq));
  return finish(&g[0], mx_multiply(cot, n), &t);
}
static int vjp_exp(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_multiply(cot, out), &t);
}
static int vjp_expm1(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_multiply(cot, mx__keep(&t, mx_add_scalar(out, 1.0))), &t);
}
static int vjp_log(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_divide(cot, IN0), &t);
}
static int vjp_log1p(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_divide(cot, mx__keep(&t, mx_add_scalar(IN0, 1.0))), &t);
}
static int vjp_sin(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  return finish(&g[0], mx_multiply(cot, mx__keep(&t, mx_cos(IN0))), &t);
}
static int vjp_cos(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *s = mx__keep(&t, mx_sin(IN0));
  return finish(&g[0], mx_multiply(cot, mx__keep(&t, mx_negative(s))), &t);
}
static int vjp_tanh(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *sq = mx__keep(&t, mx_square(out));
  mx_array *one = mx__keep(&t, mx__scalar_like(1.0, out));
  mx_array *d = mx__keep(&t, mx_subtract(one, sq));
  return finish(&g[0], mx_multiply(cot, d), &t);
}
static int vjp_sigmoid(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *one = mx__keep(&t, mx__scalar_like(1.0, out));
  mx_array *d = mx__keep(&t, mx_subtract(one, out));
  mx_array *sd = mx__keep(&t, mx_multiply(out, d));
  return finish(&g[0], mx_multiply(cot, sd), &t);
}
static int vjp_erf(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *sq = mx__keep(&t, mx_square(IN0));
  mx_array *e = mx__keep(&t, mx_exp(mx__keep(&t, mx_negative(sq))));
  mx_array *d = mx__keep(&t, mx_multiply_scalar(e, 2.0 / sqrt(M_PI)));
  return finish(&g[0], mx_multiply(cot, d), &t);
}
static int vjp_erfinv(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  mx_array *e = mx__keep(&t, mx_exp(mx__keep(&t, mx_square(out))));
  mx_array *d = mx__keep(&t, mx_multiply_scalar(e, sqrt(M_PI) / 2.0));
  return finish(&g[0], mx_multiply(cot, d), &t);
}
static int vjp_astype(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(need);
  mx__tmp t = {0};
  if (!mx_dtype_is_float(IN0->dtype)) return finish(&g[0], mx_zeros_like(IN0), &t);
  return finish(&g[0], mx_astype(cot, IN0->dtype), &t);
}

/* ---- VJPs of binary ops ----------------------------------------------------- */
#define IN1 (out->inputs[1])
static int set_grad(mx_array **g, mx_array *v, mx_array *like) {
  if (!v) return mx_last_status();
  *g = mx__sum_to_shape(v, like->shape, like->ndim);
  mx_array_free(v);
  return *g ? MX_OK : mx_last_status();
}
static int vjp_add(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  if (need[0]) st = set_grad(&g[0], mx_array_retain(cot), IN0);
  if (!st && need[1]) st = set_grad(&g[1], mx_array_retain(cot), IN1);
  return st;
}
static int vjp_subtract(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  if (need[0]) st = set_grad(&g[0], mx_array_retain(cot), IN0);
  if (!st && need[1]) st = set_grad(&g[1], mx_negative(cot), IN1);
  return st;
}
static int vjp_multiply(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  if (need[0]) st = set_grad(&g[0], mx_multiply(cot, IN1), IN0);
  if (!st && need[1]) st = set_grad(&g[1], mx_multiply(cot, IN0), IN1);
  return st;
}
static int vjp_divide(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  if (need[0]) st = set_grad(&g[0], mx_divide(cot, IN1), IN0);
  if (!st && need[1]) {
    mx__tmp t = {0};
    mx_array *q = mx__keep(&t, mx_divide(out, IN1));
    mx_array *n = mx__keep(&t, mx_negative(q));
    st = set_grad(&g[1], mx_multiply(cot, n), IN1);
    mx__tmp_free(&t);
  }
  return st;
}
static int vjp_power(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  mx__tmp t = {0};
  if (need[0]) { /* b * a^(b-1) */
    mx_array *bm1 = mx__keep(&t, mx_add_scalar(IN1, -1.0));
    mx_array *p = mx__keep(&t, mx_power(IN0, bm1));
    mx_array *d = mx__keep(&t, mx_multiply(IN1, p));
    st = set_grad(&g[0], mx_multiply(cot, d), IN0);
  }
  if (!st && need[1]) { /* a^b * log(a) */
    mx_array *l = mx__keep(&t, mx_log(IN0));
    mx_array *d = mx__keep(&t, mx_multiply(out, l));
    st = set_grad(&g[1], mx_multiply(cot, d), IN1);
  }
  mx__tmp_free(&t);
  return st;
}
static int vjp_minmax(mx_array *out, mx_array *cot, mx_array **g, const bool *need, bool is_max) {
  int st = MX_OK;
  mx__tmp t = {0};
  mx_array *mask = mx__keep(&t, is_max ? mx_greater_equal(IN0, IN1) : mx_less_equal(IN0, IN1));
  mx_array *zero = mx__keep(&t, mx__scalar_like(0.0, cot));
  if (need[0]) st = set_grad(&g[0], mx_where(mask, cot, zero), IN0);
  if (!st && need[1]) st = set_grad(&g[1], mx_where(mask, zero, cot), IN1);
  mx__tmp_free(&t);
  return st;
}
static int vjp_maximum(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  return vjp_minmax(out, cot, g, need, true);
}
static int vjp_minimum(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  return vjp_minmax(out, cot, g, need, false);
}
static int vjp_where(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  int st = MX_OK;
  mx__tmp t = {0};
  mx_array *zero = mx__keep(&t, mx__scalar_like(0.0, cot));
  if (need[0]) {
    g[0] = mx_zeros_like(out->inputs[0]);
    if (!g[0]) st = mx_last_status();
  }
  if (!st && need[1]) st = set_grad(&g[1], mx_where(out->inputs[0], cot, zero), out->inputs[1]);
  if (!st && need[2]) st = set_grad(&g[2], mx_where(out->inputs[0], zero, cot), out->inputs[2]);
  mx__tmp_free(&t);
  return st;
}

/* ---- op definitions ------------------------------------------------------------ */
#define DEF(NAME, VJP, ZERO) \
  static const mx__op_def def_##NAME = {.id = MX_OP_##NAME, .vjp = VJP, .zero_grad = ZERO};
DEF(NEGATIVE, vjp_negative, false)
DEF(ABS, vjp_abs, false)
DEF(SIGN, vjp_zero, true)
DEF(SQUARE, vjp_square, false)
DEF(SQRT, vjp_sqrt, false)
DEF(RSQRT, vjp_rsqrt, false)
DEF(RECIPROCAL, vjp_reciprocal, false)
DEF(EXP, vjp_exp, false)
DEF(EXPM1, vjp_expm1, false)
DEF(LOG, vjp_log, false)
DEF(LOG1P, vjp_log1p, false)
DEF(SIN, vjp_sin, false)
DEF(COS, vjp_cos, false)
DEF(TANH, vjp_tanh, false)
DEF(SIGMOID, vjp_sigmoid, false)
DEF(ERF, vjp_erf, false)
DEF(ERFINV, vjp_erfinv, false)
DEF(FLOOR, vjp_zero, true)
DEF(CEIL, vjp_zero, true)
DEF(ROUND, vjp_zero, true)
DEF(LOGICAL_NOT, vjp_zero, true)
DEF(ISNAN, vjp_zero, true)
DEF(ISINF, vjp_zero, true)
DEF(ASTYPE, vjp_astype, false)
DEF(STOP_GRADIENT, vjp_zero, true)
DEF(ADD, vjp_add, false)
DEF(SUBTRACT, vjp_subtract, false)
DEF(MULTIPLY, vjp_multiply, false)
DEF(DIVIDE, vjp_divide, false)
DEF(POWER, vjp_power, false)
DEF(MAXIMUM, vjp_maximum, false)
DEF(MINIMUM, vjp_minimum, false)
DEF(EQUAL, vjp_zero, true)
DEF(NOT_EQUAL, vjp_zero, true)
DEF(LESS, vjp_zero, true)
DEF(LESS_EQUAL, vjp_zero, true)
DEF(GREATER, vjp_zero, true)
DEF(GREATER_EQUAL, vjp_zero, true)
DEF(LOGICAL_AND, vjp_zero, true)
DEF(LOGICAL_OR, vjp_zero, true)
DEF(WHERE, vjp_where, false)

/* ---- unary builders --------------------------------------------------------------- */
static mx_dtype float_of(mx_dtype dt) { return mx_dtype_is_float(dt) ? dt : MX_FLOAT32; }

/* math ops: integer/bool inputs are computed in float32 (as MLX) */
#define MATH_UNARY(fn, NAME)                                         \
  mx_array *fn(mx_array *a) {                                        \
    MX__CHECK_IN(#fn, a);                                            \
    if (mx_dtype_is_float(a->dtype)) return mx__unary(&def_##NAME, a, a->dtype); \
    mx_array *c = mx_astype(a, MX_FLOAT32);                          \
    mx_array *r = mx__unary(&def_##NAME, c, MX_FLOAT32);             \
    mx_array_free(c);                                                \
    return r;                                                        \
  }
MATH_UNARY(mx_sqrt, SQRT)
MATH_UNARY(mx_rsqrt, RSQRT)
MATH_UNARY(mx_reciprocal, RECIPROCAL)
MATH_UNARY(mx_exp, EXP)
MATH_UNARY(mx_expm1, EXPM1)
MATH_UNARY(mx_log, LOG)
MATH_UNARY(mx_log1p, LOG1P)
MATH_UNARY(mx_sin, SIN)
MATH_UNARY(mx_cos, COS)
MATH_UNARY(mx_tanh, TANH)
MATH_UNARY(mx_sigmoid, SIGMOID)
MATH_UNARY(mx_erf, ERF)
MATH_UNARY(mx_erfinv, ERFINV)

mx_array *mx_negative(mx_array *a) {
  MX__CHECK_IN("negative", a);
  if (a->dtype == MX_BOOL) {
    mx__set_error(MX_ERR_DTYPE, "negative: not supported for bool (use logical_not)");
    return NULL;
  }
  return mx__unary(&def_NEGATIVE, a, a->dtype);
}
mx_array *mx_abs(mx_array *a) { MX__CHECK_IN("abs", a); return mx__unary(&def_ABS, a, a->dtype); }
mx_array *mx_sign(mx_array *a) { MX__CHECK_IN("sign", a); return mx__unary(&def_SIGN, a, a->dtype); }
mx_array *mx_square(mx_array *a) { MX__CHECK_IN("square", a); return mx__unary(&def_SQUARE, a, a->dtype); }
mx_array *mx_floor(mx_array *a) { MX__CHECK_IN("floor", a); return mx__unary(&def_FLOOR, a, a->dtype); }
mx_array *mx_ceil(mx_array *a) { MX__CHECK_IN("ceil", a); return mx__unary(&def_CEIL, a, a->dtype); }
mx_array *mx_round(mx_array *a) { MX__CHECK_IN("round", a); return mx__unary(&def_ROUND, a, a->dtype); }
mx_array *mx_logical_not(mx_array *a) { MX__CHECK_IN("logical_not", a); return mx__unary(&def_LOGICAL_NOT, a, MX_BOOL); }
mx_array *mx_isnan(mx_array *a) { MX__CHECK_IN("isnan", a); return mx__unary(&def_ISNAN, a, MX_BOOL); }
mx_array *mx_isinf(mx_array *a) { MX__CHECK_IN("isinf", a); return mx__unary(&def_ISINF, a, MX_BOOL); }
mx_array *mx_stop_gradient(mx_array *a) {
  MX__CHECK_IN("stop_gradient", a);
  return mx__unary(&def_STOP_GRADIENT, a, a->dtype);
}

mx_array *mx_astype(mx_array *a, mx_dtype dt) {
  MX__CHECK_IN("astype", a);
  if ((unsigned)dt >= MX_DTYPE_COUNT) {
    mx__set_error(MX_ERR_DTYPE, "astype: invalid dtype %d", (int)dt);
    return NULL;
  }
  if (a->dtype == dt) return mx_array_retain(a);
  return mx__unary(&def_ASTYPE, a, dt);
}

/* ---- binary builders ---------------------------------------------------------------- */
#define ARITH_BINARY(fn, NAME)                                        \
  mx_array *fn(mx_array *a, mx_array *b) {                            \
    MX__CHECK_IN(#fn, a, b);                                          \
    mx_dtype dt = mx_promote_types(a->dtype, b->dtype);               \
    return mx__binary(&def_##NAME, a, b, dt, dt);                     \
  }
ARITH_BINARY(mx_add, ADD)
ARITH_BINARY(mx_multiply, MULTIPLY)
ARITH_BINARY(mx_maximum, MAXIMUM)
ARITH_BINARY(mx_minimum, MINIMUM)

mx_array *mx_subtract(mx_array *a, mx_array *b) {
  MX__CHECK_IN("subtract", a, b);
  mx_dtype dt = mx_promote_types(a->dtype, b->dtype);
  if (dt == MX_BOOL) {
    mx__set_error(MX_ERR_DTYPE, "subtract: not supported for bool (use logical ops)");
    return NULL;
  }
  return mx__binary(&def_SUBTRACT, a, b, dt, dt);
}

mx_array *mx_divide(mx_array *a, mx_array *b) {
  MX__CHECK_IN("divide", a, b);
  mx_dtype dt = float_of(mx_promote_types(a->dtype, b->dtype));
  return mx__binary(&def_DIVIDE, a, b, dt, dt);
}

mx_array *mx_power(mx_array *a, mx_array *b) {
  MX__CHECK_IN("power", a, b);
  mx_dtype dt = mx_promote_types(a->dtype, b->dtype);
  if (dt == MX_BOOL) dt = MX_UINT8;
  return mx__binary(&def_POWER, a, b, dt, dt);
}

#define CMP_BINARY(fn, NAME)                                          \
  mx_array *fn(mx_array *a, mx_array *b) {                            \
    MX__CHECK_IN(#fn, a, b);                                          \
    mx_dtype dt = mx_promote_types(a->dtype, b->dtype);               \
    return mx__binary(&def_##NAME, a, b, dt, MX_BOOL);                \
  }
CMP_BINARY(mx_equal, EQUAL)
CMP_BINARY(mx_not_equal, NOT_EQUAL)
CMP_BINARY(mx_less, LESS)
CMP_BINARY(mx_less_equal, LESS_EQUAL)
CMP_BINARY(mx_greater, GREATER)
CMP_BINARY(mx_greater_equal, GREATER_EQUAL)

mx_array *mx_logical_and(mx_array *a, mx_array *b) {
  MX__CHECK_IN("logical_and", a, b);
  return mx__binary(&def_LOGICAL_AND, a, b, MX_BOOL, MX_BOOL);
}
mx_array *mx_logical_or(mx_array *a, mx_array *b) {
  MX__CHECK_IN("logical_or", a, b);
  return mx__binary(&def_LOGICAL_OR, a, b, MX_BOOL, MX_BOOL);
}

mx_array *mx_where(mx_array *cond, mx_array *a, mx_array *b) {
  MX__CHECK_IN("where", cond, a, b);
  int64_t s1[MX_MAX_NDIM], s2[MX_MAX_NDIM];
  int n1 = 0, n2 = 0;
  if (mx__broadcast_shapes("where", cond->shape, cond->ndim, a->shape, a->ndim, s1, &n1) ||
      mx__broadcast_shapes("where", s1, n1, b->shape, b->ndim, s2, &n2))
    return NULL;
  mx_dtype dt = mx_promote_types(a->dtype, b->dtype);
  mx_array *c = mx_astype(cond, MX_BOOL);
  mx_array *ca = mx_astype(a, dt);
  mx_array *cb = mx_astype(b, dt);
  mx_array *out = NULL;
  if (c && ca && cb) {
    mx_array *ins[3] = {c, ca, cb};
    out = mx__node_new(&def_WHERE, dt, s2, n2, ins, 3, NULL, 0);
  }
  mx_array_free(c);
  mx_array_free(ca);
  mx_array_free(cb);
  return out;
}

/* Weak scalar: keeps a's dtype when a is float, or when s is integral. */
static mx_array *weak_scalar(mx_array *a, double s) {
  mx_dtype dt = a->dtype;
  if (!mx_dtype_is_float(dt) && (s != floor(s) || !isfinite(s))) dt = MX_FLOAT32;
  if (dt == MX_BOOL) dt = (s == 0 || s == 1) ? MX_BOOL : MX_INT32;
  return mx_array_scalar(s, dt);
}

mx_array *mx_add_scalar(mx_array *a, double s) {
  MX__CHECK_IN("add", a);
  mx_array *c = weak_scalar(a, s), *r = mx_add(a, c);
  mx_array_free(c);
  return r;
}
mx_array *mx_multiply_scalar(mx_array *a, double s) {
  MX__CHECK_IN("multiply", a);
  mx_array *c = weak_scalar(a, s), *r = mx_multiply(a, c);
  mx_array_free(c);
  return r;
}
mx_array *mx_power_scalar(mx_array *a, double s) {
  MX__CHECK_IN("power", a);
  mx_array *c = weak_scalar(a, s), *r = mx_power(a, c);
  mx_array_free(c);
  return r;
}

mx_array *mx_clip(mx_array *a, mx_array *lo, mx_array *hi) {
  MX__CHECK_IN("clip", a);
  mx_array *r = mx_array_retain(a);
  if (lo) {
    mx_array *t = mx_maximum(r, lo);
    mx_array_free(r);
    r = t;
  }
  if (hi && r) {
    mx_array *t = mx_minimum(r, hi);
    mx_array_free(r);
    r = t;
  }
  return r;
}

mx_array *mx_clip_scalar(mx_array *a, double lo, double hi) {
  MX__CHECK_IN("clip", a);
  if (lo > hi) {
    mx__set_error(MX_ERR_INVALID_ARG, "clip: lower bound %g is above upper bound %g", lo, hi);
    return NULL;
  }
  mx_array *l = weak_scalar(a, lo), *h = weak_scalar(a, hi);
  mx_array *r = mx_clip(a, l, h);
  mx_array_free(l);
  mx_array_free(h);
  return r;
}

int mx_allclose(mx_array *a, mx_array *b, double rtol, double atol, bool *out) {
  if (!a || !b) return mx__set_error(MX_ERR_INVALID_ARG, "allclose: NULL input");
  mx__tmp t = {0};
  mx_array *a64 = mx__keep(&t, mx_astype(a, MX_FLOAT64));
  mx_array *b64 = mx__keep(&t, mx_astype(b, MX_FLOAT64));
  mx_array *d = mx__keep(&t, mx_abs(mx__keep(&t, mx_subtract(a64, b64))));
  mx_array *tol = mx__keep(&t, mx_add_scalar(mx__keep(&t, mx_multiply_scalar(
                                                 mx__keep(&t, mx_abs(b64)), rtol)), atol));
  mx_array *ok = mx__keep(&t, mx_less_equal(d, tol));
  /* NaN == NaN counts as close, like equal_nan=True */
  mx_array *both_nan = mx__keep(&t, mx_logical_and(mx__keep(&t, mx_isnan(a64)),
                                                   mx__keep(&t, mx_isnan(b64))));
  mx_array *all = mx__keep(&t, mx_all(mx__keep(&t, mx_logical_or(ok, both_nan)), NULL, 0, false));
  int64_t v = 0;
  int st = all ? mx_array_item_int(all, &v) : mx_last_status();
  mx__tmp_free(&t);
  if (!st) *out = v != 0;
  return st;
}

/* ---- erfinv (float64), used by the CPU kernels -------------------------------------- */
/* Giles' polynomial ("Approximating the erfinv function", 2011) as a
 * start, refined by one Newton step on erf(x) - y. */
double mx__erfinv(double y) {
  if (y <= -1) return y == -1 ? -INFINITY : NAN;
  if (y >= 1) return y == 1 ? INFINITY : NAN;
  double w = -log((1.0 - y) * (1.0 + y)), x;
  if (w < 5.0) {
    w -= 2.5;
    x = 2.81022636e-08;
    x = 3.43273939e-07 + x * w;
    x = -3.5233877e-06 + x * w;
    x = -4.39150654e-06 + x * w;
    x = 0.00021858087 + x * w;
    x = -0.00125372503 + x * w;
    x = -0.00417768164 + x * w;
    x = 0.246640727 + x * w;
    x = 1.50140941 + x * w;
  } else {
    w = sqrt(w) - 3.0;
    x = -0.000200214257;
    x = 0.000100950558 + x * w;
    x = 0.00134934322 + x * w;
    x = -0.00367342844 + x * w;
    x = 0.00573950773 + x * w;
    x = -0.0076224613 + x * w;
    x = 0.00943887047 + x * w;
    x = 1.00167406 + x * w;
    x = 2.83297682 + x * w;
  }
  x *= y;
  /* the polynomial is good to ~1e-7; one Newton step on erf(x) - y
   * (quadratic convergence) brings it to ~1e-14 */
  double err = erf(x) - y;
  x -= err / (2.0 / sqrt(M_PI) * exp(-x * x));
  return x;
}
