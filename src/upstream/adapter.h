/* adapter.h - what the HTTP provider adapters (gemini.c, openai.c) share.
 *
 * Error outcomes with messages that are safe to show and to put in JSON,
 * decoding and checking the images an upstream returns, Retry-After in its
 * several spellings, the classification of transfers that got no HTTP answer,
 * the threads that parse answers off the curl loop, the per-instance
 * settings every adapter reads from its configuration, and the register of
 * transfers in flight that cancel() works through. */
#ifndef IMGATE_ADAPTER_H
#define IMGATE_ADAPTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <curl/curl.h>

#include "upstream/curlloop.h"
#include "upstream/provider.h"
#include "util/imagefmt.h"
#include "util/workpool.h"

#define ADAPTER_MAX_RESPONSE_BYTES ((size_t)64 << 20) /* the most an upstream answer may weigh */
#define ADAPTER_MAX_IMAGE_BYTES ((size_t)64 << 20)    /* one decoded image */
#define ADAPTER_MAX_QUANTITY 10                       /* images per task (OpenAI caps n at 10) */
#define ADAPTER_DEFAULT_TIMEOUT_MS 120000L
#define ADAPTER_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define ADAPTER_MAX_RETRY_AFTER_MS ((int64_t)86400000) /* longer waits are clamped to a day */
#define ADAPTER_UPSTREAM_TEXT_MAX 160 /* bytes of an upstream's own message kept in ours */

/* A fresh failed outcome: status MODERATED for PROVIDER_ERR_MODERATED (never
 * retryable), FAILED otherwise. The message is cut at a UTF-8 character
 * boundary and control characters become spaces. NULL when memory runs out. */
provider_outcome *adapter_error(int http_status, provider_error_class cls, bool retryable,
                                const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Copies at most max_bytes of src (and at most dst_size - 1) into dst, never
 * splitting a UTF-8 sequence, with control characters turned into spaces.
 * A NULL src gives "". Returns dst. */
char *adapter_clean_text(char *dst, size_t dst_size, const char *src, size_t max_bytes);

/* Decodes one base64 image as an upstream sent it (a "data:...;base64," prefix
 * is tolerated) and checks it is one: the MIME type comes from the magic
 * bytes, the size from the header (0x0 for HEIC, which has no size parser).
 * Returns 0 and fills img (img->data is malloc'd), or -1 with *why set to a
 * static reason. The declared MIME type of the upstream is never trusted. */
int adapter_decode_image(const char *b64, size_t len, provider_image *img, const char **why);

/* Checks that n bytes are an image, as adapter_decode_image does, and on
 * success fills img with them (img->data = data: the caller's buffer now
 * belongs to img). Returns 0, or -1 with *why set (data is still the
 * caller's). */
int adapter_image_from_bytes(uint8_t *data, size_t n, provider_image *img, const char **why);

/* The format of a reference image: its magic bytes, else its declared MIME
 * type; IMAGEFMT_UNKNOWN when neither says. */
imagefmt adapter_input_format(const provider_input *in);

/* "19s", "1.5s", "0.250s" (a protobuf Duration in JSON) in milliseconds,
 * rounded up; -1 when s is not one. */
int64_t adapter_duration_ms(const char *s);

/* How long the upstream asked to wait, from the headers "retry-after-ms"
 * (milliseconds, preferred) and "Retry-After" (seconds, or an HTTP date taken
 * relative to now). NULL or "" means absent. 0 when none or unreadable;
 * clamped to ADAPTER_MAX_RETRY_AFTER_MS. */
int64_t adapter_retry_after_ms(const char *retry_after, const char *retry_after_ms, time_t now);

/* How a failed call is classed. */
typedef struct adapter_class {
  provider_error_class cls;
  bool retryable;
  const char *code; /* error_code */
} adapter_class;

/* The class an HTTP status alone gives, before an adapter's own reading of
 * the error body: 400 and other 4xx: BAD_REQUEST, "upstream_bad_request",
 * not retryable; 401, 403: AUTH, "upstream_auth"; 402: CREDIT,
 * "upstream_credit"; 404: AUTH, "upstream_model_not_found" (a route that
 * cannot serve a vetted model is misconfigured); 408: TIMEOUT,
 * "upstream_timeout"; 429: RATE_LIMITED, "upstream_rate_limited"; 409 and
 * 5xx: SERVER, "upstream_unavailable"; anything else: BAD_RESPONSE,
 * "upstream_bad_response". All retryable but BAD_REQUEST. */
adapter_class adapter_status_class(int status);

/* Whether a finished transfer brought a complete HTTP answer to parse (or
 * one its sink stopped reading: the sink then says why). */
bool adapter_transport_ok(const curlloop_result *res);
/* The outcome of a transfer that did not (timeout, network, over-size answer,
 * or aborted by cancel(): then a canceled one, see adapter_set_canceled).
 * who prefixes the message ("gemini"). NULL when memory runs out. */
provider_outcome *adapter_transport_outcome(const curlloop_result *res, const char *who);

/* Turns o into the outcome of a call stopped by cancel(): PROVIDER_FAILED,
 * PROVIDER_ERR_CANCELED, not retryable, PROVIDER_CANCELED_CODE, no images
 * (any are freed). Never fails, so a preallocated spare can report it. */
void adapter_set_canceled(provider_outcome *o, const char *who);

/* The outcome handed over when memory ran out while reading an answer: it is
 * allocated before a call starts, so a call always has one to deliver. */
provider_outcome *adapter_spare_outcome(void);

/* Captures what the curl loop reported for a transfer into dst, taking the
 * body over (res->body is left empty), so the answer outlives the callback. */
void adapter_take_answer(curlloop_result *dst, curlloop_result *res);

/* ---- parsing threads ----
 * The curl loop's callbacks must be quick. The images of an answer are
 * decoded as it arrives (upstream/answer.h), but what is left after the
 * transfer (jansson over the rest, the images' checks, the outcome, done())
 * runs on a small pool of the instance's own threads, so that done()'s
 * callers never run on the loop. */

/* The pool is util/workpool.h; a call's work item is its workpool_item. */
#define ADAPTER_POOL_THREADS 2

/* ---- transfers in flight, for cancel() ----
 * Each transfer an adapter hands to the curl loop is registered under the
 * ctx its start() was given, with the loop's id for it, from just before it
 * is submitted until its loop callback runs. cancel(ctx) asks the loop to
 * stop whatever is registered under ctx. A transfer is forgotten the moment
 * its callback begins, so an answer already being read finishes normally,
 * and a cancel that comes later finds nothing. */

typedef struct adapter_flight {
  void *ctx;               /* the start()'s ctx: what cancel() names */
  curlloop_transfer_id id; /* the loop's name for the transfer */
  bool registered;
  struct adapter_flight *prev, *next;
} adapter_flight;

#define ADAPTER_FLIGHT_BUCKETS 256 /* by ctx; cancels are rare, so chains may grow long */

typedef struct adapter_flights {
  pthread_mutex_t lock;
  adapter_flight *buckets[ADAPTER_FLIGHT_BUCKETS];
} adapter_flights;

/* The settings of one configured upstream instance, its parsing threads and
 * its transfers in flight. */
typedef struct adapter_instance {
  char *base_url; /* no trailing '/' and no API version suffix */
  char *api_key;
  long timeout_ms;
  long connect_timeout_ms;
  curlloop *loop;
  workpool *pool;
  adapter_flights *flights;
} adapter_instance;

/* Registers f under ctx and hands easy to the loop (curlloop_submit_sink,
 * with ADAPTER_MAX_RESPONSE_BYTES; the body goes to sink, or is collected in
 * the result when sink is NULL): on_done(done_ctx, ...) runs when it ends,
 * and must call adapter_flight_landed(ai, f) first. Returns 0, or -1 when the
 * loop refused it (then f is not registered and the caller still owns easy). */
int adapter_flight_submit(adapter_instance *ai, adapter_flight *f, void *ctx, CURL *easy,
                          const curlloop_sink *sink, curlloop_done_fn on_done, void *done_ctx);
/* From the transfer's loop callback: it has ended, cancel() no longer reaches it. */
void adapter_flight_landed(adapter_instance *ai, adapter_flight *f);
/* Asks the loop to abort every transfer registered under ctx (each then ends
 * with aborted set, through its callback). Thread-safe, never blocks on I/O;
 * a request the loop cannot take (out of memory) is logged, and that
 * transfer runs on to its end. */
void adapter_flights_cancel(adapter_instance *ai, void *ctx);

/* Checks cfg and copies it into ai and base->name (base->ops is left alone),
 * and starts the instance's parsing threads. kind is the adapter's own
 * ("gemini"); a cfg->kind that differs is refused. version_suffix ("/v1beta",
 * "/v1") is stripped from the end of base_url, so both "https://host" and
 * "https://host/v1" work. Returns false (logging why) on a bad configuration
 * or when memory or threads run out. */
bool adapter_instance_init(adapter_instance *ai, provider *base,
                           const provider_instance_config *cfg, const char *kind,
                           const char *version_suffix, curlloop *loop);
/* Stops the parsing threads (answers still queued are dropped, without
 * done()) and frees the settings. */
void adapter_instance_free(adapter_instance *ai);

/* An adapter's provider: the provider and its instance. */
typedef struct adapter_provider {
  provider base; /* first, so a provider * is an adapter_provider * */
  adapter_instance inst;
} adapter_provider;

/* A provider with ops (ops->kind is the adapter's kind) over an instance made
 * by adapter_instance_init; NULL when that refuses or memory runs out. */
provider *adapter_provider_create(const provider_instance_config *cfg, const provider_ops *ops,
                                  const char *version_suffix, curlloop *loop);
/* The ops->destroy of every adapter. Calls in flight point at the instance's
 * parsing pool, and the curl loop ends them (cancelled) when it is destroyed:
 * so the loop must be destroyed before the providers that use it. The pool's
 * threads are joined (an answer being parsed is delivered), answers still
 * queued are dropped without done(), and p is freed. */
void adapter_provider_destroy(provider *p);
/* Blocks until every answer p has received has been parsed and delivered,
 * when p is a provider with ops; any other provider is ignored. */
void adapter_provider_drain(provider *p, const provider_ops *ops);
/* The ops->cancel of every adapter: adapter_flights_cancel on p's instance. */
void adapter_provider_cancel(provider *p, void *ctx);

/* A POST easy handle for url with the instance's timeouts (timeout_ms > 0
 * shortens the instance's whole-call budget, never lengthens it: the call
 * ends at the earlier of the two), no redirects, http(s) only.
 * NULL when curl cannot make one. */
CURL *adapter_easy_new(const adapter_instance *ai, const char *url, long timeout_ms);

/* "Name: value" as a curl header list entry appended to *list; false when
 * memory runs out (the list is left as it was). A NULL value appends "Name:",
 * which stops curl from sending a header of its own by that name ("Expect":
 * a large body would otherwise wait for "100 Continue" first). */
bool adapter_add_header(struct curl_slist **list, const char *name, const char *value);

#endif
