/* harness.c — runs op-parity cases (see harness.h). */
#include "support/harness.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "array_impl.h"
#include "mxc/mxc.h"

int64_t oc_size(const int64_t *shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

void oc_strides(const int64_t *shape, int ndim, int64_t *st) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    st[i] = s;
    s *= shape[i];
  }
}

void oc_unravel(int64_t i, const int64_t *shape, int ndim, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    idx[d] = shape[d] ? i % shape[d] : 0;
    i = shape[d] ? i / shape[d] : 0;
  }
}

int64_t oc_bcast_offset(const int64_t *idx, int ndim, const int64_t *ishape, int indim) {
  int64_t off = 0, st = 1;
  for (int d = indim - 1; d >= 0; d--) {
    int od = d + (ndim - indim);
    int64_t i = ishape[d] == 1 ? 0 : idx[od];
    off += i * st;
    st *= ishape[d];
  }
  return off;
}

void oc_bcast_shape(const mx_opcase *c, int n, int64_t *shape, int *ndim) {
  int nd = 0;
  for (int i = 0; i < n; i++)
    if (c->ndim[i] > nd) nd = c->ndim[i];
  for (int d = 0; d < nd; d++) shape[d] = 1;
  for (int i = 0; i < n; i++)
    for (int d = 0; d < c->ndim[i]; d++) {
      int od = d + nd - c->ndim[i];
      if (c->shape[i][d] != 1) shape[od] = c->shape[i][d];
    }
  *ndim = nd;
}

/* ---- deterministic test RNG (splitmix64) ----------------------------------- */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

/* Values of input i as float64 (already rounded to the dtype). */
static double *make_values(const mx_opcase *c, int i, mx_dtype dt, uint64_t *rng, mx_dtype *in_dt) {
  int64_t n = oc_size(c->shape[i], c->ndim[i]);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  int kind = c->kind[i];
  *in_dt = kind == OC_IN_INT ? MX_INT32 : kind == OC_IN_BOOL ? MX_BOOL
         : kind == OC_IN_F32 ? MX_FLOAT32 : kind == OC_IN_U32 ? MX_UINT32 : dt;
  for (int64_t j = 0; j < n; j++) {
    if (kind == OC_IN_INT || kind == OC_IN_U32 ||
        (kind == OC_IN_DATA && !mx_dtype_is_float(dt) && dt != MX_BOOL)) {
      int64_t lo = c->ilo, hi = c->ihi;
      if (kind == OC_IN_DATA) {
        lo = (int64_t)c->lo;
        hi = (int64_t)c->hi;
        if (dt == MX_UINT8 || dt == MX_UINT32) {
          if (lo < 0) lo = 0;
        }
        if (hi <= lo) hi = lo + 1;
      }
      v[j] = (double)(lo + (int64_t)(rng_next(rng) % (uint64_t)(hi - lo)));
    } else if (kind == OC_IN_BOOL || dt == MX_BOOL) {
      v[j] = (double)(rng_next(rng) & 1);
    } else {
      double x = c->lo + (c->hi - c->lo) * rng_uniform(rng);
      /* round to the storage dtype so the reference sees the same values */
      if (*in_dt == MX_FLOAT32) x = (float)x;
      else if (*in_dt == MX_FLOAT16) x = mx__f16_to_f32(mx__f32_to_f16((float)x));
      else if (*in_dt == MX_BFLOAT16) x = mx__bf16_to_f32(mx__f32_to_bf16((float)x));
      v[j] = x;
    }
  }
  return v;
}

/* Build input i as an array holding v (row-major), contiguous or as a view. */
static mx_array *make_input(const int64_t *shape, int ndim, const double *v, mx_dtype dt,
                            bool noncontig) {
  int64_t n = oc_size(shape, ndim);
  mx_array *d = mx_array_from_data(v, shape, ndim, MX_FLOAT64);
  mx_array *c = mx_astype(d, dt);
  mx_array_free(d);
  if (!c || mx_array_eval(c)) {
    mx_array_free(c);
    return NULL;
  }
  if (!noncontig || n <= 1) return c;
  mx_array *r = NULL;
  if (ndim >= 2) {
    /* store transposed, return the transpose: strides reversed */
    mx_array *t = mx_swapaxes(c, -1, -2);
    mx_array *tc = mx_contiguous(t);
    mx_array_eval(tc);
    r = mx_swapaxes(tc, -1, -2);
    mx_array_free(t);
    mx_array_free(tc);
  } else {
    /* every other element of a twice-as-long array */
    int64_t big = n * 2;
    mx_array *z = mx_zeros(&big, 1, dt);
    int64_t st = 0, en = big, sp = 2;
    mx_array *u = mx_slice_update(z, c, &st, &en, &sp, 1);
    mx_array_eval(u);
    r = mx_slice(u, &st, &en, &sp, 1);
    mx_array_free(z);
    mx_array_free(u);
  }
  mx_array_free(c);
  if (r) mx_array_eval(r);
  return r;
}

static double default_tol(mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT64: return 1e-10;
    case MX_FLOAT32: return 2e-5;
    case MX_FLOAT16: return 2e-3;
    case MX_BFLOAT16: return 1.6e-2;
    default: return 0;
  }
}

static double round_to(double x, mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT32: return (float)x;
    case MX_FLOAT16: return mx__f16_to_f32(mx__f32_to_f16((float)x));
    case MX_BFLOAT16: return mx__bf16_to_f32(mx__f32_to_bf16((float)x));
    default: return x;
  }
}

oc_result oc_run(const mx_opcase *c, mx_dtype dt, mx_device device, bool noncontig,
                 uint64_t seed) {
  oc_result res = {.ok = 0};
  uint64_t rng = seed;
  double *vals[OC_MAX_IN] = {0};
  mx_array *in[OC_MAX_IN] = {0};
  mx_array *out = NULL;
  double *ref = NULL, *got = NULL;
  mx_dtype in_dt[OC_MAX_IN];
  for (int i = 0; i < c->nin; i++) {
    vals[i] = make_values(c, i, dt, &rng, &in_dt[i]);
    in[i] = make_input(c->shape[i], c->ndim[i], vals[i], in_dt[i], noncontig);
    if (!in[i]) {
      snprintf(res.msg, sizeof res.msg, "making input %d failed: %s", i, mx_last_error());
      goto done;
    }
  }
  int prev = mx_set_default_device(device);
  if (prev < 0) {
    snprintf(res.msg, sizeof res.msg, "device unavailable: %s", mx_last_error());
    goto done;
  }
  out = c->build(c, in);
  if (out && mx_array_eval(out)) {
    mx_set_default_device((mx_device)prev);
    snprintf(res.msg, sizeof res.msg, "eval failed: %s", mx_last_error());
    goto done;
  }
  mx_set_default_device((mx_device)prev);
  if (!out) {
    snprintf(res.msg, sizeof res.msg, "build failed: %s", mx_last_error());
    goto done;
  }
  ref = malloc(sizeof(double) * OC_MAX_OUT);
  int64_t rshape[8];
  int rnd = 0;
  if (c->ref(c, (const double *const *)vals, ref, rshape, &rnd)) {
    snprintf(res.msg, sizeof res.msg, "reference failed");
    goto done;
  }
  if (rnd != mx_array_ndim(out) || memcmp(rshape, mx_array_shape(out), sizeof(int64_t) * (size_t)rnd)) {
    char a[128], b[128];
    snprintf(res.msg, sizeof res.msg, "shape %s, reference %s",
             mx__shape_str(mx_array_shape(out), mx_array_ndim(out), a, sizeof a),
             mx__shape_str(rshape, rnd, b, sizeof b));
    goto done;
  }
  int64_t n = mx_array_size(out);
  got = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (mx_array_copy_to(out, MX_FLOAT64, got, n)) {
    snprintf(res.msg, sizeof res.msg, "reading output failed: %s", mx_last_error());
    goto done;
  }
  mx_dtype odt = mx_array_dtype(out);
  double tol = c->tol > 0 ? c->tol : default_tol(odt);
  if (c->flags & OC_INT_ONLY) tol = 0;
  for (int64_t j = 0; j < n; j++) {
    double r = round_to(ref[j], odt), g = got[j];
    if (isnan(r) && isnan(g)) continue;
    if (isinf(r) && r == g) continue;
    double err = fabs(g - r) / (1.0 + fabs(r));
    if (err > res.max_err || isnan(err)) res.max_err = isnan(err) ? INFINITY : err;
    if (!(err <= tol)) {
      snprintf(res.msg, sizeof res.msg, "element %lld: got %.9g, expected %.9g (tol %g)",
               (long long)j, g, r, tol);
      goto done;
    }
  }
  res.ok = 1;
done:
  for (int i = 0; i < c->nin; i++) {
    free(vals[i]);
    mx_array_free(in[i]);
  }
  mx_array_free(out);
  free(ref);
  free(got);
  return res;
}
