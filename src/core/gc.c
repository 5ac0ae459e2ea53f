/* gc.c - the orphan collector. See gc.h. */
#include "core/gc.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/timeutil.h"

/* A row's key is compared whole with a listed key: it must have room for
 * any key the blob store accepts, or a long one would never match. */
_Static_assert(sizeof(((store_blob_ref *)0)->blob_key) > BLOB_KEY_MAX,
               "store_blob_ref.blob_key holds any blob key");

typedef struct gc_pass {
  store *st;
  blob *bl;
  int64_t now_ms;
  int64_t cutoff_ms; /* now - min_age: entries modified after this are young */
  const char *prefix; /* of the listing in progress */
  const _Atomic bool *cancel;
  gc_stats stats;
  /* The last task looked up. A folder's entries are listed one after
   * another (blob.h), so one lookup serves every entry of a task's folder. */
  bool cached;
  char task_id[IDS_UUID_LEN + 1];
  bool task_found;
  task_state state;
  store_blob_ref *refs;
  size_t n_refs;
} gc_pass;

/* The task an entry belongs to: the folder after the prefix
 * ("results/<task id>/..."). False when the key has no such folder or one
 * no task id fits: then no task, hence no row, can refer to it. */
static bool gc_owner(const char *key, const char *prefix, char id[IDS_UUID_LEN + 1]) {
  size_t plen = strlen(prefix);
  if (strncmp(key, prefix, plen) != 0) return false;
  const char *start = key + plen;
  const char *slash = strchr(start, '/');
  if (!slash || slash == start || (size_t)(slash - start) > IDS_UUID_LEN) return false;
  memcpy(id, start, (size_t)(slash - start));
  id[slash - start] = '\0';
  return true;
}

/* Loads (or reuses) the rows of task id. False when the store failed. */
static bool gc_lookup(gc_pass *p, const char *id) {
  if (p->cached && strcmp(p->task_id, id) == 0) return true;
  free(p->refs);
  p->refs = NULL;
  p->n_refs = 0;
  p->cached = false;
  int rc = p->st->ops->task_blob_refs(p->st, id, &p->state, &p->refs, &p->n_refs);
  if (rc != STORE_OK && rc != STORE_NOT_FOUND) return false;
  p->task_found = rc == STORE_OK;
  snprintf(p->task_id, sizeof p->task_id, "%s", id);
  p->cached = true;
  return true;
}

/* Whether a row of the looked-up task refers to key (the rule in gc.h). */
static bool gc_referenced(const gc_pass *p, const char *key) {
  if (!p->task_found) return false;
  bool final = task_state_is_final(p->state);
  for (size_t i = 0; i < p->n_refs; i++) {
    const store_blob_ref *r = &p->refs[i];
    if (r->result) {
      if (r->purged_ms == 0 && strcmp(r->blob_key, key) == 0) return true;
      continue;
    }
    if (final) continue;
    if (r->blob_key[0]) {
      if (strcmp(r->blob_key, key) == 0) return true;
      continue;
    }
    char url_key[BLOB_KEY_MAX + 1];
    task_url_input_key(p->task_id, (size_t)r->index, url_key, sizeof url_key);
    if (strcmp(url_key, key) == 0) return true;
  }
  return false;
}

static void gc_count_removal(gc_pass *p, int rc, size_t *removed) {
  if (rc == BLOB_OK)
    (*removed)++;
  else if (rc != BLOB_NOT_FOUND) /* NOT_FOUND: someone else removed it meanwhile */
    p->stats.failed++;
}

static void gc_log_removal(const gc_pass *p, const blob_entry *e) {
  LOG_DEBUG("orphan_removed", "key=%s bytes=%llu age_s=%lld", e->key, (unsigned long long)e->size,
            (long long)((p->now_ms - e->mtime_ms) / 1000));
}

/* The listing's callback: judges one entry. */
static int gc_visit(void *ctx, const blob_entry *e) {
  gc_pass *p = ctx;
  if (p->cancel && *p->cancel) return 1;
  p->stats.listed++;
  /* The age guard (gc.h): a young entry may be a write whose row is about
   * to commit, so it is not even looked at. */
  if (e->mtime_ms > p->cutoff_ms) {
    p->stats.young++;
    return 0;
  }
  if (e->temporary) {
    gc_log_removal(p, e);
    gc_count_removal(p, p->bl->ops->remove_temp(p->bl, e->key), &p->stats.temp_removed);
    return 0;
  }
  char id[IDS_UUID_LEN + 1];
  if (gc_owner(e->key, p->prefix, id)) {
    if (!gc_lookup(p, id)) { /* the store failed: keep what we cannot judge */
      p->stats.failed++;
      return 0;
    }
    if (gc_referenced(p, e->key)) {
      p->stats.referenced++;
      return 0;
    }
  }
  assert(e->mtime_ms <= p->cutoff_ms); /* the guard above, restated where it matters */
  gc_log_removal(p, e);
  gc_count_removal(p, p->bl->ops->remove(p->bl, e->key), &p->stats.removed);
  return 0;
}

void gc_collect(store *st, blob *bl, int64_t min_age_ms, int64_t now_ms,
                const _Atomic bool *cancel, gc_stats *out) {
  assert(min_age_ms > 0); /* without an age guard a submit in progress could lose its inputs */
  int64_t started = time_mono_ms();
  gc_pass p = {.st = st, .bl = bl, .now_ms = now_ms, .cutoff_ms = now_ms - min_age_ms,
               .cancel = cancel};
  static const char *const prefixes[] = {TASK_BLOB_INPUTS, TASK_BLOB_RESULTS};
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
    /* The cache serves one folder's run of entries, never a later listing:
     * rows read long before an entry is judged would widen the race the
     * age guard covers. */
    p.cached = false;
    p.prefix = prefixes[i];
    int rc = bl->ops->list(bl, p.prefix, gc_visit, &p);
    if (rc > 0) break; /* cancelled */
    if (rc != BLOB_OK) p.stats.failed++; /* logged by the backend; the rest was judged */
  }
  free(p.refs);
  if (p.stats.removed || p.stats.temp_removed || p.stats.failed)
    LOG_INFO("orphans_collected",
             "removed=%zu temp_removed=%zu referenced=%zu young=%zu failed=%zu dur_ms=%lld",
             p.stats.removed, p.stats.temp_removed, p.stats.referenced, p.stats.young,
             p.stats.failed, (long long)(time_mono_ms() - started));
  if (out) *out = p.stats;
}
