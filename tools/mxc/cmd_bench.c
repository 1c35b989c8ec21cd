/* cmd_bench.c — `mxc bench`: prompt and generation speed, as
 * mlx_lm.benchmark.
 *
 *   mxc bench [--model DIR] [-p 512] [-g 128] [-n 3] [--seed S]
 *
 * Each trial prefills a random prompt of p ids (uniform in [0, vocab)),
 * then decodes g tokens greedily (EOS does not stop it), and prints the
 * prompt tokens-per-second, generation tokens-per-second and peak memory;
 * the averages over the n trials follow. As in mlx_lm.benchmark, a warmup
 * run of the same sizes comes first (first-use costs of each shape — GEMM
 * heuristics, buffers the cache does not hold yet — are not timed). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "mxc/lm.h"

int mxc__resolve_model(const char *model, char *dir, size_t n); /* cmd_generate.c */

static int bench_usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc bench [--model DIR] [-p PROMPT_TOKENS] [-g GEN_TOKENS] [-n TRIALS]\n"
             "  --model DIR               default: $MXC_DEFAULT_MODEL, else the repository's models/default\n"
             "  -p, --prompt-tokens N     random prompt length (default 512)\n"
             "  -g, --generation-tokens N tokens to decode (default 128)\n"
             "  -n, --num-trials N        trials (default 3)\n"
             "  --seed S                  seed of the random prompts (default 0)\n");
  return rc;
}

static bool bench_parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool bench_default_model(char *dir, size_t n) {
  const char *env = getenv("MXC_DEFAULT_MODEL");
  if (env && *env) {
    snprintf(dir, n, "%s", env);
    return true;
  }
  char exe[2048];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return false;
  exe[len] = 0;
  struct stat sb;
  for (int up = 0; up < 5; up++) {
    char *slash = strrchr(exe, '/');
    if (!slash) return false;
    *slash = 0;
    snprintf(dir, n, "%s/models/default/config.json", exe);
    if (stat(dir, &sb) == 0) {
      snprintf(dir, n, "%s/models/default", exe);
      return true;
    }
  }
  return false;
}

/* splitmix64: a portable, seedable stream for the prompt ids. */
static uint64_t bench_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int mxc_cmd_bench(int argc, char **argv) {
  const char *model = NULL;
  long p = 512, g = 128, trials = 3, seed = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return bench_usage(stdout, 0);
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc bench: %s needs a value (or is unknown)\n", a);
      return bench_usage(stderr, 2);
    }
    const char *v = argv[++i];
    bool ok = true;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "-p") || !strcmp(a, "--prompt-tokens")) ok = bench_parse_long(v, 1, 1L << 24, &p);
    else if (!strcmp(a, "-g") || !strcmp(a, "--generation-tokens")) ok = bench_parse_long(v, 1, 1L << 24, &g);
    else if (!strcmp(a, "-n") || !strcmp(a, "--num-trials")) ok = bench_parse_long(v, 1, 1000, &trials);
    else if (!strcmp(a, "--seed")) ok = bench_parse_long(v, 0, 0x7fffffffL, &seed);
    else {
      fprintf(stderr, "mxc bench: unknown option %s\n", a);
      return bench_usage(stderr, 2);
    }
    if (!ok) {
      fprintf(stderr, "mxc bench: bad value for %s: '%s'\n", a, v);
      return 2;
    }
  }
  char default_dir[4096];
  if (!model && bench_default_model(default_dir, sizeof default_dir)) model = default_dir;
  if (!model) {
    fprintf(stderr, "mxc bench: --model DIR is required (the bundled models/default was not "
                    "found: set MXC_DEFAULT_MODEL)\n");
    return bench_usage(stderr, 2);
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) return 1;
  mx_lm_load_options lo = {.no_tokenizer = true, .lazy = false};
  mx_lm_model *m = mx_lm_load(dir, &lo);
  if (!m) {
    fprintf(stderr, "mxc: %s\n", mx_last_error());
    return 1;
  }
  int rc = 1;
  int64_t vocab = mx_lm_get_config(m)->vocab_size;
  int32_t *ids = malloc((size_t)p * sizeof *ids);
  if (!ids || vocab <= 0) {
    fprintf(stderr, "mxc bench: out of memory or empty vocabulary\n");
    goto done;
  }
  uint64_t state = (uint64_t)seed;
  printf("Running warmup..\n");
  fflush(stdout);
  {
    for (long i = 0; i < p; i++) ids[i] = (int32_t)(bench_next(&state) % (uint64_t)vocab);
    mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
    opt.max_tokens = (int)g;
    opt.stop_on_eos = false;
    if (mx_lm_generate(m, ids, (int)p, &opt, NULL, NULL, NULL)) {
      fprintf(stderr, "mxc: %s\n", mx_last_error());
      goto done;
    }
  }
  printf("Timing with prompt_tokens=%ld, generation_tokens=%ld, num_trials=%ld.\n", p, g, trials);
  double sum_p = 0, sum_g = 0, sum_mem = 0;
  for (long t = 0; t < trials; t++) {
    for (long i = 0; i < p; i++) ids[i] = (int32_t)(bench_next(&state) % (uint64_t)vocab);
    mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
    opt.max_tokens = (int)g;
    opt.stop_on_eos = false;
    mx_lm_generate_stats st;
    if (mx_lm_generate(m, ids, (int)p, &opt, NULL, NULL, &st)) {
      fprintf(stderr, "mxc: %s\n", mx_last_error());
      goto done;
    }
    double mem = (double)st.peak_memory / 1e9;
    printf("Trial %ld:  prompt_tps=%.3f, generation_tps=%.3f, peak_memory=%.3f\n", t + 1,
           st.prompt_tps, st.generation_tps, mem);
    fflush(stdout);
    sum_p += st.prompt_tps;
    sum_g += st.generation_tps;
    sum_mem += mem;
  }
  printf("Averages: prompt_tps=%.3f, generation_tps=%.3f, peak_memory=%.3f\n",
         sum_p / (double)trials, sum_g / (double)trials, sum_mem / (double)trials);
  rc = 0;
done:
  free(ids);
  mx_lm_free(m);
  return rc;
}
