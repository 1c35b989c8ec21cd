/* lora.c — mlx-lm's LoRALinear and DoRALinear: low-rank adapters around a
 * Linear or QuantizedLinear, and fusing them back into a plain layer. */
#include "nn_internal.h"
#include "ops/ops_internal.h"

#include <math.h>

typedef struct {
  mx_nn_module base;
  double scale;
  int r;
} lora_t;

static bool is_dora(const mx_nn_module *m) { return mx__nn_is(m, "DoRALinear"); }

/* The base layer's weight as floats (dequantized for QuantizedLinear). */
static mx_array *base_weight(mx_nn_module *linear) {
  mx_array *w = mx_nn_param(linear, "weight");
  if (!w) return NULL;
  if (!mx__nn_is(linear, "QuantizedLinear")) return mx_array_retain(w);
  int gs, bits;
  mx_nn_quantized_info(linear, &gs, &bits);
  return mx_dequantize(w, mx_nn_param(linear, "scales"), mx_nn_param(linear, "biases"), gs, bits);
}

/* scale * (dropout(x) @ lora_a) @ lora_b, cast to x's dtype. */
static mx_array *lora_delta(mx_nn_module *self, mx_array *x) {
  lora_t *l = (lora_t *)self;
  mx__tmp t = {0};
  mx_array *dx = mx__keep(&t, mx__nn_dropout_apply(mx_nn_child(self, "dropout"), x));
  mx_array *a = mx__keep(&t, mx_matmul(dx, mx_nn_param(self, "lora_a")));
  mx_array *z = mx__keep(&t, mx_matmul(a, mx_nn_param(self, "lora_b")));
  mx_array *s = mx__keep(&t, mx_multiply_scalar(z, l->scale));
  mx_array *y = s ? mx_astype(s, mx_array_dtype(x)) : NULL;
  mx__tmp_free(&t);
  return y;
}

static mx_array *lora_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *y = mx_nn_forward(mx_nn_child(self, "linear"), in[0]);
  mx_array *z = y ? lora_delta(self, in[0]) : NULL;
  mx_array *out = mx_add(y, z);
  mx_array_free(y);
  mx_array_free(z);
  return out;
}

/* ||rows of w||_2: (out,) */
static mx_array *row_norm(mx_array *w) {
  mx_array *sq = mx_square(w);
  mx_array *s = mx_sum(sq, (int[]){1}, 1, false);
  mx_array *r = mx_sqrt(s);
  mx_array_free(sq);
  mx_array_free(s);
  return r;
}

/* w + (scale * lora_b.T) @ lora_a.T, in w's dtype. */
static mx_array *adapted_weight(mx_nn_module *self, mx_array *w) {
  lora_t *l = (lora_t *)self;
  mx__tmp t = {0};
  mx_dtype dt = w ? mx_array_dtype(w) : MX_FLOAT32;
  mx_array *bt = mx__keep(&t, mx_transpose(mx_nn_param(self, "lora_b"), NULL, 0));
  mx_array *bs = mx__keep(&t, mx_astype(mx__keep(&t, mx_multiply_scalar(bt, l->scale)), dt));
  mx_array *at = mx__keep(&t, mx_astype(mx__keep(&t, mx_transpose(mx_nn_param(self, "lora_a"), NULL, 0)), dt));
  mx_array *y = mx_add(w, mx__keep(&t, mx_matmul(bs, at)));
  mx__tmp_free(&t);
  return y;
}

static mx_array *dora_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_nn_module *lin = mx_nn_child(self, "linear");
  mx_array *x = in[0];
  mx__tmp t = {0};
  mx_array *w = mx__keep(&t, base_weight(lin));
  mx_array *y = mx__keep(&t, mx__nn_linear_apply(x, w, NULL));
  mx_array *z = mx__keep(&t, lora_delta(self, x));
  mx_array *out = mx__keep(&t, mx_add(y, z));
  mx_array *adapted = mx__keep(&t, adapted_weight(self, w));
  mx_array *denom = mx__keep(&t, mx_stop_gradient(mx__keep(&t, row_norm(adapted))));
  mx_array *ratio = mx__keep(&t, mx_divide(mx_nn_param(self, "m"), denom));
  mx_array *rc = mx__keep(&t, ratio ? mx_astype(ratio, mx_array_dtype(x)) : NULL);
  mx_array *res = mx_multiply(rc, out);
  if (res && mx_nn_has_param(lin, "bias")) {
    mx_array *b = mx_add(res, mx_nn_param(lin, "bias"));
    mx_array_free(res);
    res = b;
  }
  mx__tmp_free(&t);
  return res;
}

static void lora_describe(const mx_nn_module *self, char *buf, size_t n) {
  const lora_t *l = (const lora_t *)self;
  snprintf(buf, n, "r=%d, scale=%g", l->r, l->scale);
}

static const mx_nn_module_vtable lora_vt = {.name = "LoRALinear", .forward = lora_forward, .describe = lora_describe};
static const mx_nn_module_vtable dora_vt = {.name = "DoRALinear", .forward = dora_forward, .describe = lora_describe};

static mx_nn_module *adapter_new(const mx_nn_module_vtable *vt, mx_nn_module *linear, int r, double scale,
                                 double dropout, mx_array *key) {
  bool quant = mx__nn_is(linear, "QuantizedLinear");
  if (!mx__nn_is(linear, "Linear") && !quant) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: %s: can only wrap Linear or QuantizedLinear, not %s", vt->name,
                  linear ? mx_nn_module_type(linear) : "NULL");
    return NULL;
  }
  if (r <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: %s: rank %d must be positive", vt->name, r);
    return NULL;
  }
  mx_array *w = mx_nn_param(linear, "weight");
  int64_t out = mx_array_dim(w, 0), in = mx_array_dim(w, 1);
  if (quant) {
    int gs, bits;
    mx_nn_quantized_info(linear, &gs, &bits);
    in = in * 32 / bits;
  }
  lora_t *l = (lora_t *)mx_nn_module_new(vt, sizeof *l);
  if (!l) return NULL;
  l->scale = scale;
  l->r = r;
  mx_nn_module *m = &l->base;
  int st = mx_nn_add_child(m, "linear", mx_nn_module_retain(linear));
  if (!st && vt == &dora_vt) {
    mx_array *bw = base_weight(linear);
    mx_array *bf = mx_astype(bw, MX_FLOAT32);
    st = mx_nn_add_param(m, "m", row_norm(bf));
    mx_array_free(bw);
    mx_array_free(bf);
  }
  if (!st) st = mx_nn_add_child(m, "dropout", mx_nn_dropout_new(dropout));
  if (!st) {
    mx_array *k[1] = {NULL};
    st = mx__nn_split_key(key, 1, k);
    double s = 1.0 / sqrt((double)in);
    if (!st) st = mx_nn_add_param(m, "lora_a", mx_random_uniform(-s, s, (int64_t[]){in, r}, 2, MX_FLOAT32, k[0]));
    mx_array_free(k[0]);
  }
  if (!st) st = mx_nn_add_param(m, "lora_b", mx_zeros((int64_t[]){r, out}, 2, MX_FLOAT32));
  if (st) {
    mx_nn_module_free(m);
    return NULL;
  }
  mx_nn_train(m, linear->training);
  return m;
}

mx_nn_module *mx_nn_lora_linear_new(mx_nn_module *linear, int r, double scale, double dropout, mx_array *key) {
  return adapter_new(&lora_vt, linear, r, scale, dropout, key);
}
mx_nn_module *mx_nn_dora_linear_new(mx_nn_module *linear, int r, double scale, double dropout, mx_array *key) {
  return adapter_new(&dora_vt, linear, r, scale, dropout, key);
}

mx_nn_module *mx_nn_lora_fuse(mx_nn_module *m, bool dequantize) {
  if (!mx__nn_is(m, "LoRALinear") && !is_dora(m)) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: lora_fuse: %s is not a LoRALinear or DoRALinear",
                  m ? mx_nn_module_type(m) : "NULL");
    return NULL;
  }
  mx_nn_module *lin = mx_nn_child(m, "linear");
  bool quant = mx__nn_is(lin, "QuantizedLinear");
  mx__tmp t = {0};
  mx_array *w = mx__keep(&t, base_weight(lin));
  mx_array *fw = adapted_weight(m, w);
  if (fw && is_dora(m)) {
    mx_array *ns = mx__keep(&t, mx_divide(mx_nn_param(m, "m"), mx__keep(&t, row_norm(fw))));
    mx_array *nc = mx__keep(&t, mx_expand_dims(ns, (int[]){1}, 1));
    mx_array *scaled = nc ? mx_astype(mx__keep(&t, mx_multiply(nc, fw)), mx_array_dtype(fw)) : NULL;
    mx_array_free(fw);
    fw = scaled;
  }
  mx__tmp_free(&t);
  if (!fw) return NULL;
  mx_array *b = mx_nn_has_param(lin, "bias") ? mx_array_retain(mx_nn_param(lin, "bias")) : NULL;
  mx_nn_module *fused = mx__nn_linear_from(fw, b);
  if (fused && quant && !dequantize) {
    int gs, bits;
    mx_nn_quantized_info(lin, &gs, &bits);
    mx_nn_module *q = mx_nn_quantized_linear_from_linear(fused, gs, bits);
    mx_nn_module_free(fused);
    fused = q;
  }
  if (fused) mx_nn_train(fused, m->training);
  return fused;
}
