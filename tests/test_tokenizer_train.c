/* test_tokenizer_train.c — byte-level BPE training against Hugging Face
 * `tokenizers` (fixtures from tests/gen/gen_tokenizer_train_fixtures.py):
 * the same vocabulary and merges as HF's BpeTrainer, our tokenizer.json
 * encoded by HF and by our loader identically, round trips, options and
 * errors. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxc/tokenizer.h"
#include "mxc/tokenizer_train.h"
#include "test.h"

#define FIX "tests/fixtures/tokenizer_train/"

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  size_t got = fread(p, 1, (size_t)n, f);
  fclose(f);
  p[got] = 0;
  if (len) *len = got;
  return p;
}

static cJSON *read_json(const char *path) {
  char *s = read_all(path, NULL);
  if (!s) return NULL;
  cJSON *j = cJSON_Parse(s);
  free(s);
  return j;
}

static mx_bpe_model *train_fixture(int64_t vocab, bool with_specials, bool seen_only) {
  size_t n;
  char *text = read_all(FIX "corpus.txt", &n);
  if (!text) return NULL;
  static const char *const specials[] = {"<|bos|>", "<|eos|>"};
  mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
  o.vocab_size = vocab;
  o.seen_alphabet_only = seen_only;
  if (with_specials) {
    o.special_tokens = specials;
    o.num_special_tokens = 2;
  }
  mx_bpe_model *m = mx_bpe_train(text, n, &o);
  free(text);
  return m;
}

TEST(same_vocab_and_merges_as_hf_bpe_trainer) {
  cJSON *hf = read_json(FIX "hf_trained.json");
  ASSERT_NOT_NULL(hf);
  const cJSON *vocab = cJSON_GetObjectItem(hf, "vocab"), *merges = cJSON_GetObjectItem(hf, "merges");
  mx_bpe_model *m = train_fixture(30000, false, true); /* HF's defaults */
  ASSERT_NOT_NULL(m);
  ASSERT_EQ_INT(mx_bpe_model_vocab_size(m), cJSON_GetArraySize(vocab));
  ASSERT_EQ_INT(mx_bpe_model_num_merges(m), cJSON_GetArraySize(merges));
  int i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, vocab) {
    ASSERT_MSG(!strcmp(mx_bpe_model_token(m, i), it->valuestring), "token %d: ours '%s', HF '%s'", i,
               mx_bpe_model_token(m, i), it->valuestring);
    i++;
  }
  i = 0;
  cJSON_ArrayForEach(it, merges) {
    int32_t a, b;
    ASSERT_OK(mx_bpe_model_merge(m, i, &a, &b));
    char buf[512];
    snprintf(buf, sizeof buf, "%s %s", mx_bpe_model_token(m, a), mx_bpe_model_token(m, b));
    ASSERT_MSG(!strcmp(buf, it->valuestring), "merge %d: ours '%s', HF '%s'", i, buf, it->valuestring);
    i++;
  }
  /* a smaller vocabulary stops early: the merges are a prefix */
  mx_bpe_model *s = train_fixture(500, false, true);
  ASSERT_NOT_NULL(s);
  ASSERT_EQ_INT(mx_bpe_model_vocab_size(s), 500);
  for (int64_t k = 0; k < mx_bpe_model_num_merges(s); k++) {
    int32_t a, b, c, d;
    ASSERT_OK(mx_bpe_model_merge(s, k, &a, &b));
    ASSERT_OK(mx_bpe_model_merge(m, k, &c, &d));
    ASSERT(a == c && b == d);
  }
  mx_bpe_model_free(s);
  mx_bpe_model_free(m);
  cJSON_Delete(hf);
}

TEST(retraining_reproduces_the_committed_tokenizer_json) {
  mx_bpe_model *m = train_fixture(800, true, false);
  ASSERT_NOT_NULL(m);
  ASSERT_EQ_INT(mx_bpe_model_vocab_size(m), 800);
  ASSERT_STR_EQ(mx_bpe_model_token(m, 0), "<|bos|>");
  ASSERT_STR_EQ(mx_bpe_model_token(m, 1), "<|eos|>");
  ASSERT_STR_EQ(mx_bpe_model_token(m, 2), "!"); /* the alphabet by code point: '!' = U+0021 first */
  ASSERT_STR_EQ(mx_bpe_model_token(m, 2 + 255), "\xC5\x83"); /* U+0143 last */
  char *json = mx_bpe_model_tokenizer_json(m);
  char *want = read_all(FIX "tokenizer.json", NULL);
  ASSERT_NOT_NULL(json);
  ASSERT_NOT_NULL(want);
  ASSERT_MSG(!strcmp(json, want), "tokenizer.json differs from the committed fixture");
  free(json);
  free(want);
  mx_bpe_model_free(m);
}

TEST(hf_and_our_loader_encode_our_file_identically) {
  cJSON *fx = read_json(FIX "hf_ids.json");
  ASSERT_NOT_NULL(fx);
  mx_tokenizer *tok = mx_tokenizer_load(FIX "tokenizer.json");
  ASSERT_MSG(tok != NULL, "%s", mx_last_error());
  ASSERT_EQ_INT(mx_tokenizer_vocab_size(tok), 800);
  ASSERT_EQ_INT(mx_tokenizer_bos_id(tok), 0);
  ASSERT_EQ_INT(mx_tokenizer_eos_id(tok), 1);
  const cJSON *strs = cJSON_GetObjectItem(fx, "strings"), *ids = cJSON_GetObjectItem(fx, "ids");
  ASSERT(cJSON_GetArraySize(strs) > 300 && cJSON_GetArraySize(strs) == cJSON_GetArraySize(ids));
  int k = 0;
  const cJSON *s;
  cJSON_ArrayForEach(s, strs) {
    const cJSON *want = cJSON_GetArrayItem(ids, k);
    int32_t *got;
    size_t n;
    ASSERT_OK(mx_tokenizer_encode(tok, s->valuestring, strlen(s->valuestring), false, &got, &n));
    bool same = (int)n == cJSON_GetArraySize(want);
    for (size_t i = 0; same && i < n; i++) same = got[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
    ASSERT_MSG(same, "string %d '%s': %zu ids, HF %d", k, s->valuestring, n, cJSON_GetArraySize(want));
    /* and back */
    char *text;
    size_t len;
    ASSERT_OK(mx_tokenizer_decode(tok, got, n, false, &text, &len));
    ASSERT_MSG(!strcmp(text, s->valuestring), "decode of string %d: '%s'", k, text);
    free(text);
    free(got);
    k++;
  }
  mx_tokenizer_free(tok);
  cJSON_Delete(fx);
}

TEST(trained_tokenizer_round_trips_and_compresses) {
  size_t n;
  char *text = read_all(FIX "corpus.txt", &n);
  ASSERT_NOT_NULL(text);
  char dir[] = "/tmp/mxc_test_toktrain_XXXXXX";
  ASSERT(mkdtemp(dir) != NULL);
  const char *specials[] = {"<s>"};
  mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
  o.vocab_size = 1000;
  o.special_tokens = specials;
  o.num_special_tokens = 1;
  mx_bpe_model *m = mx_bpe_train(text, n, &o);
  ASSERT_NOT_NULL(m);
  ASSERT_OK(mx_bpe_model_save(m, dir));
  mx_bpe_model_free(m);
  mx_tokenizer *tok = mx_tokenizer_load(dir);
  ASSERT_MSG(tok != NULL, "%s", mx_last_error());
  ASSERT_EQ_INT(mx_tokenizer_bos_id(tok), 0);
  ASSERT_EQ_INT(mx_tokenizer_eos_id(tok), 0); /* one special token: both */
  int32_t *ids;
  size_t k;
  ASSERT_OK(mx_tokenizer_encode(tok, text, n, false, &ids, &k));
  ASSERT_MSG(k < n * 3 / 5, "%zu ids for %zu bytes", k, n); /* BPE compresses */
  char *back;
  size_t len;
  ASSERT_OK(mx_tokenizer_decode(tok, ids, k, false, &back, &len));
  ASSERT_EQ_INT(len, n);
  ASSERT(!memcmp(back, text, n));
  free(back);
  free(ids);
  /* bytes never seen in the corpus still encode (all 256 are tokens) */
  const char odd[] = "\x01\x02 \xC3\xBF\xF0\x9F\xA6\x99";
  ASSERT_OK(mx_tokenizer_encode(tok, odd, sizeof odd - 1, false, &ids, &k));
  ASSERT_OK(mx_tokenizer_decode(tok, ids, k, false, &back, &len));
  ASSERT_STR_EQ(back, odd);
  free(back);
  free(ids);
  mx_tokenizer_free(tok);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ASSERT_EQ_INT(system(cmd), 0);
  free(text);
}

TEST(min_frequency_and_small_vocabularies) {
  mx_bpe_model *all = train_fixture(30000, false, false);
  size_t n;
  char *text = read_all(FIX "corpus.txt", &n);
  ASSERT(all && text);
  mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
  o.vocab_size = 30000;
  o.min_frequency = 20;
  mx_bpe_model *f = mx_bpe_train(text, n, &o);
  ASSERT_NOT_NULL(f);
  ASSERT(mx_bpe_model_num_merges(f) > 10 && mx_bpe_model_num_merges(f) < mx_bpe_model_num_merges(all));
  for (int64_t k = 0; k < mx_bpe_model_num_merges(f); k++) { /* a prefix of the unrestricted run */
    int32_t a, b, c, d;
    ASSERT_OK(mx_bpe_model_merge(f, k, &a, &b));
    ASSERT_OK(mx_bpe_model_merge(all, k, &c, &d));
    ASSERT(a == c && b == d);
  }
  mx_bpe_model_free(f);
  /* a vocabulary smaller than the alphabet: the alphabet, no merges */
  o = MX_BPE_TRAIN_DEFAULTS;
  o.vocab_size = 10;
  f = mx_bpe_train(text, n, &o);
  ASSERT_NOT_NULL(f);
  ASSERT_EQ_INT(mx_bpe_model_vocab_size(f), 256);
  ASSERT_EQ_INT(mx_bpe_model_num_merges(f), 0);
  mx_bpe_model_free(f);
  /* empty text: the alphabet only; invalid UTF-8 is read as U+FFFD */
  f = mx_bpe_train("", 0, &o);
  ASSERT_NOT_NULL(f);
  ASSERT_EQ_INT(mx_bpe_model_vocab_size(f), 256);
  mx_bpe_model_free(f);
  o.vocab_size = 300;
  f = mx_bpe_train("ab\xff\xfe ab\xff\xfe ab\xff\xfe", 14, &o);
  ASSERT_NOT_NULL(f);
  ASSERT(mx_bpe_model_num_merges(f) > 0);
  bool has_fffd = false;
  for (int64_t i = 0; i < mx_bpe_model_vocab_size(f); i++)
    if (strstr(mx_bpe_model_token(f, i), "\xC3\xAF\xC2\xBF\xC2\xBD")) has_fffd = true; /* ï¿½ */
  ASSERT(has_fffd);
  mx_bpe_model_free(f);
  mx_bpe_model_free(all);
  free(text);
}

TEST(errors_name_the_option_or_file) {
  mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
  o.vocab_size = 0;
  ASSERT(mx_bpe_train("abc", 3, &o) == NULL);
  ASSERT(strstr(mx_last_error(), "--vocab-size") != NULL);
  o = MX_BPE_TRAIN_DEFAULTS;
  o.min_frequency = -1;
  ASSERT(mx_bpe_train("abc", 3, &o) == NULL);
  ASSERT(strstr(mx_last_error(), "--min-frequency") != NULL);
  o = MX_BPE_TRAIN_DEFAULTS;
  const char *bad[] = {""};
  o.special_tokens = bad;
  o.num_special_tokens = 1;
  ASSERT(mx_bpe_train("abc", 3, &o) == NULL);
  ASSERT(strstr(mx_last_error(), "special token 0") != NULL);
  ASSERT(mx_bpe_train("abc", 3, NULL) == NULL);
  o = MX_BPE_TRAIN_DEFAULTS;
  ASSERT(mx_bpe_train_file("/nonexistent/corpus.txt", &o) == NULL);
  ASSERT(strstr(mx_last_error(), "/nonexistent/corpus.txt") != NULL);
  ASSERT(mx_bpe_model_save(NULL, "x") != MX_OK);
  mx_bpe_model *m = mx_bpe_train("hello hello", 11, &o);
  ASSERT_NOT_NULL(m);
  ASSERT(mx_bpe_model_save(m, "/nonexistent/dir") != MX_OK);
  ASSERT(strstr(mx_last_error(), "/nonexistent/dir") != NULL);
  int32_t a, b;
  ASSERT(mx_bpe_model_merge(m, 999, &a, &b) != MX_OK);
  ASSERT(mx_bpe_model_token(m, -1) == NULL);
  mx_bpe_model_free(m);
  mx_bpe_model_free(NULL);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
