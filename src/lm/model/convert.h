/* convert.h — the model conversions behind `mxc convert` (convert.c);
 * self-contained so the CLI can include it. */
#ifndef MXC_LM_CONVERT_H
#define MXC_LM_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "mxc/lm.h"

/* convert.c: `mxc convert --hf-path` (an HF/MLX directory or Hub id to an
 * MLX directory) and the llama-arch GGUF export. dtype: an mx_dtype, or -1
 * to keep the weights' dtypes (GGUF: -1 means float32). */
typedef struct {
  const char *src, *dst;
  int dtype;
  bool quantize, dequantize;
  int group_size, bits;
  int64_t shard_bytes; /* <= 0: 5 GiB, as mlx-lm */
} mx__lm_convert_opts;
int mx__lm_convert(const mx__lm_convert_opts *o);
int mx__lm_export_gguf(const char *src, const char *file, int dtype);

#endif
