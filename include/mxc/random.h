/*
 * mxc/random.h — splittable, counter-based random numbers (MLX/JAX style).
 *
 *     mx_array *key = mx_random_key(0);               // uint32 (2,)
 *     mx_array *keys = mx_random_split(key, 2);       // uint32 (2, 2)
 *     mx_array *x = mx_random_normal((int64_t[]){3, 4}, 2, MX_FLOAT32, 0, 1, key);
 *
 * A key is a uint32 array of shape (2,). The same key always gives the same
 * numbers, on every backend and thread count. Passing key == NULL draws from
 * the global default key (seeded with mx_random_seed), which is split on
 * every use. Bits come from Threefry-2x32 (20 rounds).
 */
#ifndef MXC_RANDOM_H
#define MXC_RANDOM_H

#include "mxc/array.h"

#ifdef __cplusplus
extern "C" {
#endif

MX_API mx_array *mx_random_key(uint64_t seed);
MX_API void mx_random_seed(uint64_t seed);
/* num new keys, shape (num, 2). */
MX_API mx_array *mx_random_split(mx_array *key, int num);
/* Raw uint32 bits of the given shape. */
MX_API mx_array *mx_random_bits(const int64_t *shape, int ndim, mx_array *key);
/* Uniform in [low, high). */
MX_API mx_array *mx_random_uniform(double low, double high, const int64_t *shape, int ndim,
                                   mx_dtype dt, mx_array *key);
MX_API mx_array *mx_random_normal(const int64_t *shape, int ndim, mx_dtype dt, double loc,
                                  double scale, mx_array *key);
/* Standard normal truncated to [lower, upper]. */
MX_API mx_array *mx_random_truncated_normal(double lower, double upper, const int64_t *shape,
                                            int ndim, mx_dtype dt, mx_array *key);
/* Integers in [low, high). */
MX_API mx_array *mx_random_randint(int64_t low, int64_t high, const int64_t *shape, int ndim,
                                   mx_dtype dt, mx_array *key);
/* Bernoulli(p) booleans. */
MX_API mx_array *mx_random_bernoulli(double p, const int64_t *shape, int ndim, mx_array *key);
/* Samples indices from unnormalised log-probabilities along axis; num_samples
 * 0 means one sample with the axis removed. */
MX_API mx_array *mx_random_categorical(mx_array *logits, int axis, int num_samples,
                                       mx_array *key);
/* Standard Gumbel samples. */
MX_API mx_array *mx_random_gumbel(const int64_t *shape, int ndim, mx_dtype dt, mx_array *key);

#ifdef __cplusplus
}
#endif
#endif
