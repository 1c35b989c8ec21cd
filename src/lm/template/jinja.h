/* jinja.h — the Jinja subset used by chat templates (internal).
 *
 * jinja_value.c: arena, values, JSON in/out, Python str()/repr()
 * jinja_parse.c: lexer (trim_blocks, lstrip_blocks, whitespace control) and
 *                parser to an AST
 * jinja_eval.c:  evaluator, filters, tests, methods, globals
 * Semantics follow jinja2 as transformers configures it (sandboxed and
 * immutable, trim_blocks, lstrip_blocks, loopcontrols, a tojson that keeps
 * non-ASCII, raise_exception, strftime_now). */
#ifndef MXC_JINJA_H
#define MXC_JINJA_H

#include "internal.h"
#include "lm/tokenizer/tok_internal.h" /* mx__buf, UTF-8 helpers */

#include <stdint.h>

/* ---- arena ------------------------------------------------------------------ */
typedef struct jarena_chunk jarena_chunk;
typedef struct {
  jarena_chunk *head;
  size_t used, total, limit; /* limit: bytes before allocation fails (0 = none) */
  int oom;
} jarena;
void *mx__jarena_alloc(jarena *a, size_t n); /* zeroed; NULL when over the limit */
void mx__jarena_free(jarena *a);

/* ---- values -------------------------------------------------------------------- */
typedef enum {
  JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
  JV_NS,     /* namespace(): a mutable dict */
  JV_FUNC,   /* global function (name) */
  JV_METHOD, /* bound method: obj + name */
  JV_MACRO,
  JV_LOOP
} jtype;

typedef struct jstr {
  size_t n;
  char p[]; /* NUL-terminated */
} jstr;
typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jmethod jmethod;
typedef struct jmacro jmacro;
typedef struct jloop jloop;

typedef struct {
  jtype t;
  union {
    bool b;
    int64_t i;
    double f;
    jstr *s;
    jlist *l;
    jdict *d;
    const char *fn;
    jmethod *m;
    jmacro *mac;
    jloop *loop;
  } u;
  const char *undef_name; /* for JV_UNDEF: what was undefined (for messages) */
} jv;

struct jlist {
  size_t n, cap;
  jv *v;
  bool tuple; /* prints as (a, b) */
};
struct jdict {
  size_t n, cap;
  jv *k, *v;
};
struct jmethod {
  jv obj;
  const char *name;
};

static inline jv jv_undef(void) { return (jv){.t = JV_UNDEF}; }
static inline jv jv_none(void) { return (jv){.t = JV_NONE}; }
static inline jv jv_bool(bool b) { return (jv){.t = JV_BOOL, .u.b = b}; }
static inline jv jv_int(int64_t i) { return (jv){.t = JV_INT, .u.i = i}; }
static inline jv jv_float(double f) { return (jv){.t = JV_FLOAT, .u.f = f}; }

jv mx__jv_str(jarena *a, const char *s, size_t n); /* t == JV_UNDEF on OOM */
jv mx__jv_cstr(jarena *a, const char *s);
jv mx__jv_list(jarena *a);
jv mx__jv_dict(jarena *a, jtype t); /* JV_DICT or JV_NS */
int mx__jv_list_push(jarena *a, jlist *l, jv v);
int mx__jv_dict_set(jarena *a, jdict *d, jv k, jv v);
jv *mx__jv_dict_get(const jdict *d, jv k);
jv *mx__jv_dict_gets(const jdict *d, const char *key, size_t n);

bool mx__jv_truthy(jv v);
bool mx__jv_equal(jv a, jv b);
/* Python ordering; *ok false when the types do not compare. */
int mx__jv_compare(jv a, jv b, bool *ok);
const char *mx__jv_type_name(jv v);

/* Python str() / repr() appended to b. */
void mx__jv_str_append(mx__buf *b, jv v);
void mx__jv_repr_append(mx__buf *b, jv v);
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys).
 * indent: NULL for none, else the indent string. Returns 0 or an error. */
int mx__jv_tojson(mx__buf *b, jv v, const char *indent, const char *item_sep, const char *key_sep,
              bool sort_keys, int depth);
/* Parse JSON text into values (ints stay ints, key order kept). */
int mx__jv_from_json(jarena *a, const char *s, size_t n, jv *out, char *err, size_t errlen);

/* ---- AST ------------------------------------------------------------------------ */
typedef enum {
  /* statements */
  N_BLOCK, N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_BLOCK, N_MACRO, N_BREAK, N_CONTINUE,
  N_CALL_BLOCK, N_FILTER_BLOCK,
  /* expressions */
  N_LIT, N_NAME, N_LIST, N_TUPLE, N_DICT, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST,
  N_UNARY, N_BINARY, N_AND, N_OR, N_NOT, N_COND, N_COMPARE
} nkind;

typedef struct jnode jnode;
struct jnode {
  nkind kind;
  int line;
  int op;          /* operator token for unary/binary/compare; negate for tests */
  const char *name; /* NAME, ATTR, FILTER, TEST, SET target, MACRO name */
  jv lit;
  jnode *a, *b, *c, *d; /* children (meaning depends on kind) */
  jnode **items;         /* BLOCK statements, call args, list items, ... */
  int n;
  const char **kwnames; /* call kwargs / macro params */
  jnode **kwvals;
  int nkw;
  const char **targets; /* FOR / SET targets */
  int ntargets;
};

typedef struct {
  jarena arena;
  jnode *root;
  char err[512];
} jtemplate;

/* Parse source; on failure returns an MX_ERR_* status with t->err set
 * ("line N: ..."). */
int mx__jinja_parse(jtemplate *t, const char *src, size_t n);
/* Render with the global variables in vars (a JV_DICT). */
int mx__jinja_render(const jtemplate *t, jarena *a, jv vars, mx__buf *out, char *err, size_t errlen);

#endif
