/* bench_cuda_kernels.c — the CUDA backend's LLM kernels on the GPU:
 * the dense bf16 GEMV of a decode row (Llama-3.2-1B shapes),
 * quantized_matmul (GEMV for decode, dequantize + cuBLAS for prefill),
 * scaled_dot_product_attention (split-KV decode, tiled prefill) and
 * sort/argsort of long rows, each next to a dense or composed reference
 * run the same way (bf16 dense matmul, sdpa composed of matmul + softmax).
 *
 *   bench_cuda_kernels [REPEATS]          (default 20)
 *
 * MXC_BENCH_ONLY=attention-train, embedding-grad, head, train-gemm, ce, rope, norm, sumsq or
 * adam
 * prints that table only.
 *
 * Each row: REPEATS evaluations queued on the GPU stream back to back, then
 * one wait (reading a one-element sum of the last result); the time is
 * the median over 5 such batches divided by REPEATS, after a warm-up batch
 * (which also moves the inputs to the GPU). GB/s counts the bytes a kernel
 * must read (packed weights + scales + biases + x; K and V for decode
 * attention); TFLOP/s counts 2 flops per multiply-add (causal attention:
 * the half below the diagonal). Without a GPU it prints a line and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/mxc.h"
#include "ops/fast_params.h"
#include "ops/optim_params.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "bench_cuda_kernels: %s: %s\n", what, mx_last_error());
  exit(1);
}

static mx_array *rnd(const int64_t *shape, int nd, mx_dtype dt, double scale, uint64_t seed) {
  mx_array *k = mx_random_key(seed);
  mx_array *f = mx_random_normal(shape, nd, MX_FLOAT32, 0, scale, k);
  mx_array *r = mx_astype(f, dt);
  mx_array_free(k);
  mx_array_free(f);
  if (!r || mx_array_eval(r)) die("input");
  return r;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef mx_array *(*op_fn)(void *ctx);

/* seconds per evaluation of f on the GPU */
static double gpu_time(op_fn f, void *ctx, int reps) {
  double t[5];
  mx_set_default_device(MX_GPU);
  for (int b = -1; b < 5; b++) {
    double t0 = now();
    mx_array *last = NULL;
    for (int r = 0; r < reps; r++) {
      mx_array *o = f(ctx);
      if (!o || mx_array_eval(o)) die("eval");
      mx_array_free(last);
      last = o;
    }
    /* a one-element sum computed on the GPU: the wait copies 4 bytes back */
    mx_array *flat = mx_flatten(last, 0, -1);
    mx_array *one = mx_slice(flat, (int64_t[]){0}, (int64_t[]){1}, NULL, 1);
    mx_array *sum = mx_sum(one, NULL, 0, false);
    double v = 0;
    if (!sum || mx_array_item(sum, &v)) die("sync");
    mx_array *tmp[] = {flat, one, sum, last};
    mx_array_free_n(tmp, 4);
    if (b >= 0) t[b] = (now() - t0) / reps;
  }
  mx_set_default_device(MX_CPU);
  qsort(t, 5, sizeof *t, cmp);
  return t[2];
}

/* ---- the floor: one tiny op --------------------------------------------------------- */
static mx_array *tiny_add(void *c) {
  mx_array *a = c;
  return mx_add(a, a);
}

static void bench_floor(int reps) {
  mx_array *a = rnd((int64_t[]){1}, 1, MX_FLOAT32, 1, 9);
  double t = gpu_time(tiny_add, a, reps);
  printf("\nPer-op floor (a 1-element add, same timing loop): %.1f us — graph build, eval and "
         "launch; rows below near it are bound by it, not by the kernel.\n",
         t * 1e6);
  mx_array_free(a);
}

/* ---- quantized matmul ---------------------------------------------------------- */
typedef struct {
  mx_array *x, *w, *wt, *wq, *s, *b;
  int bits, gs;
} qjob;

static mx_array *q_quant(void *c) {
  qjob *j = c;
  return mx_quantized_matmul(j->x, j->wq, j->s, j->b, true, j->gs, j->bits);
}
static mx_array *q_dense(void *c) {
  qjob *j = c;
  return mx_matmul(j->x, j->wt);
}

static void bench_qmm(int reps) {
  printf("\n## quantized_matmul (bf16 activations, group size 64, x @ W^T)\n\n");
  printf("| M | N | K | weights | time (us) | GB/s | TFLOP/s |\n|---|---|---|---|---|---|---|\n");
  const int64_t shapes[][3] = {{1, 4096, 4096},   {1, 14336, 4096}, {1, 4096, 14336},
                               {4, 4096, 4096},   {8, 4096, 4096},  {512, 4096, 4096},
                               {2048, 4096, 4096}, {2048, 14336, 4096}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int64_t M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
    qjob j = {0};
    j.x = rnd((int64_t[]){M, K}, 2, MX_BFLOAT16, 1, 1);
    j.w = rnd((int64_t[]){N, K}, 2, MX_BFLOAT16, 0.05, 2);
    j.wt = mx_transpose(j.w, (int[]){1, 0}, 2);
    j.gs = 64;
    double flops = 2.0 * (double)M * (double)N * (double)K;
    for (int bits = 0; bits <= 8; bits += 4) {
      if (bits == 0) {
        double t = gpu_time(q_dense, &j, reps);
        double bytes = (double)N * K * 2 + (double)M * K * 2;
        printf("| %lld | %lld | %lld | bf16 dense | %.1f | %.0f | %.2f |\n", (long long)M,
               (long long)N, (long long)K, t * 1e6, bytes / t * 1e-9, flops / t * 1e-12);
        continue;
      }
      j.bits = bits;
      if (mx_quantize(j.w, j.gs, bits, &j.wq, &j.s, &j.b)) die("quantize");
      mx_array *ins[] = {j.wq, j.s, j.b};
      if (mx_eval(ins, 3)) die("quantize");
      double t = gpu_time(q_quant, &j, reps);
      double bytes = (double)N * K * bits / 8 + (double)N * (K / j.gs) * 4 + (double)M * K * 2;
      printf("| %lld | %lld | %lld | %d-bit | %.1f | %.0f | %.2f |\n", (long long)M, (long long)N,
             (long long)K, bits, t * 1e6, bytes / t * 1e-9, flops / t * 1e-12);
      mx_array_free_n(ins, 3);
    }
    mx_array *all[] = {j.x, j.w, j.wt};
    mx_array_free_n(all, 3);
  }
}

/* ---- dense GEMV: a decode row against the Llama-3.2-1B projections ------------------- */
static void bench_gemv(int reps) {
  printf("\n## one-row GEMV, bf16 and MLX 4-bit g64 (x @ W^T; Llama-3.2-1B shapes)\n\n");
  printf("| N | K | what | weights | MB | time (us) | GB/s |\n|---|---|---|---|---|---|---|\n");
  const int64_t shapes[][2] = {{3072, 2048}, {2048, 2048}, {16384, 2048}, {2048, 8192},
                               {128256, 2048}};
  const char *what[] = {"q/k/v stack", "o_proj", "gate/up stack", "down_proj", "LM head"};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int64_t N = shapes[i][0], K = shapes[i][1];
    qjob j = {0};
    j.x = rnd((int64_t[]){1, K}, 2, MX_BFLOAT16, 1, 1);
    j.w = rnd((int64_t[]){N, K}, 2, MX_BFLOAT16, 0.05, 2);
    j.wt = mx_transpose(j.w, (int[]){1, 0}, 2);
    double t = gpu_time(q_dense, &j, reps);
    double bytes = (double)N * K * 2 + (double)K * 2;
    printf("| %lld | %lld | %s | bf16 | %.1f | %.1f | %.0f |\n", (long long)N, (long long)K,
           what[i], bytes * 1e-6, t * 1e6, bytes / t * 1e-9);
    j.gs = 64;
    j.bits = 4;
    if (mx_quantize(j.w, j.gs, j.bits, &j.wq, &j.s, &j.b)) die("quantize");
    mx_array *ins[] = {j.wq, j.s, j.b};
    if (mx_eval(ins, 3)) die("quantize");
    t = gpu_time(q_quant, &j, reps);
    bytes = (double)N * K / 2 + (double)N * (K / j.gs) * 4 + (double)K * 2;
    printf("| %lld | %lld | %s | 4-bit | %.1f | %.1f | %.0f |\n", (long long)N, (long long)K,
           what[i], bytes * 1e-6, t * 1e6, bytes / t * 1e-9);
    mx_array_free_n(ins, 3);
    mx_array *all[] = {j.x, j.w, j.wt};
    mx_array_free_n(all, 3);
  }
}

/* ---- attention ---------------------------------------------------------------------- */
typedef struct {
  mx_array *q, *k, *v;
  bool causal;
} ajob;

static mx_array *a_fast(void *c) {
  ajob *j = c;
  return mx_fast_scaled_dot_product_attention(j->q, j->k, j->v, 0.088, NULL, j->causal);
}
static mx_array *a_composed(void *c) {
  ajob *j = c;
  return mx__fast_sdpa_composed(j->q, j->k, j->v, 0.088, NULL, j->causal);
}

static void bench_sdpa(int reps) {
  printf("\n## scaled_dot_product_attention (bf16, B=1, Hq=32, Hkv=8, D=128)\n\n");
  printf("| Tq | Tk | causal | kernel | time (us) | GB/s (K+V) | TFLOP/s |\n"
         "|---|---|---|---|---|---|---|\n");
  const int64_t shapes[][3] = {{1, 1024, 0}, {1, 4096, 0}, {1, 16384, 0}, {4, 4096, 0},
                               {512, 512, 1}, {2048, 2048, 1}, {2048, 2048, 0}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int64_t Tq = shapes[i][0], Tk = shapes[i][1];
    ajob j;
    j.causal = shapes[i][2] != 0;
    j.q = rnd((int64_t[]){1, 32, Tq, 128}, 4, MX_BFLOAT16, 1, 3);
    j.k = rnd((int64_t[]){1, 8, Tk, 128}, 4, MX_BFLOAT16, 1, 4);
    j.v = rnd((int64_t[]){1, 8, Tk, 128}, 4, MX_BFLOAT16, 1, 5);
    double pairs = (double)Tq * (double)Tk;
    if (j.causal) pairs = (double)Tq * ((double)Tk - (double)Tq) + (double)Tq * (Tq + 1) / 2;
    double flops = 4.0 * 32 * pairs * 128, bytes = 2.0 * 8 * Tk * 128 * 2;
    for (int c = 0; c < 2; c++) {
      double t = gpu_time(c ? a_composed : a_fast, &j, reps);
      printf("| %lld | %lld | %s | %s | %.1f | %.0f | %.2f |\n", (long long)Tq, (long long)Tk,
             j.causal ? "yes" : "no", c ? "composed" : "fast", t * 1e6, bytes / t * 1e-9,
             flops / t * 1e-12);
    }
    mx_array *all[] = {j.q, j.k, j.v};
    mx_array_free_n(all, 3);
  }
}

/* ---- attention in training: the forward and the fused backward's ops --------------- */
typedef struct {
  mx_array *q, *k, *v, *dout, *lse, *delta;
  int which; /* 0 forward, 1 logsumexp, 2 dq, 3 dk|dv */
} tjob;

static mx_array *t_run(void *c) {
  tjob *j = c;
  const double sc = 0.125;
  switch (j->which) {
    case 0: return mx_fast_scaled_dot_product_attention(j->q, j->k, j->v, sc, NULL, true);
    case 1: return mx__fast_sdpa_lse(j->q, j->k, sc, true);
    case 2: return mx__fast_sdpa_bwd_q(j->q, j->k, j->v, j->dout, j->lse, j->delta, sc, true);
    default: return mx__fast_sdpa_bwd_kv(j->q, j->k, j->v, j->dout, j->lse, j->delta, sc, true);
  }
}

/* The training step's attention (GPT-2-small-sized Llama: B 32, 12 heads,
 * T 1024, D 64, causal, bf16). TFLOP/s counts the products each op must
 * do (forward 2, logsumexp 1, dq 3, dk|dv 4 products of T x T x D over
 * the causal half): the recomputed S and dP included. */
static void bench_sdpa_train(int reps) {
  printf("\n## attention of a training step (bf16, B=32, H=12, T=1024, D=64, causal)\n\n");
  printf("| op | time (us) | TFLOP/s |\n|---|---|---|\n");
  const int64_t B = 32, H = 12, T = 1024, D = 64;
  const int64_t sh[4] = {B, H, T, D};
  tjob j = {0};
  j.q = rnd(sh, 4, MX_BFLOAT16, 1, 11);
  j.k = rnd(sh, 4, MX_BFLOAT16, 1, 12);
  j.v = rnd(sh, 4, MX_BFLOAT16, 1, 13);
  j.dout = rnd(sh, 4, MX_BFLOAT16, 1, 14);
  mx_set_default_device(MX_GPU);
  mx_array *o = mx_fast_scaled_dot_product_attention(j.q, j.k, j.v, 0.125, NULL, true);
  j.lse = mx__fast_sdpa_lse(j.q, j.k, 0.125, true);
  j.delta = mx__fast_row_dot(j.dout, o);
  mx_array *ev[] = {j.lse, j.delta};
  if (!o || !j.lse || !j.delta || mx_eval(ev, 2)) die("attention inputs");
  mx_set_default_device(MX_CPU);
  const char *names[] = {"forward (flash attention)", "sdpa_logsumexp", "sdpa_backward_q",
                         "sdpa_backward_kv"};
  const double prods[] = {2, 1, 3, 4};
  const double pairs = (double)T * (T + 1) / 2;
  for (int w = 0; w < 4; w++) {
    j.which = w;
    double t = gpu_time(t_run, &j, reps);
    printf("| %s | %.1f | %.1f |\n", names[w], t * 1e6,
           prods[w] * 2 * (double)(B * H) * pairs * (double)D / t * 1e-12);
  }
  mx_array *all[] = {o, j.q, j.k, j.v, j.dout, j.lse, j.delta};
  mx_array_free_n(all, 7);
}

/* ---- the embedding gradient: scatter-add of token rows ------------------------------- */
typedef struct {
  mx_array *z, *idx, *v;
} ejob;

static mx_array *e_run(void *c) {
  ejob *j = c;
  return mx_scatter_add_axis(j->z, j->idx, j->v, 1);
}

/* A training step's embedding gradient (32,768 ids, 8,519 x 768, bf16):
 * ids uniform, and Zipf-distributed (the k-th most frequent id has
 * frequency ~ 1/k, as a text's tokens: the most frequent ~10%). */
static void bench_embed_grad(int reps) {
  printf("\n## embedding gradient: scatter_add_axis (bf16, 32768 ids into 8519 x 768)\n\n");
  printf("| ids | most frequent id's hits | time (us) | GB/s (values) |\n|---|---|---|---|\n");
  const int64_t n = 32768, V = 8519, D = 768;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
  double *cdf = malloc(sizeof(double) * (size_t)V);
  if (!ids || !cdf) die("memory");
  double h = 0;
  for (int64_t r = 0; r < V; r++) cdf[r] = (h += 1.0 / (double)(r + 1));
  ejob j = {0};
  j.z = rnd((int64_t[]){1, V, D}, 3, MX_BFLOAT16, 0, 21);
  j.v = rnd((int64_t[]){1, n, D}, 3, MX_BFLOAT16, 1, 22);
  for (int kind = 0; kind < 2; kind++) {
    uint64_t x = 88172645463325252ull;
    int64_t top = 0, *cnt = calloc((size_t)V, sizeof *cnt);
    if (!cnt) die("memory");
    for (int64_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      double u = (double)(x >> 11) / 9007199254740992.0;
      int64_t id = (int64_t)(u * (double)V);
      if (kind == 1) { /* the first rank whose cdf passes u * h */
        int64_t lo = 0, hi = V - 1;
        while (lo < hi) {
          int64_t mid = (lo + hi) / 2;
          if (cdf[mid] >= u * h) hi = mid;
          else lo = mid + 1;
        }
        id = lo;
      }
      if (id >= V) id = V - 1;
      ids[i] = (int32_t)id;
      if (++cnt[id] > top) top = cnt[id];
    }
    free(cnt);
    j.idx = mx_array_from_data(ids, (int64_t[]){1, n, 1}, 3, MX_INT32);
    if (!j.idx) die("ids");
    double t = gpu_time(e_run, &j, reps);
    printf("| %s | %lld | %.1f | %.0f |\n", kind ? "Zipf" : "uniform", (long long)top, t * 1e6,
           (double)n * D * 2 / t * 1e-9);
    mx_array_free(j.idx);
  }
  mx_array_free(j.z);
  mx_array_free(j.v);
  free(ids);
  free(cdf);
}

/* ---- the LM head's products in training ----------------------------------------------- */
typedef struct {
  mx_array *a, *b, *c;
} mjob;

static mx_array *m_run(void *c) {
  mjob *j = c;
  return j->c ? mx_addmm(j->c, j->a, j->b, 1.0, 1.0) : mx_matmul(j->a, j->b);
}

/* x W^T, dY W and X^T dY of a head of N tokens over 32,768 rows of 768
 * (bf16): misaligned N (8,705, 8,519) against aligned ones. */
static void bench_head(int reps) {
  printf("\n## LM head products in training (bf16, 32768 rows, dim 768)\n\n");
  printf("| N | product | time (us) | TFLOP/s |\n|---|---|---|---|\n");
  const int64_t Ns[] = {8705, 8519, 8704, 8768, 8832};
  const int64_t M = 32768, K = 768;
  for (size_t i = 0; i < sizeof Ns / sizeof *Ns; i++) {
    const int64_t N = Ns[i];
    mx_array *x = rnd((int64_t[]){M, K}, 2, MX_BFLOAT16, 1, 31);
    mx_array *w = rnd((int64_t[]){N, K}, 2, MX_BFLOAT16, 1, 32);
    mx_array *dy = rnd((int64_t[]){M, N}, 2, MX_BFLOAT16, 1, 33);
    mx_array *wt = mx_transpose(w, NULL, 0), *xt = mx_transpose(x, NULL, 0);
    mjob js[3] = {{x, wt, NULL}, {dy, w, NULL}, {xt, dy, NULL}};
    const char *names[3] = {"x W^T", "dY W", "X^T dY"};
    for (int k = 0; k < 3; k++) {
      double t = gpu_time(m_run, &js[k], reps);
      printf("| %lld | %s | %.1f | %.0f |\n", (long long)N, names[k], t * 1e6,
             2.0 * (double)M * (double)N * (double)K / t * 1e-12);
    }
    mx_array *all[] = {x, w, dy, wt, xt};
    mx_array_free_n(all, 5);
  }
}

/* The products of a training step's Linear layers (bf16, 32,768 rows) in
 * the forms the matmul VJP builds: Y = X W^T, dX = dY W, dW^T = X^T dY
 * (bench/peers/torch_gemm.py times the same products with torch). */
static void bench_train_gemm(int reps) {
  printf("\n## Training products (bf16, M = 32768 rows)\n\n");
  printf("| K -> N | product | time (us) | TFLOP/s |\n|---|---|---|---|\n");
  const int64_t KN[][2] = {{768, 768}, {768, 2048}, {2048, 768}, {768, 2304}};
  const int64_t M = 32768;
  for (size_t i = 0; i < sizeof KN / sizeof *KN; i++) {
    const int64_t K = KN[i][0], N = KN[i][1];
    mx_array *x = rnd((int64_t[]){M, K}, 2, MX_BFLOAT16, 1, 31);
    mx_array *w = rnd((int64_t[]){N, K}, 2, MX_BFLOAT16, 1, 32);
    mx_array *dy = rnd((int64_t[]){M, N}, 2, MX_BFLOAT16, 1, 33);
    mx_array *wt = mx_transpose(w, NULL, 0), *xt = mx_transpose(x, NULL, 0);
    mx_array *cy = rnd((int64_t[]){M, N}, 2, MX_BFLOAT16, 1, 34);
    mx_array *cx = rnd((int64_t[]){M, K}, 2, MX_BFLOAT16, 1, 35);
    mjob js[5] = {{x, wt, NULL}, {dy, w, NULL}, {xt, dy, NULL}, {x, wt, cy}, {dy, w, cx}};
    const char *names[5] = {"Y = X W^T", "dX = dY W", "dW^T = X^T dY", "Y = C + X W^T (addmm)",
                            "dX = C + dY W (addmm)"};
    for (int k = 0; k < 5; k++) {
      double t = gpu_time(m_run, &js[k], reps);
      printf("| %lld -> %lld | %s | %.1f | %.0f |\n", (long long)K, (long long)N, names[k],
             t * 1e6, 2.0 * (double)M * (double)N * (double)K / t * 1e-12);
    }
    mx_array *all[] = {x, w, dy, wt, xt, cy, cx};
    mx_array_free_n(all, 7);
  }
}

/* ---- the loss over the vocabulary in training ----------------------------------------- */
typedef struct {
  mx_array *logits, *targets, *cot;
  bool grad;
} cjob;

static mx_array *c_run(void *c) {
  cjob *j = c;
  return j->grad ? mx__fast_softmax_ce_grad(j->logits, j->targets, j->cot)
                 : mx__fast_softmax_ce(j->logits, j->targets);
}

/* softmax_cross_entropy and its backward over (32, 1024, 8705) bf16
 * logits (the training step of bench/run-gpu-train.sh). */
static void bench_ce(int reps) {
  printf("\n## softmax_cross_entropy (bf16 logits 32 x 1024 x 8705)\n\n");
  printf("| op | time (us) | GB/s |\n|---|---|---|\n");
  const int64_t B = 32, T = 1024, V = 8705;
  cjob j = {0};
  j.logits = rnd((int64_t[]){B, T, V}, 3, MX_BFLOAT16, 2, 41);
  mx_array *u = rnd((int64_t[]){B, T}, 2, MX_FLOAT32, 1, 42);
  mx_array *a = mx_abs(u), *sc = mx_multiply_scalar(a, 2000);
  j.targets = mx_astype(sc, MX_INT32);
  j.cot = mx_full((int64_t[]){B, T}, 2, 1.0 / (double)(B * T), MX_FLOAT32);
  mx_array *ev[] = {j.targets, j.cot};
  if (!j.targets || !j.cot || mx_eval(ev, 2)) die("ce inputs");
  const double bytes = (double)B * T * V * 2;
  for (int g = 0; g < 2; g++) {
    j.grad = g;
    double t = gpu_time(c_run, &j, reps);
    printf("| %s | %.1f | %.0f |\n", g ? "backward (reads, writes the logits)" : "forward",
           t * 1e6, (g ? 2 : 1) * bytes / t * 1e-9);
  }
  mx_array *all[] = {j.logits, j.targets, j.cot, u, a, sc};
  mx_array_free_n(all, 6);
}

/* rope over a (B, T, H, D) projection viewed as (B, H, T, D): the
 * training step's q or k (32 x 1024 x 12 x 64) and a 512-token prompt's q
 * of the 1B model (1 x 512 x 32 x 64), bf16. */
static mx_array *r_run(void *c) { return mx_fast_rope(c, 64, false, 10000, 1.0, 0, NULL); }

static void bench_rope(int reps) {
  printf("\n## rope (bf16, (B, T, H, D) viewed as (B, H, T, D), head size 64)\n\n");
  printf("| B x T x H | time (us) | GB/s |\n|---|---|---|\n");
  const int64_t shapes[][3] = {{32, 1024, 12}, {1, 512, 32}};
  for (int i = 0; i < 2; i++) {
    const int64_t B = shapes[i][0], T = shapes[i][1], H = shapes[i][2];
    mx_array *x0 = rnd((int64_t[]){B, T, H, 64}, 4, MX_BFLOAT16, 1, 51);
    mx_array *x = mx_transpose(x0, (int[]){0, 2, 1, 3}, 4);
    if (!x || mx_array_eval(x)) die("rope input");
    double t = gpu_time(r_run, x, reps);
    printf("| %lld x %lld x %lld | %.1f | %.0f |\n", (long long)B, (long long)T, (long long)H,
           t * 1e6, 2.0 * (double)(B * T * H * 64 * 2) / t * 1e-9);
    mx_array_free(x);
    mx_array_free(x0);
  }
}

/* rms_norm over a training step's rows (32 x 1024 x 768 bf16, a weight):
 * the forward, and the backward as the training step runs it (dx plus the
 * residual stream's gradient in one pass, dw from the same pass's partial
 * sums). */
typedef struct {
  mx_array *x, *g, *w, *r;
} njob;
static mx_array *n_fwd(void *c) {
  njob *j = c;
  return mx_fast_rms_norm(j->x, j->w, 1e-5);
}
static mx_array *n_bwd(void *c) {
  njob *j = c;
  mx_array *dw = NULL, *dx = mx__fast_rms_norm_grad_both(j->x, j->g, j->w, 1e-5, j->r, &dw);
  mx_array_free(dx); /* dw's graph holds it */
  return dw;
}

static void bench_norm(int reps) {
  printf("\n## rms_norm (bf16 32 x 1024 x 768, a weight)\n\n");
  printf("| op | time (us) | GB/s |\n|---|---|---|\n");
  const int64_t sh[3] = {32, 1024, 768};
  njob j = {rnd(sh, 3, MX_BFLOAT16, 1, 61), rnd(sh, 3, MX_BFLOAT16, 1, 62),
            rnd((int64_t[]){768}, 1, MX_BFLOAT16, 1, 63), rnd(sh, 3, MX_BFLOAT16, 1, 64)};
  const double bytes = 32.0 * 1024 * 768 * 2;
  double t = gpu_time(n_fwd, &j, reps);
  printf("| forward | %.1f | %.0f |\n", t * 1e6, 2 * bytes / t * 1e-9);
  t = gpu_time(n_bwd, &j, reps);
  printf("| backward: dx + residual, dw (reads x, g, r; writes dx) | %.1f | %.0f |\n", t * 1e6,
         4 * bytes / t * 1e-9);
  mx_array *all[] = {j.x, j.g, j.w, j.r};
  mx_array_free_n(all, 4);
}

/* ---- sort ------------------------------------------------------------------------------ */
typedef struct {
  mx_array *a;
  bool arg;
} sjob;

static mx_array *s_run(void *c) {
  sjob *j = c;
  return j->arg ? mx_argsort(j->a, -1) : mx_sort(j->a, -1);
}

/* sum_squares over the gradients of bench/run-gpu-train.sh's model (bf16,
 * dim 768, 12 layers, MLP 2048, vocabulary 8,952): the gradient norm of
 * one training step, one op. */
typedef struct {
  mx_array **g;
  int n;
} sqjob;
static mx_array *sq_run(void *c) {
  sqjob *j = c;
  return mx__sum_squares(j->g, j->n);
}

static void bench_sumsq(int reps) {
  printf("\n## sum_squares over a training step's gradients (bf16, 12 layers, dim 768)\n\n");
  printf("| inputs | values | time (us) | GB/s |\n|---|---|---|---|\n");
  enum { L = 12, NG = 2 + 9 * L };
  mx_array *g[NG];
  int n = 0;
  double vals = 0;
  g[n++] = rnd((int64_t[]){8952, 768}, 2, MX_BFLOAT16, 1e-3, 100);
  for (int l = 0; l < L; l++) {
    const int64_t sh[9][2] = {{768, 768}, {768, 768}, {768, 768}, {768, 768}, {2048, 768},
                              {2048, 768}, {768, 2048}, {768, 1}, {768, 1}};
    for (int k = 0; k < 9; k++, n++)
      g[n] = rnd(sh[k], sh[k][1] == 1 ? 1 : 2, MX_BFLOAT16, 1e-3, (uint64_t)(101 + n));
  }
  g[n++] = rnd((int64_t[]){768}, 1, MX_BFLOAT16, 1e-3, 999);
  for (int i = 0; i < n; i++) vals += (double)mx_array_size(g[i]);
  sqjob j = {g, n};
  double t = gpu_time(sq_run, &j, reps);
  printf("| %d | %.0f | %.1f | %.0f |\n", n, vals, t * 1e6, vals * 2 / t * 1e-9);
  mx_array_free_n(g, n);
}

/* One AdamW step over the same model's float32 master weights with bf16
 * gradients and a gradient scale, as the trainer calls it
 * (mx__optimizer_update_scaled, then the evaluation of the parameters and
 * the state): one adam_update a parameter (MXC_ADAM_MANY=0) next to one
 * ADAM_MANY op for all. GB/s counts p, m, v and g read and m', v', p'
 * written. */
static void bench_adam(int reps) {
  printf("\n## AdamW step over a training step's parameters (float32, bf16 gradients, "
         "12 layers, dim 768)\n\n");
  printf("| path | params | values | time (us) | GB/s |\n|---|---|---|---|---|\n");
  enum { L = 12 };
  mx_map *params = mx_map_new(), *grads = mx_map_new();
  double vals = 0;
  for (int n = 0; n < 2 + 9 * L; n++) {
    const int64_t sh[9][2] = {{768, 768}, {768, 768}, {768, 768}, {768, 768}, {2048, 768},
                              {2048, 768}, {768, 2048}, {768, 1}, {768, 1}};
    const int64_t *s = n == 0 ? (const int64_t[]){8952, 768}
                     : n == 1 + 9 * L ? (const int64_t[]){768, 1} : sh[(n - 1) % 9];
    const int nd = s[1] == 1 ? 1 : 2;
    char k[32];
    snprintf(k, sizeof k, "p%d", n);
    mx_map_set_take(params, k, rnd(s, nd, MX_FLOAT32, 0.02, (uint64_t)(300 + n)));
    mx_map_set_take(grads, k, rnd(s, nd, MX_BFLOAT16, 1e-3, (uint64_t)(700 + n)));
    vals += (double)(s[0] * s[1]);
  }
  mx_array *scale = mx_array_scalar(0.5, MX_FLOAT32);
  for (int many = 0; many < 2; many++) {
    if (many) unsetenv("MXC_ADAM_MANY");
    else setenv("MXC_ADAM_MANY", "0", 1);
    mx_adam_options ao = MX_ADAMW_OPTIONS(1e-3);
    mx_optimizer *o = mx_optimizer_adamw(&ao);
    mx_map *p = mx_map_copy(params);
    double t[5];
    mx_set_default_device(MX_GPU);
    for (int b = -1; b < 5; b++) {
      double t0 = now();
      for (int r = 0; r < reps; r++)
        if (mx__optimizer_update_scaled(o, p, grads, scale) || mx_optimizer_eval(o, p))
          die("adam step");
      mx_array *flat = mx_flatten(mx_map_value(p, 0), 0, -1);
      mx_array *one = mx_slice(flat, (int64_t[]){0}, (int64_t[]){1}, NULL, 1);
      mx_array *sum = mx_sum(one, NULL, 0, false);
      double v = 0;
      if (!sum || mx_array_item(sum, &v)) die("sync");
      mx_array_free_n((mx_array *[]){flat, one, sum}, 3);
      if (b >= 0) t[b] = (now() - t0) / reps;
    }
    mx_set_default_device(MX_CPU);
    qsort(t, 5, sizeof *t, cmp);
    printf("| %s | %d | %.0f | %.1f | %.0f |\n", many ? "one op (ADAM_MANY)" : "one a parameter",
           mx_map_size(p), vals, t[2] * 1e6, vals * 26 / t[2] * 1e-9);
    mx_map_free(p);
    mx_optimizer_free(o);
  }
  unsetenv("MXC_ADAM_MANY");
  mx_array_free(scale);
  mx_map_free(params);
  mx_map_free(grads);
}

static void bench_sort(int reps) {
  printf("\n## sort / argsort along the last axis (float32)\n\n");
  printf("| rows | len | op | time (us) | Melem/s |\n|---|---|---|---|---|\n");
  const int64_t shapes[][2] = {{1, 1 << 20}, {16, 65536}, {1024, 4096}, {4096, 1024}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    sjob j;
    j.a = rnd(shapes[i], 2, MX_FLOAT32, 1, 6);
    for (int arg = 0; arg < 2; arg++) {
      j.arg = arg;
      double t = gpu_time(s_run, &j, reps);
      printf("| %lld | %lld | %s | %.1f | %.0f |\n", (long long)shapes[i][0],
             (long long)shapes[i][1], arg ? "argsort" : "sort", t * 1e6,
             (double)shapes[i][0] * (double)shapes[i][1] / t * 1e-6);
    }
    mx_array_free(j.a);
  }
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 20;
  if (reps < 1) reps = 1;
  if (!mx_device_available(MX_GPU)) {
    printf("bench_cuda_kernels: no GPU available, nothing to measure\n");
    return 0;
  }
  printf("# CUDA LLM kernels (median of 5 batches of %d)\n", reps);
  /* MXC_BENCH_ONLY: "attention-train" or "embedding-grad", that table only */
  const char *only = getenv("MXC_BENCH_ONLY");
  if (only && !strcmp(only, "attention-train")) {
    bench_sdpa_train(reps);
    return 0;
  }
  if (only && !strcmp(only, "embedding-grad")) {
    bench_embed_grad(reps);
    return 0;
  }
  if (only && !strcmp(only, "head")) {
    bench_head(reps);
    return 0;
  }
  if (only && !strcmp(only, "ce")) {
    bench_ce(reps);
    return 0;
  }
  if (only && !strcmp(only, "train-gemm")) {
    bench_train_gemm(reps);
    return 0;
  }
  if (only && !strcmp(only, "rope")) {
    bench_rope(reps);
    return 0;
  }
  if (only && !strcmp(only, "norm")) {
    bench_norm(reps);
    return 0;
  }
  if (only && !strcmp(only, "sumsq")) {
    bench_sumsq(reps);
    return 0;
  }
  if (only && !strcmp(only, "adam")) {
    bench_adam(reps);
    return 0;
  }
  bench_floor(reps);
  bench_gemv(reps);
  bench_qmm(reps);
  bench_sdpa(reps);
  bench_sdpa_train(reps);
  bench_embed_grad(reps);
  bench_head(reps);
  bench_train_gemm(reps);
  bench_ce(reps);
  bench_rope(reps);
  bench_norm(reps);
  bench_sumsq(reps);
  bench_adam(reps);
  bench_sort(reps);
  return 0;
}
