/* init.c — mlx.nn.init: constant, normal, uniform, glorot and he
 * initialisers with explicit keys (fans computed as MLX does). */
#include "nn_internal.h"

#include <math.h>

mx_array *mx_nn_init_constant(const int64_t *shape, int ndim, mx_dtype dt, double value) {
  return mx_full(shape, ndim, value, dt);
}
mx_array *mx_nn_init_normal(const int64_t *shape, int ndim, mx_dtype dt, double mean, double std,
                            mx_array *key) {
  return mx_random_normal(shape, ndim, dt, mean, std, key);
}
mx_array *mx_nn_init_uniform(const int64_t *shape, int ndim, mx_dtype dt, double low, double high,
                             mx_array *key) {
  return mx_random_uniform(low, high, shape, ndim, dt, key);
}

static int fans(const char *op, const int64_t *shape, int ndim, double *fan_in, double *fan_out) {
  if (!shape || ndim < 2)
    return mx__set_error(MX_ERR_SHAPE, "nn: %s: needs at least 2 dimensions to compute fans (ndim %d)", op, ndim);
  double rf = 1;
  for (int i = 1; i < ndim - 1; i++) rf *= (double)shape[i];
  *fan_in = (double)shape[ndim - 1] * rf;
  *fan_out = (double)shape[0] * rf;
  if (*fan_in <= 0 || *fan_out <= 0) return mx__set_error(MX_ERR_SHAPE, "nn: %s: zero-size fan", op);
  return MX_OK;
}

mx_array *mx_nn_init_glorot_normal(const int64_t *shape, int ndim, mx_dtype dt, double gain, mx_array *key) {
  double fi, fo;
  if (fans("glorot_normal", shape, ndim, &fi, &fo)) return NULL;
  return mx_random_normal(shape, ndim, dt, 0.0, gain * sqrt(2.0 / (fi + fo)), key);
}
mx_array *mx_nn_init_glorot_uniform(const int64_t *shape, int ndim, mx_dtype dt, double gain, mx_array *key) {
  double fi, fo;
  if (fans("glorot_uniform", shape, ndim, &fi, &fo)) return NULL;
  double lim = gain * sqrt(6.0 / (fi + fo));
  return mx_random_uniform(-lim, lim, shape, ndim, dt, key);
}
mx_array *mx_nn_init_he_normal(const int64_t *shape, int ndim, mx_dtype dt, bool fan_out, double gain,
                               mx_array *key) {
  double fi, fo;
  if (fans("he_normal", shape, ndim, &fi, &fo)) return NULL;
  return mx_random_normal(shape, ndim, dt, 0.0, gain / sqrt(fan_out ? fo : fi), key);
}
mx_array *mx_nn_init_he_uniform(const int64_t *shape, int ndim, mx_dtype dt, bool fan_out, double gain,
                                mx_array *key) {
  double fi, fo;
  if (fans("he_uniform", shape, ndim, &fi, &fo)) return NULL;
  double lim = gain * sqrt(3.0 / (fan_out ? fo : fi));
  return mx_random_uniform(-lim, lim, shape, ndim, dt, key);
}
