/* core.h - the small API every dialect goes through.
 *
 * A dialect parses its own request shape into a core_gen_request, calls
 * core_submit / core_get_task / core_open_result, and renders what comes back
 * in its own shape. The core knows nothing of dialects: errors come back as
 * imgate_error values whose param names a core field (see core_field), which a
 * dialect renames to its own spelling. */
#ifndef IMGATE_CORE_H
#define IMGATE_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "config.h"
#include "core/engine.h"
#include "core/error.h"
#include "store/store.h"

/* Core field names used in imgate_error.param. */
#define CORE_FIELD_PROMPT "prompt"
#define CORE_FIELD_MODEL "model"
#define CORE_FIELD_ASPECT_RATIO "aspect_ratio"
#define CORE_FIELD_RESOLUTION "resolution"
#define CORE_FIELD_IMAGES "images"
#define CORE_FIELD_WEBHOOK "webhook_url"

typedef struct core core;

typedef struct core_gen_request {
  const char *model;        /* NULL = "nano-banana" */
  const char *prompt;
  const char *aspect_ratio; /* NULL = "auto" */
  const char *resolution;   /* NULL = the model's default */
  const char *webhook_url;  /* NULL = none */
  const char *const *images;/* each: https URL, data: URI, or bare base64 */
  size_t n_images;
} core_gen_request;

core *core_create(const imgate_config *cfg, store *st, blob *bl, engine *eng);
void core_free(core *c);

/* The account behind an Authorization header value. */
int core_authenticate(core *c, const char *authorization, store_account *out, imgate_error *err);

/* Validates, stores reference images, inserts the task (queued) and schedules
 * it. *out is the stored task (task_free it). */
int core_submit(core *c, const store_account *acct, const core_gen_request *req, task **out,
                imgate_error *err);

/* A task of this account (another account's task is ERR_NOT_FOUND too). */
int core_get_task(core *c, const store_account *acct, const char *task_id, task **out,
                  imgate_error *err);

/* A result image by its public token: metadata in *meta (task_result_clear it)
 * and the bytes in *obj (blob_object_release it). Unknown or expired: ERR_NOT_FOUND. */
int core_open_result(core *c, const char *token, task_result *meta, blob_object *obj,
                     imgate_error *err);

/* The configured public base URL, or "" when image URLs follow the Host header. */
const char *core_public_url(const core *c);

#endif
