/* vmap.c — the vectorising map: trace f once on unbatched placeholders,
 * then rewrite its graph node by node with batching rules.
 *
 * A rule gets the traced node `out` (op, params, original inputs) and the
 * rewritten inputs with their batch axes (-1: not batched) and returns the
 * batched result and its batch axis. Most rules move the batch axis to the
 * front and rebuild the op with its axes shifted by one. A node none of
 * whose inputs is batched is kept as it is. An op's `vmap` slot in its
 * mx__op_def, when set, takes precedence over the rules here (keyed by op
 * id). */
#include <string.h>

#include "transforms_internal.h"

#include "ops/fast_params.h"
#include "ops/indexing_params.h"
#include "ops/linalg_params.h"
#include "ops/ops_internal.h"
#include "ops/reduce_params.h"
#include "ops/shape_params.h"
#include "ops/sort_params.h"

/* ---- helpers ------------------------------------------------------------- */
/* Batch axis to the front (new reference). */
static mx_array *front(mx_array *x, int ax) {
  if (ax <= 0) return mx_array_retain(x);
  return mx_moveaxis(x, ax, 0);
}

/* A batched-at-front x of rank 1 + r padded with size-1 axes after the
 * batch axis to rank 1 + nd (right-aligned broadcasting of the rest). */
static mx_array *pad_rank(mx_array *x, int nd) {
  if (!x || x->ndim - 1 >= nd) return mx_array_retain(x);
  int64_t s[MX_MAX_NDIM];
  int k = nd - (x->ndim - 1);
  if (nd + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "vmap: batched result would have %d dimensions", nd + 1);
    return NULL;
  }
  s[0] = x->shape[0];
  for (int i = 0; i < k; i++) s[1 + i] = 1;
  for (int i = 1; i < x->ndim; i++) s[k + i] = x->shape[i];
  return mx_reshape(x, s, nd + 1);
}

static int64_t batch_size(mx_array **in, const int *ax, int n) {
  for (int i = 0; i < n; i++)
    if (ax[i] >= 0) return in[i]->shape[ax[i]];
  return 1;
}

/* Batched input i at the front, or (unbatched) broadcast to (B, shape). */
static mx_array *front_or_broadcast(mx_array *x, int ax, int64_t B) {
  if (ax >= 0) return front(x, ax);
  if (x->ndim + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "vmap: batched result would have %d dimensions", x->ndim + 1);
    return NULL;
  }
  int64_t s[MX_MAX_NDIM];
  s[0] = B;
  memcpy(s + 1, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  return mx_broadcast_to(x, s, x->ndim + 1);
}

static int done(mx_array *r, mx_array **res, int *oax, int ax) {
  if (!r) return mx_last_status();
  *res = r;
  *oax = ax;
  return MX_OK;
}

/* Rebuild out's op on new inputs with shape (B, out->shape) and params p. */
static mx_array *rebuild(mx_array *out, mx_array **ins, int64_t B, const void *p) {
  int64_t s[MX_MAX_NDIM];
  if (out->ndim + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "vmap of '%s': batched result would have %d dimensions",
                  mx__op_names[out->op->id], out->ndim + 1);
    return NULL;
  }
  s[0] = B;
  memcpy(s + 1, out->shape, sizeof(int64_t) * (size_t)out->ndim);
  return mx__node_new(out->op, out->dtype, s, out->ndim + 1, ins, out->ninputs,
                      p ? p : out->params, out->params_size);
}

/* ---- elementwise (and FULL/COPY/ASTYPE: broadcasting n-ary kernels) --------- */
static int rule_elementwise(mx_array *out, mx_array **in, const int *ax, mx_array **res,
                            int *oax) {
  int64_t B = batch_size(in, ax, out->ninputs);
  mx__tmp t = {0};
  mx_array *ins[8];
  MX_ASSERT(out->ninputs <= 8);
  for (int i = 0; i < out->ninputs; i++)
    ins[i] = ax[i] < 0 ? in[i] : mx__keep(&t, pad_rank(mx__keep(&t, front(in[i], ax[i])), out->ndim));
  bool ok = true;
  for (int i = 0; i < out->ninputs; i++) ok = ok && ins[i];
  mx_array *r = ok ? rebuild(out, ins, B, NULL) : NULL;
  mx__tmp_free(&t);
  return done(r, res, oax, 0);
}

/* ---- single-input ops whose params shift by one axis ---------------------------- */
static int rule_unary_params(mx_array *out, mx_array **in, const int *ax, mx_array **res,
                             int *oax) {
  int64_t B = in[0]->shape[ax[0]];
  mx_array *x = front(in[0], ax[0]);
  if (!x) return mx_last_status();
  mx_array *r = NULL;
  switch (out->op->id) {
    case MX_OP_SUM: case MX_OP_PROD: case MX_OP_MAX: case MX_OP_MIN: case MX_OP_ALL:
    case MX_OP_ANY: {
      mx__reduce_params p = *MX__PARAMS(out, mx__reduce_params);
      p.mask <<= 1;
      r = rebuild(out, &x, B, &p);
      break;
    }
    case MX_OP_ARGMAX: case MX_OP_ARGMIN: {
      mx__axis_params p = *MX__PARAMS(out, mx__axis_params);
      p.axis++;
      r = rebuild(out, &x, B, &p);
      break;
    }
    case MX_OP_CUMSUM: {
      mx__scan_params p = *MX__PARAMS(out, mx__scan_params);
      p.axis++;
      r = rebuild(out, &x, B, &p);
      break;
    }
    case MX_OP_SORT: case MX_OP_ARGSORT: case MX_OP_PARTITION: case MX_OP_ARGPARTITION: {
      mx__sort_params p = *MX__PARAMS(out, mx__sort_params);
      p.axis++;
      r = rebuild(out, &x, B, &p);
      break;
    }
    /* last-axis ops: the batch axis in front changes nothing */
    case MX_OP_LOGSUMEXP: case MX_OP_SOFTMAX: case MX_OP_LOG_SOFTMAX:
      r = rebuild(out, &x, B, NULL);
      break;
    default:
      MX_ASSERT(0);
  }
  mx_array_free(x);
  return done(r, res, oax, 0);
}

/* rms_norm / layer_norm / rope: only x (input 0) may be batched. */
static int rule_fast_x(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  for (int i = 1; i < out->ninputs; i++)
    if (ax[i] >= 0)
      return mx__set_error(MX_ERR_UNSUPPORTED,
                           "vmap: no batching rule for '%s' with a batched input %d (only x)",
                           mx__op_names[out->op->id], i);
  int64_t B = in[0]->shape[ax[0]];
  mx_array *ins[4];
  MX_ASSERT(out->ninputs <= 4);
  ins[0] = front(in[0], ax[0]);
  if (!ins[0]) return mx_last_status();
  for (int i = 1; i < out->ninputs; i++) ins[i] = in[i];
  mx_array *r = rebuild(out, ins, B, NULL);
  mx_array_free(ins[0]);
  return done(r, res, oax, 0);
}

/* ---- shape ops -------------------------------------------------------------------- */
static void slice_args(const mx__slice_params *p, int nd, int64_t B, int64_t *st, int64_t *en,
                       int64_t *sp) {
  st[0] = 0, en[0] = B, sp[0] = 1;
  for (int i = 0; i < nd; i++) {
    st[i + 1] = p->start[i];
    sp[i + 1] = p->step[i];
    int64_t last = p->start[i] + (p->len[i] - 1) * p->step[i];
    en[i + 1] = p->len[i] == 0 ? p->start[i] : last + (p->step[i] > 0 ? 1 : -1);
    if (en[i + 1] < 0 && p->step[i] < 0) en[i + 1] = INT64_MIN / 2;
  }
}

static int rule_shape(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  int64_t B = batch_size(in, ax, out->ninputs);
  int nd = out->ndim;
  mx__tmp t = {0};
  mx_array *r = NULL;
  int64_t s[MX_MAX_NDIM + 1];
  s[0] = B;
  if (nd + 1 > MX_MAX_NDIM) {
    mx__set_error(MX_ERR_SHAPE, "vmap of '%s': batched result would have %d dimensions",
                  mx__op_names[out->op->id], nd + 1);
    return mx_last_status();
  }
  memcpy(s + 1, out->shape, sizeof(int64_t) * (size_t)nd);
  switch (out->op->id) {
    case MX_OP_RESHAPE:
      r = mx_reshape(mx__keep(&t, front(in[0], ax[0])), s, nd + 1);
      break;
    case MX_OP_TRANSPOSE: {
      const mx__transpose_params *p = MX__PARAMS(out, mx__transpose_params);
      int perm[MX_MAX_NDIM];
      perm[0] = 0;
      for (int i = 0; i < nd; i++) perm[i + 1] = p->perm[i] + 1;
      r = mx_transpose(mx__keep(&t, front(in[0], ax[0])), perm, nd + 1);
      break;
    }
    case MX_OP_BROADCAST:
      r = mx_broadcast_to(mx__keep(&t, pad_rank(mx__keep(&t, front(in[0], ax[0])), nd)), s,
                          nd + 1);
      break;
    case MX_OP_SLICE: {
      int64_t st[MX_MAX_NDIM + 1], en[MX_MAX_NDIM + 1], sp[MX_MAX_NDIM + 1];
      slice_args(MX__PARAMS(out, mx__slice_params), nd, B, st, en, sp);
      r = mx_slice(mx__keep(&t, front(in[0], ax[0])), st, en, sp, nd + 1);
      break;
    }
    case MX_OP_SLICE_UPDATE: {
      int64_t st[MX_MAX_NDIM + 1], en[MX_MAX_NDIM + 1], sp[MX_MAX_NDIM + 1];
      slice_args(MX__PARAMS(out, mx__slice_params), nd, B, st, en, sp);
      mx_array *a = mx__keep(&t, front_or_broadcast(in[0], ax[0], B));
      mx_array *u = ax[1] < 0 ? in[1] : mx__keep(&t, pad_rank(mx__keep(&t, front(in[1], ax[1])), nd));
      r = a && u ? mx_slice_update(a, u, st, en, sp, nd + 1) : NULL;
      break;
    }
    case MX_OP_CONCATENATE: {
      const mx__concat_params *p = MX__PARAMS(out, mx__concat_params);
      mx_array **ins = calloc((size_t)out->ninputs, sizeof *ins);
      if (!ins) {
        mx__set_error(MX_ERR_OOM, "vmap: out of memory");
        break;
      }
      bool ok = true;
      for (int i = 0; i < out->ninputs; i++) ok = (ins[i] = front_or_broadcast(in[i], ax[i], B)) && ok;
      if (ok) r = mx_concatenate(ins, out->ninputs, p->axis + 1);
      for (int i = 0; i < out->ninputs; i++) mx_array_free(ins[i]);
      free(ins);
      break;
    }
    case MX_OP_PAD: {
      const mx__pad_params *p = MX__PARAMS(out, mx__pad_params);
      int axes[MX_MAX_NDIM];
      for (int i = 0; i < nd; i++) axes[i] = i + 1;
      r = mx_pad(mx__keep(&t, front(in[0], ax[0])), axes, p->before, p->after, nd, p->value);
      break;
    }
    default:
      MX_ASSERT(0);
  }
  mx__tmp_free(&t);
  return done(r, res, oax, 0);
}

/* ---- matmul: a (..., M, K), b (..., K, N) [, c (..., M, N)] ------------------------ */
static int rule_matmul(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  const mx__matmul_params *p = MX__PARAMS(out, mx__matmul_params);
  mx__tmp t = {0};
  mx_array *x[3] = {0};
  for (int i = 0; i < out->ninputs; i++)
    x[i] = ax[i] < 0 ? in[i] : mx__keep(&t, front(in[i], ax[i]));
  mx_array *r;
  if (out->ninputs == 3) {
    r = mx_addmm(x[2], x[0], x[1], p->alpha, p->beta);
  } else {
    r = mx_matmul(x[0], x[1]);
    if (r && p->alpha != 1.0) {
      mx_array *s = mx_multiply_scalar(r, p->alpha);
      mx_array_free(r);
      r = s;
    }
  }
  mx__tmp_free(&t);
  return done(r, res, oax, 0);
}

/* ---- indexing ------------------------------------------------------------------------ */
/* idx normalised to [0, dim) as the kernels do (wrap negatives, clamp). */
static mx_array *norm_index(mx_array *idx, int64_t dim) {
  mx__tmp t = {0};
  mx_array *i64 = mx__keep(&t, mx_astype(idx, MX_INT64));
  mx_array *d = mx__keep(&t, mx_array_scalar_int(dim, MX_INT64));
  mx_array *z = mx__keep(&t, mx_array_scalar_int(0, MX_INT64));
  mx_array *neg = mx__keep(&t, mx_less(i64, z));
  mx_array *w = mx__keep(&t, mx_where(neg, mx__keep(&t, mx_add(i64, d)), i64));
  mx_array *hi = mx__keep(&t, mx_array_scalar_int(dim > 0 ? dim - 1 : 0, MX_INT64));
  mx_array *r = mx_clip(w, z, hi);
  mx__tmp_free(&t);
  return r;
}

static int rule_take(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  int axis = MX__PARAMS(out, mx__index_params)->axis;
  mx_array *a = in[0], *idx = in[1];
  mx__tmp t = {0};
  mx_array *r = NULL;
  int rax = 0;
  if (ax[1] < 0) { /* only a batched */
    r = mx_take(mx__keep(&t, front(a, ax[0])), idx, axis + 1);
  } else if (ax[0] < 0) { /* only the indices batched: batch lands at `axis` */
    r = mx_take(a, mx__keep(&t, front(idx, ax[1])), axis);
    rax = axis;
  } else { /* both: gather from a flattened (B * D, rest) table */
    mx_array *af = mx__keep(&t, front(a, ax[0])); /* (B, a...) */
    int64_t B = af ? af->shape[0] : 0, D = af ? af->shape[axis + 1] : 0;
    mx_array *am = mx__keep(&t, mx_moveaxis(af, axis + 1, 1)); /* (B, D, rest) */
    int64_t s[MX_MAX_NDIM];
    int rn = 0;
    if (am) {
      s[rn++] = B * D;
      for (int i = 2; i < am->ndim; i++) s[rn++] = am->shape[i];
    }
    mx_array *flat = mx__keep(&t, am ? mx_reshape(am, s, rn) : NULL);
    mx_array *ib = mx__keep(&t, front(idx, ax[1])); /* (B, idx...) */
    mx_array *in_ = mx__keep(&t, ib ? norm_index(ib, D) : NULL);
    int64_t os[MX_MAX_NDIM];
    int on = ib ? ib->ndim : 0;
    for (int i = 0; i < on; i++) os[i] = i == 0 ? B : 1;
    mx_array *off = mx__keep(&t, mx_arange(0, (double)(B * D), (double)(D ? D : 1), MX_INT64));
    if (D == 0) off = mx__keep(&t, mx_zeros((int64_t[]){B}, 1, MX_INT64));
    mx_array *offr = mx__keep(&t, off && on ? mx_reshape(off, os, on) : NULL);
    mx_array *gi = mx__keep(&t, mx_add(in_, offr));
    mx_array *g = mx__keep(&t, mx_take(flat, gi, 0)); /* (B, idx..., a_pre..., a_post...) */
    if (g) {
      /* g is (B, idx (ni), a_pre (axis), a_post); out wants (B, a_pre, idx, a_post) */
      int ni = ib->ndim - 1, npre = axis, npost = out->ndim - ni - npre;
      int perm[MX_MAX_NDIM], k = 0;
      perm[k++] = 0;
      for (int i = 0; i < npre; i++) perm[k++] = 1 + ni + i;
      for (int i = 0; i < ni; i++) perm[k++] = 1 + i;
      for (int i = 0; i < npost; i++) perm[k++] = 1 + ni + npre + i;
      r = mx_transpose(g, perm, k);
    }
  }
  mx__tmp_free(&t);
  return done(r, res, oax, rax);
}

static int rule_along_axis(mx_array *out, mx_array **in, const int *ax, mx_array **res,
                           int *oax) {
  int axis = MX__PARAMS(out, mx__index_params)->axis;
  int64_t B = batch_size(in, ax, out->ninputs);
  mx__tmp t = {0};
  mx_array *x[3] = {0};
  for (int i = 0; i < out->ninputs; i++) {
    if (ax[i] >= 0) x[i] = mx__keep(&t, front(in[i], ax[i]));
    else if (i == 0 && out->op->id != MX_OP_TAKE_ALONG_AXIS)
      x[i] = mx__keep(&t, front_or_broadcast(in[i], -1, B)); /* the result's shape */
    else x[i] = mx__keep(&t, mx_expand_dims(in[i], (int[]){0}, 1));
  }
  mx_array *r = NULL;
  switch (out->op->id) {
    case MX_OP_TAKE_ALONG_AXIS: {
      /* take_along_axis needs equal batch sizes: broadcast the size-1 batch */
      mx_array *a = x[0], *i = x[1];
      if (a && i && a->shape[0] != i->shape[0]) {
        if (a->shape[0] == 1) a = mx__keep(&t, front_or_broadcast(in[0], -1, B));
        else i = mx__keep(&t, front_or_broadcast(in[1], -1, B));
      }
      r = mx_take_along_axis(a, i, axis + 1);
      break;
    }
    case MX_OP_PUT_ALONG_AXIS:
      r = mx_put_along_axis(x[0], x[1], x[2], axis + 1);
      break;
    case MX_OP_SCATTER_ADD_AXIS:
      r = mx_scatter_add_axis(x[0], x[1], x[2], axis + 1);
      break;
    default:
      MX_ASSERT(0);
  }
  mx__tmp_free(&t);
  return done(r, res, oax, 0);
}

/* ---- transform nodes ---------------------------------------------------------------- */
/* Tracers and placeholders pass their input through. */
static int rule_tracer(mx_array *out, mx_array **in, const int *ax, mx_array **res, int *oax) {
  const mx__custom_params *p = MX__PARAMS(out, mx__custom_params);
  return done(mx__tracer(in[p->pass]), res, oax, ax[p->pass]);
}

/* ---- the rule table -------------------------------------------------------------------- */
static mx__vmap_fn rule_for(const mx_array *node) {
  if (node->op->vmap) return node->op->vmap;
  switch (node->op->id) {
#define EW(name, str) case MX_OP_##name:
    /* every elementwise op of the op list */
    EW(FULL, 0) EW(NEGATIVE, 0) EW(ABS, 0) EW(SIGN, 0) EW(SQUARE, 0) EW(SQRT, 0) EW(RSQRT, 0)
    EW(RECIPROCAL, 0) EW(EXP, 0) EW(EXPM1, 0) EW(LOG, 0) EW(LOG1P, 0) EW(SIN, 0) EW(COS, 0)
    EW(TANH, 0) EW(SIGMOID, 0) EW(ERF, 0) EW(ERFINV, 0) EW(FLOOR, 0) EW(CEIL, 0) EW(ROUND, 0)
    EW(LOGICAL_NOT, 0) EW(ISNAN, 0) EW(ISINF, 0) EW(ASTYPE, 0) EW(STOP_GRADIENT, 0) EW(ADD, 0)
    EW(SUBTRACT, 0) EW(MULTIPLY, 0) EW(DIVIDE, 0) EW(POWER, 0) EW(MAXIMUM, 0) EW(MINIMUM, 0)
    EW(EQUAL, 0) EW(NOT_EQUAL, 0) EW(LESS, 0) EW(LESS_EQUAL, 0) EW(GREATER, 0)
    EW(GREATER_EQUAL, 0) EW(LOGICAL_AND, 0) EW(LOGICAL_OR, 0) EW(WHERE, 0) EW(COPY, 0)
#undef EW
      return rule_elementwise;
    case MX_OP_SUM: case MX_OP_PROD: case MX_OP_MAX: case MX_OP_MIN: case MX_OP_ALL:
    case MX_OP_ANY: case MX_OP_ARGMAX: case MX_OP_ARGMIN: case MX_OP_CUMSUM:
    case MX_OP_LOGSUMEXP: case MX_OP_SOFTMAX: case MX_OP_LOG_SOFTMAX: case MX_OP_SORT:
    case MX_OP_ARGSORT: case MX_OP_PARTITION: case MX_OP_ARGPARTITION:
      return rule_unary_params;
    case MX_OP_RESHAPE: case MX_OP_TRANSPOSE: case MX_OP_BROADCAST: case MX_OP_SLICE:
    case MX_OP_SLICE_UPDATE: case MX_OP_CONCATENATE: case MX_OP_PAD:
      return rule_shape;
    case MX_OP_MATMUL:
      return rule_matmul;
    case MX_OP_TAKE:
      return rule_take;
    case MX_OP_TAKE_ALONG_AXIS: case MX_OP_PUT_ALONG_AXIS: case MX_OP_SCATTER_ADD_AXIS:
      return rule_along_axis;
    case MX_OP_RMS_NORM: case MX_OP_LAYER_NORM: case MX_OP_ROPE:
      return rule_fast_x;
    case MX_OP_CUSTOM:
      return mx__is_tracer(node) ? rule_tracer : NULL;
    default:
      return NULL;
  }
}

/* ---- the transform ---------------------------------------------------------------------- */
typedef struct {
  mx_closure *f;
  int nin, nout; /* -1: not given (all axis 0) */
  int *in_axes, *out_axes;
} vmap_payload;

static void vmap_destroy(void *p) {
  vmap_payload *v = p;
  mx_closure_free(v->f);
  free(v->in_axes);
  free(v->out_axes);
  free(v);
}

static int vmap_apply(void *payload, mx_array **in, int n, mx_list *out) {
  vmap_payload *p = payload;
  if (p->nin >= 0 && p->nin != n)
    return mx__set_error(MX_ERR_INVALID_ARG, "vmap: %d in_axes given for %d inputs", p->nin, n);
  int st = MX_OK;
  int *iax = calloc((size_t)(n ? n : 1), sizeof *iax);
  mx_array **ph = calloc((size_t)(n ? n : 1), sizeof *ph);
  void *stop = mx__ptrmap_new(), *index = mx__ptrmap_new();
  mx__node_list order = {0};
  mx_array **val = NULL;
  int *vax = NULL;
  mx_list outs = MX_LIST_INIT;
  int base = out->size;
  int64_t B = -1;
  if (!iax || !ph || !stop || !index) { st = mx__set_error(MX_ERR_OOM, "vmap: out of memory"); goto done; }
  for (int i = 0; i < n && !st; i++) {
    int a = p->nin >= 0 ? p->in_axes[i] : 0;
    if (a >= 0 && a >= in[i]->ndim) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "vmap: in_axes[%d] = %d but input %d has %d dimensions",
                         i, a, i, in[i]->ndim);
      break;
    }
    iax[i] = a < 0 ? -1 : a;
    if (a < 0) continue;
    if (B >= 0 && in[i]->shape[a] != B) {
      st = mx__set_error(MX_ERR_SHAPE, "vmap: input %d has batch size %lld along axis %d, expected %lld",
                         i, (long long)in[i]->shape[a], a, (long long)B);
      break;
    }
    B = in[i]->shape[a];
  }
  if (st) goto done;
  if (B < 0) {
    st = mx__set_error(MX_ERR_INVALID_ARG, "vmap: no input is batched (every in_axes is negative)");
    goto done;
  }
  /* placeholders: element 0 of each batched input (the values only matter
   * if f reads them; its graph is what we need) */
  for (int i = 0; i < n && !st; i++) {
    if (iax[i] < 0) { ph[i] = mx_array_retain(in[i]); continue; }
    if (B == 0) {
      int64_t s[MX_MAX_NDIM];
      int k = 0;
      for (int d = 0; d < in[i]->ndim; d++)
        if (d != iax[i]) s[k++] = in[i]->shape[d];
      mx_array *z = mx_zeros(s, k, in[i]->dtype);
      ph[i] = mx__tracer(z);
      mx_array_free(z);
    } else {
      mx_array *s0 = mx_slice_axis(in[i], iax[i], 0, 1, 1);
      mx_array *sq = mx_squeeze(s0, &iax[i], 1);
      ph[i] = mx__tracer(sq);
      mx_array_free(s0);
      mx_array_free(sq);
    }
    if (!ph[i]) st = mx_last_status();
    else st = mx__ptrmap_put(stop, ph[i], i);
  }
  if (st) goto done;
  if ((st = mx__trace_apply(p->f, ph, n, &outs))) goto done;
  if (p->nout >= 0 && p->nout != outs.size) {
    st = mx__set_error(MX_ERR_INVALID_ARG, "vmap: %d out_axes given for %d outputs", p->nout,
                       outs.size);
    goto done;
  }
  if ((st = mx__graph_postorder(outs.items, outs.size, stop, false, &order, index))) goto done;
  val = calloc(order.n ? order.n : 1, sizeof *val);
  vax = malloc(sizeof *vax * (order.n ? order.n : 1));
  if (!val || !vax) { st = mx__set_error(MX_ERR_OOM, "vmap: out of memory"); goto done; }
  for (size_t k = 0; k < order.n && !st; k++) {
    mx_array *x = order.v[k];
    vax[k] = -1;
    int pi = mx__ptrmap_get(stop, x);
    if (pi >= 0) {
      val[k] = mx_array_retain(in[pi]);
      vax[k] = iax[pi];
      continue;
    }
    if (!x->op) continue;
    bool any = false;
    for (int j = 0; j < x->ninputs; j++) any = any || vax[mx__ptrmap_get(index, x->inputs[j])] >= 0;
    if (!any) continue;
    mx__vmap_fn rule = rule_for(x);
    if (!rule) {
      st = mx__set_error(MX_ERR_UNSUPPORTED, "vmap: no batching rule for op '%s'",
                         mx__op_names[x->op->id]);
      break;
    }
    mx_array *ins_small[16], **ins = ins_small;
    int ax_small[16], *axs = ax_small;
    if (x->ninputs > 16) {
      ins = calloc((size_t)x->ninputs, sizeof *ins);
      axs = calloc((size_t)x->ninputs, sizeof *axs);
      if (!ins || !axs) st = mx__set_error(MX_ERR_OOM, "vmap: out of memory");
    }
    for (int j = 0; j < x->ninputs && !st; j++) {
      int q = mx__ptrmap_get(index, x->inputs[j]);
      ins[j] = vax[q] >= 0 ? val[q] : x->inputs[j];
      axs[j] = vax[q];
    }
    if (!st && (st = rule(x, ins, axs, &val[k], &vax[k])))
      mx__prefix_error("vmap of '%s'", mx__op_names[x->op->id]);
    if (ins != ins_small) free(ins);
    if (axs != ax_small) free(axs);
  }
  for (int j = 0; j < outs.size && !st; j++) {
    mx_array *o = outs.items[j];
    int k = mx__ptrmap_get(index, o);
    int oa = p->nout >= 0 ? p->out_axes[j] : 0;
    if (oa > o->ndim) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "vmap: out_axes[%d] = %d is out of range for an output of %d dimensions",
                         j, oa, o->ndim);
      break;
    }
    if (vax[k] >= 0) {
      st = mx_list_push(out, vax[k] == oa ? mx_array_retain(val[k]) : mx_moveaxis(val[k], vax[k], oa));
    } else {
      mx_array *e = mx_expand_dims(o, &oa, 1);
      int64_t s[MX_MAX_NDIM];
      if (e) {
        memcpy(s, e->shape, sizeof(int64_t) * (size_t)e->ndim);
        s[oa] = B;
      }
      st = mx_list_push(out, e ? mx_broadcast_to(e, s, e->ndim) : NULL);
      mx_array_free(e);
    }
  }
done:
  if (st) mx__list_truncate(out, base);
  if (val)
    for (size_t k = 0; k < order.n; k++) mx_array_free(val[k]);
  free(val);
  free(vax);
  if (ph) mx_array_free_n(ph, n);
  free(ph);
  free(iax);
  free(order.v);
  mx__ptrmap_free(stop);
  mx__ptrmap_free(index);
  mx_list_clear(&outs);
  return st;
}

mx_closure *mx_vmap(mx_closure *f, const int *in_axes, int nin, const int *out_axes, int nout) {
  if (!f) {
    mx__set_error(MX_ERR_INVALID_ARG, "vmap: function is NULL");
    return NULL;
  }
  if ((in_axes && nin < 0) || (out_axes && nout < 0)) {
    mx__set_error(MX_ERR_INVALID_ARG, "vmap: negative axis count");
    return NULL;
  }
  for (int j = 0; out_axes && j < nout; j++)
    if (out_axes[j] < 0) {
      mx__set_error(MX_ERR_INVALID_ARG, "vmap: out_axes[%d] = %d must be >= 0", j, out_axes[j]);
      return NULL;
    }
  vmap_payload *p = calloc(1, sizeof *p);
  if (!p) {
    mx__set_error(MX_ERR_OOM, "vmap: out of memory");
    return NULL;
  }
  p->nin = in_axes ? nin : -1;
  p->nout = out_axes ? nout : -1;
  if (in_axes) p->in_axes = malloc(sizeof(int) * (size_t)(nin ? nin : 1));
  if (out_axes) p->out_axes = malloc(sizeof(int) * (size_t)(nout ? nout : 1));
  if ((in_axes && !p->in_axes) || (out_axes && !p->out_axes)) {
    vmap_destroy(p);
    mx__set_error(MX_ERR_OOM, "vmap: out of memory");
    return NULL;
  }
  if (in_axes && nin) memcpy(p->in_axes, in_axes, sizeof(int) * (size_t)nin);
  if (out_axes && nout) memcpy(p->out_axes, out_axes, sizeof(int) * (size_t)nout);
  p->f = mx_closure_retain(f);
  mx_closure *c = mx_closure_new(vmap_apply, p, vmap_destroy);
  if (!c) vmap_destroy(p);
  return c;
}
