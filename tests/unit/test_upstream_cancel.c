/* test_upstream_cancel.c - cancel() of the HTTP providers over the real curl
 * loop: calls stuck on a local peer that accepts and never answers are
 * stopped promptly, canceled, with their connections closed; a cancel after
 * the end, with an unknown ctx, or from inside done() does nothing. (The
 * glue's cases one by one are in test_gemini.c and test_openai.c, over a
 * stand-in loop; sim's in test_sim.c.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "peer_testutil.h"
#include "upstream/curlloop.h"
#include "upstream/provider.h"
#include "util/log.h"
#include "util/timeutil.h"

/* Far longer than any wait below: only a cancel ends these calls in time. */
#define CALL_TIMEOUT_MS 60000
/* A cancel must end a call well inside this, not at the call's timeout. */
#define PROMPT_MS 5000

typedef struct fixture {
  raw_peer silent;
  int closed;
} fixture;

static int group_setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || !raw_start(&f->silent, NULL, 0)) return -1;
  f->closed = closed_port();
  if (f->closed < 0) return -1;
  *state = f;
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  raw_stop(&f->silent);
  free(f);
  return 0;
}

/* ---- what done() received, from the provider's threads ---- */

typedef struct rec {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  provider_outcome *outcome; /* the first */
  provider *cancel_in_done;  /* when set, done() cancels its own ctx on this provider */
} rec;

static void rec_init(rec *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
}

static void rec_free(rec *r) {
  provider_outcome_free(r->outcome);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

static int rec_calls(rec *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->calls;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static void rec_done(void *ctx, provider_outcome *o) {
  rec *r = ctx;
  if (r->cancel_in_done) r->cancel_in_done->ops->cancel(r->cancel_in_done, r);
  pthread_mutex_lock(&r->mu);
  if (r->calls++ == 0)
    r->outcome = o;
  else
    provider_outcome_free(o);
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static bool rec_wait(rec *r, int n) { return wait_count(&r->mu, &r->cv, &r->calls, n); }

/* ---- helpers ---- */

static curlloop *new_loop(void) {
  curlloop_config cfg = {.connect_timeout_ms = 5000};
  curlloop *l = curlloop_create(&cfg);
  assert_non_null(l);
  return l;
}

static provider *new_provider(const char *kind, int port, curlloop *l) {
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  provider_instance_config cfg = {.name = kind,
                                  .kind = kind,
                                  .base_url = url,
                                  .api_key = "test-key",
                                  .timeout_ms = CALL_TIMEOUT_MS,
                                  .connect_timeout_ms = 5000};
  provider *p = strcmp(kind, "gemini") == 0 ? gemini_provider_create(&cfg, l)
                                              : openai_provider_create(&cfg, l);
  assert_non_null(p);
  assert_non_null(p->ops->cancel);
  return p;
}

static provider_request request(const char *kind, int quantity) {
  bool gemini = strcmp(kind, "gemini") == 0;
  return (provider_request){
      .task_id = "t1",
      .model = gemini ? "nano-banana-pro" : "gpt-image-1",
      .upstream_model = gemini ? "gemini-3-pro-image-preview" : "gpt-image-1",
      .prompt = "a quiet harbour",
      .aspect_ratio = "1:1",
      .resolution = "1K",
      .quantity = quantity,
  };
}

/* Whether the peer's connection number index gets closed by the client: its
 * request bytes are read, then end of file (or a reset). */
static bool silent_conn_closed(raw_peer *p, int index) {
  pthread_mutex_lock(&p->mu);
  int fd = index < p->n_held ? p->held[index] : -1;
  pthread_mutex_unlock(&p->mu);
  if (fd < 0) return false;
  int64_t until = time_mono_ms() + WAIT_LIMIT_MS;
  char scratch[4096];
  while (time_mono_ms() < until) {
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    ssize_t n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
  return false;
}

static void assert_canceled(const provider_outcome *o, const char *kind) {
  assert_non_null(o);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_int_equal(o->error_class, PROVIDER_ERR_CANCELED);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, PROVIDER_CANCELED_CODE);
  assert_int_equal(o->http_status, 0);
  assert_int_equal(o->n_images, 0);
  assert_memory_equal(o->error_message, kind, strlen(kind));
}

/* ---- tests ---- */

/* Calls waiting on a silent upstream: cancel ends them at once, canceled,
 * and gives their connections up. */
static void cancel_on_the_wire(fixture *f, const char *kind, int quantity) {
  curlloop *l = new_loop();
  provider *p = new_provider(kind, f->silent.port, l);
  provider_request req = request(kind, quantity);
  /* Gemini makes one call per image, OpenAI one for all. */
  int conns = strcmp(kind, "gemini") == 0 ? quantity : 1;
  rec r;
  rec_init(&r);
  int before = raw_accepted(&f->silent);
  assert_int_equal(p->ops->start(p, &req, rec_done, &r), 0);
  assert_true(raw_wait_accepted(&f->silent, before + conns)); /* on the wire, unanswered */
  assert_int_equal(curlloop_in_flight(l), (size_t)conns);
  assert_int_equal(rec_calls(&r), 0);

  int64_t t0 = time_mono_ms();
  p->ops->cancel(p, &r);
  assert_true(rec_wait(&r, 1));
  assert_true(time_mono_ms() - t0 < PROMPT_MS);
  assert_canceled(r.outcome, kind);
  assert_int_equal(curlloop_in_flight(l), 0);
  for (int i = 0; i < conns; i++) assert_true(silent_conn_closed(&f->silent, before + i));

  /* Over: cancelling again asks the loop for nothing, and no second done comes. */
  p->ops->cancel(p, &r);
  curlloop_destroy(l);
  assert_int_equal(rec_calls(&r), 1);
  p->ops->destroy(p);
  rec_free(&r);
}

static void test_gemini_cancel_on_the_wire(void **state) {
  cancel_on_the_wire(*state, "gemini", 3);
}

static void test_openai_cancel_on_the_wire(void **state) {
  cancel_on_the_wire(*state, "openai", 2);
}

/* A call that has ended, a ctx that started nothing, and a cancel from inside
 * done(): none of them touches the call that is still in flight. */
static void cancel_leaves_others_alone(fixture *f, const char *kind) {
  curlloop *l = new_loop();
  provider *refused = new_provider(kind, f->closed, l);
  provider *stuck = new_provider(kind, f->silent.port, l);
  provider_request req = request(kind, 1);
  rec ended, waiting, barrier, unknown;
  rec_init(&ended);
  rec_init(&waiting);
  rec_init(&barrier);
  rec_init(&unknown);

  /* Connection refused: it ends by itself, and cancels itself from done(). */
  ended.cancel_in_done = refused;
  assert_int_equal(refused->ops->start(refused, &req, rec_done, &ended), 0);
  assert_true(rec_wait(&ended, 1));
  assert_int_equal(ended.outcome->error_class, PROVIDER_ERR_NETWORK);

  int before = raw_accepted(&f->silent);
  assert_int_equal(stuck->ops->start(stuck, &req, rec_done, &waiting), 0);
  assert_true(raw_wait_accepted(&f->silent, before + 1));
  refused->ops->cancel(refused, &ended);
  stuck->ops->cancel(stuck, &ended);   /* the ended call's ctx, on the other provider */
  stuck->ops->cancel(stuck, &unknown); /* started nothing */
  refused->ops->cancel(refused, &waiting); /* a call of the other provider */
  /* The loop takes requests in order: once a later transfer has come back,
   * any stop request made above has been dealt with. */
  assert_int_equal(refused->ops->start(refused, &req, rec_done, &barrier), 0);
  assert_true(rec_wait(&barrier, 1));
  assert_int_equal(rec_calls(&waiting), 0);
  assert_int_equal(curlloop_in_flight(l), 1);
  assert_int_equal(rec_calls(&ended), 1);
  assert_int_equal(rec_calls(&unknown), 0);

  stuck->ops->cancel(stuck, &waiting);
  assert_true(rec_wait(&waiting, 1));
  assert_canceled(waiting.outcome, kind);
  curlloop_destroy(l);
  assert_int_equal(rec_calls(&ended), 1);
  assert_int_equal(rec_calls(&waiting), 1);
  refused->ops->destroy(refused);
  stuck->ops->destroy(stuck);
  rec_free(&ended);
  rec_free(&waiting);
  rec_free(&barrier);
  rec_free(&unknown);
}

static void test_gemini_cancel_leaves_others_alone(void **state) {
  cancel_leaves_others_alone(*state, "gemini");
}

static void test_openai_cancel_leaves_others_alone(void **state) {
  cancel_leaves_others_alone(*state, "openai");
}

int main(void) {
  log_set_level(LOG_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemini_cancel_on_the_wire),
      cmocka_unit_test(test_openai_cancel_on_the_wire),
      cmocka_unit_test(test_gemini_cancel_leaves_others_alone),
      cmocka_unit_test(test_openai_cancel_leaves_others_alone),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
