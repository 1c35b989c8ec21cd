/* bench_random.c — throughput of the random samplers (build + eval,
 * median), and of Threefry bits in GB/s next to memset of the same bytes.
 *
 *   bench_random [REPEATS [THREADS]]      (defaults: 5, all CPUs) */
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
static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

enum { BITS, UNIFORM, NORMAL, RANDINT, BERNOULLI, GUMBEL, CATEGORICAL, NOPS };
static const char *names[] = {"bits", "uniform f32", "normal f32", "randint int32",
                              "bernoulli", "gumbel f32", "categorical (32 x 128256)"};

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (reps < 1) reps = 1;
  if (argc > 2) mx_set_num_threads(atoi(argv[2]));
  int64_t n = 1 << 24, shape[] = {n}, lshape[] = {32, 128256};
  mx_array *key = mx_random_key(0);
  mx_array *logits = mx_random_normal(lshape, 2, MX_FLOAT32, 0, 1, key);
  if (!logits || mx_array_eval(logits)) return 1;
  double *t = malloc(sizeof(double) * (size_t)reps);
  printf("threads %d, %lld samples, median of %d\n\n", mx_get_num_threads(), (long long)n, reps);
  printf("| op | ms | Msamples/s | GB/s written |\n|---|---|---|---|\n");
  for (int op = 0; op < NOPS; op++) {
    int64_t count = op == CATEGORICAL ? lshape[0] * lshape[1] : n;
    size_t bytes = 0;
    for (int r = 0; r < reps; r++) {
      double t0 = now();
      mx_array *y = op == BITS ? mx_random_bits(shape, 1, key)
                  : op == UNIFORM ? mx_random_uniform(0, 1, shape, 1, MX_FLOAT32, key)
                  : op == NORMAL ? mx_random_normal(shape, 1, MX_FLOAT32, 0, 1, key)
                  : op == RANDINT ? mx_random_randint(0, 1000, shape, 1, MX_INT32, key)
                  : op == BERNOULLI ? mx_random_bernoulli(0.3, shape, 1, key)
                  : op == GUMBEL ? mx_random_gumbel(shape, 1, MX_FLOAT32, key)
                  : mx_random_categorical(logits, -1, 0, key);
      if (!y || mx_array_eval(y)) return 1;
      t[r] = now() - t0;
      bytes = mx_array_nbytes(y);
      mx_array_free(y);
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_dbl);
    double tm = t[reps / 2];
    printf("| %s | %.2f | %.0f | %.2f |\n", names[op], tm * 1e3, count / tm * 1e-6,
           bytes / tm * 1e-9);
  }
  char *buf = malloc((size_t)n * 4);
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    memset(buf, r, (size_t)n * 4);
    t[r] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_dbl);
  printf("| memset (same bytes as bits) | %.2f | | %.2f |\n", t[reps / 2] * 1e3,
         (double)n * 4 / t[reps / 2] * 1e-9);
  free(buf);
  free(t);
  mx_array_free(logits);
  mx_array_free(key);
  return 0;
}
