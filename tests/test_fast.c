/* test_fast.c — the fast LLM ops (rms_norm, layer_norm, rope,
 * scaled_dot_product_attention): each fused op against its composition of
 * primitive ops, over dtypes, shapes, masks and views; VJPs against finite
 * differences (float64) and against autodiff of the composition; thread
 * count invariance; MLX's semantics at the edges; build-time errors. */
#include <float.h>
#include <math.h>

#include "array_impl.h"
#include "mxc/mxc.h"
#include "ops/fast_params.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------ */
static uint64_t rng = 0x1234567;
static double urand(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform [lo, hi) values of dtype dt (bool: random). */
static mx_array *rnd(const int64_t *shape, int nd, mx_dtype dt, double lo, double hi) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  for (int64_t i = 0; i < n; i++)
    v[i] = dt == MX_BOOL ? (urand() < 0.7) : lo + (hi - lo) * urand();
  mx_array *d = mx_array_from_data(v, shape, nd, MX_FLOAT64);
  mx_array *r = mx_astype(d, dt);
  mx_array_free(d);
  free(v);
  return r;
}
#define RND(dt, lo, hi, ...)                                                                  \
  rnd((int64_t[]){__VA_ARGS__}, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), dt, \
      lo, hi)

/* Host float64 copy (evaluates). */
static double *host(mx_array *a) {
  int64_t n = mx_array_size(a);
  double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (mx_array_copy_to(a, MX_FLOAT64, v, n)) {
    free(v);
    return NULL;
  }
  return v;
}

/* max |a - b| / (1 + |b|); NaN in both at the same place counts as equal;
 * -1 when shapes differ or evaluation fails. */
static double max_err(mx_array *a, mx_array *b) {
  if (!a || !b || mx_array_ndim(a) != mx_array_ndim(b) ||
      memcmp(mx_array_shape(a), mx_array_shape(b), sizeof(int64_t) * (size_t)mx_array_ndim(a)))
    return -1;
  double *x = host(a), *y = host(b), e = 0;
  if (!x || !y) e = -1;
  for (int64_t i = 0; e >= 0 && i < mx_array_size(a); i++) {
    if (isnan(x[i]) && isnan(y[i])) continue;
    double d = fabs(x[i] - y[i]) / (1 + fabs(y[i]));
    if (!(d <= e)) e = isnan(d) ? INFINITY : d;
  }
  free(x);
  free(y);
  return e;
}

static double tol_of(mx_dtype dt) {
  switch (dt) {
    case MX_FLOAT64: return 1e-12;
    case MX_FLOAT32: return 2e-5;
    case MX_FLOAT16: return 4e-3;
    default: return 3e-2;
  }
}

#define EXPECT_CLOSE(a, b, tol, ...)                                                     \
  do {                                                                                   \
    double e_ = max_err(a, b);                                                           \
    if (!(e_ >= 0 && e_ <= (tol))) {                                                     \
      fprintf(stderr, "    ");                                                           \
      fprintf(stderr, __VA_ARGS__);                                                      \
      TEST_FAIL("max error %g > tol %g (%s)", e_, (double)(tol), mx_last_error());       \
    }                                                                                    \
  } while (0)

static const mx_dtype FLOATS[] = {MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16};

/* ---- one description of a call, fused or composed ------------------------------ */
enum { RMS, LN, ROPE, SDPA };
typedef struct {
  int op;
  bool composed;
  double eps;                 /* norms */
  bool has_w, has_b;          /* norms: inputs x, [w], [b] */
  int dims;                   /* rope: inputs x, [freqs] */
  bool trad, has_freqs;
  double base, scale;         /* rope; scale also for sdpa */
  int64_t offset;
  bool causal, has_mask;      /* sdpa: inputs q, k, v, [mask] */
} fcall;

static int nin_of(const fcall *c) {
  switch (c->op) {
    case RMS: return 1 + c->has_w;
    case LN: return 1 + c->has_w + c->has_b;
    case ROPE: return 1 + c->has_freqs;
    default: return 3 + c->has_mask;
  }
}

static mx_array *call(const fcall *c, mx_array **in) {
  switch (c->op) {
    case RMS:
      return (c->composed ? mx__fast_rms_norm_composed : mx_fast_rms_norm)(
          in[0], c->has_w ? in[1] : NULL, c->eps);
    case LN: {
      mx_array *w = c->has_w ? in[1] : NULL, *b = c->has_b ? in[1 + c->has_w] : NULL;
      return (c->composed ? mx__fast_layer_norm_composed : mx_fast_layer_norm)(in[0], w, b, c->eps);
    }
    case ROPE:
      return (c->composed ? mx__fast_rope_composed : mx_fast_rope)(
          in[0], c->dims, c->trad, c->base, c->scale, c->offset, c->has_freqs ? in[1] : NULL);
    default:
      return (c->composed ? mx__fast_sdpa_composed : mx_fast_scaled_dot_product_attention)(
          in[0], in[1], in[2], c->scale, c->has_mask ? in[3] : NULL, c->causal);
  }
}

/* Fused vs composed on the same inputs. */
static double fused_vs_composed(fcall c, mx_array **in) {
  c.composed = false;
  mx_array *f = call(&c, in);
  c.composed = true;
  mx_array *r = call(&c, in);
  double e = max_err(f, r);
  mx_array_free(f);
  mx_array_free(r);
  return e;
}

/* ======================================================================
 * fused == composed
 * ====================================================================== */
TEST(rms_norm_matches_composition) {
  const int64_t shapes[][3] = {{4, 4096, 0}, {3, 7, 129}, {1, 1, 1}, {64, 8, 0}};
  for (size_t d = 0; d < 4; d++)
    for (size_t s = 0; s < 4; s++)
      for (int w = 0; w < 2; w++) {
        int nd = shapes[s][2] ? 3 : 2;
        int64_t D = shapes[s][nd - 1];
        mx_array *in[2] = {rnd(shapes[s], nd, FLOATS[d], -3, 3), RND(FLOATS[d], 0.5, 1.5, D)};
        fcall c = {.op = RMS, .eps = 1e-6, .has_w = w};
        double e = fused_vs_composed(c, in);
        ASSERT_MSG(e >= 0 && e <= tol_of(FLOATS[d]), "%s shape %d weight %d: err %g (%s)",
                   mx_dtype_name(FLOATS[d]), (int)s, w, e, mx_last_error());
        mx_array_free_n(in, 2);
      }
}

TEST(layer_norm_matches_composition) {
  const int64_t shapes[][3] = {{4, 4096, 0}, {3, 7, 129}, {2, 1, 1}, {64, 8, 0}};
  for (size_t d = 0; d < 4; d++)
    for (size_t s = 0; s < 4; s++)
      for (int wb = 0; wb < 4; wb++) {
        int nd = shapes[s][2] ? 3 : 2;
        int64_t D = shapes[s][nd - 1];
        /* offset the data so centring matters */
        mx_array *in[3] = {rnd(shapes[s], nd, FLOATS[d], 2, 5), RND(FLOATS[d], 0.5, 1.5, D),
                           RND(FLOATS[d], -1, 1, D)};
        fcall c = {.op = LN, .eps = 1e-5, .has_w = wb & 1, .has_b = wb >> 1};
        mx_array *args[3] = {in[0], c.has_w ? in[1] : in[2], in[2]};
        double e = fused_vs_composed(c, args);
        ASSERT_MSG(e >= 0 && e <= tol_of(FLOATS[d]), "%s shape %d affine %d: err %g (%s)",
                   mx_dtype_name(FLOATS[d]), (int)s, wb, e, mx_last_error());
        mx_array_free_n(in, 3);
      }
}

TEST(rope_matches_composition) {
  struct {
    int64_t shape[4];
    int nd, dims;
    bool trad, freqs;
    double base, scale;
    int64_t off;
  } cs[] = {
      {{2, 4, 9, 64}, 4, 64, false, false, 10000, 1, 0},
      {{2, 4, 9, 64}, 4, 64, true, false, 10000, 1, 0},
      {{1, 3, 17, 80}, 4, 32, false, false, 10000, 1, 11},
      {{1, 3, 17, 80}, 4, 32, true, false, 10000, 1, 11},
      {{3, 33, 128}, 3, 128, false, false, 500000, 0.125, 8000},
      {{2, 2, 5, 48}, 4, 48, false, true, 0, 1, 3},
      {{2, 2, 5, 48}, 4, 16, true, true, 0, 2, 0},
      {{1, 64}, 2, 64, false, false, 10000, 1, 123456},
  };
  for (size_t d = 0; d < 4; d++)
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
      mx_array *in[2] = {rnd(cs[i].shape, cs[i].nd, FLOATS[d], -2, 2), NULL};
      if (cs[i].freqs) in[1] = RND(MX_FLOAT32, 1, 100, cs[i].dims / 2);
      fcall c = {.op = ROPE, .dims = cs[i].dims, .trad = cs[i].trad, .has_freqs = cs[i].freqs,
                 .base = cs[i].base, .scale = cs[i].scale, .offset = cs[i].off};
      double e = fused_vs_composed(c, in);
      /* the composition multiplies in the input dtype: allow 2 roundings */
      ASSERT_MSG(e >= 0 && e <= 2 * tol_of(FLOATS[d]), "%s case %d: err %g (%s)",
                 mx_dtype_name(FLOATS[d]), (int)i, e, mx_last_error());
      mx_array_free_n(in, 2);
    }
}

typedef struct {
  int64_t B, Hq, Hkv, Tq, Tk, D, Dv;
  bool causal;
  int mask; /* 0 none, 1 additive, 2 boolean */
  int mnd;  /* mask dims: 2 (Tq, Tk), 4 (B, Hq, Tq, Tk), 3 (Hq, 1, Tk) */
} sdpa_cfg;

static void sdpa_inputs(const sdpa_cfg *s, mx_dtype dt, mx_array **in) {
  in[0] = RND(dt, -1, 1, s->B, s->Hq, s->Tq, s->D);
  in[1] = RND(dt, -1, 1, s->B, s->Hkv, s->Tk, s->D);
  in[2] = RND(dt, -1, 1, s->B, s->Hkv, s->Tk, s->Dv);
  in[3] = NULL;
  mx_dtype mdt = s->mask == 2 ? MX_BOOL : dt;
  if (s->mask && s->mnd == 2) in[3] = RND(mdt, -2, 0, s->Tq, s->Tk);
  if (s->mask && s->mnd == 3) in[3] = RND(mdt, -2, 0, s->Hq, 1, s->Tk);
  if (s->mask && s->mnd == 4) in[3] = RND(mdt, -2, 0, s->B, s->Hq, s->Tq, s->Tk);
}

static const sdpa_cfg SDPA_CASES[] = {
    {2, 4, 4, 10, 10, 64, 64, false, 0, 0},
    {1, 8, 2, 33, 33, 64, 64, true, 0, 0},      /* GQA 4:1, causal */
    {1, 4, 1, 1, 1000, 128, 128, false, 0, 0},  /* decode, long cache, MQA */
    {1, 4, 2, 1, 700, 64, 64, true, 0, 0},      /* causal decode = no mask */
    {2, 2, 2, 50, 333, 72, 40, true, 0, 0},     /* Tq < Tk, several blocks, Dv != D */
    {1, 2, 2, 20, 7, 16, 16, true, 0, 0},       /* Tq > Tk: rows with no key */
    {2, 4, 2, 17, 150, 32, 32, false, 1, 2},    /* additive (Tq, Tk) */
    {2, 4, 2, 17, 150, 32, 32, true, 1, 4},     /* additive full + causal */
    {1, 6, 3, 9, 140, 24, 24, false, 1, 3},     /* additive (Hq, 1, Tk) */
    {2, 4, 2, 19, 131, 40, 40, false, 2, 2},    /* boolean (Tq, Tk) */
    {1, 4, 4, 12, 12, 8, 8, true, 2, 4},        /* boolean full + causal */
    {1, 2, 1, 130, 130, 80, 80, true, 0, 0},    /* many row blocks */
    {1, 8, 1, 1, 5, 96, 96, false, 0, 0},       /* decode, 8 heads per kv head, 5 keys */
    {2, 8, 2, 2, 48, 64, 64, false, 0, 0},      /* 2 queries x 4 heads per kv head */
};

TEST(sdpa_matches_composition) {
  for (size_t d = 0; d < 4; d++)
    for (size_t i = 0; i < sizeof SDPA_CASES / sizeof *SDPA_CASES; i++) {
      const sdpa_cfg *s = &SDPA_CASES[i];
      mx_array *in[4];
      sdpa_inputs(s, FLOATS[d], in);
      fcall c = {.op = SDPA, .scale = 1.0 / sqrt((double)s->D), .causal = s->causal,
                 .has_mask = s->mask != 0};
      double e = fused_vs_composed(c, in);
      /* the composition rounds the scores to bf16/f16 nowhere (f32
       * compute), so both round once at the end */
      ASSERT_MSG(e >= 0 && e <= tol_of(FLOATS[d]), "%s case %d: err %g (%s)",
                 mx_dtype_name(FLOATS[d]), (int)i, e, mx_last_error());
      mx_array_free_n(in, 4);
    }
}

/* Decode-shaped attention in bfloat16 (few query rows per kv head: on CPUs
 * with AVX512-BF16 the bf16 dot-product kernel, else — and under
 * MXC_BF16_DOT=0, which ctest also runs — the float path) against float64
 * on the same bf16 values, with sharp attention (scores spread over several
 * units, so every key, block and the scale matter): head sizes 64, 96, 128,
 * 1 to 8 query rows per kv head, 1 to 300 keys (partial key blocks). */
TEST(sdpa_decode_bf16_matches_float64) {
  const struct {
    int64_t G, Tq, Tk, D;
    bool causal;
  } cs[] = {{4, 1, 300, 64, true}, {4, 1, 17, 128, false}, {8, 1, 1, 96, false},
            {2, 2, 16, 64, false}, {1, 1, 33, 64, true}, {4, 2, 129, 128, false}};
  const int64_t B = 2, Hkv = 2;
  for (size_t ci = 0; ci < sizeof cs / sizeof *cs; ci++) {
    int64_t G = cs[ci].G, Tq = cs[ci].Tq, Tk = cs[ci].Tk, D = cs[ci].D, Hq = G * Hkv;
    mx_array *kq = mx_random_key(70 + ci), *kk = mx_random_key(80 + ci), *kv = mx_random_key(90 + ci);
    mx_array *q = mx_random_normal((int64_t[]){B, Hq, Tq, D}, 4, MX_BFLOAT16, 0, 2, kq);
    mx_array *k = mx_random_normal((int64_t[]){B, Hkv, Tk, D}, 4, MX_BFLOAT16, 0, 1, kk);
    mx_array *v = mx_random_normal((int64_t[]){B, Hkv, Tk, D}, 4, MX_BFLOAT16, 0, 1, kv);
    double scale = 1.0 / sqrt((double)D);
    mx_array *o = mx_fast_scaled_dot_product_attention(q, k, v, scale, NULL, cs[ci].causal);
    ASSERT_NOT_NULL(o);
    ASSERT_OK(mx_array_eval(o));
    ASSERT_EQ_INT(mx_array_dtype(o), MX_BFLOAT16);
    double *qv = malloc(sizeof(double) * (size_t)(B * Hq * Tq * D));
    double *kd = malloc(sizeof(double) * (size_t)(B * Hkv * Tk * D));
    double *vd = malloc(sizeof(double) * (size_t)(B * Hkv * Tk * D));
    double *od = malloc(sizeof(double) * (size_t)(B * Hq * Tq * D)), *w = malloc(sizeof(double) * (size_t)Tk);
    ASSERT_OK(mx_array_copy_to(q, MX_FLOAT64, qv, B * Hq * Tq * D));
    ASSERT_OK(mx_array_copy_to(k, MX_FLOAT64, kd, B * Hkv * Tk * D));
    ASSERT_OK(mx_array_copy_to(v, MX_FLOAT64, vd, B * Hkv * Tk * D));
    ASSERT_OK(mx_array_copy_to(o, MX_FLOAT64, od, B * Hq * Tq * D));
    double worst = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t t = 0; t < Tq; t++) {
          const double *qr = qv + ((b * Hq + h) * Tq + t) * D;
          int64_t hk = h / G, kend = cs[ci].causal ? Tk - Tq + t + 1 : Tk;
          double mx = -INFINITY, sum = 0;
          for (int64_t j = 0; j < kend; j++) {
            const double *kr = kd + ((b * Hkv + hk) * Tk + j) * D;
            double sc = 0;
            for (int64_t d = 0; d < D; d++) sc += qr[d] * kr[d];
            w[j] = sc * scale;
            mx = fmax(mx, w[j]);
          }
          for (int64_t j = 0; j < kend; j++) sum += (w[j] = exp(w[j] - mx));
          for (int64_t d = 0; d < D; d++) {
            double ref = 0;
            for (int64_t j = 0; j < kend; j++) ref += w[j] / sum * vd[((b * Hkv + hk) * Tk + j) * D + d];
            double got = od[((b * Hq + h) * Tq + t) * D + d];
            /* the output's rounding (half a bf16 step) in full, plus float32 sums */
            worst = fmax(worst, fabs(got - ref) - fabs(ref) / 256);
          }
        }
    ASSERT_MSG(worst < 1e-4, "case %d (G %lld Tq %lld Tk %lld D %lld): error %g", (int)ci,
               (long long)G, (long long)Tq, (long long)Tk, (long long)D, worst);
    free(qv);
    free(kd);
    free(vd);
    free(od);
    free(w);
    mx_array_free_n((mx_array *[]){kq, kk, kv, q, k, v, o}, 7);
  }
}

/* Large logits: the online softmax must not overflow. */
TEST(sdpa_large_scores_are_stable) {
  sdpa_cfg s = {1, 2, 2, 9, 300, 16, 16, false, 0, 0};
  mx_array *in[4];
  sdpa_inputs(&s, MX_FLOAT32, in);
  fcall c = {.op = SDPA, .scale = 300.0};
  double e = fused_vs_composed(c, in);
  ASSERT_MSG(e >= 0 && e <= 1e-4, "err %g", e);
  mx_array_free_n(in, 4);
}

/* ======================================================================
 * views and threads
 * ====================================================================== */

/* Bit-identical results for strided inputs and their contiguous copies. */
TEST(strided_inputs_equal_contiguous) {
  for (size_t d = 0; d < 4; d++) {
    mx_dtype dt = FLOATS[d];
    /* q/k/v in (B, T, H, D) layout, viewed as (B, H, T, D) */
    mx_array *raw[3] = {RND(dt, -1, 1, 2, 37, 4, 32), RND(dt, -1, 1, 2, 150, 2, 32),
                        RND(dt, -1, 1, 2, 150, 2, 32)};
    mx_array *view[3], *cont[3];
    for (int i = 0; i < 3; i++) {
      view[i] = mx_swapaxes(raw[i], 1, 2);
      cont[i] = mx_contiguous(view[i]);
      ASSERT_OK(mx_array_eval(view[i]));
      ASSERT(!mx_array_is_contiguous(view[i]));
    }
    mx_array *a = mx_fast_scaled_dot_product_attention(view[0], view[1], view[2], 0.2, NULL, true);
    mx_array *b = mx_fast_scaled_dot_product_attention(cont[0], cont[1], cont[2], 0.2, NULL, true);
    ASSERT_MSG(max_err(a, b) == 0, "sdpa %s: %g", mx_dtype_name(dt), max_err(a, b));
    mx_array_free(a);
    mx_array_free(b);
    /* rope and the norms on the same views (last axis contiguous) and on a
     * transposed view (last axis strided) */
    mx_array *tv = mx_swapaxes(cont[0], -1, -2), *tc = mx_contiguous(tv);
    mx_array *pairs[2][2] = {{view[0], cont[0]}, {tv, tc}};
    for (int p = 0; p < 2; p++) {
      mx_array *x = pairs[p][0], *y = pairs[p][1];
      int64_t D = mx_array_dim(x, -1);
      mx_array *w = RND(dt, 0.5, 1.5, D), *bias = RND(dt, -1, 1, D);
      mx_array *r[6] = {
          mx_fast_rope(x, (int)(D / 2) * 2, false, 10000, 1, 3, NULL),
          mx_fast_rope(y, (int)(D / 2) * 2, false, 10000, 1, 3, NULL),
          mx_fast_rms_norm(x, w, 1e-5), mx_fast_rms_norm(y, w, 1e-5),
          mx_fast_layer_norm(x, w, bias, 1e-5), mx_fast_layer_norm(y, w, bias, 1e-5)};
      for (int k = 0; k < 3; k++)
        ASSERT_MSG(max_err(r[2 * k], r[2 * k + 1]) == 0, "op %d view %d %s: %g", k, p,
                   mx_dtype_name(dt), max_err(r[2 * k], r[2 * k + 1]));
      mx_array_free_n(r, 6);
      mx_array_free(w);
      mx_array_free(bias);
    }
    mx_array_free(tv);
    mx_array_free(tc);
    mx_array_free_n(raw, 3);
    mx_array_free_n(view, 3);
    mx_array_free_n(cont, 3);
  }
}

TEST(results_do_not_depend_on_thread_count) {
  int saved = mx_get_num_threads();
  mx_array *x = RND(MX_FLOAT32, -2, 2, 3, 8, 61, 96), *w = RND(MX_FLOAT32, 0.5, 1.5, 96);
  mx_array *q = RND(MX_BFLOAT16, -1, 1, 2, 8, 45, 64), *k = RND(MX_BFLOAT16, -1, 1, 2, 2, 200, 64);
  mx_array *m = RND(MX_BFLOAT16, -1, 0, 45, 200);
  mx_array *ref[4] = {0};
  for (int nt = 1; nt <= 4; nt++) {
    mx_set_num_threads(nt);
    mx_array *r[4] = {mx_fast_rms_norm(x, w, 1e-5), mx_fast_layer_norm(x, w, w, 1e-5),
                      mx_fast_rope(x, 64, true, 10000, 1, 7, NULL),
                      mx_fast_scaled_dot_product_attention(q, k, k, 0.125, m, true)};
    ASSERT_OK(mx_eval(r, 4));
    for (int i = 0; i < 4; i++) {
      if (nt == 1) {
        ref[i] = r[i];
        continue;
      }
      ASSERT_MSG(max_err(r[i], ref[i]) == 0, "op %d differs with %d threads", i, nt);
      mx_array_free(r[i]);
    }
  }
  mx_set_num_threads(saved);
  mx_array_free_n(ref, 4);
  mx_array_free(x);
  mx_array_free(w);
  mx_array_free(q);
  mx_array_free(k);
  mx_array_free(m);
}

/* ======================================================================
 * gradients
 * ====================================================================== */

/* L(in) = sum(cot * f(in)) on the host. */
static double loss_of(const fcall *c, mx_array **in, const double *cot) {
  mx_array *y = call(c, in);
  double *v = y ? host(y) : NULL, s = 0;
  if (!v) {
    mx_array_free(y);
    return NAN;
  }
  for (int64_t i = 0; i < mx_array_size(y); i++) s += cot[i] * v[i];
  free(v);
  mx_array_free(y);
  return s;
}

/* The op's own VJP (called directly) against central differences, in
 * float64, for every float input. */
static void check_vjp_fd_tol(const fcall *c, mx_array **in, const char *what, double tol) {
  int n = nin_of(c);
  mx_array *y = call(c, in);
  ASSERT_NOT_NULL(y);
  ASSERT(y->op && y->op->vjp);
  ASSERT_EQ_INT(y->ninputs, n);
  for (int i = 0; i < n; i++) ASSERT(y->inputs[i] == in[i]); /* float64: no casts */
  mx_array *cot = rnd(y->shape, y->ndim, MX_FLOAT64, -1, 1);
  double *cv = host(cot);
  mx_array *g[4] = {0};
  bool need[4] = {true, true, true, true};
  ASSERT_OK(y->op->vjp(y, cot, g, need));
  for (int i = 0; i < n; i++) {
    ASSERT_NOT_NULL(g[i]);
    ASSERT_EQ_INT(mx_array_ndim(g[i]), mx_array_ndim(in[i]));
    double *gv = host(g[i]);
    ASSERT_NOT_NULL(gv);
    int64_t sz = mx_array_size(in[i]);
    if (mx_array_dtype(in[i]) == MX_BOOL) { /* boolean mask: zero gradient */
      for (int64_t e = 0; e < sz; e++) ASSERT(gv[e] == 0);
      free(gv);
      continue;
    }
    double *xv = host(in[i]);
    for (int64_t e = 0; e < sz; e++) {
      double x0 = xv[e], h = 1e-6 * (1 + fabs(x0)), lp, lm;
      mx_array *saved = in[i];
      xv[e] = x0 + h;
      in[i] = mx_array_from_data(xv, mx_array_shape(saved), mx_array_ndim(saved), MX_FLOAT64);
      lp = loss_of(c, in, cv);
      mx_array_free(in[i]);
      xv[e] = x0 - h;
      in[i] = mx_array_from_data(xv, mx_array_shape(saved), mx_array_ndim(saved), MX_FLOAT64);
      lm = loss_of(c, in, cv);
      mx_array_free(in[i]);
      in[i] = saved;
      xv[e] = x0;
      double fd = (lp - lm) / (2 * h);
      if (!(fabs(fd - gv[e]) <= tol * (1 + fabs(fd))))
        TEST_FAIL("%s: d/d input %d [%lld]: vjp %.10g, finite differences %.10g", what, i,
                  (long long)e, gv[e], fd);
    }
    free(xv);
    free(gv);
  }
  free(cv);
  mx_array_free_n(g, 4);
  mx_array_free(cot);
  mx_array_free(y);
}

static void check_vjp_fd(const fcall *c, mx_array **in, const char *what) {
  check_vjp_fd_tol(c, in, what, 1e-6);
}

TEST(norm_vjps_match_finite_differences) {
  for (int op = RMS; op <= LN; op++)
    for (int wb = 0; wb < (op == RMS ? 2 : 4); wb++) {
      mx_array *x = RND(MX_FLOAT64, -2, 2, 3, 7), *w = RND(MX_FLOAT64, 0.5, 1.5, 7);
      mx_array *b = RND(MX_FLOAT64, -1, 1, 7);
      fcall c = {.op = op, .eps = 1e-3, .has_w = wb & 1, .has_b = wb >> 1};
      mx_array *in[3] = {x, c.has_w ? w : b, b};
      check_vjp_fd(&c, in, op == RMS ? "rms_norm" : "layer_norm");
      mx_array_free(x);
      mx_array_free(w);
      mx_array_free(b);
    }
}

TEST(rope_vjp_matches_finite_differences) {
  for (int v = 0; v < 4; v++) {
    bool trad = v & 1, freqs = v >> 1;
    mx_array *in[2] = {RND(MX_FLOAT64, -2, 2, 2, 3, 10), RND(MX_FLOAT64, 1, 5, 3)};
    fcall c = {.op = ROPE, .dims = 6, .trad = trad, .has_freqs = freqs, .base = 100,
               .scale = 0.7, .offset = 2};
    check_vjp_fd(&c, in, trad ? "rope traditional" : "rope");
    mx_array_free_n(in, 2);
  }
}

TEST(sdpa_vjp_matches_finite_differences) {
  const sdpa_cfg cs[] = {
      {1, 2, 2, 3, 4, 4, 3, false, 0, 0},
      {1, 4, 2, 3, 5, 4, 3, true, 0, 0},   /* GQA, causal */
      {1, 2, 1, 4, 3, 4, 2, true, 0, 0},   /* Tq > Tk */
      {2, 2, 2, 3, 4, 3, 3, false, 1, 2},  /* additive (Tq, Tk) */
      {1, 4, 2, 3, 4, 3, 2, true, 1, 3},   /* additive (Hq, 1, Tk) + causal */
      {1, 2, 2, 3, 4, 3, 3, false, 2, 4},  /* boolean */
  };
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
    mx_array *in[4];
    sdpa_inputs(&cs[i], MX_FLOAT64, in);
    fcall c = {.op = SDPA, .scale = 0.8, .causal = cs[i].causal, .has_mask = cs[i].mask != 0};
    char what[64];
    snprintf(what, sizeof what, "sdpa case %d", (int)i);
    check_vjp_fd(&c, in, what);
    mx_array_free_n(in, 4);
  }
}

/* Through the transforms: vjp of the fused op == vjp of the composition. */
static int fcall_fn(void *payload, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  return mx_list_push(out, call(payload, in));
}

static void check_vjp_vs_composed(fcall c, mx_array **in, mx_dtype dt, const char *what) {
  int n = nin_of(&c);
  mx_list vj[2] = {MX_LIST_INIT, MX_LIST_INIT}, outs[2] = {MX_LIST_INIT, MX_LIST_INIT};
  mx_array *cot = NULL;
  for (int k = 0; k < 2; k++) {
    c.composed = k;
    mx_closure *f = mx_closure_new(fcall_fn, &c, NULL);
    if (!cot) {
      mx_array *y = call(&c, in);
      ASSERT_NOT_NULL(y);
      cot = rnd(mx_array_shape(y), mx_array_ndim(y), dt, -1, 1);
      mx_array_free(y);
    }
    ASSERT_OK(mx_vjp(f, in, n, &cot, 1, &outs[k], &vj[k]));
    mx_closure_free(f);
  }
  for (int i = 0; i < n; i++) {
    if (mx_array_dtype(in[i]) == MX_BOOL) continue;
    double e = max_err(vj[0].items[i], vj[1].items[i]);
    double tol = dt == MX_FLOAT64 ? 1e-9 : 1e-3;
    ASSERT_MSG(e >= 0 && e <= tol, "%s %s: grad %d err %g (%s)", what,
               mx_dtype_name(dt), i, e, mx_last_error());
  }
  for (int k = 0; k < 2; k++) {
    mx_list_clear(&vj[k]);
    mx_list_clear(&outs[k]);
  }
  mx_array_free(cot);
}

TEST(vjps_match_autodiff_of_composition) {
  mx_dtype dts[2] = {MX_FLOAT32, MX_FLOAT64};
  for (int d = 0; d < 2; d++) {
    mx_dtype dt = dts[d];
    mx_array *x = RND(dt, -2, 2, 4, 5, 48), *w = RND(dt, 0.5, 1.5, 48), *b = RND(dt, -1, 1, 48);
    mx_array *nin[3] = {x, w, b};
    check_vjp_vs_composed((fcall){.op = RMS, .eps = 1e-5, .has_w = true}, nin, dt, "rms_norm");
    check_vjp_vs_composed((fcall){.op = LN, .eps = 1e-5, .has_w = true, .has_b = true}, nin, dt,
                          "layer_norm");
    mx_array *f = RND(MX_FLOAT32, 1, 50, 16);
    mx_array *rin[2] = {x, f};
    check_vjp_vs_composed((fcall){.op = ROPE, .dims = 32, .base = 10000, .scale = 1, .offset = 4},
                          rin, dt, "rope");
    check_vjp_vs_composed((fcall){.op = ROPE, .dims = 32, .trad = true, .has_freqs = true,
                                  .scale = 1, .offset = 4}, rin, dt, "rope freqs");
    for (size_t i = 0; i < sizeof SDPA_CASES / sizeof *SDPA_CASES; i++) {
      sdpa_cfg s = SDPA_CASES[i];
      if (s.Tk > 200) continue;
      mx_array *in[4];
      sdpa_inputs(&s, dt, in);
      char what[64];
      snprintf(what, sizeof what, "sdpa case %d", (int)i);
      check_vjp_vs_composed((fcall){.op = SDPA, .scale = 0.25, .causal = s.causal,
                                    .has_mask = s.mask != 0}, in, dt, what);
      mx_array_free_n(in, 4);
    }
    mx_array_free(x);
    mx_array_free(w);
    mx_array_free(b);
    mx_array_free(f);
  }
}

/* Second order: jvp is the VJP of the VJP, so it differentiates the VJP
 * graphs written with ops. Compare with the composition's. */
TEST(jvps_match_composition) {
  mx_array *x = RND(MX_FLOAT64, -2, 2, 3, 16), *w = RND(MX_FLOAT64, 0.5, 1.5, 16);
  mx_array *q = RND(MX_FLOAT64, -1, 1, 1, 4, 5, 8), *k = RND(MX_FLOAT64, -1, 1, 1, 2, 6, 8);
  mx_array *v = RND(MX_FLOAT64, -1, 1, 1, 2, 6, 8);
  struct { fcall c; mx_array *in[3]; } cs[] = {
      {{.op = RMS, .eps = 1e-5, .has_w = true}, {x, w}},
      {{.op = LN, .eps = 1e-5, .has_w = true}, {x, w}},
      {{.op = ROPE, .dims = 16, .base = 10, .scale = 1}, {x}},
      {{.op = SDPA, .scale = 0.5, .causal = true}, {q, k, v}},
  };
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
    int n = nin_of(&cs[i].c);
    mx_array *tan[3] = {0};
    for (int j = 0; j < n; j++)
      tan[j] = rnd(mx_array_shape(cs[i].in[j]), mx_array_ndim(cs[i].in[j]), MX_FLOAT64, -1, 1);
    mx_list jv[2] = {MX_LIST_INIT, MX_LIST_INIT};
    for (int kk = 0; kk < 2; kk++) {
      fcall c = cs[i].c;
      c.composed = kk;
      mx_closure *f = mx_closure_new(fcall_fn, &c, NULL);
      ASSERT_OK(mx_jvp(f, cs[i].in, n, tan, n, NULL, &jv[kk]));
      mx_closure_free(f);
    }
    double e = max_err(jv[0].items[0], jv[1].items[0]);
    ASSERT_MSG(e >= 0 && e <= 1e-10, "case %d: jvp err %g (%s)", (int)i, e, mx_last_error());
    mx_list_clear(&jv[0]);
    mx_list_clear(&jv[1]);
    mx_array_free_n(tan, 3);
  }
  mx_array_free(x);
  mx_array_free(w);
  mx_array_free(q);
  mx_array_free(k);
  mx_array_free(v);
}

/* ======================================================================
 * MLX semantics at the edges
 * ====================================================================== */

/* Causal attention of one query (decode) sees every key: same as no mask. */
TEST(sdpa_causal_is_lower_right_aligned) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 2, 1, 16), *k = RND(MX_FLOAT32, -1, 1, 1, 2, 9, 16);
  mx_array *a = mx_fast_scaled_dot_product_attention(q, k, k, 0.25, NULL, true);
  mx_array *b = mx_fast_scaled_dot_product_attention(q, k, k, 0.25, NULL, false);
  ASSERT(max_err(a, b) == 0);
  /* Tq = 3 < Tk = 9: query t sees keys 0..t+6 — equal to an explicit mask */
  mx_array *q3 = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 16);
  mx_array *tri = mx_tri(3, 9, 6, MX_BOOL);
  mx_array *c = mx_fast_scaled_dot_product_attention(q3, k, k, 0.25, NULL, true);
  mx_array *d = mx_fast_scaled_dot_product_attention(q3, k, k, 0.25, tri, false);
  ASSERT_MSG(max_err(c, d) <= 1e-6, "%g", max_err(c, d));
  mx_array *arr[] = {q, k, a, b, q3, tri, c, d};
  mx_array_free_n(arr, 8);
}

TEST(sdpa_boolean_mask_equals_additive_minus_inf) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 2, 2, 5, 8), *k = RND(MX_FLOAT32, -1, 1, 2, 2, 7, 8);
  mx_array *bm = RND(MX_BOOL, 0, 1, 5, 7);
  /* make sure every row keeps at least its first key */
  mx_array *first = mx_tri(5, 7, -5, MX_BOOL), *keep = mx_logical_or(bm, first);
  mx_array *zero = mx_array_scalar(0, MX_FLOAT32), *ninf = mx_array_scalar(-INFINITY, MX_FLOAT32);
  mx_array *add = mx_where(keep, zero, ninf);
  mx_array *a = mx_fast_scaled_dot_product_attention(q, k, k, 0.3, keep, false);
  mx_array *b = mx_fast_scaled_dot_product_attention(q, k, k, 0.3, add, false);
  ASSERT_MSG(max_err(a, b) <= 1e-6, "%g", max_err(a, b));
  mx_array *arr[] = {q, k, bm, first, keep, zero, ninf, add, a, b};
  mx_array_free_n(arr, 10);
}

/* MLX's fallback fills masked scores with finfo.min: a row with every key
 * masked out averages all values; an all -inf additive row gives NaN. */
TEST(sdpa_fully_masked_rows) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 1, 2, 4), *k = RND(MX_FLOAT32, -1, 1, 1, 1, 3, 4);
  mx_array *v = RND(MX_FLOAT32, -1, 1, 1, 1, 3, 4);
  mx_array *none = mx_zeros((int64_t[]){2, 3}, 2, MX_BOOL);
  mx_array *o = mx_fast_scaled_dot_product_attention(q, k, v, 1, none, false);
  int ax = 2;
  mx_array *mean = mx_mean(v, &ax, 1, true);
  mx_array *meanb = mx_broadcast_to(mean, (int64_t[]){1, 1, 2, 4}, 4);
  ASSERT_MSG(max_err(o, meanb) <= 1e-6, "%g", max_err(o, meanb));
  mx_array *ninf = mx_full((int64_t[]){2, 3}, 2, -INFINITY, MX_FLOAT32);
  mx_array *n = mx_fast_scaled_dot_product_attention(q, k, v, 1, ninf, false);
  double *nv = host(n);
  ASSERT_NOT_NULL(nv);
  for (int i = 0; i < 8; i++) ASSERT(isnan(nv[i]));
  free(nv);
  mx_array *arr[] = {q, k, v, none, o, mean, meanb, ninf, n};
  mx_array_free_n(arr, 9);
}

/* Rope rotates feature pairs by theta = (offset + t) * scale * base^(-2i/dims):
 * check one element by hand, and that the features past dims pass through. */
TEST(rope_rotates_pairs_by_position) {
  double xv[2 * 6];
  for (int i = 0; i < 12; i++) xv[i] = 1 + i;
  mx_array *x = mx_array_from_data(xv, (int64_t[]){1, 2, 6}, 3, MX_FLOAT64);
  for (int trad = 0; trad < 2; trad++) {
    mx_array *r = mx_fast_rope(x, 4, trad, 100, 0.5, 3, NULL);
    double *o = host(r);
    ASSERT_NOT_NULL(o);
    /* row t = 1, pair i = 1: theta = (3 + 1) * 0.5 * 100^(-2/4) = 0.2 */
    double th = 0.2;
    int a = trad ? 6 + 2 : 6 + 1, b = trad ? 6 + 3 : 6 + 3;
    ASSERT_NEAR(o[a], xv[a] * cos(th) - xv[b] * sin(th), 1e-12);
    ASSERT_NEAR(o[b], xv[a] * sin(th) + xv[b] * cos(th), 1e-12);
    for (int t = 0; t < 2; t++)
      for (int i = 4; i < 6; i++) ASSERT(o[t * 6 + i] == xv[t * 6 + i]);
    free(o);
    mx_array_free(r);
  }
  mx_array_free(x);
}

/* A rotation preserves norms, and the VJP (inverse rotation) undoes it. */
TEST(rope_vjp_is_the_inverse_rotation) {
  mx_array *x = RND(MX_FLOAT32, -1, 1, 2, 3, 9, 32);
  mx_array *y = mx_fast_rope(x, 32, false, 10000, 1, 5, NULL);
  ASSERT_NOT_NULL(y);
  mx_array *g[1] = {0};
  bool need[1] = {true};
  ASSERT_OK(y->op->vjp(y, y, g, need));
  ASSERT_MSG(max_err(g[0], x) <= 1e-6, "%g", max_err(g[0], x));
  mx_array_free(g[0]);
  mx_array_free(y);
  mx_array_free(x);
}

/* ======================================================================
 * errors and failures
 * ====================================================================== */
static void expect_error(mx_array *r, int status, const char *needle) {
  if (r) {
    mx_array_free(r);
    TEST_FAIL("expected an error containing '%s'", needle);
  }
  ASSERT_EQ_INT(mx_last_status(), status);
  ASSERT_MSG(strstr(mx_last_error(), needle), "message '%s' lacks '%s'", mx_last_error(), needle);
  mx_clear_error();
}

TEST(build_time_errors_name_the_op) {
  mx_array *s = mx_array_scalar(1, MX_FLOAT32);
  mx_array *x = RND(MX_FLOAT32, -1, 1, 2, 3, 8), *w7 = RND(MX_FLOAT32, -1, 1, 7);
  mx_array *xi = mx_zeros((int64_t[]){2, 8}, 2, MX_INT32), *w2 = RND(MX_FLOAT32, -1, 1, 2, 8);
  expect_error(mx_fast_rms_norm(s, NULL, 1e-5), MX_ERR_SHAPE, "rms_norm");
  expect_error(mx_fast_rms_norm(x, w7, 1e-5), MX_ERR_SHAPE, "rms_norm: weight");
  expect_error(mx_fast_rms_norm(x, w2, 1e-5), MX_ERR_SHAPE, "[2,8]");
  expect_error(mx_fast_rms_norm(xi, NULL, 1e-5), MX_ERR_DTYPE, "rms_norm");
  expect_error(mx_fast_layer_norm(x, NULL, w7, 1e-5), MX_ERR_SHAPE, "layer_norm: bias");
  expect_error(mx_fast_rope(x, 5, false, 1e4, 1, 0, NULL), MX_ERR_INVALID_ARG, "rope: dims");
  expect_error(mx_fast_rope(x, 10, false, 1e4, 1, 0, NULL), MX_ERR_INVALID_ARG, "rope: dims");
  expect_error(mx_fast_rope(w7, 2, false, 1e4, 1, 0, NULL), MX_ERR_SHAPE, "rope");
  expect_error(mx_fast_rope(x, 8, false, 1e4, 1, 0, w7), MX_ERR_SHAPE, "rope: freqs");
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 4, 3, 8), *k3 = RND(MX_FLOAT32, -1, 1, 1, 3, 5, 8);
  mx_array *k = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8), *kd = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 4);
  mx_array *m = RND(MX_FLOAT32, -1, 1, 3, 4), *mf16 = RND(MX_FLOAT16, -1, 1, 3, 5);
  mx_array *q16 = RND(MX_FLOAT16, -1, 1, 1, 4, 3, 8), *k16 = RND(MX_FLOAT16, -1, 1, 1, 2, 5, 8);
  mx_array *m32 = RND(MX_FLOAT32, -1, 1, 3, 5);
  const char *sd = "scaled_dot_product_attention";
  expect_error(mx_fast_scaled_dot_product_attention(x, k, k, 1, NULL, false), MX_ERR_SHAPE, sd);
  expect_error(mx_fast_scaled_dot_product_attention(q, k3, k3, 1, NULL, false), MX_ERR_SHAPE, sd);
  expect_error(mx_fast_scaled_dot_product_attention(q, kd, kd, 1, NULL, false), MX_ERR_SHAPE, sd);
  expect_error(mx_fast_scaled_dot_product_attention(q, k, k, 1, m, false), MX_ERR_SHAPE, "mask");
  expect_error(mx_fast_scaled_dot_product_attention(q16, k16, k16, 1, m32, false), MX_ERR_DTYPE,
               "mask dtype");
  mx_array *ok = mx_fast_scaled_dot_product_attention(q16, k16, k16, 1, mf16, false);
  ASSERT_NOT_NULL(ok);
  ASSERT_EQ_INT(mx_array_dtype(ok), MX_FLOAT16);
  /* NULL inputs (a failed earlier op) give NULL and keep the first error */
  ASSERT(!mx_fast_rms_norm(NULL, NULL, 1e-5));
  ASSERT(!mx_fast_layer_norm(NULL, w7, NULL, 1e-5));
  ASSERT(!mx_fast_rope(NULL, 4, false, 1, 1, 0, NULL));
  ASSERT(!mx_fast_scaled_dot_product_attention(q, NULL, k, 1, NULL, false));
  mx_clear_error();
  mx_array *arr[] = {s, x, w7, xi, w2, q, k3, k, kd, m, mf16, q16, k16, m32, ok};
  mx_array_free_n(arr, 15);
}

/* Every allocation of an eval failing in turn: an OOM status or success,
 * never a crash or leak (the sanitizer build checks leaks). */
TEST(allocation_failures_are_reported) {
  mx_array *q = RND(MX_FLOAT16, -1, 1, 1, 4, 5, 8), *k = RND(MX_FLOAT16, -1, 1, 1, 2, 7, 8);
  mx_array *x = RND(MX_BFLOAT16, -1, 1, 3, 5, 8), *w = RND(MX_FLOAT32, -1, 1, 8);
  ASSERT_OK(mx_array_eval(q));
  for (size_t n = 1; n < 64; n++) {
    mx_debug_fail_nth_alloc(n);
    mx_array *r[3] = {mx_fast_scaled_dot_product_attention(q, k, k, 0.3, NULL, true),
                      mx_fast_rms_norm(x, w, 1e-5), mx_fast_rope(x, 8, true, 1e4, 1, 0, NULL)};
    int st = (r[0] && r[1] && r[2]) ? mx_eval(r, 3) : mx_last_status();
    size_t made = mx_debug_fail_nth_alloc(0);
    ASSERT_MSG(st == MX_OK || st == MX_ERR_OOM, "n = %zu: status %d (%s)", n, st, mx_last_error());
    mx_clear_error();
    mx_array_free_n(r, 3);
    if (st == MX_OK && made < n) break;
  }
  mx_array *arr[] = {q, k, x, w};
  mx_array_free_n(arr, 4);
}

/* ======================================================================
 * the fused attention backward (sdpa_logsumexp, sdpa_backward_q,
 * sdpa_backward_kv) and its routing in the VJP of sdpa
 * ====================================================================== */

typedef struct {
  int64_t B, Hq, Hkv, Tq, Tk, D;
  bool causal;
  bool strided; /* q as a (B, Tq, Hq, D) transpose, k with feature stride Tk */
} bwd_cfg;

static const bwd_cfg BWD_CASES[] = {
    {1, 2, 2, 5, 5, 8, false, false},
    {2, 4, 2, 37, 37, 64, true, false},   /* GQA 2:1, causal, Tq = Tk */
    {1, 4, 2, 1, 200, 64, true, true},    /* one row, causal, Tq < Tk */
    {1, 3, 1, 130, 200, 24, true, true},  /* MQA, several blocks, Tq < Tk */
    {2, 2, 1, 37, 130, 128, false, true}, /* not causal, Tq < Tk, D = 128 */
    {1, 2, 2, 200, 200, 16, true, false}, /* many row and key blocks */
    {1, 4, 4, 66, 67, 40, false, true},   /* odd sizes, Hq = Hkv */
};

/* q (B, Hq, Tq, D) and k (B, Hkv, Tk, D) of dtype dt, as views when strided. */
static void bwd_qk(const bwd_cfg *s, mx_dtype dt, mx_array **q, mx_array **k) {
  if (!s->strided) {
    *q = RND(dt, -1, 1, s->B, s->Hq, s->Tq, s->D);
    *k = RND(dt, -1, 1, s->B, s->Hkv, s->Tk, s->D);
    return;
  }
  mx_array *qt = RND(dt, -1, 1, s->B, s->Tq, s->Hq, s->D);
  mx_array *kt = RND(dt, -1, 1, s->B, s->Hkv, s->D, s->Tk);
  *q = mx_swapaxes(qt, 1, 2);
  *k = mx_swapaxes(kt, 2, 3);
  mx_array_free(qt);
  mx_array_free(kt);
}

/* The three ops in float64 from their definitions (fast_params.h), on
 * row-major host copies: lse from q, k; dq and dkv with the given lse_in
 * and delta. */
static void bwd_reference(const bwd_cfg *s, double scale, const double *q, const double *k,
                          const double *v, const double *o, const double *lse_in,
                          const double *delta, double *lse, double *dq, double *dkv) {
  int64_t G = s->Hq / s->Hkv, D = s->D, off = s->Tk - s->Tq;
  double *sc = malloc(sizeof(double) * (size_t)(s->Tk ? s->Tk : 1));
  memset(dq, 0, sizeof(double) * (size_t)(s->B * s->Hq * s->Tq * D));
  memset(dkv, 0, sizeof(double) * (size_t)(s->B * s->Hkv * s->Tk * 2 * D));
  for (int64_t b = 0; b < s->B; b++)
    for (int64_t h = 0; h < s->Hq; h++)
      for (int64_t t = 0; t < s->Tq; t++) {
        int64_t row = (b * s->Hq + h) * s->Tq + t, kh = b * s->Hkv + h / G;
        const double *qr = q + row * D, *orow = o + row * D;
        int64_t n = s->causal ? MX_MIN(s->Tk, t + off + 1) : s->Tk;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < n; j++) {
          double a = 0;
          for (int64_t d = 0; d < D; d++) a += qr[d] * k[(kh * s->Tk + j) * D + d];
          sc[j] = scale * a;
          mx = fmax(mx, sc[j]);
        }
        for (int64_t j = 0; j < n; j++) sum += exp(sc[j] - mx);
        lse[row] = n ? mx + log(sum) : -INFINITY;
        for (int64_t j = 0; j < n; j++) {
          const double *kj = k + (kh * s->Tk + j) * D, *vj = v + (kh * s->Tk + j) * D;
          /* dkv (2, B, Hkv, Tk, D): [dk, dv] */
          double *dkj = dkv + (kh * s->Tk + j) * D, *dvj = dkj + s->B * s->Hkv * s->Tk * D;
          double p = exp(sc[j] - lse_in[row]), dp = 0;
          for (int64_t d = 0; d < D; d++) dp += orow[d] * vj[d];
          double ds = p * (dp - delta[row]);
          for (int64_t d = 0; d < D; d++) {
            dq[row * D + d] += scale * ds * kj[d];
            dkj[d] += scale * ds * qr[d];
            dvj[d] += p * orow[d];
          }
        }
      }
  free(sc);
}

/* A float32 array of shape (B, Hq, Tq) holding v rounded to float32. */
static mx_array *rows_f32(const bwd_cfg *s, const double *v) {
  int64_t shape[3] = {s->B, s->Hq, s->Tq};
  mx_array *d = mx_array_from_data(v, shape, 3, MX_FLOAT64);
  mx_array *r = mx_astype(d, MX_FLOAT32);
  mx_array_free(d);
  return r;
}

/* Max error of a against the float64 values ref (same size), as max_err. */
static double err_vs(mx_array *a, const double *ref) {
  mx_array *r = mx_array_from_data(ref, mx_array_shape(a), mx_array_ndim(a), MX_FLOAT64);
  double e = max_err(a, r);
  mx_array_free(r);
  return e;
}

TEST(sdpa_fused_backward_ops_match_float64_reference) {
  const mx_dtype dts[4] = {MX_FLOAT32, MX_FLOAT64, MX_FLOAT16, MX_BFLOAT16};
  const double tols[4] = {1e-5, 1e-5, 1e-3, 8e-3}; /* float32 compute; output rounding */
  for (int di = 0; di < 4; di++)
    for (size_t ci = 0; ci < sizeof BWD_CASES / sizeof *BWD_CASES; ci++) {
      const bwd_cfg *s = &BWD_CASES[ci];
      mx_dtype dt = dts[di];
      double scale = 1.0 / sqrt((double)s->D);
      mx_array *q, *k;
      bwd_qk(s, dt, &q, &k);
      mx_array *v = RND(dt, -1, 1, s->B, s->Hkv, s->Tk, s->D);
      mx_array *o = RND(dt, -1, 1, s->B, s->Hq, s->Tq, s->D);
      mx_array *delta = RND(MX_FLOAT32, -0.5, 0.5, s->B, s->Hq, s->Tq);
      double *qh = host(q), *kh = host(k), *vh = host(v), *oh = host(o), *dh = host(delta);
      ASSERT(qh && kh && vh && oh && dh);
      int64_t nrow = s->B * s->Hq * s->Tq;
      double *lse = malloc(sizeof(double) * (size_t)nrow);
      double *lse_in = malloc(sizeof(double) * (size_t)nrow);
      double *dq = malloc(sizeof(double) * (size_t)(nrow * s->D));
      double *dkv = malloc(sizeof(double) * (size_t)(s->B * s->Hkv * s->Tk * 2 * s->D));
      /* lse first (lse_in unused), then the backward with lse rounded to float32 */
      bwd_reference(s, scale, qh, kh, vh, oh, dh, dh, lse, dq, dkv);
      for (int64_t r = 0; r < nrow; r++) lse_in[r] = (float)lse[r];
      bwd_reference(s, scale, qh, kh, vh, oh, lse_in, dh, lse, dq, dkv);
      mx_array *lse_a = rows_f32(s, lse_in);
      mx_array *r[3] = {mx__fast_sdpa_lse(q, k, scale, s->causal),
                        mx__fast_sdpa_bwd_q(q, k, v, o, lse_a, delta, scale, s->causal),
                        mx__fast_sdpa_bwd_kv(q, k, v, o, lse_a, delta, scale, s->causal)};
      ASSERT_MSG(r[0] && r[1] && r[2], "build: %s", mx_last_error());
      ASSERT_EQ_INT(mx_array_dtype(r[0]), MX_FLOAT32);
      ASSERT_EQ_INT(mx_array_dtype(r[1]), dt);
      ASSERT_EQ_INT(mx_array_dtype(r[2]), dt);
      ASSERT_EQ_INT(mx_array_ndim(r[2]), 5);
      ASSERT_EQ_INT(mx_array_shape(r[2])[0], 2);
      ASSERT_EQ_INT(mx_array_shape(r[2])[4], s->D);
      double e[3] = {err_vs(r[0], lse), err_vs(r[1], dq), err_vs(r[2], dkv)};
      const char *names[3] = {"lse", "dq", "dkv"};
      for (int i = 0; i < 3; i++)
        ASSERT_MSG(e[i] >= 0 && e[i] <= (i == 0 ? 5e-6 : tols[di]),
                   "case %zu %s: %s error %g (%s)", ci, mx_dtype_name(dt), names[i], e[i],
                   mx_last_error());
      mx_array_free_n(r, 3);
      mx_array *arr[] = {q, k, v, o, delta, lse_a};
      mx_array_free_n(arr, 6);
      double *bufs[] = {qh, kh, vh, oh, dh, lse, lse_in, dq, dkv};
      for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    }
}

/* Edges: no keys (lse -inf, dq 0), no rows (dk = dv = 0), empty batch. */
TEST(sdpa_fused_backward_ops_edges) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8), *k0 = RND(MX_FLOAT32, -1, 1, 1, 2, 0, 8);
  mx_array *o = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8), *rows = RND(MX_FLOAT32, -1, 1, 1, 2, 3);
  mx_array *l = mx__fast_sdpa_lse(q, k0, 0.5, false);
  mx_array *dq = mx__fast_sdpa_bwd_q(q, k0, k0, o, rows, rows, 0.5, false);
  double *lv = host(l), *dv = host(dq);
  ASSERT(lv && dv);
  for (int i = 0; i < 6; i++) ASSERT(isinf(lv[i]) && lv[i] < 0);
  for (int i = 0; i < 48; i++) ASSERT(dv[i] == 0);
  free(lv);
  free(dv);
  mx_array *q0 = RND(MX_FLOAT32, -1, 1, 1, 2, 0, 8), *k = RND(MX_FLOAT32, -1, 1, 1, 1, 4, 8);
  mx_array *r0 = RND(MX_FLOAT32, -1, 1, 1, 2, 0);
  mx_array *dkv = mx__fast_sdpa_bwd_kv(q0, k, k, q0, r0, r0, 0.5, true);
  double *kv = host(dkv);
  ASSERT_NOT_NULL(kv);
  ASSERT_EQ_INT(mx_array_size(dkv), 64);
  for (int i = 0; i < 64; i++) ASSERT(kv[i] == 0);
  free(kv);
  mx_array *arr[] = {q, k0, o, rows, l, dq, q0, k, r0, dkv};
  mx_array_free_n(arr, 10);
}

TEST(sdpa_fused_backward_ops_do_not_depend_on_thread_count) {
  int saved = mx_get_num_threads();
  bwd_cfg s = {2, 4, 2, 45, 100, 64, true, true};
  mx_array *q, *k;
  bwd_qk(&s, MX_BFLOAT16, &q, &k);
  mx_array *v = RND(MX_BFLOAT16, -1, 1, 2, 2, 100, 64), *o = RND(MX_BFLOAT16, -1, 1, 2, 4, 45, 64);
  mx_array *delta = RND(MX_FLOAT32, -0.5, 0.5, 2, 4, 45);
  mx_array *ref[3] = {0};
  for (int nt = 1; nt <= 4; nt++) {
    mx_set_num_threads(nt);
    mx_array *lse = mx__fast_sdpa_lse(q, k, 0.125, true);
    mx_array *r[3] = {mx_array_retain(lse),
                      mx__fast_sdpa_bwd_q(q, k, v, o, lse, delta, 0.125, true),
                      mx__fast_sdpa_bwd_kv(q, k, v, o, lse, delta, 0.125, true)};
    mx_array_free(lse);
    ASSERT_OK(mx_eval(r, 3));
    for (int i = 0; i < 3; i++) {
      if (nt == 1) {
        ref[i] = r[i];
        continue;
      }
      ASSERT_MSG(max_err(r[i], ref[i]) == 0, "op %d differs with %d threads", i, nt);
      mx_array_free(r[i]);
    }
  }
  mx_set_num_threads(saved);
  mx_array_free_n(ref, 3);
  mx_array *arr[] = {q, k, v, o, delta};
  mx_array_free_n(arr, 5);
}

TEST(sdpa_fused_backward_build_errors) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 4, 3, 8), *k = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8);
  mx_array *k3 = RND(MX_FLOAT32, -1, 1, 1, 3, 5, 8), *kd = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 4);
  mx_array *k16 = RND(MX_FLOAT16, -1, 1, 1, 2, 5, 8), *o = RND(MX_FLOAT32, -1, 1, 1, 4, 3, 8);
  mx_array *rows = RND(MX_FLOAT32, -1, 1, 1, 4, 3), *rows16 = RND(MX_FLOAT16, -1, 1, 1, 4, 3);
  mx_array *rowsb = RND(MX_FLOAT32, -1, 1, 1, 4, 4), *k2 = RND(MX_FLOAT32, -1, 1, 1, 2, 2, 8);
  const char *l = "sdpa_logsumexp", *bq = "sdpa_backward_q", *bkv = "sdpa_backward_kv";
  expect_error(mx__fast_sdpa_lse(q, k3, 1, false), MX_ERR_SHAPE, l);
  expect_error(mx__fast_sdpa_lse(q, kd, 1, false), MX_ERR_SHAPE, l);
  expect_error(mx__fast_sdpa_lse(rows, k, 1, false), MX_ERR_SHAPE, l);
  expect_error(mx__fast_sdpa_lse(q, k16, 1, false), MX_ERR_DTYPE, l);
  expect_error(mx__fast_sdpa_lse(q, k2, 1, true), MX_ERR_INVALID_ARG, "Tq <= Tk");
  expect_error(mx__fast_sdpa_bwd_q(q, k, kd, o, rows, rows, 1, false), MX_ERR_SHAPE, "dout");
  expect_error(mx__fast_sdpa_bwd_q(q, k, k16, o, rows, rows, 1, false), MX_ERR_DTYPE, bq);
  expect_error(mx__fast_sdpa_bwd_kv(q, k, k, o, rows16, rows, 1, false), MX_ERR_DTYPE, "lse");
  expect_error(mx__fast_sdpa_bwd_kv(q, k, k, o, rows, rowsb, 1, false), MX_ERR_SHAPE, "delta");
  expect_error(mx__fast_sdpa_bwd_kv(q, k, k3, o, rows, rows, 1, false), MX_ERR_SHAPE, bkv);
  ASSERT(!mx__fast_sdpa_bwd_kv(q, k, NULL, o, rows, rows, 1, false));
  mx_clear_error();
  mx_array *arr[] = {q, k, k3, kd, k16, o, rows, rows16, rowsb, k2};
  mx_array_free_n(arr, 10);
}

/* Whether op id appears in a's (lazy) graph. */
static bool graph_has_op(const mx_array *a, int id, int depth) {
  if (!a || depth > 40) return false;
  if (a->op && (int)a->op->id == id) return true;
  for (int i = 0; a->op && i < a->ninputs; i++)
    if (graph_has_op(a->inputs[i], id, depth + 1)) return true;
  return false;
}

/* MXC_SDPA_FUSED_BWD set to v (NULL: unset). */
static void fused_env(const char *v) {
  if (v) setenv("MXC_SDPA_FUSED_BWD", v, 1);
  else unsetenv("MXC_SDPA_FUSED_BWD");
}

/* vjp of sdpa(q, k, v) under MXC_SDPA_FUSED_BWD = env: the three
 * gradients appended to g (lazy); *fused: the graph uses the fused ops. */
static void sdpa_vjp_with(const char *env, fcall *c, mx_array **in, mx_array *cot, mx_list *g,
                          bool *fused) {
  fused_env(env);
  mx_closure *f = mx_closure_new(fcall_fn, c, NULL);
  int st = mx_vjp(f, in, 3, &cot, 1, NULL, g);
  mx_closure_free(f);
  fused_env(NULL);
  ASSERT_MSG(st == MX_OK, "vjp: %s", mx_last_error());
  *fused = graph_has_op(g->items[0], MX_OP_SDPA_BWD_Q, 0) &&
           graph_has_op(g->items[1], MX_OP_SDPA_BWD_KV, 0) &&
           graph_has_op(g->items[2], MX_OP_SDPA_BWD_KV, 0);
}

TEST(sdpa_fused_vjp_equals_composed_vjp) {
  for (size_t ci = 0; ci < sizeof BWD_CASES / sizeof *BWD_CASES; ci++) {
    const bwd_cfg *s = &BWD_CASES[ci];
    mx_array *in[3];
    bwd_qk(s, MX_FLOAT32, &in[0], &in[1]);
    in[2] = RND(MX_FLOAT32, -1, 1, s->B, s->Hkv, s->Tk, s->D);
    mx_array *cot = RND(MX_FLOAT32, -1, 1, s->B, s->Hq, s->Tq, s->D);
    fcall c = {.op = SDPA, .scale = 0.3, .causal = s->causal};
    mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT};
    bool fused[2];
    sdpa_vjp_with("1", &c, in, cot, &g[0], &fused[0]);
    sdpa_vjp_with("0", &c, in, cot, &g[1], &fused[1]);
    ASSERT_MSG(fused[0] && !fused[1], "case %zu: fused path %d / %d", ci, fused[0], fused[1]);
    for (int i = 0; i < 3; i++) {
      double e = max_err(g[0].items[i], g[1].items[i]);
      ASSERT_MSG(e >= 0 && e <= 1e-5, "case %zu: grad %d err %g (%s)", ci, i, e, mx_last_error());
    }
    mx_list_clear(&g[0]);
    mx_list_clear(&g[1]);
    mx_array_free_n(in, 3);
    mx_array_free(cot);
  }
}

/* Routing: on the CPU, unset or "auto" keeps the composed backward; a
 * mask, D != Dv or causal Tq > Tk keep it even when forced. On a GPU (when
 * there is one), auto takes the fused path for bf16 with D = 64 only. */
TEST(sdpa_fused_vjp_routing) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 2, 4, 8), *k = RND(MX_FLOAT32, -1, 1, 1, 2, 6, 8);
  mx_array *cot = RND(MX_FLOAT32, -1, 1, 1, 2, 4, 8), *in[3] = {q, k, k};
  mx_list g = MX_LIST_INIT;
  bool fused;
  fcall c = {.op = SDPA, .scale = 0.3, .causal = true};
  sdpa_vjp_with(NULL, &c, in, cot, &g, &fused);
  ASSERT(!fused);
  mx_list_clear(&g);
  sdpa_vjp_with("auto", &c, in, cot, &g, &fused);
  ASSERT(!fused);
  mx_list_clear(&g);
  sdpa_vjp_with("1", &c, in, cot, &g, &fused);
  ASSERT(fused);
  mx_list_clear(&g);
  /* forced but not allowed: causal Tq > Tk, Dv != D, a mask */
  mx_array *in2[3] = {k, q, q};
  mx_array *cot2 = RND(MX_FLOAT32, -1, 1, 1, 2, 6, 8);
  sdpa_vjp_with("1", &c, in2, cot2, &g, &fused);
  ASSERT(!graph_has_op(g.items[0], MX_OP_SDPA_BWD_Q, 0));
  mx_list_clear(&g);
  mx_array *v4 = RND(MX_FLOAT32, -1, 1, 1, 2, 6, 4), *cot4 = RND(MX_FLOAT32, -1, 1, 1, 2, 4, 4);
  mx_array *in3[3] = {q, k, v4};
  sdpa_vjp_with("1", &c, in3, cot4, &g, &fused);
  ASSERT(!graph_has_op(g.items[0], MX_OP_SDPA_BWD_Q, 0));
  mx_list_clear(&g);
  mx_array *m = RND(MX_FLOAT32, -1, 0, 4, 6), *inm[4] = {q, k, k, m};
  fcall cm = {.op = SDPA, .scale = 0.3, .has_mask = true};
  fused_env("1");
  mx_closure *f = mx_closure_new(fcall_fn, &cm, NULL);
  ASSERT_OK(mx_vjp(f, inm, 4, &cot, 1, NULL, &g));
  mx_closure_free(f);
  fused_env(NULL);
  ASSERT(!graph_has_op(g.items[0], MX_OP_SDPA_BWD_Q, 0));
  mx_list_clear(&g);
  if (mx_device_available(MX_GPU)) {
    int prev = mx_set_default_device(MX_GPU);
    mx_array *qb = RND(MX_BFLOAT16, -1, 1, 1, 4, 70, 64);
    mx_array *kb = RND(MX_BFLOAT16, -1, 1, 1, 2, 90, 64);
    mx_array *cb = RND(MX_BFLOAT16, -1, 1, 1, 4, 70, 64), *inb[3] = {qb, kb, kb};
    mx_list gb[2] = {MX_LIST_INIT, MX_LIST_INIT};
    bool fb[2];
    sdpa_vjp_with(NULL, &c, inb, cb, &gb[0], &fb[0]);
    sdpa_vjp_with("0", &c, inb, cb, &gb[1], &fb[1]);
    ASSERT(fb[0] && !fb[1]);
    for (int i = 0; i < 3; i++) {
      double e = max_err(gb[0].items[i], gb[1].items[i]);
      ASSERT_MSG(e >= 0 && e <= 3e-2, "gpu bf16: grad %d err %g (%s)", i, e, mx_last_error());
    }
    mx_list_clear(&gb[0]);
    mx_list_clear(&gb[1]);
    sdpa_vjp_with(NULL, &c, in, cot, &g, &fused); /* float32 on the GPU: composed */
    ASSERT(!fused);
    mx_list_clear(&g);
    mx_set_default_device((mx_device)prev);
    mx_array *arr[] = {qb, kb, cb};
    mx_array_free_n(arr, 3);
  }
  mx_array *arr[] = {q, k, cot, cot2, v4, cot4, m};
  mx_array_free_n(arr, 7);
}

/* The first node with op id in a's graph (NULL: none). */
static mx_array *graph_find(mx_array *a, int id, int depth) {
  if (!a || depth > 40) return NULL;
  if (a->op && (int)a->op->id == id) return a;
  for (int i = 0; a->op && i < a->ninputs; i++) {
    mx_array *r = graph_find(a->inputs[i], id, depth + 1);
    if (r) return r;
  }
  return NULL;
}

/* On a GPU the fused VJP asks the forward, not yet run, to keep each row's
 * log-sum-exp after its output, and sdpa_logsumexp copies those rows: the
 * gradients have the bits of the recomputing path (MXC_SDPA_KEEP_LSE=0),
 * and the forward's buffer holds the rows. On the CPU the rows are
 * recomputed either way (the same bits too). */
TEST(sdpa_fused_vjp_keeps_the_forward_lse) {
  const bool gpu = mx_device_available(MX_GPU);
  int prev = mx_set_default_device(gpu ? MX_GPU : MX_CPU);
  const mx_dtype dt = gpu ? MX_BFLOAT16 : MX_FLOAT32;
  const char *env = gpu ? NULL : "1"; /* the CPU takes the fused path only when forced */
  const bool causal[2] = {true, false};
  for (int ci = 0; ci < 2; ci++) {
    mx_array *q = RND(dt, -1, 1, 2, 4, 70, 64), *k = RND(dt, -1, 1, 2, 2, 90, 64);
    mx_array *v = RND(dt, -1, 1, 2, 2, 90, 64), *cot = RND(dt, -1, 1, 2, 4, 70, 64);
    mx_array *in[3] = {q, k, v};
    fcall c = {.op = SDPA, .scale = 0.125, .causal = causal[ci]};
    mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT};
    bool fused[2];
    setenv("MXC_SDPA_KEEP_LSE", "0", 1);
    sdpa_vjp_with(env, &c, in, cot, &g[1], &fused[1]);
    unsetenv("MXC_SDPA_KEEP_LSE");
    mx_array *lse1 = graph_find(g[1].items[0], MX_OP_SDPA_LSE, 0);
    ASSERT(lse1 && lse1->ninputs == 2);
    sdpa_vjp_with(env, &c, in, cot, &g[0], &fused[0]);
    ASSERT(fused[0] && fused[1]);
    mx_array *lse = graph_find(g[0].items[0], MX_OP_SDPA_LSE, 0);
    ASSERT(lse && lse->ninputs == 3 && lse->inputs[2]->op &&
           lse->inputs[2]->op->id == MX_OP_SDPA);
    mx_array *fwd = lse->inputs[2];
    mx_array_retain(fwd);
    ASSERT(MX__PARAMS(fwd, mx__sdpa_params)->keep_lse);
    ASSERT_OK(mx_eval(g[0].items, 3));
    ASSERT_OK(mx_eval(g[1].items, 3));
    const size_t ob = (size_t)mx_array_size(fwd) * mx_dtype_size(dt);
    if (gpu) /* the output, then float32 rows (B, Hq, Tq) */
      ASSERT_MSG(fwd->buf && fwd->buf->size == mx__sdpa_lse_tail(mx_array_size(fwd), 2) +
                                                     2 * 4 * 70 * sizeof(float),
                 "forward buffer %zu bytes, output %zu", fwd->buf ? fwd->buf->size : 0, ob);
    else
      ASSERT(fwd->buf && fwd->buf->size == ob);
    for (int i = 0; i < 3; i++) {
      double e = max_err(g[0].items[i], g[1].items[i]);
      ASSERT_MSG(e == 0, "causal %d grad %d: err %g (%s)", causal[ci], i, e, mx_last_error());
    }
    mx_array_free(fwd);
    mx_list_clear(&g[0]);
    mx_list_clear(&g[1]);
    mx_array *arr[] = {q, k, v, cot};
    mx_array_free_n(arr, 4);
  }
  mx_set_default_device((mx_device)prev);
}

/* rms_norm's VJP with a 16-bit weight: the weight gradient comes out in
 * the weight's dtype from the node that sums it (no cast after it), with
 * the bits of the float32 sums cast once (MXC_RMS_DW_DTYPE=0). */
TEST(rms_norm_weight_gradient_in_the_weight_dtype) {
  const bool gpu = mx_device_available(MX_GPU);
  for (int dev = 0; dev <= gpu; dev++) {
    int prev = mx_set_default_device(dev ? MX_GPU : MX_CPU);
    const mx_dtype dts[2] = {MX_BFLOAT16, MX_FLOAT16};
    for (int di = 0; di < 2; di++) {
      mx_dtype dt = dts[di];
      mx_array *x = RND(dt, -2, 2, 3, 70, 96), *w = RND(dt, 0.5, 1.5, 96);
      mx_array *cot = RND(dt, -1, 1, 3, 70, 96);
      mx_array *in[2] = {x, w};
      fcall c = {.op = RMS, .eps = 1e-5, .has_w = true};
      mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT};
      for (int k = 0; k < 2; k++) {
        if (k) setenv("MXC_RMS_DW_DTYPE", "0", 1);
        mx_closure *f = mx_closure_new(fcall_fn, &c, NULL);
        int st = mx_vjp(f, in, 2, &cot, 1, NULL, &g[k]);
        mx_closure_free(f);
        unsetenv("MXC_RMS_DW_DTYPE");
        ASSERT_MSG(st == MX_OK, "vjp: %s", mx_last_error());
      }
      mx_array *dw = g[0].items[1], *dw1 = g[1].items[1];
      ASSERT(dw->op && dw->op->id == MX_OP_RMS_NORM_GRAD && dw->dtype == dt);
      ASSERT(dw1->op && dw1->op->id != MX_OP_RMS_NORM_GRAD); /* float32, then a cast */
      ASSERT_OK(mx_eval(g[0].items, 2));
      ASSERT_OK(mx_eval(g[1].items, 2));
      for (int i = 0; i < 2; i++)
        ASSERT_MSG(max_err(g[0].items[i], g[1].items[i]) == 0, "%s %s: grad %d differs",
                   dev ? "gpu" : "cpu", mx_dtype_name(dt), i);
      mx_list_clear(&g[0]);
      mx_list_clear(&g[1]);
      mx_array *arr[] = {x, w, cot};
      mx_array_free_n(arr, 3);
    }
    mx_set_default_device((mx_device)prev);
  }
}

/* The fused VJP forms delta inside sdpa_backward_q (delta_of_out) and
 * [dk, dv] reads it through row_dot's third input. On the CPU the rows are
 * row_dot's own (the bits of MXC_SDPA_DQ_DELTA=0); on a GPU the dq kernel
 * sums them in another order, and row_dot shares them as a view of dq's
 * buffer (no copy). */
TEST(sdpa_fused_vjp_forms_delta_in_dq) {
  const bool gpu = mx_device_available(MX_GPU);
  int prev = mx_set_default_device(gpu ? MX_GPU : MX_CPU);
  const mx_dtype dts[2] = {MX_FLOAT32, MX_BFLOAT16};
  const char *env = gpu ? NULL : "1";
  for (int di = gpu; di < 2; di++)
    for (int ci = 0; ci < 2; ci++) {
      const mx_dtype dt = dts[di];
      mx_array *q = RND(dt, -1, 1, 2, 4, 70, 64), *k = RND(dt, -1, 1, 2, 2, 90, 64);
      mx_array *v = RND(dt, -1, 1, 2, 2, 90, 64), *cot = RND(dt, -1, 1, 2, 4, 70, 64);
      mx_array *in[3] = {q, k, v};
      fcall c = {.op = SDPA, .scale = 0.125, .causal = ci == 0};
      mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT};
      bool fused[2];
      setenv("MXC_SDPA_DQ_DELTA", "0", 1);
      sdpa_vjp_with(env, &c, in, cot, &g[1], &fused[1]);
      unsetenv("MXC_SDPA_DQ_DELTA");
      sdpa_vjp_with(env, &c, in, cot, &g[0], &fused[0]);
      ASSERT(fused[0] && fused[1]);
      mx_array *rd1 = graph_find(g[1].items[1], MX_OP_ROW_DOT, 0);
      ASSERT(rd1 && rd1->ninputs == 2);
      mx_array *dq = graph_find(g[0].items[0], MX_OP_SDPA_BWD_Q, 0);
      mx_array *rd = graph_find(g[0].items[1], MX_OP_ROW_DOT, 0);
      ASSERT(dq && dq->ninputs == 6 && MX__PARAMS(dq, mx__sdpa_params)->delta_of_out);
      ASSERT(dq->inputs[5]->op && dq->inputs[5]->op->id == MX_OP_SDPA);
      ASSERT(rd && rd->ninputs == 3 && rd->inputs[2] == dq);
      ASSERT(!graph_find(g[0].items[0], MX_OP_ROW_DOT, 0)); /* dq needs no row_dot */
      mx_array_retain(dq);
      mx_array_retain(rd);
      ASSERT_OK(mx_eval(g[0].items, 3));
      ASSERT_OK(mx_eval(g[1].items, 3));
      if (gpu) /* delta shared from dq's buffer */
        ASSERT(rd->buf && rd->buf == dq->buf &&
               rd->offset * 4 == (int64_t)mx__sdpa_delta_tail(mx_array_size(dq), 2));
      for (int i = 0; i < 3; i++) {
        double e = max_err(g[0].items[i], g[1].items[i]);
        ASSERT_MSG(e >= 0 && (gpu ? e <= 2e-2 : e == 0), "%s causal %d grad %d: err %g (%s)",
                   mx_dtype_name(dt), ci == 0, i, e, mx_last_error());
      }
      mx_array_free(dq);
      mx_array_free(rd);
      mx_list_clear(&g[0]);
      mx_list_clear(&g[1]);
      mx_array *arr[] = {q, k, v, cot};
      mx_array_free_n(arr, 4);
    }
  mx_set_default_device((mx_device)prev);
}

/* sdpa(rope(q), rope(k), v), q and k given as (B, H, T, D) or as
 * (B, T, H, D) transposed to heads (attention's layout in the models) */
typedef struct {
  bool bthd, causal;
} rope_attn_cfg;

static int rope_attn_fn(void *payload, mx_array **in, int n, mx_list *out) {
  MX_UNUSED(n);
  const rope_attn_cfg *c = payload;
  const int perm[4] = {0, 2, 1, 3};
  mx_array *qh = c->bthd ? mx_transpose(in[0], perm, 4) : mx_array_retain(in[0]);
  mx_array *kh = c->bthd ? mx_transpose(in[1], perm, 4) : mx_array_retain(in[1]);
  mx_array *qr = qh ? mx_fast_rope(qh, 64, false, 10000.0, 0.5, 3, NULL) : NULL;
  mx_array *kr = kh ? mx_fast_rope(kh, 64, false, 10000.0, 0.5, 3, NULL) : NULL;
  mx_array *o = qr && kr ? mx_fast_scaled_dot_product_attention(qr, kr, in[2], 0.125, NULL,
                                                                 c->causal)
                         : NULL;
  mx_array *arr[] = {qh, kh, qr, kr};
  mx_array_free_n(arr, 4);
  return mx_list_push(out, o);
}

/* nodes of a graph that are inverse ropes (rope's VJP as a node) */
static int inverse_ropes(mx_array *a, int depth) {
  if (!a || !a->op || depth > 40) return 0;
  int n = a->op->id == MX_OP_ROPE && !MX__PARAMS(a, mx__rope_params)->forward;
  for (int i = 0; i < a->ninputs; i++) n += inverse_ropes(a->inputs[i], depth + 1);
  return n;
}

/* rope's VJPs taken by the attention backward (rope_dq, rope_dk): no rope
 * node after dq or [dk, dv], and the bits of the rope ops given dq and dk
 * (MXC_SDPA_ROPE_DQ=0), on the CPU and on a GPU (where (B, T, H, D)
 * inputs get dq stored in that order, as the rope VJP's result would
 * be). */
TEST(sdpa_dq_takes_the_rope_vjp) {
  const bool gpu = mx_device_available(MX_GPU);
  for (int dev = 0; dev <= gpu; dev++) {
    int prev = mx_set_default_device(dev ? MX_GPU : MX_CPU);
    const mx_dtype dt = dev ? MX_BFLOAT16 : MX_FLOAT32;
    for (int ci = 0; ci < 4; ci++) {
      rope_attn_cfg c = {.bthd = ci & 1, .causal = ci < 2};
      mx_array *q = c.bthd ? RND(dt, -1, 1, 2, 70, 4, 64) : RND(dt, -1, 1, 2, 4, 70, 64);
      mx_array *k = c.bthd ? RND(dt, -1, 1, 2, 90, 2, 64) : RND(dt, -1, 1, 2, 2, 90, 64);
      mx_array *v = RND(dt, -1, 1, 2, 2, 90, 64);
      mx_array *cot = RND(dt, -1, 1, 2, 4, 70, 64);
      mx_array *in[3] = {q, k, v};
      mx_list g[2] = {MX_LIST_INIT, MX_LIST_INIT};
      if (!dev) fused_env("1");
      for (int m = 0; m < 2; m++) {
        if (m) setenv("MXC_SDPA_ROPE_DQ", "0", 1);
        mx_closure *f = mx_closure_new(rope_attn_fn, &c, NULL);
        int st = mx_vjp(f, in, 3, &cot, 1, NULL, &g[m]);
        mx_closure_free(f);
        unsetenv("MXC_SDPA_ROPE_DQ");
        ASSERT_MSG(st == MX_OK, "vjp: %s", mx_last_error());
      }
      fused_env(NULL);
      mx_array *dq = graph_find(g[0].items[0], MX_OP_SDPA_BWD_Q, 0);
      mx_array *dkv = graph_find(g[0].items[1], MX_OP_SDPA_BWD_KV, 0);
      ASSERT(dq && MX__PARAMS(dq, mx__sdpa_params)->rope_dq);
      ASSERT(dkv && MX__PARAMS(dkv, mx__sdpa_params)->rope_dk);
      for (int i = 0; i < 2; i++) {
        ASSERT_EQ_INT(inverse_ropes(g[0].items[i], 0), 0);
        ASSERT_EQ_INT(inverse_ropes(g[1].items[i], 0), 1);
      }
      mx_array_retain(dq);
      ASSERT_OK(mx_eval(g[0].items, 3));
      ASSERT_OK(mx_eval(g[1].items, 3));
      if (dev && c.bthd) /* stored (B, T, H, D): the transpose back is a view */
        ASSERT(dq->strides[1] == 64 && dq->strides[2] == 4 * 64);
      for (int i = 0; i < 3; i++) {
        double e = max_err(g[0].items[i], g[1].items[i]);
        ASSERT_MSG(e == 0, "%s case %d grad %d: err %g (%s)", dev ? "gpu" : "cpu", ci, i, e,
                   mx_last_error());
      }
      mx_array_free(dq);
      mx_list_clear(&g[0]);
      mx_list_clear(&g[1]);
      mx_array *arr[] = {q, k, v, cot};
      mx_array_free_n(arr, 4);
    }
    mx_set_default_device((mx_device)prev);
  }
}

/* sdpa_backward_q given out (delta_of_out) equals it given delta =
 * row_dot(dout, out) in float32, bit for bit on the CPU; errors name what
 * is wrong. */
TEST(sdpa_backward_q_given_out_equals_given_delta) {
  const mx_dtype dts[3] = {MX_FLOAT32, MX_FLOAT64, MX_BFLOAT16};
  for (int di = 0; di < 3; di++) {
    const mx_dtype dt = dts[di];
    mx_array *q = RND(dt, -1, 1, 1, 4, 33, 16), *k = RND(dt, -1, 1, 1, 2, 40, 16);
    mx_array *v = RND(dt, -1, 1, 1, 2, 40, 16), *dout = RND(dt, -1, 1, 1, 4, 33, 16);
    mx_array *o = RND(dt, -1, 1, 1, 4, 33, 16);
    mx_array *lse = mx__fast_sdpa_lse(q, k, 0.25, true);
    mx_array *rd = mx__fast_row_dot(dout, o), *delta = mx_astype(rd, MX_FLOAT32);
    mx_array *a = mx__fast_sdpa_bwd_q(q, k, v, dout, lse, delta, 0.25, true);
    mx_array *b = mx__fast_sdpa_bwd_q_delta(q, k, v, dout, lse, o, 0.25, true);
    ASSERT_MSG(a && b, "build: %s", mx_last_error());
    mx_array *rb = mx__fast_row_dot_of(dout, o, b);
    ASSERT_MSG(rb, "build: %s", mx_last_error());
    double e = max_err(a, b), e2 = max_err(rd, rb);
    ASSERT_MSG(e == 0 && e2 == 0, "%s: dq err %g, delta err %g (%s)", mx_dtype_name(dt), e, e2,
               mx_last_error());
    if (di == 0) {
      mx_array *o3 = RND(dt, -1, 1, 1, 4, 33, 8), *ob = RND(MX_BFLOAT16, -1, 1, 1, 4, 33, 16);
      expect_error(mx__fast_sdpa_bwd_q_delta(q, k, v, dout, lse, o3, 1, true), MX_ERR_SHAPE,
                   "out of shape");
      expect_error(mx__fast_sdpa_bwd_q_delta(q, k, v, dout, lse, ob, 1, true), MX_ERR_DTYPE,
                   "q's dtype");
      expect_error(mx__fast_row_dot_of(dout, o, a), MX_ERR_INVALID_ARG, "third input");
      expect_error(mx__fast_row_dot_of(o, dout, b), MX_ERR_INVALID_ARG, "third input");
      mx_array *arr2[] = {o3, ob};
      mx_array_free_n(arr2, 2);
    }
    mx_array *arr[] = {q, k, v, dout, o, lse, rd, delta, a, b, rb};
    mx_array_free_n(arr, 11);
  }
}

/* The fused VJP called directly: gradients against central differences
 * (float64 inputs, computed in float32 by the fused ops), and only the
 * requested gradients built. */
TEST(sdpa_fused_vjp_matches_finite_differences) {
  const bwd_cfg cs[] = {
      {1, 2, 2, 3, 4, 4, false, false},
      {1, 4, 2, 3, 5, 4, true, false}, /* GQA, causal, Tq < Tk */
      {2, 2, 1, 4, 4, 3, true, true},
  };
  fused_env("1");
  for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
    mx_array *in[3];
    bwd_qk(&cs[i], MX_FLOAT64, &in[0], &in[1]);
    in[2] = RND(MX_FLOAT64, -1, 1, cs[i].B, cs[i].Hkv, cs[i].Tk, cs[i].D);
    for (int j = 0; j < 2; j++) { /* check_vjp_fd wants the inputs themselves */
      mx_array *cj = mx_contiguous(in[j]);
      mx_array_free(in[j]);
      in[j] = cj;
    }
    fcall c = {.op = SDPA, .scale = 0.8, .causal = cs[i].causal};
    char what[64];
    snprintf(what, sizeof what, "fused sdpa case %d", (int)i);
    check_vjp_fd_tol(&c, in, what, 2e-5);
    mx_array_free_n(in, 3);
  }
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8), *k = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8);
  mx_array *y = mx_fast_scaled_dot_product_attention(q, k, k, 0.5, NULL, true);
  mx_array *cot = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8);
  ASSERT_NOT_NULL(y);
  for (int w = 0; w < 3; w++) {
    mx_array *g[3] = {0};
    bool need[3] = {w == 0, w == 1, w == 2};
    ASSERT_OK(y->op->vjp(y, cot, g, need));
    for (int i = 0; i < 3; i++) ASSERT((g[i] != NULL) == need[i]);
    ASSERT(graph_has_op(g[w], w == 0 ? MX_OP_SDPA_BWD_Q : MX_OP_SDPA_BWD_KV, 0));
    ASSERT(!graph_has_op(g[w], w == 0 ? MX_OP_SDPA_BWD_KV : MX_OP_SDPA_BWD_Q, 0));
    mx_array_free_n(g, 3);
  }
  fused_env(NULL);
  mx_array *arr[] = {q, k, y, cot};
  mx_array_free_n(arr, 4);
}

/* Second order through the fused backward is a clear error, not a crash. */
TEST(sdpa_fused_vjp_second_order_is_an_error) {
  mx_array *q = RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8), *k = RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8);
  mx_array *in[3] = {q, k, k};
  mx_array *tan[3] = {RND(MX_FLOAT32, -1, 1, 1, 2, 3, 8), RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8),
                      RND(MX_FLOAT32, -1, 1, 1, 2, 5, 8)};
  fcall c = {.op = SDPA, .scale = 0.5, .causal = true};
  mx_list jv = MX_LIST_INIT;
  fused_env("1");
  mx_closure *f = mx_closure_new(fcall_fn, &c, NULL);
  int st = mx_jvp(f, in, 3, tan, 3, NULL, &jv);
  fused_env(NULL);
  ASSERT_EQ_INT(st, MX_ERR_UNSUPPORTED);
  ASSERT_MSG(strstr(mx_last_error(), "MXC_SDPA_FUSED_BWD=0"), "message: %s", mx_last_error());
  ASSERT_EQ_INT(jv.size, 0);
  mx_clear_error();
  fused_env("0"); /* the opt-out: the composed backward is differentiable */
  st = mx_jvp(f, in, 3, tan, 3, NULL, &jv);
  fused_env(NULL);
  ASSERT_MSG(st == MX_OK, "%s", mx_last_error());
  mx_list_clear(&jv);
  mx_closure_free(f);
  mx_array *arr[] = {q, k};
  mx_array_free_n(arr, 2);
  mx_array_free_n(tan, 3);
}

/* ---- a decode step's fused ops (add_rms_norm, rope_kv) ------------------------------ */

/* add_rms_norm and rope_kv on `dev` against the ops they replace: the same
 * bits on the GPU (a replayed decode step must give the step-by-step ids)
 * and on the CPU for add_rms_norm; the CPU's rope_kv within rounding (the
 * CPU rope takes its angles from a table). The caches hold the rotated
 * keys and the values at pos and nothing else changes. */
static void decode_fused_on(mx_device dev, mx_dtype dt) {
  int prev = mx_set_default_device(dev);
  mx_array *x = RND(dt, -2, 2, 2, 3, 64), *r = RND(dt, -2, 2, 2, 3, 64);
  mx_array *w = RND(dt, 0.5, 1.5, 64);
  mx_array *z = mx__fast_add_rms_norm(x, r, w, 1e-5);
  mx_array *h = mx_add(x, r), *n = mx_fast_rms_norm(h, w, 1e-5);
  mx_array *s0 = mx_slice_axis(z, 0, 0, 1, 1), *s1 = mx_slice_axis(z, 0, 1, 2, 1);
  mx_array *z0 = mx_reshape(s0, (int64_t[]){2, 3, 64}, 3), *z1 = mx_reshape(s1, (int64_t[]){2, 3, 64}, 3);
  const char *dn = dev == MX_GPU ? "gpu" : "cpu";
  ASSERT_MSG(max_err(z0, h) == 0, "%s %s: add_rms_norm h", dn, mx_dtype_name(dt));
  ASSERT_MSG(max_err(z1, n) == 0, "%s %s: add_rms_norm norm err %g", dn, mx_dtype_name(dt),
             max_err(z1, n));
  /* rope_kv: H = 4 query heads, KV = 2, D = 16, cache of 8, pos 5 */
  const int64_t H = 4, KV = 2, D = 16, S = 8;
  int32_t at = 5;
  mx_array *flat = RND(dt, -2, 2, 1, 1, (H + 2 * KV) * D);
  mx_array *r4 = mx_reshape(flat, (int64_t[]){1, 1, H + 2 * KV, D}, 4);
  mx_array *hx = mx_transpose(r4, (int[]){0, 2, 1, 3}, 4);
  mx_array *kc = mx_zeros((int64_t[]){1, KV, S, D}, 4, dt), *vc = mx_zeros((int64_t[]){1, KV, S, D}, 4, dt);
  mx_array *pos = mx_array_from_data(&at, (int64_t[]){1}, 1, MX_INT32);
  ASSERT_OK(mx_array_eval(kc));
  ASSERT_OK(mx_array_eval(vc));
  mx_array *q = mx__fast_rope_kv(hx, H, KV, kc, vc, D, false, 10000, 1.0, pos, NULL);
  ASSERT_MSG(q, "rope_kv: %s", mx_last_error());
  ASSERT_OK(mx_array_eval(q));
  mx_array *hq = mx_slice_axis(hx, 1, 0, H, 1), *hk = mx_slice_axis(hx, 1, H, H + KV, 1);
  mx_array *hv = mx_slice_axis(hx, 1, H + KV, H + 2 * KV, 1);
  mx_array *rq = mx__fast_rope_at(hq, (int)D, false, 10000, 1.0, pos, NULL);
  mx_array *rk = mx__fast_rope_at(hk, (int)D, false, 10000, 1.0, pos, NULL);
  mx_array *kat = mx_slice_axis(kc, 2, at, at + 1, 1), *vat = mx_slice_axis(vc, 2, at, at + 1, 1);
  double tol = dev == MX_GPU ? 0 : tol_of(dt);
  double eq = max_err(q, rq), ek = max_err(kat, rk), ev = max_err(vat, hv);
  ASSERT_MSG(eq >= 0 && eq <= tol && ek >= 0 && ek <= tol && ev == 0,
             "%s %s: rope_kv q %g k %g v %g", dn, mx_dtype_name(dt), eq, ek, ev);
  /* the other positions are untouched (zero) */
  mx_array *a1 = mx_abs(kc), *a2 = mx_abs(vc), *a3 = mx_abs(kat), *a4 = mx_abs(vat);
  mx_array *ks = mx_sum(a1, NULL, 0, false), *vs = mx_sum(a2, NULL, 0, false);
  mx_array *ka = mx_sum(a3, NULL, 0, false), *va = mx_sum(a4, NULL, 0, false);
  ASSERT(max_err(ks, ka) <= 1e-2 && max_err(vs, va) <= 1e-2);
  mx_set_default_device((mx_device)prev);
  mx_array *arr[] = {x,  r,  w,  z,  h,  n,  s0, s1, z0, z1, flat, r4, hx, kc, vc, pos, q,
                     hq, hk, hv, rq, rk, kat, vat, a1, a2, a3, a4, ks, vs, ka, va};
  mx_array_free_n(arr, 32);
}

TEST(decode_fused_ops_equal_the_separate_ops) {
  mx_dtype dts[] = {MX_FLOAT32, MX_BFLOAT16, MX_FLOAT16};
  for (int i = 0; i < 3; i++) {
    decode_fused_on(MX_CPU, dts[i]);
    if (mx_device_available(MX_GPU)) decode_fused_on(MX_GPU, dts[i]);
  }
}

TEST(decode_fused_ops_errors) {
  mx_array *x = RND(MX_FLOAT32, -1, 1, 2, 8), *r = RND(MX_FLOAT32, -1, 1, 2, 7);
  mx_array *w = RND(MX_FLOAT32, -1, 1, 8), *w7 = RND(MX_FLOAT32, -1, 1, 7);
  expect_error(mx__fast_add_rms_norm(x, r, w, 1e-5), MX_ERR_SHAPE, "add_rms_norm: residual");
  expect_error(mx__fast_add_rms_norm(x, x, w7, 1e-5), MX_ERR_SHAPE, "add_rms_norm: weight");
  int32_t at = 0;
  mx_array *pos = mx_array_from_data(&at, (int64_t[]){1}, 1, MX_INT32);
  mx_array *hx = RND(MX_FLOAT32, -1, 1, 1, 6, 1, 8);
  mx_array *kc = mx_zeros((int64_t[]){1, 2, 4, 8}, 4, MX_FLOAT32);
  expect_error(mx__fast_rope_kv(hx, 2, 2, kc, kc, 8, false, 1e4, 1, pos, NULL),
               MX_ERR_INVALID_ARG, "evaluated");
  ASSERT_OK(mx_array_eval(kc));
  expect_error(mx__fast_rope_kv(hx, 4, 2, kc, kc, 8, false, 1e4, 1, pos, NULL), MX_ERR_SHAPE,
               "rope_kv: x");
  mx_array *k16 = mx_astype(kc, MX_FLOAT16);
  ASSERT_OK(mx_array_eval(k16));
  expect_error(mx__fast_rope_kv(hx, 2, 2, kc, k16, 8, false, 1e4, 1, pos, NULL), MX_ERR_SHAPE,
               "value cache");
  expect_error(mx__fast_rope_kv(hx, 2, 2, kc, kc, 8, false, 1e4, 1, w, NULL), MX_ERR_INVALID_ARG,
               "position");
  /* rope_sdpa: the same checks, and query heads a multiple of the kv heads */
  expect_error(mx__fast_rope_sdpa(hx, 4, 2, kc, kc, 8, false, 1e4, 1, pos, NULL, 0.3),
               MX_ERR_SHAPE, "rope_sdpa: x");
  expect_error(mx__fast_rope_sdpa(hx, 2, 2, kc, k16, 8, false, 1e4, 1, pos, NULL, 0.3),
               MX_ERR_SHAPE, "rope_sdpa: value cache");
  expect_error(mx__fast_rope_sdpa(hx, 2, 2, kc, kc, 8, false, 1e4, 1, w, NULL, 0.3),
               MX_ERR_INVALID_ARG, "position");
  mx_array *hx7 = RND(MX_FLOAT32, -1, 1, 1, 7, 1, 8);
  expect_error(mx__fast_rope_sdpa(hx7, 3, 2, kc, kc, 8, false, 1e4, 1, pos, NULL, 0.3),
               MX_ERR_SHAPE, "not a multiple");
  mx_array_free(hx7);
  /* add_norm_linear: residual, norm weight, projection shapes */
  mx_array *W = RND(MX_FLOAT32, -1, 1, 6, 8), *W7 = RND(MX_FLOAT32, -1, 1, 6, 7);
  mx_array *W5 = RND(MX_FLOAT32, -1, 1, 5, 8), *e0 = RND(MX_FLOAT32, -1, 1, 2, 0);
  expect_error(mx__fast_add_norm_linear(x, r, w, W, 1e-5, false), MX_ERR_SHAPE,
               "add_norm_linear: residual");
  expect_error(mx__fast_add_norm_linear(x, x, w7, W, 1e-5, false), MX_ERR_SHAPE,
               "add_norm_linear: weight");
  expect_error(mx__fast_add_norm_linear(x, x, w, W7, 1e-5, false), MX_ERR_SHAPE,
               "add_norm_linear: w");
  expect_error(mx__fast_add_norm_linear(x, x, w, W5, 1e-5, true), MX_ERR_SHAPE, "2 I");
  expect_error(mx__fast_add_norm_linear(e0, e0, w, W, 1e-5, false), MX_ERR_SHAPE,
               "add_norm_linear: weight");
  mx_array *w0 = mx_zeros((int64_t[]){0}, 1, MX_FLOAT32);
  mx_array *W0 = mx_zeros((int64_t[]){6, 0}, 2, MX_FLOAT32);
  expect_error(mx__fast_add_norm_linear(e0, e0, w0, W0, 1e-5, false), MX_ERR_SHAPE, "empty rows");
  /* the quantized form: the packed format, then the same shapes */
  mx_array *Wf = RND(MX_FLOAT32, -1, 1, 6, 64), *x64 = RND(MX_FLOAT32, -1, 1, 2, 64);
  mx_array *w64 = RND(MX_FLOAT32, -1, 1, 64), *wq = NULL, *wsc = NULL, *wbi = NULL;
  ASSERT_OK(mx_quantize(Wf, 32, 4, &wq, &wsc, &wbi));
  expect_error(mx__fast_add_norm_qlinear(x64, x64, w64, wq, wsc, wbi, 64, 4, 1e-5, false),
               MX_ERR_SHAPE, "add_norm_linear: packed weights");
  expect_error(mx__fast_add_norm_qlinear(x64, x64, w64, wq, wsc, wbi, 32, 7, 1e-5, false),
               MX_ERR_INVALID_ARG, "bits");
  expect_error(mx__fast_add_norm_qlinear(x64, x64, w64, wsc, wsc, wbi, 32, 4, 1e-5, false),
               MX_ERR_DTYPE, "uint32");
  expect_error(mx__fast_add_norm_qlinear(x, x, w, wq, wsc, wbi, 32, 4, 1e-5, false), MX_ERR_SHAPE,
               "add_norm_linear: dequantized w");
  expect_error(mx__fast_add_norm_qlinear(x64, x, w64, wq, wsc, wbi, 32, 4, 1e-5, false),
               MX_ERR_SHAPE, "add_norm_linear: residual");
  mx_array *q1 = mx__fast_add_norm_qlinear(x64, x64, w64, wq, wsc, wbi, 32, 4, 1e-5, true);
  ASSERT_NOT_NULL(q1);
  ASSERT(mx_array_ndim(q1) == 2 && mx_array_dim(q1, 1) == 64 + 3);
  mx_array *qarr[] = {Wf, x64, w64, wq, wsc, wbi, q1};
  mx_array_free_n(qarr, 7);
  mx_array *ok = mx__fast_add_norm_linear(x, x, w, W, 1e-5, true);
  ASSERT_NOT_NULL(ok);
  ASSERT(mx_array_ndim(ok) == 2 && mx_array_dim(ok, 0) == 2 && mx_array_dim(ok, 1) == 8 + 3);
  mx_array *arr[] = {x, r, w, w7, pos, hx, kc, k16, W, W7, W5, e0, w0, W0, ok};
  mx_array_free_n(arr, 15);
}

int main(int argc, char **argv) { return test_main(argc, argv); }

/* softmax_cross_entropy (internal): targets outside [0, V) give NaN rows on
 * every backend, never an error or a read out of bounds; bad inputs are
 * errors at build time */
static void ce_nan_on(mx_device dev) {
  int prev = mx_set_default_device(dev);
  mx_array *x = RND(MX_BFLOAT16, -2, 2, 3, 40);
  int32_t tv[3] = {5, 40, -1};
  mx_array *t = mx_array_from_data(tv, (int64_t[]){3}, 1, MX_INT32);
  mx_array *c = mx_ones((int64_t[]){3}, 1, MX_FLOAT32);
  mx_array *l = mx__fast_softmax_ce(x, t), *g = mx__fast_softmax_ce_grad(x, t, c);
  mx_array *gf = g ? mx_astype(g, MX_FLOAT32) : NULL;
  ASSERT_OK(mx_eval((mx_array *[]){l, gf}, 2));
  ASSERT(mx_array_dtype(l) == MX_FLOAT32 && mx_array_dtype(g) == MX_BFLOAT16);
  const float *lv = mx_array_data(l), *gv = mx_array_data(gf);
  ASSERT(isfinite(lv[0]) && lv[0] > 0 && isnan(lv[1]) && isnan(lv[2]));
  double sum = 0; /* a valid row's gradient sums to ~0: softmax - onehot */
  for (int j = 0; j < 40; j++) sum += gv[j];
  ASSERT_MSG(fabs(sum) < 0.05, "gradient row sum %g", sum);
  ASSERT(isnan(gv[40]) && isnan(gv[80 + 7]));
  mx_array_free_n((mx_array *[]){x, t, c, l, g, gf}, 6);
  mx_set_default_device((mx_device)prev);
}

TEST(softmax_ce_bad_targets_and_inputs) {
  ce_nan_on(MX_CPU);
  if (mx_device_available(MX_GPU)) ce_nan_on(MX_GPU);
  mx_array *x = RND(MX_FLOAT32, -1, 1, 2, 5), *xi = mx_zeros((int64_t[]){2, 5}, 2, MX_INT32);
  mx_array *t = mx_zeros((int64_t[]){2}, 1, MX_INT32), *t3 = mx_zeros((int64_t[]){3}, 1, MX_INT32);
  mx_array *tf = mx_zeros((int64_t[]){2}, 1, MX_FLOAT32);
  expect_error(mx__fast_softmax_ce(xi, t), MX_ERR_DTYPE, "logits must be a float");
  expect_error(mx__fast_softmax_ce(x, tf), MX_ERR_DTYPE, "targets must be integers");
  expect_error(mx__fast_softmax_ce(x, t3), MX_ERR_SHAPE, "do not match");
  expect_error(mx__fast_softmax_ce_grad(x, t, t3), MX_ERR_SHAPE, "cotangent");
  mx_array_free_n((mx_array *[]){x, xi, t, t3, tf}, 5);
}

/* row_dot (internal): float32 sums of 16-bit products (not rounded to the
 * inputs' dtype), the same on every backend; bad inputs are errors */
TEST(row_dot_f32_sums_and_errors) {
  for (int dv = 0; dv < 2; dv++) {
    if (dv && !mx_device_available(MX_GPU)) break;
    int prev = mx_set_default_device(dv ? MX_GPU : MX_CPU);
    /* 256 products of 1 + 2^-7 (exact in bf16): each product needs more
     * than bf16's 8 bits, so any rounding to bf16 on the way shows */
    mx_array *a = mx_full((int64_t[]){3, 256}, 2, 1.0 + 1.0 / 128, MX_BFLOAT16);
    mx_array *r = mx__fast_row_dot(a, a);
    ASSERT_OK(mx_array_eval(r));
    ASSERT(mx_array_dtype(r) == MX_FLOAT32 && mx_array_ndim(r) == 1);
    const float *rv = mx_array_data(r);
    const double want = 256.0 * (1.0 + 1.0 / 128) * (1.0 + 1.0 / 128);
    for (int i = 0; i < 3; i++) ASSERT_MSG(fabs(rv[i] - want) < 1e-3, "row %d: %g, want %g", i, rv[i], want);
    mx_array_free_n((mx_array *[]){a, r}, 2);
    mx_set_default_device((mx_device)prev);
  }
  mx_array *x = RND(MX_FLOAT32, -1, 1, 2, 5), *xb = RND(MX_BFLOAT16, -1, 1, 2, 5);
  mx_array *xi = mx_zeros((int64_t[]){2, 5}, 2, MX_INT32), *x3 = RND(MX_FLOAT32, -1, 1, 2, 4);
  mx_array *s = mx_array_scalar(1.0, MX_FLOAT32);
  expect_error(mx__fast_row_dot(x, xb), MX_ERR_DTYPE, "one float dtype");
  expect_error(mx__fast_row_dot(xi, xi), MX_ERR_DTYPE, "one float dtype");
  expect_error(mx__fast_row_dot(x, x3), MX_ERR_SHAPE, "one shape");
  expect_error(mx__fast_row_dot(s, s), MX_ERR_SHAPE, "at least one axis");
  mx_array_free_n((mx_array *[]){x, xb, xi, x3, s}, 5);
}
