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
  retention *ret; /* NULL: no collector counters */
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
  router_metrics(engine_router(a->eng), &out, time_mono_ms());
  if (!out.data) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  http_reply_bytes(req, 200, "text/plain; version=0.0.4", out.data, out.len);
  buf_free(&out);
}

api_admin *api_admin_register(http_router *r, engine *eng, retention *ret, const char *token) {
  api_admin *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->eng = eng;
  a->ret = ret;
  snprintf(a->token, sizeof a->token, "%s", token);
  http_router_add_guarded(r, "GET", "/admin/providers", require_admin, handle_providers, a);
  http_router_add_guarded(r, "GET", "/metrics", require_admin, handle_metrics, a);
  return a;
}

void api_admin_free(api_admin *a) { free(a); }
