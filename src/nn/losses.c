/* losses.c — mlx.nn.losses: cross entropy (indices or probabilities,
 * label smoothing, weights, ignore index), binary cross entropy, mse, l1,
 * smooth l1, nll, kl divergence. Compositions of ops: lazy and
 * differentiable (cross entropy's plain case over float32/float64 logits
 * is one fused op, softmax_cross_entropy). */
#include "nn_internal.h"
#include "ops/fast_params.h" /* mx__fast_softmax_ce */
#include "ops/ops_internal.h"

static mx_array *reduce(mx_array *loss, mx_nn_reduction r) {
  if (!loss) return NULL;
  switch (r) {
    case MX_NN_NONE: return mx_array_retain(loss);
    case MX_NN_MEAN: return mx_mean(loss, NULL, 0, false);
    case MX_NN_SUM: return mx_sum(loss, NULL, 0, false);
  }
  mx__set_error(MX_ERR_INVALID_ARG, "nn: invalid reduction %d", (int)r);
  return NULL;
}
/* Consumes loss. */
static mx_array *reduce_take(mx_array *loss, mx_nn_reduction r) {
  mx_array *y = reduce(loss, r);
  mx_array_free(loss);
  return y;
}

static bool same_shape(mx_array *a, mx_array *b) {
  return mx_array_ndim(a) == mx_array_ndim(b) &&
         !memcmp(mx_array_shape(a), mx_array_shape(b), sizeof(int64_t) * (size_t)mx_array_ndim(a));
}

static int shape_error(const char *op, const char *what, mx_array *a, mx_array *b) {
  char x[96], y[96];
  mx_array_describe(a, x, sizeof x);
  mx_array_describe(b, y, sizeof y);
  return mx__set_error(MX_ERR_SHAPE, "nn: %s: %s (%s vs %s)", op, what, x, y);
}

/* loss * weights (weights NULL: loss), consuming loss. */
static mx_array *apply_weights(const char *op, mx_array *loss, mx_array *weights) {
  if (!weights || !loss) return loss;
  if (!same_shape(loss, weights)) {
    shape_error(op, "weights must have the shape of the loss", weights, loss);
    mx_array_free(loss);
    return NULL;
  }
  mx_array *y = mx_multiply(loss, weights);
  mx_array_free(loss);
  return y;
}

static int norm_axis(int axis, int ndim) { return axis < 0 ? axis + ndim : axis; }

static mx_array *ce_finish(mx__tmp *tp, mx_array *loss, mx_array *weights, mx_array *valid,
                           const mx_nn_ce_options *op);

mx_array *mx_nn_cross_entropy(mx_array *logits, mx_array *targets, mx_array *weights,
                              const mx_nn_ce_options *options) {
  MX__CHECK_IN("cross_entropy", logits, targets);
  mx_nn_ce_options o = options ? *options : (mx_nn_ce_options){0};
  int nd = mx_array_ndim(logits);
  int axis = norm_axis(o.axis ? o.axis : -1, nd);
  if (nd < 1 || axis < 0 || axis >= nd) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: cross_entropy: axis %d out of range for ndim %d", o.axis, nd);
    return NULL;
  }
  if (!(o.label_smoothing >= 0 && o.label_smoothing < 1)) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: cross_entropy: label_smoothing %g must be in [0, 1)", o.label_smoothing);
    return NULL;
  }
  bool probs = mx_array_ndim(targets) == nd;
  mx__tmp t = {0};
  mx_array *score, *valid = NULL;
  if (probs) {
    if (!same_shape(logits, targets)) {
      shape_error("cross_entropy", "probability targets must have the logits' shape", targets, logits);
      return NULL;
    }
    if (o.use_ignore_index) {
      mx__set_error(MX_ERR_INVALID_ARG, "nn: cross_entropy: ignore_index needs class-index targets");
      return NULL;
    }
    score = mx__keep(&t, mx_sum(mx__keep(&t, mx_multiply(logits, targets)), &axis, 1, false));
  } else {
    bool ok = mx_array_ndim(targets) == nd - 1 && mx_dtype_is_integer(mx_array_dtype(targets));
    for (int i = 0, j = 0; ok && i < nd; i++) {
      if (i == axis) continue;
      ok = mx_array_dim(targets, j++) == mx_array_dim(logits, i);
    }
    if (!ok) {
      shape_error("cross_entropy",
                  "class-index targets must be integers with the logits' shape without the class axis",
                  targets, logits);
      return NULL;
    }
    mx_array *idx = targets;
    if (o.use_ignore_index) {
      mx_array *ig = mx__keep(&t, mx_array_scalar_int(o.ignore_index, mx_array_dtype(targets)));
      valid = mx__keep(&t, mx_not_equal(targets, ig));
      idx = mx__keep(&t, mx_where(valid, targets, mx__keep(&t, mx_zeros_like(targets))));
    }
    mx_dtype ldt = mx_array_dtype(logits);
    if (axis == nd - 1 && o.label_smoothing == 0 && (ldt == MX_FLOAT32 || ldt == MX_FLOAT64)) {
      /* the fused kernel: one pass over the logits each way, the same
       * values (lse - logits[target]) in the logits' dtype */
      score = NULL;
    } else {
      mx_array *e = mx__keep(&t, mx_expand_dims(idx, &axis, 1));
      score = mx__keep(&t, mx_squeeze(mx__keep(&t, mx_take_along_axis(logits, e, axis)), &axis, 1));
    }
    if (!score) {
      mx_array *loss = mx__fast_softmax_ce(logits, idx);
      return ce_finish(&t, loss, weights, valid, &o);
    }
  }
  mx_array *lse = mx__keep(&t, mx_logsumexp(logits, &axis, 1, false));
  mx_array *loss;
  if (o.label_smoothing > 0) {
    double ls = o.label_smoothing;
    mx_array *adj = mx__keep(&t, mx_multiply_scalar(score, 1.0 - ls));
    mx_array *ml = mx__keep(&t, mx_mean(logits, &axis, 1, false));
    mx_array *sm = mx__keep(&t, mx_multiply_scalar(ml, -ls));
    loss = mx_add(mx__keep(&t, mx_subtract(lse, adj)), sm);
  } else {
    loss = mx_subtract(lse, score);
  }
  return ce_finish(&t, loss, weights, valid, &o);
}

/* The per-element loss weighted, masked and reduced; consumes loss, frees t. */
static mx_array *ce_finish(mx__tmp *tp, mx_array *loss, mx_array *weights, mx_array *valid,
                           const mx_nn_ce_options *op) {
  mx__tmp t = *tp;
  mx_nn_ce_options o = *op;
  loss = apply_weights("cross_entropy", loss, weights);
  mx_array *out = NULL;
  if (loss && valid) {
    mx_array *vz = mx__keep(&t, mx_zeros_like(loss));
    mx_array *masked = mx__keep(&t, mx_where(valid, loss, vz));
    mx_array_free(loss);
    loss = NULL;
    if (o.reduction == MX_NN_MEAN) {
      mx_array *cnt = mx__keep(&t, mx_sum(mx__keep(&t, mx_astype(valid, mx_array_dtype(masked))), NULL, 0, false));
      mx_array *one = mx__keep(&t, mx_maximum(cnt, mx__keep(&t, mx__scalar_like(1.0, cnt))));
      out = mx_divide(mx__keep(&t, mx_sum(masked, NULL, 0, false)), one);
    } else {
      out = reduce(masked, o.reduction);
    }
  } else {
    out = reduce_take(loss, o.reduction);
    loss = NULL;
  }
  mx__tmp_free(&t);
  return out;
}

mx_array *mx_nn_binary_cross_entropy(mx_array *inputs, mx_array *targets, mx_array *weights,
                                     bool with_logits, mx_nn_reduction reduction) {
  MX__CHECK_IN("binary_cross_entropy", inputs, targets);
  if (!same_shape(inputs, targets)) {
    shape_error("binary_cross_entropy", "inputs and targets must have the same shape", inputs, targets);
    return NULL;
  }
  mx__tmp t = {0};
  mx_array *loss;
  if (with_logits) { /* logaddexp(0, x) - x * t */
    loss = mx_subtract(mx__keep(&t, mx_nn_softplus(inputs)), mx__keep(&t, mx_multiply(inputs, targets)));
  } else {
    mx_array *lo = mx__keep(&t, mx__scalar_like(-100.0, inputs));
    mx_array *lp = mx__keep(&t, mx_maximum(mx__keep(&t, mx_log(inputs)), lo));
    mx_array *one_m = mx__keep(&t, mx_subtract(mx__keep(&t, mx__scalar_like(1.0, inputs)), inputs));
    mx_array *lq = mx__keep(&t, mx_maximum(mx__keep(&t, mx_log(one_m)), lo));
    mx_array *t1 = mx__keep(&t, mx_multiply(targets, lp));
    mx_array *omt = mx__keep(&t, mx_subtract(mx__keep(&t, mx__scalar_like(1.0, targets)), targets));
    mx_array *t2 = mx__keep(&t, mx_multiply(omt, lq));
    loss = mx_negative(mx__keep(&t, mx_add(t1, t2)));
  }
  mx__tmp_free(&t);
  return reduce_take(apply_weights("binary_cross_entropy", loss, weights), reduction);
}

static mx_array *diff_checked(const char *op, mx_array *p, mx_array *y) {
  if (!p || !y) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "nn: %s: NULL input", op);
    return NULL;
  }
  if (!same_shape(p, y)) {
    shape_error(op, "predictions and targets must have the same shape", p, y);
    return NULL;
  }
  return mx_subtract(p, y);
}

mx_array *mx_nn_mse_loss(mx_array *p, mx_array *y, mx_nn_reduction r) {
  mx_array *d = diff_checked("mse_loss", p, y);
  mx_array *s = mx_square(d);
  mx_array_free(d);
  return reduce_take(s, r);
}

mx_array *mx_nn_l1_loss(mx_array *p, mx_array *y, mx_nn_reduction r) {
  mx_array *d = diff_checked("l1_loss", p, y);
  mx_array *s = mx_abs(d);
  mx_array_free(d);
  return reduce_take(s, r);
}

mx_array *mx_nn_smooth_l1_loss(mx_array *p, mx_array *y, double beta, mx_nn_reduction r) {
  mx__tmp t = {0};
  mx_array *d = mx__keep(&t, mx_abs(mx__keep(&t, diff_checked("smooth_l1_loss", p, y))));
  if (!d) {
    mx__tmp_free(&t);
    return NULL;
  }
  mx_array *small = mx__keep(&t, mx_less(d, mx__keep(&t, mx__scalar_like(beta, d))));
  mx_array *q = mx__keep(&t, mx_multiply_scalar(mx__keep(&t, mx_square(d)), 0.5 / beta));
  mx_array *l = mx__keep(&t, mx_add_scalar(d, -0.5 * beta));
  mx_array *loss = mx_where(small, q, l);
  mx__tmp_free(&t);
  return reduce_take(loss, r);
}

mx_array *mx_nn_nll_loss(mx_array *inputs, mx_array *targets, int axis, mx_nn_reduction r) {
  MX__CHECK_IN("nll_loss", inputs, targets);
  int nd = mx_array_ndim(inputs);
  int ax = norm_axis(axis ? axis : -1, nd);
  if (ax < 0 || ax >= nd || mx_array_ndim(targets) != nd - 1) {
    shape_error("nll_loss", "targets must have the inputs' shape without the class axis", targets, inputs);
    return NULL;
  }
  mx__tmp t = {0};
  mx_array *e = mx__keep(&t, mx_expand_dims(targets, &ax, 1));
  mx_array *s = mx__keep(&t, mx_squeeze(mx__keep(&t, mx_take_along_axis(inputs, e, ax)), &ax, 1));
  mx_array *loss = mx_negative(s);
  mx__tmp_free(&t);
  return reduce_take(loss, r);
}

mx_array *mx_nn_kl_div_loss(mx_array *inputs, mx_array *targets, int axis, mx_nn_reduction r) {
  MX__CHECK_IN("kl_div_loss", inputs, targets);
  int nd = mx_array_ndim(inputs);
  int ax = norm_axis(axis ? axis : -1, nd);
  if (ax < 0 || ax >= nd) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: kl_div_loss: axis %d out of range for ndim %d", axis, nd);
    return NULL;
  }
  mx__tmp t = {0};
  mx_array *d = mx__keep(&t, mx_subtract(targets, inputs));
  mx_array *w = mx__keep(&t, mx_multiply(mx__keep(&t, mx_exp(targets)), d));
  mx_array *loss = mx_sum(w, &ax, 1, false);
  mx__tmp_free(&t);
  return reduce_take(loss, r);
}
