/* linalg_params.h — params of matmul (shared by builders and kernels). */
#ifndef MXC_LINALG_PARAMS_H
#define MXC_LINALG_PARAMS_H

/* out = alpha * (a @ b) + beta * c. Inputs: a (..., M, K), b (..., K, N)
 * with equal batch shapes (broadcast by the builder) and, for addmm, c
 * broadcast to out's shape (..., M, N); all of out's dtype. Without c,
 * beta is 0. */
typedef struct {
  double alpha, beta;
} mx__matmul_params;

#endif
