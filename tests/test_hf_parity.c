/* test_hf_parity.c — logits parity with Hugging Face transformers.
 *
 * tests/fixtures/hf/<arch>/ holds a tiny randomly initialised model saved by
 * transformers' save_pretrained (config.json, model.safetensors), the token
 * ids it was run on (ids.json) and its float32 logits [T, vocab]
 * (logits.npy); tests/gen/gen_hf_parity.py made them. Each test loads the
 * directory with mx_lm_load, runs the ids and requires
 *     max |ours - theirs| / max |theirs| <= 1e-4,
 * printing that error (and the largest elementwise relative error among
 * logits of at least 1% of the maximum) per architecture. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/ops.h"
#include "test.h"

#define FIXTURES "tests/fixtures/hf"
#define TOL 1e-4

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    b = NULL;
  }
  if (b) b[n] = 0;
  fclose(f);
  return b;
}

/* The ids of <dir>/ids.json into ids[cap]; returns their count or -1. */
static int read_ids(const char *dir, int32_t *ids, int cap) {
  char p[512];
  snprintf(p, sizeof p, "%s/ids.json", dir);
  char *t = slurp(p);
  cJSON *o = t ? cJSON_Parse(t) : NULL;
  free(t);
  int n = 0;
  const cJSON *e;
  if (!cJSON_IsArray(o)) n = -1;
  else
    cJSON_ArrayForEach(e, o) {
      if (n < 0 || n >= cap || !cJSON_IsNumber(e)) {
        n = -1;
        break;
      }
      ids[n++] = (int32_t)e->valuedouble;
    }
  cJSON_Delete(o);
  return n;
}

/* Runs the fixture of `arch`; *err: the normwise relative error. Returns a
 * message on failure to set up (NULL when the comparison ran). */
static const char *run_fixture(const char *arch, double *err, double *elem_err, int64_t *at,
                               float *ours_at, float *theirs_at) {
  static char msg[1024];
  char dir[256], p[512];
  snprintf(dir, sizeof dir, FIXTURES "/%s", arch);
  int32_t ids[256];
  int n = read_ids(dir, ids, 256);
  if (n <= 0) {
    snprintf(msg, sizeof msg, "%s: cannot read ids.json", dir);
    return msg;
  }
  snprintf(p, sizeof p, "%s/logits.npy", dir);
  mx_array *ref = mx_load_npy(p);
  mx_lm_load_options lo = {.no_tokenizer = true};
  mx_lm_model *m = mx_lm_load(dir, &lo);
  if (!ref || !m) {
    snprintf(msg, sizeof msg, "%s: %s", dir, mx_last_error());
    mx_array_free(ref);
    mx_lm_free(m);
    return msg;
  }
  int64_t V = mx_lm_get_config(m)->vocab_size;
  mx_array *t = mx_array_from_data(ids, (int64_t[]){n}, 1, MX_INT32);
  mx_array *logits = mx_lm_forward(m, t, NULL);
  mx_array *l2 = logits ? mx_reshape(logits, (int64_t[]){n, V}, 2) : NULL;
  mx_array *l32 = l2 ? mx_astype(l2, MX_FLOAT32) : NULL;
  mx_array *r32 = mx_astype(ref, MX_FLOAT32);
  const char *res = NULL;
  if (!l32 || !r32 || mx_eval((mx_array *[]){l32, r32}, 2)) {
    snprintf(msg, sizeof msg, "%s: forward failed: %s", dir, mx_last_error());
    res = msg;
  } else if (mx_array_ndim(r32) != 2 || mx_array_dim(r32, 0) != n || mx_array_dim(r32, 1) != V) {
    snprintf(msg, sizeof msg, "%s: logits.npy is not [%d, %lld]", dir, n, (long long)V);
    res = msg;
  } else {
    const float *a = mx_array_data(l32), *b = mx_array_data(r32);
    int64_t N = (int64_t)n * V;
    double bmax = 0, dmax = 0;
    for (int64_t i = 0; i < N; i++) bmax = fmax(bmax, fabs((double)b[i]));
    *at = -1;
    *elem_err = 0;
    for (int64_t i = 0; i < N; i++) {
      double d = fabs((double)a[i] - (double)b[i]);
      if (!(d <= dmax)) { /* NaN-safe: a NaN becomes the error */
        dmax = d;
        *at = i;
      }
      if (fabs((double)b[i]) >= 0.01 * bmax) *elem_err = fmax(*elem_err, d / fabs((double)b[i]));
    }
    *err = bmax > 0 ? dmax / bmax : dmax;
    if (isnan(dmax) || *at < 0) *err = INFINITY;
    if (*at >= 0) {
      *ours_at = a[*at];
      *theirs_at = b[*at];
    }
    if (*err > TOL) { /* the first mismatching values */
      int shown = 0;
      for (int64_t i = 0; i < N && shown < 8; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= TOL * bmax)) {
          fprintf(stderr, "    %s [t=%lld, v=%lld]: ours %.7g, transformers %.7g\n", arch,
                  (long long)(i / V), (long long)(i % V), a[i], b[i]);
          shown++;
        }
      }
    }
  }
  mx_array_free(t);
  mx_array_free(logits);
  mx_array_free(l2);
  mx_array_free(l32);
  mx_array_free(r32);
  mx_array_free(ref);
  mx_lm_free(m);
  return res;
}

static void check_arch(const char *arch, bool *failed, char *why, size_t whylen) {
  double err = 0, elem = 0;
  int64_t at = -1;
  float o = 0, r = 0;
  const char *msg = run_fixture(arch, &err, &elem, &at, &o, &r);
  *failed = true;
  if (msg) {
    snprintf(why, whylen, "%s", msg);
    return;
  }
  fprintf(stderr, "  hf parity %-8s max rel error %.3g (normwise), %.3g (elementwise, |x| >= 1%% of max)\n",
          arch, err, elem);
  if (err > TOL) {
    snprintf(why, whylen, "%s: max rel error %.3g > %g (worst at %lld: ours %.7g, transformers %.7g)",
             arch, err, TOL, (long long)at, o, r);
    return;
  }
  *failed = false;
}

/* The same logits through the KV cache: a prefill of 5 ids, then one id at
 * a time (exercises cache offsets, the sliding window across steps). Returns
 * the normwise error, or -1 with msg set. */
static double run_cached(const char *arch, char *msg, size_t msglen) {
  char dir[256], p[512];
  snprintf(dir, sizeof dir, FIXTURES "/%s", arch);
  int32_t ids[256];
  int n = read_ids(dir, ids, 256);
  snprintf(p, sizeof p, "%s/logits.npy", dir);
  mx_array *ref = n > 0 ? mx_load_npy(p) : NULL;
  mx_lm_load_options lo = {.no_tokenizer = true};
  mx_lm_model *m = ref ? mx_lm_load(dir, &lo) : NULL;
  mx_lm_cache *c = m ? mx_lm_cache_new(m) : NULL;
  mx_array *r32 = ref ? mx_astype(ref, MX_FLOAT32) : NULL;
  double err = -1;
  if (!c || !r32 || mx_eval(&r32, 1)) {
    snprintf(msg, msglen, "%s: %s", dir, mx_last_error());
    goto done;
  }
  int64_t V = mx_lm_get_config(m)->vocab_size;
  const float *b = mx_array_data(r32);
  double bmax = 0, dmax = 0;
  for (int64_t i = 0; i < (int64_t)n * V; i++) bmax = fmax(bmax, fabs((double)b[i]));
  for (int start = 0; start < n;) {
    int len = start == 0 ? (n < 5 ? n : 5) : 1;
    mx_array *t = mx_array_from_data(ids + start, (int64_t[]){1, len}, 2, MX_INT32);
    mx_array *l = mx_lm_forward(m, t, c);
    mx_array *l32 = l ? mx_astype(l, MX_FLOAT32) : NULL;
    int st = l32 ? mx_eval(&l32, 1) : MX_ERR_INVALID_ARG;
    if (!st) {
      const float *a = mx_array_data(l32);
      for (int64_t i = 0; i < (int64_t)len * V; i++) {
        double d = fabs((double)a[i] - (double)b[(int64_t)start * V + i]);
        if (!(d <= dmax)) dmax = isnan(d) ? INFINITY : d;
      }
    }
    mx_array_free(t);
    mx_array_free(l);
    mx_array_free(l32);
    if (st) {
      snprintf(msg, msglen, "%s: cached forward at %d failed: %s", dir, start, mx_last_error());
      goto done;
    }
    start += len;
  }
  err = bmax > 0 ? dmax / bmax : dmax;
done:
  mx_array_free(r32);
  mx_array_free(ref);
  mx_lm_cache_free(c);
  mx_lm_free(m);
  return err;
}

#define PARITY_TEST_UNCACHED(arch)                    \
  TEST(hf_parity_##arch) {                            \
    bool failed;                                      \
    char why[1200];                                   \
    check_arch(#arch, &failed, why, sizeof why);      \
    if (failed) TEST_FAIL("%s", why);                 \
  }

#define PARITY_TEST(arch)                                                                  \
  TEST(hf_parity_##arch) {                                                                 \
    bool failed;                                                                           \
    char why[1200];                                                                        \
    check_arch(#arch, &failed, why, sizeof why);                                           \
    if (failed) TEST_FAIL("%s", why);                                                      \
  }                                                                                        \
  TEST(hf_parity_cached_##arch) {                                                          \
    char why[1200];                                                                        \
    double e = run_cached(#arch, why, sizeof why);                                         \
    if (e < 0) TEST_FAIL("%s", why);                                                       \
    fprintf(stderr, "  hf parity %-8s with the KV cache (5 + 1 + 1 ...): %.3g\n", #arch, e); \
    if (!(e <= TOL)) TEST_FAIL("%s with the KV cache: max rel error %.3g > %g", #arch, e, TOL); \
  }

PARITY_TEST(llama)
PARITY_TEST(mistral)
PARITY_TEST(qwen2)
PARITY_TEST(qwen3)
PARITY_TEST(gemma)
PARITY_TEST(gemma2)
PARITY_TEST(phi3)
PARITY_TEST(mistral_swa)   /* mistral with sliding_window 5 < 12 ids */
PARITY_TEST(phi3_longrope) /* Phi-3.5 style longrope, prompt within the original context */
PARITY_TEST(qwen2_swa)     /* use_sliding_window, layers >= max_window_layers (1) slide */
PARITY_TEST(qwen2_swa_all) /* every layer slides */
PARITY_TEST(qwen2_swa_off) /* a window given but use_sliding_window false */
PARITY_TEST(qwen3_swa)
PARITY_TEST(mistral_swa4)  /* window 4, shorter than the cached prefill of 5 */
/* longrope with the 12 ids beyond original_max_position_embeddings (8): long
 * factors for every position. Not through the cache: a 5-id prefill rotates
 * its keys with the short factors (as transformers' cache would), so the
 * cached logits legitimately differ from one full pass. */
PARITY_TEST_UNCACHED(phi3_longrope_long)

/* A fixture's config.json with `from` replaced by `to`, alone in a temp
 * dir: loading it must fail with an error naming `want`. */
static void expect_config_error(const char *arch, const char *from, const char *to,
                                const char *want) {
  char p[512], dir[64] = "/tmp/mxc_hf_parity_XXXXXX";
  snprintf(p, sizeof p, FIXTURES "/%s/config.json", arch);
  char *cfg = slurp(p);
  ASSERT_MSG(cfg != NULL, "%s: cannot read", p);
  char *at = strstr(cfg, from);
  ASSERT_MSG(at != NULL, "%s: no \"%s\"", p, from);
  ASSERT(mkdtemp(dir) != NULL);
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "wb");
  ASSERT(f != NULL);
  fwrite(cfg, 1, (size_t)(at - cfg), f);
  fputs(to, f);
  fputs(at + strlen(from), f);
  fclose(f);
  free(cfg);
  mx_lm_model *m = mx_lm_load(dir, &(mx_lm_load_options){.no_tokenizer = true});
  char err[1024];
  snprintf(err, sizeof err, "%s", m ? "" : mx_last_error());
  mx_lm_free(m);
  remove(p);
  rmdir(dir);
  ASSERT_MSG(m == NULL, "%s with %s loaded", arch, to);
  ASSERT_MSG(strstr(err, want) != NULL, "error \"%s\" does not name \"%s\"", err, want);
}

TEST(bad_arch_configs) {
  expect_config_error("gemma2", "\"full_attention\",\n    \"sliding_attention\"",
                      "\"sliding_attention\", \"full_attention\"", "layer_types[1]");
  expect_config_error("phi3_longrope", "\"long_factor\": [\n      1.0,", "\"long_factor\": [",
                      "long_factor");
  expect_config_error("phi3", "\"partial_rotary_factor\": 0.75", "\"partial_rotary_factor\": 0.1",
                      "partial_rotary_factor");
  expect_config_error("gemma", "\"hidden_activation\": \"gelu_pytorch_tanh\"",
                      "\"hidden_activation\": \"relu\"", "relu");
  expect_config_error("gemma2", "\"query_pre_attn_scalar\": 32", "\"query_pre_attn_scalar\": -1",
                      "query_pre_attn_scalar");
  expect_config_error("gemma", "\"model_type\": \"gemma\"", "\"model_type\": \"gemma9\"",
                      "gemma, gemma2, phi3");
}

int main(int argc, char **argv) { return test_main(argc, argv); }
