/* test_cuda_reduce.c — long-row argmax/argmin on the GPU (the block-per-row
 * kernel used for vocabulary-sized rows) equal the CPU's: ties go to the
 * first index, the first NaN wins, strided (transposed) inputs; column
 * sums and maxima (the split column kernel) equal the CPU's. Skips where
 * there is no GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mxc/mxc.h"
#include "test.h"

static int check(mx_array *x, int axis, bool is_max) {
  mx_set_default_device(MX_CPU);
  mx_array *c = is_max ? mx_argmax(x, axis, false) : mx_argmin(x, axis, false);
  mx_set_default_device(MX_GPU);
  mx_array *g = is_max ? mx_argmax(x, axis, false) : mx_argmin(x, axis, false);
  mx_set_default_device(MX_CPU);
  int bad = -1;
  if (c && g && !mx_eval((mx_array *[]){c, g}, 2)) {
    const uint32_t *a = mx_array_data(c), *b = mx_array_data(g);
    bad = 0;
    for (int64_t i = 0; i < mx_array_size(c); i++) bad += a[i] != b[i];
  }
  mx_array_free(c);
  mx_array_free(g);
  return bad;
}

TEST(long_rows_ties_nans_strided) {
  if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available");
  const int64_t R = 5, L = 128256;
  float *v = malloc(sizeof(float) * (size_t)(R * L));
  for (int64_t i = 0; i < R * L; i++) v[i] = (float)((i * 2654435761u) % 1000) * 0.01f;
  /* row 0: ties of the maximum at 3 places; row 1: ties of the minimum;
   * row 2: two NaNs; row 3: NaN first; row 4: plain */
  v[0 * L + 70000] = v[0 * L + 100] = v[0 * L + 128000] = 50.0f;
  v[1 * L + 90000] = v[1 * L + 5000] = -3.0f;
  v[2 * L + 64000] = NAN;
  v[2 * L + 120000] = NAN;
  v[3 * L + 0] = NAN;
  mx_array *x = mx_array_from_data(v, (int64_t[]){R, L}, 2, MX_FLOAT32);
  ASSERT_EQ_INT(check(x, 1, true), 0);
  ASSERT_EQ_INT(check(x, 1, false), 0);
  mx_array *bf = mx_astype(x, MX_BFLOAT16);
  ASSERT_EQ_INT(check(bf, 1, true), 0);
  mx_array *t = mx_transpose(x, NULL, 0); /* (L, R): reduce axis 0, strided */
  ASSERT_EQ_INT(check(t, 0, true), 0);
  ASSERT_EQ_INT(check(t, 0, false), 0);
  /* the expected answers themselves */
  mx_set_default_device(MX_GPU);
  mx_array *g = mx_argmax(x, 1, false);
  mx_set_default_device(MX_CPU);
  const uint32_t *ids = mx_array_data(g);
  ASSERT(ids);
  ASSERT_EQ_INT((int)ids[0], 100);
  ASSERT_EQ_INT((int)ids[2], 64000);
  ASSERT_EQ_INT((int)ids[3], 0);
  mx_array_free_n((mx_array *[]){x, bf, t, g}, 4);
  free(v);
}

/* sum / max over the leading axes (the column kernel: kept dims innermost)
 * equal the CPU's, NaN included; a strided view takes the other kernels */
static int check_red(mx_array *x, const int *axes, int nax, bool is_max) {
  mx_array *r[2];
  for (int d = 0; d < 2; d++) {
    mx_set_default_device(d ? MX_GPU : MX_CPU);
    r[d] = is_max ? mx_max(x, axes, nax, false) : mx_sum(x, axes, nax, false);
  }
  mx_set_default_device(MX_CPU);
  int bad = -1;
  if (r[0] && r[1] && !mx_eval(r, 2)) {
    int64_t n = mx_array_size(r[0]);
    double *a = malloc(sizeof(double) * (size_t)n), *b = malloc(sizeof(double) * (size_t)n);
    if (!mx_array_copy_to(r[0], MX_FLOAT64, a, n) && !mx_array_copy_to(r[1], MX_FLOAT64, b, n)) {
      bad = 0;
      for (int64_t i = 0; i < n; i++)
        bad += isnan(a[i]) ? !isnan(b[i]) : !(fabs(a[i] - b[i]) <= 1e-6 * (1 + fabs(a[i])));
    }
    free(a);
    free(b);
  }
  mx_array_free_n(r, 2);
  return bad;
}

TEST(column_reductions) {
  if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available");
  const int64_t R = 4099, C = 770;
  float *v = malloc(sizeof(float) * (size_t)(R * C));
  for (int64_t i = 0; i < R * C; i++) v[i] = (float)((i * 2654435761u) % 2001) * 0.001f - 1.f;
  v[1234 * C + 17] = NAN;
  mx_array *x = mx_array_from_data(v, (int64_t[]){R, C}, 2, MX_FLOAT32);
  const int a0[] = {0}, a01[] = {0, 1};
  ASSERT_EQ_INT(check_red(x, a0, 1, false), 0);
  ASSERT_EQ_INT(check_red(x, a0, 1, true), 0);
  mx_array *bf = mx_astype(x, MX_BFLOAT16);
  ASSERT_EQ_INT(check_red(bf, a0, 1, false), 0);
  mx_array *s = mx_slice(x, (int64_t[]){0, 0}, (int64_t[]){4089, 770}, NULL, 2);
  mx_array *y3 = mx_reshape(s, (int64_t[]){29, 141, 770}, 3);
  ASSERT_EQ_INT(check_red(y3, a01, 2, false), 0);
  /* whole-array reductions (split over blocks): contiguous and strided */
  ASSERT_EQ_INT(check_red(x, a01, 2, false), 0);
  ASSERT_EQ_INT(check_red(bf, a01, 2, true), 0);
  mx_array *t = mx_transpose(x, NULL, 0); /* (C, R): sum over axis 1, strided */
  ASSERT_EQ_INT(check_red(t, a01, 2, false), 0);
  mx_array *top = mx_slice(x, (int64_t[]){0, 0}, (int64_t[]){1000, 770}, NULL, 2); /* no NaN */
  ASSERT_EQ_INT(check_red(top, a01, 2, false), 0);
  ASSERT_EQ_INT(check_red(top, a01, 2, true), 0);
  mx_array_free(top);
  const int a1[] = {1};
  ASSERT_EQ_INT(check_red(t, a1, 1, false), 0);
  /* the answer itself: column 17 holds the NaN, column 0 a known sum */
  mx_set_default_device(MX_GPU);
  mx_array *g = mx_sum(x, a0, 1, false);
  mx_set_default_device(MX_CPU);
  const float *gs = mx_array_data(g);
  ASSERT(gs);
  ASSERT(isnan(gs[17]));
  double want = 0;
  for (int64_t i = 0; i < R; i++) want += v[i * C];
  ASSERT(fabs(gs[0] - want) <= 1e-5 * (1 + fabs(want)));
  mx_array_free_n((mx_array *[]){x, bf, s, y3, t, g}, 6);
  free(v);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
