/* native.c - the native dialect (seed 000).
 *
 *   POST /api/banana/create-async  {prompt, model, aspect_ratio, resolution,
 *                                   quality, image_urls, webhook_url} -> {uid, status}
 *                                  (also: background, mask: GPT Image)
 *                                  (optional header Idempotency-Key)
 *                                  (optional header Prefer: wait=N: the whole task,
 *                                   once final or after N seconds)
 *                                  (also: deadline, webhook_events, n,
 *                                   output_format, output_compression)
 *   POST /api/banana/create        the same, answered with the whole task once final
 *   GET  /api/banana/tasks         -> the account's tasks, newest first (?limit, ?after)
 *   GET  /api/banana/models        -> the catalog with prices (no key needed)
 *   GET  /api/banana/credits       -> the key's account balance
 *   GET  /api/banana/{uid}         -> the task (?wait=N: once final or after N s)
 *   GET  /api/banana/{uid}/events  -> its events as a stream (native_events.c)
 *   POST /api/banana/{uid}/cancel  -> cancels it; the task once canceled (409 when final)
 *   POST /api/banana/{uid}/webhook/resend -> sends its final webhook again
 *   GET  /api/account/webhook-secret, POST .../rotate (account.c)
 *
 * Field names here are the dialect's own; errors name them (image_urls, not
 * the core's "images"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/await.h"
#include "api/native_int.h"
#include "core/pricing.h"
#include "util/timeutil.h"

/* How long a cancel waits for a running task to be stopped before it answers
 * with the task as it is (cancel_requested, still running). */
#define NATIVE_CANCEL_WAIT_S 10
/* POST /api/banana/create waits this long at most (the default retry
 * deadline: by then the task has succeeded or failed). */
#define NATIVE_SYNC_WAIT_S 300
/* GET /api/banana/tasks: tasks per page when no limit is given. */
#define NATIVE_PAGE_DEFAULT 20

/* --- answering once the task is final (Prefer: wait=N, ?wait=N) --------- */

typedef struct native_wait {
  int seconds;
  bool prefer; /* say Preference-Applied */
} native_wait;

static void reply_task(http_request *req, core *c, const task *t, bool final,
                       const imgate_error *err, void *arg) {
  (void)final;
  const native_wait *nw = arg;
  if (!t) {
    api_reply_from_core(req, err);
    return;
  }
  if (nw->prefer && nw->seconds > 0) {
    char applied[32];
    snprintf(applied, sizeof applied, "wait=%d", nw->seconds);
    http_reply_header(req, "Preference-Applied", applied);
  }
  http_reply_json(req, 200, native_render_task_for(req, c, t));
}

void native_answer_task(http_request *req, core *c, const store_account *acct, const task *t,
                        int seconds, bool prefer) {
  native_wait nw = {.seconds = seconds, .prefer = prefer};
  API_AWAIT_TASK(req, c, acct, t, seconds, reply_task, &nw);
}

/* webhook_events: ["task.running"] (final events are always sent). */
static int parse_webhook_events(http_request *req, json_t *body, unsigned *out) {
  json_t *v = json_object_get(body, "webhook_events");
  *out = 0;
  if (!v || json_is_null(v)) return 0;
  size_t i;
  json_t *e;
  if (!json_is_array(v)) goto bad;
  json_array_foreach(v, i, e) {
    if (!json_is_string(e)) goto bad;
    const char *name = json_string_value(e);
    if (strcmp(name, "task.running") == 0) {
      *out |= TASK_WEBHOOK_RUNNING;
    } else if (strcmp(name, "task.succeeded") && strcmp(name, "task.failed") &&
               strcmp(name, "task.moderated") && strcmp(name, "task.canceled")) {
      char msg[160];
      snprintf(msg, sizeof msg, "unknown webhook event \"%.40s\"; events: task.running, "
                                "task.succeeded, task.failed, task.moderated, task.canceled", name);
      api_reply_error(req, 400, "invalid_webhook_events", msg, "webhook_events");
      return -1;
    }
  }
  return 0;
bad:
  api_reply_error(req, 400, "invalid_type", "webhook_events must be an array of event names",
                  "webhook_events");
  return -1;
}

/* n: how many images, a whole number (the core checks the range). */
static int parse_quantity(http_request *req, json_t *body, int *out) {
  json_t *v = json_object_get(body, "n");
  *out = 0;
  if (!v || json_is_null(v)) return 0;
  if (!json_is_integer(v)) {
    api_reply_error(req, 400, "invalid_type", "n must be a whole number of images", "n");
    return -1;
  }
  *out = core_quantity_arg(json_integer_value(v));
  return 0;
}

/* deadline: whole seconds after submit, 1..CORE_MAX_DEADLINE_S. */
static int parse_deadline(http_request *req, json_t *body, int *out) {
  json_t *v = json_object_get(body, "deadline");
  *out = 0;
  if (!v || json_is_null(v)) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 1 ||
      json_integer_value(v) > CORE_MAX_DEADLINE_S) {
    char msg[96];
    snprintf(msg, sizeof msg, "deadline must be a whole number of seconds, 1 to %d",
             CORE_MAX_DEADLINE_S);
    api_reply_error(req, 400, json_is_integer(v) ? "invalid_deadline" : "invalid_type", msg,
                    "deadline");
    return -1;
  }
  *out = (int)json_integer_value(v);
  return 0;
}

/* Reads a create request's body and submits it: 0 with *out (and *replayed),
 * or -1 once the refusal has been answered. */
static int submit_from_body(http_request *req, core *c, const store_account *acct, task **out,
                            bool *replayed) {
  json_t *body = api_parse_json_object(req);
  if (!body) return -1;
  int rc = -1;
  core_gen_request gr = {0};
  const char *images[16];
  if (api_json_string(req, body, "prompt", &gr.prompt) < 0 ||
      api_json_string(req, body, "model", &gr.model) < 0 ||
      api_json_string(req, body, "aspect_ratio", &gr.aspect_ratio) < 0 ||
      api_json_string(req, body, "resolution", &gr.resolution) < 0 ||
      api_json_string(req, body, "quality", &gr.quality) < 0 ||
      api_json_string(req, body, "background", &gr.background) < 0 ||
      api_json_string(req, body, "mask", &gr.mask) < 0 ||
      api_json_string(req, body, "webhook_url", &gr.webhook_url) < 0 ||
      parse_webhook_events(req, body, &gr.webhook_events) < 0 ||
      parse_quantity(req, body, &gr.quantity) < 0 ||
      parse_deadline(req, body, &gr.deadline_s) < 0 || api_json_output(req, body, &gr) < 0)
    goto done;
  if (api_json_image_list(req, body, "image_urls", images, sizeof images / sizeof images[0],
                          &gr.n_images) < 0)
    goto done;
  gr.images = images;
  if (api_submit(req, c, acct, &gr, out, replayed) < 0) goto done;
  if (*replayed) http_reply_header(req, "Idempotent-Replayed", "true");
  rc = 0;
done:
  json_decref(body);
  return rc;
}

/* POST /api/banana/create-async: the uid at once, or with Prefer: wait=N the
 * whole task once final (at most N seconds). */
static void handle_create_async(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = NULL;
  bool replayed = false;
  if (submit_from_body(req, c, &acct, &t, &replayed) < 0) return;
  int wait_s = api_prefer_wait(req);
  if (wait_s > 0) {
    /* Prefer: wait answers with the whole task, as GET does. */
    native_answer_task(req, c, &acct, t, wait_s, true);
  } else {
    /* A replay answers what the first submit answered: its uid, "queued"
     * (whatever the task's state is by now; GET tells that). */
    http_reply_json(req, 200,
                    json_pack("{s:s, s:s}", "uid", t->id, "status",
                              replayed ? task_state_name(TASK_QUEUED) : task_state_name(t->state)));
  }
  task_free(t);
}

/* POST /api/banana/create: the same request, answered with the whole task
 * once it is final (the wait holds no thread). A task still running after
 * NATIVE_SYNC_WAIT_S is answered as it is then, and can be polled. */
static void handle_create_sync(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = NULL;
  bool replayed = false;
  if (submit_from_body(req, c, &acct, &t, &replayed) < 0) return;
  int prefer = api_prefer_wait(req);
  native_answer_task(req, c, &acct, t, prefer > 0 ? prefer : NATIVE_SYNC_WAIT_S, prefer > 0);
  task_free(t);
}

/* GET /api/banana/tasks?limit=N&after=UID: the account's tasks, newest first. */
static void handle_list(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  int limit = NATIVE_PAGE_DEFAULT;
  const char *lim = http_query_get(req, "limit");
  if (lim) {
    char *end;
    long v = strtol(lim, &end, 10);
    if (!*lim || *end || v < 1 || v > CORE_MAX_PAGE) {
      char msg[64];
      snprintf(msg, sizeof msg, "limit must be a whole number from 1 to %d", CORE_MAX_PAGE);
      api_reply_error(req, 400, "invalid_limit", msg, "limit");
      return;
    }
    limit = (int)v;
  }
  const char *after = http_query_get(req, "after");
  if (after && !*after) after = NULL;
  task **tasks = NULL;
  size_t n = 0;
  bool more = false;
  imgate_error err = {0};
  if (core_list_tasks(c, &acct, after, limit, &tasks, &n, &more, &err) < 0) {
    api_reply_from_core(req, &err);
    return;
  }
  char base[600];
  api_base_url(req, c, base, sizeof base);
  json_t *list = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(list, native_render_task(base, c, tasks[i]));
  json_t *next = more && n ? json_string(tasks[n - 1]->id) : json_null();
  http_reply_json(req, 200, json_pack("{s:o, s:b, s:o}", "tasks", list, "has_more", more,
                                      "next_after", next));
  core_tasks_free(tasks, n);
}

/* One model of GET /api/banana/models. */
static json_t *render_model(core *c, const core_model_info *info) {
  (void)c;
  const catalog_model *m = info->model;
  json_t *ratios = json_array(), *res = json_array();
  for (size_t k = 0; m->aspect_ratios[k]; k++)
    json_array_append_new(ratios, json_string(m->aspect_ratios[k]));
  for (size_t k = 0; m->resolutions[k]; k++)
    json_array_append_new(res, json_string(m->resolutions[k]));
  json_t *model = json_pack(
      "{s:s, s:s, s:b, s:o, s:o, s:s, s:i, s:s, s:o, s:o}", "id", m->name, "name",
      m->display_name, "available", info->available, "aspect_ratios", ratios, "resolutions",
      res, "default_resolution", m->default_resolution, "max_reference_images",
      m->max_reference_images, "priced_by", api_priced_by(info), "prices_usd",
      api_json_prices(info), "reference_image_usd", api_json_usd(info->reference_micros));
  if (model && info->by_quality) {
    json_t *qualities = json_array();
    for (int q = 0; q < PRICING_QUALITIES; q++)
      json_array_append_new(qualities, json_string(pricing_quality_name(q)));
    json_array_append_new(qualities, json_string("auto"));
    json_object_set_new(model, "qualities", qualities);
  }
  return model;
}

/* GET /api/banana/models (no key needed): what can be asked for, at what price. */
static void handle_models(http_request *req, void *ctx) {
  json_t *list = api_model_list(req, ctx, render_model);
  if (list) http_reply_json(req, 200, json_pack("{s:o}", "models", list));
}

static void handle_get(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = api_read_task(req, c, &acct, http_param_get(req, "uid"));
  if (!t) return;
  native_answer_task(req, c, &acct, t, api_wait_seconds(http_query_get(req, "wait")), true);
  task_free(t);
}

/* Cancels the task; answers it once canceled (waiting a little for a running
 * one to be stopped), or 409 task_final with its state. */
static void handle_cancel(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = NULL;
  imgate_error err = {0};
  if (core_cancel(c, &acct, http_param_get(req, "uid"), &t, &err) < 0) {
    if (err.code == ERR_CONFLICT && t) {
      /* The state is in the answer too, for clients that branch on it. */
      json_t *doc = json_pack("{s:{s:s, s:s, s:n}, s:s}", "error", "code", err.slug, "message",
                              err.message, "param", "status", task_state_name(t->state));
      snprintf(req->log_error, sizeof req->log_error, "%s", err.slug);
      http_reply_json(req, 409, doc);
    } else {
      api_reply_from_core(req, &err);
    }
    task_free(t);
    return;
  }
  /* A running task stops within moments (its upstream call is aborted):
   * answer once it has, or with what there is after a few seconds. */
  native_answer_task(req, c, &acct, t, NATIVE_CANCEL_WAIT_S, false);
  task_free(t);
}

static void handle_resend(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  imgate_error err = {0};
  if (core_webhook_resend(c, &acct, http_param_get(req, "uid"), &err) < 0) {
    api_reply_from_core(req, &err);
    return;
  }
  http_reply_json(req, 202, json_pack("{s:s, s:b}", "uid", http_param_get(req, "uid"), "resent", 1));
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

static void native_register(http_router *r, core *c);

static const char *const native_prefixes[] = {"/api/banana/", "/api/account/", NULL};

/* The core names fields its own way; this dialect's clients know these. */
static const api_field_name native_fields[] = {
    {CORE_FIELD_IMAGES, "image_urls"},
    {CORE_FIELD_IDEMPOTENCY_KEY, "Idempotency-Key"},
    {CORE_FIELD_QUANTITY, "n"},
    {NULL, NULL},
};

const api_dialect api_native_dialect = {
    .name = "native",
    .prefixes = native_prefixes,
    .register_routes = native_register,
    .read_key = api_read_bearer,
    .reply_error = api_error_shape_plain,
    .field_names = native_fields,
    .render_webhook = api_native_webhook_payload,
};

static void native_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/api/banana/create-async", api_guard_key,
                          handle_create_async, c);
  http_router_add_guarded(r, "POST", "/api/banana/create", api_guard_key, handle_create_sync, c);
  http_router_add_guarded(r, "GET", "/api/banana/tasks", api_guard_key, handle_list, c);
  http_router_add(r, "GET", "/api/banana/models", handle_models, c);
  http_router_add_guarded(r, "GET", "/api/banana/credits", api_guard_key, handle_credits, c);
  http_router_add_guarded(r, "GET", "/api/banana/{uid}", api_guard_key, handle_get, c);
  http_router_add_guarded(r, "GET", "/api/banana/{uid}/events", api_guard_key,
                          native_handle_events, c);
  http_router_add_guarded(r, "POST", "/api/banana/{uid}/cancel", api_guard_key, handle_cancel, c);
  http_router_add_guarded(r, "POST", "/api/banana/{uid}/webhook/resend", api_guard_key,
                          handle_resend, c);
  api_account_register(r, c);
}
