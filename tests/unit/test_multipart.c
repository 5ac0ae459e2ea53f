/* test_multipart.c - multipart/form-data read in place (util/multipart.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "util/multipart.h"

static int parse(const char *body, size_t len, multipart_part *parts, size_t max, char *err) {
  return multipart_parse((const uint8_t *)body, len, "XyZ", parts, max, err, 128);
}

static void test_boundary(void **state) {
  (void)state;
  char b[80];
  assert_true(multipart_boundary("multipart/form-data; boundary=XyZ", b, sizeof b));
  assert_string_equal(b, "XyZ");
  assert_true(multipart_boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b;c\"", b,
                                 sizeof b));
  assert_string_equal(b, "a b;c");
  assert_false(multipart_boundary("application/json", b, sizeof b));
  assert_false(multipart_boundary("multipart/form-data", b, sizeof b));
  assert_false(multipart_boundary("multipart/form-data; boundary=", b, sizeof b));
  assert_false(multipart_boundary("multipart/form-data; boundary=\"unclosed", b, sizeof b));
  char long_b[120] = "multipart/form-data; boundary=";
  memset(long_b + strlen(long_b), 'a', 71);
  assert_false(multipart_boundary(long_b, b, sizeof b));
  assert_false(multipart_boundary(NULL, b, sizeof b));
}

/* What the SDKs send: text fields and repeated files, bytes with CR LF and
 * dashes inside, a preamble before the first boundary. */
static void test_parts(void **state) {
  (void)state;
  static const char body[] =
      "preamble to ignore\r\n"
      "--XyZ\r\n"
      "Content-Disposition: form-data; name=\"prompt\"\r\n"
      "\r\n"
      "a \"quoted\" prompt\r\n"
      "--XyZ\r\n"
      "content-disposition: form-data; name=\"image[]\"; filename=\"a.png\"\r\n"
      "Content-Type: application/octet-stream\r\n"
      "X-Other: skipped\r\n"
      "\r\n"
      "\x89PNG\r\n--Xy\r\nZ--\r\n"
      "--XyZ\r\n"
      "Content-Disposition: form-data; name=\"image[]\"; filename=\"b \\\"2\\\".webp\"\r\n"
      "\r\n"
      "\r\n"
      "--XyZ--\r\n"
      "epilogue";
  multipart_part parts[4];
  char err[128];
  int n = parse(body, sizeof body - 1, parts, 4, err);
  assert_int_equal(n, 3);
  assert_string_equal(parts[0].name, "prompt");
  assert_false(parts[0].is_file);
  assert_int_equal(parts[0].len, strlen("a \"quoted\" prompt"));
  assert_memory_equal(parts[0].data, "a \"quoted\" prompt", parts[0].len);
  assert_string_equal(parts[1].name, "image[]");
  assert_true(parts[1].is_file);
  assert_string_equal(parts[1].filename, "a.png");
  assert_string_equal(parts[1].content_type, "application/octet-stream");
  assert_int_equal(parts[1].len, 15);
  assert_memory_equal(parts[1].data, "\x89PNG\r\n--Xy\r\nZ--", 15);
  assert_string_equal(parts[2].filename, "b \"2\".webp");
  assert_int_equal(parts[2].len, 0); /* an empty file is a part of its own */
  /* In place: the data points into the body. */
  assert_true((const char *)parts[1].data > body &&
              (const char *)parts[1].data < body + sizeof body);
}

static void test_refusals(void **state) {
  (void)state;
  multipart_part parts[2];
  char err[128];
  static const char *const bad[] = {
      "no boundary at all",
      "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnever closed",
      "--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--XyZ--",
      "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--",
      "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nno colon line\r\n\r\nx\r\n--XyZ--",
      "--XyZ\r\nContent-Disposition: form-data; name=\"a\"",
      "--XyZjunk\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    if (parse(bad[i], strlen(bad[i]), parts, 2, err) != -1) fail_msg("accepted: %s", bad[i]);
    assert_true(err[0] != '\0');
  }
  /* More parts than room. */
  static const char three[] =
      "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
      "--XyZ\r\nContent-Disposition: form-data; name=b\r\n\r\n2\r\n"
      "--XyZ\r\nContent-Disposition: form-data; name=c\r\n\r\n3\r\n--XyZ--";
  assert_int_equal(parse(three, sizeof three - 1, parts, 2, err), -1);
  assert_non_null(strstr(err, "more than 2"));
  /* A name over its limit. */
  char longname[400];
  snprintf(longname, sizeof longname,
           "--XyZ\r\nContent-Disposition: form-data; name=\"%0100d\"\r\n\r\nx\r\n--XyZ--", 0);
  assert_int_equal(parse(longname, strlen(longname), parts, 2, err), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_boundary),
      cmocka_unit_test(test_parts),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
