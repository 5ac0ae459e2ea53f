/* pricing.c - the built-in price table, price look-up and USD text. */
#include "core/pricing.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/catalog.h"

/* Names of the price slots, in CONFIG_PRICE_* order. */
static const char *const slot_names[CONFIG_PRICE_SLOTS] = {
    "512", "1K", "2K", "4K", "low", "medium", "high",
};

/* Built-in prices, micro-dollars per image. Where they come from:
 *  - nano-banana 1K: seed 000 sells it "from $0.0095".
 *  - nano-banana-2: seeds 001-003 sell 1K/2K/4K at $0.025 / $0.030 / $0.040;
 *    512 is not in the seeds and is set below 1K at $0.020.
 *  - nano-banana-pro: about half of Google's list price ($0.134 at 1K/2K,
 *    $0.24 at 4K), where the resellers in the seeds sit.
 *  - gpt-image-1: OpenAI's own 1024x1024 prices per quality (low $0.011,
 *    medium $0.042, high $0.167). The 3:2 and 2:3 sizes cost OpenAI about
 *    1.5x as much; the catalog prices by resolution, not by ratio, so those
 *    sell at the square price unless the operator raises it.
 * Anything not listed here is not priced, so it cannot be sold by accident. */
typedef struct default_price {
  const char *model;
  int slot;
  int64_t micros;
} default_price;

static const default_price default_prices[] = {
    {"nano-banana", CONFIG_PRICE_1K, 9500},
    {"nano-banana-2", CONFIG_PRICE_512, 20000},
    {"nano-banana-2", CONFIG_PRICE_1K, 25000},
    {"nano-banana-2", CONFIG_PRICE_2K, 30000},
    {"nano-banana-2", CONFIG_PRICE_4K, 40000},
    {"nano-banana-pro", CONFIG_PRICE_1K, 67000},
    {"nano-banana-pro", CONFIG_PRICE_2K, 67000},
    {"nano-banana-pro", CONFIG_PRICE_4K, 120000},
    {"gpt-image-1", CONFIG_PRICE_LOW, 11000},
    {"gpt-image-1", CONFIG_PRICE_MEDIUM, 42000},
    {"gpt-image-1", CONFIG_PRICE_HIGH, 167000},
};

/* GPT Image charges by quality, and offers a single resolution here; the
 * Gemini models charge by resolution and have no quality setting. */
static bool priced_by_quality(const catalog_model *m) {
  return strcmp(m->upstream_kind, "openai") == 0;
}

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

static int slot_index(const char *name, int first, int last) {
  for (int s = first; s <= last; s++)
    if (strcmp(slot_names[s], name) == 0) return s;
  return -1;
}

int pricing_slot(const char *model, const char *name) {
  const catalog_model *m = catalog_find(model);
  if (!m || !name) return -1;
  if (priced_by_quality(m)) return slot_index(name, CONFIG_PRICE_LOW, CONFIG_PRICE_HIGH);
  /* Exact spelling only: "1k" next to "1K" in a file would otherwise
   * silently overwrite one another. */
  for (const char *const *r = m->resolutions; *r; r++)
    if (strcmp(*r, name) == 0) return slot_index(name, CONFIG_PRICE_512, CONFIG_PRICE_4K);
  return -1;
}

const config_price *pricing_find(const imgate_config *cfg, const char *model) {
  if (!cfg || !model) return NULL;
  for (int i = 0; i < cfg->n_prices && i < CONFIG_MAX_PRICED_MODELS; i++)
    if (strcmp(cfg->prices[i].model, model) == 0) return &cfg->prices[i];
  return NULL;
}

/* The slot a request's quality is charged at, or -1. */
static int quality_slot(const char *quality) {
  if (!quality || !*quality || strcasecmp(quality, "auto") == 0) return CONFIG_PRICE_MEDIUM;
  for (int s = CONFIG_PRICE_LOW; s <= CONFIG_PRICE_HIGH; s++)
    if (strcasecmp(slot_names[s], quality) == 0) return s;
  return -1;
}

int64_t pricing_unit(const imgate_config *cfg, const char *model, const char *resolution,
                     const char *quality) {
  const catalog_model *m = catalog_find(model);
  const config_price *p = pricing_find(cfg, model);
  if (!m || !p) return -1;
  if (!resolution || !*resolution) resolution = m->default_resolution;
  const char *res = catalog_resolution(m, resolution);
  if (!res) return -1;
  int slot = priced_by_quality(m) ? quality_slot(quality)
                                  : slot_index(res, CONFIG_PRICE_512, CONFIG_PRICE_4K);
  if (slot < 0 || p->unit[slot] < 0) return -1;
  return p->unit[slot];
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
                      const char *quality, int quantity, int n_reference_images) {
  int64_t unit = pricing_unit(cfg, model, resolution, quality);
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
