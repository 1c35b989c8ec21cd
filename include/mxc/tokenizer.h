/*
 * mxc/tokenizer.h — Hugging Face tokenizer.json and SentencePiece
 * tokenizer.model tokenizers, exact against the reference implementations.
 *
 *     mx_tokenizer *tok = mx_tokenizer_load("models/Llama-3-8B");  // dir or file
 *     if (!tok) { fprintf(stderr, "%s\n", mx_last_error()); return 1; }
 *     int32_t *ids; size_t n;
 *     if (mx_tokenizer_encode(tok, "Hello world", 11, true, &ids, &n)) ...;
 *     char *text; size_t len;
 *     mx_tokenizer_decode(tok, ids, n, false, &text, &len);   // "Hello world"
 *     free(ids); free(text);
 *
 *     // Streaming: print tokens as they are generated, whole characters only.
 *     mx_detokenizer *d = mx_detokenizer_new(tok, true);
 *     for (...) {
 *       const char *piece; size_t plen;
 *       mx_detokenizer_push(d, id, &piece, &plen);
 *       fwrite(piece, 1, plen, stdout);
 *     }
 *     mx_detokenizer_flush(d, &piece, &plen); fwrite(piece, 1, plen, stdout);
 *     mx_detokenizer_free(d);
 *     mx_tokenizer_free(tok);
 *
 * Supported (anything else fails to load with MX_ERR_UNSUPPORTED naming the
 * component, never a silently different tokenization):
 *   tokenizer.json  model BPE (byte-level, or SentencePiece-style with
 *                   byte_fallback / unk / fuse_unk, ignore_merges,
 *                   continuing_subword_prefix, end_of_word_suffix);
 *                   normalizers NFC NFD NFKC NFKD Lowercase Strip Replace
 *                   (string pattern) Prepend Sequence; pre-tokenizers
 *                   ByteLevel, Metaspace, Digits, WhitespaceSplit, Sequence,
 *                   Split with a string pattern or with the GPT-2, Llama 3
 *                   or Qwen 2 regex; added tokens with lstrip / rstrip /
 *                   single_word / normalized; post-processors
 *                   TemplateProcessing, ByteLevel, RobertaProcessing,
 *                   BertProcessing, Sequence; decoders ByteLevel, Metaspace,
 *                   ByteFallback, Fuse, Strip, Replace, Sequence.
 *   tokenizer.model SentencePiece BPE and unigram models with byte fallback,
 *                   identity normalizer (add_dummy_prefix,
 *                   remove_extra_whitespaces, escape_whitespaces).
 *
 * Text given to encode is UTF-8; invalid sequences are read as U+FFFD (as a
 * UTF-8 decoder following the Unicode "maximal subpart" rule does, which is
 * what Python and Node do when they decode such bytes). Decoded text is
 * always valid UTF-8.
 *
 * A tokenizer is immutable once loaded: encode/decode may run concurrently
 * from several threads on one tokenizer.
 */
#ifndef MXC_TOKENIZER_H
#define MXC_TOKENIZER_H

#include "mxc/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_tokenizer mx_tokenizer;

/* Load from a path: a tokenizer.json, a SentencePiece tokenizer.model, or a
 * model directory holding either (tokenizer.json preferred). A
 * tokenizer_config.json (and special_tokens_map.json) next to it supplies
 * bos/eos tokens and the chat template. NULL on failure. */
MX_API mx_tokenizer *mx_tokenizer_load(const char *path);
/* Load from the text of a tokenizer.json (len bytes) and optionally of a
 * tokenizer_config.json (config may be NULL). */
MX_API mx_tokenizer *mx_tokenizer_from_json(const char *json, size_t len,
                                            const char *config, size_t config_len);
/* Load from the bytes of a SentencePiece tokenizer.model. */
MX_API mx_tokenizer *mx_tokenizer_from_sentencepiece(const void *data, size_t len);
/* Free; NULL is a no-op. */
MX_API void mx_tokenizer_free(mx_tokenizer *tok);

/* Encode len bytes of UTF-8 text. With add_special, the post-processor's
 * tokens are added (e.g. BOS) as Hugging Face's `add_special_tokens=True`
 * (for tokenizer.model: BOS as sentencepiece's add_bos). Special-token
 * strings in the text are always recognised (tokenizer.json). On success
 * *ids is a malloc'd array of *n ids the caller frees (non-NULL even when
 * *n == 0). */
MX_API int mx_tokenizer_encode(const mx_tokenizer *tok, const char *text, size_t len,
                               bool add_special, int32_t **ids, size_t *n);
/* Decode n ids to malloc'd, NUL-terminated UTF-8 text (*len bytes, not
 * counting the NUL). skip_special drops special tokens (added tokens marked
 * special; control pieces of a tokenizer.model are always dropped, as
 * sentencepiece does). Out-of-range ids give MX_ERR_RANGE. */
MX_API int mx_tokenizer_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n,
                               bool skip_special, char **text, size_t *len);

/* Number of ids (largest id + 1, added tokens included). */
MX_API size_t mx_tokenizer_vocab_size(const mx_tokenizer *tok);
/* The token string of an id as stored in the vocabulary (e.g. "Ġworld",
 * "▁world", "<0x0A>"), or NULL when out of range. Valid while tok lives. */
MX_API const char *mx_tokenizer_id_to_token(const mx_tokenizer *tok, int32_t id);
/* The id of a vocabulary or added token string, or -1. */
MX_API int32_t mx_tokenizer_token_to_id(const mx_tokenizer *tok, const char *token);
/* Whether id is a special token (added token with "special": true, or a
 * control / unknown piece of a tokenizer.model). */
MX_API bool mx_tokenizer_is_special(const mx_tokenizer *tok, int32_t id);

/* BOS / EOS ids from tokenizer_config.json (or the SentencePiece model), -1
 * when the model has none. */
MX_API int32_t mx_tokenizer_bos_id(const mx_tokenizer *tok);
MX_API int32_t mx_tokenizer_eos_id(const mx_tokenizer *tok);
/* Special token strings from tokenizer_config.json: name is "bos_token",
 * "eos_token", "unk_token" or "pad_token". NULL when unset. */
MX_API const char *mx_tokenizer_special_token(const mx_tokenizer *tok, const char *name);
/* The chat template (Jinja source) from tokenizer_config.json, or NULL. */
MX_API const char *mx_tokenizer_chat_template(const mx_tokenizer *tok);
/* The tokenizer_config.json text the tokenizer was loaded with, or NULL. */
MX_API const char *mx_tokenizer_config_json(const mx_tokenizer *tok);

/* ---- streaming detokenizer ---------------------------------------------
 * Feeds ids one at a time and returns only text that is complete UTF-8, so
 * a character split over several tokens prints once it is whole. The
 * concatenation of everything returned (pushes then flush) equals
 * mx_tokenizer_decode of all ids. */
typedef struct mx_detokenizer mx_detokenizer;

MX_API mx_detokenizer *mx_detokenizer_new(const mx_tokenizer *tok, bool skip_special);
/* Add one id. *text / *len receive the newly complete text (possibly
 * empty); the pointer stays valid until the next call on d. */
MX_API int mx_detokenizer_push(mx_detokenizer *d, int32_t id, const char **text,
                               size_t *len);
/* Emit whatever is pending (incomplete bytes become U+FFFD) and reset. */
MX_API int mx_detokenizer_flush(mx_detokenizer *d, const char **text, size_t *len);
MX_API void mx_detokenizer_free(mx_detokenizer *d);

#ifdef __cplusplus
}
#endif
#endif /* MXC_TOKENIZER_H */
