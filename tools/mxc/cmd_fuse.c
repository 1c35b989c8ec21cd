/* cmd_fuse.c — `mxc fuse`: merge LoRA adapters into a model (mlx_lm.fuse).
 *
 *   mxc fuse --model M --adapter-path A --save-path OUT [--dequantize]
 *
 * OUT is a Hugging Face-layout model directory (config.json,
 * model.safetensors, tokenizer files) that `mxc generate` and transformers
 * load. --dequantize (mlx-lm's --dequantize / --de-quantize) writes a float
 * model from a quantized base. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "mxc/lora.h"

int mxc__resolve_model(const char *model, char *dir, size_t n);

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc fuse --model M [--adapter-path adapters] [--save-path fused_model]\n"
             "                [--dequantize]\n");
  return rc;
}

int mxc_cmd_fuse(int argc, char **argv) {
  const char *model = NULL, *adapters = "adapters", *save = "fused_model";
  bool dequantize = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "--dequantize") || !strcmp(a, "--de-quantize")) {
      dequantize = true;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc fuse: %s needs a value (or is unknown)\n", a);
      return usage(stderr, 2);
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--adapter-path")) adapters = v;
    else if (!strcmp(a, "--save-path")) save = v;
    else {
      fprintf(stderr, "mxc fuse: unknown option '%s'\n", a);
      return usage(stderr, 2);
    }
  }
  if (!model) {
    fprintf(stderr, "mxc fuse: --model is required\n");
    return usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  if (mx_lora_fuse_dir_ex(dir, adapters, save, dequantize)) {
    fprintf(stderr, "mxc fuse: %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc fuse: wrote %s\n", save);
  return 0;
}
