/* jinja_value.c — values of the template language: arena, constructors,
 * Python str()/repr(), json.dumps and a JSON reader that keeps ints and key
 * order. */
#include "jinja.h"

#include <errno.h>
#include <math.h>
#include <utf8proc.h>

/* ---- arena --------------------------------------------------------------------- */

struct jarena_chunk {
  jarena_chunk *next;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

void *mx__jarena_alloc(jarena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (a->oom) return NULL;
  if (a->limit && a->total + n > a->limit) {
    a->oom = 1;
    return NULL;
  }
  jarena_chunk *c = a->head;
  if (!c || c->used + n > c->size) {
    size_t size = n > 65536 ? n : 65536;
    c = malloc(sizeof *c + size);
    if (!c) {
      a->oom = 1;
      return NULL;
    }
    c->size = size;
    c->used = 0;
    c->next = a->head;
    a->head = c;
  }
  void *p = c->data + c->used;
  c->used += n;
  a->total += n;
  memset(p, 0, n);
  return p;
}

void mx__jarena_free(jarena *a) {
  jarena_chunk *c = a->head;
  while (c) {
    jarena_chunk *n = c->next;
    free(c);
    c = n;
  }
  a->head = NULL;
  a->total = 0;
  a->oom = 0;
}

/* ---- constructors ------------------------------------------------------------------ */

jv mx__jv_str(jarena *a, const char *s, size_t n) {
  jstr *p = mx__jarena_alloc(a, sizeof *p + n + 1);
  if (!p) return jv_undef();
  p->n = n;
  if (n) memcpy(p->p, s, n);
  p->p[n] = 0;
  return (jv){.t = JV_STR, .u.s = p};
}

jv mx__jv_cstr(jarena *a, const char *s) { return mx__jv_str(a, s, strlen(s)); }

jv mx__jv_list(jarena *a) {
  jlist *l = mx__jarena_alloc(a, sizeof *l);
  return l ? (jv){.t = JV_LIST, .u.l = l} : jv_undef();
}

jv mx__jv_dict(jarena *a, jtype t) {
  jdict *d = mx__jarena_alloc(a, sizeof *d);
  return d ? (jv){.t = t, .u.d = d} : jv_undef();
}

int mx__jv_list_push(jarena *a, jlist *l, jv v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    jv *p = mx__jarena_alloc(a, cap * sizeof *p);
    if (!p) return MX_ERR_OOM;
    if (l->n) memcpy(p, l->v, l->n * sizeof *p);
    l->v = p;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return MX_OK;
}

jv *mx__jv_dict_get(const jdict *d, jv k) {
  for (size_t i = 0; i < d->n; i++)
    if (mx__jv_equal(d->k[i], k)) return &d->v[i];
  return NULL;
}

jv *mx__jv_dict_gets(const jdict *d, const char *key, size_t n) {
  for (size_t i = 0; i < d->n; i++)
    if (d->k[i].t == JV_STR && d->k[i].u.s->n == n && !memcmp(d->k[i].u.s->p, key, n))
      return &d->v[i];
  return NULL;
}

int mx__jv_dict_set(jarena *a, jdict *d, jv k, jv v) {
  jv *old = mx__jv_dict_get(d, k);
  if (old) {
    *old = v;
    return MX_OK;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    jv *kk = mx__jarena_alloc(a, cap * sizeof *kk), *vv = mx__jarena_alloc(a, cap * sizeof *vv);
    if (!kk || !vv) return MX_ERR_OOM;
    if (d->n) {
      memcpy(kk, d->k, d->n * sizeof *kk);
      memcpy(vv, d->v, d->n * sizeof *vv);
    }
    d->k = kk;
    d->v = vv;
    d->cap = cap;
  }
  d->k[d->n] = k;
  d->v[d->n] = v;
  d->n++;
  return MX_OK;
}

/* ---- truth, equality, order ---------------------------------------------------------- */

bool mx__jv_truthy(jv v) {
  switch (v.t) {
  case JV_UNDEF:
  case JV_NONE: return false;
  case JV_BOOL: return v.u.b;
  case JV_INT: return v.u.i != 0;
  case JV_FLOAT: return v.u.f != 0;
  case JV_STR: return v.u.s->n > 0;
  case JV_LIST: return v.u.l->n > 0;
  case JV_DICT: return v.u.d->n > 0;
  default: return true;
  }
}

static bool numeric(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num(jv v) {
  return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b;
}
static int64_t inum(jv v) { return v.t == JV_INT ? v.u.i : (int64_t)v.u.b; }

bool mx__jv_equal(jv a, jv b) {
  if (numeric(a) && numeric(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) return inum(a) == inum(b);
    return num(a) == num(b);
  }
  if (a.t != b.t) return false;
  switch (a.t) {
  case JV_UNDEF:
  case JV_NONE: return true;
  case JV_STR: return a.u.s->n == b.u.s->n && !memcmp(a.u.s->p, b.u.s->p, a.u.s->n);
  case JV_LIST:
    if (a.u.l->n != b.u.l->n) return false;
    for (size_t i = 0; i < a.u.l->n; i++)
      if (!mx__jv_equal(a.u.l->v[i], b.u.l->v[i])) return false;
    return true;
  case JV_DICT:
  case JV_NS:
    if (a.u.d == b.u.d) return true;
    if (a.u.d->n != b.u.d->n) return false;
    for (size_t i = 0; i < a.u.d->n; i++) {
      jv *o = mx__jv_dict_get(b.u.d, a.u.d->k[i]);
      if (!o || !mx__jv_equal(a.u.d->v[i], *o)) return false;
    }
    return true;
  case JV_FUNC: return a.u.fn == b.u.fn;
  case JV_MACRO: return a.u.mac == b.u.mac;
  default: return false;
  }
}

int mx__jv_compare(jv a, jv b, bool *ok) {
  *ok = true;
  if (numeric(a) && numeric(b)) {
    if (a.t != JV_FLOAT && b.t != JV_FLOAT) return inum(a) < inum(b) ? -1 : inum(a) > inum(b);
    double x = num(a), y = num(b);
    return x < y ? -1 : x > y;
  }
  if (a.t == JV_STR && b.t == JV_STR) {
    size_t n = MX_MIN(a.u.s->n, b.u.s->n);
    int c = memcmp(a.u.s->p, b.u.s->p, n);
    if (c) return c < 0 ? -1 : 1;
    return a.u.s->n < b.u.s->n ? -1 : a.u.s->n > b.u.s->n;
  }
  if (a.t == JV_LIST && b.t == JV_LIST) {
    size_t n = MX_MIN(a.u.l->n, b.u.l->n);
    for (size_t i = 0; i < n; i++) {
      if (mx__jv_equal(a.u.l->v[i], b.u.l->v[i])) continue;
      return mx__jv_compare(a.u.l->v[i], b.u.l->v[i], ok);
    }
    return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
  }
  *ok = false;
  return 0;
}

const char *mx__jv_type_name(jv v) {
  switch (v.t) {
  case JV_UNDEF: return "Undefined";
  case JV_NONE: return "NoneType";
  case JV_BOOL: return "bool";
  case JV_INT: return "int";
  case JV_FLOAT: return "float";
  case JV_STR: return "str";
  case JV_LIST: return "list";
  case JV_DICT: return "dict";
  case JV_NS: return "Namespace";
  case JV_FUNC:
  case JV_METHOD:
  case JV_MACRO: return "function";
  case JV_LOOP: return "LoopContext";
  }
  return "object";
}

/* ---- str / repr -------------------------------------------------------------------------- */

/* Python repr(float). */
static void float_repr(mx__buf *b, double x, bool json) {
  if (isnan(x)) {
    mx__buf_puts(b, json ? "NaN" : "nan");
    return;
  }
  if (isinf(x)) {
    mx__buf_puts(b, x > 0 ? (json ? "Infinity" : "inf") : (json ? "-Infinity" : "-inf"));
    return;
  }
  char tmp[64];
  int p;
  for (p = 1; p <= 17; p++) {
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
    if (strtod(tmp, NULL) == x) break;
  }
  /* tmp = [-]d[.ddd]e[+-]XX */
  const char *s = tmp;
  bool neg = *s == '-';
  if (neg) s++;
  char digits[32];
  int nd = 0;
  for (; *s && *s != 'e'; s++)
    if (*s != '.') digits[nd++] = *s;
  int e = atoi(s + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  digits[nd] = 0;
  if (neg) mx__buf_putc(b, '-');
  if (e >= -4 && e < 16) {
    if (e >= 0) {
      for (int i = 0; i <= e; i++) mx__buf_putc(b, i < nd ? digits[i] : '0');
      mx__buf_putc(b, '.');
      if (nd > e + 1) mx__buf_put(b, digits + e + 1, (size_t)(nd - e - 1));
      else mx__buf_putc(b, '0');
    } else {
      mx__buf_puts(b, "0.");
      for (int i = 0; i < -e - 1; i++) mx__buf_putc(b, '0');
      mx__buf_put(b, digits, (size_t)nd);
    }
  } else {
    mx__buf_putc(b, digits[0]);
    if (nd > 1) {
      mx__buf_putc(b, '.');
      mx__buf_put(b, digits + 1, (size_t)(nd - 1));
    }
    mx__buf_printf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
  }
}

static bool py_printable(uint32_t cp) {
  if (cp == ' ') return true;
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp < 0x7F) return true;
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return !(c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CS ||
           c == UTF8PROC_CATEGORY_CO || c == UTF8PROC_CATEGORY_CN || c == UTF8PROC_CATEGORY_ZL ||
           c == UTF8PROC_CATEGORY_ZP || c == UTF8PROC_CATEGORY_ZS);
}

static void str_repr(mx__buf *b, const char *s, size_t n) {
  bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
  char q = sq && !dq ? '"' : '\'';
  mx__buf_putc(b, q);
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)s + i, n - i, &cp);
    if (cp == (uint32_t)q || cp == '\\') {
      mx__buf_putc(b, '\\');
      mx__buf_putc(b, (char)cp);
    } else if (cp == '\t') mx__buf_puts(b, "\\t");
    else if (cp == '\n') mx__buf_puts(b, "\\n");
    else if (cp == '\r') mx__buf_puts(b, "\\r");
    else if (py_printable(cp)) mx__buf_put(b, s + i, l);
    else if (cp <= 0xFF) mx__buf_printf(b, "\\x%02x", cp);
    else if (cp <= 0xFFFF) mx__buf_printf(b, "\\u%04x", cp);
    else mx__buf_printf(b, "\\U%08x", cp);
    i += l;
  }
  mx__buf_putc(b, q);
}

static void repr_any(mx__buf *b, jv v, bool top);

void mx__jv_str_append(mx__buf *b, jv v) { repr_any(b, v, true); }
void mx__jv_repr_append(mx__buf *b, jv v) { repr_any(b, v, false); }

static void repr_any(mx__buf *b, jv v, bool top) {
  switch (v.t) {
  case JV_UNDEF:
    if (!top) mx__buf_puts(b, "Undefined");
    break;
  case JV_NONE: mx__buf_puts(b, "None"); break;
  case JV_BOOL: mx__buf_puts(b, v.u.b ? "True" : "False"); break;
  case JV_INT: mx__buf_printf(b, "%lld", (long long)v.u.i); break;
  case JV_FLOAT: float_repr(b, v.u.f, false); break;
  case JV_STR:
    if (top) mx__buf_put(b, v.u.s->p, v.u.s->n);
    else str_repr(b, v.u.s->p, v.u.s->n);
    break;
  case JV_LIST:
    mx__buf_putc(b, v.u.l->tuple ? '(' : '[');
    for (size_t i = 0; i < v.u.l->n; i++) {
      if (i) mx__buf_puts(b, ", ");
      repr_any(b, v.u.l->v[i], false);
    }
    if (v.u.l->tuple && v.u.l->n == 1) mx__buf_putc(b, ',');
    mx__buf_putc(b, v.u.l->tuple ? ')' : ']');
    break;
  case JV_DICT:
    mx__buf_putc(b, '{');
    for (size_t i = 0; i < v.u.d->n; i++) {
      if (i) mx__buf_puts(b, ", ");
      repr_any(b, v.u.d->k[i], false);
      mx__buf_puts(b, ": ");
      repr_any(b, v.u.d->v[i], false);
    }
    mx__buf_putc(b, '}');
    break;
  case JV_NS:
    mx__buf_puts(b, "<Namespace {");
    for (size_t i = 0; i < v.u.d->n; i++) {
      if (i) mx__buf_puts(b, ", ");
      repr_any(b, v.u.d->k[i], false);
      mx__buf_puts(b, ": ");
      repr_any(b, v.u.d->v[i], false);
    }
    mx__buf_puts(b, "}>");
    break;
  case JV_LOOP: mx__buf_puts(b, "<LoopContext>"); break;
  default: mx__buf_puts(b, "<function>"); break;
  }
}

/* ---- json.dumps ---------------------------------------------------------------------- */

static void json_str(mx__buf *b, const char *s, size_t n) {
  mx__buf_putc(b, '"');
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    mx__buf_put(b, s + run, i - run);
    run = i + 1;
    switch (c) {
    case '"': mx__buf_puts(b, "\\\""); break;
    case '\\': mx__buf_puts(b, "\\\\"); break;
    case '\n': mx__buf_puts(b, "\\n"); break;
    case '\r': mx__buf_puts(b, "\\r"); break;
    case '\t': mx__buf_puts(b, "\\t"); break;
    case '\b': mx__buf_puts(b, "\\b"); break;
    case '\f': mx__buf_puts(b, "\\f"); break;
    default: mx__buf_printf(b, "\\u%04x", c);
    }
  }
  mx__buf_put(b, s + run, n - run);
  mx__buf_putc(b, '"');
}

static void newline_indent(mx__buf *b, const char *indent, int depth) {
  mx__buf_putc(b, '\n');
  for (int i = 0; i < depth; i++) mx__buf_puts(b, indent);
}

static int key_cmp(const void *x, const void *y) {
  const jv *a = *(const jv *const *)x, *c = *(const jv *const *)y;
  bool ok;
  return mx__jv_compare(*a, *c, &ok);
}

int mx__jv_tojson(mx__buf *b, jv v, const char *indent, const char *item_sep, const char *key_sep,
              bool sort_keys, int depth) {
  if (depth > 200) return mx__set_error(MX_ERR_INVALID_ARG, "tojson: nesting too deep");
  switch (v.t) {
  case JV_NONE: mx__buf_puts(b, "null"); return MX_OK;
  case JV_BOOL: mx__buf_puts(b, v.u.b ? "true" : "false"); return MX_OK;
  case JV_INT: mx__buf_printf(b, "%lld", (long long)v.u.i); return MX_OK;
  case JV_FLOAT: float_repr(b, v.u.f, true); return MX_OK;
  case JV_STR: json_str(b, v.u.s->p, v.u.s->n); return MX_OK;
  case JV_LIST:
    if (!v.u.l->n) {
      mx__buf_puts(b, "[]");
      return MX_OK;
    }
    mx__buf_putc(b, '[');
    for (size_t i = 0; i < v.u.l->n; i++) {
      if (i) mx__buf_puts(b, item_sep);
      if (indent) newline_indent(b, indent, depth + 1);
      int st = mx__jv_tojson(b, v.u.l->v[i], indent, item_sep, key_sep, sort_keys, depth + 1);
      if (st) return st;
    }
    if (indent) newline_indent(b, indent, depth);
    mx__buf_putc(b, ']');
    return MX_OK;
  case JV_DICT: {
    jdict *d = v.u.d;
    if (!d->n) {
      mx__buf_puts(b, "{}");
      return MX_OK;
    }
    size_t *order = malloc(d->n * sizeof *order);
    const jv **keys = malloc(d->n * sizeof *keys);
    if (!order || !keys) {
      free(order);
      free(keys);
      return MX_ERR_OOM;
    }
    for (size_t i = 0; i < d->n; i++) keys[i] = &d->k[i];
    if (sort_keys) qsort(keys, d->n, sizeof *keys, key_cmp);
    for (size_t i = 0; i < d->n; i++) order[i] = (size_t)(keys[i] - d->k);
    free(keys);
    mx__buf_putc(b, '{');
    int st = MX_OK;
    for (size_t j = 0; j < d->n && !st; j++) {
      size_t i = order[j];
      if (j) mx__buf_puts(b, item_sep);
      if (indent) newline_indent(b, indent, depth + 1);
      jv k = d->k[i];
      if (k.t == JV_STR) json_str(b, k.u.s->p, k.u.s->n);
      else if (k.t == JV_INT || k.t == JV_FLOAT || k.t == JV_BOOL || k.t == JV_NONE) {
        mx__buf tmp = {0};
        mx__jv_tojson(&tmp, k, NULL, ", ", ": ", false, depth + 1);
        json_str(b, tmp.p ? tmp.p : "", tmp.n);
        mx__buf_free(&tmp);
      } else {
        st = mx__set_error(MX_ERR_INVALID_ARG, "tojson: keys must be str, int, float, bool or "
                                               "None, not %s", mx__jv_type_name(k));
        break;
      }
      mx__buf_puts(b, key_sep);
      st = mx__jv_tojson(b, d->v[i], indent, item_sep, key_sep, sort_keys, depth + 1);
    }
    free(order);
    if (st) return st;
    if (indent) newline_indent(b, indent, depth);
    mx__buf_putc(b, '}');
    return MX_OK;
  }
  default:
    return mx__set_error(MX_ERR_INVALID_ARG, "tojson: Object of type %s is not JSON serializable",
                         mx__jv_type_name(v));
  }
}

/* ---- JSON reader ------------------------------------------------------------------------ */

typedef struct {
  jarena *a;
  const char *s, *end, *start;
  char *err;
  size_t errlen;
  int depth;
} jreader;

static int jerr(jreader *r, const char *what) {
  snprintf(r->err, r->errlen, "JSON: %s at offset %zu", what, (size_t)(r->s - r->start));
  return MX_ERR_FORMAT;
}

static void skip_ws(jreader *r) {
  while (r->s < r->end && (*r->s == ' ' || *r->s == '\t' || *r->s == '\n' || *r->s == '\r')) r->s++;
}

static int hex4(const char *p, uint32_t *v) {
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    *v = *v * 16 + (uint32_t)d;
  }
  return 0;
}

static int read_string(jreader *r, jv *out) {
  r->s++; /* opening quote */
  mx__buf b = {0};
  while (r->s < r->end && *r->s != '"') {
    char c = *r->s++;
    if ((unsigned char)c < 0x20) {
      mx__buf_free(&b);
      return jerr(r, "control character in string");
    }
    if (c != '\\') {
      mx__buf_putc(&b, c);
      continue;
    }
    if (r->s >= r->end) break;
    c = *r->s++;
    switch (c) {
    case '"': mx__buf_putc(&b, '"'); break;
    case '\\': mx__buf_putc(&b, '\\'); break;
    case '/': mx__buf_putc(&b, '/'); break;
    case 'b': mx__buf_putc(&b, '\b'); break;
    case 'f': mx__buf_putc(&b, '\f'); break;
    case 'n': mx__buf_putc(&b, '\n'); break;
    case 'r': mx__buf_putc(&b, '\r'); break;
    case 't': mx__buf_putc(&b, '\t'); break;
    case 'u': {
      uint32_t cp;
      if (r->end - r->s < 4 || hex4(r->s, &cp)) {
        mx__buf_free(&b);
        return jerr(r, "bad \\u escape");
      }
      r->s += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF && r->end - r->s >= 6 && r->s[0] == '\\' && r->s[1] == 'u') {
        uint32_t lo;
        if (!hex4(r->s + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          r->s += 6;
        }
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD; /* lone surrogate */
      char tmp[4];
      mx__buf_put(&b, tmp, mx__utf8_encode(cp, tmp));
      break;
    }
    default: mx__buf_free(&b); return jerr(r, "bad escape");
    }
  }
  if (r->s >= r->end) {
    mx__buf_free(&b);
    return jerr(r, "unterminated string");
  }
  r->s++;
  /* invalid UTF-8 in the file reads as U+FFFD */
  mx__buf clean = {0};
  mx__utf8_lossy(&clean, b.p ? b.p : "", b.n);
  *out = mx__jv_str(r->a, clean.p ? clean.p : "", clean.n);
  int oom = b.oom || clean.oom || out->t != JV_STR;
  mx__buf_free(&b);
  mx__buf_free(&clean);
  return oom ? MX_ERR_OOM : MX_OK;
}

static int read_value(jreader *r, jv *out) {
  skip_ws(r);
  if (r->s >= r->end) return jerr(r, "unexpected end");
  if (++r->depth > 500) return jerr(r, "nesting too deep");
  int st = MX_OK;
  char c = *r->s;
  if (c == '"') {
    st = read_string(r, out);
  } else if (c == '[') {
    r->s++;
    *out = mx__jv_list(r->a);
    if (out->t != JV_LIST) return MX_ERR_OOM;
    skip_ws(r);
    if (r->s < r->end && *r->s == ']') r->s++;
    else
      for (;;) {
        jv item;
        if ((st = read_value(r, &item))) break;
        if (mx__jv_list_push(r->a, out->u.l, item)) return MX_ERR_OOM;
        skip_ws(r);
        if (r->s < r->end && *r->s == ',') {
          r->s++;
          continue;
        }
        if (r->s < r->end && *r->s == ']') {
          r->s++;
          break;
        }
        st = jerr(r, "expected ',' or ']'");
        break;
      }
  } else if (c == '{') {
    r->s++;
    *out = mx__jv_dict(r->a, JV_DICT);
    if (out->t != JV_DICT) return MX_ERR_OOM;
    skip_ws(r);
    if (r->s < r->end && *r->s == '}') r->s++;
    else
      for (;;) {
        skip_ws(r);
        jv k, v;
        if (r->s >= r->end || *r->s != '"') {
          st = jerr(r, "expected a string key");
          break;
        }
        if ((st = read_string(r, &k))) break;
        skip_ws(r);
        if (r->s >= r->end || *r->s != ':') {
          st = jerr(r, "expected ':'");
          break;
        }
        r->s++;
        if ((st = read_value(r, &v))) break;
        if (mx__jv_dict_set(r->a, out->u.d, k, v)) return MX_ERR_OOM;
        skip_ws(r);
        if (r->s < r->end && *r->s == ',') {
          r->s++;
          continue;
        }
        if (r->s < r->end && *r->s == '}') {
          r->s++;
          break;
        }
        st = jerr(r, "expected ',' or '}'");
        break;
      }
  } else if (c == 't' && r->end - r->s >= 4 && !memcmp(r->s, "true", 4)) {
    r->s += 4;
    *out = jv_bool(true);
  } else if (c == 'f' && r->end - r->s >= 5 && !memcmp(r->s, "false", 5)) {
    r->s += 5;
    *out = jv_bool(false);
  } else if (c == 'n' && r->end - r->s >= 4 && !memcmp(r->s, "null", 4)) {
    r->s += 4;
    *out = jv_none();
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    char tmp[64];
    size_t k = 0;
    bool flt = false;
    while (r->s < r->end && k < sizeof tmp - 1 &&
           (strchr("+-0123456789.eE", *r->s))) {
      if (*r->s == '.' || *r->s == 'e' || *r->s == 'E') flt = true;
      tmp[k++] = *r->s++;
    }
    tmp[k] = 0;
    char *e;
    if (!flt) {
      errno = 0;
      long long v = strtoll(tmp, &e, 10);
      if (*e) return jerr(r, "bad number");
      if (errno) *out = jv_float(strtod(tmp, NULL));
      else *out = jv_int(v);
    } else {
      double v = strtod(tmp, &e);
      if (*e) return jerr(r, "bad number");
      *out = jv_float(v);
    }
  } else {
    st = jerr(r, "unexpected character");
  }
  r->depth--;
  return st;
}

int mx__jv_from_json(jarena *a, const char *s, size_t n, jv *out, char *err, size_t errlen) {
  jreader r = {a, s, s + n, s, err, errlen, 0};
  int st = read_value(&r, out);
  if (st) return st;
  skip_ws(&r);
  if (r.s != r.end) return jerr(&r, "trailing characters");
  return MX_OK;
}
