/* optim_params.h — the fused optimizer op (adam_update), shared by its
 * builder in src/ops/optim_ops.c, its kernels (src/backend/<backend>/
 * elementwise.*) and the optimizers (src/optim/optimizers.c).
 *
 * One elementwise op, five forms (which), each one pass over memory in
 * place of the 4-6 ops of its composition:
 *   ADAM_M: inputs (m, g)      -> beta1 m + (1 - beta1) g
 *   ADAM_V: inputs (v, g)      -> beta2 v + (1 - beta2) g^2
 *   ADAM_P: inputs (p, m, v)   -> decay p - c1 m / (c2 sqrt(v) + eps)
 *   ADAM_ALL: inputs (p, m, v, g) -> (3, ...) holding [m', v', p'], the
 *     three forms above one after the other (p' from m' and v'), each
 *     value rounded as the separate forms round it: one pass and one
 *     launch for a parameter's whole step (the optimizers take views of
 *     the three parts).
 *   ADAM_MANY: inputs (p_0..p_{n-1}, m_0.., v_0.., g_0.., [s]) -> (3, total),
 *     ADAM_ALL for n parameters at once (count = n, total = the sum of
 *     their sizes): row 0 holds every m'_i flattened (row-major) and laid
 *     end to end in order, row 1 the v'_i, row 2 the p'_i, each value with
 *     the bits ADAM_ALL gives it: one launch for a model's whole step in
 *     place of one a parameter (the optimizers take views of the parts:
 *     slice + reshape).
 * computed in the dtype's compute type (float32 or float64 only; the
 * optimizers compose ops for other dtypes). With bias correction at step
 * t: c1 = lr / (1 - beta1^t), c2 = 1 / sqrt(1 - beta2^t), else c1 = lr,
 * c2 = 1; decay = 1 - lr * weight_decay for AdamW, else 1. Inputs have the
 * output's shape (any strides). Not differentiable. */
#ifndef MXC_OPTIM_PARAMS_H
#define MXC_OPTIM_PARAMS_H
#include "array_impl.h"
#include "mxc/optim.h"

enum { MX__ADAM_M = 0, MX__ADAM_V = 1, MX__ADAM_P = 2, MX__ADAM_ALL = 3, MX__ADAM_MANY = 4 };

typedef struct {
  int which; /* MX__ADAM_* */
  double beta1, beta2, c1, c2, eps, decay;
  bool has_scale; /* ADAM_ALL / MANY: a last input, the gradient's scale (set by the builder) */
  int count;      /* ADAM_MANY: the number of parameters n (set by the builder); 0 otherwise */
} mx__adam_params;

/* ADAM_M / ADAM_V: a, b (c, d NULL); ADAM_P: a, b, c; ADAM_ALL: a, b, c, d. */
mx_array *mx__adam_update(const mx__adam_params *p, mx_array *a, mx_array *b, mx_array *c,
                          mx_array *d);
/* ADAM_ALL (p->which) over (p, m, v, g) where g may also be float16 or
 * bfloat16 when p is float32 (read exactly as float32: a mixed-precision
 * step's gradient needs no cast), and s, when not NULL, a 0-d array of p's
 * dtype that scales the gradient (gradient clipping): g s rounded as a
 * separate multiply rounds it. The bits of the cast, the multiply and
 * ADAM_ALL in turn. */
mx_array *mx__adam_update_all(const mx__adam_params *p, mx_array *pm, mx_array *m, mx_array *v,
                              mx_array *g, mx_array *s);
/* ADAM_MANY (p->which) over n >= 1 parameters: pm[i], m[i], v[i], g[i] as
 * ADAM_ALL takes them, every pm/m/v of ONE dtype (float32 or float64), g[i]
 * of it or 16-bit for float32, shapes equal for each i; s as ADAM_ALL's
 * (one scale for every gradient). The inputs are laid out [pm.., m.., v..,
 * g.., (s)]. Element off_i + j of each row (off_i: the sizes of the
 * parameters before i) has the bits ADAM_ALL(pm[i], m[i], v[i], g[i], s)
 * gives element j of its part. */
mx_array *mx__adam_update_many(const mx__adam_params *p, mx_array **pm, mx_array **m,
                               mx_array **v, mx_array **g, int n, mx_array *s);
/* Times mx_optimizer_update built an ADAM_MANY node (its tests check that
 * the multi-tensor path ran; MXC_ADAM_MANY=0 turns that path off). */
extern uint64_t mx__adam_many_runs;

/* sum_squares: sum over every element of every input of x^2, a scalar —
 * one op (two launches on the GPU) for a gradient norm over any number of
 * arrays instead of a square, a sum and an add for each. Inputs: n >= 1
 * arrays of float dtypes, any shapes and strides; accumulated in float64
 * in a fixed order; the result float32 (float64 when an input is). */
mx_array *mx__sum_squares(mx_array **a, int n);

/* cast_concat: the inputs flattened (row-major), cast to dt and laid end to
 * end in one 1-D array of the sum of their sizes — one op (one launch on
 * the GPU) for the 16-bit copies of a model's float32 master weights,
 * whose parts are then views (slice + reshape). Each element has the bits
 * of mx_astype to dt. Inputs: n >= 1 arrays of float dtypes, any shapes
 * and strides; dt a float dtype. Differentiable: input i's cotangent is
 * its part of the output's, reshaped and cast back to its dtype. */
mx_array *mx__cast_concat(mx_array **a, int n, mx_dtype dt);

/* mx_optimizer_update with every gradient scaled by `scale` (a 0-d float
 * array; NULL: none), and gradients of a 16-bit dtype for float32
 * parameters taken as they are: Adam's one-pass kernel reads both (no
 * pass over the gradients for clipping or casting); other optimizers get
 * the cast and the product composed. */
int mx__optimizer_update_scaled(mx_optimizer *o, mx_map *params, const mx_map *grads,
                                mx_array *scale);
/* mx_clip_grad_norm without scaling: the global norm and the factor
 * min(max_norm / (norm + 1e-6), 1) (both float32 0-d arrays, lazy). */
int mx__grad_clip_factor(const mx_map *grads, double max_norm, mx_array **norm,
                         mx_array **factor);
/* A gradient's 16-bit source when it is a float32 cast of a 16-bit array
 * that nothing else holds and that has not run (the VJP of a
 * mixed-precision loss's cast); NULL otherwise. */
mx_array *mx__lone_cast_source(mx_array *g);

#endif
