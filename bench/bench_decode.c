/* bench_decode.c — the memory side of batch-1 decode: the machine's memory
 * read bandwidth (a STREAM-like read-only sum over 1 GiB, THREADS threads,
 * eight accumulators and a software prefetch, best of 5) and the decode GEMVs of a Llama-3.2-1B-shaped model (x @ W^T,
 * one row of x, float32 activations) in bfloat16 and MLX affine 4-/8-bit
 * (group 64, bfloat16 scales and biases, as `mxc convert -q` writes them),
 * (bfloat16 activations for bfloat16 weights, float32 for the quantized
 * ones), each as weight GB/s and as % of the measured read bandwidth. Enough
 * distinct weight matrices are cycled through that they never sit in the
 * last-level cache.
 *
 *   bench_decode [THREADS [REPEATS]]     (defaults: 2, 20)
 *   bench_decode --bandwidth [THREADS]   only the bandwidth, one line:
 *                                        "read_bandwidth_gbs <GB/s>"
 *
 * bench/run-decode.sh uses the bandwidth for the tok/s bound of whole
 * models; docs/bench-decode.md has the numbers. */
#include <pthread.h>
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

/* ---- read bandwidth ------------------------------------------------------------------- */

typedef float v8f __attribute__((vector_size(32)));

typedef struct {
  const float *p;
  size_t n;
  float sum;
} read_job;

static void *read_part(void *arg) {
  read_job *j = arg;
  v8f a[8] = {{0}};
  for (size_t i = 0; i + 64 <= j->n; i += 64) {
    __builtin_prefetch(j->p + i + 1024);
    __builtin_prefetch(j->p + i + 1024 + 32);
    for (int u = 0; u < 8; u++) {
      v8f x;
      memcpy(&x, j->p + i + 8 * u, 32);
      a[u] += x;
    }
  }
  v8f s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
  return NULL;
}

static double read_bandwidth(int threads) {
  enum { MAXT = 64 };
  if (threads < 1) threads = 1;
  if (threads > MAXT) threads = MAXT;
  size_t n = (size_t)1 << 28; /* 1 GiB of floats */
  float *buf = malloc(n * sizeof(float));
  if (!buf) return 0;
  for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < 5; r++) {
    pthread_t th[MAXT];
    read_job jobs[MAXT];
    size_t part = n / (size_t)threads / 64 * 64;
    double t0 = now();
    for (int i = 0; i < threads; i++) {
      jobs[i] = (read_job){buf + (size_t)i * part, part, 0};
      pthread_create(&th[i], NULL, read_part, &jobs[i]);
    }
    for (int i = 0; i < threads; i++) {
      pthread_join(th[i], NULL);
      sink += jobs[i].sum;
    }
    double gbs = (double)part * (double)threads * sizeof(float) / (now() - t0) / 1e9;
    if (gbs > best) best = gbs;
  }
  (void)sink;
  free(buf);
  return best;
}

/* ---- decode GEMVs ------------------------------------------------------------------------ */

static void die(const char *what) {
  fprintf(stderr, "bench_decode: %s: %s\n", what, mx_last_error());
  exit(1);
}

typedef struct {
  mx_array *w, *wq, *s, *b; /* dense (bf16) or quantized triple */
} weight;

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* median seconds of one x @ W^T, cycling through nw weights */
static double time_gemv(mx_array *x, weight *ws, int nw, int bits, int reps) {
  double t[256];
  if (reps > 256) reps = 256;
  for (int r = -nw; r < reps; r++) { /* one pass over the weights warms up */
    weight *w = &ws[(r + nw) % nw];
    double t0 = now();
    mx_array *o = bits ? mx_quantized_matmul(x, w->wq, w->s, w->b, true, 64, bits)
                       : mx_matmul(x, w->w);
    if (!o || mx_array_eval(o)) die("gemv");
    mx_array_free(o);
    if (r >= 0) t[r] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp);
  return t[reps / 2];
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--bandwidth")) {
    int th = argc > 2 ? atoi(argv[2]) : 2;
    printf("read_bandwidth_gbs %.2f\n", read_bandwidth(th));
    return 0;
  }
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  int reps = argc > 2 ? atoi(argv[2]) : 20;
  if (threads < 1) threads = 1;
  if (reps < 1) reps = 1;
  mx_set_num_threads(threads);
  double bw = read_bandwidth(threads);
  printf("read bandwidth, %d threads: %.1f GB/s\n\n", threads, bw);
  printf("| GEMV (N x K) | weights | MB | time (ms) | GB/s | %% of read bandwidth |\n");
  printf("|---|---|---:|---:|---:|---:|\n");
  const int64_t shapes[][2] = {{2048, 2048}, {512, 2048}, {8192, 2048}, {2048, 8192},
                               {128256, 2048}};
  const int bitss[3] = {0, 4, 8};
  mx_array *key = mx_random_key(7);
  for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
    int64_t N = shapes[si][0], K = shapes[si][1];
    mx_array *x = mx_random_normal((int64_t[]){1, K}, 2, MX_FLOAT32, 0, 1, key);
    mx_array *x16 = mx_astype(x, MX_BFLOAT16); /* a bf16 model's activations */
    if (!x || !x16 || mx_array_eval(x) || mx_array_eval(x16)) die("x");
    for (int bi = 0; bi < 3; bi++) {
      int bits = bitss[bi];
      double bytes = bits ? (double)N * K * bits / 8 + 2.0 * 2 * N * K / 64 : 2.0 * N * K;
      int nw = (int)(512e6 / bytes) + 1; /* > 512 MB in all: not cache-resident */
      if (nw > 64) nw = 64;
      weight *ws = calloc((size_t)nw, sizeof *ws);
      for (int i = 0; i < nw; i++) {
        mx_array *k = mx_random_key((uint64_t)(100 + i));
        mx_array *w = mx_random_normal((int64_t[]){N, K}, 2, MX_BFLOAT16, 0, 0.02, k);
        mx_array_free(k);
        if (!w) die("weights");
        if (bits) {
          if (mx_quantize(w, 64, bits, &ws[i].wq, &ws[i].s, &ws[i].b) ||
              mx_eval((mx_array *[]){ws[i].wq, ws[i].s, ws[i].b}, 3))
            die("quantize");
          mx_array_free(w);
        } else {
          if (mx_array_eval(w)) die("weights");
          ws[i].w = mx_transpose(w, NULL, 0);
          mx_array_free(w);
        }
      }
      double t = time_gemv(bits ? x : x16, ws, nw, bits, reps);
      printf("| %lld x %lld | %s | %.1f | %.3f | %.1f | %.0f%% |\n", (long long)N, (long long)K,
             bits == 4 ? "4-bit g64" : bits == 8 ? "8-bit g64" : "bfloat16", bytes / 1e6,
             t * 1e3, bytes / t / 1e9, 100.0 * bytes / t / 1e9 / bw);
      fflush(stdout);
      for (int i = 0; i < nw; i++) mx_array_free_n((mx_array *[]){ws[i].w, ws[i].wq, ws[i].s, ws[i].b}, 4);
      free(ws);
    }
    mx_array_free(x);
    mx_array_free(x16);
  }
  mx_array_free(key);
  printf("\nthreads: %d, median of %d\n", threads, reps);
  return 0;
}
