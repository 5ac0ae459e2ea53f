/* health.c - GET /healthz: the process is up and can take work.
 *
 * 200 {"status":"ok"}, or 503 {"status":"unhealthy","checks":{"database":
 * "why"}} when the core says it cannot take work (its database file was
 * removed or replaced, or failed): a load balancer then sends traffic
 * elsewhere and an operator sees why. Polled often, so it costs what
 * core_health costs (one stat(2)), never a database query. */
#include "api/api.h"

static void handle_health(http_request *req, void *ctx) {
  core *c = ctx;
  char reason[256];
  if (core_health(c, reason, sizeof reason)) {
    http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
    return;
  }
  snprintf(req->log_error, sizeof req->log_error, "%s", "unhealthy");
  http_reply_json(req, 503,
                  json_pack("{s:s, s:{s:o}}", "status", "unhealthy", "checks", "database",
                            api_json_text(reason)));
}

void api_health_register(http_router *r, core *c) {
  http_router_add(r, "GET", "/healthz", handle_health, c);
}
