/*
 * mxc/memory.h — the buffer allocator and its counters (MLX's memory API).
 *
 *     size_t prev = mx_set_cache_limit(256 << 20);   // keep <= 256 MiB cached
 *     ... mx_eval(...) ...
 *     printf("peak %zu\n", mx_get_peak_memory());
 *     mx_clear_cache();
 *
 * All array buffers come from one allocator with a size-bucketed LRU cache
 * of freed buffers, shared by all devices (counters are summed over
 * devices). When an allocation would push active memory past the memory
 * limit, the cache is released first; if still over, evaluation fails with
 * MX_ERR_OOM and a message naming the requested and available bytes.
 */
#ifndef MXC_MEMORY_H
#define MXC_MEMORY_H

#include "mxc/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes in buffers held by arrays. */
MX_API size_t mx_get_active_memory(void);
/* Highest active memory since start or the last reset. */
MX_API size_t mx_get_peak_memory(void);
MX_API void mx_reset_peak_memory(void);
/* Bytes in freed buffers kept for reuse. */
MX_API size_t mx_get_cache_memory(void);
/* Returns the previous limit. 0 disables caching. */
MX_API size_t mx_set_cache_limit(size_t limit);
/* Returns the previous limit. SIZE_MAX (the default) means no limit. */
MX_API size_t mx_set_memory_limit(size_t limit);
MX_API size_t mx_get_memory_limit(void);
MX_API size_t mx_get_cache_limit(void);
/* Frees every cached buffer. */
MX_API void mx_clear_cache(void);

/* Bytes copied between host and GPU memory, and the number of copies,
 * since start. Data moves only when an op on the other side needs it. */
MX_API void mx_get_transfer_stats(size_t *host_to_device_bytes, size_t *device_to_host_bytes,
                                  size_t *transfers);

/* Testing hook: make the n-th buffer allocation from now fail (1 = the
 * next one); 0 disables. Returns the number of allocations made since the
 * last call, so a test can walk n over a whole eval. */
MX_API size_t mx_debug_fail_nth_alloc(size_t n);

/* Threads used by CPU kernels (default: number of online CPUs). */
MX_API void mx_set_num_threads(int n);
MX_API int mx_get_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif
