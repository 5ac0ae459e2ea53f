/* account.c - the account's own settings, for its keys' holders:
 *
 *   GET  /api/account/webhook-secret         -> {secret, previous, previous_expires_at}
 *   POST /api/account/webhook-secret/rotate  -> the same, after a new secret is made
 *
 * The secret signs the account's webhooks (Standard Webhooks: whsec_...). It
 * is made on first use. After a rotation the previous one also signs, for
 * webhooks.rotation_window_s, so receivers can switch without losing a
 * delivery. */
#include "api/api.h"

static void reply_secret(http_request *req, const store_webhook_secret *s) {
  http_reply_header(req, "Cache-Control", "no-store");
  http_reply_json(req, 200,
                  json_pack("{s:s, s:o, s:o}", "secret", s->current, "previous",
                            s->previous[0] ? json_string(s->previous) : json_null(),
                            "previous_expires_at",
                            s->previous[0] ? api_json_time(s->previous_until_ms) : json_null()));
}

static void handle_get(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  store_webhook_secret s;
  imgate_error err = {0};
  if (core_webhook_secret(c, &acct, &s, &err) < 0) {
    api_reply_error(req, err_http_status(err.code), err.slug, err.message, NULL);
    return;
  }
  reply_secret(req, &s);
}

static void handle_rotate(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  store_webhook_secret s;
  imgate_error err = {0};
  if (core_webhook_rotate(c, &acct, &s, &err) < 0) {
    api_reply_error(req, err_http_status(err.code), err.slug, err.message, NULL);
    return;
  }
  reply_secret(req, &s);
}

void api_account_register(http_router *r, core *c) {
  http_router_add_guarded(r, "GET", "/api/account/webhook-secret", api_guard_key, handle_get, c);
  http_router_add_guarded(r, "POST", "/api/account/webhook-secret/rotate", api_guard_key,
                          handle_rotate, c);
}
