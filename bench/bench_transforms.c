/* bench_transforms.c — time of value_and_grad of a 2-layer transformer
 * block (pre-norm: RMSNorm, attention with RoPE and a causal mask, SwiGLU
 * MLP, residuals), forward + backward, gradients evaluated. Peer:
 * bench/peers/torch_transformer_grad.py (same shapes, same math).
 *
 *   bench_transforms [B T D H F iters]     (default 4 128 256 4 688 10)
 *
 * Prints a table: median / min milliseconds of forward only, value_and_grad
 * with fused fast ops, with their compositions, and with each layer under
 * mx_checkpoint; and the peak memory of each. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/mxc.h"
#include "ops/fast_params.h"

static int64_t B = 4, T = 128, D = 256, H = 4, F = 688;
#define NLAYER 2

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#define CHECK(x)                                                     \
  do {                                                               \
    if (!(x)) {                                                      \
      fprintf(stderr, "bench_transforms: %s failed: %s\n", #x, mx_last_error()); \
      exit(1);                                                       \
    }                                                                \
  } while (0)

/* ---- the model ------------------------------------------------------------- */
typedef struct {
  bool fused;
} model_cfg;

static mx_array *P(const mx_map *p, int layer, const char *name) {
  char k[64];
  snprintf(k, sizeof k, "layers.%d.%s", layer, name);
  return mx_map_get(p, k);
}

static mx_array *rms(mx_array *x, mx_array *w, bool fused) {
  return fused ? mx_fast_rms_norm(x, w, 1e-5) : mx__fast_rms_norm_composed(x, w, 1e-5);
}

/* One block; inputs [x, attn_norm, wq, wk, wv, wo, mlp_norm, w1, w3, w2]. */
static int block_fn(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  bool fused = ((model_cfg *)payload)->fused;
  int64_t hd = D / H;
  mx_array *x = in[0], *tmp[64];
  int nt = 0;
#define K(e) (tmp[nt++] = (e))
  mx_array *h = K(rms(x, in[1], fused));
  mx_array *qkv[3];
  for (int i = 0; i < 3; i++) {
    mx_array *y = K(mx_matmul(h, in[2 + i]));
    y = K(mx_reshape(y, (int64_t[]){B, T, H, hd}, 4));
    y = K(mx_transpose(y, (int[]){0, 2, 1, 3}, 4));
    if (i < 2)
      y = K(fused ? mx_fast_rope(y, (int)hd, false, 10000, 1, 0, NULL)
                  : mx__fast_rope_composed(y, (int)hd, false, 10000, 1, 0, NULL));
    qkv[i] = y;
  }
  double scale = 1 / sqrt((double)hd);
  mx_array *o = K(fused ? mx_fast_scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale, NULL, true)
                        : mx__fast_sdpa_composed(qkv[0], qkv[1], qkv[2], scale, NULL, true));
  o = K(mx_transpose(o, (int[]){0, 2, 1, 3}, 4));
  o = K(mx_reshape(o, (int64_t[]){B, T, D}, 3));
  o = K(mx_matmul(o, in[5]));
  mx_array *x1 = K(mx_add(x, o));
  mx_array *h2 = K(rms(x1, in[6], fused));
  mx_array *a = K(mx_matmul(h2, in[7]));
  mx_array *g = K(mx_matmul(h2, in[8]));
  mx_array *sg = K(mx_sigmoid(a));
  mx_array *silu = K(mx_multiply(a, sg));
  mx_array *gated = K(mx_multiply(silu, g));
  mx_array *m = K(mx_matmul(gated, in[9]));
  int st = mx_list_push(out, mx_add(x1, m));
#undef K
  for (int i = 0; i < nt; i++) mx_array_free(tmp[i]);
  return st;
}

typedef struct {
  mx_closure *block; /* plain or checkpointed */
} loss_cfg;

static int loss_fn(void *payload, const mx_map *p, mx_array **in, int n, mx_list *out) {
  (void)n;
  loss_cfg *cfg = payload;
  mx_array *x = mx_array_retain(in[0]);
  int st = MX_OK;
  static const char *const names[] = {"attn_norm", "wq", "wk", "wv", "wo",
                                      "mlp_norm",  "w1", "w3", "w2"};
  for (int l = 0; l < NLAYER && !st; l++) {
    mx_array *args[10] = {x};
    for (int i = 0; i < 9; i++) args[1 + i] = P(p, l, names[i]);
    mx_list r = MX_LIST_INIT;
    st = mx_closure_apply(cfg->block, args, 10, &r);
    mx_array_free(x);
    x = st ? NULL : mx_array_retain(r.items[0]);
    mx_list_clear(&r);
  }
  if (!st) {
    mx_array *sq = mx_square(x);
    st = mx_list_push(out, mx_mean(sq, NULL, 0, false));
    mx_array_free(sq);
  }
  mx_array_free(x);
  return st;
}

static mx_map *make_params(void) {
  mx_map *p = mx_map_new();
  mx_array *key = mx_random_key(7);
  mx_array *keys = mx_random_split(key, 64);
  int ki = 0;
  for (int l = 0; l < NLAYER; l++) {
    struct {
      const char *n;
      int64_t r, c;
    } w[] = {{"wq", D, D}, {"wk", D, D}, {"wv", D, D}, {"wo", D, D},
             {"w1", D, F}, {"w3", D, F}, {"w2", F, D}};
    char k[64];
    for (int i = 0; i < 7; i++) {
      mx_array *kk = mx_slice_axis(keys, 0, ki, ki + 1, 1);
      mx_array *k1 = mx_reshape(kk, (int64_t[]){2}, 1);
      ki++;
      snprintf(k, sizeof k, "layers.%d.%s", l, w[i].n);
      CHECK(!mx_map_set_take(p, k, mx_random_normal((int64_t[]){w[i].r, w[i].c}, 2, MX_FLOAT32, 0,
                                                     1 / sqrt((double)w[i].r), k1)));
      mx_array_free(kk);
      mx_array_free(k1);
    }
    snprintf(k, sizeof k, "layers.%d.attn_norm", l);
    CHECK(!mx_map_set_take(p, k, mx_ones((int64_t[]){D}, 1, MX_FLOAT32)));
    snprintf(k, sizeof k, "layers.%d.mlp_norm", l);
    CHECK(!mx_map_set_take(p, k, mx_ones((int64_t[]){D}, 1, MX_FLOAT32)));
  }
  mx_array_free(key);
  mx_array_free(keys);
  CHECK(!mx_map_eval(p));
  return p;
}

typedef struct {
  double med, min;
  size_t peak;
  double loss;
} timing;

/* grad: 0 forward, 1 value_and_grad evaluated, 2 value_and_grad graph only */
static timing run(mx_map *params, mx_array *x, mx_closure *block, int grad, int iters) {
  loss_cfg cfg = {block};
  double *ms = malloc(sizeof(double) * (size_t)iters);
  timing tm = {0};
  for (int it = -2; it < iters; it++) { /* 2 warm-up runs */
    mx_clear_cache();
    mx_reset_peak_memory();
    size_t base = mx_get_active_memory();
    double t0 = now_ms();
    mx_list v = MX_LIST_INIT;
    if (grad) {
      mx_map *g = mx_map_new();
      CHECK(!mx_value_and_grad_map(loss_fn, &cfg, params, &x, 1, &v, g));
      if (grad == 2) {
        ms[it >= 0 ? it : 0] = now_ms() - t0;
        mx_map_free(g);
        mx_list_clear(&v);
        continue;
      }
      mx_list all = MX_LIST_INIT;
      mx_list_push_retain(&all, v.items[0]);
      for (int i = mx_map_size(g); i-- > 0;) mx_list_push_retain(&all, mx_map_value(g, i));
      CHECK(!mx_eval(all.items, all.size));
      mx_list_clear(&all);
      mx_map_free(g);
    } else {
      CHECK(!loss_fn(&cfg, params, &x, 1, &v));
      CHECK(!mx_eval(v.items, 1));
    }
    double t1 = now_ms();
    if (it >= 0) ms[it] = t1 - t0;
    tm.peak = mx_get_peak_memory() - base;
    mx_array_item(v.items[0], &tm.loss);
    mx_list_clear(&v);
  }
  qsort(ms, (size_t)iters, sizeof *ms, cmp_d);
  tm.med = ms[iters / 2];
  tm.min = ms[0];
  free(ms);
  return tm;
}

int main(int argc, char **argv) {
  int iters = 10;
  if (argc >= 6) {
    B = atoll(argv[1]);
    T = atoll(argv[2]);
    D = atoll(argv[3]);
    H = atoll(argv[4]);
    F = atoll(argv[5]);
  }
  if (argc >= 7) iters = atoi(argv[6]);
  mx_map *params = make_params();
  mx_array *key = mx_random_key(3);
  mx_array *x = mx_random_normal((int64_t[]){B, T, D}, 3, MX_FLOAT32, 0, 1, key);
  CHECK(x && !mx_array_eval(x));
  model_cfg fused = {true}, composed = {false};
  mx_closure *bf = mx_closure_new(block_fn, &fused, NULL);
  mx_closure *bc = mx_closure_new(block_fn, &composed, NULL);
  mx_closure *bck = mx_checkpoint(bf);
  int64_t nparam = 0;
  for (int i = 0; i < mx_map_size(params); i++) nparam += mx_array_size(mx_map_value(params, i));
  printf("2-layer transformer block, float32, B=%lld T=%lld D=%lld heads=%lld ffn=%lld "
         "(%lld params), %d threads, %d iterations\n\n",
         (long long)B, (long long)T, (long long)D, (long long)H, (long long)F, (long long)nparam,
         mx_get_num_threads(), iters);
  printf("| %-38s | %9s | %9s | %9s | %10s |\n", "mxc", "median ms", "min ms", "peak MiB", "loss");
  printf("|%s|%s|%s|%s|%s|\n", "----------------------------------------", "-----------",
         "-----------", "-----------", "------------");
  struct {
    const char *name;
    mx_closure *blk;
    int grad;
  } rows[] = {
      {"forward only (fused ops)", bf, 0},
      {"value_and_grad (fused fast ops)", bf, 1},
      {"value_and_grad (composed ops)", bc, 1},
      {"value_and_grad (checkpoint per layer)", bck, 1},
      {"  of which graph building (fused)", bf, 2},
  };
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
    timing tm = run(params, x, rows[r].blk, rows[r].grad, iters);
    if (rows[r].grad == 2)
      printf("| %-38s | %9.2f | %9.2f | %9s | %10s |\n", rows[r].name, tm.med, tm.min, "", "");
    else
      printf("| %-38s | %9.2f | %9.2f | %9.2f | %10.6f |\n", rows[r].name, tm.med, tm.min,
             tm.peak / 1048576.0, tm.loss);
    fflush(stdout);
  }
  mx_closure_free(bck);
  mx_closure_free(bf);
  mx_closure_free(bc);
  mx_array_free(x);
  mx_array_free(key);
  mx_map_free(params);
  return 0;
}
