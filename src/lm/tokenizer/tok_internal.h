/* tok_internal.h — data structures shared by the tokenizer's files. */
#ifndef MXC_TOK_INTERNAL_H
#define MXC_TOK_INTERNAL_H

#include "internal.h"
#include "mxc/tokenizer.h"

#include <stdint.h>
#include <string.h>

/* ---- growable byte buffer ------------------------------------------------ */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} mx__buf;

void mx__buf_reserve(mx__buf *b, size_t extra);
static inline void mx__buf_put(mx__buf *b, const void *s, size_t n) {
  if (b->n + n + 1 > b->cap) mx__buf_reserve(b, n + 1);
  if (b->oom) return;
  memcpy(b->p + b->n, s, n);
  b->n += n;
}
static inline void mx__buf_putc(mx__buf *b, char c) { mx__buf_put(b, &c, 1); }
void mx__buf_puts(mx__buf *b, const char *s);
void mx__buf_printf(mx__buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* NUL-terminate and hand over the buffer (caller frees); NULL on OOM. */
char *mx__buf_finish(mx__buf *b, size_t *len);
void mx__buf_free(mx__buf *b);

/* ---- growable id vector --------------------------------------------------- */
typedef struct {
  int32_t *p;
  size_t n, cap;
  int oom;
} mx__ids;
void mx__ids_reserve(mx__ids *v, size_t extra);
static inline void mx__ids_push(mx__ids *v, int32_t id) {
  if (v->n + 1 > v->cap) mx__ids_reserve(v, 1);
  if (v->oom) return;
  v->p[v->n++] = id;
}

/* ---- UTF-8 ---------------------------------------------------------------- */
/* Decode one code point at s[0..n) (n >= 1). Returns its length; invalid
 * input yields cp = 0xFFFD and the length of the maximal invalid subpart
 * (the Unicode / WHATWG rule, same as Rust's from_utf8_lossy). */
size_t mx__utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
size_t mx__utf8_encode(uint32_t cp, char *out);
/* Whether s is valid UTF-8. */
bool mx__utf8_valid(const char *s, size_t n);
/* Append s to b with invalid sequences replaced by U+FFFD. */
void mx__utf8_lossy(mx__buf *b, const char *s, size_t n);
/* Unicode White_Space (Rust char::is_whitespace, regex \s). */
bool mx__is_white_space(uint32_t cp);
/* Python str.isspace. */
bool mx__py_isspace(uint32_t cp);
/* Unicode letter (L*) / number (N*) categories. */
bool mx__is_letter(uint32_t cp);
bool mx__is_number(uint32_t cp);

/* ---- string -> int32 hash map ------------------------------------------- */
typedef struct {
  uint32_t *slots; /* index+1 into entries, 0 = empty */
  size_t mask;
  const char **keys;
  uint32_t *lens;
  int32_t *vals;
  size_t n, cap;
} mx__strmap;
int mx__strmap_init(mx__strmap *m, size_t expected);
void mx__strmap_free(mx__strmap *m);
/* Keys are not copied: they must outlive the map. Returns 1 if inserted, 0
 * if the key existed (value overwritten when overwrite), -1 on OOM. */
int mx__strmap_put(mx__strmap *m, const char *key, size_t len, int32_t val, bool overwrite);
int32_t mx__strmap_get(const mx__strmap *m, const char *key, size_t len); /* -1 */
uint64_t mx__hash_bytes(const void *p, size_t n);

/* ---- (id, id) -> (rank, id) merge map ------------------------------------ */
typedef struct {
  uint64_t *keys; /* (a << 32 | b) + 1; 0 = empty */
  int32_t *rank, *out;
  size_t mask, n;
} mx__pairmap;
int mx__pairmap_init(mx__pairmap *m, size_t expected);
void mx__pairmap_free(mx__pairmap *m);
void mx__pairmap_put(mx__pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t out);
static inline bool mx__pairmap_get(const mx__pairmap *m, int32_t a, int32_t b, int32_t *rank,
                                   int32_t *out) {
  if (!m->mask) return false;
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  uint64_t h = k * 0x9E3779B97F4A7C15ull;
  size_t i = (size_t)(h >> 20) & m->mask;
  for (;;) {
    uint64_t kk = m->keys[i];
    if (kk == k) {
      *rank = m->rank[i];
      *out = m->out[i];
      return true;
    }
    if (!kk) return false;
    i = (i + 1) & m->mask;
  }
}

/* ---- tokenizer pipeline components --------------------------------------- */
enum { MX__NORM_NFC, MX__NORM_NFD, MX__NORM_NFKC, MX__NORM_NFKD, MX__NORM_LOWER,
       MX__NORM_STRIP, MX__NORM_REPLACE, MX__NORM_PREPEND };
typedef struct {
  int kind;
  char *a, *b; /* Replace: pattern, content; Prepend: text */
  bool left, right;
} mx__normalizer;

enum { MX__SPLIT_REGEX_GPT2 = 1, MX__SPLIT_REGEX_LLAMA3, MX__SPLIT_REGEX_QWEN2,
       MX__SPLIT_STRING };
enum { MX__BEH_REMOVED, MX__BEH_ISOLATED, MX__BEH_MERGED_PREV, MX__BEH_MERGED_NEXT,
       MX__BEH_CONTIGUOUS };
enum { MX__PRE_SPLIT, MX__PRE_BYTELEVEL, MX__PRE_METASPACE, MX__PRE_DIGITS,
       MX__PRE_WSSPLIT };
typedef struct {
  int kind;
  int pattern;  /* MX__SPLIT_* */
  char *str;    /* string pattern / Metaspace replacement */
  int behavior; /* MX__BEH_* */
  bool invert;
  bool add_prefix_space, use_regex; /* ByteLevel */
  int prepend_scheme;               /* Metaspace: 0 always, 1 first, 2 never */
  bool split;                       /* Metaspace */
  bool individual;                  /* Digits */
} mx__pretok;

enum { MX__DEC_BYTELEVEL, MX__DEC_METASPACE, MX__DEC_BYTEFALLBACK, MX__DEC_FUSE,
       MX__DEC_STRIP, MX__DEC_REPLACE };
typedef struct {
  int kind;
  char *a, *b;    /* Replace pattern/content; Metaspace replacement; Strip content */
  int start, stop; /* Strip */
  int prepend_scheme;
} mx__decoder;

typedef struct {
  char *content;
  size_t len;
  int32_t id;
  bool special, lstrip, rstrip, single_word, normalized;
} mx__added;

/* A byte trie over added-token contents (leftmost-longest matching). */
typedef struct {
  int32_t child, sibling, token; /* token index or -1 */
  uint8_t byte;
} mx__trie_node;
typedef struct {
  mx__trie_node *nodes;
  size_t n, cap;
  uint8_t first[32]; /* bitmap of first bytes */
} mx__trie;

/* SentencePiece model parts (tokenizer.model). */
enum { MX__SP_NORMAL = 1, MX__SP_UNKNOWN = 2, MX__SP_CONTROL = 3, MX__SP_USER = 4,
       MX__SP_UNUSED = 5, MX__SP_BYTE = 6 };
typedef struct {
  int model_type; /* 1 unigram, 2 BPE */
  float *scores;
  uint8_t *types;
  bool byte_fallback, add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix;
  int32_t unk_id, bos_id, eos_id, pad_id;
  int32_t byte_ids[256];
  mx__trie user; /* user-defined symbols */
  size_t max_piece_len;
  float min_score, max_score;
} mx__spm;

enum { MX__TOK_HF = 1, MX__TOK_SPM = 2 };

struct mx_tokenizer {
  int kind;
  /* vocabulary: id -> token string (as in the file) and id -> decoded bytes */
  int32_t n_ids;
  char **tokens;   /* NUL-terminated, NULL for holes */
  uint32_t *token_len;
  mx__strmap vocab; /* model vocabulary: key = byte form (byte-level: raw bytes) */
  mx__strmap all;   /* token string (file form) -> id, added tokens included */
  uint8_t *special; /* per id */
  /* BPE model */
  mx__pairmap merges;
  bool byte_level;  /* pre-tokenizer maps bytes to chars; vocab keyed on raw bytes */
  char **raw;       /* byte-level: id -> raw bytes (NULL if not byte-level) */
  uint32_t *raw_len;
  int32_t byte_id[256]; /* byte-level: id of each single byte, or -1 */
  int32_t fallback_id[256]; /* <0xNN> ids or -1 */
  bool byte_fallback, fuse_unk, ignore_merges;
  int32_t unk_id;
  char *cont_prefix, *eow_suffix;
  /* pipeline */
  mx__normalizer *norms;
  int n_norms;
  mx__pretok *pretoks;
  int n_pretoks;
  bool simple_split; /* pretoks == [Split(known regex, Isolated)] (+ ByteLevel no-op) */
  int simple_pattern;
  mx__decoder *decs;
  int n_decs;
  bool has_decoder;
  /* added tokens */
  mx__added *added;
  int n_added;
  mx__trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
  /* post-processor (single sequence) */
  mx__ids post_prefix, post_suffix;
  /* config */
  char *bos_token, *eos_token, *unk_token, *pad_token, *chat_template, *config_json;
  int32_t bos_id, eos_id;
  /* SentencePiece */
  mx__spm spm;
};

/* trie */
int mx__trie_add(mx__trie *t, const char *s, size_t n, int32_t token);
void mx__trie_free(mx__trie *t);
/* Longest token matching at s[0..n); returns its length (0 if none). */
size_t mx__trie_longest(const mx__trie *t, const uint8_t *s, size_t n, int32_t *token);

/* GPT-2 byte <-> unicode map. */
uint32_t mx__byte_to_cp(uint8_t b);
int mx__cp_to_byte(uint32_t cp); /* -1 if cp is not in the map */

/* Pre-tokenizer split for the known regexes: the end of the match that
 * starts at s[i] (i < n). */
size_t mx__split_match(int pattern, const uint8_t *s, size_t n, size_t i);

/* BPE over ids of one word (tokenizer.json semantics). */
typedef struct mx__bpe_scratch mx__bpe_scratch;
mx__bpe_scratch *mx__bpe_scratch_new(void);
void mx__bpe_scratch_free(mx__bpe_scratch *s);
/* Tokenize one pre-token (byte-level: raw bytes) and append ids to out. */
int mx__bpe_word(const mx_tokenizer *tok, mx__bpe_scratch *s, const char *w, size_t n,
                 mx__ids *out);

/* Normalize s with the tokenizer's normalizers into out. */
int mx__normalize(const mx_tokenizer *tok, const char *s, size_t n, mx__buf *out);

/* SentencePiece */
int mx__spm_load(mx_tokenizer *tok, const uint8_t *data, size_t len);
int mx__spm_encode(const mx_tokenizer *tok, const char *text, size_t len, bool add_special,
                   mx__ids *out);
int mx__spm_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                   mx__buf *out);

/* tokenizer.json decode */
int mx__hf_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                  mx__buf *out);

/* tokenizer.c: allocation with defaults; grow id tables to n ids;
 * tokenizer_config.json / special_tokens_map.json */
mx_tokenizer *mx__tokenizer_alloc(void);
int mx__tokenizer_grow(mx_tokenizer *tok, int32_t n);
int mx__load_config(mx_tokenizer *tok, const char *text, size_t len);

/* read a whole file (malloc'd, NUL-terminated) */
char *mx__read_file(const char *path, size_t *len);

#endif
