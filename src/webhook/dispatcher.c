/* dispatcher.c - the webhook dispatcher (dispatcher.h says what it does).
 *
 * Threads: the dispatcher thread owns the store calls, the secret cache, the
 * retry timer and the decisions. The curl loop's thread only runs on_done,
 * which queues the outcome under mu and signals. Other threads only call
 * notify (mu) and get_stats (atomics, pending_mu). */
#include "webhook/dispatcher.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "upstream/curlloop.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "webhook/sign.h"

#define DEFAULT_LEASE_EXTRA_MS 10000
#define DEFAULT_POLL_MS 1000
#define DEFAULT_SECRET_CACHE_MS 1000
#define DEFAULT_PENDING_REFRESH_MS 5000
#define DEFAULT_CLAIM_BATCH 256
#define DEFAULT_MAX_IN_FLIGHT 1024
/* Accounts whose secrets are cached at once (a power of two); a collision
 * only costs a store read. */
#define SECRET_SLOTS 1024
/* Retry times remembered for the timer; beyond this, a retry waits for the
 * next poll (at most poll_ms late). */
#define RETRY_TIMES_MAX 65536

/* One attempt of one delivery, from its claim until its outcome is recorded.
 * Also a delivery that fails before any attempt (its task is gone). */
typedef struct wd_job {
  struct wd_job *next;
  webhook_dispatcher *d;
  char id[40];
  int attempts_before; /* attempts recorded before this one */
  char *payload;       /* rendered for this attempt, to store with its record; NULL: stored */
  bool failed_early;   /* FAILED without reaching the receiver; a.error says why */
  webhook_attempt a;
} wd_job;

typedef struct wd_secret {
  int64_t account_id; /* 0: empty slot */
  int64_t read_mono;
  uint64_t generation; /* secrets_generation when it was read */
  store_webhook_secret s;
} wd_secret;

struct webhook_dispatcher {
  webhook_dispatcher_config cfg; /* defaults filled in */
  store *store;
  curlloop *loop;
  webhook_client *client;
  size_t max_in_flight;
  size_t claim_min; /* claims wait until this many slots are free (batching) */
  pthread_t thread;

  pthread_mutex_t mu;
  pthread_cond_t cv;  /* CLOCK_MONOTONIC */
  wd_job *done_head;  /* outcomes to record, under mu */
  bool notified;      /* under mu */
  bool stopping;      /* under mu */
  int64_t grace_ms;   /* under mu, set with stopping */

  /* Dispatcher thread only. */
  wd_secret *secrets; /* SECRET_SLOTS */
  int64_t *retry_times; /* min-heap of unix ms this process scheduled retries at */
  size_t n_retry_times, cap_retry_times;
  bool claim_failing, record_failing; /* log a failing store once, not at every try */

  atomic_uint_least64_t delivered, failed, gone, retried, attempts, canceled, claims, store_errors;
  /* Bumped by webhook_dispatcher_secrets_changed: cached secrets of an older
   * generation are read again. */
  atomic_uint_least64_t secrets_generation;

  pthread_mutex_t pending_mu;
  int64_t pending;          /* -1: not known */
  bool pending_read;        /* read (or tried) at pending_read_mono */
  int64_t pending_read_mono;
};

/* --- the retry timer: a min-heap of unix ms --- */

static void retry_push(webhook_dispatcher *d, int64_t at_ms) {
  if (d->n_retry_times == d->cap_retry_times) {
    size_t cap = d->cap_retry_times ? 2 * d->cap_retry_times : 64;
    int64_t *grown = cap <= RETRY_TIMES_MAX ? realloc(d->retry_times, cap * sizeof *grown) : NULL;
    if (!grown) return; /* the poll finds it */
    d->retry_times = grown;
    d->cap_retry_times = cap;
  }
  int64_t *h = d->retry_times;
  size_t i = d->n_retry_times++;
  while (i > 0 && h[(i - 1) / 2] > at_ms) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = at_ms;
}

static void retry_pop(webhook_dispatcher *d) {
  int64_t *h = d->retry_times;
  assert(d->n_retry_times > 0);
  int64_t last = h[--d->n_retry_times];
  size_t n = d->n_retry_times, i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1] < h[c]) c++;
    if (h[c] >= last) break;
    h[i] = h[c];
    i = c;
  }
  if (n) h[i] = last;
}

/* True when a retry this process scheduled is due by now (and forgets those). */
static bool retry_due(webhook_dispatcher *d, int64_t now_ms) {
  bool due = false;
  while (d->n_retry_times && d->retry_times[0] <= now_ms) {
    retry_pop(d);
    due = true;
  }
  return due;
}

/* --- outcomes: queued on the loop thread, recorded on the dispatcher thread --- */

static void queue_done(webhook_dispatcher *d, wd_job *job) {
  pthread_mutex_lock(&d->mu);
  job->next = d->done_head;
  d->done_head = job;
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
}

/* The loop thread: quick, no store access. */
static void on_attempt_done(void *ctx, const webhook_attempt *a) {
  wd_job *job = ctx;
  job->a = *a;
  queue_done(job->d, job);
}

static void job_free(wd_job *job) {
  free(job->payload);
  free(job);
}

/* What an outcome means for the delivery; false when nothing is recorded
 * (a canceled attempt). */
static bool judge(webhook_dispatcher *d, const wd_job *job, store_delivery_result *r) {
  const webhook_attempt *a = &job->a;
  memset(r, 0, sizeof *r);
  r->id = job->id;
  r->payload = job->payload;
  r->at_ms = a->started_ms;
  r->http_status = a->http_status;
  r->duration_ms = a->duration_ms;
  r->error = a->error[0] ? a->error : NULL;
  if (job->failed_early) {
    r->state = WEBHOOK_FAILED;
    return true;
  }
  switch (a->outcome) {
  case WEBHOOK_OUTCOME_DELIVERED:
    r->state = WEBHOOK_DELIVERED;
    r->error = NULL;
    return true;
  case WEBHOOK_OUTCOME_GONE:
    r->state = WEBHOOK_GONE;
    return true;
  case WEBHOOK_OUTCOME_RETRY: {
    int64_t delay = webhook_next_delay_ms(&d->cfg.webhook, job->attempts_before + 1);
    if (delay < 0) {
      r->state = WEBHOOK_FAILED;
    } else {
      r->state = WEBHOOK_PENDING;
      r->next_ms = a->started_ms + a->duration_ms + delay;
    }
    return true;
  }
  case WEBHOOK_OUTCOME_CANCELED:
    return false;
  }
  return false;
}

/* Counts what was recorded, and arms the timer for the retries. */
static void count_recorded(webhook_dispatcher *d, wd_job *const *jobs,
                           const store_delivery_result *r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    switch (r[i].state) {
    case WEBHOOK_DELIVERED: atomic_fetch_add(&d->delivered, 1); break;
    case WEBHOOK_GONE: atomic_fetch_add(&d->gone, 1); break;
    case WEBHOOK_FAILED: atomic_fetch_add(&d->failed, 1); break;
    case WEBHOOK_PENDING:
      atomic_fetch_add(&d->retried, 1);
      retry_push(d, r[i].next_ms);
      break;
    }
    if (r[i].state == WEBHOOK_FAILED || r[i].state == WEBHOOK_GONE) {
      char q[160];
      LOG_INFO("webhook_delivery_ended", "id=%s state=%s attempts=%d error=%s", r[i].id,
               webhook_state_name(r[i].state), jobs[i]->attempts_before + 1,
               log_quote(r[i].error ? r[i].error : "", q, sizeof q));
    }
  }
  atomic_fetch_add(&d->attempts, n);
}

/* Records a list of outcomes in one transaction and frees the jobs. When the
 * store refuses, nothing is recorded: the deliveries are due again when
 * their leases end (and are sent again, with the same id). */
static void record_jobs(webhook_dispatcher *d, wd_job *list) {
  size_t n = 0;
  for (wd_job *j = list; j; j = j->next) n++;
  store_delivery_result *r = calloc(n, sizeof *r);
  wd_job **jobs = calloc(n, sizeof *jobs);
  if (r && jobs) {
    size_t k = 0;
    for (wd_job *j = list; j; j = j->next) {
      if (judge(d, j, &r[k])) jobs[k++] = j;
      else atomic_fetch_add(&d->canceled, 1);
    }
    int rc = k ? d->store->ops->webhook_record(d->store, r, k) : STORE_OK;
    if (rc == STORE_OK) {
      count_recorded(d, jobs, r, k);
      if (d->record_failing) LOG_INFO("webhook_record_recovered", NULL);
      d->record_failing = false;
    } else {
      atomic_fetch_add(&d->store_errors, 1);
      if (!d->record_failing)
        LOG_WARN("webhook_record_failed", "rc=%d deliveries=%zu lease_ms=%" PRId64, rc, k,
                 d->cfg.lease_ms);
      d->record_failing = true;
    }
  } else {
    atomic_fetch_add(&d->store_errors, 1);
    LOG_ERROR("webhook_record_failed", "reason=out_of_memory deliveries=%zu", n);
  }
  free(r);
  free(jobs);
  while (list) {
    wd_job *next = list->next;
    job_free(list);
    list = next;
  }
}

/* --- secrets --- */

static wd_secret *secret_slot(webhook_dispatcher *d, int64_t account_id) {
  uint64_t h = (uint64_t)account_id * 0x9E3779B97F4A7C15ull;
  return &d->secrets[(h >> 32) & (SECRET_SLOTS - 1)];
}

/* The account's secrets, cached for secret_cache_ms (and until a rotation);
 * an account without a secret gets one. NULL with *rc set when the store
 * cannot tell. */
static const store_webhook_secret *secrets_of(webhook_dispatcher *d, int64_t account_id,
                                              int *rc) {
  wd_secret *slot = secret_slot(d, account_id);
  int64_t mono = time_mono_ms();
  /* Loaded before the store is read: a rotation committed during the read
   * bumps it after, and the next call reads again. */
  uint64_t generation = atomic_load(&d->secrets_generation);
  if (slot->account_id == account_id && slot->generation == generation &&
      mono - slot->read_mono < d->cfg.secret_cache_ms)
    return &slot->s;
  store_webhook_secret s;
  *rc = d->store->ops->webhook_secret_get(d->store, account_id, NULL, &s);
  if (*rc == STORE_NOT_FOUND) {
    /* Made here only when missing: a random secret per delivery would be
     * waste, and the store keeps the first one stored anyway. */
    char fresh[WEBHOOK_SECRET_MAX];
    if (webhook_secret_new(fresh) != 0) {
      *rc = STORE_ERROR;
      return NULL;
    }
    *rc = d->store->ops->webhook_secret_get(d->store, account_id, fresh, &s);
  }
  if (*rc != STORE_OK) return NULL;
  slot->account_id = account_id;
  slot->read_mono = mono;
  slot->generation = generation;
  slot->s = s;
  return &slot->s;
}

/* --- one claimed delivery --- */

static void fail_early(webhook_dispatcher *d, wd_job *job, int64_t now_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_early(webhook_dispatcher *d, wd_job *job, int64_t now_ms, const char *fmt, ...) {
  memset(&job->a, 0, sizeof job->a);
  job->a.outcome = WEBHOOK_OUTCOME_RETRY; /* unused: failed_early decides */
  job->a.started_ms = now_ms;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(job->a.error, sizeof job->a.error, fmt, ap);
  va_end(ap);
  job->failed_early = true;
  queue_done(d, job);
}

/* Leaves a claimed delivery to its lease (nothing recorded): for our own
 * trouble (a store error), which should not use up the receiver's attempts. */
static void leave_to_lease(webhook_dispatcher *d, wd_job *job, const char *what, int rc) {
  atomic_fetch_add(&d->store_errors, 1);
  LOG_WARN("webhook_delivery_postponed", "id=%s reason=%s rc=%d lease_ms=%" PRId64, job->id, what,
           rc, d->cfg.lease_ms);
  job_free(job);
}

static void start_delivery(webhook_dispatcher *d, const store_delivery *row, int64_t now_ms) {
  wd_job *job = calloc(1, sizeof *job);
  if (!job) {
    LOG_ERROR("webhook_delivery_postponed", "id=%s reason=out_of_memory", row->id);
    return;
  }
  job->d = d;
  snprintf(job->id, sizeof job->id, "%s", row->id);
  job->attempts_before = row->attempts;
  const char *payload = row->payload;
  if (!payload) {
    task *t = NULL;
    int rc = d->store->ops->task_get(d->store, row->task_id, &t);
    if (rc == STORE_NOT_FOUND) {
      fail_early(d, job, now_ms, "task %s no longer exists", row->task_id);
      return;
    }
    if (rc != STORE_OK) {
      leave_to_lease(d, job, "task_get_failed", rc);
      return;
    }
    job->payload = d->cfg.render(d->cfg.render_ctx, t, row->event, now_ms);
    task_free(t);
    if (!job->payload) {
      fail_early(d, job, now_ms, "the %s payload could not be rendered", row->event);
      return;
    }
    payload = job->payload;
  }
  int rc = STORE_OK;
  const store_webhook_secret *sec = secrets_of(d, row->account_id, &rc);
  if (!sec && rc == STORE_NOT_FOUND) {
    fail_early(d, job, now_ms, "account %" PRId64 " no longer exists", row->account_id);
    return;
  }
  if (!sec) {
    leave_to_lease(d, job, "secret_unavailable", rc);
    return;
  }
  bool previous_open = sec->previous[0] && sec->previous_until_ms > now_ms;
  webhook_message m = {.url = row->url,
                       .id = row->id,
                       .payload = payload,
                       .payload_len = strlen(payload),
                       .secret = sec->current,
                       .previous_secret = previous_open ? sec->previous : NULL};
  webhook_attempt immediate;
  if (webhook_send(d->client, &m, on_attempt_done, job, &immediate) == 0) return;
  if (immediate.outcome == WEBHOOK_OUTCOME_CANCELED) {
    /* Busy or shutting down: not an attempt. */
    LOG_DEBUG("webhook_delivery_postponed", "id=%s reason=canceled", job->id);
    atomic_fetch_add(&d->canceled, 1);
    job_free(job);
    return;
  }
  job->a = immediate; /* failed before connecting (an unusable URL...): an attempt */
  queue_done(d, job);
}

/* Claims up to want due deliveries and starts them; *got is how many came. */
static int claim_and_start(webhook_dispatcher *d, size_t want, size_t *got) {
  store_delivery *rows = NULL;
  size_t n = 0;
  int64_t now_ms = time_now_ms();
  int rc = d->store->ops->webhook_claim(d->store, now_ms, d->cfg.lease_ms, want, &rows, &n);
  *got = 0;
  if (rc != STORE_OK) {
    atomic_fetch_add(&d->claims, 1);
    atomic_fetch_add(&d->store_errors, 1);
    /* A broken store fails every poll: say so once (the store logs why). */
    if (!d->claim_failing) LOG_WARN("webhook_claim_failed", "rc=%d", rc);
    d->claim_failing = true;
    return rc;
  }
  if (d->claim_failing) LOG_INFO("webhook_claim_recovered", NULL);
  d->claim_failing = false;
  for (size_t i = 0; i < n; i++) start_delivery(d, &rows[i], now_ms);
  store_delivery_free(rows, n);
  /* Counted once its deliveries are under way (the tests wait on it). */
  atomic_fetch_add(&d->claims, 1);
  *got = n;
  return STORE_OK;
}

/* --- the dispatcher thread --- */

static struct timespec mono_deadline(int64_t mono_ms) {
  struct timespec ts = {.tv_sec = (time_t)(mono_ms / 1000), .tv_nsec = (long)(mono_ms % 1000) * 1000000L};
  return ts;
}

/* Takes the queued outcomes (and what else the others left under mu). */
static wd_job *take_done(webhook_dispatcher *d, bool *notified, bool *stopping) {
  pthread_mutex_lock(&d->mu);
  wd_job *list = d->done_head;
  d->done_head = NULL;
  if (notified) {
    *notified = d->notified;
    d->notified = false;
  }
  if (stopping) *stopping = d->stopping;
  pthread_mutex_unlock(&d->mu);
  return list;
}

/* Sleeps until something is queued, a notify, a stop, or wake_mono. */
static void sleep_until(webhook_dispatcher *d, int64_t wake_mono) {
  struct timespec until = mono_deadline(wake_mono);
  pthread_mutex_lock(&d->mu);
  while (!d->done_head && !d->notified && !d->stopping) {
    if (pthread_cond_timedwait(&d->cv, &d->mu, &until) == ETIMEDOUT) break;
  }
  pthread_mutex_unlock(&d->mu);
}

/* Stop: let attempts in flight end within the grace, then end the loop (the
 * rest come back canceled, through on_attempt_done, on this thread). */
static void drain_and_close(webhook_dispatcher *d) {
  pthread_mutex_lock(&d->mu);
  int64_t until = time_mono_ms() + d->grace_ms;
  pthread_mutex_unlock(&d->mu);
  for (;;) {
    wd_job *list = take_done(d, NULL, NULL);
    if (list) record_jobs(d, list);
    if (webhook_client_in_flight(d->client) == 0 || time_mono_ms() >= until) break;
    struct timespec ts = mono_deadline(until);
    pthread_mutex_lock(&d->mu);
    if (!d->done_head) pthread_cond_timedwait(&d->cv, &d->mu, &ts);
    pthread_mutex_unlock(&d->mu);
  }
  curlloop_destroy(d->loop);
  d->loop = NULL;
  wd_job *list = take_done(d, NULL, NULL);
  if (list) record_jobs(d, list);
}

static void *dispatcher_main(void *arg) {
  webhook_dispatcher *d = arg;
  /* Claim at once: rows due from before this process started. */
  bool maybe_due = true;
  int64_t next_poll_mono = time_mono_ms();
  for (;;) {
    bool notified = false, stopping = false;
    wd_job *list = take_done(d, &notified, &stopping);
    if (list) record_jobs(d, list);
    if (stopping) break;
    int64_t mono = time_mono_ms(), now_ms = time_now_ms();
    if (mono >= next_poll_mono) {
      maybe_due = true;
      next_poll_mono = mono + d->cfg.poll_ms;
    }
    if (notified || retry_due(d, now_ms)) maybe_due = true;
    if (maybe_due) {
      size_t busy = webhook_client_in_flight(d->client);
      size_t room = busy < d->max_in_flight ? d->max_in_flight - busy : 0;
      /* With some in flight, wait for a batch worth of room: a claim is a
       * write transaction, too dear to make for every slot that frees. */
      if (room >= d->claim_min || (busy == 0 && room > 0)) {
        size_t want = room < (size_t)d->cfg.claim_batch ? room : (size_t)d->cfg.claim_batch;
        size_t got = 0;
        int rc = claim_and_start(d, want, &got);
        next_poll_mono = mono + d->cfg.poll_ms;
        /* A full claim may have left more due: look again at once. */
        maybe_due = rc == STORE_OK && got == want;
        continue;
      }
    }
    int64_t wake = next_poll_mono;
    if (d->n_retry_times) {
      int64_t retry_mono = mono + (d->retry_times[0] - now_ms);
      if (retry_mono < wake) wake = retry_mono;
    }
    sleep_until(d, wake);
  }
  drain_and_close(d);
  return NULL;
}

/* --- life cycle --- */

static void set_err(char *err, size_t size, const char *msg) {
  if (size) snprintf(err, size, "%s", msg);
}

static void free_dispatcher(webhook_dispatcher *d) {
  if (d->loop) curlloop_destroy(d->loop);
  webhook_client_free(d->client);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->cv);
  pthread_mutex_destroy(&d->pending_mu);
  free(d->secrets);
  free(d->retry_times);
  free(d);
}

static bool init_sync(webhook_dispatcher *d) {
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0) return false;
  bool ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
            pthread_cond_init(&d->cv, &ca) == 0;
  pthread_condattr_destroy(&ca);
  if (!ok) return false;
  pthread_mutex_init(&d->mu, NULL);
  pthread_mutex_init(&d->pending_mu, NULL);
  return true;
}

static void fill_defaults(webhook_dispatcher_config *c) {
  if (c->webhook.timeout_ms <= 0) c->webhook.timeout_ms = 10000;
  if (c->lease_ms <= 0) c->lease_ms = c->webhook.timeout_ms + DEFAULT_LEASE_EXTRA_MS;
  if (c->poll_ms <= 0) c->poll_ms = DEFAULT_POLL_MS;
  if (c->secret_cache_ms <= 0) c->secret_cache_ms = DEFAULT_SECRET_CACHE_MS;
  if (c->pending_refresh_ms <= 0) c->pending_refresh_ms = DEFAULT_PENDING_REFRESH_MS;
  if (c->claim_batch <= 0) c->claim_batch = DEFAULT_CLAIM_BATCH;
  if (c->webhook.max_in_flight <= 0) c->webhook.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
  /* Every transfer of the dispatcher's loop is one of its own, through the
   * guard with this one policy: its pooled connections all passed the check. */
  c->webhook.guard.reuse_connections = true;
}

webhook_dispatcher *webhook_dispatcher_start(const webhook_dispatcher_config *cfg, store *s,
                                             char *err, size_t err_size) {
  assert(cfg && s && cfg->render);
  webhook_dispatcher *d = calloc(1, sizeof *d);
  if (!d || !init_sync(d)) {
    free(d);
    set_err(err, err_size, "webhook dispatcher: out of memory");
    return NULL;
  }
  d->cfg = *cfg;
  fill_defaults(&d->cfg);
  d->store = s;
  d->max_in_flight = (size_t)d->cfg.webhook.max_in_flight;
  d->claim_min = d->max_in_flight / 8;
  if (d->claim_min > (size_t)d->cfg.claim_batch) d->claim_min = (size_t)d->cfg.claim_batch;
  if (d->claim_min < 1) d->claim_min = 1;
  d->pending = -1;
  d->secrets = calloc(SECRET_SLOTS, sizeof *d->secrets);
  /* Keep as many connections as can be busy at once: libcurl's default
   * follows the transfers in flight at each moment and would close most of
   * them between two waves of deliveries. */
  curlloop_config lc = {.connect_timeout_ms = d->cfg.webhook.connect_timeout_ms,
                        .max_connects = (long)d->max_in_flight};
  if (d->secrets) d->loop = curlloop_create(&lc);
  if (d->loop) d->client = webhook_client_new(d->loop, &d->cfg.webhook);
  if (!d->client) {
    free_dispatcher(d);
    set_err(err, err_size, "webhook dispatcher: cannot start its curl loop");
    return NULL;
  }
  /* Signals belong to the main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&d->thread, NULL, dispatcher_main, d);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    free_dispatcher(d);
    set_err(err, err_size, "webhook dispatcher: cannot start its thread");
    return NULL;
  }
  pthread_setname_np(d->thread, "webhooks");
  return d;
}

void webhook_dispatcher_notify(webhook_dispatcher *d) {
  if (!d) return;
  pthread_mutex_lock(&d->mu);
  if (!d->notified) {
    d->notified = true;
    pthread_cond_signal(&d->cv);
  }
  pthread_mutex_unlock(&d->mu);
}

void webhook_dispatcher_secrets_changed(webhook_dispatcher *d) {
  if (d) atomic_fetch_add(&d->secrets_generation, 1);
}

void webhook_dispatcher_stop(webhook_dispatcher *d, int64_t grace_ms) {
  if (!d) return;
  pthread_mutex_lock(&d->mu);
  d->stopping = true;
  d->grace_ms = grace_ms > 0 ? grace_ms : 0;
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
  pthread_join(d->thread, NULL);
  free_dispatcher(d);
}

void webhook_dispatcher_get_stats(webhook_dispatcher *d, webhook_dispatcher_stats *out) {
  memset(out, 0, sizeof *out);
  out->delivered = atomic_load(&d->delivered);
  out->failed = atomic_load(&d->failed);
  out->gone = atomic_load(&d->gone);
  out->retried = atomic_load(&d->retried);
  out->attempts = atomic_load(&d->attempts);
  out->canceled = atomic_load(&d->canceled);
  out->claims = atomic_load(&d->claims);
  out->store_errors = atomic_load(&d->store_errors);
  out->in_flight = webhook_client_in_flight(d->client);
  pthread_mutex_lock(&d->pending_mu);
  int64_t mono = time_mono_ms();
  if (!d->pending_read || mono - d->pending_read_mono >= d->cfg.pending_refresh_ms) {
    int64_t n = 0;
    if (d->store->ops->webhook_pending_count(d->store, &n) == STORE_OK) d->pending = n;
    d->pending_read = true;
    d->pending_read_mono = mono;
  }
  out->pending = d->pending;
  pthread_mutex_unlock(&d->pending_mu);
}
