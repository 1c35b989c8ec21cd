/* quantized_params.h — params of the affine quantization primitives, shared
 * by the builders (src/ops/quantized.c) and the kernels
 * (src/backend/<backend>/quantized.c).
 *
 * MLX's affine format: a weight row (..., K) is split into groups of
 * `group_size` consecutive values; each group has a scale and a bias and
 * stores q = clamp(rint((w - bias) / scale), 0, 2^bits - 1), so that
 * w ~= scale * q + bias. The q of a row form one little-endian bit stream:
 * value i occupies bits [i*bits, (i+1)*bits) of the row, and bit b of the
 * stream is bit (b % 32) of uint32 word b / 32. For bits 2/4/8 a word holds
 * 32/bits whole values; 3-, 5- and 6-bit values straddle words. A group
 * always starts on a word boundary (group_size * bits is a multiple of 32).
 */
#ifndef MXC_QUANTIZED_PARAMS_H
#define MXC_QUANTIZED_PARAMS_H
#include "array_impl.h"

enum { MX__QUANT_PACKED = 0, MX__QUANT_SCALES = 1, MX__QUANT_BIASES = 2 };

/* QUANTIZE_PACK: input w (..., K) float. `what` selects the output:
 * packed words (..., K*bits/32) uint32, or the scales / biases
 * (..., K/group_size) in w's dtype. Scale and bias are chosen per group in
 * float32 exactly as MLX (see mx__quant_group_params). */
typedef struct {
  int group_size, bits, what;
} mx__quantize_params;

/* DEQUANTIZE: inputs wq (..., K*bits/32) uint32, scales and biases
 * (..., K/group_size) of the output dtype; out (..., K). Each element is
 * scale * q + bias with the product and the sum each rounded to the output
 * dtype (MLX's multiply-then-add). */
typedef struct {
  int group_size, bits;
} mx__dequantize_params;

/* QUANTIZED_MATMUL: inputs x (..., K), wq, scales, biases (2-d), all but
 * wq of the output dtype. transpose: wq (N, K*bits/32), scales (N,
 * K/group_size), out (..., N) = x @ W^T. Otherwise wq (K, N*bits/32),
 * scales (K, N/group_size), out (..., N) = x @ W. */
typedef struct {
  int group_size, bits;
  bool transpose;
} mx__qmm_params;

/* wq (..., P) uint32 with P = L*bits/32 and scales, biases (..., L/group_size)
 * of a float dtype with the same leading shape, and a supported format;
 * writes L (the unpacked last axis). Sets the error and returns its status
 * otherwise (op names the caller in the message). */
int mx__check_packed(const char *op, mx_array *wq, mx_array *scales, mx_array *biases,
                     int group_size, int bits, int64_t *L);

/* Scale and bias of one group of n float32 values, as MLX computes them. */
static inline void mx__quant_group_params(const float *w, int n, int bits, float *scale,
                                          float *bias) {
  float n_bins = (float)((1 << bits) - 1), eps = 1e-7f;
  float wmin = __builtin_inff(), wmax = -__builtin_inff();
  for (int j = 0; j < n; j++) {
    wmax = wmax < w[j] ? w[j] : wmax; /* std::max(wmax, w) */
    wmin = w[j] < wmin ? w[j] : wmin; /* std::min(wmin, w) */
  }
  bool mask = __builtin_fabsf(wmin) > __builtin_fabsf(wmax);
  float s = (wmax - wmin) / n_bins;
  s = s < eps ? eps : s;
  s = mask ? s : -s;
  float edge = mask ? wmin : wmax;
  float q0 = __builtin_rintf(edge / s);
  float b = 0.0f;
  if (q0 != 0.0f) {
    s = edge / q0;
    b = edge;
  }
  *scale = s;
  *bias = b;
}

/* The quantized value of w for a group's scale and bias. */
static inline uint32_t mx__quant_value(float w, float scale, float bias, int bits) {
  float n_bins = (float)((1 << bits) - 1);
  float q = __builtin_rintf((w - bias) / scale);
  q = q < 0.0f ? 0.0f : q;
  q = q > n_bins ? n_bins : q;
  return q == q ? (uint32_t)q : 0u; /* NaN -> 0 */
}

#endif
