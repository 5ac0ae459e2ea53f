/* test_simpng.c - the sim's PNGs decode (with libpng's own reader) to exactly the
 * requested size, depend only on the prompt, and are labelled as simulated. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/simpng.h"
#include "util/ids.h"

/* Decodes to packed RGB; NULL when libpng rejects the data. */
static uint8_t *decode(const uint8_t *data, size_t len, int *w, int *h) {
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, data, len)) return NULL;
  img.format = PNG_FORMAT_RGB;
  uint8_t *px = malloc(PNG_IMAGE_SIZE(img));
  if (!px) {
    png_image_free(&img);
    return NULL;
  }
  if (!png_image_finish_read(&img, NULL, px, 0, NULL)) {
    free(px);
    return NULL;
  }
  *w = (int)img.width;
  *h = (int)img.height;
  return px;
}

static uint8_t *render_and_decode(const char *prompt, int w, int h) {
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render(prompt, w, h, &png, &len));
  assert_non_null(png);
  int dw = 0, dh = 0;
  uint8_t *px = decode(png, len, &dw, &dh);
  free(png);
  assert_non_null(px);
  assert_int_equal(dw, w);
  assert_int_equal(dh, h);
  return px;
}

static void test_exact_sizes(void **state) {
  (void)state;
  const int sizes[][2] = {{1, 1}, {2, 1}, {1, 2}, {7, 3}, {640, 480}, {3, 1000}, {1376, 768}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    free(render_and_decode("sizes", sizes[i][0], sizes[i][1]));
}

static void test_same_prompt_same_bytes(void **state) {
  (void)state;
  uint8_t *a = NULL, *b = NULL;
  size_t alen = 0, blen = 0;
  assert_true(simpng_render("a red fox in snow", 300, 200, &a, &alen));
  assert_true(simpng_render("a red fox in snow", 300, 200, &b, &blen));
  assert_int_equal(alen, blen);
  assert_memory_equal(a, b, alen);
  free(a);
  free(b);
}

static void test_different_prompts_differ(void **state) {
  (void)state;
  const int w = 256, h = 192;
  uint8_t *a = render_and_decode("a red fox in snow", w, h);
  uint8_t *b = render_and_decode("a red fox in snow#1", w, h);
  size_t differ = 0;
  for (size_t i = 0; i < (size_t)w * h; i++)
    if (memcmp(a + i * 3, b + i * 3, 3) != 0) differ++;
  /* Different gradient colours alone change nearly every pixel. */
  assert_true(differ > (size_t)w * h / 2);
  free(a);
  free(b);
}

static void test_not_flat(void **state) {
  (void)state;
  const int w = 200, h = 200;
  uint8_t *px = render_and_decode("variety", w, h);
  /* Corners sit at opposite ends of the gradient or under shapes; a picture
   * with all four the same would be a blank. */
  const uint8_t *tl = px, *br = px + ((size_t)w * h - 1) * 3;
  const uint8_t *tr = px + (size_t)(w - 1) * 3, *bl = px + (size_t)(h - 1) * w * 3;
  assert_true(memcmp(tl, br, 3) != 0 || memcmp(tr, bl, 3) != 0);
  free(px);
}

static const uint8_t *find(const uint8_t *hay, size_t n, const void *needle, size_t m) {
  return memmem(hay, n, needle, m);
}

static void test_text_chunks(void **state) {
  (void)state;
  const char *prompt = "label me";
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render(prompt, 16, 16, &png, &len));
  static const char sw[] = "tEXtSoftware\0imgate sim";
  assert_non_null(find(png, len, sw, sizeof sw - 1));
  char hex[65];
  ids_sha256_hex(prompt, strlen(prompt), hex);
  char comment[160];
  int n = snprintf(comment, sizeof comment, "tEXtComment%csim render of prompt sha256 %s", 0, hex);
  assert_non_null(find(png, len, comment, (size_t)n));
  free(png);
}

static void test_large(void **state) {
  (void)state;
  free(render_and_decode("a 4K landscape", 5504, 3072));
}

static void test_limits(void **state) {
  (void)state;
  uint8_t *png = (uint8_t *)"untouched";
  size_t len = 7;
  const int bad[][2] = {{0, 1}, {1, 0}, {-1, 5}, {5, -1}, {16385, 1}, {1, 16385}, {0, 0}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_false(simpng_render("x", bad[i][0], bad[i][1], &png, &len));
    assert_string_equal((const char *)png, "untouched");
    assert_int_equal(len, 7);
  }
  assert_false(simpng_render(NULL, 1, 1, &png, &len));
  assert_false(simpng_render("x", 1, 1, NULL, &len));
  assert_false(simpng_render("x", 1, 1, &png, NULL));
  /* The largest side is allowed. */
  free(render_and_decode("edge", 16384, 1));
  free(render_and_decode("edge", 1, 16384));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_sizes),     cmocka_unit_test(test_same_prompt_same_bytes),
      cmocka_unit_test(test_different_prompts_differ), cmocka_unit_test(test_not_flat),
      cmocka_unit_test(test_text_chunks),     cmocka_unit_test(test_large),
      cmocka_unit_test(test_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
