/* native.c - the native dialect (seed 000): create-async and task lookup.
 *
 *   POST /api/banana/create-async  {prompt, model, aspect_ratio, resolution,
 *                                   image_urls, webhook_url} -> {uid, status}
 *                                  (optional header Idempotency-Key)
 *                                  (optional header Prefer: wait=N: the whole task,
 *                                   once final or after N seconds)
 *   GET  /api/banana/credits       -> the key's account balance
 *   GET  /api/banana/{uid}         -> the task (?wait=N: once final or after N s)
 *
 * Field names here are the dialect's own; errors name them (image_urls, not
 * the core's "images"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "util/timeutil.h"

static json_t *string_or_null(const char *s) { return s ? api_json_text(s) : json_null(); }

/* The core names fields its own way; this dialect says image_urls. */
static const char *native_param(const char *core_param) {
  if (strcmp(core_param, CORE_FIELD_IMAGES) == 0) return "image_urls";
  if (strcmp(core_param, CORE_FIELD_IDEMPOTENCY_KEY) == 0) return "Idempotency-Key";
  return core_param;
}

static void reply_core_error(http_request *req, const imgate_error *err) {
  api_rate_limit_headers(req, err);
  api_reply_error(req, err_http_status(err->code), err->slug, err->message,
                  native_param(err->param));
}

/* Reads an optional string field; replies 400 invalid_type and returns -1 when
 * it is present with another type. */
static int optional_string(http_request *req, json_t *body, const char *field, const char **out) {
  json_t *v = json_object_get(body, field);
  *out = NULL;
  if (!v || json_is_null(v)) return 0;
  if (!json_is_string(v)) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be a string", field);
    api_reply_error(req, 400, "invalid_type", msg, field);
    return -1;
  }
  *out = json_string_value(v);
  return 0;
}

/* Money in this dialect: exact decimal USD strings, plus integer micro-dollars. */
static json_t *render_cost(const task *t) {
  bool final = task_state_is_final(t->state);
  return json_pack("{s:o, s:o, s:I, s:I}", "held_usd",
                   api_json_usd(final ? 0 : t->cost_held_micros), "charged_usd",
                   api_json_usd(t->cost_charged_micros), "price_micros",
                   (json_int_t)t->cost_held_micros, "charged_micros",
                   (json_int_t)t->cost_charged_micros);
}

static json_t *render_task(http_request *req, core *c, const task *t) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  json_t *images = json_array();
  json_t *urls = json_array();
  for (size_t i = 0; i < t->n_results; i++) {
    const task_result *r = &t->results[i];
    char name[128], url[800];
    if (!core_result_file_name(r, name, sizeof name)) name[0] = '\0';
    snprintf(url, sizeof url, "%s/files/%s", base, name);
    json_array_append_new(urls, json_string(url));
    json_array_append_new(images, json_pack("{s:s, s:s, s:i, s:i, s:I, s:o}", "url", url,
                                            "content_type", r->mime, "width", r->width,
                                            "height", r->height, "bytes", (json_int_t)r->bytes,
                                            "expires_at", api_json_time(r->expires_ms)));
  }
  json_t *attempts = json_array();
  for (size_t i = 0; i < t->n_upstream_attempts; i++) {
    const task_attempt *a = &t->upstream_attempts[i];
    json_array_append_new(
        attempts, json_pack("{s:i, s:s, s:s, s:o, s:o, s:I, s:o, s:s, s:o}", "run", a->run,
                            "provider", a->provider, "upstream_model", a->upstream_model,
                            "started_at", api_json_time(a->started_ms), "ended_at",
                            api_json_time(a->ended_ms), "duration_ms",
                            (json_int_t)(a->ended_ms - a->started_ms), "http_status",
                            a->http_status ? json_integer(a->http_status) : json_null(),
                            "error_class", a->error_class, "error_code",
                            string_or_null(a->error_code)));
  }
  json_t *error = json_null();
  if (t->error_code)
    error = json_pack("{s:o, s:o}", "code", api_json_text(t->error_code), "message",
                      api_json_text(t->error_message ? t->error_message : ""));
  return json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                   "uid",
                   t->id, "status", task_state_name(t->state), "model", t->model, "aspect_ratio",
                   t->aspect_ratio, "resolution", t->resolution, "provider",
                   string_or_null(t->provider), "attempts", t->attempts, "created_at",
                   api_json_time(t->created_ms), "started_at", api_json_time(t->started_ms),
                   "finished_at", api_json_time(t->finished_ms), "images", images, "result_urls",
                   urls, "error", error, "upstream_attempts", attempts, "cost", render_cost(t));
}

/* --- answering once the task is final (Prefer: wait=N, ?wait=N) --------- */

/* A request waiting for its task; lives from http_wait to task_wait_end. */
typedef struct task_wait {
  core *c;
  store_account acct;
  char uid[IDS_UUID_LEN + 1];
  int seconds;
  http_waker *waker;
  core_watch *watch;
} task_wait;

static void reply_task(http_request *req, core *c, const task *t, int waited_s) {
  if (waited_s > 0) {
    char applied[32];
    snprintf(applied, sizeof applied, "wait=%d", waited_s);
    http_reply_header(req, "Preference-Applied", applied);
  }
  http_reply_json(req, 200, render_task(req, c, t));
}

/* A change of the task was committed (any thread): the request looks again. */
static void task_wait_wake(void *ctx) { http_wake(((task_wait *)ctx)->waker); }

static void task_wait_resume(http_request *req, void *ctx, http_resume_reason why) {
  task_wait *w = ctx;
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(w->c, &w->acct, w->uid, &t, &err) < 0) {
    reply_core_error(req, &err);
    return;
  }
  /* Not final yet and time left: go on waiting. */
  if (task_state_is_final(t->state) || why == HTTP_RESUME_DEADLINE)
    reply_task(req, w->c, t, w->seconds);
  task_free(t);
}

static void task_wait_end(void *ctx, bool answered) {
  task_wait *w = ctx;
  core_unwatch(w->c, w->watch); /* after this, task_wait_wake no longer runs */
  http_waker_release(w->waker);
  free(w);
}

/* Answers t at once when it is final or no wait was asked for; else the
 * request waits (holding no thread) until the task is final or seconds
 * pass, and then answers the task as it is. */
static void answer_task(http_request *req, core *c, const store_account *acct, const task *t,
                        int seconds) {
  if (seconds <= 0 || task_state_is_final(t->state)) {
    reply_task(req, c, t, seconds);
    return;
  }
  task_wait *w = calloc(1, sizeof *w);
  if (!w) {
    reply_task(req, c, t, 0);
    return;
  }
  w->c = c;
  w->acct = *acct;
  w->seconds = seconds;
  snprintf(w->uid, sizeof w->uid, "%s", t->id);
  w->waker = http_wait(req, task_wait_resume, task_wait_end, w,
                       time_mono_ms() + (int64_t)seconds * 1000);
  if (!w->waker) {
    free(w);
    reply_task(req, c, t, 0);
    return;
  }
  w->watch = core_watch_task(c, t->id, task_wait_wake, w);
  if (!w->watch) {
    reply_task(req, c, t, 0); /* ends the wait: task_wait_end frees w */
    return;
  }
  /* Read again now that the watch is on: a finish committed between the
   * first read and the watch is seen here, one after it wakes the request. */
  task *again = NULL;
  imgate_error err = {0};
  if (core_get_task(c, acct, t->id, &again, &err) == 0 && task_state_is_final(again->state))
    reply_task(req, c, again, seconds);
  task_free(again);
}

static void handle_create(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *body = api_parse_json_object(req);
  if (!body) return;

  core_gen_request gr = {0};
  const char *images[16];
  if (optional_string(req, body, "prompt", &gr.prompt) < 0 ||
      optional_string(req, body, "model", &gr.model) < 0 ||
      optional_string(req, body, "aspect_ratio", &gr.aspect_ratio) < 0 ||
      optional_string(req, body, "resolution", &gr.resolution) < 0 ||
      optional_string(req, body, "webhook_url", &gr.webhook_url) < 0)
    goto done;

  json_t *urls = json_object_get(body, "image_urls");
  if (urls && !json_is_null(urls)) {
    if (!json_is_array(urls)) {
      api_reply_error(req, 400, "invalid_type", "image_urls must be an array of strings",
                      "image_urls");
      goto done;
    }
    /* The core enforces the per-model limit; this bound only sizes the array. */
    if (json_array_size(urls) > sizeof images / sizeof images[0]) {
      api_reply_error(req, 400, "too_many_images", "at most 10 reference images",
                      "image_urls");
      goto done;
    }
    size_t i;
    json_t *v;
    json_array_foreach(urls, i, v) {
      if (!json_is_string(v)) {
        api_reply_error(req, 400, "invalid_type", "image_urls must be an array of strings",
                        "image_urls");
        goto done;
      }
      images[i] = json_string_value(v);
    }
    gr.images = images;
    gr.n_images = json_array_size(urls);
  }

  task *t = NULL;
  bool replayed = false;
  imgate_error err = {0};
  if (core_submit(c, &acct, &gr, http_header_get(req, "Idempotency-Key"), &t, &replayed,
                  &err) < 0) {
    reply_core_error(req, &err);
    goto done;
  }
  if (replayed) http_reply_header(req, "Idempotent-Replayed", "true");
  int wait_s = api_prefer_wait(req);
  if (wait_s > 0) {
    /* Prefer: wait answers with the whole task, as GET does. */
    answer_task(req, c, &acct, t, wait_s);
  } else {
    /* A replay answers what the first submit answered: its uid, "queued"
     * (whatever the task's state is by now; GET tells that). */
    http_reply_json(req, 200,
                    json_pack("{s:s, s:s}", "uid", t->id, "status",
                              replayed ? task_state_name(TASK_QUEUED) : task_state_name(t->state)));
  }
  task_free(t);
done:
  json_decref(body);
}

static void handle_get(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(c, &acct, http_param_get(req, "uid"), &t, &err) < 0) {
    reply_core_error(req, &err);
    return;
  }
  answer_task(req, c, &acct, t, api_wait_seconds(http_query_get(req, "wait")));
  task_free(t);
}

/* The balance of the key's account, as the guard read it for this request. */
static void handle_credits(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *doc = json_pack("{s:o, s:o, s:I, s:I}", "balance_usd",
                          api_json_usd(acct.balance_micros), "held_usd",
                          api_json_usd(acct.held_micros), "balance_micros",
                          (json_int_t)acct.balance_micros, "held_micros",
                          (json_int_t)acct.held_micros);
  http_reply_json(req, 200, doc);
}

void api_native_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/api/banana/create-async", api_guard_key, handle_create, c);
  http_router_add_guarded(r, "GET", "/api/banana/credits", api_guard_key, handle_credits, c);
  http_router_add_guarded(r, "GET", "/api/banana/{uid}", api_guard_key, handle_get, c);
}
