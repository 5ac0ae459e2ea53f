/* health.c - GET /healthz: the process is up and serving. */
#include "api/api.h"

static void handle_health(http_request *req, void *ctx) {
  (void)ctx;
  http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

void api_health_register(http_router *r, core *c) {
  http_router_add(r, "GET", "/healthz", handle_health, c);
}
