/* gemini_render.c - the Gemini dialect's answers in the shapes of Google's
 * Gemini API (../shared/reference/upstreams.md): GenerateContentResponse,
 * the error document, and the webhook payload of its tasks. */
#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/gemini_int.h"
#include "util/base64.h"

/* Google's canonical status names, by the HTTP status they travel with. */
const char *gemini_status_text(int status) {
  switch (status) {
  case 400: case 413: case 414: case 431: return "INVALID_ARGUMENT";
  case 401: return "UNAUTHENTICATED";
  case 402: return "RESOURCE_EXHAUSTED"; /* Google's prepaid credit gone */
  case 403: return "PERMISSION_DENIED";
  case 404: return "NOT_FOUND";
  case 405: case 501: case 505: return "UNIMPLEMENTED";
  case 408: case 504: return "DEADLINE_EXCEEDED";
  case 409: return "ABORTED";
  case 422: return "FAILED_PRECONDITION";
  case 429: return "RESOURCE_EXHAUSTED";
  case 499: return "CANCELLED";
  case 503: return "UNAVAILABLE";
  default: return status < 500 ? "INVALID_ARGUMENT" : "INTERNAL";
  }
}

json_t *gemini_error_doc(int status, const imgate_error *err) {
  json_t *details = json_array();
  /* The imgate code rides along as google.rpc.ErrorInfo, in Google's
   * UPPER_SNAKE spelling of reasons ("INVALID_ASPECT_RATIO"). */
  char reason[sizeof err->slug];
  size_t i = 0;
  for (; err->slug[i] && i < sizeof reason - 1; i++)
    reason[i] = (char)toupper((unsigned char)err->slug[i]);
  reason[i] = '\0';
  json_array_append_new(details, json_pack("{s:s, s:o, s:s}", "@type",
                                           "type.googleapis.com/google.rpc.ErrorInfo", "reason",
                                           api_json_text(reason[0] ? reason : "ERROR"), "domain",
                                           "imgate"));
  if (err->param[0])
    json_array_append_new(
        details, json_pack("{s:s, s:[{s:o, s:o}]}", "@type",
                           "type.googleapis.com/google.rpc.BadRequest", "fieldViolations", "field",
                           api_json_text(err->param), "description", api_json_text(err->message)));
  if (status == 429 && err->retry_after_s > 0) {
    char delay[24];
    snprintf(delay, sizeof delay, "%ds", err->retry_after_s);
    json_array_append_new(details, json_pack("{s:s, s:s}", "@type",
                                             "type.googleapis.com/google.rpc.RetryInfo",
                                             "retryDelay", delay));
  }
  return json_pack("{s:{s:i, s:o, s:s, s:o}}", "error", "code", status, "message",
                   api_json_text(err->message), "status", gemini_status_text(status), "details",
                   details);
}

void gemini_error_shape(http_request *req, int status, const imgate_error *err) {
  imgate_error e = *err;
  /* The core speaks of the Authorization header; a Gemini client sends its
   * key elsewhere, so it is told where. */
  char key[1024];
  if (status == 401 && !gemini_read_key(req, key, sizeof key))
    snprintf(e.message, sizeof e.message,
             "the request has no API key: send an imgate key in the x-goog-api-key header "
             "(or as ?key=, or as Authorization: Bearer)");
  char fallback[200];
  snprintf(fallback, sizeof fallback,
           "{\"error\":{\"code\":%d,\"message\":\"the error could not be described\","
           "\"status\":\"%s\"}}",
           status, gemini_status_text(status));
  api_reply_error_doc(req, status, gemini_error_doc(status, &e), fallback);
}

void gemini_reply_error(http_request *req, int status, const char *slug, const char *message) {
  api_reply_error(req, status, slug, message, NULL);
}

/* The HTTP status a failed or canceled task is answered with. */
static int final_error_status(const task *t) {
  const char *code = t->error_code ? t->error_code : "";
  if (t->state == TASK_CANCELED) return strcmp(code, "deadline_exceeded") == 0 ? 504 : 499;
  static const struct {
    const char *code;
    int status;
  } table[] = {
      /* The request's own reference images could not be used. */
      {"image_url_refused", 400},
      {"image_too_large", 400},
      {"invalid_image", 400},
      {"image_download_failed", 400},
      {"upstream_bad_request", 400},
      /* Nobody could take it now: worth trying again later. */
      {"no_provider_available", 503},
      {"upstream_unavailable", 503},
      {"upstream_rate_limited", 503},
      {"upstream_timeout", 504},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(code, table[i].code) == 0) return table[i].status;
  return 500;
}

static void task_error(const task *t, imgate_error *err) {
  memset(err, 0, sizeof *err);
  snprintf(err->slug, sizeof err->slug, "%s", t->error_code ? t->error_code : "internal_error");
  snprintf(err->message, sizeof err->message, "%s",
           t->error_message && *t->error_message ? t->error_message
           : t->state == TASK_CANCELED            ? "the task was canceled"
                                                  : "the task failed");
}

/* A blocked generation, as Gemini reports a blocked prompt: no candidates. */
static json_t *prompt_feedback(const task *t) {
  return json_pack("{s:s, s:o}", "blockReason", "SAFETY", "blockReasonMessage",
                   api_json_text(t->error_message ? t->error_message : "the prompt was blocked"));
}

/* One candidate per delivered image, the image inline. */
static json_t *inline_candidates(core *c, const task *t, imgate_error *err) {
  json_t *cands = json_array();
  for (size_t i = 0; cands && i < t->n_results; i++) {
    uint8_t *bytes = NULL;
    size_t len = 0;
    const char *mime = t->results[i].mime ? t->results[i].mime : "application/octet-stream";
    if (core_read_result(c, &t->results[i], &bytes, &len, err) < 0) {
      json_decref(cands);
      return NULL;
    }
    char *b64 = base64_encode(bytes, len);
    free(bytes);
    json_t *data = b64 ? json_stringn_nocheck(b64, strlen(b64)) : NULL;
    free(b64);
    json_t *cand = data ? json_pack("{s:{s:s, s:[{s:{s:s, s:o}}]}, s:s, s:i}", "content", "role",
                                    "model", "parts", "inlineData", "mimeType", mime, "data",
                                    data, "finishReason", "STOP", "index", (int)i)
                        : NULL;
    if (!cand || json_array_append_new(cands, cand) < 0) {
      json_decref(cands);
      err_set(err, ERR_INTERNAL, "internal_error", NULL, "out of memory");
      return NULL;
    }
  }
  return cands;
}

gemini_outcome gemini_render_final(core *c, const task *t, const char *model, json_t **doc,
                                   int *status, imgate_error *err) {
  assert(task_state_is_final(t->state));
  *doc = NULL;
  if (t->state == TASK_SUCCEEDED) {
    json_t *cands = inline_candidates(c, t, err);
    if (!cands) {
      *status = err_http_status(ERR_INTERNAL);
      return GEMINI_OUTCOME_ERROR;
    }
    *doc = json_pack("{s:o, s:s, s:s}", "candidates", cands, "modelVersion", model,
                     "responseId", t->id);
  } else if (t->state == TASK_MODERATED) {
    *doc = json_pack("{s:o, s:s, s:s}", "promptFeedback", prompt_feedback(t), "modelVersion",
                     model, "responseId", t->id);
  } else {
    task_error(t, err);
    *status = final_error_status(t);
    return GEMINI_OUTCOME_ERROR;
  }
  if (!*doc) {
    err_set(err, ERR_INTERNAL, "internal_error", NULL, "out of memory");
    *status = 500;
    return GEMINI_OUTCOME_ERROR;
  }
  return GEMINI_OUTCOME_ANSWER;
}

/* The webhook payload: the event, and the task as a GenerateContentResponse
 * would tell it, but with each image as a link (fileData.fileUri) rather
 * than megabytes of base64 in a webhook body:
 *
 *   {"type":"task.succeeded","timestamp":"...","responseId":"<uid>",
 *    "modelVersion":"nano-banana","status":"succeeded",
 *    "response":{"candidates":[{"content":{"role":"model","parts":[{"fileData":
 *      {"mimeType":"image/png","fileUri":"https://host/files/<token>.png"}}]},
 *      "finishReason":"STOP","index":0}],"modelVersion":"...","responseId":"<uid>"}}
 *
 * A moderated task's response holds promptFeedback; a failed or canceled one
 * has "error" (the Gemini error document's inner object) instead of
 * "response"; task.running has neither. */
char *gemini_webhook_payload(core *c, const task *t, const char *event, int64_t now_ms) {
  char base[600];
  api_webhook_base(c, t, base, sizeof base);
  json_t *doc = json_pack("{s:s, s:o, s:s, s:s, s:s}", "type", event, "timestamp",
                          api_json_time(now_ms), "responseId", t->id, "modelVersion", t->model,
                          "status", task_state_name(t->state));
  if (!doc) return NULL;
  if (t->state == TASK_SUCCEEDED) {
    json_t *cands = json_array();
    for (size_t i = 0; i < t->n_results; i++) {
      char name[128], url[800];
      if (!core_result_file_name(&t->results[i], name, sizeof name)) name[0] = '\0';
      snprintf(url, sizeof url, "%s/files/%s", base, name);
      json_array_append_new(
          cands, json_pack("{s:{s:s, s:[{s:{s:s, s:s}}]}, s:s, s:i}", "content", "role", "model",
                           "parts", "fileData", "mimeType", t->results[i].mime, "fileUri", url,
                           "finishReason", "STOP", "index", (int)i));
    }
    json_object_set_new(doc, "response",
                        json_pack("{s:o, s:s, s:s}", "candidates", cands, "modelVersion",
                                  t->model, "responseId", t->id));
  } else if (t->state == TASK_MODERATED) {
    json_object_set_new(doc, "response",
                        json_pack("{s:o, s:s, s:s}", "promptFeedback", prompt_feedback(t),
                                  "modelVersion", t->model, "responseId", t->id));
  } else if (t->state == TASK_FAILED || t->state == TASK_CANCELED) {
    imgate_error err;
    task_error(t, &err);
    json_t *e = gemini_error_doc(final_error_status(t), &err);
    json_object_set(doc, "error", json_object_get(e, "error"));
    json_decref(e);
  }
  char *text = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  return text;
}
