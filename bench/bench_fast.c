/* bench_fast.c — the fused LLM ops against their compositions of primitive
 * ops (the same functions the tests compare them with), on LLM-sized
 * shapes. Prints one table: median time of build + eval from evaluated
 * inputs, and the speedup of the fused kernel.
 *
 *   bench_fast [REPEATS [THREADS]]      (defaults: 5, all CPUs)
 *
 * docs/bench-fast.md has the numbers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/mxc.h"
#include "ops/fast_params.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform [lo, hi) data of dtype dt, evaluated (host generator: the
 * bench depends on nothing but the ops it measures). */
static mx_array *rnd(const int64_t *shape, int nd, mx_dtype dt, double lo, double hi) {
  static uint64_t state = 88172645463325252ull;
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  float *v = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    v[i] = (float)(lo + (hi - lo) * (double)(state >> 11) * (1.0 / 9007199254740992.0));
  }
  mx_array *f = mx_array_from_data(v, shape, nd, MX_FLOAT32);
  mx_array *r = mx_astype(f, dt);
  free(v);
  mx_array_free(f);
  if (!r || mx_array_eval(r)) {
    fprintf(stderr, "bench_fast: %s\n", mx_last_error());
    exit(1);
  }
  return r;
}

enum { RMS, LN, ROPE, SDPA };
typedef struct {
  const char *name, *shape;
  int op;
  mx_dtype dt;
  int64_t s[4];  /* x (norms, rope) or q (sdpa) */
  int64_t kv[2]; /* sdpa: Hkv, Tk */
  bool causal, trad;
} bcase;

static mx_array *run(const bcase *c, mx_array **in, bool composed) {
  switch (c->op) {
    case RMS:
      return (composed ? mx__fast_rms_norm_composed : mx_fast_rms_norm)(in[0], in[1], 1e-5);
    case LN:
      return (composed ? mx__fast_layer_norm_composed : mx_fast_layer_norm)(in[0], in[1], in[2],
                                                                            1e-5);
    case ROPE:
      return (composed ? mx__fast_rope_composed : mx_fast_rope)(in[0], (int)c->s[3], c->trad,
                                                                10000, 1, 100, NULL);
    default:
      return (composed ? mx__fast_sdpa_composed : mx_fast_scaled_dot_product_attention)(
          in[0], in[1], in[2], 1 / sqrt((double)c->s[3]), NULL, c->causal);
  }
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double time_it(const bcase *c, mx_array **in, bool composed, int reps) {
  double t[64];
  if (reps > 64) reps = 64;
  for (int r = -1; r < reps; r++) { /* one warm-up run */
    double t0 = now();
    mx_array *y = run(c, in, composed);
    if (!y || mx_array_eval(y)) {
      fprintf(stderr, "bench_fast: %s: %s\n", c->name, mx_last_error());
      exit(1);
    }
    mx_array_free(y);
    if (r >= 0) t[r] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp);
  return t[reps / 2];
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 5;
  if (reps < 1) reps = 1;
  if (argc > 2) mx_set_num_threads(atoi(argv[2]));
#define NORM(nm, shp, op_, dt_) \
  {.name = nm, .shape = shp, .op = op_, .dt = dt_, .s = {1, 1, 2048, 4096}}
#define ROPE_(nm, shp, dt_, T, tr) \
  {.name = nm, .shape = shp, .op = ROPE, .dt = dt_, .s = {1, 32, T, 128}, .trad = tr}
#define SDPA_(nm, shp, dt_, Tq, D, Hkv, Tk, ca)                                     \
  {.name = nm, .shape = shp, .op = SDPA, .dt = dt_, .s = {1, 32, Tq, D}, .kv = {Hkv, Tk}, \
   .causal = ca}
  const bcase cases[] = {
      NORM("rms_norm", "(2048, 4096) +w", RMS, MX_FLOAT32),
      NORM("rms_norm", "(2048, 4096) +w", RMS, MX_BFLOAT16),
      NORM("layer_norm", "(2048, 4096) +w+b", LN, MX_FLOAT32),
      NORM("layer_norm", "(2048, 4096) +w+b", LN, MX_BFLOAT16),
      ROPE_("rope", "(1, 32, 1024, 128)", MX_FLOAT32, 1024, false),
      ROPE_("rope trad.", "(1, 32, 1024, 128)", MX_FLOAT32, 1024, true),
      ROPE_("rope", "(1, 32, 1024, 128)", MX_BFLOAT16, 1024, false),
      ROPE_("rope decode", "(1, 32, 1, 128)", MX_FLOAT32, 1, false),
      SDPA_("sdpa causal", "q (1,32,512,128) kv 32", MX_FLOAT32, 512, 128, 32, 512, true),
      SDPA_("sdpa causal GQA", "q (1,32,512,128) kv 8", MX_FLOAT32, 512, 128, 8, 512, true),
      SDPA_("sdpa causal GQA", "q (1,32,512,128) kv 8", MX_BFLOAT16, 512, 128, 8, 512, true),
      SDPA_("sdpa", "q (1,32,256,64) kv 32", MX_FLOAT32, 256, 64, 32, 256, false),
      SDPA_("sdpa decode GQA", "q (1,32,1,128) kv 8 x 2048", MX_FLOAT32, 1, 128, 8, 2048, true),
      SDPA_("sdpa decode GQA", "q (1,32,1,128) kv 8 x 2048", MX_BFLOAT16, 1, 128, 8, 2048, true),
  };

  printf("threads: %d, median of %d\n\n", mx_get_num_threads(), reps);
  printf("| op | shape | dtype | fused ms | composed ms | speedup | fused rate |\n");
  printf("|---|---|---|---:|---:|---:|---:|\n");
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const bcase *c = &cases[i];
    mx_array *in[3] = {0};
    if (c->op == SDPA) {
      in[0] = rnd(c->s, 4, c->dt, -1, 1);
      int64_t ks[4] = {c->s[0], c->kv[0], c->kv[1], c->s[3]};
      in[1] = rnd(ks, 4, c->dt, -1, 1);
      in[2] = rnd(ks, 4, c->dt, -1, 1);
    } else {
      in[0] = c->op == ROPE ? rnd(c->s, 4, c->dt, -1, 1) : rnd(c->s + 2, 2, c->dt, -1, 1);
      if (c->op != ROPE) {
        in[1] = rnd(c->s + 3, 1, c->dt, 0.5, 1.5);
        in[2] = rnd(c->s + 3, 1, c->dt, -0.5, 0.5);
      }
    }
    double tf = time_it(c, in, false, reps), tc = time_it(c, in, true, reps);
    /* norms and rope: GB/s of input + output; attention: GFLOP/s of the
     * two products (halved when causal and square) */
    char rate[64];
    if (c->op == SDPA) {
      double fl = 4.0 * (double)(c->s[0] * c->s[1] * c->s[2]) * (double)(c->kv[1] * c->s[3]);
      if (c->causal && c->s[2] == c->kv[1]) fl /= 2;
      snprintf(rate, sizeof rate, "%.1f GFLOP/s", fl / tf * 1e-9);
    } else {
      double bytes = 2.0 * (double)mx_array_nbytes(in[0]);
      snprintf(rate, sizeof rate, "%.1f GB/s", bytes / tf * 1e-9);
    }
    printf("| %s | %s | %s | %.3f | %.3f | %.1fx | %s |\n", c->name, c->shape,
           mx_dtype_name(c->dt), tf * 1e3, tc * 1e3, tc / tf, rate);
    fflush(stdout);
    mx_array_free_n(in, 3);
  }
  return 0;
}
