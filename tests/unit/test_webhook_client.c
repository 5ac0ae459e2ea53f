/* test_webhook_client.c - webhook attempts through the real curl loop to
 * local peers: imgate's own HTTP server (two of them: B is where a redirect
 * points, and must see nothing), a raw peer that never answers, a port
 * nothing listens on, a raw peer standing in for a proxy. Also the retry
 * schedule and the URL check. The receiver with the reference verifier is
 * exercised from tests/e2e/test_webhook_receiver.py. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "http/server.h"
#include "peer_testutil.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "webhook/client.h"
#include "webhook/sign.h"

#define SECRET "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define OLD_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define PAYLOAD "{\"type\":\"task.succeeded\",\"data\":{\"id\":\"t1\"}}"
#define BIG_ANSWER 10000

/* --- the peers --- */

/* What the last request to A carried. */
typedef struct seen {
  pthread_mutex_t mu;
  char id[300], timestamp[32], signature[WEBHOOK_SIGNATURE_HEADER_MAX + 8];
  char content_type[64], user_agent[64], expect[32];
  char body[512];
  size_t body_len;
} seen;

typedef struct peer {
  http_server *server;
  int port;
  atomic_int hits;
} peer;

typedef struct fixture {
  http_router *router_a, *router_b;
  peer a, b;
  seen last;
  char big[BIG_ANSWER];
  raw_peer silent, proxy;
  curlloop *loop;
} fixture;

static void copy_header(http_request *req, const char *name, char *dst, size_t size) {
  const char *v = http_header_get(req, name);
  snprintf(dst, size, "%s", v ? v : "");
}

static void h_ok(http_request *req, void *ctx) {
  fixture *f = ctx;
  seen *s = &f->last;
  pthread_mutex_lock(&s->mu);
  copy_header(req, "webhook-id", s->id, sizeof s->id);
  copy_header(req, "webhook-timestamp", s->timestamp, sizeof s->timestamp);
  copy_header(req, "webhook-signature", s->signature, sizeof s->signature);
  copy_header(req, "content-type", s->content_type, sizeof s->content_type);
  copy_header(req, "user-agent", s->user_agent, sizeof s->user_agent);
  copy_header(req, "expect", s->expect, sizeof s->expect);
  s->body_len = req->body_len < sizeof s->body ? req->body_len : sizeof s->body;
  memcpy(s->body, req->body, s->body_len);
  pthread_mutex_unlock(&s->mu);
  atomic_fetch_add(&f->a.hits, 1);
  http_reply_bytes(req, 200, "application/json", "{\"ok\":true}", 11);
}

static void h_big(http_request *req, void *ctx) {
  fixture *f = ctx;
  atomic_fetch_add(&f->a.hits, 1);
  http_reply_bytes(req, 200, "text/plain", f->big, sizeof f->big);
}

/* POST /status/NNN answers NNN (a 3xx with a Location to B). */
static void h_status(http_request *req, void *ctx) {
  fixture *f = ctx;
  atomic_fetch_add(&f->a.hits, 1);
  int status = atoi(http_param_get(req, "code"));
  if (status >= 300 && status < 400) {
    char loc[96];
    snprintf(loc, sizeof loc, "http://127.0.0.1:%d/ok", f->b.port);
    http_reply_header(req, "Location", loc);
  }
  http_reply_bytes(req, status, "text/plain", "x", 1);
}

static void h_b(http_request *req, void *ctx) {
  atomic_fetch_add(&((peer *)ctx)->hits, 1);
  http_reply_empty(req, 204);
}

static bool start_peer(peer *p, http_router *r) {
  http_server_config cfg = {.listen_host = "127.0.0.1",
                            .listen_port = 0,
                            .threads = 2,
                            .max_body_bytes = 1 << 20,
                            .connection_timeout_s = 30};
  char err[256];
  p->server = http_server_start(&cfg, r, err, sizeof err);
  if (!p->server) return false;
  p->port = http_server_port(p->server);
  atomic_init(&p->hits, 0);
  return true;
}

static int group_setup(void **state) {
  log_set_level(LOG_WARN);
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  pthread_mutex_init(&f->last.mu, NULL);
  memset(f->big, 'b', sizeof f->big);
  f->router_a = http_router_new();
  f->router_b = http_router_new();
  if (!f->router_a || !f->router_b) return -1;
  if (!http_router_add(f->router_a, "POST", "/ok", h_ok, f) ||
      !http_router_add(f->router_a, "POST", "/big", h_big, f) ||
      !http_router_add(f->router_a, "POST", "/status/{code}", h_status, f) ||
      !http_router_add(f->router_b, "POST", "/ok", h_b, &f->b) ||
      !http_router_add(f->router_b, "GET", "/ok", h_b, &f->b))
    return -1;
  if (!start_peer(&f->a, f->router_a) || !start_peer(&f->b, f->router_b)) return -1;
  if (!raw_start(&f->silent, NULL, 0)) return -1;
  static const char proxy_answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  if (!raw_start(&f->proxy, proxy_answer, sizeof proxy_answer - 1)) return -1;
  curlloop_config lc = {.connect_timeout_ms = 5000};
  f->loop = curlloop_create(&lc);
  if (!f->loop) return -1;
  *state = f;
  return 0;
}

static int group_teardown(void **state) {
  fixture *f = *state;
  curlloop_destroy(f->loop);
  raw_stop(&f->silent);
  raw_stop(&f->proxy);
  http_server_stop(f->a.server);
  http_server_stop(f->b.server);
  http_router_free(f->router_a);
  http_router_free(f->router_b);
  pthread_mutex_destroy(&f->last.mu);
  free(f);
  return 0;
}

/* --- running an attempt to its end --- */

typedef struct got {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  webhook_attempt a;
} got;

static void on_done(void *ctx, const webhook_attempt *a) {
  got *g = ctx;
  pthread_mutex_lock(&g->mu);
  g->a = *a;
  g->calls++;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

static void got_init(got *g) {
  memset(g, 0, sizeof *g);
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
}

static void got_free(got *g) {
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
}

static webhook_config local_cfg(void) {
  imgate_config c;
  config_defaults(&c);
  webhook_config w;
  webhook_config_from(&w, &c);
  w.guard.allow_private = true;
  w.guard.allow_http = true;
  w.timeout_ms = 10000;
  return w;
}

static webhook_message message(const char *url) {
  return (webhook_message){.url = url,
                           .id = "msg_0123456789abcdef0123456789abcdef",
                           .payload = PAYLOAD,
                           .payload_len = strlen(PAYLOAD),
                           .secret = SECRET};
}

/* Sends m with cfg on the fixture's loop and waits for the outcome. */
static void send_to_end(fixture *f, const webhook_config *cfg, const webhook_message *m,
                        got *g) {
  webhook_client *c = webhook_client_new(f->loop, cfg);
  assert_non_null(c);
  got_init(g);
  webhook_attempt immediate;
  int rc = webhook_send(c, m, on_done, g, &immediate);
  if (rc != 0) fail_msg("webhook_send refused: %s", immediate.error);
  assert_true(wait_count(&g->mu, &g->cv, &g->calls, 1));
  assert_int_equal(g->calls, 1);
  assert_int_equal(webhook_client_in_flight(c), 0);
  webhook_client_free(c);
}

static void url_of(char *out, size_t size, int port, const char *path) {
  snprintf(out, size, "http://127.0.0.1:%d%s", port, path);
}

/* --- attempts --- */

static void test_delivered_signed(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  char url[128];
  url_of(url, sizeof url, f->a.port, "/ok");
  webhook_message m = message(url);
  int64_t before_s = time_now_ms() / 1000;
  got g;
  send_to_end(f, &cfg, &m, &g);
  int64_t after_s = time_now_ms() / 1000;
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_DELIVERED);
  assert_int_equal(g.a.http_status, 200);
  assert_string_equal(g.a.error, "");
  assert_true(g.a.timestamp_s >= before_s && g.a.timestamp_s <= after_s);
  assert_true(g.a.started_ms / 1000 >= before_s && g.a.started_ms / 1000 <= after_s);
  assert_true(g.a.duration_ms >= 0 && g.a.duration_ms < WAIT_LIMIT_MS);

  seen *s = &f->last;
  pthread_mutex_lock(&s->mu);
  assert_string_equal(s->id, m.id);
  char ts[32];
  snprintf(ts, sizeof ts, "%lld", (long long)g.a.timestamp_s);
  assert_string_equal(s->timestamp, ts);
  char want[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(SECRET, m.id, g.a.timestamp_s, PAYLOAD, strlen(PAYLOAD), want), 0);
  assert_string_equal(s->signature, want);
  assert_string_equal(s->content_type, "application/json");
  assert_string_equal(s->user_agent, "imgate-webhooks");
  assert_string_equal(s->expect, "");
  assert_int_equal(s->body_len, strlen(PAYLOAD));
  assert_memory_equal(s->body, PAYLOAD, strlen(PAYLOAD));
  pthread_mutex_unlock(&s->mu);
  got_free(&g);
}

static void test_rotation_signs_twice(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  char url[128];
  url_of(url, sizeof url, f->a.port, "/ok");
  webhook_message m = message(url);
  m.previous_secret = OLD_SECRET;
  m.timestamp_s = time_now_ms() / 1000 - 7; /* given: sent as it is */
  got g;
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_DELIVERED);
  assert_int_equal(g.a.timestamp_s, m.timestamp_s);
  char want[WEBHOOK_SIGNATURE_HEADER_MAX];
  assert_int_equal(webhook_signature_header(SECRET, OLD_SECRET, m.id, m.timestamp_s, PAYLOAD,
                                            strlen(PAYLOAD), want),
                   0);
  assert_non_null(strchr(want, ' '));
  pthread_mutex_lock(&f->last.mu);
  assert_string_equal(f->last.signature, want);
  pthread_mutex_unlock(&f->last.mu);
  got_free(&g);
}

/* The answer's body is not wanted: a large one is cut at the cap and the
 * status still counts. */
static void test_large_answer_still_delivered(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  char url[128];
  url_of(url, sizeof url, f->a.port, "/big");
  webhook_message m = message(url);
  got g;
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_DELIVERED);
  assert_int_equal(g.a.http_status, 200);
  got_free(&g);
}

typedef struct status_case {
  int status;
  webhook_outcome outcome;
  const char *error;
} status_case;

static void test_statuses(void **state) {
  fixture *f = *state;
  static const status_case cases[] = {
      {200, WEBHOOK_OUTCOME_DELIVERED, ""},
      {201, WEBHOOK_OUTCOME_DELIVERED, ""},
      {204, WEBHOOK_OUTCOME_DELIVERED, ""},
      {299, WEBHOOK_OUTCOME_DELIVERED, ""},
      {410, WEBHOOK_OUTCOME_GONE, "HTTP 410"},
      {400, WEBHOOK_OUTCOME_RETRY, "HTTP 400"},
      {404, WEBHOOK_OUTCOME_RETRY, "HTTP 404"},
      {429, WEBHOOK_OUTCOME_RETRY, "HTTP 429"},
      {500, WEBHOOK_OUTCOME_RETRY, "HTTP 500"},
      {503, WEBHOOK_OUTCOME_RETRY, "HTTP 503"},
      {301, WEBHOOK_OUTCOME_RETRY, "HTTP 301 (redirects are not followed)"},
      {302, WEBHOOK_OUTCOME_RETRY, "HTTP 302 (redirects are not followed)"},
      {307, WEBHOOK_OUTCOME_RETRY, "HTTP 307 (redirects are not followed)"},
      {308, WEBHOOK_OUTCOME_RETRY, "HTTP 308 (redirects are not followed)"},
  };
  webhook_config cfg = local_cfg();
  int b_before = atomic_load(&f->b.hits);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[32], url[128];
    snprintf(path, sizeof path, "/status/%d", cases[i].status);
    url_of(url, sizeof url, f->a.port, path);
    webhook_message m = message(url);
    int a_before = atomic_load(&f->a.hits);
    got g;
    send_to_end(f, &cfg, &m, &g);
    if (g.a.outcome != cases[i].outcome || strcmp(g.a.error, cases[i].error) != 0)
      fail_msg("%d: %s \"%s\", want %s \"%s\"", cases[i].status, webhook_outcome_name(g.a.outcome),
               g.a.error, webhook_outcome_name(cases[i].outcome), cases[i].error);
    assert_int_equal(g.a.http_status, cases[i].status);
    assert_int_equal(atomic_load(&f->a.hits), a_before + 1);
    got_free(&g);
  }
  assert_int_equal(atomic_load(&f->b.hits), b_before); /* no Location was followed */
}

static void test_timeout(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  cfg.timeout_ms = 300;
  char url[128];
  url_of(url, sizeof url, f->silent.port, "/hook");
  webhook_message m = message(url);
  int before = raw_accepted(&f->silent);
  got g;
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(g.a.error, "timeout");
  assert_int_equal(g.a.http_status, 0);
  assert_true(g.a.duration_ms >= 290);
  assert_int_equal(raw_accepted(&f->silent), before + 1);
  got_free(&g);
}

static void test_connection_refused(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  int port = closed_port();
  assert_true(port > 0);
  char url[128];
  url_of(url, sizeof url, port, "/hook");
  webhook_message m = message(url);
  got g;
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(g.a.error, "connection refused");
  assert_int_equal(g.a.http_status, 0);
  got_free(&g);
}

static void test_loopback_refused_without_allow_private(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  cfg.guard.allow_private = false;
  char url[128];
  url_of(url, sizeof url, f->a.port, "/ok");
  webhook_message m = message(url);
  int before = atomic_load(&f->a.hits);
  got g;
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(g.a.error, "refused: not a public address (127.0.0.1)");
  assert_int_equal(g.a.http_status, 0);
  assert_int_equal(atomic_load(&f->a.hits), before);
  got_free(&g);
}

/* The production classifier judges a non-loopback target. The hook lets A's
 * exact address and port through (standing in for a public receiver) and
 * leaves everything else to netguard_address_is_private; should the
 * classifier let a non-loopback address through, the hook still refuses it
 * (a test never leaves the machine) and counts it, which fails the test. */
typedef struct public_peer {
  int port;
  atomic_int asked;
  atomic_int escaped;
} public_peer;

static bool only_a_is_public(const struct sockaddr *sa, void *ctx) {
  public_peer *pp = ctx;
  atomic_fetch_add(&pp->asked, 1);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (ntohl(in->sin_addr.s_addr) == INADDR_LOOPBACK && ntohs(in->sin_port) == pp->port)
      return false;
  }
  if (netguard_address_is_private(sa)) return true;
  bool loopback = (sa->sa_family == AF_INET &&
                   (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127) ||
                  (sa->sa_family == AF_INET6 &&
                   IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr));
  if (!loopback) atomic_fetch_add(&pp->escaped, 1);
  return true;
}

static void test_private_address_refused_before_connecting(void **state) {
  fixture *f = *state;
  public_peer pp = {.port = f->a.port};
  atomic_init(&pp.asked, 0);
  atomic_init(&pp.escaped, 0);
  webhook_config cfg = local_cfg();
  cfg.guard.allow_private = false; /* ignored: the hook decides */
  cfg.guard.address_refused = only_a_is_public;
  cfg.guard.address_refused_ctx = &pp;
  cfg.timeout_ms = 3000;
  char url[128];
  got g;

  url_of(url, sizeof url, f->a.port, "/ok"); /* the hook's public peer */
  webhook_message m = message(url);
  send_to_end(f, &cfg, &m, &g);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_DELIVERED);
  got_free(&g);

  static const char *const targets[][2] = {
      {"http://10.0.0.1/hook", "10.0.0.1"},
      {"http://169.254.169.254/latest/meta-data/", "169.254.169.254"},
      {"http://[fe80::1]/hook", "fe80::1"},
      {"http://[::ffff:192.168.1.1]:8080/hook", "::ffff:192.168.1.1"},
  };
  for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
    int asked_before = atomic_load(&pp.asked);
    m = message(targets[i][0]);
    send_to_end(f, &cfg, &m, &g);
    assert_int_equal(atomic_load(&pp.escaped), 0);
    char want[128];
    snprintf(want, sizeof want, "refused: not a public address (%s)", targets[i][1]);
    if (g.a.outcome != WEBHOOK_OUTCOME_RETRY || strcmp(g.a.error, want) != 0)
      fail_msg("%s: %s \"%s\", want \"%s\"", targets[i][0], webhook_outcome_name(g.a.outcome),
               g.a.error, want);
    assert_int_equal(g.a.http_status, 0);
    assert_true(atomic_load(&pp.asked) > asked_before); /* judged at the socket */
    got_free(&g);
  }
}

/* A proxy in the environment would be the address connected to: it is
 * ignored, the target is reached directly. */
static void test_environment_proxy_ignored(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  char proxy[64], url[128];
  snprintf(proxy, sizeof proxy, "http://127.0.0.1:%d", f->proxy.port);
  url_of(url, sizeof url, f->a.port, "/ok");
  unsetenv("no_proxy"); /* else the proxy would be skipped for 127.0.0.1 anyway */
  unsetenv("NO_PROXY");
  setenv("http_proxy", proxy, 1);
  setenv("HTTPS_PROXY", proxy, 1);
  setenv("ALL_PROXY", proxy, 1);
  int a_before = atomic_load(&f->a.hits), proxy_before = raw_accepted(&f->proxy);
  webhook_message m = message(url);
  got g;
  send_to_end(f, &cfg, &m, &g);
  unsetenv("http_proxy");
  unsetenv("HTTPS_PROXY");
  unsetenv("ALL_PROXY");
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_DELIVERED);
  assert_int_equal(atomic_load(&f->a.hits), a_before + 1);
  assert_int_equal(raw_accepted(&f->proxy), proxy_before);
  got_free(&g);
}

/* What webhook_send refuses up front: done is never called, nothing is in
 * flight, nobody is contacted. */
static void test_refused_up_front(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  webhook_client *c = webhook_client_new(f->loop, &cfg);
  assert_non_null(c);
  char url[128];
  url_of(url, sizeof url, f->a.port, "/ok");
  int before = atomic_load(&f->a.hits);
  got g;
  got_init(&g);
  webhook_attempt a;

  webhook_message m = message(url);
  m.id = "msg_1\r\nX-Injected: 1";
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_int_equal(a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(a.error, "not a usable webhook id");
  m.id = "";
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);

  m = message(url);
  m.secret = "whsec_short";
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_int_equal(a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(a.error, "cannot sign: the secret is not valid");
  m = message(url);
  m.previous_secret = "not a secret";
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_string_equal(a.error, "cannot sign: the secret is not valid");

  m = message("ftp://127.0.0.1/x");
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_int_equal(a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_string_equal(a.error, "refused: ftp URLs are not sent");
  m = message("not a url");
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_int_equal(a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_non_null(strstr(a.error, "not a usable URL"));
  webhook_client_free(c);

  cfg.guard.allow_http = false; /* https only */
  c = webhook_client_new(f->loop, &cfg);
  assert_non_null(c);
  m = message(url);
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), -1);
  assert_string_equal(a.error, "refused: http URLs are not sent");
  assert_int_equal(webhook_client_in_flight(c), 0);
  webhook_client_free(c);

  assert_int_equal(g.calls, 0);
  assert_int_equal(atomic_load(&f->a.hits), before);
  assert_int_equal(curlloop_in_flight(f->loop), 0);
  got_free(&g);
}

static void test_max_in_flight(void **state) {
  fixture *f = *state;
  webhook_config cfg = local_cfg();
  cfg.max_in_flight = 2;
  cfg.timeout_ms = 500;
  webhook_client *c = webhook_client_new(f->loop, &cfg);
  assert_non_null(c);
  char url[128];
  url_of(url, sizeof url, f->silent.port, "/hook");
  webhook_message m = message(url);
  got g1, g2, g3;
  got_init(&g1);
  got_init(&g2);
  got_init(&g3);
  webhook_attempt a;
  assert_int_equal(webhook_send(c, &m, on_done, &g1, &a), 0);
  assert_int_equal(webhook_send(c, &m, on_done, &g2, &a), 0);
  assert_int_equal(webhook_client_in_flight(c), 2);
  assert_int_equal(webhook_send(c, &m, on_done, &g3, &a), -1);
  assert_int_equal(a.outcome, WEBHOOK_OUTCOME_CANCELED);
  assert_string_equal(a.error, "busy: 2 deliveries under way");
  assert_true(wait_count(&g1.mu, &g1.cv, &g1.calls, 1));
  assert_true(wait_count(&g2.mu, &g2.cv, &g2.calls, 1));
  assert_int_equal(g1.a.outcome, WEBHOOK_OUTCOME_RETRY);
  assert_int_equal(g3.calls, 0);
  assert_int_equal(webhook_client_in_flight(c), 0);
  /* A slot is free again. */
  assert_int_equal(webhook_send(c, &m, on_done, &g3, &a), 0);
  assert_true(wait_count(&g3.mu, &g3.cv, &g3.calls, 1));
  webhook_client_free(c);
  got_free(&g1);
  got_free(&g2);
  got_free(&g3);
}

static void test_canceled_on_loop_shutdown(void **state) {
  fixture *f = *state;
  curlloop_config lc = {0};
  curlloop *loop = curlloop_create(&lc);
  assert_non_null(loop);
  webhook_config cfg = local_cfg();
  cfg.timeout_ms = 60000;
  webhook_client *c = webhook_client_new(loop, &cfg);
  assert_non_null(c);
  char url[128];
  url_of(url, sizeof url, f->silent.port, "/hook");
  webhook_message m = message(url);
  int before = raw_accepted(&f->silent);
  got g;
  got_init(&g);
  webhook_attempt a;
  assert_int_equal(webhook_send(c, &m, on_done, &g, &a), 0);
  assert_true(raw_wait_accepted(&f->silent, before + 1));
  curlloop_destroy(loop);
  assert_int_equal(g.calls, 1);
  assert_int_equal(g.a.outcome, WEBHOOK_OUTCOME_CANCELED);
  assert_string_equal(g.a.error, "canceled: shutting down");
  assert_int_equal(webhook_client_in_flight(c), 0);
  webhook_client_free(c);
  got_free(&g);
}

/* --- the schedule --- */

static void test_schedule_defaults_and_jitter(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  webhook_config cfg;
  webhook_config_from(&cfg, &c);
  static const int64_t spec[] = {0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000};
  assert_int_equal(cfg.n_retry_schedule, 8);
  assert_int_equal(webhook_next_delay_ms(&cfg, 0), 0); /* the first attempt: at once */
  for (int k = 1; k < 8; k++) {
    int64_t d = webhook_next_delay_ms(&cfg, k);
    if (d < spec[k] || d > spec[k] + spec[k] / 10)
      fail_msg("after %d attempts: %lld ms, want %lld..%lld", k, (long long)d,
               (long long)spec[k], (long long)(spec[k] + spec[k] / 10));
  }
  assert_int_equal(webhook_next_delay_ms(&cfg, 8), -1); /* used up: failed for good */
  assert_int_equal(webhook_next_delay_ms(&cfg, 100), -1);

  /* The jitter spreads: 200 draws of the 5 s step are not one value, and all
   * stay within 5000..5500. */
  int64_t lo = INT64_MAX, hi = 0;
  for (int i = 0; i < 200; i++) {
    int64_t d = webhook_next_delay_ms(&cfg, 1);
    lo = d < lo ? d : lo;
    hi = d > hi ? d : hi;
  }
  assert_true(lo >= 5000 && hi <= 5500);
  assert_true(hi - lo >= 100);

  /* The configuration carries over. */
  c.webhook_timeout_ms = 1234;
  c.webhook_connect_timeout_ms = 321;
  c.n_webhook_retry_schedule = 2;
  c.webhook_retry_schedule_ms[1] = 9;
  c.webhook_max_in_flight = 7;
  c.webhook_allow_private_networks = true;
  c.webhook_allow_http = true;
  webhook_config_from(&cfg, &c);
  assert_int_equal(cfg.timeout_ms, 1234);
  assert_int_equal(cfg.connect_timeout_ms, 321);
  assert_int_equal(cfg.max_in_flight, 7);
  assert_true(cfg.guard.allow_private && cfg.guard.allow_http);
  assert_null(cfg.guard.address_refused);
  assert_int_equal(webhook_next_delay_ms(&cfg, 0), 0);
  assert_int_equal(webhook_next_delay_ms(&cfg, 1), 9); /* a tenth of 9 ms rounds to nothing */
  assert_int_equal(webhook_next_delay_ms(&cfg, 2), -1);
}

/* --- the URL check --- */

static void test_url_check(void **state) {
  (void)state;
  imgate_config c;
  config_defaults(&c);
  webhook_config cfg;
  webhook_config_from(&cfg, &c);
  char err[256];
  static const char *const fine[] = {
      "https://hooks.example.com/imgate",
      "https://hooks.example.com:8443/a/b?c=d",
      "https://user:pw@hooks.example.com/x",
      "https://93.184.215.14/hook",
      "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
      "HTTPS://Hooks.Example.COM/",
  };
  for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++)
    if (!webhook_url_check(&cfg, fine[i], err, sizeof err)) fail_msg("%s: %s", fine[i], err);

  static const char *const refused[][2] = {
      {"", "webhook_url is empty"},
      {"http://hooks.example.com/", "webhook_url must be an https URL, not http"},
      {"ftp://hooks.example.com/", "webhook_url must be an https URL, not ftp"},
      {"javascript:alert(1)", "webhook_url "},
      {"hooks.example.com/x", "webhook_url "},
      {"https://exa mple.com/", "webhook_url is not a usable URL"},
      {"https://example.com:99999/", "webhook_url is not a usable URL"},
      {"https://10.0.0.1/hook", "webhook_url points at 10.0.0.1, not a public address"},
      {"https://127.0.0.1:8080/", "webhook_url points at 127.0.0.1, not a public address"},
      {"https://2130706433/", "webhook_url points at 127.0.0.1, not a public address"},
      {"https://0x7f.1/", "webhook_url points at 127.0.0.1, not a public address"},
      {"https://[::1]/", "webhook_url points at [::1], not a public address"},
      {"https://[::ffff:169.254.169.254]/", "not a public address"},
      {"https://169.254.169.254/latest", "not a public address"},
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    err[0] = '\0';
    if (webhook_url_check(&cfg, refused[i][0], err, sizeof err))
      fail_msg("accepted %s", refused[i][0]);
    if (!strstr(err, refused[i][1]))
      fail_msg("%s: \"%s\", want \"%s\"", refused[i][0], err, refused[i][1]);
  }
  assert_false(webhook_url_check(&cfg, NULL, err, sizeof err));

  char longest[WEBHOOK_URL_MAX + 2];
  size_t prefix = strlen("https://example.com/");
  memcpy(longest, "https://example.com/", prefix);
  memset(longest + prefix, 'a', WEBHOOK_URL_MAX - prefix);
  longest[WEBHOOK_URL_MAX] = '\0';
  assert_true(webhook_url_check(&cfg, longest, err, sizeof err));
  longest[WEBHOOK_URL_MAX] = 'a';
  longest[WEBHOOK_URL_MAX + 1] = '\0';
  assert_false(webhook_url_check(&cfg, longest, err, sizeof err));
  assert_string_equal(err, "webhook_url is longer than 2048 characters");

  /* What the switches allow. */
  cfg.guard.allow_http = true;
  assert_true(webhook_url_check(&cfg, "http://hooks.example.com/", err, sizeof err));
  assert_false(webhook_url_check(&cfg, "ftp://hooks.example.com/", err, sizeof err));
  assert_string_equal(err, "webhook_url must be an http or https URL, not ftp");
  cfg.guard.allow_private = true;
  assert_true(webhook_url_check(&cfg, "http://127.0.0.1:8080/hook", err, sizeof err));
  assert_true(webhook_url_check(&cfg, "https://10.0.0.1/hook", err, sizeof err));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_delivered_signed),
      cmocka_unit_test(test_rotation_signs_twice),
      cmocka_unit_test(test_large_answer_still_delivered),
      cmocka_unit_test(test_statuses),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_connection_refused),
      cmocka_unit_test(test_loopback_refused_without_allow_private),
      cmocka_unit_test(test_private_address_refused_before_connecting),
      cmocka_unit_test(test_environment_proxy_ignored),
      cmocka_unit_test(test_refused_up_front),
      cmocka_unit_test(test_max_in_flight),
      cmocka_unit_test(test_canceled_on_loop_shutdown),
      cmocka_unit_test(test_schedule_defaults_and_jitter),
      cmocka_unit_test(test_url_check),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
