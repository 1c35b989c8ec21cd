/* map.c — insertion-ordered name -> array map (see mxc/map.h).
 *
 * Entries live in an array in insertion order; an open-addressing hash
 * table of entry indices (linear probing, power-of-two size, at most half
 * full) gives O(1) lookups. Removal compacts the entry array and rebuilds
 * the table (removal is rare: parameter maps are built once). */
#include <string.h>

#include "array_impl.h"
#include "mxc/map.h"

typedef struct {
  char *key;
  uint64_t hash;
  mx_array *value;
} entry;

struct mx_map {
  entry *e;
  int n, cap;
  int *slots; /* entry index, or -1 */
  int nslots; /* power of two, >= 2 * n */
};

static uint64_t hash_str(const char *s) { /* FNV-1a */
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

mx_map *mx_map_new(void) {
  mx_map *m = calloc(1, sizeof *m);
  if (!m) mx__set_error(MX_ERR_OOM, "map: out of memory");
  return m;
}

void mx_map_clear(mx_map *m) {
  if (!m) return;
  for (int i = 0; i < m->n; i++) {
    free(m->e[i].key);
    mx_array_free(m->e[i].value);
  }
  m->n = 0;
  for (int i = 0; i < m->nslots; i++) m->slots[i] = -1;
}

void mx_map_free(mx_map *m) {
  if (!m) return;
  mx_map_clear(m);
  free(m->e);
  free(m->slots);
  free(m);
}

/* Index of key's entry or -1; *slot gets the slot where it is or would go. */
static int find(const mx_map *m, const char *key, uint64_t h, int *slot) {
  if (!m->nslots) {
    if (slot) *slot = -1;
    return -1;
  }
  int mask = m->nslots - 1;
  for (int s = (int)(h & (uint64_t)mask);; s = (s + 1) & mask) {
    int i = m->slots[s];
    if (i < 0) {
      if (slot) *slot = s;
      return -1;
    }
    if (m->e[i].hash == h && !strcmp(m->e[i].key, key)) {
      if (slot) *slot = s;
      return i;
    }
  }
}

static int rebuild(mx_map *m, int nslots) {
  int *ns = malloc(sizeof *ns * (size_t)nslots);
  if (!ns) return mx__set_error(MX_ERR_OOM, "map: out of memory");
  for (int i = 0; i < nslots; i++) ns[i] = -1;
  free(m->slots);
  m->slots = ns;
  m->nslots = nslots;
  int mask = nslots - 1;
  for (int i = 0; i < m->n; i++) {
    int s = (int)(m->e[i].hash & (uint64_t)mask);
    while (ns[s] >= 0) s = (s + 1) & mask;
    ns[s] = i;
  }
  return MX_OK;
}

static int set_ref(mx_map *m, const char *key, mx_array *value) {
  uint64_t h = hash_str(key);
  int i = find(m, key, h, NULL);
  if (i >= 0) {
    mx_array_free(m->e[i].value);
    m->e[i].value = value;
    return MX_OK;
  }
  if (m->n == m->cap) {
    int nc = m->cap ? m->cap * 2 : 16;
    entry *ne = realloc(m->e, sizeof *ne * (size_t)nc);
    if (!ne) return mx__set_error(MX_ERR_OOM, "map: out of memory");
    m->e = ne;
    m->cap = nc;
  }
  char *k = strdup(key);
  if (!k) return mx__set_error(MX_ERR_OOM, "map: out of memory");
  if (2 * (m->n + 1) > m->nslots && rebuild(m, m->nslots ? m->nslots * 2 : 32)) {
    free(k);
    return mx_last_status();
  }
  int slot;
  find(m, key, h, &slot);
  m->e[m->n] = (entry){k, h, value};
  m->slots[slot] = m->n++;
  return MX_OK;
}

int mx_map_set(mx_map *m, const char *key, mx_array *value) {
  if (!m || !key || !value)
    return mx__set_error(MX_ERR_INVALID_ARG, "map_set: %s is NULL",
                         !m ? "map" : !key ? "key" : "value");
  int st = set_ref(m, key, mx_array_retain(value));
  if (st) mx_array_free(value);
  return st;
}

int mx_map_set_take(mx_map *m, const char *key, mx_array *value) {
  if (!value) {
    int st = mx_last_status();
    return st ? st : mx__set_error(MX_ERR_INVALID_ARG, "map_set: value for '%s' is NULL",
                                   key ? key : "(null)");
  }
  if (!m || !key) {
    mx_array_free(value);
    return mx__set_error(MX_ERR_INVALID_ARG, "map_set: %s is NULL", !m ? "map" : "key");
  }
  int st = set_ref(m, key, value);
  if (st) mx_array_free(value);
  return st;
}

mx_array *mx_map_get(const mx_map *m, const char *key) {
  if (!m || !key) {
    mx__set_error(MX_ERR_INVALID_ARG, "map_get: %s is NULL", !m ? "map" : "key");
    return NULL;
  }
  int i = find(m, key, hash_str(key), NULL);
  if (i < 0) {
    mx__set_error(MX_ERR_NOT_FOUND, "map: no key '%s'", key);
    return NULL;
  }
  return m->e[i].value;
}

bool mx_map_has(const mx_map *m, const char *key) {
  return m && key && find(m, key, hash_str(key), NULL) >= 0;
}

int mx_map_remove(mx_map *m, const char *key) {
  if (!m || !key) return mx__set_error(MX_ERR_INVALID_ARG, "map_remove: NULL argument");
  int i = find(m, key, hash_str(key), NULL);
  if (i < 0) return mx__set_error(MX_ERR_NOT_FOUND, "map: no key '%s'", key);
  free(m->e[i].key);
  mx_array_free(m->e[i].value);
  memmove(&m->e[i], &m->e[i + 1], sizeof *m->e * (size_t)(m->n - i - 1));
  m->n--;
  /* same table size: cannot fail for lack of memory once allocated before */
  int *old = m->slots;
  int mask = m->nslots - 1;
  for (int s = 0; s < m->nslots; s++) old[s] = -1;
  for (int j = 0; j < m->n; j++) {
    int s = (int)(m->e[j].hash & (uint64_t)mask);
    while (old[s] >= 0) s = (s + 1) & mask;
    old[s] = j;
  }
  return MX_OK;
}

int mx_map_size(const mx_map *m) { return m ? m->n : 0; }

const char *mx_map_key(const mx_map *m, int i) {
  if (!m || i < 0 || i >= m->n) {
    mx__set_error(MX_ERR_RANGE, "map_key: index %d out of range", i);
    return NULL;
  }
  return m->e[i].key;
}

mx_array *mx_map_value(const mx_map *m, int i) {
  if (!m || i < 0 || i >= m->n) {
    mx__set_error(MX_ERR_RANGE, "map_value: index %d out of range", i);
    return NULL;
  }
  return m->e[i].value;
}

mx_map *mx_map_copy(const mx_map *m) {
  if (!m) {
    mx__set_error(MX_ERR_INVALID_ARG, "map_copy: map is NULL");
    return NULL;
  }
  mx_map *c = mx_map_new();
  for (int i = 0; c && i < m->n; i++)
    if (mx_map_set(c, m->e[i].key, m->e[i].value)) {
      mx_map_free(c);
      c = NULL;
    }
  return c;
}

int mx_map_eval(mx_map *m) {
  if (!m) return mx__set_error(MX_ERR_INVALID_ARG, "map_eval: map is NULL");
  if (!m->n) return MX_OK;
  mx_array **v = malloc(sizeof *v * (size_t)m->n);
  if (!v) return mx__set_error(MX_ERR_OOM, "map_eval: out of memory");
  /* Insertion order: mx_eval visits roots last to first, so for a map of
   * gradients (parameters in forward order) evaluation starts from the last
   * layer and each layer's activations are freed once its gradient exists. */
  for (int i = 0; i < m->n; i++) v[i] = m->e[i].value;
  int st = mx_eval(v, m->n);
  free(v);
  return st;
}
