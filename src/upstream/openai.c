/* openai.c - the OpenAI Images adapter: generations JSON, the edits form, the
 * answer parser, and the provider that runs calls through the curl loop and
 * parses answers on its pool threads. One call serves the whole quantity:
 * the API takes "n". */
#include "upstream/openai.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "upstream/adapter.h"
#include "upstream/curlloop.h"
#include "util/imagefmt.h"
#include "util/log.h"

/* ================= requests ================= */

const char *openai_size(const char *aspect_ratio) {
  static const struct {
    const char *ratio, *size;
  } sizes[] = {{"1:1", "1024x1024"}, {"3:2", "1536x1024"}, {"2:3", "1024x1536"}, {"auto", "auto"}};
  if (!aspect_ratio || !*aspect_ratio) return "auto";
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (strcmp(aspect_ratio, sizes[i].ratio) == 0) return sizes[i].size;
  return NULL;
}

const char *openai_output_format(const provider_request *req) {
  static const char *const formats[] = {"png", "jpeg", "webp"};
  for (size_t i = 0; req && req->output_format && i < sizeof formats / sizeof formats[0]; i++)
    if (strcmp(req->output_format, formats[i]) == 0) return formats[i];
  return "png";
}

bool openai_sends_compression(const provider_request *req) {
  return strcmp(openai_output_format(req), "png") != 0 && req->output_compression >= 0 &&
         req->output_compression <= 100;
}

/* The quality sent: the client's, else "auto" (what OpenAI assumes anyway;
 * said explicitly so that the request shows what was asked). */
static const char *openai_quality(const provider_request *req) {
  return req->quality && *req->quality ? req->quality : "auto";
}

const char *openai_background(const provider_request *req) {
  return req && req->background && *req->background ? req->background : "auto";
}

char *openai_build_generations(const provider_request *req) {
  if (!req || !req->upstream_model) return NULL;
  const char *size = openai_size(req->aspect_ratio);
  if (!size) return NULL;
  json_t *root = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:s}", "model", req->upstream_model,
                           "prompt", req->prompt ? req->prompt : "", "n", req->quantity, "size",
                           size, "quality", openai_quality(req), "output_format",
                           openai_output_format(req), "background", openai_background(req));
  if (root && openai_sends_compression(req) &&
      json_object_set_new(root, "output_compression", json_integer(req->output_compression)) != 0) {
    json_decref(root);
    return NULL;
  }
  if (!root) return NULL;
  char *text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return text;
}

static void openai_text_part(openai_part *p, const char *name, const char *text) {
  p->name = name;
  p->text = text;
}

int openai_describe_edits(const provider_request *req, openai_form *form) {
  memset(form, 0, sizeof *form);
  if (!req || !req->upstream_model) return -1;
  const char *size = openai_size(req->aspect_ratio);
  size_t n_inputs = req->inputs ? req->n_inputs : 0;
  /* The text fields (at most 8), the images, the mask. */
  if (!size || n_inputs > SIZE_MAX / sizeof *form->parts - 9) return -1;
  form->parts = calloc(9 + n_inputs, sizeof *form->parts);
  if (!form->parts) return -1;
  snprintf(form->n_text, sizeof form->n_text, "%d", req->quantity);
  openai_part *p = form->parts;
  openai_text_part(p++, "prompt", req->prompt ? req->prompt : "");
  openai_text_part(p++, "model", req->upstream_model);
  openai_text_part(p++, "n", form->n_text);
  openai_text_part(p++, "size", size);
  openai_text_part(p++, "quality", openai_quality(req));
  openai_text_part(p++, "output_format", openai_output_format(req));
  if (openai_sends_compression(req)) {
    snprintf(form->compression_text, sizeof form->compression_text, "%d",
             req->output_compression);
    openai_text_part(p++, "output_compression", form->compression_text);
  }
  openai_text_part(p++, "background", openai_background(req));
  for (size_t i = 0; i < n_inputs; i++, p++) {
    const provider_input *in = &req->inputs[i];
    imagefmt fmt = adapter_input_format(in);
    p->name = "image[]";
    p->data = in->data;
    p->len = in->data ? in->len : 0;
    p->type = imagefmt_mime(fmt); /* application/octet-stream when unknown */
    snprintf(p->filename, sizeof p->filename, "image-%zu.%s", i + 1, imagefmt_ext(fmt));
  }
  /* The mask is a PNG (the core checked its bytes): named and typed so. */
  if (req->mask && n_inputs > 0) {
    p->name = "mask";
    p->data = req->mask->data;
    p->len = req->mask->data ? req->mask->len : 0;
    p->type = "image/png";
    snprintf(p->filename, sizeof p->filename, "mask.png");
    p++;
  }
  form->n_parts = (size_t)(p - form->parts);
  assert(form->n_parts <= 9 + n_inputs);
  return 0;
}

void openai_form_free(openai_form *form) {
  if (!form) return;
  free(form->parts);
  form->parts = NULL;
  form->n_parts = 0;
}

char *openai_request_url(const char *base_url, bool edits) {
  if (!base_url) return NULL;
  const char *path = edits ? "/v1/images/edits" : "/v1/images/generations";
  size_t n = strlen(base_url) + strlen(path) + 1;
  char *url = malloc(n);
  if (url) snprintf(url, n, "%s%s", base_url, path);
  return url;
}

/* ================= answers ================= */

static provider_outcome *openai_bad_response(int status, const char *what) {
  return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                       "openai: %s", what);
}

static const imgscan_path openai_answer_paths[] = {
    {"data[].b64_json", IMGSCAN_IMAGE},
};

void openai_answer_init(answer_reader *a) {
  answer_init(a, IMGSCAN_JSON, openai_answer_paths, 1, ADAPTER_MAX_IMAGE_BYTES);
}

/* Takes entry i of data[] into img; on failure returns the outcome to report
 * (or NULL for out of memory) and sets *failed. */
static provider_outcome *openai_decode_entry(json_t *entry, size_t i, int status, answer_reader *a,
                                             provider_image *img, bool *failed) {
  json_t *b64 = json_object_get(entry, "b64_json");
  const char *why = NULL;
  *failed = false;
  if (!json_is_string(b64)) {
    why = json_object_get(entry, "url") ? "an image came as a URL, not as b64_json"
                                        : "an image has no b64_json";
  } else if (answer_take_image(a, json_string_value(b64), img, &why) == 0) {
    return NULL;
  }
  *failed = true;
  return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                       "openai: image %zu: %s", i + 1, why);
}

static provider_outcome *openai_parse_images(json_t *root, int status, answer_reader *a) {
  json_t *data = json_object_get(root, "data");
  if (!json_is_array(data)) return openai_bad_response(status, "the answer has no data array");
  size_t n = json_array_size(data);
  if (n == 0)
    return adapter_error(status, PROVIDER_ERR_NO_IMAGE, true, "no_image",
                         "openai: the answer holds no image");
  provider_outcome *o = provider_outcome_new(PROVIDER_OK);
  if (o) o->images = calloc(n, sizeof *o->images);
  if (!o || !o->images) {
    provider_outcome_free(o);
    return NULL;
  }
  o->http_status = status;
  for (size_t i = 0; i < n; i++) {
    bool failed;
    provider_outcome *err =
        openai_decode_entry(json_array_get(data, i), i, status, a, &o->images[i], &failed);
    if (failed) {
      provider_outcome_free(o);
      return err;
    }
    o->n_images++;
  }
  /* What the upstream says it made: one of the qualities it prices by, or
   * nothing (an unknown word is not a price the core could apply). */
  const char *quality = json_string_value(json_object_get(root, "quality"));
  static const char *const known[] = {"low", "medium", "high"};
  for (size_t i = 0; quality && i < sizeof known / sizeof known[0]; i++)
    if (strcmp(quality, known[i]) == 0) snprintf(o->quality, sizeof o->quality, "%s", known[i]);
  /* Likewise the background it made, when it says one of the two it makes. */
  const char *background = json_string_value(json_object_get(root, "background"));
  if (background && (strcmp(background, "transparent") == 0 || strcmp(background, "opaque") == 0))
    snprintf(o->background, sizeof o->background, "%s", background);
  return o;
}

static bool openai_is_moderation(const char *type, const char *code) {
  if (!code) return false;
  if (strcmp(code, "moderation_blocked") == 0 || strcmp(code, "content_policy_violation") == 0)
    return true;
  return type && strcmp(type, "image_generation_user_error") == 0 && strstr(code, "moderation");
}

static bool openai_eq(const char *a, const char *b) { return a && strcmp(a, b) == 0; }

static adapter_class openai_classify(int status, const char *type, const char *code) {
  const adapter_class credit = {PROVIDER_ERR_CREDIT, true, "upstream_credit"};
  bool client_side = (status >= 400 && status <= 499) || (status >= 200 && status <= 299);
  if (client_side && openai_is_moderation(type, code))
    return (adapter_class){PROVIDER_ERR_MODERATED, false, "content_moderated"};
  if (status == 400 && openai_eq(code, "billing_hard_limit_reached")) return credit;
  /* OpenAI reports an account whose credit is gone as a 429. */
  if (status == 429 &&
      (openai_eq(code, "insufficient_quota") || openai_eq(type, "insufficient_quota")))
    return credit;
  return adapter_status_class(status);
}

static provider_outcome *openai_error_outcome(int status, json_t *root, const char *retry_after,
                                              const char *retry_after_ms) {
  json_t *err = json_object_get(root, "error");
  const char *message = json_string_value(json_object_get(err, "message"));
  const char *type = json_string_value(json_object_get(err, "type"));
  const char *code = json_string_value(json_object_get(err, "code"));
  adapter_class c = openai_classify(status, type, code);

  char label[96] = "";
  if (type || code)
    snprintf(label, sizeof label, " %.40s%s%.40s", type ? type : "", type && code ? "/" : "",
             code ? code : "");
  char clean[ADAPTER_UPSTREAM_TEXT_MAX + 1];
  adapter_clean_text(clean, sizeof clean, message, ADAPTER_UPSTREAM_TEXT_MAX);
  provider_outcome *o = adapter_error(status, c.cls, c.retryable, c.code, "openai: HTTP %d%s: %s",
                                      status, label, clean[0] ? clean : "(no error details)");
  if (o) o->retry_after_ms = adapter_retry_after_ms(retry_after, retry_after_ms, time(NULL));
  return o;
}

provider_outcome *openai_parse_answer(long http_status, answer_reader *a, const char *retry_after,
                                      const char *retry_after_ms) {
  int status = http_status > 0 && http_status < 1000 ? (int)http_status : 0;
  bool read = answer_finish(a);
  size_t len = 0;
  const char *rest = answer_rest(a, &len);
  json_error_t jerr;
  json_t *root = rest && len ? json_loadb(rest, len, 0, &jerr) : NULL;
  provider_outcome *o;
  if (status < 200 || status > 299)
    o = openai_error_outcome(status, root, retry_after, retry_after_ms);
  else if (!read && answer_out_of_memory(a))
    o = NULL;
  else if (!read)
    o = openai_bad_response(status, answer_error(a));
  else if (!json_is_object(root))
    o = openai_bad_response(status, root ? "the answer is not a JSON object"
                                         : "the answer is not valid JSON (empty or truncated?)");
  else if (json_is_object(json_object_get(root, "error")))
    o = openai_error_outcome(status, root, retry_after, retry_after_ms);
  else
    o = openai_parse_images(root, status, a);
  json_decref(root);
  return o;
}

provider_outcome *openai_parse_response(long http_status, const char *body, size_t len,
                                        const char *retry_after, const char *retry_after_ms) {
  answer_reader a;
  openai_answer_init(&a);
  if (body && len) answer_write(&a, body, len);
  provider_outcome *o = openai_parse_answer(http_status, &a, retry_after, retry_after_ms);
  answer_free(&a);
  return o;
}

/* ================= provider ================= */

/* Everything one call keeps alive until its answer is delivered. */
typedef struct openai_call {
  workpool_item work;       /* first: the pool hands it back */
  adapter_flight flight;   /* registered while on the wire, for cancel() */
  adapter_instance *inst;  /* the provider's settings, threads and register */
  curlloop_result answer;  /* what the loop reported (its body went to read) */
  answer_reader read;             /* the body, read as it arrived (on the loop thread) */
  provider_done_fn done;
  void *ctx;
  struct curl_slist *headers;
  char *body;              /* generations */
  curl_mime *mime;         /* edits */
  provider_outcome *spare; /* delivered if memory runs out while reading the answer */
  provider_spool spool;    /* the request's, for read (bl NULL: none) */
} openai_call;

static void openai_call_free(openai_call *call) {
  if (!call) return;
  curl_mime_free(call->mime);
  curl_slist_free_all(call->headers);
  free(call->body);
  buf_free(&call->answer.body);
  answer_free(&call->read);
  provider_outcome_free(call->spare);
  free(call);
}

/* Runs on a pool thread. */
static void openai_call_run(workpool_item *w) {
  openai_call *call = (openai_call *)w;
  curlloop_result *a = &call->answer;
  provider_outcome *o;
  if (!adapter_transport_ok(a))
    o = adapter_transport_outcome(a, "openai");
  else
    o = openai_parse_answer(a->http_status, &call->read, a->retry_after, a->retry_after_ms);
  if (!o) {
    o = call->spare;
    call->spare = NULL;
    if (a->aborted) adapter_set_canceled(o, "openai");
  }
  call->done(call->ctx, o);
  openai_call_free(call);
}

/* The provider is being destroyed with this answer unread: dropped, no done(). */
static void openai_call_drop(workpool_item *w) { openai_call_free((openai_call *)w); }

/* Runs on the loop thread: keeps the answer and leaves the parsing to the
 * pool. From here on a cancel() no longer reaches this call. */
static void openai_on_done(void *ctx, CURL *easy, curlloop_result *res) {
  openai_call *call = ctx;
  adapter_flight_landed(call->inst, &call->flight);
  curl_easy_cleanup(easy); /* before the mime and headers it points at are freed */
  if (res->cancelled) {
    openai_call_free(call);
    return;
  }
  adapter_take_answer(&call->answer, res);
  workpool_submit(call->inst->pool, &call->work);
}

static curl_mime *openai_form_mime(CURL *easy, const openai_form *form) {
  curl_mime *mime = curl_mime_init(easy);
  if (!mime) return NULL;
  for (size_t i = 0; i < form->n_parts; i++) {
    const openai_part *p = &form->parts[i];
    curl_mimepart *mp = curl_mime_addpart(mime);
    bool ok = mp && curl_mime_name(mp, p->name) == CURLE_OK;
    if (ok && p->text) {
      ok = curl_mime_data(mp, p->text, CURL_ZERO_TERMINATED) == CURLE_OK;
    } else if (ok) {
      /* curl copies the bytes: the request's inputs are only valid during start(). */
      ok = curl_mime_data(mp, p->data ? (const char *)p->data : "", p->len) == CURLE_OK &&
           curl_mime_filename(mp, p->filename) == CURLE_OK &&
           curl_mime_type(mp, p->type) == CURLE_OK;
    }
    if (!ok) {
      curl_mime_free(mime);
      return NULL;
    }
  }
  return mime;
}

/* Sets the body: JSON for generations, a form for edits. */
static bool openai_set_body(CURL *easy, openai_call *call, const provider_request *req,
                            bool edits) {
  if (!edits) {
    call->body = openai_build_generations(req);
    return call->body && adapter_add_header(&call->headers, "Content-Type", "application/json") &&
           curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                            (curl_off_t)strlen(call->body)) == CURLE_OK &&
           curl_easy_setopt(easy, CURLOPT_POSTFIELDS, call->body) == CURLE_OK;
  }
  openai_form form;
  if (openai_describe_edits(req, &form) != 0) return false;
  call->mime = openai_form_mime(easy, &form);
  openai_form_free(&form);
  return call->mime && curl_easy_setopt(easy, CURLOPT_MIMEPOST, call->mime) == CURLE_OK;
}

static bool openai_set_headers(CURL *easy, openai_call *call, const adapter_instance *inst) {
  size_t n = strlen(inst->api_key) + 8;
  char *bearer = malloc(n);
  if (!bearer) return false;
  snprintf(bearer, n, "Bearer %s", inst->api_key);
  bool ok = adapter_add_header(&call->headers, "Authorization", bearer);
  free(bearer);
  return ok && adapter_add_header(&call->headers, "Expect", NULL) &&
         curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers) == CURLE_OK;
}

static int openai_start(provider *p, const provider_request *req, provider_done_fn done,
                        void *ctx) {
  adapter_provider *op = (adapter_provider *)p;
  if (!op || !req || !done || req->quantity < 1 || req->quantity > ADAPTER_MAX_QUANTITY)
    return -1;
  bool edits = req->n_inputs > 0 && req->inputs;
  char *url = openai_request_url(op->inst.base_url, edits);
  openai_call *call = url ? calloc(1, sizeof *call) : NULL;
  CURL *easy = call ? adapter_easy_new(&op->inst, url, req->timeout_ms) : NULL;
  free(url);
  curlloop_sink sink = {answer_write, NULL}; /* the answer is read into call->read */
  if (call) {
    call->work.run = openai_call_run;
    call->work.drop = openai_call_drop;
    call->inst = &op->inst;
    call->done = done;
    call->ctx = ctx;
    call->spare = adapter_spare_outcome();
    openai_answer_init(&call->read);
    provider_spool_copy(&call->spool, req->spool);
    answer_set_spool(&call->read, call->spool.bl ? &call->spool : NULL);
    sink.ctx = &call->read;
  }
  /* Body first: the Content-Type header it may add must be in the list before it is set. */
  bool ok = easy && call->spare && openai_set_body(easy, call, req, edits) &&
            openai_set_headers(easy, call, &op->inst) &&
            adapter_flight_submit(&op->inst, &call->flight, ctx, easy, &sink, openai_on_done,
                                  call) == 0;
  if (!ok) {
    char qname[80];
    LOG_WARN("openai_start_failed", "provider=%s", log_quote(op->base.name, qname, sizeof qname));
    if (easy) curl_easy_cleanup(easy);
    openai_call_free(call);
    return -1;
  }
  return 0;
}

static const provider_ops openai_ops = {.kind = "openai",
                                        .start = openai_start,
                                        .destroy = adapter_provider_destroy,
                                        .cancel = adapter_provider_cancel};

void openai_provider_drain(provider *p) { adapter_provider_drain(p, &openai_ops); }

provider *openai_provider_create(const provider_instance_config *cfg, struct curlloop *loop) {
  return adapter_provider_create(cfg, &openai_ops, "/v1", loop);
}
