/* api.h - route registration for each dialect, plus helpers they share.
 *
 * A dialect file (native.c, later openai.c, gemini.c, ...) parses requests
 * into core calls and renders answers in its own shape; it never talks to the
 * store, engine or providers directly. */
#ifndef IMGATE_API_H
#define IMGATE_API_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "core/core.h"
#include "core/error.h"
#include "core/retention.h"
#include "http/server.h"
#include "api/dialect.h"
#include "core/opsview.h"

/* The account's webhook secret: /api/account/webhook-secret (account.c),
 * registered with the native dialect's routes. */
void api_account_register(http_router *r, core *c);
/* A webhook payload for task t and event, in the shape of the dialect that
 * created it (t->dialect; the native one for an unknown name): JSON text,
 * malloc'd, or NULL. ctx is the core (the webhook dispatcher's renderer). */
char *api_render_webhook(void *ctx, const task *t, const char *event, int64_t now_ms);
/* The native dialect's webhook payload (native_render.c). */
char *api_native_webhook_payload(core *c, const task *t, const char *event, int64_t now_ms);
/* Result images: GET /files/{token}.{ext} (no auth: the token is the secret). */
void api_files_register(http_router *r, core *c);
/* Operators: GET /admin/providers and GET /metrics, with the admin token;
 * what they show is gathered by core/opsview.h (view is copied).
 * The returned context lives until api_admin_free, after the server stopped. */
typedef struct api_admin api_admin;
api_admin *api_admin_register(http_router *r, const opsview *view, const char *token);
void api_admin_free(api_admin *a);
/* Operators: accounts, keys and billing under /admin/accounts, /admin/keys
 * and /admin/ledger, with the admin token (docs/api-admin.md): the HTTP
 * face of `imgate admin`. Unlike a dialect it works on the store directly
 * (through core/accounts.h where the CLI does the same). The config is
 * copied (signup bonus, key limit, default limits, admin token); the
 * returned context lives until api_admin_accounts_free, after the server
 * stopped. */
typedef struct api_admin_accounts api_admin_accounts;
api_admin_accounts *api_admin_accounts_register(http_router *r, store *st,
                                                const imgate_config *cfg);
void api_admin_accounts_free(api_admin_accounts *a);
/* Liveness: GET /healthz. */
void api_health_register(http_router *r, core *c);

/* A refusal, in the shape of the dialect that owns the request's path
 * (dialect.h): the native one is {"error":{"code","message","param"}}, param
 * null when empty. api_server_error_hook is the HTTP layer's hook for the
 * refusals it raises itself (404, 405, 413, 408, ...). */
void api_reply_error(http_request *req, int status, const char *slug, const char *message,
                     const char *param);
void api_reply_core_error(http_request *req, int status, const imgate_error *err);
/* An error a core call returned (core_submit, core_get_task, ...), in the
 * shape of the path's dialect: the HTTP status of its code, Retry-After and
 * X-RateLimit-* for a rate limit (api_rate_limit_headers), and its field
 * under the dialect's own name (api_dialect.field_names). */
void api_reply_from_core(http_request *req, const imgate_error *err);
/* An error document as the answer, with status (takes doc). When doc is NULL
 * or cannot be encoded (text that is not UTF-8, no memory), fallback instead:
 * JSON text in the same shape that says less, so that the client still gets
 * the status and, in its own shape, what it can read; the failure is logged.
 * What every dialect's reply_error ends with. */
void api_reply_error_doc(http_request *req, int status, json_t *doc, const char *fallback);
/* The refusal shape {"error":{"code","message","param"}}, param null when
 * empty (a dialect's reply_error): the native dialect's, and the apistor
 * seeds' too. A message that is not UTF-8 is repaired (api_json_text). */
void api_error_shape_plain(http_request *req, int status, const imgate_error *err);
/* A slug that can be pasted into JSON as it is (a-z, 0-9, '_'). */
bool api_plain_slug(const char *slug);
/* For ERR_RATE_LIMITED: Retry-After, and X-RateLimit-Limit / X-RateLimit-Active
 * when a concurrency limit was hit. Nothing for other errors. */
void api_rate_limit_headers(http_request *req, const imgate_error *err);
void api_server_error_hook(http_request *req, int status, const char *slug, const char *message);

/* A JSON string for text that came from elsewhere (an upstream's message, a
 * stored task): bytes that are not well-formed UTF-8 become '?', so one bad
 * message cannot make a whole reply fail. NULL only when memory runs out. */
json_t *api_json_text(const char *s);

/* doc as compact JSON text (malloc'd), doc released either way; NULL when
 * doc is NULL or cannot be written. What every webhook renderer returns. */
char *api_json_take_text(json_t *doc);

/* Money as every reply spells it: exact decimal USD text ("10.500000"). */
json_t *api_json_usd(int64_t micros);
/* A time as RFC 3339 UTC text, or null for 0 ("not yet", "never"). */
json_t *api_json_time(int64_t unix_ms);

/* A model's prices as every model list shows them: {"1K": "0.025000", ...}
 * by resolution, or for a model priced by quality and size (GPT Image)
 * {"low": {"1024x1024": "0.011000", ...}, ...}. */
json_t *api_json_prices(const core_model_info *mi);
/* "resolution" or "quality_and_size": what a model's prices are keyed by. */
const char *api_priced_by(const core_model_info *mi);

/* The most a limit (max_concurrency, qps_per_key) may be set to, over HTTP
 * and with `imgate admin limits` alike; 0 means unlimited. */
#define API_LIMIT_MAX 1000000

/* The longest a request may wait for its task (Prefer: wait=N, ?wait=N),
 * as Replicate allows. */
#define API_MAX_WAIT_S 60

/* Seconds asked for by a "wait=N" preference in the Prefer header (RFC
 * 7240), clamped to 1..API_MAX_WAIT_S; 0 when there is none (or it is not a
 * positive number). Other preferences in the header are ignored. */
int api_prefer_wait(http_request *req);
/* The same for a query argument's value ("?wait=N"); 0 when absent or not a
 * positive number. */
int api_wait_seconds(const char *value);

/* Base of public URLs for this request: the configured public_url, else
 * http://<Host header>. Written into out without a trailing slash. */
void api_base_url(http_request *req, const core *c, char *out, size_t out_size);

/* An optional string member of a JSON body: *out is its text, or NULL when
 * absent or null. Present with another type: answers 400 invalid_type
 * naming the field (in the path's dialect's shape) and returns -1. */
int api_json_string(http_request *req, json_t *body, const char *field, const char **out);

/* A member listing reference images (https URLs, data: URIs or base64), as
 * every dialect but Gemini's takes them: absent or null is none (*n = 0);
 * else an array of at most max strings, which go to out (room for max; they
 * point into body). Otherwise answers 400 naming field, invalid_type (not an
 * array of strings) or too_many_images (more than max: max bounds out, the
 * core applies the model's own, lower limit), and returns -1. */
int api_json_image_list(http_request *req, json_t *body, const char *field, const char **out,
                        size_t max, size_t *n);

/* The output options as the native and OpenAI dialects spell them:
 * "output_format" (a string, or absent/null) and "output_compression" (a
 * whole number, or absent/null), into gr; the core checks the values. A
 * member of another type: answers 400 invalid_type naming it and returns -1. */
int api_json_output(http_request *req, json_t *body, core_gen_request *gr);

/* Submits gr for acct, as the path's dialect (its name is recorded on the
 * task, for its webhook payloads), with the request's Idempotency-Key and its
 * base URL (api_base_url) for the task's image links. 0 with *out (task_free
 * it) and *replayed; -1 once the core's refusal is answered
 * (api_reply_from_core). */
int api_submit(http_request *req, core *c, const store_account *acct, core_gen_request *gr,
               task **out, bool *replayed);

/* Task id of acct, or NULL once the core's refusal is answered (404 for no
 * such task, or another account's). task_free it. */
task *api_read_task(http_request *req, core *c, const store_account *acct, const char *id);

/* The catalog for a model list: a JSON array of item(c, mi) for each model,
 * in the catalog's order (an item that is NULL is left out); NULL once a 500
 * is answered (out of memory). */
json_t *api_model_list(http_request *req, core *c,
                       json_t *(*item)(core *c, const core_model_info *mi));

/* The base of the image links in a webhook payload, made without a request:
 * the configured public URL, else the host the task was submitted to, else
 * http://localhost; without a trailing slash. */
void api_webhook_base(const core *c, const task *t, char *out, size_t out_size);

/* Parses the body as a JSON object. On failure replies 400 (invalid_json or
 * invalid_request) in the default shape and returns NULL. Before parsing,
 * a look at the raw bytes refuses (400 invalid_request) bodies nesting more
 * than 64 levels or holding more than 100,000 values, which would make the
 * parser allocate many times the body's size. */
json_t *api_parse_json_object(http_request *req);

/* Authenticates the request's bearer key; on failure replies in the default
 * error shape and returns -1. Records the account for the access log. When
 * the route's guard (api_guard_key) has already done it, its account is
 * used without a second lookup. */
int api_authenticate(http_request *req, core *c, store_account *out);

/* The admin token check of the /admin routes: true when the request carries
 * "Authorization: Bearer TOKEN" (compared in constant time); else replies
 * 401 unauthorized with WWW-Authenticate and returns false. An empty token
 * never matches. */
bool api_require_admin_token(http_request *req, const char *token);

/* Route guard for routes that need an account key (ctx: the core): the key
 * is checked when the headers are in, so a client without a valid key gets
 * 401 before any of its body is read. Register such routes with
 * http_router_add_guarded(r, method, pattern, api_guard_key, handler, core). */
bool api_guard_key(http_request *req, void *ctx);

#endif
