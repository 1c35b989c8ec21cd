/* cmd_template.c — `mxc template`: render a chat template like
 * transformers' apply_chat_template and print it exactly (no newline added).
 *
 *   mxc template --tokenizer PATH --messages FILE.json [--add-generation-prompt]
 *
 * FILE.json: an array of messages, or an object with "messages", optional
 * "tools" and extra template variables (e.g. {"enable_thinking": false}).
 * --template renders another Jinja file with the tokenizer's special tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/chat_template.h"
#include "mxc/tokenizer.h"

static char *read_file(const char *path) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) return NULL;
  size_t cap = 65536, n = 0, k;
  char *p = malloc(cap);
  while (p && (k = fread(p + n, 1, cap - n - 1, f)) > 0) {
    n += k;
    if (cap - n < 2) {
      char *q = realloc(p, cap * 2);
      if (!q) {
        free(p);
        p = NULL;
        break;
      }
      p = q;
      cap *= 2;
    }
  }
  if (f != stdin) fclose(f);
  if (p) p[n] = 0;
  return p;
}

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc template --tokenizer PATH --messages FILE.json [--add-generation-prompt]\n"
             "  Renders the chat template of PATH's tokenizer_config.json (as transformers'\n"
             "  apply_chat_template) and prints it exactly. FILE.json holds an array of\n"
             "  messages or an object with \"messages\", optional \"tools\" and extra template\n"
             "  variables (e.g. \"enable_thinking\": false). '-' reads stdin.\n");
  return rc;
}

int mxc_cmd_template(int argc, char **argv) {
  const char *path = NULL, *msgs = NULL;
  bool agp = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout, 0);
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) path = argv[++i];
    else if (!strcmp(argv[i], "--messages") && i + 1 < argc) msgs = argv[++i];
    else if (!strcmp(argv[i], "--add-generation-prompt")) agp = true;
    else {
      fprintf(stderr, "mxc template: unknown argument '%s'\n", argv[i]);
      return usage(stderr, 2);
    }
  }
  if (!path || !msgs) return usage(stderr, 2);
  mx_tokenizer *tok = mx_tokenizer_load(path);
  if (!tok) {
    fprintf(stderr, "mxc template: %s\n", mx_last_error());
    return 1;
  }
  char *conv = read_file(msgs);
  if (!conv) {
    fprintf(stderr, "mxc template: cannot read %s\n", msgs);
    mx_tokenizer_free(tok);
    return 1;
  }
  char *out = NULL;
  size_t len = 0;
  int st = mx_chat_template_apply(tok, conv, agp, &out, &len);
  free(conv);
  int rc = 0;
  if (st) {
    fprintf(stderr, "mxc template: %s\n", mx_last_error());
    rc = 1;
  } else {
    fwrite(out, 1, len, stdout);
  }
  free(out);
  mx_tokenizer_free(tok);
  return rc;
}
