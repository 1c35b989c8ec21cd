/* op_list.h — every primitive op, once. X(ENUM_SUFFIX, "name").
 * Generates mx__op_id (MX_OP_<X>) and mx__op_names. Each op's builder,
 * VJP and batching rule live in src/ops/<family>.c; its kernels in
 * src/backend/<backend>/. Public functions that are compositions (mean,
 * var, clip, stack, ...) have no entry here. */
#ifndef MXC_OP_LIST_H
#define MXC_OP_LIST_H

#define MX_OP_LIST(X)                                                       \
  /* creation */                                                            \
  X(FULL, "full")                                                           \
  X(ARANGE, "arange")                                                       \
  /* unary */                                                               \
  X(NEGATIVE, "negative")                                                   \
  X(ABS, "abs")                                                             \
  X(SIGN, "sign")                                                           \
  X(SQUARE, "square")                                                       \
  X(SQRT, "sqrt")                                                           \
  X(RSQRT, "rsqrt")                                                         \
  X(RECIPROCAL, "reciprocal")                                               \
  X(EXP, "exp")                                                             \
  X(EXPM1, "expm1")                                                         \
  X(LOG, "log")                                                             \
  X(LOG1P, "log1p")                                                         \
  X(SIN, "sin")                                                             \
  X(COS, "cos")                                                             \
  X(TANH, "tanh")                                                           \
  X(SIGMOID, "sigmoid")                                                     \
  X(ERF, "erf")                                                             \
  X(ERFINV, "erfinv")                                                       \
  X(FLOOR, "floor")                                                         \
  X(CEIL, "ceil")                                                           \
  X(ROUND, "round")                                                         \
  X(LOGICAL_NOT, "logical_not")                                             \
  X(ISNAN, "isnan")                                                         \
  X(ISINF, "isinf")                                                         \
  X(ASTYPE, "astype")                                                       \
  X(STOP_GRADIENT, "stop_gradient")                                         \
  /* binary */                                                              \
  X(ADD, "add")                                                             \
  X(SUBTRACT, "subtract")                                                   \
  X(MULTIPLY, "multiply")                                                   \
  X(DIVIDE, "divide")                                                       \
  X(POWER, "power")                                                         \
  X(MAXIMUM, "maximum")                                                     \
  X(MINIMUM, "minimum")                                                     \
  X(EQUAL, "equal")                                                         \
  X(NOT_EQUAL, "not_equal")                                                 \
  X(LESS, "less")                                                           \
  X(LESS_EQUAL, "less_equal")                                               \
  X(GREATER, "greater")                                                     \
  X(GREATER_EQUAL, "greater_equal")                                         \
  X(LOGICAL_AND, "logical_and")                                             \
  X(LOGICAL_OR, "logical_or")                                               \
  X(WHERE, "where")                                                         \
  /* reductions */                                                          \
  X(SUM, "sum")                                                             \
  X(PROD, "prod")                                                           \
  X(MAX, "max")                                                             \
  X(MIN, "min")                                                             \
  X(ALL, "all")                                                             \
  X(ANY, "any")                                                             \
  X(ARGMAX, "argmax")                                                       \
  X(ARGMIN, "argmin")                                                       \
  X(LOGSUMEXP, "logsumexp")                                                 \
  X(SOFTMAX, "softmax")                                                     \
  X(LOG_SOFTMAX, "log_softmax")                                             \
  X(CUMSUM, "cumsum")                                                       \
  /* shape (views where possible) */                                        \
  X(RESHAPE, "reshape")                                                     \
  X(TRANSPOSE, "transpose")                                                 \
  X(BROADCAST, "broadcast_to")                                              \
  X(SLICE, "slice")                                                         \
  X(SLICE_UPDATE, "slice_update")                                           \
  X(CONCATENATE, "concatenate")                                             \
  X(PAD, "pad")                                                             \
  X(COPY, "copy")                                                           \
  X(STORE_AT, "store_at")                                                   \
  /* indexing */                                                            \
  X(TAKE, "take")                                                           \
  X(TAKE_ALONG_AXIS, "take_along_axis")                                     \
  X(PUT_ALONG_AXIS, "put_along_axis")                                       \
  X(SCATTER_ADD_AXIS, "scatter_add_axis")                                   \
  /* linear algebra */                                                      \
  X(MATMUL, "matmul")                                                       \
  /* sorting */                                                             \
  X(SORT, "sort")                                                           \
  X(ARGSORT, "argsort")                                                     \
  X(PARTITION, "partition")                                                 \
  X(ARGPARTITION, "argpartition")                                           \
  /* random */                                                              \
  X(RANDOM_BITS, "random_bits")                                             \
  /* optimizers (fused update steps) */                                     \
  X(ADAM_UPDATE, "adam_update")                                             \
  X(SUM_SQUARES, "sum_squares")                                             \
  X(CAST_CONCAT, "cast_concat")                                             \
  /* fast LLM ops */                                                        \
  X(RMS_NORM, "rms_norm")                                                   \
  X(RMS_NORM_GRAD, "rms_norm_backward")                                     \
  X(LAYER_NORM, "layer_norm")                                               \
  X(ROPE, "rope")                                                           \
  X(SDPA, "scaled_dot_product_attention")                                   \
  X(SDPA_LSE, "sdpa_logsumexp")                                             \
  X(SDPA_BWD_Q, "sdpa_backward_q")                                          \
  X(SDPA_BWD_KV, "sdpa_backward_kv")                                        \
  X(SWIGLU, "swiglu")                                                       \
  X(SWIGLU_GRAD, "swiglu_backward")                                         \
  X(ADD_RMS_NORM, "add_rms_norm")                                           \
  X(ROPE_KV, "rope_kv")                                                     \
  X(ROPE_SDPA, "rope_sdpa")                                                 \
  X(SWIGLU_LINEAR, "swiglu_linear")                                         \
  X(ADD_NORM_LINEAR, "add_norm_linear")                                     \
  X(SOFTMAX_CE, "softmax_cross_entropy")                                    \
  X(SOFTMAX_CE_GRAD, "softmax_cross_entropy_backward")                      \
  X(ROW_DOT, "row_dot")                                                     \
  /* affine quantization (MLX format) */                                    \
  X(QUANTIZE_PACK, "quantize_pack")                                         \
  X(DEQUANTIZE, "dequantize")                                               \
  X(QUANTIZED_MATMUL, "quantized_matmul")                                   \
  /* transforms */                                                          \
  X(CUSTOM, "custom")

#endif
