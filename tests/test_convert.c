/* test_convert.c — `mxc convert --hf-path` on the tiny llama fixture
 * (tests/fixtures/hf/llama): 4-bit g32 quantization (packed weights
 * bit-exact with mx_quantize, logits close to the float model), bf16
 * round trip, dequantization, sharding, GGUF export (llama.cpp names, keys,
 * shapes, q/k permutation), bad options. Run from the source root. */
#include <cjson/cJSON.h>
#include <ftw.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lm/model/convert.h"
#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/ops.h"
#include "test.h"

#define SRC "tests/fixtures/hf/llama"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb, (void)flag, (void)f;
  return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static char g_tmp[256];
static const char *tmp_path(const char *name) {
  static char p[512];
  if (!g_tmp[0]) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mxc_test_convert_XXXXXX");
    if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
  }
  snprintf(p, sizeof p, "%s/%s", g_tmp, name);
  rm_rf(p);
  return p;
}

static mx_map *load_map(const char *dir, const char *file) {
  char p[1300];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  mx_map *w = NULL;
  return mx_load(p, &w, NULL) ? NULL : w;
}

/* Bytes of a as its own dtype (caller frees). */
static void *bytes_of(mx_array *a, size_t *n) {
  *n = mx_array_nbytes(a);
  void *b = malloc(*n ? *n : 1);
  if (b && mx_array_copy_to(a, mx_array_dtype(a), b, mx_array_size(a))) {
    free(b);
    return NULL;
  }
  return b;
}

static bool same_bytes(mx_array *a, mx_array *b) {
  if (!a || !b || mx_array_dtype(a) != mx_array_dtype(b) || mx_array_ndim(a) != mx_array_ndim(b))
    return false;
  for (int i = 0; i < mx_array_ndim(a); i++)
    if (mx_array_shape(a)[i] != mx_array_shape(b)[i]) return false;
  size_t na, nb;
  void *x = bytes_of(a, &na), *y = bytes_of(b, &nb);
  bool eq = x && y && na == nb && !memcmp(x, y, na);
  free(x);
  free(y);
  return eq;
}

static const int32_t k_ids[12] = {1, 17, 200, 3, 99, 42, 255, 7, 128, 64, 5, 31};

/* float32 logits (12 * vocab) of k_ids, or NULL. */
static float *logits_of(const char *dir, int64_t *vocab) {
  mx_lm_model *m = mx_lm_load(dir, &(mx_lm_load_options){.no_tokenizer = true});
  if (!m) return NULL;
  mx_array *t = mx_array_from_data(k_ids, (int64_t[]){1, 12}, 2, MX_INT32);
  mx_array *l = mx_lm_forward(m, t, NULL);
  float *out = NULL;
  if (l) {
    *vocab = mx_array_shape(l)[2];
    out = malloc(sizeof(float) * (size_t)mx_array_size(l));
    if (out && mx_array_copy_to(l, MX_FLOAT32, out, mx_array_size(l))) {
      free(out);
      out = NULL;
    }
  }
  mx_array_free(t);
  mx_array_free(l);
  mx_lm_free(m);
  return out;
}

/* max |a - b| / max |a| */
static double rel_diff(const float *a, const float *b, int64_t n) {
  double d = 0, s = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]);
    if (e > d || e != e) d = e != e ? 1e9 : e;
    if (fabs(a[i]) > s) s = fabs(a[i]);
  }
  return d / (s > 0 ? s : 1);
}

static int convert_to(const char *dst, const char *src, int dtype, bool q, bool dq, int gs,
                      int bits) {
  mx__lm_convert_opts o = {.src = src, .dst = dst, .dtype = dtype, .quantize = q,
                           .dequantize = dq, .group_size = gs, .bits = bits};
  return mx__lm_convert(&o);
}

TEST(quantize_4bit_g32_bit_exact_and_close) {
  char dst[600];
  snprintf(dst, sizeof dst, "%s", tmp_path("q4"));
  ASSERT_MSG(!convert_to(dst, SRC, -1, true, false, 32, 4), "%s", mx_last_error());
  /* config */
  char p[1300];
  snprintf(p, sizeof p, "%s/config.json", dst);
  FILE *f = fopen(p, "rb");
  ASSERT(f);
  char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *cj = cJSON_Parse(buf);
  cJSON *q = cJSON_GetObjectItemCaseSensitive(cj, "quantization");
  ASSERT(cJSON_IsObject(q));
  ASSERT_EQ_INT((int)cJSON_GetObjectItemCaseSensitive(q, "group_size")->valuedouble, 32);
  ASSERT_EQ_INT((int)cJSON_GetObjectItemCaseSensitive(q, "bits")->valuedouble, 4);
  cJSON_Delete(cj);
  /* metadata and packed weights */
  mx_map *w = NULL;
  mx_metadata *meta = NULL;
  snprintf(p, sizeof p, "%s/model.safetensors", dst);
  ASSERT_OK(mx_load(p, &w, &meta));
  ASSERT_STR_EQ(mx_metadata_get_string(meta, "format"), "mlx");
  mx_metadata_free(meta);
  mx_map *orig = load_map(SRC, "model.safetensors");
  ASSERT(orig);
  int nq = 0;
  for (int i = 0; i < mx_map_size(orig); i++) {
    const char *k = mx_map_key(orig, i);
    mx_array *a = mx_map_value(orig, i);
    if (mx_array_ndim(a) != 2) {
      ASSERT_MSG(same_bytes(a, mx_map_get(w, k)), "%s changed", k);
      continue;
    }
    mx_array *wq = NULL, *s = NULL, *b = NULL;
    ASSERT_OK(mx_quantize(a, 32, 4, &wq, &s, &b));
    char base[300], ks[320], kb[320];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(k) - 7), k);
    snprintf(ks, sizeof ks, "%s.scales", base);
    snprintf(kb, sizeof kb, "%s.biases", base);
    ASSERT_MSG(mx_array_dtype(mx_map_get(w, k)) == MX_UINT32, "%s not packed", k);
    ASSERT_MSG(same_bytes(wq, mx_map_get(w, k)), "%s packed differs", k);
    ASSERT_MSG(same_bytes(s, mx_map_get(w, ks)), "%s differs", ks);
    ASSERT_MSG(same_bytes(b, mx_map_get(w, kb)), "%s differs", kb);
    mx_array_free(wq);
    mx_array_free(s);
    mx_array_free(b);
    nq++;
  }
  ASSERT_EQ_INT(nq, 15); /* 7 linears x 2 layers + the (tied) embedding */
  mx_map_free(orig);
  mx_map_free(w);
  /* logits within the 4-bit tolerance */
  int64_t V = 0, V2 = 0;
  float *a = logits_of(SRC, &V), *b = logits_of(dst, &V2);
  ASSERT_MSG(a && b, "%s", mx_last_error());
  ASSERT_EQ_INT((int)V, (int)V2);
  double d = rel_diff(a, b, 12 * V);
  ASSERT_MSG(d < 0.15 && d > 0, "4-bit logits differ by %g (relative to max)", d);
  free(a);
  free(b);

  /* dequantize back: weights = mx_dequantize of the packed ones; logits
   * equal the quantized model's */
  char dq[600];
  snprintf(dq, sizeof dq, "%s", tmp_path("dq"));
  ASSERT_MSG(!convert_to(dq, dst, -1, false, true, 0, 0), "%s", mx_last_error());
  mx_map *qw = load_map(dst, "model.safetensors"), *dw = load_map(dq, "model.safetensors");
  ASSERT(qw && dw);
  for (int i = 0; i < mx_map_size(dw); i++)
    ASSERT_MSG(!strstr(mx_map_key(dw, i), ".scales") && !strstr(mx_map_key(dw, i), ".biases"),
               "%s left", mx_map_key(dw, i));
  mx_array *e = mx_dequantize(mx_map_get(qw, "model.layers.1.mlp.down_proj.weight"),
                              mx_map_get(qw, "model.layers.1.mlp.down_proj.scales"),
                              mx_map_get(qw, "model.layers.1.mlp.down_proj.biases"), 32, 4);
  ASSERT(same_bytes(e, mx_map_get(dw, "model.layers.1.mlp.down_proj.weight")));
  mx_array_free(e);
  mx_map_free(qw);
  mx_map_free(dw);
  a = logits_of(dst, &V);
  b = logits_of(dq, &V2);
  ASSERT_MSG(a && b, "%s", mx_last_error());
  d = rel_diff(a, b, 12 * V);
  ASSERT_MSG(d < 1e-4, "dequantized logits differ from quantized by %g", d);
  free(a);
  free(b);
  rm_rf(dst);
  rm_rf(dq);
}

TEST(bf16_round_trip) {
  char d16[600], d32[600];
  snprintf(d16, sizeof d16, "%s", tmp_path("bf16"));
  ASSERT_MSG(!convert_to(d16, SRC, MX_BFLOAT16, false, false, 0, 0), "%s", mx_last_error());
  snprintf(d32, sizeof d32, "%s", tmp_path("f32"));
  ASSERT_MSG(!convert_to(d32, d16, MX_FLOAT32, false, false, 0, 0), "%s", mx_last_error());
  mx_map *o = load_map(SRC, "model.safetensors"), *h = load_map(d16, "model.safetensors"),
         *g = load_map(d32, "model.safetensors");
  ASSERT(o && h && g);
  ASSERT_EQ_INT(mx_map_size(o), mx_map_size(h));
  for (int i = 0; i < mx_map_size(o); i++) {
    const char *k = mx_map_key(o, i);
    mx_array *hb = mx_map_get(h, k), *gf = mx_map_get(g, k);
    ASSERT_MSG(hb && mx_array_dtype(hb) == MX_BFLOAT16, "%s not bf16", k);
    mx_array *c = mx_astype(mx_map_value(o, i), MX_BFLOAT16);
    ASSERT_MSG(same_bytes(c, hb), "%s: bf16 differs from astype", k);
    mx_array *back = mx_astype(c, MX_FLOAT32);
    ASSERT_MSG(same_bytes(back, gf), "%s: f32 round trip differs", k);
    mx_array_free(c);
    mx_array_free(back);
  }
  mx_map_free(o);
  mx_map_free(h);
  mx_map_free(g);
  int64_t V = 0, V2 = 0;
  float *a = logits_of(SRC, &V), *b = logits_of(d16, &V2);
  ASSERT_MSG(a && b, "%s", mx_last_error());
  double d = rel_diff(a, b, 12 * V);
  ASSERT_MSG(d < 0.05, "bf16 logits differ by %g", d);
  free(a);
  free(b);
  rm_rf(d16);
  rm_rf(d32);
}

TEST(shards_with_index) {
  char dst[600];
  snprintf(dst, sizeof dst, "%s", tmp_path("sharded"));
  mx__lm_convert_opts o = {.src = SRC, .dst = dst, .dtype = -1, .shard_bytes = 100000};
  ASSERT_MSG(!mx__lm_convert(&o), "%s", mx_last_error());
  char p[1300];
  glob_t gl;
  snprintf(p, sizeof p, "%s/model-0000*-of-0000*.safetensors", dst);
  ASSERT_EQ_INT(glob(p, 0, NULL, &gl), 0);
  size_t nsh = gl.gl_pathc;
  globfree(&gl);
  ASSERT_MSG(nsh >= 2, "%zu shards", nsh);
  snprintf(p, sizeof p, "%s/model.safetensors", dst);
  ASSERT(access(p, F_OK) != 0);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dst);
  ASSERT(access(p, F_OK) == 0);
  int64_t V = 0, V2 = 0;
  float *a = logits_of(SRC, &V), *b = logits_of(dst, &V2);
  ASSERT_MSG(a && b, "%s", mx_last_error());
  ASSERT(rel_diff(a, b, 12 * V) == 0);
  free(a);
  free(b);
  rm_rf(dst);
}

TEST(to_gguf_llama_names_keys_permutation) {
  char file[600];
  snprintf(file, sizeof file, "%s", tmp_path("m.gguf"));
  ASSERT_MSG(!mx__lm_export_gguf(SRC, file, MX_FLOAT32), "%s", mx_last_error());
  mx_map *g = NULL;
  mx_metadata *m = NULL;
  ASSERT_OK(mx_load(file, &g, &m));
  ASSERT_STR_EQ(mx_metadata_get_string(m, "general.architecture"), "llama");
  const struct {
    const char *k;
    uint64_t v;
  } want[] = {{"llama.embedding_length", 64},   {"llama.block_count", 2},
              {"llama.feed_forward_length", 96}, {"llama.rope.dimension_count", 16},
              {"llama.attention.head_count", 4}, {"llama.attention.head_count_kv", 1},
              {"llama.context_length", 131072}};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    const mx_meta_value *v = mx_metadata_get(m, want[i].k);
    ASSERT_MSG(v && v->type == MX_META_UINT32 && v->v.u == want[i].v, "%s", want[i].k);
  }
  const mx_meta_value *eps = mx_metadata_get(m, "llama.attention.layer_norm_rms_epsilon");
  ASSERT(eps && eps->type == MX_META_FLOAT32 && fabs(eps->v.f - 1e-5) < 1e-9);
  const mx_meta_value *th = mx_metadata_get(m, "llama.rope.freq_base");
  ASSERT(th && fabs(th->v.f - 500000.0) < 1e-3);
  /* tied: no output.weight; llama3 rope: rope_freqs.weight */
  ASSERT_EQ_INT(mx_map_size(g), 2 * 9 + 3);
  mx_array *rf = mx_map_get(g, "rope_freqs.weight");
  ASSERT(rf && mx_array_ndim(rf) == 1 && mx_array_shape(rf)[0] == 8);
  float fr[8];
  ASSERT_OK(mx_array_copy_to(rf, MX_FLOAT32, fr, 8));
  ASSERT(fr[0] == 1.0f && fr[7] == 32.0f); /* short wavelengths kept, long ones x factor */
  for (int i = 0; i < 8; i++) ASSERT(fr[i] >= 1.0f && fr[i] <= 32.0f);
  const struct {
    const char *n;
    int64_t r, c;
  } shapes[] = {{"token_embd.weight", 256, 64},     {"output_norm.weight", 64, 0},
                {"blk.1.attn_norm.weight", 64, 0},  {"blk.1.attn_q.weight", 64, 64},
                {"blk.1.attn_k.weight", 16, 64},    {"blk.1.attn_v.weight", 16, 64},
                {"blk.1.attn_output.weight", 64, 64}, {"blk.1.ffn_norm.weight", 64, 0},
                {"blk.1.ffn_gate.weight", 96, 64},  {"blk.1.ffn_up.weight", 96, 64},
                {"blk.1.ffn_down.weight", 64, 96}};
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
    mx_array *a = mx_map_get(g, shapes[i].n);
    ASSERT_MSG(a, "no %s", shapes[i].n);
    ASSERT_EQ_INT(mx_array_ndim(a), shapes[i].c ? 2 : 1);
    ASSERT_EQ_INT((int)mx_array_shape(a)[0], (int)shapes[i].r);
    if (shapes[i].c) ASSERT_EQ_INT((int)mx_array_shape(a)[1], (int)shapes[i].c);
  }
  /* q rows: gguf[h*hd + 2i + j] == hf[h*hd + j*hd/2 + i] (4 heads, hd 16);
   * k: one kv head; v unchanged */
  mx_map *o = load_map(SRC, "model.safetensors");
  ASSERT(o);
  const char *pairs[3][2] = {{"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
                             {"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"},
                             {"model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"}};
  for (int t = 0; t < 3; t++) {
    mx_array *hf = mx_map_get(o, pairs[t][0]), *gg = mx_map_get(g, pairs[t][1]);
    int64_t R = mx_array_shape(hf)[0], C = 64, hd = 16;
    float *x = malloc(sizeof(float) * (size_t)(R * C)), *y = malloc(sizeof(float) * (size_t)(R * C));
    ASSERT(x && y);
    ASSERT_OK(mx_array_copy_to(hf, MX_FLOAT32, x, R * C));
    ASSERT_OK(mx_array_copy_to(gg, MX_FLOAT32, y, R * C));
    bool ok = true;
    for (int64_t r = 0; r < R; r++) {
      int64_t h = r / hd, i = (r % hd) / 2, j = r % 2;
      int64_t src = t == 2 ? r : h * hd + j * (hd / 2) + i;
      if (memcmp(y + r * C, x + src * C, sizeof(float) * (size_t)C)) ok = false;
    }
    free(x);
    free(y);
    ASSERT_MSG(ok, "%s rows are not permuted as llama.cpp's converter", pairs[t][1]);
  }
  mx_map_free(o);
  mx_map_free(g);
  mx_metadata_free(m);
  /* F16 and BF16: matrices in that type, norms F32 */
  ASSERT_OK(mx__lm_export_gguf(SRC, file, MX_BFLOAT16));
  ASSERT_OK(mx_load(file, &g, &m));
  ASSERT(mx_array_dtype(mx_map_get(g, "blk.0.ffn_up.weight")) == MX_BFLOAT16);
  ASSERT(mx_array_dtype(mx_map_get(g, "blk.0.ffn_norm.weight")) == MX_FLOAT32);
  mx_map_free(g);
  mx_metadata_free(m);
  remove(file);
}

/* --to-gguf --dtype q8_0 / q4_0: llama.cpp's blocks of 32 (read back by
 * mx_load as MLX's affine triple), within the format's rounding of the F32
 * export; norms stay F32; ftype MOSTLY_Q8_0 (7) / MOSTLY_Q4_0 (2). */
TEST(to_gguf_q8_0_q4_0_blocks) {
  char file[600], f32[600];
  snprintf(file, sizeof file, "%s", tmp_path("q.gguf"));
  snprintf(f32, sizeof f32, "%s", tmp_path("f.gguf"));
  ASSERT_OK(mx__lm_export_gguf(SRC, f32, MX_FLOAT32));
  mx_map *ref = NULL;
  ASSERT_OK(mx_load(f32, &ref, NULL));
  const int types[2] = {MX__GGUF_Q8_0, MX__GGUF_Q4_0}, bits[2] = {8, 4}, ftype[2] = {7, 2};
  for (int t = 0; t < 2; t++) {
    ASSERT_MSG(!mx__lm_export_gguf(SRC, file, types[t]), "%s", mx_last_error());
    mx_map *g = NULL;
    mx_metadata *m = NULL;
    ASSERT_MSG(!mx_load(file, &g, &m), "%s", mx_last_error());
    const mx_meta_value *ft = mx_metadata_get(m, "general.file_type");
    ASSERT(ft && ft->v.u == (uint64_t)ftype[t]);
    ASSERT(mx_array_dtype(mx_map_get(g, "blk.0.ffn_norm.weight")) == MX_FLOAT32);
    const char *names[4] = {"token_embd", "blk.0.attn_q", "blk.1.ffn_down", "blk.1.attn_k"};
    for (int i = 0; i < 4; i++) {
      char k[80];
      snprintf(k, sizeof k, "%s.weight", names[i]);
      mx_array *want = mx_map_get(ref, k), *wq = mx_map_get(g, k);
      snprintf(k, sizeof k, "%s.scales", names[i]);
      mx_array *sc = mx_map_get(g, k);
      snprintf(k, sizeof k, "%s.biases", names[i]);
      mx_array *bi = mx_map_get(g, k);
      ASSERT_MSG(want && wq && sc && bi, "%s: not a quantized triple", names[i]);
      ASSERT(mx_array_dtype(wq) == MX_UINT32);
      mx_array *d = mx_dequantize(wq, sc, bi, 32, bits[t]);
      ASSERT_NOT_NULL(d);
      int64_t n = mx_array_size(want);
      ASSERT_EQ_INT(mx_array_size(d), n);
      float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
      ASSERT(x && y);
      ASSERT_OK(mx_array_copy_to(want, MX_FLOAT32, x, n));
      ASSERT_OK(mx_array_copy_to(d, MX_FLOAT32, y, n));
      bool ok = true;
      for (int64_t b0 = 0; b0 < n && ok; b0 += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b0 + j]));
        /* Q8_0: half a step of amax/127; Q4_0: one step of amax/8 (the
         * clamped end), both plus the float16 scale's rounding */
        float tol = bits[t] == 8 ? amax / 127 * 0.5f + amax * 2e-3f : amax / 8 * 1.01f;
        for (int j = 0; j < 32; j++)
          if (fabsf(x[b0 + j] - y[b0 + j]) > tol + 1e-7f) ok = false;
      }
      free(x);
      free(y);
      mx_array_free(d);
      ASSERT_MSG(ok, "%s (%d bits) is not within the block rounding", names[i], bits[t]);
    }
    mx_map_free(g);
    mx_metadata_free(m);
  }
  mx_map_free(ref);
  remove(file);
  remove(f32);
}

static int copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  int rc = a && b ? 0 : -1;
  char buf[65536];
  size_t n;
  while (!rc && (n = fread(buf, 1, sizeof buf, a)) > 0)
    if (fwrite(buf, 1, n, b) != n) rc = -1;
  if (a) fclose(a);
  if (b && fclose(b)) rc = -1;
  return rc;
}

TEST(to_gguf_bpe_tokenizer) {
  char dir[600], p[1300], file[1300];
  snprintf(dir, sizeof dir, "%s", tmp_path("tok"));
  ASSERT(mkdir(dir, 0777) == 0);
  snprintf(p, sizeof p, "%s/config.json", dir);
  ASSERT(!copy_file(SRC "/config.json", p));
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  ASSERT(!copy_file(SRC "/model.safetensors", p));
  snprintf(p, sizeof p, "%s/tokenizer.json", dir);
  FILE *f = fopen(p, "wb");
  ASSERT(f);
  fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
        " \"merges\": [[\"a\", \"b\"]]}, \"added_tokens\": [{\"id\": 3, \"content\":"
        " \"<s>\", \"special\": true}]}", f);
  fclose(f);
  snprintf(file, sizeof file, "%s/m.gguf", dir);
  ASSERT_MSG(!mx__lm_export_gguf(dir, file, MX_FLOAT16), "%s", mx_last_error());
  mx_map *g = NULL;
  mx_metadata *m = NULL;
  ASSERT_OK(mx_load(file, &g, &m));
  ASSERT_STR_EQ(mx_metadata_get_string(m, "tokenizer.ggml.model"), "gpt2");
  const mx_meta_value *t = mx_metadata_get(m, "tokenizer.ggml.tokens");
  ASSERT(t && t->type == MX_META_ARRAY && t->v.arr.count == 256);
  ASSERT_STR_EQ(t->v.arr.items[2].v.str.data, "ab");
  ASSERT_STR_EQ(t->v.arr.items[3].v.str.data, "<s>");
  ASSERT_STR_EQ(t->v.arr.items[100].v.str.data, "[PAD100]");
  const mx_meta_value *ty = mx_metadata_get(m, "tokenizer.ggml.token_type");
  ASSERT(ty && ty->v.arr.count == 256 && ty->v.arr.items[0].v.i == 1 &&
         ty->v.arr.items[3].v.i == 3);
  const mx_meta_value *mg = mx_metadata_get(m, "tokenizer.ggml.merges");
  ASSERT(mg && mg->v.arr.count == 1);
  ASSERT_STR_EQ(mg->v.arr.items[0].v.str.data, "a b");
  const mx_meta_value *bos = mx_metadata_get(m, "tokenizer.ggml.bos_token_id");
  ASSERT(bos && bos->v.u == 1);
  ASSERT(mx_array_dtype(mx_map_get(g, "token_embd.weight")) == MX_FLOAT16);
  mx_map_free(g);
  mx_metadata_free(m);
  /* --mlx-path copies the tokenizer files */
  char out[700];
  snprintf(out, sizeof out, "%s/out", dir);
  ASSERT_OK(convert_to(out, dir, -1, false, false, 0, 0));
  snprintf(p, sizeof p, "%s/tokenizer.json", out);
  ASSERT(access(p, F_OK) == 0);
  rm_rf(dir);
}

TEST(bad_options_clear_errors) {
  char dst[600];
  snprintf(dst, sizeof dst, "%s", tmp_path("bad"));
  ASSERT(convert_to(dst, SRC, -1, true, true, 64, 4) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "not both"));
  ASSERT(convert_to(dst, SRC, -1, true, false, 64, 7) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "--q-bits 7"));
  ASSERT(convert_to(dst, SRC, -1, true, false, 48, 4) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "--q-group-size 48"));
  ASSERT(convert_to(dst, SRC, MX_INT32, false, false, 0, 0) == MX_ERR_INVALID_ARG);
  ASSERT(convert_to(dst, SRC, -1, false, true, 0, 0) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "not quantized"));
  ASSERT(convert_to(dst, "/nonexistent/model_dir", -1, false, false, 0, 0) != MX_OK);
  ASSERT(strstr(mx_last_error(), "/nonexistent/model_dir"));
  /* already quantized */
  ASSERT_OK(convert_to(dst, SRC, -1, true, false, 64, 8));
  char d2[600];
  snprintf(d2, sizeof d2, "%s", tmp_path("bad2"));
  ASSERT(convert_to(d2, dst, -1, true, false, 64, 4) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "already quantized"));
  ASSERT(convert_to(dst, SRC, -1, false, false, 0, 0) == MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "already exists"));
  ASSERT(mx__lm_export_gguf(SRC, "/nonexistent/dir/x.gguf", MX_FLOAT32) != MX_OK);
  ASSERT(mx__lm_export_gguf(SRC, d2, MX_INT32) == MX_ERR_INVALID_ARG);
  rm_rf(dst);
  rm_rf(d2);
}

int main(int argc, char **argv) {
  int r = test_main(argc, argv);
  if (g_tmp[0]) rm_rf(g_tmp);
  return r;
}
