/* pricing.h - what an image costs: the price catalog and money as text.
 *
 * Money is integer micro-dollars (int64_t, 1 USD = 1,000,000), never floating
 * point, so holds, captures and balances add up exactly.
 *
 * The prices live in imgate_config (config.h, key "prices" of the config
 * file). Gemini models are priced per resolution they offer ("512", "1K",
 * "2K", "4K"). GPT Image is priced per quality and size: a grid of "low",
 * "medium", "high" by "1024x1024", "1536x1024", "1024x1536" (the sizes of its
 * 1:1, 3:2 and 2:3 aspect ratios). Every model may add a surcharge per
 * reference image (default 0). A model without a price cannot be sold:
 * pricing_unit answers -1 and the caller refuses the request.
 *
 * Hold and capture: a task holds, per image, the largest price its request
 * could land on (pricing_unit: exactly the cell when quality and size are
 * named; the largest of the cells "auto" may choose otherwise). When images
 * are delivered, each one is charged what it cost (pricing_image: its size
 * from its own pixels, its quality as the upstream reported it), never more
 * than its hold, and the task is charged their sum plus the surcharge
 * (pricing_charge). */
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

/* GPT Image's grid: qualities (rows) by sizes (columns). */
#define PRICING_QUALITIES 3
#define PRICING_SIZES 3

/* "low", "medium", "high" for 0, 1, 2; NULL for anything else. */
const char *pricing_quality_name(int q);
/* The index of a quality name (exact, lower case); -1 for anything else,
 * "auto" included: auto is a choice left to the upstream, not a price. */
int pricing_quality_index(const char *name);
/* "1024x1024", "1536x1024", "1024x1536" for 0, 1, 2; NULL otherwise. */
const char *pricing_size_name(int s);
/* The index of a size name (exact); -1 for anything else, "auto" included. */
int pricing_size_index(const char *name);
/* The config slot of grid cell (q, s); both must be in range. */
int pricing_cell(int q, int s);

/* Fills c->prices and c->n_prices with the built-in prices of every catalog
 * model (called by config_defaults). */
void pricing_defaults(imgate_config *c);

/* True when model is priced by quality and size (GPT Image); false for a
 * model priced by resolution, and for an unknown one. */
bool pricing_by_quality(const char *model);

/* The price slot (CONFIG_PRICE_*) of resolution name on a model priced by
 * resolution, in its exact spelling ("1K", not "1k"); -1 otherwise (a
 * model priced by quality has its cells: pricing_cell). Used by the config
 * loader to refuse names that would never be charged. */
int pricing_slot(const char *model, const char *name);

/* The configured entry for model, or NULL when the model has none. */
const config_price *pricing_find(const imgate_config *cfg, const char *model);

/* The hold per image of a request, in micro-dollars. resolution NULL or ""
 * means the model's default resolution; "1k" is accepted for "1K". For a
 * model priced by resolution, aspect_ratio and quality are ignored. For GPT
 * Image: quality "low", "medium" or "high" and aspect_ratio "1:1", "3:2" or
 * "2:3" name one cell; quality NULL, "" or "auto" stands for every quality,
 * aspect_ratio NULL, "" or "auto" for every size, and the hold is the
 * largest price among the cells named. -1 when the model, resolution,
 * quality or ratio is unknown, or a cell it may land on is not priced. */
int64_t pricing_unit(const imgate_config *cfg, const char *model, const char *resolution,
                     const char *aspect_ratio, const char *quality);

/* Surcharge per reference image for model, in micro-dollars (0 when none is
 * configured); -1 for a model that has no price entry. */
int64_t pricing_reference(const imgate_config *cfg, const char *model);

/* The full hold of a task: quantity x pricing_unit + n_reference_images x
 * surcharge. -1 when the request is not priced, when quantity or
 * n_reference_images is negative, or when the total does not fit in int64. */
int64_t pricing_quote(const imgate_config *cfg, const char *model, const char *resolution,
                      const char *aspect_ratio, const char *quality, int quantity,
                      int n_reference_images);

/* What one delivered image costs, in micro-dollars, never more than
 * held_unit (>= 0, the task's hold per image). A model priced by resolution,
 * or cfg NULL: held_unit (its resolution was fixed when it was held). GPT
 * Image: the cell of the image's size and quality, where
 *  - the size is the one of the model's sizes whose aspect ratio is closest
 *    to width x height, the image's own pixels (the upstream's word is not
 *    taken); width or height <= 0 (not known): the size asked for, or when
 *    that was "auto", the largest price among the sizes;
 *  - the quality is quality_answered when it is "low", "medium" or "high"
 *    (the upstream's report of what it made); else the quality asked for;
 *    when that was "auto" (or NULL) too, the largest price among the
 *    qualities: the upstream may have made any of them, and the hold
 *    promised no less.
 * A cell that is not priced is charged held_unit. */
int64_t pricing_image(const imgate_config *cfg, const char *model, const char *aspect_ratio,
                      const char *quality, int width, int height, const char *quality_answered,
                      int64_t held_unit);

/* What a task is charged when it delivered n images priced image_prices[i]
 * (each >= 0): their sum plus refs_micros (the reference surcharge, charged
 * once when any image was delivered), never more than held_micros. 0 when n
 * is 0. The sum saturates at held_micros, so it cannot overflow. */
int64_t pricing_charge(const int64_t *image_prices, size_t n, int64_t refs_micros,
                       int64_t held_micros);

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
