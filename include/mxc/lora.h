/*
 * mxc/lora.h — LoRA fine-tuning of language models (mlx-lm's `lora` and
 * `fuse`): jsonl datasets, wrapping layers with LoRALinear, training,
 * adapter files in mlx-lm's layout, and fusing adapters into the model.
 *
 *     mx_lm_model *m = mx_lm_load("models/default", NULL);
 *     mx_lora_options o = MX_LORA_DEFAULTS;
 *     o.data_dir = "data"; o.adapter_path = "adapters";
 *     if (mx_lora_train(m, &o, NULL, NULL)) fprintf(stderr, "%s\n", mx_last_error());
 *     // adapters/adapters.safetensors, adapters/adapter_config.json
 *
 * Adapter names are mlx-lm's: "model.layers.N.self_attn.q_proj.lora_a"
 * (in, r) and "...lora_b" (r, out). Errors: a status with mx_last_error()
 * naming the file (and file:line for a bad data line). Nothing exits.
 */
#ifndef MXC_LORA_H
#define MXC_LORA_H

#include "mxc/lm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MX_LORA_MAX_KEYS 8

typedef struct {
  int num_layers; /* last N layers (-1: all) */
  int rank;
  double scale, dropout;
  int nkeys;
  char keys[MX_LORA_MAX_KEYS][64]; /* module paths relative to a layer: "self_attn.q_proj" */
} mx_lora_config;
#define MX_LORA_CONFIG_DEFAULTS \
  ((mx_lora_config){16, 8, 20.0, 0.0, 2, {"self_attn.q_proj", "self_attn.v_proj"}})

/* Freezes the model and wraps the configured layers with LoRALinear
 * (initialised from seed). */
MX_API int mx_lora_apply(mx_nn_module *model, const mx_lora_config *c, uint64_t seed);
/* Writes dir/adapters.safetensors (the trainable parameters) and
 * dir/adapter_config.json (creating dir). */
MX_API int mx_lora_save(mx_nn_module *model, const mx_lora_config *c, const char *dir);
/* Reads dir/adapter_config.json. */
MX_API int mx_lora_read_config(const char *dir, mx_lora_config *c);
/* Reads the config, wraps the layers and loads dir/adapters.safetensors. */
MX_API int mx_lora_load_adapters(mx_nn_module *model, const char *dir);
/* Replaces every LoRALinear of the model by its fused Linear. */
MX_API int mx_lora_fuse_all(mx_nn_module *model);
/* Fuses the adapters of adapter_dir into the model of model_dir and writes
 * out_dir (config.json, model.safetensors, tokenizer files). */
MX_API int mx_lora_fuse_dir(const char *model_dir, const char *adapter_dir, const char *out_dir);

/* ---- data ---------------------------------------------------------------- */
typedef struct mx_lora_dataset mx_lora_dataset;
/* One jsonl file: {"text"}, {"prompt","completion"} or {"messages":[...]}
 * (chat template when the tokenizer has one). Token ids truncated to
 * max_len. */
MX_API mx_lora_dataset *mx_lora_dataset_load(const char *path, mx_tokenizer *tok,
                                             int64_t max_len);
MX_API void mx_lora_dataset_free(mx_lora_dataset *d);
MX_API int64_t mx_lora_dataset_size(const mx_lora_dataset *d);
/* A batch of examples idx[0..n): x, y int32 (n, L-1), mask float32 (n, L-1)
 * (1 on target positions inside the example, after the prompt when
 * mask_prompt). */
MX_API int mx_lora_dataset_batch(const mx_lora_dataset *d, const int64_t *idx, int n,
                                 bool mask_prompt, mx_array **x, mx_array **y, mx_array **mask);

/* ---- training ------------------------------------------------------------- */
typedef struct {
  const char *data_dir, *adapter_path;
  mx_lora_config lora;
  int64_t batch_size, iters, max_seq_length, steps_per_report;
  double learning_rate;
  uint64_t seed;
  bool mask_prompt;
} mx_lora_options;
#define MX_LORA_DEFAULTS                                                                   \
  ((mx_lora_options){NULL, "adapters", MX_LORA_CONFIG_DEFAULTS, 4, 100, 2048, 10, 1e-5, 0, \
                     false})

typedef struct {
  bool val; /* a validation report (at step 1 before training, and at the end) */
  int64_t step, iters;
  double loss;
  /* training reports: over the report window / since the start */
  double learning_rate, it_per_sec, tokens_per_sec;
  int64_t trained_tokens;
  size_t peak_memory;
} mx_lora_event;
typedef int (*mx_lora_event_fn)(void *ctx, const mx_lora_event *ev);

MX_API int mx_lora_train(mx_lm_model *m, const mx_lora_options *o, mx_lora_event_fn on_event,
                         void *ctx);

#ifdef __cplusplus
}
#endif
#endif /* MXC_LORA_H */
