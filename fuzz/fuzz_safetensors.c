/* fuzz_safetensors.c — libFuzzer target: the safetensors parser.
 * Every input must load or fail with a status; arrays that load are read
 * back in full (touching every byte of every view). */
#include <stdint.h>
#include <stdlib.h>

#include "io/io_internal.h"

static void touch(mx_map *m) {
  for (int i = 0; i < mx_map_size(m); i++) {
    mx_array *a = mx_map_value(m, i);
    const uint8_t *p = mx_array_data(a);
    volatile uint8_t acc = 0;
    for (size_t k = 0; p && k < mx_array_nbytes(a); k++) acc ^= p[k];
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mx_map *m = NULL;
  mx_metadata *md = NULL;
  mx_load_options opt = {.format = MX_FORMAT_SAFETENSORS};
  if (mx_load_buffer(data, size, "fuzz.safetensors", &opt, &m, &md) == MX_OK) touch(m);
  mx_map_free(m);
  mx_metadata_free(md);
  return 0;
}
