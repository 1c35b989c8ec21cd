/* reduce.c (cpu) — reductions, arg-reductions, scans, softmax family.
 *
 * Reductions accumulate in double (float inputs) or int64 (integers, with
 * wrapping), whatever the thread count: each output element is reduced in
 * a fixed order (blocks of BLOCK elements combined left to right), so
 * results are bit-identical for any number of threads. */
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "ops/reduce_params.h"
#include "types.h"
#include "vmath.h"

#define BLOCK 8192

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

/* ---- combine functions per accumulator type --------------------------------- */
static inline double dcomb(rop op, double a, double b) {
  switch (op) {
    case R_SUM: return a + b;
    case R_PROD: return a * b;
    case R_MAX: return (a != a || b != b) ? NAN : a > b ? a : b;
    case R_MIN: return (a != a || b != b) ? NAN : a < b ? a : b;
    case R_ALL: return (a != 0) && (b != 0);
    default: return (a != 0) || (b != 0);
  }
}
static inline int64_t icomb(rop op, int64_t a, int64_t b) {
  int64_t r;
  switch (op) {
    case R_SUM: r = (int64_t)((uint64_t)a + (uint64_t)b); return r;
    case R_PROD: r = (int64_t)((uint64_t)a * (uint64_t)b); return r;
    case R_MAX: return a > b ? a : b;
    case R_MIN: return a < b ? a : b;
    case R_ALL: return (a != 0) && (b != 0);
    default: return (a != 0) || (b != 0);
  }
}
static double dinit(rop op) {
  return op == R_SUM || op == R_ANY ? 0 : op == R_MAX ? -INFINITY : op == R_MIN ? INFINITY : 1;
}
static int64_t iinit(rop op) {
  return op == R_SUM || op == R_ANY ? 0 : op == R_MAX ? INT64_MIN : op == R_MIN ? INT64_MAX : 1;
}

/* ---- (K1, R, K2) reduction of a contiguous source into acc -----------------
 * src type S in {float, double, int64_t}; acc type A in {double, int64_t}. */
typedef struct {
  rop op;
  const void *src;
  void *dst;
  int64_t k1, r, k2;
  int src_kind; /* 0 float, 1 double, 2 int64 */
} krk;

#define DEF_ROW(NAME, S, A, INIT, COMB)                                          \
  static A NAME(rop op, const S *x, int64_t n) {                                 \
    A acc = INIT(op);                                                            \
    if (op == R_SUM) {                                                           \
      A s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                          \
      int64_t i = 0;                                                             \
      for (; i + 4 <= n; i += 4) {                                               \
        s0 = COMB(R_SUM, s0, (A)x[i]);                                           \
        s1 = COMB(R_SUM, s1, (A)x[i + 1]);                                       \
        s2 = COMB(R_SUM, s2, (A)x[i + 2]);                                       \
        s3 = COMB(R_SUM, s3, (A)x[i + 3]);                                       \
      }                                                                          \
      for (; i < n; i++) s0 = COMB(R_SUM, s0, (A)x[i]);                          \
      return COMB(R_SUM, COMB(R_SUM, s0, s1), COMB(R_SUM, s2, s3));              \
    }                                                                            \
    for (int64_t i = 0; i < n; i++) acc = COMB(op, acc, (A)x[i]);                \
    return acc;                                                                  \
  }
DEF_ROW(row_f, float, double, dinit, dcomb)
DEF_ROW(row_d, double, double, dinit, dcomb)
DEF_ROW(row_i, int64_t, int64_t, iinit, icomb)

/* Row task t: output k1 = t / nb, block b = t % nb. */
static void row_task(void *c, int64_t b, int64_t e) {
  const krk *k = c;
  int64_t nb = (k->r + BLOCK - 1) / BLOCK;
  for (int64_t t = b; t < e; t++) {
    int64_t row = t / nb, blk = t % nb;
    int64_t s = blk * BLOCK, n = MX_MIN(BLOCK, k->r - s);
    int64_t off = row * k->r + s;
    /* partials are stored in dst as [k1][nb] and combined later */
    if (k->src_kind == 0) ((double *)k->dst)[t] = row_f(k->op, (const float *)k->src + off, n);
    else if (k->src_kind == 1) ((double *)k->dst)[t] = row_d(k->op, (const double *)k->src + off, n);
    else ((int64_t *)k->dst)[t] = row_i(k->op, (const int64_t *)k->src + off, n);
  }
}

#define COLCHUNK 512
#define DEF_COL(NAME, S, A, INIT, COMB)                                          \
  static void NAME(const krk *k, int64_t k1, int64_t c0, int64_t c1, A *out) {   \
    for (int64_t c = c0; c < c1; c++) out[c] = INIT(k->op);                      \
    const S *x = (const S *)k->src + k1 * k->r * k->k2;                          \
    for (int64_t r = 0; r < k->r; r++) {                                         \
      const S *row = x + r * k->k2;                                              \
      if (k->op == R_SUM)                                                        \
        for (int64_t c = c0; c < c1; c++) out[c] += (A)row[c];                   \
      else                                                                       \
        for (int64_t c = c0; c < c1; c++) out[c] = COMB(k->op, out[c], (A)row[c]); \
    }                                                                            \
  }
static inline int64_t iadd_wrap(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a + (uint64_t)b);
}
DEF_COL(col_f, float, double, dinit, dcomb)
DEF_COL(col_d, double, double, dinit, dcomb)
/* int sums must wrap: no plain += for int64 */
static void col_i(const krk *k, int64_t k1, int64_t c0, int64_t c1, int64_t *out) {
  for (int64_t c = c0; c < c1; c++) out[c] = iinit(k->op);
  const int64_t *x = (const int64_t *)k->src + k1 * k->r * k->k2;
  for (int64_t r = 0; r < k->r; r++) {
    const int64_t *row = x + r * k->k2;
    if (k->op == R_SUM)
      for (int64_t c = c0; c < c1; c++) out[c] = iadd_wrap(out[c], row[c]);
    else
      for (int64_t c = c0; c < c1; c++) out[c] = icomb(k->op, out[c], row[c]);
  }
}

static void col_task(void *c, int64_t b, int64_t e) {
  const krk *k = c;
  int64_t nchunks = (k->k2 + COLCHUNK - 1) / COLCHUNK;
  for (int64_t t = b; t < e; t++) {
    int64_t k1 = t / nchunks, ch = t % nchunks;
    int64_t c0 = ch * COLCHUNK, c1 = MX_MIN(k->k2, c0 + COLCHUNK);
    if (k->src_kind == 0) col_f(k, k1, c0, c1, (double *)k->dst + k1 * k->k2);
    else if (k->src_kind == 1) col_d(k, k1, c0, c1, (double *)k->dst + k1 * k->k2);
    else col_i(k, k1, c0, c1, (int64_t *)k->dst + k1 * k->k2);
  }
}

/* Reduce (K1, R, K2) from src into a new acc buffer (K1*K2). */
static int run_krk(rop op, const void *src, int src_kind, int64_t k1, int64_t r, int64_t k2,
                   bool acc_int, void **dst_out) {
  size_t es = 8;
  void *dst = malloc(es * (size_t)MX_MAX(k1 * k2, 1));
  if (!dst) return mx__set_error(MX_ERR_OOM, "reduce: out of memory");
  krk k = {op, src, dst, k1, r, k2, src_kind};
  if (k2 == 1) {
    int64_t nb = (r + BLOCK - 1) / BLOCK;
    if (nb <= 1) nb = 1;
    if (r == 0) {
      for (int64_t i = 0; i < k1; i++) {
        if (acc_int) ((int64_t *)dst)[i] = iinit(op);
        else ((double *)dst)[i] = dinit(op);
      }
    } else if (nb == 1) {
      k.dst = dst;
      mx__parallel_for(k1, MX_MAX(1, 32768 / MX_MAX(r, 1)), row_task, &k);
    } else {
      void *part = malloc(es * (size_t)(k1 * nb));
      if (!part) {
        free(dst);
        return mx__set_error(MX_ERR_OOM, "reduce: out of memory");
      }
      k.dst = part;
      mx__parallel_for(k1 * nb, 1, row_task, &k);
      for (int64_t i = 0; i < k1; i++) {
        if (acc_int) {
          int64_t a = ((int64_t *)part)[i * nb];
          for (int64_t j = 1; j < nb; j++) a = icomb(op, a, ((int64_t *)part)[i * nb + j]);
          ((int64_t *)dst)[i] = a;
        } else {
          double a = ((double *)part)[i * nb];
          for (int64_t j = 1; j < nb; j++) a = dcomb(op, a, ((double *)part)[i * nb + j]);
          ((double *)dst)[i] = a;
        }
      }
      free(part);
    }
  } else {
    int64_t nchunks = (k2 + COLCHUNK - 1) / COLCHUNK;
    mx__parallel_for(k1 * nchunks, 1, col_task, &k);
  }
  *dst_out = dst;
  return MX_OK;
}

static int k_reduce(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__reduce_params *p = MX__PARAMS(out, mx__reduce_params);
  rop op = rop_of(out->op->id);
  bool is_float = mx_dtype_is_float(a->dtype);
  bool acc_int = !is_float;
  if (op == R_ALL || op == R_ANY) acc_int = false; /* 0/1 in double */
  /* 1. source: contiguous, as float/double/int64 */
  void *tmp = NULL;
  const void *src;
  int kind;
  if (a->dtype == MX_FLOAT32 && a->row_contiguous && !(op == R_ALL || op == R_ANY)) {
    src = mx__data(a);
    kind = 0;
  } else if (a->dtype == MX_FLOAT64 && a->row_contiguous) {
    src = mx__data(a);
    kind = 1;
  } else {
    mx_dtype cdt = acc_int ? MX_INT64 : MX_FLOAT64;
    size_t n = (size_t)MX_MAX(a->size, 1);
    void *c = malloc(mx_dtype_size(a->dtype) * n);
    tmp = malloc(8 * n);
    if (!c || !tmp) {
      free(c);
      free(tmp);
      return mx__set_error(MX_ERR_OOM, "%s: out of memory", mx__op_names[out->op->id]);
    }
    mx__cpu_copy_to_contiguous(a, c);
    mx__cpu_convert(c, a->dtype, tmp, cdt, a->size);
    free(c);
    src = tmp;
    kind = acc_int ? 2 : 1;
  }
  /* 2. groups of dims (size-1 dims dropped), consecutive same kind merged */
  int64_t gs[MX_MAX_NDIM];
  bool gr[MX_MAX_NDIM];
  int ng = 0;
  for (int d = 0; d < a->ndim; d++) {
    if (a->shape[d] == 1) continue;
    bool red = (p->mask >> d) & 1u;
    if (ng && gr[ng - 1] == red) gs[ng - 1] *= a->shape[d];
    else {
      gs[ng] = a->shape[d];
      gr[ng++] = red;
    }
  }
  /* 3. reduce the rightmost reduced group until none is left */
  const void *cur = src;
  int cur_kind = kind;
  void *owned = NULL;
  int st = MX_OK;
  bool any = false;
  for (;;) {
    int j = -1;
    for (int g = ng - 1; g >= 0; g--)
      if (gr[g]) {
        j = g;
        break;
      }
    if (j < 0) break;
    any = true;
    int64_t k1 = 1, k2 = 1;
    for (int g = 0; g < j; g++) k1 *= gs[g];
    for (int g = j + 1; g < ng; g++) k2 *= gs[g];
    void *next = NULL;
    st = run_krk(op, cur, cur_kind, k1, gs[j], k2, acc_int, &next);
    if (st) break;
    free(owned);
    owned = next;
    cur = next;
    cur_kind = acc_int ? 2 : 1;
    gs[j] = 1;
    gr[j] = false;
  }
  if (!st && !any) {
    /* nothing reduced (reduced dims of size 1): values pass through; all/any map to 0/1 */
    size_t n = (size_t)MX_MAX(a->size, 1);
    if (cur_kind == 0) {
      owned = malloc(8 * n);
      if (!owned) st = mx__set_error(MX_ERR_OOM, "reduce: out of memory");
      else {
        mx__cpu_convert(cur, MX_FLOAT32, owned, MX_FLOAT64, a->size);
        cur = owned;
        cur_kind = 1;
      }
    }
    if (!st && (op == R_ALL || op == R_ANY)) {
      if (!owned) {
        owned = malloc(8 * n);
        if (!owned) st = mx__set_error(MX_ERR_OOM, "reduce: out of memory");
        else memcpy(owned, cur, 8 * (size_t)a->size);
        cur = owned;
      }
      if (!st)
        for (int64_t i = 0; i < a->size; i++) ((double *)owned)[i] = ((double *)owned)[i] != 0;
    }
  }
  if (!st) st = mx__array_alloc_data(out);
  if (!st) mx__cpu_convert(cur, cur_kind == 2 ? MX_INT64 : MX_FLOAT64, out->buf->ptr, out->dtype, out->size);
  free(owned);
  free(tmp);
  return st;
}

/* ---- helpers: contiguous double/int64 copies ------------------------------------ */
static double *to_f64(mx_array *a) {
  size_t n = (size_t)MX_MAX(a->size, 1);
  void *c = malloc(mx_dtype_size(a->dtype) * n);
  double *d = malloc(sizeof(double) * n);
  if (!c || !d) {
    free(c);
    free(d);
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  mx__cpu_copy_to_contiguous(a, c);
  mx__cpu_convert(c, a->dtype, d, MX_FLOAT64, a->size);
  free(c);
  return d;
}

/* ---- argmax / argmin ------------------------------------------------------------ */
typedef struct {
  const double *x;
  uint32_t *o;
  int64_t pre, len, post;
  bool is_max;
} argctx;

static void arg_task(void *c, int64_t b, int64_t e) {
  const argctx *k = c;
  for (int64_t t = b; t < e; t++) {
    int64_t i = t / k->post, j = t % k->post;
    const double *x = k->x + i * k->len * k->post + j;
    int64_t best = 0;
    double bv = x[0];
    if (bv == bv)
      for (int64_t r = 1; r < k->len; r++) {
        double v = x[r * k->post];
        if (v != v) { /* NaN wins, first one */
          best = r;
          break;
        }
        if (k->is_max ? v > bv : v < bv) {
          bv = v;
          best = r;
        }
      }
    k->o[t] = (uint32_t)best;
  }
}

static int k_argreduce(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int ax = MX__PARAMS(out, mx__axis_params)->axis;
  double *x = to_f64(a);
  if (!x) return mx_last_status();
  int st = mx__array_alloc_data(out);
  if (st) {
    free(x);
    return st;
  }
  argctx k = {x, out->buf->ptr, 1, a->shape[ax], 1, out->op->id == MX_OP_ARGMAX};
  for (int d = 0; d < ax; d++) k.pre *= a->shape[d];
  for (int d = ax + 1; d < a->ndim; d++) k.post *= a->shape[d];
  mx__parallel_for(k.pre * k.post, 256, arg_task, &k);
  free(x);
  return MX_OK;
}

/* ---- cumsum ---------------------------------------------------------------------- */
static int k_cumsum(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  const mx__scan_params *p = MX__PARAMS(out, mx__scan_params);
  bool isf = mx_dtype_is_float(a->dtype);
  size_t n = (size_t)MX_MAX(a->size, 1);
  void *c = malloc(mx_dtype_size(a->dtype) * n);
  void *acc = malloc(8 * n);
  if (!c || !acc) {
    free(c);
    free(acc);
    return mx__set_error(MX_ERR_OOM, "cumsum: out of memory");
  }
  mx__cpu_copy_to_contiguous(a, c);
  mx__cpu_convert(c, a->dtype, acc, isf ? MX_FLOAT64 : MX_INT64, a->size);
  free(c);
  int64_t pre = 1, len = a->shape[p->axis], post = 1;
  for (int d = 0; d < p->axis; d++) pre *= a->shape[d];
  for (int d = p->axis + 1; d < a->ndim; d++) post *= a->shape[d];
  for (int64_t i = 0; i < pre; i++)
    for (int64_t j = 0; j < post; j++) {
      int64_t base = i * len * post + j;
      double sd = 0;
      int64_t si = 0;
      for (int64_t r0 = 0; r0 < len; r0++) {
        int64_t r = p->reverse ? len - 1 - r0 : r0;
        int64_t o = base + r * post;
        if (isf) {
          double v = ((double *)acc)[o];
          if (p->inclusive) sd += v;
          ((double *)acc)[o] = sd;
          if (!p->inclusive) sd += v;
        } else {
          int64_t v = ((int64_t *)acc)[o];
          if (p->inclusive) si = iadd_wrap(si, v);
          ((int64_t *)acc)[o] = si;
          if (!p->inclusive) si = iadd_wrap(si, v);
        }
      }
    }
  int st = mx__array_alloc_data(out);
  if (!st) mx__cpu_convert(acc, isf ? MX_FLOAT64 : MX_INT64, out->buf->ptr, out->dtype, out->size);
  free(acc);
  return st;
}

/* ---- softmax / log_softmax / logsumexp over the last axis --------------------------- */
typedef struct {
  const void *x;
  void *o;
  int64_t len;
  int mode; /* 0 softmax, 1 log_softmax, 2 logsumexp */
  bool f64;
} smctx;

#define DEF_SM(NAME, T, EXP, LOG)                                                 \
  static void NAME(const smctx *k, int64_t row) {                                 \
    const T *x = (const T *)k->x + row * k->len;                                  \
    T m = -INFINITY;                                                              \
    for (int64_t i = 0; i < k->len; i++) m = x[i] > m || x[i] != x[i] ? x[i] : m; \
    if (m != m) m = 0; /* NaNs propagate through the sum */                       \
    if (m == -INFINITY) m = 0;                                                    \
    T s = 0;                                                                      \
    if (k->mode == 0) {                                                           \
      T *o = (T *)k->o + row * k->len;                                            \
      for (int64_t i = 0; i < k->len; i++) {                                      \
        o[i] = EXP(x[i] - m);                                                     \
        s += o[i];                                                                \
      }                                                                           \
      T inv = 1 / s;                                                              \
      for (int64_t i = 0; i < k->len; i++) o[i] *= inv;                           \
    } else {                                                                      \
      for (int64_t i = 0; i < k->len; i++) s += EXP(x[i] - m);                    \
      T lse = m + LOG(s);                                                         \
      if (k->mode == 2) ((T *)k->o)[row] = lse;                                   \
      else {                                                                      \
        T *o = (T *)k->o + row * k->len;                                          \
        for (int64_t i = 0; i < k->len; i++) o[i] = x[i] - lse;                   \
      }                                                                           \
    }                                                                             \
  }
DEF_SM(sm_f, float, mx__vexpf, logf)
DEF_SM(sm_d, double, exp, log)

static void sm_task(void *c, int64_t b, int64_t e) {
  const smctx *k = c;
  for (int64_t r = b; r < e; r++) {
    if (k->f64) sm_d(k, r);
    else sm_f(k, r);
  }
}

static int k_softmax_family(mx_array *out, mx_array **in) {
  mx_array *a = in[0];
  int mode = out->op->id == MX_OP_SOFTMAX ? 0 : out->op->id == MX_OP_LOG_SOFTMAX ? 1 : 2;
  bool f64 = a->dtype == MX_FLOAT64;
  mx_dtype cdt = f64 ? MX_FLOAT64 : MX_FLOAT32;
  size_t n = (size_t)MX_MAX(a->size, 1);
  int64_t len = a->ndim ? a->shape[a->ndim - 1] : 1;
  int64_t rows = len ? a->size / len : 0;
  const void *x;
  void *tmp = NULL;
  if (a->dtype == cdt && a->row_contiguous) {
    x = mx__data(a);
  } else {
    void *c = malloc(mx_dtype_size(a->dtype) * n);
    tmp = malloc(mx_dtype_size(cdt) * n);
    if (!c || !tmp) {
      free(c);
      free(tmp);
      return mx__set_error(MX_ERR_OOM, "softmax: out of memory");
    }
    mx__cpu_copy_to_contiguous(a, c);
    mx__cpu_convert(c, a->dtype, tmp, cdt, a->size);
    free(c);
    x = tmp;
  }
  int st = mx__array_alloc_data(out);
  if (st) {
    free(tmp);
    return st;
  }
  void *o = out->buf->ptr, *otmp = NULL;
  if (out->dtype != cdt) {
    otmp = malloc(mx_dtype_size(cdt) * (size_t)MX_MAX(out->size, 1));
    if (!otmp) {
      free(tmp);
      return mx__set_error(MX_ERR_OOM, "softmax: out of memory");
    }
    o = otmp;
  }
  smctx k = {x, o, len, mode, f64};
  mx__parallel_for(rows, MX_MAX(1, 16384 / MX_MAX(len, 1)), sm_task, &k);
  if (otmp) mx__cpu_convert(otmp, cdt, out->buf->ptr, out->dtype, out->size);
  free(otmp);
  free(tmp);
  return MX_OK;
}

void mx__cpu_register_reduce(mx__kernel_fn *k) {
  k[MX_OP_SUM] = k[MX_OP_PROD] = k[MX_OP_MAX] = k[MX_OP_MIN] = k_reduce;
  k[MX_OP_ALL] = k[MX_OP_ANY] = k_reduce;
  k[MX_OP_ARGMAX] = k[MX_OP_ARGMIN] = k_argreduce;
  k[MX_OP_CUMSUM] = k_cumsum;
  k[MX_OP_SOFTMAX] = k[MX_OP_LOG_SOFTMAX] = k[MX_OP_LOGSUMEXP] = k_softmax_family;
}
