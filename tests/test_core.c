/* test_core.c — arrays, lazy evaluation, memory, errors. */
#include <string.h>

#include "mxc/mxc.h"
#include "test.h"

static mx_array *vec(const float *v, int64_t n) { return mx_array_from_data(v, &n, 1, MX_FLOAT32); }

static mx_array *filled(int64_t n, float v) {
  mx_array *a = mx_full(&n, 1, v, MX_FLOAT32);
  mx_array_eval(a);
  return a;
}

TEST(ops_are_lazy_until_eval) {
  float x[4] = {0, 1, 2, 3};
  mx_array *a = vec(x, 4);
  size_t before = mx_get_active_memory();
  mx_array *b = mx_exp(a);
  mx_array *c = mx_multiply(b, b);
  ASSERT(!mx_array_is_evaluated(b));
  ASSERT(!mx_array_is_evaluated(c));
  ASSERT_STR_EQ(mx_array_op_name(c), "multiply");
  ASSERT_EQ_INT(mx_get_active_memory(), before); /* nothing allocated yet */
  ASSERT_OK(mx_eval(&c, 1));
  ASSERT(mx_array_is_evaluated(c));
  ASSERT_STR_EQ(mx_array_op_name(c), ""); /* graph dropped */
  const float *d = mx_array_data(c);
  for (int i = 0; i < 4; i++) ASSERT_NEAR(d[i], exp(2.0 * i), 1e-3 * exp(2.0 * i));
  mx_array_free(a);
  mx_array_free(b);
  mx_array_free(c);
}

TEST(reading_evaluates_implicitly) {
  float x[3] = {1, 2, 3};
  mx_array *a = vec(x, 3);
  mx_array *s = mx_sum(a, NULL, 0, false);
  double v = 0;
  ASSERT_OK(mx_array_item(s, &v));
  ASSERT_NEAR(v, 6, 0);
  mx_array_free(a);
  mx_array_free(s);
}

TEST(shared_subgraph_runs_once) {
  mx_array *a = filled(1000, 1.0f);
  mx_array *b = mx_exp(a);
  mx_array *c = mx_add(b, b);
  mx_array *d = mx_multiply(b, c);
  mx_debug_fail_nth_alloc(0); /* reset the allocation counter */
  ASSERT_OK(mx_eval(&d, 1));
  ASSERT_EQ_INT(mx_debug_fail_nth_alloc(0), 3); /* b, c, d: b computed once */
  mx_array_free_n((mx_array *[]){a, b, c, d}, 4);
}

TEST(eval_of_several_outputs) {
  mx_array *a = filled(10, 2.0f);
  mx_array *x = mx_square(a), *y = mx_sqrt(a);
  mx_array *both[2] = {x, y};
  ASSERT_OK(mx_eval(both, 2));
  double v;
  mx_array *sx = mx_sum(x, NULL, 0, false);
  ASSERT_OK(mx_array_item(sx, &v));
  ASSERT_NEAR(v, 40, 1e-5);
  mx_array_free_n((mx_array *[]){a, x, y, sx}, 4);
}

TEST(intermediates_freed_as_soon_as_consumed) {
  const int64_t n = 1 << 18; /* 1 MiB of float32 */
  mx_array *a = filled(n, 0.5f);
  mx_set_cache_limit(0);
  mx_reset_peak_memory();
  size_t base = mx_get_active_memory();
  mx_array *x = mx_array_retain(a);
  for (int i = 0; i < 100; i++) {
    mx_array *y = mx_add_scalar(x, 0.01);
    mx_array_free(x);
    x = y;
  }
  ASSERT_OK(mx_array_eval(x));
  size_t peak = mx_get_peak_memory() - base;
  /* a chain of 100 ops needs at most ~2 live buffers besides the input */
  ASSERT_MSG(peak <= 3 * (size_t)n * 4, "peak %zu bytes for a 100-op chain", peak);
  double v;
  mx_array *s = mx_max(x, NULL, 0, false);
  ASSERT_OK(mx_array_item(s, &v));
  ASSERT_NEAR(v, 1.5, 1e-4);
  mx_array_free(s);
  mx_array_free(x);
  mx_array_free(a);
  mx_set_cache_limit(SIZE_MAX);
}

TEST(very_deep_graph_evals_and_frees_without_recursion) {
  mx_array *x = mx_array_scalar(0, MX_FLOAT32);
  for (int i = 0; i < 200000; i++) {
    mx_array *y = mx_add_scalar(x, 1);
    mx_array_free(x);
    x = y;
  }
  double v;
  ASSERT_OK(mx_array_item(x, &v));
  ASSERT_NEAR(v, 200000, 0);
  mx_array_free(x);
  /* and an unevaluated deep chain is freed iteratively */
  x = mx_array_scalar(0, MX_FLOAT32);
  for (int i = 0; i < 200000; i++) {
    mx_array *y = mx_negative(x);
    mx_array_free(x);
    x = y;
  }
  mx_array_free(x);
}

TEST(shape_errors_at_build_time_name_op_and_shapes) {
  mx_array *a = mx_zeros((int64_t[]){2, 3}, 2, MX_FLOAT32);
  mx_array *b = mx_zeros((int64_t[]){4}, 1, MX_FLOAT32);
  mx_array *c = mx_add(a, b);
  ASSERT(c == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "add"));
  ASSERT(strstr(mx_last_error(), "[2,3]"));
  ASSERT(strstr(mx_last_error(), "[4]"));
  /* errors propagate through NULL inputs, keeping the first message */
  mx_array *d = mx_exp(c);
  ASSERT(d == NULL);
  ASSERT(strstr(mx_last_error(), "add"));
  mx_array *r = mx_reshape(a, (int64_t[]){4, 2}, 2);
  ASSERT(r == NULL);
  ASSERT(strstr(mx_last_error(), "reshape"));
  mx_array *s = mx_sum(a, (int[]){5}, 1, false);
  ASSERT(s == NULL);
  ASSERT(strstr(mx_last_error(), "axis 5"));
  mx_array_free(a);
  mx_array_free(b);
}

TEST(views_copy_nothing) {
  mx_array *r = mx_arange(0, 24, 1, MX_FLOAT32);
  mx_array *a = mx_reshape(r, (int64_t[]){2, 3, 4}, 3);
  mx_array_free(r);
  ASSERT_OK(mx_array_eval(a));
  mx_set_cache_limit(0);
  size_t before = mx_get_active_memory();
  mx_array *t = mx_transpose(a, NULL, 0);
  mx_array *s = mx_slice_axis(t, 0, 1, 4, 2);
  mx_array *bc = mx_broadcast_to(s, (int64_t[]){5, 2, 3, 2}, 4);
  ASSERT_OK(mx_array_eval(bc));
  ASSERT_EQ_INT(mx_get_active_memory(), before);
  ASSERT(!mx_array_is_contiguous(t));
  const int64_t *st = mx_array_strides(t);
  ASSERT_EQ_INT(st[0], 1);
  ASSERT_EQ_INT(st[2], 12);
  /* reading a view gives row-major data */
  const float *d = mx_array_data(s); /* t[1:4:2] = a[:, :, 1::2] transposed */
  ASSERT_NOT_NULL(d);
  ASSERT_NEAR(d[0], 1, 0);  /* t[1,0,0] = a[0,0,1] */
  ASSERT_NEAR(d[1], 13, 0); /* t[1,0,1] = a[1,0,1] */
  mx_array_free_n((mx_array *[]){a, t, s, bc}, 4);
  mx_set_cache_limit(SIZE_MAX);
}

/* Reshapes of strided views stay views where NumPy's would (axes split or
 * merged within runs of contiguous axes), copy where they must, and read
 * the same values either way. */
TEST(reshape_of_a_view_copies_only_when_it_must) {
  mx_array *r = mx_arange(0, 96, 1, MX_FLOAT32);
  mx_array *a = mx_reshape(r, (int64_t[]){4, 24}, 2);
  mx_array_free(r);
  ASSERT_OK(mx_array_eval(a));
  mx_set_cache_limit(0);
  size_t before = mx_get_active_memory();
  /* rows spread out (every other 12-wide half row), last axis split */
  mx_array *h = mx_slice_axis(a, 1, 12, 24, 1);              /* (4, 12), row stride 24 */
  mx_array *sp = mx_reshape(h, (int64_t[]){1, 4, 3, 4}, 4);   /* split: a view */
  mx_array *tr = mx_transpose(sp, (int[]){0, 2, 1, 3}, 4);    /* (1, 3, 4, 4) */
  mx_array *m1 = mx_reshape(sp, (int64_t[]){2, 2, 12}, 3);    /* split + merge: a view */
  ASSERT_OK(mx_eval((mx_array *[]){sp, m1}, 2));
  ASSERT_EQ_INT(mx_get_active_memory(), before);
  ASSERT_EQ_INT(mx_array_strides(sp)[1], 24);
  ASSERT_EQ_INT(mx_array_strides(sp)[2], 4);
  ASSERT_EQ_INT(mx_array_strides(m1)[1], 24);
  /* merging axes that are not contiguous with each other: a copy */
  mx_array *m2 = mx_reshape(h, (int64_t[]){48}, 1);
  mx_array *m3 = mx_reshape(tr, (int64_t[]){12, 4}, 2);
  ASSERT_OK(mx_eval((mx_array *[]){m2, m3}, 2));
  ASSERT(mx_get_active_memory() > before);
  const float *d1 = mx_array_data(m1), *d2 = mx_array_data(m2), *d3 = mx_array_data(m3);
  ASSERT(d1 && d2 && d3);
  for (int i = 0; i < 48; i++) /* m1[i, j, c] = a[2 i + j, 12 + c] */
    ASSERT_NEAR(d1[i], 24 * (i / 12) + 12 + i % 12, 0);
  for (int i = 0; i < 48; i++) ASSERT_NEAR(d2[i], 24 * (i / 12) + 12 + i % 12, 0);
  for (int i = 0; i < 12; i++) /* m3[3 r' ...]: tr row (i / 4, i % 4) */
    for (int c = 0; c < 4; c++) ASSERT_NEAR(d3[i * 4 + c], 24 * (i % 4) + 12 + 4 * (i / 4) + c, 0);
  mx_array_free_n((mx_array *[]){a, h, sp, tr, m1, m2, m3}, 7);
  mx_set_cache_limit(SIZE_MAX);
}

static int deleted;
static void count_delete(void *p, void *ctx) {
  (void)p;
  (*(int *)ctx)++;
}

TEST(nocopy_deleter_runs_once_when_last_user_is_freed) {
  static float buf[6] = {1, 2, 3, 4, 5, 6};
  deleted = 0;
  mx_array *a = mx_array_from_data_nocopy(buf, (int64_t[]){2, 3}, 2, MX_FLOAT32, count_delete, &deleted);
  mx_array *t = mx_transpose(a, NULL, 0);
  ASSERT_OK(mx_array_eval(t)); /* a view shares the foreign buffer */
  mx_array_free(a);
  ASSERT_EQ_INT(deleted, 0);
  mx_array_free(t);
  ASSERT_EQ_INT(deleted, 1);
}

TEST(memory_api_cache_and_limits) {
  mx_clear_cache();
  size_t prev = mx_set_cache_limit(1 << 30);
  mx_array *a = filled(1 << 16, 1.0f);
  size_t active = mx_get_active_memory();
  ASSERT(active >= (1 << 18));
  mx_array_free(a);
  ASSERT(mx_get_cache_memory() >= (1 << 18));
  ASSERT(mx_get_active_memory() <= active - (1 << 18));
  /* a new array of the same size reuses the cached block */
  mx_debug_fail_nth_alloc(0);
  a = filled(1 << 16, 2.0f);
  mx_clear_cache();
  ASSERT_EQ_INT(mx_get_cache_memory(), 0);
  ASSERT_EQ_INT(mx_set_cache_limit(prev), 1 << 30);
  mx_array_free(a);
  mx_clear_cache();
}

TEST(out_of_memory_is_a_status_and_arrays_stay_usable) {
  mx_clear_cache();
  mx_array *a = filled(1 << 20, 1.0f); /* 4 MiB */
  size_t prev = mx_set_memory_limit(mx_get_active_memory() + (1 << 20));
  mx_array *b = mx_exp(a); /* needs 4 MiB more */
  int st = mx_array_eval(b);
  ASSERT_EQ_INT(st, MX_ERR_OOM);
  ASSERT(strstr(mx_last_error(), "requested"));
  ASSERT(strstr(mx_last_error(), "available"));
  ASSERT(!mx_array_is_evaluated(b));
  mx_set_memory_limit(prev);
  ASSERT_OK(mx_array_eval(b)); /* works once memory is available */
  double v;
  mx_array *s = mx_mean(b, NULL, 0, false);
  ASSERT_OK(mx_array_item(s, &v));
  ASSERT_NEAR(v, exp(1.0), 1e-5);
  mx_array_free_n((mx_array *[]){a, b, s}, 3);
}

/* A graph with several intermediates; the n-th allocation fails. */
static mx_array *build_graph(mx_array *x) {
  mx_array *a = mx_exp(x);
  mx_array *b = mx_transpose(a, NULL, 0);
  mx_array *c = mx_add(a, b);
  mx_array *d = mx_softmax(c, (int[]){-1}, 1);
  mx_array *e = mx_sum(d, (int[]){0}, 1, false);
  mx_array_free_n((mx_array *[]){a, b, c, d}, 4);
  return e;
}

TEST(every_failing_allocation_is_reported_cleanly) {
  int64_t sh[2] = {16, 16};
  mx_array *x = mx_full(sh, 2, 0.25, MX_FLOAT32);
  ASSERT_OK(mx_array_eval(x));
  mx_array *ref = build_graph(x);
  mx_debug_fail_nth_alloc(0);
  ASSERT_OK(mx_array_eval(ref));
  size_t total = mx_debug_fail_nth_alloc(0);
  ASSERT(total >= 3);
  for (size_t n = 1; n <= total + 1; n++) {
    mx_array *g = build_graph(x);
    mx_debug_fail_nth_alloc(n);
    int st = mx_array_eval(g);
    mx_debug_fail_nth_alloc(0);
    if (n <= total) ASSERT_EQ_INT(st, MX_ERR_OOM);
    ASSERT_OK(mx_array_eval(g)); /* retry succeeds */
    bool same = false;
    ASSERT_OK(mx_allclose(g, ref, 0, 0, &same));
    ASSERT(same);
    mx_array_free(g);
  }
  mx_array_free(x);
  mx_array_free(ref);
}

TEST(slice_update_reuses_a_buffer_nobody_else_can_see) {
  mx_set_cache_limit(0);
  int64_t n = 1 << 16;
  mx_array *a = mx_zeros(&n, 1, MX_FLOAT32);
  ASSERT_OK(mx_array_eval(a));
  mx_array *v = mx_full((int64_t[]){4}, 1, 7.0, MX_FLOAT32);
  ASSERT_OK(mx_array_eval(v));
  /* shared input: must be copied, a keeps its zeros */
  mx_array *u1 = mx_slice_update(a, v, (int64_t[]){8}, (int64_t[]){12}, NULL, 1);
  ASSERT_OK(mx_array_eval(u1));
  double x;
  mx_array *s0 = mx_sum(a, NULL, 0, false);
  ASSERT_OK(mx_array_item(s0, &x));
  ASSERT_NEAR(x, 0, 0);
  /* sole owner (the KV-cache pattern): updated in place, no new buffer */
  size_t before = mx_get_active_memory();
  mx_array *u2 = mx_slice_update(u1, v, (int64_t[]){0}, (int64_t[]){4}, NULL, 1);
  mx_array_free(u1);
  ASSERT_OK(mx_array_eval(u2));
  ASSERT_EQ_INT(mx_get_active_memory(), before);
  mx_array *s1 = mx_sum(u2, NULL, 0, false);
  ASSERT_OK(mx_array_item(s1, &x));
  ASSERT_NEAR(x, 56, 0);
  mx_array_free_n((mx_array *[]){a, v, s0, u2, s1}, 5);
  mx_set_cache_limit(SIZE_MAX);
}

TEST(type_promotion_table) {
  ASSERT_EQ_INT(mx_promote_types(MX_BOOL, MX_INT32), MX_INT32);
  ASSERT_EQ_INT(mx_promote_types(MX_UINT8, MX_INT32), MX_INT32);
  ASSERT_EQ_INT(mx_promote_types(MX_UINT32, MX_INT32), MX_INT64);
  ASSERT_EQ_INT(mx_promote_types(MX_INT64, MX_FLOAT16), MX_FLOAT16);
  ASSERT_EQ_INT(mx_promote_types(MX_FLOAT16, MX_BFLOAT16), MX_FLOAT32);
  ASSERT_EQ_INT(mx_promote_types(MX_BFLOAT16, MX_FLOAT32), MX_FLOAT32);
  ASSERT_EQ_INT(mx_promote_types(MX_FLOAT32, MX_FLOAT64), MX_FLOAT64);
  /* weak scalars keep the array's dtype */
  mx_array *h = mx_ones((int64_t[]){2}, 1, MX_BFLOAT16);
  mx_array *y = mx_multiply_scalar(h, 3.0);
  ASSERT_EQ_INT(mx_array_dtype(y), MX_BFLOAT16);
  mx_array *i = mx_ones((int64_t[]){2}, 1, MX_INT32);
  mx_array *z = mx_divide(i, i);
  ASSERT_EQ_INT(mx_array_dtype(z), MX_FLOAT32);
  mx_array_free_n((mx_array *[]){h, y, i, z}, 4);
}

TEST(results_identical_for_any_thread_count) {
  int64_t n = 1 << 20;
  mx_array *a = mx_arange(0, (double)n, 1, MX_FLOAT32);
  mx_array *b = mx_sin(a);
  mx_array *s1 = mx_sum(b, NULL, 0, false);
  int prev = mx_get_num_threads();
  mx_set_num_threads(1);
  double v1, v2;
  ASSERT_OK(mx_array_item(s1, &v1));
  mx_set_num_threads(prev > 1 ? prev : 2);
  mx_array *c = mx_sin(a);
  mx_array *s2 = mx_sum(c, NULL, 0, false);
  ASSERT_OK(mx_array_item(s2, &v2));
  mx_set_num_threads(prev);
  ASSERT(memcmp(&v1, &v2, sizeof v1) == 0);
  mx_array_free_n((mx_array *[]){a, b, s1, c, s2}, 5);
}

TEST(dtype_names_and_parsing) {
  mx_dtype d;
  ASSERT_OK(mx_dtype_from_name("bf16", &d));
  ASSERT_EQ_INT(d, MX_BFLOAT16);
  ASSERT(mx_dtype_from_name("float128", &d) != MX_OK);
  ASSERT(strstr(mx_last_error(), "float128"));
  ASSERT_STR_EQ(mx_dtype_name(MX_UINT32), "uint32");
  ASSERT_STR_EQ(mx_status_name(MX_ERR_OOM), "MX_ERR_OOM");
}

int main(int argc, char **argv) { return test_main(argc, argv); }

/* ---- the thread pool ---------------------------------------------------------------- */
/* Every index of every job is run exactly once, whatever the pool does with
 * its helpers (joining late, not at all, jobs run on the caller alone),
 * across thousands of small jobs, thread-count changes and a busy thread
 * competing for the cores. */
#include <pthread.h>
#include "array_impl.h"

typedef struct {
  int *hits;
} pool_job;

static void pool_mark(void *ctx, int64_t b, int64_t e) {
  pool_job *j = ctx;
  for (int64_t i = b; i < e; i++) __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
}

static volatile int pool_busy_stop;
static void *pool_busy(void *arg) {
  (void)arg;
  unsigned long x = 1;
  while (!pool_busy_stop) x = x * 6364136223846793005ul + 1;
  return (void *)(uintptr_t)(x & 1);
}

TEST(pool_runs_every_index_once) {
  int prev = mx_get_num_threads();
  pthread_t busy;
  pool_busy_stop = 0;
  ASSERT(pthread_create(&busy, NULL, pool_busy, NULL) == 0);
  int *hits = calloc(5000, sizeof(int));
  for (int job = 0; job < 3000; job++) {
    if (job % 500 == 0) mx_set_num_threads(1 + (job / 500) % 4);
    int64_t n = 1 + (job * 37) % 5000, grain = 1 + job % 7;
    memset(hits, 0, sizeof(int) * (size_t)n);
    pool_job j = {hits};
    mx__parallel_for(n, grain, pool_mark, &j);
    for (int64_t i = 0; i < n; i++)
      if (hits[i] != 1) {
        ASSERT_MSG(0, "job %d: index %lld run %d times", job, (long long)i, hits[i]);
        job = 3000;
        break;
      }
  }
  pool_busy_stop = 1;
  pthread_join(busy, NULL);
  free(hits);
  mx_set_num_threads(prev);
}
