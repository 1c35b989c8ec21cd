/* test_cuda.c — the CUDA backend: availability, residency and transfer
 * counting, memory counters, out-of-memory as a status, and end-to-end
 * graphs equal to the CPU's results. Every case skips cleanly where no GPU
 * (or no CUDA build) is present. Op-by-op parity is tests/test_ops.c. */
#include <math.h>
#include <string.h>

#include "mxc/mxc.h"
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

int main(int argc, char **argv) { return test_main(argc, argv); }
