/* trainer.c — the llama model for training, the loss, the optimizer step
 * and the training run with validation, metrics and checkpoints. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../model/lm_internal.h"
#include "ops/fast_params.h" /* mx__fast_softmax_ce */
#include "ops/optim_params.h" /* mx__optimizer_update_scaled */
#include "mxc/io.h"
#include "mxc/memory.h"
#include "mxc/ops.h"
#include "mxc/random.h"
#include "mxc/tokenizer.h"
#include "mxc/tokenizer_train.h"
#include "mxc/train.h"
#include "mxc/transforms.h"
#include "train_internal.h"

/* ---- model ------------------------------------------------------------------- */

int mx_train_llama_config(mx_lm_config *c, int64_t dim, int64_t layers, int64_t heads,
                          int64_t kv_heads, int64_t hidden, int64_t vocab, int64_t max_positions) {
  if (!c) return mx__set_error(MX_ERR_INVALID_ARG, "train config: c is NULL");
  if (dim < 1 || layers < 1 || heads < 1 || kv_heads < 1 || hidden < 1 || vocab < 1)
    return mx__set_error(MX_ERR_INVALID_ARG,
                         "train config: --dim, --layers, --heads, --kv-heads, --hidden must be >= 1");
  if (dim % heads)
    return mx__set_error(MX_ERR_INVALID_ARG, "train config: --dim %lld is not a multiple of --heads %lld",
                         (long long)dim, (long long)heads);
  if (heads % kv_heads)
    return mx__set_error(MX_ERR_INVALID_ARG,
                         "train config: --heads %lld is not a multiple of --kv-heads %lld",
                         (long long)heads, (long long)kv_heads);
  if ((dim / heads) % 2)
    return mx__set_error(MX_ERR_INVALID_ARG, "train config: the head dimension %lld must be even (RoPE)",
                         (long long)(dim / heads));
  memset(c, 0, sizeof *c);
  snprintf(c->model_type, sizeof c->model_type, "llama");
  c->hidden_size = dim;
  c->intermediate_size = hidden;
  c->num_hidden_layers = layers;
  c->num_attention_heads = heads;
  c->num_key_value_heads = kv_heads;
  c->head_dim = dim / heads;
  c->vocab_size = vocab;
  c->max_position_embeddings = max_positions;
  c->rms_norm_eps = 1e-5;
  c->rope_theta = 10000.0;
  c->tie_word_embeddings = true;
  c->rope_scaling = MX_LM_ROPE_DEFAULT;
  c->rope_factor = 1.0;
  c->bos_token_id = MX_TRAIN_BOS_ID;
  c->eos_token_ids[0] = MX_TRAIN_EOS_ID;
  c->num_eos_token_ids = 1;
  return MX_OK;
}

mx_nn_module *mx_train_llama_new(const mx_lm_config *c, uint64_t seed) {
  if (!c) {
    mx__set_error(MX_ERR_INVALID_ARG, "train: config is NULL");
    return NULL;
  }
  mx_random_seed(seed);
  mx_nn_module *m = mx__lm_build_llama(c);
  if (!m) return NULL;
  mx_map *p = NULL;
  int st = mx_nn_parameters(m, &p);
  if (!st) st = mx_map_eval(p);
  mx_map_free(p);
  if (st) {
    mx_nn_module_free(m);
    return NULL;
  }
  return m;
}

int mx_train_write_config(const mx_lm_config *c, const char *dir) {
  if (!c || !dir) return mx__set_error(MX_ERR_INVALID_ARG, "train: config or dir is NULL");
  cJSON *o = cJSON_CreateObject();
  cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
  cJSON_AddStringToObject(o, "model_type", "llama");
  cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
  cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
  cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->num_hidden_layers);
  cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->num_attention_heads);
  cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->num_key_value_heads);
  cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim);
  cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
  cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position_embeddings);
  cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
  cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
  cJSON_AddNullToObject(o, "rope_scaling");
  cJSON_AddStringToObject(o, "hidden_act", "silu");
  cJSON_AddBoolToObject(o, "attention_bias", false);
  cJSON_AddBoolToObject(o, "mlp_bias", false);
  cJSON_AddBoolToObject(o, "tie_word_embeddings", true);
  cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
  cJSON_AddNumberToObject(o, "eos_token_id", c->num_eos_token_ids ? c->eos_token_ids[0] : -1);
  cJSON_AddStringToObject(o, "torch_dtype", "float32");
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  if (!s) return mx__set_error(MX_ERR_OOM, "train: out of memory");
  int st = mx__train_write_text(dir, "config.json", s);
  free(s);
  return st;
}

/* ---- loss and step ------------------------------------------------------------ */

/* The mean cross entropy of logits (..., V) against targets (...), in
 * float32 whatever the logits' dtype (float64 for float64): one fused pass
 * over the logits forward and one backward (softmax_cross_entropy), not the
 * half-dozen float32 passes of the composition over a float32 copy. */
static mx_array *mean_token_loss(mx_array *logits, mx_array *targets) {
  mx_array *ce = logits ? mx__fast_softmax_ce(logits, targets) : NULL;
  mx_array *l = ce ? mx_mean(ce, NULL, 0, false) : NULL;
  mx_array_free(ce);
  return l;
}

int mx_train_lm_loss(void *payload, mx_nn_module *model, mx_array **in, int n, mx_list *out) {
  (void)payload;
  if (n < 2) return mx__set_error(MX_ERR_INVALID_ARG, "train loss: needs inputs and targets");
  mx_array *logits = mx_nn_forward(model, in[0]);
  if (n < 3 || !in[2]) {
    mx_array *l = mean_token_loss(logits, in[1]);
    mx_array_free(logits);
    return mx_list_push(out, l);
  }
  mx_array *ce = logits ? mx__fast_softmax_ce(logits, in[1]) : NULL;
  mx_array *mask = mx_astype(in[2], ce ? mx_array_dtype(ce) : MX_FLOAT32);
  mx_array *w = mx_multiply(ce, mask);
  mx_array *num = mx_sum(w, NULL, 0, false);
  mx_array *den = mx_sum(mask, NULL, 0, false);
  mx_array *l = mx_divide(num, den);
  mx_array_free(logits);
  mx_array_free(ce);
  mx_array_free(mask);
  mx_array_free(w);
  mx_array_free(num);
  mx_array_free(den);
  return mx_list_push(out, l);
}

int mx_train_mixed_loss(void *payload, mx_nn_module *model, mx_array **in, int n, mx_list *out) {
  const mx_train_mixed *mp = payload;
  if (!mp || !mp->fn) return mx__set_error(MX_ERR_INVALID_ARG, "train mixed loss: no inner loss");
  mx_map *master = NULL;
  int st = mx_nn_trainable_parameters(model, &master);
  mx_map *low = st ? NULL : mx_map_new();
  if (!st && !low) st = mx__set_error(MX_ERR_OOM, "train mixed loss: out of memory");
  for (int i = 0; !st && i < mx_map_size(master); i++) {
    mx_array *v = mx_map_value(master, i);
    mx_array *c = mx_dtype_is_float(mx_array_dtype(v)) ? mx_astype(v, mp->dtype)
                                                       : mx_array_retain(v);
    st = c ? mx_map_set(low, mx_map_key(master, i), c) : mx_last_status();
    mx_array_free(c);
  }
  if (!st) st = mx_nn_update(model, low, MX_NN_UPDATE_LOOSE); /* keys from the model itself */
  if (!st) {
    st = mp->fn(mp->payload, model, in, n, out);
    int rs = mx_nn_update(model, master, MX_NN_UPDATE_LOOSE); /* the float32 copies back */
    if (!st) st = rs;
  }
  mx_map_free(low);
  mx_map_free(master);
  return st;
}

int mx_train_eval_loss(mx_nn_module *model, mx_nn_loss_fn fn, void *payload, mx_array **inputs,
                       int ninputs, double *loss) {
  if (!model || !fn || !inputs || !loss)
    return mx__set_error(MX_ERR_INVALID_ARG, "train eval: bad arguments");
  mx_list out = MX_LIST_INIT;
  int st = fn(payload, model, inputs, ninputs, &out);
  if (!st && out.size < 1) st = mx__set_error(MX_ERR_INVALID_ARG, "train eval: no loss");
  if (!st) st = mx_array_item(out.items[0], loss);
  mx_list_clear(&out);
  return st;
}

/* MXC_TRAIN_FUSED_GRADS=0: gradients cast to float32 and clipped by
 * their own ops before the update (A/B) */
static bool fused_grads(void) {
  static int v = -1;
  return mx__env_on("MXC_TRAIN_FUSED_GRADS", &v);
}

/* MXC_TRAIN_CAST_CONCAT=0: each float32 master weight cast by its own op
 * inside the differentiated loss (A/B) */
static bool cast_concat_on(void) {
  const char *e = getenv("MXC_TRAIN_CAST_CONCAT"); /* read each step: tests set it */
  return !(e && !strcmp(e, "0"));
}

uint64_t mx__train_low_steps;

/* A mixed-precision loss's value and gradients with the model holding
 * 16-bit copies of its float32 master weights made by one op (cast_concat:
 * one launch, not one a weight; the copies are views of its result),
 * differentiated at those copies: the gradients come out 16-bit, with the
 * bits of the ones under the mixed loss's casts (which the step would take
 * from behind those casts anyway). */
static int low_value_and_grad(mx_nn_module *model, const mx_train_mixed *mp, mx_array **inputs,
                              int ninputs, mx_list *vals, mx_map *grads) {
  mx_map *master = NULL, *low = NULL;
  mx_array **src = NULL, *cat = NULL;
  int st = mx_nn_trainable_parameters(model, &master);
  const int n = st ? 0 : mx_map_size(master);
  int k = 0;
  if (!st) {
    low = mx_map_new();
    src = malloc(sizeof *src * (size_t)(n ? n : 1));
    if (!low || !src) st = mx__set_error(MX_ERR_OOM, "train step: out of memory");
  }
  for (int i = 0; !st && i < n; i++) {
    mx_array *v = mx_map_value(master, i);
    if (mx_dtype_is_float(mx_array_dtype(v)) && mx_array_dtype(v) != mp->dtype) src[k++] = v;
  }
  if (!st && k && !(cat = mx__cast_concat(src, k, mp->dtype))) st = mx_last_status();
  int64_t off = 0;
  for (int i = 0, j = 0; !st && i < n; i++) {
    mx_array *v = mx_map_value(master, i), *c;
    if (j < k && src[j] == v) {
      const int64_t sz = mx_array_size(v);
      mx_array *part = mx_slice_axis(cat, 0, off, off + sz, 1);
      c = part ? mx_reshape(part, mx_array_shape(v), mx_array_ndim(v)) : NULL;
      mx_array_free(part);
      off += sz;
      j++;
    } else {
      c = mx_array_retain(v);
    }
    st = c ? mx_map_set(low, mx_map_key(master, i), c) : mx_last_status();
    mx_array_free(c);
  }
  mx_array_free(cat);
  if (!st) st = mx_nn_update(model, low, MX_NN_UPDATE_LOOSE);
  if (!st) {
    __atomic_add_fetch(&mx__train_low_steps, 1, __ATOMIC_RELAXED);
    st = mx_nn_value_and_grad(model, mp->fn, mp->payload, inputs, ninputs, vals, grads);
    int rs = mx_nn_update(model, master, MX_NN_UPDATE_LOOSE); /* the float32 masters back */
    if (!st) st = rs;
  }
  free(src);
  mx_map_free(low);
  mx_map_free(master);
  return st;
}

int mx_train_step_async(mx_nn_module *model, mx_optimizer *opt, mx_nn_loss_fn fn, void *payload,
                        mx_array **inputs, int ninputs, int accum, double grad_clip,
                        mx_array **loss_out, mx_array **norm_out) {
  if (loss_out) *loss_out = NULL;
  if (norm_out) *norm_out = NULL;
  if (!model || !opt || !fn || !inputs || ninputs < 1 || accum < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "train step: bad arguments");
  mx_map *grads = mx_map_new(), *acc = accum > 1 ? mx_map_new() : NULL, *params = NULL;
  mx_array *norm = NULL, *loss = NULL;
  int st = grads && (accum == 1 || acc) ? MX_OK : mx__set_error(MX_ERR_OOM, "train step: out of memory");
  for (int j = 0; j < accum && !st; j++) {
    mx_list vals = MX_LIST_INIT;
    const mx_train_mixed *mp = fn == mx_train_mixed_loss ? payload : NULL;
    if (mp && mp->fn && accum == 1 && fused_grads() && cast_concat_on() &&
        (mp->dtype == MX_BFLOAT16 || mp->dtype == MX_FLOAT16))
      st = low_value_and_grad(model, mp, inputs, ninputs, &vals, grads);
    else
      st = mx_nn_value_and_grad(model, fn, payload, inputs + (size_t)j * ninputs, ninputs, &vals,
                                grads);
    if (!st && vals.size < 1) st = mx__set_error(MX_ERR_INVALID_ARG, "train step: no loss");
    /* mixed precision: a 16-bit gradient reaches its float32 parameter
     * through a cast (the VJP of the loss's cast); with one micro-batch the
     * optimizer takes the 16-bit gradient as it is (Adam's kernel reads
     * it exactly), so the cast never runs */
    for (int i = 0; !st && accum == 1 && fused_grads() && i < mx_map_size(grads); i++) {
      mx_array *src = mx__lone_cast_source(mx_map_value(grads, i));
      if (src) st = mx_map_set(grads, mx_map_key(grads, i), src);
    }
    if (!st) {
      int ng = mx_map_size(grads);
      mx_array **all = malloc((size_t)(ng + 1) * sizeof *all);
      if (!all) st = mx__set_error(MX_ERR_OOM, "train step: out of memory");
      else {
        all[0] = vals.items[0];
        for (int i = 0; i < ng; i++) all[i + 1] = mx_map_value(grads, i);
        st = mx_eval(all, ng + 1);
        free(all);
      }
    }
    /* the micro-batches' losses summed on the device: nothing here waits */
    if (!st) {
      mx_array *l = mx_astype(vals.items[0], MX_FLOAT32);
      mx_array *s = l && loss ? mx_add(loss, l) : (l ? mx_array_retain(l) : NULL);
      mx_array_free(l);
      mx_array_free(loss);
      loss = s;
      if (!loss) st = mx_last_status();
    }
    mx_list_clear(&vals);
    if (!st && acc) {
      st = mx_grads_accumulate(acc, grads);
      if (!st) st = mx_map_eval(acc);
    }
  }
  mx_map *g = acc ? acc : grads;
  if (!st && acc) st = mx_grads_scale(g, 1.0 / accum);
  if (!st && accum > 1) {
    mx_array *m = mx_multiply_scalar(loss, 1.0 / accum);
    mx_array_free(loss);
    if (!(loss = m)) st = mx_last_status();
  }
  /* clipping as the optimizer's gradient scale: Adam's kernel applies it,
   * no pass over the gradients */
  mx_array *factor = NULL;
  const double clip = grad_clip > 0 ? grad_clip : 1e300;
  if (!st) st = fused_grads() ? mx__grad_clip_factor(g, clip, &norm, &factor)
                              : mx_clip_grad_norm(g, clip, &norm);
  if (!st) st = mx_nn_trainable_parameters(model, &params);
  if (!st) st = mx__optimizer_update_scaled(opt, params, g, factor);
  mx_array_free(factor);
  if (!st) st = mx_optimizer_eval(opt, params);
  if (!st) st = mx_nn_update(model, params, MX_NN_UPDATE_PARTIAL);
  /* the loss and the norm start for the host now (queued after the update:
   * reading them waits for this step only, not for work queued later) */
  if (!st) {
    mx_array *both[2] = {loss, norm};
    st = mx_async_eval(both, 2);
  }
  if (!st && loss_out) {
    *loss_out = loss;
    loss = NULL;
  }
  if (!st && norm_out) {
    *norm_out = norm;
    norm = NULL;
  }
  mx_array_free(loss);
  mx_array_free(norm);
  mx_map_free(params);
  mx_map_free(grads);
  mx_map_free(acc);
  return st;
}

int mx_train_step(mx_nn_module *model, mx_optimizer *opt, mx_nn_loss_fn fn, void *payload,
                  mx_array **inputs, int ninputs, int accum, double grad_clip,
                  mx_train_step_stats *stats) {
  mx_array *loss = NULL, *norm = NULL;
  int st = mx_train_step_async(model, opt, fn, payload, inputs, ninputs, accum, grad_clip, &loss,
                               &norm);
  double l = 0, gn = 0;
  if (!st) st = mx_array_item(loss, &l);
  if (!st) st = mx_array_item(norm, &gn);
  if (!st && stats) {
    stats->loss = l;
    stats->grad_norm = gn;
  }
  mx_array_free(loss);
  mx_array_free(norm);
  return st;
}

/* ---- gradient checkpointing ------------------------------------------------------ */

/* One decoder layer as a closure of (h, its parameters...): the parameters
 * are inputs so that the checkpoint's recomputation differentiates them. */
static int layer_apply(void *payload, mx_array **in, int n, mx_list *out) {
  mx_nn_module *layer = payload;
  mx_map *p = NULL;
  int st = mx_nn_trainable_parameters(layer, &p);
  if (!st && mx_map_size(p) != n - 1)
    st = mx__set_error(MX_ERR_INTERNAL, "train checkpoint: %d inputs for %d parameters", n - 1,
                       mx_map_size(p));
  for (int i = 0; i < n - 1 && !st; i++) st = mx_map_set(p, mx_map_key(p, i), in[i + 1]);
  if (!st) st = mx_nn_update(layer, p, MX_NN_UPDATE_PARTIAL);
  mx_map_free(p);
  if (st) return st;
  mx_array *y = mx_nn_forward(layer, in[0]);
  return y ? mx_list_push(out, y) : mx_last_status();
}

static mx_array *checkpointed_layer(mx_nn_module *layer, mx_array *h) {
  mx_map *p = NULL;
  if (mx_nn_trainable_parameters(layer, &p)) return NULL;
  int np = mx_map_size(p);
  mx_array **in = malloc((size_t)(np + 1) * sizeof *in);
  mx_closure *f = mx_closure_new(layer_apply, layer, NULL);
  mx_closure *ck = f ? mx_checkpoint(f) : NULL;
  mx_array *y = NULL;
  if (in && ck) {
    in[0] = h;
    for (int i = 0; i < np; i++) in[i + 1] = mx_map_value(p, i);
    mx_list out = MX_LIST_INIT;
    if (!mx_closure_apply(ck, in, np + 1, &out) && out.size == 1) y = mx_array_retain(out.items[0]);
    mx_list_clear(&out);
  } else if (!in) {
    mx__set_error(MX_ERR_OOM, "train checkpoint: out of memory");
  }
  mx_closure_free(ck);
  mx_closure_free(f);
  free(in);
  mx_map_free(p);
  return y;
}

/* mx_train_lm_loss with each layer of model.layers checkpointed. */
int mx_train_lm_loss_checkpointed(void *payload, mx_nn_module *model, mx_array **in, int n,
                                  mx_list *out) {
  (void)payload;
  if (n < 2) return mx__set_error(MX_ERR_INVALID_ARG, "train loss: needs inputs and targets");
  mx_nn_module *inner = mx_nn_child(model, "model");
  mx_nn_module *emb = inner ? mx_nn_child(inner, "embed_tokens") : NULL;
  mx_nn_module *norm = inner ? mx_nn_child(inner, "norm") : NULL;
  int nl = inner ? mx_nn_list_size(inner, "layers") : -1;
  if (!emb || !norm || nl < 0)
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "train: gradient checkpointing needs a model of mx_train_llama_new");
  mx_array *h = mx_nn_forward(emb, in[0]);
  for (int i = 0; i < nl && h; i++) {
    mx_array *next = checkpointed_layer(mx_nn_list_item(inner, "layers", i), h);
    mx_array_free(h);
    h = next;
  }
  mx_array *hn = h ? mx_nn_forward(norm, h) : NULL;
  mx_array_free(h);
  mx_array *logits = NULL;
  if (hn) {
    mx_nn_module *head = mx_nn_child(model, "lm_head");
    logits = head ? mx_nn_forward(head, hn) : mx_nn_embedding_as_linear(emb, hn);
  }
  mx_array_free(hn);
  if (!logits) return mx_last_status();
  mx_array *l = mean_token_loss(logits, in[1]);
  mx_array_free(logits);
  return mx_list_push(out, l);
}

/* ---- memory budget ------------------------------------------------------------------ */

int mx_train_measure_step_memory(mx_nn_module *model, int64_t batch, int64_t seq, bool checkpoint,
                                 size_t *bytes) {
  if (!model || batch < 1 || seq < 1 || !bytes)
    return mx__set_error(MX_ERR_INVALID_ARG, "train measure: bad arguments");
  int64_t shape[2] = {batch, seq};
  mx_array *xy[2] = {mx_zeros(shape, 2, MX_INT32), mx_zeros(shape, 2, MX_INT32)};
  mx_map *g = mx_map_new();
  mx_list vals = MX_LIST_INIT;
  int st = xy[0] && xy[1] && g ? MX_OK : mx_last_status();
  if (!st) st = mx_eval(xy, 2);
  mx_clear_cache();
  mx_reset_peak_memory();
  if (!st)
    st = mx_nn_value_and_grad(model, checkpoint ? mx_train_lm_loss_checkpointed : mx_train_lm_loss,
                              NULL, xy, 2, &vals, g);
  if (!st) {
    int ng = mx_map_size(g);
    mx_array **all = malloc((size_t)(ng + 1) * sizeof *all);
    if (!all) st = mx__set_error(MX_ERR_OOM, "train measure: out of memory");
    else {
      all[0] = vals.items[0];
      for (int i = 0; i < ng; i++) all[i + 1] = mx_map_value(g, i);
      st = mx_eval(all, ng + 1);
      free(all);
    }
  }
  *bytes = mx_get_peak_memory();
  mx_list_clear(&vals);
  mx_map_free(g);
  mx_array_free(xy[0]);
  mx_array_free(xy[1]);
  mx_clear_cache();
  return st;
}

typedef struct {
  size_t base, params; /* active bytes before, trainable parameter bytes */
  size_t m1, m2;       /* measured peaks for 1 and 2 rows */
} mem_probe;

static int probe(mx_nn_module *model, const mx_train_options *o, bool checkpoint, mem_probe *p) {
  mx_clear_cache();
  p->base = mx_get_active_memory();
  p->params = (size_t)mx_nn_num_parameters(model, true) * sizeof(float);
  int st = mx_train_measure_step_memory(model, 1, o->seq, checkpoint, &p->m1);
  p->m2 = p->m1;
  if (!st && o->batch > 1) st = mx_train_measure_step_memory(model, 2, o->seq, checkpoint, &p->m2);
  return st;
}

/* forward + backward (linear in the rows) + AdamW state (2P) or the
 * update's temporaries (about 6P over the base), + the accumulator and its
 * update (2P) when micro-batches are summed; 2% + 256 KiB of margin. */
static size_t estimate(const mem_probe *p, int64_t micro, int64_t accum_total) {
  size_t slope = p->m2 > p->m1 ? p->m2 - p->m1 : 0;
  size_t vg = p->m1 + (size_t)(micro - 1) * slope;
  size_t a = vg + 2 * p->params, b = p->base + 6 * p->params;
  size_t e = (a > b ? a : b) + (accum_total > 1 ? 2 * p->params : 0);
  return e + e / 50 + (256u << 10);
}

int mx_train_estimate_step_memory(mx_nn_module *model, const mx_train_options *o, int64_t micro,
                                  bool checkpoint, size_t *bytes) {
  if (!model || !o || !bytes || micro < 1 || o->batch < 1 || o->seq < 1 || micro > o->batch)
    return mx__set_error(MX_ERR_INVALID_ARG, "train estimate: bad arguments");
  mem_probe p;
  int st = probe(model, o, checkpoint, &p);
  if (!st) *bytes = estimate(&p, micro, o->grad_accum * (o->batch / micro));
  return st;
}

int mx_train_plan_memory(mx_nn_module *model, const mx_train_options *o, mx_train_memory_plan *plan) {
  if (!model || !o || !plan || o->batch < 1 || o->grad_accum < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "train plan: bad arguments");
  size_t limit = o->memory_limit ? o->memory_limit : SIZE_MAX;
  mem_probe full, ck;
  int st = probe(model, o, false, &full);
  if (st) return st;
  *plan = (mx_train_memory_plan){MX_TRAIN_PLAN_FULL, o->batch, o->grad_accum, false,
                                 estimate(&full, o->batch, o->grad_accum), 0};
  plan->full_bytes = plan->peak_bytes;
  if (!o->grad_checkpoint) {
    for (int64_t b = o->batch; b >= 1; b--) {
      if (o->batch % b) continue;
      size_t e = estimate(&full, b, o->grad_accum * (o->batch / b));
      if (e <= limit) {
        plan->kind = b == o->batch ? MX_TRAIN_PLAN_FULL : MX_TRAIN_PLAN_ACCUMULATE;
        plan->micro_batch = b;
        plan->grad_accum = o->grad_accum * (o->batch / b);
        plan->peak_bytes = e;
        return MX_OK;
      }
    }
  }
  if ((st = probe(model, o, true, &ck))) return st;
  for (int64_t b = o->batch; b >= 1; b--) {
    if (o->batch % b) continue;
    size_t e = estimate(&ck, b, o->grad_accum * (o->batch / b));
    if (e <= limit) {
      plan->kind = MX_TRAIN_PLAN_CHECKPOINT;
      plan->micro_batch = b;
      plan->grad_accum = o->grad_accum * (o->batch / b);
      plan->checkpoint = true;
      plan->peak_bytes = e;
      return MX_OK;
    }
  }
  size_t need = estimate(&ck, 1, o->grad_accum * o->batch);
  return mx__set_error(MX_ERR_OOM,
                       "train: --memory-limit %zu bytes (%.1f MB) is too small: a step needs about "
                       "%zu bytes (%.1f MB) even with micro-batch 1 and gradient checkpointing "
                       "(the full batch of %lld: about %zu bytes); lower --batch/--seq or the model size",
                       limit, (double)limit / 1e6, need, (double)need / 1e6, (long long)o->batch,
                       plan->full_bytes);
}

int mx_parse_bytes(const char *s, size_t *bytes) {
  if (!s || !bytes) return mx__set_error(MX_ERR_INVALID_ARG, "parse bytes: NULL argument");
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || !(v >= 0) || !isfinite(v))
    return mx__set_error(MX_ERR_INVALID_ARG, "'%s' is not a size (e.g. 2GB, 512MiB, 1000000)", s);
  while (*end == ' ') end++;
  static const struct {
    const char *suffix;
    double mult;
  } units[] = {{"", 1},       {"B", 1},       {"K", 1e3},         {"KB", 1e3},         {"KIB", 1024.0},
               {"M", 1e6},    {"MB", 1e6},    {"MIB", 1048576.0}, {"G", 1e9},          {"GB", 1e9},
               {"GIB", 1073741824.0},         {"T", 1e12},        {"TB", 1e12},        {"TIB", 1099511627776.0}};
  char up[8];
  size_t k = 0;
  for (; end[k] && k < sizeof up - 1; k++) up[k] = (char)(end[k] >= 'a' && end[k] <= 'z' ? end[k] - 32 : end[k]);
  up[k] = 0;
  for (size_t i = 0; i < sizeof units / sizeof *units && !end[k]; i++)
    if (!strcmp(up, units[i].suffix)) {
      double b = v * units[i].mult;
      if (b >= 1.8e19) break;
      *bytes = (size_t)b;
      return MX_OK;
    }
  return mx__set_error(MX_ERR_INVALID_ARG, "'%s' is not a size (e.g. 2GB, 512MiB, 1000000)", s);
}

/* ---- the run -------------------------------------------------------------------- */

int mx_train_check_options(const mx_train_options *o) {
  if (!o) return mx__set_error(MX_ERR_INVALID_ARG, "train: options are NULL");
  if (!o->data_path || !*o->data_path)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --data FILE.txt is required");
  if (!o->out_dir || !*o->out_dir)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --out DIR is required");
#define POS(f, name) \
  if (o->f < 1) return mx__set_error(MX_ERR_INVALID_ARG, "train: " name " must be >= 1, got %lld", (long long)o->f);
  POS(seq, "--seq") POS(batch, "--batch") POS(iters, "--iters") POS(grad_accum, "--grad-accum")
  POS(eval_every, "--eval-every") POS(save_every, "--save-every") POS(val_batches, "--val-batches")
  POS(log_every, "--log-every")
#undef POS
  if (o->warmup < 0) return mx__set_error(MX_ERR_INVALID_ARG, "train: --warmup must be >= 0");
  if (!(o->lr > 0) || !isfinite(o->lr))
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --lr must be > 0, got %g", o->lr);
  if (!(o->min_lr >= 0) || o->min_lr > o->lr)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --min-lr must be in [0, --lr], got %g", o->min_lr);
  if (!(o->weight_decay >= 0)) return mx__set_error(MX_ERR_INVALID_ARG, "train: --weight-decay must be >= 0");
  if (o->compute_dtype != MX_BOOL && o->compute_dtype != MX_FLOAT32 &&
      o->compute_dtype != MX_BFLOAT16 && o->compute_dtype != MX_FLOAT16)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --dtype must be float32, bfloat16 or float16");
  if (!(o->grad_clip >= 0)) return mx__set_error(MX_ERR_INVALID_ARG, "train: --grad-clip must be >= 0 (0: off)");
  if (!(o->val_frac >= 0 && o->val_frac < 1))
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --val-frac must be in [0, 1), got %g", o->val_frac);
  if (o->tokenizer_dir && o->vocab_size > 0)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: give either --tokenizer DIR or --vocab-size N, not both");
  if (o->vocab_size < 0 || (o->vocab_size > 0 && o->vocab_size < MX_TRAIN_BYTE_VOCAB))
    return mx__set_error(MX_ERR_INVALID_ARG,
                         "train: --vocab-size must be >= %d (256 bytes + <|bos|>, <|eos|>), got %lld",
                         MX_TRAIN_BYTE_VOCAB, (long long)o->vocab_size);
  if (o->vocab_multiple < 0 || o->vocab_multiple > 4096)
    return mx__set_error(MX_ERR_INVALID_ARG, "train: --pad-vocab must be in [0, 4096] (0, 1: none), got %lld",
                         (long long)o->vocab_multiple);
  mx_lm_config c;
  return mx_train_llama_config(&c, o->dim, o->layers, o->heads, o->kv_heads, o->hidden,
                               MX_TRAIN_BYTE_VOCAB, o->seq);
}

static double now_sec(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static void remove_checkpoint_dir(const char *d) {
  static const char *const files[] = {"model.safetensors", "optimizer.safetensors", "state.json"};
  char p[4200];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(p, sizeof p, "%s/%s", d, files[i]);
    remove(p);
  }
  rmdir(d);
}

/* dir/checkpoint/{model,optimizer}.safetensors + state.json, replaced as a
 * whole (written to checkpoint.tmp, then renamed), and dir/model.safetensors. */
static int save_checkpoint(const mx_train_options *o, mx_nn_module *model, mx_optimizer *opt,
                           int64_t step) {
  char tmp[4096], fin[4096], old[4096], p[4200], q[4200];
  snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", o->out_dir);
  snprintf(fin, sizeof fin, "%s/checkpoint", o->out_dir);
  snprintf(old, sizeof old, "%s/checkpoint.old", o->out_dir);
  remove_checkpoint_dir(tmp);
  if (mkdir(tmp, 0777) && errno != EEXIST)
    return mx__set_error(MX_ERR_IO, "train: cannot create %s: %s", tmp, strerror(errno));
  snprintf(p, sizeof p, "%s/model.safetensors", tmp);
  int st = mx_nn_save_weights(model, p);
  snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
  if (!st) st = mx_save_safetensors(p, mx_optimizer_state(opt), NULL);
  if (!st) {
    char js[512];
    snprintf(js, sizeof js,
             "{\"step\": %lld, \"seed\": %llu, \"data_position\": %lld, \"dim\": %lld, "
             "\"layers\": %lld, \"seq\": %lld, \"batch\": %lld, \"grad_accum\": %lld}\n",
             (long long)step, (unsigned long long)o->seed, (long long)step, (long long)o->dim,
             (long long)o->layers, (long long)o->seq, (long long)o->batch,
             (long long)o->grad_accum);
    st = mx__train_write_text(tmp, "state.json", js);
  }
  if (st) {
    remove_checkpoint_dir(tmp);
    return st;
  }
  remove_checkpoint_dir(old);
  if (is_dir(fin) && rename(fin, old))
    return mx__set_error(MX_ERR_IO, "train: cannot replace %s: %s", fin, strerror(errno));
  if (rename(tmp, fin)) return mx__set_error(MX_ERR_IO, "train: cannot rename %s: %s", tmp, strerror(errno));
  remove_checkpoint_dir(old);
  /* the exported weights */
  snprintf(p, sizeof p, "%s/.model.tmp.safetensors", o->out_dir);
  snprintf(q, sizeof q, "%s/model.safetensors", o->out_dir);
  st = mx_nn_save_weights(model, p);
  if (!st && rename(p, q)) st = mx__set_error(MX_ERR_IO, "train: cannot write %s: %s", q, strerror(errno));
  if (st) remove(p);
  return st;
}

static int load_checkpoint(const mx_train_options *o, mx_nn_module *model, mx_optimizer *opt,
                           int64_t *step) {
  char p[4200];
  snprintf(p, sizeof p, "%s/checkpoint/state.json", o->out_dir);
  size_t len;
  char *js = mx__lm_read_file(p, &len);
  if (!js)
    return mx__set_error(MX_ERR_NOT_FOUND,
                         "train: --resume: no checkpoint in %s/checkpoint (state.json missing)",
                         o->out_dir);
  cJSON *j = cJSON_Parse(js);
  free(js);
  const cJSON *s = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
  const cJSON *sd = j ? cJSON_GetObjectItemCaseSensitive(j, "seed") : NULL;
  const cJSON *sq = j ? cJSON_GetObjectItemCaseSensitive(j, "seq") : NULL;
  const cJSON *bt = j ? cJSON_GetObjectItemCaseSensitive(j, "batch") : NULL;
  int st = MX_OK;
  if (!cJSON_IsNumber(s) || s->valuedouble < 0)
    st = mx__set_error(MX_ERR_FORMAT, "train: %s: no valid \"step\"", p);
  else if ((cJSON_IsNumber(sd) && (uint64_t)sd->valuedouble != o->seed) ||
           (cJSON_IsNumber(sq) && (int64_t)sq->valuedouble != o->seq) ||
           (cJSON_IsNumber(bt) && (int64_t)bt->valuedouble != o->batch))
    st = mx__set_error(MX_ERR_INVALID_ARG,
                       "train: --resume: the checkpoint was made with other --seed/--seq/--batch "
                       "(%s)", p);
  else
    *step = (int64_t)s->valuedouble;
  cJSON_Delete(j);
  if (st) return st;
  snprintf(p, sizeof p, "%s/checkpoint/model.safetensors", o->out_dir);
  if ((st = mx_nn_load_weights(model, p, true))) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mx_last_error());
    return mx__set_error(st, "train: --resume: %s (other --dim/--layers/...?)", msg);
  }
  snprintf(p, sizeof p, "%s/checkpoint/optimizer.safetensors", o->out_dir);
  mx_map *state = NULL;
  if ((st = mx_load(p, &state, NULL))) return st;
  st = mx_optimizer_load_state(opt, state);
  mx_map_free(state);
  if (!st && mx_optimizer_step(opt) != *step)
    st = mx__set_error(MX_ERR_FORMAT, "train: --resume: optimizer step %lld != checkpoint step %lld",
                       (long long)mx_optimizer_step(opt), (long long)*step);
  return st;
}

/* Rows [k * mb, (k + 1) * mb) of a (batch, seq) batch, for each k: the
 * micro-batches of a memory plan (the same rows as the full batch). */
static int split_rows(mx_array *x, mx_array *y, int64_t split, int64_t mb, mx_array **dst) {
  for (int64_t k = 0; k < split; k++) {
    if (split == 1) {
      dst[0] = mx_array_retain(x);
      dst[1] = mx_array_retain(y);
    } else {
      dst[2 * k] = mx_slice_axis(x, 0, k * mb, (k + 1) * mb, 1);
      dst[2 * k + 1] = mx_slice_axis(y, 0, k * mb, (k + 1) * mb, 1);
    }
    if (!dst[2 * k] || !dst[2 * k + 1]) return mx_last_status();
  }
  return MX_OK;
}

static int validate(const mx_train_options *o, const mx_train_data *d, mx_nn_module *model,
                    int64_t mb, double *loss) {
  double total = 0;
  int64_t nb = o->val_batches, split = o->batch / mb;
  int st = MX_OK;
  for (int64_t i = 0; i < nb && !st; i++) {
    mx_array *xy[2] = {NULL, NULL};
    st = mx_train_data_batch(d, true, o->seed, i, 0, o->batch, o->seq, &xy[0], &xy[1]);
    for (int64_t k = 0; k < split && !st; k++) {
      mx_array *part[2] = {NULL, NULL};
      part[0] = split > 1 ? mx_slice_axis(xy[0], 0, k * mb, (k + 1) * mb, 1) : mx_array_retain(xy[0]);
      part[1] = split > 1 ? mx_slice_axis(xy[1], 0, k * mb, (k + 1) * mb, 1) : mx_array_retain(xy[1]);
      if (!part[0] || !part[1]) st = mx_last_status();
      double l = 0;
      mx_train_mixed mixed = {mx_train_lm_loss, NULL, o->compute_dtype};
      bool low = o->compute_dtype == MX_BFLOAT16 || o->compute_dtype == MX_FLOAT16;
      if (!st)
        st = mx_train_eval_loss(model, low ? mx_train_mixed_loss : mx_train_lm_loss,
                                low ? &mixed : NULL, part, 2, &l);
      total += l / (double)split;
      mx_array_free(part[0]);
      mx_array_free(part[1]);
    }
    mx_array_free(xy[0]);
    mx_array_free(xy[1]);
  }
  *loss = total / (double)nb;
  return st;
}

/* The corpus as token ids with the tokenizer of o (written to out_dir). */
static int prepare_tokens(const mx_train_options *o, mx_train_data **d, int64_t *vocab,
                          int32_t *bos, int32_t *eos) {
  *vocab = MX_TRAIN_BYTE_VOCAB;
  *bos = MX_TRAIN_BOS_ID;
  *eos = MX_TRAIN_EOS_ID;
  if (!o->tokenizer_dir && o->vocab_size <= 0) {
    int st = mx_train_write_byte_tokenizer(o->out_dir);
    if (st) return st;
    *d = mx_train_data_load(o->data_path, o->val_frac, o->seq);
    return *d ? MX_OK : mx_last_status();
  }
  int st = MX_OK;
  mx_tokenizer *tok = NULL;
  char *text = NULL, *js = NULL, *cfg = NULL;
  int32_t *ids = NULL;
  size_t len = 0, n = 0, jlen = 0, clen = 0;
  if (o->vocab_size > 0) {
    static const char *const specials[] = {"<|bos|>", "<|eos|>"};
    mx_bpe_train_options bo = MX_BPE_TRAIN_DEFAULTS;
    bo.vocab_size = o->vocab_size;
    bo.special_tokens = specials;
    bo.num_special_tokens = 2;
    mx_bpe_model *m = mx_bpe_train_file(o->data_path, &bo);
    st = m ? mx_bpe_model_save(m, o->out_dir) : mx_last_status();
    mx_bpe_model_free(m);
    if (!st && !(tok = mx_tokenizer_load(o->out_dir))) st = mx_last_status();
  } else {
    char p[4200];
    struct stat sb;
    bool dir = stat(o->tokenizer_dir, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (dir) snprintf(p, sizeof p, "%s/tokenizer.json", o->tokenizer_dir);
    else snprintf(p, sizeof p, "%s", o->tokenizer_dir);
    if (!(js = mx__lm_read_file(p, &jlen))) {
      st = mx__set_error(MX_ERR_NOT_FOUND, "train: --tokenizer: cannot read %s", p);
    } else {
      if (dir) snprintf(p, sizeof p, "%s/tokenizer_config.json", o->tokenizer_dir);
      else {
        const char *slash = strrchr(o->tokenizer_dir, '/');
        snprintf(p, sizeof p, "%.*stokenizer_config.json",
                 slash ? (int)(slash - o->tokenizer_dir + 1) : 0, o->tokenizer_dir);
      }
      cfg = mx__lm_read_file(p, &clen);
      tok = mx_tokenizer_from_json(js, jlen, cfg, clen);
      if (!tok) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mx_last_error());
        st = mx__set_error(mx_last_status(), "train: --tokenizer %s: %s", o->tokenizer_dir, msg);
      }
    }
    if (!st) st = mx__train_write_text(o->out_dir, "tokenizer.json", js);
    if (!st && cfg) st = mx__train_write_text(o->out_dir, "tokenizer_config.json", cfg);
  }
  if (!st && !(text = mx__lm_read_file(o->data_path, &len)))
    st = mx__set_error(MX_ERR_IO, "train: cannot read --data %s", o->data_path);
  if (!st) st = mx_tokenizer_encode(tok, text, len, false, &ids, &n);
  if (!st && !(*d = mx_train_data_from_tokens(ids, (int64_t)n, o->val_frac, o->seq))) st = mx_last_status();
  if (!st) {
    *vocab = (int64_t)mx_tokenizer_vocab_size(tok);
    *bos = mx_tokenizer_bos_id(tok);
    *eos = mx_tokenizer_eos_id(tok);
  }
  free(ids);
  free(text);
  free(js);
  free(cfg);
  mx_tokenizer_free(tok);
  return st;
}

/* ---- the step loop's log ------------------------------------------------------------
 * A step's loss and gradient norm are read after the next step is queued
 * (MXC_TRAIN_PIPELINE=0: right away), so the device does not idle while
 * the host builds a step; the log line and the event of step n come when
 * step n + 1 is queued, or at once before a validation, a checkpoint and
 * the last step. */
static bool train_pipeline(void) {
  const char *e = getenv("MXC_TRAIN_PIPELINE"); /* read each run: tests set it */
  return !(e && !strcmp(e, "0"));
}

typedef struct {
  mx_array *loss, *norm; /* 0-d float32, on their way to the host */
  double lr;
  int64_t step;
  void *mark; /* GPU: a timing mark queued after the step */
} step_pending;

typedef struct {
  const mx_train_options *o;
  FILE *metrics;
  mx_train_event_fn on_event;
  void *ctx;
  double t0;
  int64_t start;
  double tokens_per_step;
  double log_loss;
  int64_t log_n;
  bool stop;         /* the callback asked to stop */
  /* GPU: the device's own clock times the steps (from m0, queued at t0 on
   * an idle device to each step's mark): a step reported late, after the
   * next one was queued, still gets the time it finished */
  const mx__device_ops *dops;
  void *m0;
  mx_train_event ev; /* the last step's event */
} step_log;

/* Reads p's values (waiting for that step only), writes the metrics line
 * and calls the callback; empties p. */
static int step_report(step_log *lg, step_pending *p) {
  double loss = 0, gn = 0;
  int st = mx_array_item(p->loss, &loss);
  if (!st) st = mx_array_item(p->norm, &gn);
  mx_array_free(p->loss);
  mx_array_free(p->norm);
  const int64_t step = p->step;
  const double lr = p->lr;
  double el = now_sec() - lg->t0;
  if (p->mark) {
    float ms = 0;
    if (!st && lg->m0 && !lg->dops->mark_elapsed(lg->m0, p->mark, &ms)) el = 1e-3 * ms;
    mx_clear_error();
    lg->dops->mark_free(p->mark);
  }
  *p = (step_pending){0};
  if (st) return st;
  const mx_train_options *o = lg->o;
  lg->log_loss += loss;
  lg->log_n++;
  const double done = (double)(step - lg->start);
  lg->ev = (mx_train_event){.kind = MX_TRAIN_EV_STEP, .step = step, .iters = o->iters,
                            .loss = loss, .val_loss = NAN, .lr = lr, .grad_norm = gn,
                            .tokens_per_sec = lg->tokens_per_step * done / (el > 0 ? el : 1e-9),
                            .elapsed_sec = el,
                            .eta_sec = el / done * (double)(o->iters - step),
                            .peak_memory = mx_get_peak_memory()};
  if (step % o->log_every == 0 || step == o->iters) {
    fprintf(lg->metrics,
            "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4f, "
            "\"tokens_per_sec\": %.1f, \"peak_memory\": %zu, \"elapsed\": %.4f}\n",
            (long long)step, lg->log_loss / (double)lg->log_n, lr, gn, lg->ev.tokens_per_sec,
            lg->ev.peak_memory, el);
    fflush(lg->metrics);
    lg->log_loss = 0;
    lg->log_n = 0;
  }
  if (lg->on_event && lg->on_event(lg->ctx, &lg->ev)) lg->stop = true;
  return MX_OK;
}

static const char *plan_name(mx_train_plan_kind k) {
  return k == MX_TRAIN_PLAN_FULL ? "full" : k == MX_TRAIN_PLAN_ACCUMULATE ? "accumulate" : "checkpoint";
}

int mx_train_run(const mx_train_options *o, mx_train_event_fn on_event, void *ctx) {
  int st = mx_train_check_options(o);
  if (st) return st;
  if (!is_dir(o->out_dir) && mkdir(o->out_dir, 0777))
    return mx__set_error(MX_ERR_IO, "train: cannot create --out %s: %s", o->out_dir, strerror(errno));
  mx_train_data *d = NULL;
  int64_t vocab;
  int32_t bos, eos;
  if ((st = prepare_tokens(o, &d, &vocab, &bos, &eos))) return st;
  bool have_val = mx_train_data_size(d, true) > 0;
  mx_lm_config cfg;
  if (o->vocab_multiple > 1) vocab = (vocab + o->vocab_multiple - 1) / o->vocab_multiple * o->vocab_multiple;
  mx_train_llama_config(&cfg, o->dim, o->layers, o->heads, o->kv_heads, o->hidden, vocab, o->seq);
  cfg.bos_token_id = bos;
  cfg.eos_token_ids[0] = eos;
  cfg.num_eos_token_ids = eos >= 0 ? 1 : 0;
  mx_nn_module *model = mx_train_llama_new(&cfg, o->seed);
  mx_schedule *warm = NULL, *cosine = NULL, *sched = NULL;
  mx_optimizer *opt = NULL;
  FILE *metrics = NULL;
  mx_array **inputs = NULL;
  size_t prev_limit = mx_get_memory_limit();
  bool limited = false;
  if (!model) {
    st = mx_last_status();
    goto done;
  }
  /* the memory plan, before anything else is allocated for training */
  mx_train_memory_plan plan = {MX_TRAIN_PLAN_FULL, o->batch, o->grad_accum, false, 0, 0};
  if (o->memory_limit || o->grad_checkpoint) {
    if ((st = mx_train_plan_memory(model, o, &plan))) goto done;
    mx_train_event pev = {.kind = MX_TRAIN_EV_PLAN, .iters = o->iters, .plan = &plan,
                          .peak_memory = plan.peak_bytes};
    if (on_event && on_event(ctx, &pev)) goto done;
  }
  int64_t decay = o->iters > o->warmup ? o->iters - o->warmup : 1;
  cosine = mx_schedule_cosine_decay(o->lr, decay, o->min_lr);
  if (o->warmup > 0) {
    warm = mx_schedule_linear(0.0, o->lr, o->warmup);
    sched = mx_schedule_join((mx_schedule *[]){warm, cosine}, 2, (int64_t[]){o->warmup}, 1);
  } else {
    sched = mx_schedule_retain(cosine);
  }
  mx_adam_options ao = MX_ADAMW_OPTIONS(o->lr);
  ao.weight_decay = o->weight_decay;
  ao.bias_correction = true;
  ao.lr_schedule = sched;
  if (!sched || !(opt = mx_optimizer_adamw(&ao))) {
    st = mx_last_status();
    goto done;
  }
  int64_t step = 0;
  if (o->resume && (st = load_checkpoint(o, model, opt, &step))) goto done;
  if ((st = mx_train_write_config(&cfg, o->out_dir))) goto done;
  char mp[4200];
  snprintf(mp, sizeof mp, "%s/metrics.jsonl", o->out_dir);
  if (!(metrics = fopen(mp, o->resume ? "a" : "w"))) {
    st = mx__set_error(MX_ERR_IO, "train: cannot write %s: %s", mp, strerror(errno));
    goto done;
  }
  if (o->memory_limit || o->grad_checkpoint) {
    fprintf(metrics,
            "{\"memory_plan\": \"%s\", \"micro_batch\": %lld, \"grad_accum\": %lld, "
            "\"checkpoint\": %s, \"estimated_peak\": %zu, \"memory_limit\": %zu}\n",
            plan_name(plan.kind), (long long)plan.micro_batch, (long long)plan.grad_accum,
            plan.checkpoint ? "true" : "false", plan.peak_bytes, o->memory_limit);
    fflush(metrics);
  }
  if (o->memory_limit) {
    prev_limit = mx_set_memory_limit(o->memory_limit);
    limited = true;
  }
  const int64_t A = o->grad_accum, split = o->batch / plan.micro_batch, MA = plan.grad_accum;
  mx_nn_loss_fn loss_fn = plan.checkpoint ? mx_train_lm_loss_checkpointed : mx_train_lm_loss;
  mx_train_mixed mixed = {loss_fn, NULL, o->compute_dtype};
  void *loss_payload = NULL;
  if (o->compute_dtype == MX_BFLOAT16 || o->compute_dtype == MX_FLOAT16) {
    loss_fn = mx_train_mixed_loss;
    loss_payload = &mixed;
  }
  inputs = calloc((size_t)(2 * MA), sizeof *inputs);
  if (!inputs) {
    st = mx__set_error(MX_ERR_OOM, "train: out of memory");
    goto done;
  }
  mx_reset_peak_memory();
  const int64_t start = step;
  const double t0 = now_sec();
  const double tokens_per_step = (double)(o->batch * o->seq * A);
  step_log lg = {.o = o, .metrics = metrics, .on_event = on_event, .ctx = ctx, .t0 = t0,
                 .start = start, .tokens_per_step = tokens_per_step};
  if (mx_default_device() != MX_CPU && !mx__device_sync(mx_default_device())) {
    lg.dops = mx__device_ops_of(mx_default_device());
    lg.m0 = lg.dops && lg.dops->mark ? lg.dops->mark() : NULL;
    lg.t0 = now_sec();
  }
  mx_clear_error();
  step_pending pend = {0};
  const bool pipeline = train_pipeline();
  const char *tenv = getenv("MXC_TRAIN_TIMES");
  const bool times = tenv && !strcmp(tenv, "1");
  while (step < o->iters && !st) {
    double lr = mx_optimizer_learning_rate(opt);
    /* MXC_PROFILE_FROM_STEP=n: the op profile counts steps n and later
     * (the queued marks of the steps before are resolved first) */
    const char *pf = getenv("MXC_PROFILE_FROM_STEP");
    if (pf && atoll(pf) == step + 1) mx__profile_reset();
    const double ta = times ? now_sec() : 0;
    for (int64_t j = 0; j < A && !st; j++) {
      mx_array *x = NULL, *y = NULL;
      st = mx_train_data_batch(d, false, o->seed, step, (int)j, o->batch, o->seq, &x, &y);
      if (!st) st = split_rows(x, y, split, plan.micro_batch, inputs + 2 * j * split);
      mx_array_free(x);
      mx_array_free(y);
    }
    mx_array *loss = NULL, *norm = NULL;
    if (!st)
      st = mx_train_step_async(model, opt, loss_fn, loss_payload, inputs, 2, (int)MA, o->grad_clip,
                               &loss, &norm);
    for (int64_t j = 0; j < 2 * MA; j++) {
      mx_array_free(inputs[j]);
      inputs[j] = NULL;
    }
    if (st) {
      mx_array_free(loss);
      mx_array_free(norm);
      break;
    }
    step++;
    const double tb = times ? now_sec() : 0;
    /* the previous step's loss is read now that this step is queued: the
     * device works on while the host waits for the value and logs it */
    if (pend.loss) st = step_report(&lg, &pend);
    if (times) /* MXC_TRAIN_TIMES=1: the host's time to build and queue a step, and its wait */
      fprintf(stderr, "train times: step %lld queued in %.2f ms, then waited %.2f ms\n",
              (long long)step, 1e3 * (tb - ta), 1e3 * (now_sec() - tb));
    pend = (step_pending){loss, norm, lr, step, lg.m0 ? lg.dops->mark() : NULL};
    const bool boundary = !pipeline || lg.stop || step == o->iters ||
                          (have_val && step % o->eval_every == 0) ||
                          step % o->save_every == 0;
    if (!st && boundary) st = step_report(&lg, &pend);
    if (st) break;
    if (lg.stop) {
      if (pend.loss && (st = step_report(&lg, &pend))) break;
      break;
    }
    if (have_val && (step % o->eval_every == 0 || step == o->iters)) {
      double vl = 0;
      if ((st = validate(o, d, model, plan.micro_batch, &vl))) break;
      fprintf(metrics, "{\"step\": %lld, \"val_loss\": %.6f}\n", (long long)step, vl);
      fflush(metrics);
      mx_train_event ev = lg.ev;
      ev.kind = MX_TRAIN_EV_VAL;
      ev.val_loss = vl;
      if (on_event && on_event(ctx, &ev)) break;
    }
    if (step % o->save_every == 0 || step == o->iters) {
      if ((st = save_checkpoint(o, model, opt, step))) break;
      mx_train_event ev = lg.ev;
      ev.kind = MX_TRAIN_EV_SAVE;
      if (on_event && on_event(ctx, &ev)) break;
    }
  }
  mx_array_free(pend.loss);
  mx_array_free(pend.norm);
  if (pend.mark) lg.dops->mark_free(pend.mark);
  if (lg.m0) lg.dops->mark_free(lg.m0);
  if (!st && step < o->iters && step > start)
    st = save_checkpoint(o, model, opt, step); /* stopped by the callback */
done:
  if (limited) mx_set_memory_limit(prev_limit);
  if (metrics) fclose(metrics);
  free(inputs);
  mx_optimizer_free(opt);
  mx_schedule_free(sched);
  mx_schedule_free(warm);
  mx_schedule_free(cosine);
  mx_nn_module_free(model);
  mx_train_data_free(d);
  return st;
}
