/* generate.c — the generation loop: chunked prefill, then one token at a
 * time through the KV cache (mlx-lm's generate_step). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "array_impl.h"
#include "lm_internal.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "ops/shape_params.h" /* mx__store_at */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int32_t greedy(mx_array *logits) {
  mx_array *a = mx_argmax(logits, -1, false);
  int64_t id = -1;
  int st = a ? mx_array_item_int(a, &id) : mx_last_status();
  mx_array_free(a);
  return st ? st : (int32_t)id;
}

/* Runs tokens[0..n) through the model and picks the next token from the
 * logits of the last position. */
static int32_t step(mx_lm_model *m, const int32_t *tokens, int64_t n, mx_lm_cache *c,
                    const mx_lm_generate_options *o) {
  mx_array *t = mx_array_from_data(tokens, (int64_t[]){1, n}, 2, MX_INT32);
  mx_array *logits = mx_lm_forward_last(m, t, c);
  mx_array_free(t);
  if (!logits) return mx_last_status();
  const int64_t *s = mx_array_shape(logits);
  mx_array *last = mx_slice(logits, (int64_t[]){0, s[1] - 1, 0}, (int64_t[]){1, s[1], s[2]},
                            NULL, 3);
  mx_array *flat = mx_reshape(last, (int64_t[]){s[2]}, 1);
  mx_array_free(logits);
  mx_array_free(last);
  if (!flat) return mx_last_status();
  int32_t id = o->sampler ? o->sampler(o->sampler_ctx, flat) : greedy(flat);
  mx_array_free(flat);
  if (id >= 0 && id >= m->config.vocab_size)
    return mx__set_error(MX_ERR_RANGE, "generate: sampler returned id %d >= vocab size %lld", id,
                         (long long)m->config.vocab_size);
  return id;
}

/* The lazy id (shape (1, 1), for the next forward) of the last position of
 * tokens' logits. */
static mx_array *lazy_step(mx_lm_model *m, mx_array *tokens, mx_lm_cache *c,
                           const mx_lm_generate_options *o) {
  mx_array *logits = mx_lm_forward_last(m, tokens, c);
  if (!logits) return NULL;
  const int64_t *s = mx_array_shape(logits);
  mx_array *last = mx_slice(logits, (int64_t[]){0, s[1] - 1, 0}, (int64_t[]){1, s[1], s[2]},
                            NULL, 3);
  mx_array *flat = mx_reshape(last, (int64_t[]){s[2]}, 1);
  mx_array_free(logits);
  mx_array_free(last);
  mx_array *id = !flat              ? NULL
                 : o->lazy_sampler ? o->lazy_sampler(o->sampler_ctx, flat)
                                   : mx_argmax(flat, -1, false);
  mx_array_free(flat);
  mx_array *r = id ? mx_reshape(id, (int64_t[]){1, 1}, 2) : NULL;
  mx_array_free(id);
  if (r && mx_async_eval(&r, 1)) {
    mx_array_free(r);
    return NULL;
  }
  return r;
}

static int32_t read_id(mx_lm_model *m, mx_array *y) {
  int64_t id = -1;
  int st = mx_array_item_int(y, &id);
  if (st) return st;
  if (id < 0 || id >= m->config.vocab_size)
    return mx__set_error(MX_ERR_RANGE, "generate: sampler returned id %lld outside [0, %lld)",
                         (long long)id, (long long)m->config.vocab_size);
  return (int32_t)id;
}

/* ---- decode steps replayed from a captured GPU graph ------------------------------
 * After the prompt, the KV cache moves into static buffers of the final
 * length and one decode step (embedding of the last id, every layer with
 * its cache written in place at the device-side position, argmax, then
 * id and position updated on the device) is captured once as a GPU graph;
 * each further token is one replay plus a 4-byte copy of the id, so the
 * host does no graph building, evaluation or kernel launches per token.
 * Used for greedy and lazily sampled decoding on the GPU when the model
 * needs no attention masks (mx__lm_static_ok); MXC_CUDA_GRAPH=0 turns it
 * off. See docs/cuda.md. */
typedef struct {
  int n;
  mx_array **keys, **values; /* static caches (B, KV, capacity, D) */
  mx_array *tok;             /* (1, 1): the id the next replay embeds, then its successor */
  mx_array *pos;             /* (1,) int32: the position of tok */
  mx_array *next;            /* the id the graph writes (lives as long as the graph) */
  mx__graph *graph;
} replay;

static void replay_free(replay *r) {
  mx__graph_free(r->graph); /* first: waits for the device */
  for (int i = 0; i < r->n; i++) {
    if (r->keys) mx_array_free(r->keys[i]);
    if (r->values) mx_array_free(r->values[i]);
  }
  free(r->keys);
  free(r->values);
  mx_array_free(r->tok);
  mx_array_free(r->pos);
  mx_array_free(r->next);
  *r = (replay){0};
}

static bool replay_wanted(mx_lm_model *m, const mx_lm_generate_options *o, const mx_lm_cache *c,
                          int64_t capacity) {
  const char *e = getenv("MXC_CUDA_GRAPH"), *prof = getenv("MXC_PROFILE");
  if (e && !strcmp(e, "0")) return false;
  if (prof && *prof && strcmp(prof, "0")) return false; /* profiling times each kernel */
  return mx_default_device() == MX_GPU && !c->max_size &&
         c->offset > 0 && capacity <= INT32_MAX && o->max_tokens >= 3 &&
         mx__lm_static_ok(m, capacity);
}

/* (B, KV, S, D) filled up to `filled` -> (B, KV, capacity, D), zeros after. */
static mx_array *static_copy(mx_array *a, int64_t filled, int64_t capacity) {
  const int64_t *s = mx_array_shape(a);
  mx_array *head = mx_slice_axis(a, 2, 0, filled, 1);
  mx_array *z = mx_zeros((int64_t[]){s[0], s[1], capacity - filled, s[3]}, 4, mx_array_dtype(a));
  mx_array *r = head && z ? mx_concatenate((mx_array *[]){head, z}, 2, 2) : NULL;
  mx_array_free(head);
  mx_array_free(z);
  if (r && mx_array_eval(r)) {
    mx_array_free(r);
    r = NULL;
  }
  return r;
}

/* The lazy id (1, 1) of the last position of logits (1, T, V): greedy, or
 * the lazy sampler's. */
static mx_array *next_id(mx_array *logits, const mx_lm_generate_options *o) {
  const int64_t *s = mx_array_shape(logits);
  mx_array *last = mx_slice(logits, (int64_t[]){0, s[1] - 1, 0}, (int64_t[]){1, s[1], s[2]},
                            NULL, 3);
  mx_array *flat = mx_reshape(last, (int64_t[]){s[2]}, 1);
  mx_array *id = !flat            ? NULL
                 : o->lazy_sampler ? o->lazy_sampler(o->sampler_ctx, flat)
                                   : mx_argmax(flat, -1, false);
  mx_array *r = id ? mx_reshape(id, (int64_t[]){1, 1}, 2) : NULL;
  mx_array_free(last);
  mx_array_free(flat);
  mx_array_free(id);
  return r;
}

/* Builds the static caches from c (positions [0, c->offset)) and captures
 * one step that embeds y. On success c's buffers are released (the static
 * ones replace them). */
static int replay_build(replay *r, mx_lm_model *m, mx_lm_cache *c, mx_array *y,
                        int64_t capacity, const mx_lm_generate_options *o) {
  r->n = c->nlayers;
  r->keys = calloc((size_t)r->n, sizeof *r->keys);
  r->values = calloc((size_t)r->n, sizeof *r->values);
  if (!r->keys || !r->values) return mx__set_error(MX_ERR_OOM, "generate: out of memory");
  for (int i = 0; i < r->n; i++) {
    if (!c->keys[i] || !c->values[i])
      return mx__set_error(MX_ERR_INTERNAL, "generate: layer %d has no cache", i);
    r->keys[i] = static_copy(c->keys[i], c->offset, capacity);
    r->values[i] = static_copy(c->values[i], c->offset, capacity);
    if (!r->keys[i] || !r->values[i]) return mx_last_status();
  }
  /* one GEMV for q/k/v and one for gate/up in the step (optional: on
   * failure the layers keep their separate projections) */
  if (mx__lm_stack_projections(m)) mx__lm_stacks_free(m);
  int32_t at = (int32_t)c->offset, one = 1;
  r->tok = mx_array_retain(y);
  r->pos = mx_array_from_data(&at, (int64_t[]){1}, 1, MX_INT32);
  mx_array *inc = mx_array_from_data(&one, (int64_t[]){1}, 1, MX_INT32);
  int st = r->pos && inc ? MX_OK : mx_last_status();
  /* everything the step reads lives on the GPU before the capture */
  if (!st) st = mx__buffer_ensure(r->pos->buf, MX_GPU);
  if (!st) st = mx__buffer_ensure(inc->buf, MX_GPU);
  if (!st) st = mx__graph_capture_begin();
  if (st) {
    mx_array_free(inc);
    return st;
  }
  /* built while capturing: a sampler then keeps its key on the device */
  mx_array *logits = mx__lm_forward_static(m, r->tok, r->keys, r->values, r->pos);
  r->next = logits ? next_id(logits, o) : NULL;
  mx_array_free(logits);
  int est = r->next ? mx_array_eval(r->next) : mx_last_status();
  if (!est) est = mx__graph_eval_deferred();
  if (!est && mx_array_dtype(r->next) != mx_array_dtype(r->tok))
    est = mx__set_error(MX_ERR_DTYPE, "generate: the sampler's id dtype changed");
  mx_array *p1 = est ? NULL : mx_add(r->pos, inc);
  mx_array *tail[2] = {p1 ? mx__store_at(r->tok, r->next, NULL, 0) : NULL,
                       p1 ? mx__store_at(r->pos, p1, NULL, 0) : NULL};
  if (!est) est = tail[0] && tail[1] ? mx_eval(tail, 2) : mx_last_status();
  /* temporaries go before the capture ends: their blocks stay the graph's */
  mx_array_free(tail[0]);
  mx_array_free(tail[1]);
  mx_array_free(p1);
  mx_array_free(inc);
  st = mx__graph_capture_end(est == MX_OK, &r->graph);
  if (est) return est;
  if (st) return st;
  for (int i = 0; i < c->nlayers; i++) { /* the static copies replace them */
    mx_array_free(c->keys[i]);
    mx_array_free(c->values[i]);
    c->keys[i] = c->values[i] = NULL;
  }
  return MX_OK;
}

static uint64_t g_replays;
uint64_t mx__lm_replayed_steps(void) { return __atomic_load_n(&g_replays, __ATOMIC_RELAXED); }

/* Queues one replay and starts reading the id it produces. */
static int replay_step(replay *r, void **pending, int32_t *now) {
  int st = mx__graph_launch(r->graph);
  __atomic_add_fetch(&g_replays, 1, __ATOMIC_RELAXED);
  r->tok->buf->valid = 1u << MX_GPU; /* rewritten on the device */
  return st ? st : mx__buffer_read_begin(r->tok->buf, sizeof(int32_t), pending, now);
}

static int32_t replay_read(mx_lm_model *m, void *pending, int32_t now) {
  int st = mx__buffer_read_end(pending, &now, sizeof now);
  if (st) return st;
  if (now < 0 || now >= m->config.vocab_size)
    return mx__set_error(MX_ERR_RANGE, "generate: sampler returned id %d outside [0, %lld)", now,
                         (long long)m->config.vocab_size);
  return now;
}

/* Decodes from id (already read from y) by graph replays; *used false when
 * the graph could not be built (the caller decodes as usual; nothing
 * changed). Returns the status. */
static int replay_decode(mx_lm_model *m, mx_lm_cache *c, mx_array *y, int32_t id,
                         const mx_lm_generate_options *o, mx_lm_token_fn on_token, void *ctx,
                         mx_lm_generate_stats *st, bool *used) {
  *used = false;
  int64_t capacity = c->offset + o->max_tokens;
  capacity = (capacity + 15) / 16 * 16;
  mx_dtype yt = mx_array_dtype(y);
  if ((yt != MX_INT32 && yt != MX_UINT32) || !replay_wanted(m, o, c, capacity)) return MX_OK;
  replay r = {0};
  if (replay_build(&r, m, c, y, capacity, o)) {
    replay_free(&r);
    mx_clear_error();
    return MX_OK;
  }
  *used = true;
  int status = MX_OK;
  /* Replay i computes id i + 1. With greedy decoding the next replay is
   * queued before id i + 1 is read, so the device never waits for the
   * host between tokens; steps queued past a stop are discarded (they only
   * write the static caches, which are dropped). A sampler's key
   * advances with every replay, so sampled decoding queues one replay at
   * a time (the key after generate is the step-by-step path's).
   * MXC_REPLAY_AHEAD=0: one at a time always (A/B). */
  static int ahead_env = -1;
  const bool ahead = !o->lazy_sampler && mx__env_on("MXC_REPLAY_AHEAD", &ahead_env);
  void *pend[2] = {NULL, NULL};
  int32_t nowv[2] = {-1, -1};
  bool busy[2] = {false, false};
  for (int i = 0; id >= 0; i++) {
    if (o->stop_on_eos && mx_lm_is_eos(m, id)) {
      st->stopped_on_eos = true;
      break;
    }
    const int k = i & 1;
    bool more = i + 1 < o->max_tokens;
    if (more && !busy[k]) { /* replay i (not queued ahead) */
      if ((status = replay_step(&r, &pend[k], &nowv[k]))) break;
      busy[k] = true;
    }
    if (ahead && i + 2 < o->max_tokens) { /* replay i + 1, behind it */
      if ((status = replay_step(&r, &pend[k ^ 1], &nowv[k ^ 1]))) break;
      busy[k ^ 1] = true;
    }
    st->generation_tokens++;
    int stop = on_token && on_token(ctx, id);
    if (stop || !more) break;
    busy[k] = false;
    id = replay_read(m, pend[k], nowv[k]);
  }
  for (int k = 0; k < 2; k++)
    if (busy[k]) mx__buffer_read_end(pend[k], NULL, sizeof(int32_t));
  if (id < 0 && !status) status = id;
  replay_free(&r);
  return status;
}

int mx_lm_generate(mx_lm_model *m, const int32_t *prompt, int nprompt,
                   const mx_lm_generate_options *opt, mx_lm_token_fn on_token, void *ctx,
                   mx_lm_generate_stats *stats) {
  mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
  if (opt) o = *opt;
  if (o.prefill_step_size <= 0) o.prefill_step_size = 2048;
  mx_lm_generate_stats st_local = {0};
  mx_lm_generate_stats *st = stats ? stats : &st_local;
  *st = (mx_lm_generate_stats){0};
  if (!m || !prompt) return mx__set_error(MX_ERR_INVALID_ARG, "generate: model or prompt is NULL");
  if (nprompt <= 0) return mx__set_error(MX_ERR_INVALID_ARG, "generate: the prompt is empty");
  for (int i = 0; i < nprompt; i++)
    if (prompt[i] < 0 || prompt[i] >= m->config.vocab_size)
      return mx__set_error(MX_ERR_RANGE, "generate: prompt id %d at %d is outside the vocabulary "
                           "[0, %lld)", prompt[i], i, (long long)m->config.vocab_size);
  if (o.max_tokens <= 0) return MX_OK;
  if (o.max_kv_size < 0)
    return mx__set_error(MX_ERR_INVALID_ARG, "generate: max_kv_size %lld is negative",
                         (long long)o.max_kv_size);
  if (o.prompt_cache && o.prompt_cache->nlayers != m->config.num_hidden_layers)
    return mx__set_error(MX_ERR_INVALID_ARG, "generate: the prompt cache has %d layers, the "
                         "model %lld", o.prompt_cache->nlayers,
                         (long long)m->config.num_hidden_layers);
  /* mlx-lm's make_prompt_cache: a RotatingKVCache(max_kv_size, keep=4) when
   * a size is given (keep shrinks for tiny sizes) */
  int64_t keep = o.max_kv_size > 4 ? 4 : o.max_kv_size - 1;
  mx_lm_cache *c = o.prompt_cache         ? o.prompt_cache
                   : o.max_kv_size > 0 ? mx_lm_cache_new_rotating(m, o.max_kv_size, keep)
                                       : mx_lm_cache_new(m);
  if (!c) return mx_last_status();
  /* on the GPU, one GEMM for q/k/v and one for gate/up from the prompt on
   * (optional: on failure the layers keep their separate projections) */
  if (mx_default_device() == MX_GPU && mx__lm_stack_projections(m)) mx__lm_stacks_free(m);
  mx_reset_peak_memory();
  int status = MX_OK;
  double t0 = now_s();
  /* prefill: whole chunks first, the rest (<= one chunk) gives the logits */
  int done = 0;
  while (nprompt - done > o.prefill_step_size) {
    mx_array *t = mx_array_from_data(prompt + done, (int64_t[]){1, o.prefill_step_size}, 2,
                                     MX_INT32);
    mx_array *logits = mx_lm_forward(m, t, c);
    mx_array_free(t);
    mx_array_free(logits); /* only the cache is needed */
    if (!logits || (status = mx_lm_cache_eval(c))) {
      if (!status) status = mx_last_status();
      goto done;
    }
    done += o.prefill_step_size;
  }
  if (!o.sampler && !o.prompt_cache) { /* pipelined */
    mx_array *t = mx_array_from_data(prompt + done, (int64_t[]){1, nprompt - done}, 2, MX_INT32);
    mx_array *y = t ? lazy_step(m, t, c, &o) : NULL;
    mx_array_free(t);
    int32_t id = y ? read_id(m, y) : mx_last_status();
    double t1 = now_s();
    st->prompt_tokens = nprompt;
    st->prompt_seconds = t1 - t0;
    bool replayed = false;
    if (id >= 0) {
      status = replay_decode(m, c, y, id, &o, on_token, ctx, st, &replayed);
      if (replayed) {
        mx_array_free(y);
        st->generation_seconds = now_s() - t1;
        goto done;
      }
    }
    for (int i = 0; id >= 0; i++) {
      if (o.stop_on_eos && mx_lm_is_eos(m, id)) {
        st->stopped_on_eos = true;
        break;
      }
      /* queue the next step before handing this token out */
      mx_array *next = i + 1 < o.max_tokens ? lazy_step(m, y, c, &o) : NULL;
      if (i + 1 < o.max_tokens && !next) {
        id = mx_last_status();
        break;
      }
      st->generation_tokens++;
      int stop = on_token && on_token(ctx, id);
      mx_array_free(y);
      y = next;
      if (stop || !y) break;
      id = read_id(m, y);
    }
    mx_array_free(y);
    if (id < 0) status = id;
    st->generation_seconds = now_s() - t1;
    goto done;
  }
  int32_t id = step(m, prompt + done, nprompt - done, c, &o);
  if (id < 0) {
    status = id;
    goto done;
  }
  double t1 = now_s();
  st->prompt_tokens = nprompt;
  st->prompt_seconds = t1 - t0;
  for (int i = 0;; i++) {
    if (o.stop_on_eos && mx_lm_is_eos(m, id)) {
      st->stopped_on_eos = true;
      break;
    }
    st->generation_tokens++;
    if (on_token && on_token(ctx, id)) break;
    if (i + 1 >= o.max_tokens) break;
    id = step(m, &id, 1, c, &o);
    if (id < 0) {
      status = id;
      break;
    }
  }
  st->generation_seconds = now_s() - t1;
done:
  st->prompt_tps = st->prompt_seconds > 0 ? st->prompt_tokens / st->prompt_seconds : 0;
  st->generation_tps =
      st->generation_seconds > 0 ? st->generation_tokens / st->generation_seconds : 0;
  st->peak_memory = mx_get_peak_memory();
  if (c != o.prompt_cache) mx_lm_cache_free(c);
  return status;
}
