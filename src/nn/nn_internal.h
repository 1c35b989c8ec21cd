/* nn_internal.h — helpers shared by the src/nn files (not installed). */
#ifndef MXC_NN_INTERNAL_H
#define MXC_NN_INTERNAL_H

#include "internal.h"
#include "mxc/io.h"
#include "mxc/nn.h"
#include "mxc/ops.h"
#include "mxc/random.h"

#include <string.h>

/* A growable string (error messages, paths). */
typedef struct {
  char *s;
  size_t len, cap;
} mx__nn_str;
void mx__nn_str_add(mx__nn_str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mx__nn_str_cat(mx__nn_str *b, const char *s, size_t n); /* n bytes of s, unformatted */
void mx__nn_str_free(mx__nn_str *b);

/* Splits a key into n keys (new references); key NULL: n draws from the
 * global generator (split of a fresh global key). */
int mx__nn_split_key(mx_array *key, int n, mx_array **out);
/* Frees every array of a NULL-terminated-by-count vector. */
static inline void mx__nn_free_n(mx_array **a, int n) {
  for (int i = 0; i < n; i++) mx_array_free(a[i]);
}
/* Is m of the given type name. */
static inline bool mx__nn_is(const mx_nn_module *m, const char *type) {
  return m && m->vtable && m->vtable->name && !strcmp(m->vtable->name, type);
}
/* x @ w.T (+ b): the Linear forward shared with LoRA/DoRA/fuse. */
mx_array *mx__nn_linear_apply(mx_array *x, mx_array *w, mx_array *b);
/* r + lin(x): a plain Linear without bias (weight, x and r of one dtype)
 * as one addmm (the addition in the product's epilogue, rounded once),
 * any other module as its forward then an add. */
mx_array *mx__nn_linear_add(mx_nn_module *lin, mx_array *x, mx_array *r);
/* The weight of a plain Linear without bias (borrowed), else NULL (no error). */
mx_array *mx__nn_plain_linear_weight(mx_nn_module *m);
/* Linear from given arrays (takes the references; b may be NULL). */
mx_nn_module *mx__nn_linear_from(mx_array *w, mx_array *b);
/* Dropout's forward on x (a new reference). */
mx_array *mx__nn_dropout_apply(mx_nn_module *dropout, mx_array *x);
/* Sets parameters by flattened name without any check (tracers). */
int mx__nn_set_params_unchecked(mx_nn_module *m, const mx_map *params);

#endif
