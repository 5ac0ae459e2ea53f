/* provider.h - an upstream that turns a prompt (and reference images) into images.
 *
 * Providers are asynchronous: start() returns at once and the provider calls
 * done() later from one of its own threads, exactly once per started call
 * unless the provider is destroyed first (then pending calls are dropped
 * without a callback; their tasks stay "running" in the store and are re-run
 * after restart). A provider knows its wire format and nothing of accounts,
 * billing or the store. Kinds: sim.c now; gemini.c and openai.c later. */
#ifndef IMGATE_PROVIDER_H
#define IMGATE_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct provider_image {
  uint8_t *data; /* malloc'd */
  size_t len;
  char mime[32]; /* from the bytes' magic, e.g. "image/png" */
  int width, height;
} provider_image;

typedef enum {
  PROVIDER_OK = 0,    /* images delivered */
  PROVIDER_FAILED,    /* no image; error_* say why; retryable says whether another try may work */
  PROVIDER_MODERATED, /* refused by the upstream's safety filters; never retried, never billed */
} provider_status;

typedef struct provider_outcome {
  provider_status status;
  bool retryable;
  char error_code[48];     /* stable slug, e.g. "upstream_timeout", "content_moderated" */
  char error_message[256];
  provider_image *images;  /* malloc'd array */
  size_t n_images;
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

/* What to make. Only valid during start(): a provider copies what it keeps. */
typedef struct provider_request {
  const char *task_id;
  const char *model;          /* catalog model name */
  const char *upstream_model; /* the model id the upstream knows */
  const char *prompt;
  const char *aspect_ratio;   /* as requested, may be "auto" */
  const char *resolution;     /* normalised catalog resolution */
  int quantity;
  const provider_input *inputs;
  size_t n_inputs;
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

#endif
