/* opcases_reduce.c — op-parity cases for reductions, softmax family and
 * cumsum. The reference reduces with an explicit odometer over the input. */
#include <math.h>
#include <string.h>

#include "array_impl.h"
#include "support/harness.h"

/* ip[0]: which op; ip[1]: axis mask (bit d) or axis; ip[2]: keepdims / flags */
enum { SUM, MEAN, PROD, MAX, MIN, ALL, ANY, VAR, STD, LSE, ARGMAX, ARGMIN, SOFTMAX, LOGSOFTMAX, CUMSUM };
static const char *names[] = {"sum", "mean", "prod", "max", "min", "all", "any", "var", "std",
                              "logsumexp", "argmax", "argmin", "softmax", "log_softmax", "cumsum"};

static int mask_axes(const mx_opcase *c, int *axes) {
  int n = 0;
  for (int d = 0; d < c->ndim[0]; d++)
    if (c->ip[1] & (1 << d)) axes[n++] = d;
  return n;
}

static mx_array *b_red(const mx_opcase *c, mx_array **in) {
  int axes[8];
  int n = mask_axes(c, axes);
  bool kd = c->ip[2] & 1;
  const int *ax = c->ip[1] == -1 ? NULL : axes;
  switch (c->ip[0]) {
    case SUM: return mx_sum(in[0], ax, n, kd);
    case MEAN: return mx_mean(in[0], ax, n, kd);
    case PROD: return mx_prod(in[0], ax, n, kd);
    case MAX: return mx_max(in[0], ax, n, kd);
    case MIN: return mx_min(in[0], ax, n, kd);
    case ALL: return mx_all(in[0], ax, n, kd);
    case ANY: return mx_any(in[0], ax, n, kd);
    case VAR: return mx_var(in[0], ax, n, kd, c->ip[3]);
    case STD: return mx_std(in[0], ax, n, kd, c->ip[3]);
    case LSE: return mx_logsumexp(in[0], ax, n, kd);
    case ARGMAX: return mx_argmax(in[0], axes[0], kd);
    case ARGMIN: return mx_argmin(in[0], axes[0], kd);
    case SOFTMAX: return mx_softmax(in[0], ax, n);
    case LOGSOFTMAX: return mx_log_softmax(in[0], ax, n);
    case CUMSUM: return mx_cumsum(in[0], axes[0], c->ip[2] & 2, !(c->ip[2] & 4));
  }
  return NULL;
}

static int f_red(const mx_opcase *c, const double *const *in, double *out, int64_t *oshape, int *ond) {
  const double *x = in[0];
  int nd = c->ndim[0];
  const int64_t *sh = c->shape[0];
  uint32_t mask = c->ip[1] == -1 ? (1u << nd) - 1 : (uint32_t)c->ip[1];
  bool kd = c->ip[2] & 1;
  int op = c->ip[0];
  int64_t n = oc_size(sh, nd), idx[8];
  if (op == SOFTMAX || op == LOGSOFTMAX || op == CUMSUM) {
    memcpy(oshape, sh, sizeof(int64_t) * (size_t)nd);
    *ond = nd;
    for (int64_t i = 0; i < n; i++) {
      oc_unravel(i, sh, nd, idx);
      /* iterate over the reduced group containing i */
      double m = -INFINITY, s = 0, cs = 0;
      int64_t j, jidx[8];
      for (j = 0; j < n; j++) {
        oc_unravel(j, sh, nd, jidx);
        bool same = true;
        for (int d = 0; d < nd; d++)
          if (!(mask & (1u << d)) && jidx[d] != idx[d]) same = false;
        if (!same) continue;
        if (op == CUMSUM) {
          int ax = c->ip[1] == -1 ? 0 : __builtin_ctz(mask);
          bool rev = c->ip[2] & 2, incl = !(c->ip[2] & 4);
          bool take = rev ? (incl ? jidx[ax] >= idx[ax] : jidx[ax] > idx[ax])
                          : (incl ? jidx[ax] <= idx[ax] : jidx[ax] < idx[ax]);
          if (take) cs += x[j];
        } else {
          m = fmax(m, x[j]);
        }
      }
      if (op == CUMSUM) {
        out[i] = cs;
        continue;
      }
      for (j = 0; j < n; j++) {
        oc_unravel(j, sh, nd, jidx);
        bool same = true;
        for (int d = 0; d < nd; d++)
          if (!(mask & (1u << d)) && jidx[d] != idx[d]) same = false;
        if (same) s += exp(x[j] - m);
      }
      out[i] = op == SOFTMAX ? exp(x[i] - m) / s : x[i] - m - log(s);
    }
    return 0;
  }
  /* output shape */
  int64_t ks[8];
  int k = 0;
  for (int d = 0; d < nd; d++) {
    ks[d] = (mask & (1u << d)) ? 1 : sh[d];
    if (!(mask & (1u << d)) || kd) oshape[k++] = ks[d];
  }
  *ond = k;
  int64_t no = oc_size(ks, nd), cnt = 1;
  for (int d = 0; d < nd; d++)
    if (mask & (1u << d)) cnt *= sh[d];
  for (int64_t o = 0; o < no; o++) {
    double acc = (op == PROD || op == ALL) ? 1 : op == MAX ? -INFINITY : op == MIN ? INFINITY : 0;
    double acc2 = 0, best = 0;
    int64_t besti = -1, r = 0;
    int64_t oidx[8];
    oc_unravel(o, ks, nd, oidx);
    double mean = 0;
    if (op == VAR || op == STD) {
      for (int64_t i = 0; i < n; i++) {
        oc_unravel(i, sh, nd, idx);
        bool in_g = true;
        for (int d = 0; d < nd; d++)
          if (!(mask & (1u << d)) && idx[d] != oidx[d]) in_g = false;
        if (in_g) mean += x[i];
      }
      mean /= (double)cnt;
    }
    double lm = -INFINITY;
    if (op == LSE)
      for (int64_t i = 0; i < n; i++) {
        oc_unravel(i, sh, nd, idx);
        bool in_g = true;
        for (int d = 0; d < nd; d++)
          if (!(mask & (1u << d)) && idx[d] != oidx[d]) in_g = false;
        if (in_g) lm = fmax(lm, x[i]);
      }
    for (int64_t i = 0; i < n; i++) {
      oc_unravel(i, sh, nd, idx);
      bool in_g = true;
      for (int d = 0; d < nd; d++)
        if (!(mask & (1u << d)) && idx[d] != oidx[d]) in_g = false;
      if (!in_g) continue;
      double v = x[i];
      switch (op) {
        case SUM: case MEAN: acc += v; break;
        case PROD: acc *= v; break;
        case MAX: acc = fmax(acc, v); break;
        case MIN: acc = fmin(acc, v); break;
        case ALL: acc = acc && v != 0; break;
        case ANY: acc = acc || v != 0; break;
        case VAR: case STD: acc2 += (v - mean) * (v - mean); break;
        case LSE: acc += exp(v - lm); break;
        case ARGMAX: if (besti < 0 || v > best) { best = v; besti = r; } break;
        case ARGMIN: if (besti < 0 || v < best) { best = v; besti = r; } break;
      }
      r++;
    }
    switch (op) {
      case MEAN: acc /= (double)cnt; break;
      case VAR: acc = acc2 / (double)(cnt - c->ip[3]); break;
      case STD: acc = sqrt(acc2 / (double)(cnt - c->ip[3])); break;
      case LSE: acc = lm + log(acc); break;
      case ARGMAX: case ARGMIN: acc = (double)besti; break;
    }
    out[o] = acc;
  }
  return 0;
}

#define RC(opi, d, ndim_, sh, mask, kd, ...)                                                   \
  {.op = NULL, .desc = d, .nin = 1, .ndim = {ndim_}, .shape = {sh}, .lo = -2, .hi = 2,         \
   .flags = OC_NONCONTIG, .ip = {opi, mask, kd, 1}, .build = b_red, .ref = f_red, __VA_ARGS__}
#define S3 {3, 5, 7}
#define ARR(...) {__VA_ARGS__}
#define FL OC_FLOATS

static mx_opcase cases[] = {
    RC(SUM, "last axis", 3, S3, 4, 0, OC_ALL_NUMERIC),
    RC(SUM, "first axis keepdims", 3, S3, 1, 1, OC_ALL_NUMERIC),
    RC(SUM, "axes 0,2", 3, S3, 5, 0, FL),
    RC(SUM, "all", 3, S3, -1, 0, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32, MX_BOOL)),
    RC(SUM, "large row", 2, ARR(2, 20000), 2, 0, OC_F32_F64),
    RC(SUM, "empty axis", 2, ARR(0, 4), 1, 0, OC_DT(MX_FLOAT32)),
    RC(MEAN, "axis 1", 3, S3, 2, 1, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_INT32)),
    RC(PROD, "axis 2", 3, ARR(3, 4, 5), 4, 0, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT64)),
    RC(MAX, "axis 1", 3, S3, 2, 0, OC_ALL_NUMERIC),
    RC(MIN, "axes 0,1", 3, S3, 3, 1, OC_ALL_NUMERIC),
    RC(ALL, "axis 0", 2, ARR(4, 9), 1, 0, OC_DT(MX_BOOL, MX_INT32), .flags = OC_NONCONTIG | OC_NO_GRAD),
    RC(ANY, "all axes", 2, ARR(4, 9), -1, 0, OC_DT(MX_BOOL, MX_INT32), .flags = OC_NONCONTIG | OC_NO_GRAD),
    RC(VAR, "axis 2 ddof 1", 3, S3, 4, 0, OC_F32_F64),
    RC(STD, "axes 0,1", 3, S3, 3, 1, OC_F32_F64),
    RC(LSE, "last axis", 3, S3, 4, 0, FL),
    RC(LSE, "axes 0,2", 3, S3, 5, 1, OC_F32_F64),
    RC(ARGMAX, "axis 1", 3, S3, 2, 0, OC_DT(MX_FLOAT32, MX_INT32, MX_FLOAT16), .flags = OC_NONCONTIG | OC_NO_GRAD),
    RC(ARGMIN, "axis 2 keepdims", 3, S3, 4, 1, OC_DT(MX_FLOAT64, MX_UINT8), .flags = OC_NONCONTIG | OC_NO_GRAD),
    RC(SOFTMAX, "last axis", 3, S3, 4, 0, FL),
    RC(SOFTMAX, "axis 0", 3, S3, 1, 0, OC_F32_F64),
    RC(SOFTMAX, "axes 1,2", 3, S3, 6, 0, OC_F32_F64),
    RC(LOGSOFTMAX, "last axis", 2, ARR(6, 50), 2, 0, FL),
    RC(CUMSUM, "axis 1", 3, S3, 2, 0, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32)),
    RC(CUMSUM, "axis 2 reverse exclusive", 3, S3, 4, 6, OC_F32_F64),
};

__attribute__((constructor)) static void init_names(void) {
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) cases[i].op = names[cases[i].ip[0]];
}

const mx_opcase_table mx_opcases_reduce = {cases, (int)(sizeof cases / sizeof *cases)};
