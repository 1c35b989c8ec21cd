/* internal.h — helpers shared by every part of libmxc (not installed). */
#ifndef MXC_INTERNAL_H
#define MXC_INTERNAL_H

#include "mxc/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Set the thread's last error; returns status so callers can
 * `return mx__set_error(MX_ERR_SHAPE, "...")`. */
int mx__set_error(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepend context to the current error message ("loading x.safetensors: ..."). */
int mx__prefix_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Broken internal invariant: a bug in mxc, never a user error. */
#define MX_ASSERT(cond)                                                        \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "mxc: internal assertion failed: %s (%s:%d)\n", #cond,  \
              __FILE__, __LINE__);                                             \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* An A/B switch: on unless the environment variable is "0", read once
 * into *cache (a static int starting at -1). */
static inline int mx__env_on(const char *name, int *cache) {
  int r = __atomic_load_n(cache, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv(name);
    r = !(e && !strcmp(e, "0"));
    __atomic_store_n(cache, r, __ATOMIC_RELAXED);
  }
  return r;
}

#define MX_UNUSED(x) (void)(x)
#define MX_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MX_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
