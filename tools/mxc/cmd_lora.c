/* cmd_lora.c — `mxc lora`: LoRA fine-tuning (mlx_lm.lora).
 *
 *   mxc lora --model M --train --data DIR [--num-layers 16 (-1 all)]
 *            [--batch-size 4] [--iters 100] [--learning-rate 1e-5]
 *            [--max-seq-length 2048] [--steps-per-report 10]
 *            [--adapter-path adapters] [--seed 0] [--mask-prompt]
 *
 * DIR holds train.jsonl (and valid.jsonl) with {"text"}, {"prompt",
 * "completion"} or {"messages": [...]} lines. Writes
 * ADAPTER_PATH/adapters.safetensors and adapter_config.json. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/lora.h"

int mxc__resolve_model(const char *model, char *dir, size_t n);

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc lora --model M --train --data DIR [options]\n"
          "  --num-layers 16 (-1: all)  --batch-size 4  --iters 100  --learning-rate 1e-5\n"
          "  --max-seq-length 2048  --steps-per-report 10  --adapter-path adapters\n"
          "  --seed 0  --mask-prompt\n"
          "DIR holds train.jsonl [and valid.jsonl]: {\"text\"}, {\"prompt\",\"completion\"} or\n"
          "{\"messages\": [...]} per line. LoRA rank 8, scale 20 on q_proj and v_proj.\n");
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

static int on_event(void *ctx, const mx_lora_event *ev) {
  (void)ctx;
  if (ev->val)
    fprintf(stderr, "Iter %lld: Val loss %.3f\n", (long long)ev->step, ev->loss);
  else
    fprintf(stderr,
            "Iter %lld: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, "
            "Trained Tokens %lld, Peak mem %.3f GB\n",
            (long long)ev->step, ev->loss, ev->learning_rate, ev->it_per_sec, ev->tokens_per_sec,
            (long long)ev->trained_tokens, (double)ev->peak_memory / 1e9);
  fflush(stderr);
  return 0;
}

int mxc_cmd_lora(int argc, char **argv) {
  mx_lora_options o = MX_LORA_DEFAULTS;
  const char *model = NULL;
  bool train = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "--train")) {
      train = true;
      continue;
    }
    if (!strcmp(a, "--mask-prompt")) {
      o.mask_prompt = true;
      continue;
    }
    if (strncmp(a, "--", 2)) {
      fprintf(stderr, "mxc lora: unexpected argument '%s'\n", a);
      return usage(stderr, 2);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc lora: %s needs a value\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int64_t t = 0;
    int rc = 0;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--data")) o.data_dir = v;
    else if (!strcmp(a, "--adapter-path")) o.adapter_path = v;
    else if (!strcmp(a, "--num-layers")) {
      rc = parse_i64(a, v, &t);
      if (!rc && (t < -1 || t == 0 || t > 100000)) {
        fprintf(stderr, "mxc lora: --num-layers must be -1 or >= 1\n");
        rc = -1;
      }
      o.lora.num_layers = (int)t;
    } else if (!strcmp(a, "--batch-size")) rc = parse_i64(a, v, &o.batch_size);
    else if (!strcmp(a, "--iters")) rc = parse_i64(a, v, &o.iters);
    else if (!strcmp(a, "--max-seq-length")) rc = parse_i64(a, v, &o.max_seq_length);
    else if (!strcmp(a, "--steps-per-report")) rc = parse_i64(a, v, &o.steps_per_report);
    else if (!strcmp(a, "--seed")) {
      rc = parse_i64(a, v, &t);
      if (!rc && t < 0) {
        fprintf(stderr, "mxc lora: --seed must be >= 0\n");
        rc = -1;
      }
      o.seed = (uint64_t)t;
    } else if (!strcmp(a, "--learning-rate")) {
      char *end;
      errno = 0;
      o.learning_rate = strtod(v, &end);
      if (errno || end == v || *end || !isfinite(o.learning_rate) || o.learning_rate <= 0) {
        fprintf(stderr, "mxc lora: --learning-rate expects a positive number, got '%s'\n", v);
        rc = -1;
      }
    } else {
      fprintf(stderr, "mxc lora: unknown option '%s'\n", a);
      return usage(stderr, 2);
    }
    if (rc) return 2;
  }
  if (!train) {
    fprintf(stderr, "mxc lora: only --train is supported so far\n");
    return usage(stderr, 2);
  }
  if (!model || !o.data_dir) {
    fprintf(stderr, "mxc lora: --model and --data are required\n");
    return usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  mx_lm_model *m = mx_lm_load(dir, NULL);
  if (!m) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc lora: training %s on %s (%lld iters, batch %lld, lr %g)\n", dir, o.data_dir,
          (long long)o.iters, (long long)o.batch_size, o.learning_rate);
  int rc = 0;
  if (mx_lora_train(m, &o, on_event, NULL)) {
    const char *e = mx_last_error();
    fprintf(stderr, strncmp(e, "lora", 4) ? "mxc lora: %s\n" : "mxc %s\n", e);
    rc = 1;
  } else {
    fprintf(stderr, "mxc lora: saved adapters to %s/adapters.safetensors\n", o.adapter_path);
  }
  mx_lm_free(m);
  return rc;
}
