/* quantized.cu — CUDA kernels of QUANTIZE_PACK, DEQUANTIZE and
 * QUANTIZED_MATMUL (format: src/ops/quantized_params.h).
 *
 * Straightforward kernels, correctness first:
 *   - quantize_pack: one thread per group (MLX's scale/bias choice in f32);
 *   - dequantize: one thread per element, multiply-then-add each rounded to
 *     the output dtype (no fused multiply-add), as the CPU kernel;
 *   - quantized_matmul: the fast paths of qmv.cu (GEMV for M <= 8 rows,
 *     dequantized slices + cuBLAS for more), else one thread per output
 *     element, weights dequantized on the fly in f32 (f64 for f64). */
#include "cuda_common.cuh"
#include "ops/quantized_params.h"

__device__ __forceinline__ uint32_t unpack_one(const uint32_t *w, int bits, int64_t i) {
  int64_t off = i * bits;
  int64_t wi = off >> 5;
  int sh = (int)(off & 31);
  uint64_t v = w[wi] >> sh;
  if (sh + bits > 32) v |= (uint64_t)w[wi + 1] << (32 - sh);
  return (uint32_t)v & ((1u << bits) - 1u);
}

/* Contiguous device view of an input: its own data, or a temporary copy. */
static int dview(const mx_array *a, const void **p, mx__buffer **tmp) {
  *tmp = NULL;
  if (a->row_contiguous) {
    *p = mx__ddata(a);
    return MX_OK;
  }
  *tmp = mx__cuda_tmp((size_t)a->size * mx_dtype_size(a->dtype));
  if (!*tmp) return mx_last_status();
  *p = (*tmp)->dptr;
  return mx__cuda_copy_to_contiguous(a, (*tmp)->dptr);
}
static void drop(mx__buffer *b) {
  if (b) mx__buffer_release(b);
}

/* ---- QUANTIZE_PACK --------------------------------------------------------------- */
__device__ void group_params(const float *w, int n, int bits, float *scale, float *bias) {
  float n_bins = (float)((1 << bits) - 1), eps = 1e-7f;
  float wmin = INFINITY, wmax = -INFINITY;
  for (int j = 0; j < n; j++) {
    wmax = wmax < w[j] ? w[j] : wmax;
    wmin = w[j] < wmin ? w[j] : wmin;
  }
  bool mask = fabsf(wmin) > fabsf(wmax);
  float s = __fdiv_rn(__fsub_rn(wmax, wmin), n_bins);
  s = s < eps ? eps : s;
  s = mask ? s : -s;
  float edge = mask ? wmin : wmax;
  float q0 = rintf(__fdiv_rn(edge, s));
  float b = 0.0f;
  if (q0 != 0.0f) {
    s = __fdiv_rn(edge, q0);
    b = edge;
  }
  *scale = s;
  *bias = b;
}

__device__ __forceinline__ uint32_t quant_value(float w, float scale, float bias, int bits) {
  float n_bins = (float)((1 << bits) - 1);
  float q = rintf(__fdiv_rn(__fsub_rn(w, bias), scale));
  q = q < 0.0f ? 0.0f : q;
  q = q > n_bins ? n_bins : q;
  return q == q ? (uint32_t)q : 0u;
}

template <class T>
__global__ void k_quant(const typename T::S *w, void *out, mx_dtype odt, int64_t groups, int gs,
                        int bits, int what) {
  MX_CUDA_LOOP(g, groups) {
    float buf[128]; /* group_size <= 128 */
    const typename T::S *wg = w + g * gs;
    for (int j = 0; j < gs; j++) buf[j] = (float)T::ld(wg[j]);
    float s, b;
    group_params(buf, gs, bits, &s, &b);
    if (what == MX__QUANT_PACKED) {
      int wpg = gs * bits / 32;
      uint32_t *o = (uint32_t *)out + g * wpg;
      uint64_t acc = 0;
      int nacc = 0, k = 0;
      for (int j = 0; j < gs; j++) {
        acc |= (uint64_t)quant_value(buf[j], s, b, bits) << nacc;
        nacc += bits;
        if (nacc >= 32) {
          o[k++] = (uint32_t)acc;
          acc >>= 32;
          nacc -= 32;
        }
      }
    } else {
      float v = what == MX__QUANT_SCALES ? s : b;
      switch (odt) {
        case MX_FLOAT16: ((uint16_t *)out)[g] = mx__f2h(v); break;
        case MX_BFLOAT16: ((uint16_t *)out)[g] = mx__f2b(v); break;
        case MX_FLOAT64: ((double *)out)[g] = v; break;
        default: ((float *)out)[g] = v; break;
      }
    }
  }
}

static int k_quantize_pack(mx_array *out, mx_array **in) {
  const mx__quantize_params *p = MX__PARAMS(out, mx__quantize_params);
  mx_array *w = in[0];
  if (!mx_dtype_is_float(w->dtype)) return mx__cuda_no_dtype(out, w->dtype);
  if (p->group_size > 128) return mx__cuda_no_dtype(out, w->dtype);
  int st = mx__array_alloc_data(out);
  if (st || w->size == 0) return st;
  const void *wp = NULL;
  mx__buffer *wt = NULL;
  if ((st = dview(w, &wp, &wt))) {
    drop(wt);
    return st;
  }
  int64_t groups = w->size / p->group_size;
  cudaStream_t s = mx__cuda_stream();
  MX_CUDA_DISPATCH_FLOAT(w->dtype, k_quant<T><<<mx__cuda_blocks(groups), MX_CUDA_THREADS, 0, s>>>(
                                       (const T::S *)wp, out->buf->dptr, out->dtype, groups,
                                       p->group_size, p->bits, p->what))
  drop(wt);
  return mx__cuda_launched(mx__opname(out));
}

/* ---- DEQUANTIZE -------------------------------------------------------------------- */
template <class T> struct deq_op {
  __device__ static typename T::S f(float s, float b, uint32_t q);
};
template <> struct deq_op<TF32> {
  __device__ static float f(float s, float b, uint32_t q) {
    return __fadd_rn(__fmul_rn(s, (float)q), b);
  }
};
template <> struct deq_op<TF16> {
  __device__ static uint16_t f(float s, float b, uint32_t q) {
    return mx__f2h(__fadd_rn(mx__h2f(mx__f2h(__fmul_rn(s, (float)q))), b));
  }
};
template <> struct deq_op<TBF16> {
  __device__ static uint16_t f(float s, float b, uint32_t q) {
    return mx__f2b(__fadd_rn(mx__b2f(mx__f2b(__fmul_rn(s, (float)q))), b));
  }
};

template <class T>
__global__ void k_deq(const uint32_t *w, const typename T::S *sc, const typename T::S *bi,
                      typename T::S *o, int64_t n, int gs, int bits) {
  MX_CUDA_LOOP(i, n) {
    int64_t g = i / gs;
    o[i] = deq_op<T>::f((float)T::ld(sc[g]), (float)T::ld(bi[g]), unpack_one(w, bits, i));
  }
}
__global__ void k_deq64(const uint32_t *w, const double *sc, const double *bi, double *o,
                        int64_t n, int gs, int bits) {
  MX_CUDA_LOOP(i, n) {
    int64_t g = i / gs;
    o[i] = __dadd_rn(__dmul_rn(sc[g], (double)unpack_one(w, bits, i)), bi[g]);
  }
}

static int k_dequantize(mx_array *out, mx_array **in) {
  const mx__dequantize_params *p = MX__PARAMS(out, mx__dequantize_params);
  mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || in[1]->dtype != dt || in[2]->dtype != dt ||
      in[0]->dtype != MX_UINT32)
    return mx__cuda_no_dtype(out, in[1]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const void *wp = NULL, *sp = NULL, *bp = NULL;
  mx__buffer *wt = NULL, *stt = NULL, *bt = NULL;
  if (!(st = dview(in[0], &wp, &wt)) && !(st = dview(in[1], &sp, &stt)))
    st = dview(in[2], &bp, &bt);
  if (!st) {
    int64_t n = out->size;
    unsigned nb = mx__cuda_blocks(n);
    cudaStream_t s = mx__cuda_stream();
    const uint32_t *w = (const uint32_t *)wp;
    void *o = out->buf->dptr;
    switch (dt) {
      case MX_FLOAT32:
        k_deq<TF32><<<nb, MX_CUDA_THREADS, 0, s>>>(w, (const float *)sp, (const float *)bp,
                                                   (float *)o, n, p->group_size, p->bits);
        break;
      case MX_FLOAT16:
        k_deq<TF16><<<nb, MX_CUDA_THREADS, 0, s>>>(w, (const uint16_t *)sp, (const uint16_t *)bp,
                                                   (uint16_t *)o, n, p->group_size, p->bits);
        break;
      case MX_BFLOAT16:
        k_deq<TBF16><<<nb, MX_CUDA_THREADS, 0, s>>>(w, (const uint16_t *)sp,
                                                    (const uint16_t *)bp, (uint16_t *)o, n,
                                                    p->group_size, p->bits);
        break;
      default:
        k_deq64<<<nb, MX_CUDA_THREADS, 0, s>>>(w, (const double *)sp, (const double *)bp,
                                               (double *)o, n, p->group_size, p->bits);
        break;
    }
    st = mx__cuda_launched(mx__opname(out));
  }
  drop(wt);
  drop(stt);
  drop(bt);
  return st;
}

/* ---- QUANTIZED_MATMUL --------------------------------------------------------------
 * The GEMV (M <= 8) and dequantize + cuBLAS (M > 8) paths live in qmv.cu;
 * this one-thread-per-output kernel covers the rest (f64, M <= 8 without
 * transpose). */
int mx__cuda_qmm_fast(mx_array *out, const void *x, const uint32_t *w, const void *sc,
                      const void *bi, int64_t M, int64_t N, int64_t K, int gs, int bits,
                      bool transpose, bool *done);

template <class T, class C>
__global__ void k_qmm(const typename T::S *x, const uint32_t *w, const typename T::S *sc,
                      const typename T::S *bi, typename T::S *o, int64_t M, int64_t N, int64_t K,
                      int gs, int bits, bool transpose) {
  int64_t total = M * N;
  MX_CUDA_LOOP(e, total) {
    int64_t m = e / N, n = e % N;
    const typename T::S *xr = x + m * K;
    C acc = 0;
    if (transpose) {
      const uint32_t *wr = w + n * (K * bits / 32);
      int64_t G = K / gs;
      for (int64_t k = 0; k < K; k++) {
        int64_t g = n * G + k / gs;
        C wv = (C)T::ld(sc[g]) * (C)unpack_one(wr, bits, k) + (C)T::ld(bi[g]);
        acc += (C)T::ld(xr[k]) * wv;
      }
    } else {
      int64_t wpr = N * bits / 32, G = N / gs;
      for (int64_t k = 0; k < K; k++) {
        int64_t g = k * G + n / gs;
        C wv = (C)T::ld(sc[g]) * (C)unpack_one(w + k * wpr, bits, n) + (C)T::ld(bi[g]);
        acc += (C)T::ld(xr[k]) * wv;
      }
    }
    o[e] = T::st(acc);
  }
}

static int k_quantized_matmul(mx_array *out, mx_array **in) {
  const mx__qmm_params *p = MX__PARAMS(out, mx__qmm_params);
  mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || in[0]->dtype != dt || in[2]->dtype != dt ||
      in[3]->dtype != dt || in[1]->dtype != MX_UINT32)
    return mx__cuda_no_dtype(out, in[0]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int64_t N = out->shape[out->ndim - 1], K = in[0]->shape[in[0]->ndim - 1];
  int64_t M = out->size / N;
  const void *xp = NULL, *wp = NULL, *sp = NULL, *bp = NULL;
  mx__buffer *xt = NULL, *wt = NULL, *stt = NULL, *bt = NULL;
  if (!(st = dview(in[0], &xp, &xt)) && !(st = dview(in[1], &wp, &wt)) &&
      !(st = dview(in[2], &sp, &stt)))
    st = dview(in[3], &bp, &bt);
  bool done = false;
  if (!st)
    st = mx__cuda_qmm_fast(out, xp, (const uint32_t *)wp, sp, bp, M, N, K, p->group_size,
                           p->bits, p->transpose, &done);
  if (!st && !done) {
    unsigned nb = mx__cuda_blocks(M * N);
    cudaStream_t s = mx__cuda_stream();
    switch (dt) {
#define C(DT, TAG, CT)                                                                        \
  case DT:                                                                                    \
    k_qmm<TAG, CT><<<nb, MX_CUDA_THREADS, 0, s>>>(                                            \
        (const TAG::S *)xp, (const uint32_t *)wp, (const TAG::S *)sp, (const TAG::S *)bp,     \
        (TAG::S *)out->buf->dptr, M, N, K, p->group_size, p->bits, p->transpose);             \
    break;
      C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
      C(MX_FLOAT64, TF64, double)
#undef C
      default: break;
    }
    st = mx__cuda_launched(mx__opname(out));
  }
  drop(xt);
  drop(wt);
  drop(stt);
  drop(bt);
  return st;
}

void mx__cuda_register_quantized(mx__kernel_fn *k) {
  k[MX_OP_QUANTIZE_PACK] = k_quantize_pack;
  k[MX_OP_DEQUANTIZE] = k_dequantize;
  k[MX_OP_QUANTIZED_MATMUL] = k_quantized_matmul;
}
