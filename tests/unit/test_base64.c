/* test_base64.c - RFC 4648 vectors, both alphabets, strictness, size limits, round trips. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/base64.h"

static const struct {
  const char *plain;
  const char *encoded;
} rfc_vectors[] = {
    {"", ""},          {"f", "Zg=="},         {"fo", "Zm8="},         {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
};
#define N_VECTORS (sizeof rfc_vectors / sizeof rfc_vectors[0])

/* Decodes a NUL-terminated string with a generous limit; returns the status. */
static int decode_str(const char *s, uint8_t **out, size_t *out_len) {
  return base64_decode(s, strlen(s), 1 << 20, out, out_len);
}

static void expect_decodes_to(const char *in, const void *want, size_t want_len) {
  uint8_t *out = NULL;
  size_t len = 99;
  assert_int_equal(decode_str(in, &out, &len), 0);
  assert_non_null(out);
  assert_int_equal(len, want_len);
  if (want_len) assert_memory_equal(out, want, want_len);
  free(out);
}

static void expect_malformed(const char *in) {
  uint8_t *out = (uint8_t *)"sentinel";
  size_t len = 99;
  int rc = decode_str(in, &out, &len);
  if (rc != -1) print_error("accepted malformed input \"%s\"\n", in);
  assert_int_equal(rc, -1);
  assert_null(out);
  assert_int_equal(len, 0);
}

static void test_rfc_encode(void **state) {
  (void)state;
  for (size_t i = 0; i < N_VECTORS; i++) {
    size_t n = strlen(rfc_vectors[i].plain);
    char *enc = base64_encode((const uint8_t *)rfc_vectors[i].plain, n);
    assert_non_null(enc);
    assert_string_equal(enc, rfc_vectors[i].encoded);
    assert_int_equal(base64_encoded_len(n), strlen(rfc_vectors[i].encoded));
    free(enc);
  }
}

static void test_rfc_decode_padded_and_unpadded(void **state) {
  (void)state;
  for (size_t i = 0; i < N_VECTORS; i++) {
    const char *plain = rfc_vectors[i].plain;
    expect_decodes_to(rfc_vectors[i].encoded, plain, strlen(plain));
    char bare[16];
    strcpy(bare, rfc_vectors[i].encoded);
    char *pad = strchr(bare, '=');
    if (pad) *pad = '\0';
    expect_decodes_to(bare, plain, strlen(plain));
  }
}

static void test_url_safe(void **state) {
  (void)state;
  static const uint8_t bytes[] = {0xfb, 0xff, 0xbf, 0xfe};
  char *enc = base64_encode(bytes, sizeof bytes);
  assert_string_equal(enc, "+/+//g==");
  free(enc);
  expect_decodes_to("+/+//g==", bytes, sizeof bytes);
  expect_decodes_to("-_-__g==", bytes, sizeof bytes);
  expect_decodes_to("-_-__g", bytes, sizeof bytes);
  /* One input mixing the two alphabets is not something any encoder makes. */
  expect_malformed("+_-/");
  expect_malformed("-/+_");
}

static void test_whitespace_skipped(void **state) {
  (void)state;
  expect_decodes_to("Zm9v\r\nYmFy", "foobar", 6);
  expect_decodes_to("  Zm9v\nYmE=\n", "fooba", 5);
  expect_decodes_to("Z m\t9 v Y g = =\r\n", "foob", 4);
  expect_decodes_to(" \t\r\n", "", 0);
  expect_decodes_to("", "", 0);
}

static void test_bad_characters(void **state) {
  (void)state;
  expect_malformed("Zm9v*mFy");
  expect_malformed("Zm9v.mFy");
  expect_malformed("Zm9v\fYmFy"); /* only CR, LF, space and tab count as whitespace */
  expect_malformed("Zm9v\vYmFy");
  expect_malformed("Zm9v\xc3\xa9mFy");
  uint8_t *out = NULL;
  size_t len = 0;
  /* An embedded NUL inside the given length is a bad character, not an end. */
  assert_int_equal(base64_decode("Zm9v\0YmFy", 9, 100, &out, &len), -1);
  assert_null(out);
}

static void test_misplaced_padding(void **state) {
  (void)state;
  expect_malformed("=");
  expect_malformed("==");
  expect_malformed("=Zm9");
  expect_malformed("Zm=9");
  expect_malformed("Zg=");   /* too little padding */
  expect_malformed("Zg==="); /* too much */
  expect_malformed("Zm8==");
  expect_malformed("Zm9v="); /* padding after a full group */
  expect_malformed("Zm9v====");
  expect_malformed("Zg==Zg=="); /* data after padding */
  expect_malformed("Zg==\nZg");
}

static void test_lone_trailing_char(void **state) {
  (void)state;
  expect_malformed("Z");
  expect_malformed("Zm9vY");
  expect_malformed("Zm9vY=");
  expect_malformed("Zm9vY===");
}

static void test_nonzero_trailing_bits(void **state) {
  (void)state;
  expect_malformed("Zh==");
  expect_malformed("Zh");
  expect_malformed("Zm9=");
  expect_malformed("Zm9");
  expect_decodes_to("Zm8", "fo", 2); /* the same group with clean bits is fine */
}

static void test_max_out(void **state) {
  (void)state;
  uint8_t *out = NULL;
  size_t len = 0;
  assert_int_equal(base64_decode("Zm9vYmFy", 8, 6, &out, &len), 0);
  assert_int_equal(len, 6);
  free(out);
  out = NULL;
  assert_int_equal(base64_decode("Zm9vYmFy", 8, 5, &out, &len), -2);
  assert_null(out);
  assert_int_equal(len, 0);
  /* Padding and whitespace do not count towards the decoded size. */
  assert_int_equal(base64_decode("Zg==\n\n\n\n", 8, 1, &out, &len), 0);
  assert_int_equal(len, 1);
  free(out);
  out = NULL;
  assert_int_equal(base64_decode("Zg==", 4, 0, &out, &len), -2);
  assert_null(out);
  assert_int_equal(base64_decode("", 0, 0, &out, &len), 0);
  assert_int_equal(len, 0);
  free(out);
}

static void test_encoded_len_saturates(void **state) {
  (void)state;
  assert_int_equal(base64_encoded_len(0), 0);
  assert_int_equal(base64_encoded_len(1), 4);
  assert_int_equal(base64_encoded_len(3), 4);
  assert_int_equal(base64_encoded_len(4), 8);
  assert_int_equal(base64_encoded_len(SIZE_MAX), SIZE_MAX);
  assert_int_equal(base64_encoded_len(SIZE_MAX / 4 * 3), SIZE_MAX / 4 * 4);
  /* Too big to encode: refused before the input is touched. */
  static const uint8_t one = 0;
  assert_null(base64_encode(&one, SIZE_MAX));
}

/* xorshift64: deterministic bytes so a failure can be reproduced. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed) {
  uint64_t x = seed;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (uint8_t)(x >> 24);
  }
}

/* The encoding of in wrapped at 76 columns with CRLF, as MIME does. */
static char *wrap_mime(const char *in) {
  size_t n = strlen(in);
  char *out = malloc(n + n / 76 * 2 + 3);
  assert_non_null(out);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (i && i % 76 == 0) {
      out[o++] = '\r';
      out[o++] = '\n';
    }
    out[o++] = in[i];
  }
  out[o] = '\0';
  return out;
}

static void test_round_trip_1mib(void **state) {
  (void)state;
  for (size_t extra = 0; extra < 3; extra++) { /* exercise all three tail lengths */
    size_t n = (1u << 20) + extra;
    uint8_t *data = malloc(n);
    assert_non_null(data);
    fill_random(data, n, 0x9e3779b97f4a7c15ull + extra);
    char *enc = base64_encode(data, n);
    assert_non_null(enc);
    assert_int_equal(strlen(enc), base64_encoded_len(n));
    uint8_t *back = NULL;
    size_t back_len = 0;
    assert_int_equal(base64_decode(enc, strlen(enc), n, &back, &back_len), 0);
    assert_int_equal(back_len, n);
    assert_memory_equal(back, data, n);
    free(back);
    char *wrapped = wrap_mime(enc);
    assert_int_equal(base64_decode(wrapped, strlen(wrapped), n, &back, &back_len), 0);
    assert_int_equal(back_len, n);
    assert_memory_equal(back, data, n);
    free(back);
    assert_int_equal(base64_decode(wrapped, strlen(wrapped), n - 1, &back, &back_len), -2);
    free(wrapped);
    free(enc);
    free(data);
  }
}

/* Every byte value through every position of a group. */
static void test_round_trip_all_bytes(void **state) {
  (void)state;
  uint8_t data[258];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)i;
  for (size_t n = 0; n <= sizeof data; n++) {
    char *enc = base64_encode(data, n);
    assert_non_null(enc);
    uint8_t *back = NULL;
    size_t back_len = 0;
    assert_int_equal(base64_decode(enc, strlen(enc), n, &back, &back_len), 0);
    assert_int_equal(back_len, n);
    if (n) assert_memory_equal(back, data, n);
    free(back);
    free(enc);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc_encode),
      cmocka_unit_test(test_rfc_decode_padded_and_unpadded),
      cmocka_unit_test(test_url_safe),
      cmocka_unit_test(test_whitespace_skipped),
      cmocka_unit_test(test_bad_characters),
      cmocka_unit_test(test_misplaced_padding),
      cmocka_unit_test(test_lone_trailing_char),
      cmocka_unit_test(test_nonzero_trailing_bits),
      cmocka_unit_test(test_max_out),
      cmocka_unit_test(test_encoded_len_saturates),
      cmocka_unit_test(test_round_trip_1mib),
      cmocka_unit_test(test_round_trip_all_bytes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
