/* cmd_convert.c — `mxc convert`: model conversion.
 *
 *   mxc convert --hf-path SRC --mlx-path DST [-q --q-bits B --q-group-size G]
 *               [--dtype bf16|f16|f32] [-d]
 *   mxc convert --hf-path SRC --to-gguf FILE.gguf [--dtype f32|f16|bf16|q8_0|q4_0]
 *   mxc convert --from-llama2c FILE.bin --mlx-path DST
 *
 * --hf-path: an HF/MLX model directory or Hub id to an MLX directory
 * (as mlx_lm.convert); --to-gguf: a llama-arch GGUF for llama.cpp;
 * --from-llama2c: Karpathy's llama2.c checkpoints (HF layout). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lm/model/convert.h"
#include "mxc/lm.h"

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc convert --hf-path SRC [--mlx-path DST] [-q [--q-bits B] "
          "[--q-group-size G]]\n"
          "                   [--dtype bf16|f16|f32] [-d]\n"
          "       mxc convert --hf-path SRC --to-gguf FILE.gguf "
          "[--dtype f32|f16|bf16|q8_0|q4_0]\n"
          "       mxc convert --from-llama2c FILE.bin [--mlx-path DST]\n"
          "  --hf-path SRC         model directory or Hugging Face Hub id (org/name)\n"
          "  --mlx-path DST        output directory (default mlx_model)\n"
          "  -q, --quantize        quantize (affine, as mlx_lm.convert)\n"
          "  --q-bits B            bits per weight: 2, 3, 4, 5, 6, 8 (default 4)\n"
          "  --q-group-size G      group size: 32, 64, 128 (default 64)\n"
          "  --dtype T             cast floating weights: bf16, f16, f32 (default: keep)\n"
          "  -d, --dequantize      dequantize a quantized model\n"
          "  --to-gguf FILE        export a llama-arch GGUF (F32 unless --dtype; q8_0 and\n"
          "                        q4_0 write llama.cpp's Q8_0 / Q4_0 blocks)\n"
          "  --from-llama2c FILE   a llama2.c checkpoint (legacy format)\n");
  return rc;
}

static int parse_dtype(const char *s) {
  if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) return MX_BFLOAT16;
  if (!strcmp(s, "f16") || !strcmp(s, "float16")) return MX_FLOAT16;
  if (!strcmp(s, "f32") || !strcmp(s, "float32")) return MX_FLOAT32;
  if (!strcmp(s, "q8_0") || !strcmp(s, "Q8_0")) return MX__GGUF_Q8_0; /* --to-gguf only */
  if (!strcmp(s, "q4_0") || !strcmp(s, "Q4_0")) return MX__GGUF_Q4_0;
  return -2;
}

static int parse_int(const char *s, int *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < 1 || v > 1024) return -1;
  *out = (int)v;
  return 0;
}

int mxc_cmd_convert(int argc, char **argv) {
  const char *bin = NULL, *dst = "mlx_model", *hf = NULL, *gguf = NULL;
  mx__lm_convert_opts o = {.dtype = -1, .group_size = 64, .bits = 4};
  bool dst_given = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "-q") || !strcmp(a, "--quantize")) {
      o.quantize = true;
      continue;
    }
    if (!strcmp(a, "-d") || !strcmp(a, "--dequantize")) {
      o.dequantize = true;
      continue;
    }
    bool known = !strcmp(a, "--from-llama2c") || !strcmp(a, "--mlx-path") ||
                 !strcmp(a, "--hf-path") || !strcmp(a, "--to-gguf") || !strcmp(a, "--dtype") ||
                 !strcmp(a, "--q-bits") || !strcmp(a, "--q-group-size");
    if (!known) {
      fprintf(stderr, "mxc convert: unknown option %s\n", a);
      return usage(stderr, 2);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc convert: %s needs a value\n", a);
      return usage(stderr, 2);
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--from-llama2c")) bin = v;
    else if (!strcmp(a, "--mlx-path")) dst = v, dst_given = true;
    else if (!strcmp(a, "--hf-path")) hf = v;
    else if (!strcmp(a, "--to-gguf")) gguf = v;
    else if (!strcmp(a, "--dtype")) {
      if ((o.dtype = parse_dtype(v)) == -2) {
        fprintf(stderr, "mxc convert: --dtype %s: expected bf16, f16, f32 (or, with "
                "--to-gguf, q8_0 or q4_0)\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--q-bits")) {
      if (parse_int(v, &o.bits)) {
        fprintf(stderr, "mxc convert: --q-bits %s: expected 2, 3, 4, 5, 6 or 8\n", v);
        return 2;
      }
    } else if (parse_int(v, &o.group_size)) {
      fprintf(stderr, "mxc convert: --q-group-size %s: expected 32, 64 or 128\n", v);
      return 2;
    }
  }
  if (bin && hf) {
    fprintf(stderr, "mxc convert: give either --hf-path or --from-llama2c, not both\n");
    return 2;
  }
  if (bin) {
    if (mx_lm_convert_llama2c(bin, dst)) {
      fprintf(stderr, "mxc: %s\n", mx_last_error());
      return 1;
    }
    fprintf(stderr, "mxc convert: wrote %s (config.json, model.safetensors)\n", dst);
    return 0;
  }
  if (!hf) {
    fprintf(stderr, "mxc convert: --hf-path or --from-llama2c is required\n");
    return usage(stderr, 2);
  }
  if (gguf) {
    if (o.quantize || o.dequantize || dst_given) {
      fprintf(stderr, "mxc convert: --to-gguf takes only --hf-path and --dtype\n");
      return 2;
    }
    if (mx__lm_export_gguf(hf, gguf, o.dtype)) {
      fprintf(stderr, "mxc: %s\n", mx_last_error());
      return 1;
    }
    fprintf(stderr, "mxc convert: wrote %s\n", gguf);
    return 0;
  }
  if (o.dtype == MX__GGUF_Q8_0 || o.dtype == MX__GGUF_Q4_0) {
    fprintf(stderr, "mxc convert: --dtype q8_0/q4_0 is for --to-gguf (use -q for MLX "
                    "quantization)\n");
    return 2;
  }
  o.src = hf;
  o.dst = dst;
  if (mx__lm_convert(&o)) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc convert: wrote %s%s\n", dst,
          o.quantize ? " (quantized)" : o.dequantize ? " (dequantized)" : "");
  return 0;
}
