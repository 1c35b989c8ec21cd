/* indexing_params.h — params of the indexing ops (shared by builders and
 * kernels). */
#ifndef MXC_INDEXING_PARAMS_H
#define MXC_INDEXING_PARAMS_H

#include <stdint.h>

/* take, take_along_axis, put_along_axis, scatter_add_axis: the (normalised)
 * axis of the source/destination array the indices select along. */
typedef struct {
  int axis;
} mx__index_params;

/* Index normalisation shared by every indexing kernel (and every backend):
 * negative indices count from the end, then out-of-range indices are
 * clamped to [0, dim - 1] (MLX's gather semantics). dim > 0. */
static inline int64_t mx__norm_index(int64_t i, int64_t dim) {
  if (i < 0) i += dim;
  return i < 0 ? 0 : i >= dim ? dim - 1 : i;
}

#endif
