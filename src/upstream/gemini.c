/* gemini.c - the Gemini generateContent adapter: request body, answer parser
 * and the provider that runs calls through the curl loop.
 *
 * Gemini has no "n": a request for several images becomes that many parallel
 * calls, joined into one outcome when the last ends. The whole job (body,
 * headers, per-call results) is owned by the calls in flight and freed by the
 * last one. Answers are parsed on the instance's pool threads, not on the
 * curl loop's. cancel() aborts the job's calls still on the wire; if any of
 * them was aborted, the whole job ends canceled (images some other call had
 * already brought are dropped: the task they were for is being stopped). */
#include "upstream/gemini.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/catalog.h"
#include "upstream/adapter.h"
#include "upstream/curlloop.h"
#include "util/base64.h"
#include "util/imagefmt.h"
#include "util/log.h"

/* ================= request ================= */

bool gemini_sends_image_size(const provider_request *req) {
  if (req->upstream_model && strstr(req->upstream_model, "gemini-2.5")) return false;
  const catalog_model *m = catalog_find(req->model);
  return !(m && m->sizes == CATALOG_SIZES_GEMINI_25);
}

const char *gemini_image_size(const char *resolution) {
  static const char *const sizes[] = {"512", "1K", "2K", "4K"};
  if (!resolution) return NULL;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (strcasecmp(resolution, sizes[i]) == 0) return sizes[i];
  return NULL;
}

/* Writes JSON text into a buffer of known size. With p == NULL it only counts,
 * so the body (mostly base64, up to ~100 MB with ten references) is allocated
 * once at its exact size instead of growing by doubling. */
typedef struct gemini_writer {
  char *p;
  size_t len, cap;
  bool failed; /* out of memory, or the text outgrew cap (a bug) */
} gemini_writer;

static void gw_put(gemini_writer *w, const char *s, size_t n) {
  if (w->failed) return;
  if (w->p) {
    if (n > w->cap - w->len) {
      w->failed = true;
      return;
    }
    memcpy(w->p + w->len, s, n);
  } else if (n > SIZE_MAX / 2 - w->len) {
    w->failed = true;
    return;
  }
  w->len += n;
}

static void gw_raw(gemini_writer *w, const char *s) { gw_put(w, s, strlen(s)); }

/* A JSON string literal. Bytes >= 0x80 pass through: the prompt is UTF-8. */
static void gw_string(gemini_writer *w, const char *s) {
  gw_put(w, "\"", 1);
  const char *run = s;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    gw_put(w, run, (size_t)(s - run));
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      esc[2] = '\0';
    } else {
      snprintf(esc, sizeof esc, "\\u%04x", c);
    }
    gw_raw(w, esc);
    run = s + 1;
  }
  gw_put(w, run, (size_t)(s - run));
  gw_put(w, "\"", 1);
}

static void gw_base64(gemini_writer *w, const uint8_t *data, size_t len) {
  if (w->failed) return;
  if (!data) len = 0;
  if (!w->p) {
    size_t n = base64_encoded_len(len);
    if (n == SIZE_MAX) {
      w->failed = true;
      return;
    }
    w->len += n;
    return;
  }
  char *b64 = base64_encode(data ? data : (const uint8_t *)"", len);
  if (!b64) {
    w->failed = true;
    return;
  }
  gw_raw(w, b64);
  free(b64);
}

static void gw_inline_part(gemini_writer *w, const provider_input *in) {
  imagefmt fmt = adapter_input_format(in);
  const char *mime = fmt != IMAGEFMT_UNKNOWN ? imagefmt_mime(fmt)
                     : in->mime && *in->mime ? in->mime
                                             : "application/octet-stream";
  gw_raw(w, ",{\"inlineData\":{\"mimeType\":");
  gw_string(w, mime);
  gw_raw(w, ",\"data\":\"");
  gw_base64(w, in->data, in->len);
  gw_raw(w, "\"}}");
}

static void gw_body(gemini_writer *w, const provider_request *req, bool send_image_size) {
  gw_raw(w, "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":");
  gw_string(w, req->prompt ? req->prompt : "");
  gw_raw(w, "}");
  for (size_t i = 0; i < req->n_inputs && req->inputs; i++) gw_inline_part(w, &req->inputs[i]);
  gw_raw(w, "]}],\"generationConfig\":{\"responseModalities\":[\"IMAGE\"]");
  const char *ratio = req->aspect_ratio;
  if (ratio && (!*ratio || strcmp(ratio, "auto") == 0)) ratio = NULL;
  const char *size = send_image_size ? gemini_image_size(req->resolution) : NULL;
  if (ratio || size) {
    gw_raw(w, ",\"imageConfig\":{");
    if (ratio) {
      gw_raw(w, "\"aspectRatio\":");
      gw_string(w, ratio);
    }
    if (size) {
      gw_raw(w, ratio ? ",\"imageSize\":" : "\"imageSize\":");
      gw_string(w, size);
    }
    gw_raw(w, "}");
  }
  gw_raw(w, "}}");
}

char *gemini_build_request(const provider_request *req, bool send_image_size) {
  if (!req) return NULL;
  gemini_writer measure = {0};
  gw_body(&measure, req, send_image_size);
  if (measure.failed) return NULL;
  gemini_writer w = {.p = malloc(measure.len + 1), .cap = measure.len};
  if (!w.p) return NULL;
  gw_body(&w, req, send_image_size);
  if (w.failed || w.len != measure.len) {
    free(w.p);
    return NULL;
  }
  w.p[w.len] = '\0';
  return w.p;
}

char *gemini_request_url(const char *base_url, const char *upstream_model) {
  if (!base_url || !upstream_model) return NULL;
  /* The API's own listing names models "models/<id>"; accept that spelling. */
  if (strncmp(upstream_model, "models/", 7) == 0) upstream_model += 7;
  if (!*upstream_model) return NULL;
  size_t mlen = strlen(upstream_model);
  if (mlen > (SIZE_MAX - 64 - strlen(base_url)) / 3) return NULL;
  size_t n = strlen(base_url) + 3 * mlen + 64;
  char *url = malloc(n);
  if (!url) return NULL;
  size_t o = (size_t)snprintf(url, n, "%s/v1beta/models/", base_url);
  static const char hex[] = "0123456789ABCDEF";
  for (const char *s = upstream_model; *s; s++) {
    unsigned char c = (unsigned char)*s;
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~';
    if (plain) {
      url[o++] = (char)c;
    } else {
      url[o++] = '%';
      url[o++] = hex[c >> 4];
      url[o++] = hex[c & 15];
    }
  }
  snprintf(url + o, n - o, ":generateContent");
  return url;
}

/* ================= answer ================= */

/* A member under either of two spellings (REST examples use snake_case). */
static json_t *gj_get(json_t *obj, const char *camel, const char *snake) {
  json_t *v = json_object_get(obj, camel);
  if (!v && snake) v = json_object_get(obj, snake);
  return v;
}

static const char *gj_str(json_t *obj, const char *camel, const char *snake) {
  return json_string_value(gj_get(obj, camel, snake));
}

/* Finish and block reasons that mean a safety filter stopped the image. */
static bool gemini_reason_is_safety(const char *reason) {
  static const char *const safety[] = {
      "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER", "SAFETY",
      "PROHIBITED_CONTENT", "RECITATION", "BLOCKLIST", "SPII",
  };
  if (!reason) return false;
  for (size_t i = 0; i < sizeof safety / sizeof safety[0]; i++)
    if (strcmp(reason, safety[i]) == 0) return true;
  return false;
}

/* ": <upstream text>" truncated, or "" when there is none; into out. */
static const char *gemini_detail(const char *text, char *out, size_t size) {
  char clean[ADAPTER_UPSTREAM_TEXT_MAX + 1];
  adapter_clean_text(clean, sizeof clean, text, ADAPTER_UPSTREAM_TEXT_MAX);
  if (clean[0])
    snprintf(out, size, ": %s", clean);
  else
    out[0] = '\0';
  return out;
}

/* The image strings of an answer, and the opaque signatures nobody reads
 * (dropped rather than kept in the rest: they can be long). */
static const imgscan_path gemini_answer_paths[] = {
    {"candidates[].content.parts[].inlineData.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].inline_data.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].thoughtSignature", IMGSCAN_DROP},
    {"candidates[].content.parts[].thought_signature", IMGSCAN_DROP},
};

void gemini_answer_init(answer_reader *a) {
  answer_init(a, IMGSCAN_JSON, gemini_answer_paths,
              sizeof gemini_answer_paths / sizeof gemini_answer_paths[0],
              ADAPTER_MAX_IMAGE_BYTES);
}

static provider_outcome *gemini_image_outcome(json_t *inline_data, int status, answer_reader *a) {
  json_t *data = json_object_get(inline_data, "data");
  provider_image img;
  const char *why = NULL;
  if (answer_take_image(a, json_string_value(data), &img, &why) != 0)
    return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                         "gemini: %s", why);
  provider_outcome *o = provider_outcome_new(PROVIDER_OK);
  if (o) o->images = malloc(sizeof *o->images);
  if (!o || !o->images) {
    free(img.data);
    blob_stream_abort(img.staged);
    provider_outcome_free(o);
    return NULL;
  }
  o->images[0] = img;
  o->n_images = 1;
  o->http_status = status;
  return o;
}

/* A 200 without candidates: a blocked prompt, or an answer we cannot use. */
static provider_outcome *gemini_no_candidate(json_t *root, int status) {
  json_t *feedback = gj_get(root, "promptFeedback", "prompt_feedback");
  const char *reason = gj_str(feedback, "blockReason", "block_reason");
  char detail[ADAPTER_UPSTREAM_TEXT_MAX + 8];
  if (reason && *reason) {
    gemini_detail(gj_str(feedback, "blockReasonMessage", "block_reason_message"), detail,
                  sizeof detail);
    return adapter_error(status, PROVIDER_ERR_MODERATED, false, "content_moderated",
                         "gemini: the prompt was blocked (%.40s)%s", reason, detail);
  }
  return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                       "gemini: the answer has neither candidates nor a block reason");
}

static provider_outcome *gemini_parse_candidate(json_t *cand, int status, answer_reader *a) {
  json_t *parts = gj_get(gj_get(cand, "content", NULL), "parts", NULL);
  json_t *image = NULL;
  const char *text = NULL;
  size_t i;
  json_t *part;
  json_array_foreach(parts, i, part) {
    /* Thought parts are drafts (Gemini 3 Pro makes up to two): never the result. */
    if (!json_is_object(part) || json_is_true(json_object_get(part, "thought"))) continue;
    json_t *inl = gj_get(part, "inlineData", "inline_data");
    if (json_is_object(inl) && json_is_string(json_object_get(inl, "data")))
      image = inl;
    else if (!text)
      text = gj_str(part, "text", NULL);
  }
  if (image) return gemini_image_outcome(image, status, a);

  const char *reason = gj_str(cand, "finishReason", "finish_reason");
  const char *message = gj_str(cand, "finishMessage", "finish_message");
  char detail[ADAPTER_UPSTREAM_TEXT_MAX + 8];
  gemini_detail(message && *message ? message : text, detail, sizeof detail);
  if (gemini_reason_is_safety(reason))
    return adapter_error(status, PROVIDER_ERR_MODERATED, false, "content_moderated",
                         "gemini: the image was blocked (%.40s)%s", reason, detail);
  return adapter_error(status, PROVIDER_ERR_NO_IMAGE, true, "no_image",
                       "gemini: the model answered without an image (%.40s)%s",
                       reason ? reason : "no finishReason", detail);
}

static provider_outcome *gemini_parse_success(json_t *root, int status, answer_reader *a) {
  json_t *cands = json_object_get(root, "candidates");
  json_t *cand = json_is_array(cands) ? json_array_get(cands, 0) : NULL;
  if (!cand) return gemini_no_candidate(root, status);
  if (!json_is_object(cand))
    return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                         "gemini: a candidate is not an object");
  return gemini_parse_candidate(cand, status, a);
}

/* What an error body says. Every field is optional. */
typedef struct gemini_error {
  int code;            /* error.code */
  const char *status;  /* "RESOURCE_EXHAUSTED" */
  const char *message;
  bool key_invalid;    /* the key itself is refused */
  int64_t retry_ms;    /* RetryInfo.retryDelay; 0 = none */
} gemini_error;

static void gemini_read_details(json_t *details, gemini_error *e) {
  size_t i;
  json_t *d;
  json_array_foreach(details, i, d) {
    const char *type = json_string_value(json_object_get(d, "@type"));
    if (!type) continue;
    if (strstr(type, "google.rpc.RetryInfo")) {
      int64_t ms = adapter_duration_ms(json_string_value(json_object_get(d, "retryDelay")));
      if (ms > 0) e->retry_ms = ms;
    } else if (strstr(type, "google.rpc.ErrorInfo")) {
      const char *reason = json_string_value(json_object_get(d, "reason"));
      if (reason && strncmp(reason, "API_KEY_", 8) == 0) e->key_invalid = true;
    }
  }
}

static void gemini_read_error(json_t *root, gemini_error *e) {
  memset(e, 0, sizeof *e);
  json_t *err = json_object_get(root, "error");
  /* Some Google front ends wrap the error object in a one-element array. */
  if (!err && json_is_array(root)) err = json_object_get(json_array_get(root, 0), "error");
  if (!json_is_object(err)) return;
  json_t *code = json_object_get(err, "code");
  if (json_is_integer(code) && json_integer_value(code) > 0 && json_integer_value(code) < 1000)
    e->code = (int)json_integer_value(code);
  e->status = json_string_value(json_object_get(err, "status"));
  e->message = json_string_value(json_object_get(err, "message"));
  gemini_read_details(json_object_get(err, "details"), e);
  if (e->message && strstr(e->message, "API key not valid")) e->key_invalid = true;
}

static adapter_class gemini_classify(int status, const gemini_error *e) {
  /* Google says 400 for a key it refuses, and FAILED_PRECONDITION for
   * conditions of the key's project (region, billing): another route may
   * serve the same request. */
  if (status == 400 &&
      (e->key_invalid || (e->status && strcmp(e->status, "FAILED_PRECONDITION") == 0)))
    return (adapter_class){PROVIDER_ERR_AUTH, true, "upstream_auth"};
  return adapter_status_class(status);
}

/* class_status decides the class (an error inside a 200 carries its own
 * code); http_status is what goes on record. */
static provider_outcome *gemini_error_outcome(int http_status, int class_status,
                                              const gemini_error *e, const char *retry_after) {
  adapter_class c = gemini_classify(class_status, e);
  char detail[ADAPTER_UPSTREAM_TEXT_MAX + 8];
  gemini_detail(e->message, detail, sizeof detail);
  provider_outcome *o =
      adapter_error(http_status, c.cls, c.retryable, c.code, "gemini: HTTP %d%s%.40s%s",
                    class_status, e->status ? " " : "", e->status ? e->status : "",
                    detail[0] ? detail : " (no error details)");
  if (o) o->retry_after_ms = e->retry_ms ? e->retry_ms
                                         : adapter_retry_after_ms(retry_after, NULL, time(NULL));
  return o;
}

provider_outcome *gemini_parse_answer(long http_status, answer_reader *a,
                                      const char *retry_after_header) {
  int status = http_status > 0 && http_status < 1000 ? (int)http_status : 0;
  bool read = answer_finish(a);
  size_t len = 0;
  const char *rest = answer_rest(a, &len);
  json_error_t jerr;
  json_t *root = rest && len ? json_loadb(rest, len, 0, &jerr) : NULL;
  provider_outcome *o;
  gemini_error e;
  if (status < 200 || status > 299) {
    /* An error body that is not JSON (a proxy's HTML page) says nothing more. */
    gemini_read_error(root, &e);
    o = gemini_error_outcome(status, status, &e, retry_after_header);
  } else if (!read && answer_out_of_memory(a)) {
    o = NULL;
  } else if (!read) {
    o = adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                      "gemini: %s", answer_error(a));
  } else if (!json_is_object(root)) {
    o = adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                      root ? "gemini: the answer is not a JSON object"
                           : "gemini: the answer is not valid JSON (empty or truncated?)");
  } else if (json_is_object(json_object_get(root, "error"))) {
    gemini_read_error(root, &e);
    o = gemini_error_outcome(status, e.code >= 400 ? e.code : status, &e, retry_after_header);
  } else {
    o = gemini_parse_success(root, status, a);
  }
  json_decref(root);
  return o;
}

provider_outcome *gemini_parse_response(long http_status, const char *body, size_t len,
                                        const char *retry_after_header) {
  answer_reader a;
  gemini_answer_init(&a);
  if (body && len) answer_write(&a, body, len);
  provider_outcome *o = gemini_parse_answer(http_status, &a, retry_after_header);
  answer_free(&a);
  return o;
}

/* ================= provider ================= */

typedef struct gemini_job gemini_job;

typedef struct gemini_call {
  workpool_item work; /* first: the pool hands it back */
  adapter_flight flight; /* registered while on the wire, for cancel() */
  gemini_job *job;
  int index;
  curlloop_result answer; /* what the loop reported (its body went to read) */
  answer_reader read;            /* the body, read as it arrived (on the loop thread) */
} gemini_call;

static void gemini_call_run(workpool_item *w);
static void gemini_call_drop(workpool_item *w);

/* One start(): n parallel calls. pending counts calls not yet ended, starting
 * at n before the first is submitted, so the last to end (never start()
 * itself, unless start() fails) joins the results and frees the job. */
struct gemini_job {
  pthread_mutex_t lock;
  adapter_instance *inst;
  provider_done_fn done;
  void *ctx;
  char *body;
  size_t body_len;
  struct curl_slist *headers;
  int n;
  int pending;                /* lock */
  bool abandoned;             /* lock: start() failed: results are dropped */
  bool cancelled;             /* lock: the loop is shutting down: results are dropped */
  bool aborted;               /* lock: cancel() stopped a call: the job ends canceled */
  provider_outcome **results; /* lock: per call; NULL until it ends, or when memory ran out */
  provider_outcome *spare;    /* holds the joined images, or reports running out of memory */
  gemini_call *calls;
  provider_spool spool;       /* the request's, for the calls' readers (bl NULL: none) */
};

static void gemini_job_free(gemini_job *job) {
  if (!job) return;
  for (int i = 0; i < job->n; i++) {
    if (job->results) provider_outcome_free(job->results[i]);
    if (job->calls) {
      buf_free(&job->calls[i].answer.body);
      answer_free(&job->calls[i].read);
    }
  }
  free(job->results);
  provider_outcome_free(job->spare);
  free(job->calls);
  curl_slist_free_all(job->headers);
  free(job->body);
  pthread_mutex_destroy(&job->lock);
  free(job);
}

static bool gemini_job_headers(gemini_job *job, const adapter_instance *inst) {
  return adapter_add_header(&job->headers, "x-goog-api-key", inst->api_key) &&
         adapter_add_header(&job->headers, "Content-Type", "application/json") &&
         adapter_add_header(&job->headers, "Expect", NULL);
}

static gemini_job *gemini_job_new(adapter_provider *gp, const provider_request *req,
                                  provider_done_fn done, void *ctx) {
  gemini_job *job = calloc(1, sizeof *job);
  if (!job) return NULL;
  if (pthread_mutex_init(&job->lock, NULL) != 0) {
    free(job);
    return NULL;
  }
  int n = req->quantity;
  job->n = n;
  job->pending = n;
  job->done = done;
  job->ctx = ctx;
  job->body = gemini_build_request(req, gemini_sends_image_size(req));
  job->results = calloc((size_t)n, sizeof *job->results);
  job->calls = calloc((size_t)n, sizeof *job->calls);
  job->spare = adapter_spare_outcome();
  if (job->spare) job->spare->images = calloc((size_t)n, sizeof *job->spare->images);
  if (!job->body || !job->results || !job->calls || !job->spare || !job->spare->images ||
      !gemini_job_headers(job, &gp->inst)) {
    gemini_job_free(job);
    return NULL;
  }
  job->body_len = strlen(job->body);
  job->inst = &gp->inst;
  provider_spool_copy(&job->spool, req->spool);
  for (int i = 0; i < n; i++) {
    job->calls[i].work.run = gemini_call_run;
    job->calls[i].work.drop = gemini_call_drop;
    job->calls[i].job = job;
    job->calls[i].index = i;
    gemini_answer_init(&job->calls[i].read);
    answer_set_spool(&job->calls[i].read, job->spool.bl ? &job->spool : NULL);
  }
  return job;
}

/* The single outcome of a finished job; the job keeps nothing it returns. */
static provider_outcome *gemini_job_join(gemini_job *job) {
  provider_outcome *joined = job->spare;
  if (job->aborted) {
    adapter_set_canceled(joined, "gemini");
    job->spare = NULL;
    return joined;
  }
  for (int i = 0; i < job->n; i++) {
    provider_outcome *r = job->results[i];
    if (!r || r->status != PROVIDER_OK) continue;
    /* Each call yields one image; spare->images has room for n. */
    for (size_t k = 0; k < r->n_images && joined->n_images < (size_t)job->n; k++) {
      joined->images[joined->n_images++] = r->images[k];
      r->images[k].data = NULL;
      r->images[k].staged = NULL;
    }
  }
  if (joined->n_images > 0) {
    /* Some calls delivered: the task gets those images, even if others failed. */
    joined->status = PROVIDER_OK;
    joined->error_class = PROVIDER_ERR_NONE;
    joined->retryable = false;
    joined->http_status = 200;
    joined->error_code[0] = joined->error_message[0] = '\0';
    job->spare = NULL;
    return joined;
  }
  for (int i = 0; i < job->n; i++) {
    if (job->results[i]) {
      provider_outcome *first = job->results[i];
      job->results[i] = NULL;
      return first;
    }
  }
  job->spare = NULL; /* every call ran out of memory: report that */
  return joined;
}

/* Records one call's end (cancelled: the loop shut down; aborted: cancel()
 * stopped it); the last one delivers and frees the job. */
static void gemini_job_call_ended(gemini_job *job, int index, provider_outcome *o, bool cancelled,
                                  bool aborted) {
  pthread_mutex_lock(&job->lock);
  job->results[index] = o;
  if (cancelled) job->cancelled = true;
  if (aborted) job->aborted = true;
  bool last = --job->pending == 0;
  bool deliver = last && !job->cancelled && !job->abandoned;
  pthread_mutex_unlock(&job->lock);
  if (!last) return;
  if (deliver) job->done(job->ctx, gemini_job_join(job));
  gemini_job_free(job);
}

/* start() could not submit calls [submitted, n): they will never end, and
 * those in flight must not deliver since start() reports failure. */
static void gemini_job_abandon(gemini_job *job, int submitted) {
  pthread_mutex_lock(&job->lock);
  job->abandoned = true;
  job->pending -= job->n - submitted;
  bool last = job->pending == 0;
  pthread_mutex_unlock(&job->lock);
  if (last) gemini_job_free(job);
}

/* Runs on a pool thread. */
static void gemini_call_run(workpool_item *w) {
  gemini_call *call = (gemini_call *)w;
  curlloop_result *a = &call->answer;
  provider_outcome *o;
  if (!adapter_transport_ok(a))
    o = adapter_transport_outcome(a, "gemini");
  else
    o = gemini_parse_answer(a->http_status, &call->read, a->retry_after);
  buf_free(&a->body);
  answer_free(&call->read); /* the drafts and whatever was not taken */
  gemini_job_call_ended(call->job, call->index, o, false, a->aborted);
}

/* The provider is being destroyed with this answer unread: drop it like a
 * cancelled call. */
static void gemini_call_drop(workpool_item *w) {
  gemini_call *call = (gemini_call *)w;
  buf_free(&call->answer.body);
  gemini_job_call_ended(call->job, call->index, NULL, true, false);
}

/* Runs on the loop thread: keeps the answer and leaves the parsing to the
 * pool. From here on a cancel() no longer reaches this call. */
static void gemini_on_done(void *ctx, CURL *easy, curlloop_result *res) {
  gemini_call *call = ctx;
  adapter_flight_landed(call->job->inst, &call->flight);
  curl_easy_cleanup(easy);
  if (res->cancelled) {
    gemini_job_call_ended(call->job, call->index, NULL, true, false);
    return;
  }
  adapter_take_answer(&call->answer, res);
  workpool_submit(call->job->inst->pool, &call->work);
}

static CURL *gemini_easy(const adapter_provider *gp, const gemini_job *job, const char *url,
                         long timeout_ms) {
  CURL *easy = adapter_easy_new(&gp->inst, url, timeout_ms);
  if (!easy) return NULL;
  /* The body is shared by the job's calls and lives until the last ends. */
  if (curl_easy_setopt(easy, CURLOPT_HTTPHEADER, job->headers) != CURLE_OK ||
      curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->body_len) != CURLE_OK ||
      curl_easy_setopt(easy, CURLOPT_POSTFIELDS, job->body) != CURLE_OK) {
    curl_easy_cleanup(easy);
    return NULL;
  }
  return easy;
}

static int gemini_start(provider *p, const provider_request *req, provider_done_fn done,
                        void *ctx) {
  adapter_provider *gp = (adapter_provider *)p;
  if (!gp || !req || !done || req->quantity < 1 || req->quantity > ADAPTER_MAX_QUANTITY)
    return -1;
  char *url = gemini_request_url(gp->inst.base_url, req->upstream_model);
  gemini_job *job = url ? gemini_job_new(gp, req, done, ctx) : NULL;
  if (!job) {
    free(url);
    return -1;
  }
  int n = job->n; /* the job may be gone once its last call is submitted */
  for (int i = 0; i < n; i++) {
    CURL *easy = gemini_easy(gp, job, url, req->timeout_ms);
    curlloop_sink sink = {answer_write, &job->calls[i].read};
    if (!easy || adapter_flight_submit(&gp->inst, &job->calls[i].flight, ctx, easy, &sink,
                                       gemini_on_done, &job->calls[i]) != 0) {
      if (easy) curl_easy_cleanup(easy);
      char qname[80];
      LOG_WARN("gemini_submit_failed", "provider=%s call=%d of=%d",
               log_quote(gp->base.name, qname, sizeof qname), i + 1, n);
      free(url);
      /* The calls already out would only be dropped: stop paying for them. */
      if (i > 0) adapter_flights_cancel(&gp->inst, ctx);
      gemini_job_abandon(job, i);
      return -1;
    }
  }
  free(url);
  return 0;
}

static const provider_ops gemini_ops = {.kind = "gemini",
                                        .start = gemini_start,
                                        .destroy = adapter_provider_destroy,
                                        .cancel = adapter_provider_cancel};

void gemini_provider_drain(provider *p) { adapter_provider_drain(p, &gemini_ops); }

provider *gemini_provider_create(const provider_instance_config *cfg, struct curlloop *loop) {
  return adapter_provider_create(cfg, &gemini_ops, "/v1beta", loop);
}
