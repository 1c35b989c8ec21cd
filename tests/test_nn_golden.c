/* test_nn_golden.c — mxc/nn.h layers and losses against PyTorch.
 *
 * Fixtures: tests/fixtures/nn/<case>.npz, written by
 * tests/gen/gen_nn_golden.py (see there for the layout). Each layer is
 * rebuilt from the file's parameters (set with mx_nn_update, the MLX
 * names), run on the file's inputs, and its output and the gradients of
 * sum(out * cot) with respect to every input and parameter are compared
 * (through mx_vjp, so the module code runs on tracers). Losses compare the
 * value and the gradient with respect to the predictions. */
#include "mxc/mxc.h"
#include "test.h"

#define FIX MXC_SOURCE_DIR "/tests/fixtures/nn/"

/* A case builds its output from named values (inputs and parameters). */
typedef mx_array *(*build_fn)(const mx_map *v);

static mx_array *V(const mx_map *v, const char *k) { return mx_map_get(v, k); }

/* ---- layers ------------------------------------------------------------------- */
/* A module of type `m` with its parameters set from v's non-input keys. */
static mx_array *run_module(mx_nn_module *m, const mx_map *v, mx_array **in, int n) {
  if (!m) return NULL;
  mx_map *p = mx_map_new();
  for (int i = 0; i < mx_map_size(v); i++) {
    const char *k = mx_map_key(v, i);
    if (!strncmp(k, "param.", 6)) mx_map_set(p, k + 6, mx_map_value(v, i));
  }
  mx_array *y = NULL;
  if (mx_nn_update(m, p, MX_NN_UPDATE_STRICT) == MX_OK) y = mx_nn_forward_n(m, in, n);
  mx_map_free(p);
  mx_nn_module_free(m);
  return y;
}

static mx_array *b_linear(const mx_map *v) {
  mx_array *w = V(v, "param.weight");
  return run_module(mx_nn_linear_new(mx_array_dim(w, 1), mx_array_dim(w, 0), mx_map_has(v, "param.bias"), NULL), v,
                    (mx_array *[]){V(v, "in.x")}, 1);
}
static mx_array *b_embedding(const mx_map *v) {
  mx_array *w = V(v, "param.weight");
  return run_module(mx_nn_embedding_new(mx_array_dim(w, 0), mx_array_dim(w, 1), NULL), v,
                    (mx_array *[]){V(v, "in.idx")}, 1);
}
static mx_array *b_embedding_as_linear(const mx_map *v) {
  mx_array *w = V(v, "param.weight");
  mx_nn_module *e = mx_nn_embedding_new(mx_array_dim(w, 0), mx_array_dim(w, 1), NULL);
  mx_map *p = mx_map_new();
  mx_map_set(p, "weight", w);
  mx_array *y = mx_nn_update(e, p, MX_NN_UPDATE_STRICT) ? NULL : mx_nn_embedding_as_linear(e, V(v, "in.x"));
  mx_map_free(p);
  mx_nn_module_free(e);
  return y;
}
static mx_array *b_rms_norm(const mx_map *v) {
  return run_module(mx_nn_rms_norm_new(mx_array_dim(V(v, "param.weight"), 0), 1e-5), v,
                    (mx_array *[]){V(v, "in.x")}, 1);
}
static mx_array *b_layer_norm(const mx_map *v) {
  bool affine = mx_map_has(v, "param.weight");
  return run_module(mx_nn_layer_norm_new(mx_array_dim(V(v, "in.x"), -1), 1e-5, affine, affine), v,
                    (mx_array *[]){V(v, "in.x")}, 1);
}
static mx_array *b_rope(const mx_map *v) {
  return run_module(mx_nn_rope_new(8, false, 10000, 1.0), v, (mx_array *[]){V(v, "in.x")}, 1);
}
static mx_array *b_rope_trad(const mx_map *v) {
  mx_nn_module *r = mx_nn_rope_new(8, true, 10000, 1.0);
  mx_array *y = mx_nn_rope_apply(r, V(v, "in.x"), 3);
  mx_nn_module_free(r);
  return y;
}
static mx_array *b_rope_partial(const mx_map *v) {
  mx_nn_module *r = mx_nn_rope_new(4, false, 500, 0.5);
  mx_array *y = mx_nn_rope_apply(r, V(v, "in.x"), 2);
  mx_nn_module_free(r);
  return y;
}
static mx_array *b_mha(const mx_map *v) {
  return run_module(mx_nn_multi_head_attention_new(8, 2, 0, 0, 0, 0, 0, false, NULL), v,
                    (mx_array *[]){V(v, "in.q"), V(v, "in.k"), V(v, "in.v"), V(v, "in.mask")}, 4);
}

#define ACT(fname, expr)                                                     \
  static mx_array *b_act_##fname(const mx_map *v) {                          \
    mx_array *x = V(v, "in.x");                                              \
    return expr;                                                             \
  }
ACT(relu, mx_nn_relu(x))
ACT(relu6, mx_nn_relu6(x))
ACT(leaky_relu, mx_nn_leaky_relu(x, 0.01))
ACT(elu, mx_nn_elu(x, 1.0))
ACT(celu, mx_nn_celu(x, 1.5))
ACT(selu, mx_nn_selu(x))
ACT(gelu, mx_nn_gelu(x))
ACT(gelu_approx, mx_nn_gelu_approx(x))
ACT(gelu_fast_approx, mx_nn_gelu_fast_approx(x))
ACT(silu, mx_nn_silu(x))
ACT(sigmoid, mx_nn_sigmoid(x))
ACT(log_sigmoid, mx_nn_log_sigmoid(x))
ACT(tanh, mx_nn_tanh(x))
ACT(softplus, mx_nn_softplus(x))
ACT(softsign, mx_nn_softsign(x))
ACT(mish, mx_nn_mish(x))
ACT(hardswish, mx_nn_hardswish(x))
ACT(hard_tanh, mx_nn_hard_tanh(x, -1, 1))
ACT(glu, mx_nn_glu(x, -1))

/* ---- losses -------------------------------------------------------------------- */
#define LG V(v, "in.logits")
#define TG V(v, "in.targets")
#define CE(fname, w, ...)                                                             \
  static mx_array *b_##fname(const mx_map *v) {                                      \
    return mx_nn_cross_entropy(LG, TG, w, &(mx_nn_ce_options){__VA_ARGS__});         \
  }
CE(ce_indices_none, NULL, .reduction = MX_NN_NONE)
CE(ce_indices_mean, NULL, .reduction = MX_NN_MEAN)
CE(ce_indices_sum, NULL, .reduction = MX_NN_SUM)
CE(ce_smoothing_mean, NULL, .reduction = MX_NN_MEAN, .label_smoothing = 0.2)
CE(ce_weights_sum, V(v, "in.weights"), .reduction = MX_NN_SUM)
CE(ce_probs_mean, NULL, .reduction = MX_NN_MEAN)
CE(ce_probs_smoothing_none, NULL, .label_smoothing = 0.1)
CE(ce_ignore_mean, NULL, .reduction = MX_NN_MEAN, .use_ignore_index = true, .ignore_index = -100)
CE(ce_axis1_3d_mean, NULL, .reduction = MX_NN_MEAN, .axis = 1)
static mx_array *b_bce_logits_mean(const mx_map *v) { return mx_nn_binary_cross_entropy(LG, TG, NULL, true, MX_NN_MEAN); }
static mx_array *b_bce_logits_weights_none(const mx_map *v) {
  return mx_nn_binary_cross_entropy(LG, TG, V(v, "in.weights"), true, MX_NN_NONE);
}
static mx_array *b_bce_probs_sum(const mx_map *v) { return mx_nn_binary_cross_entropy(LG, TG, NULL, false, MX_NN_SUM); }
static mx_array *b_mse_mean(const mx_map *v) { return mx_nn_mse_loss(LG, TG, MX_NN_MEAN); }
static mx_array *b_mse_none(const mx_map *v) { return mx_nn_mse_loss(LG, TG, MX_NN_NONE); }
static mx_array *b_l1_sum(const mx_map *v) { return mx_nn_l1_loss(LG, TG, MX_NN_SUM); }
static mx_array *b_smooth_l1_mean(const mx_map *v) { return mx_nn_smooth_l1_loss(LG, TG, 0.5, MX_NN_MEAN); }
static mx_array *b_nll_mean(const mx_map *v) { return mx_nn_nll_loss(LG, TG, -1, MX_NN_MEAN); }
static mx_array *b_kl_div_sum(const mx_map *v) { return mx_nn_kl_div_loss(LG, TG, -1, MX_NN_SUM); }

/* ---- the driver --------------------------------------------------------------------- */
typedef struct {
  build_fn build;
  char **names; /* primal names, in order */
  int n;
  const mx_map *all; /* every array of the file (non-differentiated ones too) */
} case_ctx;

static int case_apply(void *payload, mx_array **in, int n, mx_list *out) {
  case_ctx *c = payload;
  mx_map *v = mx_map_copy(c->all);
  for (int i = 0; i < n; i++) mx_map_set(v, c->names[i], in[i]);
  int st = mx_list_push(out, c->build(v));
  mx_map_free(v);
  return st;
}

/* max |a - b| / (atol + rtol |b|) <= 1 */
static void check_close(const char *cs, const char *what, mx_array *a, mx_array *b, double tol) {
  ASSERT_NOT_NULL(a);
  ASSERT_MSG(mx_array_ndim(a) == mx_array_ndim(b) && mx_array_size(a) == mx_array_size(b),
             "%s %s: shape mismatch (ndim %d vs %d, size %lld vs %lld)", cs, what, mx_array_ndim(a),
             mx_array_ndim(b), (long long)mx_array_size(a), (long long)mx_array_size(b));
  int64_t n = mx_array_size(a);
  double *x = malloc(sizeof(double) * (size_t)(n ? n : 1)), *y = malloc(sizeof(double) * (size_t)(n ? n : 1));
  ASSERT_OK(mx_array_copy_to(a, MX_FLOAT64, x, n));
  ASSERT_OK(mx_array_copy_to(b, MX_FLOAT64, y, n));
  double worst = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(x[i] - y[i]) / (tol + tol * fabs(y[i]));
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  double xa = n ? x[at] : 0, ya = n ? y[at] : 0;
  free(x);
  free(y);
  ASSERT_MSG(worst <= 1.0, "%s %s: element %lld: mxc %.9g vs torch %.9g (tol %g)", cs, what, (long long)at, xa,
             ya, tol);
}

static void run_case(const char *cs, build_fn build, double tol) {
  char path[512];
  snprintf(path, sizeof path, FIX "%s.npz", cs);
  mx_map *f = NULL;
  ASSERT_OK(mx_load(path, &f, NULL));
  /* primals: float inputs and parameters that have a reference gradient */
  char *names[16];
  mx_array *primals[16];
  int n = 0;
  mx_map *all = mx_map_new();
  for (int i = 0; i < mx_map_size(f); i++) {
    const char *k = mx_map_key(f, i);
    char name[128];
    snprintf(name, sizeof name, "%s", k);
    char *p = strstr(name, "_proj_weight"); /* python kwargs: query_proj_weight -> query_proj.weight */
    if (p) p[5] = '.';
    if (strncmp(name, "in.", 3) && strncmp(name, "param.", 6)) continue;
    mx_map_set(all, name, mx_map_value(f, i));
    char gk[140];
    snprintf(gk, sizeof gk, "grad.%s", strchr(k, '.') + 1);
    if (mx_map_has(f, gk) && strcmp(name, "in.mask") && n < 16) {
      names[n] = strdup(name);
      primals[n++] = mx_map_value(f, i);
    }
  }
  case_ctx c = {build, names, n, all};
  mx_closure *cl = mx_closure_new(case_apply, &c, NULL);
  mx_list outs = MX_LIST_INIT;
  mx_array *cot = mx_map_has(f, "cot") ? mx_array_retain(mx_map_get(f, "cot")) : NULL;
  mx_clear_error();
  mx_list first = MX_LIST_INIT;
  int st = case_apply(&c, primals, n, &first);
  if (st == MX_OK && !cot) cot = mx_ones_like(first.items[0]);
  mx_list grads = MX_LIST_INIT;
  if (st == MX_OK) st = mx_vjp(cl, primals, n, &cot, 1, &outs, &grads);
  if (st == MX_OK) {
    check_close(cs, "output", outs.items[0], mx_map_get(f, "out"), tol);
    for (int i = 0; i < n; i++) {
      char gk[140];
      const char *orig = NULL;
      for (int j = 0; j < mx_map_size(f); j++) {
        char name[128];
        snprintf(name, sizeof name, "%s", mx_map_key(f, j));
        char *p = strstr(name, "_proj_weight");
        if (p) p[5] = '.';
        if (!strcmp(name, names[i])) orig = mx_map_key(f, j);
      }
      snprintf(gk, sizeof gk, "grad.%s", strchr(orig, '.') + 1);
      char what[160];
      snprintf(what, sizeof what, "d/d %s", names[i]);
      check_close(cs, what, grads.items[i], mx_map_get(f, gk), tol);
    }
  }
  const char *err = st ? mx_last_error() : "";
  char msg[512];
  snprintf(msg, sizeof msg, "%s", err);
  mx_list_clear(&first);
  mx_list_clear(&outs);
  mx_list_clear(&grads);
  mx_array_free(cot);
  mx_closure_free(cl);
  for (int i = 0; i < n; i++) free(names[i]);
  mx_map_free(all);
  mx_map_free(f);
  ASSERT_MSG(st == MX_OK, "%s: %s", cs, msg);
}

#define GOLD(cs, fn, tol) \
  TEST(golden_##cs) { run_case(#cs, fn, tol); }

GOLD(linear, b_linear, 1e-5)
GOLD(linear_nobias, b_linear, 1e-5)
GOLD(embedding, b_embedding, 1e-5)
GOLD(embedding_as_linear, b_embedding_as_linear, 1e-5)
GOLD(rms_norm, b_rms_norm, 1e-5)
GOLD(layer_norm, b_layer_norm, 1e-5)
GOLD(layer_norm_noaffine, b_layer_norm, 1e-5)
GOLD(rope, b_rope, 1e-5)
GOLD(rope_traditional_offset, b_rope_trad, 1e-5)
GOLD(rope_partial, b_rope_partial, 1e-5)
GOLD(mha, b_mha, 1e-5)
GOLD(act_relu, b_act_relu, 1e-6)
GOLD(act_relu6, b_act_relu6, 1e-6)
GOLD(act_leaky_relu, b_act_leaky_relu, 1e-6)
GOLD(act_elu, b_act_elu, 1e-6)
GOLD(act_celu, b_act_celu, 1e-6)
GOLD(act_selu, b_act_selu, 1e-6)
GOLD(act_gelu, b_act_gelu, 1e-6)
GOLD(act_gelu_approx, b_act_gelu_approx, 1e-6)
GOLD(act_gelu_fast_approx, b_act_gelu_fast_approx, 1e-6)
GOLD(act_silu, b_act_silu, 1e-6)
GOLD(act_sigmoid, b_act_sigmoid, 1e-6)
GOLD(act_log_sigmoid, b_act_log_sigmoid, 1e-6)
GOLD(act_tanh, b_act_tanh, 1e-6)
GOLD(act_softplus, b_act_softplus, 1e-6)
GOLD(act_softsign, b_act_softsign, 1e-6)
GOLD(act_mish, b_act_mish, 1e-6)
GOLD(act_hardswish, b_act_hardswish, 1e-6)
GOLD(act_hard_tanh, b_act_hard_tanh, 1e-6)
GOLD(act_glu, b_act_glu, 1e-6)
GOLD(ce_indices_none, b_ce_indices_none, 1e-5)
GOLD(ce_indices_mean, b_ce_indices_mean, 1e-5)
GOLD(ce_indices_sum, b_ce_indices_sum, 1e-5)
GOLD(ce_smoothing_mean, b_ce_smoothing_mean, 1e-5)
GOLD(ce_weights_sum, b_ce_weights_sum, 1e-5)
GOLD(ce_probs_mean, b_ce_probs_mean, 1e-5)
GOLD(ce_probs_smoothing_none, b_ce_probs_smoothing_none, 1e-5)
GOLD(ce_ignore_mean, b_ce_ignore_mean, 1e-5)
GOLD(ce_axis1_3d_mean, b_ce_axis1_3d_mean, 1e-5)
GOLD(bce_logits_mean, b_bce_logits_mean, 1e-5)
GOLD(bce_logits_weights_none, b_bce_logits_weights_none, 1e-5)
GOLD(bce_probs_sum, b_bce_probs_sum, 1e-5)
GOLD(mse_mean, b_mse_mean, 1e-5)
GOLD(mse_none, b_mse_none, 1e-5)
GOLD(l1_sum, b_l1_sum, 1e-5)
GOLD(smooth_l1_mean, b_smooth_l1_mean, 1e-5)
GOLD(nll_mean, b_nll_mean, 1e-5)
GOLD(kl_div_sum, b_kl_div_sum, 1e-5)

int main(int argc, char **argv) { return test_main(argc, argv); }
