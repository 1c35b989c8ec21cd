/* opcases_shape.c — op-parity cases for shape ops. Each case builds one
 * shape op on input 0 (shape (2,3,4) unless noted); the reference computes
 * the output index by index. */
#include <string.h>

#include "array_impl.h"
#include "support/harness.h"

static mx_array *b_shape(const mx_opcase *c, mx_array **in) {
  mx_array *a = in[0];
  switch (c->ip[0]) {
    case 0: return mx_reshape(a, (int64_t[]){4, -1}, 2);
    case 1: return mx_flatten(a, 1, 2);
    case 2: return mx_transpose(a, (int[]){2, 0, 1}, 3);
    case 3: return mx_swapaxes(a, 0, 2);
    case 4: return mx_moveaxis(a, 0, -1);
    case 5: return mx_expand_dims(a, (int[]){0, 2}, 2);
    case 6: { mx_array *e = mx_expand_dims(a, (int[]){1}, 1); mx_array *r = mx_squeeze(e, NULL, 0); mx_array_free(e); return r; }
    case 7: return mx_broadcast_to(a, (int64_t[]){5, 2, 3, 4}, 4);
    case 8: return mx_slice(a, (int64_t[]){1, -1, 0}, (int64_t[]){2, -4, 4}, (int64_t[]){1, -1, 3}, 3);
    case 9: return mx_slice_update(a, in[1], (int64_t[]){0, 1, 1}, (int64_t[]){2, 3, 4}, (int64_t[]){1, 1, 2}, 3);
    case 10: { mx_array *x[2] = {a, in[1]}; return mx_concatenate(x, 2, 1); }
    case 11: { mx_array *x[2] = {a, a}; return mx_stack(x, 2, 1); }
    case 12: { mx_array *o[2]; if (mx_split(a, 2, 0, o)) return NULL; mx_array_free(o[0]); return o[1]; }
    case 13: return mx_pad(a, (int[]){1, 2}, (int64_t[]){1, 0}, (int64_t[]){2, 1}, 2, 2.0);
    case 14: return mx_tile(a, (int64_t[]){2, 1, 2}, 3);
    case 15: return mx_repeat(a, 2, 1);
    case 16: return mx_contiguous(a);
    case 17: return mx_slice(a, (int64_t[]){0, 0, 2}, (int64_t[]){2, 0, 4}, NULL, 3); /* empty */
  }
  return NULL;
}

static int f_shape(const mx_opcase *c, const double *const *in, double *out, int64_t *s, int *nd) {
  const double *a = in[0];
  /* a is (2,3,4), row-major: a[i][j][k] = a[i*12 + j*4 + k] */
#define A(i, j, k) a[(i) * 12 + (j) * 4 + (k)]
  int n = 0;
  switch (c->ip[0]) {
    case 0: s[0] = 4; s[1] = 6; *nd = 2; memcpy(out, a, 24 * sizeof(double)); break;
    case 1: s[0] = 2; s[1] = 12; *nd = 2; memcpy(out, a, 24 * sizeof(double)); break;
    case 2: s[0] = 4; s[1] = 2; s[2] = 3; *nd = 3;
      for (int k = 0; k < 4; k++) for (int i = 0; i < 2; i++) for (int j = 0; j < 3; j++) out[n++] = A(i, j, k);
      break;
    case 3: s[0] = 4; s[1] = 3; s[2] = 2; *nd = 3;
      for (int k = 0; k < 4; k++) for (int j = 0; j < 3; j++) for (int i = 0; i < 2; i++) out[n++] = A(i, j, k);
      break;
    case 4: s[0] = 3; s[1] = 4; s[2] = 2; *nd = 3;
      for (int j = 0; j < 3; j++) for (int k = 0; k < 4; k++) for (int i = 0; i < 2; i++) out[n++] = A(i, j, k);
      break;
    case 5: s[0] = 1; s[1] = 2; s[2] = 1; s[3] = 3; s[4] = 4; *nd = 5; memcpy(out, a, 24 * sizeof(double)); break;
    case 6: s[0] = 2; s[1] = 3; s[2] = 4; *nd = 3; memcpy(out, a, 24 * sizeof(double)); break;
    case 7: s[0] = 5; s[1] = 2; s[2] = 3; s[3] = 4; *nd = 4;
      for (int r = 0; r < 5; r++) memcpy(out + r * 24, a, 24 * sizeof(double));
      break;
    case 8: /* [1:2, -1:-4:-1, 0:4:3] -> i=1; j=2,1,0; k=0,3 */
      s[0] = 1; s[1] = 3; s[2] = 2; *nd = 3;
      for (int j = 2; j >= 0; j--) for (int k = 0; k < 4; k += 3) out[n++] = A(1, j, k);
      break;
    case 9: { /* update (2,2,2) into [0:2, 1:3, 1:4:2] */
      s[0] = 2; s[1] = 3; s[2] = 4; *nd = 3;
      memcpy(out, a, 24 * sizeof(double));
      const double *u = in[1];
      for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++) for (int k = 0; k < 2; k++)
        out[i * 12 + (j + 1) * 4 + (1 + 2 * k)] = u[i * 4 + j * 2 + k];
      break;
    }
    case 10: { /* concat (2,3,4) with (2,2,4) on axis 1 */
      s[0] = 2; s[1] = 5; s[2] = 4; *nd = 3;
      const double *b = in[1];
      for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 3; j++) for (int k = 0; k < 4; k++) out[n++] = A(i, j, k);
        for (int j = 0; j < 2; j++) for (int k = 0; k < 4; k++) out[n++] = b[i * 8 + j * 4 + k];
      }
      break;
    }
    case 11: s[0] = 2; s[1] = 2; s[2] = 3; s[3] = 4; *nd = 4;
      for (int i = 0; i < 2; i++) for (int r = 0; r < 2; r++) for (int j = 0; j < 3; j++) for (int k = 0; k < 4; k++) out[n++] = A(i, j, k);
      break;
    case 12: s[0] = 1; s[1] = 3; s[2] = 4; *nd = 3; memcpy(out, a + 12, 12 * sizeof(double)); break;
    case 13: /* pad axis1 (1,2), axis2 (0,1) with 2 */
      s[0] = 2; s[1] = 6; s[2] = 5; *nd = 3;
      for (int i = 0; i < 2; i++) for (int j = 0; j < 6; j++) for (int k = 0; k < 5; k++) {
        int jj = j - 1, kk = k;
        out[n++] = (jj >= 0 && jj < 3 && kk < 4) ? A(i, jj, kk) : 2.0;
      }
      break;
    case 14: s[0] = 4; s[1] = 3; s[2] = 8; *nd = 3;
      for (int i = 0; i < 4; i++) for (int j = 0; j < 3; j++) for (int k = 0; k < 8; k++) out[n++] = A(i % 2, j, k % 4);
      break;
    case 15: s[0] = 2; s[1] = 6; s[2] = 4; *nd = 3;
      for (int i = 0; i < 2; i++) for (int j = 0; j < 6; j++) for (int k = 0; k < 4; k++) out[n++] = A(i, j / 2, k);
      break;
    case 16: s[0] = 2; s[1] = 3; s[2] = 4; *nd = 3; memcpy(out, a, 24 * sizeof(double)); break;
    case 17: s[0] = 2; s[1] = 0; s[2] = 2; *nd = 3; break;
  }
#undef A
  return 0;
}

#define SH(name, i, ...) SHD(name, "(2,3,4)", i)
#define SHD(name, d, i)                                                                     \
  {.op = name, .desc = d, .nin = 1, .ndim = {3}, .shape = {{2, 3, 4}}, .lo = -5,   \
   .hi = 5, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT32, MX_FLOAT16), .flags = OC_NONCONTIG,    \
   .ip = {i}, .build = b_shape, .ref = f_shape}

static const mx_opcase cases[] = {
    SH("reshape", 0), SH("flatten", 1), SH("transpose", 2), SH("swapaxes", 3),
    SH("moveaxis", 4), SH("expand_dims", 5), SH("squeeze", 6), SH("broadcast_to", 7),
    SH("slice", 8),
    {.op = "slice_update", .desc = "strided update", .nin = 2, .ndim = {3, 3},
     .shape = {{2, 3, 4}, {2, 2, 2}}, .lo = -5, .hi = 5, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_INT64),
     .flags = OC_NONCONTIG, .ip = {9}, .build = b_shape, .ref = f_shape},
    {.op = "concatenate", .desc = "axis 1", .nin = 2, .ndim = {3, 3},
     .shape = {{2, 3, 4}, {2, 2, 4}}, .lo = -5, .hi = 5, OC_DT(MX_FLOAT32, MX_FLOAT64, MX_UINT8),
     .flags = OC_NONCONTIG, .ip = {10}, .build = b_shape, .ref = f_shape},
    SH("stack", 11), SH("split", 12), SH("pad", 13), SH("tile", 14), SH("repeat", 15),
    SH("contiguous", 16), SHD("slice", "empty result", 17),
};

const mx_opcase_table mx_opcases_shape = {cases, (int)(sizeof cases / sizeof *cases)};
