/* sentencepiece.c — SentencePiece tokenizer.model files: a minimal protobuf
 * reader, the identity normalizer, the BPE and unigram encoders and the
 * decoder, following Google's sentencepiece library (0.1.9x) exactly. */
#include "tok_internal.h"

#define SPACE_SYMBOL "\xE2\x96\x81" /* U+2581 */

/* ---- protobuf --------------------------------------------------------------- */

typedef struct {
  const uint8_t *p, *end;
  int err;
} pb;

static uint64_t pb_varint(pb *r) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) {
      r->err = 1;
      return 0;
    }
    uint8_t b = *r->p++;
    v |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  r->err = 1;
  return 0;
}

/* Read one field header; returns 0 at the end. */
static int pb_field(pb *r, uint32_t *field, uint32_t *wire) {
  if (r->p >= r->end || r->err) return 0;
  uint64_t k = pb_varint(r);
  if (r->err) return 0;
  *field = (uint32_t)(k >> 3);
  *wire = (uint32_t)(k & 7);
  return 1;
}

/* Length-delimited payload. */
static pb pb_sub(pb *r) {
  uint64_t n = pb_varint(r);
  pb s = {r->p, r->p, 0};
  if (r->err || n > (uint64_t)(r->end - r->p)) {
    r->err = 1;
    s.err = 1;
    return s;
  }
  s.end = r->p + n;
  r->p += n;
  return s;
}

static void pb_skip(pb *r, uint32_t wire) {
  switch (wire) {
  case 0: pb_varint(r); break;
  case 1:
    if (r->end - r->p < 8) r->err = 1;
    else r->p += 8;
    break;
  case 2: pb_sub(r); break;
  case 5:
    if (r->end - r->p < 4) r->err = 1;
    else r->p += 4;
    break;
  default: r->err = 1;
  }
}

static float pb_float(pb *r) {
  float f = 0;
  if (r->end - r->p < 4) {
    r->err = 1;
    return 0;
  }
  memcpy(&f, r->p, 4);
  r->p += 4;
  return f;
}

static int bad(const char *what) {
  return mx__set_error(MX_ERR_FORMAT, "tokenizer.model: malformed protobuf (%s)", what);
}

static int read_piece(mx_tokenizer *tok, pb *r, int32_t id) {
  pb s = pb_sub(r);
  const uint8_t *str = NULL;
  size_t len = 0;
  float score = 0;
  int type = MX__SP_NORMAL;
  uint32_t f, w;
  while (pb_field(&s, &f, &w)) {
    if (f == 1 && w == 2) {
      pb t = pb_sub(&s);
      str = t.p;
      len = (size_t)(t.end - t.p);
    } else if (f == 2 && w == 5) {
      score = pb_float(&s);
    } else if (f == 3 && w == 0) {
      type = (int)pb_varint(&s);
    } else {
      pb_skip(&s, w);
    }
  }
  if (s.err || r->err) return bad("piece");
  if (mx__tokenizer_grow(tok, id + 1)) return MX_ERR_OOM;
  tok->tokens[id] = malloc(len + 1);
  if (!tok->tokens[id]) return MX_ERR_OOM;
  if (len) memcpy(tok->tokens[id], str, len);
  tok->tokens[id][len] = 0;
  tok->token_len[id] = (uint32_t)len;
  /* scores/types grow with the ids */
  float *sc = realloc(tok->spm.scores, (size_t)(id + 1) * sizeof *sc);
  if (!sc) return MX_ERR_OOM;
  tok->spm.scores = sc;
  uint8_t *ty = realloc(tok->spm.types, (size_t)(id + 1));
  if (!ty) return MX_ERR_OOM;
  tok->spm.types = ty;
  sc[id] = score;
  ty[id] = (uint8_t)(type >= 1 && type <= 6 ? type : MX__SP_NORMAL);
  return MX_OK;
}

static int read_trainer(mx_tokenizer *tok, pb *r) {
  pb s = pb_sub(r);
  uint32_t f, w;
  while (pb_field(&s, &f, &w)) {
    if (w != 0) {
      pb_skip(&s, w);
      continue;
    }
    uint64_t v = pb_varint(&s);
    switch (f) {
    case 3: tok->spm.model_type = (int)v; break;
    case 24: tok->spm.ws_suffix = v != 0; break;
    case 35: tok->spm.byte_fallback = v != 0; break;
    case 40: tok->spm.unk_id = (int32_t)v; break;
    case 41: tok->spm.bos_id = (int32_t)v; break;
    case 42: tok->spm.eos_id = (int32_t)v; break;
    case 43: tok->spm.pad_id = (int32_t)v; break;
    default: break;
    }
  }
  return s.err || r->err ? bad("trainer_spec") : MX_OK;
}

static int read_normalizer(mx_tokenizer *tok, pb *r) {
  pb s = pb_sub(r);
  uint32_t f, w;
  char name[64] = "";
  size_t charsmap = 0;
  while (pb_field(&s, &f, &w)) {
    if (f == 1 && w == 2) {
      pb t = pb_sub(&s);
      size_t n = (size_t)(t.end - t.p);
      if (n >= sizeof name) n = sizeof name - 1;
      memcpy(name, t.p, n);
      name[n] = 0;
    } else if (f == 2 && w == 2) {
      pb t = pb_sub(&s);
      charsmap = (size_t)(t.end - t.p);
    } else if (f == 3 && w == 0) {
      tok->spm.add_dummy_prefix = pb_varint(&s) != 0;
    } else if (f == 4 && w == 0) {
      tok->spm.remove_extra_ws = pb_varint(&s) != 0;
    } else if (f == 5 && w == 0) {
      tok->spm.escape_ws = pb_varint(&s) != 0;
    } else {
      pb_skip(&s, w);
    }
  }
  if (s.err || r->err) return bad("normalizer_spec");
  if (charsmap)
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "tokenizer.model: unsupported normalizer '%s' (precompiled charsmap); "
                         "only identity normalization is implemented", name);
  return MX_OK;
}

int mx__spm_load(mx_tokenizer *tok, const uint8_t *data, size_t len) {
  mx__spm *m = &tok->spm;
  m->model_type = 1;
  m->add_dummy_prefix = m->remove_extra_ws = m->escape_ws = true;
  m->unk_id = 0;
  m->bos_id = 1;
  m->eos_id = 2;
  m->pad_id = -1;
  pb r = {data, data + len, 0};
  uint32_t f, w;
  int32_t n = 0;
  int st = MX_OK;
  while (!st && pb_field(&r, &f, &w)) {
    if (f == 1 && w == 2) st = read_piece(tok, &r, n++);
    else if (f == 2 && w == 2) st = read_trainer(tok, &r);
    else if (f == 3 && w == 2) st = read_normalizer(tok, &r);
    else pb_skip(&r, w);
  }
  if (st) return st == MX_ERR_OOM ? mx__set_error(st, "out of memory loading tokenizer.model") : st;
  if (r.err || n == 0) return bad(n ? "truncated" : "no pieces");
  if (m->model_type != 1 && m->model_type != 2)
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "tokenizer.model: unsupported model type %d (BPE and unigram only)",
                         m->model_type);
  if (m->unk_id < 0 || m->unk_id >= n || m->types[m->unk_id] != MX__SP_UNKNOWN)
    return mx__set_error(MX_ERR_FORMAT, "tokenizer.model: unk_id %d is not an unknown piece",
                         m->unk_id);
  if (mx__strmap_init(&tok->vocab, (size_t)n) || mx__strmap_init(&tok->all, (size_t)n))
    return mx__set_error(MX_ERR_OOM, "out of memory");
  for (int i = 0; i < 256; i++) m->byte_ids[i] = -1;
  m->min_score = 1e30f;
  m->max_score = -1e30f;
  for (int32_t i = 0; i < n; i++) {
    int t = m->types[i];
    const char *p = tok->tokens[i];
    uint32_t l = tok->token_len[i];
    bool normal = t == MX__SP_NORMAL || t == MX__SP_USER || t == MX__SP_UNUSED;
    if (normal && mx__strmap_put(&tok->vocab, p, l, i, false) < 0) return MX_ERR_OOM;
    if (mx__strmap_put(&tok->all, p, l, i, false) < 0) return MX_ERR_OOM;
    if (t == MX__SP_NORMAL) {
      if (m->scores[i] < m->min_score) m->min_score = m->scores[i];
      if (m->scores[i] > m->max_score) m->max_score = m->scores[i];
    }
    if (t == MX__SP_USER && mx__trie_add(&m->user, p, l, i)) return MX_ERR_OOM;
    if (t == MX__SP_CONTROL || t == MX__SP_UNKNOWN) tok->special[i] = 1;
    if (normal && l > m->max_piece_len) m->max_piece_len = l;
    if (t == MX__SP_BYTE && l == 6 && !memcmp(p, "<0x", 3) && p[5] == '>') {
      unsigned v;
      if (sscanf(p + 3, "%2X", &v) == 1 && v < 256) m->byte_ids[v] = i;
    }
  }
  if (m->byte_fallback)
    for (int b = 0; b < 256; b++)
      if (m->byte_ids[b] < 0)
        return mx__set_error(MX_ERR_FORMAT, "tokenizer.model: byte_fallback without <0x%02X>", b);
  tok->unk_id = m->unk_id;
  tok->bos_id = m->bos_id >= 0 && m->bos_id < n ? m->bos_id : -1;
  tok->eos_id = m->eos_id >= 0 && m->eos_id < n ? m->eos_id : -1;
  return MX_OK;
}

/* ---- normalization (identity rules) -------------------------------------------- */

static void spm_normalize(const mx__spm *m, const char *s, size_t n, mx__buf *out) {
  size_t i = 0;
  if (m->remove_extra_ws)
    while (i < n && s[i] == ' ') i++;
  if (i == n) return;
  if (!m->ws_suffix && m->add_dummy_prefix) mx__buf_puts(out, m->escape_ws ? SPACE_SYMBOL : " ");
  bool prev_space = m->remove_extra_ws;
  for (; i < n; i++) {
    char c = s[i];
    if (c == ' ') {
      if (prev_space) continue;
      mx__buf_puts(out, m->escape_ws ? SPACE_SYMBOL : " ");
      prev_space = m->remove_extra_ws;
    } else {
      mx__buf_putc(out, c);
      prev_space = false;
    }
  }
  if (m->remove_extra_ws) {
    const char *ws = m->escape_ws ? SPACE_SYMBOL : " ";
    size_t wl = strlen(ws);
    while (out->n >= wl && !memcmp(out->p + out->n - wl, ws, wl)) out->n -= wl;
  }
  if (m->ws_suffix && m->add_dummy_prefix) mx__buf_puts(out, m->escape_ws ? SPACE_SYMBOL : " ");
}

/* Length of the symbol at s: a user-defined piece (longest) or one UTF-8
 * character (an invalid byte counts as one). */
static size_t prefix_len(const mx__spm *m, const uint8_t *s, size_t n, bool *user) {
  int32_t t;
  size_t l = mx__trie_longest(&m->user, s, n, &t);
  *user = l > 0;
  if (l) return l;
  uint32_t cp;
  size_t k = mx__utf8_decode(s, n, &cp);
  return k;
}

static int32_t piece_to_id(const mx_tokenizer *tok, const char *p, size_t n) {
  int32_t id = mx__strmap_get(&tok->vocab, p, n);
  if (id >= 0) return id;
  id = mx__strmap_get(&tok->all, p, n);
  return id >= 0 ? id : tok->spm.unk_id;
}

/* Emit one piece; unknown pieces become bytes with byte_fallback. */
static void emit(const mx_tokenizer *tok, const char *p, size_t n, int32_t id, mx__ids *out) {
  if (id == tok->spm.unk_id && tok->spm.byte_fallback) {
    for (size_t i = 0; i < n; i++) mx__ids_push(out, tok->spm.byte_ids[(uint8_t)p[i]]);
    return;
  }
  mx__ids_push(out, id);
}

/* ---- BPE ----------------------------------------------------------------------------- */

typedef struct {
  const char *p;
  size_t n;
  int32_t prev, next;
  bool freeze;
} sym;

typedef struct {
  float score;
  int32_t left, right;
  size_t size;
} pair;

typedef struct {
  pair *h;
  size_t n, cap;
} agenda;

static bool pair_before(const pair *a, const pair *b) { /* a pops first */
  if (a->score != b->score) return a->score > b->score;
  return a->left < b->left;
}

static int agenda_push(agenda *q, pair p) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 64;
    pair *h = realloc(q->h, cap * sizeof *h);
    if (!h) return MX_ERR_OOM;
    q->h = h;
    q->cap = cap;
  }
  size_t i = q->n++;
  while (i > 0) {
    size_t par = (i - 1) / 2;
    if (!pair_before(&p, &q->h[par])) break;
    q->h[i] = q->h[par];
    i = par;
  }
  q->h[i] = p;
  return MX_OK;
}

static pair agenda_pop(agenda *q) {
  pair top = q->h[0], last = q->h[--q->n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= q->n) break;
    if (c + 1 < q->n && pair_before(&q->h[c + 1], &q->h[c])) c++;
    if (!pair_before(&q->h[c], &last)) break;
    q->h[i] = q->h[c];
    i = c;
  }
  if (q->n) q->h[i] = last;
  return top;
}

typedef struct {
  mx__strmap rev; /* unused merged piece -> length of its left part */
  bool on;
} rev_merge;

static int maybe_add(const mx_tokenizer *tok, sym *s, agenda *q, rev_merge *rv, int32_t l,
                     int32_t r) {
  if (l < 0 || r < 0 || s[l].freeze || s[r].freeze) return MX_OK;
  size_t n = s[l].n + s[r].n;
  int32_t id = mx__strmap_get(&tok->vocab, s[l].p, n);
  if (id < 0) return MX_OK;
  if (agenda_push(q, (pair){tok->spm.scores[id], l, r, n})) return MX_ERR_OOM;
  if (tok->spm.types[id] == MX__SP_UNUSED) {
    if (!rv->on) {
      if (mx__strmap_init(&rv->rev, 16)) return MX_ERR_OOM;
      rv->on = true;
    }
    if (mx__strmap_put(&rv->rev, s[l].p, n, (int32_t)s[l].n, true) < 0) return MX_ERR_OOM;
  }
  return MX_OK;
}

static void resegment(const mx_tokenizer *tok, const rev_merge *rv, const char *p, size_t n,
                      mx__ids *out, int depth) {
  int32_t id = piece_to_id(tok, p, n);
  if (depth < 64 && rv->on && tok->spm.types[id] == MX__SP_UNUSED) {
    int32_t left = mx__strmap_get(&rv->rev, p, n);
    if (left > 0 && (size_t)left < n) {
      resegment(tok, rv, p, (size_t)left, out, depth + 1);
      resegment(tok, rv, p + left, n - (size_t)left, out, depth + 1);
      return;
    }
  }
  emit(tok, p, n, id, out);
}

static int bpe_encode(const mx_tokenizer *tok, const char *s, size_t n, mx__ids *out) {
  const mx__spm *m = &tok->spm;
  size_t cap = n + 1;
  sym *sy = malloc(cap * sizeof *sy);
  if (!sy) return MX_ERR_OOM;
  int32_t count = 0;
  for (size_t i = 0; i < n;) {
    bool user;
    size_t l = prefix_len(m, (const uint8_t *)s + i, n - i, &user);
    sy[count] = (sym){s + i, l, count - 1, i + l < n ? count + 1 : -1, user};
    count++;
    i += l;
  }
  agenda q = {0};
  rev_merge rv = {0};
  int st = MX_OK;
  for (int32_t i = 1; i < count && !st; i++) st = maybe_add(tok, sy, &q, &rv, i - 1, i);
  while (q.n && !st) {
    pair top = agenda_pop(&q);
    if (!sy[top.left].n || !sy[top.right].n || sy[top.left].n + sy[top.right].n != top.size)
      continue;
    sy[top.left].n += sy[top.right].n;
    sy[top.left].next = sy[top.right].next;
    if (sy[top.right].next >= 0) sy[sy[top.right].next].prev = top.left;
    sy[top.right].n = 0;
    st = maybe_add(tok, sy, &q, &rv, sy[top.left].prev, top.left);
    if (!st) st = maybe_add(tok, sy, &q, &rv, top.left, sy[top.left].next);
  }
  for (int32_t i = count ? 0 : -1; i >= 0 && !st; i = sy[i].next)
    resegment(tok, &rv, sy[i].p, sy[i].n, out, 0);
  free(q.h);
  if (rv.on) mx__strmap_free(&rv.rev);
  free(sy);
  return st;
}

/* ---- unigram (Viterbi) ----------------------------------------------------------------- */

typedef struct {
  int32_t id, start;
  float score;
} node;

static int unigram_encode(const mx_tokenizer *tok, const char *s, size_t n, mx__ids *out) {
  const mx__spm *m = &tok->spm;
  node *best = malloc((n + 1) * sizeof *best);
  if (!best) return MX_ERR_OOM;
  for (size_t i = 0; i <= n; i++) best[i] = (node){-1, -1, 0};
  const float unk_score = m->min_score - 10.0f;
  for (size_t at = 0; at < n;) {
    float till = best[at].score;
    bool single = false;
    uint32_t cp;
    size_t mblen = mx__utf8_decode((const uint8_t *)s + at, n - at, &cp);
    size_t maxl = MX_MIN(m->max_piece_len, n - at);
    for (size_t l = 1; l <= maxl; l++) {
      int32_t id = mx__strmap_get(&tok->vocab, s + at, l);
      if (id < 0 || m->types[id] == MX__SP_UNUSED) continue;
      /* as sentencepiece: the candidate is a double (the piece score is
       * `auto` of a double expression), compared with the stored float */
      double score = m->types[id] == MX__SP_USER ? (double)l * m->max_score - 0.1
                                                 : (double)m->scores[id];
      double cand = score + (double)till;
      node *t = &best[at + l];
      if (t->start < 0 || cand > (double)t->score) *t = (node){id, (int32_t)at, (float)cand};
      if (l == mblen) single = true;
    }
    if (!single) {
      node *t = &best[at + mblen];
      float cand = unk_score + till;
      if (t->start < 0 || cand > t->score) *t = (node){m->unk_id, (int32_t)at, cand};
    }
    at += mblen;
  }
  /* backtrack */
  size_t k = 0;
  for (size_t e = n; e > 0; e = (size_t)best[e].start) k++;
  size_t *ends = malloc((k + 1) * sizeof *ends);
  if (!ends) {
    free(best);
    return MX_ERR_OOM;
  }
  size_t j = k;
  for (size_t e = n; e > 0; e = (size_t)best[e].start) ends[--j] = e;
  for (size_t i = 0; i < k; i++) {
    size_t e = ends[i], b = (size_t)best[e].start;
    emit(tok, s + b, e - b, best[e].id, out);
  }
  free(ends);
  free(best);
  return MX_OK;
}

int mx__spm_encode(const mx_tokenizer *tok, const char *text, size_t len, bool add_special,
                   mx__ids *out) {
  mx__buf norm = {0};
  spm_normalize(&tok->spm, text, len, &norm);
  if (norm.oom) return mx__set_error(MX_ERR_OOM, "out of memory");
  if (add_special && tok->spm.bos_id >= 0) mx__ids_push(out, tok->spm.bos_id);
  int st = MX_OK;
  if (norm.n)
    st = tok->spm.model_type == 2 ? bpe_encode(tok, norm.p, norm.n, out)
                                  : unigram_encode(tok, norm.p, norm.n, out);
  mx__buf_free(&norm);
  if (st == MX_ERR_OOM) mx__set_error(st, "out of memory encoding");
  return st;
}

/* ---- decode ---------------------------------------------------------------------------- */

static void flush_bytes(mx__buf *out, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode(b + i, n - i, &cp);
    bool real_fffd = l == 3 && b[i] == 0xEF && b[i + 1] == 0xBF && b[i + 2] == 0xBD;
    if (cp == 0xFFFD && !real_fffd) {
      mx__buf_put(out, "\xEF\xBF\xBD", 3);
      i += 1;
    } else {
      mx__buf_put(out, b + i, l);
      i += l;
    }
  }
}

int mx__spm_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                   mx__buf *out) {
  const mx__spm *m = &tok->spm;
  uint8_t *bytes = malloc(n + 1);
  if (!bytes) return mx__set_error(MX_ERR_OOM, "out of memory");
  size_t nb = 0;
  bool strip_ws = m->add_dummy_prefix || m->remove_extra_ws;
  bool bos_ws = true; /* until the first visible piece (control pieces are invisible) */
  size_t out_start = out->n;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    int t = m->types[id];
    if (t == MX__SP_CONTROL) continue;
    if (t == MX__SP_BYTE) {
      const char *p = tok->tokens[id];
      unsigned v = 0;
      if (sscanf(p + 3, "%2X", &v) == 1) bytes[nb++] = (uint8_t)v;
      bos_ws = false;
      continue;
    }
    flush_bytes(out, bytes, nb);
    nb = 0;
    if (t == MX__SP_UNKNOWN) {
      if (!skip_special) mx__buf_puts(out, " \xE2\x81\x87 ");
      bos_ws = false;
      continue;
    }
    const char *p = tok->tokens[id];
    size_t l = tok->token_len[id];
    /* the first visible piece loses its leading ▁; with
     * remove_extra_whitespaces every piece does while the text is empty */
    if (((strip_ws && bos_ws) || (m->remove_extra_ws && out->n == out_start)) && l >= 3 &&
        !memcmp(p, SPACE_SYMBOL, 3)) {
      p += 3;
      l -= 3;
    }
    bos_ws = false;
    for (size_t j = 0; j < l;) {
      if (j + 3 <= l && !memcmp(p + j, SPACE_SYMBOL, 3)) {
        mx__buf_putc(out, ' ');
        j += 3;
      } else {
        mx__buf_putc(out, p[j]);
        j++;
      }
    }
  }
  flush_bytes(out, bytes, nb);
  free(bytes);
  return out->oom ? mx__set_error(MX_ERR_OOM, "out of memory decoding") : MX_OK;
}
