/* flash_attn2.h — tensor-core flash attention (mma.sync m16n8k16, f16 /
 * bf16, head size 64 or 128, no array mask) for prefill and training:
 * the forward (optionally with each row's log-sum-exp) and the two
 * backward kernels (dq; dk and dv). Defined in flash_attn2.cu.
 *
 * Shapes: q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, D),
 * dout (B, Hq, Tq, D) of one 16-bit float dtype; lse and delta float32
 * (B, Hq, Tq) with delta = sum(dout * out, -1); Hq a multiple of Hkv.
 * causal: key j is seen by row t iff j <= t + Tk - Tq (needs Tq <= Tk).
 * lse[t] = log sum_j exp(scale q_t . k_j) over the keys row t sees.
 *
 * Each returns 0 (done), 1 (not taken: another kernel must run; nothing
 * written) or -1 (failed, error set). The output arrays are allocated by
 * the caller. */
#ifndef MXC_CUDA_FLASH_ATTN2_H
#define MXC_CUDA_FLASH_ATTN2_H
#include "array_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether these kernels take this case (dtype, head sizes, causal with
 * Tq <= Tk). Layouts never matter: inputs whose rows are not contiguous
 * and 16-byte aligned are copied first. */
bool mx__cuda_fa2_ok(mx_dtype dt, int64_t D, int64_t Dv, int64_t Tq, int64_t Tk, bool causal);

/* An attention output's (B, Hq, Tq, Dv) buffer laid out as (B, Tq, Hq, Dv)
 * (blhd, mx__sdpa_params.out_blhd) or row-contiguous: sets its strides.
 * The forward below writes the layout the strides give. */
static inline void mx__cuda_sdpa_layout(mx_array *out, bool blhd) {
  if (blhd && out->ndim == 4) {
    const int64_t *s = out->shape;
    out->strides[0] = s[1] * s[2] * s[3];
    out->strides[1] = s[3];
    out->strides[2] = s[1] * s[3];
    out->strides[3] = 1;
  } else {
    mx__compute_row_strides(out->shape, out->ndim, out->strides);
  }
  out->row_contiguous = mx__strides_row_contiguous(out->shape, out->strides, out->ndim);
}

/* o (B, Hq, Tq, D) of q's dtype (may be NULL) and lse, a device pointer
 * to float32 (B, Hq, Tq) rows (may be NULL); at least one of them. */
int mx__cuda_fa2_forward(mx_array *o, float *lse, mx_array *q, mx_array *k, mx_array *v,
                         float scale, bool causal);

/* dq (B, Hq, Tq, D) of q's dtype. rtab (may be NULL): a device table of
 * rope's (cos, sin) for each (t, pair), float32 (Tq, D / 2, 2) — dq is
 * rounded, rotated by those angles (pairs c, c + D / 2), rounded again and
 * stored (B, Tq, Hq, D) when blhd (dq's strides must say so), else as
 * rows; the bits of the rope op given dq. */
int mx__cuda_fa2_backward_q(mx_array *dq, mx_array *q, mx_array *k, mx_array *v,
                            mx_array *dout, mx_array *lse, mx_array *delta, float scale,
                            bool causal, const float *rtab, bool blhd);

/* The same given the forward's output fout (B, Hq, Tq, D) of q's dtype in
 * place of delta: the kernel forms delta = sum(dout * fout, -1) in
 * float32 and writes it to dl, a device pointer to (B, Hq, Tq) rows. */
int mx__cuda_fa2_backward_q_delta(mx_array *dq, float *dl, mx_array *q, mx_array *k,
                                  mx_array *v, mx_array *dout, mx_array *lse, mx_array *fout,
                                  float scale, bool causal, const float *rtab, bool blhd);

/* dkv (2, B, Hkv, Tk, D) of q's dtype, [dk, dv], each summed over the
 * query heads that share the kv head; written where dkv's strides say
 * (features contiguous). rtab (may be NULL): as for dq, (Tk, D / 2, 2),
 * applied to dk (key positions). */
int mx__cuda_fa2_backward_kv(mx_array *dkv, mx_array *q, mx_array *k, mx_array *v,
                             mx_array *dout, mx_array *lse, mx_array *delta, float scale,
                             bool causal, const float *rtab);

#ifdef __cplusplus
}
#endif
#endif
