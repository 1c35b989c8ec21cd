/* layers.c — Linear, Embedding, RMSNorm, LayerNorm, RoPE,
 * MultiHeadAttention, Dropout, Sequential and activations (MLX's nn
 * layers; initialisation as MLX). Forward functions only build graphs. */
#include "nn_internal.h"
#include "ops/ops_internal.h"

#include <math.h>

/* ==== Linear ============================================================= */
typedef struct {
  mx_nn_module base;
} linear_t;

mx_array *mx__nn_linear_apply(mx_array *x, mx_array *w, mx_array *b) {
  mx_array *wt = mx_transpose(w, NULL, 0);
  mx_array *y = mx_matmul(x, wt);
  mx_array_free(wt);
  if (!b) return y;
  mx_array *z = mx_add(y, b);
  mx_array_free(y);
  return z;
}

static const mx_nn_module_vtable linear_vt;

mx_array *mx__nn_plain_linear_weight(mx_nn_module *m) {
  return m && m->vtable == &linear_vt && !mx_nn_has_param(m, "bias") ? mx_nn_param(m, "weight")
                                                                     : NULL;
}

mx_array *mx__nn_linear_add(mx_nn_module *lin, mx_array *x, mx_array *r) {
  if (!lin || !x || !r) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "nn: linear_add: NULL argument");
    return NULL;
  }
  mx_array *w = mx__nn_plain_linear_weight(lin);
  if (w && mx_array_ndim(w) == 2 && mx_array_dtype(w) == mx_array_dtype(x) &&
      mx_array_dtype(r) == mx_array_dtype(x) && mx_dtype_is_float(mx_array_dtype(x))) {
    mx_array *wt = mx_transpose(w, NULL, 0);
    mx_array *y = wt ? mx_addmm(r, x, wt, 1.0, 1.0) : NULL;
    mx_array_free(wt);
    return y;
  }
  mx_array *y = mx_nn_forward(lin, x);
  mx_array *s = y ? mx_add(r, y) : NULL;
  mx_array_free(y);
  return s;
}

static mx_array *linear_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *w = mx_nn_param(self, "weight");
  mx_array *b = mx_nn_has_param(self, "bias") ? mx_nn_param(self, "bias") : NULL;
  return w ? mx__nn_linear_apply(in[0], w, b) : NULL;
}

static void linear_describe(const mx_nn_module *self, char *buf, size_t n) {
  mx_array *w = mx_nn_param(self, "weight");
  if (!w || mx_array_ndim(w) != 2) return;
  snprintf(buf, n, "input_dims=%lld, output_dims=%lld, bias=%s", (long long)mx_array_dim(w, 1),
           (long long)mx_array_dim(w, 0), mx_nn_has_param(self, "bias") ? "True" : "False");
}

static mx_nn_module *linear_to_quantized(mx_nn_module *self, int gs, int bits) {
  return mx_nn_quantized_linear_from_linear(self, gs, bits);
}

static const mx_nn_module_vtable linear_vt = {
    .name = "Linear", .forward = linear_forward, .describe = linear_describe,
    .to_quantized = linear_to_quantized};

mx_nn_module *mx__nn_linear_from(mx_array *w, mx_array *b) {
  mx_nn_module *m = mx_nn_module_new(&linear_vt, sizeof(linear_t));
  if (!m || mx_nn_add_param(m, "weight", w) || (b && mx_nn_add_param(m, "bias", b))) {
    if (!m) {
      mx_array_free(w);
      mx_array_free(b);
    }
    mx_nn_module_free(m);
    return NULL;
  }
  return m;
}

mx_nn_module *mx_nn_linear_new(int64_t in, int64_t out, bool bias, mx_array *key) {
  if (in <= 0 || out <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: Linear(%lld, %lld): dims must be positive", (long long)in,
                  (long long)out);
    return NULL;
  }
  mx_array *k[2];
  if (mx__nn_split_key(key, 2, k)) return NULL;
  double s = sqrt(1.0 / (double)in);
  mx_array *w = mx_random_uniform(-s, s, (int64_t[]){out, in}, 2, MX_FLOAT32, k[0]);
  mx_array *b = bias ? mx_random_uniform(-s, s, (int64_t[]){out}, 1, MX_FLOAT32, k[1]) : NULL;
  mx__nn_free_n(k, 2);
  if (!w || (bias && !b)) {
    mx_array_free(w);
    mx_array_free(b);
    return NULL;
  }
  return mx__nn_linear_from(w, b);
}

/* ==== Embedding ============================================================ */
static mx_array *embedding_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *w = mx_nn_param(self, "weight");
  return w ? mx_take(w, in[0], 0) : NULL;
}
static void embedding_describe(const mx_nn_module *self, char *buf, size_t n) {
  mx_array *w = mx_nn_param(self, "weight");
  if (w && mx_array_ndim(w) == 2)
    snprintf(buf, n, "%lld, %lld", (long long)mx_array_dim(w, 0), (long long)mx_array_dim(w, 1));
}
static mx_nn_module *embedding_to_quantized(mx_nn_module *self, int gs, int bits) {
  return mx_nn_quantized_embedding_from_embedding(self, gs, bits);
}
static const mx_nn_module_vtable embedding_vt = {
    .name = "Embedding", .forward = embedding_forward, .describe = embedding_describe,
    .to_quantized = embedding_to_quantized};

mx_nn_module *mx_nn_embedding_new(int64_t num, int64_t dims, mx_array *key) {
  if (num <= 0 || dims <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: Embedding(%lld, %lld): dims must be positive",
                  (long long)num, (long long)dims);
    return NULL;
  }
  mx_array *k[1];
  if (mx__nn_split_key(key, 1, k)) return NULL;
  mx_array *w = mx_random_normal((int64_t[]){num, dims}, 2, MX_FLOAT32, 0.0, sqrt(1.0 / (double)dims), k[0]);
  mx_array_free(k[0]);
  if (!w) return NULL;
  mx_nn_module *m = mx_nn_module_new(&embedding_vt, sizeof(mx_nn_module));
  if (!m) {
    mx_array_free(w);
    return NULL;
  }
  if (mx_nn_add_param(m, "weight", w)) {
    mx_nn_module_free(m);
    return NULL;
  }
  return m;
}

mx_array *mx_nn_embedding_as_linear(mx_nn_module *e, mx_array *x) {
  if (!e || !x) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "nn: as_linear: NULL argument");
    return NULL;
  }
  if (mx__nn_is(e, "QuantizedEmbedding")) {
    int gs, bits;
    mx_nn_quantized_info(e, &gs, &bits);
    return mx_quantized_matmul(x, mx_nn_param(e, "weight"), mx_nn_param(e, "scales"),
                               mx_nn_param(e, "biases"), true, gs, bits);
  }
  if (!mx__nn_is(e, "Embedding")) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: as_linear: %s is not an Embedding", mx_nn_module_type(e));
    return NULL;
  }
  return mx__nn_linear_apply(x, mx_nn_param(e, "weight"), NULL);
}

/* ==== RMSNorm / LayerNorm ===================================================== */
typedef struct {
  mx_nn_module base;
  int64_t dims;
  double eps;
  bool affine, bias;
} norm_t;

static mx_array *rms_norm_forward(mx_nn_module *self, mx_array *const *in, int n) {
  norm_t *s = (norm_t *)self;
  mx_array *w = mx_nn_param(self, "weight");
  return w ? mx_fast_rms_norm(in[0], w, s->eps) : NULL;
}
static void norm_describe(const mx_nn_module *self, char *buf, size_t n) {
  const norm_t *s = (const norm_t *)self;
  if (mx__nn_is(self, "LayerNorm"))
    snprintf(buf, n, "%lld, eps=%g, affine=%s", (long long)s->dims, s->eps, s->affine ? "True" : "False");
  else
    snprintf(buf, n, "%lld, eps=%g", (long long)s->dims, s->eps);
}
static const mx_nn_module_vtable rms_norm_vt = {
    .name = "RMSNorm", .forward = rms_norm_forward, .describe = norm_describe};

mx_nn_module *mx_nn_rms_norm_new(int64_t dims, double eps) {
  if (dims <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: RMSNorm(%lld): dims must be positive", (long long)dims);
    return NULL;
  }
  norm_t *s = (norm_t *)mx_nn_module_new(&rms_norm_vt, sizeof *s);
  if (!s) return NULL;
  s->dims = dims;
  s->eps = eps;
  if (mx_nn_add_param(&s->base, "weight", mx_ones((int64_t[]){dims}, 1, MX_FLOAT32))) {
    mx_nn_module_free(&s->base);
    return NULL;
  }
  return &s->base;
}

static mx_array *layer_norm_forward(mx_nn_module *self, mx_array *const *in, int n) {
  norm_t *s = (norm_t *)self;
  mx_array *w = mx_nn_has_param(self, "weight") ? mx_nn_param(self, "weight") : NULL;
  mx_array *b = mx_nn_has_param(self, "bias") ? mx_nn_param(self, "bias") : NULL;
  return mx_fast_layer_norm(in[0], w, b, s->eps);
}
static const mx_nn_module_vtable layer_norm_vt = {
    .name = "LayerNorm", .forward = layer_norm_forward, .describe = norm_describe};

mx_nn_module *mx_nn_layer_norm_new(int64_t dims, double eps, bool affine, bool bias) {
  if (dims <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: LayerNorm(%lld): dims must be positive", (long long)dims);
    return NULL;
  }
  norm_t *s = (norm_t *)mx_nn_module_new(&layer_norm_vt, sizeof *s);
  if (!s) return NULL;
  s->dims = dims;
  s->eps = eps;
  s->affine = affine;
  s->bias = bias;
  if (affine && (mx_nn_add_param(&s->base, "weight", mx_ones((int64_t[]){dims}, 1, MX_FLOAT32)) ||
                 (bias && mx_nn_add_param(&s->base, "bias", mx_zeros((int64_t[]){dims}, 1, MX_FLOAT32))))) {
    mx_nn_module_free(&s->base);
    return NULL;
  }
  return &s->base;
}

/* ==== RoPE ==================================================================== */
typedef struct {
  mx_nn_module base;
  int dims;
  bool traditional;
  double rope_base, scale;
} rope_t;

mx_array *mx_nn_rope_apply(mx_nn_module *m, mx_array *x, int64_t offset) {
  if (!mx__nn_is(m, "RoPE")) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: rope_apply: %s is not a RoPE", mx_nn_module_type(m));
    return NULL;
  }
  rope_t *r = (rope_t *)m;
  return mx_fast_rope(x, r->dims, r->traditional, r->rope_base, r->scale, offset, NULL);
}
static mx_array *rope_forward(mx_nn_module *self, mx_array *const *in, int n) {
  return mx_nn_rope_apply(self, in[0], 0);
}
static void rope_describe(const mx_nn_module *self, char *buf, size_t n) {
  const rope_t *r = (const rope_t *)self;
  snprintf(buf, n, "%d, traditional=%s", r->dims, r->traditional ? "True" : "False");
}
static const mx_nn_module_vtable rope_vt = {.name = "RoPE", .forward = rope_forward, .describe = rope_describe};

mx_nn_module *mx_nn_rope_new(int dims, bool traditional, double base, double scale) {
  if (dims <= 0 || dims % 2) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: RoPE(%d): dims must be positive and even", dims);
    return NULL;
  }
  rope_t *r = (rope_t *)mx_nn_module_new(&rope_vt, sizeof *r);
  if (!r) return NULL;
  r->dims = dims;
  r->traditional = traditional;
  r->rope_base = base;
  r->scale = scale;
  return &r->base;
}

/* ==== MultiHeadAttention ========================================================= */
typedef struct {
  mx_nn_module base;
  int num_heads;
} mha_t;

/* (B, L, H*d) -> (B, H, L, d) */
static mx_array *split_heads(mx_array *x, int h) {
  if (!x) return NULL;
  int64_t B = mx_array_dim(x, 0), L = mx_array_dim(x, 1);
  mx_array *r = mx_reshape(x, (int64_t[]){B, L, h, -1}, 4);
  mx_array *t = mx_transpose(r, (int[]){0, 2, 1, 3}, 4);
  mx_array_free(r);
  return t;
}

static mx_array *mha_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mha_t *s = (mha_t *)self;
  if (n < 3 || n > 4) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: MultiHeadAttention takes (queries, keys, values[, mask]), got %d inputs", n);
    return NULL;
  }
  for (int i = 0; i < 3; i++)
    if (mx_array_ndim(in[i]) != 3) {
      mx__set_error(MX_ERR_SHAPE, "nn: MultiHeadAttention: input %d must be (B, L, D), got ndim %d", i,
                    mx_array_ndim(in[i]));
      return NULL;
    }
  mx__tmp t = {0};
  mx_array *q = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "query_proj"), in[0]));
  mx_array *k = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "key_proj"), in[1]));
  mx_array *v = mx__keep(&t, mx_nn_forward(mx_nn_child(self, "value_proj"), in[2]));
  mx_array *qh = mx__keep(&t, split_heads(q, s->num_heads));
  mx_array *kh = mx__keep(&t, split_heads(k, s->num_heads));
  mx_array *vh = mx__keep(&t, split_heads(v, s->num_heads));
  mx_array *y = NULL;
  if (qh && kh && vh) {
    double scale = sqrt(1.0 / (double)mx_array_dim(qh, -1));
    mx_array *o = mx__keep(&t, mx_fast_scaled_dot_product_attention(qh, kh, vh, scale, n == 4 ? in[3] : NULL, false));
    mx_array *ot = mx__keep(&t, mx_transpose(o, (int[]){0, 2, 1, 3}, 4));
    mx_array *of = o ? mx__keep(&t, mx_reshape(ot, (int64_t[]){mx_array_dim(in[0], 0), mx_array_dim(in[0], 1), -1}, 3)) : NULL;
    y = of ? mx_nn_forward(mx_nn_child(self, "out_proj"), of) : NULL;
  }
  mx__tmp_free(&t);
  return y;
}

static const mx_nn_module_vtable mha_vt = {.name = "MultiHeadAttention", .forward = mha_forward};

mx_nn_module *mx_nn_multi_head_attention_new(int64_t dims, int num_heads, int64_t qd, int64_t kd,
                                             int64_t vd, int64_t value_dims, int64_t vod, bool bias,
                                             mx_array *key) {
  if (dims <= 0 || num_heads <= 0 || dims % num_heads) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "nn: MultiHeadAttention: dims (%lld) must be a positive multiple of num_heads (%d)",
                  (long long)dims, num_heads);
    return NULL;
  }
  qd = qd > 0 ? qd : dims;
  kd = kd > 0 ? kd : dims;
  vd = vd > 0 ? vd : kd;
  value_dims = value_dims > 0 ? value_dims : dims;
  vod = vod > 0 ? vod : dims;
  mx_array *k[4];
  if (mx__nn_split_key(key, 4, k)) return NULL;
  mha_t *s = (mha_t *)mx_nn_module_new(&mha_vt, sizeof *s);
  int st = s ? MX_OK : mx_last_status();
  if (s) {
    s->num_heads = num_heads;
    st = mx_nn_add_child(&s->base, "query_proj", mx_nn_linear_new(qd, dims, bias, k[0]));
    if (!st) st = mx_nn_add_child(&s->base, "key_proj", mx_nn_linear_new(kd, dims, bias, k[1]));
    if (!st) st = mx_nn_add_child(&s->base, "value_proj", mx_nn_linear_new(vd, value_dims, bias, k[2]));
    if (!st) st = mx_nn_add_child(&s->base, "out_proj", mx_nn_linear_new(value_dims, vod, bias, k[3]));
  }
  mx__nn_free_n(k, 4);
  if (st) {
    mx_nn_module_free(s ? &s->base : NULL);
    return NULL;
  }
  return &s->base;
}

mx_array *mx_nn_create_additive_causal_mask(int64_t n, mx_dtype dt) {
  mx_array *ones = mx_tri(n, n, 0, MX_BOOL);
  mx_array *zero = mx_array_scalar(0, dt), *neg = mx_array_scalar(-1e9, dt);
  mx_array *m = mx_where(ones, zero, neg);
  mx_array_free(ones);
  mx_array_free(zero);
  mx_array_free(neg);
  return m;
}

/* ==== Dropout ====================================================================== */
typedef struct {
  mx_nn_module base;
  double p;
  mx_array *key;
} dropout_t;

static void dropout_destroy(mx_nn_module *self) { mx_array_free(((dropout_t *)self)->key); }
static mx_array *dropout_forward(mx_nn_module *self, mx_array *const *in, int n) {
  return mx__nn_dropout_apply(self, in[0]);
}
static void dropout_describe(const mx_nn_module *self, char *buf, size_t n) {
  snprintf(buf, n, "p=%g", ((const dropout_t *)self)->p);
}
static const mx_nn_module_vtable dropout_vt = {
    .name = "Dropout", .forward = dropout_forward, .destroy = dropout_destroy, .describe = dropout_describe};

mx_array *mx__nn_dropout_apply(mx_nn_module *self, mx_array *x) {
  dropout_t *d = (dropout_t *)self;
  if (!x) return NULL;
  if (!self->training || d->p == 0) return mx_array_retain(x);
  mx_array *use = NULL;
  if (d->key) { /* split: the next call gets fresh numbers */
    mx_array *k[2];
    if (mx__nn_split_key(d->key, 2, k)) return NULL;
    mx_array_free(d->key);
    d->key = k[0];
    use = k[1];
  }
  mx_array *mask = mx_random_bernoulli(1.0 - d->p, mx_array_shape(x), mx_array_ndim(x), use);
  mx_array_free(use);
  mx_array *mf = mx_astype(mask, mx_array_dtype(x));
  mx_array *y = mx_multiply(x, mf);
  mx_array *z = mx_multiply_scalar(y, 1.0 / (1.0 - d->p));
  mx_array_free(mask);
  mx_array_free(mf);
  mx_array_free(y);
  return z;
}

mx_nn_module *mx_nn_dropout_new(double p) {
  if (!(p >= 0 && p < 1)) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: Dropout: p = %g must be in [0, 1)", p);
    return NULL;
  }
  dropout_t *d = (dropout_t *)mx_nn_module_new(&dropout_vt, sizeof *d);
  if (d) d->p = p;
  return d ? &d->base : NULL;
}

int mx_nn_dropout_set_key(mx_nn_module *m, mx_array *key) {
  if (!mx__nn_is(m, "Dropout") || !key)
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: dropout_set_key: needs a Dropout and a key");
  dropout_t *d = (dropout_t *)m;
  mx_array_free(d->key);
  d->key = mx_array_retain(key);
  return MX_OK;
}

/* ==== Sequential =================================================================== */
static mx_array *sequential_forward(mx_nn_module *self, mx_array *const *in, int n) {
  int count = mx_nn_list_size(self, "layers");
  mx_array *x = mx_array_retain(in[0]);
  for (int i = 0; i < count && x; i++) {
    mx_array *y = mx_nn_forward(mx_nn_list_item(self, "layers", i), x);
    mx_array_free(x);
    x = y;
  }
  return x;
}
static const mx_nn_module_vtable sequential_vt = {.name = "Sequential", .forward = sequential_forward};

mx_nn_module *mx_nn_sequential_new(int n, mx_nn_module *const *layers) {
  mx_nn_module *m = mx_nn_module_new(&sequential_vt, sizeof(mx_nn_module));
  int st = m ? mx_nn_add_list(m, "layers") : mx_last_status();
  for (int i = 0; i < n; i++) {
    if (!st) {
      st = mx_nn_list_append(m, "layers", layers[i]);
    } else {
      mx_nn_module_free(layers[i]);
    }
  }
  if (st) {
    mx_nn_module_free(m);
    return NULL;
  }
  return m;
}

/* ==== activations ===================================================================== */
static mx_array *scalar0(mx_array *x) { return x ? mx__scalar_like(0, x) : NULL; }

mx_array *mx_nn_relu(mx_array *x) {
  mx_array *z = x ? scalar0(x) : NULL;
  mx_array *y = mx_maximum(x, z);
  mx_array_free(z);
  return y;
}
mx_array *mx_nn_relu6(mx_array *x) { return mx_clip_scalar(x, 0, 6); }
mx_array *mx_nn_leaky_relu(mx_array *x, double slope) {
  mx_array *s = mx_multiply_scalar(x, slope);
  mx_array *y = mx_maximum(s, x);
  mx_array_free(s);
  return y;
}
mx_array *mx_nn_elu(mx_array *x, double alpha) {
  mx__tmp t = {0};
  mx_array *pos = mx__keep(&t, mx_greater(x, mx__keep(&t, scalar0(x))));
  mx_array *neg = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_expm1(x)), alpha));
  mx_array *y = mx_where(pos, x, neg);
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_celu(mx_array *x, double alpha) {
  /* max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) */
  mx__tmp t = {0};
  mx_array *z = mx__keep(&t, scalar0(x));
  mx_array *e = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_expm1(mx__keep(&t, mx_multiply_scalar(x, 1.0 / alpha)))), alpha));
  mx_array *y = mx_add(mx__keep(&t, mx_maximum(x, z)), mx__keep(&t, mx_minimum(e, z)));
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_selu(mx_array *x) {
  mx_array *e = mx_nn_elu(x, 1.67326319217681884765625);
  mx_array *y = mx_multiply_scalar(e, 1.05070102214813232421875);
  mx_array_free(e);
  return y;
}
mx_array *mx_nn_gelu(mx_array *x) {
  mx__tmp t = {0};
  mx_array *e = mx__keep(&t, mx_erf(mx__keep(&t, mx_multiply_scalar(x, M_SQRT1_2))));
  mx_array *a = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_add_scalar(e, 1.0)), 0.5));
  mx_array *y = mx_multiply(x, a);
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_gelu_approx(mx_array *x) {
  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
  mx__tmp t = {0};
  mx_array *x3 = mx__keep(&t, mx_multiply(x, mx__keep(&t, mx_square(x))));
  mx_array *in = mx__keep(&t, mx_add(x, mx__keep(&t, mx_multiply_scalar(x3, 0.044715))));
  mx_array *th = mx__keep(&t, mx_tanh(mx__keep(&t, mx_multiply_scalar(in, sqrt(2.0 / M_PI)))));
  mx_array *a = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_add_scalar(th, 1.0)), 0.5));
  mx_array *y = mx_multiply(x, a);
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_gelu_fast_approx(mx_array *x) {
  mx_array *a = mx_multiply_scalar(x, 1.702);
  mx_array *s = mx_sigmoid(a);
  mx_array *y = mx_multiply(x, s);
  mx_array_free(a);
  mx_array_free(s);
  return y;
}
mx_array *mx_nn_silu(mx_array *x) {
  mx_array *s = mx_sigmoid(x);
  mx_array *y = mx_multiply(x, s);
  mx_array_free(s);
  return y;
}
mx_array *mx_nn_sigmoid(mx_array *x) { return mx_sigmoid(x); }
mx_array *mx_nn_tanh(mx_array *x) { return mx_tanh(x); }
mx_array *mx_nn_softplus(mx_array *x) {
  /* logaddexp(x, 0) = max(x, 0) + log1p(exp(-|x|)) */
  mx__tmp t = {0};
  mx_array *m = mx__keep(&t, mx_maximum(x, mx__keep(&t, scalar0(x))));
  mx_array *l = mx__keep(&t, mx_log1p(mx__keep(&t, mx_exp(mx__keep(&t, mx_negative(mx__keep(&t, mx_abs(x))))))));
  mx_array *y = mx_add(m, l);
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_log_sigmoid(mx_array *x) {
  mx_array *n = mx_negative(x);
  mx_array *s = mx_nn_softplus(n);
  mx_array *y = mx_negative(s);
  mx_array_free(n);
  mx_array_free(s);
  return y;
}
mx_array *mx_nn_softsign(mx_array *x) {
  mx__tmp t = {0};
  mx_array *y = mx_divide(x, mx__keep(&t, mx_add_scalar(mx__keep(&t, mx_abs(x)), 1.0)));
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_mish(mx_array *x) {
  mx__tmp t = {0};
  mx_array *y = mx_multiply(x, mx__keep(&t, mx_tanh(mx__keep(&t, mx_nn_softplus(x)))));
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_hardswish(mx_array *x) {
  /* x * min(max(x + 3, 0), 6) / 6 */
  mx__tmp t = {0};
  mx_array *c = mx__keep(&t, mx_clip_scalar(mx__keep(&t, mx_add_scalar(x, 3.0)), 0, 6));
  mx_array *y = mx_multiply(x, mx__keep(&t, mx_multiply_scalar(c, 1.0 / 6.0)));
  mx__tmp_free(&t);
  return y;
}
mx_array *mx_nn_hard_tanh(mx_array *x, double lo, double hi) { return mx_clip_scalar(x, lo, hi); }
mx_array *mx_nn_glu(mx_array *x, int axis) {
  mx_array *parts[2] = {0};
  if (!x || mx_split(x, 2, axis, parts)) return NULL;
  mx_array *s = mx_sigmoid(parts[1]);
  mx_array *y = mx_multiply(parts[0], s);
  mx_array_free(s);
  mx__nn_free_n(parts, 2);
  return y;
}

mx_array *mx_nn_activation_apply(mx_nn_activation kind, double p, mx_array *x) {
  switch (kind) {
    case MX_NN_ACT_RELU: return mx_nn_relu(x);
    case MX_NN_ACT_RELU6: return mx_nn_relu6(x);
    case MX_NN_ACT_LEAKY_RELU: return mx_nn_leaky_relu(x, p);
    case MX_NN_ACT_ELU: return mx_nn_elu(x, p);
    case MX_NN_ACT_CELU: return mx_nn_celu(x, p);
    case MX_NN_ACT_SELU: return mx_nn_selu(x);
    case MX_NN_ACT_GELU: return mx_nn_gelu(x);
    case MX_NN_ACT_GELU_APPROX: return mx_nn_gelu_approx(x);
    case MX_NN_ACT_GELU_FAST_APPROX: return mx_nn_gelu_fast_approx(x);
    case MX_NN_ACT_SILU: return mx_nn_silu(x);
    case MX_NN_ACT_SIGMOID: return mx_nn_sigmoid(x);
    case MX_NN_ACT_LOG_SIGMOID: return mx_nn_log_sigmoid(x);
    case MX_NN_ACT_TANH: return mx_nn_tanh(x);
    case MX_NN_ACT_SOFTPLUS: return mx_nn_softplus(x);
    case MX_NN_ACT_SOFTSIGN: return mx_nn_softsign(x);
    case MX_NN_ACT_MISH: return mx_nn_mish(x);
    case MX_NN_ACT_HARDSWISH: return mx_nn_hardswish(x);
    case MX_NN_ACT_HARD_TANH: return mx_nn_hard_tanh(x, -1.0, 1.0);
  }
  mx__set_error(MX_ERR_INVALID_ARG, "nn: unknown activation %d", (int)kind);
  return NULL;
}

typedef struct {
  mx_nn_module base;
  mx_nn_activation kind;
  double param;
} act_t;
static mx_array *act_forward(mx_nn_module *self, mx_array *const *in, int n) {
  act_t *a = (act_t *)self;
  return mx_nn_activation_apply(a->kind, a->param, in[0]);
}
#define ACT_VT(id, nm) [id] = {.name = nm, .forward = act_forward}
static const mx_nn_module_vtable act_vts[] = {
    ACT_VT(MX_NN_ACT_RELU, "ReLU"),           ACT_VT(MX_NN_ACT_RELU6, "ReLU6"),
    ACT_VT(MX_NN_ACT_LEAKY_RELU, "LeakyReLU"), ACT_VT(MX_NN_ACT_ELU, "ELU"),
    ACT_VT(MX_NN_ACT_CELU, "CELU"),           ACT_VT(MX_NN_ACT_SELU, "SELU"),
    ACT_VT(MX_NN_ACT_GELU, "GELU"),           ACT_VT(MX_NN_ACT_GELU_APPROX, "GELU"),
    ACT_VT(MX_NN_ACT_GELU_FAST_APPROX, "GELU"), ACT_VT(MX_NN_ACT_SILU, "SiLU"),
    ACT_VT(MX_NN_ACT_SIGMOID, "Sigmoid"),     ACT_VT(MX_NN_ACT_LOG_SIGMOID, "LogSigmoid"),
    ACT_VT(MX_NN_ACT_TANH, "Tanh"),           ACT_VT(MX_NN_ACT_SOFTPLUS, "Softplus"),
    ACT_VT(MX_NN_ACT_SOFTSIGN, "Softsign"),   ACT_VT(MX_NN_ACT_MISH, "Mish"),
    ACT_VT(MX_NN_ACT_HARDSWISH, "Hardswish"), ACT_VT(MX_NN_ACT_HARD_TANH, "HardTanh"),
};

mx_nn_module *mx_nn_activation_new(mx_nn_activation kind, double param) {
  if ((unsigned)kind >= sizeof act_vts / sizeof *act_vts) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: unknown activation %d", (int)kind);
    return NULL;
  }
  act_t *a = (act_t *)mx_nn_module_new(&act_vts[kind], sizeof *a);
  if (!a) return NULL;
  a->kind = kind;
  a->param = param;
  return &a->base;
}
mx_nn_module *mx_nn_relu_new(void) { return mx_nn_activation_new(MX_NN_ACT_RELU, 0); }
mx_nn_module *mx_nn_gelu_new(bool approx) {
  return mx_nn_activation_new(approx ? MX_NN_ACT_GELU_APPROX : MX_NN_ACT_GELU, 0);
}
mx_nn_module *mx_nn_silu_new(void) { return mx_nn_activation_new(MX_NN_ACT_SILU, 0); }
