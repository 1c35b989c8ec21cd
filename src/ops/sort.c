/* sort.c — sort, argsort, partition, argpartition (primitives) and topk
 * (a partition followed by a slice, as MLX).
 *
 * Order: NumPy's. Floats compare by value with NaNs last (-0.0 == 0.0);
 * argsort is stable (equal elements keep their input order). partition
 * puts the kth element in its sorted place, everything before it <= and
 * everything after it >=; the order inside each side is deterministic (the
 * same for every run and thread count) but unspecified. partition and
 * argpartition of the same input make the same permutation.
 *
 * VJPs: sort and partition route the cotangent back through the
 * permutation (argsort/argpartition + put_along_axis), so the gradient of
 * an element is the cotangent at the place it moved to. argsort and
 * argpartition carry no gradient. */
#include <string.h>

#include "ops_internal.h"
#include "sort_params.h"

/* ---- VJPs ------------------------------------------------------------------ */
/* g = zeros_like(x) with g[..., perm[j], ...] = cot[..., j, ...] along axis. */
static int scatter_back(mx_array *out, mx_array *cot, mx_array **g, mx_array *perm) {
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  mx__tmp t = {0};
  mx_array *zeros = mx__keep(&t, mx_zeros_like(out->inputs[0]));
  mx_array *c = mx__keep(&t, mx_astype(cot, out->inputs[0]->dtype));
  *g = mx_put_along_axis(zeros, perm, c, p->axis);
  mx__tmp_free(&t);
  mx_array_free(perm);
  return *g ? MX_OK : mx_last_status();
}

static int vjp_sort(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  if (!need[0]) return MX_OK;
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  mx_array *perm = mx_argsort(out->inputs[0], p->axis);
  if (!perm) return mx_last_status();
  return scatter_back(out, cot, g, perm);
}

static int vjp_partition(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  if (!need[0]) return MX_OK;
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  mx_array *perm = mx_argpartition(out->inputs[0], (int)p->kth, p->axis);
  if (!perm) return mx_last_status();
  return scatter_back(out, cot, g, perm);
}

static int vjp_zero(mx_array *out, mx_array *cot, mx_array **g, const bool *need) {
  MX_UNUSED(cot);
  if (!need[0]) return MX_OK;
  g[0] = mx_zeros_like(out->inputs[0]);
  return g[0] ? MX_OK : mx_last_status();
}

static const mx__op_def def_SORT = {.id = MX_OP_SORT, .vjp = vjp_sort};
static const mx__op_def def_ARGSORT = {.id = MX_OP_ARGSORT, .vjp = vjp_zero, .zero_grad = true};
static const mx__op_def def_PARTITION = {.id = MX_OP_PARTITION, .vjp = vjp_partition};
static const mx__op_def def_ARGPARTITION = {.id = MX_OP_ARGPARTITION, .vjp = vjp_zero,
                                            .zero_grad = true};

/* ---- builders ---------------------------------------------------------------- */
/* Checks the axis (and kth when has_kth) and fills p; errors name op. */
static int sort_args(const char *op, mx_array *a, int axis, bool has_kth, int kth,
                     mx__sort_params *p) {
  char s[256];
  if (a->ndim == 0)
    return mx__set_error(MX_ERR_SHAPE, "%s: needs an array with at least one dimension, got %s",
                         op, mx__shape_str(a->shape, a->ndim, s, sizeof s));
  int ax;
  if (mx__norm_axis(op, axis, a->ndim, &ax)) return mx_last_status();
  int64_t n = a->shape[ax];
  if (n > (int64_t)UINT32_MAX)
    return mx__set_error(MX_ERR_SHAPE,
                         "%s: axis %d of %s is longer than uint32 indices can address", op,
                         axis, mx__shape_str(a->shape, a->ndim, s, sizeof s));
  p->axis = ax;
  p->kth = 0;
  if (has_kth) {
    int64_t k = kth < 0 ? kth + n : kth;
    if (k < 0 || k >= n)
      return mx__set_error(MX_ERR_INVALID_ARG, "%s: kth %d is out of range for axis %d of %s",
                           op, kth, axis, mx__shape_str(a->shape, a->ndim, s, sizeof s));
    p->kth = k;
  }
  return MX_OK;
}

static mx_array *build(const mx__op_def *def, const char *op, mx_array *a, int axis,
                       bool has_kth, int kth, bool indices) {
  MX__CHECK_IN(op, a);
  mx__sort_params p = {0};
  if (sort_args(op, a, axis, has_kth, kth, &p)) return NULL;
  return mx__node_new(def, indices ? MX_UINT32 : a->dtype, a->shape, a->ndim, &a, 1, &p,
                      sizeof p);
}

mx_array *mx_sort(mx_array *a, int axis) {
  return build(&def_SORT, "sort", a, axis, false, 0, false);
}
mx_array *mx_argsort(mx_array *a, int axis) {
  return build(&def_ARGSORT, "argsort", a, axis, false, 0, true);
}
mx_array *mx_partition(mx_array *a, int kth, int axis) {
  return build(&def_PARTITION, "partition", a, axis, true, kth, false);
}
mx_array *mx_argpartition(mx_array *a, int kth, int axis) {
  return build(&def_ARGPARTITION, "argpartition", a, axis, true, kth, true);
}

/* The k largest along axis, as MLX: partition at -k and keep the last k
 * (in partition order, not sorted); k == size returns a itself. */
mx_array *mx_topk(mx_array *a, int k, int axis) {
  MX__CHECK_IN("topk", a);
  mx__sort_params p = {0};
  if (sort_args("topk", a, axis, false, 0, &p)) return NULL;
  int64_t n = a->shape[p.axis];
  if (k < 0 || k > n) {
    char s[256];
    mx__set_error(MX_ERR_INVALID_ARG, "topk: k = %d is out of range for axis %d of %s", k, axis,
                  mx__shape_str(a->shape, a->ndim, s, sizeof s));
    return NULL;
  }
  if (k == n) return mx_array_retain(a);
  if (k == 0) return mx_slice_axis(a, p.axis, n, n, 1);
  mx_array *part = mx_partition(a, -k, p.axis);
  mx_array *r = mx_slice_axis(part, p.axis, n - k, n, 1);
  mx_array_free(part);
  return r;
}
