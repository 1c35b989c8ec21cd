/* gemm_bf16.c (cpu) — see gemm_bf16.h.
 *
 * Layout. The product is computed transposed, C^T = W X^T: W's rows are the
 * "broadcast" side, read in place (two bf16 of a row = one 32-bit word,
 * broadcast to all lanes), and X is packed once into panels of 32 rows,
 * word (p, j) = (X[m0 + j, 2p], X[m0 + j, 2p + 1]), so one zmm load meets
 * 16 rows of X. A micro-kernel keeps an 8 (rows of W) x 32 (rows of X) tile
 * of float accumulators in 16 registers; per pair of k it does two loads,
 * eight broadcasts and sixteen vdpbf16ps. W is never repacked: dense bf16
 * rows are read where they are; quantized rows are dequantized into a small
 * bf16 tile first.
 *
 * Blocking. Tasks own blocks of up to NC rows of W (output columns); within
 * a task, blocks of MC rows of X and KC values of k keep the float tile
 * accumulators (NC x MC) in L2, the X panels of a k block in L2 and the
 * 8-row W tile in L1. The k blocks run in order and every tile sums its k
 * in order, so results are independent of the thread count. */
#include "gemm_bf16.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "mxc/memory.h"

enum { MR = 8, NR = 32, KC = 256, MC = 512, NC_MAX = 256 };

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BF16_DOT 1
#include <immintrin.h>

#define BF16_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"), noinline))

/* c (MR rows of ldc floats, 32 used) (+)= W tile (MR rows) . X panel, over
 * np pairs of k. wr[i]: row i of the W tile at the block's first k. */
BF16_TARGET static void micro_8x32(const uint16_t *const *wr, const uint32_t *xp, int64_t np,
                                   float *c, int64_t ldc, int first) {
  __m512 a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51, a60, a61, a70, a71;
  if (first) {
    a00 = _mm512_setzero_ps();
    a01 = a10 = a11 = a20 = a21 = a30 = a31 = a00;
    a40 = a41 = a50 = a51 = a60 = a61 = a70 = a71 = a00;
  } else {
#define LD(I) a##I##0 = _mm512_loadu_ps(c + I * ldc), a##I##1 = _mm512_loadu_ps(c + I * ldc + 16)
    LD(0);
    LD(1);
    LD(2);
    LD(3);
    LD(4);
    LD(5);
    LD(6);
    LD(7);
#undef LD
  }
  const uint32_t *w0 = (const uint32_t *)(const void *)wr[0];
  const uint32_t *w1 = (const uint32_t *)(const void *)wr[1];
  const uint32_t *w2 = (const uint32_t *)(const void *)wr[2];
  const uint32_t *w3 = (const uint32_t *)(const void *)wr[3];
  const uint32_t *w4 = (const uint32_t *)(const void *)wr[4];
  const uint32_t *w5 = (const uint32_t *)(const void *)wr[5];
  const uint32_t *w6 = (const uint32_t *)(const void *)wr[6];
  const uint32_t *w7 = (const uint32_t *)(const void *)wr[7];
  for (int64_t p = 0; p < np; p++) {
    __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp + p * NR);
    __m512bh x1 = (__m512bh)_mm512_loadu_si512(xp + p * NR + 16);
    __m512bh b;
#define DP(I)                                                  \
  {                                                            \
    uint32_t v;                                                \
    memcpy(&v, w##I + p, sizeof v);                            \
    b = (__m512bh)_mm512_set1_epi32((int)v);                   \
    a##I##0 = _mm512_dpbf16_ps(a##I##0, b, x0);                \
    a##I##1 = _mm512_dpbf16_ps(a##I##1, b, x1);                \
  }
    DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7)
#undef DP
  }
#define ST(I) _mm512_storeu_ps(c + I * ldc, a##I##0), _mm512_storeu_ps(c + I * ldc + 16, a##I##1)
  ST(0);
  ST(1);
  ST(2);
  ST(3);
  ST(4);
  ST(5);
  ST(6);
  ST(7);
#undef ST
}

bool mx__cpu_has_bf16_dot(void) {
  static int ok = -1;
  int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    const char *e = getenv("MXC_BF16_DOT");
    if (e && !strcmp(e, "0")) v = 0;
    __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
  }
  return v == 1;
}
#else
bool mx__cpu_has_bf16_dot(void) { return false; }
#endif

const uint16_t *mx__bf16_dense_rows_fn(const void *ctx, int64_t n0, int nn, int64_t k0,
                                       int64_t kk, uint16_t *dst, int64_t ld, int64_t *ld_out) {
  const mx__bf16_dense_rows *d = ctx;
  if (d->sbk == 1 && k0 + kk <= d->K && (d->sbn % 2) == 0) { /* rows in place */
    for (int64_t r = nn; r < 2 * nn; r++) /* the next tile's rows: short runs */
      for (int64_t o = 0; o < kk * 2; o += 64)
        __builtin_prefetch((const char *)(d->B + (n0 + r) * d->sbn + k0) + o);
    *ld_out = d->sbn;
    return d->B + n0 * d->sbn + k0;
  }
  for (int r = 0; r < nn; r++) {
    const uint16_t *src = d->B + (n0 + r) * d->sbn;
    uint16_t *o = dst + r * ld;
    int64_t k = 0;
    for (; k < kk && k0 + k < d->K; k++) o[k] = src[(k0 + k) * d->sbk];
    for (; k < kk; k++) o[k] = 0;
  }
  *ld_out = ld;
  return dst;
}

#ifdef HAVE_BF16_DOT
typedef struct {
  const mx__gemm_bf16_args *g;
  uint32_t *xp;   /* packed X */
  int64_t Mp, Kp; /* M rounded up to NR, K to even */
  int64_t nc;     /* W rows per task */
  atomic_int failed;
} drv_ctx;

/* X panels [p0, p1) (of NR rows): word (p, j) of block k0 at
 * xp[(k0 / 2) * Mp + m0 * kk / 2 + p * NR + j]. */
static void pack_x(void *vctx, int64_t p0, int64_t p1) {
  drv_ctx *d = vctx;
  const mx__gemm_bf16_args *g = d->g;
  for (int64_t pi = p0; pi < p1; pi++) {
    int64_t m0 = pi * NR;
    for (int64_t k0 = 0; k0 < d->Kp; k0 += KC) {
      int64_t kk = MX_MIN(KC, d->Kp - k0), np = kk / 2;
      uint32_t *o = d->xp + (k0 / 2) * d->Mp + m0 * np;
      for (int j = 0; j < NR; j++) {
        int64_t m = m0 + j;
        if (m >= g->M) {
          for (int64_t p = 0; p < np; p++) o[p * NR + j] = 0;
          continue;
        }
        const uint16_t *xr = g->X + m * g->sxm;
        for (int64_t p = 0; p < np; p++) {
          int64_t k = k0 + 2 * p;
          uint32_t lo = k < g->K ? xr[k * g->sxk] : 0, hi = k + 1 < g->K ? xr[(k + 1) * g->sxk] : 0;
          o[p * NR + j] = lo | hi << 16;
        }
      }
    }
  }
}

static void drv_task(void *vctx, int64_t t0, int64_t t1) {
  drv_ctx *d = vctx;
  const mx__gemm_bf16_args *g = d->g;
  int64_t mcap = MX_MIN(MC, d->Mp);
  float *c32 = malloc(sizeof(float) * (size_t)(d->nc + MR) * (size_t)mcap);
  uint16_t *wbuf = malloc(sizeof(uint16_t) * MR * KC);
  float *acc = malloc(sizeof(float) * (size_t)d->nc);
  if (!c32 || !wbuf || !acc) {
    atomic_store(&d->failed, 1);
    goto done;
  }
  for (int64_t t = t0; t < t1; t++) {
    int64_t n0 = t * d->nc, nn = MX_MIN(d->nc, g->N - n0);
    for (int64_t mb = 0; mb < d->Mp; mb += mcap) {
      int64_t mm = MX_MIN(mcap, d->Mp - mb);
      for (int64_t k0 = 0; k0 < d->Kp; k0 += KC) {
        int64_t kk = MX_MIN(KC, d->Kp - k0), np = kk / 2;
        for (int64_t nt = 0; nt < nn; nt += MR) {
          int nr = (int)MX_MIN(MR, nn - nt);
          int64_t ldw = KC;
          const uint16_t *w = g->rows(g->rows_ctx, n0 + nt, nr, k0, kk, wbuf, KC, &ldw);
          const uint16_t *wr[MR];
          for (int i = 0; i < MR; i++) wr[i] = w + (i < nr ? i : 0) * ldw;
          for (int64_t mp = 0; mp < mm; mp += NR)
            micro_8x32(wr, d->xp + (k0 / 2) * d->Mp + (mb + mp) * np, np,
                       c32 + nt * mcap + mp, mcap, k0 == 0);
        }
      }
      for (int64_t m = mb; m < MX_MIN(g->M, mb + mm); m++) {
        for (int64_t n = 0; n < nn; n++) acc[n] = c32[n * mcap + (m - mb)];
        g->store(g->store_ctx, m, n0, nn, acc);
      }
    }
  }
done:
  free(c32);
  free(wbuf);
  free(acc);
}

int mx__cpu_gemm_bf16(const mx__gemm_bf16_args *g) {
  if (!mx__cpu_has_bf16_dot()) return 1;
  if (g->M <= 0 || g->N <= 0) return MX_OK;
  drv_ctx d = {.g = g};
  d.Mp = (g->M + NR - 1) / NR * NR;
  d.Kp = (g->K + 1) / 2 * 2;
  int threads = MX_MAX(1, mx_get_num_threads());
  int64_t nc = (g->N + 4 * threads - 1) / (4 * threads);
  nc = (nc + MR - 1) / MR * MR;
  d.nc = MX_MAX(MR, MX_MIN(NC_MAX, nc));
  atomic_init(&d.failed, 0);
  d.xp = malloc(sizeof(uint32_t) * (size_t)(d.Mp * d.Kp / 2 + 1));
  if (!d.xp)
    return mx__set_error(MX_ERR_OOM, "matmul: cannot allocate %lld bytes to pack a bf16 operand",
                         (long long)(d.Mp * d.Kp * 2));
  mx__parallel_for(d.Mp / NR, 1, pack_x, &d);
  int64_t tasks = (g->N + d.nc - 1) / d.nc;
  mx__parallel_for(tasks, 1, drv_task, &d);
  free(d.xp);
  if (atomic_load(&d.failed)) return mx__set_error(MX_ERR_OOM, "matmul: cannot allocate scratch");
  return MX_OK;
}
#else
int mx__cpu_gemm_bf16(const mx__gemm_bf16_args *g) {
  (void)g;
  return 1;
}
#endif
