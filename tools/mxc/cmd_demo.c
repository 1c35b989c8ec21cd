/* cmd_demo.c — `mxc demo`: lazy evaluation and the memory API in action. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "mxc/mxc.h"

static void mem(const char *what) {
  printf("  %-34s active %8.2f MiB  peak %8.2f MiB  cache %8.2f MiB\n", what,
         mx_get_active_memory() / 1048576.0, mx_get_peak_memory() / 1048576.0,
         mx_get_cache_memory() / 1048576.0);
}

int mxc_cmd_demo(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: mxc demo\n\nBuilds a lazy graph, evaluates it, and prints the memory counters.\n");
    return 0;
  }
  int rc = 1;
  printf("mxc %s — lazy arrays and the memory API\n\n", mx_version());
  int64_t shape[2] = {1024, 1024};
  mx_array *key = mx_random_key(0);
  mx_array *x = mx_random_normal(shape, 2, MX_FLOAT32, 0, 1, key);
  mx_array *w = mx_random_normal(shape, 2, MX_FLOAT32, 0, 0.03, NULL);
  mx_array *h = NULL, *y = NULL, *loss = NULL;
  if (!x || !w) goto fail;
  mem("after building x, w (lazy):");
  {
    mx_array *xw = mx_matmul(x, w);
    h = mx_tanh(xw);
    mx_array_free(xw);
  }
  y = mx_softmax(h, (int[]){-1}, 1);
  loss = mx_mean(y, NULL, 0, false);
  if (!loss) goto fail;
  printf("  graph built: loss is '%s', evaluated: %s\n", mx_array_op_name(loss),
         mx_array_is_evaluated(loss) ? "yes" : "no");
  mem("before eval:");
  if (mx_array_eval(loss)) goto fail;
  double v;
  if (mx_array_item(loss, &v)) goto fail;
  printf("  loss = %.6f (mean of a softmax over 1024 columns: 1/1024 = %.6f)\n", v, 1.0 / 1024);
  mem("after eval (intermediates freed):");
  mx_array_free(x);
  mx_array_free(w);
  mx_array_free(h);
  mx_array_free(y);
  x = w = h = y = NULL;
  mem("after freeing arrays (cached):");
  mx_clear_cache();
  mem("after mx_clear_cache():");
  rc = 0;
fail:
  if (rc) fprintf(stderr, "mxc demo: %s\n", mx_last_error());
  mx_array_free(key);
  mx_array_free(x);
  mx_array_free(w);
  mx_array_free(h);
  mx_array_free(y);
  mx_array_free(loss);
  return rc;
}
