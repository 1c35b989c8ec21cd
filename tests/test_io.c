/* test_io.c — safetensors, npy/npz, GGUF: round trips, files NumPy wrote,
 * format-spec checks, GGUF quantized blocks, and every malformed-input
 * error class.
 *
 * MXC_IO_EXPORT_DIR=DIR keeps the files the round-trip tests write in DIR,
 * for `tests/gen/gen_io_fixtures.py --check DIR` (NumPy loads them). */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/io_internal.h"
#include "mxc/mxc.h"
#include "test.h"

#define FIX MXC_SOURCE_DIR "/tests/fixtures/io/"

/* ---- helpers ------------------------------------------------------------------ */

static char g_dir[512];

static const char *tmpdir(void) {
  if (g_dir[0]) return g_dir;
  const char *e = getenv("MXC_IO_EXPORT_DIR");
  if (e && *e) {
    mkdir(e, 0755);
    snprintf(g_dir, sizeof g_dir, "%s", e);
  } else {
    snprintf(g_dir, sizeof g_dir, "/tmp/mxc_test_io_XXXXXX");
    if (!mkdtemp(g_dir)) g_dir[0] = 0;
  }
  return g_dir;
}

static const char *tpath(const char *name) {
  static char buf[8][768];
  static int k;
  char *b = buf[k++ % 8];
  snprintf(b, sizeof buf[0], "%s/%s", tmpdir(), name);
  return b;
}

/* Fixture values by flat index k (same formula as gen_io_fixtures.py). */
static double fval(mx_dtype dt, int64_t k) {
  if (dt == MX_BOOL) return k % 3 == 0;
  if (mx_dtype_is_float(dt)) return (double)(k - 7) * 0.25;
  if (mx_dtype_is_signed(dt)) return (double)(k * 3 - 20);
  return (double)(k * 3);
}

static mx_array *make(mx_dtype dt, const int64_t *shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  size_t es = mx_dtype_size(dt);
  uint8_t *buf = calloc((size_t)(n ? n : 1), es);
  for (int64_t k = 0; k < n; k++) {
    double v = fval(dt, k % 24); /* periodic so large arrays stay exact */
    uint8_t *p = buf + k * (int64_t)es;
    switch (dt) {
      case MX_BOOL: case MX_UINT8: *p = (uint8_t)v; break;
      case MX_UINT32: *(uint32_t *)p = (uint32_t)v; break;
      case MX_INT32: *(int32_t *)p = (int32_t)v; break;
      case MX_INT64: *(int64_t *)p = (int64_t)v; break;
      case MX_FLOAT16: *(uint16_t *)p = mx__f32_to_f16((float)v); break;
      case MX_BFLOAT16: *(uint16_t *)p = mx__f32_to_bf16((float)v); break;
      case MX_FLOAT32: *(float *)p = (float)v; break;
      case MX_FLOAT64: *(double *)p = v; break;
      default: break;
    }
  }
  mx_array *a = mx_array_from_data(buf, shape, ndim, dt);
  free(buf);
  return a;
}

static const int64_t SHAPE3[3] = {2, 3, 4};

/* Checks a loaded array: dtype, shape (2,3,4) and the fixture values. */
static void check_fixture(mx_array *a, mx_dtype dt) {
  ASSERT_NOT_NULL(a);
  ASSERT_EQ_INT(mx_array_dtype(a), dt);
  ASSERT_EQ_INT(mx_array_ndim(a), 3);
  for (int i = 0; i < 3; i++) ASSERT_EQ_INT(mx_array_shape(a)[i], SHAPE3[i]);
  double v[24];
  ASSERT_OK(mx_array_copy_to(a, MX_FLOAT64, v, 24));
  for (int k = 0; k < 24; k++) ASSERT_NEAR(v[k], fval(dt, k), 0);
}

static bool same_array(mx_array *a, mx_array *b) {
  if (mx_array_dtype(a) != mx_array_dtype(b) || mx_array_ndim(a) != mx_array_ndim(b))
    return false;
  for (int i = 0; i < mx_array_ndim(a); i++)
    if (mx_array_shape(a)[i] != mx_array_shape(b)[i]) return false;
  size_t n = mx_array_nbytes(a);
  if (!n) return mx_array_nbytes(b) == 0;
  const void *pa = mx_array_data(a), *pb = mx_array_data(b);
  return pa && pb && !memcmp(pa, pb, n);
}

static const mx_dtype ALL_DTYPES[] = {MX_BOOL,    MX_UINT8,    MX_UINT32,  MX_INT32, MX_INT64,
                                      MX_FLOAT16, MX_BFLOAT16, MX_FLOAT32, MX_FLOAT64};
#define N_DTYPES 9

/* A map with every dtype (2,3,4), a 0-d, an empty and (optionally) a large array. */
static mx_map *every_dtype_map(bool large) {
  mx_map *m = mx_map_new();
  for (int i = 0; i < N_DTYPES; i++) {
    char name[64];
    snprintf(name, sizeof name, "t_%s", mx_dtype_name(ALL_DTYPES[i]));
    mx_map_set_take(m, name, make(ALL_DTYPES[i], SHAPE3, 3));
  }
  mx_map_set_take(m, "scalar", make(MX_FLOAT32, NULL, 0));
  mx_map_set_take(m, "empty", make(MX_FLOAT32, (int64_t[]){0, 3}, 2));
  if (large) mx_map_set_take(m, "large", make(MX_FLOAT32, (int64_t[]){1024, 1031}, 2));
  return m;
}

static void assert_maps_equal(mx_map *a, mx_map *b) {
  ASSERT_EQ_INT(mx_map_size(a), mx_map_size(b));
  for (int i = 0; i < mx_map_size(a); i++) {
    const char *k = mx_map_key(a, i);
    ASSERT_MSG(mx_map_has(b, k), "missing '%s'", k);
    ASSERT_MSG(same_array(mx_map_value(a, i), mx_map_get(b, k)), "'%s' differs", k);
  }
}

static uint8_t *read_all(const char *path, size_t *n) {
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)len + 1);
  *n = fread(b, 1, (size_t)len, f);
  fclose(f);
  return b;
}

static void write_all(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  fwrite(p, 1, n, f);
  fclose(f);
}

/* Loads bytes as `fmt` under the display name `name`; expects failure with
 * `status` and a message naming the file and containing `needle`. */
static void expect_error(const void *p, size_t n, mx_file_format fmt, const char *name,
                         int status, const char *needle) {
  mx_map *m = (mx_map *)1;
  mx_metadata *md = NULL;
  mx_load_options opt = {.format = fmt};
  int st = mx_load_buffer(p, n, name, &opt, &m, &md);
  ASSERT_MSG(st != MX_OK, "%s: expected an error containing '%s', loaded fine", name, needle);
  ASSERT_MSG(m == NULL && md == NULL, "outputs not cleared on error");
  const char *msg = mx_last_error();
  ASSERT_MSG(strstr(msg, name), "message does not name the file: %s", msg);
  ASSERT_MSG(strstr(msg, needle), "message lacks '%s': %s", needle, msg);
  if (status) ASSERT_MSG(st == status, "status %s, expected %s (%s)", mx_status_name(st),
                         mx_status_name(status), msg);
  /* the listing path must reject it too */
}

/* ---- safetensors ------------------------------------------------------------------ */

TEST(safetensors_round_trip_every_dtype) {
  mx_map *m = every_dtype_map(true);
  mx_metadata *md = mx_metadata_new();
  ASSERT_OK(mx_metadata_set_string(md, "format", "mlx"));
  ASSERT_OK(mx_metadata_set_string(md, "note", "quote \" backslash \\ newline \n é"));
  const char *p = tpath("rt.safetensors");
  ASSERT_OK(mx_save_safetensors(p, m, md));
  mx_map *back = NULL;
  mx_metadata *mback = NULL;
  ASSERT_OK(mx_load(p, &back, &mback));
  assert_maps_equal(m, back);
  ASSERT_STR_EQ(mx_metadata_get_string(mback, "format"), "mlx");
  ASSERT_STR_EQ(mx_metadata_get_string(mback, "note"), "quote \" backslash \\ newline \n é");
  check_fixture(mx_map_get(back, "t_bfloat16"), MX_BFLOAT16);
  /* arrays outlive the map and the mapping stays valid */
  mx_array *keep = mx_array_retain(mx_map_get(back, "large"));
  mx_map_free(back);
  ASSERT(same_array(keep, mx_map_get(m, "large")));
  mx_array_free(keep);
  mx_map_free(m);
  mx_metadata_free(md);
  mx_metadata_free(mback);
}

/* The file we write follows the spec and the reference writer's layout. */
TEST(safetensors_written_file_follows_spec) {
  mx_map *m = every_dtype_map(false);
  mx_metadata *md = mx_metadata_new();
  mx_metadata_set_string(md, "format", "pt");
  const char *p = tpath("spec.safetensors");
  ASSERT_OK(mx_save_safetensors(p, m, md));
  size_t n;
  uint8_t *raw = read_all(p, &n);
  ASSERT_NOT_NULL(raw);
  uint64_t hlen = mx__load_le(raw, 8);
  ASSERT(hlen + 8 <= n);
  ASSERT_EQ_INT(hlen % 8, 0);        /* padded so data starts 8-aligned */
  ASSERT_EQ_INT(raw[8], '{');
  size_t end = 8 + hlen;
  while (raw[end - 1] == ' ') end--; /* padding is spaces after the JSON */
  ASSERT_EQ_INT(raw[end - 1], '}');
  cJSON *j = cJSON_ParseWithLength((const char *)raw + 8, hlen);
  ASSERT_NOT_NULL(j);
  ASSERT_STR_EQ(j->child->string, "__metadata__");
  /* the reference writer's order: element size descending, then name; so
   * every tensor's data is naturally aligned */
  const char *prev = "";
  int prev_size = 16;
  uint64_t off = 0;
  int count = 0;
  for (cJSON *e = j->child->next; e; e = e->next, count++) {
    const char *dt = cJSON_GetObjectItem(e, "dtype")->valuestring;
    int es = strstr(dt, "64") ? 8 : strstr(dt, "32") ? 4 : strstr(dt, "16") ? 2 : 1;
    ASSERT_MSG(es < prev_size || (es == prev_size && strcmp(prev, e->string) < 0),
               "keys not in (size desc, name) order: %s then %s", prev, e->string);
    prev = e->string;
    prev_size = es;
    cJSON *o = cJSON_GetObjectItem(e, "data_offsets");
    ASSERT_EQ_INT((uint64_t)cJSON_GetArrayItem(o, 0)->valuedouble, off); /* contiguous, in order */
    ASSERT_EQ_INT(off % (uint64_t)es, 0);
    off = (uint64_t)cJSON_GetArrayItem(o, 1)->valuedouble;
  }
  ASSERT_EQ_INT(count, mx_map_size(m));
  ASSERT_EQ_INT(off, n - 8 - hlen);
  cJSON_Delete(j);
  free(raw);
  mx_map_free(m);
  mx_metadata_free(md);
}

TEST(safetensors_reference_layout_fixture) {
  mx_map *m = NULL;
  mx_metadata *md = NULL;
  ASSERT_OK(mx_load(FIX "st_reference.safetensors", &m, &md));
  ASSERT_EQ_INT(mx_map_size(m), 8);
  ASSERT_STR_EQ(mx_metadata_get_string(md, "format"), "pt");
  check_fixture(mx_map_get(m, "w_f32"), MX_FLOAT32);
  check_fixture(mx_map_get(m, "w_f16"), MX_FLOAT16);
  check_fixture(mx_map_get(m, "w_f64"), MX_FLOAT64);
  check_fixture(mx_map_get(m, "w_i64"), MX_INT64);
  check_fixture(mx_map_get(m, "w_i32"), MX_INT32);
  check_fixture(mx_map_get(m, "w_u8"), MX_UINT8);
  check_fixture(mx_map_get(m, "w_bool"), MX_BOOL);
  check_fixture(mx_map_get(m, "w_bf16"), MX_BFLOAT16);
  mx_map_free(m);
  mx_metadata_free(md);
}

TEST(safetensors_arrays_are_views_of_the_mapping) {
  mx_map *m = mx_map_new();
  mx_map_set_take(m, "x", make(MX_FLOAT32, SHAPE3, 3));
  const char *p = tpath("view.safetensors");
  ASSERT_OK(mx_save_safetensors(p, m, NULL));
  mx_map *a = NULL, *b = NULL;
  ASSERT_OK(mx_load(p, &a, NULL));
  ASSERT_OK(mx_load_ex(p, &(mx_load_options){.copy = true}, &b, NULL));
  /* zero-copy: the data lies in a read-only private mapping of the file */
  const float *pa = mx_array_data(mx_map_get(a, "x"));
  ASSERT(mx_array_is_evaluated(mx_map_get(a, "x")));
  FILE *maps = fopen("/proc/self/maps", "r");
  ASSERT_NOT_NULL(maps);
  char line[1024];
  bool found = false;
  while (fgets(line, sizeof line, maps)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)pa >= lo && (uintptr_t)pa < hi)
      found = strstr(line, "view.safetensors") != NULL;
  }
  fclose(maps);
  ASSERT_MSG(found, "array data is not inside the file mapping");
  ASSERT(same_array(mx_map_get(a, "x"), mx_map_get(b, "x")));
  mx_map_free(a);
  mx_map_free(b);
  mx_map_free(m);
}

TEST(safetensors_sharded_index) {
  mx_map *s1 = mx_map_new(), *s2 = mx_map_new();
  mx_map_set_take(s1, "layers.0.w", make(MX_FLOAT32, SHAPE3, 3));
  mx_map_set_take(s1, "layers.0.b", make(MX_BFLOAT16, SHAPE3, 3));
  mx_map_set_take(s2, "layers.1.w", make(MX_INT64, SHAPE3, 3));
  ASSERT_OK(mx_save_safetensors(tpath("model-00001-of-00002.safetensors"), s1, NULL));
  ASSERT_OK(mx_save_safetensors(tpath("model-00002-of-00002.safetensors"), s2, NULL));
  const char *idx = "{\"metadata\": {\"total_size\": 480},\n \"weight_map\": {"
                    "\"layers.0.w\": \"model-00001-of-00002.safetensors\","
                    "\"layers.0.b\": \"model-00001-of-00002.safetensors\","
                    "\"layers.1.w\": \"model-00002-of-00002.safetensors\"}}";
  write_all(tpath("model.safetensors.index.json"), idx, strlen(idx));
  mx_map *m = NULL;
  mx_metadata *md = NULL;
  ASSERT_OK(mx_load(tpath("model.safetensors.index.json"), &m, &md));
  ASSERT_EQ_INT(mx_map_size(m), 3);
  check_fixture(mx_map_get(m, "layers.0.w"), MX_FLOAT32);
  check_fixture(mx_map_get(m, "layers.0.b"), MX_BFLOAT16);
  check_fixture(mx_map_get(m, "layers.1.w"), MX_INT64);
  ASSERT_EQ_INT(mx_metadata_get(md, "total_size")->v.i, 480);
  mx_map_free(m);
  mx_metadata_free(md);
  /* a weight map naming a tensor its shard lacks */
  const char *bad = "{\"weight_map\": {\"nope\": \"model-00002-of-00002.safetensors\"}}";
  write_all(tpath("bad.safetensors.index.json"), bad, strlen(bad));
  ASSERT(mx_load(tpath("bad.safetensors.index.json"), &m, NULL) == MX_ERR_FORMAT);
  ASSERT(strstr(mx_last_error(), "nope"));
  mx_map_free(s1);
  mx_map_free(s2);
}

/* A safetensors file from a header string and a data size (zero bytes). */
static uint8_t *st_bytes(const char *json, size_t data, size_t *n) {
  size_t h = strlen(json);
  *n = 8 + h + data;
  uint8_t *b = calloc(1, *n);
  mx__store_le(b, h, 8);
  memcpy(b + 8, json, h);
  return b;
}

static void st_bad(const char *json, size_t data, const char *needle) {
  size_t n;
  uint8_t *b = st_bytes(json, data, &n);
  expect_error(b, n, MX_FORMAT_SAFETENSORS, "bad.safetensors", MX_ERR_FORMAT, needle);
  free(b);
}

TEST(safetensors_malformed_inputs) {
  const char *T = "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":";
  char j[512];
  expect_error("abc", 3, MX_FORMAT_SAFETENSORS, "bad.safetensors", MX_ERR_FORMAT, "truncated");
  { /* header length past end */
    uint8_t b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    expect_error(b, 10, MX_FORMAT_SAFETENSORS, "bad.safetensors", MX_ERR_FORMAT,
                 "past the end");
    mx__store_le(b, UINT64_MAX, 8);
    expect_error(b, 10, MX_FORMAT_SAFETENSORS, "bad.safetensors", MX_ERR_FORMAT,
                 "past the end");
  }
  st_bad("{\"a\":", 0, "JSON");
  st_bad("[1,2]   ", 0, "JSON object");
  snprintf(j, sizeof j, "{\"a\":{%s[0,8]}}", T);
  st_bad(j, 4, "outside the data");
  snprintf(j, sizeof j, "{\"a\":{%s[0,8]},\"b\":{%s[4,12]}}", T, T);
  st_bad(j, 16, "overlap");
  st_bad("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype");
  st_bad("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 8, "dtype");
  snprintf(j, sizeof j, "{\"a\":{%s[0,12]}}", T);
  st_bad(j, 12, "mismatch");
  snprintf(j, sizeof j, "{\"a\xff\":{%s[0,8]}}", T);
  st_bad(j, 8, "UTF-8");
  snprintf(j, sizeof j, "{\"a\":{%s[0,8]},\"a\":{%s[8,16]}}", T, T);
  st_bad(j, 16, "duplicate");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,8]}}", 8, "overflow");
  /* empty, but its other dims overflow (their product gives the strides) */
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],"
         "\"data_offsets\":[0,0]}}", 8, "overflow");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, "shape");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, "shape");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
         "dimensions");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "data_offsets");
  st_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, "data_offsets");
  st_bad("{\"__metadata__\":{\"k\":1}}", 0, "not a string");
  st_bad("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate");
  /* and the listing path (mxc inspect) rejects the same files */
  size_t n;
  snprintf(j, sizeof j, "{\"a\":{%s[0,8]}}", T);
  uint8_t *b = st_bytes(j, 4, &n);
  write_all(tpath("bad_list.safetensors"), b, n);
  free(b);
  mx_tensor_info *ti = NULL;
  int64_t cnt = 0;
  ASSERT(mx_load_info(tpath("bad_list.safetensors"), NULL, &ti, &cnt, NULL) == MX_ERR_FORMAT);
  ASSERT(ti == NULL);
}

TEST(safetensors_empty_and_unaligned_tensors) {
  /* valid file whose F32 tensor starts at an odd offset: loads (copied) */
  const char *j = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]},"
                  "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[5,5]}}";
  size_t n;
  uint8_t *b = st_bytes(j, 5, &n);
  float one = 1.0f;
  memcpy(b + n - 4, &one, 4);
  mx_map *m = NULL;
  ASSERT_OK(mx_load_buffer(b, n, "odd.safetensors", &(mx_load_options){.format = MX_FORMAT_SAFETENSORS}, &m, NULL));
  double v;
  ASSERT_OK(mx_array_item(mx_map_get(m, "b"), &v));
  ASSERT_NEAR(v, 1.0, 0);
  ASSERT_EQ_INT(mx_array_size(mx_map_get(m, "e")), 0);
  mx_map_free(m);
  free(b);
}

TEST(save_is_atomic_and_reports_errors) {
  mx_map *m = mx_map_new();
  mx_map_set_take(m, "x", make(MX_FLOAT32, SHAPE3, 3));
  /* directory that does not exist: an error naming the file, nothing left */
  ASSERT(mx_save_safetensors("/nonexistent-dir/x.safetensors", m, NULL) == MX_ERR_IO);
  ASSERT(strstr(mx_last_error(), "/nonexistent-dir/x.safetensors"));
  /* a failed save leaves the previous file intact and no temporary behind */
  const char *p = tpath("atomic.safetensors");
  ASSERT_OK(mx_save_safetensors(p, m, NULL));
  mx_metadata *md = mx_metadata_new();
  mx_metadata_set(md, "n", &(mx_meta_value){.type = MX_META_UINT32, .v.u = 3});
  ASSERT(mx_save_safetensors(p, m, md) == MX_ERR_INVALID_ARG); /* non-string metadata */
  mx_map *back = NULL;
  ASSERT_OK(mx_load(p, &back, NULL));
  ASSERT(same_array(mx_map_get(back, "x"), mx_map_get(m, "x")));
  DIR *d = opendir(tmpdir());
  struct dirent *de;
  while ((de = readdir(d))) ASSERT_MSG(!strstr(de->d_name, ".tmp."), "left %s", de->d_name);
  closedir(d);
  mx_map_free(back);
  mx_map_free(m);
  mx_metadata_free(md);
}

/* ---- npy / npz -------------------------------------------------------------------- */

TEST(npy_fixtures_written_by_numpy) {
  static const struct {
    const char *file;
    mx_dtype dt;
  } cases[] = {
      {"npy_f2.npy", MX_FLOAT16}, {"npy_f4.npy", MX_FLOAT32},   {"npy_f8.npy", MX_FLOAT64},
      {"npy_i1.npy", MX_INT32},   {"npy_i2.npy", MX_INT32},     {"npy_i4.npy", MX_INT32},
      {"npy_i8.npy", MX_INT64},   {"npy_u1.npy", MX_UINT8},     {"npy_u2.npy", MX_UINT32},
      {"npy_u4.npy", MX_UINT32},  {"npy_b1.npy", MX_BOOL},      {"npy_be_f4.npy", MX_FLOAT32},
      {"npy_be_i8.npy", MX_INT64}, {"npy_bf16.npy", MX_BFLOAT16},
      {"npy_fortran_f4.npy", MX_FLOAT32}, {"npy_fortran_i8.npy", MX_INT64},
      {"npy_v2.npy", MX_FLOAT32},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char p[512];
    snprintf(p, sizeof p, FIX "%s", cases[i].file);
    mx_array *a = mx_load_npy(p);
    ASSERT_MSG(a, "%s: %s", cases[i].file, mx_last_error());
    check_fixture(a, cases[i].dt);
    mx_array_free(a);
  }
  mx_array *s = mx_load_npy(FIX "npy_scalar.npy");
  ASSERT_NOT_NULL(s);
  ASSERT_EQ_INT(mx_array_ndim(s), 0);
  double v;
  ASSERT_OK(mx_array_item(s, &v));
  ASSERT_NEAR(v, 3.5, 0);
  mx_array_free(s);
  mx_array *e = mx_load_npy(FIX "npy_empty.npy");
  ASSERT_NOT_NULL(e);
  ASSERT_EQ_INT(mx_array_size(e), 0);
  ASSERT_EQ_INT(mx_array_shape(e)[1], 3);
  mx_array_free(e);
}

TEST(npy_fortran_order_is_a_strided_view) {
  mx_array *a = mx_load_npy(FIX "npy_fortran_f4.npy");
  ASSERT_NOT_NULL(a);
  ASSERT(!mx_array_is_contiguous(a));
  const int64_t *st = mx_array_strides(a);
  ASSERT_EQ_INT(st[0], 1);
  ASSERT_EQ_INT(st[1], 2);
  ASSERT_EQ_INT(st[2], 6);
  mx_array_free(a);
}

TEST(npz_fixtures_written_by_numpy) {
  const char *files[] = {FIX "npz_stored.npz", FIX "npz_compressed.npz"};
  for (int f = 0; f < 2; f++) {
    mx_map *m = NULL;
    ASSERT_OK(mx_load(files[f], &m, NULL));
    ASSERT_EQ_INT(mx_map_size(m), 5);
    check_fixture(mx_map_get(m, "a"), MX_FLOAT32);
    check_fixture(mx_map_get(m, "b"), MX_INT64);
    check_fixture(mx_map_get(m, "c"), MX_BOOL);
    check_fixture(mx_map_get(m, "dir/nested"), MX_FLOAT16);
    double v;
    ASSERT_OK(mx_array_item(mx_map_get(m, "scalar"), &v));
    ASSERT_NEAR(v, 3.5, 0);
    mx_map_free(m);
  }
}

TEST(npy_npz_round_trip_every_dtype) {
  mx_map *m = every_dtype_map(true);
  for (int i = 0; i < mx_map_size(m); i++) {
    char name[128];
    snprintf(name, sizeof name, "rt_%s.npy", mx_map_key(m, i));
    ASSERT_OK(mx_save_npy(tpath(name), mx_map_value(m, i)));
    mx_array *a = mx_load_npy(tpath(name));
    ASSERT_MSG(a && same_array(a, mx_map_value(m, i)), "%s", name);
    mx_array_free(a);
  }
  const char *names[] = {"rt_stored.npz", "rt_compressed.npz", "rt_zip64.npz"};
  for (int k = 0; k < 3; k++) {
    extern bool mx__npz_force_zip64;
    mx__npz_force_zip64 = k == 2;
    ASSERT_OK(mx_save_npz(tpath(names[k]), m, k == 1));
    mx__npz_force_zip64 = false;
    mx_map *back = NULL;
    ASSERT_OK(mx_load(tpath(names[k]), &back, NULL));
    assert_maps_equal(m, back);
    ASSERT_STR_EQ(mx_map_key(back, 0), mx_map_key(m, 0)); /* order kept */
    mx_map_free(back);
  }
  /* compression really compresses (the periodic data is very redundant) */
  struct stat s1, s2;
  stat(tpath("rt_stored.npz"), &s1);
  stat(tpath("rt_compressed.npz"), &s2);
  ASSERT(s2.st_size * 4 < s1.st_size);
  mx_map_free(m);
}

TEST(npy_written_header_matches_numpy) {
  mx_array *a = make(MX_FLOAT32, SHAPE3, 3);
  ASSERT_OK(mx_save_npy(tpath("hdr.npy"), a));
  size_t n;
  uint8_t *raw = read_all(tpath("hdr.npy"), &n);
  ASSERT_EQ_INT(mx__load_le(raw + 8, 2) + 10, 128); /* data 64-aligned, as NumPy */
  ASSERT(!memcmp(raw + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 62));
  ASSERT_EQ_INT(raw[127], '\n');
  free(raw);
  mx_array_free(a);
  mx_array *b = make(MX_BFLOAT16, (int64_t[]){5}, 1);
  ASSERT_OK(mx_save_npy(tpath("hdr_bf16.npy"), b));
  raw = read_all(tpath("hdr_bf16.npy"), &n);
  ASSERT(!memcmp(raw + 10, "{'descr': '<V2', 'fortran_order': False, 'shape': (5,), }", 57));
  free(raw);
  mx_array_free(b);
}

static uint8_t *npy_bytes(const char *dict, size_t data, size_t *n) {
  size_t h = strlen(dict);
  *n = 10 + h + data;
  uint8_t *b = calloc(1, *n);
  memcpy(b, "\x93NUMPY\x01\x00", 8);
  mx__store_le(b + 8, h, 2);
  memcpy(b + 10, dict, h);
  return b;
}

static void npy_bad(const char *dict, size_t data, int status, const char *needle) {
  size_t n;
  uint8_t *b = npy_bytes(dict, data, &n);
  expect_error(b, n, MX_FORMAT_NPY, "bad.npy", status, needle);
  free(b);
}

TEST(npy_malformed_inputs) {
  expect_error("\x93NUMPZ\x01\x00\x00\x00", 10, MX_FORMAT_NPY, "bad.npy", MX_ERR_FORMAT, "magic");
  expect_error("\x93NUMPY\x01", 7, MX_FORMAT_NPY, "bad.npy", MX_ERR_FORMAT, "truncated");
  expect_error("\x93NUMPY\x01\x00\xff\x00{", 11, MX_FORMAT_NPY, "bad.npy", MX_ERR_FORMAT,
               "past the end");
  expect_error("\x93NUMPY\x09\x00\x00\x00", 10, MX_FORMAT_NPY, "bad.npy", MX_ERR_FORMAT,
               "version");
  npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 8, MX_ERR_FORMAT,
          "truncated npy data");
  npy_bad("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", 8, MX_ERR_DTYPE,
          "not supported");
  npy_bad("{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }", 16, MX_ERR_DTYPE,
          "not supported");
  npy_bad("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", 8,
          MX_ERR_DTYPE, "structured");
  npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }",
          8, MX_ERR_FORMAT, "overflow");
  npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }",
          8, MX_ERR_FORMAT, "dimensions");
  npy_bad("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,), }", 8, MX_ERR_FORMAT,
          "fortran_order");
  npy_bad("{'descr': '<f4', 'shape': (1,), }", 8, MX_ERR_FORMAT, "lacks");
  npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 8, MX_ERR_FORMAT,
          "shape");
  npy_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 8, MX_ERR_FORMAT,
          "key");
  npy_bad("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 8,
          MX_ERR_FORMAT, "repeated");
}

/* Builds a tiny valid npz (stored) in memory via the writer, then corrupts it. */
static uint8_t *small_npz(size_t *n, bool compress) {
  mx_map *m = mx_map_new();
  mx_map_set_take(m, "a", make(MX_FLOAT32, SHAPE3, 3));
  mx_map_set_take(m, "b", make(MX_INT32, SHAPE3, 3));
  ASSERT_OK(mx_save_npz(tpath("small.npz"), m, compress));
  mx_map_free(m);
  return read_all(tpath("small.npz"), n);
}

static size_t find_sig(const uint8_t *b, size_t n, uint32_t sig, int nth) {
  for (size_t i = 0; i + 4 <= n; i++)
    if (mx__load_le(b + i, 4) == sig && nth-- == 0) return i;
  return (size_t)-1;
}

TEST(npz_malformed_inputs) {
  size_t n;
  uint8_t *good = small_npz(&n, false);
  uint8_t *b = malloc(n);
  expect_error("PK\x03\x04", 4, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "not a zip");
  /* truncated: end of central directory gone */
  expect_error(good, n - 10, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "central directory");
  /* CRC mismatch: flip a data byte of the first member */
  memcpy(b, good, n);
  b[200] ^= 1;
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "CRC");
  size_t cd = find_sig(good, n, 0x02014b50u, 0);
  ASSERT(cd != (size_t)-1);
  /* local header offset outside the file */
  memcpy(b, good, n);
  mx__store_le(b + cd + 42, n + 100, 4);
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "local header");
  /* member sizes past the end */
  memcpy(b, good, n);
  mx__store_le(b + cd + 20, 0x7fffffff, 4);
  mx__store_le(b + cd + 24, 0x7fffffff, 4);
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "past the end");
  /* unsupported compression method */
  memcpy(b, good, n);
  mx__store_le(b + cd + 10, 12, 2);
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_UNSUPPORTED, "compression method");
  /* non-.npy member, non-UTF-8 name, duplicate names */
  memcpy(b, good, n);
  b[cd + 46 + 2] = 'x'; /* "a.npy" -> "a.xpy" */
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "not a .npy");
  memcpy(b, good, n);
  b[cd + 46] = (char)0xff;
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "UTF-8");
  memcpy(b, good, n);
  size_t cd2 = find_sig(good, n, 0x02014b50u, 1);
  b[cd2 + 46] = 'a'; /* second member "b.npy" -> "a.npy" */
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "duplicate");
  /* entry count larger than the central directory can hold */
  memcpy(b, good, n);
  size_t eocd = find_sig(good, n, 0x06054b50u, 0);
  mx__store_le(b + eocd + 10, 60000, 2);
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "entries");
  free(good);
  free(b);
  /* deflate: corrupt stream, and a zip bomb's absurd claimed size */
  good = small_npz(&n, true);
  b = malloc(n);
  memcpy(b, good, n);
  size_t lh = find_sig(good, n, 0x04034b50u, 0);
  size_t data = lh + 30 + mx__load_le(good + lh + 26, 2) + mx__load_le(good + lh + 28, 2);
  b[data] = 0xff;
  b[data + 1] = 0xff;
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "deflate");
  memcpy(b, good, n);
  cd = find_sig(good, n, 0x02014b50u, 0);
  mx__store_le(b + cd + 24, 0xfffffff0u, 4);
  expect_error(b, n, MX_FORMAT_NPZ, "bad.npz", MX_ERR_FORMAT, "impossible");
  free(good);
  free(b);
}

/* ---- GGUF --------------------------------------------------------------------------- */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
  put_u64(b, strlen(s));
  put(b, s, strlen(s));
}
static void put_pad(buf *b, size_t align) {
  static const uint8_t z[256];
  put(b, z, (align - b->n % align) % align);
}

/* GGUF header + one tensor info (ne given in ggml order) of `type`. */
static void gguf_one(buf *b, uint32_t type, const uint64_t *ne, int nd, uint64_t offset) {
  put(b, "GGUF", 4);
  put_u32(b, 3);
  put_u64(b, 1);
  put_u64(b, 0);
  put_str(b, "blk.0.w.weight");
  put_u32(b, (uint32_t)nd);
  for (int i = 0; i < nd; i++) put_u64(b, ne[i]);
  put_u32(b, type);
  put_u64(b, offset);
  put_pad(b, 32);
}

/* Q4_0 block: f16 d = 0.5 (0x3800); qs[j] = j | (15 - j) << 4, so element j
 * (j < 16) is j and element 16 + j is 15 - j; value = d * (q - 8). */
static const float Q4_0_EXPECTED[32] = {
    -4.0f, -3.5f, -3.0f, -2.5f, -2.0f, -1.5f, -1.0f, -0.5f, 0.0f,  0.5f,  1.0f,
    1.5f,  2.0f,  2.5f,  3.0f,  3.5f,  3.5f,  3.0f,  2.5f,  2.0f,  1.5f,  1.0f,
    0.5f,  0.0f,  -0.5f, -1.0f, -1.5f, -2.0f, -2.5f, -3.0f, -3.5f, -4.0f};

/* Q8_0 block: f16 d = 0.25 (0x3400); qs = -16 .. 15; value = d * q. */
static float q8_expected(int j) { return 0.25f * (float)(j - 16); }

static void unpack_triple(mx_map *m, int bits, float *out, int64_t n) {
  mx_array *w = mx_map_get(m, "blk.0.w.weight"), *s = mx_map_get(m, "blk.0.w.scales"),
           *bi = mx_map_get(m, "blk.0.w.biases");
  ASSERT(w && s && bi);
  ASSERT_EQ_INT(mx_array_dtype(w), MX_UINT32);
  ASSERT_EQ_INT(mx_array_dtype(s), MX_FLOAT16);
  ASSERT_EQ_INT(mx_array_dtype(bi), MX_FLOAT16);
  const uint32_t *wd = mx_array_data(w);
  const uint16_t *sd = mx_array_data(s), *bd = mx_array_data(bi);
  int per = 32 / bits;
  for (int64_t k = 0; k < n; k++) {
    uint32_t q = (wd[k / per] >> (bits * (k % per))) & ((1u << bits) - 1);
    out[k] = mx__f16_to_f32(sd[k / 32]) * (float)q + mx__f16_to_f32(bd[k / 32]);
  }
}

TEST(gguf_q4_0_and_q8_0_blocks_match_hand_computed_values) {
  /* Q4_0, shape (2, 32): two blocks (second with d = -1.0 = 0xbc00) */
  buf b = {0};
  gguf_one(&b, 2, (uint64_t[]){32, 2}, 2, 0);
  for (int blk = 0; blk < 2; blk++) {
    uint16_t d = blk ? 0xbc00 : 0x3800;
    put(&b, &d, 2);
    for (int j = 0; j < 16; j++) {
      uint8_t q = (uint8_t)(j | (15 - j) << 4);
      put(&b, &q, 1);
    }
  }
  mx_map *m = NULL;
  mx_load_options opt = {.format = MX_FORMAT_GGUF};
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q4.gguf", &opt, &m, NULL));
  ASSERT_EQ_INT(mx_array_shape(mx_map_get(m, "blk.0.w.weight"))[1], 4);  /* 32 * 4 / 32 */
  ASSERT_EQ_INT(mx_array_shape(mx_map_get(m, "blk.0.w.scales"))[1], 1);
  float got[64];
  unpack_triple(m, 4, got, 64);
  for (int j = 0; j < 32; j++) {
    ASSERT_NEAR(got[j], Q4_0_EXPECTED[j], 0);
    ASSERT_NEAR(got[32 + j], -2.0f * Q4_0_EXPECTED[j], 0);
  }
  mx_map_free(m);
  opt.gguf_dequantize = true;
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q4.gguf", &opt, &m, NULL));
  float deq[64];
  ASSERT_OK(mx_array_copy_to(mx_map_get(m, "blk.0.w.weight"), MX_FLOAT32, deq, 64));
  for (int j = 0; j < 32; j++) ASSERT_NEAR(deq[j], Q4_0_EXPECTED[j], 0);
  mx_map_free(m);
  free(b.p);

  /* Q8_0, shape (32,) */
  b = (buf){0};
  gguf_one(&b, 8, (uint64_t[]){32}, 1, 0);
  uint16_t d = 0x3400;
  put(&b, &d, 2);
  for (int j = 0; j < 32; j++) {
    int8_t q = (int8_t)(j - 16);
    put(&b, &q, 1);
  }
  opt.gguf_dequantize = false;
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q8.gguf", &opt, &m, NULL));
  unpack_triple(m, 8, got, 32);
  for (int j = 0; j < 32; j++) ASSERT_NEAR(got[j], q8_expected(j), 0);
  ASSERT_EQ_INT(mx_array_shape(mx_map_get(m, "blk.0.w.weight"))[0], 8); /* 32 * 8 / 32 */
  mx_map_free(m);
  opt.gguf_dequantize = true;
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q8.gguf", &opt, &m, NULL));
  ASSERT_OK(mx_array_copy_to(mx_map_get(m, "blk.0.w.weight"), MX_FLOAT32, deq, 32));
  for (int j = 0; j < 32; j++) ASSERT_NEAR(deq[j], q8_expected(j), 0);
  mx_map_free(m);
  free(b.p);

  /* Q4_1: d = 0.5, m = 1.0 (0x3c00); value = d * q + m */
  b = (buf){0};
  gguf_one(&b, 3, (uint64_t[]){32}, 1, 0);
  uint16_t dm[2] = {0x3800, 0x3c00};
  put(&b, dm, 4);
  for (int j = 0; j < 16; j++) {
    uint8_t q = (uint8_t)(j | (15 - j) << 4);
    put(&b, &q, 1);
  }
  opt.gguf_dequantize = false;
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q41.gguf", &opt, &m, NULL));
  unpack_triple(m, 4, got, 32);
  for (int j = 0; j < 32; j++) ASSERT_NEAR(got[j], Q4_0_EXPECTED[j] + 4.0f + 1.0f, 0);
  mx_map_free(m);
  free(b.p);
}

TEST(gguf_q5_0_and_q6_k_dequantize) {
  /* Q5_0: d = 1.0; qh bit j set for j even; qs[j] = j | j << 4:
   * element j = (j | (qh_j << 4)) - 16, element 16 + j = (j | (qh_{j+16} << 4)) - 16 */
  buf b = {0};
  gguf_one(&b, 6, (uint64_t[]){32}, 1, 0);
  uint16_t d = 0x3c00;
  put(&b, &d, 2);
  uint32_t qh = 0x55555555u;
  put(&b, &qh, 4);
  for (int j = 0; j < 16; j++) {
    uint8_t q = (uint8_t)(j | j << 4);
    put(&b, &q, 1);
  }
  mx_map *m = NULL;
  mx_load_options opt = {.format = MX_FORMAT_GGUF};
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q5.gguf", &opt, &m, NULL));
  float v[256];
  ASSERT_OK(mx_array_copy_to(mx_map_get(m, "blk.0.w.weight"), MX_FLOAT32, v, 32));
  for (int j = 0; j < 16; j++) {
    ASSERT_NEAR(v[j], (float)((j | ((j % 2 == 0) << 4)) - 16), 0);
    ASSERT_NEAR(v[16 + j], (float)((j | ((j % 2 == 0) << 4)) - 16), 0);
  }
  mx_map_free(m);
  free(b.p);
  /* Q4_K: d = 1, dmin = 0.5; 6-bit scales: sub-blocks 0-3 scale 2, 4-7 scale 3,
   * all mins 1; every byte of qs 0x51 (low nibble 1, high nibble 5). Each
   * 64-element chunk c uses sub-block 2c for its low nibbles (first 32) and
   * 2c + 1 for the high nibbles: value = d * scale * q - dmin * min. */
  b = (buf){0};
  gguf_one(&b, 12, (uint64_t[]){256}, 1, 0);
  uint8_t k4[144];
  k4[0] = 0x00, k4[1] = 0x3c, k4[2] = 0x00, k4[3] = 0x38; /* 1.0, 0.5 */
  memset(k4 + 4, 2, 4);
  memset(k4 + 8, 1, 4);
  memset(k4 + 12, 0x13, 4);
  memset(k4 + 16, 0x51, 128);
  put(&b, k4, 144);
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q4k.gguf", &opt, &m, NULL));
  ASSERT_OK(mx_array_copy_to(mx_map_get(m, "blk.0.w.weight"), MX_FLOAT32, v, 256));
  static const float q4k_expected[8] = {1.5f, 9.5f, 1.5f, 9.5f, 2.5f, 14.5f, 2.5f, 14.5f};
  for (int i = 0; i < 256; i++) ASSERT_NEAR(v[i], q4k_expected[i / 32], 0);
  mx_map_free(m);
  free(b.p);
  /* Q6_K: ql = 0x21 everywhere, qh = 0, scales = 1..16, d = 0.5:
   * q = (1 or 2) - 32 by nibble; value = d * scale * q */
  b = (buf){0};
  gguf_one(&b, 14, (uint64_t[]){256}, 1, 0);
  uint8_t blk[210];
  memset(blk, 0x21, 128);
  memset(blk + 128, 0, 64);
  for (int i = 0; i < 16; i++) blk[192 + i] = (uint8_t)(i + 1);
  blk[208] = 0x00;
  blk[209] = 0x38; /* 0.5 */
  put(&b, blk, 210);
  ASSERT_OK(mx_load_buffer(b.p, b.n, "q6k.gguf", &opt, &m, NULL));
  ASSERT_OK(mx_array_copy_to(mx_map_get(m, "blk.0.w.weight"), MX_FLOAT32, v, 256));
  for (int i = 0; i < 256; i++) {
    int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
    int sc = 8 * half + l / 16 + 2 * quarter + 1;
    int q = (quarter < 2 ? 1 : 2) - 32;
    ASSERT_NEAR(v[i], 0.5f * (float)sc * (float)q, 0);
  }
  mx_map_free(m);
  free(b.p);
}

static mx_metadata *every_meta_type(void) {
  mx_metadata *md = mx_metadata_new();
  mx_metadata_set_string(md, "general.architecture", "llama");
  mx_metadata_set(md, "u8", &(mx_meta_value){.type = MX_META_UINT8, .v.u = 200});
  mx_metadata_set(md, "i8", &(mx_meta_value){.type = MX_META_INT8, .v.i = -100});
  mx_metadata_set(md, "u16", &(mx_meta_value){.type = MX_META_UINT16, .v.u = 60000});
  mx_metadata_set(md, "i16", &(mx_meta_value){.type = MX_META_INT16, .v.i = -30000});
  mx_metadata_set(md, "u32", &(mx_meta_value){.type = MX_META_UINT32, .v.u = 4000000000u});
  mx_metadata_set(md, "i32", &(mx_meta_value){.type = MX_META_INT32, .v.i = -2000000000});
  mx_metadata_set(md, "f32", &(mx_meta_value){.type = MX_META_FLOAT32, .v.f = 1.5});
  mx_metadata_set(md, "bool", &(mx_meta_value){.type = MX_META_BOOL, .v.b = true});
  mx_metadata_set(md, "u64", &(mx_meta_value){.type = MX_META_UINT64, .v.u = UINT64_MAX});
  mx_metadata_set(md, "i64", &(mx_meta_value){.type = MX_META_INT64, .v.i = INT64_MIN});
  mx_metadata_set(md, "f64", &(mx_meta_value){.type = MX_META_FLOAT64, .v.f = 0.1});
  mx_meta_value strs[3] = {{.type = MX_META_STRING}, {.type = MX_META_STRING},
                           {.type = MX_META_STRING}};
  strs[0].v.str.data = "a";
  strs[0].v.str.len = 1;
  strs[1].v.str.data = "";
  strs[2].v.str.data = "h\xc3\xa9llo";
  strs[2].v.str.len = 6;
  mx_meta_value arr = {.type = MX_META_ARRAY};
  arr.v.arr.type = MX_META_STRING;
  arr.v.arr.count = 3;
  arr.v.arr.items = strs;
  mx_metadata_set(md, "tokens", &arr);
  mx_meta_value ints[2] = {{.type = MX_META_INT32, .v.i = 1}, {.type = MX_META_INT32, .v.i = -2}};
  mx_meta_value inner = {.type = MX_META_ARRAY};
  inner.v.arr.type = MX_META_INT32;
  inner.v.arr.count = 2;
  inner.v.arr.items = ints;
  mx_meta_value outer = {.type = MX_META_ARRAY};
  outer.v.arr.type = MX_META_ARRAY;
  outer.v.arr.count = 1;
  outer.v.arr.items = &inner;
  mx_metadata_set(md, "nested", &outer);
  mx_meta_value empty = {.type = MX_META_ARRAY};
  empty.v.arr.type = MX_META_FLOAT32;
  mx_metadata_set(md, "empty", &empty);
  return md;
}

static bool meta_equal(const mx_meta_value *a, const mx_meta_value *b) {
  if (a->type != b->type) return false;
  switch (a->type) {
    case MX_META_STRING:
      return a->v.str.len == b->v.str.len && !memcmp(a->v.str.data, b->v.str.data, a->v.str.len);
    case MX_META_ARRAY:
      if (a->v.arr.type != b->v.arr.type || a->v.arr.count != b->v.arr.count) return false;
      for (size_t i = 0; i < a->v.arr.count; i++)
        if (!meta_equal(&a->v.arr.items[i], &b->v.arr.items[i])) return false;
      return true;
    case MX_META_BOOL: return a->v.b == b->v.b;
    case MX_META_FLOAT32: return (float)a->v.f == (float)b->v.f;
    case MX_META_FLOAT64: return a->v.f == b->v.f;
    default: return a->v.u == b->v.u;
  }
}

TEST(gguf_write_read_identical) {
  mx_map *m = mx_map_new();
  mx_map_set_take(m, "token_embd.weight", make(MX_FLOAT32, SHAPE3, 3));
  mx_map_set_take(m, "blk.0.attn_q.weight", make(MX_FLOAT16, SHAPE3, 3));
  mx_map_set_take(m, "blk.0.ffn.weight", make(MX_BFLOAT16, (int64_t[]){3, 5}, 2));
  mx_map_set_take(m, "ids", make(MX_INT32, (int64_t[]){7}, 1));
  mx_map_set_take(m, "i64", make(MX_INT64, (int64_t[]){2, 2, 2, 2}, 4));
  mx_map_set_take(m, "f64", make(MX_FLOAT64, (int64_t[]){3}, 1));
  mx_map_set_take(m, "scalar", make(MX_FLOAT32, NULL, 0));
  mx_map_set_take(m, "empty", make(MX_FLOAT32, (int64_t[]){0, 4}, 2));
  mx_metadata *md = every_meta_type();
  const char *p = tpath("rt.gguf");
  ASSERT_OK(mx_save_gguf(p, m, md));
  mx_map *back = NULL;
  mx_metadata *mb = NULL;
  ASSERT_OK(mx_load(p, &back, &mb));
  assert_maps_equal(m, back);
  ASSERT_EQ_INT(mx_metadata_size(mb), mx_metadata_size(md));
  for (int64_t i = 0; i < mx_metadata_size(md); i++) {
    ASSERT_STR_EQ(mx_metadata_key(mb, i), mx_metadata_key(md, i));
    ASSERT_MSG(meta_equal(mx_metadata_value(md, i), mx_metadata_value(mb, i)), "value of %s",
               mx_metadata_key(md, i));
  }
  /* alignment: data section and every tensor offset are multiples of 32 */
  mx_tensor_info *ti;
  int64_t n;
  ASSERT_OK(mx_load_info(p, NULL, &ti, &n, NULL));
  ASSERT_EQ_INT(n, 8);
  for (int64_t i = 0; i < n; i++) ASSERT_EQ_INT(ti[i].offset % 32, 0);
  ASSERT_STR_EQ(ti[0].file_dtype, "F32");
  ASSERT_STR_EQ(ti[2].file_dtype, "BF16");
  mx_tensor_info_free(ti, n);
  /* write -> read -> write gives the same bytes */
  ASSERT_OK(mx_save_gguf(tpath("rt2.gguf"), back, mb));
  size_t n1 = 0, n2 = 0;
  uint8_t *b1 = read_all(p, &n1), *b2 = read_all(tpath("rt2.gguf"), &n2);
  ASSERT(n1 == n2 && !memcmp(b1, b2, n1));
  free(b1);
  free(b2);
  /* unsupported dtype and long names are refused */
  mx_map *bad = mx_map_new();
  mx_map_set_take(bad, "b", make(MX_BOOL, SHAPE3, 3));
  ASSERT(mx_save_gguf(tpath("bad.gguf"), bad, NULL) == MX_ERR_DTYPE);
  mx_map_free(bad);
  mx_map_free(m);
  mx_map_free(back);
  mx_metadata_free(md);
  mx_metadata_free(mb);
}

TEST(gguf_reference_fixture) {
  mx_map *m = NULL;
  mx_metadata *md = NULL;
  ASSERT_OK(mx_load(FIX "gguf_reference.gguf", &m, &md));
  check_fixture(mx_map_get(m, "t_f32"), MX_FLOAT32);
  check_fixture(mx_map_get(m, "t_f16"), MX_FLOAT16);
  ASSERT_STR_EQ(mx_metadata_get_string(md, "general.architecture"), "llama");
  ASSERT_EQ_INT(mx_metadata_get(md, "test.u8")->v.u, 200);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.i8")->v.i, -100);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.u16")->v.u, 60000);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.i16")->v.i, -30000);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.u32")->v.u, 4000000000u);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.i32")->v.i, -2000000000);
  ASSERT_NEAR(mx_metadata_get(md, "test.f32")->v.f, 1.5, 0);
  ASSERT(mx_metadata_get(md, "test.bool")->v.b);
  ASSERT(mx_metadata_get(md, "test.u64")->v.u == (1ull << 63) + 5);
  ASSERT(mx_metadata_get(md, "test.i64")->v.i == -(1ll << 62));
  ASSERT_NEAR(mx_metadata_get(md, "test.f64")->v.f, 0.1, 0);
  const mx_meta_value *s = mx_metadata_get(md, "test.strings");
  ASSERT_EQ_INT(s->v.arr.count, 3);
  ASSERT_STR_EQ(s->v.arr.items[2].v.str.data, "h\xc3\xa9llo");
  const mx_meta_value *nest = mx_metadata_get(md, "test.nested");
  ASSERT_EQ_INT(nest->v.arr.type, MX_META_ARRAY);
  ASSERT_EQ_INT(nest->v.arr.items[0].v.arr.items[1].v.u, 2);
  ASSERT_EQ_INT(mx_metadata_get(md, "test.ints")->v.arr.items[3].v.i, -4);
  mx_map_free(m);
  mx_metadata_free(md);
}

static void gguf_bad(buf *b, int status, const char *needle) {
  expect_error(b->p, b->n, MX_FORMAT_GGUF, "bad.gguf", status, needle);
  free(b->p);
  *b = (buf){0};
}

static void gguf_head(buf *b, uint64_t nt, uint64_t nkv) {
  put(b, "GGUF", 4);
  put_u32(b, 3);
  put_u64(b, nt);
  put_u64(b, nkv);
}

static void gguf_tinfo(buf *b, const char *name, uint32_t type, uint64_t ne0, uint64_t off) {
  put_str(b, name);
  put_u32(b, 1);
  put_u64(b, ne0);
  put_u32(b, type);
  put_u64(b, off);
}

TEST(gguf_malformed_inputs) {
  buf b = {0};
  put(&b, "GGUF", 4);
  gguf_bad(&b, MX_ERR_FORMAT, "truncated");
  put(&b, "GGUX", 4), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_FORMAT, "magic");
  put(&b, "GGUF", 4), put_u32(&b, 1), put_u64(&b, 0), put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_UNSUPPORTED, "version");
  put(&b, "GGUF", 4), put_u32(&b, 0x03000000), put_u64(&b, 0), put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_UNSUPPORTED, "big-endian");
  gguf_head(&b, 0, UINT64_MAX);
  gguf_bad(&b, MX_ERR_FORMAT, "cannot fit");
  gguf_head(&b, UINT64_MAX / 2, 0);
  gguf_bad(&b, MX_ERR_FORMAT, "cannot fit");
  /* key string length past the end */
  gguf_head(&b, 0, 1);
  put_u64(&b, 1000), put(&b, "k", 1), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "truncated metadata key");
  gguf_head(&b, 0, 1);
  put_str(&b, "k\xff"), put_u32(&b, 4), put_u32(&b, 1);
  gguf_bad(&b, MX_ERR_FORMAT, "UTF-8");
  gguf_head(&b, 0, 1);
  put_str(&b, "k"), put_u32(&b, 13), put_u32(&b, 1);
  gguf_bad(&b, MX_ERR_FORMAT, "unknown value type");
  gguf_head(&b, 0, 1);
  put_str(&b, "k"), put_u32(&b, 8), put_u64(&b, 1ull << 40);
  gguf_bad(&b, MX_ERR_FORMAT, "truncated value");
  gguf_head(&b, 0, 1); /* absurd array length */
  put_str(&b, "k"), put_u32(&b, 9), put_u32(&b, 4), put_u64(&b, 1ull << 60), put_u32(&b, 0);
  gguf_bad(&b, MX_ERR_FORMAT, "past the end");
  gguf_head(&b, 0, 1); /* arrays nested too deeply */
  put_str(&b, "k"), put_u32(&b, 9);
  for (int i = 0; i < 12; i++) put_u32(&b, 9), put_u64(&b, 1);
  put_u32(&b, 4), put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_FORMAT, "nested");
  gguf_head(&b, 0, 2); /* duplicate key */
  put_str(&b, "k"), put_u32(&b, 4), put_u32(&b, 1);
  put_str(&b, "k"), put_u32(&b, 4), put_u32(&b, 1);
  gguf_bad(&b, MX_ERR_FORMAT, "duplicate");
  gguf_head(&b, 0, 1); /* bad alignment */
  put_str(&b, "general.alignment"), put_u32(&b, 4), put_u32(&b, 24);
  gguf_bad(&b, MX_ERR_FORMAT, "alignment");
  /* tensors */
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 99, 4, 0), put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "unknown ggml type");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 0, 1000, 0), put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "outside the data");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 0, 4, 5), put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "not a multiple of the alignment");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 0, 1ull << 40, UINT64_MAX - 31), put_pad(&b, 32);
  gguf_bad(&b, MX_ERR_FORMAT, "overflows");
  gguf_head(&b, 2, 0), gguf_tinfo(&b, "a", 0, 16, 0), gguf_tinfo(&b, "b", 0, 16, 32);
  put_pad(&b, 32);
  for (int i = 0; i < 16; i++) put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_FORMAT, "overlap");
  gguf_head(&b, 2, 0), gguf_tinfo(&b, "a", 0, 4, 0), gguf_tinfo(&b, "a", 0, 4, 32);
  put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "duplicate");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "\xc0\xaf", 0, 4, 0), put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "UTF-8");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 2, 48, 0), put_pad(&b, 32), put_pad(&b, 64);
  gguf_bad(&b, MX_ERR_FORMAT, "block size");
  gguf_head(&b, 1, 0); /* dimension product overflow */
  put_str(&b, "t"), put_u32(&b, 3);
  put_u64(&b, 1ull << 40), put_u64(&b, 1ull << 40), put_u64(&b, 1ull << 40);
  put_u32(&b, 0), put_u64(&b, 0), put_pad(&b, 32);
  gguf_bad(&b, MX_ERR_FORMAT, "overflow");
  gguf_head(&b, 1, 0); /* too many dimensions */
  put_str(&b, "t"), put_u32(&b, 9), put_pad(&b, 128);
  gguf_bad(&b, MX_ERR_FORMAT, "dimensions");
  gguf_head(&b, 1, 0), gguf_tinfo(&b, "t", 16, 256, 0), put_pad(&b, 32);
  for (int i = 0; i < 16; i++) put_u64(&b, 0);
  gguf_bad(&b, MX_ERR_UNSUPPORTED, "IQ2_XXS");
}

/* ---- mx_load and mx_load_info ------------------------------------------------------- */

TEST(load_picks_format_by_extension_then_magic) {
  mx_map *m = mx_map_new();
  mx_map_set_take(m, "x", make(MX_INT32, SHAPE3, 3));
  ASSERT_OK(mx_save_safetensors(tpath("noext_st"), m, NULL));
  ASSERT_OK(mx_save_gguf(tpath("noext_gguf"), m, NULL));
  ASSERT_OK(mx_save_npz(tpath("noext_npz"), m, false));
  ASSERT_OK(mx_save_npy(tpath("noext_npy"), mx_map_get(m, "x")));
  const char *files[] = {"noext_st", "noext_gguf", "noext_npz", "noext_npy"};
  const mx_file_format fmts[] = {MX_FORMAT_SAFETENSORS, MX_FORMAT_GGUF, MX_FORMAT_NPZ,
                                 MX_FORMAT_NPY};
  for (int i = 0; i < 4; i++) {
    mx_file_format f;
    ASSERT_OK(mx_file_format_of(tpath(files[i]), &f));
    ASSERT_EQ_INT(f, fmts[i]);
    mx_map *back = NULL;
    ASSERT_OK(mx_load(tpath(files[i]), &back, NULL));
    check_fixture(mx_map_value(back, 0), MX_INT32);
    mx_map_free(back);
  }
  write_all(tpath("junk.bin"), "hello world", 11);
  mx_map *back = NULL;
  ASSERT(mx_load(tpath("junk.bin"), &back, NULL) == MX_ERR_FORMAT);
  ASSERT(strstr(mx_last_error(), "unknown file format"));
  ASSERT(mx_load(tpath("missing.safetensors"), &back, NULL) == MX_ERR_NOT_FOUND);
  ASSERT(strstr(mx_last_error(), "missing.safetensors"));
  mx_map_free(m);
}

TEST(load_info_lists_without_loading) {
  mx_tensor_info *t;
  int64_t n;
  mx_metadata *md;
  ASSERT_OK(mx_load_info(FIX "npz_compressed.npz", NULL, &t, &n, &md));
  ASSERT_EQ_INT(n, 5);
  ASSERT_STR_EQ(t[0].name, "a");
  ASSERT_STR_EQ(t[0].file_dtype, "<f4");
  ASSERT_EQ_INT(t[0].nbytes, 96);
  mx_tensor_info_free(t, n);
  mx_metadata_free(md);
  ASSERT_OK(mx_load_info(FIX "st_reference.safetensors", NULL, &t, &n, &md));
  ASSERT_EQ_INT(n, 8);
  ASSERT_STR_EQ(mx_metadata_get_string(md, "source"), "numpy");
  mx_tensor_info_free(t, n);
  mx_metadata_free(md);
}

TEST(metadata_api) {
  mx_metadata *md = mx_metadata_new();
  ASSERT_OK(mx_metadata_set_string(md, "a", "1"));
  ASSERT_OK(mx_metadata_set_string(md, "b", "2"));
  ASSERT_OK(mx_metadata_set_string(md, "a", "3")); /* replace keeps position */
  ASSERT_STR_EQ(mx_metadata_key(md, 0), "a");
  ASSERT_STR_EQ(mx_metadata_get_string(md, "a"), "3");
  ASSERT_OK(mx_metadata_remove(md, "a"));
  ASSERT(mx_metadata_get(md, "a") == NULL);
  ASSERT_STR_EQ(mx_metadata_get_string(md, "b"), "2");
  ASSERT(mx_metadata_remove(md, "zz") == MX_ERR_NOT_FOUND);
  for (int i = 0; i < 1000; i++) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    mx_metadata_set(md, k, &(mx_meta_value){.type = MX_META_INT64, .v.i = i});
  }
  ASSERT_EQ_INT(mx_metadata_get(md, "k777")->v.i, 777);
  mx_meta_value bad = {.type = MX_META_ARRAY};
  bad.v.arr.type = MX_META_INT32;
  bad.v.arr.count = 1;
  bad.v.arr.items = &(mx_meta_value){.type = MX_META_STRING};
  ASSERT(mx_metadata_set(md, "bad", &bad) == MX_ERR_INVALID_ARG);
  mx_metadata_free(md);
  mx_metadata_free(NULL);
}

int main(int argc, char **argv) {
  int r = test_main(argc, argv);
  if (!getenv("MXC_IO_EXPORT_DIR") && g_dir[0]) { /* remove the temporary directory */
    DIR *d = opendir(g_dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
      if (de->d_name[0] == '.') continue;
      char p[1024];
      snprintf(p, sizeof p, "%s/%s", g_dir, de->d_name);
      unlink(p);
    }
    if (d) closedir(d);
    rmdir(g_dir);
  }
  return r;
}
