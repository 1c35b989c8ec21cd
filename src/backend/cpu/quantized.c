/* quantized.c (cpu) — kernels of the affine quantization primitives:
 * QUANTIZE_PACK, DEQUANTIZE and QUANTIZED_MATMUL (format: see
 * src/ops/quantized_params.h).
 *
 * quantized_matmul never dequantizes the whole weight at once:
 *   - x @ W^T with few rows (M < 8, decode), 4- and 8-bit on x86-64: the
 *     AVX-512 or AVX2 GEMV below (run-time dispatch), four packed rows at a
 *     time, out = sum_g scale_g * (x_g . q_g) + bias_g * sum(x_g);
 *     4-bit with AVX-512 also for 8 <= M < 64 (each unpacked block of W
 *     multiplied with four rows of x);
 *   - the same with other bits / CPUs: each output column streams its
 *     packed row once, group by group, with GNU vector types;
 *   - x @ W^T with more rows: blocks of W dequantized to float32 and
 *     multiplied by OpenBLAS's sgemm (16-row tiles and a 2x4 micro-kernel
 *     where the sizes do not fit BLAS's int);
 *   - x @ W (W stored (K, N), groups along N): one group of columns at a
 *     time, each packed row unpacked once and applied to every row of x.
 * The work is split over output columns; each output element is computed
 * by one thread in a fixed order, so results do not depend on the thread
 * count. f16/bf16/f32 compute in float32, f64 in float64. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu.h"
#include "gemm_bf16.h"
#include "mxc/memory.h"
#include "ops/quantized_params.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the quantized kernels assume a little-endian host"
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

static inline v8f ld8(const float *p) {
  v8f v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline float hsum8(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* ---- inputs as contiguous float/double/uint32 ------------------------------- */

typedef struct {
  void *p;     /* contiguous data */
  void *owned; /* scratch to free, or NULL */
} buf_view;

static int contiguous(mx_array *a, buf_view *v) {
  v->owned = NULL;
  if (a->row_contiguous) {
    v->p = mx__data(a);
    return MX_OK;
  }
  size_t n = (size_t)a->size * mx_dtype_size(a->dtype);
  v->owned = malloc(n ? n : 1);
  if (!v->owned) return mx__set_error(MX_ERR_OOM, "quantized: cannot allocate %zu bytes", n);
  mx__cpu_copy_to_contiguous(a, v->owned);
  v->p = v->owned;
  return MX_OK;
}

/* a as a contiguous array of `to` (MX_FLOAT32 or MX_FLOAT64). */
static int as_float(mx_array *a, mx_dtype to, buf_view *v) {
  buf_view c;
  if (contiguous(a, &c)) return mx_last_status();
  if (a->dtype == to) {
    *v = c;
    return MX_OK;
  }
  size_t n = (size_t)a->size * mx_dtype_size(to);
  v->owned = malloc(n ? n : 1);
  if (!v->owned) {
    free(c.owned);
    return mx__set_error(MX_ERR_OOM, "quantized: cannot allocate %zu bytes", n);
  }
  mx__cpu_convert(c.p, a->dtype, v->owned, to, a->size);
  v->p = v->owned;
  free(c.owned);
  return MX_OK;
}

/* Stores float v as dtype dt at index i of p. */
static inline void store_f(void *p, mx_dtype dt, int64_t i, float v) {
  switch (dt) {
    case MX_FLOAT16: ((uint16_t *)p)[i] = mx__f32_to_f16(v); break;
    case MX_BFLOAT16: ((uint16_t *)p)[i] = mx__f32_to_bf16(v); break;
    case MX_FLOAT64: ((double *)p)[i] = v; break;
    default: ((float *)p)[i] = v; break;
  }
}

typedef uint8_t v8b __attribute__((vector_size(8)));
/* 8 bytes as 8 floats */
static inline v8f load8_u8(const uint8_t *p) {
#if defined(__AVX2__)
  __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
  v8f r;
  memcpy(&r, &f, sizeof r);
  return r;
#else
  v8b b;
  memcpy(&b, p, sizeof b);
  return __builtin_convertvector(__builtin_convertvector(b, v8u), v8f);
#endif
}
static inline v8f bcast_shift(uint32_t w, v8u sh, uint32_t mask) {
#if defined(__AVX2__)
  __m256i s;
  memcpy(&s, &sh, sizeof s);
  __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), s);
  __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)mask)));
  v8f r;
  memcpy(&r, &f, sizeof r);
  return r;
#else
  v8u v = (v8u){w, w, w, w, w, w, w, w};
  return __builtin_convertvector((v >> sh) & mask, v8f);
#endif
}

/* Dot products of n floats with the n packed values of a group, unpacked in
 * registers (4- and 8-bit: the decode path). */
static inline float dot_q4(const float *x, const uint32_t *w, int n) {
  const v8u sh = {0, 4, 8, 12, 16, 20, 24, 28};
  v8f a0 = {0}, a1 = {0};
  for (int i = 0; i < n / 8; i += 2) {
    a0 += ld8(x + 8 * i) * bcast_shift(w[i], sh, 15u);
    a1 += ld8(x + 8 * i + 8) * bcast_shift(w[i + 1], sh, 15u);
  }
  return hsum8(a0 + a1);
}
static inline float dot_q8(const float *x, const uint32_t *w, int n) {
  const uint8_t *b = (const uint8_t *)w;
  v8f a0 = {0}, a1 = {0};
  for (int i = 0; i < n; i += 16) {
    a0 += ld8(x + i) * load8_u8(b + i);
    a1 += ld8(x + i + 8) * load8_u8(b + i + 8);
  }
  return hsum8(a0 + a1);
}

/* ---- unpacking ------------------------------------------------------------------ */

/* The n (a multiple of 32) values of a group starting at word w, as floats. */
static inline void unpack_f(const uint32_t *w, int bits, int n, float *q) {
  if (bits == 4) {
    const v8u sh = {0, 4, 8, 12, 16, 20, 24, 28};
    for (int i = 0; i < n / 8; i++) st8(q + 8 * i, bcast_shift(w[i], sh, 15u));
  } else if (bits == 8) {
    const uint8_t *b = (const uint8_t *)w; /* little-endian: byte i is value i */
    for (int i = 0; i < n / 8; i++) st8(q + 8 * i, load8_u8(b + 8 * i));
  } else if (bits == 2) {
    const v8u lo = {0, 2, 4, 6, 8, 10, 12, 14}, hi = lo + 16u;
    for (int i = 0; i < n / 16; i++) {
      st8(q + 16 * i, bcast_shift(w[i], lo, 3u));
      st8(q + 16 * i + 8, bcast_shift(w[i], hi, 3u));
    }
  } else {
    /* 3, 5, 6 bits: values straddle words; read the bit stream */
    uint32_t mask = (1u << bits) - 1u;
    for (int i = 0; i < n; i++) {
      int off = i * bits, wi = off >> 5, sh = off & 31;
      uint64_t v = w[wi] >> sh;
      if (sh + bits > 32) v |= (uint64_t)w[wi + 1] << (32 - sh);
      q[i] = (float)((uint32_t)v & mask);
    }
  }
}

static inline uint32_t unpack_one(const uint32_t *w, int bits, int64_t i) {
  int64_t off = i * bits;
  int64_t wi = off >> 5;
  int sh = (int)(off & 31);
  uint64_t v = w[wi] >> sh;
  if (sh + bits > 32) v |= (uint64_t)w[wi + 1] << (32 - sh);
  return (uint32_t)v & ((1u << bits) - 1u);
}

/* ---- QUANTIZE_PACK --------------------------------------------------------------- */

typedef struct {
  const float *w;
  void *out;
  mx_dtype dt;
  int gs, bits, what;
} quant_ctx;

static void quant_chunk(void *vctx, int64_t g0, int64_t g1) {
  const quant_ctx *c = vctx;
  int wpg = c->gs * c->bits / 32; /* words per group */
  for (int64_t g = g0; g < g1; g++) {
    const float *w = c->w + g * c->gs;
    float s, b;
    mx__quant_group_params(w, c->gs, c->bits, &s, &b);
    if (c->what == MX__QUANT_SCALES) {
      store_f(c->out, c->dt, g, s);
    } else if (c->what == MX__QUANT_BIASES) {
      store_f(c->out, c->dt, g, b);
    } else {
      uint32_t *o = (uint32_t *)c->out + g * wpg;
      uint64_t acc = 0;
      int nacc = 0, k = 0;
      for (int j = 0; j < c->gs; j++) {
        acc |= (uint64_t)mx__quant_value(w[j], s, b, c->bits) << nacc;
        nacc += c->bits;
        if (nacc >= 32) {
          o[k++] = (uint32_t)acc;
          acc >>= 32;
          nacc -= 32;
        }
      }
    }
  }
}

static int k_quantize_pack(mx_array *out, mx_array **in) {
  const mx__quantize_params *p = MX__PARAMS(out, mx__quantize_params);
  if (mx__array_alloc_data(out)) return mx_last_status();
  mx_array *w = in[0];
  if (w->size == 0) return MX_OK;
  buf_view wf;
  if (as_float(w, MX_FLOAT32, &wf)) return mx_last_status();
  quant_ctx c = {wf.p, mx__data(out), out->dtype, p->group_size, p->bits, p->what};
  int64_t groups = w->size / p->group_size;
  mx__parallel_for(groups, 256, quant_chunk, &c);
  free(wf.owned);
  return MX_OK;
}

/* ---- DEQUANTIZE ---------------------------------------------------------------------- */

typedef struct {
  const uint32_t *w;
  const void *s, *b;
  void *out;
  mx_dtype dt;
  int gs, bits;
} deq_ctx;

static void deq_chunk(void *vctx, int64_t g0, int64_t g1) {
  const deq_ctx *c = vctx;
  int wpg = c->gs * c->bits / 32;
  float q[128];
  for (int64_t g = g0; g < g1; g++) {
    unpack_f(c->w + g * wpg, c->bits, c->gs, q);
    int64_t o = g * c->gs;
    switch (c->dt) {
      case MX_FLOAT32: {
        /* scale * q is exact in double: rounding it to float, then adding
         * the bias in double and rounding gives multiply-then-add in float
         * (no fused multiply-add, whatever the compiler flags) */
        double s = ((const float *)c->s)[g], b = ((const float *)c->b)[g];
        float *d = (float *)c->out + o;
        for (int j = 0; j < c->gs; j++) d[j] = (float)((double)(float)(s * q[j]) + b);
        break;
      }
      case MX_FLOAT64: {
        double s = ((const double *)c->s)[g], b = ((const double *)c->b)[g];
        double *d = (double *)c->out + o;
        for (int j = 0; j < c->gs; j++) d[j] = s * q[j] + b;
        break;
      }
      case MX_FLOAT16: {
        /* products of an 11-bit scale and an 8-bit q are exact in float */
        float s = mx__f16_to_f32(((const uint16_t *)c->s)[g]);
        float b = mx__f16_to_f32(((const uint16_t *)c->b)[g]);
        uint16_t *d = (uint16_t *)c->out + o;
        for (int j = 0; j < c->gs; j++)
          d[j] = mx__f32_to_f16(mx__f16_to_f32(mx__f32_to_f16(s * q[j])) + b);
        break;
      }
      default: { /* bfloat16 */
        float s = mx__bf16_to_f32(((const uint16_t *)c->s)[g]);
        float b = mx__bf16_to_f32(((const uint16_t *)c->b)[g]);
        uint16_t *d = (uint16_t *)c->out + o;
        for (int j = 0; j < c->gs; j++)
          d[j] = mx__f32_to_bf16(mx__bf16_to_f32(mx__f32_to_bf16(s * q[j])) + b);
        break;
      }
    }
  }
}

static int k_dequantize(mx_array *out, mx_array **in) {
  const mx__dequantize_params *p = MX__PARAMS(out, mx__dequantize_params);
  if (mx__array_alloc_data(out)) return mx_last_status();
  if (out->size == 0) return MX_OK;
  buf_view w = {0}, s = {0}, b = {0};
  if (contiguous(in[0], &w)) return mx_last_status();
  if (contiguous(in[1], &s)) {
    free(w.owned);
    return mx_last_status();
  }
  if (contiguous(in[2], &b)) {
    free(w.owned);
    free(s.owned);
    return mx_last_status();
  }
  deq_ctx c = {w.p, s.p, b.p, mx__data(out), out->dtype, p->group_size, p->bits};
  mx__parallel_for(out->size / p->group_size, 64, deq_chunk, &c);
  free(w.owned);
  free(s.owned);
  free(b.owned);
  return MX_OK;
}

/* ---- QUANTIZED_MATMUL ------------------------------------------------------------------ */

enum { QMM_STREAM_MAX_M = 8, QMM_MR_MAX_M = 64, QMM_TILE_N = 16 };

typedef struct {
  const float *x;    /* (M, K) */
  const float *xsum; /* (M, K/gs) group sums of x (stream path) */
  const uint32_t *w;
  const float *s, *b;
  float *out; /* (M, N) */
  int64_t M, N, K;
  int gs, bits;
  atomic_int failed;
} qmm_ctx;

static inline float dot_f(const float *a, const float *b, int64_t n) {
  v8f a0 = {0}, a1 = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 += ld8(a + i) * ld8(b + i);
    a1 += ld8(a + i + 8) * ld8(b + i + 8);
  }
  for (; i < n; i += 8) a0 += ld8(a + i) * ld8(b + i);
  return hsum8(a0 + a1);
}

/* x @ W^T, few rows: stream each packed row of W once. Columns [n0, n1). */
static void qmm_t_stream(void *vctx, int64_t n0, int64_t n1) {
  qmm_ctx *c = vctx;
  int64_t G = c->K / c->gs, P = c->K * c->bits / 32;
  int wpg = c->gs * c->bits / 32;
  float q[128], acc[QMM_STREAM_MAX_M];
  for (int64_t n = n0; n < n1; n++) {
    const uint32_t *wr = c->w + n * P;
    const float *sr = c->s + n * G, *br = c->b + n * G;
    for (int64_t m = 0; m < c->M; m++) acc[m] = 0;
    for (int64_t g = 0; g < G; g++) {
      const uint32_t *wg = wr + g * wpg;
      if (c->bits == 4) {
        for (int64_t m = 0; m < c->M; m++)
          acc[m] += sr[g] * dot_q4(c->x + m * c->K + g * c->gs, wg, c->gs) +
                    br[g] * c->xsum[m * G + g];
      } else if (c->bits == 8) {
        for (int64_t m = 0; m < c->M; m++)
          acc[m] += sr[g] * dot_q8(c->x + m * c->K + g * c->gs, wg, c->gs) +
                    br[g] * c->xsum[m * G + g];
      } else {
        unpack_f(wg, c->bits, c->gs, q);
        for (int64_t m = 0; m < c->M; m++)
          acc[m] += sr[g] * dot_f(c->x + m * c->K + g * c->gs, q, c->gs) +
                    br[g] * c->xsum[m * G + g];
      }
    }
    for (int64_t m = 0; m < c->M; m++) c->out[m * c->N + n] = acc[m];
  }
}

/* 2 rows of x times 4 rows of the dequantized tile (all of length K). */
static inline void mk_2x4(const float *x0, const float *x1, const float *t, int64_t K,
                          float *o0, float *o1) {
  v8f a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
  const float *t0 = t, *t1 = t + K, *t2 = t + 2 * K, *t3 = t + 3 * K;
  for (int64_t k = 0; k < K; k += 8) {
    v8f u = ld8(x0 + k), v = ld8(x1 + k);
    v8f w0 = ld8(t0 + k), w1 = ld8(t1 + k), w2 = ld8(t2 + k), w3 = ld8(t3 + k);
    a00 += u * w0, a01 += u * w1, a02 += u * w2, a03 += u * w3;
    a10 += v * w0, a11 += v * w1, a12 += v * w2, a13 += v * w3;
  }
  o0[0] = hsum8(a00), o0[1] = hsum8(a01), o0[2] = hsum8(a02), o0[3] = hsum8(a03);
  o1[0] = hsum8(a10), o1[1] = hsum8(a11), o1[2] = hsum8(a12), o1[3] = hsum8(a13);
}

static inline float dot_plain(const float *a, const float *b, int64_t K) {
  v8f a0 = {0};
  for (int64_t k = 0; k < K; k += 8) a0 += ld8(a + k) * ld8(b + k);
  return hsum8(a0);
}

/* x @ W^T, many rows: tiles of QMM_TILE_N rows of W dequantized to float. */
static void qmm_t_tiled(void *vctx, int64_t t0, int64_t t1) {
  qmm_ctx *c = vctx;
  int64_t K = c->K, G = K / c->gs, P = K * c->bits / 32;
  int wpg = c->gs * c->bits / 32;
  float *tile = malloc(sizeof(float) * (size_t)(QMM_TILE_N * K));
  if (!tile) {
    atomic_store(&c->failed, 1);
    return;
  }
  float q[128];
  for (int64_t t = t0; t < t1; t++) {
    int64_t n0 = t * QMM_TILE_N, nn = MX_MIN(QMM_TILE_N, c->N - n0);
    for (int64_t r = 0; r < nn; r++) {
      const uint32_t *wr = c->w + (n0 + r) * P;
      for (int64_t g = 0; g < G; g++) {
        unpack_f(wr + g * wpg, c->bits, c->gs, q);
        float sc = c->s[(n0 + r) * G + g], bi = c->b[(n0 + r) * G + g];
        float *d = tile + r * K + g * c->gs;
        for (int j = 0; j < c->gs; j++) d[j] = sc * q[j] + bi;
      }
    }
    int64_t m = 0;
    for (; m + 2 <= c->M; m += 2) {
      const float *x0 = c->x + m * K, *x1 = x0 + K;
      float *o0 = c->out + m * c->N + n0, *o1 = o0 + c->N;
      int64_t r = 0;
      for (; r + 4 <= nn; r += 4) mk_2x4(x0, x1, tile + r * K, K, o0 + r, o1 + r);
      for (; r < nn; r++) {
        o0[r] = dot_plain(x0, tile + r * K, K);
        o1[r] = dot_plain(x1, tile + r * K, K);
      }
    }
    for (; m < c->M; m++)
      for (int64_t r = 0; r < nn; r++)
        c->out[m * c->N + n0 + r] = dot_plain(c->x + m * K, tile + r * K, K);
  }
  free(tile);
}

/* x @ W^T, many rows (prefill): blocks of rows of W dequantized to float32
 * (w = scale * q + bias, rounded to float, in parallel) and multiplied by
 * OpenBLAS's sgemm, which reaches the machine's GEMM speed; the dequantizing
 * costs one pass over the block per call, shared by all M rows. */
typedef struct {
  const qmm_ctx *c;
  float *d; /* (rows, K) */
  int64_t n0;
} deq_rows_ctx;

static void deq_rows(void *vctx, int64_t r0, int64_t r1) {
  const deq_rows_ctx *j = vctx;
  const qmm_ctx *c = j->c;
  int64_t K = c->K, G = K / c->gs, P = K * c->bits / 32;
  int wpg = c->gs * c->bits / 32;
  float q[128];
  for (int64_t r = r0; r < r1; r++) {
    int64_t n = j->n0 + r;
    for (int64_t g = 0; g < G; g++) {
      unpack_f(c->w + n * P + g * wpg, c->bits, c->gs, q);
      float sc = c->s[n * G + g], bi = c->b[n * G + g];
      float *d = j->d + r * K + g * c->gs;
      for (int k = 0; k < c->gs; k++) d[k] = sc * q[k] + bi;
    }
  }
}

/* The products of the two BLAS paths run as one-threaded sgemm calls on
 * fixed blocks of QMM_BLAS_COLS output columns, the blocks spread over the
 * pool: OpenBLAS's results can change with its own thread count (its
 * Haswell/Zen kernels do), and these must not depend on the thread count. */
#define QMM_BLAS_COLS 128
typedef struct {
  const qmm_ctx *c;
  const float *d;
  int64_t n0, rows, k0, kn;
  bool trans; /* qmm_t_blas: d (rows, K); else qmm_n_blas: d (kn, N) */
} sgemm_cols_ctx;

static void sgemm_cols(void *vctx, int64_t b0, int64_t b1) {
  const sgemm_cols_ctx *j = vctx;
  const qmm_ctx *c = j->c;
  for (int64_t b = b0; b < b1; b++) {
    const int64_t j0 = b * QMM_BLAS_COLS;
    if (j->trans) {
      const int cols = (int)MX_MIN(QMM_BLAS_COLS, j->rows - j0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, cols, (int)c->K, 1.0f,
                  c->x, (int)c->K, j->d + j0 * c->K, (int)c->K, 0.0f, c->out + j->n0 + j0,
                  (int)c->N);
    } else {
      const int cols = (int)MX_MIN(QMM_BLAS_COLS, c->N - j0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->M, cols, (int)j->kn, 1.0f,
                  c->x + j->k0, (int)c->K, j->d + j0, (int)c->N, j->k0 ? 1.0f : 0.0f,
                  c->out + j0, (int)c->N);
    }
  }
}

static int qmm_t_blas(qmm_ctx *c) {
  int64_t K = c->K, nb = MX_MIN(c->N, MX_MAX(16, ((int64_t)1 << 21) / K)); /* ~8 MB */
  float *d = malloc(sizeof(float) * (size_t)(nb * K));
  if (!d) return mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate scratch");
  mx__blas_set_threads(0);
  for (int64_t n0 = 0; n0 < c->N; n0 += nb) {
    int64_t rows = MX_MIN(nb, c->N - n0);
    deq_rows_ctx j = {c, d, n0};
    mx__parallel_for(rows, MX_MAX(1, 8192 / K), deq_rows, &j);
    sgemm_cols_ctx g = {c, d, n0, rows, 0, 0, true};
    mx__parallel_for((rows + QMM_BLAS_COLS - 1) / QMM_BLAS_COLS, 1, sgemm_cols, &g);
  }
  free(d);
  return MX_OK;
}

/* x @ W with W (K, N) and many rows of x (the input gradient of a
 * quantized Linear in training): blocks of rows of W dequantized to float
 * (w = scale * q + bias) and multiplied with OpenBLAS, accumulating into out
 * block by block in a fixed order. */
typedef struct {
  const qmm_ctx *c;
  float *d;
  int64_t k0;
} deq_krows_ctx;

static void deq_krows(void *vctx, int64_t r0, int64_t r1) {
  const deq_krows_ctx *j = vctx;
  const qmm_ctx *c = j->c;
  int64_t N = c->N, G = N / c->gs, P = N * c->bits / 32;
  int wpg = c->gs * c->bits / 32;
  float q[128];
  for (int64_t r = r0; r < r1; r++) {
    int64_t k = j->k0 + r;
    float *dst = j->d + r * N;
    for (int64_t g = 0; g < G; g++) {
      unpack_f(c->w + k * P + g * wpg, c->bits, c->gs, q);
      float sc = c->s[k * G + g], bi = c->b[k * G + g];
      for (int i = 0; i < c->gs; i++) dst[g * c->gs + i] = sc * q[i] + bi;
    }
  }
}

static int qmm_n_blas(qmm_ctx *c) {
  int64_t N = c->N, kb = MX_MIN(c->K, MX_MAX(16, ((int64_t)1 << 21) / MX_MAX(1, N))); /* ~8 MB */
  float *d = malloc(sizeof(float) * (size_t)(kb * N));
  if (!d) return mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate scratch");
  mx__blas_set_threads(0);
  for (int64_t k0 = 0; k0 < c->K; k0 += kb) {
    int64_t rows = MX_MIN(kb, c->K - k0);
    deq_krows_ctx j = {c, d, k0};
    mx__parallel_for(rows, MX_MAX(1, 8192 / MX_MAX(1, N)), deq_krows, &j);
    sgemm_cols_ctx g = {c, d, 0, 0, k0, rows, false};
    mx__parallel_for((N + QMM_BLAS_COLS - 1) / QMM_BLAS_COLS, 1, sgemm_cols, &g);
  }
  free(d);
  return MX_OK;
}

/* x @ W with W (K, N) stored row by row, groups along N: one group of
 * columns per step; every packed row unpacked once, applied to all rows. */
static void qmm_n(void *vctx, int64_t cg0, int64_t cg1) {
  qmm_ctx *c = vctx;
  int64_t K = c->K, N = c->N, G = N / c->gs, P = N * c->bits / 32;
  int gs = c->gs, wpg = gs * c->bits / 32;
  float *acc = malloc(sizeof(float) * (size_t)(c->M * (gs + 1)));
  if (!acc) {
    atomic_store(&c->failed, 1);
    return;
  }
  float *xb = acc + c->M * gs, q[128];
  for (int64_t cg = cg0; cg < cg1; cg++) {
    memset(acc, 0, sizeof(float) * (size_t)(c->M * (gs + 1)));
    for (int64_t k = 0; k < K; k++) {
      unpack_f(c->w + k * P + cg * wpg, c->bits, gs, q);
      float sc = c->s[k * G + cg], bi = c->b[k * G + cg];
      for (int64_t m = 0; m < c->M; m++) {
        float xv = c->x[m * K + k];
        v8f xs = (v8f){0} + xv * sc;
        float *a = acc + m * gs;
        for (int j = 0; j < gs; j += 8) st8(a + j, ld8(a + j) + xs * ld8(q + j));
        xb[m] += xv * bi;
      }
    }
    for (int64_t m = 0; m < c->M; m++)
      for (int j = 0; j < gs; j++) c->out[m * N + cg * gs + j] = acc[m * gs + j] + xb[m];
  }
  free(acc);
}

/* float64: plain loops (out = sum_k x * (s*q + b)), split over columns. */
typedef struct {
  const double *x, *s, *b;
  const uint32_t *w;
  double *out;
  int64_t M, N, K;
  int gs, bits;
  bool transpose;
} qmm64_ctx;

static void qmm64_chunk(void *vctx, int64_t n0, int64_t n1) {
  const qmm64_ctx *c = vctx;
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < c->M; m++) {
      double acc = 0;
      for (int64_t k = 0; k < c->K; k++) {
        double wv;
        if (c->transpose) {
          int64_t G = c->K / c->gs, P = c->K * c->bits / 32;
          wv = c->s[n * G + k / c->gs] * unpack_one(c->w + n * P, c->bits, k) +
               c->b[n * G + k / c->gs];
        } else {
          int64_t G = c->N / c->gs, P = c->N * c->bits / 32;
          wv = c->s[k * G + n / c->gs] * unpack_one(c->w + k * P, c->bits, n) +
               c->b[k * G + n / c->gs];
        }
        acc += c->x[m * c->K + k] * wv;
      }
      c->out[m * c->N + n] = acc;
    }
}

/* ---- decode GEMV, 4- and 8-bit (x86: AVX-512 / AVX2, chosen at run time) ----------------
 *
 * x @ W^T with M < QMM_STREAM_MAX_M rows, K a multiple of 32: each thread takes
 * blocks of four packed rows of W and streams them once, per row
 *   out = sum_g scale_g * (x_g . q_g) + sum_g bias_g * sum(x_g)
 * with x_g . q_g accumulated in vector lanes (one FMA per weight, nibbles
 * unpacked with a zero-extend, AND and shift) and multiplied by the group's
 * scale in the lanes; one horizontal sum per row. For 4 bits, x is first
 * reordered per block of 32 as (even, odd) values so that the low and high
 * nibbles of 16 consecutive bytes meet 16 consecutive floats. Scales and
 * biases are read in their own dtype (no float copy of them per call). Each
 * row is summed in a fixed order: results do not depend on the thread count. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_QGEMV_X86 1
#include <immintrin.h>

enum { QG_ROWS = 4 };

/* pf: where to prefetch (the row block two blocks ahead: the rows of a block
 * are too short for the hardware prefetcher to follow them as streams) */
typedef void (*qgemv_rows_fn)(const float *x, const uint8_t *const *wr, const float *const *sr,
                              int64_t G, int gs, const uint8_t *pf, float *res);

#define QG_TARGET_512 __attribute__((target("avx512f,avx2,fma"), noinline))
#define QG_TARGET_256 __attribute__((target("avx2,fma"), noinline))

/* 4-bit, AVX-512, K a multiple of 128: 16 packed words (128 values) per
 * load; lane l of word-vector v holds values 8l..8l+7, and (v >> 4i) looked
 * up in a 16-entry float table (vpermps reads the index's low 4 bits) gives
 * value 8l+i in lane l, met by x reordered per 128 as x'[16i + l] = x[8l + i].
 * The per-lane scale vector spreads the block's 1, 2 or 4 group scales. */
QG_TARGET_512 static void q4_rows_512(const float *x, const uint8_t *const *wr,
                                      const float *const *sr, int64_t G, int gs,
                                      const uint8_t *pf, float *res) {
  const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int sh = gs == 32 ? 2 : gs == 64 ? 3 : 4; /* lane -> group in block: l >> sh */
  const __m512i gidx = _mm512_srli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), (unsigned)sh);
  const __mmask16 gmask = (__mmask16)((1u << (128 / gs)) - 1u);
  const uint8_t *w0 = wr[0], *w1 = wr[1], *w2 = wr[2], *w3 = wr[3];
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  int64_t K = G * gs;
  for (int64_t k = 0; k < K; k += 128) {
    const float *xb = x + k;
    int64_t o = k / 2, g0 = k / gs;
    _mm_prefetch((const char *)(pf + 4 * o), _MM_HINT_T0); /* 256 bytes read per step */
    _mm_prefetch((const char *)(pf + 4 * o + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(pf + 4 * o + 128), _MM_HINT_T0);
    _mm_prefetch((const char *)(pf + 4 * o + 192), _MM_HINT_T0);
    __m512i v0 = _mm512_loadu_si512(w0 + o), v1 = _mm512_loadu_si512(w1 + o);
    __m512i v2 = _mm512_loadu_si512(w2 + o), v3 = _mm512_loadu_si512(w3 + o);
    __m512 x0 = _mm512_loadu_ps(xb);
    __m512 a0 = _mm512_mul_ps(_mm512_permutexvar_ps(v0, tbl), x0);
    __m512 a1 = _mm512_mul_ps(_mm512_permutexvar_ps(v1, tbl), x0);
    __m512 a2 = _mm512_mul_ps(_mm512_permutexvar_ps(v2, tbl), x0);
    __m512 a3 = _mm512_mul_ps(_mm512_permutexvar_ps(v3, tbl), x0);
    __m512 x1 = _mm512_loadu_ps(xb + 16);
    __m512 b0 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), tbl), x1);
    __m512 b1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), tbl), x1);
    __m512 b2 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v2, 4), tbl), x1);
    __m512 b3 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v3, 4), tbl), x1);
#define QG4(I, A0, A1, A2, A3)                                                              \
  {                                                                                         \
    __m512 xi = _mm512_loadu_ps(xb + 16 * I);                                               \
    A0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4 * I), tbl), xi, A0); \
    A1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4 * I), tbl), xi, A1); \
    A2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v2, 4 * I), tbl), xi, A2); \
    A3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v3, 4 * I), tbl), xi, A3); \
  }
    QG4(2, a0, a1, a2, a3)
    QG4(3, b0, b1, b2, b3)
    QG4(4, a0, a1, a2, a3)
    QG4(5, b0, b1, b2, b3)
    QG4(6, a0, a1, a2, a3)
    QG4(7, b0, b1, b2, b3)
#undef QG4
#define QGS(R, A, B, C)                                                                     \
  C = _mm512_fmadd_ps(_mm512_add_ps(A, B),                                                  \
                      _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, sr[R] + g0)), C);
    QGS(0, a0, b0, c0)
    QGS(1, a1, b1, c1)
    QGS(2, a2, b2, c2)
    QGS(3, a3, b3, c3)
#undef QGS
  }
  res[0] = _mm512_reduce_add_ps(c0);
  res[1] = _mm512_reduce_add_ps(c1);
  res[2] = _mm512_reduce_add_ps(c2);
  res[3] = _mm512_reduce_add_ps(c3);
}

/* 4-bit, AVX-512, several rows of x (prefill): each 128-value block of two
 * rows of W is unpacked once (as in q4_rows_512) and multiplied with up to
 * four rows of x, so the unpacking is shared and the FMA units stay busy.
 * res[j][r]: x row j . W row r, before the bias term. */
QG_TARGET_512 static void q4_mr_512(const float *x, int64_t K, int mb, const uint8_t *w0,
                                    const uint8_t *w1, const float *s0, const float *s1,
                                    int gs, float res[4][2]) {
  const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int sh = gs == 32 ? 2 : gs == 64 ? 3 : 4;
  const __m512i gidx = _mm512_srli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), (unsigned)sh);
  const __mmask16 gmask = (__mmask16)((1u << (128 / gs)) - 1u);
  const float *x0 = x, *x1 = x + (mb > 1 ? K : 0), *x2 = x + (mb > 2 ? 2 * K : 0),
              *x3 = x + (mb > 3 ? 3 * K : 0); /* missing rows repeat the first */
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00;
  for (int64_t k = 0; k < K; k += 128) {
    __m512i v0 = _mm512_loadu_si512(w0 + k / 2), v1 = _mm512_loadu_si512(w1 + k / 2);
    __m512 t0 = _mm512_permutexvar_ps(v0, tbl), t1 = _mm512_permutexvar_ps(v1, tbl);
    __m512 xi = _mm512_loadu_ps(x0 + k);
    __m512 a00 = _mm512_mul_ps(t0, xi), a01 = _mm512_mul_ps(t1, xi);
    xi = _mm512_loadu_ps(x1 + k);
    __m512 a10 = _mm512_mul_ps(t0, xi), a11 = _mm512_mul_ps(t1, xi);
    xi = _mm512_loadu_ps(x2 + k);
    __m512 a20 = _mm512_mul_ps(t0, xi), a21 = _mm512_mul_ps(t1, xi);
    xi = _mm512_loadu_ps(x3 + k);
    __m512 a30 = _mm512_mul_ps(t0, xi), a31 = _mm512_mul_ps(t1, xi);
#define QMR(I)                                                                   \
  {                                                                              \
    t0 = _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4 * I), tbl);               \
    t1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4 * I), tbl);               \
    xi = _mm512_loadu_ps(x0 + k + 16 * I);                                       \
    a00 = _mm512_fmadd_ps(t0, xi, a00), a01 = _mm512_fmadd_ps(t1, xi, a01);      \
    xi = _mm512_loadu_ps(x1 + k + 16 * I);                                       \
    a10 = _mm512_fmadd_ps(t0, xi, a10), a11 = _mm512_fmadd_ps(t1, xi, a11);      \
    xi = _mm512_loadu_ps(x2 + k + 16 * I);                                       \
    a20 = _mm512_fmadd_ps(t0, xi, a20), a21 = _mm512_fmadd_ps(t1, xi, a21);      \
    xi = _mm512_loadu_ps(x3 + k + 16 * I);                                       \
    a30 = _mm512_fmadd_ps(t0, xi, a30), a31 = _mm512_fmadd_ps(t1, xi, a31);      \
  }
    QMR(1) QMR(2) QMR(3) QMR(4) QMR(5) QMR(6) QMR(7)
#undef QMR
    __m512 sv0 = _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, s0 + k / gs));
    __m512 sv1 = _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, s1 + k / gs));
    c00 = _mm512_fmadd_ps(a00, sv0, c00), c01 = _mm512_fmadd_ps(a01, sv1, c01);
    c10 = _mm512_fmadd_ps(a10, sv0, c10), c11 = _mm512_fmadd_ps(a11, sv1, c11);
    c20 = _mm512_fmadd_ps(a20, sv0, c20), c21 = _mm512_fmadd_ps(a21, sv1, c21);
    c30 = _mm512_fmadd_ps(a30, sv0, c30), c31 = _mm512_fmadd_ps(a31, sv1, c31);
  }
  res[0][0] = _mm512_reduce_add_ps(c00), res[0][1] = _mm512_reduce_add_ps(c01);
  res[1][0] = _mm512_reduce_add_ps(c10), res[1][1] = _mm512_reduce_add_ps(c11);
  res[2][0] = _mm512_reduce_add_ps(c20), res[2][1] = _mm512_reduce_add_ps(c21);
  res[3][0] = _mm512_reduce_add_ps(c30), res[3][1] = _mm512_reduce_add_ps(c31);
}

QG_TARGET_512 static void q8_rows_512(const float *x, const uint8_t *const *wr,
                                      const float *const *sr, int64_t G, int gs,
                                      const uint8_t *pf, float *res) {
  const uint8_t *w0 = wr[0], *w1 = wr[1], *w2 = wr[2], *w3 = wr[3];
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  for (int64_t g = 0; g < G; g++) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 32) {
      __m512 xa = _mm512_loadu_ps(x + k), xb = _mm512_loadu_ps(x + k + 16);
      _mm_prefetch((const char *)(pf + 4 * k), _MM_HINT_T0); /* 128 bytes read per step */
      _mm_prefetch((const char *)(pf + 4 * k + 64), _MM_HINT_T0);
#define QG8(A, B, W)                                                                          \
  A = _mm512_fmadd_ps(                                                                        \
      _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(W + k)))), xa, \
      A);                                                                                     \
  B = _mm512_fmadd_ps(                                                                        \
      _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(W + k + 16)))), \
      xb, B);
      QG8(a0, b0, w0)
      QG8(a1, b1, w1)
      QG8(a2, b2, w2)
      QG8(a3, b3, w3)
#undef QG8
    }
    c0 = _mm512_fmadd_ps(_mm512_add_ps(a0, b0), _mm512_set1_ps(sr[0][g]), c0);
    c1 = _mm512_fmadd_ps(_mm512_add_ps(a1, b1), _mm512_set1_ps(sr[1][g]), c1);
    c2 = _mm512_fmadd_ps(_mm512_add_ps(a2, b2), _mm512_set1_ps(sr[2][g]), c2);
    c3 = _mm512_fmadd_ps(_mm512_add_ps(a3, b3), _mm512_set1_ps(sr[3][g]), c3);
  }
  res[0] = _mm512_reduce_add_ps(c0);
  res[1] = _mm512_reduce_add_ps(c1);
  res[2] = _mm512_reduce_add_ps(c2);
  res[3] = _mm512_reduce_add_ps(c3);
}

QG_TARGET_256 static float qg_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* one row at a time (two rows' worth of accumulators would spill on 16 ymm) */
QG_TARGET_256 static void q4_rows_256(const float *x, const uint8_t *const *wr,
                                      const float *const *sr, int64_t G, int gs,
                                      const uint8_t *pf, float *res) {
  const __m256i m15 = _mm256_set1_epi32(15);
  (void)pf;
  for (int r = 0; r < QG_ROWS; r++) {
    const uint8_t *w = wr[r];
    __m256 c = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
      for (int64_t k = g * gs; k < (g + 1) * gs; k += 32) {
        const uint8_t *p = w + k / 2;
        __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
        __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, m15)),
                             _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, m15)),
                             _mm256_loadu_ps(x + k + 8), a1);
        b0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)),
                             _mm256_loadu_ps(x + k + 16), b0);
        b1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)),
                             _mm256_loadu_ps(x + k + 24), b1);
      }
      c = _mm256_fmadd_ps(_mm256_add_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1)),
                          _mm256_set1_ps(sr[r][g]), c);
    }
    res[r] = qg_hsum256(c);
  }
}

QG_TARGET_256 static void q8_rows_256(const float *x, const uint8_t *const *wr,
                                      const float *const *sr, int64_t G, int gs,
                                      const uint8_t *pf, float *res) {
  (void)pf;
  for (int r = 0; r < QG_ROWS; r++) {
    const uint8_t *w = wr[r];
    __m256 c = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = g * gs; k < (g + 1) * gs; k += 32) {
#define QG8(A, O)                                                                             \
  A = _mm256_fmadd_ps(                                                                        \
      _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w + k + O)))), \
      _mm256_loadu_ps(x + k + O), A);
        QG8(a0, 0)
        QG8(a1, 8)
        QG8(a2, 16)
        QG8(a3, 24)
#undef QG8
      }
      c = _mm256_fmadd_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                          _mm256_set1_ps(sr[r][g]), c);
    }
    res[r] = qg_hsum256(c);
  }
}

/* ---- opt-in int8 activations for 4-bit decode (MXC_QMM_INT8=1) -----------------------
 * As llama.cpp does for Q4_0: each group of x is quantized to int8 with its
 * own step dx_g = max|x_g| / 127, and x_g . q_g becomes an integer dot
 * product (vpdpbusd: unsigned 4-bit weights times signed int8 activations,
 * four products per 32-bit lane), scaled by scale_g * dx_g in float. The
 * bias term keeps the exact float sums of x. The values are centred as
 * llama.cpp's Q4_0 (q - 8): s * dx * sum((q - 8) xq) + (b + 8 s) * sum(x)
 * = s * dx * sum(q xq) + b * sum(x) + 8 s * E with E = sum(x - dx xq) per
 * group, so the rounding error is weighted by q - 8 rather than q (about
 * 2.5x smaller). Per 128 weights: one load, two
 * masks, two vpdpbusd, one convert and one FMA — several times less work
 * than the float path, so decode is bound by memory, not arithmetic. It
 * changes the results by the activation rounding (about 1/254 of each
 * group's largest |x|), so it is never on by default.
 *
 * x row layout (in the row's K floats of scratch): K int8 bytes, per block
 * of 128 values 64 "even" bytes xe[4l + j] = xq[8l + 2j] then 64 "odd"
 * bytes xo[4l + j] = xq[8l + 2j + 1] (meeting the low and high nibbles of
 * byte 4l + j of the packed words), then G floats dx_g at byte offset K,
 * then G floats E_g. */
#define QG_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma"), noinline))

QG_TARGET_VNNI static void q4_rows_vnni(const float *x, const uint8_t *const *wr,
                                        const float *const *sr, int64_t G, int gs,
                                        const uint8_t *pf, float *res) {
  const int8_t *xq = (const int8_t *)x;
  int64_t K = G * gs;
  const float *dx = (const float *)((const char *)x + K), *E = dx + G;
  const int sh = gs == 32 ? 2 : gs == 64 ? 3 : 4;
  const __m512i gidx = _mm512_srli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), (unsigned)sh);
  const __mmask16 gmask = (__mmask16)((1u << (128 / gs)) - 1u);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const uint8_t *w0 = wr[0], *w1 = wr[1], *w2 = wr[2], *w3 = wr[3];
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  for (int64_t k = 0; k < K; k += 128) {
    int64_t o = k / 2, g0 = k / gs;
    _mm_prefetch((const char *)(pf + 4 * o), _MM_HINT_T0);
    _mm_prefetch((const char *)(pf + 4 * o + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(pf + 4 * o + 128), _MM_HINT_T0);
    _mm_prefetch((const char *)(pf + 4 * o + 192), _MM_HINT_T0);
    __m512i xe = _mm512_loadu_si512(xq + k), xo = _mm512_loadu_si512(xq + k + 64);
    __m512 d = _mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, dx + g0));
#define QV(W, R, C)                                                                            {                                                                                              __m512i v = _mm512_loadu_si512(W + o);                                                       __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, m4), xe);        a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4), xo);               __m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(gidx, _mm512_maskz_loadu_ps(gmask, sr[R] + g0)), d);     C = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), s, C);                                          }
    QV(w0, 0, c0)
    QV(w1, 1, c1)
    QV(w2, 2, c2)
    QV(w3, 3, c3)
#undef QV
  }
  float corr[4];
  for (int r = 0; r < 4; r++) {
    float a = 0;
    for (int64_t g = 0; g < G; g++) a += sr[r][g] * E[g];
    corr[r] = 8.0f * a;
  }
  res[0] = _mm512_reduce_add_ps(c0) + corr[0];
  res[1] = _mm512_reduce_add_ps(c1) + corr[1];
  res[2] = _mm512_reduce_add_ps(c2) + corr[2];
  res[3] = _mm512_reduce_add_ps(c3) + corr[3];
}

/* ---- 4-bit decode with bf16 activations on the bf16 dot-product instruction ----------
 * When x is bfloat16 (a bf16 model's activations) and so are the scales and
 * biases, each packed nibble q is turned into the bf16 number 128 + q,
 * whose bit pattern is 0x4300 | q (at 128 a bf16 step is 1): vpmultishiftqb
 * moves nibbles into the low byte of 16-bit words and one vpternlogd keeps
 * the nibble and sets the 0x43 exponent byte. vdpbf16ps then multiplies
 * pairs of those with pairs of x exactly (bf16 x bf16 fits float32) and
 * adds in float32, so per 32 weights it costs one shuffle, one logic op and
 * one dot product, where the float path spends a shift, a shuffle and a
 * multiply-add per 16. The offset comes out with the bias term:
 * s (D - 128 Sx) + b Sx = s D + (b - 128 s) Sx per group (D the dot with
 * 128 + q, Sx the group's sum of x). The results equal the float path's up
 * to float32 rounding. Scales and biases are read in place as bf16 (a
 * masked vpermw puts each group's scale in the high half of its lanes: that
 * is its float32 value), and the bias term is summed in the same call, so
 * nothing per row is left to scalar code.
 *
 * A 64-byte load holds 128 values; qword Q holds values 16Q..16Q+15 (value
 * 16Q + i at bit 4i). Pass k (0..3) takes values 16Q + 4k .. 16Q + 4k + 3
 * into qword Q's four 16-bit words, i.e. the pairs (16Q + 4k + 2h,
 * 16Q + 4k + 2h + 1) into 32-bit lane 2Q + h. x is laid out to meet them:
 * per block of 128 values, four vectors of 16 bf16 pairs, vector k lane L
 * holding pair 8 (L >> 1) + 2k + (L & 1) of the block. Lane L covers values
 * 16 (L >> 1) .. of the block, so its group is L >> log2(gs / 8), as in
 * q4_rows_512. */
#define QG_TARGET_BF16                                                                    \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,avx2,fma")))

/* nr = 4 rows (missing ones repeat the first); x: qg_x_bf16's layout; xs:
 * the G group sums of x; s, b: each row's G bf16 scales and biases. l1:
 * prefetch the weights into L1 (short rows) rather than L2 (rows of 4096
 * values and more: x's layout then takes half of L1, and weights fetched
 * two blocks ahead into L1 evicted it — long rows streamed at ~23 GB/s from
 * memory against ~31 with L2 prefetches on the dev VM). */
QG_TARGET_BF16 __attribute__((always_inline)) static inline void q4_rows_bf16_body(
    const uint32_t *x, const float *xs, const uint8_t *const *wr, const uint16_t *const *sr,
    const uint16_t *const *br, int64_t G, int gs, const uint8_t *pf, float *res, const bool l1) {
  int64_t K = G * gs;
  const int sh = gs == 32 ? 2 : gs == 64 ? 3 : 4;
  /* word 2L + 1 <- the scale of lane L's group (even words: unused) */
  const __m512i widx = _mm512_slli_epi32(
      _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                        (unsigned)sh),
      16);
  const __mmask32 odd = 0xAAAAAAAAu;
  const __mmask32 gmask = (__mmask32)((1u << (128 / gs)) - 1u);
  /* byte 2m of each qword: bit offset 16k + 4m; odd bytes are masked off */
  const __m512i ctl0 = _mm512_set1_epi64(0x000C000800040000LL);
  const __m512i ctl1 = _mm512_set1_epi64(0x001C001800140010LL);
  const __m512i ctl2 = _mm512_set1_epi64(0x002C002800240020LL);
  const __m512i ctl3 = _mm512_set1_epi64(0x003C003800340030LL);
  const __m512i nib = _mm512_set1_epi32(0x000F000F), expo = _mm512_set1_epi32(0x43004300);
  const uint8_t *w0 = wr[0], *w1 = wr[1], *w2 = wr[2], *w3 = wr[3];
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  for (int64_t k = 0; k < K; k += 128) {
    int64_t o = k / 2, g0 = k / gs;
    for (int line = 0; line < 256; line += 64) {
      if (l1) _mm_prefetch((const char *)(pf + 4 * o + line), _MM_HINT_T0);
      else _mm_prefetch((const char *)(pf + 4 * o + line), _MM_HINT_T1);
    }
    const uint32_t *xb = x + o; /* 64 pairs per block */
    __m512bh x0 = (__m512bh)_mm512_loadu_si512(xb), x1 = (__m512bh)_mm512_loadu_si512(xb + 16);
    __m512bh x2 = (__m512bh)_mm512_loadu_si512(xb + 32);
    __m512bh x3 = (__m512bh)_mm512_loadu_si512(xb + 48);
#define QB16_W(V, CTL) \
  (__m512bh) _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(CTL, V), nib, expo, 0xEA)
#define QB16(W, R, C)                                                                      \
  {                                                                                        \
    __m512i v = _mm512_loadu_si512(W + o);                                                 \
    __m512 t0 = _mm512_dpbf16_ps(_mm512_setzero_ps(), QB16_W(v, ctl0), x0);                \
    __m512 t1 = _mm512_dpbf16_ps(_mm512_setzero_ps(), QB16_W(v, ctl1), x1);                \
    t0 = _mm512_dpbf16_ps(t0, QB16_W(v, ctl2), x2);                                        \
    t1 = _mm512_dpbf16_ps(t1, QB16_W(v, ctl3), x3);                                        \
    __m512i sw = _mm512_maskz_loadu_epi16(gmask, sr[R] + g0);                              \
    C = _mm512_fmadd_ps(_mm512_add_ps(t0, t1),                                             \
                        _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(odd, widx, sw)), \
                        C);                                                                \
  }
    QB16(w0, 0, c0)
    QB16(w1, 1, c1)
    QB16(w2, 2, c2)
    QB16(w3, 3, c3)
#undef QB16
#undef QB16_W
  }
  /* the bias term, sum_g (b_g - 128 s_g) Sx_g, 16 groups at a time */
  for (int r = 0; r < 4; r++) {
    __m512 cb = _mm512_setzero_ps(), cs = cb;
    for (int64_t g = 0; g < G; g += 16) {
      __mmask16 m = (__mmask16)(G - g >= 16 ? 0xFFFFu : (1u << (G - g)) - 1u);
      __m512 xv = _mm512_maskz_loadu_ps(m, xs + g);
      __m512i bw = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, br[r] + g));
      __m512i sw = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, sr[r] + g));
      cb = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(bw, 16)), xv, cb);
      cs = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(sw, 16)), xv, cs);
    }
    __m512 c = r == 0 ? c0 : r == 1 ? c1 : r == 2 ? c2 : c3;
    res[r] = _mm512_reduce_add_ps(_mm512_fmadd_ps(cs, _mm512_set1_ps(-128.0f), _mm512_add_ps(c, cb)));
  }
}

QG_TARGET_BF16 __attribute__((noinline)) static void q4_rows_bf16(
    const uint32_t *x, const float *xs, const uint8_t *const *wr, const uint16_t *const *sr,
    const uint16_t *const *br, int64_t G, int gs, const uint8_t *pf, float *res) {
  if (G * gs < 4096) q4_rows_bf16_body(x, xs, wr, sr, br, G, gs, pf, res, true);
  else q4_rows_bf16_body(x, xs, wr, sr, br, G, gs, pf, res, false);
}

typedef struct {
  const uint32_t *x; /* qg_x_bf16's layout */
  const float *xs;   /* (G) */
  const uint8_t *w;  /* (N, K / 2) */
  const uint16_t *s, *b; /* (N, G) bf16 */
  float *out;        /* (N) */
  int64_t N, K;
  int gs;
} qgemv_bf16_ctx;

/* row blocks [r0, r1) of QG_ROWS rows */
static void qgemv_bf16_chunk(void *vctx, int64_t r0, int64_t r1) {
  const qgemv_bf16_ctx *c = vctx;
  int64_t G = c->K / c->gs, rb = c->K / 2;
  for (int64_t blk = r0; blk < r1; blk++) {
    int64_t n0 = blk * QG_ROWS;
    int nr = (int)MX_MIN(QG_ROWS, c->N - n0);
    int64_t nx = MX_MIN(n0 + 2 * QG_ROWS, c->N - 1); /* the block after next */
    const uint8_t *pf = c->w + nx * rb;
    for (int64_t o = 0; o < QG_ROWS * G * 2; o += 64) { /* its scales and biases too */
      __builtin_prefetch((const char *)(c->s + nx * G) + o);
      __builtin_prefetch((const char *)(c->b + nx * G) + o);
    }
    const uint8_t *wr[QG_ROWS];
    const uint16_t *sr[QG_ROWS], *br[QG_ROWS];
    for (int r = 0; r < QG_ROWS; r++) {
      int64_t n = n0 + (r < nr ? r : 0); /* missing rows repeat the first */
      wr[r] = c->w + n * rb;
      sr[r] = c->s + n * G;
      br[r] = c->b + n * G;
    }
    if (nr == QG_ROWS) { /* straight into the output */
      q4_rows_bf16(c->x, c->xs, wr, sr, br, G, c->gs, pf, c->out + n0);
      continue;
    }
    float res[QG_ROWS];
    q4_rows_bf16(c->x, c->xs, wr, sr, br, G, c->gs, pf, res);
    for (int r = 0; r < nr; r++) c->out[n0 + r] = res[r];
  }
}

/* Whether the CPU has what q4_rows_bf16 needs (and MXC_BF16_DOT is not 0). */
static bool qgemv_bf16(void) {
  static int ok = -1;
  int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    v = mx__cpu_has_bf16_dot() && __builtin_cpu_supports("avx512vbmi");
    __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
  }
  return v == 1;
}

/* q4_rows_bf16's x layout (K / 2 32-bit words) from a float row xm whose
 * values are bfloat16 numbers (the low 16 bits are zero: exact). */
static void qg_x_bf16(const float *xm, int64_t K, uint32_t *d) {
  for (int64_t k0 = 0; k0 < K; k0 += 128) {
    const float *xb = xm + k0;
    uint32_t *db = d + k0 / 2;
    for (int k = 0; k < 4; k++)
      for (int L = 0; L < 16; L++) {
        int64_t pr = 8 * (L >> 1) + 2 * k + (L & 1);
        uint32_t a, b;
        memcpy(&a, xb + 2 * pr, 4);
        memcpy(&b, xb + 2 * pr + 1, 4);
        db[16 * k + L] = (a >> 16) | (b & 0xFFFF0000u);
      }
  }
}

/* Whether MXC_QMM_INT8=1 asks for int8 activations and the CPU can. */
static bool qgemv_int8(void) {
  const char *e = getenv("MXC_QMM_INT8");
  if (!e || strcmp(e, "1")) return false;
  static int ok = -1;
  int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni");
    __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
  }
  return v == 1;
}

/* The int8 row layout above from a float row xm. */
static void qg_x_int8(const float *xm, int64_t K, int gs, float *row) {
  int8_t *q = (int8_t *)row;
  float *dx = (float *)((char *)row + K), *E = dx + K / gs;
  int8_t tmp[128];
  for (int64_t k0 = 0; k0 < K; k0 += 128) {
    for (int64_t g = k0; g < k0 + 128; g += gs) {
      float amax = 0;
      for (int j = 0; j < gs; j++) amax = fmaxf(amax, fabsf(xm[g + j]));
      float d = amax > 0 ? amax / 127.0f : 1.0f, inv = 1.0f / d;
      dx[g / gs] = d;
      float err = 0;
      for (int j = 0; j < gs; j++) {
        float r = nearbyintf(xm[g + j] * inv);
        r = r > 127 ? 127 : r < -127 ? -127 : r;
        tmp[g - k0 + j] = (int8_t)r;
        err += xm[g + j] - d * r;
      }
      E[g / gs] = err;
    }
    for (int l = 0; l < 16; l++)
      for (int j = 0; j < 4; j++) {
        q[k0 + 4 * l + j] = tmp[8 * l + 2 * j];
        q[k0 + 64 + 4 * l + j] = tmp[8 * l + 2 * j + 1];
      }
  }
}

/* 0: none, 1: AVX2+FMA, 2: AVX-512F */
static int qgemv_level(void) {
  static int level = -1;
  int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
  if (l < 0) {
    __builtin_cpu_init();
    l = __builtin_cpu_supports("avx512f") ? 2
        : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1
                                                                             : 0;
    const char *e = getenv("MXC_QGEMV");
    if (e && *e >= '0' && *e <= '2' && *e - '0' < l) l = *e - '0'; /* cap, for tests/bench */
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
  }
  return l;
}

typedef struct {
  const float *x;    /* (M, K), 4-bit: reordered per 32 as (even, odd) */
  const float *xsum; /* (M, G) */
  const uint8_t *w;  /* (N, K * bits / 8) */
  const void *s, *b; /* (N, G) of sdt */
  mx_dtype sdt;
  float *out; /* (M, N) */
  int64_t M, N, K;
  int gs, bits;
  qgemv_rows_fn rows;
  bool multirow; /* M > 1 through q4_mr_512 */
  atomic_int failed;
} qgemv_ctx;

/* n floats from p (f32/bf16/f16) at element off */
static void qg_params(const void *p, mx_dtype dt, int64_t off, int64_t n, float *d) {
  if (dt == MX_BFLOAT16) { /* a shift: vectorises */
    const uint16_t *h = (const uint16_t *)p + off;
    for (int64_t i = 0; i < n; i++) {
      uint32_t u = (uint32_t)h[i] << 16;
      memcpy(d + i, &u, sizeof u);
    }
  } else if (dt == MX_FLOAT16)
    for (int64_t i = 0; i < n; i++) d[i] = mx__f16_to_f32(((const uint16_t *)p)[off + i]);
  else memcpy(d, (const float *)p + off, sizeof(float) * (size_t)n);
}

/* row blocks [r0, r1) of QG_ROWS rows */
static void qgemv_chunk(void *vctx, int64_t r0, int64_t r1) {
  qgemv_ctx *c = vctx;
  int64_t G = c->K / c->gs, rb = c->K * c->bits / 8; /* bytes per packed row */
  float *sc = malloc(sizeof(float) * (size_t)(2 * QG_ROWS * G + 16));
  if (!sc) {
    atomic_store(&c->failed, 1);
    return;
  }
  float *bc = sc + QG_ROWS * G + 16; /* the scale loads may read 16 floats past a row */
  /* several rows of x: blocks of them small enough to stay in L2 while the
   * task's rows of W stream past (W is re-read per block, from cache) */
  int64_t mblk = c->multirow ? MX_MAX(4, ((int64_t)65536 / c->K) / 4 * 4) : c->M;
  for (int64_t m0 = 0; m0 < c->M; m0 += mblk)
  for (int64_t blk = r0; blk < r1; blk++) {
    int64_t n0 = blk * QG_ROWS;
    int nr = (int)MX_MIN(QG_ROWS, c->N - n0);
    const uint8_t *wr[QG_ROWS];
    const uint8_t *pf = c->w + MX_MIN(n0 + 2 * QG_ROWS, c->N - 1) * rb;
    { /* the scales and biases of that block too (short runs, not streamed) */
      int64_t es = (int64_t)mx_dtype_size(c->sdt), nb = QG_ROWS * G * es;
      int64_t at = MX_MIN(n0 + 2 * QG_ROWS, c->N - 1) * G * es;
      for (int64_t o = 0; o < nb; o += 64) {
        __builtin_prefetch((const char *)c->s + at + o);
        __builtin_prefetch((const char *)c->b + at + o);
      }
    }
    const float *sr[QG_ROWS];
    for (int r = 0; r < QG_ROWS; r++) {
      int64_t n = n0 + (r < nr ? r : 0); /* missing rows repeat the first */
      wr[r] = c->w + n * rb;
      sr[r] = sc + r * G;
      if (r < nr) {
        qg_params(c->s, c->sdt, n * G, G, sc + r * G);
        qg_params(c->b, c->sdt, n * G, G, bc + r * G);
      } else memcpy(sc + r * G, sc, sizeof(float) * (size_t)G);
    }
    for (int64_t m = m0; m < MX_MIN(c->M, m0 + mblk); m += c->multirow ? 4 : 1) {
      float res[4][QG_ROWS];
      int mb = 1;
      if (c->multirow) {
        mb = (int)MX_MIN(4, MX_MIN(c->M, m0 + mblk) - m);
        float rr[4][2];
        for (int r = 0; r < QG_ROWS; r += 2) {
          q4_mr_512(c->x + m * c->K, c->K, mb, wr[r], wr[r + 1], sr[r], sr[r + 1], c->gs, rr);
          for (int j = 0; j < 4; j++) res[j][r] = rr[j][0], res[j][r + 1] = rr[j][1];
        }
      } else c->rows(c->x + m * c->K, wr, sr, G, c->gs, pf, res[0]);
      for (int j = 0; j < mb; j++) {
        const float *xs = c->xsum + (m + j) * G;
        for (int r = 0; r < nr; r++) {
          const float *br = bc + r * G;
          v8f a = {0};
          int64_t g = 0;
          for (; g + 8 <= G; g += 8) a += ld8(br + g) * ld8(xs + g);
          float bs = hsum8(a);
          for (; g < G; g++) bs += br[g] * xs[g];
          c->out[(m + j) * c->N + n0 + r] = res[j][r] + bs;
        }
      }
    }
  }
  free(sc);
}

/* out (float32, M x N) = x @ W^T on the fast path; 1: not applicable. */
static int qgemv_x86(const float *x, bool xbf16, mx_array *wq, mx_array *s, mx_array *b,
                     float *out, int64_t M, int64_t N, int64_t K, int gs, int bits) {
  int level = qgemv_level();
  if (level == 2 && bits == 4 && K % 128) level = 1;
  /* from QMM_MR_MAX_M rows on, dequantizing blocks for sgemm is faster */
  bool multirow = M > 1 && M < QMM_MR_MAX_M && level == 2 && bits == 4;
  if (M >= QMM_STREAM_MAX_M && !multirow) return 1;
  if (!level || (bits != 4 && bits != 8) || K % 32 || !wq->row_contiguous ||
      !s->row_contiguous || !b->row_contiguous || s->dtype != b->dtype ||
      !(s->dtype == MX_FLOAT32 || s->dtype == MX_BFLOAT16 || s->dtype == MX_FLOAT16))
    return 1;
  int64_t G = K / gs;
  /* int8 activations (opt-in): one row of x at a time, up to 7 rows */
  bool int8 = level == 2 && bits == 4 && M < QMM_STREAM_MAX_M && qgemv_int8();
  if (int8) multirow = false;
  /* bf16 activations, scales and biases, one row: the bf16 dot-product kernel */
  bool bf16 = !int8 && M == 1 && level == 2 && bits == 4 && xbf16 &&
              s->dtype == MX_BFLOAT16 && qgemv_bf16();
  float *xr = malloc(sizeof(float) * (size_t)(M * (K + G)));
  if (!xr) return mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate %lld floats",
                                (long long)(M * (K + G)));
  float *xsum = xr + M * K;
  for (int64_t m = 0; m < M; m++) {
    const float *xm = x + m * K;
    float *d = xr + m * K;
    if (int8) qg_x_int8(xm, K, gs, d);
    else if (bf16) qg_x_bf16(xm, K, (uint32_t *)d);
    else if (bits == 4 && level == 2)
      for (int64_t k = 0; k < K; k += 128)
        for (int i = 0; i < 8; i++)
          for (int l = 0; l < 16; l++) d[k + 16 * i + l] = xm[k + 8 * l + i];
    else if (bits == 4)
      for (int64_t k = 0; k < K; k += 32)
        for (int j = 0; j < 16; j++) d[k + j] = xm[k + 2 * j], d[k + 16 + j] = xm[k + 2 * j + 1];
    else memcpy(d, xm, sizeof(float) * (size_t)K);
    for (int64_t g = 0; g < G; g++) {
      v8f a = {0};
      for (int j = 0; j < gs; j += 8) a += ld8(xm + g * gs + j);
      xsum[m * G + g] = hsum8(a);
    }
  }
  qgemv_ctx c = {.x = xr, .xsum = xsum, .w = mx__data(wq), .s = mx__data(s), .b = mx__data(b),
                 .sdt = s->dtype, .out = out, .M = M, .N = N, .K = K, .gs = gs, .bits = bits};
  c.rows = level == 2 ? (bits == 4 ? (int8 ? q4_rows_vnni : q4_rows_512) : q8_rows_512)
                      : (bits == 4 ? q4_rows_256 : q8_rows_256);
  c.multirow = multirow;
  atomic_init(&c.failed, 0);
  /* about 64 KiB of weights per task at least */
  int64_t blocks = (N + QG_ROWS - 1) / QG_ROWS;
  int64_t per = MX_MAX(1, (int64_t)QG_ROWS * K * bits / 8);
  if (bf16) {
    qgemv_bf16_ctx cb = {.x = (const uint32_t *)xr, .xs = xsum, .w = c.w, .s = c.s, .b = c.b,
                         .out = out, .N = N, .K = K, .gs = gs};
    mx__parallel_for(blocks, MX_MAX(1, 65536 / per), qgemv_bf16_chunk, &cb);
    free(xr);
    return MX_OK;
  }
  mx__parallel_for(blocks, MX_MAX(1, 65536 / per), qgemv_chunk, &c);
  free(xr);
  if (atomic_load(&c.failed))
    return mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate scratch");
  return MX_OK;
}
#endif

/* ---- bf16 activations, many rows: rows of W dequantized to bf16 tiles ------------------
 * (as MLX's quantized GEMM does for bf16 inputs) and multiplied on the
 * bf16 dot-product instruction (gemm_bf16.c). */
#ifdef HAVE_QGEMV_X86
typedef struct {
  const uint8_t *w; /* (N, K * bits / 8) */
  const void *s, *b;
  mx_dtype sdt;
  int64_t K;
  int gs, bits;
  char *out;
  mx_dtype odt;
  int64_t N;
} qbf16_ctx;

static float qb_param(const void *p, mx_dtype dt, int64_t i) {
  if (dt == MX_BFLOAT16) return mx__bf16_to_f32(((const uint16_t *)p)[i]);
  if (dt == MX_FLOAT16) return mx__f16_to_f32(((const uint16_t *)p)[i]);
  return ((const float *)p)[i];
}

#define QB_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"), noinline))
/* One row, values [k0, k0 + kk) (whole groups), 4 or 8 bits, into dst as
 * bf16: 32 values per step, pairs (2i, 2i + 1) meeting as one 32-bit word. */
QB_TARGET static void qb_row_512(const qbf16_ctx *c, int64_t n, int64_t k0, int64_t kk,
                                 uint16_t *dst) {
  int64_t G = c->K / c->gs, rb = c->K * c->bits / 8;
  const uint8_t *wr = c->w + n * rb;
  const __m512i lo8 = _mm512_set1_epi32(c->bits == 4 ? 0x0F : 0xFF);
  for (int64_t k = 0; k < kk; k += 32) {
    int64_t g = n * G + (k0 + k) / c->gs;
    __m512 sv = _mm512_set1_ps(qb_param(c->s, c->sdt, g));
    __m512 bv = _mm512_set1_ps(qb_param(c->b, c->sdt, g));
    __m512i v = c->bits == 4
                    ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wr + (k0 + k) / 2)))
                    : _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + k0 + k)));
    __m512i lo = _mm512_and_si512(v, lo8), hi = _mm512_srli_epi32(v, (unsigned)c->bits);
    __m512 flo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), sv, bv);
    __m512 fhi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), sv, bv);
    __m512i wlo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(flo));
    __m512i whi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(fhi));
    _mm512_storeu_si512(dst + k, _mm512_or_si512(wlo, _mm512_slli_epi32(whi, 16)));
  }
}

static const uint16_t *qb_rows(const void *ctx, int64_t n0, int nn, int64_t k0, int64_t kk,
                               uint16_t *dst, int64_t ld, int64_t *ld_out) {
  const qbf16_ctx *c = ctx;
  *ld_out = ld;
  /* the next tile's rows (the caller walks tiles of nn rows at one k0):
   * each row contributes a short run the hardware prefetcher does not see */
  int64_t rb = c->K * c->bits / 8, G = c->K / c->gs, es = (int64_t)mx_dtype_size(c->sdt);
  for (int64_t n = n0 + nn; n < MX_MIN(c->N, n0 + 2 * nn); n++) {
    const char *q = (const char *)c->w + n * rb + k0 * c->bits / 8;
    for (int64_t o = 0; o < kk * c->bits / 8; o += 64) __builtin_prefetch(q + o);
    __builtin_prefetch((const char *)c->s + (n * G + k0 / c->gs) * es);
    __builtin_prefetch((const char *)c->b + (n * G + k0 / c->gs) * es);
  }
  for (int r = 0; r < nn; r++) qb_row_512(c, n0 + r, k0, kk, dst + r * ld);
  return dst;
}

static void qb_store(const void *ctx, int64_t m, int64_t n0, int64_t nn, const float *acc) {
  const qbf16_ctx *c = ctx;
  size_t es = mx_dtype_size(c->odt);
  mx__cpu_convert(acc, MX_FLOAT32, c->out + (size_t)(m * c->N + n0) * es, c->odt, nn);
}
#endif

/* 1: not applicable */
static int qmm_bf16_dot(mx_array *out, mx_array **in, const mx__qmm_params *p, int64_t M,
                        int64_t N, int64_t K) {
#ifdef HAVE_QGEMV_X86
  mx_array *x = in[0];
  if (!p->transpose || M < 16 || x->dtype != MX_BFLOAT16 || out->dtype != MX_BFLOAT16 ||
      (p->bits != 4 && p->bits != 8) || p->group_size % 32 || K % 32 || !x->row_contiguous ||
      !in[1]->row_contiguous || !in[2]->row_contiguous || !in[3]->row_contiguous ||
      in[2]->dtype != in[3]->dtype || !mx__cpu_has_bf16_dot())
    return 1;
  qbf16_ctx c = {.w = mx__data(in[1]), .s = mx__data(in[2]), .b = mx__data(in[3]),
                 .sdt = in[2]->dtype, .K = K, .gs = p->group_size, .bits = p->bits,
                 .out = mx__data(out), .odt = out->dtype, .N = N};
  mx__gemm_bf16_args a = {.M = M, .N = N, .K = K, .X = mx__data(x), .sxm = K, .sxk = 1,
                          .rows = qb_rows, .rows_ctx = &c, .store = qb_store, .store_ctx = &c};
  return mx__cpu_gemm_bf16(&a);
#else
  (void)out, (void)in, (void)p, (void)M, (void)N, (void)K;
  return 1;
#endif
}

static int k_quantized_matmul(mx_array *out, mx_array **in) {
  const mx__qmm_params *p = MX__PARAMS(out, mx__qmm_params);
  if (mx__array_alloc_data(out)) return mx_last_status();
  if (out->size == 0) return MX_OK;
  int64_t N = out->shape[out->ndim - 1], K = in[0]->shape[in[0]->ndim - 1];
  int64_t M = out->size / N;
  mx_dtype ct = out->dtype == MX_FLOAT64 ? MX_FLOAT64 : MX_FLOAT32;
  buf_view x = {0}, w = {0}, s = {0}, b = {0};
  float *xsum = NULL, *obuf = NULL;
  int rc = MX_OK;
  if (K == 0) { /* empty sum */
    memset(mx__data(out), 0, (size_t)out->size * mx_dtype_size(out->dtype));
    goto done;
  }
  if (M >= 16 && (rc = qmm_bf16_dot(out, in, p, M, N, K)) <= 0) goto done;
  rc = MX_OK;
  if ((rc = as_float(in[0], ct, &x))) goto done;
#ifdef HAVE_QGEMV_X86
  if (ct == MX_FLOAT32 && p->transpose &&
      (M < QMM_STREAM_MAX_M || (p->bits == 4 && M < QMM_MR_MAX_M))) {
    float *o = out->dtype == MX_FLOAT32 ? mx__data(out) : NULL;
    if (!o && !(o = obuf = malloc(sizeof(float) * (size_t)out->size))) {
      rc = mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate the output scratch");
      goto done;
    }
    int r = qgemv_x86(x.p, in[0]->dtype == MX_BFLOAT16, in[1], in[2], in[3], o, M, N, K,
                      p->group_size, p->bits);
    if (r <= 0) {
      rc = r;
      if (!rc && obuf) mx__cpu_convert(obuf, MX_FLOAT32, mx__data(out), out->dtype, out->size);
      goto done;
    }
    free(obuf);
    obuf = NULL;
  }
#endif
  if ((rc = contiguous(in[1], &w)) || (rc = as_float(in[2], ct, &s)) ||
      (rc = as_float(in[3], ct, &b)))
    goto done;
  if (ct == MX_FLOAT64) {
    qmm64_ctx c = {x.p, s.p, b.p, w.p, mx__data(out), M, N, K, p->group_size, p->bits,
                   p->transpose};
    mx__parallel_for(N, MX_MAX(1, 4096 / MX_MAX(1, M * K / 64)), qmm64_chunk, &c);
    goto done;
  }
  float *o = out->dtype == MX_FLOAT32 ? mx__data(out) : NULL;
  if (!o) {
    o = obuf = malloc(sizeof(float) * (size_t)out->size);
    if (!obuf) {
      rc = mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate the output scratch");
      goto done;
    }
  }
  qmm_ctx c = {.x = x.p, .w = w.p, .s = s.p, .b = b.p, .out = o, .M = M, .N = N, .K = K,
               .gs = p->group_size, .bits = p->bits};
  atomic_init(&c.failed, 0);
  if (!p->transpose) {
    if (M >= QMM_STREAM_MAX_M * 2 && M <= INT_MAX && N <= INT_MAX && K <= INT_MAX) {
      if ((rc = qmm_n_blas(&c))) goto done;
    } else {
      mx__parallel_for(N / p->group_size, 1, qmm_n, &c);
    }
  } else if (M < QMM_STREAM_MAX_M) {
    int64_t G = K / p->group_size;
    xsum = malloc(sizeof(float) * (size_t)(M * G));
    if (!xsum) {
      rc = mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate the group sums");
      goto done;
    }
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < G; g++) {
        v8f a = {0};
        const float *xp = c.x + m * K + g * p->group_size;
        for (int j = 0; j < p->group_size; j += 8) a += ld8(xp + j);
        xsum[m * G + g] = hsum8(a);
      }
    c.xsum = xsum;
    /* ~16K multiply-adds per chunk at least */
    mx__parallel_for(N, MX_MAX(1, 16384 / MX_MAX(1, M * K)), qmm_t_stream, &c);
  } else if (M <= INT_MAX && N <= INT_MAX && K <= INT_MAX / 2) {
    if ((rc = qmm_t_blas(&c))) goto done;
  } else {
    mx__parallel_for((N + QMM_TILE_N - 1) / QMM_TILE_N, 1, qmm_t_tiled, &c);
  }
  if (atomic_load(&c.failed)) {
    rc = mx__set_error(MX_ERR_OOM, "quantized_matmul: cannot allocate scratch");
    goto done;
  }
  if (obuf) mx__cpu_convert(obuf, MX_FLOAT32, mx__data(out), out->dtype, out->size);
done:
  free(x.owned);
  free(w.owned);
  free(s.owned);
  free(b.owned);
  free(xsum);
  free(obuf);
  return rc;
}

void mx__cpu_register_quantized(mx__kernel_fn *k) {
  k[MX_OP_QUANTIZE_PACK] = k_quantize_pack;
  k[MX_OP_DEQUANTIZE] = k_dequantize;
  k[MX_OP_QUANTIZED_MATMUL] = k_quantized_matmul;
}
