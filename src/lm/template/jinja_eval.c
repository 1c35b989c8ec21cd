/* jinja_eval.c — renders the AST: scopes, expressions, filters, tests,
 * methods and global functions, with jinja2's semantics (default
 * Undefined, immutable sandbox). Every error names the template line. */
#include "jinja.h"

#include <math.h>
#include <stdarg.h>
#include <time.h>
#include <utf8proc.h>

typedef struct frame {
  struct frame *parent;
  jdict vars;
} frame;

struct jmacro {
  const jnode *node;
  frame *closure;
};

struct jloop {
  jlist *items;
  size_t index0;
};

enum { CTL_NONE, CTL_BREAK, CTL_CONTINUE };

typedef struct {
  jarena *a;
  mx__buf *out;
  char *err;
  size_t errlen;
  int status;
  int ctl;
  int depth;
  size_t steps;
} ctx;

#define MAX_STEPS 50000000u
#define MAX_DEPTH 200

static int rerr(ctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rerr(ctx *c, int line, const char *fmt, ...) {
  if (c->status) return c->status;
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(c->err, c->errlen, "template line %d: %s", line, msg);
  c->status = MX_ERR_INVALID_ARG;
  return c->status;
}

static jv oom(ctx *c) {
  if (!c->status) {
    snprintf(c->err, c->errlen, "out of memory rendering template (or output limit reached)");
    c->status = MX_ERR_OOM;
  }
  return jv_undef();
}

static jv mkstr(ctx *c, const char *s, size_t n) {
  jv v = mx__jv_str(c->a, s, n);
  if (v.t != JV_STR) return oom(c);
  return v;
}

static jv buf_to_str(ctx *c, mx__buf *b) {
  jv v = b->oom ? oom(c) : mkstr(c, b->p ? b->p : "", b->n);
  mx__buf_free(b);
  return v;
}

static jv to_str(ctx *c, jv v) {
  if (v.t == JV_STR) return v;
  mx__buf b = {0};
  mx__jv_str_append(&b, v);
  return buf_to_str(c, &b);
}

static const char *undef_desc(jv v) { return v.undef_name ? v.undef_name : "value"; }

/* ---- scopes ------------------------------------------------------------------------ */

static jv *lookup(frame *f, const char *name) {
  size_t n = strlen(name);
  for (; f; f = f->parent) {
    jv *v = mx__jv_dict_gets(&f->vars, name, n);
    if (v) return v;
  }
  return NULL;
}

static void assign(ctx *c, frame *f, const char *name, jv v) {
  if (mx__jv_dict_set(c->a, &f->vars, mx__jv_cstr(c->a, name), v)) oom(c);
}

static frame *new_frame(ctx *c, frame *parent) {
  frame *f = mx__jarena_alloc(c->a, sizeof *f);
  if (!f) {
    oom(c);
    return NULL;
  }
  f->parent = parent;
  return f;
}

/* ---- helpers ------------------------------------------------------------------------ */

static const char *const GLOBAL_FUNCS[] = {"range", "namespace", "raise_exception", "strftime_now",
                                           "dict", NULL};

static jv eval(ctx *c, frame *f, const jnode *n);
static void exec(ctx *c, frame *f, const jnode *n);
static jv call_value(ctx *c, frame *f, jv fn, jv *args, int nargs, const char **kwn, jv *kwv,
                     int nkw, int line);

static bool is_str(jv v) { return v.t == JV_STR; }
static bool is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double fnum(jv v) { return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : v.u.b; }
static int64_t inum(jv v) { return v.t == JV_INT ? v.u.i : v.t == JV_BOOL ? v.u.b : (int64_t)v.u.f; }

/* Items of an iterable as a list (dict -> keys, str -> chars). */
static jlist *iter_list(ctx *c, jv v, int line) {
  jv l = mx__jv_list(c->a);
  if (l.t != JV_LIST) {
    oom(c);
    return NULL;
  }
  switch (v.t) {
  case JV_LIST: return v.u.l;
  case JV_UNDEF: return l.u.l;
  case JV_DICT:
    for (size_t i = 0; i < v.u.d->n; i++)
      if (mx__jv_list_push(c->a, l.u.l, v.u.d->k[i])) oom(c);
    return l.u.l;
  case JV_STR:
    for (size_t i = 0; i < v.u.s->n;) {
      uint32_t cp;
      size_t k = mx__utf8_decode((const uint8_t *)v.u.s->p + i, v.u.s->n - i, &cp);
      if (mx__jv_list_push(c->a, l.u.l, mkstr(c, v.u.s->p + i, k))) oom(c);
      i += k;
    }
    return l.u.l;
  default:
    rerr(c, line, "'%s' object is not iterable", mx__jv_type_name(v));
    return NULL;
  }
}

static size_t utf8_len(const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (((uint8_t)s[i] & 0xC0) != 0x80) k++;
  return k;
}

/* byte offset of the i-th code point */
static size_t utf8_off(const char *s, size_t n, size_t idx) {
  size_t k = 0, i = 0;
  for (; i < n; i++) {
    if (((uint8_t)s[i] & 0xC0) != 0x80) {
      if (k == idx) return i;
      k++;
    }
  }
  return n;
}

static jv length_of(ctx *c, jv v, int line) {
  switch (v.t) {
  case JV_STR: return jv_int((int64_t)utf8_len(v.u.s->p, v.u.s->n));
  case JV_LIST: return jv_int((int64_t)v.u.l->n);
  case JV_DICT:
  case JV_NS: return jv_int((int64_t)v.u.d->n);
  case JV_UNDEF: return jv_int(0);
  default: rerr(c, line, "object of type '%s' has no len()", mx__jv_type_name(v)); return jv_undef();
  }
}

/* ---- attribute / item access ----------------------------------------------------------- */

static bool in_list(const char *name, const char *const *list) {
  for (int i = 0; list[i]; i++)
    if (!strcmp(name, list[i])) return true;
  return false;
}

static const char *const STR_METHODS[] = {
    "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "lower", "upper",
    "title", "capitalize", "replace", "find", "rfind", "index", "count", "join", "splitlines",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "format", "casefold",
    "swapcase", "zfill", "center", "ljust", "rjust", "partition", "rpartition", "removeprefix",
    "removesuffix", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", "copy", "pop",
                                           "update", "setdefault", "clear", "popitem", NULL};
static const char *const LIST_METHODS[] = {"index", "count", "copy", "append", "extend", "pop",
                                           "insert", "remove", "sort", "reverse", "clear", NULL};

static jv method(ctx *c, jv obj, const char *name) {
  jmethod *m = mx__jarena_alloc(c->a, sizeof *m);
  if (!m) return oom(c);
  m->obj = obj;
  m->name = name;
  return (jv){.t = JV_METHOD, .u.m = m};
}

static jv undefined_named(const char *name) {
  jv u = jv_undef();
  u.undef_name = name;
  return u;
}

static jv loop_attr(ctx *c, jloop *l, const char *name, int line) {
  size_t n = l->items->n, i = l->index0;
  if (!strcmp(name, "index")) return jv_int((int64_t)i + 1);
  if (!strcmp(name, "index0")) return jv_int((int64_t)i);
  if (!strcmp(name, "revindex")) return jv_int((int64_t)(n - i));
  if (!strcmp(name, "revindex0")) return jv_int((int64_t)(n - i - 1));
  if (!strcmp(name, "first")) return jv_bool(i == 0);
  if (!strcmp(name, "last")) return jv_bool(i + 1 == n);
  if (!strcmp(name, "length")) return jv_int((int64_t)n);
  if (!strcmp(name, "depth")) return jv_int(1);
  if (!strcmp(name, "depth0")) return jv_int(0);
  if (!strcmp(name, "previtem")) return i > 0 ? l->items->v[i - 1] : undefined_named("previtem");
  if (!strcmp(name, "nextitem")) return i + 1 < n ? l->items->v[i + 1] : undefined_named("nextitem");
  if (!strcmp(name, "cycle")) {
    jv lv = {.t = JV_LOOP, .u.loop = l};
    return method(c, lv, "cycle");
  }
  (void)line;
  return undefined_named(name);
}

static jv get_attr(ctx *c, jv obj, const char *name, int line) {
  switch (obj.t) {
  case JV_UNDEF:
    rerr(c, line, "'%s' is undefined (reading attribute '%s')", undef_desc(obj), name);
    return jv_undef();
  case JV_DICT: {
    if (in_list(name, DICT_METHODS)) return method(c, obj, name);
    jv *v = mx__jv_dict_gets(obj.u.d, name, strlen(name));
    return v ? *v : undefined_named(name);
  }
  case JV_NS: {
    jv *v = mx__jv_dict_gets(obj.u.d, name, strlen(name));
    return v ? *v : undefined_named(name);
  }
  case JV_STR:
    if (in_list(name, STR_METHODS)) return method(c, obj, name);
    return undefined_named(name);
  case JV_LIST:
    if (in_list(name, LIST_METHODS)) return method(c, obj, name);
    return undefined_named(name);
  case JV_LOOP: return loop_attr(c, obj.u.loop, name, line);
  default: return undefined_named(name);
  }
}

static jv get_item(ctx *c, jv obj, jv key, int line) {
  switch (obj.t) {
  case JV_UNDEF:
    rerr(c, line, "'%s' is undefined (indexing it)", undef_desc(obj));
    return jv_undef();
  case JV_DICT:
  case JV_NS: {
    jv *v = mx__jv_dict_get(obj.u.d, key);
    if (v) return *v;
    if (key.t == JV_STR) return get_attr(c, obj, key.u.s->p, line);
    return jv_undef();
  }
  case JV_LIST:
    if (key.t == JV_INT || key.t == JV_BOOL) {
      int64_t i = inum(key), n = (int64_t)obj.u.l->n;
      if (i < 0) i += n;
      if (i < 0 || i >= n) return undefined_named("list index out of range");
      return obj.u.l->v[i];
    }
    if (key.t == JV_STR) return get_attr(c, obj, key.u.s->p, line);
    return jv_undef();
  case JV_STR:
    if (key.t == JV_INT || key.t == JV_BOOL) {
      int64_t n = (int64_t)utf8_len(obj.u.s->p, obj.u.s->n), i = inum(key);
      if (i < 0) i += n;
      if (i < 0 || i >= n) return undefined_named("string index out of range");
      size_t a = utf8_off(obj.u.s->p, obj.u.s->n, (size_t)i);
      size_t b = utf8_off(obj.u.s->p, obj.u.s->n, (size_t)i + 1);
      return mkstr(c, obj.u.s->p + a, b - a);
    }
    if (key.t == JV_STR) return get_attr(c, obj, key.u.s->p, line);
    return jv_undef();
  default:
    if (key.t == JV_STR) return get_attr(c, obj, key.u.s->p, line);
    return jv_undef();
  }
}

/* Python slice semantics on a sequence of n elements. */
static void slice_indices(int64_t n, jv lo, jv hi, jv st, int64_t *start, int64_t *stop,
                          int64_t *step) {
  *step = (st.t == JV_INT || st.t == JV_BOOL) ? inum(st) : 1;
  if (*step == 0) *step = 1;
  bool has_lo = lo.t == JV_INT || lo.t == JV_BOOL, has_hi = hi.t == JV_INT || hi.t == JV_BOOL;
  if (*step > 0) {
    *start = has_lo ? inum(lo) : 0;
    *stop = has_hi ? inum(hi) : n;
    if (*start < 0) *start = MX_MAX(0, *start + n);
    if (*stop < 0) *stop = MX_MAX(0, *stop + n);
    *start = MX_MIN(*start, n);
    *stop = MX_MIN(*stop, n);
  } else {
    *start = has_lo ? inum(lo) : n - 1;
    *stop = has_hi ? inum(hi) : -n - 1;
    if (*start < 0) *start = MX_MAX(-1, *start + n);
    else *start = MX_MIN(*start, n - 1);
    if (*stop < 0) *stop = MX_MAX(-1, *stop + n);
    else *stop = MX_MIN(*stop, n - 1);
  }
}

static jv do_slice(ctx *c, jv obj, jv lo, jv hi, jv st, int line) {
  int64_t start, stop, step;
  if (obj.t == JV_LIST) {
    slice_indices((int64_t)obj.u.l->n, lo, hi, st, &start, &stop, &step);
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
      if (mx__jv_list_push(c->a, r.u.l, obj.u.l->v[i])) return oom(c);
    return r;
  }
  if (obj.t == JV_STR) {
    const char *s = obj.u.s->p;
    size_t n = obj.u.s->n;
    int64_t len = (int64_t)utf8_len(s, n);
    slice_indices(len, lo, hi, st, &start, &stop, &step);
    mx__buf b = {0};
    if (step == 1) {
      if (stop > start) {
        size_t a = utf8_off(s, n, (size_t)start), e = utf8_off(s, n, (size_t)stop);
        mx__buf_put(&b, s + a, e - a);
      }
    } else {
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        size_t a = utf8_off(s, n, (size_t)i), e = utf8_off(s, n, (size_t)i + 1);
        mx__buf_put(&b, s + a, e - a);
      }
    }
    return buf_to_str(c, &b);
  }
  if (obj.t == JV_UNDEF) {
    rerr(c, line, "'%s' is undefined (slicing it)", undef_desc(obj));
    return jv_undef();
  }
  rerr(c, line, "'%s' object is not subscriptable", mx__jv_type_name(obj));
  return jv_undef();
}

/* ---- operators --------------------------------------------------------------------------- */

static jv arith(ctx *c, int op, jv a, jv b, int line) {
  if (op == '~') {
    mx__buf s = {0};
    mx__jv_str_append(&s, a);
    mx__jv_str_append(&s, b);
    return buf_to_str(c, &s);
  }
  if (a.t == JV_UNDEF || b.t == JV_UNDEF) {
    rerr(c, line, "'%s' is undefined", undef_desc(a.t == JV_UNDEF ? a : b));
    return jv_undef();
  }
  if (op == '+' && is_str(a) && is_str(b)) {
    mx__buf s = {0};
    mx__buf_put(&s, a.u.s->p, a.u.s->n);
    mx__buf_put(&s, b.u.s->p, b.u.s->n);
    return buf_to_str(c, &s);
  }
  if (op == '+' && a.t == JV_LIST && b.t == JV_LIST) {
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    for (size_t i = 0; i < a.u.l->n; i++)
      if (mx__jv_list_push(c->a, r.u.l, a.u.l->v[i])) return oom(c);
    for (size_t i = 0; i < b.u.l->n; i++)
      if (mx__jv_list_push(c->a, r.u.l, b.u.l->v[i])) return oom(c);
    return r;
  }
  if (op == '*' && ((is_str(a) && (b.t == JV_INT || b.t == JV_BOOL)) ||
                    (is_str(b) && (a.t == JV_INT || a.t == JV_BOOL)))) {
    jv s = is_str(a) ? a : b;
    int64_t k = is_str(a) ? inum(b) : inum(a);
    if (k > 0 && (uint64_t)k * s.u.s->n > 64u * 1024 * 1024) return oom(c);
    mx__buf r = {0};
    for (int64_t i = 0; i < k; i++) mx__buf_put(&r, s.u.s->p, s.u.s->n);
    return buf_to_str(c, &r);
  }
  if (op == '%' && is_str(a)) {
    /* minimal printf-style: %s / %d with one value or a tuple-like list */
    mx__buf r = {0};
    size_t ai = 0;
    const char *s = a.u.s->p;
    for (size_t i = 0; i < a.u.s->n; i++) {
      if (s[i] == '%' && i + 1 < a.u.s->n) {
        char f = s[++i];
        if (f == '%') {
          mx__buf_putc(&r, '%');
          continue;
        }
        jv arg = b.t == JV_LIST ? (ai < b.u.l->n ? b.u.l->v[ai] : jv_undef()) : (ai == 0 ? b : jv_undef());
        ai++;
        if (f == 's') mx__jv_str_append(&r, arg);
        else if (f == 'r') mx__jv_repr_append(&r, arg);
        else if (f == 'd' || f == 'i') mx__buf_printf(&r, "%lld", (long long)inum(arg));
        else {
          mx__buf_free(&r);
          rerr(c, line, "unsupported format '%%%c'", f);
          return jv_undef();
        }
      } else {
        mx__buf_putc(&r, s[i]);
      }
    }
    return buf_to_str(c, &r);
  }
  if (!is_num(a) || !is_num(b)) {
    const char *ops = op == 'F' ? "//" : op == 'P' ? "**" : (char[]){(char)op, 0};
    rerr(c, line, "unsupported operand type(s) for %s: '%s' and '%s'", ops, mx__jv_type_name(a),
         mx__jv_type_name(b));
    return jv_undef();
  }
  bool flt = a.t == JV_FLOAT || b.t == JV_FLOAT;
  if (op == '/') {
    if (fnum(b) == 0) {
      rerr(c, line, "division by zero");
      return jv_undef();
    }
    return jv_float(fnum(a) / fnum(b));
  }
  if (flt) {
    double x = fnum(a), y = fnum(b);
    switch (op) {
    case '+': return jv_float(x + y);
    case '-': return jv_float(x - y);
    case '*': return jv_float(x * y);
    case 'P': return jv_float(pow(x, y));
    case 'F':
    case '%':
      if (y == 0) {
        rerr(c, line, "float modulo or floor division by zero");
        return jv_undef();
      }
      if (op == 'F') return jv_float(floor(x / y));
      {
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return jv_float(m);
      }
    }
  }
  int64_t x = inum(a), y = inum(b);
  switch (op) {
  case '+': return jv_int((int64_t)((uint64_t)x + (uint64_t)y));
  case '-': return jv_int((int64_t)((uint64_t)x - (uint64_t)y));
  case '*': return jv_int((int64_t)((uint64_t)x * (uint64_t)y));
  case 'P': {
    if (y < 0) return jv_float(pow((double)x, (double)y));
    int64_t r = 1;
    for (int64_t i = 0; i < y && i < 64; i++) r = (int64_t)((uint64_t)r * (uint64_t)x);
    return jv_int(r);
  }
  case 'F':
  case '%': {
    if (y == 0) {
      rerr(c, line, "integer division or modulo by zero");
      return jv_undef();
    }
    if (x == INT64_MIN && y == -1) return op == 'F' ? jv_float(-(double)x) : jv_int(0);
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      q--;
      m += y;
    }
    return op == 'F' ? jv_int(q) : jv_int(m);
  }
  }
  rerr(c, line, "bad operator");
  return jv_undef();
}

static bool contains(ctx *c, jv hay, jv needle, int line) {
  switch (hay.t) {
  case JV_STR:
    if (needle.t != JV_STR) {
      rerr(c, line, "'in <string>' requires string as left operand, not %s", mx__jv_type_name(needle));
      return false;
    }
    return needle.u.s->n == 0 || memmem(hay.u.s->p, hay.u.s->n, needle.u.s->p, needle.u.s->n);
  case JV_LIST:
    for (size_t i = 0; i < hay.u.l->n; i++)
      if (mx__jv_equal(hay.u.l->v[i], needle)) return true;
    return false;
  case JV_DICT:
  case JV_NS: return mx__jv_dict_get(hay.u.d, needle) != NULL;
  case JV_UNDEF: return false;
  default:
    rerr(c, line, "argument of type '%s' is not iterable", mx__jv_type_name(hay));
    return false;
  }
}

static jv compare(ctx *c, int op, jv a, jv b, int line) {
  switch (op) {
  case 'E': return jv_bool(mx__jv_equal(a, b));
  case 'N': return jv_bool(!mx__jv_equal(a, b));
  case 'I': return jv_bool(contains(c, b, a, line));
  case 'O': return jv_bool(!contains(c, b, a, line));
  }
  bool ok;
  int r = mx__jv_compare(a, b, &ok);
  if (!ok) {
    const char *o = op == '<' ? "<" : op == '>' ? ">" : op == 'L' ? "<=" : ">=";
    rerr(c, line, "'%s' not supported between instances of '%s' and '%s'", o, mx__jv_type_name(a),
         mx__jv_type_name(b));
    return jv_undef();
  }
  switch (op) {
  case '<': return jv_bool(r < 0);
  case '>': return jv_bool(r > 0);
  case 'L': return jv_bool(r <= 0);
  default: return jv_bool(r >= 0);
  }
}

/* ---- string methods -------------------------------------------------------------------- */

typedef struct {
  jv *v;
  int n;
  const char **kwn;
  jv *kwv;
  int nkw;
} args_t;

static jv arg(const args_t *a, int i, const char *name) {
  if (i >= 0 && i < a->n) return a->v[i];
  for (int k = 0; name && k < a->nkw; k++)
    if (!strcmp(a->kwn[k], name)) return a->kwv[k];
  return jv_undef();
}
static bool has_arg(const args_t *a, int i, const char *name) {
  if (i >= 0 && i < a->n) return true;
  for (int k = 0; name && k < a->nkw; k++)
    if (!strcmp(a->kwn[k], name)) return true;
  return false;
}

/* strip set: NULL = Python whitespace */
static bool in_chars(uint32_t cp, const jstr *chars) {
  if (!chars) return mx__py_isspace(cp);
  for (size_t i = 0; i < chars->n;) {
    uint32_t d;
    i += mx__utf8_decode((const uint8_t *)chars->p + i, chars->n - i, &d);
    if (d == cp) return true;
  }
  return false;
}

static jv strip_str(ctx *c, jv s, jv chars, bool left, bool right) {
  const jstr *cs = chars.t == JV_STR ? chars.u.s : NULL;
  const char *p = s.u.s->p;
  size_t a = 0, b = s.u.s->n;
  while (left && a < b) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)p + a, b - a, &cp);
    if (!in_chars(cp, cs)) break;
    a += l;
  }
  while (right && b > a) {
    size_t st = b - 1;
    while (st > a && ((uint8_t)p[st] & 0xC0) == 0x80) st--;
    uint32_t cp;
    mx__utf8_decode((const uint8_t *)p + st, b - st, &cp);
    if (!in_chars(cp, cs)) break;
    b = st;
  }
  return mkstr(c, p + a, b - a);
}

static jv split_str(ctx *c, jv s, jv sep, jv maxsplit, int line) {
  jv r = mx__jv_list(c->a);
  if (r.t != JV_LIST) return oom(c);
  int64_t maxs = (maxsplit.t == JV_INT) ? maxsplit.u.i : -1;
  const char *p = s.u.s->p;
  size_t n = s.u.s->n;
  if (sep.t == JV_STR) {
    if (!sep.u.s->n) {
      rerr(c, line, "empty separator");
      return jv_undef();
    }
    size_t start = 0, i = 0;
    int64_t cnt = 0;
    while (i + sep.u.s->n <= n && (maxs < 0 || cnt < maxs)) {
      if (!memcmp(p + i, sep.u.s->p, sep.u.s->n)) {
        if (mx__jv_list_push(c->a, r.u.l, mkstr(c, p + start, i - start))) return oom(c);
        i += sep.u.s->n;
        start = i;
        cnt++;
      } else {
        i++;
      }
    }
    if (mx__jv_list_push(c->a, r.u.l, mkstr(c, p + start, n - start))) return oom(c);
    return r;
  }
  /* whitespace split */
  size_t i = 0;
  int64_t cnt = 0;
  for (;;) {
    while (i < n) {
      uint32_t cp;
      size_t l = mx__utf8_decode((const uint8_t *)p + i, n - i, &cp);
      if (!mx__py_isspace(cp)) break;
      i += l;
    }
    if (i >= n) break;
    if (maxs >= 0 && cnt >= maxs) {
      /* rest, with trailing whitespace stripped */
      size_t e = n;
      while (e > i) {
        size_t st = e - 1;
        while (st > i && ((uint8_t)p[st] & 0xC0) == 0x80) st--;
        uint32_t cp;
        mx__utf8_decode((const uint8_t *)p + st, e - st, &cp);
        if (!mx__py_isspace(cp)) break;
        e = st;
      }
      if (mx__jv_list_push(c->a, r.u.l, mkstr(c, p + i, e - i))) return oom(c);
      break;
    }
    size_t j = i;
    while (j < n) {
      uint32_t cp;
      size_t l = mx__utf8_decode((const uint8_t *)p + j, n - j, &cp);
      if (mx__py_isspace(cp)) break;
      j += l;
    }
    if (mx__jv_list_push(c->a, r.u.l, mkstr(c, p + i, j - i))) return oom(c);
    cnt++;
    i = j;
  }
  return r;
}

static jv case_map(ctx *c, jv s, int mode) { /* 0 lower, 1 upper, 2 title, 3 capitalize */
  mx__buf b = {0};
  bool prev_cased = false, first = true;
  const char *p = s.u.s->p;
  for (size_t i = 0; i < s.u.s->n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)p + i, s.u.s->n - i, &cp);
    uint32_t o = cp;
    if (mode == 0) o = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
    else if (mode == 1) o = (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
    else if (mode == 2) {
      o = prev_cased ? (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp)
                     : (uint32_t)utf8proc_totitle((utf8proc_int32_t)cp);
      utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
      prev_cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
                   cat == UTF8PROC_CATEGORY_LT;
    } else {
      o = first ? (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp)
                : (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
    }
    first = false;
    char tmp[4];
    mx__buf_put(&b, tmp, mx__utf8_encode(o, tmp));
    i += l;
  }
  return buf_to_str(c, &b);
}

static jv replace_str(ctx *c, jv s, jv old, jv new_, int64_t count) {
  mx__buf b = {0};
  const char *p = s.u.s->p;
  size_t n = s.u.s->n, ol = old.u.s->n;
  int64_t done = 0;
  if (!ol) {
    /* Python inserts `new` between characters */
    for (size_t i = 0; i <= n;) {
      if (count < 0 || done < count) {
        mx__buf_put(&b, new_.u.s->p, new_.u.s->n);
        done++;
      }
      if (i == n) break;
      uint32_t cp;
      size_t l = mx__utf8_decode((const uint8_t *)p + i, n - i, &cp);
      mx__buf_put(&b, p + i, l);
      i += l;
    }
    return buf_to_str(c, &b);
  }
  size_t i = 0, run = 0;
  while (i + ol <= n && (count < 0 || done < count)) {
    if (!memcmp(p + i, old.u.s->p, ol)) {
      mx__buf_put(&b, p + run, i - run);
      mx__buf_put(&b, new_.u.s->p, new_.u.s->n);
      i += ol;
      run = i;
      done++;
    } else {
      i++;
    }
  }
  mx__buf_put(&b, p + run, n - run);
  return buf_to_str(c, &b);
}

static bool prefix_match(jv s, jv x, bool end) {
  if (x.t != JV_STR) return false;
  if (x.u.s->n > s.u.s->n) return false;
  return !memcmp(s.u.s->p + (end ? s.u.s->n - x.u.s->n : 0), x.u.s->p, x.u.s->n);
}

static jv join_values(ctx *c, jv sep, jlist *items, const char *attr, int line);

static jv str_method(ctx *c, jv s, const char *m, const args_t *a, int line) {
  if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
    jv x = arg(a, 0, NULL);
    bool end = m[0] == 'e';
    if (x.t == JV_LIST) {
      for (size_t i = 0; i < x.u.l->n; i++)
        if (prefix_match(s, x.u.l->v[i], end)) return jv_bool(true);
      return jv_bool(false);
    }
    if (x.t != JV_STR) {
      rerr(c, line, "%s first arg must be str or a tuple of str, not %s", m, mx__jv_type_name(x));
      return jv_undef();
    }
    return jv_bool(prefix_match(s, x, end));
  }
  if (!strcmp(m, "strip")) return strip_str(c, s, arg(a, 0, NULL), true, true);
  if (!strcmp(m, "lstrip")) return strip_str(c, s, arg(a, 0, NULL), true, false);
  if (!strcmp(m, "rstrip")) return strip_str(c, s, arg(a, 0, NULL), false, true);
  if (!strcmp(m, "split")) return split_str(c, s, arg(a, 0, "sep"), arg(a, 1, "maxsplit"), line);
  if (!strcmp(m, "rsplit")) {
    jv mx = arg(a, 1, "maxsplit");
    if (mx.t == JV_INT && mx.u.i >= 0) {
      jv sep = arg(a, 0, "sep");
      if (sep.t != JV_STR || !sep.u.s->n) {
        rerr(c, line, "rsplit with maxsplit needs a separator here");
        return jv_undef();
      }
      /* split from the right */
      jv r = mx__jv_list(c->a);
      if (r.t != JV_LIST) return oom(c);
      const char *p = s.u.s->p;
      size_t end = s.u.s->n, sl = sep.u.s->n;
      int64_t cnt = 0;
      jv parts[1024];
      int np = 0;
      size_t i = end;
      while (i >= sl && cnt < mx.u.i && np < 1023) {
        if (!memcmp(p + i - sl, sep.u.s->p, sl)) {
          parts[np++] = mkstr(c, p + i, end - i);
          i -= sl;
          end = i;
          cnt++;
        } else {
          i--;
        }
      }
      parts[np++] = mkstr(c, p, end);
      for (int k = np - 1; k >= 0; k--)
        if (mx__jv_list_push(c->a, r.u.l, parts[k])) return oom(c);
      return r;
    }
    return split_str(c, s, arg(a, 0, "sep"), jv_undef(), line);
  }
  if (!strcmp(m, "lower") || !strcmp(m, "casefold")) return case_map(c, s, 0);
  if (!strcmp(m, "upper")) return case_map(c, s, 1);
  if (!strcmp(m, "title")) return case_map(c, s, 2);
  if (!strcmp(m, "capitalize")) return case_map(c, s, 3);
  if (!strcmp(m, "replace")) {
    jv o = arg(a, 0, NULL), n = arg(a, 1, NULL), k = arg(a, 2, "count");
    if (o.t != JV_STR || n.t != JV_STR) {
      rerr(c, line, "replace() arguments must be str");
      return jv_undef();
    }
    return replace_str(c, s, o, n, k.t == JV_INT ? k.u.i : -1);
  }
  if (!strcmp(m, "find") || !strcmp(m, "index") || !strcmp(m, "rfind") || !strcmp(m, "count")) {
    jv x = arg(a, 0, NULL);
    if (x.t != JV_STR) {
      rerr(c, line, "%s() argument must be str", m);
      return jv_undef();
    }
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, xl = x.u.s->n;
    if (!strcmp(m, "count")) {
      if (!xl) return jv_int((int64_t)utf8_len(p, n) + 1);
      int64_t k = 0;
      for (size_t i = 0; i + xl <= n;) {
        if (!memcmp(p + i, x.u.s->p, xl)) {
          k++;
          i += xl;
        } else {
          i++;
        }
      }
      return jv_int(k);
    }
    int64_t found = -1;
    if (m[0] == 'r') {
      for (size_t i = n - MX_MIN(n, xl) + 1; i-- > 0;)
        if (i + xl <= n && !memcmp(p + i, x.u.s->p, xl)) {
          found = (int64_t)i;
          break;
        }
    } else {
      const char *h = xl ? memmem(p, n, x.u.s->p, xl) : p;
      if (h) found = h - p;
    }
    if (found >= 0) found = (int64_t)utf8_len(p, (size_t)found);
    if (found < 0 && !strcmp(m, "index")) {
      rerr(c, line, "substring not found");
      return jv_undef();
    }
    return jv_int(found);
  }
  if (!strcmp(m, "join")) {
    jv x = arg(a, 0, NULL);
    jlist *l = iter_list(c, x, line);
    return l ? join_values(c, s, l, NULL, line) : jv_undef();
  }
  if (!strcmp(m, "splitlines")) {
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, start = 0;
    for (size_t i = 0; i < n;) {
      uint32_t cp;
      size_t l = mx__utf8_decode((const uint8_t *)p + i, n - i, &cp);
      bool nl = cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || (cp >= 0x1c && cp <= 0x1e) ||
                cp == 0x85 || cp == 0x2028 || cp == 0x2029;
      if (nl) {
        if (mx__jv_list_push(c->a, r.u.l, mkstr(c, p + start, i - start))) return oom(c);
        if (cp == '\r' && i + 1 < n && p[i + 1] == '\n') l++;
        start = i + l;
      }
      i += l;
    }
    if (start < n && mx__jv_list_push(c->a, r.u.l, mkstr(c, p + start, n - start))) return oom(c);
    return r;
  }
  if (!strncmp(m, "is", 2)) {
    const char *p = s.u.s->p;
    size_t n = s.u.s->n;
    if (!n) return jv_bool(false);
    bool any_cased = false, ok = true;
    for (size_t i = 0; i < n && ok;) {
      uint32_t cp;
      i += mx__utf8_decode((const uint8_t *)p + i, n - i, &cp);
      utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
      bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
      bool digit = cat == UTF8PROC_CATEGORY_ND;
      if (!strcmp(m, "isdigit")) ok = digit;
      else if (!strcmp(m, "isalpha")) ok = letter;
      else if (!strcmp(m, "isalnum")) ok = letter || mx__is_number(cp);
      else if (!strcmp(m, "isspace")) ok = mx__py_isspace(cp);
      else if (!strcmp(m, "islower")) {
        if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT) ok = false;
        if (cat == UTF8PROC_CATEGORY_LL) any_cased = true;
      } else if (!strcmp(m, "isupper")) {
        if (cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) ok = false;
        if (cat == UTF8PROC_CATEGORY_LU) any_cased = true;
      }
    }
    if (!strcmp(m, "islower") || !strcmp(m, "isupper")) ok = ok && any_cased;
    return jv_bool(ok);
  }
  if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
    jv x = arg(a, 0, NULL);
    bool end = m[6] == 's';
    if (x.t == JV_STR && prefix_match(s, x, end))
      return mkstr(c, s.u.s->p + (end ? 0 : x.u.s->n), s.u.s->n - x.u.s->n);
    return s;
  }
  if (!strcmp(m, "partition") || !strcmp(m, "rpartition")) {
    jv x = arg(a, 0, NULL);
    if (x.t != JV_STR || !x.u.s->n) {
      rerr(c, line, "%s() needs a non-empty separator", m);
      return jv_undef();
    }
    const char *p = s.u.s->p, *h = NULL;
    size_t n = s.u.s->n, xl = x.u.s->n;
    if (m[0] == 'r') {
      for (size_t i = n >= xl ? n - xl + 1 : 0; i-- > 0;)
        if (!memcmp(p + i, x.u.s->p, xl)) {
          h = p + i;
          break;
        }
    } else {
      h = memmem(p, n, x.u.s->p, xl);
    }
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    jv e = mkstr(c, "", 0);
    if (!h) {
      mx__jv_list_push(c->a, r.u.l, m[0] == 'r' ? e : s);
      mx__jv_list_push(c->a, r.u.l, e);
      mx__jv_list_push(c->a, r.u.l, m[0] == 'r' ? s : e);
    } else {
      mx__jv_list_push(c->a, r.u.l, mkstr(c, p, (size_t)(h - p)));
      mx__jv_list_push(c->a, r.u.l, x);
      mx__jv_list_push(c->a, r.u.l, mkstr(c, h + xl, n - (size_t)(h - p) - xl));
    }
    return r;
  }
  rerr(c, line, "unsupported string method '%s'", m);
  return jv_undef();
}

/* ---- filters ------------------------------------------------------------------------------ */

static jv attr_path(ctx *c, jv v, const char *path, int line) {
  /* "a.b" or "0" */
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s", path);
  char *save = NULL;
  for (char *part = strtok_r(tmp, ".", &save); part && !c->status; part = strtok_r(NULL, ".", &save)) {
    char *e;
    long idx = strtol(part, &e, 10);
    if (!*e && *part) v = get_item(c, v, jv_int(idx), line);
    else v = get_item(c, v, mkstr(c, part, strlen(part)), line);
    if (v.t == JV_UNDEF) break;
  }
  return v;
}

static jv join_values(ctx *c, jv sep, jlist *items, const char *attr, int line) {
  mx__buf b = {0};
  for (size_t i = 0; i < items->n; i++) {
    if (i) mx__jv_str_append(&b, sep);
    jv it = attr ? attr_path(c, items->v[i], attr, line) : items->v[i];
    mx__jv_str_append(&b, it);
  }
  return buf_to_str(c, &b);
}

static bool run_test(ctx *c, frame *f, const char *name, jv v, const args_t *a, int line);

typedef struct {
  ctx *c;
  const char *attr;
  bool reverse, case_sensitive;
  int line;
} sort_ctx;

static _Thread_local sort_ctx *g_sort;

static int sort_cmp(const void *x, const void *y) {
  jv a = *(const jv *)x, b = *(const jv *)y;
  sort_ctx *s = g_sort;
  if (s->attr) {
    a = attr_path(s->c, a, s->attr, s->line);
    b = attr_path(s->c, b, s->attr, s->line);
  }
  if (!s->case_sensitive && a.t == JV_STR && b.t == JV_STR) {
    a = case_map(s->c, a, 0);
    b = case_map(s->c, b, 0);
  }
  bool ok;
  int r = mx__jv_compare(a, b, &ok);
  if (!ok) rerr(s->c, s->line, "cannot sort '%s' and '%s'", mx__jv_type_name(a), mx__jv_type_name(b));
  return s->reverse ? -r : r;
}

/* stable sort: merge sort on jv */
static void merge_sort(jv *v, jv *tmp, size_t n) {
  if (n < 2) return;
  size_t h = n / 2;
  merge_sort(v, tmp, h);
  merge_sort(v + h, tmp, n - h);
  size_t i = 0, j = h, k = 0;
  while (i < h && j < n) tmp[k++] = sort_cmp(&v[j], &v[i]) < 0 ? v[j++] : v[i++];
  while (i < h) tmp[k++] = v[i++];
  while (j < n) tmp[k++] = v[j++];
  memcpy(v, tmp, n * sizeof *v);
}

static jv copy_list(ctx *c, jlist *l) {
  jv r = mx__jv_list(c->a);
  if (r.t != JV_LIST) return oom(c);
  for (size_t i = 0; i < l->n; i++)
    if (mx__jv_list_push(c->a, r.u.l, l->v[i])) return oom(c);
  return r;
}

static jv apply_filter(ctx *c, frame *f, const char *name, jv v, const args_t *a, int line) {
  if (!strcmp(name, "length") || !strcmp(name, "count")) return length_of(c, v, line);
  if (!strcmp(name, "default") || !strcmp(name, "d")) {
    bool boolean = mx__jv_truthy(arg(a, 1, "boolean"));
    if (v.t == JV_UNDEF || (boolean && !mx__jv_truthy(v))) {
      jv d = arg(a, 0, "default_value");
      return d.t == JV_UNDEF && !has_arg(a, 0, "default_value") ? mkstr(c, "", 0) : d;
    }
    return v;
  }
  if (!strcmp(name, "tojson")) {
    jv ind = arg(a, 0, "indent");
    char indent[64];
    const char *ip = NULL;
    if (ind.t == JV_INT) {
      int k = (int)MX_MIN(MX_MAX(ind.u.i, 0), 63);
      memset(indent, ' ', (size_t)k);
      indent[k] = 0;
      ip = indent;
    } else if (ind.t == JV_STR) {
      snprintf(indent, sizeof indent, "%s", ind.u.s->p);
      ip = indent;
    }
    const char *item_sep = ip ? "," : ", ", *key_sep = ": ";
    jv seps = arg(a, 2, "separators");
    if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
      item_sep = seps.u.l->v[0].u.s->p;
      key_sep = seps.u.l->v[1].u.s->p;
    }
    mx__buf b = {0};
    int st = mx__jv_tojson(&b, v, ip, item_sep, key_sep, mx__jv_truthy(arg(a, 3, "sort_keys")), 0);
    if (st) {
      mx__buf_free(&b);
      rerr(c, line, "%s", mx_last_error());
      return jv_undef();
    }
    return buf_to_str(c, &b);
  }
  if (!strcmp(name, "trim")) {
    if (v.t == JV_UNDEF) return mkstr(c, "", 0);
    return strip_str(c, to_str(c, v), arg(a, 0, "chars"), true, true);
  }
  if (!strcmp(name, "string")) return v.t == JV_UNDEF ? mkstr(c, "", 0) : to_str(c, v);
  if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape") ||
      !strcmp(name, "forceescape")) {
    if (!strcmp(name, "safe")) return v;
    jv s = to_str(c, v);
    mx__buf b = {0};
    for (size_t i = 0; i < s.u.s->n; i++) {
      char ch = s.u.s->p[i];
      switch (ch) {
      case '&': mx__buf_puts(&b, "&amp;"); break;
      case '<': mx__buf_puts(&b, "&lt;"); break;
      case '>': mx__buf_puts(&b, "&gt;"); break;
      case '"': mx__buf_puts(&b, "&#34;"); break;
      case '\'': mx__buf_puts(&b, "&#39;"); break;
      default: mx__buf_putc(&b, ch);
      }
    }
    return buf_to_str(c, &b);
  }
  if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
      !strcmp(name, "capitalize")) {
    jv s = to_str(c, v);
    int mode = name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 't' ? 2 : 3;
    return case_map(c, s, mode);
  }
  if (!strcmp(name, "replace")) {
    jv s = to_str(c, v), o = arg(a, 0, "old"), n = arg(a, 1, "new"), k = arg(a, 2, "count");
    if (o.t != JV_STR || n.t != JV_STR) {
      rerr(c, line, "replace filter needs string arguments");
      return jv_undef();
    }
    return replace_str(c, s, o, n, k.t == JV_INT ? k.u.i : -1);
  }
  if (!strcmp(name, "join")) {
    jlist *l = iter_list(c, v, line);
    jv sep = arg(a, 0, "d");
    if (sep.t == JV_UNDEF) sep = mkstr(c, "", 0);
    jv at = arg(a, 1, "attribute");
    return l ? join_values(c, sep, l, at.t == JV_STR ? at.u.s->p : NULL, line) : jv_undef();
  }
  if (!strcmp(name, "list")) {
    jlist *l = iter_list(c, v, line);
    return l ? copy_list(c, l) : jv_undef();
  }
  if (!strcmp(name, "first") || !strcmp(name, "last")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    if (!l->n) return undefined_named(name);
    return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
  }
  if (!strcmp(name, "reverse")) {
    if (v.t == JV_STR) return do_slice(c, v, jv_undef(), jv_undef(), jv_int(-1), line);
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    for (size_t i = l->n; i-- > 0;)
      if (mx__jv_list_push(c->a, r.u.l, l->v[i])) return oom(c);
    return r;
  }
  if (!strcmp(name, "items")) {
    if (v.t == JV_UNDEF) return mx__jv_list(c->a);
    if (v.t != JV_DICT && v.t != JV_NS) {
      rerr(c, line, "items filter needs a mapping, got %s", mx__jv_type_name(v));
      return jv_undef();
    }
    jv r = mx__jv_list(c->a);
    for (size_t i = 0; r.t == JV_LIST && i < v.u.d->n; i++) {
      jv pair = mx__jv_list(c->a);
      if (pair.t != JV_LIST) return oom(c);
      pair.u.l->tuple = true;
      mx__jv_list_push(c->a, pair.u.l, v.u.d->k[i]);
      mx__jv_list_push(c->a, pair.u.l, v.u.d->v[i]);
      if (mx__jv_list_push(c->a, r.u.l, pair)) return oom(c);
    }
    return r;
  }
  if (!strcmp(name, "dictsort")) {
    if (v.t != JV_DICT) {
      rerr(c, line, "dictsort needs a mapping");
      return jv_undef();
    }
    args_t none = {0};
    jv items = apply_filter(c, f, "items", v, &none, line);
    if (items.t != JV_LIST) return items;
    sort_ctx s = {c, "0", mx__jv_truthy(arg(a, 2, "reverse")), mx__jv_truthy(arg(a, 0, "case_sensitive")), line};
    jv by = arg(a, 1, "by");
    if (by.t == JV_STR && !strcmp(by.u.s->p, "value")) s.attr = "1";
    jv *tmp = mx__jarena_alloc(c->a, (items.u.l->n + 1) * sizeof *tmp);
    if (!tmp) return oom(c);
    sort_ctx *prev = g_sort;
    g_sort = &s;
    merge_sort(items.u.l->v, tmp, items.u.l->n);
    g_sort = prev;
    return items;
  }
  if (!strcmp(name, "sort")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    jv r = copy_list(c, l);
    if (r.t != JV_LIST) return r;
    jv at = arg(a, 2, "attribute");
    sort_ctx s = {c, at.t == JV_STR ? at.u.s->p : NULL, mx__jv_truthy(arg(a, 0, "reverse")),
                  mx__jv_truthy(arg(a, 1, "case_sensitive")), line};
    jv *tmp = mx__jarena_alloc(c->a, (r.u.l->n + 1) * sizeof *tmp);
    if (!tmp) return oom(c);
    sort_ctx *prev = g_sort;
    g_sort = &s;
    merge_sort(r.u.l->v, tmp, r.u.l->n);
    g_sort = prev;
    return r;
  }
  if (!strcmp(name, "unique")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    for (size_t i = 0; i < l->n; i++) {
      bool seen = false;
      for (size_t j = 0; j < r.u.l->n && !seen; j++) seen = mx__jv_equal(r.u.l->v[j], l->v[i]);
      if (!seen && mx__jv_list_push(c->a, r.u.l, l->v[i])) return oom(c);
    }
    return r;
  }
  if (!strcmp(name, "map")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    jv at = arg(a, -1, "attribute");
    jv fname = a->n > 0 ? a->v[0] : jv_undef();
    for (size_t i = 0; i < l->n && !c->status; i++) {
      jv x;
      if (at.t == JV_STR) {
        x = attr_path(c, l->v[i], at.u.s->p, line);
        if (x.t == JV_UNDEF && has_arg(a, -1, "default")) x = arg(a, -1, "default");
      } else if (fname.t == JV_STR) {
        args_t rest = {a->v + 1, a->n - 1, a->kwn, a->kwv, a->nkw};
        x = apply_filter(c, f, fname.u.s->p, l->v[i], &rest, line);
      } else {
        rerr(c, line, "map needs a filter name or attribute=");
        return jv_undef();
      }
      if (mx__jv_list_push(c->a, r.u.l, x)) return oom(c);
    }
    return r;
  }
  if (!strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
      !strcmp(name, "rejectattr")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    bool attr = strstr(name, "attr") != NULL, keep_if = name[0] == 's';
    int base = attr ? 1 : 0;
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    for (size_t i = 0; i < l->n && !c->status; i++) {
      jv x = l->v[i];
      if (attr) {
        jv an = arg(a, 0, NULL);
        if (an.t != JV_STR) {
          rerr(c, line, "%s needs an attribute name", name);
          return jv_undef();
        }
        x = attr_path(c, x, an.u.s->p, line);
      }
      bool t;
      if (a->n > base) {
        jv tn = a->v[base];
        if (tn.t != JV_STR) {
          rerr(c, line, "%s: test name must be a string", name);
          return jv_undef();
        }
        args_t rest = {a->v + base + 1, a->n - base - 1, NULL, NULL, 0};
        t = run_test(c, f, tn.u.s->p, x, &rest, line);
      } else {
        t = mx__jv_truthy(x);
      }
      if (t == keep_if && mx__jv_list_push(c->a, r.u.l, l->v[i])) return oom(c);
    }
    return r;
  }
  if (!strcmp(name, "int")) {
    if (v.t == JV_INT) return v;
    if (v.t == JV_BOOL) return jv_int(v.u.b);
    if (v.t == JV_FLOAT) return jv_int((int64_t)v.u.f);
    if (v.t == JV_STR) {
      char *e;
      long long k = strtoll(v.u.s->p, &e, 10);
      if (e != v.u.s->p && !*e) return jv_int(k);
      double d = strtod(v.u.s->p, &e);
      if (e != v.u.s->p && !*e) return jv_int((int64_t)d);
    }
    jv d = arg(a, 0, "default");
    return d.t == JV_UNDEF ? jv_int(0) : d;
  }
  if (!strcmp(name, "float")) {
    if (is_num(v)) return jv_float(fnum(v));
    if (v.t == JV_STR) {
      char *e;
      double d = strtod(v.u.s->p, &e);
      if (e != v.u.s->p && !*e) return jv_float(d);
    }
    jv d = arg(a, 0, "default");
    return d.t == JV_UNDEF ? jv_float(0) : d;
  }
  if (!strcmp(name, "abs")) {
    if (v.t == JV_INT) return jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
    if (is_num(v)) return jv_float(fabs(fnum(v)));
    rerr(c, line, "bad operand type for abs(): '%s'", mx__jv_type_name(v));
    return jv_undef();
  }
  if (!strcmp(name, "round")) {
    jv pr = arg(a, 0, "precision"), me = arg(a, 1, "method");
    int p = pr.t == JV_INT ? (int)pr.u.i : 0;
    double x = fnum(v), m = pow(10, p);
    const char *method_ = me.t == JV_STR ? me.u.s->p : "common";
    double r = !strcmp(method_, "floor") ? floor(x * m) / m
               : !strcmp(method_, "ceil") ? ceil(x * m) / m : round(x * m) / m;
    return jv_float(r);
  }
  if (!strcmp(name, "sum")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    jv at = arg(a, 0, "attribute"), total = arg(a, 1, "start");
    if (total.t == JV_UNDEF) total = jv_int(0);
    for (size_t i = 0; i < l->n && !c->status; i++)
      total = arith(c, '+', total, at.t == JV_STR ? attr_path(c, l->v[i], at.u.s->p, line) : l->v[i], line);
    return total;
  }
  if (!strcmp(name, "min") || !strcmp(name, "max")) {
    jlist *l = iter_list(c, v, line);
    if (!l) return jv_undef();
    if (!l->n) return undefined_named(name);
    jv best = l->v[0];
    for (size_t i = 1; i < l->n; i++) {
      bool ok;
      int r = mx__jv_compare(l->v[i], best, &ok);
      if (ok && (name[1] == 'i' ? r < 0 : r > 0)) best = l->v[i];
    }
    return best;
  }
  if (!strcmp(name, "attr")) {
    jv nm = arg(a, 0, NULL);
    return nm.t == JV_STR ? get_attr(c, v, nm.u.s->p, line) : jv_undef();
  }
  if (!strcmp(name, "indent")) {
    jv s = to_str(c, v), w = arg(a, 0, "width");
    bool first = mx__jv_truthy(arg(a, 1, "first")), blank = mx__jv_truthy(arg(a, 2, "blank"));
    mx__buf pad = {0};
    if (w.t == JV_STR) mx__buf_put(&pad, w.u.s->p, w.u.s->n);
    else
      for (int64_t i = 0; i < (w.t == JV_INT ? w.u.i : 4) && i < 256; i++) mx__buf_putc(&pad, ' ');
    mx__buf b = {0};
    const char *p = s.u.s->p;
    size_t n = s.u.s->n, ls = 0;
    bool first_line = true;
    for (size_t i = 0; i <= n; i++) {
      if (i == n || p[i] == '\n') {
        bool empty = i == ls;
        if ((first_line ? first : true) && (blank || !empty)) mx__buf_put(&b, pad.p ? pad.p : "", pad.n);
        mx__buf_put(&b, p + ls, i - ls);
        if (i < n) mx__buf_putc(&b, '\n');
        ls = i + 1;
        first_line = false;
      }
    }
    mx__buf_free(&pad);
    return buf_to_str(c, &b);
  }
  if (!strcmp(name, "wordcount")) {
    jv parts = split_str(c, to_str(c, v), jv_undef(), jv_undef(), line);
    return parts.t == JV_LIST ? jv_int((int64_t)parts.u.l->n) : parts;
  }
  if (!strcmp(name, "batch") || !strcmp(name, "slice") || !strcmp(name, "groupby") ||
      !strcmp(name, "truncate") || !strcmp(name, "urlencode") || !strcmp(name, "xmlattr") ||
      !strcmp(name, "format") || !strcmp(name, "center") || !strcmp(name, "striptags") ||
      !strcmp(name, "filesizeformat") || !strcmp(name, "pprint") || !strcmp(name, "random") ||
      !strcmp(name, "urlize") || !strcmp(name, "wordwrap")) {
    rerr(c, line, "unsupported filter '%s'", name);
    return jv_undef();
  }
  rerr(c, line, "no filter named '%s'", name);
  return jv_undef();
}

/* ---- tests ------------------------------------------------------------------------------- */

static bool run_test(ctx *c, frame *f, const char *name, jv v, const args_t *a, int line) {
  (void)f;
  jv x = arg(a, 0, NULL);
  if (!strcmp(name, "defined")) return v.t != JV_UNDEF;
  if (!strcmp(name, "undefined")) return v.t == JV_UNDEF;
  if (!strcmp(name, "none")) return v.t == JV_NONE;
  if (!strcmp(name, "true")) return v.t == JV_BOOL && v.u.b;
  if (!strcmp(name, "false")) return v.t == JV_BOOL && !v.u.b;
  if (!strcmp(name, "boolean")) return v.t == JV_BOOL;
  if (!strcmp(name, "string")) return v.t == JV_STR;
  if (!strcmp(name, "number")) return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
  if (!strcmp(name, "integer")) return v.t == JV_INT;
  if (!strcmp(name, "float")) return v.t == JV_FLOAT;
  if (!strcmp(name, "mapping")) return v.t == JV_DICT;
  if (!strcmp(name, "iterable")) return v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR;
  if (!strcmp(name, "sequence")) return v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR;
  if (!strcmp(name, "callable")) return v.t == JV_FUNC || v.t == JV_METHOD || v.t == JV_MACRO;
  if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
    if (v.t != JV_INT && v.t != JV_BOOL) {
      rerr(c, line, "test '%s' needs an integer", name);
      return false;
    }
    int64_t i = inum(v);
    if (name[0] == 'o') return (i % 2) != 0;
    if (name[0] == 'e') return i % 2 == 0;
    int64_t d = inum(x);
    if (!d) {
      rerr(c, line, "divisibleby 0");
      return false;
    }
    return i % d == 0;
  }
  if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return mx__jv_equal(v, x);
  if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !mx__jv_equal(v, x);
  if (!strcmp(name, "sameas")) {
    if (v.t != x.t) return false;
    if (v.t == JV_NONE || v.t == JV_UNDEF) return true;
    if (v.t == JV_BOOL) return v.u.b == x.u.b;
    return mx__jv_equal(v, x) && (v.t == JV_INT || v.t == JV_STR ? v.u.s == x.u.s || v.t == JV_INT : true);
  }
  if (!strcmp(name, "in")) return contains(c, x, v, line);
  if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<"))
    return mx__jv_truthy(compare(c, '<', v, x, line));
  if (!strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">"))
    return mx__jv_truthy(compare(c, '>', v, x, line));
  if (!strcmp(name, "le") || !strcmp(name, "<=")) return mx__jv_truthy(compare(c, 'L', v, x, line));
  if (!strcmp(name, "ge") || !strcmp(name, ">=")) return mx__jv_truthy(compare(c, 'G', v, x, line));
  if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
    if (v.t != JV_STR) return false;
    args_t none = {0};
    return mx__jv_truthy(str_method(c, v, name[0] == 'l' ? "islower" : "isupper", &none, line));
  }
  if (!strcmp(name, "escaped")) return false;
  rerr(c, line, "no test named '%s'", name);
  return false;
}

/* ---- calls --------------------------------------------------------------------------------- */

static jv call_builtin(ctx *c, const char *fn, const args_t *a, int line) {
  if (!strcmp(fn, "raise_exception")) {
    jv m = arg(a, 0, NULL);
    mx__buf b = {0};
    mx__jv_str_append(&b, m);
    mx__buf_putc(&b, 0);
    rerr(c, line, "raise_exception: %s", b.p ? b.p : "");
    mx__buf_free(&b);
    return jv_undef();
  }
  if (!strcmp(fn, "range")) {
    int64_t start = 0, stop, step = 1;
    if (a->n == 1) stop = inum(a->v[0]);
    else if (a->n >= 2) {
      start = inum(a->v[0]);
      stop = inum(a->v[1]);
      if (a->n >= 3) step = inum(a->v[2]);
    } else {
      rerr(c, line, "range expected at least 1 argument");
      return jv_undef();
    }
    if (!step) {
      rerr(c, line, "range() arg 3 must not be zero");
      return jv_undef();
    }
    jv r = mx__jv_list(c->a);
    if (r.t != JV_LIST) return oom(c);
    int64_t count = 0;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (++count > 1000000) {
        rerr(c, line, "range too big (limit 1000000 items)");
        return jv_undef();
      }
      if (mx__jv_list_push(c->a, r.u.l, jv_int(i))) return oom(c);
    }
    return r;
  }
  if (!strcmp(fn, "namespace") || !strcmp(fn, "dict")) {
    jv ns = mx__jv_dict(c->a, fn[0] == 'n' ? JV_NS : JV_DICT);
    if (ns.t == JV_UNDEF) return oom(c);
    for (int i = 0; i < a->n; i++) /* namespace(dict) copies a mapping */
      if (a->v[i].t == JV_DICT || a->v[i].t == JV_NS)
        for (size_t k = 0; k < a->v[i].u.d->n; k++)
          if (mx__jv_dict_set(c->a, ns.u.d, a->v[i].u.d->k[k], a->v[i].u.d->v[k])) return oom(c);
    for (int i = 0; i < a->nkw; i++)
      if (mx__jv_dict_set(c->a, ns.u.d, mx__jv_cstr(c->a, a->kwn[i]), a->kwv[i])) return oom(c);
    return ns;
  }
  if (!strcmp(fn, "strftime_now")) {
    jv f = arg(a, 0, NULL);
    if (f.t != JV_STR) {
      rerr(c, line, "strftime_now needs a format string");
      return jv_undef();
    }
    time_t t = time(NULL);
    struct tm tmv;
    localtime_r(&t, &tmv);
    char out[256];
    size_t k = strftime(out, sizeof out, f.u.s->p, &tmv);
    return mkstr(c, out, k);
  }
  rerr(c, line, "'%s' is not callable", fn);
  return jv_undef();
}

static jv call_method(ctx *c, jmethod *m, const args_t *a, int line) {
  jv o = m->obj;
  const char *nm = m->name;
  if (o.t == JV_STR) return str_method(c, o, nm, a, line);
  if (o.t == JV_DICT) {
    if (!strcmp(nm, "get")) {
      jv *v = mx__jv_dict_get(o.u.d, arg(a, 0, NULL));
      if (v) return *v;
      return has_arg(a, 1, "default") ? arg(a, 1, "default") : jv_none();
    }
    if (!strcmp(nm, "items")) {
      args_t none = {0};
      return apply_filter(c, NULL, "items", o, &none, line);
    }
    if (!strcmp(nm, "keys") || !strcmp(nm, "values")) {
      jv r = mx__jv_list(c->a);
      if (r.t != JV_LIST) return oom(c);
      for (size_t i = 0; i < o.u.d->n; i++)
        if (mx__jv_list_push(c->a, r.u.l, nm[0] == 'k' ? o.u.d->k[i] : o.u.d->v[i])) return oom(c);
      return r;
    }
    if (!strcmp(nm, "copy")) {
      jv d = mx__jv_dict(c->a, JV_DICT);
      for (size_t i = 0; d.t == JV_DICT && i < o.u.d->n; i++)
        if (mx__jv_dict_set(c->a, d.u.d, o.u.d->k[i], o.u.d->v[i])) return oom(c);
      return d;
    }
  }
  if (o.t == JV_LIST) {
    if (!strcmp(nm, "index") || !strcmp(nm, "count")) {
      jv x = arg(a, 0, NULL);
      int64_t k = 0;
      for (size_t i = 0; i < o.u.l->n; i++)
        if (mx__jv_equal(o.u.l->v[i], x)) {
          if (nm[0] == 'i') return jv_int((int64_t)i);
          k++;
        }
      if (nm[0] == 'i') {
        rerr(c, line, "value is not in list");
        return jv_undef();
      }
      return jv_int(k);
    }
    if (!strcmp(nm, "copy")) return copy_list(c, o.u.l);
  }
  if (o.t == JV_LOOP && !strcmp(nm, "cycle")) {
    if (!a->n) {
      rerr(c, line, "no items for cycling given");
      return jv_undef();
    }
    return a->v[o.u.loop->index0 % (size_t)a->n];
  }
  rerr(c, line, "access to attribute '%s' of '%s' object is unsafe", nm, mx__jv_type_name(o));
  return jv_undef();
}

static jv call_macro(ctx *c, jmacro *m, const args_t *a, int line) {
  const jnode *mn = m->node;
  if (++c->depth > MAX_DEPTH) {
    c->depth--;
    rerr(c, line, "macro recursion too deep");
    return jv_undef();
  }
  frame *f = new_frame(c, m->closure);
  if (!f) return jv_undef();
  if (a->n > mn->nkw) {
    c->depth--;
    rerr(c, line, "macro '%s' takes not more than %d argument(s)", mn->name, mn->nkw);
    return jv_undef();
  }
  for (int i = 0; i < mn->nkw && !c->status; i++) {
    jv v;
    if (i < a->n) v = a->v[i];
    else {
      bool found = false;
      for (int k = 0; k < a->nkw; k++)
        if (!strcmp(a->kwn[k], mn->kwnames[i])) {
          v = a->kwv[k];
          found = true;
        }
      if (!found) v = mn->kwvals[i] ? eval(c, f, mn->kwvals[i]) : undefined_named(mn->kwnames[i]);
    }
    assign(c, f, mn->kwnames[i], v);
  }
  mx__buf *saved = c->out, body = {0};
  c->out = &body;
  exec(c, f, mn->b);
  c->out = saved;
  c->ctl = CTL_NONE;
  c->depth--;
  return buf_to_str(c, &body);
}

static jv call_value(ctx *c, frame *f, jv fn, jv *args, int nargs, const char **kwn, jv *kwv,
                     int nkw, int line) {
  (void)f;
  args_t a = {args, nargs, kwn, kwv, nkw};
  switch (fn.t) {
  case JV_FUNC: return call_builtin(c, fn.u.fn, &a, line);
  case JV_METHOD: return call_method(c, fn.u.m, &a, line);
  case JV_MACRO: return call_macro(c, fn.u.mac, &a, line);
  case JV_UNDEF:
    rerr(c, line, "'%s' is undefined (calling it)", undef_desc(fn));
    return jv_undef();
  default:
    rerr(c, line, "'%s' object is not callable", mx__jv_type_name(fn));
    return jv_undef();
  }
}

/* Evaluate call-style arguments of node n. */
static bool eval_args(ctx *c, frame *f, const jnode *n, args_t *a) {
  a->n = n->n;
  a->nkw = n->nkw;
  a->kwn = n->kwnames;
  a->v = mx__jarena_alloc(c->a, (size_t)(n->n + 1) * sizeof(jv));
  a->kwv = mx__jarena_alloc(c->a, (size_t)(n->nkw + 1) * sizeof(jv));
  if (!a->v || !a->kwv) {
    oom(c);
    return false;
  }
  for (int i = 0; i < n->n && !c->status; i++) a->v[i] = eval(c, f, n->items[i]);
  for (int i = 0; i < n->nkw && !c->status; i++) a->kwv[i] = eval(c, f, n->kwvals[i]);
  return !c->status;
}

/* ---- expressions ---------------------------------------------------------------------------- */

static jv eval(ctx *c, frame *f, const jnode *n) {
  if (c->status || !n) return jv_undef();
  if (++c->steps > MAX_STEPS) {
    rerr(c, n->line, "template ran too long (step limit)");
    return jv_undef();
  }
  if (++c->depth > MAX_DEPTH) {
    c->depth--;
    rerr(c, n->line, "expression nested too deeply");
    return jv_undef();
  }
  jv r = jv_undef();
  switch (n->kind) {
  case N_LIT: r = n->lit; break;
  case N_NAME: {
    jv *v = lookup(f, n->name);
    if (v) r = *v;
    else if (in_list(n->name, GLOBAL_FUNCS)) r = (jv){.t = JV_FUNC, .u.fn = n->name};
    else r = undefined_named(n->name);
    break;
  }
  case N_LIST:
  case N_TUPLE: {
    r = mx__jv_list(c->a);
    if (r.t != JV_LIST) {
      r = oom(c);
      break;
    }
    r.u.l->tuple = n->kind == N_TUPLE;
    for (int i = 0; i < n->n && !c->status; i++)
      if (mx__jv_list_push(c->a, r.u.l, eval(c, f, n->items[i]))) r = oom(c);
    break;
  }
  case N_DICT: {
    r = mx__jv_dict(c->a, JV_DICT);
    if (r.t != JV_DICT) {
      r = oom(c);
      break;
    }
    for (int i = 0; i + 1 < n->n && !c->status; i += 2) {
      jv k = eval(c, f, n->items[i]), v = eval(c, f, n->items[i + 1]);
      if (mx__jv_dict_set(c->a, r.u.d, k, v)) r = oom(c);
    }
    break;
  }
  case N_ATTR: r = get_attr(c, eval(c, f, n->a), n->name, n->line); break;
  case N_ITEM: {
    jv o = eval(c, f, n->a), k = eval(c, f, n->b);
    r = c->status ? jv_undef() : get_item(c, o, k, n->line);
    break;
  }
  case N_SLICE: {
    jv o = eval(c, f, n->a);
    jv lo = n->b ? eval(c, f, n->b) : jv_none(), hi = n->c ? eval(c, f, n->c) : jv_none(),
       st = n->d ? eval(c, f, n->d) : jv_none();
    r = c->status ? jv_undef() : do_slice(c, o, lo, hi, st, n->line);
    break;
  }
  case N_CALL: {
    jv fn = eval(c, f, n->a);
    args_t a;
    if (!c->status && eval_args(c, f, n, &a))
      r = call_value(c, f, fn, a.v, a.n, a.kwn, a.kwv, a.nkw, n->line);
    break;
  }
  case N_FILTER: {
    jv v = eval(c, f, n->a);
    args_t a;
    if (!c->status && eval_args(c, f, n, &a)) r = apply_filter(c, f, n->name, v, &a, n->line);
    break;
  }
  case N_TEST: {
    jv v = eval(c, f, n->a);
    args_t a;
    if (!c->status && eval_args(c, f, n, &a)) {
      bool t = run_test(c, f, n->name, v, &a, n->line);
      r = jv_bool(n->op ? !t : t);
    }
    break;
  }
  case N_UNARY: {
    jv v = eval(c, f, n->a);
    if (c->status) break;
    if (v.t == JV_INT || v.t == JV_BOOL) r = jv_int(n->op == '-' ? -(int64_t)(uint64_t)inum(v) : inum(v));
    else if (v.t == JV_FLOAT) r = jv_float(n->op == '-' ? -v.u.f : v.u.f);
    else rerr(c, n->line, "bad operand type for unary %c: '%s'", n->op, mx__jv_type_name(v));
    break;
  }
  case N_BINARY: {
    jv a = eval(c, f, n->a), b = eval(c, f, n->b);
    if (!c->status) r = arith(c, n->op, a, b, n->line);
    break;
  }
  case N_COMPARE: {
    jv a = eval(c, f, n->a), b = eval(c, f, n->b);
    if (!c->status) r = compare(c, n->op, a, b, n->line);
    break;
  }
  case N_AND: {
    jv a = eval(c, f, n->a);
    r = mx__jv_truthy(a) ? eval(c, f, n->b) : a;
    break;
  }
  case N_OR: {
    jv a = eval(c, f, n->a);
    r = mx__jv_truthy(a) ? a : eval(c, f, n->b);
    break;
  }
  case N_NOT: r = jv_bool(!mx__jv_truthy(eval(c, f, n->a))); break;
  case N_COND:
    if (mx__jv_truthy(eval(c, f, n->b))) r = eval(c, f, n->a);
    else r = n->c ? eval(c, f, n->c) : undefined_named("conditional expression");
    break;
  default: rerr(c, n->line, "not an expression"); break;
  }
  c->depth--;
  return c->status ? jv_undef() : r;
}

/* ---- statements ------------------------------------------------------------------------------ */

static void unpack_assign(ctx *c, frame *f, const char **targets, int nt, jv v, int line) {
  if (nt == 1) {
    assign(c, f, targets[0], v);
    return;
  }
  jlist *l = iter_list(c, v, line);
  if (!l) return;
  if ((int)l->n != nt) {
    rerr(c, line, "cannot unpack %zu values into %d variables", l->n, nt);
    return;
  }
  for (int i = 0; i < nt; i++) assign(c, f, targets[i], l->v[i]);
}

static void exec(ctx *c, frame *f, const jnode *n) {
  if (c->status || !n) return;
  if (c->out->oom) {
    oom(c);
    return;
  }
  if (++c->steps > MAX_STEPS) {
    rerr(c, n->line, "template ran too long (step limit)");
    return;
  }
  switch (n->kind) {
  case N_BLOCK:
    for (int i = 0; i < n->n && !c->status && c->ctl == CTL_NONE; i++) exec(c, f, n->items[i]);
    break;
  case N_TEXT: mx__buf_put(c->out, n->lit.u.s->p, n->lit.u.s->n); break;
  case N_OUTPUT: {
    jv v = eval(c, f, n->a);
    if (!c->status) mx__jv_str_append(c->out, v);
    if (c->out->n > 256u * 1024 * 1024) oom(c);
    break;
  }
  case N_IF:
    if (mx__jv_truthy(eval(c, f, n->a))) exec(c, f, n->b);
    else if (!c->status && n->c) exec(c, f, n->c);
    break;
  case N_FOR: {
    jv seq = eval(c, f, n->a);
    if (c->status) break;
    if (seq.t == JV_DICT && n->ntargets == 2) {
      rerr(c, n->line, "cannot unpack dict keys into 2 variables (use .items())");
      break;
    }
    jlist *all = iter_list(c, seq, n->line);
    if (!all) break;
    /* apply the loop filter first: loop.* counts filtered items */
    jlist *items = all;
    if (n->b) {
      jv fl = mx__jv_list(c->a);
      if (fl.t != JV_LIST) {
        oom(c);
        break;
      }
      for (size_t i = 0; i < all->n && !c->status; i++) {
        frame *tf = new_frame(c, f);
        if (!tf) break;
        unpack_assign(c, tf, n->targets, n->ntargets, all->v[i], n->line);
        if (mx__jv_truthy(eval(c, tf, n->b)) && mx__jv_list_push(c->a, fl.u.l, all->v[i])) oom(c);
      }
      items = fl.u.l;
    }
    if (c->status) break;
    jloop *lp = mx__jarena_alloc(c->a, sizeof *lp);
    if (!lp) {
      oom(c);
      break;
    }
    lp->items = items;
    for (size_t i = 0; i < items->n && !c->status; i++) {
      frame *lf = new_frame(c, f);
      if (!lf) break;
      lp->index0 = i;
      assign(c, lf, "loop", (jv){.t = JV_LOOP, .u.loop = lp});
      unpack_assign(c, lf, n->targets, n->ntargets, items->v[i], n->line);
      /* each iteration needs its own loop object for closures over loop */
      exec(c, lf, n->c);
      jloop *next_lp = mx__jarena_alloc(c->a, sizeof *next_lp);
      if (!next_lp) {
        oom(c);
        break;
      }
      next_lp->items = items;
      lp = next_lp;
      if (c->ctl == CTL_BREAK) {
        c->ctl = CTL_NONE;
        break;
      }
      c->ctl = CTL_NONE;
    }
    if (!items->n && n->d) exec(c, f, n->d);
    break;
  }
  case N_BREAK: c->ctl = CTL_BREAK; break;
  case N_CONTINUE: c->ctl = CTL_CONTINUE; break;
  case N_SET: {
    jv v = eval(c, f, n->a);
    if (c->status) break;
    if (n->c) { /* ns.attr = v */
      jv *ns = lookup(f, n->name);
      if (!ns || ns->t != JV_NS) {
        rerr(c, n->line, "cannot assign attribute on non-namespace object '%s'", n->name);
        break;
      }
      if (mx__jv_dict_set(c->a, ns->u.d, mx__jv_cstr(c->a, n->c->name), v)) oom(c);
    } else {
      unpack_assign(c, f, n->targets, n->ntargets, v, n->line);
    }
    break;
  }
  case N_SET_BLOCK: {
    mx__buf *saved = c->out, body = {0};
    c->out = &body;
    exec(c, f, n->b);
    c->out = saved;
    jv v = buf_to_str(c, &body);
    if (!c->status) assign(c, f, n->targets[0], v);
    break;
  }
  case N_MACRO: {
    jmacro *m = mx__jarena_alloc(c->a, sizeof *m);
    if (!m) {
      oom(c);
      break;
    }
    m->node = n;
    m->closure = f;
    assign(c, f, n->name, (jv){.t = JV_MACRO, .u.mac = m});
    break;
  }
  case N_FILTER_BLOCK: {
    mx__buf *saved = c->out, body = {0};
    c->out = &body;
    exec(c, f, n->b);
    c->out = saved;
    jv v = buf_to_str(c, &body);
    args_t a;
    if (!c->status && eval_args(c, f, n, &a)) {
      jv r = apply_filter(c, f, n->name, v, &a, n->line);
      if (!c->status) mx__jv_str_append(c->out, r);
    }
    break;
  }
  default: rerr(c, n->line, "not a statement"); break;
  }
}

int mx__jinja_render(const jtemplate *t, jarena *a, jv vars, mx__buf *out, char *err, size_t errlen) {
  ctx c = {.a = a, .out = out, .err = err, .errlen = errlen};
  err[0] = 0;
  frame *globals = new_frame(&c, NULL);
  if (!globals) return c.status;
  if (vars.t == JV_DICT) globals->vars = *vars.u.d;
  frame *top = new_frame(&c, globals); /* template-level `set`s go here */
  if (!top) return c.status;
  exec(&c, top, t->root);
  if (!c.status && out->oom) oom(&c);
  return c.status;
}
