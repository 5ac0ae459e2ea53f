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

struct api_admin {
  opsview view;
  char token[129];
};

/* The routes' guard: the admin token is checked before anything else. */
static bool require_admin(http_request *req, void *ctx) {
  const api_admin *a = ctx;
  return api_require_admin_token(req, a->token);
}

static void handle_providers(http_request *req, void *ctx) {
  api_admin *a = ctx;
  char *text = opsview_providers_json(&a->view);
  if (!text) {
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  http_reply_bytes(req, 200, "application/json", text, strlen(text));
  free(text);
}

static void handle_metrics(http_request *req, void *ctx) {
  api_admin *a = ctx;
  buf out = BUF_INIT;
  if (!opsview_metrics(&a->view, &out)) {
    buf_free(&out);
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
    return;
  }
  http_reply_bytes(req, 200, "text/plain; version=0.0.4", out.data, out.len);
  buf_free(&out);
}

api_admin *api_admin_register(http_router *r, const opsview *view, const char *token) {
  api_admin *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->view = *view;
  snprintf(a->token, sizeof a->token, "%s", token);
  http_router_add_guarded(r, "GET", "/admin/providers", require_admin, handle_providers, a);
  http_router_add_guarded(r, "GET", "/metrics", require_admin, handle_metrics, a);
  return a;
}

void api_admin_free(api_admin *a) { free(a); }
