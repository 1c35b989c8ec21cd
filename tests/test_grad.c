/* test_grad.c — the op-parity harness in gradient mode: every
 * differentiable case (no OC_NO_GRAD) of every family enabled in
 * tests/test_ops.c has its VJP checked against central differences in
 * float64 (tests/support/harness_grad.c), with contiguous and, where the
 * case asks for it, strided view inputs. Lists the public ops that lack a
 * gradient case. */
#include "support/harness.h"
#include "support/public_ops.h"
#include "test.h"

#ifndef MXC_SOURCE_DIR
#define MXC_SOURCE_DIR "."
#endif

/* The families of OC_ENABLED in tests/test_ops.c (checked below). */
#define GRAD_ENABLED(X) \
  X(elementwise)        \
  X(shape)              \
  X(reduce)             \
  X(indexing)           \
  X(linalg)             \
  X(sort)               \
  X(random)             \
  X(fast)               \
  X(quantized)

static const mx_opcase_table *tables[] = {
#define OC_REF(f) &mx_opcases_##f,
    GRAD_ENABLED(OC_REF)
#undef OC_REF
};
static const char *const table_names[] = {
#define OC_NAME(f) #f,
    GRAD_ENABLED(OC_NAME)
#undef OC_NAME
};
#define NTABLES ((int)(sizeof tables / sizeof *tables))
#define MX_UNUSED_ARG(x) (void)(x)

/* Gradient-only cases for differentiable ops whose parity cases are all
 * OC_NO_GRAD in their family's table (only oc_run_grad runs them). */
static mx_array *b_full(const mx_opcase *c, mx_array **in) {
  MX_UNUSED_ARG(c);
  return mx_full_array((int64_t[]){3, 4}, 2, in[0], MX_FLOAT64);
}
static mx_array *b_tril(const mx_opcase *c, mx_array **in) { return mx_tril(in[0], c->ip[0]); }
static mx_array *b_triu(const mx_opcase *c, mx_array **in) { return mx_triu(in[0], c->ip[0]); }
static const mx_opcase extra_cases[] = {
    {.op = "full", .desc = "array value (4,) broadcast to (3, 4)", .nin = 1, .ndim = {1},
     .shape = {{4}}, .lo = -2, .hi = 2, .dtypes = {MX_FLOAT64}, .ndtypes = 1,
     .flags = OC_NONCONTIG, .build = b_full},
    {.op = "tril", .desc = "(2, 4, 5), k = 0", .nin = 1, .ndim = {3}, .shape = {{2, 4, 5}},
     .lo = -2, .hi = 2, .dtypes = {MX_FLOAT64}, .ndtypes = 1, .flags = OC_NONCONTIG,
     .build = b_tril},
    {.op = "triu", .desc = "(4, 5), k = 1", .nin = 1, .ndim = {2}, .shape = {{4, 5}}, .lo = -2,
     .hi = 2, .dtypes = {MX_FLOAT64}, .ndtypes = 1, .flags = OC_NONCONTIG, .ip = {1},
     .build = b_triu},
};
static const mx_opcase_table extra_table = {extra_cases,
                                            (int)(sizeof extra_cases / sizeof *extra_cases)};

/* Public ops with no gradient to check: integer/boolean outputs, creation
 * from constants, random sampling. */
static const char *const no_grad_ops[] = {
    "zeros", "ones", "zeros_like", "ones_like", "full_like", "arange", "linspace", "eye",
    "identity", "tri", "array_from_data", "array_from_data_nocopy", "sign", "floor", "ceil",
    "round", "logical_not", "isnan", "isinf", "equal", "not_equal", "less", "less_equal",
    "greater", "greater_equal", "logical_and", "logical_or", "all", "any", "argmax", "argmin",
    "argsort", "argpartition", "random_key", "random_split", "random_bits", "random_uniform",
    "random_normal", "random_truncated_normal", "random_randint", "random_bernoulli",
    "random_categorical", "random_gumbel", "stop_gradient",
};

static int is_no_grad_op(const char *op) {
  for (size_t i = 0; i < sizeof no_grad_ops / sizeof *no_grad_ops; i++)
    if (!strcmp(no_grad_ops[i], op)) return 1;
  return 0;
}

/* op names with at least one passing, non-skipped gradient check */
static const char *checked[512];
static int nchecked;
static int ran_all;

static void mark_checked(const char *op) {
  for (int i = 0; i < nchecked; i++)
    if (!strcmp(checked[i], op)) return;
  if (nchecked < 512) checked[nchecked++] = op;
}

TEST(families_match_test_ops) {
  /* every family in test_ops.c's OC_ENABLED list is also run here */
  FILE *f = fopen(MXC_SOURCE_DIR "/tests/test_ops.c", "r");
  if (!f) TEST_SKIP("cannot read tests/test_ops.c");
  char line[512];
  int in_list = 0, missing = 0;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "#define OC_ENABLED(X)")) {
      in_list = 1;
      continue;
    }
    if (!in_list) continue;
    char name[64];
    if (sscanf(line, " X(%63[a-z_])", name) != 1) break;
    int found = 0;
    for (int t = 0; t < NTABLES; t++) found |= !strcmp(table_names[t], name);
    if (!found) {
      printf("    family '%s' is enabled in test_ops.c but not in test_grad.c's GRAD_ENABLED\n",
             name);
      missing++;
    }
    if (!strchr(line, '\\')) break;
  }
  fclose(f);
  ASSERT_EQ_INT(missing, 0);
}

TEST(finite_differences_every_family) {
  int run = 0, failed = 0, skipped = 0, no_grad = 0;
  for (int t = 0; t <= NTABLES; t++) {
    const mx_opcase_table *tab = t < NTABLES ? tables[t] : &extra_table;
    int tr = 0, tf = 0;
    for (int i = 0; i < tab->n; i++) {
      const mx_opcase *c = &tab->cases[i];
      if (c->flags & OC_NO_GRAD) {
        no_grad++;
        continue;
      }
      oc_result r = oc_run_grad(c, 4321 + (uint64_t)i * 7919);
      if (r.ok && !strncmp(r.msg, "skip:", 5)) {
        skipped++;
        continue;
      }
      run++;
      tr++;
      if (!r.ok) {
        failed++;
        tf++;
        printf("    FAIL %s [%s]: %s\n", c->op, c->desc, r.msg);
      } else {
        mark_checked(c->op);
      }
    }
    printf("    %-12s %3d checked, %d failed\n", t < NTABLES ? table_names[t] : "(grad-only)",
           tr, tf);
  }
  printf("    total: %d cases checked, %d failed, %d skipped (integer or non-finite output), %d OC_NO_GRAD\n",
         run, failed, skipped, no_grad);
  ran_all = 1;
  ASSERT_EQ_INT(failed, 0);
}

TEST(ops_lacking_a_gradient_case) {
  if (!ran_all) TEST_SKIP("needs finite_differences_every_family in the same run");
  int missing = 0;
  char buf[4096];
  size_t k = 0;
  buf[0] = 0;
  for (size_t p = 0; p < sizeof mx_public_ops / sizeof *mx_public_ops; p++) {
    const char *op = mx_public_ops[p];
    if (is_no_grad_op(op)) continue;
    int found = 0;
    for (int i = 0; i < nchecked && !found; i++) found = !strcmp(checked[i], op);
    if (found) continue;
    missing++;
    if (k < sizeof buf - 64) k += (size_t)snprintf(buf + k, sizeof buf - k, " %s", op);
  }
  printf("    differentiable public ops without a passing gradient case (%d):%s\n", missing,
         missing ? buf : " none");
}

int main(int argc, char **argv) { return test_main(argc, argv); }
