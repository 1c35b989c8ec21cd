/* backend.c — the device -> backend table. */
#include "array_impl.h"

#ifdef MXC_WITH_CUDA
/* NULL when no usable GPU is present (see src/backend/cuda/). */
const mx__backend *mx__cuda_backend_init(void);
#endif

const mx__backend *mx__cpu_backend_init(void);

const mx__backend *mx__backend_get(int device) {
  if (device == MX_CPU) return mx__cpu_backend_init();
#ifdef MXC_WITH_CUDA
  if (device == MX_GPU) return mx__cuda_backend_init();
#endif
  return NULL;
}
