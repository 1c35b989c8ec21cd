/* common.c — what every format shares: error messages naming the file, the
 * reference-counted file mapping and views into it, checked arithmetic,
 * UTF-8 validation, a string hash set, metadata, and the atomic writer. */
#include "io/io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

bool mx__io_fuzzing;

/* ---- errors ------------------------------------------------------------------ */

int mx__io_error(int status, const char *file, const char *fmt, ...) {
  char msg[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return mx__set_error(status, "%s: %s", file ? file : "(memory)", msg);
}

/* ---- mapping ------------------------------------------------------------------ */

static const uint8_t empty_bytes[8];

static mx__mapping *mapping_alloc(const char *name) {
  mx__mapping *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->path = strdup(name ? name : "(memory)");
  if (!m->path) {
    free(m);
    return NULL;
  }
  atomic_init(&m->refcount, 1);
  m->data = empty_bytes;
  return m;
}

mx__mapping *mx__mapping_open(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    MX__IOERR(errno == ENOENT ? MX_ERR_NOT_FOUND : MX_ERR_IO, path, "cannot open: %s",
              strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    MX__IOERR(MX_ERR_IO, path, "not a regular file");
    close(fd);
    return NULL;
  }
  mx__mapping *m = mapping_alloc(path);
  if (!m) {
    close(fd);
    mx__set_error(MX_ERR_OOM, "out of memory opening %s", path);
    return NULL;
  }
  if (st.st_size > 0) {
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      MX__IOERR(MX_ERR_IO, path, "mmap failed: %s", strerror(errno));
      close(fd);
      free(m->path);
      free(m);
      return NULL;
    }
    m->map_base = p;
    m->map_len = (size_t)st.st_size;
    m->data = p;
    m->size = (size_t)st.st_size;
  }
  close(fd);
  return m;
}

mx__mapping *mx__mapping_from_heap(void *block, size_t size, const char *name) {
  mx__mapping *m = mapping_alloc(name);
  if (!m) {
    free(block);
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  m->heap = block;
  if (block) m->data = block;
  m->size = size;
  return m;
}

mx__mapping *mx__mapping_from_memory(const void *data, size_t size, const char *name) {
  void *copy = NULL;
  if (size) {
    copy = malloc(size);
    if (!copy) {
      mx__set_error(MX_ERR_OOM, "out of memory copying %zu bytes", size);
      return NULL;
    }
    memcpy(copy, data, size);
  }
  return mx__mapping_from_heap(copy, size, name);
}

void mx__mapping_retain(mx__mapping *m) {
  if (m) atomic_fetch_add(&m->refcount, 1);
}

void mx__mapping_release(mx__mapping *m) {
  if (!m || atomic_fetch_sub(&m->refcount, 1) != 1) return;
  if (m->map_base) munmap(m->map_base, m->map_len);
  free(m->heap);
  free(m->path);
  free(m);
}

static void release_mapping_cb(void *data, void *ctx) {
  MX_UNUSED(data);
  mx__mapping_release(ctx);
}

static void free_cb(void *data, void *ctx) {
  MX_UNUSED(ctx);
  free(data);
}

mx_array *mx__array_from_heap(void *block, mx_dtype dt, const int64_t *shape, int ndim) {
  static uint64_t dummy;
  mx_array *a = mx_array_from_data_nocopy(block ? block : (void *)&dummy, shape, ndim, dt,
                                          block ? free_cb : NULL, NULL);
  if (!a) free(block);
  return a;
}

mx_array *mx__mapping_view(mx__mapping *m, size_t offset, mx_dtype dt, const int64_t *shape,
                           int ndim, const int64_t *strides, bool copy) {
  size_t es = mx_dtype_size(dt);
  const uint8_t *p = m->data + offset;
  uint64_t count;
  if (!mx__dims_product(shape, ndim, &count)) {
    mx__set_error(MX_ERR_FORMAT, "%s: dimension product overflows", m->path);
    return NULL;
  }
  if (copy || ((uintptr_t)p % es) != 0) {
    /* Element span (strided views cover the same bytes as row-major). */
    size_t nbytes = (size_t)count * es;
    void *block = malloc(nbytes ? nbytes : 1);
    if (!block) {
      mx__set_error(MX_ERR_OOM, "%s: out of memory copying %zu bytes", m->path, nbytes);
      return NULL;
    }
    if (nbytes) memcpy(block, p, nbytes);
    if (!strides) return mx__array_from_heap(block, dt, shape, ndim);
    mx_array *a = mx_array_from_data_strided(block, shape, strides, ndim, dt, free_cb, NULL);
    if (!a) free(block);
    return a;
  }
  mx__mapping_retain(m);
  mx_array *a = mx_array_from_data_strided((void *)p, shape, strides, ndim, dt,
                                           release_mapping_cb, m);
  if (!a) mx__mapping_release(m);
  return a;
}

/* ---- arithmetic, UTF-8 --------------------------------------------------------- */

bool mx__dims_product(const int64_t *shape, int ndim, uint64_t *count) {
  /* The product of the non-zero dims is bounded too: strides of an empty
   * array are products of its other dims and must not overflow either. */
  uint64_t n = 1, nonzero = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return false;
    if (!mx__mul_ok(n, (uint64_t)shape[i], &n) || n > ((uint64_t)1 << 62)) return false;
    if (shape[i] &&
        (!mx__mul_ok(nonzero, (uint64_t)shape[i], &nonzero) || nonzero > ((uint64_t)1 << 62)))
      return false;
  }
  *count = n;
  return true;
}

bool mx__io_utf8_valid(const char *str, size_t n) {
  const uint8_t *s = (const uint8_t *)str;
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c == 0) return false;
    if (c < 0x80) {
      i++;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    else return false;
    if (n - i < (size_t)len) return false;
    for (int k = 1; k < len; k++) {
      if ((s[i + (size_t)k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + (size_t)k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
      return false; /* overlong */
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += (size_t)len;
  }
  return true;
}

/* ---- string hash set ------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

int64_t mx__strset_find(const mx__strset *s, const char *key, size_t len,
                        const char *(*keyof)(void *, int64_t, size_t *), void *ctx) {
  if (!s->cap) return -1;
  size_t mask = s->cap - 1;
  for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
    int64_t slot = s->slots[i];
    if (!slot) return -1;
    size_t klen;
    const char *k = keyof(ctx, slot - 1, &klen);
    if (klen == len && !memcmp(k, key, len)) return slot - 1;
  }
}

static bool strset_grow(mx__strset *s, const char *(*keyof)(void *, int64_t, size_t *),
                        void *ctx) {
  size_t ncap = s->cap ? s->cap * 2 : 16;
  int64_t *ns = calloc(ncap, sizeof *ns);
  if (!ns) return false;
  for (size_t j = 0; j < s->cap; j++) {
    if (!s->slots[j]) continue;
    size_t klen;
    const char *k = keyof(ctx, s->slots[j] - 1, &klen);
    size_t i = hash_bytes(k, klen) & (ncap - 1);
    while (ns[i]) i = (i + 1) & (ncap - 1);
    ns[i] = s->slots[j];
  }
  free(s->slots);
  s->slots = ns;
  s->cap = ncap;
  return true;
}

int64_t mx__strset_put(mx__strset *s, const char *key, size_t len, int64_t index,
                       const char *(*keyof)(void *, int64_t, size_t *), void *ctx) {
  int64_t found = mx__strset_find(s, key, len, keyof, ctx);
  if (found >= 0) return found;
  /* count used slots lazily: keep load <= 1/2 by tracking via index+1 */
  if ((size_t)(index + 1) * 2 > s->cap && !strset_grow(s, keyof, ctx)) return -2;
  size_t mask = s->cap - 1;
  size_t i = hash_bytes(key, len) & mask;
  while (s->slots[i]) i = (i + 1) & mask;
  s->slots[i] = index + 1;
  return -1;
}

void mx__strset_free(mx__strset *s) {
  free(s->slots);
  s->slots = NULL;
  s->cap = 0;
}

/* ---- metadata -------------------------------------------------------------------- */

struct mx_metadata {
  char **keys;
  size_t *key_lens;
  mx_meta_value *values;
  int64_t n, cap;
  mx__strset index;
};

static const char *meta_keyof(void *ctx, int64_t i, size_t *len) {
  mx_metadata *m = ctx;
  *len = m->key_lens[i];
  return m->keys[i];
}

mx_metadata *mx_metadata_new(void) {
  mx_metadata *m = calloc(1, sizeof *m);
  if (!m) mx__set_error(MX_ERR_OOM, "metadata: out of memory");
  return m;
}

void mx__meta_value_clear(mx_meta_value *v) {
  if (!v) return;
  if (v->type == MX_META_STRING) {
    free(v->v.str.data);
  } else if (v->type == MX_META_ARRAY) {
    for (size_t i = 0; i < v->v.arr.count; i++) mx__meta_value_clear(&v->v.arr.items[i]);
    free(v->v.arr.items);
  }
  memset(v, 0, sizeof *v);
}

void mx_metadata_free(mx_metadata *m) {
  if (!m) return;
  for (int64_t i = 0; i < m->n; i++) {
    free(m->keys[i]);
    mx__meta_value_clear(&m->values[i]);
  }
  free(m->keys);
  free(m->key_lens);
  free(m->values);
  mx__strset_free(&m->index);
  free(m);
}

int64_t mx_metadata_size(const mx_metadata *m) { return m ? m->n : 0; }
const char *mx_metadata_key(const mx_metadata *m, int64_t i) {
  return m && i >= 0 && i < m->n ? m->keys[i] : NULL;
}
const mx_meta_value *mx_metadata_value(const mx_metadata *m, int64_t i) {
  return m && i >= 0 && i < m->n ? &m->values[i] : NULL;
}

static int64_t meta_find(const mx_metadata *m, const char *key, size_t len) {
  return mx__strset_find(&m->index, key, len, meta_keyof, (void *)m);
}

const mx_meta_value *mx_metadata_get(const mx_metadata *m, const char *key) {
  if (!m || !key) return NULL;
  int64_t i = meta_find(m, key, strlen(key));
  return i >= 0 ? &m->values[i] : NULL;
}

const char *mx_metadata_get_string(const mx_metadata *m, const char *key) {
  const mx_meta_value *v = mx_metadata_get(m, key);
  return v && v->type == MX_META_STRING ? v->v.str.data : NULL;
}

int mx__metadata_add_owned(mx_metadata *m, const char *key, size_t key_len, mx_meta_value *v) {
  if (meta_find(m, key, key_len) >= 0)
    return mx__set_error(MX_ERR_FORMAT, "duplicate metadata key '%.*s'", (int)MX_MIN(key_len, 200),
                         key);
  if (m->n == m->cap) {
    int64_t nc = m->cap ? m->cap * 2 : 16;
    char **k = realloc(m->keys, (size_t)nc * sizeof *k);
    if (!k) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
    m->keys = k;
    size_t *kl = realloc(m->key_lens, (size_t)nc * sizeof *kl);
    if (!kl) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
    m->key_lens = kl;
    mx_meta_value *vs = realloc(m->values, (size_t)nc * sizeof *vs);
    if (!vs) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
    m->values = vs;
    m->cap = nc;
  }
  char *k = malloc(key_len + 1);
  if (!k) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
  memcpy(k, key, key_len);
  k[key_len] = 0;
  m->keys[m->n] = k;
  m->key_lens[m->n] = key_len;
  if (mx__strset_put(&m->index, k, key_len, m->n, meta_keyof, m) == -2) {
    free(k);
    return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
  }
  m->values[m->n] = *v;
  m->n++;
  memset(v, 0, sizeof *v);
  return MX_OK;
}

static int meta_copy(mx_meta_value *dst, const mx_meta_value *src, int depth) {
  memset(dst, 0, sizeof *dst);
  if ((unsigned)src->type >= MX_META_TYPE_COUNT)
    return mx__set_error(MX_ERR_INVALID_ARG, "metadata: unknown value type %d", (int)src->type);
  if (depth > 16) return mx__set_error(MX_ERR_INVALID_ARG, "metadata: arrays nested too deeply");
  if (src->type == MX_META_STRING) {
    size_t n = src->v.str.data ? src->v.str.len : 0;
    char *s = malloc(n + 1);
    if (!s) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
    if (n) memcpy(s, src->v.str.data, n);
    s[n] = 0;
    dst->type = MX_META_STRING;
    dst->v.str.data = s;
    dst->v.str.len = n;
    return MX_OK;
  }
  if (src->type == MX_META_ARRAY) {
    size_t n = src->v.arr.count;
    dst->type = MX_META_ARRAY;
    dst->v.arr.type = src->v.arr.type;
    if ((unsigned)src->v.arr.type >= MX_META_TYPE_COUNT)
      return mx__set_error(MX_ERR_INVALID_ARG, "metadata: unknown array element type %d",
                           (int)src->v.arr.type);
    if (!n) return MX_OK;
    dst->v.arr.items = calloc(n, sizeof(mx_meta_value));
    if (!dst->v.arr.items) return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
    dst->v.arr.count = n;
    for (size_t i = 0; i < n; i++) {
      if (src->v.arr.items[i].type != src->v.arr.type) {
        mx__meta_value_clear(dst);
        return mx__set_error(MX_ERR_INVALID_ARG,
                             "metadata: array item %zu has type %s, the array holds %s", i,
                             mx_meta_type_name(src->v.arr.items[i].type),
                             mx_meta_type_name(src->v.arr.type));
      }
      int st = meta_copy(&dst->v.arr.items[i], &src->v.arr.items[i], depth + 1);
      if (st) {
        mx__meta_value_clear(dst);
        return st;
      }
    }
    return MX_OK;
  }
  *dst = *src;
  return MX_OK;
}

int mx_metadata_set(mx_metadata *m, const char *key, const mx_meta_value *v) {
  if (!m || !key || !v) return mx__set_error(MX_ERR_INVALID_ARG, "metadata_set: NULL argument");
  mx_meta_value copy;
  int st = meta_copy(&copy, v, 0);
  if (st) return st;
  size_t len = strlen(key);
  int64_t i = meta_find(m, key, len);
  if (i >= 0) {
    mx__meta_value_clear(&m->values[i]);
    m->values[i] = copy;
    return MX_OK;
  }
  st = mx__metadata_add_owned(m, key, len, &copy);
  if (st) mx__meta_value_clear(&copy);
  return st;
}

int mx_metadata_set_string(mx_metadata *m, const char *key, const char *value) {
  if (!value) return mx__set_error(MX_ERR_INVALID_ARG, "metadata_set_string: NULL value");
  mx_meta_value v = {.type = MX_META_STRING};
  v.v.str.data = (char *)value;
  v.v.str.len = strlen(value);
  return mx_metadata_set(m, key, &v);
}

int mx_metadata_remove(mx_metadata *m, const char *key) {
  if (!m || !key) return mx__set_error(MX_ERR_INVALID_ARG, "metadata_remove: NULL argument");
  int64_t i = meta_find(m, key, strlen(key));
  if (i < 0) return mx__set_error(MX_ERR_NOT_FOUND, "metadata: no key '%s'", key);
  free(m->keys[i]);
  mx__meta_value_clear(&m->values[i]);
  memmove(m->keys + i, m->keys + i + 1, (size_t)(m->n - i - 1) * sizeof *m->keys);
  memmove(m->key_lens + i, m->key_lens + i + 1, (size_t)(m->n - i - 1) * sizeof *m->key_lens);
  memmove(m->values + i, m->values + i + 1, (size_t)(m->n - i - 1) * sizeof *m->values);
  m->n--;
  /* rebuild the index */
  mx__strset_free(&m->index);
  for (int64_t j = 0; j < m->n; j++)
    if (mx__strset_put(&m->index, m->keys[j], m->key_lens[j], j, meta_keyof, m) == -2)
      return mx__set_error(MX_ERR_OOM, "metadata: out of memory");
  return MX_OK;
}

const char *mx_meta_type_name(mx_meta_type t) {
  static const char *const names[] = {"uint8",  "int8",   "uint16", "int16",  "uint32",
                                      "int32",  "float32", "bool",  "string", "array",
                                      "uint64", "int64",  "float64"};
  return (unsigned)t < MX_META_TYPE_COUNT ? names[t] : "unknown";
}

static void print_json_string(const char *s, size_t n, FILE *f) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c == '\r') fputs("\\r", f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

int mx_meta_value_print(const mx_meta_value *v, FILE *f, size_t max_items) {
  if (!v || !f) return mx__set_error(MX_ERR_INVALID_ARG, "meta_value_print: NULL argument");
  switch (v->type) {
    case MX_META_UINT8: case MX_META_UINT16: case MX_META_UINT32: case MX_META_UINT64:
      fprintf(f, "%llu", (unsigned long long)v->v.u);
      break;
    case MX_META_INT8: case MX_META_INT16: case MX_META_INT32: case MX_META_INT64:
      fprintf(f, "%lld", (long long)v->v.i);
      break;
    case MX_META_FLOAT32: fprintf(f, "%.9g", v->v.f); break;
    case MX_META_FLOAT64: fprintf(f, "%.17g", v->v.f); break;
    case MX_META_BOOL: fputs(v->v.b ? "true" : "false", f); break;
    case MX_META_STRING: print_json_string(v->v.str.data, v->v.str.len, f); break;
    case MX_META_ARRAY: {
      fputc('[', f);
      size_t n = v->v.arr.count, shown = MX_MIN(n, max_items);
      for (size_t i = 0; i < shown; i++) {
        if (i) fputs(", ", f);
        mx_meta_value_print(&v->v.arr.items[i], f, max_items);
      }
      if (shown < n) fprintf(f, "%s... (%zu %s items)", shown ? ", " : "", n,
                             mx_meta_type_name(v->v.arr.type));
      fputc(']', f);
      break;
    }
    default: return mx__set_error(MX_ERR_INVALID_ARG, "meta_value_print: bad type");
  }
  return MX_OK;
}

/* ---- sink --------------------------------------------------------------------- */

int mx__sink_info(mx__sink *s, const char *name, const char *file_dtype, int dtype,
                  const int64_t *shape, int ndim, uint64_t offset, uint64_t nbytes) {
  if (s->ninfos == s->cap_infos) {
    int64_t nc = s->cap_infos ? s->cap_infos * 2 : 16;
    mx_tensor_info *ni = realloc(s->infos, (size_t)nc * sizeof *ni);
    if (!ni) return mx__set_error(MX_ERR_OOM, "out of memory listing tensors");
    s->infos = ni;
    s->cap_infos = nc;
  }
  mx_tensor_info *t = &s->infos[s->ninfos];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  if (!t->name) return mx__set_error(MX_ERR_OOM, "out of memory listing tensors");
  snprintf(t->file_dtype, sizeof t->file_dtype, "%s", file_dtype);
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->offset = offset;
  t->nbytes = nbytes;
  s->ninfos++;
  return MX_OK;
}

int mx__sink_array(mx__sink *s, const char *file, const char *name, mx_array *a) {
  if (!a) return mx__prefix_error("%s: tensor '%s'", file, name);
  if (mx_map_has(s->arrays, name)) {
    mx_array_free(a);
    return MX__IOERR(MX_ERR_FORMAT, file, "duplicate tensor name '%s'", name);
  }
  return mx_map_set_take(s->arrays, name, a);
}

void mx_tensor_info_free(mx_tensor_info *tensors, int64_t count) {
  if (!tensors) return;
  for (int64_t i = 0; i < count; i++) free(tensors[i].name);
  free(tensors);
}

/* ---- atomic writer --------------------------------------------------------------- */

static int writer_flush(mx__writer *w) {
  size_t off = 0;
  while (w->status == MX_OK && off < w->len) {
    ssize_t k = write(w->fd, w->buf + off, w->len - off);
    if (k < 0) {
      if (errno == EINTR) continue;
      w->status = MX__IOERR(MX_ERR_IO, w->path, "write failed: %s", strerror(errno));
      break;
    }
    off += (size_t)k;
  }
  w->len = 0;
  return w->status;
}

int mx__writer_open(mx__writer *w, const char *path) {
  memset(w, 0, sizeof *w);
  w->fd = -1;
  w->path = strdup(path);
  size_t n = strlen(path) + 16;
  w->tmp_path = malloc(n);
  w->cap = 1 << 20;
  w->buf = malloc(w->cap);
  if (!w->path || !w->tmp_path || !w->buf) {
    free(w->path);
    free(w->tmp_path);
    free(w->buf);
    memset(w, 0, sizeof *w);
    return mx__set_error(MX_ERR_OOM, "out of memory saving %s", path);
  }
  snprintf(w->tmp_path, n, "%s.tmp.XXXXXX", path);
  w->fd = mkstemp(w->tmp_path);
  if (w->fd < 0) {
    int st = MX__IOERR(MX_ERR_IO, path, "cannot create a temporary file next to it: %s",
                       strerror(errno));
    free(w->path);
    free(w->tmp_path);
    free(w->buf);
    memset(w, 0, sizeof *w);
    return st;
  }
  fchmod(w->fd, 0644);
  return MX_OK;
}

void mx__writer_write(mx__writer *w, const void *p, size_t n) {
  if (w->status) return;
  w->pos += n;
  if (n >= w->cap) { /* large block: write directly */
    if (writer_flush(w)) return;
    const uint8_t *q = p;
    while (n) {
      ssize_t k = write(w->fd, q, MX_MIN(n, (size_t)1 << 30));
      if (k < 0) {
        if (errno == EINTR) continue;
        w->status = MX__IOERR(MX_ERR_IO, w->path, "write failed: %s", strerror(errno));
        return;
      }
      q += k;
      n -= (size_t)k;
    }
    return;
  }
  if (w->len + n > w->cap && writer_flush(w)) return;
  memcpy(w->buf + w->len, p, n);
  w->len += n;
}

void mx__writer_pad(mx__writer *w, size_t n, uint8_t byte) {
  uint8_t block[256];
  memset(block, byte, sizeof block);
  while (n) {
    size_t k = MX_MIN(n, sizeof block);
    mx__writer_write(w, block, k);
    n -= k;
  }
}

void mx__writer_pwrite(mx__writer *w, const void *p, size_t n, uint64_t at) {
  if (w->status || writer_flush(w)) return;
  if (pwrite(w->fd, p, n, (off_t)at) != (ssize_t)n)
    w->status = MX__IOERR(MX_ERR_IO, w->path, "write failed: %s", strerror(errno));
}

int mx__writer_close(mx__writer *w, int status) {
  if (!w->path) return status;
  if (status == MX_OK) status = w->status;
  if (status == MX_OK) status = writer_flush(w);
  if (status == MX_OK && fsync(w->fd) != 0)
    status = MX__IOERR(MX_ERR_IO, w->path, "fsync failed: %s", strerror(errno));
  if (close(w->fd) != 0 && status == MX_OK)
    status = MX__IOERR(MX_ERR_IO, w->path, "close failed: %s", strerror(errno));
  if (status == MX_OK && rename(w->tmp_path, w->path) != 0)
    status = MX__IOERR(MX_ERR_IO, w->path, "rename failed: %s", strerror(errno));
  if (status != MX_OK) {
    unlink(w->tmp_path);
  } else {
    /* make the rename durable */
    char *dir = strdup(w->path);
    if (dir) {
      int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
      }
      free(dir);
    }
  }
  free(w->path);
  free(w->tmp_path);
  free(w->buf);
  memset(w, 0, sizeof *w);
  return status;
}
