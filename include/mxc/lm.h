/*
 * mxc/lm.h — language models (mlx-lm's models, KV cache and generation).
 *
 *     mx_lm_model *m = mx_lm_load("models/Llama-3.2-1B-Instruct-4bit", NULL);
 *     if (!m) { fprintf(stderr, "%s\n", mx_last_error()); return 1; }
 *     mx_nn_module *q = mx_nn_get(mx_lm_module(m), "model.layers.3.self_attn.q_proj");
 *
 *     int32_t prompt[] = {1};
 *     mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
 *     opt.max_tokens = 40;
 *     mx_lm_generate_stats st;
 *     mx_lm_generate(m, prompt, 1, &opt, on_token, ctx, &st);  // greedy
 *
 *     // or step by step:
 *     mx_lm_cache *c = mx_lm_cache_new(m);
 *     mx_array *logits = mx_lm_forward(m, tokens, c);   // (B, T) -> (B, T, vocab)
 *     mx_lm_cache_free(c);
 *     mx_lm_free(m);
 *
 * A model directory holds config.json, the weights (model.safetensors, a
 * model.safetensors.index.json with its shards, or any *.safetensors), and
 * optionally generation_config.json and tokenizer files. The module tree
 * mirrors Hugging Face's names: "model.embed_tokens",
 * "model.layers.N.self_attn.{q,k,v,o}_proj", "model.layers.N.mlp.{gate,up,
 * down}_proj", "model.layers.N.{input,post_attention}_layernorm",
 * "model.norm" and "lm_head" (absent when the embeddings are tied).
 *
 * Architectures (config "model_type"): llama (incl. rope_scaling "linear"
 * and "llama3"), mistral, qwen2 (q/k/v biases), qwen3 (q_norm/k_norm).
 * MLX-quantized checkpoints load when config.json has "quantization"
 * {group_size, bits [, "<module path>": {group_size, bits}]}: a Linear or
 * Embedding whose "<path>.scales" is in the weights becomes quantized.
 *
 * Errors: NULL / a status with mx_last_error() naming the file, the key or
 * the tensor at fault. Nothing here exits.
 */
#ifndef MXC_LM_H
#define MXC_LM_H

#include "mxc/array.h"
#include "mxc/nn.h"
#include "mxc/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MX_LM_MAX_EOS 16

typedef enum {
  MX_LM_ROPE_DEFAULT = 0,
  MX_LM_ROPE_LINEAR = 1, /* positions / factor */
  MX_LM_ROPE_LLAMA3 = 2, /* Llama 3.1 frequency smoothing */
} mx_lm_rope_scaling;

/* The parsed config.json (+ generation_config.json). */
typedef struct {
  char model_type[32];
  int64_t hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
      num_key_value_heads, head_dim, vocab_size, max_position_embeddings;
  double rms_norm_eps, rope_theta;
  bool rope_traditional;
  bool tie_word_embeddings;
  bool attention_bias; /* q/k/v (and for llama o) projections have biases */
  bool mlp_bias;
  bool qk_norm; /* qwen3 */
  mx_lm_rope_scaling rope_scaling;
  double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
  int64_t rope_original_max_position_embeddings;
  int quant_group_size, quant_bits; /* 0 when not quantized */
  int32_t bos_token_id;             /* -1 when unknown */
  int32_t eos_token_ids[MX_LM_MAX_EOS];
  int num_eos_token_ids;
} mx_lm_config;

typedef struct mx_lm_model mx_lm_model;

typedef struct {
  bool no_tokenizer; /* do not load tokenizer files even when present */
  bool lazy;         /* do not evaluate the weights at load time */
} mx_lm_load_options;

/* Loads a model directory (a local path). opt may be NULL. */
MX_API mx_lm_model *mx_lm_load(const char *path, const mx_lm_load_options *opt);
MX_API void mx_lm_free(mx_lm_model *m); /* NULL: no-op */
/* The module tree (borrowed; the root has children "model" [, "lm_head"]). */
MX_API mx_nn_module *mx_lm_module(mx_lm_model *m);
MX_API const mx_lm_config *mx_lm_get_config(const mx_lm_model *m);
/* The tokenizer, or NULL when the directory has none (borrowed). */
MX_API mx_tokenizer *mx_lm_tokenizer(mx_lm_model *m);
/* Whether id is one of the model's EOS ids (config, generation_config,
 * tokenizer). */
MX_API bool mx_lm_is_eos(const mx_lm_model *m, int32_t id);
/* The architectures mx_lm_load accepts, comma-separated. */
MX_API const char *mx_lm_supported_types(void);

/* ---- KV cache ------------------------------------------------------------
 * One (keys, values) pair per layer, (B, n_kv_heads, capacity, head_dim),
 * grown in steps of 256 positions and written with slice_update, as
 * mlx-lm's KVCache. */
typedef struct mx_lm_cache mx_lm_cache;
MX_API mx_lm_cache *mx_lm_cache_new(const mx_lm_model *m);
MX_API void mx_lm_cache_free(mx_lm_cache *c); /* NULL: no-op */
/* Number of positions held. */
MX_API int64_t mx_lm_cache_offset(const mx_lm_cache *c);
/* Evaluates the cached keys and values (drops their graphs). */
MX_API int mx_lm_cache_eval(mx_lm_cache *c);

/* tokens: integer (B, T) or (T,). Returns logits (B, T, vocab) (lazy),
 * appending T positions to the cache (cache may be NULL: no cache). */
MX_API mx_array *mx_lm_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache);

/* ---- generation -------------------------------------------------------- */
/* Picks the next token from logits (vocab,) (borrowed): return the id, or
 * a negative status. */
typedef int32_t (*mx_lm_sampler_fn)(void *ctx, mx_array *logits);
/* Called for every generated token; return non-zero to stop. */
typedef int (*mx_lm_token_fn)(void *ctx, int32_t id);

typedef struct {
  int max_tokens;        /* 256 */
  int prefill_step_size; /* prompt chunk, 2048 */
  bool stop_on_eos;      /* true */
  mx_lm_sampler_fn sampler; /* NULL: greedy (argmax) */
  void *sampler_ctx;
} mx_lm_generate_options;
#define MX_LM_GENERATE_DEFAULTS {256, 2048, true, NULL, NULL}

typedef struct {
  int prompt_tokens, generation_tokens;
  double prompt_seconds, generation_seconds; /* prompt: until the first token */
  double prompt_tps, generation_tps;
  size_t peak_memory; /* bytes (mx_get_peak_memory at the end) */
  bool stopped_on_eos;
} mx_lm_generate_stats;

/* Generates up to max_tokens after the prompt ids, calling on_token (may be
 * NULL) for each. stats may be NULL. */
MX_API int mx_lm_generate(mx_lm_model *m, const int32_t *prompt, int nprompt,
                          const mx_lm_generate_options *opt, mx_lm_token_fn on_token, void *ctx,
                          mx_lm_generate_stats *stats);

/* ---- conversion -------------------------------------------------------- */
/* Converts a llama2.c checkpoint (legacy format: 7 int32 header, float32
 * tensors; a negative vocab size marks an unshared classifier) into a
 * Hugging Face-layout directory (config.json with model_type llama,
 * model.safetensors). The q/k rows are permuted from llama2.c's
 * interleaved RoPE pairs to HF's rotate-half layout, as transformers'
 * convert_llama_weights_to_hf does, so the result runs with standard RoPE. */
MX_API int mx_lm_convert_llama2c(const char *bin_path, const char *out_dir);

#ifdef __cplusplus
}
#endif
#endif /* MXC_LM_H */
