/* load.c — mx_lm_load: a Hugging Face / MLX model directory. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lm_internal.h"
#include "mxc/io.h"

static bool file_exists(const char *dir, const char *name) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcmp(s + n - m, suffix);
}

/* Every tensor of the directory: the safetensors index when there is one,
 * else every *.safetensors file (sorted by name). */
static int load_weights(const char *dir, mx_map **out) {
  char p[4096];
  *out = NULL;
  if (file_exists(dir, "model.safetensors.index.json")) {
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    return mx_load(p, out, NULL);
  }
  DIR *d = opendir(dir);
  if (!d) return mx__set_error(MX_ERR_IO, "%s: cannot list the directory", dir);
  char **names = NULL;
  size_t n = 0, cap = 0;
  int st = MX_OK;
  struct dirent *e;
  while ((e = readdir(d)) && !st) {
    if (!ends_with(e->d_name, ".safetensors") || e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      char **nn = realloc(names, cap * sizeof *names);
      if (!nn) {
        st = mx__set_error(MX_ERR_OOM, "lm_load: out of memory");
        break;
      }
      names = nn;
    }
    if (!(names[n] = strdup(e->d_name))) st = mx__set_error(MX_ERR_OOM, "lm_load: out of memory");
    else n++;
  }
  closedir(d);
  if (!st && n == 0)
    st = mx__set_error(MX_ERR_NOT_FOUND,
                       "%s: no weights (model.safetensors, model.safetensors.index.json or "
                       "*.safetensors)", dir);
  if (!st) qsort(names, n, sizeof *names, cmp_str);
  mx_map *all = st ? NULL : mx_map_new();
  if (!st && !all) st = mx__set_error(MX_ERR_OOM, "lm_load: out of memory");
  for (size_t i = 0; i < n && !st; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    mx_map *part = NULL;
    st = mx_load(p, &part, NULL);
    for (int j = 0; !st && j < mx_map_size(part); j++) {
      if (mx_map_has(all, mx_map_key(part, j)))
        st = mx__set_error(MX_ERR_FORMAT, "%s: tensor \"%s\" is also in another file", p,
                           mx_map_key(part, j));
      else
        st = mx_map_set(all, mx_map_key(part, j), mx_map_value(part, j));
    }
    mx_map_free(part);
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  if (st) {
    mx_map_free(all);
    return st;
  }
  *out = all;
  return MX_OK;
}

/* ---- quantized layers ---------------------------------------------------------------- */

typedef struct {
  const mx_map *weights;
  const cJSON *quant; /* config "quantization" (per-module overrides) */
} quant_ctx;

static bool quant_pred(void *vctx, const char *path, mx_nn_module *m, int *gs, int *bits) {
  quant_ctx *q = vctx;
  char key[1024];
  snprintf(key, sizeof key, "%s.scales", path);
  if (!mx_map_has(q->weights, key)) return false;
  const cJSON *o = q->quant ? cJSON_GetObjectItemCaseSensitive(q->quant, path) : NULL;
  if (cJSON_IsObject(o)) {
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "group_size");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "bits");
    if (cJSON_IsNumber(g)) *gs = (int)g->valuedouble;
    if (cJSON_IsNumber(b)) *bits = (int)b->valuedouble;
  }
  return true;
}

static const char *first_scales_key(const mx_map *w) {
  for (int i = 0; i < mx_map_size(w); i++)
    if (ends_with(mx_map_key(w, i), ".scales")) return mx_map_key(w, i);
  return NULL;
}

/* Prefixes the pending error message with `what` (a copy is taken first:
 * the message buffer is rewritten). */
static int rewrap(int st, const char *dir, const char *what) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", mx_last_error());
  return mx__set_error(st, "%s: %s: %s", dir, what, msg);
}

/* ---- load -------------------------------------------------------------------------------- */

static int load_into(mx_lm_model *m, const char *dir, const mx_lm_load_options *opt) {
  char p[4096];
  struct stat sb;
  if (stat(dir, &sb) != 0)
    return mx__set_error(MX_ERR_NOT_FOUND, "%s: no such model directory", dir);
  if (!S_ISDIR(sb.st_mode))
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: a model is a directory (config.json and "
                         "*.safetensors), not a file", dir);
  snprintf(p, sizeof p, "%s/config.json", dir);
  if (!file_exists(dir, "config.json"))
    return mx__set_error(MX_ERR_NOT_FOUND, "%s: not a model directory (no config.json)", dir);
  char *json = mx__lm_read_file(p, NULL);
  if (!json) return mx_last_status();
  char *gen = NULL;
  if (file_exists(dir, "generation_config.json")) {
    char gp[4096];
    snprintf(gp, sizeof gp, "%s/generation_config.json", dir);
    if (!(gen = mx__lm_read_file(gp, NULL))) {
      free(json);
      return mx_last_status();
    }
  }
  bool tie_given = false;
  int st = mx__lm_parse_config(json, gen, p, &m->config, &tie_given);
  free(gen);
  mx_map *w = NULL;
  cJSON *cj = NULL;
  if (!st) st = load_weights(dir, &w);
  if (st) goto done;
  cj = cJSON_Parse(json);
  mx_lm_config *c = &m->config;

  /* mlx-lm's sanitize: drop precomputed rotary tables; tie when asked or
   * when the checkpoint has no output head and the config does not say. */
  for (int i = mx_map_size(w) - 1; i >= 0; i--)
    if (strstr(mx_map_key(w, i), "rotary_emb.inv_freq")) mx_map_remove(w, mx_map_key(w, i));
  if (!tie_given) c->tie_word_embeddings = !mx_map_has(w, "lm_head.weight");
  if (c->tie_word_embeddings) {
    mx_map_remove(w, "lm_head.weight");
    mx_map_remove(w, "lm_head.scales");
    mx_map_remove(w, "lm_head.biases");
  }

  if (!(m->root = mx__lm_build_llama(c))) {
    st = mx_last_status();
    goto done;
  }
  const char *sk = first_scales_key(w);
  if (c->quant_bits) {
    quant_ctx q = {w, cJSON_GetObjectItemCaseSensitive(cj, "quantization")};
    if ((st = mx_nn_quantize(m->root, c->quant_group_size, c->quant_bits, quant_pred, &q))) {
      rewrap(st, dir, "quantized layers");
      goto done;
    }
  } else if (sk) {
    st = mx__set_error(MX_ERR_FORMAT,
                       "%s: the weights are quantized (\"%s\") but config.json has no "
                       "\"quantization\" {group_size, bits}", dir, sk);
    goto done;
  }
  if ((st = mx_nn_load_weights_map(m->root, w, true))) {
    rewrap(st, dir, "the weights do not match config.json");
    goto done;
  }
  if (!opt || !opt->lazy) {
    mx_map *params = NULL;
    if (!(st = mx_nn_parameters(m->root, &params))) st = mx_map_eval(params);
    mx_map_free(params);
    if (st) goto done;
  }
  mx_nn_eval(m->root);

  if ((!opt || !opt->no_tokenizer) &&
      (file_exists(dir, "tokenizer.json") || file_exists(dir, "tokenizer.model"))) {
    if (!(m->tokenizer = mx_tokenizer_load(dir))) {
      st = rewrap(mx_last_status(), dir, "tokenizer");
      goto done;
    }
    int32_t eos = mx_tokenizer_eos_id(m->tokenizer);
    bool have = false;
    for (int i = 0; i < c->num_eos_token_ids; i++) have |= c->eos_token_ids[i] == eos;
    if (eos >= 0 && !have && c->num_eos_token_ids < MX_LM_MAX_EOS)
      c->eos_token_ids[c->num_eos_token_ids++] = eos;
  }
done:
  cJSON_Delete(cj);
  mx_map_free(w);
  free(json);
  return st;
}

mx_lm_model *mx_lm_load(const char *path, const mx_lm_load_options *opt) {
  if (!path) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_load: path is NULL");
    return NULL;
  }
  mx_lm_model *m = calloc(1, sizeof *m);
  if (!m) {
    mx__set_error(MX_ERR_OOM, "lm_load: out of memory");
    return NULL;
  }
  if (load_into(m, path, opt)) {
    mx_lm_free(m);
    return NULL;
  }
  return m;
}

void mx_lm_free(mx_lm_model *m) {
  if (!m) return;
  mx_nn_module_free(m->root);
  mx_tokenizer_free(m->tokenizer);
  mx_array_free(m->rope_freqs);
  mx__lm_stacks_free(m);
  free(m);
}

mx_nn_module *mx_lm_module(mx_lm_model *m) { return m ? m->root : NULL; }
const mx_lm_config *mx_lm_get_config(const mx_lm_model *m) { return m ? &m->config : NULL; }
mx_tokenizer *mx_lm_tokenizer(mx_lm_model *m) { return m ? m->tokenizer : NULL; }

bool mx_lm_is_eos(const mx_lm_model *m, int32_t id) {
  if (!m) return false;
  for (int i = 0; i < m->config.num_eos_token_ids; i++)
    if (m->config.eos_token_ids[i] == id) return true;
  return false;
}
