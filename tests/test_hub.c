/* test_hub.c — model resolution against a tiny HTTP/1.1 server in a thread
 * (127.0.0.1, ephemeral port) that serves a fake repo the way the Hub does.
 * No external network. */
#include "mxc/hub.h"
#include "mxc/mxc.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the fake repository ---------------------------------------------------- */

#define SHA "0123456789abcdef0123456789abcdef01234567"
#define CONFIG_ID "1111111111111111111111111111111111111111"
#define TOK_ID "2222222222222222222222222222222222222222"
#define README_ID "3333333333333333333333333333333333333333"
#define MODEL_SHA256 "4444444444444444444444444444444444444444444444444444444444444444"
#define MODEL_SIZE 200000

static const char config_json[] = "{\"model_type\": \"llama\", \"hidden_size\": 8}";
static const char tokenizer_json[] = "{\"version\": \"1.0\", \"model\": {}}";
static char model_bytes[MODEL_SIZE];

typedef struct {
  const char *name;
  const char *data;
  size_t len;
} srv_file;
static srv_file files[4];

/* ---- the server ---------------------------------------------------------------- */

static struct {
  int fd, port;
  pthread_t thread;
  volatile int stop;
  pthread_mutex_t mu;
  int n_requests;          /* all requests */
  int n_ranges;            /* requests carrying Range */
  long long last_range;    /* its start */
  char last_auth[256];     /* Authorization of the last request ("" if none) */
  int truncate_next;       /* send half of the next model body, then close */
} srv = {.fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER};

static void send_all(int c, const char *p, size_t n) {
  while (n) {
    ssize_t k = send(c, p, n, MSG_NOSIGNAL);
    if (k <= 0) return;
    p += k;
    n -= (size_t)k;
  }
}

static void reply(int c, int code, const char *ctype, const char *body, size_t len,
                  const char *extra) {
  char h[512];
  const char *msg = code == 200   ? "OK"
                    : code == 206 ? "Partial Content"
                    : code == 401 ? "Unauthorized"
                    : code == 416 ? "Range Not Satisfiable"
                                  : "Not Found";
  int n = snprintf(h, sizeof h,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Connection: close\r\n\r\n",
                   code, msg, ctype, len, extra ? extra : "");
  send_all(c, h, (size_t)n);
  send_all(c, body, len);
}

static void api_json(char *out, size_t n) {
  snprintf(out, n,
           "{\"id\": \"test-org/tiny\", \"sha\": \"" SHA "\", \"siblings\": ["
           "{\"rfilename\": \".gitattributes\", \"blobId\": \"" README_ID "\", \"size\": 3},"
           "{\"rfilename\": \"README.md\", \"blobId\": \"" README_ID "\", \"size\": 6},"
           "{\"rfilename\": \"config.json\", \"blobId\": \"" CONFIG_ID "\", \"size\": %zu},"
           "{\"rfilename\": \"sub/extra.json\", \"blobId\": \"" README_ID "\", \"size\": 2},"
           "{\"rfilename\": \"tokenizer.json\", \"blobId\": \"" TOK_ID "\", \"size\": %zu},"
           "{\"rfilename\": \"model.safetensors\", \"blobId\": \"" README_ID "\", \"size\": %d,"
           " \"lfs\": {\"sha256\": \"" MODEL_SHA256 "\", \"size\": %d}}]}",
           strlen(config_json), strlen(tokenizer_json), MODEL_SIZE, MODEL_SIZE);
}

static bool header(const char *req, const char *name, char *out, size_t n) {
  size_t L = strlen(name);
  for (const char *p = strstr(req, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
    if (!strncasecmp(p + 2, name, L) && p[2 + L] == ':') {
      const char *v = p + 3 + L;
      while (*v == ' ') v++;
      size_t k = strcspn(v, "\r\n");
      if (k >= n) k = n - 1;
      memcpy(out, v, k);
      out[k] = 0;
      return true;
    }
  }
  return false;
}

static void handle(int c) {
  char req[8192];
  size_t n = 0;
  while (n < sizeof req - 1) {
    ssize_t k = recv(c, req + n, sizeof req - 1 - n, 0);
    if (k <= 0) break;
    n += (size_t)k;
    req[n] = 0;
    if (strstr(req, "\r\n\r\n")) break;
  }
  req[n] = 0;
  char path[1024] = {0}, auth[256] = "", range[64] = "";
  if (sscanf(req, "GET %1023s HTTP/1.1", path) != 1) {
    reply(c, 404, "text/plain", "bad", 3, NULL);
    return;
  }
  header(req, "Authorization", auth, sizeof auth);
  bool has_range = header(req, "Range", range, sizeof range);
  long long from = 0;
  if (has_range) sscanf(range, "bytes=%lld-", &from);
  pthread_mutex_lock(&srv.mu);
  srv.n_requests++;
  snprintf(srv.last_auth, sizeof srv.last_auth, "%s", auth);
  if (has_range) {
    srv.n_ranges++;
    srv.last_range = from;
  }
  bool truncate = false;
  pthread_mutex_unlock(&srv.mu);

  if (!strncmp(path, "/gated/", 7) && strcmp(auth, "Bearer good")) {
    const char *b = "{\"error\": \"Access to model gated/model is restricted.\"}";
    reply(c, 401, "application/json", b, strlen(b), NULL);
    return;
  }
  if (!strcmp(path, "/api/models/test-org/tiny/revision/main?blobs=true") ||
      !strcmp(path, "/api/models/gated/model/revision/main?blobs=true")) {
    char js[4096];
    api_json(js, sizeof js);
    reply(c, 200, "application/json", js, strlen(js), NULL);
    return;
  }
  const char *pre[] = {"/test-org/tiny/resolve/", "/gated/model/resolve/"};
  for (int r = 0; r < 2; r++) {
    size_t L = strlen(pre[r]);
    if (strncmp(path, pre[r], L)) continue;
    const char *rest = strchr(path + L, '/'); // after the revision
    for (int i = 0; rest && i < 4; i++) {
      if (!files[i].name || strcmp(rest + 1, files[i].name)) continue;
      const srv_file *f = &files[i];
      if (!strcmp(f->name, "model.safetensors")) {
        pthread_mutex_lock(&srv.mu);
        truncate = srv.truncate_next;
        srv.truncate_next = 0;
        pthread_mutex_unlock(&srv.mu);
      }
      if (from >= (long long)f->len && has_range) {
        reply(c, 416, "text/plain", "", 0, NULL);
        return;
      }
      char extra[128] = "";
      int code = 200;
      if (has_range) {
        code = 206;
        snprintf(extra, sizeof extra, "Content-Range: bytes %lld-%zu/%zu\r\n", from,
                 f->len - 1, f->len);
      }
      if (truncate) { // announce the full length, send half, hang up
        char h[256];
        int k = snprintf(h, sizeof h,
                         "HTTP/1.1 %d OK\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                         code, f->len - (size_t)from, extra);
        send_all(c, h, (size_t)k);
        send_all(c, f->data + from, (f->len - (size_t)from) / 2);
        return;
      }
      reply(c, code, "application/octet-stream", f->data + from, f->len - (size_t)from, extra);
      return;
    }
  }
  const char *b = "{\"error\": \"Repository not found\"}";
  reply(c, 404, "application/json", b, strlen(b), NULL);
}

static void *serve(void *arg) {
  (void)arg;
  while (!srv.stop) {
    struct pollfd p = {.fd = srv.fd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0) continue;
    int c = accept(srv.fd, NULL, NULL);
    if (c < 0) continue;
    handle(c);
    shutdown(c, SHUT_WR);
    char drain[256];
    while (recv(c, drain, sizeof drain, MSG_DONTWAIT) > 0) {
    }
    close(c);
  }
  return NULL;
}

static int listen_on(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 16) ||
      getsockname(fd, (struct sockaddr *)&a, &al)) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

static bool server_start(void) {
  for (int i = 0; i < MODEL_SIZE; i++) model_bytes[i] = (char)((i * 2654435761u) >> 13);
  files[0] = (srv_file){"config.json", config_json, strlen(config_json)};
  files[1] = (srv_file){"tokenizer.json", tokenizer_json, strlen(tokenizer_json)};
  files[2] = (srv_file){"model.safetensors", model_bytes, MODEL_SIZE};
  files[3] = (srv_file){"README.md", "readme", 6};
  srv.fd = listen_on(&srv.port);
  return srv.fd >= 0 && pthread_create(&srv.thread, NULL, serve, NULL) == 0;
}

static void server_stop(void) {
  if (srv.fd < 0) return;
  srv.stop = 1;
  pthread_join(srv.thread, NULL);
  close(srv.fd);
}

static int requests(void) {
  pthread_mutex_lock(&srv.mu);
  int n = srv.n_requests;
  pthread_mutex_unlock(&srv.mu);
  return n;
}

/* ---- fixtures ---------------------------------------------------------------------- */

static char cache_dir[256];

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
  (void)s;
  (void)flag;
  (void)f;
  return remove(p);
}

/* A fresh, empty cache and the server as endpoint; no token. */
static void fresh_env(void) {
  if (cache_dir[0]) nftw(cache_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  snprintf(cache_dir, sizeof cache_dir, "/tmp/mxc_test_hub_XXXXXX");
  ASSERT(mkdtemp(cache_dir));
  setenv("HF_HUB_CACHE", cache_dir, 1);
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d/", srv.port);
  setenv("HF_ENDPOINT", ep, 1);
  unsetenv("HF_TOKEN");
  unsetenv("HF_HUB_OFFLINE");
  mx_clear_error();
}

static bool file_equals(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  char *buf = malloc(len + 1);
  size_t k = fread(buf, 1, len + 1, f);
  fclose(f);
  bool eq = k == len && !memcmp(buf, data, len);
  free(buf);
  return eq;
}

static void check_snapshot(const char *dir) {
  char want[512], p[600], link[600];
  snprintf(want, sizeof want, "%s/models--test-org--tiny/snapshots/" SHA, cache_dir);
  ASSERT_STR_EQ(dir, want);
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i].name);
    ASSERT_MSG(file_equals(p, files[i].data, files[i].len), "%s differs", p);
  }
  snprintf(p, sizeof p, "%s/README.md", dir);
  ASSERT(access(p, F_OK) != 0); // not a model file
  snprintf(p, sizeof p, "%s/sub", dir);
  ASSERT(access(p, F_OK) != 0);
  // huggingface_hub layout: relative links into blobs/
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  ssize_t k = readlink(p, link, sizeof link - 1);
  ASSERT(k > 0);
  link[k] = 0;
  ASSERT_STR_EQ(link, "../../blobs/" MODEL_SHA256);
  snprintf(p, sizeof p, "%s/config.json", dir);
  k = readlink(p, link, sizeof link - 1);
  ASSERT(k > 0);
  link[k] = 0;
  ASSERT_STR_EQ(link, "../../blobs/" CONFIG_ID);
  snprintf(p, sizeof p, "%s/models--test-org--tiny/refs/main", cache_dir);
  ASSERT(file_equals(p, SHA, 40));
  snprintf(p, sizeof p, "%s/models--test-org--tiny/blobs/" MODEL_SHA256 ".incomplete",
           cache_dir);
  ASSERT(access(p, F_OK) != 0);
}

/* ---- tests ---------------------------------------------------------------------------- */

TEST(download_then_cache_hit_without_network) {
  fresh_env();
  char dir[1024];
  int before = requests();
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir, sizeof dir));
  check_snapshot(dir);
  ASSERT_EQ_INT(requests() - before, 4); // api + 3 files
  // Second call: answered from the cache, no request at all, even with the
  // endpoint pointing nowhere.
  setenv("HF_ENDPOINT", "http://127.0.0.1:1", 1);
  before = requests();
  char dir2[1024];
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir2, sizeof dir2));
  ASSERT_STR_EQ(dir2, dir);
  ASSERT_EQ_INT(requests(), before);
  // Offline mode also finds it.
  setenv("HF_HUB_OFFLINE", "1", 1);
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir2, sizeof dir2));
  unsetenv("HF_HUB_OFFLINE");
}

TEST(cache_dir_from_environment) {
  char d[512];
  setenv("HF_HUB_CACHE", "/x/hubcache", 1);
  ASSERT_OK(mx_hub_cache_dir(d, sizeof d));
  ASSERT_STR_EQ(d, "/x/hubcache");
  unsetenv("HF_HUB_CACHE");
  setenv("HF_HOME", "/y/hf", 1);
  ASSERT_OK(mx_hub_cache_dir(d, sizeof d));
  ASSERT_STR_EQ(d, "/y/hf/hub");
  unsetenv("HF_HOME");
  const char *home = getenv("HOME");
  char *xdg = getenv("XDG_CACHE_HOME") ? strdup(getenv("XDG_CACHE_HOME")) : NULL;
  unsetenv("XDG_CACHE_HOME");
  if (home) {
    char want[512];
    snprintf(want, sizeof want, "%s/.cache/huggingface/hub", home);
    ASSERT_OK(mx_hub_cache_dir(d, sizeof d));
    ASSERT_STR_EQ(d, want);
  }
  if (xdg) setenv("XDG_CACHE_HOME", xdg, 1);
  free(xdg);
}

TEST(existing_snapshot_written_by_python_is_used) {
  fresh_env();
  char p[600];
  // refs/main -> sha, snapshot with config.json + model.safetensors
  snprintf(p, sizeof p, "%s/models--other--m/snapshots/" SHA, cache_dir);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "mkdir -p %s %s/models--other--m/refs", p, cache_dir);
  ASSERT_EQ_INT(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "printf '{}' > %s/config.json && : > %s/model.safetensors && "
           "printf " SHA " > %s/models--other--m/refs/main", p, p, cache_dir);
  ASSERT_EQ_INT(system(cmd), 0);
  int before = requests();
  char dir[1024];
  ASSERT_OK(mx_hub_resolve("other/m", dir, sizeof dir));
  ASSERT_STR_EQ(dir, p);
  ASSERT_EQ_INT(requests(), before);
}

TEST(resume_partial_file_with_range) {
  fresh_env();
  char p[600];
  snprintf(p, sizeof p, "%s/models--test-org--tiny/blobs", cache_dir);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "mkdir -p %s", p);
  ASSERT_EQ_INT(system(cmd), 0);
  snprintf(p, sizeof p, "%s/models--test-org--tiny/blobs/" MODEL_SHA256 ".incomplete",
           cache_dir);
  FILE *f = fopen(p, "wb");
  ASSERT_NOT_NULL(f);
  fwrite(model_bytes, 1, 12345, f);
  fclose(f);
  int ranges = srv.n_ranges;
  char dir[1024];
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir, sizeof dir));
  ASSERT_EQ_INT(srv.n_ranges, ranges + 1);
  ASSERT_EQ_INT(srv.last_range, 12345);
  check_snapshot(dir);
}

TEST(interrupted_download_resumes_on_the_next_call) {
  fresh_env();
  srv.truncate_next = 1;
  char dir[1024];
  int st = mx_hub_resolve("test-org/tiny", dir, sizeof dir);
  ASSERT_EQ_INT(st, MX_ERR_IO);
  ASSERT_MSG(strstr(mx_last_error(), "/test-org/tiny/resolve/" SHA "/model.safetensors"),
             "error should name the URL: %s", mx_last_error());
  // nothing looks complete: no ref, no link for the model
  char p[600];
  snprintf(p, sizeof p, "%s/models--test-org--tiny/refs/main", cache_dir);
  ASSERT(access(p, F_OK) != 0);
  snprintf(p, sizeof p, "%s/models--test-org--tiny/blobs/" MODEL_SHA256 ".incomplete",
           cache_dir);
  struct stat sb;
  ASSERT(stat(p, &sb) == 0);
  ASSERT_EQ_INT(sb.st_size, MODEL_SIZE / 2);
  mx_clear_error();
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir, sizeof dir));
  ASSERT_EQ_INT(srv.last_range, MODEL_SIZE / 2);
  check_snapshot(dir);
}

TEST(not_found_names_the_url) {
  fresh_env();
  char dir[1024], want[256];
  int st = mx_hub_resolve("test-org/missing", dir, sizeof dir);
  ASSERT_EQ_INT(st, MX_ERR_NOT_FOUND);
  snprintf(want, sizeof want, "http://127.0.0.1:%d/api/models/test-org/missing/revision/main",
           srv.port);
  ASSERT_MSG(strstr(mx_last_error(), "404") && strstr(mx_last_error(), want),
             "message: %s", mx_last_error());
  mx_clear_error();
  // an unknown revision is a 404 too
  mx_hub_options o = mx_hub_options_default();
  o.revision = "v9";
  ASSERT_EQ_INT(mx_hub_resolve_ex("test-org/tiny", &o, dir, sizeof dir), MX_ERR_NOT_FOUND);
  ASSERT(strstr(mx_last_error(), "/revision/v9"));
  mx_clear_error();
}

TEST(token_is_sent_and_401_explains) {
  fresh_env();
  char dir[1024];
  int st = mx_hub_resolve("gated/model", dir, sizeof dir);
  ASSERT_EQ_INT(st, MX_ERR_IO);
  ASSERT_MSG(strstr(mx_last_error(), "401") && strstr(mx_last_error(), "HF_TOKEN"),
             "message: %s", mx_last_error());
  mx_clear_error();
  setenv("HF_TOKEN", "good", 1);
  ASSERT_OK(mx_hub_resolve("gated/model", dir, sizeof dir));
  ASSERT_STR_EQ(srv.last_auth, "Bearer good");
  fresh_env();
  setenv("HF_TOKEN", "hf_secret", 1);
  ASSERT_OK(mx_hub_resolve("test-org/tiny", dir, sizeof dir));
  ASSERT_STR_EQ(srv.last_auth, "Bearer hf_secret");
  unsetenv("HF_TOKEN");
}

TEST(network_failure_names_the_url) {
  fresh_env();
  int port, fd = listen_on(&port);
  ASSERT(fd >= 0);
  close(fd); // nothing listens there now
  char ep[64], dir[1024];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", port);
  setenv("HF_ENDPOINT", ep, 1);
  int st = mx_hub_resolve("test-org/tiny", dir, sizeof dir);
  ASSERT_EQ_INT(st, MX_ERR_IO);
  ASSERT_MSG(strstr(mx_last_error(), ep) && strstr(mx_last_error(), "network"),
             "message: %s", mx_last_error());
  mx_clear_error();
}

TEST(local_dirs_ids_and_offline) {
  fresh_env();
  char dir[1024];
  ASSERT_OK(mx_hub_resolve(cache_dir, dir, sizeof dir));
  ASSERT_STR_EQ(dir, cache_dir);
  ASSERT(mx_hub_is_repo_id("mlx-community/Llama-3.2-1B-Instruct-4bit"));
  ASSERT(!mx_hub_is_repo_id("noslash"));
  ASSERT(!mx_hub_is_repo_id("a/b/c"));
  ASSERT(!mx_hub_is_repo_id("../x"));
  ASSERT(!mx_hub_is_repo_id("a/.."));
  ASSERT(!mx_hub_is_repo_id("/abs/path"));
  ASSERT_EQ_INT(mx_hub_resolve("./no/such/dir", dir, sizeof dir), MX_ERR_NOT_FOUND);
  ASSERT(strstr(mx_last_error(), "neither a directory"));
  setenv("HF_HUB_OFFLINE", "1", 1);
  int before = requests();
  ASSERT_EQ_INT(mx_hub_resolve("test-org/tiny", dir, sizeof dir), MX_ERR_NOT_FOUND);
  ASSERT(strstr(mx_last_error(), "HF_HUB_OFFLINE"));
  ASSERT_EQ_INT(requests(), before);
  unsetenv("HF_HUB_OFFLINE");
  ASSERT_EQ_INT(mx_hub_resolve(NULL, dir, sizeof dir), MX_ERR_INVALID_ARG);
  ASSERT_EQ_INT(mx_hub_resolve("test-org/tiny", NULL, 0), MX_ERR_INVALID_ARG);
  mx_clear_error();
}

int main(int argc, char **argv) {
  if (!server_start()) {
    fprintf(stderr, "test_hub: cannot start the local HTTP server: %s\n", strerror(errno));
    return 1;
  }
  int r = test_main(argc, argv);
  server_stop();
  if (cache_dir[0]) nftw(cache_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  return r;
}
