/* common.c - helpers shared by the dialects: errors, base URL, auth, JSON. */
#include "api/api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/pricing.h"
#include "util/ids.h"
#include "util/jsonscan.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "util/utf8.h"

/* A slug safe to paste into JSON as is: lower-case letters, digits, '_'. */
bool api_plain_slug(const char *slug) {
  if (!slug || !*slug || strlen(slug) > 47) return false;
  for (const char *p = slug; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return false;
  return true;
}

void api_reply_error(http_request *req, int status, const char *slug, const char *message,
                     const char *param) {
  imgate_error e = {0};
  snprintf(e.slug, sizeof e.slug, "%s", slug ? slug : "");
  snprintf(e.message, sizeof e.message, "%s", message ? message : "");
  snprintf(e.param, sizeof e.param, "%s", param ? param : "");
  api_reply_core_error(req, status, &e);
}

void api_reply_core_error(http_request *req, int status, const imgate_error *err) {
  snprintf(req->log_error, sizeof req->log_error, "%s", err->slug);
  api_dialect_for_path(req->path)->reply_error(req, status, err);
}

void api_reply_from_core(http_request *req, const imgate_error *err) {
  imgate_error e = *err;
  if (e.param[0]) {
    const char *own = api_dialect_field(api_dialect_for_path(req->path), err->param);
    snprintf(e.param, sizeof e.param, "%s", own);
  }
  api_rate_limit_headers(req, &e);
  api_reply_core_error(req, err_http_status(e.code), &e);
}

void api_reply_error_doc(http_request *req, int status, json_t *doc, const char *fallback) {
  char *text = api_json_take_text(doc);
  if (!text) {
    LOG_ERROR("api_error_reply_not_encodable", "req=%s status=%d", req->request_id, status);
    http_reply_bytes(req, status, "application/json", fallback, strlen(fallback));
    return;
  }
  http_reply_bytes(req, status, "application/json", text, strlen(text));
  free(text);
}

/* When the document cannot be built (a param that is not UTF-8, no memory),
 * the client still gets the status and, when it is plain, the slug: an empty
 * body would tell it nothing. */
void api_error_shape_plain(http_request *req, int status, const imgate_error *err) {
  json_t *doc = json_pack("{s:{s:s, s:o, s:o}}", "error", "code", err->slug, "message",
                          api_json_text(err->message), "param",
                          err->param[0] ? json_string(err->param) : json_null());
  char fallback[160];
  snprintf(fallback, sizeof fallback,
           "{\"error\":{\"code\":\"%s\",\"message\":\"the error could not be "
           "described\",\"param\":null}}",
           api_plain_slug(err->slug) ? err->slug : "internal_error");
  api_reply_error_doc(req, status, doc, fallback);
}

json_t *api_json_text(const char *s) {
  json_t *j = json_string(s);
  if (j || !s) return j;
  char *copy = strdup(s);
  if (!copy) return NULL;
  utf8_sanitize(copy);
  j = json_string(copy);
  free(copy);
  return j;
}

char *api_json_take_text(json_t *doc) {
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return text;
}

json_t *api_json_usd(int64_t micros) {
  char text[PRICING_USD_BUFSIZE];
  pricing_format_usd(micros, text, sizeof text);
  return json_string(text);
}

json_t *api_json_prices(const core_model_info *mi) {
  json_t *prices = json_object();
  for (size_t k = 0; prices && k < mi->n_prices; k++) {
    json_t *usd = api_json_usd(mi->prices[k].micros);
    if (!mi->prices[k].size) {
      json_object_set_new(prices, mi->prices[k].name, usd);
      continue;
    }
    json_t *row = json_object_get(prices, mi->prices[k].name);
    if (!row) {
      row = json_object();
      json_object_set_new(prices, mi->prices[k].name, row);
    }
    json_object_set_new(row, mi->prices[k].size, usd);
  }
  return prices;
}

const char *api_priced_by(const core_model_info *mi) {
  return mi->by_quality ? "quality_and_size" : "resolution";
}

json_t *api_json_time(int64_t unix_ms) {
  if (unix_ms <= 0) return json_null();
  char text[32];
  time_format_iso(unix_ms, text);
  return json_string(text);
}

void api_rate_limit_headers(http_request *req, const imgate_error *err) {
  if (err->code != ERR_RATE_LIMITED) return;
  char v[32];
  snprintf(v, sizeof v, "%d", err->retry_after_s > 0 ? err->retry_after_s : 1);
  http_reply_header(req, "Retry-After", v);
  if (err->limit > 0) {
    snprintf(v, sizeof v, "%d", err->limit);
    http_reply_header(req, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%d", err->active);
    http_reply_header(req, "X-RateLimit-Active", v);
  }
}

/* Refusals of the HTTP layer (no route, wrong method, too large, timeouts):
 * in the shape of the dialect that owns the path. */
void api_server_error_hook(http_request *req, int status, const char *slug, const char *message) {
  api_reply_error(req, status, slug, message, NULL);
}

/* A Host header is only used when it looks like a host[:port]: anything else
 * (spaces, slashes, quotes) could smuggle text into the URLs we hand out. */
static bool plausible_host(const char *h) {
  if (!h || !*h || strlen(h) > 255) return false;
  for (const char *p = h; *p; p++) {
    char ch = *p;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']' || ch == '_'))
      return false;
  }
  return true;
}

void api_base_url(http_request *req, const core *c, char *out, size_t out_size) {
  const char *configured = core_public_url(c);
  if (configured && *configured) {
    size_t n = strlen(configured);
    while (n > 0 && configured[n - 1] == '/') n--;
    snprintf(out, out_size, "%.*s", (int)n, configured);
    return;
  }
  const char *host = http_header_get(req, "Host");
  snprintf(out, out_size, "http://%s", plausible_host(host) ? host : "localhost");
}

/* What a request body may hold, checked on the raw bytes before jansson
 * builds a node for every value (see util/jsonscan.h). Real requests have a
 * few dozen values at depth 3; the caps only stop bodies made to exhaust
 * memory, and they bound what jansson allocates to about 10 MB. */
#define API_JSON_MAX_DEPTH 64
#define API_JSON_MAX_VALUES 100000

json_t *api_parse_json_object(http_request *req) {
  switch (json_scan_limits(req->body, req->body_len, API_JSON_MAX_DEPTH, API_JSON_MAX_VALUES)) {
  case JSON_SCAN_TOO_DEEP:
    api_reply_error(req, 400, "invalid_request",
                    "the JSON body nests arrays and objects more than 64 levels deep", NULL);
    return NULL;
  case JSON_SCAN_TOO_MANY:
    api_reply_error(req, 400, "invalid_request",
                    "the JSON body holds more than 100000 values (array elements and object "
                    "members)",
                    NULL);
    return NULL;
  case JSON_SCAN_OK:
    break;
  }
  json_error_t jerr;
  /* DECODE_ANY so that "42" or "null" are told apart from broken JSON. */
  json_t *root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (!root) {
    char msg[256];
    snprintf(msg, sizeof msg, "the body is not valid JSON: %s (at position %d)", jerr.text,
             jerr.position);
    api_reply_error(req, 400, "invalid_json", msg, NULL);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    api_reply_error(req, 400, "invalid_request", "the body must be a JSON object", NULL);
    return NULL;
  }
  return root;
}

int api_json_string(http_request *req, json_t *body, const char *field, const char **out) {
  json_t *v = json_object_get(body, field);
  *out = NULL;
  if (!v || json_is_null(v)) return 0;
  if (!json_is_string(v)) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be a string", field);
    api_reply_error(req, 400, "invalid_type", msg, field);
    return -1;
  }
  *out = json_string_value(v);
  return 0;
}

int api_json_image_list(http_request *req, json_t *body, const char *field, const char **out,
                        size_t max, size_t *n) {
  json_t *list = json_object_get(body, field);
  *n = 0;
  if (!list || json_is_null(list)) return 0;
  char msg[160];
  if (!json_is_array(list)) goto not_strings;
  if (json_array_size(list) > max) {
    /* The core's limit is limits.max_reference_images, 10 at the most. */
    api_reply_error(req, 400, "too_many_images", "at most 10 reference images", field);
    return -1;
  }
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    if (!json_is_string(v)) goto not_strings;
    out[i] = json_string_value(v);
  }
  *n = json_array_size(list);
  return 0;
not_strings:
  snprintf(msg, sizeof msg, "%s must be an array of strings", field);
  api_reply_error(req, 400, "invalid_type", msg, field);
  return -1;
}

int api_json_output(http_request *req, json_t *body, core_gen_request *gr) {
  if (api_json_string(req, body, CORE_FIELD_OUTPUT_FORMAT, &gr->output_format) < 0) return -1;
  json_t *v = json_object_get(body, CORE_FIELD_OUTPUT_COMPRESSION);
  if (!v || json_is_null(v)) return 0;
  if (!json_is_integer(v)) {
    api_reply_error(req, 400, "invalid_type", "output_compression must be a whole number, 0 to 100",
                    CORE_FIELD_OUTPUT_COMPRESSION);
    return -1;
  }
  gr->output_compression = core_percent_arg(json_integer_value(v));
  gr->output_compression_set = true;
  return 0;
}

int api_authenticate(http_request *req, core *c, store_account *out) {
  if (req->guard_data) {
    *out = *(const store_account *)req->guard_data;
    return 0;
  }
  imgate_error err = {0};
  /* The key as the path's dialect has its clients send it. */
  char key[1024];
  const char *given = api_dialect_for_path(req->path)->read_key(req, key, sizeof key);
  if (core_authenticate(c, given, out, &err) < 0) {
    if (err.code == ERR_UNAUTHORIZED) http_reply_header(req, "WWW-Authenticate", "Bearer");
    api_reply_from_core(req, &err);
    return -1;
  }
  snprintf(req->log_account, sizeof req->log_account, "%lld", (long long)out->id);
  return 0;
}

bool api_guard_key(http_request *req, void *ctx) {
  store_account acct;
  if (api_authenticate(req, ctx, &acct) < 0) return false;
  store_account *kept = malloc(sizeof *kept);
  /* Without memory to keep it, the handler simply authenticates again. */
  if (kept) {
    *kept = acct;
    req->guard_data = kept;
  }
  return true;
}

bool api_require_admin_token(http_request *req, const char *token) {
  const char *h = http_header_get(req, "Authorization");
  size_t n = token ? strlen(token) : 0;
  if (h && strncasecmp(h, "Bearer ", 7) == 0 && n > 0 && strlen(h + 7) == n &&
      ids_equal_ct(h + 7, token, n))
    return true;
  http_reply_header(req, "WWW-Authenticate", "Bearer");
  api_reply_error(req, 401, "unauthorized", "this endpoint needs the admin token", NULL);
  return false;
}

int api_wait_seconds(const char *value) {
  if (!value) return 0;
  char *end;
  long n = strtol(value, &end, 10);
  if (end == value || *end || n <= 0) return 0;
  return n > API_MAX_WAIT_S ? API_MAX_WAIT_S : (int)n;
}

int api_prefer_wait(http_request *req) {
  const char *h = http_header_get(req, "Prefer");
  if (!h) return 0;
  /* "respond-async, wait=10" or "wait=10; x": preferences are separated by
   * commas, their parameters by semicolons; "wait" only counts as a name. */
  for (const char *p = h; *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',' || *p == ';') p++;
    size_t n = strcspn(p, ",;");
    if (n > 5 && strncasecmp(p, "wait=", 5) == 0) {
      char num[16];
      size_t k = n - 5 < sizeof num - 1 ? n - 5 : sizeof num - 1;
      memcpy(num, p + 5, k);
      num[k] = '\0';
      while (k > 0 && (num[k - 1] == ' ' || num[k - 1] == '\t')) num[--k] = '\0';
      return api_wait_seconds(num);
    }
    p += n;
  }
  return 0;
}

int api_submit(http_request *req, core *c, const store_account *acct, core_gen_request *gr,
               task **out, bool *replayed) {
  char base[600];
  api_base_url(req, c, base, sizeof base);
  /* The path's owner is the dialect serving the request. */
  gr->dialect = api_dialect_for_path(req->path)->name;
  gr->public_base = base;
  imgate_error err = {0};
  int rc = core_submit(c, acct, gr, http_header_get(req, "Idempotency-Key"), out, replayed, &err);
  gr->public_base = NULL; /* base goes with this call; the task keeps its copy */
  if (rc < 0) api_reply_from_core(req, &err);
  return rc;
}

task *api_read_task(http_request *req, core *c, const store_account *acct, const char *id) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(c, acct, id, &t, &err) < 0) {
    api_reply_from_core(req, &err);
    return NULL;
  }
  return t;
}

json_t *api_model_list(http_request *req, core *c,
                       json_t *(*item)(core *c, const core_model_info *mi)) {
  core_model_info *info = NULL;
  size_t n = 0;
  json_t *list = core_models(c, &info, &n) == 0 ? json_array() : NULL;
  for (size_t i = 0; list && i < n; i++) json_array_append_new(list, item(c, &info[i]));
  free(info);
  if (!list) api_reply_error(req, 500, "internal_error", "out of memory", NULL);
  return list;
}

void api_webhook_base(const core *c, const task *t, char *out, size_t out_size) {
  const char *configured = core_public_url(c);
  const char *base = configured && *configured       ? configured
                     : t->public_base && *t->public_base ? t->public_base
                                                           : "http://localhost";
  size_t n = strlen(base);
  while (n > 0 && base[n - 1] == '/') n--;
  snprintf(out, out_size, "%.*s", (int)n, base);
}

/* The dialect a task was made through renders its payload (the native one
 * for a name no dialect has, e.g. one since removed). */
char *api_render_webhook(void *ctx, const task *t, const char *event, int64_t now_ms) {
  const api_dialect *d = api_dialect_named(t->dialect);
  if (!d) d = api_dialect_named("native");
  return d->render_webhook(ctx, t, event, now_ms);
}
