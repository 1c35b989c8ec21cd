/* test.h — a tiny test framework: one executable per area, many cases.
 *
 *   TEST(adds_two_numbers) { ASSERT_EQ_INT(1 + 1, 2); }
 *   int main(int argc, char **argv) { return test_main(argc, argv); }
 *
 * Cases register themselves (constructor attribute). A failed ASSERT prints
 * the expression, the values and file:line, and ends the case. The run ends
 * with "N passed, N failed, N skipped". `./test_x NAME` runs one case.
 */
#ifndef MXC_TEST_H
#define MXC_TEST_H

#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
typedef struct {
  const char *name;
  test_fn fn;
} test_case;

#define TEST_MAX_CASES 1024
static test_case test__cases[TEST_MAX_CASES];
static int test__ncases;
static jmp_buf test__jmp;
static int test__skipped_flag;
static char test__skip_reason[512];

static inline void test__register(const char *name, test_fn fn) {
  if (test__ncases < TEST_MAX_CASES) test__cases[test__ncases++] = (test_case){name, fn};
}

#define TEST(name)                                                        \
  static void test_##name(void);                                          \
  __attribute__((constructor)) static void test__reg_##name(void) {       \
    test__register(#name, test_##name);                                   \
  }                                                                       \
  static void test_##name(void)

#define TEST_FAIL(...)                                                    \
  do {                                                                    \
    fprintf(stderr, "  FAIL %s:%d: ", __FILE__, __LINE__);                \
    fprintf(stderr, __VA_ARGS__);                                         \
    fprintf(stderr, "\n");                                                \
    longjmp(test__jmp, 1);                                                \
  } while (0)

/* Mark the current case skipped (e.g. shared data missing) and end it. */
#define TEST_SKIP(...)                                                    \
  do {                                                                    \
    snprintf(test__skip_reason, sizeof test__skip_reason, __VA_ARGS__);   \
    test__skipped_flag = 1;                                               \
    longjmp(test__jmp, 2);                                                \
  } while (0)

#define ASSERT(cond)                                                      \
  do {                                                                    \
    if (!(cond)) TEST_FAIL("ASSERT(%s)", #cond);                          \
  } while (0)
#define ASSERT_MSG(cond, ...)                                             \
  do {                                                                    \
    if (!(cond)) TEST_FAIL(__VA_ARGS__);                                  \
  } while (0)
#define ASSERT_EQ_INT(a, b)                                               \
  do {                                                                    \
    long long test__a = (long long)(a), test__b = (long long)(b);         \
    if (test__a != test__b)                                               \
      TEST_FAIL("%s == %s (%lld vs %lld)", #a, #b, test__a, test__b);     \
  } while (0)
#define ASSERT_NEAR(a, b, tol)                                            \
  do {                                                                    \
    double test__a = (double)(a), test__b = (double)(b);                  \
    if (!(fabs(test__a - test__b) <= (tol)))                              \
      TEST_FAIL("%s ~= %s (%.9g vs %.9g, tol %g)", #a, #b, test__a,       \
                test__b, (double)(tol));                                  \
  } while (0)
#define ASSERT_STR_EQ(a, b)                                               \
  do {                                                                    \
    const char *test__a = (a), *test__b = (b);                            \
    if (!test__a || !test__b || strcmp(test__a, test__b))                 \
      TEST_FAIL("%s == %s (\"%s\" vs \"%s\")", #a, #b,                    \
                test__a ? test__a : "(null)", test__b ? test__b : "(null)"); \
  } while (0)
#define ASSERT_NOT_NULL(p)                                                \
  do {                                                                    \
    if (!(p)) TEST_FAIL("%s is NULL (last error: %s)", #p, mx_last_error()); \
  } while (0)
#define ASSERT_OK(expr)                                                   \
  do {                                                                    \
    int test__s = (expr);                                                 \
    if (test__s != 0)                                                     \
      TEST_FAIL("%s returned %d (last error: %s)", #expr, test__s,        \
                mx_last_error());                                         \
  } while (0)

/* The shared data folder (MXC_DATA_DIR, default ../shared/data). */
static inline const char *test_data_dir(void) {
  const char *d = getenv("MXC_DATA_DIR");
  return d && *d ? d : "../shared/data";
}

static inline int test_main(int argc, char **argv) {
  volatile int passed = 0, failed = 0, skipped = 0;
  for (volatile int i = 0; i < test__ncases; i++) {
    if (argc > 1 && strcmp(argv[1], test__cases[i].name)) continue;
    test__skipped_flag = 0;
    int r = setjmp(test__jmp);
    if (r == 0) {
      test__cases[i].fn();
      printf("  ok   %s\n", test__cases[i].name);
      passed++;
    } else if (r == 2) {
      printf("  skip %s: %s\n", test__cases[i].name, test__skip_reason);
      skipped++;
    } else {
      printf("  FAIL %s\n", test__cases[i].name);
      failed++;
    }
    fflush(stdout);
  }
  printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}

#endif
