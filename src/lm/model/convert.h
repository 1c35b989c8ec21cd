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
/* GGUF export: dtype MX_FLOAT32/16, MX_BFLOAT16, -1 (float32), or one of
 * llama.cpp's block quantizations below (2-D weights whose rows are a
 * multiple of 32 long; other weights float16, norms float32). Quantized
 * sources are dequantized first. */
enum { MX__GGUF_Q8_0 = 1000, MX__GGUF_Q4_0 = 1001 };
int mx__lm_export_gguf(const char *src, const char *file, int dtype);

#endif
