/* chat_template.c — the public chat-template API over the Jinja engine. */
#include "jinja.h"
#include "mxc/chat_template.h"

struct mx_chat_template {
  jtemplate t;
};

mx_chat_template *mx_chat_template_new(const char *source) {
  if (!source) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_chat_template_new: source is NULL");
    return NULL;
  }
  mx_chat_template *t = calloc(1, sizeof *t);
  if (!t) {
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  t->t.arena.limit = 256u << 20;
  int st = mx__jinja_parse(&t->t, source, strlen(source));
  if (st) {
    mx__set_error(st, "%s", t->t.err);
    mx_chat_template_free(t);
    return NULL;
  }
  return t;
}

void mx_chat_template_free(mx_chat_template *t) {
  if (!t) return;
  mx__jarena_free(&t->t.arena);
  free(t);
}

static int render_vars(const mx_chat_template *t, jarena *a, jv vars, char **out, size_t *len) {
  mx__buf b = {0};
  char err[512];
  int st = mx__jinja_render(&t->t, a, vars, &b, err, sizeof err);
  if (st) {
    mx__buf_free(&b);
    return mx__set_error(st, "%s", err);
  }
  *out = mx__buf_finish(&b, len);
  return *out ? MX_OK : mx__set_error(MX_ERR_OOM, "out of memory rendering template");
}

int mx_chat_template_render(const mx_chat_template *t, const char *vars_json, char **out,
                            size_t *len) {
  if (!t || !out) return mx__set_error(MX_ERR_INVALID_ARG, "mx_chat_template_render: NULL argument");
  *out = NULL;
  jarena a = {.limit = 512u << 20};
  jv vars = mx__jv_dict(&a, JV_DICT);
  char err[256];
  int st = MX_OK;
  if (vars_json && vars_json[0]) {
    st = mx__jv_from_json(&a, vars_json, strlen(vars_json), &vars, err, sizeof err);
    if (st) st = mx__set_error(st, "template variables: %s", err);
    else if (vars.t != JV_DICT) st = mx__set_error(MX_ERR_INVALID_ARG, "template variables must be a JSON object");
  }
  if (!st) st = render_vars(t, &a, vars, out, len);
  mx__jarena_free(&a);
  return st;
}

static int set_str(jarena *a, jdict *d, const char *k, const char *v) {
  if (!v) return MX_OK;
  return mx__jv_dict_set(a, d, mx__jv_cstr(a, k), mx__jv_cstr(a, v));
}

int mx_chat_template_apply(const mx_tokenizer *tok, const char *conversation_json,
                           bool add_generation_prompt, char **out, size_t *len) {
  if (!tok || !conversation_json || !out)
    return mx__set_error(MX_ERR_INVALID_ARG, "mx_chat_template_apply: NULL argument");
  *out = NULL;
  const char *src = mx_tokenizer_chat_template(tok);
  if (!src)
    return mx__set_error(MX_ERR_NOT_FOUND, "the tokenizer has no chat_template "
                                           "(tokenizer_config.json)");
  mx_chat_template *t = mx_chat_template_new(src);
  if (!t) return mx_last_status();
  jarena a = {.limit = 512u << 20};
  char err[256];
  jv conv;
  int st = mx__jv_from_json(&a, conversation_json, strlen(conversation_json), &conv, err, sizeof err);
  if (st) st = mx__set_error(st, "conversation: %s", err);
  jv vars = mx__jv_dict(&a, JV_DICT);
  if (!st && vars.t != JV_DICT) st = mx__set_error(MX_ERR_OOM, "out of memory");
  if (!st && conv.t != JV_LIST && conv.t != JV_DICT)
    st = mx__set_error(MX_ERR_INVALID_ARG, "conversation must be a JSON array of messages or an "
                                           "object with \"messages\"");
  if (!st && conv.t == JV_DICT && !mx__jv_dict_gets(conv.u.d, "messages", 8))
    st = mx__set_error(MX_ERR_INVALID_ARG, "conversation object has no \"messages\"");
  if (!st) {
    jdict *d = vars.u.d;
    /* special tokens (transformers' special_tokens_map), then the call's arguments */
    static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int i = 0; i < 4 && !st; i++) st = set_str(&a, d, names[i], mx_tokenizer_special_token(tok, names[i]));
    const char *cfg = mx_tokenizer_config_json(tok);
    if (cfg && !st) {
      jv c;
      if (!mx__jv_from_json(&a, cfg, strlen(cfg), &c, err, sizeof err) && c.t == JV_DICT) {
        jv *ast = mx__jv_dict_gets(c.u.d, "additional_special_tokens", 25);
        if (ast && ast->t == JV_LIST && ast->u.l->n) {
          jv l = mx__jv_list(&a);
          for (size_t i = 0; l.t == JV_LIST && i < ast->u.l->n; i++) {
            jv x = ast->u.l->v[i];
            if (x.t == JV_DICT) {
              jv *cc = mx__jv_dict_gets(x.u.d, "content", 7);
              if (cc) x = *cc;
            }
            mx__jv_list_push(&a, l.u.l, x);
          }
          st = mx__jv_dict_set(&a, d, mx__jv_cstr(&a, "additional_special_tokens"), l);
        }
      }
    }
    jv msgs = conv, tools = jv_none();
    if (conv.t == JV_DICT) {
      msgs = *mx__jv_dict_gets(conv.u.d, "messages", 8);
      jv *tl = mx__jv_dict_gets(conv.u.d, "tools", 5);
      if (tl) tools = *tl;
    }
    if (!st) st = mx__jv_dict_set(&a, d, mx__jv_cstr(&a, "messages"), msgs);
    if (!st) st = mx__jv_dict_set(&a, d, mx__jv_cstr(&a, "tools"), tools);
    if (!st) st = mx__jv_dict_set(&a, d, mx__jv_cstr(&a, "documents"), jv_none());
    if (!st) st = mx__jv_dict_set(&a, d, mx__jv_cstr(&a, "add_generation_prompt"), jv_bool(add_generation_prompt));
    if (conv.t == JV_DICT)
      for (size_t i = 0; i < conv.u.d->n && !st; i++) {
        jv k = conv.u.d->k[i];
        if (k.t == JV_STR && (!strcmp(k.u.s->p, "messages") || !strcmp(k.u.s->p, "tools"))) continue;
        st = mx__jv_dict_set(&a, d, k, conv.u.d->v[i]);
      }
    if (st) st = mx__set_error(MX_ERR_OOM, "out of memory");
  }
  if (!st) st = render_vars(t, &a, vars, out, len);
  mx__jarena_free(&a);
  mx_chat_template_free(t);
  return st;
}
