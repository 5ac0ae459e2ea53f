/* pricing.h - what an image costs: the price catalog and money as text.
 *
 * Money is integer micro-dollars (int64_t, 1 USD = 1,000,000), never floating
 * point, so holds, captures and balances add up exactly.
 *
 * The prices live in imgate_config (config.h, key "prices" of the config
 * file). Gemini models are priced per resolution they offer ("512", "1K",
 * "2K", "4K"); GPT Image is priced per quality ("low", "medium", "high";
 * "auto" is charged as "medium"). Every model may add a surcharge per
 * reference image (default 0). A model without a price cannot be sold:
 * pricing_unit answers -1 and the caller refuses the request. */
#ifndef IMGATE_PRICING_H
#define IMGATE_PRICING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The highest price a config file may set for one image or one reference
 * image: 100 USD. Far above any real price, low enough that a typo with
 * extra zeros is caught. */
#define PRICING_MAX_UNIT_MICROS 100000000LL

/* Room for any int64 formatted by pricing_format_usd, sign and NUL included. */
#define PRICING_USD_BUFSIZE 24

/* Fills c->prices and c->n_prices with the built-in prices of every catalog
 * model (called by config_defaults). */
void pricing_defaults(imgate_config *c);

/* The price slot (CONFIG_PRICE_*) that name stands for on model: a
 * resolution the model offers for Gemini models, "low"/"medium"/"high" for
 * GPT Image. -1 when the model is not priced that way. Used by the config
 * loader to refuse names that would never be charged. */
int pricing_slot(const char *model, const char *name);

/* The configured entry for model, or NULL when the model has none. */
const config_price *pricing_find(const imgate_config *cfg, const char *model);

/* Price of one image, in micro-dollars. resolution NULL or "" means the
 * model's default resolution; "1k" is accepted for "1K". quality is ignored
 * for models priced per resolution; for GPT Image NULL, "" and "auto" mean
 * "medium". -1 when the model, resolution or quality is unknown or not
 * priced. */
int64_t pricing_unit(const imgate_config *cfg, const char *model, const char *resolution,
                     const char *quality);

/* Surcharge per reference image for model, in micro-dollars (0 when none is
 * configured); -1 for a model that has no price entry. */
int64_t pricing_reference(const imgate_config *cfg, const char *model);

/* The full price of a task: quantity x unit + n_reference_images x
 * surcharge. -1 when the model/resolution/quality is not priced, when
 * quantity or n_reference_images is negative, or when the total does not fit
 * in int64. */
int64_t pricing_quote(const imgate_config *cfg, const char *model, const char *resolution,
                      const char *quality, int quantity, int n_reference_images);

/* Writes micros as a decimal USD amount with exactly six decimals:
 * 25000 -> "0.025000", -2250000 -> "-2.250000". Truncates like snprintf when
 * size is too small; PRICING_USD_BUFSIZE always suffices. */
void pricing_format_usd(int64_t micros, char *out, size_t size);

/* Parses a decimal USD amount exactly: "1", "1.5", "0.000001", "-2.25".
 * Accepts an optional '-', at least one digit, then optionally '.' and one to
 * six digits. Refuses anything else (spaces, '+', '$', exponents, a seventh
 * decimal) and amounts that do not fit in int64 micro-dollars. Returns 0 and
 * sets *micros, or -1 and leaves *micros alone. */
int pricing_parse_usd(const char *text, int64_t *micros);

#endif
