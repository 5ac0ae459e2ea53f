/* test_webhook_sign.c - Standard Webhooks secrets and signatures.
 *
 * The expected signatures were computed once with the reference verifier,
 * the npm package standardwebhooks 1.1.1 (`new Webhook(secret).sign(id,
 * date, payload)`); the first vector is also the example of the spec's
 * documentation. tests/e2e/test_webhook_receiver.py checks signatures made by
 * this code against the same package at run time. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/base64.h"
#include "webhook/sign.h"

typedef struct vector {
  const char *secret;
  const char *id;
  int64_t timestamp_s;
  const char *payload;
  const char *signature;
} vector;

static const vector vectors[] = {
    {"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
     "{\"test\": 2432232314}", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="},
    /* key bytes 0..31; a UTF-8 payload (the HMAC runs over the bytes) */
    {"whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "msg_0123456789abcdef0123456789abcdef",
     1767225600, "{\"type\":\"task.succeeded\",\"data\":{\"prompt\":\"caf\xc3\xa9 \xe2\x98\x95\"}}",
     "v1,SmqNDYg1NLlpYRVefDNIxbrt0UgPJPPI6UoQpxRtFoE="},
    /* key bytes 255..192 (the longest key), timestamp 0, empty payload */
    {"whsec_//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eDf3t3c29rZ2NfW1dTT0tHQz87NzMvKycjHxsXEw8LB"
     "wA==",
     "msg_ffffffffffffffffffffffffffffffff", 0, "",
     "v1,+DkRAl+XSuwnZAi/Z8T+h3C5hWAqYqbYov2Hvre5iuY="},
};
#define N_VECTORS (sizeof vectors / sizeof vectors[0])

static void test_known_vectors(void **state) {
  (void)state;
  for (size_t i = 0; i < N_VECTORS; i++) {
    const vector *v = &vectors[i];
    assert_true(webhook_secret_valid(v->secret));
    char sig[WEBHOOK_SIGNATURE_MAX];
    assert_int_equal(webhook_sign(v->secret, v->id, v->timestamp_s, v->payload,
                                  strlen(v->payload), sig),
                     0);
    if (strcmp(sig, v->signature) != 0) fail_msg("vector %zu: %s, want %s", i, sig, v->signature);
  }
}

/* Every input is part of what is signed. */
static void test_signature_covers_every_part(void **state) {
  (void)state;
  const vector *v = &vectors[0];
  size_t len = strlen(v->payload);
  char base[WEBHOOK_SIGNATURE_MAX], other[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(v->secret, v->id, v->timestamp_s, v->payload, len, base), 0);

  assert_int_equal(webhook_sign(vectors[1].secret, v->id, v->timestamp_s, v->payload, len, other),
                   0);
  assert_string_not_equal(base, other);
  assert_int_equal(webhook_sign(v->secret, "msg_p5jXN8AQM9LWM0D4loKWxJel", v->timestamp_s,
                                v->payload, len, other),
                   0);
  assert_string_not_equal(base, other);
  assert_int_equal(webhook_sign(v->secret, v->id, v->timestamp_s + 1, v->payload, len, other), 0);
  assert_string_not_equal(base, other);
  assert_int_equal(webhook_sign(v->secret, v->id, v->timestamp_s, v->payload, len - 1, other), 0);
  assert_string_not_equal(base, other);
}

static void test_payload_bytes_after_nul(void **state) {
  (void)state;
  const char *secret = vectors[1].secret;
  char a[WEBHOOK_SIGNATURE_MAX], b[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(secret, "m", 1, "ab\0cd", 5, a), 0);
  assert_int_equal(webhook_sign(secret, "m", 1, "ab\0ce", 5, b), 0);
  assert_string_not_equal(a, b); /* the length given is signed, not a C string */
}

static void test_header_one_and_two_secrets(void **state) {
  (void)state;
  const vector *cur = &vectors[0], *prev = &vectors[1];
  size_t len = strlen(cur->payload);
  char header[WEBHOOK_SIGNATURE_HEADER_MAX];
  assert_int_equal(webhook_signature_header(cur->secret, NULL, cur->id, cur->timestamp_s,
                                            cur->payload, len, header),
                   0);
  assert_string_equal(header, cur->signature);
  assert_int_equal(webhook_signature_header(cur->secret, "", cur->id, cur->timestamp_s,
                                            cur->payload, len, header),
                   0);
  assert_string_equal(header, cur->signature);

  char with_prev[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(prev->secret, cur->id, cur->timestamp_s, cur->payload, len,
                                with_prev),
                   0);
  char want[WEBHOOK_SIGNATURE_HEADER_MAX];
  snprintf(want, sizeof want, "%s %s", cur->signature, with_prev);
  assert_int_equal(webhook_signature_header(cur->secret, prev->secret, cur->id, cur->timestamp_s,
                                            cur->payload, len, header),
                   0);
  assert_string_equal(header, want);

  /* A bad secret on either side: no header at all. */
  assert_int_equal(webhook_signature_header("whsec_short", NULL, cur->id, 1, "x", 1, header), -1);
  assert_string_equal(header, "");
  assert_int_equal(
      webhook_signature_header(cur->secret, "whsec_short", cur->id, 1, "x", 1, header), -1);
  assert_string_equal(header, "");
}

static void test_new_secrets(void **state) {
  (void)state;
  char a[WEBHOOK_SECRET_MAX], b[WEBHOOK_SECRET_MAX];
  assert_int_equal(webhook_secret_new(a), 0);
  assert_int_equal(webhook_secret_new(b), 0);
  assert_true(webhook_secret_valid(a));
  assert_true(webhook_secret_valid(b));
  assert_string_not_equal(a, b);
  assert_memory_equal(a, "whsec_", 6);
  assert_int_equal(strlen(a), 6 + 44); /* base64 of 32 bytes */
  uint8_t *key = NULL;
  size_t len = 0;
  assert_int_equal(base64_decode(a + 6, strlen(a + 6), 64, &key, &len), 0);
  assert_int_equal(len, WEBHOOK_SECRET_NEW_BYTES);
  free(key);
  char sig[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(a, "msg_x", 1, "{}", 2, sig), 0);
  assert_memory_equal(sig, "v1,", 3);
  assert_int_equal(strlen(sig), 3 + 44);
}

static void test_invalid_secrets(void **state) {
  (void)state;
  /* 24 bytes (the minimum) and 64 (the maximum) are fine ... */
  assert_true(webhook_secret_valid("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
  assert_true(webhook_secret_valid(vectors[2].secret));
  static const char *const bad[] = {
      "",
      "whsec_",
      "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",           /* no prefix */
      "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",     /* prefix in the wrong case */
      "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",     /* 23 bytes */
      "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",  /* padding missing */
      "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", /* a blank */
      "whsec_ AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
      "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8-", /* URL alphabet */
      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",     /* not base64 */
      "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB==", /* non-zero unused bits */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (webhook_secret_valid(bad[i])) fail_msg("accepted \"%s\"", bad[i]);
    char sig[WEBHOOK_SIGNATURE_MAX] = "sentinel";
    assert_int_equal(webhook_sign(bad[i], "m", 1, "x", 1, sig), -1);
    assert_string_equal(sig, "");
  }
  assert_false(webhook_secret_valid(NULL));
  /* 65 bytes: one over the maximum. */
  uint8_t big[65] = {0};
  char *b64 = base64_encode(big, sizeof big);
  assert_non_null(b64);
  char text[WEBHOOK_SECRET_MAX + 8];
  snprintf(text, sizeof text, "whsec_%s", b64);
  assert_false(webhook_secret_valid(text));
  free(b64);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_known_vectors),
      cmocka_unit_test(test_signature_covers_every_part),
      cmocka_unit_test(test_payload_bytes_after_nul),
      cmocka_unit_test(test_header_one_and_two_secrets),
      cmocka_unit_test(test_new_secrets),
      cmocka_unit_test(test_invalid_secrets),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
