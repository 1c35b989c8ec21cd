/* cmd_convert.c — `mxc convert`: model conversion.
 *
 *   mxc convert --from-llama2c FILE.bin --mlx-path DST
 *
 * writes a Hugging Face-layout directory (config.json with model_type
 * llama, model.safetensors with HF names; q/k rows permuted to HF's
 * rotate-half RoPE). */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "mxc/lm.h"

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc convert --from-llama2c FILE.bin --mlx-path DST\n"
             "  --from-llama2c FILE.bin   a llama2.c checkpoint (legacy format)\n"
             "  --mlx-path DST            output directory (default mlx_model)\n"
             "(--hf-path and quantization (-q) are not available in this build yet)\n");
  return rc;
}

int mxc_cmd_convert(int argc, char **argv) {
  const char *bin = NULL, *dst = "mlx_model";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout, 0);
    if (!strcmp(argv[i], "--hf-path") || !strcmp(argv[i], "-q") ||
        !strcmp(argv[i], "--quantize") || !strcmp(argv[i], "--to-gguf")) {
      fprintf(stderr, "mxc convert: %s is not available in this build yet; "
                      "only --from-llama2c is\n", argv[i]);
      return 2;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc convert: %s needs a value (or is unknown)\n", argv[i]);
      return usage(stderr, 2);
    }
    if (!strcmp(argv[i], "--from-llama2c")) bin = argv[++i];
    else if (!strcmp(argv[i], "--mlx-path")) dst = argv[++i];
    else {
      fprintf(stderr, "mxc convert: unknown option %s\n", argv[i]);
      return usage(stderr, 2);
    }
  }
  if (!bin) return usage(stderr, 2);
  if (mx_lm_convert_llama2c(bin, dst)) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc convert: wrote %s (config.json, model.safetensors)\n", dst);
  return 0;
}
