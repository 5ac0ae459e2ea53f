/* gc.h - the orphan collector: removes blobs that no committed row refers to.
 *
 * A crash can leave objects that no row will ever name: reference images a
 * submit wrote before its task row was inserted, the results of a run killed
 * before its finishing transaction ("1-0.png" when the task later finished
 * as "3-0.png"), and the temporary files of puts cut short. A pass lists the
 * blob store under the two prefixes tasks use (task.h: "inputs/",
 * "results/") and removes every entry older than min_age that nothing refers
 * to. Objects outside those prefixes are not task images and are left alone.
 *
 * What refers to an object (the rule lives here, not in the store):
 *   - a result row not marked purged. Retention owns those: it deletes the
 *     image when due and then marks the row; a purged row whose image is
 *     still there (a removal a crash forgot) refers to nothing;
 *   - an input row of a task not yet final (queued or running): the key it
 *     holds, or for a URL input the key its download is kept under. A final
 *     task's inputs are read by no run again (the engine deletes them).
 * A temporary entry is never referenced: it goes once it is old enough.
 *
 * Why racing writers are safe: every object is written before the row that
 * names it commits (submit: inputs, then the task row; the engine: results,
 * then the finishing transaction), so for a moment a live object has no row.
 * Such an object is young: the commit follows the write within seconds. A
 * pass never judges an object modified less than min_age before now, so as
 * long as min_age is far longer than any write-to-commit gap (the default is
 * an hour; the configuration refuses less than a minute), nothing about to
 * be referenced is removed. Both times are wall-clock: a clock stepped
 * forward by more than min_age would weaken the guard, one stepped back only
 * delays collection. */
#ifndef IMGATE_GC_H
#define IMGATE_GC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/blob.h"
#include "store/store.h"

/* What one pass saw and did. */
typedef struct gc_stats {
  size_t listed;        /* objects and temporary entries listed */
  size_t young;         /* modified less than min_age ago: not judged, kept */
  size_t referenced;    /* old enough, and a row refers to them: kept */
  size_t removed;       /* orphan objects removed */
  size_t temp_removed;  /* temporary entries removed */
  size_t failed;        /* a lookup, removal or listing that failed: tried again next pass */
} gc_stats;

/* One pass at now_ms (unix ms): removes every orphan object and temporary
 * entry last modified at least min_age_ms (> 0) before now_ms. cancel (may be
 * NULL) ends the pass early once it reads true. Logs a summary when it
 * removed or failed something; *out (may be NULL) receives the counts. */
void gc_collect(store *st, blob *bl, int64_t min_age_ms, int64_t now_ms,
                const _Atomic bool *cancel, gc_stats *out);

#endif
