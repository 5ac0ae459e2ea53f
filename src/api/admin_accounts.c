/* admin_accounts.c - accounts, keys and billing over HTTP, behind the admin
 * token: the HTTP face of `imgate admin` (docs/api-admin.md).
 *
 *   POST   /admin/accounts                     {"email"}             -> 201 account
 *   GET    /admin/accounts                                           -> {"accounts":[...]}
 *   GET    /admin/accounts/{email}                                   -> account
 *   POST   /admin/accounts/{email}/topup       {"usd"|"micros","reason"} -> {"balance_usd",...}
 *   POST   /admin/accounts/{email}/refund      (the same)            -> {"balance_usd",...}
 *   GET    /admin/accounts/{email}/ledger      [?format=json|csv]
 *   PUT    /admin/accounts/{email}/limits      {"max_concurrency","qps_per_key"} -> account
 *   POST   /admin/accounts/{email}/disable | /enable                 -> account
 *   POST   /admin/accounts/{email}/keys        {"name"}              -> 201 {"key",...}
 *   GET    /admin/accounts/{email}/keys                              -> {"keys":[...]}
 *   DELETE /admin/keys/{id}                                          -> {"id","revoked"}
 *   GET    /admin/ledger/verify                                      -> 200/500 {"ok"}
 *
 * Where the CLI does the same thing, both go through core/accounts.h
 * (signup with bonus and default limits, top-up/refund, the ledger's CSV),
 * so the two cannot drift apart. Errors use the default shape
 * {"error":{"code","message","param"}}. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/accounts.h"
#include "core/pricing.h"
#include "util/buf.h"

struct api_admin_accounts {
  store *st;
  imgate_config cfg; /* a copy: signup bonus, key limit, default limits, admin token */
};

/* ---- replies ------------------------------------------------------------ */

/* An error from core/accounts.h. Two differ from the plain REST mapping:
 * an email that is taken (409, not 400), and a refund larger than the
 * available balance (409: the operator's request conflicts with the
 * account's state; 402 would suggest the operator must pay). */
static void reply_err(http_request *req, const imgate_error *err) {
  int status = err_http_status(err->code);
  if (!strcmp(err->slug, "account_exists") || err->code == ERR_NO_CREDIT) status = 409;
  api_reply_error(req, status, err->slug, err->message, err->param);
}

static void reply_oom(http_request *req) {
  api_reply_error(req, 500, "internal_error", "out of memory", NULL);
}

static void reply_store_error(http_request *req) {
  api_reply_error(req, 500, "store_error", "store failure", NULL);
}

/* The renderers take const void * to serve render_list too. */
static json_t *account_json(const void *item) {
  const store_account *a = item;
  return json_pack("{s:I, s:o, s:b, s:o, s:o, s:o, s:I, s:I, s:i, s:i}", "id", (json_int_t)a->id,
                   "email", api_json_text(a->email), "disabled", a->disabled, "created_at",
                   api_json_time(a->created_ms), "balance_usd",
                   api_json_usd(a->balance_micros), "held_usd", api_json_usd(a->held_micros),
                   "balance_micros", (json_int_t)a->balance_micros, "held_micros",
                   (json_int_t)a->held_micros, "max_concurrency", a->max_concurrency,
                   "qps_per_key", a->qps_per_key);
}

static json_t *key_json(const void *item) {
  const store_key *k = item;
  return json_pack("{s:I, s:o, s:o, s:b, s:o, s:o, s:o}", "id", (json_int_t)k->id, "prefix",
                   api_json_text(k->prefix), "name", api_json_text(k->name), "active",
                   k->revoked_ms == 0, "created_at", api_json_time(k->created_ms),
                   "last_used_at", api_json_time(k->last_used_ms), "revoked_at",
                   api_json_time(k->revoked_ms));
}

static json_t *entry_json(const void *item) {
  const ledger_entry *e = item;
  return json_pack("{s:I, s:o, s:s, s:o, s:o, s:I, s:I, s:o, s:o}", "id", (json_int_t)e->id,
                   "created_at", api_json_time(e->created_ms), "kind", ledger_kind_name(e->kind),
                   "available_usd", api_json_usd(e->available_micros), "held_usd",
                   api_json_usd(e->held_micros),
                   "available_micros", (json_int_t)e->available_micros, "held_micros",
                   (json_int_t)e->held_micros, "task_id",
                   e->task_id[0] ? json_string(e->task_id) : json_null(), "reason",
                   api_json_text(e->reason));
}

/* n items of size bytes each, rendered into a JSON array; NULL when memory
 * runs out. */
static json_t *render_list(const void *items, size_t n, size_t size,
                           json_t *(*render)(const void *)) {
  json_t *list = json_array();
  for (size_t i = 0; list && i < n; i++)
    if (json_array_append_new(list, render((const char *)items + i * size)) < 0) {
      json_decref(list);
      list = NULL;
    }
  return list;
}

/* {"<name>": list}, or 500 when the list could not be built. */
static void reply_list(http_request *req, const char *name, json_t *list) {
  if (!list) {
    reply_oom(req);
    return;
  }
  http_reply_json(req, 200, json_pack("{s:o}", name, list));
}

/* ---- request parts ------------------------------------------------------ */

/* The account named by the path's {email} (already percent-decoded by the
 * router); replies 404 or 500 and returns false when there is none. */
static bool path_account(http_request *req, api_admin_accounts *a, store_account *out) {
  imgate_error err = {0};
  if (accounts_find(a->st, http_param_get(req, "email"), out, &err) < 0) {
    reply_err(req, &err);
    return false;
  }
  snprintf(req->log_account, sizeof req->log_account, "%lld", (long long)out->id);
  return true;
}

/* Refuses (400 unknown_field) a member not in allowed (NULL-terminated):
 * a misspelt field would otherwise be ignored silently. */
static bool only_fields(http_request *req, json_t *body, const char *const *allowed) {
  const char *name;
  json_t *v;
  json_object_foreach(body, name, v) {
    bool known = false;
    for (const char *const *p = allowed; *p && !known; p++) known = !strcmp(name, *p);
    if (!known) {
      char msg[200];
      snprintf(msg, sizeof msg, "unknown field \"%.100s\"", name);
      api_reply_error(req, 400, "unknown_field", msg, name);
      return false;
    }
  }
  return true;
}

/* An optional string member of at most max_len bytes; *out is NULL when
 * absent. Replies 400 (param: the field) and returns false otherwise. */
static bool opt_string(http_request *req, json_t *body, const char *field, size_t max_len,
                       const char **out) {
  json_t *v = json_object_get(body, field);
  *out = NULL;
  if (!v) return true;
  char msg[128];
  if (!json_is_string(v)) {
    snprintf(msg, sizeof msg, "%s must be a string", field);
    api_reply_error(req, 400, "invalid_type", msg, field);
    return false;
  }
  if (json_string_length(v) > max_len || memchr(json_string_value(v), '\0', json_string_length(v))) {
    snprintf(msg, sizeof msg, "%s must be at most %zu bytes, without NUL", field, max_len);
    api_reply_error(req, 400, "invalid_value", msg, field);
    return false;
  }
  *out = json_string_value(v);
  return true;
}

/* The amount of a top-up or refund: "usd" as a decimal string (exact, at
 * most six decimals) or "micros" as an integer; exactly one, positive. */
static bool parse_amount(http_request *req, json_t *body, int64_t *micros) {
  json_t *u = json_object_get(body, "usd"), *m = json_object_get(body, "micros");
  if (u && m) {
    api_reply_error(req, 400, "invalid_amount", "give usd or micros, not both", "micros");
    return false;
  }
  if (!u && !m) {
    api_reply_error(req, 400, "missing_field",
                    "the amount is missing: usd (a decimal string, e.g. \"10.50\") or micros "
                    "(an integer)",
                    "usd");
    return false;
  }
  if (u) {
    if (!json_is_string(u)) {
      api_reply_error(req, 400, "invalid_amount",
                      "usd must be a string of decimal USD, e.g. \"10.50\" (numbers are not "
                      "exact)",
                      "usd");
      return false;
    }
    if (pricing_parse_usd(json_string_value(u), micros) < 0 || *micros <= 0) {
      api_reply_error(req, 400, "invalid_amount",
                      "usd must be a positive amount of USD with at most 6 decimals, e.g. "
                      "\"10.50\"",
                      "usd");
      return false;
    }
    return true;
  }
  if (!json_is_integer(m) || json_integer_value(m) <= 0) {
    api_reply_error(req, 400, "invalid_amount", "micros must be a positive integer", "micros");
    return false;
  }
  *micros = json_integer_value(m);
  return true;
}

/* A limit: absent (-1: leave as is) or an integer 0..API_LIMIT_MAX. */
static bool parse_limit(http_request *req, json_t *body, const char *field, int *out) {
  json_t *v = json_object_get(body, field);
  *out = -1;
  if (!v) return true;
  if (!json_is_integer(v) || json_integer_value(v) < 0 ||
      json_integer_value(v) > API_LIMIT_MAX) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be an integer 0..%d (0 = unlimited)", field,
             API_LIMIT_MAX);
    api_reply_error(req, 400, json_is_integer(v) ? "invalid_value" : "invalid_type", msg, field);
    return false;
  }
  *out = (int)json_integer_value(v);
  return true;
}

/* ---- handlers ----------------------------------------------------------- */

static void handle_create_account(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  static const char *const fields[] = {"email", NULL};
  const char *email;
  if (!only_fields(req, body, fields) || !opt_string(req, body, "email", 254, &email)) goto out;
  if (!email) {
    api_reply_error(req, 400, "missing_field", "email is required", "email");
    goto out;
  }
  imgate_error err = {0};
  int64_t id;
  store_account acct;
  if (accounts_signup(a->st, &a->cfg, email, &id, &err) < 0) {
    reply_err(req, &err);
    goto out;
  }
  if (a->st->ops->account_get(a->st, id, &acct) != STORE_OK) {
    reply_store_error(req);
    goto out;
  }
  snprintf(req->log_account, sizeof req->log_account, "%lld", (long long)id);
  http_reply_json(req, 201, account_json(&acct));
out:
  json_decref(body);
}

static void handle_list_accounts(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  store_account *accts = NULL;
  size_t n = 0;
  if (a->st->ops->account_list(a->st, &accts, &n) != STORE_OK) {
    reply_store_error(req);
    return;
  }
  json_t *list = render_list(accts, n, sizeof *accts, account_json);
  free(accts);
  reply_list(req, "accounts", list);
}

static void handle_get_account(http_request *req, void *ctx) {
  store_account acct;
  if (!path_account(req, ctx, &acct)) return;
  http_reply_json(req, 200, account_json(&acct));
}

static void handle_money(http_request *req, api_admin_accounts *a, bool topup) {
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  static const char *const fields[] = {"usd", "micros", "reason", NULL};
  const char *reason;
  int64_t micros, balance;
  store_account acct;
  imgate_error err = {0};
  /* reason: the ledger keeps 127 bytes. */
  if (!only_fields(req, body, fields) || !parse_amount(req, body, &micros) ||
      !opt_string(req, body, "reason", sizeof ((ledger_entry *)0)->reason - 1, &reason) ||
      !path_account(req, a, &acct))
    goto out;
  if (accounts_post_money(a->st, acct.id, topup, micros, reason, &balance, &err) < 0) {
    /* Name the field the amount came in. */
    if (!strcmp(err.param, "usd") && json_object_get(body, "micros"))
      snprintf(err.param, sizeof err.param, "micros");
    reply_err(req, &err);
    goto out;
  }
  http_reply_json(req, 200,
                  json_pack("{s:o, s:I, s:o, s:I}", "balance_usd", api_json_usd(balance),
                            "balance_micros", (json_int_t)balance,
                            topup ? "topup_usd" : "refund_usd", api_json_usd(micros),
                            topup ? "topup_micros" : "refund_micros", (json_int_t)micros));
out:
  json_decref(body);
}

static void handle_topup(http_request *req, void *ctx) { handle_money(req, ctx, true); }
static void handle_refund(http_request *req, void *ctx) { handle_money(req, ctx, false); }

static void handle_ledger(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  const char *format = http_query_get(req, "format");
  bool csv = format && !strcmp(format, "csv");
  if (format && !csv && strcmp(format, "json") != 0) {
    api_reply_error(req, 400, "invalid_value", "format must be json or csv", "format");
    return;
  }
  store_account acct;
  if (!path_account(req, a, &acct)) return;
  ledger_entry *e = NULL;
  size_t n = 0;
  if (a->st->ops->ledger_list(a->st, acct.id, &e, &n) != STORE_OK) {
    reply_store_error(req);
    return;
  }
  if (csv) {
    buf out = BUF_INIT;
    if (accounts_ledger_csv(e, n, &out))
      http_reply_bytes(req, 200, "text/csv; charset=utf-8", out.data, out.len);
    else
      reply_oom(req);
    buf_free(&out);
    free(e);
    return;
  }
  /* The balance shown is the sum of the entries listed (the ledger is the
   * truth; the account's cached balance, read a moment earlier, may be
   * older than a concurrent entry). */
  int64_t available = 0, held = 0;
  for (size_t i = 0; i < n; i++) {
    available += e[i].available_micros;
    held += e[i].held_micros;
  }
  json_t *list = render_list(e, n, sizeof *e, entry_json);
  free(e);
  if (!list) {
    reply_oom(req);
    return;
  }
  http_reply_json(req, 200,
                  json_pack("{s:I, s:o, s:o, s:o, s:I, s:I, s:o}", "account_id",
                            (json_int_t)acct.id, "email", api_json_text(acct.email),
                            "balance_usd", api_json_usd(available), "held_usd",
                            api_json_usd(held),
                            "balance_micros", (json_int_t)available, "held_micros",
                            (json_int_t)held, "entries", list));
}

static void handle_limits(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  json_t *body = api_parse_json_object(req);
  if (!body) return;
  static const char *const fields[] = {"max_concurrency", "qps_per_key", NULL};
  int conc, qps;
  store_account acct;
  if (!only_fields(req, body, fields) || !parse_limit(req, body, "max_concurrency", &conc) ||
      !parse_limit(req, body, "qps_per_key", &qps))
    goto out;
  if (conc < 0 && qps < 0) {
    api_reply_error(req, 400, "missing_field", "give max_concurrency, qps_per_key or both",
                    "max_concurrency");
    goto out;
  }
  if (!path_account(req, a, &acct)) goto out;
  if (a->st->ops->account_set_limits(a->st, acct.id, conc, qps) != STORE_OK ||
      a->st->ops->account_get(a->st, acct.id, &acct) != STORE_OK) {
    reply_store_error(req);
    goto out;
  }
  http_reply_json(req, 200, account_json(&acct));
out:
  json_decref(body);
}

static void set_disabled(http_request *req, api_admin_accounts *a, bool disabled) {
  store_account acct;
  if (!path_account(req, a, &acct)) return;
  if (a->st->ops->account_set_disabled(a->st, acct.id, disabled) != STORE_OK ||
      a->st->ops->account_get(a->st, acct.id, &acct) != STORE_OK) {
    reply_store_error(req);
    return;
  }
  http_reply_json(req, 200, account_json(&acct));
}

static void handle_disable(http_request *req, void *ctx) { set_disabled(req, ctx, true); }
static void handle_enable(http_request *req, void *ctx) { set_disabled(req, ctx, false); }

static void handle_create_key(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  /* No body at all is a key without a name. */
  json_t *body = req->body_len ? api_parse_json_object(req) : json_object();
  if (!body) {
    if (!req->status) reply_oom(req);
    return;
  }
  static const char *const fields[] = {"name", NULL};
  const char *name;
  store_account acct;
  if (!only_fields(req, body, fields) ||
      !opt_string(req, body, "name", sizeof ((store_key *)0)->name - 1, &name) ||
      !path_account(req, a, &acct))
    goto out;
  char key[ACCOUNTS_KEY_LEN + 1];
  int64_t key_id;
  imgate_error err = {0};
  if (accounts_create_key(a->st, acct.email, name, a->cfg.max_keys_per_account, key, &key_id,
                          &err) < 0) {
    reply_err(req, &err);
    goto out;
  }
  char prefix[9];
  snprintf(prefix, sizeof prefix, "%.8s", key);
  http_reply_json(req, 201,
                  json_pack("{s:s, s:I, s:s, s:o, s:s}", "key", key, "id", (json_int_t)key_id,
                            "prefix", prefix, "name", api_json_text(name ? name : ""), "email",
                            acct.email));
  /* The key exists only in the reply now. */
  memset(key, 0, sizeof key);
out:
  json_decref(body);
}

static void handle_list_keys(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  store_account acct;
  if (!path_account(req, a, &acct)) return;
  store_key *keys = NULL;
  size_t n = 0;
  if (a->st->ops->key_list(a->st, acct.id, &keys, &n) != STORE_OK) {
    reply_store_error(req);
    return;
  }
  json_t *list = render_list(keys, n, sizeof *keys, key_json);
  free(keys);
  reply_list(req, "keys", list);
}

static void handle_revoke_key(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  /* By id only: a full key in a URL would end up in access logs. */
  const char *id = http_param_get(req, "id");
  char *end;
  errno = 0;
  long long v = id && *id >= '0' && *id <= '9' ? strtoll(id, &end, 10) : 0;
  if (!id || errno || v <= 0 || *end) {
    api_reply_error(req, 400, "invalid_key_id", "the key id must be a positive integer", "id");
    return;
  }
  imgate_error err = {0};
  if (accounts_revoke_key(a->st, id, &err) < 0) {
    if (!strcmp(err.slug, "key_not_found")) snprintf(err.param, sizeof err.param, "id");
    reply_err(req, &err);
    return;
  }
  http_reply_json(req, 200, json_pack("{s:I, s:b}", "id", (json_int_t)v, "revoked", 1));
}

static void handle_verify(http_request *req, void *ctx) {
  api_admin_accounts *a = ctx;
  int rc = a->st->ops->ledger_verify(a->st);
  if (rc == STORE_OK) {
    http_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
  } else if (rc == STORE_CONFLICT) {
    http_reply_json(req, 500,
                    json_pack("{s:b, s:s}", "ok", 0, "message",
                              "the ledger and the balances disagree (see the server log)"));
  } else {
    reply_store_error(req);
  }
}

/* ---- registration ------------------------------------------------------- */

static bool require_admin(http_request *req, void *ctx) {
  const api_admin_accounts *a = ctx;
  return api_require_admin_token(req, a->cfg.admin_token);
}

api_admin_accounts *api_admin_accounts_register(http_router *r, store *st,
                                                const imgate_config *cfg) {
  api_admin_accounts *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->st = st;
  a->cfg = *cfg;
  static const struct {
    const char *method, *pattern;
    http_handler_fn fn;
  } routes[] = {
      {"POST", "/admin/accounts", handle_create_account},
      {"GET", "/admin/accounts", handle_list_accounts},
      {"GET", "/admin/accounts/{email}", handle_get_account},
      {"POST", "/admin/accounts/{email}/topup", handle_topup},
      {"POST", "/admin/accounts/{email}/refund", handle_refund},
      {"GET", "/admin/accounts/{email}/ledger", handle_ledger},
      {"PUT", "/admin/accounts/{email}/limits", handle_limits},
      {"POST", "/admin/accounts/{email}/disable", handle_disable},
      {"POST", "/admin/accounts/{email}/enable", handle_enable},
      {"POST", "/admin/accounts/{email}/keys", handle_create_key},
      {"GET", "/admin/accounts/{email}/keys", handle_list_keys},
      {"DELETE", "/admin/keys/{id}", handle_revoke_key},
      {"GET", "/admin/ledger/verify", handle_verify},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (!http_router_add_guarded(r, routes[i].method, routes[i].pattern, require_admin,
                                 routes[i].fn, a)) {
      free(a);
      return NULL;
    }
  return a;
}

void api_admin_accounts_free(api_admin_accounts *a) { free(a); }
