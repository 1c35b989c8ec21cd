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
 * <|eos|> (257); vocabulary 258 (the model's 264: see vocab_multiple).
 * Training reads the corpus as raw bytes — unless options.vocab_size trains
 * a byte-level BPE tokenizer on it first (mxc/tokenizer_train.h) or
 * options.tokenizer_dir names one to use.
 *
 * Memory: options.memory_limit plans the step to fit (micro-batches with
 * gradient accumulation, then per-layer gradient checkpointing) or stops
 * before step 1 (mx_train_plan_memory). Loss curves: mx_train_plot draws
 * metrics.jsonl as a PNG.
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
/* As mx_train_step, but nothing waits for the device: the step is queued
 * and *loss (the mean over the micro-batches) and *grad_norm come back as
 * 0-d float32 arrays (the caller frees them) already on their way to the
 * host (mx_async_eval). Reading them waits for this step alone, so a loop
 * that reads step n's values after queuing step n + 1 keeps a GPU busy
 * while the host builds the next step:
 *
 *     mx_train_step_async(m, opt, fn, p, in0, 2, 1, 1.0, &l0, &g0);
 *     mx_train_step_async(m, opt, fn, p, in1, 2, 1, 1.0, &l1, &g1);
 *     mx_array_item(l0, &loss0);  // step 1 may still be running
 *
 * loss or grad_norm may be NULL. */
MX_API int mx_train_step_async(mx_nn_module *model, mx_optimizer *opt, mx_nn_loss_fn loss_fn,
                               void *payload, mx_array **inputs, int ninputs, int accum,
                               double grad_clip, mx_array **loss, mx_array **grad_norm);
/* Mixed precision around another loss: payload is an mx_train_mixed (fn,
 * its payload, the compute dtype). The model's (float32) trainable
 * parameters are cast to dtype for the call of fn and restored after, so
 * gradients taken through it flow back through the casts to the float32
 * parameters. */
typedef struct {
  mx_nn_loss_fn fn;
  void *payload;
  mx_dtype dtype;
} mx_train_mixed;
MX_API int mx_train_mixed_loss(void *payload, mx_nn_module *model, mx_array **inputs, int ninputs,
                               mx_list *out);

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
  /* Tokenizer: tokenizer_dir (a directory with tokenizer.json, or the file)
   * is used as is; else vocab_size > 0 trains a byte-level BPE tokenizer
   * of that size on the corpus first (mx_bpe_train, special tokens <|bos|>
   * and <|eos|>); else the byte tokenizer above. The tokenizer files are
   * copied / written to out_dir and the corpus is encoded with it. */
  const char *tokenizer_dir;
  int64_t vocab_size;
  /* The model's vocabulary (embedding rows, logits) is the tokenizer's
   * rounded up to a multiple of this (0 or 1: exactly the tokenizer's).
   * The extra ids are never inputs or targets, so training pushes their
   * logits down like any unused token's; config.json records the padded
   * size (as Megatron's and nanoGPT's models do). Default 8: every row of
   * the LM head's products and of the loss is then 16-byte aligned, so the
   * GPU's matrix products take the vocabulary in place (an odd one is
   * copied into padded buffers around each of the head's products). */
  int64_t vocab_multiple;
  /* Memory budget in bytes (0: none): see mx_train_plan_memory. The run
   * follows the plan and sets mx_set_memory_limit(memory_limit) while it
   * trains (restored after), so an overshoot is an MX_ERR_OOM status. */
  size_t memory_limit;
  bool grad_checkpoint; /* force per-layer gradient checkpointing */
  /* Compute dtype (0 = MX_BOOL: float32 throughout). MX_BFLOAT16 or
   * MX_FLOAT16: mixed precision — the weights and AdamW state stay float32
   * (the master copy), each step casts the weights to this dtype for the
   * forward and backward passes (activations in it too), the loss is taken
   * in float32 and the gradients arrive in float32 (mx_train_mixed_loss). */
  mx_dtype compute_dtype;
} mx_train_options;
#define MX_TRAIN_DEFAULTS                                                                     \
  ((mx_train_options){.dim = 256, .layers = 4, .heads = 4, .kv_heads = 4, .hidden = 688,      \
                      .seq = 128, .batch = 16, .iters = 1000, .lr = 3e-3, .min_lr = 3e-4,     \
                      .weight_decay = 0.01, .grad_clip = 1.0, .val_frac = 0.05, .warmup = 100, \
                      .grad_accum = 1, .eval_every = 100, .save_every = 200, .val_batches = 8, \
                      .log_every = 10, .vocab_multiple = 8})

typedef enum {
  MX_TRAIN_EV_STEP = 0,
  MX_TRAIN_EV_VAL = 1,
  MX_TRAIN_EV_SAVE = 2,
  MX_TRAIN_EV_PLAN = 3 /* before step 1 when memory_limit / grad_checkpoint is set: `plan` */
} mx_train_event_kind;
struct mx_train_memory_plan_s;
typedef struct {
  mx_train_event_kind kind;
  int64_t step, iters; /* steps done, total */
  double loss, val_loss, lr, grad_norm, tokens_per_sec, elapsed_sec, eta_sec;
  size_t peak_memory;
  const struct mx_train_memory_plan_s *plan; /* MX_TRAIN_EV_PLAN only */
} mx_train_event;
/* Called after each step, validation and checkpoint; non-zero stops. A
 * step's event comes when the next step has been queued (its loss is read
 * then, so a GPU never waits for the host between steps), or at once before
 * a validation, a checkpoint and the last step: a stop asked at step n
 * ends the run after step n + 1, which is already under way, and the final
 * checkpoint holds n + 1 steps. MXC_TRAIN_PIPELINE=0 in the environment
 * reports each step before the next is built (a stop at n ends at n). */
typedef int (*mx_train_event_fn)(void *ctx, const mx_train_event *ev);

/* ---- memory budget -------------------------------------------------------------- */
/* The loss of mx_train_lm_loss computed with per-layer gradient
 * checkpointing (each decoder layer's intermediates are recomputed in the
 * backward pass instead of being kept): same value and gradients, less
 * memory, about one more forward pass of compute. For models made by
 * mx_train_llama_new. */
MX_API int mx_train_lm_loss_checkpointed(void *payload, mx_nn_module *model, mx_array **inputs,
                                         int ninputs, mx_list *out);
/* The peak of the allocator's active memory (bytes, absolute: the model's
 * weights included) over one forward + backward pass of model on a
 * (batch, seq) micro-batch, measured (a throwaway pass; the model is not
 * changed). Fails with MX_ERR_OOM when a memory limit is set and hit. */
MX_API int mx_train_measure_step_memory(mx_nn_module *model, int64_t batch, int64_t seq,
                                        bool checkpoint, size_t *bytes);
typedef enum {
  MX_TRAIN_PLAN_FULL = 0,       /* the whole batch at once */
  MX_TRAIN_PLAN_ACCUMULATE = 1, /* smaller micro-batches, gradients accumulated */
  MX_TRAIN_PLAN_CHECKPOINT = 2  /* gradient checkpointing (and micro-batches if needed) */
} mx_train_plan_kind;
typedef struct mx_train_memory_plan_s {
  mx_train_plan_kind kind;
  int64_t micro_batch; /* divides o->batch */
  int64_t grad_accum;  /* micro-batches per step: o->grad_accum * o->batch / micro_batch */
  bool checkpoint;
  size_t peak_bytes; /* the estimated peak of a training step under this plan */
  size_t full_bytes; /* the same for the full batch without checkpointing */
} mx_train_memory_plan;
/* The estimated peak of one training step (bytes): the measured forward +
 * backward peak for `micro` rows (from passes of 1 and 2 rows, linear in
 * the rows), plus AdamW's two state tensors, the optimizer update's
 * temporaries and the gradient accumulator when micro-batches are summed. */
MX_API int mx_train_estimate_step_memory(mx_nn_module *model, const mx_train_options *o,
                                         int64_t micro, bool checkpoint, size_t *bytes);
/* Chooses how to fit a step into o->memory_limit (0: no limit): the full
 * batch if its estimate fits; else the largest divisor of o->batch as
 * micro-batch with gradient accumulation (the same effective batch: the
 * same result up to float summation order); else the same with gradient
 * checkpointing per layer; else MX_ERR_OOM with a message naming the
 * bytes needed (micro-batch 1 with checkpointing) and the bytes given.
 * o->grad_checkpoint forces checkpointing. */
MX_API int mx_train_plan_memory(mx_nn_module *model, const mx_train_options *o,
                                mx_train_memory_plan *plan);
/* Parses "2GB", "512MiB", "1.5G", "1000000" (bytes; K/M/G/T with or
 * without B are powers of 1000, KiB/MiB/GiB/TiB powers of 1024). */
MX_API int mx_parse_bytes(const char *s, size_t *bytes);

/* Checks the options (a message naming the flag at fault). */
MX_API int mx_train_check_options(const mx_train_options *o);
/* Trains; out_dir receives config.json, model.safetensors, tokenizer files,
 * metrics.jsonl and checkpoint/ (model, optimizer, state.json), written
 * atomically every save_every steps and at the end. resume: continue from
 * out_dir/checkpoint. */
MX_API int mx_train_run(const mx_train_options *o, mx_train_event_fn on_event, void *ctx);

/* ---- loss curves ------------------------------------------------------------------ */
typedef struct {
  const char *title; /* drawn above the plot; NULL: none */
  int width, height; /* pixels; 0: 800 x 500 */
} mx_plot_options;
#define MX_PLOT_DEFAULTS ((mx_plot_options){.title = NULL, .width = 800, .height = 500})
/* Reads the JSON lines of metrics_path (objects with "step" and "loss" or
 * "val_loss", as mx_train_run appends; other lines' keys are ignored) and
 * draws train and validation loss against step as an RGB PNG: axes with
 * tick labels, grid, the curves (train: mx_plot_train_rgb, validation:
 * mx_plot_val_rgb with markers) and a legend. A line that is not a JSON
 * object, or a loss without a numeric step, is an MX_ERR_FORMAT naming
 * file:line; a file without any loss too. opt may be NULL. */
MX_API int mx_train_plot(const char *metrics_path, const char *png_path, const mx_plot_options *opt);
MX_API extern const uint8_t mx_plot_train_rgb[3], mx_plot_val_rgb[3];
/* Writes width x height 8-bit RGB pixels (row-major, 3 bytes each) as a PNG
 * (one IDAT chunk, zlib deflate, filter 0). */
MX_API int mx_png_write(const char *path, const uint8_t *rgb, int width, int height);
/* The CRC-32 of PNG chunks (ISO 3309 / zlib's crc32), continued from crc
 * (0 to start). */
MX_API uint32_t mx_png_crc32(uint32_t crc, const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* MXC_TRAIN_H */
