/* opcases_fast.c — op-parity cases for the fast LLM ops: rms_norm,
 * layer_norm, rope and scaled_dot_product_attention, and the internal ops
 * of the fused attention backward (sdpa_logsumexp, sdpa_backward_q,
 * sdpa_backward_kv). References are plain C in float64, written from the
 * definitions (MLX's mx.fast semantics; ops/fast_params.h). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/fast_params.h"
#include "support/harness.h"

/* ---- rms_norm / layer_norm -------------------------------------------------
 * ip[0]: has weight, ip[1]: has bias (layer_norm), ip[2]: layer_norm;
 * dp[0]: eps. Inputs: x, [weight], [bias]. */
static mx_array *b_norm(const mx_opcase *c, mx_array **in) {
  mx_array *w = c->ip[0] ? in[1] : NULL;
  mx_array *b = c->ip[1] ? in[c->ip[0] ? 2 : 1] : NULL;
  if (c->ip[2]) return mx_fast_layer_norm(in[0], w, b, c->dp[0]);
  return mx_fast_rms_norm(in[0], w, c->dp[0]);
}

static int f_norm(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                  int *ond) {
  int nd = c->ndim[0];
  int64_t D = c->shape[0][nd - 1], n = oc_size(c->shape[0], nd);
  const double *x = in[0], *w = c->ip[0] ? in[1] : NULL;
  const double *b = c->ip[1] ? in[c->ip[0] ? 2 : 1] : NULL;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd;
  for (int64_t r = 0; D && r < n / D; r++) {
    const double *xr = x + r * D;
    double mu = 0, ss = 0;
    if (c->ip[2]) {
      for (int64_t i = 0; i < D; i++) mu += xr[i];
      mu /= (double)D;
    }
    for (int64_t i = 0; i < D; i++) ss += (xr[i] - mu) * (xr[i] - mu);
    double nrm = 1.0 / sqrt(ss / (double)D + c->dp[0]);
    for (int64_t i = 0; i < D; i++)
      out[r * D + i] = (xr[i] - mu) * nrm * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
  }
  return 0;
}

/* ---- rope ------------------------------------------------------------------
 * ip[0]: dims, ip[1]: traditional, ip[2]: offset, ip[3]: has freqs;
 * dp[0]: base, dp[1]: scale. freqs = 1 + |input 1| (so they are positive). */
static mx_array *b_rope(const mx_opcase *c, mx_array **in) {
  mx_array *f = NULL;
  if (c->ip[3]) {
    mx_array *a = mx_abs(in[1]);
    f = mx_add_scalar(a, 1.0);
    mx_array_free(a);
  }
  mx_array *r = c->ip[4] ? mx__fast_rope_heads(in[0], c->ip[0], c->ip[1], c->dp[0], c->dp[1],
                                                c->ip[2], f, c->ip[4])
                         : mx_fast_rope(in[0], c->ip[0], c->ip[1], c->dp[0], c->dp[1], c->ip[2], f);
  mx_array_free(f);
  return r;
}

static int f_rope(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                  int *ond) {
  int nd = c->ndim[0], dims = c->ip[0], half = dims / 2;
  bool trad = c->ip[1];
  int64_t T = c->shape[0][nd - 2], D = c->shape[0][nd - 1], n = oc_size(c->shape[0], nd);
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd;
  /* ip[4] > 0: heads (axis -3) from ip[4] on are copied (rope_heads) */
  int64_t nh = nd >= 3 ? c->shape[0][nd - 3] : 1;
  for (int64_t r = 0; D && r < n / D; r++) {
    int64_t t = r % T;
    const double *x = in[0] + r * D;
    double *o = out + r * D;
    if (c->ip[4] && (r / T) % nh >= c->ip[4]) {
      memcpy(o, x, sizeof(double) * (size_t)D);
      continue;
    }
    for (int64_t i = dims; i < D; i++) o[i] = x[i];
    for (int i = 0; i < half; i++) {
      /* freqs = 1 + |f| is computed in float32 by the build function */
      double inv = c->ip[3] ? 1.0 / (double)(float)(1.0 + fabs(in[1][i]))
                            : pow(c->dp[0], -2.0 * i / dims);
      double th = ((double)c->ip[2] + (double)t) * c->dp[1] * inv;
      int64_t ia = trad ? 2 * i : i, ib = trad ? 2 * i + 1 : i + half;
      o[ia] = x[ia] * cos(th) - x[ib] * sin(th);
      o[ib] = x[ia] * sin(th) + x[ib] * cos(th);
    }
  }
  return 0;
}

/* ---- scaled_dot_product_attention -------------------------------------------
 * ip[0]: causal, ip[1]: has mask; dp[0]: scale (0: 1/sqrt(D)).
 * Inputs: q, k, v, [mask: additive (case dtype) or boolean]. */
static double sdpa_scale(const mx_opcase *c) {
  return c->dp[0] != 0 ? c->dp[0] : 1.0 / sqrt((double)c->shape[0][3]);
}

static mx_array *b_sdpa(const mx_opcase *c, mx_array **in) {
  return mx_fast_scaled_dot_product_attention(in[0], in[1], in[2], sdpa_scale(c),
                                              c->ip[1] ? in[3] : NULL, c->ip[0]);
}

static int f_sdpa(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                  int *ond) {
  const int64_t *qs = c->shape[0], *ks = c->shape[1], *vs = c->shape[2];
  int64_t B = qs[0], Hq = qs[1], Tq = qs[2], D = qs[3], Hkv = ks[1], Tk = ks[2], Dv = vs[3];
  int64_t G = Hq / Hkv, off = Tk - Tq;
  double scale = sdpa_scale(c);
  bool has_mask = c->ip[1], is_bool = has_mask && c->kind[3] == OC_IN_BOOL;
  oshape[0] = B; oshape[1] = Hq; oshape[2] = Tq; oshape[3] = Dv;
  *ond = 4;
  double *s = malloc(sizeof(double) * (size_t)(Tk ? Tk : 1));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < Tq; t++) {
        const double *q = in[0] + ((b * Hq + h) * Tq + t) * D;
        int64_t kvh = (b * Hkv + h / G) * Tk;
        double mx = -INFINITY;
        for (int64_t j = 0; j < Tk; j++) {
          const double *k = in[1] + (kvh + j) * D;
          double acc = 0;
          for (int64_t d = 0; d < D; d++) acc += q[d] * k[d];
          acc *= scale;
          bool keep = !c->ip[0] || j <= t + off;
          if (has_mask) {
            int64_t idx[4] = {b, h, t, j};
            double m = in[3][oc_bcast_offset(idx, 4, c->shape[3], c->ndim[3])];
            if (is_bool) keep = keep && m != 0;
            else acc += m;
          }
          s[j] = keep ? acc : -FLT_MAX; /* MLX: finfo.min of the compute type */
          if (s[j] > mx) mx = s[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < Tk; j++) sum += (s[j] = exp(s[j] - mx));
        double *o = out + ((b * Hq + h) * Tq + t) * Dv;
        for (int64_t d = 0; d < Dv; d++) {
          double acc = 0;
          for (int64_t j = 0; j < Tk; j++) acc += s[j] * in[2][(kvh + j) * Dv + d];
          o[d] = Tk ? acc / sum : 0.0;
        }
      }
  free(s);
  return 0;
}


/* ---- the fused attention backward (internal ops, ops/fast_params.h) ---------------
 * ip[0]: causal, ip[1]: 0 sdpa_logsumexp, 1 sdpa_backward_q, 2 sdpa_backward_kv;
 * scale 1/sqrt(D). Inputs: q, k [, v, dout]. The backward ops' lse and delta
 * are built from the inputs with float32 ops (not with the ops under test):
 * lse = logsumexp of the scaled, causally masked scores; delta = sum(dout *
 * out, -1) with out the float32 attention. */
static mx_array *sdpa_lse_f32(mx_array *q, mx_array *k, double scale, bool causal) {
  const int64_t *qs = mx_array_shape(q), *ks = mx_array_shape(k);
  int64_t B = qs[0], Hq = qs[1], Tq = qs[2], D = qs[3], Hkv = ks[1], Tk = ks[2];
  mx_array *t[10] = {0};
  t[0] = mx_astype(q, MX_FLOAT32);
  t[1] = mx_reshape(t[0], (int64_t[]){B, Hkv, Hq / Hkv, Tq, D}, 5);
  t[2] = mx_astype(k, MX_FLOAT32);
  t[3] = mx_reshape(t[2], (int64_t[]){B, Hkv, 1, Tk, D}, 5);
  t[4] = mx_swapaxes(t[3], -1, -2);
  t[5] = mx_matmul(t[1], t[4]);
  mx_array *sc = t[6] = mx_multiply_scalar(t[5], scale);
  if (causal) {
    t[7] = mx_tri(Tq, Tk, Tk - Tq, MX_BOOL);
    t[8] = mx_array_scalar(-INFINITY, MX_FLOAT32);
    sc = t[9] = mx_where(t[7], t[6], t[8]);
  }
  int ax = -1;
  mx_array *l = mx_logsumexp(sc, &ax, 1, false);
  mx_array *r = mx_reshape(l, qs, 3);
  mx_array_free(l);
  mx_array_free_n(t, 10);
  return r;
}

static mx_array *b_sdpa_bwd(const mx_opcase *c, mx_array **in) {
  double scale = 1.0 / sqrt((double)c->shape[0][3]);
  bool causal = c->ip[0];
  if (c->ip[1] == 0) return mx__fast_sdpa_lse(in[0], in[1], scale, causal);
  /* 3: with an attention output of the right shape that kept no rows
   * (in[3], not a forward's result): the op computes them */
  if (c->ip[1] == 3) return mx__fast_sdpa_lse_of(in[0], in[1], in[3], scale, causal);
  mx_array *t[6] = {0}, *r = NULL;
  for (int i = 0; i < 4; i++) t[i] = mx_astype(in[i], MX_FLOAT32);
  mx_array *lse = sdpa_lse_f32(in[0], in[1], scale, causal);
  mx_array *o = mx__fast_sdpa_composed(t[0], t[1], t[2], scale, NULL, causal);
  t[4] = mx_multiply(t[3], o);
  int ax = -1;
  mx_array *delta = mx_sum(t[4], &ax, 1, false);
  if (c->ip[1] == 1) r = mx__fast_sdpa_bwd_q(in[0], in[1], in[2], in[3], lse, delta, scale, causal);
  else r = mx__fast_sdpa_bwd_kv(in[0], in[1], in[2], in[3], lse, delta, scale, causal);
  mx_array_free_n(t, 6);
  mx_array_free(lse);
  mx_array_free(o);
  mx_array_free(delta);
  return r;
}

static int f_sdpa_bwd(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                      int *ond) {
  const int64_t *qs = c->shape[0], *ks = c->shape[1];
  int64_t B = qs[0], Hq = qs[1], Tq = qs[2], D = qs[3], Hkv = ks[1], Tk = ks[2];
  int64_t G = Hq / Hkv, off = Tk - Tq, which = c->ip[1] == 3 ? 0 : c->ip[1];
  double scale = 1.0 / sqrt((double)D);
  bool causal = c->ip[0];
  *ond = which == 0 ? 3 : which == 1 ? 4 : 5;
  int64_t os[3][5] = {{B, Hq, Tq, 0, 0}, {B, Hq, Tq, D, 0}, {2, B, Hkv, Tk, D}};
  memcpy(oshape, os[which], sizeof(int64_t) * 5);
  if (which == 1) memset(out, 0, sizeof(double) * (size_t)(B * Hq * Tq * D));
  if (which == 2) memset(out, 0, sizeof(double) * (size_t)(B * Hkv * Tk * 2 * D));
  double *s = malloc(sizeof(double) * (size_t)(2 * Tk + D + 1));
  double *p = s + Tk, *o = p + Tk;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < Tq; t++) {
        int64_t row = (b * Hq + h) * Tq + t, kh = b * Hkv + h / G;
        const double *q = in[0] + row * D;
        int64_t n = causal ? (t + off + 1 < Tk ? t + off + 1 : Tk) : Tk;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; j++) {
          double a = 0;
          for (int64_t d = 0; d < D; d++) a += q[d] * in[1][(kh * Tk + j) * D + d];
          s[j] = scale * a;
          if (s[j] > mx) mx = s[j];
        }
        for (int64_t j = 0; j < n; j++) sum += exp(s[j] - mx);
        double lse = mx + log(sum);
        if (which == 0) {
          out[row] = lse;
          continue;
        }
        /* out and delta = dout . out */
        const double *g = in[3] + row * D;
        double delta = 0;
        for (int64_t d = 0; d < D; d++) o[d] = 0;
        for (int64_t j = 0; j < n; j++) {
          p[j] = exp(s[j] - lse);
          for (int64_t d = 0; d < D; d++) o[d] += p[j] * in[2][(kh * Tk + j) * D + d];
        }
        for (int64_t d = 0; d < D; d++) delta += g[d] * o[d];
        for (int64_t j = 0; j < n; j++) {
          const double *kj = in[1] + (kh * Tk + j) * D, *vj = in[2] + (kh * Tk + j) * D;
          double dp = 0;
          for (int64_t d = 0; d < D; d++) dp += g[d] * vj[d];
          double ds = p[j] * (dp - delta);
          if (which == 1) {
            for (int64_t d = 0; d < D; d++) out[row * D + d] += scale * ds * kj[d];
          } else {
            /* (2, B, Hkv, Tk, D): [dk, dv] */
            double *dk = out + (kh * Tk + j) * D, *dvp = dk + B * Hkv * Tk * D;
            for (int64_t d = 0; d < D; d++) {
              dk[d] += scale * ds * q[d];
              dvp[d] += p[j] * g[d];
            }
          }
        }
      }
  free(s);
  return 0;
}

/* ---- swiglu: silu(gate) * up ---------------------------------------------------- */
static mx_array *b_swiglu(const mx_opcase *c, mx_array **in) {
  (void)c;
  return mx_fast_swiglu(in[0], in[1]);
}

static int f_swiglu(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                    int *ond) {
  int nd = c->ndim[0];
  int64_t n = oc_size(c->shape[0], nd);
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd;
  for (int64_t i = 0; i < n; i++) out[i] = in[0][i] / (1.0 + exp(-in[0][i])) * in[1][i];
  return 0;
}

/* ---- rms_norm_backward (internal: rms_norm's VJP, one pass per row) ------------ */
/* ip = {which, has_weight}, dp = {eps} */
/* ip[2]: the residual form (dx + r, r the last input) */
static mx_array *b_rms_grad(const mx_opcase *c, mx_array **in) {
  if (c->ip[0] >= 3) { /* dx (3) or dw (4) of the pair that shares one pass */
    mx_array *dw = NULL;
    mx_array *dx = mx__fast_rms_norm_grad_both(in[0], in[1], in[2], c->dp[0],
                                               c->ip[2] ? in[c->nin - 1] : NULL, &dw);
    mx_array *keep = c->ip[0] == 3 ? dx : dw;
    mx_array_free(keep == dx ? dw : dx);
    return keep;
  }
  if (c->ip[2])
    return mx__fast_rms_norm_grad_add(in[0], in[1], c->ip[1] ? in[2] : NULL, c->dp[0],
                                      in[c->nin - 1]);
  return mx__fast_rms_norm_grad(c->ip[0], in[0], in[1], c->ip[1] ? in[2] : NULL, c->dp[0]);
}

static int f_rms_grad(const mx_opcase *c, const double *const *in, double *out,
                      int64_t *oshape, int *ond) {
  int nd = c->ndim[0];
  int64_t n = oc_size(c->shape[0], nd), D = c->shape[0][nd - 1];
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd;
  const bool dw = c->ip[0] == 2 || c->ip[0] == 4;
  if (dw) { /* the weight gradient: (D), summed over the rows */
    oshape[0] = D;
    *ond = 1;
    for (int64_t i = 0; i < D; i++) out[i] = 0;
  }
  for (int64_t r = 0; D && r < n / D; r++) {
    const double *x = in[0] + r * D, *g = in[1] + r * D;
    double ss = 0, m = 0;
    for (int64_t i = 0; i < D; i++) {
      double gw = c->ip[1] ? g[i] * in[2][i] : g[i];
      ss += x[i] * x[i];
      m += gw * x[i];
    }
    double nn = 1.0 / sqrt(ss / (double)D + c->dp[0]);
    m /= (double)D;
    if (dw) {
      for (int64_t i = 0; i < D; i++) out[i] += g[i] * x[i] * nn;
      continue;
    }
    for (int64_t i = 0; i < D; i++)
      out[r * D + i] = (c->ip[0] == 1 ? g[i] * x[i] * nn
                                      : nn * (c->ip[1] ? g[i] * in[2][i] : g[i]) -
                                            x[i] * nn * nn * nn * m) +
                       (c->ip[2] ? in[c->nin - 1][r * D + i] : 0.0);
  }
  return 0;
}

/* ---- swiglu_backward (internal: swiglu's VJP in one pass) --------------------- */
static mx_array *b_swiglu_grad(const mx_opcase *c, mx_array **in) {
  return mx__fast_swiglu_grad(c->ip[0], in[0], in[1], c->ip[0] != 1 ? in[2] : NULL);
}

static int f_swiglu_grad(const mx_opcase *c, const double *const *in, double *out,
                         int64_t *oshape, int *ond) {
  int nd = c->ndim[0];
  int64_t n = oc_size(c->shape[0], nd);
  /* which 2: (2, ...) = [d gate, d up] */
  const bool both = c->ip[0] == 2;
  if (both) oshape[0] = 2;
  memcpy(oshape + both, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd + both;
  for (int64_t i = 0; i < n; i++) {
    double x = in[0][i], s = 1.0 / (1.0 + exp(-x));
    if (both) {
      out[i] = in[2][i] * in[1][i] * s * (1 + x * (1 - s));
      out[n + i] = in[2][i] * x * s;
    } else {
      out[i] = c->ip[0] == 0 ? in[2][i] * in[1][i] * s * (1 + x * (1 - s)) : in[1][i] * x * s;
    }
  }
  return 0;
}

/* ---- add_rms_norm, rope_kv (internal: a decode step's fused kernels) ------------ */
static mx_array *b_add_norm(const mx_opcase *c, mx_array **in) {
  return mx__fast_add_rms_norm(in[0], in[1], in[2], c->dp[0]);
}

/* out (2, ...): x + r, then rms_norm(x + r) * w (float64) */
static int f_add_norm(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                      int *ond) {
  int nd = c->ndim[0];
  int64_t n = oc_size(c->shape[0], nd), D = c->shape[0][nd - 1];
  oshape[0] = 2;
  memcpy(oshape + 1, c->shape[0], sizeof(int64_t) * (size_t)nd);
  *ond = nd + 1;
  for (int64_t r = 0; D && r < n / D; r++) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) {
      double h = in[0][r * D + i] + in[1][r * D + i];
      out[r * D + i] = h;
      ss += h * h;
    }
    double nn = 1.0 / sqrt(ss / (double)D + c->dp[0]);
    for (int64_t i = 0; i < D; i++) out[n + r * D + i] = out[r * D + i] * nn * in[2][i];
  }
  return 0;
}

/* rope_kv: x (B, H + 2 KV, L, D) with ip = {H, KV, S, pos, dims, traditional};
 * the output checked here is the rotated queries (the cache writes are
 * checked in test_fast.c) */
static mx_array *b_rope_kv(const mx_opcase *c, mx_array **in) {
  const int64_t *xs = mx_array_shape(in[0]);
  int64_t cs[4] = {xs[0], c->ip[1], c->ip[2], xs[3]};
  int32_t pos = c->ip[3];
  mx_array *kc = mx_zeros(cs, 4, mx_array_dtype(in[0])), *vc = mx_zeros(cs, 4, mx_array_dtype(in[0]));
  mx_array *p = mx_array_from_data(&pos, (int64_t[]){1}, 1, MX_INT32);
  mx_array *r = NULL;
  if (kc && vc && p && !mx_array_eval(kc) && !mx_array_eval(vc))
    r = mx__fast_rope_kv(in[0], c->ip[0], c->ip[1], kc, vc, c->ip[4], c->ip[5], c->dp[0], 1.0, p,
                         NULL);
  mx_array_free(kc);
  mx_array_free(vc);
  mx_array_free(p);
  return r;
}

static int f_rope_kv(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                     int *ond) {
  const int64_t *xs = c->shape[0];
  int64_t B = xs[0], N = xs[1], L = xs[2], D = xs[3], H = c->ip[0];
  int half = c->ip[4] / 2;
  bool trad = c->ip[5];
  oshape[0] = B, oshape[1] = H, oshape[2] = L, oshape[3] = D;
  *ond = 4;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < L; t++) {
        const double *x = in[0] + ((b * N + h) * L + t) * D;
        double *o = out + ((b * H + h) * L + t) * D;
        memcpy(o, x, sizeof(double) * (size_t)D);
        for (int i = 0; i < half; i++) {
          double th = (double)(c->ip[3] + t) * pow(c->dp[0], -2.0 * i / (double)c->ip[4]);
          int64_t ia = trad ? 2 * i : i, ib = trad ? 2 * i + 1 : i + half;
          o[ia] = x[ia] * cos(th) - x[ib] * sin(th);
          o[ib] = x[ia] * sin(th) + x[ib] * cos(th);
        }
      }
  return 0;
}

/* rope_sdpa (internal): rope_kv then the attention over the static caches'
 * keys [0, pos + L). The caches' earlier rows hold fixed values (kv_fill),
 * so the attention sees old keys as well as the new ones. ip: H, KV, S,
 * pos, dims, trad; dp: base, attention scale. */
static double kv_fill(int which, int64_t i) { return 0.5 * sin(0.37 * (double)i + 1.3 * which); }

static mx_array *kv_cache(const mx_opcase *c, const int64_t *xs, int which, mx_dtype dt) {
  int64_t cs[4] = {xs[0], c->ip[1], c->ip[2], xs[3]}, n = cs[0] * cs[1] * cs[2] * cs[3];
  double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!d) return NULL;
  for (int64_t i = 0; i < n; i++) d[i] = kv_fill(which, i);
  mx_array *f = mx_array_from_data(d, cs, 4, MX_FLOAT64);
  free(d);
  mx_array *r = f ? mx_astype(f, dt) : NULL;
  mx_array_free(f);
  if (r && mx_array_eval(r)) {
    mx_array_free(r);
    return NULL;
  }
  return r;
}

static mx_array *b_rope_sdpa(const mx_opcase *c, mx_array **in) {
  const int64_t *xs = mx_array_shape(in[0]);
  int32_t pos = c->ip[3];
  mx_dtype dt = mx_array_dtype(in[0]);
  mx_array *kc = kv_cache(c, xs, 0, dt), *vc = kv_cache(c, xs, 1, dt);
  mx_array *p = mx_array_from_data(&pos, (int64_t[]){1}, 1, MX_INT32);
  mx_array *r = NULL;
  if (kc && vc && p)
    r = mx__fast_rope_sdpa(in[0], c->ip[0], c->ip[1], kc, vc, c->ip[4], c->ip[5], c->dp[0], 1.0,
                           p, NULL, c->dp[1]);
  mx_array_free(kc);
  mx_array_free(vc);
  mx_array_free(p);
  return r;
}

static int f_rope_sdpa(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                       int *ond) {
  const int64_t *xs = c->shape[0];
  const int64_t B = xs[0], N = xs[1], L = xs[2], D = xs[3], H = c->ip[0], KV = c->ip[1];
  const int64_t S = c->ip[2], pos = c->ip[3], G = H / KV;
  const int half = c->ip[4] / 2;
  const bool trad = c->ip[5];
  oshape[0] = B, oshape[1] = H, oshape[2] = L, oshape[3] = D;
  *ond = 4;
  int64_t n = pos + L < S ? pos + L : S;
  double *kc = malloc(sizeof(double) * (size_t)(B * KV * S * D));
  double *vc = malloc(sizeof(double) * (size_t)(B * KV * S * D));
  double *qr = malloc(sizeof(double) * (size_t)D), *sc = malloc(sizeof(double) * (size_t)S);
  if (!kc || !vc || !qr || !sc) {
    free(kc), free(vc), free(qr), free(sc);
    return -1;
  }
  for (int64_t i = 0; i < B * KV * S * D; i++) kc[i] = kv_fill(0, i), vc[i] = kv_fill(1, i);
  /* x's head row (b, h, t) rotated at position pos + t (or copied) into o */
  #define ROT(b, h, t, o, rotate)                                                              \
    do {                                                                                       \
      const double *x_ = in[0] + (((b) * N + (h)) * L + (t)) * D;                              \
      memcpy((o), x_, sizeof(double) * (size_t)D);                                             \
      for (int i = 0; (rotate) && i < half; i++) {                                             \
        double th = (double)(pos + (t)) * pow(c->dp[0], -2.0 * i / (double)c->ip[4]);          \
        int64_t ia = trad ? 2 * i : i, ib = trad ? 2 * i + 1 : i + half;                       \
        (o)[ia] = x_[ia] * cos(th) - x_[ib] * sin(th);                                         \
        (o)[ib] = x_[ia] * sin(th) + x_[ib] * cos(th);                                         \
      }                                                                                        \
    } while (0)
  for (int64_t b = 0; b < B; b++)
    for (int64_t hk = 0; hk < KV; hk++)
      for (int64_t t = 0; t < L; t++) {
        if (pos + t < 0 || pos + t >= S) continue;
        ROT(b, H + hk, t, kc + ((b * KV + hk) * S + pos + t) * D, 1);
        ROT(b, H + KV + hk, t, vc + ((b * KV + hk) * S + pos + t) * D, 0);
      }
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < L; t++) {
        ROT(b, h, t, qr, 1);
        const int64_t hk = h / G, last = t + n - L; /* causal: keys j <= last */
        double m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; j++) {
          const double *kr = kc + ((b * KV + hk) * S + j) * D;
          double d = 0;
          for (int64_t e = 0; e < D; e++) d += qr[e] * kr[e];
          sc[j] = j <= last ? d * c->dp[1] : -INFINITY;
          m = sc[j] > m ? sc[j] : m;
        }
        for (int64_t j = 0; j < n; j++) sum += sc[j] = exp(sc[j] - m);
        double *o = out + ((b * H + h) * L + t) * D;
        for (int64_t e = 0; e < D; e++) {
          double a = 0;
          for (int64_t j = 0; j < n; j++) a += sc[j] * vc[((b * KV + hk) * S + j) * D + e];
          o[e] = a / sum;
        }
      }
  #undef ROT
  free(kc), free(vc), free(qr), free(sc);
  return 0;
}

/* softmax_cross_entropy (internal): logits (..., V), targets (...) in [0, V);
 * the backward takes a cotangent (...) too */
static mx_array *b_ce(const mx_opcase *c, mx_array **in) {
  if (c->ip[0] == 2) { /* the backward given the forward's loss */
    mx_array *l = mx__fast_softmax_ce(in[0], in[1]);
    mx_array *r = l ? mx__fast_softmax_ce_grad_loss(in[0], in[1], in[2], l) : NULL;
    mx_array_free(l);
    return r;
  }
  return c->ip[0] ? mx__fast_softmax_ce_grad(in[0], in[1], in[2])
                  : mx__fast_softmax_ce(in[0], in[1]);
}

static int f_ce(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                int *ond) {
  int nd = c->ndim[0];
  int64_t V = c->shape[0][nd - 1], rows = oc_size(c->shape[1], c->ndim[1]);
  *ond = c->ip[0] ? nd : nd - 1;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)*ond);
  for (int64_t r = 0; r < rows; r++) {
    const double *x = in[0] + r * V;
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    for (int64_t j = 0; j < V; j++) sum += exp(x[j] - m);
    double lse = m + log(sum);
    int64_t t = (int64_t)in[1][r];
    if (!c->ip[0]) {
      out[r] = lse - x[t];
      continue;
    }
    for (int64_t j = 0; j < V; j++) out[r * V + j] = in[2][r] * (exp(x[j] - lse) - (j == t));
  }
  return 0;
}

/* row_dot (internal): sum(a * b) over the last axis */
static mx_array *b_row_dot(const mx_opcase *c, mx_array **in) {
  (void)c;
  return mx__fast_row_dot(in[0], in[1]);
}

static int f_row_dot(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                     int *ond) {
  int nd = c->ndim[0];
  int64_t D = c->shape[0][nd - 1], rows = oc_size(c->shape[0], nd - 1);
  *ond = nd - 1;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)(nd - 1));
  for (int64_t r = 0; r < rows; r++) {
    double acc = 0;
    for (int64_t i = 0; i < D; i++) acc += in[0][r * D + i] * in[1][r * D + i];
    out[r] = acc;
  }
  return 0;
}

/* ---- swiglu_linear (internal: a decode step's gate/up projection + swiglu) ------ */
static mx_array *b_swiglu_lin(const mx_opcase *c, mx_array **in) {
  MX_UNUSED(c);
  return mx__fast_swiglu_linear(in[0], in[1]);
}

/* out (..., I) = silu(x w[:I]^T) * (x w[I:]^T) in float64 */
static int f_swiglu_lin(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                        int *ond) {
  int nd = c->ndim[0];
  int64_t K = c->shape[0][nd - 1], rows = oc_size(c->shape[0], nd - 1), I = c->shape[1][0] / 2;
  *ond = nd;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = I;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < I; j++) {
      double g = 0, u = 0;
      for (int64_t k = 0; k < K; k++) {
        g += in[0][r * K + k] * in[1][j * K + k];
        u += in[0][r * K + k] * in[1][(I + j) * K + k];
      }
      out[r * I + j] = g / (1 + exp(-g)) * u;
    }
  return 0;
}

/* add_norm_linear: x, r (..., D), norm weight (D), w (N, D); ip[0]: swiglu */
static mx_array *b_add_norm_lin(const mx_opcase *c, mx_array **in) {
  return mx__fast_add_norm_linear(in[0], in[1], in[2], in[3], c->dp[0], c->ip[0] != 0);
}

/* out (..., D + M): [h | y] with h = x + r, n = rms_norm(h) * weight and
 * y = n w^T (or swiglu of its two halves), in float64 */
static int f_add_norm_lin(const mx_opcase *c, const double *const *in, double *out,
                          int64_t *oshape, int *ond) {
  int nd = c->ndim[0];
  int64_t D = c->shape[0][nd - 1], rows = oc_size(c->shape[0], nd - 1), N = c->shape[3][0];
  int64_t M = c->ip[0] ? N / 2 : N, W = D + M;
  *ond = nd;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = W;
  double *n = malloc(sizeof(double) * (size_t)(D + N));
  if (!n) return -1;
  double *acc = n + D;
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) {
      double h = in[0][r * D + i] + in[1][r * D + i];
      out[r * W + i] = h;
      ss += h * h;
    }
    double nn = 1.0 / sqrt(ss / (double)D + c->dp[0]);
    for (int64_t i = 0; i < D; i++) n[i] = out[r * W + i] * nn * in[2][i];
    for (int64_t j = 0; j < N; j++) {
      double a = 0;
      for (int64_t k = 0; k < D; k++) a += n[k] * in[3][j * D + k];
      acc[j] = a;
    }
    for (int64_t j = 0; j < M; j++)
      out[r * W + D + j] = c->ip[0] ? acc[j] / (1 + exp(-acc[j])) * acc[M + j] : acc[j];
  }
  free(n);
  return 0;
}

/* ---- the table -------------------------------------------------------------- */
#define ARR(...) {__VA_ARGS__}
#define NORM(name, d, nin_, nd_, shapes, kinds, W, B, LN, eps)                                \
  {.op = name, .desc = d, .nin = nin_, .ndim = nd_, .shape = shapes, .kind = kinds,           \
   .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .ip = {W, B, LN}, .dp = {eps},        \
   .build = b_norm, .ref = f_norm}
#define ROPE(d, nin_, nd_, shapes, dims, trad, offset, freqs, base, scale)                     \
  {.op = "rope", .desc = d, .nin = nin_, .ndim = nd_, .shape = shapes, .kind = {0, OC_IN_F32}, \
   .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .ip = {dims, trad, offset, freqs},     \
   .dp = {base, scale}, .build = b_rope, .ref = f_rope}
#define ROPE_HEADS(d, nin_, nd_, shapes, dims, trad, offset, freqs, base, rot)                 \
  {.op = "rope", .desc = d, .nin = nin_, .ndim = nd_, .shape = shapes, .kind = {0, OC_IN_F32}, \
   .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .ip = {dims, trad, offset, freqs, rot},\
   .dp = {base, 1}, .build = b_rope, .ref = f_rope}
#define SDPA(d, nin_, mnd, shapes, kinds, causal, mask, scale)                                  \
  {.op = "scaled_dot_product_attention", .desc = d, .nin = nin_, .ndim = {4, 4, 4, mnd},       \
   .shape = shapes, .kind = kinds, .lo = -1.5, .hi = 1.5, OC_FLOATS, .flags = OC_NONCONTIG,    \
   .ip = {causal, mask}, .dp = {scale}, .build = b_sdpa, .ref = f_sdpa}

/* One op of the fused attention backward in one dtype (tolerances for its
 * output: lse float32; dq, dk, dv rounded to bf16/f16 by the GPU kernels,
 * whose probabilities and dS are 16-bit operands of the tensor cores). */
#define BWD1(name, which, d, dt, tl, B, Hq, Hkv, Tq, Tk, D, causal)                              \
  {.op = name, .desc = d, .nin = (which) ? 4 : 2, .ndim = {4, 4, 4, 4},                          \
   .shape = {{B, Hq, Tq, D}, {B, Hkv, Tk, D}, {B, Hkv, Tk, D}, {B, Hq, Tq, D}}, .lo = -1,          \
   .hi = 1, OC_DT(dt), .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {causal, which}, .tol = tl,     \
   .build = b_sdpa_bwd, .ref = f_sdpa_bwd}
#define BWD(d, B, Hq, Hkv, Tq, Tk, D, causal)                                                    \
  BWD1("sdpa_logsumexp", 0, d, MX_BFLOAT16, 1e-4, B, Hq, Hkv, Tq, Tk, D, causal),                \
  BWD1("sdpa_logsumexp", 3, d, MX_FLOAT16, 1e-4, B, Hq, Hkv, Tq, Tk, D, causal),                 \
  BWD1("sdpa_backward_q", 1, d, MX_BFLOAT16, 2e-2, B, Hq, Hkv, Tq, Tk, D, causal),               \
  BWD1("sdpa_backward_q", 1, d, MX_FLOAT16, 4e-3, B, Hq, Hkv, Tq, Tk, D, causal),                \
  BWD1("sdpa_backward_kv", 2, d, MX_BFLOAT16, 2e-2, B, Hq, Hkv, Tq, Tk, D, causal),              \
  BWD1("sdpa_backward_kv", 2, d, MX_FLOAT16, 4e-3, B, Hq, Hkv, Tq, Tk, D, causal)

#define SWIGLU(d, nd_, shape_, lo_, hi_)                                                        \
  {.op = "swiglu", .desc = d, .nin = 2, .ndim = {nd_, nd_}, .shape = {shape_, shape_},         \
   .lo = lo_, .hi = hi_, OC_FLOATS, .flags = OC_NONCONTIG, .build = b_swiglu, .ref = f_swiglu}

#define SWIGLU_GRAD(d, which, nd_, shape_, lo_, hi_)                                           \
  {.op = "swiglu_backward", .desc = d, .nin = which == 1 ? 2 : 3, .ndim = {nd_, nd_, nd_},     \
   .shape = {shape_, shape_, shape_}, .lo = lo_, .hi = hi_, OC_FLOATS, .flags = OC_NONCONTIG,  \
   .ip = {which}, .build = b_swiglu_grad, .ref = f_swiglu_grad}

#define RMS_GRAD(d, which, w, nd_, xshape, dshape, eps)                                        \
  {.op = "rms_norm_backward", .desc = d, .nin = w ? 3 : 2, .ndim = {nd_, nd_, 1},              \
   .shape = {xshape, xshape, dshape}, .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG,     \
   .ip = {which, w}, .dp = {eps}, .build = b_rms_grad, .ref = f_rms_grad}

#define RMS_GRAD_ADDW(d, nd_, xshape, dshape, eps)                                             \
  {.op = "rms_norm_backward", .desc = d, .nin = 4, .ndim = {nd_, nd_, 1, nd_},                 \
   .shape = {xshape, xshape, dshape, xshape}, .lo = -2, .hi = 2, OC_FLOATS,                    \
   .flags = OC_NONCONTIG, .ip = {0, 1, 1}, .dp = {eps}, .build = b_rms_grad, .ref = f_rms_grad}
#define RMS_GRAD_ADD0(d, nd_, xshape, eps)                                                      \
  {.op = "rms_norm_backward", .desc = d, .nin = 3, .ndim = {nd_, nd_, nd_},                    \
   .shape = {xshape, xshape, xshape}, .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG,     \
   .ip = {0, 0, 1}, .dp = {eps}, .build = b_rms_grad, .ref = f_rms_grad}

#define ADD_NORM(d, nd_, xshape, dshape, eps)                                                  \
  {.op = "add_rms_norm", .desc = d, .nin = 3, .ndim = {nd_, nd_, 1},                          \
   .shape = {xshape, xshape, dshape}, .lo = -2, .hi = 2, OC_FLOATS,                           \
   .flags = OC_NONCONTIG | OC_NO_GRAD, .dp = {eps}, .build = b_add_norm, .ref = f_add_norm}
#define ROPE_KV(d, xshape, H, KV, S, pos, dims, trad, base)                                    \
  {.op = "rope_kv", .desc = d, .nin = 1, .ndim = {4}, .shape = {xshape}, .lo = -2, .hi = 2,    \
   OC_FLOATS, .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {H, KV, S, pos, dims, trad},          \
   .dp = {base}, .build = b_rope_kv, .ref = f_rope_kv}

#define ROPE_SDPA(d, xshape, H, KV, S, pos, dims, trad, base, scale)                          \
  {.op = "rope_sdpa", .desc = d, .nin = 1, .ndim = {4}, .shape = {xshape}, .lo = -2, .hi = 2,  \
   OC_FLOATS, .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {H, KV, S, pos, dims, trad},          \
   .dp = {base, scale}, .build = b_rope_sdpa, .ref = f_rope_sdpa}

#define CE(d, bwd, nd_, lshape, tshape, V)                                                     \
  {.op = bwd ? "softmax_cross_entropy_backward" : "softmax_cross_entropy", .desc = d,          \
   .nin = bwd ? 3 : 2, .ndim = {nd_, nd_ - 1, nd_ - 1}, .shape = {lshape, tshape, tshape},     \
   .kind = {OC_IN_DATA, OC_IN_INT, OC_IN_DATA}, .lo = -6, .hi = 6, .ilo = 0, .ihi = V,         \
   OC_FLOATS, .flags = OC_NONCONTIG, .ip = {bwd}, .build = b_ce, .ref = f_ce}

#define ROW_DOT(d, nd_, shape_)                                                                 \
  {.op = "row_dot", .desc = d, .nin = 2, .ndim = {nd_, nd_}, .shape = {shape_, shape_},        \
   .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .build = b_row_dot, .ref = f_row_dot}

#define ADD_NORM_LIN(d, sw, nd_, xshape, dshape, wshape, lo_, hi_)                              \
  {.op = "add_norm_linear", .desc = d, .nin = 4, .ndim = {nd_, nd_, 1, 2},                    \
   .shape = {xshape, xshape, dshape, wshape}, .lo = lo_, .hi = hi_, OC_FLOATS,                \
   .flags = OC_NONCONTIG | OC_NO_GRAD, .ip = {sw}, .dp = {1e-5}, .build = b_add_norm_lin,      \
   .ref = f_add_norm_lin}
#define SWIGLU_LIN(d, nd_, xshape, wshape, lo_, hi_)                                            \
  {.op = "swiglu_linear", .desc = d, .nin = 2, .ndim = {nd_, 2}, .shape = {xshape, wshape},      \
   .lo = lo_, .hi = hi_, OC_FLOATS, .flags = OC_NONCONTIG | OC_NO_GRAD, .build = b_swiglu_lin,   \
   .ref = f_swiglu_lin}

static const mx_opcase cases[] = {
    /* add_norm_linear (internal; on the GPU f16/bf16 rows of D <= 2048 in
     * 16-byte vectors take the GEMV kernel with the norm in its prologue,
     * everything else a strided fallback) */
    ADD_NORM_LIN("decode row, D 64, linear", 0, 3, ARR(1, 1, 64), ARR(64), ARR(40, 64), -1, 1),
    ADD_NORM_LIN("decode row, D 64, swiglu", 1, 3, ARR(1, 1, 64), ARR(64), ARR(80, 64), -1, 1),
    ADD_NORM_LIN("D 2048: a batch of loads a lane", 0, 2, ARR(1, 2048), ARR(2048), ARR(24, 2048),
                 -0.25, 0.25),
    ADD_NORM_LIN("D 2048, swiglu, two rows", 1, 2, ARR(2, 2048), ARR(2048), ARR(18, 2048), -0.25,
                 0.25),
    ADD_NORM_LIN("D 40, three rows", 1, 2, ARR(3, 40), ARR(40), ARR(14, 40), -1, 1),
    ADD_NORM_LIN("D 2056 (past the vector kernel)", 0, 2, ARR(1, 2056), ARR(2056), ARR(9, 2056),
                 -0.25, 0.25),
    ADD_NORM_LIN("0 rows", 0, 2, ARR(0, 16), ARR(16), ARR(8, 16), -1, 1),
    /* swiglu_linear (internal; on the GPU a warp per output reads 16-byte
     * vectors of both rows for f16/bf16, else a strided fallback) */
    SWIGLU_LIN("decode row, K 64", 3, ARR(1, 1, 64), ARR(80, 64), -1, 1),
    SWIGLU_LIN("rows of K 20 (no vectors)", 2, ARR(3, 20), ARR(14, 20), -1, 1),
    SWIGLU_LIN("K 2048: one batch of loads a lane", 2, ARR(1, 2048), ARR(32, 2048), -0.25, 0.25),
    SWIGLU_LIN("K 2056: a batch and a tail", 2, ARR(2, 2056), ARR(18, 2056), -0.25, 0.25),
    SWIGLU_LIN("0 rows", 2, ARR(0, 16), ARR(8, 16), -1, 1),
    /* row_dot (internal: attention's delta; vectors of 8 or 4 values a
     * thread when rows are contiguous and aligned) */
    ROW_DOT("rows of 37 (scalar loads)", 2, ARR(6, 37)),
    ROW_DOT("(B, H, T, 64): 8 threads a row", 4, ARR(2, 3, 5, 64)),
    ROW_DOT("rows of 768: a warp a row", 2, ARR(5, 768)),
    ROW_DOT("rows of 8, 1-d", 1, ARR(8)),
    ROW_DOT("0 rows", 2, ARR(0, 16)),
    /* softmax_cross_entropy (internal; its VJP is the backward op, whose
     * own VJP is checked by finite differences too) */
    CE("rows", 0, 2, ARR(6, 37), ARR(6), 37),
    CE("3-d, wide rows", 0, 3, ARR(2, 3, 3000), ARR(2, 3), 3000),
    CE("one class", 0, 2, ARR(4, 1), ARR(4), 1),
    CE("0 rows", 0, 2, ARR(0, 9), ARR(0), 9),
    CE("backward, rows", 1, 2, ARR(6, 37), ARR(6), 37),
    CE("backward, 3-d, wide rows", 1, 3, ARR(2, 3, 3000), ARR(2, 3), 3000),
    CE("backward, one row (1-d)", 1, 1, ARR(50), ARR(1), 50),
    /* rows a multiple of 8 long: 16-bit rows read once into registers */
    CE("rows of 8968 (a padded vocabulary)", 0, 2, ARR(3, 8968), ARR(3), 8968),
    CE("backward, rows of 8968", 1, 2, ARR(3, 8968), ARR(3), 8968),
    CE("backward, 3-d, rows of 4104", 1, 3, ARR(2, 2, 4104), ARR(2, 2), 4104),
    CE("backward given the forward's loss, rows of 8968", 2, 2, ARR(3, 8968), ARR(3), 8968),
    CE("backward given the forward's loss, 3-d, rows of 4104", 2, 3, ARR(2, 2, 4104), ARR(2, 2),
       4104),
    CE("backward given the forward's loss, rows of 37", 2, 2, ARR(6, 37), ARR(6), 37),
    CE("rows of 20000", 0, 2, ARR(2, 20000), ARR(2), 20000),
    CE("backward, rows of 20000", 1, 2, ARR(2, 20000), ARR(2), 20000),
    /* add_rms_norm (internal) */
    ADD_NORM("decode row, D = 64", 3, ARR(1, 1, 64), ARR(64), 1e-5),
    ADD_NORM("rows of 40 (not 16-byte vectors)", 2, ARR(3, 40), ARR(40), 1e-6),
    ADD_NORM("long rows", 2, ARR(2, 2048), ARR(2048), 1e-5),
    ADD_NORM("0-size", 2, ARR(0, 8), ARR(8), 1e-5),
    /* rope_kv (internal) */
    ROPE_KV("GQA, one position", ARR(1, 8, 1, 16), 4, 2, 8, 3, 16, 0, 10000),
    ROPE_KV("traditional, dims < D, two rows", ARR(2, 5, 2, 12), 3, 1, 6, 4, 8, 1, 500),
    ROPE_KV("position past the cache (q only)", ARR(1, 3, 1, 8), 1, 1, 4, 9, 8, 0, 10000),
    /* rope_sdpa (internal; on the GPU one position of 16-bit heads of 64 or
     * 128 is one cluster kernel, the rest rope_kv + attention) */
    ROPE_SDPA("one position, GQA 4:1, D 64", ARR(1, 12, 1, 64), 8, 2, 32, 9, 64, 0, 10000, 0.125),
    ROPE_SDPA("D 128, 8 query heads a kv head, traditional, last slot", ARR(2, 10, 1, 128), 8, 1,
              16, 15, 128, 1, 500000, 0.088),
    ROPE_SDPA("rotary dims 32 of 64, several key tiles a block", ARR(1, 8, 1, 64), 4, 2, 1100,
              700, 32, 0, 10000, 0.125),
    ROPE_SDPA("position past the cache (old keys only)", ARR(1, 6, 1, 64), 4, 1, 8, 8, 64, 0,
              10000, 0.125),
    ROPE_SDPA("two positions (two kernels), causal", ARR(1, 6, 2, 64), 2, 2, 16, 5, 64, 0, 10000,
              0.125),
    ROPE_SDPA("head size 16 (two kernels)", ARR(1, 5, 1, 16), 3, 1, 8, 2, 16, 0, 10000, 0.25),
    /* rms_norm_backward (second order checked by finite differences) */
    RMS_GRAD("dx, weight", 0, 1, 2, ARR(4, 33), ARR(33), 1e-5),
    RMS_GRAD("dx, no weight, 3-d", 0, 0, 3, ARR(2, 3, 64), ARR(64), 1e-5),
    RMS_GRAD("g x n", 1, 0, 2, ARR(5, 40), ARR(40), 1e-5),
    RMS_GRAD("dx, long rows", 0, 1, 2, ARR(3, 1500), ARR(1500), 1e-5),
    RMS_GRAD("dx, weight, rows of 768 (vectors: 3 a lane)", 0, 1, 3, ARR(2, 5, 768), ARR(768), 1e-5),
    RMS_GRAD("dx, weight, rows of 1024 (vectors: 4 a lane for 16-bit)", 0, 1, 2, ARR(3, 1024),
             ARR(1024), 1e-5),
    RMS_GRAD("dx, no weight, rows of 8", 0, 0, 2, ARR(9, 8), ARR(8), 1e-5),
    RMS_GRAD("0-size", 0, 1, 2, ARR(0, 8), ARR(8), 1e-5),
    RMS_GRAD("dw summed over rows", 2, 0, 2, ARR(7, 33), ARR(33), 1e-5),
    RMS_GRAD("dw summed over rows, 3-d, many rows", 2, 0, 3, ARR(3, 70, 48), ARR(48), 1e-5),
    RMS_GRAD("dw, long rows", 2, 0, 2, ARR(3, 1500), ARR(1500), 1e-5),
    RMS_GRAD("dw, rows of 768, several row chunks", 2, 0, 2, ARR(100, 768), ARR(768), 1e-5),
    RMS_GRAD_ADDW("dx + residual, weight, rows of 768 (vectors)", 3, ARR(2, 5, 768), ARR(768),
                  1e-5),
    RMS_GRAD_ADD0("dx + residual, no weight, rows of 33", 2, ARR(4, 33), 1e-5),
    RMS_GRAD_ADDW("dx + residual, weight, long rows", 2, ARR(3, 1500), ARR(1500), 1e-5),
    RMS_GRAD("dw, no rows", 2, 0, 2, ARR(0, 8), ARR(8), 1e-5),
    /* dx and dw from one pass (3: dx, leaving dw's partial sums; 4: dw) */
    RMS_GRAD("one pass: dx, rows of 768 (vectors)", 3, 1, 3, ARR(2, 5, 768), ARR(768), 1e-5),
    RMS_GRAD("one pass: dw, rows of 768 (vectors)", 4, 1, 3, ARR(2, 5, 768), ARR(768), 1e-5),
    RMS_GRAD("one pass: dw, 100 rows of 64", 4, 1, 2, ARR(100, 64), ARR(64), 1e-5),
    RMS_GRAD("one pass: dx, rows of 33 (no vectors)", 3, 1, 2, ARR(4, 33), ARR(33), 1e-5),
    RMS_GRAD("one pass: dw, rows of 33 (no vectors)", 4, 1, 2, ARR(4, 33), ARR(33), 1e-5),
    RMS_GRAD("one pass: dw, no rows", 4, 1, 2, ARR(0, 8), ARR(8), 1e-5),
    {.op = "rms_norm_backward", .desc = "one pass: dx + residual, rows of 768", .nin = 4,
     .ndim = {3, 3, 1, 3}, .shape = {ARR(2, 5, 768), ARR(2, 5, 768), ARR(768), ARR(2, 5, 768)},
     .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .ip = {3, 1, 1}, .dp = {1e-5},
     .build = b_rms_grad, .ref = f_rms_grad},
    {.op = "rms_norm_backward", .desc = "one pass: dw with a residual, rows of 768", .nin = 4,
     .ndim = {3, 3, 1, 3}, .shape = {ARR(2, 5, 768), ARR(2, 5, 768), ARR(768), ARR(2, 5, 768)},
     .lo = -2, .hi = 2, OC_FLOATS, .flags = OC_NONCONTIG, .ip = {4, 1, 1}, .dp = {1e-5},
     .build = b_rms_grad, .ref = f_rms_grad},
    /* swiglu_backward (its own VJP is checked by finite differences too) */
    SWIGLU_GRAD("d gate", 0, 2, ARR(5, 37), -4, 4),
    SWIGLU_GRAD("d up", 1, 2, ARR(5, 37), -4, 4),
    SWIGLU_GRAD("d gate, 3-d, large values", 0, 3, ARR(2, 3, 64), -20, 20),
    SWIGLU_GRAD("d up, 1-d", 1, 1, ARR(1000), -3, 3),
    SWIGLU_GRAD("0-size", 0, 2, ARR(0, 8), -1, 1),
    SWIGLU_GRAD("both (which 2), 16-byte rows", 2, 2, ARR(6, 64), -4, 4),
    SWIGLU_GRAD("both (which 2), 3-d, odd rows", 2, 3, ARR(2, 3, 37), -6, 6),
    SWIGLU_GRAD("both (which 2), 0-size", 2, 2, ARR(0, 8), -1, 1),
    /* swiglu */
    SWIGLU("rows", 2, ARR(5, 37), -4, 4),
    SWIGLU("3-d, large values", 3, ARR(2, 3, 64), -20, 20),
    SWIGLU("1-d", 1, ARR(1000), -3, 3),
    SWIGLU("0-size", 2, ARR(0, 8), -1, 1),
    /* rms_norm */
    NORM("rms_norm", "weight, rows of 33", 2, ARR(2, 1), ARR(ARR(4, 33), ARR(33)), ARR(0), 1, 0, 0,
         1e-5),
    NORM("rms_norm", "no weight, 3-d", 1, ARR(3), ARR(ARR(2, 3, 64)), ARR(0), 0, 0, 0, 1e-5),
    NORM("rms_norm", "f32 weight promotes", 2, ARR(2, 1), ARR(ARR(3, 40), ARR(40)),
         ARR(0, OC_IN_F32), 1, 0, 0, 1e-5),
    NORM("rms_norm", "long rows", 2, ARR(2, 1), ARR(ARR(3, 4100), ARR(4100)), ARR(0), 1, 0, 0, 1e-5),
    NORM("rms_norm", "1-size dims", 2, ARR(3, 1), ARR(ARR(1, 3, 1), ARR(1)), ARR(0), 1, 0, 0, 1e-5),
    NORM("rms_norm", "0-size rows", 2, ARR(2, 1), ARR(ARR(0, 8), ARR(8)), ARR(0), 1, 0, 0, 1e-5),
    NORM("rms_norm", "1-d input, eps 0.1", 1, ARR(1), ARR(ARR(17)), ARR(0), 0, 0, 0, 0.1),
    /* layer_norm */
    NORM("layer_norm", "weight and bias", 3, ARR(2, 1, 1), ARR(ARR(5, 33), ARR(33), ARR(33)),
         ARR(0), 1, 1, 1, 1e-5),
    NORM("layer_norm", "weight only, 3-d", 2, ARR(3, 1), ARR(ARR(2, 3, 48), ARR(48)), ARR(0), 1, 0,
         1, 1e-5),
    NORM("layer_norm", "bias only", 2, ARR(2, 1), ARR(ARR(4, 20), ARR(20)), ARR(0), 0, 1, 1, 1e-5),
    NORM("layer_norm", "no affine", 1, ARR(2), ARR(ARR(6, 19)), ARR(0), 0, 0, 1, 1e-5),
    NORM("layer_norm", "f32 affine promotes", 3, ARR(2, 1, 1), ARR(ARR(3, 24), ARR(24), ARR(24)),
         ARR(0, OC_IN_F32, OC_IN_F32), 1, 1, 1, 1e-5),
    NORM("layer_norm", "long rows", 3, ARR(2, 1, 1), ARR(ARR(2, 5000), ARR(5000), ARR(5000)),
         ARR(0), 1, 1, 1, 1e-5),
    NORM("layer_norm", "1-size dims", 3, ARR(2, 1, 1), ARR(ARR(4, 1), ARR(1), ARR(1)), ARR(0), 1, 1,
         1, 1e-5),
    NORM("layer_norm", "0-size rows", 1, ARR(3), ARR(ARR(2, 0, 8)), ARR(0), 0, 0, 1, 1e-5),
    /* rope */
    ROPE("halves, dims = D", 1, ARR(4), ARR(ARR(2, 3, 5, 16)), 16, 0, 0, 0, 10000, 1),
    ROPE("traditional, dims = D", 1, ARR(4), ARR(ARR(2, 3, 5, 16)), 16, 1, 0, 0, 10000, 1),
    ROPE("halves, dims < D, offset", 1, ARR(4), ARR(ARR(1, 2, 7, 24)), 8, 0, 5, 0, 10000, 1),
    ROPE("traditional, dims < D, offset", 1, ARR(4), ARR(ARR(1, 2, 7, 24)), 10, 1, 3, 0, 500, 1),
    ROPE("scale, big offset, base 1e6", 1, ARR(3), ARR(ARR(4, 37, 64)), 64, 0, 4000, 0, 1e6, 0.25),
    ROPE("custom freqs", 2, ARR(4, 1), ARR(ARR(2, 2, 6, 12), ARR(6)), 12, 0, 2, 1, 0, 1),
    ROPE("custom freqs, traditional, dims < D", 2, ARR(3, 1), ARR(ARR(3, 9, 20), ARR(4)), 8, 1, 0,
         1, 0, 2.0),
    ROPE("2-d (T, D), T = 1", 1, ARR(2), ARR(ARR(1, 8)), 8, 0, 7, 0, 10000, 1),
    ROPE("long T", 1, ARR(3), ARR(ARR(1, 300, 8)), 8, 0, 0, 0, 10000, 1),
    /* many rows per position: the GPU's angle table */
    ROPE("heads share positions, traditional, dims < D", 1, ARR(4), ARR(ARR(2, 4, 20, 24)), 16,
         1, 3, 0, 10000, 1),
    ROPE("heads share positions, custom freqs", 2, ARR(4, 1), ARR(ARR(2, 3, 16, 12), ARR(6)), 12,
         0, 2, 1, 0, 1),
    /* halves over the whole head, 8-pair multiples: the GPU's vector kernel */
    ROPE("heads share positions, halves, dims = D = 32, offset", 1, ARR(4),
         ARR(ARR(2, 4, 16, 32)), 32, 0, 5, 0, 10000, 1),
    ROPE("heads share positions, halves, D = 64, base 5e5", 1, ARR(4), ARR(ARR(1, 6, 24, 64)), 64,
         0, 0, 0, 500000, 1),
    ROPE("heads share positions, halves, custom freqs, D = 16", 2, ARR(4, 1),
         ARR(ARR(1, 5, 16, 16), ARR(8)), 16, 0, 1, 1, 0, 1),
    ROPE("0-size batch", 1, ARR(4), ARR(ARR(0, 2, 3, 8)), 8, 0, 0, 0, 10000, 1),
    /* rope_heads (internal): a prompt's stacked q/k/v heads, values copied */
    ROPE_HEADS("rope_heads: 6 heads, 4 rotated, D = 64, offset", 1, ARR(4),
               ARR(ARR(1, 6, 24, 64)), 64, 0, 3, 0, 10000, 4),
    ROPE_HEADS("rope_heads: batch 2, D = 16, custom freqs", 2, ARR(4, 1),
               ARR(ARR(2, 5, 17, 16), ARR(8)), 16, 0, 1, 1, 0, 3),
    ROPE_HEADS("rope_heads: traditional, dims < D, 3-d", 1, ARR(3), ARR(ARR(3, 9, 20)), 8, 1,
               0, 0, 500, 1),
    /* scaled_dot_product_attention */
    SDPA("no mask", 3, 4, ARR(ARR(2, 2, 5, 8), ARR(2, 2, 7, 8), ARR(2, 2, 7, 8)), ARR(0), 0, 0, 0),
    SDPA("Dv != D, scale", 3, 4, ARR(ARR(1, 3, 4, 8), ARR(1, 3, 6, 8), ARR(1, 3, 6, 5)), ARR(0), 0,
         0, 0.3),
    SDPA("causal Tq = Tk", 3, 4, ARR(ARR(1, 2, 6, 16), ARR(1, 2, 6, 16), ARR(1, 2, 6, 16)), ARR(0),
         1, 0, 0),
    SDPA("causal Tq < Tk (lower right)", 3, 4,
         ARR(ARR(2, 2, 3, 8), ARR(2, 2, 7, 8), ARR(2, 2, 7, 8)), ARR(0), 1, 0, 0),
    SDPA("causal Tq > Tk (rows with no key)", 3, 4,
         ARR(ARR(1, 2, 6, 8), ARR(1, 2, 3, 8), ARR(1, 2, 3, 8)), ARR(0), 1, 0, 0),
    SDPA("GQA 4:2 causal", 3, 4, ARR(ARR(1, 4, 3, 16), ARR(1, 2, 6, 16), ARR(1, 2, 6, 16)), ARR(0),
         1, 0, 0),
    SDPA("GQA 6:1 decode", 3, 4, ARR(ARR(2, 6, 1, 8), ARR(2, 1, 9, 8), ARR(2, 1, 9, 8)), ARR(0), 0,
         0, 0),
    SDPA("GQA, many blocks, causal", 3, 4,
         ARR(ARR(1, 4, 70, 24), ARR(1, 2, 300, 24), ARR(1, 2, 300, 24)), ARR(0), 1, 0, 0),
    SDPA("additive mask (Tq, Tk)", 4, 2,
         ARR(ARR(2, 2, 5, 8), ARR(2, 2, 7, 8), ARR(2, 2, 7, 8), ARR(5, 7)), ARR(0), 0, 1, 0),
    SDPA("additive mask (B, 1, Tq, Tk), GQA", 4, 4,
         ARR(ARR(2, 4, 3, 8), ARR(2, 2, 5, 8), ARR(2, 2, 5, 8), ARR(2, 1, 3, 5)), ARR(0), 0, 1, 0),
    SDPA("additive mask (1, Hq, 1, Tk) + causal", 4, 4,
         ARR(ARR(1, 4, 4, 8), ARR(1, 2, 6, 8), ARR(1, 2, 6, 8), ARR(1, 4, 1, 6)), ARR(0), 1, 1, 0),
    SDPA("boolean mask (Tq, Tk)", 4, 2,
         ARR(ARR(2, 2, 5, 8), ARR(2, 2, 7, 8), ARR(2, 2, 7, 8), ARR(5, 7)),
         ARR(0, 0, 0, OC_IN_BOOL), 0, 1, 0),
    SDPA("boolean mask full, GQA, causal", 4, 4,
         ARR(ARR(1, 4, 6, 8), ARR(1, 2, 6, 8), ARR(1, 2, 6, 8), ARR(1, 4, 6, 6)),
         ARR(0, 0, 0, OC_IN_BOOL), 1, 1, 0),
    SDPA("1-size dims", 3, 4, ARR(ARR(1, 1, 1, 1), ARR(1, 1, 1, 1), ARR(1, 1, 1, 1)), ARR(0), 1, 0,
         0),
    /* 256+ query rows, head size 64: several row blocks, edges, GQA */
    SDPA("causal, Tq = Tk = 300, D 64", 3, 4,
         ARR(ARR(1, 2, 300, 64), ARR(1, 2, 300, 64), ARR(1, 2, 300, 64)), ARR(0), 1, 0, 0),
    SDPA("GQA 4:2, Tq 260 < Tk 333, D 64, scale", 3, 4,
         ARR(ARR(1, 4, 260, 64), ARR(1, 2, 333, 64), ARR(1, 2, 333, 64)), ARR(0), 0, 0, 0.2),
    SDPA("causal, negative scale, D 64", 3, 4,
         ARR(ARR(1, 2, 80, 64), ARR(1, 2, 80, 64), ARR(1, 2, 80, 64)), ARR(0), 1, 0, -0.15),
    /* decode rows on the GPU: up to 1,024 keys one block per query row,
     * beyond that the split-KV kernel */
    SDPA("decode GQA 4:1, Tq 3 causal, Tk 300, D 64", 3, 4,
         ARR(ARR(1, 8, 3, 64), ARR(1, 2, 300, 64), ARR(1, 2, 300, 64)), ARR(0), 1, 0, 0),
    SDPA("decode GQA 4:1, Tk 1100 (split), D 64", 3, 4,
         ARR(ARR(1, 8, 1, 64), ARR(1, 2, 1100, 64), ARR(1, 2, 1100, 64)), ARR(0), 0, 0, 0),
    SDPA("Tk = 0", 3, 4, ARR(ARR(1, 2, 3, 8), ARR(1, 2, 0, 8), ARR(1, 2, 0, 8)), ARR(0), 0, 0, 0),
    SDPA("0-size batch", 3, 4, ARR(ARR(0, 2, 3, 8), ARR(0, 2, 4, 8), ARR(0, 2, 4, 8)), ARR(0), 0, 0,
         0),
    /* fused attention backward: GQA and not, causal and not, Tq < Tk and
     * Tq = Tk, sizes not multiples of 64, D = 64 and 128 */
    BWD("GQA 4:2, causal, Tq = Tk = 37, D 64", 1, 4, 2, 37, 37, 64, 1),
    BWD("causal, Tq 1 < Tk 130, D 64", 2, 2, 2, 1, 130, 64, 1),
    BWD("GQA 4:2, causal, Tq 130 < Tk 200, D 128", 1, 4, 2, 130, 200, 128, 1),
    BWD("not causal, Tq = Tk = 200, D 128", 1, 2, 2, 200, 200, 128, 0),
    BWD("GQA 4:2, not causal, Tq 37 < Tk 130, D 64", 2, 4, 2, 37, 130, 64, 0),
    BWD("causal, Tq = Tk = 128, D 64", 1, 2, 2, 128, 128, 64, 1),
    BWD("GQA 2:1, causal, Tq 290 < Tk 300, D 64", 1, 2, 1, 290, 300, 64, 1),
    BWD("MQA 4:1, causal, Tq 63 < Tk 65, D 128", 1, 4, 1, 63, 65, 128, 1),
};

const mx_opcase_table mx_opcases_fast = {cases, (int)(sizeof cases / sizeof *cases)};
