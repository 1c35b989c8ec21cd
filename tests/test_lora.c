/* test_lora.c — LoRA fine-tuning on the bundled models/default: only the
 * adapters change, mlx-lm names and shapes, the prompt mask, the fused
 * model computes the same logits, bad data lines name file:line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxc/io.h"
#include "mxc/lora.h"
#include "mxc/ops.h"
#include "test.h"

#define MODEL "models/default"

static char *make_data(void) {
  char *d = malloc(64);
  snprintf(d, 64, "/tmp/mxc_test_lora_XXXXXX");
  if (!mkdtemp(d)) {
    free(d);
    return NULL;
  }
  char p[128];
  snprintf(p, sizeof p, "%s/train.jsonl", d);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < 8 && f; i++) {
    fputs("{\"text\": \"the cat sat on the mat. the cat sat on the mat.\"}\n", f);
    fputs("{\"prompt\": \"Q: colour? \", \"completion\": \"A: blue blue\"}\n", f);
  }
  if (f) fclose(f);
  snprintf(p, sizeof p, "%s/valid.jsonl", d);
  f = fopen(p, "w");
  if (f) {
    fputs("{\"text\": \"the cat sat on the mat.\"}\n", f);
    fclose(f);
  }
  return d;
}

static void rm_tmp(char *d) {
  if (!d) return;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", d);
  free(d);
}

/* "a.b.linear.weight" -> "a.b.weight" (in place). */
static void strip_linear(char *s) {
  char *p = strstr(s, ".linear.");
  if (p) memmove(p, p + 7, strlen(p + 7) + 1);
}

typedef struct {
  double first, last;
  int n;
} losses;

static int on_event(void *ctx, const mx_lora_event *ev) {
  losses *l = ctx;
  if (ev->kind != MX_LORA_EV_TRAIN) return 0;
  if (!l->n++) l->first = ev->loss;
  l->last = ev->loss;
  return 0;
}

TEST(train_changes_only_adapters) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  mx_map *before = NULL, *after = NULL, *trainable = NULL;
  ASSERT_OK(mx_nn_parameters(mx_lm_module(m), &before));
  mx_lora_options o = MX_LORA_DEFAULTS;
  char ad[128];
  snprintf(ad, sizeof ad, "%s/ad", d);
  o.data_dir = d;
  o.adapter_path = ad;
  o.iters = 30;
  o.steps_per_report = 5;
  o.learning_rate = 1e-3;
  o.lora.num_layers = 2;
  losses l = {0, 0, 0};
  ASSERT_OK(mx_lora_train(m, &o, on_event, &l));
  ASSERT(l.n == 6);
  ASSERT_MSG(l.last < l.first / 2, "loss %g -> %g", l.first, l.last);
  ASSERT_OK(mx_nn_parameters(mx_lm_module(m), &after));
  ASSERT_OK(mx_nn_trainable_parameters(mx_lm_module(m), &trainable));
  ASSERT_EQ_INT(mx_map_size(trainable), 8);
  int nbase = 0;
  for (int i = 0; i < mx_map_size(after); i++) {
    char name[256];
    snprintf(name, sizeof name, "%s", mx_map_key(after, i));
    if (strstr(name, ".lora_")) {
      ASSERT(mx_map_has(trainable, name));
      continue;
    }
    strip_linear(name);
    mx_array *old = mx_map_get(before, name);
    ASSERT_MSG(old != NULL, "%s not in the base model", name);
    bool same = false;
    ASSERT_OK(mx_allclose(old, mx_map_value(after, i), 0, 0, &same));
    ASSERT_MSG(same, "%s changed", name);
    nbase++;
  }
  ASSERT_EQ_INT(nbase, mx_map_size(before));
  /* lora_b started at zero and moved. */
  mx_array *b = mx_map_get(trainable, "model.layers.3.self_attn.q_proj.lora_b");
  ASSERT_NOT_NULL(b);
  mx_array *ab = mx_abs(b), *mx = mx_max(ab, NULL, 0, false);
  double v = 0;
  ASSERT_OK(mx_array_item(mx, &v));
  ASSERT(v > 0);
  mx_array_free(ab);
  mx_array_free(mx);
  mx_map_free(before);
  mx_map_free(after);
  mx_map_free(trainable);

  /* The adapters file: mlx-lm names and shapes. */
  char p[256];
  snprintf(p, sizeof p, "%s/adapters.safetensors", ad);
  mx_map *w = NULL;
  ASSERT_OK(mx_load(p, &w, NULL));
  ASSERT_EQ_INT(mx_map_size(w), 8);
  for (int layer = 2; layer < 4; layer++)
    for (int k = 0; k < 2; k++) {
      char n[128];
      snprintf(n, sizeof n, "model.layers.%d.self_attn.%s.lora_a", layer, k ? "v_proj" : "q_proj");
      mx_array *a = mx_map_get(w, n);
      ASSERT_MSG(a && mx_array_ndim(a) == 2 && mx_array_shape(a)[0] == 192 &&
                     mx_array_shape(a)[1] == 8, "%s", n);
      n[strlen(n) - 1] = 'b';
      a = mx_map_get(w, n);
      ASSERT_MSG(a && mx_array_ndim(a) == 2 && mx_array_shape(a)[0] == 8 &&
                     mx_array_shape(a)[1] == 192, "%s", n);
    }
  mx_map_free(w);

  /* Fused model == model with adapters (logits). */
  int32_t ids[] = {256, 116, 104, 101, 32, 99};
  int64_t shape[2] = {1, 6};
  mx_array *x = mx_array_from_data(ids, shape, 2, MX_INT32);
  mx_array *y1 = mx_lm_forward(m, x, NULL);
  mx_lm_model *f = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(f);
  ASSERT_OK(mx_lora_load_adapters(mx_lm_module(f), ad));
  mx_array *y2 = mx_lm_forward(f, x, NULL);
  ASSERT_OK(mx_lora_fuse_all(mx_lm_module(f)));
  mx_array *y3 = mx_lm_forward(f, x, NULL);
  bool c12 = false, c13 = false;
  ASSERT_OK(mx_allclose(y1, y2, 1e-5, 1e-5, &c12));
  ASSERT_OK(mx_allclose(y1, y3, 1e-4, 1e-4, &c13));
  ASSERT(c12);
  ASSERT(c13);
  mx_map *fp = NULL;
  ASSERT_OK(mx_nn_trainable_parameters(mx_lm_module(f), &fp));
  for (int i = 0; i < mx_map_size(fp); i++) ASSERT(!strstr(mx_map_key(fp, i), "lora_"));
  mx_map_free(fp);
  mx_array_free(x);
  mx_array_free(y1);
  mx_array_free(y2);
  mx_array_free(y3);
  mx_lm_free(f);
  mx_lm_free(m);
  rm_tmp(d);
}

TEST(prompt_mask) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  char p[128];
  snprintf(p, sizeof p, "%s/train.jsonl", d);
  mx_lora_dataset *ds = mx_lora_dataset_load(p, mx_lm_tokenizer(m), 2048);
  ASSERT_NOT_NULL(ds);
  ASSERT_EQ_INT((int)mx_lora_dataset_size(ds), 16);
  int64_t idx[2] = {0, 1}; /* a text and a prompt/completion line */
  double sums[2];
  for (int mp = 0; mp < 2; mp++) {
    mx_array *x, *y, *mask;
    ASSERT_OK(mx_lora_dataset_batch(ds, idx, 2, mp == 1, &x, &y, &mask));
    mx_array *s = mx_sum(mask, NULL, 0, false);
    ASSERT_OK(mx_array_item(s, &sums[mp]));
    mx_array_free(s);
    mx_array_free(x);
    mx_array_free(y);
    mx_array_free(mask);
  }
  /* The byte tokenizer adds no BOS. text: 47 bytes + EOS -> 47 targets;
   * prompt/completion: 11 + 12 bytes + EOS -> 23 targets, 13 of them (the
   * completion and EOS) after the 11 prompt tokens. */
  ASSERT_NEAR(sums[0], 47 + 23, 0);
  ASSERT_NEAR(sums[1], 47 + 13, 0);
  mx_lora_dataset_free(ds);
  mx_lm_free(m);
  rm_tmp(d);
}

TEST(bad_lines_name_file_and_line) {
  char *d = make_data();
  ASSERT_NOT_NULL(d);
  mx_lm_model *m = mx_lm_load(MODEL, NULL);
  ASSERT_NOT_NULL(m);
  char p[128], want[160];
  snprintf(p, sizeof p, "%s/bad.jsonl", d);
  FILE *f = fopen(p, "w");
  ASSERT_NOT_NULL(f);
  fputs("{\"text\": \"ok\"}\n{\"messages\": [{\"role\": 1}]}\n", f);
  fclose(f);
  ASSERT(mx_lora_dataset_load(p, mx_lm_tokenizer(m), 2048) == NULL);
  snprintf(want, sizeof want, "%s:2:", p);
  ASSERT_MSG(strstr(mx_last_error(), want), "%s", mx_last_error());
  f = fopen(p, "w");
  ASSERT_NOT_NULL(f);
  fputs("{\"text\": \"ok\"}\n\n[1, 2\n", f);
  fclose(f);
  ASSERT(mx_lora_dataset_load(p, mx_lm_tokenizer(m), 2048) == NULL);
  snprintf(want, sizeof want, "%s:3: invalid JSON", p);
  ASSERT_MSG(strstr(mx_last_error(), want), "%s", mx_last_error());
  mx_lm_free(m);
  rm_tmp(d);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
