/* admin.c - operator endpoints, behind the admin token.
 *
 *   GET /admin/providers  live health of every provider and route (JSON)
 *   GET /metrics          Prometheus text format
 *
 * The admin token is not an account key: it comes from configuration
 * (admin_token, IMGATE_ADMIN_TOKEN) or from DATA/admin_token, created on the
 * first start. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "util/buf.h"
#include "util/timeutil.h"

struct api_admin {
  engine *eng;
  retention *ret;         /* NULL: no collector counters */
  webhook_dispatcher *wd; /* NULL: no webhook counters */
  char token[129];
};

/* The routes' guard: the admin token is checked before anything else. */
static bool require_admin(http_request *req, void *ctx) {
  const api_admin *a = ctx;
  return api_require_admin_token(req, a->token);
}

static void handle_providers(http_request *req, void *ctx) {
  api_admin *a = ctx;
  char *text = router_health_json(engine_router(a->eng), time_mono_ms());
  if (!text) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  http_reply_bytes(req, 200, "application/json", text, strlen(text));
  free(text);
}

static void handle_metrics(http_request *req, void *ctx) {
  api_admin *a = ctx;
  engine_stats st;
  engine_get_stats(a->eng, &st);
  buf out = BUF_INIT;
  buf_printf(&out,
             "# HELP imgate_tasks_queued Tasks waiting to start.\n"
             "# TYPE imgate_tasks_queued gauge\nimgate_tasks_queued %zu\n"
             "# HELP imgate_tasks_running Tasks running (calling an upstream or waiting to retry).\n"
             "# TYPE imgate_tasks_running gauge\nimgate_tasks_running %zu\n"
             "# HELP imgate_tasks_retrying Running tasks waiting for a retry's time.\n"
             "# TYPE imgate_tasks_retrying gauge\nimgate_tasks_retrying %zu\n"
             "# HELP imgate_tasks_finished_total Tasks this process finished.\n"
             "# TYPE imgate_tasks_finished_total counter\nimgate_tasks_finished_total %llu\n",
             st.queued, st.in_flight, st.retrying, (unsigned long long)st.finished);
  if (a->ret) {
    retention_stats rs;
    retention_get_stats(a->ret, &rs);
    buf_printf(&out,
               "# HELP imgate_orphan_passes_total Orphan collector passes completed.\n"
               "# TYPE imgate_orphan_passes_total counter\nimgate_orphan_passes_total %llu\n"
               "# HELP imgate_orphans_removed_total Blobs no row referred to, removed.\n"
               "# TYPE imgate_orphans_removed_total counter\n"
               "imgate_orphans_removed_total{kind=\"object\"} %llu\n"
               "imgate_orphans_removed_total{kind=\"temporary\"} %llu\n",
               (unsigned long long)rs.orphan_passes, (unsigned long long)rs.orphans_removed,
               (unsigned long long)rs.orphan_temp_removed);
  }
  if (a->wd) {
    webhook_dispatcher_stats ws;
    webhook_dispatcher_get_stats(a->wd, &ws);
    buf_printf(&out,
               "# HELP imgate_webhook_deliveries_total Webhook deliveries ended, by outcome.\n"
               "# TYPE imgate_webhook_deliveries_total counter\n"
               "imgate_webhook_deliveries_total{outcome=\"delivered\"} %llu\n"
               "imgate_webhook_deliveries_total{outcome=\"failed\"} %llu\n"
               "imgate_webhook_deliveries_total{outcome=\"gone\"} %llu\n"
               "# HELP imgate_webhook_attempts_total Webhook delivery attempts recorded.\n"
               "# TYPE imgate_webhook_attempts_total counter\n"
               "imgate_webhook_attempts_total %llu\n"
               "# HELP imgate_webhook_retries_total Attempts that failed and were scheduled again.\n"
               "# TYPE imgate_webhook_retries_total counter\nimgate_webhook_retries_total %llu\n"
               "# HELP imgate_webhook_store_errors_total Dispatcher store calls that failed.\n"
               "# TYPE imgate_webhook_store_errors_total counter\n"
               "imgate_webhook_store_errors_total %llu\n"
               "# HELP imgate_webhook_in_flight Webhook attempts under way.\n"
               "# TYPE imgate_webhook_in_flight gauge\nimgate_webhook_in_flight %zu\n",
               (unsigned long long)ws.delivered, (unsigned long long)ws.failed,
               (unsigned long long)ws.gone, (unsigned long long)ws.attempts,
               (unsigned long long)ws.retried, (unsigned long long)ws.store_errors, ws.in_flight);
    if (ws.pending >= 0)
      buf_printf(&out,
                 "# HELP imgate_webhook_pending Deliveries waiting in the store (read every few "
                 "seconds).\n"
                 "# TYPE imgate_webhook_pending gauge\nimgate_webhook_pending %lld\n",
                 (long long)ws.pending);
  }
  router_metrics(engine_router(a->eng), &out, time_mono_ms());
  if (!out.data) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  http_reply_bytes(req, 200, "text/plain; version=0.0.4", out.data, out.len);
  buf_free(&out);
}

api_admin *api_admin_register(http_router *r, engine *eng, retention *ret,
                              webhook_dispatcher *wd, const char *token) {
  api_admin *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->eng = eng;
  a->ret = ret;
  a->wd = wd;
  snprintf(a->token, sizeof a->token, "%s", token);
  http_router_add_guarded(r, "GET", "/admin/providers", require_admin, handle_providers, a);
  http_router_add_guarded(r, "GET", "/metrics", require_admin, handle_metrics, a);
  return a;
}

void api_admin_free(api_admin *a) { free(a); }
