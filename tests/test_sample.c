/* test_sample.c — sampler (mlx-lm semantics) and stop conditions.
 * References are written in plain C on small vectors. */
#include "mxc/lm_sample.h"
#include "mxc/mxc.h"
#include "test.h"

#include <math.h>

/* ---- helpers ------------------------------------------------------------- */

static mx_array *vec(const float *v, int64_t n) {
  return mx_array_from_data(v, (int64_t[]){n}, 1, MX_FLOAT32);
}

static void read_f32(mx_array *a, float *out, int64_t n) {
  ASSERT_NOT_NULL(a);
  ASSERT_EQ_INT(mx_array_size(a), n);
  ASSERT_OK(mx_array_copy_to(a, MX_FLOAT32, out, n));
}

/* Expect out[i] == -inf where masked[i], else out[i] == in[i]. */
static void check_mask(const float *in, const float *out, const int *kept, int n) {
  for (int i = 0; i < n; i++) {
    if (kept[i]) {
      ASSERT_MSG(out[i] == in[i], "index %d: kept value %g became %g", i, in[i], out[i]);
    } else {
      ASSERT_MSG(isinf(out[i]) && out[i] < 0, "index %d: expected -inf, got %g", i, out[i]);
    }
  }
}

static void logs_of(const double *p, float *lp, int n) {
  for (int i = 0; i < n; i++) lp[i] = (float)log(p[i]);
}

/* ---- greedy ---------------------------------------------------------------- */

TEST(greedy_argmax_at_temp_zero) {
  float x[2][5] = {{0.1f, 3.0f, -1.0f, 2.9f, 0.0f}, {-5, -4, -3, -2, -2.5f}};
  mx_array *l = mx_array_from_data(x, (int64_t[]){2, 5}, 2, MX_FLOAT32);
  mx_sampler_config c = mx_sampler_config_default();
  mx_sampler *s = mx_sampler_new(&c);
  ASSERT_NOT_NULL(s);
  mx_array *t = mx_sampler_sample(s, l, NULL, 0);
  ASSERT_NOT_NULL(t);
  ASSERT_EQ_INT(mx_array_ndim(t), 1);
  ASSERT_EQ_INT(mx_array_dtype(t), MX_UINT32);
  uint32_t ids[2];
  ASSERT_OK(mx_array_copy_to(t, MX_UINT32, ids, 2));
  ASSERT_EQ_INT(ids[0], 1);
  ASSERT_EQ_INT(ids[1], 3);
  mx_array_free(t);
  // 1-d logits give a 0-d id.
  mx_array *row = vec(x[0], 5);
  t = mx_sampler_sample(s, row, NULL, 0);
  int64_t id;
  ASSERT_OK(mx_array_item_int(t, &id));
  ASSERT_EQ_INT(id, 1);
  ASSERT_EQ_INT(mx_array_ndim(t), 0);
  mx_array_free(t);
  mx_array_free(row);
  mx_array_free(l);
  mx_sampler_free(s);
}

/* ---- filters --------------------------------------------------------------- */

TEST(top_k_keeps_the_k_largest) {
  float x[6] = {0.3f, -1.0f, 2.0f, 0.5f, -0.2f, 1.5f};
  mx_array *a = vec(x, 6);
  for (int k = 1; k < 6; k++) {
    mx_array *r = mx_sample_apply_top_k(a, k);
    float out[6];
    read_f32(r, out, 6);
    // reference: an element is kept when fewer than k elements beat it
    int kept[6];
    for (int i = 0; i < 6; i++) {
      int greater = 0;
      for (int j = 0; j < 6; j++) greater += x[j] > x[i];
      kept[i] = greater < k;
    }
    check_mask(x, out, kept, 6);
    mx_array_free(r);
  }
  ASSERT(mx_sample_apply_top_k(a, 6) == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_INVALID_ARG);
  ASSERT(strstr(mx_last_error(), "top_k"));
  mx_clear_error();
  mx_array_free(a);
}

TEST(top_p_keeps_the_nucleus) {
  double p[6] = {0.05, 0.4, 0.1, 0.3, 0.13, 0.02};
  float lp[6];
  logs_of(p, lp, 6);
  mx_array *a = vec(lp, 6);
  double tops[] = {0.2, 0.5, 0.65, 0.75, 0.9, 0.99};
  for (size_t t = 0; t < sizeof tops / sizeof *tops; t++) {
    mx_array *r = mx_sample_apply_top_p(a, tops[t]);
    float out[6];
    read_f32(r, out, 6);
    // reference: ascending order, cumulative mass, keep where > 1 - top_p
    int order[6] = {0, 1, 2, 3, 4, 5}, kept[6] = {0};
    for (int i = 0; i < 6; i++)
      for (int j = i + 1; j < 6; j++)
        if (p[order[j]] < p[order[i]]) {
          int tmp = order[i];
          order[i] = order[j];
          order[j] = tmp;
        }
    double cum = 0;
    for (int i = 0; i < 6; i++) {
      cum += p[order[i]];
      kept[order[i]] = cum > 1 - tops[t];
    }
    check_mask(lp, out, kept, 6);
    mx_array_free(r);
  }
  // top_p = 0.5 keeps exactly the two largest (0.4 + 0.3 >= 0.5)
  mx_array *r = mx_sample_apply_top_p(a, 0.5);
  float out[6];
  read_f32(r, out, 6);
  check_mask(lp, out, (int[]){0, 1, 0, 1, 0, 0}, 6);
  mx_array_free(r);
  mx_array_free(a);
}

TEST(min_p_relative_to_the_top_token) {
  double p[5] = {0.5, 0.2, 0.04, 0.16, 0.1};
  float lp[5];
  logs_of(p, lp, 5);
  mx_array *a = vec(lp, 5);
  mx_array *r = mx_sample_apply_min_p(a, 0.3, 1); // threshold 0.15
  float out[5];
  read_f32(r, out, 5);
  check_mask(lp, out, (int[]){1, 1, 0, 1, 0}, 5);
  mx_array_free(r);
  // min_tokens_to_keep = 4 rescues the 4th most likely (0.1)
  r = mx_sample_apply_min_p(a, 0.3, 4);
  read_f32(r, out, 5);
  check_mask(lp, out, (int[]){1, 1, 0, 1, 1}, 5);
  mx_array_free(r);
  // min_p = 1 keeps only the top token
  r = mx_sample_apply_min_p(a, 1.0, 1);
  read_f32(r, out, 5);
  check_mask(lp, out, (int[]){1, 0, 0, 0, 0}, 5);
  mx_array_free(r);
  ASSERT(mx_sample_apply_min_p(a, 1.5, 1) == NULL);
  mx_clear_error();
  mx_array_free(a);
}

TEST(filters_work_on_batches) {
  float x[2][4] = {{1, 4, 2, 3}, {4, 3, 2, 1}};
  mx_array *a = mx_array_from_data(x, (int64_t[]){2, 4}, 2, MX_FLOAT32);
  mx_array *r = mx_sample_apply_top_k(a, 2);
  float out[8];
  read_f32(r, out, 8);
  check_mask(&x[0][0], out, (int[]){0, 1, 0, 1, 1, 1, 0, 0}, 8);
  mx_array_free(r);
  mx_array_free(a);
}

/* ---- processors -------------------------------------------------------------- */

TEST(repetition_penalty_divides_positive_multiplies_negative) {
  float x[5] = {2.0f, -1.0f, 0.5f, -3.0f, 1.0f};
  mx_array *a = vec(x, 5);
  int32_t hist[6] = {0, 2, 1, 1, 3, 4};
  // context 4 → ids {1, 3, 4} (1 twice: penalised once)
  mx_array *r = mx_sample_repetition_penalty(a, hist, 6, 2.0, 4);
  float out[5];
  read_f32(r, out, 5);
  float want[5] = {2.0f, -2.0f, 0.5f, -6.0f, 0.5f};
  for (int i = 0; i < 5; i++) ASSERT_NEAR(out[i], want[i], 0);
  mx_array_free(r);
  // through the sampler config, batched rows share the history
  float xb[2][5] = {{2, -1, 0.5f, -3, 1}, {-2, 1, 0.5f, 3, -1}};
  mx_array *b = mx_array_from_data(xb, (int64_t[]){2, 5}, 2, MX_FLOAT32);
  mx_sampler_config c = mx_sampler_config_default();
  c.repetition_penalty = 1.5;
  c.repetition_context_size = 2;
  mx_sampler *s = mx_sampler_new(&c);
  r = mx_sampler_process(s, b, hist, 6); // ids {3, 4}
  float ob[10];
  read_f32(r, ob, 10);
  float wb[10] = {2, -1, 0.5f, -4.5f, 1 / 1.5f, -2, 1, 0.5f, 2, -1.5f};
  for (int i = 0; i < 10; i++) ASSERT_NEAR(ob[i], wb[i], 1e-6);
  mx_array_free(r);
  // out-of-vocabulary history ids are an error, not a crash
  int32_t badh[1] = {9};
  ASSERT(mx_sampler_process(s, b, badh, 1) == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_RANGE);
  mx_clear_error();
  mx_sampler_free(s);
  mx_array_free(b);
  mx_array_free(a);
}

TEST(presence_and_frequency_penalties) {
  float x[4] = {1, 1, 1, 1};
  mx_array *a = vec(x, 4);
  int32_t hist[5] = {0, 2, 2, 2, 3};
  mx_sampler_config c = mx_sampler_config_default();
  c.presence_penalty = 0.5;
  c.frequency_penalty = 0.25;
  c.frequency_context_size = 3; // {2, 2, 3}
  mx_sampler *s = mx_sampler_new(&c);
  mx_array *r = mx_sampler_process(s, a, hist, 5);
  float out[4];
  read_f32(r, out, 4);
  float want[4] = {0.5f, 1.0f, 1 - 0.5f - 0.5f, 1 - 0.5f - 0.25f};
  for (int i = 0; i < 4; i++) ASSERT_NEAR(out[i], want[i], 1e-6);
  mx_array_free(r);
  mx_sampler_free(s);
  mx_array_free(a);
}

TEST(logit_bias_adds_and_repeats_accumulate) {
  float x[4] = {0, 1, 2, 3};
  mx_array *a = vec(x, 4);
  int32_t ids[3] = {2, 0, 2};
  float vals[3] = {1.0f, -5.0f, 0.5f};
  mx_sampler_config c = mx_sampler_config_default();
  c.logit_bias_ids = ids;
  c.logit_bias_values = vals;
  c.n_logit_bias = 3;
  mx_sampler *s = mx_sampler_new(&c);
  ASSERT_NOT_NULL(s);
  ids[0] = 3; // the sampler keeps its own copy
  mx_array *r = mx_sampler_process(s, a, NULL, 0);
  float out[4];
  read_f32(r, out, 4);
  float want[4] = {-5, 1, 3.5f, 3};
  for (int i = 0; i < 4; i++) ASSERT_NEAR(out[i], want[i], 0);
  mx_array_free(r);
  // the bias decides the greedy token: argmax becomes 2
  mx_array *t = mx_sampler_sample(s, a, NULL, 0);
  int64_t id;
  ASSERT_OK(mx_array_item_int(t, &id));
  ASSERT_EQ_INT(id, 2);
  mx_array_free(t);
  mx_sampler_free(s);
  mx_array_free(a);
}

/* ---- random sampling ---------------------------------------------------------- */

static void draw_sequence(uint64_t seed, int64_t *ids, int n) {
  float x[5] = {0.5f, 1.0f, 0.2f, -0.3f, 0.8f};
  mx_array *a = vec(x, 5);
  mx_sampler_config c = mx_sampler_config_default();
  c.temp = 1.0;
  c.seed = seed;
  mx_sampler *s = mx_sampler_new(&c);
  ASSERT_NOT_NULL(s);
  for (int i = 0; i < n; i++) {
    mx_array *t = mx_sampler_sample(s, a, NULL, 0);
    ASSERT_OK(mx_array_item_int(t, &ids[i]));
    mx_array_free(t);
  }
  mx_sampler_free(s);
  mx_array_free(a);
}

TEST(seeded_sampling_reproduces) {
  int64_t a[64], b[64], c[64];
  draw_sequence(1234, a, 64);
  draw_sequence(1234, b, 64);
  draw_sequence(99, c, 64);
  int same = 0, distinct = 0;
  int seen[5] = {0};
  for (int i = 0; i < 64; i++) {
    ASSERT_EQ_INT(a[i], b[i]);
    same += a[i] == c[i];
    ASSERT(a[i] >= 0 && a[i] < 5);
    seen[a[i]]++;
  }
  for (int i = 0; i < 5; i++) distinct += seen[i] > 0;
  ASSERT(same < 64);   // another seed gives another sequence
  ASSERT(distinct >= 3); // the key advances between draws
}

/* Draw N samples at once from a (N, V) broadcast of logits and compare the
 * empirical frequencies with the expected distribution. */
static void check_frequencies(const float *x, int V, mx_sampler_config c, const double *want) {
  enum { N = 20000 };
  mx_array *row = vec(x, V);
  mx_array *a = mx_broadcast_to(row, (int64_t[]){N, V}, 2);
  mx_sampler *s = mx_sampler_new(&c);
  ASSERT_NOT_NULL(s);
  mx_array *t = mx_sampler_sample(s, a, NULL, 0);
  ASSERT_NOT_NULL(t);
  static int64_t ids[N];
  ASSERT_OK(mx_array_copy_to(t, MX_INT64, ids, N));
  double freq[16] = {0};
  for (int i = 0; i < N; i++) {
    ASSERT(ids[i] >= 0 && ids[i] < V);
    freq[ids[i]] += 1.0 / N;
  }
  for (int i = 0; i < V; i++) {
    // 4.5 standard deviations of a binomial proportion, at least 1e-3
    double sd = sqrt(want[i] * (1 - want[i]) / N);
    ASSERT_MSG(fabs(freq[i] - want[i]) <= fmax(4.5 * sd, 1e-3),
               "token %d: frequency %.4f, expected %.4f", i, freq[i], want[i]);
  }
  mx_array_free(t);
  mx_sampler_free(s);
  mx_array_free(a);
  mx_array_free(row);
}

TEST(sampling_frequencies_match_softmax) {
  float x[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
  double temps[2] = {0.7, 1.3};
  for (int k = 0; k < 2; k++) {
    double want[5], z = 0;
    for (int i = 0; i < 5; i++) z += want[i] = exp(x[i] / temps[k]);
    for (int i = 0; i < 5; i++) want[i] /= z;
    mx_sampler_config c = mx_sampler_config_default();
    c.temp = temps[k];
    c.seed = 7 + (uint64_t)k;
    check_frequencies(x, 5, c, want);
  }
}

TEST(sampling_frequencies_with_top_k_and_top_p) {
  float x[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
  // top_k = 2 → tokens 1 and 4, renormalised at temperature 0.9
  double want[5] = {0}, z;
  z = exp(2.0 / 0.9) + exp(1.5 / 0.9);
  want[1] = exp(2.0 / 0.9) / z;
  want[4] = exp(1.5 / 0.9) / z;
  mx_sampler_config c = mx_sampler_config_default();
  c.temp = 0.9;
  c.top_k = 2;
  c.seed = 3;
  check_frequencies(x, 5, c, want);
  // top_p = 0.8 on softmax(x) = {.16, .44, .10, .02, .27} keeps {1, 4, 0}
  double p[5], zz = 0;
  for (int i = 0; i < 5; i++) zz += p[i] = exp(x[i]);
  for (int i = 0; i < 5; i++) p[i] /= zz;
  ASSERT(p[1] + p[4] < 0.8 && p[1] + p[4] + p[0] > 0.8);
  double w2[5] = {0};
  z = exp(x[0]) + exp(x[1]) + exp(x[4]);
  w2[0] = exp(x[0]) / z;
  w2[1] = exp(x[1]) / z;
  w2[4] = exp(x[4]) / z;
  c = mx_sampler_config_default();
  c.temp = 1.0;
  c.top_p = 0.8;
  c.seed = 11;
  check_frequencies(x, 5, c, w2);
}

TEST(config_validation) {
  mx_sampler_config c = mx_sampler_config_default();
  c.temp = -1;
  ASSERT(mx_sampler_new(&c) == NULL);
  ASSERT(strstr(mx_last_error(), "temp"));
  c = mx_sampler_config_default();
  c.min_tokens_to_keep = 0;
  ASSERT(mx_sampler_new(&c) == NULL);
  ASSERT(strstr(mx_last_error(), "min_tokens_to_keep"));
  c = mx_sampler_config_default();
  c.top_p = 1.5;
  ASSERT(mx_sampler_new(&c) == NULL);
  ASSERT(mx_sampler_new(NULL) == NULL);
  mx_clear_error();
  // top_k >= vocab fails at sampling time with a message
  c = mx_sampler_config_default();
  c.temp = 1;
  c.top_k = 10;
  mx_sampler *s = mx_sampler_new(&c);
  float x[3] = {1, 2, 3};
  mx_array *a = vec(x, 3);
  ASSERT(mx_sampler_sample(s, a, NULL, 0) == NULL);
  ASSERT(strstr(mx_last_error(), "top_k"));
  mx_clear_error();
  // integer logits are refused
  mx_array *ia = mx_array_from_data((int32_t[]){1, 2}, (int64_t[]){2}, 1, MX_INT32);
  ASSERT(mx_sampler_sample(s, ia, NULL, 0) == NULL);
  ASSERT_EQ_INT(mx_last_status(), MX_ERR_DTYPE);
  mx_clear_error();
  mx_array_free(ia);
  mx_array_free(a);
  mx_sampler_free(s);
  mx_sampler_free(NULL);
}

/* ---- stop conditions ------------------------------------------------------------ */

/* Feeds chunks; returns the concatenated emitted text in buf. */
static bool feed_all(mx_stop *st, const char *const *chunks, int n, char *buf, size_t cap) {
  size_t len = 0;
  bool hit = false;
  buf[0] = 0;
  for (int i = 0; i < n && !hit; i++) {
    const char *e;
    size_t m;
    hit = mx_stop_feed(st, chunks[i], strlen(chunks[i]), &e, &m);
    ASSERT(len + m < cap);
    memcpy(buf + len, e, m);
    len += m;
  }
  if (!hit) {
    const char *e;
    size_t m = mx_stop_flush(st, &e);
    memcpy(buf + len, e, m);
    len += m;
  }
  buf[len] = 0;
  return hit;
}

TEST(stop_eos_ids) {
  mx_stop *st = mx_stop_new((int32_t[]){2, 128001}, 2, NULL, 0);
  ASSERT_NOT_NULL(st);
  ASSERT(mx_stop_is_eos(st, 2));
  ASSERT(mx_stop_is_eos(st, 128001));
  ASSERT(!mx_stop_is_eos(st, 3));
  ASSERT_OK(mx_stop_add_eos(st, 3));
  ASSERT(mx_stop_is_eos(st, 3));
  mx_stop_free(st);
}

TEST(stop_strings_across_chunks) {
  const char *stops[] = {"</s>", "abc", ""};
  mx_stop *st = mx_stop_new(NULL, 0, stops, 3);
  ASSERT_NOT_NULL(st);
  char buf[256];
  const char *e;
  size_t m;
  // A partial match is held back, then released when it fails.
  ASSERT(!mx_stop_feed(st, "hello <", 7, &e, &m));
  ASSERT_EQ_INT(m, 6);
  ASSERT(!memcmp(e, "hello ", 6));
  ASSERT(!mx_stop_feed(st, "/", 1, &e, &m));
  ASSERT_EQ_INT(m, 0);
  ASSERT(!mx_stop_feed(st, "x", 1, &e, &m));
  ASSERT_EQ_INT(m, 3);
  ASSERT(!memcmp(e, "</x", 3));
  // The stop string split over three chunks ends the stream before it.
  ASSERT(feed_all(st, (const char *[]){" yes <", "/", "s> tail"}, 3, buf, sizeof buf));
  ASSERT_STR_EQ(buf, " yes ");
  ASSERT_EQ_INT(mx_stop_matched(st), 0);
  ASSERT(mx_stop_feed(st, "more", 4, &e, &m)); // stays stopped
  ASSERT_EQ_INT(m, 0);
  // Overlapping prefixes: "aab" + "c" matches "abc" after one 'a'.
  mx_stop_reset(st);
  ASSERT(feed_all(st, (const char *[]){"xa", "ab", "c!"}, 3, buf, sizeof buf));
  ASSERT_STR_EQ(buf, "xa");
  ASSERT_EQ_INT(mx_stop_matched(st), 1);
  // No match: everything comes out, the tail at flush.
  mx_stop_reset(st);
  ASSERT(!feed_all(st, (const char *[]){"ab", "d", " </"}, 3, buf, sizeof buf));
  ASSERT_STR_EQ(buf, "abd </");
  // A match inside one chunk; earliest stop string wins.
  mx_stop_reset(st);
  ASSERT(feed_all(st, (const char *[]){"1 abc 2 </s>"}, 1, buf, sizeof buf));
  ASSERT_STR_EQ(buf, "1 ");
  ASSERT_EQ_INT(mx_stop_matched(st), 1);
  mx_stop_free(st);
  mx_stop_free(NULL);
}

TEST(stop_strings_utf8) {
  const char *stops[] = {"\xc3\xa9t\xc3\xa9"}; // "été"
  mx_stop *st = mx_stop_new(NULL, 0, stops, 1);
  char buf[64];
  ASSERT(feed_all(st, (const char *[]){"un \xc3\xa9", "t", "\xc3\xa9 chaud"}, 3, buf, sizeof buf));
  ASSERT_STR_EQ(buf, "un ");
  mx_stop_free(st);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
