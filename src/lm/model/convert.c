/* convert.c — `mxc convert --hf-path`: an HF/MLX model directory to an MLX
 * directory (cast, quantize as mlx_lm.convert, dequantize, sharded
 * safetensors with {"format":"mlx"}), and the GGUF export (llama arch). */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "array_impl.h"
#include "lm_internal.h"
#include "mxc/hub.h"
#include "mxc/io.h"
#include "mxc/ops.h"

static bool ends_with_(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !memcmp(s + a - b, suf, b);
}

static bool is_float_dtype(mx_dtype d) {
  return d == MX_FLOAT16 || d == MX_BFLOAT16 || d == MX_FLOAT32 || d == MX_FLOAT64;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  int st = MX_OK;
  if (!f || fputs(text, f) < 0 || fputc('\n', f) == EOF)
    st = mx__set_error(MX_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
  if (f && fclose(f) && !st) st = mx__set_error(MX_ERR_IO, "%s: cannot write", path);
  return st;
}

static int copy_file(const char *from, const char *to) {
  size_t n = 0;
  char *buf = mx__lm_read_file(from, &n);
  if (!buf) return mx_last_status();
  FILE *f = fopen(to, "wb");
  int st = MX_OK;
  if (!f || fwrite(buf, 1, n, f) != n)
    st = mx__set_error(MX_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
  if (f && fclose(f) && !st) st = mx__set_error(MX_ERR_IO, "%s: cannot write", to);
  free(buf);
  return st;
}

static int merge_file(mx_map *all, const char *path) {
  mx_map *w = NULL;
  int st = mx_load(path, &w, NULL);
  for (int i = 0; !st && i < mx_map_size(w); i++)
    st = mx_map_set(all, mx_map_key(w, i), mx_map_value(w, i));
  mx_map_free(w);
  return st;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* All weights of dir: the shards of model.safetensors.index.json, else
 * every model*.safetensors (as mlx-lm's glob). */
static int load_dir_weights(const char *dir, mx_map **out) {
  char p[4096];
  mx_map *all = mx_map_new();
  if (!all) return mx_last_status();
  int st = MX_OK, nfiles = 0;
  DIR *d = opendir(dir);
  if (!d) {
    mx_map_free(all);
    return mx__set_error(MX_ERR_NOT_FOUND, "%s: cannot open the model directory: %s", dir,
                         strerror(errno));
  }
  char **names = NULL;
  int cap = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (strncmp(e->d_name, "model", 5) || !ends_with_(e->d_name, ".safetensors")) continue;
    if (nfiles == cap) {
      cap = cap ? cap * 2 : 8;
      char **nn = realloc(names, sizeof *names * (size_t)cap);
      if (!nn) {
        st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
        break;
      }
      names = nn;
    }
    if (!(names[nfiles] = strdup(e->d_name))) {
      st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
      break;
    }
    nfiles++;
  }
  closedir(d);
  if (!st && nfiles == 0)
    st = mx__set_error(MX_ERR_NOT_FOUND, "%s: no model*.safetensors files", dir);
  if (!st) qsort(names, (size_t)nfiles, sizeof *names, cmp_str);
  for (int i = 0; !st && i < nfiles; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    st = merge_file(all, p);
  }
  for (int i = 0; i < nfiles; i++) free(names[i]);
  free(names);
  if (st) {
    mx_map_free(all);
    return st;
  }
  *out = all;
  return MX_OK;
}

static int json_int(const cJSON *o, const char *k, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? (int)v->valuedouble : dflt;
}

/* <base>.weight = dequantize(<base>.weight, .scales, .biases) for every
 * quantized module (group_size/bits from "quantization", with per-module
 * overrides). */
static int dequantize_all(mx_map *w, const cJSON *quant) {
  int gs0 = json_int(quant, "group_size", 64), bits0 = json_int(quant, "bits", 4);
  for (int i = mx_map_size(w) - 1; i >= 0; i--) {
    const char *k = mx_map_key(w, i);
    if (!ends_with_(k, ".scales")) continue;
    char base[1024], kw[1100], ks[1100], kb[1100];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(k) - 7), k);
    snprintf(kw, sizeof kw, "%s.weight", base);
    snprintf(ks, sizeof ks, "%s.scales", base);
    snprintf(kb, sizeof kb, "%s.biases", base);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(quant, base);
    int gs = cJSON_IsObject(o) ? json_int(o, "group_size", gs0) : gs0;
    int bits = cJSON_IsObject(o) ? json_int(o, "bits", bits0) : bits0;
    mx_array *wq = mx_map_get(w, kw), *s = mx_map_get(w, ks), *b = mx_map_get(w, kb);
    if (!wq || !b)
      return mx__set_error(MX_ERR_FORMAT, "convert: %s has scales but no %s", base,
                           wq ? "biases" : "weight");
    mx_array *d = mx_dequantize(wq, s, b, gs, bits);
    if (!d) return mx_last_status();
    int st = mx_map_set_take(w, kw, d);
    if (st) return st;
    mx_map_remove(w, ks);
    mx_map_remove(w, kb);
    i = mx_map_size(w); /* the map changed: rescan */
  }
  return MX_OK;
}

static bool is_quantized_map(const mx_map *w) {
  for (int i = 0; i < mx_map_size(w); i++)
    if (ends_with_(mx_map_key(w, i), ".scales")) return true;
  return false;
}

/* Resolves src, reads config.json (parsed JSON) and the weights, drops
 * rotary tables (and lm_head when tied) like mlx-lm's sanitize. */
static int open_source(const char *src, char *dir, size_t n, cJSON **cfg, mx_map **w) {
  int st = mx_hub_resolve(src, dir, n);
  if (st) return st;
  char p[4096];
  snprintf(p, sizeof p, "%s/config.json", dir);
  char *json = mx__lm_read_file(p, NULL);
  if (!json) return mx_last_status();
  *cfg = cJSON_Parse(json);
  free(json);
  if (!*cfg || !cJSON_IsObject(*cfg)) {
    cJSON_Delete(*cfg);
    *cfg = NULL;
    return mx__set_error(MX_ERR_FORMAT, "%s: not valid JSON (an object)", p);
  }
  if ((st = load_dir_weights(dir, w))) {
    cJSON_Delete(*cfg);
    *cfg = NULL;
    return st;
  }
  for (int i = mx_map_size(*w) - 1; i >= 0; i--)
    if (strstr(mx_map_key(*w, i), "rotary_emb.inv_freq")) mx_map_remove(*w, mx_map_key(*w, i));
  if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(*cfg, "tie_word_embeddings"))) {
    mx_map_remove(*w, "lm_head.weight");
    mx_map_remove(*w, "lm_head.scales");
    mx_map_remove(*w, "lm_head.biases");
  }
  return MX_OK;
}

static int cast_all(mx_map *w, int dtype) {
  if (dtype < 0) return MX_OK;
  for (int i = 0; i < mx_map_size(w); i++) {
    mx_array *a = mx_map_value(w, i);
    if (!is_float_dtype(mx_array_dtype(a)) || mx_array_dtype(a) == (mx_dtype)dtype) continue;
    mx_array *c = mx_astype(a, (mx_dtype)dtype);
    if (!c) return mx_last_status();
    int st = mx_map_set_take(w, mx_map_key(w, i), c);
    if (st) return st;
  }
  return MX_OK;
}

/* nn.quantize's default predicate on the llama-family module trees: the
 * Linear and Embedding layers (every 2-D "<path>.weight"), when the last
 * dim is divisible by the group size. */
static int quantize_all(mx_map *w, int gs, int bits) {
  char **keys = malloc(sizeof *keys * (size_t)(mx_map_size(w) + 1));
  if (!keys) return mx__set_error(MX_ERR_OOM, "convert: out of memory");
  int nk = 0, st = MX_OK;
  for (int i = 0; i < mx_map_size(w); i++) {
    mx_array *a = mx_map_value(w, i);
    const char *k = mx_map_key(w, i);
    if (!ends_with_(k, ".weight") || mx_array_ndim(a) != 2 ||
        !is_float_dtype(mx_array_dtype(a)) || mx_array_shape(a)[1] % gs)
      continue;
    if (!(keys[nk] = strdup(k))) {
      st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
      break;
    }
    nk++;
  }
  for (int i = 0; !st && i < nk; i++) {
    mx_array *wq = NULL, *s = NULL, *b = NULL;
    if ((st = mx_quantize(mx_map_get(w, keys[i]), gs, bits, &wq, &s, &b))) break;
    char base[1024], kk[1100];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(keys[i]) - 7), keys[i]);
    st = mx_map_set_take(w, keys[i], wq);
    snprintf(kk, sizeof kk, "%s.scales", base);
    if (!st) st = mx_map_set_take(w, kk, s);
    else mx_array_free(s);
    snprintf(kk, sizeof kk, "%s.biases", base);
    if (!st) st = mx_map_set_take(w, kk, b);
    else mx_array_free(b);
  }
  for (int i = 0; i < nk; i++) free(keys[i]);
  free(keys);
  return st;
}

/* Writes the weights as mlx-lm's save_model: shards of at most
 * shard_bytes (model.safetensors when one, else model-0000i-of-0000n),
 * and model.safetensors.index.json. */
static int save_sharded(const char *dst, mx_map *w, int64_t shard_bytes) {
  int n = mx_map_size(w), st = MX_OK;
  char **keys = malloc(sizeof *keys * (size_t)(n + 1));
  int *shard = malloc(sizeof *shard * (size_t)(n + 1));
  mx_metadata *meta = mx_metadata_new();
  cJSON *idx = cJSON_CreateObject();
  if (!keys || !shard || !meta || !idx) {
    st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
    goto done;
  }
  for (int i = 0; i < n; i++) keys[i] = (char *)mx_map_key(w, i);
  qsort(keys, (size_t)n, sizeof *keys, cmp_str);
  int nshards = 0;
  int64_t cur = 0, total = 0;
  for (int i = 0; i < n; i++) {
    int64_t b = (int64_t)mx_array_nbytes(mx_map_get(w, keys[i]));
    if (nshards == 0 || (cur + b > shard_bytes && cur > 0)) {
      nshards++;
      cur = 0;
    }
    cur += b;
    total += b;
    shard[i] = nshards - 1;
  }
  if ((st = mx_metadata_set_string(meta, "format", "mlx"))) goto done;
  cJSON *m = cJSON_AddObjectToObject(idx, "metadata");
  cJSON_AddNumberToObject(m, "total_size", (double)total);
  cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
  for (int s = 0; !st && s < nshards; s++) {
    char name[64], p[4096];
    if (nshards == 1) snprintf(name, sizeof name, "model.safetensors");
    else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, nshards);
    mx_map *part = mx_map_new();
    if (!part) {
      st = mx_last_status();
      break;
    }
    for (int i = 0; !st && i < n; i++)
      if (shard[i] == s) {
        st = mx_map_set(part, keys[i], mx_map_get(w, keys[i]));
        cJSON_AddStringToObject(wm, keys[i], name);
      }
    if (!st) st = mx_map_eval(part);
    snprintf(p, sizeof p, "%s/%s", dst, name);
    if (!st) st = mx_save_safetensors(p, part, meta);
    mx_map_free(part);
  }
  if (!st) {
    char p[4096];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dst);
    char *text = cJSON_Print(idx);
    st = text ? write_text(p, text) : mx__set_error(MX_ERR_OOM, "convert: out of memory");
    free(text);
  }
done:
  free(keys);
  free(shard);
  mx_metadata_free(meta);
  cJSON_Delete(idx);
  return st;
}

static const char *const k_copy_files[] = {
    "tokenizer.json",     "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt",         "chat_template.jinja",   "chat_template.json",
    "generation_config.json"};

int mx__lm_convert(const mx__lm_convert_opts *o) {
  if (!o || !o->src || !o->dst)
    return mx__set_error(MX_ERR_INVALID_ARG, "convert: a source and a destination are needed");
  if (o->quantize && o->dequantize)
    return mx__set_error(MX_ERR_INVALID_ARG,
                         "convert: choose either quantize (-q) or dequantize (-d), not both");
  if (o->quantize) {
    int b = o->bits, g = o->group_size;
    if (!(b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8))
      return mx__set_error(MX_ERR_INVALID_ARG, "convert: --q-bits %d is not supported "
                           "(2, 3, 4, 5, 6 or 8)", b);
    if (!(g == 32 || g == 64 || g == 128))
      return mx__set_error(MX_ERR_INVALID_ARG, "convert: --q-group-size %d is not supported "
                           "(32, 64 or 128)", g);
  }
  if (o->dtype >= 0 && !is_float_dtype((mx_dtype)o->dtype))
    return mx__set_error(MX_ERR_INVALID_ARG, "convert: --dtype must be a floating type");
  char dir[4096];
  cJSON *cfg = NULL;
  mx_map *w = NULL;
  struct stat sb;
  if (stat(o->dst, &sb) == 0) /* as mlx_lm.convert: never write into an existing path */
    return mx__set_error(MX_ERR_INVALID_ARG, "convert: cannot save to %s: it already exists "
                         "(delete it or choose another --mlx-path)", o->dst);
  int st = open_source(o->src, dir, sizeof dir, &cfg, &w);
  if (st) return st;
  bool quantized = is_quantized_map(w);
  cJSON *q = cJSON_GetObjectItemCaseSensitive(cfg, "quantization");
  if (!q) q = cJSON_GetObjectItemCaseSensitive(cfg, "quantization_config");
  if (o->quantize && quantized) {
    st = mx__set_error(MX_ERR_INVALID_ARG, "convert: %s is already quantized (use -d to "
                       "dequantize it first)", o->src);
    goto done;
  }
  if (o->dequantize) {
    if (!quantized) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "convert: %s is not quantized (nothing to "
                         "dequantize)", o->src);
      goto done;
    }
    if (!cJSON_IsObject(q)) {
      st = mx__set_error(MX_ERR_FORMAT, "convert: %s has quantized weights but config.json "
                         "has no \"quantization\"", o->src);
      goto done;
    }
    if ((st = dequantize_all(w, q))) goto done;
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization");
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
  }
  if ((st = cast_all(w, o->dtype))) goto done;
  if (o->quantize) {
    if ((st = quantize_all(w, o->group_size, o->bits))) goto done;
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization");
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    cJSON *qq = cJSON_AddObjectToObject(cfg, "quantization");
    cJSON_AddNumberToObject(qq, "group_size", o->group_size);
    cJSON_AddNumberToObject(qq, "bits", o->bits);
  }
  if (mkdir(o->dst, 0777) != 0) {
    st = mx__set_error(MX_ERR_IO, "convert: cannot create %s: %s", o->dst, strerror(errno));
    goto done;
  }
  if ((st = save_sharded(o->dst, w, o->shard_bytes > 0 ? o->shard_bytes : (int64_t)5 << 30)))
    goto done;
  {
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", o->dst);
    char *text = cJSON_Print(cfg);
    st = text ? write_text(p, text) : mx__set_error(MX_ERR_OOM, "convert: out of memory");
    free(text);
  }
  for (size_t i = 0; !st && i < sizeof k_copy_files / sizeof *k_copy_files; i++) {
    char from[4200], to[4200];
    snprintf(from, sizeof from, "%s/%s", dir, k_copy_files[i]);
    snprintf(to, sizeof to, "%s/%s", o->dst, k_copy_files[i]);
    if (stat(from, &sb) == 0) st = copy_file(from, to);
  }
done:
  mx_map_free(w);
  cJSON_Delete(cfg);
  return st;
}

/* ---- GGUF export ----------------------------------------------------------------------- */

/* llama.cpp's convert permute for llama-arch HF checkpoints (rotate-half
 * rows back to interleaved pairs): (H, 2, hd/2, C) -> (H, hd/2, 2, C). */
static mx_array *permute_qk(mx_array *a, int64_t heads) {
  const int64_t *sh = mx_array_shape(a);
  int64_t r = sh[0], c = sh[1];
  if (heads <= 0 || r % (heads * 2)) {
    mx__set_error(MX_ERR_SHAPE, "convert: %lld rows do not split into %lld heads",
                  (long long)r, (long long)heads);
    return NULL;
  }
  mx_array *x = mx_reshape(a, (int64_t[]){heads, 2, r / heads / 2, c}, 4);
  mx_array *t = mx_swapaxes(x, 1, 2);
  mx_array *y = mx_reshape(t, (int64_t[]){r, c}, 2);
  mx_array_free(x);
  mx_array_free(t);
  return y;
}

static int meta_u32(mx_metadata *m, const char *k, uint64_t v) {
  return mx_metadata_set(m, k, &(mx_meta_value){.type = MX_META_UINT32, .v.u = v});
}
static int meta_f32(mx_metadata *m, const char *k, double v) {
  return mx_metadata_set(m, k, &(mx_meta_value){.type = MX_META_FLOAT32, .v.f = v});
}


/* llama.cpp's rope_freqs.weight for llama3 rope scaling: per rotary pair,
 * 1 / the factor that stretches its period (1 for short wavelengths,
 * `factor` for long ones, smoothed in between). */
static mx_array *llama3_rope_factors(const mx_lm_config *c, int64_t hd) {
  int64_t n = hd / 2;
  float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!f) {
    mx__set_error(MX_ERR_OOM, "convert: out of memory");
    return NULL;
  }
  double old = (double)c->rope_original_max_position_embeddings;
  double lo = old / c->rope_low_freq_factor, hi = old / c->rope_high_freq_factor;
  for (int64_t i = 0; i < n; i++) {
    double freq = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)hd);
    double wl = 2.0 * M_PI / freq;
    if (wl < hi) f[i] = 1.0f;
    else if (wl > lo) f[i] = (float)c->rope_factor;
    else {
      double sm = (old / wl - c->rope_low_freq_factor) /
                  (c->rope_high_freq_factor - c->rope_low_freq_factor);
      f[i] = (float)(1.0 / ((1.0 - sm) / c->rope_factor + sm));
    }
  }
  mx_array *a = mx_array_from_data(f, (int64_t[]){n}, 1, MX_FLOAT32);
  free(f);
  return a;
}

/* tokenizer.ggml.* (llama.cpp's "gpt2" BPE vocabulary) from a byte-level
 * BPE tokenizer.json: tokens by id, token types (1 normal, 3 control for
 * special added tokens), merges, bos/eos. Other tokenizers: none written. */
static int put_str_array(mx_metadata *m, const char *key, char **items, size_t n) {
  mx_meta_value *v = calloc(n ? n : 1, sizeof *v);
  if (!v) return mx__set_error(MX_ERR_OOM, "convert: out of memory");
  for (size_t i = 0; i < n; i++) {
    v[i].type = MX_META_STRING;
    v[i].v.str.data = items[i] ? items[i] : (char *)"";
    v[i].v.str.len = strlen(v[i].v.str.data);
  }
  int st = mx_metadata_set(m, key, &(mx_meta_value){.type = MX_META_ARRAY,
                                                    .v.arr = {MX_META_STRING, n, v}});
  free(v);
  return st;
}

static int gguf_tokenizer(mx_metadata *meta, const char *dir, const mx_lm_config *c,
                          bool *written) {
  char p[4200];
  *written = false;
  snprintf(p, sizeof p, "%s/tokenizer.json", dir);
  struct stat sb;
  if (stat(p, &sb) != 0) return MX_OK;
  char *text = mx__lm_read_file(p, NULL);
  if (!text) return mx_last_status();
  cJSON *t = cJSON_Parse(text);
  free(text);
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(t, "model");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "type"));
  int st = MX_OK;
  if (!type || strcmp(type, "BPE") || !cJSON_IsObject(vocab) || !cJSON_IsArray(merges) ||
      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"))) {
    cJSON_Delete(t);
    return MX_OK; /* not a byte-level BPE: no vocabulary written */
  }
  int64_t n = c->vocab_size;
  char **toks = calloc((size_t)(n ? n : 1), sizeof *toks);
  mx_meta_value *types = calloc((size_t)(n ? n : 1), sizeof *types);
  int nm = cJSON_GetArraySize(merges);
  char **mer = calloc((size_t)(nm ? nm : 1), sizeof *mer);
  char **pad = calloc((size_t)(n ? n : 1), sizeof *pad);
  if (!toks || !types || !mer || !pad) {
    st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
    goto done;
  }
  for (int64_t i = 0; i < n; i++) types[i] = (mx_meta_value){.type = MX_META_INT32, .v.i = 1};
  for (const cJSON *e = vocab->child; e; e = e->next)
    if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < (double)n)
      toks[(int64_t)e->valuedouble] = e->string;
  for (const cJSON *e = cJSON_GetObjectItemCaseSensitive(t, "added_tokens") ?
                            cJSON_GetObjectItemCaseSensitive(t, "added_tokens")->child : NULL;
       e; e = e->next) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "content"));
    if (!cJSON_IsNumber(id) || !s || id->valuedouble < 0 || id->valuedouble >= (double)n)
      continue;
    toks[(int64_t)id->valuedouble] = (char *)s;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")))
      types[(int64_t)id->valuedouble].v.i = 3;
  }
  for (int64_t i = 0; i < n && !st; i++)
    if (!toks[i]) { /* unused ids: llama.cpp's [PAD<i>] */
      char b[48];
      snprintf(b, sizeof b, "[PAD%lld]", (long long)i);
      if (!(pad[i] = strdup(b))) st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
      toks[i] = pad[i];
      types[i].v.i = 5;
    }
  int k = 0;
  for (const cJSON *e = merges->child; e && !st; e = e->next) {
    if (cJSON_IsString(e)) mer[k++] = e->valuestring;
    else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
      const char *a = cJSON_GetStringValue(cJSON_GetArrayItem(e, 0));
      const char *b = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
      if (!a || !b) continue;
      size_t la = strlen(a), lb = strlen(b);
      char *m = malloc(la + lb + 2);
      if (!m) {
        st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
        break;
      }
      memcpy(m, a, la);
      m[la] = ' ';
      memcpy(m + la + 1, b, lb + 1);
      mer[k++] = m;
    }
  }
  if (!st) st = mx_metadata_set_string(meta, "tokenizer.ggml.model", "gpt2");
  if (!st) st = put_str_array(meta, "tokenizer.ggml.tokens", toks, (size_t)n);
  if (!st)
    st = mx_metadata_set(meta, "tokenizer.ggml.token_type",
                         &(mx_meta_value){.type = MX_META_ARRAY,
                                          .v.arr = {MX_META_INT32, (size_t)n, types}});
  if (!st) st = put_str_array(meta, "tokenizer.ggml.merges", mer, (size_t)k);
  if (!st && c->bos_token_id >= 0) st = meta_u32(meta, "tokenizer.ggml.bos_token_id",
                                                 (uint64_t)c->bos_token_id);
  if (!st && c->num_eos_token_ids > 0)
    st = meta_u32(meta, "tokenizer.ggml.eos_token_id", (uint64_t)c->eos_token_ids[0]);
  if (!st) *written = true;
  /* free the merges joined here (those not pointing into the JSON) */
  {
    int j = 0;
    for (const cJSON *e = merges->child; e && j < k; e = e->next) {
      if (cJSON_IsString(e)) j++;
      else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
               cJSON_GetStringValue(cJSON_GetArrayItem(e, 0)) &&
               cJSON_GetStringValue(cJSON_GetArrayItem(e, 1)))
        free(mer[j++]);
    }
  }
done:
  if (pad)
    for (int64_t i = 0; i < n; i++) free(pad[i]);
  free(pad);
  free(toks);
  free(types);
  free(mer);
  cJSON_Delete(t);
  return st;
}

static const struct {
  const char *hf, *gg;
} k_layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

static int gguf_name(const char *hf, char *out, size_t n) {
  if (!strcmp(hf, "model.embed_tokens.weight")) return snprintf(out, n, "token_embd.weight"), 0;
  if (!strcmp(hf, "model.norm.weight")) return snprintf(out, n, "output_norm.weight"), 0;
  if (!strcmp(hf, "lm_head.weight")) return snprintf(out, n, "output.weight"), 0;
  int layer = -1, off = 0;
  if (sscanf(hf, "model.layers.%d.%n", &layer, &off) == 1 && off > 0)
    for (size_t i = 0; i < sizeof k_layer_names / sizeof *k_layer_names; i++)
      if (!strcmp(hf + off, k_layer_names[i].hf))
        return snprintf(out, n, "blk.%d.%s", layer, k_layer_names[i].gg), 0;
  return -1;
}


/* ---- llama.cpp block quantizations (Q8_0, Q4_0) ---------------------------------------- *
 * Blocks of 32 values along a row: Q8_0 = f16 scale d + 32 int8 (v = d * q),
 * Q4_0 = f16 scale d + 16 bytes of nibbles (v = d * (q - 8); byte j holds
 * value j in its low nibble and value j + 16 in its high one), quantized as
 * ggml's reference quantize_row_q8_0 / quantize_row_q4_0. mx_save_gguf
 * writes float tensors only, so a quantized tensor is saved as a float16
 * array of the same bytes ((rows, cols / 32 * halves)) and its tensor info
 * (type, ne[0]) is rewritten afterwards: the offsets stay right since the
 * byte sizes are equal. */
enum { GG_F32 = 0, GG_F16 = 1, GG_Q4_0 = 2, GG_Q8_0 = 8, GG_BF16 = 30 };

static void quant_block_q8_0(const float *x, uint8_t *o) {
  float amax = 0;
  for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
  float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  uint16_t h = mx__f32_to_f16(d);
  memcpy(o, &h, 2);
  for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static void quant_block_q4_0(const float *x, uint8_t *o) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; j++)
    if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
  float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  uint16_t h = mx__f32_to_f16(d);
  memcpy(o, &h, 2);
  for (int j = 0; j < 16; j++) {
    int a = (int)(int8_t)(x[j] * id + 8.5f), b = (int)(int8_t)(x[16 + j] * id + 8.5f);
    a = a > 15 ? 15 : a;
    b = b > 15 ? 15 : b;
    o[2 + j] = (uint8_t)(a | (b << 4));
  }
}

/* a (rows, cols) float array as GGUF blocks of type t, in a float16 array
 * (rows, cols / 32 * halves per block). */
static mx_array *quantize_blocks(mx_array *a, int t) {
  mx_array *f = mx_astype(a, MX_FLOAT32);
  if (!f || mx_array_eval(f)) {
    mx_array_free(f);
    return NULL;
  }
  const int64_t *sh = mx_array_shape(f);
  int64_t rows = sh[0], cols = sh[1], nb = cols / 32;
  int bb = t == GG_Q8_0 ? 34 : 18; /* bytes per block */
  uint8_t *buf = malloc((size_t)(rows * nb * bb) + 1);
  const float *x = mx_array_data(f);
  mx_array *r = NULL;
  if (!buf || !x) {
    if (!buf) mx__set_error(MX_ERR_OOM, "convert: out of memory");
    goto out;
  }
  for (int64_t i = 0; i < rows * nb; i++) {
    if (t == GG_Q8_0) quant_block_q8_0(x + i * 32, buf + i * bb);
    else quant_block_q4_0(x + i * 32, buf + i * bb);
  }
  r = mx_array_from_data(buf, (int64_t[]){rows, nb * bb / 2}, 2, MX_FLOAT16);
out:
  free(buf);
  mx_array_free(f);
  return r;
}

typedef struct {
  char name[256];
  int type;
  int64_t ne0;
} gguf_patch;

static int gg_skip(FILE *f, long n) { return fseek(f, n, SEEK_CUR); }
static int gg_u32(FILE *f, uint32_t *v) { return fread(v, 4, 1, f) == 1 ? 0 : -1; }
static int gg_u64(FILE *f, uint64_t *v) { return fread(v, 8, 1, f) == 1 ? 0 : -1; }

/* skips one metadata value of type t */
static int gg_skip_value(FILE *f, uint32_t t) {
  static const int sz[13] = {1, 1, 2, 2, 4, 4, 4, 1, -1, -1, 8, 8, 8};
  if (t > 12) return -1;
  if (t == 8) {
    uint64_t n;
    return gg_u64(f, &n) || n > (1u << 30) ? -1 : gg_skip(f, (long)n);
  }
  if (t == 9) {
    uint32_t et;
    uint64_t n;
    if (gg_u32(f, &et) || gg_u64(f, &n) || et > 12) return -1;
    if (et != 8 && et != 9) return gg_skip(f, (long)(n * (uint64_t)sz[et]));
    for (uint64_t i = 0; i < n; i++)
      if (gg_skip_value(f, et)) return -1;
    return 0;
  }
  return gg_skip(f, sz[t]);
}

/* rewrites the type and ne[0] of the tensors named in p */
static int gguf_patch_types(const char *file, const gguf_patch *p, int np) {
  FILE *f = fopen(file, "r+b");
  if (!f) return mx__set_error(MX_ERR_IO, "%s: cannot reopen: %s", file, strerror(errno));
  uint32_t magic = 0, ver = 0;
  uint64_t nt = 0, nkv = 0;
  int bad = gg_u32(f, &magic) || gg_u32(f, &ver) || gg_u64(f, &nt) || gg_u64(f, &nkv);
  for (uint64_t i = 0; i < nkv && !bad; i++) {
    uint64_t kl;
    uint32_t t;
    bad = gg_u64(f, &kl) || kl > 65536 || gg_skip(f, (long)kl) || gg_u32(f, &t) ||
          gg_skip_value(f, t);
  }
  for (uint64_t i = 0; i < nt && !bad; i++) {
    uint64_t nl;
    char name[256] = {0};
    uint32_t nd;
    bad = gg_u64(f, &nl) || nl >= sizeof name || fread(name, 1, (size_t)nl, f) != nl ||
          gg_u32(f, &nd) || nd < 1 || nd > 4;
    if (bad) break;
    long dims = ftell(f);
    bad = gg_skip(f, (long)(8 * nd)) != 0;
    const gguf_patch *hit = NULL;
    for (int j = 0; j < np && !hit; j++)
      if (!strcmp(p[j].name, name)) hit = &p[j];
    if (hit && !bad) {
      uint64_t ne0 = (uint64_t)hit->ne0;
      uint32_t t = (uint32_t)hit->type;
      bad = fseek(f, dims, SEEK_SET) || fwrite(&ne0, 8, 1, f) != 1 ||
            fseek(f, dims + 8L * nd, SEEK_SET) || fwrite(&t, 4, 1, f) != 1 ||
            fseek(f, 0, SEEK_CUR);
    } else if (!bad) bad = gg_skip(f, 4) != 0;
    if (!bad) bad = gg_skip(f, 8) != 0; /* offset */
  }
  if (fclose(f)) bad = 1;
  return bad ? mx__set_error(MX_ERR_IO, "%s: cannot rewrite the tensor types", file) : MX_OK;
}

int mx__lm_export_gguf(const char *src, const char *file, int dtype) {
  if (!src || !file) return mx__set_error(MX_ERR_INVALID_ARG, "convert: no source or file");
  int qtype = dtype == MX__GGUF_Q4_0 ? GG_Q4_0 : dtype == MX__GGUF_Q8_0 ? GG_Q8_0 : -1;
  if (qtype >= 0) dtype = MX_FLOAT16; /* tensors that cannot be blocked */
  if (dtype < 0) dtype = MX_FLOAT32;
  if (!(dtype == MX_FLOAT32 || dtype == MX_FLOAT16 || dtype == MX_BFLOAT16))
    return mx__set_error(MX_ERR_INVALID_ARG, "convert: GGUF export is F32, F16, BF16, Q8_0 or "
                         "Q4_0");
  gguf_patch *patch = NULL;
  int npatch = 0;
  char dir[4096];
  cJSON *cj = NULL;
  mx_map *w = NULL, *out = NULL;
  mx_metadata *meta = NULL;
  int st = open_source(src, dir, sizeof dir, &cj, &w);
  if (st) return st;
  char *json = cJSON_PrintUnformatted(cj);
  mx_lm_config c;
  memset(&c, 0, sizeof c);
  char where[4200];
  snprintf(where, sizeof where, "%s/config.json", dir);
  st = json ? mx__lm_parse_config(json, NULL, where, &c, NULL)
            : mx__set_error(MX_ERR_OOM, "convert: out of memory");
  free(json);
  if (st) goto done;
  if (strcmp(c.model_type, "llama") && strcmp(c.model_type, "mistral")) {
    st = mx__set_error(MX_ERR_UNSUPPORTED, "convert: --to-gguf exports the llama "
                       "architecture (model_type llama or mistral), not \"%s\"", c.model_type);
    goto done;
  }
  if (c.attention_bias || c.mlp_bias) {
    st = mx__set_error(MX_ERR_UNSUPPORTED, "convert: --to-gguf: models with biases are not "
                       "supported");
    goto done;
  }
  if (is_quantized_map(w)) {
    cJSON *q = cJSON_GetObjectItemCaseSensitive(cj, "quantization");
    if (!q) q = cJSON_GetObjectItemCaseSensitive(cj, "quantization_config");
    if ((st = dequantize_all(w, q))) goto done;
  }
  if (!(out = mx_map_new()) || !(meta = mx_metadata_new())) {
    st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
    goto done;
  }
  for (int i = 0; i < mx_map_size(w); i++) {
    const char *k = mx_map_key(w, i);
    char name[256];
    if (gguf_name(k, name, sizeof name)) {
      st = mx__set_error(MX_ERR_UNSUPPORTED, "convert: --to-gguf: no llama.cpp name for "
                         "tensor \"%s\"", k);
      goto done;
    }
    mx_array *a = mx_map_value(w, i), *p = NULL;
    if (ends_with_(k, "self_attn.q_proj.weight")) p = permute_qk(a, c.num_attention_heads);
    else if (ends_with_(k, "self_attn.k_proj.weight")) p = permute_qk(a, c.num_key_value_heads);
    if ((ends_with_(k, "q_proj.weight") || ends_with_(k, "k_proj.weight")) && !p) {
      st = mx_last_status();
      goto done;
    }
    /* norms stay F32, as llama.cpp's converter writes them */
    mx_dtype dt = mx_array_ndim(a) == 1 ? MX_FLOAT32 : (mx_dtype)dtype;
    mx_array *cst;
    if (qtype >= 0 && mx_array_ndim(a) == 2 && mx_array_shape(a)[1] % 32 == 0) {
      gguf_patch *np = realloc(patch, sizeof *patch * (size_t)(npatch + 1));
      if (!np) {
        mx_array_free(p);
        st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
        goto done;
      }
      patch = np;
      snprintf(patch[npatch].name, sizeof patch[npatch].name, "%s", name);
      patch[npatch].type = qtype;
      patch[npatch++].ne0 = mx_array_shape(a)[1];
      cst = quantize_blocks(p ? p : a, qtype);
    } else cst = mx_astype(p ? p : a, dt);
    mx_array_free(p);
    if (!cst || (st = mx_map_set_take(out, name, cst))) {
      st = st ? st : mx_last_status();
      goto done;
    }
  }
  int64_t hd = c.head_dim ? c.head_dim : c.hidden_size / c.num_attention_heads;
  /* llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7, MOSTLY_BF16 32 */
  int ftype = qtype == GG_Q4_0   ? 2
              : qtype == GG_Q8_0 ? 7
              : dtype == MX_FLOAT32 ? 0
              : dtype == MX_FLOAT16 ? 1
                                    : 32;
  if ((st = mx_metadata_set_string(meta, "general.architecture", "llama"))) goto done;
  const char *nm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cj, "_name_or_path"));
  if (!st) st = mx_metadata_set_string(meta, "general.name", nm ? nm : "mxc");
  if (!st) st = meta_u32(meta, "general.file_type", (uint64_t)ftype);
  if (!st) st = meta_u32(meta, "llama.context_length", (uint64_t)c.max_position_embeddings);
  if (!st) st = meta_u32(meta, "llama.embedding_length", (uint64_t)c.hidden_size);
  if (!st) st = meta_u32(meta, "llama.block_count", (uint64_t)c.num_hidden_layers);
  if (!st) st = meta_u32(meta, "llama.feed_forward_length", (uint64_t)c.intermediate_size);
  if (!st) st = meta_u32(meta, "llama.rope.dimension_count", (uint64_t)hd);
  if (!st) st = meta_u32(meta, "llama.attention.head_count", (uint64_t)c.num_attention_heads);
  if (!st)
    st = meta_u32(meta, "llama.attention.head_count_kv", (uint64_t)c.num_key_value_heads);
  if (!st) st = meta_u32(meta, "llama.attention.key_length", (uint64_t)hd);
  if (!st) st = meta_u32(meta, "llama.attention.value_length", (uint64_t)hd);
  if (!st) st = meta_f32(meta, "llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  if (!st) st = meta_f32(meta, "llama.rope.freq_base", c.rope_theta);
  if (!st) st = meta_u32(meta, "llama.vocab_size", (uint64_t)c.vocab_size);
  if (!st && c.rope_scaling == MX_LM_ROPE_LINEAR) {
    st = mx_metadata_set_string(meta, "llama.rope.scaling.type", "linear");
    if (!st) st = meta_f32(meta, "llama.rope.scaling.factor", c.rope_factor);
  }
  if (!st && c.rope_scaling == MX_LM_ROPE_LLAMA3) {
    mx_array *rf = llama3_rope_factors(&c, hd);
    st = rf ? mx_map_set_take(out, "rope_freqs.weight", rf) : mx_last_status();
  }
  bool tok = false;
  if (!st) st = gguf_tokenizer(meta, dir, &c, &tok);
  if (!st) st = mx_map_eval(out);
  if (!st) st = mx_save_gguf(file, out, meta);
  if (!st && npatch) st = gguf_patch_types(file, patch, npatch);
done:
  free(patch);
  mx_map_free(w);
  mx_map_free(out);
  mx_metadata_free(meta);
  cJSON_Delete(cj);
  return st;
}
