/* test_imagefmt.c - magic bytes, MIME names and header dimensions, including every
 * truncation of each sample (each copied into a buffer of exactly that size, so
 * ASan catches any read past len). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "upstream/simpng.h"
#include "util/imagefmt.h"

/* A PNG up to the end of IHDR's CRC: 1234 x 567. */
static const uint8_t png_hdr[] = {
    0x89, 'P',  'N',  'G',  '\r', '\n', 0x1a, '\n', 0x00, 0x00, 0x00, 0x0d, 'I',
    'H',  'D',  'R',  0x00, 0x00, 0x04, 0xd2, 0x00, 0x00, 0x02, 0x37, 0x08, 0x02,
    0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
};
#define PNG_NEEDED 24

/* SOI, APP0 (JFIF), fill bytes, TEM, DHT whose body would read as a size if it
 * were mistaken for a frame, then SOF2 (progressive): 640 wide, 480 high. */
static const uint8_t jpeg_hdr[] = {
    0xff, 0xd8,                                                       /* SOI */
    0xff, 0xe0, 0x00, 0x10, 'J',  'F',  'I',  'F',  0x00, 0x01, 0x01, /* APP0 */
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,                         /* */
    0xff, 0xff, 0xff, 0x01,                                           /* fill, TEM */
    0xff, 0xc4, 0x00, 0x08, 0x08, 0x00, 0x10, 0x00, 0x20, 0x03,       /* DHT */
    0xff, 0xd0,                                                       /* RST0 */
    0xff, 0xc2, 0x00, 0x11, 0x08, 0x01, 0xe0, 0x02, 0x80, 0x03,       /* SOF2 */
    0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01,             /* components */
};
#define JPEG_NEEDED 46 /* through Nf */

/* VP8 lossy key frame 1920 x 1080, scale bits set to check they are masked off. */
static const uint8_t webp_vp8[] = {
    'R',  'I',  'F',  'F',  0x40, 0x00, 0x00, 0x00, 'W',  'E',  'B',  'P', 'V',
    'P',  '8',  ' ',  0x20, 0x00, 0x00, 0x00, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a,
    0x80, 0x47, 0x38, 0x44, 0x00, 0x00,
};
#define VP8_NEEDED 30

/* VP8L lossless 1000 x 750 with alpha. */
#define VP8L_BITS (999u | 749u << 14 | 1u << 28)
static const uint8_t webp_vp8l[] = {
    'R', 'I', 'F', 'F', 0x40, 0x00, 0x00, 0x00, 'W', 'E', 'B', 'P', 'V', 'P', '8', 'L', 0x20,
    0x00, 0x00, 0x00, 0x2f, VP8L_BITS & 0xff, (VP8L_BITS >> 8) & 0xff,
    (VP8L_BITS >> 16) & 0xff, VP8L_BITS >> 24, 0x00, 0x00,
};
#define VP8L_NEEDED 25

/* VP8X extended canvas 5000 x 70000 (more than 16 bits). */
static const uint8_t webp_vp8x[] = {
    'R',  'I',  'F',  'F',  0x40, 0x00, 0x00, 0x00, 'W',  'E',  'B',  'P', 'V',
    'P',  '8',  'X',  0x0a, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x87, 0x13,
    0x00, 0x6f, 0x11, 0x01, 'A',  'L',  'P',  'H',
};
#define VP8X_NEEDED 30

/* Runs imagefmt_dimensions on every prefix of sample, each in its own
 * exactly-sized heap block: false below needed, the size from needed on. */
static void check_prefixes(const uint8_t *sample, size_t full, size_t needed, int want_w,
                           int want_h) {
  for (size_t len = 0; len <= full; len++) {
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, sample, len);
    int w = -1, h = -1;
    bool ok = imagefmt_dimensions(copy, len, &w, &h);
    free(copy);
    if (ok != (len >= needed)) fail_msg("len %zu: got %d, want %d", len, ok, len >= needed);
    if (ok) {
      assert_int_equal(w, want_w);
      assert_int_equal(h, want_h);
    } else {
      assert_int_equal(w, -1);
      assert_int_equal(h, -1);
    }
  }
}

static void test_png_prefixes(void **state) {
  (void)state;
  assert_int_equal(imagefmt_detect(png_hdr, sizeof png_hdr), IMAGEFMT_PNG);
  check_prefixes(png_hdr, sizeof png_hdr, PNG_NEEDED, 1234, 567);
}

static void test_jpeg_prefixes(void **state) {
  (void)state;
  assert_int_equal(imagefmt_detect(jpeg_hdr, sizeof jpeg_hdr), IMAGEFMT_JPEG);
  check_prefixes(jpeg_hdr, sizeof jpeg_hdr, JPEG_NEEDED, 640, 480);
}

static void test_webp_prefixes(void **state) {
  (void)state;
  assert_int_equal(imagefmt_detect(webp_vp8, sizeof webp_vp8), IMAGEFMT_WEBP);
  check_prefixes(webp_vp8, sizeof webp_vp8, VP8_NEEDED, 1920, 1080);
  check_prefixes(webp_vp8l, sizeof webp_vp8l, VP8L_NEEDED, 1000, 750);
  check_prefixes(webp_vp8x, sizeof webp_vp8x, VP8X_NEEDED, 5000, 70000);
}

static bool dims_of(const uint8_t *d, size_t len) {
  int w, h;
  return imagefmt_dimensions(d, len, &w, &h);
}

static void test_png_malformed(void **state) {
  (void)state;
  uint8_t b[sizeof png_hdr];
  memcpy(b, png_hdr, sizeof b);
  b[11] = 12; /* IHDR length must be 13 */
  assert_false(dims_of(b, sizeof b));
  memcpy(b, png_hdr, sizeof b);
  b[12] = 'i';
  assert_false(dims_of(b, sizeof b));
  memcpy(b, png_hdr, sizeof b);
  memset(b + 16, 0, 4); /* zero width */
  assert_false(dims_of(b, sizeof b));
  memcpy(b, png_hdr, sizeof b);
  b[20] = 0x80; /* height beyond 2^31-1 */
  assert_false(dims_of(b, sizeof b));
  memcpy(b, png_hdr, sizeof b);
  b[1] = 'Q';
  assert_int_equal(imagefmt_detect(b, sizeof b), IMAGEFMT_UNKNOWN);
  assert_false(dims_of(b, sizeof b));
}

static void test_jpeg_malformed(void **state) {
  (void)state;
  /* Segment length below 2. */
  static const uint8_t short_len[] = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x01, 0xff, 0xc0, 0x00,
                                      0x11, 0x08, 0x00, 0x10, 0x00, 0x10, 0x03};
  assert_false(dims_of(short_len, sizeof short_len));
  /* Scan data before any frame header. */
  static const uint8_t sos_first[] = {0xff, 0xd8, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01,
                                      0x00, 0x00, 0x3f, 0x00, 0xff, 0xd9};
  assert_false(dims_of(sos_first, sizeof sos_first));
  /* End of image. */
  static const uint8_t eoi[] = {0xff, 0xd8, 0xff, 0xd9, 0xff, 0xc0, 0x00, 0x11,
                                0x08, 0x00, 0x10, 0x00, 0x10, 0x03};
  assert_false(dims_of(eoi, sizeof eoi));
  /* A stuffed zero where a marker should be. */
  static const uint8_t stuffed[] = {0xff, 0xd8, 0xff, 0x00, 0xff, 0xc0, 0x00, 0x11,
                                    0x08, 0x00, 0x10, 0x00, 0x10, 0x03};
  assert_false(dims_of(stuffed, sizeof stuffed));
  /* Garbage instead of the next marker. */
  static const uint8_t garbage[] = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x02, 0x12, 0xc0, 0x00,
                                    0x11, 0x08, 0x00, 0x10, 0x00, 0x10, 0x03};
  assert_false(dims_of(garbage, sizeof garbage));
  /* A segment longer than the data. */
  static const uint8_t overlong[] = {0xff, 0xd8, 0xff, 0xe1, 0xff, 0xf0, 0x00, 0x00};
  assert_false(dims_of(overlong, sizeof overlong));
  /* A frame with zero height (defined later by DNL): not usable. */
  static const uint8_t zero_h[] = {0xff, 0xd8, 0xff, 0xc0, 0x00, 0x11,
                                   0x08, 0x00, 0x00, 0x00, 0x10, 0x03};
  assert_false(dims_of(zero_h, sizeof zero_h));
  /* SOF with a length too small to hold its fields. */
  static const uint8_t tiny_sof[] = {0xff, 0xd8, 0xff, 0xc0, 0x00, 0x05,
                                     0x08, 0x00, 0x10, 0x00, 0x10, 0x03};
  assert_false(dims_of(tiny_sof, sizeof tiny_sof));
  /* Baseline SOF0 with extra fill bytes right after SOI: 16 x 32. */
  static const uint8_t sof0[] = {0xff, 0xd8, 0xff, 0xff, 0xc0, 0x00, 0x11,
                                 0x08, 0x00, 0x20, 0x00, 0x10, 0x03};
  int w = 0, h = 0;
  assert_true(imagefmt_dimensions(sof0, sizeof sof0, &w, &h));
  assert_int_equal(w, 16);
  assert_int_equal(h, 32);
  /* JPG (C8) and DAC (CC) are skipped like any other segment. */
  static const uint8_t c8cc[] = {0xff, 0xd8, 0xff, 0xc8, 0x00, 0x06, 0x08, 0x00, 0x09, 0x00,
                                 0xff, 0xcc, 0x00, 0x06, 0x08, 0x00, 0x09, 0x00, 0xff, 0xcf,
                                 0x00, 0x11, 0x08, 0x00, 0x07, 0x00, 0x05, 0x01};
  assert_true(imagefmt_dimensions(c8cc, sizeof c8cc, &w, &h));
  assert_int_equal(w, 5);
  assert_int_equal(h, 7);
}

static void test_webp_malformed(void **state) {
  (void)state;
  uint8_t b[64];
  memcpy(b, webp_vp8, sizeof webp_vp8);
  b[20] |= 1; /* interframe */
  assert_false(dims_of(b, sizeof webp_vp8));
  memcpy(b, webp_vp8, sizeof webp_vp8);
  b[24] = 0x02; /* start code */
  assert_false(dims_of(b, sizeof webp_vp8));
  memcpy(b, webp_vp8, sizeof webp_vp8);
  b[16] = 9; /* chunk too small for a frame header */
  assert_false(dims_of(b, sizeof webp_vp8));
  memcpy(b, webp_vp8, sizeof webp_vp8);
  b[26] = b[27] = 0; /* zero width */
  assert_false(dims_of(b, sizeof webp_vp8));
  memcpy(b, webp_vp8l, sizeof webp_vp8l);
  b[20] = 0x2e; /* VP8L signature */
  assert_false(dims_of(b, sizeof webp_vp8l));
  memcpy(b, webp_vp8l, sizeof webp_vp8l);
  b[24] |= 0x20; /* VP8L version must be 0 */
  assert_false(dims_of(b, sizeof webp_vp8l));
  memcpy(b, webp_vp8x, sizeof webp_vp8x);
  memcpy(b + 12, "ALPH", 4); /* no size in this chunk */
  assert_int_equal(imagefmt_detect(b, sizeof webp_vp8x), IMAGEFMT_WEBP);
  assert_false(dims_of(b, sizeof webp_vp8x));
  memcpy(b, webp_vp8x, sizeof webp_vp8x);
  memcpy(b + 8, "WEBQ", 4);
  assert_int_equal(imagefmt_detect(b, sizeof webp_vp8x), IMAGEFMT_UNKNOWN);
  assert_false(dims_of(b, sizeof webp_vp8x));
}

static void make_ftyp(uint8_t out[16], const char *brand) {
  static const uint8_t head[] = {0x00, 0x00, 0x00, 0x18, 'f', 't', 'y', 'p'};
  memcpy(out, head, 8);
  memcpy(out + 8, brand, 4);
  memset(out + 12, 0, 4);
}

static void test_heic(void **state) {
  (void)state;
  const char *heic[] = {"heic", "heix", "hevc", "hevx", "heim", "heis", "mif1", "msf1"};
  uint8_t b[16];
  for (size_t i = 0; i < sizeof heic / sizeof heic[0]; i++) {
    make_ftyp(b, heic[i]);
    assert_int_equal(imagefmt_detect(b, sizeof b), IMAGEFMT_HEIC);
    assert_int_equal(imagefmt_detect(b, 11), IMAGEFMT_UNKNOWN);
    assert_false(dims_of(b, sizeof b)); /* no HEIC parser */
  }
  const char *other[] = {"avif", "avis", "mp41", "isom", "qt  ", "HEIC"};
  for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
    make_ftyp(b, other[i]);
    assert_int_equal(imagefmt_detect(b, sizeof b), IMAGEFMT_UNKNOWN);
  }
  make_ftyp(b, "heic");
  memcpy(b + 4, "ftyq", 4);
  assert_int_equal(imagefmt_detect(b, sizeof b), IMAGEFMT_UNKNOWN);
}

static void test_detect_short_and_null(void **state) {
  (void)state;
  static const uint8_t jpeg3[] = {0xff, 0xd8, 0xff};
  assert_int_equal(imagefmt_detect(jpeg3, 3), IMAGEFMT_JPEG);
  assert_int_equal(imagefmt_detect(jpeg3, 2), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_detect(png_hdr, 7), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_detect(png_hdr, 8), IMAGEFMT_PNG);
  assert_int_equal(imagefmt_detect(webp_vp8, 11), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_detect(NULL, 100), IMAGEFMT_UNKNOWN);
  assert_false(imagefmt_dimensions(NULL, 100, NULL, NULL));
  static const uint8_t text[] = "GIF89a......";
  assert_int_equal(imagefmt_detect(text, sizeof text), IMAGEFMT_UNKNOWN);
  /* The caller may pass NULL for an unwanted output. */
  assert_true(imagefmt_dimensions(png_hdr, sizeof png_hdr, NULL, NULL));
}

static void test_names(void **state) {
  (void)state;
  assert_string_equal(imagefmt_mime(IMAGEFMT_PNG), "image/png");
  assert_string_equal(imagefmt_mime(IMAGEFMT_JPEG), "image/jpeg");
  assert_string_equal(imagefmt_mime(IMAGEFMT_WEBP), "image/webp");
  assert_string_equal(imagefmt_mime(IMAGEFMT_HEIC), "image/heic");
  assert_string_equal(imagefmt_mime(IMAGEFMT_UNKNOWN), "application/octet-stream");
  assert_string_equal(imagefmt_name(IMAGEFMT_PNG), "png");
  assert_string_equal(imagefmt_name(IMAGEFMT_JPEG), "jpeg");
  assert_string_equal(imagefmt_name(IMAGEFMT_WEBP), "webp");
  assert_string_equal(imagefmt_name(IMAGEFMT_HEIC), "heic");
  assert_string_equal(imagefmt_name(IMAGEFMT_UNKNOWN), "unknown");
  assert_string_equal(imagefmt_ext(IMAGEFMT_PNG), "png");
  assert_string_equal(imagefmt_ext(IMAGEFMT_JPEG), "jpg");
  assert_string_equal(imagefmt_ext(IMAGEFMT_WEBP), "webp");
  assert_string_equal(imagefmt_ext(IMAGEFMT_HEIC), "heic");
  assert_string_equal(imagefmt_ext(IMAGEFMT_UNKNOWN), "bin");
}

static void test_from_mime(void **state) {
  (void)state;
  assert_int_equal(imagefmt_from_mime("image/png"), IMAGEFMT_PNG);
  assert_int_equal(imagefmt_from_mime("IMAGE/PNG"), IMAGEFMT_PNG);
  assert_int_equal(imagefmt_from_mime("image/jpeg; q=0.9"), IMAGEFMT_JPEG);
  assert_int_equal(imagefmt_from_mime("image/jpeg;q=0.9"), IMAGEFMT_JPEG);
  assert_int_equal(imagefmt_from_mime(" image/webp "), IMAGEFMT_WEBP);
  assert_int_equal(imagefmt_from_mime("image/heic"), IMAGEFMT_HEIC);
  assert_int_equal(imagefmt_from_mime("image/heif"), IMAGEFMT_HEIC);
  assert_int_equal(imagefmt_from_mime("image/pngx"), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_from_mime("image/pn"), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_from_mime("image/avif"), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_from_mime("application/octet-stream"), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_from_mime(""), IMAGEFMT_UNKNOWN);
  assert_int_equal(imagefmt_from_mime(NULL), IMAGEFMT_UNKNOWN);
}

static void test_real_png(void **state) {
  (void)state;
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render("a lighthouse at dusk", 321, 123, &png, &len));
  assert_int_equal(imagefmt_detect(png, len), IMAGEFMT_PNG);
  int w = 0, h = 0;
  assert_true(imagefmt_dimensions(png, len, &w, &h));
  assert_int_equal(w, 321);
  assert_int_equal(h, 123);
  free(png);
}

/* The alpha channel from IHDR's colour type: 4 and 6 have one, 0, 2 and 3
 * do not, any other is malformed; a header cut short, or no PNG, is not
 * judged (every prefix in an exactly-sized block). */
static void test_png_alpha(void **state) {
  (void)state;
  static const struct {
    uint8_t type;
    bool valid, alpha;
  } types[] = {{0, true, false}, {2, true, false}, {3, true, false}, {4, true, true},
               {6, true, true},  {1, false, false}, {5, false, false}, {7, false, false}};
  uint8_t b[sizeof png_hdr];
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    memcpy(b, png_hdr, sizeof b);
    b[25] = types[i].type;
    bool alpha = !types[i].alpha;
    assert_int_equal(imagefmt_png_alpha(b, sizeof b, &alpha), types[i].valid);
    if (types[i].valid) assert_int_equal(alpha, types[i].alpha);
  }
  memcpy(b, png_hdr, sizeof b);
  b[25] = 6;
  for (size_t len = 0; len <= sizeof b; len++) {
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, b, len);
    bool alpha = false;
    bool ok = imagefmt_png_alpha(copy, len, &alpha);
    free(copy);
    if (ok != (len >= 26)) fail_msg("len %zu: got %d", len, ok);
    if (ok) assert_true(alpha);
  }
  bool alpha = false;
  assert_false(imagefmt_png_alpha(jpeg_hdr, sizeof jpeg_hdr, &alpha));
  assert_false(imagefmt_png_alpha(webp_vp8l, sizeof webp_vp8l, &alpha));
  b[11] = 12; /* a malformed IHDR */
  assert_false(imagefmt_png_alpha(b, sizeof b, &alpha));
  /* The simulated provider draws RGB. */
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render("opaque", 16, 16, &png, &len));
  alpha = true;
  assert_true(imagefmt_png_alpha(png, len, &alpha));
  assert_false(alpha);
  free(png);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_png_prefixes),     cmocka_unit_test(test_jpeg_prefixes),
      cmocka_unit_test(test_webp_prefixes),    cmocka_unit_test(test_png_malformed),
      cmocka_unit_test(test_jpeg_malformed),   cmocka_unit_test(test_webp_malformed),
      cmocka_unit_test(test_heic),             cmocka_unit_test(test_detect_short_and_null),
      cmocka_unit_test(test_names),            cmocka_unit_test(test_from_mime),
      cmocka_unit_test(test_real_png),         cmocka_unit_test(test_png_alpha),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
