/* pricing.c - the built-in price table, price look-up and USD text. */
#include "core/pricing.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/catalog.h"

/* Names of the resolution slots, in CONFIG_PRICE_* order. */
static const char *const resolution_names[CONFIG_PRICE_GRID] = {"512", "1K", "2K", "4K"};

/* GPT Image's grid: the qualities, then the sizes in the order of the
 * catalog's ratios 1:1, 3:2, 2:3 (square, landscape, portrait). */
static const char *const quality_names[PRICING_QUALITIES] = {"low", "medium", "high"};
static const char *const size_names[PRICING_SIZES] = {"1024x1024", "1536x1024", "1024x1536"};

_Static_assert(CONFIG_PRICE_SLOTS == CONFIG_PRICE_GRID + PRICING_QUALITIES * PRICING_SIZES,
               "config.h's grid is pricing.h's grid");

/* Built-in prices, micro-dollars per image. Where they come from:
 *  - nano-banana 1K: seed 000 sells it "from $0.0095".
 *  - nano-banana-2: seeds 001-003 sell 1K/2K/4K at $0.025 / $0.030 / $0.040;
 *    512 is not in the seeds and is set below 1K at $0.020.
 *  - nano-banana-pro: about half of Google's list price ($0.134 at 1K/2K,
 *    $0.24 at 4K), where the resellers in the seeds sit.
 *  - gpt-image-1: OpenAI's own list prices per image, by quality and size
 *    (shared/reference/upstreams.md): low $0.011 square, $0.016 landscape or
 *    portrait; medium $0.042 / $0.063; high $0.167 / $0.25.
 * Anything not listed here is not priced, so it cannot be sold by accident. */
typedef struct default_price {
  const char *model;
  int slot;
  int64_t micros;
} default_price;

#define GPT_CELL(q, s) (CONFIG_PRICE_GRID + (q) * PRICING_SIZES + (s))

static const default_price default_prices[] = {
    {"nano-banana", CONFIG_PRICE_1K, 9500},
    {"nano-banana-2", CONFIG_PRICE_512, 20000},
    {"nano-banana-2", CONFIG_PRICE_1K, 25000},
    {"nano-banana-2", CONFIG_PRICE_2K, 30000},
    {"nano-banana-2", CONFIG_PRICE_4K, 40000},
    {"nano-banana-pro", CONFIG_PRICE_1K, 67000},
    {"nano-banana-pro", CONFIG_PRICE_2K, 67000},
    {"nano-banana-pro", CONFIG_PRICE_4K, 120000},
    {"gpt-image-1", GPT_CELL(0, 0), 11000},
    {"gpt-image-1", GPT_CELL(0, 1), 16000},
    {"gpt-image-1", GPT_CELL(0, 2), 16000},
    {"gpt-image-1", GPT_CELL(1, 0), 42000},
    {"gpt-image-1", GPT_CELL(1, 1), 63000},
    {"gpt-image-1", GPT_CELL(1, 2), 63000},
    {"gpt-image-1", GPT_CELL(2, 0), 167000},
    {"gpt-image-1", GPT_CELL(2, 1), 250000},
    {"gpt-image-1", GPT_CELL(2, 2), 250000},
};

const char *pricing_quality_name(int q) {
  return q >= 0 && q < PRICING_QUALITIES ? quality_names[q] : NULL;
}

static int name_index(const char *const *names, int n, const char *name) {
  if (!name) return -1;
  for (int i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0) return i;
  return -1;
}

int pricing_quality_index(const char *name) {
  return name_index(quality_names, PRICING_QUALITIES, name);
}

const char *pricing_size_name(int s) { return s >= 0 && s < PRICING_SIZES ? size_names[s] : NULL; }

int pricing_size_index(const char *name) { return name_index(size_names, PRICING_SIZES, name); }

int pricing_cell(int q, int s) {
  assert(q >= 0 && q < PRICING_QUALITIES && s >= 0 && s < PRICING_SIZES);
  return GPT_CELL(q, s);
}

/* GPT Image charges by quality and size; the Gemini models charge by
 * resolution and have no quality setting. */
static bool model_by_quality(const catalog_model *m) {
  return m && m->sizes == CATALOG_SIZES_GPT_IMAGE;
}

bool pricing_by_quality(const char *model) { return model_by_quality(catalog_find(model)); }

void pricing_defaults(imgate_config *c) {
  size_t n;
  const catalog_model *models = catalog_models(&n);
  c->n_prices = 0;
  for (size_t i = 0; i < n && i < CONFIG_MAX_PRICED_MODELS; i++) {
    config_price *p = &c->prices[c->n_prices++];
    memset(p, 0, sizeof *p);
    snprintf(p->model, sizeof p->model, "%s", models[i].name);
    for (int s = 0; s < CONFIG_PRICE_SLOTS; s++) p->unit[s] = -1;
    for (size_t d = 0; d < sizeof default_prices / sizeof default_prices[0]; d++)
      if (strcmp(default_prices[d].model, p->model) == 0)
        p->unit[default_prices[d].slot] = default_prices[d].micros;
  }
}

int pricing_slot(const char *model, const char *name) {
  const catalog_model *m = catalog_find(model);
  if (!m || !name || model_by_quality(m)) return -1;
  /* Exact spelling only: "1k" next to "1K" in a file would otherwise
   * silently overwrite one another. */
  for (const char *const *r = m->resolutions; *r; r++)
    if (strcmp(*r, name) == 0) return name_index(resolution_names, CONFIG_PRICE_GRID, name);
  return -1;
}

const config_price *pricing_find(const imgate_config *cfg, const char *model) {
  if (!cfg || !model) return NULL;
  for (int i = 0; i < cfg->n_prices && i < CONFIG_MAX_PRICED_MODELS; i++)
    if (strcmp(cfg->prices[i].model, model) == 0) return &cfg->prices[i];
  return NULL;
}

/* A range of grid rows or columns: [first, last]. */
typedef struct grid_span {
  int first, last;
} grid_span;

static const grid_span every_quality = {0, PRICING_QUALITIES - 1};
static const grid_span every_size = {0, PRICING_SIZES - 1};

static bool is_auto(const char *s) { return !s || !*s || strcmp(s, "auto") == 0; }

/* The grid column of a catalog ratio of m ("3:2" -> 1536x1024); -1 when m
 * does not draw it. The catalog's pixel table is the one truth of which
 * ratio is which size. */
static int size_of_ratio(const catalog_model *m, const char *ratio) {
  int w, h;
  if (!catalog_pixel_size(m, ratio, m->default_resolution, &w, &h)) return -1;
  char name[32];
  snprintf(name, sizeof name, "%dx%d", w, h);
  return pricing_size_index(name);
}

/* The largest price in the cells of the spans; -1 when one is not priced. */
static int64_t grid_max(const config_price *p, grid_span q, grid_span s) {
  int64_t max = -1;
  for (int i = q.first; i <= q.last; i++)
    for (int k = s.first; k <= s.last; k++) {
      int64_t v = p->unit[GPT_CELL(i, k)];
      if (v < 0) return -1;
      if (v > max) max = v;
    }
  return max;
}

int64_t pricing_unit(const imgate_config *cfg, const char *model, const char *resolution,
                     const char *aspect_ratio, const char *quality) {
  const catalog_model *m = catalog_find(model);
  const config_price *p = pricing_find(cfg, model);
  if (!m || !p) return -1;
  if (!resolution || !*resolution) resolution = m->default_resolution;
  const char *res = catalog_resolution(m, resolution);
  if (!res) return -1;
  if (!model_by_quality(m)) {
    int slot = name_index(resolution_names, CONFIG_PRICE_GRID, res);
    return slot < 0 || p->unit[slot] < 0 ? -1 : p->unit[slot];
  }
  grid_span qs = every_quality, ss = every_size;
  if (!is_auto(quality)) {
    int q = pricing_quality_index(quality);
    if (q < 0) return -1;
    qs = (grid_span){q, q};
  }
  if (!is_auto(aspect_ratio)) {
    int s = size_of_ratio(m, aspect_ratio);
    if (s < 0) return -1;
    ss = (grid_span){s, s};
  }
  return grid_max(p, qs, ss);
}

int64_t pricing_image(const imgate_config *cfg, const char *model, const char *aspect_ratio,
                      const char *quality, int width, int height, const char *quality_answered,
                      int64_t held_unit) {
  assert(held_unit >= 0);
  const catalog_model *m = catalog_find(model);
  const config_price *p = pricing_find(cfg, model);
  if (!model_by_quality(m) || !p) return held_unit;
  /* The quality: the upstream's report, else what was asked, else any. */
  grid_span qs = every_quality;
  int q = pricing_quality_index(quality_answered);
  if (q < 0) q = pricing_quality_index(quality);
  if (q >= 0) qs = (grid_span){q, q};
  /* The size: the image's own pixels, else what was asked, else any. */
  grid_span ss = every_size;
  int s = -1;
  if (width > 0 && height > 0)
    s = size_of_ratio(m, catalog_resolve_ratio(m, "auto", width, height));
  else if (!is_auto(aspect_ratio))
    s = size_of_ratio(m, aspect_ratio);
  if (s >= 0) ss = (grid_span){s, s};
  int64_t price = grid_max(p, qs, ss);
  return price < 0 || price > held_unit ? held_unit : price;
}

int64_t pricing_charge(const int64_t *image_prices, size_t n, int64_t refs_micros,
                       int64_t held_micros) {
  assert(held_micros >= 0 && refs_micros >= 0);
  if (n == 0) return 0;
  int64_t charge = refs_micros < held_micros ? refs_micros : held_micros;
  for (size_t i = 0; i < n; i++) {
    assert(image_prices[i] >= 0);
    /* Compared before adding: never more than the client agreed to, and no
     * sum that could wrap. */
    if (image_prices[i] >= held_micros - charge) return held_micros;
    charge += image_prices[i];
  }
  return charge;
}

int64_t pricing_reference(const imgate_config *cfg, const char *model) {
  const config_price *p = pricing_find(cfg, model);
  return p ? p->reference_image : -1;
}

/* a * b for non-negative operands; false when it would overflow. */
static bool mul_nonneg(int64_t a, int64_t b, int64_t *out) {
  if (a != 0 && b > INT64_MAX / a) return false;
  *out = a * b;
  return true;
}

int64_t pricing_quote(const imgate_config *cfg, const char *model, const char *resolution,
                      const char *aspect_ratio, const char *quality, int quantity,
                      int n_reference_images) {
  int64_t unit = pricing_unit(cfg, model, resolution, aspect_ratio, quality);
  int64_t ref = pricing_reference(cfg, model);
  if (unit < 0 || ref < 0 || quantity < 0 || n_reference_images < 0) return -1;
  int64_t images, refs;
  if (!mul_nonneg(unit, quantity, &images) || !mul_nonneg(ref, n_reference_images, &refs))
    return -1;
  if (images > INT64_MAX - refs) return -1;
  return images + refs;
}

void pricing_format_usd(int64_t micros, char *out, size_t size) {
  /* Magnitude in unsigned arithmetic so INT64_MIN has one too. */
  uint64_t mag = micros < 0 ? (uint64_t)(-(micros + 1)) + 1u : (uint64_t)micros;
  snprintf(out, size, "%s%" PRIu64 ".%06" PRIu64, micros < 0 ? "-" : "", mag / 1000000u,
           mag % 1000000u);
}

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

int pricing_parse_usd(const char *text, int64_t *micros) {
  if (!text) return -1;
  const char *p = text;
  bool negative = *p == '-';
  if (negative) p++;
  if (!is_digit(*p)) return -1;
  /* The largest magnitude the sign allows: INT64_MIN has one more. */
  uint64_t limit = negative ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
  uint64_t whole = 0;
  for (; is_digit(*p); p++) {
    whole = whole * 10u + (uint64_t)(*p - '0');
    if (whole > limit / 1000000u) return -1; /* checked per digit: no wrap-around */
  }
  uint64_t frac = 0;
  int decimals = 0;
  if (*p == '.') {
    for (p++; is_digit(*p); p++) {
      if (++decimals > 6) return -1; /* below a micro-dollar: refuse, never round */
      frac = frac * 10u + (uint64_t)(*p - '0');
    }
    if (decimals == 0) return -1;
  }
  if (*p) return -1;
  for (; decimals < 6; decimals++) frac *= 10u;
  uint64_t mag = whole * 1000000u;
  if (frac > limit - mag) return -1;
  mag += frac;
  *micros = negative ? (mag == 0 ? 0 : -(int64_t)(mag - 1u) - 1) : (int64_t)mag;
  return 0;
}
