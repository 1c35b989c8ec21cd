/* npz.c — .npz: a zip archive of .npy members ("<key>.npy"), written by
 * np.savez (stored) and np.savez_compressed (deflate).
 *
 * The zip container is implemented here: end of central directory (and its
 * zip64 record + locator), central directory entries (with zip64 extra
 * fields), local headers. Stored members are zero-copy views of the file;
 * deflated members are inflated with zlib into a buffer the arrays own.
 * CRC-32s are verified. */
#include "io/io_internal.h"

#include <string.h>
#include <zlib.h>

bool mx__npz_force_zip64;

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define U32MAX 0xffffffffu

typedef struct {
  const char *name;
  size_t name_len;
  uint16_t flags, method;
  uint32_t crc;
  uint64_t csize, usize, local;
} zip_entry;

/* ---- reading -------------------------------------------------------------------- */

static int find_eocd(mx__mapping *m, size_t *pos) {
  const char *file = m->path;
  if (m->size < 22) return MX__IOERR(MX_ERR_FORMAT, file, "not a zip file (too short)");
  size_t lo = m->size > 22 + 65535 ? m->size - 22 - 65535 : 0;
  for (size_t p = m->size - 22;; p--) {
    if (mx__load_le(m->data + p, 4) == SIG_EOCD &&
        p + 22 + mx__load_le(m->data + p + 20, 2) == m->size) {
      *pos = p;
      return MX_OK;
    }
    if (p == lo) break;
  }
  return MX__IOERR(MX_ERR_FORMAT, file, "not a zip file (no end of central directory)");
}

static int inflate_member(const uint8_t *src, uint64_t csize, uint8_t *dst, uint64_t usize,
                          const char *file, const char *name) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK)
    return MX__IOERR(MX_ERR_INTERNAL, file, "zlib inflateInit failed");
  uint64_t in_left = csize, out_left = usize;
  z.next_in = (Bytef *)src;
  z.next_out = dst;
  int r = Z_OK;
  while (r == Z_OK) {
    if (!z.avail_in && in_left) {
      z.avail_in = (uInt)MX_MIN(in_left, (uint64_t)1 << 30);
      in_left -= z.avail_in;
    }
    if (!z.avail_out && out_left) {
      z.avail_out = (uInt)MX_MIN(out_left, (uint64_t)1 << 30);
      out_left -= z.avail_out;
    }
    uInt before_in = z.avail_in, before_out = z.avail_out;
    r = inflate(&z, Z_NO_FLUSH);
    if (r == Z_BUF_ERROR || (r == Z_OK && before_in == z.avail_in && before_out == z.avail_out))
      break;
  }
  bool ok = r == Z_STREAM_END && z.total_out == usize && !z.avail_out && !out_left;
  inflateEnd(&z);
  if (!ok)
    return MX__IOERR(MX_ERR_FORMAT, file, "member '%s': corrupt deflate data", name);
  return MX_OK;
}

static int read_central(mx__mapping *m, zip_entry **out, uint64_t *count) {
  const char *file = m->path;
  size_t eocd = 0;
  int st = find_eocd(m, &eocd);
  if (st) return st;
  mx__rd r;
  mx__rd_init(&r, m->data + eocd + 4, 18);
  uint16_t disk = mx__rd_u16(&r), cd_disk = mx__rd_u16(&r);
  mx__rd_u16(&r);
  uint64_t n = mx__rd_u16(&r);
  uint64_t cd_size = mx__rd_u32(&r), cd_off = mx__rd_u32(&r);
  if (disk != 0 || cd_disk != 0)
    return MX__IOERR(MX_ERR_UNSUPPORTED, file, "multi-disk zip archives are not supported");
  if (n == 0xffff || cd_size == U32MAX || cd_off == U32MAX) {
    if (eocd < 20 || mx__load_le(m->data + eocd - 20, 4) != SIG_LOC64)
      return MX__IOERR(MX_ERR_FORMAT, file, "zip64 end of central directory locator missing");
    uint64_t rec = mx__load_le(m->data + eocd - 20 + 8, 8);
    if (rec > eocd - 20 || eocd - 20 - rec < 56 || mx__load_le(m->data + rec, 4) != SIG_EOCD64)
      return MX__IOERR(MX_ERR_FORMAT, file, "bad zip64 end of central directory record");
    mx__rd_init(&r, m->data + rec + 24, 32);
    mx__rd_u64(&r);
    n = mx__rd_u64(&r);
    cd_size = mx__rd_u64(&r);
    cd_off = mx__rd_u64(&r);
  }
  if (cd_off > m->size || cd_size > m->size - cd_off)
    return MX__IOERR(MX_ERR_FORMAT, file, "central directory outside the file");
  if (n > cd_size / 46)
    return MX__IOERR(MX_ERR_FORMAT, file, "central directory claims %llu entries in %llu bytes",
                     (unsigned long long)n, (unsigned long long)cd_size);
  zip_entry *es = calloc((size_t)n + 1, sizeof *es);
  if (!es) return mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
  mx__rd_init(&r, m->data + cd_off, (size_t)cd_size);
  for (uint64_t i = 0; i < n; i++) {
    zip_entry *e = &es[i];
    const uint8_t *h = mx__rd_bytes(&r, 46);
    if (!h || mx__load_le(h, 4) != SIG_CENTRAL) {
      free(es);
      return MX__IOERR(MX_ERR_FORMAT, file, "bad central directory entry %llu",
                       (unsigned long long)i);
    }
    e->flags = (uint16_t)mx__load_le(h + 8, 2);
    e->method = (uint16_t)mx__load_le(h + 10, 2);
    e->crc = (uint32_t)mx__load_le(h + 16, 4);
    e->csize = mx__load_le(h + 20, 4);
    e->usize = mx__load_le(h + 24, 4);
    size_t nlen = mx__load_le(h + 28, 2), xlen = mx__load_le(h + 30, 2),
           clen = mx__load_le(h + 32, 2);
    e->local = mx__load_le(h + 42, 4);
    const uint8_t *name = mx__rd_bytes(&r, nlen), *extra = mx__rd_bytes(&r, xlen);
    if (!name || !extra || !mx__rd_bytes(&r, clen)) {
      free(es);
      return MX__IOERR(MX_ERR_FORMAT, file, "truncated central directory");
    }
    e->name = (const char *)name;
    e->name_len = nlen;
    /* zip64 extra: the fields that are 0xffffffff, in this order */
    mx__rd x;
    mx__rd_init(&x, extra, xlen);
    while (mx__rd_left(&x) >= 4) {
      uint16_t id = mx__rd_u16(&x), sz = mx__rd_u16(&x);
      mx__rd f;
      const uint8_t *body = mx__rd_bytes(&x, sz);
      if (!body) break;
      if (id != 1) continue;
      mx__rd_init(&f, body, sz);
      if (e->usize == U32MAX) e->usize = mx__rd_u64(&f);
      if (e->csize == U32MAX) e->csize = mx__rd_u64(&f);
      if (e->local == U32MAX) e->local = mx__rd_u64(&f);
      if (f.failed) {
        free(es);
        return MX__IOERR(MX_ERR_FORMAT, file, "truncated zip64 extra field");
      }
    }
  }
  *out = es;
  *count = n;
  return MX_OK;
}

int mx__npz_parse(mx__mapping *m, mx__sink *s) {
  const char *file = m->path;
  zip_entry *es = NULL;
  uint64_t n = 0;
  int st = read_central(m, &es, &n);
  if (st) return st;
  char name[1024];
  for (uint64_t i = 0; i < n && !st; i++) {
    zip_entry *e = &es[i];
    if (e->name_len < 5 || e->name_len >= sizeof name ||
        memcmp(e->name + e->name_len - 4, ".npy", 4)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "member '%.*s' is not a .npy file",
                     (int)MX_MIN(e->name_len, 200), e->name);
      break;
    }
    if (!mx__io_utf8_valid(e->name, e->name_len)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "member name is not valid UTF-8");
      break;
    }
    memcpy(name, e->name, e->name_len - 4);
    name[e->name_len - 4] = 0;
    if (e->flags & 1) {
      st = MX__IOERR(MX_ERR_UNSUPPORTED, file, "member '%s' is encrypted", name);
      break;
    }
    /* local header */
    if (e->local > m->size || m->size - e->local < 30 ||
        mx__load_le(m->data + e->local, 4) != SIG_LOCAL) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "member '%s': bad local header offset", name);
      break;
    }
    uint64_t data_off = e->local + 30 + mx__load_le(m->data + e->local + 26, 2) +
                        mx__load_le(m->data + e->local + 28, 2);
    if (data_off > m->size || e->csize > m->size - data_off) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "member '%s': data past the end of the file", name);
      break;
    }
    const uint8_t *data = m->data + data_off;
    mx__mapping *owner = m;
    size_t base = (size_t)data_off;
    uint64_t size = e->csize;
    if (e->method == 8) {
      /* deflate expands at most ~1032x: refuse absurd claimed sizes */
      if (e->usize / 1032 > e->csize + 1024) {
        st = MX__IOERR(MX_ERR_FORMAT, file,
                       "member '%s': uncompressed size %llu impossible for %llu compressed "
                       "bytes",
                       name, (unsigned long long)e->usize, (unsigned long long)e->csize);
        break;
      }
      uint8_t *buf = malloc(e->usize ? (size_t)e->usize : 1);
      if (!buf) {
        st = MX__IOERR(MX_ERR_OOM, file, "member '%s': out of memory (%llu bytes)", name,
                       (unsigned long long)e->usize);
        break;
      }
      st = inflate_member(data, e->csize, buf, e->usize, file, name);
      if (st) {
        free(buf);
        break;
      }
      owner = mx__mapping_from_heap(buf, (size_t)e->usize, file);
      if (!owner) {
        st = mx_last_status();
        break;
      }
      data = owner->data;
      base = 0;
      size = e->usize;
    } else if (e->method == 0) {
      if (e->csize != e->usize) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "member '%s': stored sizes differ", name);
        break;
      }
    } else {
      st = MX__IOERR(MX_ERR_UNSUPPORTED, file, "member '%s': compression method %u is not "
                     "supported (only stored and deflate)", name, e->method);
      break;
    }
    if (!mx__io_fuzzing) {
      uLong crc = crc32(0L, Z_NULL, 0);
      for (uint64_t k = 0; k < size; k += (uint64_t)1 << 30)
        crc = crc32(crc, data + k, (uInt)MX_MIN(size - k, (uint64_t)1 << 30));
      if ((uint32_t)crc != e->crc) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "member '%s': CRC-32 mismatch", name);
        if (owner != m) mx__mapping_release(owner);
        break;
      }
    }
    mx__npy_header h;
    st = mx__npy_read_header(data, (size_t)size, file, &h);
    if (st) {
      mx__prefix_error("member '%s'", name);
    } else if (s->list_only) {
      st = mx__sink_info(s, name, h.descr, h.dtype, h.shape, h.ndim, base + h.data_offset,
                         h.count * (uint64_t)h.file_size);
    } else {
      mx_array *a = mx__npy_make_array(&h, data, (size_t)size, owner, base, file,
                                       s->opt && s->opt->copy);
      st = mx__sink_array(s, file, name, a);
    }
    if (owner != m) mx__mapping_release(owner);
  }
  free(es);
  return st;
}

/* ---- writing ----------------------------------------------------------------------- */

#define DOS_DATE 0x0021 /* 1980-01-01: deterministic output */

typedef struct {
  char *name;
  uint32_t crc;
  uint64_t csize, usize, local;
  uint16_t method;
} out_entry;

static void put16(uint8_t **p, uint64_t v) { mx__store_le(*p, v, 2), *p += 2; }
static void put32(uint8_t **p, uint64_t v) { mx__store_le(*p, v, 4), *p += 4; }
static void put64(uint8_t **p, uint64_t v) { mx__store_le(*p, v, 8), *p += 8; }

static size_t local_header(uint8_t *b, const out_entry *e, bool zip64) {
  uint8_t *p = b;
  size_t nlen = strlen(e->name);
  put32(&p, SIG_LOCAL);
  put16(&p, zip64 ? 45 : 20);
  put16(&p, 0x0800); /* UTF-8 names */
  put16(&p, e->method);
  put16(&p, 0);
  put16(&p, DOS_DATE);
  put32(&p, e->crc);
  put32(&p, zip64 ? U32MAX : e->csize);
  put32(&p, zip64 ? U32MAX : e->usize);
  put16(&p, nlen);
  put16(&p, zip64 ? 20 : 0);
  memcpy(p, e->name, nlen);
  p += nlen;
  if (zip64) {
    put16(&p, 1);
    put16(&p, 16);
    put64(&p, e->usize);
    put64(&p, e->csize);
  }
  return (size_t)(p - b);
}

static void write_member(mx__writer *w, out_entry *e, const uint8_t *hdr, size_t hlen,
                         const void *data, size_t nbytes, bool compress, int level) {
  e->usize = hlen + nbytes;
  e->local = w->pos;
  e->method = compress ? 8 : 0;
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, hdr, (uInt)hlen);
  for (size_t k = 0; k < nbytes; k += (size_t)1 << 30)
    crc = crc32(crc, (const Bytef *)data + k, (uInt)MX_MIN(nbytes - k, (size_t)1 << 30));
  e->crc = (uint32_t)crc;
  bool zip64 = mx__npz_force_zip64 || e->usize >= U32MAX - (e->usize >> 8) - 1024;
  uint8_t lh[30 + 1024 + 20];
  if (!compress) {
    e->csize = e->usize;
    mx__writer_write(w, lh, local_header(lh, e, zip64));
    mx__writer_write(w, hdr, hlen);
    if (nbytes) mx__writer_write(w, data, nbytes);
    return;
  }
  e->csize = 0;
  size_t lhlen = local_header(lh, e, zip64);
  mx__writer_write(w, lh, lhlen); /* sizes patched below */
  uint64_t start = w->pos;
  z_stream z;
  memset(&z, 0, sizeof z);
  if (deflateInit2(&z, level, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    w->status = MX__IOERR(MX_ERR_INTERNAL, w->path, "zlib deflateInit failed");
    return;
  }
  enum { CHUNK = 1 << 18 };
  uint8_t *out = malloc(CHUNK);
  if (!out) {
    deflateEnd(&z);
    w->status = mx__set_error(MX_ERR_OOM, "%s: out of memory", w->path);
    return;
  }
  const uint8_t *parts[2] = {hdr, data};
  size_t lens[2] = {hlen, nbytes};
  for (int part = 0; part < 2 && !w->status; part++) {
    size_t left = lens[part];
    const uint8_t *src = parts[part];
    do {
      size_t take = MX_MIN(left, (size_t)1 << 30);
      z.next_in = (Bytef *)src;
      z.avail_in = (uInt)take;
      src += take;
      left -= take;
      int flush = (part == 1 && !left) ? Z_FINISH : Z_NO_FLUSH;
      do {
        z.next_out = out;
        z.avail_out = CHUNK;
        deflate(&z, flush);
        mx__writer_write(w, out, CHUNK - z.avail_out);
      } while (z.avail_out == 0 && !w->status);
    } while (left && !w->status);
  }
  deflateEnd(&z);
  free(out);
  e->csize = w->pos - start;
  if (!zip64 && e->csize >= U32MAX) {
    w->status = MX__IOERR(MX_ERR_UNSUPPORTED, w->path, "member '%s' compressed past 4 GiB",
                          e->name);
    return;
  }
  lhlen = local_header(lh, e, zip64);
  mx__writer_pwrite(w, lh, lhlen, e->local);
}

int mx_save_npz(const char *path, const mx_map *arrays, bool compress) {
  if (!path || !arrays) return mx__set_error(MX_ERR_INVALID_ARG, "save_npz: NULL argument");
  int64_t n = mx_map_size(arrays);
  out_entry *es = calloc((size_t)n + 1, sizeof *es);
  if (!es) return mx__set_error(MX_ERR_OOM, "save_npz: out of memory");
  int st = MX_OK;
  for (int64_t i = 0; i < n && !st; i++) {
    const char *k = mx_map_key(arrays, i);
    size_t len = strlen(k);
    if (!len || len > 1000 || !mx__io_utf8_valid(k, len)) {
      st = MX__IOERR(MX_ERR_INVALID_ARG, path, "invalid array name '%s'", k);
      break;
    }
    es[i].name = malloc(len + 5);
    if (!es[i].name) {
      st = mx__set_error(MX_ERR_OOM, "save_npz: out of memory");
      break;
    }
    memcpy(es[i].name, k, len);
    memcpy(es[i].name + len, ".npy", 5);
  }
  mx__writer w;
  if (!st) st = mx__writer_open(&w, path);
  if (st) goto done;
  for (int64_t i = 0; i < n && !w.status; i++) {
    mx_array *a = mx_map_value(arrays, i);
    uint8_t *hdr;
    size_t hlen;
    if ((st = mx__npy_header_for(a, &hdr, &hlen)) != MX_OK) {
      mx__prefix_error("%s: array '%s'", path, mx_map_key(arrays, i));
      break;
    }
    size_t nbytes = mx_array_nbytes(a);
    const void *data = nbytes ? mx_array_data(a) : NULL;
    if (nbytes && !data) {
      free(hdr);
      st = mx__prefix_error("%s: array '%s'", path, mx_map_key(arrays, i));
      break;
    }
    write_member(&w, &es[i], hdr, hlen, data, nbytes, compress, Z_DEFAULT_COMPRESSION);
    free(hdr);
  }
  if (!st && !w.status) {
    /* central directory */
    uint64_t cd_start = w.pos;
    for (int64_t i = 0; i < n; i++) {
      out_entry *e = &es[i];
      bool big = mx__npz_force_zip64 || e->usize >= U32MAX || e->csize >= U32MAX;
      bool far = mx__npz_force_zip64 || e->local >= U32MAX;
      size_t nlen = strlen(e->name);
      uint8_t b[46 + 1024 + 28], *p = b;
      put32(&p, SIG_CENTRAL);
      put16(&p, (3 << 8) | 45);
      put16(&p, (big || far) ? 45 : 20);
      put16(&p, 0x0800);
      put16(&p, e->method);
      put16(&p, 0);
      put16(&p, DOS_DATE);
      put32(&p, e->crc);
      put32(&p, big ? U32MAX : e->csize);
      put32(&p, big ? U32MAX : e->usize);
      put16(&p, nlen);
      put16(&p, (big ? 16 : 0) + (far ? 8 : 0) + (big || far ? 4 : 0));
      put16(&p, 0);
      put16(&p, 0);
      put16(&p, 0);
      put32(&p, (uint64_t)0100644 << 16);
      put32(&p, far ? U32MAX : e->local);
      memcpy(p, e->name, nlen);
      p += nlen;
      if (big || far) {
        put16(&p, 1);
        put16(&p, (big ? 16 : 0) + (far ? 8 : 0));
        if (big) {
          put64(&p, e->usize);
          put64(&p, e->csize);
        }
        if (far) put64(&p, e->local);
      }
      mx__writer_write(&w, b, (size_t)(p - b));
    }
    uint64_t cd_size = w.pos - cd_start;
    bool z64 = mx__npz_force_zip64 || n >= 0xffff || cd_start >= U32MAX || cd_size >= U32MAX;
    uint8_t b[56 + 20 + 22], *p = b;
    if (z64) {
      uint64_t rec = w.pos;
      put32(&p, SIG_EOCD64);
      put64(&p, 44);
      put16(&p, (3 << 8) | 45);
      put16(&p, 45);
      put32(&p, 0);
      put32(&p, 0);
      put64(&p, (uint64_t)n);
      put64(&p, (uint64_t)n);
      put64(&p, cd_size);
      put64(&p, cd_start);
      put32(&p, SIG_LOC64);
      put32(&p, 0);
      put64(&p, rec);
      put32(&p, 1);
    }
    put32(&p, SIG_EOCD);
    put16(&p, 0);
    put16(&p, 0);
    put16(&p, z64 ? 0xffff : (uint64_t)n);
    put16(&p, z64 ? 0xffff : (uint64_t)n);
    put32(&p, z64 ? U32MAX : cd_size);
    put32(&p, z64 ? U32MAX : cd_start);
    put16(&p, 0);
    mx__writer_write(&w, b, (size_t)(p - b));
  }
  st = mx__writer_close(&w, st);
done:
  for (int64_t i = 0; i < n; i++) free(es[i].name);
  free(es);
  return st;
}
