/* linalg.cu — matmul through cuBLASLt (cuBLAS for batched and float64
 * products): out = alpha * (a @ b) + beta * c.
 *
 * Inputs as for the CPU kernel (src/backend/cpu/linalg.c): a (..., M, K),
 * b (..., K, N) with out's batch shape (batch strides 0 where broadcast),
 * optional c broadcast to out. Row-major C = A B is computed as the
 * column-major C^T = B^T A^T, so a row- or column-major operand goes to
 * the library as it lies (op N or T, its leading dimension); an operand
 * whose strides cannot be expressed, or whose batch axes are not one
 * strided run, is first copied to a contiguous buffer.
 *
 * One matrix product (every Linear layer, all of prefill and training):
 * cublasLtMatmul with a plan cached per shape (descriptors, layouts and
 * the algorithm: cuBLASLt's first heuristic, or with MXC_GEMM_TUNE=1 the
 * fastest of up to 8 of its candidates, timed on the shape's first use
 * outside graph capture). Reductions that add partial products in the
 * output with atomics are excluded, so a plan's results are the same bits
 * every call; MXC_GEMM_TUNE's choice can differ between processes (it is
 * timed), so it is off by default. A batch of products, or float64: one
 * cublasGemmStridedBatchedEx.
 *
 *   f32   CUBLAS_COMPUTE_32F (TF32 off: results match the CPU's sgemm);
 *         CUBLAS_COMPUTE_32F_FAST_TF32 for matmuls built with
 *         mx_set_float32_matmul_precision(MX_MATMUL_HIGH)
 *   f16, bf16  f32 accumulation (CUBLAS_COMPUTE_32F), tensor cores
 *   f64   CUBLAS_COMPUTE_64F */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <pthread.h>

#include "cuda_common.cuh"
#include "norm_row.cuh"
#include "ops/fast_params.h"
#include "ops/linalg_params.h"

static cublasHandle_t g_handle;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static int cublas_check(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return MX_OK;
  int code = s == CUBLAS_STATUS_ALLOC_FAILED ? MX_ERR_OOM : MX_ERR_INTERNAL;
  return mx__set_error(code, "matmul: %s failed: %s", what, cublasGetStatusString(s));
}

static int handle(cublasHandle_t *h) {
  pthread_mutex_lock(&g_mu);
  int st = MX_OK;
  if (!g_handle) {
    st = cublas_check(cublasCreate(&g_handle), "cublasCreate");
    if (!st) st = cublas_check(cublasSetStream(g_handle, mx__cuda_stream()), "cublasSetStream");
    if (!st) st = cublas_check(cublasSetMathMode(g_handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    if (st && g_handle) {
      cublasDestroy(g_handle);
      g_handle = NULL;
    }
  }
  *h = g_handle;
  pthread_mutex_unlock(&g_mu);
  return st;
}

/* One operand as cuBLAS sees it. */
typedef struct {
  const char *ptr;
  int64_t rows, cols, rs, cs; /* matrix strides (elements) */
  int64_t bs;                 /* batch stride */
  bool ok;
} operand;

/* Batch axes [0, nb) of x over out's batch shape as one stride. */
static bool batch_stride(const mx_array *x, const int64_t *bshape, int nb, int64_t *bs) {
  int64_t s = 0, next = -1;
  for (int d = nb - 1; d >= 0; d--) {
    if (bshape[d] == 1) continue;
    if (next < 0) s = x->strides[d];
    else if (x->strides[d] != next) return false;
    next = x->strides[d] * bshape[d];
  }
  *bs = s;
  return true;
}

/* Strides of size-1 dims are free: pick ones cuBLAS accepts. */
static bool layout_ok(operand *o) {
  if (o->rows == 1 && o->cols == 1) o->rs = o->cs = 1;
  else if (o->rows == 1) o->rs = o->cs == 1 ? o->cols : 1;
  else if (o->cols == 1) o->cs = o->rs == 1 ? o->rows : 1;
  if (o->cs == 1 && o->rs >= MX_MAX(1, o->cols) && o->rs <= INT_MAX) return true;
  if (o->rs == 1 && o->cs >= MX_MAX(1, o->rows) && o->cs <= INT_MAX) return true;
  return false;
}

static int prepare(operand *o, mx_array *x, int nd, const int64_t *bshape, int64_t nbatch,
                   mx__buffer **tmp) {
  size_t es = mx_dtype_size(x->dtype);
  o->ptr = mx__ddata(x);
  o->rows = x->shape[nd - 2];
  o->cols = x->shape[nd - 1];
  o->rs = x->strides[nd - 2];
  o->cs = x->strides[nd - 1];
  o->bs = 0;
  if (batch_stride(x, bshape, nd - 2, &o->bs) && layout_ok(o)) return MX_OK;
  /* pack (materialising broadcast batch axes) */
  *tmp = mx__cuda_tmp((size_t)(nbatch * o->rows * o->cols) * es);
  if (!*tmp) return mx_last_status();
  int st = mx__cuda_copy_to_contiguous(x, (*tmp)->dptr);
  if (st) return st;
  o->ptr = (const char *)(*tmp)->dptr;
  o->rs = MX_MAX(1, o->cols);
  o->cs = 1;
  o->bs = o->rows * o->cols;
  return MX_OK;
}

/* ---- cuBLASLt plans -------------------------------------------------------------------
 * Keyed by everything that shapes the call; never evicted (a full table
 * makes throwaway plans). A plan's handles are immutable once published. */
typedef struct {
  int32_t ty, ct, opa, opb, beta_nz;
  uint16_t align_a, align_b, align_c, pad; /* pointer alignment (bytes, <= 256) */
  int64_t m, n, k, lda, ldb, ldc;
} lt_key;
typedef struct {
  bool used, none; /* none: cuBLASLt has no algorithm (cuBLAS runs it) */
  lt_key key;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulAlgo_t algo;
  size_t ws;
} lt_plan;
#define LT_PLANS 1024
#define LT_MAX_WS ((size_t)32 << 20)
static lt_plan g_plans[LT_PLANS];
static cublasLtHandle_t g_lt;
static int g_tune = -1; /* MXC_GEMM_TUNE */

static int lt_check(cublasStatus_t s, const char *what) { return cublas_check(s, what); }

static void lt_plan_destroy(lt_plan *p) {
  if (p->op) cublasLtMatmulDescDestroy(p->op);
  if (p->la) cublasLtMatrixLayoutDestroy(p->la);
  if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
  if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
  p->op = NULL, p->la = p->lb = p->lc = NULL;
}

static uint64_t lt_hash(const lt_key *k) {
  const unsigned char *b = (const unsigned char *)k;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < sizeof *k; i++) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

/* Time one algorithm (median of 3 after one untimed call); < 0: it failed. */
static float lt_time(const lt_plan *p, const cublasLtMatmulAlgo_t *algo, size_t ws,
                     const void *alpha, const void *beta, const void *A, const void *B, void *C,
                     void *wsp, cudaStream_t s) {
  cudaEvent_t e0, e1;
  if (cudaEventCreate(&e0) != cudaSuccess) return cudaGetLastError(), -1.f;
  if (cudaEventCreate(&e1) != cudaSuccess) return cudaEventDestroy(e0), cudaGetLastError(), -1.f;
  float t[3] = {0, 0, 0};
  bool ok = cublasLtMatmul(g_lt, p->op, alpha, B, p->lb, A, p->la, beta, C, p->lc, C, p->lc, algo,
                           wsp, ws, s) == CUBLAS_STATUS_SUCCESS;
  for (int i = 0; ok && i < 3; i++) {
    ok = cudaEventRecord(e0, s) == cudaSuccess &&
         cublasLtMatmul(g_lt, p->op, alpha, B, p->lb, A, p->la, beta, C, p->lc, C, p->lc, algo,
                        wsp, ws, s) == CUBLAS_STATUS_SUCCESS &&
         cudaEventRecord(e1, s) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
         cudaEventElapsedTime(&t[i], e0, e1) == cudaSuccess;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGetLastError();
  if (!ok) return -1.f;
  float a = t[0] < t[1] ? t[0] : t[1], b = t[0] < t[1] ? t[1] : t[0];
  return t[2] < a ? a : t[2] > b ? b : t[2];
}

/* MXC_GEMM_LOG=1: each new plan's shape and algorithm to stderr (which
 * kernel family, tile, split-K and reduction cuBLASLt chose) */
static void lt_log(const lt_key *k, const cublasLtMatmulAlgo_t *a, size_t ws, int nres, int best) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MXC_GEMM_LOG");
    on = e && !strcmp(e, "1");
  }
  if (!on) return;
  int32_t id = -1, splitk = 0;
  uint32_t tile = 0, red = 0, stages = 0;
  uint16_t cluster = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
                                       &w);
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red,
                                       &w);
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
                                       &w);
  cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                       sizeof cluster, &w);
  fprintf(stderr,
          "mxc gemm plan: m %lld n %lld k %lld opa %d opb %d lda %lld ldb %lld ldc %lld beta %d "
          "align %u/%u/%u: algo %d tile %u splitk %d reduction %u stages %u cluster %u ws %zu "
          "(%d of %d)\n",
          (long long)k->m, (long long)k->n, (long long)k->k, k->opa, k->opb, (long long)k->lda,
          (long long)k->ldb, (long long)k->ldc, k->beta_nz, k->align_a, k->align_b, k->align_c,
          id, tile, splitk, red, stages, cluster, ws, best, nres);
}

/* Build (or find) the plan for key; tune with the operands when asked. */
static int lt_plan_get(const lt_key *key, lt_plan **out, lt_plan *scratch, const void *alpha,
                       const void *beta, const void *A, const void *B, void *C) {
  uint64_t h = lt_hash(key);
  pthread_mutex_lock(&g_mu);
  int st = MX_OK;
  if (!g_lt) st = lt_check(cublasLtCreate(&g_lt), "cublasLtCreate");
  if (g_tune < 0) {
    const char *e = getenv("MXC_GEMM_TUNE");
    g_tune = e && !strcmp(e, "1");
  }
  lt_plan *slot = NULL;
  for (int i = 0; !st && i < LT_PLANS; i++) {
    lt_plan *p = &g_plans[(h + (uint64_t)i) % LT_PLANS];
    if (!p->used) {
      slot = p;
      break;
    }
    if (!memcmp(&p->key, key, sizeof *key)) {
      *out = p;
      pthread_mutex_unlock(&g_mu);
      return p->none ? MX_ERR_UNSUPPORTED : MX_OK;
    }
  }
  /* new plan: built under the lock (first use of a shape only) */
  lt_plan *p = slot ? slot : scratch;
  memset(p, 0, sizeof *p);
  p->key = *key;
  const cudaDataType_t ty = (cudaDataType_t)key->ty;
  const cublasOperation_t opa = (cublasOperation_t)key->opa, opb = (cublasOperation_t)key->opb;
  const cudaDataType_t scale_ty = ty == CUDA_R_64F ? CUDA_R_64F : CUDA_R_32F;
  if (!st)
    st = lt_check(cublasLtMatmulDescCreate(&p->op, (cublasComputeType_t)key->ct, scale_ty),
                  "cublasLtMatmulDescCreate");
  /* column-major C^T (n x m) = op(B^T) (n x k) * op(A^T) (k x m): "A" of the
   * library call is our B */
  if (!st)
    st = lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opb, sizeof opb),
                  "cublasLtMatmulDescSetAttribute");
  if (!st)
    st = lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opa, sizeof opa),
                  "cublasLtMatmulDescSetAttribute");
  const int64_t n = key->n, m = key->m, k = key->k;
  if (!st)
    st = lt_check(cublasLtMatrixLayoutCreate(&p->lb, ty, opb == CUBLAS_OP_N ? n : k,
                                             opb == CUBLAS_OP_N ? k : n, key->ldb),
                  "cublasLtMatrixLayoutCreate");
  if (!st)
    st = lt_check(cublasLtMatrixLayoutCreate(&p->la, ty, opa == CUBLAS_OP_N ? k : m,
                                             opa == CUBLAS_OP_N ? m : k, key->lda),
                  "cublasLtMatrixLayoutCreate");
  if (!st)
    st = lt_check(cublasLtMatrixLayoutCreate(&p->lc, ty, n, m, key->ldc),
                  "cublasLtMatrixLayoutCreate");
  cublasLtMatmulPreference_t pref = NULL;
  if (!st) st = lt_check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  size_t wmax = LT_MAX_WS;
  /* no in-place (atomic) split-K reductions: the same bits every call */
  uint32_t mask = CUBLASLT_REDUCTION_SCHEME_MASK & ~(uint32_t)CUBLASLT_REDUCTION_SCHEME_INPLACE;
  if (!st)
    st = lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &wmax, sizeof wmax),
                  "cublasLtMatmulPreferenceSetAttribute");
  if (!st)
    st = lt_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                       &mask, sizeof mask),
                  "cublasLtMatmulPreferenceSetAttribute");
  /* the library's A is our B (and its B our A) */
  const struct {
    cublasLtMatmulPreferenceAttributes_t at;
    uint32_t v;
  } al[4] = {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key->align_b},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key->align_a},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key->align_c},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key->align_c}};
  for (int i = 0; i < 4 && !st; i++)
    st = lt_check(cublasLtMatmulPreferenceSetAttribute(pref, al[i].at, &al[i].v, sizeof al[i].v),
                  "cublasLtMatmulPreferenceSetAttribute");
  cublasLtMatmulHeuristicResult_t res[8];
  int nres = 0;
  cudaStream_t s = mx__cuda_stream();
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  const bool tune = g_tune && key->beta_nz == 0 && cudaStreamIsCapturing(s, &cs) == cudaSuccess &&
                    cs == cudaStreamCaptureStatusNone;
  cudaGetLastError();
  if (!st &&
      cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->lb, p->la, p->lc, p->lc, pref, tune ? 8 : 1,
                                     res, &nres) != CUBLAS_STATUS_SUCCESS)
    nres = 0;
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!st && nres == 0) st = MX_ERR_UNSUPPORTED; /* the caller falls back to cuBLAS */
  int best = 0;
  if (!st && tune && nres > 1) {
    size_t wsz = 0;
    for (int i = 0; i < nres; i++) wsz = res[i].workspaceSize > wsz ? res[i].workspaceSize : wsz;
    mx__buffer *w = wsz ? mx__cuda_tmp(wsz) : NULL;
    if (wsz && !w) {
      mx_clear_error(); /* no room to tune: the first heuristic */
    } else {
      float bt = -1.f;
      for (int i = 0; i < nres; i++) {
        float t = lt_time(p, &res[i].algo, res[i].workspaceSize, alpha, beta, A, B, C,
                          w ? w->dptr : NULL, s);
        if (t >= 0.f && (bt < 0.f || t < bt)) bt = t, best = i;
      }
      mx__gpu_epoch_bump(); /* the stream was synchronised */
    }
    if (w) mx__buffer_release(w);
  }
  if (!st) {
    p->algo = res[best].algo;
    p->ws = res[best].workspaceSize;
    p->used = p != scratch;
    lt_log(key, &p->algo, p->ws, nres, best);
  } else {
    lt_plan_destroy(p);
    memset(p, 0, sizeof *p);
    if (st == MX_ERR_UNSUPPORTED && p != scratch) { /* remember: cuBLAS runs this shape */
      p->key = *key;
      p->used = p->none = true;
    }
  }
  pthread_mutex_unlock(&g_mu);
  *out = p;
  return st;
}

/* MXC_CUBLASLT=0: every product through cublasGemmStridedBatchedEx (A/B) */
static bool lt_enabled(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_CUBLASLT");
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r != 0;
}

static uint16_t ptr_align(const void *p) {
  uintptr_t a = (uintptr_t)p;
  uint16_t r = 256;
  while (r > 1 && a % r) r /= 2;
  return r;
}

/* C (m x n, row-major) = alpha * A B + beta * Cin with one cublasLtMatmul
 * (Cin NULL: C itself; else of C's layout); MX_ERR_UNSUPPORTED (no error
 * set): use cuBLAS instead. */
static int lt_matmul(cudaDataType_t ty, cublasComputeType_t ct, cublasOperation_t opa,
                     cublasOperation_t opb, int64_t m, int64_t n, int64_t k, const void *A,
                     int64_t lda, const void *B, int64_t ldb, void *C, int64_t ldc,
                     const void *alpha, const void *beta, bool beta_nz, const void *Cin) {
  lt_key key;
  memset(&key, 0, sizeof key);
  key.ty = (int32_t)ty, key.ct = (int32_t)ct, key.opa = (int32_t)opa, key.opb = (int32_t)opb;
  key.beta_nz = beta_nz, key.m = m, key.n = n, key.k = k;
  key.lda = lda, key.ldb = ldb, key.ldc = ldc;
  key.align_a = ptr_align(A), key.align_b = ptr_align(B), key.align_c = ptr_align(C);
  if (Cin && ptr_align(Cin) < key.align_c) key.align_c = ptr_align(Cin);
  lt_plan scratch, *p = NULL;
  int st = lt_plan_get(&key, &p, &scratch, alpha, beta, A, B, C);
  if (st) return st;
  mx__buffer *w = p->ws ? mx__cuda_tmp(p->ws) : NULL;
  if (p->ws && !w) st = mx_last_status();
  if (!st)
    st = cublas_check(cublasLtMatmul(g_lt, p->op, alpha, B, p->lb, A, p->la, beta,
                                     Cin ? Cin : C, p->lc, C, p->lc, &p->algo,
                                     w ? w->dptr : NULL, p->ws,
                                     mx__cuda_stream()),
                      "cublasLtMatmul");
  if (w) mx__buffer_release(w);
  if (p == &scratch) lt_plan_destroy(p);
  return st;
}

/* ---- dimensions that are not a multiple of 16 bytes ---------------------------------
 * cuBLAS(Lt) runs a product whose M, N or K is not a multiple of 8 (16-bit
 * types) on its slow kernels: an LM head with a vocabulary of 8,519 ran at
 * 90-145 TFLOP/s on an H200, against 800+ for 8,192 (dev/cuda/gemm_algos.cu),
 * and padding the leading dimensions alone does not help. For a large
 * product it is cheaper to copy the operands into zero-padded buffers
 * (multiples of 16 bytes in every dimension), multiply those, and copy the
 * result's M x N corner out; operands and results whose dimensions are
 * aligned already are used in place. MXC_GEMM_PAD_MIN: the least 2 M N K
 * for this (default 2^30; 0: always, for tests; -1: never). An H200
 * (bench_cuda_kernels "head"; M 32768, K 768): N 8,705 unpadded 3.1-4.7
 * ms a product, padded 1.08-1.19 ms, of which ~0.55 ms is the copies (an
 * aligned N of 8,704 takes 0.56-0.63 ms; padding to multiples of 64 or
 * 128 instead of 8 changes nothing). */
static double pad_min_flops(void) {
  const char *e = getenv("MXC_GEMM_PAD_MIN");
  return e && *e ? atof(e) : 1073741824.0;
}

/* blocks (x: column chunks, y: rows), no division per element */
template <class E>
__global__ void k_pad2d(E *__restrict__ dst, int64_t dld, const E *__restrict__ src, int64_t sld,
                        int64_t rows_s, int64_t cols_s, int64_t rows_d, int64_t cols_d) {
  MX_PDL_ENTRY();
  for (int64_t r = blockIdx.y; r < rows_d; r += gridDim.y) {
    E *d = dst + r * dld;
    const E *sr = src + r * sld;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols_d;
         c += (int64_t)gridDim.x * blockDim.x)
      d[c] = r < rows_s && c < cols_s ? sr[c] : E(0);
  }
}

static int pad2d(void *dst, int64_t dld, const void *src, int64_t sld, int64_t rows_s,
                 int64_t cols_s, int64_t rows_d, int64_t cols_d, size_t es) {
  const int th = 256; /* ~4 columns a thread, rows strided over at most 2048 block rows */
  const dim3 g((unsigned)MX_MAX(1, MX_MIN((cols_d + 4 * th - 1) / (4 * th), (int64_t)64)),
               (unsigned)MX_MAX(1, MX_MIN(rows_d, (int64_t)2048)));
  if (es == 2)
    mx__cuda_launch_pdl(k_pad2d<uint16_t>, g, dim3(th), 0, (uint16_t *)dst, dld,
                        (const uint16_t *)src, sld, rows_s, cols_s, rows_d, cols_d);
  else
    mx__cuda_launch_pdl(k_pad2d<uint32_t>, g, dim3(th), 0, (uint32_t *)dst, dld,
                        (const uint32_t *)src, sld, rows_s, cols_s, rows_d, cols_d);
  return mx__cuda_launched("matmul (padding)");
}

/* An operand of cnt runs of len contiguous elements at pitch *ld, copied
 * to cnt2 runs of len2 (zeros beyond); *ptr and *ld then describe it. */
static int pad_operand(const void **ptr, int *ld, int64_t len, int64_t cnt, int64_t len2,
                       int64_t cnt2, size_t es, mx__buffer **tmp) {
  if (len2 == len && cnt2 == cnt) return MX_OK; /* aligned already: used in place */
  *tmp = mx__cuda_tmp((size_t)(len2 * cnt2) * es);
  if (!*tmp) return mx_last_status();
  int st = pad2d((*tmp)->dptr, len2, *ptr, *ld, cnt, len, cnt2, len2, es);
  *ptr = (*tmp)->dptr;
  *ld = (int)len2;
  return st;
}

/* ---- GEMV: one row of f16/bf16 activations times a weight of contiguous
 * rows (x @ W^T of a Linear layer in decode) ------------------------------------------
 * A warp per output element: lanes take the 16-byte segments lane, lane +
 * 32, ... of the weight row (8 loads in flight) and of x (cache-resident),
 * accumulate in f32, and the warp adds its lanes with shuffles in a fixed
 * order. cuBLAS' M = 1 kernels reach ~60% of HBM bandwidth on these shapes
 * (with a split-K reduction launch on some). */
#define GV_WARPS 8
#define GV_BATCH 8 /* a 2048-wide bf16 row is 8 segments a lane: one batch */
template <class T>
__device__ __forceinline__ float gv_dot8(uint4 a, uint4 b, float acc) {
  const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    acc = fmaf(T::ld((uint16_t)(wa[i] & 0xffffu)), T::ld((uint16_t)(wb[i] & 0xffffu)), acc);
    acc = fmaf(T::ld((uint16_t)(wa[i] >> 16)), T::ld((uint16_t)(wb[i] >> 16)), acc);
  }
  return acc;
}

template <class T>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_gemv(const uint4 *__restrict__ w, const uint4 *__restrict__ x, typename T::S *__restrict__ o,
           int64_t N, int64_t K8, int64_t ldw8, bool pre) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
  const uint4 *wr = w + (row < N ? row : 0) * ldw8;
  uint4 a[GV_BATCH];
  int64_t s = lane;
  /* pre: the weight is settled (cuda_common.cuh), its first batch is read
   * while the kernel before this one (PDL) still runs */
  bool have = pre && row < N && s + 32 * (GV_BATCH - 1) < K8;
  if (have) {
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) a[u] = __ldg(wr + s + 32 * u);
  }
  MX_PDL_ENTRY();
  if (row >= N) return;
  float acc = 0.f;
  for (; s + 32 * (GV_BATCH - 1) < K8; s += 32 * GV_BATCH) { /* GV_BATCH loads in flight */
    if (!have) {
#pragma unroll
      for (int u = 0; u < GV_BATCH; u++) a[u] = __ldg(wr + s + 32 * u);
    }
    have = false;
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) acc = gv_dot8<T>(a[u], __ldg(x + s + 32 * u), acc);
  }
  for (; s < K8; s += 32) acc = gv_dot8<T>(__ldg(wr + s), __ldg(x + s), acc);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) o[row] = T::st(acc);
}

/* Rows longer than one batch a lane (K > 2048: the MLP's down projection)
 * split over P warps of the block, each with its own batch of loads in
 * flight (one warp walked its 8192-wide row in 4 dependent batches, ~1.9
 * TB/s on an H100); the P partial sums are added in order. */
template <class T, int P>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_gemv_split(const uint4 *__restrict__ w, const uint4 *__restrict__ x,
                 typename T::S *__restrict__ o, int64_t N, int64_t K8, int64_t ldw8, bool pre) {
  __shared__ float part[GV_WARPS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (GV_WARPS / P) + warp / P;
  const int64_t per = (K8 + P - 1) / P, s0 = (warp % P) * per;
  const int64_t s1 = s0 + per < K8 ? s0 + per : K8;
  const uint4 *wr = w + (row < N ? row : 0) * ldw8;
  uint4 a[GV_BATCH];
  int64_t s = s0 + lane;
  bool have = pre && row < N && s + 32 * (GV_BATCH - 1) < s1; /* see k_gemv */
  if (have) {
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) a[u] = __ldg(wr + s + 32 * u);
  }
  MX_PDL_ENTRY();
  float acc = 0.f;
  if (row < N) {
    for (; s + 32 * (GV_BATCH - 1) < s1; s += 32 * GV_BATCH) {
      if (!have) {
#pragma unroll
        for (int u = 0; u < GV_BATCH; u++) a[u] = __ldg(wr + s + 32 * u);
      }
      have = false;
#pragma unroll
      for (int u = 0; u < GV_BATCH; u++) acc = gv_dot8<T>(a[u], __ldg(x + s + 32 * u), acc);
    }
    for (; s < s1; s += 32) acc = gv_dot8<T>(__ldg(wr + s), __ldg(x + s), acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  if (threadIdx.x < GV_WARPS / P) {
    const int64_t r = (int64_t)blockIdx.x * (GV_WARPS / P) + threadIdx.x;
    float v = 0.f;
#pragma unroll
    for (int q = 0; q < P; q++) v += part[threadIdx.x * P + q];
    if (r < N) o[r] = T::st(v);
  }
}

/* out (1 x N) = a (1 x K) @ b (K x N) with b's K axis contiguous (W^T of a
 * row-major W); false: not this case (cuBLAS runs it). */
static bool gemv(mx_array *out, mx_array *a, mx_array *b, const mx__matmul_params *p, int *st) {
  mx_dtype dt = out->dtype;
  int nd = out->ndim;
  if ((dt != MX_BFLOAT16 && dt != MX_FLOAT16) || out->ninputs > 2 || p->alpha != 1.0 ||
      a->dtype != dt || b->dtype != dt || mx__shape_size(out->shape, nd) != out->shape[nd - 1])
    return false;
  int64_t N = out->shape[nd - 1], K = a->shape[a->ndim - 1];
  int64_t ks = b->strides[b->ndim - 2], ns = b->strides[b->ndim - 1];
  const char *ap = mx__ddata(a), *bp = mx__ddata(b);
  if (K < 8 || K % 8 || (K > 1 && ks != 1) || (N > 1 && (ns * 2) % 16) ||
      (a->strides[a->ndim - 1] != 1 && K > 1) || ((uintptr_t)ap & 15) || ((uintptr_t)bp & 15) ||
      N > (int64_t)GV_WARPS * 2147483647LL)
    return false;
  for (int d = 0; d < b->ndim - 2; d++) /* b's batch axes (all size 1 here) */
    if (b->shape[d] != 1) return false;
  unsigned nb = (unsigned)((N + GV_WARPS - 1) / GV_WARPS);
  const bool pre = mx__cuda_settled(b);
  const int64_t K8 = K / 8;
  if (K8 > 32 * GV_BATCH && N <= 2 * 2147483647LL) { /* split: 2 warps a row up to 4096, else 4 */
    const bool four = K8 > 2 * 32 * GV_BATCH;
    const int64_t rows = four ? GV_WARPS / 4 : GV_WARPS / 2;
    const unsigned nbs = (unsigned)((N + rows - 1) / rows);
    uint16_t *op = (uint16_t *)out->buf->dptr;
    const uint4 *wp = (const uint4 *)bp, *xp = (const uint4 *)ap;
    const dim3 bl(GV_WARPS * 32);
    if (dt == MX_BFLOAT16 && four)
      mx__cuda_launch_pdl(k_gemv_split<TBF16, 4>, nbs, bl, 0, wp, xp, op, N, K8, ns / 8, pre);
    else if (dt == MX_BFLOAT16)
      mx__cuda_launch_pdl(k_gemv_split<TBF16, 2>, nbs, bl, 0, wp, xp, op, N, K8, ns / 8, pre);
    else if (four)
      mx__cuda_launch_pdl(k_gemv_split<TF16, 4>, nbs, bl, 0, wp, xp, op, N, K8, ns / 8, pre);
    else
      mx__cuda_launch_pdl(k_gemv_split<TF16, 2>, nbs, bl, 0, wp, xp, op, N, K8, ns / 8, pre);
    *st = mx__cuda_launched("matmul");
    return true;
  }
  if (dt == MX_BFLOAT16)
    mx__cuda_launch_pdl(k_gemv<TBF16>, nb, GV_WARPS * 32, 0, (const uint4 *)bp,
                        (const uint4 *)ap, (uint16_t *)out->buf->dptr, N, K / 8, ns / 8, pre);
  else
    mx__cuda_launch_pdl(k_gemv<TF16>, nb, GV_WARPS * 32, 0, (const uint4 *)bp,
                        (const uint4 *)ap, (uint16_t *)out->buf->dptr, N, K / 8, ns / 8, pre);
  *st = mx__cuda_launched("matmul");
  return true;
}

/* ---- swiglu_linear (ops/fast_params.h): a decode step's gate/up projection
 * and swiglu in one kernel --------------------------------------------------------------
 * A warp per output j walks gate row j and up row I + j together (16
 * loads in flight a lane), as k_gemv walks one row: the same sums in the
 * same order, each rounded to the dtype, then swiglu's roundings, so the
 * result has the bits of the GEMV (K <= 2048; longer rows there split over
 * warps) followed by the swiglu kernel. */
template <class T>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_gemv_swiglu(const uint4 *__restrict__ w, const uint4 *__restrict__ x,
                  typename T::S *__restrict__ o, int64_t I, int64_t K8, int64_t ldw8, bool pre) {
  const int lane = threadIdx.x & 31;
  const int64_t j = (int64_t)blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
  const int64_t jr = j < I ? j : 0;
  const uint4 *wg = w + jr * ldw8, *wu = w + (jr + I) * ldw8, *xr = x + blockIdx.y * K8;
  uint4 a[GV_BATCH], b[GV_BATCH];
  int64_t s = lane;
  bool have = pre && j < I && s + 32 * (GV_BATCH - 1) < K8; /* see k_gemv */
  if (have) {
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) {
      a[u] = __ldg(wg + s + 32 * u);
      b[u] = __ldg(wu + s + 32 * u);
    }
  }
  MX_PDL_ENTRY();
  if (j >= I) return;
  float ag = 0.f, au = 0.f;
  for (; s + 32 * (GV_BATCH - 1) < K8; s += 32 * GV_BATCH) {
    if (!have) {
#pragma unroll
      for (int u = 0; u < GV_BATCH; u++) {
        a[u] = __ldg(wg + s + 32 * u);
        b[u] = __ldg(wu + s + 32 * u);
      }
    }
    have = false;
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) {
      const uint4 xv = __ldg(xr + s + 32 * u);
      ag = gv_dot8<T>(a[u], xv, ag);
      au = gv_dot8<T>(b[u], xv, au);
    }
  }
  for (; s < K8; s += 32) {
    const uint4 xv = __ldg(xr + s);
    ag = gv_dot8<T>(__ldg(wg + s), xv, ag);
    au = gv_dot8<T>(__ldg(wu + s), xv, au);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, off);
    au += __shfl_xor_sync(0xffffffffu, au, off);
  }
  if (lane == 0) o[blockIdx.y * I + j] = swiglu_round<T>(ag, au);
}

/* any float dtype and strides of w (x row-contiguous): a warp per output,
 * lanes over K */
template <class T>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_swiglu_linear_any(const typename T::S *__restrict__ w, const typename T::S *__restrict__ x,
                        typename T::S *__restrict__ o, int64_t I, int64_t K, int64_t ws0,
                        int64_t ws1) {
  typedef typename T::C X;
  const int lane = threadIdx.x & 31;
  const int64_t j = (int64_t)blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
  MX_PDL_ENTRY();
  if (j >= I) return;
  const typename T::S *xr = x + blockIdx.y * K;
  X ag = 0, au = 0;
  for (int64_t k = lane; k < K; k += 32) {
    const X xv = T::ld(xr[k]);
    ag += xv * T::ld(w[j * ws0 + k * ws1]);
    au += xv * T::ld(w[(j + I) * ws0 + k * ws1]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, off);
    au += __shfl_xor_sync(0xffffffffu, au, off);
  }
  if (lane == 0) o[blockIdx.y * I + j] = swiglu_round<T>(ag, au);
}

static int k_swiglu_linear(mx_array *out, mx_array **in) {
  mx_array *x = in[0], *w = in[1];
  const mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || x->dtype != dt || w->dtype != dt)
    return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t K = x->shape[x->ndim - 1], I = out->shape[out->ndim - 1], rows = out->size / I;
  if (rows > 65535) return mx__set_error(MX_ERR_UNSUPPORTED, "swiglu_linear: %lld rows on the "
                                         "GPU (at most 65,535)", (long long)rows);
  const size_t es = mx_dtype_size(dt);
  /* x as contiguous rows */
  const char *xp = (const char *)mx__ddata(x);
  mx__buffer *tmp = NULL;
  if (!x->row_contiguous) {
    if (!(tmp = mx__cuda_tmp(es * (size_t)(rows * K)))) return mx_last_status();
    int64_t cs[MX_MAX_NDIM], acc = 1;
    for (int d = x->ndim - 1; d >= 0; d--) cs[d] = acc, acc *= x->shape[d];
    st = mx__cuda_strided_copy((char *)tmp->dptr, cs, x->shape, x->ndim, x, "swiglu_linear");
    xp = (const char *)tmp->dptr;
  }
  const char *wp = (const char *)mx__ddata(w);
  const int64_t ws0 = w->strides[0], ws1 = w->strides[1];
  const dim3 grid((unsigned)((I + GV_WARPS - 1) / GV_WARPS), (unsigned)rows);
  const bool vec = (dt == MX_BFLOAT16 || dt == MX_FLOAT16) && K % 8 == 0 && K > 0 &&
                   (ws1 == 1 || K == 1) && (ws0 * 2) % 16 == 0 && !((uintptr_t)xp & 15) &&
                   !((uintptr_t)wp & 15) && grid.x <= 2147483647u;
  if (!st && vec) {
    const bool pre = mx__cuda_settled(w);
    if (dt == MX_BFLOAT16)
      mx__cuda_launch_pdl(k_gemv_swiglu<TBF16>, grid, GV_WARPS * 32, 0, (const uint4 *)wp,
                          (const uint4 *)xp, (uint16_t *)out->buf->dptr, I, K / 8, ws0 / 8, pre);
    else
      mx__cuda_launch_pdl(k_gemv_swiglu<TF16>, grid, GV_WARPS * 32, 0, (const uint4 *)wp,
                          (const uint4 *)xp, (uint16_t *)out->buf->dptr, I, K / 8, ws0 / 8, pre);
    st = mx__cuda_launched("swiglu_linear");
  } else if (!st) {
    st = MX_ERR_NO_KERNEL;
    MX_CUDA_DISPATCH_FLOAT(dt, {
      mx__cuda_launch_pdl(k_swiglu_linear_any<T>, grid, GV_WARPS * 32, 0, (const T::S *)wp,
                          (const T::S *)xp, (T::S *)out->buf->dptr, I, K, ws0, ws1);
      st = mx__cuda_launched("swiglu_linear");
    })
  }
  if (tmp) mx__buffer_release(tmp);
  return st;
}

/* ---- add_norm_linear (ops/fast_params.h): a decode step's residual add,
 * RMSNorm and the projection after it in one kernel ----------------------------------------
 * Each block first computes the whole normalised row as add_rms_norm's
 * vector kernel does (norm_row.cuh: the same code, so the same bits) into
 * shared memory; block 0 also writes the sum h. Then a warp per output
 * walks its weight row(s) as k_gemv / k_gemv_swiglu do, reading the row
 * from shared memory: the bits of add_rms_norm then the GEMV (or
 * swiglu_linear), without the norm's own launch. The weights' first batch
 * is read before the PDL wait (a settled weight). Rows of D <= 2048 16-bit
 * values (256 vectors, one a thread). */
template <class T, bool SW>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_gemv_norm(const uint4 *__restrict__ w, const uint4 *__restrict__ x,
                const uint4 *__restrict__ r, const uint4 *__restrict__ nw,
                typename T::S *__restrict__ o, int64_t M, int nv, int64_t ldw8, float eps,
                bool pre) {
  __shared__ float sh[32];
  __shared__ uint4 xs[GV_WARPS * 32];
  const int lane = threadIdx.x & 31, t = threadIdx.x;
  const int64_t j = (int64_t)blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
  const int64_t jr = j < M ? j : 0, K8 = nv, D = 8 * (int64_t)nv, row = blockIdx.y;
  const uint4 *wg = w + jr * ldw8, *wu = SW ? w + (jr + M) * ldw8 : wg;
  uint4 a[GV_BATCH], b[GV_BATCH];
  int64_t s = lane;
  bool have = pre && j < M && s + 32 * (GV_BATCH - 1) < K8; /* see k_gemv */
  if (have) {
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) {
      a[u] = __ldg(wg + s + 32 * u);
      if (SW) b[u] = __ldg(wu + s + 32 * u);
    }
  }
  MX_PDL_ENTRY();
  uint4 hp, np;
  add_norm_row<T, 8>(x + row * nv, r + row * nv, nw, nv, eps, sh, &hp, &np);
  typename T::S *orow = o + row * (D + M);
  if (t < nv) {
    xs[t] = np;
    if (blockIdx.x == 0) {
      const uint32_t hw[4] = {hp.x, hp.y, hp.z, hp.w};
#pragma unroll
      for (int i = 0; i < 4; i++) {
        orow[8 * t + 2 * i] = (typename T::S)(hw[i] & 0xffffu);
        orow[8 * t + 2 * i + 1] = (typename T::S)(hw[i] >> 16);
      }
    }
  }
  __syncthreads();
  if (j >= M) return;
  float ag = 0.f, au = 0.f;
  for (; s + 32 * (GV_BATCH - 1) < K8; s += 32 * GV_BATCH) {
    if (!have) {
#pragma unroll
      for (int u = 0; u < GV_BATCH; u++) {
        a[u] = __ldg(wg + s + 32 * u);
        if (SW) b[u] = __ldg(wu + s + 32 * u);
      }
    }
    have = false;
#pragma unroll
    for (int u = 0; u < GV_BATCH; u++) {
      const uint4 xv = xs[s + 32 * u];
      ag = gv_dot8<T>(a[u], xv, ag);
      if (SW) au = gv_dot8<T>(b[u], xv, au);
    }
  }
  for (; s < K8; s += 32) {
    const uint4 xv = xs[s];
    ag = gv_dot8<T>(__ldg(wg + s), xv, ag);
    if (SW) au = gv_dot8<T>(__ldg(wu + s), xv, au);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, off);
    if (SW) au += __shfl_xor_sync(0xffffffffu, au, off);
  }
  if (lane == 0) orow[D + j] = SW ? swiglu_round<T>(ag, au) : T::st(ag);
}

/* Any float dtype, D and strides of the weights (x and r as contiguous
 * rows): each block normalises the row into shared memory (compute type
 * C), then a warp per output, lanes over D. */
template <class T, bool SW>
__global__ void __launch_bounds__(GV_WARPS * 32)
    k_add_norm_linear_any(const typename T::S *__restrict__ w, const typename T::S *__restrict__ x,
                          const typename T::S *__restrict__ r, const typename T::S *__restrict__ nw,
                          int64_t nws, typename T::S *__restrict__ o, int64_t M, int64_t D,
                          int64_t ws0, int64_t ws1, double eps) {
  typedef typename T::C X;
  extern __shared__ __align__(16) unsigned char anl_sm[];
  X *nrow = (X *)anl_sm;
  __shared__ X sh[32];
  const int lane = threadIdx.x & 31;
  const int64_t j = (int64_t)blockIdx.x * GV_WARPS + (threadIdx.x >> 5), row = blockIdx.y;
  MX_PDL_ENTRY();
  typename T::S *orow = o + row * (D + M);
  add_norm_row_any<T>(x + row * D, r + row * D, nw, nws, D, eps, blockIdx.x == 0 ? orow : NULL,
                      nrow, sh);
  if (j >= M) return;
  X ag = 0, au = 0;
  for (int64_t k = lane; k < D; k += 32) {
    ag += nrow[k] * T::ld(w[j * ws0 + k * ws1]);
    if (SW) au += nrow[k] * T::ld(w[(j + M) * ws0 + k * ws1]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, off);
    if (SW) au += __shfl_xor_sync(0xffffffffu, au, off);
  }
  if (lane == 0) orow[D + j] = SW ? swiglu_round<T>(ag, au) : T::st(ag);
}

template <class T, bool SW>
static int anl_any(mx_array *out, const char *wp, const char *xp, const char *rp, mx_array *nw,
                   int64_t M, int64_t D, int64_t rows, int64_t ws0, int64_t ws1, double eps) {
  const size_t smem = sizeof(typename T::C) * (size_t)D;
  if (smem > 200 * 1024)
    return mx__set_error(MX_ERR_UNSUPPORTED, "add_norm_linear: rows of %lld on the GPU (at most "
                         "%d)", (long long)D, (int)(200 * 1024 / sizeof(typename T::C)));
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(k_add_norm_linear_any<T, SW>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
    return mx__cuda_launched("add_norm_linear");
  const dim3 grid((unsigned)((M + GV_WARPS - 1) / GV_WARPS), (unsigned)rows);
  mx__cuda_launch_pdl(k_add_norm_linear_any<T, SW>, grid, GV_WARPS * 32, smem,
                      (const typename T::S *)wp, (const typename T::S *)xp,
                      (const typename T::S *)rp, (const typename T::S *)mx__ddata(nw),
                      nw->strides[0], (typename T::S *)out->buf->dptr, M, D, ws0, ws1, eps);
  return mx__cuda_launched("add_norm_linear");
}

int mx__cuda_add_norm_qlinear(mx_array *out, mx_array **in); /* qmv.cu */

static int k_add_norm_linear(mx_array *out, mx_array **in) {
  const mx__add_norm_linear_params *p = MX__PARAMS(out, mx__add_norm_linear_params);
  if (p->bits) return mx__cuda_add_norm_qlinear(out, in);
  mx_array *x = in[0], *r = in[1], *nw = in[2], *w = in[3];
  const mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || x->dtype != dt || r->dtype != dt || nw->dtype != dt ||
      w->dtype != dt)
    return mx__cuda_no_dtype(out, x->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t D = x->shape[x->ndim - 1], M = out->shape[out->ndim - 1] - D;
  const int64_t rows = x->size / D;
  if (rows > 65535)
    return mx__set_error(MX_ERR_UNSUPPORTED, "add_norm_linear: %lld rows on the GPU (at most "
                         "65,535)", (long long)rows);
  const size_t es = mx_dtype_size(dt);
  /* x and r as contiguous rows */
  mx__buffer *tb[2] = {NULL, NULL};
  const char *src[2];
  mx_array *xr[2] = {x, r};
  for (int i = 0; i < 2 && !st; i++) {
    if (xr[i]->row_contiguous) {
      src[i] = mx__ddata(xr[i]);
      continue;
    }
    if (!(tb[i] = mx__cuda_tmp(es * (size_t)x->size))) st = mx_last_status();
    else if (!(st = mx__cuda_copy_to_contiguous(xr[i], tb[i]->dptr))) src[i] = (const char *)tb[i]->dptr;
  }
  const char *wp = mx__ddata(w);
  const int64_t ws0 = w->strides[0], ws1 = w->strides[1];
  const unsigned gx = (unsigned)((M + GV_WARPS - 1) / GV_WARPS);
  const bool vec = !st && (dt == MX_BFLOAT16 || dt == MX_FLOAT16) && D % 8 == 0 &&
                   D / 8 <= GV_WARPS * 32 && ws1 == 1 && (ws0 * 2) % 16 == 0 &&
                   nw->strides[0] == 1 && !((uintptr_t)src[0] & 15) &&
                   !((uintptr_t)src[1] & 15) && !((uintptr_t)mx__ddata(nw) & 15) &&
                   !((uintptr_t)wp & 15) && (M + GV_WARPS - 1) / GV_WARPS <= 2147483647LL;
  if (vec) {
    const bool pre = mx__cuda_settled(w);
    const dim3 grid(gx, (unsigned)rows);
    const uint4 *w4 = (const uint4 *)wp, *x4 = (const uint4 *)src[0], *r4 = (const uint4 *)src[1];
    const uint4 *n4 = (const uint4 *)mx__ddata(nw);
    uint16_t *op = (uint16_t *)out->buf->dptr;
    const int nv = (int)(D / 8);
    const float eps = (float)p->eps;
#define ANL(TAG, SWV)                                                                        \
  mx__cuda_launch_pdl(k_gemv_norm<TAG, SWV>, grid, GV_WARPS * 32, 0, w4, x4, r4, n4, op, M, nv, \
                      ws0 / 8, eps, pre)
    if (dt == MX_BFLOAT16) {
      if (p->swiglu) ANL(TBF16, true);
      else ANL(TBF16, false);
    } else {
      if (p->swiglu) ANL(TF16, true);
      else ANL(TF16, false);
    }
#undef ANL
    st = mx__cuda_launched("add_norm_linear");
  } else if (!st) {
    st = MX_ERR_NO_KERNEL;
    MX_CUDA_DISPATCH_FLOAT(dt, {
      st = p->swiglu ? anl_any<T, true>(out, wp, src[0], src[1], nw, M, D, rows, ws0, ws1, p->eps)
                     : anl_any<T, false>(out, wp, src[0], src[1], nw, M, D, rows, ws0, ws1, p->eps);
    })
  }
  for (int i = 0; i < 2; i++)
    if (tb[i]) mx__buffer_release(tb[i]); /* reused only by later work of the stream */
  return st;
}

static int k_matmul(mx_array *out, mx_array **in) {
  const mx__matmul_params *p = MX__PARAMS(out, mx__matmul_params);
  mx_array *a = in[0], *b = in[1], *c = out->ninputs > 2 ? in[2] : NULL;
  mx_dtype dt = out->dtype;
  cudaDataType_t ty;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
  switch (dt) {
    case MX_FLOAT32:
      ty = CUDA_R_32F;
      if (p->tf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case MX_FLOAT16: ty = CUDA_R_16F; break;
    case MX_BFLOAT16: ty = CUDA_R_16BF; break;
    case MX_FLOAT64: ty = CUDA_R_64F; ct = CUBLAS_COMPUTE_64F; break;
    default: return mx__cuda_no_dtype(out, dt);
  }
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int nd = out->ndim, nb = nd - 2;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[nd - 1];
  int64_t nbatch = mx__shape_size(out->shape, nb);
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX || nbatch > INT_MAX)
    return mx__set_error(MX_ERR_UNSUPPORTED, "matmul: dimensions too large for cuBLAS");
  if (M == 1 && nbatch == 1 && gemv(out, a, b, p, &st)) return st;
  double beta = 0;
  /* addmm: a row-major c goes to cuBLASLt as its C (read in the epilogue,
   * no copy); any other c is copied into the result first */
  const void *cin = NULL;
  if (c) {
    beta = p->beta;
    if (nbatch == 1 && dt != MX_FLOAT64 && K > 0 && lt_enabled() && c->strides[nd - 1] == 1 &&
        (M == 1 || c->strides[nd - 2] == N))
      cin = mx__ddata(c);
    else if ((st = mx__cuda_strided_copy((char *)out->buf->dptr, out->strides, out->shape, nd, c,
                                         "matmul")))
      return st;
  }
  cublasHandle_t h;
  if ((st = handle(&h))) return st;
  mx__buffer *ta = NULL, *tb = NULL, *ta2 = NULL, *tb2 = NULL;
  operand A, B;
  st = prepare(&A, a, nd, out->shape, nbatch, &ta);
  if (!st) st = prepare(&B, b, nd, out->shape, nbatch, &tb);
  if (!st) {
    /* column-major C^T (N x M) = B^T (N x K) * A^T (K x M) */
    cublasOperation_t opb, opa;
    int ldb_, lda_;
    if (B.cs == 1) opb = CUBLAS_OP_N, ldb_ = (int)B.rs;
    else opb = CUBLAS_OP_T, ldb_ = (int)B.cs;
    if (A.cs == 1) opa = CUBLAS_OP_N, lda_ = (int)A.rs;
    else opa = CUBLAS_OP_T, lda_ = (int)A.cs;
    if (K == 0) {
      opb = opa = CUBLAS_OP_N;
      ldb_ = (int)MX_MAX(1, N);
      lda_ = 1;
    }
    float af = (float)p->alpha, bf = (float)beta;
    double ad = p->alpha, bd = beta;
    const void *alpha = dt == MX_FLOAT64 ? (const void *)&ad : (const void *)&af;
    const void *betap = dt == MX_FLOAT64 ? (const void *)&bd : (const void *)&bf;
    st = MX_ERR_UNSUPPORTED;
    const size_t es = mx_dtype_size(dt);
    const void *pa = A.ptr, *pb = B.ptr;
    void *pc = out->buf->dptr;
    int ldc_ = (int)MX_MAX(1, N);
    mx__buffer *tc = NULL;
    const double padmin = nbatch == 1 && dt != MX_FLOAT64 && K > 0 && beta == 0 ? pad_min_flops() : -1;
    const int64_t al = (int64_t)(16 / es);
    int64_t M2 = M, N2 = N, K2 = K;
    if (padmin >= 0 && 2.0 * (double)M * (double)N * (double)K >= padmin &&
        (M % al || N % al || K % al)) {
      M2 = (M + al - 1) / al * al, N2 = (N + al - 1) / al * al, K2 = (K + al - 1) / al * al;
      /* runs: op N -> the row-major matrix's rows, op T -> its columns */
      int rc = opa == CUBLAS_OP_N ? pad_operand(&pa, &lda_, K, M, K2, M2, es, &ta2)
                                  : pad_operand(&pa, &lda_, M, K, M2, K2, es, &ta2);
      if (!rc)
        rc = opb == CUBLAS_OP_N ? pad_operand(&pb, &ldb_, N, K, N2, K2, es, &tb2)
                                : pad_operand(&pb, &ldb_, K, N, K2, N2, es, &tb2);
      if (!rc && (M2 != M || N2 != N)) { /* else the result is written in place */
        tc = mx__cuda_tmp((size_t)(M2 * N2) * es);
        if (!tc) rc = mx_last_status();
        else pc = tc->dptr, ldc_ = (int)N2;
      }
      if (rc) st = rc;
    }
    if (st == MX_ERR_UNSUPPORTED && nbatch == 1 && dt != MX_FLOAT64 && K > 0 && lt_enabled())
      st = lt_matmul(ty, ct, opa, opb, M2, N2, K2, pa, lda_, pb, ldb_, pc, ldc_, alpha, betap,
                     beta != 0, cin);
    if (st == MX_ERR_UNSUPPORTED && cin) { /* cuBLAS reads c from the result */
      int cs = mx__cuda_strided_copy((char *)out->buf->dptr, out->strides, out->shape, nd, c,
                                     "matmul");
      if (cs) st = cs;
    }
    const bool padded = M2 != M || N2 != N || K2 != K;
    if (st == MX_ERR_UNSUPPORTED && padded)
      st = cublas_check(cublasGemmEx(h, opb, opa, (int)N2, (int)M2, (int)K2, alpha, pb, ty, ldb_,
                                     pa, ty, lda_, betap, pc, ty, ldc_, ct, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
    if (!st && tc) st = pad2d(out->buf->dptr, N, pc, ldc_, M, N, M, N, es);
    if (tc) mx__buffer_release(tc); /* reused only by later work of the stream */
    if (st == MX_ERR_UNSUPPORTED)
      st = cublas_check(
        cublasGemmStridedBatchedEx(h, opb, opa, (int)N, (int)M, (int)K, alpha, B.ptr, ty, ldb_,
                                   B.bs, A.ptr, ty, lda_, A.bs, betap, out->buf->dptr, ty,
                                   (int)MX_MAX(1, N), M * N, (int)nbatch, ct, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
  }
  if (ta) mx__buffer_release(ta);
  if (tb) mx__buffer_release(tb);
  if (ta2) mx__buffer_release(ta2);
  if (tb2) mx__buffer_release(tb2);
  return st;
}

void mx__cuda_register_linalg(mx__kernel_fn *k) {
  k[MX_OP_MATMUL] = k_matmul;
  k[MX_OP_SWIGLU_LINEAR] = k_swiglu_linear;
  k[MX_OP_ADD_NORM_LINEAR] = k_add_norm_linear;
}
