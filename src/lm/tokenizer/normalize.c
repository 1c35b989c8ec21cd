/* normalize.c — tokenizer.json normalizers applied in sequence. */
#include "tok_internal.h"

#include <utf8proc.h>

static bool all_ascii(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((uint8_t)s[i] >= 0x80) return false;
  return true;
}

static int unicode_form(int kind, const char *s, size_t n, mx__buf *out) {
  if (all_ascii(s, n)) { /* ASCII is invariant under every normal form */
    mx__buf_put(out, s, n);
    return MX_OK;
  }
  int opt = UTF8PROC_STABLE;
  switch (kind) {
  case MX__NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
  case MX__NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
  case MX__NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
  default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t *res = NULL;
  utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &res,
                                    (utf8proc_option_t)opt);
  if (k < 0) {
    free(res);
    return mx__set_error(k == UTF8PROC_ERROR_NOMEM ? MX_ERR_OOM : MX_ERR_INTERNAL,
                         "normalizer: %s", utf8proc_errmsg(k));
  }
  mx__buf_put(out, res, (size_t)k);
  free(res);
  return MX_OK;
}

static void lowercase(const char *s, size_t n, mx__buf *out) {
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)s + i, n - i, &cp);
    char tmp[8];
    if (cp == 0x130) { /* full lowercase mapping: i + combining dot above */
      mx__buf_put(out, "i\xCC\x87", 3);
    } else {
      uint32_t lc = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
      mx__buf_put(out, tmp, mx__utf8_encode(lc, tmp));
    }
    i += l;
  }
}

static void strip(const char *s, size_t n, bool left, bool right, mx__buf *out) {
  size_t a = 0, b = n;
  if (left)
    while (a < b) {
      uint32_t cp;
      size_t l = mx__utf8_decode((const uint8_t *)s + a, b - a, &cp);
      if (!mx__is_white_space(cp)) break;
      a += l;
    }
  if (right)
    while (b > a) {
      size_t st = b - 1;
      while (st > a && ((uint8_t)s[st] & 0xC0) == 0x80) st--;
      uint32_t cp;
      mx__utf8_decode((const uint8_t *)s + st, b - st, &cp);
      if (!mx__is_white_space(cp)) break;
      b = st;
    }
  mx__buf_put(out, s + a, b - a);
}

static void replace(const char *s, size_t n, const char *pat, const char *with, mx__buf *out) {
  size_t pl = strlen(pat), wl = strlen(with);
  if (!pl) {
    mx__buf_put(out, s, n);
    return;
  }
  size_t i = 0, run = 0;
  while (i + pl <= n) {
    if (s[i] == pat[0] && !memcmp(s + i, pat, pl)) {
      mx__buf_put(out, s + run, i - run);
      mx__buf_put(out, with, wl);
      i += pl;
      run = i;
    } else {
      i++;
    }
  }
  mx__buf_put(out, s + run, n - run);
}

int mx__normalize(const mx_tokenizer *tok, const char *s, size_t n, mx__buf *out) {
  mx__buf a = {0}, b = {0};
  const char *cur = s;
  size_t cn = n;
  mx__buf *dst = &a;
  for (int k = 0; k < tok->n_norms; k++) {
    const mx__normalizer *nm = &tok->norms[k];
    dst->n = 0;
    switch (nm->kind) {
    case MX__NORM_NFC:
    case MX__NORM_NFD:
    case MX__NORM_NFKC:
    case MX__NORM_NFKD: {
      int st = unicode_form(nm->kind, cur, cn, dst);
      if (st) {
        mx__buf_free(&a);
        mx__buf_free(&b);
        return st;
      }
      break;
    }
    case MX__NORM_LOWER: lowercase(cur, cn, dst); break;
    case MX__NORM_STRIP: strip(cur, cn, nm->left, nm->right, dst); break;
    case MX__NORM_REPLACE: replace(cur, cn, nm->a, nm->b, dst); break;
    case MX__NORM_PREPEND:
      if (cn) mx__buf_puts(dst, nm->a);
      mx__buf_put(dst, cur, cn);
      break;
    }
    cur = dst->p ? dst->p : "";
    cn = dst->n;
    dst = dst == &a ? &b : &a;
  }
  mx__buf_put(out, cur, cn);
  int oom = a.oom || b.oom || out->oom;
  mx__buf_free(&a);
  mx__buf_free(&b);
  return oom ? mx__set_error(MX_ERR_OOM, "out of memory normalizing") : MX_OK;
}
