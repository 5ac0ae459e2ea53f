/* provider.h - an upstream that turns a prompt (and reference images) into images.
 *
 * Providers are asynchronous: start() returns at once and the provider calls
 * done() later from one of its own threads, exactly once per started call
 * unless the provider is destroyed first (then pending calls are dropped
 * without a callback; their tasks stay "running" in the store and are re-run
 * after restart). cancel() asks a call to end early; it still ends through
 * done(), once. A provider knows its wire format and nothing of accounts,
 * billing or the store. Kinds: sim.c, gemini.c, openai.c. */
#ifndef IMGATE_PROVIDER_H
#define IMGATE_PROVIDER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"

/* An image an upstream delivered: in memory (data), or, when it was large
 * and the request gave a spool, already written to the blob store as it
 * arrived and waiting there uncommitted (staged; data NULL). Whoever takes
 * the image commits the staged write (the object then exists under
 * staged_key) or aborts it; provider_outcome_free aborts what is left. */
typedef struct provider_image {
  uint8_t *data; /* malloc'd; NULL when staged */
  size_t len;    /* bytes, in memory or staged */
  char mime[32]; /* from the bytes' magic, e.g. "image/png" */
  int width, height;
  blob_stream *staged;
  char staged_key[BLOB_KEY_MAX + 1];
} provider_image;

typedef enum {
  PROVIDER_OK = 0,    /* images delivered */
  PROVIDER_FAILED,    /* no image; error_* say why; retryable says whether another try may work */
  PROVIDER_MODERATED, /* refused by the upstream's safety filters; never retried, never billed */
} provider_status;

/* Why an attempt did not deliver, for the retry decision, route health and
 * metrics. The classes are the same for every upstream kind. */
typedef enum {
  PROVIDER_ERR_NONE = 0,
  PROVIDER_ERR_BAD_REQUEST,  /* the request itself is wrong (400): no retry anywhere */
  PROVIDER_ERR_MODERATED,    /* safety refusal: no retry, not billed */
  PROVIDER_ERR_AUTH,         /* 401/403 at this route: its key is wrong; try another route */
  PROVIDER_ERR_CREDIT,       /* 402 at this route: its upstream credit is gone; try another */
  PROVIDER_ERR_RATE_LIMITED, /* 429: try later or elsewhere, honouring retry_after_ms */
  PROVIDER_ERR_SERVER,       /* 5xx */
  PROVIDER_ERR_TIMEOUT,      /* connect or total timeout */
  PROVIDER_ERR_NETWORK,      /* DNS, connect refused, reset, TLS */
  PROVIDER_ERR_BAD_RESPONSE, /* 2xx that cannot be parsed, or truncated */
  PROVIDER_ERR_NO_IMAGE,     /* the model answered without an image (NO_IMAGE, OTHER, MAX_TOKENS) */
  PROVIDER_ERR_INTERNAL,     /* our side (out of memory, could not start) */
  PROVIDER_ERR_CANCELED,     /* stopped by cancel(): never retried, says nothing of the route */
} provider_error_class;

#define PROVIDER_ERR_CLASSES (PROVIDER_ERR_CANCELED + 1) /* how many classes there are */

/* The error_code of a call stopped by cancel(). */
#define PROVIDER_CANCELED_CODE "canceled"

/* "none", "bad_request", "moderated", "auth", "credit", "rate_limited",
 * "server", "timeout", "network", "bad_response", "no_image", "internal",
 * "canceled". */
const char *provider_error_class_name(provider_error_class c);
/* Whether an error of this class says something about the route's health
 * (and so counts against it in the router), rather than about the request. */
bool provider_error_class_hurts_route(provider_error_class c);

typedef struct provider_outcome {
  provider_status status;
  bool retryable;          /* another attempt (maybe on another route) may succeed */
  provider_error_class error_class;
  int http_status;         /* the upstream's HTTP status; 0 when no answer arrived */
  int64_t retry_after_ms;  /* the upstream asked to wait this long (Retry-After, RetryInfo); 0 = none */
  char error_code[48];     /* stable slug, e.g. "upstream_timeout", "content_moderated" */
  char error_message[256];
  provider_image *images;  /* malloc'd array */
  size_t n_images;
  /* The quality the upstream says it made the images at ("low", "medium",
   * "high", as OpenAI's answers report it); "" when it did not say. The
   * core prices by it; the pixel size it takes from the images themselves. */
  char quality[8];
  /* The background the upstream says it made ("transparent", "opaque"), as
   * OpenAI's answers report it; "" when it did not say. */
  char background[12];
} provider_outcome;

/* Frees the images and the outcome itself. */
void provider_outcome_free(provider_outcome *o);
/* A zeroed outcome (NULL when memory runs out). */
provider_outcome *provider_outcome_new(provider_status status);

typedef struct provider_input {
  const uint8_t *data;
  size_t len;
  const char *mime;
} provider_input;

/* Where a provider writes the large images of an answer as they arrive, so
 * that no whole image is held in memory between the upstream and the store
 * (the engine's, one per attempt). Keys are prefix + a number from seq +
 * "." + the format's extension; the prefix keeps them under the task's
 * results folder (core/task.h), unique per attempt. A provider copies it at
 * start() (provider_spool_copy): calls it could not stop may still write
 * after a start() that failed, when the engine has moved on. */
typedef struct provider_spool {
  blob *bl;
  char prefix[96];
  atomic_uint seq; /* images begun so far, across the attempt's calls */
} provider_spool;

/* dst as src (numbering from 0); dst->bl NULL when src is NULL. */
void provider_spool_copy(provider_spool *dst, const provider_spool *src);

/* What to make. Only valid during start(): a provider copies what it keeps. */
typedef struct provider_request {
  const char *task_id;
  const char *model;          /* catalog model name */
  const char *upstream_model; /* the model id the upstream knows */
  const char *prompt;
  const char *aspect_ratio;   /* as requested, may be "auto" */
  const char *resolution;     /* normalised catalog resolution */
  const char *quality;        /* "low", "medium", "high" or "auto" for models that have a
                                 quality (GPT Image); NULL = "auto" */
  int quantity;
  const provider_input *inputs;
  size_t n_inputs;
  long timeout_ms;            /* at most this long (the deadline left); the provider's own
                               timeout still applies when shorter; 0 = only the provider's */
  /* The format the client wants ("png", "jpeg", "webp"; NULL = any) and the
   * quality of a JPEG or WebP (0..100). A provider whose upstream can make
   * that format asks it to; the engine converts whatever else arrives, so a
   * provider may ignore these. */
  const char *output_format;
  int output_compression;
  /* NULL: every image is delivered in memory. */
  provider_spool *spool;
  /* What only a model with catalog transparency is given (the core refuses
   * both for the others): the background asked for ("auto", "opaque",
   * "transparent"; NULL = auto), and the edit mask (a PNG with an alpha
   * channel for the first input; NULL = none; only with inputs). */
  const char *background;
  const provider_input *mask;
} provider_request;

/* Receives the outcome (and owns it: free with provider_outcome_free). */
typedef void (*provider_done_fn)(void *ctx, provider_outcome *outcome);

typedef struct provider provider;

typedef struct provider_ops {
  const char *kind; /* "sim", "gemini", "openai" */
  /* Starts one call. Returns 0, or -1 when it could not be started (done is then never called). */
  int (*start)(provider *p, const provider_request *req, provider_done_fn done, void *ctx);
  /* Stops threads and drops pending calls without calling done; frees p. */
  void (*destroy)(provider *p);
  /* Stops the call that was started with ctx, if it is still running: its
   * done is then called soon, on the provider's usual thread, with status
   * PROVIDER_FAILED, error_class PROVIDER_ERR_CANCELED, retryable false and
   * error_code PROVIDER_CANCELED_CODE; whatever the upstream had sent is
   * dropped, and the upstream exchange is broken off. If the call has
   * already ended (done called, or being called, or its answer already being
   * read), or ctx started no call, nothing happens: the call finishes
   * normally. Either way done is called once per start, never twice.
   * Thread-safe, never blocks on the network, may be called from done itself.
   *
   * ctx names the call: a caller must not have two calls in flight with one
   * ctx on one provider (a cancel would stop both). Once done has run, the
   * call is forgotten, so a late cancel with the same ctx stops nothing; but
   * if ctx has been passed to start() again meanwhile, it stops that newer
   * call. Last in the struct so that ops written positionally elsewhere
   * (test doubles) still compile; every provider kind here implements it. */
  void (*cancel)(provider *p, void *ctx);
} provider_ops;

struct provider {
  const provider_ops *ops;
  char name[64]; /* instance name shown to users, e.g. "sim" */
};

/* The simulated provider: after delay_ms it renders a PNG of exactly the size
 * the model, ratio and resolution call for, its content derived from the prompt.
 * A prompt containing fail_marker fails (retryable=false); one containing
 * moderate_marker is moderated. Empty or NULL markers are off. */
typedef struct sim_config {
  int delay_ms;
  const char *fail_marker;
  const char *moderate_marker;
  int render_threads; /* PNG encoding threads; <= 0 means 2 */
} sim_config;

provider *sim_provider_create(const sim_config *cfg);

/* An upstream instance from configuration: a kind, where it is, its key.
 * A reseller is just another instance of a kind with its own base_url. */
typedef struct provider_instance_config {
  const char *name;         /* unique, shown to users: "gemini", "openai", "my-reseller" */
  const char *kind;         /* "gemini" | "openai" | "sim" */
  const char *base_url;     /* e.g. "https://generativelanguage.googleapis.com" (no trailing /) */
  const char *api_key;
  long timeout_ms;          /* whole call; default 120000 */
  long connect_timeout_ms;  /* default 10000 */
} provider_instance_config;

struct curlloop;
/* Gemini generateContent (upstream/gemini.c) and OpenAI Images (upstream/openai.c).
 * Both run their HTTP through the shared curl loop. NULL on bad configuration. */
provider *gemini_provider_create(const provider_instance_config *cfg, struct curlloop *loop);
provider *openai_provider_create(const provider_instance_config *cfg, struct curlloop *loop);

#endif
