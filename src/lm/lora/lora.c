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
#include "lora_internal.h"

/* ---- wrapping ------------------------------------------------------------- */
static int num_model_layers(mx_nn_module *model) {
  mx_nn_module *inner = mx_nn_child(model, "model");
  if (!inner) return -1;
  return mx_nn_list_size(inner, "layers");
}

const char *mx__lora_type_name(mx_lora_fine_tune_type t) {
  return t == MX_LORA_FT_DORA ? "dora" : t == MX_LORA_FT_FULL ? "full" : "lora";
}

int mx__lora_type_parse(const char *s, const char *where, mx_lora_fine_tune_type *t) {
  if (!strcmp(s, "lora")) *t = MX_LORA_FT_LORA;
  else if (!strcmp(s, "dora")) *t = MX_LORA_FT_DORA;
  else if (!strcmp(s, "full")) *t = MX_LORA_FT_FULL;
  else
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: %s: fine_tune_type \"%s\" is not one of lora, dora, full",
                         where, s);
  return 0;
}

int mx_lora_apply(mx_nn_module *model, const mx_lora_config *c, uint64_t seed) {
  if (!model || !c || (c->type != MX_LORA_FT_FULL && (c->rank < 1 || c->nkeys < 1)))
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: bad arguments");
  int nl = num_model_layers(model);
  if (nl < 0) return mx__set_error(MX_ERR_INVALID_ARG, "lora: the model has no model.layers");
  if (c->num_layers > nl)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora: --num-layers %d but the model only has %d layers",
                         c->num_layers, nl);
  int n = c->num_layers < 0 ? nl : c->num_layers;
  int st = mx_nn_freeze(model, NULL, 0, true);
  if (c->type == MX_LORA_FT_FULL) {
    for (int l = nl - n; l < nl && !st; l++) {
      char path[64];
      snprintf(path, sizeof path, "model.layers.%d", l);
      mx_nn_module *layer = mx_nn_get(model, path);
      st = layer ? mx_nn_unfreeze(layer, NULL, 0, true) : mx_last_status();
    }
    return st;
  }
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
      mx_nn_module *w = c->type == MX_LORA_FT_DORA
                            ? mx_nn_dora_linear_new(lin, c->rank, c->scale, c->dropout, sub)
                            : mx_nn_lora_linear_new(lin, c->rank, c->scale, c->dropout, sub);
      st = mx_nn_replace(model, path, w);
      mx_array_free(sub);
      mx_array_free(ki);
    }
  }
  mx_array_free(keys);
  mx_array_free(key);
  return st;
}

/* ---- files ---------------------------------------------------------------- */
int mx__lora_make_dir(const char *dir) {
  struct stat sb;
  if (stat(dir, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) return 0;
    return mx__set_error(MX_ERR_IO, "lora: %s exists and is not a directory", dir);
  }
  if (mkdir(dir, 0777)) return mx__set_error(MX_ERR_IO, "lora: cannot create %s: %s", dir, strerror(errno));
  return 0;
}

int mx__lora_write_atomic(const char *path, const char *text) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return mx__set_error(MX_ERR_IO, "lora: cannot write %s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  bool ok = fwrite(text, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  if (ok && rename(tmp, path) == 0) return 0;
  remove(tmp);
  return mx__set_error(MX_ERR_IO, "lora: cannot write %s", path);
}

char *mx__lora_read_text(const char *path, size_t *len) {
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

int mx__lora_save_weights(mx_nn_module *model, const char *path) {
  mx_map *params = NULL;
  int st = mx_nn_trainable_parameters(model, &params);
  if (!st) st = mx_map_eval(params);
  if (!st) st = mx_save_safetensors(path, params, NULL); /* atomic replace */
  mx_map_free(params);
  return st;
}

/* lora_parameters and the adapter keys of mlx-lm's adapter_config.json; o
 * (may be NULL) adds every training option, as mlx-lm's save_config(vars(args)). */
cJSON *mx__lora_config_json(const mx_lora_config *c, const mx_lora_options *o) {
  cJSON *j = cJSON_CreateObject();
  if (o) {
    if (o->model) cJSON_AddStringToObject(j, "model", o->model);
    cJSON_AddBoolToObject(j, "train", true);
    if (o->data_dir) cJSON_AddStringToObject(j, "data", o->data_dir);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
  }
  cJSON_AddStringToObject(j, "fine_tune_type", mx__lora_type_name(c->type));
  cJSON_AddNumberToObject(j, "num_layers", c->num_layers);
  if (o) {
    static const char *const opt_names[] = {"adam", "adamw", "sgd"};
    cJSON_AddStringToObject(j, "optimizer", opt_names[o->optimizer]);
    cJSON_AddNumberToObject(j, "batch_size", (double)o->batch_size);
    cJSON_AddNumberToObject(j, "iters", (double)o->iters);
    cJSON_AddNumberToObject(j, "val_batches", (double)o->val_batches);
    cJSON_AddNumberToObject(j, "learning_rate", o->learning_rate);
    cJSON_AddNumberToObject(j, "steps_per_report", (double)o->steps_per_report);
    cJSON_AddNumberToObject(j, "steps_per_eval", (double)o->steps_per_eval);
    if (o->resume_adapter_file) cJSON_AddStringToObject(j, "resume_adapter_file", o->resume_adapter_file);
    else cJSON_AddNullToObject(j, "resume_adapter_file");
    cJSON_AddStringToObject(j, "adapter_path", o->adapter_path);
    cJSON_AddNumberToObject(j, "save_every", (double)o->save_every);
    cJSON_AddNumberToObject(j, "test_batches", (double)o->test_batches);
    cJSON_AddNumberToObject(j, "max_seq_length", (double)o->max_seq_length);
    cJSON_AddNumberToObject(j, "grad_accumulation_steps", (double)o->grad_accumulation_steps);
    cJSON_AddBoolToObject(j, "grad_checkpoint", o->grad_checkpoint);
    cJSON_AddBoolToObject(j, "mask_prompt", o->mask_prompt);
    if (o->lr_schedule.name[0]) {
      cJSON *ls = cJSON_AddObjectToObject(j, "lr_schedule");
      cJSON_AddStringToObject(ls, "name", o->lr_schedule.name);
      cJSON *args = cJSON_AddArrayToObject(ls, "arguments");
      for (int i = 0; i < o->lr_schedule.narguments; i++)
        cJSON_AddItemToArray(args, cJSON_CreateNumber(o->lr_schedule.arguments[i]));
      cJSON_AddNumberToObject(ls, "warmup", (double)o->lr_schedule.warmup);
      cJSON_AddNumberToObject(ls, "warmup_init", o->lr_schedule.warmup_init);
    } else {
      cJSON_AddNullToObject(j, "lr_schedule");
    }
  }
  cJSON *lp = cJSON_AddObjectToObject(j, "lora_parameters");
  cJSON_AddNumberToObject(lp, "rank", c->rank);
  cJSON_AddNumberToObject(lp, "scale", c->scale);
  cJSON_AddNumberToObject(lp, "dropout", c->dropout);
  cJSON *ks = cJSON_AddArrayToObject(lp, "keys");
  for (int i = 0; i < c->nkeys; i++) cJSON_AddItemToArray(ks, cJSON_CreateString(c->keys[i]));
  return j;
}

int mx_lora_save(mx_nn_module *model, const mx_lora_config *c, const char *dir) {
  if (!model || !c || !dir) return mx__set_error(MX_ERR_INVALID_ARG, "lora save: bad arguments");
  int st = mx__lora_make_dir(dir);
  if (st) return st;
  char path[4096];
  snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
  st = mx__lora_save_weights(model, path);
  if (st) return st;
  cJSON *j = mx__lora_config_json(c, NULL);
  char *text = j ? cJSON_Print(j) : NULL;
  cJSON_Delete(j);
  if (!text) return mx__set_error(MX_ERR_OOM, "lora save: out of memory");
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  st = mx__lora_write_atomic(path, text);
  free(text);
  return st;
}

int mx_lora_read_config(const char *dir, mx_lora_config *c) {
  if (!dir || !c) return mx__set_error(MX_ERR_INVALID_ARG, "lora: bad arguments");
  char path[4096];
  snprintf(path, sizeof path, "%s/adapter_config.json", dir);
  char *text = mx__lora_read_text(path, NULL);
  if (!text) return mx_last_status();
  cJSON *j = cJSON_Parse(text);
  free(text);
  if (!j) return mx__set_error(MX_ERR_FORMAT, "lora: %s is not valid JSON", path);
  *c = MX_LORA_CONFIG_DEFAULTS;
  int st = 0;
  cJSON *ft = cJSON_GetObjectItem(j, "fine_tune_type");
  cJSON *nl = cJSON_GetObjectItem(j, "num_layers");
  cJSON *lp = cJSON_GetObjectItem(j, "lora_parameters");
  if (cJSON_IsString(ft)) st = mx__lora_type_parse(ft->valuestring, path, &c->type);
  if (!st && (!cJSON_IsNumber(nl) || (c->type != MX_LORA_FT_FULL && !cJSON_IsObject(lp))))
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
    if (!st && c->type != MX_LORA_FT_FULL && (c->rank < 1 || c->nkeys < 1))
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

/* A QuantizedLinear / QuantizedEmbedding as a float Linear / Embedding
 * (new reference). */
static mx_nn_module *dequantize_layer(mx_nn_module *q) {
  int gs = 0, bits = 0;
  if (mx_nn_quantized_info(q, &gs, &bits)) return NULL;
  mx_array *w = mx_dequantize(mx_nn_param(q, "weight"), mx_nn_param(q, "scales"),
                              mx_nn_param(q, "biases"), gs, bits);
  if (!w) return NULL;
  bool emb = !strcmp(mx_nn_module_type(q), "QuantizedEmbedding");
  bool bias = !emb && mx_nn_has_param(q, "bias");
  int64_t rows = mx_array_dim(w, 0), cols = mx_array_dim(w, 1);
  mx_nn_module *out = emb ? mx_nn_embedding_new(rows, cols, NULL) : mx_nn_linear_new(cols, rows, bias, NULL);
  if (!out || mx_nn_add_param(out, "weight", w) ||
      (bias && mx_nn_add_param(out, "bias", mx_array_retain(mx_nn_param(q, "bias"))))) {
    if (!out) mx_array_free(w);
    mx_nn_module_free(out);
    return NULL;
  }
  return out;
}

int mx_lora_fuse_all_ex(mx_nn_module *model, bool dequantize) {
  mx_nn_modules mods = MX_NN_MODULES_INIT;
  int st = mx_nn_named_modules(model, false, &mods);
  for (int i = 0; i < mods.size && !st; i++) {
    const char *t = mx_nn_module_type(mods.modules[i]);
    if (!strcmp(t, "LoRALinear") || !strcmp(t, "DoRALinear"))
      st = mx_nn_replace(model, mods.paths[i], mx_nn_lora_fuse(mods.modules[i], dequantize));
  }
  mx_nn_modules_clear(&mods);
  if (st || !dequantize) return st;
  /* The remaining quantized layers (mlx-lm's dequantize). */
  st = mx_nn_named_modules(model, true, &mods);
  for (int i = 0; i < mods.size && !st; i++) {
    const char *t = mx_nn_module_type(mods.modules[i]);
    if (strcmp(t, "QuantizedLinear") && strcmp(t, "QuantizedEmbedding")) continue;
    st = mx_nn_replace(model, mods.paths[i], dequantize_layer(mods.modules[i]));
  }
  mx_nn_modules_clear(&mods);
  return st;
}

int mx_lora_fuse_all(mx_nn_module *model) { return mx_lora_fuse_all_ex(model, false); }

static int copy_file(const char *src, const char *dst) {
  size_t n;
  char *t = mx__lora_read_text(src, &n);
  if (!t) return mx_last_status();
  FILE *f = fopen(dst, "wb");
  int st = 0;
  if (!f || fwrite(t, 1, n, f) != n) st = mx__set_error(MX_ERR_IO, "lora: cannot write %s", dst);
  if (f && fclose(f)) st = mx__set_error(MX_ERR_IO, "lora: cannot write %s", dst);
  free(t);
  return st;
}

int mx_lora_fuse_dir(const char *model_dir, const char *adapter_dir, const char *out_dir) {
  return mx_lora_fuse_dir_ex(model_dir, adapter_dir, out_dir, false);
}

/* config.json of model_dir without "quantization" (and
 * "quantization_config") into out_dir. */
static int write_dequantized_config(const char *model_dir, const char *out_dir) {
  char src[4096], dst[4096];
  snprintf(src, sizeof src, "%s/config.json", model_dir);
  snprintf(dst, sizeof dst, "%s/config.json", out_dir);
  char *t = mx__lora_read_text(src, NULL);
  if (!t) return mx_last_status();
  cJSON *j = cJSON_Parse(t);
  free(t);
  if (!j) return mx__set_error(MX_ERR_FORMAT, "lora fuse: %s is not valid JSON", src);
  cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization");
  cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization_config");
  char *out = cJSON_Print(j);
  cJSON_Delete(j);
  if (!out) return mx__set_error(MX_ERR_OOM, "lora fuse: out of memory");
  int st = mx__lora_write_atomic(dst, out);
  free(out);
  return st;
}

int mx_lora_fuse_dir_ex(const char *model_dir, const char *adapter_dir, const char *out_dir,
                        bool dequantize) {
  if (!model_dir || !adapter_dir || !out_dir)
    return mx__set_error(MX_ERR_INVALID_ARG, "lora fuse: bad arguments");
  mx_lm_model *m = mx_lm_load(model_dir, &(mx_lm_load_options){.no_tokenizer = true});
  if (!m) return mx_last_status();
  mx_nn_module *root = mx_lm_module(m);
  int st = mx_lora_load_adapters(root, adapter_dir);
  if (!st) st = mx_lora_fuse_all_ex(root, dequantize);
  if (!st) st = mx__lora_make_dir(out_dir);
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
    if (i == 0 && dequantize) {
      st = write_dequantized_config(model_dir, out_dir);
      continue;
    }
    snprintf(dst, sizeof dst, "%s/%s", out_dir, files[i]);
    st = copy_file(src, dst);
  }
  mx_lm_free(m);
  return st;
}
