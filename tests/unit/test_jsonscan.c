/* test_jsonscan.c - value and depth counting on raw JSON. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/jsonscan.h"

static json_scan_result scan(const char *text, size_t max_depth, size_t max_values) {
  return json_scan_limits(text, strlen(text), max_depth, max_values);
}

/* The smallest max_values that text passes with. */
static size_t values_of(const char *text) {
  size_t n = 1;
  while (scan(text, 1000, n) == JSON_SCAN_TOO_MANY) n++;
  return n;
}

/* The smallest max_depth that text passes with. */
static size_t depth_of(const char *text) {
  size_t n = 0;
  while (scan(text, n, 1000) == JSON_SCAN_TOO_DEEP) n++;
  return n;
}

static void test_counts(void **state) {
  (void)state;
  assert_int_equal(values_of("42"), 1);
  assert_int_equal(values_of("\"text\""), 1);
  assert_int_equal(values_of("[1,2,3]"), 4);
  assert_int_equal(values_of("{\"a\":1,\"b\":[true,null]}"), 5);
  assert_int_equal(values_of("{\"prompt\":\"x\",\"image_urls\":[\"a\",\"b\"]}"), 5);
  assert_int_equal(depth_of("42"), 0);
  assert_int_equal(depth_of("[1,[2,[3]],{\"a\":{}}]"), 3);
  assert_int_equal(depth_of("[[]][[[]]]"), 3); /* depth, not the sum */
}

/* Brackets and commas inside strings are text, escaped quotes included. */
static void test_strings_are_skipped(void **state) {
  (void)state;
  assert_int_equal(values_of("\"[,,,{{{\""), 1);
  assert_int_equal(depth_of("\"[[[[[[\""), 0);
  assert_int_equal(values_of("[\"a\\\",b\",\"c\"]"), 3);        /* "a\",b" is one string */
  assert_int_equal(values_of("[\"a\\\\\",\"b,c\"]"), 3);        /* "a\\" ends at its quote */
  assert_int_equal(values_of("[\"a\\\\\\\",b\"]"), 2);          /* "a\\\",b" */
  assert_int_equal(values_of("[\"unterminated,,,,"), 2);
}

static void test_limits(void **state) {
  (void)state;
  assert_int_equal(scan("[1,2,3]", 1, 4), JSON_SCAN_OK);
  assert_int_equal(scan("[1,2,3]", 1, 3), JSON_SCAN_TOO_MANY);
  assert_int_equal(scan("[[1]]", 1, 10), JSON_SCAN_TOO_DEEP);
  assert_int_equal(scan("[[1]]", 2, 10), JSON_SCAN_OK);
  /* Unbalanced closers do not go negative and hide a later deep part. */
  assert_int_equal(scan("]]]]][[[", 2, 10), JSON_SCAN_TOO_DEEP);
  assert_int_equal(scan("", 0, 1), JSON_SCAN_OK);
}

/* The body from the review: 30 MiB of "1," would be 15 million values. It
 * is refused after the first max_values, without reading the rest. */
static void test_huge_array(void **state) {
  (void)state;
  size_t n = 30u << 20;
  char *body = malloc(n);
  assert_non_null(body);
  memcpy(body, "{\"image_urls\":[", 15);
  for (size_t i = 15; i + 1 < n; i += 2) memcpy(body + i, "1,", 2);
  body[n - 1] = ']';
  assert_int_equal(json_scan_limits(body, n, 64, 100000), JSON_SCAN_TOO_MANY);
  free(body);
}

/* A long string (a base64 image) with NUL bytes and escapes costs one value. */
static void test_long_string(void **state) {
  (void)state;
  size_t n = 8u << 20;
  char *body = malloc(n);
  assert_non_null(body);
  memset(body, 'A', n);
  memcpy(body, "{\"image_urls\":[\"", 16);
  body[1000] = '\0';
  body[2000] = '\\';
  body[2001] = '"';
  memcpy(body + n - 3, "\"]}", 3);
  assert_int_equal(json_scan_limits(body, n, 2, 3), JSON_SCAN_OK);
  free(body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counts),      cmocka_unit_test(test_strings_are_skipped),
      cmocka_unit_test(test_limits),      cmocka_unit_test(test_huge_array),
      cmocka_unit_test(test_long_string),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
