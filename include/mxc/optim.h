/*
 * mxc/optim.h — optimizers, learning-rate schedules, gradient clipping and
 * accumulation, as mlx.optimizers. They work on flat parameter maps
 * (mxc/map.h: "layers.0.weight" -> array), the currency of nn modules and
 * of mx_value_and_grad_map.
 *
 *     mx_schedule *warm = mx_schedule_linear(0.0, 1e-3, 100);
 *     mx_schedule *cos = mx_schedule_cosine_decay(1e-3, 1000, 1e-5);
 *     mx_schedule *lr = mx_schedule_join((mx_schedule *[]){warm, cos}, 2,
 *                                        (int64_t[]){100}, 1);
 *     mx_adam_options o = MX_ADAMW_OPTIONS(0.0);
 *     o.lr_schedule = lr;                      // retained by the optimizer
 *     mx_optimizer *opt = mx_optimizer_adamw(&o);
 *     for (step...) {
 *       mx_value_and_grad_map(loss_fn, batch, params, NULL, 0, &values, grads);
 *       mx_clip_grad_norm(grads, 1.0, NULL);
 *       mx_optimizer_update(opt, params, grads);   // lazy: new arrays per key
 *       mx_optimizer_eval(opt, params);            // params + state, one eval
 *     }
 *     mx_save_safetensors("opt.safetensors", mx_optimizer_state(opt), NULL);
 *     ...
 *     mx_map *st; mx_load("opt.safetensors", &st, NULL);
 *     mx_optimizer_load_state(opt2, st);         // resumes bit-exactly
 *
 * Semantics and defaults are MLX's (mlx.optimizers): the learning rate of
 * an update is schedule(step) with step counted from 0, then the step
 * counter is incremented and the update (bias corrections included) sees
 * the incremented step (1 on the first update).
 *
 * Ownership: constructors return a new optimizer/schedule (free with
 * mx_optimizer_free / mx_schedule_free; NULL is a no-op). Options are
 * copied; a schedule in options is retained. mx_optimizer_state returns a
 * BORROWED map, valid until the next update, load or free.
 */
#ifndef MXC_OPTIM_H
#define MXC_OPTIM_H

#include "mxc/array.h"
#include "mxc/map.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- learning-rate schedules (mlx.optimizers.schedulers) ------------------ */
typedef struct mx_schedule mx_schedule;

/* init * decay_rate^step */
MX_API mx_schedule *mx_schedule_exponential_decay(double init, double decay_rate);
/* init * decay_rate^(step / step_size) (integer division) */
MX_API mx_schedule *mx_schedule_step_decay(double init, double decay_rate, int64_t step_size);
/* end + (init - end) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) */
MX_API mx_schedule *mx_schedule_cosine_decay(double init, int64_t decay_steps, double end);
/* init + min(step, steps) * (end - init) / steps */
MX_API mx_schedule *mx_schedule_linear(double init, double end, int64_t steps);
/* schedules[0] until boundaries[0], then schedules[1](step - boundaries[0]),
 * ... (n schedules, n - 1 boundaries). Retains the schedules. */
MX_API mx_schedule *mx_schedule_join(mx_schedule *const *schedules, int n,
                                     const int64_t *boundaries, int nboundaries);
/* A constant (what a plain learning rate is). */
MX_API mx_schedule *mx_schedule_constant(double value);
MX_API double mx_schedule_value(const mx_schedule *s, int64_t step);
MX_API mx_schedule *mx_schedule_retain(mx_schedule *s);
MX_API void mx_schedule_free(mx_schedule *s);

/* ---- optimizers ----------------------------------------------------------- */
typedef struct mx_optimizer mx_optimizer;

/* SGD: with momentum, v = momentum * v + (1 - dampening) * g (v starts at
 * 0), update = g + momentum * v (nesterov) or v; weight decay adds
 * weight_decay * p to g. State: <param>.v. */
typedef struct {
  double learning_rate;
  mx_schedule *lr_schedule; /* optional, overrides learning_rate */
  double momentum, weight_decay, dampening;
  bool nesterov;
} mx_sgd_options;
#define MX_SGD_OPTIONS(lr) ((mx_sgd_options){.learning_rate = (lr)})

/* Adam / AdamW: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
 * p -= lr m / (sqrt(v) + eps); with bias_correction (MLX's default is
 * off; PyTorch always corrects): p -= (lr / (1 - b1^t)) m /
 * (sqrt(v) / sqrt(1 - b2^t) + eps). AdamW first decays p *= 1 - lr * wd.
 * State: <param>.m, <param>.v. */
typedef struct {
  double learning_rate;
  mx_schedule *lr_schedule;
  double beta1, beta2, eps;
  double weight_decay; /* AdamW only */
  bool bias_correction;
} mx_adam_options;
#define MX_ADAM_OPTIONS(lr) \
  ((mx_adam_options){.learning_rate = (lr), .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8})
#define MX_ADAMW_OPTIONS(lr)                                                                \
  ((mx_adam_options){.learning_rate = (lr), .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,     \
                     .weight_decay = 0.01})

/* Lion: c = b1 m + (1-b1) g, m = b2 m + (1-b2) g, p = p (1 - lr wd) - lr
 * sign(c). State: <param>.m. */
typedef struct {
  double learning_rate;
  mx_schedule *lr_schedule;
  double beta1, beta2, weight_decay;
} mx_lion_options;
#define MX_LION_OPTIONS(lr) \
  ((mx_lion_options){.learning_rate = (lr), .beta1 = 0.9, .beta2 = 0.99})

/* Adafactor (MLX's defaults): relative_step uses min(1e-2, 1/sqrt(t))
 * (1e-6 t with warmup_init) instead of learning_rate; scale_parameter
 * multiplies by max(eps2, rms(p)); factored second moments for ndim >= 2.
 * use_beta1: keep a first moment with beta1. State: <param>.exp_avg_sq_row
 * and .exp_avg_sq_col (ndim >= 2) or .exp_avg_sq, and .exp_avg. */
typedef struct {
  double learning_rate;
  mx_schedule *lr_schedule;
  double eps1, eps2, clip_threshold, decay_rate, beta1, weight_decay;
  bool use_beta1, scale_parameter, relative_step, warmup_init;
} mx_adafactor_options;
#define MX_ADAFACTOR_OPTIONS()                                                             \
  ((mx_adafactor_options){.eps1 = 1e-30, .eps2 = 1e-3, .clip_threshold = 1.0,              \
                          .decay_rate = -0.8, .scale_parameter = true, .relative_step = true})

MX_API mx_optimizer *mx_optimizer_sgd(const mx_sgd_options *o);
MX_API mx_optimizer *mx_optimizer_adam(const mx_adam_options *o);
MX_API mx_optimizer *mx_optimizer_adamw(const mx_adam_options *o);
MX_API mx_optimizer *mx_optimizer_lion(const mx_lion_options *o);
MX_API mx_optimizer *mx_optimizer_adafactor(const mx_adafactor_options *o);
MX_API void mx_optimizer_free(mx_optimizer *opt);
/* "sgd", "adam", "adamw", "lion", "adafactor". */
MX_API const char *mx_optimizer_name(const mx_optimizer *opt);

/* One update: for every key of params that has a gradient in grads, the
 * parameter is replaced by a new (lazy) array; keys without a gradient are
 * left alone. A gradient without a parameter, or of another shape, is an
 * error (nothing is changed). Evaluate with mx_optimizer_eval or
 * mx_map_eval on both params and mx_optimizer_state. */
MX_API int mx_optimizer_update(mx_optimizer *opt, mx_map *params, const mx_map *grads);
/* Evaluates params (may be NULL) and the optimizer state in one mx_eval. */
MX_API int mx_optimizer_eval(mx_optimizer *opt, mx_map *params);
/* Number of updates done. */
MX_API int64_t mx_optimizer_step(const mx_optimizer *opt);
/* The learning rate the next update will use. */
MX_API double mx_optimizer_learning_rate(const mx_optimizer *opt);
/* Replaces the learning rate by a constant (drops any schedule). */
MX_API void mx_optimizer_set_learning_rate(mx_optimizer *opt, double lr);

/* The state as a flat map (borrowed): "step" (int64 scalar), "learning_rate"
 * (float32 scalar, the last one used), then "<param>.<slot>" per parameter,
 * as MLX's optimizer.state flattened. Saves with mx_save_safetensors. */
MX_API mx_map *mx_optimizer_state(mx_optimizer *opt);
/* Replaces the state by a copy of `state` (e.g. loaded from a file): the
 * step counter comes from "step"; the remaining entries are the slots. */
MX_API int mx_optimizer_load_state(mx_optimizer *opt, const mx_map *state);

/* ---- gradient utilities ------------------------------------------------------ */
/* Scales every gradient by min(max_norm / (total_norm + 1e-6), 1) in place,
 * total_norm = sqrt(sum of squares of all gradients) (mlx clip_grad_norm).
 * total_norm (may be NULL) receives a new reference to the float32 norm. */
MX_API int mx_clip_grad_norm(mx_map *grads, double max_norm, mx_array **total_norm);
/* Gradient accumulation: acc[k] += grads[k] (a key new to acc is inserted). */
MX_API int mx_grads_accumulate(mx_map *acc, const mx_map *grads);
/* grads[k] *= s for every key (e.g. 1 / number of micro-batches). */
MX_API int mx_grads_scale(mx_map *grads, double s);

#ifdef __cplusplus
}
#endif
#endif /* MXC_OPTIM_H */
