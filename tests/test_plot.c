/* test_plot.c — the PNG writer and `mx_train_plot`: a valid PNG (signature,
 * IHDR, chunk CRCs checked with zlib's crc32, IDAT inflated with zlib), the
 * curves' colours present, background elsewhere; clear errors (file:line). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "mxc/train.h"
#include "test.h"

typedef struct {
  int w, h;
  uint8_t *rgb; /* w * h * 3 */
} image;

static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads an RGB8 PNG written by mx_png_write, checking its structure; the
 * failure reason goes to *why. */
static int read_png(const char *path, image *im, const char **why) {
  *why = "ok";
  FILE *f = fopen(path, "rb");
  if (!f) return *why = "cannot open", -1;
  uint8_t *d = malloc(1 << 24);
  size_t n = fread(d, 1, 1 << 24, f);
  fclose(f);
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  int rc = -1;
  uint8_t *z = NULL;
  size_t zn = 0;
  bool ihdr = false, iend = false;
  if (n < 8 || memcmp(d, sig, 8)) {
    *why = "bad signature";
    goto out;
  }
  for (size_t p = 8; p + 12 <= n && !iend;) {
    uint32_t len = rd32(d + p);
    if (p + 12 + len > n) {
      *why = "truncated chunk";
      goto out;
    }
    const uint8_t *type = d + p + 4, *data = d + p + 8;
    uint32_t crc = (uint32_t)crc32(crc32(0, Z_NULL, 0), type, 4 + len);
    if (crc != rd32(d + p + 8 + len)) {
      *why = "chunk CRC mismatch";
      goto out;
    }
    if (!memcmp(type, "IHDR", 4)) {
      if (len != 13 || data[8] != 8 || data[9] != 2 || data[10] || data[11] || data[12]) {
        *why = "unexpected IHDR";
        goto out;
      }
      im->w = (int)rd32(data);
      im->h = (int)rd32(data + 4);
      ihdr = true;
    } else if (!memcmp(type, "IDAT", 4)) {
      z = realloc(z, zn + len);
      memcpy(z + zn, data, len);
      zn += len;
    } else if (!memcmp(type, "IEND", 4)) {
      iend = true;
    }
    p += 12 + len;
  }
  if (!ihdr || !iend || !zn) {
    *why = "missing IHDR / IDAT / IEND";
    goto out;
  }
  uLongf rn = (uLongf)((size_t)im->w * 3 + 1) * (uLongf)im->h;
  uint8_t *raw = malloc(rn + 1);
  uLongf got = rn + 1;
  if (uncompress(raw, &got, z, zn) != Z_OK || got != rn) {
    free(raw);
    *why = "IDAT does not inflate to the image size";
    goto out;
  }
  im->rgb = malloc((size_t)im->w * (size_t)im->h * 3);
  rc = 0;
  for (int y = 0; y < im->h; y++) {
    const uint8_t *row = raw + (size_t)y * ((size_t)im->w * 3 + 1);
    if (row[0] != 0) {
      *why = "unexpected filter type";
      rc = -1;
    }
    memcpy(im->rgb + (size_t)y * (size_t)im->w * 3, row + 1, (size_t)im->w * 3);
  }
  free(raw);
out:
  free(z);
  free(d);
  return rc;
}

static const uint8_t *pixel(const image *im, int x, int y) { return im->rgb + ((size_t)y * (size_t)im->w + (size_t)x) * 3; }

static long count_colour(const image *im, const uint8_t c[3]) {
  long k = 0;
  for (int y = 0; y < im->h; y++)
    for (int x = 0; x < im->w; x++) k += !memcmp(pixel(im, x, y), c, 3);
  return k;
}

static char *tmpdir(void) {
  char *d = malloc(64);
  snprintf(d, 64, "/tmp/mxc_test_plot_XXXXXX");
  if (!mkdtemp(d)) {
    free(d);
    return NULL;
  }
  return d;
}

static void rm_tmp(char *d) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", d);
  free(d);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

TEST(crc32_matches_zlib) {
  const char *s = "IEND";
  ASSERT_EQ_INT(mx_png_crc32(0, s, 4), 0xAE426082u); /* the well-known IEND CRC */
  uint8_t buf[1000];
  for (int i = 0; i < 1000; i++) buf[i] = (uint8_t)(i * 7 + 3);
  ASSERT_EQ_INT(mx_png_crc32(0, buf, 1000), (uint32_t)crc32(0, buf, 1000));
  ASSERT_EQ_INT(mx_png_crc32(mx_png_crc32(0, buf, 300), buf + 300, 700), (uint32_t)crc32(0, buf, 1000));
}

TEST(png_round_trips_pixels) {
  char *d = tmpdir();
  ASSERT_NOT_NULL(d);
  char p[128];
  snprintf(p, sizeof p, "%s/a.png", d);
  int w = 37, h = 11;
  uint8_t *rgb = malloc((size_t)w * h * 3);
  for (int i = 0; i < w * h * 3; i++) rgb[i] = (uint8_t)(i * 31 + i / 7);
  ASSERT_OK(mx_png_write(p, rgb, w, h));
  image im = {0};
  const char *why;
  int rc = read_png(p, &im, &why);
  ASSERT_MSG(rc == 0, "%s", why);
  ASSERT_EQ_INT(im.w, w);
  ASSERT_EQ_INT(im.h, h);
  ASSERT(memcmp(im.rgb, rgb, (size_t)w * h * 3) == 0);
  free(im.rgb);
  free(rgb);
  ASSERT(mx_png_write(p, NULL, w, h) != MX_OK);
  snprintf(p, sizeof p, "%s/no/such/dir.png", d);
  uint8_t one[3] = {0};
  ASSERT(mx_png_write(p, one, 1, 1) != MX_OK);
  ASSERT(strstr(mx_last_error(), "no/such/dir.png") != NULL);
  rm_tmp(d);
}

TEST(plot_draws_both_curves) {
  char *d = tmpdir();
  ASSERT_NOT_NULL(d);
  char m[128], p[128];
  snprintf(m, sizeof m, "%s/metrics.jsonl", d);
  snprintf(p, sizeof p, "%s/loss.png", d);
  FILE *f = fopen(m, "w");
  ASSERT_NOT_NULL(f);
  fputs("{\"memory_plan\": \"full\", \"micro_batch\": 4}\n", f); /* no loss: ignored */
  for (int s = 10; s <= 200; s += 10) {
    fprintf(f, "{\"step\": %d, \"loss\": %.4f, \"lr\": 0.001, \"peak_memory\": 123}\n", s, 5.0 / (1 + s / 40.0));
    if (s % 50 == 0) fprintf(f, "{\"step\": %d, \"val_loss\": %.4f}\n", s, 5.5 / (1 + s / 50.0));
  }
  fputs("\n", f); /* blank lines are fine */
  fclose(f);
  mx_plot_options o = MX_PLOT_DEFAULTS;
  o.title = "Loss (test)";
  ASSERT_OK(mx_train_plot(m, p, &o));
  image im = {0};
  const char *why;
  int rc = read_png(p, &im, &why);
  ASSERT_MSG(rc == 0, "%s", why);
  ASSERT_EQ_INT(im.w, 800);
  ASSERT_EQ_INT(im.h, 500);
  long nt = count_colour(&im, mx_plot_train_rgb), nv = count_colour(&im, mx_plot_val_rgb);
  static const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0};
  ASSERT_MSG(nt > 500, "train colour pixels: %ld", nt);
  ASSERT_MSG(nv > 200, "validation colour pixels: %ld", nv);
  long nw = count_colour(&im, white), nb = count_colour(&im, black);
  ASSERT_MSG(nw > (long)im.w * im.h / 2, "background pixels: %ld", nw);
  ASSERT_MSG(nb > 1000, "axes / text pixels: %ld", nb);
  /* corners are background */
  ASSERT(!memcmp(pixel(&im, im.w - 1, im.h - 1), white, 3));
  ASSERT(!memcmp(pixel(&im, im.w - 1, 0), white, 3));
  /* the first train point (step 10, the highest loss) is in the upper left
   * part of the plot, the last one (lowest) lower and to the right */
  int top_x = -1, top_y = im.h;
  for (int y = 0; y < im.h && top_x < 0; y++)
    for (int x = 0; x < im.w; x++)
      if (!memcmp(pixel(&im, x, y), mx_plot_train_rgb, 3)) {
        top_x = x;
        top_y = y;
        break;
      }
  ASSERT_MSG(top_x >= 0 && top_x < im.w / 3 && top_y < im.h / 3, "train curve starts at %d,%d", top_x, top_y);
  free(im.rgb);
  /* only validation values, a custom size */
  write_file(m, "{\"step\": 1, \"val_loss\": 2.0}\n{\"step\": 3, \"val_loss\": 1.5}\n");
  o = MX_PLOT_DEFAULTS;
  o.width = 400;
  o.height = 300;
  ASSERT_OK(mx_train_plot(m, p, &o));
  rc = read_png(p, &im, &why);
  ASSERT_MSG(rc == 0, "%s", why);
  ASSERT_EQ_INT(im.w, 400);
  ASSERT_EQ_INT(im.h, 300);
  ASSERT(count_colour(&im, mx_plot_val_rgb) > 50);
  ASSERT_EQ_INT(count_colour(&im, mx_plot_train_rgb), 0);
  free(im.rgb);
  rm_tmp(d);
}

TEST(plot_errors_name_file_and_line) {
  char *d = tmpdir();
  ASSERT_NOT_NULL(d);
  char m[128], p[128], want[160];
  snprintf(m, sizeof m, "%s/metrics.jsonl", d);
  snprintf(p, sizeof p, "%s/loss.png", d);
  ASSERT(mx_train_plot(m, p, NULL) != MX_OK); /* missing */
  ASSERT(strstr(mx_last_error(), "metrics.jsonl") != NULL);
  write_file(m, "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"loss\": \n");
  ASSERT_EQ_INT(mx_train_plot(m, p, NULL), MX_ERR_FORMAT);
  snprintf(want, sizeof want, "%s:2:", m);
  ASSERT_MSG(strstr(mx_last_error(), want) != NULL, "%s", mx_last_error());
  write_file(m, "\n{\"loss\": 2.0}\n");
  ASSERT_EQ_INT(mx_train_plot(m, p, NULL), MX_ERR_FORMAT);
  snprintf(want, sizeof want, "%s:2:", m);
  ASSERT_MSG(strstr(mx_last_error(), want) != NULL, "%s", mx_last_error());
  write_file(m, "{\"step\": 1, \"loss\": \"x\"}\n");
  ASSERT_EQ_INT(mx_train_plot(m, p, NULL), MX_ERR_FORMAT);
  ASSERT(strstr(mx_last_error(), "\"loss\" is not a number") != NULL);
  write_file(m, "{\"step\": 1, \"lr\": 0.1}\n");
  ASSERT_EQ_INT(mx_train_plot(m, p, NULL), MX_ERR_FORMAT);
  ASSERT(strstr(mx_last_error(), "no \"loss\"") != NULL);
  write_file(m, "[1, 2]\n");
  ASSERT_EQ_INT(mx_train_plot(m, p, NULL), MX_ERR_FORMAT);
  ASSERT(strstr(mx_last_error(), ":1: not a JSON object") != NULL);
  ASSERT(access(p, F_OK) != 0); /* nothing written on error */
  rm_tmp(d);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
