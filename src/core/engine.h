/* engine.h - runs tasks on providers, without blocking HTTP workers.
 *
 * Durable first, then in memory: a task is inserted queued in the store
 * before engine_enqueue() sees its id, so the in-memory queue is only a cache
 * of the store's queued set and can be rebuilt from it at any time.
 *
 *   dispatcher thread: pops an id while fewer than max_in_flight tasks run,
 *     marks it running in the store (compare-and-set; attempts+1), asks the
 *     router for a route, reads the reference images back and starts the
 *     provider call; it also starts retries whose backoff has elapsed;
 *   reference images given by URL are downloaded first, all at once, on the
 *     curl loop through the guarded fetcher (upstream/fetch.h); a completer
 *     writes them to the blob store under inputs/{task}/{i}.url, where a
 *     re-run finds them, and a refused or failed download fails the task
 *     before any upstream call;
 *   provider threads (and the curl loop): call back with the outcome, which is queued;
 *   transcode threads (a small pool): when the task asks for an output format
 *     and an image arrived in another (by its magic bytes), convert it
 *     (core/transcode.h) between the completer that took the outcome and
 *     the completer that stores it; an image that cannot be converted is
 *     not delivered (not billed), and a task left with none fails with
 *     "transcode_failed" (not retried: another upstream call would be paid
 *     for the same image);
 *   completer threads: report the outcome to the router, record the attempt,
 *     then either schedule a retry (retryable failure, attempts and deadline
 *     left: exponential backoff with equal jitter, at least what the upstream
 *     asked for with Retry-After/RetryInfo, preferably on another route) or
 *     write the images to the blob store, price each (core/pricing.h) and
 *     finish the task in the store (compare-and-set on state and attempts,
 *     results and the charge in the same transaction), logging
 *     `task_finished` once.
 *
 * Crash recovery (engine_start): tasks left running by a dead process are put
 * back to queued and every queued task is enqueued again, oldest first. A
 * re-run gets a new attempt number, so only one run can ever finish a task.
 *
 * Shutdown (engine_stop): stop starting tasks and retries, wait up to
 * drain_timeout_ms for calls in flight, cancel the rest (curl loop first, then
 * the providers): those tasks stay running in the store and the next start
 * re-runs them. */
#ifndef IMGATE_ENGINE_H
#define IMGATE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "config.h"
#include "store/store.h"
#include "upstream/curlloop.h"
#include "upstream/fetch.h"
#include "upstream/provider.h"
#include "upstream/router.h"

typedef struct engine_config {
  int max_in_flight;       /* provider calls running at once */
  int completer_threads;   /* <= 0 means 2 */
  int64_t retention_ms;    /* result URLs expire this long after the task finished */
  size_t max_input_bytes;  /* cap when reading a reference image back from the blob store */
  int drain_timeout_ms;
  int max_attempts;        /* upstream calls per run, first included (default 3) */
  int deadline_ms;         /* a run gives up retrying after this long (default 300000) */
  int backoff_base_ms;     /* first retry waits up to this (default 500), doubling */
  int backoff_max_ms;      /* cap of one backoff (default 15000) */
  fetch_config fetch;      /* reference images by URL (max_bytes 0 = max_input_bytes) */
  int sweep_interval_ms;   /* how often an idle dispatcher looks for stranded queued tasks (30000) */
  int transcode_threads;   /* threads converting images to a task's output_format (<= 0: 2) */
  int64_t transcode_max_pixels; /* larger images are not converted (<= 0: the default,
                                   core/transcode.h) */
  /* The price list a finishing task's delivered images are priced by
   * (core/pricing.h: pricing_image, never more than the task's hold per
   * image); it must outlive the engine. NULL: each image costs its hold. */
  const imgate_config *prices;
  /* Called after each change of a task this engine commits (a run started,
   * an attempt recorded before a retry, the task final, canceled or put back
   * to queued), on the thread that committed it: quick (it wakes waiters
   * and the webhook dispatcher). outbox: the change also wrote a webhook
   * delivery. */
  void (*on_change)(void *ctx, const char *task_id, bool outbox);
  void *on_change_ctx;
} engine_config;

typedef struct engine engine;

/* The engine takes ownership of the router (and so of its providers) and of
 * the curl loop (may be NULL when no provider uses it): it must stop them in
 * order. store and blob stay the caller's and must outlive the engine. */
engine *engine_create(store *st, blob *bl, router *rt, curlloop *loop, const engine_config *cfg);
/* Recovers from a previous run and starts the threads. Returns 0 or -1. */
int engine_start(engine *e);
/* Schedules a task the store holds as queued. */
void engine_enqueue(engine *e, const char *task_id);
/* Stops dispatching, drains, stops the threads. Idempotent. */
void engine_stop(engine *e);
/* Stops if needed, destroys the provider, frees everything. */
void engine_destroy(engine *e);

typedef struct engine_stats {
  size_t queued;    /* ids waiting in memory */
  size_t in_flight; /* tasks running (calling a provider or waiting to retry) */
  size_t retrying;  /* of those, waiting for a retry's time */
  uint64_t finished;/* tasks this process finished */
  bool stopping;    /* engine_stop has begun */
} engine_stats;

void engine_get_stats(engine *e, engine_stats *out);

/* Cancels a task with code ("canceled", "deadline_exceeded"). Queued: it is
 * canceled in the store at once (hold released, CANCELED event, its webhook
 * delivery) and STORE_OK. Running: the store marks it, and the run of this
 * engine, if it has it, ends canceled at its next step: at once when it
 * waits for a retry, when its upstream call answers (or is aborted)
 * otherwise; STORE_CONFLICT with *state_out = running. Final: nothing
 * changes, STORE_CONFLICT with *state_out its state. NOT_FOUND, ERROR. A
 * task whose deadline_ms passes is canceled the same way by the engine
 * itself ("deadline_exceeded"), within about a second. */
int engine_cancel(engine *e, const char *task_id, const char *code, task_state *state_out);

/* True when some route serves the catalog model. */
bool engine_serves(engine *e, const char *model);
/* The router, for health reports and metrics (owned by the engine). */
router *engine_router(engine *e);

#endif
