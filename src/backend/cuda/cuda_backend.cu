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

static int dev_copy(void *dst, int dst_device, const void *src, int src_device, size_t n) {
  if (n == 0) return MX_OK;
  cudaMemcpyKind kind = dst_device == MX_CPU ? cudaMemcpyDeviceToHost
                        : src_device == MX_CPU ? cudaMemcpyHostToDevice
                                               : cudaMemcpyDeviceToDevice;
  int st = mx__cuda_check(cudaMemcpyAsync(dst, src, n, kind, g_stream), "memcpy");
  /* wait: the host side may be read (D2H) or freed (H2D) right after */
  if (!st) st = mx__cuda_check(cudaStreamSynchronize(g_stream), "memcpy");
  return st;
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
  mx__register_device_ops(MX_GPU, &ops);
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
