/* bench_io.c — how fast a 1 GiB safetensors checkpoint opens.
 *
 *   bench_io [SIZE_MIB] [DIR]      (defaults: 1024 MiB in /tmp)
 *
 * Writes DIR/mxc_bench_io.safetensors (256 float32 tensors, like a model's
 * layers), then times: saving it (atomic: temp file + fsync + rename);
 * mx_load (mmap + header parse + zero-copy views) with the file's pages
 * evicted from the page cache (cold, posix_fadvise DONTNEED) and cached
 * (warm); touching one 4 MiB tensor after opening; loading with copy=true
 * (every byte read); and read()-ing the whole file for comparison. Prints a
 * table; the file is removed at the end. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mxc/mxc.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void evict(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

/* Sum of one tensor's floats: reads every page of it. */
static double touch(mx_array *a) {
  const float *p = mx_array_data(a);
  double s = 0;
  for (int64_t i = 0; p && i < mx_array_size(a); i++) s += p[i];
  return s;
}

#define REPS 5

int main(int argc, char **argv) {
  int64_t mib = argc > 1 ? atoll(argv[1]) : 1024;
  const char *dir = argc > 2 ? argv[2] : "/tmp";
  char path[1024];
  snprintf(path, sizeof path, "%s/mxc_bench_io.safetensors", dir);
  const int ntensors = 256;
  int64_t per = mib * 1024 * 1024 / ntensors / 4; /* floats per tensor */
  int64_t shape[2] = {per / 1024, 1024};

  mx_map *m = mx_map_new();
  for (int i = 0; i < ntensors; i++) {
    char name[64];
    snprintf(name, sizeof name, "model.layers.%03d.weight", i);
    mx_array *a = mx_full(shape, 2, (float)i, MX_FLOAT32);
    mx_map_set_take(m, name, a);
  }
  if (mx_map_eval(m)) {
    fprintf(stderr, "bench_io: %s\n", mx_last_error());
    return 1;
  }
  double t0 = now();
  if (mx_save_safetensors(path, m, NULL)) {
    fprintf(stderr, "bench_io: %s\n", mx_last_error());
    return 1;
  }
  double t_save = now() - t0;
  mx_map_free(m);

  double cold_open[REPS], cold_touch[REPS], warm_open[REPS], warm_touch[REPS];
  double checksum = 0;
  for (int r = 0; r < REPS; r++) {
    for (int cold = 1; cold >= 0; cold--) {
      if (cold) evict(path);
      mx_map *w = NULL;
      t0 = now();
      if (mx_load(path, &w, NULL)) {
        fprintf(stderr, "bench_io: %s\n", mx_last_error());
        return 1;
      }
      double t1 = now();
      checksum += touch(mx_map_get(w, "model.layers.128.weight"));
      double t2 = now();
      (cold ? cold_open : warm_open)[r] = t1 - t0;
      (cold ? cold_touch : warm_touch)[r] = t2 - t1;
      mx_map_free(w);
    }
  }
  /* full copy and plain read() for comparison (warm cache) */
  double t_copy[3], t_read[3];
  for (int r = 0; r < 3; r++) {
    mx_map *w = NULL;
    t0 = now();
    mx_load_ex(path, &(mx_load_options){.copy = true}, &w, NULL);
    t_copy[r] = now() - t0;
    mx_map_free(w);
    int fd = open(path, O_RDONLY);
    char *buf = malloc(1 << 24);
    t0 = now();
    while (read(fd, buf, 1 << 24) > 0) {
    }
    t_read[r] = now() - t0;
    free(buf);
    close(fd);
  }
  unlink(path);

  printf("bench_io: %lld MiB safetensors, %d float32 tensors of %lld x 1024 (checksum %g)\n",
         (long long)mib, ntensors, (long long)shape[0], checksum);
  printf("| operation | time |\n|---|---|\n");
  printf("| save (write + fsync + rename) | %.3f s (%.2f GB/s) |\n", t_save,
         (double)mib * 1048576.0 / t_save / 1e9);
  printf("| open, cold cache (mmap + header + %d views) | %.3f ms |\n", ntensors,
         1e3 * median(cold_open, REPS));
  printf("| touch one 4 MiB tensor after a cold open | %.3f ms |\n",
         1e3 * median(cold_touch, REPS));
  printf("| open, warm cache | %.3f ms |\n", 1e3 * median(warm_open, REPS));
  printf("| touch one 4 MiB tensor, warm | %.3f ms |\n", 1e3 * median(warm_touch, REPS));
  printf("| load with copy=true (every byte), warm | %.3f s |\n", median(t_copy, 3));
  printf("| read() the whole file, warm | %.3f s |\n", median(t_read, 3));
  return 0;
}
