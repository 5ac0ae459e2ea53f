/* test_base64.c - RFC 4648 vectors, both alphabets, strictness, size limits, round trips;
 * the streaming decoder split at every point; the decoder against the one it replaced. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "util/base64.h"
#include "../fuzz/base64_reference.h"

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


/* ================= streaming ================= */

/* Streams in[0..len) cut at the given points; returns 0 and the bytes, or -1
 * when some call refused. Checks that no call writes past what it may. */
static int stream_pieces(const char *in, size_t len, const size_t *cuts, size_t n_cuts,
                         uint8_t *out, size_t *out_len) {
  base64_stream s;
  base64_stream_init(&s);
  size_t o = 0, at = 0;
  for (size_t k = 0; k <= n_cuts; k++) {
    size_t next = k < n_cuts ? cuts[k] : len;
    size_t n = 0;
    uint8_t *piece = malloc(BASE64_FEED_MAX(next - at)); /* exactly the promised room */
    assert_non_null(piece);
    int rc = base64_stream_feed(&s, in + at, next - at, piece, &n);
    assert_true(n <= BASE64_FEED_MAX(next - at));
    memcpy(out + o, piece, n);
    free(piece);
    o += n;
    if (rc != 0) {
      assert_true(base64_stream_failed(&s));
      return -1;
    }
    at = next;
  }
  uint8_t tail[2];
  size_t tail_len = 9;
  if (base64_stream_finish(&s, tail, &tail_len) != 0) {
    assert_int_equal(tail_len, 0);
    return -1;
  }
  memcpy(out + o, tail, tail_len);
  *out_len = o + tail_len;
  return 0;
}

/* Every way of cutting s into two and three pieces gives what one call gives. */
static void expect_stream_matches(const char *in) {
  size_t len = strlen(in);
  uint8_t *want = NULL;
  size_t want_len = 0;
  int want_rc = base64_decode(in, len, SIZE_MAX, &want, &want_len);
  uint8_t got[256];
  size_t got_len = 0;
  assert_true(len < sizeof got);
  for (size_t a = 0; a <= len; a++) {
    for (size_t b = a; b <= len; b++) {
      size_t cuts[2] = {a, b};
      int rc = stream_pieces(in, len, cuts, 2, got, &got_len);
      if (rc != (want_rc == 0 ? 0 : -1))
        fail_msg("\"%s\" cut at %zu and %zu: %d, one-shot %d", in, a, b, rc, want_rc);
      if (rc == 0) {
        assert_int_equal(got_len, want_len);
        if (want_len) assert_memory_equal(got, want, want_len);
      }
    }
  }
  free(want);
}

static void test_stream_every_split(void **state) {
  (void)state;
  static const char *const good[] = {
      "",         "Zg==",     "Zg",         "Zm8=",          "Zm8",
      "Zm9v",     "Zm9vYmFy", "Zm9vYg==",   "+/+//g==",      "-_-__g",
      "Z m\t9 v Y g = =\r\n", "  Zm9v\nYmE=\n", "Zg= =",   "Zm9v\r\nYmFy\r\n",
      "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk=",
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
      "rkJggg==",
  };
  static const char *const bad[] = {
      "Z", "Zm9vY", "Zg=", "Zg===", "Zm9v=", "=Zm9", "Zm=9", "Zg==Zg==", "Zh==", "Zm9",
      "+_-/", "-/+_", "Zm9v*mFy", "Zm9v\fYmFy", "Zg==\nZg", "Zm9vYmFy+_", "ab-d/fgh",
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint8_t *out = NULL;
    size_t n = 0;
    assert_int_equal(base64_decode(good[i], strlen(good[i]), SIZE_MAX, &out, &n), 0);
    free(out);
    expect_stream_matches(good[i]);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t *out = NULL;
    size_t n = 0;
    assert_int_equal(base64_decode(bad[i], strlen(bad[i]), SIZE_MAX, &out, &n), -1);
    expect_stream_matches(bad[i]);
  }
}

/* A long input, wrapped and not, cut into pieces of every small size. */
static void test_stream_piece_sizes(void **state) {
  (void)state;
  size_t n = 10007;
  uint8_t *data = malloc(n);
  assert_non_null(data);
  fill_random(data, n, 42);
  char *enc = base64_encode(data, n);
  char *wrapped = wrap_mime(enc);
  const char *texts[] = {enc, wrapped};
  uint8_t *got = malloc(n + 8);
  size_t *cuts = malloc(sizeof *cuts * (strlen(wrapped) + 1));
  assert_true(got && cuts);
  for (size_t t = 0; t < 2; t++) {
    size_t len = strlen(texts[t]);
    for (size_t piece = 1; piece <= 37; piece++) {
      size_t n_cuts = 0;
      for (size_t at = piece; at < len; at += piece) cuts[n_cuts++] = at;
      size_t got_len = 0;
      assert_int_equal(stream_pieces(texts[t], len, cuts, n_cuts, got, &got_len), 0);
      assert_int_equal(got_len, n);
      assert_memory_equal(got, data, n);
    }
  }
  free(cuts);
  free(got);
  free(wrapped);
  free(enc);
  free(data);
}

static void test_stream_run_stops_before_other_bytes(void **state) {
  (void)state;
  base64_stream s;
  base64_stream_init(&s);
  uint8_t out[64];
  size_t n = 0;
  const char *text = "Zm9vYmFy\"rest";
  assert_int_equal(base64_stream_run(&s, text, strlen(text), out, &n), 8);
  assert_int_equal(n, 6);
  assert_memory_equal(out, "foobar", 6);
  assert_false(base64_stream_failed(&s));
  /* Whitespace stops a run too (the caller decides what it means there). */
  assert_int_equal(base64_stream_run(&s, "Zg \\", 5, out, &n), 2);
  assert_int_equal(n, 0);
  assert_int_equal(base64_stream_run(&s, "==", 2, out, &n), 2);
  uint8_t tail[2];
  assert_int_equal(base64_stream_finish(&s, tail, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(tail[0], 'f');

  /* A strictness fault stops it before the faulty character, for good. */
  base64_stream_init(&s);
  assert_int_equal(base64_stream_run(&s, "ab+d-fgh", 8, out, &n), 4);
  assert_int_equal(n, 3);
  assert_true(base64_stream_failed(&s));
  assert_int_equal(base64_stream_run(&s, "Zm9v", 4, out, &n), 0);
  assert_int_equal(base64_stream_feed(&s, "Zm9v", 4, out, &n), -1);
  assert_int_equal(n, 0);
  assert_int_equal(base64_stream_finish(&s, tail, &n), -1);

  /* A digit after padding. */
  base64_stream_init(&s);
  assert_int_equal(base64_stream_run(&s, "Zg==Zg", 6, out, &n), 4);
  assert_true(base64_stream_failed(&s));
}

typedef struct sink_record {
  uint8_t bytes[64 * 1024];
  size_t len;
  int calls;
  int stop_at; /* the call that answers "stop"; 0 = never */
} sink_record;

static int record_bytes(void *ctx, const uint8_t *bytes, size_t len) {
  sink_record *r = ctx;
  r->calls++;
  assert_true(len > 0);
  assert_true(r->len + len <= sizeof r->bytes);
  memcpy(r->bytes + r->len, bytes, len);
  r->len += len;
  return r->calls == r->stop_at ? 1 : 0;
}

static void test_stream_feed_to_sink(void **state) {
  (void)state;
  uint8_t data[40000];
  fill_random(data, sizeof data, 7);
  char *enc = base64_encode(data, sizeof data);
  base64_stream s;
  base64_stream_init(&s);
  static sink_record r;
  memset(&r, 0, sizeof r);
  assert_int_equal(base64_stream_feed_to(&s, enc, strlen(enc), record_bytes, &r), 0);
  assert_true(r.calls >= 3); /* handed over in pieces, not all at once */
  uint8_t tail[2];
  size_t n = 0;
  assert_int_equal(base64_stream_finish(&s, tail, &n), 0);
  memcpy(r.bytes + r.len, tail, n);
  assert_int_equal(r.len + n, sizeof data);
  assert_memory_equal(r.bytes, data, sizeof data);

  /* The sink says stop: -2, and no more calls. */
  base64_stream_init(&s);
  memset(&r, 0, sizeof r);
  r.stop_at = 1;
  assert_int_equal(base64_stream_feed_to(&s, enc, strlen(enc), record_bytes, &r), -2);
  assert_int_equal(r.calls, 1);

  /* Malformed: -1, after the bytes before the fault. */
  base64_stream_init(&s);
  memset(&r, 0, sizeof r);
  assert_int_equal(base64_stream_feed_to(&s, "Zm9vYmFy!", 9, record_bytes, &r), -1);
  assert_int_equal(r.len, 6);
  free(enc);
}

/* xorshift text biased to what base64 holds, with a few bytes it must refuse. */
static size_t random_text(char *out, size_t max, uint64_t *x) {
  static const char pool[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                             "AQgwAQgwAQgw+/-_====    \r\n\t*\0.";
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  size_t len = (size_t)(*x % max);
  for (size_t i = 0; i < len; i++) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    uint64_t r = *x >> 11;
    /* mostly the standard alphabet, so that long valid texts occur */
    out[i] = r % 8 ? pool[r / 8 % 64] : pool[r / 8 % (sizeof pool - 1)];
  }
  return len;
}

/* The new decoder agrees with the old one: same answer, same bytes, same cap. */
static void test_agrees_with_reference(void **state) {
  (void)state;
  uint64_t x = 0x2545f4914f6cdd1dull;
  char text[96];
  int accepted = 0;
  for (int i = 0; i < 300000; i++) {
    size_t len = random_text(text, sizeof text, &x);
    size_t cap = (size_t)(x % 4 == 0 ? x % 80 : SIZE_MAX);
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    int ra = base64_decode(text, len, cap, &a, &alen);
    int rb = ref_base64_decode(text, len, cap, &b, &blen);
    if (ra != rb) fail_msg("\"%.*s\" cap %zu: new %d, old %d", (int)len, text, cap, ra, rb);
    assert_int_equal(alen, blen);
    if (alen) assert_memory_equal(a, b, alen);
    accepted += ra == 0;
    free(a);
    free(b);
  }
  assert_true(accepted > 1000); /* the comparison covered accepted texts, not only refusals */
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
      cmocka_unit_test(test_stream_every_split),
      cmocka_unit_test(test_stream_piece_sizes),
      cmocka_unit_test(test_stream_run_stops_before_other_bytes),
      cmocka_unit_test(test_stream_feed_to_sink),
      cmocka_unit_test(test_agrees_with_reference),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
