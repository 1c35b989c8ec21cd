/* optimizers.c — SGD, Adam, AdamW, Lion and Adafactor on flat parameter
 * maps, with MLX's semantics (mlx.optimizers): every update is built from
 * ops (lazy), the state is a flat name -> array map ("step",
 * "learning_rate", "<param>.<slot>") that saves and loads with the
 * safetensors code. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ops/optim_params.h"
#include "mxc/ops.h"
#include "mxc/optim.h"

typedef enum { O_SGD, O_ADAM, O_ADAMW, O_LION, O_ADAFACTOR } opt_kind;

struct mx_optimizer {
  opt_kind kind;
  double lr;
  mx_schedule *sched; /* NULL: constant lr */
  int64_t step;
  mx_map *state;
  mx_array *gscale; /* during mx__optimizer_update_scaled: every gradient's scale (0-d) */
  union {
    mx_sgd_options sgd;
    mx_adam_options adam;
    mx_lion_options lion;
    mx_adafactor_options ada;
  } o;
};

/* ---- temporaries -------------------------------------------------------------- */
typedef struct {
  mx_array *v[96];
  int n;
} pool;
static mx_array *K(pool *p, mx_array *a) {
  MX_ASSERT(p->n < (int)(sizeof p->v / sizeof *p->v));
  if (a) p->v[p->n++] = a;
  return a;
}
static void pool_free(pool *p) {
  for (int i = 0; i < p->n; i++) mx_array_free(p->v[i]);
  p->n = 0;
}
#define MUL(a, s) K(P, mx_multiply_scalar((a), (s)))
#define ADDS(a, s) K(P, mx_add_scalar((a), (s)))
#define ADD(a, b) K(P, mx_add((a), (b)))
#define SUB(a, b) K(P, mx_subtract((a), (b)))
#define MULA(a, b) K(P, mx_multiply((a), (b)))
#define DIV(a, b) K(P, mx_divide((a), (b)))

/* ---- construction ---------------------------------------------------------------- */
static mx_optimizer *new_opt(opt_kind k, double lr, mx_schedule *sched) {
  mx_optimizer *o = calloc(1, sizeof *o);
  if (!o || !(o->state = mx_map_new())) {
    free(o);
    mx__set_error(MX_ERR_OOM, "optimizer: out of memory");
    return NULL;
  }
  o->kind = k;
  o->lr = lr;
  o->sched = mx_schedule_retain(sched);
  return o;
}

mx_optimizer *mx_optimizer_sgd(const mx_sgd_options *opt) {
  if (!opt) return mx__set_error(MX_ERR_INVALID_ARG, "sgd: options are NULL"), NULL;
  if (opt->nesterov && (opt->momentum <= 0 || opt->dampening != 0)) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "sgd: nesterov momentum requires a momentum and zero dampening");
    return NULL;
  }
  mx_optimizer *o = new_opt(O_SGD, opt->learning_rate, opt->lr_schedule);
  if (o) o->o.sgd = *opt;
  return o;
}
mx_optimizer *mx_optimizer_adam(const mx_adam_options *opt) {
  if (!opt) return mx__set_error(MX_ERR_INVALID_ARG, "adam: options are NULL"), NULL;
  mx_optimizer *o = new_opt(O_ADAM, opt->learning_rate, opt->lr_schedule);
  if (o) o->o.adam = *opt;
  return o;
}
mx_optimizer *mx_optimizer_adamw(const mx_adam_options *opt) {
  if (!opt) return mx__set_error(MX_ERR_INVALID_ARG, "adamw: options are NULL"), NULL;
  mx_optimizer *o = new_opt(O_ADAMW, opt->learning_rate, opt->lr_schedule);
  if (o) o->o.adam = *opt;
  return o;
}
mx_optimizer *mx_optimizer_lion(const mx_lion_options *opt) {
  if (!opt) return mx__set_error(MX_ERR_INVALID_ARG, "lion: options are NULL"), NULL;
  mx_optimizer *o = new_opt(O_LION, opt->learning_rate, opt->lr_schedule);
  if (o) o->o.lion = *opt;
  return o;
}
mx_optimizer *mx_optimizer_adafactor(const mx_adafactor_options *opt) {
  if (!opt) return mx__set_error(MX_ERR_INVALID_ARG, "adafactor: options are NULL"), NULL;
  if (!opt->relative_step && !opt->lr_schedule && !(opt->learning_rate > 0)) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "adafactor: without relative_step a learning_rate (or schedule) is needed");
    return NULL;
  }
  mx_optimizer *o = new_opt(O_ADAFACTOR, opt->learning_rate, opt->lr_schedule);
  if (o) o->o.ada = *opt;
  return o;
}

void mx_optimizer_free(mx_optimizer *o) {
  if (!o) return;
  mx_schedule_free(o->sched);
  mx_map_free(o->state);
  free(o);
}

const char *mx_optimizer_name(const mx_optimizer *o) {
  static const char *names[] = {"sgd", "adam", "adamw", "lion", "adafactor"};
  return o ? names[o->kind] : "";
}

int64_t mx_optimizer_step(const mx_optimizer *o) { return o ? o->step : 0; }

double mx_optimizer_learning_rate(const mx_optimizer *o) {
  if (!o) return 0;
  return o->sched ? mx_schedule_value(o->sched, o->step) : o->lr;
}

void mx_optimizer_set_learning_rate(mx_optimizer *o, double lr) {
  if (!o) return;
  mx_schedule_free(o->sched);
  o->sched = NULL;
  o->lr = lr;
}

mx_map *mx_optimizer_state(mx_optimizer *o) { return o ? o->state : NULL; }

/* ---- state slots -------------------------------------------------------------------- */
static int slot_name(char *buf, size_t n, const char *key, const char *slot) {
  int w = snprintf(buf, n, "%s.%s", key, slot);
  if (w < 0 || (size_t)w >= n)
    return mx__set_error(MX_ERR_INVALID_ARG, "optimizer: parameter name too long: %s", key);
  return MX_OK;
}

/* The slot (borrowed), created as zeros of `shape` (param's dtype) if absent. */
static mx_array *slot(mx_optimizer *o, const char *key, const char *name, mx_array *param,
                      const int64_t *shape, int ndim) {
  char buf[1024];
  if (slot_name(buf, sizeof buf, key, name)) return NULL;
  if (mx_map_has(o->state, buf)) return mx_map_get(o->state, buf);
  if (mx_map_set_take(o->state, buf, mx_zeros(shape, ndim, mx_array_dtype(param))))
    return NULL;
  return mx_map_get(o->state, buf);
}
static mx_array *slot_like(mx_optimizer *o, const char *key, const char *name, mx_array *p) {
  return slot(o, key, name, p, mx_array_shape(p), mx_array_ndim(p));
}
static int slot_set(mx_optimizer *o, const char *key, const char *name, mx_array *v) {
  char buf[1024];
  if (!v) return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  if (slot_name(buf, sizeof buf, key, name)) return mx_last_status();
  return mx_map_set(o->state, buf, v);
}

/* ---- the update rules (one parameter) ------------------------------------------------ */
/* Each writes a new reference to the updated parameter into *out. */

static int apply_sgd(mx_optimizer *o, const char *key, mx_array *p, mx_array *g, double lr,
                     pool *P, mx_array **out) {
  const mx_sgd_options *s = &o->o.sgd;
  mx_array *v0 = slot_like(o, key, "v", p);
  if (!v0) return mx_last_status();
  if (s->weight_decay != 0) g = ADD(g, MUL(p, s->weight_decay));
  if (s->momentum <= 0) {
    *out = mx_subtract(p, MUL(g, lr));
    return *out ? MX_OK : mx_last_status();
  }
  mx_array *v = MUL(v0, s->momentum);
  v = s->dampening > 0 ? ADD(v, MUL(g, 1.0 - s->dampening)) : ADD(v, g);
  mx_array *upd = s->nesterov ? ADD(g, MUL(v, s->momentum)) : v;
  if (slot_set(o, key, "v", v)) return mx_last_status();
  *out = mx_subtract(p, MUL(upd, lr));
  return *out ? MX_OK : mx_last_status();
}

/* Whether Adam's one-pass kernel takes gradient g of p as it is: of p's
 * dtype, or 16-bit for a float32 p (read exactly); the scale of
 * mx__optimizer_update_scaled goes into that kernel too. */
static bool adam_fused_ok(const mx_optimizer *o, mx_array *p, mx_array *g) {
  mx_dtype dt = mx_array_dtype(p), gt = mx_array_dtype(g);
  return (o->kind == O_ADAM || o->kind == O_ADAMW) && (dt == MX_FLOAT32 || dt == MX_FLOAT64) &&
         (gt == dt || (dt == MX_FLOAT32 && (gt == MX_BFLOAT16 || gt == MX_FLOAT16))) &&
         mx_array_ndim(g) == mx_array_ndim(p) && mx_array_ndim(p) + 1 <= MX_MAX_NDIM &&
         !memcmp(mx_array_shape(g), mx_array_shape(p), sizeof(int64_t) * (size_t)mx_array_ndim(p));
}

/* adam_update's coefficients at this step (form ADAM_M; callers set which) */
static mx__adam_params adam_coefs(const mx_optimizer *o, double lr) {
  const mx_adam_options *a = &o->o.adam;
  mx__adam_params ap = {.which = MX__ADAM_M, .beta1 = a->beta1, .beta2 = a->beta2,
                        .c1 = lr, .c2 = 1, .eps = a->eps,
                        .decay = o->kind == O_ADAMW ? 1.0 - lr * a->weight_decay : 1.0};
  if (a->bias_correction) {
    double t = (double)o->step;
    ap.c1 = lr / (1.0 - pow(a->beta1, t));
    ap.c2 = 1.0 / sqrt(1.0 - pow(a->beta2, t));
  }
  return ap;
}

static int apply_adam(mx_optimizer *o, const char *key, mx_array *p, mx_array *g, double lr,
                      pool *P, mx_array **out) {
  const mx_adam_options *a = &o->o.adam;
  mx_dtype dt = mx_array_dtype(p);
  if (dt == MX_FLOAT32 || dt == MX_FLOAT64) {
    /* three fused passes (adam_update) instead of ~14 ops; the same math */
    mx_array *m0 = slot_like(o, key, "m", p), *v0 = m0 ? slot_like(o, key, "v", p) : NULL;
    if (!v0) return mx_last_status();
    mx__adam_params ap = adam_coefs(o, lr);
    if (!adam_fused_ok(o, p, g)) {
      mx_array *m = K(P, mx__adam_update(&ap, m0, g, NULL, NULL));
      ap.which = MX__ADAM_V;
      mx_array *v = K(P, mx__adam_update(&ap, v0, g, NULL, NULL));
      if (!m || !v) return mx_last_status();
      if (slot_set(o, key, "m", m) || slot_set(o, key, "v", v)) return mx_last_status();
      ap.which = MX__ADAM_P;
      *out = mx__adam_update(&ap, p, m, v, NULL);
      return *out ? MX_OK : mx_last_status();
    }
    /* one pass: [m', v', p'] packed, the state and the parameter views of it */
    ap.which = MX__ADAM_ALL;
    mx_array *sc = o->gscale ? K(P, mx_astype(o->gscale, dt)) : NULL;
    if (o->gscale && !sc) return mx_last_status();
    mx_array *all = K(P, mx__adam_update_all(&ap, p, m0, v0, g, sc));
    mx_array *part[3] = {NULL, NULL, NULL};
    int ax0 = 0;
    for (int i = 0; i < 3 && all; i++) {
      part[i] = mx_squeeze(K(P, mx_slice_axis(all, 0, i, i + 1, 1)), &ax0, 1);
      if (!part[i]) break;
    }
    if (!part[2] || slot_set(o, key, "m", part[0]) || slot_set(o, key, "v", part[1])) {
      int st = mx_last_status();
      mx_array_free_n(part, 3);
      return st ? st : MX_ERR_INTERNAL;
    }
    mx_array_free(part[0]);
    mx_array_free(part[1]);
    *out = part[2];
    return MX_OK;
  }
  if (o->kind == O_ADAMW) p = MUL(p, 1.0 - lr * a->weight_decay);
  mx_array *m0 = slot_like(o, key, "m", p), *v0 = m0 ? slot_like(o, key, "v", p) : NULL;
  if (!v0) return mx_last_status();
  mx_array *m = ADD(MUL(m0, a->beta1), MUL(g, 1.0 - a->beta1));
  mx_array *v = ADD(MUL(v0, a->beta2), MUL(K(P, mx_square(g)), 1.0 - a->beta2));
  if (slot_set(o, key, "m", m) || slot_set(o, key, "v", v)) return mx_last_status();
  mx_array *upd;
  if (a->bias_correction) {
    double t = (double)o->step;
    double c1 = lr / (1.0 - pow(a->beta1, t)), c2 = 1.0 / sqrt(1.0 - pow(a->beta2, t));
    upd = DIV(MUL(m, c1), ADDS(MUL(K(P, mx_sqrt(v)), c2), a->eps));
  } else {
    upd = DIV(MUL(m, lr), ADDS(K(P, mx_sqrt(v)), a->eps));
  }
  *out = mx_subtract(p, upd);
  return *out ? MX_OK : mx_last_status();
}

static int apply_lion(mx_optimizer *o, const char *key, mx_array *p, mx_array *g, double lr,
                      pool *P, mx_array **out) {
  const mx_lion_options *l = &o->o.lion;
  mx_array *m0 = slot_like(o, key, "m", p);
  if (!m0) return mx_last_status();
  mx_array *c = ADD(MUL(m0, l->beta1), MUL(g, 1.0 - l->beta1));
  mx_array *m = ADD(MUL(m0, l->beta2), MUL(g, 1.0 - l->beta2));
  if (slot_set(o, key, "m", m)) return mx_last_status();
  if (l->weight_decay > 0) p = MUL(p, 1.0 - lr * l->weight_decay);
  *out = mx_subtract(p, MUL(K(P, mx_sign(c)), lr));
  return *out ? MX_OK : mx_last_status();
}

static mx_array *rms(pool *P, mx_array *x) {
  return K(P, mx_sqrt(K(P, mx_mean(K(P, mx_square(x)), NULL, 0, false))));
}

static int apply_adafactor(mx_optimizer *o, const char *key, mx_array *p, mx_array *g,
                           double lr, pool *P, mx_array **out) {
  const mx_adafactor_options *a = &o->o.ada;
  mx_dtype dt = mx_array_dtype(p);
  double t = (double)o->step;
  int nd = mx_array_ndim(g);
  const int64_t *sh = mx_array_shape(p);
  bool factored = nd >= 2;
  /* learning rate: relative step and parameter scale */
  double rel = lr;
  if (a->relative_step) {
    double min_step = a->warmup_init ? 1e-6 * t : 1e-2;
    rel = MX_MIN(min_step, 1.0 / sqrt(t));
  }
  mx_array *lr_t = NULL; /* 0-d, or NULL: the scalar rel */
  if (a->scale_parameter) {
    mx_array *e2 = K(P, mx_array_scalar(a->eps2, dt));
    lr_t = MUL(K(P, mx_maximum(e2, rms(P, p))), rel);
    if (!lr_t) return mx_last_status();
  }
  double beta2 = 1.0 - pow(t, a->decay_rate);
  mx_array *upd = ADDS(K(P, mx_square(g)), a->eps1);
  if (factored) {
    int64_t rs[8], cs[8];
    memcpy(rs, sh, sizeof(int64_t) * (size_t)(nd - 1));
    memcpy(cs, sh, sizeof(int64_t) * (size_t)(nd - 2));
    cs[nd - 2] = sh[nd - 1];
    mx_array *r0 = slot(o, key, "exp_avg_sq_row", p, rs, nd - 1);
    mx_array *c0 = r0 ? slot(o, key, "exp_avg_sq_col", p, cs, nd - 1) : NULL;
    if (!c0) return mx_last_status();
    int last = -1, second = -2;
    mx_array *r = ADD(MUL(r0, beta2), MUL(K(P, mx_mean(upd, &last, 1, false)), 1.0 - beta2));
    mx_array *c = ADD(MUL(c0, beta2), MUL(K(P, mx_mean(upd, &second, 1, false)), 1.0 - beta2));
    if (slot_set(o, key, "exp_avg_sq_row", r) || slot_set(o, key, "exp_avg_sq_col", c))
      return mx_last_status();
    mx_array *rf = K(P, mx_rsqrt(DIV(r, K(P, mx_mean(r, &last, 1, true)))));
    mx_array *cf = K(P, mx_rsqrt(c));
    mx_array *outer = MULA(K(P, mx_expand_dims(rf, &last, 1)), K(P, mx_expand_dims(cf, &second, 1)));
    upd = MULA(outer, g);
  } else {
    mx_array *v0 = slot_like(o, key, "exp_avg_sq", p);
    if (!v0) return mx_last_status();
    mx_array *v = ADD(MUL(v0, beta2), MUL(upd, 1.0 - beta2));
    if (slot_set(o, key, "exp_avg_sq", v)) return mx_last_status();
    upd = MULA(K(P, mx_rsqrt(v)), g);
  }
  mx_array *one = K(P, mx_array_scalar(1.0, dt));
  upd = DIV(upd, K(P, mx_maximum(one, MUL(rms(P, upd), 1.0 / a->clip_threshold))));
  upd = lr_t ? MULA(lr_t, upd) : MUL(upd, rel);
  if (a->use_beta1) {
    mx_array *e0 = slot_like(o, key, "exp_avg", p);
    if (!e0) return mx_last_status();
    mx_array *e = ADD(MUL(e0, a->beta1), MUL(upd, 1.0 - a->beta1));
    if (slot_set(o, key, "exp_avg", e)) return mx_last_status();
    upd = e;
  }
  if (a->weight_decay != 0)
    p = ADD(p, lr_t ? MULA(p, MUL(lr_t, -a->weight_decay)) : MUL(p, -a->weight_decay * rel));
  *out = mx_subtract(p, upd);
  return *out ? MX_OK : mx_last_status();
}

/* ---- Adam over many parameters at once -------------------------------------------------- */
uint64_t mx__adam_many_runs;

/* MXC_ADAM_MANY=0: one adam_update a parameter (A/B). Read at each update,
 * not cached: the tests compare both paths in one process. */
static bool adam_many_on(void) {
  const char *e = getenv("MXC_ADAM_MANY");
  return !(e && !strcmp(e, "0"));
}

/* The parameters of dtype dt that Adam's one-pass kernel takes (indices
 * into params, in order) in idx; their count. */
static int adam_many_members(const mx_optimizer *o, const mx_map *params, const mx_map *grads,
                             mx_dtype dt, int *idx) {
  int n = 0;
  for (int i = 0; i < mx_map_size(params); i++) {
    const char *k = mx_map_key(params, i);
    mx_array *p = mx_map_value(params, i);
    if (mx_array_dtype(p) == dt && mx_map_has(grads, k) &&
        adam_fused_ok(o, p, mx_map_get(grads, k)))
      idx[n++] = i;
  }
  return n;
}

/* One ADAM_MANY node for the n parameters idx[0..n) (of one dtype); the
 * state slots "m", "v" and the parameters become views of its rows
 * (slice + reshape), the values ADAM_ALL would give each. */
static int adam_many_group(mx_optimizer *o, mx_map *params, const mx_map *grads, double lr,
                           const int *idx, int n) {
  mx_array **ins = malloc(sizeof *ins * (size_t)(4 * n));
  if (!ins) return mx__set_error(MX_ERR_OOM, "%s update: out of memory", mx_optimizer_name(o));
  mx_array **pm = ins, **m = ins + n, **v = ins + 2 * n, **g = ins + 3 * n;
  int st = MX_OK;
  for (int j = 0; j < n && !st; j++) {
    const char *k = mx_map_key(params, idx[j]);
    pm[j] = mx_map_value(params, idx[j]);
    g[j] = mx_map_get(grads, k);
    m[j] = slot_like(o, k, "m", pm[j]);
    v[j] = m[j] ? slot_like(o, k, "v", pm[j]) : NULL;
    if (!v[j]) st = mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  }
  mx_array *all = NULL, *sc = NULL, *row[3] = {NULL, NULL, NULL};
  if (!st) {
    const mx_dtype dt = mx_array_dtype(pm[0]);
    mx__adam_params ap = adam_coefs(o, lr);
    ap.which = MX__ADAM_MANY;
    sc = o->gscale ? mx_astype(o->gscale, dt) : NULL;
    all = !o->gscale || sc ? mx__adam_update_many(&ap, pm, m, v, g, n, sc) : NULL;
    int ax0 = 0;
    for (int r = 0; r < 3 && all; r++) {
      mx_array *s = mx_slice_axis(all, 0, r, r + 1, 1);
      row[r] = mx_squeeze(s, &ax0, 1);
      mx_array_free(s);
      if (!row[r]) break;
    }
    if (!row[2]) st = mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  }
  /* no parameter nor slot value has changed before this point */
  int64_t off = 0;
  for (int j = 0; j < n && !st; j++) {
    const char *k = mx_map_key(params, idx[j]);
    const int64_t size = mx_array_size(pm[j]);
    mx_array *part[3] = {NULL, NULL, NULL};
    for (int r = 0; r < 3; r++) {
      mx_array *s = mx_slice_axis(row[r], 0, off, off + size, 1);
      part[r] = mx_reshape(s, mx_array_shape(pm[j]), mx_array_ndim(pm[j]));
      mx_array_free(s);
      if (!part[r]) break;
    }
    if (!part[2] || slot_set(o, k, "m", part[0]) || slot_set(o, k, "v", part[1])) {
      st = mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
      mx_array_free_n(part, 3);
      break;
    }
    mx_array_free(part[0]);
    mx_array_free(part[1]);
    /* pm[j] is the map's reference, dropped here: not used past this point */
    st = mx_map_set_take(params, k, part[2]);
    off += size;
  }
  if (!st) __atomic_fetch_add(&mx__adam_many_runs, 1, __ATOMIC_RELAXED);
  mx_array_free_n(row, 3);
  mx_array_free(all);
  mx_array_free(sc);
  free(ins);
  return st;
}

/* Adam / AdamW: the parameters of each of float32 and float64 that the
 * one-pass kernel takes, when at least two, in one ADAM_MANY node (one
 * launch for the lot, not one a parameter); done[i] set for each. */
static int adam_many(mx_optimizer *o, mx_map *params, const mx_map *grads, double lr,
                     bool *done) {
  if ((o->kind != O_ADAM && o->kind != O_ADAMW) || !adam_many_on()) return MX_OK;
  const int np = mx_map_size(params);
  int *idx = malloc(sizeof *idx * (size_t)(np ? np : 1));
  if (!idx) return mx__set_error(MX_ERR_OOM, "%s update: out of memory", mx_optimizer_name(o));
  int st = MX_OK;
  bool slots = false;
  static const mx_dtype dts[2] = {MX_FLOAT32, MX_FLOAT64};
  for (int d = 0; d < 2 && !st; d++) {
    const int n = adam_many_members(o, params, grads, dts[d], idx);
    if (n < 2) continue;
    /* every parameter's slots first, in the parameters' order: the state
     * map's order as one update a parameter makes it */
    for (int i = 0; i < np && !slots && !st; i++) {
      const char *k = mx_map_key(params, i);
      mx_array *p = mx_map_value(params, i);
      if (mx_map_has(grads, k) && (!slot_like(o, k, "m", p) || !slot_like(o, k, "v", p)))
        st = mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
    }
    slots = true;
    if (!st) st = adam_many_group(o, params, grads, lr, idx, n);
    for (int j = 0; j < n && !st; j++) done[idx[j]] = true;
  }
  free(idx);
  return st;
}

/* ---- update ------------------------------------------------------------------------------ */
int mx_optimizer_update(mx_optimizer *o, mx_map *params, const mx_map *grads) {
  if (!o || !params || !grads)
    return mx__set_error(MX_ERR_INVALID_ARG, "optimizer_update: NULL argument");
  /* validate everything first: nothing changes on error */
  for (int i = 0; i < mx_map_size(grads); i++) {
    const char *k = mx_map_key(grads, i);
    if (!mx_map_has(params, k))
      return mx__set_error(MX_ERR_NOT_FOUND,
                           "%s update: gradient '%s' has no parameter of that name",
                           mx_optimizer_name(o), k);
    mx_array *p = mx_map_get(params, k), *g = mx_map_value(grads, i);
    if (mx_array_ndim(p) != mx_array_ndim(g) ||
        memcmp(mx_array_shape(p), mx_array_shape(g), sizeof(int64_t) * (size_t)mx_array_ndim(p)))
      return mx__set_error(MX_ERR_SHAPE, "%s update: gradient '%s' has another shape than its parameter",
                           mx_optimizer_name(o), k);
    if (!mx_dtype_is_float(mx_array_dtype(p)))
      return mx__set_error(MX_ERR_DTYPE, "%s update: parameter '%s' is not floating point (%s)",
                           mx_optimizer_name(o), k, mx_dtype_name(mx_array_dtype(p)));
  }
  /* as MLX: the learning rate of this update is schedule(step), then step++ */
  double lr = mx_optimizer_learning_rate(o);
  o->step++;
  if (mx_map_set_take(o->state, "step", mx_array_scalar_int(o->step, MX_INT64)) ||
      mx_map_set_take(o->state, "learning_rate", mx_array_scalar(lr, MX_FLOAT32)))
    return mx_last_status();
  bool *done = calloc((size_t)mx_map_size(params) + 1, sizeof *done);
  if (!done) return mx__set_error(MX_ERR_OOM, "%s update: out of memory", mx_optimizer_name(o));
  int rc = adam_many(o, params, grads, lr, done);
  for (int i = 0; i < mx_map_size(params) && !rc; i++) {
    const char *k = mx_map_key(params, i);
    if (done[i] || !mx_map_has(grads, k)) continue;
    mx_array *p = mx_map_value(params, i), *g = mx_map_get(grads, k);
    pool P = {0};
    mx_array *np = NULL;
    if (!adam_fused_ok(o, p, g)) { /* else Adam's kernel casts and scales g itself */
      mx_dtype dt = mx_array_dtype(p);
      if (g && mx_array_dtype(g) != dt) g = K(&P, mx_astype(g, dt));
      if (g && o->gscale) {
        mx_array *sc = K(&P, mx_astype(o->gscale, dt));
        g = sc ? K(&P, mx_multiply(g, sc)) : NULL;
      }
    }
    rc = !g ? mx_last_status()
       : o->kind == O_SGD ? apply_sgd(o, k, p, g, lr, &P, &np)
       : o->kind == O_LION ? apply_lion(o, k, p, g, lr, &P, &np)
       : o->kind == O_ADAFACTOR ? apply_adafactor(o, k, p, g, lr, &P, &np)
                                : apply_adam(o, k, p, g, lr, &P, &np);
    pool_free(&P);
    if (rc || !np) {
      mx_array_free(np);
      rc = rc ? rc : (mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL);
      break;
    }
    rc = mx_map_set_take(params, k, np);
  }
  free(done);
  return rc;
}

int mx__optimizer_update_scaled(mx_optimizer *o, mx_map *params, const mx_map *grads,
                                mx_array *scale) {
  if (!o) return mx__set_error(MX_ERR_INVALID_ARG, "optimizer_update: NULL argument");
  if (scale && (mx_array_ndim(scale) != 0 || !mx_dtype_is_float(mx_array_dtype(scale))))
    return mx__set_error(MX_ERR_SHAPE, "optimizer_update: the gradient scale must be a 0-d "
                         "float array");
  o->gscale = scale;
  int st = mx_optimizer_update(o, params, grads);
  o->gscale = NULL;
  return st;
}

int mx_optimizer_eval(mx_optimizer *o, mx_map *params) {
  if (!o) return mx__set_error(MX_ERR_INVALID_ARG, "optimizer_eval: NULL optimizer");
  int np = params ? mx_map_size(params) : 0, ns = mx_map_size(o->state);
  mx_array **all = malloc(sizeof(mx_array *) * (size_t)(np + ns + 1));
  if (!all) return mx__set_error(MX_ERR_OOM, "optimizer_eval: out of memory");
  int n = 0;
  for (int i = 0; i < np; i++) all[n++] = mx_map_value(params, i);
  for (int i = 0; i < ns; i++) all[n++] = mx_map_value(o->state, i);
  int rc = mx_eval(all, n);
  free(all);
  return rc;
}

int mx_optimizer_load_state(mx_optimizer *o, const mx_map *state) {
  if (!o || !state) return mx__set_error(MX_ERR_INVALID_ARG, "optimizer_load_state: NULL argument");
  int64_t step = 0;
  if (mx_map_has(state, "step")) {
    mx_array *s = mx_map_get(state, "step");
    if (mx_array_size(s) != 1 || mx_array_copy_to(s, MX_INT64, &step, 1))
      return mx__set_error(MX_ERR_FORMAT, "optimizer_load_state: 'step' must be a scalar");
    if (step < 0) return mx__set_error(MX_ERR_FORMAT, "optimizer_load_state: negative step");
  }
  mx_map *copy = mx_map_copy(state);
  if (!copy) return mx_last_status();
  mx_map_free(o->state);
  o->state = copy;
  o->step = step;
  return MX_OK;
}

/* ---- gradient utilities --------------------------------------------------------------------- */
mx_array *mx__lone_cast_source(mx_array *g) {
  if (!g || g->buf || !g->op || g->op->id != MX_OP_ASTYPE || g->refcount != 1 ||
      g->ninputs != 1 || g->dtype != MX_FLOAT32)
    return NULL;
  mx_array *s = g->inputs[0];
  return s->dtype == MX_BFLOAT16 || s->dtype == MX_FLOAT16 ? s : NULL;
}

int mx__grad_clip_factor(const mx_map *grads, double max_norm, mx_array **norm_out,
                         mx_array **factor) {
  *norm_out = *factor = NULL;
  if (!grads) return mx__set_error(MX_ERR_INVALID_ARG, "clip_grad_norm: grads is NULL");
  const int ng = mx_map_size(grads);
  mx_array *norm;
  if (ng == 0) {
    norm = mx_array_scalar(0.0, MX_FLOAT32);
  } else {
    mx_array **all = malloc(sizeof *all * (size_t)ng);
    if (!all) return mx__set_error(MX_ERR_OOM, "clip_grad_norm: out of memory");
    for (int i = 0; i < ng; i++) all[i] = mx_map_value(grads, i);
    mx_array *acc = mx__sum_squares(all, ng);
    free(all);
    norm = mx_sqrt(acc);
    mx_array_free(acc);
  }
  if (!norm) return mx_last_status();
  mx_array *d = mx_add_scalar(norm, 1e-6), *mn = mx_array_scalar(max_norm, MX_FLOAT32);
  mx_array *q = mx_divide(mn, d), *one = mx_array_scalar(1.0, MX_FLOAT32);
  mx_array *f = mx_minimum(q, one);
  mx_array_free_n((mx_array *[]){d, mn, q, one}, 4);
  if (!f) {
    mx_array_free(norm);
    return mx_last_status();
  }
  *norm_out = norm;
  *factor = f;
  return MX_OK;
}

int mx_clip_grad_norm(mx_map *grads, double max_norm, mx_array **total_norm) {
  if (total_norm) *total_norm = NULL;
  /* one sum_squares op over every gradient (float64 sums), not a square,
   * a sum and an add for each; normalizer = min(max_norm / (norm + 1e-6), 1) */
  mx_array *norm = NULL, *f = NULL;
  int rc = mx__grad_clip_factor(grads, max_norm, &norm, &f);
  for (int i = 0; !rc && i < mx_map_size(grads); i++) {
    mx_array *g = mx_map_value(grads, i);
    mx_array *fc = mx_astype(f, mx_array_dtype(g));
    rc = mx_map_set_take(grads, mx_map_key(grads, i), mx_multiply(g, fc));
    mx_array_free(fc);
  }
  mx_array_free(f);
  if (!rc && total_norm) *total_norm = norm;
  else mx_array_free(norm);
  return rc;
}

int mx_grads_accumulate(mx_map *acc, const mx_map *grads) {
  if (!acc || !grads) return mx__set_error(MX_ERR_INVALID_ARG, "grads_accumulate: NULL map");
  for (int i = 0; i < mx_map_size(grads); i++) {
    const char *k = mx_map_key(grads, i);
    mx_array *g = mx_map_value(grads, i);
    int rc = mx_map_has(acc, k) ? mx_map_set_take(acc, k, mx_add(mx_map_get(acc, k), g))
                                : mx_map_set(acc, k, g);
    if (rc) return rc;
  }
  return MX_OK;
}

int mx_grads_scale(mx_map *grads, double s) {
  if (!grads) return mx__set_error(MX_ERR_INVALID_ARG, "grads_scale: NULL map");
  for (int i = 0; i < mx_map_size(grads); i++) {
    int rc = mx_map_set_take(grads, mx_map_key(grads, i),
                             mx_multiply_scalar(mx_map_value(grads, i), s));
    if (rc) return rc;
  }
  return MX_OK;
}
