/* sort_params.h — params of the sorting primitives (SORT, ARGSORT,
 * PARTITION, ARGPARTITION), shared by src/ops/sort.c and the kernels. */
#ifndef MXC_SORT_PARAMS_H
#define MXC_SORT_PARAMS_H
#include <stdint.h>

typedef struct {
  int axis;    /* normalised, 0 <= axis < ndim */
  int64_t kth; /* PARTITION/ARGPARTITION: normalised, 0 <= kth < shape[axis] */
} mx__sort_params;

#endif
