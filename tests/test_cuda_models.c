/* test_cuda_models.c — model parity between the CUDA and CPU backends.
 *
 * For every architecture fixture of tests/fixtures/hf/ (tiny random models
 * saved by transformers, see test_hf_parity.c) the logits computed on the
 * GPU must equal the CPU's:
 *   - float32 weights, whole sequence:          normwise rel. error <= 1e-4
 *   - float32, through the KV cache (prefill 5, then one id at a time)
 *   - bfloat16 weights (mx_nn_set_dtype) on both sides: <= 2e-2
 *   - 4-bit quantized (mx_nn_quantize, group 32) on both sides: <= 1e-3
 * and the greedy continuation of 16 tokens must be the same ids.
 * Every case skips where there is no GPU (or no CUDA build). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm/model/lm_internal.h" /* mx__lm_replayed_steps */
#include "mxc/mxc.h"
#include "test.h"

#define FIXTURES "tests/fixtures/hf"

static const char *const ARCHS[] = {"llama", "mistral", "mistral_swa", "qwen2", "qwen3",
                                    "gemma", "gemma2", "phi3", "phi3_longrope", "qwen2_swa",
                                    "qwen3_swa", "mistral_swa4"};
#define NARCH ((int)(sizeof ARCHS / sizeof *ARCHS))

static int read_ids(const char *dir, int32_t *ids, int cap) {
  char p[512];
  snprintf(p, sizeof p, "%s/ids.json", dir);
  FILE *f = fopen(p, "rb");
  if (!f) return -1;
  char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *o = cJSON_Parse(buf);
  int k = 0;
  const cJSON *e;
  if (!cJSON_IsArray(o)) k = -1;
  else
    cJSON_ArrayForEach(e, o) {
      if (k < 0 || k >= cap || !cJSON_IsNumber(e)) {
        k = -1;
        break;
      }
      ids[k++] = (int32_t)e->valuedouble;
    }
  cJSON_Delete(o);
  return k;
}

typedef enum { W_F32, W_BF16, W_Q4 } wkind;

static mx_lm_model *load(const char *arch, wkind w) {
  char dir[256];
  snprintf(dir, sizeof dir, FIXTURES "/%s", arch);
  mx_lm_load_options lo = {.no_tokenizer = true};
  mx_lm_model *m = mx_lm_load(dir, &lo);
  if (!m) return NULL;
  int st = 0;
  if (w == W_BF16) st = mx_nn_set_dtype(mx_lm_module(m), MX_BFLOAT16);
  if (w == W_Q4) st = mx_nn_quantize(mx_lm_module(m), 32, 4, NULL, NULL);
  if (st) {
    mx_lm_free(m);
    return NULL;
  }
  return m;
}

/* Logits (T, V) as float32 on the host, computed on device d; with a cache
 * when cached (prefill 5 ids, then one at a time). NULL on error. */
static float *logits_on(mx_lm_model *m, const int32_t *ids, int n, mx_device d, bool cached) {
  int64_t V = mx_lm_get_config(m)->vocab_size;
  float *out = malloc(sizeof(float) * (size_t)n * (size_t)V);
  mx_device prev = mx_default_device();
  if (mx_set_default_device(d) < 0) {
    free(out);
    return NULL;
  }
  mx_lm_cache *c = cached ? mx_lm_cache_new(m) : NULL;
  int ok = 1;
  for (int start = 0; start < n && ok;) {
    int len = !cached ? n : start == 0 ? (n < 5 ? n : 5) : 1;
    mx_array *t = mx_array_from_data(ids + start, (int64_t[]){1, len}, 2, MX_INT32);
    mx_array *l = mx_lm_forward(m, t, c);
    mx_array *l32 = l ? mx_astype(l, MX_FLOAT32) : NULL;
    ok = l32 && !mx_eval(&l32, 1);
    if (ok) memcpy(out + (size_t)start * (size_t)V, mx_array_data(l32),
                   sizeof(float) * (size_t)len * (size_t)V);
    mx_array_free(t);
    mx_array_free(l);
    mx_array_free(l32);
    start += len;
  }
  mx_lm_cache_free(c);
  mx_set_default_device(prev);
  if (!ok) {
    free(out);
    return NULL;
  }
  return out;
}

static double normwise(const float *a, const float *b, size_t n) {
  double bmax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) bmax = fmax(bmax, fabs((double)b[i]));
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= dmax)) dmax = isnan(d) ? INFINITY : d;
  }
  return bmax > 0 ? dmax / bmax : dmax;
}

static int check(wkind w, bool cached, double tol) {
  static const char *const wn[] = {"float32", "bfloat16", "q4g32"};
  int failed = 0;
  for (int a = 0; a < NARCH; a++) {
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "/%s", ARCHS[a]);
    int32_t ids[256];
    int n = read_ids(dir, ids, 256);
    mx_lm_model *m = n > 0 ? load(ARCHS[a], w) : NULL;
    if (!m) {
      fprintf(stderr, "  %s: cannot load: %s\n", ARCHS[a], mx_last_error());
      failed++;
      continue;
    }
    float *cpu = logits_on(m, ids, n, MX_CPU, cached);
    float *gpu = cpu ? logits_on(m, ids, n, MX_GPU, cached) : NULL;
    if (!cpu || !gpu) {
      fprintf(stderr, "  %s %s: forward failed: %s\n", ARCHS[a], wn[w], mx_last_error());
      failed++;
    } else {
      size_t N = (size_t)n * (size_t)mx_lm_get_config(m)->vocab_size;
      double e = normwise(gpu, cpu, N);
      fprintf(stderr, "  cuda parity %-14s %-8s %s: rel error %.3g\n", ARCHS[a], wn[w],
              cached ? "cached" : "full  ", e);
      if (!(e <= tol)) failed++;
    }
    free(cpu);
    free(gpu);
    mx_lm_free(m);
  }
  return failed;
}

#define NEED_GPU()                                                    \
  do {                                                                \
    if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available"); \
  } while (0)

TEST(float32_logits_equal_cpu) {
  NEED_GPU();
  ASSERT_EQ_INT(check(W_F32, false, 1e-4), 0);
}

TEST(float32_logits_through_kv_cache_equal_cpu) {
  NEED_GPU();
  ASSERT_EQ_INT(check(W_F32, true, 1e-4), 0);
}

TEST(bfloat16_logits_equal_cpu) {
  NEED_GPU();
  ASSERT_EQ_INT(check(W_BF16, false, 2e-2), 0);
}

TEST(quantized_logits_equal_cpu) {
  NEED_GPU();
  ASSERT_EQ_INT(check(W_Q4, false, 1e-3), 0);
  ASSERT_EQ_INT(check(W_Q4, true, 1e-3), 0);
}

static int collect(void *ctx, int32_t id) {
  int32_t *v = ctx;
  v[1 + v[0]++] = id;
  return 0;
}

TEST(greedy_generation_equals_cpu) {
  NEED_GPU();
  for (int a = 0; a < NARCH; a++) {
    mx_lm_model *m = load(ARCHS[a], W_F32);
    ASSERT(m);
    int32_t prompt[] = {1, 5, 9, 3};
    int32_t got[2][40] = {{0}};
    mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
    o.max_tokens = 16;
    o.stop_on_eos = false;
    for (int d = 0; d < 2; d++) {
      mx_set_default_device(d ? MX_GPU : MX_CPU);
      int st = mx_lm_generate(m, prompt, 4, &o, collect, got[d], NULL);
      mx_set_default_device(MX_CPU);
      ASSERT_OK(st);
    }
    ASSERT_EQ_INT(got[0][0], 16);
    ASSERT_EQ_INT(got[1][0], 16);
    int same = !memcmp(got[0], got[1], sizeof got[0]);
    if (!same) fprintf(stderr, "  %s: greedy ids differ between CPU and GPU\n", ARCHS[a]);
    ASSERT(same);
    mx_lm_free(m);
  }
}

/* Greedy decoding on the GPU replays one captured graph per token where
 * the model allows it (static caches, see generate.c): the ids must be
 * those of the step-by-step path (MXC_CUDA_GRAPH=0), for every weight
 * kind, and the replay path must have run for the plain architectures. */
TEST(greedy_graph_replay_equals_step_by_step) {
  NEED_GPU();
  const char *prev = getenv("MXC_CUDA_GRAPH");
  char *saved = prev ? strdup(prev) : NULL;
  int differ = 0;
  for (int w = 0; w < 3; w++)
    for (int a = 0; a < NARCH; a++) {
      mx_lm_model *m = load(ARCHS[a], (wkind)w);
      ASSERT(m);
      int32_t prompt[] = {1, 5, 9, 3, 7, 2};
      int32_t got[2][72] = {{0}};
      mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
      o.max_tokens = 48;
      o.stop_on_eos = false;
      uint64_t r0 = mx__lm_replayed_steps();
      for (int g = 0; g < 2; g++) {
        if (g) unsetenv("MXC_CUDA_GRAPH");
        else setenv("MXC_CUDA_GRAPH", "0", 1);
        mx_set_default_device(MX_GPU);
        int st = mx_lm_generate(m, prompt, 6, &o, collect, got[g], NULL);
        mx_set_default_device(MX_CPU);
        ASSERT_OK(st);
      }
      uint64_t replays = mx__lm_replayed_steps() - r0;
      ASSERT_EQ_INT(got[0][0], 48);
      ASSERT_EQ_INT(got[1][0], 48);
      bool plain = !strcmp(ARCHS[a], "llama") || !strcmp(ARCHS[a], "qwen3");
      if (plain && replays != 47) {
        fprintf(stderr, "  %s: %llu replayed steps, want 47\n", ARCHS[a],
                (unsigned long long)replays);
        differ++;
      }
      if (memcmp(got[0], got[1], sizeof got[0])) {
        fprintf(stderr, "  %s (weights %d): greedy ids differ with graph replay (%llu replays)\n",
                ARCHS[a], w, (unsigned long long)replays);
        differ++;
      }
      mx_lm_free(m);
    }
  if (saved) setenv("MXC_CUDA_GRAPH", saved, 1);
  else unsetenv("MXC_CUDA_GRAPH");
  free(saved);
  ASSERT_EQ_INT(differ, 0);
}

static int collect_upto(void *ctx, int32_t id) {
  int32_t *v = ctx;
  v[1 + v[0]++] = id;
  return v[0] >= 11; /* stops after 11 ids */
}

/* Greedy replays are queued one token ahead of the host (the next replay
 * before the id is read): a stop in the middle (the callback returning
 * nonzero) discards the replays queued past it, and the ids, for this and
 * a second generation on the same model, are those of the step-by-step
 * path. */
TEST(greedy_replay_ahead_stops_cleanly) {
  NEED_GPU();
  const char *prev = getenv("MXC_CUDA_GRAPH");
  char *saved = prev ? strdup(prev) : NULL;
  mx_lm_model *m = load("llama", W_BF16);
  ASSERT(m);
  int32_t prompt[] = {1, 5, 9, 3, 7, 2};
  int32_t got[2][2][72] = {{{0}}};
  mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
  o.max_tokens = 40;
  o.stop_on_eos = false;
  uint64_t r0 = mx__lm_replayed_steps();
  for (int g = 0; g < 2; g++) {
    if (g) unsetenv("MXC_CUDA_GRAPH");
    else setenv("MXC_CUDA_GRAPH", "0", 1);
    mx_set_default_device(MX_GPU);
    for (int run = 0; run < 2; run++) {
      int st = mx_lm_generate(m, prompt, 6 - run, &o, collect_upto, got[g][run], NULL);
      ASSERT_OK(st);
    }
    mx_set_default_device(MX_CPU);
  }
  uint64_t replays = mx__lm_replayed_steps() - r0;
  if (saved) setenv("MXC_CUDA_GRAPH", saved, 1);
  else unsetenv("MXC_CUDA_GRAPH");
  free(saved);
  for (int run = 0; run < 2; run++) {
    ASSERT_EQ_INT(got[0][run][0], 11);
    ASSERT_EQ_INT(got[1][run][0], 11);
    ASSERT_MSG(!memcmp(got[0][run], got[1][run], sizeof got[0][run]),
               "run %d: greedy ids differ with replays queued ahead", run);
  }
  /* 10 replays a run make its 11 ids; the replay for the 12th id and the
   * one queued behind it were already queued when the callback stopped */
  ASSERT_MSG(replays >= 20 && replays <= 24, "%llu replays", (unsigned long long)replays);
  mx_lm_free(m);
}

static mx_array *lazy_sample(void *ctx, mx_array *logits) {
  return mx_sampler_sample(ctx, logits, NULL, 0);
}

/* The same with a sampler (temperature and top-p, fixed seed): the replayed
 * steps draw the random key sequence of the step-by-step path. */
TEST(sampled_graph_replay_equals_step_by_step) {
  NEED_GPU();
  const char *prev = getenv("MXC_CUDA_GRAPH");
  char *saved = prev ? strdup(prev) : NULL;
  int differ = 0;
  for (int a = 0; a < NARCH; a++) {
    mx_lm_model *m = load(ARCHS[a], W_F32);
    ASSERT(m);
    int32_t prompt[] = {1, 5, 9, 3, 7, 2};
    int32_t got[2][72] = {{0}};
    uint64_t r0 = mx__lm_replayed_steps();
    for (int g = 0; g < 2; g++) {
      mx_sampler_config sc = mx_sampler_config_default();
      sc.temp = 1.0;
      sc.top_p = 0.9;
      sc.seed = 7;
      mx_sampler *smp = mx_sampler_new(&sc);
      ASSERT(smp);
      mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
      o.max_tokens = 40;
      o.stop_on_eos = false;
      o.lazy_sampler = lazy_sample;
      o.sampler_ctx = smp;
      if (g) unsetenv("MXC_CUDA_GRAPH");
      else setenv("MXC_CUDA_GRAPH", "0", 1);
      mx_set_default_device(MX_GPU);
      int st = mx_lm_generate(m, prompt, 6, &o, collect, got[g], NULL);
      mx_set_default_device(MX_CPU);
      mx_sampler_free(smp);
      ASSERT_OK(st);
    }
    uint64_t replays = mx__lm_replayed_steps() - r0;
    if (!strcmp(ARCHS[a], "llama") && replays != 39) {
      fprintf(stderr, "  %s: %llu replayed sampled steps, want 39\n", ARCHS[a],
              (unsigned long long)replays);
      differ++;
    }
    if (memcmp(got[0], got[1], sizeof got[0])) {
      fprintf(stderr, "  %s: sampled ids differ with graph replay (%llu replays)\n", ARCHS[a],
              (unsigned long long)replays);
      differ++;
    }
    mx_lm_free(m);
  }
  if (saved) setenv("MXC_CUDA_GRAPH", saved, 1);
  else unsetenv("MXC_CUDA_GRAPH");
  free(saved);
  ASSERT_EQ_INT(differ, 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
