/* llama.c — the llama family (llama, mistral, qwen2, qwen3) as an
 * mx_nn_module tree with Hugging Face names, its forward pass with a KV
 * cache, and the cache itself. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"
#include "mxc/ops.h"

/* Every custom module of the tree carries a copy of the config. */
typedef struct {
  mx_nn_module base;
  mx_lm_config cfg;
} lm_mod;

static const mx_lm_config *cfg_of(mx_nn_module *m) { return &((lm_mod *)m)->cfg; }

/* ---- RoPE frequencies ---------------------------------------------------------- */

/* llama3 rope scaling (mlx-lm's Llama3RoPE): the periods base^(2i/d),
 * stretched by `factor` for long wavelengths and smoothly in between. */
static mx_array *llama3_freqs(const mx_lm_config *c) {
  int half = (int)(c->head_dim / 2);
  float *f = malloc(sizeof(float) * (size_t)half);
  if (!f) {
    mx__set_error(MX_ERR_OOM, "llama3 rope: out of memory");
    return NULL;
  }
  double old_ctx = (double)c->rope_original_max_position_embeddings;
  double low_wl = old_ctx / c->rope_low_freq_factor, high_wl = old_ctx / c->rope_high_freq_factor;
  for (int i = 0; i < half; i++) {
    double freq = pow(c->rope_theta, (2.0 * i) / (double)c->head_dim);
    double wl = 2.0 * M_PI * freq;
    if (wl > low_wl) {
      freq *= c->rope_factor;
    } else if (wl > high_wl) {
      double smooth = (old_ctx / wl - c->rope_low_freq_factor) /
                      (c->rope_high_freq_factor - c->rope_low_freq_factor);
      freq = freq / ((1.0 - smooth) / c->rope_factor + smooth);
    }
    f[i] = (float)freq;
  }
  mx_array *a = mx_array_from_data(f, (int64_t[]){half}, 1, MX_FLOAT32);
  free(f);
  return a;
}

static mx_array *rope(const mx_lm_config *c, mx_array *x, int64_t offset, mx_array *freqs) {
  double scale = c->rope_scaling == MX_LM_ROPE_LINEAR ? 1.0 / c->rope_factor : 1.0;
  return mx_fast_rope(x, (int)c->head_dim, c->rope_traditional, c->rope_theta, scale, offset,
                      c->rope_scaling == MX_LM_ROPE_LLAMA3 ? freqs : NULL);
}

/* ---- KV cache ---------------------------------------------------------------------- */

#define MX_LM_CACHE_STEP 256

mx_lm_cache *mx_lm_cache_new(const mx_lm_model *m) {
  if (!m) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_new: model is NULL");
    return NULL;
  }
  mx_lm_cache *c = calloc(1, sizeof *c);
  int n = (int)m->config.num_hidden_layers;
  if (c) {
    c->nlayers = n;
    c->keys = calloc((size_t)n, sizeof *c->keys);
    c->values = calloc((size_t)n, sizeof *c->values);
  }
  if (!c || !c->keys || !c->values) {
    mx_lm_cache_free(c);
    mx__set_error(MX_ERR_OOM, "lm_cache_new: out of memory");
    return NULL;
  }
  return c;
}

void mx_lm_cache_free(mx_lm_cache *c) {
  if (!c) return;
  for (int i = 0; c->keys && i < c->nlayers; i++) mx_array_free(c->keys[i]);
  for (int i = 0; c->values && i < c->nlayers; i++) mx_array_free(c->values[i]);
  free(c->keys);
  free(c->values);
  free(c);
}

int64_t mx_lm_cache_offset(const mx_lm_cache *c) { return c ? c->offset : 0; }

int mx_lm_cache_eval(mx_lm_cache *c) {
  if (!c) return MX_OK;
  for (int i = 0; i < c->nlayers; i++) {
    mx_array *kv[2] = {c->keys[i], c->values[i]};
    if (kv[0] && kv[1]) {
      int st = mx_eval(kv, 2);
      if (st) return st;
    }
  }
  return MX_OK;
}

/* Writes one buffer's new positions x (B, H, T, D) at `offset`, growing the
 * buffer in steps of 256 positions; returns the filled part [:offset+T]. */
static mx_array *cache_put(mx_array **buf, mx_array *x, int64_t offset) {
  const int64_t *s = mx_array_shape(x);
  int64_t T = s[2];
  if (!*buf || offset + T > mx_array_dim(*buf, 2)) {
    int64_t extra = (T + MX_LM_CACHE_STEP - 1) / MX_LM_CACHE_STEP * MX_LM_CACHE_STEP;
    mx_array *z = mx_zeros((int64_t[]){s[0], s[1], extra, s[3]}, 4, mx_array_dtype(x));
    mx_array *grown;
    if (*buf) {
      mx_array *kept = mx_slice_axis(*buf, 2, 0, offset, 1);
      grown = mx_concatenate((mx_array *[]){kept, z}, 2, 2);
      mx_array_free(kept);
    } else {
      grown = mx_array_retain(z);
    }
    mx_array_free(z);
    if (!grown) return NULL;
    mx_array_free(*buf);
    *buf = grown;
  }
  int64_t start[4] = {0, 0, offset, 0}, stop[4] = {s[0], s[1], offset + T, s[3]};
  mx_array *upd = mx_slice_update(*buf, x, start, stop, NULL, 4);
  if (!upd) return NULL;
  mx_array_free(*buf);
  *buf = upd;
  return mx_slice_axis(upd, 2, 0, offset + T, 1);
}

/* ---- attention ----------------------------------------------------------------------- */

/* (B, L, H*D) -> (B, H, L, D), with the per-head RMSNorm of qwen3 when norm. */
static mx_array *heads(mx_array *x, int64_t H, int64_t D, mx_nn_module *norm) {
  const int64_t *s = mx_array_shape(x);
  mx_array *r = mx_reshape(x, (int64_t[]){s[0], s[1], H, D}, 4);
  if (norm && r) {
    mx_array *n = mx_nn_forward(norm, r);
    mx_array_free(r);
    r = n;
  }
  mx_array *t = mx_transpose(r, (int[]){0, 2, 1, 3}, 4);
  mx_array_free(r);
  return t;
}

/* x (B, L, hidden) -> (B, L, hidden). cache may be NULL (offset 0). */
static mx_array *attention(mx_nn_module *self, mx_array *x, mx_lm_cache *cache, int layer,
                           mx_array *freqs) {
  const mx_lm_config *c = cfg_of(self);
  if (!x) return NULL;
  int64_t B = mx_array_dim(x, 0), L = mx_array_dim(x, 1);
  int64_t offset = cache ? cache->offset : 0;
  mx_array *q = NULL, *k = NULL, *v = NULL, *o = NULL, *out = NULL;
  mx_array *pq = mx_nn_forward(mx_nn_child(self, "q_proj"), x);
  mx_array *pk = mx_nn_forward(mx_nn_child(self, "k_proj"), x);
  mx_array *pv = mx_nn_forward(mx_nn_child(self, "v_proj"), x);
  if (!pq || !pk || !pv) goto done;
  mx_nn_module *qn = c->qk_norm ? mx_nn_child(self, "q_norm") : NULL;
  mx_nn_module *kn = c->qk_norm ? mx_nn_child(self, "k_norm") : NULL;
  if (c->qk_norm && (!qn || !kn)) goto done;
  mx_array *hq = heads(pq, c->num_attention_heads, c->head_dim, qn);
  mx_array *hk = heads(pk, c->num_key_value_heads, c->head_dim, kn);
  v = heads(pv, c->num_key_value_heads, c->head_dim, NULL);
  q = rope(c, hq, offset, freqs);
  k = rope(c, hk, offset, freqs);
  mx_array_free(hq);
  mx_array_free(hk);
  if (!q || !k || !v) goto done;
  if (cache) {
    mx_array *ck = cache_put(&cache->keys[layer], k, offset);
    mx_array *cv = cache_put(&cache->values[layer], v, offset);
    mx_array_free(k);
    mx_array_free(v);
    k = ck;
    v = cv;
    if (!k || !v) goto done;
  }
  o = mx_fast_scaled_dot_product_attention(q, k, v, 1.0 / sqrt((double)c->head_dim), NULL, L > 1);
  mx_array *ot = mx_transpose(o, (int[]){0, 2, 1, 3}, 4);
  mx_array *or = mx_reshape(ot, (int64_t[]){B, L, c->num_attention_heads * c->head_dim}, 3);
  mx_array_free(ot);
  out = mx_nn_forward(mx_nn_child(self, "o_proj"), or);
  mx_array_free(or);
done:
  mx_array_free(pq);
  mx_array_free(pk);
  mx_array_free(pv);
  mx_array_free(q);
  mx_array_free(k);
  mx_array_free(v);
  mx_array_free(o);
  return out;
}

static mx_array *attention_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = attention(self, in[0], NULL, 0, freqs);
  mx_array_free(freqs);
  return y;
}

/* ---- MLP, block ---------------------------------------------------------------------- */

static mx_array *mlp_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *g = mx_nn_forward(mx_nn_child(self, "gate_proj"), in[0]);
  mx_array *u = mx_nn_forward(mx_nn_child(self, "up_proj"), in[0]);
  mx_array *a = mx_nn_silu(g);
  mx_array *h = mx_multiply(a, u);
  mx_array *y = mx_nn_forward(mx_nn_child(self, "down_proj"), h);
  mx_array_free(g);
  mx_array_free(u);
  mx_array_free(a);
  mx_array_free(h);
  return y;
}

static mx_array *block(mx_nn_module *self, mx_array *x, mx_lm_cache *cache, int layer,
                       mx_array *freqs) {
  mx_array *n1 = mx_nn_forward(mx_nn_child(self, "input_layernorm"), x);
  mx_array *r = attention(mx_nn_child(self, "self_attn"), n1, cache, layer, freqs);
  mx_array *h = mx_add(x, r);
  mx_array *n2 = mx_nn_forward(mx_nn_child(self, "post_attention_layernorm"), h);
  mx_array *f = mx_nn_forward(mx_nn_child(self, "mlp"), n2);
  mx_array *y = mx_add(h, f);
  mx_array_free(n1);
  mx_array_free(r);
  mx_array_free(h);
  mx_array_free(n2);
  mx_array_free(f);
  return y;
}

static mx_array *block_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = block(self, in[0], NULL, 0, freqs);
  mx_array_free(freqs);
  return y;
}

/* ---- the model ----------------------------------------------------------------------- */

/* "model": embed_tokens, layers, norm -> hidden states (B, T, hidden). */
static mx_array *inner(mx_nn_module *self, mx_array *tokens, mx_lm_cache *cache,
                       mx_array *freqs) {
  mx_array *h = mx_nn_forward(mx_nn_child(self, "embed_tokens"), tokens);
  int n = mx_nn_list_size(self, "layers");
  for (int i = 0; i < n && h; i++) {
    mx_array *next = block(mx_nn_list_item(self, "layers", i), h, cache, i, freqs);
    mx_array_free(h);
    h = next;
  }
  mx_array *y = mx_nn_forward(mx_nn_child(self, "norm"), h);
  mx_array_free(h);
  return y;
}

static mx_array *logits_of(mx_nn_module *root, mx_array *tokens, mx_lm_cache *cache,
                           mx_array *freqs) {
  mx_nn_module *model = mx_nn_child(root, "model");
  if (!model) return NULL;
  mx_array *h = inner(model, tokens, cache, freqs);
  if (!h) return NULL;
  mx_array *y;
  if (cfg_of(root)->tie_word_embeddings)
    y = mx_nn_embedding_as_linear(mx_nn_child(model, "embed_tokens"), h);
  else
    y = mx_nn_forward(mx_nn_child(root, "lm_head"), h);
  mx_array_free(h);
  return y;
}

static mx_array *with_batch(mx_array *tokens) {
  if (!tokens) return NULL;
  if (mx_array_ndim(tokens) == 1) return mx_expand_dims(tokens, (int[]){0}, 1);
  if (mx_array_ndim(tokens) == 2) return mx_array_retain(tokens);
  mx__set_error(MX_ERR_SHAPE, "lm forward: tokens must be (T,) or (B, T), got %d dims",
                mx_array_ndim(tokens));
  return NULL;
}

static mx_array *inner_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *t = with_batch(in[0]);
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = t ? inner(self, t, NULL, freqs) : NULL;
  mx_array_free(t);
  mx_array_free(freqs);
  return y;
}

static mx_array *root_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *t = with_batch(in[0]);
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = t ? logits_of(self, t, NULL, freqs) : NULL;
  mx_array_free(t);
  mx_array_free(freqs);
  return y;
}

static const mx_nn_module_vtable root_vt = {.name = "Model", .forward = root_forward};
static const mx_nn_module_vtable inner_vt = {.name = "LlamaModel", .forward = inner_forward};
static const mx_nn_module_vtable block_vt = {.name = "TransformerBlock", .forward = block_forward};
static const mx_nn_module_vtable attn_vt = {.name = "Attention", .forward = attention_forward};
static const mx_nn_module_vtable mlp_vt = {.name = "MLP", .forward = mlp_forward};

static mx_nn_module *lm_mod_new(const mx_nn_module_vtable *vt, const mx_lm_config *c) {
  lm_mod *m = (lm_mod *)mx_nn_module_new(vt, sizeof(lm_mod));
  if (m) m->cfg = *c;
  return m ? &m->base : NULL;
}

/* Adds each child in order; on any failure frees m and returns NULL. */
static mx_nn_module *with_children(mx_nn_module *m, int n, const char *const *names,
                                   mx_nn_module **kids) {
  int st = m ? MX_OK : MX_ERR_OOM;
  for (int i = 0; i < n; i++) {
    if (st == MX_OK)
      st = mx_nn_add_child(m, names[i], kids[i]);
    else
      mx_nn_module_free(kids[i]);
  }
  if (st != MX_OK) {
    mx_nn_module_free(m);
    return NULL;
  }
  return m;
}

static mx_nn_module *build_block(const mx_lm_config *c) {
  int64_t d = c->hidden_size, hd = c->head_dim, H = c->num_attention_heads,
          KV = c->num_key_value_heads, I = c->intermediate_size;
  bool ab = c->attention_bias;
  bool ob = ab && !strcmp(c->model_type, "llama"); /* llama's attention_bias covers o_proj */
  mx_nn_module *attn;
  if (c->qk_norm)
    attn = with_children(lm_mod_new(&attn_vt, c), 6,
                         (const char *[]){"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"},
                         (mx_nn_module *[]){mx_nn_linear_new(d, H * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(H * hd, d, ob, NULL),
                                            mx_nn_rms_norm_new(hd, c->rms_norm_eps),
                                            mx_nn_rms_norm_new(hd, c->rms_norm_eps)});
  else
    attn = with_children(lm_mod_new(&attn_vt, c), 4,
                         (const char *[]){"q_proj", "k_proj", "v_proj", "o_proj"},
                         (mx_nn_module *[]){mx_nn_linear_new(d, H * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(H * hd, d, ob, NULL)});
  mx_nn_module *mlp = with_children(lm_mod_new(&mlp_vt, c), 3,
                                    (const char *[]){"gate_proj", "down_proj", "up_proj"},
                                    (mx_nn_module *[]){mx_nn_linear_new(d, I, c->mlp_bias, NULL),
                                                       mx_nn_linear_new(I, d, c->mlp_bias, NULL),
                                                       mx_nn_linear_new(d, I, c->mlp_bias, NULL)});
  return with_children(lm_mod_new(&block_vt, c), 4,
                       (const char *[]){"self_attn", "mlp", "input_layernorm",
                                        "post_attention_layernorm"},
                       (mx_nn_module *[]){attn, mlp, mx_nn_rms_norm_new(d, c->rms_norm_eps),
                                          mx_nn_rms_norm_new(d, c->rms_norm_eps)});
}

mx_nn_module *mx__lm_build_llama(const mx_lm_config *c) {
  mx_nn_module *inner_m = lm_mod_new(&inner_vt, c);
  if (!inner_m) return NULL;
  int st = mx_nn_add_child(inner_m, "embed_tokens",
                           mx_nn_embedding_new(c->vocab_size, c->hidden_size, NULL));
  if (!st) st = mx_nn_add_list(inner_m, "layers");
  for (int64_t i = 0; i < c->num_hidden_layers && !st; i++)
    st = mx_nn_list_append(inner_m, "layers", build_block(c));
  if (!st) st = mx_nn_add_child(inner_m, "norm", mx_nn_rms_norm_new(c->hidden_size, c->rms_norm_eps));
  if (st) {
    mx_nn_module_free(inner_m);
    return NULL;
  }
  if (c->tie_word_embeddings)
    return with_children(lm_mod_new(&root_vt, c), 1, (const char *[]){"model"},
                         (mx_nn_module *[]){inner_m});
  return with_children(lm_mod_new(&root_vt, c), 2, (const char *[]){"model", "lm_head"},
                       (mx_nn_module *[]){inner_m,
                                          mx_nn_linear_new(c->hidden_size, c->vocab_size, false,
                                                           NULL)});
}

mx_array *mx__lm_llama_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache) {
  mx_array *t = with_batch(tokens);
  if (!t) return NULL;
  if (!mx_dtype_is_integer(mx_array_dtype(t))) {
    mx__set_error(MX_ERR_DTYPE, "lm forward: tokens must be integers, got %s",
                  mx_dtype_name(mx_array_dtype(t)));
    mx_array_free(t);
    return NULL;
  }
  if (m->config.rope_scaling == MX_LM_ROPE_LLAMA3 && !m->rope_freqs) {
    m->rope_freqs = llama3_freqs(&m->config);
    if (!m->rope_freqs) {
      mx_array_free(t);
      return NULL;
    }
  }
  mx_array *y = logits_of(m->root, t, cache, m->rope_freqs);
  if (y && cache) cache->offset += mx_array_dim(t, 1);
  mx_array_free(t);
  return y;
}

mx_array *mx_lm_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache) {
  if (!m || !tokens) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_forward: model or tokens is NULL");
    return NULL;
  }
  if (cache && cache->nlayers != m->config.num_hidden_layers) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_forward: the cache has %d layers, the model %lld",
                  cache->nlayers, (long long)m->config.num_hidden_layers);
    return NULL;
  }
  return mx__lm_llama_forward(m, tokens, cache);
}
