/* cuda_backend.cu — the CUDA backend: device detection, the allocator's
 * device hooks, the stream, and the kernel table.
 *
 * Initialised lazily on the first request for the GPU backend. Without a
 * usable device (no driver, no GPU: cudaGetDeviceCount fails or returns 0)
 * the backend is reported unavailable and nothing else is touched, so a
 * CUDA build runs every CPU test on a machine without a GPU.
 *
 * One stream per process: kernels are queued on it and the host waits only
 * when data leaves the GPU (device-to-host copies) or a host buffer is read
 * by a host-to-device copy. Buffers freed to the allocator's cache are
 * reused by later kernels of the same stream, which runs them in order, so
 * no event is needed; cudaFree (cache trimming) synchronises the device. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

extern "C" {
const mx__backend *mx__cuda_backend_init(void);
}

static mx__backend g_cuda_backend;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_ok;
static cudaStream_t g_stream;

cudaStream_t mx__cuda_stream(void) { return g_stream; }

static bool g_pdl; /* programmatic dependent launches (cuda_common.cuh) */
bool mx__cuda_pdl(void) { return g_pdl; }

bool mx__cuda_pdl_small(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_PDL_SMALL");
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r && g_pdl;
}

int mx__cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return MX_OK;
  cudaGetLastError(); /* clear a sticky-free error so later calls can proceed */
  if (e == cudaErrorMemoryAllocation)
    return mx__set_error(MX_ERR_OOM, "%s: CUDA out of memory (%s)", what, cudaGetErrorString(e));
  return mx__set_error(MX_ERR_INTERNAL, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e),
                       cudaGetErrorString(e));
}

mx__buffer *mx__cuda_tmp(size_t nbytes) { return mx__buffer_new(nbytes ? nbytes : 1, MX_GPU); }

/* ---- allocator hooks ---------------------------------------------------------- */
static void *dev_alloc(size_t n) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return NULL; /* the allocator releases its cache, retries, then reports OOM */
  }
  return p;
}

static void dev_free(void *p) {
  /* may run at exit after the runtime has unloaded: errors are ignored */
  if (cudaFree(p) != cudaSuccess) cudaGetLastError();
}

static bool g_capturing; /* a graph capture is in progress on g_stream */

/* ---- uploads without a stream synchronisation -------------------------------------
 * A host-to-device copy of UP_MIN to UP_BYTES goes through a ring of pinned
 * staging slots: the host bytes are copied into a free slot, the upload is
 * queued on the stream and an event marks when the slot may be reused. The
 * host buffer can then change or go at once, and the host does not wait for
 * the work queued before (a training step's token batch no longer waits for
 * the previous step to finish: +4% on an H200). Larger uploads (weights)
 * wait as before. While a captured graph is alive (a decode session's
 * replays) small uploads (below 16 KB: scalars, positions) wait too: their
 * wait is short and tells the PDL kernels that everything written before
 * has settled, so the replayed step reads its caches early (bf16 decode ran
 * 1.6% slower with them queued). MXC_ASYNC_UPLOAD=0 turns staging off,
 * MXC_ASYNC_UPLOAD_MIN=<bytes> sets the lower bound at all times, for A/B. */
#define UP_SLOTS 8
#define UP_BYTES (1u << 20)
typedef struct {
  void *host; /* pinned, UP_BYTES */
  cudaEvent_t ev;
  bool used; /* ev was recorded */
} up_slot;
static up_slot g_up[UP_SLOTS];
static int g_up_next;
static pthread_mutex_t g_up_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_async_upload = -1;
static long g_up_min = -2; /* -2: not read yet; -1: by whether a graph is alive */
static int g_live_graphs;  /* instantiated graphs not yet freed */

/* 1: queued; 0: declined (the caller copies synchronously); <0: error */
static int upload_async(void *dst, const void *src, size_t n) {
  if (g_async_upload < 0) {
    const char *e = getenv("MXC_ASYNC_UPLOAD");
    g_async_upload = !(e && !strcmp(e, "0"));
  }
  if (g_up_min < -1) {
    const char *e = getenv("MXC_ASYNC_UPLOAD_MIN");
    g_up_min = e && *e ? atol(e) : -1;
  }
  const long lo = g_up_min >= 0 ? g_up_min
                  : __atomic_load_n(&g_live_graphs, __ATOMIC_RELAXED) > 0 ? 16384 : 0;
  if (!g_async_upload || n > UP_BYTES || (long)n < lo) return 0;
  pthread_mutex_lock(&g_up_mu);
  up_slot *s = &g_up[g_up_next];
  int r = 1;
  if (!s->host) {
    if (cudaMallocHost(&s->host, UP_BYTES) != cudaSuccess) {
      cudaGetLastError();
      s->host = NULL;
      r = 0;
    } else if (cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      cudaFreeHost(s->host);
      s->host = NULL;
      r = 0;
    }
  }
  /* the slot's previous upload must have left it (queued 8 uploads ago) */
  if (r == 1 && s->used &&
      mx__cuda_check(cudaEventSynchronize(s->ev), "upload to the device"))
    r = -1;
  if (r == 1) {
    memcpy(s->host, src, n);
    if (mx__cuda_check(cudaMemcpyAsync(dst, s->host, n, cudaMemcpyHostToDevice, g_stream),
                       "upload to the device") ||
        mx__cuda_check(cudaEventRecord(s->ev, g_stream), "upload to the device"))
      r = -1;
    else {
      s->used = true;
      g_up_next = (g_up_next + 1) % UP_SLOTS;
      mx__gpu_upload_queued();
    }
  }
  pthread_mutex_unlock(&g_up_mu);
  return r < 0 ? mx_last_status() : r;
}

static int dev_copy(void *dst, int dst_device, const void *src, int src_device, size_t n) {
  if (n == 0) return MX_OK;
  cudaMemcpyKind kind = dst_device == MX_CPU ? cudaMemcpyDeviceToHost
                        : src_device == MX_CPU ? cudaMemcpyHostToDevice
                                               : cudaMemcpyDeviceToDevice;
  if (g_capturing) {
    /* upload constants (scalars, masks) now, outside the recorded stream:
     * the block then holds them for every replay */
    if (kind != cudaMemcpyHostToDevice)
      return mx__set_error(MX_ERR_UNSUPPORTED, "memcpy: reading GPU data while a graph is being "
                           "captured");
    return mx__cuda_check(cudaMemcpy(dst, src, n, kind), "memcpy");
  }
  if (kind == cudaMemcpyHostToDevice) {
    int r = upload_async(dst, src, n);
    if (r) return r < 0 ? r : MX_OK;
  }
  int st = mx__cuda_check(cudaMemcpyAsync(dst, src, n, kind, g_stream), "memcpy");
  /* wait: the host side may be read (D2H) or freed (H2D) right after */
  if (!st) st = mx__cuda_check(cudaStreamSynchronize(g_stream), "memcpy");
  if (!st) mx__gpu_epoch_bump(); /* the stream is idle */
  return st;
}

/* ---- background copies to the host (mx_async_eval) --------------------------------
 * A small pool of pinned staging slots: the device-to-host copy and an event
 * are queued on the stream right away; finish_copy waits for that event only
 * and copies the staged bytes out. Larger arrays are declined (they are
 * copied synchronously when read). */
#define STAGE_SLOTS 16
#define STAGE_BYTES (64 * 1024)
typedef struct {
  void *host; /* pinned, STAGE_BYTES */
  cudaEvent_t ev;
  bool busy;
} stage_slot;
static stage_slot g_stage[STAGE_SLOTS];
static pthread_mutex_t g_stage_mu = PTHREAD_MUTEX_INITIALIZER;

static int g_async_copies = -1; /* MXC_ASYNC_COPY=0 turns them off (A/B timing) */

static int dev_copy_to_host_async(const void *src, size_t n, void **pending) {
  *pending = NULL;
  if (g_capturing) return MX_OK; /* declined: the read then fails in dev_copy */
  if (g_async_copies < 0) {
    const char *e = getenv("MXC_ASYNC_COPY");
    g_async_copies = !(e && !strcmp(e, "0"));
  }
  if (!g_async_copies || n == 0 || n > STAGE_BYTES) return MX_OK;
  pthread_mutex_lock(&g_stage_mu);
  stage_slot *s = NULL;
  for (int i = 0; i < STAGE_SLOTS && !s; i++)
    if (!g_stage[i].busy) s = &g_stage[i];
  if (s && !s->host) {
    if (cudaMallocHost(&s->host, STAGE_BYTES) != cudaSuccess) {
      cudaGetLastError();
      s->host = NULL;
      s = NULL;
    } else if (cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      cudaFreeHost(s->host);
      s->host = NULL;
      s = NULL;
    }
  }
  if (s) s->busy = true;
  pthread_mutex_unlock(&g_stage_mu);
  if (!s) return MX_OK; /* no slot: the read will copy synchronously */
  int st = mx__cuda_check(cudaMemcpyAsync(s->host, src, n, cudaMemcpyDeviceToHost, g_stream),
                          "async copy to host");
  if (!st) st = mx__cuda_check(cudaEventRecord(s->ev, g_stream), "async copy to host");
  if (st) {
    pthread_mutex_lock(&g_stage_mu);
    s->busy = false;
    pthread_mutex_unlock(&g_stage_mu);
    return st;
  }
  *pending = s;
  return MX_OK;
}

static int dev_finish_copy(void *pending, void *dst, size_t n) {
  stage_slot *s = (stage_slot *)pending;
  int st = mx__cuda_check(cudaEventSynchronize(s->ev), "async copy to host");
  if (!st && dst) memcpy(dst, s->host, n);
  pthread_mutex_lock(&g_stage_mu);
  s->busy = false;
  pthread_mutex_unlock(&g_stage_mu);
  return st;
}

static int dev_sync(void) {
  if (g_capturing)
    return mx__set_error(MX_ERR_UNSUPPORTED, "stream synchronize: a graph is being captured");
  int st = mx__cuda_check(cudaStreamSynchronize(g_stream), "stream synchronize");
  if (!st) mx__gpu_epoch_bump(); /* the stream is idle */
  return st;
}

/* ---- graphs (mx__graph_*): capture, replay ------------------------------------------
 * Relaxed mode: the allocator may still cudaMalloc while capturing (it
 * never frees then), and host-to-device copies run synchronously. */
static int dev_capture_begin(void) {
  int st = mx__cuda_check(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeRelaxed),
                          "graph capture");
  if (!st) g_capturing = true;
  return st;
}

static int dev_capture_end(bool keep, void **graph) {
  cudaGraph_t gr = NULL;
  cudaError_t e = cudaStreamEndCapture(g_stream, &gr);
  g_capturing = false;
  int st = mx__cuda_check(e, "graph capture");
  if (!st && keep) {
    cudaGraphExec_t ex = NULL;
    st = mx__cuda_check(cudaGraphInstantiate(&ex, gr, 0), "graph instantiate");
    if (!st) {
      *graph = (void *)ex;
      __atomic_add_fetch(&g_live_graphs, 1, __ATOMIC_RELAXED);
    }
  }
  if (gr) cudaGraphDestroy(gr);
  return st;
}

static int dev_graph_launch(void *graph) {
  return mx__cuda_check(cudaGraphLaunch((cudaGraphExec_t)graph, g_stream), "graph launch");
}

static void dev_graph_free(void *graph) {
  if (cudaStreamSynchronize(g_stream) != cudaSuccess) cudaGetLastError();
  if (cudaGraphExecDestroy((cudaGraphExec_t)graph) != cudaSuccess) cudaGetLastError();
  __atomic_sub_fetch(&g_live_graphs, 1, __ATOMIC_RELAXED);
}

/* ---- timing marks (MXC_PROFILE=2): events from a recycled pool -------------------- */
static pthread_mutex_t g_mark_mu = PTHREAD_MUTEX_INITIALIZER;
static cudaEvent_t *g_marks;
static int g_nmarks, g_cap_marks;

static void *dev_mark(void) {
  if (g_capturing) return NULL;
  cudaEvent_t e = NULL;
  pthread_mutex_lock(&g_mark_mu);
  if (g_nmarks) e = g_marks[--g_nmarks];
  pthread_mutex_unlock(&g_mark_mu);
  if (!e && cudaEventCreate(&e) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  if (cudaEventRecord(e, g_stream) != cudaSuccess) {
    cudaGetLastError();
    cudaEventDestroy(e);
    return NULL;
  }
  return (void *)e;
}

static int dev_mark_elapsed(void *a, void *b, float *ms) {
  *ms = 0.f;
  if (!a || !b) return MX_OK;
  int st = mx__cuda_check(cudaEventSynchronize((cudaEvent_t)b), "timing mark");
  if (!st) st = mx__cuda_check(cudaEventElapsedTime(ms, (cudaEvent_t)a, (cudaEvent_t)b),
                               "timing mark");
  return st;
}

static void dev_mark_free(void *m) {
  if (!m) return;
  pthread_mutex_lock(&g_mark_mu);
  if (g_nmarks == g_cap_marks) {
    int nc = g_cap_marks ? 2 * g_cap_marks : 1024;
    cudaEvent_t *nv = (cudaEvent_t *)realloc(g_marks, sizeof *nv * (size_t)nc);
    if (nv) g_marks = nv, g_cap_marks = nc;
  }
  if (g_nmarks < g_cap_marks) {
    g_marks[g_nmarks++] = (cudaEvent_t)m;
    m = NULL;
  }
  pthread_mutex_unlock(&g_mark_mu);
  if (m) cudaEventDestroy((cudaEvent_t)m);
}

/* ---- init ---------------------------------------------------------------------- */
static void init(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return;
  }
  if (cudaSetDevice(0) != cudaSuccess ||
      cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  mx__device_ops ops;
  ops.alloc = dev_alloc;
  ops.free = dev_free;
  ops.copy = dev_copy;
  ops.copy_to_host_async = dev_copy_to_host_async;
  ops.finish_copy = dev_finish_copy;
  ops.sync = dev_sync;
  ops.capture_begin = dev_capture_begin;
  ops.capture_end = dev_capture_end;
  ops.graph_launch = dev_graph_launch;
  ops.graph_free = dev_graph_free;
  ops.mark = dev_mark;
  ops.mark_elapsed = dev_mark_elapsed;
  ops.mark_free = dev_mark_free;
  mx__register_device_ops(MX_GPU, &ops);
  int major = 0;
  const char *pdl = getenv("MXC_PDL");
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess)
    cudaGetLastError();
  g_pdl = major >= 9 && !(pdl && !strcmp(pdl, "0"));
  g_cuda_backend.name = "cuda";
  mx__kernel_fn *k = g_cuda_backend.kernels;
  mx__cuda_register_elementwise(k);
  mx__cuda_register_shape(k);
  mx__cuda_register_reduce(k);
  mx__cuda_register_linalg(k);
  mx__cuda_register_misc(k);
  mx__cuda_register_sort(k);
  mx__cuda_register_fast(k);
  mx__cuda_register_indexing(k);
  mx__cuda_register_rope_sdpa(k);
  mx__cuda_register_quantized(k);
  g_ok = true;
}

const mx__backend *mx__cuda_backend_init(void) {
  pthread_once(&g_once, init);
  return g_ok ? &g_cuda_backend : NULL;
}
