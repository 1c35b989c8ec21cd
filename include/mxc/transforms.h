/*
 * mxc/transforms.h — composable function transforms: vjp, jvp, grad,
 * value_and_grad, checkpoint, custom VJPs and vmap (MLX's mx.grad & co).
 *
 * A function of arrays is an mx_closure: a C function, a payload and the
 * payload's destructor. Transforms take closures and return closures, so
 * they compose (grad of grad, vmap of grad, checkpoint inside grad, ...).
 *
 *     // f(x, w) = sum(tanh(x @ w))
 *     static int f(void *payload, mx_array **in, int n, mx_list *out) {
 *       mx_array *y = mx_matmul(in[0], in[1]);
 *       mx_array *t = mx_tanh(y);
 *       int st = mx_list_push(out, mx_sum(t, NULL, 0, false)); // takes the ref
 *       mx_array_free(y); mx_array_free(t);
 *       return st;
 *     }
 *
 *     mx_closure *loss = mx_closure_new(f, NULL, NULL);
 *     mx_closure *vg = mx_value_and_grad(loss, (int[]){1}, 1);  // d/dw
 *     mx_list res = MX_LIST_INIT;
 *     if (mx_closure_apply(vg, (mx_array *[]){x, w}, 2, &res)) ...error...
 *     // res.items[0] = loss value, res.items[1] = dloss/dw (lazy graphs)
 *     mx_eval(res.items, res.size);
 *     mx_list_clear(&res);
 *     mx_closure_free(vg); mx_closure_free(loss);
 *
 * Lists and ownership (one convention everywhere):
 *  - An mx_list holds NEW references. Start from MX_LIST_INIT (or an
 *    emptied list); mx_list_clear releases every reference and the storage.
 *  - Functions that produce arrays APPEND them to a list given by the
 *    caller; on failure they leave the list as it was.
 *  - mx_list_push TAKES the caller's reference and accepts NULL (a failed
 *    op), returning the pending error: `return mx_list_push(out, mx_exp(x));`
 *  - Inputs (mx_array **, count) are always borrowed.
 *  - A closure is reference counted: mx_closure_new returns one reference;
 *    transforms retain the closures they wrap, so the caller may free its
 *    own reference right after building a transform.
 *
 * A closure function appends its outputs to `out` and returns MX_OK, or
 * returns an error status (what it appended is released by the caller).
 * It must not evaluate arrays in ways that depend on their values if it is
 * to be vmapped (vmap traces it once on unbatched placeholders).
 *
 * All results are lazy graphs: gradients are built from each op's VJP
 * (written with ops), so they run on any backend and can be
 * differentiated again. Evaluate them with mx_eval.
 */
#ifndef MXC_TRANSFORMS_H
#define MXC_TRANSFORMS_H

#include "mxc/array.h"
#include "mxc/map.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- lists of arrays --------------------------------------------------- */
typedef struct mx_list {
  mx_array **items;
  int size;
  int capacity;
} mx_list;
#define MX_LIST_INIT {NULL, 0, 0}

/* Appends `a`, taking over the caller's reference. a == NULL (a failed op)
 * returns the pending error status (or MX_ERR_INVALID_ARG). On any failure
 * the reference is released. */
MX_API int mx_list_push(mx_list *l, mx_array *a);
/* Appends a new reference to `a` (the caller keeps its own). */
MX_API int mx_list_push_retain(mx_list *l, mx_array *a);
/* Releases every reference and the storage; the list is empty and reusable. */
MX_API void mx_list_clear(mx_list *l);

/* ---- closures ----------------------------------------------------------- */
typedef struct mx_closure mx_closure;
typedef int (*mx_closure_fn)(void *payload, mx_array **inputs, int ninputs, mx_list *out);

/* destroy(payload) runs when the last reference goes (may be NULL). */
MX_API mx_closure *mx_closure_new(mx_closure_fn fn, void *payload, void (*destroy)(void *));
MX_API mx_closure *mx_closure_retain(mx_closure *f);
MX_API void mx_closure_free(mx_closure *f);
/* Calls f, appending its outputs to out. On failure out is unchanged. */
MX_API int mx_closure_apply(mx_closure *f, mx_array **inputs, int ninputs, mx_list *out);

/* ---- reverse and forward mode ------------------------------------------ */
/* outputs = f(primals); vjps[i] = sum_j cotangents[j] . d outputs[j] / d primals[i].
 * One cotangent per output, of its shape (cast to its dtype). Appends the
 * outputs to `outputs` (may be NULL) and one array per primal to `vjps`
 * (zeros where no output depends on the primal). */
MX_API int mx_vjp(mx_closure *f, mx_array **primals, int nprimals, mx_array **cotangents,
                  int ncotangents, mx_list *outputs, mx_list *vjps);
/* outputs = f(primals); jvps[j] = sum_i d outputs[j] / d primals[i] . tangents[i].
 * One tangent per primal, of its shape. Derived from the VJPs by linear
 * transposition, so no op needs a separate forward-mode rule. */
MX_API int mx_jvp(mx_closure *f, mx_array **primals, int nprimals, mx_array **tangents,
                  int ntangents, mx_list *outputs, mx_list *jvps);

/* ---- gradients ---------------------------------------------------------- */
/* A closure taking f's inputs and returning the gradient of f's first
 * output (which must have exactly one element) with respect to each input
 * listed in argnums (argnums == NULL: input 0). Other outputs of f are
 * auxiliary and ignored. */
MX_API mx_closure *mx_grad(mx_closure *f, const int *argnums, int nargnums);
/* Like mx_grad, but the closure returns all of f's outputs first, then the
 * gradients: [out0, aux..., grad_argnums[0], ...]. */
MX_API mx_closure *mx_value_and_grad(mx_closure *f, const int *argnums, int nargnums);

/* Parameter trees: a function of a name -> array map (a model's
 * parameters) and of other arrays (a batch). `params` is borrowed for the
 * call: its values are tracers; take new references if you keep them. */
typedef int (*mx_map_fn)(void *payload, const mx_map *params, mx_array **inputs, int ninputs,
                         mx_list *out);
/* Calls fn(params, inputs) once, appends its outputs to `values` (may be
 * NULL) and stores in `grads` (cleared first) the gradient of the first
 * output with respect to every parameter, under the same key and in the
 * same order. */
MX_API int mx_value_and_grad_map(mx_map_fn fn, void *payload, const mx_map *params,
                                 mx_array **inputs, int ninputs, mx_list *values,
                                 mx_map *grads);

/* ---- checkpointing and custom gradients -------------------------------- */
/* A closure computing f whose VJP recomputes f's intermediates from its
 * inputs instead of keeping them alive from the forward pass (trades
 * compute for memory). Use it around each block of a deep network. */
MX_API mx_closure *mx_checkpoint(mx_closure *f);
/* A closure computing f whose VJP is given by `vjp` instead of f's graph.
 * vjp is called with inputs [primals (n), cotangents (m), outputs (m)] of
 * f's n inputs and m outputs, and must return n arrays, the cotangents of
 * the primals (each of its primal's shape). Cotangents of outputs that
 * receive none are zeros. */
MX_API mx_closure *mx_custom_vjp(mx_closure *f, mx_closure *vjp);

/* ---- vectorising map ----------------------------------------------------- */
/* A closure applying f over a batch axis: input i is batched along
 * in_axes[i] (negative: not batched, passed whole to every call; in_axes
 * NULL: all batched along axis 0), output j gets the batch axis at
 * out_axes[j] >= 0 (out_axes NULL: axis 0). f is traced once on
 * placeholders of the unbatched shapes, then its graph is rewritten with
 * per-op batching rules (elementwise, reductions, matmul, shape ops,
 * indexing); an op without a rule is an error naming it. */
MX_API mx_closure *mx_vmap(mx_closure *f, const int *in_axes, int nin, const int *out_axes,
                           int nout);

#ifdef __cplusplus
}
#endif
#endif /* MXC_TRANSFORMS_H */
