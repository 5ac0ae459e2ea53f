/* ratelimit.c - striped hash tables of token buckets.
 *
 * Keys are spread over RL_STRIPES stripes, each a mutex and an open-addressing
 * table with linear probing, so threads working on different keys rarely
 * wait for each other and one key's bucket is only ever changed under one
 * lock (which is what makes "exactly burst tokens" hold across threads).
 *
 * Tokens are counted in millionths (fixed point) so refill and retry-after
 * are exact: floating point would make "retry after N ms" sometimes one
 * millisecond short or long. */
#include "util/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#define RL_STRIPE_BITS 6
#define RL_STRIPES (1u << RL_STRIPE_BITS)
#define RL_MIN_CAP 16u
/* Slots looked at for refilled buckets on each take: enough to walk a table
 * while it is in use, few enough to keep a take O(1). */
#define RL_SWEEP_STEP 4u

#define RL_ONE 1000000 /* one token, in the units buckets count in */
/* Bounds that keep every product below INT64_MAX: 10^12 tokens of burst,
 * 10^9 tokens per second. */
#define RL_MAX_BURST 1e12
#define RL_MAX_RATE 1e9

typedef struct rl_bucket {
  int64_t key;
  int64_t last_ms; /* when tokens was last brought up to date */
  int64_t tokens;  /* millionths of a token */
  int64_t rate;    /* millionths of a token per millisecond; 0 marks an empty slot */
  int64_t burst;   /* millionths of a token */
} rl_bucket;

typedef struct rl_stripe {
  pthread_mutex_t lock;
  rl_bucket *slots; /* cap entries, cap a power of two, or NULL when cap == 0 */
  size_t cap;
  size_t count;
  size_t cursor;    /* where the lazy sweep continues */
} rl_stripe;

struct ratelimit {
  rl_stripe stripes[RL_STRIPES];
};

/* splitmix64's finaliser: sequential ids spread over stripes and slots. */
static uint64_t rl_hash(int64_t key) {
  uint64_t x = (uint64_t)key;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

static size_t rl_home(const rl_stripe *s, int64_t key) {
  return (size_t)(rl_hash(key) >> RL_STRIPE_BITS) & (s->cap - 1);
}

static bool rl_used(const rl_bucket *b) { return b->rate > 0; }

/* Tokens the bucket holds at now, without changing it. */
static int64_t rl_tokens_at(const rl_bucket *b, int64_t now_ms) {
  if (now_ms <= b->last_ms) return b->tokens;
  int64_t room = b->burst - b->tokens;
  int64_t elapsed = now_ms - b->last_ms;
  /* Compared by division first so a long pause cannot overflow. */
  if (elapsed > room / b->rate) return b->burst;
  return b->tokens + elapsed * b->rate;
}

static bool rl_full(const rl_bucket *b, int64_t now_ms) {
  return rl_tokens_at(b, now_ms) >= b->burst;
}

ratelimit *ratelimit_create(void) {
  ratelimit *rl = calloc(1, sizeof *rl);
  if (!rl) return NULL;
  for (unsigned i = 0; i < RL_STRIPES; i++) pthread_mutex_init(&rl->stripes[i].lock, NULL);
  return rl;
}

void ratelimit_destroy(ratelimit *rl) {
  if (!rl) return;
  for (unsigned i = 0; i < RL_STRIPES; i++) {
    pthread_mutex_destroy(&rl->stripes[i].lock);
    free(rl->stripes[i].slots);
  }
  free(rl);
}

/* Stores b in the first free slot of its probe run; the table must have one. */
static rl_bucket *rl_place(rl_stripe *s, const rl_bucket *b) {
  size_t i = rl_home(s, b->key);
  while (rl_used(&s->slots[i])) i = (i + 1) & (s->cap - 1);
  s->slots[i] = *b;
  s->count++;
  return &s->slots[i];
}

/* Rebuilds the stripe's table without the buckets that are full at now,
 * sized so that the survivors plus `extra` new ones fill at most a quarter:
 * the next rebuild is then at least cap/4 inserts away, which keeps inserts
 * O(1) amortised. An empty result frees the table. Returns false (table
 * unchanged) when memory runs out. */
static bool rl_rebuild(rl_stripe *s, int64_t now_ms, size_t extra) {
  size_t live = 0;
  for (size_t i = 0; i < s->cap; i++)
    if (rl_used(&s->slots[i]) && !rl_full(&s->slots[i], now_ms)) live++;
  if (live + extra == 0) {
    free(s->slots);
    s->slots = NULL;
    s->cap = s->count = s->cursor = 0;
    return true;
  }
  size_t cap = RL_MIN_CAP;
  while (cap < 4 * (live + extra)) cap *= 2;
  rl_bucket *slots = calloc(cap, sizeof *slots);
  if (!slots) return false;
  rl_stripe fresh = {.slots = slots, .cap = cap};
  for (size_t i = 0; i < s->cap; i++)
    if (rl_used(&s->slots[i]) && !rl_full(&s->slots[i], now_ms)) rl_place(&fresh, &s->slots[i]);
  free(s->slots);
  s->slots = fresh.slots;
  s->cap = fresh.cap;
  s->count = fresh.count;
  s->cursor = 0;
  return true;
}

/* Deletes slot i, shifting later entries of its probe run back so every
 * remaining key stays reachable from its home slot without tombstones. */
static void rl_delete_at(rl_stripe *s, size_t i) {
  size_t mask = s->cap - 1;
  for (size_t j = (i + 1) & mask; rl_used(&s->slots[j]); j = (j + 1) & mask) {
    size_t home = rl_home(s, s->slots[j].key);
    /* The entry at j must stay if its home lies cyclically in (i, j]. */
    bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      s->slots[i] = s->slots[j];
      i = j;
    }
  }
  s->slots[i].rate = 0;
  s->count--;
}

/* Drops refilled buckets from a few slots, and shrinks a table that has
 * become mostly empty: this is what bounds memory over time. */
static void rl_sweep_some(rl_stripe *s, int64_t now_ms) {
  bool deleted = false;
  for (unsigned n = 0; n < RL_SWEEP_STEP && s->cap; n++) {
    size_t i = s->cursor & (s->cap - 1);
    if (rl_used(&s->slots[i]) && rl_full(&s->slots[i], now_ms)) {
      rl_delete_at(s, i); /* slot i may now hold a shifted entry: look again */
      deleted = true;
    } else {
      s->cursor = i + 1;
    }
  }
  if (deleted && s->cap > RL_MIN_CAP && s->count < s->cap / 8) rl_rebuild(s, now_ms, 0);
}

static rl_bucket *rl_find(rl_stripe *s, int64_t key) {
  if (!s->cap) return NULL;
  for (size_t i = rl_home(s, key); rl_used(&s->slots[i]); i = (i + 1) & (s->cap - 1))
    if (s->slots[i].key == key) return &s->slots[i];
  return NULL;
}

/* A new, full bucket for key, or NULL when memory runs out. */
static rl_bucket *rl_insert(rl_stripe *s, int64_t key, int64_t rate, int64_t burst,
                            int64_t now_ms) {
  /* Keep the table at most half full; a failed rebuild is fine while a free
   * slot remains. */
  if ((s->count + 1) * 2 > s->cap && !rl_rebuild(s, now_ms, 1) && s->count + 1 >= s->cap)
    return NULL;
  rl_bucket b = {.key = key, .last_ms = now_ms, .tokens = burst, .rate = rate, .burst = burst};
  return rl_place(s, &b);
}

/* Milliseconds until a bucket short of one token (tokens < RL_ONE) has one. */
static int64_t rl_wait_ms(int64_t tokens, int64_t rate) {
  return (RL_ONE - tokens + rate - 1) / rate;
}

/* rate_per_s in bucket units per millisecond: at least 1 (0.001 tokens a
 * second), at most RL_MAX_RATE tokens a second. */
static int64_t rl_rate_units(double rate_per_s) {
  if (rate_per_s > RL_MAX_RATE) rate_per_s = RL_MAX_RATE;
  int64_t r = llround(rate_per_s * (RL_ONE / 1000));
  return r < 1 ? 1 : r;
}

static int64_t rl_burst_units(double burst) {
  if (!(burst >= 1)) return RL_ONE; /* NaN too */
  if (burst > RL_MAX_BURST) burst = RL_MAX_BURST;
  return llround(burst * RL_ONE);
}

bool ratelimit_take(ratelimit *rl, int64_t key, double rate_per_s, double burst, int64_t now_ms,
                    int64_t *retry_after_ms) {
  if (retry_after_ms) *retry_after_ms = 0;
  if (!(rate_per_s > 0)) return true; /* NaN counts as unlimited too */
  int64_t rate = rl_rate_units(rate_per_s);
  int64_t full = rl_burst_units(burst);
  rl_stripe *s = &rl->stripes[rl_hash(key) & (RL_STRIPES - 1)];
  pthread_mutex_lock(&s->lock);
  rl_sweep_some(s, now_ms); /* before the look-up: it may move or drop entries */
  rl_bucket *b = rl_find(s, key);
  if (!b) b = rl_insert(s, key, rate, full, now_ms);
  bool ok = true;
  if (b) {
    b->tokens = rl_tokens_at(b, now_ms); /* refilled at the rate in force so far */
    if (now_ms > b->last_ms) b->last_ms = now_ms;
    b->rate = rate;
    b->burst = full;
    if (b->tokens > full) b->tokens = full;
    ok = b->tokens >= RL_ONE;
    if (ok)
      b->tokens -= RL_ONE;
    else if (retry_after_ms)
      *retry_after_ms = rl_wait_ms(b->tokens, rate);
  }
  pthread_mutex_unlock(&s->lock);
  return ok;
}

void ratelimit_sweep(ratelimit *rl, int64_t now_ms) {
  for (unsigned i = 0; i < RL_STRIPES; i++) {
    rl_stripe *s = &rl->stripes[i];
    pthread_mutex_lock(&s->lock);
    if (s->cap) rl_rebuild(s, now_ms, 0);
    pthread_mutex_unlock(&s->lock);
  }
}

size_t ratelimit_size(ratelimit *rl, size_t *slots) {
  size_t n = 0, cap = 0;
  for (unsigned i = 0; i < RL_STRIPES; i++) {
    rl_stripe *s = &rl->stripes[i];
    pthread_mutex_lock(&s->lock);
    n += s->count;
    cap += s->cap;
    pthread_mutex_unlock(&s->lock);
  }
  if (slots) *slots = cap;
  return n;
}
