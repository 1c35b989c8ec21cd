/*
 * mxc/base.h — status codes, error reporting and common types.
 *
 * Every function a user can make fail returns either a status (mx_status,
 * MX_OK == 0) or a pointer that is NULL on failure. In both cases the
 * calling thread's last error holds a message:
 *
 *     mx_array *c = mx_matmul(a, b);
 *     if (!c) fprintf(stderr, "mxc: %s\n", mx_last_error());
 *
 * The library never exits or aborts on user error. Broken internal
 * invariants (bugs) are caught by assertions.
 */
#ifndef MXC_BASE_H
#define MXC_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MX_API
#else
#define MX_API __attribute__((visibility("default")))
#endif

/* X(name, value, description). One table gives the enum and the names. */
#define MX_STATUS_LIST(X)                                                   \
  X(MX_OK, 0, "ok")                                                         \
  X(MX_ERR_INVALID_ARG, -1, "invalid argument")                             \
  X(MX_ERR_SHAPE, -2, "shape mismatch")                                     \
  X(MX_ERR_DTYPE, -3, "unsupported or mismatched dtype")                    \
  X(MX_ERR_OOM, -4, "out of memory")                                        \
  X(MX_ERR_IO, -5, "input/output error")                                    \
  X(MX_ERR_FORMAT, -6, "malformed input")                                   \
  X(MX_ERR_NOT_FOUND, -7, "not found")                                      \
  X(MX_ERR_UNSUPPORTED, -8, "unsupported")                                  \
  X(MX_ERR_NO_KERNEL, -9, "no kernel for this op on this backend")          \
  X(MX_ERR_INTERNAL, -10, "internal error")                                 \
  X(MX_ERR_RANGE, -11, "index out of range")

typedef enum {
#define MX__STATUS_ENUM(name, value, desc) name = value,
  MX_STATUS_LIST(MX__STATUS_ENUM)
#undef MX__STATUS_ENUM
} mx_status;

/* The symbolic name of a status ("MX_ERR_SHAPE"), or "MX_UNKNOWN". */
MX_API const char *mx_status_name(int status);
/* A one-line description of a status ("shape mismatch"). */
MX_API const char *mx_status_str(int status);

/* The message of the last error on this thread ("" if none). The pointer
 * stays valid until the next mxc call on this thread. */
MX_API const char *mx_last_error(void);
/* The status of the last error on this thread (MX_OK if none). */
MX_API int mx_last_status(void);
/* Forget the last error on this thread. */
MX_API void mx_clear_error(void);

/* Library version. */
#define MX_VERSION_MAJOR 0
#define MX_VERSION_MINOR 1
#define MX_VERSION_PATCH 0
MX_API const char *mx_version(void);

#ifdef __cplusplus
}
#endif
#endif /* MXC_BASE_H */
