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
#include "util/ids.h"
#include "util/timeutil.h"

/* Between progress objects while a task runs, and the longest a stream or a
 * shutProgress answer waits (the default retry deadline). */
#define APISTOR_PROGRESS_MS 2000
#define APISTOR_MAX_WAIT_S 300

static void apistor_error_shape(http_request *req, int status, const imgate_error *err) {
  json_t *doc = json_pack("{s:{s:s, s:o, s:o}}", "error", "code", err->slug, "message",
                          api_json_text(err->message), "param",
                          err->param[0] ? json_string(err->param) : json_null());
  if (!doc) {
    char body[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"%s\",\"message\":\"the error could not be "
                     "described\",\"param\":null}}",
                     api_plain_slug(err->slug) ? err->slug : "internal_error");
    http_reply_bytes(req, status, "application/json", body, (size_t)n);
    return;
  }
  http_reply_json(req, status, doc);
}

static const char *apistor_param(const char *core_param) {
  if (strcmp(core_param, CORE_FIELD_IMAGES) == 0) return "urls";
  if (strcmp(core_param, CORE_FIELD_ASPECT_RATIO) == 0) return "aspectRatio";
  if (strcmp(core_param, CORE_FIELD_WEBHOOK) == 0) return "webHook";
  return core_param;
}

static void reply_core_error(http_request *req, const imgate_error *err) {
  imgate_error e = *err;
  if (e.param[0]) snprintf(e.param, sizeof e.param, "%s", apistor_param(err->param));
  api_rate_limit_headers(req, &e);
  api_reply_core_error(req, err_http_status(e.code), &e);
}

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

typedef struct progress_stream {
  core *c;
  store_account acct;
  char uid[IDS_UUID_LEN + 1];
  int64_t until_mono; /* the longest it runs */
  char last[16];      /* status and progress of the last object sent */
  http_waker *waker;
  core_watch *watch;
} progress_stream;

/* Writes the task's object; ends the stream when it is final (or the wait is
 * over). */
static void stream_object(http_request *req, progress_stream *s, bool over) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(s->c, &s->acct, s->uid, &t, &err) < 0) {
    http_stream_end(req);
    return;
  }
  json_t *obj = object_for(req, s->c, t);
  if (!obj) { /* out of memory: nothing sensible to say */
    task_free(t);
    http_stream_end(req);
    return;
  }
  /* Only what moved is sent (queued and running are both "running"); an
   * unchanged tick is a comment line, which keeps proxies from cutting the
   * stream and which SSE readers skip. */
  char now[16];
  snprintf(now, sizeof now, "%s%lld", json_string_value(json_object_get(obj, "status")),
           (long long)json_integer_value(json_object_get(obj, "progress")));
  bool final = task_state_is_final(t->state);
  char *text = final || strcmp(now, s->last) != 0 ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  if (text) {
    http_stream_write(req, "data: ", 6);
    http_stream_write(req, text, strlen(text));
    http_stream_write(req, "\n\n", 2);
    free(text);
    memcpy(s->last, now, sizeof s->last);
  } else {
    http_stream_write(req, ": keep-alive\n\n", 14);
  }
  task_free(t);
  if (final || over) {
    http_stream_end(req);
    return;
  }
  int64_t next = time_mono_ms() + APISTOR_PROGRESS_MS;
  http_wait_until(req, next < s->until_mono ? next : s->until_mono);
}

static void stream_wake(void *ctx) { http_wake(((progress_stream *)ctx)->waker); }

static void stream_resume(http_request *req, void *ctx, http_resume_reason why) {
  progress_stream *s = ctx;
  stream_object(req, s, why == HTTP_RESUME_STOPPING || time_mono_ms() >= s->until_mono);
}

static void stream_end(void *ctx, bool answered) {
  progress_stream *s = ctx;
  core_unwatch(s->c, s->watch);
  http_waker_release(s->waker);
  free(s);
}

static void start_stream(http_request *req, core *c, const store_account *acct, const task *t) {
  http_reply_header(req, "Cache-Control", "no-cache");
  http_reply_header(req, "X-Accel-Buffering", "no");
  http_stream_start(req, 200, "text/event-stream");
  progress_stream *s = calloc(1, sizeof *s);
  if (!s) {
    http_stream_end(req);
    return;
  }
  s->c = c;
  s->acct = *acct;
  memcpy(s->uid, t->id, sizeof s->uid);
  s->until_mono = time_mono_ms() + (int64_t)APISTOR_MAX_WAIT_S * 1000;
  s->waker = http_wait(req, stream_resume, stream_end, s, time_mono_ms() + APISTOR_PROGRESS_MS);
  if (!s->waker) {
    free(s);
    http_stream_end(req);
    return;
  }
  s->watch = core_watch_task(c, t->id, stream_wake, s);
  /* After the watch: what happened before is read now, what comes later wakes it. */
  stream_object(req, s, !s->watch);
}

/* --- handlers ------------------------------------------------------------------ */

static void final_ready(http_request *req, core *c, const task *t, bool final,
                        const imgate_error *err, void *arg) {
  (void)final;
  (void)arg;
  if (!t) {
    reply_core_error(req, err);
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
  json_t *urls = json_object_get(body, "urls");
  if (urls && !json_is_null(urls)) {
    if (!json_is_array(urls) || json_array_size(urls) > sizeof images / sizeof images[0]) {
      api_reply_error(req, 400, "invalid_type", "urls must be an array of at most 10 images",
                      "urls");
      goto done;
    }
    size_t i;
    json_t *v;
    json_array_foreach(urls, i, v) {
      if (!json_is_string(v)) {
        api_reply_error(req, 400, "invalid_type", "urls must be an array of strings", "urls");
        goto done;
      }
      images[i] = json_string_value(v);
    }
    gr.images = images;
    gr.n_images = json_array_size(urls);
  }
  /* webHook "-1": answer at once, the client polls; a URL: answer at once,
   * and the final object is posted there (a signed webhook). */
  bool at_once = hook && *hook;
  if (at_once && strcmp(hook, "-1") != 0) gr.webhook_url = hook;
  char base[600];
  api_base_url(req, c, base, sizeof base);
  gr.dialect = "apistor";
  gr.public_base = base;

  task *t = NULL;
  bool replayed = false;
  imgate_error err = {0};
  if (core_submit(c, &acct, &gr, http_header_get(req, "Idempotency-Key"), &t, &replayed,
                  &err) < 0) {
    reply_core_error(req, &err);
    goto done;
  }
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
    if (!id) {
      api_reply_error(req, 400, "missing_field", "id is required", "id");
    } else {
      task *t = NULL;
      imgate_error err = {0};
      if (core_get_task(c, &acct, id, &t, &err) < 0) reply_core_error(req, &err);
      else http_reply_json(req, 200, object_for(req, c, t));
      task_free(t);
    }
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
    .reply_error = apistor_error_shape,
    .render_webhook = apistor_webhook,
};
