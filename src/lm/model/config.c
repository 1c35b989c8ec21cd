/* config.c — config.json / generation_config.json of a model directory. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"

static const char *const supported[] = {"llama", "mistral", "qwen2", "qwen3",
                                        "gemma", "gemma2", "phi3"};

const char *mx_lm_supported_types(void) {
  return "llama, mistral, qwen2, qwen3, gemma, gemma2, phi3";
}

char *mx__lm_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(errno == ENOENT ? MX_ERR_NOT_FOUND : MX_ERR_IO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      size_t ncap = cap ? cap * 2 : 8192;
      char *nb = realloc(buf, ncap);
      if (!nb) {
        free(buf);
        fclose(f);
        mx__set_error(MX_ERR_OOM, "%s: out of memory", path);
        return NULL;
      }
      buf = nb;
      cap = ncap;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  bool err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    mx__set_error(MX_ERR_IO, "%s: read error", path);
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

/* ---- typed getters ---------------------------------------------------------- */

static int get_int(const cJSON *o, const char *key, bool required, int64_t dflt, int64_t *out,
                   const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    if (required)
      return mx__set_error(MX_ERR_FORMAT, "%s: missing required key \"%s\"", where, key);
    *out = dflt;
    return MX_OK;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
    return mx__set_error(MX_ERR_FORMAT, "%s: \"%s\" must be an integer", where, key);
  *out = (int64_t)v->valuedouble;
  return MX_OK;
}

static int get_num(const cJSON *o, const char *key, bool required, double dflt, double *out,
                   const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    if (required)
      return mx__set_error(MX_ERR_FORMAT, "%s: missing required key \"%s\"", where, key);
    *out = dflt;
    return MX_OK;
  }
  if (!cJSON_IsNumber(v))
    return mx__set_error(MX_ERR_FORMAT, "%s: \"%s\" must be a number", where, key);
  *out = v->valuedouble;
  return MX_OK;
}

static int get_bool(const cJSON *o, const char *key, bool dflt, bool *out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    *out = dflt;
    return MX_OK;
  }
  if (!cJSON_IsBool(v))
    return mx__set_error(MX_ERR_FORMAT, "%s: \"%s\" must be true or false", where, key);
  *out = cJSON_IsTrue(v);
  return MX_OK;
}

static void add_eos(mx_lm_config *cfg, int64_t id) {
  if (id < 0 || id > INT32_MAX) return;
  for (int i = 0; i < cfg->num_eos_token_ids; i++)
    if (cfg->eos_token_ids[i] == (int32_t)id) return;
  if (cfg->num_eos_token_ids < MX_LM_MAX_EOS) cfg->eos_token_ids[cfg->num_eos_token_ids++] = (int32_t)id;
}

/* eos_token_id: an integer or a list of integers. */
static int read_eos(const cJSON *o, mx_lm_config *cfg, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id");
  if (!v || cJSON_IsNull(v)) return MX_OK;
  if (cJSON_IsNumber(v)) {
    add_eos(cfg, (int64_t)v->valuedouble);
    return MX_OK;
  }
  if (!cJSON_IsArray(v))
    return mx__set_error(MX_ERR_FORMAT, "%s: \"eos_token_id\" must be an integer or a list", where);
  const cJSON *e;
  cJSON_ArrayForEach(e, v) {
    if (!cJSON_IsNumber(e))
      return mx__set_error(MX_ERR_FORMAT, "%s: \"eos_token_id\" must hold integers", where);
    add_eos(cfg, (int64_t)e->valuedouble);
  }
  return MX_OK;
}

/* "rope_scaling", or transformers 5's "rope_parameters" (which also holds
 * rope_theta and partial_rotary_factor). */
static const cJSON *rope_params(const cJSON *o) {
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
  if (!rs || cJSON_IsNull(rs)) rs = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
  return rs;
}

static int parse_rope_scaling(const cJSON *o, mx_lm_config *cfg, const char *where) {
  const cJSON *rs = rope_params(o);
  cfg->rope_scaling = MX_LM_ROPE_DEFAULT;
  if (!rs || cJSON_IsNull(rs)) return MX_OK;
  if (!cJSON_IsObject(rs))
    return mx__set_error(MX_ERR_FORMAT, "%s: \"rope_scaling\" must be an object", where);
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
  if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
  if (!cJSON_IsString(t))
    return mx__set_error(MX_ERR_FORMAT, "%s: rope_scaling needs \"rope_type\" or \"type\"", where);
  const char *type = t->valuestring;
  char w[300];
  snprintf(w, sizeof w, "%s: rope_scaling", where);
  int st;
  if (!strcmp(type, "default")) return MX_OK;
  /* phi3's longrope is an architecture detail (parse_arch reads it) */
  if ((!strcmp(type, "longrope") || !strcmp(type, "su")) && !strcmp(cfg->model_type, "phi3"))
    return MX_OK;
  if ((st = get_num(rs, "factor", true, 1, &cfg->rope_factor, w))) return st;
  if (cfg->rope_factor <= 0)
    return mx__set_error(MX_ERR_FORMAT, "%s: factor must be positive", w);
  if (!strcmp(type, "linear")) {
    cfg->rope_scaling = MX_LM_ROPE_LINEAR;
    return MX_OK;
  }
  if (!strcmp(type, "llama3")) {
    cfg->rope_scaling = MX_LM_ROPE_LLAMA3;
    if ((st = get_num(rs, "low_freq_factor", false, 1.0, &cfg->rope_low_freq_factor, w)) ||
        (st = get_num(rs, "high_freq_factor", false, 4.0, &cfg->rope_high_freq_factor, w)) ||
        (st = get_int(rs, "original_max_position_embeddings", false, 8192,
                      &cfg->rope_original_max_position_embeddings, w)))
      return st;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
      return mx__set_error(MX_ERR_FORMAT, "%s: high_freq_factor must exceed low_freq_factor", w);
    return MX_OK;
  }
  return mx__set_error(MX_ERR_UNSUPPORTED,
                       "%s: rope_scaling type \"%s\" is not supported (supported: linear, "
                       "llama3; longrope for phi3)",
                       where, type);
}

static int parse_quantization(const cJSON *o, mx_lm_config *cfg, const char *where) {
  const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "quantization");
  if (!q) q = cJSON_GetObjectItemCaseSensitive(o, "quantization_config");
  if (!q || cJSON_IsNull(q)) return MX_OK;
  if (!cJSON_IsObject(q))
    return mx__set_error(MX_ERR_FORMAT, "%s: \"quantization\" must be an object", where);
  const cJSON *mode = cJSON_GetObjectItemCaseSensitive(q, "mode");
  if (cJSON_IsString(mode) && strcmp(mode->valuestring, "affine"))
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "%s: quantization mode \"%s\" is not supported (supported: affine)",
                         where, mode->valuestring);
  int64_t gs = 0, bits = 0;
  char w[300];
  snprintf(w, sizeof w, "%s: quantization", where);
  int st;
  if ((st = get_int(q, "group_size", true, 64, &gs, w)) || (st = get_int(q, "bits", true, 4, &bits, w)))
    return st;
  if (!(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8))
    return mx__set_error(MX_ERR_UNSUPPORTED, "%s: bits %lld is not supported (2, 3, 4, 5, 6, 8)",
                         w, (long long)bits);
  if (!(gs == 32 || gs == 64 || gs == 128))
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "%s: group_size %lld is not supported (32, 64, 128)", w, (long long)gs);
  cfg->quant_group_size = (int)gs;
  cfg->quant_bits = (int)bits;
  return MX_OK;
}

/* ---- architecture details --------------------------------------------------- */

/* What model_type implies before config.json's keys refine it. */
static void arch_defaults(mx_lm_config *c) {
  bool gemma = !strcmp(c->model_type, "gemma"), gemma2 = !strcmp(c->model_type, "gemma2");
  c->gemma_norm = c->embed_scale = gemma || gemma2;
  c->sandwich_norms = gemma2;
  c->activation = gemma || gemma2 ? MX_LM_ACT_GELU_TANH : MX_LM_ACT_SILU;
  c->fused_qkv = c->fused_gate_up = !strcmp(c->model_type, "phi3");
}

/* A list of `n` positive numbers at key of o into out. */
static int get_factors(const cJSON *o, const char *key, int64_t n, float *out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
    return mx__set_error(MX_ERR_FORMAT, "%s: \"%s\" must be a list of %lld numbers", where, key,
                         (long long)n);
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, v) {
    if (!cJSON_IsNumber(e) || !(e->valuedouble > 0))
      return mx__set_error(MX_ERR_FORMAT, "%s: \"%s\"[%d] must be a positive number", where, key,
                           i);
    out[i++] = (float)e->valuedouble;
  }
  return MX_OK;
}

/* phi3's rope_scaling / rope_parameters of type "longrope" (or "su"). */
static int parse_longrope(const cJSON *o, mx_lm_config *c, const char *where) {
  const cJSON *rs = rope_params(o);
  if (!cJSON_IsObject(rs)) return MX_OK;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
  if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
  if (!cJSON_IsString(t) || (strcmp(t->valuestring, "longrope") && strcmp(t->valuestring, "su")))
    return MX_OK;
  char w[300];
  snprintf(w, sizeof w, "%s: rope_scaling", where);
  int64_t rd = c->rotary_dim ? c->rotary_dim : c->head_dim;
  int64_t pairs = rd / 2, orig = 0;
  if (pairs > MX_LM_MAX_ROPE_PAIRS)
    return mx__set_error(MX_ERR_UNSUPPORTED, "%s: longrope with more than %d rotary pairs", w,
                         MX_LM_MAX_ROPE_PAIRS);
  int st;
  if ((st = get_factors(rs, "short_factor", pairs, c->longrope_short_factor, w)) ||
      (st = get_factors(rs, "long_factor", pairs, c->longrope_long_factor, w)))
    return st;
  /* original_max_position_embeddings: in config.json, or in the rope parameters */
  const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "original_max_position_embeddings") ? o : rs;
  if ((st = get_int(src, "original_max_position_embeddings", true, 0, &orig, where))) return st;
  if (orig <= 1)
    return mx__set_error(MX_ERR_FORMAT, "%s: original_max_position_embeddings must exceed 1", w);
  /* the attention factor (transformers' _compute_longrope_parameters) */
  double factor = 0, af = 0;
  if ((st = get_num(rs, "factor", false, 0, &factor, w)) ||
      (st = get_num(rs, "attention_factor", false, 0, &af, w)))
    return st;
  if (c->max_position_embeddings > 0)
    factor = (double)c->max_position_embeddings / (double)orig;
  if (af <= 0) af = factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log((double)orig));
  c->longrope = true;
  c->longrope_original_max = orig;
  c->longrope_attn_factor = af;
  return MX_OK;
}

/* sliding_window (> 0 or null) into c->sliding_window. */
static int get_window(const cJSON *o, mx_lm_config *c, const char *where) {
  int st = get_int(o, "sliding_window", false, 0, &c->sliding_window, where);
  if (!st && c->sliding_window < 0)
    return mx__set_error(MX_ERR_FORMAT, "%s: sliding_window must not be negative", where);
  return st;
}

/* Marks the sliding layers from "layer_types" when config.json has it
 * (transformers >= 4.54 writes it); *given: whether it did. */
static int read_layer_types(const cJSON *o, mx_lm_config *c, const char *where, bool *given) {
  const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
  *given = false;
  if (!lt || cJSON_IsNull(lt)) return MX_OK;
  if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->num_hidden_layers)
    return mx__set_error(MX_ERR_FORMAT, "%s: \"layer_types\" must be a list of %lld strings",
                         where, (long long)c->num_hidden_layers);
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, lt) {
    bool sl = cJSON_IsString(e) && !strcmp(e->valuestring, "sliding_attention");
    if (!sl && !(cJSON_IsString(e) && !strcmp(e->valuestring, "full_attention")))
      return mx__set_error(MX_ERR_UNSUPPORTED,
                           "%s: layer_types[%d] must be \"sliding_attention\" or "
                           "\"full_attention\"", where, i);
    c->sliding_layers[i++] = sl;
  }
  *given = true;
  return MX_OK;
}

static int parse_arch(const cJSON *o, mx_lm_config *c, const char *where) {
  arch_defaults(c);
  int st;
  const char *mt = c->model_type;
  bool slides = false; /* the model_type has sliding-window layers */
  if (!strcmp(mt, "gemma") || !strcmp(mt, "gemma2")) {
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_activation");
    if (!cJSON_IsString(act) && !strcmp(mt, "gemma2"))
      act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
    /* gemma's legacy "hidden_act": "gelu" means the tanh approximation (as transformers) */
    if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu_pytorch_tanh") &&
        strcmp(act->valuestring, "gelu"))
      return mx__set_error(MX_ERR_UNSUPPORTED,
                           "%s: activation \"%s\" is not supported for %s (supported: "
                           "gelu_pytorch_tanh)", where, act->valuestring, mt);
  }
  if (!strcmp(mt, "gemma2")) {
    if ((st = get_num(o, "final_logit_softcapping", false, 0, &c->final_logit_softcapping, where)) ||
        (st = get_num(o, "attn_logit_softcapping", false, 0, &c->attn_logit_softcapping, where)) ||
        (st = get_num(o, "query_pre_attn_scalar", false, (double)c->head_dim,
                      &c->query_pre_attn_scalar, where)) ||
        (st = get_window(o, c, where)))
      return st;
    if (c->query_pre_attn_scalar <= 0 || c->final_logit_softcapping < 0 ||
        c->attn_logit_softcapping < 0)
      return mx__set_error(MX_ERR_FORMAT, "%s: query_pre_attn_scalar, soft-capping and "
                           "sliding_window must not be negative", where);
    slides = true;
    for (int64_t i = 0; i < c->num_hidden_layers && i < MX_LM_MAX_LAYERS; i++)
      c->sliding_layers[i] = i % 2 == 0;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
    if (cJSON_IsArray(lt) && c->sliding_window > 0) {
      int i = 0;
      const cJSON *e;
      cJSON_ArrayForEach(e, lt) {
        const char *want = i % 2 == 0 ? "sliding_attention" : "full_attention";
        if (!cJSON_IsString(e) || strcmp(e->valuestring, want))
          return mx__set_error(MX_ERR_UNSUPPORTED,
                               "%s: layer_types[%d] must be \"%s\" (gemma2 alternates sliding "
                               "and full attention, starting with sliding)", where, i, want);
        i++;
      }
    }
  }
  if (!strcmp(mt, "phi3")) {
    double prf = 1.0;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "partial_rotary_factor")
                           ? o
                           : (cJSON_IsObject(rp) ? rp : o);
    if ((st = get_num(src, "partial_rotary_factor", false, 1.0, &prf, where))) return st;
    if (!(prf > 0 && prf <= 1))
      return mx__set_error(MX_ERR_FORMAT, "%s: partial_rotary_factor must be in (0, 1]", where);
    int64_t rd = (int64_t)((double)c->head_dim * prf);
    if (rd <= 0 || rd % 2)
      return mx__set_error(MX_ERR_FORMAT,
                           "%s: head_dim * partial_rotary_factor (%lld) must be positive and even",
                           where, (long long)rd);
    c->rotary_dim = rd == c->head_dim ? 0 : rd;
    if (c->attention_bias || c->mlp_bias)
      return mx__set_error(MX_ERR_UNSUPPORTED, "%s: phi3 with biases is not supported", where);
    if ((st = parse_longrope(o, c, where))) return st;
  }
  if (!strcmp(mt, "mistral")) { /* transformers: every layer slides when sliding_window is set */
    if ((st = get_window(o, c, where))) return st;
    slides = true;
    for (int64_t i = 0; i < c->num_hidden_layers && i < MX_LM_MAX_LAYERS; i++)
      c->sliding_layers[i] = true;
  }
  if (!strcmp(mt, "qwen2") || !strcmp(mt, "qwen3")) {
    /* transformers: sliding_window counts only with use_sliding_window; the
     * sliding layers are layer_types' "sliding_attention" ones, by default
     * those from max_window_layers on */
    bool use = false, given = false;
    int64_t mwl = 0;
    if ((st = get_bool(o, "use_sliding_window", false, &use, where)) ||
        (st = get_int(o, "max_window_layers", false, 28, &mwl, where)))
      return st;
    if (use) {
      if ((st = get_window(o, c, where))) return st;
      if (mwl < 0)
        return mx__set_error(MX_ERR_FORMAT, "%s: max_window_layers must not be negative", where);
    }
    if (c->sliding_window > 0) {
      slides = true;
      if (c->num_hidden_layers <= MX_LM_MAX_LAYERS &&
          (st = read_layer_types(o, c, where, &given)))
        return st;
      for (int64_t i = 0; !given && i < c->num_hidden_layers && i < MX_LM_MAX_LAYERS; i++)
        c->sliding_layers[i] = i >= mwl;
    }
  }
  if (slides && c->sliding_window > 0 && c->num_hidden_layers > MX_LM_MAX_LAYERS)
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "%s: sliding-window attention with more than %d layers", where,
                         MX_LM_MAX_LAYERS);
  if (c->sliding_window <= 0) {
    c->sliding_window = 0;
    memset(c->sliding_layers, 0, sizeof c->sliding_layers);
  }
  if (strcmp(mt, "llama") && strcmp(mt, "mistral") && strcmp(mt, "qwen2") &&
      strcmp(mt, "qwen3") && c->rope_scaling != MX_LM_ROPE_DEFAULT)
    return mx__set_error(MX_ERR_UNSUPPORTED, "%s: rope_scaling is not supported for %s", where, mt);
  return MX_OK;
}

int mx__lm_parse_config(const char *json, const char *generation_json, const char *where,
                        mx_lm_config *cfg, bool *tie_given) {
  memset(cfg, 0, sizeof *cfg);
  cfg->bos_token_id = -1;
  cJSON *o = cJSON_Parse(json);
  if (!o || !cJSON_IsObject(o)) {
    cJSON_Delete(o);
    return mx__set_error(MX_ERR_FORMAT, "%s: not a JSON object", where);
  }
  int st = MX_OK;
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
  if (!cJSON_IsString(mt)) {
    st = mx__set_error(MX_ERR_FORMAT, "%s: missing required key \"model_type\" (supported: %s)",
                       where, mx_lm_supported_types());
    goto done;
  }
  bool known = false;
  for (size_t i = 0; i < sizeof supported / sizeof *supported; i++)
    known |= !strcmp(mt->valuestring, supported[i]);
  if (!known) {
    st = mx__set_error(MX_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not supported (supported: %s)",
                       where, mt->valuestring, mx_lm_supported_types());
    goto done;
  }
  snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt->valuestring);
  int64_t tmp;
  if ((st = get_int(o, "hidden_size", true, 0, &cfg->hidden_size, where)) ||
      (st = get_int(o, "intermediate_size", true, 0, &cfg->intermediate_size, where)) ||
      (st = get_int(o, "num_hidden_layers", true, 0, &cfg->num_hidden_layers, where)) ||
      (st = get_int(o, "num_attention_heads", true, 0, &cfg->num_attention_heads, where)) ||
      (st = get_int(o, "vocab_size", true, 0, &cfg->vocab_size, where)) ||
      (st = get_num(o, "rms_norm_eps", true, 1e-6, &cfg->rms_norm_eps, where)) ||
      (st = get_int(o, "num_key_value_heads", false, cfg->num_attention_heads,
                    &cfg->num_key_value_heads, where)) ||
      (st = get_int(o, "max_position_embeddings", false, 0, &cfg->max_position_embeddings, where)) ||
      (st = get_num(o, "rope_theta", false, 0, &cfg->rope_theta, where)) ||
      (st = get_bool(o, "rope_traditional", false, &cfg->rope_traditional, where)) ||
      (st = get_bool(o, "attention_bias", !strcmp(cfg->model_type, "qwen2"), &cfg->attention_bias,
                     where)) ||
      (st = get_bool(o, "mlp_bias", false, &cfg->mlp_bias, where)) ||
      (st = get_int(o, "bos_token_id", false, -1, &tmp, where)) ||
      (st = read_eos(o, cfg, where)) || (st = parse_rope_scaling(o, cfg, where)) ||
      (st = parse_quantization(o, cfg, where)))
    goto done;
  cfg->bos_token_id = (int32_t)tmp;
  if (cfg->rope_theta == 0) { /* transformers >= 5: in rope_parameters */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    if (cJSON_IsObject(rp)) {
      char w[300];
      snprintf(w, sizeof w, "%s: rope_parameters", where);
      if ((st = get_num(rp, "rope_theta", false, 10000.0, &cfg->rope_theta, w))) goto done;
    } else {
      cfg->rope_theta = 10000.0;
    }
  }
  if (cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 || cfg->num_hidden_layers <= 0 ||
      cfg->num_attention_heads <= 0 || cfg->vocab_size <= 0 || cfg->num_key_value_heads <= 0) {
    st = mx__set_error(MX_ERR_FORMAT, "%s: sizes must be positive", where);
    goto done;
  }
  if (cfg->num_attention_heads % cfg->num_key_value_heads) {
    st = mx__set_error(MX_ERR_FORMAT,
                       "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)",
                       where, (long long)cfg->num_attention_heads,
                       (long long)cfg->num_key_value_heads);
    goto done;
  }
  const cJSON *hd = cJSON_GetObjectItemCaseSensitive(o, "head_dim");
  if (hd && !cJSON_IsNull(hd)) {
    if ((st = get_int(o, "head_dim", false, 0, &cfg->head_dim, where))) goto done;
  } else {
    if (cfg->hidden_size % cfg->num_attention_heads) {
      st = mx__set_error(MX_ERR_FORMAT, "%s: hidden_size must be a multiple of num_attention_heads",
                         where);
      goto done;
    }
    cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
  }
  if (cfg->head_dim <= 0 || cfg->head_dim % 2) {
    st = mx__set_error(MX_ERR_FORMAT, "%s: head_dim must be positive and even", where);
    goto done;
  }
  cfg->qk_norm = !strcmp(cfg->model_type, "qwen3");
  /* tie_word_embeddings: when absent, load decides from the weights */
  const cJSON *tie = cJSON_GetObjectItemCaseSensitive(o, "tie_word_embeddings");
  cfg->tie_word_embeddings = cJSON_IsTrue(tie);
  if (tie_given) *tie_given = cJSON_IsBool(tie);
  if (tie && !cJSON_IsBool(tie) && !cJSON_IsNull(tie)) {
    st = mx__set_error(MX_ERR_FORMAT, "%s: \"tie_word_embeddings\" must be true or false", where);
    goto done;
  }
  if ((st = parse_arch(o, cfg, where))) goto done;
  if (generation_json) {
    cJSON *g = cJSON_Parse(generation_json);
    if (g && cJSON_IsObject(g)) {
      char gw[300];
      snprintf(gw, sizeof gw, "generation_config.json next to %s", where);
      st = read_eos(g, cfg, gw);
    } else {
      st = mx__set_error(MX_ERR_FORMAT, "generation_config.json next to %s: not a JSON object",
                         where);
    }
    cJSON_Delete(g);
  }
done:
  cJSON_Delete(o);
  return st;
}
