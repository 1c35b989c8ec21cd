/* optim_ops.c — the fused optimizer op adam_update (see optim_params.h). */
#include <string.h>

#include "optim_params.h"
#include "ops_internal.h"

static const mx__op_def def_ADAM_UPDATE = {.id = MX_OP_ADAM_UPDATE};

mx_array *mx__adam_update(const mx__adam_params *p, mx_array *a, mx_array *b, mx_array *c) {
  MX__CHECK_IN("adam_update", a);
  MX__CHECK_IN("adam_update", b);
  int n = p->which == MX__ADAM_P ? 3 : 2;
  if (n == 3) MX__CHECK_IN("adam_update", c);
  if (p->which < MX__ADAM_M || p->which > MX__ADAM_P)
    return mx__set_error(MX_ERR_INVALID_ARG, "adam_update: unknown form %d", p->which), NULL;
  mx_array *in[3] = {a, b, c};
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
  return mx__node_new(&def_ADAM_UPDATE, dt, a->shape, a->ndim, in, n, p, sizeof *p);
}
