/* linalg.c — matmul and addmm (one primitive, MATMUL): builder and VJP.
 *
 * NumPy/MLX semantics: a 1-d left operand is a row vector (1, K) and a 1-d
 * right operand a column vector (K, 1), the added axis is removed from the
 * result; the batch axes (all but the last two) broadcast. Floating-point
 * dtypes only (as MLX); mixed dtypes promote (mx_promote_types), an integer
 * operand of a float product is cast.
 *
 * The primitive sees a (..., M, K) and b (..., K, N) with equal batch
 * shapes (broadcast_to views), and for addmm c broadcast to (..., M, N),
 * all of the output dtype: out = alpha * (a @ b) + beta * c. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "linalg_params.h"
#include "ops_internal.h"

static int vjp_matmul(mx_array *out, mx_array *cot, mx_array **g, const bool *need);
static const mx__op_def def_MATMUL = {.id = MX_OP_MATMUL, .vjp = vjp_matmul};

static mx_array *matmul_build(const char *op, mx_array *a, mx_array *b, mx_array *c,
                              double alpha, double beta) {
  char s1[256], s2[256];
  if (a->ndim == 0 || b->ndim == 0) {
    mx__set_error(MX_ERR_SHAPE, "%s: operands must have at least 1 dimension, got %s and %s", op,
                  mx__shape_str(a->shape, a->ndim, s1, sizeof s1),
                  mx__shape_str(b->shape, b->ndim, s2, sizeof s2));
    return NULL;
  }
  mx_dtype dt = mx_promote_types(a->dtype, b->dtype);
  if (c) dt = mx_promote_types(dt, c->dtype);
  if (!mx_dtype_is_float(dt)) {
    mx__set_error(MX_ERR_DTYPE, "%s: only floating-point types are supported, got %s and %s%s%s",
                  op, mx_dtype_name(a->dtype), mx_dtype_name(b->dtype), c ? " and " : "",
                  c ? mx_dtype_name(c->dtype) : "");
    return NULL;
  }
  /* operand shapes as matrices */
  int64_t as[MX_MAX_NDIM + 1], bs[MX_MAX_NDIM + 1];
  int an = a->ndim, bn = b->ndim;
  memcpy(as, a->shape, sizeof(int64_t) * (size_t)an);
  memcpy(bs, b->shape, sizeof(int64_t) * (size_t)bn);
  bool a_vec = an == 1, b_vec = bn == 1;
  if (a_vec) {
    as[1] = as[0];
    as[0] = 1;
    an = 2;
  }
  if (b_vec) {
    bs[1] = 1;
    bn = 2;
  }
  if (as[an - 1] != bs[bn - 2]) {
    mx__set_error(MX_ERR_SHAPE,
                  "%s: shapes %s and %s are not aligned (last axis of a %lld != axis -2 of b %lld)",
                  op, mx__shape_str(a->shape, a->ndim, s1, sizeof s1),
                  mx__shape_str(b->shape, b->ndim, s2, sizeof s2), (long long)as[an - 1],
                  (long long)bs[bn - 2]);
    return NULL;
  }
  int64_t batch[MX_MAX_NDIM];
  int nb;
  if (mx__broadcast_shapes(op, as, an - 2, bs, bn - 2, batch, &nb)) return NULL;
  if (nb + 2 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "%s: result would have %d dimensions", op, nb + 2);
    return NULL;
  }
  int64_t M = as[an - 2], K = as[an - 1], N = bs[bn - 1];
  int64_t pa[MX_MAX_NDIM], pb[MX_MAX_NDIM], po[MX_MAX_NDIM];
  memcpy(pa, batch, sizeof(int64_t) * (size_t)nb);
  memcpy(pb, batch, sizeof(int64_t) * (size_t)nb);
  memcpy(po, batch, sizeof(int64_t) * (size_t)nb);
  pa[nb] = M, pa[nb + 1] = K;
  pb[nb] = K, pb[nb + 1] = N;
  po[nb] = M, po[nb + 1] = N;
  int pn = nb + 2;
  /* the user-visible result drops the vector axes */
  int64_t fs[MX_MAX_NDIM];
  int fn = 0;
  for (int i = 0; i < nb; i++) fs[fn++] = batch[i];
  if (!a_vec) fs[fn++] = M;
  if (!b_vec) fs[fn++] = N;

  /* A weight shared across the batch (b has no batch dims of its own, the
   * nn.Linear case): fold the batch into M, so the forward is one GEMM and
   * the VJP w.r.t. b is one GEMM too instead of one per batch element
   * followed by a sum. An addmm folds too when c has the result's shape
   * (a residual added in the product's epilogue). */
  bool b_shared = nb > 0 && !a_vec && !b_vec;
  for (int i = 0; b_shared && i < bn - 2; i++)
    if (bs[i] != 1) b_shared = false;
  if (b_shared && c &&
      (c->ndim != fn || memcmp(c->shape, fs, sizeof(int64_t) * (size_t)fn)))
    b_shared = false;
  if (b_shared) {
    int64_t rows = 1;
    for (int i = 0; i < an - 1; i++) rows *= as[i];
    mx__tmp t2 = {0};
    mx_array *a2 = mx__keep(&t2, mx_reshape(a, (int64_t[]){rows, K}, 2));
    mx_array *b2 = mx__keep(&t2, mx_reshape(b, (int64_t[]){K, N}, 2));
    mx_array *c2 = c ? mx__keep(&t2, mx_reshape(c, (int64_t[]){rows, N}, 2)) : NULL;
    mx_array *o2 = a2 && b2 && (!c || c2)
                       ? mx__keep(&t2, matmul_build(op, a2, b2, c2, alpha, beta))
                       : NULL;
    mx_array *res = o2 ? mx_reshape(o2, fs, fn) : NULL;
    mx__tmp_free(&t2);
    return res;
  }

  mx__tmp t = {0};
  mx_array *ins[3] = {0};
  mx_array *r = NULL;
  mx_array *ac = mx__keep(&t, mx_astype(a, dt));
  mx_array *bc = mx__keep(&t, mx_astype(b, dt));
  if (!ac || !bc) goto done;
  ins[0] = mx__keep(&t, mx_reshape(ac, as, an));
  ins[1] = mx__keep(&t, mx_reshape(bc, bs, bn));
  if (!ins[0] || !ins[1]) goto done;
  ins[0] = mx__keep(&t, mx_broadcast_to(ins[0], pa, pn));
  ins[1] = mx__keep(&t, mx_broadcast_to(ins[1], pb, pn));
  if (!ins[0] || !ins[1]) goto done;
  int nin = 2;
  if (c) {
    /* c broadcasts to the user-visible result, then takes the matrix shape */
    int64_t cs[MX_MAX_NDIM];
    int cn;
    if (mx__broadcast_shapes(op, fs, fn, c->shape, c->ndim, cs, &cn)) goto done;
    if (cn != fn || memcmp(cs, fs, sizeof(int64_t) * (size_t)fn)) {
      mx__set_error(MX_ERR_SHAPE, "%s: c of shape %s cannot be broadcast to the result's shape %s",
                    op, mx__shape_str(c->shape, c->ndim, s1, sizeof s1),
                    mx__shape_str(fs, fn, s2, sizeof s2));
      goto done;
    }
    mx_array *cc = mx__keep(&t, mx_astype(c, dt));
    mx_array *cb = cc ? mx__keep(&t, mx_broadcast_to(cc, fs, fn)) : NULL;
    ins[2] = cb ? mx__keep(&t, mx_reshape(cb, po, pn)) : NULL;
    if (!ins[2]) goto done;
    nin = 3;
  }
  mx__matmul_params p = {alpha, c ? beta : 0.0,
                         dt == MX_FLOAT32 && mx_get_float32_matmul_precision() == MX_MATMUL_HIGH};
  mx_array *o = mx__keep(&t, mx__node_new(&def_MATMUL, dt, po, pn, ins, nin, &p, sizeof p));
  if (o) r = mx_reshape(o, fs, fn);
done:
  mx__tmp_free(&t);
  return r;
}

static atomic_int g_f32_precision = -1; /* -1: MXC_TF32 not read yet */

int mx_set_float32_matmul_precision(mx_matmul_precision p) {
  if (p != MX_MATMUL_HIGHEST && p != MX_MATMUL_HIGH)
    return mx__set_error(MX_ERR_INVALID_ARG, "set_float32_matmul_precision: unknown precision %d",
                         (int)p);
  atomic_store(&g_f32_precision, (int)p);
  return MX_OK;
}

mx_matmul_precision mx_get_float32_matmul_precision(void) {
  int p = atomic_load(&g_f32_precision);
  if (p < 0) {
    const char *e = getenv("MXC_TF32");
    int want = e && !strcmp(e, "1") ? MX_MATMUL_HIGH : MX_MATMUL_HIGHEST;
    atomic_compare_exchange_strong(&g_f32_precision, &p, want);
    p = atomic_load(&g_f32_precision);
  }
  return (mx_matmul_precision)p;
}

mx_array *mx_matmul(mx_array *a, mx_array *b) {
  MX__CHECK_IN("matmul", a, b);
  return matmul_build("matmul", a, b, NULL, 1.0, 0.0);
}

mx_array *mx_addmm(mx_array *c, mx_array *a, mx_array *b, double alpha, double beta) {
  MX__CHECK_IN("addmm", c, a, b);
  return matmul_build("addmm", a, b, c, alpha, beta);
}

/* ---- VJP -------------------------------------------------------------------------- */
/* out = alpha * a @ b + beta * c:
 *   ga = alpha * cot @ b^T,  gb = alpha * a^T @ cot,  gc = beta * cot */
static mx_array *scaled(mx__tmp *t, mx_array *x, double s) {
  if (s == 1.0 || !x) return x;
  return mx__keep(t, mx_multiply_scalar(x, s));
}

/* b is a 2-d matrix held in column-major order (a transposed view: the
 * nn.Linear weight W^T): known from its op before evaluation, from its
 * strides after */
static bool col_major_2d(const mx_array *b) {
  if (b->ndim != 2 || b->shape[0] < 2 || b->shape[1] < 2) return false;
  if (b->op) return b->op->id == MX_OP_TRANSPOSE;
  return b->buf && b->strides[0] == 1 && b->strides[1] == b->shape[0];
}

/* MXC_WGRAD_ROWMAJOR=0: the weight gradient of y = x W^T stays the
 * transpose of x^T dy (A/B) */
static bool wgrad_rowmajor(void) {
  static int v = -1;
  return mx__env_on("MXC_WGRAD_ROWMAJOR", &v);
}

static int vjp_matmul(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__matmul_params *p = MX__PARAMS(out, mx__matmul_params);
  mx_array *a = out->inputs[0], *b = out->inputs[1];
  for (int i = 0; i < out->ninputs; i++) {
    if (!need[i]) continue;
    mx__tmp t = {0};
    mx_array *r = NULL;
    if (i == 0) {
      mx_array *bt = mx__keep(&t, mx_swapaxes(b, -1, -2));
      r = scaled(&t, mx__keep(&t, mx_matmul(cot, bt)), p->alpha);
    } else if (i == 1 && out->ndim == 2 && a->ndim == 2 && col_major_2d(b) &&
               wgrad_rowmajor()) {
      /* b = W^T: its gradient a^T cot computed as (cot^T a)^T, so W's
       * gradient (the transpose of this one) is row-major: the optimizer
       * and the gradient norm read it in order, with no strided pass */
      mx_array *ct = mx__keep(&t, mx_swapaxes(cot, -1, -2));
      mx_array *gw = ct ? mx__keep(&t, mx_matmul(ct, a)) : NULL;
      mx_array *gt = gw ? mx__keep(&t, mx_swapaxes(gw, -1, -2)) : NULL;
      r = scaled(&t, gt, p->alpha);
    } else if (i == 1) {
      mx_array *at = mx__keep(&t, mx_swapaxes(a, -1, -2));
      r = scaled(&t, mx__keep(&t, mx_matmul(at, cot)), p->alpha);
    } else {
      r = scaled(&t, cot, p->beta);
    }
    g[i] = r ? mx_array_retain(r) : NULL;
    mx__tmp_free(&t);
    if (!g[i]) return mx_last_status();
  }
  return MX_OK;
}
