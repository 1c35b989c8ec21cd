/* sort.c (cpu) — kernels of sort, argsort, partition and argpartition.
 *
 * Every row along the axis is turned into unsigned integer keys whose
 * unsigned order is NumPy's order of the values (floats: sign-flipped bit
 * patterns, -0.0 folded onto +0.0, every NaN mapped to the largest key so
 * NaNs go last; signed integers: sign bit flipped). Keys travel with their
 * uint32 positions:
 *   - sort/argsort: stable — insertion sort for short rows, otherwise an
 *     LSD radix sort (8-bit digits, passes whose digit is constant skipped);
 *   - partition/argpartition: the kth key by MSB radix select (one byte
 *     per pass over the shrinking set of candidates), then one branch-free
 *     stable pass puts the smaller keys, the equal ones and the larger ones
 *     in that order, each in input order (O(n), no bad inputs).
 * The permutation then writes indices, or values: decoded from the sorted
 * keys, or, in rows holding a NaN or a -0.0 (which the keys fold),
 * gathered from the input so their bits survive. Rows are independent and
 * each is handled by one thread with the same code: results are identical
 * for any thread count. Inputs may be strided; outputs are row-contiguous. */
#include <string.h>

#include "cpu.h"
#include "ops/sort_params.h"
#include "types.h"

/* ---- keys -------------------------------------------------------------------- */
static inline uint32_t key_f32(uint32_t u) {
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu; /* NaN: last */
  if (u == 0x80000000u) u = 0;                              /* -0.0 == 0.0 */
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
static inline uint64_t key_f64(uint64_t u) {
  const uint64_t sign = 0x8000000000000000ull;
  if ((u & ~sign) > 0x7ff0000000000000ull) return ~0ull;
  if (u == sign) u = 0;
  return (u & sign) ? ~u : (u | sign);
}
/* 16-bit floats: exponent-all-ones threshold `inf` (f16 0x7c00, bf16 0x7f80) */
static inline uint32_t key_h16(uint16_t h, uint16_t inf) {
  if ((h & 0x7fffu) > inf) return 0xffffu;
  if (h == 0x8000u) h = 0;
  return (h & 0x8000u) ? (uint32_t)(uint16_t)~h : (uint32_t)(h | 0x8000u);
}

/* Keys of n elements at p (element stride s) of dtype dt. Returns whether
 * the keys map back to the exact input bits (false when a float row holds
 * a NaN or a -0.0, whose bits the keys do not keep). */
static bool load_keys32(const char *p, int64_t s, int64_t n, mx_dtype dt, uint32_t *k) {
  uint32_t special = 0;
  switch (dt) {
    case MX_BOOL:
      for (int64_t i = 0; i < n; i++) k[i] = ((const uint8_t *)p)[i * s] != 0;
      break;
    case MX_UINT8:
      for (int64_t i = 0; i < n; i++) k[i] = ((const uint8_t *)p)[i * s];
      break;
    case MX_UINT32:
      for (int64_t i = 0; i < n; i++) k[i] = ((const uint32_t *)p)[i * s];
      break;
    case MX_INT32:
      for (int64_t i = 0; i < n; i++) k[i] = ((const uint32_t *)p)[i * s] ^ 0x80000000u;
      break;
    case MX_FLOAT16:
    case MX_BFLOAT16: {
      uint16_t inf = dt == MX_FLOAT16 ? 0x7c00u : 0x7f80u;
      for (int64_t i = 0; i < n; i++) {
        uint16_t h = ((const uint16_t *)p)[i * s];
        special |= (uint32_t)((h & 0x7fffu) > inf) | (uint32_t)(h == 0x8000u);
        k[i] = key_h16(h, inf);
      }
      break;
    }
    case MX_FLOAT32:
      for (int64_t i = 0; i < n; i++) {
        uint32_t u = ((const uint32_t *)p)[i * s];
        special |= (uint32_t)((u & 0x7fffffffu) > 0x7f800000u) | (uint32_t)(u == 0x80000000u);
        k[i] = key_f32(u);
      }
      break;
    default: MX_ASSERT(0);
  }
  return !special;
}
static bool load_keys64(const char *p, int64_t s, int64_t n, mx_dtype dt, uint64_t *k) {
  const uint64_t sign = 0x8000000000000000ull;
  if (dt == MX_INT64) {
    for (int64_t i = 0; i < n; i++) k[i] = ((const uint64_t *)p)[i * s] ^ sign;
    return true;
  }
  MX_ASSERT(dt == MX_FLOAT64);
  uint32_t special = 0;
  for (int64_t i = 0; i < n; i++) {
    uint64_t u = ((const uint64_t *)p)[i * s];
    special |= (uint32_t)((u & ~sign) > 0x7ff0000000000000ull) | (uint32_t)(u == sign);
    k[i] = key_f64(u);
  }
  return !special;
}

/* The values of n keys (inverse of load_keys*, exact rows only), written
 * with element stride `step`. */
static void store_values32(void *dst, int64_t step, const uint32_t *k, int64_t n, mx_dtype dt) {
  switch (dt) {
    case MX_BOOL:
    case MX_UINT8:
      for (int64_t j = 0; j < n; j++) ((uint8_t *)dst)[j * step] = (uint8_t)k[j];
      break;
    case MX_UINT32:
      for (int64_t j = 0; j < n; j++) ((uint32_t *)dst)[j * step] = k[j];
      break;
    case MX_INT32:
      for (int64_t j = 0; j < n; j++) ((uint32_t *)dst)[j * step] = k[j] ^ 0x80000000u;
      break;
    case MX_FLOAT16:
    case MX_BFLOAT16:
      for (int64_t j = 0; j < n; j++)
        ((uint16_t *)dst)[j * step] = (uint16_t)(k[j] & 0x8000u ? k[j] ^ 0x8000u : ~k[j]);
      break;
    case MX_FLOAT32:
      for (int64_t j = 0; j < n; j++)
        ((uint32_t *)dst)[j * step] = k[j] & 0x80000000u ? k[j] ^ 0x80000000u : ~k[j];
      break;
    default: MX_ASSERT(0);
  }
}
static void store_values64(void *dst, int64_t step, const uint64_t *k, int64_t n, mx_dtype dt) {
  const uint64_t sign = 0x8000000000000000ull;
  for (int64_t j = 0; j < n; j++)
    ((uint64_t *)dst)[j * step] = dt == MX_INT64 ? k[j] ^ sign : k[j] & sign ? k[j] ^ sign : ~k[j];
}

/* ---- stable sort and selection on (key, position) pairs ------------------------
 * Generated for 32- and 64-bit keys. Arrays k/ix are the data, k2/ix2
 * scratch of the same length. */
#define INSERTION_MAX 16

#define DEFINE_SORTING(SFX, KT)                                                         \
  static void insertion_##SFX(KT *k, uint32_t *ix, int64_t n) {                         \
    for (int64_t i = 1; i < n; i++) {                                                   \
      KT kv = k[i];                                                                     \
      uint32_t iv = ix[i];                                                              \
      int64_t j = i;                                                                    \
      for (; j > 0 && k[j - 1] > kv; j--) {                                             \
        k[j] = k[j - 1];                                                                \
        ix[j] = ix[j - 1];                                                              \
      }                                                                                 \
      k[j] = kv;                                                                        \
      ix[j] = iv;                                                                       \
    }                                                                                   \
  }                                                                                     \
  /* Stable LSD radix sort; the result is left in (k, ix). */                           \
  static void radix_##SFX(KT *k, uint32_t *ix, KT *k2, uint32_t *ix2, int64_t n) {      \
    enum { NB = sizeof(KT) };                                                           \
    uint32_t cnt[NB][256];                                                              \
    memset(cnt, 0, sizeof cnt);                                                         \
    for (int64_t i = 0; i < n; i++)                                                     \
      for (int b = 0; b < NB; b++) cnt[b][(k[i] >> (8 * b)) & 0xffu]++;                 \
    KT *src = k, *dst = k2;                                                             \
    uint32_t *isrc = ix, *idst = ix2;                                                   \
    for (int b = 0; b < NB; b++) {                                                      \
      uint32_t *c = cnt[b];                                                             \
      if (c[(src[0] >> (8 * b)) & 0xffu] == (uint32_t)n) continue; /* constant digit */ \
      uint32_t off = 0;                                                                 \
      for (int d = 0; d < 256; d++) {                                                   \
        uint32_t t = c[d];                                                              \
        c[d] = off;                                                                     \
        off += t;                                                                       \
      }                                                                                 \
      for (int64_t i = 0; i < n; i++) {                                                 \
        uint32_t pos = c[(src[i] >> (8 * b)) & 0xffu]++;                                \
        dst[pos] = src[i];                                                              \
        idst[pos] = isrc[i];                                                            \
      }                                                                                 \
      KT *tk = src; src = dst; dst = tk;                                                \
      uint32_t *ti = isrc; isrc = idst; idst = ti;                                      \
    }                                                                                   \
    if (src != k) {                                                                     \
      memcpy(k, src, sizeof(KT) * (size_t)n);                                           \
      memcpy(ix, isrc, sizeof(uint32_t) * (size_t)n);                                   \
    }                                                                                   \
  }                                                                                     \
  static void stable_sort_##SFX(KT *k, uint32_t *ix, KT *k2, uint32_t *ix2, int64_t n) { \
    if (n <= INSERTION_MAX) insertion_##SFX(k, ix, n);                                  \
    else radix_##SFX(k, ix, k2, ix2, n);                                                \
  }                                                                                     \
  /* The kth smallest key: MSB radix select. Each pass histograms one byte   \
   * of the keys that share the bytes found so far (compacted into kc after \
   * the first pass), so the candidates shrink ~256x per pass. */           \
  static KT kth_key_##SFX(const KT *k, KT *kc, int64_t n, int64_t kth) {       \
    enum { NB = sizeof(KT) };                                                   \
    const KT *src = k;                                                          \
    int64_t m = n;                                                              \
    KT prefix = 0, mask = 0;                                                    \
    for (int b = NB - 1; b >= 0; b--) {                                         \
      if (m <= INSERTION_MAX) { /* few candidates left: sort them */             \
        int64_t c = 0;                                                          \
        for (int64_t i = 0; i < m; i++)                                         \
          if ((src[i] & mask) == prefix) kc[c++] = src[i];                      \
        for (int64_t i = 1; i < c; i++) {                                       \
          KT v = kc[i];                                                         \
          int64_t j = i;                                                        \
          for (; j > 0 && kc[j - 1] > v; j--) kc[j] = kc[j - 1];                \
          kc[j] = v;                                                            \
        }                                                                       \
        return kc[kth];                                                         \
      }                                                                         \
      uint32_t cnt[256] = {0};                                                  \
      int sh = 8 * b;                                                           \
      for (int64_t i = 0; i < m; i++)                                           \
        if ((src[i] & mask) == prefix) cnt[(src[i] >> sh) & 0xffu]++;           \
      int d = 0;                                                                \
      for (; kth >= cnt[d]; d++) kth -= cnt[d];                                 \
      prefix |= (KT)d << sh;                                                    \
      mask |= (KT)0xff << sh;                                                   \
      if (b > 0) { /* compact the candidates for the next byte */               \
        int64_t c = 0;                                                          \
        for (int64_t i = 0; i < m; i++)                                         \
          if ((src[i] & mask) == prefix) kc[c++] = src[i];                      \
        src = kc;                                                               \
        m = c;                                                                  \
      }                                                                         \
    }                                                                           \
    return prefix;                                                              \
  }                                                                             \
  /* Reorders so that k[kth] is the kth smallest, k[<kth] <= it <= k[>kth]:    \
   * a stable 3-way distribution around the kth key (less, equal, greater,     \
   * each in input order), branch-free. */                                     \
  static void select_##SFX(KT *k, uint32_t *ix, KT *k2, uint32_t *ix2, int64_t n,   \
                           int64_t kth) {                                       \
    KT t = kth_key_##SFX(k, k2, n, kth);                                        \
    int64_t nl = 0, ne = 0;                                                     \
    for (int64_t i = 0; i < n; i++) {                                           \
      nl += k[i] < t;                                                           \
      ne += k[i] == t;                                                          \
    }                                                                           \
    int64_t pl = 0, pe = nl, pg = nl + ne;                                      \
    for (int64_t i = 0; i < n; i++) {                                           \
      KT v = k[i];                                                              \
      int lt = v < t, eq = v == t;                                              \
      int64_t pos = lt ? pl : eq ? pe : pg;                                     \
      k2[pos] = v;                                                              \
      ix2[pos] = ix[i];                                                         \
      pl += lt;                                                                 \
      pe += eq;                                                                 \
      pg += !lt & !eq;                                                          \
    }                                                                           \
    memcpy(k, k2, sizeof(KT) * (size_t)n);                                      \
    memcpy(ix, ix2, sizeof(uint32_t) * (size_t)n);                              \
  }
DEFINE_SORTING(u32, uint32_t)
DEFINE_SORTING(u64, uint64_t)

/* ---- the kernel -------------------------------------------------------------------- */
typedef struct {
  mx_array *in, *out;
  int op;             /* MX_OP_SORT, ... */
  bool wide;          /* 64-bit keys */
  int64_t n;          /* axis length */
  int64_t kth;
  int64_t in_stride;  /* along the axis, elements */
  int64_t inner;      /* output stride along the axis (product of later dims) */
  int nrest;          /* the other dims, for the input offset of a row */
  int64_t rest_shape[MX_MAX_NDIM], rest_stride[MX_MAX_NDIM];
  int failed;
} sort_ctx;

static void copy_elem(char *dst, const char *src, size_t es) {
  switch (es) {
    case 1: *(uint8_t *)dst = *(const uint8_t *)src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    default: memcpy(dst, src, 8); break;
  }
}

static void sort_rows(void *c_, int64_t begin, int64_t end) {
  sort_ctx *c = c_;
  int64_t n = c->n;
  size_t ks = c->wide ? 8 : 4, es = mx_dtype_size(c->in->dtype);
  /* scratch: keys, keys2, positions, positions2 */
  char *mem = malloc((size_t)n * (2 * ks + 2 * sizeof(uint32_t)));
  if (!mem) {
    __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  void *k = mem, *k2 = mem + (size_t)n * ks;
  uint32_t *ix = (uint32_t *)(mem + 2 * (size_t)n * ks), *ix2 = ix + n;
  const char *in_base = mx__data(c->in);
  char *out_base = c->out->buf->ptr;
  bool values = c->op == MX_OP_SORT || c->op == MX_OP_PARTITION;
  bool is_select = c->op == MX_OP_PARTITION || c->op == MX_OP_ARGPARTITION;
  for (int64_t r = begin; r < end; r++) {
    /* input offset of row r (the other dims in order) */
    int64_t rem = r, off = 0;
    for (int d = c->nrest - 1; d >= 0; d--) {
      off += (rem % c->rest_shape[d]) * c->rest_stride[d];
      rem /= c->rest_shape[d];
    }
    const char *row = in_base + off * (int64_t)es;
    for (int64_t j = 0; j < n; j++) ix[j] = (uint32_t)j;
    bool exact;
    if (c->wide) {
      exact = load_keys64(row, c->in_stride, n, c->in->dtype, k);
      if (is_select) select_u64(k, ix, k2, ix2, n, c->kth);
      else stable_sort_u64(k, ix, k2, ix2, n);
    } else {
      exact = load_keys32(row, c->in_stride, n, c->in->dtype, k);
      if (is_select) select_u32(k, ix, k2, ix2, n, c->kth);
      else stable_sort_u32(k, ix, k2, ix2, n);
    }
    /* output row: outer index r / inner, inner index r % inner */
    int64_t o = (r / c->inner) * n * c->inner + r % c->inner;
    if (values && exact) { /* values straight from the sorted keys */
      char *dst = out_base + o * (int64_t)es;
      if (c->wide) store_values64(dst, c->inner, k, n, c->in->dtype);
      else store_values32(dst, c->inner, k, n, c->in->dtype);
    } else if (values) { /* NaN payloads and -0.0: gather the input elements */
      size_t step = es * (size_t)c->inner;
      char *dst = out_base + o * (int64_t)es;
      for (int64_t j = 0; j < n; j++, dst += step)
        copy_elem(dst, row + (int64_t)ix[j] * c->in_stride * (int64_t)es, es);
    } else {
      uint32_t *dst = (uint32_t *)out_base + o;
      for (int64_t j = 0; j < n; j++) dst[j * c->inner] = ix[j];
    }
  }
  free(mem);
}

static int k_sort_family(mx_array *out, mx_array **in) {
  const mx__sort_params *p = MX__PARAMS(out, mx__sort_params);
  mx_array *a = in[0];
  int st = mx__array_alloc_data(out);
  if (st) return st;
  if (out->size == 0) return MX_OK;
  sort_ctx c = {.in = a, .out = out, .op = out->op->id, .kth = p->kth};
  c.wide = a->dtype == MX_INT64 || a->dtype == MX_FLOAT64;
  c.n = a->shape[p->axis];
  c.in_stride = a->strides[p->axis];
  c.inner = 1;
  for (int d = p->axis + 1; d < a->ndim; d++) c.inner *= a->shape[d];
  for (int d = 0; d < a->ndim; d++) {
    if (d == p->axis) continue;
    c.rest_shape[c.nrest] = a->shape[d];
    c.rest_stride[c.nrest] = a->strides[d];
    c.nrest++;
  }
  int64_t nrows = out->size / c.n;
  /* ~16K elements of work per chunk; rows stay whole */
  int64_t grain = c.n >= 16384 ? 1 : 16384 / c.n;
  mx__parallel_for(nrows, grain, sort_rows, &c);
  if (c.failed)
    return mx__set_error(MX_ERR_OOM, "%s: out of memory for the scratch of a row of %lld",
                         mx__op_names[out->op->id], (long long)c.n);
  return MX_OK;
}

void mx__cpu_register_sort(mx__kernel_fn *k) {
  k[MX_OP_SORT] = k_sort_family;
  k[MX_OP_ARGSORT] = k_sort_family;
  k[MX_OP_PARTITION] = k_sort_family;
  k[MX_OP_ARGPARTITION] = k_sort_family;
}
