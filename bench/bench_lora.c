/* bench_lora.c — QLoRA training throughput and peak memory: a random-weight
 * model of the Llama-3.2-1B architecture (hidden 2048, 16 layers, 32 heads,
 * 8 KV heads, MLP 8192, vocabulary 128256, tied embeddings, RoPE theta
 * 500000), 4-bit g64 base, LoRA rank 8 scale 20 on q_proj and v_proj of
 * every layer (mlx-lm's defaults), Adam, batch 4 x 512 random tokens.
 * Peer: bench/peers/torch_lora.py (same model, same math).
 *
 *   bench_lora [--device cpu|gpu] [--dtype f32|bf16] [--steps 5] [--batch 4]
 *              [--seq 512] [--layers 16] [--hidden 2048] [--heads 32]
 *              [--kv-heads 8] [--ffn 8192] [--vocab 128256] [--rank 8]
 *              [--bits 4 (0: float base)]
 *
 * One warm-up step, then `steps` timed optimizer steps (mx_train_step:
 * forward, backward, Adam, all evaluated). Prints a table: seconds per
 * step, tokens per second, peak memory (mx_get_peak_memory, whole run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxc/lora.h"
#include "mxc/memory.h"
#include "mxc/mxc.h"
#include "mxc/train.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHECK(x)                                                                     \
  do {                                                                               \
    if (!(x)) {                                                                      \
      fprintf(stderr, "bench_lora: %s failed: %s\n", #x, mx_last_error());           \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int64_t hidden = 2048, layers = 16, heads = 32, kv = 8, ffn = 8192, vocab = 128256;
  int64_t batch = 4, seq = 512, steps = 5, rank = 8, bits = 4;
  const char *device = NULL, *dtype = "bf16";
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    int64_t n = strtoll(v, NULL, 10);
    if (!strcmp(a, "--device")) device = v;
    else if (!strcmp(a, "--dtype")) dtype = v;
    else if (!strcmp(a, "--steps")) steps = n;
    else if (!strcmp(a, "--batch")) batch = n;
    else if (!strcmp(a, "--seq")) seq = n;
    else if (!strcmp(a, "--layers")) layers = n;
    else if (!strcmp(a, "--hidden")) hidden = n;
    else if (!strcmp(a, "--heads")) heads = n;
    else if (!strcmp(a, "--kv-heads")) kv = n;
    else if (!strcmp(a, "--ffn")) ffn = n;
    else if (!strcmp(a, "--vocab")) vocab = n;
    else if (!strcmp(a, "--rank")) rank = n;
    else if (!strcmp(a, "--bits")) bits = n;
    else {
      fprintf(stderr, "bench_lora: unknown option %s\n", a);
      return 2;
    }
  }
  if (steps < 1 || steps > 1000) steps = 5;
  mx_device dev = device ? (strcmp(device, "gpu") ? MX_CPU : MX_GPU)
                         : (mx_device_available(MX_GPU) ? MX_GPU : MX_CPU);
  CHECK(mx_set_default_device(dev) >= 0);
  mx_dtype dt = strcmp(dtype, "f32") ? MX_BFLOAT16 : MX_FLOAT32;

  /* The model: float32 init from a seed, cast, quantized (as
   * mlx_lm.convert -q of a bf16 checkpoint: every Linear and the
   * embedding, group 64). */
  mx_lm_config c;
  CHECK(mx_train_llama_config(&c, hidden, layers, heads, kv, ffn, vocab, seq) == 0);
  c.rope_theta = 500000.0;
  double t0 = now_s();
  mx_nn_module *model = mx_train_llama_new(&c, 0);
  CHECK(model);
  CHECK(mx_nn_set_dtype(model, dt) == 0);
  if (bits) CHECK(mx_nn_quantize(model, 64, (int)bits, NULL, NULL) == 0);
  mx_map *p = NULL;
  CHECK(mx_nn_parameters(model, &p) == 0);
  CHECK(mx_map_eval(p) == 0);
  size_t model_bytes = 0;
  for (int i = 0; i < mx_map_size(p); i++) model_bytes += mx_array_nbytes(mx_map_value(p, i));
  mx_map_free(p);
  mx_clear_cache();

  mx_lora_config lc = MX_LORA_CONFIG_DEFAULTS;
  lc.num_layers = (int)layers;
  lc.rank = (int)rank;
  CHECK(mx_lora_apply(model, &lc, 0) == 0);
  mx_nn_train(model, true);
  mx_adam_options ao = MX_ADAM_OPTIONS(1e-5);
  mx_optimizer *opt = mx_optimizer_adam(&ao);
  CHECK(opt);
  double t_build = now_s() - t0;

  /* Random tokens: x (B, T), y = the next tokens. */
  int32_t *ids = malloc((size_t)(batch * (seq + 1)) * sizeof *ids);
  uint64_t s = 12345;
  for (int64_t i = 0; i < batch * (seq + 1); i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    ids[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
  }
  int32_t *xs = malloc((size_t)(batch * seq) * sizeof *xs), *ys = malloc((size_t)(batch * seq) * sizeof *ys);
  for (int64_t b = 0; b < batch; b++)
    for (int64_t t = 0; t < seq; t++) {
      xs[b * seq + t] = ids[b * (seq + 1) + t];
      ys[b * seq + t] = ids[b * (seq + 1) + t + 1];
    }
  int64_t shape[2] = {batch, seq};
  mx_array *in[2] = {mx_array_from_data(xs, shape, 2, MX_INT32), mx_array_from_data(ys, shape, 2, MX_INT32)};
  CHECK(in[0] && in[1]);

  mx_reset_peak_memory();
  double *times = calloc((size_t)steps, sizeof *times), loss0 = 0, loss1 = 0;
  for (int64_t i = -1; i < steps; i++) {
    mx_train_step_stats ss;
    double a = now_s();
    CHECK(mx_train_step(model, opt, mx_train_lm_loss, NULL, in, 2, 1, 0.0, &ss) == 0);
    double el = now_s() - a;
    if (i < 0) loss0 = ss.loss;
    else times[i] = el;
    loss1 = ss.loss;
  }
  size_t peak = mx_get_peak_memory();
  qsort(times, (size_t)steps, sizeof *times, cmp_d);
  double med = times[steps / 2], best = times[0];
  int64_t ntrain = mx_nn_num_parameters(model, true);
  printf("bench_lora: Llama-arch hidden %lld, %lld layers, %lld/%lld heads, MLP %lld, vocab %lld; "
         "%s base (%s), LoRA rank %lld on q,v of %lld layers (%lld trainable); batch %lld x %lld; "
         "device %s; model %.2f GB; build %.1f s; loss %.3f -> %.3f\n",
         (long long)hidden, (long long)layers, (long long)heads, (long long)kv, (long long)ffn,
         (long long)vocab, bits ? (bits == 4 ? "4-bit g64" : "quantized") : "float", dtype,
         (long long)rank, (long long)layers, (long long)ntrain, (long long)batch, (long long)seq,
         dev == MX_GPU ? "gpu" : "cpu", (double)model_bytes / 1e9, t_build, loss0, loss1);
  printf("| impl | s/step (median) | s/step (best) | tokens/s | peak memory |\n");
  printf("|------|-----------------|---------------|----------|-------------|\n");
  printf("| mxc | %.3f | %.3f | %.0f | %.2f GB |\n", med, best, (double)(batch * seq) / med,
         (double)peak / 1e9);
  free(times);
  free(ids);
  free(xs);
  free(ys);
  mx_array_free(in[0]);
  mx_array_free(in[1]);
  mx_optimizer_free(opt);
  mx_nn_module_free(model);
  return 0;
}
