/* nananobanana.c - the dialect of seed 004 (nananobanana.com's API): code
 * written for it works after changing only the base URL and the key.
 *
 *   POST /api/v1/generate       {prompt, selectedModel, referenceImageUrls,
 *                                aspectRatio, quantity, mode}
 *       mode "sync" (default)   -> {success, generationId, imageUrls, creditsUsed,
 *                                   remainingCredits} once the images exist
 *       mode "stream"           -> server-sent events: data: {"type":"status",
 *                                  "message","progress"} ... then "complete" or "error"
 *       mode "async"            -> {success, async, generationId, message, creditsUsed,
 *                                   remainingCredits} at once
 *   GET  /api/v1/generate?id=   -> {data:{id, prompt, outputImageUrls, modelUsed,
 *                                  processingStatus, creditsUsed, createdAt, errorMessage}}
 *   GET  /api/v1/models         -> {data:[{name, displayName, creditsCost, ...}]}, no key
 *   GET  /api/v1/credits        -> {data:{credits}}
 *
 * Money is shown in credits (core_credits: billing.credit_micros each; costs
 * rounded up, balances down). Errors are {"error": message, "type": code},
 * 429 adding "limit" and "active", for every refusal under /api/v1/ (the seam
 * sends those raised before a handler here). docs/api-nananobanana.md says
 * what is taken, what is not, and why. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/await.h"
#include "api/follow.h"
#include "api/sse.h"
#include "util/timeutil.h"

/* A synchronous generation waits this long at most (the default retry
 * deadline: by then the task has ended). */
#define NNB_SYNC_WAIT_S 300
#define NNB_PROGRESS_MS 2000 /* between progress estimates of a stream */
#define NNB_MAX_REFERENCES 16 /* more is refused here; the core's own cap is lower */

static const char *const SAFETY_MESSAGE = "Content safety check failed";

/* --- errors ---------------------------------------------------------------- */

/* {"error": message, "type": code}: the seed's 429 shape, used for every
 * refusal; a concurrency refusal adds "limit" and "active" and speaks the
 * seed's words; "param" names the request field at fault, when one is. */
static void nnb_error_shape(http_request *req, int status, const imgate_error *err) {
  /* The seed's 503 means "busy, come back": say when. Only the core says
   * that (ERR_UNAVAILABLE: a full queue, the store unavailable). */
  if (err->code == ERR_UNAVAILABLE) http_reply_header(req, "Retry-After", "1");
  bool concurrency = status == 429 && err->limit > 0;
  const char *message = concurrency ? "Too many concurrent API requests for this account"
                                    : err->message;
  json_t *doc = json_pack("{s:o, s:s}", "error", api_json_text(message), "type",
                          err->slug[0] ? err->slug : "error");
  if (doc && concurrency) {
    json_object_set_new(doc, "limit", json_integer(err->limit));
    json_object_set_new(doc, "active", json_integer(err->active));
  }
  if (doc && err->param[0]) json_object_set_new(doc, "param", json_string(err->param));
  char fallback[160]; /* text that cannot be encoded: still the shape, and the status */
  snprintf(fallback, sizeof fallback,
           "{\"error\":\"the error could not be described\",\"type\":\"%s\"}",
           api_plain_slug(err->slug) ? err->slug : "internal_error");
  api_reply_error_doc(req, status, doc, fallback);
}

/* The core names fields its own way; this dialect's clients know these. */
static const api_field_name nnb_fields[] = {
    {CORE_FIELD_MODEL, "selectedModel"},
    {CORE_FIELD_IMAGES, "referenceImageUrls"},
    {CORE_FIELD_ASPECT_RATIO, "aspectRatio"},
    {CORE_FIELD_IDEMPOTENCY_KEY, "Idempotency-Key"},
    {NULL, NULL},
};

static int bad_field(http_request *req, const char *field, const char *slug, const char *msg) {
  api_reply_error(req, 400, slug, msg, field);
  return -1;
}

/* --- rendering --------------------------------------------------------------- */

/* The task's image URLs, as a JSON array. */
static json_t *image_urls(const task *t, const char *base) {
  json_t *urls = json_array();
  for (size_t i = 0; urls && i < t->n_results; i++) {
    char name[160];
    if (!core_result_file_name(&t->results[i], name, sizeof name)) continue;
    char url[800];
    snprintf(url, sizeof url, "%s/files/%s", base, name);
    json_array_append_new(urls, json_string(url));
  }
  return urls;
}

/* Credits the task stands for: what it was charged once final, what it
 * holds while in flight (the seed takes them at submit). */
static json_int_t task_credits(core *c, const task *t) {
  int64_t micros = task_state_is_final(t->state) ? t->cost_charged_micros : t->cost_held_micros;
  return (json_int_t)core_credits(c, micros, CORE_CREDITS_UP);
}

/* The account's balance now, in credits (rounded down); 0 when it cannot be
 * read (never a number that overstates it). */
static json_int_t remaining_credits(core *c, const task *t) {
  int64_t micros = 0;
  imgate_error err = {0};
  if (core_balance(c, t->account_id, &micros, &err) < 0) return 0;
  return (json_int_t)core_credits(c, micros, CORE_CREDITS_DOWN);
}

static const char *processing_status(task_state s) {
  switch (s) {
  case TASK_SUCCEEDED: return "completed";
  case TASK_FAILED:
  case TASK_MODERATED:
  case TASK_CANCELED: return "failed";
  default: return "processing";
  }
}

/* Why a task made no images, in words for people. */
static const char *failure_message(const task *t) {
  if (t->state == TASK_MODERATED) return SAFETY_MESSAGE;
  if (t->error_message && *t->error_message) return t->error_message;
  return t->error_code ? t->error_code : "the image could not be made";
}

/* The generation record, as GET /api/v1/generate?id= shows it (and its
 * webhook payload). */
static json_t *render_record(core *c, const task *t, const char *base) {
  bool failed = strcmp(processing_status(t->state), "failed") == 0;
  json_t *data = json_pack(
      "{s:s, s:o, s:o, s:s, s:s, s:I, s:o, s:o}", "id", t->id, "prompt", api_json_text(t->prompt),
      "outputImageUrls", image_urls(t, base), "modelUsed", t->model, "processingStatus",
      processing_status(t->state), "creditsUsed", task_credits(c, t), "createdAt",
      api_json_time(t->created_ms), "errorMessage",
      failed ? api_json_text(failure_message(t)) : json_null());
  return data ? json_pack("{s:o}", "data", data) : NULL;
}

/* The async answer (and a sync one whose wait ran out). */
static json_t *render_accepted(core *c, const task *t) {
  char message[160];
  snprintf(message, sizeof message,
           "Generation started. Use GET /api/v1/generate?id=%s to poll for results.", t->id);
  return json_pack("{s:b, s:b, s:s, s:s, s:I, s:I}", "success", 1, "async", 1, "generationId",
                   t->id, "message", message, "creditsUsed", task_credits(c, t),
                   "remainingCredits", remaining_credits(c, t));
}

/* The sync answer of a final task: images, the seed's "warning" for a
 * refused prompt (200, as the seed answers it), else an error. */
static void reply_final(http_request *req, core *c, const task *t) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  if (t->state == TASK_SUCCEEDED && t->n_results > 0) {
    http_reply_json(req, 200,
                    json_pack("{s:b, s:s, s:o, s:I, s:I}", "success", 1, "generationId", t->id,
                              "imageUrls", image_urls(t, base), "creditsUsed",
                              task_credits(c, t), "remainingCredits",
                              remaining_credits(c, t)));
    return;
  }
  if (t->state == TASK_MODERATED) {
    snprintf(req->log_error, sizeof req->log_error, "moderated");
    http_reply_json(req, 200,
                    json_pack("{s:b, s:b, s:s, s:s, s:I, s:I}", "success", 0, "warning", 1,
                              "generationId", t->id, "message", SAFETY_MESSAGE, "creditsUsed",
                              task_credits(c, t), "remainingCredits",
                              remaining_credits(c, t)));
    return;
  }
  imgate_error e = {0};
  snprintf(e.slug, sizeof e.slug, "%s", t->error_code ? t->error_code : "generation_failed");
  snprintf(e.message, sizeof e.message, "%s", failure_message(t));
  api_reply_core_error(req, t->state == TASK_CANCELED ? 409 : 500, &e);
}

static void sync_ready(http_request *req, core *c, const task *t, bool final,
                       const imgate_error *err, void *arg) {
  (void)arg;
  if (!t) api_reply_from_core(req, err);
  else if (final) reply_final(req, c, t);
  else http_reply_json(req, 200, render_accepted(c, t)); /* to poll: never paid twice */
}

/* --- stream mode --------------------------------------------------------------- */

/* A stream of one task's progress: the follower's state (follow.h). */
typedef struct nnb_stream {
  char base[600];    /* of the image links */
  int last_progress; /* the last progress sent */
  bool processing;   /* "Processing..." was sent */
} nnb_stream;

static bool write_status(http_request *req, const char *message, int progress) {
  return api_sse_event(req, NULL, NULL,
                       json_pack("{s:s, s:s, s:i}", "type", "status", "message", message,
                                 "progress", progress));
}

/* The last event: the images, or why there are none. */
static void write_final(http_request *req, const api_follow *f, const task *t) {
  const nnb_stream *s = f->state;
  json_int_t used = task_credits(f->c, t), left = remaining_credits(f->c, t);
  if (t->state == TASK_SUCCEEDED && t->n_results > 0) {
    api_sse_event(req, NULL, NULL,
                  json_pack("{s:s, s:s, s:i, s:{s:b, s:s, s:o, s:I, s:I}}", "type", "complete",
                            "message", "Generation complete", "progress", 100, "data",
                            "success", 1, "generationId", t->id, "imageUrls",
                            image_urls(t, s->base), "creditsUsed", used, "remainingCredits",
                            left));
  } else {
    const char *why = failure_message(t);
    json_t *data = json_pack("{s:b, s:s, s:o, s:I, s:I}", "success", 0, "generationId", t->id,
                             "error", api_json_text(why), "creditsUsed", used,
                             "remainingCredits", left);
    if (data && t->state == TASK_MODERATED) json_object_set_new(data, "warning", json_true());
    api_sse_event(req, NULL, NULL,
                  json_pack("{s:s, s:o, s:i, s:o}", "type", "error", "message",
                            api_json_text(why), "progress", s->last_progress, "data", data));
  }
  http_stream_end(req);
}

/* Looks at the task: true when the stream has ended. */
static bool stream_look(http_request *req, api_follow *f, bool tick) {
  nnb_stream *s = f->state;
  task *t = NULL;
  imgate_error err = {0};
  if (api_follow_read(f, &t, &err) < 0) {
    api_sse_event(req, NULL, NULL,
                  json_pack("{s:s, s:o, s:i, s:{s:b, s:o}}", "type", "error", "message",
                            api_json_text(err.message), "progress", s->last_progress, "data",
                            "success", 0, "error", api_json_text(err.message)));
    http_stream_end(req);
    return true;
  }
  bool ended = task_state_is_final(t->state);
  if (ended) {
    write_final(req, f, t);
  } else if (t->state == TASK_RUNNING) {
    /* An estimate from how long the model has taken lately (the upstreams
     * report none), never backwards, never 100 before the end. */
    int pct = core_progress_percent(f->c, t, time_now_ms());
    if (!s->processing || pct > s->last_progress) {
      if (pct > s->last_progress) s->last_progress = pct;
      s->processing = true;
      write_status(req, "Processing...", s->last_progress);
    } else if (tick) {
      api_sse_keepalive(req);
    }
  } else if (tick) {
    api_sse_keepalive(req);
  }
  task_free(t);
  return ended;
}

static int64_t nnb_stream_look(http_request *req, api_follow *f, api_follow_why why) {
  nnb_stream *s = f->state;
  if (why == API_FOLLOW_STOPPING || why == API_FOLLOW_OVER) {
    /* The task goes on; the client finds it with GET /api/v1/generate?id=. */
    http_stream_end(req);
    return API_FOLLOW_DONE;
  }
  /* A stream that cannot be woken (UNWATCHED) still ends on its ticks. */
  if (why == API_FOLLOW_FIRST || why == API_FOLLOW_UNWATCHED) {
    api_sse_start(req);
    write_status(req, "Starting generation...", 0);
  }
  if (stream_look(req, f, why == API_FOLLOW_TICK)) return API_FOLLOW_DONE;
  return s->processing ? NNB_PROGRESS_MS : core_stream_keepalive_ms(f->c);
}

static void start_stream(http_request *req, core *c, const store_account *acct, const task *t) {
  nnb_stream s = {.last_progress = 0};
  api_base_url(req, c, s.base, sizeof s.base);
  if (!api_follow_start(req, c, acct, t->id, 0, nnb_stream_look, &s, sizeof s))
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
}

/* --- handlers ---------------------------------------------------------------- */

typedef enum { MODE_SYNC, MODE_STREAM, MODE_ASYNC } nnb_mode;

static int parse_mode(http_request *req, json_t *body, nnb_mode *mode) {
  const char *m;
  if (api_json_string(req, body, "mode", &m) < 0) return -1;
  *mode = MODE_SYNC;
  if (!m || strcmp(m, "sync") == 0) return 0;
  if (strcmp(m, "stream") == 0) *mode = MODE_STREAM;
  else if (strcmp(m, "async") == 0) *mode = MODE_ASYNC;
  else return bad_field(req, "mode", "invalid_mode", "mode must be sync, stream or async");
  return 0;
}

static void handle_generate(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  core_gen_request gr = {0};
  const char *aspect = NULL;
  const char *images[NNB_MAX_REFERENCES];
  nnb_mode mode;
  if (api_json_string(req, body, "prompt", &gr.prompt) < 0 ||
      api_json_string(req, body, "selectedModel", &gr.model) < 0 ||
      api_json_string(req, body, "aspectRatio", &aspect) < 0 || parse_mode(req, body, &mode) < 0 ||
      api_json_image_list(req, body, "referenceImageUrls", images, NNB_MAX_REFERENCES,
                          &gr.n_images) < 0)
    goto done;
  if (!gr.prompt) {
    bad_field(req, "prompt", "missing_field", "prompt is required");
    goto done;
  }
  gr.images = images;
  /* The seed's "default" is the model's own choice: imgate's auto. */
  gr.aspect_ratio = aspect && strcmp(aspect, "default") != 0 ? aspect : NULL;
  json_t *q = json_object_get(body, "quantity");
  if (q && !json_is_null(q)) {
    if (!json_is_number(q)) {
      bad_field(req, "quantity", "invalid_type", "quantity must be a number");
      goto done;
    }
    /* Out of range is clamped, not refused: the seed promises it. */
    gr.quantity = core_clamp_quantity(c, json_number_value(q));
  }
  gr.refuse_when_busy = mode == MODE_ASYNC; /* the seed's 503: async mode only */

  task *t = NULL;
  bool replayed = false;
  if (api_submit(req, c, &acct, &gr, &t, &replayed) < 0) goto done;
  if (replayed) http_reply_header(req, "Idempotent-Replayed", "true");
  switch (mode) {
  case MODE_ASYNC: http_reply_json(req, 200, render_accepted(c, t)); break;
  case MODE_STREAM: start_stream(req, c, &acct, t); break;
  case MODE_SYNC: api_await_task(req, c, &acct, t, NNB_SYNC_WAIT_S, sync_ready, NULL, 0); break;
  }
  task_free(t);
done:
  json_decref(body);
}

static void handle_record(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  const char *id = http_query_get(req, "id");
  if (!id || !*id) {
    api_reply_error(req, 400, "missing_field", "id is required (GET /api/v1/generate?id=...)",
                    "id");
    return;
  }
  task *t = api_read_task(req, c, &acct, id);
  if (!t) return;
  char base[600];
  api_base_url(req, c, base, sizeof base);
  http_reply_json(req, 200, render_record(c, t, base));
  task_free(t);
}

/* A model as the seed lists it: only those on offer, with a price. */
static json_t *render_model(core *c, const core_model_info *info) {
  const catalog_model *m = info->model;
  if (!info->available || info->default_micros < 0) return NULL;
  bool ratios = m->aspect_ratios[0] && m->aspect_ratios[1]; /* more than "auto" */
  return json_pack("{s:s, s:s, s:I, s:b, s:b, s:b}", "name", m->name, "displayName",
                   m->display_name, "creditsCost",
                   (json_int_t)core_credits(c, info->default_micros, CORE_CREDITS_UP),
                   "supportsImageInput", m->max_reference_images > 0, "supportsAspectRatio",
                   ratios, "requiresPro", 0);
}

/* The catalog as the seed lists it; no key needed (the seed's rule). */
static void handle_models(http_request *req, void *ctx) {
  json_t *list = api_model_list(req, ctx, render_model);
  if (list) http_reply_json(req, 200, json_pack("{s:o}", "data", list));
}

static void handle_credits(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  /* The balance read when the key was checked: this very request's view. */
  http_reply_json(req, 200,
                  json_pack("{s:{s:I}}", "data", "credits",
                            (json_int_t)core_credits(c, acct.balance_micros, CORE_CREDITS_DOWN)));
}

/* Webhook payloads of tasks made here (the seed has no webhooks; a task
 * gets one only through another way in): the record as GET shows it. */
static char *nnb_webhook(core *c, const task *t, const char *event, int64_t now_ms) {
  (void)event;
  (void)now_ms;
  char base[600];
  api_webhook_base(c, t, base, sizeof base);
  json_t *doc = render_record(c, t, base);
  return api_json_take_text(doc);
}

static void nnb_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/api/v1/generate", api_guard_key, handle_generate, c);
  http_router_add_guarded(r, "GET", "/api/v1/generate", api_guard_key, handle_record, c);
  http_router_add(r, "GET", "/api/v1/models", handle_models, c);
  http_router_add_guarded(r, "GET", "/api/v1/credits", api_guard_key, handle_credits, c);
}

/* Seeds 001/002's longer /api/v1/images/nanobanana/ will belong to their own
 * dialect: the seam picks the longest prefix. */
static const char *const nnb_prefixes[] = {"/api/v1/", NULL};

const api_dialect api_nananobanana_dialect = {
    .name = "nananobanana",
    .prefixes = nnb_prefixes,
    .register_routes = nnb_register,
    .read_key = api_read_bearer,
    .reply_error = nnb_error_shape,
    .field_names = nnb_fields,
    .render_webhook = nnb_webhook,
};
