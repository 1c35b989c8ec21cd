/* data.c — mlx-lm's jsonl fine-tuning datasets and the LoRA training loop. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../core/internal.h"
#include "mxc/chat_template.h"
#include "mxc/lora.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "mxc/optim.h"
#include "mxc/train.h"

typedef struct {
  int32_t *ids;
  int64_t len, prompt_len;
} example;

struct mx_lora_dataset {
  example *ex;
  int64_t n, cap;
};

void mx_lora_dataset_free(mx_lora_dataset *d) {
  if (!d) return;
  for (int64_t i = 0; i < d->n; i++) free(d->ex[i].ids);
  free(d->ex);
  free(d);
}

int64_t mx_lora_dataset_size(const mx_lora_dataset *d) { return d ? d->n : 0; }

/* Tokens of text (BOS unless the text starts with it). */
static int encode(mx_tokenizer *tok, const char *text, int32_t **ids, int64_t *n) {
  const char *bos = mx_tokenizer_special_token(tok, "bos_token");
  bool add = !bos || strncmp(text, bos, strlen(bos)) != 0;
  size_t nn = 0;
  int st = mx_tokenizer_encode(tok, text, strlen(text), add, ids, &nn);
  *n = (int64_t)nn;
  return st;
}

/* The chat-template text of messages (a JSON array). */
static int render(mx_tokenizer *tok, cJSON *msgs, bool gen_prompt, char **text) {
  char *conv = cJSON_PrintUnformatted(msgs);
  if (!conv) return mx__set_error(MX_ERR_OOM, "lora data: out of memory");
  size_t len;
  int st = mx_chat_template_apply(tok, conv, gen_prompt, text, &len);
  free(conv);
  return st;
}

static cJSON *msg(const char *role, const char *content) {
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", role);
  cJSON_AddStringToObject(m, "content", content);
  return m;
}

/* One parsed line -> example (ids malloc'd). Error: message without the
 * location (the caller adds file:line). */
static int line_example(mx_tokenizer *tok, cJSON *j, example *e, char *err, size_t nerr) {
  bool tmpl = mx_tokenizer_chat_template(tok) != NULL;
  cJSON *text = cJSON_GetObjectItem(j, "text"), *prompt = cJSON_GetObjectItem(j, "prompt");
  cJSON *comp = cJSON_GetObjectItem(j, "completion"), *msgs = cJSON_GetObjectItem(j, "messages");
  char *full = NULL, *pre = NULL;
  int st = 0;
  if (!cJSON_IsObject(j)) {
    snprintf(err, nerr, "expected a JSON object");
    return -1;
  }
  if (cJSON_IsString(text)) {
    full = strdup(text->valuestring);
  } else if (cJSON_IsString(prompt) && cJSON_IsString(comp)) {
    if (tmpl) {
      cJSON *a = cJSON_CreateArray();
      cJSON_AddItemToArray(a, msg("user", prompt->valuestring));
      st = render(tok, a, true, &pre);
      cJSON_AddItemToArray(a, msg("assistant", comp->valuestring));
      if (!st) st = render(tok, a, false, &full);
      cJSON_Delete(a);
    } else {
      pre = strdup(prompt->valuestring);
      size_t a = strlen(prompt->valuestring), b = strlen(comp->valuestring);
      full = malloc(a + b + 1);
      if (full) {
        memcpy(full, prompt->valuestring, a);
        memcpy(full + a, comp->valuestring, b + 1);
      }
    }
  } else if (cJSON_IsArray(msgs) && cJSON_GetArraySize(msgs) > 0) {
    cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
      if (!cJSON_IsString(cJSON_GetObjectItem(m, "role")) ||
          !cJSON_IsString(cJSON_GetObjectItem(m, "content"))) {
        snprintf(err, nerr, "each message needs string \"role\" and \"content\"");
        return -1;
      }
    }
    if (tmpl) {
      st = render(tok, msgs, false, &full);
      cJSON *last = cJSON_DetachItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
      if (!st && cJSON_GetArraySize(msgs) > 0) st = render(tok, msgs, true, &pre);
      cJSON_AddItemToArray(msgs, last);
    } else {
      /* No template: "role: content\n" lines. */
      size_t cap = 1, n = 0;
      cJSON_ArrayForEach(m, msgs) cap += strlen(cJSON_GetObjectItem(m, "role")->valuestring) +
                                         strlen(cJSON_GetObjectItem(m, "content")->valuestring) + 3;
      full = malloc(cap);
      if (full) {
        full[0] = 0;
        cJSON_ArrayForEach(m, msgs) {
          if (!m->next && !pre) pre = strndup(full, n);
          n += (size_t)snprintf(full + n, cap - n, "%s: %s\n",
                                cJSON_GetObjectItem(m, "role")->valuestring,
                                cJSON_GetObjectItem(m, "content")->valuestring);
        }
      }
    }
  } else {
    snprintf(err, nerr, "expected {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\": [...]}");
    return -1;
  }
  if (st) {
    snprintf(err, nerr, "%s", mx_last_error());
    free(full);
    free(pre);
    return -1;
  }
  if (!full) {
    free(pre);
    snprintf(err, nerr, "out of memory");
    return -1;
  }
  e->prompt_len = 0;
  st = encode(tok, full, &e->ids, &e->len);
  if (!st && pre) {
    int32_t *p = NULL;
    int64_t pn = 0;
    st = encode(tok, pre, &p, &pn);
    free(p);
    e->prompt_len = pn;
  }
  free(full);
  free(pre);
  if (st) {
    snprintf(err, nerr, "%s", mx_last_error());
    return -1;
  }
  /* mlx-lm appends EOS when missing. */
  int32_t eos = mx_tokenizer_eos_id(tok);
  if (eos >= 0 && (e->len == 0 || e->ids[e->len - 1] != eos)) {
    int32_t *q = realloc(e->ids, (size_t)(e->len + 1) * sizeof *q);
    if (!q) {
      snprintf(err, nerr, "out of memory");
      return -1;
    }
    e->ids = q;
    e->ids[e->len++] = eos;
  }
  if (e->len < 2) {
    snprintf(err, nerr, "the example has fewer than 2 tokens");
    return -1;
  }
  return 0;
}

mx_lora_dataset *mx_lora_dataset_load(const char *path, mx_tokenizer *tok, int64_t max_len) {
  if (!path || !tok || max_len < 2) {
    mx__set_error(MX_ERR_INVALID_ARG, "lora data: bad arguments");
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(MX_ERR_IO, "lora data: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  mx_lora_dataset *d = calloc(1, sizeof *d);
  char *line = NULL;
  size_t lcap = 0;
  ssize_t r;
  int64_t lineno = 0;
  int st = d ? 0 : mx__set_error(MX_ERR_OOM, "lora data: out of memory");
  while (!st && (r = getline(&line, &lcap, f)) >= 0) {
    lineno++;
    char *s = line;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    if (!*s) continue;
    cJSON *j = cJSON_Parse(s);
    char err[512];
    example e = {0};
    if (!j) {
      st = mx__set_error(MX_ERR_FORMAT, "%s:%lld: invalid JSON", path, (long long)lineno);
      break;
    }
    if (line_example(tok, j, &e, err, sizeof err)) {
      st = mx__set_error(MX_ERR_FORMAT, "%s:%lld: %s", path, (long long)lineno, err);
      free(e.ids);
      cJSON_Delete(j);
      break;
    }
    cJSON_Delete(j);
    if (e.len > max_len) e.len = max_len;
    if (e.prompt_len > e.len) e.prompt_len = e.len;
    if (d->n == d->cap) {
      int64_t nc = d->cap ? d->cap * 2 : 64;
      example *ne = realloc(d->ex, (size_t)nc * sizeof *ne);
      if (!ne) {
        free(e.ids);
        st = mx__set_error(MX_ERR_OOM, "lora data: out of memory");
        break;
      }
      d->ex = ne;
      d->cap = nc;
    }
    d->ex[d->n++] = e;
  }
  free(line);
  fclose(f);
  if (!st && d->n == 0) st = mx__set_error(MX_ERR_FORMAT, "lora data: %s has no examples", path);
  if (st) {
    mx_lora_dataset_free(d);
    return NULL;
  }
  return d;
}

int mx_lora_dataset_batch(const mx_lora_dataset *d, const int64_t *idx, int n, bool mask_prompt,
                          mx_array **x, mx_array **y, mx_array **mask) {
  if (!d || !idx || n < 1 || !x || !y || !mask)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora batch: bad arguments");
  int64_t L = 0;
  for (int i = 0; i < n; i++) {
    if (idx[i] < 0 || idx[i] >= d->n) return mx__set_error(MX_ERR_RANGE, "lora batch: bad index");
    if (d->ex[idx[i]].len > L) L = d->ex[idx[i]].len;
  }
  int64_t T = L - 1;
  int32_t *xs = calloc((size_t)(n * T), sizeof *xs), *ys = calloc((size_t)(n * T), sizeof *ys);
  float *ms = calloc((size_t)(n * T), sizeof *ms);
  int st = 0;
  if (!xs || !ys || !ms) st = mx__set_error(MX_ERR_OOM, "lora batch: out of memory");
  for (int i = 0; i < n && !st; i++) {
    const example *e = &d->ex[idx[i]];
    for (int64_t t = 0; t < T; t++) {
      if (t + 1 < e->len) {
        xs[i * T + t] = e->ids[t];
        ys[i * T + t] = e->ids[t + 1];
        ms[i * T + t] = (!mask_prompt || t + 1 >= e->prompt_len) ? 1.0f : 0.0f;
      }
    }
  }
  int64_t shape[2] = {n, T};
  if (!st) {
    *x = mx_array_from_data(xs, shape, 2, MX_INT32);
    *y = mx_array_from_data(ys, shape, 2, MX_INT32);
    *mask = mx_array_from_data(ms, shape, 2, MX_FLOAT32);
    if (!*x || !*y || !*mask) {
      st = mx_last_status();
      mx_array_free(*x);
      mx_array_free(*y);
      mx_array_free(*mask);
      *x = *y = *mask = NULL;
    }
  }
  free(xs);
  free(ys);
  free(ms);
  return st;
}

/* ---- training ------------------------------------------------------------- */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static void shuffle(int64_t *p, int64_t n, uint64_t *s) {
  for (int64_t i = 0; i < n; i++) p[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(splitmix(s) % (uint64_t)(i + 1));
    int64_t t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int val_loss(mx_nn_module *root, const mx_lora_dataset *v, int64_t bs, bool mp, double *out) {
  double total = 0, count = 0;
  int st = 0;
  int64_t idx[1024];
  for (int64_t s = 0; s < v->n && !st; s += bs) {
    int n = (int)(v->n - s < bs ? v->n - s : bs);
    for (int i = 0; i < n; i++) idx[i] = s + i;
    mx_array *in[3] = {NULL, NULL, NULL};
    st = mx_lora_dataset_batch(v, idx, n, mp, &in[0], &in[1], &in[2]);
    double l = 0, ntok = 0;
    if (!st) st = mx_train_eval_loss(root, mx_train_lm_loss, NULL, in, 3, &l);
    mx_array *sum = st ? NULL : mx_sum(in[2], NULL, 0, false);
    if (!st) st = sum ? mx_array_item(sum, &ntok) : mx_last_status();
    mx_array_free(sum);
    total += l * ntok;
    count += ntok;
    for (int i = 0; i < 3; i++) mx_array_free(in[i]);
  }
  *out = count > 0 ? total / count : 0;
  return st;
}

int mx_lora_train(mx_lm_model *m, const mx_lora_options *o, mx_lora_event_fn on_event, void *ctx) {
  if (!m || !o || !o->data_dir || !o->adapter_path)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --data and --adapter-path are required");
  if (o->batch_size < 1 || o->batch_size > 1024)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --batch-size must be in [1, 1024]");
  if (o->iters < 1) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --iters must be >= 1");
  if (o->max_seq_length < 2) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --max-seq-length must be >= 2");
  if (o->steps_per_report < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --steps-per-report must be >= 1");
  if (!(o->learning_rate > 0)) return mx__set_error(MX_ERR_INVALID_ARG, "lora: --learning-rate must be > 0");
  mx_tokenizer *tok = mx_lm_tokenizer(m);
  if (!tok) return mx__set_error(MX_ERR_INVALID_ARG, "lora: the model has no tokenizer");
  char path[4096];
  snprintf(path, sizeof path, "%s/train.jsonl", o->data_dir);
  mx_lora_dataset *train = mx_lora_dataset_load(path, tok, o->max_seq_length);
  if (!train) return mx_last_status();
  mx_lora_dataset *valid = NULL;
  struct stat sb;
  snprintf(path, sizeof path, "%s/valid.jsonl", o->data_dir);
  int st = 0;
  if (stat(path, &sb) == 0 && !(valid = mx_lora_dataset_load(path, tok, o->max_seq_length)))
    st = mx_last_status();
  if (!st && train->n < o->batch_size)
    st = mx__set_error(MX_ERR_INVALID_ARG, "lora: %s/train.jsonl has %lld examples, fewer than "
                       "--batch-size %lld", o->data_dir, (long long)train->n, (long long)o->batch_size);
  mx_nn_module *root = mx_lm_module(m);
  if (!st) st = mx_lora_apply(root, &o->lora, o->seed);
  mx_adam_options ao = MX_ADAM_OPTIONS(o->learning_rate);
  mx_optimizer *opt = st ? NULL : mx_optimizer_adam(&ao);
  if (!st && !opt) st = mx_last_status();
  int64_t *perm = st ? NULL : malloc((size_t)train->n * sizeof *perm);
  if (!st && !perm) st = mx__set_error(MX_ERR_OOM, "lora: out of memory");
  uint64_t rng = o->seed;
  int64_t pos = train->n;
  double acc = 0, t0 = now();
  int64_t nacc = 0, win_tokens = 0, trained = 0;
  if (!st && valid && on_event) {
    double vl = 0;
    mx_nn_train(root, false);
    st = val_loss(root, valid, o->batch_size, o->mask_prompt, &vl);
    mx_lora_event ev = {.val = true, .step = 1, .iters = o->iters, .loss = vl};
    if (!st) on_event(ctx, &ev);
    t0 = now();
  }
  if (!st) mx_nn_train(root, true);
  for (int64_t step = 1; step <= o->iters && !st; step++) {
    if (pos + o->batch_size > train->n) {
      shuffle(perm, train->n, &rng);
      pos = 0;
    }
    mx_array *in[3] = {NULL, NULL, NULL};
    st = mx_lora_dataset_batch(train, perm + pos, (int)o->batch_size, o->mask_prompt, &in[0], &in[1],
                               &in[2]);
    pos += o->batch_size;
    mx_train_step_stats ss = {0, 0};
    if (!st) {
      mx_array *ntok = mx_sum(in[2], NULL, 0, false);
      double nt = 0;
      st = ntok ? mx_array_item(ntok, &nt) : mx_last_status();
      mx_array_free(ntok);
      win_tokens += (int64_t)nt;
      trained += (int64_t)nt;
    }
    if (!st) st = mx_train_step(root, opt, mx_train_lm_loss, NULL, in, 3, 1, 0.0, &ss);
    for (int i = 0; i < 3; i++) mx_array_free(in[i]);
    if (st) break;
    acc += ss.loss;
    nacc++;
    if (step % o->steps_per_report == 0 || step == o->iters) {
      double t1 = now(), dt = t1 - t0 > 1e-9 ? t1 - t0 : 1e-9;
      mx_lora_event ev = {.val = false, .step = step, .iters = o->iters,
                          .loss = acc / (double)nacc, .learning_rate = o->learning_rate,
                          .it_per_sec = (double)nacc / dt,
                          .tokens_per_sec = (double)win_tokens / dt,
                          .trained_tokens = trained, .peak_memory = mx_get_peak_memory()};
      acc = 0;
      nacc = 0;
      win_tokens = 0;
      t0 = t1;
      if (on_event && on_event(ctx, &ev)) break;
    }
  }
  if (!st) mx_nn_train(root, false);
  if (!st && valid) {
    double vl = 0;
    st = val_loss(root, valid, o->batch_size, o->mask_prompt, &vl);
    mx_lora_event ev = {.val = true, .step = o->iters, .iters = o->iters, .loss = vl};
    if (!st && on_event) on_event(ctx, &ev);
  }
  if (!st) st = mx_lora_save(root, &o->lora, o->adapter_path);
  free(perm);
  mx_optimizer_free(opt);
  mx_lora_dataset_free(train);
  mx_lora_dataset_free(valid);
  return st;
}
