/* reduce_params.h — params of reduction ops (builders and kernels). */
#ifndef MXC_REDUCE_PARAMS_H
#define MXC_REDUCE_PARAMS_H
#include <stdint.h>
typedef struct {
  uint32_t mask; /* bit d set: axis d is reduced (output keeps it as size 1) */
} mx__reduce_params;
typedef struct {
  int axis;
} mx__axis_params;
typedef struct {
  int axis;
  int reverse;
  int inclusive;
} mx__scan_params;
#endif
