/* test_ratelimit.c - token buckets with an injected clock: arithmetic,
 * retry-after, key independence, eviction, and exact counts across threads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>

#include "util/ratelimit.h"

/* Takes from key until refused (at most limit times); returns how many were taken. */
static int drain(ratelimit *rl, int64_t key, double rate, double burst, int64_t now, int limit,
                 int64_t *retry) {
  int n = 0;
  while (n < limit && ratelimit_take(rl, key, rate, burst, now, retry)) n++;
  return n;
}

static void test_unlimited_stores_nothing(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  int64_t retry = 99;
  for (int i = 0; i < 1000; i++) {
    assert_true(ratelimit_take(rl, 7, 0, 1, 0, &retry));
    assert_true(ratelimit_take(rl, 8, -5, 1, 0, NULL));
  }
  assert_int_equal(retry, 0);
  assert_int_equal(ratelimit_size(rl, NULL), 0);
  ratelimit_destroy(rl);
}

static void test_burst_then_rate(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  int64_t retry = 0;
  /* 10 per second, burst 5: a fresh bucket is full. */
  assert_int_equal(drain(rl, 1, 10, 5, 0, 100, &retry), 5);
  assert_int_equal(retry, 100); /* one token every 100 ms */
  assert_false(ratelimit_take(rl, 1, 10, 5, 50, &retry));
  assert_int_equal(retry, 50);
  assert_false(ratelimit_take(rl, 1, 10, 5, 99, &retry));
  assert_int_equal(retry, 1);
  assert_true(ratelimit_take(rl, 1, 10, 5, 100, &retry));
  assert_int_equal(retry, 0);
  assert_false(ratelimit_take(rl, 1, 10, 5, 100, &retry));
  assert_int_equal(retry, 100);
  /* 300 ms later three tokens are back, no more. */
  assert_int_equal(drain(rl, 1, 10, 5, 400, 100, &retry), 3);
  /* Refill never exceeds the burst, however long the pause. */
  assert_int_equal(drain(rl, 1, 10, 5, 1000000, 100, &retry), 5);
  /* A steady client at exactly the rate is never refused. */
  for (int64_t t = 1000100; t < 1010000; t += 100)
    assert_true(ratelimit_take(rl, 1, 10, 5, t, NULL));
  ratelimit_destroy(rl);
}

static void test_retry_after_values(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  int64_t retry = 0;
  /* Half a token per second: two seconds per token. */
  assert_int_equal(drain(rl, 1, 0.5, 1, 0, 10, &retry), 1);
  assert_int_equal(retry, 2000);
  assert_false(ratelimit_take(rl, 1, 0.5, 1, 1500, &retry));
  assert_int_equal(retry, 500);
  /* A million per second refills within a millisecond: never below 1. */
  assert_int_equal(drain(rl, 2, 1e6, 1, 0, 10, &retry), 1);
  assert_int_equal(retry, 1);
  /* 3 per second: 333.33 ms per token rounds up, so retrying then succeeds. */
  assert_int_equal(drain(rl, 3, 3, 1, 0, 10, &retry), 1);
  assert_int_equal(retry, 334);
  assert_false(ratelimit_take(rl, 3, 3, 1, 333, NULL));
  assert_true(ratelimit_take(rl, 3, 3, 1, 334, NULL));
  /* A burst below 1 counts as 1: the key is usable. */
  assert_int_equal(drain(rl, 4, 1, 0.2, 0, 10, &retry), 1);
  assert_int_equal(retry, 1000);
  /* Rates below a thousandth of a token per second count as that. */
  assert_int_equal(drain(rl, 5, 1e-300, 1, 0, 10, &retry), 1);
  assert_int_equal(retry, 1000000);
  /* Fractional bursts keep their fraction: 2.5 tokens, then half a token in 500 ms. */
  assert_int_equal(drain(rl, 6, 1, 2.5, 0, 10, &retry), 2);
  assert_int_equal(retry, 500);
  ratelimit_destroy(rl);
}

static void test_keys_independent(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  assert_int_equal(drain(rl, 100, 1, 3, 0, 10, NULL), 3);
  assert_int_equal(drain(rl, 101, 1, 2, 0, 10, NULL), 2);
  assert_int_equal(drain(rl, -100, 1, 4, 0, 10, NULL), 4);
  assert_int_equal(drain(rl, INT64_MIN, 1, 1, 0, 10, NULL), 1);
  assert_int_equal(drain(rl, INT64_MAX, 1, 1, 0, 10, NULL), 1);
  assert_int_equal(drain(rl, 0, 1, 1, 0, 10, NULL), 1);
  assert_false(ratelimit_take(rl, 100, 1, 3, 0, NULL));
  /* Many keys in the same stripes and probe runs keep separate buckets. */
  for (int64_t k = 1000; k < 6000; k++) assert_int_equal(drain(rl, k, 1, 2, 0, 10, NULL), 2);
  for (int64_t k = 1000; k < 6000; k++) assert_false(ratelimit_take(rl, k, 1, 2, 0, NULL));
  for (int64_t k = 1000; k < 6000; k++) assert_true(ratelimit_take(rl, k, 1, 2, 1000, NULL));
  ratelimit_destroy(rl);
}

static void test_changed_limits_and_clock(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  int64_t retry;
  assert_int_equal(drain(rl, 1, 1, 10, 0, 100, NULL), 10);
  /* Time going backwards adds nothing and does not rewind the bucket. */
  assert_false(ratelimit_take(rl, 1, 1, 10, -5000, &retry));
  assert_false(ratelimit_take(rl, 1, 1, 10, 999, &retry));
  assert_int_equal(retry, 1);
  assert_true(ratelimit_take(rl, 1, 1, 10, 1000, NULL));
  /* A lower burst drops tokens above it at once. */
  assert_int_equal(drain(rl, 2, 1, 10, 0, 3, NULL), 3); /* 7 left */
  assert_int_equal(drain(rl, 2, 1, 2, 0, 100, NULL), 2);
  /* A new rate applies from the next take on. */
  assert_false(ratelimit_take(rl, 2, 10, 2, 0, &retry));
  assert_int_equal(retry, 100);
  ratelimit_destroy(rl);
}

static void test_sweep_evicts_refilled(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  /* 1000 per second, burst 1: empty after one take, full 1 ms later. */
  for (int64_t k = 0; k < 1000; k++) assert_true(ratelimit_take(rl, k, 1000, 1, 0, NULL));
  assert_int_equal(ratelimit_size(rl, NULL), 1000);
  ratelimit_sweep(rl, 0); /* nothing has refilled yet */
  assert_int_equal(ratelimit_size(rl, NULL), 1000);
  for (int64_t k = 0; k < 1000; k++) assert_false(ratelimit_take(rl, k, 1000, 1, 0, NULL));
  size_t slots;
  ratelimit_sweep(rl, 1);
  assert_int_equal(ratelimit_size(rl, &slots), 0);
  assert_int_equal(slots, 0);
  /* An evicted bucket was full, so it comes back exactly as it was. */
  assert_true(ratelimit_take(rl, 5, 1000, 1, 1, NULL));
  assert_false(ratelimit_take(rl, 5, 1000, 1, 1, NULL));
  /* Keys still refilling survive a sweep. */
  assert_true(ratelimit_take(rl, 6, 1, 2, 1, NULL)); /* 1 of 2 left, full at 1001 */
  ratelimit_sweep(rl, 500);
  assert_int_equal(ratelimit_size(rl, NULL), 1);
  assert_int_equal(drain(rl, 6, 1, 2, 500, 10, NULL), 1);
  ratelimit_destroy(rl);
}

static void test_lazy_eviction_bounds_memory(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  /* 200 rounds of 1000 new keys, a second apart: each key has refilled by the
   * next round. Kept forever this would be 200,000 buckets. */
  int64_t key = 0;
  size_t peak_size = 0, peak_slots = 0;
  for (int round = 0; round < 200; round++) {
    for (int i = 0; i < 1000; i++)
      assert_true(ratelimit_take(rl, key++, 1000, 1, (int64_t)round * 1000, NULL));
    size_t slots;
    size_t n = ratelimit_size(rl, &slots);
    if (n > peak_size) peak_size = n;
    if (slots > peak_slots) peak_slots = slots;
  }
  /* One round's keys, 4-8 slots each at most, and the 16-slot floor. */
  assert_true(peak_size <= 8 * 1000 + 64 * 16);
  assert_true(peak_slots <= 8 * 1100 + 64 * 16);

  /* A large crowd that goes quiet: the tables shrink as traffic continues. */
  for (int64_t k = 0; k < 64000; k++) ratelimit_take(rl, 1000000 + k, 1000, 1, 300000, NULL);
  size_t slots;
  ratelimit_size(rl, &slots);
  assert_true(slots >= 128000);
  for (int64_t k = 0; k < 200000; k++)
    ratelimit_take(rl, 2000000 + k % 640, 1000, 1, 400000 + k, NULL);
  assert_true(ratelimit_size(rl, &slots) <= 640);
  assert_true(slots <= 8 * 640 + 64 * 16);
  ratelimit_destroy(rl);
}

typedef struct taker {
  ratelimit *rl;
  int64_t first_key, n_keys;
  int tries_per_key;
  double burst;
  int taken;
} taker;

static void *take_loop(void *arg) {
  taker *t = arg;
  for (int i = 0; i < t->tries_per_key; i++)
    for (int64_t k = 0; k < t->n_keys; k++)
      if (ratelimit_take(t->rl, t->first_key + k, 100, t->burst, 42, NULL)) t->taken++;
  return NULL;
}

/* Threads race with the clock frozen: no token comes back, so the total
 * taken is exactly the burst of each key, whatever the interleaving. */
static int run_takers(ratelimit *rl, int n_threads, int64_t first_key, int64_t keys_each,
                      int64_t key_stride, int tries, double burst) {
  pthread_t threads[8];
  taker t[8];
  for (int i = 0; i < n_threads; i++) {
    t[i] = (taker){rl, first_key + i * key_stride, keys_each, tries, burst, 0};
    assert_int_equal(pthread_create(&threads[i], NULL, take_loop, &t[i]), 0);
  }
  int total = 0;
  for (int i = 0; i < n_threads; i++) {
    pthread_join(threads[i], NULL);
    total += t[i].taken;
  }
  return total;
}

static void test_threads_share_one_key(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  /* Eight threads, 2000 tries each, one key with a burst of 100. */
  assert_int_equal(run_takers(rl, 8, 77, 1, 0, 2000, 100), 100);
  assert_false(ratelimit_take(rl, 77, 100, 100, 42, NULL));
  ratelimit_destroy(rl);
}

static void test_threads_many_keys(void **state) {
  (void)state;
  ratelimit *rl = ratelimit_create();
  /* Overlapping key ranges: every key is fought over by two threads while
   * the tables grow under them. 3 tokens per key, 5 tries per thread. */
  int total = run_takers(rl, 8, 0, 4000, 2000, 5, 3);
  /* Keys 0..17999; those under 2000 and from 16000 on get one thread. */
  assert_int_equal(total, 18000 * 3);
  assert_int_equal(ratelimit_size(rl, NULL), 18000);
  ratelimit_destroy(rl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unlimited_stores_nothing),
      cmocka_unit_test(test_burst_then_rate),
      cmocka_unit_test(test_retry_after_values),
      cmocka_unit_test(test_keys_independent),
      cmocka_unit_test(test_changed_limits_and_clock),
      cmocka_unit_test(test_sweep_evicts_refilled),
      cmocka_unit_test(test_lazy_eviction_bounds_memory),
      cmocka_unit_test(test_threads_share_one_key),
      cmocka_unit_test(test_threads_many_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
