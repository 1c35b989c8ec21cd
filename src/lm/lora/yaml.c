/* yaml.c — mlx-lm's `lora -c config.yaml` files, read with libyaml's
 * document API into mx_lora_options. Every key is checked: an unknown key
 * or a value of the wrong type is an error naming FILE:LINE and the key. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../../core/internal.h"
#include "lora_internal.h"

struct mx_lora_yaml {
  char **strings;
  int n;
};

void mx_lora_yaml_free(mx_lora_yaml *y) {
  if (!y) return;
  for (int i = 0; i < y->n; i++) free(y->strings[i]);
  free(y->strings);
  free(y);
}

typedef struct {
  const char *path;
  yaml_document_t *doc;
  mx_lora_yaml *y;
} ctx;

static int line_of(const yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static int bad(ctx *c, const yaml_node_t *n, const char *key, const char *want) {
  return mx__set_error(MX_ERR_FORMAT, "lora: %s:%d: %s: expected %s", c->path, line_of(n), key, want);
}

static const char *scalar(const yaml_node_t *n) {
  return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static bool is_null(const yaml_node_t *n) {
  const char *s = scalar(n);
  return s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
         (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"));
}

static int get_i64(ctx *c, const yaml_node_t *n, const char *key, int64_t *out) {
  const char *s = scalar(n);
  char *end;
  errno = 0;
  long long v = s ? strtoll(s, &end, 10) : 0;
  if (!s || !*s || errno || *end) return bad(c, n, key, "an integer");
  *out = v;
  return 0;
}

static int get_f64(ctx *c, const yaml_node_t *n, const char *key, double *out) {
  const char *s = scalar(n);
  char *end;
  errno = 0;
  double v = s ? strtod(s, &end) : 0;
  if (!s || !*s || errno || *end || !isfinite(v)) return bad(c, n, key, "a number");
  *out = v;
  return 0;
}

static int get_bool(ctx *c, const yaml_node_t *n, const char *key, bool *out) {
  const char *s = scalar(n);
  static const char *const t[] = {"true", "True", "TRUE", "yes", "Yes", "on"};
  static const char *const f[] = {"false", "False", "FALSE", "no", "No", "off"};
  for (int i = 0; s && i < 6; i++) {
    if (!strcmp(s, t[i])) return *out = true, 0;
    if (!strcmp(s, f[i])) return *out = false, 0;
  }
  return bad(c, n, key, "true or false");
}

/* A string kept alive by the holder; null gives NULL when allow_null. */
static int get_str(ctx *c, const yaml_node_t *n, const char *key, bool allow_null, const char **out) {
  if (allow_null && is_null(n)) return *out = NULL, 0;
  const char *s = scalar(n);
  if (!s) return bad(c, n, key, "a string");
  char **ns = realloc(c->y->strings, (size_t)(c->y->n + 1) * sizeof *ns);
  char *d = strdup(s);
  if (!ns || !d) {
    if (ns) c->y->strings = ns;
    free(d);
    return mx__set_error(MX_ERR_OOM, "lora: out of memory reading %s", c->path);
  }
  c->y->strings = ns;
  c->y->strings[c->y->n++] = d;
  *out = d;
  return 0;
}

static int get_name(ctx *c, const yaml_node_t *n, const char *key, char *out, size_t cap) {
  const char *s = scalar(n);
  if (!s || strlen(s) >= cap) return bad(c, n, key, "a short string");
  snprintf(out, cap, "%s", s);
  return 0;
}

static yaml_node_t *node(ctx *c, int i) { return yaml_document_get_node(c->doc, i); }

/* Calls fn(key, value) for each pair of a mapping. */
typedef int (*pair_fn)(ctx *c, const char *key, yaml_node_t *v, void *arg);
static int each_pair(ctx *c, yaml_node_t *map, const char *what, pair_fn fn, void *arg) {
  if (map->type != YAML_MAPPING_NODE) return bad(c, map, what, "a mapping");
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
    const char *ks = k ? scalar(k) : NULL;
    if (!ks || !v) return bad(c, k ? k : map, what, "string keys");
    int st = fn(c, ks, v, arg);
    if (st) return st;
  }
  return 0;
}

static int unknown(ctx *c, const yaml_node_t *v, const char *section, const char *key) {
  return mx__set_error(MX_ERR_FORMAT, "lora: %s:%d: unknown key \"%s%s%s\"", c->path, line_of(v),
                       section, *section ? "." : "", key);
}

/* ---- lora_parameters -------------------------------------------------------------- */
static int lora_param(ctx *c, const char *k, yaml_node_t *v, void *arg) {
  mx_lora_config *lc = arg;
  int64_t i = 0;
  if (!strcmp(k, "rank")) {
    int st = get_i64(c, v, "lora_parameters.rank", &i);
    if (!st && (i < 1 || i > 65536)) st = bad(c, v, "lora_parameters.rank", "an integer >= 1");
    lc->rank = (int)i;
    return st;
  }
  if (!strcmp(k, "scale")) return get_f64(c, v, "lora_parameters.scale", &lc->scale);
  if (!strcmp(k, "dropout")) return get_f64(c, v, "lora_parameters.dropout", &lc->dropout);
  if (!strcmp(k, "alpha")) { /* older mlx-lm configs; unused (scale is the factor) */
    double a;
    return get_f64(c, v, "lora_parameters.alpha", &a);
  }
  if (!strcmp(k, "keys")) {
    if (v->type != YAML_SEQUENCE_NODE) return bad(c, v, "lora_parameters.keys", "a list of module paths");
    int n = 0;
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
      yaml_node_t *e = node(c, *it);
      if (n >= MX_LORA_MAX_KEYS)
        return mx__set_error(MX_ERR_FORMAT, "lora: %s:%d: lora_parameters.keys: at most %d keys",
                             c->path, line_of(v), MX_LORA_MAX_KEYS);
      int st = get_name(c, e, "lora_parameters.keys", lc->keys[n], sizeof lc->keys[n]);
      if (st) return st;
      n++;
    }
    if (!n) return bad(c, v, "lora_parameters.keys", "a non-empty list");
    lc->nkeys = n;
    return 0;
  }
  return unknown(c, v, "lora_parameters", k);
}

/* ---- lr_schedule ------------------------------------------------------------------- */
static int schedule_param(ctx *c, const char *k, yaml_node_t *v, void *arg) {
  mx_lora_schedule *s = arg;
  if (!strcmp(k, "name")) return get_name(c, v, "lr_schedule.name", s->name, sizeof s->name);
  if (!strcmp(k, "warmup")) return get_i64(c, v, "lr_schedule.warmup", &s->warmup);
  if (!strcmp(k, "warmup_init")) return get_f64(c, v, "lr_schedule.warmup_init", &s->warmup_init);
  if (!strcmp(k, "arguments")) {
    if (v->type != YAML_SEQUENCE_NODE) return bad(c, v, "lr_schedule.arguments", "a list of numbers");
    s->narguments = 0;
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
      if (s->narguments >= 4) return bad(c, v, "lr_schedule.arguments", "at most 4 numbers");
      int st = get_f64(c, node(c, *it), "lr_schedule.arguments", &s->arguments[s->narguments++]);
      if (st) return st;
    }
    return 0;
  }
  return unknown(c, v, "lr_schedule", k);
}

/* ---- optimizer_config ----------------------------------------------------------------- */
typedef struct {
  double beta1, beta2, eps, weight_decay, momentum;
  bool has_beta, has_eps, has_wd, has_mom;
} opt_cfg;

static int opt_param(ctx *c, const char *k, yaml_node_t *v, void *arg) {
  opt_cfg *o = arg;
  if (!strcmp(k, "betas")) {
    yaml_node_item_t *it = v->data.sequence.items.start;
    if (v->type != YAML_SEQUENCE_NODE || v->data.sequence.items.top - it != 2)
      return bad(c, v, "optimizer_config.betas", "a list of 2 numbers");
    o->has_beta = true;
    int st = get_f64(c, node(c, it[0]), "optimizer_config.betas", &o->beta1);
    return st ? st : get_f64(c, node(c, it[1]), "optimizer_config.betas", &o->beta2);
  }
  if (!strcmp(k, "eps")) return o->has_eps = true, get_f64(c, v, "optimizer_config.eps", &o->eps);
  if (!strcmp(k, "weight_decay"))
    return o->has_wd = true, get_f64(c, v, "optimizer_config.weight_decay", &o->weight_decay);
  if (!strcmp(k, "momentum")) return o->has_mom = true, get_f64(c, v, "optimizer_config.momentum", &o->momentum);
  return unknown(c, v, "optimizer_config.<optimizer>", k);
}

typedef struct {
  opt_cfg cfg[3]; /* adam, adamw, sgd */
} opt_cfgs;

static int opt_section(ctx *c, const char *k, yaml_node_t *v, void *arg) {
  opt_cfgs *all = arg;
  int i = !strcmp(k, "adam") ? 0 : !strcmp(k, "adamw") ? 1 : !strcmp(k, "sgd") ? 2 : -1;
  if (i < 0) {
    /* mlx-lm lists every optimizer it knows; an empty entry for one we lack is harmless. */
    if ((v->type == YAML_MAPPING_NODE && v->data.mapping.pairs.top == v->data.mapping.pairs.start) ||
        is_null(v))
      return 0;
    return mx__set_error(MX_ERR_UNSUPPORTED, "lora: %s:%d: optimizer_config.%s: optimizer \"%s\" is not "
                         "supported (adam, adamw, sgd)", c->path, line_of(v), k, k);
  }
  if (is_null(v)) return 0;
  return each_pair(c, v, "optimizer_config", opt_param, &all->cfg[i]);
}

/* ---- top level --------------------------------------------------------------------------- */
typedef struct {
  mx_lora_options *o;
  bool *train, *test;
  opt_cfgs opts;
} top_arg;

static int top_param(ctx *c, const char *k, yaml_node_t *v, void *arg) {
  top_arg *t = arg;
  mx_lora_options *o = t->o;
  int64_t i = 0;
  int st = 0;
  static const char *const ignored[] = {"wandb", "report_to", "project_name", "config",
                                        "clear_cache_threshold"};
  for (size_t j = 0; j < sizeof ignored / sizeof *ignored; j++)
    if (!strcmp(k, ignored[j])) return 0;
  static const struct {
    const char *key;
    size_t off;
  } ints[] = {
      {"batch_size", offsetof(mx_lora_options, batch_size)},
      {"iters", offsetof(mx_lora_options, iters)},
      {"val_batches", offsetof(mx_lora_options, val_batches)},
      {"test_batches", offsetof(mx_lora_options, test_batches)},
      {"steps_per_report", offsetof(mx_lora_options, steps_per_report)},
      {"steps_per_eval", offsetof(mx_lora_options, steps_per_eval)},
      {"save_every", offsetof(mx_lora_options, save_every)},
      {"max_seq_length", offsetof(mx_lora_options, max_seq_length)},
      {"grad_accumulation_steps", offsetof(mx_lora_options, grad_accumulation_steps)},
  };
  for (size_t j = 0; j < sizeof ints / sizeof *ints; j++)
    if (!strcmp(k, ints[j].key)) return get_i64(c, v, k, (int64_t *)((char *)o + ints[j].off));
  if (!strcmp(k, "model")) return get_str(c, v, k, true, &o->model);
  if (!strcmp(k, "data")) return get_str(c, v, k, false, &o->data_dir);
  if (!strcmp(k, "adapter_path")) return get_str(c, v, k, false, &o->adapter_path);
  if (!strcmp(k, "resume_adapter_file")) return get_str(c, v, k, true, &o->resume_adapter_file);
  if (!strcmp(k, "train")) {
    bool b = false;
    st = get_bool(c, v, k, &b);
    if (!st && t->train) *t->train = b;
    return st;
  }
  if (!strcmp(k, "test")) {
    bool b = false;
    st = get_bool(c, v, k, &b);
    if (!st && t->test) *t->test = b;
    return st;
  }
  if (!strcmp(k, "mask_prompt")) return get_bool(c, v, k, &o->mask_prompt);
  if (!strcmp(k, "grad_checkpoint")) return get_bool(c, v, k, &o->grad_checkpoint);
  if (!strcmp(k, "learning_rate")) return get_f64(c, v, k, &o->learning_rate);
  if (!strcmp(k, "seed")) {
    st = get_i64(c, v, k, &i);
    if (!st && i < 0) st = bad(c, v, k, "an integer >= 0");
    o->seed = (uint64_t)i;
    return st;
  }
  if (!strcmp(k, "memory_limit")) {
    st = get_i64(c, v, k, &i);
    if (!st && i < 0) st = bad(c, v, k, "bytes >= 0");
    o->memory_limit = (size_t)i;
    return st;
  }
  if (!strcmp(k, "num_layers")) {
    st = get_i64(c, v, k, &i);
    if (!st && (i < -1 || i == 0 || i > 100000)) st = bad(c, v, k, "-1 (all) or a layer count >= 1");
    o->lora.num_layers = (int)i;
    return st;
  }
  if (!strcmp(k, "fine_tune_type")) {
    char s[16];
    st = get_name(c, v, k, s, sizeof s);
    if (!st && mx__lora_type_parse(s, c->path, &o->lora.type))
      st = bad(c, v, k, "lora, dora or full");
    return st;
  }
  if (!strcmp(k, "optimizer")) {
    char s[16];
    st = get_name(c, v, k, s, sizeof s);
    if (st) return st;
    if (!strcmp(s, "adam")) o->optimizer = MX_LORA_OPT_ADAM;
    else if (!strcmp(s, "adamw")) o->optimizer = MX_LORA_OPT_ADAMW;
    else if (!strcmp(s, "sgd")) o->optimizer = MX_LORA_OPT_SGD;
    else return bad(c, v, k, "adam, adamw or sgd");
    return 0;
  }
  if (!strcmp(k, "optimizer_config")) return is_null(v) ? 0 : each_pair(c, v, k, opt_section, &t->opts);
  if (!strcmp(k, "lora_parameters")) return each_pair(c, v, k, lora_param, &o->lora);
  if (!strcmp(k, "lr_schedule")) {
    memset(&o->lr_schedule, 0, sizeof o->lr_schedule);
    if (is_null(v)) return 0;
    st = each_pair(c, v, k, schedule_param, &o->lr_schedule);
    if (!st && !o->lr_schedule.name[0]) st = bad(c, v, k, "a \"name\"");
    if (!st && o->lr_schedule.narguments < 1) st = bad(c, v, k, "\"arguments\" (the first is the initial rate)");
    return st;
  }
  if (!strcmp(k, "hf_dataset"))
    return mx__set_error(MX_ERR_UNSUPPORTED, "lora: %s:%d: hf_dataset: Hugging Face datasets are not "
                         "supported; use a local --data directory", c->path, line_of(v));
  return unknown(c, v, "", k);
}

mx_lora_yaml *mx_lora_yaml_load(const char *path, mx_lora_options *o, bool *train, bool *test) {
  if (!path || !o) {
    mx__set_error(MX_ERR_INVALID_ARG, "lora: yaml: bad arguments");
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(MX_ERR_IO, "lora: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  mx_lora_yaml *y = calloc(1, sizeof *y);
  yaml_parser_t parser;
  yaml_document_t doc;
  bool have_doc = false;
  int st = y ? 0 : mx__set_error(MX_ERR_OOM, "lora: out of memory");
  if (!st && !yaml_parser_initialize(&parser)) st = mx__set_error(MX_ERR_OOM, "lora: out of memory");
  else if (!st) {
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc))
      st = mx__set_error(MX_ERR_FORMAT, "lora: %s:%d: invalid YAML: %s", path,
                         (int)parser.problem_mark.line + 1, parser.problem ? parser.problem : "?");
    else
      have_doc = true;
    yaml_parser_delete(&parser);
  }
  fclose(f);
  if (!st) {
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    ctx c = {path, &doc, y};
    top_arg t = {.o = o, .train = train, .test = test};
    if (!root) st = 0; /* an empty file: nothing to set */
    else st = each_pair(&c, root, "the top level", top_param, &t);
    if (!st) {
      const opt_cfg *oc = &t.opts.cfg[o->optimizer];
      if (oc->has_beta) {
        o->beta1 = oc->beta1;
        o->beta2 = oc->beta2;
      }
      if (oc->has_eps) o->eps = oc->eps;
      if (oc->has_wd) o->weight_decay = oc->weight_decay;
      if (oc->has_mom) o->momentum = oc->momentum;
    }
  }
  if (have_doc) yaml_document_delete(&doc);
  if (st) {
    mx_lora_yaml_free(y);
    return NULL;
  }
  return y;
}
