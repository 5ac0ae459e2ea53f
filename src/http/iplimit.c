/* iplimit.c - see iplimit.h. A hash table of counters under striped locks:
 * accepting threads rarely touch the same stripe, and the table never
 * rehashes (a fixed number of chains, each short in practice). */
#include "http/iplimit.h"

#include <assert.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define IPLIMIT_BUCKETS 4096 /* power of two */
#define IPLIMIT_STRIPES 64   /* divides IPLIMIT_BUCKETS */

typedef struct ip_entry {
  struct ip_entry *next;
  uint8_t key[16];
  unsigned count;
} ip_entry;

struct iplimit {
  unsigned limit;
  uint32_t seed; /* so that nobody outside can aim many addresses at one chain */
  pthread_mutex_t stripes[IPLIMIT_STRIPES];
  ip_entry *buckets[IPLIMIT_BUCKETS];
};

iplimit *iplimit_create(unsigned limit) {
  assert(limit >= 1);
  iplimit *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->limit = limit;
  t->seed = (uint32_t)(uintptr_t)t ^ 0x9e3779b9u;
  for (int i = 0; i < IPLIMIT_STRIPES; i++) pthread_mutex_init(&t->stripes[i], NULL);
  return t;
}

void iplimit_destroy(iplimit *t) {
  if (!t) return;
  for (int i = 0; i < IPLIMIT_BUCKETS; i++) {
    for (ip_entry *e = t->buckets[i]; e;) {
      ip_entry *next = e->next;
      free(e);
      e = next;
    }
  }
  for (int i = 0; i < IPLIMIT_STRIPES; i++) pthread_mutex_destroy(&t->stripes[i]);
  free(t);
}

bool iplimit_key(const struct sockaddr *addr, uint8_t key[16]) {
  memset(key, 0, 16);
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)addr;
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &a->sin_addr, 4);
    return true;
  }
  if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)addr;
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) { /* an IPv4 client of a dual-stack socket */
      memcpy(key, a->sin6_addr.s6_addr, 16);
      return true;
    }
    memcpy(key, a->sin6_addr.s6_addr, 8);
    return true;
  }
  return false;
}

/* FNV-1a over the key, mixed with the table's seed. */
static size_t bucket_of(const iplimit *t, const uint8_t key[16]) {
  uint32_t h = 2166136261u ^ t->seed;
  for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 16777619u;
  h ^= h >> 15;
  return h & (IPLIMIT_BUCKETS - 1);
}

static pthread_mutex_t *stripe_of(iplimit *t, size_t bucket) {
  return &t->stripes[bucket % IPLIMIT_STRIPES];
}

bool iplimit_acquire(iplimit *t, const uint8_t key[16]) {
  size_t b = bucket_of(t, key);
  pthread_mutex_t *m = stripe_of(t, b);
  bool ok = false;
  pthread_mutex_lock(m);
  ip_entry *e = t->buckets[b];
  while (e && memcmp(e->key, key, 16) != 0) e = e->next;
  if (e) {
    if (e->count < t->limit) {
      e->count++;
      ok = true;
    }
  } else if ((e = calloc(1, sizeof *e)) != NULL) {
    memcpy(e->key, key, 16);
    e->count = 1;
    e->next = t->buckets[b];
    t->buckets[b] = e;
    ok = true;
  }
  pthread_mutex_unlock(m);
  return ok;
}

void iplimit_release(iplimit *t, const uint8_t key[16]) {
  size_t b = bucket_of(t, key);
  pthread_mutex_t *m = stripe_of(t, b);
  pthread_mutex_lock(m);
  ip_entry **link = &t->buckets[b];
  while (*link && memcmp((*link)->key, key, 16) != 0) link = &(*link)->next;
  ip_entry *e = *link;
  assert(e && e->count > 0); /* a release without its acquire is a bug */
  if (e && --e->count == 0) {
    *link = e->next;
    free(e);
  }
  pthread_mutex_unlock(m);
}

unsigned iplimit_count(iplimit *t, const uint8_t key[16]) {
  size_t b = bucket_of(t, key);
  pthread_mutex_t *m = stripe_of(t, b);
  pthread_mutex_lock(m);
  const ip_entry *e = t->buckets[b];
  while (e && memcmp(e->key, key, 16) != 0) e = e->next;
  unsigned n = e ? e->count : 0;
  pthread_mutex_unlock(m);
  return n;
}
