/*
 * mxc/lm_sample.h — token sampling and stop conditions, as mlx-lm does them.
 *
 *     mx_sampler_config cfg = mx_sampler_config_default();
 *     cfg.temp = 0.7; cfg.top_p = 0.9; cfg.seed = 42;
 *     cfg.repetition_penalty = 1.1;           // over the last 20 tokens
 *     mx_sampler *s = mx_sampler_new(&cfg);   // NULL + mx_last_error() if invalid
 *     ...
 *     // logits: (vocab,) or (B, vocab) (any leading dims); history: the
 *     // prompt and generated ids so far (used by the penalties only).
 *     mx_array *tok = mx_sampler_sample(s, logits, history, n_history);
 *     int64_t id; mx_array_item_int(tok, &id);  // uint32 (B,) or ()
 *     mx_array_free(tok);
 *     mx_sampler_free(s);
 *
 * Semantics follow mlx_lm.sample_utils (make_logits_processors, then
 * make_sampler) exactly:
 *   1. logits processors, on raw logits, in this order: logit bias (added),
 *      repetition penalty (each distinct id among the last
 *      repetition_context_size of history: logit < 0 → logit * penalty,
 *      else logit / penalty), presence penalty (subtracted once per distinct
 *      id), frequency penalty (subtracted once per occurrence).
 *   2. logprobs = logits - logsumexp(logits, -1).
 *   3. temp == 0 → argmax(logprobs). Otherwise the filters, in this order:
 *      top_p (when 0 < top_p < 1: sort ascending, cumsum of exp(logprobs),
 *      keep where cumsum > 1 - top_p), min_p (when min_p != 0: drop
 *      logprob < max + log(min_p), but always keep the min_tokens_to_keep
 *      largest), top_k (when top_k > 0: keep the k largest), each masking
 *      with -inf; then categorical(logprobs * (1/temp)).
 * Everything is built from mxc ops (lazy, any backend). Randomness uses an
 * explicit key: the sampler holds key(seed) and splits it on every sampling
 * call, so a seed reproduces a run on every backend.
 */
#ifndef MXC_LM_SAMPLE_H
#define MXC_LM_SAMPLE_H

#include "mxc/array.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- sampler ------------------------------------------------------------ */

typedef struct {
  double temp;                 /* 0 → greedy (argmax); must be >= 0 */
  double top_p;                /* active when 0 < top_p < 1 */
  double min_p;                /* active when != 0; must be in [0, 1] */
  int min_tokens_to_keep;      /* >= 1 (default 1) */
  int top_k;                   /* active when > 0; must be < vocab */
  double repetition_penalty;   /* active when != 0; must be >= 0 (1 = no-op) */
  int repetition_context_size; /* default 20 */
  double presence_penalty;     /* active when != 0 */
  int presence_context_size;   /* default 20 */
  double frequency_penalty;    /* active when != 0 */
  int frequency_context_size;  /* default 20 */
  /* Logit bias: n_logit_bias pairs (ids[i] gets + values[i]); copied by
   * mx_sampler_new. Repeated ids add up. */
  const int32_t *logit_bias_ids;
  const float *logit_bias_values;
  int n_logit_bias;
  uint64_t seed; /* key of the first draw; callers wanting fresh runs pass e.g. time */
} mx_sampler_config;

/* temp 0, filters and penalties off, min_tokens_to_keep 1, context sizes 20,
 * seed 0. */
MX_API mx_sampler_config mx_sampler_config_default(void);

typedef struct mx_sampler mx_sampler;

/* Validates the configuration (errors name the field); NULL on error. */
MX_API mx_sampler *mx_sampler_new(const mx_sampler_config *cfg);
MX_API void mx_sampler_free(mx_sampler *s); /* NULL is a no-op */
/* Restart the random stream at key(seed). */
MX_API void mx_sampler_reseed(mx_sampler *s, uint64_t seed);

/* Step 1: the logits processors (bias and penalties). Returns a new lazy
 * array of logits' shape, or a new reference to logits when none is active.
 * history may be NULL when n_history == 0; ids must lie in [0, vocab). */
MX_API mx_array *mx_sampler_process(mx_sampler *s, mx_array *logits, const int32_t *history,
                                    int64_t n_history);
/* Step 3: the sampler proper on log-probabilities (..., vocab) → uint32
 * token ids (...). Splits the key when temp > 0. */
MX_API mx_array *mx_sampler_sample_logprobs(mx_sampler *s, mx_array *logprobs);
/* Steps 1–3 on raw logits (..., vocab) → uint32 ids (...). */
MX_API mx_array *mx_sampler_sample(mx_sampler *s, mx_array *logits, const int32_t *history,
                                   int64_t n_history);

/* The individual filters and processors (lazy, last axis = vocab), as
 * mlx-lm's apply_top_k / apply_top_p / apply_min_p / processors. */
MX_API mx_array *mx_sample_apply_top_k(mx_array *logprobs, int top_k);
MX_API mx_array *mx_sample_apply_top_p(mx_array *logprobs, double top_p);
MX_API mx_array *mx_sample_apply_min_p(mx_array *logprobs, double min_p, int min_tokens_to_keep);
/* Uses the last context_size entries of history (all when context_size <= 0). */
MX_API mx_array *mx_sample_repetition_penalty(mx_array *logits, const int32_t *history,
                                              int64_t n_history, double penalty,
                                              int context_size);
/* logits + bias at ids (repeated ids add up). */
MX_API mx_array *mx_sample_logit_bias(mx_array *logits, const int32_t *ids, const float *values,
                                      int n);

/* ---- stop conditions ---------------------------------------------------- */
/*
 *     const char *stops[] = {"</s>", "\nUser:"};
 *     mx_stop *st = mx_stop_new(eos_ids, n_eos, stops, 2);
 *     for each generated token t:
 *       if (mx_stop_is_eos(st, t)) break;
 *       const char *out; size_t n;
 *       bool hit = mx_stop_feed(st, piece, strlen(piece), &out, &n);
 *       fwrite(out, 1, n, stdout);        // text that is safe to show
 *       if (hit) break;                   // out ends just before the stop string
 *     at the end (no stop hit): n = mx_stop_flush(st, &out); fwrite(out, 1, n, stdout);
 *
 * feed holds back the longest tail of the text that is a prefix of some stop
 * string, so a stop string split across chunks is never shown. The pointer
 * it returns stays valid until the next call on st.
 */
typedef struct mx_stop mx_stop;

/* Copies ids and strings; empty stop strings are ignored. NULL on OOM. */
MX_API mx_stop *mx_stop_new(const int32_t *eos_ids, int n_eos, const char *const *stop_strings,
                            int n_stop);
MX_API void mx_stop_free(mx_stop *st); /* NULL is a no-op */
MX_API int mx_stop_add_eos(mx_stop *st, int32_t id);
MX_API bool mx_stop_is_eos(const mx_stop *st, int64_t token);
/* Returns true when a stop string has been completed; *emit and *emit_len get
 * the text now safe to output (up to the stop string when it matched). After
 * a match further feeds emit nothing and return true. */
MX_API bool mx_stop_feed(mx_stop *st, const char *chunk, size_t len, const char **emit,
                         size_t *emit_len);
/* Releases the held-back tail (end of generation); returns its length. */
MX_API size_t mx_stop_flush(mx_stop *st, const char **emit);
/* Index of the stop string that matched, or -1. */
MX_API int mx_stop_matched(const mx_stop *st);
/* Forget the text seen so far (new turn); keeps ids and strings. */
MX_API void mx_stop_reset(mx_stop *st);

#ifdef __cplusplus
}
#endif
#endif
