/* cmd_lora.c — `mxc lora`: LoRA / DoRA / full fine-tuning and testing
 * (mlx_lm.lora, same flags and defaults).
 *
 *   mxc lora --model M --train --data DIR [-c config.yaml] [options]
 *   mxc lora --model M --test --data DIR --adapter-path A
 *
 * DIR holds train.jsonl, valid.jsonl, test.jsonl with {"text"}, {"prompt",
 * "completion"} or {"messages": [...]} lines. Writes
 * ADAPTER_PATH/adapters.safetensors, adapter_config.json and
 * NNNNNNN_adapters.safetensors checkpoints. Command-line flags override the
 * YAML config, which overrides the defaults. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "commands.h"
#include "mxc/lora.h"

int mxc__resolve_model(const char *model, char *dir, size_t n);

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc lora --model M (--train | --test) --data DIR [options]\n"
          "  -c, --config FILE         mlx-lm YAML config (flags given here win)\n"
          "  --fine-tune-type lora|dora|full (lora)   --optimizer adam|adamw|sgd (adam)\n"
          "  --num-layers 16 (-1: all) --batch-size 4  --iters 1000  --learning-rate 1e-5\n"
          "  --val-batches 25 (-1: all) --test-batches 500  --steps-per-report 10\n"
          "  --steps-per-eval 200  --save-every 100  --max-seq-length 2048\n"
          "  --grad-accumulation-steps 1  --grad-checkpoint  --mask-prompt  --seed 0\n"
          "  --adapter-path adapters  --resume-adapter-file FILE\n"
          "  --memory-limit BYTES (e.g. 8GB, 512MB; fit by smaller micro-batches or stop)\n"
          "DIR holds train.jsonl, valid.jsonl [and test.jsonl]: {\"text\"},\n"
          "{\"prompt\",\"completion\"} or {\"messages\": [...]} per line. LoRA: rank 8,\n"
          "scale 20, dropout 0 on self_attn.q_proj and v_proj (YAML lora_parameters).\n");
  return rc;
}

static int parse_i64(const char *flag, const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) {
    fprintf(stderr, "mxc lora: %s expects an integer, got '%s'\n", flag, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* "8GB", "512MB", "1.5G", "1000000" -> bytes (decimal units, as mlx-lm's GB). */
static int parse_bytes(const char *flag, const char *s, size_t *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  double mul = 1;
  if (!strcasecmp(end, "k") || !strcasecmp(end, "kb")) mul = 1e3;
  else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb")) mul = 1e6;
  else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb")) mul = 1e9;
  else if (*end && strcasecmp(end, "b")) mul = -1;
  if (errno || end == s || mul < 0 || !isfinite(v) || v <= 0 || v * mul > 1e18) {
    fprintf(stderr, "mxc lora: %s expects a size in bytes (e.g. 8GB, 512MB), got '%s'\n", flag, s);
    return -1;
  }
  *out = (size_t)(v * mul);
  return 0;
}

static int on_event(void *ctx, const mx_lora_event *ev) {
  (void)ctx;
  switch (ev->kind) {
  case MX_LORA_EV_VAL:
    fprintf(stderr, "Iter %lld: Val loss %.3f\n", (long long)ev->step, ev->loss);
    break;
  case MX_LORA_EV_TRAIN:
    fprintf(stderr,
            "Iter %lld: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, "
            "Trained Tokens %lld, Peak mem %.3f GB\n",
            (long long)ev->step, ev->loss, ev->learning_rate, ev->it_per_sec, ev->tokens_per_sec,
            (long long)ev->trained_tokens, (double)ev->peak_memory / 1e9);
    break;
  case MX_LORA_EV_SAVE:
    fprintf(stderr, "Iter %lld: Saved adapter weights to %s.\n", (long long)ev->step, ev->text);
    break;
  case MX_LORA_EV_INFO:
    fprintf(stderr, "%s\n", ev->text);
    break;
  }
  fflush(stderr);
  return 0;
}

static bool is_flag(const char *a, const char *name) { return !strcmp(a, name); }

/* Applies one flag (with its value v, or NULL for a switch) to o. 0, or 2
 * after a message. */
static int apply_flag(const char *a, const char *v, mx_lora_options *o, const char **model,
                      bool *train, bool *test) {
  int64_t t = 0;
  int rc = 0;
  if (is_flag(a, "--model")) *model = v;
  else if (is_flag(a, "--data")) o->data_dir = v;
  else if (is_flag(a, "--adapter-path")) o->adapter_path = v;
  else if (is_flag(a, "--resume-adapter-file")) o->resume_adapter_file = v;
  else if (is_flag(a, "--train")) *train = true;
  else if (is_flag(a, "--test")) *test = true;
  else if (is_flag(a, "--mask-prompt")) o->mask_prompt = true;
  else if (is_flag(a, "--grad-checkpoint")) o->grad_checkpoint = true;
  else if (is_flag(a, "--fine-tune-type")) {
    if (!strcmp(v, "lora")) o->lora.type = MX_LORA_FT_LORA;
    else if (!strcmp(v, "dora")) o->lora.type = MX_LORA_FT_DORA;
    else if (!strcmp(v, "full")) o->lora.type = MX_LORA_FT_FULL;
    else {
      fprintf(stderr, "mxc lora: --fine-tune-type must be lora, dora or full, got '%s'\n", v);
      rc = -1;
    }
  } else if (is_flag(a, "--optimizer")) {
    if (!strcmp(v, "adam")) o->optimizer = MX_LORA_OPT_ADAM;
    else if (!strcmp(v, "adamw")) o->optimizer = MX_LORA_OPT_ADAMW;
    else if (!strcmp(v, "sgd")) o->optimizer = MX_LORA_OPT_SGD;
    else {
      fprintf(stderr, "mxc lora: --optimizer must be adam, adamw or sgd, got '%s'\n", v);
      rc = -1;
    }
  } else if (is_flag(a, "--num-layers")) {
    rc = parse_i64(a, v, &t);
    if (!rc && (t < -1 || t == 0 || t > 100000)) {
      fprintf(stderr, "mxc lora: --num-layers must be -1 or >= 1\n");
      rc = -1;
    }
    o->lora.num_layers = (int)t;
  } else if (is_flag(a, "--batch-size")) rc = parse_i64(a, v, &o->batch_size);
  else if (is_flag(a, "--iters")) rc = parse_i64(a, v, &o->iters);
  else if (is_flag(a, "--val-batches")) rc = parse_i64(a, v, &o->val_batches);
  else if (is_flag(a, "--test-batches")) rc = parse_i64(a, v, &o->test_batches);
  else if (is_flag(a, "--max-seq-length")) rc = parse_i64(a, v, &o->max_seq_length);
  else if (is_flag(a, "--steps-per-report")) rc = parse_i64(a, v, &o->steps_per_report);
  else if (is_flag(a, "--steps-per-eval")) rc = parse_i64(a, v, &o->steps_per_eval);
  else if (is_flag(a, "--save-every")) rc = parse_i64(a, v, &o->save_every);
  else if (is_flag(a, "--grad-accumulation-steps")) rc = parse_i64(a, v, &o->grad_accumulation_steps);
  else if (is_flag(a, "--memory-limit")) rc = parse_bytes(a, v, &o->memory_limit);
  else if (is_flag(a, "--seed")) {
    rc = parse_i64(a, v, &t);
    if (!rc && t < 0) {
      fprintf(stderr, "mxc lora: --seed must be >= 0\n");
      rc = -1;
    }
    o->seed = (uint64_t)t;
  } else if (is_flag(a, "--learning-rate")) {
    char *end;
    errno = 0;
    o->learning_rate = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(o->learning_rate) || o->learning_rate <= 0) {
      fprintf(stderr, "mxc lora: --learning-rate expects a positive number, got '%s'\n", v);
      rc = -1;
    }
  } else {
    fprintf(stderr, "mxc lora: unknown option '%s'\n", a);
    return usage(stderr, 2);
  }
  return rc ? 2 : 0;
}

static bool is_switch(const char *a) {
  return is_flag(a, "--train") || is_flag(a, "--test") || is_flag(a, "--mask-prompt") ||
         is_flag(a, "--grad-checkpoint");
}

static const char *err_prefix(const char *e) { return strncmp(e, "lora", 4) ? "mxc lora: " : "mxc "; }

int mxc_cmd_lora(int argc, char **argv) {
  mx_lora_options o = MX_LORA_DEFAULTS;
  const char *model = NULL, *config = NULL;
  bool train = false, test = false;
  /* Pass 1: --help and the config file. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (is_flag(a, "--help") || is_flag(a, "-h")) return usage(stdout, 0);
    if (strncmp(a, "-", 1)) {
      fprintf(stderr, "mxc lora: unexpected argument '%s'\n", a);
      return usage(stderr, 2);
    }
    if (is_switch(a)) continue;
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc lora: %s needs a value\n", a);
      return 2;
    }
    if (is_flag(a, "-c") || is_flag(a, "--config")) config = argv[i + 1];
    i++;
  }
  mx_lora_yaml *y = NULL;
  if (config) {
    fprintf(stderr, "Loading configuration file %s\n", config);
    if (!(y = mx_lora_yaml_load(config, &o, &train, &test))) {
      fprintf(stderr, "%s%s\n", err_prefix(mx_last_error()), mx_last_error());
      return 2;
    }
    model = o.model;
  }
  /* Pass 2: the flags, over the config. */
  int rc = 0;
  for (int i = 1; i < argc && !rc; i++) {
    const char *a = argv[i];
    if (is_flag(a, "-c") || is_flag(a, "--config")) {
      i++;
      continue;
    }
    const char *v = is_switch(a) ? NULL : argv[++i];
    rc = apply_flag(a, v, &o, &model, &train, &test);
  }
  o.model = model;
  if (!rc && !train && !test) {
    fprintf(stderr, "mxc lora: give at least one of --train or --test\n");
    rc = usage(stderr, 2);
  }
  if (!rc && (!model || !o.data_dir)) {
    fprintf(stderr, "mxc lora: --model and --data are required\n");
    rc = usage(stderr, 2);
  }
  if (!rc && train && mx_lora_check_options(&o)) {
    fprintf(stderr, "%s%s\n", err_prefix(mx_last_error()), mx_last_error());
    rc = 2;
  }
  char dir[4096];
  mx_lm_model *m = NULL;
  if (!rc && mxc__resolve_model(model, dir, sizeof dir)) rc = 1;
  if (!rc && !(m = mx_lm_load(dir, NULL))) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    rc = 1;
  }
  if (!rc && train) {
    fprintf(stderr, "mxc lora: training %s on %s (%lld iters, batch %lld, lr %g)\n", dir, o.data_dir,
            (long long)o.iters, (long long)o.batch_size, o.learning_rate);
    if (mx_lora_train(m, &o, on_event, NULL)) {
      fprintf(stderr, "%s%s\n", err_prefix(mx_last_error()), mx_last_error());
      rc = 1;
    } else {
      fprintf(stderr, "Saved final weights to %s/adapters.safetensors.\n", o.adapter_path);
    }
  } else if (!rc && test && mx_lora_load_for_test(m, o.adapter_path)) {
    fprintf(stderr, "%s%s\n", err_prefix(mx_last_error()), mx_last_error());
    rc = 1;
  }
  if (!rc && test) {
    char p[4200];
    snprintf(p, sizeof p, "%s/test.jsonl", o.data_dir);
    double loss = 0;
    if (mx_lora_evaluate(m, p, o.batch_size, o.test_batches, o.max_seq_length, o.mask_prompt, &loss)) {
      fprintf(stderr, "%s%s\n", err_prefix(mx_last_error()), mx_last_error());
      rc = 1;
    } else {
      printf("Test loss %.3f, Test ppl %.3f.\n", loss, exp(loss));
    }
  }
  mx_lm_free(m);
  mx_lora_yaml_free(y);
  return rc;
}
