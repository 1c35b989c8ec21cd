/* bench_sort.c — sort, argsort, partition and topk on float32 rows of
 * several lengths, next to C's qsort of the same rows (one thread) as a
 * baseline. Median time of build + eval from an evaluated input, and
 * elements per second.
 *
 *   bench_sort [REPEATS [THREADS]]      (defaults: 5, all CPUs) */
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

static int cmp_f32(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}
static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

enum { SORT, ARGSORT, PARTITION, TOPK };

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_dbl);
  return t[n / 2];
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (reps < 1) reps = 1;
  if (argc > 2) mx_set_num_threads(atoi(argv[2]));
  int64_t shapes[][2] = {{16384, 64}, {512, 2048}, {32, 128256}, {1, 1 << 20}};
  printf("threads %d, float32, median of %d\n\n", mx_get_num_threads(), reps);
  printf("| rows x n | sort | argsort | partition (kth n/2) | topk (k 50) | qsort, 1 thread |\n"
         "|---|---|---|---|---|---|\n");
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    int64_t rows = shapes[s][0], n = shapes[s][1], total = rows * n;
    mx_array *key = mx_random_key(s);
    mx_array *x = mx_random_normal(shapes[s], 2, MX_FLOAT32, 0, 1, key);
    if (!x || mx_array_eval(x)) return 1;
    /* baseline: qsort each row of a copy */
    float *buf = malloc(sizeof(float) * (size_t)total);
    for (int r = 0; r < reps; r++) {
      memcpy(buf, mx_array_data(x), sizeof(float) * (size_t)total);
      double t0 = now();
      for (int64_t i = 0; i < rows; i++) qsort(buf + i * n, (size_t)n, sizeof(float), cmp_f32);
      t[r] = now() - t0;
    }
    double tq = median(t, reps);
    free(buf);
    printf("| %lld x %lld |", (long long)rows, (long long)n);
    for (int op = 0; op < 4; op++) {
      for (int r = 0; r < reps; r++) {
        double t0 = now();
        mx_array *y = op == SORT ? mx_sort(x, -1)
                    : op == ARGSORT ? mx_argsort(x, -1)
                    : op == PARTITION ? mx_partition(x, (int)(n / 2), -1)
                    : mx_topk(x, 50, -1);
        if (!y || mx_array_eval(y)) return 1;
        t[r] = now() - t0;
        mx_array_free(y);
      }
      double tm = median(t, reps);
      printf(" %.2f ms (%.0f M/s) |", tm * 1e3, total / tm * 1e-6);
    }
    printf(" %.2f ms (%.0f M/s) |\n", tq * 1e3, total / tq * 1e-6);
    mx_array_free(x);
    mx_array_free(key);
  }
  free(t);
  return 0;
}
