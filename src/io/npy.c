/* npy.c — NumPy's .npy format (versions 1.0, 2.0, 3.0).
 *
 * "\x93NUMPY" | major | minor | header length (u16 for 1.0, u32 after) |
 * a Python dict literal {'descr': '<f4', 'fortran_order': False,
 * 'shape': (2, 3), } padded with spaces and '\n' so the data starts at a
 * multiple of 64 | the elements.
 *
 * dtypes: |b1 |u1 <u4 <i4 <i8 <f2 <f4 <f8 map to mxc's; |i1 <i2 widen to
 * int32 and <u2 to uint32 (mxc has no 8/16-bit integers); '>' (big-endian)
 * data is byte-swapped; <V2 is bfloat16, as MLX writes it (NumPy has no
 * bfloat16 and reads it back as 2-byte void). */
#include "io/io_internal.h"

#include <string.h>

static const uint8_t NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

/* ---- header parsing ---------------------------------------------------------- */

typedef struct {
  const char *p, *end;
} lex;

static void skip_ws(lex *l) {
  while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\n' || *l->p == '\r'))
    l->p++;
}

static bool eat(lex *l, char c) {
  skip_ws(l);
  if (l->p < l->end && *l->p == c) {
    l->p++;
    return true;
  }
  return false;
}

/* A quoted Python string into out (truncated to n-1; false if malformed). */
static bool parse_str(lex *l, char *out, size_t n) {
  skip_ws(l);
  if (l->p >= l->end || (*l->p != '\'' && *l->p != '"')) return false;
  char q = *l->p++;
  size_t k = 0;
  while (l->p < l->end && *l->p != q) {
    if (*l->p == '\\') return false;
    if (k + 1 < n) out[k++] = *l->p;
    else return false;
    l->p++;
  }
  if (l->p >= l->end) return false;
  l->p++;
  out[k] = 0;
  return true;
}

static bool parse_word(lex *l, const char *w) {
  skip_ws(l);
  size_t n = strlen(w);
  if ((size_t)(l->end - l->p) >= n && !memcmp(l->p, w, n)) {
    l->p += n;
    return true;
  }
  return false;
}

static bool parse_uint(lex *l, int64_t *out) {
  skip_ws(l);
  if (l->p >= l->end || *l->p < '0' || *l->p > '9') return false;
  uint64_t v = 0;
  while (l->p < l->end && *l->p >= '0' && *l->p <= '9') {
    if (v > ((uint64_t)1 << 62) / 10) return false;
    v = v * 10 + (uint64_t)(*l->p - '0');
    l->p++;
  }
  if (l->p < l->end && *l->p == 'L') l->p++; /* Python 2 longs */
  *out = (int64_t)v;
  return true;
}

static int parse_descr(const char *d, const char *file, mx__npy_header *h) {
  snprintf(h->descr, sizeof h->descr, "%s", d);
  char order = d[0];
  if (order != '<' && order != '>' && order != '|' && order != '=')
    return MX__IOERR(MX_ERR_FORMAT, file, "unsupported npy dtype '%s'", d);
  char kind = d[1];
  int size = 0;
  for (const char *p = d + 2; *p; p++) {
    if (*p < '0' || *p > '9' || size > 100)
      return MX__IOERR(MX_ERR_FORMAT, file, "unsupported npy dtype '%s'", d);
    size = size * 10 + (*p - '0');
  }
  h->kind = kind;
  h->file_size = size;
  h->big_endian = order == '>' && size > 1;
  int dt = -1;
  switch (kind) {
    case 'b': dt = size == 1 ? MX_BOOL : -1; break;
    case 'u': dt = size == 1 ? MX_UINT8 : size == 2 || size == 4 ? MX_UINT32 : -1; break;
    case 'i': dt = size == 1 || size == 2 || size == 4 ? MX_INT32 : size == 8 ? MX_INT64 : -1; break;
    case 'f': dt = size == 2 ? MX_FLOAT16 : size == 4 ? MX_FLOAT32 : size == 8 ? MX_FLOAT64 : -1; break;
    case 'V': dt = size == 2 ? MX_BFLOAT16 : -1; break; /* MLX's bfloat16 */
    default: break;
  }
  if (dt < 0)
    return MX__IOERR(MX_ERR_DTYPE, file, "npy dtype '%s' is not supported by mxc", d);
  h->dtype = dt;
  return MX_OK;
}

int mx__npy_read_header(const uint8_t *p, size_t n, const char *file, mx__npy_header *h) {
  memset(h, 0, sizeof *h);
  if (n < 10 || memcmp(p, NPY_MAGIC, 6))
    return MX__IOERR(MX_ERR_FORMAT, file, n < 10 ? "truncated npy header" : "not a .npy file "
                     "(bad magic)");
  int major = p[6];
  size_t hlen, start;
  if (major == 1) {
    hlen = (size_t)mx__load_le(p + 8, 2);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) return MX__IOERR(MX_ERR_FORMAT, file, "truncated npy header");
    hlen = (size_t)mx__load_le(p + 8, 4);
    start = 12;
  } else {
    return MX__IOERR(MX_ERR_FORMAT, file, "unsupported npy version %d.%d", major, p[7]);
  }
  if (hlen > n - start)
    return MX__IOERR(MX_ERR_FORMAT, file, "npy header length %zu is past the end (%zu bytes)",
                     hlen, n);
  lex l = {(const char *)p + start, (const char *)p + start + hlen};
  bool have_descr = false, have_order = false, have_shape = false;
  if (!eat(&l, '{')) return MX__IOERR(MX_ERR_FORMAT, file, "npy header is not a dict");
  for (;;) {
    if (eat(&l, '}')) break;
    char key[32];
    if (!parse_str(&l, key, sizeof key) || !eat(&l, ':'))
      return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy header");
    if (!strcmp(key, "descr") && !have_descr) {
      char d[16];
      skip_ws(&l);
      if (l.p < l.end && *l.p == '[')
        return MX__IOERR(MX_ERR_DTYPE, file, "structured npy dtypes are not supported");
      if (!parse_str(&l, d, sizeof d) || strlen(d) < 3)
        return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy descr");
      int st = parse_descr(d, file, h);
      if (st) return st;
      have_descr = true;
    } else if (!strcmp(key, "fortran_order") && !have_order) {
      if (parse_word(&l, "True")) h->fortran = true;
      else if (parse_word(&l, "False")) h->fortran = false;
      else return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy fortran_order");
      have_order = true;
    } else if (!strcmp(key, "shape") && !have_shape) {
      if (!eat(&l, '(')) return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy shape");
      for (;;) {
        if (eat(&l, ')')) break;
        if (h->ndim == MX_MAX_NDIM)
          return MX__IOERR(MX_ERR_FORMAT, file, "npy shape has more than %d dimensions",
                           MX_MAX_NDIM);
        if (!parse_uint(&l, &h->shape[h->ndim]))
          return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy shape");
        h->ndim++;
        if (!eat(&l, ',')) {
          if (!eat(&l, ')')) return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy shape");
          break;
        }
      }
      have_shape = true;
    } else {
      return MX__IOERR(MX_ERR_FORMAT, file, "unexpected or repeated npy header key '%s'", key);
    }
    if (!eat(&l, ',')) {
      if (!eat(&l, '}')) return MX__IOERR(MX_ERR_FORMAT, file, "malformed npy header");
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape)
    return MX__IOERR(MX_ERR_FORMAT, file, "npy header lacks descr, fortran_order or shape");
  uint64_t nbytes;
  if (!mx__dims_product(h->shape, h->ndim, &h->count) ||
      !mx__mul_ok(h->count, (uint64_t)h->file_size, &nbytes))
    return MX__IOERR(MX_ERR_FORMAT, file, "npy shape's dimension product overflows");
  h->data_offset = start + hlen;
  if (nbytes > n - h->data_offset)
    return MX__IOERR(MX_ERR_FORMAT, file,
                     "truncated npy data: %llu bytes expected for shape and dtype '%s', %zu "
                     "present",
                     (unsigned long long)nbytes, h->descr, n - h->data_offset);
  return MX_OK;
}

/* ---- arrays ---------------------------------------------------------------------- */

static void heap_free_cb(void *data, void *ctx) {
  MX_UNUSED(ctx);
  free(data);
}

static void fortran_strides(const mx__npy_header *h, int64_t *strides) {
  int64_t s = 1;
  for (int i = 0; i < h->ndim; i++) {
    strides[i] = s;
    s *= h->shape[i] ? h->shape[i] : 1;
  }
}

mx_array *mx__npy_make_array(const mx__npy_header *h, const uint8_t *p, size_t n,
                             mx__mapping *m, size_t base_offset, const char *file, bool copy) {
  MX_UNUSED(n);
  int64_t fstr[MX_MAX_NDIM];
  const int64_t *strides = NULL;
  if (h->fortran && h->ndim > 1) {
    fortran_strides(h, fstr);
    strides = fstr;
  }
  const uint8_t *src = p + h->data_offset;
  size_t out_es = mx_dtype_size(h->dtype);
  bool convert = h->big_endian || (size_t)h->file_size != out_es;
  if (!convert && m) {
    return mx__mapping_view(m, base_offset + h->data_offset, h->dtype, h->shape, h->ndim,
                            strides, copy);
  }
  size_t nbytes = (size_t)h->count * out_es;
  uint8_t *block = malloc(nbytes ? nbytes : 1);
  if (!block) {
    MX__IOERR(MX_ERR_OOM, file, "out of memory (%zu bytes)", nbytes);
    return NULL;
  }
  if (!convert) {
    if (nbytes) memcpy(block, src, nbytes);
  } else {
    int fs = h->file_size;
    for (uint64_t i = 0; i < h->count; i++) {
      const uint8_t *e = src + i * (uint64_t)fs;
      uint64_t raw = 0;
      if (h->big_endian)
        for (int k = 0; k < fs; k++) raw = (raw << 8) | e[k];
      else
        raw = mx__load_le(e, fs);
      if ((size_t)fs == out_es) {
        mx__store_le(block + i * out_es, raw, fs);
      } else { /* widen i1/i2/u2 to 32 bits */
        int64_t v = (int64_t)raw;
        if (h->kind == 'i' && fs == 1) v = (int8_t)raw;
        if (h->kind == 'i' && fs == 2) v = (int16_t)raw;
        mx__store_le(block + i * out_es, (uint64_t)v, (int)out_es);
      }
    }
  }
  mx_array *a = mx_array_from_data_strided(block, h->shape, strides, h->ndim, h->dtype,
                                           heap_free_cb, NULL);
  if (!a) free(block);
  return a;
}

int mx__npy_parse(mx__mapping *m, mx__sink *s) {
  mx__npy_header h;
  int st = mx__npy_read_header(m->data, m->size, m->path, &h);
  if (st) return st;
  if (s->list_only)
    return mx__sink_info(s, "arr_0", h.descr, h.dtype, h.shape, h.ndim, h.data_offset,
                         h.count * (uint64_t)h.file_size);
  mx_array *a = mx__npy_make_array(&h, m->data, m->size, m, 0, m->path, s->opt && s->opt->copy);
  return mx__sink_array(s, m->path, "arr_0", a);
}

/* ---- writing ---------------------------------------------------------------------- */

static const char *npy_descr(mx_dtype dt) {
  switch (dt) {
    case MX_BOOL: return "|b1";
    case MX_UINT8: return "|u1";
    case MX_UINT32: return "<u4";
    case MX_INT32: return "<i4";
    case MX_INT64: return "<i8";
    case MX_FLOAT16: return "<f2";
    case MX_BFLOAT16: return "<V2";
    case MX_FLOAT32: return "<f4";
    case MX_FLOAT64: return "<f8";
    default: return NULL;
  }
}

int mx__npy_header_for(mx_array *a, uint8_t **hdr, size_t *hdr_len) {
  const char *d = npy_descr(mx_array_dtype(a));
  if (!d) return mx__set_error(MX_ERR_DTYPE, "npy: dtype %s cannot be saved",
                               mx_dtype_name(mx_array_dtype(a)));
  char dict[512];
  int k = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", d);
  int nd = mx_array_ndim(a);
  for (int i = 0; i < nd; i++)
    k += snprintf(dict + k, sizeof dict - (size_t)k, "%lld,%s", (long long)mx_array_shape(a)[i],
                  i + 1 < nd ? " " : "");
  if (nd > 1) k--; /* "(2, 3)" not "(2, 3,)"; a 1-tuple keeps its comma */
  k += snprintf(dict + k, sizeof dict - (size_t)k, "), }");
  /* magic(6) + version(2) + len(2) + dict + pad + '\n' = multiple of 64 */
  size_t total = 10 + (size_t)k + 1;
  size_t padded = (total + 63) / 64 * 64;
  uint8_t *b = malloc(padded);
  if (!b) return mx__set_error(MX_ERR_OOM, "npy: out of memory");
  memcpy(b, NPY_MAGIC, 6);
  b[6] = 1;
  b[7] = 0;
  mx__store_le(b + 8, padded - 10, 2);
  memcpy(b + 10, dict, (size_t)k);
  memset(b + 10 + k, ' ', padded - 10 - (size_t)k - 1);
  b[padded - 1] = '\n';
  *hdr = b;
  *hdr_len = padded;
  return MX_OK;
}

int mx_save_npy(const char *path, mx_array *a) {
  if (!path || !a) return mx__set_error(MX_ERR_INVALID_ARG, "save_npy: NULL argument");
  uint8_t *hdr;
  size_t hlen;
  int st = mx__npy_header_for(a, &hdr, &hlen);
  if (st) return mx__prefix_error("%s", path);
  const void *data = mx_array_nbytes(a) ? mx_array_data(a) : NULL;
  if (mx_array_nbytes(a) && !data) {
    free(hdr);
    return mx__prefix_error("%s", path);
  }
  mx__writer w;
  if ((st = mx__writer_open(&w, path)) != MX_OK) {
    free(hdr);
    return st;
  }
  mx__writer_write(&w, hdr, hlen);
  if (data) mx__writer_write(&w, data, mx_array_nbytes(a));
  free(hdr);
  return mx__writer_close(&w, MX_OK);
}
