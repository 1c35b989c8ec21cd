/* data.c — a text corpus as byte tokens, split into train / validation,
 * cut into (batch, seq) windows. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mxc/train.h"

struct mx_train_data {
  int32_t *ids;
  int64_t n, ntrain; /* train: [0, ntrain), validation: [ntrain, n) */
};

mx_train_data *mx_train_data_from_tokens(const int32_t *ids, int64_t n, double val_frac,
                                         int64_t seq) {
  if (!ids || n <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "train data: no tokens");
    return NULL;
  }
  if (!(val_frac >= 0.0 && val_frac < 1.0)) {
    mx__set_error(MX_ERR_INVALID_ARG, "train data: --val-frac must be in [0, 1), got %g", val_frac);
    return NULL;
  }
  if (seq < 1) {
    mx__set_error(MX_ERR_INVALID_ARG, "train data: --seq must be >= 1");
    return NULL;
  }
  int64_t nval = (int64_t)((double)n * val_frac);
  int64_t ntrain = n - nval;
  if (ntrain <= seq) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "train data: %lld training tokens are too few for --seq %lld (need more "
                  "than seq)", (long long)ntrain, (long long)seq);
    return NULL;
  }
  if (nval > 0 && nval <= seq) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "train data: the validation split has %lld tokens, too few for --seq %lld "
                  "(raise --val-frac, lower --seq, or use --val-frac 0)",
                  (long long)nval, (long long)seq);
    return NULL;
  }
  mx_train_data *d = calloc(1, sizeof *d);
  if (d) d->ids = malloc((size_t)n * sizeof *d->ids);
  if (!d || !d->ids) {
    free(d);
    mx__set_error(MX_ERR_OOM, "train data: out of memory");
    return NULL;
  }
  memcpy(d->ids, ids, (size_t)n * sizeof *ids);
  d->n = n;
  d->ntrain = ntrain;
  return d;
}

mx_train_data *mx_train_data_load(const char *path, double val_frac, int64_t seq) {
  if (!path) {
    mx__set_error(MX_ERR_INVALID_ARG, "train data: path is NULL");
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    mx__set_error(MX_ERR_IO, "train data: cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  while (buf) {
    if (n == cap) {
      unsigned char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  bool err = ferror(f);
  fclose(f);
  if (!buf || err) {
    free(buf);
    mx__set_error(err ? MX_ERR_IO : MX_ERR_OOM, "train data: cannot read %s", path);
    return NULL;
  }
  if (n == 0) {
    free(buf);
    mx__set_error(MX_ERR_INVALID_ARG, "train data: %s is empty", path);
    return NULL;
  }
  int32_t *ids = malloc(n * sizeof *ids);
  if (!ids) {
    free(buf);
    mx__set_error(MX_ERR_OOM, "train data: out of memory");
    return NULL;
  }
  for (size_t i = 0; i < n; i++) ids[i] = buf[i];
  free(buf);
  mx_train_data *d = mx_train_data_from_tokens(ids, (int64_t)n, val_frac, seq);
  free(ids);
  if (!d) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mx_last_error());
    mx__set_error(mx_last_status(), "%s (in %s)", msg, path);
  }
  return d;
}

void mx_train_data_free(mx_train_data *d) {
  if (!d) return;
  free(d->ids);
  free(d);
}

int64_t mx_train_data_size(const mx_train_data *d, bool val) {
  if (!d) return 0;
  return val ? d->n - d->ntrain : d->ntrain;
}

static uint64_t mix(uint64_t x) { /* splitmix64 */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

int mx_train_data_batch(const mx_train_data *d, bool val, uint64_t seed, int64_t step, int micro,
                        int64_t batch, int64_t seq, mx_array **x, mx_array **y) {
  if (!d || !x || !y || batch < 1 || seq < 1)
    return mx__set_error(MX_ERR_INVALID_ARG, "train data batch: bad arguments");
  *x = *y = NULL;
  const int32_t *base = val ? d->ids + d->ntrain : d->ids;
  int64_t n = val ? d->n - d->ntrain : d->ntrain;
  if (n <= seq)
    return mx__set_error(MX_ERR_INVALID_ARG, "train data batch: the %s split is too small",
                         val ? "validation" : "training");
  int64_t nstarts = n - seq; /* window [s, s + seq] inclusive of the target */
  int32_t *bx = malloc((size_t)(batch * seq) * sizeof *bx);
  int32_t *by = malloc((size_t)(batch * seq) * sizeof *by);
  if (!bx || !by) {
    free(bx);
    free(by);
    return mx__set_error(MX_ERR_OOM, "train data batch: out of memory");
  }
  uint64_t h = mix(mix(mix(seed) ^ (uint64_t)step) ^ (uint64_t)micro);
  for (int64_t b = 0; b < batch; b++) {
    int64_t s;
    if (val) {
      int64_t nwin = nstarts / seq + 1;
      s = ((step * batch + b) % nwin) * seq;
      if (s > nstarts - 1) s = nstarts - 1;
    } else {
      h = mix(h + (uint64_t)b);
      s = (int64_t)(h % (uint64_t)nstarts);
    }
    memcpy(bx + b * seq, base + s, (size_t)seq * sizeof *bx);
    memcpy(by + b * seq, base + s + 1, (size_t)seq * sizeof *by);
  }
  int64_t shape[2] = {batch, seq};
  *x = mx_array_from_data(bx, shape, 2, MX_INT32);
  *y = mx_array_from_data(by, shape, 2, MX_INT32);
  free(bx);
  free(by);
  if (!*x || !*y) {
    mx_array_free(*x);
    mx_array_free(*y);
    *x = *y = NULL;
    return mx_last_status();
  }
  return MX_OK;
}
