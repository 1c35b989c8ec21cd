/* load.c — mx_load: pick the format (extension, then magic bytes), map the
 * file, run its parser. */
#include "io/io_internal.h"

#include <string.h>
#include <strings.h>

int mx__safetensors_index_load(const char *path, const mx_load_options *opt, mx__sink *s);

const char *mx_file_format_name(mx_file_format f) {
  switch (f) {
    case MX_FORMAT_AUTO: return "auto";
    case MX_FORMAT_SAFETENSORS: return "safetensors";
    case MX_FORMAT_SAFETENSORS_INDEX: return "safetensors index";
    case MX_FORMAT_NPY: return "npy";
    case MX_FORMAT_NPZ: return "npz";
    case MX_FORMAT_GGUF: return "gguf";
  }
  return "unknown";
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcasecmp(s + n - k, suffix);
}

static mx_file_format format_from_ext(const char *path) {
  if (ends_with(path, ".safetensors")) return MX_FORMAT_SAFETENSORS;
  if (ends_with(path, ".json")) return MX_FORMAT_SAFETENSORS_INDEX;
  if (ends_with(path, ".npy")) return MX_FORMAT_NPY;
  if (ends_with(path, ".npz")) return MX_FORMAT_NPZ;
  if (ends_with(path, ".gguf")) return MX_FORMAT_GGUF;
  return MX_FORMAT_AUTO;
}

static mx_file_format format_from_magic(const uint8_t *p, size_t n) {
  if (n >= 6 && !memcmp(p, "\x93NUMPY", 6)) return MX_FORMAT_NPY;
  if (n >= 4 && !memcmp(p, "PK\x03\x04", 4)) return MX_FORMAT_NPZ;
  if (n >= 4 && !memcmp(p, "PK\x05\x06", 4)) return MX_FORMAT_NPZ; /* empty archive */
  if (n >= 4 && !memcmp(p, "GGUF", 4)) return MX_FORMAT_GGUF;
  if (n >= 9 && p[8] == '{' && mx__load_le(p, 8) <= n - 8) return MX_FORMAT_SAFETENSORS;
  return MX_FORMAT_AUTO;
}

int mx_file_format_of(const char *path, mx_file_format *out) {
  if (!path || !out) return mx__set_error(MX_ERR_INVALID_ARG, "file_format_of: NULL argument");
  mx_file_format f = format_from_ext(path);
  if (f == MX_FORMAT_AUTO) {
    mx__mapping *m = mx__mapping_open(path);
    if (!m) return mx_last_status();
    f = format_from_magic(m->data, m->size);
    mx__mapping_release(m);
    if (f == MX_FORMAT_AUTO)
      return MX__IOERR(MX_ERR_FORMAT, path, "unknown file format (expected .safetensors, .npy, "
                       ".npz, .gguf or a safetensors index .json)");
  }
  *out = f;
  return MX_OK;
}

static int run_parser(mx__mapping *m, mx_file_format f, mx__sink *s) {
  switch (f) {
    case MX_FORMAT_SAFETENSORS: return mx__safetensors_parse(m, s);
    case MX_FORMAT_NPY: return mx__npy_parse(m, s);
    case MX_FORMAT_NPZ: return mx__npz_parse(m, s);
    case MX_FORMAT_GGUF: return mx__gguf_parse(m, s);
    default:
      return MX__IOERR(MX_ERR_FORMAT, m->path, "unknown file format");
  }
}

/* Common driver: a file path or a mapping already made. */
static int load_common(const char *path, mx__mapping *given, const mx_load_options *opt,
                       mx__sink *s) {
  mx_file_format f = opt ? opt->format : MX_FORMAT_AUTO;
  if (f == MX_FORMAT_AUTO && path) f = format_from_ext(path);
  if (f == MX_FORMAT_SAFETENSORS_INDEX) {
    if (!path) return mx__set_error(MX_ERR_INVALID_ARG, "a safetensors index needs a path");
    return mx__safetensors_index_load(path, opt, s);
  }
  mx__mapping *m = given;
  if (!m) {
    m = mx__mapping_open(path);
    if (!m) return mx_last_status();
  } else {
    mx__mapping_retain(m);
  }
  if (f == MX_FORMAT_AUTO) f = format_from_magic(m->data, m->size);
  int st = f == MX_FORMAT_AUTO
               ? MX__IOERR(MX_ERR_FORMAT, m->path, "unknown file format (expected .safetensors, "
                           ".npy, .npz, .gguf or a safetensors index .json)")
               : run_parser(m, f, s);
  mx__mapping_release(m);
  return st;
}

static int load_to_map(const char *path, mx__mapping *given, const mx_load_options *opt,
                       mx_map **arrays, mx_metadata **metadata) {
  if (!arrays) return mx__set_error(MX_ERR_INVALID_ARG, "load: NULL output");
  *arrays = NULL;
  if (metadata) *metadata = NULL;
  mx__sink s = {.opt = opt};
  s.arrays = mx_map_new();
  s.metadata = metadata ? mx_metadata_new() : NULL;
  if (!s.arrays || (metadata && !s.metadata)) {
    mx_map_free(s.arrays);
    mx_metadata_free(s.metadata);
    return mx__set_error(MX_ERR_OOM, "load: out of memory");
  }
  int st = load_common(path, given, opt, &s);
  if (st) {
    mx_map_free(s.arrays);
    mx_metadata_free(s.metadata);
    return st;
  }
  *arrays = s.arrays;
  if (metadata) *metadata = s.metadata;
  return MX_OK;
}

int mx_load_ex(const char *path, const mx_load_options *opt, mx_map **arrays,
               mx_metadata **metadata) {
  if (!path) return mx__set_error(MX_ERR_INVALID_ARG, "load: NULL path");
  return load_to_map(path, NULL, opt, arrays, metadata);
}

int mx_load(const char *path, mx_map **arrays, mx_metadata **metadata) {
  return mx_load_ex(path, NULL, arrays, metadata);
}

int mx_load_buffer(const void *data, size_t size, const char *name, const mx_load_options *opt,
                   mx_map **arrays, mx_metadata **metadata) {
  if (!data && size) return mx__set_error(MX_ERR_INVALID_ARG, "load_buffer: NULL data");
  if (opt && opt->format == MX_FORMAT_SAFETENSORS_INDEX)
    return mx__set_error(MX_ERR_INVALID_ARG, "load_buffer: an index needs its shard files");
  mx__mapping *m = mx__mapping_from_memory(data, size, name ? name : "(buffer)");
  if (!m) return mx_last_status();
  int st = load_to_map(NULL, m, opt, arrays, metadata);
  mx__mapping_release(m);
  return st;
}

mx_array *mx_load_npy(const char *path) {
  mx_load_options opt = {.format = MX_FORMAT_NPY};
  mx_map *m = NULL;
  if (mx_load_ex(path, &opt, &m, NULL)) return NULL;
  mx_array *a = mx_array_retain(mx_map_value(m, 0));
  mx_map_free(m);
  return a;
}

int mx_load_info(const char *path, const mx_load_options *opt, mx_tensor_info **tensors,
                 int64_t *count, mx_metadata **metadata) {
  if (!path || !tensors || !count)
    return mx__set_error(MX_ERR_INVALID_ARG, "load_info: NULL argument");
  *tensors = NULL;
  *count = 0;
  if (metadata) *metadata = NULL;
  mx__sink s = {.opt = opt, .list_only = true};
  s.metadata = metadata ? mx_metadata_new() : NULL;
  if (metadata && !s.metadata) return mx_last_status();
  int st = load_common(path, NULL, opt, &s);
  if (st) {
    mx_tensor_info_free(s.infos, s.ninfos);
    mx_metadata_free(s.metadata);
    return st;
  }
  *tensors = s.infos;
  *count = s.ninfos;
  if (metadata) *metadata = s.metadata;
  return MX_OK;
}
