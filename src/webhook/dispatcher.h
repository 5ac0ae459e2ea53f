/* dispatcher.h - the webhook dispatcher: turns the store's outbox rows into
 * signed deliveries, retried on the schedule until they end.
 *
 * One thread of its own. It claims due deliveries in batches (webhook_claim,
 * with a lease a bit longer than an attempt can take, and never more than
 * fit under webhook.max_in_flight), and for each one:
 * - the payload: the one stored by an earlier attempt, else rendered now by
 *   the owner's render function from the task (task_get) and stored with the
 *   first attempt's record, so every retry sends the same bytes under the
 *   same webhook-id;
 * - the account's secrets (webhook_secret_get; an account without one gets
 *   a fresh secret; the previous one signs too while its window is open),
 *   kept per account for secret_cache_ms, so a burst of deliveries does not
 *   read the same secret thousands of times (a rotation empties the cache:
 *   webhook_dispatcher_secrets_changed);
 * - one attempt (webhook/client.h) on a curl loop the dispatcher creates and
 *   owns. Every transfer of that loop goes through the SSRF guard with one
 *   policy, so its connections are kept alive and reused
 *   (netguard_config.reuse_connections): a receiver is not sent a new TCP
 *   (and TLS) connection per delivery, and thousands of deliveries a second
 *   do not leave thousands of sockets in TIME_WAIT.
 * Outcomes come back on the loop thread, are queued there (no store access
 * on that thread), and the dispatcher thread records them in batches
 * (webhook_record): DELIVERED (2xx), GONE (410), PENDING again at the
 * schedule's next delay (webhook_next_delay_ms), or FAILED once the schedule
 * is used up. A delivery whose task no longer exists, or whose payload cannot
 * be rendered, is recorded FAILED with the reason. An attempt the loop
 * canceled (at stop) records nothing: its lease brings it back.
 *
 * It wakes when told (webhook_dispatcher_notify), when outcomes arrive, at
 * the soonest retry it scheduled itself, and every poll_ms for rows it
 * cannot know about (leases of a dead process running out, rows from before
 * a restart). Idle, it sleeps on a condition variable: one claim per poll_ms.
 *
 * Delivery is at least once: a process that dies after a receiver answered
 * but before the record committed sends the delivery again after the lease,
 * with the same webhook-id (receivers deduplicate on it).
 *
 * Wiring (the owner, main.c): create it after the store is open (and before
 * anything that calls notify: the engine, the HTTP endpoints); stop it after
 * those have stopped (the engine's drain may still finish tasks whose
 * deliveries then go out) and before the store closes. */
#ifndef IMGATE_WEBHOOK_DISPATCHER_H
#define IMGATE_WEBHOOK_DISPATCHER_H

#include <stddef.h>
#include <stdint.h>

#include "core/task.h"
#include "store/store.h"
#include "webhook/client.h"

/* Renders the payload of event ("task.succeeded", "task.running", ...) of
 * task t as JSON text, malloc'd (the dispatcher frees it); NULL when it
 * cannot (the delivery is then recorded FAILED). The owner picks the shape by
 * t->dialect. now_ms: the time of rendering. Called on the dispatcher thread,
 * once per delivery (the payload is stored with the first attempt). */
typedef char *(*webhook_render_fn)(void *ctx, const task *t, const char *event, int64_t now_ms);

typedef struct webhook_dispatcher_config {
  webhook_config webhook;   /* timeouts, schedule, max_in_flight, guard (webhook_config_from) */
  webhook_render_fn render; /* required */
  void *render_ctx;
  /* Tuning; 0 (or less) takes the default. */
  int64_t lease_ms;           /* a claimed delivery is due again after this unless recorded;
                                 default webhook.timeout_ms + 10 s */
  int64_t poll_ms;            /* claims made without being told; default 1000 */
  int64_t secret_cache_ms;    /* an account's secrets are read again after this; default 1000 */
  int64_t pending_refresh_ms; /* webhook_pending_count is read at most this often; default 5000 */
  int claim_batch;            /* most deliveries one claim takes; default 256 */
} webhook_dispatcher_config;

typedef struct webhook_dispatcher webhook_dispatcher;

/* Starts the dispatcher thread and its curl loop; it claims at once (rows
 * left by an earlier process). s must outlive it. NULL (with a reason in
 * err) when a thread, the loop or memory cannot be had. */
webhook_dispatcher *webhook_dispatcher_start(const webhook_dispatcher_config *cfg, store *s,
                                             char *err, size_t err_size);

/* A delivery just became due (a task finished, a resend): claim soon rather
 * than at the next poll. Cheap (a mutex and a signal); any thread. Not
 * during or after webhook_dispatcher_stop. */
void webhook_dispatcher_notify(webhook_dispatcher *d);

/* An account's secrets changed (a rotation): attempts started from now on
 * read them from the store, not from the cache, so a receiver that switched
 * to the new secret the moment the rotation answered is not sent a delivery
 * signed with the old one alone. Cheap (an atomic); any thread. Not during or
 * after webhook_dispatcher_stop. */
void webhook_dispatcher_secrets_changed(webhook_dispatcher *d);

/* Stops claiming, lets attempts in flight finish for up to grace_ms (their
 * outcomes recorded), then destroys the curl loop, which ends the remaining
 * attempts (canceled: nothing recorded, their leases bring them back after a
 * restart), records what arrived, joins the thread and frees d. NULL is
 * fine. */
void webhook_dispatcher_stop(webhook_dispatcher *d, int64_t grace_ms);

/* For /metrics. Counters only grow. */
typedef struct webhook_dispatcher_stats {
  uint64_t delivered;    /* deliveries that ended with a 2xx */
  uint64_t failed;       /* ended FAILED: schedule used up, task gone, payload not renderable */
  uint64_t gone;         /* ended by a 410 */
  uint64_t retried;      /* attempts that failed and were scheduled again */
  uint64_t attempts;     /* attempts recorded, whatever their outcome */
  uint64_t canceled;     /* attempts the loop canceled (at stop): not recorded */
  uint64_t claims;       /* webhook_claim calls made, counted once their deliveries are
                            under way (idle: about one per poll_ms) */
  uint64_t store_errors; /* store calls that failed (their deliveries wait for their lease) */
  size_t in_flight;      /* attempts under way now */
  int64_t pending;       /* deliveries PENDING in the store, read at most every
                            pending_refresh_ms (by this call); -1 when not known */
} webhook_dispatcher_stats;

/* Any thread. May read the store (pending), at most every pending_refresh_ms. */
void webhook_dispatcher_get_stats(webhook_dispatcher *d, webhook_dispatcher_stats *out);

#endif
