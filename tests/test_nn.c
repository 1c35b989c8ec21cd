/* test_nn.c — mxc/nn.h: the module tree, paths and their error messages,
 * parameters, freezing, strict updates, weights files, LoRA/DoRA,
 * quantized layers, dropout, init. Golden values against PyTorch are in
 * test_nn_golden.c. */
#include "mxc/mxc.h"
#include "test.h"

#include <unistd.h>

/* ==== a small Llama-shaped model built from user-defined modules ============ */
/* Attention-ish block: o_proj(q_proj(x) * sigmoid(k_proj(x)) + v_proj(x)) */
static mx_array *attn_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *q = mx_nn_forward(mx_nn_child(self, "q_proj"), in[0]);
  mx_array *k = mx_nn_forward(mx_nn_child(self, "k_proj"), in[0]);
  mx_array *v = mx_nn_forward(mx_nn_child(self, "v_proj"), in[0]);
  mx_array *s = mx_sigmoid(k);
  mx_array *qs = mx_multiply(q, s);
  mx_array *h = mx_add(qs, v);
  mx_array *y = mx_nn_forward(mx_nn_child(self, "o_proj"), h);
  mx_array *arr[] = {q, k, v, s, qs, h};
  mx_array_free_n(arr, 6);
  return y;
}
static const mx_nn_module_vtable attn_vt = {"Attention", attn_forward, NULL, NULL, NULL};

static mx_array *block_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *a = mx_nn_forward(mx_nn_child(self, "self_attn"), in[0]);
  mx_array *h = mx_add(in[0], a);
  mx_array *m = mx_nn_forward(mx_nn_child(self, "mlp"), h);
  mx_array *y = mx_add(h, m);
  mx_array_free(a);
  mx_array_free(h);
  mx_array_free(m);
  return y;
}
static const mx_nn_module_vtable block_vt = {"TransformerBlock", block_forward, NULL, NULL, NULL};

static mx_array *inner_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *x = mx_nn_forward(mx_nn_child(self, "embed_tokens"), in[0]);
  for (int i = 0; i < mx_nn_list_size(self, "layers") && x; i++) {
    mx_array *y = mx_nn_forward(mx_nn_list_item(self, "layers", i), x);
    mx_array_free(x);
    x = y;
  }
  mx_array *y = mx_nn_forward(mx_nn_child(self, "norm"), x);
  mx_array_free(x);
  return y;
}
static const mx_nn_module_vtable inner_vt = {"LlamaModel", inner_forward, NULL, NULL, NULL};

static mx_array *outer_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *h = mx_nn_forward(mx_nn_child(self, "model"), in[0]);
  mx_array *y = mx_nn_forward(mx_nn_child(self, "lm_head"), h);
  mx_array_free(h);
  return y;
}
static const mx_nn_module_vtable outer_vt = {"Model", outer_forward, NULL, NULL, NULL};
static const mx_nn_module_vtable wrapper_vt = {"Wrapper", NULL, NULL, NULL, NULL};

enum { VOCAB = 11, DIM = 16, NLAYERS = 2 };

static mx_nn_module *toy_model(uint64_t seed) {
  mx_array *key = mx_random_key(seed);
  mx_array *keys = mx_random_split(key, 16);
  mx_array *k[16];
  for (int i = 0; i < 16; i++) {
    mx_array *r = mx_slice_axis(keys, 0, i, i + 1, 1);
    k[i] = mx_reshape(r, (int64_t[]){2}, 1);
    mx_array_free(r);
  }
  mx_nn_module *inner = mx_nn_module_new(&inner_vt, sizeof(mx_nn_module));
  mx_nn_add_child(inner, "embed_tokens", mx_nn_embedding_new(VOCAB, DIM, k[0]));
  mx_nn_add_list(inner, "layers");
  for (int l = 0; l < NLAYERS; l++) {
    mx_nn_module *attn = mx_nn_module_new(&attn_vt, sizeof(mx_nn_module));
    mx_nn_add_child(attn, "q_proj", mx_nn_linear_new(DIM, DIM, false, k[1 + 5 * l]));
    mx_nn_add_child(attn, "k_proj", mx_nn_linear_new(DIM, DIM, false, k[2 + 5 * l]));
    mx_nn_add_child(attn, "v_proj", mx_nn_linear_new(DIM, DIM, false, k[3 + 5 * l]));
    mx_nn_add_child(attn, "o_proj", mx_nn_linear_new(DIM, DIM, false, k[4 + 5 * l]));
    mx_nn_module *block = mx_nn_module_new(&block_vt, sizeof(mx_nn_module));
    mx_nn_add_child(block, "self_attn", attn);
    mx_nn_add_child(block, "mlp", mx_nn_linear_new(DIM, DIM, true, k[5 + 5 * l]));
    mx_nn_list_append(inner, "layers", block);
  }
  mx_nn_add_child(inner, "norm", mx_nn_rms_norm_new(DIM, 1e-5));
  mx_nn_module *outer = mx_nn_module_new(&outer_vt, sizeof(mx_nn_module));
  mx_nn_add_child(outer, "model", inner);
  mx_nn_add_child(outer, "lm_head", mx_nn_linear_new(DIM, VOCAB, false, k[15]));
  mx_array_free_n(k, 16);
  mx_array_free(keys);
  mx_array_free(key);
  return outer;
}

static mx_array *toy_tokens(void) {
  int32_t t[2 * 5] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  return mx_array_from_data(t, (int64_t[]){2, 5}, 2, MX_INT32);
}

static void assert_contains(const char *s, const char *sub) {
  ASSERT_MSG(strstr(s, sub) != NULL, "expected \"%s\" in: %s", sub, s);
}

/* ==== the tree ============================================================== */
TEST(parameter_names_are_mlx_flattened) {
  mx_nn_module *m = toy_model(0);
  ASSERT_NOT_NULL(m);
  mx_map *p = NULL;
  ASSERT_OK(mx_nn_parameters(m, &p));
  ASSERT_EQ_INT(mx_map_size(p), 1 + NLAYERS * 6 + 1 + 1);
  ASSERT_STR_EQ(mx_map_key(p, 0), "model.embed_tokens.weight");
  ASSERT_STR_EQ(mx_map_key(p, 1), "model.layers.0.self_attn.q_proj.weight");
  ASSERT_STR_EQ(mx_map_key(p, 5), "model.layers.0.mlp.weight");
  ASSERT_STR_EQ(mx_map_key(p, 6), "model.layers.0.mlp.bias");
  ASSERT_STR_EQ(mx_map_key(p, 7), "model.layers.1.self_attn.q_proj.weight");
  ASSERT_STR_EQ(mx_map_key(p, mx_map_size(p) - 2), "model.norm.weight");
  ASSERT_STR_EQ(mx_map_key(p, mx_map_size(p) - 1), "lm_head.weight");
  ASSERT_EQ_INT(mx_nn_num_parameters(m, false), VOCAB * DIM + NLAYERS * (5 * DIM * DIM + DIM) + DIM + DIM * VOCAB);
  mx_array *x = toy_tokens();
  mx_array *y = mx_nn_forward(m, x);
  ASSERT_NOT_NULL(y);
  ASSERT_EQ_INT(mx_array_ndim(y), 3);
  ASSERT_EQ_INT(mx_array_dim(y, 2), VOCAB);
  ASSERT_OK(mx_array_eval(y));
  mx_array_free(y);
  mx_array_free(x);
  mx_map_free(p);
  mx_nn_module_free(m);
}

TEST(sequential_and_mha_names) {
  mx_nn_module *s = mx_nn_sequential_new(3, (mx_nn_module *[]){mx_nn_linear_new(4, 8, true, NULL),
                                                               mx_nn_relu_new(), mx_nn_linear_new(8, 2, true, NULL)});
  ASSERT_NOT_NULL(s);
  mx_map *p = NULL;
  ASSERT_OK(mx_nn_parameters(s, &p));
  ASSERT_EQ_INT(mx_map_size(p), 4);
  ASSERT_STR_EQ(mx_map_key(p, 0), "layers.0.weight");
  ASSERT_STR_EQ(mx_map_key(p, 2), "layers.2.weight");
  mx_map_free(p);
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(s, "layers.1")), "ReLU");
  mx_nn_module_free(s);

  mx_nn_module *a = mx_nn_multi_head_attention_new(8, 2, 0, 0, 0, 0, 0, true, NULL);
  ASSERT_OK(mx_nn_parameters(a, &p));
  ASSERT_EQ_INT(mx_map_size(p), 8);
  ASSERT_STR_EQ(mx_map_key(p, 0), "query_proj.weight");
  ASSERT_STR_EQ(mx_map_key(p, 7), "out_proj.bias");
  mx_map_free(p);
  mx_array *x = mx_random_normal((int64_t[]){2, 3, 8}, 3, MX_FLOAT32, 0, 1, NULL);
  mx_array *mask = mx_nn_create_additive_causal_mask(3, MX_FLOAT32);
  mx_array *y = mx_nn_forward_n(a, (mx_array *[]){x, x, x, mask}, 4);
  ASSERT_NOT_NULL(y);
  ASSERT_EQ_INT(mx_array_dim(y, 2), 8);
  mx_array *bad = mx_nn_forward_n(a, (mx_array *[]){x}, 1);
  ASSERT(bad == NULL);
  assert_contains(mx_last_error(), "MultiHeadAttention");
  mx_array_free(y);
  mx_array_free(mask);
  mx_array_free(x);
  mx_nn_module_free(a);
}

TEST(path_lookup) {
  mx_nn_module *m = toy_model(0);
  mx_nn_module *q = mx_nn_get(m, "model.layers.1.self_attn.q_proj");
  ASSERT_NOT_NULL(q);
  ASSERT_STR_EQ(mx_nn_module_type(q), "Linear");
  ASSERT(mx_nn_list_item(mx_nn_get(m, "model"), "layers", 1) == mx_nn_get(m, "model.layers.1"));
  ASSERT(mx_nn_get(m, "") == m);
  mx_array *b = mx_nn_get_param(m, "model.layers.0.mlp.bias");
  ASSERT_NOT_NULL(b);
  ASSERT_EQ_INT(mx_array_dim(b, 0), DIM);
  ASSERT_EQ_INT(mx_nn_list_size(mx_nn_get(m, "model"), "layers"), NLAYERS);
  mx_nn_module_free(m);
}

TEST(path_errors_suggest_nearest) {
  mx_nn_module *m = toy_model(0);
  /* the seed's mistake: model.layers where the layers are at model.model.layers */
  mx_nn_module *outer = mx_nn_module_new(&wrapper_vt, sizeof(mx_nn_module));
  ASSERT_OK(mx_nn_add_child(outer, "model", mx_nn_module_retain(m)));
  ASSERT(mx_nn_get(outer, "model.layers") == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_NOT_FOUND);
  assert_contains(mx_last_error(), "\"layers\"");
  assert_contains(mx_last_error(), "did you mean \"model.model.layers\"");
  ASSERT(mx_nn_get(outer, "model.layers.0.self_attn") == NULL);
  assert_contains(mx_last_error(), "\"model.model.layers.0.self_attn\"");
  /* and one level up */
  ASSERT(mx_nn_get(m, "layers.1") == NULL);
  assert_contains(mx_last_error(), "did you mean \"model.layers.1\"");
  assert_contains(mx_last_error(), "entries: model, lm_head");
  /* a typo */
  ASSERT(mx_nn_get(m, "model.layers.0.self_atn.q_proj") == NULL);
  assert_contains(mx_last_error(), "no entry \"self_atn\"");
  assert_contains(mx_last_error(), "\"model.layers.0.self_attn.q_proj\"");
  /* surplus prefix */
  ASSERT(mx_nn_get_param(m, "model.model.norm.weight") == NULL);
  assert_contains(mx_last_error(), "\"model.norm.weight\"");
  /* index out of range, list without index, parameter as module */
  ASSERT(mx_nn_get(m, "model.layers.7") == NULL);
  assert_contains(mx_last_error(), "index 7 out of range");
  ASSERT(mx_nn_get(m, "model.layers.x") == NULL);
  assert_contains(mx_last_error(), "not an index");
  ASSERT(mx_nn_get(m, "model.layers") == NULL);
  assert_contains(mx_last_error(), "list");
  ASSERT(mx_nn_get(m, "lm_head.weight") == NULL);
  assert_contains(mx_last_error(), "parameter");
  ASSERT(mx_nn_get(m, "model..norm") == NULL);
  ASSERT(mx_nn_get_param(m, "lm_head") == NULL);
  mx_nn_module_free(outer);
  mx_nn_module_free(m);
}

TEST(replace_and_named_modules) {
  mx_nn_module *m = toy_model(0);
  mx_nn_modules all = MX_NN_MODULES_INIT, leaves = MX_NN_MODULES_INIT;
  ASSERT_OK(mx_nn_named_modules(m, false, &all));
  ASSERT_OK(mx_nn_named_modules(m, true, &leaves));
  /* root, model, embed, 2 x (block, attn, 4 proj, mlp), norm, lm_head */
  ASSERT_EQ_INT(all.size, 1 + 1 + 1 + NLAYERS * 7 + 1 + 1);
  ASSERT_STR_EQ(all.paths[0], "");
  ASSERT_STR_EQ(all.paths[3], "model.layers.0");
  ASSERT_EQ_INT(leaves.size, 1 + NLAYERS * 5 + 1 + 1);
  ASSERT_STR_EQ(leaves.paths[1], "model.layers.0.self_attn.q_proj");
  mx_nn_modules_clear(&all);
  mx_nn_modules_clear(&leaves);
  mx_nn_module *rep = mx_nn_linear_new(DIM, DIM, true, NULL);
  ASSERT_OK(mx_nn_replace(m, "model.layers.1.mlp", rep));
  ASSERT(mx_nn_get(m, "model.layers.1.mlp") == rep);
  /* replace a list item */
  mx_nn_module *blk = mx_nn_module_retain(mx_nn_get(m, "model.layers.0"));
  ASSERT_OK(mx_nn_replace(m, "model.layers.1", blk));
  ASSERT(mx_nn_get(m, "model.layers.1") == blk);
  ASSERT(mx_nn_replace(m, "model.nope", mx_nn_relu_new()) == MX_ERR_NOT_FOUND);
  ASSERT(mx_nn_replace(m, "model.norm.weight", mx_nn_relu_new()) != MX_OK);
  mx_nn_module_free(m);
}

TEST(freeze_unfreeze) {
  mx_nn_module *m = toy_model(0);
  mx_map *t = NULL;
  ASSERT_OK(mx_nn_freeze(m, NULL, 0, true));
  ASSERT_OK(mx_nn_trainable_parameters(m, &t));
  ASSERT_EQ_INT(mx_map_size(t), 0);
  mx_map_free(t);
  ASSERT_OK(mx_nn_unfreeze(mx_nn_get(m, "model.layers.1"), NULL, 0, true)); /* a subtree */
  ASSERT_OK(mx_nn_trainable_parameters(m, &t));
  ASSERT_EQ_INT(mx_map_size(t), 6);
  ASSERT_STR_EQ(mx_map_key(t, 0), "model.layers.1.self_attn.q_proj.weight");
  mx_map_free(t);
  ASSERT_OK(mx_nn_unfreeze(m, NULL, 0, true));
  ASSERT_OK(mx_nn_freeze(m, (const char *[]){"bias"}, 1, true)); /* a local name everywhere */
  ASSERT(mx_nn_is_frozen(m, "model.layers.0.mlp.bias"));
  ASSERT(!mx_nn_is_frozen(m, "model.layers.0.mlp.weight"));
  ASSERT_OK(mx_nn_freeze(m, (const char *[]){"lm_head.weight", "model.layers.0"}, 2, true)); /* dotted paths */
  ASSERT(mx_nn_is_frozen(m, "lm_head.weight"));
  ASSERT(mx_nn_is_frozen(m, "model.layers.0.self_attn.v_proj.weight"));
  ASSERT_EQ_INT(mx_nn_num_parameters(m, true), VOCAB * DIM + 5 * DIM * DIM + DIM);
  ASSERT(mx_nn_freeze(m, (const char *[]){"nonexistent"}, 1, true) == MX_ERR_NOT_FOUND);
  ASSERT(mx_nn_freeze(m, (const char *[]){"model.layer.0"}, 1, true) == MX_ERR_NOT_FOUND);
  assert_contains(mx_last_error(), "model.layers.0");
  /* not recursive: only the module's own parameters */
  ASSERT_OK(mx_nn_unfreeze(m, NULL, 0, true));
  ASSERT_OK(mx_nn_freeze(mx_nn_get(m, "model.layers.0.mlp"), NULL, 0, false));
  ASSERT_EQ_INT(mx_nn_num_parameters(m, true), mx_nn_num_parameters(m, false) - DIM * DIM - DIM);
  mx_nn_module_free(m);
}

TEST(strict_update_errors) {
  mx_nn_module *m = toy_model(0);
  mx_map *p = NULL;
  ASSERT_OK(mx_nn_parameters(m, &p));
  ASSERT_OK(mx_nn_update(m, p, MX_NN_UPDATE_STRICT));
  /* unknown key, with a suggestion */
  mx_map *bad = mx_map_copy(p);
  mx_map_set_take(bad, "model.layer.0.mlp.bias", mx_zeros((int64_t[]){DIM}, 1, MX_FLOAT32));
  ASSERT(mx_nn_update(m, bad, MX_NN_UPDATE_PARTIAL) == MX_ERR_NOT_FOUND);
  assert_contains(mx_last_error(), "1 unknown key: model.layer.0.mlp.bias");
  assert_contains(mx_last_error(), "\"model.layers.0.mlp.bias\"");
  mx_map_free(bad);
  /* missing keys only matter in strict mode */
  mx_map *part = mx_map_new();
  mx_map_set(part, "lm_head.weight", mx_map_get(p, "lm_head.weight"));
  ASSERT_OK(mx_nn_update(m, part, MX_NN_UPDATE_PARTIAL));
  ASSERT(mx_nn_update(m, part, MX_NN_UPDATE_STRICT) == MX_ERR_NOT_FOUND);
  assert_contains(mx_last_error(), "missing keys: model.embed_tokens.weight");
  /* shape and dtype mismatches, listed together; nothing changes */
  mx_array *before = mx_nn_get_param(m, "model.norm.weight");
  mx_map_set_take(part, "model.norm.weight", mx_zeros((int64_t[]){DIM + 1}, 1, MX_FLOAT32));
  mx_map_set_take(part, "model.layers.0.mlp.bias", mx_zeros((int64_t[]){DIM}, 1, MX_FLOAT16));
  ASSERT(mx_nn_update(m, part, MX_NN_UPDATE_PARTIAL) == MX_ERR_SHAPE);
  assert_contains(mx_last_error(), "2 shape/dtype mismatches");
  assert_contains(mx_last_error(), "model.norm.weight (model float32[16] vs given float32[17])");
  assert_contains(mx_last_error(), "model.layers.0.mlp.bias (model float32[16] vs given float16[16])");
  ASSERT(mx_nn_get_param(m, "model.norm.weight") == before);
  /* loose: applies anyway */
  ASSERT_OK(mx_nn_update(m, part, MX_NN_UPDATE_LOOSE));
  ASSERT_EQ_INT(mx_array_dim(mx_nn_get_param(m, "model.norm.weight"), 0), DIM + 1);
  mx_map_free(part);
  mx_map_free(p);
  mx_nn_module_free(m);
}

static void check_same_params(mx_nn_module *a, mx_nn_module *b) {
  mx_map *pa = NULL, *pb = NULL;
  ASSERT_OK(mx_nn_parameters(a, &pa));
  ASSERT_OK(mx_nn_parameters(b, &pb));
  ASSERT_EQ_INT(mx_map_size(pa), mx_map_size(pb));
  for (int i = 0; i < mx_map_size(pa); i++) {
    bool eq = false;
    ASSERT_OK(mx_allclose(mx_map_value(pa, i), mx_map_get(pb, mx_map_key(pa, i)), 0, 0, &eq));
    ASSERT_MSG(eq, "parameter %s differs", mx_map_key(pa, i));
  }
  mx_map_free(pa);
  mx_map_free(pb);
}

TEST(save_load_weights_roundtrip) {
  const char *exts[] = {"safetensors", "npz"};
  for (int e = 0; e < 2; e++) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/mxc_test_nn_%d.%s", (int)getpid(), exts[e]);
    mx_nn_module *a = toy_model(1), *b = toy_model(2);
    ASSERT_OK(mx_nn_save_weights(a, path));
    /* the file holds MLX names */
    mx_map *f = NULL;
    ASSERT_OK(mx_load(path, &f, NULL));
    ASSERT(mx_map_has(f, "model.layers.1.self_attn.o_proj.weight"));
    ASSERT(mx_map_has(f, "lm_head.weight"));
    ASSERT_EQ_INT(mx_map_size(f), 1 + NLAYERS * 6 + 2);
    ASSERT_OK(mx_nn_load_weights(b, path, true));
    check_same_params(a, b);
    /* strict: an extra key and a missing key are errors naming them */
    mx_map_set_take(f, "extra.weight", mx_zeros((int64_t[]){2}, 1, MX_FLOAT32));
    mx_map_remove(f, "lm_head.weight");
    ASSERT(mx_nn_load_weights_map(b, f, true) == MX_ERR_NOT_FOUND);
    assert_contains(mx_last_error(), "unknown key: extra.weight");
    assert_contains(mx_last_error(), "missing key: lm_head.weight");
    ASSERT_OK(mx_nn_load_weights_map(b, f, false));
    /* shape mismatch is an error even when not strict */
    mx_map_set_take(f, "lm_head.weight", mx_zeros((int64_t[]){3, 3}, 2, MX_FLOAT32));
    ASSERT(mx_nn_load_weights_map(b, f, false) == MX_ERR_SHAPE);
    /* dtypes follow the file (MLX) */
    mx_map *h = mx_map_new();
    mx_map_set_take(h, "lm_head.weight", mx_zeros((int64_t[]){VOCAB, DIM}, 2, MX_BFLOAT16));
    ASSERT_OK(mx_nn_load_weights_map(b, h, false));
    ASSERT_EQ_INT(mx_array_dtype(mx_nn_get_param(b, "lm_head.weight")), MX_BFLOAT16);
    mx_map_free(h);
    mx_map_free(f);
    mx_nn_module_free(a);
    mx_nn_module_free(b);
    unlink(path);
  }
  mx_nn_module *a = toy_model(1);
  ASSERT(mx_nn_save_weights(a, "/tmp/x.bin") == MX_ERR_INVALID_ARG);
  ASSERT(mx_nn_load_weights(a, "/nonexistent/w.safetensors", true) != MX_OK);
  mx_nn_module_free(a);
}

TEST(set_dtype_train_eval_dropout) {
  mx_nn_module *m = toy_model(0);
  ASSERT_OK(mx_nn_set_dtype(m, MX_BFLOAT16));
  ASSERT_EQ_INT(mx_array_dtype(mx_nn_get_param(m, "model.layers.0.mlp.weight")), MX_BFLOAT16);
  ASSERT(mx_nn_set_dtype(m, MX_INT32) != MX_OK);
  ASSERT(mx_nn_is_training(mx_nn_get(m, "model.norm")));
  mx_nn_eval(m);
  ASSERT(!mx_nn_is_training(mx_nn_get(m, "model.layers.1.self_attn.k_proj")));
  mx_nn_module_free(m);

  mx_nn_module *d = mx_nn_dropout_new(0.25);
  mx_array *key = mx_random_key(3);
  ASSERT_OK(mx_nn_dropout_set_key(d, key));
  mx_array *x = mx_ones((int64_t[]){4000}, 1, MX_FLOAT32);
  mx_array *y1 = mx_nn_forward(d, x), *y2 = mx_nn_forward(d, x);
  double s1, zeros = 0;
  mx_array *sum = mx_sum(y1, NULL, 0, false);
  ASSERT_OK(mx_array_item(sum, &s1));
  const float *v = mx_array_data(y1);
  for (int i = 0; i < 4000; i++) {
    ASSERT(v[i] == 0.0f || fabsf(v[i] - 1.0f / 0.75f) < 1e-6f);
    zeros += v[i] == 0.0f;
  }
  ASSERT_NEAR(zeros / 4000, 0.25, 0.03);
  ASSERT_NEAR(s1 / 4000, 1.0, 0.05);
  bool same = true;
  ASSERT_OK(mx_allclose(y1, y2, 0, 0, &same));
  ASSERT(!same); /* the key is split on every call */
  mx_nn_eval(d);
  mx_array *y3 = mx_nn_forward(d, x);
  ASSERT_OK(mx_allclose(y3, x, 0, 0, &same));
  ASSERT(same);
  ASSERT(mx_nn_dropout_new(1.0) == NULL);
  mx_array *arr[] = {key, x, y1, y2, y3, sum};
  mx_array_free_n(arr, 6);
  mx_nn_module_free(d);
}

/* ==== LoRA ================================================================== */
static int lm_loss(void *payload, mx_nn_module *m, mx_array **in, int n, mx_list *out) {
  mx_array *logits = mx_nn_forward(m, in[0]);
  int st = mx_list_push(out, mx_nn_cross_entropy(logits, in[1], NULL, &(mx_nn_ce_options){.reduction = MX_NN_MEAN}));
  mx_array_free(logits);
  return st;
}

static double max_abs(mx_array *a) {
  mx_array *b = mx_abs(a);
  mx_array *m = mx_max(b, NULL, 0, false);
  double v = -1;
  mx_array_item(m, &v);
  mx_array_free(b);
  mx_array_free(m);
  return v;
}

TEST(lora_pattern_only_adapters_train) {
  mx_nn_module *m = toy_model(0);
  ASSERT_OK(mx_nn_freeze(m, NULL, 0, true));
  mx_array *key = mx_random_key(7);
  for (int l = 0; l < NLAYERS; l++) {
    const char *names[] = {"q_proj", "v_proj"};
    for (int j = 0; j < 2; j++) {
      char path[128];
      snprintf(path, sizeof path, "model.layers.%d.self_attn.%s", l, names[j]);
      mx_nn_module *lin = mx_nn_get(m, path);
      ASSERT_NOT_NULL(lin);
      ASSERT_OK(mx_nn_replace(m, path, mx_nn_lora_linear_new(lin, 4, 20.0, 0.0, key)));
    }
  }
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(m, "model.layers.1.self_attn.v_proj")), "LoRALinear");
  mx_map *t = NULL;
  ASSERT_OK(mx_nn_trainable_parameters(m, &t));
  ASSERT_EQ_INT(mx_map_size(t), NLAYERS * 2 * 2);
  for (int i = 0; i < mx_map_size(t); i++) {
    const char *k = mx_map_key(t, i);
    ASSERT_MSG(strstr(k, ".lora_a") || strstr(k, ".lora_b"), "trainable: %s", k);
  }
  ASSERT_STR_EQ(mx_map_key(t, 0), "model.layers.0.self_attn.q_proj.lora_a");
  ASSERT_EQ_INT(mx_array_dim(mx_map_get(t, "model.layers.0.self_attn.q_proj.lora_a"), 0), DIM);
  ASSERT_EQ_INT(mx_array_dim(mx_map_get(t, "model.layers.0.self_attn.q_proj.lora_a"), 1), 4);
  ASSERT_EQ_INT(mx_array_dim(mx_map_get(t, "model.layers.0.self_attn.q_proj.lora_b"), 0), 4);
  /* all parameter names keep the MLX layout: the base weight is under .linear */
  ASSERT_NOT_NULL(mx_nn_get_param(m, "model.layers.0.self_attn.q_proj.linear.weight"));
  mx_map_free(t);

  mx_array *x = toy_tokens();
  int32_t yv[10] = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
  mx_array *y = mx_array_from_data(yv, (int64_t[]){2, 5}, 2, MX_INT32);
  mx_map *g = mx_map_new();
  mx_list loss = MX_LIST_INIT;
  mx_array *before = mx_nn_get_param(m, "model.layers.0.self_attn.q_proj.lora_b");
  ASSERT_OK(mx_nn_value_and_grad(m, lm_loss, NULL, (mx_array *[]){x, y}, 2, &loss, g));
  ASSERT(mx_nn_get_param(m, "model.layers.0.self_attn.q_proj.lora_b") == before); /* restored */
  ASSERT_EQ_INT(mx_map_size(g), NLAYERS * 4);
  ASSERT_OK(mx_map_eval(g));
  for (int i = 0; i < mx_map_size(g); i++) {
    const char *k = mx_map_key(g, i);
    double mag = max_abs(mx_map_value(g, i));
    if (strstr(k, "lora_b")) ASSERT_MSG(mag > 0, "no gradient reached %s", k);
    else ASSERT_MSG(mag == 0, "lora_a gradient is nonzero while lora_b is 0: %s", k);
  }
  double l0;
  ASSERT_OK(mx_array_item(loss.items[0], &l0));
  ASSERT(l0 > 0);
  mx_list_clear(&loss);
  mx_map_free(g);
  mx_array_free(x);
  mx_array_free(y);
  mx_array_free(key);
  mx_nn_module_free(m);
}

static void check_fuse(bool dora, bool quantized) {
  mx_array *key = mx_random_key(11);
  mx_nn_module *lin = mx_nn_linear_new(64, 8, true, key);
  if (quantized) {
    mx_nn_module *q = mx_nn_quantized_linear_from_linear(lin, 32, 8);
    ASSERT_NOT_NULL(q);
    mx_nn_module_free(lin);
    lin = q;
  }
  mx_nn_module *l = dora ? mx_nn_dora_linear_new(lin, 4, 2.0, 0.0, key) : mx_nn_lora_linear_new(lin, 4, 2.0, 0.0, key);
  ASSERT_NOT_NULL(l);
  mx_nn_module_free(lin); /* the adapter keeps its own reference */
  /* a nonzero lora_b so the adapter matters */
  mx_map *p = mx_map_new();
  mx_map_set_take(p, "lora_b", mx_random_normal((int64_t[]){4, 8}, 2, MX_FLOAT32, 0, 0.1, key));
  ASSERT_OK(mx_nn_update(l, p, MX_NN_UPDATE_PARTIAL));
  mx_map_free(p);
  if (dora) ASSERT_NOT_NULL(mx_nn_param(l, "m"));
  mx_array *x = mx_random_normal((int64_t[]){3, 64}, 2, MX_FLOAT32, 0, 1, key);
  mx_array *y = mx_nn_forward(l, x);
  mx_nn_module *f = mx_nn_lora_fuse(l, true);
  ASSERT_NOT_NULL(f);
  ASSERT_STR_EQ(mx_nn_module_type(f), "Linear");
  mx_array *yf = mx_nn_forward(f, x);
  bool ok = false;
  ASSERT_OK(mx_allclose(yf, y, 1e-4, 1e-4, &ok));
  ASSERT_MSG(ok, "fused output differs");
  if (quantized) {
    mx_nn_module *fq = mx_nn_lora_fuse(l, false);
    ASSERT_STR_EQ(mx_nn_module_type(fq), "QuantizedLinear");
    mx_nn_module_free(fq);
  }
  mx_array *arr[] = {key, x, y, yf};
  mx_array_free_n(arr, 4);
  mx_nn_module_free(f);
  mx_nn_module_free(l);
}
TEST(lora_fuse) { check_fuse(false, false); }
TEST(dora_fuse) { check_fuse(true, false); }
TEST(lora_fuse_quantized) { check_fuse(false, true); }
TEST(dora_fuse_quantized) { check_fuse(true, true); }

TEST(dora_gradients_reach_magnitude) {
  mx_nn_module *m = toy_model(0);
  ASSERT_OK(mx_nn_freeze(m, NULL, 0, true));
  mx_nn_module *q = mx_nn_get(m, "model.layers.0.self_attn.q_proj");
  ASSERT_OK(mx_nn_replace(m, "model.layers.0.self_attn.q_proj", mx_nn_dora_linear_new(q, 4, 20.0, 0.0, NULL)));
  mx_map *t = NULL;
  ASSERT_OK(mx_nn_trainable_parameters(m, &t));
  ASSERT_EQ_INT(mx_map_size(t), 3);
  ASSERT_STR_EQ(mx_map_key(t, 0), "model.layers.0.self_attn.q_proj.m");
  mx_map_free(t);
  mx_array *x = toy_tokens();
  mx_map *g = mx_map_new();
  ASSERT_OK(mx_nn_value_and_grad(m, lm_loss, NULL, (mx_array *[]){x, x}, 2, NULL, g));
  ASSERT(max_abs(mx_map_get(g, "model.layers.0.self_attn.q_proj.m")) > 0);
  ASSERT(max_abs(mx_map_get(g, "model.layers.0.self_attn.q_proj.lora_b")) > 0);
  mx_map_free(g);
  mx_array_free(x);
  mx_nn_module_free(m);
}

/* ==== quantization ========================================================== */
static bool only_mlp(void *ctx, const char *path, mx_nn_module *m, int *gs, int *bits) {
  if (!strstr(path, "mlp")) return false;
  *bits = 8;
  return true;
}

TEST(quantize_model) {
  mx_nn_module *m = toy_model(0);
  mx_array *x = toy_tokens();
  mx_array *y0 = mx_nn_forward(m, x);
  /* DIM = 16 is not a multiple of 32: an error naming the path, nothing changed */
  ASSERT(mx_nn_quantize(m, 32, 4, NULL, NULL) == MX_ERR_SHAPE);
  assert_contains(mx_last_error(), "model.embed_tokens");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(m, "lm_head")), "Linear");
  mx_nn_module_free(m);

  /* 64-wide model */
  mx_nn_module *s = mx_nn_sequential_new(4, (mx_nn_module *[]){mx_nn_embedding_new(10, 64, NULL),
      mx_nn_linear_new(64, 64, true, NULL), mx_nn_gelu_new(false), mx_nn_linear_new(64, 32, false, NULL)});
  mx_array *ys = mx_nn_forward(s, x);
  ASSERT_OK(mx_nn_quantize(s, 32, 8, NULL, NULL));
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(s, "layers.0")), "QuantizedEmbedding");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(s, "layers.1")), "QuantizedLinear");
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(s, "layers.2")), "GELU");
  mx_map *p = NULL;
  ASSERT_OK(mx_nn_parameters(s, &p));
  ASSERT_STR_EQ(mx_map_key(p, 0), "layers.0.weight");
  ASSERT_STR_EQ(mx_map_key(p, 1), "layers.0.scales");
  ASSERT_STR_EQ(mx_map_key(p, 2), "layers.0.biases");
  ASSERT_STR_EQ(mx_map_key(p, 6), "layers.1.bias");
  ASSERT_EQ_INT(mx_array_dtype(mx_map_get(p, "layers.1.weight")), MX_UINT32);
  ASSERT_EQ_INT(mx_array_dim(mx_map_get(p, "layers.1.weight"), 1), 64 * 8 / 32);
  mx_map_free(p);
  /* quantized weights are frozen; the Linear bias stays trainable */
  mx_map *t = NULL;
  ASSERT_OK(mx_nn_trainable_parameters(s, &t));
  ASSERT_EQ_INT(mx_map_size(t), 1);
  ASSERT_STR_EQ(mx_map_key(t, 0), "layers.1.bias");
  mx_map_free(t);
  mx_array *yq = mx_nn_forward(s, x);
  bool ok = false;
  ASSERT_OK(mx_allclose(yq, ys, 0.05, 0.05, &ok));
  ASSERT_MSG(ok, "8-bit quantized model output too far from the float one");
  /* tied head through the quantized embedding */
  mx_array *h = mx_random_normal((int64_t[]){2, 64}, 2, MX_FLOAT32, 0, 1, NULL);
  mx_array *lg = mx_nn_embedding_as_linear(mx_nn_get(s, "layers.0"), h);
  ASSERT_NOT_NULL(lg);
  ASSERT_EQ_INT(mx_array_dim(lg, 1), 10);
  mx_nn_module_free(s);

  /* a predicate choosing layers and their bits */
  mx_nn_module *m2 = mx_nn_sequential_new(2, (mx_nn_module *[]){mx_nn_linear_new(64, 64, false, NULL),
                                                                mx_nn_linear_new(64, 64, false, NULL)});
  mx_nn_module *wrap = mx_nn_module_new(&wrapper_vt, sizeof(mx_nn_module));
  mx_nn_add_child(wrap, "mlp", m2);
  mx_nn_add_child(wrap, "head", mx_nn_linear_new(64, 64, false, NULL));
  ASSERT_OK(mx_nn_quantize(wrap, 64, 4, only_mlp, NULL));
  int gs = 0, bits = 0;
  ASSERT_OK(mx_nn_quantized_info(mx_nn_get(wrap, "mlp.layers.1"), &gs, &bits));
  ASSERT_EQ_INT(gs, 64);
  ASSERT_EQ_INT(bits, 8);
  ASSERT_STR_EQ(mx_nn_module_type(mx_nn_get(wrap, "head")), "Linear");
  mx_nn_module_free(wrap);
  mx_array *arr[] = {x, y0, ys, yq, h, lg};
  mx_array_free_n(arr, 6);
}

/* ==== init, errors ============================================================ */
static void moments(mx_array *a, double *mean, double *std, double *lo, double *hi) {
  int64_t n = mx_array_size(a);
  double *v = malloc(sizeof(double) * (size_t)n), s = 0, s2 = 0;
  mx_array_copy_to(a, MX_FLOAT64, v, n);
  *lo = INFINITY;
  *hi = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    s += v[i];
    s2 += v[i] * v[i];
    *lo = fmin(*lo, v[i]);
    *hi = fmax(*hi, v[i]);
  }
  *mean = s / (double)n;
  *std = sqrt(s2 / (double)n - *mean * *mean);
  free(v);
}

TEST(init_functions) {
  mx_array *key = mx_random_key(5);
  int64_t shp[] = {200, 300};
  double mean, std, lo, hi;
  mx_array *a = mx_nn_init_glorot_normal(shp, 2, MX_FLOAT32, 1.0, key);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT_NEAR(std, sqrt(2.0 / 500.0), 0.002);
  mx_array_free(a);
  a = mx_nn_init_glorot_uniform(shp, 2, MX_FLOAT32, 2.0, key);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT(hi <= 2 * sqrt(6.0 / 500.0) && lo >= -2 * sqrt(6.0 / 500.0));
  ASSERT(hi > 0.95 * 2 * sqrt(6.0 / 500.0));
  mx_array_free(a);
  a = mx_nn_init_he_normal(shp, 2, MX_FLOAT32, false, 1.0, key);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT_NEAR(std, 1.0 / sqrt(300.0), 0.002);
  mx_array_free(a);
  a = mx_nn_init_he_uniform((int64_t[]){50, 3, 4}, 3, MX_FLOAT32, true, 1.0, key); /* fan_out = 50 * 3 */
  moments(a, &mean, &std, &lo, &hi);
  ASSERT(hi <= sqrt(3.0 / 150.0));
  mx_array_free(a);
  a = mx_nn_init_normal(shp, 2, MX_FLOAT32, 1.0, 0.5, key);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT_NEAR(mean, 1.0, 0.01);
  ASSERT_NEAR(std, 0.5, 0.01);
  mx_array_free(a);
  a = mx_nn_init_uniform(shp, 2, MX_FLOAT32, -3, -2, key);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT(lo >= -3 && hi < -2);
  mx_array_free(a);
  a = mx_nn_init_constant(shp, 2, MX_FLOAT16, 0.5);
  moments(a, &mean, &std, &lo, &hi);
  ASSERT(lo == 0.5 && hi == 0.5);
  mx_array_free(a);
  /* same key, same values */
  mx_array *b1 = mx_nn_init_he_normal(shp, 2, MX_FLOAT32, false, 1.0, key);
  mx_array *b2 = mx_nn_init_he_normal(shp, 2, MX_FLOAT32, false, 1.0, key);
  bool eq = false;
  ASSERT_OK(mx_allclose(b1, b2, 0, 0, &eq));
  ASSERT(eq);
  ASSERT(mx_nn_init_glorot_normal((int64_t[]){5}, 1, MX_FLOAT32, 1.0, key) == NULL);
  mx_array_free(b1);
  mx_array_free(b2);
  /* layers given the same key start identical (reproducible models) */
  mx_nn_module *l1 = mx_nn_linear_new(8, 4, true, key), *l2 = mx_nn_linear_new(8, 4, true, key);
  check_same_params(l1, l2);
  mx_nn_module_free(l1);
  mx_nn_module_free(l2);
  mx_array_free(key);
}

TEST(user_errors_never_crash) {
  ASSERT(mx_nn_linear_new(0, 3, true, NULL) == NULL);
  ASSERT(mx_nn_rope_new(3, false, 10000, 1) == NULL);
  ASSERT(mx_nn_multi_head_attention_new(10, 3, 0, 0, 0, 0, 0, false, NULL) == NULL);
  mx_nn_module *w = mx_nn_module_new(&wrapper_vt, sizeof(mx_nn_module));
  mx_array *x = mx_ones((int64_t[]){2}, 1, MX_FLOAT32);
  ASSERT(mx_nn_forward(w, x) == NULL);
  assert_contains(mx_last_error(), "Wrapper cannot be called");
  ASSERT(mx_nn_forward(NULL, x) == NULL);
  ASSERT(mx_nn_add_param(w, "a.b", mx_array_retain(x)) == MX_ERR_INVALID_ARG);
  ASSERT(mx_nn_add_child(w, "c", NULL) != MX_OK);
  ASSERT(mx_nn_lora_linear_new(w, 4, 1, 0, NULL) == NULL);
  ASSERT(mx_nn_lora_fuse(w, false) == NULL);
  mx_nn_module *lin = mx_nn_linear_new(4, 3, false, NULL);
  mx_array *bad = mx_nn_forward(lin, x); /* (2,) @ (4, 3): shape error from matmul */
  ASSERT(bad == NULL);
  mx_array *t = mx_zeros((int64_t[]){3}, 1, MX_INT32);
  mx_array *lg = mx_zeros((int64_t[]){2, 4}, 2, MX_FLOAT32);
  ASSERT(mx_nn_cross_entropy(lg, x, NULL, NULL) == NULL); /* float class indices */
  ASSERT(mx_nn_cross_entropy(lg, t, NULL, NULL) == NULL);
  assert_contains(mx_last_error(), "cross_entropy");
  ASSERT(mx_nn_mse_loss(lg, x, MX_NN_MEAN) == NULL);
  mx_nn_module_free(NULL);
  mx_array *arr[] = {x, t, lg};
  mx_array_free_n(arr, 3);
  mx_nn_module_free(lin);
  mx_nn_module_free(w);
}

TEST(print_module) {
  mx_nn_module *m = toy_model(0);
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  ASSERT_OK(mx_nn_print(m, f));
  fclose(f);
  assert_contains(buf, "(layers.1): TransformerBlock(");
  assert_contains(buf, "(q_proj): Linear(input_dims=16, output_dims=16, bias=False)");
  free(buf);
  mx_nn_module_free(m);
}

int main(int argc, char **argv) { return test_main(argc, argv); }

/* ==== training: a small MLP and a 2-layer transformer learn synthetic tasks ==== */
#include "mxc/optim.h"

typedef struct {
  mx_nn_module *model;
  mx_nn_loss_fn loss;
  mx_optimizer *opt;
  mx_map *params; /* trainable parameters, updated by the optimizer */
} trainer;

static int train_step(trainer *t, mx_array **batch, int n, double *loss_out) {
  mx_map *g = mx_map_new();
  mx_list v = MX_LIST_INIT;
  int st = mx_nn_value_and_grad(t->model, t->loss, NULL, batch, n, &v, g);
  if (!st) st = mx_optimizer_update(t->opt, t->params, g);
  if (!st) st = mx_optimizer_eval(t->opt, t->params);
  if (!st) st = mx_nn_update(t->model, t->params, MX_NN_UPDATE_PARTIAL);
  if (!st) st = mx_array_item(v.items[0], loss_out);
  mx_list_clear(&v);
  mx_map_free(g);
  return st;
}

static int ce_loss(void *payload, mx_nn_module *m, mx_array **in, int n, mx_list *out) {
  mx_array *logits = mx_nn_forward(m, in[0]);
  int st = mx_list_push(out, mx_nn_cross_entropy(logits, in[1], NULL, &(mx_nn_ce_options){.reduction = MX_NN_MEAN}));
  mx_array_free(logits);
  return st;
}

static double accuracy(mx_nn_module *m, mx_array *x, mx_array *y) {
  mx_array *logits = mx_nn_forward(m, x);
  mx_array *pred = mx_argmax(logits, -1, false);
  mx_array *yy = mx_astype(y, mx_array_dtype(pred));
  mx_array *eq = mx_equal(pred, yy);
  mx_array *ef = mx_astype(eq, MX_FLOAT32);
  mx_array *acc = mx_mean(ef, NULL, 0, false);
  double a = -1;
  mx_array_item(acc, &a);
  mx_array *arr[] = {logits, pred, yy, eq, ef, acc};
  mx_array_free_n(arr, 6);
  return a;
}

/* MLP: 8 features, label = argmax of the first 4. Returns the loss curve. */
static double mlp_run(int steps, double *curve) {
  mx_array *key = mx_random_key(42);
  mx_array *k[4];
  mx_array *ks = mx_random_split(key, 4);
  for (int i = 0; i < 4; i++) {
    mx_array *r = mx_slice_axis(ks, 0, i, i + 1, 1);
    k[i] = mx_reshape(r, (int64_t[]){2}, 1);
    mx_array_free(r);
  }
  mx_nn_module *m = mx_nn_sequential_new(3, (mx_nn_module *[]){mx_nn_linear_new(8, 32, true, k[0]),
      mx_nn_relu_new(), mx_nn_linear_new(32, 4, true, k[1])});
  mx_array *x = mx_random_normal((int64_t[]){256, 8}, 2, MX_FLOAT32, 0, 1, k[2]);
  mx_array *first = mx_slice_axis(x, 1, 0, 4, 1);
  mx_array *y = mx_argmax(first, -1, false);
  mx_adam_options o = MX_ADAM_OPTIONS(1e-2);
  trainer t = {m, ce_loss, mx_optimizer_adam(&o), NULL};
  mx_nn_trainable_parameters(m, &t.params);
  for (int s = 0; s < steps; s++)
    if (train_step(&t, (mx_array *[]){x, y}, 2, &curve[s])) curve[s] = NAN;
  double acc = accuracy(m, x, y);
  mx_map_free(t.params);
  mx_optimizer_free(t.opt);
  mx_array *arr[] = {key, ks, k[0], k[1], k[2], k[3], x, first, y};
  mx_array_free_n(arr, 9);
  mx_nn_module_free(m);
  return acc;
}

TEST(train_mlp_reaches_accuracy_deterministically) {
  enum { STEPS = 150 };
  double c1[STEPS], c2[STEPS];
  int threads = mx_get_num_threads();
  double acc = mlp_run(STEPS, c1);
  ASSERT_MSG(acc >= 0.95, "MLP accuracy %.3f after %d steps (loss %.4f -> %.4f)", acc, STEPS, c1[0], c1[STEPS - 1]);
  printf("  info: MLP accuracy %.3f, loss %.4f -> %.4f in %d steps\n", acc, c1[0], c1[STEPS - 1], STEPS);
  mx_set_num_threads(threads > 1 ? 1 : 3);
  mlp_run(STEPS, c2);
  mx_set_num_threads(threads);
  for (int i = 0; i < STEPS; i++) ASSERT_MSG(c1[i] == c2[i], "step %d: loss %.9g vs %.9g", i, c1[i], c2[i]);
}

/* A 2-layer transformer that learns to reverse sequences of 6 tokens. */
static mx_array *tblock_forward(mx_nn_module *self, mx_array *const *in, int n) {
  mx_array *h = mx_nn_forward(mx_nn_child(self, "ln1"), in[0]);
  mx_array *a = mx_nn_forward_n(mx_nn_child(self, "attention"), (mx_array *[]){h, h, h}, 3);
  mx_array *x = mx_add(in[0], a);
  mx_array *h2 = mx_nn_forward(mx_nn_child(self, "ln2"), x);
  mx_array *f = mx_nn_forward(mx_nn_child(self, "mlp"), h2);
  mx_array *y = mx_add(x, f);
  mx_array *arr[] = {h, a, x, h2, f};
  mx_array_free_n(arr, 5);
  return y;
}
static const mx_nn_module_vtable tblock_vt = {"Block", tblock_forward, NULL, NULL, NULL};

static mx_array *tmodel_forward(mx_nn_module *self, mx_array *const *in, int n) {
  int64_t L = mx_array_dim(in[0], 1);
  mx_array *pos = mx_arange(0, (double)L, 1, MX_INT32);
  mx_array *te = mx_nn_forward(mx_nn_child(self, "tok"), in[0]);
  mx_array *pe = mx_nn_forward(mx_nn_child(self, "pos"), pos);
  mx_array *x = mx_add(te, pe);
  for (int i = 0; i < mx_nn_list_size(self, "layers") && x; i++) {
    mx_array *y = mx_nn_forward(mx_nn_list_item(self, "layers", i), x);
    mx_array_free(x);
    x = y;
  }
  mx_array *h = mx_nn_forward(mx_nn_child(self, "norm"), x);
  mx_array *out = mx_nn_forward(mx_nn_child(self, "head"), h);
  mx_array *arr[] = {pos, te, pe, x, h};
  mx_array_free_n(arr, 5);
  return out;
}
static const mx_nn_module_vtable tmodel_vt = {"Transformer", tmodel_forward, NULL, NULL, NULL};

enum { TV = 8, TL = 6, TD = 32 };

static mx_nn_module *tmodel_new(mx_array *key) {
  mx_array *ks = mx_random_split(key, 16);
  mx_array *k[16];
  for (int i = 0; i < 16; i++) {
    mx_array *r = mx_slice_axis(ks, 0, i, i + 1, 1);
    k[i] = mx_reshape(r, (int64_t[]){2}, 1);
    mx_array_free(r);
  }
  mx_nn_module *m = mx_nn_module_new(&tmodel_vt, sizeof(mx_nn_module));
  mx_nn_add_child(m, "tok", mx_nn_embedding_new(TV, TD, k[0]));
  mx_nn_add_child(m, "pos", mx_nn_embedding_new(TL, TD, k[1]));
  for (int l = 0; l < 2; l++) {
    mx_nn_module *b = mx_nn_module_new(&tblock_vt, sizeof(mx_nn_module));
    mx_nn_add_child(b, "attention", mx_nn_multi_head_attention_new(TD, 2, 0, 0, 0, 0, 0, false, k[2 + 4 * l]));
    mx_nn_add_child(b, "ln1", mx_nn_layer_norm_new(TD, 1e-5, true, true));
    mx_nn_add_child(b, "ln2", mx_nn_layer_norm_new(TD, 1e-5, true, true));
    mx_nn_add_child(b, "mlp", mx_nn_sequential_new(3, (mx_nn_module *[]){mx_nn_linear_new(TD, 2 * TD, true, k[3 + 4 * l]),
        mx_nn_gelu_new(false), mx_nn_linear_new(2 * TD, TD, true, k[4 + 4 * l])}));
    mx_nn_list_append(m, "layers", b);
  }
  mx_nn_add_child(m, "norm", mx_nn_rms_norm_new(TD, 1e-5));
  mx_nn_add_child(m, "head", mx_nn_linear_new(TD, TV, true, k[12]));
  mx_array_free_n(k, 16);
  mx_array_free(ks);
  return m;
}

/* batch of random sequences and their reversals */
static void reverse_batch(uint64_t seed, int B, mx_array **x, mx_array **y) {
  mx_array *key = mx_random_key(seed);
  *x = mx_random_randint(0, TV, (int64_t[]){B, TL}, 2, MX_INT32, key);
  int64_t idx[TL];
  for (int i = 0; i < TL; i++) idx[i] = TL - 1 - i;
  mx_array *ri = mx_array_from_data(idx, (int64_t[]){TL}, 1, MX_INT64);
  *y = mx_take(*x, ri, 1);
  mx_array_free(ri);
  mx_array_free(key);
}

static double transformer_run(int steps, double *curve) {
  mx_array *key = mx_random_key(7);
  mx_nn_module *m = tmodel_new(key);
  mx_adam_options o = MX_ADAM_OPTIONS(3e-3);
  trainer t = {m, ce_loss, mx_optimizer_adam(&o), NULL};
  mx_nn_trainable_parameters(m, &t.params);
  for (int s = 0; s < steps; s++) {
    mx_array *x, *y;
    reverse_batch(1000 + (uint64_t)s, 32, &x, &y);
    if (train_step(&t, (mx_array *[]){x, y}, 2, &curve[s])) curve[s] = NAN;
    mx_array_free(x);
    mx_array_free(y);
  }
  mx_array *x, *y;
  reverse_batch(99, 256, &x, &y); /* unseen sequences */
  double acc = accuracy(m, x, y);
  mx_array_free(x);
  mx_array_free(y);
  mx_map_free(t.params);
  mx_optimizer_free(t.opt);
  mx_array_free(key);
  mx_nn_module_free(m);
  return acc;
}

TEST(train_transformer_reverses_sequences) {
  enum { STEPS = 300 };
  double c1[STEPS], c2[STEPS];
  double acc = transformer_run(STEPS, c1);
  ASSERT_MSG(acc >= 0.9, "transformer token accuracy %.3f after %d steps (loss %.4f -> %.4f)", acc, STEPS, c1[0],
             c1[STEPS - 1]);
  printf("  info: transformer accuracy %.3f, loss %.4f -> %.4f in %d steps\n", acc, c1[0], c1[STEPS - 1], STEPS);
  int threads = mx_get_num_threads();
  mx_set_num_threads(threads > 1 ? 1 : 3);
  transformer_run(40, c2); /* the first 40 steps, on another thread count */
  mx_set_num_threads(threads);
  for (int i = 0; i < 40; i++) ASSERT_MSG(c1[i] == c2[i], "step %d: loss %.9g vs %.9g", i, c1[i], c2[i]);
}
