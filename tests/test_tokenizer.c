/* test_tokenizer.c — tokenizers against Hugging Face `tokenizers` and
 * Google's sentencepiece.
 *
 * - llama.cpp's vectors (MXC_DATA_DIR/tokenizer-vectors): llama-bpe with
 *   llama3/tokenizer.json, qwen2 with qwen3/tokenizer.json, llama-spm with
 *   llama2/tokenizer.model;
 * - our corpus (tests/fixtures/tokenizer/corpus.json) with the ids HF /
 *   sentencepiece produced for it (tests/gen/gen_tokenizer_fixtures.sh), for
 *   llama3, qwen3, mistral and llama2, with and without special tokens, plus
 *   the decoded strings;
 * - round trips, the streaming detokenizer, error paths, small synthetic
 *   tokenizer.json files that exercise components the shipped ones lack.
 * Cases needing the shared data skip when it is absent.
 */
#include "test.h"

#include <cjson/cJSON.h>
#include <sys/stat.h>

#include "mxc/tokenizer.h"

#ifndef MXC_SOURCE_DIR
#define MXC_SOURCE_DIR "."
#endif

/* ---- helpers ------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
    free(p);
    fclose(f);
    return NULL;
  }
  p[n] = 0;
  fclose(f);
  if (len) *len = (size_t)n;
  return p;
}

static bool file_exists(const char *p) {
  struct stat s;
  return !stat(p, &s);
}

/* A shared tokenizer, loaded once per process. */
static mx_tokenizer *shared_tok(const char *rel) {
  static struct {
    char rel[64];
    mx_tokenizer *tok;
  } cache[8];
  for (int i = 0; i < 8; i++)
    if (cache[i].tok && !strcmp(cache[i].rel, rel)) return cache[i].tok;
  char path[1024];
  snprintf(path, sizeof path, "%s/tokenizers/%s", test_data_dir(), rel);
  if (!file_exists(path)) return NULL;
  mx_tokenizer *tok = mx_tokenizer_load(path);
  if (!tok) {
    fprintf(stderr, "  load %s: %s\n", path, mx_last_error());
    return NULL;
  }
  for (int i = 0; i < 8; i++)
    if (!cache[i].tok) {
      snprintf(cache[i].rel, sizeof cache[i].rel, "%s", rel);
      cache[i].tok = tok;
      break;
    }
  return tok;
}

#define NEED_TOK(var, rel)                                                          \
  mx_tokenizer *var = shared_tok(rel);                                              \
  if (!var) TEST_SKIP("%.300s/tokenizers/%.100s not found (set MXC_DATA_DIR)", test_data_dir(), rel)

static void print_ids(const char *label, const int32_t *ids, size_t n) {
  fprintf(stderr, "    %s:", label);
  for (size_t i = 0; i < n && i < 64; i++) fprintf(stderr, " %d", ids[i]);
  fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

/* Encode text and compare with expected ids; returns 0 on match. */
static int check_ids(const mx_tokenizer *tok, const char *text, size_t len, bool special,
                     const int32_t *want, size_t nwant) {
  int32_t *ids;
  size_t n;
  if (mx_tokenizer_encode(tok, text, len, special, &ids, &n)) {
    fprintf(stderr, "    encode failed: %s\n", mx_last_error());
    return 1;
  }
  int bad = n != nwant || (n && memcmp(ids, want, n * sizeof *ids));
  if (bad) {
    fprintf(stderr, "    text: \"%.*s\"\n", (int)(len > 200 ? 200 : len), text);
    print_ids("got ", ids, n);
    print_ids("want", want, nwant);
  }
  free(ids);
  return bad;
}

/* ---- llama.cpp vectors -------------------------------------------------------------- */

static void run_vectors(const char *tokrel, const char *name) {
  NEED_TOK(tok, tokrel);
  char ip[1024], op[1024];
  snprintf(ip, sizeof ip, "%s/tokenizer-vectors/ggml-vocab-%s.gguf.inp", test_data_dir(), name);
  snprintf(op, sizeof op, "%s/tokenizer-vectors/ggml-vocab-%s.gguf.out", test_data_dir(), name);
  char *inp = slurp(ip, NULL), *out = slurp(op, NULL);
  if (!inp || !out) {
    free(inp);
    free(out);
    TEST_SKIP("%.400s not found", ip);
  }
  const char *sep = "\n__ggml_vocab_test__\n";
  int cases = 0, failed = 0;
  char *s = inp, *line = out;
  while (*s || *line) {
    char *e = strstr(s, sep);
    size_t len = e ? (size_t)(e - s) : strlen(s);
    char *nl = strchr(line, '\n');
    if (!nl) break;
    *nl = 0;
    int32_t want[4096];
    size_t nw = 0;
    for (char *p = line; *p;) {
      char *end;
      long v = strtol(p, &end, 10);
      if (end == p) break;
      want[nw++] = (int32_t)v;
      p = end;
    }
    failed += check_ids(tok, s, len, false, want, nw);
    cases++;
    line = nl + 1;
    if (!e) break;
    s = e + strlen(sep);
  }
  free(inp);
  free(out);
  printf("    %s: %d cases, %d failed\n", name, cases, failed);
  ASSERT_EQ_INT(cases, 46);
  ASSERT_EQ_INT(failed, 0);
}

TEST(vectors_llama_bpe) { run_vectors("llama3/tokenizer.json", "llama-bpe"); }
TEST(vectors_qwen2) { run_vectors("qwen3/tokenizer.json", "qwen2"); }
TEST(vectors_llama_spm) { run_vectors("llama2/tokenizer.model", "llama-spm"); }


/* ---- corpus vs. the references ---------------------------------------------------- */

static cJSON *load_fixture(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/%s", MXC_SOURCE_DIR, name);
  char *t = slurp(path, NULL);
  if (!t) return NULL;
  cJSON *j = cJSON_Parse(t);
  free(t);
  return j;
}

static size_t json_ids(const cJSON *arr, int32_t **out) {
  size_t n = (size_t)cJSON_GetArraySize(arr);
  *out = malloc((n + 1) * sizeof **out);
  size_t i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, arr)(*out)[i++] = (int32_t)it->valueint;
  return n;
}

static void corpus_with(const mx_tokenizer *tok, const char *key, bool roundtrip) {
  cJSON *corpus = load_fixture("corpus.json"), *exp = load_fixture("expected.json");
  if (!corpus || !exp) {
    cJSON_Delete(corpus);
    cJSON_Delete(exp);
    TEST_FAIL("tests/fixtures/tokenizer/{corpus,expected}.json missing or malformed");
  }
  const cJSON *e = cJSON_GetObjectItem(exp, key);
  const cJSON *ids = cJSON_GetObjectItem(e, "ids"), *ids_sp = cJSON_GetObjectItem(e, "ids_special"),
              *dec = cJSON_GetObjectItem(e, "decoded_special");
  int n = cJSON_GetArraySize(corpus), bad_ids = 0, bad_dec = 0, bad_rt = 0, rt = 0;
  for (int i = 0; i < n; i++) {
    const char *s = cJSON_GetArrayItem(corpus, i)->valuestring;
    size_t len = strlen(s);
    int32_t *w;
    size_t nw = json_ids(cJSON_GetArrayItem(ids, i), &w);
    bad_ids += check_ids(tok, s, len, false, w, nw);
    free(w);
    nw = json_ids(cJSON_GetArrayItem(ids_sp, i), &w);
    bad_ids += check_ids(tok, s, len, true, w, nw);
    char *text;
    size_t tl;
    ASSERT_OK(mx_tokenizer_decode(tok, w, nw, false, &text, &tl));
    const char *want = cJSON_GetArrayItem(dec, i)->valuestring;
    if (strcmp(text, want)) {
      bad_dec++;
      fprintf(stderr, "    decode #%d: got \"%s\" want \"%s\"\n", i, text, want);
    }
    free(text);
    free(w);
    /* round trip where the reference round-trips */
    if (roundtrip && !strcmp(want, s)) {
      int32_t *x;
      size_t nx;
      ASSERT_OK(mx_tokenizer_encode(tok, s, len, false, &x, &nx));
      ASSERT_OK(mx_tokenizer_decode(tok, x, nx, false, &text, &tl));
      rt++;
      if (tl != len || memcmp(text, s, len)) bad_rt++;
      free(text);
      free(x);
    }
  }
  printf("    %s: %d strings x2, %d id mismatches, %d decode mismatches, %d/%d round trips bad\n",
         key, n, bad_ids, bad_dec, bad_rt, rt);
  cJSON_Delete(corpus);
  cJSON_Delete(exp);
  ASSERT(n > 300);
  ASSERT_EQ_INT(bad_ids, 0);
  ASSERT_EQ_INT(bad_dec, 0);
  ASSERT_EQ_INT(bad_rt, 0);
}

static void run_corpus(const char *tokrel, const char *key, bool roundtrip) {
  NEED_TOK(tok, tokrel);
  corpus_with(tok, key, roundtrip);
}

/* Small SentencePiece models of our own (tests/gen): unigram and BPE with byte
 * fallback and user-defined symbols, against python3-sentencepiece. */
static void run_own_spm(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/%s.model", MXC_SOURCE_DIR, name);
  mx_tokenizer *tok = mx_tokenizer_load(path);
  ASSERT_NOT_NULL(tok);
  corpus_with(tok, name, false);
  mx_tokenizer_free(tok);
}
TEST(corpus_own_spm_unigram) { run_own_spm("spm_unigram"); }
TEST(corpus_own_spm_bpe) { run_own_spm("spm_bpe"); }

TEST(corpus_llama3) { run_corpus("llama3/tokenizer.json", "llama3", true); }
TEST(corpus_qwen3) { run_corpus("qwen3/tokenizer.json", "qwen3", true); }
TEST(corpus_mistral) { run_corpus("mistral/tokenizer.json", "mistral", false); }
TEST(corpus_llama2_sentencepiece) { run_corpus("llama2/tokenizer.model", "llama2", false); }


/* ---- streaming detokenizer ------------------------------------------------------------ */

static void check_stream(const mx_tokenizer *tok, const char *text, bool skip) {
  int32_t *ids;
  size_t n;
  ASSERT_OK(mx_tokenizer_encode(tok, text, strlen(text), true, &ids, &n));
  char *full;
  size_t fl;
  ASSERT_OK(mx_tokenizer_decode(tok, ids, n, skip, &full, &fl));
  mx_detokenizer *d = mx_detokenizer_new(tok, skip);
  ASSERT_NOT_NULL(d);
  char acc[4096];
  size_t al = 0;
  for (size_t i = 0; i < n; i++) {
    const char *piece;
    size_t pl;
    ASSERT_OK(mx_detokenizer_push(d, ids[i], &piece, &pl));
    /* every emitted piece is complete UTF-8 without replacement chars */
    for (size_t k = 0; k + 2 < pl; k++)
      ASSERT_MSG(memcmp(piece + k, "\xEF\xBF\xBD", 3), "piece holds U+FFFD");
    ASSERT(al + pl < sizeof acc);
    memcpy(acc + al, piece, pl);
    al += pl;
  }
  const char *piece;
  size_t pl;
  ASSERT_OK(mx_detokenizer_flush(d, &piece, &pl));
  memcpy(acc + al, piece, pl);
  al += pl;
  acc[al] = 0;
  ASSERT_STR_EQ(acc, full);
  mx_detokenizer_free(d);
  free(full);
  free(ids);
}

static const char *STREAM_TEXTS[] = {
    "Hello world", " leading space and 🦙🦙 llamas", "日本語のテキスト, ünïcödé, 👨‍👩‍👧",
    "line one\nline two\n\n  indented", "<s> special </s> and <|begin_of_text|> text", "",
};

TEST(stream_llama3) {
  NEED_TOK(tok, "llama3/tokenizer.json");
  for (size_t i = 0; i < sizeof STREAM_TEXTS / sizeof *STREAM_TEXTS; i++) {
    check_stream(tok, STREAM_TEXTS[i], false);
    check_stream(tok, STREAM_TEXTS[i], true);
  }
}
TEST(stream_mistral) {
  NEED_TOK(tok, "mistral/tokenizer.json");
  for (size_t i = 0; i < sizeof STREAM_TEXTS / sizeof *STREAM_TEXTS; i++) {
    check_stream(tok, STREAM_TEXTS[i], false);
    check_stream(tok, STREAM_TEXTS[i], true);
  }
}
TEST(stream_llama2_sentencepiece) {
  NEED_TOK(tok, "llama2/tokenizer.model");
  for (size_t i = 0; i < sizeof STREAM_TEXTS / sizeof *STREAM_TEXTS; i++) {
    check_stream(tok, STREAM_TEXTS[i], false);
    check_stream(tok, STREAM_TEXTS[i], true);
  }
}

TEST(stream_holds_partial_utf8) {
  NEED_TOK(tok, "llama3/tokenizer.json");
  /* "🦙" is several byte tokens in Llama 3: nothing is emitted until it is whole */
  int32_t *ids;
  size_t n;
  ASSERT_OK(mx_tokenizer_encode(tok, "🦙", strlen("🦙"), false, &ids, &n));
  ASSERT(n >= 2);
  mx_detokenizer *d = mx_detokenizer_new(tok, false);
  const char *p;
  size_t pl;
  for (size_t i = 0; i + 1 < n; i++) {
    ASSERT_OK(mx_detokenizer_push(d, ids[i], &p, &pl));
    ASSERT_EQ_INT(pl, 0);
  }
  ASSERT_OK(mx_detokenizer_push(d, ids[n - 1], &p, &pl));
  ASSERT_EQ_INT(pl, strlen("🦙"));
  ASSERT(!memcmp(p, "🦙", pl));
  ASSERT_EQ_INT(mx_detokenizer_push(d, -5, &p, &pl), MX_ERR_RANGE);
  mx_detokenizer_free(d);
  mx_detokenizer_free(NULL);
  free(ids);
}

/* ---- API details ----------------------------------------------------------------------- */

TEST(api_llama3) {
  NEED_TOK(tok, "llama3/tokenizer.json");
  ASSERT_EQ_INT(mx_tokenizer_vocab_size(tok), 128256);
  ASSERT_EQ_INT(mx_tokenizer_bos_id(tok), 128000);
  ASSERT_EQ_INT(mx_tokenizer_eos_id(tok), 128001);
  ASSERT_STR_EQ(mx_tokenizer_id_to_token(tok, 9906), "Hello");
  ASSERT_STR_EQ(mx_tokenizer_id_to_token(tok, 1917), "\xC4\xA0world"); /* Ġworld */
  ASSERT_EQ_INT(mx_tokenizer_token_to_id(tok, "<|eot_id|>"), 128009);
  ASSERT(mx_tokenizer_is_special(tok, 128009));
  ASSERT(!mx_tokenizer_is_special(tok, 9906));
  ASSERT(mx_tokenizer_id_to_token(tok, 128256) == NULL);
  ASSERT_NOT_NULL(mx_tokenizer_chat_template(tok));
  ASSERT_STR_EQ(mx_tokenizer_special_token(tok, "bos_token"), "<|begin_of_text|>");
  char *text;
  size_t len;
  int32_t bad[] = {9906, 999999};
  ASSERT_EQ_INT(mx_tokenizer_decode(tok, bad, 2, false, &text, &len), MX_ERR_RANGE);
  /* invalid UTF-8 input reads as U+FFFD, like a Python/Node decode of the bytes */
  int32_t *a, *b;
  size_t na, nb;
  ASSERT_OK(mx_tokenizer_encode(tok, "x\xC3(y\xFF", 6, false, &a, &na));
  ASSERT_OK(mx_tokenizer_encode(tok, "x\xEF\xBF\xBD(y\xEF\xBF\xBD", 10, false, &b, &nb));
  ASSERT_EQ_INT(na, nb);
  ASSERT(!memcmp(a, b, na * sizeof *a));
  free(a);
  free(b);
  /* embedded NUL bytes are text like any other */
  ASSERT_OK(mx_tokenizer_encode(tok, "a\0b", 3, false, &a, &na));
  ASSERT_OK(mx_tokenizer_decode(tok, a, na, false, &text, &len));
  ASSERT_EQ_INT(len, 3);
  ASSERT(!memcmp(text, "a\0b", 3));
  free(text);
  free(a);
}

TEST(api_llama2_sentencepiece) {
  NEED_TOK(tok, "llama2/tokenizer.model");
  ASSERT_EQ_INT(mx_tokenizer_vocab_size(tok), 32000);
  ASSERT_EQ_INT(mx_tokenizer_bos_id(tok), 1);
  ASSERT_EQ_INT(mx_tokenizer_eos_id(tok), 2);
  ASSERT_STR_EQ(mx_tokenizer_id_to_token(tok, 15043), "\xE2\x96\x81Hello");
  ASSERT(mx_tokenizer_is_special(tok, 1));
  /* control and unknown pieces as sentencepiece decodes them */
  int32_t ids[] = {1, 0, 15043, 2};
  char *text;
  size_t len;
  ASSERT_OK(mx_tokenizer_decode(tok, ids, 4, false, &text, &len));
  ASSERT_STR_EQ(text, " \xE2\x81\x87  Hello");
  free(text);
}

/* ---- synthetic tokenizer.json: components the shipped files lack ---------------------- */

static mx_tokenizer *from_json(const char *json) {
  return mx_tokenizer_from_json(json, strlen(json), NULL, 0);
}

static void expect_ids(mx_tokenizer *tok, const char *text, bool special, const int32_t *want,
                       size_t n) {
  ASSERT_EQ_INT(check_ids(tok, text, strlen(text), special, want, n), 0);
}

/* A tiny char-level BPE: vocab a..z, space-marker, some merges. */
#define TINY_VOCAB                                                                        \
  "\"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2, \"c\": 3, \"ab\": 4, \"abc\": 5, "     \
  "\"\\u2581\": 6, \"\\u2581a\": 7, \"<0x21>\": 8, \"x\": 9, \"h\": 10, \"i\": 11, \"hi\": 12}, " \
  "\"merges\": [\"a b\", \"ab c\", \"\\u2581 a\", \"h i\"]"

/* Expected ids: Hugging Face tokenizers on the same JSON (checked by hand with
 * ../shared/ref/hf-tokenize.mjs when this test was written). */
TEST(synthetic_metaspace_and_added_tokens) {
  const char *json =
      "{\"added_tokens\": ["
      "{\"id\": 13, \"content\": \"<sep>\", \"special\": true, \"lstrip\": true, \"rstrip\": true, "
      "\"single_word\": false, \"normalized\": false},"
      "{\"id\": 14, \"content\": \"ha\", \"special\": false, \"single_word\": true, \"normalized\": true}],"
      "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Lowercase\"}, "
      "{\"type\": \"Strip\", \"strip_left\": false, \"strip_right\": true}]},"
      "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
      "\"prepend_scheme\": \"first\", \"split\": true},"
      "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
      "{\"id\": \"<sep>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
      "{\"SpecialToken\": {\"id\": \"<sep>\", \"type_id\": 0}}], \"special_tokens\": {\"<sep>\": "
      "{\"id\": \"<sep>\", \"ids\": [13], \"tokens\": [\"<sep>\"]}}},"
      "\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\"},"
      "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, "
      "\"byte_fallback\": true, " TINY_VOCAB "}}";
  mx_tokenizer *tok = from_json(json);
  ASSERT_NOT_NULL(tok);
  int32_t w1[] = {6, 5, 7};
  expect_ids(tok, "ABC a", false, w1, 3);
  int32_t w2[] = {6, 4, 13, 3}; /* lstrip/rstrip eat the spaces; no prefix after <sep> */
  expect_ids(tok, "ab  <sep>  c", false, w2, 4);
  int32_t w3[] = {14, 6, 10, 1, 9, 8, 0, 6, 14}; /* single_word; '!' -> <0x21>; "qq" one unk */
  expect_ids(tok, "ha hax!qq HA", false, w3, 9);
  int32_t w4[] = {6, 9, 10, 1, 6, 10, 1, 0, 6, 14}; /* '_' is a word character */
  expect_ids(tok, "xha ha_ ha", false, w4, 10);
  int32_t w5[] = {13, 13, 1, 13, 13};
  expect_ids(tok, " <sep>a<sep>", true, w5, 5);
  struct {
    int32_t ids[4];
    size_t n;
    const char *want;
  } dec[] = {{{6, 5, 7}, 3, "abc a"}, {{13, 6, 1, 13}, 4, "<sep> a<sep>"},
             {{14, 6, 12}, 3, "ha hi"}, {{6, 8, 8, 1}, 4, "<0x21><0x21>a"}};
  for (size_t i = 0; i < sizeof dec / sizeof *dec; i++) {
    char *text;
    size_t len;
    ASSERT_OK(mx_tokenizer_decode(tok, dec[i].ids, dec[i].n, false, &text, &len));
    ASSERT_STR_EQ(text, dec[i].want);
    free(text);
  }
  mx_tokenizer_free(tok);
}

TEST(unsupported_components_are_named) {
  const char *bad[][2] = {
      {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "model 'WordPiece'"},
      {"{\"normalizer\": {\"type\": \"BertNormalizer\"}, \"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}",
       "normalizer 'BertNormalizer'"},
      {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}, \"behavior\": "
       "\"Isolated\"}, \"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}", "unsupported Split regex"},
      {"{\"decoder\": {\"type\": \"CTC\"}, \"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}", "decoder 'CTC'"},
      {"{\"post_processor\": {\"type\": \"Weird\"}, \"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}",
       "post-processor 'Weird'"},
      {"{\"pre_tokenizer\": {\"type\": \"Punctuation\"}, \"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}",
       "pre-tokenizer 'Punctuation'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    mx_tokenizer *tok = from_json(bad[i][0]);
    ASSERT(tok == NULL);
    ASSERT_EQ_INT(mx_last_status(), MX_ERR_UNSUPPORTED);
    ASSERT_MSG(strstr(mx_last_error(), bad[i][1]), "'%s' lacks '%s'", mx_last_error(), bad[i][1]);
  }
  /* malformed input: format errors, never a crash */
  const char *junk[] = {"", "[]", "{", "{\"model\": 3}", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                        "\"merges\": [\"a b\"]}}"};
  for (size_t i = 0; i < sizeof junk / sizeof *junk; i++) {
    ASSERT(mx_tokenizer_from_json(junk[i], strlen(junk[i]), NULL, 0) == NULL);
    ASSERT_EQ_INT(mx_last_status(), MX_ERR_FORMAT);
  }
  ASSERT(mx_tokenizer_from_sentencepiece("\x0a\x05hello", 7) == NULL);
  ASSERT(mx_tokenizer_load("/nonexistent/tokenizer.json") == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_NOT_FOUND);
  mx_tokenizer_free(NULL);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
