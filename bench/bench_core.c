/* bench_core.c — elementwise and reduction bandwidth next to memcpy, and
 * graph overhead (build + eval of one small op). Prints a table.
 *   ./bench_core [MiB per array (default 64)] */
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

/* best of `reps` timings of fn */
#define BEST(reps, stmt)                          \
  ({                                              \
    double best_ = 1e30;                          \
    for (int r_ = 0; r_ < (reps); r_++) {         \
      double t0_ = now();                         \
      stmt;                                       \
      double dt_ = now() - t0_;                   \
      if (dt_ < best_) best_ = dt_;               \
    }                                             \
    best_;                                        \
  })

static void check(int st) {
  if (st) {
    fprintf(stderr, "bench_core: %s\n", mx_last_error());
    exit(1);
  }
}

int main(int argc, char **argv) {
  int64_t mib = argc > 1 ? atoll(argv[1]) : 64;
  int64_t n = mib * 1024 * 1024 / 4;
  printf("# mxc %s bench_core: %lld MiB arrays (float32), %d threads\n", mx_version(),
         (long long)mib, mx_get_num_threads());
  printf("| what | time (ms) | GB/s | vs memcpy |\n|---|---:|---:|---:|\n");

  char *src = malloc((size_t)n * 4), *dst = malloc((size_t)n * 4);
  memset(src, 1, (size_t)n * 4);
  memset(dst, 0, (size_t)n * 4);
  double t_memcpy = BEST(5, memcpy(dst, src, (size_t)n * 4));
  double bw_memcpy = 2.0 * (double)n * 4 / t_memcpy / 1e9; /* read + write */
  printf("| memcpy (read+write) | %.2f | %.1f | 1.00 |\n", t_memcpy * 1e3, bw_memcpy);

  mx_array *a = mx_full(&n, 1, 1.5, MX_FLOAT32), *b = mx_full(&n, 1, 2.5, MX_FLOAT32);
  check(mx_eval((mx_array *[]){a, b}, 2));
  /* warm the cache so timings exclude first-touch page faults */
  mx_array *w = mx_add(a, b);
  check(mx_array_eval(w));
  mx_array_free(w);

  double t_add = BEST(5, {
    mx_array *c = mx_add(a, b);
    check(mx_array_eval(c));
    mx_array_free(c);
  });
  double bw_add = 3.0 * (double)n * 4 / t_add / 1e9;
  printf("| add (2 reads + write) | %.2f | %.1f | %.2f |\n", t_add * 1e3, bw_add, bw_add / bw_memcpy);

  double t_exp = BEST(5, {
    mx_array *c = mx_exp(a);
    check(mx_array_eval(c));
    mx_array_free(c);
  });
  double bw_exp = 2.0 * (double)n * 4 / t_exp / 1e9;
  printf("| exp | %.2f | %.1f | %.2f |\n", t_exp * 1e3, bw_exp, bw_exp / bw_memcpy);

  double t_sum = BEST(5, {
    mx_array *s = mx_sum(a, NULL, 0, false);
    check(mx_array_eval(s));
    mx_array_free(s);
  });
  double bw_sum = (double)n * 4 / t_sum / 1e9;
  printf("| sum (all, read only) | %.2f | %.1f | %.2f |\n", t_sum * 1e3, bw_sum, bw_sum / bw_memcpy);

  int64_t shape2[2] = {n / 1024, 1024};
  mx_array *a2 = mx_reshape(a, shape2, 2);
  double t_rsum = BEST(5, {
    mx_array *s = mx_sum(a2, (int[]){1}, 1, false);
    check(mx_array_eval(s));
    mx_array_free(s);
  });
  printf("| sum (rows of 1024) | %.2f | %.1f | %.2f |\n", t_rsum * 1e3, (double)n * 4 / t_rsum / 1e9,
         (double)n * 4 / t_rsum / 1e9 / bw_memcpy);
  double t_csum = BEST(5, {
    mx_array *s = mx_sum(a2, (int[]){0}, 1, false);
    check(mx_array_eval(s));
    mx_array_free(s);
  });
  printf("| sum (columns) | %.2f | %.1f | %.2f |\n", t_csum * 1e3, (double)n * 4 / t_csum / 1e9,
         (double)n * 4 / t_csum / 1e9 / bw_memcpy);
  double t_sm = BEST(5, {
    mx_array *s = mx_softmax(a2, (int[]){-1}, 1);
    check(mx_array_eval(s));
    mx_array_free(s);
  });
  printf("| softmax (rows of 1024) | %.2f | %.1f | %.2f |\n", t_sm * 1e3, 2.0 * (double)n * 4 / t_sm / 1e9,
         2.0 * (double)n * 4 / t_sm / 1e9 / bw_memcpy);

  /* graph overhead: build + eval one op on a 1-element array */
  mx_array *s1 = mx_array_scalar(1.0, MX_FLOAT32);
  int iters = 200000;
  double t_small = BEST(3, {
    for (int i = 0; i < iters; i++) {
      mx_array *c = mx_add(s1, s1);
      mx_array_eval(c);
      mx_array_free(c);
    }
  });
  printf("| graph: build+eval+free one op (scalar) | %.3f µs/op | | |\n", t_small / iters * 1e6);
  /* amortised: a chain of 1000 ops evaluated once */
  double t_chain = BEST(3, {
    mx_array *x = mx_array_retain(s1);
    for (int i = 0; i < 1000; i++) {
      mx_array *y = mx_add(x, s1);
      mx_array_free(x);
      x = y;
    }
    mx_array_eval(x);
    mx_array_free(x);
  });
  printf("| graph: 1000-op chain, one eval | %.3f µs/op | | |\n", t_chain / 1000 * 1e6);

  mx_array_free(a);
  mx_array_free(b);
  mx_array_free(a2);
  mx_array_free(s1);
  free(src);
  free(dst);
  return 0;
}
