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
 *
 *     // a bounded cache (mlx_lm --max-kv-size 512) and prompt cache files:
 *     mx_lm_cache *r = mx_lm_cache_new_rotating(m, 512, 4);
 *     mx_lm_cache_save(r, "prompt.safetensors", NULL);
 *     mx_lm_cache *again = mx_lm_cache_load(m, "prompt.safetensors", NULL);
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
 * and "llama3"), mistral (sliding_window), qwen2 (q/k/v biases), qwen3
 * (q_norm/k_norm) (qwen2/qwen3: use_sliding_window, max_window_layers),
 * gemma, gemma2 (soft-capping, alternating sliding windows), phi3 (fused
 * projections, partial rotary, longrope).
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
#include "mxc/io.h"
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

#define MX_LM_MAX_LAYERS 256     /* layers a sliding-window pattern can describe */
#define MX_LM_MAX_ROPE_PAIRS 128 /* longrope factors: rotary_dim up to 256 */

typedef enum {
  MX_LM_ACT_SILU = 0,      /* the MLP's gate: silu (llama family, phi3) */
  MX_LM_ACT_GELU_TANH = 1, /* gelu, tanh approximation (gemma, gemma2) */
} mx_lm_activation;

/* The parsed config.json (+ generation_config.json). The struct describes
 * the model completely: mx_lm_load builds the module tree from it alone.
 * Everything after "architecture details" is zero for a plain llama, so a
 * zero-initialised config with the sizes filled in is a llama model. */
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

  /* ---- architecture details (0 / false: the llama behaviour) ---- */
  bool gemma_norm;     /* gemma, gemma2: RMSNorm scales by (1 + weight), in float32 */
  bool embed_scale;    /* gemma, gemma2: embeddings * sqrt(hidden_size) */
  bool sandwich_norms; /* gemma2: attention output normed (post_attention_layernorm),
                          MLP wrapped in pre_/post_feedforward_layernorm */
  mx_lm_activation activation;
  double final_logit_softcapping; /* gemma2: logits = cap * tanh(logits / cap); 0: none */
  double attn_logit_softcapping;  /* gemma2: the same on attention scores; 0: none */
  double query_pre_attn_scalar;   /* scores scaled by its ^-0.5; 0: head_dim (the usual) */
  /* Sliding-window attention: layer i with sliding_layers[i] attends to the
   * last sliding_window positions only (query - key < sliding_window), as
   * transformers' sliding_attention layers. mistral: every layer; qwen2 /
   * qwen3 with use_sliding_window: layers >= max_window_layers (or as
   * "layer_types" says); gemma2: layers 0, 2, 4, ... 0: no sliding window.
   * (A sliding window with more than MX_LM_MAX_LAYERS layers is refused.) */
  int64_t sliding_window;
  bool sliding_layers[MX_LM_MAX_LAYERS];
  int64_t rotary_dim; /* features rotated per head (phi3 partial_rotary_factor); 0: head_dim */
  bool fused_qkv;     /* phi3: self_attn.qkv_proj (q, k, v rows stacked) */
  bool fused_gate_up; /* phi3: mlp.gate_up_proj (gate, up rows stacked) */
  /* phi3 "longrope" (Phi-3.5, Phi-3-128k): the period of rotary pair i is
   * factor[i] * rope_theta^(2i / rotary_dim), with the long factors once the
   * sequence (cache offset + new tokens) exceeds longrope_original_max; q and
   * k are scaled by longrope_attn_factor. */
  bool longrope;
  int64_t longrope_original_max;
  double longrope_attn_factor;
  float longrope_short_factor[MX_LM_MAX_ROPE_PAIRS], longrope_long_factor[MX_LM_MAX_ROPE_PAIRS];
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
 * One (keys, values) pair per layer, (B, n_kv_heads, slots, head_dim), keys
 * stored after RoPE at their original positions.
 *
 * mx_lm_cache_new: mlx-lm's KVCache, grown in steps of 256 positions and
 * written in place.
 *
 * mx_lm_cache_new_rotating: mlx-lm's RotatingKVCache(max_size, keep) (its
 * generate uses keep = 4 with --max-kv-size): memory stays bounded while
 * the offset (the positions seen, used for RoPE) keeps growing.
 *   - one new token at a time: written into a ring of max_size slots; once
 *     full, the oldest slot after the first `keep` is overwritten, and the
 *     token attends to every slot (the first keep positions + the last
 *     max_size - keep).
 *   - T > 1 new tokens (a prompt chunk): the slots are put in temporal
 *     order, trimmed to the first keep + the last max_size - 1 - keep
 *     positions, and the T tokens appended (briefly max_size - 1 + T slots,
 *     so every token sees max_size positions); token i of the chunk, at slot
 *     s, attends to the slots s - max_size < j <= s — as mlx-lm's
 *     create_causal_mask(T, min(max_size - 1, offset), window=max_size),
 *     which can hide the kept first positions from late tokens of a long
 *     chunk.
 * The model's own sliding window (mistral, qwen2, gemma2) applies on top, by
 * position. */
typedef struct mx_lm_cache mx_lm_cache;
MX_API mx_lm_cache *mx_lm_cache_new(const mx_lm_model *m);
/* A rotating cache; max_size > keep >= 0. */
MX_API mx_lm_cache *mx_lm_cache_new_rotating(const mx_lm_model *m, int64_t max_size, int64_t keep);
MX_API void mx_lm_cache_free(mx_lm_cache *c); /* NULL: no-op */
/* Number of positions processed (grows past max_size for a rotating cache). */
MX_API int64_t mx_lm_cache_offset(const mx_lm_cache *c);
/* Number of positions held, as mlx-lm's size(): offset, or min(offset,
 * max_size) for a rotating cache (whose buffers briefly hold up to
 * max_size - 1 + T slots after a T-token update). */
MX_API int64_t mx_lm_cache_size(const mx_lm_cache *c);
/* max_size of a rotating cache, 0 for mx_lm_cache_new's. */
MX_API int64_t mx_lm_cache_max_size(const mx_lm_cache *c);
/* Evaluates the cached keys and values (drops their graphs). */
MX_API int mx_lm_cache_eval(mx_lm_cache *c);

/* ---- prompt cache files (mlx-lm's save_prompt_cache / load_prompt_cache) --
 * A safetensors file: tensors "<layer>.0" (keys) and "<layer>.1" (values),
 * (B, n_kv_heads, slots, head_dim), the filled slots only; string metadata
 * "2.<layer>": the cache class ("KVCache" or "RotatingKVCache"), for a
 * RotatingKVCache "0.<layer>.0".."0.<layer>.3": keep, max_size, offset and
 * the ring index (for a KVCache "0.<layer>": ""), and "1.<key>" for each
 * entry of the caller's metadata (mlx_lm.cache_prompt writes "model",
 * "chat_template" and "tokenizer_config"). */
/* Saves the cache (evaluating it). metadata (may be NULL): string entries. */
MX_API int mx_lm_cache_save(mx_lm_cache *c, const char *path, const mx_metadata *metadata);
/* Loads a cache file for model m. Errors name the file and what does not
 * match the model (layer count, kv heads, head_dim, dtype) or is malformed.
 * metadata (may be NULL): receives the caller's metadata (keys without the
 * "1." prefix; free with mx_metadata_free). */
MX_API mx_lm_cache *mx_lm_cache_load(const mx_lm_model *m, const char *path,
                                     mx_metadata **metadata);

/* tokens: integer (B, T) or (T,). Returns logits (B, T, vocab) (lazy),
 * appending T positions to the cache (cache may be NULL: no cache). */
MX_API mx_array *mx_lm_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache);
/* The same, but only the last position's logits (B, 1, vocab): the head
 * (a large share of a short prompt's work) runs on one position. What
 * generation uses; the cache is updated exactly as by mx_lm_forward. */
MX_API mx_array *mx_lm_forward_last(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache);

/* Gradient checkpointing for training (mlx-lm's --grad-checkpoint): when on,
 * forwards without a cache run each decoder layer under mx_checkpoint, so
 * its activations are recomputed in the backward pass instead of kept
 * (less memory, about one more forward of compute). Results are unchanged. */
MX_API int mx_lm_set_grad_checkpoint(mx_lm_model *m, bool on);

/* ---- generation -------------------------------------------------------- */
/* Picks the next token from logits (vocab,) (borrowed): return the id, or
 * a negative status. */
typedef int32_t (*mx_lm_sampler_fn)(void *ctx, mx_array *logits);
/* Lazy form: returns the id as a (not yet evaluated) integer array of one
 * element built from logits (vocab,) with mxc ops, or NULL on error. */
typedef mx_array *(*mx_lm_lazy_sampler_fn)(void *ctx, mx_array *logits);
/* Called for every generated token; return non-zero to stop. */
typedef int (*mx_lm_token_fn)(void *ctx, int32_t id);

typedef struct {
  int max_tokens;        /* 256 */
  int prefill_step_size; /* prompt chunk, 2048 */
  bool stop_on_eos;      /* true */
  mx_lm_sampler_fn sampler; /* NULL: greedy (argmax) */
  void *sampler_ctx;
  int64_t max_kv_size;   /* > 0: a rotating cache of that size (keep 4, as
                            mlx-lm); 0: unbounded. Ignored with prompt_cache. */
  mx_lm_cache *prompt_cache; /* borrowed; NULL: a fresh cache. Otherwise the
                                prompt continues the positions it holds, and
                                it is updated in place (mlx-lm's prompt_cache). */
  mx_lm_lazy_sampler_fn lazy_sampler; /* used when sampler is NULL (ctx:
                                         sampler_ctx); NULL: greedy */
} mx_lm_generate_options;
#define MX_LM_GENERATE_DEFAULTS {256, 2048, true, NULL, NULL, 0, NULL, NULL}
/* Decoding is pipelined as mlx-lm's generate_step: with a lazy (or the
 * greedy) sampler and a cache of its own, step t+1 is queued with
 * mx_async_eval before the id of step t is read, so on a GPU the host
 * builds the next step while the device runs the current one. (An eager
 * `sampler`, or a caller's prompt_cache, which must not run one position
 * ahead, decode one step at a time.) On the GPU, for models whose attention
 * needs no mask and without max_kv_size, one decode step is captured as a
 * CUDA graph over static caches and replayed per token, the ids staying on
 * the device (same ids; MXC_CUDA_GRAPH=0 turns it off; docs/cuda.md). */

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
