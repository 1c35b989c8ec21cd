/*
 * mxc/map.h — an insertion-ordered map from names to arrays.
 *
 * The currency for named collections of arrays: a module's trainable
 * parameters (nn), the gradients of a loss with respect to them
 * (mx_value_and_grad_map), the tensors of a checkpoint file (io).
 *
 *     mx_map *params = mx_map_new();
 *     mx_map_set(params, "layers.0.weight", w);     // retains w
 *     mx_map_set_take(params, "layers.0.bias", mx_zeros((int64_t[]){8}, 1, MX_FLOAT32));
 *     for (int i = 0; i < mx_map_size(params); i++)
 *       printf("%s\n", mx_map_key(params, i));      // in insertion order
 *     mx_array *b = mx_map_get(params, "layers.0.bias"); // borrowed
 *     mx_map_free(params);                          // releases every array
 *
 * Ownership: the map holds one reference to each value. mx_map_set
 * retains its argument (the caller keeps its own reference);
 * mx_map_set_take takes over the caller's reference (handy for results of
 * ops: it also accepts NULL, returning the pending error). Getters return
 * BORROWED pointers, valid until the entry is replaced or removed or the
 * map is freed. Keys are copied. mx_map_free(NULL) is a no-op.
 *
 * Order: entries keep the order in which their keys were first inserted;
 * replacing a value keeps the position; removing shifts later entries.
 * Lookups are O(1) (hashed).
 */
#ifndef MXC_MAP_H
#define MXC_MAP_H

#include "mxc/array.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_map mx_map;

MX_API mx_map *mx_map_new(void);
MX_API void mx_map_free(mx_map *m);
/* A new map with the same keys, in order, holding new references to the
 * same arrays (a shallow copy). */
MX_API mx_map *mx_map_copy(const mx_map *m);

/* Insert or replace. Retains `value` (which must not be NULL). */
MX_API int mx_map_set(mx_map *m, const char *key, mx_array *value);
/* Insert or replace, taking ownership of `value`. value == NULL returns
 * the pending error status (or MX_ERR_INVALID_ARG) and changes nothing. On
 * any failure the reference is released. */
MX_API int mx_map_set_take(mx_map *m, const char *key, mx_array *value);
/* The value for key (borrowed), or NULL with MX_ERR_NOT_FOUND naming the
 * key. */
MX_API mx_array *mx_map_get(const mx_map *m, const char *key);
MX_API bool mx_map_has(const mx_map *m, const char *key);
/* Removes key; MX_ERR_NOT_FOUND if absent. */
MX_API int mx_map_remove(mx_map *m, const char *key);
/* Removes every entry. */
MX_API void mx_map_clear(mx_map *m);

/* Iteration in insertion order, 0 <= i < mx_map_size(m). Borrowed. */
MX_API int mx_map_size(const mx_map *m);
MX_API const char *mx_map_key(const mx_map *m, int i);
MX_API mx_array *mx_map_value(const mx_map *m, int i);

/* Evaluates every value (one mx_eval call, shared subgraphs run once). The
 * values are handed to mx_eval in reverse insertion order, which lets the
 * backward pass of a gradient map (parameters in forward order) free each
 * layer's activations as soon as that layer's gradient is computed. */
MX_API int mx_map_eval(mx_map *m);

#ifdef __cplusplus
}
#endif
#endif /* MXC_MAP_H */
