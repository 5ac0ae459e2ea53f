/* test_pricing.c - built-in prices, "prices" in the config file, quotes, USD text. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "core/catalog.h"
#include "core/pricing.h"

static int load_text(imgate_config *c, const char *text, char *err, size_t n) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/imgate-pricing-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  int rc = config_load_file(c, path, err, n);
  unlink(path);
  return rc;
}

/* Loading text must fail with a message that contains want. */
static void assert_refused(const char *text, const char *want) {
  imgate_config c;
  char err[256] = "";
  config_defaults(&c);
  assert_int_equal(load_text(&c, text, err, sizeof err), -1);
  if (!strstr(err, want)) fail_msg("error \"%s\" does not name \"%s\"", err, want);
}

static void test_defaults_every_model_and_resolution(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  static const struct {
    const char *model, *resolution, *quality;
    int64_t micros;
  } want[] = {
      {"nano-banana", "1K", NULL, 9500},
      {"nano-banana-2", "512", NULL, 20000},
      {"nano-banana-2", "1K", NULL, 25000},
      {"nano-banana-2", "2K", NULL, 30000},
      {"nano-banana-2", "4K", NULL, 40000},
      {"nano-banana-pro", "1K", NULL, 67000},
      {"nano-banana-pro", "2K", NULL, 67000},
      {"nano-banana-pro", "4K", NULL, 120000},
      {"gpt-image-1", "1K", "low", 11000},
      {"gpt-image-1", "1K", "medium", 42000},
      {"gpt-image-1", "1K", "high", 167000},
      {"gpt-image-1", "1K", "auto", 42000},
      {"gpt-image-1", "1K", NULL, 42000},
      {"gpt-image-1", "1K", "", 42000},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int64_t got = pricing_unit(&c, want[i].model, want[i].resolution, want[i].quality);
    if (got != want[i].micros)
      fail_msg("%s %s %s: %lld, want %lld", want[i].model, want[i].resolution,
               want[i].quality ? want[i].quality : "(null)", (long long)got,
               (long long)want[i].micros);
  }
  /* Every resolution the catalog offers has a price: nothing sells unpriced. */
  size_t n;
  const catalog_model *models = catalog_models(&n);
  for (size_t m = 0; m < n; m++) {
    assert_int_equal(pricing_reference(&c, models[m].name), 0);
    for (const char *const *r = models[m].resolutions; *r; r++)
      assert_true(pricing_unit(&c, models[m].name, *r, NULL) > 0);
  }
}

static void test_lookup_edges(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  /* No resolution means the model's default; the catalog's spellings apply. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", NULL, NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "", NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "4k", NULL), 40000);
  /* Gemini has no quality: whatever is passed does not change the price. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "2K", "high"), 30000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "HIGH"), 167000);
  /* Unknown or not offered. */
  assert_int_equal(pricing_unit(&c, "dall-e-3", "1K", NULL), -1);
  assert_int_equal(pricing_unit(&c, NULL, "1K", NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana", "4K", NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "512", NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "8K", NULL), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "2K", "low"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", "ultra"), -1);
  assert_int_equal(pricing_reference(&c, "dall-e-3"), -1);
  /* A price removed by code (not possible from a file) means not for sale. */
  c.prices[0].unit[CONFIG_PRICE_1K] = -1;
  assert_string_equal(c.prices[0].model, "nano-banana");
  assert_int_equal(pricing_unit(&c, "nano-banana", "1K", NULL), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana", "1K", NULL, 1, 0), -1);
}

static void test_slots(void **state) {
  (void)state;
  assert_int_equal(pricing_slot("nano-banana-2", "512"), CONFIG_PRICE_512);
  assert_int_equal(pricing_slot("nano-banana-2", "4K"), CONFIG_PRICE_4K);
  assert_int_equal(pricing_slot("nano-banana-2", "4k"), -1); /* files use one spelling */
  assert_int_equal(pricing_slot("nano-banana", "2K"), -1);
  assert_int_equal(pricing_slot("nano-banana-2", "low"), -1);
  assert_int_equal(pricing_slot("gpt-image-1", "low"), CONFIG_PRICE_LOW);
  assert_int_equal(pricing_slot("gpt-image-1", "high"), CONFIG_PRICE_HIGH);
  assert_int_equal(pricing_slot("gpt-image-1", "auto"), -1); /* auto is medium */
  assert_int_equal(pricing_slot("gpt-image-1", "1K"), -1);
  assert_int_equal(pricing_slot("nope", "1K"), -1);
}

static void test_overrides(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana-2\": {\"2K\": 31000, "
                             "\"reference_image\": 1000},"
                             " \"gpt-image-1\": {\"high\": 200000, \"low\": 0}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "2K", NULL), 31000);
  /* Entries not named keep their defaults. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "512", NULL), 20000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "1K", NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "4K", NULL), 40000);
  assert_int_equal(pricing_reference(&c, "nano-banana-2"), 1000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", "high"), 200000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", "low"), 0); /* free is allowed */
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", NULL), 42000);
  assert_int_equal(pricing_reference(&c, "gpt-image-1"), 0);
  /* Models not named are untouched. */
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "4K", NULL), 120000);
  /* The limit itself is accepted, and an empty object changes nothing. */
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana\": {\"1K\": 100000000,"
                             " \"reference_image\": 100000000}, \"nano-banana-pro\": {}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_unit(&c, "nano-banana", NULL, NULL), 100000000);
  assert_int_equal(pricing_reference(&c, "nano-banana"), 100000000);
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "1K", NULL), 67000);
  /* A copy by value carries the prices (no pointers inside). */
  imgate_config copy = c;
  assert_int_equal(pricing_unit(&copy, "nano-banana-2", "2K", NULL), 31000);
}

static void test_refusals_name_the_key(void **state) {
  (void)state;
  assert_refused("{\"prices\": {\"dall-e-3\": {\"1K\": 1}}}", "dall-e-3");
  assert_refused("{\"prices\": {\"nano-banana\": {\"2K\": 1}}}", "prices.nano-banana.2K");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"8K\": 1}}}", "prices.nano-banana-2.8K");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"1k\": 1}}}", "prices.nano-banana-2.1k");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"high\": 1}}}",
                 "prices.nano-banana-2.high");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"ultra\": 1}}}", "prices.gpt-image-1.ultra");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"auto\": 1}}}", "prices.gpt-image-1.auto");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"1K\": 1}}}", "prices.gpt-image-1.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": -1}}}", "prices.nano-banana.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": 1.5}}}", "prices.nano-banana.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": \"9500\"}}}", "prices.nano-banana.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": null}}}", "prices.nano-banana.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": 100000001}}}",
                 "prices.nano-banana.1K");
  assert_refused("{\"prices\": {\"nano-banana\": {\"reference_image\": -5}}}",
                 "prices.nano-banana.reference_image");
  assert_refused("{\"prices\": {\"nano-banana\": {\"reference_image\": 100000001}}}",
                 "prices.nano-banana.reference_image");
  assert_refused("{\"prices\": {\"nano-banana\": 9500}}", "prices.nano-banana");
  assert_refused("{\"prices\": [1]}", "prices");
  assert_refused("{\"prices\": {\"nano-banana\": {\"1K\": 1, \"1K\": 2}}}", "duplicate");
}

static void test_quote_arithmetic(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "2K", NULL, 1, 0), 30000);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "2K", NULL, 4, 3), 120000);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "high", 2, 1), 334000);
  assert_int_equal(pricing_quote(&c, "nano-banana", NULL, NULL, 0, 0), 0);
  assert_int_equal(load_text(&c, "{\"prices\": {\"nano-banana-2\": {\"reference_image\": 1000}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "4K", NULL, 4, 3), 4 * 40000 + 3 * 1000);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "4K", NULL, 0, 2), 2000);
  /* Unknown or negative. */
  assert_int_equal(pricing_quote(&c, "nope", "1K", NULL, 1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "8K", NULL, 1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, -1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 1, -1), -1);
  /* The largest file prices with the largest counts still fit. */
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana-2\": {\"1K\": 100000000,"
                             " \"reference_image\": 100000000}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, INT32_MAX, INT32_MAX),
                   2 * (int64_t)INT32_MAX * 100000000);
  /* Prices set by code beyond what a file allows: overflow is -1, not wrapped. */
  config_price *p = &c.prices[2];
  assert_string_equal(p->model, "nano-banana-2");
  p->unit[CONFIG_PRICE_1K] = INT64_MAX / 2;
  p->reference_image = 0;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 2, 0), INT64_MAX - 1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 3, 0), -1);
  p->reference_image = 2;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 2, 0), INT64_MAX - 1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 2, 1), -1); /* sum overflows */
  p->unit[CONFIG_PRICE_1K] = 0;
  p->reference_image = INT64_MAX;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 5, 1), INT64_MAX);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, 5, 2), -1);
}

static void assert_format(int64_t micros, const char *want) {
  char out[PRICING_USD_BUFSIZE];
  pricing_format_usd(micros, out, sizeof out);
  assert_string_equal(out, want);
}

static void test_format_usd(void **state) {
  (void)state;
  assert_format(0, "0.000000");
  assert_format(1, "0.000001");
  assert_format(9500, "0.009500");
  assert_format(25000, "0.025000");
  assert_format(1000000, "1.000000");
  assert_format(10500000, "10.500000");
  assert_format(-1, "-0.000001");
  assert_format(-2250000, "-2.250000");
  assert_format(-1000000, "-1.000000");
  assert_format(INT64_MAX, "9223372036854.775807");
  assert_format(INT64_MIN, "-9223372036854.775808");
  assert_true(strlen("-9223372036854.775808") < PRICING_USD_BUFSIZE);
  /* A small buffer is cut, never overrun. */
  char small[5];
  pricing_format_usd(25000, small, sizeof small);
  assert_string_equal(small, "0.02");
}

static void assert_parse(const char *text, int64_t want) {
  int64_t got = 12345;
  if (pricing_parse_usd(text, &got) != 0) fail_msg("\"%s\" refused", text);
  if (got != want) fail_msg("\"%s\": %lld, want %lld", text, (long long)got, (long long)want);
}

static void assert_parse_refused(const char *text) {
  int64_t got = 12345;
  if (pricing_parse_usd(text, &got) != -1)
    fail_msg("\"%s\" accepted as %lld", text, (long long)got);
  assert_int_equal(got, 12345); /* untouched */
}

static void test_parse_usd(void **state) {
  (void)state;
  assert_parse("1", 1000000);
  assert_parse("1.5", 1500000);
  assert_parse("10.50", 10500000);
  assert_parse("0.000001", 1);
  assert_parse("0.1", 100000);
  assert_parse("0", 0);
  assert_parse("-0", 0);
  assert_parse("-0.000000", 0);
  assert_parse("007.25", 7250000);
  assert_parse("-2.25", -2250000);
  assert_parse("-0.000001", -1);
  assert_parse("9223372036854.775807", INT64_MAX);
  assert_parse("-9223372036854.775808", INT64_MIN);
  /* Every value formatted parses back to itself. */
  static const int64_t round_trip[] = {0, 1, -1, 9500, 25000, -2250000, 123456789012345,
                                       INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof round_trip / sizeof round_trip[0]; i++) {
    char text[PRICING_USD_BUFSIZE];
    pricing_format_usd(round_trip[i], text, sizeof text);
    assert_parse(text, round_trip[i]);
  }

  assert_parse_refused(NULL);
  assert_parse_refused("");
  assert_parse_refused("-");
  assert_parse_refused(".5");
  assert_parse_refused("1.");
  assert_parse_refused("-.5");
  assert_parse_refused("+1");
  assert_parse_refused("$1");
  assert_parse_refused(" 1");
  assert_parse_refused("1 ");
  assert_parse_refused("1,50");
  assert_parse_refused("1.5.0");
  assert_parse_refused("1e3");
  assert_parse_refused("--1");
  assert_parse_refused("0x10");
  assert_parse_refused("1.0000001"); /* seven decimals: below a micro-dollar */
  assert_parse_refused("0.0000000");
  assert_parse_refused("9223372036854.775808");
  assert_parse_refused("-9223372036854.775809");
  assert_parse_refused("9223372036855");
  assert_parse_refused("99999999999999999999999999");
  assert_parse_refused("-99999999999999999999999999.5");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_every_model_and_resolution),
      cmocka_unit_test(test_lookup_edges),
      cmocka_unit_test(test_slots),
      cmocka_unit_test(test_overrides),
      cmocka_unit_test(test_refusals_name_the_key),
      cmocka_unit_test(test_quote_arithmetic),
      cmocka_unit_test(test_format_usd),
      cmocka_unit_test(test_parse_usd),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
