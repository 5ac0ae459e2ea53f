/* openai.h - the OpenAI Images wire format (GPT Image models).
 *
 * Text-to-image goes to POST /v1/images/generations as JSON; with reference
 * images, to POST /v1/images/edits as multipart/form-data. The builders and
 * the parser are pure (the form is described as a list of parts that
 * openai.c turns into a curl_mime), so they are tested without a network;
 * openai_provider_create (provider.h) is the glue. Wire facts:
 * shared/reference/upstreams.md.
 *
 * How answers map to outcomes (class, retryable, error_code):
 * - 2xx with data[].b64_json: OK, one image per entry (MIME type and size
 *   from the bytes), and the answer's "quality" in the outcome when it is
 *   low, medium or high ("" otherwise), its "background" when it is
 *   transparent or opaque (likewise). Entries with only a "url", base64 that does not decode,
 *   or bytes that are not an image: BAD_RESPONSE, retryable,
 *   "upstream_bad_response"; so are bodies that are not JSON or have no
 *   "data" array. An empty data array: NO_IMAGE, retryable, "no_image".
 * - code moderation_blocked or content_policy_violation, or type
 *   image_generation_user_error with "moderation" in the code (any 4xx, or an
 *   error inside a 2xx): MODERATED, "content_moderated".
 * - 400: BAD_REQUEST, not retryable, "upstream_bad_request" (but code
 *   billing_hard_limit_reached: CREDIT).
 * - 401, 403: AUTH, retryable, "upstream_auth".
 * - 402: CREDIT, retryable, "upstream_credit".
 * - 404: AUTH, retryable, "upstream_model_not_found" (see gemini.h: a route
 *   that cannot serve a vetted model is misconfigured, not a bad request).
 * - 408: TIMEOUT, retryable, "upstream_timeout".
 * - 429: RATE_LIMITED, retryable, "upstream_rate_limited", retry_after_ms
 *   from retry-after-ms, else retry-after (seconds or an HTTP date); but code
 *   or type insufficient_quota (the account's credit is gone, which OpenAI
 *   reports as a 429): CREDIT, "upstream_credit".
 * - 409 and 5xx: SERVER, retryable, "upstream_unavailable".
 * - other 4xx: BAD_REQUEST; anything else: BAD_RESPONSE.
 * error_message always starts with "openai:" and carries the upstream's
 * message (truncated) when there is one.
 *
 * As for gemini.h: answers are read as they arrive, the data[].b64_json
 * strings decoded piece by piece on the curl loop and the rest parsed on the
 * provider's own threads; the curl loop must be destroyed before the
 * providers that use it. */
#ifndef IMGATE_OPENAI_H
#define IMGATE_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "upstream/answer.h"
#include "upstream/provider.h"

/* The size parameter for an aspect ratio: "1:1" -> "1024x1024", "3:2" ->
 * "1536x1024", "2:3" -> "1024x1536", "auto" (or NULL/"") -> "auto"; NULL for
 * ratios GPT Image cannot draw. */
const char *openai_size(const char *aspect_ratio);

/* The output_format asked of GPT Image: the request's "png", "jpeg" or
 * "webp", else "png" (a request that wants no particular format gets PNG,
 * lossless). */
const char *openai_output_format(const provider_request *req);
/* Whether output_compression goes with it: for jpeg and webp (GPT Image
 * takes it for those only), with the request's 0..100. */
bool openai_sends_compression(const provider_request *req);

/* The background asked of GPT Image: the request's, "auto" when NULL or "". */
const char *openai_background(const provider_request *req);

/* The generations body (malloc'd JSON text): model, prompt, n, size, quality,
 * output_format (openai_output_format), background (openai_background) and,
 * for jpeg and webp, output_compression. quality is req->quality, "auto"
 * when NULL or "": always sent, so the upstream makes what was priced. No
 * response_format: GPT Image always answers base64. Never a mask: a mask
 * goes with an edit. NULL for an unsupported ratio or when memory runs out. */
char *openai_build_generations(const provider_request *req);

/* One part of the edits form. Text values and file data are borrowed from the
 * request (or are static), so a form lives no longer than the request. */
typedef struct openai_part {
  const char *name;     /* "prompt", "model", "n", "size", "quality", "output_format",
                           "output_compression" (jpeg, webp), "background", "image[]",
                           "mask" */
  const char *text;     /* the value of a text field; NULL for a file */
  const uint8_t *data;  /* a file's bytes */
  size_t len;
  char filename[32];    /* "image-1.png", "mask.png"; "" for text */
  const char *type;     /* a file's MIME type: "image/png" (magic bytes, else declared) */
} openai_part;

typedef struct openai_form {
  openai_part *parts; /* malloc'd */
  size_t n_parts;
  char n_text[12];    /* storage for the "n" value */
  char compression_text[12]; /* and for "output_compression" */
} openai_form;

/* Describes the edits form for req: the text fields in the order above
 * (quality and background as for generations), then one "image[]" file per
 * input, named image-N.<ext> from 1, then the mask (req->mask, when there
 * are inputs) as the file "mask", mask.png, image/png: OpenAI applies it to
 * the first image. Returns 0, or -1 for an unsupported ratio or when memory
 * runs out (form is then empty). */
int openai_describe_edits(const provider_request *req, openai_form *form);
void openai_form_free(openai_form *form);

/* The endpoint for a request: generations without inputs, edits with. */
char *openai_request_url(const char *base_url, bool edits);

/* Turns an HTTP answer into an outcome (see the table above). body need not
 * be NUL-terminated; the header values may be NULL or "". NULL only when
 * memory runs out. */
provider_outcome *openai_parse_response(long http_status, const char *body, size_t len,
                                        const char *retry_after, const char *retry_after_ms);

/* Readies a to read an Images API answer as it arrives (answer_write). */
void openai_answer_init(answer_reader *a);

/* openai_parse_response for an answer read through a, once its body has
 * ended; takes the images it delivers out of a (answer_free a afterwards). */
provider_outcome *openai_parse_answer(long http_status, answer_reader *a, const char *retry_after,
                                      const char *retry_after_ms);

/* As gemini_provider_drain, for an openai provider. */
void openai_provider_drain(provider *p);

#endif
