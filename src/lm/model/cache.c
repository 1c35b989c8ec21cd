/* cache.c — the KV caches (mlx-lm's KVCache and RotatingKVCache) and
 * prompt cache files (mlx-lm's save_prompt_cache / load_prompt_cache).
 *
 * A rotating cache keeps, next to its buffers, the position each slot holds
 * (pos): the attention mask of a layer with a sliding window, and of a
 * multi-token update, is built from it. Every update is first planned once
 * (mx__lm_plan_make: which old slots survive, in which order, where the new
 * keys go), then applied to each layer's keys and values, then committed. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"
#include "mxc/ops.h"

#define MX_LM_CACHE_STEP 256

/* ---- creation ---------------------------------------------------------------------- */

static mx_lm_cache *cache_alloc(const mx_lm_model *m, const char *who) {
  if (!m) {
    mx__set_error(MX_ERR_INVALID_ARG, "%s: model is NULL", who);
    return NULL;
  }
  mx_lm_cache *c = calloc(1, sizeof *c);
  int n = (int)m->config.num_hidden_layers;
  if (c) {
    c->nlayers = n;
    c->keys = calloc((size_t)n, sizeof *c->keys);
    c->values = calloc((size_t)n, sizeof *c->values);
  }
  if (!c || !c->keys || !c->values) {
    mx_lm_cache_free(c);
    mx__set_error(MX_ERR_OOM, "%s: out of memory", who);
    return NULL;
  }
  return c;
}

mx_lm_cache *mx_lm_cache_new(const mx_lm_model *m) { return cache_alloc(m, "lm_cache_new"); }

mx_lm_cache *mx_lm_cache_new_rotating(const mx_lm_model *m, int64_t max_size, int64_t keep) {
  if (max_size <= 0 || keep < 0 || keep >= max_size) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "lm_cache_new_rotating: need max_size > keep >= 0 (got max_size %lld, keep "
                  "%lld)", (long long)max_size, (long long)keep);
    return NULL;
  }
  mx_lm_cache *c = cache_alloc(m, "lm_cache_new_rotating");
  if (c) {
    c->max_size = max_size;
    c->keep = keep;
  }
  return c;
}

void mx_lm_cache_free(mx_lm_cache *c) {
  if (!c) return;
  for (int i = 0; c->keys && i < c->nlayers; i++) mx_array_free(c->keys[i]);
  for (int i = 0; c->values && i < c->nlayers; i++) mx_array_free(c->values[i]);
  free(c->keys);
  free(c->values);
  free(c->pos);
  free(c);
}

int64_t mx_lm_cache_offset(const mx_lm_cache *c) { return c ? c->offset : 0; }
int64_t mx_lm_cache_max_size(const mx_lm_cache *c) { return c ? c->max_size : 0; }

int64_t mx_lm_cache_size(const mx_lm_cache *c) {
  if (!c) return 0;
  if (!c->max_size) return c->offset;
  return c->offset < c->max_size ? c->offset : c->max_size;
}

int mx_lm_cache_eval(mx_lm_cache *c) {
  if (!c) return MX_OK;
  for (int i = 0; i < c->nlayers; i++) {
    mx_array *kv[2] = {c->keys[i], c->values[i]};
    if (kv[0] && kv[1]) {
      int st = mx_eval(kv, 2);
      if (st) return st;
    }
  }
  return MX_OK;
}

mx_dtype mx__lm_model_dtype(const mx_lm_model *m) {
  mx_nn_module *e = mx_nn_get(m->root, "model.embed_tokens");
  mx_array *w = e ? mx_nn_param(e, "scales") : NULL;
  if (!w && e) w = mx_nn_param(e, "weight");
  return w ? mx_array_dtype(w) : MX_FLOAT32;
}

/* ---- the plain cache: written in place, grown by 256 positions ---------------------- */
/* (the first update takes the prompt's keys as they are: see below) */

mx_array *mx__lm_cache_put(mx_array **buf, mx_array *x, int64_t offset, bool own) {
  const int64_t *s = mx_array_shape(x);
  int64_t T = s[2];
  if (!*buf && offset == 0) {
    /* the first update (a prompt): the buffer is x itself, or a copy of
     * it, exactly T long — no zeros written and copied over; the next
     * update grows it */
    mx_array *b = own ? mx_array_retain(x) : mx_copy(x);
    if (!b) return NULL;
    *buf = b;
    return mx_array_retain(b);
  }
  if (!*buf || offset + T > mx_array_dim(*buf, 2)) {
    int64_t extra = (T + MX_LM_CACHE_STEP - 1) / MX_LM_CACHE_STEP * MX_LM_CACHE_STEP;
    mx_array *z = mx_zeros((int64_t[]){s[0], s[1], extra, s[3]}, 4, mx_array_dtype(x));
    mx_array *grown;
    if (*buf) {
      mx_array *kept = mx_slice_axis(*buf, 2, 0, offset, 1);
      grown = mx_concatenate((mx_array *[]){kept, z}, 2, 2);
      mx_array_free(kept);
    } else {
      grown = mx_array_retain(z);
    }
    mx_array_free(z);
    if (!grown) return NULL;
    mx_array_free(*buf);
    *buf = grown;
  }
  int64_t start[4] = {0, 0, offset, 0}, stop[4] = {s[0], s[1], offset + T, s[3]};
  mx_array *upd = mx_slice_update(*buf, x, start, stop, NULL, 4);
  if (!upd) return NULL;
  mx_array_free(*buf);
  *buf = upd;
  return mx_slice_axis(upd, 2, 0, offset + T, 1);
}

/* ---- the rotating cache: plans -------------------------------------------------------- */

static int64_t seg_len(const mx__lm_seg *s, int64_t T) { return s->kind == MX__SEG_NEW ? T : s->b - s->a; }

static void seg_push(mx__lm_seg *dst, int *n, mx__lm_seg s) {
  if (s.kind != MX__SEG_NEW && s.b <= s.a) return;
  MX_ASSERT(*n < MX__LM_MAX_SEGS);
  dst[(*n)++] = s;
}

/* Appends slots [a, b) of the concatenation src[0..n) to dst. */
static void seg_sub(const mx__lm_seg *src, int n, int64_t a, int64_t b, int64_t T, mx__lm_seg *dst,
                    int *nd) {
  int64_t at = 0;
  for (int i = 0; i < n && at < b; i++) {
    int64_t len = seg_len(&src[i], T), lo = a > at ? a : at, hi = b < at + len ? b : at + len;
    if (lo < hi) {
      MX_ASSERT(src[i].kind == MX__SEG_OLD); /* only old slots are ever trimmed */
      seg_push(dst, nd, (mx__lm_seg){MX__SEG_OLD, src[i].a + lo - at, src[i].a + hi - at});
    }
    at += len;
  }
}

static int64_t segs_len(const mx__lm_seg *s, int n, int64_t T) {
  int64_t t = 0;
  for (int i = 0; i < n; i++) t += seg_len(&s[i], T);
  return t;
}

/* Keeps the first `keep` slots and those from trim + keep on (mlx-lm's _trim). */
static void trim_segs(mx__lm_plan *p, int64_t trim, int64_t keep, int64_t T) {
  int64_t len = segs_len(p->segs, p->nsegs, T);
  mx__lm_seg out[MX__LM_MAX_SEGS];
  int n = 0;
  seg_sub(p->segs, p->nsegs, 0, keep, T, out, &n);
  seg_sub(p->segs, p->nsegs, trim + keep, len, T, out, &n);
  memcpy(p->segs, out, sizeof out);
  p->nsegs = n;
}

int mx__lm_plan_make(const mx_lm_cache *c, int64_t T, mx__lm_plan *p) {
  memset(p, 0, sizeof *p);
  int64_t L = c->keys[0] ? c->len : 0, M = c->max_size, K = c->keep, off = c->offset,
          idx = c->idx;
  p->write_at = -1;
  if (L) seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, 0, L});
  if (T > 1) { /* _update_concat */
    if (L) {
      p->nsegs = 0; /* the slots in temporal order */
      if (idx == L) {
        seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, 0, L});
      } else if (idx < off) {
        seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, 0, K});
        seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, idx, L});
        seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, K, idx});
      } else {
        seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_OLD, 0, idx});
      }
      int64_t trim = segs_len(p->segs, p->nsegs, T) - M + 1;
      if (trim > 0) trim_segs(p, trim, K, T);
    }
    seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_NEW, 0, T});
    p->new_len = p->view = p->new_idx = segs_len(p->segs, p->nsegs, T);
    p->window = true;
  } else { /* _update_in_place */
    int64_t cur = L, cidx = idx;
    if (!L || (off >= L && L < M)) {
      int64_t ns = M - off < MX_LM_CACHE_STEP ? M - off : MX_LM_CACHE_STEP;
      seg_push(p->segs, &p->nsegs, (mx__lm_seg){MX__SEG_ZEROS, 0, ns});
      cur += ns;
      cidx = off;
    }
    if (cur - M > 0) {
      trim_segs(p, cur - M, K, T);
      cur = M;
      cidx = M;
    }
    if (cidx == M) cidx = K;
    p->write_at = cidx;
    p->new_idx = cidx + 1;
    p->new_len = cur;
    p->view = off + 1 < M ? off + 1 : cur;
  }
  p->identity = L && p->nsegs == 1 && p->segs[0].kind == MX__SEG_OLD && p->segs[0].a == 0 &&
                p->segs[0].b == L;
  /* the positions of the new slots */
  p->pos = malloc(sizeof *p->pos * (size_t)(p->new_len > 0 ? p->new_len : 1));
  if (!p->pos) return mx__set_error(MX_ERR_OOM, "lm cache: out of memory");
  int64_t at = 0;
  for (int i = 0; i < p->nsegs; i++) {
    const mx__lm_seg *s = &p->segs[i];
    for (int64_t j = 0; j < seg_len(s, T); j++)
      p->pos[at++] = s->kind == MX__SEG_OLD ? c->pos[s->a + j] : s->kind == MX__SEG_NEW ? off + j : -1;
  }
  MX_ASSERT(at == p->new_len);
  if (p->write_at >= 0)
    for (int64_t j = 0; j < T; j++) p->pos[p->write_at + j] = off + j;
  return MX_OK;
}

mx_array *mx__lm_plan_apply(const mx_lm_cache *c, const mx__lm_plan *p, mx_array **buf,
                            mx_array *x) {
  const int64_t *s = mx_array_shape(x);
  int64_t T = s[2];
  if (!p->identity) {
    mx_array *parts[MX__LM_MAX_SEGS] = {0};
    bool ok = true;
    for (int i = 0; i < p->nsegs; i++) {
      const mx__lm_seg *g = &p->segs[i];
      if (g->kind == MX__SEG_OLD)
        parts[i] = mx_slice_axis(*buf, 2, g->a, g->b, 1);
      else if (g->kind == MX__SEG_ZEROS)
        parts[i] = mx_zeros((int64_t[]){s[0], s[1], g->b - g->a, s[3]}, 4, mx_array_dtype(x));
      else
        parts[i] = mx_array_retain(x);
      ok &= parts[i] != NULL;
    }
    mx_array *nb = !ok ? NULL
                   : p->nsegs == 1 ? mx_array_retain(parts[0])
                                   : mx_concatenate(parts, p->nsegs, 2);
    for (int i = 0; i < p->nsegs; i++) mx_array_free(parts[i]);
    if (!nb) return NULL;
    mx_array_free(*buf);
    *buf = nb;
  }
  if (p->write_at >= 0) {
    int64_t start[4] = {0, 0, p->write_at, 0}, stop[4] = {s[0], s[1], p->write_at + T, s[3]};
    mx_array *upd = mx_slice_update(*buf, x, start, stop, NULL, 4);
    if (!upd) return NULL;
    mx_array_free(*buf);
    *buf = upd;
  }
  (void)c;
  if (p->view == mx_array_dim(*buf, 2)) return mx_array_retain(*buf);
  return mx_slice_axis(*buf, 2, 0, p->view, 1);
}

int mx__lm_plan_commit(mx_lm_cache *c, mx__lm_plan *p, int64_t T) {
  (void)T;
  free(c->pos);
  c->pos = p->pos;
  p->pos = NULL;
  c->len = p->new_len;
  c->idx = p->new_idx;
  return MX_OK;
}

void mx__lm_plan_free(mx__lm_plan *p) {
  if (!p) return;
  free(p->pos);
  p->pos = NULL;
}

/* ---- prompt cache files ------------------------------------------------------------- */

static int set_str(mx_metadata *md, const char *key, const char *val) {
  return mx_metadata_set_string(md, key, val);
}

int mx_lm_cache_save(mx_lm_cache *c, const char *path, const mx_metadata *metadata) {
  if (!c || !path) return mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_save: cache or path is NULL");
  if (!c->offset || !c->keys[0])
    return mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_save: %s: the cache is empty", path);
  mx_map *arrays = mx_map_new();
  mx_metadata *md = mx_metadata_new();
  int st = arrays && md ? MX_OK : mx__set_error(MX_ERR_OOM, "lm_cache_save: out of memory");
  /* the filled slots: all of them once a rotating cache is full */
  int64_t slots = mx_array_dim(c->keys[0], 2);
  int64_t n = c->max_size ? (c->offset < slots ? c->offset : slots) : c->offset;
  char key[64], val[64];
  for (int i = 0; i < c->nlayers && !st; i++) {
    if (!c->keys[i] || !c->values[i]) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_save: %s: layer %d is empty", path, i);
      break;
    }
    mx_array *kv[2] = {c->keys[i], c->values[i]};
    for (int j = 0; j < 2 && !st; j++) {
      snprintf(key, sizeof key, "%d.%d", i, j);
      mx_array *a = n == mx_array_dim(kv[j], 2) ? mx_array_retain(kv[j])
                                                : mx_slice_axis(kv[j], 2, 0, n, 1);
      st = a ? mx_map_set_take(arrays, key, a) : mx_last_status();
    }
    if (c->max_size) {
      int64_t ms[4] = {c->keep, c->max_size, c->offset, c->idx};
      for (int j = 0; j < 4 && !st; j++) {
        snprintf(key, sizeof key, "0.%d.%d", i, j);
        snprintf(val, sizeof val, "%lld", (long long)ms[j]);
        st = set_str(md, key, val);
      }
    } else if (!st) {
      snprintf(key, sizeof key, "0.%d", i);
      st = set_str(md, key, "");
    }
    snprintf(key, sizeof key, "2.%d", i);
    if (!st) st = set_str(md, key, c->max_size ? "RotatingKVCache" : "KVCache");
  }
  for (int64_t i = 0; metadata && i < mx_metadata_size(metadata) && !st; i++) {
    const mx_meta_value *v = mx_metadata_value(metadata, i);
    if (v->type != MX_META_STRING) {
      st = mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_save: metadata \"%s\" is not a string",
                         mx_metadata_key(metadata, i));
      break;
    }
    char *k = malloc(strlen(mx_metadata_key(metadata, i)) + 3);
    if (!k) {
      st = mx__set_error(MX_ERR_OOM, "lm_cache_save: out of memory");
      break;
    }
    sprintf(k, "1.%s", mx_metadata_key(metadata, i));
    st = set_str(md, k, v->v.str.data);
    free(k);
  }
  if (!st) st = mx_save_safetensors(path, arrays, md);
  mx_map_free(arrays);
  mx_metadata_free(md);
  return st;
}

/* The integer string s into *out (false when it is not one). */
static bool parse_i64(const char *s, int64_t *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end) return false;
  *out = v;
  return true;
}

/* Rebuilds the positions of a loaded rotating cache's L slots: the first
 * keep are positions 0.., the others the last L - keep positions, oldest at
 * slot idx (the ring's next write) when the ring has wrapped. */
static int rebuild_pos(mx_lm_cache *c, int64_t L) {
  c->pos = malloc(sizeof *c->pos * (size_t)L);
  if (!c->pos) return mx__set_error(MX_ERR_OOM, "lm_cache_load: out of memory");
  c->len = L;
  if (c->offset <= L) {
    for (int64_t j = 0; j < L; j++) c->pos[j] = j;
    return MX_OK;
  }
  int64_t K = c->keep, next = c->offset - (L - K);
  for (int64_t j = 0; j < K; j++) c->pos[j] = j;
  for (int64_t j = c->idx; j < L; j++) c->pos[j] = next++;
  for (int64_t j = K; j < c->idx; j++) c->pos[j] = next++;
  return MX_OK;
}

static int load_into(mx_lm_cache **out, const mx_lm_model *m, const char *path, mx_map *arrays,
                     const mx_metadata *md) {
  const mx_lm_config *cfg = &m->config;
  char key[64];
  int n = 0;
  for (;; n++) {
    snprintf(key, sizeof key, "2.%d", n);
    if (!mx_metadata_get(md, key)) break;
  }
  if (n == 0)
    return mx__set_error(MX_ERR_FORMAT,
                         "%s: not a prompt cache file (no cache classes \"2.<layer>\" in its "
                         "metadata)", path);
  if (n != cfg->num_hidden_layers)
    return mx__set_error(MX_ERR_INVALID_ARG, "%s: the cache has %d layers, the model %lld", path,
                         n, (long long)cfg->num_hidden_layers);
  const char *cls = mx_metadata_get_string(md, "2.0");
  bool rotating = cls && !strcmp(cls, "RotatingKVCache");
  if (!cls || (!rotating && strcmp(cls, "KVCache")))
    return mx__set_error(MX_ERR_UNSUPPORTED,
                         "%s: cache class \"%s\" is not supported (KVCache, RotatingKVCache)",
                         path, cls ? cls : "(not a string)");
  int64_t ms[4] = {0}, shape0[4] = {0};
  mx_dtype want = mx__lm_model_dtype(m);
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "2.%d", i);
    const char *ci = mx_metadata_get_string(md, key);
    if (!ci || strcmp(ci, cls))
      return mx__set_error(MX_ERR_UNSUPPORTED,
                           "%s: layer %d's cache class \"%s\" differs from layer 0's \"%s\"",
                           path, i, ci ? ci : "", cls);
    mx_array *kv[2];
    for (int j = 0; j < 2; j++) {
      snprintf(key, sizeof key, "%d.%d", i, j);
      kv[j] = mx_map_get(arrays, key);
      if (!kv[j])
        return mx__set_error(MX_ERR_FORMAT, "%s: tensor \"%s\" (layer %d's %s) is missing", path,
                             key, i, j ? "values" : "keys");
      const int64_t *s = mx_array_shape(kv[j]);
      if (mx_array_ndim(kv[j]) != 4 || s[2] < 1)
        return mx__set_error(MX_ERR_FORMAT,
                             "%s: tensor \"%s\" must be (batch, kv_heads, positions, head_dim)",
                             path, key);
      if (s[1] != cfg->num_key_value_heads)
        return mx__set_error(MX_ERR_INVALID_ARG, "%s: tensor \"%s\" has %lld kv heads, the model "
                             "%lld", path, key, (long long)s[1],
                             (long long)cfg->num_key_value_heads);
      if (s[3] != cfg->head_dim)
        return mx__set_error(MX_ERR_INVALID_ARG, "%s: tensor \"%s\" has head_dim %lld, the model "
                             "%lld", path, key, (long long)s[3], (long long)cfg->head_dim);
      if (mx_array_dtype(kv[j]) != want)
        return mx__set_error(MX_ERR_DTYPE, "%s: tensor \"%s\" is %s, the model computes in %s",
                             path, key, mx_dtype_name(mx_array_dtype(kv[j])), mx_dtype_name(want));
      if (i == 0 && j == 0) memcpy(shape0, s, sizeof shape0);
      if (s[0] != shape0[0] || s[2] != shape0[2])
        return mx__set_error(MX_ERR_FORMAT,
                             "%s: tensor \"%s\" is (%lld, _, %lld, _), layer 0's keys (%lld, _, "
                             "%lld, _)", path, key, (long long)s[0], (long long)s[2],
                             (long long)shape0[0], (long long)shape0[2]);
    }
    if (rotating) {
      for (int j = 0; j < 4; j++) {
        snprintf(key, sizeof key, "0.%d.%d", i, j);
        int64_t v;
        if (!parse_i64(mx_metadata_get_string(md, key), &v))
          return mx__set_error(MX_ERR_FORMAT, "%s: metadata \"%s\" must be an integer string",
                               path, key);
        if (i > 0 && v != ms[j])
          return mx__set_error(MX_ERR_FORMAT, "%s: metadata \"%s\" differs from layer 0's", path,
                               key);
        ms[j] = v;
      }
    }
  }
  int64_t L = shape0[2];
  mx_lm_cache *c;
  if (rotating) {
    int64_t keep = ms[0], max_size = ms[1], offset = ms[2], idx = ms[3];
    bool ok = max_size > keep && keep >= 0 && offset >= L &&
              (offset == L || (keep < L && idx >= keep && idx <= L && L <= max_size + offset));
    if (!ok)
      return mx__set_error(MX_ERR_FORMAT,
                           "%s: inconsistent RotatingKVCache state (keep %lld, max_size %lld, "
                           "offset %lld, index %lld, %lld positions stored)", path,
                           (long long)keep, (long long)max_size, (long long)offset,
                           (long long)idx, (long long)L);
    if (!(c = mx_lm_cache_new_rotating(m, max_size, keep))) return mx_last_status();
    c->offset = offset;
    c->idx = offset == L ? L : idx;
    int st = rebuild_pos(c, L);
    if (st) {
      mx_lm_cache_free(c);
      return st;
    }
  } else {
    if (!(c = mx_lm_cache_new(m))) return mx_last_status();
    c->offset = L;
  }
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "%d.0", i);
    c->keys[i] = mx_array_retain(mx_map_get(arrays, key));
    snprintf(key, sizeof key, "%d.1", i);
    c->values[i] = mx_array_retain(mx_map_get(arrays, key));
  }
  *out = c;
  return MX_OK;
}

mx_lm_cache *mx_lm_cache_load(const mx_lm_model *m, const char *path, mx_metadata **metadata) {
  if (metadata) *metadata = NULL;
  if (!m || !path) {
    mx__set_error(MX_ERR_INVALID_ARG, "lm_cache_load: model or path is NULL");
    return NULL;
  }
  mx_map *arrays = NULL;
  mx_metadata *md = NULL;
  /* copied, not mapped: the cache's buffers are updated in place */
  mx_load_options lo = {.format = MX_FORMAT_SAFETENSORS, .copy = true};
  mx_lm_cache *c = NULL;
  int st = mx_load_ex(path, &lo, &arrays, &md);
  if (!st && !md) st = mx__set_error(MX_ERR_FORMAT, "%s: not a prompt cache file (no metadata)", path);
  if (!st) st = load_into(&c, m, path, arrays, md);
  if (!st && metadata) {
    mx_metadata *user = mx_metadata_new();
    for (int64_t i = 0; user && i < mx_metadata_size(md) && !st; i++) {
      const char *k = mx_metadata_key(md, i);
      if (!strncmp(k, "1.", 2)) st = mx_metadata_set(user, k + 2, mx_metadata_value(md, i));
    }
    if (!user) st = mx__set_error(MX_ERR_OOM, "lm_cache_load: out of memory");
    if (st) mx_metadata_free(user);
    else *metadata = user;
  }
  if (st) {
    mx_lm_cache_free(c);
    c = NULL;
  }
  mx_map_free(arrays);
  mx_metadata_free(md);
  return c;
}
