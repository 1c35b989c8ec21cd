/* train_mlp.c — the seed's training loop, in C.
 *
 * The Python it mirrors (MLX):
 *
 *     model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64),
 *                           nn.ReLU(), nn.Linear(64, 2))
 *     print(model.layers[0])                    # access a layer
 *     loss_and_grad = nn.value_and_grad(model, loss_fn)
 *     optimizer = optim.Adam(learning_rate=1e-2)
 *     for step in range(300):
 *         loss, grads = loss_and_grad(model, x, y)
 *         optimizer.update(model, grads)
 *         mx.eval(model.parameters(), optimizer.state)
 *     model.save_weights("mlp.safetensors")
 *     model2.load_weights("mlp.safetensors")
 *
 * The task: classify points of two interleaved spirals.
 * Build: CMake builds every program in examples/ (this one: example_train_mlp).
 * Run:   ./example_train_mlp [weights.safetensors]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mxc/mxc.h"
#include "mxc/optim.h"

#define CHECK(expr)                                                          \
  do {                                                                       \
    if ((expr) != 0) {                                                       \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, mx_last_error());   \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

/* ---- data: two spirals, 2-d points, labels 0/1 ---------------------------- */
static void spirals(int n, mx_array **x, mx_array **y) {
  float *pts = malloc(sizeof(float) * 2 * (size_t)n);
  int32_t *lab = malloc(sizeof(int32_t) * (size_t)n);
  for (int i = 0; i < n; i++) {
    int c = i % 2;
    double t = 0.5 + 3.0 * (double)(i / 2) / (double)(n / 2); /* radius / angle */
    double a = t * 3.0 + c * M_PI;
    pts[2 * i] = (float)(t * cos(a) / 3.5);
    pts[2 * i + 1] = (float)(t * sin(a) / 3.5);
    lab[i] = c;
  }
  *x = mx_array_from_data(pts, (int64_t[]){n, 2}, 2, MX_FLOAT32);
  *y = mx_array_from_data(lab, (int64_t[]){n}, 1, MX_INT32);
  free(pts);
  free(lab);
}

/* ---- the model ---------------------------------------------------------------- */
static mx_nn_module *build_model(uint64_t seed) {
  mx_array *key = mx_random_key(seed);
  mx_array *ks = mx_random_split(key, 3);
  mx_array *k[3];
  for (int i = 0; i < 3; i++) {
    mx_array *row = mx_slice_axis(ks, 0, i, i + 1, 1);
    k[i] = mx_reshape(row, (int64_t[]){2}, 1);
    mx_array_free(row);
  }
  mx_nn_module *m = mx_nn_sequential_new(5, (mx_nn_module *[]){
      mx_nn_linear_new(2, 64, true, k[0]), mx_nn_relu_new(),
      mx_nn_linear_new(64, 64, true, k[1]), mx_nn_relu_new(),
      mx_nn_linear_new(64, 2, true, k[2])});
  mx_array_free_n(k, 3);
  mx_array_free(ks);
  mx_array_free(key);
  return m;
}

/* loss_fn(model, x, y) = mean cross entropy */
static int loss_fn(void *payload, mx_nn_module *model, mx_array **in, int n, mx_list *out) {
  mx_array *logits = mx_nn_forward(model, in[0]);
  mx_nn_ce_options o = {.reduction = MX_NN_MEAN};
  int st = mx_list_push(out, mx_nn_cross_entropy(logits, in[1], NULL, &o));
  mx_array_free(logits);
  return st;
}

static double accuracy(mx_nn_module *model, mx_array *x, mx_array *y) {
  mx_array *logits = mx_nn_forward(model, x);
  mx_array *pred = mx_argmax(logits, -1, false);
  mx_array *yy = mx_astype(y, mx_array_dtype(pred));
  mx_array *eq = mx_equal(pred, yy);
  mx_array *ef = mx_astype(eq, MX_FLOAT32);
  mx_array *acc = mx_mean(ef, NULL, 0, false);
  double a = 0;
  CHECK(mx_array_item(acc, &a));
  mx_array *arr[] = {logits, pred, yy, eq, ef, acc};
  mx_array_free_n(arr, 6);
  return a;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "/tmp/mxc_train_mlp.safetensors";
  mx_array *x, *y;
  spirals(512, &x, &y);

  mx_nn_module *model = build_model(0);
  if (!model) CHECK(1);
  mx_nn_print(model, stdout);
  /* model.layers[0] */
  mx_nn_module *first = mx_nn_get(model, "layers.0");
  printf("layers[0] is a %s with weight of shape (%lld, %lld)\n", mx_nn_module_type(first),
         (long long)mx_array_dim(mx_nn_param(first, "weight"), 0),
         (long long)mx_array_dim(mx_nn_param(first, "weight"), 1));

  mx_adam_options o = MX_ADAM_OPTIONS(1e-2);
  mx_optimizer *opt = mx_optimizer_adam(&o);
  mx_map *params = NULL;
  CHECK(mx_nn_trainable_parameters(model, &params));
  for (int step = 0; step < 300; step++) {
    mx_map *grads = mx_map_new();
    mx_list loss = MX_LIST_INIT;
    /* loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y) */
    CHECK(mx_nn_value_and_grad(model, loss_fn, NULL, (mx_array *[]){x, y}, 2, &loss, grads));
    /* optimizer.update(model, grads); mx.eval(model.parameters(), optimizer.state) */
    CHECK(mx_optimizer_update(opt, params, grads));
    CHECK(mx_optimizer_eval(opt, params));
    CHECK(mx_nn_update(model, params, MX_NN_UPDATE_PARTIAL));
    if (step % 50 == 0 || step == 299) {
      double l;
      CHECK(mx_array_item(loss.items[0], &l));
      printf("step %3d  loss %.4f\n", step, l);
    }
    mx_list_clear(&loss);
    mx_map_free(grads);
  }
  double acc = accuracy(model, x, y);
  printf("accuracy %.3f\n", acc);

  /* model.save_weights(path); model2.load_weights(path) */
  CHECK(mx_nn_save_weights(model, path));
  mx_nn_module *model2 = build_model(1);
  CHECK(mx_nn_load_weights(model2, path, true));
  double acc2 = accuracy(model2, x, y);
  printf("reloaded from %s: accuracy %.3f\n", path, acc2);

  mx_map_free(params);
  mx_optimizer_free(opt);
  mx_nn_module_free(model);
  mx_nn_module_free(model2);
  mx_array_free(x);
  mx_array_free(y);
  return acc2 == acc && acc > 0.9 ? 0 : 1;
}
