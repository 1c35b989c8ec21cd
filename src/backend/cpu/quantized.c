/* quantized.c (cpu) — kernels of the affine quantization primitives:
 * QUANTIZE_PACK, DEQUANTIZE and QUANTIZED_MATMUL (format: see
 * src/ops/quantized_params.h).
 *
 * quantized_matmul never dequantizes the whole weight:
 *   - x @ W^T with few rows (M < 8, decode): each output column streams its
 *     packed row of W once, group by group: out += scale * (x_g . q_g) +
 *     bias * sum(x_g), the group sums of x computed once;
 *   - x @ W^T with more rows: a tile of 16 rows of W is dequantized into a
 *     float scratch (16 x K) and multiplied with every row of x by a 2x4
 *     register-blocked micro-kernel;
 *   - x @ W (W stored (K, N), groups along N): one group of columns at a
 *     time, each packed row unpacked once and applied to every row of x.
 * The work is split over output columns; each output element is computed
 * by one thread in a fixed order, so results do not depend on the thread
 * count. f16/bf16/f32 compute in float32, f64 in float64. Inner loops use
 * GNU C vector types (8 x float32) so they vectorise on any target. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu.h"
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

enum { QMM_STREAM_MAX_M = 8, QMM_TILE_N = 16 };

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
  if ((rc = as_float(in[0], ct, &x)) || (rc = contiguous(in[1], &w)) ||
      (rc = as_float(in[2], ct, &s)) || (rc = as_float(in[3], ct, &b)))
    goto done;
  if (K == 0) { /* empty sum */
    memset(mx__data(out), 0, (size_t)out->size * mx_dtype_size(out->dtype));
    goto done;
  }
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
    mx__parallel_for(N / p->group_size, 1, qmm_n, &c);
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
