/* fast.c (cpu) — fused kernels of rms_norm, layer_norm, rope and
 * scaled_dot_product_attention, and of the fused attention backward
 * (sdpa_logsumexp, sdpa_backward_q, sdpa_backward_kv).
 *
 * f16/bf16/f32 compute in float32 (accumulations too), f64 in float64.
 * Inputs may be strided (rows are gathered into a float scratch row when
 * they are not contiguous float32). Each output row is computed by one
 * thread in a fixed order, so results do not depend on the thread count.
 *
 * Attention is computed in blocks (flash-attention style): for a block of
 * query rows, scores against a block of keys, an online softmax (running
 * max and sum), and the probability-weighted values accumulated in f32;
 * the (Tq, Tk) score matrix is never materialised. Inner loops use GNU C
 * vector types so they vectorise on any target. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "gemm_bf16.h"
#include "ops/fast_params.h"
#include "types.h"

/* Vector helpers are static inline: their ABI never crosses a call
 * boundary, so GCC's note about AVX vector returns without AVX is moot. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p) {
  v8f v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline float hsum8(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* ---- row loads and stores ------------------------------------------------ */

/* n elements of dtype dt at p (element stride st) as float32 into dst. */
static void load_f32(const void *p, mx_dtype dt, int64_t st, int64_t n, float *dst) {
  switch (dt) {
    case MX_FLOAT32: {
      const float *a = p;
      if (st == 1) memcpy(dst, a, sizeof(float) * (size_t)n);
      else for (int64_t i = 0; i < n; i++) dst[i] = a[i * st];
      break;
    }
    case MX_FLOAT16: {
      const uint16_t *a = p;
      for (int64_t i = 0; i < n; i++) dst[i] = mx__f16_to_f32(a[i * st]);
      break;
    }
    case MX_BFLOAT16: {
      const uint16_t *a = p;
      for (int64_t i = 0; i < n; i++) dst[i] = mx__bf16_to_f32(a[i * st]);
      break;
    }
    case MX_FLOAT64: {
      const double *a = p;
      for (int64_t i = 0; i < n; i++) dst[i] = (float)a[i * st];
      break;
    }
    default: MX_ASSERT(!"fast: unexpected dtype");
  }
}

/* n elements of a float dtype at p (stride st) as float64 into dst. */
static void load_f64(const void *p, mx_dtype dt, int64_t st, int64_t n, double *dst) {
  if (dt == MX_FLOAT64) {
    const double *a = p;
    for (int64_t i = 0; i < n; i++) dst[i] = a[i * st];
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float f;
    load_f32((const char *)p + i * st * (int64_t)mx_dtype_size(dt), dt, 1, 1, &f);
    dst[i] = f;
  }
}

/* A row of a float array as float32: the data itself when it is
 * contiguous float32, else a converted copy in scratch. */
static const float *row_f32(const mx_array *a, int64_t off, int64_t st, int64_t n,
                            float *scratch) {
  const char *p = (const char *)mx__data(a) + off * (int64_t)mx_dtype_size(a->dtype);
  if (a->dtype == MX_FLOAT32 && st == 1) return (const float *)p;
  load_f32(p, a->dtype, st, n, scratch);
  return scratch;
}

/* Element offset of row r of a, rows running over the first nlead axes. */
static int64_t row_offset(const mx_array *a, int nlead, int64_t r) {
  int64_t off = 0;
  for (int d = nlead - 1; d >= 0; d--) {
    int64_t i = r % a->shape[d];
    r /= a->shape[d];
    off += i * a->strides[d];
  }
  return off;
}

/* Convert a float32 row to the output dtype (contiguous). */
static void store_f32(void *dst, mx_dtype dt, const float *src, int64_t n) {
  if (dt == MX_FLOAT32) {
    if (dst != src) memcpy(dst, src, sizeof(float) * (size_t)n);
    return;
  }
  mx__cpu_convert(src, MX_FLOAT32, dst, dt, n);
}

/* A 1-d parameter (weight/bias) as float32 / float64, contiguous. */
static float *param_f32(const mx_array *a, int64_t n) {
  float *r = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (r) load_f32(mx__data(a), a->dtype, a->strides[0], n, r);
  return r;
}
static double *param_f64(const mx_array *a, int64_t n) {
  double *r = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (r) load_f64(mx__data(a), a->dtype, a->strides[0], n, r);
  return r;
}

static int oom(const char *op, size_t bytes) {
  return mx__set_error(MX_ERR_OOM, "%s: cannot allocate %zu bytes of scratch", op, bytes);
}

/* ---- vector reductions ------------------------------------------------------ */
static float sum_f32(const float *x, int64_t n) {
  v8f a0 = {0}, a1 = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 += ld8(x + i);
    a1 += ld8(x + i + 8);
  }
  float s = hsum8(a0 + a1);
  for (; i < n; i++) s += x[i];
  return s;
}
/* sum (x - c)^2 */
static float sumsq_f32(const float *x, int64_t n, float c) {
  v8f a0 = {0}, a1 = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v8f d0 = ld8(x + i) - c, d1 = ld8(x + i + 8) - c;
    a0 += d0 * d0;
    a1 += d1 * d1;
  }
  float s = hsum8(a0 + a1);
  for (; i < n; i++) s += (x[i] - c) * (x[i] - c);
  return s;
}

/* ======================================================================
 * rms_norm / layer_norm: one row (the last axis) at a time
 * ====================================================================== */
typedef struct {
  mx_array *out, *x;
  bool layer;             /* layer_norm (centre, bias) or rms_norm */
  double eps;
  int64_t D;
  const float *w, *b;     /* float32 weight/bias (NULL: none) */
  const double *w64, *b64;
  int failed;
} norm_ctx;

static void norm_rows_f32(void *c_, int64_t r0, int64_t r1) {
  norm_ctx *c = c_;
  int64_t D = c->D, st = c->x->strides[c->x->ndim - 1];
  int nlead = c->x->ndim - 1;
  mx_dtype odt = c->out->dtype;
  float *buf = malloc(sizeof(float) * (size_t)(2 * D + 1));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *ybuf = buf + D;
  const float *w = c->w, *b = c->b;
  float eps = (float)c->eps;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = row_f32(c->x, row_offset(c->x, nlead, r), st, D, buf);
    float *y = odt == MX_FLOAT32 ? (float *)mx__data(c->out) + r * D : ybuf;
    float mu = 0;
    if (c->layer) mu = sum_f32(x, D) / (float)D;
    float n = 1.0f / sqrtf(sumsq_f32(x, D, mu) / (float)D + eps);
    if (w && b) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mu) * n * w[i] + b[i];
    else if (w) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mu) * n * w[i];
    else if (b) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mu) * n + b[i];
    else for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mu) * n;
    if (y == ybuf)
      store_f32((char *)mx__data(c->out) + r * D * (int64_t)mx_dtype_size(odt), odt, y, D);
  }
  free(buf);
}

static void norm_rows_f64(void *c_, int64_t r0, int64_t r1) {
  norm_ctx *c = c_;
  int64_t D = c->D, st = c->x->strides[c->x->ndim - 1];
  int nlead = c->x->ndim - 1;
  const double *w = c->w64, *b = c->b64;
  for (int64_t r = r0; r < r1; r++) {
    const double *x = (const double *)mx__data(c->x) + row_offset(c->x, nlead, r);
    double *y = (double *)mx__data(c->out) + r * D;
    double mu = 0, ss = 0;
    if (c->layer) {
      for (int64_t i = 0; i < D; i++) mu += x[i * st];
      mu /= (double)D;
    }
    for (int64_t i = 0; i < D; i++) ss += (x[i * st] - mu) * (x[i * st] - mu);
    double n = 1.0 / sqrt(ss / (double)D + c->eps);
    for (int64_t i = 0; i < D; i++) {
      double v = (x[i * st] - mu) * n;
      if (w) v *= w[i];
      if (b) v += b[i];
      y[i] = v;
    }
  }
}

static int norm_kernel(mx_array *out, mx_array **in, bool layer, double eps, mx_array *w,
                       mx_array *b) {
  int s = mx__array_alloc_data(out);
  if (s) return s;
  mx_array *x = in[0];
  norm_ctx c = {.out = out, .x = x, .layer = layer, .eps = eps, .D = x->shape[x->ndim - 1]};
  if (out->size == 0) return MX_OK;
  int64_t rows = out->size / c.D;
  int64_t grain = MX_MAX(1, 16384 / c.D);
  const char *op = layer ? "layer_norm" : "rms_norm";
  if (x->dtype == MX_FLOAT64) {
    double *w64 = w ? param_f64(w, c.D) : NULL, *b64 = b ? param_f64(b, c.D) : NULL;
    if ((w && !w64) || (b && !b64)) s = oom(op, sizeof(double) * (size_t)c.D);
    c.w64 = w64;
    c.b64 = b64;
    if (!s) mx__parallel_for(rows, grain, norm_rows_f64, &c);
    free(w64);
    free(b64);
  } else {
    float *w32 = w ? param_f32(w, c.D) : NULL, *b32 = b ? param_f32(b, c.D) : NULL;
    if ((w && !w32) || (b && !b32)) s = oom(op, sizeof(float) * (size_t)c.D);
    c.w = w32;
    c.b = b32;
    if (!s) mx__parallel_for(rows, grain, norm_rows_f32, &c);
    if (!s && c.failed) s = oom(op, sizeof(float) * 2 * (size_t)c.D);
    free(w32);
    free(b32);
  }
  return s;
}

static int k_rms_norm(mx_array *out, mx_array **in) {
  const mx__rms_norm_params *p = MX__PARAMS(out, mx__rms_norm_params);
  return norm_kernel(out, in, false, p->eps, p->has_weight ? in[1] : NULL, NULL);
}

/* rms_norm_backward (src/ops/fast_params.h): one row at a time */
typedef struct {
  mx_array *out, *x, *g, *r; /* r: added to dx (has_resid), or NULL */
  int which;
  double eps;
  int64_t D;
  const float *w;
  const double *w64;
  int failed;
} rms_grad_ctx;

static void rms_grad_rows_f32(void *c_, int64_t r0, int64_t r1) {
  rms_grad_ctx *c = c_;
  int64_t D = c->D, xs = c->x->strides[c->x->ndim - 1], gs = c->g->strides[c->g->ndim - 1];
  int nlead = c->x->ndim - 1;
  mx_dtype odt = c->out->dtype;
  float *buf = malloc(sizeof(float) * (size_t)(4 * D + 1));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *gbuf = buf + D, *ybuf = buf + 2 * D, *rbuf = buf + 3 * D;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = row_f32(c->x, row_offset(c->x, nlead, r), xs, D, buf);
    const float *g = row_f32(c->g, row_offset(c->g, nlead, r), gs, D, gbuf);
    float *y = odt == MX_FLOAT32 ? (float *)mx__data(c->out) + r * D : ybuf;
    float ss = 0, m = 0;
    for (int64_t i = 0; i < D; i++) {
      float gw = c->w ? g[i] * c->w[i] : g[i];
      ss += x[i] * x[i];
      m += gw * x[i];
    }
    float n = 1.0f / sqrtf(ss / (float)D + (float)c->eps);
    m /= (float)D;
    if (c->which == 1) {
      for (int64_t i = 0; i < D; i++) y[i] = g[i] * x[i] * n;
    } else {
      float n3m = n * n * n * m;
      for (int64_t i = 0; i < D; i++) y[i] = n * (c->w ? g[i] * c->w[i] : g[i]) - x[i] * n3m;
      if (c->r) {
        const float *rr = row_f32(c->r, row_offset(c->r, nlead, r),
                                  c->r->strides[c->r->ndim - 1], D, rbuf);
        for (int64_t i = 0; i < D; i++) y[i] += rr[i];
      }
    }
    if (y == ybuf)
      store_f32((char *)mx__data(c->out) + r * D * (int64_t)mx_dtype_size(odt), odt, y, D);
  }
  free(buf);
}

static void rms_grad_rows_f64(void *c_, int64_t r0, int64_t r1) {
  rms_grad_ctx *c = c_;
  int64_t D = c->D, xs = c->x->strides[c->x->ndim - 1], gs = c->g->strides[c->g->ndim - 1];
  int nlead = c->x->ndim - 1;
  for (int64_t r = r0; r < r1; r++) {
    const double *x = (const double *)mx__data(c->x) + row_offset(c->x, nlead, r);
    const double *g = (const double *)mx__data(c->g) + row_offset(c->g, nlead, r);
    double *y = (double *)mx__data(c->out) + r * D;
    double ss = 0, m = 0;
    for (int64_t i = 0; i < D; i++) {
      double gw = c->w64 ? g[i * gs] * c->w64[i] : g[i * gs];
      ss += x[i * xs] * x[i * xs];
      m += gw * x[i * xs];
    }
    double n = 1.0 / sqrt(ss / (double)D + c->eps);
    m /= (double)D;
    const double *rr = c->r ? (const double *)mx__data(c->r) + row_offset(c->r, nlead, r) : NULL;
    const int64_t rs = c->r ? c->r->strides[c->r->ndim - 1] : 0;
    for (int64_t i = 0; i < D; i++) {
      double gi = g[i * gs], xi = x[i * xs];
      y[i] = c->which == 1 ? gi * xi * n
                           : n * (c->w64 ? gi * c->w64[i] : gi) - xi * n * n * n * m;
      if (rr) y[i] += rr[i * rs];
    }
  }
}

/* which 2 (the weight gradient): rows in fixed chunks (at most 256, by the
 * row count only), each chunk's sum of g x n per column in float64, then
 * the chunks added in order — the same result for any thread count. */
typedef struct {
  const mx_array *x, *g;
  double eps, *part;
  int64_t D, rows, chunk;
  int failed;
} rms_dw_ctx;

static void rms_dw_chunks(void *c_, int64_t k0, int64_t k1) {
  rms_dw_ctx *c = c_;
  const int64_t D = c->D, xs = c->x->strides[c->x->ndim - 1], gs = c->g->strides[c->g->ndim - 1];
  const int nlead = c->x->ndim - 1;
  const bool f64 = c->x->dtype == MX_FLOAT64;
  float *buf = f64 ? NULL : malloc(sizeof(float) * (size_t)(2 * D + 1));
  if (!f64 && !buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t k = k0; k < k1; k++) {
    double *acc = c->part + k * D;
    for (int64_t i = 0; i < D; i++) acc[i] = 0;
    const int64_t r1 = MX_MIN(c->rows, (k + 1) * c->chunk);
    for (int64_t r = k * c->chunk; r < r1; r++) {
      if (f64) {
        const double *x = (const double *)mx__data(c->x) + row_offset(c->x, nlead, r);
        const double *g = (const double *)mx__data(c->g) + row_offset(c->g, nlead, r);
        double ss = 0;
        for (int64_t i = 0; i < D; i++) ss += x[i * xs] * x[i * xs];
        double n = 1.0 / sqrt(ss / (double)D + c->eps);
        for (int64_t i = 0; i < D; i++) acc[i] += g[i * gs] * x[i * xs] * n;
      } else {
        const float *x = row_f32(c->x, row_offset(c->x, nlead, r), xs, D, buf);
        const float *g = row_f32(c->g, row_offset(c->g, nlead, r), gs, D, buf + D);
        float ss = 0;
        for (int64_t i = 0; i < D; i++) ss += x[i] * x[i];
        float n = 1.0f / sqrtf(ss / (float)D + (float)c->eps);
        for (int64_t i = 0; i < D; i++) acc[i] += (double)(g[i] * x[i] * n);
      }
    }
  }
  free(buf);
}

/* dw (D values of dtype odt) at dst */
static int rms_norm_dw(void *dst, mx_dtype odt, int64_t D, mx_array *x, mx_array *g,
                       double eps) {
  const int64_t rows = D ? x->size / D : 0;
  const int64_t chunk = MX_MAX(64, (rows + 255) / 256), nk = (rows + chunk - 1) / chunk;
  rms_dw_ctx c = {.x = x, .g = g, .eps = eps, .D = D, .rows = rows, .chunk = chunk};
  c.part = malloc(sizeof(double) * (size_t)MX_MAX(1, MX_MAX(nk, 1) * D)); /* row 0: the sums */
  if (!c.part) return oom("rms_norm_backward", sizeof(double) * (size_t)(nk * D));
  mx__parallel_for(nk, 1, rms_dw_chunks, &c);
  if (!c.failed) { /* the chunks' sums into chunk 0's row, then converted */
    for (int64_t i = 0; i < D; i++) {
      double t = 0;
      for (int64_t k = 0; k < nk; k++) t += c.part[k * D + i];
      c.part[i] = t;
    }
    if (odt == MX_BFLOAT16 || odt == MX_FLOAT16) { /* via float32: the compute type's bits */
      float *f = malloc(sizeof(float) * (size_t)MX_MAX(D, 1));
      if (!f) c.failed = 1;
      for (int64_t i = 0; f && i < D; i++) f[i] = (float)c.part[i];
      if (f) mx__cpu_convert(f, MX_FLOAT32, dst, odt, D);
      free(f);
    } else {
      mx__cpu_convert(c.part, MX_FLOAT64, dst, odt, D);
    }
  }
  free(c.part);
  return c.failed ? oom("rms_norm_backward", sizeof(float) * 2 * (size_t)D) : MX_OK;
}

static int k_rms_norm_grad(mx_array *out, mx_array **in) {
  const mx__rms_norm_grad_params *p = MX__PARAMS(out, mx__rms_norm_grad_params);
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  /* which 3 and 4 (dx that leaves dw's partial sums, and their sum): the
   * CPU leaves none, so they are which 0 and which 2 */
  if (p->which == 2 || p->which == 4)
    return rms_norm_dw(mx__data(out), out->dtype, out->size, in[0], in[1], p->eps);
  mx_array *x = in[0], *w = p->has_weight ? in[2] : NULL;
  const int which = p->which == 3 ? 0 : p->which;
  mx_array *rr = which == 0 && p->has_resid ? in[p->has_weight ? 3 : 2] : NULL;
  rms_grad_ctx c = {.out = out, .x = x, .g = in[1], .r = rr, .which = which, .eps = p->eps,
                    .D = x->shape[x->ndim - 1]};
  int64_t rows = out->size / c.D, grain = MX_MAX(1, 16384 / c.D);
  if (x->dtype == MX_FLOAT64) {
    double *w64 = w ? param_f64(w, c.D) : NULL;
    if (w && !w64) return oom("rms_norm_backward", sizeof(double) * (size_t)c.D);
    c.w64 = w64;
    mx__parallel_for(rows, grain, rms_grad_rows_f64, &c);
    free(w64);
    return MX_OK;
  }
  float *w32 = w ? param_f32(w, c.D) : NULL;
  if (w && !w32) return oom("rms_norm_backward", sizeof(float) * (size_t)c.D);
  c.w = w32;
  mx__parallel_for(rows, grain, rms_grad_rows_f32, &c);
  free(w32);
  return c.failed ? oom("rms_norm_backward", sizeof(float) * 3 * (size_t)c.D) : MX_OK;
}

static int k_layer_norm(mx_array *out, mx_array **in) {
  const mx__layer_norm_params *p = MX__PARAMS(out, mx__layer_norm_params);
  mx_array *w = p->has_weight ? in[1] : NULL;
  mx_array *b = p->has_bias ? in[p->has_weight ? 2 : 1] : NULL;
  return norm_kernel(out, in, true, p->eps, w, b);
}

/* ======================================================================
 * rope
 * ====================================================================== */

/* cos/sin table (T, half): theta = (offset + t) * scale * inv_freq[i].
 * Per frequency, exact sin/cos (float64) every ROPE_SEED positions and
 * angle-addition steps in between, which is accurate to ~1e-15 and avoids
 * a sin/cos per table entry. */
#define ROPE_SEED 16
typedef struct {
  const double *inv; /* (half) */
  double offset, scale;
  int64_t T;
  int half;
  bool f64, forward;
  float *c32, *s32;
  double *c64, *s64;
} rope_table_ctx;

static void rope_table_rows(void *c_, int64_t b0, int64_t b1) {
  const rope_table_ctx *c = c_;
  int h = c->half;
  double sgn = c->forward ? 1.0 : -1.0;
  for (int64_t blk = b0; blk < b1; blk++) {
    int64_t t0 = blk * ROPE_SEED, t1 = MX_MIN(c->T, t0 + ROPE_SEED);
    for (int i = 0; i < h; i++) {
      double step = c->scale * c->inv[i];
      double th = (c->offset + (double)t0) * step;
      double cs = cos(th), sn = sin(th), dc = cos(step), ds = sin(step);
      for (int64_t t = t0; t < t1; t++) {
        int64_t k = t * h + i;
        if (c->f64) {
          c->c64[k] = cs;
          c->s64[k] = sgn * sn;
        } else {
          c->c32[k] = (float)cs;
          c->s32[k] = (float)(sgn * sn);
        }
        double nc = cs * dc - sn * ds;
        sn = sn * dc + cs * ds;
        cs = nc;
      }
    }
  }
}

typedef struct {
  mx_array *out, *x;
  const mx__rope_params *p;
  int64_t T, D, rows;
  int64_t nh; /* heads (axis -3) when p->rot_heads: rows of later heads are copied */
  const float *c32, *s32;
  const double *c64, *s64;
  int failed;
} rope_ctx;

/* Rotate one row: o = rot(x) over the first dims features, copy the rest. */
static void rope_row_f32(const float *x, float *o, const float *cs, const float *sn, int half,
                         int64_t D, bool trad) {
  int dims = 2 * half;
  if (trad) {
    for (int i = 0; i < half; i++) {
      float a = x[2 * i], b = x[2 * i + 1];
      o[2 * i] = a * cs[i] - b * sn[i];
      o[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  } else {
    for (int i = 0; i < half; i++) {
      float a = x[i], b = x[i + half];
      o[i] = a * cs[i] - b * sn[i];
      o[i + half] = a * sn[i] + b * cs[i];
    }
  }
  for (int64_t i = dims; i < D; i++) o[i] = x[i];
}

static void rope_rows_f32(void *c_, int64_t r0, int64_t r1) {
  rope_ctx *c = c_;
  int64_t D = c->D, T = c->T, st = c->x->strides[c->x->ndim - 1];
  int half = c->p->dims / 2, nlead = c->x->ndim - 1;
  mx_dtype odt = c->out->dtype;
  float *buf = malloc(sizeof(float) * (size_t)(2 * D));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t r = r0; r < r1; r++) {
    int64_t t = r % T;
    const float *x = row_f32(c->x, row_offset(c->x, nlead, r), st, D, buf);
    float *o = odt == MX_FLOAT32 ? (float *)mx__data(c->out) + r * D : buf + D;
    if (c->p->rot_heads && (r / T) % c->nh >= c->p->rot_heads)
      memmove(o, x, sizeof(float) * (size_t)D);
    else
      rope_row_f32(x, o, c->c32 + t * half, c->s32 + t * half, half, D, c->p->traditional);
    if (o == buf + D)
      store_f32((char *)mx__data(c->out) + r * D * (int64_t)mx_dtype_size(odt), odt, o, D);
  }
  free(buf);
}

static void rope_rows_f64(void *c_, int64_t r0, int64_t r1) {
  rope_ctx *c = c_;
  int64_t D = c->D, T = c->T, st = c->x->strides[c->x->ndim - 1];
  int half = c->p->dims / 2, nlead = c->x->ndim - 1;
  bool trad = c->p->traditional;
  for (int64_t r = r0; r < r1; r++) {
    int64_t t = r % T;
    const double *x = (const double *)mx__data(c->x) + row_offset(c->x, nlead, r);
    double *o = (double *)mx__data(c->out) + r * D;
    const double *cs = c->c64 + t * half, *sn = c->s64 + t * half;
    if (c->p->rot_heads && (r / T) % c->nh >= c->p->rot_heads) {
      for (int64_t i = 0; i < D; i++) o[i] = x[i * st];
      continue;
    }
    for (int i = 0; i < half; i++) {
      int64_t ia = trad ? 2 * i : i, ib = trad ? 2 * i + 1 : i + half;
      double a = x[ia * st], b = x[ib * st];
      o[ia] = a * cs[i] - b * sn[i];
      o[ib] = a * sn[i] + b * cs[i];
    }
    for (int64_t i = 2 * half; i < D; i++) o[i] = x[i * st];
  }
}

static int k_rope(mx_array *out, mx_array **in) {
  const mx__rope_params *p = MX__PARAMS(out, mx__rope_params);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  if (out->size == 0) return MX_OK;
  mx_array *x = in[0];
  int half = p->dims / 2;
  int64_t T = x->shape[x->ndim - 2], D = x->shape[x->ndim - 1];
  bool f64 = x->dtype == MX_FLOAT64;
  size_t esz = f64 ? sizeof(double) : sizeof(float);
  size_t tbytes = (size_t)(T * half) * esz;
  /* the tables come from the buffer cache: no page faults on every call */
  double *inv = malloc(sizeof(double) * (size_t)half);
  mx__buffer *tb = mx__buffer_new(2 * tbytes, 0);
  if (!inv || !tb) {
    free(inv);
    if (tb) mx__buffer_release(tb);
    return tb ? oom("rope", sizeof(double) * (size_t)half) : mx_last_status();
  }
  void *tc = tb->ptr, *ts = (char *)tb->ptr + tbytes;
  if (p->has_freqs) {
    load_f64(mx__data(in[1]), in[1]->dtype, in[1]->strides[0], half, inv);
    for (int i = 0; i < half; i++) inv[i] = 1.0 / inv[i];
  } else {
    double lb = log(p->base) / half;
    for (int i = 0; i < half; i++) inv[i] = exp(-(double)i * lb);
  }
  double offset = (double)p->offset;
  if (p->has_pos) offset += (double)*(const int32_t *)mx__data(in[p->has_freqs ? 2 : 1]);
  rope_table_ctx tcx = {.inv = inv, .offset = offset, .scale = p->scale, .T = T,
                        .half = half, .f64 = f64, .forward = p->forward,
                        .c32 = tc, .s32 = ts, .c64 = tc, .s64 = ts};
  int64_t nblk = (T + ROPE_SEED - 1) / ROPE_SEED;
  mx__parallel_for(nblk, MX_MAX(1, 4096 / (ROPE_SEED * half)), rope_table_rows, &tcx);
  rope_ctx c = {.out = out, .x = x, .p = p, .T = T, .D = D, .rows = out->size / D,
                .nh = x->ndim >= 3 ? x->shape[x->ndim - 3] : 1,
                .c32 = tc, .s32 = ts, .c64 = tc, .s64 = ts};
  int64_t grain = MX_MAX(1, 16384 / D);
  mx__parallel_for(c.rows, grain, f64 ? rope_rows_f64 : rope_rows_f32, &c);
  if (c.failed) s = oom("rope", sizeof(float) * 2 * (size_t)D);
  free(inv);
  mx__buffer_release(tb);
  return s;
}

/* ======================================================================
 * scaled_dot_product_attention
 * ====================================================================== */

/* ---- float32 vector helpers for the online softmax ------------------------- */
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
/* m ? a : b per lane (m from a vector comparison: all ones or zero) */
static inline v8f vsel(v8i m, v8f a, v8f b) { return (v8f)((m & (v8i)a) | (~m & (v8i)b)); }

/* exp(x) for x <= 0 (softmax arguments), 8 lanes: Cody-Waite reduction
 * x = n ln2 + r, |r| <= ln2/2, and a degree-6 polynomial for e^r (the
 * Cephes expf coefficients, ~1 ulp). Below -87 (and -inf) the result is 0;
 * NaN propagates. */
static inline v8f exp_neg8(v8f x) {
  const v8f lo = splat(-87.0f), zero = splat(0.0f);
  v8f xc = vsel(x > lo, x, lo); /* NaN -> lo, so the int conversion is defined */
  xc = vsel(xc < zero, xc, zero);
  const v8f magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
  v8f n = (xc * splat(1.44269504088896341f) + magic) - magic;
  v8f r = xc - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  v8i e = (__builtin_convertvector(n, v8i) + 127) << 23; /* 2^n, n in [-126, 0] */
  v8f y = p * (v8f)e;
  y = vsel(x < lo, zero, y);
  return vsel(x != x, x, y);
}

/* Largest of s[0..n) (NaN skipped); -inf when n == 0. */
static float row_max(const float *s, int64_t n) {
  v8f m = splat(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f v = ld8(s + i);
    m = vsel(v > m, v, m);
  }
  float r = -INFINITY;
  for (int k = 0; k < 8; k++) r = m[k] > r ? m[k] : r;
  for (; i < n; i++) r = s[i] > r ? s[i] : r;
  return r;
}

/* s[j] = exp(s[j] - m) for j < n; returns their sum. */
static float row_exp_sum(float *s, int64_t n, float m) {
  v8f acc = splat(0.0f), mv = splat(m);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f e = exp_neg8(ld8(s + i) - mv);
    st8(s + i, e);
    acc += e;
  }
  if (i < n) { /* tail padded with -inf, whose exp is 0 */
    v8f t = splat(-INFINITY);
    memcpy(&t, s + i, sizeof(float) * (size_t)(n - i));
    v8f e = exp_neg8(t - mv);
    memcpy(s + i, &e, sizeof(float) * (size_t)(n - i));
    acc += e;
  }
  return hsum8(acc);
}

/* Block sizes: query rows per task, keys per step. */
#define SDPA_BQ 16
#define SDPA_BK 128

/* S[i][j] = q_i . k_j for nq query rows (stride D) and nk keys (stride ldk). */
static void qk_block(const float *Q, int64_t nq, int64_t D, const float *K, int64_t ldk,
                     int64_t nk, float *S, int64_t lds) {
  int64_t D8 = D & ~(int64_t)7;
  int64_t i = 0;
  for (; i + 4 <= nq; i += 4) {
    const float *q0 = Q + i * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
    int64_t j = 0;
    for (; j + 2 <= nk; j += 2) {
      const float *k0 = K + j * ldk, *k1 = k0 + ldk;
      v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
      for (int64_t d = 0; d < D8; d += 8) {
        v8f kv0 = ld8(k0 + d), kv1 = ld8(k1 + d), qv;
        qv = ld8(q0 + d); a00 += qv * kv0; a01 += qv * kv1;
        qv = ld8(q1 + d); a10 += qv * kv0; a11 += qv * kv1;
        qv = ld8(q2 + d); a20 += qv * kv0; a21 += qv * kv1;
        qv = ld8(q3 + d); a30 += qv * kv0; a31 += qv * kv1;
      }
      float s00 = hsum8(a00), s01 = hsum8(a01), s10 = hsum8(a10), s11 = hsum8(a11);
      float s20 = hsum8(a20), s21 = hsum8(a21), s30 = hsum8(a30), s31 = hsum8(a31);
      for (int64_t d = D8; d < D; d++) {
        s00 += q0[d] * k0[d]; s01 += q0[d] * k1[d];
        s10 += q1[d] * k0[d]; s11 += q1[d] * k1[d];
        s20 += q2[d] * k0[d]; s21 += q2[d] * k1[d];
        s30 += q3[d] * k0[d]; s31 += q3[d] * k1[d];
      }
      float *s = S + i * lds + j;
      s[0] = s00; s[1] = s01;
      s[lds] = s10; s[lds + 1] = s11;
      s[2 * lds] = s20; s[2 * lds + 1] = s21;
      s[3 * lds] = s30; s[3 * lds + 1] = s31;
    }
    for (; j < nk; j++) {
      const float *k0 = K + j * ldk;
      v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t d = 0; d < D8; d += 8) {
        v8f kv = ld8(k0 + d);
        a0 += ld8(q0 + d) * kv; a1 += ld8(q1 + d) * kv;
        a2 += ld8(q2 + d) * kv; a3 += ld8(q3 + d) * kv;
      }
      float s0 = hsum8(a0), s1 = hsum8(a1), s2 = hsum8(a2), s3 = hsum8(a3);
      for (int64_t d = D8; d < D; d++) {
        s0 += q0[d] * k0[d]; s1 += q1[d] * k0[d];
        s2 += q2[d] * k0[d]; s3 += q3[d] * k0[d];
      }
      S[i * lds + j] = s0; S[(i + 1) * lds + j] = s1;
      S[(i + 2) * lds + j] = s2; S[(i + 3) * lds + j] = s3;
    }
  }
  for (; i < nq; i++) { /* remaining rows: one query against 4 keys at a time */
    const float *q0 = Q + i * D;
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) {
      const float *k0 = K + j * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
      v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t d = 0; d < D8; d += 8) {
        v8f qv = ld8(q0 + d);
        a0 += qv * ld8(k0 + d); a1 += qv * ld8(k1 + d);
        a2 += qv * ld8(k2 + d); a3 += qv * ld8(k3 + d);
      }
      float s0 = hsum8(a0), s1 = hsum8(a1), s2 = hsum8(a2), s3 = hsum8(a3);
      for (int64_t d = D8; d < D; d++) {
        s0 += q0[d] * k0[d]; s1 += q0[d] * k1[d];
        s2 += q0[d] * k2[d]; s3 += q0[d] * k3[d];
      }
      float *s = S + i * lds + j;
      s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3;
    }
    for (; j < nk; j++) {
      const float *k0 = K + j * ldk;
      v8f a0 = {0};
      for (int64_t d = 0; d < D8; d += 8) a0 += ld8(q0 + d) * ld8(k0 + d);
      float s0 = hsum8(a0);
      for (int64_t d = D8; d < D; d++) s0 += q0[d] * k0[d];
      S[i * lds + j] = s0;
    }
  }
}

/* O[i] += sum_j P[i][j] v_j for nq rows (P stride lds, O stride ldo).
 * Keys go in chunks of PV_JC so that the value rows of a chunk are read
 * together (sequential memory) while the accumulators stay in registers. */
#define PV_JC 8
static void pv_block(const float *P, int64_t nq, int64_t lds, int64_t nk, const float *V,
                     int64_t ldv, int64_t Dv, float *O, int64_t ldo) {
  for (int64_t j0 = 0; j0 < nk; j0 += PV_JC) {
    int64_t j1 = MX_MIN(nk, j0 + PV_JC);
    int64_t i = 0;
    for (; i + 4 <= nq; i += 4) {
      const float *p0 = P + i * lds, *p1 = p0 + lds, *p2 = p1 + lds, *p3 = p2 + lds;
      float *o0 = O + i * ldo, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
      int64_t d = 0;
      for (; d + 16 <= Dv; d += 16) {
        v8f a00 = ld8(o0 + d), a01 = ld8(o0 + d + 8), a10 = ld8(o1 + d), a11 = ld8(o1 + d + 8);
        v8f a20 = ld8(o2 + d), a21 = ld8(o2 + d + 8), a30 = ld8(o3 + d), a31 = ld8(o3 + d + 8);
        for (int64_t j = j0; j < j1; j++) {
          const float *vj = V + j * ldv + d;
          v8f v0 = ld8(vj), v1 = ld8(vj + 8);
          a00 += p0[j] * v0; a01 += p0[j] * v1;
          a10 += p1[j] * v0; a11 += p1[j] * v1;
          a20 += p2[j] * v0; a21 += p2[j] * v1;
          a30 += p3[j] * v0; a31 += p3[j] * v1;
        }
        st8(o0 + d, a00); st8(o0 + d + 8, a01); st8(o1 + d, a10); st8(o1 + d + 8, a11);
        st8(o2 + d, a20); st8(o2 + d + 8, a21); st8(o3 + d, a30); st8(o3 + d + 8, a31);
      }
      for (; d < Dv; d++) {
        float a0 = o0[d], a1 = o1[d], a2 = o2[d], a3 = o3[d];
        for (int64_t j = j0; j < j1; j++) {
          float vj = V[j * ldv + d];
          a0 += p0[j] * vj; a1 += p1[j] * vj; a2 += p2[j] * vj; a3 += p3[j] * vj;
        }
        o0[d] = a0; o1[d] = a1; o2[d] = a2; o3[d] = a3;
      }
    }
    for (; i < nq; i++) {
      const float *p0 = P + i * lds;
      float *o0 = O + i * ldo;
      int64_t d = 0;
      for (; d + 32 <= Dv; d += 32) {
        v8f a0 = ld8(o0 + d), a1 = ld8(o0 + d + 8), a2 = ld8(o0 + d + 16), a3 = ld8(o0 + d + 24);
        for (int64_t j = j0; j < j1; j++) {
          const float *vj = V + j * ldv + d;
          a0 += p0[j] * ld8(vj); a1 += p0[j] * ld8(vj + 8);
          a2 += p0[j] * ld8(vj + 16); a3 += p0[j] * ld8(vj + 24);
        }
        st8(o0 + d, a0); st8(o0 + d + 8, a1); st8(o0 + d + 16, a2); st8(o0 + d + 24, a3);
      }
      for (; d + 8 <= Dv; d += 8) {
        v8f a0 = ld8(o0 + d);
        for (int64_t j = j0; j < j1; j++) a0 += p0[j] * ld8(V + j * ldv + d);
        st8(o0 + d, a0);
      }
      for (; d < Dv; d++) {
        float a0 = o0[d];
        for (int64_t j = j0; j < j1; j++) a0 += p0[j] * V[j * ldv + d];
        o0[d] = a0;
      }
    }
  }
}

/* Keys or values as float32 rows base + b*sb + h*sh + t*st, contiguous
 * along the feature axis: the input itself (contiguous float32 rows), a
 * converted copy made once (when many row blocks read it), or NULL: each
 * task converts the key block it needs (decoding, where a kv head is read
 * by one or two tasks). */
typedef struct {
  const float *base;
  int64_t sb, sh, st;
  mx__buffer *owned;
} kv_view;

typedef struct {
  const mx_array *a;
  float *dst;
} conv_ctx;

/* Rows [j0, j0 + n) of head (b, h) of a 4-d float array as float32. */
static void load_rows_f32(const mx_array *a, int64_t b, int64_t h, int64_t j0, int64_t n,
                          float *dst) {
  int64_t d = a->shape[3];
  size_t es = mx_dtype_size(a->dtype);
  const char *base =
      (const char *)mx__data(a) + (b * a->strides[0] + h * a->strides[1]) * (int64_t)es;
  for (int64_t j = 0; j < n; j++)
    load_f32(base + (j0 + j) * a->strides[2] * (int64_t)es, a->dtype, a->strides[3], d, dst + j * d);
}

static void conv_heads(void *c_, int64_t r0, int64_t r1) {
  const conv_ctx *c = c_;
  const mx_array *a = c->a;
  int64_t T = a->shape[2], d = a->shape[3];
  for (int64_t r = r0; r < r1; r++)
    load_rows_f32(a, r / a->shape[1], r % a->shape[1], 0, T, c->dst + r * T * d);
}

static int make_kv_view(mx_array *a, bool convert_once, kv_view *v) {
  memset(v, 0, sizeof *v);
  if (a->dtype == MX_FLOAT32 && (a->strides[3] == 1 || a->shape[3] <= 1)) {
    v->base = mx__data(a);
    v->sb = a->strides[0];
    v->sh = a->strides[1];
    v->st = a->strides[2];
    return MX_OK;
  }
  if (!convert_once) return MX_OK;
  v->owned = mx__buffer_new(sizeof(float) * (size_t)(a->size ? a->size : 1), 0);
  if (!v->owned) return mx_last_status();
  conv_ctx c = {a, v->owned->ptr};
  int64_t heads = a->shape[0] * a->shape[1], work = MX_MAX(1, a->shape[2] * a->shape[3]);
  mx__parallel_for(heads, MX_MAX(1, 16384 / work), conv_heads, &c);
  v->base = v->owned->ptr;
  v->st = a->shape[3];
  v->sh = a->shape[2] * v->st;
  v->sb = a->shape[1] * v->sh;
  return MX_OK;
}

typedef struct {
  mx_array *out, *q, *k, *v, *mask;
  const mx__sdpa_params *p;
  int64_t B, Hq, Hkv, G, Tq, Tk, D, Dv, off; /* off = Tk - Tq (causal diagonal) */
  int64_t nblk;                              /* row blocks per (b, kv head) */
  int64_t ms[4];                             /* mask strides broadcast to (B, Hq, Tq, Tk) */
  kv_view kv, vv;
  int failed;
} sdpa_ctx;

/* Mask strides broadcast to 4-d (0 on broadcast axes). */
static void mask_strides(const mx_array *m, const int64_t *full, int64_t *st) {
  for (int d = 0; d < 4; d++) {
    int md = d - (4 - m->ndim);
    st[d] = (md < 0 || (m->shape[md] == 1 && full[d] != 1)) ? 0 : m->strides[md];
  }
}

/* n mask values (stride st) as float32: booleans as 0/1. */
static void load_mask(const void *p, mx_dtype dt, int64_t st, int64_t n, float *dst) {
  if (dt == MX_BOOL) {
    const uint8_t *a = p;
    for (int64_t i = 0; i < n; i++) dst[i] = a[i * st] ? 1.0f : 0.0f;
  } else {
    load_f32(p, dt, st, n, dst);
  }
}

/* One task: SDPA_BQ rows r = t * G + g (query head hk * G + g at position
 * t) of kv head (b, hk) against every key, with an online softmax. */
static void sdpa_tasks_f32(void *c_, int64_t t0, int64_t t1) {
  sdpa_ctx *c = c_;
  const int64_t D = c->D, Dv = c->Dv, G = c->G, Tq = c->Tq, Tk = c->Tk;
  const int kind = c->p->mask_kind;
  const bool causal = c->p->causal;
  const float low = -FLT_MAX;
  size_t nfl = (size_t)(SDPA_BQ * D + SDPA_BQ * SDPA_BK + SDPA_BQ * Dv + 2 * SDPA_BQ + SDPA_BK);
  if (!c->kv.base) nfl += (size_t)(SDPA_BK * D);
  if (!c->vv.base) nfl += (size_t)(SDPA_BK * Dv);
  float *buf = malloc(sizeof(float) * nfl);
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *Qs = buf, *S = Qs + SDPA_BQ * D, *O = S + SDPA_BQ * SDPA_BK, *m = O + SDPA_BQ * Dv;
  float *l = m + SDPA_BQ, *mrow = l + SDPA_BQ, *kbuf = mrow + SDPA_BK;
  float *vbuf = kbuf + (c->kv.base ? 0 : SDPA_BK * D);
  int64_t rt[SDPA_BQ], rh[SDPA_BQ];
  const char *mbase = c->mask ? mx__data(c->mask) : NULL;
  mx_dtype mdt = c->mask ? c->mask->dtype : MX_FLOAT32;
  int64_t mes = (int64_t)mx_dtype_size(mdt);
  mx_dtype odt = c->out->dtype;
  int64_t oes = (int64_t)mx_dtype_size(odt);
  float scale = (float)c->p->scale;
  const int64_t npair = (c->nblk + 1) / 2;
  for (int64_t unit = 2 * t0; unit < 2 * t1; unit++) {
    /* task = (kv head, p) takes row blocks p and nblk-1-p: with a causal
     * mask every task then has the same work, and both read the same keys */
    int64_t task = unit / 2, p = task % npair, bh = task / npair;
    int64_t blk = unit % 2 ? c->nblk - 1 - p : p;
    if (unit % 2 && blk == p) continue;
    int64_t b = bh / c->Hkv, hk = bh % c->Hkv;
    int64_t r0 = blk * SDPA_BQ, nr = MX_MIN(SDPA_BQ, G * Tq - r0);
    for (int64_t i = 0; i < nr; i++) {
      int64_t r = r0 + i;
      rt[i] = r / G;
      rh[i] = hk * G + r % G;
      const mx_array *q = c->q;
      int64_t qoff = b * q->strides[0] + rh[i] * q->strides[1] + rt[i] * q->strides[2];
      const float *qr = row_f32(q, qoff, q->strides[3], D, Qs + i * D);
      for (int64_t d = 0; d < D; d++) Qs[i * D + d] = qr[d] * scale;
      m[i] = -INFINITY;
      l[i] = 0;
    }
    memset(O, 0, sizeof(float) * (size_t)(nr * Dv));
    /* with a causal mask alone, keys past the last row's diagonal add
     * exactly 0 (unless a row has no key at all: then every key counts) */
    int64_t kend = Tk;
    if (causal && kind == MX__SDPA_MASK_NONE && rt[0] + c->off >= 0)
      kend = MX_MIN(Tk, rt[nr - 1] + c->off + 1);
    for (int64_t j0 = 0; j0 < kend; j0 += SDPA_BK) {
      int64_t nk = MX_MIN(SDPA_BK, kend - j0);
      const float *K, *V;
      int64_t ldk, ldv;
      if (c->kv.base) {
        K = c->kv.base + b * c->kv.sb + hk * c->kv.sh + j0 * c->kv.st;
        ldk = c->kv.st;
      } else {
        load_rows_f32(c->k, b, hk, j0, nk, kbuf);
        K = kbuf;
        ldk = D;
      }
      if (c->vv.base) {
        V = c->vv.base + b * c->vv.sb + hk * c->vv.sh + j0 * c->vv.st;
        ldv = c->vv.st;
      } else {
        load_rows_f32(c->v, b, hk, j0, nk, vbuf);
        V = vbuf;
        ldv = Dv;
      }
      if (nr <= 4 && j0 + SDPA_BK < kend) { /* few rows (decoding): memory bound */
        int64_t nn = MX_MIN(SDPA_BK, kend - j0 - SDPA_BK);
        if (c->kv.base)
          for (int64_t j = 0; j < nn; j++)
            for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(K + (SDPA_BK + j) * ldk + d);
        if (c->vv.base)
          for (int64_t j = 0; j < nn; j++)
            for (int64_t d = 0; d < Dv; d += 16) __builtin_prefetch(V + (SDPA_BK + j) * ldv + d);
      }
      qk_block(Qs, nr, D, K, ldk, nk, S, SDPA_BK);
      for (int64_t i = 0; i < nr; i++) {
        float *s = S + i * SDPA_BK;
        if (kind) {
          int64_t moff = b * c->ms[0] + rh[i] * c->ms[1] + rt[i] * c->ms[2] + j0 * c->ms[3];
          load_mask(mbase + moff * mes, mdt, c->ms[3], nk, mrow);
          if (kind == MX__SDPA_MASK_BOOL)
            for (int64_t j = 0; j < nk; j++) s[j] = mrow[j] != 0 ? s[j] : low;
          else
            for (int64_t j = 0; j < nk; j++) s[j] += mrow[j];
        }
        if (causal) {
          int64_t lim = rt[i] + c->off - j0; /* keys j <= lim are kept */
          for (int64_t j = MX_MAX(0, lim + 1); j < nk; j++) s[j] = low;
        }
        float mx = row_max(s, nk);
        float mnew = mx > m[i] ? mx : m[i];
        if (mnew == -INFINITY) { /* every score so far is -inf: weights 0 */
          memset(s, 0, sizeof(float) * (size_t)nk);
          continue;
        }
        float alpha = expf(m[i] - mnew);
        l[i] = l[i] * alpha + row_exp_sum(s, nk, mnew);
        m[i] = mnew;
        if (alpha != 1.0f)
          for (int64_t d = 0; d < Dv; d++) O[i * Dv + d] *= alpha;
      }
      pv_block(S, nr, SDPA_BK, nk, V, ldv, Dv, O, Dv);
    }
    for (int64_t i = 0; i < nr; i++) {
      float *o = O + i * Dv;
      /* l == 0: every score -inf, NaN as softmax gives; Tk == 0: zeros */
      float inv = Tk == 0 ? 0.0f : l[i] == 0 ? NAN : 1.0f / l[i];
      for (int64_t d = 0; d < Dv; d++) o[d] = Tk == 0 ? 0.0f : o[d] * inv;
      int64_t orow = ((b * c->Hq + rh[i]) * Tq + rt[i]) * Dv;
      store_f32((char *)mx__data(c->out) + orow * oes, odt, o, Dv);
    }
  }
  free(buf);
}

/* ---- decode with bf16 q, k and v on the bf16 dot-product instruction ---------
 * One task per kv head; its G * Tq <= 8 query rows (GQA: the query heads
 * sharing it) meet every key in blocks of 16. Scores: q . k on vdpbf16ps
 * (pairs of bf16 products, exact in float32, float32 sums; q is not
 * pre-scaled, so its bf16 values are used as they are and the scale is
 * applied to the score), the 16 per-key partial vectors of a row folded
 * into one vector of 16 scores by a transpose-and-add tree. Then the online
 * softmax of the float path and P V in float32 (the probabilities are not
 * rounded to bf16), with the value rows widened once per block. Reads each
 * key and value once, with no float32 copy of them: decode attention over a
 * long cache becomes bound by memory rather than by conversions. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDPA_DEC_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
#define SDPA_DEC_MAXR 8

/* r[j] = sum of the lanes of a[j], j < 16 */
SDPA_DEC_TARGET static inline __m512 fold16(const __m512 *a) {
  __m512 w[4];
  for (int g = 0; g < 4; g++) {
    const __m512 *v = a + 4 * g;
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
    /* per 128-bit lane: the lane's sums of v0..v3 */
    w[g] = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
  }
  __m512 y01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x44),
                             _mm512_shuffle_f32x4(w[0], w[1], 0xEE));
  __m512 y23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x44),
                             _mm512_shuffle_f32x4(w[2], w[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y01, y23, 0x88),
                       _mm512_shuffle_f32x4(y01, y23, 0xDD));
}

/* The task body for head size D (a constant in the instances below, so the
 * per-key loops unroll and their accumulators stay in registers). */
SDPA_DEC_TARGET __attribute__((always_inline)) static inline void sdpa_decode_bf16_body(
    sdpa_ctx *c, int64_t t0, int64_t t1, const int64_t D) {
  const int64_t G = c->G, Tq = c->Tq, Tk = c->Tk, nr = G * Tq;
  const mx_array *q = c->q, *k = c->k, *v = c->v;
  const int64_t nc = D / 32; /* 32-value chunks of a row */
  float scale = (float)c->p->scale;
  float s[SDPA_DEC_MAXR][16], m[SDPA_DEC_MAXR], l[SDPA_DEC_MAXR];
  float O[SDPA_DEC_MAXR * 256], Vf[16 * 256];
  const uint16_t *qr[SDPA_DEC_MAXR];
  int64_t rh[SDPA_DEC_MAXR], rt[SDPA_DEC_MAXR];
  mx_dtype odt = c->out->dtype;
  int64_t oes = (int64_t)mx_dtype_size(odt);
  for (int64_t bh = t0; bh < t1; bh++) {
    int64_t b = bh / c->Hkv, hk = bh % c->Hkv;
    for (int64_t i = 0; i < nr; i++) {
      rt[i] = i / G;
      rh[i] = hk * G + i % G;
      qr[i] = (const uint16_t *)mx__data(q) + b * q->strides[0] + rh[i] * q->strides[1] +
              rt[i] * q->strides[2];
      m[i] = -INFINITY;
      l[i] = 0;
    }
    memset(O, 0, sizeof(float) * (size_t)(nr * D));
    const uint16_t *kb = (const uint16_t *)mx__data(k) + b * k->strides[0] + hk * k->strides[1];
    const uint16_t *vb = (const uint16_t *)mx__data(v) + b * v->strides[0] + hk * v->strides[1];
    const int64_t ldk = k->strides[2], ldv = v->strides[2];
    for (int64_t j0 = 0; j0 < Tk; j0 += 16) {
      int64_t nk = MX_MIN(16, Tk - j0);
      for (int64_t j = 0; j < nk; j += 4) /* the next block's keys and values */
        for (int64_t o = 0; o < D * 2; o += 64) {
          _mm_prefetch((const char *)(kb + (j0 + 16 + j) * ldk) + o, _MM_HINT_T0);
          _mm_prefetch((const char *)(vb + (j0 + 16 + j) * ldv) + o, _MM_HINT_T0);
        }
      for (int64_t i = 0; i < nr; i++) {
        __m512 acc[16];
        for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        for (int64_t ch = 0; ch < nc; ch++) {
          __m512bh qv = (__m512bh)_mm512_loadu_si512(qr[i] + 32 * ch);
          for (int j = 0; j < 16; j++) /* past the end: the last key again, masked below */
            acc[j] = _mm512_dpbf16_ps(
                acc[j],
                (__m512bh)_mm512_loadu_si512(kb + (j0 + MX_MIN(j, nk - 1)) * ldk + 32 * ch), qv);
        }
        __m512 sc = _mm512_mul_ps(fold16(acc), _mm512_set1_ps(scale));
        /* keys past the end: -inf */
        sc = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), (__mmask16)((1u << nk) - 1u), sc);
        _mm512_storeu_ps(s[i], sc);
      }
      /* the block's values, widened once */
      for (int64_t j = 0; j < nk; j++)
        for (int64_t d = 0; d < D; d += 16) {
          __m256i h = _mm256_loadu_si256((const __m256i *)(vb + (j0 + j) * ldv + d));
          _mm512_storeu_ps(Vf + j * D + d,
                           _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
      for (int64_t i = 0; i < nr; i++) {
        float mx = row_max(s[i], nk);
        float mnew = mx > m[i] ? mx : m[i];
        float alpha = expf(m[i] - mnew);
        l[i] = l[i] * alpha + row_exp_sum(s[i], nk, mnew);
        m[i] = mnew;
        float *o = O + i * D;
        __m512 al = _mm512_set1_ps(alpha), a[16]; /* the row in registers: D / 16 chains */
        const int64_t nd = D / 16;
        for (int64_t dd = 0; dd < nd; dd++) a[dd] = _mm512_mul_ps(_mm512_loadu_ps(o + 16 * dd), al);
        for (int64_t j = 0; j < nk; j++) {
          __m512 pj = _mm512_set1_ps(s[i][j]);
          for (int64_t dd = 0; dd < nd; dd++)
            a[dd] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(Vf + j * D + 16 * dd), a[dd]);
        }
        for (int64_t dd = 0; dd < nd; dd++) _mm512_storeu_ps(o + 16 * dd, a[dd]);
      }
    }
    for (int64_t i = 0; i < nr; i++) {
      float *o = O + i * D;
      float inv = Tk == 0 ? 0.0f : 1.0f / l[i];
      for (int64_t d = 0; d < D; d++) o[d] *= inv;
      int64_t orow = ((b * c->Hq + rh[i]) * Tq + rt[i]) * D;
      store_f32((char *)mx__data(c->out) + orow * oes, odt, o, D);
    }
  }
}

SDPA_DEC_TARGET __attribute__((noinline)) static void sdpa_decode_bf16_task(void *c_, int64_t t0,
                                                                           int64_t t1) {
  sdpa_ctx *c = c_;
  switch (c->D) {
    case 64: sdpa_decode_bf16_body(c, t0, t1, 64); break;
    case 128: sdpa_decode_bf16_body(c, t0, t1, 128); break;
    default: sdpa_decode_bf16_body(c, t0, t1, c->D); break;
  }
}

/* Whether sdpa_decode_bf16_task applies: bf16 q, k, v with contiguous rows,
 * D = Dv a multiple of 32 up to 256, at most 8 query rows per kv head, no
 * mask, and causal only for one query (then every key is visible). */
static bool sdpa_decode_bf16_ok(const sdpa_ctx *c) {
  const mx_array *q = c->q, *k = c->k, *v = c->v;
  return q->dtype == MX_BFLOAT16 && k->dtype == MX_BFLOAT16 && v->dtype == MX_BFLOAT16 &&
         q->strides[3] == 1 && k->strides[3] == 1 && v->strides[3] == 1 && c->D == c->Dv &&
         c->D % 32 == 0 && c->D <= 256 && c->G * c->Tq <= SDPA_DEC_MAXR &&
         c->p->mask_kind == MX__SDPA_MASK_NONE && (!c->p->causal || c->Tq == 1) && c->Tk > 0 &&
         mx__cpu_has_bf16_dot();
}
#endif

/* float64: one query row at a time, exact two-pass softmax. */
static void sdpa_rows_f64(void *c_, int64_t r0, int64_t r1) {
  sdpa_ctx *c = c_;
  const int64_t D = c->D, Dv = c->Dv, Tq = c->Tq, Tk = c->Tk;
  const int kind = c->p->mask_kind;
  double *buf = malloc(sizeof(double) * (size_t)(Tk + Dv + D + 1));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  double *s = buf, *o = s + Tk, *qr = o + Dv;
  const mx_array *q = c->q, *k = c->k, *v = c->v;
  const double *qd = mx__data(q), *kd = mx__data(k), *vd = mx__data(v);
  const char *mbase = c->mask ? mx__data(c->mask) : NULL;
  size_t mes = c->mask ? mx_dtype_size(c->mask->dtype) : 1;
  for (int64_t r = r0; r < r1; r++) {
    int64_t t = r % Tq, h = (r / Tq) % c->Hq, b = r / (Tq * c->Hq), hk = h / c->G;
    const double *qp = qd + b * q->strides[0] + h * q->strides[1] + t * q->strides[2];
    for (int64_t d = 0; d < D; d++) qr[d] = qp[d * q->strides[3]] * c->p->scale;
    double mx = -INFINITY;
    for (int64_t j = 0; j < Tk; j++) {
      const double *kp = kd + b * k->strides[0] + hk * k->strides[1] + j * k->strides[2];
      double acc = 0;
      for (int64_t d = 0; d < D; d++) acc += qr[d] * kp[d * k->strides[3]];
      bool keep = !c->p->causal || j <= t + c->off;
      if (kind) {
        const char *mp = mbase + (b * c->ms[0] + h * c->ms[1] + t * c->ms[2] + j * c->ms[3]) *
                                     (int64_t)mes;
        if (kind == MX__SDPA_MASK_BOOL) keep = keep && *(const uint8_t *)mp;
        else acc += *(const double *)mp;
      }
      s[j] = keep ? acc : -DBL_MAX;
      if (s[j] > mx) mx = s[j];
    }
    double sum = 0;
    for (int64_t j = 0; j < Tk; j++) {
      s[j] = exp(s[j] - mx);
      sum += s[j];
    }
    for (int64_t d = 0; d < Dv; d++) o[d] = 0;
    for (int64_t j = 0; j < Tk; j++) {
      const double *vp = vd + b * v->strides[0] + hk * v->strides[1] + j * v->strides[2];
      for (int64_t d = 0; d < Dv; d++) o[d] += s[j] * vp[d * v->strides[3]];
    }
    double *dst = (double *)mx__data(c->out) + r * Dv;
    for (int64_t d = 0; d < Dv; d++) dst[d] = Tk ? o[d] / sum : 0.0;
  }
  free(buf);
}

static int k_sdpa(mx_array *out, mx_array **in) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  int s = mx__array_alloc_data(out);
  if (s) return s;
  if (out->size == 0) return MX_OK;
  mx_array *q = in[0], *k = in[1], *v = in[2];
  sdpa_ctx c = {.out = out, .q = q, .k = k, .v = v, .mask = p->mask_kind ? in[3] : NULL, .p = p,
                .B = q->shape[0], .Hq = q->shape[1], .Hkv = k->shape[1], .Tq = q->shape[2],
                .Tk = k->shape[2], .D = q->shape[3], .Dv = v->shape[3]};
  c.G = c.Hq / c.Hkv;
  if (p->has_len) { /* keys [0, pos + Tq) of a static cache */
    int64_t n = (int64_t)*(const int32_t *)mx__data(in[p->mask_kind ? 4 : 3]) + c.Tq;
    c.Tk = n < 0 ? 0 : n < c.Tk ? n : c.Tk;
  }
  c.off = c.Tk - c.Tq;
  if (c.mask) {
    int64_t full[4] = {c.B, c.Hq, c.Tq, c.Tk};
    mask_strides(c.mask, full, c.ms);
  }
  if (out->dtype == MX_FLOAT64) {
    int64_t rows = c.B * c.Hq * c.Tq;
    int64_t work = MX_MAX(1, c.Tk * (c.D + c.Dv));
    mx__parallel_for(rows, MX_MAX(1, 65536 / work), sdpa_rows_f64, &c);
  } else {
#if defined(__x86_64__) && defined(__GNUC__)
    if (sdpa_decode_bf16_ok(&c)) {
      mx__parallel_for(c.B * c.Hkv, 1, sdpa_decode_bf16_task, &c);
      return MX_OK;
    }
#endif
    c.nblk = (c.G * c.Tq + SDPA_BQ - 1) / SDPA_BQ;
    bool once = c.nblk > 2; /* K/V read by many tasks: convert them once */
    s = make_kv_view(k, once, &c.kv);
    if (!s) s = make_kv_view(v, once, &c.vv);
    if (!s) mx__parallel_for(c.B * c.Hkv * ((c.nblk + 1) / 2), 1, sdpa_tasks_f32, &c);
    if (c.kv.owned) mx__buffer_release(c.kv.owned);
    if (c.vv.owned) mx__buffer_release(c.vv.owned);
  }
  if (!s && c.failed) s = oom("scaled_dot_product_attention", 0);
  return s;
}

/* ======================================================================
 * the fused attention backward: sdpa_logsumexp, sdpa_backward_q and
 * sdpa_backward_kv (semantics in ops/fast_params.h)
 *
 * Flash-attention style: the probabilities are recomputed block by block
 * from q, k and the row log-sum-exps, never stored whole. q, k, v and dout
 * are read as float32 rows (the inputs themselves when they are float32
 * with contiguous rows, else converted copies made once: f16, bf16 and f64
 * compute in float32, as lse and delta are float32 anyway). Tasks: query
 * row blocks of one head (logsumexp, dq) or key blocks of one kv head (dk,
 * dv, summed over the G query heads that share it); each output row is
 * written by one task in a fixed order, so results do not depend on the
 * thread count.
 * ====================================================================== */
#define BWD_BQ 16  /* query rows per task (logsumexp, dq) */
#define BWD_BK 128 /* keys per step (logsumexp, dq) */
#define BWD_KB 32  /* keys per task (dk, dv) */
#define BWD_QB 64  /* query rows per step (dk, dv) */

typedef struct {
  mx_array *out;
  const mx_array *lse, *delta; /* float32 (B, Hq, Tq), any strides */
  kv_view q, k, v, o;          /* float32 rows of q, k, v, dout */
  float scale;
  bool causal;
  int64_t B, Hq, Hkv, G, Tq, Tk, D, Dv, off; /* off = Tk - Tq */
  int64_t nblk;                              /* blocks per head */
  int failed;
} bwd_ctx;

static const float *view_row(const kv_view *w, int64_t b, int64_t h, int64_t t) {
  return w->base + b * w->sb + h * w->sh + t * w->st;
}

/* n float32 values of a (B, Hq, Tq) array at (b, h, t0...). */
static void load_rowvals(const mx_array *a, int64_t b, int64_t h, int64_t t0, int64_t n,
                         float *dst) {
  const float *p = (const float *)mx__data(a) + b * a->strides[0] + h * a->strides[1];
  for (int64_t i = 0; i < n; i++) dst[i] = p[(t0 + i) * a->strides[2]];
}

/* n rows of w for head (b, h) from t0, each times mul, into dst (stride d). */
static void copy_rows(const kv_view *w, int64_t b, int64_t h, int64_t t0, int64_t n, int64_t d,
                      float mul, float *dst) {
  for (int64_t i = 0; i < n; i++) {
    const float *r = view_row(w, b, h, t0 + i);
    if (mul == 1.0f) memcpy(dst + i * d, r, sizeof(float) * (size_t)d);
    else for (int64_t x = 0; x < d; x++) dst[i * d + x] = r[x] * mul;
  }
}

/* s[i] = exp(s[i] - sub[i]) for i < n (arguments <= 0 up to rounding; the
 * polynomial clamps them at 0). */
static void exp_sub(float *s, const float *sub, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) st8(s + i, exp_neg8(ld8(s + i) - ld8(sub + i)));
  for (; i < n; i++) s[i] = exp_neg8(splat(s[i] - sub[i]))[0];
}

/* Keys of [j0, j0 + nk) that row t sees: [j0, j0 + return). */
static int64_t keys_seen(const bwd_ctx *c, int64_t t, int64_t j0, int64_t nk) {
  if (!c->causal) return nk;
  int64_t n = t + c->off - j0 + 1;
  return n < 0 ? 0 : n < nk ? n : nk;
}

/* Task -> (b, h, first row, rows) for the row-block ops. */
static void row_task(const bwd_ctx *c, int64_t task, int64_t *b, int64_t *h, int64_t *t0,
                     int64_t *nr) {
  int64_t bh = task / c->nblk;
  *b = bh / c->Hq;
  *h = bh % c->Hq;
  *t0 = (task % c->nblk) * BWD_BQ;
  *nr = MX_MIN(BWD_BQ, c->Tq - *t0);
}

/* logsumexp: for each row, the online max and sum over key blocks. */
static void lse_tasks(void *c_, int64_t t0, int64_t t1) {
  bwd_ctx *c = c_;
  const int64_t D = c->D;
  float *buf = malloc(sizeof(float) * (size_t)(BWD_BQ * D + BWD_BQ * BWD_BK + BWD_BQ));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *Qs = buf, *S = Qs + BWD_BQ * D, *res = S + BWD_BQ * BWD_BK;
  for (int64_t task = t0; task < t1; task++) {
    int64_t b, h, r0, nr;
    row_task(c, task, &b, &h, &r0, &nr);
    int64_t hk = h / c->G;
    float m[BWD_BQ], l[BWD_BQ];
    copy_rows(&c->q, b, h, r0, nr, D, c->scale, Qs);
    for (int64_t i = 0; i < nr; i++) m[i] = -INFINITY, l[i] = 0;
    int64_t kend = c->causal ? MX_MIN(c->Tk, r0 + nr - 1 + c->off + 1) : c->Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BWD_BK) {
      int64_t nk = MX_MIN(BWD_BK, kend - j0);
      qk_block(Qs, nr, D, view_row(&c->k, b, hk, j0), c->k.st, nk, S, BWD_BK);
      for (int64_t i = 0; i < nr; i++) {
        int64_t n = keys_seen(c, r0 + i, j0, nk);
        if (n == 0) continue;
        float *s = S + i * BWD_BK;
        float mx = row_max(s, n), mnew = mx > m[i] ? mx : m[i];
        if (mnew == -INFINITY) continue;
        l[i] = l[i] * expf(m[i] - mnew) + row_exp_sum(s, n, mnew);
        m[i] = mnew;
      }
    }
    for (int64_t i = 0; i < nr; i++) res[i] = l[i] > 0 ? m[i] + logf(l[i]) : -INFINITY;
    float *dst = (float *)mx__data(c->out) + (b * c->Hq + h) * c->Tq + r0;
    memcpy(dst, res, sizeof(float) * (size_t)nr);
  }
  free(buf);
}

/* dq: per key block, S = (scale q) k^T, P = exp(S - lse), dP = dout v^T,
 * dS = P (dP - delta), dq += dS k; dq *= scale at the end. */
static void dq_tasks(void *c_, int64_t t0, int64_t t1) {
  bwd_ctx *c = c_;
  const int64_t D = c->D, Dv = c->Dv;
  size_t nfl = (size_t)(BWD_BQ * (2 * D + Dv) + 2 * BWD_BQ * BWD_BK);
  float *buf = malloc(sizeof(float) * nfl);
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *Qs = buf, *Os = Qs + BWD_BQ * D, *dQ = Os + BWD_BQ * Dv, *S = dQ + BWD_BQ * D;
  float *dP = S + BWD_BQ * BWD_BK;
  mx_dtype odt = c->out->dtype;
  int64_t oes = (int64_t)mx_dtype_size(odt);
  for (int64_t task = t0; task < t1; task++) {
    int64_t b, h, r0, nr;
    row_task(c, task, &b, &h, &r0, &nr);
    int64_t hk = h / c->G;
    float lse[BWD_BQ], delta[BWD_BQ];
    copy_rows(&c->q, b, h, r0, nr, D, c->scale, Qs);
    copy_rows(&c->o, b, h, r0, nr, Dv, 1.0f, Os);
    load_rowvals(c->lse, b, h, r0, nr, lse);
    load_rowvals(c->delta, b, h, r0, nr, delta);
    memset(dQ, 0, sizeof(float) * (size_t)(nr * D));
    int64_t kend = c->causal ? MX_MIN(c->Tk, r0 + nr - 1 + c->off + 1) : c->Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BWD_BK) {
      int64_t nk = MX_MIN(BWD_BK, kend - j0);
      const float *K = view_row(&c->k, b, hk, j0);
      qk_block(Qs, nr, D, K, c->k.st, nk, S, BWD_BK);
      qk_block(Os, nr, Dv, view_row(&c->v, b, hk, j0), c->v.st, nk, dP, BWD_BK);
      for (int64_t i = 0; i < nr; i++) {
        float *s = S + i * BWD_BK, *dp = dP + i * BWD_BK, sub[BWD_BK];
        int64_t n = keys_seen(c, r0 + i, j0, nk);
        for (int64_t j = 0; j < n; j++) sub[j] = lse[i];
        exp_sub(s, sub, n);
        for (int64_t j = 0; j < n; j++) s[j] *= dp[j] - delta[i];
        for (int64_t j = n; j < nk; j++) s[j] = 0;
      }
      pv_block(S, nr, BWD_BK, nk, K, c->k.st, D, dQ, D);
    }
    for (int64_t i = 0; i < nr; i++) {
      float *dq = dQ + i * D;
      for (int64_t x = 0; x < D; x++) dq[x] *= c->scale;
      int64_t orow = ((b * c->Hq + h) * c->Tq + r0 + i) * D;
      store_f32((char *)mx__data(c->out) + orow * oes, odt, dq, D);
    }
  }
  free(buf);
}

/* dk and dv of a block of keys: for each query head of the group and each
 * block of its rows, S^T = k (scale q)^T, P^T = exp(S^T - lse), dP^T = v
 * dout^T, dS^T = P^T (dP^T - delta); dv += P^T dout, dk += dS^T (scale q). */
static void dkv_tasks(void *c_, int64_t t0, int64_t t1) {
  bwd_ctx *c = c_;
  const int64_t D = c->D, Dv = c->Dv;
  size_t nfl = (size_t)(2 * BWD_KB * (D + Dv) + BWD_QB * (D + Dv) + 2 * BWD_KB * BWD_QB +
                        3 * BWD_QB);
  float *buf = malloc(sizeof(float) * nfl);
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float *Kc = buf, *Vc = Kc + BWD_KB * D, *dK = Vc + BWD_KB * Dv, *dV = dK + BWD_KB * D;
  float *Qs = dV + BWD_KB * Dv, *Os = Qs + BWD_QB * D, *ST = Os + BWD_QB * Dv;
  float *dPT = ST + BWD_KB * BWD_QB, *lse = dPT + BWD_KB * BWD_QB, *delta = lse + BWD_QB;
  float *row = delta + BWD_QB;
  mx_dtype odt = c->out->dtype;
  int64_t oes = (int64_t)mx_dtype_size(odt);
  for (int64_t task = t0; task < t1; task++) {
    int64_t bh = task / c->nblk, b = bh / c->Hkv, hk = bh % c->Hkv;
    int64_t j0 = (task % c->nblk) * BWD_KB, nk = MX_MIN(BWD_KB, c->Tk - j0);
    copy_rows(&c->k, b, hk, j0, nk, D, 1.0f, Kc);
    copy_rows(&c->v, b, hk, j0, nk, Dv, 1.0f, Vc);
    memset(dK, 0, sizeof(float) * (size_t)(nk * D));
    memset(dV, 0, sizeof(float) * (size_t)(nk * Dv));
    /* rows t see key j0 iff t >= j0 - off */
    int64_t tstart = c->causal ? MX_MAX(0, j0 - c->off) : 0;
    for (int64_t g = 0; g < c->G; g++) {
      int64_t h = hk * c->G + g;
      for (int64_t r0 = tstart; r0 < c->Tq; r0 += BWD_QB) {
        int64_t nq = MX_MIN(BWD_QB, c->Tq - r0);
        copy_rows(&c->q, b, h, r0, nq, D, c->scale, Qs);
        copy_rows(&c->o, b, h, r0, nq, Dv, 1.0f, Os);
        load_rowvals(c->lse, b, h, r0, nq, lse);
        load_rowvals(c->delta, b, h, r0, nq, delta);
        qk_block(Kc, nk, D, Qs, D, nq, ST, BWD_QB);
        qk_block(Vc, nk, Dv, Os, Dv, nq, dPT, BWD_QB);
        for (int64_t j = 0; j < nk; j++) {
          float *p = ST + j * BWD_QB, *ds = dPT + j * BWD_QB;
          /* key j0 + j is seen by rows t >= j0 + j - off: i >= i0 */
          int64_t i0 = c->causal ? MX_MIN(nq, MX_MAX(0, j0 + j - c->off - r0)) : 0;
          exp_sub(p + i0, lse + i0, nq - i0);
          for (int64_t i = 0; i < i0; i++) p[i] = 0;
          for (int64_t i = 0; i < nq; i++) row[i] = p[i] * (ds[i] - delta[i]);
          memcpy(ds, row, sizeof(float) * (size_t)nq);
        }
        pv_block(ST, nk, BWD_QB, nq, Os, Dv, Dv, dV, Dv);
        pv_block(dPT, nk, BWD_QB, nq, Qs, D, D, dK, D);
      }
    }
    /* out (2, B, Hkv, Tk, D): [0] dk, [1] dv (Dv == D, see fast_params.h) */
    char *dst = (char *)mx__data(c->out);
    const int64_t half = c->B * c->Hkv * c->Tk * D;
    for (int64_t j = 0; j < nk; j++) {
      int64_t orow = ((b * c->Hkv + hk) * c->Tk + j0 + j) * D;
      store_f32(dst + orow * oes, odt, dK + j * D, D);
      store_f32(dst + (half + orow) * oes, odt, dV + j * Dv, Dv);
    }
  }
  free(buf);
}

static int k_row_dot(mx_array *out, mx_array **in);

/* delta_of_out's rows: row_dot(dout, out) rounded to float32, a new CPU
 * array in *res */
static int delta_rows(mx_array *dout, mx_array *o, mx_array **res) {
  *res = NULL;
  mx_dtype dt = dout->dtype == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32;
  mx_array *d = mx__array_alloc_struct(dt, dout->shape, 3);
  if (!d) return mx_last_status();
  d->device = MX_CPU;
  int s = k_row_dot(d, (mx_array *[]){dout, o});
  if (!s && dt == MX_FLOAT64) {
    mx_array *f = mx__array_alloc_struct(MX_FLOAT32, dout->shape, 3);
    if (f) f->device = MX_CPU;
    s = f ? mx__array_alloc_data(f) : mx_last_status();
    if (!s)
      for (int64_t i = 0; i < f->size; i++)
        ((float *)mx__data(f))[i] = (float)((const double *)mx__data(d))[i];
    mx_array_free(d);
    d = f;
  }
  if (s) mx_array_free(d);
  else *res = d;
  return s;
}

/* rope_dq / rope_dk (fast_params.h): the first (B, H, T, D) block of
 * out (row-contiguous: dq, or [dk, dv]'s dk) replaced by the rope of it,
 * by the rope op's own kernel (out_blhd is only a hint) */
static int rope_part_cpu(mx_array *out, const int64_t *shape, const mx__sdpa_params *p) {
  mx__rope_params rp = {.dims = (int)shape[3], .forward = p->rope_fwd,
                        .base = p->rope_base, .scale = p->rope_scale,
                        .offset = p->rope_offset};
  mx_array *part = mx__array_alloc_struct(out->dtype, shape, 4);
  mx_array *r = mx__array_alloc_struct(out->dtype, shape, 4);
  int s = part && r ? MX_OK : mx_last_status();
  if (!s) {
    int64_t st[4];
    mx__compute_row_strides(shape, 4, st);
    part->device = r->device = MX_CPU;
    mx__array_set_view(part, out, st, 0);
    r->params = &rp;
    r->params_size = sizeof rp;
    s = k_rope(r, (mx_array *[]){part});
    r->params = NULL;
    if (!s)
      memcpy(mx__data(out), mx__data(r), (size_t)r->size * mx_dtype_size(r->dtype));
  }
  mx_array_free(r);
  mx_array_free(part);
  return s;
}

/* One kernel for the three ops: which = MX_OP_SDPA_LSE, _BWD_Q or _BWD_KV. */
static int sdpa_bwd_kernel(mx_array *out, mx_array **in, int which) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  const char *op = mx__op_names[which];
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  mx_array *q = in[0], *k = in[1];
  bool lse_op = which == MX_OP_SDPA_LSE;
  bwd_ctx c = {.out = out, .scale = (float)p->scale, .causal = p->causal, .B = q->shape[0],
               .Hq = q->shape[1], .Hkv = k->shape[1], .Tq = q->shape[2], .Tk = k->shape[2],
               .D = q->shape[3], .Dv = lse_op ? 0 : in[2]->shape[3]};
  c.G = c.Hq / c.Hkv;
  c.off = c.Tk - c.Tq;
  mx_array *dtmp = NULL; /* delta_of_out: the rows from dout and out */
  if (!lse_op) {
    c.lse = in[4];
    c.delta = in[5];
    if (which == MX_OP_SDPA_BWD_Q && p->delta_of_out) {
      if ((s = delta_rows(in[3], in[5], &dtmp))) return s;
      c.delta = dtmp;
    }
  }
  if (which == MX_OP_SDPA_BWD_KV) {
    if (c.Tq == 0) { /* no rows: dk = dv = 0 */
      memset(out->buf->ptr, 0, (size_t)out->size * mx_dtype_size(out->dtype));
      return MX_OK;
    }
  }
  /* a copy of an input is made once, when it is not float32 rows */
  s = make_kv_view(q, true, &c.q);
  if (!s) s = make_kv_view(k, true, &c.k);
  if (!s && !lse_op) s = make_kv_view(in[2], true, &c.v);
  if (!s && !lse_op) s = make_kv_view(in[3], true, &c.o);
  if (!s) {
    if (which == MX_OP_SDPA_BWD_KV) {
      c.nblk = (c.Tk + BWD_KB - 1) / BWD_KB;
      int64_t work = MX_MAX(1, c.G * c.Tq * BWD_KB * (c.D + c.Dv));
      mx__parallel_for(c.B * c.Hkv * c.nblk, MX_MAX(1, 65536 / work), dkv_tasks, &c);
    } else {
      c.nblk = (c.Tq + BWD_BQ - 1) / BWD_BQ;
      int64_t work = MX_MAX(1, c.Tk * BWD_BQ * (c.D + c.Dv));
      mx__parallel_for(c.B * c.Hq * c.nblk, MX_MAX(1, 65536 / work),
                       lse_op ? lse_tasks : dq_tasks, &c);
    }
  }
  kv_view *views[4] = {&c.q, &c.k, &c.v, &c.o};
  for (int i = 0; i < 4; i++)
    if (views[i]->owned) mx__buffer_release(views[i]->owned);
  mx_array_free(dtmp);
  if (!s && c.failed) s = oom(op, 0);
  if (!s && which == MX_OP_SDPA_BWD_Q && p->rope_dq) s = rope_part_cpu(out, out->shape, p);
  if (!s && which == MX_OP_SDPA_BWD_KV && p->rope_dk) s = rope_part_cpu(out, out->shape + 1, p);
  return s;
}

static int k_sdpa_lse(mx_array *out, mx_array **in) {
  return sdpa_bwd_kernel(out, in, MX_OP_SDPA_LSE);
}
static int k_sdpa_bwd_q(mx_array *out, mx_array **in) {
  return sdpa_bwd_kernel(out, in, MX_OP_SDPA_BWD_Q);
}
static int k_sdpa_bwd_kv(mx_array *out, mx_array **in) {
  return sdpa_bwd_kernel(out, in, MX_OP_SDPA_BWD_KV);
}

/* ======================================================================
 * add_rms_norm, rope_kv (internal: a decode step's fused ops; see
 * ops/fast_params.h). Serial: a decode step's rows are few.
 * ====================================================================== */
static int k_add_rms_norm(mx_array *out, mx_array **in) {
  const mx__rms_norm_params *p = MX__PARAMS(out, mx__rms_norm_params);
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  mx_array *x = in[0], *r = in[1], *w = in[2];
  const mx_dtype dt = out->dtype;
  const int nlead = x->ndim - 1;
  const int64_t D = x->shape[nlead], n = x->size, rows = n / D;
  const int64_t xs = x->strides[nlead], rs = r->strides[nlead];
  const size_t es = mx_dtype_size(dt);
  char *oh = mx__data(out), *on = oh + n * (int64_t)es;
  if (dt == MX_FLOAT64) {
    double *w64 = param_f64(w, D);
    if (!w64) return oom("add_rms_norm", sizeof(double) * (size_t)D);
    for (int64_t row = 0; row < rows; row++) {
      const double *xr = (const double *)mx__data(x) + row_offset(x, nlead, row);
      const double *rr = (const double *)mx__data(r) + row_offset(r, nlead, row);
      double *h = (double *)oh + row * D, *y = (double *)on + row * D, ss = 0;
      for (int64_t i = 0; i < D; i++) {
        h[i] = xr[i * xs] + rr[i * rs];
        ss += h[i] * h[i];
      }
      double nn = 1.0 / sqrt(ss / (double)D + p->eps);
      for (int64_t i = 0; i < D; i++) y[i] = h[i] * nn * w64[i];
    }
    free(w64);
    return MX_OK;
  }
  float *buf = malloc(sizeof(float) * (size_t)(4 * D)), *w32 = param_f32(w, D);
  if (!buf || !w32) {
    free(buf);
    free(w32);
    return oom("add_rms_norm", sizeof(float) * 5 * (size_t)D);
  }
  float *xb = buf, *rb = buf + D, *hb = buf + 2 * D, *yb = buf + 3 * D;
  const float eps = (float)p->eps;
  for (int64_t row = 0; row < rows; row++) {
    const float *xf = row_f32(x, row_offset(x, nlead, row), xs, D, xb);
    const float *rf = row_f32(r, row_offset(r, nlead, row), rs, D, rb);
    for (int64_t i = 0; i < D; i++) hb[i] = xf[i] + rf[i];
    char *ho = oh + row * D * (int64_t)es;
    store_f32(ho, dt, hb, D);
    load_f32(ho, dt, 1, D, hb); /* the norm sees h rounded to the dtype */
    float nn = 1.0f / sqrtf(sumsq_f32(hb, D, 0.0f) / (float)D + eps);
    for (int64_t i = 0; i < D; i++) yb[i] = hb[i] * nn * w32[i];
    store_f32(on + row * D * (int64_t)es, dt, yb, D);
  }
  free(buf);
  free(w32);
  return MX_OK;
}

/* n float32 values rounded to dt in place (scratch: n elements of dt) */
static void round_f32(void *scratch, mx_dtype dt, float *v, int64_t n) {
  store_f32(scratch, dt, v, n);
  load_f32(scratch, dt, 1, n, v);
}


/* Row j of the quantized weight of add_norm_linear (inputs 3-5: wq, scales,
 * biases) dequantized in float64: scale q + bias. sg: 2 D / gs doubles. */
static void qrow_f64(mx_array **in, int gs, int bits, int64_t j, int64_t D, mx_dtype dt,
                     double *out, double *sg) {
  mx_array *wq = in[3], *sc = in[4], *bi = in[5];
  const int64_t G = D / gs, es = (int64_t)mx_dtype_size(dt);
  load_f64((const char *)mx__data(sc) + j * sc->strides[0] * es, dt, sc->strides[1], G, sg);
  load_f64((const char *)mx__data(bi) + j * bi->strides[0] * es, dt, bi->strides[1], G, sg + G);
  const uint32_t *w = (const uint32_t *)mx__data(wq) + j * wq->strides[0];
  const int64_t ws = wq->strides[1];
  for (int64_t k = 0; k < D; k++) {
    const int64_t b = k * bits, wi = b >> 5;
    const int sh = (int)(b & 31);
    uint64_t v = w[wi * ws] >> sh;
    if (sh + bits > 32) v |= (uint64_t)w[(wi + 1) * ws] << (32 - sh);
    const double q = (double)((uint32_t)v & ((1u << bits) - 1u));
    out[k] = sg[k / gs] * q + sg[G + k / gs];
  }
}

/* add_norm_linear (ops/fast_params.h): per row, h = x + r rounded to the
 * dtype and n = rms_norm(h) * weight rounded, as add_rms_norm computes
 * them; then each output n . w_j accumulated in float64 and rounded (with
 * swiglu_linear's roundings when swiglu; a quantized w dequantized in
 * float64). float64: all in float64. */
static int k_add_norm_linear(mx_array *out, mx_array **in) {
  const mx__add_norm_linear_params *p = MX__PARAMS(out, mx__add_norm_linear_params);
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  mx_array *x = in[0], *r = in[1], *nw = in[2], *w = in[3];
  const mx_dtype dt = out->dtype;
  const int nlead = x->ndim - 1;
  const int64_t D = x->shape[nlead], W = out->shape[out->ndim - 1], M = W - D;
  const int64_t rows = x->size / D, N = w->shape[0];
  const int64_t xs = x->strides[nlead], rs = r->strides[nlead];
  const size_t es = mx_dtype_size(dt);
  double *db = malloc(sizeof(double) * (size_t)(3 * D + N + 1));
  float *fb = malloc(sizeof(float) * (size_t)(4 * D + 2 * N + 1));
  char *rb = malloc(es * (size_t)(D + 2 * N + 1));
  double *w64 = param_f64(nw, D);
  double *sg = p->bits ? malloc(sizeof(double) * (size_t)(2 * (D / p->group_size) + 1)) : NULL;
  if (!db || !fb || !rb || !w64 || (p->bits && !sg)) {
    free(db), free(fb), free(rb), free(w64), free(sg);
    return oom("add_norm_linear", (sizeof(double) * 4 + sizeof(float) * 6 + es * 3) * (size_t)(D + N));
  }
  double *nb = db, *wb = db + D, *acc = db + 2 * D; /* acc: N (then the doubles' tail) */
  float *xb = fb, *rb32 = fb + D, *hb = fb + 2 * D, *yb = fb + 3 * D, *gu = fb + 4 * D;
  const char *wp = mx__data(w);
  char *op = mx__data(out);
  for (int64_t row = 0; row < rows; row++) {
    char *orow = op + row * W * (int64_t)es;
    if (dt == MX_FLOAT64) {
      const double *xr = (const double *)mx__data(x) + row_offset(x, nlead, row);
      const double *rr = (const double *)mx__data(r) + row_offset(r, nlead, row);
      double *h = (double *)orow, ss = 0;
      for (int64_t i = 0; i < D; i++) {
        h[i] = xr[i * xs] + rr[i * rs];
        ss += h[i] * h[i];
      }
      double nn = 1.0 / sqrt(ss / (double)D + p->eps);
      for (int64_t i = 0; i < D; i++) nb[i] = h[i] * nn * w64[i];
    } else {
      const float *xf = row_f32(x, row_offset(x, nlead, row), xs, D, xb);
      const float *rf = row_f32(r, row_offset(r, nlead, row), rs, D, rb32);
      for (int64_t i = 0; i < D; i++) hb[i] = xf[i] + rf[i];
      store_f32(orow, dt, hb, D);
      load_f32(orow, dt, 1, D, hb); /* the norm sees h rounded to the dtype */
      float nn = 1.0f / sqrtf(sumsq_f32(hb, D, 0.0f) / (float)D + (float)p->eps);
      for (int64_t i = 0; i < D; i++) yb[i] = hb[i] * nn * (float)w64[i];
      store_f32(rb, dt, yb, D); /* n rounded to the dtype */
      load_f64(rb, dt, 1, D, nb);
    }
    for (int64_t j = 0; j < N; j++) {
      if (p->bits) qrow_f64(in, p->group_size, p->bits, j, D, dt, wb, sg);
      else load_f64(wp + j * w->strides[0] * (int64_t)es, dt, w->strides[1], D, wb);
      double a = 0;
      for (int64_t k = 0; k < D; k++) a += nb[k] * wb[k];
      acc[j] = a;
    }
    char *yo = orow + D * (int64_t)es;
    if (dt == MX_FLOAT64) {
      double *o = (double *)yo;
      for (int64_t j = 0; j < M; j++)
        o[j] = p->swiglu ? acc[j] / (1 + exp(-acc[j])) * acc[M + j] : acc[j];
      continue;
    }
    for (int64_t j = 0; j < N; j++) gu[j] = (float)acc[j];
    if (!p->swiglu) {
      store_f32(yo, dt, gu, N);
      continue;
    }
    /* swiglu_linear's roundings */
    round_f32(rb, dt, gu, N);
    float *g = gu, *u = gu + M, *t = gu + N;
    for (int64_t j = 0; j < M; j++) t[j] = 1.0f / (1.0f + expf(-g[j]));
    round_f32(rb, dt, t, M);
    for (int64_t j = 0; j < M; j++) t[j] *= g[j];
    round_f32(rb, dt, t, M);
    for (int64_t j = 0; j < M; j++) t[j] *= u[j];
    store_f32(yo, dt, t, M);
  }
  free(db), free(fb), free(rb), free(w64), free(sg);
  return MX_OK;
}

/* swiglu_linear (ops/fast_params.h): per row of x, g_j = x . w_j and u_j =
 * x . w_(I + j) accumulated in float64 and rounded to the dtype, then
 * silu(g) * u with swiglu's roundings (x * sigmoid(x) rounded, times u). */
static int k_swiglu_linear(mx_array *out, mx_array **in) {
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  mx_array *x = in[0], *w = in[1];
  const mx_dtype dt = out->dtype;
  const int nlead = x->ndim - 1;
  const int64_t K = x->shape[nlead], I = out->shape[out->ndim - 1], rows = out->size / I;
  const size_t es = mx_dtype_size(dt);
  double *xb = malloc(sizeof(double) * (size_t)(2 * K + 1));
  float *gu = malloc(sizeof(float) * (size_t)(3 * I)), *sg = gu + 2 * I;
  char *rb = malloc(es * (size_t)(2 * I));
  if (!xb || !gu || !rb) {
    free(xb);
    free(gu);
    free(rb);
    return oom("swiglu_linear", (sizeof(double) * 2 + sizeof(float) * 2 + 2 * es) * (size_t)K);
  }
  double *wb = xb + K;
  const char *xp = mx__data(x), *wp = mx__data(w);
  char *op = mx__data(out);
  for (int64_t row = 0; row < rows; row++) {
    load_f64(xp + row_offset(x, nlead, row) * (int64_t)es, dt, x->strides[nlead], K, xb);
    for (int64_t j = 0; j < 2 * I; j++) {
      load_f64(wp + j * w->strides[0] * (int64_t)es, dt, w->strides[1], K, wb);
      double acc = 0;
      for (int64_t k = 0; k < K; k++) acc += xb[k] * wb[k];
      if (dt == MX_FLOAT64) ((double *)rb)[j] = acc;
      else gu[j] = (float)acc;
    }
    char *orow = op + row * I * (int64_t)es;
    if (dt == MX_FLOAT64) {
      const double *g = (const double *)rb, *u = g + I;
      double *o = (double *)orow;
      for (int64_t j = 0; j < I; j++) o[j] = g[j] / (1 + exp(-g[j])) * u[j];
      continue;
    }
    /* each step rounded to the dtype (a round trip through it) */
    store_f32(rb, dt, gu, 2 * I);
    load_f32(rb, dt, 1, 2 * I, gu);
    float *g = gu, *u = gu + I, *t = sg;
    for (int64_t j = 0; j < I; j++) t[j] = 1.0f / (1.0f + expf(-g[j]));
    round_f32(rb, dt, t, I);
    for (int64_t j = 0; j < I; j++) t[j] *= g[j];
    round_f32(rb, dt, t, I);
    for (int64_t j = 0; j < I; j++) t[j] *= u[j];
    store_f32(orow, dt, t, I);
  }
  free(xb);
  free(gu);
  free(rb);
  return MX_OK;
}

/* rope_kv's work with the rotated queries written to out (allocated). */
static int rope_kv_into(const mx__rope_kv_params *kp, mx_array *out, mx_array **in) {
  const mx__rope_params *p = &kp->rope;
  mx_array *x = in[0], *kc = in[1], *vc = in[2];
  const mx_dtype dt = out->dtype;
  const size_t es = mx_dtype_size(dt);
  const int64_t B = x->shape[0], N = x->shape[1], L = x->shape[2], D = x->shape[3];
  const int64_t H = kp->nq, KV = kp->nkv, S = kc->shape[2];
  const int half = p->dims / 2;
  const int64_t pos = *(const int32_t *)mx__data(in[3]);
  kc->buf->valid = 1u << MX_CPU; /* written on the host below */
  vc->buf->valid = 1u << MX_CPU;
  double *inv = malloc(sizeof(double) * (size_t)(half ? half : 1));
  double *row = malloc(sizeof(double) * (size_t)(2 * D));
  float *rf = malloc(sizeof(float) * (size_t)D);
  if (!inv || !row || !rf) {
    free(inv);
    free(row);
    free(rf);
    return oom("rope_kv", sizeof(double) * 3 * (size_t)D);
  }
  if (p->has_freqs) {
    load_f64(mx__data(in[4]), in[4]->dtype, in[4]->strides[0], half, inv);
    for (int i = 0; i < half; i++) inv[i] = 1.0 / inv[i];
  } else {
    double lb = half ? log(p->base) / half : 0.0;
    for (int i = 0; i < half; i++) inv[i] = exp(-(double)i * lb);
  }
  double *o = row + D;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < N; h++)
      for (int64_t t = 0; t < L; t++) {
        const char *xp = (const char *)mx__data(x) +
                         (b * x->strides[0] + h * x->strides[1] + t * x->strides[2]) * (int64_t)es;
        load_f64(xp, dt, x->strides[3], D, row);
        char *dst;
        if (h < H) {
          dst = (char *)mx__data(out) + (((b * H + h) * L + t) * D) * (int64_t)es;
        } else {
          mx_array *c = h < H + KV ? kc : vc;
          int64_t at = pos + t, hh = h < H + KV ? h - H : h - H - KV;
          if (at < 0 || at >= S) continue;
          dst = (char *)c->buf->ptr + (((b * KV + hh) * S + at) * D) * (int64_t)es;
        }
        memcpy(o, row, sizeof(double) * (size_t)D);
        if (h < H + KV) {
          const double tt = (double)(p->offset + pos + t);
          for (int i = 0; i < half; i++) {
            int64_t ia = p->traditional ? 2 * i : i, ib = p->traditional ? 2 * i + 1 : i + half;
            double th = tt * (p->scale * inv[i]), cd = cos(th), sd = sin(th);
            if (dt == MX_FLOAT64) {
              o[ia] = row[ia] * cd - row[ib] * sd;
              o[ib] = row[ia] * sd + row[ib] * cd;
            } else { /* float32 rotation, as rope */
              float a = (float)row[ia], bb = (float)row[ib], cs = (float)cd, sn = (float)sd;
              o[ia] = a * cs - bb * sn;
              o[ib] = a * sn + bb * cs;
            }
          }
        }
        if (dt == MX_FLOAT64) {
          memcpy(dst, o, sizeof(double) * (size_t)D);
        } else {
          for (int64_t i = 0; i < D; i++) rf[i] = (float)o[i];
          store_f32(dst, dt, rf, D);
        }
      }
  free(inv);
  free(row);
  free(rf);
  return MX_OK;
}

static int k_rope_kv(mx_array *out, mx_array **in) {
  int s = mx__array_alloc_data(out);
  return s ? s : rope_kv_into(MX__PARAMS(out, mx__rope_kv_params), out, in);
}

/* rope_sdpa: rope_kv into a temporary, then the attention (its params
 * come first in mx__rope_sdpa_params, so k_sdpa reads them from out). */
static int k_rope_sdpa(mx_array *out, mx_array **in) {
  const mx__rope_sdpa_params *p = MX__PARAMS(out, mx__rope_sdpa_params);
  mx_array *q = mx__array_alloc_struct(out->dtype, out->shape, out->ndim);
  if (!q) return mx_last_status();
  q->device = out->device;
  int s = mx__array_alloc_data(q);
  if (!s) s = rope_kv_into(&p->rk, q, in);
  if (!s) {
    mx_array *ins[4] = {q, in[1], in[2], in[3]};
    s = k_sdpa(out, ins);
  }
  mx_array_free(q);
  return s;
}

/* ---- softmax_cross_entropy and its backward (src/ops/fast_params.h) ------
 * One row at a time: its maximum, the sum of exp(x - max) (accumulated in
 * float64), lse = max + log(sum); the loss lse - x[t], or the gradient
 * cot (exp(x - lse) - [j == t]). float64 logits compute in float64, the
 * others in float32. A target outside [0, V) gives a NaN row. */
typedef struct {
  mx_array *out, *x, *t, *c; /* c: the cotangent (backward) or NULL */
  int64_t V;
  int failed;
} ce_ctx;

static int64_t ce_target(const ce_ctx *c, int64_t r) {
  return ((const int32_t *)mx__data(c->t))[row_offset(c->t, c->t->ndim, r)];
}

static void ce_rows_f32(void *c_, int64_t r0, int64_t r1) {
  ce_ctx *c = c_;
  const int64_t V = c->V, xs = c->x->strides[c->x->ndim - 1];
  const int nlead = c->x->ndim - 1;
  float *buf = malloc(sizeof(float) * (size_t)(2 * V + 1));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t r = r0; r < r1; r++) {
    const float *x = row_f32(c->x, row_offset(c->x, nlead, r), xs, V, buf);
    float m = -INFINITY;
    for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    double sum = 0;
    for (int64_t j = 0; j < V; j++) sum += (double)expf(x[j] - m);
    const float lse = m + (float)log(sum);
    const int64_t t = ce_target(c, r);
    const bool ok = t >= 0 && t < V;
    if (!c->c) {
      ((float *)mx__data(c->out))[r] = ok ? lse - x[t] : NAN;
      continue;
    }
    const float g = ((const float *)mx__data(c->c))[row_offset(c->c, c->c->ndim, r)];
    float *y = buf + V;
    for (int64_t j = 0; j < V; j++) y[j] = ok ? g * (expf(x[j] - lse) - (j == t ? 1.f : 0.f)) : NAN;
    store_f32((char *)mx__data(c->out) + r * V * (int64_t)mx_dtype_size(c->out->dtype),
              c->out->dtype, y, V);
  }
  free(buf);
}

static void ce_rows_f64(void *c_, int64_t r0, int64_t r1) {
  ce_ctx *c = c_;
  const int64_t V = c->V, xs = c->x->strides[c->x->ndim - 1];
  const int nlead = c->x->ndim - 1;
  for (int64_t r = r0; r < r1; r++) {
    const double *x = (const double *)mx__data(c->x) + row_offset(c->x, nlead, r);
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < V; j++) m = x[j * xs] > m ? x[j * xs] : m;
    for (int64_t j = 0; j < V; j++) sum += exp(x[j * xs] - m);
    const double lse = m + log(sum);
    const int64_t t = ce_target(c, r);
    const bool ok = t >= 0 && t < V;
    if (!c->c) {
      ((double *)mx__data(c->out))[r] = ok ? lse - x[t * xs] : NAN;
      continue;
    }
    const double g = ((const double *)mx__data(c->c))[row_offset(c->c, c->c->ndim, r)];
    double *y = (double *)mx__data(c->out) + r * V;
    for (int64_t j = 0; j < V; j++) y[j] = ok ? g * (exp(x[j * xs] - lse) - (j == t)) : NAN;
  }
}

static int ce_kernel(mx_array *out, mx_array **in, bool grad) {
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  ce_ctx c = {.out = out, .x = in[0], .t = in[1], .c = grad ? in[2] : NULL,
              .V = in[0]->shape[in[0]->ndim - 1]};
  const int64_t rows = c.t->size;
  if (c.V == 0) { /* no classes: lse = -inf, no target is valid */
    if (!grad)
      for (int64_t r = 0; r < rows; r++) {
        if (out->dtype == MX_FLOAT64) ((double *)mx__data(out))[r] = NAN;
        else ((float *)mx__data(out))[r] = NAN;
      }
    return MX_OK;
  }
  const int64_t grain = MX_MAX(1, 16384 / c.V);
  mx__parallel_for(rows, grain, in[0]->dtype == MX_FLOAT64 ? ce_rows_f64 : ce_rows_f32, &c);
  return c.failed ? oom(mx__op_names[out->op->id], sizeof(float) * 2 * (size_t)c.V) : MX_OK;
}

/* ---- row_dot (src/ops/fast_params.h): sum(a * b) over the last axis in
 * float32 (float64 for f64), each row summed in order ---------------------- */
typedef struct {
  mx_array *out, *a, *b;
  int64_t D;
  int failed;
} rowdot_ctx;

static void rowdot_rows(void *c_, int64_t r0, int64_t r1) {
  rowdot_ctx *c = c_;
  const int64_t D = c->D, as = c->a->strides[c->a->ndim - 1], bs = c->b->strides[c->b->ndim - 1];
  const int nlead = c->a->ndim - 1;
  if (c->a->dtype == MX_FLOAT64) {
    for (int64_t r = r0; r < r1; r++) {
      const double *a = (const double *)mx__data(c->a) + row_offset(c->a, nlead, r);
      const double *b = (const double *)mx__data(c->b) + row_offset(c->b, nlead, r);
      double acc = 0;
      for (int64_t i = 0; i < D; i++) acc += a[i * as] * b[i * bs];
      ((double *)mx__data(c->out))[r] = acc;
    }
    return;
  }
  float *buf = malloc(sizeof(float) * (size_t)(2 * D + 1));
  if (!buf) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t r = r0; r < r1; r++) {
    const float *a = row_f32(c->a, row_offset(c->a, nlead, r), as, D, buf);
    const float *b = row_f32(c->b, row_offset(c->b, nlead, r), bs, D, buf + D);
    float acc = 0;
    for (int64_t i = 0; i < D; i++) acc += a[i] * b[i];
    ((float *)mx__data(c->out))[r] = acc;
  }
  free(buf);
}

static int k_row_dot(mx_array *out, mx_array **in) {
  int s = mx__array_alloc_data(out);
  if (s || out->size == 0) return s;
  rowdot_ctx c = {.out = out, .a = in[0], .b = in[1], .D = in[0]->shape[in[0]->ndim - 1]};
  mx__parallel_for(out->size, MX_MAX(1, 16384 / MX_MAX(c.D, 1)), rowdot_rows, &c);
  return c.failed ? oom("row_dot", sizeof(float) * 2 * (size_t)c.D) : MX_OK;
}

static int k_softmax_ce(mx_array *out, mx_array **in) { return ce_kernel(out, in, false); }
static int k_softmax_ce_grad(mx_array *out, mx_array **in) { return ce_kernel(out, in, true); }

void mx__cpu_register_fast(mx__kernel_fn *k) {
  k[MX_OP_SOFTMAX_CE] = k_softmax_ce;
  k[MX_OP_SOFTMAX_CE_GRAD] = k_softmax_ce_grad;
  k[MX_OP_ROW_DOT] = k_row_dot;
  k[MX_OP_ADD_RMS_NORM] = k_add_rms_norm;
  k[MX_OP_ROPE_KV] = k_rope_kv;
  k[MX_OP_ROPE_SDPA] = k_rope_sdpa;
  k[MX_OP_SWIGLU_LINEAR] = k_swiglu_linear;
  k[MX_OP_ADD_NORM_LINEAR] = k_add_norm_linear;
  k[MX_OP_RMS_NORM] = k_rms_norm;
  k[MX_OP_RMS_NORM_GRAD] = k_rms_norm_grad;
  k[MX_OP_LAYER_NORM] = k_layer_norm;
  k[MX_OP_ROPE] = k_rope;
  k[MX_OP_SDPA] = k_sdpa;
  k[MX_OP_SDPA_LSE] = k_sdpa_lse;
  k[MX_OP_SDPA_BWD_Q] = k_sdpa_bwd_q;
  k[MX_OP_SDPA_BWD_KV] = k_sdpa_bwd_kv;
}
