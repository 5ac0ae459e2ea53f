/* native_render.c - the task as the native dialect shows it: in answers, in
 * its SSE stream's final event and in its webhook payloads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/native_int.h"
#include "core/webhooks.h"
#include "util/timeutil.h"

static json_t *string_or_null(const char *s) { return s ? api_json_text(s) : json_null(); }

/* Money in this dialect: exact decimal USD strings, plus integer micro-dollars.
 * image_price is the hold per image (for "auto" quality or size the largest
 * the image can cost); each delivered image shows its own price. */
static json_t *render_cost(const task *t) {
  bool final = task_state_is_final(t->state);
  return json_pack("{s:o, s:o, s:I, s:I, s:o, s:I}", "held_usd",
                   api_json_usd(final ? 0 : t->cost_held_micros), "charged_usd",
                   api_json_usd(t->cost_charged_micros), "price_micros",
                   (json_int_t)t->cost_held_micros, "charged_micros",
                   (json_int_t)t->cost_charged_micros, "image_price_usd",
                   api_json_usd(t->price_unit_micros), "image_price_micros",
                   (json_int_t)t->price_unit_micros);
}

static json_t *render_images(const char *base, const task *t, json_t **urls_out) {
  json_t *images = json_array();
  json_t *urls = json_array();
  for (size_t i = 0; i < t->n_results; i++) {
    const task_result *r = &t->results[i];
    char name[128], url[800];
    if (!core_result_file_name(r, name, sizeof name)) name[0] = '\0';
    snprintf(url, sizeof url, "%s/files/%s", base, name);
    json_array_append_new(urls, json_string(url));
    json_t *image = json_pack("{s:s, s:s, s:i, s:i, s:I, s:o, s:o, s:I}", "url", url,
                              "content_type", r->mime, "width", r->width, "height", r->height,
                              "bytes", (json_int_t)r->bytes, "expires_at",
                              api_json_time(r->expires_ms), "price_usd",
                              api_json_usd(r->price_micros), "price_micros",
                              (json_int_t)r->price_micros);
    /* What the upstream said it made, where it says (GPT Image). */
    if (image && r->quality) json_object_set_new(image, "quality", api_json_text(r->quality));
    if (image && r->background)
      json_object_set_new(image, "background", api_json_text(r->background));
    json_array_append_new(images, image);
  }
  *urls_out = urls;
  return images;
}

static json_t *render_attempts(const task *t) {
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
  return attempts;
}

/* Every attempt at delivering the task's webhooks, oldest first. */
static json_t *render_deliveries(core *c, const task *t) {
  json_t *out = json_array();
  if (!t->webhook_url) return out;
  store_webhook_attempt *a = NULL;
  size_t n = 0;
  if (core_webhook_attempts(c, t->id, &a, &n) < 0) return out;
  /* One entry per attempt: what that attempt got ("delivered" for a 2xx,
   * "gone" for a 410, else "failed"), and where its delivery stands now. */
  for (size_t i = 0; i < n; i++) {
    int st = a[i].http_status;
    const char *outcome = st >= 200 && st < 300 ? "delivered" : st == 410 ? "gone" : "failed";
    json_array_append_new(
        out, json_pack("{s:s, s:s, s:o, s:o, s:I, s:s, s:o, s:s}", "webhook_id", a[i].id,
                       "event", a[i].event, "at", api_json_time(a[i].at_ms), "http_status",
                       st ? json_integer(st) : json_null(), "duration_ms",
                       (json_int_t)a[i].duration_ms, "outcome", outcome, "error",
                       a[i].error[0] ? api_json_text(a[i].error) : json_null(),
                       "delivery_state", webhook_state_name(a[i].state)));
  }
  free(a);
  return out;
}

json_t *native_render_task(const char *base, core *c, const task *t) {
  json_t *urls = NULL;
  json_t *images = render_images(base, t, &urls);
  json_t *error = json_null();
  if (t->error_code)
    error = json_pack("{s:o, s:o}", "code", api_json_text(t->error_code), "message",
                      api_json_text(t->error_message ? t->error_message : ""));
  json_t *doc = json_pack(
      "{s:s, s:s, s:s, s:s, s:s, s:o, s:i, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "uid", t->id,
      "status", task_state_name(t->state), "model", t->model, "aspect_ratio", t->aspect_ratio,
      "resolution", t->resolution, "provider", string_or_null(t->provider), "attempts",
      t->attempts, "created_at", api_json_time(t->created_ms), "started_at",
      api_json_time(t->started_ms), "finished_at", api_json_time(t->finished_ms), "images", images,
      "result_urls", urls, "error", error, "upstream_attempts", render_attempts(t), "cost",
      render_cost(t));
  if (!doc) return NULL;
  /* Delivery: the deadline, a cancel on its way, the webhook and its
   * attempts, and a progress estimate while it runs. */
  /* Images asked for; "images" lists those delivered (and paid for). */
  json_object_set_new(doc, "n", json_integer(t->quantity > 0 ? t->quantity : 1));
  /* Only models that have a quality setting (GPT Image) show one. */
  if (t->quality) json_object_set_new(doc, "quality", api_json_text(t->quality));
  /* The background asked for ("auto" when none was), and the mask the
   * task edits under, if any (its bytes stay server-side). */
  json_object_set_new(doc, "background", api_json_text(t->background ? t->background : "auto"));
  json_object_set_new(doc, "mask",
                      t->mask ? json_pack("{s:s, s:I}", "content_type",
                                          t->mask->mime ? t->mask->mime : "image/png", "bytes",
                                          (json_int_t)t->mask->bytes)
                              : json_null());
  json_object_set_new(doc, "deadline_at", api_json_time(t->deadline_ms));
  /* The format asked for (null: as the upstream made them) and, for the
   * lossy ones, their quality. images[].content_type says what each is. */
  bool lossy = t->output_format && strcmp(t->output_format, "png") != 0;
  json_object_set_new(doc, "output_format", string_or_null(t->output_format));
  json_object_set_new(doc, "output_compression",
                      lossy ? json_integer(t->output_compression) : json_null());
  if (!task_state_is_final(t->state))
    json_object_set_new(doc, "cancel_requested", json_boolean(t->cancel_requested));
  if (t->webhook_url) {
    json_object_set_new(doc, "webhook_url", api_json_text(t->webhook_url));
    json_object_set_new(doc, "webhook_deliveries", render_deliveries(c, t));
  }
  if (t->state == TASK_RUNNING) {
    int pct = core_progress_percent(c, t, time_now_ms());
    json_object_set_new(doc, "progress", pct >= 0 ? json_integer(pct) : json_null());
  }
  return doc;
}

json_t *native_render_task_for(http_request *req, core *c, const task *t) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  return native_render_task(base, c, t);
}

/* The webhook payload: the event and the task, as an answer would show it,
 * with image links on the host the client submitted to. */
char *api_native_webhook_payload(core *c, const task *t, const char *event, int64_t now_ms) {
  char base[600];
  api_webhook_base(c, t, base, sizeof base);
  json_t *doc = json_pack("{s:s, s:o, s:o}", "type", event, "timestamp", api_json_time(now_ms),
                          "data", native_render_task(base, c, t));
  return api_json_take_text(doc);
}
