/* cmd_plot.c — `mxc plot`: train / validation loss curves of a training
 * run's metrics.jsonl as a PNG.
 *
 *   mxc plot OUT/metrics.jsonl -o loss.png [--title T] [--width 800 --height 500]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/train.h"

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc plot METRICS.jsonl -o loss.png [--title T] [--width 800] [--height 500]\n"
             "Draws \"loss\" and \"val_loss\" against \"step\" from the JSON lines that\n"
             "`mxc train` appends to DIR/metrics.jsonl.\n");
  return rc;
}

static int parse_int(const char *flag, const char *s, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 1 || v > 100000) {
    fprintf(stderr, "mxc plot: %s expects a positive integer, got '%s'\n", flag, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

int mxc_cmd_plot(int argc, char **argv) {
  mx_plot_options o = MX_PLOT_DEFAULTS;
  const char *in = NULL, *out = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout, 0);
    if (a[0] != '-') {
      if (in) {
        fprintf(stderr, "mxc plot: unexpected argument '%s'\n", a);
        return usage(stderr, 2);
      }
      in = a;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc plot: %s needs a value\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int rc = 0;
    if (!strcmp(a, "-o") || !strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--title")) o.title = v;
    else if (!strcmp(a, "--width")) rc = parse_int(a, v, &o.width);
    else if (!strcmp(a, "--height")) rc = parse_int(a, v, &o.height);
    else {
      fprintf(stderr, "mxc plot: unknown option '%s'\n", a);
      return usage(stderr, 2);
    }
    if (rc) return 2;
  }
  if (!in || !out) {
    fprintf(stderr, "mxc plot: METRICS.jsonl and -o FILE.png are required\n");
    return usage(stderr, 2);
  }
  if (mx_train_plot(in, out, &o)) {
    fprintf(stderr, "mxc %s\n", mx_last_error());
    return 1;
  }
  fprintf(stderr, "mxc plot: wrote %s\n", out);
  return 0;
}
