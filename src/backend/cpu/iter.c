/* iter.c — strided n-ary iteration shared by elementwise-style kernels. */
#include <string.h>

#include "cpu.h"

void mx__iter_init(mx__nd_iter *it, const int64_t *shape, int ndim, int nops, char **base,
                   const size_t *elsize, const int64_t *const *strides) {
  MX_ASSERT(nops <= MX__MAX_OPERANDS);
  memset(it, 0, sizeof *it);
  it->nops = nops;
  it->size = mx__shape_size(shape, ndim);
  int64_t st[MX__MAX_OPERANDS][MX_MAX_NDIM];
  for (int o = 0; o < nops; o++) {
    it->base[o] = base[o];
    it->elsize[o] = elsize[o];
    if (strides && strides[o]) memcpy(st[o], strides[o], sizeof(int64_t) * (size_t)ndim);
    else mx__compute_row_strides(shape, ndim, st[o]);
  }
  /* drop size-1 dims, then merge dim i into i+1 when contiguous for all */
  int nd = 0;
  int64_t sh[MX_MAX_NDIM];
  int64_t ms[MX__MAX_OPERANDS][MX_MAX_NDIM];
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    sh[nd] = shape[d];
    for (int o = 0; o < nops; o++) ms[o][nd] = st[o][d];
    nd++;
  }
  if (nd == 0) {
    sh[0] = 1;
    for (int o = 0; o < nops; o++) ms[o][0] = 1;
    nd = 1;
  }
  int out = 0;
  it->shape[0] = sh[0];
  for (int o = 0; o < nops; o++) it->strides[o][0] = ms[o][0];
  for (int d = 1; d < nd; d++) {
    bool merge = true;
    for (int o = 0; o < nops && merge; o++)
      if (it->strides[o][out] != ms[o][d] * sh[d]) merge = false;
    if (merge) {
      it->shape[out] *= sh[d];
      for (int o = 0; o < nops; o++) it->strides[o][out] = ms[o][d];
    } else {
      out++;
      it->shape[out] = sh[d];
      for (int o = 0; o < nops; o++) it->strides[o][out] = ms[o][d];
    }
  }
  it->ndim = out + 1;
}

void mx__iter_run_range(const mx__nd_iter *it, mx__inner_fn inner, const void *ctx,
                        int64_t begin, int64_t end) {
  int nd = it->ndim, nops = it->nops;
  int64_t inner_n = it->shape[nd - 1];
  int64_t idx[MX_MAX_NDIM];
  /* multi-index of `begin` */
  int64_t rem = begin;
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = rem % it->shape[d];
    rem /= it->shape[d];
  }
  char *p[MX__MAX_OPERANDS];
  int64_t s[MX__MAX_OPERANDS];
  for (int o = 0; o < nops; o++) s[o] = it->strides[o][nd - 1];
  int64_t pos = begin;
  while (pos < end) {
    for (int o = 0; o < nops; o++) {
      int64_t off = 0;
      for (int d = 0; d < nd; d++) off += idx[d] * it->strides[o][d];
      p[o] = it->base[o] + off * (int64_t)it->elsize[o];
    }
    int64_t n = inner_n - idx[nd - 1];
    if (n > end - pos) n = end - pos;
    inner(p, s, n, ctx);
    pos += n;
    idx[nd - 1] += n;
    for (int d = nd - 1; d > 0 && idx[d] >= it->shape[d]; d--) {
      idx[d] = 0;
      idx[d - 1]++;
    }
  }
}

typedef struct {
  const mx__nd_iter *it;
  mx__inner_fn inner;
  const void *ctx;
} run_ctx;

static void run_chunk(void *c, int64_t b, int64_t e) {
  const run_ctx *r = c;
  mx__iter_run_range(r->it, r->inner, r->ctx, b, e);
}

void mx__iter_run(const mx__nd_iter *it, mx__inner_fn inner, const void *ctx) {
  if (it->size == 0) return;
  run_ctx r = {it, inner, ctx};
  mx__parallel_for(it->size, 1 << 15, run_chunk, &r);
}

/* ---- strided copy ------------------------------------------------------- */
#define COPY_INNER(NAME, T)                                               \
  static void NAME(char **p, const int64_t *s, int64_t n, const void *c) { \
    MX_UNUSED(c);                                                         \
    T *o = (T *)p[0];                                                     \
    const T *a = (const T *)p[1];                                         \
    int64_t sa = s[1];                                                    \
    if (sa == 1) memcpy(o, a, sizeof(T) * (size_t)n);                     \
    else                                                                  \
      for (int64_t i = 0; i < n; i++) o[i] = a[i * sa];                   \
  }
COPY_INNER(copy1, uint8_t)
COPY_INNER(copy2, uint16_t)
COPY_INNER(copy4, uint32_t)
COPY_INNER(copy8, uint64_t)

void mx__cpu_copy_to_contiguous(mx_array *in, void *out) {
  size_t es = mx_dtype_size(in->dtype);
  char *base[2] = {out, mx__data(in)};
  size_t el[2] = {es, es};
  const int64_t *st[2] = {NULL, in->strides};
  mx__nd_iter it;
  mx__iter_init(&it, in->shape, in->ndim, 2, base, el, st);
  mx__inner_fn f = es == 1 ? copy1 : es == 2 ? copy2 : es == 4 ? copy4 : copy8;
  mx__iter_run(&it, f, NULL);
}
