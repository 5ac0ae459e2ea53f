/* task.h - the task model and its state machine.
 *
 *   queued -> running -> succeeded | failed | moderated | canceled
 *   queued -> canceled           (a cancel request, or a deadline that passed)
 *   running -> queued            (only by crash recovery: re-run after restart)
 *
 * A task is created queued, started by the engine (running, attempt+1), and
 * finished exactly once. Final states never change. The store enforces the
 * transitions with compare-and-set updates; task_state_can_transition() is the
 * single table both the store and the engine consult. A running task is
 * canceled by its engine: a cancel only marks it (cancel_requested), the
 * engine aborts the run and finishes it as canceled.
 *
 * Every committed state change is also a task event (task_event below),
 * numbered 1, 2, 3... per task in commit order. */
#ifndef IMGATE_TASK_H
#define IMGATE_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/ids.h"

typedef enum {
  TASK_QUEUED = 0,
  TASK_RUNNING,
  TASK_SUCCEEDED,
  TASK_FAILED,
  TASK_MODERATED,
  TASK_CANCELED,
} task_state;

#define TASK_STATE_COUNT 6

/* "queued", "running", "succeeded", "failed", "moderated", "canceled". */
const char *task_state_name(task_state s);
/* Parses the names above; false for anything else. */
bool task_state_parse(const char *name, task_state *out);
bool task_state_is_final(task_state s);
/* The transition table above. */
bool task_state_can_transition(task_state from, task_state to);

/* What happened to a task, one per committed state change (and per upstream
 * attempt that will be retried). The store writes each in the transaction of
 * the change it records, so the events of a task are exactly its history. */
typedef enum {
  TASK_EVENT_QUEUED = 0, /* created; or put back to queued (crash recovery, lost run) */
  TASK_EVENT_RUNNING,    /* a run started: provider, run (the attempts counter) */
  TASK_EVENT_ATTEMPT,    /* an upstream attempt ended without an image and will be
                            retried: provider, http_status, error_code (its code, else
                            its class) */
  TASK_EVENT_SUCCEEDED,
  TASK_EVENT_FAILED,     /* error_code */
  TASK_EVENT_MODERATED,  /* error_code */
  TASK_EVENT_CANCELED,   /* error_code: "canceled" or "deadline_exceeded" */
} task_event_kind;

#define TASK_EVENT_KIND_COUNT 7

typedef struct task_event {
  int seq;              /* 1, 2, 3... per task, in commit order */
  task_event_kind kind;
  int64_t at_ms;        /* unix ms of the change */
  int run;              /* the task's attempts counter at the event */
  char provider[64];    /* RUNNING, ATTEMPT; "" otherwise */
  int http_status;      /* ATTEMPT; 0 otherwise */
  char error_code[48];  /* ATTEMPT, FAILED, MODERATED, CANCELED; "" otherwise */
} task_event;

/* "queued", "running", "attempt", "succeeded", "failed", "moderated",
 * "canceled"; "unknown" for anything else. */
const char *task_event_kind_name(task_event_kind k);
/* Parses the names above; false for anything else. */
bool task_event_kind_parse(const char *name, task_event_kind *out);
/* The event that records entering state s (queued, running or a final state). */
task_event_kind task_event_kind_of_state(task_state s);

/* Optional webhook events a client may ask for (task.webhook_events); the
 * final event is always sent when the task has a webhook_url. */
#define TASK_WEBHOOK_RUNNING 1u /* also send task.running when a run starts */

/* A reference image given with the request. Base64 inputs are decoded at
 * submit and kept in the blob store (blob_key set); URL inputs keep the URL
 * and are fetched when the task runs (a later step). A task's mask is one
 * too (always inline: blob_key set). */
typedef struct task_input {
  char *blob_key; /* NULL for URL inputs */
  char *url;      /* NULL for inline inputs */
  char *mime;     /* detected from magic bytes; NULL for URL inputs until fetched */
  int64_t bytes;
} task_input;

/* One delivered image. */
typedef struct task_result {
  int index;           /* 0-based position among the task's images */
  char *blob_key;      /* where the bytes live in the blob store */
  char *token;         /* unguessable id of the public URL /files/{token} */
  char *mime;          /* image/png, ... */
  char *etag;          /* hex digest of the content (first 32 hex of SHA-256) */
  int width, height;
  int64_t bytes;
  int64_t expires_ms;  /* unix ms after which the URL answers 404 */
  int64_t price_micros;/* what this image was charged (core/pricing.h: pricing_image) */
  char *quality;       /* the quality the upstream reported making it at ("low", "medium",
                          "high"); NULL when it did not say */
  char *background;    /* the background the upstream reported making ("transparent",
                          "opaque"); NULL when it did not say */
} task_result;

/* One upstream call made for a task: a run may make several (retries,
 * failover to another route), and a re-run after a crash makes more. */
typedef struct task_attempt {
  int run;               /* the task's attempts counter when it was made */
  char *provider;        /* provider instance name */
  char *upstream_model;
  int64_t started_ms, ended_ms;
  int http_status;       /* 0 when no HTTP answer */
  char *error_class;     /* provider_error_class_name(); "none" on success */
  char *error_code;      /* NULL on success */
} task_attempt;

typedef struct task {
  char id[IDS_UUID_LEN + 1]; /* UUIDv7, shown to clients as "uid" */
  int64_t account_id;
  task_state state;
  char *model;        /* catalog model name, e.g. "nano-banana-2" */
  char *prompt;
  char *aspect_ratio; /* as requested ("auto" allowed) */
  char *resolution;   /* normalised: "512", "1K", "2K", "4K" */
  char *quality;      /* models priced by quality (GPT Image): "low", "medium", "high" or
                         "auto" as requested; NULL for the others */
  char *webhook_url;  /* NULL when none */
  unsigned webhook_events; /* TASK_WEBHOOK_* bits: optional events to send besides the final one */
  char *dialect;      /* API dialect that created the task and renders its webhook payloads
                         ("native", ...); NULL is stored as "native" */
  char *public_base;  /* scheme://host[:port] the client's image links were built with, no
                         trailing slash, for payloads rendered later without a request; may
                         be NULL */
  int64_t deadline_ms;   /* unix ms after which the task is canceled if not final; 0 = none */
  char *output_format;   /* "png", "jpeg", "webp": the images are delivered in this format,
                            converted when the upstream made another; NULL = as made */
  int output_compression; /* quality 0..100 of a JPEG or WebP imgate writes (default 100) */
  char *background;      /* "auto", "opaque" or "transparent" as requested; NULL = not given
                            (auto). Only a model with catalog transparency takes transparent */
  bool cancel_requested; /* a cancel came while the task ran: its engine aborts the run */
  int event_seq;      /* seq of the task's latest event (task_get fills it; 0 before insert) */
  char *provider;     /* name of the provider that served the last attempt; NULL before */
  int quantity;       /* images wanted (1 for now) */
  int attempts;       /* times the task has been started; 0 while first queued */
  int64_t created_ms, started_ms, finished_ms; /* unix ms; 0 = not yet */
  char *error_code;   /* set for failed/moderated/canceled */
  char *error_message;
  task_input *inputs;
  size_t n_inputs;
  task_input *mask;   /* the edit mask (a PNG with an alpha channel, applied to the first
                         input), kept in the blob store like an uploaded input; NULL = none.
                         Never among inputs: a provider that takes no mask never sees it */
  task_result *results;
  size_t n_results;
  int64_t price_unit_micros;  /* hold per image: the price of one image, the largest one
                                 the request could land on when it leaves a choice to the
                                 upstream ("auto" quality or size) */
  int64_t price_refs_micros;  /* reference-image surcharge, charged once if any image is delivered */
  int64_t cost_held_micros;   /* held at submit: quantity x unit + surcharge */
  int64_t cost_charged_micros;/* captured at the end: the delivered images' prices plus the
                                 surcharge (0 until then, and for failed tasks) */
  task_attempt *upstream_attempts; /* oldest first */
  size_t n_upstream_attempts;
} task;

/* Where a task's images live in the blob store: reference images under
 * "inputs/<task id>/" ("<i>.<ext>" written at submit, "<i>.url" the download
 * of a URL input, "mask.png" the mask, kept while the task may run), results under
 * "results/<task id>/" ("<run>-<i>.<ext>"). The orphan collector (gc.c)
 * finds each object's task by this layout. */
#define TASK_BLOB_INPUTS "inputs/"
#define TASK_BLOB_RESULTS "results/"

/* The key the download of URL input index of task_id is kept under. */
void task_url_input_key(const char *task_id, size_t index, char *key, size_t size);

/* Frees every member and t itself; NULL is fine. */
void task_free(task *t);
void task_result_clear(task_result *r);
void task_input_clear(task_input *in);
void task_attempt_clear(task_attempt *a);

#endif
