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
#include "util/ids.h"
#include "util/timeutil.h"

/* A synchronous generation waits this long at most (the default retry
 * deadline: by then the task has ended). */
#define NNB_SYNC_WAIT_S 300
#define NNB_PROGRESS_MS 2000 /* between progress estimates of a stream */
#define NNB_MAX_REFERENCES 16 /* more is refused here; the core's own cap is lower */

static const char *const SAFETY_MESSAGE = "Content safety check failed";

/* --- errors ---------------------------------------------------------------- */

/* The core names fields its own way; this dialect's clients know these. */
static const char *nnb_field(const char *core_param) {
  if (strcmp(core_param, CORE_FIELD_MODEL) == 0) return "selectedModel";
  if (strcmp(core_param, CORE_FIELD_IMAGES) == 0) return "referenceImageUrls";
  if (strcmp(core_param, CORE_FIELD_ASPECT_RATIO) == 0) return "aspectRatio";
  if (strcmp(core_param, CORE_FIELD_IDEMPOTENCY_KEY) == 0) return "Idempotency-Key";
  return core_param;
}

/* {"error": message, "type": code}: the seed's 429 shape, used for every
 * refusal; a concurrency refusal adds "limit" and "active" and speaks the
 * seed's words; "param" names the request field at fault, when one is. */
static void nnb_error_shape(http_request *req, int status, const imgate_error *err) {
  bool concurrency = status == 429 && err->limit > 0;
  const char *message = concurrency ? "Too many concurrent API requests for this account"
                                    : err->message;
  json_t *doc = json_pack("{s:o, s:s}", "error", api_json_text(message), "type",
                          err->slug[0] ? err->slug : "error");
  if (doc && concurrency) {
    json_object_set_new(doc, "limit", json_integer(err->limit));
    json_object_set_new(doc, "active", json_integer(err->active));
  }
  if (doc && err->param[0]) json_object_set_new(doc, "param", json_string(nnb_field(err->param)));
  if (!doc) { /* text that cannot be encoded: still the shape, and the status */
    char body[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":\"the error could not be described\",\"type\":\"%s\"}",
                     api_plain_slug(err->slug) ? err->slug : "internal_error");
    http_reply_bytes(req, status, "application/json", body, (size_t)n);
    return;
  }
  http_reply_json(req, status, doc);
}

static void reply_core_error(http_request *req, const imgate_error *err) {
  api_rate_limit_headers(req, err);
  /* The seed's 503 means "busy, come back": say when. */
  if (err->code == ERR_UNAVAILABLE) http_reply_header(req, "Retry-After", "1");
  api_reply_core_error(req, err_http_status(err->code), err);
}

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
  if (!t) reply_core_error(req, err);
  else if (final) reply_final(req, c, t);
  else http_reply_json(req, 200, render_accepted(c, t)); /* to poll: never paid twice */
}

/* --- stream mode --------------------------------------------------------------- */

/* A stream of one task's progress; lives from http_wait to stream_end. */
typedef struct nnb_stream {
  core *c;
  store_account acct;
  char id[IDS_UUID_LEN + 1];
  char base[600];
  int last_progress; /* the last progress sent */
  bool processing;   /* "Processing..." was sent */
  http_waker *waker;
  core_watch *watch;
} nnb_stream;

/* One event: a data line only, as the seed sends them (a named event would
 * not reach a browser's EventSource.onmessage). Takes doc. */
static bool write_data(http_request *req, json_t *doc) {
  char *text = api_json_take_text(doc);
  if (!text) return false;
  bool ok = http_stream_write(req, "data: ", 6) && http_stream_write(req, text, strlen(text)) &&
            http_stream_write(req, "\n\n", 2);
  free(text);
  return ok;
}

static bool write_status(http_request *req, const char *message, int progress) {
  return write_data(req, json_pack("{s:s, s:s, s:i}", "type", "status", "message", message,
                                   "progress", progress));
}

/* The last event: the images, or why there are none. */
static void write_final(http_request *req, nnb_stream *s, const task *t) {
  json_int_t used = task_credits(s->c, t), left = remaining_credits(s->c, t);
  if (t->state == TASK_SUCCEEDED && t->n_results > 0) {
    write_data(req, json_pack("{s:s, s:s, s:i, s:{s:b, s:s, s:o, s:I, s:I}}", "type", "complete",
                              "message", "Generation complete", "progress", 100, "data",
                              "success", 1, "generationId", t->id, "imageUrls",
                              image_urls(t, s->base), "creditsUsed", used,
                              "remainingCredits", left));
  } else {
    const char *why = failure_message(t);
    json_t *data = json_pack("{s:b, s:s, s:o, s:I, s:I}", "success", 0, "generationId", t->id,
                             "error", api_json_text(why), "creditsUsed", used,
                             "remainingCredits", left);
    if (data && t->state == TASK_MODERATED) json_object_set_new(data, "warning", json_true());
    write_data(req, json_pack("{s:s, s:o, s:i, s:o}", "type", "error", "message",
                              api_json_text(why), "progress", s->last_progress, "data", data));
  }
  http_stream_end(req);
}

/* Looks at the task: true when the stream has ended. */
static bool stream_look(http_request *req, nnb_stream *s, bool tick) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(s->c, &s->acct, s->id, &t, &err) < 0) {
    write_data(req, json_pack("{s:s, s:o, s:i, s:{s:b, s:o}}", "type", "error", "message",
                              api_json_text(err.message), "progress", s->last_progress, "data",
                              "success", 0, "error", api_json_text(err.message)));
    http_stream_end(req);
    return true;
  }
  bool ended = task_state_is_final(t->state);
  if (ended) {
    write_final(req, s, t);
  } else if (t->state == TASK_RUNNING) {
    /* An estimate from how long the model has taken lately (the upstreams
     * report none), never backwards, never 100 before the end. */
    int pct = core_progress_percent(s->c, t, time_now_ms());
    if (!s->processing || pct > s->last_progress) {
      if (pct > s->last_progress) s->last_progress = pct;
      s->processing = true;
      write_status(req, "Processing...", s->last_progress);
    } else if (tick) {
      http_stream_write(req, ": keep-alive\n\n", 14);
    }
  } else if (tick) {
    http_stream_write(req, ": keep-alive\n\n", 14);
  }
  task_free(t);
  return ended;
}

static int64_t stream_next_tick(const nnb_stream *s) {
  return time_mono_ms() + (s->processing ? NNB_PROGRESS_MS : core_stream_keepalive_ms(s->c));
}

static void stream_wake(void *ctx) { http_wake(((nnb_stream *)ctx)->waker); }

static void stream_resume(http_request *req, void *ctx, http_resume_reason why) {
  nnb_stream *s = ctx;
  if (why == HTTP_RESUME_STOPPING) {
    /* The task goes on; the client finds it with GET /api/v1/generate?id=. */
    http_stream_end(req);
    return;
  }
  if (!stream_look(req, s, why == HTTP_RESUME_DEADLINE)) http_wait_until(req, stream_next_tick(s));
}

static void stream_end(void *ctx, bool answered) {
  (void)answered;
  nnb_stream *s = ctx;
  core_unwatch(s->c, s->watch);
  http_waker_release(s->waker);
  free(s);
}

static void start_stream(http_request *req, core *c, const store_account *acct, const task *t) {
  nnb_stream *s = calloc(1, sizeof *s);
  if (!s) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  s->c = c;
  s->acct = *acct;
  memcpy(s->id, t->id, sizeof s->id);
  api_base_url(req, c, s->base, sizeof s->base);
  http_reply_header(req, "Cache-Control", "no-cache");
  http_reply_header(req, "X-Accel-Buffering", "no"); /* nginx: pass each event on at once */
  http_stream_start(req, 200, "text/event-stream");
  write_status(req, "Starting generation...", 0);
  s->waker = http_wait(req, stream_resume, stream_end, s, stream_next_tick(s));
  if (!s->waker) {
    free(s);
    http_stream_end(req);
    return;
  }
  s->watch = core_watch_task(c, t->id, stream_wake, s);
  /* After the watch is on: a change before it is read here, one after wakes
   * the stream. A stream that cannot be woken still ends on its ticks. */
  if (!stream_look(req, s, false)) http_wait_until(req, stream_next_tick(s));
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

static int parse_references(http_request *req, json_t *body, const char **images, size_t *n) {
  json_t *refs = json_object_get(body, "referenceImageUrls");
  *n = 0;
  if (!refs || json_is_null(refs)) return 0;
  if (!json_is_array(refs) || json_array_size(refs) > NNB_MAX_REFERENCES)
    return bad_field(req, "referenceImageUrls", "invalid_type",
                     "referenceImageUrls must be an array of at most 10 image URLs");
  size_t i;
  json_t *v;
  json_array_foreach(refs, i, v) {
    if (!json_is_string(v))
      return bad_field(req, "referenceImageUrls", "invalid_type",
                       "referenceImageUrls must be an array of image URLs");
    images[i] = json_string_value(v);
  }
  *n = json_array_size(refs);
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
      parse_references(req, body, images, &gr.n_images) < 0)
    goto done;
  if (!gr.prompt) {
    bad_field(req, "prompt", "missing_field", "prompt is required");
    goto done;
  }
  if (gr.n_images) gr.images = images;
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
  char base[600];
  api_base_url(req, c, base, sizeof base);
  gr.dialect = "nananobanana";
  gr.public_base = base;
  gr.refuse_when_busy = mode == MODE_ASYNC; /* the seed's 503: async mode only */

  task *t = NULL;
  bool replayed = false;
  imgate_error err = {0};
  if (core_submit(c, &acct, &gr, http_header_get(req, "Idempotency-Key"), &t, &replayed,
                  &err) < 0) {
    reply_core_error(req, &err);
    goto done;
  }
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
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(c, &acct, id, &t, &err) < 0) {
    reply_core_error(req, &err);
    return;
  }
  char base[600];
  api_base_url(req, c, base, sizeof base);
  http_reply_json(req, 200, render_record(c, t, base));
  task_free(t);
}

/* The catalog as the seed lists it; no key needed (the seed's rule). */
static void handle_models(http_request *req, void *ctx) {
  core *c = ctx;
  core_model_info *info = NULL;
  size_t n = 0;
  if (core_models(c, &info, &n) < 0) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  json_t *list = json_array();
  for (size_t i = 0; i < n; i++) {
    const catalog_model *m = info[i].model;
    if (!info[i].available || info[i].default_micros < 0) continue;
    bool ratios = m->aspect_ratios[0] && m->aspect_ratios[1]; /* more than "auto" */
    json_array_append_new(
        list, json_pack("{s:s, s:s, s:I, s:b, s:b, s:b}", "name", m->name, "displayName",
                        m->display_name, "creditsCost",
                        (json_int_t)core_credits(c, info[i].default_micros, CORE_CREDITS_UP),
                        "supportsImageInput", m->max_reference_images > 0,
                        "supportsAspectRatio", ratios, "requiresPro", 0));
  }
  free(info);
  http_reply_json(req, 200, json_pack("{s:o}", "data", list));
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
    .render_webhook = nnb_webhook,
};
