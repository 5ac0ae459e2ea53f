/* test_request_hash.c - what identifies a submit for its Idempotency-Key
 * (core_request_hash) and which keys are accepted (core_idempotency_key_valid). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/core.h"

static void hash_of(const core_gen_request *req, char out[65]) {
  assert_true(core_request_hash(req, out));
  assert_int_equal(strlen(out), 64);
}

static void test_same_request_same_hash(void **state) {
  const char *imgs[] = {"https://example.com/a.png", "data:image/png;base64,AAAA"};
  core_gen_request a = {.model = "nano-banana-2", .prompt = "a cat", .aspect_ratio = "16:9",
                        .resolution = "2K", .webhook_url = "https://example.com/h",
                        .images = imgs, .n_images = 2};
  core_gen_request b = a;
  char ha[65], hb[65];
  hash_of(&a, ha);
  hash_of(&b, hb);
  assert_string_equal(ha, hb);
  /* Every field counts. */
  const char **fields[] = {&b.model, &b.prompt, &b.aspect_ratio, &b.resolution,
                                 &b.webhook_url};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    b = a;
    *fields[i] = "other";
    hash_of(&b, hb);
    assert_string_not_equal(ha, hb);
  }
}

static void test_absent_empty_and_boundaries(void **state) {
  core_gen_request a = {.prompt = "x"};
  core_gen_request b = {.prompt = "x", .model = ""};
  char ha[65], hb[65];
  hash_of(&a, ha);
  hash_of(&b, hb);
  assert_string_not_equal(ha, hb); /* absent is not empty */
  /* Fields are length-delimited: text cannot move from one to the next. */
  core_gen_request c = {.prompt = "ab", .aspect_ratio = "c"};
  core_gen_request d = {.prompt = "a", .aspect_ratio = "bc"};
  hash_of(&c, ha);
  hash_of(&d, hb);
  assert_string_not_equal(ha, hb);
  /* A default spelled out is another request (hashed as sent). */
  core_gen_request e = {.prompt = "x", .model = "nano-banana"};
  hash_of(&e, hb);
  hash_of(&a, ha);
  assert_string_not_equal(ha, hb);
}

/* The output options count when given, and only then: a request without
 * them hashes as it did before they existed. */
static void test_output_options(void **state) {
  (void)state;
  core_gen_request a = {.prompt = "x"};
  char ha[65], hb[65];
  hash_of(&a, ha);
  /* An empty format and an unset quality add nothing. */
  core_gen_request b = a;
  b.output_format = "";
  b.output_compression = 55; /* not given: ignored */
  hash_of(&b, hb);
  assert_string_equal(ha, hb);
  b = a;
  b.output_format = "jpeg";
  hash_of(&b, hb);
  assert_string_not_equal(ha, hb);
  char jpeg[65];
  memcpy(jpeg, hb, sizeof jpeg);
  b.output_compression_set = true;
  b.output_compression = 100; /* the default, spelled out: another request */
  hash_of(&b, hb);
  assert_string_not_equal(jpeg, hb);
  char q100[65];
  memcpy(q100, hb, sizeof q100);
  b.output_compression = 99;
  hash_of(&b, hb);
  assert_string_not_equal(q100, hb);
  b.output_format = "webp";
  hash_of(&b, hb);
  assert_string_not_equal(q100, hb);
}

static void test_images_in_order(void **state) {
  const char *ab[] = {"https://example.com/a", "https://example.com/b"};
  const char *ba[] = {"https://example.com/b", "https://example.com/a"};
  const char *one[] = {"https://example.com/a"};
  core_gen_request x = {.prompt = "p", .images = ab, .n_images = 2};
  core_gen_request y = {.prompt = "p", .images = ba, .n_images = 2};
  core_gen_request z = {.prompt = "p", .images = one, .n_images = 1};
  core_gen_request none = {.prompt = "p"};
  char hx[65], hy[65], hz[65], hn[65];
  hash_of(&x, hx);
  hash_of(&y, hy);
  hash_of(&z, hz);
  hash_of(&none, hn);
  assert_string_not_equal(hx, hy);
  assert_string_not_equal(hx, hz);
  assert_string_not_equal(hz, hn);
}

/* The quality counts only when given, so a request without one hashes as it
 * did before qualities existed (a replay across the upgrade stays a replay).
 * The vectors are the canonical form (core.h) hashed by Python's hashlib. */
static void test_quality_only_when_given(void **state) {
  (void)state;
  core_gen_request a = {.model = "gpt-image-1", .prompt = "a cat"};
  char h[65], other[65];
  hash_of(&a, h);
  assert_string_equal(h, "f889b8c5cefd96629d552dc2d41d1a8feea3c061cc1262f0c0acc4a01890c7a0");
  a.quality = "high";
  hash_of(&a, h);
  assert_string_equal(h, "8189d3fb2746da22d2fdf62146cfe25bcdf6a50835d620dce8438f3a070c4ce9");
  a.quality = "low";
  hash_of(&a, other);
  assert_string_not_equal(h, other);
  a.quality = "auto"; /* as sent: "auto" spelled out is not an absent quality */
  hash_of(&a, h);
  a.quality = NULL;
  hash_of(&a, other);
  assert_string_not_equal(h, other);
}

/* The background and the mask count only when given (a request without
 * them hashes as before: the first vector is the one above), the mask by its
 * text as given or by its uploaded bytes, and the two forms differ. The
 * vectors are the canonical form hashed by Python's hashlib. */
static void test_background_and_mask_only_when_given(void **state) {
  (void)state;
  core_gen_request a = {.model = "gpt-image-1", .prompt = "a cat"};
  char h[65], other[65];
  hash_of(&a, h);
  assert_string_equal(h, "f889b8c5cefd96629d552dc2d41d1a8feea3c061cc1262f0c0acc4a01890c7a0");
  a.background = "transparent";
  hash_of(&a, h);
  assert_string_equal(h, "65b63162b35245da5c501cf257b01fad80c0c609eb59894d944b352004c80a06");
  a.background = "auto"; /* as sent: not an absent background */
  hash_of(&a, other);
  assert_string_not_equal(h, other);
  a.background = NULL;
  hash_of(&a, h);
  assert_string_not_equal(h, other);

  a.mask = "AAAA";
  hash_of(&a, h);
  assert_string_equal(h, "4ba2f0cd75bc56be86597321405f79e07947df4659ea67f4d2feb763e8f1fc32");
  a.mask = "data:image/png;base64,AAAA"; /* another text, another request */
  hash_of(&a, other);
  assert_string_not_equal(h, other);
  a.mask = NULL;
  static const uint8_t png[] = {0x89, 'P', 'N', 'G'};
  a.mask_bytes = (core_image_bytes){.data = png, .len = sizeof png};
  hash_of(&a, h);
  assert_string_equal(h, "6915079193aa19977d41698b36d65fee53a10ea1bdc8187fd6d56c1142d96cf9");
  static const uint8_t png2[] = {0x89, 'P', 'N', 'H'};
  a.mask_bytes.data = png2;
  hash_of(&a, other);
  assert_string_not_equal(h, other);
}

static void test_key_form(void **state) {
  char k[300];
  assert_false(core_idempotency_key_valid(""));
  assert_true(core_idempotency_key_valid("a"));
  assert_true(core_idempotency_key_valid("order 42/retry:1 ~!"));
  memset(k, 'k', sizeof k);
  k[CORE_IDEMPOTENCY_KEY_MAX] = '\0';
  assert_true(core_idempotency_key_valid(k));
  k[CORE_IDEMPOTENCY_KEY_MAX] = 'k';
  k[CORE_IDEMPOTENCY_KEY_MAX + 1] = '\0';
  assert_false(core_idempotency_key_valid(k));
  assert_false(core_idempotency_key_valid("tab\there"));
  assert_false(core_idempotency_key_valid("del\x7f"));
  assert_false(core_idempotency_key_valid("caf\xc3\xa9"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_request_same_hash),
      cmocka_unit_test(test_absent_empty_and_boundaries),
      cmocka_unit_test(test_images_in_order),
      cmocka_unit_test(test_output_options),
      cmocka_unit_test(test_quality_only_when_given),
      cmocka_unit_test(test_background_and_mask_only_when_given),
      cmocka_unit_test(test_key_form),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
