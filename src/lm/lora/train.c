/* train.c — the LoRA / DoRA / full fine-tuning loop (mlx-lm's tuner/trainer.py):
 * length-sorted batches in a seeded order, gradient accumulation, the
 * optimizer and its schedule, periodic validation, atomic checkpoints with
 * the optimizer state for an exact resume, the memory plan of --memory-limit,
 * and the test evaluation. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../core/internal.h"
#include "lora_internal.h"
#include "mxc/io.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "mxc/optim.h"
#include "mxc/random.h"
#include "mxc/train.h"

/* ---- batches ------------------------------------------------------------------ */
/* mlx-lm's iterate_batches: examples sorted by length (stable), grouped
 * into batches of bs consecutive examples (a remainder is dropped), the
 * batch order a seeded permutation per epoch. Here the permutation of epoch
 * e is a pure function of (seed, e), so batch g of the run is known without
 * replaying the ones before it (what an exact resume needs). */
typedef struct {
  int64_t *idx; /* nb * bs example indices */
  int64_t nb, bs;
  int64_t *perm, perm_epoch; /* the order of perm_epoch */
  uint64_t seed;
} batches;

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static const mx_lora_dataset *sort_ds; /* qsort has no context argument */
static int by_length(const void *a, const void *b) {
  int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
  int64_t li = mx_lora_dataset_length(sort_ds, i), lj = mx_lora_dataset_length(sort_ds, j);
  if (li != lj) return li < lj ? -1 : 1;
  return i < j ? -1 : i > j; /* stable */
}

static void batches_free(batches *b) {
  free(b->idx);
  free(b->perm);
  memset(b, 0, sizeof *b);
}

/* A set smaller than bs gives one batch of all its examples (mlx-lm
 * refuses; only allowed for evaluation). */
static int batches_make(const mx_lora_dataset *d, int64_t bs, uint64_t seed, bool allow_small,
                        const char *what, batches *b) {
  memset(b, 0, sizeof *b);
  int64_t n = mx_lora_dataset_size(d);
  if (n < bs && !allow_small)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: %s has %lld examples, fewer than --batch-size %lld",
                         what, (long long)n, (long long)bs);
  if (n < bs) bs = n;
  b->bs = bs;
  b->nb = n / bs;
  b->seed = seed;
  b->perm_epoch = -1;
  b->idx = malloc((size_t)n * sizeof *b->idx);
  b->perm = malloc((size_t)b->nb * sizeof *b->perm);
  if (!b->idx || !b->perm) {
    batches_free(b);
    return mx__set_error(MX_ERR_OOM, "lora: out of memory");
  }
  for (int64_t i = 0; i < n; i++) b->idx[i] = i;
  sort_ds = d;
  qsort(b->idx, (size_t)n, sizeof *b->idx, by_length);
  sort_ds = NULL;
  return 0;
}

/* The example indices of the g-th batch drawn (g counts from 0 over epochs). */
static const int64_t *batches_get(batches *b, int64_t g) {
  int64_t e = g / b->nb, k = g % b->nb;
  if (e != b->perm_epoch) {
    uint64_t s = b->seed * 0x100000001B3ULL ^ (uint64_t)e * 0xD1B54A32D192ED03ULL;
    for (int64_t i = 0; i < b->nb; i++) b->perm[i] = i;
    for (int64_t i = b->nb - 1; i > 0; i--) {
      int64_t j = (int64_t)(splitmix(&s) % (uint64_t)(i + 1));
      int64_t t = b->perm[i];
      b->perm[i] = b->perm[j];
      b->perm[j] = t;
    }
    b->perm_epoch = e;
  }
  return b->idx + b->perm[k] * b->bs;
}

/* ---- evaluation ---------------------------------------------------------------- */
/* The token-weighted mean loss over the first num_batches batches; each
 * batch is computed in pieces of at most `micro` examples (the memory plan),
 * which gives the same token-weighted mean. */
static int eval_set(mx_nn_module *root, const mx_lora_dataset *d, int64_t bs, int64_t num_batches,
                    bool mask_prompt, uint64_t seed, int64_t micro, double *out) {
  batches b;
  int st = batches_make(d, bs, seed, true, "the evaluation set", &b);
  if (st) return st;
  int64_t nb = num_batches < 0 || num_batches > b.nb ? b.nb : num_batches;
  double total = 0, count = 0;
  bool was_training = mx_nn_is_training(root);
  mx_nn_train(root, false);
  if (micro < 1 || micro > b.bs) micro = b.bs;
  for (int64_t k = 0, n = 0; k < nb * b.bs && !st; k += n) {
    int64_t g = k / b.bs, off = k % b.bs;
    n = b.bs - off < micro ? b.bs - off : micro;
    mx_array *in[3] = {NULL, NULL, NULL};
    st = mx_lora_dataset_batch(d, batches_get(&b, g) + off, (int)n, mask_prompt, &in[0], &in[1], &in[2]);
    double l = 0, ntok = 0;
    if (!st) st = mx_train_eval_loss(root, mx_train_lm_loss, NULL, in, 3, &l);
    mx_array *sum = st ? NULL : mx_sum(in[2], NULL, 0, false);
    if (!st) st = sum ? mx_array_item(sum, &ntok) : mx_last_status();
    mx_array_free(sum);
    if (ntok > 0) {
      total += l * ntok;
      count += ntok;
    }
    for (int i = 0; i < 3; i++) mx_array_free(in[i]);
  }
  mx_nn_train(root, was_training);
  batches_free(&b);
  *out = count > 0 ? total / count : 0;
  return st;
}

int mx_lora_evaluate(mx_lm_model *m, const char *path, int64_t batch_size, int64_t num_batches,
                     int64_t max_seq_length, bool mask_prompt, double *loss) {
  if (!m || !path || !loss || batch_size < 1 || max_seq_length < 2)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora evaluate: bad arguments");
  mx_tokenizer *tok = mx_lm_tokenizer(m);
  if (!tok) return mx__set_error(MX_ERR_INVALID_ARG, "lora: the model has no tokenizer");
  mx_lora_dataset *d = mx_lora_dataset_load(path, tok, max_seq_length);
  if (!d) return mx_last_status();
  int st = eval_set(mx_lm_module(m), d, batch_size, num_batches, mask_prompt, 0, batch_size, loss);
  mx_lora_dataset_free(d);
  return st;
}

int mx_lora_load_for_test(mx_lm_model *m, const char *dir) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "lora: model is NULL");
  if (!dir || !*dir) return 0;
  return mx_lora_load_adapters(mx_lm_module(m), dir);
}

/* ---- options ------------------------------------------------------------------- */
int mx_lora_check_options(const mx_lora_options *o) {
  if (!o) return mx__set_error(MX_ERR_INVALID_ARG, "lora: options are NULL");
  if (!o->data_dir) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --data is required");
  if (!o->adapter_path || !*o->adapter_path)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --adapter-path is required");
#define POS(f, flag)                                                                      \
  if (o->f < 1)                                                                           \
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: " flag " must be >= 1, got %lld", \
                         (long long)o->f);
  POS(batch_size, "--batch-size") POS(iters, "--iters") POS(steps_per_report, "--steps-per-report")
  POS(steps_per_eval, "--steps-per-eval") POS(save_every, "--save-every")
  POS(grad_accumulation_steps, "--grad-accumulation-steps")
#undef POS
  if (o->batch_size > 4096) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --batch-size must be <= 4096");
  if (o->max_seq_length < 2) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --max-seq-length must be >= 2");
  if (o->val_batches == 0 || o->val_batches < -1)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --val-batches must be >= 1 or -1 (all)");
  if (o->test_batches == 0 || o->test_batches < -1)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --test-batches must be >= 1 or -1 (all)");
  if (!(o->learning_rate > 0) || !isfinite(o->learning_rate))
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --learning-rate must be > 0, got %g", o->learning_rate);
  if (o->lora.type != MX_LORA_FT_FULL && (o->lora.rank < 1 || o->lora.nkeys < 1))
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: lora_parameters need rank >= 1 and keys");
  if (o->lora.num_layers == 0 || o->lora.num_layers < -1)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --num-layers must be -1 (all) or >= 1");
  if (!(o->lora.dropout >= 0 && o->lora.dropout < 1))
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: lora_parameters.dropout must be in [0, 1)");
  return 0;
}

/* ---- optimizer ----------------------------------------------------------------- */
static mx_schedule *build_schedule(const mx_lora_schedule *s) {
  const double *a = s->arguments;
  int n = s->narguments;
  mx_schedule *main = NULL;
  if (!strcmp(s->name, "cosine_decay") && (n == 2 || n == 3))
    main = mx_schedule_cosine_decay(a[0], (int64_t)a[1], n == 3 ? a[2] : 0.0);
  else if (!strcmp(s->name, "linear_schedule") && n == 3)
    main = mx_schedule_linear(a[0], a[1], (int64_t)a[2]);
  else if (!strcmp(s->name, "exponential_decay") && n == 2)
    main = mx_schedule_exponential_decay(a[0], a[1]);
  else if (!strcmp(s->name, "step_decay") && n == 3)
    main = mx_schedule_step_decay(a[0], a[1], (int64_t)a[2]);
  else {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "lora: lr_schedule \"%s\" with %d arguments is not one of cosine_decay(init, "
                  "decay_steps[, end]), linear_schedule(init, end, steps), "
                  "exponential_decay(init, decay_rate), step_decay(init, decay_rate, step_size)",
                  s->name, n);
    return NULL;
  }
  if (!main || s->warmup <= 0) return main;
  /* mlx-lm build_schedule: linear warmup joined at warmup + 1. */
  mx_schedule *warm = mx_schedule_linear(s->warmup_init, a[0], s->warmup);
  mx_schedule *j = warm ? mx_schedule_join((mx_schedule *[]){warm, main}, 2,
                                           (int64_t[]){s->warmup + 1}, 1)
                        : NULL;
  mx_schedule_free(warm);
  mx_schedule_free(main);
  return j;
}

static mx_optimizer *build_optimizer(const mx_lora_options *o) {
  mx_schedule *sched = NULL;
  if (o->lr_schedule.name[0] && !(sched = build_schedule(&o->lr_schedule))) return NULL;
  mx_optimizer *opt = NULL;
  if (o->optimizer == MX_LORA_OPT_SGD) {
    mx_sgd_options so = MX_SGD_OPTIONS(o->learning_rate);
    so.lr_schedule = sched;
    so.momentum = o->momentum;
    so.weight_decay = o->weight_decay > 0 ? o->weight_decay : 0;
    opt = mx_optimizer_sgd(&so);
  } else {
    mx_adam_options ao = o->optimizer == MX_LORA_OPT_ADAMW ? MX_ADAMW_OPTIONS(o->learning_rate)
                                                           : MX_ADAM_OPTIONS(o->learning_rate);
    ao.lr_schedule = sched;
    ao.beta1 = o->beta1;
    ao.beta2 = o->beta2;
    ao.eps = o->eps;
    if (o->weight_decay >= 0) ao.weight_decay = o->weight_decay;
    opt = o->optimizer == MX_LORA_OPT_ADAMW ? mx_optimizer_adamw(&ao) : mx_optimizer_adam(&ao);
  }
  mx_schedule_free(sched);
  return opt;
}

/* ---- checkpoints ----------------------------------------------------------------- */
/* The optimizer file beside an adapter file: ".../NNNNNNN_adapters.safetensors"
 * -> ".../NNNNNNN_optimizer.safetensors"; false when the name does not end
 * with "adapters.safetensors". */
static bool optimizer_path(const char *adapter_file, char *out, size_t n) {
  const char *suffix = "adapters.safetensors";
  size_t la = strlen(adapter_file), ls = strlen(suffix);
  if (la < ls || strcmp(adapter_file + la - ls, suffix)) return false;
  snprintf(out, n, "%.*soptimizer.safetensors", (int)(la - ls), adapter_file);
  return true;
}

/* The training state beside an adapter file: the optimizer state, and
 * under "grad_accum.<param>" the gradients summed since the last update
 * (an iteration inside an accumulation group); metadata: the iteration,
 * the number of summed micro-batch gradients, and what an exact resume
 * needs to match. */
typedef struct {
  int64_t it;    /* iterations done */
  mx_map *acc;   /* summed gradients since the last update */
  int64_t nacc;  /* micro-batch gradients in acc */
} run_state;

static int save_state(mx_nn_module *root, mx_optimizer *opt, const mx_lora_options *o,
                      const run_state *rs, const char *adapter_file) {
  int st = mx__lora_save_weights(root, adapter_file);
  char p[4200];
  if (st || !optimizer_path(adapter_file, p, sizeof p)) return st;
  mx_metadata *meta = mx_metadata_new();
  mx_map *all = mx_map_copy(mx_optimizer_state(opt));
  if (!meta || !all) st = mx__set_error(MX_ERR_OOM, "lora: out of memory");
  for (int i = 0; !st && i < mx_map_size(rs->acc); i++) {
    char k[512];
    snprintf(k, sizeof k, "grad_accum.%s", mx_map_key(rs->acc, i));
    st = mx_map_set(all, k, mx_map_value(rs->acc, i));
  }
  const struct {
    const char *key;
    long long v;
  } ints[] = {{"iteration", (long long)rs->it},
              {"accumulated", (long long)rs->nacc},
              {"step", (long long)mx_optimizer_step(opt)},
              {"batch_size", (long long)o->batch_size},
              {"grad_accumulation_steps", (long long)o->grad_accumulation_steps}};
  char v[64];
  for (size_t i = 0; !st && i < sizeof ints / sizeof *ints; i++) {
    snprintf(v, sizeof v, "%lld", ints[i].v);
    st = mx_metadata_set_string(meta, ints[i].key, v);
  }
  snprintf(v, sizeof v, "%llu", (unsigned long long)o->seed);
  if (!st) st = mx_metadata_set_string(meta, "seed", v);
  if (!st) st = mx_metadata_set_string(meta, "fine_tune_type", mx__lora_type_name(o->lora.type));
  if (!st) st = mx_save_safetensors(p, all, meta);
  mx_map_free(all);
  mx_metadata_free(meta);
  return st;
}

static int emit_info(mx_lora_event_fn fn, void *ctx, const char *text) {
  mx_lora_event ev = {.kind = MX_LORA_EV_INFO, .text = text};
  return fn ? fn(ctx, &ev) : 0;
}

/* Loads the adapter weights of o->resume_adapter_file and, when present,
 * the training state beside it (optimizer, iteration, accumulated
 * gradients) into opt and rs. */
static int resume(mx_nn_module *root, mx_optimizer *opt, const mx_lora_options *o, run_state *rs,
                  mx_lora_event_fn on_event, void *ctx) {
  const char *f = o->resume_adapter_file;
  mx_map *w = NULL;
  int st = mx_load(f, &w, NULL);
  if (!st) st = mx_nn_update(root, w, MX_NN_UPDATE_PARTIAL);
  mx_map_free(w);
  if (st) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mx_last_error());
    return mx__set_error(st, "lora: --resume-adapter-file %s: %s", f, msg);
  }
  char p[4200], info[4400];
  struct stat sb;
  if (!optimizer_path(f, p, sizeof p) || stat(p, &sb)) {
    snprintf(info, sizeof info, "Loading fine-tuned weights from %s (no optimizer state beside it: "
             "starting at iteration 1)", f);
    return emit_info(on_event, ctx, info), 0;
  }
  mx_map *all = NULL, *state = mx_map_new();
  mx_metadata *meta = NULL;
  st = state ? mx_load(p, &all, &meta) : mx__set_error(MX_ERR_OOM, "lora: out of memory");
  const char *keys[] = {"seed", "batch_size", "grad_accumulation_steps", "fine_tune_type"};
  char want[4][64];
  snprintf(want[0], 64, "%llu", (unsigned long long)o->seed);
  snprintf(want[1], 64, "%lld", (long long)o->batch_size);
  snprintf(want[2], 64, "%lld", (long long)o->grad_accumulation_steps);
  snprintf(want[3], 64, "%s", mx__lora_type_name(o->lora.type));
  for (int i = 0; i < 4 && !st; i++) {
    const char *got = mx_metadata_get_string(meta, keys[i]);
    if (got && strcmp(got, want[i]))
      st = mx__set_error(MX_ERR_INVALID_ARG,
                         "lora: --resume-adapter-file: %s was saved with %s %s, this run has %s "
                         "(an exact resume needs the same seed, batch size, accumulation and type)",
                         p, keys[i], got, want[i]);
  }
  const char *its = mx_metadata_get_string(meta, "iteration"), *nas = mx_metadata_get_string(meta, "accumulated");
  if (!st && (!its || !nas))
    st = mx__set_error(MX_ERR_FORMAT, "lora: --resume-adapter-file: %s lacks the iteration metadata", p);
  for (int i = 0; !st && i < mx_map_size(all); i++) {
    const char *k = mx_map_key(all, i);
    if (!strncmp(k, "grad_accum.", 11)) st = mx_map_set(rs->acc, k + 11, mx_map_value(all, i));
    else st = mx_map_set(state, k, mx_map_value(all, i));
  }
  if (!st) st = mx_optimizer_load_state(opt, state);
  mx_map_free(all);
  mx_map_free(state);
  if (!st) {
    rs->it = strtoll(its, NULL, 10);
    rs->nacc = strtoll(nas, NULL, 10);
  }
  mx_metadata_free(meta);
  if (st) return st;
  if (rs->it > o->iters)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --resume-adapter-file %s is at iteration %lld, past --iters %lld",
                         f, (long long)rs->it, (long long)o->iters);
  snprintf(info, sizeof info, "Resuming from %s at step %lld (%lld optimizer updates; state %s)", f,
           (long long)rs->it, (long long)mx_optimizer_step(opt), p);
  return emit_info(on_event, ctx, info), 0;
}

/* ---- memory plan -------------------------------------------------------------------- */
static size_t trainable_bytes(mx_nn_module *root) {
  mx_map *p = NULL;
  size_t n = 0;
  if (mx_nn_trainable_parameters(root, &p)) return 0;
  for (int i = 0; i < mx_map_size(p); i++) n += mx_array_nbytes(mx_map_value(p, i));
  mx_map_free(p);
  return n;
}

/* The peak bytes of one gradient computation on a micro-batch of mb
 * examples of the longest batch, under the memory limit `limit` (SIZE_MAX:
 * none). 0 with *oom when it does not fit. */
static int probe(mx_nn_module *root, const mx_lora_dataset *d, const int64_t *longest, int mb,
                 bool mask_prompt, size_t limit, size_t *peak, bool *oom) {
  *oom = false;
  mx_clear_cache();
  size_t prev = mx_set_memory_limit(limit);
  mx_reset_peak_memory();
  mx_array *in[3] = {NULL, NULL, NULL};
  int st = mx_lora_dataset_batch(d, longest, mb, mask_prompt, &in[0], &in[1], &in[2]);
  mx_map *grads = st ? NULL : mx_map_new();
  mx_list vals = MX_LIST_INIT;
  if (!st) st = mx_nn_value_and_grad(root, mx_train_lm_loss, NULL, in, 3, &vals, grads);
  if (!st) st = mx_map_eval(grads);
  if (!st && vals.size) st = mx_eval(vals.items, 1);
  *peak = mx_get_peak_memory();
  mx_list_clear(&vals);
  mx_map_free(grads);
  for (int i = 0; i < 3; i++) mx_array_free(in[i]);
  mx_set_memory_limit(prev);
  mx_clear_cache();
  if (st == MX_ERR_OOM) {
    *oom = true;
    st = 0;
  }
  return st;
}

/* Chooses the micro-batch (a divisor of batch_size) whose step fits
 * o->memory_limit, then the same with per-layer gradient checkpointing
 * (turned on in m when it is needed); *micro = batch_size when there is no
 * limit. */
static int plan_memory(mx_lm_model *m, mx_nn_module *root, const mx_lora_dataset *d, batches *b,
                       const mx_lora_options *o, int *micro, mx_lora_event_fn on_event, void *ctx) {
  *micro = (int)o->batch_size;
  if (!o->memory_limit) return 0;
  const int64_t *longest = b->idx + (b->nb - 1) * b->bs; /* sorted: the last batch */
  /* the optimizer state (two slots for Adam), the gradient accumulator and
   * the new parameters */
  size_t extra = trainable_bytes(root) * (o->optimizer == MX_LORA_OPT_SGD ? 3 : 4);
  size_t peak = 0;
  bool oom = false;
  int st = 0;
  for (int pass = o->grad_checkpoint ? 1 : 0; pass < 2; pass++) {
    if (pass == 1) mx_lm_set_grad_checkpoint(m, true);
    for (int mb = (int)o->batch_size; mb >= 1 && !st; mb--) {
      if (o->batch_size % mb) continue;
      size_t budget = o->memory_limit > extra ? o->memory_limit - extra : 0;
      st = budget ? probe(root, d, longest, mb, o->mask_prompt, budget, &peak, &oom) : 0;
      if (!budget) oom = true;
      if (st) return st;
      if (!oom && peak + extra <= o->memory_limit) {
        *micro = mb;
        char info[256];
        snprintf(info, sizeof info,
                 "Memory plan: micro-batch %d x %lld per batch%s, step peak %.3f GB of the "
                 "%.3f GB --memory-limit",
                 mb, (long long)(o->batch_size / mb), pass ? ", gradient checkpointing" : "",
                 (double)(peak + extra) / 1e9, (double)o->memory_limit / 1e9);
        return emit_info(on_event, ctx, info), 0;
      }
    }
  }
  /* Even one example does not fit: measure what it needs, for the message. */
  st = probe(root, d, longest, 1, o->mask_prompt, SIZE_MAX, &peak, &oom);
  if (st) return st;
  return mx__set_error(MX_ERR_OOM,
                       "lora: --memory-limit %zu bytes is too small: one training step needs %zu "
                       "bytes even with a micro-batch of 1 example of %lld tokens (weights, "
                       "activations, gradients and optimizer state); raise --memory-limit or "
                       "lower --max-seq-length or --num-layers",
                       o->memory_limit, peak + extra,
                       (long long)mx_lora_dataset_length(d, longest[b->bs - 1]));
}

/* ---- the run ----------------------------------------------------------------------- */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int write_config(const mx_lora_options *o) {
  cJSON *j = mx__lora_config_json(&o->lora, o);
  char *text = j ? cJSON_Print(j) : NULL;
  cJSON_Delete(j);
  if (!text) return mx__set_error(MX_ERR_OOM, "lora: out of memory");
  char p[4200];
  snprintf(p, sizeof p, "%s/adapter_config.json", o->adapter_path);
  int st = mx__lora_write_atomic(p, text);
  free(text);
  return st;
}

static int validate(mx_nn_module *root, const mx_lora_dataset *valid, const mx_lora_options *o,
                    int64_t it, int micro, mx_lora_event_fn on_event, void *ctx, bool *stop) {
  double vl = 0;
  int st = eval_set(root, valid, o->batch_size, o->val_batches, o->mask_prompt, o->seed, micro, &vl);
  mx_lora_event ev = {.kind = MX_LORA_EV_VAL, .val = true, .step = it, .iters = o->iters, .loss = vl};
  if (!st && on_event && on_event(ctx, &ev)) *stop = true;
  return st;
}

int mx_lora_train(mx_lm_model *m, const mx_lora_options *o, mx_lora_event_fn on_event, void *ctx) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "lora: model is NULL");
  int st = mx_lora_check_options(o);
  if (st) return st;
  mx_tokenizer *tok = mx_lm_tokenizer(m);
  if (!tok) return mx__set_error(MX_ERR_INVALID_ARG, "lora: the model has no tokenizer");
  char path[4200];
  snprintf(path, sizeof path, "%s/train.jsonl", o->data_dir);
  mx_lora_dataset *train = mx_lora_dataset_load(path, tok, o->max_seq_length);
  if (!train) return mx_last_status();
  mx_lora_dataset *valid = NULL;
  struct stat sb;
  snprintf(path, sizeof path, "%s/valid.jsonl", o->data_dir);
  if (stat(path, &sb) == 0 && !(valid = mx_lora_dataset_load(path, tok, o->max_seq_length)))
    st = mx_last_status();
  batches b = {0};
  char what[4200];
  snprintf(what, sizeof what, "%s/train.jsonl", o->data_dir);
  if (!st) st = batches_make(train, o->batch_size, o->seed, false, what, &b);
  mx_nn_module *root = mx_lm_module(m);
  mx_random_seed(o->seed);
  if (!st) st = mx_lora_apply(root, &o->lora, o->seed);
  if (!st && o->grad_checkpoint) st = mx_lm_set_grad_checkpoint(m, true);
  mx_optimizer *opt = NULL;
  if (!st && !(opt = build_optimizer(o))) st = mx_last_status();
  run_state rs = {0, mx_map_new(), 0};
  if (!st && !rs.acc) st = mx__set_error(MX_ERR_OOM, "lora: out of memory");
  if (!st && o->resume_adapter_file) st = resume(root, opt, o, &rs, on_event, ctx);
  const int64_t first = rs.it + 1;
  int micro = (int)o->batch_size;
  if (!st) mx_nn_train(root, true);
  if (!st) st = plan_memory(m, root, train, &b, o, &micro, on_event, ctx);
  if (!st) st = mx__lora_make_dir(o->adapter_path);
  if (!st) st = write_config(o);
  size_t prev_limit = o->memory_limit ? mx_set_memory_limit(o->memory_limit) : 0;
  const int64_t splits = o->batch_size / micro, A = o->grad_accumulation_steps;

  mx_reset_peak_memory();
  double losses = 0, train_time = 0;
  int64_t nsteps = 0, win_tokens = 0, trained = 0;
  bool stop = false;
  if (!st) mx_nn_train(root, true);
  for (int64_t it = first; it <= o->iters && !st && !stop; it++) {
    double tic = now();
    /* Validation before the step, as mlx-lm: at the first step, every
     * steps_per_eval and at the last. */
    if (valid && (it == first || it % o->steps_per_eval == 0 || it == o->iters)) {
      if ((st = validate(root, valid, o, it, micro, on_event, ctx, &stop)) || stop) break;
      tic = now();
    }
    /* The rate of the update this iteration contributes to. */
    double lr = mx_optimizer_learning_rate(opt);
    /* Dropout draws from the global generator: seeded per iteration, so a
     * resumed run draws what the uninterrupted one did. */
    uint64_t seed_it = o->seed ^ ((uint64_t)it * 0x9E3779B97F4A7C15ULL);
    mx_random_seed(splitmix(&seed_it));
    /* One batch per iteration (mlx-lm), in `splits` micro-batches when the
     * memory plan asks; gradients summed into rs.acc. */
    const int64_t *idx = batches_get(&b, it - 1);
    double it_loss = 0;
    for (int64_t sp = 0; sp < splits && !st; sp++) {
      mx_array *in[3] = {NULL, NULL, NULL};
      st = mx_lora_dataset_batch(train, idx + sp * micro, micro, o->mask_prompt, &in[0], &in[1], &in[2]);
      mx_array *nt = st ? NULL : mx_sum(in[2], NULL, 0, false);
      double ntok = 0, l = 0;
      if (!st) st = nt ? mx_array_item(nt, &ntok) : mx_last_status();
      mx_array_free(nt);
      win_tokens += (int64_t)ntok;
      mx_map *grads = st ? NULL : mx_map_new();
      mx_list vals = MX_LIST_INIT;
      if (!st) st = grads ? mx_nn_value_and_grad(root, mx_train_lm_loss, NULL, in, 3, &vals, grads)
                          : mx__set_error(MX_ERR_OOM, "lora: out of memory");
      if (!st) st = mx_grads_accumulate(rs.acc, grads);
      if (!st && vals.size < 1) st = mx__set_error(MX_ERR_INVALID_ARG, "lora: the loss gave no value");
      if (!st) {
        /* the loss and the accumulated gradients in one evaluation */
        int na = mx_map_size(rs.acc);
        mx_array **ev = malloc((size_t)(na + 1) * sizeof *ev);
        if (!ev) st = mx__set_error(MX_ERR_OOM, "lora: out of memory");
        else {
          ev[0] = vals.items[0];
          for (int i = 0; i < na; i++) ev[i + 1] = mx_map_value(rs.acc, i);
          st = mx_eval(ev, na + 1);
          free(ev);
        }
      }
      if (!st) st = mx_array_item(vals.items[0], &l);
      it_loss += l / (double)splits;
      rs.nacc++;
      mx_list_clear(&vals);
      mx_map_free(grads);
      for (int i = 0; i < 3; i++) mx_array_free(in[i]);
    }
    /* The update every grad_accumulation_steps iterations, with the mean
     * of the summed gradients (mlx-lm's grad_accum / steps). */
    if (!st && it % A == 0) {
      mx_map *params = NULL;
      st = mx_grads_scale(rs.acc, 1.0 / (double)rs.nacc);
      if (!st) st = mx_nn_trainable_parameters(root, &params);
      if (!st) st = mx_optimizer_update(opt, params, rs.acc);
      if (!st) st = mx_optimizer_eval(opt, params);
      if (!st) st = mx_nn_update(root, params, MX_NN_UPDATE_PARTIAL);
      mx_map_free(params);
      mx_map_clear(rs.acc);
      rs.nacc = 0;
    }
    if (st) break;
    rs.it = it;
    losses += it_loss;
    nsteps++;
    train_time += now() - tic;
    if (it % o->steps_per_report == 0 || it == o->iters) {
      trained += win_tokens;
      double dt = train_time > 1e-9 ? train_time : 1e-9;
      mx_lora_event ev = {.kind = MX_LORA_EV_TRAIN, .step = it, .iters = o->iters,
                          .loss = losses / (double)nsteps, .learning_rate = lr,
                          .it_per_sec = (double)nsteps / dt, .tokens_per_sec = (double)win_tokens / dt,
                          .trained_tokens = trained, .peak_memory = mx_get_peak_memory()};
      losses = 0;
      nsteps = 0;
      win_tokens = 0;
      train_time = 0;
      if (on_event && on_event(ctx, &ev)) stop = true;
    }
    if (it % o->save_every == 0) {
      snprintf(path, sizeof path, "%s/adapters.safetensors", o->adapter_path);
      st = save_state(root, opt, o, &rs, path);
      snprintf(path, sizeof path, "%s/%07lld_adapters.safetensors", o->adapter_path, (long long)it);
      if (!st) st = save_state(root, opt, o, &rs, path);
      mx_lora_event ev = {.kind = MX_LORA_EV_SAVE, .step = it, .iters = o->iters, .text = path};
      if (!st && on_event && on_event(ctx, &ev)) stop = true;
    }
  }
  if (!st) {
    mx_nn_train(root, false);
    snprintf(path, sizeof path, "%s/adapters.safetensors", o->adapter_path);
    st = save_state(root, opt, o, &rs, path);
  }
  mx_map_free(rs.acc);
  if (o->memory_limit) mx_set_memory_limit(prev_limit);
  batches_free(&b);
  mx_optimizer_free(opt);
  mx_lora_dataset_free(train);
  mx_lora_dataset_free(valid);
  return st;
}
