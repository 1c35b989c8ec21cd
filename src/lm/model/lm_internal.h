/* lm_internal.h — shared between the files of src/lm/model/. */
#ifndef MXC_LM_INTERNAL_H
#define MXC_LM_INTERNAL_H

#include <cjson/cJSON.h>

#include "internal.h"
#include "mxc/lm.h"

/* What the architectures beyond the llama family add to mx_lm_config
 * (parsed from config.json with it). */
#define MX__LM_MAX_ROPE_PAIRS 128 /* head_dim up to 256 */
typedef enum { MX__LM_ACT_SILU = 0, MX__LM_ACT_GELU_TANH = 1 } mx__lm_act;
typedef struct {
  bool gemma_norm;     /* gemma/gemma2: RMSNorm scales by (1 + weight) */
  bool embed_scale;    /* gemma/gemma2: embeddings * sqrt(hidden_size) */
  bool sandwich_norms; /* gemma2: attention output normed, pre/post feedforward norms */
  mx__lm_act act;      /* the MLP's gate activation */
  double final_softcap, attn_softcap; /* gemma2: cap * tanh(x / cap); 0: none */
  double attn_scale;   /* scores scale: query_pre_attn_scalar^-0.5 (gemma2), else head_dim^-0.5 */
  int64_t sliding_window; /* > 0: the sliding layers see the last `sliding_window` positions */
  bool sliding_even;   /* gemma2: layers 0, 2, 4, ... slide; the others are global */
  int64_t rotary_dim;  /* rotated features per head (phi3 partial_rotary_factor), else head_dim */
  bool fused_qkv;      /* phi3: self_attn.qkv_proj */
  bool fused_gate_up;  /* phi3: mlp.gate_up_proj */
  /* phi3 "longrope" (Phi-3.5, Phi-3-128k): the period of rotary pair i is
   * factor[i] * base^(2i / rotary_dim), with the long factors once the
   * sequence (cache offset + new tokens) exceeds original_max; q and k are
   * scaled by attn_factor. */
  bool longrope;
  int64_t longrope_original_max;
  double longrope_attn_factor;
  float longrope_short[MX__LM_MAX_ROPE_PAIRS], longrope_long[MX__LM_MAX_ROPE_PAIRS];
} mx__lm_arch;

struct mx_lm_model {
  mx_lm_config config;
  mx_nn_module *root;  /* "Model": children model [, lm_head] */
  mx_tokenizer *tokenizer;
  mx_array *rope_freqs; /* llama3 rope scaling: periods (head_dim / 2,), else NULL */
};

struct mx_lm_cache {
  int nlayers;
  int64_t offset;
  mx_array **keys, **values; /* per layer (B, Hkv, capacity, D), NULL until first use */
};

/* config.c: parses the text of config.json into cfg (generation_config may
 * be NULL); `where` names the file in messages. *tie_given (may be NULL):
 * whether config.json states tie_word_embeddings. */
int mx__lm_parse_config(const char *json, const char *generation_json, const char *where,
                        mx_lm_config *cfg, bool *tie_given);
/* The arch extras of cfg: those parsed with it by the last
 * mx__lm_parse_config on this thread (the config struct is public and
 * load.c hands only it to the builder), else the defaults of its
 * model_type; an error when a gemma2/phi3 config has no parsed extras. */
int mx__lm_arch_of(const mx_lm_config *cfg, mx__lm_arch *out);
/* Reads a whole file into a NUL-terminated malloc'd buffer (NULL + error). */
char *mx__lm_read_file(const char *path, size_t *len);

/* llama.c: builds the module tree of a llama-family model from cfg
 * (float32 placeholder weights; quantized layers later). */
mx_nn_module *mx__lm_build_llama(const mx_lm_config *cfg);
/* The logits (B, T, vocab) of tokens (B, T). */
mx_array *mx__lm_llama_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache);

/* convert.c: mx__lm_convert, mx__lm_export_gguf (see convert.h, which the
 * CLI includes without the library internals). */
#include "convert.h"

#endif
