/* tokenizer.c — loading tokenizer.json / tokenizer_config.json, the encode
 * pipeline (added tokens -> normalizer -> pre-tokenizer -> BPE ->
 * post-processor) and the public API. Decoding lives in decode.c, the
 * SentencePiece model in sentencepiece.c. */
#include "tok_internal.h"

#include <cjson/cJSON.h>
#include <sys/stat.h>

/* ---- small JSON helpers ------------------------------------------------------ */

static const char *jstr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *key, bool dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return dflt;
}

static char *dupn(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}
static char *dup(const char *s) { return s ? dupn(s, strlen(s)) : NULL; }

/* A token given as a string or as {"content": ...} (tokenizer_config.json). */
static const char *token_content(const cJSON *v) {
  if (cJSON_IsString(v)) return v->valuestring;
  if (cJSON_IsObject(v)) return jstr(v, "content");
  return NULL;
}

/* ---- free -------------------------------------------------------------------- */

void mx_tokenizer_free(mx_tokenizer *tok) {
  if (!tok) return;
  for (int32_t i = 0; i < tok->n_ids; i++) {
    if (tok->tokens) free(tok->tokens[i]);
    if (tok->raw) free(tok->raw[i]);
  }
  free(tok->tokens);
  free(tok->token_len);
  free(tok->raw);
  free(tok->raw_len);
  free(tok->special);
  mx__strmap_free(&tok->vocab);
  mx__strmap_free(&tok->all);
  mx__pairmap_free(&tok->merges);
  free(tok->cont_prefix);
  free(tok->eow_suffix);
  for (int i = 0; i < tok->n_norms; i++) {
    free(tok->norms[i].a);
    free(tok->norms[i].b);
  }
  free(tok->norms);
  for (int i = 0; i < tok->n_pretoks; i++) free(tok->pretoks[i].str);
  free(tok->pretoks);
  for (int i = 0; i < tok->n_decs; i++) {
    free(tok->decs[i].a);
    free(tok->decs[i].b);
  }
  free(tok->decs);
  for (int i = 0; i < tok->n_added; i++) free(tok->added[i].content);
  free(tok->added);
  mx__trie_free(&tok->trie_raw);
  mx__trie_free(&tok->trie_norm);
  free(tok->post_prefix.p);
  free(tok->post_suffix.p);
  free(tok->bos_token);
  free(tok->eos_token);
  free(tok->unk_token);
  free(tok->pad_token);
  free(tok->chat_template);
  free(tok->config_json);
  free(tok->spm.scores);
  free(tok->spm.types);
  mx__trie_free(&tok->spm.user);
  free(tok);
}

mx_tokenizer *mx__tokenizer_alloc(void) {
  mx_tokenizer *tok = calloc(1, sizeof *tok);
  if (!tok) return NULL;
  tok->unk_id = tok->bos_id = tok->eos_id = -1;
  for (int i = 0; i < 256; i++) tok->byte_id[i] = tok->fallback_id[i] = -1;
  return tok;
}

/* Make room for ids [0, n). */
int mx__tokenizer_grow(mx_tokenizer *tok, int32_t n) {
  if (n <= tok->n_ids) return MX_OK;
  char **t = realloc(tok->tokens, (size_t)n * sizeof *t);
  if (!t) return MX_ERR_OOM;
  tok->tokens = t;
  uint32_t *l = realloc(tok->token_len, (size_t)n * sizeof *l);
  if (!l) return MX_ERR_OOM;
  tok->token_len = l;
  uint8_t *s = realloc(tok->special, (size_t)n);
  if (!s) return MX_ERR_OOM;
  tok->special = s;
  for (int32_t i = tok->n_ids; i < n; i++) {
    t[i] = NULL;
    l[i] = 0;
    s[i] = 0;
  }
  tok->n_ids = n;
  return MX_OK;
}

/* ---- components ------------------------------------------------------------------ */

static int unsupported(const char *what, const char *type) {
  return mx__set_error(MX_ERR_UNSUPPORTED, "tokenizer.json: unsupported %s '%s'", what,
                       type ? type : "(missing type)");
}

static int add_normalizer(mx_tokenizer *tok, const cJSON *n) {
  if (!n || cJSON_IsNull(n)) return MX_OK;
  const char *type = jstr(n, "type");
  if (!type) return unsupported("normalizer", NULL);
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *it;
    cJSON_ArrayForEach(it, list) {
      int st = add_normalizer(tok, it);
      if (st) return st;
    }
    return MX_OK;
  }
  mx__normalizer nm = {0};
  if (!strcmp(type, "NFC")) nm.kind = MX__NORM_NFC;
  else if (!strcmp(type, "NFD")) nm.kind = MX__NORM_NFD;
  else if (!strcmp(type, "NFKC")) nm.kind = MX__NORM_NFKC;
  else if (!strcmp(type, "NFKD")) nm.kind = MX__NORM_NFKD;
  else if (!strcmp(type, "Lowercase")) nm.kind = MX__NORM_LOWER;
  else if (!strcmp(type, "Strip")) {
    nm.kind = MX__NORM_STRIP;
    nm.left = jbool(n, "strip_left", true);
    nm.right = jbool(n, "strip_right", true);
  } else if (!strcmp(type, "Prepend")) {
    nm.kind = MX__NORM_PREPEND;
    const char *p = jstr(n, "prepend");
    if (!p) return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: Prepend without 'prepend'");
    nm.a = dup(p);
  } else if (!strcmp(type, "Replace")) {
    nm.kind = MX__NORM_REPLACE;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    const char *s = jstr(pat, "String"), *c = jstr(n, "content");
    if (!s) return unsupported("normalizer", "Replace with a Regex pattern");
    if (!c) return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: Replace without 'content'");
    nm.a = dup(s);
    nm.b = dup(c);
  } else {
    return unsupported("normalizer", type);
  }
  mx__normalizer *p = realloc(tok->norms, (size_t)(tok->n_norms + 1) * sizeof *p);
  if (!p) {
    free(nm.a);
    free(nm.b);
    return MX_ERR_OOM;
  }
  tok->norms = p;
  tok->norms[tok->n_norms++] = nm;
  return MX_OK;
}

static const char *const RE_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char *const RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const RE_QWEN2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int parse_behavior(const char *b) {
  if (!b) return MX__BEH_ISOLATED;
  if (!strcmp(b, "Removed")) return MX__BEH_REMOVED;
  if (!strcmp(b, "Isolated")) return MX__BEH_ISOLATED;
  if (!strcmp(b, "MergedWithPrevious")) return MX__BEH_MERGED_PREV;
  if (!strcmp(b, "MergedWithNext")) return MX__BEH_MERGED_NEXT;
  if (!strcmp(b, "Contiguous")) return MX__BEH_CONTIGUOUS;
  return -1;
}

static int parse_prepend_scheme(const cJSON *n) {
  const char *s = jstr(n, "prepend_scheme");
  if (s) return !strcmp(s, "always") ? 0 : !strcmp(s, "first") ? 1 : 2;
  return jbool(n, "add_prefix_space", true) ? 0 : 2;
}

static int add_pretok(mx_tokenizer *tok, const cJSON *n) {
  if (!n || cJSON_IsNull(n)) return MX_OK;
  const char *type = jstr(n, "type");
  if (!type) return unsupported("pre-tokenizer", NULL);
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *it;
    cJSON_ArrayForEach(it, list) {
      int st = add_pretok(tok, it);
      if (st) return st;
    }
    return MX_OK;
  }
  mx__pretok p = {0};
  if (!strcmp(type, "Split")) {
    p.kind = MX__PRE_SPLIT;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    const char *re = jstr(pat, "Regex"), *s = jstr(pat, "String");
    if (re) {
      if (!strcmp(re, RE_GPT2)) p.pattern = MX__SPLIT_REGEX_GPT2;
      else if (!strcmp(re, RE_LLAMA3)) p.pattern = MX__SPLIT_REGEX_LLAMA3;
      else if (!strcmp(re, RE_QWEN2)) p.pattern = MX__SPLIT_REGEX_QWEN2;
      else
        return mx__set_error(MX_ERR_UNSUPPORTED,
                             "tokenizer.json: unsupported Split regex /%s/ (supported: the "
                             "GPT-2, Llama 3 and Qwen 2 patterns)", re);
    } else if (s) {
      p.pattern = MX__SPLIT_STRING;
      p.str = dup(s);
    } else {
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: Split without a pattern");
    }
    p.behavior = parse_behavior(jstr(n, "behavior"));
    if (p.behavior < 0) {
      free(p.str);
      return unsupported("Split behavior", jstr(n, "behavior"));
    }
    p.invert = jbool(n, "invert", false);
  } else if (!strcmp(type, "ByteLevel")) {
    p.kind = MX__PRE_BYTELEVEL;
    p.add_prefix_space = jbool(n, "add_prefix_space", true);
    p.use_regex = jbool(n, "use_regex", true);
    tok->byte_level = true;
  } else if (!strcmp(type, "Metaspace")) {
    p.kind = MX__PRE_METASPACE;
    const char *r = jstr(n, "replacement");
    p.str = dup(r ? r : "\xE2\x96\x81");
    p.prepend_scheme = parse_prepend_scheme(n);
    p.split = jbool(n, "split", true);
  } else if (!strcmp(type, "Digits")) {
    p.kind = MX__PRE_DIGITS;
    p.individual = jbool(n, "individual_digits", false);
  } else if (!strcmp(type, "WhitespaceSplit")) {
    p.kind = MX__PRE_WSSPLIT;
  } else {
    return unsupported("pre-tokenizer", type);
  }
  mx__pretok *q = realloc(tok->pretoks, (size_t)(tok->n_pretoks + 1) * sizeof *q);
  if (!q) {
    free(p.str);
    return MX_ERR_OOM;
  }
  tok->pretoks = q;
  tok->pretoks[tok->n_pretoks++] = p;
  return MX_OK;
}

static int add_decoder(mx_tokenizer *tok, const cJSON *n) {
  if (!n || cJSON_IsNull(n)) return MX_OK;
  tok->has_decoder = true;
  const char *type = jstr(n, "type");
  if (!type) return unsupported("decoder", NULL);
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "decoders"), *it;
    cJSON_ArrayForEach(it, list) {
      int st = add_decoder(tok, it);
      if (st) return st;
    }
    return MX_OK;
  }
  mx__decoder d = {0};
  if (!strcmp(type, "ByteLevel")) d.kind = MX__DEC_BYTELEVEL;
  else if (!strcmp(type, "ByteFallback")) d.kind = MX__DEC_BYTEFALLBACK;
  else if (!strcmp(type, "Fuse")) d.kind = MX__DEC_FUSE;
  else if (!strcmp(type, "Metaspace")) {
    d.kind = MX__DEC_METASPACE;
    const char *r = jstr(n, "replacement");
    d.a = dup(r ? r : "\xE2\x96\x81");
    d.prepend_scheme = parse_prepend_scheme(n);
  } else if (!strcmp(type, "Strip")) {
    d.kind = MX__DEC_STRIP;
    const char *c = jstr(n, "content");
    d.a = dup(c ? c : " ");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(n, "start"),
                *b = cJSON_GetObjectItemCaseSensitive(n, "stop");
    d.start = cJSON_IsNumber(a) ? a->valueint : 0;
    d.stop = cJSON_IsNumber(b) ? b->valueint : 0;
  } else if (!strcmp(type, "Replace")) {
    d.kind = MX__DEC_REPLACE;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    const char *s = jstr(pat, "String"), *c = jstr(n, "content");
    if (!s) return unsupported("decoder", "Replace with a Regex pattern");
    d.a = dup(s);
    d.b = dup(c ? c : "");
  } else {
    return unsupported("decoder", type);
  }
  mx__decoder *q = realloc(tok->decs, (size_t)(tok->n_decs + 1) * sizeof *q);
  if (!q) {
    free(d.a);
    free(d.b);
    return MX_ERR_OOM;
  }
  tok->decs = q;
  tok->decs[tok->n_decs++] = d;
  return MX_OK;
}

static int32_t lookup_any(const mx_tokenizer *tok, const char *s) {
  return s ? mx__strmap_get(&tok->all, s, strlen(s)) : -1;
}

static int template_items(mx_tokenizer *tok, const cJSON *items, const cJSON *specials) {
  const cJSON *it;
  bool after = false;
  cJSON_ArrayForEach(it, items) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
    if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
      if (after) return unsupported("post-processor", "TemplateProcessing with two sequences");
      after = true;
      continue;
    }
    if (!sp) return unsupported("post-processor item", "unknown");
    const char *name = jstr(sp, "id");
    const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *id;
    if (!cJSON_IsArray(ids))
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: TemplateProcessing special '%s' "
                                          "is not defined", name ? name : "?");
    cJSON_ArrayForEach(id, ids) {
      if (!cJSON_IsNumber(id)) return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: bad id");
      mx__ids_push(after ? &tok->post_suffix : &tok->post_prefix, id->valueint);
    }
  }
  return MX_OK;
}

static int add_post(mx_tokenizer *tok, const cJSON *n) {
  if (!n || cJSON_IsNull(n)) return MX_OK;
  const char *type = jstr(n, "type");
  if (!type) return unsupported("post-processor", NULL);
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "processors"), *it;
    cJSON_ArrayForEach(it, list) {
      int st = add_post(tok, it);
      if (st) return st;
    }
    return MX_OK;
  }
  if (!strcmp(type, "ByteLevel")) return MX_OK; /* offsets only */
  if (!strcmp(type, "TemplateProcessing")) {
    tok->post_prefix.n = tok->post_suffix.n = 0;
    return template_items(tok, cJSON_GetObjectItemCaseSensitive(n, "single"),
                          cJSON_GetObjectItemCaseSensitive(n, "special_tokens"));
  }
  if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"),
                *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
    const cJSON *c1 = cJSON_GetArrayItem(cls, 1), *s1 = cJSON_GetArrayItem(sep, 1);
    if (!cJSON_IsNumber(c1) || !cJSON_IsNumber(s1))
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: %s without cls/sep", type);
    tok->post_prefix.n = tok->post_suffix.n = 0;
    mx__ids_push(&tok->post_prefix, c1->valueint);
    mx__ids_push(&tok->post_suffix, s1->valueint);
    return MX_OK;
  }
  return unsupported("post-processor", type);
}

/* ---- vocabulary ------------------------------------------------------------------ */

/* Byte-level form of a token: the bytes its characters stand for; false if
 * some character is not in the byte map. */
static bool to_raw(const char *s, size_t n, mx__buf *out) {
  out->n = 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = mx__utf8_decode((const uint8_t *)s + i, n - i, &cp);
    int b = mx__cp_to_byte(cp);
    if (b < 0) return false;
    mx__buf_putc(out, (char)b);
    i += l;
  }
  return !out->oom;
}

static int set_token(mx_tokenizer *tok, int32_t id, const char *s, size_t n) {
  if (id < 0 || id > 50000000)
    return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: token id %d out of range", id);
  if (mx__tokenizer_grow(tok, id + 1)) return MX_ERR_OOM;
  if (tok->tokens[id]) return MX_OK; /* first definition wins */
  tok->tokens[id] = dupn(s, n);
  if (!tok->tokens[id]) return MX_ERR_OOM;
  tok->token_len[id] = (uint32_t)n;
  return MX_OK;
}

/* Byte-level decode form of every id (HF ByteLevel decoder, per token). */
static int build_raw(mx_tokenizer *tok) {
  tok->raw = calloc((size_t)tok->n_ids, sizeof *tok->raw);
  tok->raw_len = calloc((size_t)tok->n_ids, sizeof *tok->raw_len);
  if (!tok->raw || !tok->raw_len) return MX_ERR_OOM;
  mx__buf b = {0};
  for (int32_t i = 0; i < tok->n_ids; i++) {
    if (!tok->tokens[i]) continue;
    if (to_raw(tok->tokens[i], tok->token_len[i], &b)) {
      tok->raw[i] = dupn(b.p ? b.p : "", b.n);
      tok->raw_len[i] = (uint32_t)b.n;
    } else {
      tok->raw[i] = dupn(tok->tokens[i], tok->token_len[i]);
      tok->raw_len[i] = tok->token_len[i];
    }
    if (!tok->raw[i]) {
      mx__buf_free(&b);
      return MX_ERR_OOM;
    }
  }
  mx__buf_free(&b);
  return MX_OK;
}

static int load_model(mx_tokenizer *tok, const cJSON *model) {
  const char *type = jstr(model, "type");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  if (!type && cJSON_IsObject(vocab) && cJSON_GetObjectItemCaseSensitive(model, "merges"))
    type = "BPE";
  if (!type || strcmp(type, "BPE")) return unsupported("model", type);
  if (!cJSON_IsObject(vocab)) return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: no vocab");
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
    return unsupported("BPE option", "dropout");
  tok->byte_fallback = jbool(model, "byte_fallback", false);
  tok->fuse_unk = jbool(model, "fuse_unk", false);
  tok->ignore_merges = jbool(model, "ignore_merges", false);
  const char *cp = jstr(model, "continuing_subword_prefix"), *sx = jstr(model, "end_of_word_suffix");
  if (cp && *cp) tok->cont_prefix = dup(cp);
  if (sx && *sx) tok->eow_suffix = dup(sx);
  if (tok->byte_level && (tok->cont_prefix || tok->eow_suffix))
    return unsupported("BPE option", "byte-level with continuing_subword_prefix/end_of_word_suffix");

  size_t nv = (size_t)cJSON_GetArraySize(vocab);
  if (mx__strmap_init(&tok->vocab, nv)) return MX_ERR_OOM;
  const cJSON *it;
  int32_t maxid = -1;
  cJSON_ArrayForEach(it, vocab) {
    if (!cJSON_IsNumber(it) || !it->string || it->valuedouble != (double)it->valueint ||
        it->valueint < 0 || it->valueint > 50000000)
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: vocab values must be ids in [0, 5e7]");
    if (it->valueint > maxid) maxid = it->valueint;
  }
  if (maxid >= 0 && mx__tokenizer_grow(tok, maxid + 1)) return MX_ERR_OOM;
  cJSON_ArrayForEach(it, vocab) {
    int st = set_token(tok, it->valueint, it->string, strlen(it->string));
    if (st) return st;
  }
  /* vocab keys: byte-level -> raw bytes (kept in tok->raw), else file form */
  if (tok->byte_level && build_raw(tok)) return MX_ERR_OOM;
  cJSON_ArrayForEach(it, vocab) {
    int32_t id = it->valueint;
    const char *k = tok->byte_level ? tok->raw[id] : tok->tokens[id];
    uint32_t kl = tok->byte_level ? tok->raw_len[id] : tok->token_len[id];
    if (mx__strmap_put(&tok->vocab, k, kl, id, false) < 0) return MX_ERR_OOM;
  }
  if (tok->byte_level)
    for (int b = 0; b < 256; b++) {
      char c = (char)b;
      tok->byte_id[b] = mx__strmap_get(&tok->vocab, &c, 1);
    }
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    tok->fallback_id[b] = mx__strmap_get(&tok->vocab, name, 6);
  }
  const char *unk = jstr(model, "unk_token");
  if (unk) {
    tok->unk_id = mx__strmap_get(&tok->vocab, unk, strlen(unk));
    if (tok->unk_id < 0 && tok->byte_level) {
      mx__buf b = {0};
      if (to_raw(unk, strlen(unk), &b)) tok->unk_id = mx__strmap_get(&tok->vocab, b.p, b.n);
      mx__buf_free(&b);
    }
  }

  /* merges: "a b" strings or ["a", "b"] pairs; rank = position */
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  size_t nm = cJSON_IsArray(merges) ? (size_t)cJSON_GetArraySize(merges) : 0;
  if (mx__pairmap_init(&tok->merges, nm + 1)) return MX_ERR_OOM;
  mx__buf ka = {0}, kb = {0}, kc = {0};
  int32_t rank = 0;
  int st = MX_OK;
  cJSON_ArrayForEach(it, merges) {
    const char *a, *b;
    size_t al, bl;
    if (cJSON_IsString(it)) {
      const char *s = it->valuestring, *sp = strchr(s, ' ');
      if (!sp) {
        st = mx__set_error(MX_ERR_FORMAT, "tokenizer.json: merge '%s' has no space", s);
        break;
      }
      a = s;
      al = (size_t)(sp - s);
      b = sp + 1;
      bl = strlen(b);
    } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
               cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
      a = cJSON_GetArrayItem(it, 0)->valuestring;
      b = cJSON_GetArrayItem(it, 1)->valuestring;
      al = strlen(a);
      bl = strlen(b);
    } else {
      st = mx__set_error(MX_ERR_FORMAT, "tokenizer.json: merge #%d is malformed", rank);
      break;
    }
    kc.n = 0;
    mx__buf_put(&kc, a, al);
    mx__buf_put(&kc, b, bl);
    const char *pa = a, *pb = b, *pc = kc.p;
    size_t la = al, lb = bl, lc = kc.n;
    if (tok->byte_level) {
      mx__buf tmp = {0};
      if (to_raw(a, al, &ka) && to_raw(b, bl, &kb) && to_raw(kc.p, kc.n, &tmp)) {
        pa = ka.p;
        la = ka.n;
        pb = kb.p;
        lb = kb.n;
        kc.n = 0;
        mx__buf_put(&kc, tmp.p, tmp.n);
        pc = kc.p;
        lc = kc.n;
      }
      mx__buf_free(&tmp);
    }
    int32_t ia = mx__strmap_get(&tok->vocab, pa, la), ib = mx__strmap_get(&tok->vocab, pb, lb),
            ic = mx__strmap_get(&tok->vocab, pc, lc);
    if (ia < 0 || ib < 0 || ic < 0) {
      st = mx__set_error(MX_ERR_FORMAT, "tokenizer.json: merge #%d (%.*s %.*s) uses a token "
                                        "not in the vocabulary", rank, (int)al, a, (int)bl, b);
      break;
    }
    mx__pairmap_put(&tok->merges, ia, ib, rank, ic);
    rank++;
  }
  mx__buf_free(&ka);
  mx__buf_free(&kb);
  mx__buf_free(&kc);
  return st;
}

static int load_added(mx_tokenizer *tok, const cJSON *added) {
  int n = cJSON_GetArraySize(added);
  if (n <= 0) return MX_OK;
  tok->added = calloc((size_t)n, sizeof *tok->added);
  if (!tok->added) return MX_ERR_OOM;
  const cJSON *it;
  cJSON_ArrayForEach(it, added) {
    const char *c = jstr(it, "content");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    if (!c || !cJSON_IsNumber(id) || id->valuedouble != (double)id->valueint)
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: added token without content/id");
    mx__added *a = &tok->added[tok->n_added++];
    a->content = dup(c);
    if (!a->content) return MX_ERR_OOM;
    a->len = strlen(c);
    a->id = id->valueint;
    a->special = jbool(it, "special", false);
    a->lstrip = jbool(it, "lstrip", false);
    a->rstrip = jbool(it, "rstrip", false);
    a->single_word = jbool(it, "single_word", false);
    a->normalized = jbool(it, "normalized", !a->special);
    int st = set_token(tok, a->id, a->content, a->len);
    if (st) return st;
  }
  return MX_OK;
}

/* Index every token string (file form) and build the added-token tries. */
static int finish_tables(mx_tokenizer *tok) {
  if (mx__strmap_init(&tok->all, (size_t)tok->n_ids + 1)) return MX_ERR_OOM;
  for (int i = 0; i < tok->n_added; i++)
    if (mx__strmap_put(&tok->all, tok->added[i].content, tok->added[i].len, tok->added[i].id,
                       true) < 0)
      return MX_ERR_OOM;
  for (int32_t i = 0; i < tok->n_ids; i++)
    if (tok->tokens[i] && mx__strmap_put(&tok->all, tok->tokens[i], tok->token_len[i], i, false) < 0)
      return MX_ERR_OOM;
  for (size_t i = 0; i < tok->post_prefix.n + tok->post_suffix.n; i++) {
    int32_t id = i < tok->post_prefix.n ? tok->post_prefix.p[i]
                                        : tok->post_suffix.p[i - tok->post_prefix.n];
    if (id < 0 || id >= tok->n_ids)
      return mx__set_error(MX_ERR_FORMAT, "tokenizer.json: post-processor id %d out of range", id);
  }
  for (int i = 0; i < tok->n_added; i++) {
    mx__added *a = &tok->added[i];
    if (a->special) tok->special[a->id] = 1;
    if (!a->normalized) {
      if (mx__trie_add(&tok->trie_raw, a->content, a->len, i)) return MX_ERR_OOM;
    } else {
      /* normalized tokens are matched in normalized text, by their normalized form */
      mx__buf nb = {0};
      int st = mx__normalize(tok, a->content, a->len, &nb);
      if (!st && mx__trie_add(&tok->trie_norm, nb.p ? nb.p : "", nb.n, i)) st = MX_ERR_OOM;
      mx__buf_free(&nb);
      if (st) return st;
    }
  }
  return MX_OK;
}

/* tokenizer_config.json: special tokens and the chat template. */
int mx__load_config(mx_tokenizer *tok, const char *text, size_t len) {
  cJSON *c = cJSON_ParseWithLength(text, len);
  if (!c || !cJSON_IsObject(c)) {
    cJSON_Delete(c);
    return mx__set_error(MX_ERR_FORMAT, "tokenizer_config.json: not a JSON object");
  }
  free(tok->config_json);
  tok->config_json = dupn(text, len);
  static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
  char **dst[] = {&tok->bos_token, &tok->eos_token, &tok->unk_token, &tok->pad_token};
  for (int i = 0; i < 4; i++) {
    const char *v = token_content(cJSON_GetObjectItemCaseSensitive(c, names[i]));
    if (v) {
      free(*dst[i]);
      *dst[i] = dup(v);
    }
  }
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
  const char *tmpl = NULL;
  if (cJSON_IsString(t)) {
    tmpl = t->valuestring;
  } else if (cJSON_IsArray(t)) {
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
      const char *name = jstr(it, "name");
      if (name && !strcmp(name, "default")) tmpl = jstr(it, "template");
    }
    if (!tmpl) tmpl = jstr(cJSON_GetArrayItem(t, 0), "template");
  }
  if (tmpl) {
    free(tok->chat_template);
    tok->chat_template = dup(tmpl);
  }
  cJSON_Delete(c);
  if (tok->kind == MX__TOK_HF || tok->bos_id < 0) {
    int32_t b = lookup_any(tok, tok->bos_token);
    if (b >= 0 || tok->kind == MX__TOK_HF) tok->bos_id = b;
  }
  if (tok->kind == MX__TOK_HF || tok->eos_id < 0) {
    int32_t e = lookup_any(tok, tok->eos_token);
    if (e >= 0 || tok->kind == MX__TOK_HF) tok->eos_id = e;
  }
  return MX_OK;
}

/* The pre-tokenizers reduce to one regex split (the common, fast case)? */
static void detect_simple(mx_tokenizer *tok) {
  mx__pretok *p = tok->pretoks;
  int n = tok->n_pretoks;
  if (n >= 1 && p[0].kind == MX__PRE_SPLIT && p[0].pattern != MX__SPLIT_STRING &&
      p[0].behavior == MX__BEH_ISOLATED && !p[0].invert &&
      (n == 1 || (n == 2 && p[1].kind == MX__PRE_BYTELEVEL && !p[1].add_prefix_space &&
                  !p[1].use_regex))) {
    tok->simple_split = true;
    tok->simple_pattern = p[0].pattern;
  } else if (n == 1 && p[0].kind == MX__PRE_BYTELEVEL && !p[0].add_prefix_space &&
             p[0].use_regex) {
    tok->simple_split = true;
    tok->simple_pattern = MX__SPLIT_REGEX_GPT2;
  }
}

mx_tokenizer *mx_tokenizer_from_json(const char *json, size_t len, const char *config,
                                     size_t config_len) {
  if (!json) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_tokenizer_from_json: json is NULL");
    return NULL;
  }
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    mx__set_error(MX_ERR_FORMAT, "tokenizer.json: not a JSON object");
    return NULL;
  }
  mx_tokenizer *tok = mx__tokenizer_alloc();
  int st = tok ? MX_OK : MX_ERR_OOM;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!st) {
    tok->kind = MX__TOK_HF;
    const cJSON *trunc = cJSON_GetObjectItemCaseSensitive(root, "truncation"),
                *pad = cJSON_GetObjectItemCaseSensitive(root, "padding");
    if (trunc && !cJSON_IsNull(trunc)) st = unsupported("option", "truncation");
    else if (pad && !cJSON_IsNull(pad)) st = unsupported("option", "padding");
  }
  if (!st) st = add_pretok(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
  if (!st) st = add_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
  if (!st && !cJSON_IsObject(model))
    st = mx__set_error(MX_ERR_FORMAT, "tokenizer.json: no model");
  /* added tokens first: their strings win for id_to_token, as in HF */
  if (!st) st = load_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
  if (!st) st = load_model(tok, model);
  if (!st) st = add_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
  if (!st) st = add_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
  if (!st && (tok->post_prefix.oom || tok->post_suffix.oom)) st = MX_ERR_OOM;
  if (!st) st = finish_tables(tok);
  if (!st) detect_simple(tok);
  if (!st && config) st = mx__load_config(tok, config, config_len);
  cJSON_Delete(root);
  if (st) {
    if (st == MX_ERR_OOM) mx__set_error(MX_ERR_OOM, "out of memory loading tokenizer.json");
    mx_tokenizer_free(tok);
    return NULL;
  }
  return tok;
}

mx_tokenizer *mx_tokenizer_from_sentencepiece(const void *data, size_t len) {
  if (!data) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_tokenizer_from_sentencepiece: data is NULL");
    return NULL;
  }
  mx_tokenizer *tok = mx__tokenizer_alloc();
  if (!tok) {
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  tok->kind = MX__TOK_SPM;
  int st = mx__spm_load(tok, data, len);
  if (st) {
    mx_tokenizer_free(tok);
    return NULL;
  }
  return tok;
}

static bool is_dir(const char *p) {
  struct stat s;
  return !stat(p, &s) && S_ISDIR(s.st_mode);
}
static bool exists(const char *p) {
  struct stat s;
  return !stat(p, &s) && S_ISREG(s.st_mode);
}

mx_tokenizer *mx_tokenizer_load(const char *path) {
  if (!path) {
    mx__set_error(MX_ERR_INVALID_ARG, "mx_tokenizer_load: path is NULL");
    return NULL;
  }
  size_t pl = strlen(path);
  char *file = malloc(pl + 64), *dir = malloc(pl + 64);
  if (!file || !dir) {
    free(file);
    free(dir);
    mx__set_error(MX_ERR_OOM, "out of memory");
    return NULL;
  }
  if (is_dir(path)) {
    strcpy(dir, path);
    snprintf(file, pl + 64, "%s/tokenizer.json", path);
    if (!exists(file)) snprintf(file, pl + 64, "%s/tokenizer.model", path);
    if (!exists(file)) {
      mx__set_error(MX_ERR_NOT_FOUND, "%s: no tokenizer.json or tokenizer.model", path);
      free(file);
      free(dir);
      return NULL;
    }
  } else {
    strcpy(file, path);
    strcpy(dir, path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else strcpy(dir, ".");
  }
  size_t len;
  char *data = mx__read_file(file, &len);
  mx_tokenizer *tok = NULL;
  if (data) {
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' || data[i] == '\t')) i++;
    bool json = i < len && data[i] == '{';
    char cfgpath[4096];
    snprintf(cfgpath, sizeof cfgpath, "%s/tokenizer_config.json", dir);
    size_t clen = 0;
    char *cfg = exists(cfgpath) ? mx__read_file(cfgpath, &clen) : NULL;
    if (json) tok = mx_tokenizer_from_json(data, len, NULL, 0);
    else tok = mx_tokenizer_from_sentencepiece(data, len);
    if (tok) {
      /* special_tokens_map.json first, tokenizer_config.json overrides */
      snprintf(cfgpath, sizeof cfgpath, "%s/special_tokens_map.json", dir);
      size_t slen = 0;
      char *smap = exists(cfgpath) ? mx__read_file(cfgpath, &slen) : NULL;
      if (smap && mx__load_config(tok, smap, slen)) mx_clear_error();
      free(smap);
      if (smap) {
        free(tok->config_json);
        tok->config_json = NULL;
      }
      if (cfg && mx__load_config(tok, cfg, clen)) {
        mx__prefix_error("%s", file);
        mx_tokenizer_free(tok);
        tok = NULL;
      }
    } else {
      mx__prefix_error("%s", file);
    }
    free(cfg);
    free(data);
  }
  free(file);
  free(dir);
  return tok;
}

/* ---- encode -------------------------------------------------------------------------- */

typedef struct {
  mx__strmap map; /* piece -> entry */
  uint32_t *start, *count;
  size_t n, cap;
  mx__ids pool;
  bool on;
} word_cache;

static void cache_free(word_cache *c) {
  mx__strmap_free(&c->map);
  free(c->start);
  free(c->count);
  free(c->pool.p);
}

typedef struct {
  const mx_tokenizer *tok;
  mx__bpe_scratch *scratch;
  word_cache cache;
  mx__ids *out;
} enc_ctx;

static int model_piece(enc_ctx *e, const char *p, size_t n) {
  word_cache *c = &e->cache;
  if (c->on && n <= 128) {
    int32_t k = mx__strmap_get(&c->map, p, n);
    if (k >= 0) {
      mx__ids_reserve(e->out, c->count[k]);
      if (e->out->oom) return MX_ERR_OOM;
      memcpy(e->out->p + e->out->n, c->pool.p + c->start[k], c->count[k] * sizeof(int32_t));
      e->out->n += c->count[k];
      return MX_OK;
    }
    size_t before = e->out->n;
    int st = mx__bpe_word(e->tok, e->scratch, p, n, e->out);
    if (st) return st;
    if (c->n == c->cap) {
      size_t cap = c->cap ? c->cap * 2 : 1024;
      uint32_t *s = realloc(c->start, cap * sizeof *s);
      if (!s) return MX_ERR_OOM;
      c->start = s;
      uint32_t *q = realloc(c->count, cap * sizeof *q);
      if (!q) return MX_ERR_OOM;
      c->count = q;
      c->cap = cap;
    }
    size_t cnt = e->out->n - before;
    c->start[c->n] = (uint32_t)c->pool.n;
    c->count[c->n] = (uint32_t)cnt;
    for (size_t i = 0; i < cnt; i++) mx__ids_push(&c->pool, e->out->p[before + i]);
    if (c->pool.oom || mx__strmap_put(&c->map, p, n, (int32_t)c->n, false) < 0) return MX_ERR_OOM;
    c->n++;
    return MX_OK;
  }
  return mx__bpe_word(e->tok, e->scratch, p, n, e->out);
}

/* A list of pieces, each a byte range of `text`. */
typedef struct {
  size_t *off, *len;
  uint8_t *first; /* piece starts at offset 0 of the original input */
  size_t n, cap;
  mx__buf text;
} pieces;

static int pieces_add(pieces *p, const char *s, size_t n, bool first) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    size_t *o = realloc(p->off, cap * sizeof *o);
    if (!o) return MX_ERR_OOM;
    p->off = o;
    size_t *l = realloc(p->len, cap * sizeof *l);
    if (!l) return MX_ERR_OOM;
    p->len = l;
    uint8_t *f = realloc(p->first, cap);
    if (!f) return MX_ERR_OOM;
    p->first = f;
    p->cap = cap;
  }
  p->off[p->n] = p->text.n;
  p->len[p->n] = n;
  p->first[p->n] = first;
  p->n++;
  mx__buf_put(&p->text, s, n);
  return p->text.oom ? MX_ERR_OOM : MX_OK;
}

static void pieces_free(pieces *p) {
  free(p->off);
  free(p->len);
  free(p->first);
  mx__buf_free(&p->text);
}

/* Matches of a split pattern in s: a list of (end, is_match) covering s. */
typedef struct {
  size_t *end;
  uint8_t *m;
  size_t n, cap;
} spans;

static int spans_add(spans *sp, size_t end, bool m) {
  if (sp->n == sp->cap) {
    size_t cap = sp->cap ? sp->cap * 2 : 16;
    size_t *e = realloc(sp->end, cap * sizeof *e);
    if (!e) return MX_ERR_OOM;
    sp->end = e;
    uint8_t *q = realloc(sp->m, cap);
    if (!q) return MX_ERR_OOM;
    sp->m = q;
    sp->cap = cap;
  }
  sp->end[sp->n] = end;
  sp->m[sp->n] = m;
  sp->n++;
  return MX_OK;
}

static int find_spans(const mx__pretok *p, const char *s, size_t n, spans *sp) {
  sp->n = 0;
  const uint8_t *u = (const uint8_t *)s;
  size_t i = 0;
  int st = MX_OK;
  switch (p->kind) {
  case MX__PRE_SPLIT:
    if (p->pattern == MX__SPLIT_STRING) {
      size_t pl = strlen(p->str), run = 0;
      while (pl && i + pl <= n) {
        if (!memcmp(s + i, p->str, pl)) {
          if (i > run) st |= spans_add(sp, i, false);
          st |= spans_add(sp, i + pl, true);
          i += pl;
          run = i;
        } else {
          i++;
        }
      }
      if (run < n) st |= spans_add(sp, n, false);
    } else {
      while (i < n) {
        size_t e = mx__split_match(p->pattern, u, n, i);
        if (e <= i) e = i + 1;
        st |= spans_add(sp, e, true);
        i = e;
      }
    }
    break;
  case MX__PRE_DIGITS:
  case MX__PRE_WSSPLIT: {
    size_t run = 0;
    while (i < n) {
      uint32_t cp;
      size_t l = mx__utf8_decode(u + i, n - i, &cp);
      bool hit = p->kind == MX__PRE_DIGITS ? (cp >= '0' && cp <= '9') : mx__is_white_space(cp);
      if (hit) {
        if (i > run) st |= spans_add(sp, i, false);
        st |= spans_add(sp, i + l, true);
        run = i + l;
      }
      i += l;
    }
    if (run < n) st |= spans_add(sp, n, false);
    break;
  }
  }
  return st ? MX_ERR_OOM : MX_OK;
}

/* Split one piece by behavior (HF NormalizedString::split). */
static int split_piece(const char *s, size_t n, bool first, spans *sp, int behavior, bool invert,
                       pieces *out) {
  size_t nn = sp->n;
  size_t *st_ = malloc((nn + 1) * sizeof *st_), *en = malloc((nn + 1) * sizeof *en);
  if (!st_ || !en) {
    free(st_);
    free(en);
    return MX_ERR_OOM;
  }
  size_t k = 0, prev_end = 0;
  bool prev_match = false;
  if (behavior == MX__BEH_MERGED_NEXT) {
    /* fold from the right */
    size_t kk = 0;
    for (size_t j = nn; j-- > 0;) {
      size_t a = j ? sp->end[j - 1] : 0, b = sp->end[j];
      bool m = sp->m[j] ^ invert;
      if (m && !prev_match && kk) st_[kk - 1] = a;
      else {
        st_[kk] = a;
        en[kk] = b;
        kk++;
      }
      prev_match = m;
    }
    for (size_t j = 0; j < kk / 2; j++) {
      size_t t = st_[j];
      st_[j] = st_[kk - 1 - j];
      st_[kk - 1 - j] = t;
      t = en[j];
      en[j] = en[kk - 1 - j];
      en[kk - 1 - j] = t;
    }
    k = kk;
  } else {
    for (size_t j = 0; j < nn; j++) {
      size_t a = prev_end, b = sp->end[j];
      bool m = sp->m[j] ^ invert;
      prev_end = b;
      switch (behavior) {
      case MX__BEH_REMOVED:
        if (!m) {
          st_[k] = a;
          en[k++] = b;
        }
        break;
      case MX__BEH_ISOLATED:
        st_[k] = a;
        en[k++] = b;
        break;
      case MX__BEH_MERGED_PREV:
        if (m && !prev_match && k) en[k - 1] = b;
        else {
          st_[k] = a;
          en[k++] = b;
        }
        break;
      case MX__BEH_CONTIGUOUS:
        if (m == prev_match && k) en[k - 1] = b;
        else {
          st_[k] = a;
          en[k++] = b;
        }
        break;
      }
      prev_match = m;
    }
  }
  int st = MX_OK;
  for (size_t j = 0; j < k && !st; j++)
    if (en[j] > st_[j]) st = pieces_add(out, s + st_[j], en[j] - st_[j], first && st_[j] == 0);
  free(st_);
  free(en);
  return st;
}

static void replace_all(const char *s, size_t n, const char *pat, const char *with, mx__buf *out) {
  size_t pl = strlen(pat), wl = strlen(with), run = 0;
  for (size_t i = 0; pl && i + pl <= n;) {
    if (!memcmp(s + i, pat, pl)) {
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

/* General pre-tokenization of a normalized segment into pieces. */
static int pretokenize(const mx_tokenizer *tok, const char *s, size_t n, bool at_start,
                       pieces *out) {
  pieces cur = {0}, next = {0};
  spans sp = {0};
  int st = pieces_add(&cur, s, n, at_start);
  mx__buf tmp = {0};
  for (int k = 0; k < tok->n_pretoks && !st; k++) {
    const mx__pretok *p = &tok->pretoks[k];
    next.n = 0;
    next.text.n = 0;
    for (size_t i = 0; i < cur.n && !st; i++) {
      const char *ps = cur.text.p + cur.off[i];
      size_t pn = cur.len[i];
      bool first = cur.first[i];
      switch (p->kind) {
      case MX__PRE_SPLIT:
      case MX__PRE_DIGITS:
      case MX__PRE_WSSPLIT: {
        int beh = p->kind == MX__PRE_SPLIT ? p->behavior
                  : p->kind == MX__PRE_WSSPLIT ? MX__BEH_REMOVED
                  : p->individual ? MX__BEH_ISOLATED : MX__BEH_CONTIGUOUS;
        st = find_spans(p, ps, pn, &sp);
        if (!st) st = split_piece(ps, pn, first, &sp, beh, p->kind == MX__PRE_SPLIT && p->invert,
                                  &next);
        break;
      }
      case MX__PRE_BYTELEVEL: {
        tmp.n = 0;
        if (p->add_prefix_space && !(pn && ps[0] == ' ')) mx__buf_putc(&tmp, ' ');
        mx__buf_put(&tmp, ps, pn);
        if (tmp.oom) {
          st = MX_ERR_OOM;
          break;
        }
        if (p->use_regex) {
          mx__pretok g = {.kind = MX__PRE_SPLIT, .pattern = MX__SPLIT_REGEX_GPT2};
          st = find_spans(&g, tmp.p, tmp.n, &sp);
          if (!st) st = split_piece(tmp.p, tmp.n, first, &sp, MX__BEH_ISOLATED, false, &next);
        } else if (tmp.n) {
          st = pieces_add(&next, tmp.p, tmp.n, first);
        }
        break;
      }
      case MX__PRE_METASPACE: {
        tmp.n = 0;
        size_t rl = strlen(p->str);
        mx__buf rep = {0};
        replace_all(ps, pn, " ", p->str, &rep);
        bool starts = rep.n >= rl && !memcmp(rep.p, p->str, rl);
        if (!starts && (p->prepend_scheme == 0 || (p->prepend_scheme == 1 && first)))
          mx__buf_puts(&tmp, p->str);
        mx__buf_put(&tmp, rep.p ? rep.p : "", rep.n);
        mx__buf_free(&rep);
        if (tmp.oom) {
          st = MX_ERR_OOM;
          break;
        }
        if (p->split) {
          mx__pretok g = {.kind = MX__PRE_SPLIT, .pattern = MX__SPLIT_STRING, .str = p->str};
          st = find_spans(&g, tmp.p, tmp.n, &sp);
          if (!st) st = split_piece(tmp.p, tmp.n, first, &sp, MX__BEH_MERGED_NEXT, false, &next);
        } else if (tmp.n) {
          st = pieces_add(&next, tmp.p, tmp.n, first);
        }
        break;
      }
      }
    }
    pieces t = cur;
    cur = next;
    next = t;
  }
  free(sp.end);
  free(sp.m);
  mx__buf_free(&tmp);
  pieces_free(&next);
  if (st) {
    pieces_free(&cur);
    return st;
  }
  *out = cur;
  return MX_OK;
}

/* Normalized text (no added tokens in it) -> ids. */
static int encode_plain(enc_ctx *e, const char *s, size_t n, bool at_start) {
  const mx_tokenizer *tok = e->tok;
  if (!n) return MX_OK;
  if (tok->simple_split) {
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
      size_t j = mx__split_match(tok->simple_pattern, u, n, i);
      if (j <= i) j = i + 1;
      int st = model_piece(e, s + i, j - i);
      if (st) return st;
      i = j;
    }
    return MX_OK;
  }
  if (!tok->n_pretoks) return model_piece(e, s, n);
  pieces p;
  int st = pretokenize(tok, s, n, at_start, &p);
  if (st) return st;
  for (size_t i = 0; i < p.n && !st; i++) st = model_piece(e, p.text.p + p.off[i], p.len[i]);
  pieces_free(&p);
  return st;
}

static bool is_word_char(uint32_t cp) { return cp == '_' || mx__is_letter(cp) || mx__is_number(cp); }

/* Find the next added token in s[from..n) (leftmost-longest). Returns the
 * token index or -1; ms..me is the span to replace (lstrip/rstrip applied). */
static int next_added(const mx_tokenizer *tok, const mx__trie *trie, const char *s, size_t n,
                      size_t from, size_t floor, size_t *ms, size_t *me) {
  const uint8_t *u = (const uint8_t *)s;
  for (size_t i = from; i < n; i++) {
    if (!(trie->first[u[i] >> 3] & (1u << (u[i] & 7)))) continue;
    int32_t t;
    size_t l = mx__trie_longest(trie, u + i, n - i, &t);
    if (!l) continue;
    const mx__added *a = &tok->added[t];
    size_t start = i, stop = i + l;
    if (a->single_word) {
      bool ok = true;
      if (start > 0) {
        size_t b = start - 1;
        while (b > 0 && (u[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        mx__utf8_decode(u + b, start - b, &cp);
        if (is_word_char(cp)) ok = false;
      }
      if (stop < n) {
        uint32_t cp;
        mx__utf8_decode(u + stop, n - stop, &cp);
        if (is_word_char(cp)) ok = false;
      }
      if (!ok) {
        i = stop - 1; /* the match is consumed even when rejected */
        continue;
      }
    }
    if (a->lstrip) {
      while (start > floor) {
        size_t b = start - 1;
        while (b > floor && (u[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        mx__utf8_decode(u + b, start - b, &cp);
        if (!mx__is_white_space(cp)) break;
        start = b;
      }
    }
    if (a->rstrip) {
      while (stop < n) {
        uint32_t cp;
        size_t k = mx__utf8_decode(u + stop, n - stop, &cp);
        if (!mx__is_white_space(cp)) break;
        stop += k;
      }
    }
    *ms = start;
    *me = stop;
    return t;
  }
  return -1;
}

static int encode_normalized_segment(enc_ctx *e, const char *s, size_t n, bool at_start) {
  const mx_tokenizer *tok = e->tok;
  mx__buf nb = {0};
  const char *ns = s;
  size_t nn = n;
  if (tok->n_norms) {
    int st = mx__normalize(tok, s, n, &nb);
    if (st) {
      mx__buf_free(&nb);
      return st;
    }
    ns = nb.p ? nb.p : "";
    nn = nb.n;
  }
  int st = MX_OK;
  size_t pos = 0;
  while (!st) {
    size_t ms = nn, me = nn;
    int t = tok->trie_norm.n ? next_added(tok, &tok->trie_norm, ns, nn, pos, pos, &ms, &me) : -1;
    if (ms > pos) st = encode_plain(e, ns + pos, ms - pos, at_start && pos == 0);
    if (t < 0 || st) break;
    mx__ids_push(e->out, tok->added[t].id);
    pos = me;
  }
  mx__buf_free(&nb);
  return st;
}

int mx_tokenizer_encode(const mx_tokenizer *tok, const char *text, size_t len, bool add_special,
                        int32_t **ids, size_t *n) {
  if (!tok || (!text && len) || !ids || !n)
    return mx__set_error(MX_ERR_INVALID_ARG, "mx_tokenizer_encode: NULL argument");
  *ids = NULL;
  *n = 0;
  mx__ids out = {0};
  mx__buf clean = {0};
  if (!text) text = "";
  if (!mx__utf8_valid(text, len)) {
    mx__utf8_lossy(&clean, text, len);
    if (clean.oom) return mx__set_error(MX_ERR_OOM, "out of memory");
    text = clean.p;
    len = clean.n;
  }
  int st = MX_OK;
  if (tok->kind == MX__TOK_SPM) {
    st = mx__spm_encode(tok, text, len, add_special, &out);
  } else {
    enc_ctx e = {.tok = tok, .out = &out};
    e.scratch = mx__bpe_scratch_new();
    if (!e.scratch) st = MX_ERR_OOM;
    if (!st && len > 2048) {
      e.cache.on = true;
      if (mx__strmap_init(&e.cache.map, 4096)) st = MX_ERR_OOM;
    }
    mx__ids_reserve(&out, len / 3 + 8);
    if (add_special)
      for (size_t i = 0; i < tok->post_prefix.n; i++) mx__ids_push(&out, tok->post_prefix.p[i]);
    size_t pos = 0;
    while (!st) {
      size_t ms = len, me = len;
      int t = tok->trie_raw.n ? next_added(tok, &tok->trie_raw, text, len, pos, pos, &ms, &me) : -1;
      if (ms > pos) st = encode_normalized_segment(&e, text + pos, ms - pos, pos == 0);
      if (t < 0 || st) break;
      mx__ids_push(&out, tok->added[t].id);
      pos = me;
    }
    if (add_special)
      for (size_t i = 0; i < tok->post_suffix.n; i++) mx__ids_push(&out, tok->post_suffix.p[i]);
    mx__bpe_scratch_free(e.scratch);
    cache_free(&e.cache);
  }
  mx__buf_free(&clean);
  if (!st && out.oom) st = mx__set_error(MX_ERR_OOM, "out of memory encoding");
  if (st) {
    if (st == MX_ERR_OOM) mx__set_error(MX_ERR_OOM, "out of memory encoding");
    free(out.p);
    return st;
  }
  if (!out.p) out.p = malloc(sizeof(int32_t));
  if (!out.p) return mx__set_error(MX_ERR_OOM, "out of memory");
  *ids = out.p;
  *n = out.n;
  return MX_OK;
}

int mx_tokenizer_decode(const mx_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len) {
  if (!tok || (!ids && n) || !text)
    return mx__set_error(MX_ERR_INVALID_ARG, "mx_tokenizer_decode: NULL argument");
  *text = NULL;
  if (len) *len = 0;
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= tok->n_ids)
      return mx__set_error(MX_ERR_RANGE, "decode: id %d out of range [0, %d)", ids[i], tok->n_ids);
  mx__buf out = {0};
  int st = tok->kind == MX__TOK_SPM ? mx__spm_decode(tok, ids, n, skip_special, &out)
                                    : mx__hf_decode(tok, ids, n, skip_special, &out);
  if (st) {
    mx__buf_free(&out);
    return st;
  }
  *text = mx__buf_finish(&out, len);
  if (!*text) return mx__set_error(MX_ERR_OOM, "out of memory decoding");
  return MX_OK;
}

/* ---- accessors --------------------------------------------------------------------- */

size_t mx_tokenizer_vocab_size(const mx_tokenizer *tok) { return tok ? (size_t)tok->n_ids : 0; }

const char *mx_tokenizer_id_to_token(const mx_tokenizer *tok, int32_t id) {
  if (!tok || id < 0 || id >= tok->n_ids) return NULL;
  return tok->tokens[id];
}

int32_t mx_tokenizer_token_to_id(const mx_tokenizer *tok, const char *token) {
  if (!tok || !token) return -1;
  return mx__strmap_get(&tok->all, token, strlen(token));
}

bool mx_tokenizer_is_special(const mx_tokenizer *tok, int32_t id) {
  return tok && id >= 0 && id < tok->n_ids && tok->special[id];
}

int32_t mx_tokenizer_bos_id(const mx_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int32_t mx_tokenizer_eos_id(const mx_tokenizer *tok) { return tok ? tok->eos_id : -1; }

const char *mx_tokenizer_special_token(const mx_tokenizer *tok, const char *name) {
  if (!tok || !name) return NULL;
  if (!strcmp(name, "bos_token")) return tok->bos_token;
  if (!strcmp(name, "eos_token")) return tok->eos_token;
  if (!strcmp(name, "unk_token")) return tok->unk_token;
  if (!strcmp(name, "pad_token")) return tok->pad_token;
  return NULL;
}

const char *mx_tokenizer_chat_template(const mx_tokenizer *tok) {
  return tok ? tok->chat_template : NULL;
}
const char *mx_tokenizer_config_json(const mx_tokenizer *tok) {
  return tok ? tok->config_json : NULL;
}
