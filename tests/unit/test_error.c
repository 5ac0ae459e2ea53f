/* test_error.c - err_set filling and truncation, and the HTTP status map. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/error.h"
#include "util/utf8.h"

static void test_set_fills_fields(void **state) {
  (void)state;
  imgate_error e;
  memset(&e, 'x', sizeof e);
  assert_int_equal(err_set(&e, ERR_INVALID, "invalid_size", "size", "size %d is over %s", 4096,
                           "the limit"),
                   -1);
  assert_int_equal(e.code, ERR_INVALID);
  assert_string_equal(e.slug, "invalid_size");
  assert_string_equal(e.param, "size");
  assert_string_equal(e.message, "size 4096 is over the limit");
}

static void test_set_null_fields(void **state) {
  (void)state;
  imgate_error e;
  memset(&e, 'x', sizeof e);
  assert_int_equal(err_set(&e, ERR_INTERNAL, NULL, NULL, "%s", "boom"), -1);
  assert_string_equal(e.slug, "");
  assert_string_equal(e.param, "");
  assert_string_equal(e.message, "boom");
}

static void test_set_truncates(void **state) {
  (void)state;
  char long_text[600];
  memset(long_text, 'a', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = '\0';
  imgate_error e;
  err_set(&e, ERR_TOO_LARGE, long_text, long_text, "%s!", long_text);
  assert_int_equal(strlen(e.slug), sizeof e.slug - 1);
  assert_int_equal(strlen(e.param), sizeof e.param - 1);
  assert_int_equal(strlen(e.message), sizeof e.message - 1);
  assert_int_equal(e.slug[0], 'a');
  assert_int_equal(e.message[sizeof e.message - 2], 'a');
}

/* A cut at the message's size must not leave half a character behind:
 * the message goes into JSON, and jansson refuses malformed UTF-8. */
static void test_set_truncates_on_a_character_boundary(void **state) {
  (void)state;
  imgate_error e;
  for (size_t pad = 250; pad < 258; pad++) {
    char text[300];
    memset(text, 'a', pad);
    strcpy(text + pad, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x8d\x8c"); /* é € 🍌 */
    err_set(&e, ERR_INVALID, "x", NULL, "%s", text);
    assert_true(strlen(e.message) < sizeof e.message);
    assert_true(utf8_valid(e.message, strlen(e.message)));
    assert_true(strlen(e.message) >= sizeof e.message - 4); /* only the split character went */
  }
}

static void test_set_repairs_malformed_text(void **state) {
  (void)state;
  imgate_error e;
  err_set(&e, ERR_INVALID, "x", NULL, "upstream said \"%s\"", "caf\xc3 \xff!");
  assert_string_equal(e.message, "upstream said \"caf? ?!\"");
}

static void test_http_status(void **state) {
  (void)state;
  assert_int_equal(err_http_status(ERR_NONE), 200);
  assert_int_equal(err_http_status(ERR_INVALID), 400);
  assert_int_equal(err_http_status(ERR_UNAUTHORIZED), 401);
  assert_int_equal(err_http_status(ERR_FORBIDDEN), 403);
  assert_int_equal(err_http_status(ERR_NOT_FOUND), 404);
  assert_int_equal(err_http_status(ERR_TOO_LARGE), 413);
  assert_int_equal(err_http_status(ERR_UNPROCESSABLE), 422);
  assert_int_equal(err_http_status(ERR_UNAVAILABLE), 503);
  assert_int_equal(err_http_status(ERR_INTERNAL), 500);
  assert_int_equal(err_http_status((err_code)42), 500);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_set_fills_fields),
      cmocka_unit_test(test_set_null_fields),
      cmocka_unit_test(test_set_truncates),
      cmocka_unit_test(test_set_truncates_on_a_character_boundary),
      cmocka_unit_test(test_set_repairs_malformed_text),
      cmocka_unit_test(test_http_status),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
