/* test_curlloop.c - the curl loop against real local peers: imgate's own HTTP
 * server for answers, a raw socket that accepts and never answers, and a
 * closed port. Then curlloop_cancel: in flight, after the end, with a stale
 * id whose memory a newer transfer reuses, and racing the end from another
 * thread. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "http/server.h"
#include "peer_testutil.h"
#include "upstream/curlloop.h"
#include "util/log.h"
#include "util/timeutil.h"

#define BIG_SIZE (64 * 1024)
#define MANY_THREADS 4
#define MANY_PER_THREAD 125
#define STUCK 20

/* --- the HTTP peer --- */

static char big_body[BIG_SIZE];

static void h_ok(http_request *req, void *ctx) {
  http_reply_bytes(req, 200, "text/plain", "hello world", 11);
}

static void h_busy(http_request *req, void *ctx) {
  http_reply_header(req, "Retry-After", "7");
  http_reply_header(req, "retry-after-ms", "7000");
  http_reply_bytes(req, 503, "application/json", "{\"error\":\"busy\"}", 16);
}

static void h_big(http_request *req, void *ctx) {
  http_reply_bytes(req, 200, "application/octet-stream", big_body, sizeof big_body);
}

static void h_redir(http_request *req, void *ctx) {
  http_reply_header(req, "Location", "/ok");
  http_reply_header(req, "Retry-After", "99");
  http_reply_empty(req, 302);
}

typedef struct fixture {
  http_router *router;
  http_server *server;
  int port;
  raw_peer silent;
  int closed;
} fixture;

static int group_setup(void **state) {
  memset(big_body, 'b', sizeof big_body);
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  f->router = http_router_new();
  if (!f->router || !http_router_add(f->router, "GET", "/ok", h_ok, NULL) ||
      !http_router_add(f->router, "GET", "/busy", h_busy, NULL) ||
      !http_router_add(f->router, "GET", "/big", h_big, NULL) ||
      !http_router_add(f->router, "GET", "/redir", h_redir, NULL))
    return -1;
  http_server_config cfg = {.listen_host = "127.0.0.1",
                            .listen_port = 0,
                            .threads = 4,
                            .max_body_bytes = 1024,
                            .connection_timeout_s = 60};
  char err[256];
  f->server = http_server_start(&cfg, f->router, err, sizeof err);
  if (!f->server) return -1;
  f->port = http_server_port(f->server);
  if (!raw_start(&f->silent, NULL, 0)) return -1;
  f->closed = closed_port();
  if (f->closed < 0) return -1;
  *state = f;
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  raw_stop(&f->silent);
  http_server_stop(f->server);
  http_router_free(f->router);
  free(f);
  return 0;
}

/* --- what the callbacks record --- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} waiter;

typedef struct outcome {
  waiter *w;
  int calls;
  CURLcode code;
  long status;
  bool truncated, cancelled, aborted, sink_refused;
  pthread_t done_thread;
  size_t body_len;
  char body[64];
  char error[CURL_ERROR_SIZE];
  char content_type[128], retry_after[64], retry_after_ms[32], request_id[128];
  double total_ms;
  long num_connects;
  int resubmit_rc; /* what a curlloop_submit from inside the callback returned */
  curlloop *resubmit_to;
  struct curl_slist *headers;
  curlloop *cancel_via;           /* when set, the callback cancels its own transfer: */
  curlloop_transfer_id cancel_own; /* this id, already ended */
  int cancel_own_rc;
} outcome;

static void waiter_init(waiter *w) {
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->done = 0;
}

static void waiter_free(waiter *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

static bool waiter_wait(waiter *w, int n) { return wait_count(&w->mu, &w->cv, &w->done, n); }

static void record(outcome *o, CURL *easy, curlloop_result *res) {
  o->code = res->code;
  o->status = res->http_status;
  o->truncated = res->body_truncated;
  o->cancelled = res->cancelled;
  o->aborted = res->aborted;
  o->sink_refused = res->sink_refused;
  o->done_thread = pthread_self();
  o->body_len = res->body.len;
  snprintf(o->body, sizeof o->body, "%s", res->body.data ? res->body.data : "");
  snprintf(o->error, sizeof o->error, "%s", res->error);
  snprintf(o->content_type, sizeof o->content_type, "%s", res->content_type);
  snprintf(o->retry_after, sizeof o->retry_after, "%s", res->retry_after);
  snprintf(o->retry_after_ms, sizeof o->retry_after_ms, "%s", res->retry_after_ms);
  snprintf(o->request_id, sizeof o->request_id, "%s", res->request_id);
  o->total_ms = res->total_ms;
  curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &o->num_connects);
}

static void signal_done(outcome *o) {
  pthread_mutex_lock(&o->w->mu);
  o->calls++;
  o->w->done++;
  pthread_cond_broadcast(&o->w->cv);
  pthread_mutex_unlock(&o->w->mu);
}

static void on_done(void *ctx, CURL *easy, curlloop_result *res) {
  outcome *o = ctx;
  record(o, easy, res);
  if (o->cancel_via) o->cancel_own_rc = curlloop_cancel(o->cancel_via, o->cancel_own);
  curlloop *to = o->resubmit_to; /* one shot */
  o->resubmit_to = NULL;
  if (to) {
    CURL *again = curl_easy_init();
    o->resubmit_rc = again ? curlloop_submit(to, again, 100, on_done, o) : -2;
    if (again && o->resubmit_rc != 0) curl_easy_cleanup(again);
  }
  curl_easy_cleanup(easy);
  curl_slist_free_all(o->headers);
  o->headers = NULL;
  signal_done(o);
}

static CURL *easy_to(int port, const char *path, long timeout_ms) {
  CURL *e = curl_easy_init();
  if (!e) return NULL;
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  curl_easy_setopt(e, CURLOPT_URL, url);
  if (timeout_ms > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  return e;
}

static curlloop *new_loop(long max_host) {
  curlloop_config cfg = {.max_total_connections = 0,
                         .max_host_connections = max_host,
                         .connect_timeout_ms = 5000};
  return curlloop_create(&cfg);
}

/* Runs one transfer to completion and records it in o. */
static void run_one(curlloop *l, CURL *e, size_t cap, outcome *o) {
  waiter w;
  waiter_init(&w);
  memset(o, 0, sizeof *o);
  o->w = &w;
  assert_int_equal(curlloop_submit(l, e, cap, on_done, o), 0);
  assert_true(waiter_wait(&w, 1));
  assert_int_equal(o->calls, 1);
  waiter_free(&w);
  o->w = NULL;
}

/* A body sink that records what it got; refuses at piece refuse_at (1-based). */
typedef struct sink_log {
  size_t bytes;
  int pieces;
  int refuse_at;
  bool all_b;         /* every byte was /big's 'b' */
  bool one_thread;    /* every piece came on the same thread */
  pthread_t thread;
} sink_log;

static bool log_piece(void *ctx, const char *data, size_t len) {
  sink_log *g = ctx;
  if (g->pieces == 0) g->thread = pthread_self();
  else if (!pthread_equal(g->thread, pthread_self())) g->one_thread = false;
  g->pieces++;
  g->bytes += len;
  for (size_t i = 0; i < len; i++)
    if (data[i] != 'b') g->all_b = false;
  return g->pieces != g->refuse_at;
}

static void run_one_sink(curlloop *l, CURL *e, size_t cap, sink_log *g, outcome *o) {
  waiter w;
  waiter_init(&w);
  memset(o, 0, sizeof *o);
  o->w = &w;
  g->all_b = g->one_thread = true;
  curlloop_sink sink = {log_piece, g};
  curlloop_transfer_id id = 0;
  assert_int_equal(curlloop_submit_sink(l, e, cap, &sink, on_done, o, &id), 0);
  assert_true(id > 0);
  assert_true(waiter_wait(&w, 1));
  assert_int_equal(o->calls, 1);
  waiter_free(&w);
  o->w = NULL;
}

/* --- tests --- */

static void test_ok_body_and_headers(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  run_one(l, easy_to(f->port, "/ok", 10000), 1000, &o);
  assert_int_equal(o.code, CURLE_OK);
  assert_int_equal(o.status, 200);
  assert_false(o.truncated);
  assert_false(o.cancelled);
  assert_int_equal(o.body_len, 11);
  assert_string_equal(o.body, "hello world");
  assert_string_equal(o.content_type, "text/plain");
  assert_string_equal(o.retry_after, "");
  assert_true(o.total_ms > 0.0);
  assert_int_equal(curlloop_in_flight(l), 0);
  curlloop_destroy(l);
}

static void test_503_headers(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  CURL *e = easy_to(f->port, "/busy", 10000);
  struct curl_slist *h = curl_slist_append(NULL, "X-Request-Id: req-503-test");
  assert_non_null(h);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  run_one(l, e, 1000, &o);
  curl_slist_free_all(h);
  assert_int_equal(o.code, CURLE_OK);
  assert_int_equal(o.status, 503);
  assert_string_equal(o.retry_after, "7");
  assert_string_equal(o.retry_after_ms, "7000");
  assert_string_equal(o.request_id, "req-503-test");
  assert_string_equal(o.content_type, "application/json");
  assert_string_equal(o.body, "{\"error\":\"busy\"}");
  curlloop_destroy(l);
}

static void test_body_cap(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  run_one(l, easy_to(f->port, "/big", 10000), 1000, &o);
  assert_true(o.truncated);
  assert_int_equal(o.code, CURLE_WRITE_ERROR);
  assert_int_equal(o.status, 200);
  assert_int_equal(o.body_len, 1000);
  assert_non_null(strstr(o.error, "larger than 1000"));

  /* Exactly at the cap is not over it. */
  run_one(l, easy_to(f->port, "/big", 10000), BIG_SIZE, &o);
  assert_false(o.truncated);
  assert_int_equal(o.code, CURLE_OK);
  assert_int_equal(o.body_len, BIG_SIZE);

  run_one(l, easy_to(f->port, "/big", 10000), BIG_SIZE - 1, &o);
  assert_true(o.truncated);
  assert_int_equal(o.body_len, BIG_SIZE - 1);
  curlloop_destroy(l);
}

/* A sink gets the body piece by piece on the loop thread; the result holds none of it. */
static void test_sink_gets_the_body(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  sink_log g = {0};
  run_one_sink(l, easy_to(f->port, "/big", 10000), BIG_SIZE, &g, &o);
  assert_int_equal(o.code, CURLE_OK);
  assert_int_equal(o.status, 200);
  assert_false(o.truncated);
  assert_false(o.sink_refused);
  assert_int_equal(o.body_len, 0);
  assert_int_equal(g.bytes, BIG_SIZE);
  assert_true(g.pieces >= 1);
  assert_true(g.all_b);
  assert_true(g.one_thread);
  assert_true(pthread_equal(g.thread, o.done_thread)); /* the loop's thread */

  /* The cap counts what the sink was given: no piece crosses it. */
  g = (sink_log){0};
  run_one_sink(l, easy_to(f->port, "/big", 10000), 1000, &g, &o);
  assert_true(o.truncated);
  assert_int_equal(o.code, CURLE_WRITE_ERROR);
  assert_true(g.bytes <= 1000);
  assert_false(o.sink_refused);

  /* The sink says stop: the transfer ends at once, status kept, no more pieces. */
  g = (sink_log){.refuse_at = 1};
  run_one_sink(l, easy_to(f->port, "/big", 10000), BIG_SIZE, &g, &o);
  assert_true(o.sink_refused);
  assert_false(o.truncated);
  assert_int_equal(o.code, CURLE_WRITE_ERROR);
  assert_int_equal(o.status, 200);
  assert_int_equal(g.pieces, 1);
  assert_non_null(strstr(o.error, "stopped"));

  /* A sink without a write function is refused at submit. */
  curlloop_sink none = {NULL, NULL};
  CURL *e = easy_to(f->port, "/ok", 10000);
  assert_int_equal(curlloop_submit_sink(l, e, 100, &none, on_done, &o, NULL), -1);
  curl_easy_cleanup(e);
  curlloop_destroy(l);
}

static void test_redirect_resets_headers(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  run_one(l, easy_to(f->port, "/redir", 10000), 1000, &o);
  assert_int_equal(o.status, 302);
  assert_string_equal(o.retry_after, "99");

  CURL *e = easy_to(f->port, "/redir", 10000);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  run_one(l, e, 1000, &o);
  assert_int_equal(o.code, CURLE_OK);
  assert_int_equal(o.status, 200);
  assert_string_equal(o.body, "hello world");
  assert_string_equal(o.retry_after, ""); /* said by the 302, not by the final answer */
  assert_string_equal(o.content_type, "text/plain");
  curlloop_destroy(l);
}

static void test_total_timeout(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  int64_t t0 = time_mono_ms();
  run_one(l, easy_to(f->silent.port, "/", 300), 1000, &o);
  int64_t took = time_mono_ms() - t0;
  assert_int_equal(o.code, CURLE_OPERATION_TIMEDOUT);
  assert_int_equal(o.status, 0);
  assert_false(o.cancelled);
  assert_true(o.error[0] != '\0');
  assert_true(took >= 250 && took < 10000);
  curlloop_destroy(l);
}

static void test_connection_refused(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  outcome o;
  run_one(l, easy_to(f->closed, "/", 5000), 1000, &o);
  assert_int_equal(o.code, CURLE_COULDNT_CONNECT);
  assert_int_equal(o.status, 0);
  assert_true(o.error[0] != '\0');
  curlloop_destroy(l);
}

static void test_resubmit_from_callback(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  outcome first = {.w = &w, .resubmit_to = l};
  assert_int_equal(curlloop_submit(l, easy_to(f->port, "/ok", 10000), 100, on_done, &first), 0);
  /* The resubmitted handle has no URL: it must still come back, with an error. */
  assert_true(waiter_wait(&w, 1));
  assert_int_equal(first.resubmit_rc, 0);
  assert_true(waiter_wait(&w, 2));
  assert_int_equal(first.calls, 2);
  assert_int_not_equal(first.code, CURLE_OK);
  assert_int_equal(curlloop_in_flight(l), 0);
  waiter_free(&w);
  curlloop_destroy(l);
}

typedef struct submitter {
  curlloop *loop;
  int port;
  outcome *slots;
  int failures;
} submitter;

static void *submit_many(void *arg) {
  submitter *s = arg;
  for (int i = 0; i < MANY_PER_THREAD; i++) {
    CURL *e = easy_to(s->port, "/ok", 20000);
    if (!e || curlloop_submit(s->loop, e, 1000, on_done, &s->slots[i]) != 0) {
      if (e) curl_easy_cleanup(e);
      s->failures++;
    }
  }
  return NULL;
}

static void test_many_threads_each_once(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(16);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  enum { TOTAL = MANY_THREADS * MANY_PER_THREAD };
  outcome *slots = calloc(TOTAL, sizeof *slots);
  assert_non_null(slots);
  for (int i = 0; i < TOTAL; i++) slots[i].w = &w;
  submitter subs[MANY_THREADS];
  pthread_t threads[MANY_THREADS];
  for (int t = 0; t < MANY_THREADS; t++) {
    subs[t] = (submitter){.loop = l, .port = f->port, .slots = slots + t * MANY_PER_THREAD};
    assert_int_equal(pthread_create(&threads[t], NULL, submit_many, &subs[t]), 0);
  }
  for (int t = 0; t < MANY_THREADS; t++) {
    pthread_join(threads[t], NULL);
    assert_int_equal(subs[t].failures, 0);
  }
  assert_true(waiter_wait(&w, TOTAL));
  pthread_mutex_lock(&w.mu);
  assert_int_equal(w.done, TOTAL);
  pthread_mutex_unlock(&w.mu);
  for (int i = 0; i < TOTAL; i++) {
    assert_int_equal(slots[i].calls, 1);
    assert_int_equal(slots[i].code, CURLE_OK);
    assert_int_equal(slots[i].status, 200);
    assert_string_equal(slots[i].body, "hello world");
  }
  assert_int_equal(curlloop_in_flight(l), 0);
  curlloop_destroy(l);
  free(slots);
  waiter_free(&w);
}

static void test_connection_reuse(void **state) {
  fixture *f = *state;
  enum { BATCHES = 10, PER_BATCH = 20 };
  curlloop *l = new_loop(4);
  assert_non_null(l);
  long connects = 0;
  for (int b = 0; b < BATCHES; b++) {
    waiter w;
    waiter_init(&w);
    outcome slots[PER_BATCH];
    memset(slots, 0, sizeof slots);
    for (int i = 0; i < PER_BATCH; i++) {
      slots[i].w = &w;
      assert_int_equal(curlloop_submit(l, easy_to(f->port, "/ok", 20000), 100, on_done, &slots[i]),
                       0);
    }
    assert_true(waiter_wait(&w, PER_BATCH));
    for (int i = 0; i < PER_BATCH; i++) {
      assert_int_equal(slots[i].status, 200);
      connects += slots[i].num_connects;
    }
    waiter_free(&w);
  }
  /* 200 transfers over at most 4 connections at a time, kept alive between
   * batches: a handful of connects, not one per transfer. */
  assert_true(connects >= 1);
  assert_true(connects <= 10);
  curlloop_destroy(l);
}

static void test_destroy_cancels_stuck(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  outcome slots[STUCK];
  memset(slots, 0, sizeof slots);
  int before = raw_accepted(&f->silent);
  for (int i = 0; i < STUCK; i++) {
    slots[i].w = &w;
    slots[i].resubmit_to = l; /* a callback during destroy must be refused */
    slots[i].resubmit_rc = 1;
    /* No total timeout: only destroy can end these. */
    assert_int_equal(curlloop_submit(l, easy_to(f->silent.port, "/", 0), 100, on_done, &slots[i]),
                     0);
  }
  assert_true(raw_wait_accepted(&f->silent, before + STUCK));
  assert_int_equal(curlloop_in_flight(l), STUCK);
  pthread_mutex_lock(&w.mu);
  assert_int_equal(w.done, 0);
  pthread_mutex_unlock(&w.mu);

  int64_t t0 = time_mono_ms();
  curlloop_destroy(l);
  int64_t took = time_mono_ms() - t0;
  assert_true(took < 2000);
  assert_int_equal(w.done, STUCK);
  for (int i = 0; i < STUCK; i++) {
    assert_int_equal(slots[i].calls, 1);
    assert_true(slots[i].cancelled);
    assert_int_not_equal(slots[i].code, CURLE_OK);
    assert_int_equal(slots[i].status, 0);
    assert_int_equal(slots[i].resubmit_rc, -1);
  }
  waiter_free(&w);
}

/* --- cancel --- */

/* Whether the peer's connection number index (in accept order) gets closed
 * by the client: its request bytes are read, then end of file. */
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

static void test_cancel_in_flight(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  outcome o = {.w = &w};
  int before = raw_accepted(&f->silent);
  curlloop_transfer_id id = 0;
  /* A 60 s budget: only the cancel can end it within the test's wait. */
  assert_int_equal(
      curlloop_submit_with_id(l, easy_to(f->silent.port, "/", 60000), 100, on_done, &o, &id), 0);
  assert_true(id != 0);
  assert_true(raw_wait_accepted(&f->silent, before + 1)); /* really connected, waiting */
  assert_int_equal(curlloop_in_flight(l), 1);

  int64_t t0 = time_mono_ms();
  assert_int_equal(curlloop_cancel(l, id), 0);
  assert_true(waiter_wait(&w, 1));
  int64_t took = time_mono_ms() - t0;
  assert_int_equal(o.calls, 1);
  assert_true(o.aborted);
  assert_false(o.cancelled);
  assert_int_equal(o.code, CURLE_ABORTED_BY_CALLBACK);
  assert_int_equal(o.status, 0);
  assert_int_equal(o.body_len, 0);
  assert_non_null(strstr(o.error, "cancelled by its owner"));
  assert_true(took < 5000); /* far inside the 60 s the transfer had */
  assert_int_equal(curlloop_in_flight(l), 0);
  /* The upstream connection is given up, not left open. */
  assert_true(silent_conn_closed(&f->silent, before));

  /* Cancelling it again, or an id never handed out, does nothing. */
  assert_int_equal(curlloop_cancel(l, id), 0);
  assert_int_equal(curlloop_cancel(l, 0), 0);
  assert_int_equal(curlloop_cancel(l, id + 1000), 0);
  assert_int_equal(curlloop_cancel(NULL, id), -1);
  curlloop_destroy(l);
  assert_int_equal(o.calls, 1); /* destroy found nothing left to end */
  waiter_free(&w);
}

/* Submitted and cancelled back to back, before the loop has even started the
 * transfers: each cancel must still find its transfer. */
static void test_cancel_right_after_submit(void **state) {
  fixture *f = *state;
  enum { N = 40 };
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  outcome slots[N];
  memset(slots, 0, sizeof slots);
  int64_t t0 = time_mono_ms();
  for (int i = 0; i < N; i++) {
    slots[i].w = &w;
    curlloop_transfer_id id = 0;
    assert_int_equal(curlloop_submit_with_id(l, easy_to(f->silent.port, "/", 60000), 100, on_done,
                                             &slots[i], &id),
                     0);
    assert_int_equal(curlloop_cancel(l, id), 0);
  }
  assert_true(waiter_wait(&w, N));
  assert_true(time_mono_ms() - t0 < 20000);
  for (int i = 0; i < N; i++) {
    assert_int_equal(slots[i].calls, 1);
    assert_true(slots[i].aborted);
    assert_int_equal(slots[i].code, CURLE_ABORTED_BY_CALLBACK);
  }
  assert_int_equal(curlloop_in_flight(l), 0);
  curlloop_destroy(l);
  waiter_free(&w);
}

static void test_cancel_after_completion(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);

  /* A finished transfer: its id names nothing any more. */
  outcome a = {.w = &w};
  curlloop_transfer_id a_id = 0;
  assert_int_equal(
      curlloop_submit_with_id(l, easy_to(f->port, "/ok", 10000), 100, on_done, &a, &a_id), 0);
  assert_true(waiter_wait(&w, 1));
  assert_int_equal(a.status, 200);

  /* A newer transfer, likely in the memory a's bookkeeping had, and stuck. */
  outcome b = {.w = &w};
  curlloop_transfer_id b_id = 0;
  int before = raw_accepted(&f->silent);
  assert_int_equal(
      curlloop_submit_with_id(l, easy_to(f->silent.port, "/", 60000), 100, on_done, &b, &b_id), 0);
  assert_true(b_id != a_id);
  assert_true(raw_wait_accepted(&f->silent, before + 1));
  assert_int_equal(curlloop_cancel(l, a_id), 0);

  /* A third transfer that cancels itself from its own callback. Its answer
   * comes after the loop took a's cancel, so once it is in, that cancel has
   * been dealt with. */
  outcome c = {.w = &w, .cancel_via = l};
  assert_int_equal(
      curlloop_submit_with_id(l, easy_to(f->port, "/ok", 10000), 100, on_done, &c, &c.cancel_own),
      0);
  assert_true(waiter_wait(&w, 2));
  assert_int_equal(c.calls, 1);
  assert_int_equal(c.status, 200);
  assert_int_equal(c.cancel_own_rc, 0);

  /* a's late cancel touched neither a again nor b. */
  assert_int_equal(a.calls, 1);
  assert_false(a.aborted);
  assert_int_equal(b.calls, 0);
  assert_int_equal(curlloop_in_flight(l), 1);

  /* b's own id still stops it; c's cancel of itself was dropped. */
  assert_int_equal(curlloop_cancel(l, b_id), 0);
  assert_true(waiter_wait(&w, 3));
  assert_int_equal(b.calls, 1);
  assert_true(b.aborted);
  assert_int_equal(c.calls, 1);
  assert_int_equal(curlloop_in_flight(l), 0);
  curlloop_destroy(l);
  pthread_mutex_lock(&w.mu);
  assert_int_equal(w.done, 3);
  pthread_mutex_unlock(&w.mu);
  waiter_free(&w);
}

/* A cancel from another thread at a moment that sweeps the transfer's whole
 * life: before the loop starts it, while it runs, as its answer arrives, and
 * after it ended. Each round must get exactly one callback, whichever wins. */
#define RACE_ROUNDS 400

typedef struct racer {
  curlloop *loop;
  int64_t span_ns; /* how long a transfer to /ok takes here */
  _Atomic curlloop_transfer_id ids[RACE_ROUNDS];
  int cancel_failures;
} racer;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *cancel_all(void *arg) {
  racer *r = arg;
  for (int i = 0; i < RACE_ROUNDS; i++) {
    curlloop_transfer_id id;
    int64_t until = time_mono_ms() + WAIT_LIMIT_MS;
    /* Polls for the submission: the cancel's moment is measured from it. */
    while ((id = atomic_load(&r->ids[i])) == 0 && time_mono_ms() < until) sched_yield();
    /* Not synchronisation: the spread of moments the cancel is made at, at
     * once for half the rounds, then on to a transfer's usual time, so every
     * outcome of the race occurs. The assertions hold whatever the moment. */
    int step = i % 50 - 25;
    int64_t at = now_ns() + (step > 0 ? r->span_ns * step / 25 : 0);
    while (now_ns() < at) {
    }
    if (id == 0 || curlloop_cancel(r->loop, id) != 0) r->cancel_failures++;
  }
  return NULL;
}

static void test_cancel_races_completion(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  racer *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->loop = l;
  /* The longest of a few plain transfers sets the span of the sweep. */
  for (int i = 0; i < 5; i++) {
    outcome o;
    int64_t t0 = now_ns();
    run_one(l, easy_to(f->port, "/ok", 10000), 100, &o);
    assert_int_equal(o.status, 200);
    if (now_ns() - t0 > r->span_ns) r->span_ns = now_ns() - t0;
  }

  waiter w;
  waiter_init(&w);
  outcome *slots = calloc(RACE_ROUNDS, sizeof *slots);
  assert_non_null(slots);
  pthread_t canceller;
  assert_int_equal(pthread_create(&canceller, NULL, cancel_all, r), 0);
  for (int i = 0; i < RACE_ROUNDS; i++) {
    slots[i].w = &w;
    curlloop_transfer_id id = 0;
    assert_int_equal(
        curlloop_submit_with_id(l, easy_to(f->port, "/ok", 20000), 100, on_done, &slots[i], &id),
        0);
    atomic_store(&r->ids[i], id);
    assert_true(waiter_wait(&w, i + 1)); /* one round at a time */
  }
  pthread_join(canceller, NULL);
  assert_int_equal(r->cancel_failures, 0);
  int aborted = 0, answered = 0;
  for (int i = 0; i < RACE_ROUNDS; i++) {
    assert_int_equal(slots[i].calls, 1);
    if (slots[i].aborted) {
      assert_int_equal(slots[i].code, CURLE_ABORTED_BY_CALLBACK);
      assert_int_equal(slots[i].status, 0);
      aborted++;
    } else {
      assert_int_equal(slots[i].code, CURLE_OK);
      assert_int_equal(slots[i].status, 200);
      assert_string_equal(slots[i].body, "hello world");
      answered++;
    }
  }
  assert_int_equal(curlloop_in_flight(l), 0);
  /* Cancels that were still queued when their transfer ended are taken by
   * the loop before destroy returns: still no second callback. */
  curlloop_destroy(l);
  pthread_mutex_lock(&w.mu);
  assert_int_equal(w.done, RACE_ROUNDS);
  pthread_mutex_unlock(&w.mu);
  for (int i = 0; i < RACE_ROUNDS; i++) assert_int_equal(slots[i].calls, 1);
  print_message("cancel race: %d aborted, %d answered first (span %lld us)\n", aborted, answered,
                (long long)(r->span_ns / 1000));
  free(r);
  free(slots);
  waiter_free(&w);
}

/* Destroy ends what is left as cancelled, and refuses cancels after that. */
static void test_cancel_refused_while_stopping(void **state) {
  fixture *f = *state;
  curlloop *l = new_loop(0);
  assert_non_null(l);
  waiter w;
  waiter_init(&w);
  outcome o = {.w = &w, .cancel_via = l};
  int before = raw_accepted(&f->silent);
  assert_int_equal(curlloop_submit_with_id(l, easy_to(f->silent.port, "/", 60000), 100, on_done,
                                           &o, &o.cancel_own),
                   0);
  assert_true(raw_wait_accepted(&f->silent, before + 1));
  curlloop_destroy(l); /* the callback's own cancel runs during destroy */
  assert_int_equal(o.calls, 1);
  assert_true(o.cancelled);
  assert_false(o.aborted);
  assert_int_equal(o.cancel_own_rc, -1);
  waiter_free(&w);
}

static void test_destroy_idle_and_null(void **state) {
  curlloop *l = new_loop(0);
  assert_non_null(l);
  assert_int_equal(curlloop_in_flight(l), 0);
  CURL *e = curl_easy_init();
  assert_int_equal(curlloop_submit(l, e, 10, NULL, NULL), -1);
  curl_easy_cleanup(e);
  curlloop_destroy(l);
  curlloop_destroy(NULL);
  assert_int_equal(curlloop_in_flight(NULL), 0);
}

int main(void) {
  log_set_level(LOG_WARN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ok_body_and_headers),
      cmocka_unit_test(test_503_headers),
      cmocka_unit_test(test_body_cap),
      cmocka_unit_test(test_sink_gets_the_body),
      cmocka_unit_test(test_redirect_resets_headers),
      cmocka_unit_test(test_total_timeout),
      cmocka_unit_test(test_connection_refused),
      cmocka_unit_test(test_resubmit_from_callback),
      cmocka_unit_test(test_many_threads_each_once),
      cmocka_unit_test(test_connection_reuse),
      cmocka_unit_test(test_destroy_cancels_stuck),
      cmocka_unit_test(test_destroy_idle_and_null),
      cmocka_unit_test(test_cancel_in_flight),
      cmocka_unit_test(test_cancel_right_after_submit),
      cmocka_unit_test(test_cancel_after_completion),
      cmocka_unit_test(test_cancel_races_completion),
      cmocka_unit_test(test_cancel_refused_while_stopping),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
