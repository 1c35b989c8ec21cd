/* linalg.c (cpu) — the matmul kernel: out = alpha * (a @ b) + beta * c.
 *
 * Inputs (see src/ops/linalg.c): a (..., M, K), b (..., K, N) with equal
 * batch shapes and arbitrary strides (batch strides are 0 where broadcast),
 * optional c of out's shape; all of out's dtype. Per batch matrix:
 *
 *   f32/f64  OpenBLAS (cblas_?gemm, ?gemv for M == 1). A matrix whose
 *            strides BLAS cannot express (neither row- nor column-major
 *            with a valid leading dimension) is copied first. When b is
 *            shared by every batch and a's batch and row axes are one
 *            strided run, the batch folds into M: one big GEMM.
 *   f16/bf16 M >= 16: a and b are widened to f32 and multiplied by sgemm
 *            (f32 accumulation), the result rounded once. Small M (the
 *            memory-bound decode case): a direct kernel reads b in its own
 *            dtype and accumulates in f32, never widening all of b (with
 *            AVX+FMA+F16C and b's K axis contiguous, x @ W.T, the widening
 *            happens in registers: about half the time of an f32 GEMV).
 *   any      dimensions that do not fit BLAS's int use the direct kernel
 *            (f64 accumulation for f64).
 *
 * OpenBLAS runs with mx_get_num_threads() threads. The direct kernel splits
 * columns across the pool; each output element is summed in a fixed order,
 * so results do not depend on the thread count. */
#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "cpu.h"
#include "gemm_bf16.h"
#include "mxc/memory.h"
#include "ops/linalg_params.h"
#include "types.h"

#if defined(__F16C__) || defined(__AVX__)
#include <immintrin.h>
#endif

/* One (batch) matrix product. Pointers are to element 0, strides in
 * elements. C is row-contiguous (ldc = N) and already holds c when
 * beta != 0. */
typedef struct {
  mx_dtype dt;
  int64_t M, N, K;
  const char *A;
  int64_t sam, sak;
  const char *B;
  int64_t sbk, sbn;
  char *C;
  double alpha, beta;
} gemm_args;

/* ---- widening loads ------------------------------------------------------------ */
/* dst[i] = (float)src[i * stride] for a float dtype stored at src. */
static void load_f32(float *dst, const void *src, int64_t stride, int64_t n, mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT32: {
      const float *s = src;
      if (stride == 1) memcpy(dst, s, sizeof(float) * (size_t)n);
      else
        for (int64_t i = 0; i < n; i++) dst[i] = s[i * stride];
    } break;
    case MX_FLOAT64: {
      const double *s = src;
      for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i * stride];
    } break;
    case MX_BFLOAT16: {
      const uint16_t *s = src;
      if (stride == 1)
        for (int64_t i = 0; i < n; i++) dst[i] = mx__bf16_to_f32(s[i]);
      else
        for (int64_t i = 0; i < n; i++) dst[i] = mx__bf16_to_f32(s[i * stride]);
    } break;
    case MX_FLOAT16: {
      const uint16_t *s = src;
      int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      if (stride == 1)
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#endif
      for (; i < n; i++) dst[i] = mx__f16_to_f32(s[i * stride]);
    } break;
    default: MX_ASSERT(0);
  }
}

static void load_f64(double *dst, const void *src, int64_t stride, int64_t n, mx_dtype dt) {
  MX_ASSERT(dt == MX_FLOAT64);
  const double *s = src;
  if (stride == 1) memcpy(dst, s, sizeof(double) * (size_t)n);
  else
    for (int64_t i = 0; i < n; i++) dst[i] = s[i * stride];
}

/* C[i] = alpha * acc[i] + beta * C[i] for n contiguous elements of C. */
static void store_f32(char *C, mx_dtype dt, const float *acc, int64_t n, double alpha,
                      double beta) {
  float al = (float)alpha, be = (float)beta;
  switch (dt) {
    case MX_FLOAT32: {
      float *c = (float *)C;
      if (be == 0)
        for (int64_t i = 0; i < n; i++) c[i] = al * acc[i];
      else
        for (int64_t i = 0; i < n; i++) c[i] = al * acc[i] + be * c[i];
    } break;
    case MX_BFLOAT16: {
      uint16_t *c = (uint16_t *)C;
      for (int64_t i = 0; i < n; i++)
        c[i] = mx__f32_to_bf16(al * acc[i] + (be == 0 ? 0.0f : be * mx__bf16_to_f32(c[i])));
    } break;
    case MX_FLOAT16: {
      uint16_t *c = (uint16_t *)C;
      for (int64_t i = 0; i < n; i++)
        c[i] = mx__f32_to_f16(al * acc[i] + (be == 0 ? 0.0f : be * mx__f16_to_f32(c[i])));
    } break;
    default: MX_ASSERT(0);
  }
}

static void store_f64(char *C, mx_dtype dt, const double *acc, int64_t n, double alpha,
                      double beta) {
  MX_ASSERT(dt == MX_FLOAT64);
  double *c = (double *)C;
  for (int64_t i = 0; i < n; i++) c[i] = alpha * acc[i] + (beta == 0 ? 0.0 : beta * c[i]);
}

/* ---- direct kernel ---------------------------------------------------------------- */
/* Rows of A in blocks of DMB (widened once per block), output columns in
 * chunks of DNB split across threads, K in blocks of DKB. When b's K axis is
 * contiguous (b = W^T, the linear-layer layout) each output is a dot product
 * of contiguous runs; otherwise rows of b are broadcast into DMB
 * accumulator rows. Accumulation order per output element is fixed. */
#define DMB 8
#define DNB 64
#define DKB 256

/* 8 partial sums, combined in a fixed order (vectorizes without -ffast-math) */
#define DEF_DOT(NAME, T)                                                      \
  static inline T NAME(const T *x, const T *y, int64_t n) {                   \
    T s[8] = {0};                                                             \
    int64_t i = 0;                                                            \
    for (; i + 8 <= n; i += 8)                                                \
      for (int l = 0; l < 8; l++) s[l] += x[i + l] * y[i + l];                \
    T r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));  \
    for (; i < n; i++) r += x[i] * y[i];                                      \
    return r;                                                                 \
  }
DEF_DOT(dot_f32, float)
DEF_DOT(dot_f64, double)

typedef struct {
  const gemm_args *g;
  const void *Aw; /* widened rows m0 .. m0+mb of A, K each */
  int64_t m0, mb;
} direct_job;

#define DEF_DIRECT_CHUNK(NAME, T, LOAD, STORE, DOT)                                      \
  static void NAME(void *ctx, int64_t begin, int64_t end) {                              \
    const direct_job *j = ctx;                                                           \
    const gemm_args *g = j->g;                                                           \
    const T *Aw = j->Aw;                                                                 \
    size_t es = mx_dtype_size(g->dt);                                                    \
    int64_t K = g->K, mb = j->mb;                                                        \
    T acc[DMB][DNB], buf[DKB > DNB ? DKB : DNB];                                         \
    for (int64_t n0 = begin * DNB; n0 < end * DNB && n0 < g->N; n0 += DNB) {             \
      int64_t nn = MX_MIN(DNB, g->N - n0);                                               \
      memset(acc, 0, sizeof acc);                                                        \
      for (int64_t k0 = 0; k0 < K; k0 += DKB) {                                          \
        int64_t kk = MX_MIN(DKB, K - k0);                                                \
        if (g->sbk == 1) {                                                               \
          for (int64_t jn = 0; jn < nn; jn++) {                                          \
            LOAD(buf, g->B + ((n0 + jn) * g->sbn + k0) * (int64_t)es, 1, kk, g->dt);     \
            for (int64_t m = 0; m < mb; m++) acc[m][jn] += DOT(Aw + m * K + k0, buf, kk); \
          }                                                                              \
        } else {                                                                         \
          for (int64_t k = k0; k < k0 + kk; k++) {                                       \
            LOAD(buf, g->B + (k * g->sbk + n0 * g->sbn) * (int64_t)es, g->sbn, nn, g->dt); \
            for (int64_t m = 0; m < mb; m++) {                                           \
              T av = Aw[m * K + k];                                                      \
              for (int64_t jn = 0; jn < nn; jn++) acc[m][jn] += av * buf[jn];            \
            }                                                                            \
          }                                                                              \
        }                                                                                \
      }                                                                                  \
      for (int64_t m = 0; m < mb; m++)                                                   \
        STORE(g->C + ((j->m0 + m) * g->N + n0) * (int64_t)es, g->dt, acc[m], nn,         \
              g->alpha, g->beta);                                                        \
    }                                                                                    \
  }
DEF_DIRECT_CHUNK(direct_chunk_f32, float, load_f32, store_f32, dot_f32)
DEF_DIRECT_CHUNK(direct_chunk_f64, double, load_f64, store_f64, dot_f64)

/* Fused half-precision dot products (AVX + FMA + F16C): when b's K axis is
 * contiguous, each output column reads its run of b once, widens 8 values
 * in registers and feeds up to DMB rows of A. This is the decode GEMV of
 * bf16/f16 weights, bound by memory bandwidth rather than by widening. */
#if defined(__AVX__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_FUSED_HALF 1
static inline __m256 ld8_bf16(const uint16_t *p) {
  __m128i v = _mm_loadu_si128((const __m128i *)p), z = _mm_setzero_si128();
  __m128i lo = _mm_unpacklo_epi16(z, v), hi = _mm_unpackhi_epi16(z, v);
  return _mm256_castsi256_ps(_mm256_insertf128_si256(_mm256_castsi128_si256(lo), hi, 1));
}
static inline __m256 ld8_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline float hsum8(__m256 v) {
  float l[8];
  _mm256_storeu_ps(l, v);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
#define DEF_DOT_HALF(NAME, LD8, CVT)                                                       \
  static void NAME(const float *A, int64_t lda, int64_t mb, const uint16_t *B, int64_t n,   \
                   float *acc) {                                                           \
    __m256 s[DMB];                                                                         \
    for (int64_t m = 0; m < mb; m++) s[m] = _mm256_setzero_ps();                           \
    int64_t i = 0;                                                                         \
    if (mb == 1) { /* four independent FMA chains hide the FMA latency */                \
      __m256 s1 = _mm256_setzero_ps(), s2 = s1, s3 = s1, s4 = s1;                          \
      for (; i + 32 <= n; i += 32) {                                                       \
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(A + i), LD8(B + i), s1);                      \
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(A + i + 8), LD8(B + i + 8), s2);              \
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(A + i + 16), LD8(B + i + 16), s3);            \
        s4 = _mm256_fmadd_ps(_mm256_loadu_ps(A + i + 24), LD8(B + i + 24), s4);            \
      }                                                                                    \
      for (; i + 8 <= n; i += 8) s1 = _mm256_fmadd_ps(_mm256_loadu_ps(A + i), LD8(B + i), s1); \
      s[0] = _mm256_add_ps(_mm256_add_ps(s1, s2), _mm256_add_ps(s3, s4));                  \
    } else {                                                                               \
      for (; i + 8 <= n; i += 8) {                                                         \
        __m256 b = LD8(B + i);                                                             \
        for (int64_t m = 0; m < mb; m++)                                                   \
          s[m] = _mm256_fmadd_ps(_mm256_loadu_ps(A + m * lda + i), b, s[m]);               \
      }                                                                                    \
    }                                                                                      \
    for (int64_t m = 0; m < mb; m++) {                                                     \
      float r = hsum8(s[m]);                                                               \
      for (int64_t k = i; k < n; k++) r += A[m * lda + k] * CVT(B[k]);                     \
      acc[m] += r;                                                                         \
    }                                                                                      \
  }
DEF_DOT_HALF(dot_bf16_rows, ld8_bf16, mx__bf16_to_f32)
DEF_DOT_HALF(dot_f16_rows, ld8_f16, mx__f16_to_f32)

/* One row of A (decode) against four columns of b at once: each 8 values
 * of A are loaded once for four FMA chains, so a long K (whose widened A row
 * does not stay in L1) costs one A load per four b loads. Each column is
 * one FMA chain then a horizontal sum: a fixed order for a given shape,
 * whatever the thread count (columns are grouped within DNB chunks). */
#define DEF_DOT4_HALF(NAME, LD8, CVT)                                                       \
  static void NAME(const float *A, const uint16_t *B, int64_t ldb, int64_t n, float *acc) { \
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                            \
    const uint16_t *b0 = B, *b1 = B + ldb, *b2 = B + 2 * ldb, *b3 = B + 3 * ldb;          \
    int64_t i = 0;                                                                          \
    for (; i + 8 <= n; i += 8) {                                                            \
      __m256 a = _mm256_loadu_ps(A + i);                                                    \
      s0 = _mm256_fmadd_ps(a, LD8(b0 + i), s0);                                             \
      s1 = _mm256_fmadd_ps(a, LD8(b1 + i), s1);                                             \
      s2 = _mm256_fmadd_ps(a, LD8(b2 + i), s2);                                             \
      s3 = _mm256_fmadd_ps(a, LD8(b3 + i), s3);                                             \
    }                                                                                       \
    float r[4] = {hsum8(s0), hsum8(s1), hsum8(s2), hsum8(s3)};                             \
    for (; i < n; i++)                                                                      \
      r[0] += A[i] * CVT(b0[i]), r[1] += A[i] * CVT(b1[i]), r[2] += A[i] * CVT(b2[i]),     \
          r[3] += A[i] * CVT(b3[i]);                                                        \
    for (int j = 0; j < 4; j++) acc[j] = r[j];                                              \
  }
DEF_DOT4_HALF(dot4_bf16, ld8_bf16, mx__bf16_to_f32)
DEF_DOT4_HALF(dot4_f16, ld8_f16, mx__f16_to_f32)

static void direct_chunk_half_dot(void *ctx, int64_t begin, int64_t end) {
  const direct_job *j = ctx;
  const gemm_args *g = j->g;
  const float *Aw = j->Aw;
  void (*dot)(const float *, int64_t, int64_t, const uint16_t *, int64_t, float *) =
      g->dt == MX_BFLOAT16 ? dot_bf16_rows : dot_f16_rows;
  const uint16_t *B = (const uint16_t *)g->B;
  float acc[DMB][DNB], col[DMB];
  for (int64_t n0 = begin * DNB; n0 < end * DNB && n0 < g->N; n0 += DNB) {
    int64_t nn = MX_MIN(DNB, g->N - n0), jn = 0;
    /* long rows only: with rows of <= 4 KB the four interleaved streams are too
     * short for the hardware prefetcher and this is slower (measured) */
    if (j->mb == 1 && g->K >= 4096)
      for (; jn + 4 <= nn; jn += 4) {
        float c4[4];
        (g->dt == MX_BFLOAT16 ? dot4_bf16 : dot4_f16)(Aw, B + (n0 + jn) * g->sbn, g->sbn, g->K,
                                                      c4);
        for (int q = 0; q < 4; q++) acc[0][jn + q] = c4[q];
      }
    for (; jn < nn; jn++) {
      memset(col, 0, sizeof col);
      dot(Aw, g->K, j->mb, B + (n0 + jn) * g->sbn, g->K, col);
      for (int64_t m = 0; m < j->mb; m++) acc[m][jn] = col[m];
    }
    for (int64_t m = 0; m < j->mb; m++)
      store_f32(g->C + ((j->m0 + m) * g->N + n0) * 2, g->dt, acc[m], nn, g->alpha, g->beta);
  }
}
#endif

static int gemm_direct(const gemm_args *g) {
  bool wide = g->dt == MX_FLOAT64;
  size_t ws = wide ? sizeof(double) : sizeof(float);
  size_t es = mx_dtype_size(g->dt);
  mx__buffer *aw = mx__buffer_new((size_t)DMB * (size_t)MX_MAX(g->K, 1) * ws, MX_CPU);
  if (!aw) return mx_last_status();
  int64_t nchunks = (g->N + DNB - 1) / DNB;
  /* enough columns per task to amortise the widened A block */
  int64_t grain = MX_MAX(1, (1 << 16) / MX_MAX(1, g->K * DNB / 8));
  for (int64_t m0 = 0; m0 < g->M; m0 += DMB) {
    int64_t mb = MX_MIN(DMB, g->M - m0);
    for (int64_t m = 0; m < mb; m++) {
      const char *row = g->A + (m0 + m) * g->sam * (int64_t)es;
      if (wide) load_f64((double *)aw->ptr + m * g->K, row, g->sak, g->K, g->dt);
      else load_f32((float *)aw->ptr + m * g->K, row, g->sak, g->K, g->dt);
    }
    direct_job j = {g, aw->ptr, m0, mb};
    void (*chunk)(void *, int64_t, int64_t) = wide ? direct_chunk_f64 : direct_chunk_f32;
#ifdef HAVE_FUSED_HALF
    if ((g->dt == MX_BFLOAT16 || g->dt == MX_FLOAT16) && (g->sbk == 1 || g->K == 1))
      chunk = direct_chunk_half_dot;
#endif
    mx__parallel_for(nchunks, grain, chunk, &j);
  }
  mx__buffer_release(aw);
  return MX_OK;
}

/* ---- BLAS ------------------------------------------------------------------------- */
static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* How BLAS can read a rows x cols matrix with strides (rs, cs): row-major
 * (NoTrans, ld = rs) or column-major (Trans, ld = cs). False: copy it. */
static bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                        enum CBLAS_TRANSPOSE *tr, int64_t *ld) {
  if ((cols == 1 || cs == 1) && (rows == 1 || rs >= MX_MAX(1, cols))) {
    *tr = CblasNoTrans;
    *ld = rows == 1 ? MX_MAX(1, cols) : rs;
    return fits_int(*ld);
  }
  if ((rows == 1 || rs == 1) && (cols == 1 || cs >= MX_MAX(1, rows))) {
    *tr = CblasTrans;
    *ld = cols == 1 ? MX_MAX(1, rows) : cs;
    return fits_int(*ld);
  }
  return false;
}

/* OpenBLAS's own threads for a product of fmas multiply-adds: one below
 * BLAS_MT_MIN (its threads' hand-off costs more than they save, and they
 * spin-wait: on a busy machine a late one stalls every small call by a
 * time slice), else the configured count — never a count that depends on
 * timing (such as the pool's solo mode): OpenBLAS's results can change
 * with its thread count (its Haswell/Zen kernels do), and a run must give
 * the same bits each time. */
#define BLAS_MT_MIN (1 << 24)
void mx__blas_set_threads(double fmas) {
  static int current;
  int n = fmas < BLAS_MT_MIN ? 1 : mx_get_num_threads();
  if (__atomic_load_n(&current, __ATOMIC_RELAXED) != n) {
    openblas_set_num_threads(n);
    __atomic_store_n(&current, n, __ATOMIC_RELAXED);
  }
}

/* Copy a strided rows x cols matrix into a row-contiguous buffer of the same
 * dtype (the same element size: moved as bytes). */
typedef struct {
  const char *src;
  int64_t rs, cs;
  char *dst;
  int64_t cols;
  size_t es;
  mx_dtype sdt, ddt; /* widen when they differ (to f32) */
} rows_job;

static void copy_rows(void *ctx, int64_t begin, int64_t end) {
  const rows_job *j = ctx;
  for (int64_t r = begin; r < end; r++) {
    const char *s = j->src + r * j->rs * (int64_t)j->es;
    if (j->ddt == MX_FLOAT32 && j->sdt != MX_FLOAT32) {
      load_f32((float *)j->dst + r * j->cols, s, j->cs, j->cols, j->sdt);
      continue;
    }
    char *d = j->dst + r * j->cols * (int64_t)j->es;
    if (j->cs == 1) {
      memcpy(d, s, (size_t)j->cols * j->es);
    } else if (j->es == 4) {
      for (int64_t c = 0; c < j->cols; c++) ((float *)d)[c] = ((const float *)s)[c * j->cs];
    } else {
      for (int64_t c = 0; c < j->cols; c++) ((double *)d)[c] = ((const double *)s)[c * j->cs];
    }
  }
}

/* Row-contiguous copy of a strided matrix, widened to f32 when ddt is f32
 * and sdt a half type. Returns a new buffer or NULL (+ error). */
static mx__buffer *pack(const char *src, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                        mx_dtype sdt, mx_dtype ddt) {
  mx__buffer *b = mx__buffer_new((size_t)MX_MAX(1, rows * cols) * mx_dtype_size(ddt), MX_CPU);
  if (!b) return NULL;
  rows_job j = {src, rs, cs, b->ptr, cols, mx_dtype_size(sdt), sdt, ddt};
  mx__parallel_for(rows, MX_MAX(1, (1 << 14) / MX_MAX(1, cols)), copy_rows, &j);
  return b;
}

/* f32/f64 through BLAS; C may hold c (beta). */
static int gemm_blas(const gemm_args *g) {
  bool dbl = g->dt == MX_FLOAT64;
  size_t es = mx_dtype_size(g->dt);
  enum CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb;
  mx__buffer *pa = NULL, *pb = NULL;
  const void *A = g->A, *B = g->B;
  if (!blas_layout(g->M, g->K, g->sam, g->sak, &ta, &lda)) {
    if (!(pa = pack(g->A, g->M, g->K, g->sam, g->sak, g->dt, g->dt))) return mx_last_status();
    A = pa->ptr, ta = CblasNoTrans, lda = MX_MAX(1, g->K);
  }
  if (!blas_layout(g->K, g->N, g->sbk, g->sbn, &tb, &ldb)) {
    if (!(pb = pack(g->B, g->K, g->N, g->sbk, g->sbn, g->dt, g->dt))) {
      if (pa) mx__buffer_release(pa);
      return mx_last_status();
    }
    B = pb->ptr, tb = CblasNoTrans, ldb = MX_MAX(1, g->N);
  }
  mx__blas_set_threads((double)g->M * (double)g->N * (double)g->K);
  int M = (int)g->M, N = (int)g->N, K = (int)g->K;
  if (M == 1) {
    /* y (N) = alpha * B^T x + beta * y, x = A's row (stride: A's column
     * stride). y is cleared first when beta is 0: BLAS may scale garbage. */
    if (g->beta == 0) memset(g->C, 0, (size_t)N * es);
    int incx = ta == CblasNoTrans ? 1 : (int)lda;
    enum CBLAS_TRANSPOSE tv = tb == CblasNoTrans ? CblasTrans : CblasNoTrans;
    int rows = tb == CblasNoTrans ? K : N, cols = tb == CblasNoTrans ? N : K;
    if (dbl)
      cblas_dgemv(CblasRowMajor, tv, rows, cols, g->alpha, B, (int)ldb, A, incx, g->beta,
                  (double *)g->C, 1);
    else
      cblas_sgemv(CblasRowMajor, tv, rows, cols, (float)g->alpha, B, (int)ldb, A, incx,
                  (float)g->beta, (float *)g->C, 1);
  } else if (dbl) {
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, g->alpha, A, (int)lda, B, (int)ldb, g->beta,
                (double *)g->C, MX_MAX(1, N));
  } else {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, (float)g->alpha, A, (int)lda, B, (int)ldb,
                (float)g->beta, (float *)g->C, MX_MAX(1, N));
  }
  if (pa) mx__buffer_release(pa);
  if (pb) mx__buffer_release(pb);
  return MX_OK;
}

/* Widen a strided half matrix to a contiguous f32 one, reading the source
 * along its contiguous axis: a column-major source is stored transposed
 * and handed to BLAS as Trans. */
static mx__buffer *widen(const char *src, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                         mx_dtype dt, enum CBLAS_TRANSPOSE *tr, int64_t *ld) {
  if (cs != 1 && cols > 1 && (rs == 1 || rows == 1)) {
    *tr = CblasTrans;
    *ld = MX_MAX(1, rows);
    return pack(src, cols, rows, cs, rs, dt, MX_FLOAT32);
  }
  *tr = CblasNoTrans;
  *ld = MX_MAX(1, cols);
  return pack(src, rows, cols, rs, cs, dt, MX_FLOAT32);
}

/* f16/bf16 with large M: widen, sgemm, round once. */
static int gemm_widened(const gemm_args *g) {
  int st = MX_OK;
  enum CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb;
  mx__buffer *a32 = widen(g->A, g->M, g->K, g->sam, g->sak, g->dt, &ta, &lda);
  mx__buffer *b32 = a32 ? widen(g->B, g->K, g->N, g->sbk, g->sbn, g->dt, &tb, &ldb) : NULL;
  mx__buffer *c32 = b32 ? mx__buffer_new((size_t)(g->M * g->N) * sizeof(float), MX_CPU) : NULL;
  if (!c32) {
    st = mx_last_status();
    goto done;
  }
  if (g->beta != 0) mx__cpu_convert(g->C, g->dt, c32->ptr, MX_FLOAT32, g->M * g->N);
  mx__blas_set_threads((double)g->M * (double)g->N * (double)g->K);
  cblas_sgemm(CblasRowMajor, ta, tb, (int)g->M, (int)g->N, (int)g->K, (float)g->alpha,
              a32->ptr, (int)lda, b32->ptr, (int)ldb, g->beta != 0 ? (float)g->beta : 0.0f,
              c32->ptr, (int)MX_MAX(1, g->N));
  mx__cpu_convert(c32->ptr, MX_FLOAT32, g->C, g->dt, g->M * g->N);
done:
  if (a32) mx__buffer_release(a32);
  if (b32) mx__buffer_release(b32);
  if (c32) mx__buffer_release(c32);
  return st;
}

#define WIDEN_MIN_M 16

/* bf16 on the CPU's bf16 dot-product instruction (gemm_bf16.c); 1 when the
 * CPU lacks it. */
static void store_bf16_rows(const void *ctx, int64_t m, int64_t n0, int64_t nn, const float *acc) {
  const gemm_args *g = ctx;
  store_f32(g->C + (m * g->N + n0) * 2, g->dt, acc, nn, g->alpha, g->beta);
}

static int gemm_bf16_dot(const gemm_args *g) {
  mx__bf16_dense_rows rows = {.B = (const uint16_t *)(const void *)g->B, .sbk = g->sbk,
                              .sbn = g->sbn, .K = g->K};
  mx__gemm_bf16_args a = {.M = g->M, .N = g->N, .K = g->K,
                          .X = (const uint16_t *)(const void *)g->A, .sxm = g->sam,
                          .sxk = g->sak, .rows = mx__bf16_dense_rows_fn, .rows_ctx = &rows,
                          .store = store_bf16_rows, .store_ctx = g};
  return mx__cpu_gemm_bf16(&a);
}

static int gemm(const gemm_args *g) {
  bool ints = fits_int(g->M) && fits_int(g->N) && fits_int(g->K) &&
              fits_int(g->M * g->K) && fits_int(g->K * g->N) && fits_int(g->M * g->N);
  if (g->K == 0 || !ints) return gemm_direct(g);
  if (g->dt == MX_FLOAT32 || g->dt == MX_FLOAT64) return gemm_blas(g);
  if (g->dt == MX_BFLOAT16 && g->M >= WIDEN_MIN_M) {
    int r = gemm_bf16_dot(g);
    if (r <= 0) return r;
  }
  if (g->M >= WIDEN_MIN_M) return gemm_widened(g);
  return gemm_direct(g);
}

/* ---- the kernel --------------------------------------------------------------------- */
static int k_matmul(mx_array *out, mx_array **in) {
  const mx__matmul_params *p = MX__PARAMS(out, mx__matmul_params);
  mx_array *a = in[0], *b = in[1], *c = out->ninputs > 2 ? in[2] : NULL;
  mx_dtype dt = out->dtype;
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64 && dt != MX_FLOAT16 && dt != MX_BFLOAT16)
    return mx__set_error(MX_ERR_NO_KERNEL, "matmul: no CPU kernel for dtype %s",
                         mx_dtype_name(dt));
  MX_ASSERT(a->dtype == dt && b->dtype == dt && (!c || c->dtype == dt));
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  if (c) mx__cpu_copy_to_contiguous(c, out->buf->ptr);
  int nd = out->ndim, nb = nd - 2;
  size_t es = mx_dtype_size(dt);
  gemm_args g = {
      .dt = dt,
      .M = out->shape[nd - 2],
      .N = out->shape[nd - 1],
      .K = a->shape[nd - 1],
      .sam = a->strides[nd - 2],
      .sak = a->strides[nd - 1],
      .sbk = b->strides[nd - 2],
      .sbn = b->strides[nd - 1],
      .alpha = p->alpha,
      .beta = c ? p->beta : 0.0,
  };
  int64_t nbatch = mx__shape_size(out->shape, nb);

  /* fold the batch into M when b is shared and a's (batch..., M) axes are
   * one strided run */
  bool b_shared = true;
  for (int d = 0; d < nb; d++)
    if (out->shape[d] != 1 && b->strides[d] != 0) b_shared = false;
  if (nbatch > 1 && b_shared) {
    int64_t rs = 0, next = -1;
    bool run = true;
    for (int d = nb; d >= 0 && run; d--) {
      if (out->shape[d] == 1) continue;
      if (next < 0) rs = a->strides[d];
      else if (a->strides[d] != next) run = false;
      next = a->strides[d] * out->shape[d];
    }
    if (run) {
      g.M *= nbatch;
      g.sam = next < 0 ? g.K : rs;
      nbatch = 1;
    }
  }

  int64_t idx[MX_MAX_NDIM] = {0};
  for (int64_t bi = 0; bi < nbatch && !st; bi++) {
    int64_t ao = 0, bo = 0;
    for (int d = 0; d < nb && nbatch > 1; d++) {
      ao += idx[d] * a->strides[d];
      bo += idx[d] * b->strides[d];
    }
    g.A = (const char *)mx__data(a) + ao * (int64_t)es;
    g.B = (const char *)mx__data(b) + bo * (int64_t)es;
    g.C = (char *)out->buf->ptr + bi * g.M * g.N * (int64_t)es;
    st = gemm(&g);
    for (int d = nb - 1; d >= 0; d--) {
      if (++idx[d] < out->shape[d]) break;
      idx[d] = 0;
    }
  }
  return st;
}

void mx__cpu_register_linalg(mx__kernel_fn *k) { k[MX_OP_MATMUL] = k_matmul; }
