/* ratelimit.h - token buckets keyed by an int64 (an API key id), shared by threads.
 *
 * Each key has a bucket of at most `burst` tokens that refills at
 * `rate_per_s` tokens per second; a request takes one token. Buckets start
 * full. The caller passes the clock (monotonic milliseconds), which keeps
 * tests free of sleeps and lets a caller reuse a time it already read.
 *
 * Memory: a full bucket behaves exactly like one never created, so buckets
 * that have refilled are dropped lazily: each take checks a few slots of its
 * lock stripe, and a table about to grow first drops all of them and is then
 * sized to 4-8 slots per bucket that is still refilling; a table whose slots
 * are less than 1/8 used shrinks. Under traffic, memory therefore follows the
 * keys that took a token within their refill time (burst / rate seconds):
 * 40 bytes a slot, at most about 8 slots (~320 bytes) per such key, plus a
 * 16-slot table per stripe (64 stripes, ~40 KiB). Millions of keys seen over
 * time cost nothing once they have refilled. A stripe whose traffic stopped
 * keeps its last table until ratelimit_sweep is called; calling it now and
 * then bounds that too. */
#ifndef IMGATE_RATELIMIT_H
#define IMGATE_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ratelimit ratelimit;

/* A limiter with no buckets, or NULL when memory runs out. */
ratelimit *ratelimit_create(void);
/* Frees the limiter and every bucket; no thread may be using it. */
void ratelimit_destroy(ratelimit *rl);

/* Takes one token from key's bucket at time now_ms. Returns true when a token
 * was taken. Returns false when the bucket is empty, with *retry_after_ms
 * (if not NULL) set to the milliseconds until one token is back, at least 1;
 * it is set to 0 on success.
 * rate_per_s <= 0 means unlimited: always true, nothing is stored. Rates
 * are kept to a thousandth of a token per second (the slowest rate is 0.001
 * per second; at most 10^9 per second); a burst below 1 counts as 1 (at most
 * 10^12). A changed rate or burst applies from this call on
 * (tokens above a lowered burst are dropped). Time that goes backwards (two
 * threads reading the clock in one order and arriving in the other) adds no
 * tokens. If memory for a new bucket cannot be had, the request is let
 * through: the limiter protects capacity, it never refuses on its own
 * failure. Safe to call from any number of threads. */
bool ratelimit_take(ratelimit *rl, int64_t key, double rate_per_s, double burst, int64_t now_ms,
                    int64_t *retry_after_ms);

/* Drops every bucket that is full again at now_ms and shrinks the tables to
 * fit. Optional: a periodic call returns the memory of stripes that see no
 * traffic any more. */
void ratelimit_sweep(ratelimit *rl, int64_t now_ms);

/* Buckets stored right now (full ones not yet dropped included); if slots is
 * not NULL, it receives the table slots allocated, a measure of memory. */
size_t ratelimit_size(ratelimit *rl, size_t *slots);

#endif
