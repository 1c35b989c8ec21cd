/* lm_internal.h — shared between the files of src/lm/model/. */
#ifndef MXC_LM_INTERNAL_H
#define MXC_LM_INTERNAL_H

#include <cjson/cJSON.h>

#include "internal.h"
#include "mxc/lm.h"

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
/* Reads a whole file into a NUL-terminated malloc'd buffer (NULL + error). */
char *mx__lm_read_file(const char *path, size_t *len);

/* llama.c: builds the module tree of a llama-family model from cfg
 * (float32 placeholder weights; quantized layers later). */
mx_nn_module *mx__lm_build_llama(const mx_lm_config *cfg);
/* The logits (B, T, vocab) of tokens (B, T). */
mx_array *mx__lm_llama_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache);

#endif
