/* test_catalog.c - the model table, resolution spelling, "auto" ratios and pixel sizes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/catalog.h"

/* Every name a seed or an SDK uses leads to its catalog model, with the
 * resolution the name implies; catalog names imply none; unknowns are NULL. */
static void test_aliases(void **state) {
  (void)state;
  static const struct {
    const char *name, *model, *resolution;
  } cases[] = {
      {"nano-banana-2", "nano-banana-2", NULL},
      {"gemini-3.1-flash-image-preview", "nano-banana-2", NULL},
      {"gemini-3-pro-image-preview", "nano-banana-pro", NULL},
      {"gemini-2.5-flash-image", "nano-banana", NULL},
      {"nano_banana_2", "nano-banana-2", NULL},
      {"nanobanano-2", "nano-banana-2", "1K"},
      {"nanobanano-2-2k", "nano-banana-2", "2K"},
      {"nanobanano-2-4k", "nano-banana-2", "4K"},
      {"gpt-image-1", "gpt-image-1", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *res = "unset";
    const catalog_model *m = catalog_lookup(cases[i].name, &res);
    assert_non_null(m);
    assert_string_equal(m->name, cases[i].model);
    if (cases[i].resolution) {
      assert_string_equal(res, cases[i].resolution);
      assert_non_null(catalog_resolution(m, res)); /* one the model offers */
    } else {
      assert_null(res);
    }
  }
  const char *res = "unset";
  assert_null(catalog_lookup("nanobanano-2-8k", &res));
  assert_null(res);
  assert_null(catalog_lookup("NANO-BANANA-2", NULL));
  assert_null(catalog_lookup(NULL, NULL));
}

static void test_models_listed(void **state) {
  (void)state;
  size_t n = 0;
  const catalog_model *ms = catalog_models(&n);
  assert_int_equal(n, 4);
  const char *names[] = {"nano-banana", "nano-banana-pro", "nano-banana-2", "gpt-image-1"};
  for (size_t i = 0; i < n; i++) {
    assert_string_equal(ms[i].name, names[i]);
    assert_ptr_equal(catalog_find(names[i]), &ms[i]);
    assert_string_equal(ms[i].aspect_ratios[0], "auto");
    assert_int_equal(ms[i].max_reference_images, 10);
    assert_string_equal(ms[i].default_resolution, "1K");
  }
  const catalog_model *m = catalog_find("nano-banana-2");
  assert_string_equal(m->display_name, "Nano Banana 2");
  assert_string_equal(m->upstream_kind, "gemini");
  assert_string_equal(m->upstream_model, "gemini-3.1-flash-image-preview");
  assert_int_equal(m->sizes, CATALOG_SIZES_GEMINI_3);
  m = catalog_find("nano-banana");
  assert_string_equal(m->display_name, "Nano Banana");
  assert_string_equal(m->upstream_model, "gemini-2.5-flash-image");
  assert_int_equal(m->sizes, CATALOG_SIZES_GEMINI_25);
  m = catalog_find("nano-banana-pro");
  assert_string_equal(m->display_name, "Nano Banana Pro");
  assert_string_equal(m->upstream_model, "gemini-3-pro-image-preview");
  m = catalog_find("gpt-image-1");
  assert_string_equal(m->display_name, "GPT Image 1");
  assert_string_equal(m->upstream_kind, "openai");
  assert_int_equal(m->sizes, CATALOG_SIZES_GPT_IMAGE);
}

static void test_unknown_rejected(void **state) {
  (void)state;
  assert_null(catalog_find("nano-banana-3"));
  assert_null(catalog_find("Nano-Banana"));
  assert_null(catalog_find(""));
  assert_null(catalog_find(NULL));
  const catalog_model *nb = catalog_find("nano-banana");
  const catalog_model *nb2 = catalog_find("nano-banana-2");
  const catalog_model *gpt = catalog_find("gpt-image-1");
  int w = -1, h = -1;
  assert_false(catalog_has_aspect_ratio(nb, "1:4"));
  assert_true(catalog_has_aspect_ratio(nb2, "1:4"));
  assert_false(catalog_has_aspect_ratio(gpt, "16:9"));
  assert_false(catalog_has_aspect_ratio(nb, "16:10"));
  assert_false(catalog_has_aspect_ratio(nb, NULL));
  assert_false(catalog_pixel_size(nb, "1:4", "1K", &w, &h));
  assert_false(catalog_pixel_size(nb, "16:9", "2K", &w, &h));
  assert_false(catalog_pixel_size(nb2, "16:10", "1K", &w, &h));
  assert_false(catalog_pixel_size(nb2, "16:9", "8K", &w, &h));
  assert_false(catalog_pixel_size(nb2, "auto", "1K", &w, &h));
  assert_false(catalog_pixel_size(gpt, "16:9", "1K", &w, &h));
  assert_false(catalog_pixel_size(NULL, "1:1", "1K", &w, &h));
  assert_int_equal(w, -1);
  assert_int_equal(h, -1);
}

static void test_resolution_normalised(void **state) {
  (void)state;
  const catalog_model *nb = catalog_find("nano-banana");
  const catalog_model *pro = catalog_find("nano-banana-pro");
  const catalog_model *nb2 = catalog_find("nano-banana-2");
  const catalog_model *gpt = catalog_find("gpt-image-1");
  assert_string_equal(catalog_resolution(pro, "1k"), "1K");
  assert_string_equal(catalog_resolution(pro, "2k"), "2K");
  assert_string_equal(catalog_resolution(pro, "4k"), "4K");
  assert_string_equal(catalog_resolution(pro, "4K"), "4K");
  assert_string_equal(catalog_resolution(nb2, "512"), "512");
  assert_string_equal(catalog_resolution(nb, "1k"), "1K");
  /* The catalog's own static string, not the caller's. */
  char mine[] = "2k";
  const char *r = catalog_resolution(nb2, mine);
  assert_ptr_not_equal(r, mine);
  mine[0] = '4';
  assert_string_equal(r, "2K");
  assert_null(catalog_resolution(pro, "512"));
  assert_null(catalog_resolution(nb, "2K"));
  assert_null(catalog_resolution(gpt, "4K"));
  assert_null(catalog_resolution(nb2, "8K"));
  assert_null(catalog_resolution(nb2, "1KK"));
  assert_null(catalog_resolution(nb2, ""));
  assert_null(catalog_resolution(nb2, NULL));
}

/* w/h of "a:b". */
static double ratio_value(const char *ratio) {
  int a = 0, b = 0;
  assert_int_equal(sscanf(ratio, "%d:%d", &a, &b), 2);
  return (double)a / b;
}

static void test_every_cell_has_a_size(void **state) {
  (void)state;
  size_t n;
  const catalog_model *ms = catalog_models(&n);
  int cells = 0;
  for (size_t i = 0; i < n; i++) {
    for (const char *const *r = ms[i].aspect_ratios + 1; *r; r++) {
      for (const char *const *res = ms[i].resolutions; *res; res++) {
        int w = 0, h = 0;
        if (!catalog_pixel_size(&ms[i], *r, *res, &w, &h))
          fail_msg("%s %s %s has no size", ms[i].name, *r, *res);
        assert_true(w > 0 && h > 0 && w <= 16384 && h <= 16384);
        double off = fabs((double)w / h / ratio_value(*r) - 1.0);
        if (off > 0.035)
          fail_msg("%s %s %s: %dx%d is off by %.3f", ms[i].name, *r, *res, w, h, off);
        cells++;
      }
    }
  }
  /* 10 + 10*3 + 14*4 + 3 */
  assert_int_equal(cells, 99);
}

typedef struct cell {
  const char *model, *ratio, *res;
  int w, h;
} cell;

/* Copied cell by cell from the reference table, not computed. */
static const cell reference_cells[] = {
    {"nano-banana", "1:1", "1K", 1024, 1024},
    {"nano-banana", "16:9", "1K", 1344, 768},
    {"nano-banana", "4:3", "1K", 1184, 864},
    {"nano-banana", "21:9", "1K", 1536, 672},
    {"nano-banana", "4:5", "1K", 896, 1152},
    {"nano-banana-pro", "16:9", "1K", 1376, 768},
    {"nano-banana-pro", "9:16", "2K", 1536, 2752},
    {"nano-banana-pro", "4:3", "4K", 4800, 3584},
    {"nano-banana-pro", "3:2", "2K", 2528, 1696},
    {"nano-banana-pro", "21:9", "4K", 6336, 2688},
    {"nano-banana-pro", "2:3", "4K", 3392, 5056},
    {"nano-banana-pro", "5:4", "1K", 1152, 928},
    {"nano-banana-2", "16:9", "2K", 2752, 1536},
    {"nano-banana-2", "16:9", "4K", 5504, 3072},
    {"nano-banana-2", "3:4", "2K", 1792, 2400},
    {"nano-banana-2", "1:1", "512", 512, 512},
    {"nano-banana-2", "16:9", "512", 688, 384},
    {"nano-banana-2", "1:4", "1K", 512, 2048},
    {"nano-banana-2", "4:1", "1K", 2048, 512},
    {"nano-banana-2", "1:8", "1K", 384, 3072},
    {"nano-banana-2", "8:1", "1K", 3072, 384},
    {"nano-banana-2", "8:1", "4K", 12288, 1536},
    {"nano-banana-2", "4:5", "2K", 1856, 2304},
    {"gpt-image-1", "1:1", "1K", 1024, 1024},
    {"gpt-image-1", "3:2", "1K", 1536, 1024},
    {"gpt-image-1", "2:3", "1K", 1024, 1536},
};

static void test_reference_cells(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof reference_cells / sizeof reference_cells[0]; i++) {
    const cell *c = &reference_cells[i];
    int w = 0, h = 0;
    assert_true(catalog_pixel_size(catalog_find(c->model), c->ratio, c->res, &w, &h));
    if (w != c->w || h != c->h)
      fail_msg("%s %s %s: got %dx%d, want %dx%d", c->model, c->ratio, c->res, w, h, c->w, c->h);
  }
}

/* The 3-family tiers are exact multiples of 1K, for every ratio. */
static void test_tiers_scale(void **state) {
  (void)state;
  const catalog_model *nb2 = catalog_find("nano-banana-2");
  const catalog_model *pro = catalog_find("nano-banana-pro");
  for (const char *const *r = nb2->aspect_ratios + 1; *r; r++) {
    int w1, h1, w, h;
    assert_true(catalog_pixel_size(nb2, *r, "1K", &w1, &h1));
    assert_true(catalog_pixel_size(nb2, *r, "512", &w, &h));
    assert_int_equal(w * 2, w1);
    assert_int_equal(h * 2, h1);
    assert_true(catalog_pixel_size(nb2, *r, "2K", &w, &h));
    assert_int_equal(w, w1 * 2);
    assert_int_equal(h, h1 * 2);
    assert_true(catalog_pixel_size(nb2, *r, "4k", &w, &h));
    assert_int_equal(w, w1 * 4);
    assert_int_equal(h, h1 * 4);
    if (catalog_has_aspect_ratio(pro, *r)) {
      int pw, ph;
      assert_true(catalog_pixel_size(pro, *r, "1K", &pw, &ph));
      assert_int_equal(pw, w1);
      assert_int_equal(ph, h1);
    }
  }
}

static void test_resolve_ratio(void **state) {
  (void)state;
  const catalog_model *nb = catalog_find("nano-banana");
  const catalog_model *nb2 = catalog_find("nano-banana-2");
  const catalog_model *gpt = catalog_find("gpt-image-1");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 1920, 1080), "16:9");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 1000, 1000), "1:1");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 1080, 1920), "9:16");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 0, 0), "1:1");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 1920, 0), "1:1");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", -5, 10), "1:1");
  assert_string_equal(catalog_resolve_ratio(nb, "auto", 4000, 1000), "21:9");
  assert_string_equal(catalog_resolve_ratio(nb2, "auto", 4000, 1000), "4:1");
  assert_string_equal(catalog_resolve_ratio(nb2, "auto", 100, 900), "1:8");
  assert_string_equal(catalog_resolve_ratio(gpt, "auto", 1920, 1080), "3:2");
  assert_string_equal(catalog_resolve_ratio(gpt, "auto", 1100, 1000), "1:1");
  assert_string_equal(catalog_resolve_ratio(gpt, "auto", 0, 0), "1:1");
  char mine[] = "4:3";
  const char *r = catalog_resolve_ratio(nb, mine, 1920, 1080);
  assert_non_null(r);
  assert_ptr_not_equal(r, mine);
  assert_string_equal(r, "4:3");
  assert_null(catalog_resolve_ratio(nb, "1:4", 0, 0));
  assert_null(catalog_resolve_ratio(gpt, "16:9", 0, 0));
  assert_null(catalog_resolve_ratio(nb, NULL, 0, 0));
  assert_null(catalog_resolve_ratio(NULL, "auto", 0, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_aliases),
      cmocka_unit_test(test_models_listed),     cmocka_unit_test(test_unknown_rejected),
      cmocka_unit_test(test_resolution_normalised), cmocka_unit_test(test_every_cell_has_a_size),
      cmocka_unit_test(test_reference_cells),   cmocka_unit_test(test_tiers_scale),
      cmocka_unit_test(test_resolve_ratio),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
