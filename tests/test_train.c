/* test_train.c — mxc train as a library: the byte tokenizer, data windows,
 * loss falling, determinism, exact resume, errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "mxc/tokenizer.h"
#include "lm/train/train_internal.h" /* mx__train_low_steps */
#include "mxc/train.h"
#include "test.h"

static const char corpus[] =
    "the cat sat on the mat. the dog sat on the log. a cat and a dog sat on a mat.\n";

/* A temporary directory holding corpus.txt (n copies of the corpus). */
static char *make_tmp(int copies) {
  char *d = malloc(64);
  snprintf(d, 64, "/tmp/mxc_test_train_XXXXXX");
  if (!mkdtemp(d)) {
    free(d);
    return NULL;
  }
  char p[128];
  snprintf(p, sizeof p, "%s/corpus.txt", d);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < copies && f; i++) fputs(corpus, f);
  if (f) fclose(f);
  return d;
}

static void rm_tmp(char *d) {
  if (!d) return;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", d);
  free(d);
}

typedef struct {
  double loss[256];
  int n;
  int64_t stop_at; /* 0: never */
} curve;

static int record(void *ctx, const mx_train_event *ev) {
  curve *c = ctx;
  if (ev->kind != MX_TRAIN_EV_STEP) return 0;
  if (ev->step >= 1 && ev->step <= 256) {
    c->loss[ev->step - 1] = ev->loss;
    if (ev->step > c->n) c->n = (int)ev->step;
  }
  return c->stop_at && ev->step >= c->stop_at;
}

static mx_train_options tiny(const char *dir, char *data, char *out, const char *sub) {
  snprintf(data, 128, "%s/corpus.txt", dir);
  snprintf(out, 128, "%s/%s", dir, sub);
  mx_train_options o = MX_TRAIN_DEFAULTS;
  o.data_path = data;
  o.out_dir = out;
  o.dim = 32;
  o.layers = 1;
  o.heads = 2;
  o.kv_heads = 1;
  o.hidden = 64;
  o.seq = 16;
  o.batch = 4;
  o.iters = 50;
  o.warmup = 5;
  o.lr = 1e-2;
  o.min_lr = 1e-3;
  o.eval_every = 25;
  o.save_every = 25;
  o.val_batches = 2;
  o.val_frac = 0.1;
  o.seed = 7;
  return o;
}

TEST(byte_tokenizer_round_trips) {
  char *json = mx_train_byte_tokenizer_json();
  ASSERT_NOT_NULL(json);
  mx_tokenizer *tok = mx_tokenizer_from_json(json, strlen(json), NULL, 0);
  free(json);
  ASSERT_NOT_NULL(tok);
  ASSERT_EQ_INT((int)mx_tokenizer_vocab_size(tok), MX_TRAIN_BYTE_VOCAB);
  ASSERT_EQ_INT(mx_tokenizer_token_to_id(tok, "<|bos|>"), MX_TRAIN_BOS_ID);
  ASSERT_EQ_INT(mx_tokenizer_token_to_id(tok, "<|eos|>"), MX_TRAIN_EOS_ID);
  ASSERT_STR_EQ(mx_tokenizer_id_to_token(tok, ' '), "\xc4\xa0"); /* Ġ */
  const char *texts[] = {"Hello, world!", "  two  spaces\n\ttab\r\n", "caf\xc3\xa9 \xe2\x82\xac 10",
                         "\x01\x7f control bytes", "\xf0\x9f\x98\x80 emoji", ""};
  for (size_t t = 0; t < sizeof texts / sizeof *texts; t++) {
    const char *s = texts[t];
    size_t len = strlen(s);
    int32_t *ids = NULL;
    size_t n = 0;
    ASSERT_OK(mx_tokenizer_encode(tok, s, len, false, &ids, &n));
    ASSERT_EQ_INT((int)n, (int)len);
    for (size_t i = 0; i < n; i++) ASSERT_EQ_INT(ids[i], (unsigned char)s[i]);
    char *back = NULL;
    size_t blen = 0;
    ASSERT_OK(mx_tokenizer_decode(tok, ids, n, false, &back, &blen));
    ASSERT_STR_EQ(back, s);
    ASSERT_EQ_INT((int)blen, (int)len);
    free(back);
    free(ids);
  }
  mx_tokenizer_free(tok);
}

TEST(data_windows_are_shifted_and_deterministic) {
  int32_t ids[100];
  for (int i = 0; i < 100; i++) ids[i] = i;
  mx_train_data *d = mx_train_data_from_tokens(ids, 100, 0.2, 8);
  ASSERT_NOT_NULL(d);
  ASSERT_EQ_INT((int)mx_train_data_size(d, false), 80);
  ASSERT_EQ_INT((int)mx_train_data_size(d, true), 20);
  mx_array *x = NULL, *y = NULL, *x2 = NULL, *y2 = NULL;
  ASSERT_OK(mx_train_data_batch(d, false, 3, 5, 0, 4, 8, &x, &y));
  ASSERT_OK(mx_train_data_batch(d, false, 3, 5, 0, 4, 8, &x2, &y2));
  ASSERT_OK(mx_eval((mx_array *[]){x, y, x2, y2}, 4));
  const int32_t *px = mx_array_data(x), *py = mx_array_data(y), *px2 = mx_array_data(x2);
  for (int i = 0; i < 32; i++) {
    ASSERT_EQ_INT(py[i], px[i] + 1);
    ASSERT_EQ_INT(px[i], px2[i]);
    ASSERT(px[i] < 80 && py[i] < 80);
  }
  mx_array_free(x);
  mx_array_free(y);
  mx_array_free(x2);
  mx_array_free(y2);
  ASSERT_OK(mx_train_data_batch(d, true, 3, 0, 0, 2, 8, &x, &y));
  ASSERT_OK(mx_eval((mx_array *[]){x, y}, 2));
  px = mx_array_data(x);
  ASSERT_EQ_INT(px[0], 80);
  ASSERT_EQ_INT(px[8], 88);
  mx_array_free(x);
  mx_array_free(y);
  mx_train_data_free(d);
}

TEST(loss_falls_and_model_loads) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], out[128];
  mx_train_options o = tiny(dir, data, out, "run");
  curve c = {.n = 0};
  ASSERT_OK(mx_train_run(&o, record, &c));
  ASSERT_EQ_INT(c.n, 50);
  double first = 0, last = 0;
  for (int i = 0; i < 5; i++) {
    first += c.loss[i] / 5;
    last += c.loss[45 + i] / 5;
  }
  ASSERT_MSG(last < first - 1.5, "loss %g -> %g", first, last);
  mx_lm_model *m = mx_lm_load(out, NULL);
  ASSERT_MSG(m != NULL, "%s", mx_last_error());
  ASSERT_NOT_NULL(mx_lm_tokenizer(m));
  ASSERT(mx_lm_is_eos(m, MX_TRAIN_EOS_ID));
  const mx_lm_config *cfg = mx_lm_get_config(m);
  ASSERT(cfg->tie_word_embeddings);
  /* the byte tokenizer's 258 ids, the model's rounded up to a multiple of 8 */
  ASSERT_EQ_INT((int)mx_tokenizer_vocab_size(mx_lm_tokenizer(m)), MX_TRAIN_BYTE_VOCAB);
  ASSERT_EQ_INT((int)cfg->vocab_size, 264);
  ASSERT_EQ_INT((int)cfg->num_key_value_heads, 1);
  ASSERT(mx_nn_get_param(mx_lm_module(m), "model.layers.0.self_attn.q_proj.weight") != NULL);
  /* the pad ids are never targets: training moves their probability to the
   * corpus' bytes (uniform at the start: 6 / 264 = 0.023) */
  const int32_t ids[8] = {'t', 'h', 'e', ' ', 'c', 'a', 't', ' '};
  mx_array *t = mx_array_from_data(ids, (int64_t[]){1, 8}, 2, MX_INT32);
  mx_array *l = mx_lm_forward(m, t, NULL);
  float lg[8 * 264];
  ASSERT_OK(mx_array_copy_to(l, MX_FLOAT32, lg, 8 * 264));
  double pad_mass = 0;
  for (int r = 0; r < 8; r++) {
    double mx = -INFINITY, z = 0, zp = 0;
    for (int j = 0; j < 264; j++) mx = fmax(mx, lg[r * 264 + j]);
    for (int j = 0; j < 264; j++) z += exp(lg[r * 264 + j] - mx);
    for (int j = MX_TRAIN_BYTE_VOCAB; j < 264; j++) zp += exp(lg[r * 264 + j] - mx);
    pad_mass += zp / z / 8;
  }
  ASSERT_MSG(pad_mass < 0.005, "probability of the pad ids %g", pad_mass);
  mx_array_free(t);
  mx_array_free(l);
  mx_lm_free(m);
  char p[200];
  snprintf(p, sizeof p, "%s/metrics.jsonl", out);
  ASSERT(access(p, R_OK) == 0);
  rm_tmp(dir);
}

/* Mixed precision (--dtype bfloat16): bf16 compute, float32 master weights
 * and optimizer state: the curve follows the float32 one closely and the
 * saved weights are float32. */
TEST(bf16_mixed_precision_tracks_float32) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], out1[128], out2[128];
  mx_train_options o1 = tiny(dir, data, out1, "f32");
  mx_train_options o2 = tiny(dir, data, out2, "bf16");
  o2.compute_dtype = MX_BFLOAT16;
  curve a = {.n = 0}, b = {.n = 0};
  ASSERT_OK(mx_train_run(&o1, record, &a));
  ASSERT_OK(mx_train_run(&o2, record, &b));
  ASSERT_EQ_INT(b.n, 50);
  double fa = 0, la = 0, fb = 0, lb = 0;
  for (int i = 0; i < 5; i++) {
    fa += a.loss[i] / 5;
    la += a.loss[45 + i] / 5;
    fb += b.loss[i] / 5;
    lb += b.loss[45 + i] / 5;
  }
  ASSERT_MSG(lb < fb - 1.5, "bf16 loss %g -> %g", fb, lb);
  ASSERT_MSG(fabs(fb - fa) < 0.02 * fa, "first losses %g vs %g", fb, fa);
  ASSERT_MSG(fabs(lb - la) < 0.05 * la, "last losses %g vs %g", lb, la);
  ASSERT(memcmp(a.loss, b.loss, 50 * sizeof(double)) != 0); /* really bf16 */
  mx_lm_model *m = mx_lm_load(out2, NULL);
  ASSERT_NOT_NULL(m);
  mx_array *w = mx_nn_get_param(mx_lm_module(m), "model.layers.0.self_attn.q_proj.weight");
  ASSERT(w && mx_array_dtype(w) == MX_FLOAT32);
  mx_lm_free(m);
  o2.compute_dtype = MX_INT32;
  ASSERT(mx_train_run(&o2, record, &b) != 0);
  ASSERT(strstr(mx_last_error(), "--dtype"));
  rm_tmp(dir);
}

/* The mixed-precision step's 16-bit weight copies come from one
 * cast_concat and the step is differentiated at them: the same losses, bit
 * for bit, as casting each weight inside the loss (MXC_TRAIN_CAST_CONCAT=0). */
TEST(bf16_weight_copies_in_one_op_same_bits) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], out1[128], out2[128];
  mx_train_options o1 = tiny(dir, data, out1, "one");
  mx_train_options o2 = tiny(dir, data, out2, "each");
  o1.iters = o2.iters = 12;
  o1.compute_dtype = o2.compute_dtype = MX_BFLOAT16;
  curve a = {.n = 0}, b = {.n = 0};
  const char *env = getenv("MXC_TRAIN_CAST_CONCAT");
  char saved[16] = "";
  if (env) snprintf(saved, sizeof saved, "%s", env);
  unsetenv("MXC_TRAIN_CAST_CONCAT"); /* this test sets it both ways */
  const uint64_t before = mx__train_low_steps;
  ASSERT_OK(mx_train_run(&o1, record, &a));
  ASSERT_MSG(mx__train_low_steps - before >= 12, "%llu steps at the copies",
             (unsigned long long)(mx__train_low_steps - before));
  setenv("MXC_TRAIN_CAST_CONCAT", "0", 1);
  const uint64_t mid = mx__train_low_steps;
  ASSERT_OK(mx_train_run(&o2, record, &b));
  if (env) setenv("MXC_TRAIN_CAST_CONCAT", saved, 1);
  else unsetenv("MXC_TRAIN_CAST_CONCAT");
  ASSERT(mx__train_low_steps == mid);
  ASSERT_EQ_INT(a.n, 12);
  ASSERT_EQ_INT(b.n, 12);
  for (int i = 0; i < 12; i++)
    ASSERT_MSG(a.loss[i] == b.loss[i], "step %d: %.17g vs %.17g", i + 1, a.loss[i], b.loss[i]);
  rm_tmp(dir);
}

TEST(fixed_seed_gives_identical_curves) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], out1[128], out2[128];
  mx_train_options o1 = tiny(dir, data, out1, "a");
  mx_train_options o2 = tiny(dir, data, out2, "b");
  o1.iters = o2.iters = 20;
  curve a = {.n = 0}, b = {.n = 0};
  ASSERT_OK(mx_train_run(&o1, record, &a));
  ASSERT_OK(mx_train_run(&o2, record, &b));
  ASSERT_EQ_INT(a.n, 20);
  ASSERT(memcmp(a.loss, b.loss, 20 * sizeof(double)) == 0);
  o2.seed = 8;
  curve c = {.n = 0};
  ASSERT_OK(mx_train_run(&o2, record, &c));
  ASSERT(memcmp(a.loss, c.loss, 20 * sizeof(double)) != 0);
  rm_tmp(dir);
}

TEST(resume_equals_uninterrupted) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], out1[128], out2[128];
  mx_train_options o1 = tiny(dir, data, out1, "full");
  mx_train_options o2 = tiny(dir, data, out2, "split");
  o1.iters = o2.iters = 30;
  o1.grad_accum = o2.grad_accum = 2;
  o1.save_every = o2.save_every = 7;
  curve a = {.n = 0};
  ASSERT_OK(mx_train_run(&o1, record, &a));
  /* a stop asked at step 12 (between checkpoints): the step already queued
   * (13) completes first; with MXC_TRAIN_PIPELINE=0 the run stops at 12 */
  for (int pipelined = 1; pipelined >= 0; pipelined--) {
    curve b = {.n = 0};
    char sub[160];
    snprintf(sub, sizeof sub, "%s%d", out2, pipelined);
    o2.out_dir = sub;
    o2.resume = false;
    if (!pipelined) setenv("MXC_TRAIN_PIPELINE", "0", 1);
    b.stop_at = 12;
    ASSERT_OK(mx_train_run(&o2, record, &b));
    ASSERT_EQ_INT(b.n, pipelined ? 13 : 12);
    b.stop_at = 0;
    o2.resume = true;
    ASSERT_OK(mx_train_run(&o2, record, &b));
    unsetenv("MXC_TRAIN_PIPELINE");
    ASSERT_EQ_INT(b.n, 30);
    for (int i = 0; i < 30; i++)
      ASSERT_MSG(a.loss[i] == b.loss[i], "step %d: %.17g vs %.17g", i + 1, a.loss[i], b.loss[i]);
  }
  rm_tmp(dir);
}

TEST(bad_inputs_give_clear_errors) {
  char *dir = make_tmp(1);
  ASSERT_NOT_NULL(dir);
  char data[128], out[128];
  mx_train_options o = tiny(dir, data, out, "x");
  o.data_path = "/nonexistent/corpus.txt";
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "/nonexistent/corpus.txt") != NULL);
  o = tiny(dir, data, out, "x");
  o.dim = 30; /* not a multiple of heads * 2 */
  o.heads = 4;
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--dim") != NULL || strstr(mx_last_error(), "head") != NULL);
  o = tiny(dir, data, out, "x");
  o.seq = 4096; /* the corpus is one line */
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--seq") != NULL);
  o = tiny(dir, data, out, "x");
  o.vocab_multiple = -1;
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--pad-vocab") != NULL);
  o = tiny(dir, data, out, "x");
  o.lr = -1;
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--lr") != NULL);
  o = tiny(dir, data, out, "x");
  o.seq = 8;
  o.val_frac = 0;
  o.resume = true;
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "checkpoint") != NULL);
  o.data_path = NULL;
  ASSERT(mx_train_run(&o, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--data") != NULL);
  ASSERT(mx_train_run(NULL, NULL, NULL) != MX_OK);
  rm_tmp(dir);
}

/* ---- memory budget ---------------------------------------------------------------- */

static mx_nn_module *small_model(int64_t layers, int64_t vocab, int64_t seq) {
  mx_lm_config c;
  if (mx_train_llama_config(&c, 32, layers, 2, 2, 64, vocab, seq)) return NULL;
  return mx_train_llama_new(&c, 3);
}

TEST(checkpointed_loss_equals_plain_loss_and_grads) {
  mx_nn_module *m = small_model(3, MX_TRAIN_BYTE_VOCAB, 16);
  ASSERT_NOT_NULL(m);
  int32_t xs[2 * 16], ys[2 * 16];
  for (int i = 0; i < 32; i++) {
    xs[i] = (i * 37 + 5) % 250;
    ys[i] = (i * 11 + 3) % 250;
  }
  int64_t shape[2] = {2, 16};
  mx_array *xy[2] = {mx_array_from_data(xs, shape, 2, MX_INT32), mx_array_from_data(ys, shape, 2, MX_INT32)};
  mx_map *g1 = mx_map_new(), *g2 = mx_map_new();
  mx_list v1 = MX_LIST_INIT, v2 = MX_LIST_INIT;
  ASSERT_OK(mx_nn_value_and_grad(m, mx_train_lm_loss, NULL, xy, 2, &v1, g1));
  ASSERT_OK(mx_nn_value_and_grad(m, mx_train_lm_loss_checkpointed, NULL, xy, 2, &v2, g2));
  double l1, l2;
  ASSERT_OK(mx_array_item(v1.items[0], &l1));
  ASSERT_OK(mx_array_item(v2.items[0], &l2));
  ASSERT_NEAR(l1, l2, 1e-5);
  ASSERT_EQ_INT(mx_map_size(g1), mx_map_size(g2));
  for (int i = 0; i < mx_map_size(g1); i++) {
    mx_array *a = mx_map_value(g1, i), *b = mx_map_get(g2, mx_map_key(g1, i));
    ASSERT_NOT_NULL(b);
    mx_array *d = mx_subtract(a, b), *ad = mx_abs(d), *mx = mx_max(ad, NULL, 0, false);
    mx_array *aa = mx_abs(a), *ma = mx_max(aa, NULL, 0, false);
    double diff, mag;
    ASSERT_OK(mx_array_item(mx, &diff));
    ASSERT_OK(mx_array_item(ma, &mag));
    ASSERT_MSG(diff <= 1e-5 * (1 + mag), "%s: max diff %g", mx_map_key(g1, i), diff);
    mx_array_free(d);
    mx_array_free(ad);
    mx_array_free(mx);
    mx_array_free(aa);
    mx_array_free(ma);
  }
  ASSERT(mx_map_size(g1) > 10);
  mx_list_clear(&v1);
  mx_list_clear(&v2);
  mx_map_free(g1);
  mx_map_free(g2);
  mx_array_free(xy[0]);
  mx_array_free(xy[1]);
  mx_nn_module_free(m);
}

TEST(memory_plan_picks_each_branch) {
  mx_train_options o = MX_TRAIN_DEFAULTS;
  o.seq = 128; /* activations (not the optimizer's 6P) set the peak, so checkpointing shows */
  o.batch = 4;
  mx_nn_module *m = small_model(4, MX_TRAIN_BYTE_VOCAB, o.seq);
  ASSERT_NOT_NULL(m);
  size_t full, half, one, one_ck;
  ASSERT_OK(mx_train_estimate_step_memory(m, &o, 4, false, &full));
  ASSERT_OK(mx_train_estimate_step_memory(m, &o, 2, false, &half));
  ASSERT_OK(mx_train_estimate_step_memory(m, &o, 1, false, &one));
  ASSERT_OK(mx_train_estimate_step_memory(m, &o, 1, true, &one_ck));
  ASSERT_MSG(full > half && half > one, "%zu %zu %zu", full, half, one);
  ASSERT_MSG(one_ck < one, "checkpointing: %zu, without: %zu", one_ck, one);
  mx_train_memory_plan p;
  /* no limit, or a large one: the full batch */
  ASSERT_OK(mx_train_plan_memory(m, &o, &p));
  ASSERT_EQ_INT(p.kind, MX_TRAIN_PLAN_FULL);
  ASSERT_EQ_INT(p.micro_batch, 4);
  ASSERT_EQ_INT(p.grad_accum, 1);
  ASSERT_EQ_INT(p.peak_bytes, full);
  o.memory_limit = full;
  ASSERT_OK(mx_train_plan_memory(m, &o, &p));
  ASSERT_EQ_INT(p.kind, MX_TRAIN_PLAN_FULL);
  /* just below the full batch: micro-batches of 2, accumulated twice */
  o.memory_limit = full - 1;
  ASSERT_OK(mx_train_plan_memory(m, &o, &p));
  ASSERT_EQ_INT(p.kind, MX_TRAIN_PLAN_ACCUMULATE);
  ASSERT_EQ_INT(p.micro_batch, 2);
  ASSERT_EQ_INT(p.grad_accum, 2);
  ASSERT(!p.checkpoint && p.peak_bytes <= o.memory_limit);
  ASSERT_EQ_INT(p.full_bytes, full);
  /* below micro-batch 1: gradient checkpointing */
  o.memory_limit = one - 1;
  ASSERT_OK(mx_train_plan_memory(m, &o, &p));
  ASSERT_EQ_INT(p.kind, MX_TRAIN_PLAN_CHECKPOINT);
  ASSERT(p.checkpoint && p.peak_bytes <= o.memory_limit);
  ASSERT_EQ_INT(p.micro_batch * (p.grad_accum / o.grad_accum), 4);
  /* forced checkpointing */
  o.memory_limit = 0;
  o.grad_checkpoint = true;
  ASSERT_OK(mx_train_plan_memory(m, &o, &p));
  ASSERT_EQ_INT(p.kind, MX_TRAIN_PLAN_CHECKPOINT);
  ASSERT_EQ_INT(p.micro_batch, 4);
  /* nothing fits: a message with both numbers */
  o.grad_checkpoint = false;
  o.memory_limit = one_ck - 1;
  ASSERT_EQ_INT(mx_train_plan_memory(m, &o, &p), MX_ERR_OOM);
  char want[64];
  snprintf(want, sizeof want, "--memory-limit %zu bytes", one_ck - 1);
  ASSERT_MSG(strstr(mx_last_error(), want) != NULL, "%s", mx_last_error());
  snprintf(want, sizeof want, "about %zu bytes", one_ck);
  ASSERT_MSG(strstr(mx_last_error(), want) != NULL, "%s", mx_last_error());
  /* an allocator limit turns an overshoot into a status */
  size_t prev = mx_set_memory_limit(mx_get_active_memory() + 1000);
  size_t peak;
  int st = mx_train_measure_step_memory(m, 4, 64, false, &peak);
  mx_set_memory_limit(prev);
  ASSERT_EQ_INT(st, MX_ERR_OOM);
  mx_nn_module_free(m);
}

typedef struct {
  curve c;
  mx_train_memory_plan plan;
  size_t peak;
  bool planned;
} plan_rec;

static int record_plan(void *ctx, const mx_train_event *ev) {
  plan_rec *r = ctx;
  if (ev->kind == MX_TRAIN_EV_PLAN) {
    r->plan = *ev->plan;
    r->planned = true;
  }
  if (ev->kind == MX_TRAIN_EV_STEP && ev->peak_memory > r->peak) r->peak = ev->peak_memory;
  return record(&r->c, ev);
}

static int load_weights(const char *dir, mx_map **w) {
  char p[200];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  return mx_load(p, w, NULL);
}

static double max_weight_diff(mx_map *a, mx_map *b) {
  double worst = 0;
  for (int i = 0; i < mx_map_size(a); i++) {
    mx_array *x = mx_map_value(a, i), *y = mx_map_get(b, mx_map_key(a, i));
    if (!y) return INFINITY;
    mx_array *d = mx_subtract(x, y), *ad = mx_abs(d), *m = mx_max(ad, NULL, 0, false);
    double v = INFINITY;
    mx_array_item(m, &v);
    if (v > worst) worst = v;
    mx_array_free(d);
    mx_array_free(ad);
    mx_array_free(m);
  }
  return worst;
}

TEST(memory_limit_runs_give_the_full_batch_result) {
  char *dir = make_tmp(40);
  ASSERT_NOT_NULL(dir);
  char data[128], o1[128], o2[128], o3[128], o4[128];
  const size_t limit0 = mx_get_memory_limit();
  mx_train_options a = tiny(dir, data, o1, "full");
  a.iters = 6;
  a.layers = 3;
  a.seq = 128; /* activations dominate: micro-batches and checkpointing save memory */
  a.eval_every = 3;
  plan_rec r1 = {0};
  ASSERT_OK(mx_train_run(&a, record_plan, &r1));
  ASSERT(!r1.planned);
  /* the estimate of the full batch, minus one byte: accumulation */
  mx_lm_config c;
  ASSERT_OK(mx_train_llama_config(&c, a.dim, a.layers, a.heads, a.kv_heads, a.hidden, MX_TRAIN_BYTE_VOCAB, a.seq));
  mx_nn_module *m = mx_train_llama_new(&c, a.seed);
  size_t full, one;
  ASSERT_OK(mx_train_estimate_step_memory(m, &a, a.batch, false, &full));
  ASSERT_OK(mx_train_estimate_step_memory(m, &a, 1, false, &one));
  mx_nn_module_free(m);
  mx_train_options b = a;
  b.out_dir = o2;
  snprintf(o2, sizeof o2, "%s/accum", dir);
  b.memory_limit = full - 1;
  plan_rec r2 = {0};
  ASSERT_OK(mx_train_run(&b, record_plan, &r2));
  ASSERT(r2.planned);
  ASSERT_EQ_INT(r2.plan.kind, MX_TRAIN_PLAN_ACCUMULATE);
  ASSERT_MSG(r2.peak <= b.memory_limit, "peak %zu > limit %zu", r2.peak, b.memory_limit);
  /* checkpointing (and micro-batches) */
  mx_train_options e = b;
  e.out_dir = o3;
  snprintf(o3, sizeof o3, "%s/ckpt", dir);
  e.memory_limit = one - 1;
  plan_rec r3 = {0};
  ASSERT_OK(mx_train_run(&e, record_plan, &r3));
  ASSERT_EQ_INT(r3.plan.kind, MX_TRAIN_PLAN_CHECKPOINT);
  ASSERT_MSG(r3.peak <= e.memory_limit, "peak %zu > limit %zu", r3.peak, e.memory_limit);
  for (int i = 0; i < 6; i++) {
    ASSERT_NEAR(r2.c.loss[i], r1.c.loss[i], 1e-4 * (1 + r1.c.loss[i]));
    ASSERT_NEAR(r3.c.loss[i], r1.c.loss[i], 1e-4 * (1 + r1.c.loss[i]));
  }
  mx_map *w1 = NULL, *w2 = NULL, *w3 = NULL;
  ASSERT_OK(load_weights(o1, &w1));
  ASSERT_OK(load_weights(o2, &w2));
  ASSERT_OK(load_weights(o3, &w3));
  double d2 = max_weight_diff(w1, w2), d3 = max_weight_diff(w1, w3);
  ASSERT_MSG(d2 < 1e-4 && d3 < 1e-4, "weights differ by %g / %g", d2, d3);
  mx_map_free(w1);
  mx_map_free(w2);
  mx_map_free(w3);
  /* too small: stops before step 1 with both numbers, nothing trained */
  mx_train_options f = b;
  snprintf(o4, sizeof o4, "%s/tiny", dir);
  f.out_dir = o4;
  f.memory_limit = 1000;
  plan_rec r4 = {0};
  ASSERT_EQ_INT(mx_train_run(&f, record_plan, &r4), MX_ERR_OOM);
  ASSERT(strstr(mx_last_error(), "--memory-limit 1000 bytes") != NULL);
  ASSERT(strstr(mx_last_error(), "needs about") != NULL);
  ASSERT_EQ_INT(r4.c.n, 0);
  char p[200];
  snprintf(p, sizeof p, "%s/metrics.jsonl", o4);
  ASSERT(access(p, F_OK) != 0);
  ASSERT_EQ_INT(mx_get_memory_limit(), limit0); /* restored */
  rm_tmp(dir);
}

TEST(parse_bytes_units) {
  size_t b;
  ASSERT_OK(mx_parse_bytes("2GB", &b));
  ASSERT_EQ_INT(b, 2000000000ull);
  ASSERT_OK(mx_parse_bytes("512MiB", &b));
  ASSERT_EQ_INT(b, 512ull << 20);
  ASSERT_OK(mx_parse_bytes("1.5g", &b));
  ASSERT_EQ_INT(b, 1500000000ull);
  ASSERT_OK(mx_parse_bytes("123456", &b));
  ASSERT_EQ_INT(b, 123456);
  ASSERT_OK(mx_parse_bytes("64 KiB", &b));
  ASSERT_EQ_INT(b, 65536);
  ASSERT(mx_parse_bytes("lots", &b) != MX_OK);
  ASSERT(mx_parse_bytes("2XB", &b) != MX_OK);
  ASSERT(mx_parse_bytes("-1GB", &b) != MX_OK);
}

/* ---- BPE tokenizers ------------------------------------------------------------------ */

TEST(train_with_a_bpe_tokenizer) {
  char *dir = make_tmp(60);
  ASSERT_NOT_NULL(dir);
  char data[128], out[128], out2[128];
  mx_train_options o = tiny(dir, data, out, "bpe");
  o.vocab_size = 300;
  o.iters = 10;
  o.eval_every = 5;
  o.seq = 8;
  curve c = {.n = 0};
  ASSERT_OK(mx_train_run(&o, record, &c));
  ASSERT_EQ_INT(c.n, 10);
  mx_lm_model *m = mx_lm_load(out, NULL);
  ASSERT_MSG(m != NULL, "%s", mx_last_error());
  const mx_tokenizer *tok = mx_lm_tokenizer(m);
  ASSERT_NOT_NULL(tok);
  int64_t v = (int64_t)mx_tokenizer_vocab_size(tok); /* <= 300: the small corpus runs out of pairs */
  ASSERT(v > 258 && v <= 300);
  ASSERT_EQ_INT(mx_lm_get_config(m)->vocab_size, (v + 7) / 8 * 8);
  ASSERT_EQ_INT(mx_tokenizer_eos_id(tok), 1);
  ASSERT(mx_lm_is_eos(m, 1));
  int32_t *ids;
  size_t n;
  ASSERT_OK(mx_tokenizer_encode(tok, "the cat sat on the mat.", 23, false, &ids, &n));
  ASSERT_MSG(n < 12, "%zu tokens", n); /* merges learnt */
  free(ids);
  mx_lm_free(m);
  /* --tokenizer DIR reuses it */
  mx_train_options p = tiny(dir, data, out2, "reuse");
  p.tokenizer_dir = out;
  p.iters = 3;
  p.seq = 8;
  p.vocab_multiple = 1; /* the tokenizer's vocabulary exactly */
  ASSERT_OK(mx_train_run(&p, NULL, NULL));
  m = mx_lm_load(out2, NULL);
  ASSERT_MSG(m != NULL, "%s", mx_last_error());
  ASSERT_EQ_INT(mx_lm_get_config(m)->vocab_size, v);
  ASSERT_EQ_INT(mx_tokenizer_vocab_size(mx_lm_tokenizer(m)), v);
  mx_lm_free(m);
  /* errors */
  p.vocab_size = 300;
  ASSERT(mx_train_run(&p, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "not both") != NULL);
  p.tokenizer_dir = NULL;
  p.vocab_size = 100;
  ASSERT(mx_train_run(&p, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "--vocab-size") != NULL);
  p.vocab_size = 0;
  p.tokenizer_dir = "/nonexistent/tok";
  ASSERT(mx_train_run(&p, NULL, NULL) != MX_OK);
  ASSERT(strstr(mx_last_error(), "/nonexistent/tok") != NULL);
  rm_tmp(dir);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
