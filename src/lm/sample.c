/* sample.c — mlx-lm's sampler and logits processors, built from mxc ops;
 * stop conditions (EOS ids, stop strings over streamed text).
 * Semantics: see include/mxc/lm_sample.h and docs/sampling.md. */
#include "array_impl.h" /* mx__graph_* */
#include "internal.h"
#include "mxc/lm_sample.h"
#include "ops/shape_params.h" /* mx__store_at */
#include "mxc/ops.h"
#include "mxc/random.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Temporaries of one function, freed together. */
typedef struct {
  mx_array *v[32];
  int n;
} tmp_list;
static mx_array *keep(tmp_list *t, mx_array *a) {
  MX_ASSERT(t->n < (int)(sizeof t->v / sizeof *t->v));
  if (a) t->v[t->n++] = a;
  return a;
}
static void tmp_free(tmp_list *t) {
  for (int i = 0; i < t->n; i++) mx_array_free(t->v[i]);
  t->n = 0;
}

/* ---- shared checks ------------------------------------------------------- */

/* The vocabulary size (last dim) or -1 with an error. */
static int64_t vocab_of(const char *op, mx_array *a) {
  if (!a) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "%s: input is NULL", op);
    return -1;
  }
  if (mx_array_ndim(a) < 1 || mx_array_dim(a, -1) < 1) {
    char b[128];
    mx__set_error(MX_ERR_SHAPE, "%s: logits %s need a non-empty last (vocab) axis", op,
                  mx_array_describe(a, b, sizeof b));
    return -1;
  }
  if (!mx_dtype_is_float(mx_array_dtype(a))) {
    mx__set_error(MX_ERR_DTYPE, "%s: logits must be floating point, got %s", op,
                  mx_dtype_name(mx_array_dtype(a)));
    return -1;
  }
  return mx_array_dim(a, -1);
}

/* int32 indices of shape (1, ..., 1, n) with a's number of dimensions. */
static mx_array *index_array(mx_array *a, const int32_t *ids, int64_t n) {
  int nd = mx_array_ndim(a);
  int64_t shape[MX_MAX_NDIM];
  for (int d = 0; d < nd; d++) shape[d] = 1;
  shape[nd - 1] = n;
  return mx_array_from_data(ids, shape, nd, MX_INT32);
}

static int check_ids(const char *op, const int32_t *ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab)
      return mx__set_error(MX_ERR_RANGE, "%s: token id %d is outside the vocabulary [0, %lld)",
                           op, (int)ids[i], (long long)vocab);
  return MX_OK;
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Sorted distinct ids of the last context_size entries of history (all when
 * context_size <= 0) into *out (malloc'd, caller frees; NULL when empty) and
 * their count into *n_out; unique=false keeps repeats. Returns a status. */
static int context_ids(const int32_t *history, int64_t n_history, int context_size,
                       bool unique, int32_t **out, int64_t *n_out) {
  *n_out = 0;
  *out = NULL;
  int64_t n = n_history;
  if (context_size > 0 && n > context_size) n = context_size;
  if (n <= 0) return MX_OK;
  int32_t *v = malloc(sizeof *v * (size_t)n);
  if (!v)
    return mx__set_error(MX_ERR_OOM, "sampler: out of memory copying %lld history ids",
                         (long long)n);
  memcpy(v, history + (n_history - n), sizeof *v * (size_t)n);
  if (unique) {
    qsort(v, (size_t)n, sizeof *v, cmp_i32);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
      if (m == 0 || v[m - 1] != v[i]) v[m++] = v[i];
    n = m;
  }
  *n_out = n;
  *out = v;
  return MX_OK;
}

static mx_array *neg_inf_like(mx_array *a) {
  return mx_array_scalar(-INFINITY, mx_array_dtype(a));
}

/* ---- filters on log-probabilities --------------------------------------- */

mx_array *mx_sample_apply_top_k(mx_array *logprobs, int top_k) {
  const char *op = "sample_top_k";
  int64_t V = vocab_of(op, logprobs);
  if (V < 0) return NULL;
  if (top_k <= 0 || top_k >= V) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: top_k has to be in (0, %lld), got %d", op,
                  (long long)V, top_k);
    return NULL;
  }
  int ax = mx_array_ndim(logprobs) - 1;
  tmp_list t = {0};
  // Positions k.. of an arg-partition of -logprobs are the ones to drop.
  mx_array *neg = keep(&t, mx_negative(logprobs));
  mx_array *part = keep(&t, mx_argpartition(neg, top_k - 1, ax));
  mx_array *drop = keep(&t, mx_slice_axis(part, ax, top_k, V, 1));
  mx_array *ninf = keep(&t, neg_inf_like(logprobs));
  mx_array *r = mx_put_along_axis(logprobs, drop, ninf, ax);
  tmp_free(&t);
  return r;
}

mx_array *mx_sample_apply_top_p(mx_array *logprobs, double top_p) {
  const char *op = "sample_top_p";
  if (vocab_of(op, logprobs) < 0) return NULL;
  if (!(top_p >= 0 && top_p <= 1)) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: top_p has to be in [0, 1], got %g", op, top_p);
    return NULL;
  }
  int ax = mx_array_ndim(logprobs) - 1;
  tmp_list t = {0};
  // Ascending order; a token stays when the mass up to and including it
  // exceeds 1 - top_p (the top tokens whose mass reaches top_p).
  mx_array *probs = keep(&t, mx_exp(logprobs));
  mx_array *order = keep(&t, mx_argsort(logprobs, ax));
  mx_array *sorted = keep(&t, mx_take_along_axis(probs, order, ax));
  mx_array *cum = keep(&t, mx_cumsum(sorted, ax, false, true));
  mx_array *thr = keep(&t, mx_array_scalar(1.0 - top_p, mx_array_dtype(logprobs)));
  mx_array *sorted_keep = keep(&t, mx_greater(cum, thr));
  mx_array *zeros = keep(&t, mx_zeros_like(sorted_keep));
  mx_array *keep_mask = keep(&t, mx_put_along_axis(zeros, order, sorted_keep, ax));
  mx_array *ninf = keep(&t, neg_inf_like(logprobs));
  mx_array *r = keep_mask ? mx_where(keep_mask, logprobs, ninf) : NULL;
  tmp_free(&t);
  return r;
}

mx_array *mx_sample_apply_min_p(mx_array *logprobs, double min_p, int min_tokens_to_keep) {
  const char *op = "sample_min_p";
  int64_t V = vocab_of(op, logprobs);
  if (V < 0) return NULL;
  if (!(min_p >= 0 && min_p <= 1)) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: min_p has to be in [0, 1], got %g", op, min_p);
    return NULL;
  }
  if (min_tokens_to_keep < 1) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: min_tokens_to_keep has to be >= 1, got %d", op,
                  min_tokens_to_keep);
    return NULL;
  }
  int ax = mx_array_ndim(logprobs) - 1;
  int mtk = min_tokens_to_keep > V ? (int)V : min_tokens_to_keep;
  tmp_list t = {0};
  // Drop tokens with p < min_p * max(p), i.e. logprob < max + log(min_p).
  mx_array *top = keep(&t, mx_max(logprobs, (const int[]){ax}, 1, true));
  mx_array *thr = keep(&t, mx_add_scalar(top, log(min_p)));
  mx_array *remove = keep(&t, mx_less(logprobs, thr));
  if (mtk > 1) {
    mx_array *part = keep(&t, mx_argpartition(logprobs, (int)(V - mtk), ax));
    mx_array *best = keep(&t, mx_slice_axis(part, ax, V - mtk, V, 1));
    mx_array *no = keep(&t, mx_array_scalar(0, MX_BOOL));
    remove = keep(&t, mx_put_along_axis(remove, best, no, ax));
  }
  mx_array *ninf = keep(&t, neg_inf_like(logprobs));
  mx_array *r = remove ? mx_where(remove, ninf, logprobs) : NULL;
  tmp_free(&t);
  return r;
}

/* ---- logits processors ---------------------------------------------------- */

mx_array *mx_sample_logit_bias(mx_array *logits, const int32_t *ids, const float *values, int n) {
  const char *op = "sample_logit_bias";
  int64_t V = vocab_of(op, logits);
  if (V < 0) return NULL;
  if (n <= 0) return mx_array_retain(logits);
  if (!ids || !values) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: ids or values is NULL", op);
    return NULL;
  }
  if (check_ids(op, ids, n, V)) return NULL;
  int nd = mx_array_ndim(logits);
  int64_t vshape[MX_MAX_NDIM];
  for (int d = 0; d < nd; d++) vshape[d] = 1;
  vshape[nd - 1] = n;
  tmp_list t = {0};
  mx_array *idx = keep(&t, index_array(logits, ids, n));
  mx_array *val = keep(&t, mx_array_from_data(values, vshape, nd, MX_FLOAT32));
  mx_array *r = idx && val ? mx_scatter_add_axis(logits, idx, val, nd - 1) : NULL;
  tmp_free(&t);
  return r;
}

mx_array *mx_sample_repetition_penalty(mx_array *logits, const int32_t *history,
                                       int64_t n_history, double penalty, int context_size) {
  const char *op = "sample_repetition_penalty";
  int64_t V = vocab_of(op, logits);
  if (V < 0) return NULL;
  if (!(penalty >= 0)) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: penalty must be non-negative, got %g", op, penalty);
    return NULL;
  }
  if (n_history > 0 && !history) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: history is NULL", op);
    return NULL;
  }
  int64_t n;
  int32_t *ids;
  if (context_ids(history, n_history, context_size, true, &ids, &n)) return NULL;
  if (!ids) return mx_array_retain(logits);
  if (check_ids(op, ids, n, V)) {
    free(ids);
    return NULL;
  }
  int ax = mx_array_ndim(logits) - 1;
  tmp_list t = {0};
  mx_array *idx = keep(&t, index_array(logits, ids, n));
  free(ids);
  mx_array *sel = keep(&t, mx_take_along_axis(logits, idx, ax));
  mx_array *zero = keep(&t, mx_array_scalar(0, mx_array_dtype(logits)));
  mx_array *p = keep(&t, mx_array_scalar(penalty, mx_array_dtype(logits)));
  mx_array *is_neg = keep(&t, mx_less(sel, zero));
  mx_array *mul = keep(&t, mx_multiply(sel, p));
  mx_array *div = keep(&t, mx_divide(sel, p));
  mx_array *upd = keep(&t, mx_where(is_neg, mul, div));
  mx_array *r = upd ? mx_put_along_axis(logits, idx, upd, ax) : NULL;
  tmp_free(&t);
  return r;
}

/* logits - penalty at each id of the context (distinct ids once when
 * unique, else once per occurrence). */
static mx_array *additive_penalty(const char *op, mx_array *logits, const int32_t *history,
                                  int64_t n_history, double penalty, int context_size,
                                  bool unique) {
  int64_t V = vocab_of(op, logits);
  if (V < 0) return NULL;
  int64_t n;
  int32_t *ids;
  if (context_ids(history, n_history, context_size, unique, &ids, &n)) return NULL;
  if (!ids) return mx_array_retain(logits);
  if (check_ids(op, ids, n, V)) {
    free(ids);
    return NULL;
  }
  tmp_list t = {0};
  mx_array *idx = keep(&t, index_array(logits, ids, n));
  free(ids);
  mx_array *v = keep(&t, mx_array_scalar(-penalty, mx_array_dtype(logits)));
  mx_array *r = idx && v ? mx_scatter_add_axis(logits, idx, v, mx_array_ndim(logits) - 1) : NULL;
  tmp_free(&t);
  return r;
}

/* ---- the sampler --------------------------------------------------------- */

struct mx_sampler {
  mx_sampler_config cfg; /* logit-bias pointers point into ids/values below */
  int32_t *bias_ids;
  float *bias_values;
  mx_array *key; /* uint32 (2,) */
};

mx_sampler_config mx_sampler_config_default(void) {
  mx_sampler_config c;
  memset(&c, 0, sizeof c);
  c.min_tokens_to_keep = 1;
  c.repetition_context_size = 20;
  c.presence_context_size = 20;
  c.frequency_context_size = 20;
  return c;
}

mx_sampler *mx_sampler_new(const mx_sampler_config *cfg) {
  const char *op = "sampler";
  if (!cfg) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: config is NULL", op);
    return NULL;
  }
  const mx_sampler_config *c = cfg;
  const char *bad = NULL;
  if (!(c->temp >= 0) || isinf(c->temp)) bad = "temp must be a finite number >= 0";
  else if (!(c->top_p >= 0 && c->top_p <= 1)) bad = "top_p must be in [0, 1]";
  else if (!(c->min_p >= 0 && c->min_p <= 1)) bad = "min_p must be in [0, 1]";
  else if (c->min_tokens_to_keep < 1) bad = "min_tokens_to_keep must be >= 1";
  else if (c->top_k < 0) bad = "top_k must be >= 0 (0 = off)";
  else if (!(c->repetition_penalty >= 0)) bad = "repetition_penalty must be >= 0";
  else if (isnan(c->presence_penalty) || isnan(c->frequency_penalty)) bad = "penalty is NaN";
  else if (c->n_logit_bias < 0 || (c->n_logit_bias > 0 && (!c->logit_bias_ids ||
                                                          !c->logit_bias_values)))
    bad = "logit_bias needs n_logit_bias >= 0 ids and values";
  if (bad) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: %s", op, bad);
    return NULL;
  }
  mx_sampler *s = calloc(1, sizeof *s);
  if (!s) goto oom;
  s->cfg = *c;
  if (c->n_logit_bias > 0) {
    s->bias_ids = malloc(sizeof(int32_t) * (size_t)c->n_logit_bias);
    s->bias_values = malloc(sizeof(float) * (size_t)c->n_logit_bias);
    if (!s->bias_ids || !s->bias_values) goto oom;
    memcpy(s->bias_ids, c->logit_bias_ids, sizeof(int32_t) * (size_t)c->n_logit_bias);
    memcpy(s->bias_values, c->logit_bias_values, sizeof(float) * (size_t)c->n_logit_bias);
  }
  s->cfg.logit_bias_ids = s->bias_ids;
  s->cfg.logit_bias_values = s->bias_values;
  s->key = mx_random_key(c->seed);
  if (!s->key) {
    mx_sampler_free(s);
    return NULL;
  }
  return s;
oom:
  mx_sampler_free(s);
  mx__set_error(MX_ERR_OOM, "%s: out of memory", op);
  return NULL;
}

void mx_sampler_free(mx_sampler *s) {
  if (!s) return;
  free(s->bias_ids);
  free(s->bias_values);
  mx_array_free(s->key);
  free(s);
}

void mx_sampler_reseed(mx_sampler *s, uint64_t seed) {
  if (!s) return;
  mx_array *k = mx_random_key(seed);
  if (!k) return;
  mx_array_free(s->key);
  s->key = k;
}

mx_array *mx_sampler_process(mx_sampler *s, mx_array *logits, const int32_t *history,
                             int64_t n_history) {
  if (!s) {
    mx__set_error(MX_ERR_INVALID_ARG, "sampler: sampler is NULL");
    return NULL;
  }
  if (vocab_of("sampler", logits) < 0) return NULL;
  if (n_history < 0 || (n_history > 0 && !history)) {
    mx__set_error(MX_ERR_INVALID_ARG, "sampler: history is NULL or n_history < 0");
    return NULL;
  }
  const mx_sampler_config *c = &s->cfg;
  mx_array *x = mx_array_retain(logits), *y;
  if (c->n_logit_bias > 0) {
    y = mx_sample_logit_bias(x, c->logit_bias_ids, c->logit_bias_values, c->n_logit_bias);
    mx_array_free(x);
    x = y;
  }
  if (x && c->repetition_penalty != 0) {
    y = mx_sample_repetition_penalty(x, history, n_history, c->repetition_penalty,
                                     c->repetition_context_size);
    mx_array_free(x);
    x = y;
  }
  if (x && c->presence_penalty != 0) {
    y = additive_penalty("sample_presence_penalty", x, history, n_history, c->presence_penalty,
                         c->presence_context_size, true);
    mx_array_free(x);
    x = y;
  }
  if (x && c->frequency_penalty != 0) {
    y = additive_penalty("sample_frequency_penalty", x, history, n_history,
                         c->frequency_penalty, c->frequency_context_size, false);
    mx_array_free(x);
    x = y;
  }
  return x;
}

/* While generate captures a decode step for replay (a GPU graph): the key
 * stays the same array, evaluated, and the split's first half is written
 * back into it in place after the step (mx__graph_defer), so every replay
 * draws from a fresh key — the sequence of the step-by-step path. */
static mx_array *next_subkey_captured(mx_sampler *s) {
  tmp_list t = {0};
  mx_array *keys = keep(&t, mx_random_split(s->key, 2));
  mx_array *k0 = keep(&t, mx_slice_axis(keys, 0, 0, 1, 1));
  mx_array *k1 = keep(&t, mx_slice_axis(keys, 0, 1, 2, 1));
  mx_array *next = keep(&t, mx_reshape(k0, (const int64_t[]){2}, 1));
  mx_array *sub = mx_reshape(k1, (const int64_t[]){2}, 1);
  mx_array *w = next ? keep(&t, mx__store_at(s->key, next, NULL, 0)) : NULL;
  if (!sub || !w || mx__graph_defer(w)) {
    mx_array_free(sub);
    sub = NULL;
  }
  tmp_free(&t);
  return sub;
}

/* Splits the key: keeps one half for later draws, returns the other. */
static mx_array *next_subkey(mx_sampler *s) {
  if (mx__graph_capturing()) return next_subkey_captured(s);
  tmp_list t = {0};
  mx_array *keys = keep(&t, mx_random_split(s->key, 2)); // (2, 2)
  mx_array *k0 = keep(&t, mx_slice_axis(keys, 0, 0, 1, 1));
  mx_array *k1 = keep(&t, mx_slice_axis(keys, 0, 1, 2, 1));
  mx_array *next = mx_reshape(k0, (const int64_t[]){2}, 1);
  mx_array *sub = mx_reshape(k1, (const int64_t[]){2}, 1);
  tmp_free(&t);
  if (!next || !sub) {
    mx_array_free(next);
    mx_array_free(sub);
    return NULL;
  }
  /* on a GPU the key is kept evaluated (a decode step captured for replay
   * updates it in place, see above) */
  if (mx_default_device() == MX_GPU && mx_array_eval(next)) {
    mx_array_free(next);
    mx_array_free(sub);
    return NULL;
  }
  mx_array_free(s->key);
  s->key = next;
  return sub;
}

mx_array *mx_sampler_sample_logprobs(mx_sampler *s, mx_array *logprobs) {
  if (!s) {
    mx__set_error(MX_ERR_INVALID_ARG, "sampler: sampler is NULL");
    return NULL;
  }
  if (vocab_of("sampler", logprobs) < 0) return NULL;
  const mx_sampler_config *c = &s->cfg;
  int ax = mx_array_ndim(logprobs) - 1;
  if (c->temp == 0) return mx_argmax(logprobs, ax, false);
  mx_array *x = mx_array_retain(logprobs), *y;
  if (c->top_p > 0 && c->top_p < 1) {
    y = mx_sample_apply_top_p(x, c->top_p);
    mx_array_free(x);
    x = y;
  }
  if (x && c->min_p != 0) {
    y = mx_sample_apply_min_p(x, c->min_p, c->min_tokens_to_keep);
    mx_array_free(x);
    x = y;
  }
  if (x && c->top_k > 0) {
    y = mx_sample_apply_top_k(x, c->top_k);
    mx_array_free(x);
    x = y;
  }
  if (!x) return NULL;
  mx_array *scaled = mx_multiply_scalar(x, 1.0 / c->temp);
  mx_array_free(x);
  if (!scaled) return NULL;
  mx_array *sub = next_subkey(s);
  mx_array *r = sub ? mx_random_categorical(scaled, ax, 0, sub) : NULL;
  mx_array_free(sub);
  mx_array_free(scaled);
  return r;
}

mx_array *mx_sampler_sample(mx_sampler *s, mx_array *logits, const int32_t *history,
                            int64_t n_history) {
  mx_array *x = mx_sampler_process(s, logits, history, n_history);
  if (!x) return NULL;
  int ax = mx_array_ndim(x) - 1;
  mx_array *lse = mx_logsumexp(x, (const int[]){ax}, 1, true);
  mx_array *lp = mx_subtract(x, lse);
  mx_array_free(x);
  mx_array_free(lse);
  if (!lp) return NULL;
  mx_array *r = mx_sampler_sample_logprobs(s, lp);
  mx_array_free(lp);
  return r;
}

/* ---- stop conditions -------------------------------------------------------- */

struct mx_stop {
  int32_t *eos;
  int n_eos, cap_eos;
  char **stops;
  size_t *stop_len;
  int n_stop;
  char *pend; /* text seen but not yet emitted (a possible stop prefix) */
  size_t n_pend, cap_pend;
  char *out; /* what the last call emitted */
  size_t cap_out;
  int matched;
};

mx_stop *mx_stop_new(const int32_t *eos_ids, int n_eos, const char *const *stop_strings,
                     int n_stop) {
  mx_stop *st = calloc(1, sizeof *st);
  if (!st) goto oom;
  st->matched = -1;
  for (int i = 0; i < n_eos; i++)
    if (mx_stop_add_eos(st, eos_ids[i])) {
      mx_stop_free(st);
      return NULL;
    }
  if (n_stop > 0) {
    st->stops = calloc((size_t)n_stop, sizeof *st->stops);
    st->stop_len = calloc((size_t)n_stop, sizeof *st->stop_len);
    if (!st->stops || !st->stop_len) goto oom;
    for (int i = 0; i < n_stop; i++) {
      if (!stop_strings[i] || !*stop_strings[i]) continue;
      size_t n = strlen(stop_strings[i]);
      char *c = malloc(n + 1);
      if (!c) goto oom;
      memcpy(c, stop_strings[i], n + 1);
      st->stops[st->n_stop] = c;
      st->stop_len[st->n_stop++] = n;
    }
  }
  return st;
oom:
  mx_stop_free(st);
  mx__set_error(MX_ERR_OOM, "stop: out of memory");
  return NULL;
}

void mx_stop_free(mx_stop *st) {
  if (!st) return;
  if (st->stops)
    for (int i = 0; i < st->n_stop; i++) free(st->stops[i]);
  free(st->stops);
  free(st->stop_len);
  free(st->eos);
  free(st->pend);
  free(st->out);
  free(st);
}

int mx_stop_add_eos(mx_stop *st, int32_t id) {
  if (!st) return mx__set_error(MX_ERR_INVALID_ARG, "stop: NULL");
  if (mx_stop_is_eos(st, id)) return MX_OK;
  if (st->n_eos == st->cap_eos) {
    int cap = st->cap_eos ? 2 * st->cap_eos : 4;
    int32_t *e = realloc(st->eos, sizeof *e * (size_t)cap);
    if (!e) return mx__set_error(MX_ERR_OOM, "stop: out of memory");
    st->eos = e;
    st->cap_eos = cap;
  }
  st->eos[st->n_eos++] = id;
  return MX_OK;
}

bool mx_stop_is_eos(const mx_stop *st, int64_t token) {
  if (!st) return false;
  for (int i = 0; i < st->n_eos; i++)
    if (st->eos[i] == token) return true;
  return false;
}

static bool grow(char **p, size_t *cap, size_t need) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  char *q = realloc(*p, c);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

/* Moves the first n bytes of pend to out. */
static void emit_prefix(mx_stop *st, size_t n, const char **emit, size_t *emit_len) {
  if (n) memcpy(st->out, st->pend, n);
  memmove(st->pend, st->pend + n, st->n_pend - n);
  st->n_pend -= n;
  *emit = st->out ? st->out : "";
  *emit_len = n;
}

bool mx_stop_feed(mx_stop *st, const char *chunk, size_t len, const char **emit,
                  size_t *emit_len) {
  *emit = "";
  *emit_len = 0;
  if (!st) return false;
  if (st->matched >= 0) return true;
  if (!grow(&st->pend, &st->cap_pend, st->n_pend + len + 1) ||
      !grow(&st->out, &st->cap_out, st->n_pend + len + 1)) {
    // Out of memory: pass the text through unchecked rather than lose it.
    mx__set_error(MX_ERR_OOM, "stop: out of memory");
    *emit = chunk;
    *emit_len = len;
    return false;
  }
  if (len) memcpy(st->pend + st->n_pend, chunk, len);
  st->n_pend += len;
  // Earliest complete stop string (pend holds no complete one before this
  // chunk, so a match may start in the held tail or in the chunk).
  size_t best = (size_t)-1;
  int which = -1;
  for (int i = 0; i < st->n_stop; i++) {
    size_t L = st->stop_len[i];
    for (size_t p = 0; p + L <= st->n_pend && p < best; p++)
      if (!memcmp(st->pend + p, st->stops[i], L)) {
        best = p;
        which = i;
        break;
      }
  }
  if (which >= 0) {
    st->matched = which;
    emit_prefix(st, best, emit, emit_len);
    st->n_pend = 0;
    return true;
  }
  // Hold back the longest tail that is a proper prefix of a stop string.
  size_t hold = 0;
  for (int i = 0; i < st->n_stop; i++) {
    size_t L = st->stop_len[i];
    size_t kmax = L - 1 < st->n_pend ? L - 1 : st->n_pend;
    for (size_t k = kmax; k > hold; k--)
      if (!memcmp(st->pend + st->n_pend - k, st->stops[i], k)) {
        hold = k;
        break;
      }
  }
  emit_prefix(st, st->n_pend - hold, emit, emit_len);
  return false;
}

size_t mx_stop_flush(mx_stop *st, const char **emit) {
  size_t n = 0;
  *emit = "";
  if (!st || st->matched >= 0) return 0;
  if (!grow(&st->out, &st->cap_out, st->n_pend + 1)) {
    mx__set_error(MX_ERR_OOM, "stop: out of memory");
    return 0;
  }
  emit_prefix(st, st->n_pend, emit, &n);
  return n;
}

int mx_stop_matched(const mx_stop *st) { return st ? st->matched : -1; }

void mx_stop_reset(mx_stop *st) {
  if (!st) return;
  st->n_pend = 0;
  st->matched = -1;
}
