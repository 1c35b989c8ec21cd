/* jinja_parse.c — template source to AST.
 *
 * The lexer works like jinja2's: newlines are normalised to "\n" and one
 * trailing newline is dropped; `{%-`/`-%}` strip whitespace; lstrip_blocks
 * removes the spaces and tabs that begin a line before `{%` / `{#` (unless
 * `{%+`); trim_blocks removes the first newline after `%}` / `#}` (unless
 * `+%}`). Tag contents become tokens of one stream that the recursive
 * descent parser reads. */
#include "jinja.h"

#include <ctype.h>
#include <stdarg.h>

typedef enum {
  T_EOF, T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT,
  T_FLOAT, T_OP
} ttype;

typedef struct {
  ttype t;
  int line;
  const char *s; /* name / op text / string value (arena, NUL-terminated) */
  size_t n;
  int64_t i;
  double f;
} token;

typedef struct {
  jtemplate *tpl;
  jarena *a;
  token *tk;
  size_t n, cap, pos;
  char *err;
  int status;
  int depth; /* expression nesting, bounded */
} parser;

static int perr(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(parser *p, int line, const char *fmt, ...) {
  if (p->status) return p->status;
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(p->err, 512, "template line %d: %s", line, msg);
  p->status = MX_ERR_FORMAT;
  return p->status;
}

static char *adup(jarena *a, const char *s, size_t n) {
  char *d = mx__jarena_alloc(a, n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}

static int push(parser *p, token t) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 256;
    token *q = realloc(p->tk, cap * sizeof *q);
    if (!q) return p->status = MX_ERR_OOM;
    p->tk = q;
    p->cap = cap;
  }
  p->tk[p->n++] = t;
  return MX_OK;
}

/* ---- lexer ---------------------------------------------------------------------- */

static const char *const OPS[] = {"==", "!=", "<=", ">=", "//", "**", "(", ")", "[", "]", "{",
                                  "}", ".", ",", ":", "|", "~", "+", "-", "*", "/", "%", "<",
                                  ">", "=", NULL};

/* Tokenize a tag's content s[0..n), starting at line. Stops at the tag end
 * (returns its offset); *end_len receives its length incl. '-'/'+'. */
static int lex_inside(parser *p, const char *s, size_t n, int *line, const char *close,
                      size_t *stop, bool *strip_after, bool *keep_newline) {
  size_t i = 0;
  while (i < n) {
    char c = s[i];
    if (c == '\n') {
      (*line)++;
      i++;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') {
      i++;
      continue;
    }
    /* tag end: optional -/+ then close */
    size_t cl = strlen(close);
    if ((c == '-' || c == '+') && i + 1 + cl <= n && !memcmp(s + i + 1, close, cl)) {
      *strip_after = c == '-';
      *keep_newline = c == '+';
      *stop = i + 1 + cl;
      return MX_OK;
    }
    if (i + cl <= n && !memcmp(s + i, close, cl)) {
      *strip_after = *keep_newline = false;
      *stop = i + cl;
      return MX_OK;
    }
    token t = {.line = *line};
    if (isalpha((unsigned char)c) || c == '_') {
      size_t j = i;
      while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
      t.t = T_NAME;
      t.s = adup(p->a, s + i, j - i);
      t.n = j - i;
      i = j;
    } else if (isdigit((unsigned char)c)) {
      size_t j = i;
      bool flt = false;
      while (j < n && (isdigit((unsigned char)s[j]) || s[j] == '_')) j++;
      if (j + 1 < n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
        flt = true;
        j++;
        while (j < n && isdigit((unsigned char)s[j])) j++;
      }
      if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < n && (s[k] == '+' || s[k] == '-')) k++;
        if (k < n && isdigit((unsigned char)s[k])) {
          flt = true;
          j = k;
          while (j < n && isdigit((unsigned char)s[j])) j++;
        }
      }
      char tmp[64];
      size_t k = 0;
      for (size_t q = i; q < j && k < sizeof tmp - 1; q++)
        if (s[q] != '_') tmp[k++] = s[q];
      tmp[k] = 0;
      if (flt) {
        t.t = T_FLOAT;
        t.f = strtod(tmp, NULL);
      } else {
        t.t = T_INT;
        t.i = strtoll(tmp, NULL, 10);
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      mx__buf b = {0};
      size_t j = i + 1;
      int l0 = *line;
      while (j < n && s[j] != c) {
        char d = s[j];
        if (d == '\n') (*line)++;
        if (d == '\\' && j + 1 < n) {
          char e = s[j + 1];
          j += 2;
          switch (e) {
          case 'n': mx__buf_putc(&b, '\n'); break;
          case 't': mx__buf_putc(&b, '\t'); break;
          case 'r': mx__buf_putc(&b, '\r'); break;
          case '0': mx__buf_putc(&b, '\0'); break;
          case 'a': mx__buf_putc(&b, '\a'); break;
          case 'b': mx__buf_putc(&b, '\b'); break;
          case 'f': mx__buf_putc(&b, '\f'); break;
          case 'v': mx__buf_putc(&b, '\v'); break;
          case '\\': mx__buf_putc(&b, '\\'); break;
          case '\'': mx__buf_putc(&b, '\''); break;
          case '"': mx__buf_putc(&b, '"'); break;
          case '\n': break;
          case 'x':
          case 'u':
          case 'U': {
            int w = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            int k = 0;
            for (; k < w && j + (size_t)k < n && isxdigit((unsigned char)s[j + (size_t)k]); k++) {
              char h = s[j + (size_t)k];
              cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
            }
            if (k < w) {
              mx__buf_free(&b);
              return perr(p, *line, "bad \\%c escape in string literal", e);
            }
            j += (size_t)w;
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
            char u[4];
            mx__buf_put(&b, u, mx__utf8_encode(cp, u));
            break;
          }
          default:
            mx__buf_putc(&b, '\\');
            mx__buf_putc(&b, e);
          }
          continue;
        }
        mx__buf_putc(&b, d);
        j++;
      }
      if (j >= n) {
        mx__buf_free(&b);
        return perr(p, l0, "unterminated string literal");
      }
      t.t = T_STRING;
      t.s = adup(p->a, b.p ? b.p : "", b.n);
      t.n = b.n;
      t.line = l0;
      mx__buf_free(&b);
      i = j + 1;
    } else {
      int k;
      for (k = 0; OPS[k]; k++) {
        size_t ol = strlen(OPS[k]);
        if (i + ol <= n && !memcmp(s + i, OPS[k], ol)) break;
      }
      if (!OPS[k]) return perr(p, *line, "unexpected character '%c'", c);
      t.t = T_OP;
      t.s = OPS[k];
      t.n = strlen(OPS[k]);
      i += t.n;
    }
    if (!t.s && (t.t == T_NAME || t.t == T_STRING)) return p->status = MX_ERR_OOM;
    if (push(p, t)) return p->status;
  }
  return perr(p, *line, "unclosed tag (missing '%s')", close);
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static int lex(parser *p, const char *src0, size_t n0) {
  /* normalise newlines; drop one trailing newline */
  char *src = mx__jarena_alloc(p->a, n0 + 1);
  if (!src) return p->status = MX_ERR_OOM;
  size_t n = 0;
  for (size_t i = 0; i < n0; i++) {
    if (src0[i] == '\r') {
      src[n++] = '\n';
      if (i + 1 < n0 && src0[i + 1] == '\n') i++;
    } else {
      src[n++] = src0[i];
    }
  }
  if (n && src[n - 1] == '\n') n--;
  src[n] = 0;

  int line = 1;
  size_t i = 0;
  bool strip_next = false, trim_next = false, line_starting = true;
  while (i <= n) {
    /* find next tag start */
    size_t j = i;
    const char *kind = NULL;
    while (j + 1 < n) {
      if (src[j] == '{' && (src[j + 1] == '{' || src[j + 1] == '%' || src[j + 1] == '#')) {
        kind = src + j;
        break;
      }
      j++;
    }
    if (!kind) j = n;
    size_t ts = i, te = j;
    if (strip_next)
      while (ts < te && is_ws(src[ts])) ts++;
    else if (trim_next && ts < te && src[ts] == '\n')
      ts++;
    char sign = kind && j + 2 < n ? src[j + 2] : 0;
    if (kind) {
      if (sign == '-') {
        while (te > ts && is_ws(src[te - 1])) te--;
      } else if (sign != '+' && kind[1] != '{') {
        size_t l = te;
        while (l > ts && (src[l - 1] == ' ' || src[l - 1] == '\t')) l--;
        bool at_line_start = (l > ts && src[l - 1] == '\n') || (l == ts && (ts > i ? src[ts - 1] == '\n' : line_starting));
        if (at_line_start) te = l;
      }
    }
    if (te > ts) {
      token t = {.t = T_TEXT, .line = line, .s = adup(p->a, src + ts, te - ts), .n = te - ts};
      if (!t.s || push(p, t)) return p->status = MX_ERR_OOM;
    }
    for (size_t k = i; k < j; k++)
      if (src[k] == '\n') line++;
    if (!kind) break;
    size_t body = j + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
    bool strip_after = false, keep_nl = false;
    size_t stop = 0;
    if (kind[1] == '#') {
      /* comment: find #} */
      size_t k = body;
      while (k + 1 < n && !(src[k] == '#' && src[k + 1] == '}')) k++;
      if (k + 1 >= n) return perr(p, line, "unclosed comment");
      strip_after = k > body && src[k - 1] == '-';
      keep_nl = k > body && src[k - 1] == '+';
      for (size_t q = j; q < k; q++)
        if (src[q] == '\n') line++;
      stop = k + 2 - j;
      i = k + 2;
      strip_next = strip_after;
      trim_next = !strip_after && !keep_nl;
      line_starting = false;
      if (trim_next && i < n && src[i] == '\n') line_starting = true;
      continue;
    }
    bool block = kind[1] == '%';
    token bt = {.t = block ? T_BLOCK_BEGIN : T_VAR_BEGIN, .line = line};
    if (push(p, bt)) return p->status;
    size_t first_tok = p->n;
    if (lex_inside(p, src + body, n - body, &line, block ? "%}" : "}}", &stop, &strip_after, &keep_nl))
      return p->status;
    token et = {.t = block ? T_BLOCK_END : T_VAR_END, .line = line};
    if (push(p, et)) return p->status;
    i = body + stop;
    strip_next = strip_after;
    trim_next = block && !strip_after && !keep_nl;
    /* where does the consumed text end? (for lstrip's "line starting") */
    line_starting = false;
    if (strip_after) {
      size_t k = i;
      while (k < n && is_ws(src[k])) k++;
      line_starting = k > i && src[k - 1] == '\n';
    } else if (trim_next && i < n && src[i] == '\n') {
      line_starting = true;
    }
    /* {% raw %} ... {% endraw %} */
    if (block && p->n - first_tok == 2 && p->tk[first_tok].t == T_NAME &&
        !strcmp(p->tk[first_tok].s, "raw")) {
      p->n = first_tok - 1; /* drop the raw tag tokens */
      size_t k = i;
      const char *end = NULL;
      size_t endlen = 0, rs = i;
      if (strip_next)
        while (rs < n && is_ws(src[rs])) rs++;
      else if (trim_next && rs < n && src[rs] == '\n')
        rs++;
      for (; k + 1 < n; k++) {
        if (src[k] != '{' || src[k + 1] != '%') continue;
        size_t q = k + 2;
        bool minus = q < n && src[q] == '-';
        if (q < n && (src[q] == '-' || src[q] == '+')) q++;
        while (q < n && is_ws(src[q])) q++;
        if (q + 6 <= n && !memcmp(src + q, "endraw", 6)) {
          q += 6;
          while (q < n && is_ws(src[q])) q++;
          bool m2 = q < n && src[q] == '-';
          if (q < n && (src[q] == '-' || src[q] == '+')) q++;
          if (q + 1 < n && src[q] == '%' && src[q + 1] == '}') {
            size_t te2 = k;
            if (minus)
              while (te2 > rs && is_ws(src[te2 - 1])) te2--;
            end = src + k;
            endlen = q + 2 - k;
            token t = {.t = T_TEXT, .line = line, .s = adup(p->a, src + rs, te2 - rs), .n = te2 - rs};
            if (te2 > rs && (!t.s || push(p, t))) return p->status = MX_ERR_OOM;
            strip_next = m2;
            trim_next = !m2;
            break;
          }
        }
      }
      if (!end) return perr(p, line, "missing {%% endraw %%}");
      for (size_t q = i; q < k; q++)
        if (src[q] == '\n') line++;
      i = (size_t)(end - src) + endlen;
      line_starting = trim_next && i < n && src[i] == '\n';
    }
  }
  token e = {.t = T_EOF, .line = line};
  return push(p, e);
}

/* ---- parser ------------------------------------------------------------------------- */

static token *peek(parser *p) { return &p->tk[p->pos]; }
static token *next(parser *p) {
  token *t = &p->tk[p->pos];
  if (t->t != T_EOF) p->pos++;
  return t;
}
static bool is_op(const token *t, const char *op) { return t->t == T_OP && !strcmp(t->s, op); }
static bool is_name(const token *t, const char *nm) { return t->t == T_NAME && !strcmp(t->s, nm); }

static bool accept_op(parser *p, const char *op) {
  if (is_op(peek(p), op)) {
    p->pos++;
    return true;
  }
  return false;
}

static bool expect_op(parser *p, const char *op) {
  if (accept_op(p, op)) return true;
  token *t = peek(p);
  perr(p, t->line, "expected '%s'%s%s", op, t->t == T_NAME || t->t == T_OP ? " before " : "",
       t->t == T_NAME || t->t == T_OP ? t->s : "");
  return false;
}

static jnode *node(parser *p, nkind k, int line) {
  jnode *n = mx__jarena_alloc(p->a, sizeof *n);
  if (!n) {
    p->status = MX_ERR_OOM;
    return NULL;
  }
  n->kind = k;
  n->line = line;
  return n;
}

/* growable node list in the arena */
typedef struct {
  jnode **v;
  int n, cap;
} nlist;
static void nl_push(parser *p, nlist *l, jnode *x) {
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 4;
    jnode **q = mx__jarena_alloc(p->a, (size_t)cap * sizeof *q);
    if (!q) {
      p->status = MX_ERR_OOM;
      return;
    }
    if (l->n) memcpy(q, l->v, (size_t)l->n * sizeof *q);
    l->v = q;
    l->cap = cap;
  }
  l->v[l->n++] = x;
}

static jnode *parse_expr(parser *p, bool with_cond);
static jnode *parse_unary(parser *p, bool with_filter);
static jnode *parse_or(parser *p);


/* call arguments after '(' : positional and name=value */
static void parse_args(parser *p, jnode *call) {
  nlist args = {0}, kw = {0};
  const char **names = NULL;
  int nnames = 0, capn = 0;
  while (!p->status && !is_op(peek(p), ")")) {
    if (peek(p)->t == T_NAME && is_op(&p->tk[p->pos + 1], "=")) {
      const char *nm = next(p)->s;
      next(p);
      jnode *v = parse_expr(p, true);
      if (nnames == capn) {
        capn = capn ? capn * 2 : 4;
        const char **q = mx__jarena_alloc(p->a, (size_t)capn * sizeof *q);
        if (!q) {
          p->status = MX_ERR_OOM;
          return;
        }
        if (nnames) memcpy(q, names, (size_t)nnames * sizeof *q);
        names = q;
      }
      names[nnames++] = nm;
      nl_push(p, &kw, v);
    } else {
      nl_push(p, &args, parse_expr(p, true));
    }
    if (!accept_op(p, ",")) break;
  }
  expect_op(p, ")");
  call->items = args.v;
  call->n = args.n;
  call->kwnames = names;
  call->kwvals = kw.v;
  call->nkw = kw.n;
}

static jnode *parse_primary(parser *p) {
  token *t = next(p);
  jnode *n = NULL;
  if (++p->depth > 200) {
    perr(p, t->line, "expression nested too deeply");
    p->depth--;
    return NULL;
  }
  switch (t->t) {
  case T_NAME:
    if (!strcmp(t->s, "true") || !strcmp(t->s, "True") || !strcmp(t->s, "false") ||
        !strcmp(t->s, "False")) {
      n = node(p, N_LIT, t->line);
      if (n) n->lit = jv_bool(t->s[0] == 't' || t->s[0] == 'T');
    } else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) {
      n = node(p, N_LIT, t->line);
      if (n) n->lit = jv_none();
    } else {
      n = node(p, N_NAME, t->line);
      if (n) n->name = t->s;
    }
    break;
  case T_STRING: {
    /* adjacent literals concatenate */
    mx__buf b = {0};
    mx__buf_put(&b, t->s, t->n);
    while (peek(p)->t == T_STRING) {
      token *u = next(p);
      mx__buf_put(&b, u->s, u->n);
    }
    n = node(p, N_LIT, t->line);
    if (n) n->lit = mx__jv_str(p->a, b.p ? b.p : "", b.n);
    mx__buf_free(&b);
    break;
  }
  case T_INT:
    n = node(p, N_LIT, t->line);
    if (n) n->lit = jv_int(t->i);
    break;
  case T_FLOAT:
    n = node(p, N_LIT, t->line);
    if (n) n->lit = jv_float(t->f);
    break;
  case T_OP:
    if (!strcmp(t->s, "(")) {
      if (accept_op(p, ")")) {
        n = node(p, N_TUPLE, t->line);
        break;
      }
      jnode *e = parse_expr(p, true);
      if (is_op(peek(p), ",")) {
        nlist l = {0};
        nl_push(p, &l, e);
        while (accept_op(p, ",") && !is_op(peek(p), ")")) nl_push(p, &l, parse_expr(p, true));
        n = node(p, N_TUPLE, t->line);
        if (n) {
          n->items = l.v;
          n->n = l.n;
        }
      } else {
        n = e;
      }
      expect_op(p, ")");
    } else if (!strcmp(t->s, "[")) {
      nlist l = {0};
      while (!p->status && !is_op(peek(p), "]")) {
        nl_push(p, &l, parse_expr(p, true));
        if (!accept_op(p, ",")) break;
      }
      expect_op(p, "]");
      n = node(p, N_LIST, t->line);
      if (n) {
        n->items = l.v;
        n->n = l.n;
      }
    } else if (!strcmp(t->s, "{")) {
      nlist l = {0};
      while (!p->status && !is_op(peek(p), "}")) {
        nl_push(p, &l, parse_expr(p, true));
        expect_op(p, ":");
        nl_push(p, &l, parse_expr(p, true));
        if (!accept_op(p, ",")) break;
      }
      expect_op(p, "}");
      n = node(p, N_DICT, t->line);
      if (n) {
        n->items = l.v;
        n->n = l.n;
      }
    } else {
      perr(p, t->line, "unexpected '%s'", t->s);
    }
    break;
  case T_EOF: perr(p, t->line, "unexpected end of template"); break;
  case T_BLOCK_END:
  case T_VAR_END: perr(p, t->line, "expected an expression"); break;
  default: perr(p, t->line, "unexpected token"); break;
  }
  p->depth--;
  return p->status ? NULL : n;
}

static jnode *parse_postfix(parser *p, jnode *n) {
  while (!p->status) {
    token *t = peek(p);
    if (is_op(t, ".")) {
      next(p);
      token *nm = next(p);
      if (nm->t != T_NAME && nm->t != T_INT) {
        perr(p, nm->line, "expected an attribute name after '.'");
        return NULL;
      }
      jnode *a = node(p, N_ATTR, t->line);
      if (!a) return NULL;
      a->a = n;
      if (nm->t == T_NAME) a->name = nm->s;
      else {
        a->kind = N_ITEM;
        a->b = node(p, N_LIT, t->line);
        if (a->b) a->b->lit = jv_int(nm->i);
      }
      n = a;
    } else if (is_op(t, "[")) {
      next(p);
      jnode *lo = NULL, *hi = NULL, *step = NULL;
      bool slice = false;
      if (!is_op(peek(p), ":")) lo = parse_expr(p, true);
      if (accept_op(p, ":")) {
        slice = true;
        if (!is_op(peek(p), "]") && !is_op(peek(p), ":")) hi = parse_expr(p, true);
        if (accept_op(p, ":") && !is_op(peek(p), "]")) step = parse_expr(p, true);
      }
      expect_op(p, "]");
      jnode *a = node(p, slice ? N_SLICE : N_ITEM, t->line);
      if (!a) return NULL;
      a->a = n;
      a->b = lo;
      a->c = hi;
      a->d = step;
      if (!slice && !lo) {
        perr(p, t->line, "empty subscript");
        return NULL;
      }
      n = a;
    } else if (is_op(t, "(")) {
      next(p);
      jnode *c = node(p, N_CALL, t->line);
      if (!c) return NULL;
      c->a = n;
      parse_args(p, c);
      n = c;
    } else {
      break;
    }
  }
  return n;
}

static jnode *parse_filters(parser *p, jnode *n) {
  while (!p->status) {
    token *t = peek(p);
    if (is_op(t, "|")) {
      next(p);
      token *nm = next(p);
      if (nm->t != T_NAME) {
        perr(p, nm->line, "expected a filter name after '|'");
        return NULL;
      }
      jnode *f = node(p, N_FILTER, t->line);
      if (!f) return NULL;
      f->a = n;
      f->name = nm->s;
      if (accept_op(p, "(")) parse_args(p, f);
      n = f;
    } else if (is_name(t, "is")) {
      next(p);
      jnode *f = node(p, N_TEST, t->line);
      if (!f) return NULL;
      if (is_name(peek(p), "not")) {
        next(p);
        f->op = 1;
      }
      token *nm = next(p);
      if (nm->t != T_NAME) {
        perr(p, nm->line, "expected a test name after 'is'");
        return NULL;
      }
      f->a = n;
      f->name = nm->s;
      if (!strcmp(nm->s, "none") || !strcmp(nm->s, "None")) f->name = "none";
      else if (!strcmp(nm->s, "true") || !strcmp(nm->s, "True")) f->name = "true";
      else if (!strcmp(nm->s, "false") || !strcmp(nm->s, "False")) f->name = "false";
      if (accept_op(p, "(")) {
        parse_args(p, f);
      } else {
        token *a = peek(p);
        bool arg = (a->t == T_NAME && strcmp(a->s, "else") && strcmp(a->s, "or") &&
                    strcmp(a->s, "and") && strcmp(a->s, "if") && strcmp(a->s, "is") &&
                    strcmp(a->s, "in") && strcmp(a->s, "not")) ||
                   a->t == T_STRING || a->t == T_INT || a->t == T_FLOAT || is_op(a, "[") ||
                   is_op(a, "{") || is_op(a, "-");
        if (arg) {
          jnode *v = parse_unary(p, false);
          jnode **items = mx__jarena_alloc(p->a, sizeof *items);
          if (!items) {
            p->status = MX_ERR_OOM;
            return NULL;
          }
          items[0] = v;
          f->items = items;
          f->n = 1;
        }
      }
      n = f;
    } else if (is_op(t, "(")) {
      n = parse_postfix(p, n);
    } else {
      break;
    }
  }
  return n;
}

static jnode *parse_unary(parser *p, bool with_filter) {
  token *t = peek(p);
  jnode *n;
  if (p->depth > 200) {
    perr(p, t->line, "expression nested too deeply");
    return NULL;
  }
  if (is_op(t, "-") || is_op(t, "+")) {
    p->depth++;
    next(p);
    n = node(p, N_UNARY, t->line);
    if (!n) return NULL;
    n->op = t->s[0];
    n->a = parse_unary(p, false);
    p->depth--;
  } else {
    n = parse_primary(p);
    if (!n) return NULL;
    n = parse_postfix(p, n);
  }
  if (with_filter && n) n = parse_filters(p, n);
  return n;
}

static jnode *binary(parser *p, int op, jnode *l, jnode *r, int line) {
  jnode *n = node(p, N_BINARY, line);
  if (!n) return NULL;
  n->op = op;
  n->a = l;
  n->b = r;
  return n;
}

static jnode *parse_pow(parser *p) {
  jnode *l = parse_unary(p, true);
  while (!p->status && is_op(peek(p), "**")) {
    int line = next(p)->line;
    l = binary(p, 'P', l, parse_unary(p, true), line);
  }
  return l;
}

static jnode *parse_mul(parser *p) {
  jnode *l = parse_pow(p);
  for (;;) {
    token *t = peek(p);
    int op = is_op(t, "*") ? '*' : is_op(t, "/") ? '/' : is_op(t, "//") ? 'F' : is_op(t, "%") ? '%' : 0;
    if (!op || p->status) break;
    next(p);
    l = binary(p, op, l, parse_pow(p), t->line);
  }
  return l;
}

static jnode *parse_concat(parser *p) {
  jnode *l = parse_mul(p);
  while (!p->status && is_op(peek(p), "~")) {
    int line = next(p)->line;
    l = binary(p, '~', l, parse_mul(p), line);
  }
  return l;
}

static jnode *parse_add(parser *p) {
  jnode *l = parse_concat(p);
  for (;;) {
    token *t = peek(p);
    int op = is_op(t, "+") ? '+' : is_op(t, "-") ? '-' : 0;
    if (!op || p->status) break;
    next(p);
    l = binary(p, op, l, parse_concat(p), t->line);
  }
  return l;
}

static jnode *parse_compare(parser *p) {
  jnode *l = parse_add(p);
  jnode *result = NULL;
  for (;;) {
    token *t = peek(p);
    int op = 0;
    if (is_op(t, "==")) op = 'E';
    else if (is_op(t, "!=")) op = 'N';
    else if (is_op(t, "<")) op = '<';
    else if (is_op(t, ">")) op = '>';
    else if (is_op(t, "<=")) op = 'L';
    else if (is_op(t, ">=")) op = 'G';
    else if (is_name(t, "in")) op = 'I';
    else if (is_name(t, "not") && is_name(&p->tk[p->pos + 1], "in")) op = 'O';
    if (!op || p->status) break;
    next(p);
    if (op == 'O') next(p);
    jnode *r = parse_add(p);
    jnode *c = binary(p, op, l, r, t->line);
    if (!c) return NULL;
    c->kind = N_COMPARE;
    if (result) {
      jnode *a = node(p, N_AND, t->line);
      if (!a) return NULL;
      a->a = result;
      a->b = c;
      result = a;
    } else {
      result = c;
    }
    l = r;
  }
  return result ? result : l;
}

static jnode *parse_not(parser *p) {
  token *t = peek(p);
  if (is_name(t, "not")) {
    next(p);
    if (++p->depth > 200) {
      perr(p, t->line, "expression nested too deeply");
      return NULL;
    }
    jnode *n = node(p, N_NOT, t->line);
    if (n) n->a = parse_not(p);
    p->depth--;
    return n;
  }
  return parse_compare(p);
}

static jnode *parse_and(parser *p) {
  jnode *l = parse_not(p);
  while (!p->status && is_name(peek(p), "and")) {
    token *t = next(p);
    jnode *n = node(p, N_AND, t->line);
    if (!n) return NULL;
    n->a = l;
    n->b = parse_not(p);
    l = n;
  }
  return l;
}

static jnode *parse_or(parser *p) {
  jnode *l = parse_and(p);
  while (!p->status && is_name(peek(p), "or")) {
    token *t = next(p);
    jnode *n = node(p, N_OR, t->line);
    if (!n) return NULL;
    n->a = l;
    n->b = parse_and(p);
    l = n;
  }
  return l;
}

static jnode *parse_expr(parser *p, bool with_cond) {
  jnode *e = parse_or(p);
  while (with_cond && !p->status && is_name(peek(p), "if")) {
    token *t = next(p);
    jnode *c = node(p, N_COND, t->line);
    if (!c) return NULL;
    c->a = e;
    c->b = parse_or(p);
    if (is_name(peek(p), "else")) {
      next(p);
      c->c = parse_expr(p, true);
    }
    e = c;
  }
  return e;
}

/* ---- statements -------------------------------------------------------------------- */

static jnode *parse_body(parser *p, const char *const *ends);
static jnode *parse_statement(parser *p);

static bool expect_block_end(parser *p) {
  token *t = peek(p);
  if (t->t == T_BLOCK_END) {
    next(p);
    return true;
  }
  perr(p, t->line, "expected end of statement '%%}'%s%s", t->t == T_NAME ? ", found " : "",
       t->t == T_NAME ? t->s : "");
  return false;
}

static const char *end_keyword(parser *p) {
  token *t = peek(p);
  if (t->t != T_BLOCK_BEGIN) return NULL;
  token *n = &p->tk[p->pos + 1];
  return n->t == T_NAME ? n->s : NULL;
}

static bool consume_end(parser *p, const char *kw, int start_line) {
  const char *k = end_keyword(p);
  if (!k || strcmp(k, kw)) {
    perr(p, peek(p)->line, "missing {%% %s %%} for the block opened on line %d", kw, start_line);
    return false;
  }
  next(p);
  next(p);
  return expect_block_end(p);
}

static const char **parse_targets(parser *p, int *n) {
  const char **v = NULL;
  int cnt = 0, cap = 0;
  bool paren = accept_op(p, "(");
  do {
    token *t = next(p);
    if (t->t != T_NAME) {
      perr(p, t->line, "expected a variable name");
      return NULL;
    }
    if (cnt == cap) {
      cap = cap ? cap * 2 : 2;
      const char **q = mx__jarena_alloc(p->a, (size_t)cap * sizeof *q);
      if (!q) {
        p->status = MX_ERR_OOM;
        return NULL;
      }
      if (cnt) memcpy(q, v, (size_t)cnt * sizeof *q);
      v = q;
    }
    v[cnt++] = t->s;
  } while (accept_op(p, ","));
  if (paren) expect_op(p, ")");
  *n = cnt;
  return v;
}

static jnode *parse_statement_inner(parser *p) {
  token *open = next(p); /* BLOCK_BEGIN */
  token *kw = next(p);
  if (kw->t != T_NAME) {
    perr(p, open->line, "expected a statement name after '{%%'");
    return NULL;
  }
  int line = kw->line;
  const char *k = kw->s;
  if (!strcmp(k, "if")) {
    jnode *n = node(p, N_IF, line), *cur = n;
    if (!n) return NULL;
    n->a = parse_expr(p, true);
    if (!expect_block_end(p)) return NULL;
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    for (;;) {
      cur->b = parse_body(p, ends);
      if (p->status) return NULL;
      const char *e = end_keyword(p);
      if (e && !strcmp(e, "elif")) {
        next(p);
        int l2 = next(p)->line;
        jnode *m = node(p, N_IF, l2);
        if (!m) return NULL;
        m->a = parse_expr(p, true);
        if (!expect_block_end(p)) return NULL;
        cur->c = m;
        cur = m;
        continue;
      }
      if (e && !strcmp(e, "else")) {
        next(p);
        next(p);
        if (!expect_block_end(p)) return NULL;
        static const char *const ends2[] = {"endif", NULL};
        cur->c = parse_body(p, ends2);
        if (p->status) return NULL;
      }
      break;
    }
    return consume_end(p, "endif", line) ? n : NULL;
  }
  if (!strcmp(k, "for")) {
    jnode *n = node(p, N_FOR, line);
    if (!n) return NULL;
    n->targets = parse_targets(p, &n->ntargets);
    if (p->status) return NULL;
    if (!is_name(peek(p), "in")) {
      perr(p, line, "expected 'in' in for loop");
      return NULL;
    }
    next(p);
    n->a = parse_expr(p, false);
    if (is_name(peek(p), "if")) {
      next(p);
      n->b = parse_expr(p, false);
    }
    if (is_name(peek(p), "recursive")) {
      perr(p, line, "unsupported: recursive for loops");
      return NULL;
    }
    if (!expect_block_end(p)) return NULL;
    static const char *const ends[] = {"else", "endfor", NULL};
    n->c = parse_body(p, ends);
    if (p->status) return NULL;
    const char *e = end_keyword(p);
    if (e && !strcmp(e, "else")) {
      next(p);
      next(p);
      if (!expect_block_end(p)) return NULL;
      static const char *const ends2[] = {"endfor", NULL};
      n->d = parse_body(p, ends2);
      if (p->status) return NULL;
    }
    return consume_end(p, "endfor", line) ? n : NULL;
  }
  if (!strcmp(k, "set")) {
    jnode *n = node(p, N_SET, line);
    if (!n) return NULL;
    token *t = next(p);
    if (t->t != T_NAME) {
      perr(p, line, "expected a variable name after 'set'");
      return NULL;
    }
    if (is_op(peek(p), ".")) { /* ns.attr = ... */
      next(p);
      token *attr = next(p);
      if (attr->t != T_NAME) {
        perr(p, line, "expected an attribute name");
        return NULL;
      }
      n->name = t->s;
      n->c = node(p, N_LIT, line); /* marker: attribute target */
      if (!n->c) return NULL;
      n->c->name = attr->s;
    } else {
      p->pos--;
      n->targets = parse_targets(p, &n->ntargets);
      if (p->status) return NULL;
    }
    if (accept_op(p, "=")) {
      jnode *e = parse_expr(p, true);
      if (is_op(peek(p), ",")) {
        nlist l = {0};
        nl_push(p, &l, e);
        while (accept_op(p, ",")) nl_push(p, &l, parse_expr(p, true));
        e = node(p, N_TUPLE, line);
        if (e) {
          e->items = l.v;
          e->n = l.n;
        }
      }
      n->a = e;
      return expect_block_end(p) ? n : NULL;
    }
    /* block set */
    if (n->c || n->ntargets != 1) {
      perr(p, line, "block set needs one variable name");
      return NULL;
    }
    if (is_op(peek(p), "|")) {
      perr(p, line, "unsupported: filters on block set");
      return NULL;
    }
    if (!expect_block_end(p)) return NULL;
    n->kind = N_SET_BLOCK;
    static const char *const ends[] = {"endset", NULL};
    n->b = parse_body(p, ends);
    if (p->status) return NULL;
    return consume_end(p, "endset", line) ? n : NULL;
  }
  if (!strcmp(k, "macro")) {
    jnode *n = node(p, N_MACRO, line);
    if (!n) return NULL;
    token *nm = next(p);
    if (nm->t != T_NAME) {
      perr(p, line, "expected a macro name");
      return NULL;
    }
    n->name = nm->s;
    if (!expect_op(p, "(")) return NULL;
    jnode call = {0};
    parse_args(p, &call);
    if (p->status) return NULL;
    /* positional "args" must be bare names */
    const char **params = mx__jarena_alloc(p->a, (size_t)(call.n + call.nkw + 1) * sizeof *params);
    jnode **defs = mx__jarena_alloc(p->a, (size_t)(call.n + call.nkw + 1) * sizeof *defs);
    if (!params || !defs) {
      p->status = MX_ERR_OOM;
      return NULL;
    }
    int np = 0;
    for (int i = 0; i < call.n; i++) {
      if (call.items[i]->kind != N_NAME) {
        perr(p, line, "macro parameters must be names");
        return NULL;
      }
      params[np] = call.items[i]->name;
      defs[np++] = NULL;
    }
    for (int i = 0; i < call.nkw; i++) {
      params[np] = call.kwnames[i];
      defs[np++] = call.kwvals[i];
    }
    n->kwnames = params;
    n->kwvals = defs;
    n->nkw = np;
    if (!expect_block_end(p)) return NULL;
    static const char *const ends[] = {"endmacro", NULL};
    n->b = parse_body(p, ends);
    if (p->status) return NULL;
    return consume_end(p, "endmacro", line) ? n : NULL;
  }
  if (!strcmp(k, "break") || !strcmp(k, "continue")) {
    jnode *n = node(p, k[0] == 'b' ? N_BREAK : N_CONTINUE, line);
    return expect_block_end(p) ? n : NULL;
  }
  if (!strcmp(k, "generation")) { /* transformers' assistant-mask marker: renders its body */
    if (!expect_block_end(p)) return NULL;
    static const char *const ends[] = {"endgeneration", NULL};
    jnode *b = parse_body(p, ends);
    if (p->status) return NULL;
    return consume_end(p, "endgeneration", line) ? b : NULL;
  }
  if (!strcmp(k, "filter")) {
    jnode *n = node(p, N_FILTER_BLOCK, line);
    if (!n) return NULL;
    token *nm = next(p);
    if (nm->t != T_NAME) {
      perr(p, line, "expected a filter name");
      return NULL;
    }
    n->name = nm->s;
    if (accept_op(p, "(")) parse_args(p, n);
    if (!expect_block_end(p)) return NULL;
    static const char *const ends[] = {"endfilter", NULL};
    n->b = parse_body(p, ends);
    if (p->status) return NULL;
    return consume_end(p, "endfilter", line) ? n : NULL;
  }
  perr(p, line, "unsupported or unknown statement '%s'", k);
  return NULL;
}

static jnode *parse_statement(parser *p) {
  if (++p->depth > 200) {
    perr(p, peek(p)->line, "statements nested too deeply");
    return NULL;
  }
  jnode *n = parse_statement_inner(p);
  p->depth--;
  return n;
}

static jnode *parse_body(parser *p, const char *const *ends) {
  nlist l = {0};
  int line = peek(p)->line;
  while (!p->status) {
    token *t = peek(p);
    if (t->t == T_EOF) {
      if (ends) {
        perr(p, t->line, "unexpected end of template, expected {%% %s %%}", ends[0]);
        return NULL;
      }
      break;
    }
    if (t->t == T_TEXT) {
      next(p);
      jnode *n = node(p, N_TEXT, t->line);
      if (n) n->lit = mx__jv_str(p->a, t->s, t->n);
      nl_push(p, &l, n);
    } else if (t->t == T_VAR_BEGIN) {
      next(p);
      jnode *n = node(p, N_OUTPUT, t->line);
      if (n) n->a = parse_expr(p, true);
      if (p->status) break;
      if (peek(p)->t != T_VAR_END) {
        token *u = peek(p);
        perr(p, u->line, "expected '}}'%s%s", u->t == T_NAME || u->t == T_OP ? ", found " : "",
             u->t == T_NAME || u->t == T_OP ? u->s : "");
        break;
      }
      next(p);
      nl_push(p, &l, n);
    } else if (t->t == T_BLOCK_BEGIN) {
      const char *k = end_keyword(p);
      if (k && ends)
        for (int i = 0; ends[i]; i++)
          if (!strcmp(k, ends[i])) goto done;
      if (k && (!strcmp(k, "endif") || !strcmp(k, "endfor") || !strcmp(k, "else") ||
                !strcmp(k, "elif") || !strcmp(k, "endmacro") || !strcmp(k, "endset") ||
                !strcmp(k, "endfilter") || !strcmp(k, "endgeneration"))) {
        perr(p, t->line, "unexpected {%% %s %%}", k);
        return NULL;
      }
      nl_push(p, &l, parse_statement(p));
    } else {
      perr(p, t->line, "unexpected token");
    }
  }
done:
  if (p->status) return NULL;
  jnode *b = node(p, N_BLOCK, line);
  if (b) {
    b->items = l.v;
    b->n = l.n;
  }
  return b;
}

int mx__jinja_parse(jtemplate *t, const char *src, size_t n) {
  parser p = {.tpl = t, .a = &t->arena, .err = t->err};
  t->err[0] = 0;
  if (!lex(&p, src, n)) t->root = parse_body(&p, NULL);
  free(p.tk);
  if (p.status == MX_ERR_OOM && !t->err[0]) snprintf(t->err, sizeof t->err, "out of memory parsing template");
  if (!p.status && !t->root) p.status = MX_ERR_OOM;
  return p.status;
}
