/* test_http_wait.c - requests that wait without a thread, and streamed answers
 * (server.h: http_wait, http_wake, http_stream_*), over real sockets. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "http/server.h"
#include "http_testutil.h"
#include "util/timeutil.h"

/* --- a tiny "task" the tests finish from their own thread --- */

#define MAX_WAITERS 512

typedef struct waiter {
  http_waker *waker;
  int n_events_sent;
} waiter;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static waiter *waiters[MAX_WAITERS];
static int n_waiters;
static atomic_int ended_answered, ended_gone, resumes;
static atomic_int task_done;   /* the condition waiting requests wait for */
static atomic_int events_made; /* how many events the "stream" has to send */

static void reset(void) {
  pthread_mutex_lock(&mu);
  n_waiters = 0;
  pthread_mutex_unlock(&mu);
  atomic_store(&ended_answered, 0);
  atomic_store(&ended_gone, 0);
  atomic_store(&resumes, 0);
  atomic_store(&task_done, 0);
  atomic_store(&events_made, 0);
}

static void waiter_add(waiter *w) {
  pthread_mutex_lock(&mu);
  if (n_waiters < MAX_WAITERS) waiters[n_waiters++] = w;
  pthread_mutex_unlock(&mu);
}

static void waiter_remove(waiter *w) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < n_waiters; i++)
    if (waiters[i] == w) waiters[i] = waiters[--n_waiters];
  pthread_mutex_unlock(&mu);
}

static int waiter_count(void) {
  pthread_mutex_lock(&mu);
  int n = n_waiters;
  pthread_mutex_unlock(&mu);
  return n;
}

/* Wakes every waiting request, as a finished task would. */
static void wake_all(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < n_waiters; i++) http_wake(waiters[i]->waker);
  pthread_mutex_unlock(&mu);
}

/* The wakers of requests that went away, kept to wake them afterwards. */
static http_waker *dead_wakers[MAX_WAITERS];
static int n_dead;

static void on_end(void *ctx, bool answered) {
  waiter *w = ctx;
  waiter_remove(w);
  pthread_mutex_lock(&mu);
  if (!answered && n_dead < MAX_WAITERS) dead_wakers[n_dead++] = w->waker;
  else http_waker_release(w->waker);
  pthread_mutex_unlock(&mu);
  free(w);
  atomic_fetch_add(answered ? &ended_answered : &ended_gone, 1);
}

/* Wakes the requests that are gone (nothing may happen), then lets go. */
static void wake_and_release_dead(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < n_dead; i++) {
    http_wake(dead_wakers[i]);
    http_waker_release(dead_wakers[i]);
  }
  n_dead = 0;
  pthread_mutex_unlock(&mu);
}

/* --- GET /wait?ms=N: answers "done" once task_done, "timeout" at the deadline --- */

static void wait_resume(http_request *req, void *ctx, http_resume_reason why) {
  atomic_fetch_add(&resumes, 1);
  if (atomic_load(&task_done)) {
    http_reply_json(req, 200, json_pack("{s:s}", "state", "done"));
  } else if (why != HTTP_RESUME_WOKEN) {
    http_reply_json(req, 200, json_pack("{s:s}", "state", "timeout"));
  }
  /* else: woken early, not done: go on waiting */
}

static void h_wait(http_request *req, void *ctx) {
  const char *ms = http_query_get(req, "ms");
  if (atomic_load(&task_done)) {
    http_reply_json(req, 200, json_pack("{s:s}", "state", "done"));
    return;
  }
  waiter *w = calloc(1, sizeof *w);
  w->waker = http_wait(req, wait_resume, on_end, w, time_mono_ms() + (ms ? atoi(ms) : 30000));
  assert_non_null(w->waker);
  waiter_add(w);
}

/* --- GET /stream: an event per wake, as many as events_made, then the end --- */

static void stream_send_new(http_request *req, waiter *w) {
  int upto = atomic_load(&events_made);
  while (w->n_events_sent < upto) {
    char ev[64];
    int n = snprintf(ev, sizeof ev, "id: %d\ndata: event %d\n\n", w->n_events_sent + 1,
                     w->n_events_sent + 1);
    if (!http_stream_write(req, ev, (size_t)n)) return;
    w->n_events_sent++;
  }
  if (atomic_load(&task_done)) http_stream_end(req);
}

static void stream_resume(http_request *req, void *ctx, http_resume_reason why) {
  atomic_fetch_add(&resumes, 1);
  if (why == HTTP_RESUME_STOPPING) {
    http_stream_end(req);
    return;
  }
  if (why == HTTP_RESUME_DEADLINE) {
    /* A heartbeat, as SSE keeps proxies from cutting an idle stream. */
    http_stream_write(req, ": ping\n\n", 8);
    http_wait_until(req, time_mono_ms() + 200);
    return;
  }
  stream_send_new(req, ctx);
}

static void h_stream(http_request *req, void *ctx) {
  waiter *w = calloc(1, sizeof *w);
  http_reply_header(req, "Cache-Control", "no-cache");
  http_stream_start(req, 200, "text/event-stream");
  w->waker = http_wait(req, stream_resume, on_end, w, time_mono_ms() + 200);
  assert_non_null(w->waker);
  waiter_add(w);
  stream_send_new(req, w);
}

/* --- GET /flood: a stream that writes 8 MiB at once to a reader that does not read --- */

static void flood_resume(http_request *req, void *ctx, http_resume_reason why) {}

static void h_flood(http_request *req, void *ctx) {
  waiter *w = calloc(1, sizeof *w);
  http_stream_start(req, 200, "application/octet-stream");
  w->waker = http_wait(req, flood_resume, on_end, w, 0);
  waiter_add(w);
  static char chunk[64 * 1024];
  for (int i = 0; i < 128; i++)
    if (!http_stream_write(req, chunk, sizeof chunk)) break;
}

/* GET /big: one piece of 3 MiB (an image inline in one event), then the end. */
#define BIG_PIECE (3u << 20)
static void h_big(http_request *req, void *ctx) {
  char *piece = malloc(BIG_PIECE);
  assert_non_null(piece);
  memset(piece, 'x', BIG_PIECE);
  http_stream_start(req, 200, "text/event-stream");
  assert_true(http_stream_write(req, piece, BIG_PIECE));
  http_stream_end(req);
  free(piece);
}

static void h_hello(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s}", "hello", "world"));
}

typedef struct fixture {
  http_router *router;
  http_server *server;
  int port;
} fixture;

static http_server *start(http_router *r, int shutdown_ms) {
  http_server_config cfg = {.listen_host = "127.0.0.1",
                            .threads = 2,
                            .max_body_bytes = 1 << 20,
                            .shutdown_timeout_ms = shutdown_ms};
  char err[256];
  http_server *s = http_server_start(&cfg, r, err, sizeof err);
  if (!s) fprintf(stderr, "start: %s\n", err);
  return s;
}

static int setup(void **state) {
  reset();
  fixture *f = calloc(1, sizeof *f);
  f->router = http_router_new();
  if (!http_router_add(f->router, "GET", "/wait", h_wait, NULL) ||
      !http_router_add(f->router, "GET", "/stream", h_stream, NULL) ||
      !http_router_add(f->router, "GET", "/flood", h_flood, NULL) ||
      !http_router_add(f->router, "GET", "/big", h_big, NULL) ||
      !http_router_add(f->router, "GET", "/hello", h_hello, NULL))
    return -1;
  f->server = start(f->router, 10000);
  if (!f->server) return -1;
  f->port = http_server_port(f->server);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  http_server_stop(f->server);
  http_router_free(f->router);
  free(f);
  wake_and_release_dead(); /* after the server is gone too */
  /* Every wait ended exactly once, answered or not. */
  assert_int_equal(waiter_count(), 0);
  return 0;
}

static bool poll_until(atomic_int *v, int want) {
  for (int i = 0; i < 2000; i++) {
    if (atomic_load(v) >= want) return true;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL); /* polling a counter with a deadline */
  }
  return false;
}

static bool poll_waiters(int want) {
  for (int i = 0; i < 2000; i++) {
    if (waiter_count() == want) return true;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return false;
}

static int get(int port, const char *path, char *body, size_t size) {
  int s = connect_local(port);
  char req[256], head[2048];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
  assert_true(send_all(s, req, (size_t)n));
  int status = read_response(s, head, sizeof head, body, size);
  close(s);
  return status;
}

/* Woken by another thread, the request answers; nothing held a thread. */
static void test_wait_then_wake(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  static const char req[] = "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n";
  assert_true(send_all(s, req, sizeof req - 1));
  assert_true(poll_waiters(1));
  assert_false(readable_within(s, 100)); /* no answer while it waits */
  /* Other requests are served meanwhile, on both workers. */
  char body[256];
  for (int i = 0; i < 10; i++) assert_int_equal(get(f->port, "/hello", body, sizeof body), 200);
  wake_all(); /* woken before the condition holds: goes on waiting */
  assert_true(poll_until(&resumes, 1));
  assert_false(readable_within(s, 100));
  atomic_store(&task_done, 1);
  wake_all();
  char head[2048];
  assert_int_equal(read_response(s, head, sizeof head, body, sizeof body), 200);
  assert_string_equal(body, "{\"state\":\"done\"}");
  /* The connection is kept alive after a waited answer. */
  assert_true(send_all(s, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 32));
  assert_int_equal(read_response(s, head, sizeof head, body, sizeof body), 200);
  close(s);
  assert_int_equal(atomic_load(&ended_answered), 1);
  assert_int_equal(atomic_load(&ended_gone), 0);
}

/* The deadline answers with what there is. */
static void test_wait_deadline(void **state) {
  fixture *f = *state;
  char body[256];
  int64_t t0 = time_mono_ms();
  assert_int_equal(get(f->port, "/wait?ms=300", body, sizeof body), 200);
  assert_string_equal(body, "{\"state\":\"timeout\"}");
  assert_true(time_mono_ms() - t0 >= 290);
  assert_int_equal(atomic_load(&ended_answered), 1);
}

/* A client that hangs up while its request waits: on_end(false) once, at
 * once (not at the deadline), and a later wake does nothing. */
static void test_client_gone_while_waiting(void **state) {
  fixture *f = *state;
  enum { N = 20 };
  int s[N];
  for (int i = 0; i < N; i++) {
    s[i] = connect_local(f->port);
    assert_true(send_all(s[i], "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n", 31));
  }
  assert_true(poll_waiters(N));
  for (int i = 0; i < N; i++) close(s[i]);
  assert_true(poll_until(&ended_gone, N));
  assert_int_equal(waiter_count(), 0);
  assert_int_equal(atomic_load(&ended_answered), 0);
  wake_and_release_dead(); /* their requests are gone: nothing happens */
  char body[256];
  assert_int_equal(get(f->port, "/hello", body, sizeof body), 200);
}

/* 200 requests wait at once on 2 workers; others are served promptly; all
 * 200 answer when woken. */
static void test_many_waiting(void **state) {
  fixture *f = *state;
  enum { N = 200 };
  int s[N];
  for (int i = 0; i < N; i++) {
    s[i] = connect_local(f->port);
    assert_true(send_all(s[i], "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n", 31));
  }
  assert_true(poll_waiters(N));
  char body[256], head[2048];
  int64_t t0 = time_mono_ms();
  for (int i = 0; i < 50; i++) assert_int_equal(get(f->port, "/hello", body, sizeof body), 200);
  assert_true(time_mono_ms() - t0 < 5000);
  atomic_store(&task_done, 1);
  wake_all();
  for (int i = 0; i < N; i++) {
    assert_int_equal(read_response(s[i], head, sizeof head, body, sizeof body), 200);
    assert_string_equal(body, "{\"state\":\"done\"}");
    close(s[i]);
  }
  assert_true(poll_until(&ended_answered, N));
}

static atomic_int storm_stop;

static void *wake_storm(void *arg) {
  (void)arg;
  while (!atomic_load(&storm_stop)) wake_all();
  return NULL;
}

/* Wakes from another thread without pause while the worker runs the wakes it
 * took: every waiter stays sound (the mailbox once let a wake relink an entry
 * the worker was still walking: skipped wakes, and a waker released twice,
 * which ASan reports), and the final wake reaches every one at once, not at
 * its minute-long deadline. */
static void test_wake_storm(void **state) {
  fixture *f = *state;
  enum { N = 200 };
  int s[N];
  for (int i = 0; i < N; i++) {
    s[i] = connect_local(f->port);
    assert_true(send_all(s[i], "GET /wait?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n", 40));
  }
  assert_true(poll_waiters(N));
  atomic_store(&storm_stop, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, wake_storm, NULL), 0);
  /* Until the worker has resumed every request many times over. */
  int64_t until = time_mono_ms() + 10000;
  while (atomic_load(&resumes) < 20 * N && time_mono_ms() < until) sched_yield();
  assert_true(atomic_load(&resumes) >= 20 * N);
  atomic_store(&task_done, 1);
  int64_t t0 = time_mono_ms();
  atomic_store(&storm_stop, 1);
  assert_int_equal(pthread_join(th, NULL), 0);
  wake_all();
  char body[256], head[2048];
  for (int i = 0; i < N; i++) {
    assert_int_equal(read_response(s[i], head, sizeof head, body, sizeof body), 200);
    assert_string_equal(body, "{\"state\":\"done\"}");
    close(s[i]);
  }
  assert_true(time_mono_ms() - t0 < 10000);
  assert_true(poll_until(&ended_answered, N));
}

/* Reads a chunked body until its last chunk; returns the decoded bytes. */
static size_t read_chunked(int s, char *out, size_t size) {
  size_t got = 0;
  for (;;) {
    char line[64];
    size_t n = 0;
    while (n < sizeof line - 1) {
      assert_int_equal(recv(s, line + n, 1, 0), 1);
      if (n > 0 && line[n - 1] == '\r' && line[n] == '\n') break;
      n++;
    }
    line[n + 1] = '\0';
    size_t len = strtoul(line, NULL, 16);
    if (len == 0) {
      char crlf[2];
      assert_int_equal(recv(s, crlf, 2, MSG_WAITALL), 2);
      break;
    }
    assert_true(got + len < size);
    assert_int_equal(recv(s, out + got, len, MSG_WAITALL), (ssize_t)len);
    got += len;
    char crlf[2];
    assert_int_equal(recv(s, crlf, 2, MSG_WAITALL), 2);
  }
  out[got] = '\0';
  return got;
}

/* A stream: pieces as they are made, heartbeats in between, then the end;
 * the connection stays usable. */
static void test_stream(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  assert_true(send_all(s, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n", 33));
  char head[2048];
  assert_int_equal(read_head(s, head, sizeof head), 200);
  assert_non_null(strcasestr(head, "Transfer-Encoding: chunked"));
  assert_non_null(strcasestr(head, "Content-Type: text/event-stream"));
  assert_null(strcasestr(head, "Content-Length"));
  assert_true(poll_waiters(1));
  for (int i = 1; i <= 3; i++) {
    atomic_store(&events_made, i);
    wake_all();
    assert_true(readable_within(s, 5000));
  }
  atomic_store(&task_done, 1);
  wake_all();
  char body[4096];
  read_chunked(s, body, sizeof body);
  assert_non_null(strstr(body, "id: 1\ndata: event 1\n\n"));
  assert_non_null(strstr(body, "id: 3\ndata: event 3\n\n"));
  assert_null(strstr(body, "event 4"));
  assert_true(poll_until(&ended_answered, 1));
  /* Next request on the same connection. */
  char rbody[256];
  assert_true(send_all(s, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 32));
  assert_int_equal(read_response(s, head, sizeof head, rbody, sizeof rbody), 200);
  close(s);
}

/* Heartbeats come at the deadline while nothing happens. */
static void test_stream_heartbeat(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  assert_true(send_all(s, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n", 33));
  char head[2048];
  assert_int_equal(read_head(s, head, sizeof head), 200);
  char buf[64] = {0};
  /* "8\r\n: ping\n\n\r\n" within a few deadlines of 200 ms */
  assert_true(readable_within(s, 5000));
  ssize_t n = recv(s, buf, sizeof buf - 1, 0);
  assert_true(n > 0);
  assert_non_null(strstr(buf, ": ping"));
  close(s);
  assert_true(poll_until(&ended_gone, 1));
}

/* A client that asked to close has its connection closed once the stream
 * has ended (not left to the idle timeout), after a well-formed last chunk. */
static void test_stream_connection_close(void **state) {
  fixture *f = *state;
  atomic_store(&events_made, 1);
  atomic_store(&task_done, 1);
  int s = connect_local(f->port);
  const char *get = "GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
  assert_true(send_all(s, get, strlen(get)));
  char head[2048];
  assert_int_equal(read_head(s, head, sizeof head), 200);
  assert_non_null(strcasestr(head, "Transfer-Encoding: chunked"));
  assert_non_null(strcasestr(head, "Connection: close"));
  char body[4096];
  read_chunked(s, body, sizeof body);
  assert_string_equal(body, "id: 1\ndata: event 1\n\n");
  assert_true(readable_within(s, 5000)); /* the close, well before the 60 s idle timeout */
  char extra;
  assert_int_equal(recv(s, &extra, 1, 0), 0);
  close(s);
}

/* HTTP/1.0 gets no chunks: the body ends when the connection does. */
static void test_stream_http10(void **state) {
  fixture *f = *state;
  atomic_store(&events_made, 2);
  atomic_store(&task_done, 1);
  int s = connect_local(f->port);
  assert_true(send_all(s, "GET /stream HTTP/1.0\r\n\r\n", 24));
  char head[2048];
  assert_int_equal(read_head(s, head, sizeof head), 200);
  assert_null(strcasestr(head, "Transfer-Encoding"));
  assert_non_null(strcasestr(head, "Connection: close"));
  char body[4096];
  size_t got = 0;
  for (;;) {
    ssize_t n = recv(s, body + got, sizeof body - 1 - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  body[got] = '\0';
  assert_string_equal(body, "id: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n");
  close(s);
}

/* A reader that falls too far behind is cut; on_end(false). */
static void test_stream_reader_behind(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  int rcv = 4096;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  assert_true(send_all(s, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n", 32));
  assert_true(poll_until(&ended_gone, 1));
  close(s);
  char body[256];
  assert_int_equal(get(f->port, "/hello", body, sizeof body), 200);
}

/* A single piece larger than the backlog cap goes out whole to a reader
 * that keeps up (the cap is on what waits before it). */
static void test_stream_big_piece(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  assert_true(send_all(s, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n", 30));
  char head[2048];
  assert_int_equal(read_head(s, head, sizeof head), 200);
  char *body = malloc(BIG_PIECE + 16);
  assert_non_null(body);
  assert_int_equal(read_chunked(s, body, BIG_PIECE + 16), BIG_PIECE);
  assert_true(body[0] == 'x' && body[BIG_PIECE - 1] == 'x');
  free(body);
  close(s);
}

/* Stopping the server: waiting requests answer at once with what there is. */
static void test_stop_answers_waiting(void **state) {
  fixture *f = *state;
  http_server *srv = start(f->router, 10000);
  assert_non_null(srv);
  int port = http_server_port(srv);
  int s = connect_local(port);
  assert_true(send_all(s, "GET /wait HTTP/1.1\r\nHost: t\r\n\r\n", 31));
  assert_true(poll_waiters(1));
  int64_t t0 = time_mono_ms();
  http_server_stop(srv);
  assert_true(time_mono_ms() - t0 < 5000); /* not the 30 s wait */
  char head[2048], body[256];
  assert_int_equal(read_response(s, head, sizeof head, body, sizeof body), 200);
  assert_string_equal(body, "{\"state\":\"timeout\"}");
  assert_non_null(strcasestr(head, "Connection: close"));
  close(s);
  assert_int_equal(atomic_load(&ended_answered), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_wait_then_wake, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wait_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_gone_while_waiting, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_waiting, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wake_storm, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_heartbeat, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_http10, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_connection_close, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_reader_behind, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_big_piece, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_answers_waiting, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
