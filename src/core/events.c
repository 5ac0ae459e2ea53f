/* events.c - see events.h. A fixed table of chains, each a task id's
 * subscribers, under striped locks: publishing for one task never waits on
 * another task's subscribers, and nothing rehashes. */
#include "core/events.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/ids.h"

#define EVENTS_BUCKETS 4096 /* power of two */
#define EVENTS_STRIPES 64   /* divides EVENTS_BUCKETS */

struct events_sub {
  events_sub *next; /* in its bucket */
  char task_id[IDS_UUID_LEN + 1];
  size_t bucket;
  events_fn fn;
  void *ctx;
};

struct events {
  pthread_mutex_t stripes[EVENTS_STRIPES];
  events_sub *buckets[EVENTS_BUCKETS];
  atomic_size_t count;
};

events *events_create(void) {
  events *ev = calloc(1, sizeof *ev);
  if (!ev) return NULL;
  for (int i = 0; i < EVENTS_STRIPES; i++) pthread_mutex_init(&ev->stripes[i], NULL);
  atomic_init(&ev->count, 0);
  return ev;
}

void events_destroy(events *ev) {
  if (!ev) return;
  /* A subscriber left now would be called back into freed memory later. */
  assert(atomic_load(&ev->count) == 0);
  for (int i = 0; i < EVENTS_STRIPES; i++) pthread_mutex_destroy(&ev->stripes[i]);
  free(ev);
}

/* FNV-1a; task ids are server-made UUIDs, so nobody outside picks collisions. */
static size_t bucket_of(const char *task_id) {
  uint32_t h = 2166136261u;
  for (const char *p = task_id; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
  return h & (EVENTS_BUCKETS - 1);
}

static pthread_mutex_t *stripe(events *ev, size_t bucket) {
  return &ev->stripes[bucket % EVENTS_STRIPES];
}

events_sub *events_subscribe(events *ev, const char *task_id, events_fn fn, void *ctx) {
  if (!ev || !task_id || strlen(task_id) > IDS_UUID_LEN || !fn) return NULL;
  events_sub *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  strcpy(s->task_id, task_id);
  s->bucket = bucket_of(task_id);
  s->fn = fn;
  s->ctx = ctx;
  pthread_mutex_t *m = stripe(ev, s->bucket);
  pthread_mutex_lock(m);
  s->next = ev->buckets[s->bucket];
  ev->buckets[s->bucket] = s;
  pthread_mutex_unlock(m);
  atomic_fetch_add(&ev->count, 1);
  return s;
}

void events_unsubscribe(events *ev, events_sub *s) {
  if (!ev || !s) return;
  pthread_mutex_t *m = stripe(ev, s->bucket);
  pthread_mutex_lock(m);
  events_sub **link = &ev->buckets[s->bucket];
  while (*link && *link != s) link = &(*link)->next;
  assert(*link == s); /* unsubscribing twice, or from another registry, is a bug */
  if (*link) *link = s->next;
  pthread_mutex_unlock(m);
  atomic_fetch_sub(&ev->count, 1);
  free(s);
}

void events_publish(events *ev, const char *task_id) {
  if (!ev || !task_id) return;
  size_t b = bucket_of(task_id);
  pthread_mutex_t *m = stripe(ev, b);
  pthread_mutex_lock(m);
  for (events_sub *s = ev->buckets[b]; s; s = s->next)
    if (strcmp(s->task_id, task_id) == 0) s->fn(s->ctx);
  pthread_mutex_unlock(m);
}

size_t events_count(events *ev) { return ev ? atomic_load(&ev->count) : 0; }
