/* openai.c - the OpenAI Images dialect (OpenAI's SDKs, and seed 003's
 * ToAPIs-style /v1/images/generations).
 *
 *   POST /v1/images/generations   {model, prompt, n, size, quality, resolution,
 *                                  reference_images, response_format,
 *                                  output_format, output_compression,
 *                                  background, stream, user, async}
 *                                 -> {created, data:[{b64_json}|{url}], ...}
 *                                 synchronous by default, as the SDKs expect;
 *                                 "async": true or Prefer: respond-async -> a task
 *   GET  /v1/images/tasks/{id}    -> the task (seed 003's polling)
 *   GET  /v1/models               -> the catalog as OpenAI lists models
 *
 * Errors in OpenAI's shape: {"error":{"message","type","param","code"}},
 * every refusal included (the seam sends those raised before a handler here
 * for every path under /v1/). x-request-id is on every answer (the HTTP
 * layer's X-Request-Id). docs/api-openai.md says what is and is not taken. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/await.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/multipart.h"
#include "util/timeutil.h"

/* A synchronous generation waits this long at most (the default retry
 * deadline: by then the task has ended). */
#define OPENAI_SYNC_WAIT_S 300

/* --- errors ---------------------------------------------------------------- */

/* OpenAI's error "type" for an HTTP status. */
static const char *error_type(int status) {
  switch (status) {
  case 401: return "authentication_error";
  case 402: return "insufficient_quota";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 429: return "rate_limit_exceeded";
  default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

static void openai_error_shape(http_request *req, int status, const imgate_error *err) {
  json_t *doc = json_pack("{s:{s:o, s:s, s:o, s:s}}", "error", "message",
                          api_json_text(err->message), "type", error_type(status), "param",
                          err->param[0] ? json_string(err->param) : json_null(), "code",
                          err->slug);
  char fallback[200]; /* text that cannot be encoded: still the shape, and the status */
  snprintf(fallback, sizeof fallback,
           "{\"error\":{\"message\":\"the error could not be described\",\"type\":"
           "\"%s\",\"param\":null,\"code\":\"%s\"}}",
           error_type(status), api_plain_slug(err->slug) ? err->slug : "internal_error");
  api_reply_error_doc(req, status, doc, fallback);
}

/* --- request fields ---------------------------------------------------------- */

static int bad_field(http_request *req, const char *field, const char *slug, const char *msg) {
  api_reply_error(req, 400, slug, msg, field);
  return -1;
}

/* One of the listed values (or absent); -1 (answered) otherwise. */
static int opt_enum(http_request *req, json_t *body, const char *field,
                    const char *const *allowed, const char **out) {
  if (api_json_string(req, body, field, out) < 0) return -1;
  if (!*out) return 0;
  for (const char *const *a = allowed; *a; a++)
    if (strcmp(*a, *out) == 0) return 0;
  char msg[200];
  int n = snprintf(msg, sizeof msg, "%s must be one of:", field);
  for (const char *const *a = allowed; *a && n > 0 && (size_t)n < sizeof msg; a++)
    n += snprintf(msg + n, sizeof msg - (size_t)n, " %s", *a);
  return bad_field(req, field, "invalid_value", msg);
}

/* size: OpenAI's WxH for GPT Image, or a W:H ratio as seed 003 writes it,
 * or "auto". The ratio goes to the core, which checks the model has it. */
static int parse_size(http_request *req, const char *size, char *ratio, size_t ratio_size) {
  if (!size || strcmp(size, "auto") == 0) {
    snprintf(ratio, ratio_size, "auto");
    return 0;
  }
  static const struct {
    const char *wxh, *ratio;
  } sizes[] = {{"1024x1024", "1:1"}, {"1536x1024", "3:2"}, {"1024x1536", "2:3"}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (strcmp(size, sizes[i].wxh) == 0) {
      snprintf(ratio, ratio_size, "%s", sizes[i].ratio);
      return 0;
    }
  unsigned w, h;
  char tail;
  if (sscanf(size, "%u:%u%c", &w, &h, &tail) == 2 && w > 0 && h > 0 && w < 100 && h < 100) {
    snprintf(ratio, ratio_size, "%u:%u", w, h);
    return 0;
  }
  return bad_field(req, "size", "invalid_size",
                   "size must be 1024x1024, 1536x1024, 1024x1536, auto, or a ratio such as 16:9");
}

/* What the answer needs to know once the task is final. */
typedef struct openai_answer {
  bool b64;      /* response_format b64_json (else url) */
  bool stream;   /* answer as image_generation.* (image_edit.*) server-sent events */
  bool edit;     /* an edit: its events are image_edit.* */
} openai_answer;

/* --- answers --------------------------------------------------------------- */

static const char *format_of(const char *mime) {
  if (mime && strcmp(mime, "image/jpeg") == 0) return "jpeg";
  if (mime && strcmp(mime, "image/webp") == 0) return "webp";
  return "png";
}

/* One image of the answer: {"b64_json": ...} or {"url": ...}, appended to out
 * as JSON text (base64 needs no escaping, and a 40 MB image is not copied
 * once more into a JSON tree). */
static bool append_image(buf *out, core *c, const char *base, const task_result *r, bool b64,
                         imgate_error *err) {
  if (!b64) {
    char name[160];
    if (!core_result_file_name(r, name, sizeof name)) return false;
    return buf_printf(out, "{\"url\":\"%s/files/%s\"}", base, name);
  }
  uint8_t *data;
  size_t len;
  if (core_read_result(c, r, &data, &len, err) < 0) return false;
  char *text = base64_encode(data, len);
  free(data);
  bool ok = text && buf_append_str(out, "{\"b64_json\":\"") && buf_append_str(out, text) &&
            buf_append_str(out, "\"}");
  free(text);
  return ok;
}

/* A task that ended without images, in OpenAI's terms. */
static void reply_unfinished(http_request *req, const task *t) {
  imgate_error e = {0};
  const char *code = t->error_code ? t->error_code : "upstream_error";
  const char *msg = t->error_message ? t->error_message : "the image could not be made";
  snprintf(e.slug, sizeof e.slug, "%s", code);
  snprintf(e.message, sizeof e.message, "%s", msg);
  int status = 500;
  if (t->state == TASK_MODERATED) {
    /* What OpenAI answers for a refused prompt; the SDK raises BadRequestError. */
    snprintf(e.slug, sizeof e.slug, "moderation_blocked");
    snprintf(e.message, sizeof e.message,
             "Your request was rejected by the safety system (%s).", code);
    status = 400;
    json_t *doc = json_pack("{s:{s:o, s:s, s:n, s:s}}", "error", "message",
                            api_json_text(e.message), "type", "image_generation_user_error",
                            "param", "code", "moderation_blocked");
    snprintf(req->log_error, sizeof req->log_error, "moderation_blocked");
    http_reply_json(req, status, doc);
    return;
  }
  if (t->state == TASK_CANCELED) status = 400;
  api_reply_core_error(req, status, &e);
}

/* The quality an answer reports, as OpenAI's does: what the upstream says
 * it made, else what was asked ("auto" when nothing was, or for a model
 * without qualities). */
static const char *answer_quality(const task *t) {
  const task_result *first = t->n_results ? &t->results[0] : NULL;
  if (first && first->quality) return first->quality;
  return t->quality ? t->quality : "auto";
}

/* The background an answer reports, as OpenAI's does ("transparent" or
 * "opaque"): what the upstream says it made, else what was asked; a JPEG, or
 * an image whose background no one named ("auto", a model that makes no
 * transparency), is opaque. */
static const char *answer_background(const task *t) {
  const task_result *first = t->n_results ? &t->results[0] : NULL;
  if (first && strcmp(format_of(first->mime), "jpeg") == 0) return "opaque";
  if (first && first->background) return first->background;
  return t->background && strcmp(t->background, "transparent") == 0 ? "transparent" : "opaque";
}

static void reply_images(http_request *req, core *c, const task *t, const openai_answer *a) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  buf out = BUF_INIT;
  imgate_error err = {0};
  const task_result *first = t->n_results ? &t->results[0] : NULL;
  const char *quality = answer_quality(t);
  const char *background = answer_background(t);
  char size[32] = "auto";
  if (first) snprintf(size, sizeof size, "%dx%d", first->width, first->height);
  int64_t created = (t->finished_ms > 0 ? t->finished_ms : time_now_ms()) / 1000;
  bool ok = buf_printf(&out, "{\"created\":%lld,\"data\":[", (long long)created);
  for (size_t i = 0; ok && i < t->n_results; i++)
    ok = (i == 0 || buf_append_str(&out, ",")) &&
         append_image(&out, c, base, &t->results[i], a->b64, &err);
  ok = ok && buf_printf(&out,
                        "],\"background\":\"%s\",\"output_format\":\"%s\",\"quality\":\"%s\","
                        "\"size\":\"%s\"}",
                        background, format_of(first ? first->mime : NULL), quality, size);
  if (!ok) {
    buf_free(&out);
    if (!err.slug[0]) err_set(&err, ERR_INTERNAL, "internal_error", NULL, "out of memory");
    api_reply_from_core(req, &err);
    return;
  }
  if (!a->stream) {
    http_reply_bytes(req, 200, "application/json", out.data, out.len);
    buf_free(&out);
    return;
  }
  /* Streamed: the completed event carries the image (no partials: the
   * upstreams imgate calls do not make any); then the stream ends. */
  http_reply_header(req, "Cache-Control", "no-cache");
  http_stream_start(req, 200, "text/event-stream");
  json_error_t jerr;
  json_t *whole = json_loadb(out.data, out.len, 0, &jerr);
  buf_free(&out);
  json_t *items = json_object_get(whole, "data");
  size_t i;
  json_t *item;
  json_array_foreach(items, i, item) {
    const char *type = a->edit ? "image_edit.completed" : "image_generation.completed";
    json_t *ev = json_pack("{s:s, s:O?, s:O?, s:s, s:s, s:s, s:s, s:I}", "type", type,
                           "b64_json",
                           json_object_get(item, "b64_json"), "url", json_object_get(item, "url"),
                           "background", background, "output_format",
                           format_of(first ? first->mime : NULL), "quality", quality, "size",
                           size, "created_at",
                           (json_int_t)created);
    char *text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (text) {
      char head[64];
      int hn = snprintf(head, sizeof head, "event: %s\ndata: ", type);
      http_stream_write(req, head, (size_t)hn);
      http_stream_write(req, text, strlen(text));
      http_stream_write(req, "\n\n", 2);
      free(text);
    }
  }
  json_decref(whole);
  http_stream_end(req);
}

/* The async answer and GET /v1/images/tasks/{id}: the task as seed 003 polls it. */
static json_t *render_task(http_request *req, core *c, const task *t) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  json_t *data = json_array();
  for (size_t i = 0; i < t->n_results; i++) {
    char name[160];
    if (!core_result_file_name(&t->results[i], name, sizeof name)) continue;
    char url[800];
    snprintf(url, sizeof url, "%s/files/%s", base, name);
    json_array_append_new(data, json_pack("{s:s}", "url", url));
  }
  json_t *error = json_null();
  if (t->error_code)
    error = json_pack("{s:s, s:o}", "code", t->state == TASK_MODERATED ? "moderation_blocked"
                                                                       : t->error_code,
                      "message", api_json_text(t->error_message ? t->error_message : ""));
  json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:I, s:o, s:o}", "id", t->id, "object",
                          "image.task", "status", task_state_name(t->state), "model", t->model,
                          "created", (json_int_t)(t->created_ms / 1000), "data", data, "error",
                          error);
  /* What was asked, as the synchronous answer names it, when it was. */
  const char *asked[][2] = {{"quality", t->quality},
                            {"background", t->background},
                            {"output_format", t->output_format}};
  for (size_t i = 0; doc && i < sizeof asked / sizeof asked[0]; i++)
    if (asked[i][1]) json_object_set_new(doc, asked[i][0], json_string(asked[i][1]));
  return doc;
}

static void answer_ready(http_request *req, core *c, const task *t, bool final,
                         const imgate_error *err, void *arg) {
  const openai_answer *a = arg;
  if (!t) {
    api_reply_from_core(req, err);
    return;
  }
  if (!final) {
    /* Not done within the wait: the task, to poll. A 5xx here would make
     * the SDKs retry, and each retry would be a new task, paid again. */
    http_reply_json(req, 202, render_task(req, c, t));
    return;
  }
  if (t->state == TASK_SUCCEEDED && t->n_results > 0) reply_images(req, c, t, a);
  else reply_unfinished(req, t);
}

/* --- handlers ---------------------------------------------------------------- */

static const char *const qualities[] = {"low", "medium", "high", "auto", "standard", "hd", NULL};
static const char *const response_formats[] = {"url", "b64_json", NULL};
static const char *const output_formats[] = {"png", "jpeg", "webp", NULL};
static const char *const backgrounds[] = {"transparent", "opaque", "auto", NULL};
static const char *const moderations[] = {"auto", "low", NULL};

/* The core's quality for the client's: DALL-E's words are taken as the
 * nearest GPT Image ones ("hd" the best, "standard" the default), so that
 * code written for DALL-E 3 keeps working. */
static const char *core_quality(const char *quality) {
  if (quality && strcmp(quality, "hd") == 0) return "high";
  if (quality && strcmp(quality, "standard") == 0) return "auto";
  return quality;
}

static bool is_gpt_image(const char *model) {
  const catalog_model *m = catalog_lookup(model, NULL);
  return m && m->sizes == CATALOG_SIZES_GPT_IMAGE;
}

/* A generation (uploads NULL) or an edit (the uploaded images, and the
 * uploaded mask or NULL) from the request's fields as JSON; answers it. */
static void generate(http_request *req, core *c, const store_account *acct_in, json_t *body,
                     const core_image_bytes *uploads, size_t n_uploads,
                     const core_image_bytes *mask) {
  store_account acct = *acct_in;
  core_gen_request gr = {0};
  gr.image_bytes = uploads;
  gr.n_image_bytes = n_uploads;
  if (mask) gr.mask_bytes = *mask;
  const char *size = NULL, *quality = NULL, *response_format = NULL, *output_format = NULL;
  const char *background = NULL, *moderation = NULL, *user = NULL;
  const char *images[16];
  char ratio[16];
  if (api_json_string(req, body, "model", &gr.model) < 0 ||
      api_json_string(req, body, "prompt", &gr.prompt) < 0 ||
      api_json_string(req, body, "size", &size) < 0 ||
      api_json_string(req, body, "resolution", &gr.resolution) < 0 ||
      api_json_string(req, body, "user", &user) < 0 ||
      opt_enum(req, body, "quality", qualities, &quality) < 0 ||
      opt_enum(req, body, "response_format", response_formats, &response_format) < 0 ||
      opt_enum(req, body, "output_format", output_formats, &output_format) < 0 ||
      api_json_output(req, body, &gr) < 0 ||
      opt_enum(req, body, "background", backgrounds, &background) < 0 ||
      opt_enum(req, body, "moderation", moderations, &moderation) < 0 ||
      parse_size(req, size, ratio, sizeof ratio) < 0)
    goto done;
  if (!gr.model) {
    bad_field(req, "model", "missing_field", "model is required");
    goto done;
  }
  gr.aspect_ratio = ratio;
  gr.quality = core_quality(quality);
  gr.background = background;
  json_t *n = json_object_get(body, "n");
  if (n && !json_is_null(n)) {
    if (!json_is_integer(n)) {
      bad_field(req, "n", "invalid_type", "n must be an integer");
      goto done;
    }
    gr.quantity = core_quantity_arg(json_integer_value(n));
  }
  if (api_json_image_list(req, body, "reference_images", images,
                          sizeof images / sizeof images[0], &gr.n_images) < 0)
    goto done;
  gr.images = images;
  json_t *stream = json_object_get(body, "stream");
  json_t *async = json_object_get(body, "async");
  if ((stream && !json_is_boolean(stream) && !json_is_null(stream)) ||
      (async && !json_is_boolean(async) && !json_is_null(async))) {
    bad_field(req, stream && !json_is_boolean(stream) ? "stream" : "async", "invalid_type",
              "stream and async must be true or false");
    goto done;
  }
  const char *prefer = http_header_get(req, "Prefer");
  bool want_async = json_is_true(async) || (prefer && strcasestr(prefer, "respond-async"));

  task *t = NULL;
  bool replayed = false;
  if (api_submit(req, c, &acct, &gr, &t, &replayed) < 0) goto done;
  if (replayed) http_reply_header(req, "Idempotent-Replayed", "true");
  if (want_async) {
    http_reply_json(req, 202, render_task(req, c, t));
  } else {
    openai_answer a = {.stream = json_is_true(stream), .edit = n_uploads > 0};
    /* GPT Image answers base64 unless asked otherwise (OpenAI's default);
     * the other models answer URLs (seed 003's default). */
    a.b64 = response_format ? strcmp(response_format, "b64_json") == 0 : is_gpt_image(gr.model);
    API_AWAIT_TASK(req, c, &acct, t, OPENAI_SYNC_WAIT_S, answer_ready, &a);
  }
  task_free(t);
done:
  return;
}

static void handle_generations(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  generate(req, c, &acct, body, NULL, 0, NULL);
  json_decref(body);
}

/* The most parts an edit takes: 16 images, a mask and the text fields. */
#define OPENAI_MAX_PARTS 40
#define OPENAI_MAX_UPLOADS 16

/* POST /v1/images/edits: multipart/form-data, as the SDKs send it (image or
 * repeated image[] files, typed application/octet-stream or anything: the
 * bytes tell the format; the body may come chunked). The text fields become
 * the same fields a generation takes. */
static void handle_edits(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  char boundary[80];
  if (!multipart_boundary(http_header_get(req, "Content-Type"), boundary, sizeof boundary)) {
    api_reply_error(req, 400, "invalid_request",
                    "an edit is multipart/form-data with a boundary", NULL);
    return;
  }
  multipart_part *parts = calloc(OPENAI_MAX_PARTS, sizeof *parts);
  json_t *body = json_object();
  if (!parts || !body) {
    free(parts);
    json_decref(body);
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  char why[128];
  int n = multipart_parse((const uint8_t *)req->body, req->body_len, boundary, parts,
                          OPENAI_MAX_PARTS, why, sizeof why);
  core_image_bytes uploads[OPENAI_MAX_UPLOADS];
  size_t n_uploads = 0;
  core_image_bytes mask = {0};
  bool has_mask = false;
  if (n < 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "the multipart body cannot be read: %s", why);
    api_reply_error(req, 400, "invalid_request", msg, NULL);
    goto done;
  }
  for (int i = 0; i < n; i++) {
    const multipart_part *p = &parts[i];
    if (strcmp(p->name, "image") == 0 || strcmp(p->name, "image[]") == 0) {
      if (n_uploads == OPENAI_MAX_UPLOADS) {
        api_reply_error(req, 400, "too_many_images", "at most 16 images", "image");
        goto done;
      }
      uploads[n_uploads++] = (core_image_bytes){.data = p->data, .len = p->len};
      continue;
    }
    if (strcmp(p->name, "mask") == 0) {
      /* A file like the images; what it must be, the core checks. */
      if (has_mask) {
        api_reply_error(req, 400, "invalid_mask", "an edit takes one mask", "mask");
        goto done;
      }
      mask = (core_image_bytes){.data = p->data ? p->data : (const uint8_t *)"", .len = p->len};
      has_mask = true;
      continue;
    }
    /* A text field: n is a number, stream a boolean, the rest strings. */
    json_t *v = json_stringn((const char *)p->data, p->len);
    if (!v) {
      api_reply_error(req, 400, "invalid_value", "a form field is not UTF-8 text", p->name);
      goto done;
    }
    if (strcmp(p->name, "n") == 0 || strcmp(p->name, "stream") == 0 ||
        strcmp(p->name, "output_compression") == 0) {
      const char *text = json_string_value(v);
      char *end;
      long num = strtol(text, &end, 10);
      json_t *typed = strcmp(p->name, "stream") == 0
                          ? (strcmp(text, "true") == 0    ? json_true()
                             : strcmp(text, "false") == 0 ? json_false()
                                                          : json_incref(v))
                      : (*text && !*end) ? json_integer(num)
                                         : json_incref(v);
      json_decref(v);
      v = typed;
    }
    json_object_set_new(body, p->name, v);
  }
  if (n_uploads == 0) {
    api_reply_error(req, 400, "missing_field", "an edit needs an image (image or image[])",
                    "image");
    goto done;
  }
  generate(req, c, &acct, body, uploads, n_uploads, has_mask ? &mask : NULL);
done:
  json_decref(body);
  free(parts);
}

static void handle_task(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = api_read_task(req, c, &acct, http_param_get(req, "id"));
  if (!t) return;
  http_reply_json(req, 200, render_task(req, c, t));
  task_free(t);
}

/* An available model as OpenAI lists it: OpenAI's four members, then
 * imgate's prices (the SDKs keep what they do not know): the native model
 * list's, GPT Image's as its grid. */
static json_t *render_model(core *c, const core_model_info *info) {
  (void)c;
  if (!info->available) return NULL;
  return json_pack("{s:s, s:s, s:i, s:s, s:s, s:o, s:o}", "id", info->model->name, "object",
                   "model", "created", 0, "owned_by", "imgate", "priced_by",
                   api_priced_by(info), "prices_usd", api_json_prices(info),
                   "reference_image_usd", api_json_usd(info->reference_micros));
}

static void handle_models(http_request *req, void *ctx) {
  json_t *list = api_model_list(req, ctx, render_model);
  if (list) http_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", list));
}

/* Webhook payloads of tasks made here: the task as GET /v1/images/tasks shows it. */
static char *openai_webhook(core *c, const task *t, const char *event, int64_t now_ms) {
  (void)c;
  json_t *data = json_pack("{s:s, s:s, s:s, s:s, s:I}", "id", t->id, "object", "image.task",
                           "status", task_state_name(t->state), "model", t->model, "created",
                           (json_int_t)(t->created_ms / 1000));
  if (data && t->error_code)
    json_object_set_new(data, "error", json_pack("{s:s}", "code", t->error_code));
  json_t *doc = data ? json_pack("{s:s, s:I, s:o}", "type", event, "created",
                                 (json_int_t)(now_ms / 1000), "data", data)
                     : NULL;
  return api_json_take_text(doc);
}

static void openai_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/v1/images/generations", api_guard_key,
                          handle_generations, c);
  http_router_add_guarded(r, "POST", "/v1/images/edits", api_guard_key, handle_edits, c);
  http_router_add_guarded(r, "GET", "/v1/images/tasks/{id}", api_guard_key, handle_task, c);
  http_router_add_guarded(r, "GET", "/v1/models", api_guard_key, handle_models, c);
}

static const char *const openai_prefixes[] = {"/v1/", NULL};

/* The core names fields its own way; this dialect's clients know these. */
static const api_field_name openai_fields[] = {
    {CORE_FIELD_IMAGES, "reference_images"},
    {CORE_FIELD_QUANTITY, "n"},
    {CORE_FIELD_ASPECT_RATIO, "size"},
    {CORE_FIELD_IDEMPOTENCY_KEY, "Idempotency-Key"},
    {NULL, NULL},
};

const api_dialect api_openai_dialect = {
    .name = "openai",
    .prefixes = openai_prefixes,
    .register_routes = openai_register,
    .read_key = api_read_bearer,
    .reply_error = openai_error_shape,
    .field_names = openai_fields,
    .render_webhook = openai_webhook,
};
