/* test_cuda.c — the CUDA backend: availability, residency and transfer
 * counting, memory counters, out-of-memory as a status, end-to-end
 * graphs equal to the CPU's results, and the LLM kernels (quantized GEMV /
 * GEMM, split-KV decode and tiled prefill attention, sorts of long rows)
 * against the CPU kernels. Every case skips cleanly where no GPU
 * (or no CUDA build) is present. Op-by-op parity is tests/test_ops.c. */
#include <math.h>
#include <string.h>

#include "mxc/mxc.h"
#include "ops/fast_params.h"
#include "ops/optim_params.h"
#include "test.h"

#define NEED_GPU()                                                         \
  do {                                                                     \
    if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available");      \
  } while (0)

static size_t h2d_count(void) {
  size_t h = 0;
  mx_get_transfer_stats(&h, NULL, NULL);
  return h;
}
static size_t xfers(void) {
  size_t n = 0;
  mx_get_transfer_stats(NULL, NULL, &n);
  return n;
}

static mx_array *ramp(int64_t n, double scale) {
  float *v = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) v[i] = (float)(sin((double)i * 0.37) * scale);
  mx_array *a = mx_array_from_data(v, (int64_t[]){n}, 1, MX_FLOAT32);
  free(v);
  return a;
}

TEST(availability_is_reported_as_a_status) {
  if (mx_device_available(MX_GPU)) {
    int prev = mx_set_default_device(MX_GPU);
    ASSERT_EQ_INT(prev, MX_CPU);
    ASSERT_EQ_INT(mx_default_device(), MX_GPU);
    mx_set_default_device(MX_CPU);
  } else {
    ASSERT(mx_set_default_device(MX_GPU) < 0); /* a status */
    ASSERT_EQ_INT(mx_default_device(), MX_CPU);
    TEST_SKIP("no GPU available (the CPU-only path was checked)");
  }
}

TEST(cpu_array_moves_once_and_result_moves_back_once) {
  NEED_GPU();
  mx_array *x = ramp(4096, 1.0);
  ASSERT_OK(mx_array_eval(x));
  size_t n0 = xfers(), h0 = h2d_count();
  mx_set_default_device(MX_GPU);
  mx_array *y = mx_add(x, x);          /* x goes to the GPU once */
  mx_array *z = mx_multiply(y, x);     /* x is already there */
  mx_array *w = mx_exp(z);
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(w));
  ASSERT_EQ_INT(xfers() - n0, 1);
  ASSERT_EQ_INT(h2d_count() - h0, 4096 * sizeof(float));
  size_t d0 = 0, d1 = 0;
  mx_get_transfer_stats(NULL, &d0, NULL);
  const float *p = mx_array_data(w); /* one device-to-host copy */
  ASSERT_NOT_NULL(p);
  const float *q = mx_array_data(w); /* none */
  ASSERT(p == q);
  mx_get_transfer_stats(NULL, &d1, NULL);
  ASSERT_EQ_INT(d1 - d0, 4096 * sizeof(float));
  ASSERT_EQ_INT(xfers() - n0, 2);
  const float *xv = mx_array_data(x);
  for (int i = 0; i < 4096; i++) {
    float e = expf((xv[i] + xv[i]) * xv[i]);
    ASSERT_NEAR(p[i], e, 1e-5 * fabs(e) + 1e-6);
  }
  /* a CPU op on the GPU result reads the host copy made above: no move */
  mx_array *c = mx_negative(w);
  ASSERT_OK(mx_array_eval(c));
  ASSERT_EQ_INT(xfers() - n0, 2);
  mx_array *all[] = {x, y, z, w, c};
  mx_array_free_n(all, 5);
}

/* Uploads are queued without waiting for the stream (staged in pinned
 * slots): the host buffer may change right after, behind long queued work,
 * through more uploads than there are slots, and for a large array (the
 * synchronous path) too. */
TEST(uploads_are_staged_and_the_host_buffer_may_change_at_once) {
  NEED_GPU();
  const int64_t n = 8192, big = 600 * 1024; /* 32 KB (staged), 2.4 MB (waits) */
  float *v = malloc(sizeof(float) * (size_t)big);
  ASSERT_NOT_NULL(v);
  mx_array *m = ramp(512 * 512, 0.01);
  mx_array *mm = mx_reshape(m, (int64_t[]){512, 512}, 2);
  mx_array *res[24] = {0};
  mx_set_default_device(MX_GPU);
  for (int r = 0; r < 24; r++) {
    const int64_t len = r == 5 ? big : n;
    /* a queue of work ahead of the upload */
    mx_array *p = mx_matmul(mm, mm);
    for (int k = 0; k < 3 && p; k++) {
      mx_array *q = mx_matmul(p, mm);
      mx_array_free(p);
      p = q;
    }
    ASSERT_OK(mx_array_eval(p));
    for (int64_t i = 0; i < len; i++) v[i] = (float)(r * 1000 + (i % 977));
    mx_array *h = mx_array_from_data_nocopy(v, (int64_t[]){len}, 1, MX_FLOAT32, NULL, NULL);
    res[r] = mx_add(h, h);
    ASSERT_OK(mx_array_eval(res[r]));
    mx_array_free(h);
    for (int64_t i = 0; i < len; i++) v[i] = -1.0f; /* the host side changes at once */
    mx_array_free(p);
  }
  mx_set_default_device(MX_CPU);
  for (int r = 0; r < 24; r++) {
    const int64_t len = r == 5 ? big : n;
    const float *o = mx_array_data(res[r]);
    ASSERT_NOT_NULL(o);
    for (int64_t i = 0; i < len; i++)
      ASSERT_MSG(o[i] == 2.0f * (float)(r * 1000 + (i % 977)), "upload %d, element %lld: %g", r,
                 (long long)i, (double)o[i]);
    mx_array_free(res[r]);
  }
  mx_array_free(mm);
  mx_array_free(m);
  free(v);
}

TEST(views_do_not_move_data) {
  NEED_GPU();
  mx_array *x = ramp(64, 1.0);
  mx_array *m = mx_reshape(x, (int64_t[]){8, 8}, 2);
  ASSERT_OK(mx_array_eval(m));
  size_t n0 = xfers();
  mx_set_default_device(MX_GPU);
  mx_array *t = mx_transpose(m, (int[]){1, 0}, 2); /* a view: x stays put */
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(t));
  ASSERT_EQ_INT(xfers() - n0, 0);
  mx_set_default_device(MX_GPU);
  mx_array *s = mx_add(t, t); /* now the data moves, once */
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(s));
  ASSERT_EQ_INT(xfers() - n0, 1);
  const float *xv = mx_array_data(x), *sv = mx_array_data(s);
  ASSERT_NOT_NULL(sv);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 8; j++) ASSERT_NEAR(sv[i * 8 + j], 2 * xv[j * 8 + i], 1e-6);
  mx_array *all[] = {x, m, t, s};
  mx_array_free_n(all, 4);
}

TEST(gpu_memory_is_counted_and_cached) {
  NEED_GPU();
  mx_array *x = ramp(1 << 18, 1.0);
  ASSERT_OK(mx_array_eval(x));
  mx_clear_cache();
  size_t a0 = mx_get_active_memory();
  mx_set_default_device(MX_GPU);
  mx_array *y = mx_add(x, x);
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(y));
  /* x's GPU copy and y: at least 2 MiB more */
  size_t a1 = mx_get_active_memory();
  ASSERT(a1 >= a0 + 2 * (1u << 20));
  ASSERT(mx_get_peak_memory() >= a1);
  mx_array_free(y);
  ASSERT(mx_get_active_memory() < a1);
  ASSERT(mx_get_cache_memory() >= (1u << 20));
  /* the cached GPU block is reused for a same-sized result */
  size_t c0 = mx_get_cache_memory();
  mx_set_default_device(MX_GPU);
  y = mx_multiply(x, x);
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(y));
  ASSERT(mx_get_cache_memory() < c0);
  mx_array_free(y);
  mx_clear_cache();
  ASSERT_EQ_INT(mx_get_cache_memory(), 0);
  mx_array_free(x);
}

TEST(out_of_memory_is_a_status) {
  NEED_GPU();
  mx_array *x = ramp(1 << 20, 1.0);
  ASSERT_OK(mx_array_eval(x));
  mx_clear_cache();
  size_t prev = mx_set_memory_limit(mx_get_active_memory() + 4096);
  mx_set_default_device(MX_GPU);
  mx_array *y = mx_add(x, x);
  mx_set_default_device(MX_CPU);
  int st = mx_array_eval(y);
  mx_set_memory_limit(prev);
  ASSERT_EQ_INT(st, MX_ERR_OOM);
  ASSERT(strstr(mx_last_error(), "out of memory") != NULL);
  ASSERT(!mx_array_is_evaluated(y));
  /* everything still works once memory is back */
  ASSERT_OK(mx_array_eval(y));
  const float *xv = mx_array_data(x), *yv = mx_array_data(y);
  ASSERT_NOT_NULL(yv);
  ASSERT_NEAR(yv[12345], 2 * xv[12345], 1e-6);
  mx_array_free(y);
  mx_array_free(x);
}

TEST(a_device_allocation_failure_is_a_status) {
  NEED_GPU();
  mx_array *x = ramp(1024, 1.0);
  ASSERT_OK(mx_array_eval(x));
  mx_set_default_device(MX_GPU);
  mx_array *y = mx_exp(x);
  mx_set_default_device(MX_CPU);
  mx_debug_fail_nth_alloc(1); /* the first allocation of this eval fails */
  ASSERT_EQ_INT(mx_array_eval(y), MX_ERR_OOM);
  mx_debug_fail_nth_alloc(0);
  ASSERT_OK(mx_array_eval(y));
  mx_array_free(y);
  mx_array_free(x);
}

/* A small MLP forward + loss (every intermediate freed: ops retain inputs). */
static mx_array *mlp(mx_array *x, mx_array *w1, mx_array *w2, mx_array *b1) {
  mx_array *t[9];
  t[0] = mx_matmul(x, w1);
  t[1] = mx_add(t[0], b1);
  t[2] = mx_array_scalar(0, MX_FLOAT32);
  t[3] = mx_maximum(t[1], t[2]);
  t[4] = mx_transpose(w2, (int[]){1, 0}, 2);
  t[5] = mx_matmul(t[3], t[4]);
  t[6] = mx_softmax(t[5], (int[]){-1}, 1);
  t[7] = mx_multiply(t[6], t[5]);
  t[8] = mx_sum(t[7], NULL, 0, false);
  mx_array *r = t[8];
  mx_array_free_n(t, 8);
  return r;
}

static mx_array *normal(const int64_t *shape, int ndim, double scale, uint64_t seed) {
  mx_array *k = mx_random_key(seed);
  mx_array *r = mx_random_normal(shape, ndim, MX_FLOAT32, 0, scale, k);
  mx_array_free(k);
  return r;
}

TEST(end_to_end_graph_equals_cpu) {
  NEED_GPU();
  mx_array *x = normal((int64_t[]){32, 64}, 2, 1, 7);
  mx_array *w1 = normal((int64_t[]){64, 128}, 2, 0.1, 8);
  mx_array *w2 = normal((int64_t[]){16, 128}, 2, 0.1, 9);
  mx_array *b1 = normal((int64_t[]){128}, 1, 0.1, 10);
  mx_array *ins[] = {x, w1, w2, b1};
  ASSERT_OK(mx_eval(ins, 4));
  mx_array *cpu = mlp(x, w1, w2, b1);
  ASSERT_NOT_NULL(cpu);
  mx_set_default_device(MX_GPU);
  mx_array *gpu = mlp(x, w1, w2, b1);
  mx_set_default_device(MX_CPU);
  ASSERT_NOT_NULL(gpu);
  double vc = 0, vg = 0;
  ASSERT_OK(mx_array_item(cpu, &vc));
  ASSERT_OK(mx_array_item(gpu, &vg));
  ASSERT_NEAR(vg, vc, 1e-4 * fabs(vc) + 1e-4);
  mx_array_free(cpu);
  mx_array_free(gpu);
  mx_array_free_n(ins, 4);
}

TEST(random_bits_equal_cpu) {
  NEED_GPU();
  mx_array *k = mx_random_key(42);
  mx_array *c = mx_random_uniform(0, 1, (int64_t[]){7, 33}, 2, MX_FLOAT32, k);
  mx_set_default_device(MX_GPU);
  mx_array *g = mx_random_uniform(0, 1, (int64_t[]){7, 33}, 2, MX_FLOAT32, k);
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_array_eval(c));
  ASSERT_OK(mx_array_eval(g));
  const float *cv = mx_array_data(c), *gv = mx_array_data(g);
  ASSERT_NOT_NULL(gv);
  for (int i = 0; i < 7 * 33; i++) ASSERT_NEAR(gv[i], cv[i], 1e-6);
  mx_array *all[] = {k, c, g};
  mx_array_free_n(all, 3);
}

TEST(half_precision_matmul_equals_cpu) {
  NEED_GPU();
  mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16, MX_FLOAT64};
  for (int d = 0; d < 3; d++) {
    mx_array *a32 = normal((int64_t[]){3, 40, 72}, 3, 1, 1);
    mx_array *b32 = normal((int64_t[]){72, 24}, 2, 1, 2);
    mx_array *a = mx_astype(a32, dts[d]), *b = mx_astype(b32, dts[d]);
    ASSERT_OK(mx_array_eval(a));
    ASSERT_OK(mx_array_eval(b));
    mx_array *cm = mx_matmul(a, b);
    mx_array *c = mx_astype(cm, MX_FLOAT32);
    mx_set_default_device(MX_GPU);
    mx_array *g = mx_matmul(a, b);
    mx_set_default_device(MX_CPU);
    mx_array *g32 = mx_astype(g, MX_FLOAT32);
    ASSERT_OK(mx_array_eval(c));
    ASSERT_OK(mx_array_eval(g32));
    const float *cv = mx_array_data(c), *gv = mx_array_data(g32);
    ASSERT_NOT_NULL(gv);
    /* one rounding of an f32 accumulation on each side */
    double tol = dts[d] == MX_FLOAT64 ? 1e-9 : dts[d] == MX_FLOAT16 ? 2e-3 : 1.6e-2;
    for (int i = 0; i < 3 * 40 * 24; i++) ASSERT_NEAR(gv[i], cv[i], tol * (1 + fabs(cv[i])));
    mx_array *all[] = {a32, b32, a, b, cm, c, g, g32};
    mx_array_free_n(all, 8);
  }
}

/* ---- LLM kernels: each checked against the CPU kernel of the same op ---------- */

/* Elements of g differing from c by more than tol * (1 + |c|) (NaN only
 * matches NaN, infinities must be equal); prints the first. -1 on error. */
static int64_t mismatches(mx_array *c, mx_array *g, double tol, const char *what) {
  if (!c || !g || mx_array_eval(c) || mx_array_eval(g)) {
    printf("    %s: eval failed: %s\n", what, mx_last_error());
    return -1;
  }
  int64_t n = mx_array_size(c);
  if (mx_array_size(g) != n) return -1;
  double *a = malloc(sizeof(double) * (size_t)(n ? n : 1));
  double *b = malloc(sizeof(double) * (size_t)(n ? n : 1));
  int64_t bad = -1;
  if (!mx_array_copy_to(c, MX_FLOAT64, a, n) && !mx_array_copy_to(g, MX_FLOAT64, b, n)) {
    bad = 0;
    for (int64_t i = 0; i < n; i++) {
      bool ok = isnan(a[i]) ? isnan(b[i])
                : isinf(a[i]) ? a[i] == b[i]
                              : fabs(a[i] - b[i]) <= tol * (1 + fabs(a[i]));
      if (!ok && bad++ == 0)
        printf("    %s: element %lld: cpu %.9g gpu %.9g\n", what, (long long)i, a[i], b[i]);
    }
  }
  free(a);
  free(b);
  return bad;
}

/* Matrix products through cuBLASLt plans: unaligned views, addmm's beta,
 * a repeated shape (cached plan: the same bits), and float32 with TF32
 * (MX_MATMUL_HIGH: close to the CPU, but not its bits) or without. */
TEST(float32_matmul_plans_and_tf32) {
  NEED_GPU();
  mx_matmul_precision p0 = mx_get_float32_matmul_precision();
  mx_array *a0 = normal((int64_t[]){301, 257}, 2, 1, 21);
  mx_array *b = normal((int64_t[]){256, 131}, 2, 1, 22);
  mx_array *c = normal((int64_t[]){131}, 1, 1, 23);
  /* a: columns 1..256 of a0, 4-byte aligned rows of stride 257 */
  mx_array *a = mx_slice(a0, (int64_t[]){0, 1}, (int64_t[]){301, 257}, NULL, 2);
  ASSERT_OK(mx_eval((mx_array *[]){a, b, c}, 3));
  mx_array *cpu = mx_addmm(c, a, b, 0.5, 2.0);
  mx_array *cpu2 = mx_matmul(a, b);
  ASSERT_OK(mx_eval((mx_array *[]){cpu, cpu2}, 2));
  mx_set_default_device(MX_GPU);
  ASSERT_OK(mx_set_float32_matmul_precision(MX_MATMUL_HIGHEST));
  mx_array *g = mx_addmm(c, a, b, 0.5, 2.0);
  mx_array *g2 = mx_matmul(a, b), *g3 = mx_matmul(a, b);
  ASSERT_OK(mx_set_float32_matmul_precision(MX_MATMUL_HIGH));
  mx_array *t = mx_matmul(a, b);
  ASSERT_OK(mx_set_float32_matmul_precision(p0));
  mx_set_default_device(MX_CPU);
  ASSERT_OK(mx_eval((mx_array *[]){g, g2, g3, t}, 4));
  ASSERT_EQ_INT(mismatches(cpu, g, 1e-4, "addmm f32"), 0); /* K = 256: sums of ~200 */
  ASSERT_EQ_INT(mismatches(cpu2, g2, 1e-4, "matmul f32"), 0);
  const float *v2 = mx_array_data(g2), *v3 = mx_array_data(g3), *vt = mx_array_data(t);
  const float *vc = mx_array_data(cpu2);
  ASSERT(!memcmp(v2, v3, sizeof(float) * 301 * 131));
  /* TF32: inputs keep 10 mantissa bits; K = 256 products of N(0,1) */
  double maxd = 0;
  for (int i = 0; i < 301 * 131; i++) {
    double d = fabs((double)vt[i] - vc[i]);
    if (d > maxd) maxd = d;
  }
  printf("    tf32 max |gpu - cpu| = %.3g\n", maxd);
  ASSERT(maxd < 0.1);
  ASSERT(maxd > 1e-3); /* TF32 was used: full float32 stays below 1e-4 here */
  mx_array_free_n((mx_array *[]){a0, a, b, c, cpu, cpu2, g, g2, g3, t}, 10);
}

static double dtype_tol(mx_dtype dt) {
  return dt == MX_BFLOAT16 ? 1.6e-2 : dt == MX_FLOAT16 ? 2e-3 : 2e-5;
}

static mx_array *normal_dt(const int64_t *shape, int ndim, double scale, uint64_t seed,
                           mx_dtype dt) {
  mx_array *f = normal(shape, ndim, scale, seed);
  mx_array *r = mx_astype(f, dt);
  mx_array_free(f);
  if (r && mx_array_eval(r)) {
    mx_array_free(r);
    return NULL;
  }
  return r;
}

/* adam_update's packed form with a 16-bit gradient and a gradient scale
 * (the trainer's step) has the bits of the cast, the multiply and the
 * float32 form, on the vector path (contiguous, n % 4 == 0) and the
 * strided one. */
TEST(adam_update_reads_16bit_grads_and_a_scale) {
  NEED_GPU();
  const int64_t shapes[2][2] = {{3, 37}, {4, 64}};
  const mx_dtype gts[2] = {MX_BFLOAT16, MX_FLOAT16};
  mx_set_default_device(MX_GPU);
  for (int si = 0; si < 2; si++)
    for (int gi = 0; gi < 2; gi++) {
      mx_array *p = normal(shapes[si], 2, 1, 81), *m = normal(shapes[si], 2, 0.1, 82);
      mx_array *v0 = normal(shapes[si], 2, 0.1, 83), *v = mx_square(v0);
      mx_array *g = normal_dt(shapes[si], 2, 1, 84, gts[gi]);
      mx_array *s = mx_array_scalar(0.37, MX_FLOAT32);
      mx__adam_params ap = {.which = MX__ADAM_ALL, .beta1 = 0.9, .beta2 = 0.999, .c1 = 1e-3,
                            .c2 = 1.2, .eps = 1e-8, .decay = 0.999};
      mx_array *gf = mx_astype(g, MX_FLOAT32), *gs = mx_multiply(gf, s);
      mx_array *ref = mx__adam_update(&ap, p, m, v, gs);
      mx_array *fused = mx__adam_update_all(&ap, p, m, v, g, s);
      ASSERT_OK(mx_eval((mx_array *[]){ref, fused}, 2));
      const int64_t n = 3 * shapes[si][0] * shapes[si][1];
      float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
      ASSERT_OK(mx_array_copy_to(ref, MX_FLOAT32, a, n));
      ASSERT_OK(mx_array_copy_to(fused, MX_FLOAT32, b, n));
      ASSERT_MSG(!memcmp(a, b, sizeof(float) * (size_t)n), "shape %d %s: not the bits", si,
                 mx_dtype_name(gts[gi]));
      free(a);
      free(b);
      mx_array_free_n((mx_array *[]){p, m, v0, v, g, s, gf, gs, ref, fused}, 10);
    }
  mx_set_default_device(MX_CPU);
}

/* rope's vector kernel (16-bit, dims == D, >= 16 positions, >= 4 rows a
 * position): a (B, T, H, D) array viewed as (B, H, T, D), 10 head rows a
 * position (the last group of 4 is partial), two angle scales. */
TEST(rope_vector_kernel_equals_cpu) {
  NEED_GPU();
  mx_array *x0 = normal_dt((int64_t[]){2, 40, 5, 64}, 4, 1, 71, MX_BFLOAT16);
  ASSERT(x0);
  mx_array *x = mx_transpose(x0, (int[]){0, 2, 1, 3}, 4);
  ASSERT_OK(mx_array_eval(x));
  for (int inv = 0; inv < 2; inv++) {
    double sc = inv ? 0.25 : 1.0;
    mx_array *c = mx_fast_rope(x, 64, false, 10000, sc, 7, NULL);
    mx_set_default_device(MX_GPU);
    mx_array *g = mx_fast_rope(x, 64, false, 10000, sc, 7, NULL);
    mx_set_default_device(MX_CPU);
    ASSERT_EQ_INT(mismatches(c, g, 1e-2, "rope bf16"), 0);
    mx_array_free(c);
    mx_array_free(g);
  }
  mx_array_free(x);
  mx_array_free(x0);
}

/* The vector rope kernel (angles per position in shared memory) has the
 * bits of the element kernel (a last axis of stride 2 takes that one), for
 * a prompt's stacked q/k/v heads (rope_heads: the last heads copied), for
 * plain rope over several positions and for one position; bf16 and f16,
 * head sizes 64 and 128, float32 frequencies. */
TEST(rope_heads_vector_kernel_has_the_bits_of_the_element_kernel) {
  NEED_GPU();
  const mx_dtype dts[2] = {MX_BFLOAT16, MX_FLOAT16};
  const int64_t Ts[3] = {24, 1, 300};
  float frq[64];
  for (int i = 0; i < 64; i++) frq[i] = (float)(1.0 + 0.37 * i + 0.01 * i * i);
  mx_array *fr = mx_array_from_data(frq, (int64_t[]){64}, 1, MX_FLOAT32);
  for (int di = 0; di < 2; di++)
    for (int ti = 0; ti < 3; ti++)
      for (int hd = 64; hd <= 128; hd += 64) {
        const int64_t T = Ts[ti], N = 6, rot = ti == 1 ? 6 : 4;
        /* (1, T, N, 2 D): every other feature is the head (stride 2) */
        mx_array *w = normal_dt((int64_t[]){1, T, N, 2 * hd}, 4, 1, 80 + ti, dts[di]);
        mx_array *ws = mx_slice_axis(w, 3, 0, 2 * hd, 2);
        mx_array *xs = mx_transpose(ws, (int[]){0, 2, 1, 3}, 4); /* last stride 2 */
        mx_array *xc = mx_copy(ws);
        mx_array *xv = mx_transpose(xc, (int[]){0, 2, 1, 3}, 4); /* last stride 1 */
        ASSERT_OK(mx_eval((mx_array *[]){xs, xv, fr}, 3));
        mx_set_default_device(MX_GPU);
        mx_array *f = hd == 128 ? fr : NULL;
        mx_array *a = mx__fast_rope_heads(xs, hd, false, 10000, 0.5, 3, f, rot);
        mx_array *b = mx__fast_rope_heads(xv, hd, false, 10000, 0.5, 3, f, rot);
        mx_set_default_device(MX_CPU);
        ASSERT(a && b);
        const int64_t n = mx_array_size(a);
        float *fa = malloc(sizeof(float) * (size_t)n), *fb = malloc(sizeof(float) * (size_t)n);
        float *fx = malloc(sizeof(float) * (size_t)n);
        ASSERT_OK(mx_array_copy_to(a, MX_FLOAT32, fa, n));
        ASSERT_OK(mx_array_copy_to(b, MX_FLOAT32, fb, n));
        ASSERT_OK(mx_array_copy_to(xv, MX_FLOAT32, fx, n));
        ASSERT_MSG(!memcmp(fa, fb, sizeof(float) * (size_t)n), "%s T=%lld D=%d: not the bits",
                   mx_dtype_name(dts[di]), (long long)T, hd);
        /* copied heads equal the input; rotated ones moved */
        const int64_t per = T * hd, from = rot * per;
        ASSERT(!memcmp(fb + from, fx + from, sizeof(float) * (size_t)(n - from)));
        ASSERT(memcmp(fb + per, fx + per, sizeof(float) * (size_t)per));
        free(fa);
        free(fb);
        free(fx);
        mx_array_free_n((mx_array *[]){w, ws, xs, xc, xv, a, b}, 7);
      }
  mx_array_free(fr);
}

/* addmm with a row-major c (the whole result, or a row range of a larger
 * matrix at an offset) hands c to cuBLASLt as its C; a transposed c is
 * copied into the result first. Both equal the CPU (bf16 and f32; the
 * batch of a 3-d product folds into M). */
TEST(addmm_reads_c_in_place) {
  NEED_GPU();
  mx_dtype dts[2] = {MX_FLOAT32, MX_BFLOAT16};
  for (int d = 0; d < 2; d++) {
    mx_dtype dt = dts[d];
    double tol = dt == MX_FLOAT32 ? 1e-4 : 2e-2;
    mx_array *a = normal_dt((int64_t[]){4, 64, 128}, 3, 1, 61, dt);
    mx_array *w = normal_dt((int64_t[]){96, 128}, 2, 0.1, 62, dt);
    mx_array *c = normal_dt((int64_t[]){4, 64, 96}, 3, 1, 63, dt);
    mx_array *c0 = normal_dt((int64_t[]){300, 96}, 2, 1, 64, dt);
    mx_array *ct0 = normal_dt((int64_t[]){96, 256}, 2, 1, 65, dt);
    ASSERT(a && w && c && c0 && ct0);
    mx_array *wt = mx_transpose(w, NULL, 0);
    mx_array *a2 = mx_reshape(a, (int64_t[]){256, 128}, 2);
    mx_array *cs = mx_slice(c0, (int64_t[]){10, 0}, (int64_t[]){266, 96}, NULL, 2);
    mx_array *ct = mx_transpose(ct0, NULL, 0);
    ASSERT_OK(mx_eval((mx_array *[]){wt, a2, cs, ct}, 4));
    mx_array *cpu[3], *gpu[3];
    for (int dev = 0; dev < 2; dev++) {
      mx_set_default_device(dev ? MX_GPU : MX_CPU);
      mx_array **r = dev ? gpu : cpu;
      r[0] = mx_addmm(c, a, wt, 0.5, 2.0);
      r[1] = mx_addmm(cs, a2, wt, 1.0, 1.0);
      r[2] = mx_addmm(ct, a2, wt, 1.0, -1.0);
    }
    mx_set_default_device(MX_CPU);
    const char *what[3] = {"addmm 3-d c", "addmm c at an offset", "addmm transposed c"};
    for (int i = 0; i < 3; i++) {
      ASSERT_EQ_INT(mismatches(cpu[i], gpu[i], tol, what[i]), 0);
      mx_array_free(cpu[i]);
      mx_array_free(gpu[i]);
    }
    mx_array_free_n((mx_array *[]){a, w, c, c0, ct0, wt, a2, cs, ct}, 9);
  }
}

/* Products whose operands or result have a row pitch that is not a
 * multiple of 16 bytes (a vocabulary of 8,519: the LM head) go through
 * padded copies when large (aligned operands and results used in place);
 * MXC_GEMM_PAD_MIN=0
 * takes that path for small ones too: the three products of a Linear
 * layer (rows x inputs -> outputs) with every dimension misaligned, the
 * outputs only, the inputs only — against the CPU and against the unpadded
 * GPU path. */
TEST(matmul_padded_misaligned_operands) {
  NEED_GPU();
  const int64_t shapes[3][3] = {{37, 29, 45}, {32, 24, 45}, {32, 29, 48}};
  for (int si = 0; si < 6; si++) {
    const int di = si % 2;
    const int64_t *sh = shapes[si / 2];
    mx_dtype dt = di ? MX_FLOAT32 : MX_BFLOAT16;
    mx_array *x = normal_dt((int64_t[]){sh[0], sh[1]}, 2, 1, 31, dt);
    mx_array *w = normal_dt((int64_t[]){sh[2], sh[1]}, 2, 1, 32, dt);
    mx_array *d = normal_dt((int64_t[]){sh[0], sh[2]}, 2, 1, 33, dt);
    mx_array *wt = mx_transpose(w, NULL, 0), *xt = mx_transpose(x, NULL, 0);
    mx_array *cpu[3] = {mx_matmul(x, wt), mx_matmul(d, w), mx_matmul(xt, d)};
    ASSERT_OK(mx_eval(cpu, 3));
    mx_array *gpu[2][3];
    for (int pad = 0; pad < 2; pad++) {
      setenv("MXC_GEMM_PAD_MIN", pad ? "0" : "-1", 1);
      mx_set_default_device(MX_GPU);
      gpu[pad][0] = mx_matmul(x, wt), gpu[pad][1] = mx_matmul(d, w);
      gpu[pad][2] = mx_matmul(xt, d);
      mx_set_default_device(MX_CPU);
      ASSERT_OK(mx_eval(gpu[pad], 3));
    }
    unsetenv("MXC_GEMM_PAD_MIN");
    const double tol = dt == MX_BFLOAT16 ? 3e-2 : 1e-4;
    const char *names[3] = {"x w^T (result padded)", "d w (a padded)", "x^T d (b padded)"};
    for (int i = 0; i < 3; i++) {
      ASSERT_EQ_INT(mismatches(cpu[i], gpu[1][i], tol, names[i]), 0);
      ASSERT_EQ_INT(mismatches(gpu[0][i], gpu[1][i], tol, names[i]), 0);
    }
    mx_array_free_n((mx_array *[]){x, w, d, wt, xt}, 5);
    mx_array_free_n(cpu, 3);
    mx_array_free_n(gpu[0], 3);
    mx_array_free_n(gpu[1], 3);
  }
}

/* quantized_matmul on both devices; returns the mismatch count. */
static int64_t qmm_case(int64_t M, int64_t N, int64_t K, int gs, int bits, bool transpose,
                        mx_dtype dt, uint64_t seed) {
  int64_t wshape[2] = {transpose ? N : K, transpose ? K : N};
  mx_array *x = normal_dt((int64_t[]){M, K}, 2, 1, seed, dt);
  mx_array *w = normal_dt(wshape, 2, 0.1, seed + 1, dt);
  mx_array *wq = NULL, *sc = NULL, *bi = NULL;
  if (!x || !w || mx_quantize(w, gs, bits, &wq, &sc, &bi)) {
    mx_array_free(x);
    mx_array_free(w);
    return -1;
  }
  mx_array *ins[] = {wq, sc, bi};
  mx_eval(ins, 3);
  mx_array *c = mx_quantized_matmul(x, wq, sc, bi, transpose, gs, bits);
  mx_set_default_device(MX_GPU);
  mx_array *g = mx_quantized_matmul(x, wq, sc, bi, transpose, gs, bits);
  mx_set_default_device(MX_CPU);
  char what[128];
  snprintf(what, sizeof what, "qmm M=%lld N=%lld K=%lld gs=%d bits=%d %s %s", (long long)M,
           (long long)N, (long long)K, gs, bits, transpose ? "T" : "N", mx_dtype_name(dt));
  /* f16/bf16 GEMMs round the dequantized weight to the activation dtype */
  int64_t bad = mismatches(c, g, 2 * dtype_tol(dt) + (dt == MX_FLOAT32 ? 1e-4 : 0), what);
  mx_array *all[] = {x, w, wq, sc, bi, c, g};
  mx_array_free_n(all, 7);
  return bad;
}

TEST(quantized_gemv_equals_cpu) {
  NEED_GPU();
  const int bits[] = {2, 3, 4, 5, 6, 8}, gss[] = {32, 64, 128};
  for (int b = 0; b < 6; b++)
    for (int g = 0; g < 3; g++)
      ASSERT_EQ_INT(qmm_case(1, 40, 384, gss[g], bits[b], true, MX_FLOAT32, 11), 0);
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  const int64_t ms[] = {1, 2, 3, 5, 8};
  for (int d = 0; d < 3; d++)
    for (int m = 0; m < 5; m++) {
      ASSERT_EQ_INT(qmm_case(ms[m], 72, 512, 64, 4, true, dts[d], 20 + (uint64_t)m), 0);
      ASSERT_EQ_INT(qmm_case(ms[m], 33, 256, 32, 8, true, dts[d], 30 + (uint64_t)m), 0);
    }
  /* one row of x, outputs of 2049 rows and more: the warp-per-rows kernel
   * (k_qmv1, 1, 2 and 4 rows a warp; shorter outputs take the block kernel) */
  const int64_t long_n[] = {2050, 2117, 4229};
  for (int d = 0; d < 3; d++)
    for (int i = 0; i < 3; i++) {
      ASSERT_EQ_INT(qmm_case(1, long_n[i], 256, 64, 4, true, dts[d], 60 + (uint64_t)i), 0);
      ASSERT_EQ_INT(qmm_case(1, long_n[i], 384, 128, 8, true, dts[d], 63 + (uint64_t)i), 0);
    }
  /* one row of 16-bit x, 4 bits: the tensor-core kernel (k_qmv_mma), every
   * group size, outputs off a multiple of its 16 rows, groups off a
   * multiple of its 8-group batches, long K split over the block's warps,
   * and a K whose permuted x would not fit shared memory (CUDA-core path) */
  const int mma_gs[] = {32, 64, 128};
  for (int d = 1; d < 3; d++) {
    for (int g = 0; g < 3; g++)
      ASSERT_EQ_INT(qmm_case(1, 37, 1664, mma_gs[g], 4, true, dts[d], 70 + (uint64_t)g), 0);
    ASSERT_EQ_INT(qmm_case(1, 50, 9216, 64, 4, true, dts[d], 73), 0);
    ASSERT_EQ_INT(qmm_case(1, 4100, 512, 32, 4, true, dts[d], 74), 0);
    ASSERT_EQ_INT(qmm_case(1, 20, 32768, 64, 4, true, dts[d], 75), 0);
  }
  /* x staged in several chunks of K (M = 8: 1024 values a chunk) */
  ASSERT_EQ_INT(qmm_case(8, 24, 2560, 128, 4, true, MX_BFLOAT16, 40), 0);
  ASSERT_EQ_INT(qmm_case(1, 24, 9216, 64, 8, true, MX_FLOAT32, 41), 0);
  /* M <= 8 without transpose: the generic kernel */
  ASSERT_EQ_INT(qmm_case(3, 64, 96, 32, 4, false, MX_FLOAT32, 42), 0);
}

TEST(quantized_gemm_equals_cpu) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  for (int d = 0; d < 3; d++) {
    ASSERT_EQ_INT(qmm_case(9, 72, 256, 64, 4, true, dts[d], 50), 0);
    ASSERT_EQ_INT(qmm_case(37, 130, 384, 128, 8, true, dts[d], 51), 0);
    ASSERT_EQ_INT(qmm_case(20, 96, 128, 32, 3, false, dts[d], 52), 0);
    ASSERT_EQ_INT(qmm_case(12, 64, 256, 32, 2, true, dts[d], 54), 0);
    ASSERT_EQ_INT(qmm_case(24, 128, 64, 64, 4, false, dts[d], 55), 0);
    ASSERT_EQ_INT(qmm_case(10, 40, 192, 64, 5, true, dts[d], 56), 0);
    /* x W with W (K, N) past 32 MiB dequantized: slices of W's rows summed
     * (f32: the sum goes straight to out, 5 slices; f16/bf16: through an f32
     * buffer, 3 and 2 slices). K stays moderate: the 16-bit GEMMs round the
     * dequantized weight, an error growing with sqrt(K) */
    ASSERT_EQ_INT(qmm_case(12, 8192, 4224, 64, 4, false, dts[d], 57), 0);
    ASSERT_EQ_INT(qmm_case(9, 8192, 2304, 128, 2, false, dts[d], 58), 0);
  }
  ASSERT_EQ_INT(qmm_case(16, 64, 192, 64, 6, true, MX_FLOAT64, 53), 0); /* fallback */
}

/* sdpa on both devices. layout 1: q/k/v made as (B, T, H, D) and transposed
 * (strided views). mask: 0 none, 1 bool, 2 additive with -inf entries. */
static int64_t sdpa_case(int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D,
                         int64_t Dv, bool causal, int mask_kind, int layout, mx_dtype dt,
                         uint64_t seed) {
  mx_array *q, *k, *v;
  if (layout == 1) {
    mx_array *q0 = normal_dt((int64_t[]){B, Tq, Hq, D}, 4, 1, seed, dt);
    mx_array *k0 = normal_dt((int64_t[]){B, Tk, Hkv, D}, 4, 1, seed + 1, dt);
    mx_array *v0 = normal_dt((int64_t[]){B, Tk, Hkv, Dv}, 4, 1, seed + 2, dt);
    const int perm[] = {0, 2, 1, 3};
    q = mx_transpose(q0, perm, 4);
    k = mx_transpose(k0, perm, 4);
    v = mx_transpose(v0, perm, 4);
    mx_array *t[] = {q0, k0, v0};
    mx_array_free_n(t, 3);
  } else {
    q = normal_dt((int64_t[]){B, Hq, Tq, D}, 4, 1, seed, dt);
    k = normal_dt((int64_t[]){B, Hkv, Tk, D}, 4, 1, seed + 1, dt);
    v = normal_dt((int64_t[]){B, Hkv, Tk, Dv}, 4, 1, seed + 2, dt);
  }
  mx_array *mask = NULL;
  if (mask_kind) {
    /* (Tq, Tk), broadcast over batch and heads; row 1 fully masked out */
    int64_t n = Tq * Tk;
    uint8_t *mb = malloc((size_t)n);
    float *ma = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
      int64_t t = i / Tk, j = i % Tk;
      bool keep = t != 1 && ((j * 7 + t * 3) % 5 != 0);
      mb[i] = keep;
      ma[i] = keep ? (float)(0.25 * sin((double)i)) : -INFINITY;
    }
    if (mask_kind == 1) {
      mask = mx_array_from_data(mb, (int64_t[]){Tq, Tk}, 2, MX_BOOL);
    } else {
      mx_array *m32 = mx_array_from_data(ma, (int64_t[]){Tq, Tk}, 2, MX_FLOAT32);
      mask = mx_astype(m32, dt);
      mx_array_free(m32);
    }
    free(mb);
    free(ma);
    mx_array_eval(mask);
  }
  double scale = 1.0 / sqrt((double)D);
  mx_array *c = mx_fast_scaled_dot_product_attention(q, k, v, scale, mask, causal);
  mx_set_default_device(MX_GPU);
  mx_array *g = mx_fast_scaled_dot_product_attention(q, k, v, scale, mask, causal);
  mx_set_default_device(MX_CPU);
  char what[160];
  snprintf(what, sizeof what,
           "sdpa B=%lld Hq=%lld Hkv=%lld Tq=%lld Tk=%lld D=%lld Dv=%lld%s mask=%d layout=%d %s",
           (long long)B, (long long)Hq, (long long)Hkv, (long long)Tq, (long long)Tk,
           (long long)D, (long long)Dv, causal ? " causal" : "", mask_kind, layout,
           mx_dtype_name(dt));
  int64_t bad = mismatches(c, g, dt == MX_FLOAT32 ? 1e-4 : dtype_tol(dt), what);
  mx_array *all[] = {q, k, v, c, g};
  mx_array_free_n(all, 5);
  if (mask) mx_array_free(mask);
  return bad;
}

TEST(sdpa_decode_equals_cpu) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  for (int d = 0; d < 3; d++) {
    ASSERT_EQ_INT(sdpa_case(1, 8, 2, 1, 1, 64, 64, false, 0, 0, dts[d], 1), 0);
    ASSERT_EQ_INT(sdpa_case(2, 8, 2, 1, 3000, 128, 128, false, 0, 1, dts[d], 2), 0);
    ASSERT_EQ_INT(sdpa_case(1, 4, 4, 4, 700, 64, 32, true, 0, 0, dts[d], 3), 0);
    ASSERT_EQ_INT(sdpa_case(1, 12, 1, 3, 900, 80, 80, true, 1, 1, dts[d], 4), 0); /* 36 rows */
    ASSERT_EQ_INT(sdpa_case(2, 6, 3, 2, 257, 256, 256, false, 2, 0, dts[d], 5), 0);
    /* the cluster kernel for 16-bit (no array mask, D == Dv in {64, 128}) */
    ASSERT_EQ_INT(sdpa_case(1, 32, 8, 1, 700, 64, 64, false, 0, 0, dts[d], 30), 0);
    ASSERT_EQ_INT(sdpa_case(2, 8, 2, 2, 300, 128, 128, true, 0, 1, dts[d], 31), 0);
    ASSERT_EQ_INT(sdpa_case(1, 4, 1, 4, 2048, 64, 64, true, 0, 0, dts[d], 32), 0);
  }
  /* Tq > Tk with causal: the first rows see no key (they average v) */
  ASSERT_EQ_INT(sdpa_case(1, 2, 1, 4, 2, 32, 32, true, 0, 0, MX_FLOAT32, 6), 0);
  /* odd head sizes (scratch offsets not multiples of 8 bytes) */
  ASSERT_EQ_INT(sdpa_case(1, 1, 1, 1, 1, 1, 1, false, 0, 0, MX_FLOAT32, 7), 0);
  ASSERT_EQ_INT(sdpa_case(1, 2, 1, 3, 37, 5, 3, true, 0, 0, MX_BFLOAT16, 8), 0);
}

/* Attention over static caches with the key length on the device (a
 * replayed decode step): up to 1,024 keys one block per query row takes
 * every key (flash_attn.cu, fd_short), beyond that the split-KV kernel.
 * The GPU must equal the CPU on lengths around that switch, and both the
 * same attention over the first pos + Tq keys. */
static int64_t upto_case(int64_t Hq, int64_t Hkv, int64_t Tq, int64_t D, int32_t pos, mx_dtype dt,
                         uint64_t seed, int64_t S) {
  mx_array *q = normal_dt((int64_t[]){1, Hq, Tq, D}, 4, 1, seed, dt);
  mx_array *k = normal_dt((int64_t[]){1, Hkv, S, D}, 4, 1, seed + 1, dt);
  mx_array *v = normal_dt((int64_t[]){1, Hkv, S, D}, 4, 1, seed + 2, dt);
  mx_array *p = mx_array_from_data(&pos, (int64_t[]){1}, 1, MX_INT32);
  double scale = 1.0 / sqrt((double)D);
  int64_t n = pos + Tq;
  mx_array *ks = mx_slice_axis(k, 2, 0, n, 1), *vs = mx_slice_axis(v, 2, 0, n, 1);
  mx_array *ref = mx_fast_scaled_dot_product_attention(q, ks, vs, scale, NULL, Tq > 1);
  mx_array *c = mx__fast_sdpa_upto(q, k, v, scale, p);
  mx_set_default_device(MX_GPU);
  mx_array *g = mx__fast_sdpa_upto(q, k, v, scale, p);
  mx_set_default_device(MX_CPU);
  char what[128];
  snprintf(what, sizeof what, "sdpa upto Hq=%lld Hkv=%lld Tq=%lld D=%lld pos=%d %s",
           (long long)Hq, (long long)Hkv, (long long)Tq, (long long)D, pos, mx_dtype_name(dt));
  double tol = dt == MX_FLOAT32 ? 1e-4 : dtype_tol(dt);
  int64_t bad = mismatches(c, g, tol, what) + mismatches(ref, g, tol, what);
  mx_array *all[] = {q, k, v, p, ks, vs, ref, c, g};
  mx_array_free_n(all, 9);
  return bad;
}

TEST(sdpa_device_length_equals_cpu) {
  NEED_GPU();
  const int32_t lens[] = {0, 1, 63, 300, 1021, 1023, 1024, 1200, 1530};
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  const uint64_t runs = mx__sdpa_cluster_runs;
  for (int d = 0; d < 3; d++)
    for (int i = 0; i < (int)(sizeof lens / sizeof lens[0]); i++) {
      uint64_t seed = 40 + 3 * (uint64_t)i;
      /* capacity 1536: 16-bit takes the cluster kernel; 3000: the others */
      ASSERT_EQ_INT(upto_case(8, 2, 1, 64, lens[i], dts[d], seed, 1536), 0);
      ASSERT_EQ_INT(upto_case(8, 2, 1, 64, lens[i], dts[d], seed, 3000), 0);
      if (lens[i] + 3 <= 1536) ASSERT_EQ_INT(upto_case(4, 4, 3, 128, lens[i], dts[d], seed, 1536), 0);
      if (dts[d] == MX_FLOAT32) continue;
      /* 8 rows a kv head (query heads x positions), both head sizes */
      ASSERT_EQ_INT(upto_case(16, 2, 1, 128, lens[i], dts[d], seed, 1536), 0);
      if (lens[i] + 2 <= 1536) ASSERT_EQ_INT(upto_case(4, 1, 2, 64, lens[i], dts[d], seed, 1536), 0);
    }
  /* the 16-bit cases above ran on the cluster kernel (compute capability
   * 9.0, which the default build targets), unless it is switched off */
  const char *e = getenv("MXC_FD_CLUSTER");
  if (!(e && !strcmp(e, "0"))) ASSERT(mx__sdpa_cluster_runs > runs);
}

TEST(sdpa_prefill_equals_cpu) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  for (int d = 0; d < 3; d++) {
    ASSERT_EQ_INT(sdpa_case(1, 4, 2, 130, 130, 64, 64, true, 0, 1, dts[d], 10), 0);
    ASSERT_EQ_INT(sdpa_case(2, 2, 2, 37, 300, 128, 128, false, 0, 0, dts[d], 11), 0);
    ASSERT_EQ_INT(sdpa_case(1, 4, 1, 70, 100, 96, 48, true, 1, 0, dts[d], 12), 0);
    ASSERT_EQ_INT(sdpa_case(1, 2, 2, 65, 65, 256, 256, false, 2, 1, dts[d], 13), 0);
  }
  /* the mma.sync kernels (flash_attn2.cu: 16-bit, head size 64 / 128, no
   * array mask): key tiles crossing the diagonal and the ends, causal with
   * Tq < Tk, several query blocks, GQA, transposed views */
  for (int d = 1; d < 3; d++) {
    ASSERT_EQ_INT(sdpa_case(1, 8, 2, 200, 456, 128, 128, true, 0, 1, dts[d], 20), 0);
    ASSERT_EQ_INT(sdpa_case(2, 4, 4, 520, 520, 64, 64, true, 0, 0, dts[d], 21), 0);
    ASSERT_EQ_INT(sdpa_case(1, 2, 1, 5, 5, 128, 128, true, 0, 0, dts[d], 22), 0);
    ASSERT_EQ_INT(sdpa_case(1, 2, 2, 300, 70, 64, 64, false, 0, 1, dts[d], 23), 0);
    ASSERT_EQ_INT(sdpa_case(1, 6, 3, 64, 129, 128, 128, false, 0, 0, dts[d], 24), 0);
  }
  /* the cases above launch few blocks: the forward splits each block's
   * keys over two warp groups; 540 blocks (four an SM on a 132-SM card)
   * take the one-group kernel */
  ASSERT_EQ_INT(sdpa_case(1, 36, 4, 960, 960, 64, 64, true, 0, 0, MX_BFLOAT16, 25), 0);
  ASSERT_EQ_INT(sdpa_case(1, 36, 6, 960, 960, 128, 128, false, 0, 1, MX_FLOAT16, 26), 0);
  ASSERT_EQ_INT(sdpa_case(1, 2, 1, 100, 40, 32, 32, true, 0, 0, MX_FLOAT32, 14), 0);
  ASSERT_EQ_INT(sdpa_case(1, 2, 1, 9, 20, 6, 7, false, 0, 0, MX_FLOAT16, 16), 0);
  ASSERT_EQ_INT(sdpa_case(1, 3, 3, 17, 33, 1, 1, true, 0, 0, MX_FLOAT32, 17), 0);
  ASSERT_EQ_INT(sdpa_case(1, 2, 1, 50, 60, 32, 32, false, 0, 0, MX_FLOAT64, 15), 0);
}

/* sort-family op on both devices, compared exactly. */
typedef enum { SORT_OP, ARGSORT_OP, PARTITION_OP, ARGPARTITION_OP } sort_kind;
static mx_array *sort_op(sort_kind k, mx_array *a, int kth, int axis) {
  switch (k) {
    case SORT_OP: return mx_sort(a, axis);
    case ARGSORT_OP: return mx_argsort(a, axis);
    case PARTITION_OP: return mx_partition(a, kth, axis);
    default: return mx_argpartition(a, kth, axis);
  }
}

/* rows x len values with duplicates, and (floats) NaN, -0.0 and infinities */
static mx_array *sort_input(int64_t rows, int64_t len, mx_dtype dt, bool by_column) {
  int64_t n = rows * len;
  double *v = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    double x = floor(sin((double)i * 12.9898) * 43758.5453);
    x = fmod(x, 300.0); /* many duplicates */
    if (dt == MX_BOOL) x = (int64_t)x % 2 != 0;
    else if (dt == MX_UINT8 || dt == MX_UINT32) x = fabs(x);
    if (mx_dtype_is_float(dt)) {
      if (i % 97 == 5) x = NAN;
      if (i % 89 == 7) x = -0.0;
      if (i % 101 == 9) x = i % 2 ? INFINITY : -INFINITY;
    }
    v[i] = x;
  }
  int64_t shape[2] = {by_column ? len : rows, by_column ? rows : len};
  mx_array *d = mx_array_from_data(v, shape, 2, MX_FLOAT64);
  free(v);
  mx_array *r = mx_astype(d, dt);
  mx_array_free(d);
  mx_array_eval(r);
  return r;
}

static int64_t sort_case(sort_kind k, int64_t rows, int64_t len, mx_dtype dt, bool by_column) {
  mx_array *a = sort_input(rows, len, dt, by_column);
  int axis = by_column ? 0 : 1;
  int kth = (int)(len / 3);
  mx_array *c = sort_op(k, a, kth, axis);
  mx_set_default_device(MX_GPU);
  mx_array *g = sort_op(k, a, kth, axis);
  mx_set_default_device(MX_CPU);
  char what[96];
  snprintf(what, sizeof what, "sort op %d rows=%lld len=%lld %s%s", (int)k, (long long)rows,
           (long long)len, mx_dtype_name(dt), by_column ? " axis 0" : "");
  int64_t bad = mismatches(c, g, 0, what);
  mx_array *all[] = {a, c, g};
  mx_array_free_n(all, 3);
  return bad;
}

TEST(sort_long_rows_equal_cpu) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16, MX_FLOAT64, MX_INT32,
                          MX_INT64,   MX_UINT8,    MX_UINT32,  MX_BOOL};
  for (int d = 0; d < 9; d++)
    for (int k = 0; k < 4; k++) {
      ASSERT_EQ_INT(sort_case((sort_kind)k, 3, 5000, dts[d], false), 0);
      ASSERT_EQ_INT(sort_case((sort_kind)k, 1, 70001, dts[d], false), 0);
    }
  for (int k = 0; k < 4; k++) ASSERT_EQ_INT(sort_case((sort_kind)k, 5, 3000, MX_FLOAT32, true), 0);
}

/* cumsum of long lines (one block per line on the GPU): every direction and
 * kind, float and integer, one line and several, along a strided axis. */
TEST(cumsum_long_lines_equal_cpu) {
  NEED_GPU();
  const int64_t shapes[][2] = {{1, 128256}, {3, 5000}, {2, 4096}};
  const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT64, MX_INT32};
  for (int sh = 0; sh < 3; sh++)
    for (int d = 0; d < 4; d++)
      for (int v = 0; v < 4; v++)
        for (int ax = 0; ax < 2; ax++) {
          /* along the long axis: last and contiguous (ax 0) or first, strided */
          int64_t shape[2] = {shapes[sh][ax], shapes[sh][1 - ax]};
          mx_array *f = normal(shape, 2, 1.0, 11 + (uint64_t)sh);
          mx_array *x = mx_dtype_is_float(dts[d]) ? mx_abs(f) : mx_multiply_scalar(f, 50.0);
          mx_array *xd = mx_astype(x, dts[d]);
          bool rev = v & 1, inc = v & 2;
          mx_set_default_device(MX_CPU);
          mx_array *c = mx_cumsum(xd, 1 - ax, rev, inc);
          mx_set_default_device(MX_GPU);
          mx_array *g = mx_cumsum(xd, 1 - ax, rev, inc);
          mx_set_default_device(MX_CPU);
          char what[96];
          snprintf(what, sizeof what, "cumsum %lldx%lld %s rev %d inc %d", (long long)shape[0],
                   (long long)shape[1], mx_dtype_name(dts[d]), rev, inc);
          double tol = dts[d] == MX_INT32 ? 0 : dts[d] == MX_BFLOAT16 ? 1e-2 : 1e-6;
          ASSERT_EQ_INT(mismatches(c, g, tol, what), 0);
          mx_array_free(f);
          mx_array_free(x);
          mx_array_free(xd);
          mx_array_free(c);
          mx_array_free(g);
        }
}

/* put_along_axis along long index axes (a parallel winner pass on the GPU):
 * duplicates resolve as on the CPU, last write wins. */
TEST(put_along_long_axis_equals_cpu) {
  NEED_GPU();
  const int64_t cases[][3] = {{1, 128256, 128256}, {2, 5000, 3000}, {3, 4096, 8192}};
  for (int c = 0; c < 3; c++) {
    int64_t R = cases[c][0], N = cases[c][1], K = cases[c][2];
    int32_t *ix = malloc(sizeof(int32_t) * (size_t)(R * K));
    float *vals = malloc(sizeof(float) * (size_t)(R * K));
    uint64_t h = 88172645463325252ull;
    for (int64_t i = 0; i < R * K; i++) {
      h ^= h << 13, h ^= h >> 7, h ^= h << 17;
      /* case 0: a permutation (top-p's mask); else random with duplicates, some negative */
      ix[i] = c == 0 ? (int32_t)((i * 7919) % N)
                     : (int32_t)(h % (uint64_t)(N + N / 4)) - (int32_t)(N / 4);
      vals[i] = (float)i;
    }
    mx_array *a = mx_zeros((int64_t[]){R, N}, 2, MX_FLOAT32);
    mx_array *idx = mx_array_from_data(ix, (int64_t[]){R, K}, 2, MX_INT32);
    mx_array *v = mx_array_from_data(vals, (int64_t[]){R, K}, 2, MX_FLOAT32);
    mx_set_default_device(MX_CPU);
    mx_array *cpu = mx_put_along_axis(a, idx, v, 1);
    mx_set_default_device(MX_GPU);
    mx_array *gpu = mx_put_along_axis(a, idx, v, 1);
    mx_set_default_device(MX_CPU);
    ASSERT_EQ_INT(mismatches(cpu, gpu, 0, "put_along_axis long"), 0);
    mx_array *arr[] = {a, idx, v, cpu, gpu};
    for (int i = 0; i < 5; i++) mx_array_free(arr[i]);
    free(ix);
    free(vals);
  }
}

/* scatter_add_axis with long index lists over few columns (the embedding
 * gradient: the (index, position) pairs sorted, a block per run of one
 * destination row): the same additions in the same order as the CPU, so
 * f32 results are equal; a hot row longer than a block's stage (429 hits),
 * negative indices, rows of more columns than a block has threads; bf16
 * rows of a run that spans several segments of the sorted list (partial
 * sums of several blocks, added in order) within bf16's tolerance */
TEST(scatter_add_long_index_lists_equal_cpu) {
  NEED_GPU();
  const int64_t V = 517, N = 3001, Ds[2] = {96, 700};
  int32_t *ix = malloc(sizeof(int32_t) * (size_t)N);
  /* pattern 1: one row with half the hits (16-bit rows: a run over many of
   * the sorted list's segments, summed by several blocks) */
  for (int pat = 0; pat < 2; pat++) {
    uint64_t h = 88172645463325252ull;
    for (int64_t i = 0; i < N; i++) {
      h ^= h << 13, h ^= h >> 7, h ^= h << 17;
      if (pat == 1) ix[i] = h % 2 ? 11 : (int32_t)(h % (uint64_t)V);
      else ix[i] = i % 7 == 0 ? 3 : (int32_t)(h % (uint64_t)(V + 40)) - 40; /* hot row, negatives */
    }
    mx_array *idx = mx_array_from_data(ix, (int64_t[]){1, N, 1}, 3, MX_INT32);
    for (int di = 0; di < 2; di++) {
      const int64_t D = Ds[di];
      mx_array *v = normal((int64_t[]){1, N, D}, 3, 1, 77);
      const mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16};
      for (int d = 0; d < 2; d++) {
        mx_array *z = mx_zeros((int64_t[]){1, V, D}, 3, dts[d]);
        mx_array *vd = mx_astype(v, dts[d]);
        mx_array *r[2];
        for (int dev = 0; dev < 2; dev++) {
          mx_set_default_device(dev ? MX_GPU : MX_CPU);
          r[dev] = mx_scatter_add_axis(z, idx, vd, 1);
        }
        mx_set_default_device(MX_CPU);
        ASSERT_EQ_INT(mismatches(r[0], r[1], d ? dtype_tol(dts[d]) : 0, "scatter_add_axis long"),
                      0);
        mx_array_free_n((mx_array *[]){z, vd, r[0], r[1]}, 4);
      }
      mx_array_free(v);
    }
    mx_array_free(idx);
  }
  free(ix);
}

/* argmax / argmin of very long rows (split over blocks on the GPU): ties
 * (bf16 has many) go to the first index, a NaN wins, as on the CPU. */
TEST(argreduce_long_rows_equal_cpu) {
  NEED_GPU();
  const int64_t shapes[][2] = {{1, 128256}, {3, 70001}};
  for (int sh = 0; sh < 2; sh++)
    for (int dt = 0; dt < 2; dt++)
      for (int nan = 0; nan < 2; nan++) {
        mx_array *f = normal(shapes[sh], 2, 1.0, 5 + (uint64_t)sh);
        mx_array *x = mx_astype(f, dt ? MX_BFLOAT16 : MX_FLOAT32);
        if (nan) { /* NaN at two places of every row: the first one wins */
          mx_array *m = mx_zeros(shapes[sh], 2, MX_FLOAT32), *q = mx_array_scalar(NAN, MX_FLOAT32);
          int64_t rows = shapes[sh][0];
          mx_array *n1 = mx_slice_update(m, q, (int64_t[]){0, 40000}, (int64_t[]){rows, 40001},
                                         NULL, 2);
          mx_array *n2 = mx_slice_update(n1, q, (int64_t[]){0, 9000}, (int64_t[]){rows, 9001},
                                         NULL, 2);
          mx_array *nd = mx_astype(n2, mx_array_dtype(x)), *y = mx_add(x, nd);
          mx_array *tmp[] = {x, m, q, n1, n2, nd};
          for (int i = 0; i < 6; i++) mx_array_free(tmp[i]);
          x = y;
        }
        for (int mx = 0; mx < 2; mx++) {
          mx_set_default_device(MX_CPU);
          mx_array *c = mx ? mx_argmax(x, 1, false) : mx_argmin(x, 1, false);
          mx_set_default_device(MX_GPU);
          mx_array *g = mx ? mx_argmax(x, 1, false) : mx_argmin(x, 1, false);
          mx_set_default_device(MX_CPU);
          ASSERT_EQ_INT(mismatches(c, g, 0, mx ? "argmax long" : "argmin long"), 0);
          mx_array_free(c);
          mx_array_free(g);
        }
        mx_array_free(f);
        mx_array_free(x);
      }
}

/* One activation row times W^T (a Linear layer in decode: the GEMV kernel),
 * and shapes that must leave it (K not a multiple of 8, W^T not of
 * contiguous rows, two rows). */
TEST(half_precision_gemv_equals_cpu) {
  NEED_GPU();
  const int64_t cases[][4] = {/* M, K, N, transposed */
                              {1, 2048, 3000, 1}, {1, 8192, 700, 1}, {1, 24, 5, 1},
                              {1, 1000, 130, 1},  {1, 36, 40, 1},    {1, 256, 300, 0},
                              {2, 512, 64, 1},    {1, 2056, 37, 1},  {1, 4104, 301, 1},
                              /* many rows (a head), tails of a batch */
                              {1, 2048, 20000, 1}, {1, 520, 17000, 1}, {1, 4104, 9001, 1}};
  mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  for (int c = 0; c < 12; c++)
    for (int d = 0; d < 2; d++) {
      int64_t M = cases[c][0], K = cases[c][1], N = cases[c][2];
      mx_array *x32 = normal((int64_t[]){1, M, K}, 3, 1, 3), *w32 = NULL, *wt = NULL;
      if (cases[c][3]) {
        w32 = normal((int64_t[]){N, K}, 2, 0.05, 4);
        wt = mx_transpose(w32, (int[]){1, 0}, 2);
      } else {
        w32 = normal((int64_t[]){K, N}, 2, 0.05, 4);
        wt = mx_array_retain(w32);
      }
      mx_array *x = mx_astype(x32, dts[d]), *w = mx_astype(wt, dts[d]);
      ASSERT_OK(mx_array_eval(x));
      ASSERT_OK(mx_array_eval(w));
      mx_array *wh = mx_astype(w32, dts[d]); /* (N, K) rows: W^T as a view */
      mx_array *wv = cases[c][3] ? mx_transpose(wh, (int[]){1, 0}, 2) : mx_array_retain(w);
      mx_array *cpu = mx_matmul(x, wv);
      mx_set_default_device(MX_GPU);
      mx_array *gpu = mx_matmul(x, wv);
      mx_set_default_device(MX_CPU);
      char what[64];
      snprintf(what, sizeof what, "gemv %lldx%lldx%lld %s", (long long)M, (long long)K,
               (long long)N, mx_dtype_name(dts[d]));
      ASSERT_EQ_INT(mismatches(cpu, gpu, dtype_tol(dts[d]), what), 0);
      mx_array *all[] = {x32, w32, wt, x, w, wh, wv, cpu, gpu};
      mx_array_free_n(all, 9);
    }
}

/* swiglu_linear (a decode step's gate/up GEMV and swiglu in one kernel)
 * has the bits of the stacked GEMV followed by the swiglu kernel for rows
 * of up to 2,048 (one batch of loads a lane), and is close to the CPU for longer ones. */
TEST(swiglu_linear_has_the_bits_of_gemv_and_swiglu) {
  NEED_GPU();
  const int64_t cases[][2] = {{2048, 1024}, {512, 300}, {1000, 37}, {4096, 128},
                              /* a decode MLP's size, a row off the batch */
                              {2048, 8192}, {1000, 9000}};
  mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  for (int c = 0; c < 6; c++)
    for (int d = 0; d < 2; d++) {
      int64_t K = cases[c][0], I = cases[c][1];
      mx_array *x32 = normal((int64_t[]){1, 1, K}, 3, 1, 11);
      mx_array *w32 = normal((int64_t[]){2 * I, K}, 2, 0.05, 12);
      mx_array *x = mx_astype(x32, dts[d]), *w = mx_astype(w32, dts[d]);
      ASSERT_OK(mx_array_eval(x));
      ASSERT_OK(mx_array_eval(w));
      mx_array *cpu = mx__fast_swiglu_linear(x, w);
      mx_set_default_device(MX_GPU);
      mx_array *fused = mx__fast_swiglu_linear(x, w);
      mx_array *wt = mx_transpose(w, (int[]){1, 0}, 2);
      mx_array *y = mx_matmul(x, wt);
      mx_array *g = mx_slice_axis(y, 2, 0, I, 1), *u = mx_slice_axis(y, 2, I, 2 * I, 1);
      mx_array *two = mx_fast_swiglu(g, u);
      ASSERT_OK(mx_array_eval(two));
      ASSERT_OK(mx_array_eval(fused));
      mx_set_default_device(MX_CPU);
      char what[64];
      snprintf(what, sizeof what, "swiglu_linear K %lld I %lld %s", (long long)K, (long long)I,
               mx_dtype_name(dts[d]));
      ASSERT_EQ_INT(mismatches(cpu, fused, dtype_tol(dts[d]), what), 0);
      if (K <= 2048 && K % 8 == 0) {
        const void *a = mx_array_data(fused), *b = mx_array_data(two);
        ASSERT(a && b);
        if (memcmp(a, b, 2 * (size_t)I)) {
          fprintf(stderr, "  %s: not the bits of the GEMV + swiglu\n", what);
          ASSERT(0);
        }
      }
      mx_array *all[] = {x32, w32, x, w, cpu, fused, wt, y, g, u, two};
      mx_array_free_n(all, 11);
    }
}

/* rope_sdpa on the GPU: the bits of rope_kv then sdpa_upto, for the
 * outputs and for the rows written into the caches, over a few decode
 * steps (each step's attention sees the keys the steps before wrote), with
 * and without float32 frequencies; near the CPU's result. */
static int64_t rope_sdpa_steps(int64_t B, int64_t H, int64_t KV, int64_t D, int64_t S,
                               int32_t pos0, int nsteps, int dims, bool trad, bool freqs,
                               mx_dtype dt, uint64_t seed) {
  const int64_t cs[4] = {B, KV, S, D};
  mx_array *kc[3], *vc[3]; /* [0] two ops on the GPU, [1] rope_sdpa on the GPU, [2] on the CPU */
  for (int i = 0; i < 3; i++) {
    kc[i] = normal_dt(cs, 4, 1, seed, dt);
    vc[i] = normal_dt(cs, 4, 1, seed + 1, dt);
  }
  float fq[64];
  for (int i = 0; i < dims / 2; i++) fq[i] = (float)pow(10000.0, 2.0 * i / dims) * (1 + (i % 3));
  mx_array *fr = freqs ? mx_array_from_data(fq, (int64_t[]){dims / 2}, 1, MX_FLOAT32) : NULL;
  const double scale = 1.0 / sqrt((double)D);
  int64_t bad = 0;
  char what[176];
  for (int st = 0; st < nsteps && !bad; st++) {
    int32_t pos = pos0 + st;
    mx_array *x = normal_dt((int64_t[]){B, H + 2 * KV, 1, D}, 4, 1, seed + 10 + (uint64_t)st, dt);
    mx_array *p = mx_array_from_data(&pos, (int64_t[]){1}, 1, MX_INT32);
    mx_set_default_device(MX_GPU);
    mx_array *q = mx__fast_rope_kv(x, H, KV, kc[0], vc[0], dims, trad, 10000, 1.0, p, fr);
    mx_array *two = q ? mx__fast_sdpa_upto(q, kc[0], vc[0], scale, p) : NULL;
    if (two) mx_array_eval(two);
    mx_array *one = mx__fast_rope_sdpa(x, H, KV, kc[1], vc[1], dims, trad, 10000, 1.0, p, fr, scale);
    mx_set_default_device(MX_CPU);
    mx_array *cpu = mx__fast_rope_sdpa(x, H, KV, kc[2], vc[2], dims, trad, 10000, 1.0, p, fr, scale);
    snprintf(what, sizeof what, "rope_sdpa B %lld H %lld KV %lld D %lld S %lld pos %d dims %d%s%s %s",
             (long long)B, (long long)H, (long long)KV, (long long)D, (long long)S, pos, dims,
             trad ? " trad" : "", freqs ? " freqs" : "", mx_dtype_name(dt));
    bad += mismatches(two, one, 0, what);
    bad += mismatches(cpu, one, dtype_tol(dt), what);
    mx_array *all[] = {x, p, q, two, one, cpu};
    mx_array_free_n(all, 6);
  }
  size_t wl = strlen(what);
  snprintf(what + wl, sizeof what - wl, ": caches");
  if (!bad) bad += mismatches(kc[0], kc[1], 0, what) + mismatches(vc[0], vc[1], 0, what);
  if (!bad) bad += mismatches(kc[2], kc[1], dtype_tol(dt), what) + mismatches(vc[2], vc[1], 0, what);
  mx_array_free_n(kc, 3);
  mx_array_free_n(vc, 3);
  mx_array_free(fr);
  return bad;
}

TEST(rope_sdpa_has_the_bits_of_rope_kv_and_sdpa_upto) {
  NEED_GPU();
  const uint64_t runs = mx__rope_sdpa_fused_runs;
  const mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  for (int d = 0; d < 2; d++) {
    /* the 1B model's attention: 32 heads of 64, 8 kv heads */
    ASSERT_EQ_INT(rope_sdpa_steps(1, 32, 8, 64, 300, 127, 3, 64, false, true, dts[d], 70), 0);
    /* head size 128, 8 query heads a kv head, two sequences, no freqs */
    ASSERT_EQ_INT(rope_sdpa_steps(2, 16, 2, 128, 1536, 1000, 2, 128, false, false, dts[d], 71), 0);
    /* traditional pairs, partial rotary, several key tiles a block */
    ASSERT_EQ_INT(rope_sdpa_steps(1, 4, 1, 64, 2048, 1100, 2, 32, true, true, dts[d], 72), 0);
    /* from an empty cache, and at its end (the last slot, then past it) */
    ASSERT_EQ_INT(rope_sdpa_steps(1, 8, 2, 64, 64, 0, 2, 64, false, false, dts[d], 73), 0);
    ASSERT_EQ_INT(rope_sdpa_steps(1, 8, 2, 64, 64, 63, 2, 64, false, true, dts[d], 74), 0);
  }
  /* the two-kernel path: float32 heads (and 9 query heads a kv head) */
  ASSERT_EQ_INT(rope_sdpa_steps(1, 9, 1, 64, 40, 7, 2, 64, false, true, MX_FLOAT32, 75), 0);
  /* the 16-bit cases took the one-kernel path (compute capability 9.0),
   * unless it is switched off */
  const char *e = getenv("MXC_ROPE_SDPA"), *c = getenv("MXC_FD_CLUSTER");
  if (!(e && !strcmp(e, "0")) && !(c && !strcmp(c, "0"))) ASSERT(mx__rope_sdpa_fused_runs > runs);
}

/* Attention's output stored as (B, T, H, D) (mx__fast_sdpa_prefer_blhd):
 * the same values as the row-major output, strides that make the usual
 * transpose + reshape a view, and through a VJP (the training path) the
 * same gradients. */
typedef struct {
  bool blhd, causal;
} blhd_call;

static int blhd_fn(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  const blhd_call *c = payload;
  mx_array *o = mx_fast_scaled_dot_product_attention(in[0], in[1], in[2], 0.125, NULL, c->causal);
  if (o && c->blhd) mx__fast_sdpa_prefer_blhd(o);
  const int64_t *s = o ? mx_array_shape(o) : NULL;
  mx_array *t = o ? mx_transpose(o, (int[]){0, 2, 1, 3}, 4) : NULL;
  mx_array *r = t ? mx_reshape(t, (int64_t[]){s[0], s[2], s[1] * s[3]}, 3) : NULL;
  mx_array_free(o);
  mx_array_free(t);
  return mx_list_push(out, r);
}

static int64_t bits_differ(mx_array *a, mx_array *b, const char *what) {
  int64_t n = mx_array_size(a);
  float *x = malloc(sizeof(float) * (size_t)(n ? n : 1)), *y = malloc(sizeof(float) * (size_t)(n ? n : 1));
  int64_t bad = -1;
  if (x && y && !mx_array_copy_to(a, MX_FLOAT32, x, n) && !mx_array_copy_to(b, MX_FLOAT32, y, n))
    bad = memcmp(x, y, sizeof(float) * (size_t)n) ? 1 : 0;
  if (bad) printf("    %s: not the same bits\n", what);
  free(x);
  free(y);
  return bad;
}

/* Heads of many positions (8 x 1024, enough blocks) take k_rope_seq
 * (TP positions of a batch row a block): from a transposed (B, T, H, D)
 * array and from a (B, H, T, D) one, the bits of the element kernel (a
 * last axis of stride 2); head sizes 64 and 128 (given freqs), all heads
 * or one rotated. */
TEST(rope_seq_kernel_has_the_bits_of_the_element_kernel) {
  NEED_GPU();
  float frq[64];
  for (int i = 0; i < 64; i++) frq[i] = (float)(1.0 + 0.37 * i + 0.01 * i * i);
  mx_array *fr = mx_array_from_data(frq, (int64_t[]){64}, 1, MX_FLOAT32);
  const int64_t B = 8, T = 1024, H = 2;
  for (int hd = 64; hd <= 128; hd += 64)
    for (int rot = 1; rot <= 2; rot++) {
      mx_array *w = normal_dt((int64_t[]){B, T, H, 2 * hd}, 4, 1, 170 + hd + rot, MX_BFLOAT16);
      mx_array *ws = mx_slice_axis(w, 3, 0, 2 * hd, 2);
      mx_array *xs = mx_transpose(ws, (int[]){0, 2, 1, 3}, 4); /* last stride 2 */
      mx_array *xc = mx_copy(ws);
      mx_array *xv = mx_transpose(xc, (int[]){0, 2, 1, 3}, 4); /* (B, T, H, D) memory */
      mx_array *xb = mx_copy(xv);                               /* (B, H, T, D) memory */
      ASSERT_OK(mx_eval((mx_array *[]){xs, xv, xb, fr}, 4));
      mx_set_default_device(MX_GPU);
      mx_array *f = hd == 128 ? fr : NULL;
      mx_array *a = mx__fast_rope_heads(xs, hd, false, 10000, 0.5, 3, f, rot);
      mx_array *b = mx__fast_rope_heads(xv, hd, false, 10000, 0.5, 3, f, rot);
      mx_array *c = mx__fast_rope_heads(xb, hd, false, 10000, 0.5, 3, f, rot);
      mx_set_default_device(MX_CPU);
      ASSERT(a && b && c);
      char what[64];
      snprintf(what, sizeof what, "rope seq D %d rot %d", hd, rot);
      ASSERT_EQ_INT(bits_differ(a, b, what), 0);
      ASSERT_EQ_INT(bits_differ(a, c, what), 0);
      mx_array_free_n((mx_array *[]){w, ws, xs, xc, xv, xb, a, b, c}, 9);
    }
  mx_array_free(fr);
}

/* swiglu_backward's stacked form (which 2, one read of the inputs) has the
 * bits of which 0 and which 1 on the GPU: 16-bit and float32 rows in
 * 16-byte vectors (gate and up as the row-strided halves of one product),
 * and a cotangent with a last axis of stride 2 (the element kernels). */
TEST(swiglu_backward_both_has_the_bits_of_each_form) {
  NEED_GPU();
  const mx_dtype dts[3] = {MX_BFLOAT16, MX_FLOAT16, MX_FLOAT32};
  for (int di = 0; di < 3; di++)
    for (int strided = 0; strided < 2; strided++) {
      mx_array *gu = normal_dt((int64_t[]){40, 272}, 2, 3, 90 + di, dts[di]);
      mx_array *w = normal_dt((int64_t[]){40, 272}, 2, 1, 95 + di, dts[di]);
      mx_array *g = mx_slice_axis(gu, 1, 0, 136, 1), *u = mx_slice_axis(gu, 1, 136, 272, 1);
      mx_array *c = strided ? mx_slice_axis(w, 1, 0, 272, 2) : mx_slice_axis(w, 1, 0, 136, 1);
      ASSERT_OK(mx_eval((mx_array *[]){g, u, c}, 3));
      mx_set_default_device(MX_GPU);
      mx_array *both = mx__fast_swiglu_grad(2, g, u, c);
      mx_array *dg = mx__fast_swiglu_grad(0, g, u, c), *du = mx__fast_swiglu_grad(1, g, c, NULL);
      mx_set_default_device(MX_CPU);
      ASSERT(both && dg && du);
      mx_array *b0 = mx_slice_axis(both, 0, 0, 1, 1), *b1 = mx_slice_axis(both, 0, 1, 2, 1);
      mx_array *r0 = mx_reshape(b0, (int64_t[]){40, 136}, 2);
      mx_array *r1 = mx_reshape(b1, (int64_t[]){40, 136}, 2);
      ASSERT_EQ_INT(bits_differ(r0, dg, "swiglu_backward d gate"), 0);
      ASSERT_EQ_INT(bits_differ(r1, du, "swiglu_backward d up"), 0);
      mx_array_free_n((mx_array *[]){gu, w, g, u, c, both, dg, du, b0, b1, r0, r1}, 12);
    }
}

/* softmax_cross_entropy_backward given the forward's loss (16-bit rows a
 * multiple of 8 long: lse = loss + x[target], one pass): within a
 * rounding of the two-pass result for finite rows; rows whose loss is not
 * finite (a target logit of -inf, a row holding +inf) take the two passes
 * and have their bits exactly. */
TEST(cross_entropy_backward_given_the_loss) {
  NEED_GPU();
  enum { R = 5, V = 8968 };
  float *x = malloc(sizeof(float) * R * V);
  ASSERT(x);
  for (int64_t i = 0; i < (int64_t)R * V; i++) x[i] = (float)(3 * sin((double)i * 0.731));
  const int32_t tv[R] = {7, 100, 8967, 0, 4000};
  x[1 * V + 100] = -INFINITY; /* row 1: the target's logit -inf: loss +inf */
  x[2 * V + 5] = INFINITY;    /* row 2: lse +inf */
  x[3 * V + 0] = 40;          /* row 3: the target holds nearly all the mass */
  mx_array *xf = mx_array_from_data(x, (int64_t[]){R, V}, 2, MX_FLOAT32);
  mx_array *t = mx_array_from_data(tv, (int64_t[]){R}, 1, MX_INT32);
  free(x);
  mx_set_default_device(MX_GPU);
  mx_array *xb = mx_astype(xf, MX_BFLOAT16);
  mx_array *c = mx_full((int64_t[]){R}, 1, 0.25, MX_FLOAT32);
  mx_array *l = mx__fast_softmax_ce(xb, t);
  mx_array *g1 = mx__fast_softmax_ce_grad_loss(xb, t, c, l);
  mx_array *g0 = mx__fast_softmax_ce_grad(xb, t, c);
  mx_set_default_device(MX_CPU);
  ASSERT(g0 && g1);
  float *a = malloc(sizeof(float) * R * V), *b = malloc(sizeof(float) * R * V);
  ASSERT(a && b);
  ASSERT_OK(mx_array_copy_to(g1, MX_FLOAT32, a, (int64_t)R * V));
  ASSERT_OK(mx_array_copy_to(g0, MX_FLOAT32, b, (int64_t)R * V));
  int64_t far = 0, nonbits = 0;
  for (int r = 0; r < R; r++)
    for (int j = 0; j < V; j++) {
      const float p = a[r * V + j], q = b[r * V + j];
      if (r == 1 || r == 2) {
        if (memcmp(&p, &q, sizeof p)) nonbits++;
      } else if (!(fabsf(p - q) <= fabsf(q) * (1.f / 128) + 1e-9f)) {
        if (far++ < 3) printf("    row %d, %d: %g vs %g\n", r, j, p, q);
      }
    }
  ASSERT_EQ_INT(far, 0);
  ASSERT_EQ_INT(nonbits, 0);
  free(a);
  free(b);
  mx_array_free_n((mx_array *[]){xf, t, xb, c, l, g0, g1}, 7);
}

/* Long row-strided rows (a stacked product's halves: the 2-D grid of
 * k_vec_rows) and large contiguous operands (k_vec, a tail past the last
 * whole vector) have the bits of the element kernel (a last axis of
 * stride 2):
 * swiglu and add, bf16 and float32, 3 and 37 rows of 4,096, 8,200 and
 * 4,101 values (a partial last block; an odd row length). */
TEST(vector_rows_kernel_has_the_bits_of_the_element_kernel) {
  NEED_GPU();
  const mx_dtype dts[2] = {MX_BFLOAT16, MX_FLOAT32};
  const int64_t cols[3] = {4096, 8200, 4101}, rows[2] = {3, 37};
  for (int di = 0; di < 2; di++)
    for (int ci = 0; ci < 3; ci++)
      for (int ri = 0; ri < 2; ri++) {
        const int64_t C = cols[ci], R = rows[ri];
        mx_array *a0 = normal_dt((int64_t[]){R, C, 2}, 3, 2, 110 + ci, dts[di]);
        mx_array *gs = mx_slice_axis(a0, 2, 0, 1, 1), *us = mx_slice_axis(a0, 2, 1, 2, 1);
        mx_array *g2 = mx_reshape(gs, (int64_t[]){R, C}, 2);
        mx_array *u2 = mx_reshape(us, (int64_t[]){R, C}, 2);
        mx_array *gc = mx_copy(g2), *uc = mx_copy(u2);
        mx_array *gu = mx_concatenate((mx_array *[]){gc, uc}, 2, 1);
        mx_array *gh = mx_slice_axis(gu, 1, 0, C, 1), *uh = mx_slice_axis(gu, 1, C, 2 * C, 1);
        ASSERT_OK(mx_eval((mx_array *[]){g2, u2, gc, uc, gh, uh}, 6));
        mx_set_default_device(MX_GPU);
        mx_array *s_el = mx_fast_swiglu(g2, u2), *s_row = mx_fast_swiglu(gh, uh);
        mx_array *a_el = mx_add(g2, u2), *a_row = mx_add(gh, uh);
        mx_array *s_ct = mx_fast_swiglu(gc, uc), *a_ct = mx_add(gc, uc);
        mx_set_default_device(MX_CPU);
        ASSERT(s_el && s_row && a_el && a_row && s_ct && a_ct);
        ASSERT_EQ_INT(bits_differ(s_el, s_row, "swiglu rows"), 0);
        ASSERT_EQ_INT(bits_differ(a_el, a_row, "add rows"), 0);
        ASSERT_EQ_INT(bits_differ(s_el, s_ct, "swiglu contiguous"), 0);
        ASSERT_EQ_INT(bits_differ(a_el, a_ct, "add contiguous"), 0);
        mx_array_free_n((mx_array *[]){a0, gs, us, g2, u2, gc, uc, gu, gh, uh, s_el, s_row, a_el,
                                       a_row, s_ct, a_ct}, 16);
      }
}

/* Many rows of up to 128 16-byte vectors take one warp a row
 * (k_norm_vec_warp), a single row one block (k_norm_vec): each row of a
 * batch has the bits of that row normalised alone — rms_norm and
 * layer_norm, bf16 and float32, rows of 1 to 4 vectors a lane. */
TEST(norm_warp_rows_have_the_bits_of_a_row_alone) {
  NEED_GPU();
  const mx_dtype dts[2] = {MX_BFLOAT16, MX_FLOAT32};
  const int64_t Ds[4] = {40, 264, 768, 1000};
  enum { R = 37 };
  for (int di = 0; di < 2; di++)
    for (int k = 0; k < 4; k++) {
      const int64_t D = Ds[k];
      mx_array *x = normal_dt((int64_t[]){R, D}, 2, 2, 130 + k, dts[di]);
      mx_array *w = normal_dt((int64_t[]){D}, 1, 1, 140 + k, dts[di]);
      mx_array *b = normal_dt((int64_t[]){D}, 1, 1, 150 + k, dts[di]);
      ASSERT_OK(mx_eval((mx_array *[]){x, w, b}, 3));
      for (int layer = 0; layer < 2; layer++) {
        mx_set_default_device(MX_GPU);
        mx_array *all = layer ? mx_fast_layer_norm(x, w, b, 1e-5) : mx_fast_rms_norm(x, w, 1e-5);
        mx_set_default_device(MX_CPU);
        ASSERT(all);
        const int64_t pick[3] = {0, 17, R - 1};
        for (int i = 0; i < 3; i++) {
          mx_array *xr = mx_slice_axis(x, 0, pick[i], pick[i] + 1, 1);
          mx_array *xc = mx_copy(xr);
          mx_set_default_device(MX_GPU);
          mx_array *one = layer ? mx_fast_layer_norm(xc, w, b, 1e-5) : mx_fast_rms_norm(xc, w, 1e-5);
          mx_set_default_device(MX_CPU);
          mx_array *ar = mx_slice_axis(all, 0, pick[i], pick[i] + 1, 1);
          ASSERT(one && ar);
          ASSERT_EQ_INT(bits_differ(ar, one, layer ? "layer_norm row" : "rms_norm row"), 0);
          mx_array_free_n((mx_array *[]){xr, xc, one, ar}, 4);
        }
        mx_array_free(all);
      }
      mx_array_free_n((mx_array *[]){x, w, b}, 3);
    }
}

TEST(sdpa_blhd_output_has_the_same_values_and_gradients) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16, MX_FLOAT32};
  for (int d = 0; d < 3; d++)
    for (int causal = 0; causal < 2; causal++) {
      mx_array *q = normal_dt((int64_t[]){2, 4, 70, 64}, 4, 1, 90, dts[d]);
      mx_array *k = normal_dt((int64_t[]){2, 2, 70, 64}, 4, 1, 91, dts[d]);
      mx_array *v = normal_dt((int64_t[]){2, 2, 70, 64}, 4, 1, 92, dts[d]);
      mx_array *cot = normal_dt((int64_t[]){2, 70, 256}, 3, 1, 93, dts[d]);
      mx_array *in[3] = {q, k, v};
      mx_set_default_device(MX_GPU);
      /* the forward alone: values and layout */
      mx_array *o = mx_fast_scaled_dot_product_attention(q, k, v, 0.125, NULL, causal);
      mx_array *ob = mx_fast_scaled_dot_product_attention(q, k, v, 0.125, NULL, causal);
      mx__fast_sdpa_prefer_blhd(ob);
      ASSERT_OK(mx_array_eval(o));
      ASSERT_OK(mx_array_eval(ob));
      char what[96];
      snprintf(what, sizeof what, "sdpa blhd %s causal %d", mx_dtype_name(dts[d]), causal);
      ASSERT_EQ_INT(bits_differ(o, ob, what), 0);
      if (dts[d] != MX_FLOAT32) { /* the tensor-core kernel takes 16-bit heads of 64 */
        const int64_t *st = mx_array_strides(ob);
        ASSERT_EQ_INT(st[2], 4 * 64);
        ASSERT_EQ_INT(st[1], 64);
      }
      /* through the VJP */
      mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT}, y[2] = {MX_LIST_INIT, MX_LIST_INIT};
      for (int b = 0; b < 2; b++) {
        blhd_call c = {.blhd = b, .causal = causal};
        mx_closure *f = mx_closure_new(blhd_fn, &c, NULL);
        ASSERT_OK(mx_vjp(f, in, 3, &cot, 1, &y[b], &g[b]));
        mx_closure_free(f);
        ASSERT_OK(mx_eval(g[b].items, 3));
      }
      mx_set_default_device(MX_CPU);
      ASSERT_EQ_INT(bits_differ(y[0].items[0], y[1].items[0], what), 0);
      for (int i = 0; i < 3; i++) ASSERT_EQ_INT(bits_differ(g[0].items[i], g[1].items[i], what), 0);
      for (int b = 0; b < 2; b++) {
        mx_list_clear(&g[b]);
        mx_list_clear(&y[b]);
      }
      mx_array *all[] = {q, k, v, cot, o, ob};
      mx_array_free_n(all, 6);
    }
}

/* rope over attention's heads, (B, T, H * D) -> (B, T, H, D) -> (B, H, T,
 * D); with `copy` the transposed heads are copied first, so rope's input
 * is not a transpose and its VJP keeps the row order */
typedef struct {
  int64_t H, D;
  bool copy;
} rope_heads_call;

static int rope_heads_fn(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  const rope_heads_call *c = payload;
  const int64_t *s = mx_array_shape(in[0]);
  mx_array *r4 = mx_reshape(in[0], (int64_t[]){s[0], s[1], c->H, c->D}, 4);
  mx_array *t = r4 ? mx_transpose(r4, (int[]){0, 2, 1, 3}, 4) : NULL;
  mx_array *tc = t && c->copy ? mx_contiguous(t) : mx_array_retain(t);
  mx_array *y = tc ? mx_fast_rope(tc, (int)c->D, false, 10000, 1.0, 3, NULL) : NULL;
  mx_array_free_n((mx_array *[]){r4, t, tc}, 3);
  return mx_list_push(out, y);
}

/* rope's VJP stores its result in (B, T, H, D) order when rope's input was
 * the transposed heads (the gradient's way back to (B, T, H * D) is then
 * views): the same bits as the row-ordered result, near the CPU's */
TEST(rope_vjp_over_transposed_heads_has_the_bits_of_the_row_order) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  const int64_t shapes[][4] = {{2, 70, 3, 64}, {1, 33, 4, 128}}; /* B, T, H, D */
  for (int d = 0; d < 2; d++)
    for (int sh = 0; sh < 2; sh++) {
      const int64_t B = shapes[sh][0], T = shapes[sh][1], H = shapes[sh][2], D = shapes[sh][3];
      mx_array *x = normal_dt((int64_t[]){B, T, H * D}, 3, 1, 300 + (uint64_t)sh, dts[d]);
      mx_array *cot = normal_dt((int64_t[]){B, H, T, D}, 4, 1, 310 + (uint64_t)sh, dts[d]);
      mx_list g[3] = {MX_LIST_INIT, MX_LIST_INIT, MX_LIST_INIT};
      mx_list y[3] = {MX_LIST_INIT, MX_LIST_INIT, MX_LIST_INIT};
      for (int k = 0; k < 3; k++) { /* GPU transposed, GPU copied, CPU transposed */
        rope_heads_call c = {.H = H, .D = D, .copy = k == 1};
        mx_set_default_device(k == 2 ? MX_CPU : MX_GPU);
        mx_closure *f = mx_closure_new(rope_heads_fn, &c, NULL);
        ASSERT_OK(mx_vjp(f, &x, 1, &cot, 1, &y[k], &g[k]));
        mx_closure_free(f);
        ASSERT_OK(mx_eval(g[k].items, 1));
      }
      mx_set_default_device(MX_CPU);
      char what[96];
      snprintf(what, sizeof what, "rope vjp heads %s D %lld", mx_dtype_name(dts[d]),
               (long long)D);
      ASSERT_EQ_INT(bits_differ(g[0].items[0], g[1].items[0], what), 0);
      ASSERT_EQ_INT(mismatches(g[2].items[0], g[0].items[0], dtype_tol(dts[d]), what), 0);
      for (int k = 0; k < 3; k++) {
        mx_list_clear(&g[k]);
        mx_list_clear(&y[k]);
      }
      mx_array_free(x);
      mx_array_free(cot);
    }
}

/* attention over projections' heads, (B, T, H * D) -> (B, H, T, D) for q,
 * k and v; with `copy` the heads are copied first (so the VJP keeps [dk,
 * dv] in row order); the output back to (B, T, Hq * D) */
typedef struct {
  int64_t Hq, Hkv, D;
  bool copy;
} sdpa_heads_call;

static mx_array *heads_of(mx_array *x, int64_t H, int64_t D, bool copy) {
  const int64_t *s = mx_array_shape(x);
  mx_array *r4 = mx_reshape(x, (int64_t[]){s[0], s[1], H, D}, 4);
  mx_array *t = r4 ? mx_transpose(r4, (int[]){0, 2, 1, 3}, 4) : NULL;
  mx_array *r = t && copy ? mx_contiguous(t) : mx_array_retain(t);
  mx_array_free(r4);
  mx_array_free(t);
  return r;
}

static int sdpa_heads_fn(void *payload, mx_array **in, int n, mx_list *out) {
  (void)n;
  const sdpa_heads_call *c = payload;
  mx_array *q = heads_of(in[0], c->Hq, c->D, c->copy), *k = heads_of(in[1], c->Hkv, c->D, c->copy);
  mx_array *v = heads_of(in[2], c->Hkv, c->D, c->copy);
  mx_array *o = q && k && v ? mx_fast_scaled_dot_product_attention(q, k, v, 0.125, NULL, true)
                            : NULL;
  if (o) mx__fast_sdpa_prefer_blhd(o);
  const int64_t *s = o ? mx_array_shape(o) : NULL;
  mx_array *t = o ? mx_transpose(o, (int[]){0, 2, 1, 3}, 4) : NULL;
  mx_array *r = t ? mx_reshape(t, (int64_t[]){s[0], s[2], s[1] * s[3]}, 3) : NULL;
  mx_array_free_n((mx_array *[]){q, k, v, o, t}, 5);
  return mx_list_push(out, r);
}

/* The fused attention backward stores [dk, dv] in (B, Tk, 2, Hkv, D)
 * order when v's heads were a transposed (B, T, H, D) array (so dk and dv
 * go back to (B, T, H * D) as views): the bits of the row-ordered form */
TEST(sdpa_vjp_over_transposed_heads_has_the_bits_of_the_row_order) {
  NEED_GPU();
  const mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  const int64_t B = 2, T = 70, Hq = 4, Hkv = 2, D = 64;
  for (int d = 0; d < 2; d++) {
    mx_array *in[3] = {normal_dt((int64_t[]){B, T, Hq * D}, 3, 1, 400, dts[d]),
                       normal_dt((int64_t[]){B, T, Hkv * D}, 3, 1, 401, dts[d]),
                       normal_dt((int64_t[]){B, T, Hkv * D}, 3, 1, 402, dts[d])};
    mx_array *cot = normal_dt((int64_t[]){B, T, Hq * D}, 3, 1, 403, dts[d]);
    mx_list g[3] = {MX_LIST_INIT, MX_LIST_INIT, MX_LIST_INIT};
    mx_list y[3] = {MX_LIST_INIT, MX_LIST_INIT, MX_LIST_INIT};
    for (int k = 0; k < 3; k++) { /* GPU transposed, GPU copied, CPU transposed */
      sdpa_heads_call c = {.Hq = Hq, .Hkv = Hkv, .D = D, .copy = k == 1};
      mx_set_default_device(k == 2 ? MX_CPU : MX_GPU);
      mx_closure *f = mx_closure_new(sdpa_heads_fn, &c, NULL);
      ASSERT_OK(mx_vjp(f, in, 3, &cot, 1, &y[k], &g[k]));
      mx_closure_free(f);
      ASSERT_OK(mx_eval(g[k].items, 3));
    }
    mx_set_default_device(MX_CPU);
    for (int i = 0; i < 3; i++) {
      char what[96];
      snprintf(what, sizeof what, "sdpa vjp heads %s input %d", mx_dtype_name(dts[d]), i);
      ASSERT_EQ_INT(bits_differ(g[0].items[i], g[1].items[i], what), 0);
      ASSERT_EQ_INT(mismatches(g[2].items[i], g[0].items[i], 4 * dtype_tol(dts[d]), what), 0);
    }
    for (int k = 0; k < 3; k++) {
      mx_list_clear(&g[k]);
      mx_list_clear(&y[k]);
    }
    mx_array_free_n(in, 3);
    mx_array_free(cot);
  }
}

/* add_norm_linear on the GPU: the bits of add_rms_norm then the GEMV (or
 * swiglu_linear) for 16-bit rows of D <= 2048 in vectors (the kernel with
 * the norm in its prologue); near the CPU everywhere (the fallback too). */
TEST(add_norm_linear_has_the_bits_of_add_rms_norm_and_gemv) {
  NEED_GPU();
  const int64_t cases[][3] = {/* D, N, swiglu */
                              {2048, 3072, 0}, {2048, 16384, 1}, {1024, 300, 0}, {512, 74, 1},
                              {2048, 128256, 0}, {2056, 40, 0}, {40, 30, 1}};
  mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  for (int c = 0; c < 7; c++)
    for (int d = 0; d < 2; d++) {
      const int64_t D = cases[c][0], N = cases[c][1];
      const bool sw = cases[c][2] != 0;
      const int64_t M = sw ? N / 2 : N;
      mx_array *x32 = normal((int64_t[]){1, 1, D}, 3, 1, 21 + (uint64_t)c);
      mx_array *r32 = normal((int64_t[]){1, 1, D}, 3, 1, 41 + (uint64_t)c);
      mx_array *n32 = normal((int64_t[]){D}, 1, 0.3, 61 + (uint64_t)c);
      mx_array *w32 = normal((int64_t[]){N, D}, 2, 0.05, 81 + (uint64_t)c);
      mx_array *x = mx_astype(x32, dts[d]), *r = mx_astype(r32, dts[d]);
      mx_array *nw = mx_astype(n32, dts[d]), *w = mx_astype(w32, dts[d]);
      mx_array *ins[] = {x, r, nw, w};
      ASSERT_OK(mx_eval(ins, 4));
      mx_array *cpu = mx__fast_add_norm_linear(x, r, nw, w, 1e-5, sw);
      mx_set_default_device(MX_GPU);
      mx_array *fused = mx__fast_add_norm_linear(x, r, nw, w, 1e-5, sw);
      mx_array *z = mx__fast_add_rms_norm(x, r, nw, 1e-5);
      mx_array *h = mx_slice_axis(z, 0, 0, 1, 1), *n = mx_slice_axis(z, 0, 1, 2, 1);
      mx_array *hn = mx_reshape(h, (int64_t[]){1, 1, D}, 3), *nn = mx_reshape(n, (int64_t[]){1, 1, D}, 3);
      mx_array *wt = mx_transpose(w, (int[]){1, 0}, 2);
      mx_array *y = sw ? mx__fast_swiglu_linear(nn, w) : mx_matmul(nn, wt);
      mx_array *two = mx_concatenate((mx_array *[]){hn, y}, 2, 2);
      ASSERT_OK(mx_array_eval(two));
      ASSERT_OK(mx_array_eval(fused));
      mx_set_default_device(MX_CPU);
      char what[96];
      snprintf(what, sizeof what, "add_norm_linear D %lld N %lld%s %s", (long long)D, (long long)N,
               sw ? " swiglu" : "", mx_dtype_name(dts[d]));
      ASSERT_EQ_INT(mismatches(cpu, two, 0.05, what), 0);
      ASSERT_EQ_INT(mismatches(cpu, fused, 0.05, what), 0);
      if (D <= 2048 && D % 8 == 0) {
        const void *a = mx_array_data(fused), *b = mx_array_data(two);
        ASSERT(a && b);
        if (memcmp(a, b, 2 * (size_t)(D + M))) {
          fprintf(stderr, "  %s: not the bits of add_rms_norm + the GEMV\n", what);
          ASSERT(0);
        }
      }
      mx_array *all[] = {x32, r32, n32, w32, x, r, nw, w, cpu, fused, z, h, n, hn, nn, wt, y, two};
      mx_array_free_n(all, 18);
    }
}

/* add_norm_linear with a 4-bit weight on the GPU (the tensor-core GEMV
 * with the norm in its prologue): the bits of add_rms_norm, then
 * quantized_matmul (and swiglu); near the CPU everywhere (8 bits: the
 * fallback kernel). */
TEST(add_norm_qlinear_has_the_bits_of_add_rms_norm_and_qmv) {
  NEED_GPU();
  const int64_t cases[][5] = {/* D, N, swiglu, group size, bits */
                              {2048, 3072, 0, 64, 4}, {2048, 16384, 1, 64, 4},
                              {1024, 304, 0, 32, 4},  {512, 80, 1, 128, 4},
                              {2048, 4100, 0, 64, 4}, {256, 40, 1, 64, 8}};
  mx_dtype dts[] = {MX_BFLOAT16, MX_FLOAT16};
  for (int c = 0; c < 6; c++)
    for (int d = 0; d < 2; d++) {
      const int64_t D = cases[c][0], N = cases[c][1];
      const bool sw = cases[c][2] != 0;
      const int gs = (int)cases[c][3], bits = (int)cases[c][4];
      const int64_t M = sw ? N / 2 : N;
      mx_array *x32 = normal((int64_t[]){1, 1, D}, 3, 1, 121 + (uint64_t)c);
      mx_array *r32 = normal((int64_t[]){1, 1, D}, 3, 1, 141 + (uint64_t)c);
      mx_array *n32 = normal((int64_t[]){D}, 1, 0.3, 161 + (uint64_t)c);
      mx_array *w32 = normal((int64_t[]){N, D}, 2, 0.05, 181 + (uint64_t)c);
      mx_array *x = mx_astype(x32, dts[d]), *r = mx_astype(r32, dts[d]);
      mx_array *nw = mx_astype(n32, dts[d]), *w = mx_astype(w32, dts[d]);
      mx_array *wq = NULL, *sc = NULL, *bi = NULL;
      ASSERT_OK(mx_quantize(w, gs, bits, &wq, &sc, &bi));
      mx_array *ins[] = {x, r, nw, wq, sc, bi};
      ASSERT_OK(mx_eval(ins, 6));
      mx_array *cpu = mx__fast_add_norm_qlinear(x, r, nw, wq, sc, bi, gs, bits, 1e-5, sw);
      mx_set_default_device(MX_GPU);
      mx_array *fused = mx__fast_add_norm_qlinear(x, r, nw, wq, sc, bi, gs, bits, 1e-5, sw);
      mx_array *z = mx__fast_add_rms_norm(x, r, nw, 1e-5);
      mx_array *h = mx_slice_axis(z, 0, 0, 1, 1), *n = mx_slice_axis(z, 0, 1, 2, 1);
      mx_array *hn = mx_reshape(h, (int64_t[]){1, 1, D}, 3), *nn = mx_reshape(n, (int64_t[]){1, 1, D}, 3);
      mx_array *q = mx_quantized_matmul(nn, wq, sc, bi, true, gs, bits);
      mx_array *g = sw ? mx_slice_axis(q, 2, 0, M, 1) : NULL;
      mx_array *u = sw ? mx_slice_axis(q, 2, M, N, 1) : NULL;
      mx_array *y = sw ? mx_fast_swiglu(g, u) : mx_array_retain(q);
      mx_array *two = mx_concatenate((mx_array *[]){hn, y}, 2, 2);
      ASSERT_OK(mx_array_eval(two));
      ASSERT_OK(mx_array_eval(fused));
      mx_set_default_device(MX_CPU);
      char what[112];
      snprintf(what, sizeof what, "add_norm_linear %d-bit gs%d D %lld N %lld%s %s", bits, gs,
               (long long)D, (long long)N, sw ? " swiglu" : "", mx_dtype_name(dts[d]));
      ASSERT_EQ_INT(mismatches(cpu, two, 0.05, what), 0);
      ASSERT_EQ_INT(mismatches(cpu, fused, 0.05, what), 0);
      if (bits == 4) {
        const void *a = mx_array_data(fused), *b = mx_array_data(two);
        ASSERT(a && b);
        if (memcmp(a, b, 2 * (size_t)(D + M))) {
          fprintf(stderr, "  %s: not the bits of add_rms_norm + quantized_matmul\n", what);
          ASSERT(0);
        }
      }
      mx_array *all[] = {x32, r32, n32, w32, x, r, nw, w, wq, sc, bi, cpu, fused,
                         z, h, n, hn, nn, q, g, u, y, two};
      mx_array_free_n(all, 23);
    }
}

int main(int argc, char **argv) { return test_main(argc, argv); }
