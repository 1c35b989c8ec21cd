/* cmd_logits.c — `mxc logits --model DIR --ids FILE.json --out FILE.npy`:
 * float32 logits [T, vocab] of a JSON list of token ids (parity checks). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "mxc/io.h"
#include "mxc/lm.h"
#include "mxc/ops.h"

int mxc__resolve_model(const char *model, char *dir, size_t n);

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: mxc logits --model DIR --ids FILE.json --out FILE.npy\n"
             "  FILE.json: a JSON list of token ids, e.g. [1, 450, 4996]\n"
             "  writes float32 logits of shape [T, vocab]\n");
  return rc;
}

static int read_ids(const char *path, int32_t **ids, int *n) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "mxc logits: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 4096, len = 0, k;
  char *buf = malloc(cap);
  while (buf && (k = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += k;
    if (cap - len < 2) {
      char *q = realloc(buf, cap *= 2);
      if (!q) {
        free(buf);
        buf = NULL;
      }
      buf = q;
    }
  }
  fclose(f);
  if (!buf) return -1;
  buf[len] = 0;
  cJSON *o = cJSON_Parse(buf);
  free(buf);
  int count = cJSON_IsArray(o) ? cJSON_GetArraySize(o) : 0;
  /* [[...]] (one sequence in a batch of one) is accepted too */
  if (count == 1 && cJSON_IsArray(cJSON_GetArrayItem(o, 0))) {
    cJSON *inner = cJSON_DetachItemFromArray(o, 0);
    cJSON_Delete(o);
    o = inner;
    count = cJSON_GetArraySize(o);
  }
  if (count <= 0) {
    fprintf(stderr, "mxc logits: %s must hold a non-empty JSON list of token ids\n", path);
    cJSON_Delete(o);
    return -1;
  }
  *ids = malloc(sizeof **ids * (size_t)count);
  int i = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, o) {
    if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX ||
        e->valuedouble != (double)(int32_t)e->valuedouble) {
      fprintf(stderr, "mxc logits: %s: entry %d is not a token id\n", path, i);
      cJSON_Delete(o);
      return -1;
    }
    (*ids)[i++] = (int32_t)e->valuedouble;
  }
  *n = count;
  cJSON_Delete(o);
  return 0;
}

int mxc_cmd_logits(int argc, char **argv) {
  const char *model = NULL, *ids_path = NULL, *out = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout, 0);
    if (i + 1 >= argc) {
      fprintf(stderr, "mxc logits: %s needs a value (or is unknown)\n", argv[i]);
      return usage(stderr, 2);
    }
    if (!strcmp(argv[i], "--model")) model = argv[++i];
    else if (!strcmp(argv[i], "--ids")) ids_path = argv[++i];
    else if (!strcmp(argv[i], "--out")) out = argv[++i];
    else {
      fprintf(stderr, "mxc logits: unknown option %s\n", argv[i]);
      return usage(stderr, 2);
    }
  }
  if (!model || !ids_path || !out) return usage(stderr, 2);
  int32_t *ids = NULL;
  int n = 0;
  if (read_ids(ids_path, &ids, &n)) {
    free(ids);
    return 1;
  }
  char dir[4096];
  if (mxc__resolve_model(model, dir, sizeof dir)) {
    free(ids);
    return 1;
  }
  mx_lm_load_options lo = {.no_tokenizer = true};
  mx_lm_model *m = mx_lm_load(dir, &lo);
  int rc = 1;
  mx_array *t = NULL, *logits = NULL, *l2 = NULL, *l32 = NULL;
  if (!m) goto fail;
  int64_t V = mx_lm_get_config(m)->vocab_size;
  for (int i = 0; i < n; i++)
    if (ids[i] >= V) {
      fprintf(stderr, "mxc logits: id %d at %d is outside the vocabulary [0, %lld)\n", ids[i], i,
              (long long)V);
      goto done;
    }
  t = mx_array_from_data(ids, (int64_t[]){n}, 1, MX_INT32);
  logits = mx_lm_forward(m, t, NULL);
  l2 = logits ? mx_reshape(logits, (int64_t[]){n, V}, 2) : NULL;
  l32 = l2 ? mx_astype(l2, MX_FLOAT32) : NULL;
  if (!l32 || mx_save_npy(out, l32)) goto fail;
  fprintf(stderr, "mxc logits: wrote float32 [%d, %lld] to %s\n", n, (long long)V, out);
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "mxc: %s\n", mx_last_error());
done:
  mx_array_free(t);
  mx_array_free(logits);
  mx_array_free(l2);
  mx_array_free(l32);
  mx_lm_free(m);
  free(ids);
  return rc;
}
