/* fast_params.h — params of the fast LLM ops (rms_norm, layer_norm, rope,
 * scaled_dot_product_attention), shared by the builders in src/ops/fast.c
 * and the kernels in src/backend/<backend>/fast.c, and the compositions of
 * primitive ops each fused op must equal (used by its VJP, the tests and
 * bench/bench_fast.c). */
#ifndef MXC_FAST_PARAMS_H
#define MXC_FAST_PARAMS_H
#include "array_impl.h"

/* inputs: x (..., D) [, weight (D)] — all of the output dtype. */
typedef struct {
  double eps;
  bool has_weight;
} mx__rms_norm_params;

/* inputs: x (..., D) [, weight (D)] [, bias (D)] — all of the output dtype;
 * the bias is input 1 when there is no weight. */
typedef struct {
  double eps;
  bool has_weight, has_bias;
} mx__layer_norm_params;

/* inputs: x (..., T, D) [, freqs (dims/2), any float dtype] [, pos (int32,
 * one element)]. theta[t][i] = (offset + pos + t) * scale * inv_freq[i],
 * inv_freq[i] = base^(-2i/dims) or 1/freqs[i]; pos is read from the
 * array's memory when the kernel runs (has_pos: the position of a decode
 * step replayed from a captured GPU graph, see mx__fast_rope_at), else 0.
 * forward == false rotates by -theta (the VJP, which is rope's inverse).
 * rot_heads > 0 (mx__fast_rope_heads): only rows whose index along axis
 * -3 is below rot_heads are rotated; the others are copied unchanged.
 * out_blhd (set by rope's VJP when rope's input was a (B, T, H, D) array
 * transposed to (B, H, T, D), as attention's heads are): a 4-d result is
 * stored in (B, T, H, D) order where a kernel can — the array's strides
 * say so — so that the gradient's transpose back and reshape to (B, T,
 * H * D) are views, not copies. Never changes the values. */
typedef struct {
  int dims;
  bool traditional;
  bool forward;
  bool has_freqs;
  bool has_pos;
  double base, scale;
  int64_t offset;
  int64_t rot_heads;
  bool out_blhd;
} mx__rope_params;

/* rms_norm_backward (rms_norm's VJP, one pass per row). With n =
 * rsqrt(mean(x^2) + eps) over the last axis: which 0 -> dx = n g w -
 * x n^3 mean(g w x), inputs (x, g [, w]) of one float dtype (has_weight);
 * which 1 -> g x n in the compute type (f32; f64 for f64), inputs (x, g),
 * whose sum over the leading axes is dw; which 2 -> that sum itself, (D)
 * in the compute type (the weight gradient without the (..., D) float32
 * intermediate; summed in a fixed order, whatever the thread count);
 * which 3 -> which 0's dx (inputs and output alike), whose kernel may
 * also leave dw's partial sums after its output (CUDA: one pass over x
 * and g for both gradients); which 4 -> which 2's dw from inputs (x, g,
 * that which-3 node): its kernel adds the partial sums up when the
 * which-3 node left them, else computes dw from x and g. rms_norm's VJP
 * uses 3 and 4 when both gradients are needed (MXC_RMS_BWD_PACKED=0: 0
 * and 2). */
typedef struct {
  double eps;
  int which;
  bool has_weight;
  bool has_resid; /* which 0: a last input r added to dx (x's shape) */
} mx__rms_norm_grad_params;
mx_array *mx__fast_rms_norm_grad(int which, mx_array *x, mx_array *g, mx_array *w, double eps);
/* which 0 plus r (x's shape): dx + r, the sum in the compute type rounded
 * once where a kernel does it in the same pass (the residual stream's
 * gradient: the reverse sweep folds the addition in); inputs (x, g [, w],
 * r). */
mx_array *mx__fast_rms_norm_grad_add(mx_array *x, mx_array *g, mx_array *w, double eps,
                                     mx_array *r);
/* which 3 (dx, plus r when given) and the which 4 reading it (*dw): both
 * gradients of rms_norm (w required). NULL (and *dw NULL) on error. */
mx_array *mx__fast_rms_norm_grad_both(mx_array *x, mx_array *g, mx_array *w, double eps,
                                      mx_array *r, mx_array **dw);
/* The reverse sweep's fold of r into a which-3 backward: when dx is one
 * (no residual yet, not run, held by at most the sum being made and its
 * which-4 node) and r has its shape and dtype, r becomes the node's
 * residual input, so dx now reads dx + r (*folded true; the caller takes
 * dx for the sum). Otherwise nothing changes. */
int mx__fast_rms_norm_grad_fold(mx_array *dx, mx_array *r, bool *folded);

/* swiglu_backward (the VJP of swiglu in one pass): which 0 -> d gate =
 * cot * up * silu'(gate), inputs (gate, up, cot); which 1 -> d up =
 * cot * silu(gate), inputs (gate, cot); which 2 -> both, inputs (gate, up,
 * cot), output (2, ...gate.shape) = [d gate, d up] with the bits of
 * which 0 and 1 (one read of the inputs); silu'(g) = s (1 + g (1 - s)),
 * s = sigmoid(g). One float dtype; computed in the compute type (f32 for
 * f16/bf16) and rounded once. */
typedef struct {
  int which;
} mx__swiglu_grad_params;
mx_array *mx__fast_swiglu_grad(int which, mx_array *gate, mx_array *up_or_cot, mx_array *cot);

enum { MX__SDPA_MASK_NONE = 0, MX__SDPA_MASK_ADD = 1, MX__SDPA_MASK_BOOL = 2 };

/* inputs: q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) of the
 * output dtype [, mask broadcast to (B, Hq, Tq, Tk): bool, or the output
 * dtype for an additive mask]. Masked-out scores (false in a boolean mask,
 * above the lower-right aligned causal diagonal) become the lowest finite
 * value of the compute type, as MLX's fallback does: a row with every
 * score masked out averages all of v. */
typedef struct {
  double scale;
  bool causal;
  int mask_kind; /* MX__SDPA_MASK_* */
  /* a last input pos (int32, one element): only keys [0, pos + Tq) exist
   * (the filled part of a static KV cache; read when the kernel runs) */
  bool has_len;
  /* Set by the fused VJP (vjp_sdpa in src/ops/fast.c) on a forward node
   * that has not run yet: a kernel that can also writes each row's
   * log-sum-exp, float32 (B, Hq, Tq), into the output's buffer after the
   * output (at mx__sdpa_lse_tail bytes), and sdpa_logsumexp built with
   * that node as its third input shares it (a float32 view of that
   * buffer) instead of recomputing the scores. A kernel that cannot leaves
   * the buffer at the output's size, and sdpa_logsumexp then computes the
   * rows. Never changes the output. */
  bool keep_lse;
  /* Set by mx__fast_sdpa_prefer_blhd on a node that has not run: a kernel
   * that can stores the output as (B, Tq, Hq, Dv) — the array's strides
   * say so — so that the usual transpose to (B, Tq, Hq * Dv) is a view.
   * Never changes the values. */
  bool out_blhd;
  /* sdpa_backward_q only (mx__fast_sdpa_bwd_q_delta): the sixth input is
   * the forward's output (B, Hq, Tq, Dv), of q's dtype, in place of
   * delta; the kernel forms delta = row_dot(dout, out) itself and, where
   * it can, keeps those float32 rows after dq in its buffer (at
   * mx__sdpa_delta_tail bytes) for row_dot built with this node as its
   * third input (mx__fast_row_dot_of). */
  bool delta_of_out;
  /* sdpa_backward_q only: set by rope's VJP (vjp_rope in src/ops/fast.c)
   * on a dq node that has not run, when dq is the cotangent of a rope
   * (dims == D, halves, no freqs, no device position) — the node's result
   * becomes that rope's VJP of dq: dq rounded to the dtype, each pair
   * (c, c + D / 2) of row t rotated by the angle (rope_offset + t)
   * rope_scale base^(-2c / D), backwards unless rope_fwd, the results
   * rounded once (the bits of the rope op given dq). out_blhd then asks
   * for (B, Tq, Hq, D) storage, as rope's VJP would. sdpa_backward_kv
   * likewise (rope_dk, set when [dk, dv]'s dk part, reshaped, is the
   * cotangent of a rope of k): the dk part is rope's VJP of dk, rows t
   * being key positions; dv is unchanged. */
  bool rope_dq, rope_dk, rope_fwd;
  double rope_base, rope_scale;
  int64_t rope_offset;
} mx__sdpa_params;
/* Asks an attention node (mx_fast_scaled_dot_product_attention's result,
 * not evaluated yet) to store its output in (B, Tq, Hq, Dv) order where a
 * kernel can (the GPU's tensor-core prefill and training forward); a
 * no-op for other arrays. */
void mx__fast_sdpa_prefer_blhd(mx_array *o);

/* Byte offset of the kept log-sum-exp in an attention output's buffer:
 * the output's bytes rounded up to 16. */
static inline size_t mx__sdpa_lse_tail(int64_t out_size, size_t itemsize) {
  return ((size_t)out_size * itemsize + 15) & ~(size_t)15;
}

/* The fused attention backward (flash-attention style: the (Tq, Tk)
 * probabilities are recomputed block by block, never stored), taken by
 * the VJP of scaled_dot_product_attention when MXC_SDPA_FUSED_BWD allows
 * it (see vjp_sdpa in src/ops/fast.c). Internal ops with mx__sdpa_params
 * (mask_kind NONE, has_len false); not differentiable (their VJP reports
 * MX_ERR_UNSUPPORTED). G = Hq / Hkv; query head h reads kv head h / G;
 * row t sees key j iff not causal or j <= t + Tk - Tq (causal needs
 * Tq <= Tk, so every row sees a key). s_tj = scale q_t . k_j.
 *
 * sdpa_logsumexp: inputs q (B, Hq, Tq, D), k (B, Hkv, Tk, D) of one float
 *   dtype; output float32 (B, Hq, Tq): lse_t = log sum_{j seen} exp(s_tj).
 * sdpa_backward_q: inputs q, k, v (B, Hkv, Tk, Dv), dout (B, Hq, Tq, Dv)
 *   (all of q's dtype), lse and delta float32 (B, Hq, Tq), delta_t =
 *   dout_t . out_t. With p_tj = exp(s_tj - lse_t) (0 for keys not seen),
 *   dp_tj = dout_t . v_j and ds_tj = p_tj (dp_tj - delta_t): output
 *   dq_t = scale sum_j ds_tj k_j, q's dtype and shape.
 * sdpa_backward_kv: the same inputs with Dv == D; output of q's dtype
 *   (2, B, Hkv, Tk, D): [0] = dk_j = scale sum_{h in j's group, t} ds_htj
 *   q_ht, [1] = dv_j = sum_{h, t} p_htj dout_ht. With out_blhd (set by the
 *   VJP when v was a (B, T, H, D) array transposed to (B, H, T, D)) a
 *   kernel that can stores it in (B, Tk, 2, Hkv, D) order — its strides
 *   say so — so that dk and dv go back to (B, Tk, Hkv * D) as views (dv a
 *   matrix whose rows are 2 Hkv D apart). Never changes the values.
 * The builders check shapes and dtypes (errors name the op). */
/* row_dot: sum(a * b) over the last axis in the compute type — float32
 * for f16/bf16/f32 (no rounding of the products to the inputs' dtype),
 * float64 for f64. a and b: one float dtype and one shape (..., D); the
 * result (...). The fused attention backward's delta = sum(dO * O). */
mx_array *mx__fast_row_dot(mx_array *a, mx_array *b);
/* The same value, with src — an sdpa_backward_q node built by
 * mx__fast_sdpa_bwd_q_delta from this a (dout) and b (out) — as a third
 * input: a kernel that finds the rows src kept after its output shares
 * them (a float32 view of src's buffer, no work) instead of summing. The
 * kept rows were summed by another kernel, so they may differ from this
 * op's own sums in the last bits (float32 sums in another order). */
mx_array *mx__fast_row_dot_of(mx_array *a, mx_array *b, mx_array *src);
/* Byte offset of the delta rows an sdpa_backward_q node with
 * delta_of_out keeps in its buffer: dq's bytes rounded up to 256. */
static inline size_t mx__sdpa_delta_tail(int64_t out_size, size_t itemsize) {
  return ((size_t)out_size * itemsize + 255) & ~(size_t)255;
}

mx_array *mx__fast_sdpa_lse(mx_array *q, mx_array *k, double scale, bool causal);
/* The same, with the attention output fwd = sdpa(q, k, ...) as a third
 * input: its kept log-sum-exp (keep_lse above) is shared (a view) when
 * its buffer holds one. */
mx_array *mx__fast_sdpa_lse_of(mx_array *q, mx_array *k, mx_array *fwd, double scale,
                               bool causal);
mx_array *mx__fast_sdpa_bwd_q(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                              mx_array *lse, mx_array *delta, double scale, bool causal);
mx_array *mx__fast_sdpa_bwd_kv(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                               mx_array *lse, mx_array *delta, double scale, bool causal);
/* sdpa_backward_q given the forward's output out (B, Hq, Tq, Dv) of q's
 * dtype instead of delta (delta_of_out above): the same dq as
 * mx__fast_sdpa_bwd_q with delta = row_dot(dout, out) rounded to float32. */
mx_array *mx__fast_sdpa_bwd_q_delta(mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                                    mx_array *lse, mx_array *out, double scale, bool causal);

/* Decode steps over a static KV cache (replayable as a captured GPU graph:
 * the position lives in device memory, so the launches never change):
 * rope at offset pos[0] + t, and attention over keys [0, pos[0] + Tq) of
 * k/v (no mask, not causal unless Tq > 1: lower-right aligned at
 * pos[0] + Tq). pos: int32 with one element. Not differentiable.
 * Rows before pos[0] of k and v must have been written before the kernel
 * that runs just before the attention (a static cache's earlier steps):
 * the GPU kernel reads them while that kernel still runs. */
mx_array *mx__fast_rope_at(mx_array *x, int dims, bool traditional, double base, double scale,
                           mx_array *pos, mx_array *freqs);

/* A prompt's stacked q/k/v heads in one pass: x (..., N, T, D) with N >=
 * rot_heads > 0; rows of heads [0, rot_heads) are rotated as mx_fast_rope
 * rotates them, the rows of the other heads (the values) are copied, so
 * the result holds q, k and v contiguous per head without a copy of its
 * own. Differentiable (the VJP rotates the same heads back). */
mx_array *mx__fast_rope_heads(mx_array *x, int dims, bool traditional, double base,
                              double scale, int64_t offset, mx_array *freqs, int64_t rot_heads);
mx_array *mx__fast_sdpa_upto(mx_array *q, mx_array *k, mx_array *v, double scale,
                             mx_array *pos);
/* Decode attentions the GPU ran with the thread-block cluster kernel
 * (flash_attn.cu, k_fa_decode_cl); stays 0 without CUDA. For tests. */
extern uint64_t mx__sdpa_cluster_runs;

/* softmax_cross_entropy (internal: the training loss in one pass over the
 * logits): inputs logits (..., V) of a float dtype and targets (...) int32;
 * output (...) float32 (float64 for float64 logits):
 *   loss = logsumexp(logits) - logits[target],
 * computed in float32 (float64) whatever the logits' dtype, as the
 * composition over logits cast to float32 would. A target outside [0, V)
 * gives NaN (on every backend; no error at run time). Differentiable in
 * the logits:
 * softmax_cross_entropy_backward: inputs logits, targets, cot (...) of the
 * loss dtype; output of the logits' dtype and shape:
 *   cot * (softmax(logits) - onehot(target)),
 * with a VJP of its own written with ops (second order). */
mx_array *mx__fast_softmax_ce(mx_array *logits, mx_array *targets);
mx_array *mx__fast_softmax_ce_grad(mx_array *logits, mx_array *targets, mx_array *cot);
/* The same with the forward's loss as a fourth input (the forward's VJP
 * passes it): a kernel may take a row's log-sum-exp as loss +
 * logits[target] instead of reducing the row again (CUDA does for finite
 * losses: one pass over the logits instead of two; the result differs from
 * the recomputed one only in the roundings of that sum). The loss gets no
 * gradient. NULL: the three-input form. */
mx_array *mx__fast_softmax_ce_grad_loss(mx_array *logits, mx_array *targets, mx_array *cot,
                                        mx_array *loss);

/* add_rms_norm (internal, a decode step's residual add and the RMSNorm
 * after it in one kernel): inputs x, r (same shape (..., D)), weight (D);
 * params mx__rms_norm_params. Output (2, ...x.shape): [0] = h = x + r
 * rounded to the dtype, [1] = rms_norm(h, weight, eps) — the bits of
 * mx_add then mx_fast_rms_norm on the GPU. Not differentiable. */
mx_array *mx__fast_add_rms_norm(mx_array *x, mx_array *r, mx_array *weight, double eps);

/* rope_kv (internal, a decode step over static caches): x (B, H + 2 KV,
 * L, D) holds the step's query, key and value heads (the stacked q/k/v
 * projection); rotates the query and key heads at positions pos[0] + t as
 * mx__fast_rope_at does, writes the rotated keys and the values into
 * keys/values (B, KV, S, D; evaluated, row-contiguous) at [pos[0],
 * pos[0] + L) in place (rows past S are dropped, as store_at), and returns
 * the rotated queries (B, H, L, D). The caches are inputs: a consumer that
 * reads them must depend on the result (attention takes the queries).
 * inputs: x, keys, values, pos [, freqs]. Not differentiable. */
typedef struct {
  mx__rope_params rope;
  int64_t nq, nkv;
} mx__rope_kv_params;
mx_array *mx__fast_rope_kv(mx_array *x, int64_t nq, int64_t nkv, mx_array *keys,
                           mx_array *values, int dims, bool traditional, double base,
                           double scale, mx_array *pos, mx_array *freqs);

/* rope_sdpa (internal, a decode step's rope_kv and the attention after it
 * in one op): the result of
 *   q = mx__fast_rope_kv(x, nq, nkv, keys, values, ..., pos, freqs);
 *   o = mx__fast_sdpa_upto(q, keys, values, attn_scale, pos);
 * (the same writes into keys/values, o (B, nq, L, D)) with the same bits.
 * On the GPU one kernel does both for one position (L = 1) of 16-bit
 * heads of 64 or 128 (the thread-block cluster attention rotates the
 * query and the new key as it loads them and writes the new key and value
 * into the caches); other cases run the two kernels. Params start with
 * the attention's, so an attention kernel can read them.
 * inputs: x, keys, values, pos [, freqs]. Not differentiable. */
typedef struct {
  mx__sdpa_params sdpa;
  mx__rope_kv_params rk;
} mx__rope_sdpa_params;
mx_array *mx__fast_rope_sdpa(mx_array *x, int64_t nq, int64_t nkv, mx_array *keys,
                             mx_array *values, int dims, bool traditional, double base,
                             double scale, mx_array *pos, mx_array *freqs, double attn_scale);
/* Decode steps the GPU ran as one rope_sdpa kernel; stays 0 without CUDA.
 * For tests. */
extern uint64_t mx__rope_sdpa_fused_runs;

/* swiglu_linear (internal, a decode step's MLP: the gate/up projection and
 * swiglu in one kernel): x (..., K), w (2 I, K) — the gate rows then the
 * up rows of a stacked projection. Output (..., I) = swiglu(g, u) with
 * g = x w[:I]^T and u = x w[I:]^T each rounded to the dtype: the bits of
 * mx_matmul then mx_fast_swiglu on the GPU. Not differentiable. */
mx_array *mx__fast_swiglu_linear(mx_array *x, mx_array *w);

/* add_norm_linear (internal, a decode step's residual add, RMSNorm and the
 * projection after it in one kernel): x, r (..., D), norm weight (D), w
 * (N, D) — or (2 I, D), the gate rows then the up rows, when swiglu.
 * Output (..., D + M): [..., :D] = h = x + r rounded to the dtype (the new
 * residual), [..., D:] = y = n w^T rounded (M = N), or swiglu(n w[:I]^T,
 * n w[I:]^T) with swiglu_linear's roundings (M = I), where n =
 * rms_norm(h, weight, eps): the bits of add_rms_norm then the GEMV (or
 * swiglu_linear) on the GPU. Not differentiable. */
typedef struct {
  double eps;
  bool swiglu;
  int group_size, bits; /* bits 0: w dense; else quantized (mx__fast_add_norm_qlinear) */
} mx__add_norm_linear_params;
mx_array *mx__fast_add_norm_linear(mx_array *x, mx_array *r, mx_array *weight, mx_array *w,
                                   double eps, bool swiglu);
/* The same with w in MLX's affine format (quantized_params.h): wq (N, D
 * bits / 32) uint32, scales and biases (N, D / group_size); inputs x, r,
 * weight, wq, scales, biases, scales and biases of the output dtype. y =
 * n W^T accumulates n . (scale q + bias) as quantized_matmul does (no
 * rounding of the dequantized weight), with swiglu_linear's roundings when
 * swiglu: the bits of add_rms_norm, quantized_matmul (and swiglu) on the
 * GPU where the tensor-core GEMV serves them. */
mx_array *mx__fast_add_norm_qlinear(mx_array *x, mx_array *r, mx_array *weight, mx_array *wq,
                                    mx_array *scales, mx_array *biases, int group_size, int bits,
                                    double eps, bool swiglu);

/* The same functions written as compositions of primitive ops (mean,
 * rsqrt, matmul, softmax, ...): the unfused reference of each fast op.
 * Same arguments and checks as the public functions. */
mx_array *mx__fast_rms_norm_composed(mx_array *x, mx_array *weight, double eps);
mx_array *mx__fast_layer_norm_composed(mx_array *x, mx_array *weight, mx_array *bias,
                                       double eps);
mx_array *mx__fast_rope_composed(mx_array *x, int dims, bool traditional, double base,
                                 double scale, int64_t offset, mx_array *freqs);
mx_array *mx__fast_sdpa_composed(mx_array *q, mx_array *k, mx_array *v, double scale,
                                 mx_array *mask, bool causal);

#endif
