/* retention.h - deletes result images whose retention is over.
 *
 * A finished task's images stay downloadable for retention_hours; after that
 * /files/ answers 404 (files.c checks expires_ms) and this sweeper deletes the
 * bytes from the blob store, marking each result purged so it is never looked
 * at again. The result rows stay: the task's history does not change. Inputs
 * (reference images) are deleted by the engine as soon as a task is final. */
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

/* Starts a thread that sweeps every interval_ms (and once at start). NULL
 * when the thread cannot start. */
retention *retention_start(store *st, blob *bl, int interval_ms);
/* Stops and joins the thread (a pass in progress finishes its batch). NULL is fine. */
void retention_stop(retention *r);

#endif
