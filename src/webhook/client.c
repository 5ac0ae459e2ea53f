/* client.c - one webhook delivery attempt on the curl loop; the retry
 * schedule; the URL check. */
#include "webhook/client.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "config.h"
#include "util/timeutil.h"
#include "webhook/sign.h"

#define DEFAULT_TIMEOUT_MS 10000L
#define DEFAULT_CONNECT_TIMEOUT_MS 5000L

_Static_assert(CONFIG_MAX_WEBHOOK_ATTEMPTS <= WEBHOOK_MAX_ATTEMPTS,
               "a configured schedule must fit a webhook_config");

struct webhook_client {
  curlloop *loop;
  webhook_config cfg;
  atomic_int in_flight;
};

/* --- configuration and schedule --- */

void webhook_config_from(webhook_config *out, const struct imgate_config *c) {
  memset(out, 0, sizeof *out);
  out->timeout_ms = c->webhook_timeout_ms;
  out->connect_timeout_ms = c->webhook_connect_timeout_ms;
  int n = c->n_webhook_retry_schedule;
  assert(n >= 1 && n <= WEBHOOK_MAX_ATTEMPTS);
  memcpy(out->retry_schedule_ms, c->webhook_retry_schedule_ms, (size_t)n * sizeof(int));
  out->n_retry_schedule = n;
  out->max_in_flight = c->webhook_max_in_flight;
  out->guard.allow_private = c->webhook_allow_private_networks;
  out->guard.allow_http = c->webhook_allow_http;
}

/* Uniform in 0..limit. RAND_bytes is thread-safe; should it ever fail, no
 * jitter is still a correct delay. */
static int64_t jitter_up_to(int64_t limit) {
  uint32_t r = 0;
  if (limit <= 0 || RAND_bytes((unsigned char *)&r, sizeof r) != 1) return 0;
  return (int64_t)(((uint64_t)r * (uint64_t)(limit + 1)) >> 32);
}

int64_t webhook_next_delay_ms(const webhook_config *cfg, int attempts_made) {
  assert(cfg && cfg->n_retry_schedule >= 1 && cfg->n_retry_schedule <= WEBHOOK_MAX_ATTEMPTS);
  assert(attempts_made >= 0);
  if (attempts_made >= cfg->n_retry_schedule) return -1;
  int64_t base = cfg->retry_schedule_ms[attempts_made];
  return base + jitter_up_to(base / 10);
}

/* --- the URL check --- */

static void set_err(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t size, const char *fmt, ...) {
  if (!size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, size, fmt, ap);
  va_end(ap);
}

/* host as libcurl gives it ("[::1]" or "10.0.0.1" or a name) into a socket
 * address with port; false when it is a name, not an address. */
static bool literal_address(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  size_t len = strlen(host);
  if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
    char inner[INET6_ADDRSTRLEN];
    if (len - 2 >= sizeof inner) return false;
    memcpy(inner, host + 1, len - 2);
    inner[len - 2] = '\0';
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    return inet_pton(AF_INET6, inner, &in6->sin6_addr) == 1;
  }
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  in->sin_family = AF_INET;
  in->sin_port = htons((uint16_t)port);
  return inet_pton(AF_INET, host, &in->sin_addr) == 1;
}

/* The parsed URL's host, judged when it is an address literal. libcurl's
 * parser has already turned numeric IPv4 forms (2130706433, 0x7f.1) into
 * dotted quads. */
static bool host_acceptable(const webhook_config *cfg, const char *url, char *err,
                            size_t err_size) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL;
  bool ok = false;
  if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0]) {
    set_err(err, err_size, "webhook_url has no host");
  } else {
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    struct sockaddr_storage ss;
    if (literal_address(host, port ? atoi(port) : 0, &ss) &&
        netguard_refuses(&cfg->guard, (const struct sockaddr *)&ss))
      set_err(err, err_size, "webhook_url points at %s, not a public address", host);
    else
      ok = true;
  }
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return ok;
}

bool webhook_url_check(const webhook_config *cfg, const char *url, char *err, size_t err_size) {
  assert(cfg);
  if (!url || !url[0]) {
    set_err(err, err_size, "webhook_url is empty");
    return false;
  }
  if (strlen(url) > WEBHOOK_URL_MAX) {
    set_err(err, err_size, "webhook_url is longer than %d characters", WEBHOOK_URL_MAX);
    return false;
  }
  char detail[96];
  switch (netguard_check_url(&cfg->guard, url, NULL, detail, sizeof detail)) {
  case NETGUARD_URL_OK:
    break;
  case NETGUARD_URL_UNUSABLE:
    set_err(err, err_size, "webhook_url is not a usable URL (%s)", detail);
    return false;
  case NETGUARD_URL_SCHEME:
    set_err(err, err_size, "webhook_url must be %s, not %s",
            cfg->guard.allow_http ? "an http or https URL" : "an https URL", detail);
    return false;
  }
  return host_acceptable(cfg, url, err, err_size);
}

const char *webhook_outcome_name(webhook_outcome o) {
  switch (o) {
  case WEBHOOK_OUTCOME_DELIVERED: return "delivered";
  case WEBHOOK_OUTCOME_GONE: return "gone";
  case WEBHOOK_OUTCOME_RETRY: return "retry";
  case WEBHOOK_OUTCOME_CANCELED: return "canceled";
  }
  return "unknown";
}

/* --- the client --- */

webhook_client *webhook_client_new(curlloop *loop, const webhook_config *cfg) {
  assert(loop && cfg);
  assert(cfg->n_retry_schedule >= 1 && cfg->n_retry_schedule <= WEBHOOK_MAX_ATTEMPTS);
  webhook_client *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->loop = loop;
  c->cfg = *cfg;
  if (c->cfg.timeout_ms <= 0) c->cfg.timeout_ms = DEFAULT_TIMEOUT_MS;
  if (c->cfg.connect_timeout_ms <= 0) c->cfg.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
  atomic_init(&c->in_flight, 0);
  return c;
}

void webhook_client_free(webhook_client *c) {
  if (!c) return;
  assert(atomic_load(&c->in_flight) == 0);
  free(c);
}

size_t webhook_client_in_flight(const webhook_client *c) {
  int n = atomic_load(&((webhook_client *)c)->in_flight);
  return n > 0 ? (size_t)n : 0;
}

/* One attempt under way. Freed on the loop thread once the easy handle,
 * whose open-socket callback points at guard, is gone. */
typedef struct webhook_job {
  webhook_client *client;
  webhook_done_fn done;
  void *ctx;
  struct curl_slist *headers;
  netguard guard;
  int64_t started_ms;   /* time_now_ms */
  int64_t started_mono; /* time_mono_ms */
  int64_t timestamp_s;
} webhook_job;

static void attempt_init(webhook_attempt *a, int64_t started_ms) {
  memset(a, 0, sizeof *a);
  a->started_ms = started_ms;
}

static void attempt_fail(webhook_attempt *a, webhook_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void attempt_fail(webhook_attempt *a, webhook_outcome o, const char *fmt, ...) {
  a->outcome = o;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->error, sizeof a->error, fmt, ap);
  va_end(ap);
}

/* An answer arrived: its status decides, whatever its body (which may have
 * been cut at WEBHOOK_RESPONSE_CAP). */
static void judge_status(webhook_attempt *a, long status) {
  a->http_status = (int)status;
  if (status >= 200 && status < 300) {
    a->outcome = WEBHOOK_OUTCOME_DELIVERED;
    a->error[0] = '\0';
  } else if (status == 410) {
    attempt_fail(a, WEBHOOK_OUTCOME_GONE, "HTTP 410");
  } else if (status >= 300 && status < 400) {
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "HTTP %ld (redirects are not followed)", status);
  } else {
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "HTTP %ld", status);
  }
}

/* No answer: a short reason from libcurl's code (its own message is long
 * and names addresses and timings the attempt row shows anyway). */
static void judge_failure(webhook_attempt *a, CURL *easy, const curlloop_result *res,
                          const netguard *guard) {
  const char *refused = netguard_refused_address(guard);
  long os_errno = 0, request_bytes = 0;
  curl_off_t connect_us = 0;
  curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &os_errno);
  curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connect_us);
  curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_bytes);
  bool connected = connect_us > 0 || request_bytes > 0;
  if (refused) {
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "refused: not a public address (%s)", refused);
    return;
  }
  switch (res->code) {
  case CURLE_OPERATION_TIMEDOUT:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, connected ? "timeout" : "connect timeout");
    return;
  case CURLE_COULDNT_CONNECT:
    if (os_errno == ECONNREFUSED)
      attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "connection refused");
    else
      attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "connection failed: %s", res->error);
    return;
  case CURLE_COULDNT_RESOLVE_HOST:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "host not found");
    return;
  case CURLE_GOT_NOTHING:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "empty reply");
    return;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "TLS: %s", res->error);
    return;
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "connection lost: %s", res->error);
    return;
  default:
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "%s", res->error[0] ? res->error : "network error");
    return;
  }
}

static void on_attempt_done(void *ctx, CURL *easy, curlloop_result *res) {
  webhook_job *job = ctx;
  webhook_attempt a;
  attempt_init(&a, job->started_ms);
  a.timestamp_s = job->timestamp_s;
  if (res->cancelled) {
    attempt_fail(&a, WEBHOOK_OUTCOME_CANCELED, "canceled: shutting down");
  } else if (res->http_status > 0 && (res->code == CURLE_OK || res->body_truncated)) {
    judge_status(&a, res->http_status);
  } else {
    judge_failure(&a, easy, res, &job->guard);
  }
  a.duration_ms = time_mono_ms() - job->started_mono;
  curl_easy_cleanup(easy);
  curl_slist_free_all(job->headers);
  webhook_client *c = job->client;
  webhook_done_fn done = job->done;
  void *done_ctx = job->ctx;
  free(job);
  /* Counted down first, so done may start the next attempt at once. */
  atomic_fetch_sub(&c->in_flight, 1);
  done(done_ctx, &a);
}

static bool id_usable(const char *id) {
  size_t n = id ? strlen(id) : 0;
  if (n == 0 || n > WEBHOOK_ID_MAX) return false;
  /* Visible ASCII only: the id goes into a header line and into what is signed. */
  for (size_t i = 0; i < n; i++)
    if (id[i] < 0x21 || id[i] > 0x7e) return false;
  return true;
}

static bool add_header(struct curl_slist **list, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static bool add_header(struct curl_slist **list, const char *fmt, ...) {
  char line[WEBHOOK_SIGNATURE_HEADER_MAX + WEBHOOK_ID_MAX + 32];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof line) return false;
  struct curl_slist *grown = curl_slist_append(*list, line);
  if (!grown) return false;
  *list = grown;
  return true;
}

/* The request: headers signed for this attempt, the body copied, the guard. */
static bool prepare(webhook_client *c, webhook_job *job, CURL *e, const webhook_message *m,
                    const char *url, const char *signature) {
  bool ok = add_header(&job->headers, "Content-Type: application/json") &&
            add_header(&job->headers, "webhook-id: %s", m->id) &&
            add_header(&job->headers, "webhook-timestamp: %" PRId64, job->timestamp_s) &&
            add_header(&job->headers, "webhook-signature: %s", signature) &&
            /* No 100-continue round trip before a large payload. */
            add_header(&job->headers, "Expect:");
  return ok && netguard_apply(e, &job->guard, &c->cfg.guard) &&
         curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_POST, 1L) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)m->payload_len) ==
             CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, m->payload_len ? m->payload : "") ==
             CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_HTTPHEADER, job->headers) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_USERAGENT, WEBHOOK_USER_AGENT) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->cfg.timeout_ms) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->cfg.connect_timeout_ms) == CURLE_OK;
}

/* Takes a slot under max_in_flight; false when all are taken. */
static bool take_slot(webhook_client *c) {
  int n = atomic_fetch_add(&c->in_flight, 1);
  if (c->cfg.max_in_flight > 0 && n >= c->cfg.max_in_flight) {
    atomic_fetch_sub(&c->in_flight, 1);
    return false;
  }
  return true;
}

int webhook_send(webhook_client *c, const webhook_message *m, webhook_done_fn done, void *ctx,
                 webhook_attempt *immediate) {
  assert(c && m && done);
  webhook_attempt spare;
  webhook_attempt *a = immediate ? immediate : &spare;
  attempt_init(a, time_now_ms());
  int64_t started_mono = time_mono_ms();
  if (!id_usable(m->id)) {
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "not a usable webhook id");
    return -1;
  }
  char *url = NULL, detail[96];
  netguard_url_status us = netguard_check_url(&c->cfg.guard, m->url ? m->url : "", &url, detail,
                                              sizeof detail);
  if (us != NETGUARD_URL_OK) {
    if (us == NETGUARD_URL_SCHEME)
      attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "refused: %s URLs are not sent", detail);
    else
      attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "not a usable URL (%s)", detail);
    return -1;
  }
  int64_t ts = m->timestamp_s > 0 ? m->timestamp_s : a->started_ms / 1000;
  char signature[WEBHOOK_SIGNATURE_HEADER_MAX];
  if (webhook_signature_header(m->secret, m->previous_secret, m->id, ts, m->payload,
                               m->payload_len, signature) != 0) {
    curl_free(url);
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "cannot sign: the secret is not valid");
    return -1;
  }
  if (!take_slot(c)) {
    curl_free(url);
    attempt_fail(a, WEBHOOK_OUTCOME_CANCELED, "busy: %d deliveries under way",
                 c->cfg.max_in_flight);
    return -1;
  }
  webhook_job *job = calloc(1, sizeof *job);
  CURL *e = job ? curlloop_easy_new(c->loop) : NULL;
  bool ok = e != NULL;
  if (ok) {
    job->client = c;
    job->done = done;
    job->ctx = ctx;
    job->started_ms = a->started_ms;
    job->started_mono = started_mono;
    job->timestamp_s = ts;
    ok = prepare(c, job, e, m, url, signature);
    if (!ok) attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "out of memory");
  } else {
    attempt_fail(a, WEBHOOK_OUTCOME_RETRY, "out of memory");
  }
  curl_free(url);
  if (ok && curlloop_submit(c->loop, e, WEBHOOK_RESPONSE_CAP, on_attempt_done, job) != 0) {
    attempt_fail(a, WEBHOOK_OUTCOME_CANCELED, "canceled: the curl loop is shutting down");
    ok = false;
  }
  if (!ok) {
    if (e) curl_easy_cleanup(e);
    if (job) curl_slist_free_all(job->headers);
    free(job);
    atomic_fetch_sub(&c->in_flight, 1);
    return -1;
  }
  return 0;
}
