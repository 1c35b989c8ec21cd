/* cmd_generate.c — `mxc generate`: text (or token ids) from a model.
 *
 *   mxc generate --model DIR --prompt "Hello" [--max-tokens 256] [--temp 0]
 *                [--top-p P] [--top-k K] [--min-p P] [--seed S]
 *                [--ignore-chat-template] [--system-prompt S]
 *                [--prefill-step-size N] [--max-kv-size N]
 *                [--prompt-cache-file FILE]
 *   mxc generate --model DIR --prompt-ids 1,2,3 ...   (no tokenizer needed)
 *
 * --max-kv-size N bounds the KV cache with mlx-lm's RotatingKVCache (keep 4).
 * --prompt-cache-file continues a cache saved by `mxc cache_prompt` (or
 * mlx_lm.cache_prompt): the prompt is appended after the cached tokens —
 * with a chat template, only the part of the rendered chat from the user's
 * text on (the cached prefix ends where the user's message began); without
 * --model, the model is the file's "model" metadata.
 *
 * Streams the text to stdout (token ids separated by spaces when the model
 * has no tokenizer) and prints prompt / generation tokens-per-second and
 * peak memory to stderr, as mlx_lm.generate does. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "mxc/chat_template.h"
#include "mxc/hub.h"
#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/lm_sample.h"
#include "mxc/lora.h"

#pragma weak mx_hub_resolve

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc generate [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
          "  --model DIR               default: $MXC_DEFAULT_MODEL, else the repository's models/default\n"
          "  --max-tokens N            tokens to generate (default 256)\n"
          "  --temp T                  sampling temperature, 0 = greedy (default 0)\n"
          "  --top-p P, --top-k K, --min-p P   sampling filters (off by default)\n"
          "  --seed S                  random seed (default 0)\n"
          "  --ignore-chat-template    use the prompt as is\n"
          "  --system-prompt S         system message for the chat template\n"
          "  --prefill-step-size N     prompt chunk size (default 2048)\n"
          "  --max-kv-size N           bound the KV cache to N positions (a rotating cache\n"
          "                            keeping the first 4, as mlx_lm); default: unbounded\n"
          "  --prompt-cache-file FILE  continue a cache saved by `mxc cache_prompt`\n"
          "  --adapter-path DIR        LoRA adapters (adapter_config.json, adapters.safetensors)\n");
  return rc;
}

/* Resolves a model argument to a local directory. */
int mxc__resolve_model(const char *model, char *dir, size_t n);
int mxc__resolve_model(const char *model, char *dir, size_t n) {
  struct stat sb;
  if (stat(model, &sb) == 0 || !mx_hub_resolve) {
    snprintf(dir, n, "%s", model);
    return 0;
  }
  if (mx_hub_resolve(model, dir, n)) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return -1;
  }
  return 0;
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end) return false;
  *out = v;
  return true;
}

/* "1,2, 3" -> ids (malloc'd). */
int mxc__parse_ids(const char *s, int32_t **ids, int *n);
int mxc__parse_ids(const char *s, int32_t **ids, int *n) {
  size_t cap = 16;
  *n = 0;
  *ids = malloc(cap * sizeof **ids);
  if (!*ids) return -1;
  const char *p = s;
  while (*p) {
    while (*p == ' ' || *p == ',') p++;
    if (!*p) break;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 0 || v > INT32_MAX) return -1;
    if ((size_t)*n == cap) {
      int32_t *q = realloc(*ids, (cap *= 2) * sizeof **ids);
      if (!q) return -1;
      *ids = q;
    }
    (*ids)[(*n)++] = (int32_t)v;
    p = end;
    if (*p && *p != ',' && *p != ' ') return -1;
  }
  return *n > 0 ? 0 : -1;
}

typedef struct {
  mx_detokenizer *detok; /* NULL: print ids */
  int count;
} printer;

static int print_token(void *ctx, int32_t id) {
  printer *p = ctx;
  if (p->detok) {
    const char *t;
    size_t n;
    if (mx_detokenizer_push(p->detok, id, &t, &n) == MX_OK) fwrite(t, 1, n, stdout);
  } else {
    printf(p->count ? " %d" : "%d", id);
  }
  p->count++;
  fflush(stdout);
  return 0;
}

static mx_array *lazy_sample_fn(void *ctx, mx_array *logits) {
  return mx_sampler_sample(ctx, logits, NULL, 0);
}

static int32_t sample_fn(void *ctx, mx_array *logits) {
  mx_array *t = mx_sampler_sample(ctx, logits, NULL, 0);
  int64_t id = -1;
  int st = t ? mx_array_item_int(t, &id) : mx_last_status();
  mx_array_free(t);
  return st ? st : (int32_t)id;
}

/* The chat template's text of [system,] user: content (malloc'd). */
int mxc__render_chat(mx_tokenizer *tok, const char *system, const char *content,
                     bool add_generation_prompt, char **text, size_t *len);
int mxc__render_chat(mx_tokenizer *tok, const char *system, const char *content,
                     bool add_generation_prompt, char **text, size_t *len) {
  cJSON *msgs = cJSON_CreateArray();
  if (system) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "system");
    cJSON_AddStringToObject(m, "content", system);
    cJSON_AddItemToArray(msgs, m);
  }
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", "user");
  cJSON_AddStringToObject(m, "content", content);
  cJSON_AddItemToArray(msgs, m);
  char *conv = cJSON_PrintUnformatted(msgs);
  cJSON_Delete(msgs);
  int st = conv ? mx_chat_template_apply(tok, conv, add_generation_prompt, text, len) : MX_ERR_OOM;
  free(conv);
  return st;
}

/* The prompt ids of a text prompt, through the chat template when the
 * tokenizer has one (mlx_lm: BOS added unless the text starts with it).
 * after_cache: the prompt continues a prompt cache — mlx_lm keeps only the
 * rendered chat from the user's text on ("<query>" marks where it starts)
 * and adds no special tokens. */
static int encode_prompt(mx_tokenizer *tok, const char *prompt, const char *system,
                         bool use_template, bool after_cache, int32_t **ids, int *n) {
  char *text = NULL;
  size_t len = 0;
  int st;
  if (use_template && mx_tokenizer_chat_template(tok)) {
    if ((st = mxc__render_chat(tok, system, prompt, true, &text, &len))) return st;
    if (after_cache) {
      char *probe = NULL;
      size_t plen = 0;
      if ((st = mxc__render_chat(tok, system, "<query>", true, &probe, &plen))) {
        free(text);
        return st;
      }
      const char *at = strstr(probe, "<query>");
      size_t skip = at ? (size_t)(at - probe) : 0;
      free(probe);
      if (!at || skip > len) {
        free(text);
        fprintf(stderr, "mxc generate: the chat template does not show the user's message as "
                        "is; use --ignore-chat-template with --prompt-cache-file\n");
        return MX_ERR_UNSUPPORTED;
      }
      memmove(text, text + skip, len - skip + 1);
      len -= skip;
    }
  } else {
    text = strdup(prompt);
    if (!text) return MX_ERR_OOM;
    len = strlen(text);
  }
  const char *bos = mx_tokenizer_special_token(tok, "bos_token");
  bool add_special = !after_cache && (!bos || strncmp(text, bos, strlen(bos)) != 0);
  size_t nn = 0;
  st = mx_tokenizer_encode(tok, text, len, add_special, ids, &nn);
  free(text);
  *n = (int)nn;
  if (!st && nn == 0) {
    fprintf(stderr, "mxc generate: the prompt encodes to no tokens\n");
    return MX_ERR_INVALID_ARG;
  }
  return st;
}

/* The bundled model without --model: $MXC_DEFAULT_MODEL, else models/default
 * of the repository holding the binary (searched upwards from its folder,
 * e.g. ../../models/default from build/release/mxc). */
bool mxc__default_model(char *dir, size_t n);
bool mxc__default_model(char *dir, size_t n) {
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

int mxc_cmd_generate(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *prompt_ids = NULL, *system = NULL, *adapter = NULL;
  const char *cache_file = NULL;
  long max_tokens = 256, prefill = 2048, top_k = 0, seed = 0, max_kv = 0;
  double temp = 0, top_p = 0, min_p = 0;
  bool ignore_template = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "--ignore-chat-template")) {
      ignore_template = true;
      continue;
    }
    if (!has) {
      fprintf(stderr, "mxc generate: %s needs a value (or is unknown)\n", a);
      return usage(stderr, 2);
    }
    const char *v = argv[++i];
    bool ok = true;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) prompt = v;
    else if (!strcmp(a, "--prompt-ids")) prompt_ids = v;
    else if (!strcmp(a, "--system-prompt")) system = v;
    else if (!strcmp(a, "--adapter-path")) adapter = v;
    else if (!strcmp(a, "--prompt-cache-file")) cache_file = v;
    else if (!strcmp(a, "--max-kv-size")) ok = parse_long(v, 1, 1L << 30, &max_kv);
    else if (!strcmp(a, "--max-tokens") || !strcmp(a, "-m")) ok = parse_long(v, 0, 1L << 30, &max_tokens);
    else if (!strcmp(a, "--prefill-step-size")) ok = parse_long(v, 1, 1L << 30, &prefill);
    else if (!strcmp(a, "--top-k")) ok = parse_long(v, 0, 1L << 30, &top_k);
    else if (!strcmp(a, "--seed")) ok = parse_long(v, 0, 0x7fffffffL, &seed);
    else if (!strcmp(a, "--temp")) ok = parse_double(v, &temp) && temp >= 0;
    else if (!strcmp(a, "--top-p")) ok = parse_double(v, &top_p);
    else if (!strcmp(a, "--min-p")) ok = parse_double(v, &min_p);
    else {
      fprintf(stderr, "mxc generate: unknown option %s\n", a);
      return usage(stderr, 2);
    }
    if (!ok) {
      fprintf(stderr, "mxc generate: bad value for %s: '%s'\n", a, v);
      return 2;
    }
  }
  if (cache_file && max_kv) {
    fprintf(stderr, "mxc generate: --max-kv-size makes a new cache; a --prompt-cache-file "
                    "brings its own (give it to `mxc cache_prompt`)\n");
    return 2;
  }
  /* the prompt cache first: without --model, its "model" metadata names it */
  char cached_model[4096] = "";
  if (cache_file) {
    mx_load_options lo = {.format = MX_FORMAT_SAFETENSORS};
    mx_metadata *cache_meta = NULL;
    mx_tensor_info *info = NULL;
    int64_t ninfo = 0;
    if (mx_load_info(cache_file, &lo, &info, &ninfo, &cache_meta)) {
      fprintf(stderr, "mxc generate: --prompt-cache-file: %s\n", mx_last_error());
      return 1;
    }
    const char *mm = cache_meta ? mx_metadata_get_string(cache_meta, "1.model") : NULL;
    if (mm) snprintf(cached_model, sizeof cached_model, "%s", mm);
    mx_tensor_info_free(info, ninfo);
    mx_metadata_free(cache_meta);
    if (!model && cached_model[0]) model = cached_model;
  }
  char default_dir[4096];
  if (!model && mxc__default_model(default_dir, sizeof default_dir)) model = default_dir;
  if (!model) {
    fprintf(stderr, "mxc generate: --model DIR is required (a model directory, e.g. one "
                    "written by `mxc convert`; the bundled models/default was not found: set "
                    "MXC_DEFAULT_MODEL)\n");
    return usage(stderr, 2);
  }
  if (!prompt == !prompt_ids) {
    fprintf(stderr, "mxc generate: give exactly one of --prompt and --prompt-ids\n");
    return usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  mx_lm_model *m = mx_lm_load(dir, NULL);
  if (!m) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  if (adapter && mx_lora_load_adapters(mx_lm_module(m), adapter)) {
    fprintf(stderr, "mxc generate: %s\n", mx_last_error());
    mx_lm_free(m);
    return 1;
  }
  int rc = 1;
  int32_t *ids = NULL;
  int n = 0;
  mx_sampler *sampler = NULL;
  mx_lm_cache *cache = NULL;
  if (cache_file && !(cache = mx_lm_cache_load(m, cache_file, NULL))) {
    fprintf(stderr, "mxc generate: --prompt-cache-file: %s\n", mx_last_error());
    goto done;
  }
  printer pr = {NULL, 0};
  mx_tokenizer *tok = mx_lm_tokenizer(m);
  if (prompt_ids) {
    if (mxc__parse_ids(prompt_ids, &ids, &n)) {
      fprintf(stderr, "mxc generate: --prompt-ids wants comma-separated ids, got '%s'\n",
              prompt_ids);
      goto done;
    }
  } else if (!tok) {
    fprintf(stderr, "mxc generate: %s has no tokenizer files (tokenizer.json or tokenizer.model); "
                    "use --prompt-ids\n", dir);
    goto done;
  } else if (encode_prompt(tok, prompt, system, !ignore_template, cache != NULL, &ids, &n)) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    goto done;
  }
  mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
  opt.max_tokens = (int)max_tokens;
  opt.prefill_step_size = (int)prefill;
  opt.max_kv_size = max_kv;
  opt.prompt_cache = cache;
  if (temp > 0) {
    mx_sampler_config sc = mx_sampler_config_default();
    sc.temp = temp;
    sc.top_p = top_p;
    sc.top_k = (int)top_k;
    sc.min_p = min_p;
    sc.seed = (uint64_t)seed;
    if (!(sampler = mx_sampler_new(&sc))) {
      fprintf(stderr, "mxc generate: %s\n", mx_last_error());
      goto done;
    }
    if (cache) opt.sampler = sample_fn; /* the caller's cache must not run ahead */
    else opt.lazy_sampler = lazy_sample_fn;
    opt.sampler_ctx = sampler;
  }
  if (tok && !(pr.detok = mx_detokenizer_new(tok, true))) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    goto done;
  }
  fprintf(stderr, "==========\n");
  mx_lm_generate_stats st;
  int gst = mx_lm_generate(m, ids, n, &opt, print_token, &pr, &st);
  if (pr.detok) {
    const char *t;
    size_t len;
    if (mx_detokenizer_flush(pr.detok, &t, &len) == MX_OK) fwrite(t, 1, len, stdout);
  }
  printf("\n");
  fflush(stdout);
  if (gst) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    goto done;
  }
  fprintf(stderr, "==========\n");
  fprintf(stderr, "Prompt: %d tokens, %.3f tokens-per-sec\n", st.prompt_tokens, st.prompt_tps);
  fprintf(stderr, "Generation: %d tokens, %.3f tokens-per-sec\n", st.generation_tokens,
          st.generation_tps);
  fprintf(stderr, "Peak memory: %.3f GB\n", (double)st.peak_memory / 1e9);
  rc = 0;
done:
  mx_detokenizer_free(pr.detok);
  mx_sampler_free(sampler);
  mx_lm_cache_free(cache);
  free(ids);
  mx_lm_free(m);
  return rc;
}
