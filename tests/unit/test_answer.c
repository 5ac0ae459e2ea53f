/* test_answer.c - an upstream answer read as it arrives: nothing allocated
 * before the first byte, images taken by their markers (once), the limits
 * (image size, image count), and the reasons given for answers that cannot be
 * read. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/answer.h"
#include "upstream/simpng.h"
#include "util/base64.h"

static const imgscan_path paths[] = {{"data[].b64_json", IMGSCAN_IMAGE}};

/* The base64 of a w x h PNG. */
static char *png_b64(int w, int h, size_t *png_len) {
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render("answer", w, h, &png, &len));
  char *b64 = base64_encode(png, len);
  assert_non_null(b64);
  free(png);
  if (png_len) *png_len = len;
  return b64;
}

/* Feeds text in pieces of step bytes; returns whether every write was taken. */
static bool feed(answer_reader *a, const char *text, size_t step) {
  size_t len = strlen(text);
  for (size_t at = 0; at < len; at += step)
    if (!answer_write(a, text + at, at + step <= len ? step : len - at)) return false;
  return true;
}

static void test_images_by_marker(void **state) {
  (void)state;
  size_t png_len = 0;
  char *b64 = png_b64(20, 10, &png_len);
  size_t len = strlen(b64) * 2 + 200;
  char *text = malloc(len);
  assert_non_null(text);
  snprintf(text, len, "{\"data\":[{\"b64_json\":\"%s\"},{\"b64_json\":\"%s\"},"
                      "{\"b64_json\":\"dGV4dA==\"}]}", b64, b64);
  answer_reader a;
  answer_init(&a, IMGSCAN_JSON, paths, 1, 1 << 20);
  assert_null(a.scan); /* nothing before the first byte: a call waiting costs nothing */
  assert_null(a.images);
  assert_true(feed(&a, text, 7));
  assert_true(answer_finish(&a));
  assert_true(answer_finish(&a)); /* idempotent */
  assert_null(answer_error(&a));
  size_t rest_len = 0;
  const char *rest = answer_rest(&a, &rest_len);
  assert_string_equal(rest, "{\"data\":[{\"b64_json\":\"imgscan:0\"},{\"b64_json\":\"imgscan:1\"},"
                            "{\"b64_json\":\"imgscan:2\"}]}");
  assert_int_equal(rest_len, strlen(rest));

  provider_image img;
  const char *why = NULL;
  assert_int_equal(answer_take_image(&a, "imgscan:1", &img, &why), 0);
  assert_string_equal(img.mime, "image/png");
  assert_int_equal(img.width, 20);
  assert_int_equal(img.height, 10);
  assert_int_equal(img.len, png_len);
  free(img.data);
  /* Once only; unknown markers; bytes that are no image. */
  assert_int_equal(answer_take_image(&a, "imgscan:1", &img, &why), -1);
  assert_string_equal(why, "no image data");
  assert_null(img.data);
  assert_int_equal(answer_take_image(&a, "imgscan:3", &img, &why), -1);
  assert_int_equal(answer_take_image(&a, "dGV4dA==", &img, &why), -1);
  assert_int_equal(answer_take_image(&a, NULL, &img, &why), -1);
  assert_int_equal(answer_take_image(&a, "imgscan:2", &img, &why), -1);
  assert_string_equal(why, "the image data is not a known image format");
  /* Image 0 is never taken: answer_free frees it (ASan checks). */
  answer_free(&a);
  answer_free(&a);
  free(text);
  free(b64);
}

static void test_limits(void **state) {
  (void)state;
  char *b64 = png_b64(64, 64, NULL);
  size_t len = strlen(b64) + 100;
  char *text = malloc(len);
  assert_non_null(text);
  snprintf(text, len, "{\"data\":[{\"b64_json\":\"%s\"}]}", b64);
  /* An image over the limit stops the reading at the piece that crosses it. */
  answer_reader a;
  answer_init(&a, IMGSCAN_JSON, paths, 1, 100);
  assert_false(feed(&a, text, 4096));
  assert_false(answer_finish(&a));
  assert_null(answer_rest(&a, NULL));
  assert_non_null(strstr(answer_error(&a), "the image is larger than 100 bytes"));
  assert_false(answer_out_of_memory(&a));
  answer_free(&a);
  answer_init(&a, IMGSCAN_JSON, paths, 1, (size_t)3 << 20);
  free(text);

  /* More image strings than an answer may hold. */
  size_t n = ANSWER_MAX_IMAGES + 1;
  text = malloc(n * 20 + 20);
  assert_non_null(text);
  strcpy(text, "{\"data\":[");
  for (size_t i = 0; i < n; i++) strcat(text, i ? ",{\"b64_json\":\"\"}" : "{\"b64_json\":\"\"}");
  strcat(text, "]}");
  assert_false(feed(&a, text, 5));
  assert_string_equal(answer_error(&a), "the answer holds too many images");
  answer_free(&a);
  free(text);
  free(b64);
}

static void test_unreadable_answers(void **state) {
  (void)state;
  static const struct {
    const char *text;
    const char *why;
  } cases[] = {
      {"", "the answer is not valid JSON (empty or truncated?)"},
      {"{\"data\":[", "the answer is not valid JSON (empty or truncated?)"},
      {"{\"data\":[{\"b64_json\":\"b25!\"}]}", "the image data is not valid base64"},
      {"<html>502 Bad Gateway</html>", "invalid JSON: a value was expected at byte 0"},
      {"{\"data\" 1}", "invalid JSON: ':' was expected at byte 8"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    answer_reader a;
    answer_init(&a, IMGSCAN_JSON, paths, 1, 1 << 20);
    feed(&a, cases[i].text, 3);
    assert_false(answer_finish(&a));
    assert_null(answer_rest(&a, NULL));
    assert_string_equal(answer_error(&a), cases[i].why);
    answer_free(&a);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_images_by_marker),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_unreadable_answers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
