/* gemm_space.cu — the cuBLASLt configuration space for the small-M bf16
 * GEMMs of a 512-token prefill (1B model), beyond the heuristic's list:
 * every algorithm id, tile, stage count and split-K factor that
 * cublasLtMatmulAlgoCheck accepts, each timed as the mean of back-to-back
 * launches (no launch gaps: closer to a forward's conditions than one
 * synchronised call). Prints the heuristic's first choice and the 8
 * fastest configurations per shape.
 *
 *   nvcc -O2 -o /tmp/gemm_space dev/cuda/gemm_space.cu -lcublasLt
 *   /tmp/gemm_space [reps]
 *
 * A developer tool: it prints a table, nothing else. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dev_check.h"


struct Shape {
  const char *name;
  int M, N, K; /* a Linear's forward: x (M x K), W (N x K), y (M x N) */
};

struct Cand {
  cublasLtMatmulAlgo_t algo;
  int id, tile, stages, splitk, red, heur;
  float us;
};

static float cfg_u32(const cublasLtMatmulAlgo_t &a, cublasLtMatmulAlgoConfigAttributes_t at) {
  uint32_t v = 0;
  size_t n = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, at, &v, sizeof v, &n);
  return (float)v;
}

int main(int argc, char **argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 40;
  const Shape shapes[] = {{"qkv P512", 512, 3072, 2048},
                          {"o P512", 512, 2048, 2048},
                          {"gate/up P512", 512, 16384, 2048},
                          {"down P512", 512, 2048, 8192},
                          {"qkv P2048", 2048, 3072, 2048},
                          {"o P2048", 2048, 2048, 2048}};
  cublasLtHandle_t lt;
  CK(cublasLtCreate(&lt));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  size_t wsz = 32u << 20;
  void *ws;
  CK(cudaMalloc(&ws, wsz));
  const size_t maxe = (size_t)16384 * 8192;
  __nv_bfloat16 *a, *b, *c;
  CK(cudaMalloc(&a, maxe * 2));
  CK(cudaMalloc(&b, maxe * 2));
  CK(cudaMalloc(&c, maxe * 2));
  CK(cudaMemset(a, 0x3c, maxe * 2));
  CK(cudaMemset(b, 0x3c, maxe * 2));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const cudaDataType_t bf = CUDA_R_16BF;
  const int sk_list[] = {1, 2, 3, 4, 6, 8};
  for (const Shape &sh : shapes) {
    /* column-major: C (N x M) = W^T-as-stored (op T on K x N) times x (K x M) */
    const int m = sh.N, n = sh.M, k = sh.K;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDesc_t op;
    CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, bf, k, m, k));
    CK(cublasLtMatrixLayoutCreate(&lb, bf, k, n, k));
    CK(cublasLtMatrixLayoutCreate(&lc, bf, m, n, m));
    float one = 1.f, zero = 0.f;
    const double flops = 2.0 * m * n * k;
    auto time_it = [&](const cublasLtMatmulAlgo_t &al) -> float {
      for (int i = 0; i < 3; i++)
        if (cublasLtMatmul(lt, op, &one, b, la, a, lb, &zero, c, lc, c, lc, &al, ws, wsz, s))
          return 1e30f;
      CK(cudaEventRecord(e0, s));
      for (int i = 0; i < reps; i++)
        cublasLtMatmul(lt, op, &one, b, la, a, lb, &zero, c, lc, c, lc, &al, ws, wsz, s);
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      return ms * 1000.f / reps;
    };
    std::vector<Cand> all;
    /* the heuristic's list */
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                            sizeof wsz));
    cublasLtMatmulHeuristicResult_t res[32];
    int nres = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, res, &nres));
    for (int i = 0; i < nres; i++) {
      Cand cd{res[i].algo, (int)cfg_u32(res[i].algo, CUBLASLT_ALGO_CONFIG_ID),
              (int)cfg_u32(res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
              (int)cfg_u32(res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
              (int)cfg_u32(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
              (int)cfg_u32(res[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME), i, 0};
      cd.us = time_it(cd.algo);
      all.push_back(cd);
    }
    const float heur0 = all.empty() ? 0 : all[0].us;
    /* every algorithm id x tile x split-K (stages: the algorithm's default) */
    int ids[256], nid = 0;
    CK(cublasLtMatmulAlgoGetIds(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, bf, bf, bf, bf, 256, ids, &nid));
    int tried = 0, valid = 0;
    for (int ii = 0; ii < nid; ii++) {
      cublasLtMatmulAlgo_t al;
      if (cublasLtMatmulAlgoInit(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, bf, bf, bf, bf, ids[ii], &al))
        continue;
      size_t sz = 0;
      cublasLtMatmulAlgoCapGetAttribute(&al, CUBLASLT_ALGO_CAP_TILE_IDS, NULL, 0, &sz);
      std::vector<uint32_t> tiles(sz / sizeof(uint32_t) + 1, 0);
      if (sz) cublasLtMatmulAlgoCapGetAttribute(&al, CUBLASLT_ALGO_CAP_TILE_IDS, tiles.data(), sz, &sz);
      int ntile = (int)(sz / sizeof(uint32_t));
      if (ntile == 0) ntile = 1;
      int32_t sk_ok = 0;
      cublasLtMatmulAlgoCapGetAttribute(&al, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &sk_ok, sizeof sk_ok, &sz);
      for (int ti = 0; ti < ntile; ti++) {
        for (int si = 0; si < (sk_ok ? 6 : 1); si++) {
          for (int red = 0; red < (sk_list[si] > 1 ? 3 : 1); red++) {
            cublasLtMatmulAlgo_t x = al;
            uint32_t tile = tiles[ti], skn = (uint32_t)sk_list[si];
            uint32_t rs = sk_list[si] > 1 ? (red == 0 ? CUBLASLT_REDUCTION_SCHEME_INPLACE
                                             : red == 1 ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                                        : CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE)
                                          : CUBLASLT_REDUCTION_SCHEME_NONE;
            cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile);
            cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &skn, sizeof skn);
            cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &rs, sizeof rs);
            cublasLtMatmulHeuristicResult_t chk;
            tried++;
            if (cublasLtMatmulAlgoCheck(lt, op, la, lb, lc, lc, &x, &chk)) continue;
            if (chk.workspaceSize > wsz) continue;
            valid++;
            Cand cd{x, ids[ii], (int)tile, 0, (int)skn, (int)rs, -1, 0};
            cd.us = time_it(x);
            all.push_back(cd);
          }
        }
      }
    }
    std::sort(all.begin(), all.end(), [](const Cand &p, const Cand &q) { return p.us < q.us; });
    printf("\n== %s: M %d N %d K %d; heuristic #0 %.2f us (%.0f TFLOP/s); %d configurations "
           "tried, %d valid\n",
           sh.name, sh.M, sh.N, sh.K, heur0, flops / heur0 * 1e-6, tried, valid);
    printf("| rank | us | TFLOP/s | algo id | tile id | split-K | reduction | heuristic # |\n");
    for (int i = 0; i < (int)all.size() && i < 8; i++)
      printf("| %d | %.2f | %.0f | %d | %d | %d | %d | %d |\n", i, all[i].us,
             flops / all[i].us * 1e-6, all[i].id, all[i].tile, all[i].splitk, all[i].red,
             all[i].heur);
    fflush(stdout);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
  }
  return 0;
}
