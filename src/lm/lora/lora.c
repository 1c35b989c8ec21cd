/* lora.c — LoRA adapters: wrapping, saving/loading in mlx-lm's layout,
 * fusing, jsonl datasets and the training loop (mlx-lm's tuner). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../core/internal.h"
#include "mxc/chat_template.h"
#include "mxc/io.h"
#include "mxc/lora.h"
#include "mxc/ops.h"
#include "mxc/optim.h"
#include "mxc/random.h"
#include "mxc/train.h"

/* ---- wrapping ------------------------------------------------------------- */
static int num_model_layers(mx_nn_module *model) {
  mx_nn_module *inner = mx_nn_child(model, "model");
  if (!inner) return -1;
  return mx_nn_list_size(inner, "layers");
}

int mx_lora_apply(mx_nn_module *model, const mx_lora_config *c, uint64_t seed) {
  if (!model || !c || c->rank < 1 || c->nkeys < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: bad arguments");
  int nl = num_model_layers(model);
  if (nl < 0) return mx__set_error(MX_ERR_INVALID_ARG, "lora: the model has no model.layers");
  int n = c->num_layers < 0 || c->num_layers > nl ? nl : c->num_layers;
  int st = mx_nn_freeze(model, NULL, 0, true);
  mx_array *key = mx_random_key(seed);
  mx_array *keys = key ? mx_random_split(key, n * c->nkeys > 0 ? n * c->nkeys : 1) : NULL;
  if (!keys) st = mx_last_status();
  int k = 0;
  for (int l = nl - n; l < nl && !st; l++) {
    for (int j = 0; j < c->nkeys && !st; j++, k++) {
      char path[256];
      snprintf(path, sizeof path, "model.layers.%d.%s", l, c->keys[j]);
      mx_nn_module *lin = mx_nn_get(model, path);
      if (!lin) {
        st = mx_last_status();
        break;
      }
      mx_array *ki = mx_array_from_data(&(int32_t){k}, NULL, 0, MX_INT32);
      mx_array *sub = mx_take(keys, ki, 0);
      st = mx_nn_replace(model, path, mx_nn_lora_linear_new(lin, c->rank, c->scale, c->dropout, sub));
      mx_array_free(sub);
      mx_array_free(ki);
    }
  }
  mx_array_free(keys);
  mx_array_free(key);
  return st;
}

/* ---- files ---------------------------------------------------------------- */
static int make_dir(const char *dir) {
  struct stat sb;
  if (stat(dir, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) return 0;
    return mx__set_error(MX_ERR_IO, "lora: %s exists and is not a directory", dir);
  }
  if (mkdir(dir, 0777)) return mx__set_error(MX_ERR_IO, "lora: cannot create %s: %s", dir, strerror(errno));
  return 0;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return mx__set_error(MX_ERR_IO, "lora: cannot write %s: %s", path, strerror(errno));
  size_t n = strlen(text);
  bool ok = fwrite(text, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : mx__set_error(MX_ERR_IO, "lora: cannot write %s", path);
}

static char *read_text(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(MX_ERR_IO, "lora: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      char *b = realloc(buf, cap *= 2);
      if (!b) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = b;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    if (!r) break;
    n += r;
  }
  fclose(f);
  if (!buf) {
    mx__set_error(MX_ERR_OOM, "lora: out of memory reading %s", path);
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

int mx_lora_save(mx_nn_module *model, const mx_lora_config *c, const char *dir) {
  if (!model || !c || !dir) return mx__set_error(MX_ERR_INVALID_ARG, "lora save: bad arguments");
  int st = make_dir(dir);
  if (st) return st;
  mx_map *params = NULL;
  st = mx_nn_trainable_parameters(model, &params);
  if (!st) st = mx_map_eval(params);
  char path[4096];
  snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
  if (!st) st = mx_save_safetensors(path, params, NULL);
  mx_map_free(params);
  if (st) return st;
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "fine_tune_type", "lora");
  cJSON_AddNumberToObject(j, "num_layers", c->num_layers);
  cJSON *lp = cJSON_AddObjectToObject(j, "lora_parameters");
  cJSON_AddNumberToObject(lp, "rank", c->rank);
  cJSON_AddNumberToObject(lp, "scale", c->scale);
  cJSON_AddNumberToObject(lp, "dropout", c->dropout);
  cJSON *ks = cJSON_AddArrayToObject(lp, "keys");
  for (int i = 0; i < c->nkeys; i++) cJSON_AddItemToArray(ks, cJSON_CreateString(c->keys[i]));
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  if (!text) return mx__set_error(MX_ERR_OOM, "lora save: out of memory");
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  st = write_text(path, text);
  free(text);
  return st;
}

int mx_lora_read_config(const char *dir, mx_lora_config *c) {
  if (!dir || !c) return mx__set_error(MX_ERR_INVALID_ARG, "lora: bad arguments");
  char path[4096];
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  char *text = read_text(path, NULL);
  if (!text) return mx_last_status();
  cJSON *j = cJSON_Parse(text);
  free(text);
  if (!j) return mx__set_error(MX_ERR_FORMAT, "lora: %s is not valid JSON", path);
  *c = MX_LORA_CONFIG_DEFAULTS;
  int st = 0;
  cJSON *ft = cJSON_GetObjectItem(j, "fine_tune_type");
  cJSON *nl = cJSON_GetObjectItem(j, "num_layers");
  cJSON *lp = cJSON_GetObjectItem(j, "lora_parameters");
  if (cJSON_IsString(ft) && strcmp(ft->valuestring, "lora"))
    st = mx__set_error(MX_ERR_UNSUPPORTED, "lora: %s: fine_tune_type \"%s\" is not supported (only \"lora\")",
                       path, ft->valuestring);
  else if (!cJSON_IsNumber(nl) || !cJSON_IsObject(lp))
    st = mx__set_error(MX_ERR_FORMAT, "lora: %s needs num_layers and lora_parameters", path);
  if (!st) {
    c->num_layers = nl->valueint;
    cJSON *r = cJSON_GetObjectItem(lp, "rank"), *s = cJSON_GetObjectItem(lp, "scale");
    cJSON *d = cJSON_GetObjectItem(lp, "dropout"), *ks = cJSON_GetObjectItem(lp, "keys");
    if (cJSON_IsNumber(r)) c->rank = r->valueint;
    if (cJSON_IsNumber(s)) c->scale = s->valuedouble;
    if (cJSON_IsNumber(d)) c->dropout = d->valuedouble;
    if (cJSON_IsArray(ks)) {
      c->nkeys = 0;
      cJSON *k;
      cJSON_ArrayForEach(k, ks) {
        if (!cJSON_IsString(k) || c->nkeys >= MX_LORA_MAX_KEYS || strlen(k->valuestring) >= 64) {
          st = mx__set_error(MX_ERR_FORMAT, "lora: %s: bad lora_parameters.keys", path);
          break;
        }
        snprintf(c->keys[c->nkeys++], 64, "%s", k->valuestring);
      }
    }
    if (!st && (c->rank < 1 || c->nkeys < 1))
      st = mx__set_error(MX_ERR_FORMAT, "lora: %s: bad rank or keys", path);
  }
  cJSON_Delete(j);
  return st;
}

int mx_lora_load_adapters(mx_nn_module *model, const char *dir) {
  mx_lora_config c;
  int st = mx_lora_read_config(dir, &c);
  if (!st) st = mx_lora_apply(model, &c, 0);
  if (st) return st;
  char path[4096];
  snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
  mx_map *w = NULL;
  st = mx_load(path, &w, NULL);
  if (!st) st = mx_nn_update(model, w, MX_NN_UPDATE_PARTIAL);
  mx_map_free(w);
  return st;
}

int mx_lora_fuse_all(mx_nn_module *model) {
  mx_nn_modules mods = MX_NN_MODULES_INIT;
  int st = mx_nn_named_modules(model, false, &mods);
  for (int i = 0; i < mods.size && !st; i++) {
    if (strcmp(mx_nn_module_type(mods.modules[i]), "LoRALinear")) continue;
    st = mx_nn_replace(model, mods.paths[i], mx_nn_lora_fuse(mods.modules[i], false));
  }
  mx_nn_modules_clear(&mods);
  return st;
}

static int copy_file(const char *src, const char *dst) {
  size_t n;
  char *t = read_text(src, &n);
  if (!t) return mx_last_status();
  FILE *f = fopen(dst, "wb");
  int st = 0;
  if (!f || fwrite(t, 1, n, f) != n) st = mx__set_error(MX_ERR_IO, "lora: cannot write %s", dst);
  if (f && fclose(f)) st = mx__set_error(MX_ERR_IO, "lora: cannot write %s", dst);
  free(t);
  return st;
}

int mx_lora_fuse_dir(const char *model_dir, const char *adapter_dir, const char *out_dir) {
  if (!model_dir || !adapter_dir || !out_dir)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora fuse: bad arguments");
  mx_lm_model *m = mx_lm_load(model_dir, &(mx_lm_load_options){.no_tokenizer = true});
  if (!m) return mx_last_status();
  mx_nn_module *root = mx_lm_module(m);
  int st = mx_lora_load_adapters(root, adapter_dir);
  if (!st) st = mx_lora_fuse_all(root);
  if (!st) st = make_dir(out_dir);
  char src[4096], dst[4096];
  snprintf(dst, sizeof dst, "%s/model.safetensors", out_dir);
  if (!st) st = mx_nn_save_weights(root, dst);
  static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                      "tokenizer.model", "special_tokens_map.json",
                                      "generation_config.json", "chat_template.jinja"};
  for (size_t i = 0; i < sizeof files / sizeof *files && !st; i++) {
    struct stat sb;
    snprintf(src, sizeof src, "%s/%s", model_dir, files[i]);
    if (stat(src, &sb)) continue;
    snprintf(dst, sizeof dst, "%s/%s", out_dir, files[i]);
    st = copy_file(src, dst);
  }
  mx_lm_free(m);
  return st;
}
