/* cmd_inspect.c — `mxc inspect FILE`: the metadata and every tensor (name,
 * dtype, shape, bytes) of a safetensors / index.json / npy / npz / gguf
 * file, listed without loading or converting any data. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "mxc/io.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mxc inspect [--all] FILE\n\n"
          "Prints the format, the metadata and, for every tensor, its name, dtype (as the\n"
          "file stores it, then the dtype it loads as), shape and size in bytes.\n"
          "Formats: .safetensors, model.safetensors.index.json, .npy, .npz, .gguf.\n"
          "  --all   print metadata arrays in full (default: the first 8 items)\n"
          "Exit status: 0 on success, 1 when the file cannot be read or is malformed.\n");
}

int mxc_cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  size_t max_items = 8;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--all")) {
      max_items = SIZE_MAX;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "mxc inspect: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    } else if (path) {
      fprintf(stderr, "mxc inspect: one FILE only\n");
      return 2;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    usage(stderr);
    return 2;
  }
  mx_file_format fmt;
  mx_tensor_info *ts = NULL;
  int64_t n = 0;
  mx_metadata *meta = NULL;
  if (mx_file_format_of(path, &fmt) != MX_OK ||
      mx_load_info(path, &(mx_load_options){.format = fmt}, &ts, &n, &meta) != MX_OK) {
    fprintf(stderr, "mxc inspect: %s\n", mx_last_error());
    return 1;
  }
  printf("file: %s\nformat: %s\n", path, mx_file_format_name(fmt));
  int64_t nm = mx_metadata_size(meta);
  printf("metadata: %" PRId64 " entr%s\n", nm, nm == 1 ? "y" : "ies");
  for (int64_t i = 0; i < nm; i++) {
    const mx_meta_value *v = mx_metadata_value(meta, i);
    printf("  %s (%s", mx_metadata_key(meta, i), mx_meta_type_name(v->type));
    if (v->type == MX_META_ARRAY) printf(" of %s", mx_meta_type_name(v->v.arr.type));
    printf(") = ");
    mx_meta_value_print(v, stdout, max_items);
    printf("\n");
  }
  uint64_t total = 0;
  int name_w = 4;
  for (int64_t i = 0; i < n; i++) {
    int len = (int)strlen(ts[i].name);
    if (len > name_w) name_w = len > 60 ? 60 : len;
  }
  printf("tensors: %" PRId64 "\n", n);
  if (n) printf("  %-*s  %-8s %-10s %-24s %s\n", name_w, "name", "dtype", "loads as", "shape",
                "bytes");
  for (int64_t i = 0; i < n; i++) {
    char shape[256];
    int k = snprintf(shape, sizeof shape, "[");
    for (int d = 0; d < ts[i].ndim; d++)
      k += snprintf(shape + k, sizeof shape - (size_t)k, "%s%" PRId64, d ? ", " : "",
                    ts[i].shape[d]);
    snprintf(shape + k, sizeof shape - (size_t)k, "]");
    const char *as = ts[i].dtype >= 0 ? mx_dtype_name((mx_dtype)ts[i].dtype) : "quantized";
    printf("  %-*s  %-8s %-10s %-24s %" PRIu64 "\n", name_w, ts[i].name, ts[i].file_dtype, as,
           shape, ts[i].nbytes);
    total += ts[i].nbytes;
  }
  printf("total: %" PRIu64 " bytes in %" PRId64 " tensor%s\n", total, n, n == 1 ? "" : "s");
  mx_tensor_info_free(ts, n);
  mx_metadata_free(meta);
  return 0;
}
