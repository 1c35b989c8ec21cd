/* module.c — the module tree: parameters, children and lists of modules,
 * dotted paths (MLX's tree_flatten names) with suggestions on mistakes,
 * flat parameter maps, freezing, strict updates, weights files and
 * value_and_grad over a model (see mxc/nn.h). */
#include "nn_internal.h"

#include <ctype.h>
#include <stdarg.h>

/* ==== strings ============================================================== */
void mx__nn_str_add(mx__nn_str *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (b->len + (size_t)n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 64;
    while (nc < b->len + (size_t)n + 1) nc *= 2;
    char *s = realloc(b->s, nc);
    if (!s) return; /* the message is truncated; nothing else depends on it */
    b->s = s;
    b->cap = nc;
  }
  va_start(ap, fmt);
  vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}
void mx__nn_str_cat(mx__nn_str *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 64;
    while (nc < b->len + n + 1) nc *= 2;
    char *p = realloc(b->s, nc);
    if (!p) return; /* truncated, as mx__nn_str_add */
    b->s = p;
    b->cap = nc;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}
void mx__nn_str_free(mx__nn_str *b) {
  free(b->s);
  *b = (mx__nn_str){0};
}
static const char *str_c(const mx__nn_str *b) { return b->s ? b->s : ""; }

int mx__nn_split_key(mx_array *key, int n, mx_array **out) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  mx_array *ks = mx_random_split(key, n);
  if (!ks) return mx_last_status();
  for (int i = 0; i < n; i++) {
    mx_array *row = mx_slice_axis(ks, 0, i, i + 1, 1);
    out[i] = mx_reshape(row, (int64_t[]){2}, 1);
    mx_array_free(row);
    if (!out[i]) {
      mx__nn_free_n(out, i);
      mx_array_free(ks);
      return mx_last_status();
    }
  }
  mx_array_free(ks);
  return MX_OK;
}

/* ==== the tree =============================================================== */
typedef enum { ENT_PARAM, ENT_CHILD, ENT_LIST } ent_kind;
typedef struct {
  char *name;
  ent_kind kind;
  mx_array *param; /* ENT_PARAM */
  bool frozen;
  mx_nn_module *child; /* ENT_CHILD */
  mx_nn_module **items; /* ENT_LIST */
  int nitems, citems;
} entry;

struct mx__nn_tree {
  entry *e;
  int n, cap;
};

mx_nn_module *mx_nn_module_new(const mx_nn_module_vtable *vt, size_t size) {
  if (!vt || size < sizeof(mx_nn_module)) {
    mx__set_error(MX_ERR_INVALID_ARG, "nn: module_new needs a vtable and size >= sizeof(mx_nn_module)");
    return NULL;
  }
  mx_nn_module *m = calloc(1, size);
  struct mx__nn_tree *t = calloc(1, sizeof *t);
  if (!m || !t) {
    free(m);
    free(t);
    mx__set_error(MX_ERR_OOM, "nn: out of memory");
    return NULL;
  }
  m->vtable = vt;
  m->tree = t;
  m->refcount = 1;
  m->training = true;
  return m;
}

mx_nn_module *mx_nn_module_retain(mx_nn_module *m) {
  if (m) __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED);
  return m;
}

static void entry_clear(entry *e) {
  free(e->name);
  mx_array_free(e->param);
  mx_nn_module_free(e->child);
  for (int i = 0; i < e->nitems; i++) mx_nn_module_free(e->items[i]);
  free(e->items);
  memset(e, 0, sizeof *e);
}

void mx_nn_module_free(mx_nn_module *m) {
  if (!m) return;
  if (__atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (m->vtable && m->vtable->destroy) m->vtable->destroy(m);
  if (m->tree) {
    for (int i = 0; i < m->tree->n; i++) entry_clear(&m->tree->e[i]);
    free(m->tree->e);
    free(m->tree);
  }
  free(m);
}

const char *mx_nn_module_type(const mx_nn_module *m) {
  return m && m->vtable && m->vtable->name ? m->vtable->name : "Module";
}

mx_array *mx_nn_forward_n(mx_nn_module *m, mx_array *const *inputs, int n) {
  if (!m) {
    if (!mx_last_status()) mx__set_error(MX_ERR_INVALID_ARG, "nn: forward of a NULL module");
    return NULL;
  }
  if (!m->vtable->forward) {
    mx__set_error(MX_ERR_UNSUPPORTED, "nn: %s cannot be called (no forward)", mx_nn_module_type(m));
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (!inputs[i]) {
      if (!mx_last_status())
        mx__set_error(MX_ERR_INVALID_ARG, "nn: %s: input %d is NULL", mx_nn_module_type(m), i);
      return NULL;
    }
  return m->vtable->forward(m, inputs, n);
}

mx_array *mx_nn_forward(mx_nn_module *m, mx_array *x) { return mx_nn_forward_n(m, &x, 1); }

static entry *find_entry(const mx_nn_module *m, const char *name) {
  if (!m || !m->tree) return NULL;
  for (int i = 0; i < m->tree->n; i++)
    if (!strcmp(m->tree->e[i].name, name)) return &m->tree->e[i];
  return NULL;
}

static int check_name(const char *op, const char *name) {
  if (!name || !*name || strchr(name, '.'))
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: %s: invalid name \"%s\" (empty or contains '.')",
                         op, name ? name : "(null)");
  return MX_OK;
}

/* A new entry (or the existing one, cleared except its name). */
static entry *entry_slot(mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name);
  if (e) {
    char *keep = e->name;
    e->name = NULL;
    entry_clear(e);
    e->name = keep;
    return e;
  }
  struct mx__nn_tree *t = m->tree;
  if (t->n == t->cap) {
    int nc = t->cap ? 2 * t->cap : 8;
    entry *v = realloc(t->e, sizeof *v * (size_t)nc);
    if (!v) return NULL;
    t->e = v;
    t->cap = nc;
  }
  e = &t->e[t->n];
  memset(e, 0, sizeof *e);
  e->name = strdup(name);
  if (!e->name) return NULL;
  t->n++;
  return e;
}

int mx_nn_add_param(mx_nn_module *m, const char *name, mx_array *a) {
  int st;
  if (!a) {
    st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "nn: add_param \"%s\": array is NULL", name ? name : "");
  }
  if (!m) {
    mx_array_free(a);
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: add_param: module is NULL");
  }
  if ((st = check_name("add_param", name))) {
    mx_array_free(a);
    return st;
  }
  entry *old = find_entry(m, name);
  if (old && old->kind == ENT_PARAM) { /* keep the frozen flag */
    mx_array_free(old->param);
    old->param = a;
    return MX_OK;
  }
  entry *e = entry_slot(m, name);
  if (!e) {
    mx_array_free(a);
    return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  }
  e->kind = ENT_PARAM;
  e->param = a;
  return MX_OK;
}

int mx_nn_add_child(mx_nn_module *m, const char *name, mx_nn_module *child) {
  int st;
  if (!child) {
    st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "nn: add_child \"%s\": module is NULL", name ? name : "");
  }
  if (!m || child == m) {
    mx_nn_module_free(child);
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: add_child: invalid parent");
  }
  if ((st = check_name("add_child", name))) {
    mx_nn_module_free(child);
    return st;
  }
  entry *e = entry_slot(m, name);
  if (!e) {
    mx_nn_module_free(child);
    return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  }
  e->kind = ENT_CHILD;
  e->child = child;
  return MX_OK;
}

int mx_nn_add_list(mx_nn_module *m, const char *name) {
  int st;
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "nn: add_list: module is NULL");
  if ((st = check_name("add_list", name))) return st;
  entry *e = find_entry(m, name);
  if (e && e->kind == ENT_LIST) return MX_OK;
  e = entry_slot(m, name);
  if (!e) return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  e->kind = ENT_LIST;
  return MX_OK;
}

int mx_nn_list_append(mx_nn_module *m, const char *name, mx_nn_module *child) {
  int st;
  if (!child) {
    st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "nn: list_append \"%s\": module is NULL", name ? name : "");
  }
  if ((st = mx_nn_add_list(m, name))) {
    mx_nn_module_free(child);
    return st;
  }
  entry *e = find_entry(m, name);
  if (e->nitems == e->citems) {
    int nc = e->citems ? 2 * e->citems : 8;
    mx_nn_module **v = realloc(e->items, sizeof *v * (size_t)nc);
    if (!v) {
      mx_nn_module_free(child);
      return mx__set_error(MX_ERR_OOM, "nn: out of memory");
    }
    e->items = v;
    e->citems = nc;
  }
  e->items[e->nitems++] = child;
  return MX_OK;
}

int mx_nn_remove(mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name ? name : "");
  if (!e) return mx__set_error(MX_ERR_NOT_FOUND, "nn: %s has no entry \"%s\"", mx_nn_module_type(m), name ? name : "");
  struct mx__nn_tree *t = m->tree;
  int i = (int)(e - t->e);
  entry_clear(e);
  memmove(&t->e[i], &t->e[i + 1], sizeof *t->e * (size_t)(t->n - i - 1));
  t->n--;
  return MX_OK;
}

mx_array *mx_nn_param(const mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name ? name : "");
  if (!e || e->kind != ENT_PARAM) {
    mx__set_error(MX_ERR_NOT_FOUND, "nn: %s has no parameter \"%s\"", mx_nn_module_type(m), name ? name : "");
    return NULL;
  }
  return e->param;
}
bool mx_nn_has_param(const mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name ? name : "");
  return e && e->kind == ENT_PARAM;
}
mx_nn_module *mx_nn_child(const mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name ? name : "");
  if (!e || e->kind != ENT_CHILD) {
    mx__set_error(MX_ERR_NOT_FOUND, "nn: %s has no child \"%s\"", mx_nn_module_type(m), name ? name : "");
    return NULL;
  }
  return e->child;
}
int mx_nn_list_size(const mx_nn_module *m, const char *name) {
  entry *e = find_entry(m, name ? name : "");
  return e && e->kind == ENT_LIST ? e->nitems : -1;
}
mx_nn_module *mx_nn_list_item(const mx_nn_module *m, const char *name, int i) {
  entry *e = find_entry(m, name ? name : "");
  if (!e || e->kind != ENT_LIST) {
    mx__set_error(MX_ERR_NOT_FOUND, "nn: %s has no list \"%s\"", mx_nn_module_type(m), name ? name : "");
    return NULL;
  }
  if (i < 0 || i >= e->nitems) {
    mx__set_error(MX_ERR_RANGE, "nn: index %d out of range for list \"%s\" (%d items)", i, name, e->nitems);
    return NULL;
  }
  return e->items[i];
}

/* ==== walking the tree ======================================================== */
/* Visits every module (pre-order) and parameter. `path` is the dotted
 * path of the module (or parameter), "" for the root. */
typedef struct walker {
  int (*on_module)(struct walker *w, const char *path, mx_nn_module *m, bool is_list);
  int (*on_param)(struct walker *w, const char *path, entry *e);
  void *ctx;
} walker;

static int walk(walker *w, mx_nn_module *m, mx__nn_str *path) {
  int st = MX_OK;
  if (w->on_module && (st = w->on_module(w, str_c(path), m, false))) return st;
  size_t base = path->len;
  for (int i = 0; i < m->tree->n && !st; i++) {
    entry *e = &m->tree->e[i];
    path->len = base;
    if (path->s) path->s[base] = 0;
    /* paths are built for every parameter of every walk (a training step
     * walks the tree several times): appended without formatting */
    if (base) mx__nn_str_cat(path, ".", 1);
    mx__nn_str_cat(path, e->name, strlen(e->name));
    if (e->kind == ENT_PARAM) {
      if (w->on_param) st = w->on_param(w, str_c(path), e);
    } else if (e->kind == ENT_CHILD) {
      st = walk(w, e->child, path);
    } else {
      if (w->on_module) st = w->on_module(w, str_c(path), NULL, true);
      size_t lb = path->len;
      for (int j = 0; j < e->nitems && !st; j++) {
        path->len = lb;
        path->s[lb] = 0;
        char num[16];
        int nn = 0;
        num[nn++] = '.';
        char rev[12];
        int nr = 0;
        for (unsigned v = (unsigned)j; nr == 0 || v; v /= 10) rev[nr++] = (char)('0' + v % 10);
        while (nr) num[nn++] = rev[--nr];
        mx__nn_str_cat(path, num, (size_t)nn);
        st = walk(w, e->items[j], path);
      }
    }
  }
  path->len = base;
  if (path->s) path->s[base] = 0;
  return st;
}

static int walk_tree(walker *w, const mx_nn_module *m) {
  mx__nn_str path = {0};
  mx__nn_str_add(&path, "%s", "");
  int st = walk(w, (mx_nn_module *)m, &path);
  mx__nn_str_free(&path);
  return st;
}

/* ---- every path, for suggestions ---------------------------------------------- */
typedef struct {
  char **v;
  int n, cap;
} strvec;
static void strvec_push(strvec *s, const char *p) {
  if (s->n == s->cap) {
    int nc = s->cap ? 2 * s->cap : 64;
    char **v = realloc(s->v, sizeof *v * (size_t)nc);
    if (!v) return;
    s->v = v;
    s->cap = nc;
  }
  char *d = strdup(p);
  if (d) s->v[s->n++] = d;
}
static void strvec_free(strvec *s) {
  for (int i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  *s = (strvec){0};
}
static int collect_module(walker *w, const char *path, mx_nn_module *m, bool is_list) {
  if (*path) strvec_push(w->ctx, path);
  return MX_OK;
}
static int collect_param(walker *w, const char *path, entry *e) {
  strvec_push(w->ctx, path);
  return MX_OK;
}

static int levenshtein(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > 256 || nb > 256) return 1 << 20;
  int row[257];
  for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= na; i++) {
    int prev = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= nb; j++) {
      int cur = row[j];
      int sub = prev + (a[i - 1] != b[j - 1]);
      int v = MX_MIN(row[j] + 1, row[j - 1] + 1);
      row[j] = MX_MIN(v, sub);
      prev = cur;
    }
  }
  return row[nb];
}

/* s ends with "." + suffix (or equals suffix). */
static bool ends_with_segments(const char *s, const char *suffix) {
  size_t ns = strlen(s), nf = strlen(suffix);
  if (nf > ns) return false;
  if (strcmp(s + ns - nf, suffix)) return false;
  return nf == ns || s[ns - nf - 1] == '.';
}

/* Appends "; did you mean "a", "b"?" for the requested path. */
static void add_suggestions(mx__nn_str *msg, const mx_nn_module *root, const char *want) {
  strvec all = {0};
  walker w = {collect_module, collect_param, &all};
  walk_tree(&w, root);
  enum { K = 3 };
  const char *best[K] = {0};
  int score[K];
  int nbest = 0;
  int limit = MX_MAX(2, (int)strlen(want) / 4);
  for (int i = 0; i < all.n; i++) {
    const char *p = all.v[i];
    int sc;
    if (ends_with_segments(p, want)) {
      sc = (int)strlen(p) - (int)strlen(want); /* extra prefix: shorter is better */
    } else if (ends_with_segments(want, p) && strchr(p, '.')) {
      sc = 1000 + (int)strlen(want) - (int)strlen(p); /* a surplus prefix */
    } else {
      int d = levenshtein(p, want);
      if (d > limit) continue;
      sc = 2000 + d;
    }
    int pos = nbest;
    while (pos > 0 && score[pos - 1] > sc) pos--;
    if (pos >= K) continue;
    for (int j = MX_MIN(nbest, K - 1); j > pos; j--) {
      best[j] = best[j - 1];
      score[j] = score[j - 1];
    }
    best[pos] = p;
    score[pos] = sc;
    if (nbest < K) nbest++;
  }
  for (int i = 0; i < nbest; i++)
    mx__nn_str_add(msg, "%s\"%s\"", i ? ", " : "; did you mean ", best[i]);
  if (nbest) mx__nn_str_add(msg, "?");
  strvec_free(&all);
}

static void list_children(mx__nn_str *msg, const mx_nn_module *m) {
  mx__nn_str_add(msg, " (");
  if (!m->tree->n) mx__nn_str_add(msg, "it has no entries");
  for (int i = 0; i < m->tree->n && i < 12; i++) {
    entry *e = &m->tree->e[i];
    mx__nn_str_add(msg, "%s%s%s", i ? ", " : "entries: ", e->name,
                   e->kind == ENT_LIST ? "[]" : "");
  }
  if (m->tree->n > 12) mx__nn_str_add(msg, ", ... %d more", m->tree->n - 12);
  mx__nn_str_add(msg, ")");
}

/* Resolves a path. Exactly one of out_module / out_param target is found;
 * on failure sets an error naming the missing segment with suggestions.
 * parent/slot (optional) give where a module sits (for replace). */
typedef struct {
  mx_nn_module *module; /* the module at path (NULL if a param/list) */
  entry *param;         /* the parameter entry at path */
  mx_nn_module *parent; /* the module holding the last segment */
  entry *slot;          /* the entry of the last segment */
  int index;            /* list index of the last segment, or -1 */
} resolved;

/* Suggestions cost a walk of the whole tree: callers that only test
 * membership (update checks, set_params) turn them off. */
static _Thread_local bool tl_quiet;

static int resolve(const mx_nn_module *root, const char *path, const char *what, resolved *r) {
  memset(r, 0, sizeof *r);
  r->index = -1;
  if (!root) return mx__set_error(MX_ERR_INVALID_ARG, "nn: module is NULL");
  if (!path) path = "";
  mx_nn_module *cur = (mx_nn_module *)root;
  r->module = cur;
  if (!*path) return MX_OK;
  const char *seg = path;
  entry *list = NULL; /* set when the previous segment named a list */
  int st = MX_OK;
  while (seg) {
    const char *dot = strchr(seg, '.');
    size_t len = dot ? (size_t)(dot - seg) : strlen(seg);
    char name[256];
    if (len == 0 || len >= sizeof name) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "nn: invalid %s path \"%s\"", what, path);
      break;
    }
    memcpy(name, seg, len);
    name[len] = 0;
    const char *why = NULL;
    mx__nn_str msg = {0};
    /* the segments resolved so far (for messages): path's prefix before
     * this one */
    const int dn = seg > path ? (int)(seg - path - 1) : 0;
    if (list) {
      char *end;
      long idx = strtol(name, &end, 10);
      if (*end || !isdigit((unsigned char)name[0])) {
        mx__nn_str_add(&msg, "nn: no %s \"%s\": \"%.*s\" is a list; \"%s\" is not an index", what,
                       path, dn, path, name);
        why = "";
      } else if (idx >= list->nitems) {
        mx__nn_str_add(&msg, "nn: no %s \"%s\": index %ld out of range for \"%.*s\" (%d items)",
                       what, path, idx, dn, path, list->nitems);
        why = "";
      } else {
        r->parent = cur;
        r->slot = list;
        r->index = (int)idx;
        cur = list->items[idx];
        r->module = cur;
        r->param = NULL;
        list = NULL;
      }
    } else if (!cur) {
      mx__nn_str_add(&msg, "nn: no %s \"%s\": \"%.*s\" is a parameter", what, path, dn, path);
      why = "";
    } else {
      entry *e = find_entry(cur, name);
      if (!e) {
        mx__nn_str_add(&msg, "nn: no %s \"%s\": \"%.*s\" (%s) has no entry \"%s\"", what, path,
                       dn, path, mx_nn_module_type(cur), name);
        list_children(&msg, cur);
        why = "";
      } else {
        r->parent = cur;
        r->slot = e;
        r->index = -1;
        if (e->kind == ENT_PARAM) {
          r->param = e;
          r->module = NULL;
          cur = NULL;
        } else if (e->kind == ENT_CHILD) {
          cur = e->child;
          r->module = cur;
        } else {
          list = e;
          r->module = NULL;
        }
      }
    }
    if (why) {
      if (!tl_quiet) add_suggestions(&msg, root, path);
      st = mx__set_error(MX_ERR_NOT_FOUND, "%s", str_c(&msg));
      mx__nn_str_free(&msg);
      break;
    }
    seg = dot ? dot + 1 : NULL;
    if (dot && !dot[1]) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "nn: invalid %s path \"%s\"", what, path);
      break;
    }
  }
  if (st) memset(r, 0, sizeof *r);
  return st;
}

mx_nn_module *mx_nn_get(const mx_nn_module *m, const char *path) {
  resolved r;
  if (resolve(m, path, "module", &r)) return NULL;
  if (!r.module) {
    mx__set_error(MX_ERR_NOT_FOUND, "nn: \"%s\" is a %s, not a module", path,
                  r.param ? "parameter" : "list (add an index)");
    return NULL;
  }
  return r.module;
}

mx_array *mx_nn_get_param(const mx_nn_module *m, const char *path) {
  resolved r;
  if (resolve(m, path, "parameter", &r)) return NULL;
  if (!r.param) {
    mx__set_error(MX_ERR_NOT_FOUND, "nn: \"%s\" is a module, not a parameter", path);
    return NULL;
  }
  return r.param->param;
}

int mx_nn_replace(mx_nn_module *m, const char *path, mx_nn_module *child) {
  int st;
  if (!child) {
    st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "nn: replace \"%s\": module is NULL", path ? path : "");
  }
  resolved r;
  if ((st = resolve(m, path, "module", &r))) {
    mx_nn_module_free(child);
    return st;
  }
  if (!r.slot || r.param || (!r.module)) {
    mx_nn_module_free(child);
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: replace: \"%s\" is not a child module", path ? path : "");
  }
  if (r.index >= 0) {
    mx_nn_module *old = r.slot->items[r.index];
    r.slot->items[r.index] = child;
    mx_nn_module_free(old);
  } else {
    mx_nn_module *old = r.slot->child;
    r.slot->child = child;
    mx_nn_module_free(old);
  }
  return MX_OK;
}

/* ---- named modules ---------------------------------------------------------- */
static bool has_child_modules(const mx_nn_module *m) {
  for (int i = 0; i < m->tree->n; i++)
    if (m->tree->e[i].kind == ENT_CHILD || (m->tree->e[i].kind == ENT_LIST && m->tree->e[i].nitems))
      return true;
  return false;
}

typedef struct {
  mx_nn_modules *out;
  bool leaves;
  int cap;
} named_ctx;

static int named_module(walker *w, const char *path, mx_nn_module *m, bool is_list) {
  named_ctx *c = w->ctx;
  if (is_list || (c->leaves && has_child_modules(m))) return MX_OK;
  mx_nn_modules *o = c->out;
  if (o->size == c->cap) {
    int nc = c->cap ? 2 * c->cap : 16;
    char **p = realloc(o->paths, sizeof *p * (size_t)nc);
    if (p) o->paths = p;
    mx_nn_module **v = realloc(o->modules, sizeof *v * (size_t)nc);
    if (v) o->modules = v;
    if (!p || !v) return mx__set_error(MX_ERR_OOM, "nn: out of memory");
    c->cap = nc;
  }
  char *d = strdup(path);
  if (!d) return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  o->paths[o->size] = d;
  o->modules[o->size++] = mx_nn_module_retain(m);
  return MX_OK;
}

int mx_nn_named_modules(mx_nn_module *m, bool leaves_only, mx_nn_modules *out) {
  if (!m || !out) return mx__set_error(MX_ERR_INVALID_ARG, "nn: named_modules: NULL argument");
  *out = (mx_nn_modules)MX_NN_MODULES_INIT;
  named_ctx c = {out, leaves_only, 0};
  walker w = {named_module, NULL, &c};
  int st = walk_tree(&w, m);
  if (st) mx_nn_modules_clear(out);
  return st;
}

void mx_nn_modules_clear(mx_nn_modules *l) {
  if (!l) return;
  for (int i = 0; i < l->size; i++) {
    free(l->paths[i]);
    mx_nn_module_free(l->modules[i]);
  }
  free(l->paths);
  free(l->modules);
  *l = (mx_nn_modules)MX_NN_MODULES_INIT;
}

/* ==== parameters ============================================================== */
typedef struct {
  mx_map *map;
  bool trainable;
  int64_t count;
} params_ctx;

static int params_visit(walker *w, const char *path, entry *e) {
  params_ctx *c = w->ctx;
  if (c->trainable && e->frozen) return MX_OK;
  if (!c->map) {
    c->count += mx_array_size(e->param);
    return MX_OK;
  }
  return mx_map_set(c->map, path, e->param);
}

static int get_params(const mx_nn_module *m, bool trainable, mx_map **out) {
  if (!out) return mx__set_error(MX_ERR_INVALID_ARG, "nn: parameters: out is NULL");
  *out = NULL;
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "nn: parameters: module is NULL");
  params_ctx c = {mx_map_new(), trainable, 0};
  if (!c.map) return mx_last_status();
  walker w = {NULL, params_visit, &c};
  int st = walk_tree(&w, m);
  if (st) {
    mx_map_free(c.map);
    return st;
  }
  *out = c.map;
  return MX_OK;
}

int mx_nn_parameters(const mx_nn_module *m, mx_map **out) { return get_params(m, false, out); }
int mx_nn_trainable_parameters(const mx_nn_module *m, mx_map **out) { return get_params(m, true, out); }

int64_t mx_nn_num_parameters(const mx_nn_module *m, bool trainable_only) {
  if (!m) return 0;
  params_ctx c = {NULL, trainable_only, 0};
  walker w = {NULL, params_visit, &c};
  walk_tree(&w, m);
  return c.count;
}

/* ---- update ----------------------------------------------------------------- */
static void shape_str(mx_array *a, char *buf, size_t n) { mx_array_describe(a, buf, n); }

/* Up to `max` names of a list, then "... and N more". */
static void add_names(mx__nn_str *msg, const char *what, const char *plural, strvec *v) {
  if (!v->n) return;
  mx__nn_str_add(msg, "%s%d %s: ", msg->len ? "; " : "", v->n, v->n == 1 ? what : plural);
  for (int i = 0; i < v->n && i < 10; i++) mx__nn_str_add(msg, "%s%s", i ? ", " : "", v->v[i]);
  if (v->n > 10) mx__nn_str_add(msg, ", ... and %d more", v->n - 10);
}

typedef struct {
  const mx_map *given;
  strvec missing;
} missing_ctx;
static int missing_visit(walker *w, const char *path, entry *e) {
  missing_ctx *c = w->ctx;
  if (!mx_map_has(c->given, path)) strvec_push(&c->missing, path);
  return MX_OK;
}

/* Checks a map against the model. check_dtype: dtype mismatches are errors. */
static int check_update(const mx_nn_module *m, const mx_map *params, bool require_all,
                        bool check_dtype, const char *op) {
  strvec unknown = {0}, mismatch = {0};
  missing_ctx mc = {params, {0}};
  mx__nn_str msg = {0};
  int st = MX_OK;
  int first_unknown = -1;
  for (int i = 0; i < mx_map_size(params); i++) {
    const char *k = mx_map_key(params, i);
    resolved r;
    tl_quiet = true;
    int bad_key = resolve(m, k, "parameter", &r) || !r.param;
    tl_quiet = false;
    if (bad_key) {
      strvec_push(&unknown, k);
      if (first_unknown < 0) first_unknown = i;
      continue;
    }
    mx_array *have = r.param->param, *give = mx_map_value(params, i);
    bool bad = mx_array_ndim(have) != mx_array_ndim(give) ||
               memcmp(mx_array_shape(have), mx_array_shape(give),
                      sizeof(int64_t) * (size_t)mx_array_ndim(have)) ||
               (check_dtype && mx_array_dtype(have) != mx_array_dtype(give));
    if (bad) {
      char a[96], b[96], line[256];
      shape_str(have, a, sizeof a);
      shape_str(give, b, sizeof b);
      snprintf(line, sizeof line, "%s (model %s vs given %s)", k, a, b);
      strvec_push(&mismatch, line);
    }
  }
  if (require_all) {
    walker w = {NULL, missing_visit, &mc};
    walk_tree(&w, m);
  }
  if (unknown.n || mismatch.n || mc.missing.n) {
    add_names(&msg, "unknown key", "unknown keys", &unknown);
    if (unknown.n) add_suggestions(&msg, m, mx_map_key(params, first_unknown));
    add_names(&msg, "missing key", "missing keys", &mc.missing);
    add_names(&msg, check_dtype ? "shape/dtype mismatch" : "shape mismatch",
              check_dtype ? "shape/dtype mismatches" : "shape mismatches", &mismatch);
    st = mx__set_error(unknown.n || mc.missing.n ? MX_ERR_NOT_FOUND : MX_ERR_SHAPE, "nn: %s: %s", op,
                       str_c(&msg));
  }
  strvec_free(&unknown);
  strvec_free(&mismatch);
  strvec_free(&mc.missing);
  mx__nn_str_free(&msg);
  return st;
}

/* Sets every key that names a parameter (others ignored). */
static int set_params(mx_nn_module *m, const mx_map *params) {
  tl_quiet = true;
  for (int i = 0; i < mx_map_size(params); i++) {
    resolved r;
    if (resolve(m, mx_map_key(params, i), "parameter", &r) || !r.param) continue;
    mx_array *v = mx_array_retain(mx_map_value(params, i));
    mx_array_free(r.param->param);
    r.param->param = v;
  }
  tl_quiet = false;
  mx_clear_error();
  return MX_OK;
}

int mx__nn_set_params_unchecked(mx_nn_module *m, const mx_map *params) { return set_params(m, params); }

int mx_nn_update(mx_nn_module *m, const mx_map *params, mx_nn_update_mode mode) {
  if (!m || !params) return mx__set_error(MX_ERR_INVALID_ARG, "nn: update: NULL argument");
  for (int i = 0; i < mx_map_size(params); i++)
    if (!mx_map_value(params, i)) return mx__set_error(MX_ERR_INVALID_ARG, "nn: update: NULL value");
  int st;
  if (mode != MX_NN_UPDATE_LOOSE &&
      (st = check_update(m, params, mode == MX_NN_UPDATE_STRICT, true, "update")))
    return st;
  return set_params(m, params);
}

int mx_nn_load_weights_map(mx_nn_module *m, const mx_map *weights, bool strict) {
  if (!m || !weights) return mx__set_error(MX_ERR_INVALID_ARG, "nn: load_weights: NULL argument");
  int st;
  if (strict && (st = check_update(m, weights, true, false, "load_weights"))) return st;
  if (!strict) { /* shapes must still agree for the keys that are loaded */
    mx_map *sub = mx_map_new();
    if (!sub) return mx_last_status();
    tl_quiet = true;
    for (int i = 0; i < mx_map_size(weights); i++) {
      resolved r;
      if (resolve(m, mx_map_key(weights, i), "parameter", &r) || !r.param) continue;
      mx_map_set(sub, mx_map_key(weights, i), mx_map_value(weights, i));
    }
    tl_quiet = false;
    mx_clear_error();
    st = check_update(m, sub, false, false, "load_weights");
    if (!st) set_params(m, sub);
    mx_map_free(sub);
    return st;
  }
  return set_params(m, weights);
}

static bool ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), k = strlen(suf);
  return n >= k && !strcmp(s + n - k, suf);
}

int mx_nn_load_weights(mx_nn_module *m, const char *path, bool strict) {
  if (!m || !path) return mx__set_error(MX_ERR_INVALID_ARG, "nn: load_weights: NULL argument");
  mx_map *w = NULL;
  int st = mx_load(path, &w, NULL);
  if (st) return st;
  st = mx_nn_load_weights_map(m, w, strict);
  if (st) mx__prefix_error("loading %s", path);
  mx_map_free(w);
  return st;
}

int mx_nn_save_weights(const mx_nn_module *m, const char *path) {
  if (!m || !path) return mx__set_error(MX_ERR_INVALID_ARG, "nn: save_weights: NULL argument");
  mx_map *p = NULL;
  int st = mx_nn_parameters(m, &p);
  if (st) return st;
  if (ends_with(path, ".npz"))
    st = mx_save_npz(path, p, false);
  else if (ends_with(path, ".safetensors"))
    st = mx_save_safetensors(path, p, NULL);
  else
    st = mx__set_error(MX_ERR_INVALID_ARG,
                       "nn: save_weights: \"%s\": use a .safetensors or .npz extension", path);
  mx_map_free(p);
  return st;
}

/* ---- freezing ------------------------------------------------------------------ */
typedef struct {
  const char *const *keys;
  int nkeys;
  bool frozen;
  bool *used;
} freeze_ctx;

static void freeze_module(mx_nn_module *m, freeze_ctx *c, bool recurse) {
  for (int i = 0; i < m->tree->n; i++) {
    entry *e = &m->tree->e[i];
    if (e->kind == ENT_PARAM) {
      if (!c->keys) {
        e->frozen = c->frozen;
      } else {
        for (int k = 0; k < c->nkeys; k++)
          if (!strchr(c->keys[k], '.') && !strcmp(c->keys[k], e->name)) {
            e->frozen = c->frozen;
            c->used[k] = true;
          }
      }
    } else if (recurse && e->kind == ENT_CHILD) {
      freeze_module(e->child, c, true);
    } else if (recurse) {
      for (int j = 0; j < e->nitems; j++) freeze_module(e->items[j], c, true);
    }
  }
}

static int set_frozen(mx_nn_module *m, const char *const *keys, int nkeys, bool recurse, bool frozen) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "nn: freeze: module is NULL");
  if (keys && nkeys <= 0) return MX_OK;
  bool used_small[32];
  bool *used = nkeys > 32 ? calloc((size_t)nkeys, sizeof *used) : used_small;
  if (!used) return mx__set_error(MX_ERR_OOM, "nn: out of memory");
  memset(used, 0, sizeof(bool) * (size_t)(keys ? MX_MIN(nkeys, 32) : 0));
  int st = MX_OK;
  /* dotted keys first: they are checked before anything changes */
  for (int k = 0; keys && k < nkeys && !st; k++) {
    if (!keys[k]) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "nn: freeze: key %d is NULL", k);
    } else if (strchr(keys[k], '.')) {
      resolved r;
      if ((st = resolve(m, keys[k], "parameter", &r))) break;
      used[k] = true;
    }
  }
  if (!st) {
    freeze_ctx c = {keys, nkeys, frozen, used};
    freeze_module(m, &c, recurse);
    for (int k = 0; keys && k < nkeys; k++) {
      if (!strchr(keys[k], '.')) continue;
      resolved r;
      resolve(m, keys[k], "parameter", &r);
      if (r.param) {
        r.param->frozen = frozen;
      } else if (r.module) { /* a dotted path to a module: its whole subtree */
        freeze_ctx all = {NULL, 0, frozen, NULL};
        freeze_module(r.module, &all, true);
      }
    }
    for (int k = 0; keys && k < nkeys && !st; k++)
      if (!used[k])
        st = mx__set_error(MX_ERR_NOT_FOUND, "nn: %s: no parameter named \"%s\" in %s",
                           frozen ? "freeze" : "unfreeze", keys[k], mx_nn_module_type(m));
  }
  if (used != used_small) free(used);
  return st;
}

int mx_nn_freeze(mx_nn_module *m, const char *const *keys, int nkeys, bool recurse) {
  return set_frozen(m, keys, nkeys, recurse, true);
}
int mx_nn_unfreeze(mx_nn_module *m, const char *const *keys, int nkeys, bool recurse) {
  return set_frozen(m, keys, nkeys, recurse, false);
}
bool mx_nn_is_frozen(const mx_nn_module *m, const char *path) {
  resolved r;
  if (resolve(m, path, "parameter", &r) || !r.param) return false;
  return r.param->frozen;
}

/* ---- mode and dtype -------------------------------------------------------- */
static int train_visit(walker *w, const char *path, mx_nn_module *m, bool is_list) {
  if (m) m->training = *(bool *)w->ctx;
  return MX_OK;
}
void mx_nn_train(mx_nn_module *m, bool training) {
  if (!m) return;
  walker w = {train_visit, NULL, &training};
  walk_tree(&w, m);
}
void mx_nn_eval(mx_nn_module *m) { mx_nn_train(m, false); }
bool mx_nn_is_training(const mx_nn_module *m) { return m && m->training; }

static int dtype_visit(walker *w, const char *path, entry *e) {
  mx_dtype dt = *(mx_dtype *)w->ctx;
  if (!mx_dtype_is_float(mx_array_dtype(e->param)) || mx_array_dtype(e->param) == dt) return MX_OK;
  mx_array *c = mx_astype(e->param, dt);
  if (!c) return mx_last_status();
  mx_array_free(e->param);
  e->param = c;
  return MX_OK;
}
int mx_nn_set_dtype(mx_nn_module *m, mx_dtype dt) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "nn: set_dtype: module is NULL");
  if ((unsigned)dt >= MX_DTYPE_COUNT || !mx_dtype_is_float(dt))
    return mx__set_error(MX_ERR_DTYPE, "nn: set_dtype: not a floating-point dtype");
  walker w = {NULL, dtype_visit, &dt};
  return walk_tree(&w, m);
}

/* ---- printing -------------------------------------------------------------------- */
static void print_module(const mx_nn_module *m, FILE *f, int indent) {
  char args[256] = "";
  if (m->vtable->describe) m->vtable->describe(m, args, sizeof args);
  if (!has_child_modules(m)) {
    fprintf(f, "%s(%s)", mx_nn_module_type(m), args);
    return;
  }
  fprintf(f, "%s(%s", mx_nn_module_type(m), args);
  for (int i = 0; i < m->tree->n; i++) {
    entry *e = &m->tree->e[i];
    if (e->kind == ENT_CHILD) {
      fprintf(f, "\n%*s(%s): ", indent + 2, "", e->name);
      print_module(e->child, f, indent + 2);
    } else if (e->kind == ENT_LIST) {
      for (int j = 0; j < e->nitems; j++) {
        fprintf(f, "\n%*s(%s.%d): ", indent + 2, "", e->name, j);
        print_module(e->items[j], f, indent + 2);
      }
    }
  }
  fprintf(f, "\n%*s)", indent, "");
}
int mx_nn_print(const mx_nn_module *m, FILE *f) {
  if (!m || !f) return mx__set_error(MX_ERR_INVALID_ARG, "nn: print: NULL argument");
  print_module(m, f, 0);
  fputc('\n', f);
  return MX_OK;
}

/* ==== value_and_grad over a model ==================================================== */
typedef struct {
  mx_nn_module *model;
  mx_nn_loss_fn fn;
  void *payload;
} vg_payload;

static int vg_apply(void *payload, const mx_map *params, mx_array **inputs, int ninputs,
                    mx_list *out) {
  vg_payload *p = payload;
  set_params(p->model, params); /* tracers in place of the trainable parameters */
  return p->fn(p->payload, p->model, inputs, ninputs, out);
}

int mx_nn_value_and_grad(mx_nn_module *model, mx_nn_loss_fn fn, void *payload, mx_array **inputs,
                         int ninputs, mx_list *values, mx_map *grads) {
  if (!model || !fn || !grads)
    return mx__set_error(MX_ERR_INVALID_ARG, "nn: value_and_grad: NULL argument");
  mx_map *params = NULL;
  int st = mx_nn_trainable_parameters(model, &params);
  if (st) return st;
  vg_payload p = {model, fn, payload};
  st = mx_value_and_grad_map(vg_apply, &p, params, inputs, ninputs, values, grads);
  int saved = mx_last_status();
  char msg[2048];
  if (st) snprintf(msg, sizeof msg, "%s", mx_last_error());
  set_params(model, params); /* restore the model's own arrays */
  if (st) mx__set_error(saved ? saved : st, "%s", msg);
  mx_map_free(params);
  return st;
}
