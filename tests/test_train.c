/* test_train.c — mxc train as a library: the byte tokenizer, data windows,
 * loss falling, determinism, exact resume, errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxc/lm.h"
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
  ASSERT_EQ_INT((int)cfg->vocab_size, MX_TRAIN_BYTE_VOCAB);
  ASSERT_EQ_INT((int)cfg->num_key_value_heads, 1);
  ASSERT(mx_nn_get_param(mx_lm_module(m), "model.layers.0.self_attn.q_proj.weight") != NULL);
  mx_lm_free(m);
  char p[200];
  snprintf(p, sizeof p, "%s/metrics.jsonl", out);
  ASSERT(access(p, R_OK) == 0);
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
  curve a = {.n = 0}, b = {.n = 0};
  ASSERT_OK(mx_train_run(&o1, record, &a));
  b.stop_at = 12; /* interrupted after step 12 (between checkpoints) */
  ASSERT_OK(mx_train_run(&o2, record, &b));
  ASSERT_EQ_INT(b.n, 12);
  b.stop_at = 0;
  o2.resume = true;
  ASSERT_OK(mx_train_run(&o2, record, &b));
  ASSERT_EQ_INT(b.n, 30);
  for (int i = 0; i < 30; i++) ASSERT_MSG(a.loss[i] == b.loss[i], "step %d: %.17g vs %.17g", i + 1, a.loss[i], b.loss[i]);
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

int main(int argc, char **argv) { return test_main(argc, argv); }
