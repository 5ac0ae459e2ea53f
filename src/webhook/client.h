/* client.h - webhook deliveries over the shared curl loop: one attempt at a
 * time, the retry schedule, and the check of a webhook URL.
 *
 * An attempt POSTs the payload (application/json) with the Standard Webhooks
 * headers (webhook/sign.h) and `User-Agent: imgate-webhooks`, through the SSRF
 * guard (upstream/netguard.h: the address connected to must be public unless
 * allowed, a fresh connection unless guard.reuse_connections, no proxy, https
 * only unless allowed). guard.reuse_connections is for a loop of the client's
 * own (the dispatcher's), never for a loop other users share.
 * Redirects are not followed: a 3xx is a failed attempt. The answer's body
 * is read up to WEBHOOK_RESPONSE_CAP bytes and ignored. What an attempt
 * means for the delivery:
 *   2xx                    DELIVERED  (done)
 *   410 Gone               GONE       (the receiver asks us to stop: done for good)
 *   anything else, or no answer (timeout, refused, TLS...)  RETRY
 *   the loop shut down before the attempt ended             CANCELED (not an attempt)
 * The caller (the dispatcher) keeps the state: attempts made, when the next
 * one is due (webhook_next_delay_ms), what to record. */
#ifndef IMGATE_WEBHOOK_CLIENT_H
#define IMGATE_WEBHOOK_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upstream/curlloop.h"
#include "upstream/netguard.h"

#define WEBHOOK_MAX_ATTEMPTS 16     /* entries of a retry schedule */
#define WEBHOOK_URL_MAX 2048        /* characters of a webhook URL */
#define WEBHOOK_ID_MAX 255          /* characters of a webhook-id */
#define WEBHOOK_RESPONSE_CAP 4096   /* bytes of an answer's body read (and ignored) */
#define WEBHOOK_USER_AGENT "imgate-webhooks"

struct imgate_config;

typedef struct webhook_config {
  long timeout_ms;         /* one attempt, connection included; <= 0: 10000 */
  long connect_timeout_ms; /* <= 0: 5000 */
  /* Delay before attempt i+1 after attempt i ended (entry 0: before the first,
   * after the event); the count is the number of attempts in all. */
  int retry_schedule_ms[WEBHOOK_MAX_ATTEMPTS];
  int n_retry_schedule;    /* 1..WEBHOOK_MAX_ATTEMPTS */
  int max_in_flight;       /* attempts under way at once; <= 0: unlimited */
  netguard_config guard;   /* allow_private, allow_http, and the tests' address hook */
} webhook_config;

/* The webhook_config of a loaded configuration (its `webhooks` keys). */
void webhook_config_from(webhook_config *out, const struct imgate_config *c);

/* How long to wait before the next attempt, given the attempts made so far
 * (0: none yet), or -1 when the schedule is used up (the delivery has
 * failed for good). The schedule's delay plus a jitter of up to a tenth of
 * it (never less than the schedule says), so the deliveries that failed
 * together against one receiver do not all come back in the same second.
 * Thread-safe. */
int64_t webhook_next_delay_ms(const webhook_config *cfg, int attempts_made);

/* Checks a webhook URL when a client hands it over, before anything is
 * stored: at most WEBHOOK_URL_MAX characters, parsed by libcurl's parser,
 * https (http too with guard.allow_http), a host, and when the host is an
 * address literal, an address the guard would connect to. A host name is
 * not resolved here (no DNS on the request path): the guard judges its
 * addresses at each connection. True when fine; else false with err
 * ("webhook_url ...", for people) filled. */
bool webhook_url_check(const webhook_config *cfg, const char *url, char *err, size_t err_size);

typedef enum {
  WEBHOOK_OUTCOME_DELIVERED = 0, /* 2xx */
  WEBHOOK_OUTCOME_GONE,          /* 410: stop for good */
  WEBHOOK_OUTCOME_RETRY,         /* a failed attempt: try again on the schedule */
  WEBHOOK_OUTCOME_CANCELED,      /* no attempt was made or finished (shutting down, or
                                    max_in_flight reached): record nothing */
} webhook_outcome;

/* "delivered", "gone", "retry", "canceled". */
const char *webhook_outcome_name(webhook_outcome o);

typedef struct webhook_attempt {
  webhook_outcome outcome;
  int http_status;      /* the answer's status; 0 when none came */
  int64_t started_ms;   /* unix ms when the attempt was handed to the loop */
  int64_t duration_ms;  /* from then until the outcome */
  int64_t timestamp_s;  /* the webhook-timestamp sent (0 when nothing was sent) */
  /* "" when DELIVERED; else short, for people: "HTTP 500", "HTTP 302 (redirects
   * are not followed)", "timeout", "connect timeout", "connection refused",
   * "refused: not a public address (10.0.0.1)", "TLS: ...", "canceled: shutting
   * down" ... */
  char error[128];
} webhook_attempt;

/* One attempt to make. webhook_send copies what it needs: the strings and
 * the payload may go as soon as it returns. */
typedef struct webhook_message {
  const char *url;
  const char *id;              /* webhook-id: 1..WEBHOOK_ID_MAX visible ASCII characters */
  const void *payload;         /* the JSON body, exactly as signed */
  size_t payload_len;
  const char *secret;          /* the account's current "whsec_..." */
  const char *previous_secret; /* NULL or "": no rotation window open; else it signs too */
  int64_t timestamp_s;         /* webhook-timestamp; 0: now */
} webhook_message;

/* Runs on the curl loop's thread (quick, non-blocking). a is valid during
 * the call only. */
typedef void (*webhook_done_fn)(void *ctx, const webhook_attempt *a);

typedef struct webhook_client webhook_client;

/* A client sending through loop (which must outlive it) with cfg (copied).
 * NULL when memory runs out. */
webhook_client *webhook_client_new(curlloop *loop, const webhook_config *cfg);

/* Frees c. No attempt may be under way: destroy the loop first (its
 * shutdown ends every attempt with CANCELED), or wait for in_flight 0. */
void webhook_client_free(webhook_client *c);

/* Starts one attempt. Returns 0: done will be called exactly once, on the
 * loop thread. Or -1 when it could not start: done is NOT called and
 * *immediate holds the outcome instead: RETRY for an attempt that failed
 * before any connection (a URL the check refuses, a secret that cannot
 * sign, a malformed id, out of memory), CANCELED when the loop is shutting
 * down or max_in_flight attempts are under way (nothing to record). Any
 * thread. */
int webhook_send(webhook_client *c, const webhook_message *m, webhook_done_fn done, void *ctx,
                 webhook_attempt *immediate);

/* Attempts started and not yet called back. */
size_t webhook_client_in_flight(const webhook_client *c);

#endif
