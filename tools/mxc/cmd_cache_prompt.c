/* cmd_cache_prompt.c — `mxc cache_prompt` (also `cache-prompt`): prefill a
 * prompt and save its KV cache, as mlx_lm.cache_prompt.
 *
 *   mxc cache_prompt --model DIR --prompt TEXT --prompt-cache-file FILE
 *                    [--max-kv-size N] [--ignore-chat-template]
 *                    [--prefill-step-size N]
 *   mxc cache_prompt --model DIR --prompt-ids 1,2,3 --prompt-cache-file FILE
 *
 * With a chat template, the cached text is the chat up to and including the
 * user's message, left open (transformers' continue_final_message), so that
 * `mxc generate --prompt-cache-file FILE --prompt MORE` continues that
 * message. The file (safetensors) has mlx-lm's layout and metadata "model",
 * "chat_template" and "tokenizer_config". --prompt - reads stdin. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/ops.h"

/* cmd_generate.c */
int mxc__resolve_model(const char *model, char *dir, size_t n);
bool mxc__default_model(char *dir, size_t n);
int mxc__parse_ids(const char *s, int32_t **ids, int *n);
int mxc__render_chat(mx_tokenizer *tok, const char *system, const char *content,
                     bool add_generation_prompt, char **text, size_t *len);

static int cp_usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc cache_prompt [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3)\n"
          "                        --prompt-cache-file FILE [options]\n"
          "  --model DIR               default: $MXC_DEFAULT_MODEL, else the repository's models/default\n"
          "  --prompt TEXT             the prompt ('-' reads it from stdin)\n"
          "  --prompt-cache-file FILE  where to save the cache (.safetensors)\n"
          "  --max-kv-size N           a rotating cache of N positions (keeping the first 4)\n"
          "  --ignore-chat-template    cache the prompt as is\n"
          "  --prefill-step-size N     prompt chunk size (default 2048)\n"
          "Then: mxc generate --prompt-cache-file FILE --prompt MORE\n");
  return rc;
}

static bool cp_parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static char *read_stdin(void) {
  size_t n = 0, cap = 4096;
  char *b = malloc(cap);
  while (b) {
    size_t r = fread(b + n, 1, cap - n - 1, stdin);
    n += r;
    if (r == 0) break;
    if (n + 1 == cap) {
      char *nb = realloc(b, cap *= 2);
      if (!nb) free(b);
      b = nb;
    }
  }
  if (b) b[n] = 0;
  return b;
}

/* The ids of the cached prefix: with a chat template, the chat up to the
 * end of the user's message (rendered with "<query>" as the message, cut
 * there, the prompt appended), BOS added unless the text starts with it. */
static int prefix_ids(mx_tokenizer *tok, const char *prompt, bool use_template, int32_t **ids,
                      int *n) {
  char *text = NULL;
  size_t len = 0;
  int st;
  if (use_template && mx_tokenizer_chat_template(tok)) {
    if ((st = mxc__render_chat(tok, NULL, "<query>", false, &text, &len))) return st;
    char *at = strstr(text, "<query>");
    if (!at) {
      free(text);
      fprintf(stderr, "mxc cache_prompt: the chat template does not show the user's message as "
                      "is; use --ignore-chat-template\n");
      return MX_ERR_UNSUPPORTED;
    }
    size_t pre = (size_t)(at - text), pl = strlen(prompt);
    char *joined = malloc(pre + pl + 1);
    if (!joined) {
      free(text);
      return MX_ERR_OOM;
    }
    memcpy(joined, text, pre);
    memcpy(joined + pre, prompt, pl + 1);
    free(text);
    text = joined;
    len = pre + pl;
  } else {
    if (!(text = strdup(prompt))) return MX_ERR_OOM;
    len = strlen(text);
  }
  const char *bos = mx_tokenizer_special_token(tok, "bos_token");
  bool add_special = !bos || strncmp(text, bos, strlen(bos)) != 0;
  size_t nn = 0;
  st = mx_tokenizer_encode(tok, text, len, add_special, ids, &nn);
  free(text);
  *n = (int)nn;
  return st;
}

int mxc_cmd_cache_prompt(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *prompt_ids = NULL, *file = NULL;
  long max_kv = 0, prefill = 2048;
  bool ignore_template = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return cp_usage(stdout, 0);
    if (!strcmp(a, "--ignore-chat-template")) {
      ignore_template = true;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc cache_prompt: %s needs a value (or is unknown)\n", a);
      return cp_usage(stderr, 2);
    }
    const char *v = argv[++i];
    bool ok = true;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) prompt = v;
    else if (!strcmp(a, "--prompt-ids")) prompt_ids = v;
    else if (!strcmp(a, "--prompt-cache-file")) file = v;
    else if (!strcmp(a, "--max-kv-size")) ok = cp_parse_long(v, 1, 1L << 30, &max_kv);
    else if (!strcmp(a, "--prefill-step-size")) ok = cp_parse_long(v, 1, 1L << 30, &prefill);
    else {
      fprintf(stderr, "mxc cache_prompt: unknown option %s\n", a);
      return cp_usage(stderr, 2);
    }
    if (!ok) {
      fprintf(stderr, "mxc cache_prompt: bad value for %s: '%s'\n", a, v);
      return 2;
    }
  }
  if (!file) {
    fprintf(stderr, "mxc cache_prompt: --prompt-cache-file FILE is required\n");
    return cp_usage(stderr, 2);
  }
  if (!prompt == !prompt_ids) {
    fprintf(stderr, "mxc cache_prompt: give exactly one of --prompt and --prompt-ids\n");
    return cp_usage(stderr, 2);
  }
  char default_dir[4096];
  if (!model && mxc__default_model(default_dir, sizeof default_dir)) model = default_dir;
  if (!model) {
    fprintf(stderr, "mxc cache_prompt: --model DIR is required\n");
    return cp_usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  mx_lm_model *m = mx_lm_load(dir, NULL);
  if (!m) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  int rc = 1, n = 0;
  int32_t *ids = NULL;
  char *stdin_text = NULL, *tmpl = NULL;
  mx_lm_cache *c = NULL;
  mx_metadata *md = NULL;
  mx_tokenizer *tok = mx_lm_tokenizer(m);
  if (prompt_ids) {
    if (mxc__parse_ids(prompt_ids, &ids, &n)) {
      fprintf(stderr, "mxc cache_prompt: --prompt-ids wants comma-separated ids, got '%s'\n",
              prompt_ids);
      goto done;
    }
  } else {
    if (!tok) {
      fprintf(stderr, "mxc cache_prompt: %s has no tokenizer files; use --prompt-ids\n", dir);
      goto done;
    }
    if (!strcmp(prompt, "-")) {
      if (!(prompt = stdin_text = read_stdin())) {
        fprintf(stderr, "mxc cache_prompt: cannot read stdin\n");
        goto done;
      }
    }
    if (prefix_ids(tok, prompt, !ignore_template, &ids, &n)) {
      fprintf(stderr, "mxc cache_prompt: %s\n", mx_last_error());
      goto done;
    }
  }
  if (n <= 0) {
    fprintf(stderr, "mxc cache_prompt: the prompt is empty\n");
    goto done;
  }
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= mx_lm_get_config(m)->vocab_size) {
      fprintf(stderr, "mxc cache_prompt: prompt id %d is outside the vocabulary [0, %lld)\n",
              ids[i], (long long)mx_lm_get_config(m)->vocab_size);
      goto done;
    }
  c = max_kv > 0 ? mx_lm_cache_new_rotating(m, max_kv, max_kv > 4 ? 4 : max_kv - 1)
                 : mx_lm_cache_new(m);
  if (!c) {
    fprintf(stderr, "mxc cache_prompt: %s\n", mx_last_error());
    goto done;
  }
  for (int done_n = 0; done_n < n;) {
    int k = n - done_n < prefill ? n - done_n : (int)prefill;
    mx_array *t = mx_array_from_data(ids + done_n, (int64_t[]){1, k}, 2, MX_INT32);
    mx_array *logits = mx_lm_forward(m, t, c);
    mx_array_free(t);
    mx_array_free(logits);
    if (!logits || mx_lm_cache_eval(c)) {
      fprintf(stderr, "mxc cache_prompt: %s\n", mx_last_error());
      goto done;
    }
    done_n += k;
    fprintf(stderr, "Processed %6d tokens\n", done_n);
  }
  /* mlx_lm.cache_prompt's metadata */
  md = mx_metadata_new();
  const char *ct = tok ? mx_tokenizer_chat_template(tok) : NULL;
  cJSON *js = ct ? cJSON_CreateString(ct) : cJSON_CreateNull();
  tmpl = js ? cJSON_PrintUnformatted(js) : NULL;
  cJSON_Delete(js);
  if (!md || !tmpl || mx_metadata_set_string(md, "model", model) ||
      mx_metadata_set_string(md, "chat_template", tmpl) ||
      mx_metadata_set_string(md, "tokenizer_config", "{}")) {
    fprintf(stderr, "mxc cache_prompt: out of memory\n");
    goto done;
  }
  fprintf(stderr, "Saving...\n");
  if (mx_lm_cache_save(c, file, md)) {
    fprintf(stderr, "mxc cache_prompt: %s\n", mx_last_error());
    goto done;
  }
  fprintf(stderr, "Cached %d tokens (%lld held) to %s\n", n, (long long)mx_lm_cache_size(c), file);
  rc = 0;
done:
  free(tmpl);
  mx_metadata_free(md);
  mx_lm_cache_free(c);
  free(stdin_text);
  free(ids);
  mx_lm_free(m);
  return rc;
}
