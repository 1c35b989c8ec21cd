/* cpu.h — shared machinery of the CPU backend's kernels. */
#ifndef MXC_CPU_H
#define MXC_CPU_H

#include "array_impl.h"

/* Each kernel family registers its kernels here (called once). */
void mx__cpu_register_elementwise(mx__kernel_fn *k);
void mx__cpu_register_shape(mx__kernel_fn *k);
void mx__cpu_register_reduce(mx__kernel_fn *k);
void mx__cpu_register_indexing(mx__kernel_fn *k);
void mx__cpu_register_linalg(mx__kernel_fn *k);
void mx__cpu_register_sort(mx__kernel_fn *k);
void mx__cpu_register_random(mx__kernel_fn *k);
void mx__cpu_register_fast(mx__kernel_fn *k);
void mx__cpu_register_misc(mx__kernel_fn *k);
void mx__cpu_register_quantized(mx__kernel_fn *k);

/* ---- strided n-ary elementwise iteration ---------------------------------
 * Operand 0 is the (row-contiguous) output; operands 1.. are inputs given by
 * data pointer and element strides over the output's shape (0 = broadcast).
 * Dimensions that are contiguous for every operand are merged, then the
 * output's linear range is split across threads. `inner` is called on runs
 * along the innermost dimension: p[i] points at operand i's first element,
 * s[i] is its stride in elements, n the run length. */
#define MX__MAX_OPERANDS 5
typedef void (*mx__inner_fn)(char **p, const int64_t *s, int64_t n, const void *ctx);

typedef struct {
  int nops;
  int ndim;
  int64_t shape[MX_MAX_NDIM];
  int64_t strides[MX__MAX_OPERANDS][MX_MAX_NDIM]; /* elements */
  char *base[MX__MAX_OPERANDS];
  size_t elsize[MX__MAX_OPERANDS];
  int64_t size;
} mx__nd_iter;

/* shape/ndim: the output's; strides[i] for operand i (NULL: row-contiguous). */
void mx__iter_init(mx__nd_iter *it, const int64_t *shape, int ndim, int nops, char **base,
                   const size_t *elsize, const int64_t *const *strides);
/* Runs inner over the whole iteration space, in parallel when large. */
void mx__iter_run(const mx__nd_iter *it, mx__inner_fn inner, const void *ctx);
/* Runs inner over [begin, end) of the linear index (for custom parallelism). */
void mx__iter_run_range(const mx__nd_iter *it, mx__inner_fn inner, const void *ctx,
                        int64_t begin, int64_t end);

/* Strided copy of `in` into the row-contiguous `out` buffer (same shape,
 * same dtype). */
void mx__cpu_copy_to_contiguous(mx_array *in, void *out);

/* Sets OpenBLAS's thread count for a product of `fmas` multiply-adds
 * (linalg.c): 1 for small products, else the pool's current count. */
void mx__blas_set_threads(double fmas);

/* Convert n elements between dtypes (contiguous). */
void mx__cpu_convert(const void *src, mx_dtype sdt, void *dst, mx_dtype ddt, int64_t n);

#endif
