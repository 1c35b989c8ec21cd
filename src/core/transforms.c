/* transforms.c — closures, the reverse-mode sweep, vjp/jvp/grad,
 * value_and_grad (arrays and parameter maps), checkpoint, custom VJPs.
 * vmap lives in vmap.c. Design notes: docs/transforms.md.
 *
 * Tracers. To differentiate f at primals p, each p_i is wrapped in a
 * "tracer": a pass-through node (op id CUSTOM, kernel shares its input's
 * buffer) whose VJP is the identity. f runs on the tracers with
 * mx__trace_push() active (evals inside f keep the graph). The reverse
 * sweep walks the graph from f's outputs and stops at the tracers, so
 * gradients w.r.t. the tracers are gradients w.r.t. p. Because a tracer
 * is itself differentiable (identity), a gradient graph built by an inner
 * transform stays connected to the outer transform's tracers: that is
 * what makes grad(grad(f)) work.
 *
 * CUSTOM nodes. Every node this file creates has op id CUSTOM and params
 * starting with `int pass`: the kernel makes the output a view of input
 * `pass`. Different op defs (tracer, custom-vjp output) give different
 * VJPs. A custom-vjp output node owns its closure state through a 0-size
 * "holder" input array whose buffer deleter releases the state, so the
 * state lives exactly as long as some node references it (node params are
 * plain bytes and have no destructor). */
#include "transforms_internal.h"

#include "ops/fast_params.h"
#include "ops/linalg_params.h"
#include "ops/shape_params.h"

#include <pthread.h>
#include <string.h>

/* ==== lists =============================================================== */
static int list_reserve(mx_list *l, int n) {
  if (n <= l->capacity) return MX_OK;
  int nc = l->capacity ? l->capacity : 8;
  while (nc < n) nc *= 2;
  mx_array **v = realloc(l->items, sizeof *v * (size_t)nc);
  if (!v) return mx__set_error(MX_ERR_OOM, "list: out of memory");
  l->items = v;
  l->capacity = nc;
  return MX_OK;
}

int mx_list_push(mx_list *l, mx_array *a) {
  if (!a) {
    int st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "list_push: array is NULL");
  }
  if (!l) {
    mx_array_free(a);
    return mx__set_error(MX_ERR_INVALID_ARG, "list_push: list is NULL");
  }
  if (list_reserve(l, l->size + 1)) {
    mx_array_free(a);
    return mx_last_status();
  }
  l->items[l->size++] = a;
  return MX_OK;
}

int mx_list_push_retain(mx_list *l, mx_array *a) {
  if (!a) return mx_list_push(l, NULL);
  return mx_list_push(l, mx_array_retain(a));
}

void mx__list_truncate(mx_list *l, int size) {
  while (l->size > size) mx_array_free(l->items[--l->size]);
}

void mx_list_clear(mx_list *l) {
  if (!l) return;
  mx__list_truncate(l, 0);
  free(l->items);
  l->items = NULL;
  l->capacity = 0;
}

/* ==== closures ============================================================= */
struct mx_closure {
  int refcount;
  mx_closure_fn fn;
  void *payload;
  void (*destroy)(void *);
};

mx_closure *mx_closure_new(mx_closure_fn fn, void *payload, void (*destroy)(void *)) {
  if (!fn) {
    mx__set_error(MX_ERR_INVALID_ARG, "closure_new: function is NULL");
    return NULL;
  }
  mx_closure *c = malloc(sizeof *c);
  if (!c) {
    mx__set_error(MX_ERR_OOM, "closure_new: out of memory");
    return NULL;
  }
  *c = (mx_closure){1, fn, payload, destroy};
  return c;
}

mx_closure *mx_closure_retain(mx_closure *f) {
  if (f) __atomic_add_fetch(&f->refcount, 1, __ATOMIC_RELAXED);
  return f;
}

void mx_closure_free(mx_closure *f) {
  if (!f || __atomic_sub_fetch(&f->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (f->destroy) f->destroy(f->payload);
  free(f);
}

int mx_closure_apply(mx_closure *f, mx_array **inputs, int ninputs, mx_list *out) {
  if (!f || !out || ninputs < 0 || (ninputs && !inputs))
    return mx__set_error(MX_ERR_INVALID_ARG, "closure_apply: invalid arguments");
  for (int i = 0; i < ninputs; i++)
    if (!inputs[i]) {
      int st = mx_last_status();
      return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "closure_apply: input %d is NULL", i);
    }
  int base = out->size;
  int st = f->fn(f->payload, inputs, ninputs, out);
  if (st) {
    mx__list_truncate(out, base);
    if (!mx_last_status()) mx__set_error(st, "closure returned status %d", st);
  }
  return st;
}

/* Calls f with tracing on (evals inside keep their graphs). */
int mx__trace_apply(mx_closure *f, mx_array **inputs, int n, mx_list *out) {
  mx__trace_push();
  int st = mx_closure_apply(f, inputs, n, out);
  mx__trace_pop();
  return st;
}

/* ==== CUSTOM nodes ========================================================== */
static int k_passthrough(mx_array *out, mx_array **in) {
  const mx__custom_params *p = MX__PARAMS(out, mx__custom_params);
  mx_array *src = in[p->pass];
  MX_ASSERT(src->dtype == out->dtype && src->size == out->size && src->ndim == out->ndim);
  mx__array_set_same(out, src);
  return MX_OK;
}

/* The pass-through kernel is device independent (it only shares a
 * buffer), so it is installed into every built backend's table here, once,
 * rather than by each backend. */
static pthread_once_t g_kernel_once = PTHREAD_ONCE_INIT;
static void install_kernels(void) {
  for (int d = 0; d < MX_DEVICE_COUNT; d++) {
    mx__backend *be = (mx__backend *)mx__backend_get(d);
    if (be && !be->kernels[MX_OP_CUSTOM]) be->kernels[MX_OP_CUSTOM] = k_passthrough;
  }
}

mx_array *mx__custom_node(const mx__op_def *def, mx_array *like, mx_array **inputs, int n,
                          const mx__custom_params *p) {
  pthread_once(&g_kernel_once, install_kernels);
  MX_ASSERT(def->id == MX_OP_CUSTOM && p->pass >= 0 && p->pass < n);
  return mx__node_new(def, like->dtype, like->shape, like->ndim, inputs, n, p, sizeof *p);
}

static int vjp_identity(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__custom_params *p = MX__PARAMS(out, mx__custom_params);
  if (!need[p->pass]) return MX_OK;
  g[p->pass] = mx_array_retain(cot);
  return MX_OK;
}
static const mx__op_def def_tracer = {.id = MX_OP_CUSTOM, .vjp = vjp_identity};

mx_array *mx__tracer(mx_array *a) {
  if (!a) return NULL;
  mx__custom_params p = {.pass = 0};
  return mx__custom_node(&def_tracer, a, &a, 1, &p);
}

bool mx__is_tracer(const mx_array *a) { return a->op == &def_tracer; }

/* ==== pointer -> index hash ================================================== */
typedef struct {
  mx_array **keys;
  int *vals;
  size_t cap; /* power of two */
  size_t n;
} ptrmap;

static size_t ptr_hash(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x;
}

static int ptrmap_grow(ptrmap *m) {
  size_t nc = m->cap ? m->cap * 2 : 256;
  mx_array **nk = calloc(nc, sizeof *nk);
  int *nv = malloc(sizeof *nv * nc);
  if (!nk || !nv) {
    free(nk);
    free(nv);
    return mx__set_error(MX_ERR_OOM, "transforms: out of memory");
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->keys[i]) continue;
    size_t s = ptr_hash(m->keys[i]) & (nc - 1);
    while (nk[s]) s = (s + 1) & (nc - 1);
    nk[s] = m->keys[i];
    nv[s] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = nk;
  m->vals = nv;
  m->cap = nc;
  return MX_OK;
}

int mx__ptrmap_get(void *mp, const mx_array *k) {
  ptrmap *m = mp;
  if (!m->cap) return -1;
  for (size_t s = ptr_hash(k) & (m->cap - 1);; s = (s + 1) & (m->cap - 1)) {
    if (!m->keys[s]) return -1;
    if (m->keys[s] == k) return m->vals[s];
  }
}

int mx__ptrmap_put(void *mp, mx_array *k, int v) {
  ptrmap *m = mp;
  if (2 * (m->n + 1) > m->cap && ptrmap_grow(m)) return mx_last_status();
  size_t s = ptr_hash(k) & (m->cap - 1);
  while (m->keys[s] && m->keys[s] != k) s = (s + 1) & (m->cap - 1);
  if (!m->keys[s]) m->n++;
  m->keys[s] = k;
  m->vals[s] = v;
  return MX_OK;
}

void *mx__ptrmap_new(void) {
  ptrmap *m = calloc(1, sizeof *m);
  if (!m) mx__set_error(MX_ERR_OOM, "transforms: out of memory");
  return m;
}

void mx__ptrmap_free(void *mp) {
  ptrmap *m = mp;
  if (!m) return;
  free(m->keys);
  free(m->vals);
  free(m);
}

/* ==== graph walk ==================================================================
 * Post-order (inputs before consumers) of the nodes reachable from roots,
 * not descending below `stop` arrays (ptrmap, may be NULL) or zero_grad
 * ops when skip_zero_grad. Iterative: deep graphs must not overflow the
 * stack. */
int mx__graph_postorder(mx_array **roots, int nroots, void *stop, bool skip_zero_grad,
                        mx__node_list *order, void *index) {
  struct frame {
    mx_array *a;
    int next;
  } *stack = NULL;
  size_t sn = 0, scap = 0;
  int st = MX_OK;
  for (int r = 0; r < nroots && !st; r++) {
    mx_array *root = roots[r];
    if (!root || mx__ptrmap_get(index, root) >= 0) continue;
    if ((st = mx__ptrmap_put(index, root, -2))) break; /* -2: on the stack */
    if (sn == scap) {
      scap = scap ? scap * 2 : 256;
      struct frame *ns = realloc(stack, sizeof *ns * scap);
      if (!ns) { st = mx__set_error(MX_ERR_OOM, "transforms: out of memory"); break; }
      stack = ns;
    }
    stack[sn++] = (struct frame){root, 0};
    while (sn && !st) {
      struct frame *fr = &stack[sn - 1];
      mx_array *x = fr->a;
      bool leaf = !x->op || (stop && mx__ptrmap_get(stop, x) >= 0) ||
                  (skip_zero_grad && x->op->zero_grad);
      if (!leaf && fr->next < x->ninputs) {
        mx_array *in = x->inputs[fr->next++];
        if (mx__ptrmap_get(index, in) != -1) continue;
        if ((st = mx__ptrmap_put(index, in, -2))) break;
        if (sn == scap) {
          scap *= 2;
          struct frame *ns = realloc(stack, sizeof *ns * scap);
          if (!ns) { st = mx__set_error(MX_ERR_OOM, "transforms: out of memory"); break; }
          stack = ns;
        }
        stack[sn++] = (struct frame){in, 0};
      } else {
        sn--;
        if (order->n == order->cap) {
          size_t nc = order->cap ? order->cap * 2 : 256;
          mx_array **nv = realloc(order->v, sizeof *nv * nc);
          if (!nv) { st = mx__set_error(MX_ERR_OOM, "transforms: out of memory"); break; }
          order->v = nv;
          order->cap = nc;
        }
        if ((st = mx__ptrmap_put(index, x, (int)order->n))) break;
        order->v[order->n++] = x;
      }
    }
  }
  free(stack);
  return st;
}

/* ==== the reverse sweep ================================================================ */
/* MXC_GRAD_ADDMM=0: cotangent sums stay plain additions (A/B). */
static bool addmm_fold_on(void) {
  static int v = -1;
  return mx__env_on("MXC_GRAD_ADDMM", &v);
}

/* The 2-d product behind p when p is a matrix product that nothing else
 * holds and that has not run: the MATMUL node itself or reshapes of it,
 * each held only by the next. NULL otherwise. */
static mx_array *lone_product(mx_array *p) {
  if (p->refcount != 1) return NULL;
  while (p->op && p->op->id == MX_OP_RESHAPE && !p->buf && p->ninputs == 1 &&
         p->inputs[0]->refcount == 1)
    p = p->inputs[0];
  if (!p->op || p->op->id != MX_OP_MATMUL || p->buf || p->ninputs != 2 || p->ndim != 2)
    return NULL;
  return p;
}

static bool same_shape(const mx_array *a, const mx_array *b) {
  return a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim);
}

/* acc + g as one addmm when g is a lone product a @ b of acc's shape and
 * dtype (the sum of a layer input's cotangents from several projections:
 * the addition runs in the GEMM's epilogue instead of a pass over
 * memory). *out NULL: it does not apply. */
static int fold_sum(mx_array *acc, mx_array *g, mx_array **out) {
  *out = NULL;
  mx_array *m = lone_product(g);
  if (!m || acc->dtype != g->dtype || acc->dtype != m->dtype || !same_shape(acc, g)) return MX_OK;
  const mx__matmul_params *p = MX__PARAMS(m, mx__matmul_params);
  mx_array *c = mx_reshape(acc, m->shape, 2);
  mx_array *s = c ? mx_addmm(c, m->inputs[0], m->inputs[1], p->alpha, 1.0) : NULL;
  *out = s ? mx_reshape(s, g->shape, g->ndim) : NULL;
  mx_array_free(c);
  mx_array_free(s);
  return *out ? MX_OK : mx_last_status();
}

/* MXC_GRAD_NORM_ADD=0: a residual stream's gradient stays an addition
 * after rms_norm_backward (A/B). */
static bool norm_fold_on(void) {
  static int v = -1;
  return mx__env_on("MXC_GRAD_NORM_ADD", &v);
}

/* MXC_VJP_EARLY_FREE=0: a node's cotangent is held until its inputs'
 * cotangents are summed (A/B). */
static bool early_free_on(void) {
  static int v = -1;
  return mx__env_on("MXC_VJP_EARLY_FREE", &v);
}

/* acc + g as one rms_norm_backward with a residual when g is a lone dx of
 * rms_norm_backward (no residual yet) of acc's shape and dtype: a residual
 * stream's gradient (the skip path plus the norm's dx) in the norm
 * backward's own pass. *out NULL: it does not apply. */
static int fold_norm(mx_array *acc, mx_array *g, mx_array **out) {
  *out = NULL;
  bool folded = false; /* g a view of the packed dx and dw (rms_norm's VJP) */
  int st = mx__fast_rms_norm_grad_fold(g, acc, &folded);
  if (st || folded) {
    if (folded) *out = mx_array_retain(g);
    return st;
  }
  if (g->refcount != 1 || g->buf || !g->op || g->op->id != MX_OP_RMS_NORM_GRAD) return MX_OK;
  const mx__rms_norm_grad_params *p = MX__PARAMS(g, mx__rms_norm_grad_params);
  if (p->which != 0 || p->has_resid || acc->dtype != g->dtype || !same_shape(acc, g))
    return MX_OK;
  *out = mx__fast_rms_norm_grad_add(g->inputs[0], g->inputs[1],
                                    p->has_weight ? g->inputs[2] : NULL, p->eps, acc);
  return *out ? MX_OK : mx_last_status();
}

static int accumulate(mx_array **slot, mx_array *g) {
  if (!*slot) {
    *slot = g;
    return MX_OK;
  }
  mx_array *s = NULL;
  int st = MX_OK;
  if (addmm_fold_on()) {
    st = fold_sum(*slot, g, &s);
    if (!st && !s) st = fold_sum(g, *slot, &s);
  }
  if (!st && !s && norm_fold_on()) {
    st = fold_norm(*slot, g, &s);
    if (!st && !s) st = fold_norm(g, *slot, &s);
  }
  if (st || s) {
    mx_array_free(g);
    if (st) return st;
    mx_array_free(*slot);
    *slot = s;
    return MX_OK;
  }
  s = mx_add(*slot, g);
  mx_array_free(g);
  if (!s) return mx_last_status();
  if (s->dtype != (*slot)->dtype) {
    mx_array *c = mx_astype(s, (*slot)->dtype);
    mx_array_free(s);
    s = c;
    if (!s) return mx_last_status();
  }
  mx_array_free(*slot);
  *slot = s;
  return MX_OK;
}


/* ---- the cotangents of slices, gathered ----------------------------------------------
 * A slice's VJP is zeros of the sliced array's shape with the cotangent
 * written into the slice's region. An array split into parts (a stacked
 * q/k/v or gate/up projection's output, the q and k heads of one rope)
 * would get one such full-size array per part, then their sum: a zero-
 * fill, a full copy and a full addition per part. Instead the sweep keeps
 * each slice's cotangent with its slice and, on reaching the sliced array,
 * concatenates the parts that tile one axis in disjoint unit-step ranges
 * (zeros in the gaps): the same values in one pass. Any other set of
 * parts takes the slice VJP, part by part. */
typedef struct {
  mx_array *slice; /* the SLICE node (borrowed: the graph holds it) */
  mx_array *cot;   /* its cotangent (owned) */
} slice_part;
typedef struct {
  slice_part *v;
  int n, cap;
} part_list;

static int parts_push(part_list *l, mx_array *slice, mx_array *cot) {
  if (l->n == l->cap) {
    int nc = l->cap ? 2 * l->cap : 4;
    slice_part *nv = realloc(l->v, sizeof *nv * (size_t)nc);
    if (!nv) return mx__set_error(MX_ERR_OOM, "vjp: out of memory");
    l->v = nv;
    l->cap = nc;
  }
  l->v[l->n++] = (slice_part){slice, cot};
  return MX_OK;
}

static void parts_clear(part_list *l) {
  for (int i = 0; i < l->n; i++) mx_array_free(l->v[i].cot);
  free(l->v);
  *l = (part_list){0};
}

/* The one axis along which slice s of a takes a unit-step range (-1: not
 * such a slice). */
static int part_axis(const mx_array *s, const mx_array *a) {
  const mx__slice_params *p = MX__PARAMS(s, mx__slice_params);
  int ax = -1;
  for (int d = 0; d < a->ndim; d++) {
    if (p->step[d] != 1) return -1;
    if (p->start[d] == 0 && p->len[d] == a->shape[d]) continue;
    if (ax >= 0) return -1;
    ax = d;
  }
  return ax;
}

static int part_cmp(const void *x, const void *y) {
  const slice_part *a = x, *b = y;
  int ax = part_axis(a->slice, a->slice->inputs[0]);
  int64_t sa = MX__PARAMS(a->slice, mx__slice_params)->start[ax];
  int64_t sb = MX__PARAMS(b->slice, mx__slice_params)->start[ax];
  return sa < sb ? -1 : sa > sb;
}

/* a's cotangent from the parts in l (which it empties), added to *slot. */
static int parts_flush(mx_array *a, part_list *l, mx_array **slot) {
  int st = MX_OK, n = l->n, ax = n ? part_axis(l->v[0].slice, a) : -1;
  for (int i = 1; i < n && ax >= 0; i++)
    if (part_axis(l->v[i].slice, a) != ax) ax = -1;
  if (ax >= 0) qsort(l->v, (size_t)n, sizeof *l->v, part_cmp);
  int64_t end = 0; /* disjoint, in order */
  for (int i = 0; i < n && ax >= 0; i++) {
    const mx__slice_params *p = MX__PARAMS(l->v[i].slice, mx__slice_params);
    if (p->start[ax] < end) ax = -1;
    else end = p->start[ax] + p->len[ax];
  }
  if (ax < 0) { /* the slice VJP, part by part */
    for (int i = 0; i < n; i++) {
      mx_array *g = NULL;
      bool need = true;
      if (!st && (st = l->v[i].slice->op->vjp(l->v[i].slice, l->v[i].cot, &g, &need)))
        mx__prefix_error("vjp of 'slice'");
      if (!st) st = accumulate(slot, g);
      else mx_array_free(g);
    }
    parts_clear(l);
    return st;
  }
  mx_array **pieces = calloc((size_t)(2 * n + 1), sizeof *pieces);
  bool *made = calloc((size_t)(2 * n + 1), sizeof *made);
  int np = 0;
  if (!pieces || !made) st = mx__set_error(MX_ERR_OOM, "vjp: out of memory");
  int64_t at = 0, shape[MX_MAX_NDIM];
  memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
  for (int i = 0; i <= n && !st; i++) {
    int64_t s0 = i < n ? MX__PARAMS(l->v[i].slice, mx__slice_params)->start[ax] : a->shape[ax];
    if (s0 > at) { /* a gap: zeros */
      shape[ax] = s0 - at;
      made[np] = true;
      if (!(pieces[np++] = mx_zeros(shape, a->ndim, l->v[0].cot->dtype))) st = mx_last_status();
    }
    if (i < n && !st) {
      pieces[np++] = l->v[i].cot;
      at = s0 + MX__PARAMS(l->v[i].slice, mx__slice_params)->len[ax];
    }
  }
  mx_array *g = st ? NULL : mx_concatenate(pieces, np, ax);
  if (!st && !g) st = mx_last_status();
  for (int i = 0; pieces && made && i < np; i++)
    if (made[i]) mx_array_free(pieces[i]);
  free(pieces);
  free(made);
  parts_clear(l);
  if (!st) st = accumulate(slot, g);
  return st;
}

int mx__backprop(mx_array **outs, mx_array **cots, int nout, mx_array **targets, int nt,
                 mx_array **grads) {
  for (int i = 0; i < nt; i++) grads[i] = NULL;
  int st = MX_OK;
  void *stop = mx__ptrmap_new(), *index = mx__ptrmap_new();
  mx__node_list order = {0};
  bool *dep = NULL;
  mx_array **cot = NULL;
  part_list *parts = NULL;
  if (!stop || !index) { st = mx_last_status(); goto done; }
  for (int i = 0; i < nt && !st; i++) st = mx__ptrmap_put(stop, targets[i], i);
  if (st) goto done;
  if ((st = mx__graph_postorder(outs, nout, stop, true, &order, index))) goto done;
  size_t n = order.n;
  dep = calloc(n ? n : 1, sizeof *dep);
  cot = calloc(n ? n : 1, sizeof *cot);
  parts = calloc(n ? n : 1, sizeof *parts);
  if (!dep || !cot || !parts) { st = mx__set_error(MX_ERR_OOM, "vjp: out of memory"); goto done; }

  /* which nodes depend on a target (through differentiable ops) */
  for (size_t i = 0; i < n; i++) {
    mx_array *x = order.v[i];
    if (mx__ptrmap_get(stop, x) >= 0) { dep[i] = true; continue; }
    if (!x->op || x->op->zero_grad) continue;
    for (int j = 0; j < x->ninputs && !dep[i]; j++) dep[i] = dep[mx__ptrmap_get(index, x->inputs[j])];
  }

  /* seed */
  for (int k = 0; k < nout && !st; k++) {
    if (!outs[k] || !cots[k]) continue;
    int i = mx__ptrmap_get(index, outs[k]);
    if (!dep[i]) continue;
    st = accumulate(&cot[i], mx_array_retain(cots[k]));
  }

  /* reverse topological order */
  for (size_t ii = n; ii-- > 0 && !st;) {
    mx_array *x = order.v[ii];
    if (parts[ii].n && (st = parts_flush(x, &parts[ii], &cot[ii]))) break;
    if (!cot[ii]) continue;
    int t = mx__ptrmap_get(stop, x);
    if (t >= 0) continue; /* collected below */
    mx_array *c = cot[ii];
    cot[ii] = NULL;
    if (x->op && x->op->id == MX_OP_SLICE && x->ninputs == 1) {
      int k = mx__ptrmap_get(index, x->inputs[0]);
      if (dep[k]) { /* kept with the slice until the sliced array is reached */
        st = parts_push(&parts[k], x, c);
        if (st) mx_array_free(c);
      } else {
        mx_array_free(c);
      }
      continue;
    }
    bool need[64], *needp = need;
    mx_array *g_small[64], **g = g_small;
    if (x->ninputs > 64) {
      needp = calloc((size_t)x->ninputs, sizeof *needp);
      g = calloc((size_t)x->ninputs, sizeof *g);
      if (!needp || !g) st = mx__set_error(MX_ERR_OOM, "vjp: out of memory");
    }
    bool any = false;
    for (int j = 0; j < x->ninputs && !st; j++) {
      needp[j] = dep[mx__ptrmap_get(index, x->inputs[j])];
      g[j] = NULL;
      any = any || needp[j];
    }
    if (!st && any) {
      const char *name = mx__op_names[x->op->id];
      if (!x->op->vjp) {
        st = mx__set_error(MX_ERR_UNSUPPORTED,
                           "vjp: op '%s' is not differentiable (it has no VJP)", name);
      } else if ((st = x->op->vjp(x, c, g, needp))) {
        mx__prefix_error("vjp of '%s'", name);
      }
      /* the cotangent goes before the input cotangents are summed: held
       * here, it would keep a product the VJP wrapped (a reshape of it)
       * from counting as lone, and the sum from folding into an addmm
       * (MXC_VJP_EARLY_FREE=0 keeps it to the end, for A/B) */
      if (early_free_on()) {
        mx_array_free(c);
        c = NULL;
      }
      for (int j = 0; j < x->ninputs; j++) {
        mx_array *gj = g[j];
        g[j] = NULL;
        if (!gj) continue;
        mx_array *in = x->inputs[j];
        if (st || !needp[j]) { mx_array_free(gj); continue; }
        if (!same_shape(gj, in)) {
          char s1[128], s2[128];
          st = mx__set_error(MX_ERR_INTERNAL,
                             "vjp of '%s': cotangent of input %d has shape %s, input has %s",
                             name, j, mx__shape_str(gj->shape, gj->ndim, s1, sizeof s1),
                             mx__shape_str(in->shape, in->ndim, s2, sizeof s2));
          mx_array_free(gj);
          continue;
        }
        if (gj->dtype != in->dtype) {
          mx_array *cg = mx_astype(gj, in->dtype);
          mx_array_free(gj);
          if (!(gj = cg)) { st = mx_last_status(); continue; }
        }
        st = accumulate(&cot[mx__ptrmap_get(index, in)], gj);
      }
    }
    mx_array_free(c);
    if (needp != need) free(needp);
    if (g != g_small) free(g);
  }
  if (!st)
    for (int i = 0; i < nt; i++) {
      int k = mx__ptrmap_get(index, targets[i]);
      if (k < 0 || !cot[k]) continue;
      grads[i] = cot[k]; /* one target per array: tracers are distinct */
      cot[k] = NULL;
    }
done:
  if (cot)
    for (size_t i = 0; i < order.n; i++) mx_array_free(cot[i]);
  if (parts)
    for (size_t i = 0; i < order.n; i++) parts_clear(&parts[i]);
  free(parts);
  if (st)
    for (int i = 0; i < nt; i++) {
      mx_array_free(grads[i]);
      grads[i] = NULL;
    }
  free(cot);
  free(dep);
  free(order.v);
  mx__ptrmap_free(stop);
  mx__ptrmap_free(index);
  return st;
}

/* ==== vjp / jvp ====================================================================== */
/* NULL-safe: new tracers for primals; on failure frees what it made. */
static int make_tracers(mx_array **primals, int n, mx_array **tr, const char *op) {
  for (int i = 0; i < n; i++) {
    if (!primals[i]) {
      mx_array_free_n(tr, i);
      int st = mx_last_status();
      return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "%s: primal %d is NULL", op, i);
    }
    tr[i] = mx__tracer(primals[i]);
    if (!tr[i]) {
      mx_array_free_n(tr, i);
      return mx_last_status();
    }
  }
  return MX_OK;
}

/* Array of n pointers (never NULL for n == 0). */
static mx_array **ptrs(int n) {
  mx_array **p = calloc((size_t)(n > 0 ? n : 1), sizeof *p);
  if (!p) mx__set_error(MX_ERR_OOM, "transforms: out of memory");
  return p;
}

/* `v` cast to like's dtype after checking it has like's shape. */
static mx_array *conform(mx_array *v, mx_array *like, const char *op, const char *what, int i) {
  if (!v) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "%s: %s %d is NULL", op, what, i);
    return NULL;
  }
  if (!same_shape(v, like)) {
    char s1[128], s2[128];
    mx__set_error(MX_ERR_SHAPE, "%s: %s %d has shape %s, expected %s", op, what, i,
                  mx__shape_str(v->shape, v->ndim, s1, sizeof s1),
                  mx__shape_str(like->shape, like->ndim, s2, sizeof s2));
    return NULL;
  }
  return mx_astype(v, like->dtype);
}

/* Pushes grads[i] or zeros_like(like[i]) for each i; takes grads. */
static int push_or_zeros(mx_list *l, mx_array **grads, mx_array **like, int n) {
  int st = MX_OK;
  for (int i = 0; i < n; i++) {
    mx_array *g = grads[i];
    grads[i] = NULL;
    if (st) { mx_array_free(g); continue; }
    st = mx_list_push(l, g ? g : mx_zeros_like(like[i]));
  }
  return st;
}

int mx_vjp(mx_closure *f, mx_array **primals, int np, mx_array **cotangents, int nc,
           mx_list *outputs, mx_list *vjps) {
  if (!f || !vjps || np < 0 || (np && !primals) || nc < 0 || (nc && !cotangents))
    return mx__set_error(MX_ERR_INVALID_ARG, "vjp: invalid arguments");
  int st;
  mx_array **tr = ptrs(np), **grads = ptrs(np), **cots = NULL;
  mx_list outs = MX_LIST_INIT;
  int out_base = outputs ? outputs->size : 0, vjp_base = vjps->size;
  if (!tr || !grads) { st = mx_last_status(); goto fail_alloc; }
  if ((st = make_tracers(primals, np, tr, "vjp"))) goto fail_alloc;
  if ((st = mx__trace_apply(f, tr, np, &outs))) goto done;
  if (outs.size != nc) {
    st = mx__set_error(MX_ERR_INVALID_ARG, "vjp: %d cotangents given for %d outputs", nc,
                       outs.size);
    goto done;
  }
  if (!(cots = ptrs(nc))) { st = mx_last_status(); goto done; }
  for (int j = 0; j < nc && !st; j++)
    if (!(cots[j] = conform(cotangents[j], outs.items[j], "vjp", "cotangent", j)))
      st = mx_last_status();
  if (st) goto done;
  if ((st = mx__backprop(outs.items, cots, nc, tr, np, grads))) goto done;
  if ((st = push_or_zeros(vjps, grads, primals, np))) goto done;
  for (int j = 0; j < outs.size && outputs && !st; j++)
    st = mx_list_push_retain(outputs, outs.items[j]);
done:
  if (st) {
    if (outputs) mx__list_truncate(outputs, out_base);
    mx__list_truncate(vjps, vjp_base);
  }
  mx_array_free_n(tr, np);
  if (cots) mx_array_free_n(cots, nc);
  if (grads) mx_array_free_n(grads, np);
  free(cots);
  mx_list_clear(&outs);
fail_alloc:
  free(tr);
  free(grads);
  return st;
}

/* jvp by transposition: with c placeholders for the output cotangents,
 * G(c) = vjp(f)(c) is linear in c, and J t = d<G(c), t>/dc. */
int mx_jvp(mx_closure *f, mx_array **primals, int np, mx_array **tangents, int nt,
           mx_list *outputs, mx_list *jvps) {
  if (!f || !jvps || np < 0 || (np && !primals) || nt != np || (nt && !tangents))
    return mx__set_error(MX_ERR_INVALID_ARG, "jvp: %d tangents given for %d primals", nt, np);
  int st;
  mx_array **tr = ptrs(np), **G = ptrs(np), **tan = ptrs(np);
  mx_array **c = NULL, **J = NULL, **gsel = NULL, **tsel = NULL;
  mx_list outs = MX_LIST_INIT;
  int out_base = outputs ? outputs->size : 0, jvp_base = jvps->size;
  if (!tr || !G || !tan) { st = mx_last_status(); goto fail_alloc; }
  for (int i = 0; i < np; i++)
    if (!(tan[i] = conform(tangents[i], primals[i] ? primals[i] : tangents[i], "jvp",
                           "tangent", i))) {
      st = mx_last_status();
      goto fail_alloc;
    }
  if ((st = make_tracers(primals, np, tr, "jvp"))) goto fail_alloc;
  if ((st = mx__trace_apply(f, tr, np, &outs))) goto done;
  int m = outs.size;
  c = ptrs(m);
  J = ptrs(m);
  gsel = ptrs(np);
  tsel = ptrs(np);
  if (!c || !J || !gsel || !tsel) { st = mx_last_status(); goto done; }
  for (int j = 0; j < m && !st; j++) {
    mx_array *z = mx_zeros_like(outs.items[j]);
    c[j] = mx__tracer(z);
    mx_array_free(z);
    if (!c[j]) st = mx_last_status();
  }
  if (st) goto done;
  if ((st = mx__backprop(outs.items, c, m, tr, np, G))) goto done;
  int k = 0;
  for (int i = 0; i < np; i++)
    if (G[i]) {
      gsel[k] = G[i];
      tsel[k++] = tan[i];
    }
  if ((st = mx__backprop(gsel, tsel, k, c, m, J))) goto done;
  if ((st = push_or_zeros(jvps, J, outs.items, m))) goto done;
  for (int j = 0; j < m && outputs && !st; j++) st = mx_list_push_retain(outputs, outs.items[j]);
done:
  if (st) {
    if (outputs) mx__list_truncate(outputs, out_base);
    mx__list_truncate(jvps, jvp_base);
  }
  mx_array_free_n(tr, np);
  if (c) mx_array_free_n(c, outs.size);
  if (J) mx_array_free_n(J, outs.size);
  mx_list_clear(&outs);
fail_alloc:
  if (tan) mx_array_free_n(tan, np);
  if (G) mx_array_free_n(G, np);
  free(tr);
  free(G);
  free(tan);
  free(c);
  free(J);
  free(gsel);
  free(tsel);
  return st;
}

/* ==== grad / value_and_grad ============================================================ */
typedef struct {
  mx_closure *f;
  int nargs;
  bool with_value;
  int argnums[];
} vg_payload;

static void vg_destroy(void *p) {
  vg_payload *v = p;
  mx_closure_free(v->f);
  free(v);
}

static int vg_apply(void *payload, mx_array **in, int n, mx_list *out) {
  vg_payload *p = payload;
  const char *op = p->with_value ? "value_and_grad" : "grad";
  for (int k = 0; k < p->nargs; k++)
    if (p->argnums[k] >= n)
      return mx__set_error(MX_ERR_INVALID_ARG, "%s: argnum %d is out of range for %d inputs", op,
                           p->argnums[k], n);
  int st;
  mx_array **args = ptrs(n), **tr = ptrs(p->nargs), **grads = ptrs(p->nargs), **like = ptrs(p->nargs);
  mx_list outs = MX_LIST_INIT;
  mx_array *seed = NULL;
  if (!args || !tr || !grads || !like) { st = mx_last_status(); goto fail_alloc; }
  for (int k = 0; k < p->nargs; k++) like[k] = in[p->argnums[k]];
  if ((st = make_tracers(like, p->nargs, tr, op))) goto fail_alloc;
  for (int i = 0; i < n; i++) args[i] = in[i];
  for (int k = 0; k < p->nargs; k++) args[p->argnums[k]] = tr[k];
  if ((st = mx__trace_apply(p->f, args, n, &outs))) goto done;
  if (outs.size < 1) {
    st = mx__set_error(MX_ERR_INVALID_ARG, "%s: the function returned no outputs", op);
    goto done;
  }
  mx_array *y = outs.items[0];
  if (y->size != 1) {
    char s[128];
    st = mx__set_error(MX_ERR_SHAPE, "%s: the function's first output must be a scalar, got shape %s",
                       op, mx__shape_str(y->shape, y->ndim, s, sizeof s));
    goto done;
  }
  if (!mx_dtype_is_float(y->dtype)) {
    st = mx__set_error(MX_ERR_DTYPE, "%s: the function's first output has dtype %s, not a float",
                       op, mx_dtype_name(y->dtype));
    goto done;
  }
  if (!(seed = mx_ones_like(y))) { st = mx_last_status(); goto done; }
  if ((st = mx__backprop(&y, &seed, 1, tr, p->nargs, grads))) goto done;
  int base = out->size;
  for (int j = 0; j < outs.size && p->with_value && !st; j++)
    st = mx_list_push_retain(out, outs.items[j]);
  if (!st) st = push_or_zeros(out, grads, like, p->nargs);
  if (st) mx__list_truncate(out, base);
done:
  mx_array_free(seed);
  mx_array_free_n(tr, p->nargs);
  mx_array_free_n(grads, p->nargs);
  mx_list_clear(&outs);
fail_alloc:
  free(args);
  free(tr);
  free(grads);
  free(like);
  return st;
}

static mx_closure *make_vg(mx_closure *f, const int *argnums, int nargs, bool with_value) {
  const char *op = with_value ? "value_and_grad" : "grad";
  if (!f) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: function is NULL", op);
    return NULL;
  }
  int zero = 0;
  if (!argnums) {
    argnums = &zero;
    nargs = 1;
  }
  if (nargs < 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: negative number of argnums", op);
    return NULL;
  }
  for (int k = 0; k < nargs; k++) {
    if (argnums[k] < 0) {
      mx__set_error(MX_ERR_INVALID_ARG, "%s: argnum %d is negative", op, argnums[k]);
      return NULL;
    }
    for (int l = 0; l < k; l++)
      if (argnums[l] == argnums[k]) {
        mx__set_error(MX_ERR_INVALID_ARG, "%s: argnum %d is repeated", op, argnums[k]);
        return NULL;
      }
  }
  vg_payload *p = malloc(sizeof *p + sizeof(int) * (size_t)nargs);
  if (!p) {
    mx__set_error(MX_ERR_OOM, "%s: out of memory", op);
    return NULL;
  }
  p->f = mx_closure_retain(f);
  p->nargs = nargs;
  p->with_value = with_value;
  if (nargs) memcpy(p->argnums, argnums, sizeof(int) * (size_t)nargs);
  mx_closure *c = mx_closure_new(vg_apply, p, vg_destroy);
  if (!c) vg_destroy(p);
  return c;
}

mx_closure *mx_grad(mx_closure *f, const int *argnums, int nargnums) {
  return make_vg(f, argnums, nargnums, false);
}
mx_closure *mx_value_and_grad(mx_closure *f, const int *argnums, int nargnums) {
  return make_vg(f, argnums, nargnums, true);
}

/* ---- parameter maps: f(map, inputs) as a closure of [values..., inputs...] ---- */
typedef struct {
  mx_map_fn fn;
  void *payload;
  const mx_map *keys; /* borrowed: the caller's params (only keys are used) */
} map_payload;

static int map_apply(void *payload, mx_array **in, int n, mx_list *out) {
  map_payload *p = payload;
  int nk = mx_map_size(p->keys);
  mx_map *m = mx_map_new();
  if (!m) return mx_last_status();
  int st = MX_OK;
  for (int i = 0; i < nk && !st; i++) st = mx_map_set(m, mx_map_key(p->keys, i), in[i]);
  if (!st) st = p->fn(p->payload, m, in + nk, n - nk, out);
  mx_map_free(m);
  return st;
}

int mx_value_and_grad_map(mx_map_fn fn, void *payload, const mx_map *params, mx_array **inputs,
                          int ninputs, mx_list *values, mx_map *grads) {
  if (!fn || !params || !grads || ninputs < 0 || (ninputs && !inputs))
    return mx__set_error(MX_ERR_INVALID_ARG, "value_and_grad: invalid arguments");
  if (grads == params)
    return mx__set_error(MX_ERR_INVALID_ARG,
                         "value_and_grad: grads must be another map than params");
  int nk = mx_map_size(params), st;
  map_payload mp = {fn, payload, params};
  mx_array **args = ptrs(nk + ninputs);
  int *argnums = malloc(sizeof(int) * (size_t)(nk ? nk : 1));
  mx_closure *c = NULL, *vg = NULL;
  mx_list res = MX_LIST_INIT;
  if (!args || !argnums) { st = mx__set_error(MX_ERR_OOM, "value_and_grad: out of memory"); goto done; }
  for (int i = 0; i < nk; i++) {
    args[i] = mx_map_value(params, i);
    argnums[i] = i;
  }
  for (int i = 0; i < ninputs; i++) args[nk + i] = inputs[i];
  c = mx_closure_new(map_apply, &mp, NULL);
  vg = c ? mx_value_and_grad(c, argnums, nk) : NULL;
  if (!vg) { st = mx_last_status(); goto done; }
  if ((st = mx_closure_apply(vg, args, nk + ninputs, &res))) goto done;
  mx_map_clear(grads);
  int nv = res.size - nk;
  for (int i = 0; i < nk && !st; i++)
    st = mx_map_set(grads, mx_map_key(params, i), res.items[nv + i]);
  for (int j = 0; j < nv && values && !st; j++) st = mx_list_push_retain(values, res.items[j]);
  if (st) mx_map_clear(grads);
done:
  mx_list_clear(&res);
  mx_closure_free(vg);
  mx_closure_free(c);
  free(args);
  free(argnums);
  return st;
}

/* ==== custom VJPs and checkpointing ===================================================== */
/* Shared state of a custom-vjp closure and of the nodes it creates. */
typedef struct custom_state {
  int refcount;
  mx_closure *f;
  mx_closure *vjp; /* user VJP, or NULL for checkpoint (recompute f) */
} custom_state;

static void state_release(void *data, void *ctx) {
  MX_UNUSED(ctx);
  custom_state *s = data;
  if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  mx_closure_free(s->f);
  mx_closure_free(s->vjp);
  free(s);
}
static void state_destroy(void *p) { state_release(p, NULL); }

/* VJP of output `index` of a custom node group: inputs are
 * [holder, primals (np), stopped outputs (nout)]. */
static int vjp_custom(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  const mx__custom_params *p = MX__PARAMS(out, mx__custom_params);
  custom_state *s = p->state;
  int np = p->nprimals, m = p->nouts, st = MX_OK;
  mx_array **primals = out->inputs + 1, **fouts = out->inputs + 1 + np;
  mx_array **cots = ptrs(m);
  mx_list res = MX_LIST_INIT;
  if (!cots) return mx_last_status();
  for (int k = 0; k < m && !st; k++) {
    cots[k] = k == p->index ? mx_array_retain(cot) : mx_zeros_like(fouts[k]);
    if (!cots[k]) st = mx_last_status();
  }
  if (!st) {
    if (s->vjp) {
      mx_array **args = ptrs(np + 2 * m);
      if (!args) {
        st = mx_last_status();
      } else {
        for (int i = 0; i < np; i++) args[i] = primals[i];
        for (int k = 0; k < m; k++) {
          args[np + k] = cots[k];
          args[np + m + k] = fouts[k];
        }
        st = mx_closure_apply(s->vjp, args, np + 2 * m, &res);
        free(args);
        if (!st && res.size != np)
          st = mx__set_error(MX_ERR_INVALID_ARG,
                             "custom_vjp: the vjp function returned %d arrays for %d primals",
                             res.size, np);
      }
    } else { /* checkpoint: recompute f from its inputs and differentiate it */
      st = mx_vjp(s->f, primals, np, cots, m, NULL, &res);
    }
  }
  for (int i = 0; i < np && !st; i++) {
    if (!need[1 + i]) continue;
    mx_array *gi = conform(res.items[i], primals[i], "custom_vjp", "cotangent of primal", i);
    if (!gi) st = mx_last_status();
    g[1 + i] = gi;
  }
  mx_list_clear(&res);
  mx_array_free_n(cots, m);
  free(cots);
  return st;
}
static const mx__op_def def_custom = {.id = MX_OP_CUSTOM, .vjp = vjp_custom};

static int custom_apply(void *payload, mx_array **in, int n, mx_list *out) {
  custom_state *s = payload;
  mx_list fo = MX_LIST_INIT;
  int st = mx_closure_apply(s->f, in, n, &fo);
  if (st) return st;
  int m = fo.size, base = out->size;
  mx_array **ins = ptrs(1 + n + m);
  mx_array *holder = NULL;
  if (!ins) { st = mx_last_status(); goto done; }
  __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
  holder = mx_array_from_data_nocopy(s, (int64_t[]){0}, 1, MX_UINT8, state_release, NULL);
  if (!holder) {
    state_release(s, NULL);
    st = mx_last_status();
    goto done;
  }
  ins[0] = holder;
  for (int i = 0; i < n; i++) ins[1 + i] = in[i];
  for (int k = 0; k < m && !st; k++)
    if (!(ins[1 + n + k] = mx_stop_gradient(fo.items[k]))) st = mx_last_status();
  for (int k = 0; k < m && !st; k++) {
    mx__custom_params p = {.pass = 1 + n + k, .index = k, .nprimals = n, .nouts = m, .state = s};
    st = mx_list_push(out, mx__custom_node(&def_custom, fo.items[k], ins, 1 + n + m, &p));
  }
  if (st) mx__list_truncate(out, base);
  for (int k = 0; k < m && ins; k++) mx_array_free(ins[1 + n + k]);
done:
  mx_array_free(holder);
  free(ins);
  mx_list_clear(&fo);
  return st;
}

static mx_closure *make_custom(mx_closure *f, mx_closure *vjp, const char *op) {
  if (!f) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: function is NULL", op);
    return NULL;
  }
  custom_state *s = malloc(sizeof *s);
  if (!s) {
    mx__set_error(MX_ERR_OOM, "%s: out of memory", op);
    return NULL;
  }
  *s = (custom_state){1, mx_closure_retain(f), mx_closure_retain(vjp)};
  mx_closure *c = mx_closure_new(custom_apply, s, state_destroy);
  if (!c) state_release(s, NULL);
  return c;
}

mx_closure *mx_custom_vjp(mx_closure *f, mx_closure *vjp) {
  if (!vjp) {
    mx__set_error(MX_ERR_INVALID_ARG, "custom_vjp: vjp function is NULL");
    return NULL;
  }
  return make_custom(f, vjp, "custom_vjp");
}

mx_closure *mx_checkpoint(mx_closure *f) { return make_custom(f, NULL, "checkpoint"); }
