/* shape_params.h — params of the shape ops (shared by builders and kernels). */
#ifndef MXC_SHAPE_PARAMS_H
#define MXC_SHAPE_PARAMS_H
#include "array_impl.h"

typedef struct {
  int perm[MX_MAX_NDIM];
} mx__transpose_params;

/* Normalised slice: first element index, step and length per axis. */
typedef struct {
  int64_t start[MX_MAX_NDIM];
  int64_t step[MX_MAX_NDIM];
  int64_t len[MX_MAX_NDIM];
} mx__slice_params;

typedef struct {
  int axis;
} mx__concat_params;

typedef struct {
  int64_t before[MX_MAX_NDIM];
  int64_t after[MX_MAX_NDIM];
  double value;
} mx__pad_params;

#endif
