/*
 * mxc/tokenizer_train.h — training a byte-level BPE tokenizer on a text
 * corpus, as Hugging Face `tokenizers`' BpeTrainer with the ByteLevel
 * pre-tokenizer, written as a tokenizer.json that mx_tokenizer_load and
 * Hugging Face `tokenizers` load and encode identically.
 *
 *     mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
 *     o.vocab_size = 4096;
 *     const char *specials[] = {"<|bos|>", "<|eos|>"};
 *     o.special_tokens = specials;
 *     o.num_special_tokens = 2;
 *     mx_bpe_model *m = mx_bpe_train_file("corpus.txt", &o);
 *     if (!m || mx_bpe_model_save(m, "tok")) fprintf(stderr, "%s\n", mx_last_error());
 *     mx_bpe_model_free(m);
 *     mx_tokenizer *tok = mx_tokenizer_load("tok");   // tok/tokenizer.json
 *
 * The algorithm, step by step as HF's BpeTrainer (so that the merges are
 * the same, ties included):
 *   1. The corpus is cut into lines (each keeping its "\n"), as HF's
 *      `train(files)` reads them; invalid UTF-8 is read as U+FFFD. Each line
 *      is split with the GPT-2 regex and each piece's bytes are mapped to
 *      GPT-2's bytes_to_unicode characters (ByteLevel, no prefix space).
 *      Identical pieces ("words") are counted.
 *   2. Vocabulary: the special tokens (ids 0.., in the order given), then
 *      the alphabet sorted by code point: all 256 byte characters, or with
 *      seen_alphabet_only those occurring in the corpus (HF's default when
 *      no initial_alphabet is given).
 *   3. Pair counts over all words (weighted by word count) go into a
 *      max-heap ordered by count, ties to the smaller (left id, right id).
 *      Repeatedly the top pair is merged (a stale heap entry is re-pushed
 *      with its current count), the counts of the neighbouring pairs are
 *      updated incrementally in the words that held it, and new pairs are
 *      pushed; until the vocabulary reaches vocab_size, no pair is left, or
 *      the top count is below min_frequency. A merge whose result is already
 *      a token reuses its id (HF does the same), so the vocabulary can end
 *      smaller than the number of merges suggests.
 *
 * Errors: NULL / a negative status, mx_last_error() naming the file or
 * option at fault.
 */
#ifndef MXC_TOKENIZER_TRAIN_H
#define MXC_TOKENIZER_TRAIN_H

#include "mxc/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t vocab_size;                /* target size, special tokens and alphabet included */
  int64_t min_frequency;             /* a pair seen fewer times is never merged (0: any) */
  const char *const *special_tokens; /* ids 0..num_special_tokens-1 */
  int num_special_tokens;
  bool seen_alphabet_only; /* false: all 256 byte characters are tokens */
} mx_bpe_train_options;
#define MX_BPE_TRAIN_DEFAULTS ((mx_bpe_train_options){.vocab_size = 4096})

typedef struct mx_bpe_model mx_bpe_model;

/* Train on len bytes of text. NULL on failure. */
MX_API mx_bpe_model *mx_bpe_train(const char *text, size_t len, const mx_bpe_train_options *o);
/* Train on the contents of a file. */
MX_API mx_bpe_model *mx_bpe_train_file(const char *path, const mx_bpe_train_options *o);
/* Free; NULL is a no-op. */
MX_API void mx_bpe_model_free(mx_bpe_model *m);

/* Number of tokens (special tokens included). */
MX_API int64_t mx_bpe_model_vocab_size(const mx_bpe_model *m);
/* Number of merges as written to tokenizer.json (a pair merged twice by
 * the trainer, which HF's trainer can do, is written once, at its last
 * rank, as HF does). */
MX_API int64_t mx_bpe_model_num_merges(const mx_bpe_model *m);
/* Token text of an id (byte-level characters; special tokens verbatim), or
 * NULL when out of range. Valid while m lives. */
MX_API const char *mx_bpe_model_token(const mx_bpe_model *m, int64_t id);
/* The ids of merge i (0 <= i < num_merges). */
MX_API int mx_bpe_model_merge(const mx_bpe_model *m, int64_t i, int32_t *left, int32_t *right);

/* The tokenizer.json text (malloc'd; free with free()): model BPE with
 * vocab and merges, ByteLevel pre-tokenizer (GPT-2 regex, no prefix space)
 * and decoder, the special tokens as added tokens. */
MX_API char *mx_bpe_model_tokenizer_json(const mx_bpe_model *m);
/* Writes dir/tokenizer.json and dir/tokenizer_config.json (bos_token: the
 * first special token, eos_token: the second, or the first when there is
 * one). dir must exist. */
MX_API int mx_bpe_model_save(const mx_bpe_model *m, const char *dir);

#ifdef __cplusplus
}
#endif
#endif /* MXC_TOKENIZER_TRAIN_H */
