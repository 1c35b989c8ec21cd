/* bpe.c — the BPE model of tokenizer.json: one pre-token in, ids out.
 *
 * Follows Hugging Face's Word::merge_all: symbols form a linked list, a
 * min-heap holds candidate merges ordered by (rank, position), and stale
 * heap entries are skipped when the pair at that position no longer yields
 * the same merged id. */
#include "tok_internal.h"

typedef struct {
  int32_t id, prev, next;
  uint32_t len;
} symbol;

typedef struct {
  int32_t rank, pos, out;
} merge;

struct mx__bpe_scratch {
  symbol *sym;
  size_t nsym, capsym;
  merge *heap;
  size_t nheap, capheap;
};

mx__bpe_scratch *mx__bpe_scratch_new(void) { return calloc(1, sizeof(mx__bpe_scratch)); }

void mx__bpe_scratch_free(mx__bpe_scratch *s) {
  if (!s) return;
  free(s->sym);
  free(s->heap);
  free(s);
}

static int add_symbol(mx__bpe_scratch *s, int32_t id, uint32_t len) {
  if (s->nsym == s->capsym) {
    size_t cap = s->capsym ? s->capsym * 2 : 64;
    symbol *p = realloc(s->sym, cap * sizeof *p);
    if (!p) return MX_ERR_OOM;
    s->sym = p;
    s->capsym = cap;
  }
  int32_t i = (int32_t)s->nsym++;
  s->sym[i] = (symbol){id, i - 1, i + 1, len};
  return MX_OK;
}

static inline bool merge_less(merge a, merge b) {
  return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static int heap_push(mx__bpe_scratch *s, merge m) {
  if (s->nheap == s->capheap) {
    size_t cap = s->capheap ? s->capheap * 2 : 64;
    merge *p = realloc(s->heap, cap * sizeof *p);
    if (!p) return MX_ERR_OOM;
    s->heap = p;
    s->capheap = cap;
  }
  size_t i = s->nheap++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!merge_less(m, s->heap[parent])) break;
    s->heap[i] = s->heap[parent];
    i = parent;
  }
  s->heap[i] = m;
  return MX_OK;
}

static merge heap_pop(mx__bpe_scratch *s) {
  merge top = s->heap[0];
  merge last = s->heap[--s->nheap];
  size_t i = 0, n = s->nheap;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && merge_less(s->heap[c + 1], s->heap[c])) c++;
    if (!merge_less(s->heap[c], last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n) s->heap[i] = last;
  return top;
}

static int merge_all(const mx_tokenizer *tok, mx__bpe_scratch *s) {
  symbol *sym = s->sym;
  int32_t n = (int32_t)s->nsym;
  s->nheap = 0;
  int32_t rank, out;
  for (int32_t i = 0; i + 1 < n; i++)
    if (mx__pairmap_get(&tok->merges, sym[i].id, sym[i + 1].id, &rank, &out))
      if (heap_push(s, (merge){rank, i, out})) return MX_ERR_OOM;
  while (s->nheap) {
    merge top = heap_pop(s);
    symbol *cur = &s->sym[top.pos];
    if (cur->len == 0 || cur->next >= n) continue;
    symbol right = s->sym[cur->next];
    if (!mx__pairmap_get(&tok->merges, cur->id, right.id, &rank, &out) || out != top.out)
      continue;
    /* merge right into cur */
    cur->id = top.out;
    cur->len += right.len;
    s->sym[cur->next].len = 0;
    cur->next = right.next;
    if (right.next < n) s->sym[right.next].prev = top.pos;
    if (cur->prev >= 0) {
      symbol *prev = &s->sym[cur->prev];
      if (mx__pairmap_get(&tok->merges, prev->id, cur->id, &rank, &out))
        if (heap_push(s, (merge){rank, cur->prev, out})) return MX_ERR_OOM;
    }
    cur = &s->sym[top.pos];
    if (cur->next < n) {
      if (mx__pairmap_get(&tok->merges, cur->id, s->sym[cur->next].id, &rank, &out))
        if (heap_push(s, (merge){rank, top.pos, out})) return MX_ERR_OOM;
    }
  }
  return MX_OK;
}

/* The symbols of a word before merging (HF BPE::merge_word). */
static int initial_symbols(const mx_tokenizer *tok, mx__bpe_scratch *s, const char *w,
                           size_t n) {
  s->nsym = 0;
  if (tok->byte_level) {
    for (size_t i = 0; i < n; i++) {
      int32_t id = tok->byte_id[(uint8_t)w[i]];
      if (id < 0) id = tok->unk_id; /* no unk: the byte is dropped, as HF does */
      if (id >= 0 && add_symbol(s, id, 1)) return MX_ERR_OOM;
    }
    return MX_OK;
  }
  int32_t unk_pending = -1;
  uint32_t unk_len = 0;
  char stack[256];
  size_t plen = tok->cont_prefix ? strlen(tok->cont_prefix) : 0;
  size_t slen = tok->eow_suffix ? strlen(tok->eow_suffix) : 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)w + i, n - i, &cp);
    bool first = i == 0, last = i + l == n;
    const char *key = w + i;
    size_t klen = l;
    if ((!first && plen) || (last && slen)) {
      if (plen + l + slen > sizeof stack) return mx__set_error(MX_ERR_INVALID_ARG, "token too long");
      klen = 0;
      if (!first && plen) {
        memcpy(stack, tok->cont_prefix, plen);
        klen = plen;
      }
      memcpy(stack + klen, w + i, l);
      klen += l;
      if (last && slen) {
        memcpy(stack + klen, tok->eow_suffix, slen);
        klen += slen;
      }
      key = stack;
    }
    int32_t id = mx__strmap_get(&tok->vocab, key, klen);
    if (id >= 0) {
      if (unk_pending >= 0) {
        if (add_symbol(s, unk_pending, unk_len)) return MX_ERR_OOM;
        unk_pending = -1;
      }
      if (add_symbol(s, id, (uint32_t)l)) return MX_ERR_OOM;
    } else {
      bool done = false;
      if (tok->byte_fallback) {
        bool all = true;
        for (size_t k = 0; k < klen; k++)
          if (tok->fallback_id[(uint8_t)key[k]] < 0) all = false;
        if (all) {
          for (size_t k = 0; k < klen; k++)
            if (add_symbol(s, tok->fallback_id[(uint8_t)key[k]], 1)) return MX_ERR_OOM;
          done = true;
        }
      }
      if (!done && tok->unk_id >= 0) {
        if (unk_pending >= 0 && tok->fuse_unk) {
          unk_len += (uint32_t)l;
        } else {
          if (unk_pending >= 0 && add_symbol(s, unk_pending, unk_len)) return MX_ERR_OOM;
          unk_pending = tok->unk_id;
          unk_len = (uint32_t)l;
        }
      }
    }
    i += l;
  }
  if (unk_pending >= 0 && add_symbol(s, unk_pending, unk_len)) return MX_ERR_OOM;
  return MX_OK;
}

int mx__bpe_word(const mx_tokenizer *tok, mx__bpe_scratch *s, const char *w, size_t n,
                 mx__ids *out) {
  if (!n) return MX_OK;
  if (tok->ignore_merges) {
    int32_t id = mx__strmap_get(&tok->vocab, w, n);
    if (id >= 0) {
      mx__ids_push(out, id);
      return out->oom ? MX_ERR_OOM : MX_OK;
    }
  }
  int st = initial_symbols(tok, s, w, n);
  if (st) return st;
  if (s->nsym > 1 && merge_all(tok, s)) return MX_ERR_OOM;
  mx__ids_reserve(out, s->nsym);
  if (out->oom) return MX_ERR_OOM;
  for (int32_t i = 0; i < (int32_t)s->nsym && i >= 0; i = s->sym[i].next)
    out->p[out->n++] = s->sym[i].id;
  return MX_OK;
}
