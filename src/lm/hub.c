/* hub.c — model resolution: local directory, Hugging Face cache, download.
 * Layout and protocol: see include/mxc/hub.h and docs/hub.md. */
#include "internal.h"
#include "mxc/hub.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HUB_PATH 4096
#define HUB_DEFAULT_ENDPOINT "https://huggingface.co"

/* ---- small helpers ------------------------------------------------------- */

/* snprintf into a path buffer; an error when it does not fit. */
static int fmt(char *out, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static int fmt(char *out, size_t n, const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  int k = vsnprintf(out, n, f, ap);
  va_end(ap);
  if (k < 0 || (size_t)k >= n)
    return mx__set_error(MX_ERR_INVALID_ARG, "hub: path or URL too long (%d bytes)", k);
  return MX_OK;
}

static bool is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static bool is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* mkdir -p */
static int make_dirs(const char *path) {
  char tmp[HUB_PATH];
  if (fmt(tmp, sizeof tmp, "%s", path)) return mx_last_status();
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(tmp, 0755) && errno != EEXIST)
      return mx__set_error(MX_ERR_IO, "hub: cannot create directory %s: %s", tmp,
                           strerror(errno));
    *p = '/';
  }
  if (mkdir(tmp, 0755) && errno != EEXIST)
    return mx__set_error(MX_ERR_IO, "hub: cannot create directory %s: %s", tmp, strerror(errno));
  return MX_OK;
}

static bool env_true(const char *name) {
  const char *v = getenv(name);
  return v && (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
               !strcasecmp(v, "on"));
}

static bool is_sha(const char *s) {
  size_t n = strlen(s);
  if (n != 40) return false;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

/* Percent-encode s (RFC 3986 unreserved kept; '/' kept when keep_slash). */
static int url_encode(const char *s, bool keep_slash, char *out, size_t n) {
  size_t k = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                 (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
                 *p == '~' || (keep_slash && *p == '/');
    if (k + 4 >= n) return mx__set_error(MX_ERR_INVALID_ARG, "hub: name too long: %s", s);
    if (plain) {
      out[k++] = (char)*p;
    } else {
      snprintf(out + k, 4, "%%%02X", *p);
      k += 3;
    }
  }
  out[k] = 0;
  return MX_OK;
}

bool mx_hub_is_repo_id(const char *m) {
  if (!m || !*m) return false;
  const char *slash = strchr(m, '/');
  if (!slash || slash == m || !slash[1] || strchr(slash + 1, '/')) return false;
  if (strstr(m, "..") || m[0] == '.' || slash[1] == '.') return false;
  for (const char *p = m; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '_' || *p == '.' || *p == '/'))
      return false;
  return strlen(m) < 200;
}

/* ---- options and cache location -------------------------------------------- */

mx_hub_options mx_hub_options_default(void) {
  mx_hub_options o;
  memset(&o, 0, sizeof o);
  o.progress = -1;
  return o;
}

static int cache_dir_from(const mx_hub_options *o, char *out, size_t n) {
  const char *v;
  if (o && o->cache_dir && *o->cache_dir) return fmt(out, n, "%s", o->cache_dir);
  if ((v = getenv("HF_HUB_CACHE")) && *v) return fmt(out, n, "%s", v);
  if ((v = getenv("HF_HOME")) && *v) return fmt(out, n, "%s/hub", v);
  if ((v = getenv("XDG_CACHE_HOME")) && *v) return fmt(out, n, "%s/huggingface/hub", v);
  if ((v = getenv("HOME")) && *v) return fmt(out, n, "%s/.cache/huggingface/hub", v);
  return mx__set_error(MX_ERR_NOT_FOUND,
                       "hub: no cache directory (set HF_HUB_CACHE, HF_HOME or HOME)");
}

int mx_hub_cache_dir(char *out, size_t n) {
  if (!out || !n) return mx__set_error(MX_ERR_INVALID_ARG, "hub: output buffer is NULL");
  return cache_dir_from(NULL, out, n);
}

/* A snapshot is usable when it has config.json and weights (an index or at
 * least one .safetensors file). stat follows the links into blobs/. */
static bool snapshot_complete(const char *dir) {
  char p[HUB_PATH];
  if (fmt(p, sizeof p, "%s/config.json", dir) || !is_file(p)) return false;
  if (!fmt(p, sizeof p, "%s/model.safetensors.index.json", dir) && is_file(p)) return true;
  if (!fmt(p, sizeof p, "%s/model.safetensors", dir) && is_file(p)) return true;
  // any other *.safetensors (e.g. weights.safetensors, shards without index)
  DIR *d = opendir(dir);
  if (!d) return false;
  bool found = false;
  struct dirent *e;
  while (!found && (e = readdir(d))) {
    size_t L = strlen(e->d_name);
    if (L > 12 && !strcmp(e->d_name + L - 12, ".safetensors") &&
        !fmt(p, sizeof p, "%s/%s", dir, e->d_name) && is_file(p))
      found = true;
  }
  closedir(d);
  return found;
}

/* Reads refs/<revision> (a commit sha) into sha[41]. */
static bool read_ref(const char *repo_dir, const char *revision, char *sha) {
  char p[HUB_PATH];
  if (fmt(p, sizeof p, "%s/refs/%s", repo_dir, revision)) return false;
  FILE *f = fopen(p, "rb");
  if (!f) return false;
  char buf[128] = {0};
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  while (k && (buf[k - 1] == '\n' || buf[k - 1] == '\r' || buf[k - 1] == ' ')) buf[--k] = 0;
  if (k == 0 || k > 64) return false;
  memcpy(sha, buf, k + 1);
  return true;
}

/* Writes a small file atomically: a temporary name in the same directory,
 * then rename. */
static int write_atomic(const char *path, const char *data, size_t len) {
  char tmp[HUB_PATH];
  if (fmt(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid())) return mx_last_status();
  FILE *f = fopen(tmp, "wb");
  if (!f) return mx__set_error(MX_ERR_IO, "hub: cannot write %s: %s", tmp, strerror(errno));
  bool ok = fwrite(data, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path)) {
    int e = errno;
    unlink(tmp);
    return mx__set_error(MX_ERR_IO, "hub: cannot write %s: %s", path, strerror(e));
  }
  return MX_OK;
}

/* ---- HTTP ------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_status;
static void curl_init(void) { curl_init_status = curl_global_init(CURL_GLOBAL_DEFAULT); }

typedef struct {
  char *p;
  size_t n, cap;
  bool oom;
} membuf;

typedef struct {
  CURL *curl;
  FILE *file;        /* body goes here (NULL: into mem) */
  membuf *mem;
  int64_t resume;    /* bytes already on disk */
  bool started;      /* first body byte seen */
  bool discard;      /* error status: drop the body */
  bool io_error;
  /* progress */
  bool progress;
  const char *label;
  double last_draw;
} transfer;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  transfer *t = ud;
  size_t n = size * nmemb;
  if (!t->started) {
    t->started = true;
    long code = 0;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 400) t->discard = true;
    // A server that ignores Range sends the whole file: start over.
    if (t->file && t->resume > 0 && code == 200) {
      if (fflush(t->file) || ftruncate(fileno(t->file), 0) || fseek(t->file, 0, SEEK_SET)) {
        t->io_error = true;
        return 0;
      }
      t->resume = 0;
    }
  }
  if (t->discard) return n;
  if (t->file) {
    if (fwrite(data, 1, n, t->file) != n) {
      t->io_error = true;
      return 0;
    }
    return n;
  }
  membuf *m = t->mem;
  if (m->n + n + 1 > m->cap) {
    size_t cap = m->cap ? m->cap : 4096;
    while (cap < m->n + n + 1) cap *= 2;
    char *q = realloc(m->p, cap);
    if (!q) {
      m->oom = true;
      return 0;
    }
    m->p = q;
    m->cap = cap;
  }
  memcpy(m->p + m->n, data, n);
  m->n += n;
  m->p[m->n] = 0;
  return n;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ult,
                       curl_off_t uln) {
  transfer *t = ud;
  if (!t->progress || t->discard) return 0;
  double now = now_s();
  bool done = dltotal > 0 && dlnow == dltotal;
  if (!done && now - t->last_draw < 0.1) return 0;
  t->last_draw = now;
  double have = (double)(t->resume + dlnow), total = (double)(t->resume + dltotal);
  char bar[31];
  int fill = total > 0 ? (int)(30.0 * have / total) : 0;
  if (fill > 30) fill = 30;
  for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
  bar[30] = 0;
  if (total > 0)
    fprintf(stderr, "\r%-32.32s [%s] %6.1f/%.1f MB%s", t->label, bar, have / 1e6, total / 1e6,
            done ? "\n" : "");
  else
    fprintf(stderr, "\r%-32.32s %6.1f MB", t->label, have / 1e6);
  fflush(stderr);
  return 0;
}

typedef struct {
  const char *endpoint;
  const char *token;
  bool progress;
} hub_ctx;

/* GET url into file (appending after `resume` bytes) or mem. Sets the HTTP
 * status in *code. Network and HTTP errors set a message naming the URL. */
static int http_get(const hub_ctx *h, const char *url, FILE *file, int64_t resume, membuf *mem,
                    const char *label, long *code) {
  *code = 0;
  pthread_once(&curl_once, curl_init);
  if (curl_init_status != CURLE_OK)
    return mx__set_error(MX_ERR_IO, "hub: libcurl initialisation failed: %s",
                         curl_easy_strerror(curl_init_status));
  CURL *c = curl_easy_init();
  if (!c) return mx__set_error(MX_ERR_OOM, "hub: cannot create a libcurl handle");
  struct curl_slist *hdr = NULL;
  char line[HUB_PATH];
  int st = MX_OK;
  if (h->token && *h->token) {
    if ((st = fmt(line, sizeof line, "Authorization: Bearer %s", h->token))) goto done;
    hdr = curl_slist_append(hdr, line);
  }
  if (resume > 0) {
    snprintf(line, sizeof line, "Range: bytes=%lld-", (long long)resume);
    hdr = curl_slist_append(hdr, line);
  }
  transfer t = {.curl = c, .file = file, .mem = mem, .resume = resume,
                .progress = h->progress && file, .label = label};
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "mxc/" "0.1");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
  // Abort a transfer that stalls (< 1 byte/s for 60 s); the partial stays.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, t.progress ? 0L : 1L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  CURLcode r = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
  if (t.progress && t.started) fputc('\n', stderr);
  if (t.io_error) {
    st = mx__set_error(MX_ERR_IO, "hub: writing the download of %s failed: %s", url,
                       strerror(errno));
  } else if (mem && mem->oom) {
    st = mx__set_error(MX_ERR_OOM, "hub: out of memory reading %s", url);
  } else if (r != CURLE_OK && *code < 400) {
    st = mx__set_error(MX_ERR_IO, "hub: network error fetching %s: %s", url,
                       curl_easy_strerror(r));
  } else if (*code == 401 || *code == 403) {
    st = mx__set_error(MX_ERR_IO,
                       "hub: access denied (HTTP %ld) for %s: the repository may be gated or "
                       "private; set HF_TOKEN to a token with access%s",
                       *code, url, h->token && *h->token ? " (HF_TOKEN is set)" : "");
  } else if (*code == 404) {
    st = mx__set_error(MX_ERR_NOT_FOUND, "hub: not found (HTTP 404): %s", url);
  } else if (*code >= 400 && !(*code == 416 && resume > 0)) {
    st = mx__set_error(MX_ERR_IO, "hub: HTTP %ld fetching %s", *code, url);
  }
done:
  curl_slist_free_all(hdr);
  curl_easy_cleanup(c);
  return st;
}

/* ---- one file ----------------------------------------------------------------- */

typedef struct {
  const char *name;  /* rfilename */
  char blob[160];    /* blob name (etag) */
  int64_t size;      /* -1 when unknown */
} hub_file;

static uint64_t fnv1a(const char *a, const char *b) {
  uint64_t h = 1469598103934665603ull;
  for (const char *s = a; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  h = (h ^ '/') * 1099511628211ull;
  for (const char *s = b; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Makes snapshots/<sha>/<name> a relative link to ../../blobs/<blob>. */
static int link_into_snapshot(const char *snap, const hub_file *f) {
  char link[HUB_PATH], tmp[HUB_PATH], target[HUB_PATH];
  if (fmt(link, sizeof link, "%s/%s", snap, f->name) ||
      fmt(tmp, sizeof tmp, "%s/.%s.link.%ld", snap, f->name, (long)getpid()) ||
      fmt(target, sizeof target, "../../blobs/%s", f->blob))
    return mx_last_status();
  unlink(tmp);
  if (symlink(target, tmp) || rename(tmp, link)) {
    int e = errno;
    unlink(tmp);
    return mx__set_error(MX_ERR_IO, "hub: cannot link %s -> %s: %s", link, target, strerror(e));
  }
  return MX_OK;
}

/* Ensures blobs/<blob> holds the file (resuming blobs/<blob>.incomplete)
 * and links it into the snapshot. */
static int fetch_file(const hub_ctx *h, const char *repo_id, const char *sha,
                      const char *repo_dir, const char *snap, const hub_file *f) {
  char path[HUB_PATH], blob[HUB_PATH], part[HUB_PATH], url[HUB_PATH], enc[1024];
  if (fmt(path, sizeof path, "%s/%s", snap, f->name)) return mx_last_status();
  if (is_file(path)) return MX_OK;
  if (fmt(blob, sizeof blob, "%s/blobs/%s", repo_dir, f->blob) ||
      fmt(part, sizeof part, "%s.incomplete", blob))
    return mx_last_status();
  if (is_file(blob)) return link_into_snapshot(snap, f);
  if (url_encode(f->name, true, enc, sizeof enc) ||
      fmt(url, sizeof url, "%s/%s/resolve/%s/%s", h->endpoint, repo_id, sha, enc))
    return mx_last_status();

  FILE *out = fopen(part, "ab");
  if (!out) return mx__set_error(MX_ERR_IO, "hub: cannot write %s: %s", part, strerror(errno));
  // Another process downloading the same blob holds the lock; wait for it.
  if (flock(fileno(out), LOCK_EX)) {
    fclose(out);
    return mx__set_error(MX_ERR_IO, "hub: cannot lock %s: %s", part, strerror(errno));
  }
  int st = MX_OK;
  bool other_done = is_file(blob); // another process finished while we waited
  if (other_done) goto finish;
  struct stat sb;
  int64_t have = fstat(fileno(out), &sb) == 0 ? (int64_t)sb.st_size : 0;
  if (f->size >= 0 && have > f->size) { // not ours: start over
    if (ftruncate(fileno(out), 0)) have = -1;
    else have = 0;
  }
  if (have < 0) {
    st = mx__set_error(MX_ERR_IO, "hub: cannot truncate %s", part);
    goto finish;
  }
  if (f->size < 0 || have < f->size || f->size == 0) {
    long code;
    st = http_get(h, url, out, have, NULL, f->name, &code);
    if (!st && code == 416) { // range beyond the end: our partial is stale
      if (fflush(out) || ftruncate(fileno(out), 0) || fseek(out, 0, SEEK_SET))
        st = mx__set_error(MX_ERR_IO, "hub: cannot truncate %s", part);
      else
        st = http_get(h, url, out, 0, NULL, f->name, &code);
    }
    if (fflush(out) && !st) st = mx__set_error(MX_ERR_IO, "hub: writing %s failed", part);
    if (st) goto finish; // the partial file stays for a later resume
  }
  if (fstat(fileno(out), &sb)) {
    st = mx__set_error(MX_ERR_IO, "hub: cannot stat %s: %s", part, strerror(errno));
    goto finish;
  }
  if (f->size >= 0 && (int64_t)sb.st_size != f->size) {
    st = mx__set_error(MX_ERR_IO, "hub: %s has %lld bytes, the Hub lists %lld (%s)", f->name,
                       (long long)sb.st_size, (long long)f->size, url);
    unlink(part);
    goto finish;
  }
  if (rename(part, blob))
    st = mx__set_error(MX_ERR_IO, "hub: cannot rename %s: %s", part, strerror(errno));
finish:
  fclose(out); // releases the lock
  if (other_done) unlink(part); // the empty file our fopen created
  return st ? st : link_into_snapshot(snap, f);
}

/* ---- which files a model needs ------------------------------------------------- */

static bool wanted(const char *name) {
  if (!*name || strchr(name, '/') || name[0] == '.') return false;
  static const char *suffix[] = {".json", ".safetensors", ".tiktoken", ".txt", ".jinja"};
  size_t L = strlen(name);
  for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
    size_t s = strlen(suffix[i]);
    if (L > s && !strcmp(name + L - s, suffix[i])) return true;
  }
  return !strcmp(name, "tokenizer.model") || !strcmp(name, "tiktoken.model");
}

/* ---- resolve -------------------------------------------------------------------- */

static int download_repo(const hub_ctx *h, const char *repo_id, const char *revision,
                         const char *repo_dir, char *out, size_t n) {
  char url[HUB_PATH], enc_rev[512];
  if (url_encode(revision, false, enc_rev, sizeof enc_rev) ||
      fmt(url, sizeof url, "%s/api/models/%s/revision/%s?blobs=true", h->endpoint, repo_id,
          enc_rev))
    return mx_last_status();
  membuf mem = {0};
  long code;
  int st = http_get(h, url, NULL, 0, &mem, NULL, &code);
  if (st) {
    free(mem.p);
    return st;
  }
  cJSON *js = cJSON_Parse(mem.p ? mem.p : "");
  free(mem.p);
  const cJSON *sha_j = cJSON_GetObjectItemCaseSensitive(js, "sha");
  const cJSON *sibs = cJSON_GetObjectItemCaseSensitive(js, "siblings");
  if (!js || !cJSON_IsString(sha_j) || !is_sha(sha_j->valuestring) || !cJSON_IsArray(sibs)) {
    cJSON_Delete(js);
    return mx__set_error(MX_ERR_FORMAT,
                         "hub: unexpected reply from %s (need \"sha\" and \"siblings\")", url);
  }
  char sha[41];
  memcpy(sha, sha_j->valuestring, 41);
  char snap[HUB_PATH], blobs[HUB_PATH];
  if ((st = fmt(snap, sizeof snap, "%s/snapshots/%s", repo_dir, sha)) ||
      (st = fmt(blobs, sizeof blobs, "%s/blobs", repo_dir)) || (st = make_dirs(snap)) ||
      (st = make_dirs(blobs))) {
    cJSON_Delete(js);
    return st;
  }
  int nfiles = 0;
  const cJSON *s;
  cJSON_ArrayForEach(s, sibs) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "rfilename");
    if (!cJSON_IsString(name) || !wanted(name->valuestring)) continue;
    hub_file f = {.name = name->valuestring, .size = -1};
    const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(s, "lfs");
    const cJSON *sha256 = cJSON_GetObjectItemCaseSensitive(lfs, "sha256");
    const cJSON *blob_id = cJSON_GetObjectItemCaseSensitive(s, "blobId");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(s, "size");
    const char *etag = cJSON_IsString(sha256) ? sha256->valuestring
                       : cJSON_IsString(blob_id) ? blob_id->valuestring
                                                 : NULL;
    bool etag_ok = etag && *etag && strlen(etag) < sizeof f.blob;
    for (const char *p = etag; etag_ok && *p; p++)
      if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        etag_ok = false;
    if (etag_ok)
      snprintf(f.blob, sizeof f.blob, "%s", etag);
    else // a mirror without blob ids: a stable name from commit and file
      snprintf(f.blob, sizeof f.blob, "mxc-%016llx",
               (unsigned long long)fnv1a(sha, f.name));
    if (cJSON_IsNumber(size) && size->valuedouble >= 0) f.size = (int64_t)size->valuedouble;
    if ((st = fetch_file(h, repo_id, sha, repo_dir, snap, &f))) break;
    nfiles++;
  }
  cJSON_Delete(js);
  if (st) return mx__prefix_error("downloading %s: ", repo_id);
  if (!snapshot_complete(snap))
    return mx__set_error(MX_ERR_NOT_FOUND,
                         "hub: %s at %s has no config.json and .safetensors weights (%d files "
                         "fetched into %s)",
                         repo_id, revision, nfiles, snap);
  // The ref last: a cache with refs/<revision> is complete.
  if (!is_sha(revision) || strcmp(revision, sha)) {
    char ref[HUB_PATH], refdir[HUB_PATH];
    if ((st = fmt(ref, sizeof ref, "%s/refs/%s", repo_dir, revision))) return st;
    memcpy(refdir, ref, sizeof ref);
    *strrchr(refdir, '/') = 0;
    if ((st = make_dirs(refdir)) || (st = write_atomic(ref, sha, strlen(sha)))) return st;
  }
  return fmt(out, n, "%s", snap);
}

int mx_hub_resolve_ex(const char *model, const mx_hub_options *opt, char *out_dir, size_t n) {
  if (!model || !*model) return mx__set_error(MX_ERR_INVALID_ARG, "hub: model is empty");
  if (!out_dir || !n) return mx__set_error(MX_ERR_INVALID_ARG, "hub: output buffer is NULL");
  mx_hub_options def = mx_hub_options_default();
  if (!opt) opt = &def;
  if (is_dir(model)) return fmt(out_dir, n, "%s", model);
  if (!mx_hub_is_repo_id(model))
    return mx__set_error(MX_ERR_NOT_FOUND,
                         "hub: '%s' is neither a directory nor a Hugging Face id (org/name)",
                         model);
  const char *revision = opt->revision && *opt->revision ? opt->revision : "main";
  if (revision[0] == '/' || strstr(revision, ".."))
    return mx__set_error(MX_ERR_INVALID_ARG, "hub: invalid revision '%s'", revision);

  char cache[HUB_PATH], repo_dir[HUB_PATH], snap[HUB_PATH], sha[65];
  int st = cache_dir_from(opt, cache, sizeof cache);
  if (st) return st;
  const char *slash = strchr(model, '/');
  if ((st = fmt(repo_dir, sizeof repo_dir, "%s/models--%.*s--%s", cache, (int)(slash - model),
                model, slash + 1)))
    return st;
  // 1. The cache.
  bool have_sha = is_sha(revision) ? (memcpy(sha, revision, 41), true)
                                   : read_ref(repo_dir, revision, sha);
  if (have_sha && !fmt(snap, sizeof snap, "%s/snapshots/%s", repo_dir, sha) &&
      snapshot_complete(snap))
    return fmt(out_dir, n, "%s", snap);
  mx_clear_error();
  if (opt->offline || env_true("HF_HUB_OFFLINE"))
    return mx__set_error(MX_ERR_NOT_FOUND,
                         "hub: %s (revision %s) is not in the cache %s and downloads are off "
                         "(HF_HUB_OFFLINE)",
                         model, revision, cache);
  // 2. The network.
  hub_ctx h;
  const char *ep = opt->endpoint && *opt->endpoint ? opt->endpoint : getenv("HF_ENDPOINT");
  if (!ep || !*ep) ep = HUB_DEFAULT_ENDPOINT;
  char endpoint[1024];
  if ((st = fmt(endpoint, sizeof endpoint, "%s", ep))) return st;
  size_t el = strlen(endpoint);
  while (el && endpoint[el - 1] == '/') endpoint[--el] = 0;
  h.endpoint = endpoint;
  h.token = opt->token ? opt->token : getenv("HF_TOKEN");
  h.progress = opt->progress < 0 ? isatty(STDERR_FILENO) != 0 : opt->progress != 0;
  return download_repo(&h, model, revision, repo_dir, out_dir, n);
}

int mx_hub_resolve(const char *model, char *out_dir, size_t n) {
  return mx_hub_resolve_ex(model, NULL, out_dir, n);
}
