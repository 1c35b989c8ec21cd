/* optim_ops.c — the fused optimizer op adam_update (see optim_params.h). */
#include <string.h>

#include "optim_params.h"
#include "ops_internal.h"

static const mx__op_def def_ADAM_UPDATE = {.id = MX_OP_ADAM_UPDATE};

mx_array *mx__adam_update(const mx__adam_params *p, mx_array *a, mx_array *b, mx_array *c,
                          mx_array *d) {
  if (p->which < MX__ADAM_M || p->which > MX__ADAM_ALL)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: unknown form %d", p->which), NULL;
  int n = p->which == MX__ADAM_ALL ? 4 : p->which == MX__ADAM_P ? 3 : 2;
  mx_array *in[4] = {a, b, c, d};
  for (int i = 0; i < n; i++) MX__CHECK_IN("adam_update", in[i]);
  mx_dtype dt = a->dtype;
  if (dt != MX_FLOAT32 && dt != MX_FLOAT64)
    return mx__set_error(MX_ERR_DTYPE, "adam_update: float32 or float64 needed, not %s",
                         mx_dtype_name(dt)), NULL;
  for (int i = 1; i < n; i++) {
    if (in[i]->dtype != dt)
      return mx__set_error(MX_ERR_DTYPE, "adam_update: input %d is %s, not %s", i,
                           mx_dtype_name(in[i]->dtype), mx_dtype_name(dt)), NULL;
    if (in[i]->ndim != a->ndim ||
        memcmp(in[i]->shape, a->shape, sizeof(int64_t) * (size_t)a->ndim)) {
      char s1[96], s2[96];
      return mx__set_error(MX_ERR_SHAPE, "adam_update: input %d of shape %s, not %s", i,
                           mx__shape_str(in[i]->shape, in[i]->ndim, s1, sizeof s1),
                           mx__shape_str(a->shape, a->ndim, s2, sizeof s2)), NULL;
    }
  }
  if (p->which != MX__ADAM_ALL)
    return mx__node_new(&def_ADAM_UPDATE, dt, a->shape, a->ndim, in, n, p, sizeof *p);
  if (a->ndim + 1 > MX_MAX_NDIM)
    return mx__set_error(MX_ERR_SHAPE, "adam_update: %d axes leave no room for the packed "
                         "axis", a->ndim), NULL;
  int64_t shape[MX_MAX_NDIM];
  shape[0] = 3;
  memcpy(shape + 1, a->shape, sizeof(int64_t) * (size_t)a->ndim);
  return mx__node_new(&def_ADAM_UPDATE, dt, shape, a->ndim + 1, in, n, p, sizeof *p);
}
