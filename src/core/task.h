/* task.h - the task model and its state machine.
 *
 *   queued -> running -> succeeded | failed | moderated
 *   running -> queued            (only by crash recovery: re-run after restart)
 *
 * A task is created queued, started by the engine (running, attempt+1), and
 * finished exactly once. Final states never change. The store enforces the
 * transitions with compare-and-set updates; task_state_can_transition() is the
 * single table both the store and the engine consult. */
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
} task_state;

#define TASK_STATE_COUNT 5

/* "queued", "running", "succeeded", "failed", "moderated". */
const char *task_state_name(task_state s);
/* Parses the names above; false for anything else. */
bool task_state_parse(const char *name, task_state *out);
bool task_state_is_final(task_state s);
/* The transition table above. */
bool task_state_can_transition(task_state from, task_state to);

/* A reference image given with the request. Base64 inputs are decoded at
 * submit and kept in the blob store (blob_key set); URL inputs keep the URL
 * and are fetched when the task runs (a later step). */
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
  char *webhook_url;  /* NULL when none */
  char *provider;     /* name of the provider that served the last attempt; NULL before */
  int quantity;       /* images wanted (1 for now) */
  int attempts;       /* times the task has been started; 0 while first queued */
  int64_t created_ms, started_ms, finished_ms; /* unix ms; 0 = not yet */
  char *error_code;   /* set for failed/moderated */
  char *error_message;
  task_input *inputs;
  size_t n_inputs;
  task_result *results;
  size_t n_results;
  int64_t price_unit_micros;  /* price of one delivered image */
  int64_t price_refs_micros;  /* reference-image surcharge, charged once if any image is delivered */
  int64_t cost_held_micros;   /* held at submit: quantity x unit + surcharge */
  int64_t cost_charged_micros;/* captured at the end (0 until then, and for failed tasks) */
  task_attempt *upstream_attempts; /* oldest first */
  size_t n_upstream_attempts;
} task;

/* Where a task's images live in the blob store: reference images under
 * "inputs/<task id>/" ("<i>.<ext>" written at submit, "<i>.url" the download
 * of a URL input, kept while the task may run), results under
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
