/* gemini.h - the Gemini generateContent wire format (Nano Banana models).
 *
 * The request builder and the answer parser are pure functions, so every
 * upstream answer can be tested without a network; gemini.c's provider glue
 * (gemini_provider_create in provider.h) only moves their results through the
 * curl loop. Wire facts: shared/reference/upstreams.md.
 *
 * How answers map to outcomes (class, retryable, error_code):
 * - 200 with an image: OK. The final image is the last inlineData (or
 *   inline_data) part without "thought": true; drafts are skipped.
 * - 200, prompt blocked (promptFeedback.blockReason, no candidates), or no
 *   image with a safety-type finishReason: MODERATED, "content_moderated".
 * - 200, no image for any other reason (NO_IMAGE, MAX_TOKENS, OTHER, or STOP
 *   with only a text refusal): NO_IMAGE, retryable, "no_image".
 * - 200 that is not JSON, is truncated, has no candidates and no block reason,
 *   or whose image is not an image, or any of whose image strings (drafts
 *   included: they are decoded as they arrive, before anyone knows they are
 *   drafts) is not valid base64: BAD_RESPONSE, retryable,
 *   "upstream_bad_response".
 * - 400 INVALID_ARGUMENT: BAD_REQUEST, not retryable, "upstream_bad_request".
 * - 400 with an invalid key ("API key not valid", reason API_KEY_*): AUTH,
 *   retryable, "upstream_auth".
 * - 400 FAILED_PRECONDITION: AUTH, retryable, "upstream_auth". Google uses it
 *   for conditions of the key's project, not of the request (free tier not
 *   available in the caller's country, billing not enabled), so another route
 *   may well serve the same request.
 * - 401, 403: AUTH, retryable, "upstream_auth".
 * - 402: CREDIT, retryable, "upstream_credit".
 * - 404: AUTH, retryable, "upstream_model_not_found". The catalog has already
 *   vetted the model, so a 404 means this route (its base_url or the model id
 *   configured for it) cannot serve it: a route configuration problem that
 *   another route may not have, like a wrong key. Not BAD_REQUEST, which would
 *   stop the task from trying anywhere else.
 * - 408: TIMEOUT, retryable, "upstream_timeout".
 * - 429: RATE_LIMITED, retryable, "upstream_rate_limited", retry_after_ms from
 *   RetryInfo.retryDelay, else the Retry-After header.
 * - 409 and 5xx: SERVER, retryable, "upstream_unavailable".
 * - other 4xx: BAD_REQUEST, not retryable; other statuses: BAD_RESPONSE.
 * error_message always starts with "gemini:" and carries the upstream's own
 * message (truncated) when there is one.
 *
 * Answers are read as they arrive (upstream/answer.h): the image strings
 * (candidates[].content.parts[].inlineData.data, or inline_data) are decoded
 * piece by piece on the curl loop, thought signatures are dropped, and only
 * the rest, a few kilobytes, is parsed with jansson at the end.
 *
 * Calls in flight point at the provider's parsing threads; they are ended
 * (cancelled, without done()) when the curl loop is destroyed. So destroy the
 * curl loop before the providers that use it. */
#ifndef IMGATE_GEMINI_H
#define IMGATE_GEMINI_H

#include <stdbool.h>
#include <stddef.h>

#include "upstream/answer.h"
#include "upstream/provider.h"

/* Whether the upstream model takes generationConfig.imageConfig.imageSize:
 * not Nano Banana (gemini-2.5-flash-image, or the catalog's 2.5 size family),
 * yes for the Gemini 3 image models and anything newer. */
bool gemini_sends_image_size(const provider_request *req);

/* The imageSize value for a catalog resolution: "1K", "2K", "4K" (upper case,
 * as the API demands) or "512"; NULL for anything else. */
const char *gemini_image_size(const char *resolution);

/* The generateContent request body (malloc'd JSON text, NUL-terminated): one
 * user turn holding the prompt and then each input as inlineData, with
 * responseModalities ["IMAGE"], aspectRatio unless the ratio is "auto" (or
 * absent) and, when send_image_size, the imageSize. NULL when memory runs out. */
char *gemini_build_request(const provider_request *req, bool send_image_size);

/* "{base_url}/v1beta/models/{model}:generateContent", the model id
 * percent-encoded. malloc'd; NULL when memory runs out or model is empty. */
char *gemini_request_url(const char *base_url, const char *upstream_model);

/* Turns an HTTP answer into an outcome (see the table above). body need not
 * be NUL-terminated. retry_after_header is the raw Retry-After value or
 * NULL/"". NULL only when memory runs out. The whole body at once: the
 * provider reads answers piece by piece with the two functions below. */
provider_outcome *gemini_parse_response(long http_status, const char *body, size_t len,
                                        const char *retry_after_header);

/* Readies a to read a generateContent answer as it arrives (answer_write). */
void gemini_answer_init(answer_reader *a);

/* gemini_parse_response for an answer read through a, once its body has
 * ended; takes the image it delivers out of a (answer_free a afterwards). */
provider_outcome *gemini_parse_answer(long http_status, answer_reader *a,
                                      const char *retry_after_header);

/* Blocks until every answer already received by this provider (a gemini
 * one; others are ignored) has been parsed and delivered to done(). At an
 * orderly shutdown, after the curl loop is destroyed, it lets answers that
 * were already paid for reach their tasks before the provider is destroyed. */
void gemini_provider_drain(provider *p);

#endif
