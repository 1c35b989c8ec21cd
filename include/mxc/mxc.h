/*
 * mxc/mxc.h — the umbrella header: MLX's programming model in C.
 *
 *     #include <mxc/mxc.h>
 *
 *     mx_array *x = mx_random_normal((int64_t[]){4, 8}, 2, MX_FLOAT32, 0, 1, NULL);
 *     mx_array *w = mx_ones((int64_t[]){8, 2}, 2, MX_FLOAT32);
 *     mx_array *y = mx_matmul(x, w);        // lazy: a graph node
 *     if (mx_array_eval(y)) {               // computes x, w and y
 *       fprintf(stderr, "%s\n", mx_last_error());
 *     }
 *     mx_array_free(x); mx_array_free(w); mx_array_free(y);
 */
#ifndef MXC_MXC_H
#define MXC_MXC_H

#include "mxc/base.h"
#include "mxc/array.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "mxc/random.h"
#include "mxc/map.h"
#include "mxc/transforms.h"
#include "mxc/io.h"
#include "mxc/optim.h"
#include "mxc/nn.h"
#include "mxc/lm.h"
#include "mxc/lm_sample.h"
#include "mxc/hub.h"
#include "mxc/tokenizer.h"
#include "mxc/chat_template.h"
#include "mxc/train.h"
#include "mxc/tokenizer_train.h"
#include "mxc/lora.h"

#endif
