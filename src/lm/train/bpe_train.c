/* bpe_train.c — byte-level BPE training (Hugging Face BpeTrainer semantics,
 * see include/mxc/tokenizer_train.h): word counting with the GPT-2 split,
 * the alphabet, incremental pair counts with a max-heap, and the
 * tokenizer.json writer. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tokenizer/tok_internal.h"
#include "internal.h"
#include "mxc/tokenizer_train.h"
#include "train_internal.h"

struct mx_bpe_model {
  char **tokens; /* id -> text (byte-level characters; special tokens verbatim) */
  int32_t ntokens, nspecial;
  int32_t *merges; /* (left, right) per merge, as written */
  int64_t nmerges;
};

/* ---- (left, right) -> int64 hash map (open addressing, no deletion) ------- */

typedef struct {
  uint64_t *keys; /* UINT64_MAX: empty */
  int64_t *vals;
  size_t mask, n;
} pairmap;

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static inline size_t pair_hash(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return (size_t)k;
}

static int pairmap_init(pairmap *m, size_t cap) {
  size_t c = 1024;
  while (c < 2 * cap) c *= 2;
  m->keys = malloc(c * sizeof *m->keys);
  m->vals = calloc(c, sizeof *m->vals);
  m->mask = c - 1;
  m->n = 0;
  if (!m->keys || !m->vals) return -1;
  memset(m->keys, 0xff, c * sizeof *m->keys);
  return 0;
}

static void pairmap_free(pairmap *m) {
  free(m->keys);
  free(m->vals);
}

/* The value slot of k, inserted (0) when absent; NULL on OOM. */
static int64_t *pairmap_slot(pairmap *m, uint64_t k) {
  if (2 * (m->n + 1) > m->mask + 1) {
    pairmap g;
    if (pairmap_init(&g, m->mask + 1)) {
      pairmap_free(&g);
      return NULL;
    }
    for (size_t i = 0; i <= m->mask; i++) {
      if (m->keys[i] == UINT64_MAX) continue;
      size_t j = pair_hash(m->keys[i]) & g.mask;
      while (g.keys[j] != UINT64_MAX) j = (j + 1) & g.mask;
      g.keys[j] = m->keys[i];
      g.vals[j] = m->vals[i];
    }
    g.n = m->n;
    pairmap_free(m);
    *m = g;
  }
  size_t j = pair_hash(k) & m->mask;
  while (m->keys[j] != UINT64_MAX && m->keys[j] != k) j = (j + 1) & m->mask;
  if (m->keys[j] == UINT64_MAX) {
    m->keys[j] = k;
    m->vals[j] = 0;
    m->n++;
  }
  return &m->vals[j];
}

static int64_t pairmap_get(const pairmap *m, uint64_t k) {
  size_t j = pair_hash(k) & m->mask;
  while (m->keys[j] != UINT64_MAX) {
    if (m->keys[j] == k) return m->vals[j];
    j = (j + 1) & m->mask;
  }
  return 0;
}

/* ---- the heap of candidate merges --------------------------------------- */

typedef struct {
  int64_t count;
  int32_t a, b;
  int32_t *pos; /* words where the pair was seen when this entry was made */
  int32_t npos;
} entry;

typedef struct {
  entry *e;
  size_t n, cap;
} heap;

/* x before y: higher count, ties to the smaller pair (HF's Merge order). */
static inline bool before(const entry *x, const entry *y) {
  if (x->count != y->count) return x->count > y->count;
  if (x->a != y->a) return x->a < y->a;
  return x->b < y->b;
}

static int heap_push(heap *h, entry e) {
  if (h->n == h->cap) {
    size_t c = h->cap ? 2 * h->cap : 1024;
    entry *p = realloc(h->e, c * sizeof *p);
    if (!p) return -1;
    h->e = p;
    h->cap = c;
  }
  size_t i = h->n++;
  while (i > 0) {
    size_t up = (i - 1) / 2;
    if (!before(&e, &h->e[up])) break;
    h->e[i] = h->e[up];
    i = up;
  }
  h->e[i] = e;
  return 0;
}

static entry heap_pop(heap *h) {
  entry top = h->e[0], last = h->e[--h->n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const entry *best = &last;
    if (l < h->n && before(&h->e[l], best)) {
      m = l;
      best = &h->e[l];
    }
    if (r < h->n && before(&h->e[r], best)) m = r;
    if (m == i) break;
    h->e[i] = h->e[m];
    i = m;
  }
  if (h->n) h->e[i] = last;
  return top;
}

/* ---- (pair, word) lists: where a pair appeared ----------------------------- */

typedef struct {
  uint64_t pair;
  int32_t word;
} occ;

typedef struct {
  occ *o;
  size_t n, cap;
} occs;

static int occs_push(occs *v, uint64_t pair, int32_t w) {
  if (v->n == v->cap) {
    size_t c = v->cap ? 2 * v->cap : 4096;
    occ *p = realloc(v->o, c * sizeof *p);
    if (!p) return -1;
    v->o = p;
    v->cap = c;
  }
  v->o[v->n++] = (occ){pair, w};
  return 0;
}

static int occ_cmp(const void *x, const void *y) {
  const occ *a = x, *b = y;
  if (a->pair != b->pair) return a->pair < b->pair ? -1 : 1;
  return (a->word > b->word) - (a->word < b->word);
}

/* Pushes one heap entry per distinct pair of v (its distinct words as
 * positions) whose current count is > 0; empties v. */
static int push_pairs(heap *h, occs *v, const pairmap *counts) {
  if (v->n > 1) qsort(v->o, v->n, sizeof *v->o, occ_cmp);
  size_t i = 0;
  while (i < v->n) {
    size_t j = i;
    while (j < v->n && v->o[j].pair == v->o[i].pair) j++;
    int64_t c = pairmap_get(counts, v->o[i].pair);
    if (c > 0) {
      int32_t *pos = malloc((j - i) * sizeof *pos);
      if (!pos) return -1;
      int32_t np = 0;
      for (size_t k = i; k < j; k++)
        if (!np || pos[np - 1] != v->o[k].word) pos[np++] = v->o[k].word;
      entry e = {c, (int32_t)(v->o[i].pair >> 32), (int32_t)(v->o[i].pair & 0xffffffffu), pos, np};
      if (heap_push(h, e)) {
        free(pos);
        return -1;
      }
    }
    i = j;
  }
  v->n = 0;
  return 0;
}

/* ---- the trainer ---------------------------------------------------------- */

typedef struct {
  mx_bpe_model *m;
  int32_t cap;
  mx__strmap ids; /* token text -> id */
  /* words */
  int32_t nwords;
  int64_t *count;
  int64_t *off;
  int32_t *len;
  int32_t *sym;
} trainer;

static int add_token(trainer *t, char *s) { /* takes s */
  if (t->m->ntokens == t->cap) {
    int32_t c = t->cap ? 2 * t->cap : 1024;
    char **p = realloc(t->m->tokens, (size_t)c * sizeof *p);
    if (!p) {
      free(s);
      return -1;
    }
    t->m->tokens = p;
    t->cap = c;
  }
  int32_t id = t->m->ntokens;
  t->m->tokens[t->m->ntokens++] = s;
  return mx__strmap_put(&t->ids, s, strlen(s), id, false) < 0 ? -1 : id;
}

static char *dup_n(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = 0;
  }
  return p;
}

static int cmp_u32(const void *x, const void *y) {
  uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
  return (a > b) - (a < b);
}

/* Merges (c1, c2) -> r in word w (left to right, non-overlapping, as HF's
 * Word::merge) and applies the neighbour-pair changes. */
static int merge_word(trainer *t, int32_t w, int32_t c1, int32_t c2, int32_t r, pairmap *counts,
                      occs *where) {
  int32_t *s = t->sym + t->off[w];
  int32_t n = t->len[w], o = 0;
  int64_t cnt = t->count[w];
  for (int32_t i = 0; i < n;) {
    if (s[i] == c1 && i + 1 < n && s[i + 1] == c2) {
      if (o > 0) {
        int64_t *p = pairmap_slot(counts, pair_key(s[o - 1], c1));
        int64_t *q = pairmap_slot(counts, pair_key(s[o - 1], r));
        if (!p || !q) return -1;
        *p -= cnt;
        *q += cnt;
        if (occs_push(where, pair_key(s[o - 1], r), w)) return -1;
      }
      if (i + 2 < n) {
        int64_t *p = pairmap_slot(counts, pair_key(c2, s[i + 2]));
        int64_t *q = pairmap_slot(counts, pair_key(r, s[i + 2]));
        if (!p || !q) return -1;
        *p -= cnt;
        *q += cnt;
        if (occs_push(where, pair_key(r, s[i + 2]), w)) return -1;
      }
      s[o++] = r;
      i += 2;
    } else {
      s[o++] = s[i++];
    }
  }
  t->len[w] = o;
  return 0;
}

/* Counts the words of text (valid UTF-8): lines, then GPT-2 pieces. */
static int count_words(trainer *t, const char *text, size_t len, mx__strmap *wmap, int64_t *nsym) {
  const uint8_t *u = (const uint8_t *)text;
  size_t cap = 0;
  *nsym = 0;
  for (size_t ls = 0; ls < len;) {
    const char *nl = memchr(text + ls, '\n', len - ls);
    size_t le = nl ? (size_t)(nl - text) + 1 : len;
    for (size_t i = ls; i < le;) {
      size_t e = mx__split_match(MX__SPLIT_REGEX_GPT2, u + ls, le - ls, i - ls) + ls;
      if (e <= i) e = i + 1;
      int32_t w = mx__strmap_get(wmap, text + i, e - i);
      if (w < 0) {
        if ((size_t)t->nwords == cap) {
          cap = cap ? 2 * cap : 4096;
          int64_t *c = realloc(t->count, cap * sizeof *c);
          if (c) t->count = c;
          int64_t *o = realloc(t->off, cap * sizeof *o);
          if (o) t->off = o;
          int32_t *l = realloc(t->len, cap * sizeof *l);
          if (l) t->len = l;
          if (!c || !o || !l) return -1;
        }
        w = t->nwords++;
        t->count[w] = 0;
        t->off[w] = (int64_t)i; /* the piece's bytes, for now */
        t->len[w] = (int32_t)(e - i);
        *nsym += (int64_t)(e - i);
        if (mx__strmap_put(wmap, text + i, e - i, w, false) < 0) return -1;
      }
      t->count[w]++;
      i = e;
    }
    ls = le;
  }
  return 0;
}

static void model_free_parts(mx_bpe_model *m) {
  if (!m) return;
  for (int32_t i = 0; i < m->ntokens; i++) free(m->tokens[i]);
  free(m->tokens);
  free(m->merges);
  free(m);
}

void mx_bpe_model_free(mx_bpe_model *m) { model_free_parts(m); }

static int check_options(const mx_bpe_train_options *o) {
  if (!o) return mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: options are NULL");
  if (o->vocab_size < 1 || o->vocab_size > INT32_MAX / 2)
    return mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: --vocab-size must be in [1, %d], got %lld",
                         INT32_MAX / 2, (long long)o->vocab_size);
  if (o->min_frequency < 0)
    return mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: --min-frequency must be >= 0");
  if (o->num_special_tokens < 0 || (o->num_special_tokens && !o->special_tokens))
    return mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: bad special tokens");
  for (int i = 0; i < o->num_special_tokens; i++)
    if (!o->special_tokens[i] || !*o->special_tokens[i])
      return mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: special token %d is empty", i);
  return MX_OK;
}

mx_bpe_model *mx_bpe_train(const char *text, size_t len, const mx_bpe_train_options *o) {
  if (check_options(o)) return NULL;
  if (!text && len) {
    mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: text is NULL");
    return NULL;
  }
  mx__buf clean = {0};
  if (text && !mx__utf8_valid(text, len)) {
    mx__utf8_lossy(&clean, text, len);
    if (clean.oom) {
      mx__buf_free(&clean);
      mx__set_error(MX_ERR_OOM, "tokenizer-train: out of memory");
      return NULL;
    }
    text = clean.p;
    len = clean.n;
  }
  trainer t = {0};
  mx__strmap wmap = {0};
  pairmap counts = {0};
  heap h = {0};
  occs where = {0};
  int32_t *mg = NULL; /* (a, b) per merge made */
  int64_t nmg = 0, mgcap = 0;
  int st = MX_OK;
  t.m = calloc(1, sizeof *t.m);
  if (!t.m || mx__strmap_init(&t.ids, 1024) || mx__strmap_init(&wmap, 4096)) goto oom;

  /* 1. special tokens */
  for (int i = 0; i < o->num_special_tokens; i++) {
    const char *s = o->special_tokens[i];
    if (mx__strmap_get(&t.ids, s, strlen(s)) >= 0) continue;
    char *d = dup_n(s, strlen(s));
    if (!d || add_token(&t, d) < 0) goto oom;
  }
  t.m->nspecial = t.m->ntokens;

  /* 2. words and the alphabet */
  int64_t nsym = 0;
  if (count_words(&t, text ? text : "", len, &wmap, &nsym)) goto oom;
  bool seen[256] = {0};
  for (int32_t w = 0; w < t.nwords; w++)
    for (int32_t k = 0; k < t.len[w]; k++) seen[(uint8_t)text[t.off[w] + k]] = true;
  uint32_t alpha[256];
  int na = 0;
  for (int b = 0; b < 256; b++)
    if (seen[b] || !o->seen_alphabet_only) alpha[na++] = mx__byte_to_cp((uint8_t)b);
  qsort(alpha, (size_t)na, sizeof *alpha, cmp_u32);
  int32_t byte_id[256];
  for (int k = 0; k < na; k++) {
    char u[8];
    size_t n = mx__utf8_encode(alpha[k], u);
    int32_t id = mx__strmap_get(&t.ids, u, n);
    if (id < 0) {
      char *d = dup_n(u, n);
      if (!d || (id = add_token(&t, d)) < 0) goto oom;
    }
    byte_id[mx__cp_to_byte(alpha[k])] = id;
  }
  t.sym = malloc((size_t)(nsym > 0 ? nsym : 1) * sizeof *t.sym);
  if (!t.sym) goto oom;
  int64_t at = 0;
  for (int32_t w = 0; w < t.nwords; w++) {
    for (int32_t k = 0; k < t.len[w]; k++) t.sym[at + k] = byte_id[(uint8_t)text[t.off[w] + k]];
    t.off[w] = at;
    at += t.len[w];
  }
  mx__strmap_free(&wmap); /* its keys point into text */
  memset(&wmap, 0, sizeof wmap);

  /* 3. pair counts */
  if (pairmap_init(&counts, (size_t)nsym)) goto oom;
  for (int32_t w = 0; w < t.nwords; w++) {
    const int32_t *s = t.sym + t.off[w];
    for (int32_t k = 0; k + 1 < t.len[w]; k++) {
      uint64_t pk = pair_key(s[k], s[k + 1]);
      int64_t *c = pairmap_slot(&counts, pk);
      if (!c || occs_push(&where, pk, w)) goto oom;
      *c += t.count[w];
    }
  }
  if (push_pairs(&h, &where, &counts)) goto oom;

  /* 4. merges */
  while (t.m->ntokens < o->vocab_size && h.n) {
    entry top = heap_pop(&h);
    int64_t cur = pairmap_get(&counts, pair_key(top.a, top.b));
    if (top.count != cur) {
      top.count = cur;
      if (heap_push(&h, top)) {
        free(top.pos);
        goto oom;
      }
      continue;
    }
    if (top.count < 1 || o->min_frequency > top.count) {
      free(top.pos);
      break;
    }
    const char *pa = t.m->tokens[top.a], *pb = t.m->tokens[top.b];
    size_t la = strlen(pa), lb = strlen(pb);
    char *nt = malloc(la + lb + 1);
    if (!nt) {
      free(top.pos);
      goto oom;
    }
    memcpy(nt, pa, la);
    memcpy(nt + la, pb, lb + 1);
    int32_t r = mx__strmap_get(&t.ids, nt, la + lb);
    if (r >= 0) free(nt);
    else if ((r = add_token(&t, nt)) < 0) {
      free(top.pos);
      goto oom;
    }
    if (nmg == mgcap) {
      mgcap = mgcap ? 2 * mgcap : 1024;
      int32_t *p = realloc(mg, (size_t)mgcap * 2 * sizeof *p);
      if (!p) {
        free(top.pos);
        goto oom;
      }
      mg = p;
    }
    mg[2 * nmg] = top.a;
    mg[2 * nmg + 1] = top.b;
    nmg++;
    for (int32_t k = 0; k < top.npos && !st; k++)
      if (merge_word(&t, top.pos[k], top.a, top.b, r, &counts, &where)) st = -1;
    free(top.pos);
    if (st || push_pairs(&h, &where, &counts)) goto oom;
  }

  /* 5. the merges as written: a pair merged more than once keeps its last rank */
  {
    pairmap last;
    if (pairmap_init(&last, (size_t)nmg)) {
      pairmap_free(&last);
      goto oom;
    }
    for (int64_t i = 0; i < nmg; i++) {
      int64_t *p = pairmap_slot(&last, pair_key(mg[2 * i], mg[2 * i + 1]));
      if (!p) {
        pairmap_free(&last);
        goto oom;
      }
      *p = i;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < nmg; i++)
      if (pairmap_get(&last, pair_key(mg[2 * i], mg[2 * i + 1])) == i) {
        mg[2 * k] = mg[2 * i];
        mg[2 * k + 1] = mg[2 * i + 1];
        k++;
      }
    pairmap_free(&last);
    t.m->merges = mg;
    t.m->nmerges = k;
    mg = NULL;
  }
  goto done;
oom:
  st = mx__set_error(MX_ERR_OOM, "tokenizer-train: out of memory");
done:
  for (size_t i = 0; i < h.n; i++) free(h.e[i].pos);
  free(h.e);
  free(where.o);
  free(mg);
  pairmap_free(&counts);
  mx__strmap_free(&wmap);
  mx__strmap_free(&t.ids);
  free(t.count);
  free(t.off);
  free(t.len);
  free(t.sym);
  mx__buf_free(&clean);
  if (st) {
    model_free_parts(t.m);
    return NULL;
  }
  return t.m;
}

mx_bpe_model *mx_bpe_train_file(const char *path, const mx_bpe_train_options *o) {
  if (!path) {
    mx__set_error(MX_ERR_INVALID_ARG, "tokenizer-train: --data FILE is required");
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(MX_ERR_IO, "tokenizer-train: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  mx__buf b = {0};
  char chunk[1 << 16];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) mx__buf_put(&b, chunk, n);
  bool err = ferror(f) != 0;
  fclose(f);
  if (err || b.oom) {
    mx__buf_free(&b);
    mx__set_error(err ? MX_ERR_IO : MX_ERR_OOM, "tokenizer-train: cannot read %s", path);
    return NULL;
  }
  if (b.n == 0) {
    mx__buf_free(&b);
    mx__set_error(MX_ERR_FORMAT, "tokenizer-train: %s is empty", path);
    return NULL;
  }
  mx_bpe_model *m = mx_bpe_train(b.p, b.n, o);
  mx__buf_free(&b);
  return m;
}

/* ---- accessors and the writer ----------------------------------------------- */

int64_t mx_bpe_model_vocab_size(const mx_bpe_model *m) { return m ? m->ntokens : 0; }
int64_t mx_bpe_model_num_merges(const mx_bpe_model *m) { return m ? m->nmerges : 0; }

const char *mx_bpe_model_token(const mx_bpe_model *m, int64_t id) {
  return m && id >= 0 && id < m->ntokens ? m->tokens[id] : NULL;
}

int mx_bpe_model_merge(const mx_bpe_model *m, int64_t i, int32_t *left, int32_t *right) {
  if (!m || i < 0 || i >= m->nmerges || !left || !right)
    return mx__set_error(MX_ERR_RANGE, "mx_bpe_model_merge: merge %lld out of range", (long long)i);
  *left = m->merges[2 * i];
  *right = m->merges[2 * i + 1];
  return MX_OK;
}

/* The ByteLevel pre-tokenizer / decoder: GPT-2 regex, no prefix space. */
static cJSON *byte_level(void) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "ByteLevel");
  cJSON_AddBoolToObject(o, "add_prefix_space", false);
  cJSON_AddBoolToObject(o, "trim_offsets", true);
  cJSON_AddBoolToObject(o, "use_regex", true);
  return o;
}

char *mx_bpe_model_tokenizer_json(const mx_bpe_model *m) {
  if (!m) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_bpe_model_tokenizer_json: model is NULL");
    return NULL;
  }
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "version", "1.0");
  cJSON_AddNullToObject(root, "truncation");
  cJSON_AddNullToObject(root, "padding");
  cJSON *at = cJSON_AddArrayToObject(root, "added_tokens");
  for (int32_t i = 0; i < m->nspecial; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", i);
    cJSON_AddStringToObject(o, "content", m->tokens[i]);
    cJSON_AddBoolToObject(o, "single_word", false);
    cJSON_AddBoolToObject(o, "lstrip", false);
    cJSON_AddBoolToObject(o, "rstrip", false);
    cJSON_AddBoolToObject(o, "normalized", false);
    cJSON_AddBoolToObject(o, "special", true);
    cJSON_AddItemToArray(at, o);
  }
  cJSON_AddNullToObject(root, "normalizer");
  cJSON_AddItemToObject(root, "pre_tokenizer", byte_level());
  cJSON_AddNullToObject(root, "post_processor");
  cJSON_AddItemToObject(root, "decoder", byte_level());
  cJSON *model = cJSON_AddObjectToObject(root, "model");
  cJSON_AddStringToObject(model, "type", "BPE");
  cJSON_AddNullToObject(model, "dropout");
  cJSON_AddNullToObject(model, "unk_token");
  cJSON_AddNullToObject(model, "continuing_subword_prefix");
  cJSON_AddNullToObject(model, "end_of_word_suffix");
  cJSON_AddBoolToObject(model, "fuse_unk", false);
  cJSON_AddBoolToObject(model, "byte_fallback", false);
  cJSON_AddBoolToObject(model, "ignore_merges", false);
  cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
  for (int32_t i = 0; i < m->ntokens; i++) cJSON_AddNumberToObject(vocab, m->tokens[i], i);
  cJSON *merges = cJSON_AddArrayToObject(model, "merges");
  mx__buf b = {0};
  for (int64_t i = 0; i < m->nmerges; i++) {
    b.n = 0;
    mx__buf_puts(&b, m->tokens[m->merges[2 * i]]);
    mx__buf_putc(&b, ' ');
    mx__buf_puts(&b, m->tokens[m->merges[2 * i + 1]]);
    mx__buf_putc(&b, 0);
    if (!b.oom) cJSON_AddItemToArray(merges, cJSON_CreateString(b.p));
  }
  bool oom = b.oom;
  mx__buf_free(&b);
  char *s = oom ? NULL : cJSON_Print(root);
  cJSON_Delete(root);
  if (!s) mx__set_error(MX_ERR_OOM, "tokenizer-train: out of memory");
  return s;
}

int mx_bpe_model_save(const mx_bpe_model *m, const char *dir) {
  if (!m || !dir) return mx__set_error(MX_ERR_INVALID_ARG, "mx_bpe_model_save: model or dir is NULL");
  char *json = mx_bpe_model_tokenizer_json(m);
  if (!json) return mx_last_status();
  int st = mx__train_write_text(dir, "tokenizer.json", json);
  free(json);
  if (st) return st;
  cJSON *c = cJSON_CreateObject();
  cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
  if (m->nspecial > 0) {
    cJSON_AddStringToObject(c, "bos_token", m->tokens[0]);
    cJSON_AddStringToObject(c, "eos_token", m->tokens[m->nspecial > 1 ? 1 : 0]);
  }
  cJSON_AddBoolToObject(c, "add_bos_token", false);
  cJSON_AddBoolToObject(c, "add_eos_token", false);
  cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", false);
  char *s = cJSON_Print(c);
  cJSON_Delete(c);
  if (!s) return mx__set_error(MX_ERR_OOM, "tokenizer-train: out of memory");
  st = mx__train_write_text(dir, "tokenizer_config.json", s);
  free(s);
  return st;
}
