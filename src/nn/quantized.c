/* quantized.c — QuantizedLinear, QuantizedEmbedding and mx_nn_quantize
 * (mlx.nn.quantize): MLX's affine format (uint32-packed weight, scales,
 * biases); the quantized tensors are frozen, as in MLX. */
#include "nn_internal.h"

typedef struct {
  mx_nn_module base;
  int group_size, bits;
} qmod_t;

int mx_nn_quantized_info(const mx_nn_module *m, int *group_size, int *bits) {
  if (!mx__nn_is(m, "QuantizedLinear") && !mx__nn_is(m, "QuantizedEmbedding"))
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: quantized_info: %s is not a quantized layer",
                         mx_nn_module_type(m));
  const qmod_t *q = (const qmod_t *)m;
  if (group_size) *group_size = q->group_size;
  if (bits) *bits = q->bits;
  return MX_OK;
}

static void q_describe(const mx_nn_module *self, char *buf, size_t n) {
  const qmod_t *q = (const qmod_t *)self;
  mx_array *w = mx_nn_param(self, "weight");
  if (!w || mx_array_ndim(w) != 2) return;
  long long rows = (long long)mx_array_dim(w, 0), cols = (long long)mx_array_dim(w, 1) * 32 / q->bits;
  if (mx__nn_is(self, "QuantizedLinear"))
    snprintf(buf, n, "input_dims=%lld, output_dims=%lld, bias=%s, group_size=%d, bits=%d", cols, rows,
             mx_nn_has_param(self, "bias") ? "True" : "False", q->group_size, q->bits);
  else
    snprintf(buf, n, "%lld, %lld, group_size=%d, bits=%d", rows, cols, q->group_size, q->bits);
}

/* ---- QuantizedLinear ----------------------------------------------------------- */
static mx_array *qlinear_forward(mx_nn_module *self, mx_array *const *in, int n) {
  qmod_t *q = (qmod_t *)self;
  mx_array *y = mx_quantized_matmul(in[0], mx_nn_param(self, "weight"), mx_nn_param(self, "scales"),
                                    mx_nn_param(self, "biases"), true, q->group_size, q->bits);
  if (!y || !mx_nn_has_param(self, "bias")) return y;
  mx_array *z = mx_add(y, mx_nn_param(self, "bias"));
  mx_array_free(y);
  return z;
}
static const mx_nn_module_vtable qlinear_vt = {
    .name = "QuantizedLinear", .forward = qlinear_forward, .describe = q_describe};

/* A quantized module of vtable vt from weight w (borrowed). */
static mx_nn_module *quantized_from(const mx_nn_module_vtable *vt, mx_array *w, int gs, int bits,
                                    const char *what) {
  if (!w) return NULL;
  if (mx_array_ndim(w) != 2 || mx_array_dim(w, 1) % gs) {
    char d[96];
    mx_array_describe(w, d, sizeof d);
    mx__set_error(MX_ERR_SHAPE, "nn: %s: weight %s: the last dimension must be a multiple of group_size %d",
                  what, d, gs);
    return NULL;
  }
  mx_array *wq = NULL, *sc = NULL, *bi = NULL;
  if (mx_quantize(w, gs, bits, &wq, &sc, &bi)) return NULL;
  qmod_t *q = (qmod_t *)mx_nn_module_new(vt, sizeof *q);
  if (!q) {
    mx_array_free(wq);
    mx_array_free(sc);
    mx_array_free(bi);
    return NULL;
  }
  q->group_size = gs;
  q->bits = bits;
  int st = mx_nn_add_param(&q->base, "weight", wq);
  st = st ? (mx_array_free(sc), st) : mx_nn_add_param(&q->base, "scales", sc);
  st = st ? (mx_array_free(bi), st) : mx_nn_add_param(&q->base, "biases", bi);
  if (st || mx_nn_freeze(&q->base, NULL, 0, false)) {
    mx_nn_module_free(&q->base);
    return NULL;
  }
  return &q->base;
}

mx_nn_module *mx_nn_quantized_linear_from_linear(mx_nn_module *linear, int gs, int bits) {
  if (!mx__nn_is(linear, "Linear")) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: QuantizedLinear.from_linear: %s is not a Linear",
                  linear ? mx_nn_module_type(linear) : "NULL");
    return NULL;
  }
  mx_nn_module *q = quantized_from(&qlinear_vt, mx_nn_param(linear, "weight"), gs, bits, "QuantizedLinear");
  if (q && mx_nn_has_param(linear, "bias") &&
      mx_nn_add_param(q, "bias", mx_array_retain(mx_nn_param(linear, "bias")))) {
    mx_nn_module_free(q);
    return NULL;
  }
  if (q) mx_nn_train(q, linear->training);
  return q;
}

/* ---- QuantizedEmbedding ----------------------------------------------------------- */
static mx_array *qembedding_forward(mx_nn_module *self, mx_array *const *in, int n) {
  qmod_t *q = (qmod_t *)self;
  mx_array *w = mx_take(mx_nn_param(self, "weight"), in[0], 0);
  mx_array *s = mx_take(mx_nn_param(self, "scales"), in[0], 0);
  mx_array *b = mx_take(mx_nn_param(self, "biases"), in[0], 0);
  mx_array *y = w && s && b ? mx_dequantize(w, s, b, q->group_size, q->bits) : NULL;
  mx_array_free(w);
  mx_array_free(s);
  mx_array_free(b);
  return y;
}
static const mx_nn_module_vtable qembedding_vt = {
    .name = "QuantizedEmbedding", .forward = qembedding_forward, .describe = q_describe};

mx_nn_module *mx_nn_quantized_embedding_from_embedding(mx_nn_module *e, int gs, int bits) {
  if (!mx__nn_is(e, "Embedding")) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: QuantizedEmbedding.from_embedding: %s is not an Embedding",
                  e ? mx_nn_module_type(e) : "NULL");
    return NULL;
  }
  mx_nn_module *q = quantized_from(&qembedding_vt, mx_nn_param(e, "weight"), gs, bits, "QuantizedEmbedding");
  if (q) mx_nn_train(q, e->training);
  return q;
}

/* ---- nn.quantize ----------------------------------------------------------------- */
int mx_nn_quantize(mx_nn_module *model, int group_size, int bits, mx_nn_quantize_predicate pred,
                   void *ctx) {
  if (!model) return mx__set_error(MX_ERR_INVALID_ARG, "nn: quantize: model is NULL");
  mx_nn_modules leaves = MX_NN_MODULES_INIT;
  int st = mx_nn_named_modules(model, true, &leaves);
  if (st) return st;
  mx_nn_module **repl = calloc((size_t)(leaves.size ? leaves.size : 1), sizeof *repl);
  if (!repl) {
    mx_nn_modules_clear(&leaves);
    return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  }
  /* build every replacement first: on any error the model is unchanged */
  for (int i = 0; i < leaves.size && !st; i++) {
    mx_nn_module *m = leaves.modules[i];
    int gs = group_size, b = bits;
    if (!*leaves.paths[i]) continue; /* the root itself cannot be replaced in place */
    if (pred ? !pred(ctx, leaves.paths[i], m, &gs, &b) : !m->vtable->to_quantized) continue;
    if (!m->vtable->to_quantized) {
      st = mx__set_error(MX_ERR_UNSUPPORTED, "nn: quantize: \"%s\" (%s) cannot be quantized",
                         leaves.paths[i], mx_nn_module_type(m));
      break;
    }
    repl[i] = m->vtable->to_quantized(m, gs, b);
    if (!repl[i]) {
      st = mx_last_status();
      mx__prefix_error("nn: quantize \"%s\"", leaves.paths[i]);
    }
  }
  for (int i = 0; i < leaves.size; i++) {
    if (!repl[i]) continue;
    if (!st) {
      st = mx_nn_replace(model, leaves.paths[i], repl[i]);
    } else {
      mx_nn_module_free(repl[i]);
    }
  }
  free(repl);
  mx_nn_modules_clear(&leaves);
  return st;
}
