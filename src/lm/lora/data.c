/* data.c — mlx-lm's jsonl fine-tuning datasets: one example per line,
 * tokenized with the prompt length kept for --mask-prompt, and padded batches
 * with a loss mask. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/internal.h"
#include "mxc/chat_template.h"
#include "mxc/lora.h"
#include "mxc/ops.h"

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

int64_t mx_lora_dataset_length(const mx_lora_dataset *d, int64_t i) {
  return d && i >= 0 && i < d->n ? d->ex[i].len : -1;
}

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

