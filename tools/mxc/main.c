/* main.c — `mxc COMMAND [ARGS]`: dispatches to cmd_<command>.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/array.h"
#include "mxc/base.h"

typedef struct {
  const char *name;
  const char *help;
  int (*fn)(int, char **);
} command;

#define MXC__ENTRY(n, h) {#n, h, mxc_cmd_##n},
static const command commands[] = {MXC_CLI_COMMAND_LIST(MXC__ENTRY)};
#undef MXC__ENTRY

static void usage(FILE *f) {
  fprintf(f, "usage: mxc COMMAND [ARGS]   (mxc %s)\n\ncommands:\n", mx_version());
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    if (commands[i].fn) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n`mxc COMMAND --help` describes a command.\n"
             "Every command takes `--device cpu|gpu` (or MXC_DEVICE=cpu|gpu): where ops run\n"
             "(default cpu).\n");
}

/* Sets the default device from `name` ("cpu" / "gpu"); 0 or a message. */
static int use_device(const char *name, const char *from) {
  mx_device d;
  if (!strcmp(name, "cpu")) d = MX_CPU;
  else if (!strcmp(name, "gpu") || !strcmp(name, "cuda")) d = MX_GPU;
  else {
    fprintf(stderr, "mxc: %s: unknown device '%s' (expected cpu or gpu)\n", from, name);
    return 2;
  }
  if (mx_set_default_device(d) < 0) {
    fprintf(stderr, "mxc: %s %s: %s\n", from, name, mx_last_error());
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("mxc %s\n", mx_version());
    return 0;
  }
  /* --device X anywhere (removed before the command parses its flags) */
  const char *env = getenv("MXC_DEVICE");
  int rc = env && *env ? use_device(env, "MXC_DEVICE") : 0;
  if (rc) return rc;
  int k = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--device") || !strncmp(argv[i], "--device=", 9)) {
      const char *v = argv[i][8] == '=' ? argv[i] + 9 : i + 1 < argc ? argv[++i] : NULL;
      if (!v) {
        fprintf(stderr, "mxc: --device needs a value (cpu or gpu)\n");
        return 2;
      }
      if ((rc = use_device(v, "--device"))) return rc;
      continue;
    }
    argv[k++] = argv[i];
  }
  argc = k;
  argv[argc] = NULL;
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "tokenizer-train")) argv[1] = (char *)"tokenizer_train"; /* C names */
  if (!strcmp(argv[1], "cache-prompt")) argv[1] = (char *)"cache_prompt"; /* mlx_lm.cache_prompt */
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(argv[1], commands[i].name)) continue;
    if (!commands[i].fn) {
      fprintf(stderr, "mxc: command '%s' is not available in this build yet\n", argv[1]);
      return 2;
    }
    return commands[i].fn(argc - 1, argv + 1);
  }
  fprintf(stderr, "mxc: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
