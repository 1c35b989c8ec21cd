/* fast.c — the fused LLM ops: rms_norm, layer_norm, rope and
 * scaled_dot_product_attention. Builders (shape/dtype checks, MLX's
 * semantics), VJPs written with public ops, and the same functions as
 * compositions of primitive ops (the unfused references the fused kernels
 * must equal; see fast_params.h). The internal ops of the fused attention
 * backward (sdpa_logsumexp, sdpa_backward_q, sdpa_backward_kv) and the
 * rule that routes the VJP of attention to them are at the end. Kernels:
 * src/backend/cpu/fast.c. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fast_params.h"
#include "quantized_params.h"
#include "shape_params.h"
#include "ops_internal.h"

/* Norms and attention compute in float32 for f16/bf16/f32 (as MLX), in
 * float64 for float64. */
static mx_dtype compute_dtype(mx_dtype dt) { return dt == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32; }

/* The lowest finite value of the compute type: the score of a masked-out
 * position (MLX's fallback uses finfo(dtype).min). */
static double lowest_of(mx_dtype cdt) { return cdt == MX_FLOAT64 ? -DBL_MAX : -FLT_MAX; }

/* Sum over every axis but the last: (..., D) -> (D). */
static mx_array *sum_leading(mx_array *a) {
  if (!a) return NULL;
  int axes[MX_MAX_NDIM], n = 0;
  for (int d = 0; d < a->ndim - 1; d++) axes[n++] = d;
  return mx_sum(a, axes, n, false);
}

/* Stores v (a new reference or NULL) as a gradient cast to like's dtype. */
static int set_grad(mx_array **g, mx_array *v, mx_array *like) {
  if (!v) return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  *g = mx_astype(v, like->dtype);
  mx_array_free(v);
  return *g ? MX_OK : mx_last_status();
}

/* ======================================================================
 * rms_norm and layer_norm
 * ====================================================================== */

/* Checks x (..., D) and the optional 1-d weight/bias of size D; writes the
 * output dtype (promotion of all given, which must be a float type). */
static int check_norm(const char *op, mx_array *x, mx_array *w, mx_array *b, mx_dtype *dt) {
  char sx[256], sw[256];
  if (x->ndim < 1)
    return mx__set_error(MX_ERR_SHAPE, "%s: input must have at least 1 dimension, got shape %s",
                         op, mx__shape_str(x->shape, x->ndim, sx, sizeof sx));
  int64_t d = x->shape[x->ndim - 1];
  mx_array *aff[2] = {w, b};
  const char *names[2] = {"weight", "bias"};
  mx_dtype out = x->dtype;
  for (int i = 0; i < 2; i++) {
    mx_array *a = aff[i];
    if (!a) continue;
    if (a->ndim != 1 || a->shape[0] != d)
      return mx__set_error(MX_ERR_SHAPE, "%s: %s of shape %s does not match the last axis of x %s",
                           op, names[i], mx__shape_str(a->shape, a->ndim, sw, sizeof sw),
                           mx__shape_str(x->shape, x->ndim, sx, sizeof sx));
    out = mx_promote_types(out, a->dtype);
  }
  if (!mx_dtype_is_float(out))
    return mx__set_error(MX_ERR_DTYPE, "%s: unsupported dtype %s (a float type is needed)", op,
                         mx_dtype_name(out));
  *dt = out;
  return MX_OK;
}

static int vjp_rms_norm(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_layer_norm(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_rope(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_sdpa(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_swiglu(mx_array *out, mx_array *cot, mx_array **g, const bool *need);

static const mx__op_def def_RMS_NORM = {.id = MX_OP_RMS_NORM, .vjp = vjp_rms_norm};
static int vjp_rms_norm_grad(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static const mx__op_def def_RMS_NORM_GRAD = {.id = MX_OP_RMS_NORM_GRAD,
                                             .vjp = vjp_rms_norm_grad};
static const mx__op_def def_LAYER_NORM = {.id = MX_OP_LAYER_NORM, .vjp = vjp_layer_norm};
static const mx__op_def def_ROPE = {.id = MX_OP_ROPE, .vjp = vjp_rope};
static const mx__op_def def_SDPA = {.id = MX_OP_SDPA, .vjp = vjp_sdpa};
static const mx__op_def def_SWIGLU = {.id = MX_OP_SWIGLU, .vjp = vjp_swiglu};
static int vjp_swiglu_grad(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static const mx__op_def def_SWIGLU_GRAD = {.id = MX_OP_SWIGLU_GRAD, .vjp = vjp_swiglu_grad};
static const mx__op_def def_ADD_RMS_NORM = {.id = MX_OP_ADD_RMS_NORM};
static const mx__op_def def_ROPE_KV = {.id = MX_OP_ROPE_KV};
static const mx__op_def def_ROPE_SDPA = {.id = MX_OP_ROPE_SDPA};
static const mx__op_def def_SWIGLU_LINEAR = {.id = MX_OP_SWIGLU_LINEAR};
static const mx__op_def def_ADD_NORM_LINEAR = {.id = MX_OP_ADD_NORM_LINEAR};
static int vjp_softmax_ce(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_softmax_ce_grad(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static const mx__op_def def_SOFTMAX_CE = {.id = MX_OP_SOFTMAX_CE, .vjp = vjp_softmax_ce};
static const mx__op_def def_SOFTMAX_CE_GRAD = {.id = MX_OP_SOFTMAX_CE_GRAD,
                                               .vjp = vjp_softmax_ce_grad};

/* Builds a node whose inputs are `ins` cast to dt. */
static mx_array *node_cast(const mx__op_def *def, mx_dtype dt, const int64_t *shape, int ndim,
                           mx_array **ins, int n, const void *params, size_t psize) {
  mx_array *c[4] = {0};
  mx_array *r = NULL;
  int ok = 1;
  for (int i = 0; i < n; i++) {
    c[i] = mx_astype(ins[i], dt);
    if (!c[i]) ok = 0;
  }
  if (ok) r = mx__node_new(def, dt, shape, ndim, c, n, params, psize);
  for (int i = 0; i < n; i++) mx_array_free(c[i]);
  return r;
}

mx_array *mx_fast_rms_norm(mx_array *x, mx_array *weight, double eps) {
  MX__CHECK_IN("rms_norm", x);
  mx_dtype dt;
  if (check_norm("rms_norm", x, weight, NULL, &dt)) return NULL;
  mx__rms_norm_params p = {.eps = eps, .has_weight = weight != NULL};
  mx_array *ins[2] = {x, weight};
  return node_cast(&def_RMS_NORM, dt, x->shape, x->ndim, ins, weight ? 2 : 1, &p, sizeof p);
}

mx_array *mx_fast_layer_norm(mx_array *x, mx_array *weight, mx_array *bias, double eps) {
  MX__CHECK_IN("layer_norm", x);
  mx_dtype dt;
  if (check_norm("layer_norm", x, weight, bias, &dt)) return NULL;
  mx__layer_norm_params p = {.eps = eps, .has_weight = weight != NULL, .has_bias = bias != NULL};
  mx_array *ins[3];
  int n = 0;
  ins[n++] = x;
  if (weight) ins[n++] = weight;
  if (bias) ins[n++] = bias;
  return node_cast(&def_LAYER_NORM, dt, x->shape, x->ndim, ins, n, &p, sizeof p);
}

/* d/dx of x * n * w with n = rsqrt(mean(x^2) + eps):
 *   dx = n * gw - x * n^3 * mean(gw * x),  gw = g * w
 *   dw = sum over leading axes of g * x * n */
static mx_array *rms_grad_build_dt(int which, mx_array *x, mx_array *g, mx_array *w, double eps,
                                   mx_array *r, int odt);
static mx_array *rms_grad_build(int which, mx_array *x, mx_array *g, mx_array *w, double eps,
                                mx_array *r) {
  return rms_grad_build_dt(which, x, g, w, eps, r, -1);
}

/* MXC_RMS_BWD_PACKED=0: dx and dw by two nodes (two passes over x and the
 * cotangent), for A/B */
static bool rms_bwd_packed_on(void) {
  static int v = -1;
  return mx__env_on("MXC_RMS_BWD_PACKED", &v);
}

static int vjp_rms_norm(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__rms_norm_params *p = MX__PARAMS(out, mx__rms_norm_params);
  mx_array *x = out->inputs[0], *w = p->has_weight ? out->inputs[1] : NULL;
  int st = MX_OK;
  /* dx by a node that leaves dw's partial sums behind its output (which
   * 3) and dw by a node that adds them up (which 4): one pass over x and
   * the cotangent instead of two */
  if (need[0] && w && need[1] && rms_bwd_packed_on()) {
    mx_array *dw = NULL, *dx = mx__fast_rms_norm_grad_both(x, cot, w, p->eps, NULL, &dw);
    st = set_grad(&g[0], dx, x);
    if (!st) st = set_grad(&g[1], dw, w);
    else mx_array_free(dw);
    return st;
  }
  if (need[0]) st = set_grad(&g[0], mx__fast_rms_norm_grad(0, x, cot, w, p->eps), x);
  if (!st && w && need[1]) st = set_grad(&g[1], mx__fast_rms_norm_grad(2, x, cot, NULL, p->eps), w);
  return st;
}

mx_array *mx__fast_rms_norm_grad(int which, mx_array *x, mx_array *g, mx_array *w, double eps) {
  return rms_grad_build(which, x, g, w, eps, NULL);
}

mx_array *mx__fast_rms_norm_grad_both(mx_array *x, mx_array *g, mx_array *w, double eps,
                                      mx_array *r, mx_array **dw) {
  *dw = NULL;
  mx_array *dx = rms_grad_build(3, x, g, w, eps, r);
  /* dw in w's 16-bit dtype: the float32 sums rounded once, as the cast the
   * gradient would take (MXC_RMS_DW_DTYPE=0: float32 and a cast, A/B) */
  const char *dwd = getenv("MXC_RMS_DW_DTYPE");
  int odt = w && (w->dtype == MX_BFLOAT16 || w->dtype == MX_FLOAT16) &&
                    (x->dtype == MX_BFLOAT16 || x->dtype == MX_FLOAT16 || x->dtype == MX_FLOAT32) &&
                    !(dwd && !strcmp(dwd, "0"))
                ? (int)w->dtype
                : -1;
  if (dx && !(*dw = rms_grad_build_dt(4, x, g, NULL, eps, dx, odt))) {
    mx_array_free(dx);
    return NULL;
  }
  return dx;
}

mx_array *mx__fast_rms_norm_grad_add(mx_array *x, mx_array *g, mx_array *w, double eps,
                                     mx_array *r) {
  MX__CHECK_IN("rms_norm_backward", r);
  MX__CHECK_IN("rms_norm_backward", x);
  if (r->ndim != x->ndim || memcmp(r->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim)) {
    char sa[256], sb[256];
    return mx__set_error(MX_ERR_SHAPE, "rms_norm_backward: residual %s for input %s",
                         mx__shape_str(r->shape, r->ndim, sa, sizeof sa),
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb)), NULL;
  }
  return rms_grad_build(0, x, g, w, eps, r);
}

/* odt (which 4 only, -1: none): the output's dtype, 16-bit, in place of
 * the compute type float32 — the sums rounded once */
static mx_array *rms_grad_build_dt(int which, mx_array *x, mx_array *g, mx_array *w, double eps,
                                   mx_array *r, int odt) {
  MX__CHECK_IN("rms_norm_backward", x);
  MX__CHECK_IN("rms_norm_backward", g);
  if (which < 0)
    return mx__set_error(MX_ERR_INVALID_ARG, "rms_norm_backward: unknown form %d", which), NULL;
  if (which > 4)
    return mx__set_error(MX_ERR_INVALID_ARG, "rms_norm_backward: unknown form %d", which), NULL;
  /* which 4: r carries the which-3 node whose partial sums it may add */
  mx_array *src3 = which == 4 ? r : NULL;
  if (which == 4 && (!src3 || !src3->op || src3->op->id != MX_OP_RMS_NORM_GRAD ||
                     MX__PARAMS(src3, mx__rms_norm_grad_params)->which != 3))
    return mx__set_error(MX_ERR_INVALID_ARG, "rms_norm_backward: form 4 takes the dx node of "
                         "form 3"), NULL;
  if (which == 1 || which == 2 || which == 4) w = NULL, r = NULL;
  mx_dtype dt;
  if (check_norm("rms_norm_backward", x, w, NULL, &dt)) return NULL;
  dt = mx_promote_types(dt, g->dtype);
  if (g->ndim != x->ndim || memcmp(g->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim)) {
    char sa[256], sb[256];
    return mx__set_error(MX_ERR_SHAPE, "rms_norm_backward: cotangent %s for input %s",
                         mx__shape_str(g->shape, g->ndim, sa, sizeof sa),
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb)), NULL;
  }
  if (!mx_dtype_is_float(dt))
    return mx__set_error(MX_ERR_DTYPE, "rms_norm_backward: unsupported dtype %s",
                         mx_dtype_name(dt)), NULL;
  mx__rms_norm_grad_params p = {.eps = eps, .which = which, .has_weight = w != NULL,
                                .has_resid = r != NULL};
  mx_array *ins[4] = {x, g, w ? w : r, w ? r : NULL};
  mx_array *c[4] = {0};
  int n = 2 + (w != NULL) + (r != NULL), ok = 1;
  for (int i = 0; i < n; i++)
    if (!(c[i] = mx_astype(ins[i], dt))) ok = 0;
  if (src3) c[n++] = mx_array_retain(src3); /* which 4: (x, g, the which-3 node) */
  /* which 2 and 4: the sum over the leading axes, (D) (check_norm: x->ndim >= 1) */
  const bool sum = which == 2 || which == 4;
  const int64_t *osh = sum ? x->shape + x->ndim - 1 : x->shape;
  int ond = sum ? 1 : x->ndim;
  mx_dtype rdt = which == 1 || sum ? compute_dtype(dt) : dt;
  if (which == 4 && odt >= 0 && rdt == MX_FLOAT32) rdt = (mx_dtype)odt;
  mx_array *res = ok ? mx__node_new(&def_RMS_NORM_GRAD, rdt, osh, ond, c, n, &p, sizeof p)
                     : NULL;
  for (int i = 0; i < n; i++) mx_array_free(c[i]);
  return res;
}

/* Second order, in the compute type, with n = rsqrt(mean(x^2) + eps),
 * gw = g w, m = mean(gw x), cotangent h; means over the last axis:
 *  which 0 (dx = n gw - x n^3 m):
 *    d g = w * dx(x, h) (no weight),  d w = sum_leading(g * dx(x, h)),
 *    d x = -n^3 (x mean(h gw) + m h + gw mean(h x)) + 3 n^5 m x mean(h x)
 *  which 1 (y = g x n), and which 2 (its sum over the leading axes, with h
 *  broadcast back over them):
 *    d g = h x n,  d x = h g n - n^3 x mean(h g x) */
static int vjp_rms_norm_grad(mx_array *out, mx_array *h, mx_array **gr, const bool *need) {
  const mx__rms_norm_grad_params *p = MX__PARAMS(out, mx__rms_norm_grad_params);
  mx_array *x = out->inputs[0], *g = out->inputs[1], *w = p->has_weight ? out->inputs[2] : NULL;
  mx_dtype cdt = compute_dtype(x->dtype);
  int ax = -1, st = MX_OK;
  if (p->has_resid) { /* d r = h */
    const int ri = p->has_weight ? 3 : 2;
    if (need[ri] && (st = set_grad(&gr[ri], mx_array_retain(h), out->inputs[ri]))) return st;
  }
  mx__tmp t = {0};
#define KP(e) mx__keep(&t, (e))
  mx_array *xf = KP(mx_astype(x, cdt)), *gf = KP(mx_astype(g, cdt)), *hf = KP(mx_astype(h, cdt));
  /* which 2 (and 4) sums which 1 over the leading axes: its cotangent,
   * broadcast; which 3 is which 0 (the partial sums it leaves are data) */
  const int which = p->which == 3 ? 0 : p->which == 4 ? 2 : p->which;
  if (which == 2) hf = KP(mx_broadcast_to(hf, x->shape, x->ndim));
  mx_array *n = KP(mx_rsqrt(KP(mx_add_scalar(KP(mx_mean(KP(mx_square(xf)), &ax, 1, true)),
                                             p->eps))));
  mx_array *n3 = KP(mx_multiply(n, KP(mx_square(n))));
  if (which >= 1) {
    if (need[1]) st = set_grad(&gr[1], mx_multiply(hf, KP(mx_multiply(xf, n))), g);
    if (!st && need[0]) {
      mx_array *mhgx = KP(mx_mean(KP(mx_multiply(KP(mx_multiply(hf, gf)), xf)), &ax, 1, true));
      mx_array *a = KP(mx_multiply(KP(mx_multiply(hf, gf)), n));
      st = set_grad(&gr[0], mx_subtract(a, KP(mx_multiply(KP(mx_multiply(n3, xf)), mhgx))), x);
    }
    mx__tmp_free(&t);
    return st;
  }
  mx_array *wf = w ? KP(mx_astype(w, cdt)) : NULL;
  if ((need[1] || (w && need[2])) && !st) {
    mx_array *dxh = KP(mx__fast_rms_norm_grad(0, x, h, NULL, p->eps));
    mx_array *dxf = KP(mx_astype(dxh, cdt));
    if (need[1]) st = set_grad(&gr[1], wf ? mx_multiply(dxf, wf) : mx_array_retain(dxf), g);
    if (!st && w && need[2]) st = set_grad(&gr[2], sum_leading(KP(mx_multiply(gf, dxf))), w);
  }
  if (!st && need[0]) {
    mx_array *gw = wf ? KP(mx_multiply(gf, wf)) : gf;
    mx_array *m = KP(mx_mean(KP(mx_multiply(gw, xf)), &ax, 1, true));
    mx_array *mhg = KP(mx_mean(KP(mx_multiply(hf, gw)), &ax, 1, true));
    mx_array *mhx = KP(mx_mean(KP(mx_multiply(hf, xf)), &ax, 1, true));
    mx_array *sum3 = KP(mx_add(KP(mx_add(KP(mx_multiply(xf, mhg)), KP(mx_multiply(hf, m)))),
                               KP(mx_multiply(gw, mhx))));
    mx_array *n5 = KP(mx_multiply(n3, KP(mx_square(n))));
    mx_array *t5 = KP(mx_multiply_scalar(KP(mx_multiply(KP(mx_multiply(n5, m)),
                                                        KP(mx_multiply(xf, mhx)))), 3.0));
    st = set_grad(&gr[0], mx_subtract(t5, KP(mx_multiply(n3, sum3))), x);
  }
#undef KP
  mx__tmp_free(&t);
  return st;
}

int mx__fast_rms_norm_grad_fold(mx_array *dx, mx_array *r, bool *folded) {
  *folded = false;
  if (dx->buf || !dx->op || dx->op->id != MX_OP_RMS_NORM_GRAD || dx->refcount > 2) return MX_OK;
  const mx__rms_norm_grad_params *p = MX__PARAMS(dx, mx__rms_norm_grad_params);
  if (p->which != 3 || p->has_resid || r->dtype != dx->dtype || r->ndim != dx->ndim ||
      memcmp(r->shape, dx->shape, sizeof(int64_t) * (size_t)r->ndim))
    return MX_OK;
  /* not run, held only by the sum being made and its which-4 node (which
   * reads its partial sums, not its values): dx + r in its pass changes
   * what nothing else reads */
  mx_array **in = realloc(dx->inputs, sizeof *in * (size_t)(dx->ninputs + 1));
  if (!in) return mx__set_error(MX_ERR_OOM, "rms_norm_backward: out of memory");
  dx->inputs = in;
  in[dx->ninputs++] = mx_array_retain(r);
  ((mx__rms_norm_grad_params *)dx->params)->has_resid = true;
  *folded = true;
  return MX_OK;
}

/* With xh = (x - mean) * n, n = rsqrt(var + eps), y = xh * w + b:
 *   dx = n * (gw - mean(gw) - xh * mean(gw * xh)),  gw = g * w
 *   dw = sum g * xh,  db = sum g  (over leading axes) */
static int vjp_layer_norm(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__layer_norm_params *p = MX__PARAMS(out, mx__layer_norm_params);
  mx_array *x = out->inputs[0];
  mx_array *w = p->has_weight ? out->inputs[1] : NULL;
  mx_array *b = p->has_bias ? out->inputs[p->has_weight ? 2 : 1] : NULL;
  int iw = 1, ib = p->has_weight ? 2 : 1;
  mx_dtype cdt = compute_dtype(x->dtype);
  int ax = -1, st = MX_OK;
  mx__tmp t = {0};
  mx_array *xf = mx__keep(&t, mx_astype(x, cdt));
  mx_array *gf = mx__keep(&t, mx_astype(cot, cdt));
  mx_array *xc = mx__keep(&t, mx_subtract(xf, mx__keep(&t, mx_mean(xf, &ax, 1, true))));
  mx_array *var = mx__keep(&t, mx_mean(mx__keep(&t, mx_square(xc)), &ax, 1, true));
  mx_array *n = mx__keep(&t, mx_rsqrt(mx__keep(&t, mx_add_scalar(var, p->eps))));
  mx_array *xh = mx__keep(&t, mx_multiply(xc, n));
  if (need[0]) {
    mx_array *gw = w ? mx__keep(&t, mx_multiply(gf, mx__keep(&t, mx_astype(w, cdt)))) : gf;
    mx_array *m1 = mx__keep(&t, mx_mean(gw, &ax, 1, true));
    mx_array *m2 = mx__keep(&t, mx_mean(mx__keep(&t, mx_multiply(gw, xh)), &ax, 1, true));
    mx_array *in = mx__keep(&t, mx_subtract(mx__keep(&t, mx_subtract(gw, m1)),
                                            mx__keep(&t, mx_multiply(xh, m2))));
    st = set_grad(&g[0], mx_multiply(n, in), x);
  }
  if (!st && w && need[iw]) st = set_grad(&g[iw], sum_leading(mx__keep(&t, mx_multiply(gf, xh))), w);
  if (!st && b && need[ib]) st = set_grad(&g[ib], sum_leading(gf), b);
  mx__tmp_free(&t);
  return st;
}

/* ======================================================================
 * swiglu: silu(gate) * up, the gated MLP of llama-family models in one
 * kernel instead of three (sigmoid, multiply, multiply)
 * ====================================================================== */

mx_array *mx_fast_swiglu(mx_array *gate, mx_array *up) {
  MX__CHECK_IN("swiglu", gate);
  MX__CHECK_IN("swiglu", up);
  char sa[256], sb[256];
  if (gate->ndim != up->ndim ||
      memcmp(gate->shape, up->shape, sizeof(int64_t) * (size_t)gate->ndim)) {
    mx__set_error(MX_ERR_SHAPE, "swiglu: gate %s and up %s must have the same shape",
                  mx__shape_str(gate->shape, gate->ndim, sa, sizeof sa),
                  mx__shape_str(up->shape, up->ndim, sb, sizeof sb));
    return NULL;
  }
  mx_dtype dt = mx_promote_types(gate->dtype, up->dtype);
  if (!mx_dtype_is_float(dt)) {
    mx__set_error(MX_ERR_DTYPE, "swiglu: unsupported dtype %s (a float type is needed)",
                  mx_dtype_name(dt));
    return NULL;
  }
  mx_array *ins[2] = {gate, up};
  return node_cast(&def_SWIGLU, dt, gate->shape, gate->ndim, ins, 2, NULL, 0);
}

/* y = g s u with s = sigmoid(g):
 *   dg = cot * u * s * (1 + g (1 - s)),  du = cot * g * s */
/* Both gradients from one pass (swiglu_backward which 2); MXC_SWIGLU_BWD2=0
 * runs the two forms apart (A/B). */
static bool swiglu_bwd2_on(void) {
  static int v = -1;
  return mx__env_on("MXC_SWIGLU_BWD2", &v);
}

/* Part k of a (2, ...) array, a view. */
static mx_array *part_of(mx_array *a, int k) {
  mx_array *s = mx_slice_axis(a, 0, k, k + 1, 1);
  mx_array *r = s ? mx_reshape(s, a->shape + 1, a->ndim - 1) : NULL;
  mx_array_free(s);
  return r;
}

static int vjp_swiglu(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *x = out->inputs[0], *u = out->inputs[1];
  int st = MX_OK;
  if (need[0] && need[1] && swiglu_bwd2_on()) {
    mx_array *both = mx__fast_swiglu_grad(2, x, u, cot);
    if (!both) return mx_last_status();
    st = set_grad(&g[0], part_of(both, 0), x);
    if (!st) st = set_grad(&g[1], part_of(both, 1), u);
    mx_array_free(both);
    return st;
  }
  if (need[0]) st = set_grad(&g[0], mx__fast_swiglu_grad(0, x, u, cot), x);
  if (!st && need[1]) st = set_grad(&g[1], mx__fast_swiglu_grad(1, x, cot, NULL), u);
  return st;
}

mx_array *mx__fast_swiglu_grad(int which, mx_array *gate, mx_array *b, mx_array *c) {
  MX__CHECK_IN("swiglu_backward", gate);
  MX__CHECK_IN("swiglu_backward", b);
  if (which < 0 || which > 2)
    return mx__set_error(MX_ERR_INVALID_ARG, "swiglu_backward: unknown form %d", which), NULL;
  if (which != 1) MX__CHECK_IN("swiglu_backward", c);
  mx_array *ins[3] = {gate, b, c};
  int n = which == 1 ? 2 : 3;
  mx_dtype dt = gate->dtype;
  for (int i = 0; i < n; i++) {
    if (i) dt = mx_promote_types(dt, ins[i]->dtype);
    if (ins[i]->ndim != gate->ndim ||
        memcmp(ins[i]->shape, gate->shape, sizeof(int64_t) * (size_t)gate->ndim)) {
      char sa[256], sb[256];
      return mx__set_error(MX_ERR_SHAPE, "swiglu_backward: input %d of shape %s, not %s", i,
                           mx__shape_str(ins[i]->shape, ins[i]->ndim, sa, sizeof sa),
                           mx__shape_str(gate->shape, gate->ndim, sb, sizeof sb)), NULL;
    }
  }
  if (!mx_dtype_is_float(dt))
    return mx__set_error(MX_ERR_DTYPE, "swiglu_backward: unsupported dtype %s",
                         mx_dtype_name(dt)), NULL;
  mx__swiglu_grad_params p = {.which = which};
  if (which == 2) {
    if (gate->ndim + 1 > MX_MAX_NDIM)
      return mx__set_error(MX_ERR_SHAPE, "swiglu_backward: %d dimensions are too many for the "
                           "stacked form", gate->ndim), NULL;
    int64_t shape[MX_MAX_NDIM];
    shape[0] = 2;
    memcpy(shape + 1, gate->shape, sizeof(int64_t) * (size_t)gate->ndim);
    return node_cast(&def_SWIGLU_GRAD, dt, shape, gate->ndim + 1, ins, n, &p, sizeof p);
  }
  return node_cast(&def_SWIGLU_GRAD, dt, gate->shape, gate->ndim, ins, n, &p, sizeof p);
}

/* Second order. which 1: y = c silu(g): dg = h c silu'(g), dc = h silu(g).
 * which 0: y = c u silu'(g): dg = h c u silu''(g), du = h c silu'(g),
 * dc = h u silu'(g), with silu''(g) = s (1 - s) (2 + g (1 - 2 s)). */
static int vjp_swiglu_grad(mx_array *out, mx_array *h, mx_array **g, const bool *need) {
  const mx__swiglu_grad_params *p = MX__PARAMS(out, mx__swiglu_grad_params);
  mx_array *x = out->inputs[0];
  int st = MX_OK;
  if (p->which == 2) {
    /* [d gate, d up]: the VJP of which 0 with h[0] plus that of which 1
     * (inputs gate, cot) with h[1] */
    mx_array *u = out->inputs[1], *c = out->inputs[2];
    mx__tmp t = {0};
    mx_array *h0 = mx__keep(&t, part_of(h, 0)), *h1 = mx__keep(&t, part_of(h, 1));
    mx_array *p0 = mx__keep(&t, mx__fast_swiglu_grad(0, x, u, c));
    mx_array *p1 = mx__keep(&t, mx__fast_swiglu_grad(1, x, c, NULL));
    if (!h0 || !h1 || !p0 || !p1) {
      mx__tmp_free(&t);
      return mx_last_status();
    }
    mx_array *g0[3] = {NULL, NULL, NULL}, *g1[2] = {NULL, NULL};
    bool n0[3] = {need[0], need[1], need[2]}, n1[2] = {need[0], need[2]};
    st = vjp_swiglu_grad(p0, h0, g0, n0);
    if (!st) st = vjp_swiglu_grad(p1, h1, g1, n1);
    if (!st && need[0]) st = set_grad(&g[0], g0[0] && g1[0] ? mx_add(g0[0], g1[0]) : NULL, x);
    if (!st && need[1]) st = set_grad(&g[1], g0[1] ? mx_array_retain(g0[1]) : NULL, u);
    if (!st && need[2]) st = set_grad(&g[2], g0[2] && g1[1] ? mx_add(g0[2], g1[1]) : NULL, c);
    for (int i = 0; i < 3; i++) mx_array_free(g0[i]);
    for (int i = 0; i < 2; i++) mx_array_free(g1[i]);
    mx__tmp_free(&t);
    return st;
  }
  if (p->which == 1) {
    mx_array *c = out->inputs[1];
    if (need[0]) st = set_grad(&g[0], mx__fast_swiglu_grad(0, x, c, h), x);
    if (!st && need[1]) st = set_grad(&g[1], mx__fast_swiglu_grad(1, x, h, NULL), c);
    return st;
  }
  mx_array *u = out->inputs[1], *c = out->inputs[2];
  if (need[0]) {
    mx__tmp t = {0};
    mx_array *s = mx__keep(&t, mx_sigmoid(x));
    mx_array *s1 = mx__keep(&t, mx_subtract(mx__keep(&t, mx_ones_like(s)), s));
    mx_array *t1 = mx__keep(&t, mx_multiply(s, s1));
    mx_array *one2s = mx__keep(&t, mx_subtract(s1, s)); /* 1 - 2 s */
    mx_array *t2 = mx__keep(&t, mx_add_scalar(mx__keep(&t, mx_multiply(x, one2s)), 2.0));
    mx_array *hcu = mx__keep(&t, mx_multiply(mx__keep(&t, mx_multiply(h, c)), u));
    st = set_grad(&g[0], mx_multiply(hcu, mx__keep(&t, mx_multiply(t1, t2))), x);
    mx__tmp_free(&t);
  }
  if (!st && need[1]) st = set_grad(&g[1], mx__fast_swiglu_grad(0, x, c, h), u);
  if (!st && need[2]) st = set_grad(&g[2], mx__fast_swiglu_grad(0, x, u, h), c);
  return st;
}

/* ---- compositions -------------------------------------------------------- */
mx_array *mx__fast_rms_norm_composed(mx_array *x, mx_array *weight, double eps) {
  MX__CHECK_IN("rms_norm", x);
  mx_dtype dt;
  if (check_norm("rms_norm", x, weight, NULL, &dt)) return NULL;
  mx_dtype cdt = compute_dtype(dt);
  int ax = -1;
  mx__tmp t = {0};
  mx_array *xf = mx__keep(&t, mx_astype(x, cdt));
  mx_array *ms = mx__keep(&t, mx_mean(mx__keep(&t, mx_square(xf)), &ax, 1, true));
  mx_array *n = mx__keep(&t, mx_rsqrt(mx__keep(&t, mx_add_scalar(ms, eps))));
  mx_array *y = mx__keep(&t, mx_multiply(xf, n));
  if (weight) y = mx__keep(&t, mx_multiply(y, mx__keep(&t, mx_astype(weight, cdt))));
  mx_array *r = mx_astype(y, dt);
  mx__tmp_free(&t);
  return r;
}

mx_array *mx__fast_layer_norm_composed(mx_array *x, mx_array *weight, mx_array *bias,
                                       double eps) {
  MX__CHECK_IN("layer_norm", x);
  mx_dtype dt;
  if (check_norm("layer_norm", x, weight, bias, &dt)) return NULL;
  mx_dtype cdt = compute_dtype(dt);
  int ax = -1;
  mx__tmp t = {0};
  mx_array *xf = mx__keep(&t, mx_astype(x, cdt));
  mx_array *xc = mx__keep(&t, mx_subtract(xf, mx__keep(&t, mx_mean(xf, &ax, 1, true))));
  mx_array *var = mx__keep(&t, mx_mean(mx__keep(&t, mx_square(xc)), &ax, 1, true));
  mx_array *n = mx__keep(&t, mx_rsqrt(mx__keep(&t, mx_add_scalar(var, eps))));
  mx_array *y = mx__keep(&t, mx_multiply(xc, n));
  if (weight) y = mx__keep(&t, mx_multiply(y, mx__keep(&t, mx_astype(weight, cdt))));
  if (bias) y = mx__keep(&t, mx_add(y, mx__keep(&t, mx_astype(bias, cdt))));
  mx_array *r = mx_astype(y, dt);
  mx__tmp_free(&t);
  return r;
}

/* ======================================================================
 * rope
 * ====================================================================== */

static int check_rope(mx_array *x, int dims, mx_array *freqs) {
  char sx[256], sf[256];
  if (x->ndim < 2)
    return mx__set_error(MX_ERR_SHAPE, "rope: input must be (..., T, D) with at least 2 "
                         "dimensions, got shape %s", mx__shape_str(x->shape, x->ndim, sx, sizeof sx));
  if (!mx_dtype_is_float(x->dtype))
    return mx__set_error(MX_ERR_DTYPE, "rope: input must be a float type, got %s",
                         mx_dtype_name(x->dtype));
  int64_t d = x->shape[x->ndim - 1];
  if (dims <= 0 || dims % 2 || dims > d)
    return mx__set_error(MX_ERR_INVALID_ARG, "rope: dims must be even, positive and at most the "
                         "last dimension of x %s, got %d",
                         mx__shape_str(x->shape, x->ndim, sx, sizeof sx), dims);
  if (freqs && (freqs->ndim != 1 || freqs->shape[0] != dims / 2))
    return mx__set_error(MX_ERR_SHAPE, "rope: freqs must be 1-d with dims/2 = %d elements, got "
                         "shape %s", dims / 2,
                         mx__shape_str(freqs->shape, freqs->ndim, sf, sizeof sf));
  return MX_OK;
}

static mx_array *rope_node(mx_array *x, mx_array *freqs, mx_array *pos,
                           const mx__rope_params *p) {
  mx_array *ins[3] = {x, NULL, NULL};
  int n = 1;
  mx_array *f = NULL;
  if (freqs) {
    f = mx_dtype_is_float(freqs->dtype) ? mx_array_retain(freqs) : mx_astype(freqs, MX_FLOAT32);
    if (!f) return NULL;
    ins[n++] = f;
  }
  if (pos) ins[n++] = pos;
  mx_array *r = mx__node_new(&def_ROPE, x->dtype, x->shape, x->ndim, ins, n, p, sizeof *p);
  mx_array_free(f);
  return r;
}

mx_array *mx_fast_rope(mx_array *x, int dims, bool traditional, double base, double scale,
                       int64_t offset, mx_array *freqs) {
  MX__CHECK_IN("rope", x);
  if (check_rope(x, dims, freqs)) return NULL;
  mx__rope_params p = {.dims = dims, .traditional = traditional, .forward = true,
                       .has_freqs = freqs != NULL, .base = base, .scale = scale,
                       .offset = offset};
  return rope_node(x, freqs, NULL, &p);
}

/* pos: int32 with one element (the position of the first row). */
static int check_pos(const char *op, mx_array *pos) {
  if (pos->dtype != MX_INT32 || pos->size != 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: the position must be one int32, got %s of %lld "
                         "elements", op, mx_dtype_name(pos->dtype), (long long)pos->size);
  return MX_OK;
}

/* ---- add_rms_norm, rope_kv (internal: a decode step's fused kernels) ------------------ */
mx_array *mx__fast_add_rms_norm(mx_array *x, mx_array *r, mx_array *weight, double eps) {
  MX__CHECK_IN("add_rms_norm", x, r, weight);
  char sa[256], sb[256];
  mx_dtype dt;
  if (check_norm("add_rms_norm", x, weight, NULL, &dt)) return NULL;
  if (r->ndim != x->ndim || memcmp(r->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim))
    return mx__set_error(MX_ERR_SHAPE, "add_rms_norm: residual %s does not match x %s",
                         mx__shape_str(r->shape, r->ndim, sa, sizeof sa),
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb)), NULL;
  if (x->ndim >= MX_MAX_NDIM)
    return mx__set_error(MX_ERR_SHAPE, "add_rms_norm: x has %d dimensions, at most %d allowed",
                         x->ndim, MX_MAX_NDIM - 1), NULL;
  dt = mx_promote_types(dt, r->dtype);
  int64_t shape[MX_MAX_NDIM];
  shape[0] = 2;
  memcpy(shape + 1, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  mx__rms_norm_params p = {.eps = eps, .has_weight = true};
  mx_array *ins[3] = {x, r, weight};
  return node_cast(&def_ADD_RMS_NORM, dt, shape, x->ndim + 1, ins, 3, &p, sizeof p);
}

/* The checks of rope_kv and rope_sdpa (op: the name in messages). */
static int check_rope_kv(const char *op, mx_array *x, int64_t nq, int64_t nkv, mx_array *keys,
                         mx_array *values, int dims, mx_array *pos, mx_array *freqs) {
  char sx[256], sk[256];
  if (check_rope(x, dims, freqs) || check_pos(op, pos)) return mx_last_status();
  if (x->ndim != 4 || nq < 0 || nkv <= 0 || x->shape[1] != nq + 2 * nkv)
    return mx__set_error(MX_ERR_SHAPE, "%s: x %s must be (B, %lld + 2 x %lld heads, L, D)", op,
                         mx__shape_str(x->shape, x->ndim, sx, sizeof sx), (long long)nq,
                         (long long)nkv);
  mx_array *c[2] = {keys, values};
  for (int i = 0; i < 2; i++) {
    mx_array *a = c[i];
    if (!a->buf || a->op || !a->row_contiguous || a->offset)
      return mx__set_error(MX_ERR_INVALID_ARG, "%s: the %s cache must be evaluated, "
                           "row-contiguous data", op, i ? "value" : "key");
    if (a->ndim != 4 || a->dtype != x->dtype || a->shape[0] != x->shape[0] ||
        a->shape[1] != nkv || a->shape[3] != x->shape[3])
      return mx__set_error(MX_ERR_SHAPE, "%s: %s cache %s %s does not fit x %s %s", op,
                           i ? "value" : "key", mx_dtype_name(a->dtype),
                           mx__shape_str(a->shape, a->ndim, sk, sizeof sk),
                           mx_dtype_name(x->dtype),
                           mx__shape_str(x->shape, x->ndim, sx, sizeof sx));
  }
  return MX_OK;
}

static mx_array *rope_kv_node(const mx__op_def *def, mx_array *x, int64_t nq, mx_array *keys,
                              mx_array *values, mx_array *pos, mx_array *freqs, const void *p,
                              size_t psize) {
  mx_array *f = NULL;
  if (freqs && !(f = mx_dtype_is_float(freqs->dtype) ? mx_array_retain(freqs)
                                                      : mx_astype(freqs, MX_FLOAT32)))
    return NULL;
  mx_array *ins[5] = {x, keys, values, pos, f};
  int64_t shape[4] = {x->shape[0], nq, x->shape[2], x->shape[3]};
  mx_array *r = mx__node_new(def, x->dtype, shape, 4, ins, f ? 5 : 4, p, psize);
  mx_array_free(f);
  return r;
}

mx_array *mx__fast_rope_kv(mx_array *x, int64_t nq, int64_t nkv, mx_array *keys,
                           mx_array *values, int dims, bool traditional, double base,
                           double scale, mx_array *pos, mx_array *freqs) {
  MX__CHECK_IN("rope_kv", x, keys, values, pos);
  if (check_rope_kv("rope_kv", x, nq, nkv, keys, values, dims, pos, freqs)) return NULL;
  mx__rope_kv_params p = {.rope = {.dims = dims, .traditional = traditional, .forward = true,
                                   .has_freqs = freqs != NULL, .has_pos = true, .base = base,
                                   .scale = scale},
                          .nq = nq, .nkv = nkv};
  return rope_kv_node(&def_ROPE_KV, x, nq, keys, values, pos, freqs, &p, sizeof p);
}

mx_array *mx__fast_rope_sdpa(mx_array *x, int64_t nq, int64_t nkv, mx_array *keys,
                             mx_array *values, int dims, bool traditional, double base,
                             double scale, mx_array *pos, mx_array *freqs, double attn_scale) {
  MX__CHECK_IN("rope_sdpa", x, keys, values, pos);
  if (check_rope_kv("rope_sdpa", x, nq, nkv, keys, values, dims, pos, freqs)) return NULL;
  if (nq == 0 || nq % nkv)
    return mx__set_error(MX_ERR_SHAPE, "rope_sdpa: %lld query heads are not a multiple of %lld "
                         "kv heads", (long long)nq, (long long)nkv), NULL;
  if (!mx_dtype_is_float(x->dtype))
    return mx__set_error(MX_ERR_DTYPE, "rope_sdpa: needs a floating-point x, got %s",
                         mx_dtype_name(x->dtype)), NULL;
  mx__rope_sdpa_params p = {
      .sdpa = {.scale = attn_scale, .causal = x->shape[2] > 1, .has_len = true},
      .rk = {.rope = {.dims = dims, .traditional = traditional, .forward = true,
                      .has_freqs = freqs != NULL, .has_pos = true, .base = base, .scale = scale},
             .nq = nq, .nkv = nkv}};
  return rope_kv_node(&def_ROPE_SDPA, x, nq, keys, values, pos, freqs, &p, sizeof p);
}

mx_array *mx__fast_swiglu_linear(mx_array *x, mx_array *w) {
  MX__CHECK_IN("swiglu_linear", x, w);
  char sx[256], sw[256];
  mx_dtype dt = mx_promote_types(x->dtype, w->dtype);
  if (!mx_dtype_is_float(dt))
    return mx__set_error(MX_ERR_DTYPE, "swiglu_linear: needs floating-point inputs, got %s and %s",
                         mx_dtype_name(x->dtype), mx_dtype_name(w->dtype)), NULL;
  if (x->ndim < 1 || w->ndim != 2 || w->shape[0] % 2 || w->shape[1] != x->shape[x->ndim - 1])
    return mx__set_error(MX_ERR_SHAPE, "swiglu_linear: x %s and w %s: w must be (2 I, K) for x "
                         "(..., K)", mx__shape_str(x->shape, x->ndim, sx, sizeof sx),
                         mx__shape_str(w->shape, w->ndim, sw, sizeof sw)), NULL;
  int64_t shape[MX_MAX_NDIM];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = w->shape[0] / 2;
  mx_array *ins[2] = {x, w};
  return node_cast(&def_SWIGLU_LINEAR, dt, shape, x->ndim, ins, 2, NULL, 0);
}

/* add_norm_linear's shared checks: x and r of one shape with non-empty
 * rows, the norm weight (D); the weight (wnd-d, (wrows, wcols) when 2-d)
 * (N, D), N even with swiglu. Sets the
 * error and returns its status; else *dt = the norm's dtype and shape =
 * x's shape with the last axis D + M. */
static int anl_check(mx_array *x, mx_array *r, mx_array *weight, int wnd, int64_t wrows,
                     int64_t wcols, bool swiglu, const char *what, mx_dtype *dt, int64_t *shape) {
  char sa[256], sb[256];
  if (check_norm("add_norm_linear", x, weight, NULL, dt)) return mx_last_status();
  if (r->ndim != x->ndim || memcmp(r->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim))
    return mx__set_error(MX_ERR_SHAPE, "add_norm_linear: residual %s does not match x %s",
                         mx__shape_str(r->shape, r->ndim, sa, sizeof sa),
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb));
  const int64_t D = x->shape[x->ndim - 1];
  if (D == 0)
    return mx__set_error(MX_ERR_SHAPE, "add_norm_linear: x %s has empty rows",
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb));
  const int64_t ws[2] = {wrows, wcols};
  if (wnd != 2 || wcols != D || (swiglu && wrows % 2))
    return mx__set_error(MX_ERR_SHAPE, "add_norm_linear: %s %s must be (%s, %lld) for x %s", what,
                         wnd == 2 ? mx__shape_str(ws, 2, sa, sizeof sa) : "(not 2-d)",
                         swiglu ? "2 I" : "N", (long long)D,
                         mx__shape_str(x->shape, x->ndim, sb, sizeof sb));
  const int64_t M = swiglu ? wrows / 2 : wrows;
  if (M > INT64_MAX - D) return mx__set_error(MX_ERR_SHAPE, "add_norm_linear: output too large");
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = D + M;
  return MX_OK;
}

mx_array *mx__fast_add_norm_linear(mx_array *x, mx_array *r, mx_array *weight, mx_array *w,
                                   double eps, bool swiglu) {
  MX__CHECK_IN("add_norm_linear", x, r, weight, w);
  mx_dtype dt;
  int64_t shape[MX_MAX_NDIM];
  if (anl_check(x, r, weight, w->ndim, w->ndim == 2 ? w->shape[0] : 0,
                w->ndim == 2 ? w->shape[1] : 0, swiglu, "w", &dt, shape))
    return NULL;
  dt = mx_promote_types(mx_promote_types(dt, r->dtype), w->dtype);
  mx__add_norm_linear_params p = {.eps = eps, .swiglu = swiglu};
  mx_array *ins[4] = {x, r, weight, w};
  return node_cast(&def_ADD_NORM_LINEAR, dt, shape, x->ndim, ins, 4, &p, sizeof p);
}

mx_array *mx__fast_add_norm_qlinear(mx_array *x, mx_array *r, mx_array *weight, mx_array *wq,
                                    mx_array *scales, mx_array *biases, int group_size, int bits,
                                    double eps, bool swiglu) {
  MX__CHECK_IN("add_norm_linear", x, r, weight, wq, scales, biases);
  mx_dtype dt;
  int64_t L, shape[MX_MAX_NDIM];
  if (check_norm("add_norm_linear", x, weight, NULL, &dt) ||
      mx__check_packed("add_norm_linear", wq, scales, biases, group_size, bits, &L) ||
      anl_check(x, r, weight, wq->ndim, wq->shape[0], L, swiglu, "dequantized w", &dt, shape))
    return NULL;
  dt = mx_promote_types(mx_promote_types(mx_promote_types(dt, r->dtype), scales->dtype),
                        biases->dtype);
  mx__add_norm_linear_params p = {.eps = eps, .swiglu = swiglu, .group_size = group_size,
                                  .bits = bits};
  mx__tmp t = {0};
  mx_array *ins[6] = {mx__keep(&t, mx_astype(x, dt)),      mx__keep(&t, mx_astype(r, dt)),
                      mx__keep(&t, mx_astype(weight, dt)), wq,
                      mx__keep(&t, mx_astype(scales, dt)), mx__keep(&t, mx_astype(biases, dt))};
  mx_array *out = NULL;
  if (ins[0] && ins[1] && ins[2] && ins[4] && ins[5])
    out = mx__node_new(&def_ADD_NORM_LINEAR, dt, shape, x->ndim, ins, 6, &p, sizeof p);
  mx__tmp_free(&t);
  return out;
}

mx_array *mx__fast_rope_at(mx_array *x, int dims, bool traditional, double base, double scale,
                           mx_array *pos, mx_array *freqs) {
  MX__CHECK_IN("rope", x, pos);
  if (check_rope(x, dims, freqs) || check_pos("rope", pos)) return NULL;
  mx__rope_params p = {.dims = dims, .traditional = traditional, .forward = true,
                       .has_freqs = freqs != NULL, .has_pos = true, .base = base,
                       .scale = scale};
  return rope_node(x, freqs, pos, &p);
}

mx_array *mx__fast_rope_heads(mx_array *x, int dims, bool traditional, double base,
                              double scale, int64_t offset, mx_array *freqs, int64_t rot_heads) {
  char sx[256];
  MX__CHECK_IN("rope", x);
  if (check_rope(x, dims, freqs)) return NULL;
  if (x->ndim < 3 || rot_heads <= 0 || rot_heads > x->shape[x->ndim - 3]) {
    mx__set_error(MX_ERR_INVALID_ARG, "rope: rotated heads %lld must be in [1, N] for x "
                  "(..., N, T, D), got shape %s", (long long)rot_heads,
                  mx__shape_str(x->shape, x->ndim, sx, sizeof sx));
    return NULL;
  }
  mx__rope_params p = {.dims = dims, .traditional = traditional, .forward = true,
                       .has_freqs = freqs != NULL, .base = base, .scale = scale,
                       .offset = offset,
                       .rot_heads = rot_heads == x->shape[x->ndim - 3] ? 0 : rot_heads};
  return rope_node(x, freqs, NULL, &p);
}

/* The two rotated halves of x along the last axis: (x[:h], x[h:dims]) or,
 * traditional, (x[0:dims:2], x[1:dims:2]). */
static int rope_halves(mx_array *x, int dims, bool traditional, mx_array **a, mx_array **b) {
  if (traditional) {
    *a = mx_slice_axis(x, -1, 0, dims, 2);
    *b = mx_slice_axis(x, -1, 1, dims, 2);
  } else {
    *a = mx_slice_axis(x, -1, 0, dims / 2, 1);
    *b = mx_slice_axis(x, -1, dims / 2, dims, 1);
  }
  return *a && *b ? MX_OK : mx_last_status();
}

/* Positions (offset + t) * scale as a (T, 1) float64 column. */
static mx_array *rope_positions(int64_t T, int64_t offset, double scale) {
  mx__tmp t = {0};
  mx_array *pos = mx__keep(&t, mx_arange((double)offset, (double)offset + (double)T, 1, MX_FLOAT64));
  if (pos && pos->shape[0] != T) { /* arange's count for huge offsets */
    mx__tmp_free(&t);
    mx__set_error(MX_ERR_INVALID_ARG, "rope: offset %lld too large", (long long)offset);
    return NULL;
  }
  mx_array *ps = mx__keep(&t, mx_multiply_scalar(pos, scale));
  mx_array *r = mx_reshape(ps, (int64_t[]){T, 1}, 2);
  mx__tmp_free(&t);
  return r;
}

/* dL/dfreqs: with theta = pos / f, d out_a / d theta = -out_b and
 * d out_b / d theta = out_a (forward), so
 *   dL/dtheta = g_b * out_a - g_a * out_b  (negated for the inverse)
 *   dL/df_i  = -sum_t dL/dtheta[t, i] * pos_t / f_i^2 */
static mx_array *rope_freqs_grad(mx_array *out, mx_array *cot, const mx__rope_params *p) {
  mx_array *f = out->inputs[1];
  mx_dtype cdt = compute_dtype(out->dtype);
  int64_t T = out->shape[out->ndim - 2];
  mx__tmp t = {0};
  mx_array *of = mx__keep(&t, mx_astype(out, cdt)), *gf = mx__keep(&t, mx_astype(cot, cdt));
  if (p->rot_heads) { /* the copied heads do not depend on the frequencies */
    of = mx__keep(&t, mx_slice_axis(of, -3, 0, p->rot_heads, 1));
    gf = mx__keep(&t, mx_slice_axis(gf, -3, 0, p->rot_heads, 1));
  }
  mx_array *oa = NULL, *ob = NULL, *ga = NULL, *gb = NULL, *r = NULL;
  if (rope_halves(of, p->dims, p->traditional, &oa, &ob) ||
      rope_halves(gf, p->dims, p->traditional, &ga, &gb)) {
    mx_array_free(oa); mx_array_free(ob); mx_array_free(ga); mx_array_free(gb);
    mx__tmp_free(&t);
    return NULL;
  }
  mx__keep(&t, oa); mx__keep(&t, ob); mx__keep(&t, ga); mx__keep(&t, gb);
  mx_array *dth = mx__keep(&t, mx_subtract(mx__keep(&t, mx_multiply(gb, oa)),
                                           mx__keep(&t, mx_multiply(ga, ob))));
  if (!p->forward) dth = mx__keep(&t, mx_negative(dth));
  if (dth && dth->ndim > 2) {
    int axes[MX_MAX_NDIM], n = 0;
    for (int d = 0; d < dth->ndim - 2; d++) axes[n++] = d;
    dth = mx__keep(&t, mx_sum(dth, axes, n, false)); /* (T, half) */
  }
  mx_array *pos = mx__keep(&t, mx_astype(mx__keep(&t, rope_positions(T, p->offset, p->scale)), cdt));
  int ax0 = 0;
  mx_array *s = mx__keep(&t, mx_sum(mx__keep(&t, mx_multiply(dth, pos)), &ax0, 1, false));
  mx_array *ff = mx__keep(&t, mx_astype(f, cdt));
  mx_array *r2 = mx__keep(&t, mx_reciprocal(mx__keep(&t, mx_square(ff))));
  mx_array *inv2 = mx__keep(&t, mx_negative(r2));
  r = mx_multiply(s, inv2);
  mx__tmp_free(&t);
  return r;
}

/* Rope is a rotation: its VJP is the inverse rotation of the cotangent. */
/* a is a (B, T, H, D) array transposed to (B, H, T, D) (attention's heads) */
static bool bthd_transposed(const mx_array *a) {
  if (!a || a->ndim != 4 || !a->op || a->op->id != MX_OP_TRANSPOSE || !a->params) return false;
  const int *pm = ((const mx__transpose_params *)a->params)->perm;
  return pm[0] == 0 && pm[1] == 2 && pm[2] == 1 && pm[3] == 3;
}

/* The sdpa_backward_kv node (not run, no rope marked) whose dk part,
 * reshaped to (B, Hkv, Tk, D), is c: reshape(slice(kv, axis 0, [0, 1))).
 * NULL otherwise. */
static mx_array *rope_dk_source(mx_array *c) {
  if (!c || !c->op || c->op->id != MX_OP_RESHAPE || c->ninputs != 1 || c->buf) return NULL;
  mx_array *sl = c->inputs[0];
  if (!sl->op || sl->op->id != MX_OP_SLICE || sl->ninputs != 1 || sl->buf || !sl->params)
    return NULL;
  mx_array *kv = sl->inputs[0];
  if (!kv->op || kv->op->id != MX_OP_SDPA_BWD_KV || kv->buf || !kv->params || kv->ndim != 5 ||
      MX__PARAMS(kv, mx__sdpa_params)->rope_dk)
    return NULL;
  const mx__slice_params *s = MX__PARAMS(sl, mx__slice_params);
  if (s->start[0] != 0 || s->len[0] != 1 || sl->ndim != 5) return NULL;
  for (int d = 1; d < 5; d++)
    if (s->start[d] != 0 || s->step[d] != 1 || s->len[d] != kv->shape[d]) return NULL;
  return kv;
}

static int vjp_rope(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__rope_params *p = MX__PARAMS(out, mx__rope_params);
  int st = MX_OK;
  if (p->has_pos)
    return mx__set_error(MX_ERR_UNSUPPORTED, "rope: no gradient at a device-side position");
  mx_array *x = out->inputs[0];
  /* the cotangent is an attention backward's dq that has not run: it
   * applies this VJP as it stores dq (one pass less; MXC_SDPA_ROPE_DQ=0:
   * a rope node after it, for A/B) */
  const char *rdq = getenv("MXC_SDPA_ROPE_DQ");
  /* ... or the dk part of an attention backward's [dk, dv] (reshaped)
   * that has not run */
  mx_array *kvn = rope_dk_source(cot);
  if (need[0] && !p->has_freqs && !p->traditional && !p->rot_heads && x->ndim == 4 &&
      p->dims == x->shape[3] && cot->dtype == out->dtype && cot->ndim == 4 &&
      !memcmp(cot->shape, out->shape, 4 * sizeof(int64_t)) && !(rdq && !strcmp(rdq, "0")) &&
      ((cot->op && cot->op->id == MX_OP_SDPA_BWD_Q && !cot->buf && cot->params &&
        !MX__PARAMS(cot, mx__sdpa_params)->rope_dq) ||
       kvn)) {
    mx__sdpa_params *sp = (mx__sdpa_params *)(kvn ? kvn : cot)->params;
    if (kvn) {
      sp->rope_dk = true;
    } else {
      sp->rope_dq = true;
      sp->out_blhd = bthd_transposed(x);
    }
    sp->rope_fwd = !p->forward;
    sp->rope_base = p->base;
    sp->rope_scale = p->scale;
    sp->rope_offset = p->offset;
    return set_grad(&g[0], mx_array_retain(cot), x);
  }
  if (need[0]) {
    mx__rope_params q = *p;
    q.forward = !p->forward;
    q.out_blhd = bthd_transposed(out->inputs[0]);
    mx_array *c = mx_astype(cot, out->dtype);
    st = set_grad(&g[0], c ? rope_node(c, p->has_freqs ? out->inputs[1] : NULL, NULL, &q) : NULL,
                  out->inputs[0]);
    mx_array_free(c);
  }
  if (!st && p->has_freqs && need[1])
    st = set_grad(&g[1], rope_freqs_grad(out, cot, p), out->inputs[1]);
  return st;
}

mx_array *mx__fast_rope_composed(mx_array *x, int dims, bool traditional, double base,
                                 double scale, int64_t offset, mx_array *freqs) {
  MX__CHECK_IN("rope", x);
  if (check_rope(x, dims, freqs)) return NULL;
  mx_dtype cdt = compute_dtype(x->dtype);
  int64_t T = x->shape[x->ndim - 2], D = x->shape[x->ndim - 1];
  int half = dims / 2;
  mx__tmp t = {0};
  /* theta (T, half) in float64, cos/sin rounded to the compute type */
  mx_array *pos = mx__keep(&t, rope_positions(T, offset, scale));
  mx_array *inv;
  if (freqs) {
    inv = mx__keep(&t, mx_reciprocal(mx__keep(&t, mx_astype(freqs, MX_FLOAT64))));
  } else {
    mx_array *i = mx__keep(&t, mx_arange(0, half, 1, MX_FLOAT64));
    inv = mx__keep(&t, mx_exp(mx__keep(&t, mx_multiply_scalar(i, -log(base) / half))));
  }
  mx_array *theta = mx__keep(&t, mx_multiply(pos, inv));
  mx_array *c = mx__keep(&t, mx_astype(mx__keep(&t, mx_cos(theta)), cdt));
  mx_array *s = mx__keep(&t, mx_astype(mx__keep(&t, mx_sin(theta)), cdt));
  mx_array *xf = mx__keep(&t, mx_astype(x, cdt));
  mx_array *a = NULL, *b = NULL;
  if (!xf || rope_halves(xf, dims, traditional, &a, &b)) {
    mx_array_free(a);
    mx_array_free(b);
    mx__tmp_free(&t);
    return NULL;
  }
  mx__keep(&t, a);
  mx__keep(&t, b);
  mx_array *ac = mx__keep(&t, mx_multiply(a, c)), *bs = mx__keep(&t, mx_multiply(b, s));
  mx_array *as = mx__keep(&t, mx_multiply(a, s)), *bc = mx__keep(&t, mx_multiply(b, c));
  mx_array *o1 = mx__keep(&t, mx_subtract(ac, bs));
  mx_array *o2 = mx__keep(&t, mx_add(as, bc));
  mx_array *rot;
  if (traditional) { /* interleave: stack on a new last axis, merge */
    mx_array *pair[2] = {o1, o2};
    mx_array *st = mx__keep(&t, mx_stack(pair, 2, -1));
    int64_t shape[MX_MAX_NDIM];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 1] = dims;
    rot = mx__keep(&t, mx_reshape(st, shape, x->ndim));
  } else {
    mx_array *parts[2] = {o1, o2};
    rot = mx__keep(&t, mx_concatenate(parts, 2, -1));
  }
  if (dims < D) {
    mx_array *parts[2] = {rot, mx__keep(&t, mx_slice_axis(xf, -1, dims, D, 1))};
    rot = mx__keep(&t, mx_concatenate(parts, 2, -1));
  }
  mx_array *r = mx_astype(rot, x->dtype);
  mx__tmp_free(&t);
  return r;
}

/* ======================================================================
 * scaled_dot_product_attention
 * ====================================================================== */

/* Checks q/k/v/mask; writes the output dtype and the mask kind. */
static int check_sdpa(mx_array *q, mx_array *k, mx_array *v, mx_array *mask, mx_dtype *dt,
                      int *mask_kind) {
  const char *op = "scaled_dot_product_attention";
  char s1[256], s2[256], s3[256];
  if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4)
    return mx__set_error(MX_ERR_SHAPE, "%s: q, k, v must be 4-d (B, H, T, D), got %s, %s, %s",
                         op, mx__shape_str(q->shape, q->ndim, s1, sizeof s1),
                         mx__shape_str(k->shape, k->ndim, s2, sizeof s2),
                         mx__shape_str(v->shape, v->ndim, s3, sizeof s3));
  const int64_t *qs = q->shape, *ks = k->shape, *vs = v->shape;
  if (ks[0] != qs[0] || vs[0] != qs[0] || ks[1] != vs[1] || ks[2] != vs[2] || qs[3] != ks[3] ||
      ks[1] == 0 || qs[1] % ks[1])
    return mx__set_error(MX_ERR_SHAPE, "%s: incompatible shapes q %s, k %s, v %s (need equal "
                         "batch, q/k head dim, k/v heads and length, and q heads a multiple of "
                         "kv heads)", op, mx__shape_str(qs, 4, s1, sizeof s1),
                         mx__shape_str(ks, 4, s2, sizeof s2), mx__shape_str(vs, 4, s3, sizeof s3));
  mx_dtype out = mx_promote_types(mx_promote_types(q->dtype, k->dtype), v->dtype);
  if (!mx_dtype_is_float(out))
    return mx__set_error(MX_ERR_DTYPE, "%s: unsupported dtype %s (a float type is needed)", op,
                         mx_dtype_name(out));
  *mask_kind = MX__SDPA_MASK_NONE;
  if (mask) {
    int64_t full[4] = {qs[0], qs[1], qs[2], ks[2]}, bs[MX_MAX_NDIM];
    int nb = 0;
    bool ok = mask->ndim <= 4 && !mx__broadcast_shapes(op, mask->shape, mask->ndim, full, 4, bs, &nb);
    for (int d = 0; ok && d < 4; d++) ok = bs[d] == full[d];
    if (!ok) {
      mx_clear_error();
      return mx__set_error(MX_ERR_SHAPE, "%s: mask of shape %s cannot be broadcast to (B, Hq, "
                           "Tq, Tk) = %s", op, mx__shape_str(mask->shape, mask->ndim, s1, sizeof s1),
                           mx__shape_str(full, 4, s2, sizeof s2));
    }
    if (mask->dtype == MX_BOOL) {
      *mask_kind = MX__SDPA_MASK_BOOL;
    } else {
      if (mx_promote_types(mask->dtype, out) != out)
        return mx__set_error(MX_ERR_DTYPE, "%s: mask dtype %s does not promote to the output "
                             "dtype %s", op, mx_dtype_name(mask->dtype), mx_dtype_name(out));
      *mask_kind = MX__SDPA_MASK_ADD;
    }
  }
  *dt = out;
  return MX_OK;
}

mx_array *mx_fast_scaled_dot_product_attention(mx_array *q, mx_array *k, mx_array *v,
                                               double scale, mx_array *mask, bool causal) {
  MX__CHECK_IN("scaled_dot_product_attention", q, k, v);
  mx_dtype dt;
  int kind;
  if (check_sdpa(q, k, v, mask, &dt, &kind)) return NULL;
  mx__sdpa_params p = {.scale = scale, .causal = causal, .mask_kind = kind};
  int64_t shape[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
  mx_array *c[4] = {mx_astype(q, dt), mx_astype(k, dt), mx_astype(v, dt), NULL};
  int n = 3;
  if (mask) c[n++] = kind == MX__SDPA_MASK_BOOL ? mx_array_retain(mask) : mx_astype(mask, dt);
  mx_array *r = NULL;
  if (c[0] && c[1] && c[2] && (!mask || c[3]))
    r = mx__node_new(&def_SDPA, dt, shape, 4, c, n, &p, sizeof p);
  mx_array_free_n(c, 4);
  return r;
}

void mx__fast_sdpa_prefer_blhd(mx_array *o) {
  if (o && o->op == &def_SDPA && !o->buf && o->params)
    ((mx__sdpa_params *)o->params)->out_blhd = true;
}

uint64_t mx__sdpa_cluster_runs;
uint64_t mx__rope_sdpa_fused_runs;

mx_array *mx__fast_sdpa_upto(mx_array *q, mx_array *k, mx_array *v, double scale,
                             mx_array *pos) {
  MX__CHECK_IN("scaled_dot_product_attention", q, k, v, pos);
  mx_dtype dt;
  int kind;
  if (check_sdpa(q, k, v, NULL, &dt, &kind) || check_pos("scaled_dot_product_attention", pos))
    return NULL;
  mx__sdpa_params p = {.scale = scale, .causal = q->shape[2] > 1, .has_len = true};
  int64_t shape[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
  mx_array *c[4] = {mx_astype(q, dt), mx_astype(k, dt), mx_astype(v, dt), mx_array_retain(pos)};
  mx_array *r = NULL;
  if (c[0] && c[1] && c[2])
    r = mx__node_new(&def_SDPA, dt, shape, 4, c, 4, &p, sizeof p);
  mx_array_free_n(c, 4);
  return r;
}

/* The attention probabilities in grouped layout, written with ops:
 * q5 (B, Hkv, G, Tq, D), k5/v5 (B, Hkv, 1, Tk, D), P (B, Hkv, G, Tq, Tk) in
 * the compute dtype; *keep is the boolean keep-mask (NULL when nothing is
 * masked out). All outputs are new references. */
typedef struct {
  mx_array *q5, *k5, *v5, *keep, *p;
} attn_parts;

static void attn_parts_free(attn_parts *a) {
  mx_array_free(a->q5);
  mx_array_free(a->k5);
  mx_array_free(a->v5);
  mx_array_free(a->keep);
  mx_array_free(a->p);
  memset(a, 0, sizeof *a);
}

/* A mask broadcastable to (B, Hq, Tq, Tk) as (mb, 1|Hkv, 1|G, mq, mk). */
static mx_array *mask5(mx_array *m, int64_t hkv, int64_t g) {
  int64_t s4[4] = {1, 1, 1, 1};
  for (int d = 0; d < m->ndim; d++) s4[4 - m->ndim + d] = m->shape[d];
  int64_t s5[5] = {s4[0], s4[1] == 1 ? 1 : hkv, s4[1] == 1 ? 1 : g, s4[2], s4[3]};
  return mx_reshape(m, s5, 5);
}

static int attn_probs(mx_array *q, mx_array *k, mx_array *v, mx_array *mask, int kind,
                      double scale, bool causal, mx_dtype cdt, attn_parts *a) {
  memset(a, 0, sizeof *a);
  int64_t B = q->shape[0], Hq = q->shape[1], Tq = q->shape[2], D = q->shape[3];
  int64_t Hkv = k->shape[1], Tk = k->shape[2], Dv = v->shape[3], G = Hq / Hkv;
  mx__tmp t = {0};
  a->q5 = mx_reshape(mx__keep(&t, mx_astype(q, cdt)), (int64_t[]){B, Hkv, G, Tq, D}, 5);
  a->k5 = mx_reshape(mx__keep(&t, mx_astype(k, cdt)), (int64_t[]){B, Hkv, 1, Tk, D}, 5);
  a->v5 = mx_reshape(mx__keep(&t, mx_astype(v, cdt)), (int64_t[]){B, Hkv, 1, Tk, Dv}, 5);
  mx_array *qs = mx__keep(&t, mx_multiply_scalar(a->q5, scale));
  mx_array *s = mx__keep(&t, mx_matmul(qs, mx__keep(&t, mx_swapaxes(a->k5, -1, -2))));
  if (causal) a->keep = mx_tri(Tq, Tk, Tk - Tq, MX_BOOL);
  if (mask) {
    mx_array *m5 = mx__keep(&t, mask5(mask, Hkv, G));
    if (kind == MX__SDPA_MASK_BOOL) {
      mx_array *k0 = a->keep;
      a->keep = k0 ? mx_logical_and(k0, m5) : mx_array_retain(m5);
      mx_array_free(k0);
    } else {
      s = mx__keep(&t, mx_add(s, mx__keep(&t, mx_astype(m5, cdt))));
    }
  }
  if (a->keep) {
    mx_array *low = mx__keep(&t, mx_array_scalar(lowest_of(cdt), cdt));
    s = mx__keep(&t, mx_where(a->keep, s, low));
  }
  int ax = -1;
  a->p = mx_softmax(s, &ax, 1);
  mx__tmp_free(&t);
  if (!a->q5 || !a->k5 || !a->v5 || !a->p || ((causal || kind == MX__SDPA_MASK_BOOL) && !a->keep)) {
    attn_parts_free(a);
    return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  }
  return MX_OK;
}

mx_array *mx__fast_sdpa_composed(mx_array *q, mx_array *k, mx_array *v, double scale,
                                 mx_array *mask, bool causal) {
  MX__CHECK_IN("scaled_dot_product_attention", q, k, v);
  mx_dtype dt;
  int kind;
  if (check_sdpa(q, k, v, mask, &dt, &kind)) return NULL;
  attn_parts a;
  if (attn_probs(q, k, v, mask, kind, scale, causal, compute_dtype(dt), &a)) return NULL;
  mx__tmp t = {0};
  mx_array *o5 = mx__keep(&t, mx_matmul(a.p, a.v5));
  int64_t shape[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
  mx_array *r = mx_astype(mx__keep(&t, mx_reshape(o5, shape, 4)), dt);
  mx__tmp_free(&t);
  attn_parts_free(&a);
  return r;
}

static bool sdpa_fused_bwd(const mx__sdpa_params *p, const mx_array *q, const mx_array *k,
                           const mx_array *v);
static int vjp_sdpa_fused_path(mx_array *out, mx_array *cot, mx_array **g, const bool *need);

/* With S = scale * q k^T (+ mask), P = softmax(S), O = P v and cotangent g:
 *   dv = P^T g,  dP = g v^T,  dS = P * (dP - sum(dP * P, -1)),
 *   dq = scale * dS k,  dk = scale * dS^T q,  dmask = dS (additive)
 * summed over the G query heads sharing a kv head; masked-out scores get
 * no gradient. This composed backward materialises P (B, Hkv, G, Tq, Tk);
 * where sdpa_fused_bwd allows, vjp_sdpa_fused_path recomputes it block by
 * block in the fused backward ops instead. */
static int vjp_sdpa(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  if (p->has_len)
    return mx__set_error(MX_ERR_UNSUPPORTED, "scaled_dot_product_attention: no gradient over a "
                         "device-side key length");
  mx_array *q = out->inputs[0], *k = out->inputs[1], *v = out->inputs[2];
  if (sdpa_fused_bwd(p, q, k, v)) return vjp_sdpa_fused_path(out, cot, g, need);
  mx_array *mask = p->mask_kind ? out->inputs[3] : NULL;
  mx_dtype cdt = compute_dtype(out->dtype);
  attn_parts a;
  int st = attn_probs(q, k, v, mask, p->mask_kind, p->scale, p->causal, cdt, &a);
  if (st) return st;
  int64_t B = q->shape[0], Hq = q->shape[1], Tq = q->shape[2], Dv = v->shape[3];
  int64_t Hkv = k->shape[1], G = Hq / Hkv;
  int ax_g = 2, ax_last = -1;
  mx__tmp t = {0};
  mx_array *g5 = mx__keep(&t, mx_reshape(mx__keep(&t, mx_astype(cot, cdt)),
                                         (int64_t[]){B, Hkv, G, Tq, Dv}, 5));
  if (need[2]) {
    mx_array *dv = mx__keep(&t, mx_matmul(mx__keep(&t, mx_swapaxes(a.p, -1, -2)), g5));
    st = set_grad(&g[2], mx_sum(dv, &ax_g, 1, false), v);
  }
  bool need_s = need[0] || need[1] || (p->mask_kind == MX__SDPA_MASK_ADD && need[3]);
  if (!st && need_s) {
    mx_array *dp = mx__keep(&t, mx_matmul(g5, mx__keep(&t, mx_swapaxes(a.v5, -1, -2))));
    mx_array *rs = mx__keep(&t, mx_sum(mx__keep(&t, mx_multiply(dp, a.p)), &ax_last, 1, true));
    mx_array *ds = mx__keep(&t, mx_multiply(a.p, mx__keep(&t, mx_subtract(dp, rs))));
    if (a.keep) ds = mx__keep(&t, mx_where(a.keep, ds, mx__keep(&t, mx_array_scalar(0, cdt))));
    if (need[0]) {
      mx_array *dq = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_matmul(ds, a.k5)), p->scale));
      st = set_grad(&g[0], mx_reshape(dq, q->shape, 4), q);
    }
    if (!st && need[1]) {
      mx_array *dk = mx__keep(&t, mx_matmul(mx__keep(&t, mx_swapaxes(ds, -1, -2)), a.q5));
      dk = mx__keep(&t, mx_sum(dk, &ax_g, 1, false));
      st = set_grad(&g[1], mx_multiply_scalar(dk, p->scale), k);
    }
    if (!st && p->mask_kind == MX__SDPA_MASK_ADD && need[3]) {
      int64_t s4[4] = {B, Hq, Tq, k->shape[2]};
      mx_array *ds4 = mx__keep(&t, mx_reshape(ds, s4, 4));
      st = set_grad(&g[3], mx__sum_to_shape(ds4, mask->shape, mask->ndim), mask);
    }
  }
  if (!st && p->mask_kind == MX__SDPA_MASK_BOOL && need[3]) {
    g[3] = mx_zeros_like(mask);
    if (!g[3]) st = mx_last_status();
  }
  mx__tmp_free(&t);
  attn_parts_free(&a);
  return st;
}

/* ======================================================================
 * row_dot (internal; semantics in fast_params.h)
 * ====================================================================== */

/* d a = cot[..., None] * b, d b = cot[..., None] * a: in the compute type
 * (cot's), rounded once to the inputs' dtype. */
static int vjp_row_dot(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  mx_array *a = out->inputs[0], *b = out->inputs[1];
  int ax = -1, st = MX_OK;
  mx__tmp t = {0};
  mx_array *c = mx__keep(&t, mx_expand_dims(mx__keep(&t, mx_astype(cot, out->dtype)), &ax, 1));
  if (need[0])
    st = set_grad(&g[0], mx_multiply(c, mx__keep(&t, mx_astype(b, out->dtype))), a);
  if (!st && need[1])
    st = set_grad(&g[1], mx_multiply(c, mx__keep(&t, mx_astype(a, out->dtype))), b);
  mx__tmp_free(&t);
  return st;
}

static const mx__op_def def_ROW_DOT = {.id = MX_OP_ROW_DOT, .vjp = vjp_row_dot};

mx_array *mx__fast_row_dot(mx_array *a, mx_array *b) {
  MX__CHECK_IN("row_dot", a, b);
  char s1[256], s2[256];
  if (!mx_dtype_is_float(a->dtype) || b->dtype != a->dtype)
    return mx__set_error(MX_ERR_DTYPE, "row_dot: a and b must have one float dtype, got %s and "
                         "%s", mx_dtype_name(a->dtype), mx_dtype_name(b->dtype)), NULL;
  if (a->ndim < 1 || b->ndim != a->ndim ||
      memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim))
    return mx__set_error(MX_ERR_SHAPE, "row_dot: a %s and b %s must have one shape of at least "
                         "one axis", mx__shape_str(a->shape, a->ndim, s1, sizeof s1),
                         mx__shape_str(b->shape, b->ndim, s2, sizeof s2)), NULL;
  mx_dtype dt = a->dtype == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32;
  return mx__node_new(&def_ROW_DOT, dt, a->shape, a->ndim - 1, (mx_array *[]){a, b}, 2, NULL, 0);
}

mx_array *mx__fast_row_dot_of(mx_array *a, mx_array *b, mx_array *src) {
  MX__CHECK_IN("row_dot", a, b, src);
  if (!src->op || src->op->id != MX_OP_SDPA_BWD_Q || src->ninputs != 6 || !src->params ||
      !MX__PARAMS(src, mx__sdpa_params)->delta_of_out || src->inputs[3] != a ||
      src->inputs[5] != b)
    return mx__set_error(MX_ERR_INVALID_ARG, "row_dot: the third input must be the "
                         "sdpa_backward_q node given delta's operands (dout, out)"), NULL;
  mx_array *r = mx__fast_row_dot(a, b);
  if (!r) return NULL;
  mx_array *res = mx__node_new(&def_ROW_DOT, r->dtype, r->shape, r->ndim,
                               (mx_array *[]){a, b, src}, 3, NULL, 0);
  mx_array_free(r);
  return res;
}

/* ======================================================================
 * the fused attention backward: sdpa_logsumexp, sdpa_backward_q,
 * sdpa_backward_kv (semantics in fast_params.h; kernels in
 * src/backend/cpu/fast.c and src/backend/cuda/rope_sdpa.cu)
 * ====================================================================== */

static int vjp_sdpa_fused(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  (void)cot, (void)g, (void)need;
  return mx__set_error(MX_ERR_UNSUPPORTED, "scaled_dot_product_attention: no second-order "
                       "gradient through the fused backward (%s); set MXC_SDPA_FUSED_BWD=0",
                       mx__op_names[out->op->id]);
}

static const mx__op_def def_SDPA_LSE = {.id = MX_OP_SDPA_LSE, .vjp = vjp_sdpa_fused};
static const mx__op_def def_SDPA_BWD_Q = {.id = MX_OP_SDPA_BWD_Q, .vjp = vjp_sdpa_fused};
static const mx__op_def def_SDPA_BWD_KV = {.id = MX_OP_SDPA_BWD_KV, .vjp = vjp_sdpa_fused};

/* Checks the inputs of the three ops: q (B, Hq, Tq, D), k (B, Hkv, Tk, D)
 * of one float dtype [, v (B, Hkv, Tk, Dv), dout (B, Hq, Tq, Dv) of that
 * dtype, lse and delta float32 (B, Hq, Tq)]; causal needs Tq <= Tk. */
static int check_sdpa_bwd(const char *op, mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                          mx_array *lse, mx_array *delta, bool causal) {
  char s1[256], s2[256];
  if (q->ndim != 4 || k->ndim != 4)
    return mx__set_error(MX_ERR_SHAPE, "%s: q and k must be 4-d (B, H, T, D), got %s and %s", op,
                         mx__shape_str(q->shape, q->ndim, s1, sizeof s1),
                         mx__shape_str(k->shape, k->ndim, s2, sizeof s2));
  const int64_t *qs = q->shape, *ks = k->shape;
  if (ks[0] != qs[0] || ks[3] != qs[3] || ks[1] == 0 || qs[1] % ks[1])
    return mx__set_error(MX_ERR_SHAPE, "%s: incompatible shapes q %s, k %s (need equal batch and "
                         "head size, and q heads a multiple of kv heads)", op,
                         mx__shape_str(qs, 4, s1, sizeof s1), mx__shape_str(ks, 4, s2, sizeof s2));
  if (!mx_dtype_is_float(q->dtype) || k->dtype != q->dtype)
    return mx__set_error(MX_ERR_DTYPE, "%s: q and k must have one float dtype, got %s and %s", op,
                         mx_dtype_name(q->dtype), mx_dtype_name(k->dtype));
  if (causal && qs[2] > ks[2])
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: causal attention needs Tq <= Tk, got q %s and "
                         "k %s", op, mx__shape_str(qs, 4, s1, sizeof s1),
                         mx__shape_str(ks, 4, s2, sizeof s2));
  if (!v) return MX_OK;
  if (v->ndim != 4 || v->shape[0] != ks[0] || v->shape[1] != ks[1] || v->shape[2] != ks[2])
    return mx__set_error(MX_ERR_SHAPE, "%s: v of shape %s does not match k %s (need (B, Hkv, Tk, "
                         "Dv))", op, mx__shape_str(v->shape, v->ndim, s1, sizeof s1),
                         mx__shape_str(ks, 4, s2, sizeof s2));
  int64_t os[4] = {qs[0], qs[1], qs[2], v->shape[3]};
  if (dout->ndim != 4 || memcmp(dout->shape, os, sizeof os))
    return mx__set_error(MX_ERR_SHAPE, "%s: dout of shape %s, expected (B, Hq, Tq, Dv) = %s", op,
                         mx__shape_str(dout->shape, dout->ndim, s1, sizeof s1),
                         mx__shape_str(os, 4, s2, sizeof s2));
  if (v->dtype != q->dtype || dout->dtype != q->dtype)
    return mx__set_error(MX_ERR_DTYPE, "%s: v and dout must have q's dtype %s, got %s and %s", op,
                         mx_dtype_name(q->dtype), mx_dtype_name(v->dtype),
                         mx_dtype_name(dout->dtype));
  mx_array *rows[2] = {lse, delta};
  const char *names[2] = {"lse", "delta"};
  for (int i = 0; i < 2; i++) {
    mx_array *a = rows[i];
    if (a->ndim != 3 || memcmp(a->shape, qs, 3 * sizeof(int64_t)))
      return mx__set_error(MX_ERR_SHAPE, "%s: %s of shape %s, expected (B, Hq, Tq) = %s", op,
                           names[i], mx__shape_str(a->shape, a->ndim, s1, sizeof s1),
                           mx__shape_str(qs, 3, s2, sizeof s2));
    if (a->dtype != MX_FLOAT32)
      return mx__set_error(MX_ERR_DTYPE, "%s: %s must be float32, got %s", op, names[i],
                           mx_dtype_name(a->dtype));
  }
  return MX_OK;
}

mx_array *mx__fast_sdpa_lse(mx_array *q, mx_array *k, double scale, bool causal) {
  MX__CHECK_IN("sdpa_logsumexp", q, k);
  if (check_sdpa_bwd("sdpa_logsumexp", q, k, NULL, NULL, NULL, NULL, causal)) return NULL;
  mx__sdpa_params p = {.scale = scale, .causal = causal};
  mx_array *ins[2] = {q, k};
  return mx__node_new(&def_SDPA_LSE, MX_FLOAT32, q->shape, 3, ins, 2, &p, sizeof p);
}

mx_array *mx__fast_sdpa_lse_of(mx_array *q, mx_array *k, mx_array *fwd, double scale,
                               bool causal) {
  MX__CHECK_IN("sdpa_logsumexp", q, k, fwd);
  if (check_sdpa_bwd("sdpa_logsumexp", q, k, NULL, NULL, NULL, NULL, causal)) return NULL;
  if (fwd->ndim != 4 || fwd->shape[0] != q->shape[0] || fwd->shape[1] != q->shape[1] ||
      fwd->shape[2] != q->shape[2]) {
    char s1[256], s2[256];
    return mx__set_error(MX_ERR_SHAPE, "sdpa_logsumexp: attention output %s does not match q %s",
                         mx__shape_str(fwd->shape, fwd->ndim, s1, sizeof s1),
                         mx__shape_str(q->shape, q->ndim, s2, sizeof s2)), NULL;
  }
  mx__sdpa_params p = {.scale = scale, .causal = causal};
  mx_array *ins[3] = {q, k, fwd};
  return mx__node_new(&def_SDPA_LSE, MX_FLOAT32, q->shape, 3, ins, 3, &p, sizeof p);
}

static mx_array *sdpa_bwd_node(const mx__op_def *def, const char *op, mx_array *q, mx_array *k,
                               mx_array *v, mx_array *dout, mx_array *lse, mx_array *delta,
                               double scale, bool causal) {
  MX__CHECK_IN(op, q, k, v, dout, lse, delta);
  if (check_sdpa_bwd(op, q, k, v, dout, lse, delta, causal)) return NULL;
  mx__sdpa_params p = {.scale = scale, .causal = causal};
  int64_t shape[5] = {q->shape[0], q->shape[1], q->shape[2], q->shape[3], 0};
  int nd = 4;
  if (def->id == MX_OP_SDPA_BWD_KV) {
    if (v->shape[3] != k->shape[3])
      return mx__set_error(MX_ERR_SHAPE, "%s: needs v's head size Dv = %lld equal to D = %lld", op,
                           (long long)v->shape[3], (long long)k->shape[3]), NULL;
    int64_t kv[5] = {2, k->shape[0], k->shape[1], k->shape[2], k->shape[3]};
    memcpy(shape, kv, sizeof kv);
    nd = 5;
  }
  mx_array *ins[6] = {q, k, v, dout, lse, delta};
  return mx__node_new(def, q->dtype, shape, nd, ins, 6, &p, sizeof p);
}

mx_array *mx__fast_sdpa_bwd_q(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                              mx_array *lse, mx_array *delta, double scale, bool causal) {
  return sdpa_bwd_node(&def_SDPA_BWD_Q, "sdpa_backward_q", q, k, v, dout, lse, delta, scale,
                       causal);
}

mx_array *mx__fast_sdpa_bwd_kv(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                               mx_array *lse, mx_array *delta, double scale, bool causal) {
  return sdpa_bwd_node(&def_SDPA_BWD_KV, "sdpa_backward_kv", q, k, v, dout, lse, delta, scale,
                       causal);
}

mx_array *mx__fast_sdpa_bwd_q_delta(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                                    mx_array *lse, mx_array *out, double scale, bool causal) {
  const char *op = "sdpa_backward_q";
  MX__CHECK_IN(op, q, k, v, dout, lse, out);
  /* lse stands in for delta in the shared checks; out is checked here */
  if (check_sdpa_bwd(op, q, k, v, dout, lse, lse, causal)) return NULL;
  if (out->ndim != 4 || memcmp(out->shape, dout->shape, 4 * sizeof(int64_t))) {
    char s1[256], s2[256];
    return mx__set_error(MX_ERR_SHAPE, "%s: out of shape %s, expected dout's %s", op,
                         mx__shape_str(out->shape, out->ndim, s1, sizeof s1),
                         mx__shape_str(dout->shape, 4, s2, sizeof s2)), NULL;
  }
  if (out->dtype != q->dtype)
    return mx__set_error(MX_ERR_DTYPE, "%s: out must have q's dtype %s, got %s", op,
                         mx_dtype_name(q->dtype), mx_dtype_name(out->dtype)), NULL;
  mx__sdpa_params p = {.scale = scale, .causal = causal, .delta_of_out = true};
  mx_array *ins[6] = {q, k, v, dout, lse, out};
  return mx__node_new(&def_SDPA_BWD_Q, q->dtype, q->shape, 4, ins, 6, &p, sizeof p);
}

/* Whether vjp_sdpa takes the fused backward. MXC_SDPA_FUSED_BWD: "0"
 * never, "1" whenever the op allows it (any device and float dtype: the
 * tests use it on the CPU), otherwise (unset, "auto") when the gradient
 * runs on the GPU in a case the tensor-core kernels take (f16/bf16, head
 * size 64 or 128: the conditions of mx__cuda_fa2_ok in
 * src/backend/cuda/flash_attn2.cu, restated here so that the core builds
 * without CUDA). The ops need no mask, no device-side key length, D == Dv
 * and, when causal, Tq <= Tk. */
static bool sdpa_fused_bwd(const mx__sdpa_params *p, const mx_array *q, const mx_array *k,
                           const mx_array *v) {
  const char *e = getenv("MXC_SDPA_FUSED_BWD");
  if (e && !strcmp(e, "0")) return false;
  int64_t Tq = q->shape[2], Tk = k->shape[2], D = q->shape[3], Dv = v->shape[3];
  if (p->mask_kind != MX__SDPA_MASK_NONE || p->has_len || D != Dv || (p->causal && Tq > Tk))
    return false;
  if (e && !strcmp(e, "1")) return true;
  mx_dtype dt = q->dtype;
  return mx__default_device_now() == MX_GPU && (dt == MX_FLOAT16 || dt == MX_BFLOAT16) &&
         (D == 64 || D == 128) && Tq > 0 && Tk > 0 && q->size > 0;
}

/* The fused backward: delta = sum(dout * out, -1) in float32 (row_dot),
 * lse of the scores, then dq and [dk, dv] from the two backward ops. */
static int vjp_sdpa_fused_path(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  mx_array *q = out->inputs[0], *k = out->inputs[1], *v = out->inputs[2];
  int st = MX_OK;
  mx__tmp t = {0};
  mx_array *dout = mx__keep(&t, mx_astype(cot, q->dtype));
  /* dq first, forming delta itself and keeping it for [dk, dv] (one pass
   * less over dout and out; MXC_SDPA_DQ_DELTA=0: row_dot first, for A/B) */
  const char *dqd = getenv("MXC_SDPA_DQ_DELTA");
  const bool dq_delta = need[0] && (need[1] || need[2]) && q->dtype != MX_FLOAT64 &&
                        !(dqd && !strcmp(dqd, "0"));
  mx_array *delta = NULL;
  if (!dq_delta) {
    delta = mx__keep(&t, mx__fast_row_dot(dout, out));
    if (delta && delta->dtype != MX_FLOAT32) delta = mx__keep(&t, mx_astype(delta, MX_FLOAT32));
  }
  /* the forward has not run yet (transforms build the backward before
   * anything is evaluated): ask it to keep each row's log-sum-exp, which
   * sdpa_logsumexp then shares (MXC_SDPA_KEEP_LSE=0: recompute, for A/B) */
  const char *kl = getenv("MXC_SDPA_KEEP_LSE");
  bool keep = !out->buf && out->params && !(kl && !strcmp(kl, "0"));
  if (keep) ((mx__sdpa_params *)out->params)->keep_lse = true;
  mx_array *lse = mx__keep(&t, keep ? mx__fast_sdpa_lse_of(q, k, out, p->scale, p->causal)
                                    : mx__fast_sdpa_lse(q, k, p->scale, p->causal));
  if (dq_delta) {
    mx_array *dq = mx__fast_sdpa_bwd_q_delta(q, k, v, dout, lse, out, p->scale, p->causal);
    delta = dq ? mx__keep(&t, mx__fast_row_dot_of(dout, out, dq)) : NULL;
    st = set_grad(&g[0], dq, q);
  } else if (need[0]) {
    st = set_grad(&g[0], mx__fast_sdpa_bwd_q(q, k, v, dout, lse, delta, p->scale, p->causal), q);
  }
  if (!st && (need[1] || need[2])) {
    mx_array *dkv =
        mx__keep(&t, mx__fast_sdpa_bwd_kv(q, k, v, dout, lse, delta, p->scale, p->causal));
    /* v's heads were a transposed (B, T, H, D) array: [dk, dv] stored so
     * that both go back there as views (MXC_SDPA_KV_BLHD=0: rows, A/B) */
    static int kvb = -1;
    if (dkv && bthd_transposed(v) && mx__env_on("MXC_SDPA_KV_BLHD", &kvb))
      ((mx__sdpa_params *)dkv->params)->out_blhd = true;
    for (int i = 0; i < 2 && !st; i++) {
      if (!need[1 + i]) continue;
      mx_array *part = mx__keep(&t, mx_slice_axis(dkv, 0, i, i + 1, 1));
      st = set_grad(&g[1 + i], part ? mx_reshape(part, k->shape, 4) : NULL, i ? v : k);
    }
  }
  mx__tmp_free(&t);
  return st;
}

/* ======================================================================
 * softmax_cross_entropy (internal; semantics in fast_params.h)
 * ====================================================================== */

/* logits (..., V) float, targets (...) integer with logits' leading shape */
static int check_ce(const char *op, mx_array *logits, mx_array *targets) {
  if (!mx_dtype_is_float(logits->dtype))
    return mx__set_error(MX_ERR_DTYPE, "%s: logits must be a float type, not %s", op,
                         mx_dtype_name(logits->dtype));
  if (!mx_dtype_is_integer(targets->dtype))
    return mx__set_error(MX_ERR_DTYPE, "%s: targets must be integers, not %s", op,
                         mx_dtype_name(targets->dtype));
  if (logits->ndim < 1 || targets->ndim != logits->ndim - 1 ||
      memcmp(targets->shape, logits->shape, sizeof(int64_t) * (size_t)targets->ndim)) {
    char sa[256], sb[256];
    return mx__set_error(MX_ERR_SHAPE, "%s: targets %s do not match logits %s without the "
                         "class axis", op, mx__shape_str(targets->shape, targets->ndim, sa, sizeof sa),
                         mx__shape_str(logits->shape, logits->ndim, sb, sizeof sb));
  }
  return MX_OK;
}

static mx_dtype ce_loss_dtype(mx_dtype logits) {
  return logits == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32;
}

mx_array *mx__fast_softmax_ce(mx_array *logits, mx_array *targets) {
  MX__CHECK_IN("softmax_cross_entropy", logits, targets);
  if (check_ce("softmax_cross_entropy", logits, targets)) return NULL;
  mx_array *t = mx_astype(targets, MX_INT32);
  mx_array *r = t ? mx__node_new(&def_SOFTMAX_CE, ce_loss_dtype(logits->dtype), targets->shape,
                                 targets->ndim, (mx_array *[]){logits, t}, 2, NULL, 0)
                  : NULL;
  mx_array_free(t);
  return r;
}

mx_array *mx__fast_softmax_ce_grad(mx_array *logits, mx_array *targets, mx_array *cot) {
  return mx__fast_softmax_ce_grad_loss(logits, targets, cot, NULL);
}

mx_array *mx__fast_softmax_ce_grad_loss(mx_array *logits, mx_array *targets, mx_array *cot,
                                        mx_array *loss) {
  MX__CHECK_IN("softmax_cross_entropy_backward", logits, targets);
  MX__CHECK_IN("softmax_cross_entropy_backward", cot);
  if (check_ce("softmax_cross_entropy_backward", logits, targets)) return NULL;
  if (cot->ndim != targets->ndim ||
      memcmp(cot->shape, targets->shape, sizeof(int64_t) * (size_t)cot->ndim)) {
    char sa[256], sb[256];
    return mx__set_error(MX_ERR_SHAPE, "softmax_cross_entropy_backward: cotangent %s, not %s",
                         mx__shape_str(cot->shape, cot->ndim, sa, sizeof sa),
                         mx__shape_str(targets->shape, targets->ndim, sb, sizeof sb)), NULL;
  }
  if (loss && (loss->dtype != ce_loss_dtype(logits->dtype) || loss->ndim != targets->ndim ||
               memcmp(loss->shape, targets->shape, sizeof(int64_t) * (size_t)loss->ndim)))
    return mx__set_error(MX_ERR_SHAPE, "softmax_cross_entropy_backward: the loss given must "
                         "be the forward's (%s, the targets' shape)",
                         mx_dtype_name(ce_loss_dtype(logits->dtype))), NULL;
  mx_array *t = mx_astype(targets, MX_INT32);
  mx_array *c = mx_astype(cot, ce_loss_dtype(logits->dtype));
  mx_array *r = t && c ? mx__node_new(&def_SOFTMAX_CE_GRAD, logits->dtype, logits->shape,
                                      logits->ndim, (mx_array *[]){logits, t, c, loss},
                                      loss ? 4 : 3, NULL, 0)
                       : NULL;
  mx_array_free(t);
  mx_array_free(c);
  return r;
}

/* d loss / d logits = cot (softmax - onehot): the backward op */
static int vjp_softmax_ce(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  if (!need[0]) return MX_OK;
  mx_array *x = out->inputs[0];
  static int hint = -1; /* MXC_CE_LOSS_HINT=0: the backward without the loss (A/B) */
  return set_grad(&g[0],
                  mx__fast_softmax_ce_grad_loss(x, out->inputs[1], cot,
                                                mx__env_on("MXC_CE_LOSS_HINT", &hint) ? out : NULL),
                  x);
}

/* y = c (p - onehot(t)), p = softmax(x); with cotangent h (x's shape):
 *   dx = c p (h - sum(p h)),   dc = sum(p h) - h[t]   (sums over the class axis)
 * in float32 (float64), from ops. */
static int vjp_softmax_ce_grad(mx_array *out, mx_array *h, mx_array **g, const bool *need) {
  mx_array *x = out->inputs[0], *t = out->inputs[1], *c = out->inputs[2];
  mx_dtype ct = ce_loss_dtype(x->dtype);
  int ax = x->ndim - 1;
  mx__tmp k = {0};
  mx_array *xf = mx__keep(&k, mx_astype(x, ct)), *hf = mx__keep(&k, mx_astype(h, ct));
  mx_array *p = mx__keep(&k, mx_softmax(xf, &ax, 1));
  mx_array *ph = mx__keep(&k, mx_multiply(p, hf));
  mx_array *sph = mx__keep(&k, mx_sum(ph, &ax, 1, false));
  int st = MX_OK;
  if (need[0]) {
    mx_array *d = mx__keep(&k, mx_subtract(hf, mx__keep(&k, mx_expand_dims(sph, &ax, 1))));
    mx_array *pd = mx__keep(&k, mx_multiply(p, d));
    st = set_grad(&g[0], mx_multiply(pd, mx__keep(&k, mx_expand_dims(c, &ax, 1))), x);
  }
  if (!st && need[2]) {
    mx_array *te = mx__keep(&k, mx_expand_dims(t, &ax, 1));
    mx_array *ht = mx__keep(&k, mx_squeeze(mx__keep(&k, mx_take_along_axis(hf, te, ax)), &ax, 1));
    st = set_grad(&g[2], mx_subtract(sph, ht), c);
  }
  mx__tmp_free(&k);
  return st;
}
