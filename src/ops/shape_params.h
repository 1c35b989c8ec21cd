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

/* store_at (internal, see mx__store_at): inputs dst, src [, pos]. */
typedef struct {
  int axis;
  bool has_pos;
} mx__store_at_params;

/* Writes src into dst's own buffer, in place, at position pos[0] (int32,
 * one element, read when the kernel runs; 0 without pos) along `axis`: the
 * result is dst's buffer with dst's shape. Breaks the rule that buffers are
 * immutable, so only for buffers a caller owns alone and reads only through
 * the result: the static KV cache, token and position of a decode step
 * replayed from a captured GPU graph. dst must be evaluated and row-
 * contiguous, src of dst's dtype and shape except along axis; rows that
 * would land past the end of the axis are dropped. Not differentiable. */
mx_array *mx__store_at(mx_array *dst, mx_array *src, mx_array *pos, int axis);

#endif
