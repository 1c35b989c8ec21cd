/* main.c — `mxc COMMAND [ARGS]`: dispatches to cmd_<command>.c. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
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
  fprintf(f, "\n`mxc COMMAND --help` describes a command.\n");
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
