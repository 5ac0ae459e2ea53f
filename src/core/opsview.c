/* opsview.c - operators' view of a running server (see opsview.h). */
#include "core/opsview.h"

#include <stdio.h>

#include "upstream/router.h"
#include "util/timeutil.h"

char *opsview_providers_json(const opsview *v) {
  return router_health_json(engine_router(v->eng), time_mono_ms());
}

bool opsview_metrics(const opsview *v, buf *out) {
  size_t start = out->len;
  engine_stats st;
  engine_get_stats(v->eng, &st);
  buf_printf(out,
             "# HELP imgate_tasks_queued Tasks waiting to start.\n"
             "# TYPE imgate_tasks_queued gauge\nimgate_tasks_queued %zu\n"
             "# HELP imgate_tasks_running Tasks running (calling an upstream or waiting to retry).\n"
             "# TYPE imgate_tasks_running gauge\nimgate_tasks_running %zu\n"
             "# HELP imgate_tasks_retrying Running tasks waiting for a retry's time.\n"
             "# TYPE imgate_tasks_retrying gauge\nimgate_tasks_retrying %zu\n"
             "# HELP imgate_tasks_finished_total Tasks this process finished.\n"
             "# TYPE imgate_tasks_finished_total counter\nimgate_tasks_finished_total %llu\n",
             st.queued, st.in_flight, st.retrying, (unsigned long long)st.finished);
  if (v->ret) {
    retention_stats rs;
    retention_get_stats(v->ret, &rs);
    buf_printf(out,
               "# HELP imgate_orphan_passes_total Orphan collector passes completed.\n"
               "# TYPE imgate_orphan_passes_total counter\nimgate_orphan_passes_total %llu\n"
               "# HELP imgate_orphans_removed_total Blobs no row referred to, removed.\n"
               "# TYPE imgate_orphans_removed_total counter\n"
               "imgate_orphans_removed_total{kind=\"object\"} %llu\n"
               "imgate_orphans_removed_total{kind=\"temporary\"} %llu\n",
               (unsigned long long)rs.orphan_passes, (unsigned long long)rs.orphans_removed,
               (unsigned long long)rs.orphan_temp_removed);
  }
  if (v->wd) {
    webhook_dispatcher_stats ws;
    webhook_dispatcher_get_stats(v->wd, &ws);
    buf_printf(out,
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
      buf_printf(out,
                 "# HELP imgate_webhook_pending Deliveries waiting in the store (read every few "
                 "seconds).\n"
                 "# TYPE imgate_webhook_pending gauge\nimgate_webhook_pending %lld\n",
                 (long long)ws.pending);
  }
  router_metrics(engine_router(v->eng), out, time_mono_ms());
  return out->data != NULL && out->len > start;
}
