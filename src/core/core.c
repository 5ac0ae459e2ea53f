/* core.c - submit, look up, open results. */
#include "core/core.h"
#include "core/pricing.h"
#include "util/ratelimit.h"

#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/accounts.h"
#include "core/catalog.h"
#include "core/transcode.h"
#include "util/base64.h"
#include "util/imagefmt.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "util/utf8.h"
#include "upstream/router.h"
#include "webhook/client.h"
#include "webhook/sign.h"

struct core {
  imgate_config cfg;
  store *st;
  blob *bl;
  engine *eng;
  events *ev;    /* task changes, for watchers */
  webhook_config wh; /* the URL check, the rotation window */
  void (*webhook_notify)(void *ctx, core_webhook_news what);
  void *webhook_notify_ctx;
  ratelimit *rl; /* requests per second per key */
};

core *core_create(const imgate_config *cfg, store *st, blob *bl, engine *eng, events *ev) {
  core *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->cfg = *cfg;
  c->st = st;
  c->bl = bl;
  c->eng = eng;
  c->ev = ev;
  webhook_config_from(&c->wh, cfg);
  c->rl = ratelimit_create();
  if (!c->rl) {
    free(c);
    return NULL;
  }
  return c;
}

void core_free(core *c) {
  if (!c) return;
  ratelimit_destroy(c->rl);
  free(c);
}

const char *core_public_url(const core *c) { return c->cfg.public_url; }

bool core_health(core *c, char *reason, size_t reason_size) {
  return c->st->ops->health(c->st, reason, reason_size) == STORE_OK;
}

/* The answer to a submit the store cannot take. The reason stays in the log
 * and on /healthz: a client learns that it should come back, not how the
 * server's disk is laid out. Before any write nothing can have been stored;
 * after a failed one the outcome may be in doubt (an fsync that failed at
 * commit), so the message promises nothing then: the Idempotency-Key is
 * what makes a retry safe. */
static int store_unavailable(imgate_error *err, bool before_write) {
  return err_set(err, ERR_UNAVAILABLE, "store_unavailable", NULL,
                 "the service cannot record new tasks right now (its database is "
                 "unavailable)%s; try again later",
                 before_write ? "; nothing was stored or charged" : "");
}

int core_authenticate(core *c, const char *authorization, store_account *out,
                      imgate_error *err) {
  if (accounts_authenticate(c->st, authorization, out, err) < 0) return -1;
  /* Requests per second per key: a token bucket that holds across every
   * HTTP thread (one limiter per process), burst = one second's worth. */
  int64_t wait_ms = 0;
  if (out->qps_per_key > 0 &&
      !ratelimit_take(c->rl, out->key_id, out->qps_per_key, out->qps_per_key, time_mono_ms(),
                      &wait_ms)) {
    err_set(err, ERR_RATE_LIMITED, "rate_limited", NULL,
            "this key is limited to %d requests per second", out->qps_per_key);
    err->retry_after_s = (int)((wait_ms + 999) / 1000);
    return -1;
  }
  return 0;
}

/* The scheme a string starts with, RFC 3986's `ALPHA *( ALPHA / DIGIT / "+" /
 * "-" / "." ) ":"`: the length of the name before the colon, or 0 when s
 * does not start that way. Base64 has no ':', so a reference with a scheme
 * can never be inline data. */
static size_t scheme_length(const char *s) {
  if (!isalpha((unsigned char)s[0])) return 0;
  size_t n = 1;
  while (isalnum((unsigned char)s[n]) || s[n] == '+' || s[n] == '-' || s[n] == '.') n++;
  return s[n] == ':' ? n : 0;
}

/* True when s starts with scheme name (lower case) and a colon, in any case:
 * schemes are case-insensitive (RFC 3986 3.1), HTTPS://x is an https URL. */
static bool has_scheme(const char *s, const char *name) {
  size_t n = strlen(name);
  return scheme_length(s) == n && strncasecmp(s, name, n) == 0;
}

/* An http(s) URL (scheme in any case) of at most 2048 printable ASCII
 * characters with a host. Where it may lead is checked when it is used
 * (fetch.h's address guard); libcurl's parser lower-cases the scheme then. */
static bool valid_http_url(const char *url) {
  size_t len = strlen(url);
  if (len > 2048) return false;
  if (!has_scheme(url, "https") && !has_scheme(url, "http")) return false;
  const char *rest = url + scheme_length(url) + 1;
  if (strncmp(rest, "//", 2) != 0) return false;
  rest += 2;
  if (*rest == '\0' || *rest == '/') return false;
  for (const char *p = url; *p; p++)
    if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f) return false;
  return true;
}

/* Decoded reference images, kept until they are in the blob store; a URL
 * reference keeps its URL instead (the engine downloads it when the task runs). */
typedef struct decoded_image {
  uint8_t *data;
  size_t len;
  imagefmt fmt;
  const char *url; /* points into the request */
} decoded_image;

/* imgs may be NULL: core_submit frees them once they are in the blob store,
 * and its failure path (402, 429, store errors) calls this again. */
static void decoded_images_free(decoded_image *imgs, size_t n) {
  if (!imgs) return;
  for (size_t i = 0; i < n; i++) free(imgs[i].data);
  free(imgs);
}

/* How inline image text failed to decode (decode_inline). */
typedef enum {
  INLINE_OK = 0,
  INLINE_BAD_DATA_URI, /* data: without ";base64," */
  INLINE_TOO_LARGE,    /* more than limits.max_image_bytes once decoded */
  INLINE_BAD_BASE64,   /* not base64, or nothing */
} inline_status;

/* Decodes an image given as text: a data: URI ("data:<type>;base64,<data>";
 * the marker, like the scheme, in any case) or bare base64. *data is
 * malloc'd on INLINE_OK. */
static inline_status decode_inline(core *c, const char *text, uint8_t **data, size_t *len) {
  const char *b64 = text;
  if (has_scheme(text, "data")) {
    const char *comma = strchr(text, ',');
    if (!comma || comma - text < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
      return INLINE_BAD_DATA_URI;
    b64 = comma + 1;
  }
  int rc = base64_decode(b64, strlen(b64), c->cfg.max_image_bytes, data, len);
  if (rc == -2) return INLINE_TOO_LARGE;
  if (rc < 0 || *len == 0) {
    free(*data);
    *data = NULL;
    return INLINE_BAD_BASE64;
  }
  return INLINE_OK;
}

/* Turns one client-given reference into bytes (a data: URI or bare base64),
 * or checks the form of an https URL, which is downloaded when the task runs. */
static int decode_reference(core *c, const char *ref, size_t index, decoded_image *out,
                            imgate_error *err) {
  size_t scheme_len = scheme_length(ref);
  bool https = has_scheme(ref, "https"), http = has_scheme(ref, "http");
  bool data = has_scheme(ref, "data");
  if (scheme_len > 0 && !https && !data && !(http && c->cfg.fetch_allow_http)) {
    /* Named in lower case, as a scheme is written; at most 32 characters. */
    char scheme[33];
    size_t n = scheme_len < sizeof scheme - 1 ? scheme_len : sizeof scheme - 1;
    for (size_t i = 0; i < n; i++) scheme[i] = (char)tolower((unsigned char)ref[i]);
    scheme[n] = '\0';
    return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                   "image %zu: %s: URLs are not supported; use https, base64 or a data: URI",
                   index, scheme);
  }
  if (https || http) {
    if (!valid_http_url(ref))
      return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                     "image %zu: not a valid URL (at most 2048 printable ASCII characters)",
                     index);
    out->url = ref;
    return 0;
  }
  switch (decode_inline(c, ref, &out->data, &out->len)) {
  case INLINE_OK: break;
  case INLINE_BAD_DATA_URI:
    return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                   "image %zu: a data: URI must be data:<type>;base64,<data>", index);
  case INLINE_TOO_LARGE:
    return err_set(err, ERR_TOO_LARGE, "image_too_large", CORE_FIELD_IMAGES,
                   "image %zu: larger than %zu bytes", index, c->cfg.max_image_bytes);
  case INLINE_BAD_BASE64:
    return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                   "image %zu: not valid base64", index);
  }
  out->fmt = imagefmt_detect(out->data, out->len);
  if (out->fmt == IMAGEFMT_UNKNOWN)
    return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                   "image %zu: not a PNG, JPEG, WebP or HEIC image", index);
  return 0;
}

/* An uploaded image: copied (the request's buffer goes before the blob
 * store has it), checked for size and format by its bytes. */
static int take_upload(core *c, const core_image_bytes *in, size_t index, decoded_image *out,
                       imgate_error *err) {
  if (in->len > c->cfg.max_image_bytes)
    return err_set(err, ERR_TOO_LARGE, "image_too_large", CORE_FIELD_IMAGES,
                   "image %zu: larger than %zu bytes", index, c->cfg.max_image_bytes);
  out->fmt = imagefmt_detect(in->data, in->len);
  if (in->len == 0 || out->fmt == IMAGEFMT_UNKNOWN)
    return err_set(err, ERR_INVALID, "invalid_image", CORE_FIELD_IMAGES,
                   "image %zu: not a PNG, JPEG, WebP or HEIC image", index);
  out->data = malloc(in->len);
  if (!out->data) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  memcpy(out->data, in->data, in->len);
  out->len = in->len;
  return 0;
}

/* The request's mask as bytes into *out, checked: a PNG (by its bytes) of at
 * most limits.max_image_bytes with an alpha channel, and of the first
 * reference's size when that one is inline and its header tells its size (a
 * URL is only downloaded when the task runs; the upstream judges then).
 * validate_transparency has said the request may have a mask. */
static int take_mask(core *c, const core_gen_request *req, const decoded_image *first,
                     decoded_image *out, imgate_error *err) {
  if (req->mask) {
    size_t scheme_len = scheme_length(req->mask);
    if (scheme_len > 0 && !has_scheme(req->mask, "data"))
      return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                     "the mask must be base64 or a data: URI, not a URL: it is checked when "
                     "the task is submitted");
    switch (decode_inline(c, req->mask, &out->data, &out->len)) {
    case INLINE_OK: break;
    case INLINE_BAD_DATA_URI:
      return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                     "a data: URI must be data:<type>;base64,<data>");
    case INLINE_TOO_LARGE:
      return err_set(err, ERR_TOO_LARGE, "image_too_large", CORE_FIELD_MASK,
                     "the mask is larger than %zu bytes", c->cfg.max_image_bytes);
    case INLINE_BAD_BASE64:
      return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                     "the mask is not valid base64");
    }
  } else {
    const core_image_bytes *in = &req->mask_bytes;
    if (in->len > c->cfg.max_image_bytes)
      return err_set(err, ERR_TOO_LARGE, "image_too_large", CORE_FIELD_MASK,
                     "the mask is larger than %zu bytes", c->cfg.max_image_bytes);
    out->data = malloc(in->len ? in->len : 1);
    if (!out->data) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
    if (in->len) memcpy(out->data, in->data, in->len);
    out->len = in->len;
  }
  out->fmt = imagefmt_detect(out->data, out->len);
  bool alpha = false;
  if (out->fmt != IMAGEFMT_PNG)
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "the mask must be a PNG (by its bytes it is %s)",
                   out->fmt == IMAGEFMT_UNKNOWN ? "not an image" : imagefmt_name(out->fmt));
  if (!imagefmt_png_alpha(out->data, out->len, &alpha))
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "the mask's PNG header is truncated or malformed");
  /* The transparent pixels say where to edit: without an alpha channel a
   * mask says nothing (a palette's tRNS is not taken either: OpenAI asks
   * for an alpha channel). */
  if (!alpha)
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "the mask has no alpha channel; its transparent pixels mark what to edit "
                   "(save it as an RGBA or grey + alpha PNG)");
  int mw, mh, iw, ih;
  if (first->data && imagefmt_dimensions(out->data, out->len, &mw, &mh) &&
      imagefmt_dimensions(first->data, first->len, &iw, &ih) && (mw != iw || mh != ih))
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "the mask is %dx%d and the first image %dx%d: they must be the same size",
                   mw, mh, iw, ih);
  return 0;
}

typedef struct validated {
  const catalog_model *model;
  const char *aspect_ratio;
  const char *resolution;
  const char *quality; /* "low", "medium", "high", "auto"; NULL for a model priced by resolution */
} validated;

/* output_format names a format imgate writes; output_compression is a
 * percentage, and only where it means something (PNG is lossless: a
 * quality there would be silently ignored, so it is refused). */
static int validate_output(const core_gen_request *req, imgate_error *err) {
  const char *name = req->output_format && *req->output_format ? req->output_format : NULL;
  imagefmt fmt = imagefmt_from_name(name);
  if (name && !transcode_can_write(fmt))
    return err_set(err, ERR_INVALID, "invalid_output_format", CORE_FIELD_OUTPUT_FORMAT,
                   "output_format must be png, jpeg or webp, not \"%.*s\"",
                   (int)utf8_cut(name, 16), name);
  if (!req->output_compression_set) return 0;
  if (req->output_compression < 0 || req->output_compression > 100)
    return err_set(err, ERR_INVALID, "invalid_output_compression", CORE_FIELD_OUTPUT_COMPRESSION,
                   "output_compression must be a whole number from 0 to 100");
  if (fmt != IMAGEFMT_JPEG && fmt != IMAGEFMT_WEBP)
    return err_set(err, ERR_INVALID, "invalid_output_compression", CORE_FIELD_OUTPUT_COMPRESSION,
                   "output_compression applies to output_format jpeg or webp only");
  return 0;
}

/* The background and the mask, which only a model with catalog transparency
 * takes. The mask's bytes are checked later (take_mask): here only whether
 * the request may have one. */
static int validate_transparency(const core_gen_request *req, const validated *v,
                                 imgate_error *err) {
  const char *bg = req->background;
  if (bg && strcmp(bg, "auto") != 0 && strcmp(bg, "opaque") != 0 &&
      strcmp(bg, "transparent") != 0)
    return err_set(err, ERR_INVALID, "invalid_background", CORE_FIELD_BACKGROUND,
                   "background must be auto, opaque or transparent, not \"%.*s\"",
                   (int)utf8_cut(bg, 16), bg);
  bool transparent = bg && strcmp(bg, "transparent") == 0;
  /* "auto" and "opaque" promise nothing another model cannot keep. */
  if (transparent && !v->model->transparency)
    return err_set(err, ERR_INVALID, "invalid_background", CORE_FIELD_BACKGROUND,
                   "%s cannot make a transparent background (GPT Image can); leave background "
                   "out, or send auto or opaque",
                   v->model->name);
  if (transparent && imagefmt_from_name(req->output_format) == IMAGEFMT_JPEG)
    return err_set(err, ERR_INVALID, "invalid_background", CORE_FIELD_BACKGROUND,
                   "a transparent background needs output_format png or webp: JPEG has no "
                   "alpha channel");
  /* One form or the other: a dialect that sets both has a bug. */
  assert(!(req->mask && req->mask_bytes.data));
  if (!req->mask && !req->mask_bytes.data) return 0;
  if (!v->model->transparency)
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "%s cannot edit under a mask (GPT Image can); leave the mask out",
                   v->model->name);
  if (req->n_images + req->n_image_bytes == 0)
    return err_set(err, ERR_INVALID, "invalid_mask", CORE_FIELD_MASK,
                   "a mask applies to the first reference image, and the request has none");
  return 0;
}

/* The request's quality for v->model, into v->quality. */
static int validate_quality(const core_gen_request *req, validated *v, imgate_error *err) {
  const char *q = req->quality;
  if (q && strcmp(q, "auto") != 0 && pricing_quality_index(q) < 0)
    return err_set(err, ERR_INVALID, "invalid_quality", CORE_FIELD_QUALITY,
                   "quality must be low, medium, high or auto, not \"%.*s\"",
                   (int)utf8_cut(q, 16), q);
  if (pricing_by_quality(v->model->name)) {
    v->quality = q ? q : "auto";
    return 0;
  }
  /* A quality that names a level on a model without levels would be taken
   * for a promise; "auto" (OpenAI's own default) promises nothing. */
  if (q && strcmp(q, "auto") != 0)
    return err_set(err, ERR_INVALID, "invalid_quality", CORE_FIELD_QUALITY,
                   "%s has no quality setting (it is priced by resolution); leave quality out "
                   "or send auto",
                   v->model->name);
  v->quality = NULL;
  return 0;
}

static int validate(core *c, const core_gen_request *req, validated *v, imgate_error *err) {
  const char *model_name = req->model ? req->model : "nano-banana";
  const char *implied_resolution;
  v->model = catalog_lookup(model_name, &implied_resolution);
  if (!v->model)
    return err_set(err, ERR_INVALID, "invalid_model", CORE_FIELD_MODEL,
                   "unknown model \"%.*s\"; see the model list in the docs",
                   (int)utf8_cut(model_name, 64), model_name);
  if (!engine_serves(c->eng, v->model->name))
    return err_set(err, ERR_INVALID, "model_unavailable", CORE_FIELD_MODEL,
                   "no upstream provider is configured for %s", v->model->name);
  if (!req->prompt)
    return err_set(err, ERR_INVALID, "missing_field", CORE_FIELD_PROMPT, "prompt is required");
  /* Blank is what a person sees: a prompt of U+3000 or zero-width spaces says
   * nothing, and an upstream would bill for guessing. */
  if (utf8_is_blank(req->prompt))
    return err_set(err, ERR_INVALID, "invalid_prompt", CORE_FIELD_PROMPT,
                   "prompt must not be empty");
  if (utf8_length(req->prompt) > (size_t)c->cfg.max_prompt_chars)
    return err_set(err, ERR_INVALID, "prompt_too_long", CORE_FIELD_PROMPT,
                   "prompt is longer than %d characters", c->cfg.max_prompt_chars);
  v->aspect_ratio = req->aspect_ratio ? req->aspect_ratio : "auto";
  if (!catalog_has_aspect_ratio(v->model, v->aspect_ratio))
    return err_set(err, ERR_INVALID, "invalid_aspect_ratio", CORE_FIELD_ASPECT_RATIO,
                   "%s does not offer aspect ratio \"%.*s\"", v->model->name,
                   (int)utf8_cut(v->aspect_ratio, 16), v->aspect_ratio);
  /* A name that implies a resolution ("nanobanano-2-4k") sets it; a request
   * that also names another one contradicts itself. */
  if (implied_resolution && req->resolution &&
      catalog_resolution(v->model, req->resolution) != catalog_resolution(v->model,
                                                                           implied_resolution))
    return err_set(err, ERR_INVALID, "invalid_resolution", CORE_FIELD_RESOLUTION,
                   "model \"%s\" means resolution %s, not \"%.*s\"", model_name,
                   implied_resolution, (int)utf8_cut(req->resolution, 16), req->resolution);
  v->resolution = catalog_resolution(
      v->model, req->resolution        ? req->resolution
                : implied_resolution ? implied_resolution
                                     : v->model->default_resolution);
  if (!v->resolution)
    return err_set(err, ERR_INVALID, "invalid_resolution", CORE_FIELD_RESOLUTION,
                   "%s does not offer resolution \"%.*s\"", v->model->name,
                   (int)utf8_cut(req->resolution, 16), req->resolution);
  if (validate_quality(req, v, err) < 0) return -1;
  size_t max_images = (size_t)v->model->max_reference_images;
  if ((size_t)c->cfg.max_reference_images < max_images)
    max_images = (size_t)c->cfg.max_reference_images;
  if (req->n_images + req->n_image_bytes > max_images)
    return err_set(err, ERR_INVALID, "too_many_images", CORE_FIELD_IMAGES,
                   "at most %zu reference images for %s", max_images, v->model->name);
  char why[256];
  if (req->webhook_url && !webhook_url_check(&c->wh, req->webhook_url, why, sizeof why))
    return err_set(err, ERR_INVALID, "invalid_webhook_url", CORE_FIELD_WEBHOOK, "%s", why);
  if (req->webhook_events & ~TASK_WEBHOOK_RUNNING)
    return err_set(err, ERR_INVALID, "invalid_webhook_events", CORE_FIELD_WEBHOOK_EVENTS,
                   "only task.running can be asked for; final events are always sent");
  if (req->webhook_events && !req->webhook_url)
    return err_set(err, ERR_INVALID, "invalid_webhook_events", CORE_FIELD_WEBHOOK_EVENTS,
                   "webhook_events needs a webhook_url");
  if (req->quantity < 0 || req->quantity > CORE_MAX_QUANTITY)
    return err_set(err, ERR_INVALID, "invalid_quantity", CORE_FIELD_QUANTITY,
                   "the number of images must be 1 to %d", CORE_MAX_QUANTITY);
  if (req->deadline_s < 0 || req->deadline_s > CORE_MAX_DEADLINE_S)
    return err_set(err, ERR_INVALID, "invalid_deadline", CORE_FIELD_DEADLINE,
                   "deadline must be 1 to %d seconds", CORE_MAX_DEADLINE_S);
  if (validate_output(req, err) < 0) return -1;
  return validate_transparency(req, v, err);
}

/* Prices t from the catalog: the hold per image (for "auto" quality or size
 * the largest price the upstream's choice could land on; what each image
 * really costs is captured when it is delivered), the surcharge per
 * reference image, and the hold (quantity x unit + surcharges) taken at
 * insert. */
static int price_task(core *c, task *t, size_t n_refs, imgate_error *err) {
  int64_t unit = pricing_unit(&c->cfg, t->model, t->resolution, t->aspect_ratio, t->quality);
  int64_t per_ref = pricing_reference(&c->cfg, t->model);
  int64_t held = pricing_quote(&c->cfg, t->model, t->resolution, t->aspect_ratio, t->quality,
                               t->quantity, (int)n_refs);
  if (unit < 0 || per_ref < 0 || held < 0)
    return err_set(err, ERR_INTERNAL, "price_unknown", NULL, "%s at %s%s%s has no price",
                   t->model, t->resolution, t->quality ? ", quality " : "",
                   t->quality ? t->quality : "");
  t->price_unit_micros = unit;
  t->price_refs_micros = per_ref * (int64_t)n_refs;
  t->cost_held_micros = held;
  return 0;
}

/* Writes decoded inputs to the blob store and describes them in t. */
static int store_inputs(core *c, task *t, decoded_image *imgs, size_t n, imgate_error *err) {
  if (n == 0) return 0;
  t->inputs = calloc(n, sizeof *t->inputs);
  if (!t->inputs) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    if (imgs[i].url) {
      t->n_inputs = i + 1;
      t->inputs[i].url = strdup(imgs[i].url);
      if (!t->inputs[i].url) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
      continue;
    }
    char key[128];
    snprintf(key, sizeof key, TASK_BLOB_INPUTS "%s/%zu.%s", t->id, i, imagefmt_ext(imgs[i].fmt));
    if (c->bl->ops->put(c->bl, key, imgs[i].data, imgs[i].len, imagefmt_mime(imgs[i].fmt)) !=
        BLOB_OK)
      return err_set(err, ERR_INTERNAL, "storage_error", NULL,
                     "a reference image could not be stored");
    t->n_inputs = i + 1;
    t->inputs[i].blob_key = strdup(key);
    t->inputs[i].mime = strdup(imagefmt_mime(imgs[i].fmt));
    t->inputs[i].bytes = (int64_t)imgs[i].len;
    if (!t->inputs[i].blob_key || !t->inputs[i].mime)
      return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  }
  return 0;
}

/* Writes the decoded mask to the blob store, beside the inputs, and
 * describes it in t (t->mask). */
static int store_mask(core *c, task *t, const decoded_image *mask, imgate_error *err) {
  assert(mask->fmt == IMAGEFMT_PNG && !mask->url);
  char key[128];
  snprintf(key, sizeof key, TASK_BLOB_INPUTS "%s/mask.png", t->id);
  t->mask = calloc(1, sizeof *t->mask);
  if (!t->mask) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  if (c->bl->ops->put(c->bl, key, mask->data, mask->len, imagefmt_mime(mask->fmt)) != BLOB_OK) {
    free(t->mask);
    t->mask = NULL;
    return err_set(err, ERR_INTERNAL, "storage_error", NULL, "the mask could not be stored");
  }
  t->mask->blob_key = strdup(key);
  t->mask->mime = strdup(imagefmt_mime(mask->fmt));
  t->mask->bytes = (int64_t)mask->len;
  if (!t->mask->blob_key || !t->mask->mime) {
    c->bl->ops->remove(c->bl, key);
    return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  }
  return 0;
}

static void remove_inputs(core *c, task *t) {
  for (size_t i = 0; i < t->n_inputs; i++)
    if (t->inputs[i].blob_key) c->bl->ops->remove(c->bl, t->inputs[i].blob_key);
  if (t->mask && t->mask->blob_key) c->bl->ops->remove(c->bl, t->mask->blob_key);
}

bool core_idempotency_key_valid(const char *key) {
  size_t len = 0;
  for (const char *p = key; *p; p++, len++)
    if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || len >= CORE_IDEMPOTENCY_KEY_MAX)
      return false;
  return len > 0;
}

/* A number of the canonical form: 8 bytes, big-endian. */
static void hash_count(ids_sha256 *h, size_t count) {
  uint8_t n[8];
  for (int i = 0; i < 8; i++) n[i] = (uint8_t)((uint64_t)count >> (56 - 8 * i));
  ids_sha256_update(h, n, sizeof n);
}

/* One item of the canonical form: its length, then its bytes. */
static void hash_bytes(ids_sha256 *h, const char *s, size_t len) {
  hash_count(h, len);
  ids_sha256_update(h, s, len);
}

/* A field: "-" when absent, else "+" and the item. */
static void hash_field(ids_sha256 *h, const char *s) {
  ids_sha256_update(h, s ? "+" : "-", 1);
  if (s) hash_bytes(h, s, strlen(s));
}

bool core_request_hash(const core_gen_request *req, char out[65]) {
  ids_sha256 *h = ids_sha256_begin();
  if (!h) return false;
  /* The version names the layout: a dialect that adds core fields (quantity,
   * quality) adds them here under a new version. */
  static const char version[] = "imgate-request-v1";
  hash_bytes(h, version, sizeof version - 1);
  hash_field(h, req->model);
  hash_field(h, req->prompt);
  hash_field(h, req->aspect_ratio);
  hash_field(h, req->resolution);
  hash_field(h, req->webhook_url);
  hash_count(h, req->n_images);
  for (size_t i = 0; i < req->n_images; i++) hash_field(h, req->images[i]);
  /* Uploaded images, only when there are some (as above: older requests hash
   * as they did). */
  if (req->n_image_bytes) {
    static const char uploads[] = "uploads-v1";
    hash_bytes(h, uploads, sizeof uploads - 1);
    hash_count(h, req->n_image_bytes);
    for (size_t i = 0; i < req->n_image_bytes; i++)
      hash_bytes(h, (const char *)req->image_bytes[i].data, req->image_bytes[i].len);
  }
  /* Delivery options, only when given: a request without them hashes as it
   * did before they existed, so a replay across an upgrade stays a replay. */
  if (req->webhook_events || req->deadline_s) {
    static const char delivery[] = "delivery-v1";
    hash_bytes(h, delivery, sizeof delivery - 1);
    hash_count(h, req->webhook_events);
    hash_count(h, (size_t)req->deadline_s);
  }
  /* Likewise the image count, only when more than one is asked for. */
  if (req->quantity > 1) {
    static const char quantity[] = "quantity-v1";
    hash_bytes(h, quantity, sizeof quantity - 1);
    hash_count(h, (size_t)req->quantity);
  }
  /* Likewise the output options, only when one is given. */
  bool output_format = req->output_format && *req->output_format;
  if (output_format || req->output_compression_set) {
    static const char output[] = "output-v1";
    hash_bytes(h, output, sizeof output - 1);
    hash_field(h, output_format ? req->output_format : NULL);
    hash_count(h, req->output_compression_set);
    hash_count(h, req->output_compression_set ? (size_t)req->output_compression : 0);
  }
  /* And the quality, only when given (as given: absent and "auto" differ). */
  if (req->quality) {
    static const char quality[] = "quality-v1";
    hash_bytes(h, quality, sizeof quality - 1);
    hash_field(h, req->quality);
  }
  /* The background, only when given (as given, likewise). */
  if (req->background) {
    static const char background[] = "background-v1";
    hash_bytes(h, background, sizeof background - 1);
    hash_field(h, req->background);
  }
  /* And the mask, only when given: its text as given (as a reference's), or
   * its uploaded bytes. */
  if (req->mask || req->mask_bytes.data) {
    static const char mask[] = "mask-v1";
    hash_bytes(h, mask, sizeof mask - 1);
    hash_field(h, req->mask);
    hash_count(h, req->mask_bytes.data ? 1 : 0);
    if (req->mask_bytes.data)
      hash_bytes(h, (const char *)req->mask_bytes.data, req->mask_bytes.len);
  }
  ids_sha256_end(h, out);
  return true;
}

/* After the store answered REPLAY: the first task, as stored now. */
static int load_replay(core *c, const char *task_id, task **out, imgate_error *err) {
  if (c->st->ops->task_get(c->st, task_id, out) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the first task could not be read");
  return 0;
}

int core_submit(core *c, const store_account *acct, const core_gen_request *req,
                const char *idempotency_key, task **out, bool *replayed, imgate_error *err) {
  if (replayed) *replayed = false;
  if (idempotency_key && !core_idempotency_key_valid(idempotency_key))
    return err_set(err, ERR_INVALID, "invalid_idempotency_key", CORE_FIELD_IDEMPOTENCY_KEY,
                   "an Idempotency-Key must be 1 to %d printable ASCII characters",
                   CORE_IDEMPOTENCY_KEY_MAX);
  validated v = {0};
  if (validate(c, req, &v, err) < 0) return -1;
  /* Before any reference image is decoded or written. */
  if (!core_health(c, NULL, 0)) return store_unavailable(err, true);
  if (req->refuse_when_busy && c->cfg.engine_max_queued > 0) {
    /* A soft bound: submits racing each other may overshoot it by a few,
     * which is fine for shedding load (the queue itself has no limit). */
    engine_stats es;
    engine_get_stats(c->eng, &es);
    if (es.queued >= (size_t)c->cfg.engine_max_queued)
      return err_set(err, ERR_UNAVAILABLE, "server_busy", NULL,
                     "the server is busy (%zu tasks are waiting); try again shortly", es.queued);
  }
  char request_hash[65] = "";
  if (idempotency_key && !core_request_hash(req, request_hash))
    return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");

  /* The references, then the mask (when there is one) in the slot after them. */
  size_t n_refs = req->n_images + req->n_image_bytes;
  bool has_mask = req->mask || req->mask_bytes.data;
  size_t n_decoded = n_refs + has_mask;
  decoded_image *imgs = NULL;
  if (n_decoded) {
    imgs = calloc(n_decoded, sizeof *imgs);
    if (!imgs) return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
  }
  for (size_t i = 0; i < req->n_images; i++) {
    if (decode_reference(c, req->images[i], i, &imgs[i], err) < 0) {
      decoded_images_free(imgs, n_decoded);
      return -1;
    }
  }
  for (size_t k = 0; k < req->n_image_bytes; k++) {
    if (take_upload(c, &req->image_bytes[k], req->n_images + k, &imgs[req->n_images + k],
                    err) < 0) {
      decoded_images_free(imgs, n_decoded);
      return -1;
    }
  }
  /* validate() saw that a mask comes with a reference image: imgs[0] is one. */
  assert(!has_mask || n_refs > 0);
  if (has_mask && take_mask(c, req, &imgs[0], &imgs[n_refs], err) < 0) {
    decoded_images_free(imgs, n_decoded);
    return -1;
  }

  task *t = calloc(1, sizeof *t);
  if (!t || !ids_uuid7(t->id)) {
    free(t);
    decoded_images_free(imgs, n_decoded);
    return err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "could not create the task");
  }
  t->account_id = acct->id;
  t->state = TASK_QUEUED;
  t->model = strdup(v.model->name);
  t->prompt = strdup(req->prompt);
  t->aspect_ratio = strdup(v.aspect_ratio);
  t->resolution = strdup(v.resolution);
  t->quality = v.quality ? strdup(v.quality) : NULL;
  t->webhook_url = req->webhook_url ? strdup(req->webhook_url) : NULL;
  t->webhook_events = req->webhook_events;
  t->dialect = strdup(req->dialect ? req->dialect : "native");
  t->public_base = req->public_base ? strdup(req->public_base) : NULL;
  t->quantity = req->quantity > 0 ? req->quantity : 1;
  if (req->output_format && *req->output_format) t->output_format = strdup(req->output_format);
  t->output_compression =
      req->output_compression_set ? req->output_compression : CORE_DEFAULT_OUTPUT_COMPRESSION;
  t->background = req->background ? strdup(req->background) : NULL;
  t->created_ms = time_now_ms();
  t->deadline_ms = req->deadline_s > 0 ? t->created_ms + (int64_t)req->deadline_s * 1000 : 0;
  if (!t->model || !t->prompt || !t->aspect_ratio || !t->resolution || !t->dialect ||
      (v.quality && !t->quality) ||
      (req->webhook_url && !t->webhook_url) || (req->public_base && !t->public_base) ||
      (req->output_format && *req->output_format && !t->output_format) ||
      (req->background && !t->background)) {
    err_set(err, ERR_INTERNAL, "out_of_memory", NULL, "out of memory");
    goto fail;
  }
  if (price_task(c, t, n_refs, err) < 0) goto fail;
  if (store_inputs(c, t, imgs, n_refs, err) < 0) goto fail;
  if (has_mask && store_mask(c, t, &imgs[n_refs], err) < 0) goto fail;
  decoded_images_free(imgs, n_decoded);
  imgs = NULL;

  int rc;
  char first_id[IDS_UUID_LEN + 1] = "";
  if (idempotency_key) {
    store_idem idem = {.key = idempotency_key,
                       .request_hash = request_hash,
                       .ttl_ms = (int64_t)c->cfg.idempotency_ttl_s * 1000};
    rc = c->st->ops->task_insert_idempotent(c->st, t, &idem, first_id);
  } else {
    rc = c->st->ops->task_insert(c->st, t);
  }
  if (rc == STORE_REPLAY) {
    /* The first submit made the task; this one's stored images are orphans. */
    remove_inputs(c, t);
    task_free(t);
    if (load_replay(c, first_id, out, err) < 0) return -1;
    if (replayed) *replayed = true;
    return 0;
  }
  if (rc == STORE_IDEMPOTENCY_MISMATCH) {
    err_set(err, ERR_UNPROCESSABLE, "idempotency_key_reused", CORE_FIELD_IDEMPOTENCY_KEY,
            "this Idempotency-Key was used with a different request");
    goto fail;
  }
  if (rc == STORE_NO_CREDIT) {
    char price[32];
    pricing_format_usd(t->cost_held_micros, price, sizeof price);
    err_set(err, ERR_NO_CREDIT, "insufficient_credit", NULL,
            "this task costs $%s and the account's available balance does not cover it; "
            "top up to continue",
            price);
    goto fail;
  }
  if (rc == STORE_LIMIT) {
    /* Counted again outside the refused transaction: a header, not a decision. */
    int64_t active = acct->max_concurrency;
    c->st->ops->task_count_active(c->st, acct->id, &active);
    err_set(err, ERR_RATE_LIMITED, "concurrency_limit", NULL,
            "the account has %lld tasks queued or running and its limit is %d",
            (long long)active, acct->max_concurrency);
    err->retry_after_s = 1;
    err->limit = acct->max_concurrency;
    err->active = (int)active;
    goto fail;
  }
  if (rc != STORE_OK) {
    /* The store may have found itself broken in this very insert. */
    if (!core_health(c, NULL, 0))
      store_unavailable(err, false);
    else
      err_set(err, ERR_INTERNAL, "store_error", NULL, "the task could not be stored");
    goto fail;
  }
  /* Durable now; the in-memory queue only speeds up what recovery would do. */
  engine_enqueue(c->eng, t->id);
  *out = t;
  return 0;

fail:
  remove_inputs(c, t);
  decoded_images_free(imgs, n_decoded);
  task_free(t);
  return -1;
}

int core_get_task(core *c, const store_account *acct, const char *task_id, task **out,
                  imgate_error *err) {
  task *t = NULL;
  if (!ids_is_uuid(task_id))
    return err_set(err, ERR_NOT_FOUND, "not_found", NULL, "no such task");
  int rc = c->st->ops->task_get(c->st, task_id, &t);
  if (rc == STORE_NOT_FOUND || (rc == STORE_OK && t->account_id != acct->id)) {
    task_free(t);
    return err_set(err, ERR_NOT_FOUND, "not_found", NULL, "no such task");
  }
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  *out = t;
  return 0;
}

/* The extension of a blob key's last segment, dot included, or "". */
static const char *blob_key_extension(const char *key) {
  const char *slash = strrchr(key, '/');
  const char *dot = strrchr(slash ? slash + 1 : key, '.');
  return dot ? dot : "";
}

bool core_result_file_name(const task_result *r, char *out, size_t size) {
  int n = snprintf(out, size, "%s%s", r->token, blob_key_extension(r->blob_key));
  return n >= 0 && (size_t)n < size;
}

int core_open_result(core *c, const char *name, task_result *meta, blob_object *obj,
                     imgate_error *err) {
  memset(meta, 0, sizeof *meta);
  char token[65];
  size_t token_len = strcspn(name, ".");
  if (token_len == 0 || token_len >= sizeof token)
    return err_set(err, ERR_NOT_FOUND, "not_found", NULL, "no such image, or it has expired");
  memcpy(token, name, token_len);
  token[token_len] = '\0';
  int rc = c->st->ops->result_by_token(c->st, token, meta);
  char published[128];
  if (rc == STORE_OK && (!core_result_file_name(meta, published, sizeof published) ||
                         strcmp(published, name) != 0))
    rc = STORE_NOT_FOUND; /* the token, but not the URL imgate gave out */
  if (rc == STORE_NOT_FOUND) {
    task_result_clear(meta);
    return err_set(err, ERR_NOT_FOUND, "not_found", NULL, "no such image");
  }
  /* Expired (the retention sweep deletes only expired images): the link was
   * real, and a client must learn that it will never work again, not that
   * it was mistyped. */
  if (rc == STORE_OK && meta->expires_ms <= time_now_ms()) {
    char when[40];
    time_format_http(meta->expires_ms, when);
    task_result_clear(meta);
    return err_set(err, ERR_GONE, "image_expired", NULL,
                   "this image expired on %s: results are kept for %d hours", when,
                   c->cfg.retention_hours);
  }
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  rc = c->bl->ops->open(c->bl, meta->blob_key, obj);
  if (rc != BLOB_OK) {
    task_result_clear(meta);
    if (rc == BLOB_NOT_FOUND)
      return err_set(err, ERR_NOT_FOUND, "not_found", NULL, "no such image");
    return err_set(err, ERR_INTERNAL, "storage_error", NULL, "the image could not be read");
  }
  return 0;
}

core_watch *core_watch_task(core *c, const char *task_id, void (*fn)(void *ctx), void *ctx) {
  return (core_watch *)events_subscribe(c->ev, task_id, fn, ctx);
}

void core_unwatch(core *c, core_watch *w) { events_unsubscribe(c->ev, (events_sub *)w); }

int core_cancel(core *c, const store_account *acct, const char *task_id, task **out,
                imgate_error *err) {
  task *t = NULL;
  if (core_get_task(c, acct, task_id, &t, err) < 0) return -1;
  if (task_state_is_final(t->state)) {
    *out = t;
    return err_set(err, ERR_CONFLICT, "task_final", NULL, "the task is %s already",
                   task_state_name(t->state));
  }
  task_free(t);
  task_state state;
  int rc = engine_cancel(c->eng, task_id, "canceled", &state);
  if (rc != STORE_OK && rc != STORE_CONFLICT)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the task could not be canceled");
  if (c->st->ops->task_get(c->st, task_id, &t) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  *out = t;
  /* Finished meanwhile (the cancel lost the race with its answer). */
  if (rc == STORE_CONFLICT && state != TASK_RUNNING)
    return err_set(err, ERR_CONFLICT, "task_final", NULL, "the task is %s already",
                   task_state_name(state));
  return 0;
}

int core_list_tasks(core *c, const store_account *acct, const char *after, int limit,
                    task ***out, size_t *n, bool *more, imgate_error *err) {
  *out = NULL;
  *n = 0;
  *more = false;
  assert(limit >= 1 && limit <= CORE_MAX_PAGE);
  if (after && !ids_is_uuid(after))
    return err_set(err, ERR_INVALID, "invalid_cursor", "after",
                   "after must be the uid of one of your tasks (the last of the previous page)");
  /* One more than asked says whether another page follows. */
  char (*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t count = 0;
  int rc = c->st->ops->task_list_account(c->st, acct->id, after, (size_t)limit + 1, &ids, &count);
  if (rc == STORE_NOT_FOUND)
    return err_set(err, ERR_INVALID, "invalid_cursor", "after",
                   "after must be the uid of one of your tasks (the last of the previous page)");
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  *more = count > (size_t)limit;
  if (*more) count = (size_t)limit;
  task **tasks = count ? calloc(count, sizeof *tasks) : NULL;
  if (count && !tasks) {
    free(ids);
    return err_set(err, ERR_INTERNAL, "internal_error", NULL, "out of memory");
  }
  size_t got = 0;
  for (size_t i = 0; i < count; i++) {
    rc = c->st->ops->task_get(c->st, ids[i], &tasks[got]);
    if (rc == STORE_OK) got++;
    else if (rc != STORE_NOT_FOUND) break; /* (one deleted meanwhile is skipped) */
  }
  free(ids);
  if (rc != STORE_OK && rc != STORE_NOT_FOUND) {
    core_tasks_free(tasks, got);
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  }
  *out = tasks;
  *n = got;
  return 0;
}

void core_tasks_free(task **tasks, size_t n) {
  for (size_t i = 0; i < n; i++) task_free(tasks[i]);
  free(tasks);
}

int core_models(core *c, core_model_info **out, size_t *n) {
  size_t count;
  const catalog_model *models = catalog_models(&count);
  core_model_info *info = calloc(count ? count : 1, sizeof *info);
  if (!info) return -1;
  for (size_t i = 0; i < count; i++) {
    const catalog_model *m = &models[i];
    core_model_info *mi = &info[i];
    mi->model = m;
    mi->available = engine_serves(c->eng, m->name);
    mi->by_quality = pricing_by_quality(m->name);
    if (mi->by_quality) {
      /* The grid, cell by cell: a size is asked for by its ratio. */
      for (size_t k = 0; m->aspect_ratios[k]; k++) {
        int w, h;
        char wxh[32];
        if (!catalog_pixel_size(m, m->aspect_ratios[k], m->default_resolution, &w, &h)) continue;
        snprintf(wxh, sizeof wxh, "%dx%d", w, h);
        int s = pricing_size_index(wxh);
        for (int q = 0; s >= 0 && q < PRICING_QUALITIES; q++) {
          int64_t p = pricing_unit(&c->cfg, m->name, NULL, m->aspect_ratios[k],
                                   pricing_quality_name(q));
          if (p < 0 || mi->n_prices == CORE_MAX_PRICES) continue; /* not priced: not offered */
          mi->prices[mi->n_prices].name = pricing_quality_name(q);
          mi->prices[mi->n_prices].size = pricing_size_name(s);
          mi->prices[mi->n_prices++].micros = p;
        }
      }
    } else {
      for (size_t k = 0; m->resolutions[k] && mi->n_prices < CORE_MAX_PRICES; k++) {
        int64_t p = pricing_unit(&c->cfg, m->name, m->resolutions[k], NULL, NULL);
        if (p < 0) continue; /* not priced: not offered at that price */
        mi->prices[mi->n_prices].name = m->resolutions[k];
        mi->prices[mi->n_prices++].micros = p;
      }
    }
    int64_t ref = pricing_reference(&c->cfg, m->name);
    mi->reference_micros = ref > 0 ? ref : 0;
    /* As price_task holds for a request without resolution, quality or size. */
    mi->default_micros = pricing_unit(&c->cfg, m->name, m->default_resolution, NULL, NULL);
  }
  *out = info;
  *n = count;
  return 0;
}

int core_task_events(core *c, const store_account *acct, const char *task_id, int after_seq,
                     task_event **out, size_t *n, imgate_error *err) {
  task *t = NULL;
  if (core_get_task(c, acct, task_id, &t, err) < 0) return -1;
  task_free(t);
  if (c->st->ops->task_events(c->st, task_id, after_seq, out, n) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  return 0;
}

int core_progress_percent(core *c, const task *t, int64_t now_ms) {
  if (task_state_is_final(t->state)) return 100;
  if (t->state != TASK_RUNNING || t->started_ms <= 0) return 0;
  int64_t expected = router_expected_ms(engine_router(c->eng), t->model, t->provider);
  if (expected <= 0) return -1;
  int64_t pct = (now_ms - t->started_ms) * 100 / expected;
  /* Never 100 while it runs: only the end says it is done. */
  return pct < 0 ? 0 : pct > 99 ? 99 : (int)pct;
}

int core_webhook_secret(core *c, const store_account *acct, store_webhook_secret *out,
                        imgate_error *err) {
  char fresh[WEBHOOK_SECRET_MAX];
  if (webhook_secret_new(fresh) < 0 ||
      c->st->ops->webhook_secret_get(c->st, acct->id, fresh, out) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the webhook secret could not be read");
  return 0;
}

int core_webhook_rotate(core *c, const store_account *acct, store_webhook_secret *out,
                        imgate_error *err) {
  char fresh[WEBHOOK_SECRET_MAX];
  int64_t until = time_now_ms() + (int64_t)c->cfg.webhook_rotation_window_s * 1000;
  if (webhook_secret_new(fresh) < 0 ||
      c->st->ops->webhook_secret_rotate(c->st, acct->id, fresh, until, out) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the webhook secret could not be rotated");
  /* Deliveries from now on are signed with both secrets, none from a cache. */
  if (c->webhook_notify) c->webhook_notify(c->webhook_notify_ctx, CORE_WEBHOOK_SECRETS_CHANGED);
  LOG_INFO("webhook_secret_rotated", "account=%lld", (long long)acct->id);
  return 0;
}

int core_webhook_resend(core *c, const store_account *acct, const char *task_id,
                        imgate_error *err) {
  task *t = NULL;
  if (core_get_task(c, acct, task_id, &t, err) < 0) return -1;
  task_free(t);
  int rc = c->st->ops->webhook_resend(c->st, task_id, time_now_ms());
  if (rc == STORE_NOT_FOUND)
    return err_set(err, ERR_NOT_FOUND, "no_webhook_delivery", NULL,
                   "the task has no webhook delivery to send again (no webhook_url, or not final yet)");
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  if (c->webhook_notify) c->webhook_notify(c->webhook_notify_ctx, CORE_WEBHOOK_DUE);
  return 0;
}

int core_webhook_attempts(core *c, const char *task_id, store_webhook_attempt **out, size_t *n) {
  return c->st->ops->webhook_list(c->st, task_id, out, n) == STORE_OK ? 0 : -1;
}

void core_set_webhook_notify(core *c, void (*notify)(void *ctx, core_webhook_news what),
                             void *ctx) {
  c->webhook_notify = notify;
  c->webhook_notify_ctx = ctx;
}

int core_stream_keepalive_ms(const core *c) { return c->cfg.http_stream_keepalive_ms; }

int core_clamp_quantity(const core *c, double asked) {
  int max = c->cfg.clamped_quantity_max;
  assert(max >= 1 && max <= CORE_MAX_QUANTITY);
  if (!(asked >= 1)) return 1; /* NaN too */
  if (asked >= max) return max;
  return (int)asked;
}

int64_t core_credits(const core *c, int64_t micros, core_credit_rounding rounding) {
  int64_t unit = c->cfg.credit_micros;
  assert(unit > 0);
  /* C division truncates toward zero; floor and ceiling need the sign. */
  int64_t q = micros / unit, r = micros % unit;
  if (r != 0 && rounding == CORE_CREDITS_DOWN && micros < 0) q--;
  if (r != 0 && rounding == CORE_CREDITS_UP && micros > 0) q++;
  return q;
}

int core_balance(core *c, int64_t account_id, int64_t *available_micros, imgate_error *err) {
  store_account a;
  if (c->st->ops->account_get(c->st, account_id, &a) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the balance could not be read");
  *available_micros = a.balance_micros;
  return 0;
}

int core_read_result(core *c, const task_result *r, uint8_t **data, size_t *len,
                     imgate_error *err) {
  *data = NULL;
  *len = 0;
  size_t cap = r->bytes > 0 ? (size_t)r->bytes : 1;
  int rc = c->bl->ops->read(c->bl, r->blob_key, cap, data, len);
  if (rc == BLOB_NOT_FOUND)
    return err_set(err, ERR_NOT_FOUND, "image_expired", NULL, "the image is no longer stored");
  if (rc != BLOB_OK)
    return err_set(err, ERR_INTERNAL, "storage_error", NULL, "the image could not be read");
  return 0;
}

int core_quantity_arg(int64_t n) {
  return n < 1 ? -1 : n > CORE_MAX_QUANTITY ? CORE_MAX_QUANTITY + 1 : (int)n;
}

int core_percent_arg(int64_t n) { return n < 0 ? -1 : n > 100 ? 101 : (int)n; }
