/* fuzz_npz.c — libFuzzer target: the .npz (zip) and .npy parsers. The first
 * byte picks the parser (even: npz, odd: npy); the rest is the file. CRC
 * checks are skipped so the fuzzer can reach the members' .npy headers. */
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
  if (!size) return 0;
  mx__io_fuzzing = true;
  mx_map *m = NULL;
  mx_load_options opt = {.format = (data[0] & 1) ? MX_FORMAT_NPY : MX_FORMAT_NPZ};
  if (mx_load_buffer(data + 1, size - 1, "fuzz.npz", &opt, &m, NULL) == MX_OK) touch(m);
  mx_map_free(m);
  return 0;
}
