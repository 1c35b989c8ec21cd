/* cmd_tokenize.c — `mxc tokenize` and `mxc detokenize`.
 *
 *   echo '["Hello world", "more"]' | mxc tokenize --tokenizer PATH [--special]
 *   [[9906,1917],[6518]]
 *   echo '[[9906,1917]]' | mxc detokenize --tokenizer PATH [--skip-special]
 *   ["Hello world"]
 *
 * PATH is a tokenizer.json, a tokenizer.model or a model directory. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/tokenizer.h"

static char *read_stdin(size_t *len) {
  size_t cap = 65536, n = 0;
  char *p = malloc(cap);
  if (!p) return NULL;
  size_t k;
  while ((k = fread(p + n, 1, cap - n - 1, stdin)) > 0) {
    n += k;
    if (cap - n < 2) {
      char *q = realloc(p, cap * 2);
      if (!q) {
        free(p);
        return NULL;
      }
      p = q;
      cap *= 2;
    }
  }
  p[n] = 0;
  *len = n;
  return p;
}

static void json_string(FILE *f, const char *s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    case '\b': fputs("\\b", f); break;
    case '\f': fputs("\\f", f); break;
    default:
      if (c < 0x20) fprintf(f, "\\u%04x", c);
      else fputc(c, f);
    }
  }
  fputc('"', f);
}

static int usage(const char *cmd, FILE *f, int rc) {
  if (!strcmp(cmd, "tokenize"))
    fprintf(f, "usage: mxc tokenize --tokenizer PATH [--special]\n"
               "  reads a JSON array of strings on stdin, prints a JSON array of id arrays.\n"
               "  --special  add the post-processor's special tokens (e.g. BOS)\n");
  else
    fprintf(f, "usage: mxc detokenize --tokenizer PATH [--skip-special]\n"
               "  reads a JSON array of id arrays on stdin, prints a JSON array of strings.\n"
               "  --skip-special  drop special tokens\n");
  fprintf(f, "  PATH: tokenizer.json, tokenizer.model or a model directory\n");
  return rc;
}

static int run(int argc, char **argv, bool encode) {
  const char *cmd = encode ? "tokenize" : "detokenize", *path = NULL;
  bool flag = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(cmd, stdout, 0);
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) path = argv[++i];
    else if (encode && !strcmp(argv[i], "--special")) flag = true;
    else if (!encode && !strcmp(argv[i], "--skip-special")) flag = true;
    else {
      fprintf(stderr, "mxc %s: unknown argument '%s'\n", cmd, argv[i]);
      return usage(cmd, stderr, 2);
    }
  }
  if (!path) return usage(cmd, stderr, 2);
  mx_tokenizer *tok = mx_tokenizer_load(path);
  if (!tok) {
    fprintf(stderr, "mxc %s: %s\n", cmd, mx_last_error());
    return 1;
  }
  size_t len;
  char *in = read_stdin(&len);
  cJSON *arr = in ? cJSON_ParseWithLength(in, len) : NULL;
  free(in);
  int rc = 0;
  if (!cJSON_IsArray(arr)) {
    fprintf(stderr, "mxc %s: stdin must hold a JSON array of %s\n", cmd,
            encode ? "strings" : "id arrays");
    rc = 1;
  }
  const cJSON *it;
  int idx = 0;
  if (!rc) cJSON_ArrayForEach(it, arr) {
    if (encode ? !cJSON_IsString(it) : !cJSON_IsArray(it)) {
      fprintf(stderr, "mxc %s: item %d is not %s\n", cmd, idx, encode ? "a string" : "an array of ids");
      rc = 1;
      break;
    }
    if (!encode) { /* check ids before printing anything */
      const cJSON *v;
      cJSON_ArrayForEach(v, it) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 ||
            v->valuedouble >= (double)mx_tokenizer_vocab_size(tok) || v->valuedouble != (int32_t)v->valuedouble) {
          fprintf(stderr, "mxc %s: item %d holds an invalid id (vocabulary: %zu ids)\n", cmd, idx,
                  mx_tokenizer_vocab_size(tok));
          rc = 1;
          break;
        }
      }
      if (rc) break;
    }
    idx++;
  }
  if (!rc) {
    putchar('[');
    idx = 0;
    cJSON_ArrayForEach(it, arr) {
      if (idx++) putchar(',');
      if (encode) {
        int32_t *ids;
        size_t n;
        if (mx_tokenizer_encode(tok, it->valuestring, strlen(it->valuestring), flag, &ids, &n)) {
          fprintf(stderr, "\nmxc %s: %s\n", cmd, mx_last_error());
          rc = 1;
          break;
        }
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        putchar(']');
        free(ids);
      } else {
        int n = cJSON_GetArraySize(it), k = 0;
        int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
        const cJSON *v;
        cJSON_ArrayForEach(v, it) ids[k++] = cJSON_IsNumber(v) ? (int32_t)v->valuedouble : -1;
        char *text;
        size_t tl;
        if (mx_tokenizer_decode(tok, ids, (size_t)n, flag, &text, &tl)) {
          fprintf(stderr, "\nmxc %s: %s\n", cmd, mx_last_error());
          free(ids);
          rc = 1;
          break;
        }
        json_string(stdout, text, tl);
        free(text);
        free(ids);
      }
    }
    if (!rc) puts("]");
  }
  cJSON_Delete(arr);
  mx_tokenizer_free(tok);
  return rc;
}

int mxc_cmd_tokenize(int argc, char **argv) { return run(argc, argv, true); }
int mxc_cmd_detokenize(int argc, char **argv) { return run(argc, argv, false); }
