/* lm_internal.h — shared between the files of src/lm/model/. */
#ifndef MXC_LM_INTERNAL_H
#define MXC_LM_INTERNAL_H

#include <cjson/cJSON.h>

#include "internal.h"
#include "mxc/lm.h"

/* Projections that read the same input, stacked for decode steps (one
 * GEMV instead of 2-3): q/k/v of an attention, gate/up of an MLP. The
 * stacked arrays own the data; each part's module holds a row-slice view of
 * them as its own parameter (the same values, no second copy), and the
 * stack is used only while every part still holds exactly that view (a
 * replaced or updated weight turns it off). */
#define MX__LM_MAX_STACK 3
typedef struct {
  int n, nparams, group_size, bits; /* n == 0: not stacked */
  const char *names[MX__LM_MAX_STACK]; /* the parts' child names */
  mx_array *stack[3];                  /* weight [, scales, biases] of all rows */
  mx_array *views[MX__LM_MAX_STACK][3]; /* retained: the parts' parameters */
  int64_t rows[MX__LM_MAX_STACK];
} mx__lm_stack;

struct mx_lm_model {
  mx_lm_config config;
  mx_nn_module *root;  /* "Model": children model [, lm_head] */
  mx_tokenizer *tokenizer;
  mx_array *rope_freqs; /* llama3 rope scaling: periods (head_dim / 2,), else NULL */
  mx__lm_stack *stacks; /* per layer [qkv, gate_up] (mx__lm_stack_projections), or NULL */
};

struct mx_lm_cache {
  int nlayers;
  int64_t offset;            /* positions processed */
  int64_t max_size, keep;    /* rotating (max_size > 0): mlx-lm's RotatingKVCache */
  int64_t idx;               /* rotating: the ring's next write slot (mlx-lm's _idx) */
  int64_t len;               /* rotating: slots of the buffers (filled or not) */
  int64_t *pos;              /* rotating: the position each slot holds, -1 when empty */
  int64_t pos_cap;
  mx_array **keys, **values; /* per layer (B, Hkv, slots, D), NULL until first use */
};

/* How one forward updates a rotating cache (the same for every layer): the
 * new buffer is the concatenation of segs (old slots [a, b), `zeros` empty
 * slots, or the new keys), then the new keys are written at write_at (when
 * >= 0), and attention sees slots [0, view). */
typedef struct {
  enum { MX__SEG_OLD, MX__SEG_ZEROS, MX__SEG_NEW } kind;
  int64_t a, b; /* OLD: the range; ZEROS: b - a slots */
} mx__lm_seg;
#define MX__LM_MAX_SEGS 8
typedef struct {
  mx__lm_seg segs[MX__LM_MAX_SEGS];
  int nsegs;
  bool identity; /* segs are the old buffer unchanged */
  int64_t write_at, view, new_len, new_idx;
  int64_t *pos;  /* the position of each of the view's slots (view entries) */
  bool window;   /* a multi-token update: slot j visible to the chunk's
                    token at slot s only when s - max_size < j */
} mx__lm_plan;

/* cache.c: the plan of an update of T tokens (pos malloc'd; free with
 * mx__lm_plan_free), applying it to one layer's buffer (returns the view),
 * and committing it once every layer is done. */
int mx__lm_plan_make(const mx_lm_cache *c, int64_t T, mx__lm_plan *p);
mx_array *mx__lm_plan_apply(const mx_lm_cache *c, const mx__lm_plan *p, mx_array **buf,
                            mx_array *x);
int mx__lm_plan_commit(mx_lm_cache *c, mx__lm_plan *p, int64_t T);
void mx__lm_plan_free(mx__lm_plan *p);
/* The plain cache: writes x (B, H, T, D) at offset into *buf (grown in
 * steps of 256 positions); returns the filled part [:offset + T]. The
 * first update of an empty cache keeps x as the buffer when own (x's
 * storage is exactly x: an op's output, or a view of one that spans all
 * of it), else a copy of it. */
mx_array *mx__lm_cache_put(mx_array **buf, mx_array *x, int64_t offset, bool own);
/* The dtype of the model's activations (its embedding / scales dtype). */
mx_dtype mx__lm_model_dtype(const mx_lm_model *m);

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
mx_array *mx__lm_llama_forward(mx_lm_model *m, mx_array *tokens, mx_lm_cache *cache,
                               bool last);
/* Decode steps over static caches, replayable as a captured GPU graph:
 * whether the model can run them for caches of `capacity` positions (no
 * attention masks needed: no longrope, no soft-capping, no sliding window
 * shorter than the capacity; a flash-attention dtype and head size), and
 * the logits of tokens (B, T) at position pos[0] (int32, one element),
 * each layer's keys/values (B, KV, capacity, D) written in place at pos
 * and attended up to pos + T. The caller advances pos. */
bool mx__lm_static_ok(const mx_lm_model *m, int64_t capacity);
mx_array *mx__lm_forward_static(mx_lm_model *m, mx_array *tokens, mx_array **keys,
                                mx_array **values, mx_array *pos);
/* Stacks each layer's q/k/v and gate/up projections (plain or quantized
 * Linear layers without bias, see mx__lm_stack) for mx__lm_forward_static;
 * a no-op once done. Layers that do not qualify keep their projections. */
int mx__lm_stack_projections(mx_lm_model *m);
void mx__lm_stacks_free(mx_lm_model *m);
/* generate.c: decode steps run so far as replays of a captured graph. */
uint64_t mx__lm_replayed_steps(void);
/* The logits of tokens (B, T) without a cache, token i attending to token j
 * exactly when visible[i * T + j] (an explicit mask: the reference the
 * tests compare caches against). */
mx_array *mx__lm_forward_masked(mx_lm_model *m, mx_array *tokens, const bool *visible);

/* convert.c: mx__lm_convert, mx__lm_export_gguf (see convert.h, which the
 * CLI includes without the library internals). */
#include "convert.h"

#endif
