/* indexing.c (cpu) — kernels of take, take_along_axis, put_along_axis and
 * scatter_add_axis.
 *
 * Gathers (take, take_along_axis) are one strided n-d iteration over the
 * output with three operands: out, the indices (stride 0 where they do not
 * vary) and the source with a zero stride on the indexed axis; the inner
 * loop adds norm(index) * axis_stride to the source pointer. Any input
 * strides work; every dtype is moved by element size.
 *
 * Scatters (put_along_axis, scatter_add_axis) copy `a` into the output, then
 * walk the index array: each thread owns a range of positions on the
 * non-indexed axes and visits the indexed axis in order for them, so writes
 * never race and duplicates resolve identically for any thread count (last
 * write wins for put; sums in index order for add). f16/bf16 scatter-adds
 * accumulate in an f32 copy of the output, rounded once at the end. */
#include <string.h>

#include "cpu.h"
#include "ops/indexing_params.h"
#include "types.h"

/* ---- gather ------------------------------------------------------------------- */
typedef struct {
  int64_t dim;     /* size of the indexed axis */
  int64_t astride; /* source stride of the indexed axis, in elements */
} gather_ctx;

/* operands: 0 out (T), 1 indices (TI), 2 source (T) */
#define GATHER_INNER(NAME, T, TI)                                                    \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {          \
    const gather_ctx *c = c_;                                                        \
    T *o = (T *)p[0];                                                                \
    const TI *ix = (const TI *)p[1];                                                 \
    const T *a = (const T *)p[2];                                                    \
    int64_t so = s[0], si = s[1], sa = s[2], dim = c->dim, ast = c->astride;         \
    if (si == 0) { /* one index for the whole run: a strided row copy */             \
      const T *src = a + mx__norm_index((int64_t)ix[0], dim) * ast;                  \
      if (so == 1 && sa == 1) memcpy(o, src, sizeof(T) * (size_t)n);                 \
      else                                                                           \
        for (int64_t i = 0; i < n; i++) o[i * so] = src[i * sa];                     \
      return;                                                                        \
    }                                                                                \
    for (int64_t i = 0; i < n; i++)                                                  \
      o[i * so] = a[i * sa + mx__norm_index((int64_t)ix[i * si], dim) * ast];        \
  }

#define IDX_TYPES(X, ...) \
  X(U8, uint8_t, __VA_ARGS__) X(U32, uint32_t, __VA_ARGS__) X(I32, int32_t, __VA_ARGS__) \
  X(I64, int64_t, __VA_ARGS__)
#define DEF_GATHER(ITAG, TI, ES, T) GATHER_INNER(gather_##ES##_##ITAG, T, TI)
IDX_TYPES(DEF_GATHER, 1, uint8_t)
IDX_TYPES(DEF_GATHER, 2, uint16_t)
IDX_TYPES(DEF_GATHER, 4, uint32_t)
IDX_TYPES(DEF_GATHER, 8, uint64_t)

static int idx_slot(mx_dtype dt) {
  switch (dt) {
    case MX_UINT8: return 0;
    case MX_UINT32: return 1;
    case MX_INT32: return 2;
    case MX_INT64: return 3;
    default: return -1;
  }
}
static int es_slot(size_t es) { return es == 1 ? 0 : es == 2 ? 1 : es == 4 ? 2 : 3; }

#define GATHER_ROW(ES) {gather_##ES##_U8, gather_##ES##_U32, gather_##ES##_I32, gather_##ES##_I64}
static const mx__inner_fn gather_fns[4][4] = {GATHER_ROW(1), GATHER_ROW(2), GATHER_ROW(4),
                                              GATHER_ROW(8)};

static int bad_index_dtype(mx_array *out, mx_dtype dt) {
  return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CPU kernel for indices of dtype %s",
                       mx__op_names[out->op->id], mx_dtype_name(dt));
}

/* Runs the gather iteration over out's shape. istr/astr: index and source
 * strides over out's dims (elements); the source's indexed axis enters only
 * through ctx.astride. */
static int run_gather(mx_array *out, mx_array *src, mx_array *idx, const int64_t *istr,
                      const int64_t *astr, int64_t dim, int64_t astride) {
  int slot = idx_slot(idx->dtype);
  if (slot < 0) return bad_index_dtype(out, idx->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  size_t es = mx_dtype_size(out->dtype);
  char *base[3] = {out->buf->ptr, mx__data(idx), mx__data(src)};
  size_t el[3] = {es, mx_dtype_size(idx->dtype), es};
  const int64_t *sp[3] = {NULL, istr, astr};
  mx__nd_iter it;
  mx__iter_init(&it, out->shape, out->ndim, 3, base, el, sp);
  gather_ctx c = {dim, astride};
  mx__iter_run(&it, gather_fns[es_slot(es)][slot], &c);
  return MX_OK;
}

/* out (pre, I..., post) = a (pre, A, post)[.., idx[I...], ..] */
static int k_take(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int64_t istr[MX_MAX_NDIM] = {0}, astr[MX_MAX_NDIM] = {0};
  int d = 0;
  for (int i = 0; i < ax; i++, d++) astr[d] = a->strides[i];
  for (int i = 0; i < idx->ndim; i++, d++) istr[d] = idx->strides[i];
  for (int i = ax + 1; i < a->ndim; i++, d++) astr[d] = a->strides[i];
  MX_ASSERT(d == out->ndim);
  return run_gather(out, a, idx, istr, astr, a->shape[ax], a->strides[ax]);
}

/* out[..., j, ...] = a[..., idx[..., j, ...], ...] (a, idx already broadcast) */
static int k_take_along_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int64_t astr[MX_MAX_NDIM];
  for (int i = 0; i < a->ndim; i++) astr[i] = i == ax ? 0 : a->strides[i];
  return run_gather(out, a, idx, idx->strides, astr, a->shape[ax], a->strides[ax]);
}

/* ---- scatter ------------------------------------------------------------------ */
typedef struct {
  int64_t dim;     /* size of the output's indexed axis */
  int64_t ostride; /* output stride of the indexed axis (row-contiguous) */
} scatter_ctx;

/* operands: 0 out (TO), 1 indices (TI), 2 values (TV) */
#define PUT_INNER(NAME, T, TI)                                                       \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {          \
    const scatter_ctx *c = c_;                                                       \
    T *o = (T *)p[0];                                                                \
    const TI *ix = (const TI *)p[1];                                                 \
    const T *v = (const T *)p[2];                                                    \
    for (int64_t i = 0; i < n; i++)                                                  \
      o[i * s[0] + mx__norm_index((int64_t)ix[i * s[1]], c->dim) * c->ostride] =     \
          v[i * s[2]];                                                               \
  }
#define DEF_PUT(ITAG, TI, ES, T) PUT_INNER(put_##ES##_##ITAG, T, TI)
IDX_TYPES(DEF_PUT, 1, uint8_t)
IDX_TYPES(DEF_PUT, 2, uint16_t)
IDX_TYPES(DEF_PUT, 4, uint32_t)
IDX_TYPES(DEF_PUT, 8, uint64_t)
#define PUT_ROW(ES) {put_##ES##_U8, put_##ES##_U32, put_##ES##_I32, put_##ES##_I64}
static const mx__inner_fn put_fns[4][4] = {PUT_ROW(1), PUT_ROW(2), PUT_ROW(4), PUT_ROW(8)};

/* Accumulation per value dtype: the output type (f32 for f16/bf16) and
 * the add. Signed integers wrap (through unsigned arithmetic, no UB). */
#define ACCT_BOOL uint8_t
#define ACCT_U8 uint8_t
#define ACCT_U32 uint32_t
#define ACCT_I32 int32_t
#define ACCT_I64 int64_t
#define ACCT_F16 float
#define ACCT_BF16 float
#define ACCT_F32 float
#define ACCT_F64 double
#define ACC_BOOL(o, v) ((o) = (uint8_t)((o) | ((v) != 0)))
#define ACC_U8(o, v) ((o) = (uint8_t)((o) + (v)))
#define ACC_U32(o, v) ((o) += (v))
#define ACC_I32(o, v) ((o) = (int32_t)((uint32_t)(o) + (uint32_t)(v)))
#define ACC_I64(o, v) ((o) = (int64_t)((uint64_t)(o) + (uint64_t)(v)))
#define ACC_F16(o, v) ((o) += mx__f16_to_f32(v))
#define ACC_BF16(o, v) ((o) += mx__bf16_to_f32(v))
#define ACC_F32(o, v) ((o) += (v))
#define ACC_F64(o, v) ((o) += (v))

#define ADD_INNER(NAME, TAG, TI)                                                     \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c_) {          \
    const scatter_ctx *c = c_;                                                       \
    ACCT_##TAG *o = (ACCT_##TAG *)p[0];                                              \
    const TI *ix = (const TI *)p[1];                                                 \
    const T_##TAG *v = (const T_##TAG *)p[2];                                        \
    for (int64_t i = 0; i < n; i++) {                                                \
      ACCT_##TAG *dst =                                                              \
          &o[i * s[0] + mx__norm_index((int64_t)ix[i * s[1]], c->dim) * c->ostride]; \
      ACC_##TAG(*dst, v[i * s[2]]);                                                  \
    }                                                                                \
  }
#define DEF_ADD_I(ITAG, TI, TAG) ADD_INNER(add_##TAG##_##ITAG, TAG, TI)
#define DEF_ADD(TAG, _) IDX_TYPES(DEF_ADD_I, TAG)
MX_ALL_TAGS(DEF_ADD, 0)
static mx__inner_fn add_fns[MX_DTYPE_COUNT][4];

typedef struct {
  mx__nd_iter it;       /* over the non-indexed axes of the index shape */
  mx__inner_fn inner;
  scatter_ctx c;
  int64_t n;            /* index-shape size along the axis */
  int64_t istep, vstep; /* byte steps of indices / values along the axis */
} scatter_job;

static void scatter_chunk(void *ctx, int64_t begin, int64_t end) {
  const scatter_job *j = ctx;
  mx__nd_iter it = j->it;
  for (int64_t k = 0; k < j->n; k++) {
    it.base[1] = j->it.base[1] + k * j->istep;
    it.base[2] = j->it.base[2] + k * j->vstep;
    mx__iter_run_range(&it, j->inner, &j->c, begin, end);
  }
}

/* Scatter idx/values (shape T) into dst (row-contiguous, out's shape, element
 * size dst_es) along ax. */
static void run_scatter(mx_array *out, void *dst, size_t dst_es, mx_array *idx, mx_array *v,
                        int ax, mx__inner_fn inner) {
  int nd = 0;
  int64_t shape[MX_MAX_NDIM], ost[MX_MAX_NDIM], ist[MX_MAX_NDIM], vst[MX_MAX_NDIM];
  int64_t orow[MX_MAX_NDIM];
  mx__compute_row_strides(out->shape, out->ndim, orow);
  for (int d = 0; d < out->ndim; d++) {
    if (d == ax) continue;
    shape[nd] = idx->shape[d];
    ost[nd] = orow[d];
    ist[nd] = idx->strides[d];
    vst[nd] = v->strides[d];
    nd++;
  }
  scatter_job j;
  char *base[3] = {dst, mx__data(idx), mx__data(v)};
  size_t el[3] = {dst_es, mx_dtype_size(idx->dtype), mx_dtype_size(v->dtype)};
  const int64_t *sp[3] = {ost, ist, vst};
  mx__iter_init(&j.it, shape, nd, 3, base, el, sp);
  j.inner = inner;
  j.c.dim = out->shape[ax];
  j.c.ostride = orow[ax];
  j.n = idx->shape[ax];
  j.istep = idx->strides[ax] * (int64_t)el[1];
  j.vstep = v->strides[ax] * (int64_t)el[2];
  if (j.it.size == 0 || j.n == 0) return;
  int64_t grain = (1 << 15) / j.n;
  mx__parallel_for(j.it.size, grain > 0 ? grain : 1, scatter_chunk, &j);
}

static int k_put_along_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1], *v = in[2];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int slot = idx_slot(idx->dtype);
  if (slot < 0) return bad_index_dtype(out, idx->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  size_t es = mx_dtype_size(out->dtype);
  mx__cpu_copy_to_contiguous(a, out->buf->ptr);
  run_scatter(out, out->buf->ptr, es, idx, v, ax, put_fns[es_slot(es)][slot]);
  return MX_OK;
}

static int k_scatter_add_axis(mx_array *out, mx_array **in) {
  mx_array *a = in[0], *idx = in[1], *v = in[2];
  int ax = MX__PARAMS(out, mx__index_params)->axis;
  int slot = idx_slot(idx->dtype);
  if (slot < 0) return bad_index_dtype(out, idx->dtype);
  mx__inner_fn f = add_fns[out->dtype][slot];
  if (!f || v->dtype != out->dtype)
    return mx__set_error(MX_ERR_NO_KERNEL, "scatter_add_axis: no CPU kernel for dtype %s",
                         mx_dtype_name(v->dtype));
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  mx__cpu_copy_to_contiguous(a, out->buf->ptr);
  if (out->dtype != MX_FLOAT16 && out->dtype != MX_BFLOAT16) {
    run_scatter(out, out->buf->ptr, mx_dtype_size(out->dtype), idx, v, ax, f);
    return MX_OK;
  }
  /* half types: accumulate in f32, round once */
  mx__buffer *acc = mx__buffer_new((size_t)out->size * sizeof(float), MX_CPU);
  if (!acc) return mx_last_status();
  mx__cpu_convert(out->buf->ptr, out->dtype, acc->ptr, MX_FLOAT32, out->size);
  run_scatter(out, acc->ptr, sizeof(float), idx, v, ax, f);
  mx__cpu_convert(acc->ptr, MX_FLOAT32, out->buf->ptr, out->dtype, out->size);
  mx__buffer_release(acc);
  return MX_OK;
}

void mx__cpu_register_indexing(mx__kernel_fn *k) {
#define REG_ADD_I(ITAG, TI, TAG) add_fns[DT_##TAG][idx_slot(DT_##ITAG)] = add_##TAG##_##ITAG;
#define REG_ADD(TAG, _) IDX_TYPES(REG_ADD_I, TAG)
  MX_ALL_TAGS(REG_ADD, 0)
  k[MX_OP_TAKE] = k_take;
  k[MX_OP_TAKE_ALONG_AXIS] = k_take_along_axis;
  k[MX_OP_PUT_ALONG_AXIS] = k_put_along_axis;
  k[MX_OP_SCATTER_ADD_AXIS] = k_scatter_add_axis;
}
