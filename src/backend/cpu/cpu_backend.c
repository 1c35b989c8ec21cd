/* cpu_backend.c — the CPU backend's kernel table. */
#include <pthread.h>

#include "cpu.h"

mx__backend mx__cpu_backend = {.name = "cpu"};

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Every kernel family registers here. (Not weak symbols: with a static
 * libmxc the linker would not pull in the strong definitions.) */
static void init(void) {
  mx__kernel_fn *k = mx__cpu_backend.kernels;
  mx__cpu_register_elementwise(k);
  mx__cpu_register_shape(k);
  mx__cpu_register_reduce(k);
  mx__cpu_register_indexing(k);
  mx__cpu_register_linalg(k);
  mx__cpu_register_fast(k);
  mx__cpu_register_sort(k);
  mx__cpu_register_random(k);
  mx__cpu_register_quantized(k);
}

const mx__backend *mx__cpu_backend_init(void);
const mx__backend *mx__cpu_backend_init(void) {
  pthread_once(&once, init);
  return &mx__cpu_backend;
}
