/* test_utf8.c - cutting on character boundaries, validation, repair. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "util/utf8.h"

#define E_ACUTE "\xc3\xa9"          /* é, 2 bytes */
#define EURO "\xe2\x82\xac"         /* €, 3 bytes */
#define BANANA "\xf0\x9f\x8d\x8c"   /* 🍌, 4 bytes */

static void test_cut_fits(void **state) {
  (void)state;
  assert_int_equal(utf8_cut("", 0), 0);
  assert_int_equal(utf8_cut("", 5), 0);
  assert_int_equal(utf8_cut("abc", 3), 3);
  assert_int_equal(utf8_cut("abc", 64), 3);
  assert_int_equal(utf8_cut("abc", 2), 2);
  assert_int_equal(utf8_cut("abc", 0), 0);
  assert_int_equal(utf8_cut(E_ACUTE, 2), 2);
  assert_int_equal(utf8_cut("abc", (size_t)-1), 3);
}

/* Every cut position inside every character width lands on a boundary. */
static void test_cut_never_splits(void **state) {
  (void)state;
  const char *chars[] = {E_ACUTE, EURO, BANANA};
  for (size_t c = 0; c < 3; c++) {
    size_t w = strlen(chars[c]);
    for (size_t lead = 0; lead < 4; lead++) {
      char s[128];
      memset(s, 'a', lead);
      s[lead] = '\0';
      for (int i = 0; i < 10; i++) strcat(s, chars[c]);
      size_t len = strlen(s);
      for (size_t max = 0; max <= len; max++) {
        size_t n = utf8_cut(s, max);
        assert_true(n <= max);
        assert_true(max - n < w); /* only the split character is dropped */
        assert_true(utf8_valid(s, n));
        assert_true(n <= lead || (n - lead) % w == 0);
      }
    }
  }
}

/* The case from the review: a 64-byte cut of "a" + many "é" used to end
 * with half an "é". */
static void test_cut_review_case(void **state) {
  (void)state;
  char model[256] = "a";
  for (int i = 0; i < 100; i++) strcat(model, E_ACUTE);
  size_t n = utf8_cut(model, 64);
  assert_int_equal(n, 63);
  char msg[128];
  snprintf(msg, sizeof msg, "unknown model \"%.*s\"", (int)n, model);
  assert_true(utf8_valid(msg, strlen(msg)));
  snprintf(msg, sizeof msg, "unknown model \"%.64s\"", model);
  assert_false(utf8_valid(msg, strlen(msg)));
}

static void test_length(void **state) {
  (void)state;
  assert_int_equal(utf8_length(""), 0);
  assert_int_equal(utf8_length("abc"), 3);
  assert_int_equal(utf8_length(E_ACUTE EURO BANANA "x"), 4);
}

static void test_valid(void **state) {
  (void)state;
  static const struct {
    const char *s;
    bool ok;
  } cases[] = {
      {"", true},
      {"plain ascii", true},
      {E_ACUTE EURO BANANA, true},
      {"\xed\x9f\xbf", true},          /* U+D7FF, just below the surrogates */
      {"\xee\x80\x80", true},          /* U+E000, just above */
      {"\xf4\x8f\xbf\xbf", true},      /* U+10FFFF */
      {"\xc3", false},                 /* truncated */
      {"\xe2\x82", false},             /* truncated */
      {"\xf0\x9f\x8d", false},         /* truncated */
      {"\x80", false},                 /* lone continuation */
      {"\xc0\xaf", false},             /* overlong '/' */
      {"\xc1\xbf", false},             /* overlong */
      {"\xe0\x80\xaf", false},         /* overlong */
      {"\xf0\x80\x80\xaf", false},     /* overlong */
      {"\xed\xa0\x80", false},         /* surrogate U+D800 */
      {"\xf4\x90\x80\x80", false},     /* U+110000 */
      {"\xf5\x80\x80\x80", false},     /* no such lead byte */
      {"\xff", false},
      {"a\xc3" "b", false},            /* lead then a non-continuation */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (utf8_valid(cases[i].s, strlen(cases[i].s)) != cases[i].ok) fail_msg("case %zu", i);
  }
  assert_false(utf8_valid("a\0b", 3)); /* a NUL cannot live in a C string */
}

static void test_sanitize(void **state) {
  (void)state;
  char a[] = "caf" E_ACUTE " ok";
  assert_int_equal(utf8_sanitize(a), 0);
  assert_string_equal(a, "caf" E_ACUTE " ok");
  char b[] = "x\xc3y\xff" EURO "\xe2\x82";
  assert_int_equal(utf8_sanitize(b), 4);
  assert_string_equal(b, "x?y?" EURO "??");
  assert_true(utf8_valid(b, strlen(b)));
  char c[] = "\xed\xa0\x80";
  assert_int_equal(utf8_sanitize(c), 3);
  assert_string_equal(c, "???");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cut_fits),   cmocka_unit_test(test_cut_never_splits),
      cmocka_unit_test(test_cut_review_case), cmocka_unit_test(test_length),
      cmocka_unit_test(test_valid),      cmocka_unit_test(test_sanitize),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
