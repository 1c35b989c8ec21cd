/* cmd_train.c — `mxc train`: pretrain a small Llama model on a text file.
 *
 *   mxc train --data FILE.txt --out DIR [--dim 256 --layers 4 --heads 4
 *             --kv-heads 4 --hidden 688 --seq 128 --batch 16 --iters N
 *             --lr 3e-3 --warmup 100 --min-lr 3e-4 --grad-clip 1.0
 *             --grad-accum 1 --val-frac 0.05 --eval-every 100
 *             --save-every 200 --seed 0 --resume]
 *             [--tokenizer DIR | --vocab-size N] [--pad-vocab 8] [--memory-limit 2GB]
 *             [--grad-checkpoint]
 *
 * Writes DIR in Hugging Face layout (config.json, model.safetensors,
 * tokenizer.json, tokenizer_config.json) plus metrics.jsonl and
 * checkpoint/. A progress line on a terminal, plain log lines otherwise. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "mxc/train.h"

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc train --data FILE.txt --out DIR [options]\n"
          "  model:  --dim 256 --layers 4 --heads 4 --kv-heads 4 --hidden 688\n"
          "  data:   --seq 128 --batch 16 --val-frac 0.05\n"
          "  optim:  --iters 1000 --lr 3e-3 --warmup 100 --min-lr 3e-4 --weight-decay 0.01\n"
          "          --grad-clip 1.0 (0: off) --grad-accum 1\n"
          "  run:    --eval-every 100 --val-batches 8 --save-every 200 --log-every 10\n"
          "          --seed 0 --resume (continue from DIR/checkpoint)\n"
          "  tokens: --tokenizer DIR (its tokenizer.json) or --vocab-size N (train a byte-level\n"
          "          BPE tokenizer of N tokens on the corpus first, as mxc tokenizer-train);\n"
          "          default: the corpus as bytes (vocabulary 258); --pad-vocab 8: the model's\n"
          "          vocabulary rounded up to a multiple of 8 (aligned GPU products; 1: exact)\n"
          "  memory: --memory-limit BYTES (e.g. 2GB, 512MiB): fit a step into it with smaller\n"
          "          micro-batches + gradient accumulation, else gradient checkpointing, or stop\n"
          "          before step 1 naming the bytes needed; --grad-checkpoint forces checkpointing\n"
          "  dtype:  --dtype float32 | bfloat16 | float16: the compute dtype; with bf16/f16 the\n"
          "          weights and AdamW state stay float32 (mixed precision); --device gpu to run\n"
          "          on the GPU\n");
  return rc;
}

static int parse_i64(const char *flag, const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) {
    fprintf(stderr, "mxc train: %s expects an integer, got '%s'\n", flag, s);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_f64(const char *flag, const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v)) {
    fprintf(stderr, "mxc train: %s expects a number, got '%s'\n", flag, s);
    return -1;
  }
  *out = v;
  return 0;
}

typedef struct {
  bool tty;
  int64_t log_every;
} progress;

static void fmt_time(double s, char *buf, size_t n) {
  if (!(s >= 0) || s > 1e7) s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else
    snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static int on_event(void *ctx, const mx_train_event *ev) {
  progress *p = ctx;
  char eta[32];
  fmt_time(ev->eta_sec, eta, sizeof eta);
  double mb = (double)ev->peak_memory / 1e6;
  if (ev->kind == MX_TRAIN_EV_STEP) {
    if (p->tty) {
      fprintf(stderr, "\r\033[Kstep %lld/%lld  loss %.4f  %.0f tok/s  lr %.2e  peak %.0f MB  ETA %s",
              (long long)ev->step, (long long)ev->iters, ev->loss, ev->tokens_per_sec, ev->lr, mb, eta);
      if (ev->step == ev->iters) fputc('\n', stderr);
    } else if (ev->step % p->log_every == 0 || ev->step == ev->iters || ev->step == 1) {
      fprintf(stderr, "step %lld/%lld loss %.4f tok/s %.0f lr %.3e grad_norm %.3f peak_mem %.0fMB eta %s\n",
              (long long)ev->step, (long long)ev->iters, ev->loss, ev->tokens_per_sec, ev->lr,
              ev->grad_norm, mb, eta);
    }
  } else if (ev->kind == MX_TRAIN_EV_VAL) {
    fprintf(stderr, "%sstep %lld: val_loss %.4f\n", p->tty ? "\r\033[K" : "", (long long)ev->step,
            ev->val_loss);
  } else if (ev->kind == MX_TRAIN_EV_PLAN && ev->plan) {
    const mx_train_memory_plan *pl = ev->plan;
    fprintf(stderr, "mxc train: memory plan: %s, micro-batch %lld x %lld accumulated%s, estimated peak "
                    "%.1f MB (full batch: %.1f MB)\n",
            pl->kind == MX_TRAIN_PLAN_FULL ? "full batch"
            : pl->kind == MX_TRAIN_PLAN_ACCUMULATE ? "gradient accumulation"
                                                   : "gradient checkpointing",
            (long long)pl->micro_batch, (long long)pl->grad_accum,
            pl->checkpoint ? ", per-layer checkpointing" : "", (double)pl->peak_bytes / 1e6,
            (double)pl->full_bytes / 1e6);
  } else if (ev->kind == MX_TRAIN_EV_SAVE && !p->tty) {
    fprintf(stderr, "step %lld: checkpoint saved\n", (long long)ev->step);
  }
  fflush(stderr);
  return 0;
}

int mxc_cmd_train(int argc, char **argv) {
  mx_train_options o = MX_TRAIN_DEFAULTS;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "--resume")) {
      o.resume = true;
      continue;
    }
    if (!strcmp(a, "--grad-checkpoint")) {
      o.grad_checkpoint = true;
      continue;
    }
    if (strncmp(a, "--", 2)) {
      fprintf(stderr, "mxc train: unexpected argument '%s'\n", a);
      return usage(stderr, 2);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc train: %s needs a value\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int64_t seed = 0;
    int rc = 0;
    if (!strcmp(a, "--data")) o.data_path = v;
    else if (!strcmp(a, "--out")) o.out_dir = v;
    else if (!strcmp(a, "--tokenizer")) o.tokenizer_dir = v;
    else if (!strcmp(a, "--memory-limit")) {
      if (mx_parse_bytes(v, &o.memory_limit) || o.memory_limit == 0) {
        fprintf(stderr, "mxc train: --memory-limit: '%s' is not a size > 0 (e.g. 2GB, 512MiB)\n", v);
        rc = -1;
      }
    }
#define I(flag, field) else if (!strcmp(a, flag)) rc = parse_i64(a, v, &o.field);
#define F(flag, field) else if (!strcmp(a, flag)) rc = parse_f64(a, v, &o.field);
    I("--dim", dim) I("--layers", layers) I("--heads", heads) I("--kv-heads", kv_heads)
    I("--hidden", hidden) I("--seq", seq) I("--batch", batch) I("--iters", iters)
    I("--warmup", warmup) I("--grad-accum", grad_accum) I("--eval-every", eval_every)
    I("--save-every", save_every) I("--val-batches", val_batches) I("--log-every", log_every)
    I("--vocab-size", vocab_size) I("--pad-vocab", vocab_multiple)
    F("--lr", lr) F("--min-lr", min_lr) F("--weight-decay", weight_decay)
    F("--grad-clip", grad_clip) F("--val-frac", val_frac)
#undef I
#undef F
    else if (!strcmp(a, "--dtype")) {
      if (!strcmp(v, "float32") || !strcmp(v, "f32")) o.compute_dtype = MX_FLOAT32;
      else if (!strcmp(v, "bfloat16") || !strcmp(v, "bf16")) o.compute_dtype = MX_BFLOAT16;
      else if (!strcmp(v, "float16") || !strcmp(v, "f16")) o.compute_dtype = MX_FLOAT16;
      else {
        fprintf(stderr, "mxc train: --dtype must be float32, bfloat16 or float16, got '%s'\n", v);
        rc = -1;
      }
    } else if (!strcmp(a, "--seed")) {
      rc = parse_i64(a, v, &seed);
      if (!rc && seed < 0) {
        fprintf(stderr, "mxc train: --seed must be >= 0\n");
        rc = -1;
      }
      o.seed = (uint64_t)seed;
    } else {
      fprintf(stderr, "mxc train: unknown option '%s'\n", a);
      return usage(stderr, 2);
    }
    if (rc) return 2;
  }
  if (mx_train_check_options(&o)) {
    fprintf(stderr, "mxc %s\n", mx_last_error());
    return 2;
  }
  progress p = {isatty(2) != 0, o.log_every};
  fprintf(stderr, "mxc train: %s -> %s (dim %lld, layers %lld, heads %lld/%lld, hidden %lld, "
                  "seq %lld, batch %lld x %lld, %lld iters%s)\n",
          o.data_path, o.out_dir, (long long)o.dim, (long long)o.layers, (long long)o.heads,
          (long long)o.kv_heads, (long long)o.hidden, (long long)o.seq, (long long)o.batch,
          (long long)o.grad_accum, (long long)o.iters, o.resume ? ", resuming" : "");
  if (mx_train_run(&o, on_event, &p)) {
    if (p.tty) fputc('\n', stderr);
    fprintf(stderr, "mxc %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc train: done; the model is in %s (mxc generate --model %s --prompt ...)\n",
          o.out_dir, o.out_dir);
  return 0;
}
