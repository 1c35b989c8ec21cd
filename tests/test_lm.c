/* test_lm.c — language models: llama2.c conversion and greedy parity on
 * the real stories260K, the HF loader on tiny random llama / qwen2 / qwen3
 * models (written here), quantized checkpoints, bad model directories. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/ops.h"
#include "mxc/random.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static char g_tmp[256];
static const char *tmp_dir(void) {
  if (!g_tmp[0]) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mxc_test_lm_XXXXXX");
    if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
  }
  return g_tmp;
}
/* A fresh subdirectory of the test's temp dir. */
static const char *new_dir(const char *name) {
  static char p[512];
  snprintf(p, sizeof p, "%s/%s", tmp_dir(), name);
  rm_rf(p);
  mkdir(p, 0777);
  return p;
}

static void write_text(const char *dir, const char *name, const char *text) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
  if (b) b[n] = 0;
  fclose(f);
  return b;
}

static const char *stories_bin(void) {
  static char p[512];
  snprintf(p, sizeof p, "%s/models/stories260K/stories260K.bin", test_data_dir());
  return p;
}

/* The fixture: greedy tokens and logit positions. */
typedef struct {
  int tokens[64];
  int ntokens;
  int positions[16];
  int npositions;
} stories_fixture;

static int load_fixture(stories_fixture *fx) {
  char *t = read_text("tests/fixtures/lm/stories260k_greedy.json");
  if (!t) return -1;
  cJSON *o = cJSON_Parse(t);
  free(t);
  if (!o) return -1;
  const cJSON *e;
  fx->ntokens = fx->npositions = 0;
  cJSON_ArrayForEach(e, cJSON_GetObjectItem(o, "tokens")) fx->tokens[fx->ntokens++] = e->valueint;
  cJSON_ArrayForEach(e, cJSON_GetObjectItem(o, "logit_positions"))
      fx->positions[fx->npositions++] = e->valueint;
  cJSON_Delete(o);
  return 0;
}

/* Converts stories260K once per process; skips when the data is absent. */
static const char *stories_dir(void) {
  static char dir[512];
  if (access(stories_bin(), R_OK) != 0)
    TEST_SKIP("stories260K.bin not found under MXC_DATA_DIR (%.300s)", test_data_dir());
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "%s/stories260K", tmp_dir());
    ASSERT_OK(mx_lm_convert_llama2c(stories_bin(), dir));
  }
  return dir;
}

static int collect(void *ctx, int32_t id) {
  int *buf = ctx;
  buf[1 + buf[0]++] = id;
  return 0;
}

/* ---- stories260K ---------------------------------------------------------------------- */

TEST(stories260k_greedy_matches_reference) {
  const char *dir = stories_dir();
  stories_fixture fx;
  ASSERT_OK(load_fixture(&fx));
  ASSERT_EQ_INT(fx.ntokens, 40);
  mx_lm_model *m = mx_lm_load(dir, NULL);
  ASSERT_MSG(m, "load: %s", mx_last_error());
  ASSERT(mx_lm_tokenizer(m) == NULL);
  ASSERT(mx_lm_get_config(m)->tie_word_embeddings);
  int out[1 + 64] = {0};
  mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
  opt.max_tokens = 40;
  opt.stop_on_eos = false;
  mx_lm_generate_stats st;
  int32_t bos = 1;
  ASSERT_OK(mx_lm_generate(m, &bos, 1, &opt, collect, out, &st));
  ASSERT_EQ_INT(out[0], 40);
  ASSERT_EQ_INT(st.generation_tokens, 40);
  for (int i = 0; i < 40; i++)
    ASSERT_MSG(out[1 + i] == fx.tokens[i], "token %d: got %d, reference %d", i, out[1 + i],
               fx.tokens[i]);
  mx_lm_free(m);
}

TEST(stories260k_logits_match_reference) {
  const char *dir = stories_dir();
  stories_fixture fx;
  ASSERT_OK(load_fixture(&fx));
  mx_array *ref = mx_load_npy("tests/fixtures/lm/stories260k_logits.npy");
  ASSERT_NOT_NULL(ref);
  mx_lm_model *m = mx_lm_load(dir, NULL);
  ASSERT_MSG(m, "load: %s", mx_last_error());
  int32_t seq[41] = {1};
  for (int i = 0; i < 40; i++) seq[i + 1] = fx.tokens[i];
  mx_array *t = mx_array_from_data(seq, (int64_t[]){41}, 1, MX_INT32);
  mx_array *logits = mx_lm_forward(m, t, NULL);
  ASSERT_NOT_NULL(logits);
  ASSERT_EQ_INT(mx_array_dim(logits, 1), 41);
  ASSERT_EQ_INT(mx_array_dim(logits, 2), 512);
  float *all = malloc(sizeof(float) * 41 * 512), *r = malloc(sizeof(float) * 16 * 512);
  ASSERT_OK(mx_array_copy_to(logits, MX_FLOAT32, all, 41 * 512));
  ASSERT_OK(mx_array_copy_to(ref, MX_FLOAT32, r, fx.npositions * 512));
  double worst = 0;
  for (int k = 0; k < fx.npositions; k++)
    for (int v = 0; v < 512; v++) {
      double a = all[fx.positions[k] * 512 + v], b = r[k * 512 + v];
      double rel = fabs(a - b) / fmax(fabs(b), 1.0);
      if (rel > worst) worst = rel;
    }
  printf("    stories260K logits: max rel diff %.3g\n", worst);
  ASSERT_MSG(worst <= 1e-4, "logits differ from the float64 reference by %.3g", worst);
  free(all);
  free(r);
  mx_array_free(t);
  mx_array_free(logits);
  mx_array_free(ref);
  mx_lm_free(m);
}

/* A longer prompt prefilled in chunks of 7 continues as the reference. */
TEST(stories260k_chunked_prefill) {
  const char *dir = stories_dir();
  stories_fixture fx;
  ASSERT_OK(load_fixture(&fx));
  mx_lm_model *m = mx_lm_load(dir, NULL);
  ASSERT_MSG(m, "load: %s", mx_last_error());
  int32_t prompt[20] = {1};
  for (int i = 0; i < 19; i++) prompt[i + 1] = fx.tokens[i];
  int out[1 + 64] = {0};
  mx_lm_generate_options opt = MX_LM_GENERATE_DEFAULTS;
  opt.max_tokens = 21;
  opt.prefill_step_size = 7;
  opt.stop_on_eos = false;
  ASSERT_OK(mx_lm_generate(m, prompt, 20, &opt, collect, out, NULL));
  ASSERT_EQ_INT(out[0], 21);
  for (int i = 0; i < 21; i++) ASSERT_EQ_INT(out[1 + i], fx.tokens[19 + i]);
  mx_lm_free(m);
}

TEST(convert_rejects_bad_checkpoints) {
  const char *dir = new_dir("badbin");
  write_text(dir, "short.bin", "abc");
  char p[600];
  snprintf(p, sizeof p, "%s/short.bin", dir);
  ASSERT(mx_lm_convert_llama2c(p, dir) != MX_OK);
  ASSERT(strstr(mx_last_error(), "too short"));
  int32_t h[7] = {64, 172, 5, 8, 4, 512, 512};
  snprintf(p, sizeof p, "%s/trunc.bin", dir);
  FILE *f = fopen(p, "wb");
  fwrite(h, sizeof h, 1, f);
  fclose(f);
  ASSERT(mx_lm_convert_llama2c(p, dir) != MX_OK);
  ASSERT(strstr(mx_last_error(), "does not match its header"));
  ASSERT(mx_lm_convert_llama2c("/nonexistent/x.bin", dir) != MX_OK);
}

/* ---- tiny random HF models -------------------------------------------------------------- */

typedef struct {
  const char *model_type;
  int hidden, inter, layers, heads, kv_heads, vocab;
  bool tie, qkv_bias, qk_norm;
  const char *extra; /* extra config JSON members, e.g. rope_scaling */
} tiny_spec;

static int g_seed = 1;
static void put_rand(mx_map *w, const char *name, int64_t a, int64_t b) {
  mx_array *key = mx_random_key((uint64_t)g_seed++);
  int64_t shape[2] = {a, b};
  mx_array *x = mx_random_normal(shape, b ? 2 : 1, MX_FLOAT32, b ? 0.0 : 1.0, b ? 0.2 : 0.05, key);
  mx_map_set_take(w, name, x);
  mx_array_free(key);
}

/* Weights with HF names for spec (not saved). */
static mx_map *tiny_weights(const tiny_spec *s) {
  mx_map *w = mx_map_new();
  int hd = s->hidden / s->heads;
  char n[160];
  put_rand(w, "model.embed_tokens.weight", s->vocab, s->hidden);
  for (int l = 0; l < s->layers; l++) {
#define P(fmt) (snprintf(n, sizeof n, "model.layers.%d." fmt, l), n)
    put_rand(w, P("self_attn.q_proj.weight"), s->heads * hd, s->hidden);
    put_rand(w, P("self_attn.k_proj.weight"), s->kv_heads * hd, s->hidden);
    put_rand(w, P("self_attn.v_proj.weight"), s->kv_heads * hd, s->hidden);
    put_rand(w, P("self_attn.o_proj.weight"), s->hidden, s->heads * hd);
    if (s->qkv_bias) {
      put_rand(w, P("self_attn.q_proj.bias"), s->heads * hd, 0);
      put_rand(w, P("self_attn.k_proj.bias"), s->kv_heads * hd, 0);
      put_rand(w, P("self_attn.v_proj.bias"), s->kv_heads * hd, 0);
    }
    if (s->qk_norm) {
      put_rand(w, P("self_attn.q_norm.weight"), hd, 0);
      put_rand(w, P("self_attn.k_norm.weight"), hd, 0);
    }
    put_rand(w, P("mlp.gate_proj.weight"), s->inter, s->hidden);
    put_rand(w, P("mlp.up_proj.weight"), s->inter, s->hidden);
    put_rand(w, P("mlp.down_proj.weight"), s->hidden, s->inter);
    put_rand(w, P("input_layernorm.weight"), s->hidden, 0);
    put_rand(w, P("post_attention_layernorm.weight"), s->hidden, 0);
#undef P
  }
  put_rand(w, "model.norm.weight", s->hidden, 0);
  if (!s->tie) put_rand(w, "lm_head.weight", s->vocab, s->hidden);
  return w;
}

static void tiny_config(const char *dir, const tiny_spec *s, const char *more) {
  char cfg[2048];
  snprintf(cfg, sizeof cfg,
           "{\"model_type\": \"%s\", \"hidden_size\": %d, \"intermediate_size\": %d, "
           "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
           "\"vocab_size\": %d, \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, "
           "\"tie_word_embeddings\": %s, \"max_position_embeddings\": 256, "
           "\"eos_token_id\": [3, 5]%s%s%s%s}",
           s->model_type, s->hidden, s->inter, s->layers, s->heads, s->kv_heads, s->vocab,
           s->tie ? "true" : "false", s->extra ? ", " : "", s->extra ? s->extra : "",
           more ? ", " : "", more ? more : "");
  write_text(dir, "config.json", cfg);
}

static const char *write_tiny(const char *name, const tiny_spec *s) {
  const char *dir = new_dir(name);
  tiny_config(dir, s, NULL);
  mx_map *w = tiny_weights(s);
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (mx_save_safetensors(p, w, NULL)) dir = NULL;
  mx_map_free(w);
  return dir;
}

/* Logits of all T tokens at once vs one position at a time through the cache. */
static double full_vs_incremental(mx_lm_model *m, const int32_t *ids, int T) {
  int64_t V = mx_lm_get_config(m)->vocab_size;
  mx_array *t = mx_array_from_data(ids, (int64_t[]){1, T}, 2, MX_INT32);
  mx_array *full = mx_lm_forward(m, t, NULL);
  mx_array_free(t);
  if (!full) return 1e9;
  float *a = malloc(sizeof(float) * (size_t)(T * V)), *b = malloc(sizeof(float) * (size_t)V);
  mx_array_copy_to(full, MX_FLOAT32, a, T * V);
  mx_array_free(full);
  mx_lm_cache *c = mx_lm_cache_new(m);
  double worst = 0;
  /* first 3 positions as one chunk, then one at a time */
  for (int i = 0; i < T;) {
    int n = i == 0 ? 3 : 1;
    mx_array *ti = mx_array_from_data(ids + i, (int64_t[]){1, n}, 2, MX_INT32);
    /* the first chunk through mx_lm_forward_last: (1, 1, V), same cache */
    mx_array *l = i == 0 ? mx_lm_forward_last(m, ti, c) : mx_lm_forward(m, ti, c);
    mx_array_free(ti);
    if (!l || mx_array_dim(l, 1) != (i == 0 ? 1 : n)) {
      mx_array_free(l);
      worst = 1e9;
      break;
    }
    int64_t ln = mx_array_dim(l, 1);
    mx_array *last = mx_slice_axis(l, 1, ln - 1, ln, 1);
    mx_array_copy_to(last, MX_FLOAT32, b, V);
    mx_array_free(last);
    mx_array_free(l);
    i += n;
    for (int64_t v = 0; v < V; v++) {
      double d = fabs(a[(i - 1) * V + v] - b[v]) / fmax(1.0, fabs(a[(i - 1) * V + v]));
      if (d > worst || d != d) worst = d != d ? 1e9 : d;
    }
  }
  if (mx_lm_cache_offset(c) != T) worst = 1e9;
  mx_lm_cache_free(c);
  free(a);
  free(b);
  return worst;
}

static void check_tiny(const tiny_spec *s, const char *name) {
  const char *dir = write_tiny(name, s);
  ASSERT_MSG(dir, "write: %s", mx_last_error());
  mx_lm_model *m = mx_lm_load(dir, NULL);
  ASSERT_MSG(m, "load %s: %s", s->model_type, mx_last_error());
  int32_t ids[12] = {1, 7, 3, 9, 20, 11, 4, 4, 30, 2, 17, 8};
  double d = full_vs_incremental(m, ids, 12);
  ASSERT_MSG(d < 1e-4, "%s: cached logits differ from full by %g", s->model_type, d);
  ASSERT(mx_lm_is_eos(m, 3) && mx_lm_is_eos(m, 5) && !mx_lm_is_eos(m, 4));
  mx_lm_free(m);
}

TEST(tiny_llama_tied_llama3_rope) {
  tiny_spec s = {"llama", 64, 128, 2, 4, 2, 40, true, false, false,
                 "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                 "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                 "\"original_max_position_embeddings\": 16}"};
  check_tiny(&s, "llama");
}

TEST(tiny_mistral_untied) {
  tiny_spec s = {"mistral", 32, 64, 2, 4, 1, 40, false, false, false, NULL};
  check_tiny(&s, "mistral");
}

TEST(tiny_qwen2_bias) {
  tiny_spec s = {"qwen2", 32, 48, 2, 4, 2, 40, true, true, false, NULL};
  check_tiny(&s, "qwen2");
}

TEST(tiny_qwen3_qk_norm) {
  tiny_spec s = {"qwen3", 32, 48, 3, 4, 2, 40, false, false, true, NULL};
  check_tiny(&s, "qwen3");
}

TEST(module_paths) {
  tiny_spec s = {"qwen3", 32, 48, 2, 4, 2, 40, false, false, true, NULL};
  const char *dir = write_tiny("paths", &s);
  mx_lm_model *m = mx_lm_load(dir, NULL);
  ASSERT_MSG(m, "%s", mx_last_error());
  mx_nn_module *root = mx_lm_module(m);
  mx_nn_module *q = mx_nn_get(root, "model.layers.1.self_attn.q_proj");
  ASSERT_NOT_NULL(q);
  ASSERT_STR_EQ(mx_nn_module_type(q), "Linear");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(root, "model.layers.0.self_attn.q_norm")), "RMSNorm");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(root, "model.layers.0.mlp")), "MLP");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(root, "lm_head")), "Linear");
  mx_array *w = mx_nn_get_param(root, "model.layers.1.self_attn.k_proj.weight");
  ASSERT_NOT_NULL(w);
  ASSERT_EQ_INT(mx_array_dim(w, 0), 16);
  ASSERT_EQ_INT(mx_array_dim(w, 1), 32);
  ASSERT(mx_nn_get(root, "model.layers.2") == NULL);
  ASSERT(mx_nn_get(root, "model.layers.0.self_attn.nope") == NULL);
  ASSERT_EQ_INT(mx_nn_list_size(mx_nn_get(root, "model"), "layers"), 2);
  /* the tree is callable: root forward == mx_lm_forward */
  mx_array *t = mx_array_from_data((int32_t[]){1, 2, 3}, (int64_t[]){1, 3}, 2, MX_INT32);
  mx_array *a = mx_nn_forward(root, t), *b = mx_lm_forward(m, t, NULL);
  bool close = false;
  ASSERT_OK(mx_allclose(a, b, 1e-6, 1e-6, &close));
  ASSERT(close);
  mx_array_free(a);
  mx_array_free(b);
  mx_array_free(t);
  mx_lm_free(m);
  /* tied: no lm_head */
  tiny_spec s2 = {"llama", 32, 48, 1, 4, 4, 40, true, false, false, NULL};
  m = mx_lm_load(write_tiny("paths_tied", &s2), NULL);
  ASSERT_MSG(m, "%s", mx_last_error());
  ASSERT(mx_nn_get(mx_lm_module(m), "lm_head") == NULL);
  mx_lm_free(m);
}

/* A checkpoint quantized with mx_quantize (MLX layout: <path>.weight packed,
 * .scales, .biases) loads as QuantizedLinear/QuantizedEmbedding and gives
 * the logits of the dequantized float model. */
TEST(tiny_quantized_checkpoint) {
  tiny_spec s = {"llama", 64, 128, 2, 4, 2, 64, false, false, false, NULL};
  mx_map *w = tiny_weights(&s);
  mx_map *qw = mx_map_new(), *dq = mx_map_new();
  for (int i = 0; i < mx_map_size(w); i++) {
    const char *k = mx_map_key(w, i);
    mx_array *v = mx_map_value(w, i);
    size_t kl = strlen(k);
    if (mx_array_ndim(v) != 2 || kl < 7 || strcmp(k + kl - 7, ".weight")) {
      mx_map_set(qw, k, v);
      mx_map_set(dq, k, v);
      continue;
    }
    mx_array *wq, *sc, *bi;
    ASSERT_OK(mx_quantize(v, 32, 4, &wq, &sc, &bi));
    char base[200], key[220];
    snprintf(base, sizeof base, "%.*s", (int)(kl - 7), k);
    mx_map_set(qw, k, wq);
    snprintf(key, sizeof key, "%s.scales", base);
    mx_map_set(qw, key, sc);
    snprintf(key, sizeof key, "%s.biases", base);
    mx_map_set(qw, key, bi);
    mx_map_set_take(dq, k, mx_dequantize(wq, sc, bi, 32, 4));
    mx_array_free(wq);
    mx_array_free(sc);
    mx_array_free(bi);
  }
  const char *qdir_tmp = new_dir("quant");
  char qdir[512], p[600];
  snprintf(qdir, sizeof qdir, "%s", qdir_tmp);
  tiny_config(qdir, &s, "\"quantization\": {\"group_size\": 32, \"bits\": 4}");
  snprintf(p, sizeof p, "%s/model.safetensors", qdir);
  ASSERT_OK(mx_save_safetensors(p, qw, NULL));
  const char *ddir = new_dir("dequant");
  tiny_config(ddir, &s, NULL);
  snprintf(p, sizeof p, "%s/model.safetensors", ddir);
  ASSERT_OK(mx_save_safetensors(p, dq, NULL));
  mx_map_free(w);
  mx_map_free(qw);
  mx_map_free(dq);
  mx_lm_model *mq = mx_lm_load(qdir, NULL);
  ASSERT_MSG(mq, "%s", mx_last_error());
  mx_lm_model *md = mx_lm_load(ddir, NULL);
  ASSERT_MSG(md, "%s", mx_last_error());
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(mx_lm_module(mq), "model.layers.1.mlp.down_proj")),
                "QuantizedLinear");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(mx_lm_module(mq), "model.embed_tokens")),
                "QuantizedEmbedding");
  mx_array *t = mx_array_from_data((int32_t[]){1, 5, 9, 2}, (int64_t[]){1, 4}, 2, MX_INT32);
  mx_array *a = mx_lm_forward(mq, t, NULL), *b = mx_lm_forward(md, t, NULL);
  bool close = false;
  ASSERT_OK(mx_allclose(a, b, 1e-4, 1e-4, &close));
  ASSERT(close);
  mx_array_free(a);
  mx_array_free(b);
  mx_array_free(t);
  ASSERT(full_vs_incremental(mq, (int32_t[]){1, 7, 3, 9, 20, 11}, 6) < 1e-4);
  mx_lm_free(mq);
  mx_lm_free(md);
}

/* ---- bad model directories -------------------------------------------------------------- */

static void expect_load_error(const char *dir, const char *needle) {
  mx_lm_model *m = mx_lm_load(dir, NULL);
  if (m) mx_lm_free(m);
  ASSERT_MSG(!m, "loading %s should fail", dir);
  ASSERT_MSG(strstr(mx_last_error(), needle), "error \"%s\" should mention \"%s\"",
             mx_last_error(), needle);
}

TEST(bad_model_dirs) {
  tiny_spec s = {"llama", 32, 48, 1, 4, 4, 40, true, false, false, NULL};
  expect_load_error("/nonexistent/model", "no such model directory");
  expect_load_error(new_dir("empty"), "no config.json");

  const char *d = write_tiny("unknown_type", &s);
  write_text(d, "config.json", "{\"model_type\": \"gpt5\", \"hidden_size\": 32}");
  expect_load_error(d, "model_type \"gpt5\" is not supported (supported: llama, mistral");

  d = write_tiny("missing_key", &s);
  write_text(d, "config.json",
             "{\"model_type\": \"llama\", \"intermediate_size\": 48, \"num_hidden_layers\": 1, "
             "\"num_attention_heads\": 4, \"vocab_size\": 40, \"rms_norm_eps\": 1e-6}");
  expect_load_error(d, "missing required key \"hidden_size\"");

  d = write_tiny("bad_json", &s);
  write_text(d, "config.json", "{\"model_type\": ");
  expect_load_error(d, "not a JSON object");

  /* wrong shape: config says intermediate 64, weights have 48 */
  d = write_tiny("wrong_shape", &s);
  tiny_spec s64 = s;
  s64.inter = 64;
  tiny_config(d, &s64, NULL);
  expect_load_error(d, "model.layers.0.mlp.gate_proj.weight");

  /* config has more layers than the weights */
  d = write_tiny("missing_layer", &s);
  tiny_spec s2 = s;
  s2.layers = 2;
  tiny_config(d, &s2, NULL);
  expect_load_error(d, "model.layers.1");

  /* no weights */
  d = new_dir("no_weights");
  tiny_config(d, &s, NULL);
  expect_load_error(d, "no weights");

  /* an index naming a shard that is not there */
  d = write_tiny("missing_shard", &s);
  char p[600], q[600];
  snprintf(p, sizeof p, "%s/model.safetensors", d);
  snprintf(q, sizeof q, "%s/model-00001-of-00002.safetensors", d);
  rename(p, q);
  write_text(d, "model.safetensors.index.json",
             "{\"metadata\": {}, \"weight_map\": {"
             "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\", "
             "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}");
  expect_load_error(d, "model-00002-of-00002.safetensors");

  /* quantized weights without config "quantization" / unsupported bits */
  d = write_tiny("quant_no_cfg", &s);
  tiny_config(d, &s, NULL);
  mx_map *w = mx_map_new();
  mx_map_set_take(w, "model.norm.weight", mx_ones((int64_t[]){32}, 1, MX_FLOAT32));
  mx_map_set_take(w, "model.layers.0.mlp.up_proj.scales", mx_ones((int64_t[]){48, 1}, 2, MX_FLOAT32));
  snprintf(p, sizeof p, "%s/extra.safetensors", d);
  ASSERT_OK(mx_save_safetensors(p, w, NULL));
  mx_map_free(w);
  expect_load_error(d, "tensor \"model.norm.weight\" is also in another file");
  snprintf(p, sizeof p, "%s/extra.safetensors", d);
  remove(p);
  w = mx_map_new();
  mx_map_set_take(w, "model.layers.0.mlp.up_proj.scales", mx_ones((int64_t[]){48, 1}, 2, MX_FLOAT32));
  ASSERT_OK(mx_save_safetensors(p, w, NULL));
  mx_map_free(w);
  expect_load_error(d, "no \"quantization\"");
  tiny_config(d, &s, "\"quantization\": {\"group_size\": 32, \"bits\": 7}");
  expect_load_error(d, "bits 7 is not supported");
  tiny_config(d, &s, "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2.0}");
  expect_load_error(d, "rope_scaling type \"yarn\" is not supported");
}

TEST(generate_argument_errors) {
  tiny_spec s = {"llama", 32, 48, 1, 4, 4, 40, true, false, false, NULL};
  mx_lm_model *m = mx_lm_load(write_tiny("gen_args", &s), NULL);
  ASSERT_MSG(m, "%s", mx_last_error());
  int32_t bad = 40;
  ASSERT(mx_lm_generate(m, &bad, 1, NULL, NULL, NULL, NULL) == MX_ERR_RANGE);
  ASSERT(strstr(mx_last_error(), "outside the vocabulary"));
  ASSERT(mx_lm_generate(m, &bad, 0, NULL, NULL, NULL, NULL) == MX_ERR_INVALID_ARG);
  /* stops on EOS (3 or 5) or after max_tokens */
  int out[1 + 300] = {0};
  mx_lm_generate_options o = MX_LM_GENERATE_DEFAULTS;
  o.max_tokens = 50;
  mx_lm_generate_stats st;
  int32_t p = 1;
  ASSERT_OK(mx_lm_generate(m, &p, 1, &o, collect, out, &st));
  ASSERT(st.generation_tokens <= 50);
  ASSERT_EQ_INT(st.generation_tokens, out[0]);
  for (int i = 0; i < out[0]; i++) ASSERT(out[1 + i] != 3 && out[1 + i] != 5);
  ASSERT(st.stopped_on_eos || st.generation_tokens == 50);
  mx_lm_free(m);
}

int main(int argc, char **argv) {
  int r = test_main(argc, argv);
  if (g_tmp[0]) rm_rf(g_tmp);
  return r;
}
