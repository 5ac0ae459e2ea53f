/* retention.h - deletes result images whose retention is over, and orphans.
 *
 * A finished task's images stay downloadable for retention_hours; after that
 * /files/ answers 404 (files.c checks expires_ms) and this sweeper deletes the
 * bytes from the blob store, marking each result purged so it is never looked
 * at again. The result rows stay: the task's history does not change. Inputs
 * (reference images) are deleted by the engine as soon as a task is final.
 * The same thread runs the orphan collector (gc.h) on its own, longer
 * interval, for what crashes leave behind. */
#ifndef IMGATE_RETENTION_H
#define IMGATE_RETENTION_H

#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "store/store.h"

/* One pass: deletes every image due at now_ms (in batches), marks each
 * purged. An image the blob store cannot delete stays due for the next pass.
 * Returns how many were purged. */
size_t retention_sweep(store *st, blob *bl, int64_t now_ms);

typedef struct retention retention;

typedef struct retention_config {
  int sweep_interval_ms;      /* expired results; <= 0: a minute */
  int64_t orphan_min_age_ms;  /* the collector's age guard (gc.h); <= 0: an hour */
  int64_t orphan_interval_ms; /* how often the collector runs; <= 0: an hour */
} retention_config;

/* Starts a thread that sweeps every sweep_interval_ms and collects orphans
 * every orphan_interval_ms (each once at start, the sweep first). NULL when
 * the thread cannot start. */
retention *retention_start(store *st, blob *bl, const retention_config *cfg);
/* What the thread has done since it started (for /metrics). */
typedef struct retention_stats {
  uint64_t orphan_passes;       /* collector passes completed */
  uint64_t orphans_removed;     /* orphan objects removed */
  uint64_t orphan_temp_removed; /* temporary entries removed */
} retention_stats;

void retention_get_stats(retention *r, retention_stats *out);

/* Stops and joins the thread (a sweep in progress finishes its batch, a
 * collector pass stops at its next entry). NULL is fine. */
void retention_stop(retention *r);

#endif
