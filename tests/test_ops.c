/* test_ops.c — the op-parity harness: every case of every family on every
 * available backend against the float64 references; contiguous and view
 * inputs; guard bytes checked; coverage of public ops. */
#include "support/harness.h"
#include "support/public_ops.h"
#include "test.h"

#include "array_impl.h"

/* Families with cases (append as families land). */
#define OC_ENABLED(X) \
  X(elementwise)      \
  X(shape)            \
  X(reduce)           \
  X(indexing)         \
  X(linalg)           \
  X(fast)             \
  X(sort)             \
  X(random)           \
  X(quantized)

static const mx_opcase_table *tables[] = {
#define OC_REF(f) &mx_opcases_##f,
    OC_ENABLED(OC_REF)
#undef OC_REF
};
#define NTABLES ((int)(sizeof tables / sizeof *tables))

static int run_device(mx_device dev) {
  int failed = 0, run = 0;
  for (int t = 0; t < NTABLES; t++)
    for (int i = 0; i < tables[t]->n; i++) {
      const mx_opcase *c = &tables[t]->cases[i];
      for (int d = 0; d < c->ndtypes; d++)
        for (int nc = 0; nc < ((c->flags & OC_NONCONTIG) ? 2 : 1); nc++) {
          oc_result r = oc_run(c, c->dtypes[d], dev, nc, 1234 + (uint64_t)i * 7919);
          run++;
          if (!r.ok) {
            failed++;
            printf("    FAIL %s [%s] %s%s: %s\n", c->op, c->desc, mx_dtype_name(c->dtypes[d]),
                   nc ? " (views)" : "", r.msg);
          }
        }
    }
  printf("    %s: %d runs, %d failed\n", dev == MX_CPU ? "cpu" : "gpu", run, failed);
  return failed;
}

TEST(all_cases_cpu) {
  mx__debug_guard(true);
  size_t before = mx__debug_guard_violations();
  int failed = run_device(MX_CPU);
  mx_clear_cache(); /* release cached blocks so their guards are checked */
  mx__debug_guard(false);
  ASSERT_EQ_INT(failed, 0);
  ASSERT_EQ_INT(mx__debug_guard_violations() - before, 0);
}

/* Every case on the GPU. A case that fails because the CUDA backend lacks a
 * kernel (for the op or the dtype) counts as missing, listed apart from
 * wrong results; wrong results fail the test. */
TEST(all_cases_gpu) {
  if (!mx_device_available(MX_GPU)) TEST_SKIP("no GPU available");
  int failed = 0, missing = 0, run = 0;
  for (int t = 0; t < NTABLES; t++)
    for (int i = 0; i < tables[t]->n; i++) {
      const mx_opcase *c = &tables[t]->cases[i];
      for (int d = 0; d < c->ndtypes; d++)
        for (int nc = 0; nc < ((c->flags & OC_NONCONTIG) ? 2 : 1); nc++) {
          oc_result r = oc_run(c, c->dtypes[d], MX_GPU, nc, 1234 + (uint64_t)i * 7919);
          run++;
          if (r.ok) continue;
          bool no_kernel = strstr(r.msg, "no kernel on the") || strstr(r.msg, "no CUDA kernel");
          if (no_kernel) missing++;
          else failed++;
          printf("    %s %s [%s] %s%s: %s\n", no_kernel ? "MISSING" : "FAIL", c->op, c->desc,
                 mx_dtype_name(c->dtypes[d]), nc ? " (views)" : "", r.msg);
        }
    }
  printf("    gpu: %d runs, %d failed, %d missing a kernel\n", run, failed, missing);
  const mx__backend *be = mx__backend_get(MX_GPU);
  int nmiss = 0;
  printf("    ops without a CUDA kernel:");
  for (int op = 0; op < MX__OP_COUNT; op++)
    if (!be->kernels[op] && op != MX_OP_CUSTOM) {
      printf(" %s", mx__op_names[op]);
      nmiss++;
    }
  printf("%s (%d)\n", nmiss ? "" : " none", nmiss);
  ASSERT_EQ_INT(failed, 0);
}

TEST(every_public_op_has_a_case) {
  int missing = 0;
  for (size_t p = 0; p < sizeof mx_public_ops / sizeof *mx_public_ops; p++) {
    int found = 0;
    for (int t = 0; t < NTABLES && !found; t++)
      for (int i = 0; i < tables[t]->n && !found; i++)
        if (!strcmp(tables[t]->cases[i].op, mx_public_ops[p])) found = 1;
    if (!found) {
      printf("    no case: %s\n", mx_public_ops[p]);
      missing++;
    }
  }
  ASSERT_EQ_INT(missing, 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
