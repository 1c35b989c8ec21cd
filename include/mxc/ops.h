/*
 * mxc/ops.h — array operations. Every op only records a node in the lazy
 * graph; nothing is computed until mx_eval (or a read) asks for it.
 *
 *     mx_array *y = mx_add(x, b);               // broadcasting as NumPy
 *     mx_array *s = mx_softmax(y, (int[]){-1}, 1);
 *
 * Conventions:
 *  - Every op returns a new reference or NULL; on NULL, mx_last_error()
 *    names the op and the offending shapes/dtypes. Shape and dtype errors
 *    are reported here, when the op is built, never at eval time.
 *  - Axes may be negative (counted from the end). `axes == NULL` means all
 *    axes; `naxes == 0` with a non-NULL pointer means none.
 *  - Binary ops promote dtypes (mx_promote_types) and broadcast shapes.
 *  - Scalar helpers (`_scalar`) take a double and use the array's dtype
 *    (MLX's weak scalar typing: `x * 2` keeps x's dtype).
 */
#ifndef MXC_OPS_H
#define MXC_OPS_H

#include "mxc/array.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- creation ----------------------------------------------------------- */
MX_API mx_array *mx_zeros(const int64_t *shape, int ndim, mx_dtype dt);
MX_API mx_array *mx_ones(const int64_t *shape, int ndim, mx_dtype dt);
MX_API mx_array *mx_full(const int64_t *shape, int ndim, double value, mx_dtype dt);
/* Fills with `value` (a 0-d or broadcastable array), cast to dt. */
MX_API mx_array *mx_full_array(const int64_t *shape, int ndim, mx_array *value, mx_dtype dt);
MX_API mx_array *mx_zeros_like(mx_array *a);
MX_API mx_array *mx_ones_like(mx_array *a);
MX_API mx_array *mx_full_like(mx_array *a, double value);
/* [start, stop) step `step`. */
MX_API mx_array *mx_arange(double start, double stop, double step, mx_dtype dt);
MX_API mx_array *mx_linspace(double start, double stop, int64_t num, mx_dtype dt);
/* n x m with ones on diagonal k. */
MX_API mx_array *mx_eye(int64_t n, int64_t m, int64_t k, mx_dtype dt);
MX_API mx_array *mx_identity(int64_t n, mx_dtype dt);
MX_API mx_array *mx_tri(int64_t n, int64_t m, int64_t k, mx_dtype dt);
MX_API mx_array *mx_tril(mx_array *a, int64_t k);
MX_API mx_array *mx_triu(mx_array *a, int64_t k);

/* ---- elementwise: unary ------------------------------------------------- */
MX_API mx_array *mx_negative(mx_array *a);
MX_API mx_array *mx_abs(mx_array *a);
MX_API mx_array *mx_sign(mx_array *a);
MX_API mx_array *mx_square(mx_array *a);
MX_API mx_array *mx_sqrt(mx_array *a);
MX_API mx_array *mx_rsqrt(mx_array *a);
MX_API mx_array *mx_reciprocal(mx_array *a);
MX_API mx_array *mx_exp(mx_array *a);
MX_API mx_array *mx_expm1(mx_array *a);
MX_API mx_array *mx_log(mx_array *a);
MX_API mx_array *mx_log1p(mx_array *a);
MX_API mx_array *mx_sin(mx_array *a);
MX_API mx_array *mx_cos(mx_array *a);
MX_API mx_array *mx_tanh(mx_array *a);
MX_API mx_array *mx_sigmoid(mx_array *a);
MX_API mx_array *mx_erf(mx_array *a);
MX_API mx_array *mx_erfinv(mx_array *a);
MX_API mx_array *mx_floor(mx_array *a);
MX_API mx_array *mx_ceil(mx_array *a);
/* Round half to even (NumPy/MLX). */
MX_API mx_array *mx_round(mx_array *a);
MX_API mx_array *mx_logical_not(mx_array *a);
MX_API mx_array *mx_isnan(mx_array *a);
MX_API mx_array *mx_isinf(mx_array *a);
MX_API mx_array *mx_astype(mx_array *a, mx_dtype dt);
/* Identity in the forward pass, zero gradient. */
MX_API mx_array *mx_stop_gradient(mx_array *a);

/* ---- elementwise: binary / ternary ------------------------------------- */
MX_API mx_array *mx_add(mx_array *a, mx_array *b);
MX_API mx_array *mx_subtract(mx_array *a, mx_array *b);
MX_API mx_array *mx_multiply(mx_array *a, mx_array *b);
/* True division: integer inputs give float32. */
MX_API mx_array *mx_divide(mx_array *a, mx_array *b);
MX_API mx_array *mx_power(mx_array *a, mx_array *b);
MX_API mx_array *mx_maximum(mx_array *a, mx_array *b);
MX_API mx_array *mx_minimum(mx_array *a, mx_array *b);
MX_API mx_array *mx_equal(mx_array *a, mx_array *b);
MX_API mx_array *mx_not_equal(mx_array *a, mx_array *b);
MX_API mx_array *mx_less(mx_array *a, mx_array *b);
MX_API mx_array *mx_less_equal(mx_array *a, mx_array *b);
MX_API mx_array *mx_greater(mx_array *a, mx_array *b);
MX_API mx_array *mx_greater_equal(mx_array *a, mx_array *b);
MX_API mx_array *mx_logical_and(mx_array *a, mx_array *b);
MX_API mx_array *mx_logical_or(mx_array *a, mx_array *b);
/* cond ? a : b, all three broadcast together. */
MX_API mx_array *mx_where(mx_array *cond, mx_array *a, mx_array *b);
/* Either bound may be NULL. */
MX_API mx_array *mx_clip(mx_array *a, mx_array *lo, mx_array *hi);
MX_API mx_array *mx_clip_scalar(mx_array *a, double lo, double hi);
/* Scalar convenience (weakly typed: result keeps a's dtype for floats). */
MX_API mx_array *mx_add_scalar(mx_array *a, double s);
MX_API mx_array *mx_multiply_scalar(mx_array *a, double s);
MX_API mx_array *mx_power_scalar(mx_array *a, double s);
/* True if all elements are close: |a-b| <= atol + rtol*|b|. Evaluates. */
MX_API int mx_allclose(mx_array *a, mx_array *b, double rtol, double atol, bool *out);

/* ---- reductions ---------------------------------------------------------- */
MX_API mx_array *mx_sum(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_mean(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_prod(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_max(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_min(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_all(mx_array *a, const int *axes, int naxes, bool keepdims);
MX_API mx_array *mx_any(mx_array *a, const int *axes, int naxes, bool keepdims);
/* ddof: delta degrees of freedom (0 = population). */
MX_API mx_array *mx_var(mx_array *a, const int *axes, int naxes, bool keepdims, int ddof);
MX_API mx_array *mx_std(mx_array *a, const int *axes, int naxes, bool keepdims, int ddof);
MX_API mx_array *mx_logsumexp(mx_array *a, const int *axes, int naxes, bool keepdims);
/* Index of the max/min along one axis (uint32, as MLX). */
MX_API mx_array *mx_argmax(mx_array *a, int axis, bool keepdims);
MX_API mx_array *mx_argmin(mx_array *a, int axis, bool keepdims);
MX_API mx_array *mx_softmax(mx_array *a, const int *axes, int naxes);
MX_API mx_array *mx_log_softmax(mx_array *a, const int *axes, int naxes);
MX_API mx_array *mx_cumsum(mx_array *a, int axis, bool reverse, bool inclusive);

/* ---- shape --------------------------------------------------------------- */
/* One dimension may be -1 (inferred). A view when strides allow. */
MX_API mx_array *mx_reshape(mx_array *a, const int64_t *shape, int ndim);
MX_API mx_array *mx_flatten(mx_array *a, int start_axis, int end_axis);
/* perm == NULL reverses the axes. */
MX_API mx_array *mx_transpose(mx_array *a, const int *perm, int nperm);
MX_API mx_array *mx_swapaxes(mx_array *a, int axis1, int axis2);
MX_API mx_array *mx_moveaxis(mx_array *a, int source, int destination);
MX_API mx_array *mx_expand_dims(mx_array *a, const int *axes, int naxes);
/* axes == NULL squeezes every size-1 axis. */
MX_API mx_array *mx_squeeze(mx_array *a, const int *axes, int naxes);
MX_API mx_array *mx_broadcast_to(mx_array *a, const int64_t *shape, int ndim);
/* Broadcast n arrays against each other; out[i] are new references. */
MX_API int mx_broadcast_arrays(mx_array **in, int n, mx_array **out);
/* Python-style slice per axis: start/stop/step arrays of length ndim
 * (NULL start => 0 / end for negative steps, NULL stop => end, NULL steps
 * => 1). Negative indices count from the end; out-of-range clamps. */
MX_API mx_array *mx_slice(mx_array *a, const int64_t *start, const int64_t *stop,
                          const int64_t *steps, int n);
/* Slice along one axis. */
MX_API mx_array *mx_slice_axis(mx_array *a, int axis, int64_t start, int64_t stop, int64_t step);
/* A copy of a with the slice replaced by update (broadcast to the slice). */
MX_API mx_array *mx_slice_update(mx_array *a, mx_array *update, const int64_t *start,
                                 const int64_t *stop, const int64_t *steps, int n);
MX_API mx_array *mx_concatenate(mx_array **arrays, int n, int axis);
MX_API mx_array *mx_stack(mx_array **arrays, int n, int axis);
/* Split into `sections` equal parts (out must hold `sections`). */
MX_API int mx_split(mx_array *a, int sections, int axis, mx_array **out);
/* Split at the given indices (out must hold nindices + 1). */
MX_API int mx_split_at(mx_array *a, const int64_t *indices, int nindices, int axis,
                       mx_array **out);
/* pad_width: (before, after) pairs for each of the n axes listed in axes
 * (axes NULL: the first n axes). Constant padding with `value`. */
MX_API mx_array *mx_pad(mx_array *a, const int *axes, const int64_t *pad_before,
                        const int64_t *pad_after, int n, double value);
MX_API mx_array *mx_tile(mx_array *a, const int64_t *reps, int n);
/* Repeat each element `repeats` times along axis. */
MX_API mx_array *mx_repeat(mx_array *a, int64_t repeats, int axis);
/* Row-major contiguous copy (no-op for contiguous inputs). */
MX_API mx_array *mx_contiguous(mx_array *a);
MX_API mx_array *mx_copy(mx_array *a);

/* ---- indexing ------------------------------------------------------------ */
/* NumPy take along an axis: out.shape = a.shape[:axis] + idx.shape + a.shape[axis+1:].
 * Negative indices wrap; out-of-range indices are clamped (as MLX). */
MX_API mx_array *mx_take(mx_array *a, mx_array *indices, int axis);
/* Take from the flattened array. */
MX_API mx_array *mx_take_flat(mx_array *a, mx_array *indices);
MX_API mx_array *mx_take_along_axis(mx_array *a, mx_array *indices, int axis);
/* A copy of a with values written at indices along axis. */
MX_API mx_array *mx_put_along_axis(mx_array *a, mx_array *indices, mx_array *values, int axis);
/* A copy of a with values added at indices along axis (duplicates add up). */
MX_API mx_array *mx_scatter_add_axis(mx_array *a, mx_array *indices, mx_array *values, int axis);
/* Rows of a (embedding lookup): out.shape = idx.shape + a.shape[1:]. */
MX_API mx_array *mx_gather_rows(mx_array *a, mx_array *indices);

/* ---- linear algebra ------------------------------------------------------ */
/* Batched, broadcasting matmul (NumPy semantics; 1-d operands promoted). */
MX_API mx_array *mx_matmul(mx_array *a, mx_array *b);
/* alpha * (a @ b) + beta * c. */
MX_API mx_array *mx_addmm(mx_array *c, mx_array *a, mx_array *b, double alpha, double beta);
/* Float32 matmul precision on GPUs, as PyTorch's set_float32_matmul_precision:
 * MX_MATMUL_HIGHEST (the default) multiplies in full float32, as the CPU's
 * sgemm does; MX_MATMUL_HIGH lets the CUDA backend use TF32 tensor cores
 * (inputs rounded to 10 mantissa bits, float32 accumulation: ~1e-3
 * relative error, several times the speed). A matmul takes the setting in
 * force when it is built (not when it is evaluated); the CPU backend and
 * other dtypes ignore it. MXC_TF32=1 in the environment makes HIGH the
 * starting value. Process-wide. Set: MX_OK, or MX_ERR_INVALID_ARG for another
 * value. */
typedef enum { MX_MATMUL_HIGHEST = 0, MX_MATMUL_HIGH = 1 } mx_matmul_precision;
MX_API int mx_set_float32_matmul_precision(mx_matmul_precision p);
MX_API mx_matmul_precision mx_get_float32_matmul_precision(void);

/* ---- sorting ------------------------------------------------------------- */
MX_API mx_array *mx_sort(mx_array *a, int axis);
MX_API mx_array *mx_argsort(mx_array *a, int axis);
/* The k largest along axis (unordered, as MLX). */
MX_API mx_array *mx_topk(mx_array *a, int k, int axis);
/* Element kth is in sorted position; smaller before, larger after. */
MX_API mx_array *mx_partition(mx_array *a, int kth, int axis);
MX_API mx_array *mx_argpartition(mx_array *a, int kth, int axis);

/* ---- fast ops used by every LLM ------------------------------------------ */
/* x * rsqrt(mean(x^2, -1) + eps) * weight (weight may be NULL). */
MX_API mx_array *mx_fast_rms_norm(mx_array *x, mx_array *weight, double eps);
/* (x - mean) * rsqrt(var + eps) * weight + bias over the last axis. */
MX_API mx_array *mx_fast_layer_norm(mx_array *x, mx_array *weight, mx_array *bias, double eps);
/* Rotary embedding over the first `dims` features of the last axis of x (..., T, D), positions
 * offset..offset+T-1. traditional: rotate interleaved pairs (x0,x1) instead
 * of halves. freqs (may be NULL) overrides base: inv_freq = 1/freqs. */
MX_API mx_array *mx_fast_rope(mx_array *x, int dims, bool traditional, double base,
                              double scale, int64_t offset, mx_array *freqs);
/* Attention: q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D) with Hq % Hkv == 0.
 * mask: NULL, or an additive float mask / boolean mask broadcastable to
 * (B, Hq, Tq, Tk). causal: lower-right aligned causal mask (as MLX). */
MX_API mx_array *mx_fast_scaled_dot_product_attention(mx_array *q, mx_array *k, mx_array *v,
                                                      double scale, mx_array *mask,
                                                      bool causal);
/* The gated MLP activation silu(gate) * up = gate * sigmoid(gate) * up of
 * two float arrays of one shape, in one pass; each step rounded to the
 * result dtype exactly as multiply(multiply(gate, sigmoid(gate)), up). */
MX_API mx_array *mx_fast_swiglu(mx_array *gate, mx_array *up);

/* ---- affine quantization (MLX's format) --------------------------------------
 * A weight w (..., K) is split into groups of `group_size` along its last
 * axis; each group stores `scale` and `bias` (w's dtype) and values
 * q = round((w - bias) / scale) in [0, 2^bits), packed into uint32 words
 * from the low bits up, exactly as MLX's mx.quantize. bits: 2, 3, 4, 5, 6
 * or 8; group_size: 32, 64 or 128. */
/* Writes new references to the packed weights (..., K * bits / 32) uint32,
 * scales and biases (..., K / group_size). */
MX_API int mx_quantize(mx_array *w, int group_size, int bits, mx_array **wq,
                       mx_array **scales, mx_array **biases);
MX_API mx_array *mx_dequantize(mx_array *wq, mx_array *scales, mx_array *biases,
                               int group_size, int bits);
/* x (..., K) times the dequantized weight: transpose=true: w is (N, K) and
 * the result is x @ w.T (..., N) — the nn.QuantizedLinear layout;
 * transpose=false: w is (K, N) and the result is x @ w. The weight is never
 * fully dequantized. */
MX_API mx_array *mx_quantized_matmul(mx_array *x, mx_array *wq, mx_array *scales,
                                     mx_array *biases, bool transpose, int group_size, int bits);

#ifdef __cplusplus
}
#endif
#endif
