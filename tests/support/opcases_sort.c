/* opcases_sort.c — op-parity cases for sort, argsort, partition,
 * argpartition and topk.
 *
 * ip = {mode, axis, kth or k, variant}, dp[0] = NaN threshold.
 * The reference is a stable insertion argsort per row with NumPy's order
 * (NaNs last). partition's output order inside each side is unspecified, so
 * its builds normalise it with mxc ops: sort(left) ++ [kth] ++ sort(right)
 * must equal the fully sorted row, which holds exactly when the partition
 * is correct. argpartition is checked twice: the values it selects
 * (take_along_axis, normalised the same way) and that its rows are
 * permutations (sorted, they are 0..n-1). topk is checked sorted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/harness.h"

enum { M_SORT, M_ARGSORT, M_PARTITION, M_ARGPART_VALUES, M_ARGPART_PERM, M_TOPK };
enum { V_PLAIN, V_NAN, V_FLOOR };

static int norm_axis(const mx_opcase *c) {
  int ax = c->ip[1];
  return ax < 0 ? ax + c->ndim[0] : ax;
}
static int64_t norm_kth(const mx_opcase *c) {
  int64_t n = c->shape[0][norm_axis(c)], k = c->ip[2];
  return k < 0 ? k + n : k;
}

/* ---- builds -------------------------------------------------------------------- */
/* Input variant: NaNs above dp[0], or floor (ties among floats). */
static mx_array *variant(const mx_opcase *c, mx_array *x) {
  if (c->ip[3] == V_FLOOR) return mx_floor(x);
  if (c->ip[3] != V_NAN) return mx_array_retain(x);
  mx_dtype dt = mx_array_dtype(x);
  mx_array *thr = mx_array_scalar(c->dp[0], dt), *nan = mx_array_scalar(NAN, dt);
  mx_array *gt = mx_greater(x, thr);
  mx_array *r = mx_where(gt, nan, x);
  mx_array_free(thr);
  mx_array_free(nan);
  mx_array_free(gt);
  return r;
}

/* sort(p[:kth]) ++ p[kth] ++ sort(p[kth+1:]) along axis. */
static mx_array *normalise_partition(mx_array *p, int64_t kth, int ax) {
  if (!p) return NULL;
  int64_t n = mx_array_shape(p)[ax];
  mx_array *l = mx_slice_axis(p, ax, 0, kth, 1);
  mx_array *m = mx_slice_axis(p, ax, kth, kth + 1, 1);
  mx_array *r = mx_slice_axis(p, ax, kth + 1, n, 1);
  mx_array *parts[3] = {mx_sort(l, ax), m, mx_sort(r, ax)};
  mx_array *out = parts[0] && parts[2] ? mx_concatenate(parts, 3, ax) : NULL;
  mx_array_free(l);
  mx_array_free(r);
  mx_array_free_n(parts, 3);
  return out;
}

static mx_array *b_sort(const mx_opcase *c, mx_array **in) {
  int ax = c->ip[1];
  int axn = norm_axis(c);
  mx_array *x = variant(c, in[0]);
  mx_array *r = NULL, *t = NULL, *u = NULL;
  switch (c->ip[0]) {
    case M_SORT: r = mx_sort(x, ax); break;
    case M_ARGSORT: r = mx_argsort(x, ax); break;
    case M_PARTITION:
      t = mx_partition(x, c->ip[2], ax);
      r = normalise_partition(t, norm_kth(c), axn);
      break;
    case M_ARGPART_VALUES:
      t = mx_argpartition(x, c->ip[2], ax);
      u = t ? mx_take_along_axis(x, t, ax) : NULL;
      r = normalise_partition(u, norm_kth(c), axn);
      break;
    case M_ARGPART_PERM:
      t = mx_argpartition(x, c->ip[2], ax);
      r = t ? mx_sort(t, ax) : NULL;
      break;
    case M_TOPK:
      t = mx_topk(x, c->ip[2], ax);
      r = t ? mx_sort(t, ax) : NULL;
      break;
  }
  mx_array_free(x);
  mx_array_free(t);
  mx_array_free(u);
  return r;
}

/* ---- reference ------------------------------------------------------------------- */
static int before(double a, double b) { return !isnan(a) && (isnan(b) || a < b); }

static int f_sort(const mx_opcase *c, const double *const *in, double *out, int64_t *s,
                  int *nd) {
  int ndim = c->ndim[0], ax = norm_axis(c), mode = c->ip[0];
  const int64_t *shape = c->shape[0];
  int64_t n = shape[ax], outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= shape[d];
  for (int d = ax + 1; d < ndim; d++) inner *= shape[d];
  int64_t nout = mode == M_TOPK ? c->ip[2] : n;
  memcpy(s, shape, sizeof(int64_t) * (size_t)ndim);
  s[ax] = nout;
  *nd = ndim;
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  int64_t *ix = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      for (int64_t j = 0; j < n; j++) {
        double x = in[0][(o * n + j) * inner + i];
        if (c->ip[3] == V_NAN && x > c->dp[0]) x = NAN;
        if (c->ip[3] == V_FLOOR) x = floor(x);
        v[j] = x;
        ix[j] = j;
      }
      /* stable insertion argsort */
      for (int64_t j = 1; j < n; j++) {
        int64_t t = ix[j], m = j;
        for (; m > 0 && before(v[t], v[ix[m - 1]]); m--) ix[m] = ix[m - 1];
        ix[m] = t;
      }
      for (int64_t j = 0; j < nout; j++) {
        double r;
        switch (mode) {
          case M_ARGSORT: r = (double)ix[j]; break;
          case M_ARGPART_PERM: r = (double)j; break;
          case M_TOPK: r = v[ix[n - nout + j]]; break;
          default: r = v[ix[j]]; break;
        }
        out[(o * nout + j) * inner + i] = r;
      }
    }
  free(v);
  free(ix);
  return 0;
}

/* ---- cases ------------------------------------------------------------------------- */
#define ALL_DT \
  OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64, MX_UINT8, MX_UINT32, MX_BOOL)
#define CASE(name, d, mode, nd, shp, ax, k, var, DTS, fl)                                  \
  {.op = name, .desc = d, .nin = 1, .ndim = {nd}, .shape = {shp}, .lo = -8, .hi = 8,     \
   DTS, .flags = fl, .ip = {mode, ax, k, var}, .dp = {4.0}, .build = b_sort, .ref = f_sort}
#define S(...) {__VA_ARGS__}
#define NC OC_NONCONTIG
#define NG OC_NO_GRAD

static const mx_opcase cases[] = {
    /* sort */
    CASE("sort", "last axis, radix rows", M_SORT, 2, S(4, 37), -1, 0, V_PLAIN, ALL_DT, NC),
    CASE("sort", "axis 0, short rows", M_SORT, 2, S(5, 7), 0, 0, V_PLAIN, ALL_DT, NC),
    CASE("sort", "middle axis", M_SORT, 3, S(3, 300, 2), 1, 0, V_PLAIN, ALL_DT, NC),
    CASE("sort", "one long row", M_SORT, 1, S(1000), 0, 0, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT64, MX_FLOAT16), NC),
    CASE("sort", "NaNs last", M_SORT, 2, S(3, 50), -1, 0, V_NAN, OC_FLOATS, NC),
    CASE("sort", "0-size rows", M_SORT, 2, S(0, 5), -1, 0, V_PLAIN, OC_F32_F64, 0),
    CASE("sort", "0-size axis", M_SORT, 2, S(3, 0), 1, 0, V_PLAIN, OC_F32_F64, 0),
    CASE("sort", "size-1 axis", M_SORT, 2, S(6, 1), 1, 0, V_PLAIN, OC_DT(MX_FLOAT32, MX_INT32), NC),
    CASE("sort", "1x1", M_SORT, 2, S(1, 1), 0, 0, V_PLAIN, OC_DT(MX_FLOAT32), 0),
    /* argsort (stable: integer inputs have many ties) */
    CASE("argsort", "last axis, radix rows", M_ARGSORT, 2, S(4, 37), -1, 0, V_PLAIN, ALL_DT, NC | NG),
    CASE("argsort", "axis 0, short rows", M_ARGSORT, 2, S(5, 7), 0, 0, V_PLAIN, ALL_DT, NC | NG),
    CASE("argsort", "middle axis", M_ARGSORT, 3, S(3, 300, 2), 1, 0, V_PLAIN, ALL_DT, NC | NG),
    CASE("argsort", "one long row", M_ARGSORT, 1, S(1000), 0, 0, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT64, MX_INT32, MX_BFLOAT16), NC | NG),
    CASE("argsort", "float ties (floor)", M_ARGSORT, 2, S(6, 100), -1, 0, V_FLOOR, OC_FLOATS, NC | NG),
    CASE("argsort", "NaNs last, stable", M_ARGSORT, 2, S(3, 60), -1, 0, V_NAN, OC_FLOATS, NC | NG),
    CASE("argsort", "0-size axis", M_ARGSORT, 2, S(3, 0), 1, 0, V_PLAIN, OC_F32_F64, NG),
    CASE("argsort", "size-1 axis", M_ARGSORT, 2, S(4, 1), 1, 0, V_PLAIN, OC_DT(MX_FLOAT32), NG),
    /* partition */
    CASE("partition", "last axis", M_PARTITION, 2, S(4, 37), -1, 5, V_PLAIN, ALL_DT, NC),
    CASE("partition", "middle axis", M_PARTITION, 3, S(3, 300, 2), 1, 150, V_PLAIN, ALL_DT, NC),
    CASE("partition", "axis 0, kth -1", M_PARTITION, 2, S(5, 7), 0, -1, V_PLAIN, ALL_DT, NC),
    CASE("partition", "long row, kth 0", M_PARTITION, 1, S(1000), 0, 0, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT64, MX_UINT8), NC),
    CASE("partition", "long row, kth 999", M_PARTITION, 1, S(1000), 0, 999, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_INT32), NC),
    CASE("partition", "float ties", M_PARTITION, 2, S(2, 500), -1, 250, V_FLOOR, OC_FLOATS, NC),
    CASE("partition", "NaNs", M_PARTITION, 2, S(3, 80), -1, 60, V_NAN, OC_F32_F64, NC),
    CASE("partition", "size-1 axis", M_PARTITION, 2, S(3, 1), 1, 0, V_PLAIN, OC_DT(MX_FLOAT32), 0),
    /* argpartition */
    CASE("argpartition", "values, last axis", M_ARGPART_VALUES, 2, S(4, 37), -1, 5, V_PLAIN, ALL_DT, NC | NG),
    CASE("argpartition", "values, middle axis", M_ARGPART_VALUES, 3, S(3, 300, 2), 1, 299, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32, MX_FLOAT16), NC | NG),
    CASE("argpartition", "values, NaNs", M_ARGPART_VALUES, 2, S(2, 90), -1, 45, V_NAN, OC_FLOATS, NC | NG),
    CASE("argpartition", "permutation, ties", M_ARGPART_PERM, 2, S(3, 400), -1, 200, V_PLAIN,
         OC_DT(MX_INT32, MX_UINT8, MX_BOOL, MX_FLOAT32), NC | NG),
    CASE("argpartition", "permutation, axis 0", M_ARGPART_PERM, 2, S(40, 3), 0, -3, V_PLAIN,
         OC_DT(MX_INT64, MX_FLOAT64), NC | NG),
    /* topk */
    CASE("topk", "k 5, last axis", M_TOPK, 2, S(4, 37), -1, 5, V_PLAIN, ALL_DT, NC),
    CASE("topk", "k 1, axis 0", M_TOPK, 2, S(5, 7), 0, 1, V_PLAIN, OC_FLOATS, NC),
    CASE("topk", "k 20, middle axis", M_TOPK, 3, S(3, 300, 2), 1, 20, V_PLAIN,
         OC_DT(MX_FLOAT32, MX_BFLOAT16, MX_INT32), NC),
    CASE("topk", "k = n", M_TOPK, 2, S(3, 7), -1, 7, V_PLAIN, OC_F32_F64, NC),
    CASE("topk", "k 0", M_TOPK, 2, S(3, 7), -1, 0, V_PLAIN, OC_F32_F64, 0),
    CASE("topk", "NaNs count as largest", M_TOPK, 2, S(2, 50), -1, 12, V_NAN, OC_F32_F64, NC),
};

const mx_opcase_table mx_opcases_sort = {cases, (int)(sizeof cases / sizeof *cases)};
