/* gemm_algos.cu — how far cuBLAS' default algorithm is from the best
 * cuBLASLt offers, for the bf16 GEMMs of mxc's prefill and training.
 *
 *   nvcc -O2 -o /tmp/gemm_algos dev/cuda/gemm_algos.cu -lcublasLt -lcublas
 *   /tmp/gemm_algos [iters]
 *
 * For each shape (a Linear layer's forward y = x W^T, its dX = dY W and its
 * dW = dY^T x, M tokens): cublasGemmEx with CUBLAS_GEMM_DEFAULT (what mxc's
 * matmul called), cuBLASLt's first heuristic, and the fastest of up to 16
 * heuristic candidates (32 MiB workspace), each the median of `iters`
 * timed runs. A developer tool: it prints a table, nothing else. */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dev_check.h"


struct Shape {
  const char *name;
  int M, N, K; /* Linear: x (M x K), W (N x K) */
  int kind;    /* 0 forward, 1 dX, 2 dW, 3 dW^T (a tied embedding's gradient as mxc forms it) */
  int pad;     /* leading dimensions equal to N rounded up to 16 bytes */
};

static float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 20;
  const Shape shapes[] = {
      {"1B qkv   P512", 512, 3072, 2048, 0},   {"1B o     P512", 512, 2048, 2048, 0},
      {"1B gu    P512", 512, 16384, 2048, 0},  {"1B down  P512", 512, 2048, 8192, 0},
      {"1B head  P512", 1, 128256, 2048, 0},   {"1B qkv   P2048", 2048, 3072, 2048, 0},
      {"1B o     P2048", 2048, 2048, 2048, 0}, {"1B gu    P2048", 2048, 16384, 2048, 0},
      {"1B down  P2048", 2048, 2048, 8192, 0}, {"91M q    fwd", 32768, 768, 768, 0},
      {"91M q    dX", 32768, 768, 768, 1},     {"91M q    dW", 32768, 768, 768, 2},
      {"91M up   fwd", 32768, 2048, 768, 0},   {"91M up   dX", 32768, 2048, 768, 1},
      {"91M up   dW", 32768, 2048, 768, 2},    {"91M down fwd", 32768, 768, 2048, 0},
      {"91M down dX", 32768, 768, 2048, 1},    {"91M down dW", 32768, 768, 2048, 2},
      {"91M head fwd", 32768, 32768, 768, 0},  {"91M head dX", 32768, 32768, 768, 1},
      {"91M head dW", 32768, 32768, 768, 2},
      /* a vocabulary of 8,519: rows of 17,038 bytes, and padded to 8,520 */
      {"V8519 head fwd", 32768, 8519, 768, 0},     {"V8519 head fwd pad", 32768, 8519, 768, 0, 1},
      {"V8519 head dX", 32768, 8519, 768, 1},      {"V8519 head dX pad", 32768, 8519, 768, 1, 1},
      {"V8519 head dW^T", 32768, 8519, 768, 3},    {"V8519 head dW^T pad", 32768, 8519, 768, 3, 1},
  };
  cublasHandle_t h;
  cublasLtHandle_t lt;
  CK(cublasCreate(&h));
  CK(cublasLtCreate(&lt));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  CK(cublasSetStream(h, s));
  size_t wsz = 32u << 20;
  void *ws;
  CK(cudaMalloc(&ws, wsz));
  size_t maxe = 0;
  for (const Shape &sh : shapes) {
    maxe = std::max(maxe, (size_t)sh.M * (sh.K + 8));
    maxe = std::max(maxe, (size_t)sh.M * (sh.N + 8));
    maxe = std::max(maxe, (size_t)sh.N * sh.K);
    maxe = std::max(maxe, (size_t)sh.M * sh.N);
  }
  __nv_bfloat16 *a, *b, *c;
  CK(cudaMalloc(&a, maxe * 2));
  CK(cudaMalloc(&b, maxe * 2));
  CK(cudaMalloc(&c, maxe * 2));
  CK(cudaMemset(a, 0x3c, maxe * 2));
  CK(cudaMemset(b, 0x3c, maxe * 2));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  printf("| shape | M | N | K | default us | TF/s | Lt #0 us | best Lt us | best # | TF/s | of n |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Shape &sh : shapes) {
    /* column-major C (m x n) = op(A) (m x k) op(B) (k x n) */
    int m, n, k, lda, ldb, ldc;
    cublasOperation_t ta, tb;
    if (sh.kind == 0) m = sh.N, n = sh.M, k = sh.K, ta = CUBLAS_OP_T, tb = CUBLAS_OP_N, lda = sh.K, ldb = sh.K, ldc = sh.N;
    else if (sh.kind == 1) m = sh.K, n = sh.M, k = sh.N, ta = CUBLAS_OP_N, tb = CUBLAS_OP_N, lda = sh.K, ldb = sh.N, ldc = sh.K;
    else if (sh.kind == 2) m = sh.K, n = sh.N, k = sh.M, ta = CUBLAS_OP_N, tb = CUBLAS_OP_T, lda = sh.K, ldb = sh.N, ldc = sh.K;
    else m = sh.N, n = sh.K, k = sh.M, ta = CUBLAS_OP_N, tb = CUBLAS_OP_T, lda = sh.N, ldb = sh.K, ldc = sh.N;
    if (sh.pad) {
      const int p8 = (sh.N + 7) / 8 * 8;
      if (lda == sh.N) lda = p8;
      if (ldb == sh.N) ldb = p8;
      if (ldc == sh.N) ldc = p8;
    }
    float one = 1.f, zero = 0.f;
    double flops = 2.0 * m * n * k;
    auto time_it = [&](auto fn) {
      for (int i = 0; i < 3; i++) fn();
      std::vector<float> t;
      for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(e0, s));
        fn();
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms * 1000.f);
      }
      return median(t);
    };
    float tdef = time_it([&] {
      CK(cublasGemmEx(h, ta, tb, m, n, k, &one, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &zero, c,
                      CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    cublasLtMatmulDesc_t op;
    CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, m, n, ldc));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz));
    cublasLtMatmulHeuristicResult_t res[16];
    int nres = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &nres));
    float t0 = 0, best = 1e30f;
    int bi = -1;
    for (int i = 0; i < nres; i++) {
      float t = time_it([&] {
        CK(cublasLtMatmul(lt, op, &one, a, la, b, lb, &zero, c, lc, c, lc, &res[i].algo, ws, wsz, s));
      });
      if (i == 0) t0 = t;
      if (t < best) best = t, bi = i;
    }
    printf("| %s | %d | %d | %d | %.1f | %.0f | %.1f | %.1f | %d | %.0f | %d |\n", sh.name, sh.M, sh.N,
           sh.K, tdef, flops / tdef * 1e-6, t0, best, bi, flops / best * 1e-6, nres);
    fflush(stdout);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
  }
  { /* the pitched copy a padded operand costs: 32768 rows of 8,519 bf16 */
    const size_t w = 8519 * 2, sp = 8519 * 2, dp = 8520 * 2, rows = 32768;
    for (int i = 0; i < 3; i++)
      CK(cudaMemcpy2DAsync(b, dp, a, sp, w, rows, cudaMemcpyDeviceToDevice, s));
    CK(cudaEventRecord(e0, s));
    for (int i = 0; i < 10; i++)
      CK(cudaMemcpy2DAsync(b, dp, a, sp, w, rows, cudaMemcpyDeviceToDevice, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    printf("cudaMemcpy2DAsync 32768 x 17038 B -> pitch 17040: %.1f us (%.0f GB/s)\n", ms * 100.f,
           2.0 * w * rows / (ms / 10 * 1e-3) * 1e-9);
  }
  return 0;
}
