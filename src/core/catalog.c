/* catalog.c - the model table and the output pixel sizes of each model.
 *
 * Sizes are transcribed from the "Output pixel sizes" table in
 * shared/reference/upstreams.md. Gemini 3 models publish a 1K size per ratio;
 * their other tiers are exact multiples of it (512 = 1/2, 2K = 2x, 4K = 4x),
 * which the reference table shows cell by cell, so only the 1K column is
 * stored and the tiers are a scale factor. */
#include "core/catalog.h"

#include <assert.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct catalog_size {
  const char *ratio;
  int width, height;
} catalog_size;

/* Nano Banana (2.5 Flash Image): its own 1K column; it has no other tier. */
static const catalog_size sizes_gemini_25[] = {
    {"1:1", 1024, 1024}, {"16:9", 1344, 768}, {"9:16", 768, 1344}, {"4:3", 1184, 864},
    {"3:4", 864, 1184},  {"3:2", 1248, 832},  {"2:3", 832, 1248},  {"21:9", 1536, 672},
    {"5:4", 1152, 896},  {"4:5", 896, 1152},  {NULL, 0, 0},
};

/* Nano Banana Pro / 2 at 1K. The last four rows exist only on 3.1 Flash; the
 * model's ratio list decides who may use them. */
static const catalog_size sizes_gemini_3_1k[] = {
    {"1:1", 1024, 1024}, {"16:9", 1376, 768}, {"9:16", 768, 1376}, {"4:3", 1200, 896},
    {"3:4", 896, 1200},  {"3:2", 1264, 848},  {"2:3", 848, 1264},  {"21:9", 1584, 672},
    {"5:4", 1152, 928},  {"4:5", 928, 1152},  {"1:4", 512, 2048},  {"4:1", 2048, 512},
    {"1:8", 384, 3072},  {"8:1", 3072, 384},  {NULL, 0, 0},
};

static const catalog_size sizes_gpt_image[] = {
    {"1:1", 1024, 1024}, {"3:2", 1536, 1024}, {"2:3", 1024, 1536}, {NULL, 0, 0},
};

/* A tier's size relative to the 1K column, as num/den. */
typedef struct catalog_tier {
  const char *name;
  int num, den;
} catalog_tier;

static const catalog_tier tiers[] = {
    {"512", 1, 2}, {"1K", 1, 1}, {"2K", 2, 1}, {"4K", 4, 1},
};

static const char *const ratios_gemini[] = {"auto", "1:1", "2:3",  "3:2",  "3:4",  "4:3", "4:5",
                                            "5:4",  "9:16", "16:9", "21:9", NULL};
static const char *const ratios_gemini_31[] = {"auto", "1:1",  "2:3",  "3:2", "3:4", "4:3",
                                               "4:5",  "5:4",  "9:16", "16:9", "21:9", "1:4",
                                               "4:1",  "1:8",  "8:1",  NULL};
static const char *const ratios_gpt_image[] = {"auto", "1:1", "3:2", "2:3", NULL};

static const char *const res_1k[] = {"1K", NULL};
static const char *const res_pro[] = {"1K", "2K", "4K", NULL};
static const char *const res_nb2[] = {"512", "1K", "2K", "4K", NULL};

static const catalog_model models[] = {
    {"nano-banana", "Nano Banana", "gemini", "gemini-2.5-flash-image", CATALOG_SIZES_GEMINI_25,
     ratios_gemini, res_1k, "1K", 10, false},
    {"nano-banana-pro", "Nano Banana Pro", "gemini", "gemini-3-pro-image-preview",
     CATALOG_SIZES_GEMINI_3, ratios_gemini, res_pro, "1K", 10, false},
    {"nano-banana-2", "Nano Banana 2", "gemini", "gemini-3.1-flash-image-preview",
     CATALOG_SIZES_GEMINI_3, ratios_gemini_31, res_nb2, "1K", 10, false},
    {"gpt-image-1", "GPT Image 1", "openai", "gpt-image-1", CATALOG_SIZES_GPT_IMAGE,
     ratios_gpt_image, res_1k, "1K", 10, true},
};

#define CATALOG_N_MODELS (sizeof models / sizeof models[0])

const catalog_model *catalog_find(const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; i < CATALOG_N_MODELS; i++)
    if (strcmp(models[i].name, name) == 0) return &models[i];
  return NULL;
}

/* Every other name a seed service or an SDK uses for a catalog model, and
 * the resolution the name itself implies (NULL: none). Names are matched
 * exactly: these are model ids, not prose. */
static const struct {
  const char *alias;
  const char *model;
  const char *resolution;
} aliases[] = {
    /* Google's own model ids (the Gemini SDK, upstream.md) */
    {"gemini-2.5-flash-image", "nano-banana", NULL},
    {"gemini-2.5-flash-image-preview", "nano-banana", NULL},
    {"gemini-3-pro-image-preview", "nano-banana-pro", NULL},
    {"gemini-3.1-flash-image-preview", "nano-banana-2", NULL},
    /* seed 003 (ToAPIs): underscores */
    {"nano_banana", "nano-banana", NULL},
    {"nano_banana_pro", "nano-banana-pro", NULL},
    {"nano_banana_2", "nano-banana-2", NULL},
    /* seeds 001/002 (apistor): the resolution in the name */
    {"nanobanano-2", "nano-banana-2", "1K"},
    {"nanobanano-2-2k", "nano-banana-2", "2K"},
    {"nanobanano-2-4k", "nano-banana-2", "4K"},
};

const catalog_model *catalog_lookup(const char *name, const char **resolution) {
  if (resolution) *resolution = NULL;
  const catalog_model *m = catalog_find(name);
  if (m || !name) return m;
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
    if (strcmp(aliases[i].alias, name) != 0) continue;
    if (resolution) *resolution = aliases[i].resolution;
    m = catalog_find(aliases[i].model);
    assert(m); /* every alias names a catalog model */
    return m;
  }
  return NULL;
}

const catalog_model *catalog_models(size_t *count) {
  if (count) *count = CATALOG_N_MODELS;
  return models;
}

/* The model's own copy of ratio, or NULL. */
static const char *catalog_ratio_entry(const catalog_model *m, const char *ratio) {
  if (!m || !ratio) return NULL;
  for (const char *const *r = m->aspect_ratios; *r; r++)
    if (strcmp(*r, ratio) == 0) return *r;
  return NULL;
}

bool catalog_has_aspect_ratio(const catalog_model *m, const char *ratio) {
  return catalog_ratio_entry(m, ratio) != NULL;
}

const char *catalog_resolution(const catalog_model *m, const char *resolution) {
  if (!m || !resolution) return NULL;
  /* Spellings differ only in the case of the 'K', so a case-blind match
   * against the model's list both validates and normalises. */
  for (const char *const *r = m->resolutions; *r; r++)
    if (strcasecmp(*r, resolution) == 0) return *r;
  return NULL;
}

/* log(w/h) of a "w:h" ratio; false for anything else (such as "auto"). */
static bool catalog_ratio_log(const char *ratio, double *out) {
  char *end;
  long w = strtol(ratio, &end, 10);
  if (end == ratio || *end != ':' || w <= 0) return false;
  const char *hs = end + 1;
  long h = strtol(hs, &end, 10);
  if (end == hs || *end != '\0' || h <= 0) return false;
  *out = log((double)w / (double)h);
  return true;
}

const char *catalog_resolve_ratio(const catalog_model *m, const char *ratio, int ref_w,
                                  int ref_h) {
  if (!m || !ratio) return NULL;
  if (strcmp(ratio, "auto") != 0) return catalog_ratio_entry(m, ratio);
  if (ref_w <= 0 || ref_h <= 0) return catalog_ratio_entry(m, "1:1");
  /* Log space makes 2:1 and 1:2 equally far from 1:1. */
  double target = log((double)ref_w / (double)ref_h);
  const char *best = NULL;
  double best_dist = 0;
  for (const char *const *r = m->aspect_ratios; *r; r++) {
    double l;
    if (!catalog_ratio_log(*r, &l)) continue;
    double dist = fabs(l - target);
    if (!best || dist < best_dist) {
      best = *r;
      best_dist = dist;
    }
  }
  return best;
}

static const catalog_size *catalog_size_table(catalog_size_family f) {
  switch (f) {
  case CATALOG_SIZES_GEMINI_25: return sizes_gemini_25;
  case CATALOG_SIZES_GEMINI_3: return sizes_gemini_3_1k;
  case CATALOG_SIZES_GPT_IMAGE: return sizes_gpt_image;
  }
  return NULL;
}

bool catalog_pixel_size(const catalog_model *m, const char *ratio, const char *resolution,
                        int *width, int *height) {
  const char *r = catalog_ratio_entry(m, ratio);
  const char *res = catalog_resolution(m, resolution);
  if (!r || !res || strcmp(r, "auto") == 0) return false;
  const catalog_tier *tier = NULL;
  for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++)
    if (strcmp(tiers[i].name, res) == 0) tier = &tiers[i];
  const catalog_size *table = catalog_size_table(m->sizes);
  if (!tier || !table) return false;
  for (const catalog_size *s = table; s->ratio; s++) {
    if (strcmp(s->ratio, r) != 0) continue;
    if (width) *width = s->width * tier->num / tier->den;
    if (height) *height = s->height * tier->num / tier->den;
    return true;
  }
  return false;
}
