/* decode.c — tokenizer.json decoders (Hugging Face decode_chain semantics)
 * and the streaming detokenizer. */
#include "tok_internal.h"

/* A list of strings the decoders transform in turn. */
typedef struct {
  mx__buf *s;
  size_t n, cap;
} strlist;

static int sl_push(strlist *l, const char *p, size_t n) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    mx__buf *q = realloc(l->s, cap * sizeof *q);
    if (!q) return MX_ERR_OOM;
    l->s = q;
    l->cap = cap;
  }
  mx__buf *b = &l->s[l->n++];
  *b = (mx__buf){0};
  mx__buf_put(b, p, n);
  mx__buf_reserve(b, 1);
  return b->oom ? MX_ERR_OOM : MX_OK;
}

static void sl_free(strlist *l) {
  for (size_t i = 0; i < l->n; i++) mx__buf_free(&l->s[i]);
  free(l->s);
  *l = (strlist){0};
}

static const char *sp(const mx__buf *b) { return b->p ? b->p : ""; }

static int byte_token(const mx__buf *b) {
  if (b->n != 6 || memcmp(b->p, "<0x", 3) || b->p[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = b->p[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

static int flush_bytes(strlist *out, mx__buf *bytes) {
  int st = MX_OK;
  if (!bytes->n) return st;
  if (mx__utf8_valid(bytes->p, bytes->n)) {
    st = sl_push(out, bytes->p, bytes->n);
  } else {
    for (size_t i = 0; i < bytes->n && !st; i++) st = sl_push(out, "\xEF\xBF\xBD", 3);
  }
  bytes->n = 0;
  return st;
}

static size_t count_chars(const char *s, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++)
    if (((uint8_t)s[i] & 0xC0) != 0x80) c++;
  return c;
}

/* One decoder step: in -> out. */
static int apply_decoder(const mx_tokenizer *tok, const mx__decoder *d, strlist *in, strlist *out) {
  int st = MX_OK;
  switch (d->kind) {
  case MX__DEC_BYTELEVEL: {
    mx__buf raw = {0}, tmp = {0};
    for (size_t i = 0; i < in->n; i++) {
      const mx__buf *t = &in->s[i];
      /* chars -> bytes; a token with a char outside the map stays as is */
      size_t mark = raw.n;
      bool ok = true;
      for (size_t j = 0; j < t->n;) {
        uint32_t cp;
        size_t l = mx__utf8_decode((const uint8_t *)t->p + j, t->n - j, &cp);
        int b = mx__cp_to_byte(cp);
        if (b < 0) {
          ok = false;
          break;
        }
        mx__buf_putc(&raw, (char)b);
        j += l;
      }
      if (!ok) {
        raw.n = mark;
        mx__buf_put(&raw, t->p, t->n);
      }
    }
    mx__utf8_lossy(&tmp, raw.p ? raw.p : "", raw.n);
    st = (raw.oom || tmp.oom) ? MX_ERR_OOM : sl_push(out, sp(&tmp), tmp.n);
    mx__buf_free(&raw);
    mx__buf_free(&tmp);
    break;
  }
  case MX__DEC_BYTEFALLBACK: {
    mx__buf bytes = {0};
    for (size_t i = 0; i < in->n && !st; i++) {
      int b = byte_token(&in->s[i]);
      if (b >= 0) {
        mx__buf_putc(&bytes, (char)b);
        continue;
      }
      st = flush_bytes(out, &bytes);
      if (!st) st = sl_push(out, sp(&in->s[i]), in->s[i].n);
    }
    if (!st) st = flush_bytes(out, &bytes);
    if (bytes.oom) st = MX_ERR_OOM;
    mx__buf_free(&bytes);
    break;
  }
  case MX__DEC_FUSE: {
    mx__buf all = {0};
    for (size_t i = 0; i < in->n; i++) mx__buf_put(&all, sp(&in->s[i]), in->s[i].n);
    st = all.oom ? MX_ERR_OOM : sl_push(out, sp(&all), all.n);
    mx__buf_free(&all);
    break;
  }
  case MX__DEC_REPLACE: {
    size_t pl = strlen(d->a), wl = strlen(d->b);
    for (size_t i = 0; i < in->n && !st; i++) {
      mx__buf r = {0};
      const char *s = sp(&in->s[i]);
      size_t n = in->s[i].n, run = 0;
      for (size_t j = 0; pl && j + pl <= n;) {
        if (!memcmp(s + j, d->a, pl)) {
          mx__buf_put(&r, s + run, j - run);
          mx__buf_put(&r, d->b, wl);
          j += pl;
          run = j;
        } else {
          j++;
        }
      }
      mx__buf_put(&r, s + run, n - run);
      st = r.oom ? MX_ERR_OOM : sl_push(out, sp(&r), r.n);
      mx__buf_free(&r);
    }
    break;
  }
  case MX__DEC_METASPACE: {
    size_t rl = strlen(d->a);
    for (size_t i = 0; i < in->n && !st; i++) {
      mx__buf r = {0};
      const char *s = sp(&in->s[i]);
      size_t n = in->s[i].n;
      for (size_t j = 0; j < n;) {
        if (rl && j + rl <= n && !memcmp(s + j, d->a, rl)) {
          if (!(i == 0 && d->prepend_scheme != 2)) mx__buf_putc(&r, ' ');
          j += rl;
        } else {
          mx__buf_putc(&r, s[j]);
          j++;
        }
      }
      st = r.oom ? MX_ERR_OOM : sl_push(out, sp(&r), r.n);
      mx__buf_free(&r);
    }
    break;
  }
  case MX__DEC_STRIP: {
    uint32_t c;
    mx__utf8_decode((const uint8_t *)d->a, strlen(d->a) ? strlen(d->a) : 1, &c);
    for (size_t i = 0; i < in->n && !st; i++) {
      const char *s = sp(&in->s[i]);
      size_t n = in->s[i].n, nchars = count_chars(s, n);
      size_t start_cut = 0, stop_cut = 0;
      /* leading */
      size_t pos = 0;
      for (int k = 0; k < d->start && pos < n; k++) {
        uint32_t cp;
        size_t l = mx__utf8_decode((const uint8_t *)s + pos, n - pos, &cp);
        if (cp != c) break;
        start_cut++;
        pos += l;
      }
      size_t end = n;
      for (int k = 0; k < d->stop && end > 0; k++) {
        size_t b = end - 1;
        while (b > 0 && ((uint8_t)s[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        mx__utf8_decode((const uint8_t *)s + b, end - b, &cp);
        if (cp != c) break;
        stop_cut++;
        end = b;
      }
      /* HF takes (byte length - cuts) chars after skipping start_cut chars */
      size_t take = n >= start_cut + stop_cut ? n - start_cut - stop_cut : 0;
      size_t avail = nchars - start_cut;
      if (take > avail) take = avail;
      size_t a = pos, e = a;
      for (size_t k = 0; k < take && e < n; k++) {
        uint32_t cp;
        e += mx__utf8_decode((const uint8_t *)s + e, n - e, &cp);
      }
      st = sl_push(out, s + a, e - a);
    }
    break;
  }
  }
  (void)tok;
  return st;
}

int mx__hf_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                  mx__buf *out) {
  /* fast path: a lone ByteLevel decoder concatenates per-id bytes */
  if (tok->n_decs == 1 && tok->decs[0].kind == MX__DEC_BYTELEVEL && tok->raw) {
    mx__buf raw = {0};
    for (size_t i = 0; i < n; i++) {
      int32_t id = ids[i];
      if (!tok->raw[id] || (skip_special && tok->special[id])) continue;
      mx__buf_put(&raw, tok->raw[id], tok->raw_len[id]);
    }
    mx__utf8_lossy(out, raw.p ? raw.p : "", raw.n);
    int oom = raw.oom || out->oom;
    mx__buf_free(&raw);
    return oom ? mx__set_error(MX_ERR_OOM, "out of memory decoding") : MX_OK;
  }
  strlist a = {0}, b = {0};
  int st = MX_OK;
  for (size_t i = 0; i < n && !st; i++) {
    int32_t id = ids[i];
    if (!tok->tokens[id] || (skip_special && tok->special[id])) continue;
    st = sl_push(&a, tok->tokens[id], tok->token_len[id]);
  }
  for (int k = 0; k < tok->n_decs && !st; k++) {
    b.n = 0;
    st = apply_decoder(tok, &tok->decs[k], &a, &b);
    for (size_t i = 0; i < a.n; i++) mx__buf_free(&a.s[i]);
    a.n = 0;
    strlist t = a;
    a = b;
    b = t;
  }
  for (size_t i = 0; i < a.n && !st; i++) {
    if (i && !tok->has_decoder) mx__buf_putc(out, ' ');
    mx__buf_put(out, sp(&a.s[i]), a.s[i].n);
  }
  sl_free(&a);
  sl_free(&b);
  if (!st && out->oom) st = MX_ERR_OOM;
  return st == MX_ERR_OOM ? mx__set_error(MX_ERR_OOM, "out of memory decoding") : st;
}

/* ---- streaming detokenizer ----------------------------------------------------------
 * Keeps a short window of ids: `prefix` is the decoding of ids[0..read) and
 * each push decodes the whole window; new text is emitted once the window's
 * decoding is longer than the prefix and does not end in U+FFFD (an
 * incomplete character). The window then restarts at `read`, so a decoder
 * that treats the first token specially (Metaspace, Strip) sees the same
 * context as in a full decode. */
struct mx_detokenizer {
  const mx_tokenizer *tok;
  bool skip;
  mx__ids ids;
  size_t read;  /* ids[0..read) form the prefix */
  char *prefix; /* decode(ids[0..read)) */
  size_t prefix_len;
  char *out;
};

mx_detokenizer *mx_detokenizer_new(const mx_tokenizer *tok, bool skip_special) {
  if (!tok) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_detokenizer_new: tokenizer is NULL");
    return NULL;
  }
  mx_detokenizer *d = calloc(1, sizeof *d);
  if (!d) {
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  d->tok = tok;
  d->skip = skip_special;
  return d;
}

void mx_detokenizer_free(mx_detokenizer *d) {
  if (!d) return;
  free(d->ids.p);
  free(d->prefix);
  free(d->out);
  free(d);
}

static bool ends_with_fffd(const char *s, size_t n) {
  return n >= 3 && !memcmp(s + n - 3, "\xEF\xBF\xBD", 3);
}

int mx_detokenizer_push(mx_detokenizer *d, int32_t id, const char **text, size_t *len) {
  if (!d || !text || !len) return mx__set_error(MX_ERR_INVALID_ARG, "mx_detokenizer_push: NULL");
  *text = "";
  *len = 0;
  if (id < 0 || id >= d->tok->n_ids)
    return mx__set_error(MX_ERR_RANGE, "detokenizer: id %d out of range", id);
  free(d->out);
  d->out = NULL;
  mx__ids_push(&d->ids, id);
  if (d->ids.oom) return mx__set_error(MX_ERR_OOM, "out of memory");
  char *s;
  size_t n;
  int st = mx_tokenizer_decode(d->tok, d->ids.p, d->ids.n, d->skip, &s, &n);
  if (st) return st;
  if (n > d->prefix_len && !ends_with_fffd(s, n) && !memcmp(s, d->prefix ? d->prefix : "", d->prefix_len)) {
    size_t k = n - d->prefix_len;
    d->out = malloc(k + 1);
    if (!d->out) {
      free(s);
      return mx__set_error(MX_ERR_OOM, "out of memory");
    }
    memcpy(d->out, s + d->prefix_len, k);
    d->out[k] = 0;
    /* new window: ids[read..] ; its prefix = decode(ids[read..]) */
    size_t keep = d->ids.n - d->read;
    memmove(d->ids.p, d->ids.p + d->read, keep * sizeof(int32_t));
    d->ids.n = keep;
    free(d->prefix);
    d->prefix = NULL;
    st = mx_tokenizer_decode(d->tok, d->ids.p, d->ids.n, d->skip, &d->prefix, &d->prefix_len);
    d->read = d->ids.n;
    free(s);
    if (st) return st;
    *text = d->out;
    *len = k;
    return MX_OK;
  }
  free(s);
  return MX_OK;
}

int mx_detokenizer_flush(mx_detokenizer *d, const char **text, size_t *len) {
  if (!d || !text || !len) return mx__set_error(MX_ERR_INVALID_ARG, "mx_detokenizer_flush: NULL");
  *text = "";
  *len = 0;
  free(d->out);
  d->out = NULL;
  char *s = NULL;
  size_t n = 0;
  int st = mx_tokenizer_decode(d->tok, d->ids.p, d->ids.n, d->skip, &s, &n);
  if (st) return st;
  if (n > d->prefix_len && !memcmp(s, d->prefix ? d->prefix : "", d->prefix_len)) {
    memmove(s, s + d->prefix_len, n - d->prefix_len);
    n -= d->prefix_len;
    s[n] = 0;
    d->out = s;
    *text = s;
    *len = n;
  } else {
    free(s);
  }
  d->ids.n = 0;
  d->read = 0;
  free(d->prefix);
  d->prefix = NULL;
  d->prefix_len = 0;
  return MX_OK;
}
