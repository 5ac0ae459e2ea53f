/* core.h - the small API every dialect goes through.
 *
 * A dialect parses its own request shape into a core_gen_request, calls
 * core_submit / core_get_task / core_open_result, and renders what comes back
 * in its own shape. The core knows nothing of dialects: errors come back as
 * imgate_error values whose param names a core field (see core_field), which a
 * dialect renames to its own spelling. */
#ifndef IMGATE_CORE_H
#define IMGATE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "config.h"
#include "core/catalog.h"
#include "core/engine.h"
#include "core/error.h"
#include "core/events.h"
#include "store/store.h"

/* Core field names used in imgate_error.param. */
#define CORE_FIELD_PROMPT "prompt"
#define CORE_FIELD_MODEL "model"
#define CORE_FIELD_ASPECT_RATIO "aspect_ratio"
#define CORE_FIELD_RESOLUTION "resolution"
#define CORE_FIELD_QUALITY "quality"
#define CORE_FIELD_IMAGES "images"
#define CORE_FIELD_WEBHOOK "webhook_url"
#define CORE_FIELD_IDEMPOTENCY_KEY "idempotency_key" /* the Idempotency-Key header */

/* Longest Idempotency-Key accepted (the Stripe convention). */
#define CORE_IDEMPOTENCY_KEY_MAX 255

typedef struct core core;

typedef struct core_image_bytes {
  const uint8_t *data;
  size_t len;
} core_image_bytes;

typedef struct core_gen_request {
  const char *model;        /* NULL = "nano-banana" */
  const char *prompt;
  const char *aspect_ratio; /* NULL = "auto" */
  const char *resolution;   /* NULL = the model's default */
  /* "low", "medium", "high" or "auto" (NULL = "auto"): the quality of a
   * model priced by quality (GPT Image), sent upstream as asked. A model
   * priced by resolution (Gemini) has none: "auto" and NULL are taken,
   * anything else is refused (ERR_INVALID "invalid_quality"), since no
   * setting of it would change the image or the price. */
  const char *quality;
  const char *webhook_url;  /* NULL = none */
  const char *const *images;/* each: https URL, data: URI, or bare base64 */
  size_t n_images;
  /* Reference images as bytes (a multipart upload), after those above; the
   * format is told by the bytes, whatever the client called them. */
  const core_image_bytes *image_bytes;
  size_t n_image_bytes;
  int quantity;             /* images asked for, 1..CORE_MAX_QUANTITY; 0 = 1 */
  /* Delivery options (docs/delivery.md). */
  unsigned webhook_events;  /* TASK_WEBHOOK_* bits: optional events besides the final one */
  int deadline_s;           /* cancel the task if it is not final this many seconds after
                               submit; 0 = none (1..CORE_MAX_DEADLINE_S) */
  /* Who asked, for what comes later without a request (webhook payloads). */
  const char *dialect;      /* the dialect's name; NULL = "native" */
  const char *public_base;  /* scheme://host[:port] of the image links the client got */
  /* Admission: refuse (ERR_UNAVAILABLE "server_busy") rather than queue when
   * engine.max_queued tasks already wait for the engine. For a dialect whose
   * clients were told "busy" means "come back later" (seed 004's async mode);
   * the others queue whatever the depth. */
  bool refuse_when_busy;
  /* Output (docs/architecture.md, "Output formats"): the format the images
   * are delivered in, converted by imgate when the upstream made another;
   * NULL or "" = as the upstream made them. */
  const char *output_format;  /* "png", "jpeg", "webp" */
  /* The quality of a JPEG or WebP imgate writes, 0..100 (core_percent_arg);
   * only with output_format jpeg or webp. Unset: CORE_DEFAULT_OUTPUT_COMPRESSION. */
  int output_compression;
  bool output_compression_set;
  /* "auto", "opaque" or "transparent" (NULL = not given: auto). Only a model
   * with catalog transparency (GPT Image) makes transparent backgrounds, and
   * only in a format with alpha: with output_format jpeg it is refused
   * (ERR_INVALID "invalid_background"), as OpenAI refuses it. */
  const char *background;
  /* An edit mask: a PNG with an alpha channel whose transparent pixels mark
   * what to change in the first reference image. Either text (base64 or a
   * data: URI, as an inline reference image; no URL: it is checked at
   * submit) or bytes (a multipart upload); not both. Told a PNG by its
   * bytes, at most limits.max_image_bytes, with an alpha channel (IHDR
   * colour type 4 or 6), of the first reference's pixel size when that is
   * inline and its header says; it needs a reference image and a model with
   * catalog transparency. Refusals: ERR_INVALID "invalid_mask",
   * ERR_TOO_LARGE "image_too_large", param CORE_FIELD_MASK. Not a
   * reference image: it is not counted among them, nor priced. */
  const char *mask;
  core_image_bytes mask_bytes; /* .data NULL = none */
} core_gen_request;

#define CORE_FIELD_BACKGROUND "background"
#define CORE_FIELD_MASK "mask"

#define CORE_FIELD_OUTPUT_FORMAT "output_format"
#define CORE_FIELD_OUTPUT_COMPRESSION "output_compression"
/* OpenAI's default for output_compression: the best quality. */
#define CORE_DEFAULT_OUTPUT_COMPRESSION 100
/* A client's percentage as core_gen_request takes it: out of 0..100 stays
 * out of range in an int (-1 below, 101 above), for core_submit to refuse
 * with its own message. */
int core_percent_arg(int64_t n);

/* The most images one task may ask for. Each is paid for only when it is
 * delivered: a task that gets 3 of 4 is charged for 3. */
#define CORE_MAX_QUANTITY 10
#define CORE_FIELD_QUANTITY "quantity"
/* A client's image count as core_gen_request.quantity takes it: a value out
 * of range stays out of range in an int (-1 below 1, CORE_MAX_QUANTITY + 1
 * above), so that core_submit refuses it with its own message. */
int core_quantity_arg(int64_t n);

/* Quantity for dialects whose clients are promised clamping rather than a
 * refusal (seed 004): asked truncated to a whole number and brought into
 * 1..limits.clamped_quantity_max (NaN and anything below 1: 1). */
int core_clamp_quantity(const core *c, double asked);

/* The longest deadline a task may have: a day. */
#define CORE_MAX_DEADLINE_S 86400
#define CORE_FIELD_DEADLINE "deadline"
#define CORE_FIELD_WEBHOOK_EVENTS "webhook_events"

/* ev: where committed task changes are published (the engine publishes its
 * own there too); the core does not own it. */
core *core_create(const imgate_config *cfg, store *st, blob *bl, engine *eng, events *ev);
void core_free(core *c);

/* The account behind an Authorization header value. */
int core_authenticate(core *c, const char *authorization, store_account *out, imgate_error *err);

/* Validates, stores reference images, inserts the task (queued) and schedules
 * it. *out is the stored task (task_free it).
 *
 * idempotency_key (NULL = none): 1..CORE_IDEMPOTENCY_KEY_MAX printable ASCII
 * characters (0x20..0x7e), else ERR_INVALID "invalid_idempotency_key". The
 * account remembers a key for idempotency.ttl_s from the submit that stored
 * its task, with the SHA-256 of the request (core_request_hash). Submitting
 * the key again within that time with the same request creates nothing and
 * holds nothing: *out is the first task as stored now, and *replayed (may be
 * NULL) is set, for the dialect to answer as it answered the first time.
 * With a different request it is ERR_UNPROCESSABLE "idempotency_key_reused".
 * Only a submit that stores its task consumes the key: one refused for any
 * reason (validation, 402, 429, a store failure) leaves it free, so the
 * client may retry under the same key.
 *
 * While the store is broken (core_health false) a valid request is refused
 * with ERR_UNAVAILABLE "store_unavailable", before anything is written: its
 * task and its hold would land where no restart finds them. */
int core_submit(core *c, const store_account *acct, const core_gen_request *req,
                const char *idempotency_key, task **out, bool *replayed, imgate_error *err);

/* What identifies a request for its idempotency key: SHA-256, as 64 hex, of
 * a canonical form of the core fields exactly as the dialect passed them
 * (before defaults apply: an absent field and its default are different
 * requests, so a changed default never turns a replay into another task).
 * In order: model, prompt, aspect_ratio, resolution, webhook_url, each as
 * absent or as its length and bytes; then the number of reference images
 * and each reference as its length and bytes (URL, data URI or base64 as
 * given, in order); then, each only when given (so that older requests
 * hash as they did), uploads, delivery options, quantity, the output format
 * and compression, the quality, the background and the mask (its text as
 * given, or its uploaded bytes). Nothing else counts: JSON layout, member
 * order and fields the dialect ignores do not. Returns false when memory runs
 * out. */
bool core_request_hash(const core_gen_request *req, char out[65]);

/* True when key is an acceptable Idempotency-Key (see core_submit). */
bool core_idempotency_key_valid(const char *key);

/* A task of this account (another account's task is ERR_NOT_FOUND too). */
int core_get_task(core *c, const store_account *acct, const char *task_id, task **out,
                  imgate_error *err);

/* The file name a result image is published under: its token and the
 * extension of the stored object ("3f9a....png"). False when it does not fit
 * in size bytes. */
bool core_result_file_name(const task_result *r, char *out, size_t size);

/* A result image by its file name, exactly as core_result_file_name gives it:
 * metadata in *meta (task_result_clear it) and the bytes in *obj
 * (blob_object_release it). Unknown, expired, or the right token with another
 * extension or none (TOKEN.jpg for a PNG would lie about the type):
 * ERR_NOT_FOUND. */
int core_open_result(core *c, const char *name, task_result *meta, blob_object *obj,
                     imgate_error *err);

/* The bytes of one of a task's result images (*data malloc'd, free it), for
 * dialects that answer images inline (base64 in JSON). A purged image:
 * ERR_NOT_FOUND. */
int core_read_result(core *c, const task_result *r, uint8_t **data, size_t *len,
                     imgate_error *err);

/* Whether the server can take work: today, whether its store is healthy
 * (store_ops.health: the database file is still the one opened, and no
 * operation failed in a way that leaves its state in doubt). On false,
 * reason (may be NULL) says why, for operators: /healthz shows it. Cheap
 * (one stat(2)): fit for a health endpoint polled by load balancers. */
bool core_health(core *c, char *reason, size_t reason_size);

/* A watch on a task: fn(ctx) runs after each committed change of it, on the
 * thread that committed it, so it must be quick (wake a waiting request).
 * The watcher then reads the task again. Watch first, then read: a change
 * just before is in the read, one just after calls fn. NULL when memory runs
 * out. After core_unwatch returns, fn is not running and will not run. */
typedef struct core_watch core_watch;
core_watch *core_watch_task(core *c, const char *task_id, void (*fn)(void *ctx), void *ctx);
void core_unwatch(core *c, core_watch *w);

/* Cancels a task of this account: a queued one at once, a running one by
 * aborting its run (it ends canceled within moments: when its upstream call
 * is aborted or answers). *out (task_free it) is the task after the call:
 * canceled, or running with cancel_requested. A final task: ERR_CONFLICT
 * "task_final" (and *out the task, for the dialect to show its state).
 * Another account's task: ERR_NOT_FOUND. */
int core_cancel(core *c, const store_account *acct, const char *task_id, task **out,
                imgate_error *err);

/* The account's tasks, newest first, at most limit (1..CORE_MAX_PAGE), after
 * the task `after` (a cursor: the last uid of the previous page; NULL for
 * the first page). *out is a malloc'd array of *n tasks (core_tasks_free).
 * *more: tasks come after this page. An `after` that is not one of the
 * account's tasks: ERR_INVALID "invalid_cursor". */
#define CORE_MAX_PAGE 100
int core_list_tasks(core *c, const store_account *acct, const char *after, int limit,
                    task ***out, size_t *n, bool *more, imgate_error *err);
void core_tasks_free(task **tasks, size_t n);

/* One catalog model as clients see it: whether this server serves it now,
 * and its prices (micro-dollars per image by resolution, or for GPT Image
 * by quality and size; the surcharge per reference image). */
#define CORE_MAX_PRICES 12
typedef struct core_model_info {
  const catalog_model *model;
  bool available;
  bool by_quality; /* priced by quality and size (GPT Image), else by resolution */
  struct {
    const char *name; /* "1K", ... or a quality: "low", "medium", "high" */
    const char *size; /* by quality: "1024x1024", "1536x1024", "1024x1536"; else NULL */
    int64_t micros;
  } prices[CORE_MAX_PRICES];
  size_t n_prices;
  int64_t reference_micros;
  int64_t default_micros;
} core_model_info;

/* Every catalog model, in display order; *out is malloc'd (free it).
 * default_micros (in core_model_info) is what one image holds for a
 * request that names no resolution, quality or size (for GPT Image the
 * largest price of its grid); -1 when that is not priced. */
int core_models(core *c, core_model_info **out, size_t *n);

/* The task's events with seq > after_seq (task.h: task_event), oldest first;
 * *out is malloc'd. The task must be the account's (ERR_NOT_FOUND). */
int core_task_events(core *c, const store_account *acct, const char *task_id, int after_seq,
                     task_event **out, size_t *n, imgate_error *err);

/* How far a running task has come, as an estimate from how long its model
 * (on the provider running it) has taken lately: 0..99, or -1 when nothing
 * is known yet. Queued: 0; final: 100. Not a promise: an upstream gives no
 * progress of its own. */
int core_progress_percent(core *c, const task *t, int64_t now_ms);

/* The account's webhook secrets (one is made on first use). */
int core_webhook_secret(core *c, const store_account *acct, store_webhook_secret *out,
                        imgate_error *err);
/* A new secret; the old one also signs for webhooks.rotation_window_s. */
int core_webhook_rotate(core *c, const store_account *acct, store_webhook_secret *out,
                        imgate_error *err);
/* Sends the task's final webhook again (same webhook-id). ERR_NOT_FOUND
 * when the task is not the account's or has no delivery (not final yet, or
 * no webhook_url). */
int core_webhook_resend(core *c, const store_account *acct, const char *task_id,
                        imgate_error *err);
/* Every attempt of the task's webhook deliveries, oldest first (*out malloc'd). */
int core_webhook_attempts(core *c, const char *task_id, store_webhook_attempt **out, size_t *n);
/* What the core tells the webhook dispatcher. */
typedef enum {
  CORE_WEBHOOK_DUE,             /* a delivery became due (a resend) */
  CORE_WEBHOOK_SECRETS_CHANGED, /* an account's secret was rotated */
} core_webhook_news;

/* Who to tell (the dispatcher), set once at start; NULL: nobody. */
void core_set_webhook_notify(core *c, void (*notify)(void *ctx, core_webhook_news what),
                             void *ctx);

/* How often a quiet event stream sends a keep-alive comment (ms). */
int core_stream_keepalive_ms(const core *c);

/* Credits, for the dialects that count money in them (seed 004): one credit
 * is billing.credit_micros. Money stays micro-dollars underneath; credits
 * are only a way to show it, rounded so that a client's arithmetic never
 * promises more than there is: CORE_CREDITS_DOWN for what an account has
 * (a balance shown as 99 covers 99 credits' worth), CORE_CREDITS_UP for
 * what something costs (a $0.0095 image shows as 1 credit at $0.01).
 * Negative amounts round the same way on the number line. */
typedef enum { CORE_CREDITS_DOWN, CORE_CREDITS_UP } core_credit_rounding;
int64_t core_credits(const core *c, int64_t micros, core_credit_rounding rounding);

/* The account's available balance now (micro-dollars), read from the store
 * (the store_account a request authenticated with is as old as the request). */
int core_balance(core *c, int64_t account_id, int64_t *available_micros, imgate_error *err);

/* The configured public base URL, or "" when image URLs follow the Host header. */
const char *core_public_url(const core *c);

#endif
