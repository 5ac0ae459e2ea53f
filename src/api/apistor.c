/* apistor.c - the dialect of seeds 001/002 (apistor.io's Nano Banana API).
 *
 *   POST /api/v1/images/nanobanana/generate  {model, prompt, urls, aspectRatio,
 *                                             webHook, shutProgress}
 *        by default a stream of progress objects (server-sent events, one
 *        `data:` object per change and every 2 s while it runs) until the
 *        final one; shutProgress: true -> the final object alone, as JSON;
 *        webHook: a URL (the final object is posted there) or "-1" -> the
 *        object at once, to poll
 *   POST /api/v1/images/nanobanana/result    {id} -> the object now
 *
 * The object: {id, model, progress, status (running|succeeded|failed),
 * results:[{url, content}], failure_reason, error}. docs/api-apistor.md
 * says what is and is not taken. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/await.h"
#include "api/follow.h"
#include "api/sse.h"
#include "util/timeutil.h"

/* Between progress objects while a task runs, and the longest a stream or a
 * shutProgress answer waits (the default retry deadline). */
#define APISTOR_PROGRESS_MS 2000
#define APISTOR_MAX_WAIT_S 300

/* The core names fields its own way; this dialect's clients know these. */
static const api_field_name apistor_fields[] = {
    {CORE_FIELD_IMAGES, "urls"},
    {CORE_FIELD_ASPECT_RATIO, "aspectRatio"},
    {CORE_FIELD_WEBHOOK, "webHook"},
    {CORE_FIELD_IDEMPOTENCY_KEY, "Idempotency-Key"},
    {NULL, NULL},
};

/* The progress object of task t (progress: an estimate while it runs). */
static json_t *render_object(const char *base, core *c, const task *t) {
  const char *status = t->state == TASK_SUCCEEDED ? "succeeded"
                       : task_state_is_final(t->state) ? "failed"
                                                       : "running";
  int progress = core_progress_percent(c, t, time_now_ms());
  if (progress < 0) progress = 0;
  json_t *results = json_array();
  for (size_t i = 0; i < t->n_results; i++) {
    char name[160], url[800];
    if (!core_result_file_name(&t->results[i], name, sizeof name)) continue;
    snprintf(url, sizeof url, "%s/files/%s", base, name);
    json_array_append_new(results, json_pack("{s:s, s:o}", "url", url, "content",
                                             api_json_text(t->prompt ? t->prompt : "")));
  }
  /* failure_reason: what kind of failure, by the task's state; error: its
   * code and words. */
  json_t *reason = json_null(), *error = json_null();
  if (task_state_is_final(t->state) && t->state != TASK_SUCCEEDED) {
    reason = json_string(t->state == TASK_MODERATED  ? "moderation"
                         : t->state == TASK_CANCELED ? "canceled"
                                                     : "error");
    error = json_pack("{s:o, s:o}", "code", api_json_text(t->error_code ? t->error_code : ""),
                      "message", api_json_text(t->error_message ? t->error_message : ""));
  }
  return json_pack("{s:s, s:s, s:i, s:s, s:o, s:o, s:o}", "id", t->id, "model", t->model,
                   "progress", progress, "status", status, "results", results, "failure_reason",
                   reason, "error", error);
}

static json_t *object_for(http_request *req, core *c, const task *t) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  return render_object(base, c, t);
}

/* --- the default: a stream of progress objects ------------------------------ */

/* The stream's state, as its follower (follow.h) keeps it. */
typedef struct progress_stream {
  char last[16]; /* status and progress of the last object sent */
} progress_stream;

/* Writes the task's object; ends the stream when it is final, or when there
 * is nothing more to wait for (its time ran out, the server stops, no change
 * would wake it). */
static int64_t progress_look(http_request *req, api_follow *f, api_follow_why why) {
  progress_stream *s = f->state;
  if (why == API_FOLLOW_FIRST || why == API_FOLLOW_UNWATCHED) api_sse_start(req);
  bool over = why == API_FOLLOW_OVER || why == API_FOLLOW_STOPPING || why == API_FOLLOW_UNWATCHED;
  task *t = NULL;
  imgate_error err = {0};
  if (api_follow_read(f, &t, &err) < 0) {
    http_stream_end(req);
    return API_FOLLOW_DONE;
  }
  json_t *obj = object_for(req, f->c, t);
  if (!obj) { /* out of memory: nothing sensible to say */
    task_free(t);
    http_stream_end(req);
    return API_FOLLOW_DONE;
  }
  /* Only what moved is sent (queued and running are both "running"); an
   * unchanged tick is a comment line, which keeps proxies from cutting the
   * stream and which SSE readers skip. */
  char now[16];
  snprintf(now, sizeof now, "%s%lld", json_string_value(json_object_get(obj, "status")),
           (long long)json_integer_value(json_object_get(obj, "progress")));
  bool final = task_state_is_final(t->state);
  task_free(t);
  if (final || strcmp(now, s->last) != 0) {
    api_sse_event(req, NULL, NULL, obj);
    memcpy(s->last, now, sizeof s->last);
  } else {
    json_decref(obj);
    api_sse_keepalive(req);
  }
  if (final || over) {
    http_stream_end(req);
    return API_FOLLOW_DONE;
  }
  return APISTOR_PROGRESS_MS;
}

static void start_stream(http_request *req, core *c, const store_account *acct, const task *t) {
  progress_stream s = {{0}};
  if (!api_follow_start(req, c, acct, t->id, APISTOR_MAX_WAIT_S, progress_look, &s, sizeof s))
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
}

/* --- handlers ------------------------------------------------------------------ */

static void final_ready(http_request *req, core *c, const task *t, bool final,
                        const imgate_error *err, void *arg) {
  (void)final;
  (void)arg;
  if (!t) {
    api_reply_from_core(req, err);
    return;
  }
  http_reply_json(req, 200, object_for(req, c, t));
}

static void handle_generate(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  core_gen_request gr = {0};
  const char *hook = NULL;
  const char *images[16];
  if (api_json_string(req, body, "model", &gr.model) < 0 ||
      api_json_string(req, body, "prompt", &gr.prompt) < 0 ||
      api_json_string(req, body, "aspectRatio", &gr.aspect_ratio) < 0 ||
      api_json_string(req, body, "webHook", &hook) < 0)
    goto done;
  if (!gr.model) {
    api_reply_error(req, 400, "missing_field", "model is required", "model");
    goto done;
  }
  json_t *shut = json_object_get(body, "shutProgress");
  if (shut && !json_is_boolean(shut) && !json_is_null(shut)) {
    api_reply_error(req, 400, "invalid_type", "shutProgress must be true or false",
                    "shutProgress");
    goto done;
  }
  if (api_json_image_list(req, body, "urls", images, sizeof images / sizeof images[0],
                          &gr.n_images) < 0)
    goto done;
  gr.images = images;
  /* webHook "-1": answer at once, the client polls; a URL: answer at once,
   * and the final object is posted there (a signed webhook). */
  bool at_once = hook && *hook;
  if (at_once && strcmp(hook, "-1") != 0) gr.webhook_url = hook;

  task *t = NULL;
  bool replayed = false;
  if (api_submit(req, c, &acct, &gr, &t, &replayed) < 0) goto done;
  if (at_once) http_reply_json(req, 200, object_for(req, c, t));
  else if (json_is_true(shut))
    api_await_task(req, c, &acct, t, APISTOR_MAX_WAIT_S, final_ready, NULL, 0);
  else start_stream(req, c, &acct, t);
  task_free(t);
done:
  json_decref(body);
}

static void handle_result(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  const char *id = NULL;
  if (api_json_string(req, body, "id", &id) == 0) {
    task *t = NULL;
    if (!id) api_reply_error(req, 400, "missing_field", "id is required", "id");
    else if ((t = api_read_task(req, c, &acct, id))) http_reply_json(req, 200, object_for(req, c, t));
    task_free(t);
  }
  json_decref(body);
}

/* The callback posts the same object as the result endpoint answers. */
static char *apistor_webhook(core *c, const task *t, const char *event, int64_t now_ms) {
  (void)event;
  (void)now_ms;
  char base[600];
  api_webhook_base(c, t, base, sizeof base);
  json_t *obj = render_object(base, c, t);
  return api_json_take_text(obj);
}

static void apistor_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/api/v1/images/nanobanana/generate", api_guard_key,
                          handle_generate, c);
  http_router_add_guarded(r, "POST", "/api/v1/images/nanobanana/result", api_guard_key,
                          handle_result, c);
}

static const char *const apistor_prefixes[] = {"/api/v1/images/nanobanana/", NULL};

const api_dialect api_apistor_dialect = {
    .name = "apistor",
    .prefixes = apistor_prefixes,
    .register_routes = apistor_register,
    .read_key = api_read_bearer,
    .reply_error = api_error_shape_plain, /* the seeds' shape is the native one */
    .field_names = apistor_fields,
    .render_webhook = apistor_webhook,
};
