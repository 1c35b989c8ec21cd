/*
 * mxc/array.h — lazy, reference-counted n-d arrays.
 *
 *     int64_t shape[] = {2, 3};
 *     float x[] = {1, 2, 3, 4, 5, 6};
 *     mx_array *a = mx_array_from_data(x, shape, 2, MX_FLOAT32);
 *     mx_array *b = mx_exp(a);           // records a node, computes nothing
 *     mx_array *c = mx_sum(b, NULL, 0, false);
 *     if (mx_eval(&c, 1) != MX_OK) ...   // runs exp then sum
 *     double v; mx_array_item(c, &v);    // reading evaluates implicitly too
 *     mx_array_free(a); mx_array_free(b); mx_array_free(c);
 *
 * Ownership: every function returning mx_array * returns a NEW reference
 * that the caller releases with mx_array_free (NULL on error, see
 * mx_last_error()). Functions taking mx_array * borrow it. mx_array_free(NULL)
 * is a no-op. Arrays are immutable values: ops never modify their inputs.
 *
 * An array has a shape and dtype as soon as it is built. Its data, strides
 * and offset exist only after evaluation; a view (slice, transpose,
 * broadcast, most reshapes) shares its input's buffer. After evaluation an
 * array keeps its data and drops its graph. Buffers of intermediates are
 * released as soon as their last consumer has run.
 */
#ifndef MXC_ARRAY_H
#define MXC_ARRAY_H

#include "mxc/base.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MX_MAX_NDIM 8

/* X(enum, name, size, kind) — kind: 'b' bool, 'u' unsigned, 'i' signed, 'f' float */
#define MX_DTYPE_LIST(X)                 \
  X(MX_BOOL, "bool", 1, 'b')             \
  X(MX_UINT8, "uint8", 1, 'u')           \
  X(MX_UINT32, "uint32", 4, 'u')         \
  X(MX_INT32, "int32", 4, 'i')           \
  X(MX_INT64, "int64", 8, 'i')           \
  X(MX_FLOAT16, "float16", 2, 'f')       \
  X(MX_BFLOAT16, "bfloat16", 2, 'f')     \
  X(MX_FLOAT32, "float32", 4, 'f')       \
  X(MX_FLOAT64, "float64", 8, 'f')

typedef enum {
#define MX__DT_ENUM(e, n, s, k) e,
  MX_DTYPE_LIST(MX__DT_ENUM)
#undef MX__DT_ENUM
  MX_DTYPE_COUNT
} mx_dtype;

MX_API size_t mx_dtype_size(mx_dtype dt);
MX_API const char *mx_dtype_name(mx_dtype dt);
/* Parse "float32", "f32", "bf16", "int64", ... Returns MX_OK or an error. */
MX_API int mx_dtype_from_name(const char *name, mx_dtype *out);
MX_API bool mx_dtype_is_float(mx_dtype dt);
MX_API bool mx_dtype_is_integer(mx_dtype dt); /* bool excluded */
MX_API bool mx_dtype_is_signed(mx_dtype dt);
/* NumPy/MLX promotion of two dtypes (see docs/dtypes.md for the table). */
MX_API mx_dtype mx_promote_types(mx_dtype a, mx_dtype b);

typedef struct mx_array mx_array;

/* Devices. Arrays are not tied to a device: an op runs on the thread's
 * default device (or the device given to mx_set_default_device) and data
 * moves when needed. */
typedef enum { MX_CPU = 0, MX_GPU = 1, MX_DEVICE_COUNT } mx_device;
MX_API mx_device mx_default_device(void);
/* Sets this thread's default device; returns the previous one, or -1 with
 * an error when the device is not available in this build. */
MX_API int mx_set_default_device(mx_device d);
MX_API bool mx_device_available(mx_device d);

/* ---- creation from host data ------------------------------------------ */

/* Copies `data` (row-major, dtype dt) into a new evaluated array. */
MX_API mx_array *mx_array_from_data(const void *data, const int64_t *shape, int ndim,
                                    mx_dtype dt);
/* Wraps `data` without copying. `deleter(data, ctx)` is called once, when the
 * last array using the buffer is freed (deleter may be NULL: caller keeps
 * ownership and must keep data alive while any array uses it). */
MX_API mx_array *mx_array_from_data_nocopy(void *data, const int64_t *shape, int ndim,
                                           mx_dtype dt,
                                           void (*deleter)(void *data, void *ctx),
                                           void *ctx);
/* Like mx_array_from_data_nocopy with explicit element strides and offset
 * (a strided view of foreign memory; e.g. Fortran order). */
MX_API mx_array *mx_array_from_data_strided(void *data, const int64_t *shape,
                                            const int64_t *strides, int ndim,
                                            mx_dtype dt,
                                            void (*deleter)(void *data, void *ctx),
                                            void *ctx);
/* 0-d arrays. */
MX_API mx_array *mx_array_scalar(double v, mx_dtype dt);
MX_API mx_array *mx_array_scalar_int(int64_t v, mx_dtype dt);

/* ---- references ------------------------------------------------------- */
MX_API mx_array *mx_array_retain(mx_array *a); /* +1 reference, returns a */
MX_API void mx_array_free(mx_array *a);
/* Frees n arrays (NULL entries skipped). */
MX_API void mx_array_free_n(mx_array **a, int n);

/* ---- metadata (valid before evaluation) ------------------------------- */
MX_API int mx_array_ndim(const mx_array *a);
MX_API const int64_t *mx_array_shape(const mx_array *a);
/* Size of dimension `axis` (negative counts from the end). */
MX_API int64_t mx_array_dim(const mx_array *a, int axis);
MX_API int64_t mx_array_size(const mx_array *a);
MX_API size_t mx_array_nbytes(const mx_array *a);
MX_API mx_dtype mx_array_dtype(const mx_array *a);
MX_API bool mx_array_is_evaluated(const mx_array *a);
/* The op that produces a not-yet-evaluated array ("" when evaluated). */
MX_API const char *mx_array_op_name(const mx_array *a);
/* Writes "float32[2,3]" into buf. */
MX_API const char *mx_array_describe(const mx_array *a, char *buf, size_t n);

/* ---- evaluation -------------------------------------------------------- */

/* Evaluates all arrays (shared subgraphs run once). On failure (e.g. out of
 * memory) returns the status; the arrays remain valid and unevaluated parts
 * can be evaluated again later. */
MX_API int mx_eval(mx_array **arrays, int n);
MX_API int mx_array_eval(mx_array *a);
/* As mx_eval, and for results computed on a GPU also starts copying them to
 * the host in the background (small arrays, e.g. sampled token ids): work
 * queued afterwards does not delay a later read of them. As MLX's
 * async_eval, this lets a decode loop queue step t+1 before it reads the
 * token of step t:
 *
 *     y = sample(forward(x));  mx_async_eval(&y, 1);
 *     for (;;) {
 *       next = sample(forward(y));  mx_async_eval(&next, 1);  // queued
 *       mx_array_item_int(y, &id);  // waits for y's copy only
 *       ...; y = next;
 *     }
 *
 * On the CPU it is mx_eval. */
MX_API int mx_async_eval(mx_array **arrays, int n);

/* ---- reading (evaluates implicitly) ------------------------------------ */

/* Element strides (valid after evaluation) and offset in elements. */
MX_API const int64_t *mx_array_strides(mx_array *a);
MX_API bool mx_array_is_contiguous(mx_array *a); /* row-major contiguous */
/* Pointer to row-major contiguous data (evaluates; makes a contiguous copy
 * internally if the array is a strided view). NULL on error. Valid while a
 * lives. */
MX_API const void *mx_array_data(mx_array *a);
/* The single element of a size-1 array as double / int64. */
MX_API int mx_array_item(mx_array *a, double *out);
MX_API int mx_array_item_int(mx_array *a, int64_t *out);
/* Copies all elements (row-major) converted to dtype `dt` into dst, which
 * holds `count` elements; count must equal mx_array_size(a). */
MX_API int mx_array_copy_to(mx_array *a, mx_dtype dt, void *dst, int64_t count);
/* Prints the array (numpy-like) to f; for debugging. */
MX_API int mx_array_print(mx_array *a, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
