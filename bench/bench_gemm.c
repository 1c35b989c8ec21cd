/* bench_gemm.c — mx_matmul GFLOP/s next to OpenBLAS called directly.
 *
 *   bench_gemm [threads...]        (default: 1 2)
 *
 * For each shape and thread count: mxc f32 (graph build + eval of one
 * matmul on evaluated inputs) against cblas_sgemm on the same buffers, and
 * mxc bf16 against the same sgemm on f32 data (this OpenBLAS has no bf16
 * GEMM, so that is the ceiling: mxc bf16 pays for widening or runs its own
 * f32-accumulating kernel). Best of several runs; prints a Markdown table.
 * "W^T" shapes are x @ W.T with W stored (N, K), the linear-layer layout. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/mxc.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
  const char *name;
  int64_t batch, M, K, N;
  int wt; /* b is W^T: W stored (N, K) */
} shape;

static mx_array *rand_array(const int64_t *shape_, int nd, mx_dtype dt) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape_[i];
  float *v = malloc(sizeof(float) * (size_t)n);
  uint64_t s = 12345;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = (float)((double)(s >> 40) / 16777216.0 - 0.5);
  }
  mx_array *f = mx_array_from_data(v, shape_, nd, MX_FLOAT32);
  free(v);
  mx_array *a = mx_astype(f, dt);
  mx_array_eval(a);
  mx_array_free(f);
  return a;
}

/* Seconds per call, best of `reps` after one warm-up. */
static double time_mxc(mx_array *a, mx_array *b, int reps) {
  double best = 1e30;
  for (int r = 0; r <= reps; r++) {
    double t0 = now();
    mx_array *c = mx_matmul(a, b);
    if (!c || mx_array_eval(c)) {
      fprintf(stderr, "bench_gemm: %s\n", mx_last_error());
      exit(1);
    }
    double t = now() - t0;
    mx_array_free(c);
    if (r && t < best) best = t;
  }
  return best;
}

static double time_blas(const shape *s, const float *A, const float *B, float *C, int reps) {
  double best = 1e30;
  for (int r = 0; r <= reps; r++) {
    double t0 = now();
    for (int64_t i = 0; i < s->batch; i++) {
      const float *Ai = A + i * s->M * s->K;
      const float *Bi = s->wt ? B : B + i * s->K * s->N;
      float *Ci = C + i * s->M * s->N;
      if (s->wt)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s->M, (int)s->N, (int)s->K, 1.0f,
                    Ai, (int)s->K, Bi, (int)s->K, 0.0f, Ci, (int)s->N);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)s->M, (int)s->N, (int)s->K,
                    1.0f, Ai, (int)s->K, Bi, (int)s->N, 0.0f, Ci, (int)s->N);
    }
    double t = now() - t0;
    if (r && t < best) best = t;
  }
  return best;
}

int main(int argc, char **argv) {
  int threads[8] = {1, 2}, nthreads = 2;
  if (argc > 1) {
    nthreads = 0;
    for (int i = 1; i < argc && nthreads < 8; i++) threads[nthreads++] = atoi(argv[i]);
  }
  const shape shapes[] = {
      {"1024^3", 1, 1024, 1024, 1024, 0},
      {"decode 1x4096 @ W^T 4096x4096", 1, 1, 4096, 4096, 1},
      {"prefill 128x2048 @ W^T 2048x2048", 1, 128, 2048, 2048, 1},
      {"batched 32 x (128x64 @ 64x128)", 32, 128, 64, 128, 0},
  };
  printf("| shape | threads | mxc f32 GFLOP/s | OpenBLAS f32 GFLOP/s | mxc/OpenBLAS | mxc bf16 GFLOP/s "
         "| bf16/OpenBLAS f32 |\n");
  printf("|---|---|---|---|---|---|---|\n");
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    const shape *s = &shapes[si];
    double flops = 2.0 * (double)s->batch * (double)s->M * (double)s->K * (double)s->N;
    int reps = flops > 1e9 ? 5 : 20;
    int64_t ash[3] = {s->batch, s->M, s->K};
    int64_t bsh[3] = {s->batch, s->K, s->N}, wsh[2] = {s->N, s->K};
    mx_array *a32 = rand_array(s->batch > 1 ? ash : ash + 1, s->batch > 1 ? 3 : 2, MX_FLOAT32);
    mx_array *b32 = s->wt ? rand_array(wsh, 2, MX_FLOAT32)
                          : rand_array(s->batch > 1 ? bsh : bsh + 1, s->batch > 1 ? 3 : 2,
                                       MX_FLOAT32);
    mx_array *a16 = mx_astype(a32, MX_BFLOAT16), *b16 = mx_astype(b32, MX_BFLOAT16);
    mx_eval((mx_array *[]){a16, b16}, 2);
    /* W^T is a transposed view: no copy */
    mx_array *bm32 = s->wt ? mx_transpose(b32, NULL, 0) : mx_array_retain(b32);
    mx_array *bm16 = s->wt ? mx_transpose(b16, NULL, 0) : mx_array_retain(b16);
    float *C = malloc(sizeof(float) * (size_t)(s->batch * s->M * s->N));
    for (int ti = 0; ti < nthreads; ti++) {
      mx_set_num_threads(threads[ti]);
      openblas_set_num_threads(threads[ti]);
      double tb = time_blas(s, mx_array_data(a32), mx_array_data(b32), C, reps);
      double tm = time_mxc(a32, bm32, reps);
      double th = time_mxc(a16, bm16, reps);
      printf("| %s | %d | %.1f | %.1f | %.0f%% | %.1f | %.0f%% |\n", s->name, threads[ti],
             flops / tm * 1e-9, flops / tb * 1e-9, 100 * tb / tm, flops / th * 1e-9,
             100 * tb / th);
      fflush(stdout);
    }
    free(C);
    mx_array_free_n((mx_array *[]){a32, b32, a16, b16, bm32, bm16}, 6);
  }
  return 0;
}
