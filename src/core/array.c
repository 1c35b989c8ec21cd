/* array.c — array handles: creation, references, metadata, reading. */
#include <inttypes.h>
#include <string.h>

#include "array_impl.h"
#include "mxc/ops.h"

const char *const mx__op_names[MX__OP_COUNT] = {
#define X(name, str) str,
    MX_OP_LIST(X)
#undef X
};

/* ---- shapes ------------------------------------------------------------- */
int64_t mx__shape_size(const int64_t *shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

const char *mx__shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%" PRId64 : "%" PRId64, shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

int mx__check_shape(const char *op, const int64_t *shape, int ndim) {
  if (ndim < 0 || ndim > MX_MAX_NDIM)
    return mx__set_error(MX_ERR_SHAPE, "%s: %d dimensions (at most %d supported)", op, ndim,
                         MX_MAX_NDIM);
  if (ndim > 0 && !shape) return mx__set_error(MX_ERR_INVALID_ARG, "%s: shape is NULL", op);
  int64_t total = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return mx__set_error(MX_ERR_SHAPE, "%s: negative dimension %" PRId64 " at axis %d", op,
                           shape[i], i);
    /* the product of the non-zero dims bounds strides even when the
     * array is empty (row strides multiply every dim but the first) */
    if (shape[i] > 0 && total > INT64_MAX / 16 / shape[i]) {
      char s[256];
      return mx__set_error(MX_ERR_SHAPE, "%s: shape %s has too many elements", op,
                           mx__shape_str(shape, ndim, s, sizeof s));
    }
    if (shape[i] > 0) total *= shape[i];
  }
  return MX_OK;
}

int mx__norm_axis(const char *op, int axis, int ndim, int *out) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: axis %d is out of range for %d dimensions",
                         op, axis, ndim);
  *out = a;
  return MX_OK;
}

void mx__compute_row_strides(const int64_t *shape, int ndim, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

bool mx__strides_row_contiguous(const int64_t *shape, const int64_t *strides, int ndim) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != s) return false;
    s *= shape[i];
  }
  return true;
}

/* ---- construction -------------------------------------------------------- */
mx_array *mx__array_alloc_struct(mx_dtype dt, const int64_t *shape, int ndim) {
  mx_array *a = calloc(1, sizeof *a);
  if (!a) {
    mx__set_error(MX_ERR_OOM, "out of memory allocating an array");
    return NULL;
  }
  a->refcount = 1;
  a->dtype = dt;
  a->ndim = ndim;
  if (ndim) memcpy(a->shape, shape, sizeof(int64_t) * (size_t)ndim);
  a->size = mx__shape_size(shape, ndim);
  a->device = mx__default_device_now();
  return a;
}

static int check_dtype(const char *op, mx_dtype dt) {
  if ((unsigned)dt >= MX_DTYPE_COUNT)
    return mx__set_error(MX_ERR_DTYPE, "%s: invalid dtype %d", op, (int)dt);
  return MX_OK;
}

mx_array *mx__node_new(const mx__op_def *op, mx_dtype dt, const int64_t *shape, int ndim,
                       mx_array **inputs, int ninputs, const void *params,
                       size_t params_size) {
  MX_ASSERT(op);
  if (mx__check_shape(mx__op_names[op->id], shape, ndim)) return NULL;
  mx_array *a = mx__array_alloc_struct(dt, shape, ndim);
  if (!a) return NULL;
  a->op = op;
  if (ninputs) {
    a->inputs = malloc(sizeof(mx_array *) * (size_t)ninputs);
    if (!a->inputs) goto oom;
    for (int i = 0; i < ninputs; i++) a->inputs[i] = mx_array_retain(inputs[i]);
    a->ninputs = ninputs;
  }
  if (params_size) {
    a->params = malloc(params_size);
    if (!a->params) goto oom;
    memcpy(a->params, params, params_size);
    a->params_size = params_size;
  }
  return a;
oom:
  mx_array_free(a);
  mx__set_error(MX_ERR_OOM, "%s: out of memory building the graph", mx__op_names[op->id]);
  return NULL;
}

int mx__array_alloc_data(mx_array *out) { return mx__array_alloc_data_bytes(out, 0); }

int mx__array_alloc_data_bytes(mx_array *out, size_t nbytes) {
  size_t need = (size_t)out->size * mx_dtype_size(out->dtype);
  mx__buffer *b = mx__buffer_new(nbytes > need ? nbytes : need, out->device);
  if (!b) return mx_last_status();
  if (out->buf) mx__buffer_release(out->buf);
  out->buf = b;
  out->offset = 0;
  mx__compute_row_strides(out->shape, out->ndim, out->strides);
  out->row_contiguous = true;
  return MX_OK;
}

void mx__array_set_view(mx_array *out, mx_array *in, const int64_t *strides, int64_t offset) {
  mx__buffer_retain(in->buf);
  if (out->buf) mx__buffer_release(out->buf);
  out->buf = in->buf;
  if (out->ndim) memcpy(out->strides, strides, sizeof(int64_t) * (size_t)out->ndim);
  out->offset = offset;
  out->row_contiguous = mx__strides_row_contiguous(out->shape, out->strides, out->ndim);
}

void mx__array_set_same(mx_array *out, mx_array *in) {
  MX_ASSERT(out->ndim == in->ndim && out->size == in->size);
  mx__array_set_view(out, in, in->strides, in->offset);
}

static mx_array *new_leaf(const int64_t *shape, int ndim, mx_dtype dt, const char *op) {
  if (check_dtype(op, dt) || mx__check_shape(op, shape, ndim)) return NULL;
  return mx__array_alloc_struct(dt, shape, ndim);
}

mx_array *mx_array_from_data(const void *data, const int64_t *shape, int ndim, mx_dtype dt) {
  mx_array *a = new_leaf(shape, ndim, dt, "array_from_data");
  if (!a) return NULL;
  a->device = MX_CPU;
  if (a->size && !data) {
    mx_array_free(a);
    mx__set_error(MX_ERR_INVALID_ARG, "array_from_data: data is NULL");
    return NULL;
  }
  if (mx__array_alloc_data(a)) {
    mx_array_free(a);
    return NULL;
  }
  if (a->size) memcpy(a->buf->ptr, data, (size_t)a->size * mx_dtype_size(dt));
  return a;
}

mx_array *mx_array_from_data_strided(void *data, const int64_t *shape, const int64_t *strides,
                                     int ndim, mx_dtype dt, void (*deleter)(void *, void *),
                                     void *ctx) {
  mx_array *a = new_leaf(shape, ndim, dt, "array_from_data");
  if (!a) return NULL;
  int64_t row[MX_MAX_NDIM];
  if (!strides) { /* row-major: the buffer spans every element */
    mx__compute_row_strides(shape, ndim, row);
    strides = row;
  }
  int64_t span = 0;
  for (int i = 0; i < ndim; i++) {
    if (strides[i] < 0) {
      mx_array_free(a);
      mx__set_error(MX_ERR_INVALID_ARG, "array_from_data: negative stride at axis %d", i);
      return NULL;
    }
    if (shape[i] > 0) span += (shape[i] - 1) * strides[i];
  }
  a->buf = mx__buffer_wrap(data, a->size ? (size_t)(span + 1) * mx_dtype_size(dt) : 0,
                           deleter, ctx);
  if (!a->buf) {
    mx_array_free(a);
    return NULL;
  }
  a->device = MX_CPU;
  if (ndim) memcpy(a->strides, strides, sizeof(int64_t) * (size_t)ndim);
  a->row_contiguous = mx__strides_row_contiguous(a->shape, a->strides, ndim);
  return a;
}

mx_array *mx_array_from_data_nocopy(void *data, const int64_t *shape, int ndim, mx_dtype dt,
                                    void (*deleter)(void *, void *), void *ctx) {
  return mx_array_from_data_strided(data, shape, NULL, ndim, dt, deleter, ctx);
}

static void store_scalar(void *p, mx_dtype dt, double v, int64_t iv, bool use_int) {
  switch (dt) {
    case MX_BOOL: *(uint8_t *)p = use_int ? iv != 0 : v != 0; break;
    case MX_UINT8: *(uint8_t *)p = use_int ? (uint8_t)iv : (uint8_t)(int64_t)v; break;
    case MX_UINT32: *(uint32_t *)p = use_int ? (uint32_t)iv : (uint32_t)(int64_t)v; break;
    case MX_INT32: *(int32_t *)p = use_int ? (int32_t)iv : (int32_t)v; break;
    case MX_INT64: *(int64_t *)p = use_int ? iv : (int64_t)v; break;
    case MX_FLOAT16: *(uint16_t *)p = mx__f32_to_f16(use_int ? (float)iv : (float)v); break;
    case MX_BFLOAT16: *(uint16_t *)p = mx__f32_to_bf16(use_int ? (float)iv : (float)v); break;
    case MX_FLOAT32: *(float *)p = use_int ? (float)iv : (float)v; break;
    case MX_FLOAT64: *(double *)p = use_int ? (double)iv : v; break;
    default: break;
  }
}

mx_array *mx_array_scalar(double v, mx_dtype dt) {
  uint64_t tmp = 0;
  if (check_dtype("array_scalar", dt)) return NULL;
  if (!mx_dtype_is_float(dt) && v == v) { /* clamp to avoid UB on conversion */
    if (v > 9.2e18) v = 9.2e18;
    if (v < -9.2e18) v = -9.2e18;
  }
  store_scalar(&tmp, dt, v, 0, false);
  return mx_array_from_data(&tmp, NULL, 0, dt);
}

mx_array *mx_array_scalar_int(int64_t v, mx_dtype dt) {
  uint64_t tmp = 0;
  if (check_dtype("array_scalar", dt)) return NULL;
  store_scalar(&tmp, dt, 0, v, true);
  return mx_array_from_data(&tmp, NULL, 0, dt);
}

/* ---- references ------------------------------------------------------------ */
mx_array *mx_array_retain(mx_array *a) {
  if (a) __atomic_add_fetch(&a->refcount, 1, __ATOMIC_RELAXED);
  return a;
}

/* Frees iteratively: a long unevaluated chain must not overflow the stack. */
void mx_array_free(mx_array *a) {
  if (!a || __atomic_sub_fetch(&a->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  mx_array *stack_small[64];
  mx_array **stack = stack_small;
  size_t n = 0, cap = 64;
  stack[n++] = a;
  while (n) {
    mx_array *x = stack[--n];
    if (x->buf) mx__buffer_release(x->buf);
    free(x->params);
    for (int i = 0; i < x->ninputs; i++) {
      mx_array *in = x->inputs[i];
      if (__atomic_sub_fetch(&in->refcount, 1, __ATOMIC_ACQ_REL) != 0) continue;
      if (n == cap) {
        size_t ncap = cap * 2;
        mx_array **ns = malloc(sizeof *ns * ncap);
        MX_ASSERT(ns); /* cannot report OOM from a free */
        memcpy(ns, stack, sizeof *ns * n);
        if (stack != stack_small) free(stack);
        stack = ns;
        cap = ncap;
      }
      stack[n++] = in;
    }
    free(x->inputs);
    free(x);
  }
  if (stack != stack_small) free(stack);
}

void mx_array_free_n(mx_array **a, int n) {
  for (int i = 0; i < n; i++) mx_array_free(a[i]);
}

/* ---- metadata ---------------------------------------------------------------- */
int mx_array_ndim(const mx_array *a) { return a->ndim; }
const int64_t *mx_array_shape(const mx_array *a) { return a->shape; }
int64_t mx_array_dim(const mx_array *a, int axis) {
  int ax = axis < 0 ? axis + a->ndim : axis;
  if (ax < 0 || ax >= a->ndim) return -1;
  return a->shape[ax];
}
int64_t mx_array_size(const mx_array *a) { return a->size; }
size_t mx_array_nbytes(const mx_array *a) { return (size_t)a->size * mx_dtype_size(a->dtype); }
mx_dtype mx_array_dtype(const mx_array *a) { return a->dtype; }
bool mx_array_is_evaluated(const mx_array *a) { return a->buf != NULL; }
const char *mx_array_op_name(const mx_array *a) {
  return a->op && !a->buf ? mx__op_names[a->op->id] : "";
}
const char *mx_array_describe(const mx_array *a, char *buf, size_t n) {
  char s[256];
  snprintf(buf, n, "%s%s", mx_dtype_name(a->dtype), mx__shape_str(a->shape, a->ndim, s, sizeof s));
  return buf;
}

/* ---- reading ------------------------------------------------------------------- */
const int64_t *mx_array_strides(mx_array *a) {
  if (mx_array_eval(a)) return NULL;
  return a->strides;
}

bool mx_array_is_contiguous(mx_array *a) {
  if (mx_array_eval(a)) return false;
  return a->row_contiguous;
}

const void *mx_array_data(mx_array *a) {
  if (mx_array_eval(a)) return NULL;
  if (!a->row_contiguous) {
    /* Replace the view by a contiguous copy of itself. */
    mx_array *c = mx_contiguous(a);
    if (!c || mx_array_eval(c)) {
      mx_array_free(c);
      return NULL;
    }
    mx__buffer_retain(c->buf);
    mx__buffer_release(a->buf);
    a->buf = c->buf;
    a->offset = c->offset;
    memcpy(a->strides, c->strides, sizeof a->strides);
    a->row_contiguous = true;
    mx_array_free(c);
  }
  if (mx__buffer_ensure(a->buf, MX_CPU)) return NULL;
  return mx__data(a);
}

int mx_array_item(mx_array *a, double *out) {
  if (a->size != 1)
    return mx__set_error(MX_ERR_SHAPE, "item: array has %" PRId64 " elements, not 1", a->size);
  return mx_array_copy_to(a, MX_FLOAT64, out, 1);
}

int mx_array_item_int(mx_array *a, int64_t *out) {
  if (a->size != 1)
    return mx__set_error(MX_ERR_SHAPE, "item: array has %" PRId64 " elements, not 1", a->size);
  return mx_array_copy_to(a, MX_INT64, out, 1);
}

int mx_array_copy_to(mx_array *a, mx_dtype dt, void *dst, int64_t count) {
  if (count != a->size)
    return mx__set_error(MX_ERR_SHAPE, "copy_to: destination holds %" PRId64
                                       " elements, array has %" PRId64, count, a->size);
  if (a->size == 0) return MX_OK;
  /* The conversion runs on the host: on a GPU it would queue behind every
   * kernel queued since `a` (a prefetched token id would wait for the next
   * decode step). */
  int prev = mx_set_default_device(MX_CPU);
  mx_array *c = a->dtype == dt ? mx_array_retain(a) : mx_astype(a, dt);
  if (prev >= 0) mx_set_default_device((mx_device)prev);
  if (!c) return mx_last_status();
  const void *p = mx_array_data(c);
  if (!p) {
    mx_array_free(c);
    return mx_last_status();
  }
  memcpy(dst, p, (size_t)count * mx_dtype_size(dt));
  mx_array_free(c);
  return MX_OK;
}

int mx_array_print(mx_array *a, FILE *f) {
  double *v = malloc(sizeof(double) * (size_t)(a->size ? a->size : 1));
  if (!v) return mx__set_error(MX_ERR_OOM, "print: out of memory");
  int st = mx_array_copy_to(a, MX_FLOAT64, v, a->size);
  if (st) {
    free(v);
    return st;
  }
  char d[300];
  fprintf(f, "array(%s", mx_array_describe(a, d, sizeof d));
  fprintf(f, ": [");
  int64_t shown = a->size < 64 ? a->size : 64;
  for (int64_t i = 0; i < shown; i++) fprintf(f, i ? ", %.6g" : "%.6g", v[i]);
  if (shown < a->size) fprintf(f, ", ...");
  fprintf(f, "])\n");
  free(v);
  return MX_OK;
}
