/* cmd_tokenizer_train.c — `mxc tokenizer-train`: train a byte-level BPE
 * tokenizer (Hugging Face BpeTrainer semantics) and write tokenizer.json.
 *
 *   mxc tokenizer-train --data corpus.txt --vocab-size 4096 [--min-frequency 0]
 *       [--special-tokens "<|bos|>,<|eos|>"] [--seen-alphabet-only] -o DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "commands.h"
#include "mxc/tokenizer_train.h"

static int usage(FILE *f, int rc) {
  fprintf(f,
          "usage: mxc tokenizer-train --data FILE.txt -o DIR [options]\n"
          "  --vocab-size N         target vocabulary size, special tokens included (4096)\n"
          "  --min-frequency F      never merge a pair seen fewer than F times (0)\n"
          "  --special-tokens LIST  comma-separated, ids 0.. (\"<|bos|>,<|eos|>\"; \"\" for none)\n"
          "                         the first is bos_token, the second eos_token\n"
          "  --seen-alphabet-only   only the bytes found in the corpus are base tokens\n"
          "                         (default: all 256)\n"
          "Writes DIR/tokenizer.json (byte-level BPE, GPT-2 split) and tokenizer_config.json.\n");
  return rc;
}

static int parse_i64(const char *flag, const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) {
    fprintf(stderr, "mxc tokenizer-train: %s expects an integer, got '%s'\n", flag, s);
    return -1;
  }
  *out = v;
  return 0;
}

int mxc_cmd_tokenizer_train(int argc, char **argv) {
  mx_bpe_train_options o = MX_BPE_TRAIN_DEFAULTS;
  const char *data = NULL, *out = NULL, *specials = "<|bos|>,<|eos|>";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (!strcmp(a, "--seen-alphabet-only")) {
      o.seen_alphabet_only = true;
      continue;
    }
    if (strncmp(a, "-", 1)) {
      fprintf(stderr, "mxc tokenizer-train: unexpected argument '%s'\n", a);
      return usage(stderr, 2);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc tokenizer-train: %s needs a value\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int rc = 0;
    if (!strcmp(a, "--data")) data = v;
    else if (!strcmp(a, "-o") || !strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--vocab-size")) rc = parse_i64(a, v, &o.vocab_size);
    else if (!strcmp(a, "--min-frequency")) rc = parse_i64(a, v, &o.min_frequency);
    else if (!strcmp(a, "--special-tokens")) specials = v;
    else {
      fprintf(stderr, "mxc tokenizer-train: unknown option '%s'\n", a);
      return usage(stderr, 2);
    }
    if (rc) return 2;
  }
  if (!data || !out) {
    fprintf(stderr, "mxc tokenizer-train: --data FILE and -o DIR are required\n");
    return usage(stderr, 2);
  }
  /* the special tokens: a copy cut at the commas */
  char *buf = strdup(specials);
  const char **list = calloc(strlen(specials) / 2 + 2, sizeof *list);
  if (!buf || !list) {
    free(buf);
    free(list);
    fprintf(stderr, "mxc tokenizer-train: out of memory\n");
    return 1;
  }
  int ns = 0;
  for (char *p = buf; *p;) {
    char *c = strchr(p, ',');
    if (c) *c = 0;
    if (*p) list[ns++] = p;
    if (!c) break;
    p = c + 1;
  }
  o.special_tokens = list;
  o.num_special_tokens = ns;
  int rc = 0;
  struct stat sb;
  if (stat(out, &sb) && mkdir(out, 0777)) {
    fprintf(stderr, "mxc tokenizer-train: cannot create -o %s: %s\n", out, strerror(errno));
    rc = 1;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  mx_bpe_model *m = rc ? NULL : mx_bpe_train_file(data, &o);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (!rc && (!m || mx_bpe_model_save(m, out))) {
    fprintf(stderr, "mxc %s\n", mx_last_error());
    rc = 1;
  }
  if (!rc)
    fprintf(stderr, "mxc tokenizer-train: %s -> %s/tokenizer.json: %lld tokens, %lld merges, %.2f s\n",
            data, out, (long long)mx_bpe_model_vocab_size(m), (long long)mx_bpe_model_num_merges(m),
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
  mx_bpe_model_free(m);
  free(buf);
  free(list);
  return rc;
}
