/* common.c - helpers shared by the dialects: errors, base URL, auth, JSON. */
#include "api/api.h"

#include <stdio.h>
#include <string.h>

void api_reply_error(http_request *req, int status, const char *slug, const char *message,
                     const char *param) {
  json_t *err = json_pack("{s:s, s:s, s:o}", "code", slug, "message", message, "param",
                          param && *param ? json_string(param) : json_null());
  snprintf(req->log_error, sizeof req->log_error, "%s", slug);
  http_reply_json(req, status, json_pack("{s:o}", "error", err));
}

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

json_t *api_parse_json_object(http_request *req) {
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

int api_authenticate(http_request *req, core *c, store_account *out) {
  imgate_error err = {0};
  if (core_authenticate(c, http_header_get(req, "Authorization"), out, &err) < 0) {
    if (err.code == ERR_UNAUTHORIZED) http_reply_header(req, "WWW-Authenticate", "Bearer");
    api_reply_error(req, err_http_status(err.code), err.slug, err.message, NULL);
    return -1;
  }
  snprintf(req->log_account, sizeof req->log_account, "%lld", (long long)out->id);
  return 0;
}
