/* webhooks_driver.c - the webhook dispatcher measured alone, driven by
 * bench/webhooks. Not installed.
 *
 *   webhooks_driver fill --data DIR --url URL --n N [--accounts K]
 *       creates DIR/imgate.db with K accounts (default 4) and N finished
 *       tasks, each with one result image and one task.succeeded delivery
 *       to URL (due at once), round-robin over the accounts
 *   webhooks_driver run --data DIR [--max-in-flight M] [--sync full|normal]
 *                       [--timeout-s S]
 *       runs the dispatcher (webhook/dispatcher.c, its own curl loop, the
 *       store, a renderer shaped like the native dialect's task) over DIR
 *       until every delivery has ended or S seconds (default 120) passed, and
 *       prints one JSON object: the counters, the seconds from the start of
 *       the dispatcher to the last delivery recorded, deliveries per second,
 *       and the process's CPU time over that window.
 *
 * Deliveries go to 127.0.0.1 only: the address hook refuses every other
 * address. Exit status 0 when every delivery was recorded DELIVERED. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>

#include "store/store.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "webhook/dispatcher.h"

typedef struct options {
  const char *cmd, *data, *url, *sync;
  long n, accounts, max_in_flight, timeout_s;
} options;

static int usage(void) {
  fprintf(stderr, "usage: webhooks_driver fill|run --data DIR [options] (see the source)\n");
  return 2;
}

static bool parse(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->accounts = 4;
  o->max_in_flight = 1024;
  o->timeout_s = 120;
  o->sync = "full";
  if (argc < 2) return false;
  o->cmd = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "--data")) o->data = v;
    else if (!strcmp(a, "--url")) o->url = v;
    else if (!strcmp(a, "--n")) o->n = atol(v);
    else if (!strcmp(a, "--accounts")) o->accounts = atol(v);
    else if (!strcmp(a, "--max-in-flight")) o->max_in_flight = atol(v);
    else if (!strcmp(a, "--timeout-s")) o->timeout_s = atol(v);
    else if (!strcmp(a, "--sync")) o->sync = v;
    else return false;
  }
  if ((argc - 2) % 2) return false;
  return o->data && o->accounts > 0 && o->max_in_flight > 0;
}

static store *open_store(const options *o) {
  char path[1024], err[256] = "";
  snprintf(path, sizeof path, "%s/imgate.db", o->data);
  store *s = store_sqlite_open(path, 8, err, sizeof err);
  if (!s) fprintf(stderr, "webhooks_driver: %s\n", err);
  return s;
}

/* --- fill --- */

static bool fill_one(store *s, int64_t account, const char *url, long i) {
  task t;
  memset(&t, 0, sizeof t);
  if (!ids_uuid7(t.id)) return false;
  t.account_id = account;
  t.state = TASK_QUEUED;
  t.model = "nano-banana-2";
  t.prompt = "a lighthouse on a cliff at dusk, oil painting, warm light";
  t.aspect_ratio = "16:9";
  t.resolution = "2K";
  t.webhook_url = (char *)url;
  t.dialect = "native";
  t.public_base = "https://img.example.com";
  t.quantity = 1;
  t.created_ms = time_now_ms();
  if (s->ops->task_insert(s, &t) != STORE_OK) return false;
  int attempt = 0;
  if (s->ops->task_start(s, t.id, "sim", time_now_ms(), &attempt) != STORE_OK) return false;
  char token[40], key[80], msg[40];
  snprintf(token, sizeof token, "tok%029ld", i);
  snprintf(key, sizeof key, "results/%s/1-0.png", t.id);
  snprintf(msg, sizeof msg, "msg_%032lx", (unsigned long)i);
  task_result r = {.index = 0, .blob_key = key, .token = token, .mime = "image/png",
                   .etag = "0123456789abcdef0123456789abcdef", .width = 2752, .height = 1536,
                   .bytes = 4200000, .expires_ms = time_now_ms() + 7 * 86400000LL};
  store_outbox ob = {.id = msg, .event = "task.succeeded", .url = url};
  return s->ops->task_finish(s, t.id, attempt, TASK_SUCCEEDED, NULL, NULL, &r, 1, 0, time_now_ms(),
                             NULL, &ob) == STORE_OK;
}

static int run_fill(const options *o) {
  if (!o->url || o->n <= 0) return usage();
  /* Filling is not measured: commits need not wait for the disk. */
  store_sqlite_set_sync(STORE_SYNC_NORMAL);
  store *s = open_store(o);
  if (!s) return 1;
  int64_t *accounts = calloc((size_t)o->accounts, sizeof *accounts);
  bool ok = accounts != NULL;
  for (long a = 0; ok && a < o->accounts; a++) {
    char email[64];
    snprintf(email, sizeof email, "bench%ld@example.com", a);
    ok = s->ops->account_create(s, email, time_now_ms(), &accounts[a]) == STORE_OK;
  }
  for (long i = 0; ok && i < o->n; i++) ok = fill_one(s, accounts[i % o->accounts], o->url, i);
  free(accounts);
  s->ops->close(s);
  if (!ok) fprintf(stderr, "webhooks_driver: fill failed\n");
  return ok ? 0 : 1;
}

/* --- run --- */

/* A payload shaped like the native dialect's task (the lead's renderer
 * decides the real one): the task's fields, its image URLs, times. */
static char *render(void *ctx, const task *t, const char *event, int64_t now_ms) {
  (void)ctx;
  char created[32], finished[32], at[32];
  time_format_iso(t->created_ms, created);
  time_format_iso(t->finished_ms, finished);
  time_format_iso(now_ms, at);
  json_t *urls = json_array();
  for (size_t i = 0; i < t->n_results; i++) {
    char url[256];
    snprintf(url, sizeof url, "%s/files/%s.png", t->public_base ? t->public_base : "",
             t->results[i].token);
    json_array_append_new(urls, json_string(url));
  }
  json_t *doc = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:i}}",
                          "type", event, "timestamp", at, "data", "uid", t->id, "status",
                          task_state_name(t->state), "model", t->model, "prompt", t->prompt,
                          "aspect_ratio", t->aspect_ratio, "resolution", t->resolution,
                          "result_urls", urls, "created_at", created, "finished_at", finished,
                          "attempts", t->attempts);
  char *out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return out;
}

/* Nothing but 127.0.0.1 is ever connected to. */
static bool refuse_off_loopback(const struct sockaddr *sa, void *ctx) {
  (void)ctx;
  if (sa->sa_family != AF_INET) return true;
  return ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) != INADDR_LOOPBACK;
}

static double cpu_s(const struct rusage *r, bool user) {
  const struct timeval *tv = user ? &r->ru_utime : &r->ru_stime;
  return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static int run_dispatch(const options *o) {
  store_sqlite_set_sync(strcmp(o->sync, "normal") == 0 ? STORE_SYNC_NORMAL : STORE_SYNC_FULL);
  store *s = open_store(o);
  if (!s) return 1;
  int64_t total = 0;
  if (s->ops->webhook_pending_count(s, &total) != STORE_OK || total <= 0) {
    fprintf(stderr, "webhooks_driver: nothing pending in %s\n", o->data);
    s->ops->close(s);
    return 1;
  }
  webhook_dispatcher_config dc;
  memset(&dc, 0, sizeof dc);
  dc.webhook.timeout_ms = 10000;
  dc.webhook.connect_timeout_ms = 5000;
  dc.webhook.retry_schedule_ms[0] = 0;
  dc.webhook.retry_schedule_ms[1] = 1000;
  dc.webhook.retry_schedule_ms[2] = 1000;
  dc.webhook.n_retry_schedule = 3;
  dc.webhook.max_in_flight = (int)o->max_in_flight;
  dc.webhook.guard.allow_http = true;
  dc.webhook.guard.address_refused = refuse_off_loopback;
  dc.render = render;

  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  int64_t t0 = time_mono_ms();
  char err[256] = "";
  webhook_dispatcher *d = webhook_dispatcher_start(&dc, s, err, sizeof err);
  if (!d) {
    fprintf(stderr, "webhooks_driver: %s\n", err);
    s->ops->close(s);
    return 1;
  }
  webhook_dispatcher_stats st;
  int64_t deadline = t0 + o->timeout_s * 1000;
  for (;;) {
    webhook_dispatcher_get_stats(d, &st);
    if ((int64_t)(st.delivered + st.failed + st.gone) >= total || time_mono_ms() >= deadline)
      break;
    struct timespec nap = {0, 2000000};
    nanosleep(&nap, NULL);
  }
  int64_t t1 = time_mono_ms();
  getrusage(RUSAGE_SELF, &r1);
  webhook_dispatcher_stop(d, 2000);
  s->ops->close(s);
  double secs = (double)(t1 - t0) / 1000.0;
  double user = cpu_s(&r1, true) - cpu_s(&r0, true), sys = cpu_s(&r1, false) - cpu_s(&r0, false);
  printf("{\"n\": %" PRId64 ", \"delivered\": %" PRIu64 ", \"failed\": %" PRIu64
         ", \"gone\": %" PRIu64 ", \"retried\": %" PRIu64 ", \"attempts\": %" PRIu64
         ", \"claims\": %" PRIu64 ", \"store_errors\": %" PRIu64
         ", \"seconds\": %.3f, \"per_second\": %.0f, \"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f,"
         " \"max_rss_kb\": %ld, \"sync\": \"%s\", \"max_in_flight\": %ld}\n",
         total, st.delivered, st.failed, st.gone, st.retried, st.attempts, st.claims,
         st.store_errors, secs, secs > 0 ? (double)st.delivered / secs : 0.0, user, sys,
         r1.ru_maxrss, o->sync, o->max_in_flight);
  return (int64_t)st.delivered == total ? 0 : 1;
}

int main(int argc, char **argv) {
  log_set_level(LOG_WARN);
  options o;
  if (!parse(argc, argv, &o)) return usage();
  if (!strcmp(o.cmd, "fill")) return run_fill(&o);
  if (!strcmp(o.cmd, "run")) return run_dispatch(&o);
  return usage();
}
