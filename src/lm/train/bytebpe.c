/* bytebpe.c — the byte-level BPE tokenizer.json of trained models: the 256
 * byte tokens (GPT-2's bytes_to_unicode), no merges, <|bos|> and <|eos|>. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mxc/train.h"
#include "train_internal.h"

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves,
 * the others to 256 + n in byte order. */
static unsigned byte_to_codepoint(int b) {
  int n = 0;
  for (int c = 0; c < 256; c++) {
    bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    if (c == b) return printable ? (unsigned)c : 256u + (unsigned)n;
    if (!printable) n++;
  }
  return 0;
}

static void utf8(unsigned cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    out[1] = 0;
  } else { /* all code points here are < 0x800 */
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
  }
}

static cJSON *bytelevel(const char *type, bool pre) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", type);
  cJSON_AddBoolToObject(o, "add_prefix_space", false);
  cJSON_AddBoolToObject(o, "trim_offsets", true);
  cJSON_AddBoolToObject(o, "use_regex", !pre);
  return o;
}

static cJSON *added(int id, const char *content) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", id);
  cJSON_AddStringToObject(o, "content", content);
  cJSON_AddBoolToObject(o, "single_word", false);
  cJSON_AddBoolToObject(o, "lstrip", false);
  cJSON_AddBoolToObject(o, "rstrip", false);
  cJSON_AddBoolToObject(o, "normalized", false);
  cJSON_AddBoolToObject(o, "special", true);
  return o;
}

char *mx_train_byte_tokenizer_json(void) {
  cJSON *root = cJSON_CreateObject();
  if (!root) goto oom;
  cJSON_AddStringToObject(root, "version", "1.0");
  cJSON_AddNullToObject(root, "truncation");
  cJSON_AddNullToObject(root, "padding");
  cJSON *at = cJSON_AddArrayToObject(root, "added_tokens");
  cJSON_AddItemToArray(at, added(MX_TRAIN_BOS_ID, "<|bos|>"));
  cJSON_AddItemToArray(at, added(MX_TRAIN_EOS_ID, "<|eos|>"));
  cJSON_AddNullToObject(root, "normalizer");
  cJSON_AddItemToObject(root, "pre_tokenizer", bytelevel("ByteLevel", true));
  cJSON_AddNullToObject(root, "post_processor");
  cJSON_AddItemToObject(root, "decoder", bytelevel("ByteLevel", false));
  cJSON *model = cJSON_AddObjectToObject(root, "model");
  cJSON_AddStringToObject(model, "type", "BPE");
  cJSON_AddNullToObject(model, "dropout");
  cJSON_AddNullToObject(model, "unk_token");
  cJSON_AddNullToObject(model, "continuing_subword_prefix");
  cJSON_AddNullToObject(model, "end_of_word_suffix");
  cJSON_AddBoolToObject(model, "fuse_unk", false);
  cJSON_AddBoolToObject(model, "byte_fallback", false);
  cJSON_AddBoolToObject(model, "ignore_merges", false);
  cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
  for (int b = 0; b < 256; b++) {
    char s[4];
    utf8(byte_to_codepoint(b), s);
    cJSON_AddNumberToObject(vocab, s, b);
  }
  cJSON_AddNumberToObject(vocab, "<|bos|>", MX_TRAIN_BOS_ID);
  cJSON_AddNumberToObject(vocab, "<|eos|>", MX_TRAIN_EOS_ID);
  cJSON_AddArrayToObject(model, "merges");
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  if (!s) goto oom;
  return s;
oom:
  mx__set_error(MX_ERR_OOM, "byte tokenizer: out of memory");
  return NULL;
}

int mx__train_write_text(const char *dir, const char *name, const char *text) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
  FILE *f = fopen(tmp, "wb");
  if (!f) return mx__set_error(MX_ERR_IO, "train: cannot write %s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  bool ok = fwrite(text, 1, n, f) == n;
  ok &= fclose(f) == 0;
  if (!ok || rename(tmp, path)) {
    remove(tmp);
    return mx__set_error(MX_ERR_IO, "train: cannot write %s", path);
  }
  return MX_OK;
}

int mx_train_write_byte_tokenizer(const char *dir) {
  if (!dir) return mx__set_error(MX_ERR_INVALID_ARG, "byte tokenizer: dir is NULL");
  char *json = mx_train_byte_tokenizer_json();
  if (!json) return mx_last_status();
  int st = mx__train_write_text(dir, "tokenizer.json", json);
  free(json);
  if (st) return st;
  static const char cfg[] =
      "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n"
      "  \"bos_token\": \"<|bos|>\",\n  \"eos_token\": \"<|eos|>\",\n"
      "  \"add_bos_token\": false,\n  \"add_eos_token\": false,\n"
      "  \"clean_up_tokenization_spaces\": false,\n"
      "  \"model_max_length\": 1000000000000000019884624838656\n}\n";
  return mx__train_write_text(dir, "tokenizer_config.json", cfg);
}
