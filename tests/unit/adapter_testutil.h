/* adapter_testutil.h - test doubles for the provider adapter tests (test_gemini.c,
 * test_openai.c): a stand-in for the curl loop and a one-shot local HTTP server.
 *
 * The stand-in defines the curlloop functions the adapters call (submit,
 * submit_sink, easy_new, cancel) itself, so the adapters' glue links and runs
 * without the real loop. It keeps each submitted handle, as the real loop
 * does, never calling back inside submit. In FAKE_QUEUE mode the test ends
 * each by hand (an answer, delivered to the transfer's sink whole or in
 * pieces cut where the test says, a transport error, the loop's shutdown, or
 * what a cancel request does); in FAKE_PERFORM mode fake_perform_all() runs
 * them with curl_easy_perform() against capsrv, so the real bytes on the wire
 * can be checked. Include after cmocka.h; static functions only, one copy per
 * test. */
#ifndef IMGATE_ADAPTER_TESTUTIL_H
#define IMGATE_ADAPTER_TESTUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "peer_testutil.h"
#include "upstream/curlloop.h"
#include "upstream/provider.h"
#include "upstream/simpng.h"
#include "util/base64.h"
#include "util/buf.h"

/* ---- the group's setup and teardown: libcurl for the process ---- */

static int tu_setup_curl(void **state) {
  (void)state;
  return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int tu_teardown_curl(void **state) {
  (void)state;
  curl_global_cleanup();
  return 0;
}

/* ---- images ---- */

static uint8_t *tu_png(const char *seed, int w, int h, size_t *len) {
  uint8_t *png = NULL;
  assert_true(simpng_render(seed, w, h, &png, len));
  return png;
}

/* base64 of a fresh PNG of w x h. */
static char *tu_png_b64(const char *seed, int w, int h) {
  size_t len = 0;
  uint8_t *png = tu_png(seed, w, h, &len);
  char *b64 = base64_encode(png, len);
  free(png);
  assert_non_null(b64);
  return b64;
}

static char *tu_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *tu_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  assert_true(n >= 0);
  return s;
}

/* ---- the curl loop stand-in ---- */

typedef enum { FAKE_QUEUE, FAKE_PERFORM } fake_mode;

typedef struct fake_sub {
  CURL *easy;
  curlloop_done_fn done;
  void *ctx;
  size_t max_bytes;
  curlloop_sink sink; /* write NULL: the body is collected, as submit does */
} fake_sub;

#define FAKE_MAX_SUBS 16
#define FAKE_MAX_CANCELS 64

static struct {
  fake_mode mode;
  int accept_limit; /* submissions accepted before refusing; < 0 = no limit */
  int n_subs;
  fake_sub subs[FAKE_MAX_SUBS]; /* submission i has the id i + 1 */
  int n_cancels;
  curlloop_transfer_id cancels[FAKE_MAX_CANCELS]; /* ids curlloop_cancel was asked to stop */
} fake;

static char fake_loop_storage;
#define FAKE_LOOP ((curlloop *)(void *)&fake_loop_storage)

static void fake_reset(fake_mode mode) {
  memset(&fake, 0, sizeof fake);
  fake.mode = mode;
  fake.accept_limit = -1;
}

typedef struct fake_capture {
  curlloop_result res;
  size_t max;
  curlloop_sink sink;
  size_t received;
} fake_capture;

/* What the loop does with a piece of the body: to the sink, or collected. */
static bool fake_take_piece(fake_capture *c, const char *p, size_t len) {
  if (c->received + len > c->max) {
    c->res.body_truncated = true;
    return false;
  }
  c->received += len;
  if (c->sink.write) {
    if (c->sink.write(c->sink.ctx, p, len)) return true;
    c->res.sink_refused = true;
    c->res.code = CURLE_WRITE_ERROR;
    return false;
  }
  assert_true(buf_append(&c->res.body, p, len));
  return true;
}

static size_t fake_write(char *p, size_t size, size_t n, void *ud) {
  fake_capture *c = ud;
  size_t len = size * n;
  return fake_take_piece(c, p, len) ? len : 0;
}

/* Keeps a header value when the line is "name: value". */
static void fake_keep_header(const char *line, size_t len, const char *name, char *out,
                             size_t out_size) {
  size_t n = strlen(name);
  if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':') return;
  const char *v = line + n + 1;
  const char *end = line + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
  snprintf(out, out_size, "%.*s", (int)(end - v), v);
}

static size_t fake_header(char *p, size_t size, size_t n, void *ud) {
  fake_capture *c = ud;
  size_t len = size * n;
  fake_keep_header(p, len, "retry-after", c->res.retry_after, sizeof c->res.retry_after);
  fake_keep_header(p, len, "retry-after-ms", c->res.retry_after_ms, sizeof c->res.retry_after_ms);
  fake_keep_header(p, len, "content-type", c->res.content_type, sizeof c->res.content_type);
  return len;
}

static void fake_perform(CURL *easy, size_t max_bytes, const curlloop_sink *sink,
                         curlloop_done_fn done, void *ctx) {
  fake_capture c;
  memset(&c, 0, sizeof c);
  c.max = max_bytes;
  c.sink = *sink;
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, fake_write);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &c);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, fake_header);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &c);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, c.res.error);
  CURLcode code = curl_easy_perform(easy);
  if (!c.res.sink_refused) c.res.code = code;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &c.res.http_status);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
  done(ctx, easy, &c.res);
  buf_free(&c.res.body);
}

/* The stand-in loop has no defaults of its own to give a handle. */
CURL *curlloop_easy_new(curlloop *l) {
  (void)l;
  return curl_easy_init();
}

int curlloop_submit_sink(curlloop *l, CURL *easy, size_t max_response_bytes,
                         const curlloop_sink *sink, curlloop_done_fn done, void *ctx,
                         curlloop_transfer_id *id_out) {
  assert_ptr_equal(l, FAKE_LOOP);
  if (id_out) *id_out = 0;
  if (fake.accept_limit >= 0 && fake.n_subs >= fake.accept_limit) return -1;
  assert_true(fake.n_subs < FAKE_MAX_SUBS);
  fake.subs[fake.n_subs++] =
      (fake_sub){easy, done, ctx, max_response_bytes, sink ? *sink : (curlloop_sink){0}};
  if (id_out) *id_out = (curlloop_transfer_id)fake.n_subs;
  return 0;
}

int curlloop_submit_with_id(curlloop *l, CURL *easy, size_t max_response_bytes,
                            curlloop_done_fn done, void *ctx, curlloop_transfer_id *id_out) {
  return curlloop_submit_sink(l, easy, max_response_bytes, NULL, done, ctx, id_out);
}

int curlloop_submit(curlloop *l, CURL *easy, size_t max_response_bytes, curlloop_done_fn done,
                    void *ctx) {
  return curlloop_submit_with_id(l, easy, max_response_bytes, done, ctx, NULL);
}

/* Only recorded: fake_apply_cancels() does what the loop would. */
int curlloop_cancel(curlloop *l, curlloop_transfer_id id) {
  assert_ptr_equal(l, FAKE_LOOP);
  assert_true(fake.n_cancels < FAKE_MAX_CANCELS);
  fake.cancels[fake.n_cancels++] = id;
  return 0;
}

/* Runs every submission not yet ended, in order, with curl_easy_perform. */
static void fake_perform_all(void) {
  assert_int_equal(fake.mode, FAKE_PERFORM);
  for (int i = 0; i < fake.n_subs; i++) {
    fake_sub *s = &fake.subs[i];
    if (!s->easy) continue;
    CURL *easy = s->easy;
    s->easy = NULL;
    fake_perform(easy, s->max_bytes, &s->sink, s->done, s->ctx);
  }
}

/* Ends queued submission i with what res says. */
static void fake_deliver(int i, curlloop_result *res) {
  assert_true(i < fake.n_subs);
  fake_sub *s = &fake.subs[i];
  assert_non_null(s->easy);
  CURL *easy = s->easy;
  s->easy = NULL;
  s->done(s->ctx, easy, res);
}

/* Ends queued submission i with an HTTP answer whose body arrives in pieces
 * cut at cuts[0..n_cuts) (ascending offsets), as the loop would hand them
 * over: to the transfer's sink (stopping where it refuses, or where the
 * size cap is reached), or collected. Returns the result's sink_refused. */
static bool fake_answer_cut(int i, long status, const char *body, const size_t *cuts,
                            size_t n_cuts, const char *retry_after, const char *retry_after_ms) {
  assert_true(i < fake.n_subs);
  fake_capture c;
  memset(&c, 0, sizeof c);
  c.max = fake.subs[i].max_bytes;
  c.sink = fake.subs[i].sink;
  c.res.code = CURLE_OK;
  c.res.http_status = status;
  size_t len = body ? strlen(body) : 0, at = 0;
  for (size_t k = 0; k <= n_cuts && at < len; k++) {
    size_t next = k < n_cuts ? cuts[k] : len;
    assert_true(next >= at && next <= len);
    if (next > at && !fake_take_piece(&c, body + at, next - at)) {
      if (c.res.body_truncated) c.res.code = CURLE_WRITE_ERROR;
      break;
    }
    at = next;
  }
  if (retry_after) snprintf(c.res.retry_after, sizeof c.res.retry_after, "%s", retry_after);
  if (retry_after_ms)
    snprintf(c.res.retry_after_ms, sizeof c.res.retry_after_ms, "%s", retry_after_ms);
  fake_deliver(i, &c.res);
  buf_free(&c.res.body);
  return c.res.sink_refused;
}

/* Ends queued submission i with an HTTP answer, its body in one piece. */
static void fake_answer(int i, long status, const char *body, const char *retry_after,
                        const char *retry_after_ms) {
  fake_answer_cut(i, status, body, NULL, 0, retry_after, retry_after_ms);
}

/* Whether submission i (id i + 1) is still waiting for its end. */
static bool fake_pending(int i) { return i < fake.n_subs && fake.subs[i].easy != NULL; }

/* Ends queued submission i as the loop ends a transfer it was asked to stop. */
static void fake_abort(int i) {
  curlloop_result res;
  memset(&res, 0, sizeof res);
  res.code = CURLE_ABORTED_BY_CALLBACK;
  res.aborted = true;
  snprintf(res.error, sizeof res.error, "fake: aborted");
  fake_deliver(i, &res);
}

/* What the loop does with the cancel requests recorded so far: each aborts
 * its transfer if still pending; one whose transfer has ended is dropped.
 * Returns how many transfers were aborted. */
static int fake_apply_cancels(void) {
  int aborted = 0;
  for (int k = 0; k < fake.n_cancels; k++) {
    curlloop_transfer_id id = fake.cancels[k];
    assert_true(id >= 1);
    int i = (int)(id - 1);
    if (fake_pending(i)) {
      fake_abort(i);
      aborted++;
    }
  }
  fake.n_cancels = 0;
  return aborted;
}

/* Ends queued submission i without an answer: a curl error, an over-size
 * answer, or the loop shutting down. */
static void fake_end(int i, CURLcode code, bool truncated, bool cancelled) {
  curlloop_result res;
  memset(&res, 0, sizeof res);
  res.code = code;
  res.body_truncated = truncated;
  res.cancelled = cancelled;
  if (truncated) res.http_status = 200;
  if (code != CURLE_OK) snprintf(res.error, sizeof res.error, "fake: %s", curl_easy_strerror(code));
  fake_deliver(i, &res);
}

/* ---- what done() received ---- */

typedef struct tu_done {
  int calls;
  provider_outcome *outcome; /* the last one */
} tu_done;

static void tu_done_fn(void *ctx, provider_outcome *o) {
  tu_done *d = ctx;
  d->calls++;
  provider_outcome_free(d->outcome);
  d->outcome = o;
}

/* ---- a local HTTP server that records requests and plays canned answers ---- */

#define CAPSRV_MAX 8

typedef struct capsrv {
  int fd;
  int port;
  pthread_t thread;
  int expected;                /* connections to serve */
  char *answers[CAPSRV_MAX];   /* raw HTTP answers, one per connection (owned) */
  char *requests[CAPSRV_MAX];  /* raw requests received (owned) */
  size_t request_len[CAPSRV_MAX];
  int served;
} capsrv;

/* A whole HTTP answer with a body and optional extra header lines ("A: b\r\n"). */
static char *capsrv_answer(int status, const char *extra_headers, const char *body) {
  return tu_printf("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n%s\r\n%s",
                   status, strlen(body), extra_headers ? extra_headers : "", body);
}

static size_t capsrv_content_length(const char *head) {
  for (const char *p = head; (p = strchr(p, '\n')) != NULL;) {
    p++;
    if (strncasecmp(p, "content-length:", 15) == 0) return (size_t)strtoul(p + 15, NULL, 10);
  }
  return 0;
}

static void capsrv_serve_one(capsrv *s, int c) {
  buf req = BUF_INIT;
  size_t need = SIZE_MAX;
  char chunk[65536];
  while (req.len < need) {
    ssize_t n = recv(c, chunk, sizeof chunk, 0);
    if (n <= 0) break;
    assert_true(buf_append(&req, chunk, (size_t)n));
    char *end = need == SIZE_MAX ? strstr(req.data, "\r\n\r\n") : NULL;
    if (end) need = (size_t)(end + 4 - req.data) + capsrv_content_length(req.data);
  }
  s->request_len[s->served] = req.len;
  s->requests[s->served] = buf_steal(&req);
  const char *answer = s->answers[s->served] ? s->answers[s->served] : "HTTP/1.1 500 X\r\n\r\n";
  size_t off = 0, len = strlen(answer);
  while (off < len) {
    ssize_t n = send(c, answer + off, len - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += (size_t)n;
  }
  s->served++;
}

static void *capsrv_main(void *arg) {
  capsrv *s = arg;
  while (s->served < s->expected) {
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    if (poll(&pfd, 1, 20000) <= 0) break; /* only when the client never came: the test fails */
    int c = accept(s->fd, NULL, NULL);
    if (c < 0) break;
    struct timeval tv = {.tv_sec = 20};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    capsrv_serve_one(s, c);
    close(c);
  }
  return NULL;
}

/* Starts serving `expected` connections; answers are taken over. */
static void capsrv_start(capsrv *s, int expected) {
  s->fd = listen_local(&s->port);
  assert_true(s->fd >= 0);
  s->expected = expected;
  assert_int_equal(pthread_create(&s->thread, NULL, capsrv_main, s), 0);
}

/* Waits for the server thread; the recorded requests stay until capsrv_free. */
static void capsrv_finish(capsrv *s) {
  pthread_join(s->thread, NULL);
  close(s->fd);
}

static void capsrv_free(capsrv *s) {
  for (int i = 0; i < CAPSRV_MAX; i++) {
    free(s->answers[i]);
    free(s->requests[i]);
  }
}

/* The body of recorded request i (after the blank line), and its length. */
static const char *capsrv_body(const capsrv *s, int i, size_t *len) {
  const char *r = s->requests[i];
  assert_non_null(r);
  const char *end = strstr(r, "\r\n\r\n");
  assert_non_null(end);
  *len = s->request_len[i] - (size_t)(end + 4 - r);
  return end + 4;
}

/* Whether request i's head holds this exact header line (name case-insensitive). */
static bool capsrv_has_header(const capsrv *s, int i, const char *name, const char *value) {
  const char *r = s->requests[i];
  const char *end = strstr(r, "\r\n\r\n");
  size_t n = strlen(name);
  for (const char *p = strstr(r, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
      const char *v = line + n + 1;
      while (*v == ' ') v++;
      if (strncmp(v, value, strlen(value)) == 0 && v[strlen(value)] == '\r') return true;
    }
  }
  return false;
}

#endif
