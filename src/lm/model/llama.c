/* llama.c — the llama family (llama, mistral, qwen2, qwen3) and its
 * relatives gemma, gemma2 and phi3 as an mx_nn_module tree with Hugging Face
 * names, its forward pass with a KV cache, and the cache itself.
 *
 * What the relatives change (mx_lm_config's architecture details, parsed by
 * config.c):
 *   gemma:  embeddings * sqrt(hidden); RMSNorm by (1 + weight); gelu (tanh) MLP.
 *   gemma2: gemma + attention scores scaled by query_pre_attn_scalar^-0.5 and
 *           soft-capped (cap * tanh(s / cap)), logits soft-capped, layers 0, 2,
 *           4... attend to the last sliding_window positions only; each block
 *           norms the attention output (post_attention_layernorm) and wraps
 *           the MLP in pre_/post_feedforward_layernorm.
 *   phi3:   fused self_attn.qkv_proj and mlp.gate_up_proj; rotary on the
 *           first head_dim * partial_rotary_factor features. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"
#include "mxc/ops.h"
#include "ops/fast_params.h"   /* mx__fast_rope_at, mx__fast_sdpa_upto */
#include "ops/ops_internal.h" /* mx__tmp */
#include "ops/shape_params.h"  /* mx__store_at */
#include "nn/nn_internal.h"    /* mx__nn_linear_apply */

/* Every custom module of the tree carries a copy of the config. */
typedef struct {
  mx_nn_module base;
  mx_lm_config cfg;
  int layer;       /* blocks and attention: the layer index */
  bool checkpoint; /* "model": run each layer under mx_checkpoint (no cache) */
} lm_mod;

static const mx_lm_config *cfg_of(mx_nn_module *m) { return &((lm_mod *)m)->cfg; }

/* A decode step's rope_kv and attention as one op (rope_sdpa: one kernel
 * on the GPU, the same bits); MXC_ROPE_SDPA=0 keeps them apart (A/B). */
static bool rope_sdpa_fuse(void) {
  static int v = -1;
  return mx__env_on("MXC_ROPE_SDPA", &v);
}

/* Prompts and training: attention's output stored as (B, L, H, D) where
 * the kernel can, so o_proj reads it without a transposing copy;
 * MXC_SDPA_BLHD=0 keeps (B, H, L, D) (A/B). */
static bool sdpa_blhd_on(void) {
  static int v = -1;
  return mx__env_on("MXC_SDPA_BLHD", &v);
}

/* Prompts with stacked q/k/v: one rope over all the heads with the values
 * copied through (mx__fast_rope_heads), so the cache keeps k and v without
 * copying them; MXC_ROPE_HEADS=0 rotates q and k and copies (A/B). */
static bool rope_heads_on(void) {
  static int v = -1;
  return mx__env_on("MXC_ROPE_HEADS", &v);
}

/* A decode step over static caches (mx__lm_forward_static) runs its
 * residual adds with the RMSNorm after them (add_rms_norm) and the rope of
 * q and k with the cache writes (rope_kv) as one kernel each: the same
 * bits as the separate ops. MXC_DECODE_FUSE=0 keeps them apart (A/B). */
static bool decode_fuse(void) {
  static int v = -1;
  return mx__env_on("MXC_DECODE_FUSE", &v);
}

/* A decode row's gate/up projection and swiglu as one kernel
 * (swiglu_linear) where the projections are one dense stack;
 * MXC_SWIGLU_LINEAR=0 runs the stacked GEMV and swiglu (A/B). */
static bool swiglu_linear_on(void) {
  static int v = -1;
  return mx__env_on("MXC_SWIGLU_LINEAR", &v);
}

static int64_t rotary_dim(const mx_lm_config *c) { return c->rotary_dim ? c->rotary_dim : c->head_dim; }
static double attn_scale(const mx_lm_config *c) {
  return 1.0 / sqrt(c->query_pre_attn_scalar > 0 ? c->query_pre_attn_scalar : (double)c->head_dim);
}

/* What one forward pass carries besides the activations. */
typedef struct {
  mx_lm_cache *cache;  /* NULL: none */
  mx__lm_plan *plan;   /* a rotating cache's update */
  const bool *visible; /* an explicit (T, T) mask (no cache) */
  /* the masks of this pass, built once for the full [0] and the sliding [1]
   * layers (they depend on nothing else) */
  mx_array *mask[2];
  bool plain[2];
  /* a decode step over static caches (mx__lm_forward_static): the position
   * pos (int32, device memory) and each layer's (B, KV, capacity, D) keys
   * and values, written in place */
  mx_array *pos, **skeys, **svalues;
  /* stacked projections per layer ([qkv, gate_up]; mx__lm_stack), or NULL */
  const mx__lm_stack *stacks;
  /* the next attention's stacked q/k/v projection, already computed (with
   * the residual add and the norm before it: add_norm_linear); taken by
   * attention() */
  mx_array *pre_qkv;
} fwd_ctx;

/* gemma's RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight). */
typedef struct {
  mx_nn_module base;
  double eps;
} gemma_norm;

/* As transformers: in float32 (1 + w not rounded to a half dtype), then
 * back to x's dtype. */
static mx_array *gemma_norm_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *w = mx_nn_param(self, "weight");
  if (!w || !in[0]) return NULL;
  mx_dtype dt = mx_array_dtype(in[0]);
  if (dt == MX_FLOAT32 && mx_array_dtype(w) == MX_FLOAT32) {
    mx_array *w1 = mx_add_scalar(w, 1.0);
    mx_array *y = mx_fast_rms_norm(in[0], w1, ((gemma_norm *)self)->eps);
    mx_array_free(w1);
    return y;
  }
  mx__tmp t = {0};
  mx_array *w1 = mx__keep(&t, mx_add_scalar(mx__keep(&t, mx_astype(w, MX_FLOAT32)), 1.0));
  mx_array *xf = mx__keep(&t, mx_astype(in[0], MX_FLOAT32));
  mx_array *y = mx_astype(mx__keep(&t, mx_fast_rms_norm(xf, w1, ((gemma_norm *)self)->eps)), dt);
  mx__tmp_free(&t);
  return y;
}

static const mx_nn_module_vtable gemma_norm_vt = {.name = "RMSNorm", .forward = gemma_norm_forward};

static mx_nn_module *norm_new(const mx_lm_config *a, int64_t dims, double eps) {
  if (!a->gemma_norm) return mx_nn_rms_norm_new(dims, eps);
  gemma_norm *m = (gemma_norm *)mx_nn_module_new(&gemma_norm_vt, sizeof *m);
  if (!m) return NULL;
  m->eps = eps;
  if (mx_nn_add_param(&m->base, "weight", mx_zeros((int64_t[]){dims}, 1, MX_FLOAT32))) {
    mx_nn_module_free(&m->base);
    return NULL;
  }
  return &m->base;
}

/* cap * tanh(x / cap) (x itself when cap is 0). */
static mx_array *softcap(mx_array *x, double cap) {
  if (cap <= 0 || !x) return mx_array_retain(x);
  mx__tmp t = {0};
  mx_array *y = mx_multiply_scalar(
      mx__keep(&t, mx_tanh(mx__keep(&t, mx_multiply_scalar(x, 1.0 / cap)))), cap);
  mx__tmp_free(&t);
  return y;
}

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

static mx_array *rope(const mx_lm_config *c, mx_array *x, int64_t offset, mx_array *pos,
                      mx_array *freqs) {
  double scale = c->rope_scaling == MX_LM_ROPE_LINEAR ? 1.0 / c->rope_factor : 1.0;
  mx_array *fr = c->rope_scaling == MX_LM_ROPE_LLAMA3 ? freqs : NULL;
  if (pos)
    return mx__fast_rope_at(x, (int)rotary_dim(c), c->rope_traditional, c->rope_theta, scale, pos,
                            fr);
  return mx_fast_rope(x, (int)rotary_dim(c), c->rope_traditional, c->rope_theta, scale, offset,
                      fr);
}

/* rope over heads [0, rot) of x (..., N, T, D), the others copied */
static mx_array *rope_heads(const mx_lm_config *c, mx_array *x, int64_t offset, mx_array *freqs,
                            int64_t rot) {
  double scale = c->rope_scaling == MX_LM_ROPE_LINEAR ? 1.0 / c->rope_factor : 1.0;
  mx_array *fr = c->rope_scaling == MX_LM_ROPE_LLAMA3 ? freqs : NULL;
  return mx__fast_rope_heads(x, (int)rotary_dim(c), c->rope_traditional, c->rope_theta, scale,
                             offset, fr, rot);
}

/* phi3's longrope: per-pair factors (long ones once offset + L exceeds the
 * original context), outputs scaled by the attention factor. */
static mx_array *longrope(const mx_lm_config *c, mx_array *x, int64_t offset, int64_t L) {
  if (!x) return NULL;
  int half = (int)(rotary_dim(c) / 2);
  const float *fac = offset + L > c->longrope_original_max ? c->longrope_long_factor
                                                            : c->longrope_short_factor;
  float f[MX_LM_MAX_ROPE_PAIRS];
  for (int i = 0; i < half; i++)
    f[i] = (float)((double)fac[i] * pow(c->rope_theta, (2.0 * i) / (double)rotary_dim(c)));
  mx__tmp t = {0};
  mx_array *freqs = mx__keep(&t, mx_array_from_data(f, (int64_t[]){half}, 1, MX_FLOAT32));
  mx_array *r = mx__keep(&t, mx_fast_rope(x, (int)rotary_dim(c), c->rope_traditional,
                                          c->rope_theta, 1.0, offset, freqs));
  mx_array *y = c->longrope_attn_factor == 1.0 ? mx_array_retain(r)
                                               : mx_multiply_scalar(r, c->longrope_attn_factor);
  mx__tmp_free(&t);
  return y;
}

/* ---- stacked projections (decode steps) ---------------------------------------------- */

static const char *const stack_params[3] = {"weight", "scales", "biases"};

/* Whether every part of st still holds its view (nothing replaced them). */
static bool stack_valid(const mx__lm_stack *st, mx_nn_module *parent) {
  if (!st || !st->n) return false;
  for (int i = 0; i < st->n; i++) {
    mx_nn_module *c = mx_nn_child(parent, st->names[i]);
    if (!c) return false;
    for (int k = 0; k < st->nparams; k++)
      if (!mx_nn_has_param(c, stack_params[k]) || mx_nn_param(c, stack_params[k]) != st->views[i][k])
        return false;
  }
  return true;
}

/* The stacked projection of x split into its parts out[0..n) (slice
 * views); false (nothing computed) when the stack is not valid. */
static void stack_split(const mx__lm_stack *st, mx_array *y, mx_array **out);

static bool stack_apply(const mx__lm_stack *st, mx_nn_module *parent, mx_array *x,
                        mx_array **out, mx_array **whole) {
  if (!stack_valid(st, parent)) return false;
  mx_array *y = st->nparams == 1
                    ? mx__nn_linear_apply(x, st->stack[0], NULL)
                    : mx_quantized_matmul(x, st->stack[0], st->stack[1], st->stack[2], true,
                                          st->group_size, st->bits);
  stack_split(st, y, out);
  if (whole) *whole = y;
  else mx_array_free(y);
  return true;
}

/* The parts of a stacked projection's output y (views; NULL when y is). */
static void stack_split(const mx__lm_stack *st, mx_array *y, mx_array **out) {
  int ax = y ? mx_array_ndim(y) - 1 : 0;
  int64_t r0 = 0;
  for (int i = 0; i < st->n; i++) {
    out[i] = y ? mx_slice_axis(y, ax, r0, r0 + st->rows[i], 1) : NULL;
    r0 += st->rows[i];
  }
}

/* Stacks the children `names` of parent (Linear or QuantizedLinear of one
 * format, no bias, the same input size) into st; st->n stays 0 when they do
 * not qualify. */
static int stack_make(mx__lm_stack *st, mx_nn_module *parent, const char *const *names, int n) {
  mx_nn_module *mods[MX__LM_MAX_STACK];
  int gs = 0, bits = 0, np = 0;
  for (int i = 0; i < n; i++) {
    mods[i] = mx_nn_child(parent, names[i]);
    if (!mods[i]) return MX_OK;
    const char *type = mx_nn_module_type(mods[i]);
    int g = 0, b = 0, p;
    if (!strcmp(type, "Linear")) p = 1;
    else if (!strcmp(type, "QuantizedLinear") && !mx_nn_quantized_info(mods[i], &g, &b)) p = 3;
    else return MX_OK;
    if (mx_nn_has_param(mods[i], "bias") || (i && (p != np || g != gs || b != bits))) return MX_OK;
    np = p, gs = g, bits = b;
    for (int k = 0; k < np; k++) {
      mx_array *a = mx_nn_param(mods[i], stack_params[k]);
      mx_array *a0 = mx_nn_param(mods[0], stack_params[k]);
      if (!a || mx_array_ndim(a) != 2 || mx_array_dtype(a) != mx_array_dtype(a0) ||
          mx_array_dim(a, 1) != mx_array_dim(a0, 1))
        return MX_OK;
    }
  }
  mx__lm_stack s = {.n = 0, .nparams = np, .group_size = gs, .bits = bits};
  int stc = MX_OK;
  for (int k = 0; k < np && !stc; k++) {
    mx_array *parts[MX__LM_MAX_STACK];
    for (int i = 0; i < n; i++) parts[i] = mx_nn_param(mods[i], stack_params[k]);
    s.stack[k] = mx_concatenate(parts, n, 0);
    stc = s.stack[k] ? mx_array_eval(s.stack[k]) : mx_last_status();
    int64_t r0 = 0;
    for (int i = 0; i < n && !stc; i++) {
      s.rows[i] = mx_array_dim(parts[i], 0);
      s.views[i][k] = mx_slice_axis(s.stack[k], 0, r0, r0 + s.rows[i], 1);
      stc = s.views[i][k] ? mx_array_eval(s.views[i][k]) : mx_last_status();
      r0 += s.rows[i];
    }
  }
  /* only now, all built: the parts take their views (freeing the originals) */
  for (int i = 0; i < n && !stc; i++)
    for (int k = 0; k < np && !stc; k++)
      stc = mx_nn_add_param(mods[i], stack_params[k], mx_array_retain(s.views[i][k]));
  if (stc) {
    for (int k = 0; k < 3; k++) {
      mx_array_free(s.stack[k]);
      for (int i = 0; i < MX__LM_MAX_STACK; i++) mx_array_free(s.views[i][k]);
    }
    return stc;
  }
  s.n = n;
  for (int i = 0; i < n; i++) s.names[i] = names[i];
  *st = s;
  return MX_OK;
}

void mx__lm_stacks_free(mx_lm_model *m) {
  if (!m || !m->stacks) return;
  for (int64_t l = 0; l < 2 * m->config.num_hidden_layers; l++) {
    mx__lm_stack *st = &m->stacks[l];
    for (int k = 0; k < 3; k++) {
      mx_array_free(st->stack[k]);
      for (int i = 0; i < MX__LM_MAX_STACK; i++) mx_array_free(st->views[i][k]);
    }
  }
  free(m->stacks);
  m->stacks = NULL;
}

int mx__lm_stack_projections(mx_lm_model *m) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "lm: model is NULL");
  if (m->stacks) return MX_OK;
  const char *e = getenv("MXC_STACK"); /* 0: separate projections (A/B) */
  if (e && !strcmp(e, "0")) return MX_OK;
  const mx_lm_config *c = &m->config;
  mx_nn_module *inner_m = mx_nn_child(m->root, "model");
  int nl = inner_m ? mx_nn_list_size(inner_m, "layers") : -1;
  if (nl != c->num_hidden_layers || nl <= 0) return MX_OK;
  m->stacks = calloc((size_t)(2 * nl), sizeof *m->stacks);
  if (!m->stacks) return mx__set_error(MX_ERR_OOM, "lm: out of memory");
  static const char *const qkv[] = {"q_proj", "k_proj", "v_proj"}, *const gu[] = {"gate_proj",
                                                                                 "up_proj"};
  int st = MX_OK;
  for (int l = 0; l < nl && !st; l++) {
    mx_nn_module *layer = mx_nn_list_item(inner_m, "layers", l);
    mx_nn_module *attn = mx_nn_child(layer, "self_attn"), *mlp = mx_nn_child(layer, "mlp");
    if (attn && !c->fused_qkv) st = stack_make(&m->stacks[2 * l], attn, qkv, 3);
    if (mlp && !c->fused_gate_up && !st) st = stack_make(&m->stacks[2 * l + 1], mlp, gu, 2);
  }
  return st;
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

/* Attention written out (soft-capping, sliding windows, rotating caches):
 * q (B, H, L, D), k/v (B, KV, S, D), mask (L, S) additive (borrowed). */
static mx_array *attend(const mx_lm_config *c, mx_array *q, mx_array *k, mx_array *v,
                        mx_array *m) {
  int64_t H = mx_array_dim(q, 1), KV = mx_array_dim(k, 1);
  mx__tmp t = {0};
  if (H != KV) {
    k = mx__keep(&t, mx_repeat(k, H / KV, 1));
    v = mx__keep(&t, mx_repeat(v, H / KV, 1));
  }
  mx_array *s = mx__keep(&t, mx_multiply_scalar(
                                 mx__keep(&t, mx_matmul(q, mx__keep(&t, mx_swapaxes(k, 2, 3)))),
                                 attn_scale(c)));
  s = mx__keep(&t, softcap(s, c->attn_logit_softcapping));
  /* the softmax in float32, the probabilities back in q's dtype (as transformers) */
  if (s && mx_array_dtype(s) != MX_FLOAT32) s = mx__keep(&t, mx_astype(s, MX_FLOAT32));
  s = mx__keep(&t, mx_add(s, m));
  mx_array *p = mx__keep(&t, mx_softmax(s, (int[]){-1}, 1));
  if (p && mx_array_dtype(q) != MX_FLOAT32) p = mx__keep(&t, mx_astype(p, mx_array_dtype(q)));
  mx_array *o = mx_matmul(p, v);
  mx__tmp_free(&t);
  return o;
}

/* The (L, S) mask of L queries at positions offset.. over S key slots:
 * slot j holds position pos[j] (j when pos is NULL). *plain: whether it is
 * the usual causal mask (slot j visible to query i iff j <= S - L + i).
 * NULL + error on OOM. */
static mx_array *build_mask(const mx_lm_config *c, const fwd_ctx *f, int layer, int64_t offset,
                            int64_t L, int64_t S, bool *plain) {
  const int64_t *pos = f && f->plan ? f->plan->pos : NULL;
  bool window = f && f->plan && f->plan->window;
  int64_t M = f && f->cache ? f->cache->max_size : 0;
  bool sliding = c->sliding_window > 0 && layer >= 0 && layer < MX_LM_MAX_LAYERS &&
                 c->sliding_layers[layer];
  const bool *vis = f ? f->visible : NULL;
  float *mask = malloc(sizeof(float) * (size_t)(L * S));
  if (!mask) {
    mx__set_error(MX_ERR_OOM, "attention: out of memory");
    return NULL;
  }
  *plain = true;
  for (int64_t i = 0; i < L; i++) {
    int64_t qp = offset + i, qs = S - L + i;
    for (int64_t j = 0; j < S; j++) {
      int64_t kp = pos ? pos[j] : j;
      bool ok = kp >= 0 && kp <= qp && (!sliding || qp - kp < c->sliding_window) &&
                (!window || j > qs - M) && (!vis || vis[i * S + j]);
      mask[i * S + j] = ok ? 0.0f : -INFINITY;
      *plain &= ok == (j <= qs);
    }
  }
  mx_array *m = mx_array_from_data(mask, (int64_t[]){L, S}, 2, MX_FLOAT32);
  free(mask);
  return m;
}

/* x (B, L, hidden) -> (B, L, hidden). cache may be NULL (offset 0).
 * resid: when not NULL, the result is resid + the attention's output (the
 * addition in o_proj's product: mx__nn_linear_add). */
static mx_array *attention(mx_nn_module *self, mx_array *x, fwd_ctx *f, int layer,
                           mx_array *freqs, mx_array *resid) {
  const mx_lm_config *c = cfg_of(self);
  if (!x) return NULL;
  mx_lm_cache *cache = f ? f->cache : NULL;
  int64_t B = mx_array_dim(x, 0), L = mx_array_dim(x, 1);
  int64_t offset = cache ? cache->offset : 0;
  mx_array *q = NULL, *k = NULL, *v = NULL, *o = NULL, *out = NULL, *mask = NULL;
  mx_array *pq = NULL, *pk = NULL, *pv = NULL, *sqkv = NULL;
  /* whether a cache may keep k and v as they are: they span their storage,
   * or they are blocks of a prompt's rope output (its q rows then live
   * until the cache grows at the next step) */
  bool kown = true, vown = !c->fused_qkv;
  if (c->fused_qkv) {
    int64_t nq = c->num_attention_heads * c->head_dim, nkv = c->num_key_value_heads * c->head_dim;
    mx_array *qkv = mx_nn_forward(mx_nn_child(self, "qkv_proj"), x);
    if (!qkv) goto done;
    pq = mx_slice_axis(qkv, 2, 0, nq, 1);
    pk = mx_slice_axis(qkv, 2, nq, nq + nkv, 1);
    pv = mx_slice_axis(qkv, 2, nq + nkv, nq + 2 * nkv, 1);
    mx_array_free(qkv);
  } else {
    mx_array *p3[3];
    if (f && f->pre_qkv) { /* computed with the norm before it (layers_fused) */
      sqkv = f->pre_qkv;
      f->pre_qkv = NULL;
      stack_split(&f->stacks[2 * layer], sqkv, p3);
      pq = p3[0], pk = p3[1], pv = p3[2];
      vown = false;
    } else if (f && f->stacks && stack_apply(&f->stacks[2 * layer], self, x, p3, &sqkv)) {
      pq = p3[0], pk = p3[1], pv = p3[2];
      vown = false; /* a part of the stacked projection */
    } else {
      pq = mx_nn_forward(mx_nn_child(self, "q_proj"), x);
      pk = mx_nn_forward(mx_nn_child(self, "k_proj"), x);
      pv = mx_nn_forward(mx_nn_child(self, "v_proj"), x);
    }
  }
  if (!pq || !pk || !pv) goto done;
  mx_nn_module *qn = c->qk_norm ? mx_nn_child(self, "q_norm") : NULL;
  mx_nn_module *kn = c->qk_norm ? mx_nn_child(self, "k_norm") : NULL;
  if (c->qk_norm && (!qn || !kn)) goto done;
  v = heads(pv, c->num_key_value_heads, c->head_dim, NULL);
  if (sqkv && !c->qk_norm && !c->longrope && f->pos && decode_fuse()) {
    /* stacked q/k/v: one kernel rotates q and k and writes k and v into
     * the static caches; attention reads the caches after it (it takes
     * the rotated queries) */
    int64_t H = c->num_attention_heads, KV = c->num_key_value_heads;
    double scale = c->rope_scaling == MX_LM_ROPE_LINEAR ? 1.0 / c->rope_factor : 1.0;
    mx_array *fr = c->rope_scaling == MX_LM_ROPE_LLAMA3 ? freqs : NULL;
    mx_array *hx = heads(sqkv, H + 2 * KV, c->head_dim, NULL);
    if (hx && rope_sdpa_fuse()) { /* both in one op (one kernel on the GPU) */
      o = mx__fast_rope_sdpa(hx, H, KV, f->skeys[layer], f->svalues[layer], (int)rotary_dim(c),
                             c->rope_traditional, c->rope_theta, scale, f->pos, fr,
                             attn_scale(c));
      mx_array_free(hx);
      goto project;
    }
    q = hx ? mx__fast_rope_kv(hx, H, KV, f->skeys[layer], f->svalues[layer],
                              (int)rotary_dim(c), c->rope_traditional, c->rope_theta, scale,
                              f->pos, fr)
           : NULL;
    mx_array_free(hx);
    o = q ? mx__fast_sdpa_upto(q, f->skeys[layer], f->svalues[layer], attn_scale(c), f->pos)
          : NULL;
    goto project;
  }
  if (sqkv && !c->qk_norm && !c->longrope) {
    /* stacked q/k/v: q and k are adjacent heads of one projection, so one
     * rope (the same positions) rotates both (a decode step's position on
     * the device, or a prompt's offset) */
    int64_t H = c->num_attention_heads, KV = c->num_key_value_heads;
    if (!f->pos && rope_heads_on()) {
      /* a prompt: q, k and v rotated / copied in one pass, each a block of
       * r (contiguous for one sequence: the cache keeps k and v as they
       * are, until it grows) */
      mx_array *hx = heads(sqkv, H + 2 * KV, c->head_dim, NULL);
      mx_array *r = hx ? rope_heads(c, hx, offset, freqs, H + KV) : NULL;
      mx_array_free(hx);
      mx_array_free(v);
      q = r ? mx_slice_axis(r, 1, 0, H, 1) : NULL;
      k = r ? mx_slice_axis(r, 1, H, H + KV, 1) : NULL;
      v = r ? mx_slice_axis(r, 1, H + KV, H + 2 * KV, 1) : NULL;
      kown = vown = B == 1;
      mx_array_free(r);
      goto rotated;
    }
    mx_array *pqk = mx_slice_axis(sqkv, 2, 0, (H + KV) * c->head_dim, 1);
    mx_array *hqk = pqk ? heads(pqk, H + KV, c->head_dim, NULL) : NULL;
    mx_array *r = hqk ? rope(c, hqk, offset, f->pos, freqs) : NULL;
    q = r ? mx_slice_axis(r, 1, 0, H, 1) : NULL;
    k = r ? mx_slice_axis(r, 1, H, H + KV, 1) : NULL;
    kown = false; /* a part of r */
    mx_array_free(pqk);
    mx_array_free(hqk);
    mx_array_free(r);
    goto rotated;
  }
  mx_array *hq = heads(pq, c->num_attention_heads, c->head_dim, qn);
  mx_array *hk = heads(pk, c->num_key_value_heads, c->head_dim, kn);
  if (c->longrope) {
    q = longrope(c, hq, offset, L);
    k = longrope(c, hk, offset, L);
  } else {
    mx_array *pos = f ? f->pos : NULL;
    q = rope(c, hq, offset, pos, freqs);
    k = rope(c, hk, offset, pos, freqs);
  }
  mx_array_free(hq);
  mx_array_free(hk);
rotated:
  if (!q || !k || !v) goto done;
  if (f && f->pos) { /* static caches: written in place, keys up to pos + L */
    mx_array *ck = mx__store_at(f->skeys[layer], k, f->pos, 2);
    mx_array *cv = mx__store_at(f->svalues[layer], v, f->pos, 2);
    mx_array_free(k);
    mx_array_free(v);
    k = ck;
    v = cv;
    o = k && v ? mx__fast_sdpa_upto(q, k, v, attn_scale(c), f->pos) : NULL;
    goto project;
  }
  if (cache) {
    mx_array *ck, *cv;
    if (f->plan) {
      ck = mx__lm_plan_apply(cache, f->plan, &cache->keys[layer], k);
      cv = mx__lm_plan_apply(cache, f->plan, &cache->values[layer], v);
    } else {
      ck = mx__lm_cache_put(&cache->keys[layer], k, offset, kown);
      cv = mx__lm_cache_put(&cache->values[layer], v, offset, vown);
    }
    mx_array_free(k);
    mx_array_free(v);
    k = ck;
    v = cv;
    if (!k || !v) goto done;
  }
  int64_t S = mx_array_dim(k, 2);
  bool sliding = c->sliding_window > 0 && layer < MX_LM_MAX_LAYERS && c->sliding_layers[layer];
  bool plain = true;
  if ((f && (f->plan || f->visible)) || (sliding && S > c->sliding_window) ||
      c->attn_logit_softcapping > 0) {
    if (f && f->mask[sliding]) {
      mask = mx_array_retain(f->mask[sliding]);
      plain = f->plain[sliding];
    } else {
      if (!(mask = build_mask(c, f, layer, offset, L, S, &plain))) goto done;
      if (f) {
        f->mask[sliding] = mx_array_retain(mask);
        f->plain[sliding] = plain;
      }
    }
  }
  if (!plain || c->attn_logit_softcapping > 0)
    o = attend(c, q, k, v, mask);
  else if ((o = mx_fast_scaled_dot_product_attention(q, k, v, attn_scale(c), NULL, L > 1)) &&
           L > 1 && sdpa_blhd_on())
    mx__fast_sdpa_prefer_blhd(o); /* then the transpose below is a view */
project:
  if (!o) goto done;
  mx_array *ot = mx_transpose(o, (int[]){0, 2, 1, 3}, 4);
  mx_array *or = mx_reshape(ot, (int64_t[]){B, L, c->num_attention_heads * c->head_dim}, 3);
  mx_array_free(ot);
  out = resid ? mx__nn_linear_add(mx_nn_child(self, "o_proj"), or, resid)
              : mx_nn_forward(mx_nn_child(self, "o_proj"), or);
  mx_array_free(or);
done:
  mx_array_free(sqkv);
  mx_array_free(pq);
  mx_array_free(pk);
  mx_array_free(pv);
  mx_array_free(q);
  mx_array_free(k);
  mx_array_free(v);
  mx_array_free(o);
  mx_array_free(mask);
  return out;
}

static mx_array *attention_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = attention(self, in[0], NULL, ((lm_mod *)self)->layer, freqs, NULL);
  mx_array_free(freqs);
  return y;
}

/* ---- MLP, block ---------------------------------------------------------------------- */

/* st: the gate/up stack of a decode step, or NULL; resid: as attention's */
static mx_array *mlp(mx_nn_module *self, mx_array *x, const mx__lm_stack *st, mx_array *resid) {
  const mx_lm_config *ar = cfg_of(self);
  const bool gelu = ar->activation == MX_LM_ACT_GELU_TANH;
  mx_array *g, *u, *p2[2];
  if (ar->fused_gate_up) {
    int64_t I = cfg_of(self)->intermediate_size;
    mx_array *gu = mx_nn_forward(mx_nn_child(self, "gate_up_proj"), x);
    int ax = gu ? mx_array_ndim(gu) - 1 : 0;
    g = gu ? mx_slice_axis(gu, ax, 0, I, 1) : NULL;
    u = gu ? mx_slice_axis(gu, ax, I, 2 * I, 1) : NULL;
    mx_array_free(gu);
  } else if (st && st->nparams == 1 && !gelu && x && mx_default_device() == MX_GPU &&
             mx_array_dim(x, -1) > 0 && mx_array_size(x) == mx_array_dim(x, -1) &&
             mx_array_dtype(x) == mx_array_dtype(st->stack[0]) &&
             (mx_array_dtype(x) == MX_BFLOAT16 || mx_array_dtype(x) == MX_FLOAT16) &&
             swiglu_linear_on() &&
             stack_valid(st, self)) {
    /* one decode row: the stacked gate/up GEMV and swiglu in one kernel */
    mx_array *h = mx__fast_swiglu_linear(x, st->stack[0]);
    mx_array *y = h ? mx_nn_forward(mx_nn_child(self, "down_proj"), h) : NULL;
    mx_array_free(h);
    return y;
  } else if (st && stack_apply(st, self, x, p2, NULL)) {
    g = p2[0], u = p2[1];
  } else {
    g = mx_nn_forward(mx_nn_child(self, "gate_proj"), x);
    u = mx_nn_forward(mx_nn_child(self, "up_proj"), x);
  }
  /* silu(g) * u in one kernel (the same bits as the composition) */
  mx_array *a = g && gelu ? mx_nn_gelu_approx(g) : NULL;
  mx_array *h = gelu ? mx_multiply(a, u) : mx_fast_swiglu(g, u);
  mx_array *y = !h       ? NULL
                : resid ? mx__nn_linear_add(mx_nn_child(self, "down_proj"), h, resid)
                        : mx_nn_forward(mx_nn_child(self, "down_proj"), h);
  mx_array_free(g);
  mx_array_free(u);
  mx_array_free(a);
  mx_array_free(h);
  return y;
}

static mx_array *mlp_forward(mx_nn_module *self, mx_array *const *in, int n) {
  return mlp(self, in[0], NULL, NULL);
}

static const mx_nn_module_vtable mlp_vt;

/* MXC_RESID_ADDMM=0: the residual additions of a forward without a cache
 * stay separate ops (A/B). */
static bool resid_addmm_on(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_RESID_ADDMM");
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r != 0;
}

static mx_array *block(mx_nn_module *self, mx_array *x, fwd_ctx *cache, int layer,
                       mx_array *freqs) {
  if (cfg_of(self)->sandwich_norms) { /* gemma2 */
    mx__tmp t = {0};
    mx_array *n1 = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "input_layernorm"), x));
    mx_array *r = mx__keep(&t, attention(mx_nn_child(self, "self_attn"), n1, cache, layer, freqs, NULL));
    mx_array *rn = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "post_attention_layernorm"), r));
    mx_array *h = mx__keep(&t, mx_add(x, rn));
    mx_array *n2 = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "pre_feedforward_layernorm"), h));
    mx_array *f = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "mlp"), n2));
    mx_array *fn = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "post_feedforward_layernorm"), f));
    mx_array *y = mx_add(h, fn);
    mx__tmp_free(&t);
    return y;
  }
  if (!cache && resid_addmm_on()) {
    /* no cache (training, whole-sequence logits): each residual addition
     * runs in the epilogue of the product before it (o_proj, down_proj) */
    mx_nn_module *mm = mx_nn_child(self, "mlp");
    mx_array *n1 = mx_nn_forward(mx_nn_child(self, "input_layernorm"), x);
    mx_array *h = attention(mx_nn_child(self, "self_attn"), n1, NULL, layer, freqs, x);
    mx_array *n2 = h ? mx_nn_forward(mx_nn_child(self, "post_attention_layernorm"), h) : NULL;
    mx_array *y = NULL;
    if (n2 && mm && mm->vtable == &mlp_vt) {
      y = mlp(mm, n2, NULL, h);
    } else if (n2) {
      mx_array *f = mx_nn_forward(mm, n2);
      y = f ? mx_add(h, f) : NULL;
      mx_array_free(f);
    }
    mx_array_free(n1);
    mx_array_free(h);
    mx_array_free(n2);
    return y;
  }
  mx_array *n1 = mx_nn_forward(mx_nn_child(self, "input_layernorm"), x);
  mx_array *r = attention(mx_nn_child(self, "self_attn"), n1, cache, layer, freqs, NULL);
  mx_array *h = mx_add(x, r);
  mx_array *n2 = mx_nn_forward(mx_nn_child(self, "post_attention_layernorm"), h);
  mx_nn_module *mm = mx_nn_child(self, "mlp");
  const mx__lm_stack *gu = cache && cache->stacks ? &cache->stacks[2 * layer + 1] : NULL;
  mx_array *f = stack_valid(gu, mm) ? mlp(mm, n2, gu, NULL) : mx_nn_forward(mm, n2);
  mx_array *y = mx_add(h, f);
  mx_array_free(n1);
  mx_array_free(r);
  mx_array_free(h);
  mx_array_free(n2);
  mx_array_free(f);
  return y;
}

/* *h + r and the RMSNorm `norm` of it: *h is replaced by the sum, *n set.
 * One add_rms_norm kernel for a plain RMSNorm of the same dtype, else the
 * two ops. r NULL: the norm of *h alone. */
static int add_norm(mx_nn_module *norm, const mx_lm_config *c, mx_array **h, mx_array *r,
                    mx_array **n) {
  *n = NULL;
  if (!norm) return mx_last_status();
  if (r) {
    /* a plain RMSNorm (gemma's scales by 1 + weight) */
    mx_array *w = !c->gemma_norm && !strcmp(mx_nn_module_type(norm), "RMSNorm")
                      ? mx_nn_param(norm, "weight")
                      : NULL;
    mx_dtype dt = mx_array_dtype(*h);
    if (w && mx_array_dtype(w) == dt && mx_array_dtype(r) == dt) {
      mx_array *z = mx__fast_add_rms_norm(*h, r, w, c->rms_norm_eps);
      int nd = mx_array_ndim(*h);
      const int64_t *sh = mx_array_shape(*h);
      mx_array *z0 = z ? mx_slice_axis(z, 0, 0, 1, 1) : NULL;
      mx_array *z1 = z ? mx_slice_axis(z, 0, 1, 2, 1) : NULL;
      mx_array *hn = z0 ? mx_reshape(z0, sh, nd) : NULL;
      *n = z1 ? mx_reshape(z1, sh, nd) : NULL;
      mx_array_free(z);
      mx_array_free(z0);
      mx_array_free(z1);
      mx_array_free(*h);
      *h = hn;
      if (!hn || !*n) {
        mx_array_free(*n);
        *n = NULL;
        return mx_last_status();
      }
      return MX_OK;
    }
    mx_array *sum = mx_add(*h, r);
    mx_array_free(*h);
    if (!(*h = sum)) return mx_last_status();
  }
  *n = mx_nn_forward(norm, *h);
  return *n ? MX_OK : mx_last_status();
}

/* MXC_NORM_LINEAR=0: a decode row's residual add + RMSNorm stays its own
 * kernel before the projection after it (A/B). */
static bool norm_linear_on(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_NORM_LINEAR");
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r;
}

/* MXC_NORM_QLINEAR: which 4-bit stacks take add_norm_linear (1: q/k/v, 2:
 * gate/up, 3: both; default 0, none: in the replayed step the fused kernels
 * were slower, although their own device time is lower — see docs/cuda.md). */
static int norm_qlinear_mask(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_NORM_QLINEAR");
    r = e && *e ? atoi(e) & 3 : 0;
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r;
}

/* One 16-bit decode row on the GPU: *h + r, its plain RMSNorm `norm` and
 * the stack st of parent (dense or 4-bit; swiglu: the gate/up stack and
 * swiglu) as one add_norm_linear kernel, the same bits as add_norm then
 * the projection. *h is replaced by the sum and *y set to the projection.
 * Returns false, changing nothing, where it does not apply; on an error
 * *st is set. */
static bool norm_linear(mx_nn_module *norm, const mx_lm_config *c, mx_array **h, mx_array *r,
                        const mx__lm_stack *s, mx_nn_module *parent, bool swiglu, mx_array **y,
                        int *st) {
  *y = NULL;
  /* dense, or 4 bits with the group sizes of the tensor-core GEMV */
  const bool q = s && s->nparams == 3 && s->bits == 4 &&
                 (s->group_size == 32 || s->group_size == 64 || s->group_size == 128) &&
                 (norm_qlinear_mask() & (swiglu ? 2 : 1));
  if (!r || !norm || !s || (s->nparams != 1 && !q) || c->gemma_norm || !norm_linear_on() ||
      mx_default_device() != MX_GPU || strcmp(mx_nn_module_type(norm), "RMSNorm") ||
      !stack_valid(s, parent))
    return false;
  mx_array *w = mx_nn_param(norm, "weight"), *W = s->stack[q ? 1 : 0];
  const mx_dtype dt = mx_array_dtype(*h);
  const int nd = mx_array_ndim(*h);
  const int64_t D = nd ? mx_array_dim(*h, nd - 1) : 0;
  if (!w || (dt != MX_BFLOAT16 && dt != MX_FLOAT16) || mx_array_dtype(r) != dt ||
      mx_array_dtype(w) != dt || mx_array_dtype(W) != dt ||
      (q && mx_array_dtype(s->stack[2]) != dt) || D <= 0 || D % 8 || D > 2048 ||
      mx_array_size(*h) != D)
    return false;
  mx_array *z = q ? mx__fast_add_norm_qlinear(*h, r, w, s->stack[0], s->stack[1], s->stack[2],
                                              s->group_size, s->bits, c->rms_norm_eps, swiglu)
                  : mx__fast_add_norm_linear(*h, r, w, W, c->rms_norm_eps, swiglu);
  mx_array *hz = z ? mx_slice_axis(z, nd - 1, 0, D, 1) : NULL;
  mx_array *yz = z ? mx_slice_axis(z, nd - 1, D, mx_array_dim(z, nd - 1), 1) : NULL;
  mx_array_free(z);
  if (!hz || !yz) {
    mx_array_free(hz);
    mx_array_free(yz);
    *st = mx_last_status();
    return true;
  }
  mx_array_free(*h);
  *h = hz;
  *y = yz;
  return true;
}

/* A prompt on the GPU queues each layer's kernels as soon as the layer is
 * built (mx_eval does not wait for the device): the GPU starts on layer 0
 * while the host builds the rest, instead of idling through the building
 * of the whole graph. MXC_LAYER_EVAL=0 builds it whole (A/B). */
static bool layer_eval(const fwd_ctx *f, int64_t L) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_LAYER_EVAL");
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r && L > 1 && f->cache && !f->pos && mx_default_device() == MX_GPU && !mx__tracing();
}

/* The layers of an inference pass with a cache (a prompt, or a decode step
 * over static caches) with the fused kernels: each layer's residual adds
 * go into the norms after them (the MLP's into the next layer's input
 * norm, the last one's into the final norm). */
static mx_array *layers_fused(mx_nn_module *self, mx_array *h, fwd_ctx *f, mx_array *freqs) {
  const mx_lm_config *c = cfg_of(self);
  mx_array *pend = NULL, *y = NULL;
  int st = MX_OK, n = mx_nn_list_size(self, "layers");
  const bool each = layer_eval(f, mx_array_ndim(h) == 3 ? mx_array_dim(h, 1) : 1);
  for (int i = 0; i < n && !st; i++) {
    mx_nn_module *layer = mx_nn_list_item(self, "layers", i);
    mx_array *n1 = NULL, *n2 = NULL, *r = NULL, *proj = NULL;
    mx_nn_module *attn = layer ? mx_nn_child(layer, "self_attn") : NULL;
    mx_nn_module *in_norm = layer ? mx_nn_child(layer, "input_layernorm") : NULL;
    /* a decode row: the residual add and norm go into the q/k/v GEMV */
    const mx__lm_stack *qkv = f->stacks && !c->fused_qkv ? &f->stacks[2 * i] : NULL;
    if (norm_linear(in_norm, c, &h, pend, qkv, attn, false, &proj, &st)) {
      f->pre_qkv = proj; /* attention takes it */
      if (!st) n1 = mx_array_retain(h); /* the input's shape only */
    } else {
      st = add_norm(in_norm, c, &h, pend, &n1);
    }
    mx_array_free(pend);
    pend = NULL;
    if (!st && !(r = attention(attn, n1, f, i, freqs, NULL))) st = mx_last_status();
    mx_array_free(f->pre_qkv); /* taken unless attention failed first */
    f->pre_qkv = NULL;
    mx_nn_module *mm = layer ? mx_nn_child(layer, "mlp") : NULL;
    const mx__lm_stack *gu = f->stacks ? &f->stacks[2 * i + 1] : NULL;
    const bool gelu = c->activation == MX_LM_ACT_GELU_TANH;
    mx_nn_module *post = layer ? mx_nn_child(layer, "post_attention_layernorm") : NULL;
    if (!st && !c->fused_gate_up && !gelu && swiglu_linear_on() &&
        norm_linear(post, c, &h, r, gu, mm, true, &proj, &st)) {
      /* the residual add, norm, gate/up GEMV and swiglu in one kernel */
      if (!st && !(pend = mx_nn_forward(mx_nn_child(mm, "down_proj"), proj))) st = mx_last_status();
      mx_array_free(proj);
      if (!st && each) st = mx_eval((mx_array *[]){h, pend}, 2);
    } else {
      if (!st) st = add_norm(post, c, &h, r, &n2);
      if (!st) {
        pend = stack_valid(gu, mm) ? mlp(mm, n2, gu, NULL) : mx_nn_forward(mm, n2);
        if (!pend) st = mx_last_status();
        else if (each) st = mx_eval((mx_array *[]){h, pend}, 2);
      }
    }
    mx_array_free(n1);
    mx_array_free(n2);
    mx_array_free(r);
  }
  if (!st) add_norm(mx_nn_child(self, "norm"), c, &h, pend, &y);
  mx_array_free(pend);
  mx_array_free(h);
  return y;
}

static mx_array *block_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *freqs = cfg_of(self)->rope_scaling == MX_LM_ROPE_LLAMA3 ? llama3_freqs(cfg_of(self)) : NULL;
  mx_array *y = block(self, in[0], NULL, ((lm_mod *)self)->layer, freqs);
  mx_array_free(freqs);
  return y;
}

/* ---- gradient checkpointing (mlx-lm's grad_checkpoint) ------------------------------
 * A layer as a closure of (h, its trainable parameters...): the parameters
 * are inputs, set on the layer inside, so the recomputation in the backward
 * pass differentiates them; frozen weights are captured as constants. */
typedef struct {
  mx_nn_module *layer;
  mx_array *freqs;
} ck_payload;

static int ck_layer_apply(void *payload, mx_array **in, int n, mx_list *out) {
  ck_payload *p = payload;
  mx_map *tp = NULL;
  int st = mx_nn_trainable_parameters(p->layer, &tp);
  if (!st && mx_map_size(tp) != n - 1)
    st = mx__set_error(MX_ERR_INTERNAL, "grad checkpoint: %d inputs for %d parameters", n - 1,
                       mx_map_size(tp));
  for (int i = 0; i < n - 1 && !st; i++) st = mx_map_set(tp, mx_map_key(tp, i), in[i + 1]);
  if (!st && n > 1) st = mx_nn_update(p->layer, tp, MX_NN_UPDATE_PARTIAL);
  mx_map_free(tp);
  if (st) return st;
  mx_array *y = block(p->layer, in[0], NULL, ((lm_mod *)p->layer)->layer, p->freqs);
  return y ? mx_list_push(out, y) : mx_last_status();
}

/* The closure outlives this call (the backward pass recomputes through
 * it): its payload is on the heap, freed with the closure. */
static void ck_payload_free(void *p) {
  ck_payload *pl = p;
  mx_array_free(pl->freqs);
  free(pl);
}

static mx_array *checkpointed_block(mx_nn_module *layer, mx_array *h, mx_array *freqs) {
  mx_map *tp = NULL;
  if (mx_nn_trainable_parameters(layer, &tp)) return NULL;
  int np = mx_map_size(tp);
  mx_array **in = malloc((size_t)(np + 1) * sizeof *in);
  ck_payload *pl = malloc(sizeof *pl);
  mx_closure *f = NULL;
  if (pl) {
    *pl = (ck_payload){layer, freqs ? mx_array_retain(freqs) : NULL};
    if (!(f = mx_closure_new(ck_layer_apply, pl, ck_payload_free))) ck_payload_free(pl);
  }
  mx_closure *ck = f ? mx_checkpoint(f) : NULL;
  mx_array *y = NULL;
  if (in && ck) {
    in[0] = h;
    for (int i = 0; i < np; i++) in[i + 1] = mx_map_value(tp, i);
    mx_list out = MX_LIST_INIT;
    if (!mx_closure_apply(ck, in, np + 1, &out) && out.size == 1)
      y = mx_array_retain(out.items[0]);
    mx_list_clear(&out);
  } else if (!in) {
    mx__set_error(MX_ERR_OOM, "grad checkpoint: out of memory");
  }
  mx_closure_free(ck);
  mx_closure_free(f);
  free(in);
  mx_map_free(tp);
  return y;
}

/* ---- the model ----------------------------------------------------------------------- */

/* "model": embed_tokens, layers, norm -> hidden states (B, T, hidden). */
static mx_array *inner(mx_nn_module *self, mx_array *tokens, fwd_ctx *cache,
                       mx_array *freqs) {
  mx_array *h = mx_nn_forward(mx_nn_child(self, "embed_tokens"), tokens);
  if (h && cfg_of(self)->embed_scale) { /* gemma: sqrt(hidden) rounded to the dtype */
    mx_array *s = mx_multiply_scalar(h, (float)sqrt((double)cfg_of(self)->hidden_size));
    mx_array_free(h);
    h = s;
  }
  /* inference with a cache (not under a transform: add_rms_norm has no
   * VJP): the fused residual adds */
  if (h && cache && (cache->pos || cache->cache) && decode_fuse() &&
      !cfg_of(self)->sandwich_norms && !mx__tracing())
    return layers_fused(self, h, cache, freqs);
  int n = mx_nn_list_size(self, "layers");
  for (int i = 0; i < n && h; i++) {
    mx_nn_module *layer = mx_nn_list_item(self, "layers", i);
    mx_array *next = ((lm_mod *)self)->checkpoint && !cache ? checkpointed_block(layer, h, freqs)
                                                            : block(layer, h, cache, i, freqs);
    mx_array_free(h);
    h = next;
  }
  mx_array *y = mx_nn_forward(mx_nn_child(self, "norm"), h);
  mx_array_free(h);
  return y;
}

/* last: only the last position's logits (B, 1, vocab) — generation needs no
 * more, and the head is a large share of a short prompt's work. */
static mx_array *logits_of(mx_nn_module *root, mx_array *tokens, fwd_ctx *cache,
                           mx_array *freqs, bool last) {
  mx_nn_module *model = mx_nn_child(root, "model");
  if (!model) return NULL;
  mx_array *h = inner(model, tokens, cache, freqs);
  if (!h) return NULL;
  const int64_t *hs = mx_array_shape(h);
  if (last && mx_array_ndim(h) == 3 && hs[1] > 1) {
    mx_array *l = mx_slice(h, (int64_t[]){0, hs[1] - 1, 0}, (int64_t[]){hs[0], hs[1], hs[2]},
                           NULL, 3);
    mx_array_free(h);
    if (!(h = l)) return NULL;
  }
  mx_array *y;
  if (cfg_of(root)->tie_word_embeddings)
    y = mx_nn_embedding_as_linear(mx_nn_child(model, "embed_tokens"), h);
  else
    y = mx_nn_forward(mx_nn_child(root, "lm_head"), h);
  mx_array_free(h);
  if (y && cfg_of(root)->final_logit_softcapping > 0) {
    mx_array *capped = softcap(y, cfg_of(root)->final_logit_softcapping);
    mx_array_free(y);
    y = capped;
  }
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
  mx_array *y = t ? logits_of(self, t, NULL, freqs, false) : NULL;
  mx_array_free(t);
  mx_array_free(freqs);
  return y;
}

static const mx_nn_module_vtable root_vt = {.name = "Model", .forward = root_forward};
static const mx_nn_module_vtable inner_vt = {.name = "LlamaModel", .forward = inner_forward};
static const mx_nn_module_vtable block_vt = {.name = "TransformerBlock", .forward = block_forward};
static const mx_nn_module_vtable attn_vt = {.name = "Attention", .forward = attention_forward};
static const mx_nn_module_vtable mlp_vt = {.name = "MLP", .forward = mlp_forward};

static mx_nn_module *lm_mod_new(const mx_nn_module_vtable *vt, const mx_lm_config *c, int layer) {
  lm_mod *m = (lm_mod *)mx_nn_module_new(vt, sizeof(lm_mod));
  if (m) {
    m->cfg = *c;
    m->layer = layer;
  }
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

static mx_nn_module *build_block(const mx_lm_config *c, int layer) {
  const mx_lm_config *ar = c;
  int64_t d = c->hidden_size, hd = c->head_dim, H = c->num_attention_heads,
          KV = c->num_key_value_heads, I = c->intermediate_size;
  bool ab = c->attention_bias;
  bool ob = ab && !strcmp(c->model_type, "llama"); /* llama's attention_bias covers o_proj */
  mx_nn_module *attn;
  if (ar->fused_qkv)
    attn = with_children(lm_mod_new(&attn_vt, c, layer), 2,
                         (const char *[]){"qkv_proj", "o_proj"},
                         (mx_nn_module *[]){mx_nn_linear_new(d, (H + 2 * KV) * hd, false, NULL),
                                            mx_nn_linear_new(H * hd, d, false, NULL)});
  else if (c->qk_norm)
    attn = with_children(lm_mod_new(&attn_vt, c, layer), 6,
                         (const char *[]){"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"},
                         (mx_nn_module *[]){mx_nn_linear_new(d, H * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(H * hd, d, ob, NULL),
                                            norm_new(ar, hd, c->rms_norm_eps),
                                            norm_new(ar, hd, c->rms_norm_eps)});
  else
    attn = with_children(lm_mod_new(&attn_vt, c, layer), 4,
                         (const char *[]){"q_proj", "k_proj", "v_proj", "o_proj"},
                         (mx_nn_module *[]){mx_nn_linear_new(d, H * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(d, KV * hd, ab, NULL),
                                            mx_nn_linear_new(H * hd, d, ob, NULL)});
  mx_nn_module *mlp;
  if (ar->fused_gate_up)
    mlp = with_children(lm_mod_new(&mlp_vt, c, layer), 2,
                        (const char *[]){"gate_up_proj", "down_proj"},
                        (mx_nn_module *[]){mx_nn_linear_new(d, 2 * I, c->mlp_bias, NULL),
                                           mx_nn_linear_new(I, d, c->mlp_bias, NULL)});
  else
    mlp = with_children(lm_mod_new(&mlp_vt, c, layer), 3,
                        (const char *[]){"gate_proj", "down_proj", "up_proj"},
                        (mx_nn_module *[]){mx_nn_linear_new(d, I, c->mlp_bias, NULL),
                                           mx_nn_linear_new(I, d, c->mlp_bias, NULL),
                                           mx_nn_linear_new(d, I, c->mlp_bias, NULL)});
  if (ar->sandwich_norms)
    return with_children(lm_mod_new(&block_vt, c, layer), 6,
                         (const char *[]){"self_attn", "mlp", "input_layernorm",
                                          "post_attention_layernorm", "pre_feedforward_layernorm",
                                          "post_feedforward_layernorm"},
                         (mx_nn_module *[]){attn, mlp, norm_new(ar, d, c->rms_norm_eps),
                                            norm_new(ar, d, c->rms_norm_eps),
                                            norm_new(ar, d, c->rms_norm_eps),
                                            norm_new(ar, d, c->rms_norm_eps)});
  return with_children(lm_mod_new(&block_vt, c, layer), 4,
                       (const char *[]){"self_attn", "mlp", "input_layernorm",
                                        "post_attention_layernorm"},
                       (mx_nn_module *[]){attn, mlp, norm_new(ar, d, c->rms_norm_eps),
                                          norm_new(ar, d, c->rms_norm_eps)});
}

mx_nn_module *mx__lm_build_llama(const mx_lm_config *c) {
  if (!c) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm build: config is NULL");
    return NULL;
  }
  mx_nn_module *inner_m = lm_mod_new(&inner_vt, c, -1);
  if (!inner_m) return NULL;
  int st = mx_nn_add_child(inner_m, "embed_tokens",
                           mx_nn_embedding_new(c->vocab_size, c->hidden_size, NULL));
  if (!st) st = mx_nn_add_list(inner_m, "layers");
  for (int64_t i = 0; i < c->num_hidden_layers && !st; i++)
    st = mx_nn_list_append(inner_m, "layers", build_block(c, (int)i));
  if (!st) st = mx_nn_add_child(inner_m, "norm", norm_new(c, c->hidden_size, c->rms_norm_eps));
  if (st) {
    mx_nn_module_free(inner_m);
    return NULL;
  }
  if (c->tie_word_embeddings)
    return with_children(lm_mod_new(&root_vt, c, -1), 1, (const char *[]){"model"},
                         (mx_nn_module *[]){inner_m});
  return with_children(lm_mod_new(&root_vt, c, -1), 2, (const char *[]){"model", "lm_head"},
                       (mx_nn_module *[]){inner_m,
                                          mx_nn_linear_new(c->hidden_size, c->vocab_size, false,
                                                           NULL)});
}

/* Checks tokens and prepares the llama3 frequencies: the (B, T) tokens. */
static mx_array *forward_tokens(mx_lm_model *m, mx_array *tokens) {
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
  return t;
}

mx_array *mx__lm_llama_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache,
                               bool last) {
  mx_array *t = forward_tokens(m, tokens);
  if (!t) return NULL;
  int64_t T = mx_array_dim(t, 1);
  mx__lm_plan plan = {0};
  /* the stacked projections, once made (mx__lm_stack_projections) */
  fwd_ctx f = {cache, NULL, NULL, {NULL, NULL}, {false, false}, NULL, NULL, NULL, m->stacks, NULL};
  if (cache && cache->max_size) {
    if (mx__lm_plan_make(cache, T, &plan)) {
      mx__lm_plan_free(&plan);
      mx_array_free(t);
      return NULL;
    }
    f.plan = &plan;
  }
  mx_array *y = logits_of(m->root, t, cache ? &f : NULL, m->rope_freqs, last);
  mx_array_free(f.mask[0]);
  mx_array_free(f.mask[1]);
  if (y && cache) {
    if (f.plan) mx__lm_plan_commit(cache, &plan, T);
    cache->offset += T;
  }
  mx__lm_plan_free(&plan);
  mx_array_free(t);
  return y;
}

bool mx__lm_static_ok(const mx_lm_model *m, int64_t capacity) {
  const mx_lm_config *c = &m->config;
  mx_dtype dt = mx__lm_model_dtype(m);
  return !c->longrope && c->attn_logit_softcapping <= 0 &&
         (c->sliding_window <= 0 || capacity <= c->sliding_window) && c->head_dim <= 256 &&
         (dt == MX_FLOAT16 || dt == MX_BFLOAT16 || dt == MX_FLOAT32);
}

mx_array *mx__lm_forward_static(mx_lm_model *m, mx_array *tokens, mx_array **keys,
                                mx_array **values, mx_array *pos) {
  mx_array *t = forward_tokens(m, tokens);
  if (!t) return NULL;
  fwd_ctx f = {NULL, NULL, NULL, {NULL, NULL}, {false, false}, pos, keys, values, m->stacks, NULL};
  mx_array *y = logits_of(m->root, t, &f, m->rope_freqs, false);
  mx_array_free(t);
  return y;
}

mx_array *mx__lm_forward_masked(mx_lm_model *m, mx_array *tokens, const bool *visible) {
  mx_array *t = forward_tokens(m, tokens);
  if (!t) return NULL;
  fwd_ctx f = {NULL, NULL, visible, {NULL, NULL}, {false, false}, NULL, NULL, NULL, NULL, NULL};
  mx_array *y = logits_of(m->root, t, &f, m->rope_freqs, false);
  mx_array_free(f.mask[0]);
  mx_array_free(f.mask[1]);
  mx_array_free(t);
  return y;
}

int mx_lm_set_grad_checkpoint(mx_lm_model *m, bool on) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "lm_set_grad_checkpoint: model is NULL");
  mx_nn_module *inner_m = mx_nn_child(m->root, "model");
  if (!inner_m) return mx__set_error(MX_ERR_INVALID_ARG, "lm_set_grad_checkpoint: no \"model\"");
  ((lm_mod *)inner_m)->checkpoint = on;
  return MX_OK;
}

static mx_array *forward_checked(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache,
                                 bool last) {
  if (!m || !tokens) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_forward: model or tokens is NULL");
    return NULL;
  }
  if (cache && cache->nlayers != m->config.num_hidden_layers) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_forward: the cache has %d layers, the model %lld",
                  cache->nlayers, (long long)m->config.num_hidden_layers);
    return NULL;
  }
  return mx__lm_llama_forward(m, tokens, cache, last);
}

mx_array *mx_lm_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache) {
  return forward_checked(m, tokens, cache, false);
}

mx_array *mx_lm_forward_last(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache) {
  return forward_checked(m, tokens, cache, true);
}
