/* opcases_indexing.c — op-parity cases for take, take_flat, gather_rows,
 * take_along_axis, put_along_axis and scatter_add_axis. References are
 * plain C on float64 and implement the documented index rule themselves:
 * negative indices count from the end, out-of-range ones are clamped.
 *
 * Params: ip[0] axis, ip[1] index dtype (0 int32 as generated, 1 int64,
 * 2 uint32, 3 uint8; unsigned cases use non-negative ranges). */
#include <string.h>

#include "support/harness.h"

static int64_t norm_index(double v, int64_t dim) {
  int64_t i = (int64_t)v;
  if (i < 0) i += dim;
  return i < 0 ? 0 : i >= dim ? dim - 1 : i;
}

static const mx_dtype idx_dtypes[] = {MX_INT32, MX_INT64, MX_UINT32, MX_UINT8};

/* the index input cast to the case's index dtype (a new reference) */
static mx_array *index_input(const mx_opcase *c, mx_array *idx) {
  return mx_astype(idx, idx_dtypes[c->ip[1]]);
}

static int norm_axis(int axis, int ndim) { return axis < 0 ? axis + ndim : axis; }

/* ---- take / take_flat / gather_rows --------------------------------------- */
enum { TAKE, TAKE_FLAT, GATHER_ROWS };

static mx_array *b_take(const mx_opcase *c, mx_array **in) {
  mx_array *idx = index_input(c, in[1]), *r = NULL;
  switch (c->ip[2]) {
    case TAKE: r = mx_take(in[0], idx, c->ip[0]); break;
    case TAKE_FLAT: r = mx_take_flat(in[0], idx); break;
    case GATHER_ROWS: r = mx_gather_rows(in[0], idx); break;
  }
  mx_array_free(idx);
  return r;
}

static int f_take(const mx_opcase *c, const double *const *in, double *out, int64_t *shape,
                  int *nd) {
  int64_t ashape[8];
  int an = c->ndim[0], ax = norm_axis(c->ip[0], c->ndim[0]);
  memcpy(ashape, c->shape[0], sizeof ashape);
  if (c->ip[2] == TAKE_FLAT) {
    ashape[0] = oc_size(c->shape[0], c->ndim[0]);
    an = 1;
    ax = 0;
  } else if (c->ip[2] == GATHER_ROWS) {
    ax = 0;
  }
  const int64_t *is = c->shape[1];
  int in_ = c->ndim[1];
  int64_t pre = oc_size(ashape, ax), A = ashape[ax];
  int64_t post = oc_size(ashape + ax + 1, an - ax - 1), n = oc_size(is, in_);
  *nd = 0;
  for (int d = 0; d < ax; d++) shape[(*nd)++] = ashape[d];
  for (int d = 0; d < in_; d++) shape[(*nd)++] = is[d];
  for (int d = ax + 1; d < an; d++) shape[(*nd)++] = ashape[d];
  for (int64_t p = 0; p < pre; p++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t q = 0; q < post; q++)
        out[(p * n + j) * post + q] = in[0][(p * A + norm_index(in[1][j], A)) * post + q];
  return 0;
}

#define TK(name, d, kind_, an, ash, in_, ish, axis, ity, lo_, hi_, ...)                  \
  {.op = name, .desc = d, .nin = 2, .ndim = {an, in_}, .shape = {ash, ish},              \
   .kind = {OC_IN_DATA, kind_}, .lo = -4, .hi = 4, .ilo = lo_, .ihi = hi_,               \
   .flags = OC_NONCONTIG, .ip = {axis, ity, TAKE}, .build = b_take, .ref = f_take,       \
   __VA_ARGS__}
#define ALL_DT \
  OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64, MX_UINT8, MX_UINT32, MX_BOOL)
#define S(...) {__VA_ARGS__}

/* ---- take_along_axis ------------------------------------------------------------ */
static mx_array *b_take_along(const mx_opcase *c, mx_array **in) {
  mx_array *idx = index_input(c, in[1]);
  mx_array *r = mx_take_along_axis(in[0], idx, c->ip[0]);
  mx_array_free(idx);
  return r;
}

static int f_take_along(const mx_opcase *c, const double *const *in, double *out,
                        int64_t *shape, int *nd) {
  int n = c->ndim[0], ax = norm_axis(c->ip[0], n);
  const int64_t *as = c->shape[0], *is = c->shape[1];
  for (int d = 0; d < n; d++) shape[d] = d == ax ? is[d] : (as[d] == 1 ? is[d] : as[d]);
  *nd = n;
  int64_t total = oc_size(shape, n), idx[8], ast[8];
  oc_strides(as, n, ast);
  for (int64_t i = 0; i < total; i++) {
    oc_unravel(i, shape, n, idx);
    int64_t k = norm_index(in[1][oc_bcast_offset(idx, n, is, n)], as[ax]);
    int64_t off = 0;
    for (int d = 0; d < n; d++) off += (d == ax ? k : (as[d] == 1 ? 0 : idx[d])) * ast[d];
    out[i] = in[0][off];
  }
  return 0;
}

#define TA(d, an, ash, ish, axis, ity, lo_, hi_, ...)                                     \
  {.op = "take_along_axis", .desc = d, .nin = 2, .ndim = {an, an}, .shape = {ash, ish},   \
   .kind = {OC_IN_DATA, OC_IN_INT}, .lo = -4, .hi = 4, .ilo = lo_, .ihi = hi_,            \
   .flags = OC_NONCONTIG, .ip = {axis, ity}, .build = b_take_along, .ref = f_take_along,  \
   __VA_ARGS__}

/* ---- put_along_axis / scatter_add_axis ------------------------------------------ */
static mx_array *b_scatter(const mx_opcase *c, mx_array **in) {
  mx_array *idx = index_input(c, in[1]);
  if (c->ip[3] && idx) { /* the index broadcast over the values' other axes (a view) */
    mx_array *b = mx_broadcast_to(idx, mx_array_shape(in[2]), mx_array_ndim(in[2]));
    mx_array_free(idx);
    idx = b;
  }
  mx_array *r = c->ip[2] ? mx_scatter_add_axis(in[0], idx, in[2], c->ip[0])
                         : mx_put_along_axis(in[0], idx, in[2], c->ip[0]);
  mx_array_free(idx);
  return r;
}

/* shapes are passed parenthesised, (4, 6), and braced inside SC */
/* Visits the index shape T in row-major order: for a fixed position on the
 * other axes the indexed axis is visited in increasing order, so the last
 * duplicate wins (put) and sums run in index order (add). */
static int f_scatter(const mx_opcase *c, const double *const *in, double *out, int64_t *shape,
                     int *nd) {
  int n = c->ndim[0], ax = norm_axis(c->ip[0], n);
  const int64_t *as = c->shape[0], *is = c->shape[1];
  int64_t T[8], idx[8], ast[8];
  for (int d = 0; d < n; d++) T[d] = d == ax ? is[d] : as[d];
  oc_strides(as, n, ast);
  int64_t total = oc_size(as, n);
  memcpy(out, in[0], sizeof(double) * (size_t)total);
  memcpy(shape, as, sizeof(int64_t) * (size_t)n);
  *nd = n;
  int64_t tn = oc_size(T, n);
  for (int64_t i = 0; i < tn; i++) {
    oc_unravel(i, T, n, idx);
    int64_t k = norm_index(in[1][oc_bcast_offset(idx, n, is, n)], as[ax]);
    double v = in[2][oc_bcast_offset(idx, n, c->shape[2], c->ndim[2])];
    int64_t off = 0;
    for (int d = 0; d < n; d++) off += (d == ax ? k : idx[d]) * ast[d];
    out[off] = c->ip[2] ? out[off] + v : v;
  }
  return 0;
}

#define SC(name, add, d, an, ash, ish, vn, vsh, axis, ity, lo_, hi_, ...)                    \
  {.op = name, .desc = d, .nin = 3, .ndim = {an, an, vn}, .shape = {S ash, S ish, S vsh},    \
   .kind = {OC_IN_DATA, OC_IN_INT, OC_IN_DATA}, .lo = -4, .hi = 4, .ilo = lo_, .ihi = hi_,   \
   .flags = OC_NONCONTIG, .ip = {axis, ity, add}, .build = b_scatter, .ref = f_scatter,      \
   __VA_ARGS__}
#define PUT(...) SC("put_along_axis", 0, __VA_ARGS__)
#define ADD(...) SC("scatter_add_axis", 1, __VA_ARGS__)
#define NOBOOL_DT \
  OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64, MX_UINT8, MX_UINT32)

static const mx_opcase cases[] = {
    /* take: wrap and clamp on both sides (dim 7, indices in [-11, 11)) */
    TK("take", "axis 1, wrap+clamp", OC_IN_INT, 2, S(5, 7), 2, S(3, 6), 1, 0, -11, 11, ALL_DT),
    TK("take", "axis 0 of 3-d, int64 idx", OC_IN_INT, 3, S(4, 6, 5), 2, S(2, 3), 0, 1, -4, 4,
       OC_DT(MX_FLOAT32, MX_BFLOAT16, MX_INT64)),
    TK("take", "axis -1, uint32 idx", OC_IN_U32, 3, S(3, 2, 9), 1, S(11), -1, 2, 0, 12,
       OC_DT(MX_FLOAT32, MX_FLOAT16, MX_UINT8)),
    TK("take", "middle axis, uint8 idx", OC_IN_INT, 3, S(3, 10, 4), 2, S(2, 2), 1, 3, 0, 12,
       OC_DT(MX_FLOAT64, MX_INT32)),
    TK("take", "0-d index", OC_IN_INT, 2, S(4, 6), 0, S(0), 1, 0, -6, 6, OC_DT(MX_FLOAT32)),
    /* rows of 16-byte vectors: an embedding lookup */
    TK("take", "rows of an embedding table, wrap+clamp", OC_IN_INT, 2, S(50, 24), 2, S(3, 7), 0,
       0, -60, 60, OC_DT(MX_FLOAT32, MX_FLOAT16, MX_BFLOAT16, MX_INT64)),
    TK("take", "empty indices", OC_IN_INT, 2, S(3, 4), 1, S(0), 1, 0, 0, 4, OC_DT(MX_FLOAT32)),
    TK("take", "empty leading axis", OC_IN_INT, 2, S(0, 5), 1, S(3), 1, 0, 0, 5,
       OC_DT(MX_FLOAT32)),
    TK("take", "size-1 axis", OC_IN_INT, 3, S(2, 1, 3), 2, S(2, 2), 1, 0, -2, 2,
       OC_DT(MX_FLOAT32, MX_INT64)),
    {.op = "take_flat", .desc = "(3,4) flat, wrap+clamp", .nin = 2, .ndim = {2, 2},
     .shape = {{3, 4}, {2, 5}}, .kind = {OC_IN_DATA, OC_IN_INT}, .lo = -4, .hi = 4, .ilo = -14,
     .ihi = 14, .flags = OC_NONCONTIG, .ip = {0, 0, TAKE_FLAT}, .build = b_take,
     .ref = f_take, ALL_DT},
    {.op = "gather_rows", .desc = "embedding (10,16)[3,4]", .nin = 2, .ndim = {2, 2},
     .shape = {{10, 16}, {3, 4}}, .kind = {OC_IN_DATA, OC_IN_INT}, .lo = -4, .hi = 4, .ilo = 0,
     .ihi = 10, .flags = OC_NONCONTIG, .ip = {0, 0, GATHER_ROWS}, .build = b_take,
     .ref = f_take, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16)},
    {.op = "gather_rows", .desc = "uint32 ids, 1-d table", .nin = 2, .ndim = {1, 1},
     .shape = {{9}, {13}}, .kind = {OC_IN_DATA, OC_IN_U32}, .lo = -4, .hi = 4, .ilo = 0,
     .ihi = 9, .flags = OC_NONCONTIG, .ip = {0, 2, GATHER_ROWS}, .build = b_take,
     .ref = f_take, OC_DT(MX_FLOAT32, MX_INT32)},

    /* take_along_axis */
    TA("axis 1, wrap+clamp", 2, S(4, 6), S(4, 3), 1, 0, -8, 8, ALL_DT),
    TA("axis 0, broadcast a and idx", 3, S(5, 1, 3), S(1, 4, 3), 0, 1, -5, 5,
       OC_DT(MX_FLOAT32, MX_FLOAT16, MX_INT32)),
    TA("axis -1, argsort-like", 3, S(2, 3, 7), S(2, 3, 7), -1, 0, 0, 7,
       OC_DT(MX_FLOAT32, MX_FLOAT64, MX_BFLOAT16)),
    TA("uint8 idx, empty index axis", 2, S(3, 5), S(3, 0), 1, 3, 0, 5, OC_DT(MX_FLOAT32)),

    /* put_along_axis: duplicates likely, last one wins */
    PUT("axis 1, duplicates, clamps", 2, (4, 6), (4, 5), 2, (4, 5), 1, 0, -8, 8, ALL_DT),
    PUT("axis 0, broadcast idx and values", 3, (5, 3, 2), (2, 1, 2), 3, (1, 3, 1), 0, 1, -5,
        5, OC_DT(MX_FLOAT32, MX_BFLOAT16, MX_INT64, MX_BOOL)),
    PUT("scalar value", 2, (3, 8), (3, 2), 0, (0), -1, 2, 0, 8,
        OC_DT(MX_FLOAT64, MX_UINT8)),

    /* scatter_add_axis: duplicates add up */
    ADD("axis 0, duplicates, clamps", 2, (6, 4), (9, 4), 2, (9, 4), 0, 0, -9, 9, NOBOOL_DT),
    ADD("axis -1, broadcast values", 3, (2, 3, 5), (2, 3, 7), 1, (7), -1, 1, -5, 5,
        OC_DT(MX_FLOAT32, MX_FLOAT16, MX_INT32)),
    ADD("embedding grad shape", 3, (1, 7, 1), (1, 12, 1), 3, (1, 12, 1), 1, 3, 0, 7,
        OC_DT(MX_FLOAT32, MX_BFLOAT16)),
    ADD("empty indices", 2, (3, 4), (3, 0), 2, (3, 0), 1, 0, 0, 4, OC_DT(MX_FLOAT32)),
    /* the embedding gradient: ids broadcast over the model dimension (a
     * stride-0 view), a long list with duplicates, clamped ids too */
    ADD("embedding grad, ids broadcast over 40 columns", 3, (1, 37, 40), (1, 600, 1), 3,
        (1, 600, 40), 1, 0, -2, 39, OC_DT(MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16, MX_FLOAT64),
        .ip = {1, 0, 1, 1}),
    ADD("ids broadcast, 2 leading rows, int64 ids", 3, (2, 300, 24), (1, 700, 1), 3,
        (2, 700, 24), 1, 1, 0, 300, OC_DT(MX_FLOAT32, MX_BFLOAT16), .ip = {1, 1, 1, 1}),
};

const mx_opcase_table mx_opcases_indexing = {cases, (int)(sizeof cases / sizeof *cases)};
