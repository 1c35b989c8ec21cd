/* safetensors.c — safetensors load (zero-copy views of the mapping), save,
 * and sharded checkpoints (model.safetensors.index.json).
 *
 * Layout: u64 little-endian N | N bytes of JSON | data. The JSON maps each
 * tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
 * relative to the data section) plus an optional "__metadata__" object of
 * string -> string. */
#include "io/io_internal.h"

#include <cjson/cJSON.h>
#include <libgen.h>
#include <stdarg.h>
#include <string.h>

/* The spec caps the header at 100 MB; so do we (it bounds the JSON parse). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

static const struct {
  const char *name;
  int dtype, file_size;
  bool is_signed;
} st_dtypes[] = {
    {"BOOL", MX_BOOL, 1, false},       {"U8", MX_UINT8, 1, false},
    {"I8", MX_INT32, 1, true},         {"I16", MX_INT32, 2, true},
    {"U16", MX_UINT32, 2, false},      {"U32", MX_UINT32, 4, false},
    {"I32", MX_INT32, 4, true},        {"I64", MX_INT64, 8, true},
    {"F16", MX_FLOAT16, 2, true},      {"BF16", MX_BFLOAT16, 2, true},
    {"F32", MX_FLOAT32, 4, true},      {"F64", MX_FLOAT64, 8, true},
};

static int st_find_dtype(const char *s) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
    if (!strcmp(st_dtypes[i].name, s)) return (int)i;
  return -1;
}

static const char *st_dtype_name(mx_dtype dt) {
  switch (dt) {
    case MX_BOOL: return "BOOL";
    case MX_UINT8: return "U8";
    case MX_UINT32: return "U32";
    case MX_INT32: return "I32";
    case MX_INT64: return "I64";
    case MX_FLOAT16: return "F16";
    case MX_BFLOAT16: return "BF16";
    case MX_FLOAT32: return "F32";
    case MX_FLOAT64: return "F64";
    default: return NULL;
  }
}

/* An integral JSON number in [0, 2^53]. */
static bool json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return false;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return false;
  *out = (uint64_t)d;
  return true;
}

/* Widens I8/I16/U16 elements to 32-bit (mxc has no 8/16-bit integers). */
static mx_array *st_widen(const uint8_t *p, uint64_t count, int file_size, bool is_signed,
                          mx_dtype dt, const int64_t *shape, int ndim, const char *file) {
  uint32_t *out = malloc(count ? count * 4 : 1);
  if (!out) {
    MX__IOERR(MX_ERR_OOM, file, "out of memory widening %llu elements",
              (unsigned long long)count);
    return NULL;
  }
  for (uint64_t i = 0; i < count; i++) {
    uint64_t raw = mx__load_le(p + i * (uint64_t)file_size, file_size);
    int64_t v = (int64_t)raw;
    if (is_signed && file_size == 1) v = (int8_t)raw;
    if (is_signed && file_size == 2) v = (int16_t)raw;
    out[i] = (uint32_t)v;
  }
  return mx__array_from_heap(out, dt, shape, ndim);
}

typedef struct {
  uint64_t begin, end;
  int64_t idx;
} st_span;

static int span_cmp(const void *a, const void *b) {
  const st_span *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static const char *name_keyof(void *ctx, int64_t i, size_t *len) {
  const char **names = ctx;
  *len = strlen(names[i]);
  return names[i];
}

int mx__safetensors_parse(mx__mapping *m, mx__sink *s) {
  const char *file = m->path;
  if (m->size < 8)
    return MX__IOERR(MX_ERR_FORMAT, file, "truncated: %zu bytes, a safetensors file needs at "
                     "least 8", m->size);
  uint64_t hlen = mx__load_le(m->data, 8);
  if (hlen > m->size - 8)
    return MX__IOERR(MX_ERR_FORMAT, file,
                     "header length %llu is past the end of the file (%zu bytes)",
                     (unsigned long long)hlen, m->size);
  if (hlen > ST_MAX_HEADER)
    return MX__IOERR(MX_ERR_FORMAT, file, "header length %llu exceeds the 100 MB limit",
                     (unsigned long long)hlen);
  if (hlen < 2 || m->data[8] != '{')
    return MX__IOERR(MX_ERR_FORMAT, file, "header is not a JSON object");
  const char *hdr = (const char *)m->data + 8;
  if (!mx__io_utf8_valid(hdr, (size_t)hlen)) {
    /* trailing NULs are not allowed either; report UTF-8 first */
    return MX__IOERR(MX_ERR_FORMAT, file, "header is not valid UTF-8");
  }
  cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return MX__IOERR(MX_ERR_FORMAT, file, "header is not valid JSON");
  }
  size_t data_start = 8 + (size_t)hlen;
  uint64_t data_size = m->size - data_start;
  int st = MX_OK;
  int64_t n = cJSON_GetArraySize(root);
  st_span *spans = calloc((size_t)n + 1, sizeof *spans);
  const char **names = calloc((size_t)n + 1, sizeof *names);
  mx__strset seen = {0};
  int64_t nt = 0;
  bool have_meta = false;
  if (!spans || !names) {
    st = mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
    goto done;
  }
  /* Pass 1: validate every entry (before any array is created). */
  for (cJSON *e = root->child; e && !st; e = e->next) {
    const char *name = e->string;
    if (!strcmp(name, "__metadata__")) {
      if (have_meta) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "duplicate __metadata__");
        break;
      }
      have_meta = true;
      if (!cJSON_IsObject(e)) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "__metadata__ is not an object");
        break;
      }
      for (cJSON *kv = e->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv)) {
          st = MX__IOERR(MX_ERR_FORMAT, file, "__metadata__ value of '%s' is not a string",
                         kv->string);
          break;
        }
        if (s->metadata) {
          mx_meta_value v = {.type = MX_META_STRING};
          size_t len = strlen(kv->valuestring);
          v.v.str.data = malloc(len + 1);
          if (!v.v.str.data) {
            st = mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
            break;
          }
          memcpy(v.v.str.data, kv->valuestring, len + 1);
          v.v.str.len = len;
          st = mx__metadata_add_owned(s->metadata, kv->string, strlen(kv->string), &v);
          mx__meta_value_clear(&v);
          if (st) {
            mx__prefix_error("%s: __metadata__", file);
            break;
          }
        }
      }
      continue;
    }
    if (!*name) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "empty tensor name");
      break;
    }
    if (mx__strset_put(&seen, name, strlen(name), nt, name_keyof, names) != -1) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "duplicate tensor name '%s'", name);
      break;
    }
    names[nt] = name;
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(shape) ||
        !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
      st = MX__IOERR(MX_ERR_FORMAT, file,
                     "tensor '%s': needs \"dtype\", \"shape\" and two \"data_offsets\"", name);
      break;
    }
    int di = st_find_dtype(dt->valuestring);
    if (di < 0) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': unknown or unsupported dtype '%.32s'",
                     name, dt->valuestring);
      break;
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > MX_MAX_NDIM) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': %d dimensions (mxc supports %d)", name,
                     ndim, MX_MAX_NDIM);
      break;
    }
    int64_t dims[MX_MAX_NDIM];
    int k = 0;
    for (cJSON *d = shape->child; d; d = d->next, k++) {
      uint64_t v;
      if (!json_uint(d, &v)) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': shape entries must be non-negative "
                       "integers", name);
        break;
      }
      dims[k] = (int64_t)v;
    }
    if (st) break;
    uint64_t count, nbytes, b, en;
    if (!mx__dims_product(dims, ndim, &count) ||
        !mx__mul_ok(count, (uint64_t)st_dtypes[di].file_size, &nbytes)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': dimension product overflows", name);
      break;
    }
    if (!json_uint(offs->child, &b) || !json_uint(offs->child->next, &en) || b > en) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': bad data_offsets", name);
      break;
    }
    if (en > data_size) {
      st = MX__IOERR(MX_ERR_FORMAT, file,
                     "tensor '%s': data_offsets [%llu, %llu] outside the data (%llu bytes)",
                     name, (unsigned long long)b, (unsigned long long)en,
                     (unsigned long long)data_size);
      break;
    }
    if (en - b != nbytes) {
      st = MX__IOERR(MX_ERR_FORMAT, file,
                     "tensor '%s': shape/size mismatch: %llu bytes for %llu %s elements", name,
                     (unsigned long long)(en - b), (unsigned long long)count,
                     st_dtypes[di].name);
      break;
    }
    if (!mx__io_utf8_valid(name, strlen(name))) { /* cJSON may decode \u escapes badly */
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor name is not valid UTF-8");
      break;
    }
    spans[nt] = (st_span){b, en, nt};
    nt++;
  }
  if (st) goto done;
  /* Overlapping tensors (empty ones occupy nothing). */
  {
    st_span *sorted = malloc((size_t)nt * sizeof *sorted + 1);
    if (!sorted) {
      st = mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
      goto done;
    }
    memcpy(sorted, spans, (size_t)nt * sizeof *sorted);
    qsort(sorted, (size_t)nt, sizeof *sorted, span_cmp);
    uint64_t prev_end = 0;
    int64_t prev = -1;
    for (int64_t i = 0; i < nt; i++) {
      if (sorted[i].begin == sorted[i].end) continue;
      if (prev >= 0 && sorted[i].begin < prev_end) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "tensors '%s' and '%s' overlap", names[prev],
                       names[sorted[i].idx]);
        break;
      }
      prev = sorted[i].idx;
      prev_end = sorted[i].end;
    }
    free(sorted);
    if (st) goto done;
  }
  /* Pass 2: build arrays (or infos) in header order. */
  int64_t t = 0;
  for (cJSON *e = root->child; e && !st; e = e->next) {
    if (!strcmp(e->string, "__metadata__")) continue;
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    int di = st_find_dtype(cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring);
    int ndim = cJSON_GetArraySize(shape), k = 0;
    int64_t dims[MX_MAX_NDIM];
    for (cJSON *d = shape->child; d; d = d->next) dims[k++] = (int64_t)d->valuedouble;
    uint64_t begin = spans[t].begin, nbytes = spans[t].end - spans[t].begin;
    t++;
    if (s->list_only) {
      st = mx__sink_info(s, e->string, st_dtypes[di].name, st_dtypes[di].dtype, dims, ndim,
                         data_start + begin, nbytes);
      continue;
    }
    mx_array *a;
    if ((int)mx_dtype_size(st_dtypes[di].dtype) != st_dtypes[di].file_size) {
      a = st_widen(m->data + data_start + begin, nbytes / (uint64_t)st_dtypes[di].file_size,
                   st_dtypes[di].file_size, st_dtypes[di].is_signed, st_dtypes[di].dtype, dims,
                   ndim, file);
    } else {
      a = mx__mapping_view(m, data_start + (size_t)begin, st_dtypes[di].dtype, dims, ndim, NULL,
                           s->opt && s->opt->copy);
    }
    st = mx__sink_array(s, file, e->string, a);
  }
done:
  mx__strset_free(&seen);
  free(spans);
  free(names);
  cJSON_Delete(root);
  return st;
}

/* ---- save ------------------------------------------------------------------------ */

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t nc = MX_MAX(b->cap * 2, b->len + n + 256);
    char *nb = realloc(b->buf, nc);
    if (!nb) {
      b->oom = true;
      return;
    }
    b->buf = nb;
    b->cap = nc;
  }
  memcpy(b->buf + b->len, s, n);
  b->len += n;
  b->buf[b->len] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  sb_put(b, tmp, (size_t)MX_MIN(n, (int)sizeof tmp - 1));
}
static void sb_json_string(sbuf *b, const char *s, size_t n) {
  sb_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sb_put(b, e, 2);
    } else if (c < 0x20) {
      sb_fmt(b, "\\u%04x", c);
    } else {
      sb_put(b, (const char *)&c, 1);
    }
  }
  sb_put(b, "\"", 1);
}

/* The reference writer's order: larger element sizes first, then by name,
 * so that with the 8-aligned header every tensor is naturally aligned. */
typedef struct {
  const char *name;
  size_t elsize;
} st_order;

static int cmp_order(const void *a, const void *b) {
  const st_order *x = a, *y = b;
  if (x->elsize != y->elsize) return x->elsize > y->elsize ? -1 : 1;
  return strcmp(x->name, y->name);
}

int mx_save_safetensors(const char *path, const mx_map *arrays, const mx_metadata *metadata) {
  if (!path || !arrays)
    return mx__set_error(MX_ERR_INVALID_ARG, "save_safetensors: NULL argument");
  int64_t n = mx_map_size(arrays);
  const char **names = malloc((size_t)n * sizeof *names + 1);
  mx_array **arrs = malloc((size_t)n * sizeof *arrs + 1);
  sbuf hb = {0};
  int st = MX_OK;
  if (!names || !arrs) {
    st = mx__set_error(MX_ERR_OOM, "save_safetensors: out of memory");
    goto done;
  }
  {
    st_order *ord = malloc((size_t)n * sizeof *ord + 1);
    if (!ord) {
      st = mx__set_error(MX_ERR_OOM, "save_safetensors: out of memory");
      goto done;
    }
    for (int64_t i = 0; i < n; i++) {
      ord[i].name = mx_map_key(arrays, i);
      ord[i].elsize = mx_dtype_size(mx_array_dtype(mx_map_value(arrays, i)));
    }
    qsort(ord, (size_t)n, sizeof *ord, cmp_order);
    for (int64_t i = 0; i < n; i++) names[i] = ord[i].name;
    free(ord);
  }
  /* header: {"__metadata__":{...},"name":{"dtype":..,"shape":[..],"data_offsets":[b,e]},...} */
  sb_str(&hb, "{");
  bool first = true;
  for (int64_t i = 0; i < mx_metadata_size(metadata); i++) {
    const mx_meta_value *v = mx_metadata_value(metadata, i);
    const char *k = mx_metadata_key(metadata, i);
    if (v->type != MX_META_STRING) {
      st = MX__IOERR(MX_ERR_INVALID_ARG, path,
                     "safetensors metadata must be strings; '%s' is %s", k,
                     mx_meta_type_name(v->type));
      goto done;
    }
    sb_str(&hb, first ? "\"__metadata__\":{" : ",");
    first = false;
    sb_json_string(&hb, k, strlen(k));
    sb_str(&hb, ":");
    sb_json_string(&hb, v->v.str.data, v->v.str.len);
  }
  if (!first) sb_str(&hb, "}");
  uint64_t offset = 0;
  for (int64_t i = 0; i < n; i++) {
    mx_array *a = mx_map_get(arrays, names[i]);
    arrs[i] = a;
    const char *dn = st_dtype_name(mx_array_dtype(a));
    if (!dn) {
      st = MX__IOERR(MX_ERR_DTYPE, path, "tensor '%s': dtype %s cannot be saved", names[i],
                     mx_dtype_name(mx_array_dtype(a)));
      goto done;
    }
    if (!strcmp(names[i], "__metadata__") || !*names[i] ||
        !mx__io_utf8_valid(names[i], strlen(names[i]))) {
      st = MX__IOERR(MX_ERR_INVALID_ARG, path, "invalid tensor name '%s'", names[i]);
      goto done;
    }
    sb_str(&hb, (first && i == 0) ? "" : ",");
    sb_json_string(&hb, names[i], strlen(names[i]));
    sb_fmt(&hb, ":{\"dtype\":\"%s\",\"shape\":[", dn);
    for (int d = 0; d < mx_array_ndim(a); d++)
      sb_fmt(&hb, "%s%lld", d ? "," : "", (long long)mx_array_shape(a)[d]);
    uint64_t nb = mx_array_nbytes(a);
    sb_fmt(&hb, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
           (unsigned long long)(offset + nb));
    offset += nb;
  }
  sb_str(&hb, "}");
  while (!hb.oom && hb.len % 8) sb_put(&hb, " ", 1); /* as the reference writer pads */
  if (hb.oom) {
    st = mx__set_error(MX_ERR_OOM, "save_safetensors: out of memory");
    goto done;
  }
  /* Evaluate everything before touching the file. */
  if (n && (st = mx_eval(arrs, (int)n)) != MX_OK) {
    mx__prefix_error("%s", path);
    goto done;
  }
  mx__writer w;
  if ((st = mx__writer_open(&w, path)) != MX_OK) goto done;
  uint8_t lenb[8];
  mx__store_le(lenb, hb.len, 8);
  mx__writer_write(&w, lenb, 8);
  mx__writer_write(&w, hb.buf, hb.len);
  for (int64_t i = 0; i < n && !w.status; i++) {
    size_t nb = mx_array_nbytes(arrs[i]);
    if (!nb) continue;
    const void *p = mx_array_data(arrs[i]);
    if (!p) {
      st = mx__prefix_error("%s: tensor '%s'", path, names[i]);
      break;
    }
    mx__writer_write(&w, p, nb);
  }
  st = mx__writer_close(&w, st);
done:
  free(names);
  free(arrs);
  free(hb.buf);
  return st;
}

/* ---- sharded checkpoints ------------------------------------------------------------ */

static int read_small_file(const char *path, char **out, size_t *len) {
  mx__mapping *m = mx__mapping_open(path);
  if (!m) return mx_last_status();
  if (m->size > ST_MAX_HEADER) {
    mx__mapping_release(m);
    return MX__IOERR(MX_ERR_FORMAT, path, "index file too large");
  }
  char *b = malloc(m->size + 1);
  if (!b) {
    mx__mapping_release(m);
    return mx__set_error(MX_ERR_OOM, "%s: out of memory", path);
  }
  memcpy(b, m->data, m->size);
  b[m->size] = 0;
  *len = m->size;
  *out = b;
  mx__mapping_release(m);
  return MX_OK;
}

int mx__safetensors_index_load(const char *path, const mx_load_options *opt, mx__sink *s);
int mx__safetensors_index_load(const char *path, const mx_load_options *opt, mx__sink *s) {
  char *text = NULL;
  size_t len = 0;
  int st = read_small_file(path, &text, &len);
  if (st) return st;
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
    cJSON_Delete(root);
    return MX__IOERR(MX_ERR_FORMAT, path, "not a safetensors index (no \"weight_map\" object)");
  }
  cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
  if (s->metadata && cJSON_IsObject(meta)) {
    for (cJSON *kv = meta->child; kv && !st; kv = kv->next) {
      mx_meta_value v = {0};
      if (cJSON_IsString(kv)) {
        v.type = MX_META_STRING;
        v.v.str.data = kv->valuestring;
        v.v.str.len = strlen(kv->valuestring);
      } else if (cJSON_IsNumber(kv)) {
        double d = kv->valuedouble;
        if (d == (double)(int64_t)d && d < 9.2e18 && d > -9.2e18) {
          v.type = MX_META_INT64;
          v.v.i = (int64_t)d;
        } else {
          v.type = MX_META_FLOAT64;
          v.v.f = d;
        }
      } else if (cJSON_IsBool(kv)) {
        v.type = MX_META_BOOL;
        v.v.b = cJSON_IsTrue(kv);
      } else {
        continue;
      }
      st = mx_metadata_set(s->metadata, kv->string, &v);
    }
  }
  /* Directory of the index. */
  char *dircopy = strdup(path);
  if (!dircopy) {
    cJSON_Delete(root);
    return mx__set_error(MX_ERR_OOM, "%s: out of memory", path);
  }
  const char *dir = dirname(dircopy);
  /* Load each distinct shard once, in order of first appearance. */
  for (cJSON *e = wm->child; e && !st; e = e->next) {
    if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..")) {
      st = MX__IOERR(MX_ERR_FORMAT, path, "weight_map entry '%s' does not name a shard file "
                     "in the same directory", e->string);
      break;
    }
    /* each shard is parsed once, at its first appearance */
    bool seen_shard = false;
    for (cJSON *p = wm->child; p != e; p = p->next)
      if (cJSON_IsString(p) && !strcmp(p->valuestring, e->valuestring)) seen_shard = true;
    if (seen_shard) continue;
    mx_map *shard = NULL;
    char shard_path[4096];
    snprintf(shard_path, sizeof shard_path, "%s/%s", dir, e->valuestring);
    mx__mapping *m = mx__mapping_open(shard_path);
    if (!m) {
      st = mx__prefix_error("%s", path);
      break;
    }
    mx__sink sub = {.opt = opt, .list_only = s->list_only};
    sub.arrays = s->list_only ? NULL : mx_map_new();
    st = mx__safetensors_parse(m, &sub);
    mx__mapping_release(m);
    shard = sub.arrays;
    if (!st && s->list_only) {
      for (int64_t i = 0; i < sub.ninfos && !st; i++) {
        mx_tensor_info *t = &sub.infos[i];
        st = mx__sink_info(s, t->name, t->file_dtype, t->dtype, t->shape, t->ndim, t->offset,
                           t->nbytes);
      }
    }
    mx_tensor_info_free(sub.infos, sub.ninfos);
    if (!st && shard) {
      for (int64_t i = 0; i < mx_map_size(shard) && !st; i++)
        st = mx__sink_array(s, path, mx_map_key(shard, i), mx_array_retain(mx_map_value(shard, i)));
    }
    mx_map_free(shard);
  }
  /* Every tensor named in the weight map must have been found. */
  for (cJSON *e = wm->child; e && !st && !s->list_only; e = e->next)
    if (!mx_map_has(s->arrays, e->string))
      st = MX__IOERR(MX_ERR_FORMAT, path, "tensor '%s' is not in its shard '%s'", e->string,
                     e->valuestring);
  free(dircopy);
  cJSON_Delete(root);
  return st;
}
