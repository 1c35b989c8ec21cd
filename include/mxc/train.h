/*
 * mxc/train.h — pretraining a small Llama model from text (mlx-lm's
 * training loop as a library: data windows, the optimizer step with
 * gradient accumulation and clipping, validation, checkpoints with exact
 * resume), and the byte-level tokenizer the trained models ship with.
 *
 *     mx_train_options o = MX_TRAIN_DEFAULTS;
 *     o.data_path = "corpus.txt";
 *     o.out_dir = "out";
 *     o.iters = 1000;
 *     if (mx_train_run(&o, NULL, NULL)) fprintf(stderr, "%s\n", mx_last_error());
 *     // out/ now loads with mx_lm_load (config.json, model.safetensors,
 *     // tokenizer.json, tokenizer_config.json)
 *
 * Tokens: the byte tokenizer maps byte b to id b (token text: GPT-2's
 * bytes_to_unicode of b) and adds the special tokens <|bos|> (256) and
 * <|eos|> (257); vocabulary 258. Training reads the corpus as raw bytes.
 *
 * Determinism: initial weights come from `seed`; the training window of
 * micro-batch j of step s starts at offsets drawn from a hash of (seed, s,
 * j), so the data position is the step itself and a resumed run continues
 * bit-exactly (weights, optimizer state and step are checkpointed).
 *
 * Errors: a status / NULL with mx_last_error() naming the file or flag at
 * fault. Nothing here exits.
 */
#ifndef MXC_TRAIN_H
#define MXC_TRAIN_H

#include <stdio.h>

#include "mxc/array.h"
#include "mxc/lm.h"
#include "mxc/nn.h"
#include "mxc/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- byte-level tokenizer ------------------------------------------------ */
#define MX_TRAIN_BYTE_VOCAB 258
#define MX_TRAIN_BOS_ID 256
#define MX_TRAIN_EOS_ID 257
/* The tokenizer.json text (malloc'd, free with free()). */
MX_API char *mx_train_byte_tokenizer_json(void);
/* Writes dir/tokenizer.json and dir/tokenizer_config.json. */
MX_API int mx_train_write_byte_tokenizer(const char *dir);

/* ---- model --------------------------------------------------------------- */
/* A llama config (RMSNorm, RoPE theta 10000, SwiGLU, tied embeddings). */
MX_API int mx_train_llama_config(mx_lm_config *c, int64_t dim, int64_t layers, int64_t heads,
                                 int64_t kv_heads, int64_t hidden, int64_t vocab,
                                 int64_t max_positions);
/* A new model (the module tree of mx_lm_load, HF names) initialised from
 * seed (float32). */
MX_API mx_nn_module *mx_train_llama_new(const mx_lm_config *c, uint64_t seed);
/* Writes dir/config.json for c. */
MX_API int mx_train_write_config(const mx_lm_config *c, const char *dir);

/* ---- data ---------------------------------------------------------------- */
typedef struct mx_train_data mx_train_data;
/* Token ids from a text file (bytes), split into train (first 1 - val_frac)
 * and validation (the rest). Each split must hold more than seq tokens. */
MX_API mx_train_data *mx_train_data_load(const char *path, double val_frac, int64_t seq);
MX_API mx_train_data *mx_train_data_from_tokens(const int32_t *ids, int64_t n, double val_frac,
                                                int64_t seq);
MX_API void mx_train_data_free(mx_train_data *d);
MX_API int64_t mx_train_data_size(const mx_train_data *d, bool val);
/* Inputs x and targets y (int32 (batch, seq), y = x shifted by one).
 * Training: window starts drawn from (seed, step, micro). Validation:
 * batch number `step` of consecutive windows (wrapping). */
MX_API int mx_train_data_batch(const mx_train_data *d, bool val, uint64_t seed, int64_t step,
                               int micro, int64_t batch, int64_t seq, mx_array **x,
                               mx_array **y);

/* ---- the training step (reusable: LoRA, full fine-tuning) -------------------- */
/* The next-token loss: inputs x (B, T), y (B, T) [, mask (B, T) 0/1]:
 * mean cross entropy (over mask positions when given). An mx_nn_loss_fn. */
MX_API int mx_train_lm_loss(void *payload, mx_nn_module *model, mx_array **inputs, int ninputs,
                            mx_list *out);
typedef struct {
  double loss;      /* mean over the micro-batches */
  double grad_norm; /* before clipping */
} mx_train_step_stats;
/* One optimizer step: for each of `accum` micro-batches (inputs[j *
 * ninputs ...]) the gradient of loss_fn on the trainable parameters, the
 * mean of them, clipped to grad_clip (<= 0: no clipping), applied by opt;
 * the model and the optimizer state are evaluated. stats may be NULL. */
MX_API int mx_train_step(mx_nn_module *model, mx_optimizer *opt, mx_nn_loss_fn loss_fn,
                         void *payload, mx_array **inputs, int ninputs, int accum,
                         double grad_clip, mx_train_step_stats *stats);
/* Mean loss (no gradients) of `ninputs`-input batches. */
MX_API int mx_train_eval_loss(mx_nn_module *model, mx_nn_loss_fn loss_fn, void *payload,
                              mx_array **inputs, int ninputs, double *loss);

/* ---- the training run ------------------------------------------------------------ */
typedef struct {
  const char *data_path, *out_dir;
  int64_t dim, layers, heads, kv_heads, hidden, seq, batch, iters;
  double lr, min_lr, weight_decay, grad_clip, val_frac;
  int64_t warmup, grad_accum, eval_every, save_every, val_batches, log_every;
  uint64_t seed;
  bool resume;
} mx_train_options;
#define MX_TRAIN_DEFAULTS                                                                     \
  ((mx_train_options){.dim = 256, .layers = 4, .heads = 4, .kv_heads = 4, .hidden = 688,      \
                      .seq = 128, .batch = 16, .iters = 1000, .lr = 3e-3, .min_lr = 3e-4,     \
                      .weight_decay = 0.01, .grad_clip = 1.0, .val_frac = 0.05, .warmup = 100, \
                      .grad_accum = 1, .eval_every = 100, .save_every = 200, .val_batches = 8, \
                      .log_every = 10})

typedef enum { MX_TRAIN_EV_STEP = 0, MX_TRAIN_EV_VAL = 1, MX_TRAIN_EV_SAVE = 2 } mx_train_event_kind;
typedef struct {
  mx_train_event_kind kind;
  int64_t step, iters; /* steps done, total */
  double loss, val_loss, lr, grad_norm, tokens_per_sec, elapsed_sec, eta_sec;
  size_t peak_memory;
} mx_train_event;
/* Called after each step, validation and checkpoint; non-zero stops. */
typedef int (*mx_train_event_fn)(void *ctx, const mx_train_event *ev);

/* Checks the options (a message naming the flag at fault). */
MX_API int mx_train_check_options(const mx_train_options *o);
/* Trains; out_dir receives config.json, model.safetensors, tokenizer files,
 * metrics.jsonl and checkpoint/ (model, optimizer, state.json), written
 * atomically every save_every steps and at the end. resume: continue from
 * out_dir/checkpoint. */
MX_API int mx_train_run(const mx_train_options *o, mx_train_event_fn on_event, void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* MXC_TRAIN_H */
