/* types.h — per-dtype storage type, compute type, load and store, for the
 * macro-generated CPU loops. Tags: BOOL U8 U32 I32 I64 F16 BF16 F32 F64.
 * Integer arithmetic that may overflow wraps through uint64_t (defined
 * behaviour; GCC 12 -O3 miscompiles vectorised __builtin_*_overflow)
 * (wrapping, defined behaviour); float->int conversion saturates. */
#ifndef MXC_CPU_TYPES_H
#define MXC_CPU_TYPES_H

#include <math.h>
#include <stdint.h>

#include "array_impl.h"
#include "ops/ops_internal.h"

#define T_BOOL uint8_t
#define C_BOOL uint8_t
#define LD_BOOL(v) ((uint8_t)((v) != 0))
#define ST_BOOL(v) ((uint8_t)((v) != 0))

#define T_U8 uint8_t
#define C_U8 uint8_t
#define LD_U8(v) (v)
#define ST_U8(v) ((uint8_t)(v))

#define T_U32 uint32_t
#define C_U32 uint32_t
#define LD_U32(v) (v)
#define ST_U32(v) ((uint32_t)(v))

#define T_I32 int32_t
#define C_I32 int32_t
#define LD_I32(v) (v)
#define ST_I32(v) ((int32_t)(v))

#define T_I64 int64_t
#define C_I64 int64_t
#define LD_I64(v) (v)
#define ST_I64(v) ((int64_t)(v))

#define T_F16 uint16_t
#define C_F16 float
#define LD_F16(v) mx__f16_to_f32(v)
#define ST_F16(v) mx__f32_to_f16((float)(v))

#define T_BF16 uint16_t
#define C_BF16 float
#define LD_BF16(v) mx__bf16_to_f32(v)
#define ST_BF16(v) mx__f32_to_bf16((float)(v))

#define T_F32 float
#define C_F32 float
#define LD_F32(v) (v)
#define ST_F32(v) ((float)(v))

#define T_F64 double
#define C_F64 double
#define LD_F64(v) (v)
#define ST_F64(v) ((double)(v))

#define DT_BOOL MX_BOOL
#define DT_U8 MX_UINT8
#define DT_U32 MX_UINT32
#define DT_I32 MX_INT32
#define DT_I64 MX_INT64
#define DT_F16 MX_FLOAT16
#define DT_BF16 MX_BFLOAT16
#define DT_F32 MX_FLOAT32
#define DT_F64 MX_FLOAT64

/* Apply X(TAG, ...) to groups of tags. */
#define MX_FLOAT_TAGS(X, ...) X(F16, __VA_ARGS__) X(BF16, __VA_ARGS__) X(F32, __VA_ARGS__) X(F64, __VA_ARGS__)
#define MX_INT_TAGS(X, ...) X(U8, __VA_ARGS__) X(U32, __VA_ARGS__) X(I32, __VA_ARGS__) X(I64, __VA_ARGS__)
#define MX_ALL_TAGS(X, ...) X(BOOL, __VA_ARGS__) MX_INT_TAGS(X, __VA_ARGS__) MX_FLOAT_TAGS(X, __VA_ARGS__)
/* A second copy for nesting inside an expansion of the ones above. */
#define MX_ALL_TAGS_INNER(X, ...)                                                   \
  X(BOOL, __VA_ARGS__) X(U8, __VA_ARGS__) X(U32, __VA_ARGS__) X(I32, __VA_ARGS__)   \
  X(I64, __VA_ARGS__) X(F16, __VA_ARGS__) X(BF16, __VA_ARGS__) X(F32, __VA_ARGS__)  \
  X(F64, __VA_ARGS__)

/* Saturating float -> integer conversion (NaN -> 0). */
#define MX__SAT(lo, hi, x) ((x) != (x) ? 0 : (x) <= (double)(lo) ? (lo) : (x) >= (double)(hi) ? (hi) : (x))
static inline int64_t mx__d2i64(double x) {
  return x != x ? 0 : x <= -9223372036854775808.0 ? INT64_MIN
                    : x >= 9223372036854775807.0 ? INT64_MAX : (int64_t)x;
}
static inline int32_t mx__d2i32(double x) {
  return x != x ? 0 : x <= -2147483648.0 ? INT32_MIN : x >= 2147483647.0 ? INT32_MAX : (int32_t)x;
}
static inline uint32_t mx__d2u32(double x) {
  return x != x ? 0 : x <= 0 ? 0 : x >= 4294967295.0 ? UINT32_MAX : (uint32_t)x;
}
static inline uint8_t mx__d2u8(double x) {
  return x != x ? 0 : x <= 0 ? 0 : x >= 255.0 ? 255 : (uint8_t)x;
}



#endif
