/* catalog.h - the models imgate offers, what each accepts, and output pixel sizes.
 *
 * The table follows ../shared/reference/upstreams.md. Requests are validated
 * against it before a task exists, so providers only ever see combinations the
 * model supports. */
#ifndef IMGATE_CATALOG_H
#define IMGATE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>

/* Size family of a model: which row of the size table its pixels come from. */
typedef enum {
  CATALOG_SIZES_GEMINI_25, /* Nano Banana (2.5 Flash Image): 1K only, its own 1K table */
  CATALOG_SIZES_GEMINI_3,  /* Nano Banana Pro / 2: 1K table, 2K = 2x, 4K = 4x, 512 = half */
  CATALOG_SIZES_GPT_IMAGE, /* GPT Image: 1024x1024, 1536x1024, 1024x1536 */
} catalog_size_family;

typedef struct catalog_model {
  const char *name;          /* public id: "nano-banana", "nano-banana-pro", "nano-banana-2", "gpt-image-1" */
  const char *display_name;  /* "Nano Banana 2" */
  const char *upstream_kind; /* "gemini" or "openai": which wire format serves it */
  const char *upstream_model;/* default upstream model id, e.g. "gemini-3.1-flash-image-preview" */
  catalog_size_family sizes;
  const char *const *aspect_ratios; /* NULL-terminated; first entry is "auto" */
  const char *const *resolutions;   /* NULL-terminated, e.g. {"1K","2K","4K",NULL} */
  const char *default_resolution;   /* "1K" */
  int max_reference_images;
  /* What only some upstreams can do: make a transparent background and
   * edit under a mask (a PNG whose transparent pixels mark what to change
   * in the first reference image). GPT Image can; Gemini's API has neither. */
  bool transparency;
} catalog_model;

/* The model named name (exact match), or NULL. */
const catalog_model *catalog_find(const char *name);
/* The model a client's name stands for: a catalog name, or an alias that a
 * seed service or an SDK uses ("gemini-3.1-flash-image-preview",
 * "nano_banana_2", "nanobanano-2-4k", ...). *resolution (may be NULL) is the
 * resolution the name implies ("4K"), or NULL. NULL for an unknown name. */
const catalog_model *catalog_lookup(const char *name, const char **resolution);
/* All models, in display order. */
const catalog_model *catalog_models(size_t *count);

bool catalog_has_aspect_ratio(const catalog_model *m, const char *ratio);
/* Normalises a resolution spelling ("1k" -> "1K", "512" stays) and checks the
 * model offers it. Returns the catalog's own string (static) or NULL. */
const char *catalog_resolution(const catalog_model *m, const char *resolution);

/* Turns "auto" into a concrete ratio: the model's ratio closest to ref_w:ref_h
 * when a reference size is known (ref_w, ref_h > 0), else "1:1". A concrete
 * ratio is returned as given. The result is static. */
const char *catalog_resolve_ratio(const catalog_model *m, const char *ratio, int ref_w, int ref_h);

/* Output pixel size for a concrete ratio (not "auto") and a resolution the
 * model offers. Returns false for combinations the model does not have. */
bool catalog_pixel_size(const catalog_model *m, const char *ratio, const char *resolution,
                        int *width, int *height);

#endif
