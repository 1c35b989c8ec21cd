/* allocator.c — one caching buffer allocator for every device.
 *
 * Freed buffers go into a size-bucketed cache (exact size classes, so a
 * cached block is reused for any request of the same class) kept in LRU
 * order; the cache is trimmed from the least-recently-freed end when it
 * exceeds the cache limit. Active memory counts the capacity of buffers
 * held by arrays. A request that would push active memory past the memory
 * limit first releases the cache, then fails with MX_ERR_OOM.
 */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "array_impl.h"
#include "mxc/memory.h"

typedef struct block {
  struct block *lru_prev, *lru_next; /* global LRU list (head = most recent) */
  struct block *next_same, *prev_same; /* free list of one size class */
  void *ptr;
  size_t capacity;
  int cls;
  int device;
} block;

#define NCLASSES 256
static struct {
  pthread_mutex_t mu;
  size_t active, peak, cached;
  size_t cache_limit, memory_limit;
  bool limits_init;
  block *free_by_class[MX_DEVICE_COUNT][NCLASSES];
  block *lru_head, *lru_tail;
  size_t fail_nth, alloc_count;
  bool guard;
  size_t guard_violations;
} A = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Guard bytes: every block has MX__GUARD spare bytes past its capacity. In
 * guard mode the bytes between the requested size and the end are filled
 * with a pattern on allocation and checked on release, which catches
 * kernels writing past their output. */
#define MX__GUARD 64
#define GUARD_BYTE 0xA5

static void init_limits_locked(void) {
  if (A.limits_init) return;
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  size_t ram = (pages > 0 && psz > 0) ? (size_t)pages * (size_t)psz : (size_t)1 << 34;
  A.memory_limit = ram / 10 * 9; /* a clean MX_ERR_OOM before the OOM killer */
  A.cache_limit = A.memory_limit;
  A.limits_init = true;
}

/* Size classes: 64-byte steps up to 4 KiB, then 8 steps per power of two
 * (at most 12.5% waste). Class index saturates; the largest class holds
 * exact sizes (capacity rounded to 4 KiB) and is searched by capacity. */
static size_t round_size(size_t n, int *cls) {
  if (n <= 4096) {
    size_t c = (n + 63) / 64;
    if (c == 0) c = 1;
    *cls = (int)c - 1; /* 0..63 */
    return c * 64;
  }
  int lg = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^lg < n <= 2^(lg+1) */
  size_t base = (size_t)1 << lg, step = base / 8;
  size_t k = (n - base + step - 1) / step; /* 1..8 */
  int c = 64 + (lg - 12) * 8 + (int)k - 1;
  if (c >= NCLASSES - 1) {
    *cls = NCLASSES - 1;
    return (n + 4095) & ~(size_t)4095;
  }
  *cls = c;
  return base + k * step;
}

static void lru_unlink(block *b) {
  if (b->lru_prev) b->lru_prev->lru_next = b->lru_next;
  else A.lru_head = b->lru_next;
  if (b->lru_next) b->lru_next->lru_prev = b->lru_prev;
  else A.lru_tail = b->lru_prev;
  b->lru_prev = b->lru_next = NULL;
}

static void class_unlink(block *b) {
  if (b->prev_same) b->prev_same->next_same = b->next_same;
  else A.free_by_class[b->device][b->cls] = b->next_same;
  if (b->next_same) b->next_same->prev_same = b->prev_same;
  b->next_same = b->prev_same = NULL;
}

static mx__device_ops g_dev_ops[MX_DEVICE_COUNT];

/* GPU blocks freed while a graph is being captured (see mx__graph_*):
 * kept out of the cache, still counted active, owned by the graph. */
typedef struct held_block {
  struct held_block *next;
  void *ptr;
  size_t nbytes, cap;
} held_block;
static bool g_capturing;
static held_block *g_held;
static mx_array *g_deferred[16];
static int g_ndeferred;
static struct {
  size_t h2d_bytes, d2h_bytes, count;
} g_xfer;

void mx__register_device_ops(int device, const mx__device_ops *ops) {
  MX_ASSERT(device > 0 && device < MX_DEVICE_COUNT);
  g_dev_ops[device] = *ops;
}

const mx__device_ops *mx__device_ops_of(int device) {
  MX_ASSERT(device >= 0 && device < MX_DEVICE_COUNT);
  return &g_dev_ops[device];
}

static void device_free(int device, void *p) {
  if (device == MX_CPU) free(p);
  else if (g_dev_ops[device].free) g_dev_ops[device].free(p);
}

static void *device_alloc(int device, size_t n) {
  if (device == MX_CPU) return aligned_alloc(64, n + MX__GUARD);
  return g_dev_ops[device].alloc ? g_dev_ops[device].alloc(n + MX__GUARD) : NULL;
}

/* Evict least-recently-freed blocks until cached <= target (not while
 * capturing: freeing device memory would wait for the device). */
static void trim_cache_locked(size_t target) {
  while (!g_capturing && A.cached > target && A.lru_tail) {
    block *b = A.lru_tail;
    lru_unlink(b);
    class_unlink(b);
    A.cached -= b->capacity;
    device_free(b->device, b->ptr);
    free(b);
  }
}

/* One block of `nbytes` on `device`: from the cache, or newly allocated
 * within the memory limit. Sets *cap. NULL + MX_ERR_OOM on failure. */
static void *block_get(size_t nbytes, int device, size_t *cap_out) {
  int cls;
  size_t cap = round_size(nbytes, &cls);
  pthread_mutex_lock(&A.mu);
  init_limits_locked();
  A.alloc_count++;
  if (A.fail_nth && A.alloc_count == A.fail_nth) {
    A.fail_nth = 0;
    pthread_mutex_unlock(&A.mu);
    mx__set_error(MX_ERR_OOM, "out of memory: allocation of %zu bytes failed (injected)",
                  nbytes);
    return NULL;
  }
  block *hit = NULL;
  for (block *b = A.free_by_class[device][cls]; b; b = b->next_same) {
    if (b->capacity >= cap && (cls < NCLASSES - 1 || b->capacity <= cap + cap / 8)) {
      hit = b;
      class_unlink(b);
      break;
    }
  }
  void *ptr = NULL;
  if (hit) {
    lru_unlink(hit);
    A.cached -= hit->capacity;
    ptr = hit->ptr;
    cap = hit->capacity;
    free(hit);
  } else {
    /* respect the memory limit, releasing cache first */
    if (A.active + cap > A.memory_limit || A.active + A.cached + cap > A.memory_limit)
      trim_cache_locked(A.memory_limit > A.active + cap ? A.memory_limit - A.active - cap : 0);
    if (A.active + cap > A.memory_limit) {
      size_t avail = A.memory_limit > A.active ? A.memory_limit - A.active : 0;
      size_t limit = A.memory_limit, active = A.active;
      pthread_mutex_unlock(&A.mu);
      mx__set_error(MX_ERR_OOM,
                    "out of memory: requested %zu bytes, %zu available under the memory "
                    "limit of %zu bytes (%zu active)",
                    nbytes, avail, limit, active);
      return NULL;
    }
    ptr = device_alloc(device, cap);
    if (!ptr) {
      trim_cache_locked(0);
      ptr = device_alloc(device, cap);
    }
    if (!ptr) {
      pthread_mutex_unlock(&A.mu);
      mx__set_error(MX_ERR_OOM, "out of memory: the %s refused %zu bytes",
                    device == MX_CPU ? "system" : "device", cap);
      return NULL;
    }
  }
  A.active += cap;
  if (A.active > A.peak) A.peak = A.active;
  pthread_mutex_unlock(&A.mu);
  *cap_out = cap;
  return ptr;
}

/* Return a block to the cache (or free it when caching is off). */
static void block_put(void *ptr, size_t nbytes, size_t cap, int device) {
  int cls;
  round_size(nbytes, &cls);
  pthread_mutex_lock(&A.mu);
  if (g_capturing && device != MX_CPU) {
    held_block *h = malloc(sizeof *h);
    if (h) {
      *h = (held_block){g_held, ptr, nbytes, cap};
      g_held = h;
      pthread_mutex_unlock(&A.mu);
      return;
    }
    /* no memory for the record: leak the block rather than reuse it */
    pthread_mutex_unlock(&A.mu);
    return;
  }
  A.active -= cap;
  block *blk = A.cache_limit > 0 ? malloc(sizeof *blk) : NULL;
  if (blk) {
    *blk = (block){.ptr = ptr, .capacity = cap, .cls = cls, .device = device};
    blk->next_same = A.free_by_class[device][cls];
    if (blk->next_same) blk->next_same->prev_same = blk;
    A.free_by_class[device][cls] = blk;
    blk->lru_next = A.lru_head;
    if (A.lru_head) A.lru_head->lru_prev = blk;
    A.lru_head = blk;
    if (!A.lru_tail) A.lru_tail = blk;
    A.cached += cap;
    if (A.cached > A.cache_limit) trim_cache_locked(A.cache_limit);
  } else {
    device_free(device, ptr);
  }
  pthread_mutex_unlock(&A.mu);
}

static void guard_fill(mx__buffer *b) {
  if (b->guarded) memset((char *)b->ptr + b->size, GUARD_BYTE, b->capacity + MX__GUARD - b->size);
}

static bool guard_ok(const mx__buffer *b) {
  const unsigned char *g = (const unsigned char *)b->ptr + b->size;
  for (size_t i = 0; i < b->capacity + MX__GUARD - b->size; i++)
    if (g[i] != GUARD_BYTE) {
      fprintf(stderr, "mxc: guard bytes overwritten %zu bytes past a %zu-byte buffer\n", i,
              b->size);
      return false;
    }
  return true;
}

mx__buffer *mx__buffer_new(size_t nbytes, int device) {
  mx__buffer *buf = malloc(sizeof *buf);
  if (!buf) {
    mx__set_error(MX_ERR_OOM, "out of memory allocating a buffer header");
    return NULL;
  }
  size_t cap = 0;
  void *p = block_get(nbytes, device, &cap);
  if (!p) {
    free(buf);
    return NULL;
  }
  pthread_mutex_lock(&A.mu);
  bool guard = A.guard && device == MX_CPU;
  pthread_mutex_unlock(&A.mu);
  *buf = (mx__buffer){.refcount = 1, .device = device, .size = nbytes, .capacity = cap,
                      .guarded = guard, .valid = (uint8_t)(1u << device)};
  if (device == MX_CPU) buf->ptr = p;
  else buf->dptr = p;
  guard_fill(buf);
  return buf;
}

mx__buffer *mx__buffer_wrap(void *ptr, size_t nbytes, void (*deleter)(void *, void *),
                            void *ctx) {
  mx__buffer *buf = malloc(sizeof *buf);
  if (!buf) {
    mx__set_error(MX_ERR_OOM, "out of memory allocating a buffer header");
    return NULL;
  }
  int cls;
  size_t cap = round_size(nbytes, &cls); /* size of a device copy, if one is made */
  *buf = (mx__buffer){.refcount = 1, .device = MX_CPU, .ptr = ptr, .size = nbytes,
                      .capacity = cap, .foreign = true, .deleter = deleter,
                      .deleter_ctx = ctx, .valid = 1u << MX_CPU};
  return buf;
}

static uint32_t g_gpu_epoch = 1;
uint32_t mx__gpu_epoch(void) { return __atomic_load_n(&g_gpu_epoch, __ATOMIC_ACQUIRE); }
void mx__gpu_epoch_bump(void) { __atomic_add_fetch(&g_gpu_epoch, 1, __ATOMIC_ACQ_REL); }
static _Thread_local bool tl_upload_queued;
void mx__gpu_upload_queued(void) { tl_upload_queued = true; }

int mx__device_sync(int device) {
  if (device < 0 || device >= MX_DEVICE_COUNT || !g_dev_ops[device].sync) return MX_OK;
  return g_dev_ops[device].sync();
}

int mx__buffer_prefetch_host(mx__buffer *b) {
  if (!b || (b->valid & (1u << MX_CPU)) || b->pending || !b->dptr || !b->size) return MX_OK;
  const mx__device_ops *ops = &g_dev_ops[MX_GPU];
  if (!ops->copy_to_host_async) return MX_OK;
  int st = ops->copy_to_host_async(b->dptr, b->size, &b->pending);
  if (st || !b->pending) {
    b->pending = NULL;
    return st;
  }
  pthread_mutex_lock(&A.mu);
  g_xfer.d2h_bytes += b->size;
  g_xfer.count++;
  pthread_mutex_unlock(&A.mu);
  return MX_OK;
}

/* Completes an in-flight host copy into b->ptr (allocated here). */
static int finish_pending(mx__buffer *b) {
  void *pending = b->pending;
  b->pending = NULL;
  if (!b->ptr) {
    size_t cap = 0;
    void *p = block_get(b->size, MX_CPU, &cap);
    if (!p) {
      g_dev_ops[MX_GPU].finish_copy(pending, NULL, b->size);
      return mx_last_status();
    }
    b->ptr = p;
  }
  int st = g_dev_ops[MX_GPU].finish_copy(pending, b->ptr, b->size);
  if (!st) b->valid |= (uint8_t)(1u << MX_CPU);
  return st;
}

int mx__buffer_ensure(mx__buffer *b, int device) {
  if (b->valid & (1u << device)) return MX_OK;
  if (device == MX_CPU && b->pending) {
    int st = finish_pending(b);
    if (st || (b->valid & (1u << MX_CPU))) return st;
  }
  int src = -1;
  for (int d = 0; d < MX_DEVICE_COUNT; d++)
    if (b->valid & (1u << d)) src = d;
  MX_ASSERT(src >= 0);
  const mx__device_ops *ops = &g_dev_ops[device == MX_CPU ? src : device];
  if (!ops->copy) return mx__set_error(MX_ERR_UNSUPPORTED, "device %d is not available", device);
  /* allocate the missing side */
  if (device == MX_CPU && !b->ptr) {
    size_t cap = 0;
    void *p = block_get(b->size, MX_CPU, &cap);
    if (!p) return mx_last_status();
    b->ptr = p;
  } else if (device != MX_CPU && !b->dptr) {
    size_t cap = 0;
    void *p = block_get(b->size, device, &cap);
    if (!p) return mx_last_status();
    b->dptr = p;
  }
  tl_upload_queued = false;
  int st = device == MX_CPU ? ops->copy(b->ptr, MX_CPU, b->dptr, src, b->size)
                            : ops->copy(b->dptr, device, b->ptr, MX_CPU, b->size);
  if (st) return st;
  /* an upload still in flight: kernels must not read it before their wait */
  if (device != MX_CPU && tl_upload_queued) b->wepoch = mx__gpu_epoch();
  pthread_mutex_lock(&A.mu);
  if (device == MX_CPU) g_xfer.d2h_bytes += b->size;
  else g_xfer.h2d_bytes += b->size;
  g_xfer.count++;
  pthread_mutex_unlock(&A.mu);
  b->valid |= (uint8_t)(1u << device);
  return MX_OK;
}

/* ---- captured GPU graphs ------------------------------------------------------------ */
struct mx__graph {
  void *exec;
  held_block *held;
};

static void deferred_clear(void) {
  for (int i = 0; i < g_ndeferred; i++) mx_array_free(g_deferred[i]);
  g_ndeferred = 0;
}

static void held_release(held_block *h) {
  while (h) {
    held_block *n = h->next;
    block_put(h->ptr, h->nbytes, h->cap, MX_GPU);
    free(h);
    h = n;
  }
}

int mx__graph_capture_begin(void) {
  const mx__device_ops *ops = &g_dev_ops[MX_GPU];
  if (!ops->capture_begin || !ops->capture_end || !ops->graph_launch || !ops->graph_free)
    return mx__set_error(MX_ERR_UNSUPPORTED, "graph capture: no GPU backend that can capture");
  pthread_mutex_lock(&A.mu);
  bool busy = g_capturing;
  pthread_mutex_unlock(&A.mu);
  if (busy) return mx__set_error(MX_ERR_INVALID_ARG, "graph capture: already capturing");
  int st = ops->capture_begin();
  if (st) return st;
  pthread_mutex_lock(&A.mu);
  g_capturing = true;
  g_held = NULL;
  pthread_mutex_unlock(&A.mu);
  return MX_OK;
}

int mx__graph_capture_end(bool keep, mx__graph **g) {
  *g = NULL;
  void *exec = NULL;
  deferred_clear(); /* (evaluated already when the capture is kept) */
  int st = g_dev_ops[MX_GPU].capture_end(keep, keep ? &exec : NULL);
  pthread_mutex_lock(&A.mu);
  g_capturing = false;
  held_block *held = g_held;
  g_held = NULL;
  pthread_mutex_unlock(&A.mu);
  mx__graph *r = keep && !st && exec ? malloc(sizeof *r) : NULL;
  if (!r) {
    if (exec) g_dev_ops[MX_GPU].graph_free(exec);
    /* nothing recorded ever runs: the blocks can go back to the cache */
    held_release(held);
    if (keep && !st) st = mx__set_error(MX_ERR_OOM, "graph capture: out of memory");
    return st;
  }
  *r = (mx__graph){exec, held};
  *g = r;
  return MX_OK;
}

int mx__graph_launch(mx__graph *g) { return g_dev_ops[MX_GPU].graph_launch(g->exec); }

bool mx__graph_capturing(void) {
  pthread_mutex_lock(&A.mu);
  bool c = g_capturing;
  pthread_mutex_unlock(&A.mu);
  return c;
}

int mx__graph_defer(mx_array *a) {
  if (!mx__graph_capturing())
    return mx__set_error(MX_ERR_INVALID_ARG, "graph capture: nothing is being captured");
  if (g_ndeferred == (int)(sizeof g_deferred / sizeof *g_deferred))
    return mx__set_error(MX_ERR_INVALID_ARG, "graph capture: too many deferred updates");
  g_deferred[g_ndeferred++] = mx_array_retain(a);
  return MX_OK;
}

int mx__graph_eval_deferred(void) {
  int st = g_ndeferred ? mx_eval(g_deferred, g_ndeferred) : MX_OK;
  deferred_clear();
  return st;
}

void mx__graph_free(mx__graph *g) {
  if (!g) return;
  g_dev_ops[MX_GPU].graph_free(g->exec); /* waits for the device */
  held_release(g->held);
  free(g);
}

int mx__buffer_read_begin(mx__buffer *b, size_t n, void **pending, void *now) {
  *pending = NULL;
  const mx__device_ops *ops = &g_dev_ops[MX_GPU];
  if (!b->dptr || !ops->copy) return mx__set_error(MX_ERR_INVALID_ARG, "read: no GPU copy");
  if (ops->copy_to_host_async) {
    int st = ops->copy_to_host_async(b->dptr, n, pending);
    if (st || *pending) return st;
  }
  return ops->copy(now, MX_CPU, b->dptr, MX_GPU, n);
}

int mx__buffer_read_end(void *pending, void *dst, size_t n) {
  return pending ? g_dev_ops[MX_GPU].finish_copy(pending, dst, n) : MX_OK;
}

void mx__buffer_retain(mx__buffer *b) { __atomic_add_fetch(&b->refcount, 1, __ATOMIC_RELAXED); }

void mx__buffer_release(mx__buffer *b) {
  if (!b || __atomic_sub_fetch(&b->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (b->pending) g_dev_ops[MX_GPU].finish_copy(b->pending, NULL, b->size);
  if (b->ptr) {
    if (b->foreign) {
      if (b->deleter) b->deleter(b->ptr, b->deleter_ctx);
    } else {
      if (b->guarded && !guard_ok(b)) {
        pthread_mutex_lock(&A.mu);
        A.guard_violations++;
        pthread_mutex_unlock(&A.mu);
      }
      block_put(b->ptr, b->size, b->capacity, MX_CPU);
    }
  }
  if (b->dptr) block_put(b->dptr, b->size, b->capacity, MX_GPU);
  free(b);
}

void mx_get_transfer_stats(size_t *host_to_device_bytes, size_t *device_to_host_bytes,
                           size_t *transfers) {
  pthread_mutex_lock(&A.mu);
  if (host_to_device_bytes) *host_to_device_bytes = g_xfer.h2d_bytes;
  if (device_to_host_bytes) *device_to_host_bytes = g_xfer.d2h_bytes;
  if (transfers) *transfers = g_xfer.count;
  pthread_mutex_unlock(&A.mu);
}

/* ---- public memory API --------------------------------------------------- */
#define LOCKED(expr)                \
  do {                              \
    pthread_mutex_lock(&A.mu);      \
    init_limits_locked();           \
    expr;                           \
    pthread_mutex_unlock(&A.mu);    \
  } while (0)

size_t mx_get_active_memory(void) { size_t r; LOCKED(r = A.active); return r; }
size_t mx_get_peak_memory(void) { size_t r; LOCKED(r = A.peak); return r; }
void mx_reset_peak_memory(void) { LOCKED(A.peak = A.active); }
size_t mx_get_cache_memory(void) { size_t r; LOCKED(r = A.cached); return r; }
size_t mx_get_memory_limit(void) { size_t r; LOCKED(r = A.memory_limit); return r; }
size_t mx_get_cache_limit(void) { size_t r; LOCKED(r = A.cache_limit); return r; }
size_t mx_set_cache_limit(size_t limit) {
  size_t prev;
  LOCKED(prev = A.cache_limit; A.cache_limit = limit; trim_cache_locked(limit));
  return prev;
}
size_t mx_set_memory_limit(size_t limit) {
  size_t prev;
  LOCKED(prev = A.memory_limit; A.memory_limit = limit);
  return prev;
}
void mx_clear_cache(void) { LOCKED(trim_cache_locked(0)); }
size_t mx_debug_fail_nth_alloc(size_t n) {
  size_t count;
  LOCKED(count = A.alloc_count; A.alloc_count = 0; A.fail_nth = n);
  return count;
}

void mx__debug_guard(bool on) { LOCKED(A.guard = on); }
size_t mx__debug_guard_violations(void) { size_t r; LOCKED(r = A.guard_violations); return r; }

/* Release cached blocks at exit so leak checkers see a clean heap. */
__attribute__((destructor)) static void allocator_fini(void) {
  pthread_mutex_lock(&A.mu);
  trim_cache_locked(0);
  pthread_mutex_unlock(&A.mu);
}
