/* test_async_eval.c — mx_async_eval: results equal mx_eval's on every
 * device; on a GPU the background host copy is counted once, a read after
 * more queued work returns the right value, and arrays freed with a copy in
 * flight are fine. */
#include <math.h>

#include "mxc/mxc.h"
#include "test.h"

static mx_array *arange_f(int64_t n) {
  float v[256];
  for (int64_t i = 0; i < n; i++) v[i] = (float)i * 0.5f;
  return mx_array_from_data(v, (int64_t[]){n}, 1, MX_FLOAT32);
}

TEST(cpu_async_eval_is_eval) {
  mx_array *a = arange_f(16);
  mx_array *s = mx_sum(a, NULL, 0, false);
  ASSERT_OK(mx_async_eval(&s, 1));
  ASSERT(mx_array_is_evaluated(s));
  double v = 0;
  ASSERT_OK(mx_array_item(s, &v));
  ASSERT(fabs(v - 60.0) < 1e-6);
  ASSERT(mx_async_eval(NULL, 1) < 0); /* invalid list: a status */
  mx_array_free(a);
  mx_array_free(s);
}

TEST(gpu_read_after_more_queued_work) {
  if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available");
  mx_set_default_device(MX_GPU);
  mx_array *a = arange_f(200);
  ASSERT_OK(mx_array_eval(a));
  mx_array *y = mx_argmax(a, -1, false); /* 199; a moves up with it */
  size_t d0 = 0, d1 = 0;
  mx_get_transfer_stats(NULL, &d0, NULL);
  ASSERT_OK(mx_async_eval(&y, 1));
  mx_get_transfer_stats(NULL, &d1, NULL);
  ASSERT_EQ_INT((int)(d1 - d0), 4); /* the background copy of y, counted once */
  /* queue a chain of dependent work behind it */
  mx_array *b = mx_add(a, a);
  for (int i = 0; i < 50; i++) {
    mx_array *c = mx_multiply(b, b);
    mx_array *d = mx_tanh(c);
    mx_array_free(b);
    mx_array_free(c);
    b = d;
  }
  ASSERT_OK(mx_async_eval(&b, 1)); /* 800 bytes: staged too */
  size_t d2 = 0, d3 = 0;
  mx_get_transfer_stats(NULL, &d2, NULL);
  int64_t id = -1;
  ASSERT_OK(mx_array_item_int(y, &id));
  ASSERT_EQ_INT((int)id, 199);
  mx_get_transfer_stats(NULL, &d3, NULL);
  ASSERT_EQ_INT((int)(d3 - d2), 0); /* reading y copied nothing more */
  /* a copy in flight when the array is freed */
  mx_array *z = mx_argmin(a, -1, false);
  ASSERT_OK(mx_async_eval(&z, 1));
  mx_array_free(z);
  /* large results are declined and copied when read */
  mx_array *big = mx_zeros((int64_t[]){1 << 20}, 1, MX_FLOAT32);
  mx_array *big2 = mx_add(big, big);
  ASSERT_OK(mx_async_eval(&big2, 1));
  const float *p = mx_array_data(big2);
  ASSERT(p && p[12345] == 0.0f);
  mx_set_default_device(MX_CPU);
  mx_array *bf = mx_astype(b, MX_FLOAT32);
  ASSERT(mx_array_data(bf) != NULL);
  mx_array_free_n((mx_array *[]){a, y, b, big, big2, bf}, 6);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
