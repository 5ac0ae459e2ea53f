/* simpng.c - deterministic placeholder pictures for the simulated provider.
 *
 * The picture is drawn from SHA-256(prompt): a two-colour diagonal gradient,
 * a translucent horizontal band and three discs, so different prompts are told
 * apart at a glance. Rows are drawn into one row buffer and handed to libpng
 * one by one, and libpng's output is collected in a growable memory buffer.
 * zlib runs at a low level with the Sub filter: the sim must encode a 4K
 * picture quickly, and smooth gradients compress well enough that way. */
#include "upstream/simpng.h"

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/ids.h"
#include "util/log.h"

#define SIMPNG_MAX_SIDE 16384
#define SIMPNG_DISCS 3
#define SIMPNG_ZLEVEL 1

typedef struct simpng_disc {
  int cx, cy, r;
  uint8_t rgb[3];
} simpng_disc;

/* Everything the drawing needs, fixed before encoding starts. */
typedef struct simpng_scene {
  int width, height;
  bool anti_diagonal;   /* gradient runs top-right to bottom-left */
  const uint8_t *ramp;  /* gradient colour for each x+y, 3 bytes per step */
  int band_y0, band_y1; /* rows [y0, y1) are tinted */
  uint8_t band_rgb[3];
  simpng_disc discs[SIMPNG_DISCS];
} simpng_scene;

typedef struct simpng_out {
  uint8_t *data;
  size_t len, cap;
} simpng_out;

static int hexval(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

/* A fraction (0..255)/256 of n. */
static int frac(uint8_t b, int n) { return (int)((int64_t)b * n / 256); }

/* The colour ramp along the diagonal: ramp[t] for t = x + y. One entry per
 * diagonal step makes drawing a row a table lookup instead of divisions. */
static uint8_t *simpng_ramp(int width, int height, const uint8_t *from, const uint8_t *to) {
  size_t steps = (size_t)width + (size_t)height - 1;
  uint8_t *ramp = malloc(steps * 3);
  if (!ramp) return NULL;
  int64_t den = steps > 1 ? (int64_t)steps - 1 : 1;
  for (size_t t = 0; t < steps; t++)
    for (int c = 0; c < 3; c++)
      ramp[t * 3 + c] = (uint8_t)(from[c] + (int64_t)(to[c] - from[c]) * (int64_t)t / den);
  return ramp;
}

static void simpng_scene_init(simpng_scene *sc, const uint8_t d[32], int width, int height) {
  sc->width = width;
  sc->height = height;
  sc->anti_diagonal = d[6] & 1;
  int thick = height / 16 + frac(d[11], height / 4 + 1);
  sc->band_y0 = frac(d[10], height);
  sc->band_y1 = sc->band_y0 + (thick > 0 ? thick : 1);
  memcpy(sc->band_rgb, d + 7, 3);
  int side = width < height ? width : height;
  for (int k = 0; k < SIMPNG_DISCS; k++) {
    const uint8_t *b = d + 12 + 6 * k;
    simpng_disc *disc = &sc->discs[k];
    disc->cx = frac(b[0], width);
    disc->cy = frac(b[1], height);
    disc->r = side / 10 + frac(b[2], side / 4 + 1);
    memcpy(disc->rgb, b + 3, 3);
  }
}

static void simpng_draw_disc_span(const simpng_scene *sc, const simpng_disc *disc, int y,
                                  uint8_t *row) {
  int64_t dy = y - disc->cy;
  int64_t rr = (int64_t)disc->r * disc->r;
  if (dy * dy > rr) return;
  int half = (int)sqrt((double)(rr - dy * dy));
  int x0 = disc->cx - half < 0 ? 0 : disc->cx - half;
  int x1 = disc->cx + half >= sc->width ? sc->width - 1 : disc->cx + half;
  for (int x = x0; x <= x1; x++) memcpy(row + (size_t)x * 3, disc->rgb, 3);
}

static void simpng_draw_row(const simpng_scene *sc, int y, uint8_t *row) {
  int w = sc->width;
  if (sc->anti_diagonal) {
    for (int x = 0; x < w; x++)
      memcpy(row + (size_t)x * 3, sc->ramp + ((size_t)(w - 1 - x) + (size_t)y) * 3, 3);
  } else {
    memcpy(row, sc->ramp + (size_t)y * 3, (size_t)w * 3);
  }
  if (y >= sc->band_y0 && y < sc->band_y1) {
    for (size_t i = 0; i < (size_t)w * 3; i++)
      row[i] = (uint8_t)((row[i] + sc->band_rgb[i % 3]) / 2);
  }
  for (int k = 0; k < SIMPNG_DISCS; k++) simpng_draw_disc_span(sc, &sc->discs[k], y, row);
}

static void simpng_write(png_structp png, png_bytep data, size_t n) {
  simpng_out *out = png_get_io_ptr(png);
  if (n > SIZE_MAX - out->len) png_error(png, "output too large");
  if (out->len + n > out->cap) {
    size_t cap = out->cap ? out->cap : 4096;
    while (cap < out->len + n) cap = cap > SIZE_MAX / 2 ? out->len + n : cap * 2;
    uint8_t *p = realloc(out->data, cap);
    if (!p) png_error(png, "out of memory");
    out->data = p;
    out->cap = cap;
  }
  memcpy(out->data + out->len, data, n);
  out->len += n;
}

static void simpng_flush(png_structp png) { (void)png; }

static void simpng_on_error(png_structp png, png_const_charp msg) {
  char q[128];
  LOG_ERROR("simpng_libpng_error", "error=%s", log_quote(msg, q, sizeof q));
  png_longjmp(png, 1);
}

static void simpng_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  char q[128];
  LOG_WARN("simpng_libpng_warning", "warning=%s", log_quote(msg, q, sizeof q));
}

/* Runs libpng from header to end. Nothing local is modified between setjmp
 * and a possible longjmp except the row counter, which is not read after it;
 * all buffers belong to the caller, who frees them either way. */
static bool simpng_encode(png_structp png, png_infop info, const simpng_scene *sc, uint8_t *row,
                          png_textp text, int n_text) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, (png_uint_32)sc->width, (png_uint_32)sc->height, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, SIMPNG_ZLEVEL);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_text(png, info, text, n_text);
  png_write_info(png, info);
  for (int y = 0; y < sc->height; y++) {
    simpng_draw_row(sc, y, row);
    png_write_row(png, row);
  }
  png_write_end(png, info);
  return true;
}

/* Sets up libpng around the caller's buffers and encodes. */
static bool simpng_run(const simpng_scene *sc, uint8_t *row, const char *hex, simpng_out *out) {
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, simpng_on_error, simpng_on_warning);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, NULL);
    return false;
  }
  char key_sw[] = "Software", val_sw[] = "imgate sim", key_c[] = "Comment";
  char comment[128];
  snprintf(comment, sizeof comment, "sim render of prompt sha256 %s", hex);
  png_text text[2];
  memset(text, 0, sizeof text);
  text[0].compression = PNG_TEXT_COMPRESSION_NONE;
  text[0].key = key_sw;
  text[0].text = val_sw;
  text[1].compression = PNG_TEXT_COMPRESSION_NONE;
  text[1].key = key_c;
  text[1].text = comment;
  png_set_write_fn(png, out, simpng_write, simpng_flush);
  bool ok = simpng_encode(png, info, sc, row, text, 2);
  png_destroy_write_struct(&png, &info);
  return ok;
}

bool simpng_render(const char *prompt, int width, int height, uint8_t **png, size_t *len) {
  if (!prompt || !png || !len) return false;
  if (width < 1 || height < 1 || width > SIMPNG_MAX_SIDE || height > SIMPNG_MAX_SIDE) return false;
  char hex[65];
  ids_sha256_hex(prompt, strlen(prompt), hex);
  uint8_t digest[32];
  for (int i = 0; i < 32; i++)
    digest[i] = (uint8_t)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));

  simpng_scene sc;
  simpng_scene_init(&sc, digest, width, height);
  uint8_t *ramp = simpng_ramp(width, height, digest, digest + 3);
  uint8_t *row = malloc((size_t)width * 3);
  simpng_out out = {NULL, 0, 0};
  bool ok = false;
  if (ramp && row) {
    sc.ramp = ramp;
    ok = simpng_run(&sc, row, hex, &out);
  }
  free(ramp);
  free(row);
  if (!ok) {
    free(out.data);
    return false;
  }
  *png = out.data;
  *len = out.len;
  return true;
}
