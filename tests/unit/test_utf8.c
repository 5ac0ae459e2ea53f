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

static void test_decode(void **state) {
  (void)state;
  static const struct {
    const char *s;
    size_t len;
    uint32_t cp;
  } good[] = {
      {"a", 1, 'a'},           {"\x7f", 1, 0x7F},         {E_ACUTE, 2, 0xE9},
      {"\xc2\x80", 2, 0x80},   {"\xdf\xbf", 2, 0x7FF},     {EURO, 3, 0x20AC},
      {"\xe0\xa0\x80", 3, 0x800}, {"\xe3\x80\x80", 3, 0x3000}, {"\xef\xbb\xbf", 3, 0xFEFF},
      {"\xef\xbf\xbf", 3, 0xFFFF}, {BANANA, 4, 0x1F34C},       {"\xf0\x90\x80\x80", 4, 0x10000},
      {"\xf4\x8f\xbf\xbf", 4, 0x10FFFF},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint32_t cp = 0;
    char s[8];
    snprintf(s, sizeof s, "%sz", good[i].s); /* a byte after it is not taken */
    if (utf8_decode(s, strlen(s), &cp) != good[i].len || cp != good[i].cp)
      fail_msg("good case %zu: U+%04X", i, (unsigned)cp);
  }
  static const char *const bad[] = {
      "\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
      "\xf0\x80\x80\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "\xff", "\xc3z",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint32_t cp = 0x55;
    if (utf8_decode(bad[i], strlen(bad[i]), &cp) != 0 || cp != 0x55) fail_msg("bad case %zu", i);
  }
  uint32_t cp = 0x55;
  assert_int_equal(utf8_decode(EURO, 2, &cp), 0); /* truncated by avail */
  assert_int_equal(utf8_decode("", 1, &cp), 0);   /* NUL */
  assert_int_equal(utf8_decode("a", 0, &cp), 0);
  assert_int_equal(cp, 0x55);
}

/* Test-side encoder, so that every code point of the table is spelled once. */
static void encode(uint32_t cp, char out[5]) {
  unsigned char *o = (unsigned char *)out;
  if (cp < 0x80) {
    o[0] = (unsigned char)cp, o[1] = 0;
  } else if (cp < 0x800) {
    o[0] = (unsigned char)(0xC0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 0x3F)), o[2] = 0;
  } else if (cp < 0x10000) {
    o[0] = (unsigned char)(0xE0 | cp >> 12), o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp & 0x3F)), o[3] = 0;
  } else {
    o[0] = (unsigned char)(0xF0 | cp >> 18), o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    o[4] = 0;
  }
}

/* Unicode's White_Space set, and the invisible format characters. */
static const uint32_t invisible[] = {
    0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,   0xAD,   0x1680, 0x180E,
    0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
    0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A, 0x202B, 0x202C, 0x202D,
    0x202E, 0x202F, 0x205F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0x2066, 0x2067, 0x2068,
    0x2069, 0x3000, 0xFEFF,
};

/* Visible, or controls: the neighbours of the ranges above among them. */
static const uint32_t visible[] = {
    0x01,   0x08,   0x0E,   0x1F,   0x21,   'a',    0x7F,   0x84,   0x86,   0x9F,   0xA1,
    0xAC,   0xAE,   0xE9,   0x167F, 0x1681, 0x180D, 0x180F, 0x1FFF, 0x2010, 0x2027, 0x2030,
    0x205E, 0x2065, 0x206A, 0x2FFF, 0x3001, 0x3164, 0xFEFE, 0xFF00, 0x1F34C,
};

static void test_is_blank(void **state) {
  (void)state;
  assert_true(utf8_is_blank(""));
  char all[sizeof invisible / sizeof invisible[0] * 4 + 1] = "";
  for (size_t i = 0; i < sizeof invisible / sizeof invisible[0]; i++) {
    char one[5];
    encode(invisible[i], one);
    if (!utf8_is_invisible(invisible[i]) || !utf8_is_blank(one))
      fail_msg("U+%04X should be invisible", (unsigned)invisible[i]);
    strcat(all, one);
  }
  assert_true(utf8_is_blank(all));
  for (size_t i = 0; i < sizeof visible / sizeof visible[0]; i++) {
    char one[5], mixed[2 * sizeof all + 5];
    encode(visible[i], one);
    snprintf(mixed, sizeof mixed, "%s%s%s", all, one, all); /* one visible among blanks */
    if (utf8_is_invisible(visible[i]) || utf8_is_blank(one) || utf8_is_blank(mixed))
      fail_msg("U+%04X should be visible", (unsigned)visible[i]);
  }
  /* A malformed byte is something, even among blanks. */
  assert_false(utf8_is_blank("\xe3\x80\x80\xff"));
  assert_false(utf8_is_blank("\xe3\x80"));   /* U+3000 cut short */
  assert_false(utf8_is_blank("\xc2\xa0\xed\xa0\x80")); /* then a surrogate */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cut_fits),   cmocka_unit_test(test_cut_never_splits),
      cmocka_unit_test(test_cut_review_case), cmocka_unit_test(test_length),
      cmocka_unit_test(test_valid),      cmocka_unit_test(test_sanitize),
      cmocka_unit_test(test_decode),     cmocka_unit_test(test_is_blank),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
