/* cmd_chat.c — `mxc chat`: interactive multi-turn chat, as mlx_lm.chat.
 *
 *   mxc chat [--model DIR] [--max-tokens N] [--temp T] [--top-p P]
 *            [--top-k K] [--min-p P] [--seed S] [--system-prompt S]
 *            [--max-kv-size N]
 *
 * Reads one line per turn from stdin (prompt ">> " on stderr when stdin is
 * a terminal), renders the whole conversation with the tokenizer's chat
 * template (add_generation_prompt) or, without a template, as the turns'
 * texts joined by newlines, and streams the reply. The KV cache is kept
 * across turns: when the cached tokens are a prefix of the new prompt only
 * the rest is prefilled, otherwise the prompt is prefilled from scratch.
 * --max-kv-size N bounds the cache as mlx_lm.chat does: a rotating cache
 * (mlx-lm's RotatingKVCache, keeping the first 4 positions) — a long
 * conversation goes on, the model seeing the first positions and the last
 * ones only. "q" (or EOF) quits, "r" resets the conversation. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "mxc/chat_template.h"
#include "mxc/lm.h"
#include "mxc/lm_sample.h"
#include "mxc/ops.h"

int mxc__resolve_model(const char *model, char *dir, size_t n); /* cmd_generate.c */

static int chat_usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc chat [--model DIR] [options]   (reads one message per line from stdin)\n"
          "  --model DIR               default: $MXC_DEFAULT_MODEL, else the repository's models/default\n"
          "  --max-tokens N            tokens per reply (default 256)\n"
          "  --temp T                  sampling temperature, 0 = greedy (default 0)\n"
          "  --top-p P, --top-k K, --min-p P   sampling filters (off by default)\n"
          "  --seed S                  random seed (default 0)\n"
          "  --system-prompt S         system message\n"
          "  --max-kv-size N           bound the KV cache to N positions (rotating, keeping the\n"
          "                            first 4, as mlx_lm.chat); default: unbounded\n"
          "In the chat: 'q' quits, 'r' resets the conversation.\n");
  return rc;
}

static bool chat_parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool chat_parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end) return false;
  *out = v;
  return true;
}

/* $MXC_DEFAULT_MODEL, else models/default above the binary. */
static bool chat_default_model(char *dir, size_t n) {
  const char *env = getenv("MXC_DEFAULT_MODEL");
  if (env && *env) {
    snprintf(dir, n, "%s", env);
    return true;
  }
  char exe[2048];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return false;
  exe[len] = 0;
  struct stat sb;
  for (int up = 0; up < 5; up++) {
    char *slash = strrchr(exe, '/');
    if (!slash) return false;
    *slash = 0;
    snprintf(dir, n, "%s/models/default/config.json", exe);
    if (stat(dir, &sb) == 0) {
      snprintf(dir, n, "%s/models/default", exe);
      return true;
    }
  }
  return false;
}

/* ---- growable buffers ---------------------------------------------------- */
typedef struct {
  char *p;
  size_t n, cap;
} sbuf;

static int sbuf_add(sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

typedef struct {
  int32_t *p;
  int n, cap;
} ibuf;

static int ibuf_push(ibuf *b, int32_t v) {
  if (b->n == b->cap) {
    int cap = b->cap ? b->cap * 2 : 256;
    int32_t *q = realloc(b->p, (size_t)cap * sizeof *q);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  b->p[b->n++] = v;
  return 0;
}

/* ---- the session -------------------------------------------------------- */
typedef struct {
  mx_lm_model *m;
  mx_tokenizer *tok;
  mx_sampler *sampler; /* NULL: greedy */
  const char *system;
  long max_tokens, max_kv;
  cJSON *history;     /* [{role, content}] */
  mx_lm_cache *cache; /* NULL until the first turn / after a reset */
  ibuf cached;        /* the ids whose keys/values the cache holds */
} chat_session;

static void chat_reset(chat_session *s) {
  cJSON_Delete(s->history);
  s->history = cJSON_CreateArray();
  if (s->system && s->history) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "system");
    cJSON_AddStringToObject(m, "content", s->system);
    cJSON_AddItemToArray(s->history, m);
  }
  mx_lm_cache_free(s->cache);
  s->cache = NULL;
  s->cached.n = 0;
}

static int add_message(cJSON *h, const char *role, const char *content) {
  cJSON *m = cJSON_CreateObject();
  if (!m) return -1;
  cJSON_AddStringToObject(m, "role", role);
  cJSON_AddStringToObject(m, "content", content);
  cJSON_AddItemToArray(h, m);
  return 0;
}

/* The prompt text of the conversation so far (malloc'd). */
static char *render(chat_session *s, size_t *len) {
  char *text = NULL;
  if (mx_tokenizer_chat_template(s->tok)) {
    char *conv = cJSON_PrintUnformatted(s->history);
    if (!conv) return NULL;
    int st = mx_chat_template_apply(s->tok, conv, true, &text, len);
    free(conv);
    if (st) {
      fprintf(stderr, "mxc chat: %s\n", mx_last_error());
      return NULL;
    }
    return text;
  }
  /* plain mode: the turns' texts, one per line */
  sbuf b = {0};
  cJSON *m;
  cJSON_ArrayForEach(m, s->history) {
    const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "content"));
    if (!c) continue;
    if (sbuf_add(&b, c, strlen(c)) || sbuf_add(&b, "\n", 1)) {
      free(b.p);
      return NULL;
    }
  }
  if (!b.p && sbuf_add(&b, "", 0)) return NULL;
  *len = b.n;
  return b.p;
}

static int32_t pick(chat_session *s, mx_array *logits) {
  mx_array *t = s->sampler ? mx_sampler_sample(s->sampler, logits, NULL, 0)
                           : mx_argmax(logits, -1, false);
  int64_t id = -1;
  int st = t ? mx_array_item_int(t, &id) : mx_last_status();
  mx_array_free(t);
  return st ? st : (int32_t)id;
}

/* Feeds ids[0..n) through the model and the cache (in chunks); returns the
 * next token picked from the last position's logits, or a negative status. */
static int32_t feed(chat_session *s, const int32_t *ids, int n) {
  const int chunk = 2048;
  int done = 0;
  while (n - done > chunk) {
    mx_array *t = mx_array_from_data(ids + done, (int64_t[]){1, chunk}, 2, MX_INT32);
    mx_array *logits = mx_lm_forward(s->m, t, s->cache);
    mx_array_free(t);
    mx_array_free(logits);
    int st = logits ? mx_lm_cache_eval(s->cache) : mx_last_status();
    if (st) return st;
    done += chunk;
  }
  int64_t rest = n - done;
  mx_array *t = mx_array_from_data(ids + done, (int64_t[]){1, rest}, 2, MX_INT32);
  mx_array *logits = mx_lm_forward_last(s->m, t, s->cache);
  mx_array_free(t);
  if (!logits) return mx_last_status();
  const int64_t *sh = mx_array_shape(logits);
  mx_array *last = mx_slice(logits, (int64_t[]){0, sh[1] - 1, 0},
                            (int64_t[]){1, sh[1], sh[2]}, NULL, 3);
  mx_array *flat = mx_reshape(last, (int64_t[]){sh[2]}, 1);
  mx_array_free(logits);
  mx_array_free(last);
  if (!flat) return mx_last_status();
  int32_t id = pick(s, flat);
  mx_array_free(flat);
  if (id >= 0 && id >= mx_lm_get_config(s->m)->vocab_size) {
    fprintf(stderr, "mxc chat: sampled id %d is outside the vocabulary\n", id);
    return -1;
  }
  for (int i = 0; i < n; i++)
    if (ibuf_push(&s->cached, ids[i])) return -1;
  return id;
}

/* One user turn: returns 0, or -1 on an error (reported; the turn is
 * dropped from the history). */
static int chat_turn(chat_session *s, const char *line) {
  if (add_message(s->history, "user", line)) return -1;
  size_t len = 0;
  char *text = render(s, &len);
  int32_t *ids = NULL;
  size_t nn = 0;
  int rc = -1;
  sbuf reply = {0};
  mx_detokenizer *detok = NULL;
  if (!text) goto fail;
  const char *bos = mx_tokenizer_special_token(s->tok, "bos_token");
  bool add_special = !bos || strncmp(text, bos, strlen(bos)) != 0;
  if (mx_tokenizer_encode(s->tok, text, len, add_special, &ids, &nn)) {
    fprintf(stderr, "mxc chat: %s\n", mx_last_error());
    goto fail;
  }
  int n = (int)nn;
  if (n == 0) {
    fprintf(stderr, "mxc chat: the prompt encodes to no tokens\n");
    goto fail;
  }
  /* reuse the cache when it holds a prefix of the new prompt */
  int keep = 0;
  if (s->cache && s->cached.n < n && !memcmp(s->cached.p, ids, (size_t)s->cached.n * sizeof *ids))
    keep = s->cached.n;
  if (!keep) {
    mx_lm_cache_free(s->cache);
    s->cached.n = 0;
    s->cache = s->max_kv > 0 ? mx_lm_cache_new_rotating(s->m, s->max_kv,
                                                        s->max_kv > 4 ? 4 : s->max_kv - 1)
                             : mx_lm_cache_new(s->m);
    if (!s->cache) {
      fprintf(stderr, "mxc chat: %s\n", mx_last_error());
      goto fail;
    }
  }
  if (!(detok = mx_detokenizer_new(s->tok, true))) {
    fprintf(stderr, "mxc chat: %s\n", mx_last_error());
    goto fail;
  }
  int32_t id = feed(s, ids + keep, n - keep);
  for (long i = 0; id >= 0 && !mx_lm_is_eos(s->m, id); i++) {
    const char *piece;
    size_t plen;
    if (mx_detokenizer_push(detok, id, &piece, &plen) == MX_OK) {
      fwrite(piece, 1, plen, stdout);
      fflush(stdout);
      if (sbuf_add(&reply, piece, plen)) goto fail;
    }
    if (i + 1 >= s->max_tokens) break;
    id = feed(s, &id, 1);
  }
  if (id < 0) {
    /* the cache may hold part of a step: start afresh next turn */
    mx_lm_cache_free(s->cache);
    s->cache = NULL;
    s->cached.n = 0;
    fprintf(stderr, "\nmxc chat: %s\n", mx_last_error());
    goto fail;
  }
  const char *piece;
  size_t plen;
  if (mx_detokenizer_flush(detok, &piece, &plen) == MX_OK) {
    fwrite(piece, 1, plen, stdout);
    if (sbuf_add(&reply, piece, plen)) goto fail;
  }
  printf("\n");
  fflush(stdout);
  if (add_message(s->history, "assistant", reply.p ? reply.p : "")) goto fail;
  rc = 0;
fail:
  if (rc) { /* drop the user message */
    int k = cJSON_GetArraySize(s->history);
    if (k > 0) cJSON_DeleteItemFromArray(s->history, k - 1);
  }
  mx_detokenizer_free(detok);
  free(reply.p);
  free(ids);
  free(text);
  return rc;
}

/* Reads one line (without the newline) into *line; false at EOF. */
static bool read_line(char **line, size_t *cap) {
  ssize_t n = getline(line, cap, stdin);
  if (n < 0) return false;
  while (n > 0 && ((*line)[n - 1] == '\n' || (*line)[n - 1] == '\r')) (*line)[--n] = 0;
  return true;
}

int mxc_cmd_chat(int argc, char **argv) {
  const char *model = NULL, *system = NULL;
  long max_tokens = 256, top_k = 0, seed = 0, max_kv = 0;
  double temp = 0, top_p = 0, min_p = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return chat_usage(stdout, 0);
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc chat: %s needs a value (or is unknown)\n", a);
      return chat_usage(stderr, 2);
    }
    const char *v = argv[++i];
    bool ok = true;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--system-prompt")) system = v;
    else if (!strcmp(a, "--max-tokens") || !strcmp(a, "-m")) ok = chat_parse_long(v, 1, 1L << 30, &max_tokens);
    else if (!strcmp(a, "--top-k")) ok = chat_parse_long(v, 0, 1L << 30, &top_k);
    else if (!strcmp(a, "--seed")) ok = chat_parse_long(v, 0, 0x7fffffffL, &seed);
    else if (!strcmp(a, "--max-kv-size")) ok = chat_parse_long(v, 1, 1L << 30, &max_kv);
    else if (!strcmp(a, "--temp")) ok = chat_parse_double(v, &temp) && temp >= 0;
    else if (!strcmp(a, "--top-p")) ok = chat_parse_double(v, &top_p);
    else if (!strcmp(a, "--min-p")) ok = chat_parse_double(v, &min_p);
    else {
      fprintf(stderr, "mxc chat: unknown option %s\n", a);
      return chat_usage(stderr, 2);
    }
    if (!ok) {
      fprintf(stderr, "mxc chat: bad value for %s: '%s'\n", a, v);
      return 2;
    }
  }
  char default_dir[4096];
  if (!model && chat_default_model(default_dir, sizeof default_dir)) model = default_dir;
  if (!model) {
    fprintf(stderr, "mxc chat: --model DIR is required (the bundled models/default was not "
                    "found: set MXC_DEFAULT_MODEL)\n");
    return chat_usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  chat_session s = {0};
  s.system = system;
  s.max_tokens = max_tokens;
  s.max_kv = max_kv;
  if (!(s.m = mx_lm_load(dir, NULL))) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  int rc = 1;
  char *line = NULL;
  size_t cap = 0;
  if (!(s.tok = mx_lm_tokenizer(s.m))) {
    fprintf(stderr, "mxc chat: %s has no tokenizer files (tokenizer.json or tokenizer.model)\n",
            dir);
    goto done;
  }
  if (temp > 0) {
    mx_sampler_config sc = mx_sampler_config_default();
    sc.temp = temp;
    sc.top_p = top_p;
    sc.top_k = (int)top_k;
    sc.min_p = min_p;
    sc.seed = (uint64_t)seed;
    if (!(s.sampler = mx_sampler_new(&sc))) {
      fprintf(stderr, "mxc chat: %s\n", mx_last_error());
      goto done;
    }
  }
  chat_reset(&s);
  if (!s.history) goto done;
  bool tty = isatty(STDIN_FILENO);
  if (tty)
    fprintf(stderr, "[INFO] Starting chat session with %s.\n"
                    "The command list:\n- 'q' to exit\n- 'r' to reset the chat\n", dir);
  for (;;) {
    fputs(">> ", stdout);
    fflush(stdout);
    if (!read_line(&line, &cap)) {
      if (!tty) printf("\n");
      break;
    }
    if (!strcmp(line, "q")) break;
    if (!strcmp(line, "r")) {
      chat_reset(&s);
      if (!s.history) goto done;
      printf("[conversation reset]\n");
      continue;
    }
    chat_turn(&s, line); /* errors are reported; the session goes on */
  }
  rc = 0;
done:
  free(line);
  free(s.cached.p);
  mx_lm_cache_free(s.cache);
  cJSON_Delete(s.history);
  mx_sampler_free(s.sampler);
  mx_lm_free(s.m);
  return rc;
}
