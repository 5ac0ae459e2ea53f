/* retention.c - the sweeper. See retention.h. */
#include "core/retention.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "core/gc.h"
#include "util/log.h"
#include "util/timeutil.h"

#define RETENTION_BATCH 256

size_t retention_sweep(store *st, blob *bl, int64_t now_ms) {
  size_t purged = 0, failed = 0;
  for (;;) {
    store_expired *items = NULL;
    size_t n = 0;
    if (st->ops->results_expired(st, now_ms, RETENTION_BATCH, &items, &n) != STORE_OK) break;
    size_t failed_here = 0;
    for (size_t i = 0; i < n; i++) {
      int rc = bl->ops->remove(bl, items[i].blob_key);
      /* Gone already (a crash after the delete, before the mark) is done too. */
      if (rc != BLOB_OK && rc != BLOB_NOT_FOUND) {
        failed_here++;
        continue;
      }
      /* NOT_FOUND: marked meanwhile by another pass, which counted it. A
       * mark that fails leaves the row due: it is a failure like the
       * removal's, or the next batch would be this one again, for as long
       * as the store keeps failing. */
      rc = st->ops->result_mark_purged(st, items[i].task_id, items[i].index, now_ms);
      if (rc == STORE_OK)
        purged++;
      else if (rc != STORE_NOT_FOUND)
        failed_here++;
    }
    free(items);
    failed += failed_here;
    /* A short batch was the last; a batch with failures would come back
     * with the same items, so they wait for the next pass. */
    if (n < RETENTION_BATCH || failed_here > 0) break;
  }
  if (purged || failed) LOG_INFO("retention_swept", "purged=%zu failed=%zu", purged, failed);
  return purged;
}

struct retention {
  store *st;
  blob *bl;
  retention_config cfg;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  /* Atomic as well as under lock: a collector pass reads it between entries
   * without taking the lock. */
  _Atomic bool stop;
  retention_stats stats; /* under lock */
};

static void retention_collect(retention *r) {
  gc_stats gs;
  gc_collect(r->st, r->bl, r->cfg.orphan_min_age_ms, time_now_ms(), &r->stop, &gs);
  pthread_mutex_lock(&r->lock);
  if (!r->stop) r->stats.orphan_passes++; /* a cancelled pass did not look at everything */
  r->stats.orphans_removed += gs.removed;
  r->stats.orphan_temp_removed += gs.temp_removed;
  pthread_mutex_unlock(&r->lock);
}

/* A sweep at start (catching up on what expired while imgate was down),
 * then one per sweep interval; a collector pass after the first sweep and
 * then once per orphan interval, until stopped. */
static void *retention_main(void *arg) {
  retention *r = arg;
  int64_t next_gc = time_mono_ms();
  pthread_mutex_lock(&r->lock);
  for (;;) {
    pthread_mutex_unlock(&r->lock);
    retention_sweep(r->st, r->bl, time_now_ms());
    if (!r->stop && time_mono_ms() >= next_gc) {
      retention_collect(r);
      next_gc = time_mono_ms() + r->cfg.orphan_interval_ms;
    }
    pthread_mutex_lock(&r->lock);
    if (r->stop) break;
    int64_t due = time_mono_ms() + r->cfg.sweep_interval_ms;
    if (next_gc < due) due = next_gc;
    struct timespec until = {.tv_sec = due / 1000, .tv_nsec = (long)(due % 1000) * 1000000};
    while (!r->stop && pthread_cond_timedwait(&r->cond, &r->lock, &until) == 0) {
    }
    if (r->stop) break;
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

retention *retention_start(store *st, blob *bl, const retention_config *cfg) {
  retention *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->st = st;
  r->bl = bl;
  r->cfg = *cfg;
  if (r->cfg.sweep_interval_ms <= 0) r->cfg.sweep_interval_ms = 60000;
  if (r->cfg.orphan_min_age_ms <= 0) r->cfg.orphan_min_age_ms = 3600000;
  if (r->cfg.orphan_interval_ms <= 0) r->cfg.orphan_interval_ms = 3600000;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cond, &attr);
  pthread_condattr_destroy(&attr);
  pthread_mutex_init(&r->lock, NULL);
  if (pthread_create(&r->thread, NULL, retention_main, r) != 0) {
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return NULL;
  }
  return r;
}

void retention_get_stats(retention *r, retention_stats *out) {
  pthread_mutex_lock(&r->lock);
  *out = r->stats;
  pthread_mutex_unlock(&r->lock);
}

void retention_stop(retention *r) {
  if (!r) return;
  pthread_mutex_lock(&r->lock);
  r->stop = true;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
  pthread_join(r->thread, NULL);
  pthread_cond_destroy(&r->cond);
  pthread_mutex_destroy(&r->lock);
  free(r);
}
