/* webhook_probe.c - the webhook signer and client, driven from the e2e tests
 * (tests/e2e/test_webhook_receiver.py), so they can be checked against the
 * receiver that verifies with the reference verifier. Not installed.
 *
 *   webhook_probe sign --secret S [--previous P] --id ID --timestamp TS < payload
 *       prints the webhook-signature header value made by webhook/sign.c
 *   webhook_probe send --url U --id ID --secret S [--previous P] [--timestamp TS]
 *                      [--timeout-ms N] [--connect-timeout-ms N] [--allow-http]
 *                      [--allow-private] [--public-port N] < payload
 *       makes one attempt with webhook/client.c over a real curl loop and prints it
 *       as JSON: {"started", "outcome", "http_status", "error", "timestamp_s",
 *       "duration_ms", "asked", "escaped"}
 *
 * --public-port N: the address policy hook the unit tests use. 127.0.0.1:N
 * stands in for a public receiver; every other address is judged by the
 * production classifier (netguard_address_is_private), and should it let a
 * non-loopback address through, the hook refuses it anyway (nothing leaves the
 * machine) and counts it in "escaped". "asked" counts the addresses judged.
 * Exit status: 0 when the probe ran (whatever the outcome), 2 on bad usage. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "upstream/curlloop.h"
#include "upstream/netguard.h"
#include "util/buf.h"
#include "util/log.h"
#include "webhook/client.h"
#include "webhook/sign.h"

typedef struct options {
  const char *url, *id, *secret, *previous;
  long long timestamp_s;
  long timeout_ms, connect_timeout_ms;
  bool allow_http, allow_private;
  int public_port; /* 0: no hook */
} options;

static int usage(void) {
  fprintf(stderr, "usage: webhook_probe sign|send [options] < payload (see the source)\n");
  return 2;
}

static bool parse(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--allow-http")) o->allow_http = true;
    else if (!strcmp(a, "--allow-private")) o->allow_private = true;
    else if (!v) return false;
    else if (!strcmp(a, "--url")) o->url = argv[++i];
    else if (!strcmp(a, "--id")) o->id = argv[++i];
    else if (!strcmp(a, "--secret")) o->secret = argv[++i];
    else if (!strcmp(a, "--previous")) o->previous = argv[++i];
    else if (!strcmp(a, "--timestamp")) o->timestamp_s = atoll(argv[++i]);
    else if (!strcmp(a, "--timeout-ms")) o->timeout_ms = atol(argv[++i]);
    else if (!strcmp(a, "--connect-timeout-ms")) o->connect_timeout_ms = atol(argv[++i]);
    else if (!strcmp(a, "--public-port")) o->public_port = atoi(argv[++i]);
    else return false;
  }
  return o->id && o->secret;
}

static bool read_stdin(buf *b) {
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
    if (!buf_append(b, chunk, n)) return false;
  return !ferror(stdin);
}

/* --- the address hook --- */

typedef struct hook_state {
  int public_port;
  atomic_int asked, escaped;
} hook_state;

static bool is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
  return false;
}

static bool refuse_but_public_port(const struct sockaddr *sa, void *ctx) {
  hook_state *h = ctx;
  atomic_fetch_add(&h->asked, 1);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (ntohl(in->sin_addr.s_addr) == INADDR_LOOPBACK && ntohs(in->sin_port) == h->public_port)
      return false;
  }
  if (netguard_address_is_private(sa)) return true;
  if (!is_loopback(sa)) atomic_fetch_add(&h->escaped, 1);
  return true;
}

/* --- sending --- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  webhook_attempt a;
} waiter;

static void on_done(void *ctx, const webhook_attempt *a) {
  waiter *w = ctx;
  pthread_mutex_lock(&w->mu);
  w->a = *a;
  w->done = true;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static int run_send(const options *o, const buf *payload) {
  hook_state hook = {.public_port = o->public_port};
  atomic_init(&hook.asked, 0);
  atomic_init(&hook.escaped, 0);
  webhook_config cfg = {.timeout_ms = o->timeout_ms,
                        .connect_timeout_ms = o->connect_timeout_ms,
                        .retry_schedule_ms = {0},
                        .n_retry_schedule = 1,
                        .guard = {.allow_private = o->allow_private, .allow_http = o->allow_http}};
  if (o->public_port) {
    cfg.guard.address_refused = refuse_but_public_port;
    cfg.guard.address_refused_ctx = &hook;
  }
  curlloop_config lc = {0};
  curlloop *loop = curlloop_create(&lc);
  webhook_client *client = loop ? webhook_client_new(loop, &cfg) : NULL;
  if (!client) {
    fprintf(stderr, "webhook_probe: cannot start the curl loop\n");
    curlloop_destroy(loop);
    return 1;
  }
  waiter w = {.done = false};
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  webhook_message m = {.url = o->url,
                       .id = o->id,
                       .payload = payload->data ? payload->data : "",
                       .payload_len = payload->len,
                       .secret = o->secret,
                       .previous_secret = o->previous,
                       .timestamp_s = o->timestamp_s};
  webhook_attempt immediate;
  bool started = webhook_send(client, &m, on_done, &w, &immediate) == 0;
  if (started) {
    /* The attempt ends by its own timeout; the test's deadline covers a hang here. */
    pthread_mutex_lock(&w.mu);
    while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
  }
  curlloop_destroy(loop);
  webhook_client_free(client);
  const webhook_attempt *a = started ? &w.a : &immediate;
  json_t *out = json_pack("{s:b, s:s, s:i, s:s, s:I, s:I, s:i, s:i}", "started", started,
                          "outcome", webhook_outcome_name(a->outcome), "http_status",
                          a->http_status, "error", a->error, "timestamp_s",
                          (json_int_t)a->timestamp_s, "duration_ms", (json_int_t)a->duration_ms,
                          "asked", atomic_load(&hook.asked), "escaped",
                          atomic_load(&hook.escaped));
  if (out) json_dumpf(out, stdout, JSON_COMPACT);
  printf("\n");
  json_decref(out);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return out ? 0 : 1;
}

static int run_sign(const options *o, const buf *payload) {
  char header[WEBHOOK_SIGNATURE_HEADER_MAX];
  if (o->timestamp_s < 0 ||
      webhook_signature_header(o->secret, o->previous, o->id, o->timestamp_s,
                               payload->data ? payload->data : "", payload->len, header) != 0) {
    fprintf(stderr, "webhook_probe: cannot sign (is the secret valid?)\n");
    return 1;
  }
  printf("%s\n", header);
  return 0;
}

int main(int argc, char **argv) {
  log_set_level(LOG_WARN);
  options o;
  if (argc < 2 || !parse(argc, argv, &o)) return usage();
  bool send = strcmp(argv[1], "send") == 0;
  if (!send && strcmp(argv[1], "sign") != 0) return usage();
  if (send && !o.url) return usage();
  buf payload = BUF_INIT;
  if (!read_stdin(&payload)) {
    fprintf(stderr, "webhook_probe: cannot read the payload\n");
    buf_free(&payload);
    return 1;
  }
  int rc = send ? run_send(&o, &payload) : run_sign(&o, &payload);
  buf_free(&payload);
  return rc;
}
