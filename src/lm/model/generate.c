/* generate.c — the generation loop: chunked prefill, then one token at a
 * time through the KV cache (mlx-lm's generate_step). */
#include <stdlib.h>
#include <time.h>

#include "lm_internal.h"
#include "mxc/memory.h"
#include "mxc/ops.h"

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
