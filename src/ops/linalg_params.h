/* linalg_params.h — params of matmul (shared by builders and kernels). */
#ifndef MXC_LINALG_PARAMS_H
#define MXC_LINALG_PARAMS_H

#include <stdint.h>

/* out = alpha * (a @ b) + beta * c. Inputs: a (..., M, K), b (..., K, N)
 * with equal batch shapes (broadcast by the builder) and, for addmm, c
 * broadcast to out's shape (..., M, N); all of out's dtype. Without c,
 * beta is 0. tf32: float32 products may use TF32 (mx_matmul_precision
 * HIGH when built; CUDA only). */
typedef struct {
  double alpha, beta;
  int64_t tf32;
} mx__matmul_params;

#endif
