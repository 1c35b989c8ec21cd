/* test_quantized.c — affine quantization (MLX's format): bit-exact packing
 * against hand-computed words and a NumPy golden file
 * (tests/gen/gen_quant_golden.py), round-trip error bounds per bits,
 * quantized_matmul against matmul of the dequantized weight (both layouts,
 * decode, few-rows and GEMM paths, every group size, bfloat16/float16
 * scales, any thread count), gradients and errors. */
#include <math.h>

#include "mxc/mxc.h"
#include "test.h"

#ifndef MXC_SOURCE_DIR
#define MXC_SOURCE_DIR "."
#endif

static mx_array *from_f32(const float *v, int64_t r, int64_t c) {
  return mx_array_from_data(v, (int64_t[]){r, c}, 2, MX_FLOAT32);
}

static void read_u32(mx_array *a, uint32_t *dst, int64_t n) {
  ASSERT_EQ_INT(mx_array_size(a), n);
  ASSERT_OK(mx_array_copy_to(a, MX_UINT32, dst, n));
}

/* ---- packing layout, hand-computed -------------------------------------------- */

TEST(packing_4bit_hand_computed) {
  /* w = j % 16: min 0, max 15 -> scale -1, bias 15, q = 15 - w */
  float w[32];
  for (int j = 0; j < 32; j++) w[j] = (float)(j % 16);
  mx_array *a = from_f32(w, 1, 32), *wq, *s, *b;
  ASSERT_OK(mx_quantize(a, 32, 4, &wq, &s, &b));
  uint32_t words[4];
  read_u32(wq, words, 4);
  ASSERT_EQ_INT(words[0], 0x89ABCDEFu); /* q0 = 15 in the low nibble */
  ASSERT_EQ_INT(words[1], 0x01234567u);
  ASSERT_EQ_INT(words[2], 0x89ABCDEFu);
  ASSERT_EQ_INT(words[3], 0x01234567u);
  float sv, bv;
  ASSERT_OK(mx_array_copy_to(s, MX_FLOAT32, &sv, 1));
  ASSERT_OK(mx_array_copy_to(b, MX_FLOAT32, &bv, 1));
  ASSERT_NEAR(sv, -1.0, 0);
  ASSERT_NEAR(bv, 15.0, 0);
  mx_array_free_n((mx_array *[]){a, wq, s, b}, 4);
}

TEST(packing_3bit_straddles_words) {
  /* w = j % 8 -> q = 7 - w: 8 values = one 24-bit chunk 0x053977 repeated;
   * 4 chunks = 96 bits = 3 words */
  float w[32];
  for (int j = 0; j < 32; j++) w[j] = (float)(j % 8);
  mx_array *a = from_f32(w, 1, 32), *wq, *s, *b;
  ASSERT_OK(mx_quantize(a, 32, 3, &wq, &s, &b));
  uint32_t words[3];
  read_u32(wq, words, 3);
  ASSERT_EQ_INT(words[0], 0x77053977u);
  ASSERT_EQ_INT(words[1], 0x39770539u);
  ASSERT_EQ_INT(words[2], 0x05397705u);
  /* and back */
  mx_array *d = mx_dequantize(wq, s, b, 32, 3);
  float back[32];
  ASSERT_OK(mx_array_copy_to(d, MX_FLOAT32, back, 32));
  for (int j = 0; j < 32; j++) ASSERT_NEAR(back[j], w[j], 0);
  mx_array_free_n((mx_array *[]){a, wq, s, b, d}, 5);
}

TEST(packing_8bit_and_6bit_hand_computed) {
  /* 8-bit: w = {0, 255, 1, 2, ...} -> scale -1, bias 255, q = 255 - w */
  float w[32];
  for (int j = 0; j < 32; j++) w[j] = j == 0 ? 0.0f : j == 1 ? 255.0f : (float)(j - 1);
  mx_array *a = from_f32(w, 1, 32), *wq, *s, *b;
  ASSERT_OK(mx_quantize(a, 32, 8, &wq, &s, &b));
  uint32_t words[8];
  read_u32(wq, words, 8);
  ASSERT_EQ_INT(words[0], 0xFDFE00FFu);
  mx_array_free_n((mx_array *[]){a, wq, s, b}, 4);
  /* 6-bit: w = {0, 63, 0, 63, ...}: q alternates 63, 0 (6 bits each): the
   * stream repeats 0b000000111111 every 12 bits */
  for (int j = 0; j < 32; j++) w[j] = (j & 1) ? 63.0f : 0.0f;
  a = from_f32(w, 1, 32);
  ASSERT_OK(mx_quantize(a, 32, 6, &wq, &s, &b));
  uint32_t w6[6];
  read_u32(wq, w6, 6);
  /* bits 0-5 set, 12-17 set, 24-29 set; word 1 continues at bit 32: value
   * 5 (q=0) spans bits 30-35, value 6 (63) bits 36-41 -> word1 bits 4-9 */
  ASSERT_EQ_INT(w6[0], 0x3F03F03Fu);
  ASSERT_EQ_INT(w6[1] & 0x3FFu, 0x3F0u);
  mx_array_free_n((mx_array *[]){a, wq, s, b}, 4);
}

/* ---- golden file (NumPy implementation of MLX's algorithm) ---------------------- */

static void check_equal_bits(mx_array *got, mx_array *want, const char *key) {
  ASSERT_MSG(got && want, "%s: missing (%s)", key, mx_last_error());
  ASSERT_MSG(mx_array_dtype(got) == mx_array_dtype(want), "%s: dtype %s vs %s", key,
             mx_dtype_name(mx_array_dtype(got)), mx_dtype_name(mx_array_dtype(want)));
  int64_t n = mx_array_size(want);
  ASSERT_EQ_INT(mx_array_size(got), n);
  size_t es = mx_dtype_size(mx_array_dtype(want));
  char *g = malloc((size_t)n * es + 1), *w = malloc((size_t)n * es + 1);
  mx_array_copy_to(got, mx_array_dtype(got), g, n);
  mx_array_copy_to(want, mx_array_dtype(want), w, n);
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; i++)
    if (memcmp(g + i * es, w + i * es, es)) bad = i;
  double gv = 0, wv = 0;
  if (bad >= 0) {
    double *t = malloc(sizeof(double) * (size_t)n);
    mx_array_copy_to(got, MX_FLOAT64, t, n);
    gv = t[bad];
    mx_array_copy_to(want, MX_FLOAT64, t, n);
    wv = t[bad];
    free(t);
  }
  free(g);
  free(w);
  ASSERT_MSG(bad < 0, "%s: element %lld differs: got %.9g, expected %.9g", key, (long long)bad,
             gv, wv);
}

TEST(golden_numpy_bit_exact) {
  mx_map *m = NULL;
  ASSERT_OK(mx_load(MXC_SOURCE_DIR "/tests/fixtures/quant/quant_golden.npz", &m, NULL));
  mx_array *w = mx_map_get(m, "w");
  ASSERT_NOT_NULL(w);
  int bitss[] = {2, 3, 4, 5, 6, 8}, gss[] = {32, 64, 128}, checked = 0;
  char key[64];
  for (int bi = 0; bi < 6; bi++)
    for (int gi = 0; gi < 3; gi++) {
      mx_array *r[3];
      ASSERT_OK(mx_quantize(w, gss[gi], bitss[bi], &r[0], &r[1], &r[2]));
      const char *names[3] = {"wq", "scales", "biases"};
      for (int k = 0; k < 3; k++) {
        snprintf(key, sizeof key, "b%d_g%d_%s", bitss[bi], gss[gi], names[k]);
        check_equal_bits(r[k], mx_map_get(m, key), key);
        checked++;
      }
      mx_array_free_n(r, 3);
    }
  /* float16 input: scales and biases in float16 */
  mx_array *r[3];
  ASSERT_OK(mx_quantize(mx_map_get(m, "w16"), 64, 4, &r[0], &r[1], &r[2]));
  check_equal_bits(r[0], mx_map_get(m, "f16_b4_g64_wq"), "f16_b4_g64_wq");
  check_equal_bits(r[1], mx_map_get(m, "f16_b4_g64_scales"), "f16_b4_g64_scales");
  check_equal_bits(r[2], mx_map_get(m, "f16_b4_g64_biases"), "f16_b4_g64_biases");
  mx_array_free_n(r, 3);
  ASSERT_EQ_INT(checked, 54);
  mx_map_free(m);
}

/* ---- round trip ---------------------------------------------------------------------- */

TEST(round_trip_error_bounds_per_bits) {
  mx_array *key = mx_random_key(7);
  mx_array *w = mx_random_normal((int64_t[]){64, 512}, 2, MX_FLOAT32, 0, 1, key);
  int bitss[] = {2, 3, 4, 5, 6, 8};
  double prev_err = INFINITY;
  for (int bi = 0; bi < 6; bi++) {
    int bits = bitss[bi], gs = 64;
    mx_array *wq, *s, *b;
    ASSERT_OK(mx_quantize(w, gs, bits, &wq, &s, &b));
    mx_array *d = mx_dequantize(wq, s, b, gs, bits);
    ASSERT_NOT_NULL(d);
    float *wv = malloc(sizeof(float) * 64 * 512), *dv = malloc(sizeof(float) * 64 * 512);
    float sv[64 * 8], bv[64 * 8];
    ASSERT_OK(mx_array_copy_to(w, MX_FLOAT32, wv, 64 * 512));
    ASSERT_OK(mx_array_copy_to(d, MX_FLOAT32, dv, 64 * 512));
    ASSERT_OK(mx_array_copy_to(s, MX_FLOAT32, sv, 64 * 8));
    ASSERT_OK(mx_array_copy_to(b, MX_FLOAT32, bv, 64 * 8));
    double mean_err = 0;
    for (int i = 0; i < 64 * 512; i++) {
      double e = fabs((double)wv[i] - dv[i]);
      double bound = fabs(sv[i / gs]) * 0.5 * (1 + 1e-5) + 1e-6;
      /* MLX moves the scale so that the edge value (the larger magnitude
       * end) is exact; values beyond the other end are clipped to q = 0 or
       * q = 2^bits - 1 */
      double lo = bv[i / gs], hi = (double)bv[i / gs] + (double)sv[i / gs] * ((1 << bits) - 1);
      bool clipped = fabs(dv[i] - lo) < 1e-5 || fabs(dv[i] - hi) < 1e-5;
      if (e > bound && !clipped) {
        free(wv);
        free(dv);
        TEST_FAIL("bits %d: element %d error %g > half a step %g", bits, i, e, bound);
      }
      mean_err += e;
    }
    mean_err /= 64 * 512;
    printf("    bits %d: mean |w - dequantize(quantize(w))| = %.3g\n", bits, mean_err);
    ASSERT(mean_err < prev_err * 0.75);
    prev_err = mean_err;
    free(wv);
    free(dv);
    mx_array_free_n((mx_array *[]){wq, s, b, d}, 4);
  }
  mx_array_free(w);
  mx_array_free(key);
}

/* ---- quantized_matmul vs matmul of the dequantized weight ------------------------------- */

static double max_rel_diff(mx_array *a, mx_array *b) {
  int64_t n = mx_array_size(a);
  double *x = malloc(sizeof(double) * (size_t)n), *y = malloc(sizeof(double) * (size_t)n);
  mx_array_copy_to(a, MX_FLOAT64, x, n);
  mx_array_copy_to(b, MX_FLOAT64, y, n);
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i] - y[i]) / (1 + fabs(y[i])));
  free(x);
  free(y);
  return m;
}

static void qmm_check(int64_t M, int64_t N, int64_t K, int gs, int bits, bool transpose) {
  uint64_t seed = (uint64_t)(M * 131 + N * 7 + bits);
  mx_array *key = NULL, *k2[2] = {mx_random_key(seed), mx_random_key(seed + 1)};
  int64_t wshape[2] = {transpose ? N : K, transpose ? K : N};
  mx_array *w = mx_random_normal(wshape, 2, MX_FLOAT32, 0, 0.05, k2[0]);
  mx_array *x = mx_random_normal((int64_t[]){M, K}, 2, MX_FLOAT32, 0, 1, k2[1]);
  mx_array *wq, *s, *b;
  ASSERT_OK(mx_quantize(w, gs, bits, &wq, &s, &b));
  mx_array *d = mx_dequantize(wq, s, b, gs, bits);
  mx_array *dt = transpose ? mx_transpose(d, NULL, 0) : mx_array_retain(d);
  mx_array *want = mx_matmul(x, dt);
  mx_array *got = mx_quantized_matmul(x, wq, s, b, transpose, gs, bits);
  ASSERT_NOT_NULL(got);
  ASSERT_OK(mx_array_eval(want));
  ASSERT_OK(mx_array_eval(got));
  double e = max_rel_diff(got, want);
  ASSERT_MSG(e < 1e-4, "M=%lld N=%lld K=%lld gs=%d bits=%d transpose=%d: rel diff %g",
             (long long)M, (long long)N, (long long)K, gs, bits, transpose, e);
  /* the same bits with one thread */
  int nt = mx_get_num_threads();
  mx_set_num_threads(1);
  mx_array *got1 = mx_quantized_matmul(x, wq, s, b, transpose, gs, bits);
  ASSERT_OK(mx_array_eval(got1));
  mx_set_num_threads(nt);
  ASSERT_MSG(max_rel_diff(got1, got) == 0, "result depends on the thread count");
  mx_array_free_n((mx_array *[]){key, k2[0], k2[1], w, x, wq, s, b, d, dt, want, got, got1},
                  13);
}

TEST(qmm_matches_dequantized_matmul) {
  int bitss[] = {2, 3, 4, 5, 6, 8};
  for (int i = 0; i < 6; i++) {
    qmm_check(1, 200, 512, 64, bitss[i], true);   /* decode */
    qmm_check(5, 96, 256, 32, bitss[i], true);    /* few rows */
    qmm_check(37, 83, 384, 128, bitss[i], true);  /* tiled, remainders */
    qmm_check(1, 256, 96, 128, bitss[i], false);  /* x @ W */
    qmm_check(13, 128, 64, 32, bitss[i], false);
    qmm_check(40, 192, 72, 64, bitss[i], false);  /* x @ W, many rows: the BLAS path */
    if (bitss[i] == 4) qmm_check(20, 4096, 1100, 64, 4, false); /* in 3 blocks of rows of W */
  }
}

/* The decode / few-rows kernels (4- and 8-bit, AVX-512 or AVX2 where the CPU
 * has them): every group size, row counts that are not a multiple of the
 * kernels' row blocks, K a multiple of 128 or only of 32, 1..7 rows of x (the
 * GEMV path), 9 and 33 (4-bit: several rows per unpacked block), 70 (the
 * dequantize + sgemm path); bfloat16 and float16 scales read in place. */
TEST(qmm_decode_paths_all_group_sizes) {
  const int gss[3] = {32, 64, 128};
  const int64_t Ms[6] = {1, 2, 7, 9, 33, 70};
  for (int gi = 0; gi < 3; gi++)
    for (int bits = 4; bits <= 8; bits += 4) {
      qmm_check(1, 203, 512, gss[gi], bits, true);
      qmm_check(3, 5, 384, gss[gi], bits, true); /* K % 128 == 0, 5 rows */
      if (gss[gi] < 128) qmm_check(1, 6, 96 * (gss[gi] / 32), gss[gi], bits, true);
    }
  for (int mi = 0; mi < 6; mi++) {
    qmm_check(Ms[mi], 37, 256, 64, 4, true);
    qmm_check(Ms[mi], 37, 256, 32, 8, true);
  }
  /* half-precision scales: same as the float32 kernel on the same values */
  mx_dtype hdt[2] = {MX_BFLOAT16, MX_FLOAT16};
  for (int h = 0; h < 2; h++)
    for (int bits = 4; bits <= 8; bits += 4)
      for (int mi = 0; mi < 4; mi++) {
        mx_array *k1 = mx_random_key(21), *k2 = mx_random_key(22);
        mx_array *w = mx_random_normal((int64_t[]){45, 256}, 2, hdt[h], 0, 0.05, k1);
        mx_array *x = mx_random_normal((int64_t[]){Ms[mi], 256}, 2, MX_FLOAT32, 0, 1, k2);
        mx_array *wq, *s, *b;
        ASSERT_OK(mx_quantize(w, 64, bits, &wq, &s, &b));
        ASSERT_EQ_INT(mx_array_dtype(s), hdt[h]);
        mx_array *s32 = mx_astype(s, MX_FLOAT32), *b32 = mx_astype(b, MX_FLOAT32);
        mx_array *got = mx_quantized_matmul(x, wq, s, b, true, 64, bits);
        mx_array *want = mx_quantized_matmul(x, wq, s32, b32, true, 64, bits);
        ASSERT_OK(mx_array_eval(got));
        ASSERT_OK(mx_array_eval(want));
        ASSERT_EQ_INT(mx_array_dtype(got), MX_FLOAT32);
        ASSERT_MSG(max_rel_diff(got, want) == 0, "%s scales, bits %d, M %lld: %g",
                   mx_dtype_name(hdt[h]), bits, (long long)Ms[mi], max_rel_diff(got, want));
        mx_array_free_n((mx_array *[]){k1, k2, w, x, wq, s, b, s32, b32, got, want}, 11);
      }
}

TEST(qmm_bf16) {
  mx_array *key = mx_random_key(3);
  mx_array *w = mx_random_normal((int64_t[]){64, 256}, 2, MX_BFLOAT16, 0, 0.05, key);
  mx_array *key2 = mx_random_key(4);
  mx_array *x = mx_random_normal((int64_t[]){3, 256}, 2, MX_BFLOAT16, 0, 1, key2);
  mx_array *wq, *s, *b;
  ASSERT_OK(mx_quantize(w, 64, 4, &wq, &s, &b));
  ASSERT_EQ_INT(mx_array_dtype(s), MX_BFLOAT16);
  mx_array *d = mx_dequantize(wq, s, b, 64, 4);
  ASSERT_EQ_INT(mx_array_dtype(d), MX_BFLOAT16);
  mx_array *dt = mx_transpose(d, NULL, 0), *want = mx_matmul(x, dt);
  mx_array *got = mx_quantized_matmul(x, wq, s, b, true, 64, 4);
  ASSERT_NOT_NULL(got);
  ASSERT_EQ_INT(mx_array_dtype(got), MX_BFLOAT16);
  ASSERT(max_rel_diff(got, want) < 2e-2);
  mx_array_free_n((mx_array *[]){key, key2, w, x, wq, s, b, d, dt, want, got}, 11);
}

/* bf16 activations with many rows (prefill): the weight's rows are
 * dequantized to bf16 tiles and multiplied on the bf16 dot-product kernel
 * where the CPU has it (else the float path). Against float64 of the bf16
 * dequantization, within the output's rounding; every group size, 4 and 8
 * bits (and 3 bits, which takes the float path), row counts around the
 * kernel's panels of 32, K over several blocks of 256; the same bits for any
 * thread count. */
TEST(qmm_bf16_many_rows) {
  const int gss[3] = {32, 64, 128}, bitss[3] = {4, 8, 3};
  const int64_t Ms[3] = {16, 45, 97};
  for (int gi = 0; gi < 3; gi++)
    for (int bi = 0; bi < 3; bi++) {
      int64_t M = Ms[(gi + bi) % 3], N = 37, K = 640, gs = gss[gi];
      mx_array *k1 = mx_random_key((uint64_t)(gi * 10 + bi)), *k2 = mx_random_key(99);
      mx_array *w = mx_random_normal((int64_t[]){N, K}, 2, MX_BFLOAT16, 0, 0.05, k1);
      mx_array *x = mx_random_normal((int64_t[]){M, K}, 2, MX_BFLOAT16, 0, 1, k2);
      mx_array *wq, *s, *b;
      ASSERT_OK(mx_quantize(w, (int)gs, bitss[bi], &wq, &s, &b));
      mx_array *d = mx_dequantize(wq, s, b, (int)gs, bitss[bi]);
      mx_array *got = mx_quantized_matmul(x, wq, s, b, true, (int)gs, bitss[bi]);
      ASSERT_NOT_NULL(got);
      ASSERT_OK(mx_array_eval(got));
      ASSERT_EQ_INT(mx_array_dtype(got), MX_BFLOAT16);
      double *xv = malloc(sizeof(double) * (size_t)(M * K)), *dv = malloc(sizeof(double) * (size_t)(N * K));
      double *gv = malloc(sizeof(double) * (size_t)(M * N)), worst = 0;
      ASSERT_OK(mx_array_copy_to(x, MX_FLOAT64, xv, M * K));
      ASSERT_OK(mx_array_copy_to(d, MX_FLOAT64, dv, N * K));
      ASSERT_OK(mx_array_copy_to(got, MX_FLOAT64, gv, M * N));
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          double acc = 0, mag = 0;
          for (int64_t k = 0; k < K; k++) {
            acc += xv[m * K + k] * dv[n * K + k];
            mag += fabs(xv[m * K + k] * dv[n * K + k]);
          }
          worst = fmax(worst, fabs(gv[m * N + n] - acc) / (mag + 1e-3));
        }
      ASSERT_MSG(worst < 6e-3, "gs %d bits %d M %lld: error %g", (int)gs, bitss[bi],
                 (long long)M, worst);
      int nt = mx_get_num_threads();
      mx_set_num_threads(nt > 1 ? 1 : 3);
      mx_array *got1 = mx_quantized_matmul(x, wq, s, b, true, (int)gs, bitss[bi]);
      ASSERT_OK(mx_array_eval(got1));
      mx_set_num_threads(nt);
      ASSERT_MSG(max_rel_diff(got1, got) == 0, "result depends on the thread count");
      free(xv);
      free(dv);
      free(gv);
      mx_array_free_n((mx_array *[]){k1, k2, w, x, wq, s, b, d, got, got1}, 10);
    }
}

/* decode with half-precision activations and a long K: the dense GEMV of a
 * dequantized weight (K >= 4096 rows take the four-columns-per-pass kernel
 * of the dense path) against float64, within the output's rounding; the
 * quantized_matmul of the same weight against float64 of the float32
 * dequantization. */
/* MXC_QMM_INT8=1 (opt-in): 4-bit decode with int8 activations stays within
 * the activation rounding of the float result, for every group size and a
 * few rows, and does not depend on the thread count. Skips on CPUs without
 * AVX-512 VNNI (the mode then falls back to the float path). */
TEST(int8_activation_decode_is_close) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vnni"))
    TEST_SKIP("no AVX-512 VNNI");
#else
  TEST_SKIP("x86-64 only");
#endif
  int gss[3] = {32, 64, 128};
  mx_array *key = mx_random_key(11);
  for (int gi = 0; gi < 3; gi++) {
    int gs = gss[gi];
    for (int64_t M = 1; M <= 3; M += 2) {
      mx_array *w = mx_random_normal((int64_t[]){72, 512}, 2, MX_FLOAT32, 0, 0.05, key);
      mx_array *x = mx_random_normal((int64_t[]){M, 512}, 2, MX_FLOAT32, 0.3, 1, key);
      mx_array *wq = NULL, *s = NULL, *b = NULL;
      ASSERT_OK(mx_quantize(w, gs, 4, &wq, &s, &b));
      unsetenv("MXC_QMM_INT8");
      mx_array *ref = mx_quantized_matmul(x, wq, s, b, true, gs, 4);
      ASSERT_OK(mx_array_eval(ref));
      setenv("MXC_QMM_INT8", "1", 1);
      mx_array *got = mx_quantized_matmul(x, wq, s, b, true, gs, 4);
      ASSERT_OK(mx_array_eval(got));
      int nt = mx_get_num_threads();
      mx_set_num_threads(1);
      mx_array *got1 = mx_quantized_matmul(x, wq, s, b, true, gs, 4);
      ASSERT_OK(mx_array_eval(got1));
      mx_set_num_threads(nt);
      unsetenv("MXC_QMM_INT8");
      double e = max_rel_diff(got, ref);
      ASSERT_MSG(e > 0 && e < 2e-2, "gs %d M %lld: int8 vs float rel diff %g", gs, (long long)M, e);
      ASSERT_MSG(max_rel_diff(got1, got) == 0, "int8 result depends on the thread count");
      mx_array_free_n((mx_array *[]){w, x, wq, s, b, ref, got, got1}, 8);
    }
  }
  mx_array_free(key);
}

TEST(half_decode_long_rows) {
  const int64_t Ks[2] = {4096, 4160};
  const mx_dtype dts[2] = {MX_BFLOAT16, MX_FLOAT16};
  const double tol[2] = {8e-3, 1e-3};
  for (int t = 0; t < 2; t++)
    for (int h = 0; h < 2; h++) {
      mx_array *k1 = mx_random_key(31 + t), *k2 = mx_random_key(41 + t);
      mx_array *w = mx_random_normal((int64_t[]){37, Ks[t]}, 2, dts[h], 0, 0.05, k1);
      mx_array *x = mx_random_normal((int64_t[]){1, Ks[t]}, 2, dts[h], 0, 1, k2);
      mx_array *wq, *s, *b;
      ASSERT_OK(mx_quantize(w, 64, 4, &wq, &s, &b));
      mx_array *d = mx_dequantize(wq, s, b, 64, 4);
      mx_array *dt = mx_transpose(d, NULL, 0), *dense = mx_matmul(x, dt);
      mx_array *x64 = mx_astype(x, MX_FLOAT64), *d64 = mx_astype(d, MX_FLOAT64);
      mx_array *dt64 = mx_transpose(d64, NULL, 0), *want = mx_matmul(x64, dt64);
      ASSERT_OK(mx_array_eval(dense));
      ASSERT_OK(mx_array_eval(want));
      ASSERT_EQ_INT(mx_array_dtype(dense), dts[h]);
      double e = max_rel_diff(dense, want);
      ASSERT_MSG(e < tol[h], "%s K=%lld: dense GEMV rel diff %g", mx_dtype_name(dts[h]),
                 (long long)Ks[t], e);
      mx_array *got = mx_quantized_matmul(x, wq, s, b, true, 64, 4);
      mx_array *s32 = mx_astype(s, MX_FLOAT32), *b32 = mx_astype(b, MX_FLOAT32);
      mx_array *f = mx_dequantize(wq, s32, b32, 64, 4), *f64 = mx_astype(f, MX_FLOAT64);
      mx_array *ft64 = mx_transpose(f64, NULL, 0), *want2 = mx_matmul(x64, ft64);
      ASSERT_OK(mx_array_eval(got));
      ASSERT_OK(mx_array_eval(want2));
      e = max_rel_diff(got, want2);
      ASSERT_MSG(e < tol[h], "%s K=%lld: quantized_matmul rel diff %g", mx_dtype_name(dts[h]),
                 (long long)Ks[t], e);
      mx_array_free_n((mx_array *[]){k1, k2, w, x, wq, s, b, d, dt, dense, x64, d64, dt64, want,
                                     got, s32, b32, f, f64, ft64, want2},
                      21);
    }
}

/* 4-bit decode with bfloat16 activations (one row of x, K a multiple of
 * 128): on CPUs with AVX-512 BF16 and VBMI it runs on the bf16 dot-product
 * kernel (nibbles as the bf16 numbers 128 + q, the offset folded into the
 * biases); elsewhere, and under MXC_BF16_DOT=0 (ctest runs this file both
 * ways), on the float kernel. The weight is bfloat16, so are its scales and
 * the output (float32 scales would promote x to float32 first). Both must
 * agree with float64 within the output's rounding plus float32 rounding,
 * for every group size, with rows that are not a multiple of the kernel's
 * 4, x off-centre (the bias term matters), biases large next to the
 * scales, and whatever the thread count. */
TEST(qmm_decode_bf16_activations) {
  const int gss[3] = {32, 64, 128};
  const int64_t Ks[3] = {128, 640, 2048}, Ns[3] = {1, 45, 203};
  mx_array *key = mx_random_key(17);
  for (int gi = 0; gi < 3; gi++)
    for (int ki = 0; ki < 3; ki++) {
      int64_t K = Ks[ki], N = Ns[(gi + ki) % 3];
      int gs = gss[gi];
      mx_array *k1 = mx_random_key((uint64_t)(50 + gi * 3 + ki)), *k2 = mx_random_key(60);
      mx_array *w0 = mx_random_normal((int64_t[]){N, K}, 2, MX_BFLOAT16, 0, 0.05, k1);
      mx_array *w = mx_add_scalar(w0, 0.2); /* all-positive groups: biases >> scales */
      mx_array *x = mx_random_normal((int64_t[]){1, K}, 2, MX_BFLOAT16, 0.5, 1, k2);
      mx_array *wq, *s, *b;
      ASSERT_OK(mx_quantize(w, gs, 4, &wq, &s, &b));
      mx_array *got = mx_quantized_matmul(x, wq, s, b, true, gs, 4);
      ASSERT_NOT_NULL(got);
      ASSERT_OK(mx_array_eval(got));
      ASSERT_EQ_INT(mx_array_dtype(s), MX_BFLOAT16);
      ASSERT_EQ_INT(mx_array_dtype(got), MX_BFLOAT16);
      mx_array *s32 = mx_astype(s, MX_FLOAT32), *b32 = mx_astype(b, MX_FLOAT32);
      mx_array *d = mx_dequantize(wq, s32, b32, gs, 4); /* float32: no rounding to bf16 */
      ASSERT_OK(mx_array_eval(d));
      double *xv = malloc(sizeof(double) * (size_t)K), *dv = malloc(sizeof(double) * (size_t)(N * K));
      double *gv = malloc(sizeof(double) * (size_t)N), worst = 0;
      ASSERT_OK(mx_array_copy_to(x, MX_FLOAT64, xv, K));
      ASSERT_OK(mx_array_copy_to(d, MX_FLOAT64, dv, N * K));
      ASSERT_OK(mx_array_copy_to(got, MX_FLOAT64, gv, N));
      for (int64_t n = 0; n < N; n++) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < K; k++) {
          acc += xv[k] * dv[n * K + k];
          mag += fabs(xv[k] * dv[n * K + k]);
        }
        /* the output's rounding (half a bf16 step, 2^-8 relative) is allowed in full */
        worst = fmax(worst, (fabs(gv[n] - acc) - fabs(acc) / 256) / mag);
      }
      ASSERT_MSG(worst < 1e-6, "gs %d K %lld N %lld: error %g", gs, (long long)K, (long long)N,
                 worst);
      int nt = mx_get_num_threads();
      mx_set_num_threads(nt > 1 ? 1 : 3);
      mx_array *got1 = mx_quantized_matmul(x, wq, s, b, true, gs, 4);
      ASSERT_OK(mx_array_eval(got1));
      mx_set_num_threads(nt);
      ASSERT_MSG(max_rel_diff(got1, got) == 0, "result depends on the thread count");
      free(xv);
      free(dv);
      free(gv);
      mx_array_free_n((mx_array *[]){k1, k2, w0, w, x, wq, s, b, got, s32, b32, d, got1}, 13);
    }
  mx_array_free(key);
}

/* ---- gradients ------------------------------------------------------------------------- */

typedef struct {
  mx_array *wq, *s, *b;
} qpay;

static int f_qmm_x(void *p, mx_array **in, int n, mx_list *out) {
  qpay *q = p;
  (void)n;
  return mx_list_push(out, mx_quantized_matmul(in[0], q->wq, q->s, q->b, true, 32, 4));
}
static int f_qmm_w(void *p, mx_array **in, int n, mx_list *out) {
  qpay *q = p;
  (void)n;
  return mx_list_push(out, mx_quantized_matmul(in[0], in[1], q->s, q->b, true, 32, 4));
}

TEST(qmm_vjp_x_and_packed_weights_error) {
  mx_array *key = mx_random_key(11);
  mx_array *w = mx_random_normal((int64_t[]){8, 64}, 2, MX_FLOAT32, 0, 1, key);
  mx_array *key2 = mx_random_key(12);
  mx_array *x = mx_random_normal((int64_t[]){2, 64}, 2, MX_FLOAT32, 0, 1, key2);
  qpay q;
  ASSERT_OK(mx_quantize(w, 32, 4, &q.wq, &q.s, &q.b));
  mx_array *cot = mx_ones((int64_t[]){2, 8}, 2, MX_FLOAT32);
  /* d/dx sum(x @ W^T) = ones @ W */
  mx_closure *f = mx_closure_new(f_qmm_x, &q, NULL);
  mx_list outs = MX_LIST_INIT, vjps = MX_LIST_INIT;
  ASSERT_OK(mx_vjp(f, &x, 1, &cot, 1, &outs, &vjps));
  mx_array *d = mx_dequantize(q.wq, q.s, q.b, 32, 4);
  mx_array *want = mx_matmul(cot, d);
  ASSERT_OK(mx_array_eval(vjps.items[0]));
  ASSERT(max_rel_diff(vjps.items[0], want) < 1e-5);
  mx_list_clear(&outs);
  mx_list_clear(&vjps);
  /* the packed weights have no gradient: a clear error, no crash */
  mx_closure *g = mx_closure_new(f_qmm_w, &q, NULL);
  mx_array *prim[2] = {x, q.wq};
  int rc = mx_vjp(g, prim, 2, &cot, 1, &outs, &vjps);
  if (rc == MX_OK) { /* the error may surface at eval */
    rc = mx_array_eval(vjps.items[1]);
  }
  ASSERT(rc != MX_OK);
  ASSERT(strstr(mx_last_error(), "packed") != NULL);
  mx_clear_error();
  mx_list_clear(&outs);
  mx_list_clear(&vjps);
  mx_closure_free(f);
  mx_closure_free(g);
  mx_array_free_n((mx_array *[]){key, key2, w, x, q.wq, q.s, q.b, cot, d, want}, 10);
}

/* ---- errors ------------------------------------------------------------------------------ */

TEST(errors_name_the_op_and_shapes) {
  mx_array *w = mx_zeros((int64_t[]){4, 48}, 2, MX_FLOAT32), *wq, *s, *b;
  ASSERT(mx_quantize(w, 32, 4, &wq, &s, &b) == MX_ERR_SHAPE);
  ASSERT(strstr(mx_last_error(), "quantize") && strstr(mx_last_error(), "48"));
  ASSERT(mx_quantize(w, 48, 4, &wq, &s, &b) == MX_ERR_INVALID_ARG);
  ASSERT(mx_quantize(w, 16, 7, &wq, &s, &b) == MX_ERR_INVALID_ARG);
  ASSERT(wq == NULL && s == NULL && b == NULL);
  mx_array *wi = mx_zeros((int64_t[]){4, 64}, 2, MX_INT32);
  ASSERT(mx_quantize(wi, 32, 4, &wq, &s, &b) == MX_ERR_DTYPE);
  mx_array *w2 = mx_zeros((int64_t[]){4, 64}, 2, MX_FLOAT32);
  ASSERT_OK(mx_quantize(w2, 32, 4, &wq, &s, &b));
  mx_array *x = mx_zeros((int64_t[]){3, 60}, 2, MX_FLOAT32);
  ASSERT(mx_quantized_matmul(x, wq, s, b, true, 32, 4) == NULL);
  ASSERT(strstr(mx_last_error(), "quantized_matmul") && strstr(mx_last_error(), "[3,60]"));
  ASSERT(mx_dequantize(wq, s, b, 64, 4) == NULL); /* wrong group size for these scales */
  ASSERT(mx_dequantize(wq, s, b, 32, 8) == NULL);
  ASSERT(mx_dequantize(s, s, b, 32, 4) == NULL); /* not uint32 */
  ASSERT(mx_quantized_matmul(NULL, wq, s, b, true, 32, 4) == NULL);
  mx_clear_error();
  mx_array_free_n((mx_array *[]){w, wi, w2, wq, s, b, x}, 7);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
