/* optim_params.h — the fused optimizer op (adam_update), shared by its
 * builder in src/ops/optim_ops.c, its kernels (src/backend/<backend>/
 * elementwise.*) and the optimizers (src/optim/optimizers.c).
 *
 * One elementwise op, four forms (which), each one pass over memory in
 * place of the 4-6 ops of its composition:
 *   ADAM_M: inputs (m, g)      -> beta1 m + (1 - beta1) g
 *   ADAM_V: inputs (v, g)      -> beta2 v + (1 - beta2) g^2
 *   ADAM_P: inputs (p, m, v)   -> decay p - c1 m / (c2 sqrt(v) + eps)
 *   ADAM_ALL: inputs (p, m, v, g) -> (3, ...) holding [m', v', p'], the
 *     three forms above one after the other (p' from m' and v'), each
 *     value rounded as the separate forms round it: one pass and one
 *     launch for a parameter's whole step (the optimizers take views of
 *     the three parts).
 * computed in the dtype's compute type (float32 or float64 only; the
 * optimizers compose ops for other dtypes). With bias correction at step
 * t: c1 = lr / (1 - beta1^t), c2 = 1 / sqrt(1 - beta2^t), else c1 = lr,
 * c2 = 1; decay = 1 - lr * weight_decay for AdamW, else 1. Inputs have the
 * output's shape (any strides). Not differentiable. */
#ifndef MXC_OPTIM_PARAMS_H
#define MXC_OPTIM_PARAMS_H
#include "array_impl.h"

enum { MX__ADAM_M = 0, MX__ADAM_V = 1, MX__ADAM_P = 2, MX__ADAM_ALL = 3 };

typedef struct {
  int which; /* MX__ADAM_* */
  double beta1, beta2, c1, c2, eps, decay;
} mx__adam_params;

/* ADAM_M / ADAM_V: a, b (c, d NULL); ADAM_P: a, b, c; ADAM_ALL: a, b, c, d. */
mx_array *mx__adam_update(const mx__adam_params *p, mx_array *a, mx_array *b, mx_array *c,
                          mx_array *d);

/* sum_squares: sum over every element of every input of x^2, a scalar —
 * one op (two launches on the GPU) for a gradient norm over any number of
 * arrays instead of a square, a sum and an add for each. Inputs: n >= 1
 * arrays of float dtypes, any shapes and strides; accumulated in float64
 * in a fixed order; the result float32 (float64 when an input is). */
mx_array *mx__sum_squares(mx_array **a, int n);

#endif
