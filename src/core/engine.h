/* engine.h - runs tasks on providers, without blocking HTTP workers.
 *
 * Durable first, then in memory: a task is inserted queued in the store
 * before engine_enqueue() sees its id, so the in-memory queue is only a cache
 * of the store's queued set and can be rebuilt from it at any time.
 *
 *   dispatcher thread: pops an id while fewer than max_in_flight tasks run,
 *     marks it running in the store (compare-and-set; attempt+1), loads its
 *     reference images and starts the provider call;
 *   provider threads: call back with the outcome, which is queued;
 *   completer threads: write result images to the blob store, then finish the
 *     task in the store (compare-and-set on state and attempt, results in the
 *     same transaction) and log `task_finished` once.
 *
 * Crash recovery (engine_start): tasks left running by a dead process are put
 * back to queued and every queued task is enqueued again, oldest first. A
 * re-run gets a new attempt number, so only one run can ever finish a task.
 *
 * Shutdown (engine_stop): stop starting tasks, wait up to drain_timeout_ms
 * for running ones to finish, then drop the rest: they stay running in the
 * store and the next start re-runs them. */
#ifndef IMGATE_ENGINE_H
#define IMGATE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "store/store.h"
#include "upstream/provider.h"

typedef struct engine_config {
  int max_in_flight;       /* provider calls running at once */
  int completer_threads;   /* <= 0 means 2 */
  int64_t retention_ms;    /* result URLs expire this long after the task finished */
  size_t max_input_bytes;  /* cap when reading a reference image back from the blob store */
  int drain_timeout_ms;
  /* Called on a completer thread after a task's final state is committed,
   * exactly once per task this process finishes (waiters, webhooks, tests). */
  void (*on_finished)(void *ctx, const char *task_id, task_state state);
  void *on_finished_ctx;
} engine_config;

typedef struct engine engine;

/* The engine takes ownership of provider (destroyed in engine_destroy);
 * store and blob stay the caller's and must outlive the engine. */
engine *engine_create(store *st, blob *bl, provider *prov, const engine_config *cfg);
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
  size_t in_flight; /* provider calls running */
  uint64_t finished;/* tasks this process finished */
  bool stopping;    /* engine_stop has begun */
} engine_stats;

void engine_get_stats(engine *e, engine_stats *out);

#endif
