/* fuzz_tokenizer_json.c — libFuzzer: load arbitrary bytes as tokenizer.json
 * and as a SentencePiece tokenizer.model; when one loads, encode and decode a
 * few strings. Must never crash, leak or hang. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxc/tokenizer.h"

static void exercise(mx_tokenizer *tok) {
  static const char *texts[] = {"", "hello world", " a  b\n\tc <s> 123 é😀", "\xff\xfe"};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    int32_t *ids;
    size_t n;
    if (mx_tokenizer_encode(tok, texts[i], strlen(texts[i]), i & 1, &ids, &n) == MX_OK) {
      char *text;
      size_t len;
      if (mx_tokenizer_decode(tok, ids, n, i & 2, &text, &len) == MX_OK) free(text);
      free(ids);
    }
  }
  size_t v = mx_tokenizer_vocab_size(tok);
  int32_t some[4] = {0, (int32_t)(v / 2), (int32_t)(v ? v - 1 : 0), 0};
  char *text;
  size_t len;
  if (v && mx_tokenizer_decode(tok, some, 4, false, &text, &len) == MX_OK) free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mx_tokenizer *tok = mx_tokenizer_from_json((const char *)data, size, NULL, 0);
  if (tok) {
    exercise(tok);
    mx_tokenizer_free(tok);
  }
  tok = mx_tokenizer_from_sentencepiece(data, size);
  if (tok) {
    exercise(tok);
    mx_tokenizer_free(tok);
  }
  return 0;
}
