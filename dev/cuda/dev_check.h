/* dev_check.h — CK(x): a developer tool's check of a CUDA / cuBLAS call
 * (any status type where 0 is success): prints the call and exits. */
#ifndef MXC_DEV_CHECK_H
#define MXC_DEV_CHECK_H
#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                  \
  do {                                                                         \
    auto s_ = (x);                                                             \
    if ((int)s_ != 0) {                                                        \
      fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #x, (int)s_); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#endif
