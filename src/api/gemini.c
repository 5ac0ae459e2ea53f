/* gemini.c - the Gemini dialect: Google's Gemini API (generativelanguage,
 * v1beta) as its SDKs call it, so that a Gemini client pointed at imgate
 * (base URL and key changed, nothing else) makes its images here.
 *
 *   POST /v1beta/models/{model}:generateContent        -> GenerateContentResponse,
 *                                                         image inline (base64)
 *   POST /v1beta/models/{model}:streamGenerateContent  -> ?alt=sse: server-sent
 *                                                         events "data: {...}"; else a
 *                                                         JSON array of responses
 *   GET  /v1beta/models, GET /v1beta/models/{model}    -> the catalog as Gemini models
 *
 * The key: x-goog-api-key, or ?key=, or Authorization: Bearer. A generation
 * is an imgate task like any other (held, charged, listed by the native API);
 * the request waits for it without holding a thread, and the answer is
 * rendered by gemini_render.c. Every refusal of a path under /v1beta/, those
 * of the HTTP layer included, is a Gemini error document. docs/api-gemini.md
 * tells what is supported and what is not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/follow.h"
#include "api/gemini_int.h"
#include "api/sse.h"
#include "util/buf.h"

/* How long a generation request waits for its image: the default retry
 * deadline, by which the task has succeeded or failed. */
#define GEMINI_WAIT_S 300
/* Reference images one request may carry (the core applies the model's own,
 * smaller limit; this only bounds the array). */
#define GEMINI_MAX_IMAGES 16

/* --- reading a GenerateContentRequest ------------------------------------ */

/* A member under Google's JSON name or the snake_case one its REST
 * examples use ("inlineData" / "inline_data"). */
static json_t *member(json_t *obj, const char *camel, const char *snake) {
  json_t *v = json_object_get(obj, camel);
  return v ? v : snake ? json_object_get(obj, snake) : NULL;
}

static bool absent(json_t *v) { return !v || json_is_null(v); }

static void bad_field(http_request *req, const char *message) {
  gemini_reply_error(req, 400, "invalid_request", message);
}

/* What a request asks for, read from its body; the strings point into it. */
typedef struct gemini_ask {
  buf prompt;
  const char *images[GEMINI_MAX_IMAGES];
  size_t n_images;
  const char *aspect_ratio, *image_size;
  int quantity;
} gemini_ask;

/* The text parts of a Content, joined with newlines into the prompt. */
static int read_parts(http_request *req, json_t *content, bool take_text, gemini_ask *ask) {
  json_t *parts = json_object_get(content, "parts");
  if (absent(parts)) return 0;
  if (!json_is_array(parts)) {
    bad_field(req, "contents[].parts must be an array of parts");
    return -1;
  }
  size_t i;
  json_t *part;
  json_array_foreach(parts, i, part) {
    if (!json_is_object(part)) {
      bad_field(req, "each of contents[].parts must be an object");
      return -1;
    }
    /* Thought parts are a model's drafts, not what anyone asked for. */
    if (json_is_true(json_object_get(part, "thought"))) continue;
    json_t *text = json_object_get(part, "text");
    json_t *inl = member(part, "inlineData", "inline_data");
    json_t *file = member(part, "fileData", "file_data");
    if (!absent(text)) {
      if (!json_is_string(text)) {
        bad_field(req, "contents[].parts[].text must be a string");
        return -1;
      }
      /* A model's words in an earlier turn are not part of the request. */
      if (!take_text || !json_string_length(text)) continue;
      if ((ask->prompt.len && !buf_append_str(&ask->prompt, "\n")) ||
          !buf_append_str(&ask->prompt, json_string_value(text))) {
        gemini_reply_error(req, 500, "internal_error", "out of memory");
        return -1;
      }
      continue;
    }
    const char *ref = NULL;
    if (!absent(inl)) {
      /* The bytes themselves: the core detects their type, whatever
       * mimeType says, so an image can never be mislabelled. */
      json_t *data = json_object_get(inl, "data");
      if (!json_is_object(inl) || !json_is_string(data)) {
        bad_field(req, "contents[].parts[].inlineData needs data, the image in base64");
        return -1;
      }
      ref = json_string_value(data);
    } else if (!absent(file)) {
      /* A link the image can be fetched from (Google's Files API URIs are
       * Google's; imgate fetches http(s) URLs as its reference images). */
      json_t *uri = member(file, "fileUri", "file_uri");
      if (!json_is_object(file) || !json_is_string(uri)) {
        bad_field(req, "contents[].parts[].fileData needs fileUri, an https URL of the image");
        return -1;
      }
      ref = json_string_value(uri);
    } else {
      continue; /* functionCall and friends: nothing an image model takes */
    }
    if (ask->n_images == GEMINI_MAX_IMAGES) {
      api_reply_error(req, 400, "too_many_images", "at most 10 reference images",
                      "contents.parts.inlineData");
      return -1;
    }
    ask->images[ask->n_images++] = ref;
  }
  return 0;
}

/* contents: one Content or an array of them; each turn's images are
 * references (an earlier answer's image included, as in a multi-turn
 * edit), only the user's text is the prompt. */
static int read_contents(http_request *req, json_t *body, gemini_ask *ask) {
  json_t *sys = member(body, "systemInstruction", "system_instruction");
  if (!absent(sys)) {
    if (!json_is_object(sys)) {
      bad_field(req, "systemInstruction must be a Content object");
      return -1;
    }
    if (read_parts(req, sys, true, ask) < 0) return -1;
  }
  json_t *contents = json_object_get(body, "contents");
  if (absent(contents)) return 0; /* the core says a prompt is needed */
  if (json_is_object(contents)) return read_parts(req, contents, true, ask);
  if (!json_is_array(contents)) {
    bad_field(req, "contents must be an array of Content objects");
    return -1;
  }
  size_t i;
  json_t *content;
  json_array_foreach(contents, i, content) {
    json_t *role = json_object_get(content, "role");
    if (!json_is_object(content) || (!absent(role) && !json_is_string(role))) {
      bad_field(req, "each of contents must be a Content object ({role, parts})");
      return -1;
    }
    bool user = absent(role) || strcmp(json_string_value(role), "user") == 0;
    if (read_parts(req, content, user, ask) < 0) return -1;
  }
  return 0;
}

static int optional_string(http_request *req, json_t *obj, const char *camel, const char *snake,
                           const char *what, const char **out) {
  json_t *v = member(obj, camel, snake);
  if (absent(v)) return 0;
  if (!json_is_string(v)) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be a string", what);
    bad_field(req, msg);
    return -1;
  }
  *out = json_string_value(v);
  return 0;
}

/* generationConfig: the image's shape and how many; text-only output is
 * not something imgate makes. */
static int read_config(http_request *req, json_t *body, gemini_ask *ask) {
  json_t *cfg = member(body, "generationConfig", "generation_config");
  if (absent(cfg)) return 0;
  if (!json_is_object(cfg)) {
    bad_field(req, "generationConfig must be an object");
    return -1;
  }
  json_t *modalities = member(cfg, "responseModalities", "response_modalities");
  if (!absent(modalities)) {
    bool image = false;
    size_t i;
    json_t *m;
    if (!json_is_array(modalities)) goto bad_modalities;
    json_array_foreach(modalities, i, m) {
      if (!json_is_string(m)) goto bad_modalities;
      if (strcasecmp(json_string_value(m), "IMAGE") == 0) image = true;
    }
    if (!image) {
      bad_field(req, "imgate makes images: generationConfig.responseModalities must include "
                     "\"IMAGE\"");
      return -1;
    }
  }
  json_t *image = member(cfg, "imageConfig", "image_config");
  if (!absent(image)) {
    if (!json_is_object(image)) {
      bad_field(req, "generationConfig.imageConfig must be an object");
      return -1;
    }
    if (optional_string(req, image, "aspectRatio", "aspect_ratio",
                        "generationConfig.imageConfig.aspectRatio", &ask->aspect_ratio) < 0 ||
        optional_string(req, image, "imageSize", "image_size",
                        "generationConfig.imageConfig.imageSize", &ask->image_size) < 0)
      return -1;
  }
  json_t *count = member(cfg, "candidateCount", "candidate_count");
  if (!absent(count)) {
    if (!json_is_integer(count)) {
      bad_field(req, "generationConfig.candidateCount must be a whole number");
      return -1;
    }
    ask->quantity = core_quantity_arg(json_integer_value(count));
  }
  return 0;
bad_modalities:
  bad_field(req, "generationConfig.responseModalities must be an array of strings");
  return -1;
}

/* Reads the body and submits the task: 0 with *out, or -1 once answered. */
static int submit(http_request *req, core *c, const store_account *acct, const char *model,
                  task **out) {
  json_t *body = api_parse_json_object(req);
  if (!body) return -1;
  gemini_ask ask = {.prompt = BUF_INIT};
  int rc = -1;
  if (read_contents(req, body, &ask) < 0 || read_config(req, body, &ask) < 0) goto done;
  core_gen_request gr = {
      .model = model,
      .prompt = ask.prompt.data,
      .aspect_ratio = ask.aspect_ratio,
      .resolution = ask.image_size,
      .webhook_url = http_header_get(req, "X-Imgate-Webhook-Url"),
      .images = ask.images,
      .n_images = ask.n_images,
      .quantity = ask.quantity,
  };
  bool replayed = false;
  if (api_submit(req, c, acct, &gr, out, &replayed) < 0) goto done;
  if (replayed) http_reply_header(req, "Idempotent-Replayed", "true");
  rc = 0;
done:
  buf_free(&ask.prompt);
  json_decref(body);
  return rc;
}

/* --- waiting for the image, and answering ------------------------------- */

typedef enum {
  GEMINI_UNARY,      /* :generateContent */
  GEMINI_SSE,        /* :streamGenerateContent?alt=sse */
  GEMINI_JSON_ARRAY, /* :streamGenerateContent without alt=sse: a JSON array */
} gemini_mode;

/* A request waiting for its task: the follower's state (follow.h). */
typedef struct gen_wait {
  char model[160];
  gemini_mode mode;
  /* SSE: the stream's head went out (a keep-alive was due before the task
   * ended); from then on an error can only be told inside the stream. */
  bool started;
} gen_wait;

static void start_stream(http_request *req, gen_wait *w) {
  if (w->started) return;
  api_sse_start(req);
  w->started = true;
}

static void answer_error(http_request *req, gen_wait *w, int status, const imgate_error *err) {
  if (w->mode == GEMINI_SSE && w->started) {
    /* Too late for a status: the error is the stream's last event, as
     * Gemini sends one that arises mid-stream. */
    snprintf(req->log_error, sizeof req->log_error, "%s", err->slug);
    api_sse_event(req, NULL, NULL, gemini_error_doc(status, err));
    http_stream_end(req);
    return;
  }
  api_rate_limit_headers(req, err);
  api_reply_core_error(req, status, err);
}

static void answer_final(http_request *req, core *c, gen_wait *w, const task *t) {
  json_t *doc = NULL;
  int status = 0;
  imgate_error err = {0};
  if (gemini_render_final(c, t, w->model, &doc, &status, &err) == GEMINI_OUTCOME_ERROR) {
    answer_error(req, w, status, &err);
    return;
  }
  switch (w->mode) {
  case GEMINI_UNARY:
    http_reply_json(req, 200, doc);
    break;
  case GEMINI_JSON_ARRAY:
    http_reply_json(req, 200, json_pack("[o]", doc));
    break;
  case GEMINI_SSE:
    start_stream(req, w);
    api_sse_event(req, NULL, NULL, doc);
    http_stream_end(req);
    break;
  }
}

/* The task is still not final when the request stops waiting. */
static void answer_unfinished(http_request *req, const api_follow *f, int status, const char *slug,
                              const char *why) {
  imgate_error err = {0};
  err_set(&err, status == 503 ? ERR_UNAVAILABLE : ERR_INTERNAL, slug, NULL,
          "%s; the task %s goes on: GET /api/banana/%s shows it", why, f->uid, f->uid);
  answer_error(req, f->state, status, &err);
}

/* Answers the task once it is final; until then an SSE stream gets a
 * keep-alive now and then. */
static int64_t gen_look(http_request *req, api_follow *f, api_follow_why why) {
  gen_wait *w = f->state;
  task *t = NULL;
  imgate_error err = {0};
  if (api_follow_read(f, &t, &err) < 0) {
    answer_error(req, w, err_http_status(err.code), &err);
    return API_FOLLOW_DONE;
  }
  int64_t next = API_FOLLOW_DONE;
  if (task_state_is_final(t->state)) {
    answer_final(req, f->c, w, t);
  } else if (why == API_FOLLOW_STOPPING) {
    answer_unfinished(req, f, 503, "shutting_down", "imgate is shutting down");
  } else if (why == API_FOLLOW_OVER) {
    char why_text[80];
    snprintf(why_text, sizeof why_text, "the image is not ready after %d s", GEMINI_WAIT_S);
    answer_unfinished(req, f, 504, "wait_timeout", why_text);
  } else if (why == API_FOLLOW_UNWATCHED) {
    /* The task is submitted and held: say where to find it rather than a
     * bare 500 a client would retry into a second, paid task. */
    char msg[200];
    snprintf(msg, sizeof msg,
             "the task %s was submitted but cannot be waited for now; GET /api/banana/%s "
             "follows it",
             f->uid, f->uid);
    gemini_reply_error(req, 503, "unavailable", msg);
  } else {
    if (why == API_FOLLOW_TICK && w->mode == GEMINI_SSE) {
      /* Something on the wire now and then, so that no proxy cuts the
       * stream as idle: a blank line, which SSE readers (Google's SDK
       * among them) pass over. */
      start_stream(req, w);
      http_stream_write(req, "\n", 1);
    }
    next = w->mode == GEMINI_SSE ? core_stream_keepalive_ms(f->c) : 0;
  }
  task_free(t);
  return next;
}

/* Answers t once it is final: at once if it is, else after a wait that
 * holds no thread (follow.h). */
static void answer_when_final(http_request *req, core *c, const store_account *acct,
                              const task *t, const char *model, gemini_mode mode) {
  gen_wait w = {.mode = mode};
  snprintf(w.model, sizeof w.model, "%s", model);
  if (task_state_is_final(t->state)) {
    answer_final(req, c, &w, t);
    return;
  }
  if (!api_follow_start(req, c, acct, t->id, GEMINI_WAIT_S, gen_look, &w, sizeof w))
    gemini_reply_error(req, 500, "internal_error", "out of memory");
}

/* The model of the path, as the client named it; 404 (Gemini's answer to
 * an unknown model) when the catalog has no such name or alias. */
static const char *path_model(http_request *req) {
  const char *model = http_param_get(req, "model");
  if (model && catalog_lookup(model, NULL)) return model;
  char msg[256];
  snprintf(msg, sizeof msg,
           "models/%.120s is not found for API version v1beta; GET /v1beta/models lists the "
           "models",
           model ? model : "");
  gemini_reply_error(req, 404, "model_not_found", msg);
  return NULL;
}

static void generate(http_request *req, core *c, gemini_mode mode) {
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  const char *model = path_model(req);
  if (!model) return;
  task *t = NULL;
  if (submit(req, c, &acct, model, &t) < 0) return;
  answer_when_final(req, c, &acct, t, model, mode);
  task_free(t);
}

static void handle_generate(http_request *req, void *ctx) { generate(req, ctx, GEMINI_UNARY); }

static void handle_stream(http_request *req, void *ctx) {
  const char *alt = http_query_get(req, "alt");
  generate(req, ctx, alt && strcmp(alt, "sse") == 0 ? GEMINI_SSE : GEMINI_JSON_ARRAY);
}

/* --- the models --------------------------------------------------------- */

/* A catalog model as a Gemini Model: under Google's id for the models that
 * have one (what a Gemini client already names), else under imgate's. */
static json_t *render_model(core *c, const core_model_info *info) {
  (void)c;
  const catalog_model *m = info->model;
  bool google = strcmp(m->upstream_kind, "gemini") == 0;
  char name[160], desc[400];
  snprintf(name, sizeof name, "models/%s", google ? m->upstream_model : m->name);
  size_t n = (size_t)snprintf(desc, sizeof desc, "%s through imgate (imgate model %s); sizes:",
                              m->display_name, m->name);
  for (size_t k = 0; m->resolutions[k] && n < sizeof desc; k++)
    n += (size_t)snprintf(desc + n, sizeof desc - n, " %s", m->resolutions[k]);
  return json_pack("{s:s, s:s, s:s, s:s, s:s, s:[s, s]}", "name", name, "baseModelId",
                   google ? m->upstream_model : m->name, "version", "imgate", "displayName",
                   m->display_name, "description", desc, "supportedGenerationMethods",
                   "generateContent", "streamGenerateContent");
}

static void handle_models(http_request *req, void *ctx) {
  json_t *list = api_model_list(req, ctx, render_model);
  if (list) http_reply_json(req, 200, json_pack("{s:o}", "models", list));
}

static void handle_model(http_request *req, void *ctx) {
  const char *model = path_model(req);
  if (!model) return;
  const catalog_model *m = catalog_lookup(model, NULL);
  core_model_info *info = NULL;
  size_t n = 0;
  if (core_models(ctx, &info, &n) < 0) {
    gemini_reply_error(req, 500, "internal_error", "out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (info[i].model == m) {
      http_reply_json(req, 200, render_model(ctx, &info[i]));
      break;
    }
  }
  free(info);
  if (!req->status) gemini_reply_error(req, 500, "internal_error", "the catalog lost a model");
}

/* --- the dialect -------------------------------------------------------- */

/* x-goog-api-key (Google's SDKs), ?key= (Google's REST examples), or the
 * Authorization: Bearer header of any HTTP client. */
const char *gemini_read_key(http_request *req, char *out, size_t size) {
  const char *key = http_header_get(req, "x-goog-api-key");
  if (!key) key = http_query_get(req, "key");
  if (!key) return api_read_bearer(req, out, size);
  /* Too long for any key: refused whole, never checked cut short. */
  if (strlen(key) + 7 >= size) key = "";
  snprintf(out, size, "Bearer %s", key);
  return out;
}

static void gemini_register(http_router *r, core *c) {
  http_router_add_guarded(r, "POST", "/v1beta/models/{model}:generateContent", api_guard_key,
                          handle_generate, c);
  http_router_add_guarded(r, "POST", "/v1beta/models/{model}:streamGenerateContent",
                          api_guard_key, handle_stream, c);
  http_router_add(r, "GET", "/v1beta/models", handle_models, c);
  http_router_add(r, "GET", "/v1beta/models/{model}", handle_model, c);
}

static const char *const gemini_prefixes[] = {"/v1beta/", NULL};

/* Where a core field is in a Gemini request. */
static const api_field_name gemini_fields[] = {
    {CORE_FIELD_PROMPT, "contents"},
    {CORE_FIELD_IMAGES, "contents.parts.inlineData"},
    {CORE_FIELD_ASPECT_RATIO, "generationConfig.imageConfig.aspectRatio"},
    {CORE_FIELD_RESOLUTION, "generationConfig.imageConfig.imageSize"},
    {CORE_FIELD_QUANTITY, "generationConfig.candidateCount"},
    {CORE_FIELD_WEBHOOK, "X-Imgate-Webhook-Url"},
    {CORE_FIELD_IDEMPOTENCY_KEY, "Idempotency-Key"},
    {NULL, NULL},
};

const api_dialect api_gemini_dialect = {
    .name = "gemini",
    .prefixes = gemini_prefixes,
    .register_routes = gemini_register,
    .read_key = gemini_read_key,
    .reply_error = gemini_error_shape,
    .field_names = gemini_fields,
    .render_webhook = gemini_webhook_payload,
};
