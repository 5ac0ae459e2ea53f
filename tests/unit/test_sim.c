/* test_sim.c - the simulated provider: sizes, "auto" from an input image, markers,
 * invalid requests, many concurrent calls, the delay, destroy with calls pending,
 * and cancel (waiting calls, ended ones, unknown ones, and racing the answer).
 * Completions are awaited on a condition variable, never by sleeping. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <png.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/catalog.h"
#include "upstream/provider.h"
#include "upstream/simpng.h"
#include "util/timeutil.h"

#define WAIT_LIMIT_MS 60000 /* only reached when something is broken */

typedef struct waiter {
  pthread_mutex_t lock;
  pthread_cond_t cond; /* CLOCK_MONOTONIC */
  int completed;
} waiter;

typedef struct slot {
  waiter *w;
  atomic_int hits;
  provider_outcome *outcome; /* the first outcome received */
  int64_t at_ms;             /* time_mono_ms() when done() ran */
} slot;

static void waiter_init(waiter *w) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  assert_int_equal(pthread_cond_init(&w->cond, &attr), 0);
  pthread_condattr_destroy(&attr);
  assert_int_equal(pthread_mutex_init(&w->lock, NULL), 0);
  w->completed = 0;
}

static void waiter_destroy(waiter *w) {
  pthread_cond_destroy(&w->cond);
  pthread_mutex_destroy(&w->lock);
}

/* Waits until n calls completed; false if that takes unreasonably long. */
static bool waiter_wait(waiter *w, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += WAIT_LIMIT_MS / 1000;
  pthread_mutex_lock(&w->lock);
  int rc = 0;
  while (w->completed < n && rc == 0) rc = pthread_cond_timedwait(&w->cond, &w->lock, &ts);
  bool ok = w->completed >= n;
  pthread_mutex_unlock(&w->lock);
  return ok;
}

static int waiter_count(waiter *w) {
  pthread_mutex_lock(&w->lock);
  int n = w->completed;
  pthread_mutex_unlock(&w->lock);
  return n;
}

static void on_done(void *ctx, provider_outcome *o) {
  slot *s = ctx;
  int64_t now = time_mono_ms();
  if (atomic_fetch_add(&s->hits, 1) == 0) {
    s->outcome = o;
    s->at_ms = now;
  } else {
    provider_outcome_free(o);
  }
  pthread_mutex_lock(&s->w->lock);
  s->w->completed++;
  pthread_cond_broadcast(&s->w->cond);
  pthread_mutex_unlock(&s->w->lock);
}

static void slot_init(slot *s, waiter *w) {
  s->w = w;
  atomic_init(&s->hits, 0);
  s->outcome = NULL;
  s->at_ms = 0;
}

static provider *make_sim(int delay_ms, int threads) {
  sim_config cfg = {.delay_ms = delay_ms,
                    .fail_marker = "[fail]",
                    .moderate_marker = "[moderate]",
                    .render_threads = threads};
  provider *p = sim_provider_create(&cfg);
  assert_non_null(p);
  return p;
}

static provider_request make_req(const char *model, const char *prompt, const char *ratio,
                                 const char *res, int quantity) {
  provider_request r = {.task_id = "t",
                        .model = model,
                        .upstream_model = "x",
                        .prompt = prompt,
                        .aspect_ratio = ratio,
                        .resolution = res,
                        .quantity = quantity};
  return r;
}

static void decoded_size(const provider_image *img, int *w, int *h) {
  png_image pi;
  memset(&pi, 0, sizeof pi);
  pi.version = PNG_IMAGE_VERSION;
  assert_true(png_image_begin_read_from_memory(&pi, img->data, img->len));
  pi.format = PNG_FORMAT_RGB;
  uint8_t *px = malloc(PNG_IMAGE_SIZE(pi));
  assert_non_null(px);
  assert_true(png_image_finish_read(&pi, NULL, px, 0, NULL));
  free(px);
  *w = (int)pi.width;
  *h = (int)pi.height;
}

/* Starts one call, waits for it, and returns its outcome (caller frees). */
static provider_outcome *run_one(provider *p, const provider_request *r, int64_t *elapsed) {
  waiter w;
  waiter_init(&w);
  slot s;
  slot_init(&s, &w);
  int64_t t0 = time_mono_ms();
  assert_int_equal(p->ops->start(p, r, on_done, &s), 0);
  assert_true(waiter_wait(&w, 1));
  if (elapsed) *elapsed = s.at_ms - t0;
  assert_int_equal(atomic_load(&s.hits), 1);
  waiter_destroy(&w);
  assert_non_null(s.outcome);
  return s.outcome;
}

static void test_identity(void **state) {
  (void)state;
  provider *p = make_sim(0, 0);
  assert_string_equal(p->ops->kind, "sim");
  assert_string_equal(p->name, "sim");
  provider_request r = make_req("nano-banana", "x", "1:1", "1K", 1);
  assert_int_equal(p->ops->start(p, &r, NULL, NULL), -1);
  p->ops->destroy(p);
  assert_null(sim_provider_create(NULL));
}

static void test_ok_exact_size(void **state) {
  (void)state;
  provider *p = make_sim(50, 2);
  provider_request r = make_req("nano-banana-2", "a harbour at night", "16:9", "2K", 1);
  int64_t elapsed = 0;
  provider_outcome *o = run_one(p, &r, &elapsed);
  assert_true(elapsed >= 50);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->n_images, 1);
  assert_string_equal(o->images[0].mime, "image/png");
  assert_int_equal(o->images[0].width, 2752);
  assert_int_equal(o->images[0].height, 1536);
  int w = 0, h = 0;
  decoded_size(&o->images[0], &w, &h);
  assert_int_equal(w, 2752);
  assert_int_equal(h, 1536);
  provider_outcome_free(o);
  p->ops->destroy(p);
}

static void test_quantity(void **state) {
  (void)state;
  provider *p = make_sim(0, 2);
  const char *prompt = "three kittens";
  provider_request r = make_req("nano-banana-2", prompt, "1:1", "512", 3);
  provider_outcome *o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->n_images, 3);
  /* The first is what a single call would give; the others differ from it. */
  uint8_t *single = NULL;
  size_t single_len = 0;
  assert_true(simpng_render(prompt, 512, 512, &single, &single_len));
  assert_int_equal(o->images[0].len, single_len);
  assert_memory_equal(o->images[0].data, single, single_len);
  free(single);
  for (size_t i = 1; i < 3; i++) {
    int w = 0, h = 0;
    decoded_size(&o->images[i], &w, &h);
    assert_int_equal(w, 512);
    assert_int_equal(h, 512);
    assert_true(o->images[i].len != o->images[0].len ||
                memcmp(o->images[i].data, o->images[0].data, o->images[0].len) != 0);
  }
  provider_outcome_free(o);
  p->ops->destroy(p);
}

static void test_auto_follows_input(void **state) {
  (void)state;
  provider *p = make_sim(50, 2);
  uint8_t *ref = NULL;
  size_t ref_len = 0;
  assert_true(simpng_render("portrait reference", 1080, 1920, &ref, &ref_len));
  provider_input in = {.data = ref, .len = ref_len, .mime = "image/png"};
  char *prompt = strdup("make it blue");
  assert_non_null(prompt);
  provider_request r = make_req("nano-banana-2", prompt, "auto", "1K", 1);
  r.inputs = &in;
  r.n_inputs = 1;

  waiter w;
  waiter_init(&w);
  slot s;
  slot_init(&s, &w);
  assert_int_equal(p->ops->start(p, &r, on_done, &s), 0);
  /* The request is only valid during start(): scribble over it and free it. */
  memset(ref, 0, ref_len);
  free(ref);
  memset(prompt, 'x', strlen(prompt));
  free(prompt);
  assert_true(waiter_wait(&w, 1));

  int want_w = 0, want_h = 0;
  assert_true(catalog_pixel_size(catalog_find("nano-banana-2"), "9:16", "1K", &want_w, &want_h));
  assert_int_equal(want_w, 768);
  assert_int_equal(want_h, 1376);
  provider_outcome *o = s.outcome;
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->n_images, 1);
  int dw = 0, dh = 0;
  decoded_size(&o->images[0], &dw, &dh);
  assert_int_equal(dw, want_w);
  assert_int_equal(dh, want_h);
  /* Still the prompt as given, not what it was overwritten with later. */
  uint8_t *expect = NULL;
  size_t expect_len = 0;
  assert_true(simpng_render("make it blue", want_w, want_h, &expect, &expect_len));
  assert_int_equal(o->images[0].len, expect_len);
  assert_memory_equal(o->images[0].data, expect, expect_len);
  free(expect);
  provider_outcome_free(o);
  waiter_destroy(&w);
  p->ops->destroy(p);
}

static void test_auto_without_input(void **state) {
  (void)state;
  provider *p = make_sim(0, 1);
  provider_request r = make_req("nano-banana", "square please", NULL, NULL, 1);
  provider_outcome *o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->images[0].width, 1024);
  assert_int_equal(o->images[0].height, 1024);
  provider_outcome_free(o);
  p->ops->destroy(p);
}

static void test_markers(void **state) {
  (void)state;
  provider *p = make_sim(50, 2);
  provider_request r = make_req("nano-banana", "a cat [moderate] please", "1:1", "1K", 1);
  provider_outcome *o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_MODERATED);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, "content_moderated");
  assert_string_equal(o->error_message, "sim: prompt matched the moderation marker");
  assert_int_equal(o->n_images, 0);
  assert_null(o->images);
  provider_outcome_free(o);

  r = make_req("nano-banana", "[fail] a cat", "1:1", "1K", 2);
  o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, "upstream_error");
  assert_string_equal(o->error_message, "sim: prompt matched the failure marker");
  assert_int_equal(o->n_images, 0);
  provider_outcome_free(o);
  p->ops->destroy(p);
}

static void test_markers_off(void **state) {
  (void)state;
  sim_config cfg = {.delay_ms = 0, .fail_marker = "", .moderate_marker = NULL};
  provider *p = sim_provider_create(&cfg);
  assert_non_null(p);
  provider_request r = make_req("gpt-image-1", "[fail] [moderate]", "3:2", "1K", 1);
  provider_outcome *o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->images[0].width, 1536);
  assert_int_equal(o->images[0].height, 1024);
  provider_outcome_free(o);
  p->ops->destroy(p);
}

static void expect_invalid(provider *p, provider_request r) {
  provider_outcome *o = run_one(p, &r, NULL);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, "invalid_request");
  assert_true(strncmp(o->error_message, "sim: ", 5) == 0);
  assert_int_equal(o->n_images, 0);
  provider_outcome_free(o);
}

static void test_invalid_requests(void **state) {
  (void)state;
  provider *p = make_sim(50, 1);
  expect_invalid(p, make_req("nano-banana", "x", "1:1", "4K", 1));
  expect_invalid(p, make_req("nano-banana", "x", "1:8", "1K", 1));
  expect_invalid(p, make_req("gpt-image-1", "x", "16:9", "1K", 1));
  expect_invalid(p, make_req("no-such-model", "x", "1:1", "1K", 1));
  expect_invalid(p, make_req(NULL, "x", "1:1", "1K", 1));
  expect_invalid(p, make_req("nano-banana-2", "x", "1:1", "1K", 0));
  expect_invalid(p, make_req("nano-banana-2", "x", "1:1", "1K", 11));
  p->ops->destroy(p);
}

#define N_CONCURRENT 200

static void test_many_concurrent(void **state) {
  (void)state;
  provider *p = make_sim(50, 4);
  waiter w;
  waiter_init(&w);
  slot *slots = calloc(N_CONCURRENT, sizeof *slots);
  assert_non_null(slots);
  int64_t t0 = time_mono_ms();
  for (int i = 0; i < N_CONCURRENT; i++) {
    slot_init(&slots[i], &w);
    char prompt[32];
    snprintf(prompt, sizeof prompt, "call %d", i);
    provider_request r = make_req("nano-banana-2", prompt, i % 2 ? "1:4" : "1:1", "512", 1);
    assert_int_equal(p->ops->start(p, &r, on_done, &slots[i]), 0);
  }
  assert_true(waiter_wait(&w, N_CONCURRENT));
  /* After destroy() no thread is left that could call done() again. */
  p->ops->destroy(p);
  assert_int_equal(waiter_count(&w), N_CONCURRENT);
  for (int i = 0; i < N_CONCURRENT; i++) {
    assert_int_equal(atomic_load(&slots[i].hits), 1);
    assert_true(slots[i].at_ms - t0 >= 50);
    provider_outcome *o = slots[i].outcome;
    assert_int_equal(o->status, PROVIDER_OK);
    assert_int_equal(o->n_images, 1);
    assert_int_equal(o->images[0].width, i % 2 ? 256 : 512);
    assert_int_equal(o->images[0].height, i % 2 ? 1024 : 512);
    provider_outcome_free(o);
  }
  free(slots);
  waiter_destroy(&w);
}

static void test_destroy_with_pending(void **state) {
  (void)state;
  provider *p = make_sim(10000, 2);
  waiter w;
  waiter_init(&w);
  slot slots[50];
  for (int i = 0; i < 50; i++) {
    slot_init(&slots[i], &w);
    provider_request r = make_req("nano-banana-pro", "never drawn", "16:9", "4K", 2);
    assert_int_equal(p->ops->start(p, &r, on_done, &slots[i]), 0);
  }
  int64_t t0 = time_mono_ms();
  p->ops->destroy(p);
  int64_t took = time_mono_ms() - t0;
  assert_true(took < 2000); /* far below the 10 s delay: the timer was woken, not waited out */
  assert_int_equal(waiter_count(&w), 0);
  for (int i = 0; i < 50; i++) assert_int_equal(atomic_load(&slots[i].hits), 0);
  waiter_destroy(&w);
}

static void test_not_before_delay(void **state) {
  (void)state;
  const int delay = 200;
  provider *p = make_sim(delay, 2);
  waiter w;
  waiter_init(&w);
  slot slots[5];
  int64_t t0[5];
  for (int i = 0; i < 5; i++) {
    slot_init(&slots[i], &w);
    provider_request r = make_req("nano-banana", "patience", "1:1", "1K", 1);
    t0[i] = time_mono_ms();
    assert_int_equal(p->ops->start(p, &r, on_done, &slots[i]), 0);
  }
  assert_true(waiter_wait(&w, 5));
  for (int i = 0; i < 5; i++) {
    assert_true(slots[i].at_ms - t0[i] >= delay);
    provider_outcome_free(slots[i].outcome);
  }
  waiter_destroy(&w);
  p->ops->destroy(p);
}

static void assert_canceled(const provider_outcome *o) {
  assert_non_null(o);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_int_equal(o->error_class, PROVIDER_ERR_CANCELED);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, PROVIDER_CANCELED_CODE);
  assert_int_equal(o->n_images, 0);
  assert_null(o->images);
}

/* Waiting calls taken out of the middle of the delay heap answer at once,
 * canceled; the others keep their place and their time. */
static void test_cancel_waiting(void **state) {
  (void)state;
  enum { N = 40 };
  const int delay = 400;
  provider *p = make_sim(delay, 2);
  waiter w;
  waiter_init(&w);
  slot slots[N], never;
  int64_t t0[N];
  slot_init(&never, &w);
  for (int i = 0; i < N; i++) {
    slot_init(&slots[i], &w);
    provider_request r = make_req("nano-banana-2", "wait for it", "1:1", "512", 1);
    t0[i] = time_mono_ms();
    assert_int_equal(p->ops->start(p, &r, on_done, &slots[i]), 0);
  }
  int canceled = 0;
  int64_t c0 = time_mono_ms();
  for (int i = N - 1; i >= 0; i -= 3) { /* from the back, so the heap must reorder */
    p->ops->cancel(p, &slots[i]);
    p->ops->cancel(p, &slots[i]); /* twice: still one answer */
    canceled++;
  }
  p->ops->cancel(p, &never); /* never started: nothing */
  assert_true(waiter_wait(&w, canceled));
  for (int i = N - 1; i >= 0; i -= 3) {
    assert_int_equal(atomic_load(&slots[i].hits), 1);
    assert_canceled(slots[i].outcome);
    /* Well before the delay: they did not wait their turn. Only a loaded
     * machine could make this slow, and then the test says so. */
    assert_true(slots[i].at_ms - c0 < delay);
    provider_outcome_free(slots[i].outcome);
    slots[i].outcome = NULL;
  }
  assert_true(waiter_wait(&w, N));
  for (int i = 0; i < N; i++) {
    if ((N - 1 - i) % 3 == 0) continue;
    assert_int_equal(atomic_load(&slots[i].hits), 1);
    assert_int_equal(slots[i].outcome->status, PROVIDER_OK);
    assert_true(slots[i].at_ms - t0[i] >= delay); /* the heap still gives the earliest first */
    p->ops->cancel(p, &slots[i]); /* ended: nothing */
    provider_outcome_free(slots[i].outcome);
  }
  p->ops->destroy(p);
  assert_int_equal(waiter_count(&w), N);
  assert_int_equal(atomic_load(&never.hits), 0);
  for (int i = 0; i < N; i++) assert_int_equal(atomic_load(&slots[i].hits), 1);
  waiter_destroy(&w);
}

/* A call that has answered is forgotten: a later cancel with its ctx does
 * nothing, even while another call is in flight. */
static void test_cancel_after_done(void **state) {
  (void)state;
  provider *p = make_sim(0, 1);
  waiter w;
  waiter_init(&w);
  slot first, second;
  slot_init(&first, &w);
  slot_init(&second, &w);
  provider_request r = make_req("nano-banana-2", "quick", "1:1", "512", 1);
  assert_int_equal(p->ops->start(p, &r, on_done, &first), 0);
  assert_true(waiter_wait(&w, 1));
  p->ops->cancel(p, &first);
  assert_int_equal(p->ops->start(p, &r, on_done, &second), 0);
  p->ops->cancel(p, &first);
  /* One render thread answers in order: once second is in, anything the
   * cancels might have queued for first would have come before it. */
  assert_true(waiter_wait(&w, 2));
  assert_int_equal(atomic_load(&first.hits), 1);
  assert_int_equal(atomic_load(&second.hits), 1);
  assert_int_equal(first.outcome->status, PROVIDER_OK);
  assert_int_equal(second.outcome->status, PROVIDER_OK);
  provider_outcome_free(first.outcome);
  provider_outcome_free(second.outcome);
  p->ops->destroy(p);
  assert_int_equal(waiter_count(&w), 2);
  waiter_destroy(&w);
}

/* Cancels from another thread while calls wait for their delay, wait for a
 * render thread, are being drawn, or have answered: each call answers
 * exactly once, drawn or canceled, never both. */
#define RACE_CALLS 300

typedef struct sim_racer {
  provider *p;
  slot *slots;
  atomic_int started;
} sim_racer;

/* Polls until cond holds (or the test's limit passes). */
#define POLL_UNTIL(cond)                                                   \
  do {                                                                     \
    int64_t until_ = time_mono_ms() + WAIT_LIMIT_MS;                       \
    while (!(cond) && time_mono_ms() < until_) sched_yield();              \
  } while (0)

/* The early thread cancels every third call as soon as it has started; the
 * late one the others, paced by the answers (calls are drawn about in start
 * order): once the call before has answered, when this one is likely queued
 * or being drawn, and once this one has answered. */
typedef struct sim_canceller {
  sim_racer *r;
  bool early;
} sim_canceller;

static void *cancel_behind(void *arg) {
  sim_canceller *c = arg;
  sim_racer *r = c->r;
  for (int i = 0; i < RACE_CALLS; i++) {
    if (c->early != (i % 3 == 0)) continue;
    POLL_UNTIL(atomic_load(&r->started) > i); /* a call must be started to be canceled */
    if (i % 3 == 1) POLL_UNTIL(atomic_load(&r->slots[i - 1].hits) > 0); /* i is next, or drawn */
    if (i % 3 == 2) POLL_UNTIL(atomic_load(&r->slots[i].hits) > 0);     /* i has answered */
    r->p->ops->cancel(r->p, &r->slots[i]);
  }
  return NULL;
}

static void test_cancel_races_answers(void **state) {
  (void)state;
  provider *p = make_sim(1, 2);
  waiter w;
  waiter_init(&w);
  slot *slots = calloc(RACE_CALLS, sizeof *slots);
  assert_non_null(slots);
  sim_racer r = {.p = p, .slots = slots};
  atomic_init(&r.started, 0);
  for (int i = 0; i < RACE_CALLS; i++) slot_init(&slots[i], &w);
  sim_canceller early = {&r, true}, late = {&r, false};
  pthread_t cancellers[2];
  assert_int_equal(pthread_create(&cancellers[0], NULL, cancel_behind, &early), 0);
  assert_int_equal(pthread_create(&cancellers[1], NULL, cancel_behind, &late), 0);
  for (int i = 0; i < RACE_CALLS; i++) {
    provider_request req = make_req("nano-banana-2", "race", "1:1", i % 2 ? "512" : "1K", 1);
    assert_int_equal(p->ops->start(p, &req, on_done, &slots[i]), 0);
    atomic_store(&r.started, i + 1);
  }
  for (int t = 0; t < 2; t++) pthread_join(cancellers[t], NULL);
  assert_true(waiter_wait(&w, RACE_CALLS));
  p->ops->destroy(p);
  assert_int_equal(waiter_count(&w), RACE_CALLS);
  int drawn = 0, canceled = 0;
  for (int i = 0; i < RACE_CALLS; i++) {
    assert_int_equal(atomic_load(&slots[i].hits), 1);
    provider_outcome *o = slots[i].outcome;
    if (o->status == PROVIDER_OK) {
      assert_int_equal(o->n_images, 1);
      drawn++;
    } else {
      assert_canceled(o);
      canceled++;
    }
    provider_outcome_free(o);
  }
  print_message("sim cancel race: %d drawn, %d canceled\n", drawn, canceled);
  free(slots);
  waiter_destroy(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_identity),          cmocka_unit_test(test_ok_exact_size),
      cmocka_unit_test(test_quantity),          cmocka_unit_test(test_auto_follows_input),
      cmocka_unit_test(test_auto_without_input), cmocka_unit_test(test_markers),
      cmocka_unit_test(test_markers_off),       cmocka_unit_test(test_invalid_requests),
      cmocka_unit_test(test_many_concurrent),   cmocka_unit_test(test_destroy_with_pending),
      cmocka_unit_test(test_not_before_delay),  cmocka_unit_test(test_cancel_waiting),
      cmocka_unit_test(test_cancel_after_done), cmocka_unit_test(test_cancel_races_answers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
