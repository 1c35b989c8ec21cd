/* png.c — a minimal PNG writer: 8-bit RGB, one IDAT chunk (zlib deflate of
 * the scanlines, filter type 0), chunk CRCs computed here (CRC-32 of the
 * PNG specification, polynomial 0xEDB88320). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"
#include "mxc/train.h"

static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
  __atomic_store_n(&crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t mx_png_crc32(uint32_t crc, const void *data, size_t n) {
  if (!__atomic_load_n(&crc_ready, __ATOMIC_ACQUIRE)) crc_init();
  const uint8_t *p = data;
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static void be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* length, type, data, CRC(type + data) */
static bool put_chunk(FILE *f, const char *type, const uint8_t *data, size_t n) {
  uint8_t h[8];
  be32(h, (uint32_t)n);
  memcpy(h + 4, type, 4);
  uint32_t crc = mx_png_crc32(0, type, 4);
  crc = mx_png_crc32(crc, data, n);
  uint8_t t[4];
  be32(t, crc);
  return fwrite(h, 1, 8, f) == 8 && (n == 0 || fwrite(data, 1, n, f) == n) && fwrite(t, 1, 4, f) == 4;
}

int mx_png_write(const char *path, const uint8_t *rgb, int width, int height) {
  if (!path || !rgb || width < 1 || height < 1 || width > (1 << 24) || height > (1 << 24))
    return mx__set_error(MX_ERR_INVALID_ARG, "png: bad arguments (%dx%d)", width, height);
  size_t row = (size_t)width * 3 + 1, raw_n = row * (size_t)height;
  uint8_t *raw = malloc(raw_n);
  uLongf zn = compressBound((uLong)raw_n);
  uint8_t *z = malloc(zn);
  if (!raw || !z) {
    free(raw);
    free(z);
    return mx__set_error(MX_ERR_OOM, "png: out of memory (%dx%d)", width, height);
  }
  for (int y = 0; y < height; y++) {
    raw[(size_t)y * row] = 0; /* filter: none */
    memcpy(raw + (size_t)y * row + 1, rgb + (size_t)y * (size_t)width * 3, (size_t)width * 3);
  }
  int zst = compress2(z, &zn, raw, (uLong)raw_n, 9);
  free(raw);
  if (zst != Z_OK) {
    free(z);
    return mx__set_error(MX_ERR_INTERNAL, "png: deflate failed (%d)", zst);
  }
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(z);
    return mx__set_error(MX_ERR_IO, "png: cannot write %s: %s", path, strerror(errno));
  }
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  uint8_t ihdr[13];
  be32(ihdr, (uint32_t)width);
  be32(ihdr + 4, (uint32_t)height);
  ihdr[8] = 8;  /* bit depth */
  ihdr[9] = 2;  /* colour type: RGB */
  ihdr[10] = 0; /* deflate */
  ihdr[11] = 0; /* adaptive filtering */
  ihdr[12] = 0; /* no interlace */
  bool ok = fwrite(sig, 1, 8, f) == 8 && put_chunk(f, "IHDR", ihdr, 13) &&
            put_chunk(f, "IDAT", z, zn) && put_chunk(f, "IEND", NULL, 0);
  free(z);
  ok &= fclose(f) == 0;
  if (!ok) {
    remove(path);
    return mx__set_error(MX_ERR_IO, "png: cannot write %s", path);
  }
  return MX_OK;
}
