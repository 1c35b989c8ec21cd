/* opcases_linalg.c — op-parity cases for matmul and addmm: NumPy semantics
 * (1-d operands, broadcast batch axes), empty and size-1 dimensions, views,
 * and shapes that reach each CPU path (BLAS gemm/gemv, batch folding,
 * half-precision widening for M >= 16, the direct f32-accumulating kernel
 * for small M with both b layouts). The reference is plain C on float64.
 *
 * Params: ip[0] 1 = addmm with c = in[2], dp[0] alpha, dp[1] beta. */
#include <string.h>

#include "support/harness.h"

static mx_array *b_matmul(const mx_opcase *c, mx_array **in) {
  if (c->ip[0]) return mx_addmm(in[2], in[0], in[1], c->dp[0], c->dp[1]);
  return mx_matmul(in[0], in[1]);
}

static int f_matmul(const mx_opcase *c, const double *const *in, double *out, int64_t *shape,
                    int *nd) {
  /* operands as (batch..., M, K) and (batch..., K, N) */
  int64_t as[8], bs[8];
  int an = c->ndim[0], bn = c->ndim[1];
  memcpy(as, c->shape[0], sizeof as);
  memcpy(bs, c->shape[1], sizeof bs);
  bool av = an == 1, bv = bn == 1;
  if (av) as[1] = as[0], as[0] = 1, an = 2;
  if (bv) bs[1] = 1, bn = 2;
  int64_t M = as[an - 2], K = as[an - 1], N = bs[bn - 1];
  if (bs[bn - 2] != K) return 1;
  int nb = an - 2 > bn - 2 ? an - 2 : bn - 2;
  int64_t batch[8];
  for (int d = 0; d < nb; d++) {
    int ia = d - (nb - (an - 2)), ib = d - (nb - (bn - 2));
    int64_t x = ia >= 0 ? as[ia] : 1, y = ib >= 0 ? bs[ib] : 1;
    batch[d] = x == 1 ? y : x;
  }
  /* the result's shape (vector axes dropped) */
  *nd = 0;
  for (int d = 0; d < nb; d++) shape[(*nd)++] = batch[d];
  if (!av) shape[(*nd)++] = M;
  if (!bv) shape[(*nd)++] = N;
  int64_t nbatch = oc_size(batch, nb), bidx[8];
  for (int64_t t = 0; t < nbatch; t++) {
    oc_unravel(t, batch, nb, bidx);
    int64_t ao = oc_bcast_offset(bidx, nb, as, an - 2) * M * K;
    int64_t bo = oc_bcast_offset(bidx, nb, bs, bn - 2) * K * N;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += in[0][ao + m * K + k] * in[1][bo + k * N + n];
        out[(t * M + m) * N + n] = s;
      }
  }
  if (c->ip[0]) {
    int64_t total = oc_size(shape, *nd), idx[8];
    for (int64_t i = 0; i < total; i++) {
      oc_unravel(i, shape, *nd, idx);
      double cv = in[2][oc_bcast_offset(idx, *nd, c->shape[2], c->ndim[2])];
      out[i] = c->dp[0] * out[i] + c->dp[1] * cv;
    }
  }
  return 0;
}

#define S(...) {__VA_ARGS__}
#define MM(d, an, ash, bn, bsh, ...)                                                     \
  {.op = "matmul", .desc = d, .nin = 2, .ndim = {an, bn}, .shape = {ash, bsh},          \
   .lo = -1, .hi = 1, .flags = OC_NONCONTIG, .build = b_matmul, .ref = f_matmul,       \
   __VA_ARGS__}
#define AMM(d, an, ash, bn, bsh, cn, csh, alpha, beta, ...)                                \
  {.op = "addmm", .desc = d, .nin = 3, .ndim = {an, bn, cn}, .shape = {ash, bsh, csh},    \
   .lo = -1, .hi = 1, .flags = OC_NONCONTIG, .ip = {1}, .dp = {alpha, beta},              \
   .build = b_matmul, .ref = f_matmul, __VA_ARGS__}

static const mx_opcase cases[] = {
    MM("(5,7)@(7,3)", 2, S(5, 7), 2, S(7, 3), OC_FLOATS),
    MM("(1,7)@(7,1)", 2, S(1, 7), 2, S(7, 1), OC_FLOATS),
    MM("gemv (1,50)@(50,20)", 2, S(1, 50), 2, S(50, 20), OC_FLOATS),
    MM("vector @ matrix", 1, S(7), 2, S(7, 4), OC_FLOATS),
    MM("matrix @ vector", 2, S(3, 7), 1, S(7), OC_FLOATS),
    MM("vector @ vector", 1, S(9), 1, S(9), OC_F32_F64),
    MM("batch folds into M", 4, S(2, 3, 4, 5), 2, S(5, 6), OC_FLOATS),
    MM("broadcast batch (2,1,4,5)@(3,5,6)", 4, S(2, 1, 4, 5), 3, S(3, 5, 6), OC_FLOATS),
    MM("shared a (4,5)@(2,5,6)", 2, S(4, 5), 3, S(2, 5, 6), OC_F32_F64),
    MM("batched vector (3,2,7)@(7,)", 3, S(3, 2, 7), 1, S(7), OC_F32_F64),
    MM("K = 0 gives zeros", 2, S(3, 0), 2, S(0, 4), OC_FLOATS),
    MM("M = 0", 2, S(0, 5), 2, S(5, 4), OC_F32_F64),
    MM("N = 0, batched", 3, S(2, 3, 5), 3, S(2, 5, 0), OC_F32_F64),
    MM("M >= 16 (halves widen to f32)", 2, S(20, 33), 2, S(33, 17), OC_FLOATS),
    MM("small M, K and N over blocks", 2, S(3, 300), 2, S(300, 70), OC_FLOATS),
    MM("batched small M halves", 3, S(2, 9, 40), 3, S(2, 40, 66), OC_FLOATS),
    AMM("c (6,), alpha 0.5, beta 2", 2, S(4, 5), 2, S(5, 6), 1, S(6), 0.5, 2.0, OC_FLOATS),
    AMM("batched, full c", 3, S(3, 4, 5), 2, S(5, 6), 3, S(3, 4, 6), 1.0, -1.0, OC_FLOATS),
    AMM("vector a, scalar-like c", 1, S(5), 2, S(5, 3), 1, S(1), 2.0, 0.5, OC_F32_F64),
    AMM("M >= 16 halves with c", 2, S(17, 8), 2, S(8, 9), 2, S(17, 1), 1.5, 0.25, OC_FLOATS),
    AMM("beta 0", 2, S(2, 3), 2, S(3, 4), 2, S(2, 4), 1.0, 0.0, OC_FLOATS),
};

const mx_opcase_table mx_opcases_linalg = {cases, (int)(sizeof cases / sizeof *cases)};
