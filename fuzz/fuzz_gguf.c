/* fuzz_gguf.c — libFuzzer target: the GGUF parser (metadata of every type,
 * tensor infos, quantized-block conversion). The listing path runs too. */
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
  mx_load_options opt = {.format = MX_FORMAT_GGUF, .gguf_dequantize = size % 2};
  if (mx_load_buffer(data, size, "fuzz.gguf", &opt, &m, &md) == MX_OK) touch(m);
  mx_map_free(m);
  mx_metadata_free(md);
  /* the listing path (mxc inspect) */
  mx__mapping *mp = mx__mapping_from_memory(data, size, "fuzz.gguf");
  if (mp) {
    mx__sink s = {.list_only = true, .opt = &opt};
    mx__gguf_parse(mp, &s);
    mx_tensor_info_free(s.infos, s.ninfos);
    mx__mapping_release(mp);
  }
  return 0;
}
