/* quantized.c — affine quantization in MLX's format: quantize, dequantize
 * and quantized_matmul (primitives QUANTIZE_PACK, DEQUANTIZE,
 * QUANTIZED_MATMUL). Builders check shapes and dtypes; VJPs are written with
 * ops. Format and rounding: see quantized_params.h. Kernels:
 * src/backend/cpu/quantized.c.
 *
 * Gradients: quantize has none (its outputs are integer codes and
 * statistics); dequantize and quantized_matmul are differentiable with
 * respect to x, the scales and the biases, never the packed uint32 weights
 * (asking for that gradient is an error naming the op). */
#include <string.h>

#include "ops_internal.h"
#include "quantized_params.h"

static int vjp_dequantize(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static int vjp_qmm(mx_array *out, mx_array *cot, mx_array **g, const bool *need);

static const mx__op_def def_QUANTIZE_PACK = {.id = MX_OP_QUANTIZE_PACK};
static const mx__op_def def_DEQUANTIZE = {.id = MX_OP_DEQUANTIZE, .vjp = vjp_dequantize};
static const mx__op_def def_QUANTIZED_MATMUL = {.id = MX_OP_QUANTIZED_MATMUL, .vjp = vjp_qmm};

static int check_format(const char *op, int group_size, int bits) {
  if (group_size != 32 && group_size != 64 && group_size != 128)
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: group_size must be 32, 64 or 128, got %d", op,
                         group_size);
  if (bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: bits must be 2, 3, 4, 5, 6 or 8, got %d", op,
                         bits);
  return MX_OK;
}

static bool is_float(mx_dtype dt) { return mx_dtype_is_float(dt); }

/* ---- quantize ----------------------------------------------------------------- */

int mx_quantize(mx_array *w, int group_size, int bits, mx_array **wq, mx_array **scales,
                mx_array **biases) {
  if (wq) *wq = NULL;
  if (scales) *scales = NULL;
  if (biases) *biases = NULL;
  if (!wq || !scales || !biases)
    return mx__set_error(MX_ERR_INVALID_ARG, "quantize: output pointers must not be NULL");
  if (!w) return mx_last_status() ? mx_last_status()
                                  : mx__set_error(MX_ERR_INVALID_ARG, "quantize: w is NULL");
  if (check_format("quantize", group_size, bits)) return mx_last_status();
  char s1[256];
  if (!is_float(w->dtype))
    return mx__set_error(MX_ERR_DTYPE, "quantize: w must be a floating-point array, got %s",
                         mx_dtype_name(w->dtype));
  if (w->ndim < 1)
    return mx__set_error(MX_ERR_SHAPE, "quantize: w must have at least 1 dimension, got %s",
                         mx__shape_str(w->shape, w->ndim, s1, sizeof s1));
  int64_t K = w->shape[w->ndim - 1];
  if (K % group_size)
    return mx__set_error(MX_ERR_SHAPE,
                         "quantize: the last axis of w %s (%lld) is not divisible by "
                         "group_size %d",
                         mx__shape_str(w->shape, w->ndim, s1, sizeof s1), (long long)K,
                         group_size);
  int64_t shp[MX_MAX_NDIM];
  memcpy(shp, w->shape, sizeof(int64_t) * (size_t)w->ndim);
  mx_array *r[3] = {0};
  for (int what = 0; what < 3; what++) {
    mx__quantize_params p = {group_size, bits, what};
    shp[w->ndim - 1] = what == MX__QUANT_PACKED ? K * bits / 32 : K / group_size;
    r[what] = mx__node_new(&def_QUANTIZE_PACK, what == MX__QUANT_PACKED ? MX_UINT32 : w->dtype,
                           shp, w->ndim, &w, 1, &p, sizeof p);
    if (!r[what]) {
      for (int i = 0; i < what; i++) mx_array_free(r[i]);
      return mx_last_status();
    }
  }
  *wq = r[0];
  *scales = r[1];
  *biases = r[2];
  return MX_OK;
}

/* ---- shape checks shared by dequantize and quantized_matmul ------------------- */

/* wq (..., P) uint32 with P = L*bits/32 and scales, biases (..., L/group_size)
 * with the same leading shape. Writes L (the unpacked last axis). */
int mx__check_packed(const char *op, mx_array *wq, mx_array *scales, mx_array *biases,
                        int group_size, int bits, int64_t *L) {
  char s1[256], s2[256], s3[256];
  if (check_format(op, group_size, bits)) return mx_last_status();
  if (wq->dtype != MX_UINT32)
    return mx__set_error(MX_ERR_DTYPE, "%s: the packed weights must be uint32, got %s", op,
                         mx_dtype_name(wq->dtype));
  if (!is_float(scales->dtype) || !is_float(biases->dtype))
    return mx__set_error(MX_ERR_DTYPE, "%s: scales and biases must be floating point, got %s and %s",
                         op, mx_dtype_name(scales->dtype), mx_dtype_name(biases->dtype));
  bool ok = wq->ndim >= 1 && scales->ndim == wq->ndim && biases->ndim == wq->ndim;
  for (int d = 0; ok && d < wq->ndim - 1; d++)
    ok = scales->shape[d] == wq->shape[d] && biases->shape[d] == wq->shape[d];
  int64_t P = ok ? wq->shape[wq->ndim - 1] : 0;
  int64_t G = ok ? scales->shape[wq->ndim - 1] : 0;
  ok = ok && biases->shape[wq->ndim - 1] == G && (P * 32) % bits == 0 &&
       (P * 32 / bits) == G * group_size;
  if (!ok)
    return mx__set_error(MX_ERR_SHAPE,
                         "%s: packed weights %s, scales %s and biases %s do not match "
                         "group_size %d and bits %d (expected (..., L*%d/32) and (..., L/%d))",
                         op, mx__shape_str(wq->shape, wq->ndim, s1, sizeof s1),
                         mx__shape_str(scales->shape, scales->ndim, s2, sizeof s2),
                         mx__shape_str(biases->shape, biases->ndim, s3, sizeof s3), group_size,
                         bits, bits, group_size);
  *L = G * group_size;
  return MX_OK;
}

/* ---- dequantize --------------------------------------------------------------- */

mx_array *mx_dequantize(mx_array *wq, mx_array *scales, mx_array *biases, int group_size,
                        int bits) {
  MX__CHECK_IN("dequantize", wq, scales, biases);
  int64_t L;
  if (mx__check_packed("dequantize", wq, scales, biases, group_size, bits, &L)) return NULL;
  mx_dtype dt = mx_promote_types(scales->dtype, biases->dtype);
  mx__tmp t = {0};
  mx_array *in[3] = {wq, mx__keep(&t, mx_astype(scales, dt)), mx__keep(&t, mx_astype(biases, dt))};
  mx_array *r = NULL;
  if (in[1] && in[2]) {
    int64_t shp[MX_MAX_NDIM];
    memcpy(shp, wq->shape, sizeof(int64_t) * (size_t)wq->ndim);
    shp[wq->ndim - 1] = L;
    mx__dequantize_params p = {group_size, bits};
    r = mx__node_new(&def_DEQUANTIZE, dt, shp, wq->ndim, in, 3, &p, sizeof p);
  }
  mx__tmp_free(&t);
  return r;
}

/* ---- quantized_matmul ---------------------------------------------------------- */

mx_array *mx_quantized_matmul(mx_array *x, mx_array *wq, mx_array *scales, mx_array *biases,
                              bool transpose, int group_size, int bits) {
  MX__CHECK_IN("quantized_matmul", x, wq, scales, biases);
  char s1[256], s2[256];
  int64_t L;
  if (mx__check_packed("quantized_matmul", wq, scales, biases, group_size, bits, &L)) return NULL;
  if (wq->ndim != 2) {
    mx__set_error(MX_ERR_SHAPE, "quantized_matmul: the packed weights must be 2-d, got %s",
                  mx__shape_str(wq->shape, wq->ndim, s1, sizeof s1));
    return NULL;
  }
  if (x->ndim < 1) {
    mx__set_error(MX_ERR_SHAPE, "quantized_matmul: x must have at least 1 dimension, got %s",
                  mx__shape_str(x->shape, x->ndim, s1, sizeof s1));
    return NULL;
  }
  mx_dtype dt = mx_promote_types(mx_promote_types(x->dtype, scales->dtype), biases->dtype);
  if (!is_float(dt)) {
    mx__set_error(MX_ERR_DTYPE, "quantized_matmul: x must be floating point, got %s",
                  mx_dtype_name(x->dtype));
    return NULL;
  }
  /* W is (N, K) when transposed (groups along K), else (K, N) */
  int64_t K = transpose ? L : wq->shape[0];
  int64_t N = transpose ? wq->shape[0] : L;
  if (x->shape[x->ndim - 1] != K) {
    int64_t ws[2] = {transpose ? N : K, transpose ? K : N};
    mx__set_error(MX_ERR_SHAPE,
                  "quantized_matmul: x %s does not match the weight (%s %s, transpose=%s): the "
                  "last axis of x must be %lld",
                  mx__shape_str(x->shape, x->ndim, s1, sizeof s1), "dequantized shape",
                  mx__shape_str(ws, 2, s2, sizeof s2), transpose ? "true" : "false",
                  (long long)K);
    return NULL;
  }
  mx__tmp t = {0};
  mx_array *in[4] = {mx__keep(&t, mx_astype(x, dt)), wq, mx__keep(&t, mx_astype(scales, dt)),
                     mx__keep(&t, mx_astype(biases, dt))};
  mx_array *r = NULL;
  if (in[0] && in[2] && in[3]) {
    int64_t shp[MX_MAX_NDIM];
    memcpy(shp, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shp[x->ndim - 1] = N;
    mx__qmm_params p = {group_size, bits, transpose};
    r = mx__node_new(&def_QUANTIZED_MATMUL, dt, shp, x->ndim, in, 4, &p, sizeof p);
  }
  mx__tmp_free(&t);
  return r;
}

/* ---- VJPs -------------------------------------------------------------------------- */

static int no_packed_grad(const char *op) {
  return mx__set_error(MX_ERR_UNSUPPORTED,
                       "%s: no gradient with respect to the packed uint32 weights (freeze "
                       "them, or differentiate with respect to x, the scales or the biases)",
                       op);
}

/* Gradients of the scales and biases of a quantized weight given gW, the
 * gradient of the dequantized weight (same shape as it, (..., L)):
 *   d scales[g] = sum_j gW[g, j] * q[g, j],  d biases[g] = sum_j gW[g, j]. */
static int affine_grads(mx_array *gW, mx_array *wq, mx_array *scales, mx_array *biases,
                        int group_size, int bits, const bool *need, mx_array **gs,
                        mx_array **gb) {
  mx__tmp t = {0};
  int64_t shp[MX_MAX_NDIM + 1];
  int nd = gW->ndim;
  memcpy(shp, gW->shape, sizeof(int64_t) * (size_t)nd);
  shp[nd - 1] = gW->shape[nd - 1] / group_size;
  shp[nd] = group_size;
  int last = nd;
  mx_array *g3 = mx__keep(&t, mx_reshape(gW, shp, nd + 1));
  if (need[0] && g3) {
    /* q as floats: dequantize with unit scales and zero biases (exact) */
    mx_array *one = mx__keep(&t, mx_ones_like(scales));
    mx_array *zero = mx__keep(&t, mx_zeros_like(biases));
    mx_array *q = mx__keep(&t, mx_dequantize(wq, one, zero, group_size, bits));
    mx_array *q3 = mx__keep(&t, mx_reshape(q, shp, nd + 1));
    mx_array *qc = mx__keep(&t, mx_astype(q3, gW->dtype));
    mx_array *prod = mx__keep(&t, mx_multiply(g3, qc));
    mx_array *s = mx__keep(&t, mx_sum(prod, &last, 1, false));
    *gs = s ? mx_astype(s, scales->dtype) : NULL;
    if (!*gs) goto fail;
  }
  if (need[1] && g3) {
    mx_array *s = mx__keep(&t, mx_sum(g3, &last, 1, false));
    *gb = s ? mx_astype(s, biases->dtype) : NULL;
    if (!*gb) goto fail;
  }
  if (!g3) goto fail;
  mx__tmp_free(&t);
  return MX_OK;
fail:
  mx__tmp_free(&t);
  return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
}

static int vjp_dequantize(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__dequantize_params *p = MX__PARAMS(out, mx__dequantize_params);
  if (need[0]) return no_packed_grad("dequantize");
  return affine_grads(cot, out->inputs[0], out->inputs[1], out->inputs[2], p->group_size,
                      p->bits, need + 1, &g[1], &g[2]);
}

static int vjp_qmm(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__qmm_params *p = MX__PARAMS(out, mx__qmm_params);
  mx_array *x = out->inputs[0], *wq = out->inputs[1], *sc = out->inputs[2], *bi = out->inputs[3];
  if (need[1]) return no_packed_grad("quantized_matmul");
  if (need[0]) {
    /* x @ W^T -> cot @ W;  x @ W -> cot @ W^T */
    g[0] = mx_quantized_matmul(cot, wq, sc, bi, !p->transpose, p->group_size, p->bits);
    if (!g[0]) return mx_last_status();
  }
  if (need[2] || need[3]) {
    mx__tmp t = {0};
    int64_t K = x->shape[x->ndim - 1], N = out->shape[out->ndim - 1];
    int64_t xs[2] = {-1, K}, cs[2] = {-1, N};
    mx_array *x2 = mx__keep(&t, mx_reshape(x, xs, 2));
    mx_array *c2 = mx__keep(&t, mx_reshape(cot, cs, 2));
    /* gradient of the dequantized weight: (N, K) = cot^T x, or (K, N) = x^T cot */
    mx_array *gW = NULL;
    if (p->transpose) {
      mx_array *ct = mx__keep(&t, mx_transpose(c2, NULL, 0));
      gW = mx__keep(&t, mx_matmul(ct, x2));
    } else {
      mx_array *xt = mx__keep(&t, mx_transpose(x2, NULL, 0));
      gW = mx__keep(&t, mx_matmul(xt, c2));
    }
    int rc = gW ? affine_grads(gW, wq, sc, bi, p->group_size, p->bits, need + 2, &g[2], &g[3])
                : (mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL);
    mx__tmp_free(&t);
    if (rc) return rc;
  }
  return MX_OK;
}
