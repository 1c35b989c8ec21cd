/* test_lora_train.c — mxc lora's training options on the bundled
 * models/default (Llama, hidden 192, 4 layers, 6 heads, MLP 512, byte
 * tokenizer): exact resume, checkpoints, DoRA, full fine-tuning, QLoRA on a
 * quantized base, --memory-limit, YAML configs, the learning-rate schedule,
 * gradient accumulation, --test evaluation, and the adapter file layout
 * against mlx-lm's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mxc/io.h"
#include "mxc/lora.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "test.h"

#define MODEL "models/default"

/* ---- helpers ------------------------------------------------------------------ */
static const char *const texts[] = {
    "the cat sat on the mat.",
    "a dog ran in the park and the dog was happy.",
    "the sun is hot.",
    "birds sing in the morning when the sky turns light and the air is cool.",
    "fish swim.",
    "the old man walked slowly down the long road to the town by the sea.",
};

static void write_lines(const char *dir, const char *name, int n, int offset) {
  char p[256];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  for (int i = 0; f && i < n; i++) {
    int k = (i + offset) % 6;
    if (i % 3 == 2)
      fprintf(f, "{\"prompt\": \"Q%d: \", \"completion\": \"%s\"}\n", k, texts[k]);
    else
      fprintf(f, "{\"text\": \"%s\"}\n", texts[k]);
  }
  if (f) fclose(f);
}

static char *make_data(void) {
  char *d = malloc(64);
  snprintf(d, 64, "/tmp/mxc_test_lora_train_XXXXXX");
  if (!mkdtemp(d)) {
    free(d);
    return NULL;
  }
  write_lines(d, "train.jsonl", 24, 0);
  write_lines(d, "valid.jsonl", 8, 1);
  write_lines(d, "test.jsonl", 8, 2);
  return d;
}

static void rm_tmp(char *d) {
  if (!d) return;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", d);
  free(d);
}

static bool exists(const char *dir, const char *name) {
  char p[512];
  struct stat sb;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &sb) == 0;
}

#define MAXSTEPS 64
typedef struct {
  double train[MAXSTEPS + 1]; /* by step (steps_per_report = 1) */
  double lr[MAXSTEPS + 1];
  double val_first, val_last;
  int ntrain, nval, nsave;
  char info[512];
} record;

static int rec_event(void *ctx, const mx_lora_event *ev) {
  record *r = ctx;
  switch (ev->kind) {
  case MX_LORA_EV_TRAIN:
    if (ev->step <= MAXSTEPS) {
      r->train[ev->step] = ev->loss;
      r->lr[ev->step] = ev->learning_rate;
    }
    r->ntrain++;
    break;
  case MX_LORA_EV_VAL:
    if (!r->nval++) r->val_first = ev->loss;
    r->val_last = ev->loss;
    break;
  case MX_LORA_EV_SAVE:
    r->nsave++;
    break;
  case MX_LORA_EV_INFO:
    snprintf(r->info, sizeof r->info, "%s", ev->text);
    break;
  }
  return 0;
}

static mx_lora_options base_options(const char *data, const char *ad) {
  mx_lora_options o = MX_LORA_DEFAULTS;
  o.data_dir = data;
  o.adapter_path = ad;
  o.iters = 12;
  o.steps_per_report = 1;
  o.steps_per_eval = 100;
  o.save_every = 1000;
  o.learning_rate = 2e-3;
  o.lora.num_layers = 2;
  o.val_batches = -1;
  return o;
}

/* The mean training loss of epoch e (1-based; 6 steps per epoch). */
static double epoch_mean(const record *r, int e) {
  double s = 0;
  for (int i = 1; i <= 6; i++) s += r->train[(e - 1) * 6 + i];
  return s / 6;
}

/* Max |a - b| over two maps with the same keys (and shapes). */
static double max_diff(const mx_map *a, const mx_map *b) {
  double worst = 0;
  if (mx_map_size(a) != mx_map_size(b)) return INFINITY;
  for (int i = 0; i < mx_map_size(a); i++) {
    mx_array *y = mx_map_get(b, mx_map_key(a, i));
    if (!y) return INFINITY;
    mx_array *d = mx_subtract(mx_map_value(a, i), y);
    mx_array *ad = mx_abs(d);
    mx_array *m = mx_max(ad, NULL, 0, false);
    double v = INFINITY;
    if (m) mx_array_item(m, &v);
    mx_array_free(d);
    mx_array_free(ad);
    mx_array_free(m);
    if (v > worst) worst = v;
  }
  return worst;
}

/* Whether a and b have the same shape and elements (any dtype). */
static int same_array(mx_array *a, mx_array *b, bool *out) {
  *out = false;
  if (!a || !b || mx_array_ndim(a) != mx_array_ndim(b)) return 0;
  for (int i = 0; i < mx_array_ndim(a); i++)
    if (mx_array_dim(a, i) != mx_array_dim(b, i)) return 0;
  mx_array *e = mx_equal(a, b), *all = mx_all(e, NULL, 0, false);
  double v = 0;
  int st = all ? mx_array_item(all, &v) : -1;
  mx_array_free(e);
  mx_array_free(all);
  *out = v != 0;
  return st;
}

/* ---- resume ------------------------------------------------------------------- */
/* N steps, then a resumed run to N + M steps == N + M steps in one go: the
 * same losses bit for bit and the same adapters bit for bit (dropout on, so
 * the random stream must continue too). */
TEST(resume_equals_uninterrupted) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char a1[256], a2[256], ck[512];
  snprintf(a1, sizeof a1, "%s/full", d);
  snprintf(a2, sizeof a2, "%s/split", d);
  record full = {0}, part1 = {0}, part2 = {0};

  mx_lora_options o = base_options(d, a1);
  o.iters = 10;
  o.lora.dropout = 0.1;
  o.save_every = 4;
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &full));
  mx_lm_free(m);
  ASSERT_EQ_INT(full.ntrain, 10);
  ASSERT_EQ_INT(full.nsave, 2); /* steps 4 and 8 */
  ASSERT(exists(a1, "0000004_adapters.safetensors"));
  ASSERT(exists(a1, "0000004_optimizer.safetensors"));
  ASSERT(exists(a1, "0000008_adapters.safetensors"));
  ASSERT(exists(a1, "adapters.safetensors"));
  ASSERT(exists(a1, "optimizer.safetensors"));
  ASSERT(exists(a1, "adapter_config.json"));

  /* 6 steps, then resume from the final adapters to 10. */
  o.adapter_path = a2;
  o.iters = 6;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &part1));
  mx_lm_free(m);
  snprintf(ck, sizeof ck, "%s/adapters.safetensors", a2);
  o.iters = 10;
  o.resume_adapter_file = ck;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &part2));
  mx_lm_free(m);
  ASSERT_MSG(strstr(part2.info, "at step 6"), "%s", part2.info);
  ASSERT_EQ_INT(part1.ntrain, 6);
  ASSERT_EQ_INT(part2.ntrain, 4);
  for (int s = 1; s <= 10; s++) {
    double got = s <= 6 ? part1.train[s] : part2.train[s];
    ASSERT_MSG(got == full.train[s], "step %d: %.9g vs %.9g", s, got, full.train[s]);
  }
  mx_map *w1 = NULL, *w2 = NULL;
  char p[512];
  snprintf(p, sizeof p, "%s/adapters.safetensors", a1);
  ASSERT_OK(mx_load(p, &w1, NULL));
  snprintf(p, sizeof p, "%s/adapters.safetensors", a2);
  ASSERT_OK(mx_load(p, &w2, NULL));
  ASSERT_EQ_INT(mx_map_size(w1), 8);
  ASSERT_MSG(max_diff(w1, w2) == 0, "adapters differ by %g", max_diff(w1, w2));
  mx_map_free(w1);
  mx_map_free(w2);

  /* Resuming from a periodic checkpoint works the same way. */
  record part3 = {0};
  char a3[256];
  snprintf(a3, sizeof a3, "%s/from4", d);
  snprintf(ck, sizeof ck, "%s/0000004_adapters.safetensors", a1);
  o.adapter_path = a3;
  o.resume_adapter_file = ck;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &part3));
  mx_lm_free(m);
  for (int s = 5; s <= 10; s++) ASSERT_MSG(part3.train[s] == full.train[s], "step %d", s);

  /* With accumulation (an update every 2 iterations), resuming inside an
   * accumulation group (after iteration 3) keeps the summed gradient. */
  record acc_full = {0}, acc1 = {0}, acc2 = {0};
  char a4[256], a5[256];
  snprintf(a4, sizeof a4, "%s/acc_full", d);
  snprintf(a5, sizeof a5, "%s/acc_split", d);
  mx_lora_options oa = base_options(d, a4);
  oa.iters = 7;
  oa.grad_accumulation_steps = 2;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &oa, rec_event, &acc_full));
  mx_lm_free(m);
  oa.adapter_path = a5;
  oa.iters = 3;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &oa, rec_event, &acc1));
  mx_lm_free(m);
  snprintf(ck, sizeof ck, "%s/adapters.safetensors", a5);
  oa.iters = 7;
  oa.resume_adapter_file = ck;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &oa, rec_event, &acc2));
  mx_lm_free(m);
  for (int s = 1; s <= 7; s++) {
    double got = s <= 3 ? acc1.train[s] : acc2.train[s];
    ASSERT_MSG(got == acc_full.train[s], "accumulation step %d: %.9g vs %.9g", s, got, acc_full.train[s]);
  }
  snprintf(p, sizeof p, "%s/adapters.safetensors", a4);
  ASSERT_OK(mx_load(p, &w1, NULL));
  snprintf(p, sizeof p, "%s/adapters.safetensors", a5);
  ASSERT_OK(mx_load(p, &w2, NULL));
  ASSERT_MSG(max_diff(w1, w2) == 0, "adapters differ by %g", max_diff(w1, w2));
  mx_map_free(w1);
  mx_map_free(w2);

  /* Another seed cannot resume exactly: refused with a message. */
  o.seed = 7;
  m = mx_lm_load(MODEL, NULL);
  ASSERT(mx_lora_train(m, &o, NULL, NULL) != 0);
  ASSERT_MSG(strstr(mx_last_error(), "seed"), "%s", mx_last_error());
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- DoRA and full ---------------------------------------------------------------- */
TEST(dora_trains_and_fuses) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lora_options o = base_options(d, ad);
  o.lora.type = MX_LORA_FT_DORA;
  record r = {0};
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  double e1 = epoch_mean(&r, 1), e2 = epoch_mean(&r, 2);
  ASSERT_MSG(e2 < e1 * 0.9, "epoch mean loss %g -> %g", e1, e2);
  ASSERT_MSG(r.val_last < r.val_first, "val %g -> %g", r.val_first, r.val_last);
  ASSERT_EQ_INT(strcmp(mx_nn_module_type(mx_nn_get(mx_lm_module(m), "model.layers.3.self_attn.q_proj")),
                       "DoRALinear"), 0);
  /* fused == adapted */
  int32_t ids[] = {116, 104, 101, 32, 99, 97, 116};
  mx_array *x = mx_array_from_data(ids, (int64_t[]){1, 7}, 2, MX_INT32);
  mx_array *y1 = mx_lm_forward(m, x, NULL);
  mx_lm_model *f = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_load_adapters(mx_lm_module(f), ad));
  ASSERT_OK(mx_lora_fuse_all(mx_lm_module(f)));
  mx_array *y2 = mx_lm_forward(f, x, NULL);
  bool same = false;
  ASSERT_OK(mx_allclose(y1, y2, 1e-4, 1e-4, &same));
  ASSERT(same);
  mx_array_free(x);
  mx_array_free(y1);
  mx_array_free(y2);
  mx_lm_free(f);
  mx_lm_free(m);
  rm_tmp(d);
}

TEST(full_fine_tune_changes_only_last_layers) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lora_options o = base_options(d, ad);
  o.lora.type = MX_LORA_FT_FULL;
  o.lora.num_layers = 1;
  o.iters = 6;
  o.learning_rate = 1e-3;
  record r = {0};
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  mx_map *before = NULL, *after = NULL;
  ASSERT_OK(mx_nn_parameters(mx_lm_module(m), &before));
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  ASSERT_MSG(r.train[6] < r.train[1], "%g -> %g", r.train[1], r.train[6]);
  ASSERT_OK(mx_nn_parameters(mx_lm_module(m), &after));
  int changed = 0;
  for (int i = 0; i < mx_map_size(before); i++) {
    const char *k = mx_map_key(before, i);
    bool same = false;
    ASSERT_OK(same_array(mx_map_value(before, i), mx_map_get(after, k), &same));
    bool trained = !strncmp(k, "model.layers.3.", 15);
    if (!trained) ASSERT_MSG(same, "%s changed", k);
    changed += !same;
  }
  ASSERT(changed >= 7); /* q, k, v, o, gate, up, down (norms may move too) */
  mx_map *w = NULL;
  char p[512];
  snprintf(p, sizeof p, "%s/adapters.safetensors", ad);
  ASSERT_OK(mx_load(p, &w, NULL));
  ASSERT_EQ_INT(mx_map_size(w), 9); /* the 9 parameters of layer 3 */
  ASSERT(mx_map_has(w, "model.layers.3.mlp.down_proj.weight"));
  mx_map_free(w);
  /* --adapter-path loads them back (fine_tune_type full: plain weights). */
  mx_lm_model *f = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_load_adapters(mx_lm_module(f), ad));
  mx_map *loaded = NULL;
  ASSERT_OK(mx_nn_parameters(mx_lm_module(f), &loaded));
  ASSERT(max_diff(after, loaded) == 0);
  mx_map_free(loaded);
  mx_lm_free(f);
  mx_map_free(before);
  mx_map_free(after);
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- QLoRA -------------------------------------------------------------------------- */
TEST(qlora_on_quantized_base) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  mx_nn_module *root = mx_lm_module(m);
  ASSERT_OK(mx_nn_quantize(root, 64, 4, NULL, NULL));
  mx_map *before = NULL, *after = NULL;
  ASSERT_OK(mx_nn_parameters(root, &before));
  mx_lora_options o = base_options(d, ad);
  o.iters = 18;
  record r = {0};
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  /* 24 training examples in batches of 4: each epoch is 6 steps over the
   * same batches, so epoch means compare like with like. */
  double e1 = epoch_mean(&r, 1), e3 = epoch_mean(&r, 3);
  ASSERT_MSG(e3 < e1 * 0.9, "epoch mean loss %g -> %g", e1, e3);
  ASSERT_MSG(r.val_last < r.val_first, "val %g -> %g", r.val_first, r.val_last);
  /* The base stays quantized and unchanged. */
  mx_nn_module *q = mx_nn_get(root, "model.layers.3.self_attn.q_proj");
  ASSERT_EQ_INT(strcmp(mx_nn_module_type(q), "LoRALinear"), 0);
  ASSERT_EQ_INT(strcmp(mx_nn_module_type(mx_nn_child(q, "linear")), "QuantizedLinear"), 0);
  ASSERT_OK(mx_nn_parameters(root, &after));
  int nbase = 0;
  for (int i = 0; i < mx_map_size(after); i++) {
    char k[256];
    snprintf(k, sizeof k, "%s", mx_map_key(after, i));
    if (strstr(k, ".lora_")) continue;
    char *lin = strstr(k, ".linear.");
    if (lin) memmove(lin, lin + 7, strlen(lin + 7) + 1);
    mx_array *old = mx_map_get(before, k);
    ASSERT_MSG(old, "%s", k);
    bool same = false;
    ASSERT_OK(same_array(old, mx_map_value(after, i), &same));
    ASSERT_MSG(same, "%s changed", k);
    if (mx_array_dtype(old) == MX_UINT32) nbase++;
  }
  ASSERT(nbase >= 28); /* every Linear of the 4 layers (7 each) is packed */
  /* Fused with --dequantize == the adapted model (up to the fused float math). */
  int32_t ids[] = {116, 104, 101, 32, 99, 97, 116};
  mx_array *x = mx_array_from_data(ids, (int64_t[]){1, 7}, 2, MX_INT32);
  mx_array *y1 = mx_lm_forward(m, x, NULL);
  ASSERT_OK(mx_lora_fuse_all_ex(root, true));
  ASSERT_EQ_INT(strcmp(mx_nn_module_type(mx_nn_get(root, "model.layers.3.self_attn.q_proj")), "Linear"), 0);
  ASSERT_EQ_INT(strcmp(mx_nn_module_type(mx_nn_get(root, "model.layers.0.mlp.up_proj")), "Linear"), 0);
  mx_array *y2 = mx_lm_forward(m, x, NULL);
  bool same = false;
  ASSERT_OK(mx_allclose(y1, y2, 1e-3, 1e-3, &same));
  ASSERT(same);
  mx_array_free(x);
  mx_array_free(y1);
  mx_array_free(y2);
  mx_map_free(before);
  mx_map_free(after);
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- memory limit -------------------------------------------------------------------- */
TEST(memory_limit_fits_or_stops_before_training) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lora_options o = base_options(d, ad);
  o.iters = 2;
  o.batch_size = 4;
  /* Far too small: stops before the first step, naming both sizes. */
  o.memory_limit = 1000;
  size_t limit0 = mx_get_memory_limit();
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  record r = {0};
  ASSERT(mx_lora_train(m, &o, rec_event, &r) != 0);
  const char *e = mx_last_error();
  ASSERT_MSG(strstr(e, "--memory-limit 1000 bytes is too small") && strstr(e, "needs"), "%s", e);
  ASSERT_EQ_INT(r.ntrain, 0);
  ASSERT(!exists(ad, "adapters.safetensors"));
  size_t need1 = 0;
  const char *n = strstr(e, "needs ");
  ASSERT_NOT_NULL(n);
  need1 = (size_t)strtoull(n + 6, NULL, 10);
  ASSERT(need1 > 1000);
  mx_lm_free(m);

  /* No limit: the full micro-batch; its peak is the reference. */
  o.memory_limit = (size_t)1 << 40;
  m = mx_lm_load(MODEL, NULL);
  memset(&r, 0, sizeof r);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  ASSERT_MSG(strstr(r.info, "micro-batch 4 x 1"), "%s", r.info);
  double val_full = r.val_first;
  mx_lm_free(m);

  /* Just above what one example needs: smaller micro-batches, same run length. */
  o.memory_limit = need1 + need1 / 50;
  m = mx_lm_load(MODEL, NULL);
  memset(&r, 0, sizeof r);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  ASSERT_MSG(strstr(r.info, "micro-batch 1 x 4") || strstr(r.info, "micro-batch 2 x 2"), "%s", r.info);
  ASSERT_EQ_INT(r.ntrain, 2);
  /* Validation runs in micro-batches too: the same token-weighted loss. */
  ASSERT_NEAR(r.val_first, val_full, 1e-5);
  ASSERT(mx_get_memory_limit() == limit0); /* restored */
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- accumulation, schedule, optimizers ---------------------------------------------- */
/* --grad-checkpoint: each layer recomputed in the backward pass gives the
 * same losses (the same kernels on the same values) with a lower peak. */
TEST(grad_checkpoint_same_losses_less_memory) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lora_options o = base_options(d, ad);
  o.iters = 4;
  o.lora.num_layers = -1;
  o.lora.nkeys = 2;
  record r[2];
  memset(r, 0, sizeof r);
  size_t peak[2] = {0};
  for (int ck = 0; ck < 2; ck++) {
    o.grad_checkpoint = ck == 1;
    mx_lm_model *m = mx_lm_load(MODEL, NULL);
    ASSERT_NOT_NULL(m);
    mx_reset_peak_memory();
    ASSERT_OK(mx_lora_train(m, &o, rec_event, &r[ck]));
    peak[ck] = mx_get_peak_memory();
    mx_lm_free(m);
  }
  ASSERT_EQ_INT(r[0].ntrain, 4);
  ASSERT_EQ_INT(r[1].ntrain, 4);
  for (int i = 1; i <= 4; i++) ASSERT_NEAR(r[1].train[i], r[0].train[i], 1e-6 * fabs(r[0].train[i]));
  fprintf(stderr, "  grad checkpoint: peak %.2f MB vs %.2f MB\n", peak[1] / 1e6, peak[0] / 1e6);
  ASSERT(peak[1] < peak[0]);
  rm_tmp(d);
}

TEST(grad_accumulation_and_lr_schedule) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  mx_lora_options o = base_options(d, ad);
  o.iters = 6;
  o.batch_size = 2;
  o.optimizer = MX_LORA_OPT_ADAMW;
  /* mlx-lm build_schedule: linear warmup from warmup_init to arguments[0]
   * over `warmup` steps, then cosine_decay(1e-3, 10), joined at warmup + 1. */
  snprintf(o.lr_schedule.name, sizeof o.lr_schedule.name, "cosine_decay");
  o.lr_schedule.arguments[0] = 1e-3;
  o.lr_schedule.arguments[1] = 10;
  o.lr_schedule.narguments = 2;
  o.lr_schedule.warmup = 2;
  o.lr_schedule.warmup_init = 0;
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  record r = {0};
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  ASSERT_EQ_INT(r.ntrain, 6);
  ASSERT_NEAR(r.lr[1], 0.0, 1e-12);    /* schedule(0) = warmup_init */
  ASSERT_NEAR(r.lr[2], 5e-4, 1e-9);    /* halfway up */
  ASSERT_NEAR(r.lr[3], 1e-3, 1e-9);    /* warmup done: linear(2) */
  ASSERT_NEAR(r.lr[4], 1e-3, 1e-9);    /* cosine(0) at the join (warmup + 1) */
  ASSERT_NEAR(r.lr[5], 1e-3 * 0.5 * (1 + cos(3.14159265358979323846 / 10)), 1e-9);
  ASSERT(r.train[6] < r.train[1]);
  mx_lm_free(m);

  /* mlx-lm's accumulation: one batch per iteration, an update every
   * grad_accumulation_steps iterations (6 iterations, 3 updates); the
   * reported rate is the one of the update the iteration feeds. */
  o.grad_accumulation_steps = 2;
  m = mx_lm_load(MODEL, NULL);
  memset(&r, 0, sizeof r);
  ASSERT_OK(mx_lora_train(m, &o, rec_event, &r));
  ASSERT_EQ_INT(r.ntrain, 6);
  ASSERT_NEAR(r.lr[1], 0.0, 1e-12);
  ASSERT_NEAR(r.lr[2], 0.0, 1e-12);
  ASSERT_NEAR(r.lr[3], 5e-4, 1e-9);
  ASSERT_NEAR(r.lr[5], 1e-3, 1e-9);
  mx_lm_free(m);
  char p[512];
  snprintf(p, sizeof p, "%s/optimizer.safetensors", ad);
  mx_map *state = NULL;
  mx_metadata *meta = NULL;
  ASSERT_OK(mx_load(p, &state, &meta));
  double steps = 0;
  ASSERT_OK(mx_array_item(mx_map_get(state, "step"), &steps));
  ASSERT_NEAR(steps, 3, 0);
  ASSERT_STR_EQ(mx_metadata_get_string(meta, "iteration"), "6");
  mx_map_free(state);
  mx_metadata_free(meta);

  /* SGD runs too; an unknown schedule name is an error naming it. */
  o.optimizer = MX_LORA_OPT_SGD;
  o.lr_schedule.name[0] = 0;
  o.learning_rate = 0.05;
  o.iters = 3;
  m = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_train(m, &o, NULL, NULL));
  mx_lm_free(m);
  snprintf(o.lr_schedule.name, sizeof o.lr_schedule.name, "cosine_wave");
  m = mx_lm_load(MODEL, NULL);
  ASSERT(mx_lora_train(m, &o, NULL, NULL) != 0);
  ASSERT_MSG(strstr(mx_last_error(), "cosine_wave"), "%s", mx_last_error());
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- --test -------------------------------------------------------------------------- */
TEST(test_loss_and_perplexity) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  char ad[256], tp[256];
  snprintf(ad, sizeof ad, "%s/ad", d);
  snprintf(tp, sizeof tp, "%s/test.jsonl", d);
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  double base = 0, tuned = 0, again = 0;
  ASSERT_OK(mx_lora_evaluate(m, tp, 4, -1, 2048, false, &base));
  ASSERT(isfinite(base) && base > 0);
  mx_lora_options o = base_options(d, ad);
  ASSERT_OK(mx_lora_train(m, &o, NULL, NULL));
  ASSERT_OK(mx_lora_evaluate(m, tp, 4, -1, 2048, false, &tuned));
  ASSERT_MSG(tuned < base, "test loss %g -> %g", base, tuned);
  /* --test without --train: the saved adapters give the same loss. */
  mx_lm_model *f = mx_lm_load(MODEL, NULL);
  ASSERT_OK(mx_lora_load_for_test(f, ad));
  ASSERT_OK(mx_lora_evaluate(f, tp, 4, -1, 2048, false, &again));
  ASSERT_NEAR(again, tuned, 1e-6);
  /* test_batches limits the batches: 1 batch of 4 examples. */
  ASSERT_OK(mx_lora_evaluate(f, tp, 4, 1, 2048, false, &again));
  ASSERT(isfinite(again));
  mx_lm_free(f);
  mx_lm_free(m);
  rm_tmp(d);
}

/* ---- YAML -------------------------------------------------------------------------- */
static char *write_yaml(const char *text) {
  char *p = malloc(64);
  snprintf(p, 64, "/tmp/mxc_test_lora_yaml_XXXXXX");
  int fd = mkstemp(p);
  if (fd < 0) {
    free(p);
    return NULL;
  }
  FILE *f = fdopen(fd, "w");
  fputs(text, f);
  fclose(f);
  return p;
}

TEST(yaml_config) {
  char *p = write_yaml(
      "# mlx-lm lora config\n"
      "model: models/default\n"
      "train: true\n"
      "fine_tune_type: dora\n"
      "optimizer: adamw\n"
      "optimizer_config:\n"
      "  adam: {}\n"
      "  adamw:\n"
      "    betas: [0.8, 0.95]\n"
      "    weight_decay: 0.05\n"
      "  muon: {}\n"
      "data: \"my data\"\n"
      "seed: 3\n"
      "num_layers: -1\n"
      "batch_size: 2\n"
      "iters: 50\n"
      "val_batches: -1\n"
      "learning_rate: 1e-4\n"
      "steps_per_report: 5\n"
      "steps_per_eval: 25\n"
      "grad_accumulation_steps: 2\n"
      "resume_adapter_file: null\n"
      "adapter_path: out\n"
      "save_every: 10\n"
      "test: false\n"
      "max_seq_length: 512\n"
      "grad_checkpoint: false\n"
      "mask_prompt: true\n"
      "wandb: null\n"
      "lora_parameters:\n"
      "  keys: [\"self_attn.q_proj\", \"self_attn.k_proj\", mlp.down_proj]\n"
      "  rank: 4\n"
      "  scale: 10.0\n"
      "  dropout: 0.05\n"
      "lr_schedule:\n"
      "  name: cosine_decay\n"
      "  warmup: 10\n"
      "  warmup_init: 1e-7\n"
      "  arguments: [1e-4, 1000, 1e-7]\n");
  ASSERT_NOT_NULL(p);
  mx_lora_options o = MX_LORA_DEFAULTS;
  bool train = false, test = true;
  mx_lora_yaml *y = mx_lora_yaml_load(p, &o, &train, &test);
  ASSERT_MSG(y != NULL, "%s", mx_last_error());
  ASSERT(train && !test);
  ASSERT_STR_EQ(o.model, "models/default");
  ASSERT_STR_EQ(o.data_dir, "my data");
  ASSERT_STR_EQ(o.adapter_path, "out");
  ASSERT(o.resume_adapter_file == NULL);
  ASSERT_EQ_INT(o.lora.type, MX_LORA_FT_DORA);
  ASSERT_EQ_INT(o.optimizer, MX_LORA_OPT_ADAMW);
  ASSERT_NEAR(o.beta1, 0.8, 0);
  ASSERT_NEAR(o.beta2, 0.95, 0);
  ASSERT_NEAR(o.weight_decay, 0.05, 0);
  ASSERT_EQ_INT((int)o.seed, 3);
  ASSERT_EQ_INT(o.lora.num_layers, -1);
  ASSERT_EQ_INT((int)o.batch_size, 2);
  ASSERT_EQ_INT((int)o.iters, 50);
  ASSERT_EQ_INT((int)o.val_batches, -1);
  ASSERT_NEAR(o.learning_rate, 1e-4, 0);
  ASSERT_EQ_INT((int)o.steps_per_report, 5);
  ASSERT_EQ_INT((int)o.steps_per_eval, 25);
  ASSERT_EQ_INT((int)o.grad_accumulation_steps, 2);
  ASSERT_EQ_INT((int)o.save_every, 10);
  ASSERT_EQ_INT((int)o.max_seq_length, 512);
  ASSERT(o.mask_prompt && !o.grad_checkpoint);
  ASSERT_EQ_INT(o.lora.nkeys, 3);
  ASSERT_STR_EQ(o.lora.keys[2], "mlp.down_proj");
  ASSERT_EQ_INT(o.lora.rank, 4);
  ASSERT_NEAR(o.lora.scale, 10.0, 0);
  ASSERT_NEAR(o.lora.dropout, 0.05, 0);
  ASSERT_STR_EQ(o.lr_schedule.name, "cosine_decay");
  ASSERT_EQ_INT(o.lr_schedule.narguments, 3);
  ASSERT_NEAR(o.lr_schedule.arguments[1], 1000, 0);
  ASSERT_EQ_INT((int)o.lr_schedule.warmup, 10);
  ASSERT_NEAR(o.lr_schedule.warmup_init, 1e-7, 0);
  mx_lora_yaml_free(y);
  remove(p);
  free(p);

  /* Errors name FILE:LINE and the key. */
  static const struct {
    const char *text, *want;
  } bad[] = {
      {"iters: 10\nbatch_sise: 4\n", ":2: unknown key \"batch_sise\""},
      {"iters: ten\n", ":1: iters: expected an integer"},
      {"lora_parameters:\n  rank: 8\n  rnk: 2\n", ":3: unknown key \"lora_parameters.rnk\""},
      {"mask_prompt: maybe\n", ":1: mask_prompt: expected true or false"},
      {"fine_tune_type: qlora\n", ":1: fine_tune_type: expected lora, dora or full"},
      {"iters: [1\n", "invalid YAML"},
      {"lr_schedule:\n  arguments: [1e-3]\n", "lr_schedule: expected a \"name\""},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    p = write_yaml(bad[i].text);
    ASSERT_NOT_NULL(p);
    o = MX_LORA_DEFAULTS;
    y = mx_lora_yaml_load(p, &o, NULL, NULL);
    ASSERT(y == NULL);
    ASSERT_MSG(strstr(mx_last_error(), bad[i].want) && strstr(mx_last_error(), p), "case %zu: %s", i,
               mx_last_error());
    remove(p);
    free(p);
  }
  o = MX_LORA_DEFAULTS;
  ASSERT(mx_lora_yaml_load("/nonexistent/c.yaml", &o, NULL, NULL) == NULL);
  ASSERT(strstr(mx_last_error(), "/nonexistent/c.yaml"));
}

/* ---- the adapter layout, against mlx-lm ------------------------------------------------
 * Expected names and shapes, from mlx-lm (ml-explore/mlx-lm):
 *  - lora.py train_model saves dict(tree_flatten(model.trainable_parameters()))
 *    to adapters.safetensors; the model is frozen first, so only the adapter
 *    layers' lora_a / lora_b (and DoRA's m) are trainable.
 *  - tuner/utils.py linear_to_lora_layers wraps the modules named by
 *    lora_parameters.keys in model.layers[-num_layers:]; the Llama model's
 *    layers sit under "model.layers.N", so names are
 *    "model.layers.N.<key>.lora_a".
 *  - tuner/lora.py LoRALinear: lora_a has shape (input_dims, r), lora_b
 *    (r, output_dims); tuner/dora.py DoRALinear adds m of shape
 *    (output_dims,) (the row norms of the base weight).
 * models/default: hidden 192, 6 heads x 32 (q, k, v, o: 192 -> 192),
 * MLP 192 -> 512 -> 192, 4 layers. Config: num_layers 2, rank 4, keys
 * self_attn.q_proj, self_attn.k_proj, mlp.down_proj, mlp.up_proj. */
TEST(adapter_layout_matches_mlx_lm) {
  static const char *const lora_expected[] = {
      "model.layers.2.mlp.down_proj.lora_a [512, 4]", "model.layers.2.mlp.down_proj.lora_b [4, 192]",
      "model.layers.2.mlp.up_proj.lora_a [192, 4]",   "model.layers.2.mlp.up_proj.lora_b [4, 512]",
      "model.layers.2.self_attn.k_proj.lora_a [192, 4]", "model.layers.2.self_attn.k_proj.lora_b [4, 192]",
      "model.layers.2.self_attn.q_proj.lora_a [192, 4]", "model.layers.2.self_attn.q_proj.lora_b [4, 192]",
      "model.layers.3.mlp.down_proj.lora_a [512, 4]", "model.layers.3.mlp.down_proj.lora_b [4, 192]",
      "model.layers.3.mlp.up_proj.lora_a [192, 4]",   "model.layers.3.mlp.up_proj.lora_b [4, 512]",
      "model.layers.3.self_attn.k_proj.lora_a [192, 4]", "model.layers.3.self_attn.k_proj.lora_b [4, 192]",
      "model.layers.3.self_attn.q_proj.lora_a [192, 4]", "model.layers.3.self_attn.q_proj.lora_b [4, 192]",
  };
  static const char *const dora_extra[] = {
      "model.layers.2.mlp.down_proj.m [192]",       "model.layers.2.mlp.up_proj.m [512]",
      "model.layers.2.self_attn.k_proj.m [192]",    "model.layers.2.self_attn.q_proj.m [192]",
      "model.layers.3.mlp.down_proj.m [192]",       "model.layers.3.mlp.up_proj.m [512]",
      "model.layers.3.self_attn.k_proj.m [192]",    "model.layers.3.self_attn.q_proj.m [192]",
  };
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  for (int dora = 0; dora < 2; dora++) {
    char ad[256];
    snprintf(ad, sizeof ad, "%s/ad%d", d, dora);
    mx_lora_options o = base_options(d, ad);
    o.iters = 1;
    o.lora.rank = 4;
    o.lora.nkeys = 4;
    snprintf(o.lora.keys[0], 64, "self_attn.q_proj");
    snprintf(o.lora.keys[1], 64, "self_attn.k_proj");
    snprintf(o.lora.keys[2], 64, "mlp.down_proj");
    snprintf(o.lora.keys[3], 64, "mlp.up_proj");
    o.lora.type = dora ? MX_LORA_FT_DORA : MX_LORA_FT_LORA;
    mx_lm_model *m = mx_lm_load(MODEL, NULL);
    ASSERT_NOT_NULL(m);
    ASSERT_OK(mx_lora_train(m, &o, NULL, NULL));
    mx_lm_free(m);
    char p[512];
    snprintf(p, sizeof p, "%s/adapters.safetensors", ad);
    mx_map *w = NULL;
    ASSERT_OK(mx_load(p, &w, NULL));
    int want = 16 + (dora ? 8 : 0);
    ASSERT_EQ_INT(mx_map_size(w), want);
    for (int i = 0; i < want; i++) {
      const char *e = i < 16 ? lora_expected[i] : dora_extra[i - 16];
      char name[128];
      snprintf(name, sizeof name, "%.*s", (int)(strchr(e, ' ') - e), e);
      mx_array *a = mx_map_get(w, name);
      ASSERT_MSG(a != NULL, "missing %s", name);
      char got[160];
      if (mx_array_ndim(a) == 2)
        snprintf(got, sizeof got, "%s [%lld, %lld]", name, (long long)mx_array_dim(a, 0),
                 (long long)mx_array_dim(a, 1));
      else
        snprintf(got, sizeof got, "%s [%lld]", name, (long long)mx_array_dim(a, 0));
      ASSERT_STR_EQ(got, e);
      ASSERT_EQ_INT(mx_array_dtype(a), MX_FLOAT32);
    }
    mx_map_free(w);
    /* adapter_config.json: mlx-lm's keys (save_config(vars(args))). */
    snprintf(p, sizeof p, "%s/adapter_config.json", ad);
    FILE *f = fopen(p, "r");
    ASSERT_NOT_NULL(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    static const char *const keys[] = {"\"fine_tune_type\"", "\"num_layers\"", "\"lora_parameters\"",
                                       "\"rank\"", "\"scale\"", "\"dropout\"", "\"keys\"",
                                       "\"batch_size\"", "\"iters\"", "\"learning_rate\"",
                                       "\"adapter_path\"", "\"max_seq_length\"", "\"seed\""};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) ASSERT_MSG(strstr(buf, keys[k]), "%s", keys[k]);
    ASSERT(strstr(buf, dora ? "\"dora\"" : "\"lora\""));
  }
  rm_tmp(d);
}

/* ---- options ------------------------------------------------------------------------- */
TEST(bad_options_name_the_flag) {
  mx_lora_options o = MX_LORA_DEFAULTS;
  o.data_dir = "x";
  o.grad_accumulation_steps = 0;
  ASSERT(mx_lora_check_options(&o) != 0);
  ASSERT(strstr(mx_last_error(), "--grad-accumulation-steps"));
  o = MX_LORA_DEFAULTS;
  o.data_dir = "x";
  o.val_batches = 0;
  ASSERT(mx_lora_check_options(&o) != 0);
  ASSERT(strstr(mx_last_error(), "--val-batches"));
  o = MX_LORA_DEFAULTS;
  o.data_dir = "x";
  o.lora.num_layers = 9;
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  ASSERT(mx_lora_apply(mx_lm_module(m), &o.lora, 0) != 0);
  ASSERT_MSG(strstr(mx_last_error(), "only has 4 layers"), "%s", mx_last_error());
  mx_lm_free(m);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
