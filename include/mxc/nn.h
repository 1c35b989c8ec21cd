/*
 * mxc/nn.h — neural-network modules, layers, losses and initialisers
 * (MLX's mlx.nn, plus mlx-lm's LoRA/DoRA layers).
 *
 * A model is a tree of modules. Each module has named parameters
 * (arrays), named child modules and named lists of modules, in the order
 * they were added. Parameters are addressed by dotted paths exactly as
 * MLX's tree_flatten names them ("layers.0.self_attn.q_proj.weight"), so
 * weight files interchange with MLX and mlx-lm.
 *
 *     // model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
 *     mx_nn_module *model = mx_nn_sequential_new(3, (mx_nn_module *[]){
 *         mx_nn_linear_new(4, 16, true, k0), mx_nn_relu_new(),   // k0, k1: keys
 *         mx_nn_linear_new(16, 2, true, k1)});   // takes the layers
 *     mx_nn_module *first = mx_nn_get(model, "layers.0");      // borrowed
 *     mx_array *y = mx_nn_forward(model, x);                   // lazy
 *
 *     // loss_fn(model, x, y) -> scalar; gradients of trainable parameters
 *     static int loss_fn(void *p, mx_nn_module *m, mx_array **in, int n, mx_list *out) {
 *       mx_array *logits = mx_nn_forward(m, in[0]);
 *       int st = mx_list_push(out, mx_nn_cross_entropy(logits, in[1], NULL,
 *                                                      &(mx_nn_ce_options){.reduction = MX_NN_MEAN}));
 *       mx_array_free(logits);
 *       return st;
 *     }
 *     mx_map *grads = mx_map_new();
 *     mx_list loss = MX_LIST_INIT;
 *     mx_nn_value_and_grad(model, loss_fn, NULL, (mx_array *[]){x, y}, 2, &loss, grads);
 *     // ... optimizer step producing a map of new parameters, then:
 *     mx_nn_update(model, new_params, MX_NN_UPDATE_PARTIAL);
 *     mx_nn_save_weights(model, "model.safetensors");
 *     mx_nn_module_free(model);
 *
 * Ownership. Modules are reference counted. Constructors return one new
 * reference; mx_nn_module_free releases it. Functions that ADD a module or
 * an array to a module (add_child, list_append, add_param, replace, the
 * containers' constructors) TAKE the caller's reference, and accept NULL
 * (a failed constructor), returning the pending error. Getters return
 * BORROWED pointers. Wrappers (LoRA) retain the module they wrap, so a
 * layer can be wrapped and then replaced in its parent in one line:
 *
 *     mx_nn_module *q = mx_nn_get(model, "layers.0.self_attn.q_proj");
 *     mx_nn_replace(model, "layers.0.self_attn.q_proj",
 *                   mx_nn_lora_linear_new(q, 8, 20.0, 0.0, key));
 *
 * Errors: every function returns MX_OK / a status, or NULL, with
 * mx_last_error() set. A wrong path names the missing segment and
 * suggests existing paths:
 *     nn: no module "layers.0": "" (Model) has no entry "layers" (entries:
 *     model, lm_head); did you mean "model.layers.0"?
 *
 * Defining a module: embed mx_nn_module first in a struct, give it a
 * vtable, allocate it with mx_nn_module_new and add its parameters and
 * children in the order MLX would set them as attributes:
 *
 *     typedef struct { mx_nn_module base; double eps; } my_block;
 *     static mx_array *my_block_forward(mx_nn_module *self, mx_array *const *in, int n) {
 *       my_block *b = (my_block *)self;
 *       mx_array *h = mx_nn_forward(mx_nn_child(self, "fc"), in[0]);
 *       mx_array *y = mx_fast_rms_norm(h, mx_nn_param(self, "gamma"), b->eps);
 *       mx_array_free(h);
 *       return y;                               // NULL-tolerant chain
 *     }
 *     static const mx_nn_module_vtable my_block_vt = {"MyBlock", my_block_forward};
 *     mx_nn_module *my_block_new(int d, mx_array *key) {
 *       my_block *b = (my_block *)mx_nn_module_new(&my_block_vt, sizeof *b);
 *       if (!b) return NULL;
 *       b->eps = 1e-5;
 *       if (mx_nn_add_child(&b->base, "fc", mx_nn_linear_new(d, d, false, key)) ||
 *           mx_nn_add_param(&b->base, "gamma", mx_ones((int64_t[]){d}, 1, MX_FLOAT32))) {
 *         mx_nn_module_free(&b->base);
 *         return NULL;
 *       }
 *       return &b->base;
 *     }
 *
 * Forward functions only build lazy graphs. Inside mx_nn_value_and_grad
 * the module's trainable parameters are temporarily replaced by tracers,
 * so a forward function must read its parameters with mx_nn_param (never
 * cache array pointers across calls).
 */
#ifndef MXC_NN_H
#define MXC_NN_H

#include "mxc/array.h"
#include "mxc/map.h"
#include "mxc/transforms.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ==== modules ================================================================ */

typedef struct mx_nn_module mx_nn_module;

typedef struct mx_nn_module_vtable {
  /* Type name as MLX prints it ("Linear", "LoRALinear"). */
  const char *name;
  /* The forward pass: a new reference (lazy), or NULL with an error. The
   * inputs are borrowed. NULL: the module cannot be called. */
  mx_array *(*forward)(mx_nn_module *self, mx_array *const *inputs, int ninputs);
  /* Releases fields of the derived struct (not parameters or children,
   * which the module frees itself). May be NULL. */
  void (*destroy)(mx_nn_module *self);
  /* Writes the constructor arguments for printing ("4, 16, bias=True").
   * May be NULL. */
  void (*describe)(const mx_nn_module *self, char *buf, size_t n);
  /* A quantized replacement of this module (new reference) for
   * mx_nn_quantize; NULL slot: the module is not quantizable. */
  mx_nn_module *(*to_quantized)(mx_nn_module *self, int group_size, int bits);
} mx_nn_module_vtable;

struct mx_nn_module {
  const mx_nn_module_vtable *vtable;
  struct mx__nn_tree *tree; /* private: parameters, children, lists */
  int refcount;             /* private */
  bool training;            /* read it with mx_nn_is_training */
};

/* Allocates a zeroed module of `size` bytes (>= sizeof(mx_nn_module), the
 * derived struct) in training mode. */
MX_API mx_nn_module *mx_nn_module_new(const mx_nn_module_vtable *vt, size_t size);
MX_API mx_nn_module *mx_nn_module_retain(mx_nn_module *m);
MX_API void mx_nn_module_free(mx_nn_module *m); /* NULL: no-op */
MX_API const char *mx_nn_module_type(const mx_nn_module *m); /* vtable->name */

/* The forward pass (new reference). */
MX_API mx_array *mx_nn_forward(mx_nn_module *m, mx_array *x);
MX_API mx_array *mx_nn_forward_n(mx_nn_module *m, mx_array *const *inputs, int n);

/* ---- building the tree (names must not contain '.') ----------------------- */
/* Adds or replaces parameter `name`, taking the reference to `a`. */
MX_API int mx_nn_add_param(mx_nn_module *m, const char *name, mx_array *a);
/* Adds or replaces child `name`, taking the reference to `child`. */
MX_API int mx_nn_add_child(mx_nn_module *m, const char *name, mx_nn_module *child);
/* Adds an empty list of modules (no-op if it exists). */
MX_API int mx_nn_add_list(mx_nn_module *m, const char *name);
/* Appends to list `name` (created if absent), taking the reference. */
MX_API int mx_nn_list_append(mx_nn_module *m, const char *name, mx_nn_module *child);
/* Removes a direct parameter, child or list. */
MX_API int mx_nn_remove(mx_nn_module *m, const char *name);

/* ---- direct access (borrowed; NULL + MX_ERR_NOT_FOUND when absent) ---------- */
MX_API mx_array *mx_nn_param(const mx_nn_module *m, const char *name);
MX_API bool mx_nn_has_param(const mx_nn_module *m, const char *name);
MX_API mx_nn_module *mx_nn_child(const mx_nn_module *m, const char *name);
MX_API int mx_nn_list_size(const mx_nn_module *m, const char *name); /* -1: no list */
MX_API mx_nn_module *mx_nn_list_item(const mx_nn_module *m, const char *name, int i);

/* ---- paths ----------------------------------------------------------------- */
/* The module at a dotted path relative to m ("model.layers.3.self_attn";
 * "" is m itself). List items are numeric segments. */
MX_API mx_nn_module *mx_nn_get(const mx_nn_module *m, const char *path);
/* The parameter at a dotted path ("layers.0.weight"). */
MX_API mx_array *mx_nn_get_param(const mx_nn_module *m, const char *path);
/* Replaces the module at path (a child or a list item) by `child`, taking
 * its reference. The old module is released by its parent (a wrapper that
 * retained it keeps it alive). */
MX_API int mx_nn_replace(mx_nn_module *m, const char *path, mx_nn_module *child);

/* Named modules, in tree order (pre-order, the root first with path "").
 * Entries hold new references; free with mx_nn_modules_clear. */
typedef struct {
  int size;
  char **paths;
  mx_nn_module **modules;
} mx_nn_modules;
#define MX_NN_MODULES_INIT {0, NULL, NULL}
/* leaves_only: only modules without child modules (MLX's leaf_modules). */
MX_API int mx_nn_named_modules(mx_nn_module *m, bool leaves_only, mx_nn_modules *out);
MX_API void mx_nn_modules_clear(mx_nn_modules *l);

/* ---- parameters --------------------------------------------------------------- */
/* All parameters / the trainable (not frozen) ones, as a new flat map in
 * tree order with MLX's flattened names. Values are new references to the
 * module's arrays. */
MX_API int mx_nn_parameters(const mx_nn_module *m, mx_map **out);
MX_API int mx_nn_trainable_parameters(const mx_nn_module *m, mx_map **out);
/* Total number of parameter elements (trainable only when asked). */
MX_API int64_t mx_nn_num_parameters(const mx_nn_module *m, bool trainable_only);

typedef enum {
  /* Unknown keys, shape and dtype mismatches are errors; keys that are
   * not given keep their value (an optimizer step on trainable params). */
  MX_NN_UPDATE_PARTIAL = 0,
  /* As PARTIAL, and every parameter of the model must be given. */
  MX_NN_UPDATE_STRICT = 1,
  /* No checks: unknown keys are ignored, arrays replace as given. */
  MX_NN_UPDATE_LOOSE = 2,
} mx_nn_update_mode;
/* Sets parameters from a flat map (retains its arrays). On error nothing
 * changes and the message lists every offending key (unknown keys with a
 * suggestion, missing keys, "name: model float32[4,3] vs given
 * float32[3,4]"). */
MX_API int mx_nn_update(mx_nn_module *m, const mx_map *params, mx_nn_update_mode mode);

/* Freezing: keys == NULL freezes every parameter of m and its subtree
 * (recurse) or of m only. Otherwise each key is either a local parameter
 * name ("bias": matched in every module of the subtree when recurse) or a
 * dotted path relative to m ("layers.0.weight"); a key matching nothing
 * is an error. */
MX_API int mx_nn_freeze(mx_nn_module *m, const char *const *keys, int nkeys, bool recurse);
MX_API int mx_nn_unfreeze(mx_nn_module *m, const char *const *keys, int nkeys, bool recurse);
MX_API bool mx_nn_is_frozen(const mx_nn_module *m, const char *path);

/* Training mode (Dropout is active only in training). Recursive. */
MX_API void mx_nn_train(mx_nn_module *m, bool training);
MX_API void mx_nn_eval(mx_nn_module *m); /* mx_nn_train(m, false) */
MX_API bool mx_nn_is_training(const mx_nn_module *m);
/* Casts every floating-point parameter to dt (as MLX's set_dtype). */
MX_API int mx_nn_set_dtype(mx_nn_module *m, mx_dtype dt);

/* ---- weights files ------------------------------------------------------------ */
/* .safetensors or .npz (by extension), all parameters, MLX names. */
MX_API int mx_nn_save_weights(const mx_nn_module *m, const char *path);
/* Loads a .safetensors/.npz (or anything mx_load reads). strict: unknown
 * keys, missing keys and shape mismatches are errors (listed); dtypes
 * follow the file, as in MLX. Not strict: matching keys are loaded. */
MX_API int mx_nn_load_weights(mx_nn_module *m, const char *path, bool strict);
/* The same from a map already in memory. */
MX_API int mx_nn_load_weights_map(mx_nn_module *m, const mx_map *weights, bool strict);

/* Prints the module tree as MLX's repr does. */
MX_API int mx_nn_print(const mx_nn_module *m, FILE *f);

/* ---- gradients of a model ---------------------------------------------------- */
/* A loss of a model and of inputs: append the loss (first) and any
 * auxiliary outputs to `out`. */
typedef int (*mx_nn_loss_fn)(void *payload, mx_nn_module *model, mx_array **inputs, int ninputs,
                             mx_list *out);
/* MLX's nn.value_and_grad: calls fn(model, inputs) with the trainable
 * parameters traced, appends its outputs to `values` (may be NULL) and
 * stores in `grads` (cleared first) the gradient of the first output for
 * each trainable parameter, keyed by its flattened name. The model's
 * parameters are restored afterwards. */
MX_API int mx_nn_value_and_grad(mx_nn_module *model, mx_nn_loss_fn fn, void *payload,
                                mx_array **inputs, int ninputs, mx_list *values, mx_map *grads);

/* ==== layers ==================================================================
 * `key` (a uint32 (2,) random key, may be NULL for the global generator)
 * initialises parameters; a layer given a key splits it, so the same key
 * gives the same initial values. Initialisation matches MLX. */

/* Linear: weight (out, in) ~ U(-1/sqrt(in), 1/sqrt(in)), bias (out) the
 * same; y = x @ weight.T + bias. */
MX_API mx_nn_module *mx_nn_linear_new(int64_t input_dims, int64_t output_dims, bool bias,
                                      mx_array *key);
/* Embedding: weight (num, dims) ~ N(0, 1/sqrt(dims)); forward(indices). */
MX_API mx_nn_module *mx_nn_embedding_new(int64_t num_embeddings, int64_t dims, mx_array *key);
/* x @ weight.T: the tied output head (also for QuantizedEmbedding). */
MX_API mx_array *mx_nn_embedding_as_linear(mx_nn_module *embedding, mx_array *x);
/* RMSNorm: weight ones(dims). */
MX_API mx_nn_module *mx_nn_rms_norm_new(int64_t dims, double eps);
/* LayerNorm: weight ones, bias zeros (affine; bias optional). */
MX_API mx_nn_module *mx_nn_layer_norm_new(int64_t dims, double eps, bool affine, bool bias);
/* RoPE (no parameters): forward(x) uses offset 0. */
MX_API mx_nn_module *mx_nn_rope_new(int dims, bool traditional, double base, double scale);
MX_API mx_array *mx_nn_rope_apply(mx_nn_module *rope, mx_array *x, int64_t offset);
/* MultiHeadAttention (MLX semantics): query_proj, key_proj, value_proj,
 * out_proj; forward(queries (B,L,qd), keys (B,S,kd), values (B,S,vd)
 * [, additive or boolean mask broadcastable to (B,H,L,S)]). Dims given as
 * 0 default as in MLX (query/key/value input dims = dims, value_dims =
 * dims, value_output_dims = dims). */
MX_API mx_nn_module *mx_nn_multi_head_attention_new(int64_t dims, int num_heads,
                                                    int64_t query_input_dims,
                                                    int64_t key_input_dims,
                                                    int64_t value_input_dims,
                                                    int64_t value_dims,
                                                    int64_t value_output_dims, bool bias,
                                                    mx_array *key);
/* (N, N) additive causal mask: 0 on and below the diagonal, -1e9 above
 * (MLX's MultiHeadAttention.create_additive_causal_mask). */
MX_API mx_array *mx_nn_create_additive_causal_mask(int64_t n, mx_dtype dt);
/* Dropout(p): in training, zeroes elements with probability p and scales
 * the rest by 1/(1-p); the identity in eval mode. Draws from the global
 * generator unless a key is set (then split on every call). */
MX_API mx_nn_module *mx_nn_dropout_new(double p);
MX_API int mx_nn_dropout_set_key(mx_nn_module *dropout, mx_array *key); /* retains key */
/* Sequential: list "layers" (takes the references; NULL entries fail). */
MX_API mx_nn_module *mx_nn_sequential_new(int n, mx_nn_module *const *layers);

/* ---- activations (functions, and parameterless modules) -------------------------- */
MX_API mx_array *mx_nn_relu(mx_array *x);
MX_API mx_array *mx_nn_relu6(mx_array *x);
MX_API mx_array *mx_nn_leaky_relu(mx_array *x, double negative_slope); /* MLX: 0.01 */
MX_API mx_array *mx_nn_elu(mx_array *x, double alpha);                 /* MLX: 1.0 */
MX_API mx_array *mx_nn_celu(mx_array *x, double alpha);
MX_API mx_array *mx_nn_selu(mx_array *x);
MX_API mx_array *mx_nn_gelu(mx_array *x);             /* exact (erf) */
MX_API mx_array *mx_nn_gelu_approx(mx_array *x);      /* tanh approximation */
MX_API mx_array *mx_nn_gelu_fast_approx(mx_array *x); /* x * sigmoid(1.702 x) */
MX_API mx_array *mx_nn_silu(mx_array *x);
MX_API mx_array *mx_nn_sigmoid(mx_array *x);
MX_API mx_array *mx_nn_log_sigmoid(mx_array *x);
MX_API mx_array *mx_nn_tanh(mx_array *x);
MX_API mx_array *mx_nn_softplus(mx_array *x);
MX_API mx_array *mx_nn_softsign(mx_array *x);
MX_API mx_array *mx_nn_mish(mx_array *x);
MX_API mx_array *mx_nn_hardswish(mx_array *x);
MX_API mx_array *mx_nn_hard_tanh(mx_array *x, double min_val, double max_val);
MX_API mx_array *mx_nn_glu(mx_array *x, int axis); /* a * sigmoid(b), halves of axis */

typedef enum {
  MX_NN_ACT_RELU,
  MX_NN_ACT_RELU6,
  MX_NN_ACT_LEAKY_RELU, /* param: negative slope */
  MX_NN_ACT_ELU,        /* param: alpha */
  MX_NN_ACT_CELU,       /* param: alpha */
  MX_NN_ACT_SELU,
  MX_NN_ACT_GELU,
  MX_NN_ACT_GELU_APPROX,
  MX_NN_ACT_GELU_FAST_APPROX,
  MX_NN_ACT_SILU,
  MX_NN_ACT_SIGMOID,
  MX_NN_ACT_LOG_SIGMOID,
  MX_NN_ACT_TANH,
  MX_NN_ACT_SOFTPLUS,
  MX_NN_ACT_SOFTSIGN,
  MX_NN_ACT_MISH,
  MX_NN_ACT_HARDSWISH,
  MX_NN_ACT_HARD_TANH,
} mx_nn_activation;
/* An activation module (MLX names: "ReLU", "GELU", "SiLU", ...). */
MX_API mx_nn_module *mx_nn_activation_new(mx_nn_activation kind, double param);
MX_API mx_nn_module *mx_nn_relu_new(void);
MX_API mx_nn_module *mx_nn_gelu_new(bool approx);
MX_API mx_nn_module *mx_nn_silu_new(void);
/* Applies an activation as a function. */
MX_API mx_array *mx_nn_activation_apply(mx_nn_activation kind, double param, mx_array *x);

/* ---- quantized layers (MLX affine format) ---------------------------------------
 * Parameters weight (uint32 packed), scales, biases [, bias]; the layers
 * are frozen at creation, as in MLX. */
MX_API mx_nn_module *mx_nn_quantized_linear_from_linear(mx_nn_module *linear, int group_size,
                                                        int bits);
MX_API mx_nn_module *mx_nn_quantized_embedding_from_embedding(mx_nn_module *embedding,
                                                              int group_size, int bits);
/* Quantization parameters of a QuantizedLinear/QuantizedEmbedding. */
MX_API int mx_nn_quantized_info(const mx_nn_module *m, int *group_size, int *bits);
/* Decides whether the module at `path` is quantized (return true) and may
 * change its group_size/bits (preset to mx_nn_quantize's arguments). */
typedef bool (*mx_nn_quantize_predicate)(void *ctx, const char *path, mx_nn_module *m,
                                         int *group_size, int *bits);
/* mlx.nn.quantize: replaces every leaf module that can be quantized
 * (Linear, Embedding: a vtable with to_quantized) and that the predicate
 * accepts (NULL: all, MLX's default) by its quantized version, in place.
 * A module accepted by the predicate that cannot be quantized, or whose
 * last dimension is not a multiple of group_size, is an error naming its
 * path (nothing is changed then). */
MX_API int mx_nn_quantize(mx_nn_module *model, int group_size, int bits,
                          mx_nn_quantize_predicate predicate, void *ctx);

/* ---- LoRA / DoRA (mlx-lm's tuner layers) ---------------------------------------- */
/* Wraps a Linear or QuantizedLinear (retained) as child "linear", with
 * lora_a (in, r) ~ U(-1/sqrt(in), 1/sqrt(in)), lora_b (r, out) zeros,
 * a Dropout(dropout) child, y = linear(x) + scale * (dropout(x) @ lora_a) @ lora_b. */
MX_API mx_nn_module *mx_nn_lora_linear_new(mx_nn_module *linear, int r, double scale,
                                           double dropout, mx_array *key);
/* DoRALinear: as LoRA plus a magnitude "m" = ||W||_2 per output row;
 * y = (m / stop_gradient(||W + scale lora_b.T lora_a.T||)) * lora(x) + bias. */
MX_API mx_nn_module *mx_nn_dora_linear_new(mx_nn_module *linear, int r, double scale,
                                           double dropout, mx_array *key);
/* A plain Linear with the adapter merged in (new reference); a quantized
 * base gives a QuantizedLinear again unless dequantize. */
MX_API mx_nn_module *mx_nn_lora_fuse(mx_nn_module *lora, bool dequantize);

/* ==== losses (mlx.nn.losses) ====================================================== */
typedef enum { MX_NN_NONE = 0, MX_NN_MEAN = 1, MX_NN_SUM = 2 } mx_nn_reduction;

typedef struct {
  int axis;                  /* class axis; 0 means -1 (the last) */
  double label_smoothing;    /* in [0, 1) */
  mx_nn_reduction reduction; /* NONE (MLX's default) */
  bool use_ignore_index;     /* targets == ignore_index contribute 0; MEAN */
  int64_t ignore_index;      /*   then averages over the other elements */
} mx_nn_ce_options;
/* Cross entropy of logits and targets: class indices (logits.ndim - 1
 * dims) or probabilities (same shape as logits). weights (may be NULL)
 * multiply the per-element loss. options NULL: defaults. */
MX_API mx_array *mx_nn_cross_entropy(mx_array *logits, mx_array *targets, mx_array *weights,
                                     const mx_nn_ce_options *options);
/* with_logits: inputs are logits (MLX default) else probabilities
 * (log clipped at -100). Reduction MLX default: MEAN. */
MX_API mx_array *mx_nn_binary_cross_entropy(mx_array *inputs, mx_array *targets,
                                            mx_array *weights, bool with_logits,
                                            mx_nn_reduction reduction);
MX_API mx_array *mx_nn_mse_loss(mx_array *predictions, mx_array *targets,
                                mx_nn_reduction reduction);
MX_API mx_array *mx_nn_l1_loss(mx_array *predictions, mx_array *targets,
                               mx_nn_reduction reduction);
/* 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (MLX: beta 1.0). */
MX_API mx_array *mx_nn_smooth_l1_loss(mx_array *predictions, mx_array *targets, double beta,
                                      mx_nn_reduction reduction);
/* -log_probs[target] along axis (axis 0 means -1). */
MX_API mx_array *mx_nn_nll_loss(mx_array *log_probs, mx_array *targets, int axis,
                                mx_nn_reduction reduction);
/* sum(exp(targets) * (targets - inputs), axis): both are log-probabilities. */
MX_API mx_array *mx_nn_kl_div_loss(mx_array *inputs, mx_array *targets, int axis,
                                   mx_nn_reduction reduction);

/* ==== initialisers (mlx.nn.init), explicit keys ==================================== */
MX_API mx_array *mx_nn_init_constant(const int64_t *shape, int ndim, mx_dtype dt, double value);
MX_API mx_array *mx_nn_init_normal(const int64_t *shape, int ndim, mx_dtype dt, double mean,
                                   double std, mx_array *key);
MX_API mx_array *mx_nn_init_uniform(const int64_t *shape, int ndim, mx_dtype dt, double low,
                                    double high, mx_array *key);
/* fan_in = shape[-1] * receptive, fan_out = shape[0] * receptive
 * (receptive = prod(shape[1:-1])), as MLX. */
MX_API mx_array *mx_nn_init_glorot_normal(const int64_t *shape, int ndim, mx_dtype dt,
                                          double gain, mx_array *key);
MX_API mx_array *mx_nn_init_glorot_uniform(const int64_t *shape, int ndim, mx_dtype dt,
                                           double gain, mx_array *key);
/* fan_out: use fan_out instead of fan_in. */
MX_API mx_array *mx_nn_init_he_normal(const int64_t *shape, int ndim, mx_dtype dt, bool fan_out,
                                      double gain, mx_array *key);
MX_API mx_array *mx_nn_init_he_uniform(const int64_t *shape, int ndim, mx_dtype dt,
                                       bool fan_out, double gain, mx_array *key);

#ifdef __cplusplus
}
#endif
#endif /* MXC_NN_H */
