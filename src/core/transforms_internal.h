/* transforms_internal.h — shared by transforms.c and vmap.c (not installed). */
#ifndef MXC_TRANSFORMS_INTERNAL_H
#define MXC_TRANSFORMS_INTERNAL_H

#include "array_impl.h"
#include "mxc/map.h"
#include "mxc/ops.h"
#include "mxc/transforms.h"

/* Params of every CUSTOM node made by the transforms: the kernel makes
 * the output a view of input `pass`; the rest is for custom-vjp nodes. */
typedef struct {
  int pass;
  int index;    /* which output of the custom function */
  int nprimals; /* inputs are [holder, primals, stopped outputs] */
  int nouts;
  struct custom_state *state;
} mx__custom_params;

/* A CUSTOM node with like's shape and dtype. */
mx_array *mx__custom_node(const mx__op_def *def, mx_array *like, mx_array **inputs, int n,
                          const mx__custom_params *p);
/* A tracer of a: a pass-through node with identity VJP. NULL-tolerant. */
mx_array *mx__tracer(mx_array *a);
bool mx__is_tracer(const mx_array *a);

/* Drop list entries past `size`. */
void mx__list_truncate(mx_list *l, int size);
/* mx_closure_apply with mx__trace_push() active. */
int mx__trace_apply(mx_closure *f, mx_array **inputs, int n, mx_list *out);

/* Reverse sweep from outs with cotangents cots (NULL entries: none) to the
 * arrays targets (distinct). grads[i] gets a new reference, or NULL when
 * nothing depends on targets[i]. */
int mx__backprop(mx_array **outs, mx_array **cots, int nout, mx_array **targets, int nt,
                 mx_array **grads);

/* Pointer -> int hash map (get returns -1 when absent). */
void *mx__ptrmap_new(void);
void mx__ptrmap_free(void *m);
int mx__ptrmap_get(void *m, const mx_array *k);
int mx__ptrmap_put(void *m, mx_array *k, int v);

typedef struct {
  mx_array **v;
  size_t n, cap;
} mx__node_list;
/* Post-order of the graph below roots (inputs first). Does not descend
 * below arrays in `stop` (may be NULL), below leaves, or below zero_grad
 * ops when skip_zero_grad. `index` (a ptrmap) receives each node's
 * position in `order`. */
int mx__graph_postorder(mx_array **roots, int nroots, void *stop, bool skip_zero_grad,
                        mx__node_list *order, void *index);

#endif
