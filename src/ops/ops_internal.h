/* ops_internal.h — helpers shared by the op families. */
#ifndef MXC_OPS_INTERNAL_H
#define MXC_OPS_INTERNAL_H

#include "array_impl.h"
#include "mxc/ops.h"
#include "mxc/random.h"

/* Ops are NULL-tolerant: a NULL input (a failed earlier op) makes the op
 * return NULL and keep the earlier error, so chains need one check. */
#define MX__CHECK_IN(op, ...)                                                  \
  do {                                                                         \
    mx_array *mx__ins[] = {__VA_ARGS__};                                       \
    for (size_t mx__i = 0; mx__i < sizeof mx__ins / sizeof *mx__ins; mx__i++)  \
      if (!mx__ins[mx__i]) {                                                   \
        if (!mx_last_status())                                                 \
          mx__set_error(MX_ERR_INVALID_ARG, "%s: input %zu is NULL", op, mx__i); \
        return NULL;                                                           \
      }                                                                        \
  } while (0)

/* Temporaries of a VJP or composite op, freed together. */
typedef struct {
  mx_array *v[48];
  int n;
} mx__tmp;
static inline mx_array *mx__keep(mx__tmp *t, mx_array *a) {
  MX_ASSERT(t->n < (int)(sizeof t->v / sizeof *t->v));
  if (a) t->v[t->n++] = a;
  return a;
}
static inline void mx__tmp_free(mx__tmp *t) {
  for (int i = 0; i < t->n; i++) mx_array_free(t->v[i]);
  t->n = 0;
}

/* NumPy broadcasting of two shapes; error names op and both shapes. */
int mx__broadcast_shapes(const char *op, const int64_t *a, int na, const int64_t *b, int nb,
                         int64_t *out, int *nout);
/* Sum g over broadcast dimensions so it has `shape` (VJPs of broadcasting ops). */
mx_array *mx__sum_to_shape(mx_array *g, const int64_t *shape, int ndim);
/* A 0-d array of value v with like's dtype. */
mx_array *mx__scalar_like(double v, mx_array *like);
/* Generic builders. */
mx_array *mx__unary(const mx__op_def *def, mx_array *a, mx_dtype out_dt);
/* Broadcast a and b, cast both to in_dt; output dtype out_dt. */
mx_array *mx__binary(const mx__op_def *def, mx_array *a, mx_array *b, mx_dtype in_dt,
                     mx_dtype out_dt);
/* Normalise and sort a list of axes; axes == NULL -> all. Writes a bitmask
 * of reduced axes. Errors name the op. */
int mx__axes_mask(const char *op, const int *axes, int naxes, int ndim, uint32_t *mask);
/* Inverse error function in float64 (used by CPU kernels too). */
double mx__erfinv(double x);
/* Reshape helper taking an explicit shape array. */
mx_array *mx__reshape_keep(mx_array *a, const int64_t *shape, int ndim);

#endif
