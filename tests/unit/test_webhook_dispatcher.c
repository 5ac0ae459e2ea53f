/* test_webhook_dispatcher.c - the webhook dispatcher end to end: a real
 * SQLite store in a temporary folder, tasks finished with their outbox rows
 * through the store's own ops, the dispatcher's real curl loop, and a small
 * receiver on 127.0.0.1 (receiver_testutil.h) scripted per path. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "receiver_testutil.h"
#include "store/store.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "webhook/dispatcher.h"
#include "webhook/sign.h"

#define SECRET_A "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define SECRET_B "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="

typedef struct fx {
  char dir[64];
  char path[128];
  store *s;
  int64_t account;
  receiver rx;
  atomic_int renders;
  atomic_bool render_fails;
  webhook_dispatcher *d;
  int n_tasks;
} fx;

/* --- fixture --- */

static int setup(void **state) {
  log_set_level(LOG_ERROR);
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-wd-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/imgate.db", f->dir);
  char err[256] = "";
  f->s = store_sqlite_open(f->path, 4, err, sizeof err);
  if (!f->s) fail_msg("store_sqlite_open: %s", err);
  assert_int_equal(f->s->ops->account_create(f->s, "hooks@example.com", time_now_ms(),
                                             &f->account),
                   STORE_OK);
  assert_true(rx_start(&f->rx));
  atomic_init(&f->renders, 0);
  atomic_init(&f->render_fails, false);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  webhook_dispatcher_stop(f->d, 0);
  rx_stop(&f->rx);
  f->s->ops->close(f->s);
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    char p[160];
    snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
    unlink(p);
  }
  assert_int_equal(rmdir(f->dir), 0);
  free(f);
  return 0;
}

static void nap_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls cond every 2 ms until it holds or WAIT_LIMIT_MS pass. */
#define WAIT_FOR(cond)                                                     \
  do {                                                                     \
    int64_t until_ = time_mono_ms() + WAIT_LIMIT_MS;                       \
    while (!(cond) && time_mono_ms() < until_) nap_ms(2);                  \
    if (!(cond)) fail_msg("timed out waiting for %s", #cond);              \
  } while (0)

static webhook_dispatcher_stats stats(fx *f) {
  webhook_dispatcher_stats st;
  webhook_dispatcher_get_stats(f->d, &st);
  return st;
}

/* The test renderer: counts its calls; the payload carries the time it was
 * made, so a second rendering would show in the bytes. */
static char *render(void *ctx, const task *t, const char *event, int64_t now_ms) {
  fx *f = ctx;
  atomic_fetch_add(&f->renders, 1);
  if (atomic_load(&f->render_fails)) return NULL;
  char *out = NULL;
  if (asprintf(&out, "{\"type\":\"%s\",\"data\":{\"id\":\"%s\",\"status\":\"%s\"},"
                     "\"rendered_ms\":%" PRId64 "}",
               event, t->id, task_state_name(t->state), now_ms) < 0)
    return NULL;
  return out;
}

/* Local receivers, a short schedule (5 attempts, 20 ms apart), notify
 * rather than polls (poll_ms a minute: a test that needs the poll says so). */
static webhook_dispatcher_config base_cfg(fx *f) {
  imgate_config c;
  config_defaults(&c);
  webhook_dispatcher_config dc;
  memset(&dc, 0, sizeof dc);
  webhook_config_from(&dc.webhook, &c);
  dc.webhook.guard.allow_private = true;
  dc.webhook.guard.allow_http = true;
  dc.webhook.timeout_ms = 5000;
  static const int schedule[] = {0, 20, 20, 20, 20};
  memcpy(dc.webhook.retry_schedule_ms, schedule, sizeof schedule);
  dc.webhook.n_retry_schedule = 5;
  dc.render = render;
  dc.render_ctx = f;
  dc.poll_ms = 60000;
  return dc;
}

static void start(fx *f, const webhook_dispatcher_config *dc) {
  char err[256] = "";
  f->d = webhook_dispatcher_start(dc, f->s, err, sizeof err);
  if (!f->d) fail_msg("webhook_dispatcher_start: %s", err);
}

static void stop(fx *f, int64_t grace_ms) {
  webhook_dispatcher_stop(f->d, grace_ms);
  f->d = NULL;
}

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  assert_non_null(p);
  return p;
}

/* A task of account, finished (succeeded) with its outbox row for
 * http://127.0.0.1:PORT/PATH (or url when given). Writes the task's id and
 * the delivery's id. */
static void add_finished_task(fx *f, int64_t account, const char *path, const char *url,
                              char task_id[IDS_UUID_LEN + 1], char msg_id[40]) {
  task *t = calloc(1, sizeof *t);
  assert_non_null(t);
  assert_true(ids_uuid7(t->id));
  t->account_id = account;
  t->state = TASK_QUEUED;
  t->model = xstrdup("nano-banana-2");
  t->prompt = xstrdup("a lighthouse");
  t->aspect_ratio = xstrdup("1:1");
  t->resolution = xstrdup("1K");
  char local[128];
  snprintf(local, sizeof local, "http://127.0.0.1:%d%s", f->rx.port, path);
  t->webhook_url = xstrdup(url ? url : local);
  t->quantity = 1;
  t->created_ms = time_now_ms();
  assert_int_equal(f->s->ops->task_insert(f->s, t), STORE_OK);
  int attempt = 0;
  assert_int_equal(f->s->ops->task_start(f->s, t->id, "sim", time_now_ms(), &attempt), STORE_OK);
  snprintf(msg_id, 40, "msg_%032x", ++f->n_tasks);
  store_outbox ob = {.id = msg_id, .event = "task.succeeded", .url = t->webhook_url};
  assert_int_equal(f->s->ops->task_finish(f->s, t->id, attempt, TASK_SUCCEEDED, NULL, NULL, NULL,
                                          0, 0, time_now_ms(), NULL, &ob),
                   STORE_OK);
  snprintf(task_id, IDS_UUID_LEN + 1, "%s", t->id);
  task_free(t);
}

/* Every recorded attempt of the task's deliveries; free *out. */
static size_t attempts_of(fx *f, const char *task_id, store_webhook_attempt **out) {
  size_t n = 0;
  assert_int_equal(f->s->ops->webhook_list(f->s, task_id, out, &n), STORE_OK);
  return n;
}

/* The payload stored on the delivery (NULL when none); free it. */
static char *stored_payload(fx *f, const char *msg_id) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT payload FROM webhook_deliveries WHERE id = ?",
                                      -1, &st, NULL),
                   SQLITE_OK);
  sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_TRANSIENT);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  const char *p = (const char *)sqlite3_column_text(st, 0);
  char *copy = p ? xstrdup(p) : NULL;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return copy;
}

static int64_t pending_now(fx *f) {
  int64_t n = -1;
  assert_int_equal(f->s->ops->webhook_pending_count(f->s, &n), STORE_OK);
  return n;
}

/* The signature the receiver got must be exactly sign(current) [+ " " +
 * sign(previous)] over what it received. */
static void assert_signed(const rx_request *q, const char *current, const char *previous) {
  char want[WEBHOOK_SIGNATURE_HEADER_MAX];
  long long ts = atoll(q->timestamp);
  assert_true(ts > 0);
  assert_int_equal(webhook_signature_header(current, previous, q->id, ts, q->body, q->body_len,
                                            want),
                   0);
  assert_string_equal(q->signature, want);
  /* and independently, the first part is the v1 HMAC with current */
  char one[WEBHOOK_SIGNATURE_MAX];
  assert_int_equal(webhook_sign(current, q->id, ts, q->body, q->body_len, one), 0);
  assert_memory_equal(q->signature, one, strlen(one));
  if (previous) {
    assert_int_equal(webhook_sign(previous, q->id, ts, q->body, q->body_len, one), 0);
    assert_string_equal(strchr(q->signature, ' ') + 1, one);
  } else {
    assert_null(strchr(q->signature, ' '));
  }
}

/* --- tests --- */

static void test_delivered_once_signed(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/ok", NULL, task_id, msg);
  int64_t before_s = time_now_ms() / 1000;
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 1);
  webhook_dispatcher_stats st = stats(f);
  assert_int_equal(st.attempts, 1);
  assert_int_equal(st.retried + st.failed + st.gone, 0);
  stop(f, 1000);

  assert_int_equal(rx_count(&f->rx), 1);
  rx_request q = rx_get(&f->rx, 0);
  assert_string_equal(q.path, "/ok");
  assert_string_equal(q.id, msg);
  long long ts = atoll(q.timestamp);
  assert_true(ts >= before_s && ts <= time_now_ms() / 1000);
  /* The account had no secret: the dispatcher made one, and signed with it. */
  store_webhook_secret sec;
  assert_int_equal(f->s->ops->webhook_secret_get(f->s, f->account, NULL, &sec), STORE_OK);
  assert_true(webhook_secret_valid(sec.current));
  assert_signed(&q, sec.current, NULL);
  /* What was sent is what was rendered, once, and stored. */
  char *payload = stored_payload(f, msg);
  assert_non_null(payload);
  assert_string_equal(q.body, payload);
  assert_non_null(strstr(payload, task_id));
  assert_int_equal(atomic_load(&f->renders), 1);

  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_string_equal(at[0].id, msg);
  assert_string_equal(at[0].event, "task.succeeded");
  assert_int_equal(at[0].http_status, 200);
  assert_string_equal(at[0].error, "");
  assert_int_equal(at[0].state, WEBHOOK_DELIVERED);
  assert_int_equal(pending_now(f), 0);
  free(at);
  free(payload);
  free(q.body);
}

/* 500, 500, 500, then 200: four attempts, one success, the same id and the
 * same bytes every time, rendered once; the retries come from the
 * dispatcher's own timer (the poll is a minute away). */
static void test_retries_same_id_same_bytes(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/flaky", (int[]){500, 500, 500, 200}, 4);
  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/flaky", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 1);
  webhook_dispatcher_stats st = stats(f);
  assert_int_equal(st.retried, 3);
  assert_int_equal(st.attempts, 4);
  assert_int_equal(st.failed + st.gone, 0);
  stop(f, 1000);

  assert_int_equal(rx_count(&f->rx), 4);
  rx_request first = rx_get(&f->rx, 0);
  char *payload = stored_payload(f, msg);
  assert_string_equal(first.body, payload);
  for (int i = 1; i < 4; i++) {
    rx_request q = rx_get(&f->rx, i);
    assert_string_equal(q.id, msg);
    assert_int_equal(q.body_len, first.body_len);
    assert_memory_equal(q.body, first.body, first.body_len);
    store_webhook_secret sec;
    assert_int_equal(f->s->ops->webhook_secret_get(f->s, f->account, NULL, &sec), STORE_OK);
    assert_signed(&q, sec.current, NULL);
    free(q.body);
  }
  assert_int_equal(atomic_load(&f->renders), 1);

  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 4);
  static const int statuses[] = {500, 500, 500, 200};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(at[i].http_status, statuses[i]);
    assert_string_equal(at[i].error, i < 3 ? "HTTP 500" : "");
    assert_int_equal(at[i].state, WEBHOOK_DELIVERED); /* the delivery's state now */
    if (i > 0) /* not before the schedule's 20 ms after the previous attempt ended */
      assert_true(at[i].at_ms >= at[i - 1].at_ms + at[i - 1].duration_ms + 20);
  }
  free(at);
  free(payload);
  free(first.body);
}

static void test_gone_stops_for_good(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/gone", (int[]){410, 200}, 2);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.pending_refresh_ms = 1;
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/gone", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).gone == 1);
  webhook_dispatcher_stats st = stats(f);
  assert_int_equal(st.attempts, 1);
  assert_int_equal(st.retried + st.delivered + st.failed, 0);
  assert_int_equal(st.pending, 0);
  assert_int_equal(pending_now(f), 0); /* nothing left for any claim */
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_int_equal(at[0].http_status, 410);
  assert_int_equal(at[0].state, WEBHOOK_GONE);
  free(at);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 1);
}

/* A receiver that never answers: each attempt times out and is retried; the
 * schedule's end marks the delivery failed. */
static void test_timeout_retries_then_fails(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/silent", (int[]){RX_SILENT}, 1);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.timeout_ms = 300;
  dc.webhook.n_retry_schedule = 2; /* 0, 20 */
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/silent", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).failed == 1);
  webhook_dispatcher_stats st = stats(f);
  assert_int_equal(st.retried, 1);
  assert_int_equal(st.attempts, 2);
  assert_int_equal(rx_count(&f->rx), 2);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 2);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(at[i].http_status, 0);
    assert_string_equal(at[i].error, "timeout");
    assert_true(at[i].duration_ms >= 300);
    assert_int_equal(at[i].state, WEBHOOK_FAILED);
  }
  free(at);
  assert_int_equal(pending_now(f), 0);
  stop(f, 0);
}

static void test_schedule_end_marks_failed(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/down", (int[]){503}, 1);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.n_retry_schedule = 3;
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/down", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).failed == 1);
  assert_int_equal(stats(f).attempts, 3);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 3);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 3);
  assert_string_equal(at[2].error, "HTTP 503");
  assert_int_equal(at[2].state, WEBHOOK_FAILED);
  free(at);
}

/* A URL the client refuses before connecting is an attempt like any other. */
static void test_refused_url_is_an_attempt(void **state) {
  fx *f = *state;
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.guard.allow_http = false;
  dc.webhook.n_retry_schedule = 1;
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/ok", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).failed == 1);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_non_null(strstr(at[0].error, "http"));
  assert_int_equal(at[0].state, WEBHOOK_FAILED);
  free(at);
  stop(f, 0);
  assert_int_equal(rx_count(&f->rx), 0);
}

/* A process claimed the delivery and died before recording: the row comes
 * back when its lease ends, found by the slow poll, and is sent. */
static void test_claimed_unrecorded_sent_after_lease(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/ok", NULL, task_id, msg);
  store_delivery *rows = NULL;
  size_t n = 0;
  int64_t claimed_ms = time_now_ms();
  assert_int_equal(f->s->ops->webhook_claim(f->s, claimed_ms, 400, 10, &rows, &n), STORE_OK);
  assert_int_equal(n, 1);
  store_delivery_free(rows, n);

  webhook_dispatcher_config dc = base_cfg(f);
  dc.poll_ms = 50;
  start(f, &dc);
  WAIT_FOR(stats(f).delivered == 1);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 1);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_true(at[0].at_ms >= claimed_ms + 400); /* not while the lease held */
  assert_int_equal(at[0].state, WEBHOOK_DELIVERED);
  free(at);
}

/* Stopped with an attempt in flight and no grace: the attempt is canceled
 * and nothing is recorded; the next dispatcher (a restart) sends it again
 * with the same id once the lease is over. */
static void test_stop_cancels_and_restart_resends(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/once-silent", (int[]){RX_SILENT, 200}, 2);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.timeout_ms = 20000;
  dc.lease_ms = 300;
  dc.poll_ms = 50;
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/once-silent", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  assert_true(rx_wait_requests(&f->rx, 1));
  int64_t t0 = time_mono_ms();
  stop(f, 0);
  assert_true(time_mono_ms() - t0 < 5000); /* not the attempt's 20 s */
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 0);
  free(at);
  assert_int_equal(pending_now(f), 1);
  assert_null(stored_payload(f, msg));

  start(f, &dc);
  WAIT_FOR(stats(f).delivered == 1);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 2);
  rx_request a = rx_get(&f->rx, 0), b = rx_get(&f->rx, 1);
  assert_string_equal(a.id, msg);
  assert_string_equal(b.id, msg);
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_int_equal(at[0].state, WEBHOOK_DELIVERED);
  free(at);
  free(a.body);
  free(b.body);
}

/* Stopped while an answer is on its way: the grace lets it land, and it is
 * recorded. */
static void test_stop_grace_records_late_answer(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/late", (int[]){RX_LATE(1000)}, 1);
  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/late", NULL, task_id, msg);
  webhook_dispatcher_notify(f->d);
  assert_true(rx_wait_requests(&f->rx, 1));
  stop(f, 10000);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, task_id, &at), 1);
  assert_int_equal(at[0].http_status, 200);
  assert_int_equal(at[0].state, WEBHOOK_DELIVERED);
  free(at);
}

/* notify wakes the dispatcher at once, with the poll a minute away. */
static void test_notify_wakes_promptly(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  WAIT_FOR(stats(f).claims == 1); /* the claim at start, over an empty outbox */
  char task_id[IDS_UUID_LEN + 1], msg[40];
  add_finished_task(f, f->account, "/ok", NULL, task_id, msg);
  int64_t t0 = time_mono_ms();
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 1);
  assert_true(time_mono_ms() - t0 < 2000);
  assert_int_equal(stats(f).claims, 2);
  stop(f, 1000);
}

/* Idle, the thread sleeps: one claim per poll and next to no CPU. */
static void test_idle_sleeps(void **state) {
  fx *f = *state;
  webhook_dispatcher_config dc = base_cfg(f);
  dc.poll_ms = 100;
  start(f, &dc);
  WAIT_FOR(stats(f).claims >= 1);
  struct rusage r0, r1;
  uint64_t c0 = stats(f).claims;
  getrusage(RUSAGE_SELF, &r0);
  nap_ms(1000); /* the window measured, not a wait for anything */
  getrusage(RUSAGE_SELF, &r1);
  uint64_t c1 = stats(f).claims;
  stop(f, 0);
  int64_t cpu_us = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1000000 +
                   (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
                   (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1000000 +
                   (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
  print_message("idle second: %" PRIu64 " claims, %" PRId64 " us of CPU\n", c1 - c0, cpu_us);
  assert_true(c1 - c0 >= 3);  /* the slow poll runs ... */
  assert_true(c1 - c0 <= 13); /* ... at its pace: about 10 */
  assert_true(cpu_us < 200000);
}

/* A delivery whose task is gone, and one whose payload cannot be rendered,
 * end FAILED with the reason, without reaching the receiver. */
static void test_unrenderable_failed(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  char gone_id[IDS_UUID_LEN + 1], gone_msg[40], bad_id[IDS_UUID_LEN + 1], bad_msg[40];
  add_finished_task(f, f->account, "/ok", NULL, gone_id, gone_msg);
  /* A raw connection: foreign keys off, so the delivery stays without its task. */
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  char sql[160];
  snprintf(sql, sizeof sql, "DELETE FROM tasks WHERE id = '%s'", gone_id);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);

  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  WAIT_FOR(stats(f).failed == 1);
  store_webhook_attempt *at = NULL;
  assert_int_equal(attempts_of(f, gone_id, &at), 1);
  assert_non_null(strstr(at[0].error, "no longer exists"));
  assert_int_equal(at[0].state, WEBHOOK_FAILED);
  free(at);

  atomic_store(&f->render_fails, true);
  add_finished_task(f, f->account, "/ok", NULL, bad_id, bad_msg);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).failed == 2);
  assert_int_equal(attempts_of(f, bad_id, &at), 1);
  assert_non_null(strstr(at[0].error, "could not be rendered"));
  assert_int_equal(at[0].state, WEBHOOK_FAILED);
  free(at);
  stop(f, 0);
  assert_int_equal(rx_count(&f->rx), 0);
  assert_int_equal(pending_now(f), 0);
}

/* During a rotation window a delivery carries two signatures, the new
 * secret's first; once the window is closed, one. */
static void test_rotation_two_signatures(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  int64_t other = 0;
  assert_int_equal(f->s->ops->account_create(f->s, "other@example.com", time_now_ms(), &other),
                   STORE_OK);
  store_webhook_secret sec;
  assert_int_equal(f->s->ops->webhook_secret_get(f->s, f->account, SECRET_A, &sec), STORE_OK);
  assert_int_equal(f->s->ops->webhook_secret_rotate(f->s, f->account, SECRET_B,
                                                    time_now_ms() + 3600000, &sec),
                   STORE_OK);
  assert_int_equal(f->s->ops->webhook_secret_get(f->s, other, SECRET_A, &sec), STORE_OK);
  assert_int_equal(f->s->ops->webhook_secret_rotate(f->s, other, SECRET_B, time_now_ms() - 1,
                                                    &sec),
                   STORE_OK);
  char t1[IDS_UUID_LEN + 1], m1[40], t2[IDS_UUID_LEN + 1], m2[40];
  add_finished_task(f, f->account, "/ok", NULL, t1, m1);
  add_finished_task(f, other, "/ok", NULL, t2, m2);
  webhook_dispatcher_config dc = base_cfg(f);
  start(f, &dc);
  WAIT_FOR(stats(f).delivered == 2);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 2);
  for (int i = 0; i < 2; i++) {
    rx_request q = rx_get(&f->rx, i);
    if (strcmp(q.id, m1) == 0) {
      assert_signed(&q, SECRET_B, SECRET_A);
    } else {
      assert_string_equal(q.id, m2);
      assert_signed(&q, SECRET_B, NULL);
    }
    free(q.body);
  }
}

/* The secrets are cached (secret_cache_ms) until webhook_dispatcher_secrets_changed:
 * a delivery after a rotation the dispatcher was told of carries both
 * signatures at once, however long the cache would have lasted. */
static void test_rotation_clears_the_secret_cache(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){200}, 1);
  store_webhook_secret sec;
  assert_int_equal(f->s->ops->webhook_secret_get(f->s, f->account, SECRET_A, &sec), STORE_OK);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.secret_cache_ms = 600000;
  start(f, &dc);
  char t[3][IDS_UUID_LEN + 1], m[3][40];
  add_finished_task(f, f->account, "/ok", NULL, t[0], m[0]);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 1);
  assert_int_equal(f->s->ops->webhook_secret_rotate(f->s, f->account, SECRET_B,
                                                    time_now_ms() + 3600000, &sec),
                   STORE_OK);
  /* Not told: the cached secret signs alone. */
  add_finished_task(f, f->account, "/ok", NULL, t[1], m[1]);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 2);
  /* Told: the store is read again. */
  webhook_dispatcher_secrets_changed(f->d);
  add_finished_task(f, f->account, "/ok", NULL, t[2], m[2]);
  webhook_dispatcher_notify(f->d);
  WAIT_FOR(stats(f).delivered == 3);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 3);
  for (int i = 0; i < 3; i++) {
    rx_request q = rx_get(&f->rx, i);
    assert_string_equal(q.id, m[i]);
    if (i < 2) assert_signed(&q, SECRET_A, NULL);
    else assert_signed(&q, SECRET_B, SECRET_A);
    free(q.body);
  }
}

/* At most max_in_flight attempts at once, and only that many claimed. */
static void test_max_in_flight(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/hold", (int[]){RX_HOLD}, 1);
  char tid[6][IDS_UUID_LEN + 1], msg[6][40];
  for (int i = 0; i < 6; i++) add_finished_task(f, f->account, "/hold", NULL, tid[i], msg[i]);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.max_in_flight = 2;
  dc.pending_refresh_ms = 1;
  start(f, &dc);
  WAIT_FOR(stats(f).claims >= 1);
  webhook_dispatcher_stats st = stats(f);
  assert_int_equal(st.in_flight, 2);
  assert_int_equal(st.pending, 6); /* in flight is still pending in the store */
  assert_true(rx_wait_outstanding(&f->rx, 2));
  rx_release(&f->rx);
  WAIT_FOR(stats(f).delivered == 6);
  st = stats(f);
  assert_int_equal(st.pending, 0);
  assert_int_equal(st.in_flight, 0);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 6);
  assert_true(rx_peak(&f->rx) <= 2);
}

/* The dispatcher's loop keeps connections alive: deliveries one after the
 * other to one receiver share one connection. */
static void test_connection_kept_alive(void **state) {
  fx *f = *state;
  rx_script(&f->rx, "/ok", (int[]){204}, 1);
  char tid[IDS_UUID_LEN + 1], msg[40];
  for (int i = 0; i < 5; i++) add_finished_task(f, f->account, "/ok", NULL, tid, msg);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.max_in_flight = 1;
  start(f, &dc);
  WAIT_FOR(stats(f).delivered == 5);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), 5);
  assert_int_equal(rx_accepted(&f->rx), 1);
}

/* Deliveries in waves (a claim's worth at a time) keep their connections:
 * libcurl's default pool follows the transfers in flight at each moment and
 * would close most connections between two waves. */
static void test_connections_kept_across_waves(void **state) {
  fx *f = *state;
  enum { N = 600, IN_FLIGHT = 32 };
  rx_script(&f->rx, "/ok", (int[]){204}, 1);
  char tid[IDS_UUID_LEN + 1], msg[40];
  for (int i = 0; i < N; i++) add_finished_task(f, f->account, "/ok", NULL, tid, msg);
  webhook_dispatcher_config dc = base_cfg(f);
  dc.webhook.max_in_flight = IN_FLIGHT;
  start(f, &dc);
  WAIT_FOR(stats(f).delivered == N);
  stop(f, 1000);
  assert_int_equal(rx_count(&f->rx), N);
  print_message("%d deliveries, %d in flight at most: %d connections\n", N, IN_FLIGHT,
                rx_accepted(&f->rx));
  assert_true(rx_accepted(&f->rx) <= IN_FLIGHT + 4); /* libcurl's default: about twice */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_delivered_once_signed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retries_same_id_same_bytes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_gone_stops_for_good, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timeout_retries_then_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_schedule_end_marks_failed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_url_is_an_attempt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_claimed_unrecorded_sent_after_lease, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_cancels_and_restart_resends, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_grace_records_late_answer, setup, teardown),
      cmocka_unit_test_setup_teardown(test_notify_wakes_promptly, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idle_sleeps, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unrenderable_failed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rotation_two_signatures, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rotation_clears_the_secret_cache, setup, teardown),
      cmocka_unit_test_setup_teardown(test_max_in_flight, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connection_kept_alive, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connections_kept_across_waves, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
