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

static void device_free(int device, void *p) {
  MX_UNUSED(device);
  free(p);
}

static void *device_alloc(int device, size_t n) {
  MX_UNUSED(device);
  return aligned_alloc(64, n + MX__GUARD);
}

/* Evict least-recently-freed blocks until cached <= target. */
static void trim_cache_locked(size_t target) {
  while (A.cached > target && A.lru_tail) {
    block *b = A.lru_tail;
    lru_unlink(b);
    class_unlink(b);
    A.cached -= b->capacity;
    device_free(b->device, b->ptr);
    free(b);
  }
}

mx__buffer *mx__buffer_new(size_t nbytes, int device) {
  mx__buffer *buf = malloc(sizeof *buf);
  if (!buf) {
    mx__set_error(MX_ERR_OOM, "out of memory allocating a buffer header");
    return NULL;
  }
  int cls;
  size_t cap = round_size(nbytes, &cls);
  pthread_mutex_lock(&A.mu);
  init_limits_locked();
  A.alloc_count++;
  if (A.fail_nth && A.alloc_count == A.fail_nth) {
    A.fail_nth = 0;
    pthread_mutex_unlock(&A.mu);
    free(buf);
    mx__set_error(MX_ERR_OOM, "out of memory: allocation of %zu bytes failed (injected)",
                  nbytes);
    return NULL;
  }
  /* 1. reuse a cached block of the same class */
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
    /* 2. respect the memory limit, releasing cache first */
    if (A.active + cap > A.memory_limit || A.active + A.cached + cap > A.memory_limit)
      trim_cache_locked(A.memory_limit > A.active + cap ? A.memory_limit - A.active - cap : 0);
    if (A.active + cap > A.memory_limit) {
      size_t avail = A.memory_limit > A.active ? A.memory_limit - A.active : 0;
      pthread_mutex_unlock(&A.mu);
      free(buf);
      mx__set_error(MX_ERR_OOM,
                    "out of memory: requested %zu bytes, %zu available under the memory "
                    "limit of %zu bytes (%zu active)",
                    nbytes, avail, A.memory_limit, A.active);
      return NULL;
    }
    ptr = device_alloc(device, cap);
    if (!ptr) {
      trim_cache_locked(0);
      ptr = device_alloc(device, cap);
    }
    if (!ptr) {
      pthread_mutex_unlock(&A.mu);
      free(buf);
      mx__set_error(MX_ERR_OOM, "out of memory: the system refused %zu bytes", cap);
      return NULL;
    }
  }
  A.active += cap;
  if (A.active > A.peak) A.peak = A.active;
  bool guard = A.guard;
  pthread_mutex_unlock(&A.mu);
  *buf = (mx__buffer){.refcount = 1, .device = device, .ptr = ptr, .size = nbytes,
                      .capacity = cap, .guarded = guard};
  if (guard) memset((char *)ptr + nbytes, GUARD_BYTE, cap + MX__GUARD - nbytes);
  return buf;
}

mx__buffer *mx__buffer_wrap(void *ptr, size_t nbytes, void (*deleter)(void *, void *),
                            void *ctx) {
  mx__buffer *buf = malloc(sizeof *buf);
  if (!buf) {
    mx__set_error(MX_ERR_OOM, "out of memory allocating a buffer header");
    return NULL;
  }
  *buf = (mx__buffer){.refcount = 1, .device = MX_CPU, .ptr = ptr, .size = nbytes,
                      .capacity = 0, .deleter = deleter, .deleter_ctx = ctx};
  return buf;
}

void mx__buffer_retain(mx__buffer *b) { __atomic_add_fetch(&b->refcount, 1, __ATOMIC_RELAXED); }

void mx__buffer_release(mx__buffer *b) {
  if (!b || __atomic_sub_fetch(&b->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (b->capacity == 0) { /* wrapped foreign memory */
    if (b->deleter) b->deleter(b->ptr, b->deleter_ctx);
    free(b);
    return;
  }
  int cls;
  round_size(b->size, &cls);
  bool bad = false;
  if (b->guarded) {
    const unsigned char *g = (const unsigned char *)b->ptr + b->size;
    for (size_t i = 0; i < b->capacity + MX__GUARD - b->size; i++)
      if (g[i] != GUARD_BYTE) {
        bad = true;
        fprintf(stderr, "mxc: guard bytes overwritten %zu bytes past a %zu-byte buffer\n", i,
                b->size);
        break;
      }
  }
  pthread_mutex_lock(&A.mu);
  if (bad) A.guard_violations++;
  A.active -= b->capacity;
  block *blk = A.cache_limit > 0 ? malloc(sizeof *blk) : NULL;
  if (blk) {
    *blk = (block){.ptr = b->ptr, .capacity = b->capacity, .cls = cls, .device = b->device};
    blk->next_same = A.free_by_class[b->device][cls];
    if (blk->next_same) blk->next_same->prev_same = blk;
    A.free_by_class[b->device][cls] = blk;
    blk->lru_next = A.lru_head;
    if (A.lru_head) A.lru_head->lru_prev = blk;
    A.lru_head = blk;
    if (!A.lru_tail) A.lru_tail = blk;
    A.cached += b->capacity;
    if (A.cached > A.cache_limit) trim_cache_locked(A.cache_limit);
  } else {
    device_free(b->device, b->ptr);
  }
  pthread_mutex_unlock(&A.mu);
  free(b);
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
