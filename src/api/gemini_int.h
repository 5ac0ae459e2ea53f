/* gemini_int.h - what the Gemini dialect's files share (gemini.c: routes,
 * requests and waiting; gemini_render.c: its answers, errors and webhook
 * payloads, in the shapes of Google's Gemini API). Not for other dialects. */
#ifndef IMGATE_GEMINI_INT_H
#define IMGATE_GEMINI_INT_H

#include "api/api.h"

/* The key as Gemini clients send it: x-goog-api-key, ?key=, or
 * Authorization: Bearer (dialect.h's read_key). */
const char *gemini_read_key(http_request *req, char *out, size_t size);

/* Google's status text for an HTTP status ("INVALID_ARGUMENT", ...). */
const char *gemini_status_text(int status);

/* A refusal with status, slug and message, in the Gemini error shape. */
void gemini_reply_error(http_request *req, int status, const char *slug, const char *message);

/* The error document {"error":{"code","message","status","details"}} (the
 * refusal shape: dialect.h's reply_error). */
void gemini_error_shape(http_request *req, int status, const imgate_error *err);

/* What a final task amounts to, for a Gemini client. */
typedef enum {
  GEMINI_OUTCOME_ANSWER, /* 200: candidates with images, or promptFeedback (moderated) */
  GEMINI_OUTCOME_ERROR,  /* a Gemini error: *status and err filled */
} gemini_outcome;

/* The GenerateContentResponse for final task t (model: the name the client
 * asked for, echoed as modelVersion), images inline as base64 read through
 * the core; or, for a task that failed or was canceled, the HTTP status and
 * the error to answer. *doc is NULL with an error. */
gemini_outcome gemini_render_final(core *c, const task *t, const char *model, json_t **doc,
                                   int *status, imgate_error *err);

/* {"error":{...}} for status and err (for an error sent inside a stream). */
json_t *gemini_error_doc(int status, const imgate_error *err);

/* The webhook payload of a task made through this dialect (gemini_render.c). */
char *gemini_webhook_payload(core *c, const task *t, const char *event, int64_t now_ms);

#endif
