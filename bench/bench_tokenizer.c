/* bench_tokenizer.c — tokenizer load and encode/decode speed.
 *
 *   bench_tokenizer [TOKENIZER_PATH [TEXT_FILE [BYTES [REPEATS]]]]
 *
 * Defaults: MXC_DATA_DIR/tokenizers/llama3/tokenizer.json and the first
 * 1,000,000 bytes of MXC_DATA_DIR/corpus/tinyshakespeare.txt, best of 5.
 * One thread. bench/peers/hf_tokenize_bench.mjs measures Hugging Face's
 * tokenizers on the same input; docs/bench-tokenizer.md has the numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/tokenizer.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
  const char *dd = getenv("MXC_DATA_DIR");
  if (!dd || !*dd) dd = "../shared/data";
  char tokpath[1024], textpath[1024];
  snprintf(tokpath, sizeof tokpath, "%s/tokenizers/llama3/tokenizer.json", dd);
  snprintf(textpath, sizeof textpath, "%s/corpus/tinyshakespeare.txt", dd);
  const char *tp = argc > 1 ? argv[1] : tokpath, *xp = argc > 2 ? argv[2] : textpath;
  size_t want = argc > 3 ? (size_t)atol(argv[3]) : 1000000;
  int reps = argc > 4 ? atoi(argv[4]) : 5;

  FILE *f = fopen(xp, "rb");
  if (!f) {
    fprintf(stderr, "bench_tokenizer: cannot open %s (set MXC_DATA_DIR)\n", xp);
    return 1;
  }
  char *text = malloc(want + 1);
  size_t len = fread(text, 1, want, f);
  fclose(f);
  /* repeat the file if it is shorter than requested */
  while (len < want) {
    size_t k = len < want - len ? len : want - len;
    memcpy(text + len, text, k);
    len += k;
  }

  double t0 = now();
  mx_tokenizer *tok = mx_tokenizer_load(tp);
  double t_load = now() - t0;
  if (!tok) {
    fprintf(stderr, "bench_tokenizer: %s\n", mx_last_error());
    return 1;
  }
  double best_enc = 1e9, best_dec = 1e9;
  size_t nids = 0;
  for (int r = 0; r < reps; r++) {
    int32_t *ids;
    size_t n;
    t0 = now();
    if (mx_tokenizer_encode(tok, text, len, false, &ids, &n)) {
      fprintf(stderr, "encode: %s\n", mx_last_error());
      return 1;
    }
    double te = now() - t0;
    if (te < best_enc) best_enc = te;
    char *out;
    size_t ol;
    t0 = now();
    if (mx_tokenizer_decode(tok, ids, n, false, &out, &ol)) return 1;
    double td = now() - t0;
    if (td < best_dec) best_dec = td;
    free(out);
    free(ids);
    nids = n;
  }
  printf("tokenizer  %s\n", tp);
  printf("text       %zu bytes -> %zu tokens\n", len, nids);
  printf("load       %.1f ms\n", t_load * 1e3);
  printf("encode     %.1f ms  (%.2f MB/s, best of %d)\n", best_enc * 1e3, (double)len / best_enc / 1e6, reps);
  printf("decode     %.1f ms\n", best_dec * 1e3);
  mx_tokenizer_free(tok);
  free(text);
  return 0;
}
