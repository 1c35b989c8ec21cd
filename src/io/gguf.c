/* gguf.c — GGUF v2/v3 read and write.
 *
 * "GGUF" | u32 version | u64 n_tensors | u64 n_kv |
 * n_kv x (string key, u32 type, value) |
 * n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type,
 *              u64 offset) |
 * padding to general.alignment (default 32) | data (each tensor at an
 * aligned offset from the start of the data section).
 * Strings are u64 length + bytes; arrays are u32 element type + u64 count +
 * elements. ne[0] is the fastest-varying axis, so shapes are reversed.
 *
 * Quantized tensors: Q4_0, Q4_1 and Q8_0 become MLX's affine quantized
 * triple (packed uint32 weights, float16 scales and biases per group of 32)
 * exactly as MLX's gguf loader builds them; Q5_0, Q5_1, Q4_K, Q5_K and Q6_K
 * are dequantized to float16 (block formats as ggml defines them). */
#include "io/io_internal.h"

#include <string.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH 8
#define GGUF_MAX_ARRAY ((uint64_t)1 << 24)

/* ---- ggml types --------------------------------------------------------------- */

enum {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
  T_Q8_1 = 9, T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15,
  T_I8 = 24, T_I16 = 25, T_I32 = 26, T_I64 = 27, T_F64 = 28, T_BF16 = 30,
};

typedef struct {
  const char *name;
  int block, size; /* elements per block, bytes per block; 0: unknown id */
} ggml_type;

static const ggml_type ggml_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},      [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 36},     [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},   [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},  [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110}, [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},        [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},   [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (int)(sizeof ggml_types / sizeof *ggml_types)

static const ggml_type *type_info(uint32_t t) {
  return t < (uint32_t)N_GGML_TYPES && ggml_types[t].size ? &ggml_types[t] : NULL;
}

/* How a ggml type loads: a plain dtype (view or widen), a triple, or
 * dequantized float16. -1: not loadable. */
static int load_dtype(uint32_t t, bool dequantize) {
  switch (t) {
    case T_F32: return MX_FLOAT32;
    case T_F16: return MX_FLOAT16;
    case T_BF16: return MX_BFLOAT16;
    case T_F64: return MX_FLOAT64;
    case T_I8: case T_I16: case T_I32: return MX_INT32;
    case T_I64: return MX_INT64;
    case T_Q4_0: case T_Q4_1: case T_Q8_0: return dequantize ? MX_FLOAT16 : -2; /* triple */
    case T_Q5_0: case T_Q5_1: case T_Q4_K: case T_Q5_K: case T_Q6_K: return MX_FLOAT16;
    default: return -1;
  }
}

/* ---- metadata values ------------------------------------------------------------- */

static size_t value_min_size(uint32_t t) {
  switch (t) {
    case MX_META_UINT8: case MX_META_INT8: case MX_META_BOOL: return 1;
    case MX_META_UINT16: case MX_META_INT16: return 2;
    case MX_META_UINT32: case MX_META_INT32: case MX_META_FLOAT32: return 4;
    case MX_META_UINT64: case MX_META_INT64: case MX_META_FLOAT64: case MX_META_STRING: return 8;
    case MX_META_ARRAY: return 12;
    default: return 0;
  }
}

static bool read_string(mx__rd *r, const char **s, size_t *len) {
  uint64_t n = mx__rd_u64(r);
  const uint8_t *p = mx__rd_bytes(r, n);
  if (!p) return false;
  *s = (const char *)p;
  *len = (size_t)n;
  return true;
}

static int read_value(mx__rd *r, uint32_t type, mx_meta_value *v, int depth, const char *file,
                      const char *key) {
  memset(v, 0, sizeof *v);
  v->type = (mx_meta_type)type;
  switch (type) {
    case MX_META_UINT8: v->v.u = mx__rd_u8(r); break;
    case MX_META_INT8: v->v.i = (int8_t)mx__rd_u8(r); break;
    case MX_META_UINT16: v->v.u = mx__rd_u16(r); break;
    case MX_META_INT16: v->v.i = (int16_t)mx__rd_u16(r); break;
    case MX_META_UINT32: v->v.u = mx__rd_u32(r); break;
    case MX_META_INT32: v->v.i = (int32_t)mx__rd_u32(r); break;
    case MX_META_UINT64: v->v.u = mx__rd_u64(r); break;
    case MX_META_INT64: v->v.i = (int64_t)mx__rd_u64(r); break;
    case MX_META_BOOL: v->v.b = mx__rd_u8(r) != 0; break;
    case MX_META_FLOAT32: {
      union { uint32_t u; float f; } c = {.u = mx__rd_u32(r)};
      v->v.f = c.f;
      break;
    }
    case MX_META_FLOAT64: {
      union { uint64_t u; double f; } c = {.u = mx__rd_u64(r)};
      v->v.f = c.f;
      break;
    }
    case MX_META_STRING: {
      const char *s;
      size_t len;
      if (!read_string(r, &s, &len)) break;
      v->v.str.data = malloc(len + 1);
      if (!v->v.str.data) return mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
      memcpy(v->v.str.data, s, len);
      v->v.str.data[len] = 0;
      v->v.str.len = len;
      break;
    }
    case MX_META_ARRAY: {
      if (depth >= GGUF_MAX_DEPTH)
        return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': arrays nested too deeply", key);
      uint32_t et = mx__rd_u32(r);
      uint64_t n = mx__rd_u64(r);
      if (r->failed) break;
      size_t mins = value_min_size(et);
      if (!mins)
        return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': unknown array element type %u", key, et);
      if (n > mx__rd_left(r) / mins)
        return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': array of %llu items is past the end "
                         "of the file", key, (unsigned long long)n);
      if (n > GGUF_MAX_ARRAY)
        return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': array of %llu items is too long", key,
                         (unsigned long long)n);
      v->v.arr.type = (mx_meta_type)et;
      if (!n) break;
      v->v.arr.items = calloc((size_t)n, sizeof(mx_meta_value));
      if (!v->v.arr.items) return mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
      for (uint64_t i = 0; i < n; i++) {
        int st = read_value(r, et, &v->v.arr.items[i], depth + 1, file, key);
        v->v.arr.count = (size_t)i + 1;
        if (st) return st;
        if (r->failed) break;
      }
      break;
    }
    default:
      return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': unknown value type %u", key, type);
  }
  if (r->failed) return MX__IOERR(MX_ERR_FORMAT, file, "key '%s': truncated value", key);
  return MX_OK;
}

/* ---- conversions --------------------------------------------------------------------- */

typedef struct {
  const uint8_t *src;
  uint32_t type;
  uint8_t *w;          /* packed weights (triple) */
  uint16_t *scales, *biases;
  uint16_t *out;       /* float16 output (dequantize) */
} conv_ctx;

static inline float h2f(const uint8_t *p) { return mx__f16_to_f32((uint16_t)mx__load_le(p, 2)); }

/* One 32-element block to the triple: MLX's packing puts element k of the
 * group in bits 4*(k%8) of word k/8 (4-bit) or bits 8*(k%4) (8-bit). */
static void triple_range(void *vctx, int64_t b0, int64_t b1) {
  conv_ctx *c = vctx;
  for (int64_t b = b0; b < b1; b++) {
    if (c->type == T_Q8_0) {
      const uint8_t *blk = c->src + b * 34;
      uint16_t d = (uint16_t)mx__load_le(blk, 2);
      c->scales[b] = d;
      c->biases[b] = mx__f32_to_f16(-128.0f * mx__f16_to_f32(d));
      uint8_t *w = c->w + b * 32;
      for (int j = 0; j < 32; j++) w[j] = blk[2 + j] ^ 0x80; /* int8 + 128 */
      continue;
    }
    int bs = c->type == T_Q4_0 ? 18 : 20;
    const uint8_t *blk = c->src + b * bs;
    uint16_t d = (uint16_t)mx__load_le(blk, 2);
    c->scales[b] = d;
    c->biases[b] = c->type == T_Q4_0 ? mx__f32_to_f16(-8.0f * mx__f16_to_f32(d))
                                     : (uint16_t)mx__load_le(blk + 2, 2);
    const uint8_t *qs = blk + (c->type == T_Q4_0 ? 2 : 4);
    uint8_t *w = c->w + b * 16;
    /* element j (< 16) is the low nibble of qs[j], element j + 16 its high nibble */
    for (int j = 0; j < 8; j++) {
      w[j] = (uint8_t)((qs[2 * j] & 0x0f) | ((qs[2 * j + 1] & 0x0f) << 4));
      w[8 + j] = (uint8_t)((qs[2 * j] >> 4) | (qs[2 * j + 1] & 0xf0));
    }
  }
}

static void get_scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* One block to float16 values (as ggml's dequantize_row_* define them). */
static void dequant_range(void *vctx, int64_t b0, int64_t b1) {
  conv_ctx *c = vctx;
  const ggml_type *ti = type_info(c->type);
  float y[256];
  for (int64_t b = b0; b < b1; b++) {
    const uint8_t *x = c->src + b * ti->size;
    switch (c->type) {
      case T_Q4_0: case T_Q4_1: {
        float d = h2f(x), m = c->type == T_Q4_1 ? h2f(x + 2) : 0;
        const uint8_t *qs = x + (c->type == T_Q4_0 ? 2 : 4);
        for (int j = 0; j < 16; j++) {
          int lo = qs[j] & 0x0f, hi = qs[j] >> 4;
          if (c->type == T_Q4_0) lo -= 8, hi -= 8;
          y[j] = (float)lo * d + m;
          y[j + 16] = (float)hi * d + m;
        }
        break;
      }
      case T_Q8_0: {
        float d = h2f(x);
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)x[2 + j] * d;
        break;
      }
      case T_Q5_0: case T_Q5_1: {
        bool one = c->type == T_Q5_1;
        float d = h2f(x), m = one ? h2f(x + 2) : 0;
        uint32_t qh = (uint32_t)mx__load_le(x + (one ? 4 : 2), 4);
        const uint8_t *qs = x + (one ? 8 : 6);
        for (int j = 0; j < 16; j++) {
          int h0 = (int)(((qh >> j) << 4) & 0x10), h1 = (int)((qh >> (j + 12)) & 0x10);
          int x0 = (qs[j] & 0x0f) | h0, x1 = (qs[j] >> 4) | h1;
          if (!one) x0 -= 16, x1 -= 16;
          y[j] = (float)x0 * d + m;
          y[j + 16] = (float)x1 * d + m;
        }
        break;
      }
      case T_Q4_K: case T_Q5_K: {
        bool five = c->type == T_Q5_K;
        float d = h2f(x), dmin = h2f(x + 2);
        const uint8_t *sc = x + 4, *qh = x + 16, *ql = x + (five ? 48 : 16);
        int is = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 256; j += 64) {
          int s1, m1, s2, m2;
          get_scale_min_k4(is, sc, &s1, &m1);
          get_scale_min_k4(is + 1, sc, &s2, &m2);
          float d1 = d * (float)s1, mm1 = dmin * (float)m1;
          float d2 = d * (float)s2, mm2 = dmin * (float)m2;
          for (int l = 0; l < 32; l++) {
            int q = ql[l] & 0x0f;
            if (five && (qh[l] & u1)) q += 16;
            y[j + l] = d1 * (float)q - mm1;
          }
          for (int l = 0; l < 32; l++) {
            int q = ql[l] >> 4;
            if (five && (qh[l] & u2)) q += 16;
            y[j + 32 + l] = d2 * (float)q - mm2;
          }
          ql += 32;
          is += 2;
          u1 = (uint8_t)(u1 << 2);
          u2 = (uint8_t)(u2 << 2);
        }
        break;
      }
      case T_Q6_K: {
        const uint8_t *ql = x, *qh = x + 128;
        const int8_t *sc = (const int8_t *)(x + 192);
        float d = h2f(x + 208);
        for (int n = 0; n < 256; n += 128) {
          for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[n + l] = d * (float)sc[is] * (float)q1;
            y[n + l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[n + l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[n + l + 96] = d * (float)sc[is + 6] * (float)q4;
          }
          ql += 64;
          qh += 32;
          sc += 8;
        }
        break;
      }
      default: break;
    }
    for (int j = 0; j < ti->block; j++) c->out[b * ti->block + j] = mx__f32_to_f16(y[j]);
  }
}

static mx_array *widen_ints(const uint8_t *p, uint64_t count, int fs, const int64_t *shape,
                            int ndim, const char *file) {
  int32_t *out = malloc(count ? count * 4 : 1);
  if (!out) {
    MX__IOERR(MX_ERR_OOM, file, "out of memory");
    return NULL;
  }
  for (uint64_t i = 0; i < count; i++)
    out[i] = fs == 1 ? (int8_t)p[i] : (int16_t)mx__load_le(p + 2 * i, 2);
  return mx__array_from_heap(out, MX_INT32, shape, ndim);
}

/* name minus ".weight", plus suffix (MLX's naming of the triple). */
static void triple_name(char *out, size_t n, const char *name, const char *suffix) {
  size_t len = strlen(name);
  if (len >= 7 && !strcmp(name + len - 7, ".weight")) len -= 7;
  snprintf(out, n, "%.*s%s", (int)len, name, suffix);
}

/* ---- parse ---------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  size_t name_len;
  uint32_t type;
  int ndim;
  int64_t shape[MX_MAX_NDIM]; /* row-major */
  uint64_t count, offset, nbytes;
} gg_tensor;

typedef struct {
  uint64_t begin, end;
  int64_t idx;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static const char *tensor_keyof(void *ctx, int64_t i, size_t *len) {
  gg_tensor *t = ctx;
  *len = t[i].name_len;
  return t[i].name;
}

static int make_arrays(mx__mapping *m, mx__sink *s, gg_tensor *t, size_t data_start) {
  const char *file = m->path;
  bool deq = s->opt && s->opt->gguf_dequantize;
  char name[1100];
  snprintf(name, sizeof name, "%.*s", (int)MX_MIN(t->name_len, 1000), t->name);
  int dt = load_dtype(t->type, deq);
  const ggml_type *ti = type_info(t->type);
  const uint8_t *src = m->data + data_start + t->offset;
  if (dt == -1)
    return MX__IOERR(MX_ERR_UNSUPPORTED, file,
                     "tensor '%s': ggml type %s cannot be loaded (supported: F32, F16, BF16, "
                     "F64, I8-I64, Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                     name, ti->name);
  if (t->type == T_I8 || t->type == T_I16)
    return mx__sink_array(s, file, name,
                          widen_ints(src, t->count, t->type == T_I8 ? 1 : 2, t->shape, t->ndim,
                                     file));
  if (ti->block == 1)
    return mx__sink_array(s, file, name,
                          mx__mapping_view(m, data_start + (size_t)t->offset, (mx_dtype)dt,
                                           t->shape, t->ndim, NULL, s->opt && s->opt->copy));
  uint64_t nblocks = t->count / (uint64_t)ti->block;
  conv_ctx c = {.src = src, .type = t->type};
  if (dt == MX_FLOAT16) { /* dequantize */
    c.out = malloc(t->count ? t->count * 2 : 1);
    if (!c.out) return MX__IOERR(MX_ERR_OOM, file, "tensor '%s': out of memory", name);
    mx__parallel_for((int64_t)nblocks, 64, dequant_range, &c);
    return mx__sink_array(s, file, name, mx__array_from_heap(c.out, MX_FLOAT16, t->shape,
                                                             t->ndim));
  }
  /* triple */
  int bits = t->type == T_Q8_0 ? 8 : 4;
  int64_t wshape[MX_MAX_NDIM], sshape[MX_MAX_NDIM];
  int nd = t->ndim ? t->ndim : 1;
  for (int i = 0; i < nd; i++) wshape[i] = sshape[i] = t->ndim ? t->shape[i] : 1;
  wshape[nd - 1] = wshape[nd - 1] / 32 * bits; /* a multiple of 32 (checked): no overflow */
  sshape[nd - 1] = sshape[nd - 1] / 32;
  c.w = malloc(t->count * (uint64_t)bits / 8 + 4);
  c.scales = malloc(nblocks * 2 + 2);
  c.biases = malloc(nblocks * 2 + 2);
  if (!c.w || !c.scales || !c.biases) {
    free(c.w);
    free(c.scales);
    free(c.biases);
    return MX__IOERR(MX_ERR_OOM, file, "tensor '%s': out of memory", name);
  }
  mx__parallel_for((int64_t)nblocks, 256, triple_range, &c);
  char sname[1100], bname[1100];
  triple_name(sname, sizeof sname, name, ".scales");
  triple_name(bname, sizeof bname, name, ".biases");
  int st = mx__sink_array(s, file, name, mx__array_from_heap(c.w, MX_UINT32, wshape, nd));
  mx_array *sa = mx__array_from_heap(c.scales, MX_FLOAT16, sshape, nd);
  mx_array *ba = mx__array_from_heap(c.biases, MX_FLOAT16, sshape, nd);
  if (!st) st = mx__sink_array(s, file, sname, sa);
  else mx_array_free(sa);
  if (!st) st = mx__sink_array(s, file, bname, ba);
  else mx_array_free(ba);
  return st;
}

int mx__gguf_parse(mx__mapping *m, mx__sink *s) {
  const char *file = m->path;
  mx__rd r;
  mx__rd_init(&r, m->data, m->size);
  uint32_t magic = mx__rd_u32(&r), version = mx__rd_u32(&r);
  uint64_t nt = mx__rd_u64(&r), nkv = mx__rd_u64(&r);
  if (r.failed) return MX__IOERR(MX_ERR_FORMAT, file, "truncated GGUF header");
  if (magic != GGUF_MAGIC) return MX__IOERR(MX_ERR_FORMAT, file, "not a GGUF file (bad magic)");
  if (version != 2 && version != 3)
    return MX__IOERR(MX_ERR_UNSUPPORTED, file, "GGUF version %u is not supported (2 and 3 are%s)",
                     version, version > 0xffff ? "; big-endian files are not supported" : "");
  if (nkv > mx__rd_left(&r) / 13)
    return MX__IOERR(MX_ERR_FORMAT, file, "%llu metadata entries cannot fit in the file",
                     (unsigned long long)nkv);
  int st = MX_OK;
  uint32_t alignment = GGUF_DEFAULT_ALIGNMENT;
  mx_metadata *tmp_meta = s->metadata ? NULL : mx_metadata_new();
  mx_metadata *meta = s->metadata ? s->metadata : tmp_meta;
  if (!meta) return mx_last_status();
  for (uint64_t i = 0; i < nkv && !st; i++) {
    const char *key;
    size_t klen;
    if (!read_string(&r, &key, &klen)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "truncated metadata key %llu", (unsigned long long)i);
      break;
    }
    char kbuf[256];
    snprintf(kbuf, sizeof kbuf, "%.*s", (int)MX_MIN(klen, 200), key);
    if (!klen || !mx__io_utf8_valid(key, klen)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "metadata key %llu is empty or not valid UTF-8",
                     (unsigned long long)i);
      break;
    }
    uint32_t type = mx__rd_u32(&r);
    mx_meta_value v;
    st = read_value(&r, type, &v, 0, file, kbuf);
    if (!st) {
      if (!strcmp(kbuf, "general.alignment")) {
        if (v.type != MX_META_UINT32 || v.v.u == 0 || (v.v.u & (v.v.u - 1)) || v.v.u > 65536)
          st = MX__IOERR(MX_ERR_FORMAT, file, "general.alignment must be a power-of-two uint32");
        else alignment = (uint32_t)v.v.u;
      }
      if (!st) {
        st = mx__metadata_add_owned(meta, key, klen, &v);
        if (st) mx__prefix_error("%s", file);
      }
    }
    mx__meta_value_clear(&v);
  }
  mx_metadata_free(tmp_meta);
  if (st) return st;
  if (nt > mx__rd_left(&r) / 24)
    return MX__IOERR(MX_ERR_FORMAT, file, "%llu tensors cannot fit in the file",
                     (unsigned long long)nt);
  gg_tensor *ts = calloc((size_t)nt + 1, sizeof *ts);
  span *spans = calloc((size_t)nt + 1, sizeof *spans);
  mx__strset seen = {0};
  if (!ts || !spans) {
    st = mx__set_error(MX_ERR_OOM, "%s: out of memory", file);
    goto done;
  }
  for (uint64_t i = 0; i < nt && !st; i++) {
    gg_tensor *t = &ts[i];
    if (!read_string(&r, &t->name, &t->name_len)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "truncated tensor info %llu", (unsigned long long)i);
      break;
    }
    char nm[256];
    snprintf(nm, sizeof nm, "%.*s", (int)MX_MIN(t->name_len, 200), t->name);
    if (!t->name_len || t->name_len > 1000 || !mx__io_utf8_valid(t->name, t->name_len)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor %llu: name is empty, too long or not valid "
                     "UTF-8", (unsigned long long)i);
      break;
    }
    if (mx__strset_put(&seen, t->name, t->name_len, (int64_t)i, tensor_keyof, ts) != -1) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "duplicate tensor name '%s'", nm);
      break;
    }
    uint32_t nd = mx__rd_u32(&r);
    if (nd > MX_MAX_NDIM) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': %u dimensions", nm, nd);
      break;
    }
    t->ndim = (int)nd;
    uint64_t ne[MX_MAX_NDIM];
    for (uint32_t d = 0; d < nd; d++) ne[d] = mx__rd_u64(&r);
    t->type = mx__rd_u32(&r);
    t->offset = mx__rd_u64(&r);
    if (r.failed) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': truncated tensor info", nm);
      break;
    }
    for (uint32_t d = 0; d < nd; d++) {
      if (ne[d] > ((uint64_t)1 << 62)) {
        st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': dimension %u is %llu", nm, d,
                       (unsigned long long)ne[d]);
        break;
      }
      t->shape[nd - 1 - d] = (int64_t)ne[d];
    }
    if (st) break;
    const ggml_type *ti = type_info(t->type);
    if (!ti) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': unknown ggml type %u", nm, t->type);
      break;
    }
    if (!mx__dims_product(t->shape, t->ndim, &t->count)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': dimension product overflows", nm);
      break;
    }
    if ((nd ? ne[0] : 1) % (uint64_t)ti->block) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': first dimension %llu is not a multiple "
                     "of the %s block size %d", nm, (unsigned long long)(nd ? ne[0] : 1),
                     ti->name, ti->block);
      break;
    }
    t->nbytes = t->count / (uint64_t)ti->block * (uint64_t)ti->size;
    if (t->offset % alignment) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': offset %llu is not a multiple of the "
                     "alignment %u", nm, (unsigned long long)t->offset, alignment);
      break;
    }
    spans[i] = (span){t->offset, 0, (int64_t)i};
    if (!mx__add_ok(t->offset, t->nbytes, &spans[i].end)) {
      st = MX__IOERR(MX_ERR_FORMAT, file, "tensor '%s': offset overflows", nm);
      break;
    }
  }
  if (st) goto done;
  size_t pos = mx__rd_pos(&r);
  size_t data_start = (pos + alignment - 1) / alignment * alignment;
  uint64_t data_size = data_start <= m->size ? m->size - data_start : 0;
  for (uint64_t i = 0; i < nt && !st; i++)
    if (spans[i].end > data_size)
      st = MX__IOERR(MX_ERR_FORMAT, file,
                     "tensor '%.*s': data [%llu, %llu) outside the data section (%llu bytes)",
                     (int)MX_MIN(ts[i].name_len, 200), ts[i].name,
                     (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end,
                     (unsigned long long)data_size);
  if (st) goto done;
  qsort(spans, (size_t)nt, sizeof *spans, span_cmp);
  for (uint64_t i = 1; i < nt && !st; i++) {
    /* skip empty tensors: they occupy nothing */
    if (spans[i].begin == spans[i].end) continue;
    for (int64_t j = (int64_t)i - 1; j >= 0; j--) {
      if (spans[j].begin == spans[j].end) continue;
      if (spans[i].begin < spans[j].end)
        st = MX__IOERR(MX_ERR_FORMAT, file, "tensors '%.*s' and '%.*s' overlap",
                       (int)MX_MIN(ts[spans[j].idx].name_len, 200), ts[spans[j].idx].name,
                       (int)MX_MIN(ts[spans[i].idx].name_len, 200), ts[spans[i].idx].name);
      break;
    }
  }
  for (uint64_t i = 0; i < nt && !st; i++) {
    gg_tensor *t = &ts[i];
    if (s->list_only) {
      char nm[1100];
      snprintf(nm, sizeof nm, "%.*s", (int)MX_MIN(t->name_len, 1000), t->name);
      int dt = load_dtype(t->type, s->opt && s->opt->gguf_dequantize);
      st = mx__sink_info(s, nm, type_info(t->type)->name, dt < 0 ? -1 : dt, t->shape, t->ndim,
                         data_start + t->offset, t->nbytes);
    } else {
      st = make_arrays(m, s, t, data_start);
    }
  }
done:
  mx__strset_free(&seen);
  free(ts);
  free(spans);
  return st;
}

/* ---- write ----------------------------------------------------------------------------- */

static void w_u32(mx__writer *w, uint32_t v) {
  uint8_t b[4];
  mx__store_le(b, v, 4);
  mx__writer_write(w, b, 4);
}
static void w_u64(mx__writer *w, uint64_t v) {
  uint8_t b[8];
  mx__store_le(b, v, 8);
  mx__writer_write(w, b, 8);
}
static void w_str(mx__writer *w, const char *s, size_t n) {
  w_u64(w, n);
  mx__writer_write(w, s, n);
}

static int w_value(mx__writer *w, const mx_meta_value *v, int depth) {
  uint8_t b[8];
  switch (v->type) {
    case MX_META_UINT8: case MX_META_INT8: case MX_META_BOOL:
      b[0] = v->type == MX_META_BOOL ? (uint8_t)v->v.b
             : v->type == MX_META_UINT8 ? (uint8_t)v->v.u : (uint8_t)v->v.i;
      mx__writer_write(w, b, 1);
      break;
    case MX_META_UINT16: case MX_META_INT16:
      mx__store_le(b, v->type == MX_META_UINT16 ? v->v.u : (uint64_t)v->v.i, 2);
      mx__writer_write(w, b, 2);
      break;
    case MX_META_UINT32: case MX_META_INT32:
      w_u32(w, (uint32_t)(v->type == MX_META_UINT32 ? v->v.u : (uint64_t)v->v.i));
      break;
    case MX_META_UINT64: w_u64(w, v->v.u); break;
    case MX_META_INT64: w_u64(w, (uint64_t)v->v.i); break;
    case MX_META_FLOAT32: {
      union { float f; uint32_t u; } c = {.f = (float)v->v.f};
      w_u32(w, c.u);
      break;
    }
    case MX_META_FLOAT64: {
      union { double f; uint64_t u; } c = {.f = v->v.f};
      w_u64(w, c.u);
      break;
    }
    case MX_META_STRING: w_str(w, v->v.str.data ? v->v.str.data : "", v->v.str.len); break;
    case MX_META_ARRAY:
      if (depth >= GGUF_MAX_DEPTH)
        return mx__set_error(MX_ERR_INVALID_ARG, "arrays nested too deeply");
      w_u32(w, v->v.arr.type);
      w_u64(w, v->v.arr.count);
      for (size_t i = 0; i < v->v.arr.count; i++) {
        if (v->v.arr.items[i].type != v->v.arr.type)
          return mx__set_error(MX_ERR_INVALID_ARG, "array item %zu has the wrong type", i);
        int st = w_value(w, &v->v.arr.items[i], depth + 1);
        if (st) return st;
      }
      break;
    default: return mx__set_error(MX_ERR_INVALID_ARG, "unknown value type %d", (int)v->type);
  }
  return MX_OK;
}

static int gguf_type_of(mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT32: return T_F32;
    case MX_FLOAT16: return T_F16;
    case MX_BFLOAT16: return T_BF16;
    case MX_INT32: return T_I32;
    case MX_INT64: return T_I64;
    case MX_FLOAT64: return T_F64;
    default: return -1;
  }
}

int mx_save_gguf(const char *path, const mx_map *arrays, const mx_metadata *metadata) {
  if (!path || !arrays) return mx__set_error(MX_ERR_INVALID_ARG, "save_gguf: NULL argument");
  uint64_t alignment = GGUF_DEFAULT_ALIGNMENT;
  const mx_meta_value *al = mx_metadata_get(metadata, "general.alignment");
  if (al) {
    if (al->type != MX_META_UINT32 || !al->v.u || (al->v.u & (al->v.u - 1)) || al->v.u > 65536)
      return MX__IOERR(MX_ERR_INVALID_ARG, path, "general.alignment must be a power-of-two "
                       "uint32");
    alignment = al->v.u;
  }
  int n = mx_map_size(arrays);
  mx_array **arrs = malloc((size_t)n * sizeof *arrs + 1);
  if (!arrs) return mx__set_error(MX_ERR_OOM, "save_gguf: out of memory");
  int st = MX_OK;
  for (int i = 0; i < n && !st; i++) {
    arrs[i] = mx_map_value(arrays, i);
    const char *k = mx_map_key(arrays, i);
    if (gguf_type_of(mx_array_dtype(arrs[i])) < 0)
      st = MX__IOERR(MX_ERR_DTYPE, path, "tensor '%s': dtype %s cannot be saved to GGUF "
                     "(float32, float16, bfloat16, int32, int64, float64 can)", k,
                     mx_dtype_name(mx_array_dtype(arrs[i])));
    else if (mx_array_ndim(arrs[i]) > 4)
      st = MX__IOERR(MX_ERR_SHAPE, path, "tensor '%s': GGUF tensors have at most 4 dimensions",
                     k);
    else if (!*k || strlen(k) >= 64 || !mx__io_utf8_valid(k, strlen(k)))
      st = MX__IOERR(MX_ERR_INVALID_ARG, path, "tensor name '%s' is empty, not UTF-8 or longer "
                     "than llama.cpp's 63 bytes", k);
  }
  if (!st && n) st = mx_eval(arrs, n);
  mx__writer w;
  if (!st) st = mx__writer_open(&w, path);
  if (st) {
    free(arrs);
    return st;
  }
  w_u32(&w, GGUF_MAGIC);
  w_u32(&w, 3);
  w_u64(&w, (uint64_t)n);
  w_u64(&w, (uint64_t)mx_metadata_size(metadata));
  for (int64_t i = 0; i < mx_metadata_size(metadata) && !st; i++) {
    const char *k = mx_metadata_key(metadata, i);
    const mx_meta_value *v = mx_metadata_value(metadata, i);
    w_str(&w, k, strlen(k));
    w_u32(&w, v->type);
    st = w_value(&w, v, 0);
    if (st) mx__prefix_error("%s: metadata '%s'", path, k);
  }
  uint64_t off = 0;
  for (int i = 0; i < n && !st; i++) {
    const char *k = mx_map_key(arrays, i);
    int nd = mx_array_ndim(arrs[i]);
    w_str(&w, k, strlen(k));
    w_u32(&w, (uint32_t)nd);
    for (int d = nd - 1; d >= 0; d--) w_u64(&w, (uint64_t)mx_array_shape(arrs[i])[d]);
    w_u32(&w, (uint32_t)gguf_type_of(mx_array_dtype(arrs[i])));
    w_u64(&w, off);
    off += (mx_array_nbytes(arrs[i]) + alignment - 1) / alignment * alignment;
  }
  if (!st) mx__writer_pad(&w, (size_t)((alignment - w.pos % alignment) % alignment), 0);
  for (int i = 0; i < n && !st && !w.status; i++) {
    size_t nb = mx_array_nbytes(arrs[i]);
    if (nb) {
      const void *p = mx_array_data(arrs[i]);
      if (!p) {
        st = mx__prefix_error("%s: tensor '%s'", path, mx_map_key(arrays, i));
        break;
      }
      mx__writer_write(&w, p, nb);
    }
    mx__writer_pad(&w, (size_t)((alignment - nb % alignment) % alignment), 0);
  }
  free(arrs);
  return mx__writer_close(&w, st);
}
