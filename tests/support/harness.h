/* harness.h — the op-parity harness (in the spirit of ggml's
 * test-backend-ops).
 *
 * Each op family contributes a table of cases in tests/support/opcases_<family>.c.
 * A case builds an op from random inputs, evaluates it on a device, and
 * compares it with a float64 reference written in plain C (never with mxc
 * ops). Inputs can be passed as non-contiguous views; buffers carry guard
 * bytes (checked when freed). `tests/test_ops.c` runs every case on every
 * available backend and fails when a public op (public_ops.h) has no case.
 */
#ifndef MXC_HARNESS_H
#define MXC_HARNESS_H

#include "mxc/mxc.h"

#define OC_MAX_IN 6

enum {
  OC_IN_DATA = 0,  /* random values in [lo, hi) of the case dtype */
  OC_IN_INT = 1,   /* random int32 in [ilo, ihi) */
  OC_IN_BOOL = 2,  /* random bool */
  OC_IN_F32 = 3,   /* random float32 in [lo, hi) regardless of case dtype */
  OC_IN_U32 = 4,   /* random uint32 in [ilo, ihi) */
};

enum {
  OC_NONCONTIG = 1 << 0, /* also run with inputs as transposed/strided views */
  OC_NO_GRAD = 1 << 1,   /* not checked by finite differences */
  OC_INT_ONLY = 1 << 2,  /* the output is exact: compare with tolerance 0 */
};

typedef struct mx_opcase mx_opcase;

/* Reference: in[i] are row-major float64 copies of the inputs; writes the
 * output (row-major float64) and its shape. out has room for OC_MAX_OUT. */
#define OC_MAX_OUT (1 << 20)
typedef int (*oc_ref_fn)(const mx_opcase *c, const double *const *in, double *out,
                         int64_t *out_shape, int *out_ndim);
typedef mx_array *(*oc_build_fn)(const mx_opcase *c, mx_array **in);

struct mx_opcase {
  const char *op;   /* public op name, e.g. "add" (coverage key) */
  const char *desc; /* what this case exercises */
  int nin;
  int ndim[OC_MAX_IN];
  int64_t shape[OC_MAX_IN][8];
  int kind[OC_MAX_IN]; /* OC_IN_* */
  double lo, hi;       /* data range */
  int64_t ilo, ihi;    /* int range */
  mx_dtype dtypes[9];  /* dtypes to run; terminated by ndtypes */
  int ndtypes;
  int flags;
  int ip[8];           /* op parameters (axes, k, ...) */
  double dp[4];
  double tol;          /* 0: default by dtype */
  oc_build_fn build;
  oc_ref_fn ref;
};

typedef struct {
  const mx_opcase *cases;
  int n;
} mx_opcase_table;

/* Defined by each family file. */
#define OC_FAMILIES(X) \
  X(elementwise)       \
  X(shape)             \
  X(reduce)            \
  X(indexing)          \
  X(linalg)            \
  X(sort)              \
  X(random)            \
  X(fast)              \
  X(quantized)

#define OC_DECLARE(f) extern const mx_opcase_table mx_opcases_##f;
OC_FAMILIES(OC_DECLARE)
#undef OC_DECLARE

/* Dtype sets for cases, used as designated initializers:
 *   {.op = "exp", ..., OC_FLOATS, .build = ...}
 *   {.op = "add", ..., OC_DT(MX_INT32, MX_FLOAT32), ...} */
#define OC_DT(...) \
  .dtypes = {__VA_ARGS__}, .ndtypes = (int)(sizeof((mx_dtype[]){__VA_ARGS__}) / sizeof(mx_dtype))
#define OC_FLOATS OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16)
#define OC_F32_F64 OC_DT(MX_FLOAT32, MX_FLOAT64)
#define OC_ALL_NUMERIC \
  OC_DT(MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16, MX_INT32, MX_INT64, MX_UINT8, MX_UINT32)

/* Result of running one case on one device and dtype. */
typedef struct {
  int ok;
  double max_err;
  char msg[512];
} oc_result;

/* Runs a case: build from random inputs (seeded), eval on `device`, compare
 * with the reference. noncontig selects view inputs. */
oc_result oc_run(const mx_opcase *c, mx_dtype dt, mx_device device, bool noncontig,
                 uint64_t seed);
/* Finite-difference check of the op's VJP (float64, central differences). */
oc_result oc_run_grad(const mx_opcase *c, uint64_t seed);

/* Helpers for references. */
int64_t oc_size(const int64_t *shape, int ndim);
/* Row-major strides of shape. */
void oc_strides(const int64_t *shape, int ndim, int64_t *st);
/* Broadcast index: offset into an input of shape (ishape, indim) for the
 * multi-index idx of an output with ndim dims. */
int64_t oc_bcast_offset(const int64_t *idx, int ndim, const int64_t *ishape, int indim);
/* Unravel linear index i of shape into idx. */
void oc_unravel(int64_t i, const int64_t *shape, int ndim, int64_t *idx);
/* Output shape of broadcasting in[0..n). */
void oc_bcast_shape(const mx_opcase *c, int n, int64_t *shape, int *ndim);

#endif
