/* plot.c — train / validation loss curves from metrics.jsonl as a PNG:
 * a small RGB raster, a built-in 5x7 bitmap font, axes with "nice" ticks,
 * grid, two polylines and a legend. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mxc/train.h"

/* ---- raster ----------------------------------------------------------------- */

typedef struct {
  uint8_t *p;
  int w, h;
} canvas;

static void px(canvas *c, int x, int y, const uint8_t col[3]) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
  memcpy(c->p + ((size_t)y * (size_t)c->w + (size_t)x) * 3, col, 3);
}

static void rect(canvas *c, int x0, int y0, int x1, int y1, const uint8_t col[3]) {
  for (int y = y0; y <= y1; y++)
    for (int x = x0; x <= x1; x++) px(c, x, y, col);
}

/* A line 2 pixels thick (Bresenham, each point drawn as a 2x2 block). */
static void line(canvas *c, int x0, int y0, int x1, int y1, const uint8_t col[3]) {
  int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (;;) {
    rect(c, x0, y0, x0 + 1, y0 + 1, col);
    if (x0 == x1 && y0 == y1) break;
    int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

/* ---- font: 5x7 glyphs, one byte per row, bit 4 = leftmost column -------------- */

static const char glyph_chars[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .,-+:/()_=%'";
static const uint8_t glyphs[][7] = {
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
    /* A-Z */
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
    {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
    /* a-z */
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}, {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E},
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}, {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F},
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}, {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08},
    {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E}, {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11},
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}, {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C},
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}, {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}, {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}, {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10},
    {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01}, {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10},
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}, {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06},
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}, {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04},
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A}, {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11},
    {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E}, {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F},
    /* space . , - + : / ( ) _ = % ' */
    {0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0x0C, 0x0C},
    {0, 0, 0, 0, 0x0C, 0x04, 0x08}, {0, 0, 0, 0x1F, 0, 0, 0},
    {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}, {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0},
    {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}, {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}, {0, 0, 0, 0, 0, 0, 0x1F},
    {0, 0, 0x1F, 0, 0x1F, 0, 0}, {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},
    {0x04, 0x04, 0x08, 0, 0, 0, 0},
};
static const uint8_t glyph_box[7] = {0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F};

enum { FONT_SCALE = 2, CHAR_W = 6 * FONT_SCALE, CHAR_H = 7 * FONT_SCALE };

static int text_width(const char *s) { return (int)strlen(s) * CHAR_W - FONT_SCALE; }

/* Text with its top-left corner at (x, y); other characters as boxes. */
static void text(canvas *c, int x, int y, const char *s, const uint8_t col[3]) {
  for (; *s; s++, x += CHAR_W) {
    const char *g = *s ? strchr(glyph_chars, *s) : NULL;
    const uint8_t *rows = g ? glyphs[g - glyph_chars] : glyph_box;
    for (int r = 0; r < 7; r++)
      for (int k = 0; k < 5; k++)
        if (rows[r] & (0x10 >> k))
          rect(c, x + k * FONT_SCALE, y + r * FONT_SCALE, x + k * FONT_SCALE + FONT_SCALE - 1,
               y + r * FONT_SCALE + FONT_SCALE - 1, col);
  }
}

/* ---- metrics ---------------------------------------------------------------- */

typedef struct {
  double x, y;
} point;

typedef struct {
  point *p;
  size_t n, cap;
} series;

static int series_push(series *s, double x, double y) {
  if (s->n == s->cap) {
    size_t c = s->cap ? 2 * s->cap : 256;
    point *q = realloc(s->p, c * sizeof *q);
    if (!q) return -1;
    s->p = q;
    s->cap = c;
  }
  s->p[s->n++] = (point){x, y};
  return 0;
}

static int point_cmp(const void *a, const void *b) {
  double x = ((const point *)a)->x, y = ((const point *)b)->x;
  return (x > y) - (x < y);
}

/* Reads "step" with "loss" / "val_loss" from each line (other keys and
 * lines without a loss are ignored; blank lines too). */
static int read_metrics(const char *path, series *train, series *val) {
  FILE *f = fopen(path, "rb");
  if (!f) return mx__set_error(MX_ERR_IO, "plot: cannot open %s: %s", path, strerror(errno));
  char *lineb = NULL;
  size_t cap = 0;
  ssize_t n;
  int st = MX_OK;
  long lineno = 0;
  while (!st && (n = getline(&lineb, &cap, f)) >= 0) {
    lineno++;
    size_t k = 0;
    while (k < (size_t)n && (lineb[k] == ' ' || lineb[k] == '\t' || lineb[k] == '\r' || lineb[k] == '\n')) k++;
    if (k == (size_t)n) continue;
    cJSON *j = cJSON_ParseWithLength(lineb, (size_t)n);
    if (!cJSON_IsObject(j)) {
      st = mx__set_error(MX_ERR_FORMAT, "plot: %s:%ld: not a JSON object", path, lineno);
    } else {
      const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
      const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "loss");
      const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "val_loss");
      if ((l || v) && !cJSON_IsNumber(s))
        st = mx__set_error(MX_ERR_FORMAT, "plot: %s:%ld: a loss without a numeric \"step\"", path, lineno);
      else if ((l && !cJSON_IsNumber(l)) || (v && !cJSON_IsNumber(v)))
        st = mx__set_error(MX_ERR_FORMAT, "plot: %s:%ld: \"%s\" is not a number", path, lineno,
                           l && !cJSON_IsNumber(l) ? "loss" : "val_loss");
      else {
        if (l && isfinite(l->valuedouble) && series_push(train, s->valuedouble, l->valuedouble))
          st = mx__set_error(MX_ERR_OOM, "plot: out of memory");
        if (!st && v && isfinite(v->valuedouble) && series_push(val, s->valuedouble, v->valuedouble))
          st = mx__set_error(MX_ERR_OOM, "plot: out of memory");
      }
    }
    cJSON_Delete(j);
  }
  free(lineb);
  fclose(f);
  if (!st && train->n == 0 && val->n == 0)
    st = mx__set_error(MX_ERR_FORMAT, "plot: %s: no \"loss\" or \"val_loss\" values (%ld lines)", path,
                       lineno);
  if (!st) {
    if (train->n > 1) qsort(train->p, train->n, sizeof *train->p, point_cmp);
    if (val->n > 1) qsort(val->p, val->n, sizeof *val->p, point_cmp);
  }
  return st;
}

/* ---- axes ------------------------------------------------------------------- */

/* Ticks at multiples of 1, 2 or 5 x 10^k covering [lo, hi], about 5 of them. */
static double nice_step(double range) {
  double raw = range / 5, p = pow(10, floor(log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static void fmt_tick(char *buf, size_t n, double v, double step) {
  if (fabs(v) < step * 1e-9) v = 0;
  int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
  if (fabs(v) >= 1e6 || (v != 0 && fabs(v) < 1e-4)) snprintf(buf, n, "%.2g", v);
  else snprintf(buf, n, "%.*f", dec, v);
}

const uint8_t mx_plot_train_rgb[3] = {31, 119, 180}, mx_plot_val_rgb[3] = {255, 127, 14};

int mx_train_plot(const char *metrics_path, const char *png_path, const mx_plot_options *opt) {
  if (!metrics_path || !png_path) return mx__set_error(MX_ERR_INVALID_ARG, "plot: a path is NULL");
  mx_plot_options o = opt ? *opt : MX_PLOT_DEFAULTS;
  if (o.width <= 0) o.width = 800;
  if (o.height <= 0) o.height = 500;
  if (o.width < 200 || o.height < 150 || o.width > 8000 || o.height > 8000)
    return mx__set_error(MX_ERR_INVALID_ARG, "plot: size %dx%d out of range (200x150 .. 8000x8000)",
                         o.width, o.height);
  series tr = {0}, va = {0};
  int st = read_metrics(metrics_path, &tr, &va);
  canvas c = {NULL, o.width, o.height};
  if (!st && !(c.p = malloc((size_t)c.w * (size_t)c.h * 3))) st = mx__set_error(MX_ERR_OOM, "plot: out of memory");
  if (st) {
    free(tr.p);
    free(va.p);
    return st;
  }
  static const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, grid[3] = {225, 225, 225},
                       grey[3] = {90, 90, 90};
  memset(c.p, 255, (size_t)c.w * (size_t)c.h * 3);

  /* data ranges */
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  const series *all[2] = {&tr, &va};
  for (int s = 0; s < 2; s++)
    for (size_t i = 0; i < all[s]->n; i++) {
      xlo = fmin(xlo, all[s]->p[i].x);
      xhi = fmax(xhi, all[s]->p[i].x);
      ylo = fmin(ylo, all[s]->p[i].y);
      yhi = fmax(yhi, all[s]->p[i].y);
    }
  if (xhi - xlo < 1e-12) {
    xlo -= 1;
    xhi += 1;
  }
  if (yhi - ylo < 1e-12) {
    ylo -= 0.5;
    yhi += 0.5;
  }
  double ys = nice_step(yhi - ylo), xs = nice_step(xhi - xlo);
  ylo = floor(ylo / ys) * ys;
  yhi = ceil(yhi / ys) * ys;
  if (xlo >= 0 && xlo < xs) xlo = 0;

  /* plot area */
  char buf[64];
  int lw = 0;
  for (double v = ylo; v <= yhi + ys * 0.5; v += ys) {
    fmt_tick(buf, sizeof buf, v, ys);
    if (text_width(buf) > lw) lw = text_width(buf);
  }
  const int title_h = o.title && *o.title ? 12 + CHAR_H : 0;
  const int L = lw + 24, R = c.w - 24, T = title_h + 12 + CHAR_H + 14, B = c.h - (CHAR_H * 2 + 36);
#define MAPX(v) (L + (int)lround(((v) - xlo) / (xhi - xlo) * (R - L)))
#define MAPY(v) (B - (int)lround(((v) - ylo) / (yhi - ylo) * (B - T)))

  /* grid and ticks */
  for (double v = ylo; v <= yhi + ys * 0.5; v += ys) {
    int y = MAPY(v);
    line(&c, L, y, R, y, grid);
    rect(&c, L - 6, y, L - 1, y + 1, black);
    fmt_tick(buf, sizeof buf, v, ys);
    text(&c, L - 10 - text_width(buf), y - CHAR_H / 2, buf, black);
  }
  double x0 = ceil(xlo / xs) * xs;
  for (double v = x0; v <= xhi + xs * 1e-9; v += xs) {
    int x = MAPX(v);
    line(&c, x, T, x, B, grid);
    rect(&c, x, B + 1, x + 1, B + 6, black);
    fmt_tick(buf, sizeof buf, v, xs);
    text(&c, x - text_width(buf) / 2, B + 10, buf, black);
  }
  /* axes, labels, title */
  rect(&c, L - 1, T, L, B + 1, black);
  rect(&c, L - 1, B, R, B + 1, black);
  text(&c, (L + R) / 2 - text_width("step") / 2, B + 18 + CHAR_H, "step", grey);
  text(&c, 8, T - CHAR_H - 12, "loss", grey);
  if (o.title && *o.title) text(&c, (c.w - text_width(o.title)) / 2, 12, o.title, black);

  /* curves */
  const uint8_t *cols[2] = {mx_plot_train_rgb, mx_plot_val_rgb};
  for (int s = 0; s < 2; s++) {
    const series *q = all[s];
    for (size_t i = 0; i < q->n; i++) {
      int x = MAPX(q->p[i].x), y = MAPY(q->p[i].y);
      if (i > 0) line(&c, MAPX(q->p[i - 1].x), MAPY(q->p[i - 1].y), x, y, cols[s]);
      if (s == 1 || q->n == 1) rect(&c, x - 2, y - 2, x + 3, y + 3, cols[s]); /* markers */
    }
  }
#undef MAPX
#undef MAPY

  /* legend (top right) */
  const char *names[2] = {"train", "validation"};
  int nl = (tr.n > 0) + (va.n > 0), bw = 40 + text_width("validation") + 16, bh = nl * (CHAR_H + 8) + 8;
  int bx = R - bw - 8, by = T + 8;
  rect(&c, bx, by, bx + bw, by + bh, white);
  rect(&c, bx, by, bx + bw, by, grey);
  rect(&c, bx, by + bh, bx + bw, by + bh, grey);
  rect(&c, bx, by, bx, by + bh, grey);
  rect(&c, bx + bw, by, bx + bw, by + bh, grey);
  int row = 0;
  for (int s = 0; s < 2; s++) {
    if (!all[s]->n) continue;
    int y = by + 8 + row * (CHAR_H + 8);
    rect(&c, bx + 8, y + CHAR_H / 2 - 1, bx + 32, y + CHAR_H / 2 + 1, cols[s]);
    text(&c, bx + 40, y, names[s], black);
    row++;
  }
  st = mx_png_write(png_path, c.p, c.w, c.h);
  free(c.p);
  free(tr.p);
  free(va.p);
  return st;
}
