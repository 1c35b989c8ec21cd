/* gemm_bf16.h (cpu) — bfloat16 GEMM on the CPU's bf16 dot-product
 * instruction (AVX512-BF16 `vdpbf16ps`: two bf16 products per float lane,
 * exact products, float accumulation).
 *
 *   out[m, n] = sum_k X[m, k] * W[n, k]      (x @ W^T, the Linear layer)
 *
 * X is bf16 with any strides; rows of W come from a callback, so the same
 * kernel serves dense bf16 weights (rows read in place) and quantized ones
 * (rows dequantized to bf16 a tile at a time, as MLX's quantized GEMM does
 * for bf16 inputs). Each output element is summed in a fixed order: results
 * do not depend on the thread count. */
#ifndef MXC_GEMM_BF16_H
#define MXC_GEMM_BF16_H

#include <stdbool.h>
#include <stdint.h>

/* Rows [n0, n0 + nn) of W, columns [k0, k0 + kk) (kk even, or the tail of
 * K), as bf16 rows of ld elements each at dst (row r at dst + r * ld).
 * Returns a pointer to the rows: dst, or W's own memory when it can be read
 * in place (then *ld_out is set to its row stride). Elements past K within
 * the last odd pair are read as zero by the caller's padding. */
typedef const uint16_t *(*mx__bf16_rows_fn)(const void *ctx, int64_t n0, int nn, int64_t k0,
                                            int64_t kk, uint16_t *dst, int64_t ld,
                                            int64_t *ld_out);

/* Receives finished results: row m of the output, columns [n0, n0 + nn),
 * as floats. */
typedef void (*mx__bf16_store_fn)(const void *ctx, int64_t m, int64_t n0, int64_t nn,
                                  const float *acc);

typedef struct {
  int64_t M, N, K;
  const uint16_t *X; /* bf16, element (m, k) at X[m * sxm + k * sxk] */
  int64_t sxm, sxk;
  mx__bf16_rows_fn rows;
  const void *rows_ctx;
  mx__bf16_store_fn store;
  const void *store_ctx;
} mx__gemm_bf16_args;

/* Whether this CPU has the instruction (and MXC_BF16_DOT is not 0). */
bool mx__cpu_has_bf16_dot(void);

/* Runs the product; MX_OK, an error status (allocation), or 1 when the CPU
 * lacks the instruction (nothing was done). */
int mx__cpu_gemm_bf16(const mx__gemm_bf16_args *g);

/* Rows callback for a dense bf16 W given as b = W^T with strides (sbk, sbn)
 * in elements (element (k, n) of b at B[k * sbk + n * sbn]). */
typedef struct {
  const uint16_t *B;
  int64_t sbk, sbn;
  int64_t K;
} mx__bf16_dense_rows;
const uint16_t *mx__bf16_dense_rows_fn(const void *ctx, int64_t n0, int nn, int64_t k0,
                                       int64_t kk, uint16_t *dst, int64_t ld, int64_t *ld_out);

#endif
