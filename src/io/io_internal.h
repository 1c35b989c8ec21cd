/* io_internal.h — shared pieces of the array I/O formats (not installed).
 *
 * Every reader works on an mx__mapping: the whole file mapped read-only
 * (or a private copy of a caller's buffer), reference counted so that
 * arrays returned as zero-copy views keep it alive. Parsers read it through
 * mx__rd, a cursor whose every read is bounds-checked. Writers go through
 * mx__writer, which writes a temporary file next to the target and renames
 * it into place after fsync (atomic save).
 */
#ifndef MXC_IO_INTERNAL_H
#define MXC_IO_INTERNAL_H

#include "array_impl.h"
#include "mxc/io.h"

#include <stdatomic.h>

/* ---- errors -------------------------------------------------------------- */
/* Every message names the file: "model.gguf: tensor 'x': offset past end". */
#define MX__IOERR(status, file, ...) mx__io_error((status), (file), __VA_ARGS__)
int mx__io_error(int status, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- the mapped file ------------------------------------------------------ */
typedef struct mx__mapping {
  atomic_int refcount;
  const uint8_t *data; /* the bytes (never NULL, even for an empty file) */
  size_t size;
  void *map_base;      /* mmap'd region, or NULL */
  size_t map_len;
  void *heap;          /* malloc'd copy, or NULL */
  char *path;          /* for messages */
} mx__mapping;

mx__mapping *mx__mapping_open(const char *path);
/* A private copy of data[0..size) (the caller's buffer may then go away). */
mx__mapping *mx__mapping_from_memory(const void *data, size_t size, const char *name);
/* Takes ownership of a malloc'd block. */
mx__mapping *mx__mapping_from_heap(void *block, size_t size, const char *name);
void mx__mapping_retain(mx__mapping *m);
void mx__mapping_release(mx__mapping *m);

/* An evaluated array viewing m->data + offset (m is retained until the
 * array's buffer is released). `strides` NULL = row-major. When the address
 * is not aligned to the dtype size, or `copy` is set, the bytes are copied
 * instead. The caller has checked that the bytes lie inside the mapping. */
mx_array *mx__mapping_view(mx__mapping *m, size_t offset, mx_dtype dt, const int64_t *shape,
                           int ndim, const int64_t *strides, bool copy);
/* An evaluated array owning a malloc'd block (freed with the array). */
mx_array *mx__array_from_heap(void *block, mx_dtype dt, const int64_t *shape, int ndim);

/* ---- checked arithmetic ---------------------------------------------------- */
static inline bool mx__mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}
static inline bool mx__add_ok(uint64_t a, uint64_t b, uint64_t *out) {
  return !__builtin_add_overflow(a, b, out);
}
/* Product of dims with overflow check (each dim >= 0) into *count; false on
 * overflow past 2^62 (no real array is that large). */
bool mx__dims_product(const int64_t *shape, int ndim, uint64_t *count);

/* Valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF); NUL not allowed. */
bool mx__io_utf8_valid(const char *s, size_t n);

/* ---- bounds-checked reader -------------------------------------------------- */
typedef struct {
  const uint8_t *base, *p, *end;
  bool failed;
} mx__rd;

static inline void mx__rd_init(mx__rd *r, const uint8_t *p, size_t n) {
  r->base = r->p = p;
  r->end = p + n;
  r->failed = false;
}
static inline size_t mx__rd_left(const mx__rd *r) { return (size_t)(r->end - r->p); }
static inline size_t mx__rd_pos(const mx__rd *r) { return (size_t)(r->p - r->base); }
/* Returns a pointer to n bytes and advances, or NULL (and sets failed). */
static inline const uint8_t *mx__rd_bytes(mx__rd *r, uint64_t n) {
  if (r->failed || n > mx__rd_left(r)) {
    r->failed = true;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += n;
  return p;
}
static inline uint64_t mx__load_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static inline uint8_t mx__rd_u8(mx__rd *r) {
  const uint8_t *p = mx__rd_bytes(r, 1);
  return p ? p[0] : 0;
}
static inline uint16_t mx__rd_u16(mx__rd *r) {
  const uint8_t *p = mx__rd_bytes(r, 2);
  return p ? (uint16_t)mx__load_le(p, 2) : 0;
}
static inline uint32_t mx__rd_u32(mx__rd *r) {
  const uint8_t *p = mx__rd_bytes(r, 4);
  return p ? (uint32_t)mx__load_le(p, 4) : 0;
}
static inline uint64_t mx__rd_u64(mx__rd *r) {
  const uint8_t *p = mx__rd_bytes(r, 8);
  return p ? mx__load_le(p, 8) : 0;
}
static inline void mx__store_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++, v >>= 8) p[i] = (uint8_t)v;
}

/* ---- string-keyed hash set (duplicate detection, metadata index) ---------- */
typedef struct {
  int64_t *slots; /* index+1 into the caller's key list, 0 = empty */
  size_t cap;
} mx__strset;
/* Returns the existing index when key is present (and does not insert), -1
 * after inserting `index`, or -2 when out of memory. `keys` resolves an
 * index to its key. */
int64_t mx__strset_put(mx__strset *s, const char *key, size_t len, int64_t index,
                       const char *(*keyof)(void *ctx, int64_t i, size_t *len), void *ctx);
int64_t mx__strset_find(const mx__strset *s, const char *key, size_t len,
                        const char *(*keyof)(void *ctx, int64_t i, size_t *len), void *ctx);
void mx__strset_free(mx__strset *s);

/* ---- metadata internals --------------------------------------------------------- */
/* Adds a value (taking ownership of its allocations) under a new key;
 * MX_ERR_FORMAT naming the key when it is already present. */
int mx__metadata_add_owned(mx_metadata *m, const char *key, size_t key_len, mx_meta_value *v);
void mx__meta_value_clear(mx_meta_value *v);

/* ---- writer (atomic replace) ------------------------------------------------ */
typedef struct {
  int fd;
  char *path, *tmp_path;
  uint8_t *buf;
  size_t len, cap;
  uint64_t pos; /* bytes written so far (including buffered) */
  int status;
} mx__writer;

int mx__writer_open(mx__writer *w, const char *path);
void mx__writer_write(mx__writer *w, const void *p, size_t n);
void mx__writer_pad(mx__writer *w, size_t n, uint8_t byte);
/* Writes at an absolute earlier position (flushes first). */
void mx__writer_pwrite(mx__writer *w, const void *p, size_t n, uint64_t at);
/* fsync + rename on success; removes the temporary file on failure or when
 * status != MX_OK. Returns the final status. */
int mx__writer_close(mx__writer *w, int status);

/* ---- the formats ------------------------------------------------------------- */
/* A tensor as the file describes it (before conversion). */
typedef struct {
  char *name;
  char file_dtype[16];
  int dtype; /* mx_dtype it loads as; -1: several arrays (quantized triple) */
  int ndim;
  int64_t shape[MX_MAX_NDIM];
  uint64_t offset, nbytes;
} mx__entry;

/* Parsers: fill *arrays (and *metadata when non-NULL), or *entries when
 * `list_only`. All take the mapping, its display name and the options. */
typedef struct {
  bool list_only;
  mx_map *arrays;
  mx_metadata *metadata;
  mx_tensor_info *infos;
  int64_t ninfos, cap_infos;
  const mx_load_options *opt;
} mx__sink;

int mx__sink_info(mx__sink *s, const char *name, const char *file_dtype, int dtype,
                  const int64_t *shape, int ndim, uint64_t offset, uint64_t nbytes);
/* Adds an array to the sink (takes the reference); checks duplicate names. */
int mx__sink_array(mx__sink *s, const char *file, const char *name, mx_array *a);

int mx__safetensors_parse(mx__mapping *m, mx__sink *s);
int mx__npy_parse(mx__mapping *m, mx__sink *s);
int mx__npz_parse(mx__mapping *m, mx__sink *s);
int mx__gguf_parse(mx__mapping *m, mx__sink *s);

/* npy header helpers shared by npy and npz. */
typedef struct {
  int dtype;        /* mx_dtype to produce */
  int file_size;    /* element size in the file */
  char kind;        /* 'f','i','u','b','V' */
  bool big_endian;
  bool fortran;
  int ndim;
  int64_t shape[MX_MAX_NDIM];
  uint64_t count;
  size_t data_offset; /* from the start of the .npy bytes */
  char descr[16];
} mx__npy_header;
int mx__npy_read_header(const uint8_t *p, size_t n, const char *file, mx__npy_header *h);
/* Builds the array from the .npy bytes; `m` non-NULL allows a view into it
 * at `base_offset` (else the bytes at p are copied). */
mx_array *mx__npy_make_array(const mx__npy_header *h, const uint8_t *p, size_t n,
                             mx__mapping *m, size_t base_offset, const char *file, bool copy);
/* Serialises one array as .npy bytes into a malloc'd header (*hdr, *hdr_len);
 * the data follows as mx_array_data(a) (row-major). */
int mx__npy_header_for(mx_array *a, uint8_t **hdr, size_t *hdr_len);

/* Test hook for the fuzzers: skip zip CRC checks (they stop fuzzers early). */
extern bool mx__io_fuzzing;
/* Test hook: write zip64 records for every npz member (small files exercise
 * the zip64 path). */
extern bool mx__npz_force_zip64;

#endif
