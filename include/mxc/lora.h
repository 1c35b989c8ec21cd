/*
 * mxc/lora.h — LoRA / DoRA / full fine-tuning of language models (mlx-lm's
 * `lora` and `fuse`): jsonl datasets, wrapping layers with LoRALinear or
 * DoRALinear (QLoRA on a quantized base), the training loop with
 * accumulation, schedules, validation, atomic checkpoints and an exact
 * resume, a memory budget, YAML configs, test evaluation, adapter files in
 * mlx-lm's layout, and fusing adapters into the model.
 *
 *     mx_lm_model *m = mx_lm_load("models/default", NULL);
 *     mx_lora_options o = MX_LORA_DEFAULTS;      // mlx-lm's defaults
 *     o.data_dir = "data"; o.adapter_path = "adapters"; o.iters = 200;
 *     if (mx_lora_train(m, &o, NULL, NULL)) fprintf(stderr, "%s\n", mx_last_error());
 *     // adapters/adapters.safetensors, adapter_config.json, optimizer.safetensors
 *     double loss;
 *     mx_lora_evaluate(m, "data/test.jsonl", 4, -1, 2048, false, &loss);  // --test
 *     mx_lm_free(m);
 *     mx_lora_fuse_dir_ex("models/default", "adapters", "fused", false);
 *
 * Adapter names are mlx-lm's: "model.layers.N.self_attn.q_proj.lora_a"
 * (in, r), "...lora_b" (r, out), DoRA's "...m" (out). Errors: a status with
 * mx_last_error() naming the file (and file:line for a bad data or YAML
 * line) or the flag. Nothing exits.
 */
#ifndef MXC_LORA_H
#define MXC_LORA_H

#include "mxc/lm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MX_LORA_MAX_KEYS 8

/* --fine-tune-type: LoRALinear / DoRALinear on the keys of the last
 * num_layers layers, or full: those layers' own parameters trained. */
typedef enum { MX_LORA_FT_LORA = 0, MX_LORA_FT_DORA = 1, MX_LORA_FT_FULL = 2 } mx_lora_fine_tune_type;

typedef struct {
  int num_layers; /* last N layers (-1: all) */
  int rank;
  double scale, dropout;
  int nkeys;
  char keys[MX_LORA_MAX_KEYS][64]; /* module paths relative to a layer: "self_attn.q_proj" */
  mx_lora_fine_tune_type type;
} mx_lora_config;
#define MX_LORA_CONFIG_DEFAULTS \
  ((mx_lora_config){16, 8, 20.0, 0.0, 2, {"self_attn.q_proj", "self_attn.v_proj"}, MX_LORA_FT_LORA})

/* Freezes the model and wraps the configured layers with LoRALinear or
 * DoRALinear (initialised from seed), or for type full unfreezes the last
 * num_layers layers (mlx-lm's linear_to_lora_layers / full). */
MX_API int mx_lora_apply(mx_nn_module *model, const mx_lora_config *c, uint64_t seed);
/* Writes dir/adapters.safetensors (the trainable parameters) and
 * dir/adapter_config.json (creating dir). DoRA adds "...m" magnitudes
 * (out,); full saves the trained layers' parameters under their names. */
MX_API int mx_lora_save(mx_nn_module *model, const mx_lora_config *c, const char *dir);
/* Reads dir/adapter_config.json. */
MX_API int mx_lora_read_config(const char *dir, mx_lora_config *c);
/* Reads the config, wraps the layers and loads dir/adapters.safetensors. */
MX_API int mx_lora_load_adapters(mx_nn_module *model, const char *dir);
/* Replaces every LoRALinear of the model by its fused Linear. */
MX_API int mx_lora_fuse_all(mx_nn_module *model);
/* As mx_lora_fuse_all; dequantize: fused layers (and every other quantized
 * Linear/Embedding) come out as plain float layers. */
MX_API int mx_lora_fuse_all_ex(mx_nn_module *model, bool dequantize);
/* Fuses the adapters of adapter_dir into the model of model_dir and writes
 * out_dir (config.json, model.safetensors, tokenizer files). */
MX_API int mx_lora_fuse_dir(const char *model_dir, const char *adapter_dir, const char *out_dir);
/* As mx_lora_fuse_dir; dequantize: the output is a float model (config.json
 * without "quantization"), as mlx_lm.fuse --dequantize. */
MX_API int mx_lora_fuse_dir_ex(const char *model_dir, const char *adapter_dir, const char *out_dir,
                               bool dequantize);

/* ---- data ---------------------------------------------------------------- */
typedef struct mx_lora_dataset mx_lora_dataset;
/* One jsonl file: {"text"}, {"prompt","completion"} or {"messages":[...]}
 * (chat template when the tokenizer has one). Token ids truncated to
 * max_len. */
MX_API mx_lora_dataset *mx_lora_dataset_load(const char *path, mx_tokenizer *tok,
                                             int64_t max_len);
MX_API void mx_lora_dataset_free(mx_lora_dataset *d);
MX_API int64_t mx_lora_dataset_size(const mx_lora_dataset *d);
/* Tokens of example i (after truncation), -1 when out of range. */
MX_API int64_t mx_lora_dataset_length(const mx_lora_dataset *d, int64_t i);
/* A batch of examples idx[0..n): x, y int32 (n, L-1), mask float32 (n, L-1)
 * (1 on target positions inside the example, after the prompt when
 * mask_prompt). */
MX_API int mx_lora_dataset_batch(const mx_lora_dataset *d, const int64_t *idx, int n,
                                 bool mask_prompt, mx_array **x, mx_array **y, mx_array **mask);

/* ---- training ------------------------------------------------------------- */
typedef enum { MX_LORA_OPT_ADAM = 0, MX_LORA_OPT_ADAMW = 1, MX_LORA_OPT_SGD = 2 } mx_lora_optimizer_kind;

/* mlx-lm's lr_schedule {name, arguments, warmup, warmup_init}: name is an
 * mlx.optimizers schedule ("cosine_decay", "linear_schedule",
 * "exponential_decay", "step_decay"), arguments its positional arguments
 * (the first is the initial rate). warmup > 0 prepends a linear warmup from
 * warmup_init to arguments[0] over `warmup` steps, joined at warmup + 1. */
typedef struct {
  char name[32]; /* "" = no schedule: the constant learning_rate */
  double arguments[4];
  int narguments;
  int64_t warmup;
  double warmup_init;
} mx_lora_schedule;

typedef struct {
  const char *data_dir, *adapter_path;
  /* Continue from an adapter file: its weights; and, when the optimizer
   * file written beside it by mxc exists (NNNNNNN_optimizer.safetensors
   * for NNNNNNN_adapters.safetensors, optimizer.safetensors for
   * adapters.safetensors), the optimizer state, the iteration and the
   * gradients accumulated since the last update, so the run continues
   * exactly where the saved one was (same data order, same losses, same
   * adapters). Without that file (an mlx-lm adapter file): the weights
   * only, from iteration 1. NULL: start fresh. */
  const char *resume_adapter_file;
  const char *model; /* recorded in adapter_config.json (may be NULL) */
  mx_lora_config lora;
  mx_lora_optimizer_kind optimizer;
  /* optimizer_config: Adam/AdamW betas, eps, weight decay (AdamW: 0.01 by
   * default), SGD momentum. */
  double beta1, beta2, eps, weight_decay, momentum;
  mx_lora_schedule lr_schedule;
  int64_t batch_size, iters, max_seq_length, steps_per_report;
  int64_t val_batches;  /* -1: the whole validation set */
  int64_t test_batches; /* -1: the whole test set */
  int64_t steps_per_eval, save_every;
  /* One batch per iteration; an optimizer update every
   * grad_accumulation_steps iterations with the mean of their gradients
   * (mlx-lm's semantics: iters counts batches, not updates). */
  int64_t grad_accumulation_steps;
  double learning_rate;
  uint64_t seed;
  bool mask_prompt;
  bool grad_checkpoint; /* needs model support: an error for now */
  /* Bytes the training step may use (0: no limit). Before training one
   * micro-batch step of the longest batch is measured; when it does not
   * fit, each batch is computed in smaller micro-batches (a divisor of
   * batch_size; their gradients accumulated, so updates see the same
   * examples) until it fits, else training stops before it starts with a
   * message naming the needed and the given bytes. The limit stays set on
   * the allocator during training (an overshoot is an error, not a crash). */
  size_t memory_limit;
} mx_lora_options;
#define MX_LORA_DEFAULTS                                                                 \
  ((mx_lora_options){.adapter_path = "adapters", .lora = MX_LORA_CONFIG_DEFAULTS,         \
                     .optimizer = MX_LORA_OPT_ADAM,    \
                     .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = -1,      \
                     .batch_size = 4, .iters = 1000, .max_seq_length = 2048,             \
                     .steps_per_report = 10, .val_batches = 25, .test_batches = 500,      \
                     .steps_per_eval = 200, .save_every = 100,                            \
                     .grad_accumulation_steps = 1, .learning_rate = 1e-5})

/* Fills o from an mlx-lm YAML config (`mlx_lm.lora -c config.yaml`): the
 * keys of mlx-lm's CONFIG_DEFAULTS (model, train, test, data,
 * fine_tune_type, optimizer, optimizer_config, seed, num_layers,
 * batch_size, iters, val_batches, test_batches, learning_rate,
 * steps_per_report, steps_per_eval, save_every, adapter_path,
 * resume_adapter_file, max_seq_length, grad_accumulation_steps,
 * grad_checkpoint, mask_prompt, lora_parameters {rank, scale, dropout,
 * keys}, lr_schedule {name, arguments, warmup, warmup_init}; wandb,
 * report_to, project_name, config, clear_cache_threshold are accepted and
 * ignored). Unknown keys and wrong types are errors naming FILE:LINE and
 * the key. The strings set in o point into the returned holder (free it
 * after the last use of o with mx_lora_yaml_free). train / test receive
 * the "train" and "test" keys when present (may be NULL). */
typedef struct mx_lora_yaml mx_lora_yaml;
MX_API mx_lora_yaml *mx_lora_yaml_load(const char *path, mx_lora_options *o, bool *train,
                                       bool *test);
MX_API void mx_lora_yaml_free(mx_lora_yaml *y);

/* Checks the options (a message naming the flag at fault). */
MX_API int mx_lora_check_options(const mx_lora_options *o);

typedef enum {
  MX_LORA_EV_TRAIN = 0, /* a training report (every steps_per_report) */
  MX_LORA_EV_VAL = 1,   /* a validation loss (step 1, every steps_per_eval, the last step) */
  MX_LORA_EV_SAVE = 2,  /* adapters saved (path: the checkpoint file) */
  MX_LORA_EV_INFO = 3,  /* a message (resume, memory plan) */
} mx_lora_event_kind;

typedef struct {
  mx_lora_event_kind kind;
  bool val; /* kind == MX_LORA_EV_VAL */
  int64_t step, iters;
  double loss;
  /* training reports: over the report window / since the start */
  double learning_rate, it_per_sec, tokens_per_sec;
  int64_t trained_tokens;
  size_t peak_memory;
  const char *text; /* SAVE: the file written; INFO: the message */
} mx_lora_event;
typedef int (*mx_lora_event_fn)(void *ctx, const mx_lora_event *ev);

/* Trains as mlx_lm.lora --train and writes adapter_path/adapters.safetensors,
 * adapter_path/adapter_config.json (every option, mlx-lm's keys) and, every
 * save_every steps, adapter_path/NNNNNNN_adapters.safetensors (+ the
 * optimizer state beside it for an exact resume). Files are replaced
 * atomically. The model keeps its adapters (ready for mx_lora_evaluate). */
MX_API int mx_lora_train(mx_lm_model *m, const mx_lora_options *o, mx_lora_event_fn on_event,
                         void *ctx);

/* The token-weighted mean loss over the first num_batches (-1: all)
 * batches of batch_size of `path` (mlx-lm's evaluate; what --test
 * reports with perplexity exp(loss)). */
MX_API int mx_lora_evaluate(mx_lm_model *m, const char *path, int64_t batch_size,
                            int64_t num_batches, int64_t max_seq_length, bool mask_prompt,
                            double *loss);

/* Prepares the model for a test-only run (mlx-lm: --test without --train):
 * loads the adapters of dir (NULL or "": the base model). */
MX_API int mx_lora_load_for_test(mx_lm_model *m, const char *dir);

#ifdef __cplusplus
}
#endif
#endif /* MXC_LORA_H */
