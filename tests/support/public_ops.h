/* public_ops.h — every public op of mxc/ops.h, mxc/random.h and the fast
 * ops, by the name its op-parity cases use. test_ops fails when one has no
 * case. Keep in sync with the headers. */
#ifndef MXC_PUBLIC_OPS_H
#define MXC_PUBLIC_OPS_H
static const char *const mx_public_ops[] = {
    /* creation */
    "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "linspace", "eye",
    "identity", "tri", "tril", "triu", "array_from_data", "array_from_data_nocopy",
    /* unary */
    "negative", "abs", "sign", "square", "sqrt", "rsqrt", "reciprocal", "exp", "expm1", "log",
    "log1p", "sin", "cos", "tanh", "sigmoid", "erf", "erfinv", "floor", "ceil", "round",
    "logical_not", "isnan", "isinf", "astype", "stop_gradient",
    /* binary / ternary */
    "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "equal", "not_equal",
    "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "where", "clip",
    /* reductions */
    "sum", "mean", "prod", "max", "min", "all", "any", "var", "std", "logsumexp", "argmax",
    "argmin", "softmax", "log_softmax", "cumsum",
    /* shape */
    "reshape", "flatten", "transpose", "swapaxes", "moveaxis", "expand_dims", "squeeze",
    "broadcast_to", "slice", "slice_update", "concatenate", "stack", "split", "pad", "tile",
    "repeat", "contiguous",
    /* indexing */
    "take", "take_flat", "take_along_axis", "put_along_axis", "scatter_add_axis", "gather_rows",
    /* linear algebra */
    "matmul", "addmm",
    /* sorting */
    "sort", "argsort", "topk", "partition", "argpartition",
    /* random */
    "random_key", "random_split", "random_bits", "random_uniform", "random_normal",
    "random_truncated_normal", "random_randint", "random_bernoulli", "random_categorical",
    "random_gumbel",
    /* quantization */
    "quantize", "dequantize", "quantized_matmul",
    /* fast */
    "rms_norm", "layer_norm", "rope", "scaled_dot_product_attention", "swiglu",
};
#endif
