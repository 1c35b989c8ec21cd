/* opcases_quantized.c — op-parity cases for the affine quantization ops:
 * quantize, dequantize and quantized_matmul. References are plain C,
 * written from MLX's documented affine algorithm: per group of group_size
 * values (float32 arithmetic, as MLX),
 *   scale = max((max - min) / (2^bits - 1), 1e-7), negated unless
 *           |min| > |max|; edge = |min| > |max| ? min : max;
 *   q0 = rint(edge / scale); if q0 != 0: scale = edge / q0, bias = edge,
 *   else bias = 0;
 *   q = clamp(rint((w - bias) / scale), 0, 2^bits - 1),
 * the q of a row packed as a little-endian bit stream into uint32 words.
 * Dequantization and products are referenced in float64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/harness.h"
#include "ops/fast_params.h"

/* ip[0]: group_size, ip[1]: bits. */

/* ---- quantize ----------------------------------------------------------------
 * ip[2]: output (0 packed, 1 scales, 2 biases); ip[3]: input transform
 * (0 none, 1 constant 0.75, 2 times zero, 3 floor: few distinct values). */
static mx_array *transform(const mx_opcase *c, mx_array *w) {
  switch (c->ip[3]) {
    case 1: {
      mx_array *z = mx_multiply_scalar(w, 0.0), *r = mx_add_scalar(z, 0.75);
      mx_array_free(z);
      return r;
    }
    case 2: return mx_multiply_scalar(w, 0.0);
    case 3: return mx_floor(w);
    default: return mx_array_retain(w);
  }
}
static float transform_ref(const mx_opcase *c, double v) {
  float f = (float)v;
  switch (c->ip[3]) {
    case 1: return 0.75f;
    case 2: return f * 0.0f;
    case 3: return floorf(f);
    default: return f;
  }
}

static mx_array *b_quantize(const mx_opcase *c, mx_array **in) {
  mx_array *w = transform(c, in[0]), *r[3] = {0};
  int rc = mx_quantize(w, c->ip[0], c->ip[1], &r[0], &r[1], &r[2]);
  mx_array_free(w);
  if (rc) return NULL;
  for (int i = 0; i < 3; i++)
    if (i != c->ip[2]) mx_array_free(r[i]);
  return r[c->ip[2]];
}

static void ref_group(const float *w, int n, int bits, float *scale, float *bias) {
  float n_bins = (float)((1 << bits) - 1);
  float lo = w[0], hi = w[0];
  for (int j = 1; j < n; j++) {
    if (w[j] < lo) lo = w[j];
    if (w[j] > hi) hi = w[j];
  }
  bool neg_edge = fabsf(lo) > fabsf(hi);
  float s = (hi - lo) / n_bins;
  if (s < 1e-7f) s = 1e-7f;
  if (!neg_edge) s = -s;
  float edge = neg_edge ? lo : hi;
  float q0 = rintf(edge / s);
  *bias = 0.0f;
  if (q0 != 0.0f) {
    s = edge / q0;
    *bias = edge;
  }
  *scale = s;
}

static int f_quantize(const mx_opcase *c, const double *const *in, double *out,
                      int64_t *oshape, int *ond) {
  int nd = c->ndim[0], gs = c->ip[0], bits = c->ip[1];
  int64_t K = c->shape[0][nd - 1], n = oc_size(c->shape[0], nd);
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = c->ip[2] == 0 ? K * bits / 32 : K / gs;
  *ond = nd;
  float w[128];
  for (int64_t g = 0; g < n / gs; g++) {
    for (int j = 0; j < gs; j++) w[j] = transform_ref(c, in[0][g * gs + j]);
    float s, b;
    ref_group(w, gs, bits, &s, &b);
    if (c->ip[2] == 1) {
      out[g] = s;
    } else if (c->ip[2] == 2) {
      out[g] = b;
    } else {
      /* set the bits of each value one at a time */
      int wpg = gs * bits / 32;
      uint32_t words[32] = {0};
      for (int j = 0; j < gs; j++) {
        float q = rintf((w[j] - b) / s);
        q = fminf(fmaxf(q, 0.0f), (float)((1 << bits) - 1));
        uint32_t v = (uint32_t)q;
        for (int t = 0; t < bits; t++) {
          int bit = j * bits + t;
          if (v >> t & 1u) words[bit / 32] |= 1u << (bit % 32);
        }
      }
      for (int i = 0; i < wpg; i++) out[g * wpg + i] = words[i];
    }
  }
  return 0;
}

/* ---- unpacking for the references ---------------------------------------------- */
static double q_at(const double *words, int bits, int64_t i) {
  uint32_t v = 0;
  for (int t = 0; t < bits; t++) {
    int64_t bit = i * bits + t;
    uint32_t wv = (uint32_t)words[bit / 32];
    v |= (wv >> (bit % 32) & 1u) << t;
  }
  return v;
}

/* ---- dequantize ------------------------------------------------------------------
 * Inputs: wq (..., L*bits/32) uint32, scales, biases (..., L/gs). */
static mx_array *b_dequantize(const mx_opcase *c, mx_array **in) {
  return mx_dequantize(in[0], in[1], in[2], c->ip[0], c->ip[1]);
}

static int f_dequantize(const mx_opcase *c, const double *const *in, double *out,
                        int64_t *oshape, int *ond) {
  int nd = c->ndim[0], gs = c->ip[0], bits = c->ip[1];
  int64_t P = c->shape[0][nd - 1], L = P * 32 / bits, R = oc_size(c->shape[0], nd - 1);
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = L;
  *ond = nd;
  for (int64_t r = 0; r < R; r++)
    for (int64_t i = 0; i < L; i++) {
      int64_t g = r * (L / gs) + i / gs;
      out[r * L + i] = in[1][g] * q_at(in[0] + r * P, bits, i) + in[2][g];
    }
  return 0;
}

/* ---- quantized_matmul ---------------------------------------------------------------
 * ip[2]: transpose. Inputs: x (..., K), wq, scales, biases. */
static mx_array *b_qmm(const mx_opcase *c, mx_array **in) {
  return mx_quantized_matmul(in[0], in[1], in[2], in[3], c->ip[2], c->ip[0], c->ip[1]);
}

static int f_qmm(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                 int *ond) {
  int nd = c->ndim[0], gs = c->ip[0], bits = c->ip[1];
  bool tr = c->ip[2];
  int64_t K = c->shape[0][nd - 1], M = oc_size(c->shape[0], nd - 1);
  int64_t rows = c->shape[1][0], P = c->shape[1][1], L = P * 32 / bits;
  int64_t N = tr ? rows : L, G = L / gs;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = N;
  *ond = nd;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double acc = 0;
      for (int64_t k = 0; k < K; k++) {
        int64_t r = tr ? n : k, i = tr ? k : n; /* row of the stored W, index along it */
        double wv = in[2][r * G + i / gs] * q_at(in[1] + r * P, bits, i) + in[3][r * G + i / gs];
        acc += in[0][m * K + k] * wv;
      }
      out[m * N + n] = acc;
    }
  return 0;
}

/* ---- add_norm_linear with a quantized weight (internal) ------------------------------
 * ip: swiglu, group size, bits; dp[0]: eps. Inputs x, r (..., D), norm
 * weight (D), wq (N, D*bits/32), scales, biases (N, D/gs). Out (..., D + M):
 * [h | y], h = x + r, n = rms_norm(h) * weight, y = n W^T (or swiglu of its
 * halves), W dequantized, all in float64. */
static mx_array *b_anql(const mx_opcase *c, mx_array **in) {
  return mx__fast_add_norm_qlinear(in[0], in[1], in[2], in[3], in[4], in[5], c->ip[1], c->ip[2],
                                   c->dp[0], c->ip[0] != 0);
}

static int f_anql(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape,
                  int *ond) {
  const int nd = c->ndim[0], gs = c->ip[1], bits = c->ip[2];
  const int64_t D = c->shape[0][nd - 1], rows = oc_size(c->shape[0], nd - 1);
  const int64_t N = c->shape[3][0], P = c->shape[3][1], G = D / gs;
  const int64_t M = c->ip[0] ? N / 2 : N, W = D + M;
  *ond = nd;
  memcpy(oshape, c->shape[0], sizeof(int64_t) * (size_t)nd);
  oshape[nd - 1] = W;
  double *n = malloc(sizeof(double) * (size_t)(D + N + 1));
  if (!n) return -1;
  double *acc = n + D;
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) {
      double h = in[0][r * D + i] + in[1][r * D + i];
      out[r * W + i] = h;
      ss += h * h;
    }
    double nn = 1.0 / sqrt(ss / (double)D + c->dp[0]);
    for (int64_t i = 0; i < D; i++) n[i] = out[r * W + i] * nn * in[2][i];
    for (int64_t j = 0; j < N; j++) {
      double a = 0;
      for (int64_t k = 0; k < D; k++)
        a += n[k] * (in[4][j * G + k / gs] * q_at(in[3] + j * P, bits, k) + in[5][j * G + k / gs]);
      acc[j] = a;
    }
    for (int64_t j = 0; j < M; j++)
      out[r * W + D + j] = c->ip[0] ? acc[j] / (1 + exp(-acc[j])) * acc[M + j] : acc[j];
  }
  free(n);
  return 0;
}

#define QF OC_DT(MX_FLOAT32, MX_FLOAT16, MX_BFLOAT16)
#define QF64 OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16)
#define U32 .ilo = 0, .ihi = 4294967296LL

/* quantize: w (shape), group_size, bits, output, transform */
#define QCASE(d, nd_, shp, gs, bits, what, tf)                                                  \
  {.op = "quantize", .desc = d, .nin = 1, .ndim = {nd_}, .shape = {shp}, .lo = -1.5, .hi = 2.5, \
   QF, .flags = OC_NONCONTIG | OC_NO_GRAD | OC_INT_ONLY, .ip = {gs, bits, what, tf},             \
   .build = b_quantize, .ref = f_quantize}
#define S2(a, b) {a, b}
#define S3(a, b, c) {a, b, c}

/* dequantize: wq (R, L*bits/32), scales/biases (R, L/gs) */
#define DCASE(d, R, L, gs, bits)                                                             \
  {.op = "dequantize", .desc = d, .nin = 3, .ndim = {2, 2, 2},                               \
   .shape = {{R, (L) * (bits) / 32}, {R, (L) / (gs)}, {R, (L) / (gs)}},                      \
   .kind = {OC_IN_U32, OC_IN_DATA, OC_IN_DATA}, .lo = -1, .hi = 1, U32, QF64,                \
   .flags = OC_NONCONTIG, .ip = {gs, bits}, .build = b_dequantize, .ref = f_dequantize}

/* quantized_matmul, transpose: x (M, K), W (N, K) */
#define TCASE(d, M, N, K, gs, bits)                                                           \
  {.op = "quantized_matmul", .desc = d, .nin = 4, .ndim = {2, 2, 2, 2},                       \
   .shape = {{M, K}, {N, (K) * (bits) / 32}, {N, (K) / (gs)}, {N, (K) / (gs)}},               \
   .kind = {OC_IN_DATA, OC_IN_U32, OC_IN_DATA, OC_IN_DATA}, .lo = -0.25, .hi = 0.25, U32,     \
   QF64, .flags = OC_NONCONTIG, .ip = {gs, bits, 1}, .build = b_qmm, .ref = f_qmm}
/* quantized_matmul, no transpose: x (M, K), W (K, N) */
#define NCASE(d, M, N, K, gs, bits)                                                           \
  {.op = "quantized_matmul", .desc = d, .nin = 4, .ndim = {2, 2, 2, 2},                       \
   .shape = {{M, K}, {K, (N) * (bits) / 32}, {K, (N) / (gs)}, {K, (N) / (gs)}},               \
   .kind = {OC_IN_DATA, OC_IN_U32, OC_IN_DATA, OC_IN_DATA}, .lo = -0.25, .hi = 0.25, U32,     \
   QF64, .flags = OC_NONCONTIG, .ip = {gs, bits, 0}, .build = b_qmm, .ref = f_qmm}

/* add_norm_linear with a quantized W: R rows of D, N weight rows */
#define ANQL(d, sw, R, D, N, gs, bits)                                                        \
  {.op = "add_norm_linear", .desc = d, .nin = 6, .ndim = {2, 2, 1, 2, 2, 2},                  \
   .shape = {{R, D}, {R, D}, {D}, {N, (D) * (bits) / 32}, {N, (D) / (gs)}, {N, (D) / (gs)}},  \
   .kind = {OC_IN_DATA, OC_IN_DATA, OC_IN_DATA, OC_IN_U32, OC_IN_DATA, OC_IN_DATA},           \
   .lo = -0.05, .hi = 0.05, U32, QF64, .flags = OC_NONCONTIG | OC_NO_GRAD,                    \
   .ip = {sw, gs, bits}, .dp = {1e-5}, .build = b_anql, .ref = f_anql}

static const mx_opcase cases[] = {
    /* quantize: packed words for every bits, each group size */
    QCASE("4-bit gs64 packed (3, 128)", 2, S2(3, 128), 64, 4, 0, 0),
    QCASE("2-bit gs32 packed (4, 64)", 2, S2(4, 64), 32, 2, 0, 0),
    QCASE("3-bit gs32 packed (4, 64): values straddle words", 2, S2(4, 64), 32, 3, 0, 0),
    QCASE("5-bit gs64 packed (2, 128)", 2, S2(2, 128), 64, 5, 0, 0),
    QCASE("6-bit gs128 packed (2, 256)", 2, S2(2, 256), 128, 6, 0, 0),
    QCASE("8-bit gs128 packed (3, 128)", 2, S2(3, 128), 128, 8, 0, 0),
    QCASE("4-bit gs32 packed (2, 3, 64) batch", 3, S3(2, 3, 64), 32, 4, 0, 0),
    QCASE("4-bit gs32 packed (1, 32) one group", 2, S2(1, 32), 32, 4, 0, 0),
    QCASE("4-bit gs32 packed (0, 64) empty", 2, S2(0, 64), 32, 4, 0, 0),
    QCASE("4-bit gs64 scales", 2, S2(3, 128), 64, 4, 1, 0),
    QCASE("4-bit gs64 biases", 2, S2(3, 128), 64, 4, 2, 0),
    QCASE("3-bit gs128 scales", 2, S2(2, 256), 128, 3, 1, 0),
    QCASE("6-bit gs32 biases", 2, S2(2, 64), 32, 6, 2, 0),
    QCASE("8-bit gs32 scales", 2, S2(2, 64), 32, 8, 1, 0),
    QCASE("2-bit gs32 biases", 2, S2(2, 64), 32, 2, 2, 0),
    /* edge cases: constant groups (min == max), zeros, few distinct values */
    QCASE("constant 0.75 packed", 2, S2(2, 64), 32, 4, 0, 1),
    QCASE("constant 0.75 scales", 2, S2(2, 64), 32, 4, 1, 1),
    QCASE("constant 0.75 biases", 2, S2(2, 64), 32, 4, 2, 1),
    QCASE("all zeros packed", 2, S2(2, 64), 32, 4, 0, 2),
    QCASE("all zeros scales", 2, S2(2, 64), 32, 4, 1, 2),
    QCASE("all zeros biases", 2, S2(2, 64), 32, 4, 2, 2),
    QCASE("integers (rounding ties) 3-bit packed", 2, S2(4, 64), 32, 3, 0, 3),
    QCASE("integers (rounding ties) 5-bit packed", 2, S2(4, 64), 32, 5, 0, 3),
    QCASE("integers 4-bit scales", 2, S2(4, 64), 32, 4, 1, 3),
    QCASE("integers 2-bit biases", 2, S2(4, 64), 32, 2, 2, 3),

    /* dequantize */
    DCASE("4-bit gs32 (3, 64)", 3, 64, 32, 4),
    DCASE("2-bit gs64 (2, 128)", 2, 128, 64, 2),
    DCASE("3-bit gs32 (2, 96)", 2, 96, 32, 3),
    DCASE("5-bit gs32 (2, 64)", 2, 64, 32, 5),
    DCASE("6-bit gs128 (2, 256)", 2, 256, 128, 6),
    DCASE("8-bit gs64 (3, 128)", 3, 128, 64, 8),
    DCASE("4-bit gs32 (1, 32)", 1, 32, 32, 4),
    DCASE("4-bit gs32 (0, 64) empty", 0, 64, 32, 4),

    /* quantized_matmul, x @ W^T: decode (M = 1), few rows, tiled (M >= 8) */
    TCASE("T 4-bit gs32 M=1 N=5 K=64", 1, 5, 64, 32, 4),
    TCASE("T 8-bit gs64 M=1 N=7 K=128", 1, 7, 128, 64, 8),
    TCASE("T 2-bit gs128 M=3 N=4 K=256", 3, 4, 256, 128, 2),
    TCASE("T 3-bit gs32 M=2 N=5 K=96", 2, 5, 96, 32, 3),
    TCASE("T 5-bit gs64 M=1 N=3 K=128", 1, 3, 128, 64, 5),
    TCASE("T 6-bit gs32 M=4 N=6 K=64", 4, 6, 64, 32, 6),
    TCASE("T 4-bit gs64 M=9 N=21 K=128 tiled", 9, 21, 128, 64, 4),
    TCASE("T 8-bit gs32 M=8 N=18 K=64 tiled", 8, 18, 64, 32, 8),
    TCASE("T 3-bit gs128 M=11 N=5 K=128 tiled", 11, 5, 128, 128, 3),
    TCASE("T 4-bit gs32 M=0 empty", 0, 4, 64, 32, 4),
    /* x @ W */
    NCASE("N 4-bit gs32 M=1 N=64 K=5", 1, 64, 5, 32, 4),
    NCASE("N 8-bit gs64 M=3 N=128 K=7", 3, 128, 7, 64, 8),
    NCASE("N 3-bit gs32 M=2 N=96 K=4", 2, 96, 4, 32, 3),
    NCASE("N 5-bit gs32 M=9 N=64 K=3", 9, 64, 3, 32, 5),
    NCASE("N 6-bit gs128 M=2 N=128 K=6", 2, 128, 6, 128, 6),
    NCASE("N 2-bit gs64 M=1 N=128 K=9", 1, 128, 9, 64, 2),
    /* batched x (2, 3, K) */
    {.op = "quantized_matmul", .desc = "T 4-bit gs32 x (2, 3, 64)", .nin = 4,
     .ndim = {3, 2, 2, 2}, .shape = {{2, 3, 64}, {5, 8}, {5, 2}, {5, 2}},
     .kind = {OC_IN_DATA, OC_IN_U32, OC_IN_DATA, OC_IN_DATA}, .lo = -0.25, .hi = 0.25, U32, QF64,
     .flags = OC_NONCONTIG, .ip = {32, 4, 1}, .build = b_qmm, .ref = f_qmm},
    /* add_norm_linear, quantized weight: x (R, D), W (N, D). On the GPU a
     * 16-bit decode row of D <= 2048 in 4 bits, group 32/64/128 takes the
     * tensor-core GEMV with the norm in its prologue; the rest a warp per
     * output reading packed words */
    ANQL("4-bit gs64, decode row, linear", 0, 1, 256, 40, 64, 4),
    ANQL("4-bit gs32, swiglu", 1, 1, 512, 80, 32, 4),
    ANQL("4-bit gs128, D 2048, swiglu (partial batches)", 1, 1, 1664, 48, 128, 4),
    ANQL("4-bit gs64, D 2048, 33 rows out", 0, 1, 2048, 33, 64, 4),
    ANQL("8-bit gs64, two rows", 0, 2, 128, 24, 64, 8),
    ANQL("3-bit gs32, swiglu", 1, 1, 96, 10, 32, 3),
    ANQL("4-bit gs64, 0 rows", 0, 0, 64, 8, 64, 4),
};

const mx_opcase_table mx_opcases_quantized = {cases, (int)(sizeof cases / sizeof *cases)};
