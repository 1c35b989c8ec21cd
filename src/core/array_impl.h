/* array_impl.h — the array, buffer and op-definition structs (internal).
 *
 * An array is a shape + dtype, and either
 *   - a graph node: `op` + `inputs` + `params` (not yet evaluated), or
 *   - data: `buf` + `strides` + `offset` (evaluated).
 * Evaluation runs the op's kernel on the array's device, which fills `buf`
 * (allocating, or sharing an input's buffer for views), then detaches the
 * graph (drops inputs and params) unless a transform is tracing.
 */
#ifndef MXC_ARRAY_IMPL_H
#define MXC_ARRAY_IMPL_H

#include "internal.h"
#include "mxc/array.h"

#include "ops/op_list.h"

/* ---- buffers (allocated by src/alloc/allocator.c) ---------------------- */
typedef struct mx__buffer {
  int refcount;
  int device;       /* where it was first allocated */
  void *ptr;        /* host copy (NULL until needed when produced on a GPU) */
  void *dptr;       /* GPU copy (NULL if none) */
  uint8_t valid;    /* bit d: the copy on device d is current */
  bool foreign;     /* ptr is caller memory (mx_array_from_data_nocopy) */
  bool guarded;     /* guard bytes written past size (debug mode) */
  size_t size;      /* bytes requested */
  size_t capacity;  /* bytes reserved per copy (size class) */
  void (*deleter)(void *data, void *ctx); /* foreign memory */
  void *deleter_ctx;
  void *pending;    /* an in-flight copy to the host (mx__buffer_prefetch_host) */
  uint32_t wepoch;  /* the GPU epoch in which a GPU op last wrote it (0: none) */
} mx__buffer;

/* GPU epochs: the counter moves on each time the GPU's stream is known to
 * be idle (a full stream synchronisation). A buffer whose wepoch is below
 * the current epoch was last written by a GPU kernel that has completed,
 * so a kernel may read it before waiting for the kernel launched just
 * before it (programmatic dependent launches, cuda_common.cuh). eval sets
 * wepoch of each GPU op's output buffer (views and in-place writes too). */
uint32_t mx__gpu_epoch(void);
void mx__gpu_epoch_bump(void); /* called by the GPU backend after a full sync */
/* called by the GPU backend when a host-to-device copy was only queued (no
 * synchronisation): the buffer then counts as written in this epoch */
void mx__gpu_upload_queued(void);
/* clears the MXC_PROFILE tables gathered so far (eval.c) */
void mx__profile_reset(void);

/* Make the copy on `device` current, allocating and copying as needed
 * (counted in the transfer stats). Buffers are immutable once written, so
 * several current copies never disagree. */
int mx__buffer_ensure(mx__buffer *b, int device);

/* Hooks a GPU backend registers with the allocator. */
typedef struct {
  void *(*alloc)(size_t n);
  void (*free)(void *p);
  /* copy n bytes between devices (one side is MX_CPU) */
  int (*copy)(void *dst, int dst_device, const void *src, int src_device, size_t n);
  /* optional: start copying n bytes of device memory to the host without
   * waiting; *pending identifies the copy, or stays NULL when the backend
   * declines (e.g. too large for its staging memory) */
  int (*copy_to_host_async)(const void *src, size_t n, void **pending);
  /* finish a started copy: wait for it and write its bytes to dst (dst may
   * be NULL: discard); releases pending */
  int (*finish_copy)(void *pending, void *dst, size_t n);
  /* optional: wait until the device has finished all queued work */
  int (*sync)(void);
  /* optional: record the work queued from capture_begin on into a graph
   * instead of running it (host-to-device copies then complete at once);
   * capture_end with keep false discards it, else *graph is the
   * replayable graph; graph_launch queues one replay; graph_free waits for
   * the device, then destroys it */
  int (*capture_begin)(void);
  int (*capture_end)(bool keep, void **graph);
  int (*graph_launch)(void *graph);
  void (*graph_free)(void *graph);
  /* optional (MXC_PROFILE=2): queue a timing mark after the work queued so
   * far (NULL: none, e.g. while capturing); mark_elapsed waits for b and
   * gives the device time from a to b in ms; mark_free recycles a mark */
  void *(*mark)(void);
  int (*mark_elapsed)(void *a, void *b, float *ms);
  void (*mark_free)(void *m);
} mx__device_ops;
/* The device's ops (NULL members when it has none of them). */
const mx__device_ops *mx__device_ops_of(int device);
/* Waits for the device's queued work (no-op without a sync hook). */
int mx__device_sync(int device);
void mx__register_device_ops(int device, const mx__device_ops *ops);
/* Starts copying a GPU-only buffer to the host in the background (queued
 * after the work that produces it): a later host read waits for that copy
 * only, not for GPU work queued in between. No-op when the host copy is
 * current, a copy is already in flight, or the backend cannot. */
int mx__buffer_prefetch_host(mx__buffer *b);

/* Replayable GPU work (CUDA graphs): between mx__graph_capture_begin and
 * mx__graph_capture_end, evaluations on the GPU are recorded, not run, and
 * every GPU block freed meanwhile (temporaries of the recorded kernels,
 * intermediates) goes to the graph instead of the allocator's cache, so
 * replays never touch memory handed out again; arrays still alive after
 * the capture must outlive the graph. Only one capture at a time. Host
 * reads of GPU data fail while capturing. Without a GPU backend that can
 * capture, begin fails with MX_ERR_UNSUPPORTED. */
typedef struct mx__graph mx__graph;
int mx__graph_capture_begin(void);
/* keep false (an evaluation failed): discard; else *g is the graph, or
 * NULL with an error when the capture failed. */
int mx__graph_capture_end(bool keep, mx__graph **g);
int mx__graph_launch(mx__graph *g);
bool mx__graph_capturing(void);
/* While capturing: keeps a (a new reference) to be evaluated by
 * mx__graph_eval_deferred, after the recorded step — for state a step
 * updates in place (a sampler's random key). */
int mx__graph_defer(mx_array *a);
int mx__graph_eval_deferred(void);
void mx__graph_free(mx__graph *g); /* waits for the device; NULL ok */
/* Starts copying n bytes of b's GPU copy to the host after the work queued
 * so far: *pending, finished by mx__buffer_read_end; or, when the backend
 * declines, copies synchronously into now (*pending NULL). */
int mx__buffer_read_begin(mx__buffer *b, size_t n, void **pending, void *now);
int mx__buffer_read_end(void *pending, void *dst, size_t n); /* dst NULL: discard */

/* Debug: fill/check guard bytes after every buffer (op-parity harness). */
void mx__debug_guard(bool on);
size_t mx__debug_guard_violations(void);

mx__buffer *mx__buffer_new(size_t nbytes, int device); /* NULL + MX_ERR_OOM */
mx__buffer *mx__buffer_wrap(void *ptr, size_t nbytes,
                            void (*deleter)(void *, void *), void *ctx);
void mx__buffer_retain(mx__buffer *b);
void mx__buffer_release(mx__buffer *b);

/* ---- op definitions ------------------------------------------------------ */
typedef enum {
#define MX__OP_ENUM(name, str) MX_OP_##name,
  MX_OP_LIST(MX__OP_ENUM)
#undef MX__OP_ENUM
  MX__OP_COUNT
} mx__op_id;

extern const char *const mx__op_names[MX__OP_COUNT];

/* VJP: given the primal output `out` (with its inputs and params) and the
 * cotangent `cot` (same shape/dtype as out), write into grads[i] a new
 * reference to the cotangent of input i for each i with needed[i] (leave
 * NULL otherwise). Written with ops so it is lazy and differentiable.
 * Returns MX_OK or an error. */
typedef int (*mx__vjp_fn)(mx_array *out, mx_array *cot, mx_array **grads,
                          const bool *needed);
/* Batching rule: inputs[i] has its batch axis at in_axes[i] (-1: none).
 * Writes a new array into *out and its batch axis into *out_axis. */
typedef int (*mx__vmap_fn)(mx_array *out, mx_array **inputs, const int *in_axes,
                           mx_array **result, int *out_axis);

typedef struct mx__op_def {
  mx__op_id id;
  mx__vjp_fn vjp;   /* NULL: not differentiable (error when a grad is asked) */
  mx__vmap_fn vmap; /* NULL: no batching rule (error naming the op) */
  /* Ops whose outputs carry no gradient (comparisons, argmax, ...) set this:
   * their cotangents are zero rather than an error. */
  bool zero_grad;
} mx__op_def;

/* ---- the array ------------------------------------------------------------ */
struct mx_array {
  int refcount;
  mx_dtype dtype;
  int ndim;
  int64_t shape[MX_MAX_NDIM];
  int64_t size;

  /* evaluated state */
  mx__buffer *buf; /* NULL until evaluated */
  int64_t strides[MX_MAX_NDIM];
  int64_t offset;  /* in elements */
  bool row_contiguous;

  /* graph state */
  const mx__op_def *op; /* NULL for leaves and detached arrays */
  int device;
  int ninputs;
  mx_array **inputs;
  void *params;
  size_t params_size;

  /* evaluation bookkeeping */
  uint64_t mark;
};

#define MX__PARAMS(a, T) ((const T *)(a)->params)

/* Build a node: retains inputs, copies params. NULL + error on failure. */
mx_array *mx__node_new(const mx__op_def *op, mx_dtype dt, const int64_t *shape, int ndim,
                       mx_array **inputs, int ninputs, const void *params,
                       size_t params_size);
/* A leaf array with no data yet (used by kernels/tests). */
mx_array *mx__array_alloc_struct(mx_dtype dt, const int64_t *shape, int ndim);

/* For kernels: allocate a row-contiguous output buffer. */
int mx__array_alloc_data(mx_array *out);
/* The same with a buffer of nbytes (at least the array's bytes): room for
 * data a kernel keeps after the output (sdpa's log-sum-exp). */
int mx__array_alloc_data_bytes(mx_array *out, size_t nbytes);
/* For view kernels: share in's buffer with the given strides/offset. */
void mx__array_set_view(mx_array *out, mx_array *in, const int64_t *strides, int64_t offset);
/* For kernels that pass their input through unchanged (e.g. stop_gradient). */
void mx__array_set_same(mx_array *out, mx_array *in);
/* Host pointer to element 0 of an evaluated array (buf->ptr + offset). */
static inline void *mx__data(const mx_array *a) {
  return (char *)a->buf->ptr + a->offset * (int64_t)mx_dtype_size(a->dtype);
}
void mx__compute_row_strides(const int64_t *shape, int ndim, int64_t *strides);
bool mx__strides_row_contiguous(const int64_t *shape, const int64_t *strides, int ndim);
int64_t mx__shape_size(const int64_t *shape, int ndim);
/* Checks dims >= 0, ndim <= MX_MAX_NDIM, product fits; sets error naming op. */
int mx__check_shape(const char *op, const int64_t *shape, int ndim);
/* "[2,3,4]" into buf. */
const char *mx__shape_str(const int64_t *shape, int ndim, char *buf, size_t n);
/* Normalise a possibly negative axis; error naming op when out of range. */
int mx__norm_axis(const char *op, int axis, int ndim, int *out);

/* ---- evaluation / tracing -------------------------------------------------- */
/* While > 0 (set by transforms), eval keeps the graph of evaluated arrays. */
void mx__trace_push(void);
void mx__trace_pop(void);
bool mx__tracing(void);
int mx__default_device_now(void);

/* ---- backends ------------------------------------------------------------- */
typedef int (*mx__kernel_fn)(mx_array *out, mx_array **inputs);
typedef struct mx__backend {
  const char *name;
  mx__kernel_fn kernels[MX__OP_COUNT];
} mx__backend;

/* View kernels shared by all backends (src/backend/views.c). reshape
 * returns false when the input is not row-contiguous (the backend copies). */
bool mx__view_reshape(mx_array *out, mx_array **in);
int mx__view_transpose(mx_array *out, mx_array **in);
int mx__view_broadcast(mx_array *out, mx_array **in);
int mx__view_slice(mx_array *out, mx_array **in);

/* Backend for a device, NULL if not built. */
const mx__backend *mx__backend_get(int device);
extern mx__backend mx__cpu_backend;

/* ---- threads ---------------------------------------------------------------- */
/* Runs fn(ctx, begin, end) over [0, n) split across the pool; chunks are at
 * least `grain` long. Runs inline when small or already inside a worker. */
void mx__parallel_for(int64_t n, int64_t grain,
                      void (*fn)(void *ctx, int64_t begin, int64_t end), void *ctx);
/* The threads worth using now: mx_get_num_threads(), or 1 while the pool
 * runs jobs on the caller alone because helpers were late (other processes
 * busy on the cores). For libraries with their own threads (OpenBLAS). */
int mx__parallel_threads(void);

/* ---- half types -------------------------------------------------------------- */
static inline float mx__bf16_to_f32(uint16_t h) {
  union { uint32_t u; float f; } v;
  v.u = (uint32_t)h << 16;
  return v.f;
}
static inline uint16_t mx__f32_to_bf16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* NaN */
  uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u); /* round to nearest even */
  return (uint16_t)((v.u + rounding) >> 16);
}
/* IEEE binary16 stored as uint16_t (portable across gcc and clang). */
#if defined(__F16C__)
#include <immintrin.h>
static inline float mx__f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t mx__f32_to_f16(float f) {
  return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#else
static inline float mx__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  union { uint32_t u; float f; } v;
  if (exp == 0) {
    if (man == 0) { v.u = sign; return v.f; }
    /* subnormal: value = man * 2^-24 */
    float r = (float)man * (1.0f / 16777216.0f);
    return sign ? -r : r;
  }
  if (exp == 31) v.u = sign | 0x7f800000u | (man << 13);
  else v.u = sign | ((exp + 112) << 23) | (man << 13);
  return v.f;
}
static inline uint16_t mx__f32_to_f16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);      /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);     /* overflow -> inf */
  if (a < 0x38800000u) {                                       /* subnormal / zero */
    union { uint32_t u; float f; } w;
    w.u = a;
    float r = w.f * 16777216.0f;                               /* in units of 2^-24 */
    uint32_t m = (uint32_t)r;
    float frac = r - (float)m;
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t e = ((a >> 23) - 112) << 10, m = (a >> 13) & 0x3ffu;
  uint32_t rest = a & 0x1fffu, out = e | m;
  if (rest > 0x1000u || (rest == 0x1000u && (out & 1u))) out++;
  return (uint16_t)(sign | out);
}
#endif

#endif
