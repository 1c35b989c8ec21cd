/* pretokenize.c — hand-written equivalents of the split regexes used by
 * byte-level BPE tokenizers. Each function returns where the regex's match
 * starting at s[i] ends, following the regex engine's ordered alternation and
 * backtracking exactly:
 *
 *   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   Qwen 2:  the Llama 3 pattern with \p{N} instead of \p{N}{1,3}
 *
 * The input is valid UTF-8 (encode replaces invalid sequences first). */
#include "tok_internal.h"

enum { C_L = 1, C_N = 2, C_S = 4, C_NL = 8 };

static uint8_t ascii_class[128];
static int ascii_ready;

static void init_ascii(void) {
  for (int c = 0; c < 128; c++) {
    uint8_t k = 0;
    if (mx__is_letter((uint32_t)c)) k |= C_L;
    if (mx__is_number((uint32_t)c)) k |= C_N;
    if (mx__is_white_space((uint32_t)c)) k |= C_S;
    if (c == '\r' || c == '\n') k |= C_NL;
    ascii_class[c] = k;
  }
  __atomic_store_n(&ascii_ready, 1, __ATOMIC_RELEASE);
}

/* Class of the code point at s[i]; *len receives its byte length. */
static inline int cls(const uint8_t *s, size_t n, size_t i, size_t *len, uint32_t *cpo) {
  uint8_t c = s[i];
  if (c < 0x80) {
    *len = 1;
    *cpo = c;
    return ascii_class[c];
  }
  uint32_t cp;
  *len = mx__utf8_decode(s + i, n - i, &cp);
  *cpo = cp;
  if (mx__is_white_space(cp)) return C_S;
  if (mx__is_letter(cp)) return C_L;
  if (mx__is_number(cp)) return C_N;
  return 0;
}

static inline size_t run_of(const uint8_t *s, size_t n, size_t i, int mask) {
  while (i < n) {
    size_t l;
    uint32_t cp;
    if (!(cls(s, n, i, &l, &cp) & mask)) break;
    i += l;
  }
  return i;
}

/* run of chars that are none of \s \p{L} \p{N} */
static inline size_t run_other(const uint8_t *s, size_t n, size_t i) {
  while (i < n) {
    size_t l;
    uint32_t cp;
    if (cls(s, n, i, &l, &cp) & (C_L | C_N | C_S)) break;
    i += l;
  }
  return i;
}

static inline int lower_ascii(uint32_t c) { return (c >= 'A' && c <= 'Z') ? (int)(c | 32) : (int)c; }

/* Contractions after an apostrophe at s[i]; 0 if none. ci: case-insensitive
 * (Unicode simple folding: 's' also matches U+017F LATIN SMALL LETTER LONG S,
 * 'k' is not in the set). */
static size_t contraction(const uint8_t *s, size_t n, size_t i, bool ci) {
  size_t j = i + 1;
  if (j >= n) return 0;
  uint32_t a, b = 0;
  size_t la = mx__utf8_decode(s + j, n - j, &a), lb = 0;
  if (j + la < n) lb = mx__utf8_decode(s + j + la, n - j - la, &b);
  int x = ci ? lower_ascii(a) : (int)a, y = ci ? lower_ascii(b) : (int)b;
  if (ci && a == 0x17F) x = 's';
  if (x == 's' || x == 't' || x == 'm' || x == 'd') return j + la;
  if (lb && ((x == 'r' && y == 'e') || (x == 'v' && y == 'e') || (x == 'l' && y == 'l')))
    return j + la + lb;
  return 0;
}

/* \s+(?!\S) | \s+ over the whitespace run starting at i */
static inline size_t ws_tail(const uint8_t *s, size_t n, size_t i, size_t e) {
  if (e >= n) return e;
  /* back off one code point (whitespace chars may be multi-byte) */
  size_t last = e - 1;
  while (last > i && (s[last] & 0xC0) == 0x80) last--;
  return last > i ? last : e;
}

static size_t match_gpt2(const uint8_t *s, size_t n, size_t i) {
  size_t l0, l1;
  uint32_t c0, c1;
  int k0 = cls(s, n, i, &l0, &c0);
  if (c0 == '\'') {
    size_t e = contraction(s, n, i, false);
    if (e) return e;
  }
  size_t j = i;
  int k = k0;
  if (c0 == ' ' && i + 1 < n) {
    k = cls(s, n, i + 1, &l1, &c1);
    j = i + 1;
    if (!(k & (C_L | C_N | C_S))) return run_other(s, n, j);
  }
  if (k & C_L) return run_of(s, n, j, C_L);
  if (k & C_N) return run_of(s, n, j, C_N);
  if (!(k0 & (C_L | C_N | C_S))) return run_other(s, n, i);
  /* whitespace */
  size_t e = run_of(s, n, i, C_S);
  return ws_tail(s, n, i, e);
}

static size_t match_llama3(const uint8_t *s, size_t n, size_t i, int max_digits) {
  size_t l0, l1;
  uint32_t c0, c1;
  int k0 = cls(s, n, i, &l0, &c0);
  /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
  if (c0 == '\'') {
    size_t e = contraction(s, n, i, true);
    if (e) return e;
  }
  /* [^\r\n\p{L}\p{N}]?\p{L}+ */
  if (k0 & C_L) return run_of(s, n, i + l0, C_L);
  if (!(k0 & (C_N | C_NL)) && i + l0 < n && (cls(s, n, i + l0, &l1, &c1) & C_L))
    return run_of(s, n, i + l0 + l1, C_L);
  /* \p{N}{1,max} */
  if (k0 & C_N) {
    size_t j = i + l0;
    for (int d = 1; d < max_digits && j < n; d++) {
      if (!(cls(s, n, j, &l1, &c1) & C_N)) break;
      j += l1;
    }
    return j;
  }
  /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
  size_t j = c0 == ' ' ? i + 1 : i;
  if (j < n && !(cls(s, n, j, &l1, &c1) & (C_L | C_N | C_S))) {
    j = run_other(s, n, j);
    while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
    return j;
  }
  /* whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+ */
  size_t e = i, last_nl = 0;
  bool has_nl = false;
  while (e < n) {
    size_t l;
    uint32_t cp;
    int k = cls(s, n, e, &l, &cp);
    if (!(k & C_S)) break;
    if (k & C_NL) {
      has_nl = true;
      last_nl = e;
    }
    e += l;
  }
  if (has_nl) return last_nl + 1;
  return ws_tail(s, n, i, e);
}

size_t mx__split_match(int pattern, const uint8_t *s, size_t n, size_t i) {
  if (!__atomic_load_n(&ascii_ready, __ATOMIC_ACQUIRE)) init_ascii();
  switch (pattern) {
  case MX__SPLIT_REGEX_GPT2:
    return match_gpt2(s, n, i);
  case MX__SPLIT_REGEX_LLAMA3:
    return match_llama3(s, n, i, 3);
  case MX__SPLIT_REGEX_QWEN2:
    return match_llama3(s, n, i, 1);
  }
  return n;
}
