/* bench_quantized.c — quantized_matmul (affine, MLX format) against dense
 * matmul: GEMV (decode, 1 x 4096 @ 4096 x 4096^T) and GEMM (512 rows), 4-
 * and 8-bit weights (group size 64, float32 scales/biases and activations;
 * and bf16 ones, as a bf16 model has) next to float32 and bfloat16
 * mx_matmul, for 1, 128 and 512 rows. Prints one table: median time of
 * build + eval from evaluated inputs, GB/s of weight bytes streamed
 * (packed words + scales + biases, or the dense matrix) and GFLOP/s.
 *
 *   bench_quantized [REPEATS [THREADS]]      (defaults: 5, all CPUs)
 *
 * docs/bench-quantized.md has the numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mxc/mxc.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static mx_array *rnd(const int64_t *shape, int nd, mx_dtype dt, double scale, uint64_t seed) {
  mx_array *k = mx_random_key(seed);
  mx_array *f = mx_random_normal(shape, nd, MX_FLOAT32, 0, scale, k);
  mx_array *r = mx_astype(f, dt);
  mx_array_free(k);
  mx_array_free(f);
  if (!r || mx_array_eval(r)) {
    fprintf(stderr, "bench_quantized: %s\n", mx_last_error());
    exit(1);
  }
  return r;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  mx_array *x, *w, *wq, *s, *b;
  int bits; /* 0: dense */
} job;

static double run(const job *j, int reps) {
  double t[64];
  for (int r = 0; r < reps + 1; r++) {
    double t0 = now();
    mx_array *o = j->bits ? mx_quantized_matmul(j->x, j->wq, j->s, j->b, true, 64, j->bits)
                          : mx_matmul(j->x, j->w);
    if (!o || mx_array_eval(o)) {
      fprintf(stderr, "bench_quantized: %s\n", mx_last_error());
      exit(1);
    }
    mx_array_free(o);
    if (r) t[r - 1] = now() - t0; /* the first run warms up */
  }
  qsort(t, (size_t)reps, sizeof *t, cmp);
  return t[reps / 2];
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (reps < 1) reps = 1;
  if (reps > 63) reps = 63;
  if (argc > 2) mx_set_num_threads(atoi(argv[2]));
  const int64_t N = 4096, K = 4096;
  mx_array *w32 = rnd((int64_t[]){N, K}, 2, MX_FLOAT32, 0.02, 1);
  mx_array *w16 = mx_astype(w32, MX_BFLOAT16);
  mx_array_eval(w16);
  mx_array *wt32 = mx_transpose(w32, NULL, 0), *wt16 = mx_transpose(w16, NULL, 0);
  mx_array *q[2][3], *qh[2][3]; /* qh: from the bf16 weight, bf16 scales/biases */
  int bitss[2] = {4, 8};
  for (int i = 0; i < 2; i++) {
    if (mx_quantize(w32, 64, bitss[i], &q[i][0], &q[i][1], &q[i][2]) ||
        mx_eval(q[i], 3) || mx_quantize(w16, 64, bitss[i], &qh[i][0], &qh[i][1], &qh[i][2]) ||
        mx_eval(qh[i], 3)) {
      fprintf(stderr, "bench_quantized: %s\n", mx_last_error());
      return 1;
    }
  }
  printf("| case | M x K @ (N x K)^T | weights | time (ms) | weight GB/s | GFLOP/s |\n");
  printf("|---|---|---|---:|---:|---:|\n");
  int64_t Ms[3] = {1, 128, 512};
  for (int mi = 0; mi < 3; mi++) {
    int64_t M = Ms[mi];
    mx_array *x32 = rnd((int64_t[]){M, K}, 2, MX_FLOAT32, 1.0, 2);
    mx_array *x16 = mx_astype(x32, MX_BFLOAT16);
    mx_array_eval(x16);
    struct {
      const char *name;
      job j;
      double bytes;
    } c[6] = {
        {"float32 matmul", {x32, wt32, NULL, NULL, NULL, 0}, (double)N * K * 4},
        {"bfloat16 matmul", {x16, wt16, NULL, NULL, NULL, 0}, (double)N * K * 2},
        {"4-bit quantized_matmul", {x32, NULL, q[0][0], q[0][1], q[0][2], 4},
         (double)N * K / 2 + 2.0 * N * K / 64 * 4},
        {"8-bit quantized_matmul", {x32, NULL, q[1][0], q[1][1], q[1][2], 8},
         (double)N * K + 2.0 * N * K / 64 * 4},
        {"4-bit quantized_matmul, bf16", {x16, NULL, qh[0][0], qh[0][1], qh[0][2], 4},
         (double)N * K / 2 + 2.0 * N * K / 64 * 2},
        {"8-bit quantized_matmul, bf16", {x16, NULL, qh[1][0], qh[1][1], qh[1][2], 8},
         (double)N * K + 2.0 * N * K / 64 * 2},
    };
    for (int i = 0; i < 6; i++) {
      double t = run(&c[i].j, reps);
      printf("| %s %s | %lld x %lld @ (%lld x %lld)^T | %.1f MB | %.3f | %.1f | %.1f |\n",
             M == 1 ? "GEMV" : "GEMM", c[i].name, (long long)M, (long long)K, (long long)N,
             (long long)K, c[i].bytes / 1e6, t * 1e3, c[i].bytes / t / 1e9,
             2.0 * (double)M * N * K / t / 1e9);
      fflush(stdout);
    }
    mx_array_free(x32);
    mx_array_free(x16);
  }
  printf("\nthreads: %d, repeats: %d (median)\n", mx_get_num_threads(), reps);
  for (int i = 0; i < 2; i++) mx_array_free_n(q[i], 3), mx_array_free_n(qh[i], 3);
  mx_array_free_n((mx_array *[]){w32, w16, wt32, wt16}, 4);
  return 0;
}
