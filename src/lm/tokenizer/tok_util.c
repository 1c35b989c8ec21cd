/* tok_util.c — buffers, UTF-8, Unicode classes, hash maps and the added-token
 * trie used by the tokenizer. */
#include "tok_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <utf8proc.h>

/* ---- buffers ----------------------------------------------------------------- */

void mx__buf_reserve(mx__buf *b, size_t extra) {
  if (b->oom) return;
  if (b->n + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->n + extra) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return;
  }
  b->p = p;
  b->cap = cap;
}

void mx__buf_puts(mx__buf *b, const char *s) { mx__buf_put(b, s, strlen(s)); }

void mx__buf_printf(mx__buf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k < 0) return;
  if ((size_t)k < sizeof tmp) {
    mx__buf_put(b, tmp, (size_t)k);
    return;
  }
  mx__buf_reserve(b, (size_t)k + 1);
  if (b->oom) return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
  va_end(ap);
  b->n += (size_t)k;
}

char *mx__buf_finish(mx__buf *b, size_t *len) {
  mx__buf_reserve(b, 1);
  if (b->oom) {
    free(b->p);
    b->p = NULL;
    return NULL;
  }
  b->p[b->n] = 0;
  if (len) *len = b->n;
  char *p = b->p;
  b->p = NULL;
  b->n = b->cap = 0;
  return p;
}

void mx__buf_free(mx__buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

void mx__ids_reserve(mx__ids *v, size_t extra) {
  if (v->oom || v->n + extra <= v->cap) return;
  size_t cap = v->cap ? v->cap : 16;
  while (cap < v->n + extra) cap *= 2;
  int32_t *p = realloc(v->p, cap * sizeof *p);
  if (!p) {
    v->oom = 1;
    return;
  }
  v->p = p;
  v->cap = cap;
}

/* ---- UTF-8 --------------------------------------------------------------------- */

size_t mx__utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
  uint8_t c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t need;
  uint32_t v;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
    v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    v = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    v = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *cp = 0xFFFD;
    return 1;
  }
  size_t i = 1;
  for (; i <= need; i++) {
    if (i >= n) {
      *cp = 0xFFFD;
      return i;
    }
    uint8_t d = s[i];
    if (d < lo || d > hi) {
      *cp = 0xFFFD;
      return i;
    }
    lo = 0x80;
    hi = 0xBF;
    v = (v << 6) | (d & 0x3F);
  }
  *cp = v;
  return need + 1;
}

size_t mx__utf8_encode(uint32_t cp, char *out) {
  uint8_t *o = (uint8_t *)out;
  if (cp < 0x80) {
    o[0] = (uint8_t)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (uint8_t)(0xC0 | (cp >> 6));
    o[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (uint8_t)(0xE0 | (cp >> 12));
    o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (uint8_t)(0xF0 | (cp >> 18));
  o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

bool mx__utf8_valid(const char *s, size_t n) {
  const uint8_t *u = (const uint8_t *)s;
  size_t i = 0;
  while (i < n) {
    /* ASCII fast path, 8 bytes at a time */
    while (i + 8 <= n) {
      uint64_t w;
      memcpy(&w, u + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (u[i] < 0x80) {
      i++;
      continue;
    }
    uint32_t cp;
    size_t k = mx__utf8_decode(u + i, n - i, &cp);
    if (cp == 0xFFFD && !(k == 3 && u[i] == 0xEF && u[i + 1] == 0xBF && u[i + 2] == 0xBD))
      return false;
    i += k;
  }
  return true;
}

void mx__utf8_lossy(mx__buf *b, const char *s, size_t n) {
  const uint8_t *u = (const uint8_t *)s;
  size_t i = 0, run = 0;
  while (i < n) {
    if (u[i] < 0x80) {
      i++;
      continue;
    }
    uint32_t cp;
    size_t k = mx__utf8_decode(u + i, n - i, &cp);
    if (cp == 0xFFFD && !(k == 3 && u[i] == 0xEF && u[i + 1] == 0xBF && u[i + 2] == 0xBD)) {
      mx__buf_put(b, s + run, i - run);
      mx__buf_put(b, "\xEF\xBF\xBD", 3);
      run = i + k;
    }
    i += k;
  }
  mx__buf_put(b, s + run, n - run);
}

bool mx__is_white_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 9 && cp <= 13) || cp == 32;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool mx__py_isspace(uint32_t cp) {
  if (cp >= 0x1C && cp <= 0x1F) return true;
  return mx__is_white_space(cp);
}

bool mx__is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

bool mx__is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

/* ---- GPT-2 byte map ---------------------------------------------------------- */
/* Printable bytes (33..126, 161..172, 174..255) stand for themselves; the
 * others get code points 256.. in byte order. */
static bool byte_printable(int b) {
  return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t mx__byte_to_cp(uint8_t b) {
  if (byte_printable(b)) return b;
  int k = 0;
  for (int i = 0; i < b; i++)
    if (!byte_printable(i)) k++;
  return 256u + (uint32_t)k;
}

int mx__cp_to_byte(uint32_t cp) {
  if (cp < 256) return byte_printable((int)cp) ? (int)cp : -1;
  if (cp >= 256 + 68) return -1;
  int k = (int)(cp - 256);
  for (int i = 0; i < 256; i++)
    if (!byte_printable(i) && k-- == 0) return i;
  return -1;
}

/* ---- hashing --------------------------------------------------------------------- */

uint64_t mx__hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ (w * 0xbf58476d1ce4e5b9ull)) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  if (n) memcpy(&w, s, n);
  h = (h ^ (w * 0xbf58476d1ce4e5b9ull)) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

int mx__strmap_init(mx__strmap *m, size_t expected) {
  memset(m, 0, sizeof *m);
  size_t cap = 16;
  while (cap < expected * 2) cap *= 2;
  m->slots = calloc(cap, sizeof *m->slots);
  m->mask = cap - 1;
  m->cap = expected ? expected : 8;
  m->keys = malloc(m->cap * sizeof *m->keys);
  m->lens = malloc(m->cap * sizeof *m->lens);
  m->vals = malloc(m->cap * sizeof *m->vals);
  if (!m->slots || !m->keys || !m->lens || !m->vals) {
    mx__strmap_free(m);
    return MX_ERR_OOM;
  }
  return MX_OK;
}

void mx__strmap_free(mx__strmap *m) {
  free(m->slots);
  free(m->keys);
  free(m->lens);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

static int strmap_grow(mx__strmap *m) {
  size_t cap = (m->mask + 1) * 2;
  uint32_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return -1;
  for (size_t e = 0; e < m->n; e++) {
    size_t i = (size_t)mx__hash_bytes(m->keys[e], m->lens[e]) & (cap - 1);
    while (slots[i]) i = (i + 1) & (cap - 1);
    slots[i] = (uint32_t)e + 1;
  }
  free(m->slots);
  m->slots = slots;
  m->mask = cap - 1;
  return 0;
}

int mx__strmap_put(mx__strmap *m, const char *key, size_t len, int32_t val, bool overwrite) {
  if (!m->slots) return -1;
  size_t i = (size_t)mx__hash_bytes(key, len) & m->mask;
  while (m->slots[i]) {
    size_t e = m->slots[i] - 1;
    if (m->lens[e] == len && (!len || !memcmp(m->keys[e], key, len))) {
      if (overwrite) m->vals[e] = val;
      return 0;
    }
    i = (i + 1) & m->mask;
  }
  if (m->n == m->cap) {
    size_t cap = m->cap * 2;
    const char **k = realloc(m->keys, cap * sizeof *k);
    if (!k) return -1;
    m->keys = k;
    uint32_t *l = realloc(m->lens, cap * sizeof *l);
    if (!l) return -1;
    m->lens = l;
    int32_t *v = realloc(m->vals, cap * sizeof *v);
    if (!v) return -1;
    m->vals = v;
    m->cap = cap;
  }
  m->keys[m->n] = key;
  m->lens[m->n] = (uint32_t)len;
  m->vals[m->n] = val;
  m->slots[i] = (uint32_t)++m->n;
  if (m->n * 2 > m->mask + 1 && strmap_grow(m)) return -1;
  return 1;
}

int32_t mx__strmap_get(const mx__strmap *m, const char *key, size_t len) {
  if (!m->slots) return -1;
  size_t i = (size_t)mx__hash_bytes(key, len) & m->mask;
  while (m->slots[i]) {
    size_t e = m->slots[i] - 1;
    if (m->lens[e] == len && (!len || !memcmp(m->keys[e], key, len))) return m->vals[e];
    i = (i + 1) & m->mask;
  }
  return -1;
}

int mx__pairmap_init(mx__pairmap *m, size_t expected) {
  memset(m, 0, sizeof *m);
  size_t cap = 16;
  while (cap < expected * 2) cap *= 2;
  m->keys = calloc(cap, sizeof *m->keys);
  m->rank = malloc(cap * sizeof *m->rank);
  m->out = malloc(cap * sizeof *m->out);
  if (!m->keys || !m->rank || !m->out) {
    mx__pairmap_free(m);
    return MX_ERR_OOM;
  }
  m->mask = cap - 1;
  return MX_OK;
}

void mx__pairmap_free(mx__pairmap *m) {
  free(m->keys);
  free(m->rank);
  free(m->out);
  memset(m, 0, sizeof *m);
}

/* The map is sized for `expected` entries up front; put never grows it. */
void mx__pairmap_put(mx__pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t out) {
  if (!m->mask || m->n * 2 >= m->mask + 1) return;
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  uint64_t h = k * 0x9E3779B97F4A7C15ull;
  size_t i = (size_t)(h >> 20) & m->mask;
  while (m->keys[i] && m->keys[i] != k) i = (i + 1) & m->mask;
  if (!m->keys[i]) m->n++;
  m->keys[i] = k;
  m->rank[i] = rank;
  m->out[i] = out;
}

/* ---- trie ------------------------------------------------------------------------ */

static int32_t trie_node(mx__trie *t, uint8_t byte) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    mx__trie_node *p = realloc(t->nodes, cap * sizeof *p);
    if (!p) return -1;
    t->nodes = p;
    t->cap = cap;
  }
  t->nodes[t->n] = (mx__trie_node){-1, -1, -1, byte};
  return (int32_t)t->n++;
}

int mx__trie_add(mx__trie *t, const char *s, size_t n, int32_t token) {
  if (!n) return MX_OK;
  if (!t->n && trie_node(t, 0) < 0) return MX_ERR_OOM;
  int32_t cur = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = (uint8_t)s[i];
    int32_t ch = t->nodes[cur].child;
    while (ch >= 0 && t->nodes[ch].byte != c) ch = t->nodes[ch].sibling;
    if (ch < 0) {
      ch = trie_node(t, c);
      if (ch < 0) return MX_ERR_OOM;
      t->nodes[ch].sibling = t->nodes[cur].child;
      t->nodes[cur].child = ch;
    }
    cur = ch;
  }
  if (t->nodes[cur].token < 0) t->nodes[cur].token = token;
  t->first[(uint8_t)s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)s[0] & 7));
  return MX_OK;
}

void mx__trie_free(mx__trie *t) {
  free(t->nodes);
  memset(t, 0, sizeof *t);
}

size_t mx__trie_longest(const mx__trie *t, const uint8_t *s, size_t n, int32_t *token) {
  if (!t->n || !n || !(t->first[s[0] >> 3] & (1u << (s[0] & 7)))) return 0;
  int32_t cur = 0;
  size_t best = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t ch = t->nodes[cur].child;
    while (ch >= 0 && t->nodes[ch].byte != s[i]) ch = t->nodes[ch].sibling;
    if (ch < 0) break;
    cur = ch;
    if (t->nodes[cur].token >= 0) {
      best = i + 1;
      *token = t->nodes[cur].token;
    }
  }
  return best;
}

/* ---- files ----------------------------------------------------------------------- */

char *mx__read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(errno == ENOENT ? MX_ERR_NOT_FOUND : MX_ERR_IO, "cannot open %s: %s", path,
                  strerror(errno));
    return NULL;
  }
  mx__buf b = {0};
  char tmp[65536];
  size_t k;
  while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) mx__buf_put(&b, tmp, k);
  int err = ferror(f);
  fclose(f);
  if (err) {
    mx__buf_free(&b);
    mx__set_error(MX_ERR_IO, "cannot read %s", path);
    return NULL;
  }
  char *p = mx__buf_finish(&b, len);
  if (!p) mx__set_error(MX_ERR_OOM, "out of memory reading %s", path);
  return p;
}
