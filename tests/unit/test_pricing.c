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

/* OpenAI's list prices of gpt-image-1 (upstreams.md), the built-in grid:
 * [quality][size], qualities low, medium, high; sizes 1024x1024 (1:1),
 * 1536x1024 (3:2), 1024x1536 (2:3). */
static const int64_t gpt_list[3][3] = {
    {11000, 16000, 16000}, {42000, 63000, 63000}, {167000, 250000, 250000}};
static const char *const gpt_ratios[3] = {"1:1", "3:2", "2:3"};
static const char *const gpt_qualities[3] = {"low", "medium", "high"};

static void test_defaults_every_model_and_resolution(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  static const struct {
    const char *model, *resolution;
    int64_t micros;
  } want[] = {
      {"nano-banana", "1K", 9500},      {"nano-banana-2", "512", 20000},
      {"nano-banana-2", "1K", 25000},   {"nano-banana-2", "2K", 30000},
      {"nano-banana-2", "4K", 40000},   {"nano-banana-pro", "1K", 67000},
      {"nano-banana-pro", "2K", 67000}, {"nano-banana-pro", "4K", 120000},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int64_t got = pricing_unit(&c, want[i].model, want[i].resolution, NULL, NULL);
    if (got != want[i].micros)
      fail_msg("%s %s: %lld, want %lld", want[i].model, want[i].resolution, (long long)got,
               (long long)want[i].micros);
  }
  /* GPT Image: the whole grid, cell by cell, as OpenAI lists it. */
  for (int q = 0; q < 3; q++)
    for (int s = 0; s < 3; s++) {
      int64_t got = pricing_unit(&c, "gpt-image-1", "1K", gpt_ratios[s], gpt_qualities[q]);
      if (got != gpt_list[q][s])
        fail_msg("gpt-image-1 %s %s: %lld, want %lld", gpt_qualities[q], gpt_ratios[s],
                 (long long)got, (long long)gpt_list[q][s]);
      assert_int_equal(c.prices[3].unit[pricing_cell(q, s)], gpt_list[q][s]);
    }
  assert_string_equal(c.prices[3].model, "gpt-image-1");
  /* Every resolution the catalog offers has a price: nothing sells unpriced. */
  size_t n;
  const catalog_model *models = catalog_models(&n);
  for (size_t m = 0; m < n; m++) {
    assert_int_equal(pricing_reference(&c, models[m].name), 0);
    for (const char *const *r = models[m].resolutions; *r; r++)
      assert_true(pricing_unit(&c, models[m].name, *r, NULL, NULL) > 0);
  }
}

/* "auto" holds the largest price the upstream's choice could land on. */
static void test_auto_holds_the_largest(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  /* Quality named, size auto: the row's largest (a landscape or portrait). */
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "low"), 16000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, NULL, "medium"), 63000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "", "high"), 250000);
  /* Size named, quality auto: the column's largest (high). */
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "1:1", "auto"), 167000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "2:3", NULL), 250000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "3:2", ""), 250000);
  /* Both auto: the largest cell of the grid. */
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "auto"), 250000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, NULL, NULL), 250000);
  /* The largest is found wherever it is in the grid, not assumed at a corner. */
  c.prices[3].unit[pricing_cell(0, 0)] = 300000;
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "auto"), 300000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "low"), 300000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "3:2", "auto"), 250000);
  /* A cell "auto" may land on that has no price: the request is not priced. */
  c.prices[3].unit[pricing_cell(1, 2)] = -1;
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "auto"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "2:3", "auto"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "medium"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "2:3", "high"), 250000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "low"), 300000);
}

static void test_lookup_edges(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  /* No resolution means the model's default; the catalog's spellings apply. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", NULL, NULL, NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "", NULL, NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "4k", NULL, NULL), 40000);
  /* Gemini is priced by resolution: ratio and quality do not change it. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "2K", "16:9", "high"), 30000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1k", "1:1", "high"), 167000);
  /* Unknown or not offered. */
  assert_int_equal(pricing_unit(&c, "dall-e-3", "1K", NULL, NULL), -1);
  assert_int_equal(pricing_unit(&c, NULL, "1K", NULL, NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana", "4K", NULL, NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "512", NULL, NULL), -1);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "8K", NULL, NULL), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "2K", NULL, "low"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", NULL, "ultra"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", NULL, "HIGH"), -1); /* one spelling */
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", "16:9", "low"), -1);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", "1K", "1024x1024", "low"), -1); /* a ratio */
  assert_int_equal(pricing_reference(&c, "dall-e-3"), -1);
  /* A price removed by code (not possible from a file) means not for sale. */
  c.prices[0].unit[CONFIG_PRICE_1K] = -1;
  assert_string_equal(c.prices[0].model, "nano-banana");
  assert_int_equal(pricing_unit(&c, "nano-banana", "1K", NULL, NULL), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana", "1K", NULL, NULL, 1, 0), -1);
}

static void test_slots_and_names(void **state) {
  (void)state;
  assert_int_equal(pricing_slot("nano-banana-2", "512"), CONFIG_PRICE_512);
  assert_int_equal(pricing_slot("nano-banana-2", "4K"), CONFIG_PRICE_4K);
  assert_int_equal(pricing_slot("nano-banana-2", "4k"), -1); /* files use one spelling */
  assert_int_equal(pricing_slot("nano-banana", "2K"), -1);
  assert_int_equal(pricing_slot("nano-banana-2", "low"), -1);
  assert_int_equal(pricing_slot("gpt-image-1", "low"), -1); /* a row of cells, not a slot */
  assert_int_equal(pricing_slot("gpt-image-1", "1K"), -1);
  assert_int_equal(pricing_slot("nope", "1K"), -1);
  assert_true(pricing_by_quality("gpt-image-1"));
  assert_false(pricing_by_quality("nano-banana-2"));
  assert_false(pricing_by_quality("nope"));
  assert_false(pricing_by_quality(NULL));
  /* The nine cells are distinct slots after the resolutions. */
  bool seen[CONFIG_PRICE_SLOTS] = {false};
  for (int q = 0; q < PRICING_QUALITIES; q++) {
    assert_int_equal(pricing_quality_index(pricing_quality_name(q)), q);
    for (int s = 0; s < PRICING_SIZES; s++) {
      int cell = pricing_cell(q, s);
      assert_true(cell >= CONFIG_PRICE_GRID && cell < CONFIG_PRICE_SLOTS);
      assert_false(seen[cell]);
      seen[cell] = true;
    }
  }
  for (int s = 0; s < PRICING_SIZES; s++)
    assert_int_equal(pricing_size_index(pricing_size_name(s)), s);
  assert_null(pricing_quality_name(3));
  assert_null(pricing_quality_name(-1));
  assert_null(pricing_size_name(3));
  assert_int_equal(pricing_quality_index("auto"), -1);
  assert_int_equal(pricing_quality_index("Low"), -1);
  assert_int_equal(pricing_quality_index(NULL), -1);
  assert_int_equal(pricing_size_index("auto"), -1);
  assert_int_equal(pricing_size_index("1024x1025"), -1);
}

static void test_overrides(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana-2\": {\"2K\": 31000, "
                             "\"reference_image\": 1000},"
                             " \"gpt-image-1\": {\"high\": {\"1536x1024\": 240000},"
                             " \"medium\": {\"1024x1024\": 40000, \"1024x1536\": 60000}}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "2K", NULL, NULL), 31000);
  /* Entries not named keep their defaults. */
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "512", NULL, NULL), 20000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "1K", NULL, NULL), 25000);
  assert_int_equal(pricing_unit(&c, "nano-banana-2", "4K", NULL, NULL), 40000);
  assert_int_equal(pricing_reference(&c, "nano-banana-2"), 1000);
  /* Grid cells one by one: those named change, the others keep OpenAI's. */
  const int64_t want[3][3] = {
      {11000, 16000, 16000}, {40000, 63000, 60000}, {167000, 240000, 250000}};
  for (int q = 0; q < 3; q++)
    for (int s = 0; s < 3; s++)
      assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, gpt_ratios[s], gpt_qualities[q]),
                       want[q][s]);
  assert_int_equal(pricing_reference(&c, "gpt-image-1"), 0);
  /* Models not named are untouched. */
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "4K", NULL, NULL), 120000);
  /* The limit itself is accepted, and an empty object changes nothing. */
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana\": {\"1K\": 100000000,"
                             " \"reference_image\": 100000000}, \"nano-banana-pro\": {},"
                             " \"gpt-image-1\": {\"low\": {}}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_unit(&c, "nano-banana", NULL, NULL, NULL), 100000000);
  assert_int_equal(pricing_reference(&c, "nano-banana"), 100000000);
  assert_int_equal(pricing_unit(&c, "nano-banana-pro", "1K", NULL, NULL), 67000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "3:2", "low"), 16000);
  /* A copy by value carries the prices (no pointers inside). */
  imgate_config copy = c;
  assert_int_equal(pricing_unit(&copy, "nano-banana-2", "2K", NULL, NULL), 31000);
  assert_int_equal(pricing_unit(&copy, "gpt-image-1", NULL, "3:2", "high"), 240000);
}

/* A file written when GPT Image was priced by quality alone ("high": one
 * number) still loads and means what it meant: that price at every size. */
static void test_quality_only_file_still_means_it(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"gpt-image-1\": {\"high\": 200000, \"low\": 0,"
                             " \"reference_image\": 500}}}",
                             err, sizeof err),
                   0);
  for (int s = 0; s < 3; s++) {
    assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, gpt_ratios[s], "high"), 200000);
    assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, gpt_ratios[s], "low"), 0); /* free */
    assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, gpt_ratios[s], "medium"),
                     gpt_list[1][s]); /* not named: OpenAI's */
  }
  assert_int_equal(pricing_reference(&c, "gpt-image-1"), 500);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "auto", "auto"), 200000);
  /* Both forms in one file, in either order: the later key wins per cell. */
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"gpt-image-1\": {\"low\": 5000}}}", err,
                             sizeof err),
                   0);
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"gpt-image-1\": {\"low\": {\"1536x1024\": 7000}}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "1:1", "low"), 5000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "3:2", "low"), 7000);
  assert_int_equal(pricing_unit(&c, "gpt-image-1", NULL, "2:3", "low"), 5000);
}

static void test_refusals_name_the_key(void **state) {
  (void)state;
  assert_refused("{\"prices\": {\"dall-e-3\": {\"1K\": 1}}}", "dall-e-3");
  assert_refused("{\"prices\": {\"nano-banana\": {\"2K\": 1}}}", "prices.nano-banana.2K");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"8K\": 1}}}", "prices.nano-banana-2.8K");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"1k\": 1}}}", "prices.nano-banana-2.1k");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"high\": 1}}}",
                 "prices.nano-banana-2.high");
  assert_refused("{\"prices\": {\"nano-banana-2\": {\"1K\": {\"1024x1024\": 1}}}}",
                 "prices.nano-banana-2.1K");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"ultra\": 1}}}", "prices.gpt-image-1.ultra");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"auto\": 1}}}", "prices.gpt-image-1.auto");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"1K\": 1}}}", "prices.gpt-image-1.1K");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"1024x1024\": 1}}}",
                 "prices.gpt-image-1.1024x1024");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": {\"2048x2048\": 1}}}}",
                 "prices.gpt-image-1.low.2048x2048");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": {\"auto\": 1}}}}",
                 "prices.gpt-image-1.low.auto");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": {\"1024x1024\": -1}}}}",
                 "prices.gpt-image-1.low.1024x1024");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": {\"1024x1024\": 100000001}}}}",
                 "prices.gpt-image-1.low.1024x1024");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": {\"1024x1024\": \"1\"}}}}",
                 "prices.gpt-image-1.low.1024x1024");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": -1}}}", "prices.gpt-image-1.low");
  assert_refused("{\"prices\": {\"gpt-image-1\": {\"low\": [1, 2, 3]}}}",
                 "prices.gpt-image-1.low must be an object of size: price");
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
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "2K", NULL, NULL, 1, 0), 30000);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "2K", NULL, NULL, 4, 3), 120000);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "1:1", "high", 2, 1), 334000);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "3:2", "high", 1, 0), 250000);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "auto", "auto", 4, 0), 1000000);
  assert_int_equal(pricing_quote(&c, "nano-banana", NULL, NULL, NULL, 0, 0), 0);
  assert_int_equal(load_text(&c, "{\"prices\": {\"nano-banana-2\": {\"reference_image\": 1000}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "4K", NULL, NULL, 4, 3),
                   4 * 40000 + 3 * 1000);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "4K", NULL, NULL, 0, 2), 2000);
  /* Unknown or negative. */
  assert_int_equal(pricing_quote(&c, "nope", "1K", NULL, NULL, 1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "8K", NULL, NULL, 1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, -1, 0), -1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 1, -1), -1);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "16:9", "low", 1, 0), -1);
  /* The largest file prices with the largest counts still fit. */
  assert_int_equal(load_text(&c,
                             "{\"prices\": {\"nano-banana-2\": {\"1K\": 100000000,"
                             " \"reference_image\": 100000000}}}",
                             err, sizeof err),
                   0);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, INT32_MAX, INT32_MAX),
                   2 * (int64_t)INT32_MAX * 100000000);
  /* Prices set by code beyond what a file allows: overflow is -1, not wrapped. */
  config_price *p = &c.prices[2];
  assert_string_equal(p->model, "nano-banana-2");
  p->unit[CONFIG_PRICE_1K] = INT64_MAX / 2;
  p->reference_image = 0;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 2, 0), INT64_MAX - 1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 3, 0), -1);
  p->reference_image = 2;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 2, 0), INT64_MAX - 1);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 2, 1), -1); /* sum */
  p->unit[CONFIG_PRICE_1K] = 0;
  p->reference_image = INT64_MAX;
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 5, 1), INT64_MAX);
  assert_int_equal(pricing_quote(&c, "nano-banana-2", "1K", NULL, NULL, 5, 2), -1);
  /* The same guard for the grid's largest cell. */
  c.prices[3].unit[pricing_cell(2, 1)] = INT64_MAX / 3;
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "auto", "auto", 3, 0),
                   INT64_MAX / 3 * 3);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "auto", "auto", 4, 0), -1);
  assert_int_equal(pricing_quote(&c, "gpt-image-1", NULL, "1:1", "low", 4, 0), 44000);
}

/* What a delivered image costs: its own size and reported quality, never
 * more than its hold. */
static void test_delivered_image_price(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  const char *g = "gpt-image-1";
  /* auto / auto (held 0.25): the size from the pixels, the quality reported. */
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1024, 1024, "low", 250000), 11000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1536, 1024, "medium", 250000), 63000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1024, 1536, "high", 250000), 250000);
  /* Pixels near a size count as it (the closest ratio); odd shapes too. */
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1030, 1020, "low", 250000), 11000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 8, 8, "low", 250000), 11000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 3000, 1000, "low", 250000), 16000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 100, 900, "medium", 250000), 63000);
  /* The pixels win over the size asked, but never above the hold. */
  assert_int_equal(pricing_image(&c, g, "3:2", "medium", 1024, 1024, "medium", 63000), 42000);
  assert_int_equal(pricing_image(&c, g, "1:1", "medium", 1536, 1024, "medium", 42000), 42000);
  /* The reported quality wins over the one asked, never above the hold. */
  assert_int_equal(pricing_image(&c, g, "1:1", "high", 1024, 1024, "low", 167000), 11000);
  assert_int_equal(pricing_image(&c, g, "1:1", "low", 1024, 1024, "high", 11000), 11000);
  /* No report: the quality asked; when that was auto, the largest at the
   * image's size (the upstream may have made any). */
  assert_int_equal(pricing_image(&c, g, "auto", "medium", 1536, 1024, "", 63000), 63000);
  assert_int_equal(pricing_image(&c, g, "auto", "medium", 1024, 1024, NULL, 63000), 42000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1024, 1024, "", 250000), 167000);
  assert_int_equal(pricing_image(&c, g, "auto", NULL, 1024, 1024, "ultra", 250000), 167000);
  /* Pixels not known (a HEIC header): the size asked, else the largest. */
  assert_int_equal(pricing_image(&c, g, "1:1", "auto", 0, 0, "low", 167000), 11000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 0, 0, "low", 250000), 16000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", -5, 10, NULL, 250000), 250000);
  /* Priced by resolution, no price list, or a cell without a price: the hold. */
  assert_int_equal(pricing_image(&c, "nano-banana-2", "16:9", NULL, 2752, 1536, "low", 30000),
                   30000);
  assert_int_equal(pricing_image(NULL, g, "auto", "auto", 1024, 1024, "low", 250000), 250000);
  c.prices[3].unit[pricing_cell(0, 0)] = -1;
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1024, 1024, "low", 250000), 250000);
  assert_int_equal(pricing_image(&c, g, "auto", "auto", 1024, 1024, "low", 0), 0);
}

/* What a task is charged: the images' prices plus the surcharge, at most
 * the hold, without overflow. */
static void test_charge_arithmetic(void **state) {
  (void)state;
  const int64_t three[] = {11000, 63000, 250000};
  assert_int_equal(pricing_charge(three, 3, 0, 1000000), 324000);
  assert_int_equal(pricing_charge(three, 3, 2000, 1000000), 326000);
  assert_int_equal(pricing_charge(three, 1, 2000, 1000000), 13000);
  assert_int_equal(pricing_charge(three, 0, 2000, 1000000), 0); /* nothing delivered */
  /* Capped at the hold: more images than asked, or a surcharge above it. */
  assert_int_equal(pricing_charge(three, 3, 0, 300000), 300000);
  assert_int_equal(pricing_charge(three, 3, 0, 324000), 324000);
  assert_int_equal(pricing_charge(three, 3, 0, 323999), 323999);
  assert_int_equal(pricing_charge(three, 2, 500000, 400000), 400000);
  assert_int_equal(pricing_charge(three, 3, 0, 0), 0);
  /* Sums that would overflow int64 saturate at the hold instead of wrapping. */
  const int64_t huge[] = {INT64_MAX, INT64_MAX, 1};
  assert_int_equal(pricing_charge(huge, 3, INT64_MAX, INT64_MAX), INT64_MAX);
  assert_int_equal(pricing_charge(huge, 3, 0, INT64_MAX - 1), INT64_MAX - 1);
  const int64_t big[] = {INT64_MAX / 2, INT64_MAX / 2, INT64_MAX / 2};
  assert_int_equal(pricing_charge(big, 3, 0, INT64_MAX), INT64_MAX);
  assert_int_equal(pricing_charge(big, 2, 1, INT64_MAX), INT64_MAX);
  assert_int_equal(pricing_charge(big, 2, 0, INT64_MAX), INT64_MAX - 1);
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
      cmocka_unit_test(test_auto_holds_the_largest),
      cmocka_unit_test(test_lookup_edges),
      cmocka_unit_test(test_slots_and_names),
      cmocka_unit_test(test_overrides),
      cmocka_unit_test(test_quality_only_file_still_means_it),
      cmocka_unit_test(test_refusals_name_the_key),
      cmocka_unit_test(test_quote_arithmetic),
      cmocka_unit_test(test_delivered_image_price),
      cmocka_unit_test(test_charge_arithmetic),
      cmocka_unit_test(test_format_usd),
      cmocka_unit_test(test_parse_usd),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
