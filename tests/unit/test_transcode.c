/* test_transcode.c - converting images between PNG, JPEG and WebP through
 * libvips: every pair of formats, quality, metadata stripped, alpha into
 * JPEG, the pixel limit (a decompression bomb is refused before it is
 * decoded), garbage and every kind of truncation refused without a crash.
 * Inputs are copied into buffers of exactly their size, so ASan sees any
 * read past the end. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <vips/vips.h>

#include "core/transcode.h"
#include "upstream/simpng.h"
#include "util/imagefmt.h"

static const imagefmt formats[] = {IMAGEFMT_PNG, IMAGEFMT_JPEG, IMAGEFMT_WEBP};
#define N_FORMATS (sizeof formats / sizeof formats[0])

/* The simulated provider's picture: a real PNG with tEXt chunks
 * ("Software" = "imgate sim"), detailed enough for lossy codecs to differ. */
static uint8_t *sim_png(const char *prompt, int w, int h, size_t *len) {
  uint8_t *png = NULL;
  assert_true(simpng_render(prompt, w, h, &png, len));
  return png;
}

/* Converts, asserting success, and checks what came out by its own bytes. */
static uint8_t *convert_ok(const uint8_t *in, size_t len, imagefmt to, int quality, int w, int h,
                           size_t *out_len) {
  uint8_t *copy = malloc(len);
  assert_non_null(copy);
  memcpy(copy, in, len);
  transcode_result r;
  transcode_status st = transcode_image(copy, len, to, quality, 0, &r);
  free(copy);
  if (st != TRANSCODE_OK) fail_msg("transcode to %s: %s (%s)", imagefmt_name(to),
                                   transcode_status_name(st), r.why);
  assert_non_null(r.data);
  assert_int_equal(imagefmt_detect(r.data, r.len), to);
  int ow, oh;
  assert_true(imagefmt_dimensions(r.data, r.len, &ow, &oh));
  assert_int_equal(ow, w);
  assert_int_equal(oh, h);
  assert_int_equal(r.width, w);
  assert_int_equal(r.height, h);
  *out_len = r.len;
  return r.data;
}

/* Converts a copy of exactly len bytes, expecting a refusal with status want. */
static void convert_refused(const uint8_t *in, size_t len, imagefmt to, int64_t max_pixels,
                            transcode_status want) {
  uint8_t *copy = malloc(len ? len : 1);
  assert_non_null(copy);
  if (len) memcpy(copy, in, len);
  transcode_result r;
  transcode_status st = transcode_image(copy, len, to, 80, max_pixels, &r);
  free(copy);
  if (st != want)
    fail_msg("len %zu to %s: %s, want %s (%s)", len, imagefmt_name(to),
             transcode_status_name(st), transcode_status_name(want), r.why);
  assert_null(r.data);
  assert_true(r.why[0] != '\0');
}

static bool contains(const uint8_t *hay, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = 0; i + k <= n; i++)
    if (memcmp(hay + i, needle, k) == 0) return true;
  return false;
}

static void test_every_pair_of_formats(void **state) {
  (void)state;
  size_t png_len;
  uint8_t *png = sim_png("every pair", 96, 64, &png_len);
  assert_true(contains(png, png_len, "imgate sim")); /* metadata going in */
  /* One source in each format, made from the PNG. */
  uint8_t *src[N_FORMATS];
  size_t src_len[N_FORMATS];
  for (size_t i = 0; i < N_FORMATS; i++)
    src[i] = convert_ok(png, png_len, formats[i], 90, 96, 64, &src_len[i]);
  for (size_t a = 0; a < N_FORMATS; a++) {
    for (size_t b = 0; b < N_FORMATS; b++) {
      size_t n;
      uint8_t *out = convert_ok(src[a], src_len[a], formats[b], 75, 96, 64, &n);
      /* Metadata is stripped: the PNG's text chunks do not survive. */
      assert_false(contains(out, n, "imgate sim"));
      /* And what came out reads back. */
      size_t back_len;
      free(convert_ok(out, n, IMAGEFMT_PNG, 100, 96, 64, &back_len));
      free(out);
    }
  }
  for (size_t i = 0; i < N_FORMATS; i++) free(src[i]);
  free(png);
}

static void test_quality_lowers_size(void **state) {
  (void)state;
  size_t png_len;
  uint8_t *png = sim_png("quality", 256, 256, &png_len);
  imagefmt lossy[] = {IMAGEFMT_JPEG, IMAGEFMT_WEBP};
  for (size_t i = 0; i < 2; i++) {
    size_t low, high, zero;
    free(convert_ok(png, png_len, lossy[i], 10, 256, 256, &low));
    free(convert_ok(png, png_len, lossy[i], 95, 256, 256, &high));
    free(convert_ok(png, png_len, lossy[i], 0, 256, 256, &zero)); /* 0 is a quality too */
    if (!(low < high))
      fail_msg("%s: quality 10 gave %zu bytes, quality 95 %zu", imagefmt_name(lossy[i]), low,
               high);
    assert_true(zero <= low);
  }
  /* PNG is lossless: the quality changes nothing. */
  size_t a, b;
  uint8_t *pa = convert_ok(png, png_len, IMAGEFMT_PNG, 10, 256, 256, &a);
  uint8_t *pb = convert_ok(png, png_len, IMAGEFMT_PNG, 95, 256, 256, &b);
  assert_int_equal(a, b);
  assert_memory_equal(pa, pb, a);
  free(pa);
  free(pb);
  free(png);
}

/* An RGBA PNG (libvips draws it) becomes a JPEG, flattened: JPEG has no alpha. */
static void test_alpha_into_jpeg(void **state) {
  (void)state;
  VipsImage *rgb = NULL, *alpha = NULL, *rgba = NULL;
  assert_int_equal(vips_black(&rgb, 40, 30, "bands", 3, NULL), 0);
  assert_int_equal(vips_black(&alpha, 40, 30, NULL), 0);
  assert_int_equal(vips_bandjoin2(rgb, alpha, &rgba, NULL), 0);
  void *buf = NULL;
  size_t len = 0;
  assert_int_equal(vips_pngsave_buffer(rgba, &buf, &len, NULL), 0);
  g_object_unref(rgb);
  g_object_unref(alpha);
  g_object_unref(rgba);
  size_t n;
  uint8_t *jpeg = convert_ok(buf, len, IMAGEFMT_JPEG, 90, 40, 30, &n);
  /* Transparent black over white is white: the JPEG decodes to white. */
  VipsImage *back = NULL;
  assert_int_equal(vips_jpegload_buffer(jpeg, n, &back, NULL), 0);
  assert_int_equal(vips_image_get_bands(back), 3);
  double mean = 0;
  assert_int_equal(vips_avg(back, &mean, NULL), 0);
  assert_true(mean > 250);
  g_object_unref(back);
  free(jpeg);
  g_free(buf);
}

/* The smallest and largest alpha of an area of img (its last band). */
static void alpha_range(VipsImage *img, int left, int width, double *min, double *max) {
  VipsImage *a = NULL, *area = NULL;
  assert_int_equal(vips_extract_band(img, &a, vips_image_get_bands(img) - 1, NULL), 0);
  assert_int_equal(vips_extract_area(a, &area, left, 0, width, vips_image_get_height(img), NULL),
                   0);
  assert_int_equal(vips_min(area, min, NULL), 0);
  assert_int_equal(vips_max(area, max, NULL), 0);
  g_object_unref(area);
  g_object_unref(a);
}

/* A transparent background survives into WebP (which has alpha), and back
 * into PNG: an RGBA PNG whose left half is transparent and right half
 * opaque becomes a WebP with 4 bands and the same alpha, pixel for pixel,
 * even at a low quality, and that WebP becomes an RGBA PNG again. Only
 * JPEG flattens (test_alpha_into_jpeg). */
static void test_alpha_kept_in_webp(void **state) {
  (void)state;
  VipsImage *rgb = NULL, *xy = NULL, *x = NULL, *alpha = NULL, *rgba = NULL;
  assert_int_equal(vips_black(&rgb, 40, 30, "bands", 3, NULL), 0);
  /* alpha 255 where x >= 20, else 0 (a relational op gives 255 or 0) */
  assert_int_equal(vips_xyz(&xy, 40, 30, NULL), 0);
  assert_int_equal(vips_extract_band(xy, &x, 0, NULL), 0);
  assert_int_equal(vips_relational_const1(x, &alpha, VIPS_OPERATION_RELATIONAL_MOREEQ, 20, NULL),
                   0);
  assert_int_equal(vips_bandjoin2(rgb, alpha, &rgba, NULL), 0);
  void *buf = NULL;
  size_t len = 0;
  assert_int_equal(vips_pngsave_buffer(rgba, &buf, &len, NULL), 0);
  g_object_unref(rgb);
  g_object_unref(xy);
  g_object_unref(x);
  g_object_unref(alpha);
  g_object_unref(rgba);
  bool has_alpha = false;
  assert_true(imagefmt_png_alpha(buf, len, &has_alpha));
  assert_true(has_alpha);

  size_t n;
  uint8_t *webp = convert_ok(buf, len, IMAGEFMT_WEBP, 30, 40, 30, &n);
  VipsImage *back = NULL;
  assert_int_equal(vips_webpload_buffer(webp, n, &back, NULL), 0);
  assert_int_equal(vips_image_get_bands(back), 4);
  double min, max;
  alpha_range(back, 0, 20, &min, &max);
  assert_true(min == 0 && max == 0);
  alpha_range(back, 20, 20, &min, &max);
  assert_true(min == 255 && max == 255);
  g_object_unref(back);

  /* And back into PNG: RGBA, the same alpha. */
  size_t png_len;
  uint8_t *png = convert_ok(webp, n, IMAGEFMT_PNG, 100, 40, 30, &png_len);
  has_alpha = false;
  assert_true(imagefmt_png_alpha(png, png_len, &has_alpha));
  assert_true(has_alpha);
  assert_int_equal(vips_pngload_buffer(png, png_len, &back, NULL), 0);
  alpha_range(back, 0, 20, &min, &max);
  assert_true(min == 0 && max == 0);
  alpha_range(back, 20, 20, &min, &max);
  assert_true(min == 255 && max == 255);
  g_object_unref(back);
  free(png);
  free(webp);
  g_free(buf);
}

/* A PNG whose header claims w x h, its IDAT holding just a few rows: small
 * on the wire, enormous decoded. */
static uint8_t *png_claiming(uint32_t w, uint32_t h, size_t *len) {
  uint8_t raw[64] = {0};
  uLongf zlen = compressBound(sizeof raw);
  uint8_t *z = malloc(zlen);
  assert_non_null(z);
  assert_int_equal(compress(z, &zlen, raw, sizeof raw), Z_OK);
  size_t n = 8 + 25 + 12 + zlen + 12;
  uint8_t *p = calloc(1, n);
  assert_non_null(p);
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(p, sig, 8);
  uint8_t *c = p + 8;
  /* IHDR: 8-bit RGB */
  const uint8_t ihdr[17] = {'I', 'H', 'D', 'R', w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16,
                            h >> 8, h, 8, 2, 0, 0, 0};
  c[3] = 13;
  memcpy(c + 4, ihdr, 17);
  uint32_t crc = (uint32_t)crc32(0, ihdr, 17);
  c[21] = crc >> 24, c[22] = crc >> 16, c[23] = crc >> 8, c[24] = crc;
  c += 25;
  c[0] = zlen >> 24, c[1] = zlen >> 16, c[2] = zlen >> 8, c[3] = zlen;
  memcpy(c + 4, "IDAT", 4);
  memcpy(c + 8, z, zlen);
  crc = (uint32_t)crc32(0, c + 4, 4 + zlen);
  c[8 + zlen] = crc >> 24, c[9 + zlen] = crc >> 16, c[10 + zlen] = crc >> 8, c[11 + zlen] = crc;
  c += 12 + zlen;
  memcpy(c + 4, "IEND", 4);
  crc = (uint32_t)crc32(0, c + 4, 4);
  c[8] = crc >> 24, c[9] = crc >> 16, c[10] = crc >> 8, c[11] = crc;
  free(z);
  *len = n;
  return p;
}

static void test_pixel_limit(void **state) {
  (void)state;
  size_t png_len;
  uint8_t *png = sim_png("limit", 64, 64, &png_len);
  /* The limit is inclusive: 64 x 64 = 4096 pixels. */
  convert_refused(png, png_len, IMAGEFMT_WEBP, 4095, TRANSCODE_TOO_LARGE);
  transcode_result r;
  assert_int_equal(transcode_image(png, png_len, IMAGEFMT_WEBP, 50, 4096, &r), TRANSCODE_OK);
  free(r.data);
  free(png);
  /* A 60,000 x 60,000 claim in a few hundred bytes: refused by the default
   * limit from its header, so nothing near 10 GB is ever allocated. */
  size_t bomb_len;
  uint8_t *bomb = png_claiming(60000, 60000, &bomb_len);
  assert_true(bomb_len < 400);
  for (size_t i = 0; i < N_FORMATS; i++)
    convert_refused(bomb, bomb_len, formats[i], 0, TRANSCODE_TOO_LARGE);
  free(bomb);
  /* Under the limit, but the data holds a few rows of 3,000: damaged. */
  bomb = png_claiming(3000, 3000, &bomb_len);
  convert_refused(bomb, bomb_len, IMAGEFMT_JPEG, 0, TRANSCODE_DECODE);
  free(bomb);
}

static void test_garbage_refused(void **state) {
  (void)state;
  convert_refused(NULL, 0, IMAGEFMT_PNG, 0, TRANSCODE_UNSUPPORTED);
  const char text[] = "this is not an image, whatever its name says";
  convert_refused((const uint8_t *)text, sizeof text - 1, IMAGEFMT_JPEG, 0,
                  TRANSCODE_UNSUPPORTED);
  uint8_t noise[4096];
  unsigned seed = 12345;
  for (size_t i = 0; i < sizeof noise; i++) noise[i] = (uint8_t)(rand_r(&seed) >> 7);
  convert_refused(noise, sizeof noise, IMAGEFMT_WEBP, 0, TRANSCODE_UNSUPPORTED);
  /* Each magic number, then noise: the header does not parse. */
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(noise, png_sig, 8);
  convert_refused(noise, sizeof noise, IMAGEFMT_JPEG, 0, TRANSCODE_BAD_HEADER);
  memcpy(noise, "\xff\xd8\xff", 3);
  noise[3] = 0x00; /* a stuffed zero where a marker should be */
  convert_refused(noise, sizeof noise, IMAGEFMT_PNG, 0, TRANSCODE_BAD_HEADER);
  memcpy(noise, "RIFF\x10\x00\x00\x00WEBPXXXX", 16);
  convert_refused(noise, sizeof noise, IMAGEFMT_PNG, 0, TRANSCODE_BAD_HEADER);
  /* A PNG whose text chunk claims 1.5 GB in a file of 126 bytes: refused
   * before libpng, which would allocate the claimed length (fuzz_transcode). */
  size_t png_len;
  uint8_t *png = sim_png("claims", 4, 3, &png_len);
  uint8_t *liar = malloc(png_len);
  assert_non_null(liar);
  memcpy(liar, png, png_len);
  assert_memory_equal(liar + 37, "tEXt", 4); /* the chunk after IHDR */
  memcpy(liar + 33, "\x5b\x00\x00\x10", 4);
  convert_refused(liar, png_len, IMAGEFMT_WEBP, 0, TRANSCODE_DECODE);
  transcode_result r;
  assert_int_equal(transcode_image(liar, png_len, IMAGEFMT_WEBP, 80, 0, &r), TRANSCODE_DECODE);
  assert_non_null(strstr(r.why, "claims more bytes")); /* refused before libpng saw it */
  free(liar);
  free(png);
  /* HEIC is recognised but not converted here. */
  const uint8_t heic[24] = {0, 0, 0, 24, 'f', 't', 'y', 'p', 'h', 'e', 'i', 'c'};
  convert_refused(heic, sizeof heic, IMAGEFMT_PNG, 0, TRANSCODE_UNSUPPORTED);
  /* And the target must be one imgate writes. */
  png = sim_png("target", 8, 8, &png_len);
  convert_refused(png, png_len, IMAGEFMT_HEIC, 0, TRANSCODE_UNSUPPORTED);
  convert_refused(png, png_len, IMAGEFMT_UNKNOWN, 0, TRANSCODE_UNSUPPORTED);
  free(png);
}

/* Every format cut short at many points before its last 12 bytes (the
 * trailer: PNG's IEND chunk, which holds no pixels): refused every time
 * (the header cut: bad_header; the data cut: decode), never a crash or a
 * half-grey image. */
static void test_truncated_refused(void **state) {
  (void)state;
  size_t png_len;
  uint8_t *png = sim_png("truncated", 80, 60, &png_len);
  for (size_t i = 0; i < N_FORMATS; i++) {
    size_t len;
    uint8_t *img = formats[i] == IMAGEFMT_PNG
                       ? png
                       : convert_ok(png, png_len, formats[i], 90, 80, 60, &len);
    if (formats[i] == IMAGEFMT_PNG) len = png_len;
    size_t step = len / 23 ? len / 23 : 1;
    for (size_t cut = 0; cut + 12 < len; cut += step) {
      uint8_t *copy = malloc(cut ? cut : 1);
      assert_non_null(copy);
      memcpy(copy, img, cut);
      transcode_result r;
      transcode_status st = transcode_image(copy, cut, IMAGEFMT_WEBP, 80, 0, &r);
      free(copy);
      if (st == TRANSCODE_OK)
        fail_msg("%s cut at %zu of %zu bytes was converted", imagefmt_name(formats[i]), cut, len);
      assert_null(r.data);
      assert_true(st == TRANSCODE_UNSUPPORTED || st == TRANSCODE_BAD_HEADER ||
                  st == TRANSCODE_DECODE);
    }
    if (img != png) free(img);
  }
  free(png);
}

static int setup(void **state) {
  (void)state;
  return transcode_startup() ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  transcode_thread_done();
  transcode_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_pair_of_formats),
      cmocka_unit_test(test_quality_lowers_size),
      cmocka_unit_test(test_alpha_into_jpeg),
      cmocka_unit_test(test_alpha_kept_in_webp),
      cmocka_unit_test(test_pixel_limit),
      cmocka_unit_test(test_garbage_refused),
      cmocka_unit_test(test_truncated_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
