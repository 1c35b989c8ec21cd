/* dtype.c — dtype sizes, names and NumPy/MLX type promotion. */
#include <string.h>

#include "array_impl.h"

static const size_t dt_size[] = {
#define X(e, n, s, k) s,
    MX_DTYPE_LIST(X)
#undef X
};
static const char *const dt_name[] = {
#define X(e, n, s, k) n,
    MX_DTYPE_LIST(X)
#undef X
};
static const char dt_kind[] = {
#define X(e, n, s, k) k,
    MX_DTYPE_LIST(X)
#undef X
};

size_t mx_dtype_size(mx_dtype dt) { return (unsigned)dt < MX_DTYPE_COUNT ? dt_size[dt] : 0; }
const char *mx_dtype_name(mx_dtype dt) {
  return (unsigned)dt < MX_DTYPE_COUNT ? dt_name[dt] : "invalid";
}
bool mx_dtype_is_float(mx_dtype dt) { return (unsigned)dt < MX_DTYPE_COUNT && dt_kind[dt] == 'f'; }
bool mx_dtype_is_integer(mx_dtype dt) {
  return (unsigned)dt < MX_DTYPE_COUNT && (dt_kind[dt] == 'i' || dt_kind[dt] == 'u');
}
bool mx_dtype_is_signed(mx_dtype dt) {
  return (unsigned)dt < MX_DTYPE_COUNT && (dt_kind[dt] == 'i' || dt_kind[dt] == 'f');
}

int mx_dtype_from_name(const char *name, mx_dtype *out) {
  static const struct { const char *n; mx_dtype d; } alias[] = {
      {"bool", MX_BOOL},       {"bool_", MX_BOOL},       {"uint8", MX_UINT8},
      {"u8", MX_UINT8},        {"uint32", MX_UINT32},    {"u32", MX_UINT32},
      {"int32", MX_INT32},     {"i32", MX_INT32},        {"int64", MX_INT64},
      {"i64", MX_INT64},       {"float16", MX_FLOAT16},  {"f16", MX_FLOAT16},
      {"fp16", MX_FLOAT16},    {"bfloat16", MX_BFLOAT16}, {"bf16", MX_BFLOAT16},
      {"float32", MX_FLOAT32}, {"f32", MX_FLOAT32},      {"fp32", MX_FLOAT32},
      {"float64", MX_FLOAT64}, {"f64", MX_FLOAT64},      {"fp64", MX_FLOAT64},
  };
  for (size_t i = 0; name && i < sizeof alias / sizeof *alias; i++)
    if (!strcmp(name, alias[i].n)) {
      *out = alias[i].d;
      return MX_OK;
    }
  return mx__set_error(MX_ERR_DTYPE, "unknown dtype '%s'", name ? name : "(null)");
}

/* Promotion lattice (MLX's table, which follows NumPy/JAX for these types):
 *   bool < uint8 < uint32 ; int32 < int64 ; mixed signed/unsigned widen to
 *   the next signed type that holds both (uint8+int32 -> int32,
 *   uint32+int32 -> int64, uint32+int64 -> int64);
 *   any integer with a float gives that float;
 *   float16 + bfloat16 -> float32; otherwise the wider float. */
mx_dtype mx_promote_types(mx_dtype a, mx_dtype b) {
  if (a == b) return a;
  if (a == MX_BOOL) return b;
  if (b == MX_BOOL) return a;
  bool fa = mx_dtype_is_float(a), fb = mx_dtype_is_float(b);
  if (fa && fb) {
    if ((a == MX_FLOAT16 && b == MX_BFLOAT16) || (a == MX_BFLOAT16 && b == MX_FLOAT16))
      return MX_FLOAT32;
    return dt_size[a] >= dt_size[b] ? a : b;
  }
  if (fa) return a;
  if (fb) return b;
  bool sa = dt_kind[a] == 'i', sb = dt_kind[b] == 'i';
  if (sa == sb) return dt_size[a] >= dt_size[b] ? a : b;
  mx_dtype s = sa ? a : b, u = sa ? b : a;
  if (dt_size[s] > dt_size[u]) return s;
  return MX_INT64;
}
