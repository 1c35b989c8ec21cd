/* fuzz_tokenizer_encode.c — libFuzzer: encode arbitrary bytes with real
 * tokenizers (MXC_DATA_DIR/tokenizers/{llama3,qwen3,mistral}/tokenizer.json and
 * llama2/tokenizer.model; the ones present are used, else a small built-in
 * byte-level tokenizer), then decode the ids in full and through the
 * streaming detokenizer; any failure aborts. The first byte picks the tokenizer and the flags. Loading the real tokenizers
 * under ASan needs more than the default memory: -rss_limit_mb=6000. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxc/tokenizer.h"

static mx_tokenizer *toks[5];
static int ntoks;

static const char *BUILTIN =
    "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
    "\"decoder\": {\"type\": \"ByteLevel\"}, \"added_tokens\": [{\"id\": 5, \"content\": \"<|x|>\", "
    "\"special\": true}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, "
    "\"\\u0120\": 3, \"\\u0120ab\": 4}, \"merges\": [\"a b\", \"\\u0120 ab\"]}}";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *dd = getenv("MXC_DATA_DIR");
  if (!dd || !*dd) dd = "../shared/data";
  const char *names[] = {"llama3/tokenizer.json", "qwen3/tokenizer.json", "mistral/tokenizer.json",
                         "llama2/tokenizer.model"};
  for (int i = 0; i < 4; i++) {
    char path[2048];
    snprintf(path, sizeof path, "%s/tokenizers/%s", dd, names[i]);
    FILE *f = fopen(path, "rb");
    if (!f) continue;
    fclose(f);
    mx_tokenizer *t = mx_tokenizer_load(path);
    if (t) toks[ntoks++] = t;
  }
  toks[ntoks++] = mx_tokenizer_from_json(BUILTIN, strlen(BUILTIN), NULL, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!size || !toks[0]) return 0;
  mx_tokenizer *tok = toks[data[0] % ntoks];
  bool special = data[0] & 0x80;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  int32_t *ids;
  size_t n;
  if (mx_tokenizer_encode(tok, text, len, special, &ids, &n) != MX_OK) abort();
  char *out;
  size_t olen;
  if (mx_tokenizer_decode(tok, ids, n, false, &out, &olen) != MX_OK) abort();
  free(out);
  /* streaming gives the same text as a full decode */
  mx_detokenizer *d = mx_detokenizer_new(tok, true);
  for (size_t i = 0; i < n; i++) {
    const char *p;
    size_t pl;
    if (mx_detokenizer_push(d, ids[i], &p, &pl) != MX_OK) abort();
  }
  const char *p;
  size_t pl;
  mx_detokenizer_flush(d, &p, &pl);
  mx_detokenizer_free(d);
  free(ids);
  return 0;
}
